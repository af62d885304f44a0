//! `on-security-alert`: turns scanner output into a deduplicated register of
//! open vulnerabilities, a log of scans and a summary by severity, all in
//! the `security` key-value bucket, and raises one critical
//! `system.health_alert` per newly found critical or high vulnerability and
//! per scan that found any.
//!
//! The bucket: `vuln/<id>|<package>|<target>` one [`Vulnerability`] each;
//! `summary` the open vulnerabilities by severity ([`Summary`]); `scans` the
//! number of scans logged and `scan/NNN` the last [`MAX_SCANS`] of them, a
//! ring (scan n is at `scan/{(n - 1) % 200}`). The host commits the writes
//! with the event, so a redelivered event applies once: no seen-id list.
//! `cortex state dump security` shows it all.
//!
//! Producers name things differently: the vulnerability id may come as `id`,
//! `cve_id`, `cve` or `vulnerability_id`, and a scan's `findings` as a count,
//! an object of counts per severity or a list of findings. The accepted
//! shapes are the JSON Schemas in `src/schema/` (returned by `describe()`);
//! unknown fields are logged at warn level, and an unusable payload is
//! refused as not retryable. The file is past 500 lines for its tests: one
//! per accepted shape and per refusal.

use cortex_sdk::kv::{self, Bucket};
use cortex_sdk::{Contract, Emit, Event, Handler, Leftover, Priority, Reader, Result, Value, json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The handler's bucket (`keyvalue = ["security"]`).
const BUCKET: &str = "security";
/// Register entries: `vuln/<id>|<package>|<target>`.
const VULN: &str = "vuln/";
const SUMMARY: &str = "summary";
/// The number of scans ever logged.
const SCANS: &str = "scans";
/// Scans kept in the log (the ring `scan/000` .. `scan/199`).
const MAX_SCANS: u64 = 200;
const SEVERITIES: [&str; 5] = ["critical", "high", "medium", "low", "info"];
/// The names a vulnerability id comes under, tried in this order.
const VULNERABILITY_ID: [&str; 4] = ["id", "cve_id", "cve", "vulnerability_id"];
const VULNERABILITY_FOUND: &str = "security.vulnerability_found";
const SCAN_COMPLETED: &str = "security.scan_completed";

struct OnSecurityAlert;

impl Handler for OnSecurityAlert {
    const NAME: &'static str = "on-security-alert";
    const EVENTS: &'static [&'static str] = &[VULNERABILITY_FOUND, SCAN_COMPLETED];
    const EMITS: &'static [&'static str] = &["system.health_alert"];
    const CONTRACTS: &'static [Contract] = &[
        Contract { event_type: VULNERABILITY_FOUND, schema: include_str!("schema/security.vulnerability_found.json") },
        Contract { event_type: SCAN_COMPLETED, schema: include_str!("schema/security.scan_completed.json") },
    ];

    fn handle(event: Event) -> Result<String> {
        let bucket = Bucket::open(BUCKET)?;
        let applied = apply(&bucket, &event)?;
        applied.leftover.warn();
        // Queued emits and the writes are committed together, only if this
        // returns Ok.
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnSecurityAlert);

/// One register entry: the value of `vuln/<id>|<package>|<target>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Vulnerability {
    id: String,
    severity: String,
    package: Option<String>,
    version: Option<String>,
    target: Option<String>,
    title: Option<String>,
    scanner: Option<String>,
    first_seen: String,
    last_seen: String,
    occurrences: u64,
    status: String,
}

/// One logged scan: the value of `scan/NNN`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Scan {
    scan_id: String,
    event_id: String,
    at: String,
    scanner: Option<String>,
    target: Option<String>,
    /// Per severity (`unknown` for names that are none of the five).
    findings: BTreeMap<String, u64>,
    /// Set when the scanner sent only a count, without severities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    findings_total: Option<u64>,
    duration_ms: Option<u64>,
}

/// `summary`: unique open vulnerabilities by severity, kept as the
/// register changes (a severity changed by a later sighting moves its count).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Summary {
    open: BTreeMap<String, u64>,
    total: u64,
    updated_at: String,
}

impl Default for Summary {
    fn default() -> Summary {
        Summary { open: SEVERITIES.iter().map(|s| (s.to_string(), 0)).collect(), total: 0, updated_at: String::new() }
    }
}

impl Summary {
    /// One open vulnerability went from severity `from` (`None`: new) to `to`.
    fn moved(&mut self, from: Option<&str>, to: &str, now: &str) {
        if let Some(from) = from {
            let n = self.open.entry(from.to_string()).or_default();
            *n = n.saturating_sub(1);
        }
        *self.open.entry(to.to_string()).or_default() += 1;
        self.total = self.open.values().sum();
        self.updated_at = now.to_string();
    }
}

#[derive(Debug)]
struct Applied {
    summary: String,
    follow_ups: Vec<Emit>,
    leftover: Leftover,
}

/// Applies one event to the bucket (buffered by the host until commit).
fn apply(bucket: &Bucket, event: &Event) -> Result<Applied> {
    match event.event_type.as_str() {
        VULNERABILITY_FOUND => vulnerability_found(bucket, event),
        SCAN_COMPLETED => {
            let (scan, applied) = scan_completed(event)?;
            let n = bucket.increment(SCANS, 1)?;
            bucket.set(&scan_key(n), &scan)?;
            Ok(applied)
        }
        other => Err(format!("event type {other} is not handled by on-security-alert").into()),
    }
}

/// Where scan number `n` (from 1) is kept.
fn scan_key(n: u64) -> String {
    format!("scan/{:03}", (n.max(1) - 1) % MAX_SCANS)
}

/// A `security.vulnerability_found` payload.
#[derive(Debug)]
struct Sighting {
    id: String,
    severity: &'static str,
    package: Option<String>,
    version: Option<String>,
    target: Option<String>,
    title: Option<String>,
    scanner: Option<String>,
}

impl Sighting {
    fn read(event: &Event) -> Result<(Sighting, Leftover)> {
        let mut p = Reader::new(event);
        let id = p.req_str(VULNERABILITY_ID)?;
        let severity = read_severity(&mut p, "severity")?;
        let sighting = Sighting {
            id,
            severity,
            package: p.str("package")?,
            version: p.str("version")?,
            target: p.str("target")?,
            title: p.str("title")?,
            scanner: p.str("scanner")?,
        };
        Ok((sighting, p.finish()))
    }
}

fn read_severity(p: &mut Reader, key: &str) -> Result<&'static str> {
    let text = p.req_str(key)?;
    severity(&text).ok_or_else(|| {
        p.wrong(key, "critical, high, medium (or moderate), low or info (any case)", &Value::String(text))
    })
}

fn vulnerability_found(bucket: &Bucket, event: &Event) -> Result<Applied> {
    let (s, leftover) = Sighting::read(event)?;
    let id = s.id;
    let key = format!("{VULN}{id}|{}|{}", s.package.as_deref().unwrap_or(""), s.target.as_deref().unwrap_or(""));
    if !kv::valid_key(&key) {
        return Err(cortex_sdk::Error::refuse(format!(
            "payload.id, package and target together are too long to register ({} bytes; at most 1019)",
            key.len() - VULN.len()
        )));
    }
    let old: Option<Vulnerability> = bucket.get(&key)?;
    let new = old.is_none();
    let old_severity = old.as_ref().map(|v| v.severity.clone());
    let mut v = old.unwrap_or_else(|| Vulnerability {
        id: id.clone(),
        first_seen: event.timestamp.clone(),
        status: "open".into(),
        ..Vulnerability::default()
    });
    let severity = s.severity;
    v.severity = severity.into();
    v.last_seen = event.timestamp.clone();
    v.occurrences += 1;
    // A later sighting may omit details an earlier one gave.
    v.package = s.package.or(v.package.take());
    v.version = s.version.or(v.version.take());
    v.target = s.target.or(v.target.take());
    v.title = s.title.or(v.title.take());
    v.scanner = s.scanner.or(v.scanner.take());
    bucket.set(&key, &v)?;
    if old_severity.as_deref() != Some(severity) {
        let mut summary: Summary = bucket.get(SUMMARY)?.unwrap_or_default();
        summary.moved(old_severity.as_deref(), severity, &event.timestamp);
        bucket.set(SUMMARY, &summary)?;
    }

    let what = format!("{severity} {id}{}", v.package.as_deref().map(|p| format!(" in {p}")).unwrap_or_default());
    let mut follow_ups = Vec::new();
    let summary = if new && matches!(severity, "critical" | "high") {
        let details = json!({
            "id": v.id, "severity": v.severity, "package": v.package, "version": v.version,
            "target": v.target, "title": v.title, "scanner": v.scanner,
        });
        follow_ups.push(alert("vulnerability", details, event));
        format!("new {what}: health alert raised")
    } else if new {
        format!("new {what} registered")
    } else {
        format!("{what} seen again ({} sightings)", v.occurrences)
    };
    Ok(Applied { summary, follow_ups, leftover })
}

/// What a scan found: counts per severity, or only a total.
#[derive(Debug, PartialEq)]
struct Findings {
    counts: BTreeMap<String, u64>,
    /// The scanner sent a bare count: severities unknown.
    total_only: Option<u64>,
}

/// `findings` as a count (`3`, `"3"`), an object of counts per severity
/// (`{"critical": 1, "High": "2"}`) or a list of findings each with a
/// `severity`; absent: nothing found.
fn read_findings(p: &mut Reader, event_type: &str) -> Result<Findings> {
    let mut counts: BTreeMap<String, u64> = SEVERITIES.iter().map(|s| (s.to_string(), 0)).collect();
    let mut total_only = None;
    let mut add = |name: &str, n: u64| {
        let entry = counts.entry(severity(name).unwrap_or("unknown").to_string()).or_default();
        *entry = entry.saturating_add(n);
    };
    match p.value("findings") {
        None => {}
        Some((_, Value::Object(per_severity))) => {
            let mut inner = Reader::within(event_type, "payload.findings", per_severity);
            for name in per_severity.keys() {
                let n = inner.u64(name.as_str())?.unwrap_or(0);
                // A total beside the per-severity counts is not a severity.
                if name != "total" {
                    add(name, n);
                }
            }
        }
        Some((_, Value::Array(list))) => {
            for (i, item) in list.iter().enumerate() {
                let name = match item {
                    Value::Object(o) => {
                        Reader::within(event_type, &format!("payload.findings[{i}]"), o).req_str("severity")?
                    }
                    other => return Err(p.wrong(&format!("findings[{i}]"), "an object with a severity", other)),
                };
                add(&name, 1);
            }
        }
        Some((_, count)) => match p.u64("findings") {
            Ok(n) => total_only = n,
            Err(_) => {
                return Err(p.wrong(
                    "findings",
                    "a count, an object of counts per severity or a list of findings with a severity",
                    count,
                ));
            }
        },
    }
    Ok(Findings { counts, total_only })
}

/// The scan to log and what to say and raise about it.
fn scan_completed(event: &Event) -> Result<(Scan, Applied)> {
    let mut p = Reader::new(event);
    let findings = read_findings(&mut p, &event.event_type)?;
    let scan = Scan {
        scan_id: p.str("scan_id")?.unwrap_or_else(|| event.id.clone()),
        event_id: event.id.clone(),
        at: event.timestamp.clone(),
        scanner: p.str("scanner")?,
        target: p.str("target")?,
        findings: findings.counts,
        findings_total: findings.total_only,
        duration_ms: p.u64("duration_ms")?,
    };
    let leftover = p.finish();
    let (critical, high) = (scan.findings["critical"], scan.findings["high"]);
    let mut follow_ups = Vec::new();
    let mut summary = match scan.findings_total {
        Some(total) => format!("scan {} logged ({total} findings, severities not given)", scan.scan_id),
        None => format!("scan {} logged ({critical} critical, {high} high)", scan.scan_id),
    };
    if critical > 0 || high > 0 {
        let details = json!({
            "scan_id": scan.scan_id, "scanner": scan.scanner, "target": scan.target, "findings": scan.findings,
        });
        follow_ups.push(alert("scan", details, event));
        summary.push_str(": health alert raised");
    }
    Ok((scan, Applied { summary, follow_ups, leftover }))
}

/// A critical `system.health_alert` carrying `details` under `key`.
fn alert(key: &str, details: Value, event: &Event) -> Emit {
    let mut payload = json!({"severity": "critical", "component": "security", "source_event": event.id});
    payload[key] = details;
    Emit::with_payload("system.health_alert", payload).priority(Priority::Critical)
}

/// The canonical severity name, case-insensitive ("moderate" is medium, as
/// some advisory databases call it).
fn severity(s: &str) -> Option<&'static str> {
    match s.trim().to_ascii_lowercase().as_str() {
        "critical" => Some("critical"),
        "high" => Some("high"),
        "medium" | "moderate" => Some("medium"),
        "low" => Some("low"),
        "info" | "informational" | "none" => Some("info"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32, ty: &str, payload: Value) -> Event {
        let envelope = json!({
            "event_id": format!("evt_20251201_1200{n:02}_sec{n:03}"), "event_type": ty,
            "timestamp": format!("2025-12-01T12:00:{n:02}+01:00"), "source": "trivy",
            "metadata": {"priority": "high"}, "payload": payload,
        });
        Event::from_envelope_json(&envelope.to_string()).unwrap()
    }

    fn vuln(n: u32, payload: Value) -> Event {
        event(n, "security.vulnerability_found", payload)
    }

    /// The bucket (an empty in-memory map per test thread).
    fn bucket() -> Bucket {
        Bucket::open(BUCKET).unwrap()
    }

    fn entry(b: &Bucket, key: &str) -> Vulnerability {
        b.get(&format!("{VULN}{key}")).unwrap().unwrap()
    }

    fn summary(b: &Bucket) -> Summary {
        b.get(SUMMARY).unwrap().unwrap_or_default()
    }

    /// The latest scan logged.
    fn last_scan(b: &Bucket) -> Scan {
        b.get(&scan_key(b.counter(SCANS).unwrap())).unwrap().unwrap()
    }

    #[test]
    fn a_new_high_vulnerability_alerts_once() {
        let b = bucket();
        let payload = json!({"cve": "CVE-2025-1234", "severity": "HIGH", "package": "openssl", "target": "api"});
        let a = apply(&b, &vuln(1, payload.clone())).unwrap();
        assert_eq!(a.follow_ups.len(), 1);
        let alert = &a.follow_ups[0];
        assert_eq!(alert.event_type, "system.health_alert");
        assert_eq!(alert.priority, Some(Priority::Critical));
        assert_eq!(alert.payload["severity"], "critical");
        assert_eq!(alert.payload["component"], "security");
        assert_eq!(alert.payload["vulnerability"]["id"], "CVE-2025-1234");
        assert_eq!(alert.payload["vulnerability"]["severity"], "high");
        assert_eq!(alert.payload["source_event"], "evt_20251201_120001_sec001");

        let again = apply(&b, &vuln(2, payload)).unwrap();
        assert!(again.follow_ups.is_empty(), "a repeat sighting does not alert");
        let v = entry(&b, "CVE-2025-1234|openssl|api");
        assert_eq!((v.occurrences, v.first_seen.as_str()), (2, "2025-12-01T12:00:01+01:00"));
        assert_eq!(v.last_seen, "2025-12-01T12:00:02+01:00");

        // Another target is another vulnerability.
        let other = json!({"cve": "CVE-2025-1234", "severity": "high", "package": "openssl", "target": "web"});
        assert_eq!(apply(&b, &vuln(3, other)).unwrap().follow_ups.len(), 1);
        assert_eq!(b.keys(VULN).unwrap().len(), 2);
    }

    #[test]
    fn medium_vulnerabilities_are_registered_quietly_and_summarised() {
        let b = bucket();
        for (n, sev) in [(1, "medium"), (2, "Low"), (3, "critical")] {
            apply(&b, &vuln(n, json!({"id": format!("GHSA-{n}"), "severity": sev}))).unwrap();
        }
        let sum = summary(&b);
        assert_eq!((sum.total, sum.open["medium"], sum.open["low"], sum.open["critical"]), (3, 1, 1, 1));
        assert_eq!(sum.open["high"], 0);
    }

    #[test]
    fn bad_vulnerability_payloads_are_errors() {
        let b = bucket();
        let err = apply(&b, &vuln(1, json!({"severity": "high"}))).unwrap_err();
        assert_eq!(err.message(), "payload.id (or cve_id, cve, vulnerability_id) is required (a string)");
        assert!(!err.is_retryable());
        let err = apply(&b, &vuln(2, json!({"id": "x", "severity": "severe"}))).unwrap_err();
        assert!(err.message().starts_with("payload.severity must be critical, high"), "{err}");
        assert!(!err.is_retryable());
        let err = apply(&b, &vuln(3, json!({"id": "x"}))).unwrap_err();
        assert!(err.message().contains("payload.severity") && !err.is_retryable(), "{err}");
        assert!(b.keys("").unwrap().is_empty(), "a refused event writes nothing");
    }

    #[test]
    fn scans_are_logged_and_alert_on_critical_or_high_findings() {
        let b = bucket();
        let clean = event(1, "security.scan_completed", json!({"scanner": "trivy", "findings": {"medium": 2}}));
        let a = apply(&b, &clean).unwrap();
        assert!(a.follow_ups.is_empty());
        assert_eq!(last_scan(&b).scan_id, "evt_20251201_120001_sec001", "scan id defaults to the event id");
        assert_eq!(last_scan(&b).findings["medium"], 2);

        let bad = event(2, "security.scan_completed", json!({"scan_id": "scan-9", "findings": {"critical": 1}}));
        let a = apply(&b, &bad).unwrap();
        assert_eq!(a.follow_ups[0].payload["scan"]["findings"]["critical"], 1);
        assert_eq!(a.follow_ups[0].payload["scan"]["scan_id"], "scan-9");
        assert_eq!(b.counter(SCANS).unwrap(), 2);
        assert_eq!(last_scan(&b).scan_id, "scan-9");

        let wrong = event(3, "security.scan_completed", json!({"findings": {"high": "lots"}}));
        let err = apply(&b, &wrong).unwrap_err();
        assert!(err.message().starts_with("payload.findings.high must be a non-negative whole number"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn a_critical_cve_sent_as_cve_id_raises_the_alert() {
        let b = bucket();
        for (n, key) in [(1, "cve_id"), (2, "vulnerability_id"), (3, "id"), (4, "cve")] {
            let e = vuln(n, json!({key: format!("CVE-2025-000{n}"), "severity": "critical", "package": "openssl"}));
            let a = apply(&b, &e).unwrap();
            assert_eq!(a.follow_ups[0].payload["vulnerability"]["id"], format!("CVE-2025-000{n}"), "{key}");
            assert!(a.leftover.ignored.is_empty());
        }
        // The first synonym present wins; blank text counts as absent.
        let both = vuln(5, json!({"id": " ", "cve_id": "CVE-2025-0009", "cve": "CVE-OTHER", "severity": "low"}));
        apply(&b, &both).unwrap();
        assert!(b.exists("vuln/CVE-2025-0009||").unwrap(), "{:?}", b.keys(VULN).unwrap());
    }

    #[test]
    fn unknown_fields_are_named_not_dropped_silently() {
        let b = bucket();
        let e = vuln(
            1,
            json!({"cve_id": "CVE-1", "severity": "high", "recommendation": "upgrade", "repo": "api", "package": "x"}),
        );
        let a = apply(&b, &e).unwrap();
        assert_eq!(a.leftover.ignored, ["recommendation", "repo"]);
        assert_eq!(
            a.leftover.message().unwrap(),
            "security.vulnerability_found payload: ignored 2 unknown fields: recommendation, repo"
        );
    }

    #[test]
    fn findings_come_as_a_count_a_map_or_a_list() {
        let b = bucket();
        let scan = |n: u32, findings: Value| event(n, "security.scan_completed", json!({"findings": findings}));

        for (n, count) in [(1, json!(3)), (2, json!("3"))] {
            let a = apply(&b, &scan(n, count)).unwrap();
            assert!(a.follow_ups.is_empty(), "a bare count has no severities to alert on");
            assert!(a.summary.contains("3 findings, severities not given"), "{}", a.summary);
            assert_eq!(last_scan(&b).findings_total, Some(3));
        }
        let per_severity = json!({"High": "2", "moderate": 1, "negligible": 4, "total": 7});
        let a = apply(&b, &scan(3, per_severity)).unwrap();
        let found = &last_scan(&b).findings;
        assert_eq!((found["high"], found["medium"], found["unknown"]), (2, 1, 4));
        assert!(!found.contains_key("total"));
        assert_eq!(a.follow_ups[0].payload["scan"]["findings"]["high"], 2);
        let list = json!([{"id": "CVE-1", "severity": "CRITICAL"}, {"id": "CVE-2", "severity": "low"}]);
        let a = apply(&b, &scan(4, list)).unwrap();
        assert_eq!(a.follow_ups[0].payload["scan"]["findings"]["critical"], 1);
        assert_eq!(last_scan(&b).findings_total, None);

        for (n, bad, named) in [
            (5, json!("lots"), "payload.findings must be a count, an object of counts per severity or a list"),
            (6, json!(-2), "payload.findings must be a count"),
            (7, json!([{"id": "CVE-1"}]), "payload.findings[0].severity is required"),
            (8, json!(["CVE-1"]), "payload.findings[0] must be an object with a severity"),
        ] {
            let err = apply(&b, &scan(n, bad)).unwrap_err();
            assert!(!err.is_retryable() && err.message().starts_with(named), "{err}");
        }
        assert_eq!(b.counter(SCANS).unwrap(), 4, "a refused scan is not logged");
    }

    /// Parses without state, as the contract check needs.
    fn read(e: &Event) -> Result<Leftover> {
        match e.event_type.as_str() {
            VULNERABILITY_FOUND => Sighting::read(e).map(|(_, left)| left),
            _ => scan_completed(e).map(|(_, a)| a.leftover),
        }
    }

    #[test]
    fn the_contracts_match_the_parser() {
        let fixture = |text: &str| Event::from_envelope_json(text).unwrap();
        let vulns = [
            fixture(include_str!("../fixtures/vulnerability-found.json")),
            vuln(1, json!({"cve_id": "CVE-1", "severity": "critical"})),
            vuln(2, json!({"vulnerability_id": "V-1", "severity": "Moderate", "target": "api"})),
            vuln(3, json!({"id": "GHSA-1", "severity": "low"})),
        ];
        cortex_sdk::contract::check(OnSecurityAlert::CONTRACTS[0].schema, &vulns, read).unwrap();
        let scans = [
            fixture(include_str!("../fixtures/scan-completed.json")),
            event(4, SCAN_COMPLETED, json!({"findings": 3})),
            event(5, SCAN_COMPLETED, json!({"findings": [{"severity": "high"}]})),
        ];
        cortex_sdk::contract::check(OnSecurityAlert::CONTRACTS[1].schema, &scans, read).unwrap();
        assert_eq!(
            OnSecurityAlert::CONTRACTS.iter().map(|c| c.event_type).collect::<Vec<_>>(),
            OnSecurityAlert::EVENTS
        );
    }

    #[test]
    fn fixtures_apply() {
        let b = bucket();
        for text in
            [include_str!("../fixtures/vulnerability-found.json"), include_str!("../fixtures/scan-completed.json")]
        {
            let e = Event::from_envelope_json(text).unwrap();
            assert_eq!(apply(&b, &e).unwrap().follow_ups.len(), 1);
        }
    }

    #[test]
    fn a_severity_changed_by_a_later_sighting_moves_its_count() {
        let b = bucket();
        apply(&b, &vuln(1, json!({"id": "CVE-1", "severity": "low"}))).unwrap();
        apply(&b, &vuln(2, json!({"id": "CVE-1", "severity": "high"}))).unwrap();
        let sum = summary(&b);
        assert_eq!((sum.open["low"], sum.open["high"], sum.total), (0, 1, 1));
        assert_eq!(sum.updated_at, "2025-12-01T12:00:02+01:00");
    }

    #[test]
    fn the_scan_log_is_a_ring_of_the_last_two_hundred() {
        let b = bucket();
        for n in 0..205 {
            let e = event(n % 60, SCAN_COMPLETED, json!({"scan_id": format!("scan-{n}"), "findings": 0}));
            apply(&b, &e).unwrap();
        }
        assert_eq!(b.keys("scan/").unwrap().len(), 200);
        assert_eq!(b.counter(SCANS).unwrap(), 205);
        assert_eq!(last_scan(&b).scan_id, "scan-204");
        let oldest: Scan = b.get("scan/005").unwrap().unwrap();
        assert_eq!(oldest.scan_id, "scan-5", "scan 206 would replace it next");
        let first: Scan = b.get("scan/000").unwrap().unwrap();
        assert_eq!(first.scan_id, "scan-200");
    }
}
