//! Guest and producer text made safe for a terminal or a one-line log.
//!
//! A handler's summary, error, log lines, stdout and stderr, and the fields
//! a producer or a replayed archive line supplies (source, correlation id,
//! master, payload), are untrusted: printed raw, an escape sequence could
//! clear the screen, retitle the window, rewrite an earlier line with a
//! carriage return, or forge a log line with a newline. Everything that
//! prints such text to a terminal or a text log goes through [`escape`] (or
//! [`Escaped`] in a `format!` or tracing field); JSON output is left to
//! serde, which escapes C0 controls itself.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Whether a character must not reach a terminal as it is: C0 controls but
/// tab (ESC, BEL, BS, CR, LF, ...), DEL, C1 controls (8-bit CSI and OSC),
/// and the bidirectional overrides and isolates that reorder what is shown.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character (see above) written as `\u{1b}`;
/// borrowed unchanged when there is none. A newline becomes `\u{a}` too: the
/// result is always one line.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(Escaped(text).to_string())
}

/// [`escape`] for multi-line text shown line by line: each line escaped,
/// the newlines between them kept.
pub fn escape_lines(text: &str) -> impl Iterator<Item = Cow<'_, str>> {
    text.lines().map(escape)
}

/// Displays a string escaped as [`escape`] does, without allocating.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if needs_escape(c) {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// How much of a bad input an error message quotes, in bytes.
pub const QUOTE_BYTES: usize = 200;

/// `text` quoted for an error message about it: in double quotes with
/// quotes and controls escaped (Rust's `{:?}`, then [`Escaped`] for what
/// that leaves, such as bidirectional overrides), and cut at [`QUOTE_BYTES`] with
/// "… (N bytes)" when longer, so that a 100 KB bad payload is not echoed
/// whole to the terminal or a log.
pub fn quote(text: &str) -> String {
    if text.len() <= QUOTE_BYTES {
        return Escaped(&format!("{text:?}")).to_string();
    }
    let cut = text.floor_char_boundary(QUOTE_BYTES);
    format!("{}… ({} bytes)", Escaped(&format!("{:?}", &text[..cut])), text.len())
}

/// Milliseconds of a duration for a log field, rounded to microseconds so
/// that `duration_ms=0.228` does not print as `0.22781900000000002`.
pub fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped_and_plain_text_is_borrowed() {
        let hostile = "a\x1b[2J\x1b]0;pwned\x07\rb\nc\x08\x7f\u{9b}\u{202e}d\te";
        let out = escape(hostile);
        assert_eq!(out, "a\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{d}b\\u{a}c\\u{8}\\u{7f}\\u{9b}\\u{202e}d\te");
        assert!(!out.chars().any(|c| c.is_control() && c != '\t'));
        assert!(matches!(escape("plain text, ünïcode ✓"), Cow::Borrowed(_)));
        let lines: Vec<_> = escape_lines("one\x1b\ntwo").collect();
        assert_eq!(lines, ["one\\u{1b}", "two"]);
    }

    #[test]
    fn a_long_input_is_quoted_in_part_with_its_size() {
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let long = "é".repeat(50_000);
        let q = quote(&long);
        assert!(q.len() < QUOTE_BYTES + 40, "{q}");
        assert!(q.ends_with("… (100000 bytes)"), "{q}");
    }

    #[test]
    fn milliseconds_have_at_most_three_decimals() {
        let ms = millis(std::time::Duration::from_nanos(227_819));
        assert_eq!(ms, 0.228);
        assert_eq!(format!("{}", millis(std::time::Duration::from_nanos(300_941_834_999))), "300941.835");
    }
}
