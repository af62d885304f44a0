// The Cortex dashboard. Plain DOM, no framework, nothing loaded from
// elsewhere. Text from events and handlers is only ever set as text
// (textContent, attribute values): nothing here parses data as HTML.
'use strict';

const TOKEN_KEY = 'cortex.access_token';
const MAX_ROWS = 200;

// A token given as /?access_token=... is kept for this tab and taken out
// of the address bar (and so out of history and bookmarks).
(function takeToken() {
  const params = new URLSearchParams(location.search);
  if (!params.has('access_token')) return;
  sessionStorage.setItem(TOKEN_KEY, params.get('access_token'));
  params.delete('access_token');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
})();
const token = sessionStorage.getItem(TOKEN_KEY);
let canWrite = false;

const $ = (id) => document.getElementById(id);

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'onclick') e.addEventListener('click', v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function notice(text) {
  const n = $('notice');
  n.textContent = text || '';
  n.hidden = !text;
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (token) opts.headers['Authorization'] = 'Bearer ' + token;
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (r.status === 401) {
    notice('This dashboard needs a token: open it as /?access_token=TOKEN (a token from [http.tokens] in cortex.toml or CORTEX_HTTP_TOKEN).');
  }
  if (!r.ok) throw new Error((body && body.error) || (path + ' answered ' + r.status));
  return body;
}

const fmtMs = (v) => (v === undefined || v === null ? '–' : v < 10 ? v.toFixed(2) : v.toFixed(0));
const fmtAge = (s) => (s === undefined || s === null ? '–' : s < 120 ? s.toFixed(1) + ' s' : (s / 60).toFixed(1) + ' min');
const KNOWN = ['ok', 'handled', 'unhandled', 'retried', 'deferred', 'dead-lettered', 'failed', 'refused', 'waiting', 'running', 'started', 'partial', 'refused-reload'];
const cls = (word) => (KNOWN.includes(word) ? word : '');

// Queue ------------------------------------------------------------------
async function refreshQueue() {
  const q = await api('/api/queue');
  const dl = $('queue');
  const rows = [['queued', q.queued]];
  for (const p of ['critical', 'high', 'medium', 'low']) rows.push(['  ' + p, (q.by_priority && q.by_priority[p]) || 0]);
  rows.push(['retries not yet due', q.delayed], ['claimed', q.claimed], ['dead letters', q.dead_letters],
    ['oldest waiting', fmtAge(q.oldest_age_secs)]);
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

// Handlers ---------------------------------------------------------------
async function refreshHandlers() {
  const hs = await api('/api/handlers');
  $('handlers').replaceChildren(...hs.map((h) => {
    const w = h.window || {};
    return el('tr', { 'data-handler': h.name },
      el('td', {}, h.name),
      el('td', { class: h.not_loading ? 'failed' : '', title: h.not_loading || h.sha256 || '' },
        h.not_loading ? 'not loading' : (h.version || '–')),
      el('td', {}, w.rate_per_sec === undefined ? '–' : w.rate_per_sec.toFixed(2)),
      el('td', {}, fmtMs(w.p50_ms)),
      el('td', {}, fmtMs(w.p99_ms)),
      el('td', {}, w.invocations || 0),
      el('td', { class: w.failures ? 'failed' : '' }, w.failures || 0));
  }));
}

// Live events ------------------------------------------------------------
let source = null;

function follow(filter) {
  if (source) source.close();
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(filter)) if (v) params.set(k, v);
  if (token) params.set('access_token', token);
  $('events').replaceChildren();
  source = new EventSource('/api/stream?' + params.toString());
  const conn = $('conn');
  source.onopen = () => { conn.textContent = 'live'; conn.className = 'badge live'; };
  source.onerror = () => { conn.textContent = 'reconnecting…'; conn.className = 'badge down'; };
  const add = (m) => addEvent(JSON.parse(m.data));
  source.addEventListener('settled', add);
  source.addEventListener('dead-lettered', (m) => { add(m); refreshLetters().catch(() => {}); });
  source.addEventListener('lagged', (m) => {
    notice(m.data);
    source.close();
    setTimeout(() => follow(filter), 1000);
  });
}

function addEvent(s) {
  const steps = s.handlers.map((h) => h.handler + (h.fault ? ' ✗ ' + h.fault : '') + ' ' + fmtMs(h.duration_ms) + ' ms');
  const when = new Date(s.settled_us / 1000).toLocaleTimeString();
  const row = el('tr', { class: 'clickable fresh', 'data-event-id': s.event_id, title: 'trace this event', onclick: () => showTrace(s.event_id) },
    el('td', {}, when),
    el('td', {}, s.event_type),
    el('td', { class: 'mono' }, s.event_id),
    el('td', {}, s.source),
    el('td', { class: 'mono' }, s.correlation_id || ''),
    el('td', {}, steps.join(', ') || '–'),
    el('td', { class: cls(s.ending) }, s.ending + (s.attempt > 1 ? ' (attempt ' + s.attempt + ')' : '')),
    el('td', {}, fmtMs(s.latency_ms) + ' ms'));
  const body = $('events');
  body.prepend(row);
  while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
}

// Trace ------------------------------------------------------------------
async function showTrace(id) {
  $('trace-id').value = id;
  const box = $('trace');
  box.replaceChildren(el('p', { class: 'muted' }, 'tracing ' + id + '…'));
  try {
    const t = await api('/api/trace/' + encodeURIComponent(id));
    const head = el('p', { class: 'muted' }, t.named + ' ' + t.id + ': ' + t.events + ' event(s)');
    box.replaceChildren(head, el('ul', { class: 'tree', id: 'trace-tree' }, ...t.trees.map(traceNode)));
  } catch (e) {
    box.replaceChildren(el('p', { class: 'failed' }, e.message));
  }
  $('trace-panel').scrollIntoView({ behavior: 'smooth', block: 'start' });
}

function traceNode(n) {
  const steps = n.handlers.map((h) => h.handler + ': ' + h.outcome + (h.duration_ms !== undefined ? ' ' + fmtMs(h.duration_ms) + ' ms' : '') + (h.started ? ' from ' + h.started.slice(11).replace('Z', '') : '') + (h.message ? ' — ' + h.message : ''));
  const facts = [n.source, n.timestamp];
  if (n.correlation_id) facts.push('correlation ' + n.correlation_id);
  if (n.since_parent_ms !== undefined) facts.push('+' + fmtMs(n.since_parent_ms) + ' ms after its parent');
  if (n.duration_ms !== undefined) facts.push(fmtMs(n.duration_ms) + ' ms queued → done');
  const box = el('div', { class: 'node' + (n.asked ? ' asked' : ''), 'data-event-id': n.event_id },
    el('strong', {}, n.event_type), ' ',
    el('span', { class: 'mono' }, n.event_id), ' ',
    el('span', { class: cls(n.status) }, n.status),
    el('div', { class: 'muted' }, facts.join(' · ')),
    steps.length ? el('div', { class: 'steps' }, steps.join('; ')) : null,
    n.reason ? el('div', { class: 'failed' }, n.reason) : null);
  return el('li', {}, box, n.children.length ? el('ul', { class: 'tree' }, ...n.children.map(traceNode)) : null);
}

// Dead letters -----------------------------------------------------------
async function refreshLetters() {
  const l = await api('/api/dead-letters');
  $('letters').replaceChildren(...l.letters.map((d) => el('tr', { class: 'clickable', 'data-letter-id': d.id, onclick: () => showLetter(d.id) },
    el('td', { class: 'mono' }, d.id),
    el('td', {}, d.event_type || '(not an event)'),
    el('td', {}, d.dead_lettered_at),
    el('td', {}, d.attempts === undefined ? '?' : d.attempts),
    el('td', { class: 'reason' }, d.reason))));
}

async function showLetter(id) {
  const box = $('letter');
  try {
    const d = await api('/api/dead-letters/' + encodeURIComponent(id));
    const actions = el('p', {},
      el('button', { type: 'button', onclick: () => showTrace(id) }, 'Trace'), ' ',
      canWrite ? el('button', { type: 'button', class: 'danger', id: 'retry', onclick: () => retry(id) }, 'Retry') : null);
    box.replaceChildren(el('h3', {}, 'Dead letter ' + d.key), actions, el('pre', {}, d.text));
  } catch (e) {
    box.replaceChildren(el('p', { class: 'failed' }, e.message));
  }
}

async function retry(id) {
  const box = $('letter');
  try {
    const r = await api('/api/dead-letters/' + encodeURIComponent(id) + '/retry', { method: 'POST' });
    box.replaceChildren(el('p', { class: 'ok' }, 'queued again: ' + r.retried.join(', ')));
    await refreshLetters();
  } catch (e) {
    box.append(el('p', { class: 'failed' }, e.message));
  }
}

// Reloads ----------------------------------------------------------------
async function refreshReloads() {
  const rs = await api('/api/reloads');
  $('reloads').replaceChildren(...rs.slice().reverse().map((r) => el('tr', {},
    el('td', {}, r.at),
    el('td', { class: r.result === 'refused' ? 'refused-reload' : cls(r.result) }, r.result + (r.config_changed ? ' (config)' : '')),
    el('td', {}, r.handlers.map((h) => h.name + (h.version ? ' v' + h.version : '') + (h.error ? ' ✗ ' + h.error : '')).join(', ')),
    el('td', { class: 'reason' }, r.reason || ''))));
}

// Start ------------------------------------------------------------------
function every(ms, f) {
  const run = () => f().catch((e) => { $('conn').textContent = e.message; $('conn').className = 'badge down'; });
  run();
  setInterval(run, ms);
}

async function start() {
  let scopes = [];
  try { scopes = (await api('/api/session')).scopes; } catch (e) { return; }
  canWrite = scopes.includes('write');
  $('access').textContent = canWrite ? 'read + write' : 'read only';
  const form = $('filter');
  const readFilter = () => Object.fromEntries(new FormData(form).entries());
  form.addEventListener('submit', (ev) => { ev.preventDefault(); follow(readFilter()); });
  $('trace-form').addEventListener('submit', (ev) => { ev.preventDefault(); const id = $('trace-id').value.trim(); if (id) showTrace(id); });
  follow(readFilter());
  every(2000, refreshQueue);
  every(2000, refreshHandlers);
  every(5000, refreshLetters);
  every(5000, refreshReloads);
}

start();
