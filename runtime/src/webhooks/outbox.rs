//! The outbox on disk: `events/outbox/<endpoint>/<webhook-id>.json`, one
//! [`OutboxRecord`] per delivery not yet made, and `disabled.json`, the
//! mark of an endpoint that answered `410 Gone`.
//!
//! Records are created by the queue's group commit (see
//! `queue/commit.rs`); everything else here is the deliverer's and the
//! CLI's: a record rewritten after a failed attempt, removed after a 2xx,
//! turned into a dead letter after the last attempt, put back by
//! `cortex dlq retry`. Every write is a durable temp-file rename, so a
//! crash leaves the old record or the new one, never a torn one; a dead
//! letter is written before its record is removed (a crash in between
//! leaves both: the delivery may be made once more, never lost).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Routes;
use crate::fsio;
use crate::layout::Layout;
use crate::queue::now_rfc3339;
use crate::records::{DeadLetterRecord, EndpointDisabled, OutboxRecord, WebhookRef};

/// The file of a delivery.
pub fn path(layout: &Layout, endpoint: &str, webhook_id: &str) -> PathBuf {
    layout.outbox_endpoint(endpoint).join(format!("{webhook_id}.json"))
}

fn disabled_path(layout: &Layout, endpoint: &str) -> PathBuf {
    layout.outbox_endpoint(endpoint).join("disabled.json")
}

/// Makes the directory of each endpoint, durably, so the group commit
/// only ever renames into directories that exist.
///
/// # Errors
/// When one cannot be created.
pub fn prepare(layout: &Layout, routes: &Routes) -> Result<()> {
    let mut made = false;
    for r in &routes.endpoints {
        let dir = layout.outbox_endpoint(&r.name);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
            made = true;
        }
    }
    if made {
        fsio::sync_dir(&layout.outbox())?;
        fsio::sync_dir(&layout.events())?;
    }
    Ok(())
}

/// The file names of an endpoint's deliveries (`msg_*.json`), unsorted.
///
/// # Errors
/// When the directory exists but cannot be listed.
pub fn names(layout: &Layout, endpoint: &str) -> Result<Vec<String>> {
    let dir = layout.outbox_endpoint(endpoint);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("failed to list the webhook outbox {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("failed to list the webhook outbox {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("msg_") && name.ends_with(".json") {
            out.push(name);
        }
    }
    Ok(out)
}

/// Reads one delivery by file name.
///
/// # Errors
/// When it cannot be read or is not an outbox record.
pub fn read(layout: &Layout, endpoint: &str, name: &str) -> Result<OutboxRecord> {
    let p = layout.outbox_endpoint(endpoint).join(name);
    let bytes = std::fs::read(&p).with_context(|| format!("failed to read webhook delivery {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("webhook delivery {} is not an outbox record", p.display()))
}

fn write_json(layout: &Layout, target: &std::path::Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).context("failed to serialize a webhook record")?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    fsio::write_durably(&layout.tmp(), target, &bytes)
        .with_context(|| format!("failed to write {}", target.display()))?;
    target.parent().map_or(Ok(()), fsio::sync_dir)
}

/// Writes (or rewrites) a delivery durably.
///
/// # Errors
/// When it cannot be written.
pub fn write(layout: &Layout, record: &OutboxRecord) -> Result<()> {
    write_json(layout, &path(layout, &record.endpoint, &record.webhook_id), record)
}

/// Removes a delivery that was made. One already gone is fine. The
/// directory is not synced: a removal lost in a crash only sends the
/// delivery once more, with the same `webhook-id` (at least once).
///
/// # Errors
/// When it exists and cannot be removed.
pub fn remove(layout: &Layout, endpoint: &str, webhook_id: &str) -> Result<()> {
    let p = path(layout, endpoint, webhook_id);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to remove delivered webhook {}", p.display())),
    }
}

/// The dead-letter key of a delivery: `webhook.<endpoint>.<webhook-id>`
/// (dots, so no reader takes it for a queue entry's `{rank}-{µs}-{id}`).
pub fn dead_letter_key(endpoint: &str, webhook_id: &str) -> String {
    format!("webhook.{endpoint}.{webhook_id}")
}

/// Turns a delivery that ran out of attempts into a dead letter, then
/// removes it from the outbox.
///
/// # Errors
/// When either file cannot be written or removed.
pub fn dead_letter(layout: &Layout, record: &OutboxRecord, max_attempts: u32, shown_url: &str) -> Result<()> {
    let last = record.history.last().and_then(|a| a.failures.last()).map_or("", |f| f.fault.message.as_str());
    let letter = DeadLetterRecord {
        event: Some(record.event.clone()),
        entry: dead_letter_key(&record.endpoint, &record.webhook_id),
        attempts: Some(record.attempts),
        max_attempts: Some(max_attempts),
        dead_lettered_at: now_rfc3339(),
        reason: format!(
            "webhook delivery to {} ({shown_url}) failed {} times, last: {last}",
            record.endpoint, record.attempts
        ),
        history: Some(record.history.clone()),
        webhook: Some(WebhookRef {
            endpoint: record.endpoint.clone(),
            webhook_id: record.webhook_id.clone(),
            url: shown_url.to_string(),
        }),
        ..DeadLetterRecord::default()
    };
    let target = layout.dead_letter().join(format!("{}.json", letter.entry));
    write_json(layout, &target, &letter)?;
    remove(layout, &record.endpoint, &record.webhook_id)
}

/// Puts a webhook dead letter's delivery back in the outbox (attempts
/// start again; the `webhook-id` stays).
///
/// # Errors
/// When the letter is not a webhook delivery with an event, its endpoint
/// is no longer configured, or the record cannot be written.
pub fn redeliver(layout: &Layout, routes: &Routes, letter: &DeadLetterRecord) -> Result<()> {
    let (Some(w), Some(event)) = (&letter.webhook, &letter.event) else {
        anyhow::bail!("dead letter {} is not a webhook delivery of an event", letter.entry);
    };
    if routes.get(&w.endpoint).is_none() {
        anyhow::bail!(
            "dead letter {}: webhook endpoint {} is no longer in cortex.toml; add [webhooks.{}] back or purge it",
            letter.entry,
            w.endpoint,
            w.endpoint
        );
    }
    write(
        layout,
        &OutboxRecord {
            webhook_id: w.webhook_id.clone(),
            endpoint: w.endpoint.clone(),
            event: event.clone(),
            created_at: now_rfc3339(),
            created_us: crate::queue::now_us(),
            attempts: 0,
            next_attempt_ms: 0,
            history: Vec::new(),
        },
    )
}

/// The endpoint's `410 Gone` mark, if it has one for this URL (a mark for
/// another URL is removed: a new URL re-enables the endpoint).
pub fn disabled(layout: &Layout, endpoint: &str, url_sha256: &str) -> Option<EndpointDisabled> {
    let p = disabled_path(layout, endpoint);
    let mark: EndpointDisabled = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
    if mark.url_sha256 != url_sha256 {
        tracing::info!(endpoint, "webhook endpoint re-enabled: its url changed since it answered 410 Gone");
        let _ = std::fs::remove_file(&p);
        return None;
    }
    Some(mark)
}

/// Marks an endpoint disabled (it answered `410 Gone`).
///
/// # Errors
/// When the mark cannot be written.
pub fn disable(layout: &Layout, endpoint: &str, mark: &EndpointDisabled) -> Result<()> {
    write_json(layout, &disabled_path(layout, endpoint), mark)
}

/// `cortex webhooks enable NAME`: removes the `410 Gone` mark; says
/// whether there was one.
///
/// # Errors
/// When it exists and cannot be removed.
pub fn enable(layout: &Layout, endpoint: &str) -> Result<bool> {
    let p = disabled_path(layout, endpoint);
    match std::fs::remove_file(&p) {
        Ok(()) => fsio::sync_dir(&layout.outbox_endpoint(endpoint)).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("failed to remove {}", p.display())),
    }
}

/// An endpoint as `cortex status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub url: String,
    /// `enabled`, or `disabled` after a `410 Gone`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<EndpointDisabled>,
    /// Deliveries waiting in its outbox.
    pub pending: usize,
}

/// The status of every configured endpoint.
pub fn endpoint_status(layout: &Layout, routes: &Routes) -> Vec<EndpointStatus> {
    routes
        .endpoints
        .iter()
        .map(|r| {
            let disabled = disabled(layout, &r.name, &r.url_sha256);
            EndpointStatus {
                name: r.name.clone(),
                url: r.shown_url.clone(),
                state: if disabled.is_some() { "disabled" } else { "enabled" },
                disabled,
                pending: names(layout, &r.name).map_or(0, |n| n.len()),
            }
        })
        .collect()
}
