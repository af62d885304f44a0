//! `cortex emit`: build, validate, log and queue one event from its parts,
//! a JSONL batch from stdin, or CloudEvents from a file or stdin (a batch
//! all of it or none; events already known are skipped either way).

use std::io::{BufReader, IsTerminal, Write};

use anyhow::{Context, Result};

use super::{Outcome, open, read_stdin, strip_bom};
use cortex::event::{NewEvent, Priority};
use cortex::layout::Layout;
use cortex::producer::{Batch, Producer};

#[derive(clap::Args)]
pub struct Args {
    /// Event type, e.g. worker.completed.
    #[arg(required_unless_present_any = ["batch", "cloudevent"])]
    event_type: Option<String>,
    /// Component that emits the event.
    #[arg(required_unless_present_any = ["batch", "cloudevent"])]
    source: Option<String>,
    /// The payload, a JSON object; `@FILE` reads it from a file and `-`
    /// from stdin. Use one of those for large payloads: the OS refuses to
    /// start a command with an argument over 128 KiB.
    #[arg(required_unless_present_any = ["batch", "cloudevent"], value_name = "PAYLOAD_JSON|@FILE|-")]
    payload: Option<String>,
    /// The event's correlation_id, shared by related events (empty: none).
    correlation_id: Option<String>,
    /// critical, high, medium (default) or low.
    priority: Option<Priority>,
    /// A tag for metadata.tags (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// metadata.master: the agent or run the event belongs to.
    #[arg(long, value_name = "NAME")]
    master: Option<String>,
    /// Print the whole event as JSON instead of its id.
    #[arg(long)]
    json: bool,
    /// Read JSONL events from stdin and queue all of them or none (lines
    /// whose event_id is already in the batch or the root are skipped and
    /// reported on stderr).
    #[arg(long, conflicts_with_all = ["event_type", "source", "payload", "correlation_id", "priority", "tags", "master"])]
    batch: bool,
    /// Queue a CloudEvent (structured mode, application/cloudevents+json),
    /// a batch of them (a JSON array, application/cloudevents-batch+json)
    /// or JSON lines of them (as `cortex export` writes) from FILE or stdin
    /// (`-`): a batch all of it or none; events already known (the Cortex
    /// id derives from the CloudEvent's source and id) are skipped and
    /// reported on stderr.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["event_type", "source", "payload", "correlation_id", "priority", "tags", "master", "batch"])]
    cloudevent: Option<String>,
}

pub fn run(layout: &Layout, args: Args) -> Result<Outcome> {
    let (config, queue) = open(layout)?;
    let producer = Producer::new(queue.as_ref(), config.validator());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.batch {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("cortex: reading JSONL events from the terminal; end with Ctrl-D");
        }
        let batch = producer.emit_batch(BufReader::new(stdin.lock()))?;
        return report(&mut out, &batch, args.json);
    }
    if let Some(from) = &args.cloudevent {
        let text = if from == "-" {
            read_stdin()?
        } else {
            std::fs::read_to_string(from).with_context(|| format!("failed to read the CloudEvents file {from}"))?
        };
        let batch = producer.emit_cloudevents(&text).context("CloudEvent rejected; nothing was queued")?;
        return report(&mut out, &batch, args.json);
    }
    // clap guarantees these three unless --batch.
    let (event_type, source, payload) =
        (args.event_type.unwrap_or_default(), args.source.unwrap_or_default(), args.payload.unwrap_or_default());
    let (payload, from) = match payload.as_str() {
        "-" => (read_stdin()?, "the payload on stdin".to_string()),
        p if p.starts_with('@') => (
            std::fs::read_to_string(&p[1..]).with_context(|| format!("failed to read the payload file {}", &p[1..]))?,
            format!("the payload file {}", &p[1..]),
        ),
        _ => (payload, "PAYLOAD_JSON".to_string()),
    };
    let payload = strip_bom(&payload);
    let payload: serde_json::Value = serde_json::from_str(payload)
        .with_context(|| format!("{from} is not valid JSON: {}", cortex::text::quote(payload)))?;
    let serde_json::Value::Object(payload) = payload else {
        anyhow::bail!("{from} must be a JSON object, e.g. '{{\"worker_id\": \"w-1\"}}'");
    };
    let event = producer
        .emit(NewEvent {
            event_type,
            source,
            payload,
            correlation_id: args.correlation_id,
            priority: args.priority,
            master: args.master,
            tags: args.tags,
        })
        .context("event rejected; nothing was written")?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&event)?)?;
    } else {
        writeln!(out, "{}", event.event_id)?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}

/// Prints the ids (or events) a batch queued on stdout, and what it
/// skipped and a count on stderr.
fn report(out: &mut impl Write, batch: &Batch, json: bool) -> Result<Outcome> {
    for d in &batch.skipped {
        eprintln!("cortex: {d}");
    }
    for e in &batch.events {
        if json {
            writeln!(out, "{}", e.to_json())?;
        } else {
            writeln!(out, "{}", e.event_id)?;
        }
    }
    out.flush()?;
    if batch.skipped.is_empty() {
        eprintln!("queued {} events", batch.events.len());
    } else {
        eprintln!(
            "queued {} events; skipped {} whose event_id was already known (the id is the idempotency key)",
            batch.events.len(),
            batch.skipped.len()
        );
    }
    Ok(Outcome::Success)
}
