// The REST API client: same-origin fetches with the session cookie, the CSRF header on every
// change, JSON in and out, and problem+json errors turned into `ApiError`s with a message for
// people.

/** The API's prefix. */
export const API = '/api/v1';

let csrfToken = null;
let unauthenticated = () => {};

/** Sets the session's CSRF token, sent with every request that changes something. */
export function setCsrf(token) {
  csrfToken = token;
}

/** What to do when a request finds the session gone (401): the app shows the login form. */
export function onUnauthenticated(handler) {
  unauthenticated = handler;
}

/** An error answer of the API, or no answer at all (`status` 0). */
export class ApiError extends Error {
  constructor(status, problem, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    /** The problem's stable code, e.g. `quorum_at_risk`. */
    this.code = problem && typeof problem.code === 'string' ? problem.code : null;
    this.problem = problem;
  }
}

/** The session ended (401). The app has already switched to the login form; views ignore it. */
export class Unauthenticated extends ApiError {
  constructor(problem, message) {
    super(401, problem, message);
    this.name = 'Unauthenticated';
  }
}

/** `path?query`, leaving out empty query values. */
export function url(path, query) {
  if (!query) return path;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/**
 * One API request. `body` (any JSON value) is sent as JSON; `auth: false` keeps a 401 from
 * ending the session (the login form's own request).
 * Returns the parsed JSON answer, or `null` for 204.
 */
export async function request(method, path, { body, query, auth = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  const init = { method, credentials: 'same-origin', headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url(path, query), init);
  } catch {
    throw new ApiError(0, null, 'Cannot reach the controller. Check the network; the page tries again on its next update.');
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (res.ok) return data;
  throw failure(res, data, auth);
}

/** The error for a failed answer whose body parsed as `data`; a 401 ends the session. */
function failure(res, data, auth = true) {
  const problem = data && typeof data === 'object' && !Array.isArray(data) ? data : null;
  const message = (problem && (problem.detail || problem.title)) || `The controller answered ${res.status} ${res.statusText}`.trim();
  if (res.status === 401 && auth) {
    unauthenticated(message);
    return new Unauthenticated(problem, message);
  }
  return new ApiError(res.status, problem, message);
}

/**
 * Downloads a file (GET): `{blob, filename}`, the name from `Content-Disposition`. Errors are
 * problems like any other answer's.
 */
export async function fetchFile(path, query) {
  let res;
  try {
    res = await fetch(url(path, query), { credentials: 'same-origin', cache: 'no-store' });
  } catch {
    throw new ApiError(0, null, 'Cannot reach the controller. Check the network and try again.');
  }
  if (!res.ok) {
    let data = null;
    try {
      data = JSON.parse(await res.text());
    } catch {
      data = null;
    }
    throw failure(res, data);
  }
  const blob = await res.blob();
  const disposition = res.headers.get('Content-Disposition') || '';
  const m = disposition.match(/filename="([^"]+)"/);
  return { blob, filename: m ? m[1] : null };
}

export const get = (path, query) => request('GET', path, { query });
export const post = (path, body, query) => request('POST', path, { body, query });
export const del = (path, query) => request('DELETE', path, { query });

/** Every item of a paged list (`{items, next}`), following `next` up to `maxPages` pages. */
export async function listAll(path, query = {}, maxPages = 50) {
  const items = [];
  let after;
  for (let page = 0; page < maxPages; page += 1) {
    const res = await get(path, { ...query, limit: 1000, after });
    items.push(...(res.items || []));
    if (!res.next) break;
    after = res.next;
  }
  return items;
}

/** `/api/v1/nodes/<name>` and the like, with each segment escaped. */
export function path(...segments) {
  return `${API}/${segments.map((s) => encodeURIComponent(s)).join('/')}`;
}
