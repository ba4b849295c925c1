// The qb web interface: session, routing, live updates.
//
// Every view is a module with `mount(ctx)`, which builds the page's lasting structure (headings,
// forms) once and returns `{refresh, onQuery?, destroy?}`. `refresh` reads the API again and
// redraws only the regions that show data, so a live update never resets a form, a dialog, the
// focus or the scroll position. The app calls `refresh` when the view opens, when the server
// says something changed (`/api/v1/changes`), after an action, and every 30 s as a fallback.

import { h, add, tickTimes } from './dom.js';
import * as api from './api.js';
import { alertSlot, announce, clearAlert, clearStaleAnnouncement, showError, showLoadError, button, code } from './ui.js';
import * as overview from './views/overview.js';
import * as nodes from './views/nodes.js';
import * as node from './views/node.js';
import * as clusters from './views/clusters.js';
import * as cluster from './views/cluster.js';
import * as tokens from './views/tokens.js';
import * as events from './views/events.js';
import * as alertsView from './views/alerts.js';

const ROUTES = [
  { pattern: /^\/$/, nav: '', view: overview },
  { pattern: /^\/nodes$/, nav: 'nodes', view: nodes },
  { pattern: /^\/nodes\/([^/]+)$/, nav: 'nodes', view: node },
  { pattern: /^\/clusters$/, nav: 'clusters', view: clusters },
  { pattern: /^\/clusters\/([^/]+)$/, nav: 'clusters', view: cluster },
  { pattern: /^\/tokens$/, nav: 'tokens', view: tokens },
  { pattern: /^\/alerts$/, nav: 'alerts', view: alertsView },
  { pattern: /^\/events$/, nav: 'events', view: events },
];

const RANK = { viewer: 1, operator: 2, admin: 3 };

const state = {
  /** The session (`GET /api/v1/session`), or null when logged out. */
  session: null,
  /** The mounted view: `{path, ctx, instance, running, again}`. */
  current: null,
  /** The live update stream. */
  events: null,
  liveRetry: 0,
  liveDebounce: 0,
};

const $ = (id) => document.getElementById(id);
const main = () => $('main');

// ---- routing -------------------------------------------------------------------------------

/** The hash as `{path, query}`: `#/events?kind=node` → `/events`, `kind=node`. */
function parseHash() {
  const raw = location.hash.startsWith('#/') ? location.hash.slice(1) : '/';
  const q = raw.indexOf('?');
  const path = (q < 0 ? raw : raw.slice(0, q)).replace(/\/+$/, '') || '/';
  return { path, query: new URLSearchParams(q < 0 ? '' : raw.slice(q + 1)) };
}

function decode(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    return null;
  }
}

/** Shows the view the hash names. `focus` moves the focus to the new page's heading. */
function route({ focus = true } = {}) {
  if (!state.session) return;
  const { path, query } = parseHash();
  const current = state.current;
  // Only the query changed (e.g. the events page's filters): the view keeps its place.
  if (current && current.path === path && current.instance.onQuery) {
    current.ctx.query = query;
    current.instance.onQuery(query);
    return;
  }
  unmount();
  let match = null;
  let params = [];
  for (const r of ROUTES) {
    const m = path.match(r.pattern);
    if (m) {
      params = m.slice(1).map(decode);
      if (params.every((p) => p !== null && p !== '')) match = r;
      break;
    }
  }
  setNav(match ? match.nav : null);
  const root = main();
  root.replaceChildren();
  const ctx = makeContext(root, params, query);
  const instance = match ? match.view.mount(ctx) : notFound(ctx);
  state.current = { path, ctx, instance, running: null, again: false };
  window.scrollTo(0, 0);
  if (focus) root.querySelector('h1')?.focus();
  refreshNow();
}

function unmount() {
  const current = state.current;
  state.current = null;
  if (!current) return;
  // What was said on the page left does not follow the user to the next one.
  clearStaleAnnouncement();
  current.ctx.alive = false;
  try {
    current.instance.destroy?.();
  } catch (e) {
    console.error(e);
  }
}

/** What a view gets. */
function makeContext(root, params, query) {
  const session = state.session;
  return {
    root,
    params,
    query,
    session,
    /** False once the user left the view: results that arrive later are dropped. */
    alive: true,
    /** Whether the user's role includes `role`. */
    can: (role) => (RANK[session.role] || 0) >= RANK[role],
    /** Where the page says it could not load its data; views place it under their heading. */
    loadAlert: alertSlot('load-alert'),
    /** Reads the data again now (after an action). Resolves when the page is redrawn. */
    refresh: () => refreshNow(),
    /** The page's `<h1>`, focusable so that navigation can move the focus to it. */
    heading(text, ...extra) {
      document.title = `${text} · qb`;
      return h('h1', { tabindex: '-1' }, text, ...extra);
    },
    navigate(hash) {
      if (location.hash === hash) route();
      else location.hash = hash;
    },
  };
}

function notFound(ctx) {
  add(ctx.root,
    ctx.heading('Page not found'),
    h('p', {}, 'There is no page at this address. ', h('a', { href: '#/' }, 'Go to the overview'), '.'));
  return {};
}

function setNav(active) {
  for (const a of document.querySelectorAll('#nav a[data-nav]')) {
    if (active !== null && a.dataset.nav === active) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

// ---- refreshing ----------------------------------------------------------------------------

/**
 * Refreshes the current view; one refresh at a time, and one more after it when asked
 * meanwhile, so answers never arrive out of order.
 */
function refreshNow() {
  const current = state.current;
  if (!current || !current.instance.refresh) return Promise.resolve();
  if (current.running) {
    current.again = true;
    return current.running;
  }
  current.running = (async () => {
    do {
      current.again = false;
      try {
        await current.instance.refresh();
        if (current.ctx.alive) clearAlert(current.ctx.loadAlert);
      } catch (err) {
        if (current.ctx.alive) showLoadError(current.ctx.loadAlert, err, 'Could not load this page');
        if (!(err instanceof api.ApiError)) console.error(err);
      }
    } while (current.again && current.ctx.alive);
    current.running = null;
  })();
  return current.running;
}

// ---- live updates --------------------------------------------------------------------------

function setLive(mode) {
  const el = $('live');
  el.dataset.live = mode;
  el.textContent = { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…' }[mode];
  el.title = mode === 'live'
    ? 'Live: pages update by themselves when something changes'
    : 'Live updates are interrupted; the browser reconnects by itself';
}

function startLive() {
  stopLive();
  setLive('connecting');
  const stream = new EventSource('/api/v1/changes');
  state.events = stream;
  stream.addEventListener('open', () => {
    if (state.events === stream) setLive('live');
  });
  stream.addEventListener('change', () => {
    if (state.events !== stream) return;
    setLive('live');
    // Changes come in bursts (an attach moves several nodes); one refresh covers them.
    clearTimeout(state.liveDebounce);
    state.liveDebounce = setTimeout(refreshNow, 150);
  });
  stream.addEventListener('error', () => {
    if (state.events !== stream) return;
    setLive('reconnecting');
    // The browser retries by itself after a network error, but gives up on an answer that is
    // not a stream (a 401 once the session ended): then check the session and start again.
    if (stream.readyState === EventSource.CLOSED) {
      clearTimeout(state.liveRetry);
      state.liveRetry = setTimeout(checkAndRestartLive, 5000);
    }
  });
}

async function checkAndRestartLive() {
  if (!state.session) return;
  try {
    await api.get('/api/v1/session');
  } catch (err) {
    if (err instanceof api.Unauthenticated) return; // the login form is shown
  }
  if (state.session) startLive();
}

function stopLive() {
  clearTimeout(state.liveRetry);
  clearTimeout(state.liveDebounce);
  if (state.events) {
    state.events.close();
    state.events = null;
  }
}

// ---- session -------------------------------------------------------------------------------

function setSession(session) {
  state.session = session;
  api.setCsrf(session.csrf_token);
  $('who').textContent = `${session.user} @ ${session.tenant} (${session.role})`;
  $('who').title = `Signed in as ${session.user} in tenant ${session.tenant}, role ${session.role}. `
    + `The session ends ${new Date(session.expires_at).toLocaleString()}.`;
  $('nav').hidden = false;
  $('session').hidden = false;
  startLive();
}

/** Shows the login form, keeping the address so that the user comes back to it. */
function showLogin(message) {
  // A confirmation left open belongs to the page that is going away.
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
  unmount();
  stopLive();
  state.session = null;
  api.setCsrf(null);
  $('nav').hidden = true;
  $('session').hidden = true;
  setNav(null);
  document.title = 'Log in · qb';

  const alerts = alertSlot();
  const field = (id, label, attrs, hint) => h('div', { class: 'field' },
    h('label', { for: id }, label),
    h('input', { id, name: id, spellcheck: 'false', autocapitalize: 'off', required: true, ...attrs }),
    hint || null);

  // With a password (set with `qb user set-password`).
  const passwordSubmit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Log in');
  const passwordForm = h('form', { class: 'login-form', id: 'password-form', novalidate: true },
    field('login-tenant', 'Tenant', { type: 'text', autocomplete: 'organization', value: 'default' }),
    field('login-user', 'User', { type: 'text', autocomplete: 'username' }),
    field('login-password', 'Password', { type: 'password', autocomplete: 'current-password' },
      h('p', { class: 'hint' }, 'An administrator sets it with ', code('qb user set-password <user>'),
        '; everyone can set their own.')),
    h('div', { class: 'actions' }, passwordSubmit));
  // With an API token.
  const tokenSubmit = h('button', { type: 'submit', class: 'btn' }, 'Log in with token');
  const tokenForm = h('form', { class: 'login-form', id: 'token-form', novalidate: true },
    field('token', 'API token', { type: 'password', autocomplete: 'off', 'aria-describedby': 'token-hint' },
      h('p', { class: 'hint', id: 'token-hint' },
        'Create one with ', code('qb token create'),
        ', or use the admin token the controller wrote to ', code('qb-data/admin-token'),
        ' on its first start.')),
    h('div', { class: 'actions' }, tokenSubmit));

  const value = (id) => $(id).value.trim();
  const submitted = async (form, submit, body, missing, retry) => {
    if (submit.getAttribute('aria-disabled') === 'true') return;
    if (missing) {
      showError(alerts, new Error(missing.message));
      $(missing.field).focus();
      return;
    }
    const session = await runLogin(submit, alerts, body);
    if (!session) {
      $(retry).select();
      return;
    }
    for (const input of form.querySelectorAll('input[type=password]')) input.value = '';
    setSession(session);
    announce(`Logged in as ${session.user}.`);
    route();
  };
  passwordForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const body = { tenant: value('login-tenant'), user: value('login-user'), password: $('login-password').value };
    const missing = !body.tenant ? { field: 'login-tenant', message: 'Enter your tenant (usually "default").' }
      : !body.user ? { field: 'login-user', message: 'Enter your user name.' }
        : !body.password ? { field: 'login-password', message: 'Enter your password.' } : null;
    submitted(passwordForm, passwordSubmit, body, missing, 'login-password');
  });
  tokenForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = value('token');
    const missing = token ? null : { field: 'token', message: 'Paste your API token first.' };
    submitted(tokenForm, tokenSubmit, { token }, missing, 'token');
  });
  const root = main();
  root.replaceChildren(h('div', { class: 'login' },
    h('h1', { tabindex: '-1' }, 'Log in to qb'),
    message ? h('p', { class: 'notice' }, message) : null,
    alerts,
    passwordForm,
    h('h2', { class: 'login-or' }, 'Or with an API token'),
    tokenForm));
  $('login-user').focus();
}

async function runLogin(submit, alerts, body) {
  clearAlert(alerts);
  submit.setAttribute('aria-disabled', 'true');
  try {
    return await api.request('POST', '/api/v1/session', { body, auth: false });
  } catch (err) {
    showError(alerts, err, 'Could not log in');
    return null;
  } finally {
    submit.removeAttribute('aria-disabled');
  }
}

async function logout() {
  const btn = $('logout');
  if (btn.getAttribute('aria-disabled') === 'true') return;
  btn.setAttribute('aria-disabled', 'true');
  try {
    await api.request('DELETE', '/api/v1/session', { auth: false });
  } catch (err) {
    // A session that already ended is logged out anyway.
    if (err.status !== 401) {
      const slot = state.current ? state.current.ctx.loadAlert : null;
      if (slot) showError(slot, err, 'Could not log out');
      else announce(`Could not log out: ${err.message}`);
      return;
    }
  } finally {
    btn.removeAttribute('aria-disabled');
  }
  showLogin();
  announce('Logged out.');
}

/** When the controller cannot be reached at all at start. */
function showStartError(err) {
  const alerts = alertSlot();
  main().replaceChildren(
    h('h1', { tabindex: '-1' }, 'qb'),
    alerts,
    h('div', { class: 'actions' }, button('Try again', () => boot(), { kind: 'primary' })));
  showError(alerts, err, 'Cannot load the session');
}

async function boot() {
  try {
    const session = await api.request('GET', '/api/v1/session', { auth: false });
    setSession(session);
    route({ focus: false });
  } catch (err) {
    if (err.status === 401) showLogin();
    else showStartError(err);
  }
}

// ---- start ---------------------------------------------------------------------------------

api.onUnauthenticated(() => {
  if (state.session) showLogin('Your session has ended. Log in again to continue where you were.');
});

window.addEventListener('hashchange', () => route());
$('logout').addEventListener('click', logout);
$('skip-link').addEventListener('click', (e) => {
  // The address is the router's; move the focus without touching it.
  e.preventDefault();
  main().focus();
});
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && state.session) refreshNow();
});
// Relative times ("12 s ago") stay current; a slow fallback refresh covers a missed update
// and keeps "last seen" times of online agents fresh (heartbeats alone send no change).
setInterval(() => tickTimes(), 1000);
setInterval(() => {
  if (state.session && document.visibilityState === 'visible') refreshNow();
}, 30000);

boot();
