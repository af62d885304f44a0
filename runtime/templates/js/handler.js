// {{name}}: a Cortex event handler.
//
// The host calls handle() once per event, each time in a fresh instance.
// JavaScript components (StarlingMonkey) have no filesystem API: keep state
// in events, or write the handler in Rust or Python. To fail, throw a
// handler-error { message, retryable }: retryable true has the event retried
// (then dead-lettered after max_attempts), false dead-letters it at once (a
// payload no retry can fix).
import emit from "emit";
import log from "log";
import config from "config";

const EVENTS = [{{events_js}}];
// The payload contract of each exact type it handles (a JSON Schema);
// `cortex handlers list --verbose` shows it.
const SCHEMA = { $schema: "https://json-schema.org/draft/2020-12/schema", type: "object" };

export function describe() {
  return {
    name: "{{name}}",
    version: "0.1.0",
    events: EVENTS,
    // Event types it may emit; `cortex handlers check` compares them with
    // [events] custom_types and this handler's emits setting.
    emits: ["{{forward_example}}"],
    contracts: EVENTS.filter((e) => !e.includes("*")).map((eventType) => ({ eventType, schema: JSON.stringify(SCHEMA) })),
  };
}

export function handle(event) {
  let payload;
  try {
    payload = JSON.parse(event.payload);
  } catch (e) {
    throw { message: `payload is not JSON: ${e}`, retryable: false };
  }
  log("info", `handling ${event.eventType} ${event.eventId} (attempt ${event.attempt})`);

  // Optional: pass the event on as another type, set in cortex.toml:
  // [handlers.{{name}}.settings] forward_as = "{{forward_example}}"
  const forwardAs = config("forward_as");
  if (forwardAs !== undefined && forwardAs !== null) {
    try {
      emit({
        eventType: forwardAs,
        payload: JSON.stringify({ original_event_id: event.eventId, original: payload }),
        source: undefined,
        correlationId: undefined,
        priority: "medium",
        master: event.master,
        tags: [],
      });
    } catch (e) {
      throw { message: `could not forward: ${e?.payload ?? e}`, retryable: true };
    }
    return { summary: `forwarded ${event.eventId} as ${forwardAs}` };
  }
  return { summary: `handled ${event.eventType} ${event.eventId} (${Object.keys(payload).length} payload fields)` };
}
