// Native unit tests: `node --test` in this folder.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Refusal, SCHEMA, checkAlert, findingsText, notification, parseFindings, parseSettings } from "./notify.js";

const settings = (o = {}) => parseSettings((k) => (o[k] === undefined ? undefined : typeof o[k] === "string" ? o[k] : JSON.stringify(o[k])));
const alert = (payload, priority = "critical") => ({ eventId: "evt_20251201_121500_aaa111", timestamp: "2025-12-01T12:15:00-06:00", source: "on-task-failure", priority, payload });

test("a permanent task failure names the task, worker and error", () => {
  const n = notification(alert({ severity: "high", component: "task", task_id: "task_8850", worker_id: "worker-3", error: "schema validation failed", source_event: "evt_x" }), settings({ channels: { high: "#tasks", default: "#ops" } }));
  assert.equal(n.channel, "#tasks");
  assert.equal(n.title, "[HIGH] task task_8850 failed permanently on worker-3");
  assert.match(n.text, /• error: schema validation failed/);
  assert.match(n.text, /raised by evt_x/);
  assert.equal(n.dedupe_key, "task:task_8850");
  assert.equal(n.blocks[0].type, "header");
});

test("a vulnerability alert is keyed by CVE, package and target", () => {
  const n = notification(alert({ severity: "critical", component: "security", vulnerability: { id: "CVE-2025-1234", severity: "high", package: "openssl", target: "api", fixed_in: "3.0.14" } }), settings({ mention_on_critical: "@oncall", runbook_base: "https://runbooks.example/" }));
  assert.equal(n.severity, "critical");
  assert.equal(n.title, "[CRITICAL] CVE-2025-1234 (high) — openssl in api");
  assert.ok(n.text.startsWith("@oncall [CRITICAL]"));
  assert.match(n.text, /fixed in: 3.0.14/);
  assert.match(n.text, /runbook: https:\/\/runbooks.example\/security/);
  assert.equal(n.dedupe_key, "security:CVE-2025-1234:openssl:api");
});

test("a cost alert shows money, and severity falls back to the priority", () => {
  const n = notification(alert({ component: "cost", day: "2025-12-01", cost_usd: 12.5, budget_usd: 10 }, "high"), settings());
  assert.equal(n.severity, "high");
  assert.equal(n.title, "[HIGH] token spend $12.50 on 2025-12-01 is over the $10.00 daily budget");
  assert.equal(n.channel, "#ops");
});

test("alerts below min_severity are dropped", () => {
  assert.equal(notification(alert({ severity: "low", component: "disk", message: "80% full" }), settings({ min_severity: "medium" })), null);
  assert.equal(notification(alert({ severity: "medium", component: "disk", message: "80% full" }), settings({ min_severity: "medium" })).title, "[MEDIUM] disk: 80% full");
});

test("bad settings are refused with the setting's name", () => {
  assert.throws(() => settings({ channels: "nope" }), /setting channels/);
  assert.throws(() => settings({ channels: { urgent: "#x" } }), /channels.urgent: not a severity/);
  assert.throws(() => settings({ min_severity: "loud" }), /min_severity/);
});

test("a scan alert counts findings by severity, as on-security-alert emits them", () => {
  const scan = { scan_id: "scan-9", scanner: "trivy", target: "api", findings: { critical: 1, high: 2, medium: 0, low: 4, info: 0 } };
  const n = notification(alert({ severity: "critical", component: "security", scan, source_event: "evt_s" }), settings());
  assert.equal(n.title, "[CRITICAL] security scan scan-9 of api found 7 findings (1 critical, 2 high, 4 low)");
  assert.doesNotMatch(n.text, /\[object Object\]/);
  assert.equal(n.dedupe_key, "security-scan:scan-9");
});

test("findings may also be a plain count", () => {
  assert.equal(findingsText(3), "3 findings");
  assert.equal(findingsText(1), "1 finding");
  assert.equal(findingsText({ high: 1 }), "1 finding (1 high)");
  assert.equal(findingsText({}), "0 findings");
  assert.equal(findingsText("lots"), "findings");
});

test("a task out of retries says so", () => {
  const n = notification(alert({ severity: "high", component: "task", task_id: "task_7", error: "read ECONNRESET", retries_exhausted: true, attempt: 3, max_retries: 3 }), settings());
  assert.equal(n.title, "[HIGH] task task_7 failed after 3 attempts (retries exhausted)");
});

test("findings are accepted as a count, a numeric string or an object of counts", () => {
  const title = (findings) => notification(alert({ severity: "high", component: "security", scan: { scan_id: "s1", findings } }), settings()).title;
  assert.equal(title(3), "[HIGH] security scan s1 found 3 findings");
  assert.equal(title("2"), "[HIGH] security scan s1 found 2 findings");
  assert.equal(title({ critical: 1, high: "2" }), "[HIGH] security scan s1 found 3 findings (1 critical, 2 high)");
  assert.equal(title(undefined), "[HIGH] security scan s1 found findings");
  assert.equal(parseFindings(null), null);
  assert.deepEqual(parseFindings({ low: "4", info: 0 }), { low: 4, info: 0 });
});

test("unusable shapes are refused, naming the field, as not retryable", () => {
  const refused = (payload, pattern) => assert.throws(() => notification(alert(payload), settings()), (e) => e instanceof Refusal && pattern.test(e.message));
  refused({ component: "security", scan: { findings: "lots" } }, /payload\.scan\.findings must be a count or an object of severity = count, found "lots"/);
  refused({ component: "security", scan: { findings: [1, 2] } }, /payload\.scan\.findings must be a count/);
  refused({ component: "security", scan: { findings: -1 } }, /payload\.scan\.findings must be a count/);
  refused({ component: "security", scan: { findings: 1.5 } }, /payload\.scan\.findings must be a count/);
  refused({ component: "security", scan: { findings: { high: "many" } } }, /payload\.scan\.findings\.high must be a non-negative integer, found "many"/);
  refused({ component: "security", scan: { critical: { x: null } } }, /payload\.scan\.critical\.x/);
  refused({ component: "security", scan: "scan-9" }, /payload\.scan must be an object/);
  refused({ component: "security", vulnerability: ["CVE-1"] }, /payload\.vulnerability must be an object/);
  assert.throws(() => checkAlert([]), Refusal);
});

test("the contract is a JSON Schema of the fields read", () => {
  assert.equal(SCHEMA.type, "object");
  assert.ok(SCHEMA.properties.scan.properties.findings.anyOf.length === 3);
  assert.doesNotThrow(() => JSON.parse(JSON.stringify(SCHEMA)));
});
