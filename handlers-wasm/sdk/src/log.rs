//! Lines for the host's log: the host tags each with the handler's name and
//! the event id, escapes it, and keeps it in the `handler test` report.

use crate::Level;

pub fn log(level: Level, message: &str) {
    crate::bindings::log(level, message);
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}
