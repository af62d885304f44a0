//! Event type patterns: an exact type (`task.failed`) or a glob where `*`
//! matches any run of characters and `?` one character (`worker.*`, `*`).
//!
//! The one matcher for every place that compares a type (or a source) with
//! what a user wrote: handler routes in [`crate::config`] and
//! [`crate::route`], the filters of `cortex replay` and `cortex dlq`, the
//! types a handler declares it emits, and the scaffold's catalogue lookup.
//! It depends on nothing else in the crate, so any module can use it.

/// Glob match of `pattern` against `text` (`*` any run, `?` one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `pattern` is an event type or a glob of one: lowercase letters,
/// digits, `.`, `_`, `*` and `?`.
pub fn is_type_pattern(pattern: &str) -> bool {
    !pattern.is_empty() && pattern.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._*?".contains(c))
}

/// Whether any of `patterns` matches `text`.
pub fn any_match<S: AsRef<str>>(patterns: &[S], text: &str) -> bool {
    patterns.iter().any(|p| glob_match(p.as_ref(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("worker.*", "worker.completed"));
        assert!(!glob_match("worker.*", "task.completed"));
        assert!(glob_match("*", "anything.at_all"));
        assert!(glob_match("task.failed", "task.failed"));
        assert!(!glob_match("task.failed", "task.failed2"));
        assert!(glob_match("*.failed", "worker.failed"));
        assert!(glob_match("s?stem.*", "system.health_alert"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("*a*b", "xxaxxbxx"));
        assert!(!glob_match("?", ""));
    }

    #[test]
    fn any_of_several() {
        assert!(any_match(&["task.*", "worker.failed"], "worker.failed"));
        assert!(!any_match(&["task.*", "worker.failed"], "worker.completed"));
        assert!(!any_match::<&str>(&[], "task.created"));
    }
}
