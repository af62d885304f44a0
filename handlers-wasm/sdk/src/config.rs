//! The handler's settings: its `[handlers.<name>.settings]` table in
//! `cortex.toml`, read through the host's `config` import.

use crate::Result;

/// A setting from the handler's `[handlers.<name>.settings]` table.
pub fn config(key: &str) -> Option<String> {
    crate::bindings::config(key)
}

/// A setting parsed as `T`, or `default` when unset.
///
/// # Errors
/// A retryable error when the setting is present but does not parse, naming
/// the key: the configuration, not the event, is wrong, and the event can be
/// delivered again once it is fixed.
pub fn config_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
    match config(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| format!("setting {key} = {v:?} is not valid").into()),
    }
}
