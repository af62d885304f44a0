//! A [`Trace`] as `cortex trace` prints it: a heading, then each tree
//! drawn with box characters, one line per event (id, type, source, time
//! after its parent, status, duration) and one line per handler on it
//! (outcome, fault, duration, its summary or message). Every string from a
//! record is escaped: producers wrote the events, handlers the messages.

use std::fmt::{self, Write as _};

use super::{Named, Node, Outcome, Status, Step, Trace};
use crate::text::Escaped;

/// How much of a handler's summary or message a line shows, in characters.
const SHOWN: usize = 120;

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trees = self.trees.len();
        match self.named {
            Named::Event => writeln!(f, "trace of event {}: {} events", Escaped(&self.id), self.events)?,
            Named::Correlation => writeln!(
                f,
                "trace of correlation {}: {} events in {trees} {}",
                Escaped(&self.id),
                self.events,
                if trees == 1 { "tree" } else { "trees" }
            )?,
        }
        for tree in &self.trees {
            f.write_char('\n')?;
            if let Some(p) = &tree.missing_parent {
                writeln!(f, "(caused by {}, which the root no longer holds)", Escaped(p))?;
            }
            node(f, tree, "", "", self.named == Named::Event)?;
        }
        Ok(())
    }
}

/// One event and its subtree: `lead` starts its own line, `indent` the
/// lines under it.
fn node(f: &mut fmt::Formatter<'_>, n: &Node, lead: &str, indent: &str, mark: bool) -> fmt::Result {
    write!(f, "{lead}{}  {}  from {}", Escaped(&n.event_id), Escaped(&n.event_type), Escaped(&n.source))?;
    if let Some(ms) = n.since_parent_ms {
        write!(f, "  +{}", duration(ms))?;
    }
    write!(f, "  {}", status(n.status))?;
    if n.attempts > 1 {
        write!(f, " after {} attempts", n.attempts)?;
    }
    if let Some(ms) = n.duration_ms {
        write!(f, " in {}", duration(ms))?;
    }
    if mark && n.asked {
        f.write_str("  <- asked")?;
    }
    f.write_char('\n')?;
    let under = if n.children.is_empty() { format!("{indent}   ") } else { format!("{indent}│  ") };
    for s in &n.handlers {
        step(f, s, &under)?;
    }
    if n.handlers.is_empty() && matches!(n.status, Status::Handled | Status::Unhandled | Status::Waiting) {
        writeln!(f, "{under}(no handler)")?;
    }
    if !n.reason.is_empty() {
        writeln!(f, "{under}reason: {}", Escaped(&clip(&n.reason)))?;
    }
    for (i, c) in n.children.iter().enumerate() {
        let last = i + 1 == n.children.len();
        let (lead, next) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
        node(f, c, &format!("{indent}{lead}"), &format!("{indent}{next}"), mark)?;
    }
    Ok(())
}

fn step(f: &mut fmt::Formatter<'_>, s: &Step, under: &str) -> fmt::Result {
    write!(f, "{under}· {}: {}", Escaped(&s.handler), outcome(s.outcome))?;
    if let Some(kind) = s.fault {
        write!(f, " ({kind})")?;
    }
    if let Some(ms) = s.duration_ms {
        write!(f, " {}", duration(ms))?;
    }
    // The time of day it started (the tree's lines give the dates).
    if let Some(at) = &s.started {
        write!(f, " from {}", Escaped(at.get(11..).unwrap_or(at).trim_end_matches('Z')))?;
    }
    if !s.message.is_empty() {
        write!(f, ": {}", Escaped(&clip(&s.message)))?;
    }
    f.write_char('\n')
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Waiting => "waiting",
        Status::Running => "running",
        Status::Handled => "handled",
        Status::Unhandled => "unhandled",
        Status::Archived => "archived",
        Status::DeadLettered => "dead-lettered",
    }
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Refused => "refused",
        Outcome::DeadLettered => "dead-lettered",
        Outcome::Waiting => "waiting",
    }
}

/// Milliseconds as a person reads them: `850 µs`, `12.3 ms`, `4.2 s`, `3 min`.
fn duration(ms: f64) -> String {
    let sign = if ms < 0.0 { "-" } else { "" };
    let ms = ms.abs();
    let text = if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else if ms < 120_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 7_200_000.0 {
        format!("{:.0} min", ms / 60_000.0)
    } else {
        format!("{:.1} h", ms / 3_600_000.0)
    };
    format!("{sign}{text}")
}

/// The first [`SHOWN`] characters, `…` marking a cut.
fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(SHOWN).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn durations_read_naturally_and_text_is_escaped_and_clipped() {
        assert_eq!(duration(0.25), "250 µs");
        assert_eq!(duration(12.34), "12.3 ms");
        assert_eq!(duration(4200.0), "4.2 s");
        assert_eq!(duration(-1500.0), "-1.5 s");
        assert_eq!(duration(600_000.0), "10 min");
        let long = "é".repeat(SHOWN + 5);
        assert!(clip(&long).ends_with('…') && clip("short") == "short");
        let mut out = String::new();
        let s = Step {
            handler: "h".into(),
            outcome: Outcome::Failed,
            duration_ms: Some(2.0),
            started: None,
            fault: Some(crate::records::FaultKind::Error),
            message: "line\x1b[2J".into(),
        };
        write!(out, "{}", Shown(&s)).unwrap();
        assert_eq!(out, "  · h: failed (error) 2.0 ms: line\\u{1b}[2J\n");
        let ran = Step {
            outcome: Outcome::Ok,
            started: Some("2026-12-02T01:02:03.456789Z".into()),
            fault: None,
            message: "done".into(),
            ..s
        };
        out.clear();
        write!(out, "{}", Shown(&ran)).unwrap();
        assert_eq!(out, "  · h: ok 2.0 ms from 01:02:03.456789: done\n");
    }

    /// A step under a two-space indent.
    struct Shown<'a>(&'a Step);

    impl fmt::Display for Shown<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            step(f, self.0, "  ")
        }
    }
}
