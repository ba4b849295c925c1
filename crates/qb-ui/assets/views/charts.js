// A node's load: its agent's last report, and small SVG line charts of its history (CPU,
// memory, disk as shares of the whole), drawn from the API's points. Each chart names what it
// shows in words for screen readers; the figures themselves stay in the API and the CLI.

import { h, bytes } from '../dom.js';
import { dl, empty } from '../ui.js';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 320;
const HEIGHT = 80;

/** Creates an SVG element (the DOM helper makes HTML ones). */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children) el.append(child);
  return el;
}

const share = (used, total) => (total > 0 ? (100 * used) / total : 0);
const pct = (v) => `${v.toFixed(1)} %`;

/** The last report as facts, or why there is none. */
export function latestFacts(latest) {
  if (!latest) return empty('The agent reports no figures now (offline, or held by another controller replica).');
  const used = (total, available) => Math.max(0, total - available);
  return dl([
    ['CPU', pct(latest.cpu_percent)],
    ['Load', `${latest.load1.toFixed(2)} · ${latest.load5.toFixed(2)} · ${latest.load15.toFixed(2)}`],
    ['Memory', `${bytes(used(latest.memory_total_bytes, latest.memory_available_bytes))} of ${bytes(latest.memory_total_bytes)} used`],
    ['Disk', `${bytes(used(latest.disk_total_bytes, latest.disk_available_bytes))} of ${bytes(latest.disk_total_bytes)} used`],
    ['Up', uptime(latest.uptime_seconds)],
    latest.etcd ? ['etcd', etcdText(latest.etcd)] : null,
  ]);
}

/** A master's etcd member: its part in the election and its database. */
function etcdText(e) {
  const role = e.is_leader ? 'the leader' : e.has_leader ? 'a follower' : 'without a leader';
  return `${role} · database ${bytes(e.db_size_bytes)} (${bytes(e.db_in_use_bytes)} in use) · ${e.leader_changes} leader changes seen`;
}

function uptime(seconds) {
  const d = Math.floor(seconds / 86400);
  const hrs = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return d ? `${d} d ${hrs} h` : hrs ? `${hrs} h ${m} min` : `${m} min`;
}

/** The charts of `metrics` (the API's NodeMetrics), or a word on why there are none. */
export function loadCharts(metrics) {
  const points = metrics.points || [];
  if (!points.length) {
    return empty(`No history over the last ${metrics.range} yet: a point is kept for every minute the agent reports.`);
  }
  const to = Date.now();
  const at = points.map((p) => Date.parse(p.at));
  // A history shorter than the range fills the chart from its first point.
  const step = metrics.resolution_seconds * 1000;
  const from = Math.max(to - rangeMillis(metrics.range), Math.min(at[0], to - step));
  const cpu = points.map((p) => p.cpu_percent);
  const cpuMax = points.map((p) => p.cpu_percent_max);
  const memory = points.map((p) => share(p.memory_used_bytes, p.memory_total_bytes));
  const disk = points.map((p) => share(p.disk_used_bytes, p.disk_total_bytes));
  const avg = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const peak = (xs) => Math.max(...xs);
  return h('div', { class: 'charts' },
    chart('cpu', 'CPU', from, to, step, at, [[cpu, 'avg'], [cpuMax, 'max']],
      `CPU over the last ${metrics.range}: ${pct(avg(cpu))} on average, peaks of ${pct(peak(cpuMax))}.`),
    chart('memory', 'Memory used', from, to, step, at, [[memory, 'avg']],
      `Memory used over the last ${metrics.range}: ${pct(avg(memory))} on average, at most ${pct(peak(memory))}.`),
    chart('disk', 'Disk used', from, to, step, at, [[disk, 'avg']],
      `Disk used over the last ${metrics.range}: at most ${pct(peak(disk))}.`));
}

function rangeMillis(range) {
  const n = parseInt(range, 10);
  return n * (range.endsWith('d') ? 86400000 : 3600000);
}

/** One chart: shares (0–100) of the series over [from, to]; a gap where minutes are missing. */
function chart(key, title, from, to, step, at, series, summary) {
  const start = new Date(from);
  const since = to - from > 86400000
    ? start.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })
    : start.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  const x = (t) => (((t - from) / (to - from)) * WIDTH).toFixed(1);
  const y = (v) => (HEIGHT - (Math.max(0, Math.min(100, v)) / 100) * HEIGHT).toFixed(1);
  // Each point holds for its interval (a minute's average is drawn across the minute); points
  // further apart than three intervals are not joined.
  const lines = [];
  for (const [values, kind] of series) {
    let run = [];
    const flush = () => {
      if (run.length) lines.push(s('polyline', { class: `chart-line chart-${kind}`, points: run.join(' ') }));
      run = [];
    };
    values.forEach((v, i) => {
      if (i > 0 && at[i] - at[i - 1] > 3 * step) flush();
      run.push(`${x(at[i])},${y(v)}`, `${x(Math.min(at[i] + step, to))},${y(v)}`);
    });
    flush();
  }
  const svg = s('svg', {
    class: 'chart', viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: 'none',
    role: 'img', 'aria-label': summary, 'data-chart': key,
  },
  s('line', { class: 'chart-grid', x1: 0, x2: WIDTH, y1: HEIGHT / 2, y2: HEIGHT / 2 }),
  ...lines);
  const legend = series.length > 1 ? h('span', { class: 'muted small' }, ' average, and peaks (dashed)') : null;
  return h('figure', { class: 'chart-box' },
    h('figcaption', {}, h('strong', {}, title), legend),
    svg,
    h('div', { class: 'chart-axis muted small' }, h('span', {}, since), h('span', {}, '100 % at the top'), h('span', {}, 'now')));
}

/** How a cluster state is drawn in its health band. */
const HEALTH_TONE = { ready: 'good', degraded: 'bad', blocked: 'bad' };
const DAY_MS = 86400000;

/**
 * A cluster's health over the last day, as one band: each stretch coloured by the state the
 * cluster was in, from its `cluster.state_changed` events (newest first). Says in words what it
 * shows, and how long each state lasted.
 */
export function healthBand(changes, current, createdAt, now = Date.now()) {
  const from = Math.max(now - DAY_MS, Date.parse(createdAt));
  // Oldest first; each change starts a stretch; before the first, the state it changed from.
  const inside = changes.filter((e) => Date.parse(e.at) > from).reverse();
  const stretches = [];
  let state = inside.length ? (inside[0].detail.from || current) : current;
  let start = from;
  for (const e of inside) {
    stretches.push([state, start, Date.parse(e.at)]);
    state = e.detail.to || state;
    start = Date.parse(e.at);
  }
  stretches.push([state, start, now]);
  const span = Math.max(1, now - from);
  const x = (t) => (((t - from) / span) * WIDTH).toFixed(1);
  const totals = new Map();
  for (const [st, a, b] of stretches) totals.set(st, (totals.get(st) || 0) + (b - a));
  const troubles = stretches.filter(([st]) => HEALTH_TONE[st] === 'bad').length;
  const hours = span / 3600000;
  const summary = `Health over the last ${hours >= 23.5 ? '24 hours' : `${Math.max(1, Math.round(hours * 60))} minutes`}: `
    + [...totals].sort((a, b) => b[1] - a[1]).map(([st, ms]) => `${st} ${(100 * ms) / span < 1 ? '<1' : Math.round((100 * ms) / span)} %`).join(', ')
    + (troubles ? `; unhealthy ${troubles === 1 ? 'once' : `${troubles} times`}` : '');
  const svg = s('svg', {
    class: 'chart health-band', viewBox: `0 0 ${WIDTH} 16`, preserveAspectRatio: 'none',
    role: 'img', 'aria-label': summary, 'data-chart': 'health',
  }, ...stretches.map(([st, a, b]) => s('rect', {
    class: `health-${HEALTH_TONE[st] || 'busy'}`, x: x(a), y: 0, width: Math.max(0.5, x(b) - x(a)), height: 16,
  })));
  return h('figure', { class: 'chart-box' },
    h('figcaption', {}, h('strong', {}, 'Health'), h('span', { class: 'muted small' }, ' ready, unhealthy (red), on its way (grey)')),
    svg,
    h('div', { class: 'chart-axis muted small' },
      h('span', {}, new Date(from).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' })),
      h('span', {}, summary.split(': ')[1]), h('span', {}, 'now')));
}
