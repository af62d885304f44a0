//! What a handler's `handle` fails with: a message for people and whether
//! delivering the same event again can help. The host retries a retryable
//! error (up to the handler's `max_attempts`, then dead-letters the event) and
//! dead-letters a refusal at once, as fault kind `refused`.
//!
//! `From<String>` and `From<&str>` make a retryable error, so `?` on the
//! SDK's own results and on `format!` messages keeps working; payload
//! problems found by [`crate::Reader`] are refusals.

use std::fmt;

/// A handler's result; `Err` says whether a retry can help.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why `handle` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    retryable: bool,
}

impl Error {
    /// Transient trouble (a busy resource, a failed write, a refused emit):
    /// the host delivers the event again.
    pub fn retry(message: impl Into<String>) -> Error {
        Error { message: message.into(), retryable: true }
    }

    /// The event itself is wrong (a missing field, a value of the wrong
    /// type, an unsupported shape): no retry can help, so the host
    /// dead-letters it at once. The message names the field and what was
    /// expected.
    pub fn refuse(message: impl Into<String>) -> Error {
        Error { message: message.into(), retryable: false }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether delivering the same event again can succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::retry(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::retry(message)
    }
}

impl From<Error> for crate::bindings::HandlerError {
    fn from(e: Error) -> crate::bindings::HandlerError {
        crate::bindings::HandlerError { message: e.message, retryable: e.retryable }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_retryable_and_refusals_are_not() {
        let from_text: Error = format!("cannot write {}", "x").into();
        assert!(from_text.is_retryable());
        assert!(Error::from("busy").is_retryable());
        let refused = Error::refuse("payload.id is required");
        assert!(!refused.is_retryable());
        assert_eq!(refused.to_string(), "payload.id is required");
        let wire: crate::bindings::HandlerError = refused.into();
        assert_eq!((wire.message.as_str(), wire.retryable), ("payload.id is required", false));
    }
}
