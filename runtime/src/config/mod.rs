//! Configuration helpers shared by both programs: [`Split`] (a table whose common keys
//! are defined once, with unknown keys still rejected) and [`Secret`] (a string that
//! never shows in `Debug` output or logs).

mod secret;
mod secret_source;
mod split;
mod toml_error;

pub use secret::Secret;
pub use secret_source::{SecretError, SecretKeys};
pub use split::{field_names, Split};
pub use toml_error::{describe_toml_error, line_column};
