// The pure logic of on-alert-notify: turn a `system.health_alert` into a
// notification a chat or paging integration can send as it is. No host
// imports here, so `node --test` runs it natively (see notify.test.js).

export const SEVERITIES = ["info", "low", "medium", "high", "critical"];

const ICON = { critical: ":rotating_light:", high: ":red_circle:", medium: ":large_orange_circle:", low: ":large_blue_circle:", info: ":information_source:" };

/** Settings as read through config(key), checked. Throws a message naming the bad one. */
export function parseSettings(get) {
  const channels = get("channels");
  let table = { default: "#ops" };
  if (channels !== undefined) {
    try {
      table = JSON.parse(channels);
    } catch (e) {
      throw `setting channels must be a table of severity = "channel": ${e}`;
    }
    if (table === null || typeof table !== "object" || Array.isArray(table)) {
      throw "setting channels must be a table of severity = \"channel\"";
    }
    for (const [k, v] of Object.entries(table)) {
      if (k !== "default" && !SEVERITIES.includes(k)) throw `setting channels.${k}: not a severity (${SEVERITIES.join(", ")}) or default`;
      if (typeof v !== "string" || v === "") throw `setting channels.${k}: expected a channel name`;
    }
  }
  const minSeverity = get("min_severity") ?? "low";
  if (!SEVERITIES.includes(minSeverity)) throw `setting min_severity: ${JSON.stringify(minSeverity)} is not one of ${SEVERITIES.join(", ")}`;
  return { channels: table, minSeverity, runbookBase: get("runbook_base"), mention: get("mention_on_critical") };
}

function severityOf(payload, priority) {
  const s = typeof payload.severity === "string" ? payload.severity.trim().toLowerCase() : "";
  if (SEVERITIES.includes(s)) return s;
  if (s === "moderate") return "medium";
  if (s === "error") return "high";
  if (s === "warning" || s === "warn") return "medium";
  return { critical: "critical", high: "high", medium: "medium", low: "low" }[priority] ?? "medium";
}

function money(x) {
  return typeof x === "number" ? `$${x >= 1 ? x.toFixed(2) : x.toFixed(4)}` : String(x);
}

/**
 * Scan findings as text: a count ("2 findings"), or a per-severity object
 * as on-security-alert emits it ({critical: 1, high: 2, medium: 0, ...}) →
 * "3 findings (1 critical, 2 high)", most severe first, zeros left out.
 */
export function findingsText(findings) {
  const plural = (n) => `${n} finding${n === 1 ? "" : "s"}`;
  if (typeof findings === "number" && Number.isFinite(findings)) return plural(findings);
  if (findings === null || typeof findings !== "object" || Array.isArray(findings)) return "findings";
  const counts = Object.entries(findings).filter(([, n]) => typeof n === "number" && Number.isFinite(n) && n > 0);
  const rank = (k) => { const i = SEVERITIES.indexOf(k); return i < 0 ? -1 : i; };
  counts.sort(([a], [b]) => rank(b) - rank(a));
  const total = counts.reduce((sum, [, n]) => sum + n, 0);
  return counts.length ? `${plural(total)} (${counts.map(([k, n]) => `${n} ${k}`).join(", ")})` : plural(0);
}

/**
 * A payload this handler cannot turn into a notification, whatever the
 * retry: handler.js throws it as a cortex:events@0.2.0 handler-error with
 * retryable false, so the host dead-letters the event at once.
 */
export class Refusal extends Error {}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isCount = (v) => (typeof v === "number" && Number.isInteger(v) && v >= 0) || (typeof v === "string" && /^\s*\d+\s*$/.test(v));
const shown = (v) => { const t = JSON.stringify(v) ?? String(v); return t.length > 200 ? `${t.slice(0, 200)}…` : t; };

/**
 * Scan findings as on-security-alert emits them (an object of severity =
 * count) or as scanners report them (a plain count, or a numeric string),
 * normalised to a number or an object of numbers; null when absent.
 * Throws a Refusal naming the field for any other shape.
 */
export function parseFindings(findings, field = "payload.scan.findings") {
  if (findings === undefined || findings === null) return null;
  if (isCount(findings)) return Number(findings);
  if (!isObject(findings)) throw new Refusal(`${field} must be a count or an object of severity = count, found ${shown(findings)}`);
  const out = {};
  for (const [k, n] of Object.entries(findings)) {
    if (!isCount(n)) throw new Refusal(`${field}.${k} must be a non-negative integer, found ${shown(n)}`);
    out[k] = Number(n);
  }
  return out;
}

/**
 * Checks the parts of an alert that are read as structures, and returns the
 * payload with findings normalised. Throws a Refusal naming the field when
 * one has a shape no retry can fix.
 */
export function checkAlert(payload) {
  if (!isObject(payload)) throw new Refusal(`payload must be an object, found ${shown(payload)}`);
  for (const key of ["vulnerability", "scan"]) {
    if (payload[key] !== undefined && payload[key] !== null && !isObject(payload[key])) {
      throw new Refusal(`payload.${key} must be an object, found ${shown(payload[key])}`);
    }
  }
  if (!isObject(payload.scan)) return payload;
  const scan = { ...payload.scan };
  for (const key of ["findings", "critical"]) {
    if (scan[key] !== undefined) scan[key] = parseFindings(scan[key], `payload.scan.${key}`);
  }
  return { ...payload, scan };
}

/**
 * The payload contract of system.health_alert as this handler reads it
 * (published by describe(); `cortex handlers list --verbose` shows it).
 */
export const SCHEMA = {
  $schema: "https://json-schema.org/draft/2020-12/schema",
  title: "system.health_alert as on-alert-notify reads it",
  type: "object",
  properties: {
    severity: { type: "string", description: "critical, high, medium, low or info (also moderate, error, warning); else the event priority" },
    component: { type: "string", description: "security, task, cost, or any other component name" },
    message: { type: "string" },
    error: { type: "string" },
    vulnerability: { type: "object", properties: { id: { type: "string" }, severity: { type: "string" }, package: { type: "string" }, target: { type: "string" } } },
    scan: {
      type: "object",
      properties: {
        scan_id: { type: "string" },
        target: { type: "string" },
        findings: {
          description: "a count, or an object of severity = count",
          anyOf: [
            { type: "integer", minimum: 0 },
            { type: "string", pattern: "^\\s*[0-9]+\\s*$" },
            { type: "object", additionalProperties: { anyOf: [{ type: "integer", minimum: 0 }, { type: "string", pattern: "^\\s*[0-9]+\\s*$" }] } },
          ],
        },
      },
    },
    task_id: { type: "string" },
    worker_id: { type: "string" },
    day: { type: "string" },
    cost_usd: { type: "number" },
    budget_usd: { type: "number" },
  },
};

/** Headline and dedupe key by the component that raised the alert. */
function describeAlert(p) {
  const component = typeof p.component === "string" && p.component ? p.component : "system";
  if (component === "security" && p.vulnerability) {
    const v = p.vulnerability;
    const where = [v.package, v.target ?? v.service].filter(Boolean).join(" in ");
    return { title: `${v.id ?? "vulnerability"} (${v.severity ?? "?"})${where ? ` — ${where}` : ""}`, key: `security:${v.id}:${v.package ?? ""}:${v.target ?? v.service ?? ""}` };
  }
  if (component === "security" && p.scan) {
    const s = p.scan;
    const on = s.target && s.scan_id ? ` of ${s.target}` : "";
    return { title: `security scan ${s.scan_id ?? s.target ?? ""}${on} found ${findingsText(s.findings ?? s.critical)}`.replace("  ", " "), key: `security-scan:${s.scan_id ?? s.target ?? ""}` };
  }
  if (component === "task") {
    const on = p.worker_id ? ` on ${p.worker_id}` : "";
    const how = p.retries_exhausted ? `failed after ${p.attempt ?? "?"} attempts (retries exhausted)` : "failed permanently";
    return { title: `task ${p.task_id ?? "?"} ${how}${on}`, key: `task:${p.task_id ?? p.signature ?? ""}` };
  }
  if (component === "cost") {
    return { title: `token spend ${money(p.cost_usd)} on ${p.day} is over the ${money(p.budget_usd)} daily budget`, key: `cost:${p.day}` };
  }
  const what = p.message ?? p.error ?? "health alert";
  return { title: `${component}: ${what}`, key: `${component}:${what}` };
}

const SHOWN = ["message", "error", "signature", "task_id", "worker_id", "day", "cost_usd", "budget_usd"];

/**
 * The notification for one alert, or null when it is below min_severity.
 * `alert` has eventId, timestamp, source, priority (a string), correlationId
 * and payload (parsed).
 */
export function notification(alert, settings) {
  const p = checkAlert(alert.payload);
  const severity = severityOf(p, alert.priority);
  if (SEVERITIES.indexOf(severity) < SEVERITIES.indexOf(settings.minSeverity)) return null;
  const { title, key } = describeAlert(p);
  const channel = settings.channels[severity] ?? settings.channels.default ?? "#ops";
  const headline = `[${severity.toUpperCase()}] ${title}`;
  const details = [];
  for (const k of SHOWN) {
    if (p[k] !== undefined && p[k] !== null && !title.includes(String(p[k]))) details.push(`${k}: ${typeof p[k] === "number" && k.endsWith("_usd") ? money(p[k]) : p[k]}`);
  }
  if (p.vulnerability?.fixed_in) details.push(`fixed in: ${p.vulnerability.fixed_in}`);
  if (p.suggested_fix) details.push(`suggested fix: ${p.suggested_fix}`);
  const component = typeof p.component === "string" && p.component ? p.component : "system";
  const runbook = settings.runbookBase ? `${settings.runbookBase.replace(/\/+$/, "")}/${encodeURIComponent(component)}` : null;
  const mention = severity === "critical" && settings.mention ? `${settings.mention} ` : "";
  const trace = `alert ${alert.eventId} from ${alert.source} at ${alert.timestamp}` + (p.source_event ? `, raised by ${p.source_event}` : "");
  const text = [mention + headline, ...details.map((d) => `• ${d}`), runbook ? `runbook: ${runbook}` : null, trace].filter(Boolean).join("\n");
  const blocks = [
    { type: "header", text: { type: "plain_text", text: headline.slice(0, 150) } },
  ];
  if (details.length) blocks.push({ type: "section", text: { type: "mrkdwn", text: details.map((d) => `• ${d}`).join("\n") } });
  const context = [{ type: "mrkdwn", text: `${ICON[severity]} ${trace}` }];
  if (runbook) context.push({ type: "mrkdwn", text: `<${runbook}|runbook>` });
  blocks.push({ type: "context", elements: context });
  return {
    channel,
    severity,
    title: headline,
    text,
    blocks,
    dedupe_key: key,
    alert_event_id: alert.eventId,
    component,
  };
}
