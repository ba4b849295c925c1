// A cluster's workloads as its own API tells them (`GET /clusters/<name>/health`): whether
// each Kubernetes node is Ready, whether the scheduler and the controller manager have a
// leader, how many pods run, and the pods that need attention with their restarts and why
// their containers last stopped.

import { h, badge, time, nodeLink } from '../dom.js';
import { dl, empty, table } from '../ui.js';

/** The workloads region: `health` as read, or why it could not be read. */
export function workloadsView(name, health, error) {
  if (error) return empty(`The cluster's API could not be read: ${error}`);
  if (!health) return empty('Read once the cluster is installed.');
  const c = health.pods;
  return h('div', {},
    dl([
      ['Pods', `${c.total}: ${c.running} running, ${c.pending} pending, ${c.succeeded} succeeded, ${c.failed} failed`],
      ...health.leaders.map((l) => [l.component, leaderText(l)]),
      ['Read', time(health.checked_at)],
    ]),
    table({
      label: `Kubernetes nodes of ${name}`,
      columns: ['Node', 'Ready', 'Since', 'Kubelet', 'Reason'],
      sk: 'kube-nodes',
      rows: health.nodes.map((n) => h('tr', { 'data-kube-node': n.name },
        h('th', { scope: 'row' }, nodeLink(n.name)),
        h('td', {}, badge(n.ready ? 'ready' : 'not ready', { attr: 'ready', tone: n.ready ? 'ok' : 'bad' })),
        h('td', { class: 'nowrap' }, time(n.since)),
        h('td', { class: 'mono' }, n.kubelet_version || '—'),
        h('td', { class: 'message' }, n.ready ? '' : (n.message || n.reason || '')))),
    }),
    health.attention.length
      ? table({
        label: `Pods of ${name} that need attention`,
        columns: ['Pod', 'Node', 'Phase', 'Restarts', 'Why'],
        sk: 'pods',
        rows: health.attention.map((p) => h('tr', { 'data-pod': `${p.namespace}/${p.name}` },
          h('th', { scope: 'row', class: 'mono' }, `${p.namespace}/${p.name}`),
          h('td', {}, p.node ? nodeLink(p.node) : '—'),
          h('td', {}, p.phase),
          h('td', { class: 'num' }, String(p.containers.reduce((sum, x) => sum + x.restarts, 0))),
          h('td', { class: 'message' }, whyText(p)))),
      })
      : empty('No pod needs attention.'));
}

function leaderText(l) {
  if (!l.holder) return 'no leader elected yet';
  const holder = l.holder.split('_')[0];
  return l.current ? `led by ${holder}` : h('strong', { class: 'tone-bad' }, `no leader (last: ${holder})`);
}

/** What is wrong with a pod's containers: `app: CrashLoopBackOff, last exit OOMKilled (137)`. */
function whyText(p) {
  return p.containers
    .filter((c) => c.restarts > 0 || c.waiting || !c.ready)
    .map((c) => {
      const said = [c.waiting || (c.ready ? '' : 'not ready')].filter(Boolean);
      if (c.last_exit) said.push(`last exit ${c.last_exit.reason} (${c.last_exit.exit_code}) ${new Date(c.last_exit.at).toLocaleString()}`);
      return `${c.name}: ${said.join(', ')}`;
    })
    .join('; ') || (p.phase === 'Pending' ? 'waiting to be scheduled or started' : '');
}
