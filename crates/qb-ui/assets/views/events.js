// Events `#/events`: the audit trail, newest first, filtered by kind, object and action prefix.
// The filters live in the address (`#/events?kind=cluster&object=demo`), so they survive a
// reload and can be linked to; "Load older" follows the page cursor.

import { h, add, render, plural } from '../dom.js';
import { API, get } from '../api.js';
import { lead, empty, table, alertSlot, runAction, button } from '../ui.js';
import { eventRow, EVENT_COLUMNS } from './common.js';

const KINDS = [
  ['', 'Any kind'],
  ['node', 'node'],
  ['cluster', 'cluster'],
  ['user', 'user'],
  ['token', 'token'],
  ['tenant', 'tenant'],
  ['bootstrap_token', 'bootstrap token'],
  ['bundle', 'bundle'],
];
const PAGE = 100;

export function mount(ctx) {
  const kind = h('select', { id: 'events-kind', name: 'kind' }, KINDS.map(([v, t]) => h('option', { value: v }, t)));
  const object = h('input', { id: 'events-object', name: 'object', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'name or id' });
  const action = h('input', { id: 'events-action', name: 'action', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'cluster.' });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter events', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'events-kind' }, 'Kind'), kind),
    h('div', { class: 'field' }, h('label', { for: 'events-object' }, 'Object'), object),
    h('div', { class: 'field' }, h('label', { for: 'events-action' }, 'Action starts with'), action),
    h('div', { class: 'field field-button' },
      h('span', { class: 'button-row' },
        h('button', { type: 'submit', class: 'btn btn-primary' }, 'Apply filters'),
        button('Clear filters', () => ctx.navigate('#/events'), { kind: 'quiet' }))));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (kind.value) q.set('kind', kind.value);
    if (object.value.trim()) q.set('object', object.value.trim());
    if (action.value.trim()) q.set('action', action.value.trim());
    const s = q.toString();
    ctx.navigate(s ? `#/events?${s}` : '#/events');
  });

  const region = h('div', { class: 'region' });
  const summary = h('p', { class: 'muted small' });
  const olderAlert = alertSlot();
  const older = button('Load older', (e) => loadOlder(e.currentTarget), { id: 'load-older' });
  older.hidden = true;

  add(ctx.root,
    ctx.heading('Events'),
    lead('The audit trail: every change in the tenant and who made it, newest first.'),
    form,
    ctx.loadAlert,
    summary,
    region,
    olderAlert,
    h('div', { class: 'actions' }, older));

  /** The events shown, newest first, and the cursor to older ones. */
  let items = [];
  let next = null;
  let filters = {};

  function applyQuery(query) {
    const k = query.get('kind') || '';
    if (k && !KINDS.some(([v]) => v === k)) add(kind, h('option', { value: k }, k));
    kind.value = k;
    object.value = query.get('object') || '';
    action.value = query.get('action') || '';
    filters = { kind: k, object: object.value, action: action.value };
    items = [];
    next = null;
  }
  applyQuery(ctx.query);

  async function refresh() {
    const asked = filters;
    const page = await get(`${API}/events`, { ...asked, order: 'newest', limit: PAGE });
    if (!ctx.alive || asked !== filters) return;
    const newest = items.length ? items[0].id : 0;
    const fresh = page.items.filter((e) => e.id > newest);
    if (!items.length || (fresh.length === page.items.length && page.next)) {
      // First load, or more new events than one page: start again from the newest.
      items = page.items;
      next = page.next || null;
    } else {
      items = [...fresh, ...items];
    }
    draw();
  }

  function draw() {
    older.hidden = !next;
    const filtered = filters.kind || filters.object || filters.action;
    summary.textContent = items.length ? `Showing the newest ${plural(items.length, 'event')}${next ? '' : ' (all of them)'}.` : '';
    render(region, [items, filtered], () => (items.length
      ? table({ label: 'Events', columns: EVENT_COLUMNS, rows: items.map(eventRow), sk: 'events', className: 'events' })
      : empty(filtered ? 'No events match these filters.' : 'No events yet.')));
  }

  async function loadOlder(btn) {
    if (!next) return;
    const asked = filters;
    const page = await runAction(btn, olderAlert, () => get(`${API}/events`, { ...asked, order: 'newest', limit: PAGE, after: next }), 'Could not load older events');
    if (!page || !ctx.alive || asked !== filters) return;
    const oldest = items.length ? items[items.length - 1].id : Infinity;
    items = [...items, ...page.items.filter((e) => e.id < oldest)];
    next = page.next || null;
    draw();
    // The button hides once there is nothing older: keep the focus in the list.
    if (!next) region.querySelector('.table-scroll')?.focus();
  }

  return {
    refresh,
    onQuery(query) {
      applyQuery(query);
      ctx.refresh();
    },
  };
}
