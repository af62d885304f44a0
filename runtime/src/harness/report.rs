//! What `cortex handler test` does with a report: prints it for people,
//! derives an expectation file from it (`--write-expect`), and names every
//! difference from one (`--expect`, a JSON subset).

use serde_json::{Value, json};

use crate::records::report::{Change, HarnessReport, HarnessRun};

/// The parts of a report that a rerun reproduces, as a starting point for
/// an expectation file: no durations, paths, hashes or load details. What
/// the handler itself derives from the clock (timestamps in its files) stays
/// in and is for the author to delete.
pub fn expectation(report: &HarnessReport) -> Value {
    let report = report.to_value();
    let mut runs = Vec::new();
    for r in report["runs"].as_array().into_iter().flatten() {
        let mut r = r.clone();
        if let Some(o) = r.as_object_mut() {
            for volatile in ["duration_ms", "event_file", "warning"] {
                o.remove(volatile);
            }
            for stream in ["stdout", "stderr"] {
                if o.get(stream).is_some_and(|v| v == "") {
                    o.remove(stream);
                }
            }
        }
        runs.push(r);
    }
    json!({ "handler": report["handler"], "runs": runs })
}

/// Where `actual` differs from `expected`, one line per difference.
///
/// `expected` is a subset: an object names only the keys it cares about
/// (each compared recursively; an empty object expects an empty one), an
/// array must have the same length with each element compared recursively,
/// `null` matches an absent key, anything else must be equal. So an
/// expectation leaves out what varies between runs (durations, ids).
pub fn differences(expected: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", expected, actual, &mut out);
    out
}

fn diff(at: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    let here = if at.is_empty() { "(the report)" } else { at };
    match (expected, actual) {
        // An empty object expects an empty one ("files": {} = no files written).
        (Value::Object(e), Value::Object(a)) if e.is_empty() && !a.is_empty() => {
            out.push(format!("{here}: expected none, got {}", short(actual)));
        }
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match a.get(k) {
                    Some(av) => diff(&path, ev, av, out),
                    None if ev.is_null() => {}
                    None => out.push(format!("{path}: expected {}, but it is absent", short(ev))),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!("{here}: expected {} item(s), got {}: {}", e.len(), a.len(), short(actual)));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                diff(&format!("{at}[{i}]"), ev, av, out);
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a => {}
        (e, a) => out.push(format!("{here}: expected {}, got {}", short(e), short(a))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 200 {
        return s;
    }
    let cut = s.floor_char_boundary(200);
    format!("{}… ({} bytes)", &s[..cut], s.len())
}

/// Prints a report for people.
///
/// # Errors
/// When `out` cannot be written.
pub fn print_text(report: &HarnessReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    // Everything in a report but the numbers came from the guest or the event.
    use crate::text::Escaped;
    let h = &report.handler;
    writeln!(
        out,
        "component {}\n  {} v{} (sha256 {}), loaded in {} ms{}",
        Escaped(&report.component),
        Escaped(&h.name),
        Escaped(&h.version),
        &report.sha256[..12.min(report.sha256.len())],
        report.load_ms,
        if report.compiled_from_cache { " from the compiled cache" } else { " (compiled now)" },
    )?;
    for (i, r) in report.runs.iter().enumerate() {
        writeln!(
            out,
            "\nevent {}/{}  {}  {} {}",
            i + 1,
            report.runs.len(),
            Escaped(&r.event_file),
            Escaped(&r.event_type),
            Escaped(&r.event_id)
        )?;
        print_run(r, out)?;
    }
    if let Some(k) = &report.kept_root {
        writeln!(out, "\nsandbox root kept at {}", Escaped(k))?;
    }
    Ok(())
}

/// One run of a report, for people.
fn print_run(r: &HarnessRun, out: &mut impl std::io::Write) -> std::io::Result<()> {
    use crate::text::{Escaped, escape_lines};
    if let Some(w) = &r.warning {
        writeln!(out, "  warning  {}", Escaped(w))?;
    }
    if r.outcome == HarnessRun::OK {
        writeln!(out, "  outcome  ok: {}", Escaped(r.summary.as_deref().unwrap_or("")))?;
    } else {
        let error = Escaped(r.error.as_deref().unwrap_or(""));
        writeln!(out, "  outcome  FAILED ({}): {error}", Escaped(&r.outcome))?;
    }
    for e in &r.emitted {
        let payload = short(&Value::Object(e.payload.clone()));
        writeln!(out, "  emitted  {} ({}) {}", Escaped(&e.event_type), e.priority.as_str(), Escaped(&payload))?;
    }
    for (path, f) in &r.files {
        let sign = match f.change {
            Change::Created => '+',
            Change::Removed => '-',
            Change::Modified => '~',
        };
        let what = match (&f.symlink, f.bytes, f.allocated_bytes) {
            (Some(target), _, _) => format!(" -> {} (a symlink)", Escaped(target)),
            (None, Some(b), Some(a)) => format!(" ({b} bytes, sparse: {a} allocated)"),
            (None, Some(b), None) => format!(" ({b} bytes)"),
            _ => String::new(),
        };
        writeln!(out, "  wrote    {sign} {}{what}", Escaped(path))?;
    }
    for l in &r.logs {
        writeln!(out, "  log      {:<5} {}", l.level.as_str(), Escaped(&l.message))?;
    }
    for (stream, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        for line in escape_lines(text).take(20) {
            writeln!(out, "  {stream:<8} {line}")?;
        }
    }
    writeln!(out, "  took     {} ms", r.duration_ms)
}
