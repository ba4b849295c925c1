// Cluster detail `#/clusters/<name>`: state and message, settings, nodes with their plan
// progress, the latest preflight as a matrix, and the cluster's events. Operators attach and
// detach nodes, run preflight, download a kubeconfig and delete the cluster.

import { h, add, render, badge, toneOf, time, exact, nodeLink, plural, list, uid } from '../dom.js';
import { API, ApiError, get, post, del, path, listAll } from '../api.js';
import { section, lead, dl, empty, table, alertSlot, runAction, announce, confirmDialog, button, showError, code } from '../ui.js';
import { healthBand } from './charts.js';
import { workloadsView } from './workloads.js';
import { agentSummary, roleText, planCell, resources, eventRow, EVENT_COLUMNS, unhealthyLogLinks } from './common.js';

/** The least time between two readings of the cluster's health, in ms. */
const HEALTH_EVERY = 10000;

/** What a state means when the engine has no message of its own. */
const STATE_TEXT = {
  empty: 'No nodes yet: attach nodes from the pool to install Kubernetes.',
  pending: 'Nodes were attached; the cluster engine looks at them shortly.',
  preflight: 'Checking the nodes and the network between them.',
  installing: 'Rolling plans out to the nodes.',
  ready: 'Every node runs its plan and every component is healthy.',
};

export function mount(ctx) {
  const name = ctx.params[0];
  const operator = ctx.can('operator');

  /** Ticked nodes: to detach (rows) and to attach (pool list); both survive redraws. */
  const detachSelected = new Set();
  const attachSelected = new Set();

  const stateBadge = h('span', { class: 'heading-badge', id: 'cluster-state-slot' });
  const message = h('p', { class: 'state-message', id: 'cluster-message', hidden: true });
  const missing = h('div', { class: 'region', hidden: true });
  const summary = h('div', { class: 'region' });
  const nodesRegion = h('div', { class: 'region' });
  const nodesAlert = alertSlot();
  const addonsRegion = h('div', { class: 'region' });
  const poolRegion = h('div', { class: 'region' });
  const preflightRegion = h('div', { class: 'region' });
  const preflightAlert = alertSlot();
  const eventsRegion = h('div', { class: 'region' });
  const actionAlert = alertSlot();
  const kubeconfigArea = h('div', { class: 'kubeconfig-area' });
  const detachNote = h('span', { class: 'muted small' }, 'No node selected.');

  let cluster = null;
  let preflightKey;
  let preflight = null;
  let kubeconfigUrl = null;

  // ---- structure (built once) ------------------------------------------------------------

  const nodesSection = section('Nodes');
  add(nodesSection,
    operator ? h('div', { class: 'toolbar' },
      button('Detach selected', (e) => detach(e.currentTarget, [...detachSelected]), { kind: 'danger', id: 'detach-selected' }),
      detachNote) : null,
    nodesAlert, nodesRegion);

  const workloadsRegion = h('div', { class: 'region' });
  const workloadsSection = section('Workloads', { id: 'workloads' });
  add(workloadsSection,
    lead('Read from the cluster\'s own API as this page refreshes: its Kubernetes nodes, the leaders of its control plane and the pods that need attention.'),
    workloadsRegion);
  /** The cluster's health from its API, read at most every HEALTH_EVERY ms. */
  let health = null;
  let healthError = null;
  let healthAt = 0;

  const addonsSection = section('Add-ons');
  add(addonsSection,
    lead('What qb runs in the cluster for it, applied again whenever it drifts or is deleted.'),
    addonsRegion);

  const preflightSection = section('Preflight');
  add(preflightSection,
    lead('Before installing, every node checks itself (ports free, kernel, memory, CPUs, clock) and probes every other node on every required port.'),
    operator ? h('div', { class: 'toolbar' }, button('Run preflight', (e) => runPreflight(e.currentTarget), { id: 'run-preflight' })) : null,
    preflightAlert, preflightRegion);

  const eventsSection = section('Events');
  add(eventsSection,
    h('p', { class: 'lead' }, 'The newest changes to this cluster and its nodes. ',
      h('a', { href: `#/events?kind=cluster&object=${encodeURIComponent(name)}` }, 'All events of this cluster'), '.'),
    eventsRegion);

  const healthRegion = h('div', { class: 'region' });
  const body = h('div', {},
    message,
    actionsBar(),
    healthRegion,
    (() => {
      const s = section('Settings');
      add(s, summary);
      return s;
    })(),
    nodesSection,
    operator ? attachSection() : null,
    workloadsSection,
    addonsSection,
    preflightSection,
    eventsSection);

  add(ctx.root,
    h('nav', { class: 'breadcrumb', 'aria-label': 'Breadcrumb' },
      h('ol', {}, h('li', {}, h('a', { href: '#/clusters' }, 'Clusters')), h('li', {}, h('span', { 'aria-current': 'page' }, name)))),
    h('div', { class: 'page-head' }, ctx.heading(name), stateBadge),
    ctx.loadAlert,
    missing,
    body);

  // ---- refresh ---------------------------------------------------------------------------

  async function refresh() {
    let detail;
    try {
      detail = await get(path('clusters', name));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        if (!ctx.alive) return;
        showMissing();
        return;
      }
      throw err;
    }
    // The cluster's own events (by id, so an older cluster of the same name does not mix in),
    // the tenant's newest events for those of its nodes, and the pool for the attach form.
    const [clusterEvents, recent, pool, preflightEvents, stateChanges] = await Promise.all([
      get(`${API}/events`, { kind: 'cluster', object: detail.id, order: 'newest', limit: 30 }),
      get(`${API}/events`, { order: 'newest', limit: 100 }),
      operator ? listAll(`${API}/nodes`, { state: 'authorized' }) : Promise.resolve([]),
      get(`${API}/events`, { kind: 'cluster', object: detail.id, action: 'cluster.preflight', order: 'newest', limit: 1 }),
      get(`${API}/events`, { kind: 'cluster', object: detail.id, action: 'cluster.state_changed', order: 'newest', limit: 500 }),
    ]);
    // Every preflight run writes an event. The report can be large, so it is read only when
    // that event is new, and not at all before the first run (no 404 to ask for).
    const newest = preflightEvents.items[0];
    const key = newest ? newest.id : null;
    if (key !== preflightKey) {
      preflight = null;
      if (key !== null) {
        try {
          preflight = await get(path('clusters', name, 'preflight'));
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 404)) throw err;
        }
      }
      preflightKey = key;
    }
    await readHealth(detail);
    if (!ctx.alive) return;
    cluster = detail;
    missing.hidden = true;
    body.hidden = false;

    render(stateBadge, detail.state, () => {
      const b = badge(detail.state);
      b.id = 'cluster-state';
      return b;
    });
    // What the state means now; the engine's own words when it has some.
    const text = detail.state_message || STATE_TEXT[detail.state] || '';
    message.hidden = !text;
    if (message.dataset.text !== text) {
      message.dataset.text = text;
      const logs = operator ? unhealthyLogLinks(detail.state_message) : [];
      message.replaceChildren(text, ...(logs.length ? [' Read: ', ...logs.flatMap((l, i) => (i ? [', ', l] : [l])), '.'] : []));
    }
    message.dataset.tone = toneOf(detail.state);

    const attached = detail.nodes.filter((n) => n.state === 'attached').map((n) => n.name);
    for (const n of [...detachSelected]) if (!attached.includes(n)) detachSelected.delete(n);
    for (const n of [...attachSelected]) if (!pool.some((p) => p.name === n)) attachSelected.delete(n);
    updateDetachNote();

    // Redrawn each minute too: "now" moves.
    render(healthRegion, [stateChanges.items, detail.state, Math.floor(Date.now() / 60000)],
      () => healthBand(stateChanges.items, detail.state, detail.created_at));
    const { nodes, addons, ...settings } = detail;
    render(summary, settings, () => summaryView(settings));
    render(workloadsRegion, [health, healthError], () => workloadsView(name, health, healthError));
    render(addonsRegion, addons, () => addonsTable(addons || []));
    render(nodesRegion, [nodes, [...detachSelected]], () => nodesTable(nodes));
    if (operator) render(poolRegion, [pool, [...attachSelected]], () => poolList(pool));
    render(preflightRegion, preflight, () => preflightView(preflight));

    const nodeIds = new Set(nodes.map((n) => n.id));
    const merged = new Map();
    for (const e of clusterEvents.items) merged.set(e.id, e);
    for (const e of recent.items) {
      if ((e.object_kind === 'node' && nodeIds.has(e.object_id)) || (e.object_kind === 'cluster' && e.object_id === detail.id)) merged.set(e.id, e);
    }
    const evs = [...merged.values()].sort((a, b) => b.id - a.id).slice(0, 30);
    render(eventsRegion, evs, () => (evs.length
      ? table({ label: `Events of ${name}`, columns: EVENT_COLUMNS, rows: evs.map(eventRow), sk: 'events', className: 'events' })
      : empty('No events yet.')));
  }

  /** Reads the cluster's health when it has an API and the last reading is old. */
  async function readHealth(detail) {
    if (!['ready', 'degraded'].includes(detail.state)) {
      health = null;
      healthError = null;
      return;
    }
    if (Date.now() - healthAt < HEALTH_EVERY) return;
    healthAt = Date.now();
    try {
      health = await get(path('clusters', name, 'health'));
      healthError = null;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status === 404) throw err;
      healthError = err.message;
    }
  }

  function showMissing() {
    cluster = null;
    body.hidden = true;
    missing.hidden = false;
    stateBadge.replaceChildren();
    render(missing, 'missing', () => empty(`There is no cluster named ${name}. It may have been deleted. `,
      h('a', { href: '#/clusters' }, 'All clusters'), ' · ',
      h('a', { href: `#/events?kind=cluster&object=${encodeURIComponent(name)}` }, 'Its events'), '.'));
  }

  // ---- views -----------------------------------------------------------------------------

  function summaryView(c) {
    const roles = Object.entries(c.roles || {});
    return dl([
      ['Kubernetes', c.kubernetes_version],
      ['Pod CIDR', h('span', { class: 'mono' }, c.pod_cidr)],
      ['Service CIDR', h('span', { class: 'mono' }, c.service_cidr)],
      ['Masters', String(c.masters)],
      ['Pinned roles', roles.length ? roles.map(([n, r]) => `${n}: ${r}`).join(', ') : 'none'],
      ['Nodes', String(c.node_count)],
      ['Created', time(c.created_at)],
    ]);
  }

  function addonsTable(addons) {
    if (!addons.length) return empty('None yet: add-ons are applied once the cluster is installed.');
    return table({
      label: `Add-ons of ${name}`,
      columns: ['Add-on', 'Version', 'Health', 'Message', 'Checked'],
      sk: 'addons',
      rows: addons.map((a) => h('tr', { 'data-addon': a.name },
        h('th', { scope: 'row' }, a.name),
        h('td', { class: 'mono' }, a.version || '—'),
        h('td', {}, badge(a.health, { attr: 'health' })),
        h('td', { class: 'message' }, a.message || h('span', { class: 'muted' }, '—')),
        h('td', { class: 'nowrap' }, time(a.checked_at)))),
    });
  }

  function nodesTable(nodes) {
    if (!nodes.length) {
      return empty(operator ? 'No nodes yet. Attach nodes from the pool below; the controller then checks and installs them.' : 'No nodes yet.');
    }
    const columns = [
      operator ? { content: h('span', { class: 'visually-hidden' }, 'Select'), class: 'col-check' } : null,
      'Name', 'State', 'Role', 'Agent', 'Resources', 'Plan progress',
      operator ? { content: 'Actions', class: 'col-actions' } : null,
    ].filter(Boolean);
    const order = { master: 0, worker: 1 };
    const sorted = [...nodes].sort((a, b) => ((order[a.role] ?? 2) - (order[b.role] ?? 2)) || a.name.localeCompare(b.name));
    return table({
      label: `Nodes of ${name}`,
      columns,
      sk: 'nodes',
      rows: sorted.map((n) => {
        const canDetach = operator && n.state === 'attached';
        return h('tr', { 'data-node': n.name },
          operator ? h('td', { class: 'col-check' }, canDetach ? detachBox(n) : null) : null,
          h('th', { scope: 'row' }, nodeLink(n.name)),
          h('td', {}, badge(n.state)),
          h('td', {}, roleText(n.role)),
          h('td', {}, agentSummary(n)),
          h('td', { class: 'nowrap' }, resources(n.facts)),
          h('td', { class: 'col-plan' }, planCell(n)),
          operator ? h('td', { class: 'col-actions' }, canDetach
            ? button('Detach', (e) => detach(e.currentTarget, [n.name]), { kind: 'danger', small: true, label: `Detach ${n.name}`, fk: `detach:${n.name}` })
            : h('span', { class: 'muted small' }, 'leaving…')) : null);
      }),
    });
  }

  function detachBox(n) {
    const id = `detach-${n.name}`;
    return h('span', { class: 'check-only' },
      h('input', {
        type: 'checkbox', id, name: 'detach-node', value: n.name, 'data-fk': id, checked: detachSelected.has(n.name),
        onchange: (e) => {
          if (e.currentTarget.checked) detachSelected.add(n.name);
          else detachSelected.delete(n.name);
          updateDetachNote();
        },
      }),
      h('label', { for: id, class: 'visually-hidden' }, `Select ${n.name} to detach`));
  }

  function updateDetachNote() {
    detachNote.textContent = detachSelected.size ? `${plural(detachSelected.size, 'node')} selected.` : 'No node selected.';
  }

  function preflightView(report) {
    if (!report) {
      return empty('No preflight has run yet. It runs when nodes are attached, before anything is installed.');
    }
    const names = [...new Set([
      ...report.checks.map((c) => c.node_name),
      ...report.mesh.flatMap((p) => [p.from, p.to]),
    ])].sort();
    const parts = [
      h('p', { class: 'preflight-summary' },
        badge(report.passed ? 'passed' : 'failed', { attr: 'preflight' }),
        ' Ran ', time(report.started_at), ` and took ${(report.duration_ms / 1000).toFixed(1)} s, over ${plural(names.length, 'node')}.`),
    ];
    if (report.problems.length) {
      parts.push(h('h3', {}, 'Problems'), h('ul', { class: 'problems-list' }, report.problems.map((p) => h('li', {}, p))));
    }
    parts.push(h('h3', {}, 'Network matrix'), matrix(report, names), h('h3', {}, 'Local checks'), checksTable(report));
    return parts;
  }

  /** Rows probe columns; a cell lists the ports that failed, or says ok. */
  function matrix(report, names) {
    if (names.length < 2) return empty('A single node has no network to check.');
    const cells = new Map();
    for (const p of report.mesh) {
      const k = `${p.from}\u0000${p.to}`;
      if (!cells.has(k)) cells.set(k, []);
      cells.get(k).push(p);
    }
    const corner = h('span', {}, 'From ', h('span', { 'aria-hidden': 'true' }, '↓'), ' / to ', h('span', { 'aria-hidden': 'true' }, '→'));
    return h('div', {},
      h('p', { class: 'hint' }, 'Each row is the node that probed; each column the node it reached.'),
      table({
        label: 'Preflight network matrix',
        sk: 'matrix',
        className: 'matrix',
        columns: [corner, ...names.map((n) => ({ content: n }))],
        rows: names.map((from) => h('tr', {},
          h('th', { scope: 'row' }, from),
          names.map((to) => {
            if (from === to) return h('td', { class: 'cell-self' }, h('span', { 'aria-label': 'same node' }, '—'));
            const probes = cells.get(`${from}\u0000${to}`) || [];
            if (!probes.length) return h('td', { class: 'cell-none' }, h('span', { class: 'muted' }, 'not checked'));
            const failed = probes.filter((p) => !p.ok);
            if (!failed.length) {
              return h('td', { class: 'cell-ok', title: `${plural(probes.length, 'port')} reached` }, badge('ok', { attr: 'probe' }));
            }
            return h('td', { class: 'cell-bad' },
              badge('failed', { attr: 'probe', label: `${failed.length} failed` }),
              h('ul', { class: 'ports' }, failed.map((p) => h('li', {},
                h('span', { class: 'mono' }, `${p.port}/${p.protocol}`),
                p.error ? h('span', { class: 'muted small' }, ` ${p.error}`) : null))));
          })))
      }));
  }

  function checksTable(report) {
    if (!report.checks.length) return empty('No local checks were reported.');
    const rank = (c) => (c.ok ? 2 : c.severity === 'error' ? 0 : 1);
    const checks = [...report.checks].sort((a, b) => rank(a) - rank(b) || a.node_name.localeCompare(b.node_name) || a.name.localeCompare(b.name));
    return table({
      label: 'Preflight local checks',
      sk: 'checks',
      columns: ['Node', 'Check', 'Result', 'Severity', 'Detail'],
      rows: checks.map((c) => h('tr', {},
        h('th', { scope: 'row' }, c.node_name),
        h('td', {}, c.name),
        h('td', {}, badge(c.ok ? 'ok' : 'failed', { attr: 'check' })),
        // A severity is what a failure would mean: none for a check that passed.
        h('td', {}, c.ok ? h('span', { class: 'muted', 'aria-label': 'none: passed' }, '—') : badge(c.severity, { attr: 'severity' })),
        h('td', { class: 'message' }, c.detail))),
    });
  }

  // ---- operator actions ----------------------------------------------------------------

  function actionsBar() {
    const hoursId = 'kubeconfig-hours';
    const hours = h('input', { id: hoursId, type: 'number', min: '1', max: '8760', value: '24', inputmode: 'numeric', class: 'input-short' });
    const download = h('button', { type: 'submit', class: 'btn' }, 'Download kubeconfig');
    const form = h('form', { class: 'inline-form', novalidate: true },
      h('div', { class: 'field' }, h('label', { for: hoursId }, 'Token valid for (hours)'), hours),
      h('div', { class: 'field field-button' }, download));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      kubeconfig(download, Number(hours.value) || 24);
    });
    // Everyone may have a kubeconfig: the cluster's RBAC decides what it allows (viewers read).
    const s = section(operator ? 'Actions' : 'kubectl', { className: 'actions-section' });
    add(s,
      h('div', { class: 'toolbar toolbar-split' }, form,
        operator ? button('Delete cluster', (e) => deleteCluster(e.currentTarget), { kind: 'danger', id: 'delete-cluster' }) : null),
      h('p', { class: 'hint' }, 'A kubeconfig points kubectl at this cluster through the controller, with a new API token of yours; '
        + 'in the cluster you have the rights of your role.'),
      actionAlert, kubeconfigArea);
    return s;
  }

  function attachSection() {
    const alerts = alertSlot();
    const modeCount = h('input', { type: 'radio', name: 'attach-mode', id: 'attach-mode-count', value: 'count', checked: true });
    const modeChosen = h('input', { type: 'radio', name: 'attach-mode', id: 'attach-mode-chosen', value: 'chosen' });
    const count = h('input', { id: 'attach-count', name: 'count', type: 'number', min: '1', max: '1000', inputmode: 'numeric', class: 'input-short' });
    const selector = h('input', {
      id: 'attach-selector', name: 'selector', type: 'text', autocomplete: 'off', spellcheck: 'false',
      placeholder: 'topology.kubernetes.io/zone=a,!maintenance', 'aria-describedby': 'attach-selector-hint',
    });
    const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Attach');
    // Typing a number or ticking a node chooses the mode that goes with it.
    const toCount = () => { modeCount.checked = true; };
    count.addEventListener('input', toCount);
    selector.addEventListener('input', toCount);
    poolRegion.addEventListener('change', (e) => {
      const box = e.target;
      if (!(box instanceof HTMLInputElement) || box.name !== 'attach-node') return;
      if (box.checked) {
        attachSelected.add(box.value);
        modeChosen.checked = true;
      } else {
        attachSelected.delete(box.value);
      }
    });

    const form = h('form', { class: 'attach-form', novalidate: true },
      h('fieldset', {},
        h('legend', {}, 'Which nodes'),
        h('div', { class: 'mode' },
          h('div', { class: 'check' }, modeCount, h('label', { for: 'attach-mode-count' }, 'Nodes from the pool')),
          h('div', { class: 'mode-body field-row' },
            h('div', { class: 'field' }, h('label', { for: 'attach-count' }, 'Number of nodes'), count),
            h('div', { class: 'field field-grow' }, h('label', { for: 'attach-selector' }, 'Only nodes with these labels (optional)'), selector,
              h('p', { class: 'hint', id: 'attach-selector-hint' }, 'A label selector, e.g. ', code('zone=a,!maintenance'), '. The controller prefers spreading masters over zones.')))),
        h('div', { class: 'mode' },
          h('div', { class: 'check' }, modeChosen, h('label', { for: 'attach-mode-chosen' }, 'Chosen nodes')),
          h('div', { class: 'mode-body' }, poolRegion))),
      alerts,
      h('div', { class: 'actions' }, submit));

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      let request;
      if (modeChosen.checked) {
        const names = [...attachSelected];
        if (!names.length) {
          showError(alerts, new Error('Choose at least one node from the pool, or attach a number of nodes.'));
          return;
        }
        request = { nodes: names };
      } else {
        const n = Number.parseInt(count.value, 10);
        if (!Number.isInteger(n) || n < 1) {
          showError(alerts, new Error('Enter how many pool nodes to attach (at least 1).'));
          count.focus();
          return;
        }
        request = { count: n };
        if (selector.value.trim()) request.selector = selector.value.trim();
      }
      const moved = await runAction(submit, alerts, () => post(path('clusters', name, 'attach'), request), 'Could not attach');
      if (moved) {
        const names = moved.nodes.map((n) => n.name);
        announce(`Attached ${list(names)} to ${name}. The controller checks ${names.length === 1 ? 'it' : 'them'} (preflight), then installs Kubernetes.`);
        attachSelected.clear();
        count.value = '';
        await ctx.refresh();
      }
    });

    const s = section('Attach nodes');
    add(s, lead('Move authorized nodes from the pool into this cluster: all of them or none.'), form);
    return s;
  }

  function poolList(pool) {
    if (!pool.length) {
      return empty('The pool is empty. Authorize pending nodes on the ', h('a', { href: '#/nodes' }, 'Nodes'), ' page first.');
    }
    return h('ul', { class: 'pool-list' }, pool.map((n) => {
      const id = `attach-node-${n.name}`;
      return h('li', { class: 'check' },
        h('input', { type: 'checkbox', name: 'attach-node', value: n.name, id, 'data-fk': id, checked: attachSelected.has(n.name) }),
        h('label', { for: id }, h('span', { class: 'pool-name' }, n.name),
          h('span', { class: 'muted small' }, ` ${resources(n.facts)}${n.agent && !n.agent.online ? ' · agent offline' : ''}`),
          Object.keys(n.labels || {}).length ? h('span', { class: 'muted small' }, ` · ${Object.entries(n.labels).map(([k, v]) => (v ? `${k}=${v}` : k)).join(', ')}`) : null));
    }));
  }

  async function detach(btn, names) {
    if (!names.length) {
      showError(nodesAlert, new Error('Select one or more nodes to detach first.'));
      return;
    }
    const what = names.length === 1 ? names[0] : plural(names.length, 'node');
    const ok = await confirmDialog({
      title: `Detach ${what} from ${name}?`,
      message: `${names.length === 1 ? `${names[0]} is` : 'They are'} cordoned and drained, ${names.length === 1 ? 'its' : 'their'} Kubernetes components stopped and data wiped; then ${names.length === 1 ? 'it returns' : 'they return'} to the pool.`,
      details: names.length > 1 ? names : [],
    });
    if (!ok) return;
    const moved = await runAction(btn, nodesAlert, async () => {
      try {
        return await post(path('clusters', name, 'detach'), { nodes: names });
      } catch (err) {
        if (!(err instanceof ApiError) || err.code !== 'quorum_at_risk') throw err;
        const force = await confirmDialog({
          title: 'Detach anyway?',
          message: err.message,
          details: ['Detaching anyway can leave etcd, and with it the cluster\'s API, unavailable.'],
        });
        if (!force) return null;
        return post(path('clusters', name, 'detach'), { nodes: names, force: true });
      }
    }, `Could not detach ${what}`);
    if (moved) {
      for (const n of names) detachSelected.delete(n);
      announce(`Detaching ${list(names)} from ${name}: ${names.length === 1 ? 'it returns' : 'they return'} to the pool once wiped.`);
      await ctx.refresh();
    }
  }

  async function runPreflight(btn) {
    const report = await runAction(btn, preflightAlert, () => post(path('clusters', name, 'preflight')), 'Could not run preflight');
    if (report && ctx.alive) {
      preflight = report;
      render(preflightRegion, preflight, () => preflightView(preflight));
      announce(report.passed ? 'Preflight passed.' : `Preflight failed: ${plural(report.problems.length, 'problem')}.`);
    }
  }

  async function kubeconfig(btn, hours) {
    const result = await runAction(btn, actionAlert, () => post(path('clusters', name, 'kubeconfig'), { expires_in_hours: hours }), 'Could not create a kubeconfig');
    if (!result || !ctx.alive) return;
    if (kubeconfigUrl) URL.revokeObjectURL(kubeconfigUrl);
    kubeconfigUrl = URL.createObjectURL(new Blob([result.kubeconfig], { type: 'application/yaml' }));
    const file = `${name}.kubeconfig`;
    const link = h('a', { href: kubeconfigUrl, download: file, class: 'btn btn-primary' }, `Save ${file}`);
    const titleId = uid('kc');
    kubeconfigArea.replaceChildren(h('section', { class: 'panel panel-secret', 'aria-labelledby': titleId },
      h('h3', { id: titleId }, 'Kubeconfig ready'),
      h('p', { class: 'warning' }, `It contains a new API token of yours (${result.token.role}), valid until ${exact(result.token.expires_at)}. `
        + 'Keep the file private: it is not shown again. The token is listed with your tokens and can be revoked there.'),
      h('p', {}, 'Use it with ', code(`kubectl --kubeconfig ${file} get nodes`), '.'),
      h('div', { class: 'actions' }, link,
        button('Done', () => {
          kubeconfigArea.replaceChildren();
          URL.revokeObjectURL(kubeconfigUrl);
          kubeconfigUrl = null;
        }, { kind: 'quiet', label: 'Done: forget the kubeconfig' }))));
    link.click();
    announce(`Kubeconfig for ${name} created; the download starts.`);
  }

  async function deleteCluster(btn) {
    const count = cluster ? cluster.node_count : 0;
    const ok = await confirmDialog({
      title: `Delete cluster ${name}?`,
      message: count
        ? `${name} still has ${plural(count, 'node')}. Detaching them first drains and wipes them one by one; deleting now returns them to the pool at once, where they are wiped without draining.`
        : `The cluster ${name} is removed with its settings and preflight results. This cannot be undone.`,
      typeToConfirm: name,
      option: count ? `Return its ${plural(count, 'node')} to the pool (force)` : null,
    });
    if (!ok) return;
    const result = await runAction(btn, actionAlert,
      () => del(path('clusters', name), ok.option ? { force: true } : undefined), `Could not delete ${name}`);
    if (result) {
      const returned = result.returned_to_pool.map((n) => n.name);
      announce(`Deleted cluster ${name}.${returned.length ? ` ${list(returned)} returned to the pool.` : ''}`);
      ctx.navigate('#/clusters');
    }
  }

  return {
    refresh,
    destroy() {
      if (kubeconfigUrl) URL.revokeObjectURL(kubeconfigUrl);
    },
  };
}
