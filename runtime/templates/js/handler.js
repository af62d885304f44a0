// {{name}}: a Cortex event handler.
//
// The host calls handle() once per event, each time in a fresh instance.
// JavaScript components (StarlingMonkey) have no filesystem API: keep state
// in events, or write the handler in Rust or Python. Throw a string to have
// the event retried (then dead-lettered after max_attempts).
import emit from "emit";
import log from "log";
import config from "config";

export function describe() {
  return { name: "{{name}}", version: "0.1.0", events: [{{events_js}}] };
}

export function handle(event) {
  let payload;
  try {
    payload = JSON.parse(event.payload);
  } catch (e) {
    throw `payload is not JSON: ${e}`;
  }
  log("info", `handling ${event.eventType} ${event.eventId} (attempt ${event.attempt})`);

  // Optional: pass the event on as another type, set in cortex.toml:
  // [handlers.{{name}}.settings] forward_as = "{{forward_example}}"
  const forwardAs = config("forward_as");
  if (forwardAs !== undefined && forwardAs !== null) {
    emit({
      eventType: forwardAs,
      payload: JSON.stringify({ original_event_id: event.eventId, original: payload }),
      source: undefined,
      correlationId: undefined,
      priority: "medium",
      master: event.master,
      tags: [],
    });
    return { summary: `forwarded ${event.eventId} as ${forwardAs}` };
  }
  return { summary: `handled ${event.eventType} ${event.eventId} (${Object.keys(payload).length} payload fields)` };
}
