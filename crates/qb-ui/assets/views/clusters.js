// Clusters `#/clusters`: every cluster with its state, version, masters and workers; operators
// create clusters (name, Kubernetes version from the imported bundles, and in "Advanced" the
// network ranges, the master count and explicit roles of named nodes).

import { h, add, render, badge, clusterLink, compareVersions, time } from '../dom.js';
import { API, get, post, listAll } from '../api.js';
import { section, lead, empty, table, alertSlot, runAction, announce, button, code, showError } from '../ui.js';

const DEFAULT_POD_CIDR = '10.20.0.0/16';
const DEFAULT_SERVICE_CIDR = '10.21.0.0/16';

export function mount(ctx) {
  const operator = ctx.can('operator');
  const list = h('div', { class: 'region' });
  const listSection = section('All clusters');
  add(listSection, list);

  /** The create form's parts that live updates refresh: bundle versions and node names. */
  const versionSelect = h('select', { id: 'cluster-version', name: 'kubernetes_version', 'aria-describedby': 'cluster-version-hint' });
  const versionHint = h('p', { class: 'hint', id: 'cluster-version-hint' });
  const nodeNames = h('datalist', { id: 'role-node-names' });
  let bundles = null;

  const createSection = operator ? section('Create a cluster') : null;
  if (createSection) add(createSection, createForm());

  add(ctx.root,
    ctx.heading('Clusters'),
    lead('A cluster starts empty; attach pool nodes on its page and the controller installs Kubernetes on them.'),
    ctx.loadAlert,
    listSection,
    createSection);

  async function refresh() {
    const [clusters, nodes, bundleList] = await Promise.all([
      listAll(`${API}/clusters`),
      listAll(`${API}/nodes`),
      operator ? get(`${API}/bundles`) : Promise.resolve(null),
    ]);
    if (!ctx.alive) return;
    // Masters and workers per cluster, from the nodes' roles.
    const roles = new Map();
    for (const n of nodes) {
      if (!n.cluster) continue;
      const r = roles.get(n.cluster.id) || { master: 0, worker: 0, unplaced: 0 };
      if (n.role === 'master') r.master += 1;
      else if (n.role === 'worker') r.worker += 1;
      else r.unplaced += 1;
      roles.set(n.cluster.id, r);
    }
    const rows = clusters.map((c) => ({ c, r: roles.get(c.id) || { master: 0, worker: 0, unplaced: 0 } }));
    render(list, rows, () => clusterTable(rows));
    if (operator) {
      updateVersions(bundleList || []);
      const names = nodes.filter((n) => n.state !== 'deauthorized').map((n) => n.name);
      render(nodeNames, names, () => names.map((n) => h('option', { value: n })));
    }
  }

  function clusterTable(rows) {
    if (!rows.length) {
      return empty(operator ? 'No clusters yet. Create one below, then attach nodes from the pool to it.' : 'No clusters yet.');
    }
    return table({
      label: 'Clusters',
      sk: 'clusters',
      columns: ['Name', 'State', 'Kubernetes', 'Masters', 'Workers', 'Nodes', 'Health', 'Created'],
      rows: rows.map(({ c, r }) => h('tr', { 'data-cluster': c.name },
        h('th', { scope: 'row' }, clusterLink(c.name)),
        h('td', {}, badge(c.state)),
        h('td', {}, c.kubernetes_version),
        h('td', {}, String(r.master)),
        h('td', {}, String(r.worker)),
        h('td', {}, String(c.node_count), r.unplaced ? h('span', { class: 'muted small' }, ` (${r.unplaced} not placed)`) : null),
        h('td', { class: 'message' }, c.state_message || h('span', { class: 'muted' }, c.state === 'ready' ? 'healthy' : '—')),
        h('td', { class: 'nowrap' }, time(c.created_at)))),
    });
  }

  /** Fills the version select from the bundles, newest first, keeping the user's choice. */
  function updateVersions(list) {
    const versions = [...new Set(list.map((b) => b.kubernetes_version))].sort(compareVersions).reverse();
    if (bundles !== null && JSON.stringify(versions) === JSON.stringify(bundles)) return;
    const chosen = bundles !== null && bundles.length ? versionSelect.value : null;
    bundles = versions;
    if (!versions.length) {
      versionSelect.replaceChildren(h('option', { value: '' }, 'Controller default (no bundle imported)'));
      versionHint.replaceChildren('No release bundle is imported yet: a cluster waits (blocked) until one for its version is. Import one with ',
        code('qb bundle import DIR'), '.');
      return;
    }
    versionSelect.replaceChildren(...versions.map((v, i) => h('option', { value: v }, i === 0 ? `${v} (newest)` : v)));
    versionSelect.value = chosen && versions.includes(chosen) ? chosen : versions[0];
    versionHint.replaceChildren('The versions of the imported release bundles.');
  }

  // ---- the create form -----------------------------------------------------------------

  function createForm() {
    const alerts = alertSlot();
    const name = h('input', {
      id: 'cluster-name', name: 'name', type: 'text', required: true, autocomplete: 'off', spellcheck: 'false',
      autocapitalize: 'off', maxlength: '63', 'aria-describedby': 'cluster-name-hint',
    });
    const podCidr = h('input', { id: 'pod-cidr', name: 'pod_cidr', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: DEFAULT_POD_CIDR });
    const serviceCidr = h('input', { id: 'service-cidr', name: 'service_cidr', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: DEFAULT_SERVICE_CIDR });
    const masters = h('select', { id: 'cluster-masters', name: 'masters', 'aria-describedby': 'cluster-masters-hint' },
      h('option', { value: 'auto' }, 'auto'),
      ['1', '3', '5', '7', '9'].map((n) => h('option', { value: n }, n)));
    const roleRows = h('ol', { class: 'role-rows' });
    const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create cluster');

    let roleCount = 0;
    function addRole() {
      roleCount += 1;
      const nodeId = `role-node-${roleCount}`;
      const roleId = `role-role-${roleCount}`;
      const li = h('li', { class: 'role-row' },
        h('div', { class: 'field' }, h('label', { for: nodeId }, 'Node'),
          h('input', { id: nodeId, type: 'text', list: 'role-node-names', autocomplete: 'off', spellcheck: 'false', class: 'role-node' })),
        h('div', { class: 'field' }, h('label', { for: roleId }, 'Role'),
          h('select', { id: roleId, class: 'role-role' }, h('option', { value: 'master' }, 'master'), h('option', { value: 'worker' }, 'worker'))),
        h('div', { class: 'field field-button' },
          button('Remove', () => {
            li.remove();
            addButton.focus();
          }, { small: true, kind: 'quiet', label: `Remove this role` })));
      add(roleRows, li);
      li.querySelector('input').focus();
    }
    const addButton = button('Add a node role', addRole, { small: true });

    const form = h('form', { class: 'create-form', novalidate: true },
      h('div', { class: 'field' },
        h('label', { for: 'cluster-name' }, 'Name'), name,
        h('p', { class: 'hint', id: 'cluster-name-hint' }, 'Lowercase letters, digits and “-”, e.g. prod-1.')),
      h('div', { class: 'field' },
        h('label', { for: 'cluster-version' }, 'Kubernetes version'), versionSelect, versionHint),
      h('details', { class: 'advanced' },
        h('summary', {}, 'Advanced'),
        h('div', { class: 'field-row' },
          h('div', { class: 'field' }, h('label', { for: 'pod-cidr' }, 'Pod CIDR'), podCidr,
            h('p', { class: 'hint' }, `Default ${DEFAULT_POD_CIDR}; each node gets a /24 of it.`)),
          h('div', { class: 'field' }, h('label', { for: 'service-cidr' }, 'Service CIDR'), serviceCidr,
            h('p', { class: 'hint' }, `Default ${DEFAULT_SERVICE_CIDR}.`))),
        h('div', { class: 'field' },
          h('label', { for: 'cluster-masters' }, 'Masters'), masters,
          h('p', { class: 'hint', id: 'cluster-masters-hint' }, 'auto: 1 master for 1–2 nodes, 3 for 3–9, 5 beyond; or an odd number.')),
        h('fieldset', { class: 'roles' },
          h('legend', {}, 'Roles of named nodes'),
          h('p', { class: 'hint' }, 'Optional: pin nodes to a role; the others are placed automatically.'),
          roleRows, addButton,
          nodeNames)),
      alerts,
      h('div', { class: 'actions' }, submit));

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const request = { name: name.value.trim() };
      if (!request.name) {
        showError(alerts, new Error('Give the cluster a name.'));
        name.focus();
        return;
      }
      // The API's rule for names (a DNS label), checked here for a friendlier message.
      if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(request.name)) {
        showError(alerts, new Error(`“${request.name}” is not a valid name: use 1–63 lowercase letters, digits or “-”, starting and ending with a letter or digit.`));
        name.focus();
        return;
      }
      if (versionSelect.value) request.kubernetes_version = versionSelect.value;
      if (podCidr.value.trim()) request.pod_cidr = podCidr.value.trim();
      if (serviceCidr.value.trim()) request.service_cidr = serviceCidr.value.trim();
      request.masters = masters.value;
      const roles = {};
      for (const row of roleRows.querySelectorAll('.role-row')) {
        const node = row.querySelector('.role-node').value.trim();
        if (!node) continue;
        if (roles[node]) {
          showError(alerts, new Error(`Node ${node} is given a role twice.`));
          return;
        }
        roles[node] = row.querySelector('.role-role').value;
      }
      if (Object.keys(roles).length) request.roles = roles;
      const created = await runAction(submit, alerts, () => post(`${API}/clusters`, request), 'Could not create the cluster');
      if (created) {
        announce(`Created cluster ${created.name}. Attach nodes to it to install Kubernetes.`);
        ctx.navigate(`#/clusters/${encodeURIComponent(created.name)}`);
      }
    });
    return form;
  }

  return { refresh };
}
