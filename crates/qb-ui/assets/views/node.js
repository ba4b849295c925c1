// Node detail `#/nodes/<name>`: facts, labels, agent, cluster and role, the host's load (last
// report and charts of its history), and the plan the agent last reported (steps and services).
// Operators authorize, deauthorize, delete, ping, label, attach to a cluster and detach, and read the services' logs
// (`#/nodes/<name>?log=etcd` opens one).

import { h, add, render, badge, time, exact, bytes, clusterLink, plural } from '../dom.js';
import { API, ApiError, get, post, del, path, listAll } from '../api.js';
import { section, dl, empty, table, alertSlot, runAction, announce, confirmDialog, button, showError } from '../ui.js';
import { labelChips, roleText, planProgress, planText } from './common.js';
import { latestFacts, loadCharts } from './charts.js';

/** The ranges the load charts offer. */
const RANGES = ['1h', '24h', '7d', '30d'];
/** The most of a log the page keeps, in characters. */
const LOG_KEPT = 200000;

export function mount(ctx) {
  const name = ctx.params[0];
  const operator = ctx.can('operator');

  const stateRegion = h('span', { class: 'heading-badge' });
  const actionAlert = alertSlot();
  const actionsRegion = h('div', { class: 'region toolbar' });
  const pingResult = h('p', { class: 'muted small', hidden: true });
  const summary = h('div', { class: 'region' });
  const labels = h('div', { class: 'region' });
  const labelAlert = alertSlot();
  const plan = h('div', { class: 'region' });
  const missing = h('div', { class: 'region', hidden: true });

  const labelsSection = section('Labels');
  add(labelsSection,
    h('p', { class: 'lead' }, 'Placement spreads masters over ', h('code', {}, 'topology.kubernetes.io/zone'), ' or ', h('code', {}, 'rack'), ' labels; attach requests can select nodes by label.'),
    labelAlert, labels, operator ? labelForm() : null);
  const planSection = section('Plan');
  add(planSection, plan);
  let range = RANGES[0];
  const latest = h('div', { class: 'region' });
  const charts = h('div', { class: 'region' });
  const rangeButtons = RANGES.map((r) => h('button', {
    type: 'button', class: 'btn btn-small', 'aria-pressed': String(r === range), 'data-range': r,
    onclick: async () => {
      range = r;
      for (const b of rangeButtons) b.setAttribute('aria-pressed', String(b.dataset.range === r));
      await refreshLoad();
    },
  }, r));
  const loadSection = section('Load');
  add(loadSection, latest,
    h('div', { class: 'toolbar', role: 'group', 'aria-label': 'History range' }, rangeButtons),
    charts);
  const logs = operator ? logsSection() : null;
  const body = h('div', {},
    operator ? h('div', { class: 'section' }, actionsRegion, actionAlert, pingResult) : null,
    summary, loadSection, labelsSection, planSection, logs && logs.el);

  add(ctx.root,
    h('nav', { class: 'breadcrumb', 'aria-label': 'Breadcrumb' },
      h('ol', {}, h('li', {}, h('a', { href: '#/nodes' }, 'Nodes')), h('li', {}, h('span', { 'aria-current': 'page' }, name)))),
    h('div', { class: 'page-head' }, ctx.heading(name), stateRegion),
    ctx.loadAlert,
    missing,
    body);

  let node = null;
  /** The tenant's clusters, offered to attach a node of the pool to. */
  let clusterNames = [];

  async function refresh() {
    let n;
    try {
      n = await get(path('nodes', name));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        if (!ctx.alive) return;
        node = null;
        body.hidden = true;
        missing.hidden = false;
        stateRegion.replaceChildren();
        render(missing, 'missing', () => empty(`There is no node named ${name}. It may have been deleted. `,
          h('a', { href: '#/nodes' }, 'All nodes'), '.'));
        return;
      }
      throw err;
    }
    if (!ctx.alive) return;
    node = n;
    body.hidden = false;
    missing.hidden = true;
    render(stateRegion, n.state, () => badge(n.state));
    if (operator && n.state === 'authorized') {
      const listed = await listAll(`${API}/clusters`);
      if (!ctx.alive) return;
      clusterNames = listed.map((c) => c.name);
    }
    if (operator) render(actionsRegion, [n.state, n.agent && n.agent.online, n.cluster, clusterNames], () => actions(n));
    render(summary, n, () => summaryCards(n));
    render(labels, n.labels, () => labelChips(n.labels, operator ? removeLabel : null));
    render(plan, [n.plan, n.state], () => planView(n));
    if (logs) logs.services(n);
    await refreshLoad();
  }

  // ---- logs (operators: they may say more than a viewer should read) -----------------

  function logsSection() {
    const select = h('select', { id: 'log-service' });
    const from = h('select', { id: 'log-from' },
      h('option', { value: '' }, 'its end'),
      h('option', { value: '600' }, 'the last 10 minutes'),
      h('option', { value: '3600' }, 'the last hour'),
      h('option', { value: '86400' }, 'the last day'));
    const follow = h('input', { id: 'log-follow', type: 'checkbox' });
    const alerts = alertSlot();
    const out = h('pre', { class: 'log', tabindex: '0', 'aria-label': 'Log', 'aria-live': 'off', hidden: true });
    const show = button('Show log', (e) => open(e.currentTarget), { fk: 'show-log' });
    const el = section('Logs');
    add(el,
      h('p', { class: 'lead' }, 'A service\'s log (or the agent\'s own), read from the host by its agent. The same from a shell: ', h('code', {}, `qb node logs ${name} SERVICE [--since 1h] [-f]`), '.'),
      h('div', { class: 'field-row' },
        h('div', { class: 'field' }, h('label', { for: 'log-service' }, 'Service'), select),
        h('div', { class: 'field' }, h('label', { for: 'log-from' }, 'Show'), from),
        h('div', { class: 'field field-button' }, h('span', { class: 'button-row' }, show,
          h('span', { class: 'check' }, follow, h('label', { for: 'log-follow' }, 'Follow'))))),
      alerts, out);
    let offset = null;
    let shown = null;
    let busy = false;
    const wanted = ctx.query.get('log');
    follow.addEventListener('change', () => { if (follow.checked && shown) more(); });
    async function read(service, at, since) {
      const query = at !== null ? { offset: at } : since ? { since_seconds: since } : { max_bytes: 16384 };
      return get(path('nodes', name, 'logs', service), query);
    }
    /** The log's end, or all of it since a while ago (up to LOG_KEPT characters). */
    async function readFirst(service, since) {
      let piece = await read(service, null, since);
      let text = piece.text;
      // A full piece means more is waiting.
      while (since && piece.end - piece.start >= 12288 && text.length < LOG_KEPT) {
        piece = await read(service, piece.end, null);
        text += piece.text;
      }
      return { ...piece, text };
    }
    async function open(btn) {
      const service = select.value;
      if (!service) return;
      const since = from.value;
      const piece = await runAction(btn, alerts, () => readFirst(service, since), `Could not read the log of ${service}`);
      if (!piece || !ctx.alive) return;
      shown = service;
      offset = piece.end;
      out.hidden = false;
      out.setAttribute('aria-label', `Log of ${service} on ${name}`);
      out.textContent = piece.text.slice(-LOG_KEPT) || (since ? '(nothing logged in that time)' : '(nothing logged yet)');
      out.scrollTop = out.scrollHeight;
      announce(since ? `Showing the log of ${service} since ${from.selectedOptions[0].textContent.replace('the ', '')}.` : `Showing the end of the log of ${service}.`);
    }
    async function more() {
      if (busy || !shown || !follow.checked || !ctx.alive) return;
      busy = true;
      try {
        const piece = await read(shown, offset, null);
        if (!ctx.alive) return;
        const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
        if (piece.rotated) out.textContent += '\n(the log was rotated)\n';
        offset = piece.end;
        if (piece.text) {
          out.textContent = (out.textContent + piece.text).slice(-LOG_KEPT);
          if (atEnd) out.scrollTop = out.scrollHeight;
        }
      } catch (err) {
        showError(alerts, err, `Could not follow the log of ${shown}`);
        follow.checked = false;
      } finally {
        busy = false;
      }
    }
    const timer = setInterval(more, 2000);
    let opened = false;
    return {
      el,
      stop: () => clearInterval(timer),
      /** Offers the services the node's plan runs and the agent's own log, keeping the choice. */
      services(n) {
        const names = [...(n.plan && n.plan.report ? n.plan.report.services : []).map((s) => s.name), 'qb-agent'];
        render(select, names, () => names.map((s) => h('option', { value: s, selected: s === (shown || wanted) }, s)));
        // `#/nodes/NAME?log=etcd` opens that log at once.
        if (!opened && wanted && names.includes(wanted)) {
          opened = true;
          select.value = wanted;
          open(show);
        }
      },
    };
  }

  async function refreshLoad() {
    const m = await get(path('nodes', name, 'metrics'), { range });
    if (!ctx.alive) return;
    render(latest, m.latest, () => latestFacts(m.latest));
    render(charts, [m.range, m.points], () => loadCharts(m));
  }

  // ---- rendering -----------------------------------------------------------------------

  function actions(n) {
    const items = [];
    if (n.state === 'pending') items.push(button('Authorize', (e) => authorize(e.currentTarget), { kind: 'primary', fk: 'authorize' }));
    if (n.state === 'pending' || n.state === 'authorized') items.push(button('Deauthorize', (e) => deauthorize(e.currentTarget), { kind: 'danger', fk: 'deauthorize' }));
    if (n.state === 'pending' || n.state === 'deauthorized') items.push(button('Delete', (e) => remove(e.currentTarget), { kind: 'danger', fk: 'delete' }));
    if (n.agent && n.agent.online) items.push(button('Ping', (e) => ping(e.currentTarget), { fk: 'ping', label: `Ping the agent of ${name}` }));
    if (n.state === 'attached' && n.cluster) {
      items.push(button('Detach', (e) => detach(e.currentTarget, n.cluster.name), { kind: 'danger', fk: 'detach', label: `Detach ${name} from cluster ${n.cluster.name}` }));
    }
    if (n.state === 'authorized' && clusterNames.length) items.push(attachForm());
    return items;
  }

  /** Attach to a cluster: a choice of the tenant's clusters and a button. */
  function attachForm() {
    const select = h('select', { id: 'attach-to', 'data-fk': 'attach-to' }, clusterNames.map((c) => h('option', { value: c }, c)));
    const submit = h('button', { type: 'submit', class: 'btn btn-primary', 'data-fk': 'attach' }, 'Attach');
    const form = h('form', { class: 'inline-form', novalidate: true },
      h('label', { for: 'attach-to' }, 'Attach to cluster '), select, ' ', submit);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const cluster = select.value;
      const done = await runAction(submit, actionAlert, () => post(path('clusters', cluster, 'attach'), { nodes: [name] }), `Could not attach ${name} to ${cluster}`);
      if (done) {
        announce(`Attaching ${name} to cluster ${cluster}.`);
        await ctx.refresh();
      }
    });
    return form;
  }

  async function detach(btn, cluster) {
    const ok = await confirmDialog({
      title: `Detach ${name} from ${cluster}?`,
      message: `${name} is cordoned and drained, its Kubernetes components stopped and its data wiped; then it returns to the pool.`,
    });
    if (!ok) return;
    const moved = await runAction(btn, actionAlert, async () => {
      try {
        return await post(path('clusters', cluster, 'detach'), { nodes: [name] });
      } catch (err) {
        if (!(err instanceof ApiError) || err.code !== 'quorum_at_risk') throw err;
        const force = await confirmDialog({
          title: 'Detach anyway?',
          message: err.message,
          details: ['Detaching anyway can leave etcd, and with it the cluster\'s API, unavailable.'],
        });
        if (!force) return null;
        return post(path('clusters', cluster, 'detach'), { nodes: [name], force: true });
      }
    }, `Could not detach ${name}`);
    if (moved) {
      announce(`Detaching ${name} from ${cluster}: it returns to the pool once wiped.`);
      await ctx.refresh();
    }
  }

  function summaryCards(n) {
    const f = n.facts || {};
    const a = n.agent;
    return h('div', { class: 'cards-grid' },
      card('Status', dl([
        ['State', badge(n.state)],
        ['Cluster', n.cluster ? clusterLink(n.cluster.name) : h('span', { class: 'muted' }, 'none')],
        ['Role', n.cluster ? roleText(n.role) : null],
        ['Registered', time(n.created_at)],
        ['Changed', time(n.updated_at)],
      ])),
      card('Agent', a ? dl([
        ['Connection', badge(a.online ? 'online' : 'offline', { attr: 'agent' })],
        ['Version', a.version || '—'],
        ['Last seen', time(a.last_seen_at, 'never')],
        ['Exact time', a.last_seen_at ? exact(a.last_seen_at) : null],
      ]) : empty('No agent has registered for this node.')),
      card('Host', dl([
        ['Host name', f.hostname || '—'],
        ['Operating system', f.os || '—'],
        ['Kernel', f.kernel || '—'],
        ['Architecture', f.arch || '—'],
        ['CPUs', f.cpus ? String(f.cpus) : '—'],
        ['Memory', bytes(f.memory_bytes)],
        ['Addresses', (f.addresses || []).length ? h('span', { class: 'stack' }, f.addresses.map((x) => h('span', { class: 'mono' }, x))) : '—'],
      ])));
  }

  function planView(n) {
    if (!n.plan) {
      return empty(n.state === 'attached'
        ? 'No plan yet: the cluster engine publishes one after preflight and placement.'
        : 'No plan: a node gets one when it is attached to a cluster.');
    }
    const p = planProgress(n);
    const parts = [dl([
      ['Published generation', String(n.plan.generation)],
      ['Reported generation', p ? String(p.generation) : h('span', { class: 'muted' }, 'no report yet')],
      ['State', p ? badge(p.state, { attr: 'plan' }) : null],
      ['Progress', p ? h('span', { class: 'stack' },
        h('progress', { max: String(p.total || 1), value: String(p.done), 'aria-label': `${p.done} of ${p.total} steps done` }),
        h('span', { class: 'small' }, `${p.done} of ${plural(p.total, 'step')} done`)) : null],
      ['Summary', planText(n)],
    ])];
    const report = n.plan.report;
    if (report && report.steps.length) {
      parts.push(h('h3', {}, 'Steps'), table({
        label: 'Plan steps',
        columns: ['Step', 'State', 'Message'],
        sk: 'steps',
        rows: report.steps.map((s) => h('tr', {},
          h('th', { scope: 'row' }, h('code', {}, s.name)),
          h('td', {}, badge(s.state, { attr: 'step' })),
          h('td', { class: 'message' }, s.message || ''))),
      }));
    }
    if (report && report.services.length) {
      parts.push(h('h3', {}, 'Services'), table({
        label: 'Services',
        columns: ['Service', 'Health', 'Restarts', 'PID', 'Last exit'],
        sk: 'services',
        rows: report.services.map((s) => h('tr', {},
          h('th', { scope: 'row' }, h('code', {}, s.name)),
          h('td', {}, badge(!s.running ? 'not running' : s.healthy ? 'healthy' : 'unhealthy', { attr: 'service' })),
          h('td', {}, String(s.restarts)),
          h('td', {}, s.pid ? String(s.pid) : '—'),
          h('td', {}, s.last_exit || '—'))),
      }));
    }
    return parts;
  }

  function card(title, content) {
    return h('section', { class: 'card-box' }, h('h2', { class: 'card-box-title' }, title), content);
  }

  function labelForm() {
    const key = h('input', { id: 'label-key', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'topology.kubernetes.io/zone' });
    const value = h('input', { id: 'label-value', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'zone-a' });
    const submit = h('button', { type: 'submit', class: 'btn' }, 'Set label');
    const form = h('form', { class: 'inline-form', novalidate: true },
      h('div', { class: 'field' }, h('label', { for: 'label-key' }, 'Key'), key),
      h('div', { class: 'field' }, h('label', { for: 'label-value' }, 'Value'), value),
      h('div', { class: 'field field-button' }, submit));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const k = key.value.trim();
      if (!k) {
        showError(labelAlert, new Error('Give the label a key.'));
        key.focus();
        return;
      }
      const done = await runAction(submit, labelAlert, () => post(path('nodes', name, 'labels'), { set: { [k]: value.value.trim() } }), 'Could not set the label');
      if (done) {
        announce(`Set label ${k} on ${name}.`);
        key.value = '';
        value.value = '';
        await ctx.refresh();
      }
    });
    return form;
  }

  // ---- actions -------------------------------------------------------------------------

  async function removeLabel(k, btn) {
    const done = await runAction(btn, labelAlert, () => post(path('nodes', name, 'labels'), { remove: [k] }), `Could not remove label ${k}`);
    if (done) {
      announce(`Removed label ${k} from ${name}.`);
      await ctx.refresh();
    }
  }

  async function authorize(btn) {
    const done = await runAction(btn, actionAlert, () => post(path('nodes', name, 'authorize')), `Could not authorize ${name}`);
    if (done) {
      announce(`Authorized ${name}: it is in the pool.`);
      await ctx.refresh();
    }
  }

  async function deauthorize(btn) {
    const inCluster = node && node.cluster;
    const ok = await confirmDialog({
      title: `Deauthorize ${name}?`,
      message: inCluster
        ? `${name} leaves cluster ${node.cluster.name} at once, without being drained or wiped, and its identity is revoked: its agent is disconnected and its certificate refused. Detaching it from the cluster first is the gentle way.`
        : `${name}'s identity is revoked at once: its agent is disconnected and its certificate refused. To come back, the host must register again and be authorized.`,
    });
    if (!ok) return;
    const done = await runAction(btn, actionAlert, () => post(path('nodes', name, 'deauthorize')), `Could not deauthorize ${name}`);
    if (done) {
      announce(`Deauthorized ${name}.`);
      await ctx.refresh();
    }
  }

  async function remove(btn) {
    const ok = await confirmDialog({
      title: `Delete ${name}?`,
      message: `The controller forgets ${name}. If its agent registers again, it comes back as a new pending node.`,
    });
    if (!ok) return;
    const done = await runAction(btn, actionAlert, () => del(path('nodes', name)).then(() => true), `Could not delete ${name}`);
    if (done) {
      announce(`Deleted ${name}.`);
      ctx.navigate('#/nodes');
    }
  }

  async function ping(btn) {
    const result = await runAction(btn, actionAlert, () => post(path('nodes', name, 'ping')), `Could not ping ${name}`);
    if (result) {
      const text = `The agent of ${name} answered in ${result.round_trip_ms.toFixed(1)} ms.`;
      pingResult.textContent = text;
      pingResult.hidden = false;
      announce(text);
    }
  }

  // The load changes with every heartbeat, which the live stream does not announce: read it
  // again every half minute while the page is open.
  const loadTimer = setInterval(() => refreshLoad().catch(() => {}), 30000);

  return {
    refresh,
    destroy: () => {
      clearInterval(loadTimer);
      if (logs) logs.stop();
    },
  };
}
