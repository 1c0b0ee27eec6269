//! Turning a pending event into what goes on the wire.

pub mod request;
