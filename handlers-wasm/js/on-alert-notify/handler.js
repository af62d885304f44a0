// on-alert-notify: system.health_alert -> notification.requested, a message
// formatted for a channel (text and Slack blocks), for a webhook or chat
// integration to deliver. Stateless: no grants. Settings: channels (a table
// of severity = "channel", with default), min_severity, runbook_base,
// mention_on_critical.
import emit from "emit";
import log from "log";
import config from "config";
import { notification, parseSettings } from "./notify.js";

const VERSION = "0.1.0";

export function describe() {
  return { name: "on-alert-notify", version: VERSION, events: ["system.health_alert"] };
}

export function handle(event) {
  const settings = parseSettings((key) => config(key) ?? undefined);
  const note = notification(
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
    log("error", `notification.requested refused: ${e} (is it in [events] custom_types?)`);
    throw `could not queue the notification: ${e}`;
  }
  return { summary: `${note.severity} alert to ${note.channel}: ${note.title}` };
}
