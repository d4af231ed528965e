// The log's integrity at a glance: the badge in the top bar and its popover.
//
// Sources: GET /log/head (the last signed tree head) and GET /verify (the server's recomputation
// of the log: incremental — only what was appended since its last check — when the viewer opens,
// full — every entry re-read — when "Verify now" is pressed; the popover says which one it shows). Either may 404 on a build without that feature, or (for /log/head) before the first
// head is signed; the badge then says so calmly instead of breaking.

import { api, ApiError } from './api.js';
import { h, $, replace, formatNumber, formatTimeLong, formatTimeShort, formatAge, shortHash, icon } from './dom.js';

const state = { head: undefined, headError: null, verify: undefined, verifyError: null, verifying: false };

function setBadge(kind, label) {
  const button = $('#integrity-button');
  button.dataset.state = kind;
  $('#integrity-label').textContent = label;
}

function describe() {
  const { head, verify, headError, verifyError } = state;
  if (head === undefined && verify === undefined) return { kind: 'loading', label: 'Checking integrity…' };
  const headMissing = headError && headError.status === 404;
  const verifyMissing = verifyError && verifyError.status === 404;
  if (verify && verify.ok === false) {
    const where = Number.isInteger(verify.firstBadSeq) ? ` at #${formatNumber(verify.firstBadSeq)}` : '';
    return { kind: 'bad', label: `Integrity check failed${where}` };
  }
  if (verify && verify.ok === true) {
    if (head) return { kind: 'good', label: 'Log verified' };
    return { kind: 'warn', label: 'Verified · no signed head yet' };
  }
  // No verify result.
  if (verifyError && !verifyMissing) return { kind: 'warn', label: 'Verify failed to run' };
  if (head) return { kind: 'warn', label: 'Signed · not verified' };
  if (headMissing && verifyMissing && !isNoHeadYet(headError)) return { kind: 'muted', label: 'Integrity not available' };
  if (headMissing) return { kind: 'warn', label: 'No signed head yet' };
  return { kind: 'warn', label: 'Integrity unknown' };
}

// /log/head answers 404 both when the endpoint does not exist and when nothing is signed yet;
// only the latter carries the API's JSON error body.
const isNoHeadYet = (error) => Boolean(error && error.status === 404 && error.body && typeof error.body.error === 'string');

function summaryText() {
  const { head, verify } = state;
  const size = Math.max(head && Number.isFinite(head.size) ? head.size : 0, verify && Number.isFinite(verify.size) ? verify.size : 0);
  const parts = [];
  if (size) parts.push(`${formatNumber(size)} entries`);
  if (head && head.timestamp) parts.push(`signed ${formatAge(head.timestamp)}`);
  return parts.join(' · ');
}

function row(label, value, { mono = false, title, testid } = {}) {
  return [
    h('dt', null, label),
    h('dd', { class: mono ? 'mono' : null, title: title || null, testid: testid || null }, value ?? '—'),
  ];
}

function renderPopover() {
  const pop = $('#integrity-popover');
  const { head, verify, headError, verifyError } = state;
  const { kind, label } = describe();
  const blocks = [
    h('div', { class: `popover-status state-${kind}` }, h('span', { class: 'badge-dot', 'aria-hidden': 'true' }), h('strong', null, label)),
  ];

  const headList = h('dl', { class: 'kv kv-compact', testid: 'integrity-head' });
  if (head) {
    headList.append(
      ...row('Signed size', formatNumber(head.size)),
      ...row('Signed at', `${formatTimeShort(head.timestamp)} (${formatAge(head.timestamp)})`, { title: `${formatTimeLong(head.timestamp)} · ${head.timestamp}` }),
      ...row('Root hash', shortHash(head.rootHash, 12), { mono: true, title: head.rootHash }),
      ...row('Key id', head.keyId || '—', { mono: true }),
      ...row('Log id', head.logId || '—', { mono: true }),
    );
  } else {
    const text = isNoHeadYet(headError) ? 'No signed tree head yet: heads are published every N entries or T seconds.'
      : headError ? `Signed heads: ${headError.status === 404 ? 'not available on this server' : headError.message}` : 'Loading…';
    headList.append(h('dd', { class: 'muted full' }, text));
  }
  blocks.push(h('h3', { class: 'popover-title' }, 'Last signed tree head'), headList);

  const verifyList = h('dl', { class: 'kv kv-compact', testid: 'integrity-verify' });
  if (verify) {
    verifyList.append(
      ...row('Result', verify.ok ? 'Intact' : 'Tampered or damaged', { testid: 'integrity-verify-result' }),
      ...row('Checked', `${formatNumber(verify.size)} entries`),
      ...row('Mode', verify.mode === 'full' ? 'Full: every entry re-read and re-hashed'
        : 'Incremental: entries added since the last check (Verify now runs the full check)', { testid: 'integrity-verify-mode' }),
      ...row('At', verify.checkedAt ? `${formatTimeShort(verify.checkedAt)} (${formatAge(verify.checkedAt)})` : '—', { title: verify.checkedAt }),
    );
    if (!verify.ok) {
      verifyList.append(
        ...row('First bad entry', Number.isInteger(verify.firstBadSeq) ? `#${formatNumber(verify.firstBadSeq)}` : '—'),
        ...row('Problem', verify.problem || '—'),
      );
    }
  } else {
    const text = state.verifying ? 'Verifying…'
      : verifyError ? (verifyError.status === 404 ? 'Verification is not available on this server.' : verifyError.message) : 'Not run yet.';
    verifyList.append(h('dd', { class: 'muted full' }, text));
  }
  blocks.push(h('h3', { class: 'popover-title' }, 'Verification'), verifyList);

  const again = h('button', {
    type: 'button', class: 'btn btn-secondary btn-sm', testid: 'integrity-verify-now', disabled: state.verifying || (verifyError && verifyError.status === 404),
    title: 'Re-reads and re-hashes every entry and checks every signed head (may take a while on a large log)',
    onclick: () => refreshIntegrity({ verify: true, full: true }),
  }, icon('refresh'), state.verifying ? 'Verifying…' : 'Verify now');
  blocks.push(h('div', { class: 'popover-actions' }, again,
    h('span', { class: 'popover-note' }, 'Head signatures are checked offline with ', h('code', null, 'auditgate verify --heads'), '.')));
  replace(pop, ...blocks);
}

function render() {
  const { kind, label } = describe();
  setBadge(kind, label);
  $('#integrity-summary').textContent = summaryText();
  if (!$('#integrity-popover').hidden) renderPopover();
}

/**
 * Reloads the head, and the verify result when asked: incremental (cheap, resumes from the
 * server's last check) unless `full` (re-reads the whole log; costly on big logs).
 */
export async function refreshIntegrity({ verify = false, full = false } = {}) {
  const headPromise = api('log/head').then(
    (head) => { state.head = head; state.headError = null; },
    (error) => { if (error instanceof ApiError) { state.head = null; state.headError = error; } },
  );
  let verifyPromise = Promise.resolve();
  if (verify) {
    state.verifying = true;
    render();
    verifyPromise = api('verify', full ? { query: { full: 'true' } } : {}).then(
      (result) => { state.verify = result; state.verifyError = null; },
      (error) => { if (error instanceof ApiError) { state.verify = null; state.verifyError = error; } },
    ).finally(() => { state.verifying = false; });
  }
  await Promise.all([headPromise, verifyPromise]);
  render();
}

/** The latest head seen, for the detail panel ("N entries signed since"). */
export const latestHead = () => state.head || null;

export function setupIntegrity() {
  const button = $('#integrity-button');
  const pop = $('#integrity-popover');
  const close = () => { pop.hidden = true; button.setAttribute('aria-expanded', 'false'); };
  button.addEventListener('click', () => {
    if (pop.hidden) {
      renderPopover();
      pop.hidden = false;
      button.setAttribute('aria-expanded', 'true');
      // Heads are signed every few seconds; show the latest, not the one from the last poll.
      refreshIntegrity();
    } else close();
  });
  document.addEventListener('click', (event) => {
    // A click inside the popover can re-render it ("Verify now" shows "Verifying…" at once), so
    // by the time the click reaches the document its target may be detached: that is not a
    // click outside.
    if (!pop.hidden && event.target.isConnected && !$('#integrity').contains(event.target)) close();
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !pop.hidden) {
      close();
      button.focus();
      event.stopPropagation();
    }
  }, true);
  return { close };
}

export function resetIntegrity() {
  Object.assign(state, { head: undefined, headError: null, verify: undefined, verifyError: null, verifying: false });
  const pop = $('#integrity-popover');
  pop.hidden = true;
  replace(pop);
  $('#integrity-button').setAttribute('aria-expanded', 'false');
  render();
}
