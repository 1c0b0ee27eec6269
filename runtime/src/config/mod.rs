//! Configuration helpers shared by both programs: [`Split`] (a table whose common keys
//! are defined once, with unknown keys still rejected) and [`Secret`] (a string that
//! never shows in `Debug` output or logs).

pub mod check;
mod secret;
mod secret_source;
mod split;

pub use check::{load_all, Lines, Loaded};
pub use secret::Secret;
pub use secret_source::{SecretError, SecretKeys};
pub use split::{field_names, Split};
