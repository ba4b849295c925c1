// Overview `#/`: problems first (firing alerts, clusters that are not well or busy for too long,
// offline agents of attached nodes, nodes waiting for authorization), then work in progress (every busy
// cluster, however long it has been busy, and leaving nodes), then counts.

import { h, add, render, badge, time, exact, plural, nodeHref, clusterHref } from '../dom.js';
import { API, get, listAll } from '../api.js';
import { section, lead, empty, code } from '../ui.js';
import { planProgress, alertObjectLink, unhealthyLogLinks } from './common.js';

const TROUBLED = new Set(['degraded', 'blocked']);
const BUSY = new Set(['pending', 'preflight', 'installing']);
/** How long a cluster may stay busy before it needs attention: a healthy install takes minutes. */
const BUSY_TOO_LONG_MS = 15 * 60 * 1000;
/** How a busy state starts a sentence. */
const BUSY_DOING = { pending: 'Pending', preflight: 'In preflight', installing: 'Installing' };

export function mount(ctx) {
  const problems = h('div', { class: 'region' });
  const progress = h('div', { class: 'region' });
  const counts = h('div', { class: 'region' });

  const problemsSection = section('Needs attention');
  add(problemsSection, problems);
  const progressSection = section('In progress');
  add(progressSection, progress);
  const countsSection = section('At a glance');
  add(countsSection, counts);

  add(ctx.root,
    ctx.heading('Overview'),
    lead(`Tenant ${ctx.session.tenant}: what needs you first, then what is under way.`),
    ctx.loadAlert,
    problemsSection,
    progressSection,
    countsSection);

  async function refresh() {
    const [nodes, clusters, alerts] = await Promise.all([
      listAll(`${API}/nodes`),
      listAll(`${API}/clusters`),
      get(`${API}/alerts`),
    ]);
    if (!ctx.alive) return;
    // The minute is an input too: a cluster becomes busy for too long while the API says the same.
    const now = Date.now();
    render(problems, [nodes, clusters, alerts, ctx.can('operator'), Math.floor(now / 60000)],
      () => renderProblems(ctx, nodes, clusters, alerts, now));
    render(progress, [nodes, clusters], () => renderProgress(nodes, clusters));
    render(counts, [nodes, clusters], () => renderCounts(nodes, clusters));
  }

  return { refresh };
}

/** One entry of a list of problems: a link, a badge and what is wrong. */
function item(link, state, text, attr = 'state') {
  return h('li', { class: 'problem' },
    h('div', { class: 'problem-head' }, link, state && badge(state, { attr })),
    text && h('p', { class: 'problem-text' }, text));
}

function renderProblems(ctx, nodes, clusters, alerts, now) {
  const items = [];
  // Firing alerts the entries below do not already tell: full disks, hosts offline in the pool.
  const inCluster = new Set(nodes.filter((n) => n.cluster).map((n) => n.name));
  for (const a of alerts.filter((a) => !a.silenced)) {
    // A cluster's entry below says it is unhealthy, which of its hosts are offline and which
    // services are down (with links to their logs).
    const node = a.object_name.split('/')[0];
    const told = a.rule === 'cluster_unhealthy'
      || ((a.rule === 'host_offline' || a.rule === 'component_down') && inCluster.has(node));
    if (told) continue;
    items.push(item(alertObjectLink(a, `a:${a.id}`), a.severity,
      [`Alert ${a.rule}: ${a.summary}, since `, time(a.fired_at), '.'], 'alert'));
  }
  for (const c of clusters.filter((c) => TROUBLED.has(c.state))) {
    const logs = ctx.can('operator') ? unhealthyLogLinks(c.state_message) : [];
    items.push(item(h('a', { href: clusterHref(c.name), 'data-fk': `c:${c.name}` }, `Cluster ${c.name}`), c.state,
      [c.state_message || (c.state === 'blocked' ? 'Blocked: it needs you.' : 'A node or a component is unhealthy.'),
        logs.length ? [' Read: ', logs.map((l, i) => [i ? ', ' : '', l]), '.'] : null]));
  }
  const busyFor = (c) => now - Date.parse(c.state_since);
  for (const c of clusters.filter((c) => BUSY.has(c.state) && busyFor(c) > BUSY_TOO_LONG_MS)) {
    const minutes = Math.floor(busyFor(c) / 60000);
    items.push(item(h('a', { href: clusterHref(c.name), 'data-fk': `slow:${c.name}` }, `Cluster ${c.name}`), c.state,
      [`${BUSY_DOING[c.state]} for `,
        h('time', { datetime: `PT${minutes}M`, title: `since ${exact(c.state_since)}` }, duration(minutes)),
        c.state_message ? `: ${c.state_message}` : '.']));
  }
  const attached = nodes.filter((n) => n.state === 'attached' || n.state === 'detaching');
  for (const n of attached.filter((n) => n.agent && !n.agent.online)) {
    items.push(item(h('a', { href: nodeHref(n.name), 'data-fk': `n:${n.name}` }, `Node ${n.name}`), 'offline',
      [`Its agent is offline (cluster ${n.cluster ? n.cluster.name : '—'}); last seen `, time(n.agent.last_seen_at, 'never'), '.'],
      'agent'));
  }
  for (const n of attached) {
    const report = n.plan && n.plan.report;
    if (report && (report.state === 'failed' || report.state === 'refused')) {
      const step = report.steps.find((s) => s.state === 'failed' && s.message) || report.steps.find((s) => s.message);
      items.push(item(h('a', { href: nodeHref(n.name), 'data-fk': `p:${n.name}` }, `Node ${n.name}`), report.state,
        `Its plan ${report.state === 'failed' ? 'failed' : 'was refused'}${step ? ` at ${step.name}: ${step.message}` : ''}.`,
        'plan'));
    }
  }
  const pending = nodes.filter((n) => n.state === 'pending');
  if (pending.length) {
    const names = pending.slice(0, 8).map((n, i) => [i ? ', ' : '', h('a', { href: nodeHref(n.name), 'data-fk': `w:${n.name}` }, n.name)]);
    items.push(h('li', { class: 'problem' },
      h('div', { class: 'problem-head' },
        h('a', { href: '#/nodes', 'data-fk': 'pending' }, `${plural(pending.length, 'node')} waiting for authorization`),
        badge('pending')),
      h('p', { class: 'problem-text' }, names, pending.length > 8 ? ` and ${pending.length - 8} more` : '', '. ',
        ctx.can('operator') ? 'Authorize them on the Nodes page to add them to the pool.' : 'An operator can authorize them.')));
  }
  if (!items.length) {
    return h('p', { class: 'all-good' }, badge('ok', { attr: 'status', label: 'all good' }), ' Nothing needs attention.');
  }
  return h('ul', { class: 'problems' }, items);
}

/** `42 minutes`, `5 hours`, `3 days`: rounded down, precise enough to tell slow from stuck. */
function duration(minutes) {
  if (minutes < 120) return plural(minutes, 'minute');
  if (minutes < 48 * 60) return plural(Math.floor(minutes / 60), 'hour');
  return plural(Math.floor(minutes / (24 * 60)), 'day');
}

function renderProgress(nodes, clusters) {
  const items = [];
  for (const c of clusters.filter((c) => BUSY.has(c.state))) {
    const members = nodes.filter((n) => n.cluster && n.cluster.id === c.id);
    let done = 0;
    let total = 0;
    for (const n of members) {
      const p = planProgress(n);
      if (p) {
        done += p.done;
        total += p.total;
      }
    }
    items.push(h('li', { class: 'problem' },
      h('div', { class: 'problem-head' },
        h('a', { href: clusterHref(c.name), 'data-fk': `c:${c.name}` }, `Cluster ${c.name}`), badge(c.state)),
      h('p', { class: 'problem-text' },
        c.state_message || `${plural(members.length, 'node')}.`,
        total ? ` Plans: ${done} of ${total} steps done.` : ''),
      total ? h('progress', { max: String(total), value: String(done), 'aria-label': `Cluster ${c.name}: ${done} of ${total} plan steps done` }) : null));
  }
  for (const n of nodes.filter((n) => n.state === 'detaching')) {
    items.push(item(h('a', { href: nodeHref(n.name), 'data-fk': `d:${n.name}` }, `Node ${n.name}`), 'detaching',
      `Leaving cluster ${n.cluster ? n.cluster.name : '—'}; it returns to the pool once wiped.`));
  }
  if (!items.length) return empty('Nothing in progress.');
  return h('ul', { class: 'problems' }, items);
}

function renderCounts(nodes, clusters) {
  const by = (state) => nodes.filter((n) => n.state === state).length;
  const withAgents = nodes.filter((n) => n.agent && n.state !== 'deauthorized');
  const offline = withAgents.filter((n) => !n.agent.online).length;
  const cards = [
    card('Pending nodes', by('pending'), '#/nodes', 'waiting for authorization'),
    card('In the pool', by('authorized'), '#/nodes', 'authorized, in no cluster'),
    card('Attached', by('attached') + by('detaching'), '#/nodes',
      by('detaching') ? `${by('detaching')} detaching` : 'members of clusters'),
    card('Agents offline', offline, '#/nodes', `of ${plural(withAgents.length, 'agent')}`),
    card('Clusters', clusters.length, '#/clusters', null, clusterStates(clusters)),
  ];
  const parts = [h('ul', { class: 'cards' }, cards)];
  if (!nodes.length) {
    parts.push(empty('No hosts yet. Download an agent package on the ',
      h('a', { href: '#/tokens' }, 'Tokens & downloads'), ' page (or run ', code('qb agent-package download'),
      ') and install it on a host; the host then appears under Nodes as pending.'));
  }
  return parts;
}

function clusterStates(clusters) {
  const counts = new Map();
  for (const c of clusters) counts.set(c.state, (counts.get(c.state) || 0) + 1);
  if (!counts.size) return null;
  return h('ul', { class: 'state-counts' },
    [...counts].map(([state, n]) => h('li', {}, badge(state, { attr: 'count-state', label: `${n} ${state}` }))));
}

function card(title, value, href, note, extra) {
  return h('li', { class: 'card' },
    h('a', { href, class: 'card-link', 'data-fk': `card:${title}` },
      h('span', { class: 'card-value' }, String(value)),
      h('span', { class: 'card-title' }, title)),
    note && h('p', { class: 'card-note' }, note),
    extra);
}
