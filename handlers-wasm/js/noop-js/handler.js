// Bench fixture: the JavaScript counterpart of the Rust `noop` fixture. It
// parses the payload and returns, so a dispatch of it measures the cost of a
// JavaScript component per event, not the handler's work.
export function describe() {
  return { name: "noop-js", version: "0.1.0", events: ["*"], emits: [], contracts: [] };
}

export function handle(event) {
  const payload = JSON.parse(event.payload);
  return { summary: `noop ${event.eventId} (${Object.keys(payload).length} fields)` };
}
