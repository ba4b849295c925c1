// Pieces several views show the same way: a node's agent, facts, labels and plan progress,
// and event rows.

import { h, badge, bytes, chip, time, exact, plural, nodeHref, clusterHref } from '../dom.js';

/** The agent column of node tables: online/offline, when last seen, and its version. */
export function agentSummary(n) {
  if (!n.agent) return badge('no agent', { attr: 'agent', label: 'no agent' });
  return h('span', { class: 'stack' },
    badge(n.agent.online ? 'online' : 'offline', { attr: 'agent' }),
    h('span', { class: 'muted small nowrap' }, 'seen ', lastSeen(n)),
    n.agent.version ? h('span', { class: 'muted small' }, `v${n.agent.version}`) : null);
}

/** The host column of node tables: OS, then kernel, CPUs, memory and architecture. */
export function hostCell(f) {
  if (!f || (!f.os && !f.cpus)) return h('span', { class: 'muted' }, 'no facts reported');
  return h('span', { class: 'stack' },
    h('span', {}, f.os || '—'),
    h('span', { class: 'muted small' }, [f.kernel && `kernel ${f.kernel}`, resources(f)].filter((x) => x && x !== '—').join(' · ')));
}

/** When the node's agent was last heard from. */
export function lastSeen(n) {
  return time(n.agent && n.agent.last_seen_at, 'never');
}

/** `4 CPUs · 7.8 GiB · x86_64`. */
export function resources(f) {
  if (!f || !f.cpus) return '—';
  return [plural(f.cpus, 'CPU'), bytes(f.memory_bytes), f.arch].filter(Boolean).join(' · ');
}

/** The host's addresses, one per line. */
export function addressesCell(f) {
  const addresses = (f && f.addresses) || [];
  if (!addresses.length) return h('span', { class: 'muted' }, '—');
  return h('span', { class: 'stack' }, addresses.map((a) => h('span', { class: 'mono' }, a)));
}

/** Label chips `key=value`; `remove(key)` adds a remove button to each. */
export function labelChips(labels, remove) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return h('span', { class: 'muted' }, 'none');
  return h('ul', { class: 'chips' }, entries.map(([k, v]) => h('li', {},
    chip(v === '' ? k : `${k}=${v}`,
      remove && h('button', {
        type: 'button', class: 'chip-remove', 'aria-label': `Remove label ${k}`, title: `Remove label ${k}`,
        'data-fk': `label-remove:${k}`, onclick: (e) => remove(k, e.currentTarget),
      }, '×')))));
}

/** `master`, `worker` or `not placed yet`. */
export function roleText(role) {
  return role || h('span', { class: 'muted' }, 'not placed yet');
}

/**
 * How far a node's plan is: `{done, total, state, generation, published, step, failed}` from
 * its agent's last report, or `null` before any report.
 */
export function planProgress(n) {
  const plan = n.plan;
  if (!plan || !plan.report) return null;
  const r = plan.report;
  const steps = r.steps || [];
  return {
    done: steps.filter((s) => s.state === 'done').length,
    total: steps.length,
    state: r.state,
    generation: r.generation,
    published: plan.generation,
    step: steps.find((s) => s.state === 'running') || steps.find((s) => s.state === 'pending') || null,
    failed: steps.find((s) => s.state === 'failed') || steps.find((s) => s.message) || null,
  };
}

/** A one-line account of a plan, as the CLI gives it. */
export function planText(n) {
  if (!n.plan) return 'no plan yet';
  const p = planProgress(n);
  if (!p) return `generation ${n.plan.generation} published, no report yet`;
  let text;
  if (p.state === 'applied') text = `generation ${p.generation} applied`;
  else if (p.state === 'applying') text = `generation ${p.generation} applying${p.step ? `: ${p.step.name} ${p.step.state}` : ''}`;
  else {
    const verb = p.state === 'failed' ? 'failed' : 'refused';
    text = `generation ${p.generation} ${verb}${p.failed ? `: ${p.failed.name}${p.failed.message ? `: ${p.failed.message}` : ''}` : ''}`;
  }
  return p.generation < p.published ? `generation ${p.published} published; agent at ${text}` : text;
}

/** The plan column of a node table: a progress bar, `12 of 15 steps`, the state and a line. */
export function planCell(n) {
  if (!n.plan) return h('span', { class: 'muted' }, 'no plan yet');
  const p = planProgress(n);
  if (!p) return h('span', { class: 'muted' }, `generation ${n.plan.generation}: waiting for the agent's report`);
  return h('div', { class: 'plan-cell' },
    h('div', { class: 'plan-line' },
      badge(p.state, { attr: 'plan' }),
      h('span', { class: 'small' }, `${p.done} of ${plural(p.total, 'step')}`)),
    p.total ? h('progress', { max: String(p.total), value: String(p.done), 'aria-label': `Plan of ${n.name}: ${p.done} of ${p.total} steps done` }) : null,
    h('span', { class: 'muted small plan-text' }, planText(n)));
}

/** Compact JSON of an event's details, or a dash. */
export function detailText(detail) {
  if (detail === null || detail === undefined) return '—';
  if (typeof detail === 'object' && !Array.isArray(detail) && Object.keys(detail).length === 0) return '—';
  return JSON.stringify(detail);
}

/** The object an event is about, linked when the UI has a page for it. */
export function eventObject(e) {
  const name = e.object_name || e.object_id;
  let link = null;
  if (e.object_kind === 'node' && name) link = h('a', { href: nodeHref(name), 'data-fk': `ev-obj:${e.id}` }, name);
  else if (e.object_kind === 'cluster' && name) link = h('a', { href: clusterHref(name), 'data-fk': `ev-obj:${e.id}` }, name);
  return h('span', { class: 'stack' }, h('span', { class: 'muted small' }, e.object_kind.replaceAll('_', ' ')), link || h('span', {}, name));
}

/** A row of an event table: time, actor, action, object, details. */
export function eventRow(e) {
  return h('tr', { 'data-event': String(e.id) },
    h('td', { class: 'nowrap' }, h('span', { class: 'stack' }, time(e.at), h('span', { class: 'muted small' }, exact(e.at)))),
    h('td', {}, e.actor),
    // Never broken mid-word (`cluster.nodes_detache d`): the table scrolls instead.
    h('td', { class: 'nowrap' }, h('code', {}, e.action)),
    h('td', {}, eventObject(e)),
    h('td', { class: 'detail' }, h('code', { class: 'json' }, detailText(e.detail))));
}

export const EVENT_COLUMNS = ['Time', 'Actor', 'Action', 'Object', 'Details'];

/**
 * What an alert is about, as a link: its node, its cluster, for a pod (`cluster/namespace/
 * name`) or a control-plane component (`cluster/component`) the cluster's workloads, for a
 * Kubernetes node (`cluster/node`) the node, for a service (`node/service`) its log.
 */
export function alertObjectLink(a, fk = `alert-object:${a.id}`) {
  if (a.object_kind === 'service') {
    // `node/service`: the service's log on the node's page.
    const [node, service] = a.object_name.split('/');
    return h('a', { href: `${nodeHref(node)}?log=${encodeURIComponent(service)}`, 'data-fk': fk }, `${service} on node ${node}`);
  }
  if (a.object_kind === 'pod') {
    const [cluster, ...pod] = a.object_name.split('/');
    return h('a', { href: clusterHref(cluster), 'data-fk': fk }, `Pod ${pod.join('/')} in cluster ${cluster}`);
  }
  if (a.object_kind === 'kube_node') {
    // `cluster/node`: the node's page.
    const [cluster, node] = a.object_name.split('/');
    return h('a', { href: nodeHref(node), 'data-fk': fk }, `Kubernetes node ${node} in cluster ${cluster}`);
  }
  if (a.object_kind === 'component') {
    const [cluster, component] = a.object_name.split('/');
    return h('a', { href: clusterHref(cluster), 'data-fk': fk }, `${component} of cluster ${cluster}`);
  }
  const cluster = a.object_kind === 'cluster';
  return h('a', { href: cluster ? clusterHref(a.object_name) : nodeHref(a.object_name), 'data-fk': fk },
    `${cluster ? 'Cluster' : 'Node'} ${a.object_name}`);
}

/**
 * Links to the logs of the services an engine message names unhealthy (`host-1: etcd,
 * kube-apiserver unhealthy; host-2: ...`): one click from "what is wrong" to "why".
 */
export function unhealthyLogLinks(message) {
  const links = [];
  for (const m of (message || '').matchAll(/([A-Za-z0-9._-]+): ([a-z0-9-]+(?:, [a-z0-9-]+)*) unhealthy/g)) {
    for (const service of m[2].split(', ')) {
      const href = `${nodeHref(m[1])}?log=${encodeURIComponent(service)}`;
      links.push(h('a', { href, 'data-fk': `log:${m[1]}:${service}`, class: 'log-link' }, `${service} log on ${m[1]}`));
    }
  }
  return links;
}
