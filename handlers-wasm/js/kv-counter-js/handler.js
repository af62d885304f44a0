// Test fixture: the JavaScript state example of HANDLERS.md ("Using state
// from Rust, Python and JavaScript"), as written there, so that the
// example is compiled by componentize-js and run against the host's
// wasi:keyvalue in `make test` (e2e languages::a_javascript_handler_keeps_state_through_wasi_keyvalue).
import { open } from "wasi:keyvalue/store@0.2.0-draft";
import { increment } from "wasi:keyvalue/atomics@0.2.0-draft";

export function describe() {
  return { name: "kv-counter-js", version: "0.1.0", events: ["*"], emits: [], contracts: [] };
}

export function handle(event) {
  try {
    const bucket = open("alerts");                               // keyvalue = ["alerts"]
    const n = increment(bucket, `sent/${event.eventType}`, 1n);  // a BigInt
    bucket.set("last", new TextEncoder().encode(JSON.stringify({ eventId: event.eventId })));
    return { summary: `${n} alerts of ${event.eventType}` };
  } catch (e) {
    throw { message: `state: ${JSON.stringify(e.payload ?? String(e))}`, retryable: true };
  }
}
