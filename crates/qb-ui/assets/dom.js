// DOM building and formatting helpers.
//
// Every piece of data reaches the page as text (textContent or attribute values); nothing here
// parses HTML, so a node name, label or event detail can never become markup.

/** Properties set after the children are appended (a select's value needs its options). */
const PROPERTIES = new Set(['value', 'checked', 'selected', 'disabled', 'hidden', 'open', 'required', 'indeterminate']);

/**
 * Creates an element: `h('a', {href: '#/nodes', class: 'x'}, 'Nodes')`.
 * Attributes: `class` (string or array), `for`, `on<event>` (a function: a listener), the
 * properties above, `true` (a boolean attribute), anything else as an attribute.
 * `null`, `undefined` and `false` leave an attribute out; children may be nested arrays,
 * strings, numbers or nodes, and `null`/`false` children are skipped.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  const later = [];
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    } else if (key === 'for') {
      el.htmlFor = value;
    } else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (PROPERTIES.has(key)) {
      later.push([key, value]);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  for (const [key, value] of later) el[key] = value;
  return el;
}

/** Appends children (nested arrays, strings, numbers, nodes; skips null/undefined/false). */
export function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.append(child);
    else parent.append(document.createTextNode(String(child)));
  }
  return parent;
}

/** `parent.append(...)` that skips `null`/`false` (the DOM's own would write "null"). */
export function add(parent, ...children) {
  return append(parent, children);
}

/**
 * Replaces the children of a data region, keeping the user's place: the element that had the
 * focus (found again by its `data-fk` key), the horizontal scroll of scrolling boxes
 * (`data-sk`) and which `<details>` were open (`data-fk`). The swap happens in one task, so the
 * page does not jump as long as the new content has the same height.
 */
export function patch(region, ...children) {
  const active = document.activeElement;
  const focusKey = active && active !== region && region.contains(active) ? active.dataset.fk || null : null;
  const focusLost = active && active !== region && region.contains(active);
  const scrolls = new Map();
  for (const el of region.querySelectorAll('[data-sk]')) scrolls.set(el.dataset.sk, el.scrollLeft);
  const open = new Map();
  for (const el of region.querySelectorAll('details[data-fk]')) open.set(el.dataset.fk, el.open);

  region.replaceChildren();
  append(region, children);

  for (const el of region.querySelectorAll('[data-sk]')) {
    if (scrolls.has(el.dataset.sk)) el.scrollLeft = scrolls.get(el.dataset.sk);
  }
  for (const el of region.querySelectorAll('details[data-fk]')) {
    if (open.has(el.dataset.fk)) el.open = open.get(el.dataset.fk);
  }
  if (focusLost) {
    const again = focusKey && byKey(region, focusKey);
    if (again) {
      again.focus({ preventScroll: true });
    } else {
      // What had the focus is gone (e.g. the row moved to another section): keep the focus
      // near where it was rather than losing it to the page's start.
      if (!region.hasAttribute('tabindex')) region.setAttribute('tabindex', '-1');
      region.focus({ preventScroll: true });
    }
  }
}

/** The element of `root` whose `data-fk` is `key`. */
function byKey(root, key) {
  for (const el of root.querySelectorAll('[data-fk]')) if (el.dataset.fk === key) return el;
  return null;
}

/** The signature each region was last drawn from (see `render`). */
const drawn = new WeakMap();

/**
 * Renders a region only when what it shows changed: `signature` is any JSON-able value
 * describing the region's inputs. Saves the DOM (and screen readers) from churn when a live
 * update changed something elsewhere.
 */
export function render(region, signature, build) {
  const sig = JSON.stringify(signature);
  if (drawn.get(region) === sig) return false;
  patch(region, build());
  drawn.set(region, sig);
  return true;
}

let ids = 0;
/** A unique element id, e.g. for `aria-labelledby`. */
export function uid(prefix = 'id') {
  ids += 1;
  return `${prefix}-${ids}`;
}

// ---- formatting ----------------------------------------------------------------------------

/** `12 s ago`, `3 min ago`, `in 5 h`; `just now` for the last few seconds. */
export function relative(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const seconds = Math.round((now - t) / 1000);
  const a = Math.abs(seconds);
  if (a < 3) return 'just now';
  let span;
  if (a < 60) span = `${a} s`;
  else if (a < 3600) span = `${Math.floor(a / 60)} min`;
  else if (a < 86400) span = `${Math.floor(a / 3600)} h`;
  else span = `${Math.floor(a / 86400)} d`;
  return seconds < 0 ? `in ${span}` : `${span} ago`;
}

/** The exact local time, for titles and tables. */
export function exact(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/**
 * A `<time>` showing a relative time that keeps itself current (see `tickTimes`), with the
 * exact time in its title. `none` is the text when there is no time.
 */
export function time(iso, none = '—') {
  if (!iso) return h('span', { class: 'muted' }, none);
  return h('time', { datetime: iso, title: exact(iso), 'data-rel': '' }, relative(iso));
}

/** Brings every relative time on the page up to date; called every second. */
export function tickTimes(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll('time[data-rel]')) {
    const text = relative(el.getAttribute('datetime'), now);
    if (el.textContent !== text) el.textContent = text;
  }
}

/** `7.8 GiB`, `512 MiB`. */
export function bytes(n) {
  if (!n) return '—';
  const gib = n / 2 ** 30;
  if (gib >= 1) return `${gib >= 10 ? Math.round(gib) : gib.toFixed(1)} GiB`;
  return `${Math.round(n / 2 ** 20)} MiB`;
}

/** `1 node`, `3 nodes`. */
export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** `a, b and c`. */
export function list(items) {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`;
}

/** Compares Kubernetes versions (`1.20.2`) numerically. */
export function compareVersions(a, b) {
  const pa = String(a).split('.').map(Number);
  const pb = String(b).split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i += 1) {
    const d = (pa[i] || 0) - (pb[i] || 0);
    if (d) return d;
  }
  return 0;
}

// ---- badges ----------------------------------------------------------------------------------

// How each state looks. The text is always shown; the colour only repeats it.
const TONES = {
  ok: ['ready', 'applied', 'done', 'ok', 'online', 'passed', 'active', 'healthy'],
  info: ['installing', 'preflight', 'applying', 'running', 'detaching', 'in progress', 'progressing'],
  wait: ['pending', 'warning', 'not checked'],
  neutral: ['authorized', 'attached'],
  bad: ['degraded', 'blocked', 'critical', 'failed', 'refused', 'offline', 'deauthorized', 'error', 'unhealthy', 'not running', 'failing', 'unavailable'],
  muted: ['empty', 'expired', 'revoked', 'used up', 'unknown', 'no agent', 'no report', 'worker', 'master'],
};
const TONE_OF = new Map(Object.entries(TONES).flatMap(([tone, states]) => states.map((s) => [s, tone])));

/** The tone of a state: `ok`, `info`, `wait`, `bad`, `neutral` or `muted`. */
export function toneOf(state) {
  return TONE_OF.get(String(state)) || 'muted';
}

/**
 * A state badge: `<span class="badge tone-ok" data-state="ready">ready</span>`.
 * `attr` names the data attribute (`state` for node and cluster states, which tests rely on;
 * others use their own so that `[data-state]` in a row means the object's state).
 */
export function badge(value, { attr = 'state', label, tone } = {}) {
  const text = label || String(value).replaceAll('_', ' ');
  return h('span', {
    class: ['badge', `tone-${tone || TONE_OF.get(String(value)) || 'muted'}`],
    [`data-${attr}`]: value,
  }, text);
}

/** A label chip `key=value`. */
export function chip(text, ...extra) {
  return h('span', { class: 'chip' }, h('span', { class: 'chip-text' }, text), ...extra);
}

// ---- routes --------------------------------------------------------------------------------

/** `#/nodes/<name>` for a node name. */
export const nodeHref = (name) => `#/nodes/${encodeURIComponent(name)}`;
/** `#/clusters/<name>` for a cluster name. */
export const clusterHref = (name) => `#/clusters/${encodeURIComponent(name)}`;

/** A link to a node. `fk` keeps its focus across re-renders. */
export function nodeLink(name, fk = `node-link:${name}`) {
  return h('a', { href: nodeHref(name), 'data-fk': fk }, name);
}

/** A link to a cluster. */
export function clusterLink(name, fk = `cluster-link:${name}`) {
  return h('a', { href: clusterHref(name), 'data-fk': fk }, name);
}
