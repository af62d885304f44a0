//! How on-task-failure reads an error text: its signature (the text with
//! ids, numbers, quoted strings and paths replaced by placeholders, so one
//! recurring failure counts as one pattern), whether it reads as transient
//! (timeouts, rate limits, network resets, 429 and 5xx), and a suggested fix
//! for a recurring signature. Pure functions of the text.

/// Longest signature, in characters.
const MAX_SIGNATURE: usize = 160;
/// Error texts that mean "try again later" (matched in lowercase): timeouts,
/// rate limits, network resets and refusals as Node, Python, Go and curl
/// word them, overloaded or unavailable services.
const TRANSIENT: &[&str] = &[
    "timeout",
    "timed out",
    "etimedout",
    "esockettimedout",
    "deadline exceeded",
    "rate limit",
    "ratelimit",
    "rate-limit",
    "too many requests",
    "throttl",
    "quota exceeded",
    "temporar",
    "transient",
    "try again",
    "eagain",
    "eai_again",
    "connection reset",
    "reset by peer",
    "econnreset",
    "connection refused",
    "econnrefused",
    "connection aborted",
    "econnaborted",
    "connection closed",
    "broken pipe",
    "epipe",
    "socket hang up",
    "network is unreachable",
    "enetunreach",
    "ehostunreach",
    "unavailable",
    "overloaded",
    "bad gateway",
    "server error",
];
/// HTTP statuses that mean the same, matched as whole numbers: request
/// timeout, too many requests, and the 5xx a server answers when it is
/// failing or overloaded.
const TRANSIENT_CODES: &[&str] = &["408", "429", "500", "502", "503", "504"];

/// Whether an error text reads as transient.
pub(crate) fn is_transient(error: &str) -> bool {
    let lower = error.to_lowercase();
    TRANSIENT.iter().any(|m| lower.contains(m)) || TRANSIENT_CODES.iter().any(|code| contains_number(&lower, code))
}

/// Whether `number` occurs in `text` not as part of a longer number.
fn contains_number(text: &str, number: &str) -> bool {
    text.match_indices(number).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + number.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// A short heuristic fix for a recurring signature.
pub(crate) fn suggested_fix(signature: &str) -> &'static str {
    let has = |m: &str| signature.contains(m);
    if has("timeout") || has("timed out") || has("deadline exceeded") {
        "raise the timeout or add backoff"
    } else if has("rate limit") || has("ratelimit") || contains_number(signature, "429") {
        "throttle requests"
    } else if has("connection")
        || has("unavailable")
        || contains_number(signature, "502")
        || contains_number(signature, "503")
    {
        "check the dependency is up and retry with backoff"
    } else if has("permission denied") || has("forbidden") || has("unauthorized") {
        "check credentials and permissions"
    } else if has("not found") || has("no such file") {
        "check the referenced resource exists"
    } else if has("out of memory")
        || signature.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == "oom" || w == "oomkilled")
    {
        "raise the memory limit or reduce the batch size"
    } else {
        "investigate recurring failure"
    }
}

/// The normalised form of an error: lowercase; numbers `<n>`, hex ids and
/// uuids `<id>`, quoted strings `<str>`, paths `<path>`; whitespace collapsed;
/// at most [`MAX_SIGNATURE`] characters.
pub(crate) fn signature(error: &str) -> String {
    let chars: Vec<char> = error.to_lowercase().chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = i.checked_sub(1).map(|p| chars[p]);
        if c.is_whitespace() {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            i += 1;
        } else if let Some(end) = quoted_end(&chars, i) {
            out.push_str("<str>");
            i = end + 1;
        } else if let Some(end) = path_end(&chars, i) {
            out.push_str("<path>");
            i = end;
        } else if c.is_ascii_alphanumeric() && !prev.is_some_and(|p| p.is_ascii_alphanumeric()) && is_uuid(&chars[i..])
        {
            out.push_str("<id>");
            i += 36;
        } else if c.is_ascii_alphanumeric() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            out.push_str(&word(&chars[start..i].iter().collect::<String>()));
        } else {
            out.push(c);
            i += 1;
        }
    }
    let capped: String = out.trim().chars().take(MAX_SIGNATURE).collect();
    let capped = capped.trim_end();
    if capped.is_empty() { "unknown error".into() } else { capped.into() }
}

/// The index of the closing quote when a quoted string starts at `i`.
fn quoted_end(chars: &[char], i: usize) -> Option<usize> {
    let q = chars[i];
    if !matches!(q, '"' | '\'' | '`') {
        return None;
    }
    // An apostrophe inside a word ("don't") opens nothing.
    if q == '\'' && i > 0 && chars[i - 1].is_alphanumeric() {
        return None;
    }
    chars[i + 1..].iter().position(|&c| c == q).map(|n| i + 1 + n)
}

/// The end (exclusive) of a file path starting at `i`: `/…`, `./…`, `../…`,
/// `~/…` or `c:\…`, at the start of a word.
fn path_end(chars: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| chars.get(k).copied();
    let boundary = i == 0 || chars[i - 1].is_whitespace() || "=([{,:<\"'".contains(chars[i - 1]);
    let starts = match chars[i] {
        '/' => true,
        '~' => at(i + 1) == Some('/'),
        '.' => at(i + 1) == Some('/') || (at(i + 1) == Some('.') && at(i + 2) == Some('/')),
        c if c.is_ascii_alphabetic() => at(i + 1) == Some(':') && at(i + 2) == Some('\\'),
        _ => false,
    };
    if !boundary || !starts {
        return None;
    }
    let mut end = i;
    while end < chars.len() && !chars[end].is_whitespace() && !",;)]}\"'<>".contains(chars[end]) {
        end += 1;
    }
    // Sentence punctuation after a path is not part of it.
    while end > i && matches!(chars[end - 1], '.' | ':') {
        end -= 1;
    }
    // A lone "/" (as in "a / b") has nothing path-like in it.
    chars[i..end].iter().any(|c| c.is_alphanumeric()).then_some(end)
}

/// Whether the text starts with a uuid (8-4-4-4-12 hex digits) that is not
/// followed by more word characters.
fn is_uuid(chars: &[char]) -> bool {
    if chars.len() < 36 || chars.get(36).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return false;
    }
    chars[..36].iter().enumerate().all(|(k, c)| match k {
        8 | 13 | 18 | 23 => *c == '-',
        _ => c.is_ascii_hexdigit(),
    })
}

/// One run of ASCII letters and digits, normalised.
fn word(w: &str) -> String {
    let digits = w.bytes().filter(u8::is_ascii_digit).count();
    let is_hex = w.bytes().all(|b| b.is_ascii_hexdigit());
    if digits == w.len() {
        return "<n>".into();
    }
    if (w.len() > 2 && w.starts_with("0x") && w[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        || (w.len() >= 6 && is_hex && digits > 0)
    {
        return "<id>".into();
    }
    // Digits inside a word ("30s", "worker7") are counts or ordinals.
    let mut out = String::new();
    let mut in_digits = false;
    for c in w.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push_str("<n>");
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_replace_the_variable_parts() {
        assert_eq!(signature("Timeout after 30s waiting for worker-7"), "timeout after <n>s waiting for worker-<n>");
        assert_eq!(
            signature("Task 4f9a2c1e-1b2c-4d3e-9f00-123456789abc  failed:\tKeyError 'user_id'"),
            "task <id> failed: keyerror <str>"
        );
        assert_eq!(signature("cannot open /var/data/run-12/x.json: denied"), "cannot open <path>: denied");
        assert_eq!(signature("segfault at 0xDEADBEEF in commit a3f9c21b"), "segfault at <id> in commit <id>");
        assert_eq!(signature("don't retry \"job 12\""), "don't retry <str>");
        assert_eq!(signature("i/o error on a / b"), "i/o error on a / b");
        assert_eq!(signature("   "), "unknown error");
        assert_eq!(signature(&"x ".repeat(200)).chars().count(), MAX_SIGNATURE - 1);
        assert_eq!(
            signature("Timeout after 45s waiting for worker-9"),
            signature("timeout after 30s waiting for worker-7")
        );
    }

    #[test]
    fn transient_errors_are_recognised() {
        assert!(is_transient("Request timed out"));
        assert!(is_transient("HTTP 503 Service Unavailable"));
        assert!(is_transient("got 429"));
        assert!(!is_transient("item 14290 not found"));
        assert!(!is_transient("KeyError: 'user_id'"));
        for transient in [
            "read ECONNRESET",
            "Error: socket hang up",
            "HTTP 429 Too Many Requests",
            "status=429",
            "upstream returned HTTP 504",
            "500 Internal Server Error",
            "Bad Gateway",
            "connect ECONNREFUSED 10.0.0.7:5432",
            "getaddrinfo EAI_AGAIN api.example.com",
            "write EPIPE",
            "[Errno 104] Connection reset by peer",
            "anthropic.RateLimitError: rate_limit_error",
            "Request throttled, slow down",
            "The model is overloaded",
            "ETIMEDOUT",
        ] {
            assert!(is_transient(transient), "{transient}");
        }
        for permanent in ["HTTP 404 Not Found", "401 Unauthorized", "ValueError: invalid literal", "5000 rows expected"]
        {
            assert!(!is_transient(permanent), "{permanent}");
        }
    }
}
