// Shared pieces of the interface: announcements, error alerts, the confirmation dialog,
// action buttons, secrets shown once, tables and definition lists.

import { h, uid } from './dom.js';
import { Unauthenticated } from './api.js';

// ---- announcements -------------------------------------------------------------------------

let statusTimer = 0;
/** When the last announcement was made. */
let announcedAt = 0;
/** How long an announcement may still belong to the page that follows (an action that ends by
 * going to another page says so as it leaves). */
const CARRIED_MS = 1500;

/**
 * Says something short in the page's polite live region (`#status`, also shown as a toast):
 * that an action worked, that a secret was copied...
 */
export function announce(message) {
  const region = document.getElementById('status');
  if (!region) return;
  clearTimeout(statusTimer);
  announcedAt = Date.now();
  // Emptied first and filled a moment later, so that the same message twice is read twice.
  region.textContent = '';
  statusTimer = setTimeout(() => {
    region.textContent = message;
    statusTimer = setTimeout(() => { region.textContent = ''; }, 8000);
  }, 60);
}

/** Removes the last announcement when the user has left its page, unless it was just made. */
export function clearStaleAnnouncement() {
  if (Date.now() - announcedAt < CARRIED_MS) return;
  const region = document.getElementById('status');
  clearTimeout(statusTimer);
  if (region) region.textContent = '';
}

// ---- alerts --------------------------------------------------------------------------------

/** A place for the error alert of an action or a section, next to it. */
export function alertSlot(extraClass) {
  return h('div', { class: ['alert-slot', extraClass] });
}

/**
 * Shows an error in `slot` as a `role="alert"` paragraph (announced at once). `prefix` says
 * what failed, e.g. `Could not authorize lab-1`. A 401 shows nothing: the login form is
 * already there.
 */
export function showError(slot, err, prefix) {
  if (err instanceof Unauthenticated) return;
  const message = err && err.message ? err.message : String(err);
  const text = prefix ? `${prefix}: ${message}` : message;
  slot.replaceChildren(alertBox(text, () => slot.replaceChildren()));
}

/**
 * Like `showError`, for errors that repeat on every refresh (a page that cannot load): the
 * alert is only replaced, and so announced again, when its text changes.
 */
export function showLoadError(slot, err, prefix) {
  if (err instanceof Unauthenticated) return;
  const text = prefix ? `${prefix}: ${err.message}` : err.message;
  const current = slot.querySelector('[role="alert"]');
  if (current && current.dataset.text === text) return;
  slot.replaceChildren(alertBox(text, () => slot.replaceChildren()));
}

export function clearAlert(slot) {
  if (slot.firstChild) slot.replaceChildren();
}

/** The alert itself is only the message, so that its text is exactly what went wrong. */
function alertBox(text, dismiss) {
  return h('div', { class: 'alert' },
    h('p', { class: 'alert-text', role: 'alert', 'data-text': text }, text),
    h('button', { type: 'button', class: 'btn btn-small btn-quiet', 'aria-label': 'Dismiss this message', onclick: dismiss }, 'Dismiss'));
}

// ---- actions -------------------------------------------------------------------------------

/**
 * Runs an action started by `button`: marks the button busy (with `aria-disabled`, which keeps
 * the focus on it, unlike `disabled`), ignores clicks meanwhile, and shows a failure in `slot`.
 * Returns what `fn` returned, or `undefined` after a failure.
 */
export async function runAction(button, slot, fn, errorPrefix) {
  if (button && button.getAttribute('aria-disabled') === 'true') return undefined;
  if (slot) clearAlert(slot);
  if (button) {
    button.setAttribute('aria-disabled', 'true');
    button.classList.add('busy');
  }
  try {
    return await fn();
  } catch (err) {
    if (slot) showError(slot, err, errorPrefix);
    else if (!(err instanceof Unauthenticated)) announce(err.message);
    return undefined;
  } finally {
    if (button) {
      button.removeAttribute('aria-disabled');
      button.classList.remove('busy');
    }
  }
}

/** A `<button type="button">`. `label` is the accessible name when the visible text is short. */
export function button(text, onclick, { kind = '', label, fk, small = false, type = 'button', id } = {}) {
  return h('button', {
    type,
    id,
    class: ['btn', kind && `btn-${kind}`, small && 'btn-small'],
    'aria-label': label,
    'data-fk': fk,
    onclick,
  }, text);
}

// ---- the confirmation dialog ---------------------------------------------------------------

/**
 * Asks before a destructive step, in a modal `<dialog>` with the buttons Cancel and Confirm.
 * The focus starts on Cancel; Escape cancels.
 *
 * Options: `title`, `message`, `details` (a list of lines), `typeToConfirm` (a text the user
 * must type before Confirm is enabled), `option` (the label of a checkbox, e.g. to force).
 * Resolves to `null` when cancelled, else `{option: boolean}`.
 */
export function confirmDialog({ title, message, details = [], typeToConfirm = null, option = null, optionHint = null }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const titleId = uid('dialog-title');
    const messageId = uid('dialog-message');
    const cancel = h('button', { type: 'button', class: 'btn' }, 'Cancel');
    const confirm = h('button', { type: 'submit', class: 'btn btn-danger', disabled: Boolean(typeToConfirm) }, 'Confirm');
    let typed = null;
    if (typeToConfirm) {
      typed = h('input', {
        id: 'confirm-name', type: 'text', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'off',
        oninput: () => { confirm.disabled = typed.value.trim() !== typeToConfirm; },
      });
    }
    const check = option ? h('input', { id: 'confirm-option', type: 'checkbox' }) : null;
    const form = h('form', { class: 'dialog-form', novalidate: true },
      h('h2', { id: titleId }, title),
      h('p', { id: messageId }, message),
      details.length ? h('ul', { class: 'dialog-details' }, details.map((d) => h('li', {}, d))) : null,
      typed && h('div', { class: 'field' },
        h('label', { for: 'confirm-name' }, 'Type ', h('strong', {}, typeToConfirm), ' to confirm'),
        typed),
      check && h('div', { class: 'check' }, check,
        h('label', { for: 'confirm-option' }, option),
        optionHint && h('p', { class: 'hint' }, optionHint)),
      h('div', { class: 'dialog-buttons' }, cancel, confirm));
    const dialog = h('dialog', { class: 'dialog', 'aria-labelledby': titleId, 'aria-describedby': messageId }, form);

    let result = null;
    cancel.addEventListener('click', () => dialog.close());
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (typed && typed.value.trim() !== typeToConfirm) return;
      result = { option: check ? check.checked : false };
      dialog.close();
    });
    // Escape fires `cancel` and closes the dialog; `result` stays null.
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      else document.querySelector('main h1')?.focus();
      resolve(result);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

// ---- secrets shown once ------------------------------------------------------------------

/** Copies `text`; `input` is selected as the fallback when the clipboard is not available. */
export async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    announce('Copied to the clipboard.');
  } catch {
    if (input) {
      input.focus();
      input.select();
      // The old way still works where the asynchronous clipboard is not allowed (plain HTTP).
      if (document.execCommand && document.execCommand('copy')) {
        announce('Copied to the clipboard.');
        return;
      }
    }
    announce('Could not copy: the text is selected, copy it with your keyboard.');
  }
}

/**
 * A panel that shows a new secret once, with a Copy button and a warning; "Done" removes it.
 * It lives outside data regions, so live updates never wipe it.
 */
export function secretPanel({ title, secret, note, fieldLabel = 'Secret' }) {
  const id = uid('secret');
  const titleId = uid('secret-title');
  const input = h('input', { id, type: 'text', class: 'secret', readonly: true, spellcheck: 'false', autocomplete: 'off', value: secret });
  const panel = h('section', { class: 'panel panel-secret', 'aria-labelledby': titleId },
    h('h3', { id: titleId }, title),
    h('p', { class: 'warning' }, note),
    h('label', { for: id }, fieldLabel),
    h('div', { class: 'copy-row' }, input,
      button('Copy', () => copyText(secret, input), { label: `Copy the ${fieldLabel.toLowerCase()}` })),
    h('div', { class: 'actions' }, button('Done', () => panel.remove(), { kind: 'quiet', label: `Done: hide the ${fieldLabel.toLowerCase()}` })));
  return panel;
}

// ---- layout pieces ------------------------------------------------------------------------

/**
 * A table in a horizontally scrolling box. `columns` are header cells (text or nodes, or
 * `{content, class}`); `sk` keeps the box's scroll across re-renders.
 */
export function table({ label, columns, rows, sk, className }) {
  return h('div', { class: 'table-scroll', tabindex: '0', role: 'region', 'aria-label': label, 'data-sk': sk, 'data-fk': sk && `scroll:${sk}` },
    h('table', { class: className },
      h('caption', { class: 'visually-hidden' }, label),
      h('thead', {}, h('tr', {}, columns.map((c) => {
        const cell = c && typeof c === 'object' && !(c instanceof Node) ? c : { content: c };
        return h('th', { scope: 'col', class: cell.class }, cell.content);
      }))),
      h('tbody', {}, rows)));
}

/** A `<dl>` of `[term, value]` pairs; pairs whose value is `null` are left out. */
export function dl(pairs, className = 'facts') {
  return h('dl', { class: className }, pairs.filter((p) => p && p[1] !== null && p[1] !== undefined)
    .map(([term, value]) => h('div', { class: 'fact' }, h('dt', {}, term), h('dd', {}, value))));
}

/** The empty state of a list: what it is and what to do. */
export function empty(...text) {
  return h('p', { class: 'empty' }, ...text);
}

/**
 * A page section with an `<h2>`: `{el, body}`; append content to `body` (which is `el`).
 * `level` 3 makes a sub-section.
 */
export function section(title, { level = 2, id, className, extra } = {}) {
  const headingId = uid('h');
  const el = h('section', { class: ['section', className], id, 'aria-labelledby': headingId },
    h(`h${level}`, { id: headingId, class: 'section-title' }, title, extra));
  return el;
}

/** A short explanatory paragraph under a heading. */
export function lead(...text) {
  return h('p', { class: 'lead' }, ...text);
}

/** `<code>` for commands and values in running text. */
export function code(text) {
  return h('code', {}, text);
}
