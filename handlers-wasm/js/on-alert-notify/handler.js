// on-alert-notify: system.health_alert -> notification.requested, a message
// formatted for a channel (text and Slack blocks), for a webhook or chat
// integration to deliver. Stateless: no grants. Settings: channels (a table
// of severity = "channel", with default), min_severity, runbook_base,
// mention_on_critical.
//
// Errors follow cortex:events@0.2.0: handle throws a handler-error record,
// { message, retryable }. An alert whose shape no retry can fix (findings
// that are neither a count nor an object of counts, a scan that is not an
// object) is refused with retryable false, and the host dead-letters it at
// once; a bad setting or a refused emit is retryable.
import emit from "emit";
import log from "log";
import config from "config";
import { Refusal, SCHEMA, notification, parseSettings } from "./notify.js";

const VERSION = "0.2.0";
const EVENTS = ["system.health_alert"];
const EMITS = ["notification.requested"];

export function describe() {
  return {
    name: "on-alert-notify",
    version: VERSION,
    events: EVENTS,
    emits: EMITS,
    contracts: EVENTS.map((eventType) => ({ eventType, schema: JSON.stringify(SCHEMA) })),
  };
}

/** A handler-error: componentize-js turns a thrown object into the `err` case. */
function failure(message, retryable) {
  return { message: String(message), retryable };
}

export function handle(event) {
  let settings;
  try {
    settings = parseSettings((key) => config(key) ?? undefined);
  } catch (e) {
    throw failure(e, true);
  }
  let note;
  try {
    note = notification(
      {
        eventId: event.eventId,
        timestamp: event.timestamp,
        source: event.source,
        priority: event.priority,
        correlationId: event.correlationId,
        payload: JSON.parse(event.payload),
      },
      settings,
    );
  } catch (e) {
    if (e instanceof Refusal) throw failure(e.message, false);
    throw failure(`could not format the alert: ${e}`, true);
  }
  if (note === null) {
    return { summary: `below min_severity ${settings.minSeverity}: not notified` };
  }
  try {
    emit({
      eventType: "notification.requested",
      payload: JSON.stringify(note),
      source: undefined,
      correlationId: undefined,
      priority: note.severity === "critical" ? "critical" : note.severity === "high" ? "high" : "medium",
      master: event.master,
      tags: ["notification", note.severity],
    });
  } catch (e) {
    const why = e?.payload ?? e;
    log("error", `notification.requested refused: ${why} (is it in [events] custom_types?)`);
    throw failure(`could not queue the notification: ${why}`, true);
  }
  return { summary: `${note.severity} alert to ${note.channel}: ${note.title}` };
}
