//! Outputs: webhook targets, outbox, dead letters. (Being written.)
