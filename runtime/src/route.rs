//! Routing: event type patterns to handlers.
//!
//! A pattern is an exact type (`task.failed`) or a glob where `*` matches any
//! run of characters and `?` one character (`worker.*`, `*`). An event goes to
//! every handler with a matching pattern, and is done when all of them succeed.

use crate::config::Config;

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

/// The names of the handlers an event type reaches, in name order.
pub fn handlers_for<'c>(config: &'c Config, event_type: &str) -> Vec<&'c str> {
    config.handlers.iter().filter(|(_, h)| h.matches(event_type)).map(|(n, _)| n.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

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
    }
}
