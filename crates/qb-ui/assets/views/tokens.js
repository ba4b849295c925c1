// Tokens & downloads `#/tokens`: agent packages and bootstrap tokens (operators), API tokens
// (admins). New secrets are shown once, with a Copy button.

import { h, add, render, badge, time, plural } from '../dom.js';
import { API, get, post, del, path, listAll, url, fetchFile } from '../api.js';
import { section, lead, empty, table, alertSlot, runAction, announce, confirmDialog, button, secretPanel, code } from '../ui.js';

const FORMATS = [
  { format: 'deb', text: 'Debian package (.deb)', hint: 'Debian, Ubuntu: sudo dpkg -i FILE' },
  { format: 'rpm', text: 'RPM package (.rpm)', hint: 'RHEL, Fedora, SUSE: sudo rpm -i FILE' },
  { format: 'tar.gz', text: 'Tarball (.tar.gz)', hint: 'any Linux with systemd: unpack and run install.sh' },
];

/** `active`, `revoked`, `expired` or (bootstrap tokens) `used up`. */
function status(t) {
  if (t.revoked_at) return 'revoked';
  if (Date.parse(t.expires_at) <= Date.now()) return 'expired';
  if (t.max_uses !== undefined && t.uses >= t.max_uses) return 'used up';
  return 'active';
}

const newestFirst = (a, b) => Date.parse(b.created_at) - Date.parse(a.created_at);

export function mount(ctx) {
  const operator = ctx.can('operator');
  const admin = ctx.can('admin');

  const bootstrapRegion = h('div', { class: 'region' });
  const bootstrapAlert = alertSlot();
  const tokenRegion = h('div', { class: 'region' });
  const tokenAlert = alertSlot();
  const showInactiveBootstrap = h('input', { type: 'checkbox', id: 'show-inactive-bootstrap', onchange: () => ctx.refresh() });
  const showInactiveTokens = h('input', { type: 'checkbox', id: 'show-inactive-tokens', onchange: () => ctx.refresh() });
  /** The id of the token behind this browser session, to mark it and warn before revoking it. */
  let sessionTokenId = null;
  /** The tenant's users, offered in the API token form. */
  const userNames = h('datalist', { id: 'token-user-names' });

  add(ctx.root,
    ctx.heading('Tokens & downloads'),
    ctx.loadAlert,
    operator ? null : h('p', { class: 'notice' },
      `You are a viewer: you can see everything in tenant ${ctx.session.tenant}, but you cannot create tokens or download agent packages. `
      + 'Operators can download packages and manage bootstrap tokens; admins also manage API tokens.'),
    operator ? packagesSection() : null,
    operator ? bootstrapSection() : null,
    admin ? tokensSection() : null,
    operator && !admin ? h('p', { class: 'notice' }, 'API tokens are managed by admins. Ask one for a token, or use ', code('qb token create'), ' if you are one.') : null);

  async function refresh() {
    const [bootstrap, tokens, whoami, users] = await Promise.all([
      operator ? listAll(`${API}/bootstrap-tokens`) : Promise.resolve(null),
      admin ? listAll(`${API}/tokens`) : Promise.resolve(null),
      admin && sessionTokenId === null ? get(`${API}/whoami`) : Promise.resolve(null),
      admin ? get(`${API}/users`) : Promise.resolve(null),
    ]);
    if (!ctx.alive) return;
    if (whoami) sessionTokenId = whoami.token_id;
    if (users) {
      const names = users.map((u) => [u.name, u.role]);
      render(userNames, names, () => names.map(([n, r]) => h('option', { value: n }, `${n} (${r})`)));
    }
    if (bootstrap) {
      const shown = bootstrap.filter((t) => showInactiveBootstrap.checked || status(t) === 'active').sort(newestFirst);
      const hidden = bootstrap.length - shown.length;
      render(bootstrapRegion, [shown, hidden], () => bootstrapTable(shown, hidden));
    }
    if (tokens) {
      const shown = tokens.filter((t) => showInactiveTokens.checked || status(t) === 'active').sort(newestFirst);
      const hidden = tokens.length - shown.length;
      render(tokenRegion, [shown, hidden, sessionTokenId], () => tokenTable(shown, hidden));
    }
  }

  // ---- agent packages ------------------------------------------------------------------

  function packagesSection() {
    const alerts = alertSlot();
    const uses = h('input', { id: 'package-uses', type: 'number', min: '1', max: '10000', value: '1', inputmode: 'numeric', class: 'input-short' });
    const hours = h('input', { id: 'package-hours', type: 'number', min: '1', max: '720', value: '24', inputmode: 'numeric', class: 'input-short' });
    const query = () => ({ max_uses: uses.value.trim(), expires_in_hours: hours.value.trim() });
    const links = FORMATS.map((f) => {
      const a = h('a', { href: url(`${API}/agent-packages/${f.format}`, query()), download: '', class: 'btn', 'data-format': f.format }, f.text);
      // A real link (it works without this script), but fetched here so that an error shows
      // on the page instead of as a failed download.
      a.addEventListener('click', (e) => {
        if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
        e.preventDefault();
        download(a, f.format, alerts);
      });
      return h('li', {}, a, h('span', { class: 'muted small' }, ` ${f.hint}`));
    });
    const update = () => {
      FORMATS.forEach((f, i) => links[i].querySelector('a').setAttribute('href', url(`${API}/agent-packages/${f.format}`, query())));
    };
    uses.addEventListener('input', update);
    hours.addEventListener('input', update);
    const s = section('Agent packages');
    add(s,
      lead(`A package installs qb-agent preconfigured for tenant ${ctx.session.tenant}: this controller's agent address, the pin of its certificate authority and a new bootstrap token. `
        + 'Install it on each host; the host then appears under Nodes as pending.'),
      h('div', { class: 'field-row' },
        h('div', { class: 'field' }, h('label', { for: 'package-uses' }, 'Hosts that may register with it'), uses),
        h('div', { class: 'field' }, h('label', { for: 'package-hours' }, 'Valid for (hours, at most 720)'), hours)),
      h('ul', { class: 'downloads' }, links),
      h('p', { class: 'hint' }, 'Each download creates a new bootstrap token (listed below). The same from a shell: ', code('qb agent-package download --format deb --max-uses 10'), '.'),
      alerts);
    return s;
  }

  async function download(link, format, alerts) {
    const u = new URL(link.href);
    if (link.getAttribute('aria-disabled') !== 'true') announce(`Building the ${format} package; the download starts when it is ready.`);
    const result = await runAction(link, alerts, () => fetchFile(u.pathname, Object.fromEntries(u.searchParams)), `Could not download the ${format} package`);
    if (!result) return;
    const href = URL.createObjectURL(result.blob);
    const a = h('a', { href, download: result.filename || `qb-agent.${format}`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60000);
    announce(`Downloaded ${result.filename || `the ${format} package`}; it carries a new bootstrap token.`);
    await ctx.refresh();
  }

  // ---- bootstrap tokens ----------------------------------------------------------------

  function bootstrapSection() {
    const created = h('div', {});
    const alerts = alertSlot();
    const description = h('input', { id: 'bootstrap-description', type: 'text', maxlength: '200', autocomplete: 'off', placeholder: 'rack 4 hosts' });
    const hours = h('input', { id: 'bootstrap-hours', type: 'number', min: '1', max: '720', value: '24', inputmode: 'numeric', class: 'input-short' });
    const uses = h('input', { id: 'bootstrap-uses', type: 'number', min: '1', max: '10000', value: '1', inputmode: 'numeric', class: 'input-short' });
    const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create bootstrap token');
    const form = h('form', { class: 'create-form', novalidate: true },
      h('div', { class: 'field' }, h('label', { for: 'bootstrap-description' }, 'Description (optional)'), description),
      h('div', { class: 'field-row' },
        h('div', { class: 'field' }, h('label', { for: 'bootstrap-hours' }, 'Valid for (hours, at most 720)'), hours),
        h('div', { class: 'field' }, h('label', { for: 'bootstrap-uses' }, 'Hosts that may register with it'), uses)),
      alerts,
      h('div', { class: 'actions' }, submit));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const request = {};
      if (description.value.trim()) request.description = description.value.trim();
      if (hours.value.trim()) request.expires_in_hours = Number(hours.value);
      if (uses.value.trim()) request.max_uses = Number(uses.value);
      const result = await runAction(submit, alerts, () => post(`${API}/bootstrap-tokens`, request), 'Could not create the bootstrap token');
      if (!result) return;
      description.value = '';
      created.replaceChildren(secretPanel({
        title: 'New bootstrap token',
        secret: result.secret,
        fieldLabel: 'Bootstrap token',
        note: 'Copy it now: it is not shown again. Put it in the agent\'s configuration (bootstrap_token) on hosts installed without a package.',
      }));
      created.querySelector('input').focus();
      announce('Created a bootstrap token. Copy it now: it is not shown again.');
      await ctx.refresh();
    });
    const s = section('Bootstrap tokens');
    add(s,
      lead('Agents register hosts into this tenant with a bootstrap token. Packages carry one; revoke a token to stop further hosts from registering with it.'),
      h('div', { class: 'check' }, showInactiveBootstrap, h('label', { for: 'show-inactive-bootstrap' }, 'Show revoked, expired and used-up tokens')),
      bootstrapAlert, bootstrapRegion,
      h('h3', {}, 'Create a bootstrap token'), form, created);
    return s;
  }

  function bootstrapTable(tokens, hidden) {
    const more = hidden ? h('p', { class: 'muted small' }, `${plural(hidden, 'inactive token')} hidden.`) : null;
    if (!tokens.length) return [empty('No active bootstrap tokens. Download a package or create one below.'), more];
    return [table({
      label: 'Bootstrap tokens',
      sk: 'bootstrap',
      columns: ['Description', 'Status', 'Uses', 'Created', 'Expires', { content: 'Actions', class: 'col-actions' }],
      rows: tokens.map((t) => {
        const st = status(t);
        return h('tr', { 'data-bootstrap-token': t.id },
          h('th', { scope: 'row' }, t.description || h('span', { class: 'muted' }, 'no description'),
            h('span', { class: 'muted small block mono', title: t.id }, short(t.id))),
          h('td', {}, badge(st, { attr: 'status' })),
          h('td', {}, `${t.uses} of ${t.max_uses}`),
          h('td', { class: 'nowrap' }, time(t.created_at)),
          h('td', { class: 'nowrap' }, ends(t)),
          h('td', { class: 'col-actions' }, st === 'active'
            ? button('Revoke', (e) => revokeBootstrap(e.currentTarget, t), { kind: 'danger', small: true, label: `Revoke bootstrap token ${t.description || short(t.id)}`, fk: `revoke-b:${t.id}` })
            : null));
      }),
    }), more];
  }

  async function revokeBootstrap(btn, t) {
    const ok = await confirmDialog({
      title: 'Revoke this bootstrap token?',
      message: `Hosts not yet registered with ${t.description ? `“${t.description}”` : `token ${short(t.id)}`} can no longer use it. Hosts already registered are not affected.`,
    });
    if (!ok) return;
    const done = await runAction(btn, bootstrapAlert, () => del(path('bootstrap-tokens', t.id)), 'Could not revoke the bootstrap token');
    if (done) {
      announce('Revoked the bootstrap token.');
      await ctx.refresh();
    }
  }

  // ---- API tokens ----------------------------------------------------------------------

  function tokensSection() {
    const created = h('div', {});
    const alerts = alertSlot();
    const user = h('input', { id: 'token-user', type: 'text', autocomplete: 'off', spellcheck: 'false', list: 'token-user-names', placeholder: ctx.session.user, 'aria-describedby': 'token-user-hint' });
    const description = h('input', { id: 'token-description', type: 'text', maxlength: '200', autocomplete: 'off', placeholder: 'ci pipeline' });
    const hours = h('input', { id: 'token-hours', type: 'number', min: '1', max: '8760', value: '720', inputmode: 'numeric', class: 'input-short' });
    const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create token');
    const form = h('form', { class: 'create-form', novalidate: true },
      h('div', { class: 'field-row' },
        h('div', { class: 'field' }, h('label', { for: 'token-user' }, 'User'), user, userNames,
          h('p', { class: 'hint', id: 'token-user-hint' }, `An existing user of the tenant; empty means you (${ctx.session.user}). The token has the user's role.`)),
        h('div', { class: 'field field-grow' }, h('label', { for: 'token-description' }, 'Description (optional)'), description)),
      h('div', { class: 'field' }, h('label', { for: 'token-hours' }, 'Valid for (hours, at most 8760)'), hours),
      alerts,
      h('div', { class: 'actions' }, submit));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const request = {};
      if (user.value.trim()) request.user = user.value.trim();
      if (description.value.trim()) request.description = description.value.trim();
      if (hours.value.trim()) request.expires_in_hours = Number(hours.value);
      const result = await runAction(submit, alerts, () => post(`${API}/tokens`, request), 'Could not create the token');
      if (!result) return;
      user.value = '';
      description.value = '';
      created.replaceChildren(secretPanel({
        title: `New API token for ${result.token.user} (${result.token.role})`,
        secret: result.secret,
        fieldLabel: 'API token',
        note: 'Copy it now: it is not shown again. Log in with it here, or with qb login.',
      }));
      created.querySelector('input').focus();
      announce('Created an API token. Copy it now: it is not shown again.');
      await ctx.refresh();
    });
    const s = section('API tokens');
    add(s,
      lead('Tokens let people and programs use the API, the CLI and this interface as a user. Each web session and each kubeconfig is a token too.'),
      h('div', { class: 'check' }, showInactiveTokens, h('label', { for: 'show-inactive-tokens' }, 'Show revoked and expired tokens')),
      tokenAlert, tokenRegion,
      h('h3', {}, 'Create an API token'), form, created);
    return s;
  }

  function tokenTable(tokens, hidden) {
    const more = hidden ? h('p', { class: 'muted small' }, `${plural(hidden, 'inactive token')} hidden.`) : null;
    if (!tokens.length) return [empty('No active API tokens.'), more];
    return [table({
      label: 'API tokens',
      sk: 'tokens',
      columns: ['User', 'Role', 'Description', 'Status', 'Created', 'Expires', 'Last used', { content: 'Actions', class: 'col-actions' }],
      rows: tokens.map((t) => {
        const st = status(t);
        const mine = t.id === sessionTokenId;
        return h('tr', { 'data-token': t.id },
          h('th', { scope: 'row' }, t.user, h('span', { class: 'muted small block mono', title: t.id }, short(t.id))),
          h('td', {}, t.role),
          h('td', {}, t.description || h('span', { class: 'muted' }, '—'), mine ? h('span', { class: 'tag' }, 'this session') : null),
          h('td', {}, badge(st, { attr: 'status' })),
          h('td', { class: 'nowrap' }, time(t.created_at)),
          h('td', { class: 'nowrap' }, ends(t)),
          h('td', { class: 'nowrap' }, time(t.last_used_at, 'never')),
          h('td', { class: 'col-actions' }, st === 'active'
            ? button('Revoke', (e) => revokeToken(e.currentTarget, t, mine), { kind: 'danger', small: true, label: `Revoke token ${t.description || short(t.id)} of ${t.user}`, fk: `revoke-t:${t.id}` })
            : null));
      }),
    }), more];
  }

  async function revokeToken(btn, t, mine) {
    const ok = await confirmDialog({
      title: mine ? 'Revoke your current session?' : `Revoke this token of ${t.user}?`,
      message: mine
        ? 'This token is the one this browser is logged in with: revoking it logs you out at once.'
        : `Whatever uses ${t.description ? `“${t.description}”` : `token ${short(t.id)}`} is refused from now on.`,
    });
    if (!ok) return;
    const done = await runAction(btn, tokenAlert, () => del(path('tokens', t.id)), 'Could not revoke the token');
    if (done) {
      announce('Revoked the token.');
      await ctx.refresh();
    }
  }

  return { refresh };
}

/** When a token ends: its expiry, or when it was revoked. */
function ends(t) {
  return t.revoked_at ? h('span', {}, 'revoked ', time(t.revoked_at)) : time(t.expires_at);
}

/** The first part of an id, for tables (the full id is in the title). */
function short(id) {
  return String(id).slice(0, 8);
}
