// Alerts `#/alerts`: what fires now (with a Silence button for operators), the silences in
// force, the tenant's own threshold rules, what resolved lately, where alerts are sent (notification channels: add, test,
// remove) and the log of what was sent.

import { h, add, render, badge, time } from '../dom.js';
import { API, get, post, del, path } from '../api.js';
import { section, lead, empty, table, alertSlot, runAction, announce, confirmDialog, button, secretPanel, code } from '../ui.js';
import { alertObjectLink } from './common.js';

/** How long the Silence button silences. */
const SILENCE_MINUTES = 120;

export function mount(ctx) {
  const operator = ctx.can('operator');
  const firingRegion = h('div', { class: 'region' });
  const silencesRegion = h('div', { class: 'region' });
  const resolvedRegion = h('div', { class: 'region' });
  const channelsRegion = h('div', { class: 'region' });
  const deliveriesRegion = h('div', { class: 'region' });
  const firingAlert = alertSlot();
  const channelsAlert = alertSlot();

  const firing = section('Firing');
  add(firing, firingAlert, firingRegion);
  const silences = section('Silences');
  add(silences,
    lead('A silenced alert still fires and resolves, marked silenced, and notifies no one. ',
      'Silence by rule or object from a shell with ', code('qb alert silence'), '.'),
    silencesRegion);
  const rulesRegion = h('div', { class: 'region' });
  const rulesAlert = alertSlot();
  const rules = section('Your rules');
  add(rules,
    lead('Beside the built-in rules, an alert for each host whose figure stays above a threshold. Add one from a shell: ',
      code('qb alert add-rule hot --metric cpu --above 90 --for 10'), '.'),
    rulesAlert, rulesRegion);
  const resolved = section('Resolved lately');
  add(resolved, resolvedRegion);
  const channels = section('Notification channels');
  add(channels,
    lead('Each alert that fires or resolves is sent once to every channel that wants its severity; what is due for a channel at once goes in one message.'),
    channelsAlert, channelsRegion,
    operator ? channelForm() : null);
  const deliveries = section('Deliveries');
  add(deliveries, lead('What was sent, or is to be sent, to each channel, newest first.'), deliveriesRegion);

  add(ctx.root,
    ctx.heading('Alerts'),
    lead('What qb watches for: hosts offline, disks nearly full, clusters unhealthy, pods crash-looping or stuck Pending.'),
    ctx.loadAlert,
    firing, silences, rules, resolved, channels, deliveries);

  async function refresh() {
    const [all, active, chans, sent, own] = await Promise.all([
      get(`${API}/alerts`, { state: 'all', limit: 200 }),
      get(`${API}/silences`),
      get(`${API}/notification-channels`),
      get(`${API}/notification-deliveries`, { limit: 50 }),
      get(`${API}/alert-rules`),
    ]);
    if (!ctx.alive) return;
    const now = all.filter((a) => a.state === 'firing');
    const over = all.filter((a) => a.state === 'resolved').slice(0, 50);
    render(firingRegion, [now, operator], () => firingTable(now));
    render(silencesRegion, [active, operator], () => silencesTable(active));
    render(resolvedRegion, [over], () => resolvedTable(over));
    render(rulesRegion, [own, operator], () => rulesTable(own));
    render(channelsRegion, [chans, operator], () => channelsTable(chans));
    render(deliveriesRegion, [sent], () => deliveriesTable(sent));
  }

  function firingTable(alerts) {
    if (!alerts.length) return empty('Nothing is firing.');
    return table({
      label: 'Firing alerts',
      sk: 'firing',
      columns: ['Object', 'Severity', 'Rule', 'What is wrong', 'Since', { content: 'Actions', class: 'col-actions' }],
      rows: alerts.map((a) => h('tr', { 'data-alert': a.id },
        h('th', { scope: 'row' }, alertObjectLink(a)),
        h('td', {}, badge(a.severity, { attr: 'alert' }), a.silenced ? h('span', { class: 'muted small block' }, 'silenced') : null),
        h('td', { class: 'mono' }, a.rule),
        h('td', {}, a.summary),
        h('td', { class: 'nowrap' }, time(a.fired_at)),
        h('td', { class: 'col-actions' }, operator && !a.silenced
          ? button('Silence 2 h', (e) => silence(e.currentTarget, a), { small: true, label: `Silence ${a.rule} on ${a.object_name} for 2 hours`, fk: `silence:${a.id}` })
          : null))),
    });
  }

  async function silence(btn, a) {
    const done = await runAction(btn, firingAlert, () => post(`${API}/silences`, {
      rule: a.rule,
      object_name: a.object_name,
      duration_minutes: SILENCE_MINUTES,
      comment: `silenced from the web UI by ${ctx.session.user}`,
    }), 'Could not silence the alert');
    if (done) {
      announce(`Silenced ${a.rule} on ${a.object_name} for 2 hours. Alerts that fire already stay as they are.`);
      await ctx.refresh();
    }
  }

  function silencesTable(list) {
    if (!list.length) return empty('No silences.');
    return table({
      label: 'Silences',
      sk: 'silences',
      columns: ['Rule', 'Object', 'Until', 'By', 'Why', { content: 'Actions', class: 'col-actions' }],
      rows: list.map((s) => h('tr', { 'data-silence': s.id },
        h('th', { scope: 'row', class: 'mono' }, s.rule || 'any rule'),
        h('td', {}, s.object_name || 'any object'),
        h('td', { class: 'nowrap' }, time(s.ends_at)),
        h('td', {}, s.created_by),
        h('td', {}, s.comment),
        h('td', { class: 'col-actions' }, operator
          ? button('End', (e) => endSilence(e.currentTarget, s), { small: true, label: `End the silence of ${s.rule || 'every rule'} on ${s.object_name || 'every object'}`, fk: `unsilence:${s.id}` })
          : null))),
    });
  }

  async function endSilence(btn, s) {
    const done = await runAction(btn, firingAlert, () => del(path('silences', s.id)), 'Could not end the silence');
    if (done) {
      announce('Silence ended.');
      await ctx.refresh();
    }
  }

  function rulesTable(list) {
    if (!list.length) return empty('No rules of your own.');
    return table({
      label: 'Your alert rules',
      sk: 'rules',
      columns: ['Name', 'Alerts when', 'Severity', 'By', { content: 'Actions', class: 'col-actions' }],
      rows: list.map((r) => h('tr', { 'data-rule': r.name },
        h('th', { scope: 'row' }, r.name),
        h('td', {}, `${r.metric} above ${r.above}${r.metric === 'load' ? '' : ' %'} for ${r.for_minutes} minutes`),
        h('td', {}, r.severity),
        h('td', {}, r.created_by),
        h('td', { class: 'col-actions' }, operator
          ? button('Remove', (e) => removeRule(e.currentTarget, r), { kind: 'danger', small: true, label: `Remove rule ${r.name}`, fk: `remove-rule:${r.name}` })
          : null))),
    });
  }

  async function removeRule(btn, r) {
    const ok = await confirmDialog({
      title: `Remove rule ${r.name}?`,
      message: 'Its firing alerts resolve, and it raises no more.',
    });
    if (!ok) return;
    const done = await runAction(btn, rulesAlert, () => del(path('alert-rules', r.name)), 'Could not remove the rule');
    if (done !== undefined) {
      announce(`Rule ${r.name} removed.`);
      await ctx.refresh();
    }
  }

  function resolvedTable(list) {
    if (!list.length) return empty('Nothing resolved lately.');
    return table({
      label: 'Resolved alerts',
      sk: 'resolved',
      columns: ['Object', 'Severity', 'Rule', 'What was wrong', 'Fired', 'Resolved'],
      rows: list.map((a) => h('tr', { 'data-alert': a.id },
        h('th', { scope: 'row' }, alertObjectLink(a)),
        h('td', {}, a.severity),
        h('td', { class: 'mono' }, a.rule),
        h('td', {}, a.summary),
        h('td', { class: 'nowrap' }, time(a.fired_at)),
        h('td', { class: 'nowrap' }, time(a.resolved_at)))),
    });
  }

  function channelsTable(list) {
    if (!list.length) return empty('No channels: alerts are only shown here. ', operator ? 'Add a webhook or e-mail addresses below.' : 'An operator can add one.');
    return table({
      label: 'Notification channels',
      sk: 'channels',
      columns: ['Name', 'Kind', 'Sends', 'To', { content: 'Actions', class: 'col-actions' }],
      rows: list.map((c) => h('tr', { 'data-channel': c.name },
        h('th', { scope: 'row' }, c.name),
        h('td', {}, c.kind === 'email' ? 'e-mail' : 'webhook'),
        h('td', {}, c.min_severity === 'critical' ? 'critical alerts' : 'every alert'),
        h('td', { class: 'mono break' }, c.target),
        h('td', { class: 'col-actions' }, operator ? h('span', { class: 'button-row' },
          button('Send a test', (e) => testChannel(e.currentTarget, c), { small: true, label: `Send a test alert to ${c.name}`, fk: `test:${c.name}` }),
          button('Remove', (e) => removeChannel(e.currentTarget, c), { kind: 'danger', small: true, label: `Remove channel ${c.name}`, fk: `remove:${c.name}` })) : null))),
    });
  }

  async function testChannel(btn, c) {
    const done = await runAction(btn, channelsAlert, () => post(`${API}/notification-channels/${encodeURIComponent(c.name)}/test`), `The test to ${c.name} failed`);
    if (done !== undefined) announce(`A test alert reached ${c.name}.`);
  }

  async function removeChannel(btn, c) {
    const ok = await confirmDialog({
      title: `Remove channel ${c.name}?`,
      message: `Alerts are no longer sent to ${c.target}. What it had not sent yet is dropped, and its delivery log goes with it.`,
    });
    if (!ok) return;
    const done = await runAction(btn, channelsAlert, () => del(path('notification-channels', c.name)), 'Could not remove the channel');
    if (done !== undefined) {
      announce(`Channel ${c.name} removed.`);
      await ctx.refresh();
    }
  }

  function channelForm() {
    const created = h('div', {});
    const alerts = alertSlot();
    const name = h('input', { id: 'channel-name', type: 'text', maxlength: '63', autocomplete: 'off', spellcheck: 'false', placeholder: 'oncall' });
    const kind = h('select', { id: 'channel-kind' }, h('option', { value: 'webhook' }, 'Webhook'), h('option', { value: 'email' }, 'E-mail'));
    const target = h('input', { id: 'channel-target', type: 'text', maxlength: '2048', autocomplete: 'off', spellcheck: 'false', placeholder: 'https://hooks.example.com/qb' });
    const targetLabel = h('label', { for: 'channel-target' }, 'URL');
    kind.addEventListener('change', () => {
      const email = kind.value === 'email';
      targetLabel.textContent = email ? 'Addresses (comma-separated, at most 10)' : 'URL';
      target.placeholder = email ? 'ops@example.com, oncall@example.com' : 'https://hooks.example.com/qb';
    });
    const severity = h('select', { id: 'channel-severity' }, h('option', { value: 'warning' }, 'Every alert'), h('option', { value: 'critical' }, 'Critical alerts only'));
    const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Add channel');
    const form = h('form', { class: 'create-form', novalidate: true },
      h('div', { class: 'field-row' },
        h('div', { class: 'field' }, h('label', { for: 'channel-name' }, 'Name'), name),
        h('div', { class: 'field' }, h('label', { for: 'channel-kind' }, 'Kind'), kind),
        h('div', { class: 'field' }, h('label', { for: 'channel-severity' }, 'Send'), severity)),
      h('div', { class: 'field' }, targetLabel, target),
      alerts,
      h('div', { class: 'actions' }, submit));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const request = { name: name.value.trim(), kind: kind.value, target: target.value.trim(), min_severity: severity.value };
      const result = await runAction(submit, alerts, () => post(`${API}/notification-channels`, request), 'Could not add the channel');
      if (!result) return;
      name.value = '';
      target.value = '';
      if (result.secret) {
        created.replaceChildren(secretPanel({
          title: `Signing secret of ${result.channel.name}`,
          secret: result.secret,
          fieldLabel: 'Signing secret',
          note: 'Copy it now: it is not shown again. Each POST carries X-Qb-Timestamp and X-Qb-Signature: sha256= and the hex HMAC-SHA256, with this secret, of the timestamp, a dot and the body.',
        }));
        created.querySelector('input').focus();
        announce(`Added channel ${result.channel.name}. Copy its signing secret now: it is not shown again.`);
      } else {
        created.replaceChildren();
        announce(`Added channel ${result.channel.name}.`);
      }
      await ctx.refresh();
    });
    return [h('h3', {}, 'Add a channel'), form, created];
  }

  function deliveriesTable(list) {
    if (!list.length) return empty('Nothing sent yet.');
    return table({
      label: 'Deliveries',
      sk: 'deliveries',
      columns: ['When', 'Channel', 'Change', 'Status', 'Attempts', 'Alert', 'Last error'],
      rows: list.map((d) => h('tr', { 'data-delivery': d.id },
        h('td', { class: 'nowrap' }, time(d.created_at)),
        h('th', { scope: 'row' }, d.channel),
        h('td', {}, d.transition === 'firing' ? 'fired' : 'resolved'),
        h('td', {}, badge(d.status, { attr: 'status' }),
          d.status === 'pending' && d.attempts > 0 ? h('span', { class: 'muted small block' }, 'retry ', time(d.next_attempt_at)) : null),
        h('td', {}, String(d.attempts)),
        h('td', {}, d.summary),
        h('td', { class: 'break' }, d.last_error || ''))),
    });
  }

  return { refresh };
}
