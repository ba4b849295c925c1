// Nodes `#/nodes`: pending, pool, attached and deauthorized hosts, with their agents, facts and
// labels; operators authorize, deauthorize and delete.

import { h, add, render, badge, nodeLink, clusterLink, plural, list } from '../dom.js';
import { API, listAll, post, del, path } from '../api.js';
import { section, lead, empty, table, alertSlot, runAction, announce, confirmDialog, button, code, showError } from '../ui.js';
import { agentSummary, hostCell, addressesCell, labelChips, roleText } from './common.js';

export function mount(ctx) {
  const operator = ctx.can('operator');
  /** Names of the pending nodes ticked for "Authorize selected"; survives redraws. */
  const selected = new Set();

  const pendingAlert = alertSlot();
  const poolAlert = alertSlot();
  const goneAlert = alertSlot();
  const regions = {
    pending: h('div', { class: 'region' }),
    pool: h('div', { class: 'region' }),
    attached: h('div', { class: 'region' }),
    gone: h('div', { class: 'region' }),
  };
  const counts = {
    pending: h('span', { class: 'count' }),
    pool: h('span', { class: 'count' }),
    attached: h('span', { class: 'count' }),
    gone: h('span', { class: 'count' }),
  };

  const authorizeSelected = button('Authorize selected', (e) => authorizeMany(e.currentTarget), { kind: 'primary', id: 'authorize-selected' });
  const selectionNote = h('span', { class: 'muted small', id: 'selection-note' }, 'No node selected.');

  const pending = section('Pending', { extra: counts.pending });
  add(pending,
    lead('Hosts whose agent registered and that wait for an operator. Authorizing one puts it in the pool.'),
    operator ? h('div', { class: 'toolbar' }, authorizeSelected, selectionNote) : null,
    pendingAlert,
    regions.pending);
  const pool = section('Pool', { extra: counts.pool });
  add(pool, lead('Authorized hosts in no cluster, ready to be attached.'), poolAlert, regions.pool);
  const attached = section('Attached', { extra: counts.attached });
  add(attached, lead('Hosts that are members of a cluster, or leaving one.'), regions.attached);
  const gone = section('Deauthorized', { extra: counts.gone });
  add(gone, lead('Hosts whose identity was revoked. They must register again to come back; delete them to forget them.'), goneAlert, regions.gone);

  add(ctx.root,
    ctx.heading('Nodes'),
    ctx.loadAlert,
    pending, pool, attached, gone);

  let nodes = [];

  async function refresh() {
    const items = await listAll(`${API}/nodes`);
    if (!ctx.alive) return;
    nodes = items;
    const of = (...states) => nodes.filter((n) => states.includes(n.state));
    const pendingNodes = of('pending');
    // Forget ticks of nodes that are no longer pending.
    for (const name of [...selected]) if (!pendingNodes.some((n) => n.name === name)) selected.delete(name);
    updateSelection();

    const groups = {
      pending: pendingNodes,
      pool: of('authorized'),
      attached: of('attached', 'detaching'),
      gone: of('deauthorized'),
    };
    for (const [key, group] of Object.entries(groups)) counts[key].textContent = ` (${group.length})`;

    render(regions.pending, [groups.pending, [...selected]], () => nodeTable('pending', groups.pending,
      empty('No pending nodes. Install the agent package on a host (see ', h('a', { href: '#/tokens' }, 'Tokens & downloads'),
        ' or ', code('qb agent-package download'), '); it appears here.')));
    render(regions.pool, groups.pool, () => nodeTable('pool', groups.pool,
      empty('The pool is empty. Authorize pending nodes to add them.')));
    render(regions.attached, groups.attached, () => nodeTable('attached', groups.attached,
      empty('No node is in a cluster. Attach pool nodes from a cluster\'s page.')));
    render(regions.gone, groups.gone, () => nodeTable('gone', groups.gone, empty('No deauthorized nodes.')));
  }

  // ---- tables --------------------------------------------------------------------------

  function nodeTable(kind, group, whenEmpty) {
    if (!group.length) return whenEmpty;
    const selectable = operator && kind === 'pending';
    const actions = operator && kind !== 'attached';
    const columns = [
      selectable ? { content: selectAll(group), class: 'col-check' } : null,
      'Name', 'State', 'Agent', 'Host', 'Addresses', 'Labels',
      kind === 'attached' ? 'Cluster' : null,
      kind === 'attached' ? 'Role' : null,
      actions ? { content: 'Actions', class: 'col-actions' } : null,
    ].filter(Boolean);
    const label = { pending: 'Pending nodes', pool: 'Pool nodes', attached: 'Attached nodes', gone: 'Deauthorized nodes' }[kind];
    return table({ label, columns, rows: group.map((n) => row(kind, n, selectable, actions)), sk: kind });
  }

  function row(kind, n, selectable, actions) {
    return h('tr', { 'data-node': n.name },
      selectable ? h('td', { class: 'col-check' }, checkbox(n)) : null,
      h('th', { scope: 'row' }, nodeLink(n.name)),
      h('td', {}, badge(n.state)),
      h('td', {}, agentSummary(n)),
      h('td', { class: 'col-host' }, hostCell(n.facts)),
      h('td', {}, addressesCell(n.facts)),
      h('td', {}, labelChips(n.labels)),
      kind === 'attached' ? h('td', {}, n.cluster ? clusterLink(n.cluster.name, `cl:${n.name}`) : '—') : null,
      kind === 'attached' ? h('td', {}, roleText(n.role)) : null,
      actions ? h('td', { class: 'col-actions' }, rowActions(kind, n)) : null);
  }

  function rowActions(kind, n) {
    if (kind === 'pending') {
      return button('Authorize', (e) => authorize(e.currentTarget, n.name), { kind: 'primary', small: true, label: `Authorize ${n.name}`, fk: `authorize:${n.name}` });
    }
    if (kind === 'pool') {
      return button('Deauthorize', (e) => deauthorize(e.currentTarget, n.name), { kind: 'danger', small: true, label: `Deauthorize ${n.name}`, fk: `deauthorize:${n.name}` });
    }
    return button('Delete', (e) => remove(e.currentTarget, n.name), { kind: 'danger', small: true, label: `Delete ${n.name}`, fk: `delete:${n.name}` });
  }

  function checkbox(n) {
    const id = `select-${n.name}`;
    return h('span', { class: 'check-only' },
      h('input', {
        type: 'checkbox', id, name: 'pending-node', value: n.name, 'data-fk': id,
        checked: selected.has(n.name),
        onchange: (e) => {
          if (e.currentTarget.checked) selected.add(n.name);
          else selected.delete(n.name);
          syncSelectAll();
          updateSelection();
        },
      }),
      h('label', { for: id, class: 'visually-hidden' }, `Select ${n.name}`));
  }

  function selectAll(group) {
    const all = group.length > 0 && group.every((n) => selected.has(n.name));
    return h('span', { class: 'check-only' },
      h('input', {
        type: 'checkbox', id: 'select-all-pending', 'data-fk': 'select-all-pending',
        checked: all,
        indeterminate: !all && group.some((n) => selected.has(n.name)),
        onchange: (e) => {
          for (const n of group) {
            if (e.currentTarget.checked) selected.add(n.name);
            else selected.delete(n.name);
          }
          for (const box of regions.pending.querySelectorAll('input[name="pending-node"]')) box.checked = selected.has(box.value);
          updateSelection();
        },
      }),
      h('label', { for: 'select-all-pending', class: 'visually-hidden' }, 'Select all pending nodes'));
  }

  function syncSelectAll() {
    const all = regions.pending.querySelector('#select-all-pending');
    if (!all) return;
    const boxes = [...regions.pending.querySelectorAll('input[name="pending-node"]')];
    all.checked = boxes.length > 0 && boxes.every((b) => b.checked);
    all.indeterminate = !all.checked && boxes.some((b) => b.checked);
  }

  function updateSelection() {
    selectionNote.textContent = selected.size ? `${plural(selected.size, 'node')} selected.` : 'No node selected.';
  }

  // ---- actions -------------------------------------------------------------------------

  async function authorize(btn, name) {
    const done = await runAction(btn, pendingAlert, () => post(path('nodes', name, 'authorize')), `Could not authorize ${name}`);
    if (done) {
      selected.delete(name);
      announce(`Authorized ${name}: it is in the pool.`);
      await ctx.refresh();
    }
  }

  async function authorizeMany(btn) {
    const names = [...selected];
    if (!names.length) {
      showError(pendingAlert, new Error('Select one or more pending nodes first.'));
      return;
    }
    await runAction(btn, pendingAlert, async () => {
      const ok = [];
      const failed = [];
      for (const name of names) {
        try {
          await post(path('nodes', name, 'authorize'));
          ok.push(name);
          selected.delete(name);
        } catch (err) {
          if (err.status === 401) throw err;
          failed.push(`${name}: ${err.message}`);
        }
      }
      if (ok.length) announce(`Authorized ${list(ok)}.`);
      await ctx.refresh();
      if (failed.length) throw new Error(`Could not authorize ${plural(failed.length, 'node')}: ${failed.join('; ')}`);
    });
  }

  async function deauthorize(btn, name) {
    const ok = await confirmDialog({
      title: `Deauthorize ${name}?`,
      message: `${name} leaves the pool and its identity is revoked at once: its agent is disconnected and its certificate refused. To come back, the host must register again and be authorized.`,
    });
    if (!ok) return;
    const done = await runAction(btn, poolAlert, () => post(path('nodes', name, 'deauthorize')), `Could not deauthorize ${name}`);
    if (done) {
      announce(`Deauthorized ${name}.`);
      await ctx.refresh();
    }
  }

  async function remove(btn, name) {
    const ok = await confirmDialog({
      title: `Delete ${name}?`,
      message: `The controller forgets ${name}. If its agent registers again, it comes back as a new pending node.`,
    });
    if (!ok) return;
    const done = await runAction(btn, goneAlert, () => del(path('nodes', name)).then(() => true), `Could not delete ${name}`);
    if (done) {
      announce(`Deleted ${name}.`);
      await ctx.refresh();
    }
  }

  return { refresh };
}
