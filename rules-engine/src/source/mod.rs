//! Kinesis source: shards, lineage, de-aggregation. (Being written.)
