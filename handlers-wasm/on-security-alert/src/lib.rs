//! `on-security-alert`: turns scanner output into a deduplicated register of
//! open vulnerabilities (`/state/security/vulnerabilities.json`), a log of
//! scans (`scans.json`) and a summary by severity (`summary.json`), and raises
//! one critical `system.health_alert` per newly found critical or high
//! vulnerability and per scan that found any.

use cortex_sdk::fields::{opt_str, opt_u64};
use cortex_sdk::{Event, FollowUp, Handler, Map, Priority, Result, Value, json, state};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const REGISTER: &str = "/state/security/vulnerabilities.json";
const SCANS: &str = "/state/security/scans.json";
const SUMMARY: &str = "/state/security/summary.json";
/// Scans kept in the log.
const MAX_SCANS: usize = 200;
const SEVERITIES: [&str; 5] = ["critical", "high", "medium", "low", "info"];

struct OnSecurityAlert;

impl Handler for OnSecurityAlert {
    const NAME: &'static str = "on-security-alert";
    const EVENTS: &'static [&'static str] = &["security.vulnerability_found", "security.scan_completed"];

    fn handle(event: Event) -> Result<String> {
        let mut register: Register = state::load(REGISTER)?;
        if cortex_sdk::already_applied(&register.recent_event_ids, &event.id) {
            return Ok(cortex_sdk::duplicate_summary(&event.id));
        }
        let mut scans: Scans = state::load(SCANS)?;
        let applied = apply(&mut register, &mut scans, &event)?;
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        if applied.scan_logged {
            state::save(SCANS, &scans)?;
        }
        state::save(SUMMARY, &summary(&register, &scans, &event.timestamp))?;
        // Saved last: it holds the applied ids, so a crash before this point
        // lets the redelivery apply the event again (a scan is logged once
        // per event id, and the summary is recomputed).
        state::save(REGISTER, &register)?;
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnSecurityAlert);

/// `/state/security/vulnerabilities.json`: keyed by `<id>|<package>|<target>`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Register {
    vulnerabilities: BTreeMap<String, Vulnerability>,
    recent_event_ids: Vec<String>,
}

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

/// `/state/security/scans.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Scans {
    scans: Vec<Scan>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Scan {
    scan_id: String,
    event_id: String,
    at: String,
    scanner: Option<String>,
    target: Option<String>,
    findings: BTreeMap<String, u64>,
    duration_ms: Option<u64>,
}

/// `/state/security/summary.json`: derived from the register and the scan log.
#[derive(Debug, Serialize, PartialEq)]
struct Summary {
    /// Unique open vulnerabilities by severity.
    open: BTreeMap<String, u64>,
    total: u64,
    last_scan: Option<Scan>,
    updated_at: String,
}

#[derive(Debug)]
struct Applied {
    summary: String,
    follow_ups: Vec<FollowUp>,
    scan_logged: bool,
}

fn apply(register: &mut Register, scans: &mut Scans, event: &Event) -> Result<Applied> {
    let applied = match event.event_type.as_str() {
        "security.vulnerability_found" => vulnerability_found(register, event)?,
        "security.scan_completed" => scan_completed(scans, event)?,
        other => return Err(format!("event type {other} is not handled by on-security-alert")),
    };
    cortex_sdk::remember(&mut register.recent_event_ids, &event.id);
    Ok(applied)
}

fn vulnerability_found(register: &mut Register, event: &Event) -> Result<Applied> {
    let p = &event.payload;
    let id = opt_str(p, "id")?
        .filter(|s| !s.trim().is_empty())
        .or(opt_str(p, "cve")?.filter(|s| !s.trim().is_empty()))
        .ok_or("payload.id or payload.cve is required")?;
    let severity = match opt_str(p, "severity")? {
        Some(s) => {
            severity(&s).ok_or_else(|| format!("payload.severity {s:?} is not critical, high, medium, low or info"))?
        }
        None => return Err("payload.severity is required".into()),
    };
    let (package, version, target) = (opt_str(p, "package")?, opt_str(p, "version")?, opt_str(p, "target")?);
    let (title, scanner) = (opt_str(p, "title")?, opt_str(p, "scanner")?);
    let key = format!("{id}|{}|{}", package.as_deref().unwrap_or(""), target.as_deref().unwrap_or(""));

    let new = !register.vulnerabilities.contains_key(&key);
    let v = register.vulnerabilities.entry(key).or_insert_with(|| Vulnerability {
        id: id.clone(),
        first_seen: event.timestamp.clone(),
        status: "open".into(),
        ..Vulnerability::default()
    });
    v.severity = severity.into();
    v.last_seen = event.timestamp.clone();
    v.occurrences += 1;
    // A later sighting may omit details an earlier one gave.
    v.package = package.or(v.package.take());
    v.version = version.or(v.version.take());
    v.target = target.or(v.target.take());
    v.title = title.or(v.title.take());
    v.scanner = scanner.or(v.scanner.take());

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
    Ok(Applied { summary, follow_ups, scan_logged: false })
}

fn scan_completed(scans: &mut Scans, event: &Event) -> Result<Applied> {
    let p = &event.payload;
    let findings = match p.get("findings") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(format!("payload.findings must be an object of counts, got {other}")),
    };
    let mut counts = BTreeMap::new();
    for name in SEVERITIES {
        let n = opt_u64(&findings, name).map_err(|e| e.replace("payload.", "payload.findings."))?;
        counts.insert(name.to_string(), n.unwrap_or(0));
    }
    let scan = Scan {
        scan_id: opt_str(p, "scan_id")?.unwrap_or_else(|| event.id.clone()),
        event_id: event.id.clone(),
        at: event.timestamp.clone(),
        scanner: opt_str(p, "scanner")?,
        target: opt_str(p, "target")?,
        findings: counts,
        duration_ms: opt_u64(p, "duration_ms")?,
    };
    let (critical, high) = (scan.findings["critical"], scan.findings["high"]);
    let mut follow_ups = Vec::new();
    let mut summary = format!("scan {} logged ({critical} critical, {high} high)", scan.scan_id);
    if critical > 0 || high > 0 {
        let details = json!({
            "scan_id": scan.scan_id, "scanner": scan.scanner, "target": scan.target, "findings": scan.findings,
        });
        follow_ups.push(alert("scan", details, event));
        summary.push_str(": health alert raised");
    }
    if !scans.scans.iter().any(|s| s.event_id == scan.event_id) {
        scans.scans.push(scan);
        cortex_sdk::keep_last(&mut scans.scans, MAX_SCANS);
    }
    Ok(Applied { summary, follow_ups, scan_logged: true })
}

/// A critical `system.health_alert` carrying `details` under `key`.
fn alert(key: &str, details: Value, event: &Event) -> FollowUp {
    let mut payload = json!({"severity": "critical", "component": "security", "source_event": event.id});
    payload[key] = details;
    FollowUp::new("system.health_alert", payload).priority(Priority::Critical)
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

fn summary(register: &Register, scans: &Scans, now: &str) -> Summary {
    let mut open: BTreeMap<String, u64> = SEVERITIES.iter().map(|s| (s.to_string(), 0)).collect();
    for v in register.vulnerabilities.values().filter(|v| v.status == "open") {
        *open.entry(v.severity.clone()).or_default() += 1;
    }
    Summary { total: open.values().sum(), open, last_scan: scans.scans.last().cloned(), updated_at: now.into() }
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

    #[test]
    fn a_new_high_vulnerability_alerts_once() {
        let (mut r, mut s) = (Register::default(), Scans::default());
        let payload = json!({"cve": "CVE-2025-1234", "severity": "HIGH", "package": "openssl", "target": "api"});
        let a = apply(&mut r, &mut s, &vuln(1, payload.clone())).unwrap();
        assert_eq!(a.follow_ups.len(), 1);
        let alert = &a.follow_ups[0];
        assert_eq!(alert.event_type, "system.health_alert");
        assert_eq!(alert.priority, Some(Priority::Critical));
        assert_eq!(alert.payload["severity"], "critical");
        assert_eq!(alert.payload["component"], "security");
        assert_eq!(alert.payload["vulnerability"]["id"], "CVE-2025-1234");
        assert_eq!(alert.payload["vulnerability"]["severity"], "high");
        assert_eq!(alert.payload["source_event"], "evt_20251201_120001_sec001");

        let again = apply(&mut r, &mut s, &vuln(2, payload)).unwrap();
        assert!(again.follow_ups.is_empty(), "a repeat sighting does not alert");
        let v = &r.vulnerabilities["CVE-2025-1234|openssl|api"];
        assert_eq!((v.occurrences, v.first_seen.as_str()), (2, "2025-12-01T12:00:01+01:00"));
        assert_eq!(v.last_seen, "2025-12-01T12:00:02+01:00");

        // Another target is another vulnerability.
        let other = json!({"cve": "CVE-2025-1234", "severity": "high", "package": "openssl", "target": "web"});
        assert_eq!(apply(&mut r, &mut s, &vuln(3, other)).unwrap().follow_ups.len(), 1);
        assert_eq!(r.vulnerabilities.len(), 2);
    }

    #[test]
    fn medium_vulnerabilities_are_registered_quietly_and_summarised() {
        let (mut r, mut s) = (Register::default(), Scans::default());
        for (n, sev) in [(1, "medium"), (2, "Low"), (3, "critical")] {
            apply(&mut r, &mut s, &vuln(n, json!({"id": format!("GHSA-{n}"), "severity": sev}))).unwrap();
        }
        let sum = summary(&r, &s, "now");
        assert_eq!((sum.total, sum.open["medium"], sum.open["low"], sum.open["critical"]), (3, 1, 1, 1));
        assert_eq!(sum.open["high"], 0);
    }

    #[test]
    fn bad_vulnerability_payloads_are_errors() {
        let (mut r, mut s) = (Register::default(), Scans::default());
        let err = apply(&mut r, &mut s, &vuln(1, json!({"severity": "high"}))).unwrap_err();
        assert!(err.contains("payload.id or payload.cve"), "{err}");
        let err = apply(&mut r, &mut s, &vuln(2, json!({"id": "x", "severity": "severe"}))).unwrap_err();
        assert!(err.contains("payload.severity"), "{err}");
        assert!(apply(&mut r, &mut s, &vuln(3, json!({"id": "x"}))).unwrap_err().contains("payload.severity"));
        assert!(r.vulnerabilities.is_empty() && r.recent_event_ids.is_empty());
    }

    #[test]
    fn scans_are_logged_and_alert_on_critical_or_high_findings() {
        let (mut r, mut s) = (Register::default(), Scans::default());
        let clean = event(1, "security.scan_completed", json!({"scanner": "trivy", "findings": {"medium": 2}}));
        let a = apply(&mut r, &mut s, &clean).unwrap();
        assert!(a.follow_ups.is_empty());
        assert_eq!(s.scans[0].scan_id, "evt_20251201_120001_sec001", "scan id defaults to the event id");
        assert_eq!(s.scans[0].findings["medium"], 2);

        let bad = event(2, "security.scan_completed", json!({"scan_id": "scan-9", "findings": {"critical": 1}}));
        let a = apply(&mut r, &mut s, &bad).unwrap();
        assert_eq!(a.follow_ups[0].payload["scan"]["findings"]["critical"], 1);
        assert_eq!(a.follow_ups[0].payload["scan"]["scan_id"], "scan-9");
        assert_eq!(s.scans.len(), 2);
        assert_eq!(summary(&r, &s, "now").last_scan.unwrap().scan_id, "scan-9");

        let wrong = event(3, "security.scan_completed", json!({"findings": {"high": "lots"}}));
        assert!(apply(&mut r, &mut s, &wrong).unwrap_err().contains("payload.findings.high"));
    }

    #[test]
    fn fixtures_apply() {
        let (mut r, mut s) = (Register::default(), Scans::default());
        for text in
            [include_str!("../fixtures/vulnerability-found.json"), include_str!("../fixtures/scan-completed.json")]
        {
            let e = Event::from_envelope_json(text).unwrap();
            assert_eq!(apply(&mut r, &mut s, &e).unwrap().follow_ups.len(), 1);
        }
    }
}
