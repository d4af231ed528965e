// auditgate web viewer: the entry point.
//
// Wires the sign-in form, the filters (kept in the URL), the entries table with keyset paging and
// live tail, the charts, the integrity badge and the detail panel. The modules next to this one
// hold the pieces: api.js (HTTP), filters.js (URL state), charts.js (SVG), detail.js (one entry),
// proof.js (Merkle checks), integrity.js (badge), coverage.js (learned routes), dom.js (safe DOM
// helpers).

import { api, apiUrl, ApiError, onUnauthorized } from './api.js';
import {
  h, $, replace, icon, formatTime, formatNumber, shortUserAgent, TIME_ZONE, TIME_ZONE_SHORT, formatTimeShort, parseTime,
} from './dom.js';
import {
  FILTER_KEYS, FILTER_LABELS, DEFAULT_LIMIT, emptyFilters, readLocation, toLocationSearch, filterParams,
  hasNonTimeFilters, sameFilters, rangePreset, resolveTime, isRelative, localInputToUtc, utcToLocalInput,
  actionInputValue, parseActionInput, RANGE_PRESETS, OUTCOMES, EXCLUDE_KEY, OWN_ACTIVITY_PREFIX,
  hidesOwnActivity, withOwnActivityHidden,
} from './filters.js';
import { renderActivityChart, renderTopList, bucketStart } from './charts.js';
import { createDetail, outcomePill } from './detail.js';
import { setupIntegrity, refreshIntegrity, resetIntegrity } from './integrity.js';
import { setupCoverage } from './coverage.js';

const LIVE_INTERVAL_MS = 2000;
const LIVE_BATCH = 200;
const LIVE_MAX_ROWS = 1000;
const SLOW_REFRESH_MS = 30000;
/**
 * Admin reads of the log are themselves entries (`audit.query`): every filter change, page and
 * live-tail poll of this viewer adds one. Runs of them are folded into one row that opens on
 * click, so the viewer's own reads never bury what people came to see (and nothing is hidden).
 */
const FOLDED_ACTION = 'audit.query';
const FOLD_MIN_RUN = 2;
/** The key `GET /stats?by=actor` gives entries that have neither an actor id nor an email. */
const ANONYMOUS_ACTOR_KEY = '(anonymous)';

// ---- state ----------------------------------------------------------------------------------

/** What the URL says (filters, limit, toggles, page cursor, open entry). */
let view = readLocation();

/** What the table shows. */
const page = {
  rows: [],
  olderCursor: null,
  newerCursor: null,
  atHead: true,
  headCursor: null, // cursor of the newest row on screen, for live tail
  total: null,
  loaded: false,
  error: null,
  generation: 0, // bumped by every reload, so a slow live-tail poll cannot prepend stale rows
};

let session = null;
let entriesController = null;
let chartsController = null;
let liveTimer = null;
let liveBusy = false;
let slowTimer = null;
let lastChart = null;
let suggestionsLoadedAt = 0;
let detail = null;
/** The route coverage panel (coverage.js). */
let coverage = null;
/** Folds the user opened, by the id of their oldest entry (stable while live tail adds newer). */
const openFolds = new Set();

// ---- URL ------------------------------------------------------------------------------------

function syncUrl(mode = 'replace') {
  const url = `${window.location.pathname}${toLocationSearch(view)}${window.location.hash}`;
  if (url === `${window.location.pathname}${window.location.search}${window.location.hash}`) return;
  if (mode === 'push') window.history.pushState(null, '', url);
  else window.history.replaceState(null, '', url);
}

function entryUrl(id) {
  const url = new URL(window.location.href);
  url.search = toLocationSearch({ ...view, cursor: null, live: false, entry: id });
  return url.href;
}

// ---- sign-in --------------------------------------------------------------------------------

function showSignIn(notice) {
  stopEverything();
  session = null;
  // Nothing from the log stays on the page after sign-out or expiry.
  page.rows = [];
  replace($('#entries-body'));
  replace($('#activity-chart'));
  replace($('#top-actions'));
  replace($('#top-actors'));
  replace($('#action-suggestions'));
  suggestionsLoadedAt = 0;
  resetIntegrity();
  if (coverage) coverage.reset();
  if (detail) detail.close();
  $('#boot').hidden = true;
  $('#app-view').hidden = true;
  $('#signin-view').hidden = false;
  const noticeEl = $('#signin-notice');
  noticeEl.textContent = notice || '';
  noticeEl.hidden = !notice;
  $('#signin-error').hidden = true;
  $('#signin-token').removeAttribute('aria-invalid');
  $('#signin-token').focus();
}

async function submitSignIn(event) {
  event.preventDefault();
  const input = $('#signin-token');
  const button = $('#signin-submit');
  const errorEl = $('#signin-error');
  const token = input.value.trim();
  errorEl.hidden = true;
  input.removeAttribute('aria-invalid');
  if (!token) {
    errorEl.textContent = 'Paste your admin token.';
    errorEl.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  button.disabled = true;
  button.textContent = 'Signing in…';
  try {
    await api('session', { method: 'POST', body: { token }, expect401: true });
    input.value = '';
    const who = await api('session', { expect401: true });
    showApp(who);
  } catch (error) {
    const message = !(error instanceof ApiError) ? 'Sign-in failed.'
      : error.status === 401 ? (error.body && error.body.error ? `Not accepted: ${error.body.error}` : 'That token was not accepted.')
        : error.status === 404 ? 'This server does not offer sign-in (no /api/v1/session).'
          : error.message;
    errorEl.textContent = message;
    errorEl.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.select();
  } finally {
    button.disabled = false;
    button.textContent = 'Sign in';
  }
}

async function signOut() {
  try {
    await api('session', { method: 'DELETE', expect401: true });
  } catch {
    // Signing out of an already ended session is still signing out.
  }
  showSignIn('You have signed out.');
}

function hasScope(scope) {
  return !session || !Array.isArray(session.scopes) || session.scopes.includes(scope);
}

function showApp(who) {
  session = who || {};
  $('#boot').hidden = true;
  $('#signin-view').hidden = true;
  $('#app-view').hidden = false;
  const name = typeof session.name === 'string' && session.name ? session.name : 'signed in';
  const nameEl = $('#session-name');
  nameEl.textContent = name;
  const scopes = Array.isArray(session.scopes) ? session.scopes.join(', ') : 'unknown';
  const expires = session.expiresAt ? ` · session ends ${formatTimeShort(session.expiresAt)}` : '';
  nameEl.title = `Token "${name}" · scopes: ${scopes}${expires}`;

  view = readLocation();
  fillForm(view.filters);
  renderControls();
  loadEntries();
  loadCharts();
  loadSuggestions();
  refreshIntegrity({ verify: true });
  if (view.entry) detail.open(view.entry, null, { focus: false });
  slowTimer = window.setInterval(slowRefresh, SLOW_REFRESH_MS);
  if (view.live) startLive();
}

function stopEverything() {
  if (entriesController) entriesController.abort();
  if (chartsController) chartsController.abort();
  stopLive();
  if (slowTimer) window.clearInterval(slowTimer);
  slowTimer = null;
}

function slowRefresh() {
  if (document.hidden || !session) return;
  refreshIntegrity();
  if (view.live) loadCharts({ quiet: true });
}

// ---- filter form ----------------------------------------------------------------------------

const input = (param) => $(`[data-param="${param}"]`);

function fillForm(filters) {
  input('q').value = filters.q;
  input('actor').value = filters.actor;
  input('action').value = actionInputValue(filters);
  input('resource_type').value = filters.resource_type;
  input('resource_id').value = filters.resource_id;
  input('outcome').value = OUTCOMES.includes(filters.outcome) ? filters.outcome : '';
  input('status').value = filters.status;
  input('ip').value = filters.ip;
  $('#filter-hide-own').checked = hidesOwnActivity(filters);
  const preset = rangePreset(filters);
  for (const radio of document.querySelectorAll('input[name="range"]')) radio.checked = radio.value === preset;
  input('since').value = utcToLocalInput(filters.since);
  input('until').value = utcToLocalInput(filters.until);
  showCustomRange(preset === 'custom', filters);
  clearFieldErrors();
}

function showCustomRange(show, filters = view.filters) {
  $('#custom-range').hidden = !show;
  const note = $('#range-note');
  const relative = [filters.since, filters.until].filter(isRelative);
  if (show && relative.length) {
    note.textContent = `Relative range from the URL: ${filters.since ? `since ${filters.since} ago` : ''}${filters.until ? ` until ${filters.until} ago` : ''}. Pick dates to replace it.`;
    note.hidden = false;
  } else note.hidden = true;
}

function selectedPreset() {
  const checked = document.querySelector('input[name="range"]:checked');
  return checked ? checked.value : 'all';
}

function readForm() {
  const filters = emptyFilters();
  filters.q = input('q').value.trim();
  filters.actor = input('actor').value.trim();
  Object.assign(filters, parseActionInput(input('action').value));
  filters.resource_type = input('resource_type').value.trim();
  filters.resource_id = input('resource_id').value.trim();
  filters.outcome = input('outcome').value;
  filters.status = input('status').value.trim();
  filters.ip = input('ip').value.trim();
  // No form field: a log is chosen from an entry's detail (sidecars sharing PostgreSQL) and
  // kept until its chip is removed.
  filters.log_id = view.filters.log_id || '';
  // The toggle adds or drops `audit.`; other exclusions (typed into the URL) are kept.
  filters[EXCLUDE_KEY] = withOwnActivityHidden(view.filters, $('#filter-hide-own').checked)[EXCLUDE_KEY];
  const preset = selectedPreset();
  if (preset === 'custom') {
    const since = input('since').value;
    const until = input('until').value;
    // A relative custom range from the URL survives until dates are picked.
    filters.since = since ? localInputToUtc(since) : (isRelative(view.filters.since) ? view.filters.since : '');
    filters.until = until ? localInputToUtc(until) : (isRelative(view.filters.until) ? view.filters.until : '');
  } else if (preset !== 'all') {
    filters.since = preset;
  }
  return filters;
}

/** Applies new filters: back to the newest page, new URL entry, reload table and charts. */
function applyFilters(filters = readForm(), { push = true } = {}) {
  const changed = !sameFilters(filters, view.filters);
  view.filters = filters;
  view.cursor = null;
  view.order = 'desc';
  syncUrl(push && changed ? 'push' : 'replace');
  fillForm(filters);
  renderControls();
  loadEntries();
  loadCharts();
}

function setFilter(param, value) {
  const filters = { ...view.filters };
  if (param === 'action') { filters.action = value; filters.action_prefix = ''; } else filters[param] = value;
  applyFilters(filters);
}

function removeFilter(param) {
  const filters = { ...view.filters };
  if (param === 'range') { filters.since = ''; filters.until = ''; } else filters[param] = '';
  applyFilters(filters);
}

function removeExclusion(prefix) {
  const filters = { ...view.filters };
  filters[EXCLUDE_KEY] = (filters[EXCLUDE_KEY] || []).filter((known) => known !== prefix);
  applyFilters(filters);
}

function clearFieldErrors() {
  for (const el of document.querySelectorAll('[data-error-for]')) { el.hidden = true; el.textContent = ''; }
  for (const el of document.querySelectorAll('[data-param][aria-invalid]')) el.removeAttribute('aria-invalid');
  const general = $('#filter-error-general');
  general.hidden = true;
  general.textContent = '';
}

/** Shows 400 answers next to the filter they are about. Returns true if any was placed. */
function showFieldErrors(error) {
  clearFieldErrors();
  const list = error.fieldErrors.length ? error.fieldErrors : [{ param: null, message: error.message }];
  const general = [];
  for (const { param, message } of list) {
    const target = param === 'action_prefix' ? 'action' : param;
    const el = target ? document.querySelector(`[data-error-for="${CSS.escape(target)}"]`) : null;
    if (el && !el.parentElement.closest('[hidden]')) {
      el.textContent = message;
      el.hidden = false;
      const field = input(target);
      if (field) field.setAttribute('aria-invalid', 'true');
    } else {
      general.push(param && FILTER_LABELS[param] ? `${FILTER_LABELS[param]}: ${message}` : message);
    }
  }
  if (general.length) {
    const el = $('#filter-error-general');
    el.textContent = general.join(' · ');
    el.hidden = false;
  }
  setFiltersOpen(true);
}

function setFiltersOpen(open) {
  $('#sidebar').classList.toggle('is-open', open);
  $('#filters-toggle').setAttribute('aria-expanded', String(open));
}

// ---- controls: chips, toggles, export links, pager ----------------------------------------

function describeRange(filters) {
  const preset = rangePreset(filters);
  const known = RANGE_PRESETS.find((p) => p.key === preset);
  if (preset !== 'custom') return known.title;
  const part = (value) => (isRelative(value) ? `${value} ago` : formatTimeShort(value));
  if (filters.since && filters.until) return `${part(filters.since)} – ${part(filters.until)}`;
  if (filters.since) return `Since ${part(filters.since)}`;
  return `Until ${part(filters.until)}`;
}

function renderChips() {
  const box = $('#chips');
  const chips = [];
  const add = (param, label, value) => chips.push(h('span', { class: 'chip', testid: 'filter-chip', 'data-param': param },
    h('span', { class: 'chip-label' }, label), h('span', { class: 'chip-value' }, value),
    h('button', { type: 'button', class: 'chip-remove', 'aria-label': `Remove filter ${label} ${value}`, testid: `filter-chip-remove-${param}`, onclick: () => removeFilter(param) }, icon('close'))));
  const f = view.filters;
  for (const key of FILTER_KEYS) {
    if (key === 'since' || key === 'until' || !f[key]) continue;
    add(key, FILTER_LABELS[key], key === 'action_prefix' ? `${f[key]}*` : f[key]);
  }
  if (f.since || f.until) add('range', 'Time', describeRange(f));
  for (const prefix of f[EXCLUDE_KEY] || []) {
    const own = prefix === OWN_ACTIVITY_PREFIX;
    const label = own ? 'Hidden' : FILTER_LABELS[EXCLUDE_KEY];
    const value = own ? "auditgate's own activity" : `${prefix}*`;
    chips.push(h('span', { class: 'chip', testid: 'filter-chip', 'data-param': EXCLUDE_KEY, 'data-value': prefix },
      h('span', { class: 'chip-label' }, label), h('span', { class: 'chip-value' }, value),
      h('button', { type: 'button', class: 'chip-remove', 'aria-label': own ? "Show auditgate's own activity" : `Remove filter ${label} ${value}`, testid: `filter-chip-remove-${EXCLUDE_KEY}`, onclick: () => removeExclusion(prefix) }, icon('close'))));
  }
  if (chips.length > 1) {
    chips.push(h('button', { type: 'button', class: 'btn btn-link btn-sm', testid: 'filter-chips-clear', onclick: () => applyFilters(emptyFilters()) }, 'Clear all'));
  }
  replace(box, ...chips);
  box.hidden = chips.length === 0;
  const count = chips.filter((c) => c.classList.contains('chip')).length;
  const bubble = $('#filters-count');
  bubble.textContent = String(count);
  bubble.hidden = count === 0;
}

function renderExportLinks() {
  const params = filterParams(view.filters);
  const allowed = hasScope('export');
  // "proofs" is NDJSON whose lines carry each entry's inclusion proof against the latest signed
  // head, for `auditgate verify-export` to check offline.
  for (const kind of ['csv', 'json', 'ndjson', 'proofs', 'ocsf']) {
    const link = $(`#export-${kind}`);
    const query = new URLSearchParams(params);
    query.set('format', kind === 'proofs' ? 'ndjson' : kind);
    if (kind === 'proofs') query.set('proofs', 'true');
    if (allowed) {
      link.href = apiUrl('export', query);
      link.removeAttribute('aria-disabled');
      link.removeAttribute('tabindex');
      link.title = kind === 'proofs'
        ? 'Download every matching entry the latest signed head covers, each with its inclusion proof, as NDJSON; check it offline with auditgate verify-export'
        : kind === 'ocsf'
          ? 'Download every entry matching the current filters as OCSF API Activity events, one per line'
          : `Download every entry matching the current filters as ${kind.toUpperCase()}`;
    } else {
      link.removeAttribute('href');
      link.setAttribute('aria-disabled', 'true');
      link.title = 'Your token does not have the export scope';
    }
  }
}

function renderControls() {
  $('#count-toggle').checked = view.count;
  $('#live-toggle').checked = view.live;
  $('#page-size').value = String(view.limit);
  document.body.classList.toggle('is-live', view.live);
  renderChips();
  renderExportLinks();
  renderPager();
}

function renderPager() {
  $('#page-older').disabled = !page.olderCursor || !page.loaded;
  $('#page-newer').disabled = page.atHead || !page.newerCursor || !page.loaded;
  $('#page-first').disabled = page.atHead;
  const totalEl = $('#total');
  if (view.count && page.total !== null) {
    totalEl.textContent = `${formatNumber(page.total)} total`;
    totalEl.hidden = false;
  } else {
    totalEl.textContent = '';
    totalEl.hidden = true;
  }
  const summary = $('#result-summary');
  if (!page.loaded) summary.textContent = '';
  else if (!page.rows.length) summary.textContent = 'No entries';
  else {
    const n = page.rows.length;
    summary.textContent = `${formatNumber(n)} ${n === 1 ? 'entry' : 'entries'}${page.atHead ? ' · newest first' : ' · older page'}`;
  }
}

// ---- entries table --------------------------------------------------------------------------

function setLoading(loading) {
  $('#progress').hidden = !loading;
  $('#table-wrap').setAttribute('aria-busy', String(loading));
  $('#entries-table').classList.toggle('is-stale', loading && page.rows.length > 0);
}

async function loadEntries() {
  if (entriesController) entriesController.abort();
  const controller = new AbortController();
  entriesController = controller;
  page.generation += 1;
  const params = filterParams(view.filters);
  params.set('limit', String(view.limit));
  const order = view.cursor ? view.order : 'desc';
  params.set('order', order);
  if (view.cursor) params.set('cursor', view.cursor);
  if (view.count) params.set('count', 'true');
  setLoading(true);
  if (!page.rows.length) showTableState('loading');
  try {
    const data = await api('entries', { query: params, signal: controller.signal });
    let rows = data && Array.isArray(data.entries) ? data.entries : [];
    const next = data && data.nextCursor ? data.nextCursor : null;
    const prev = data && data.prevCursor ? data.prevCursor : null;
    if (order === 'asc') {
      rows = rows.slice().reverse();
      // Paging "newer" reached the newest entries: show the real first page, not a partial one.
      if (!next) {
        view.cursor = null;
        view.order = 'desc';
        syncUrl('replace');
        loadEntries();
        return;
      }
    }
    page.rows = rows;
    page.olderCursor = order === 'desc' ? next : prev;
    page.newerCursor = order === 'desc' ? prev : next;
    page.atHead = !view.cursor;
    page.headCursor = page.atHead ? prev : null;
    page.total = data && typeof data.total === 'number' ? data.total : null;
    page.loaded = true;
    page.error = null;
    clearFieldErrors();
    renderTable();
  } catch (error) {
    if (error && error.name === 'AbortError') return;
    if (!(error instanceof ApiError) || error.status === 401) return;
    page.rows = [];
    page.loaded = true;
    page.atHead = !view.cursor;
    page.olderCursor = null;
    page.newerCursor = null;
    page.error = error;
    replace($('#entries-body'));
    if (error.status === 400) {
      showFieldErrors(error);
      showTableState('invalid', error);
    } else showTableState('error', error);
    renderPager();
  } finally {
    if (entriesController === controller) {
      setLoading(false);
      entriesController = null;
    }
  }
}

function showTableState(kind, error) {
  const box = $('#table-state');
  box.dataset.state = kind;
  let content;
  if (kind === 'loading') {
    content = [h('span', { class: 'spinner', 'aria-hidden': 'true' }), h('p', null, 'Loading entries…')];
  } else if (kind === 'error') {
    content = [
      h('p', { class: 'state-title' }, 'Entries could not be loaded'),
      h('p', { class: 'state-text' }, error.message),
      h('button', { type: 'button', class: 'btn btn-secondary btn-sm', testid: 'table-retry', onclick: () => loadEntries() }, icon('refresh'), 'Try again'),
    ];
  } else if (kind === 'invalid') {
    content = [
      h('p', { class: 'state-title' }, 'Check the filters'),
      h('p', { class: 'state-text' }, error.message),
    ];
  } else if (kind === 'empty') {
    const filtered = hasNonTimeFilters(view.filters) || view.filters.since || view.filters.until;
    if (!page.atHead) {
      content = [
        h('p', { class: 'state-title' }, 'No entries on this page'),
        h('button', { type: 'button', class: 'btn btn-secondary btn-sm', testid: 'empty-latest', onclick: () => goLatest() }, 'Go to the newest entries'),
      ];
    } else if (filtered) {
      content = [
        h('p', { class: 'state-title' }, 'No entries match these filters'),
        h('p', { class: 'state-text' }, 'Widen the time range or remove a filter.'),
        h('button', { type: 'button', class: 'btn btn-secondary btn-sm', testid: 'empty-reset', onclick: () => applyFilters(emptyFilters()) }, 'Reset filters'),
      ];
    } else {
      content = [
        h('p', { class: 'state-title' }, 'No entries yet'),
        h('p', { class: 'state-text' }, 'Requests that match your rules will appear here as soon as they are logged.'),
      ];
    }
  }
  replace(box, ...content);
  box.hidden = false;
}

function actorCell(entry) {
  const label = entry.actorEmail || entry.actorId || entry.actorName;
  const source = entry.actorSource ? `source: ${entry.actorSource}` : 'no source';
  const details = [
    entry.actorId ? `id: ${entry.actorId}` : null,
    entry.actorEmail ? `email: ${entry.actorEmail}` : null,
    entry.actorName ? `name: ${entry.actorName}` : null,
    `${source}, ${entry.actorVerified ? 'verified' : 'not verified'}`,
  ].filter(Boolean).join('\n');
  return h('td', { class: 'col-actor', title: details },
    h('span', { class: 'actor' },
      h('span', { class: label ? 'actor-label' : 'actor-label is-anon' }, label ? String(label) : 'anonymous'),
      entry.actorVerified ? h('span', { class: 'verified-mark', testid: 'verified-mark' }, icon('shield', 'verified')) : null));
}

function statusClass(status) {
  if (typeof status !== 'number') return 'status';
  if (status >= 500) return 'status status-5xx';
  if (status >= 400) return 'status status-4xx';
  return 'status';
}

function renderRow(entry) {
  const time = String(entry.createdAt || '');
  const date = parseTime(time);
  const resourceType = entry.resourceType ? String(entry.resourceType) : '';
  const resourceId = entry.resourceId !== null && entry.resourceId !== undefined ? String(entry.resourceId) : '';
  const ua = entry.userAgent ? String(entry.userAgent) : '';
  const tr = h('tr', {
    class: 'entry-row', tabindex: 0, testid: 'entry-row', 'data-id': String(entry.id), 'data-seq': String(entry.seq),
    'aria-label': `${formatTime(time)}, ${entry.action}, ${entry.outcome}`,
  },
  h('td', { class: 'col-time' }, h('time', { datetime: time, title: `${time} (UTC)${date ? `\n${date.toString()}` : ''}` }, formatTime(time))),
  actorCell(entry),
  h('td', { class: 'col-action' }, h('span', { class: 'action', title: String(entry.action ?? '') }, String(entry.action ?? ''))),
  h('td', { class: 'col-resource', title: [resourceType, resourceId].filter(Boolean).join(' / ') },
    resourceType || resourceId
      ? h('span', { class: 'resource' }, resourceType ? h('span', { class: 'resource-type' }, resourceType) : null,
        resourceType && resourceId ? h('span', { class: 'resource-sep' }, '/') : null,
        resourceId ? h('span', { class: 'resource-id' }, resourceId) : null)
      : h('span', { class: 'empty' }, '—')),
  h('td', { class: 'col-outcome' }, outcomePill(entry.outcome)),
  h('td', { class: 'col-status' }, h('span', { class: statusClass(entry.status) }, entry.status === null || entry.status === undefined ? '—' : String(entry.status))),
  h('td', { class: 'col-ip' }, entry.ip ? h('span', { class: 'ip' }, String(entry.ip)) : h('span', { class: 'empty' }, '—')),
  h('td', { class: 'col-ua', title: ua }, ua ? shortUserAgent(ua) : h('span', { class: 'empty' }, '—')));
  if (detail && detail.currentId === String(entry.id)) tr.classList.add('is-selected');
  return tr;
}

/** Whether the view asks for admin reads itself, in which case folding them would get in the way. */
function showsAdminReadsOnPurpose() {
  const f = view.filters;
  return f.action === FOLDED_ACTION || (f.action_prefix && FOLDED_ACTION.startsWith(f.action_prefix) && f.action_prefix.length > 1);
}

/** The table's rows: entries, with runs of admin reads gathered under a fold row. */
function tableRows(fresh = new Set()) {
  const out = [];
  const fold = !showsAdminReadsOnPurpose();
  const rows = page.rows;
  for (let i = 0; i < rows.length;) {
    let end = i;
    while (fold && end < rows.length && rows[end].action === FOLDED_ACTION) end += 1;
    if (end - i >= FOLD_MIN_RUN) {
      out.push(...foldRows(rows.slice(i, end), fresh));
      i = end;
    } else {
      const tr = renderRow(rows[i]);
      if (fresh.has(String(rows[i].id))) markNew(tr);
      out.push(tr);
      i += 1;
    }
  }
  return out;
}

function foldRows(run, fresh) {
  const key = String(run[run.length - 1].id);
  const open = openFolds.has(key);
  const who = [...new Set(run.map((entry) => entry.actorId || entry.actorEmail || 'anonymous'))];
  const first = parseTime(String(run[run.length - 1].createdAt || ''));
  const last = parseTime(String(run[0].createdAt || ''));
  const span = first && last && formatTime(run[run.length - 1].createdAt) !== formatTime(run[0].createdAt)
    ? `${formatTime(run[run.length - 1].createdAt)} – ${formatTime(run[0].createdAt)}` : formatTime(run[0].createdAt);
  const members = run.map((entry) => {
    const tr = renderRow(entry);
    tr.classList.add('is-folded');
    tr.dataset.fold = key;
    tr.hidden = !open;
    if (fresh.has(String(entry.id))) markNew(tr);
    return tr;
  });
  const button = h('button', {
    type: 'button', class: 'fold-button', 'aria-expanded': String(open), testid: 'fold-toggle',
    onclick: () => toggleFold(key),
  }, icon(open ? 'down' : 'right'),
  h('span', { class: 'fold-count' }, `${formatNumber(run.length)} admin reads`),
  h('span', { class: 'fold-detail' }, ` · ${FOLDED_ACTION} by ${who.slice(0, 3).join(', ')}${who.length > 3 ? '…' : ''} · ${span}`));
  const fold = h('tr', { class: 'fold-row', testid: 'fold-row', 'data-fold': key, 'data-count': String(run.length) },
    h('td', { colspan: visibleColumns() }, button));
  if (run.some((entry) => fresh.has(String(entry.id)))) markNew(fold);
  return [fold, ...members];
}

/**
 * How many columns the table shows now. Narrow layouts hide some with CSS, and a cell spanning
 * more columns than there are would add empty ones and squeeze the table.
 */
function visibleColumns() {
  const cells = [...document.querySelectorAll('#entries-table thead th')];
  return Math.max(1, cells.filter((cell) => getComputedStyle(cell).display !== 'none').length);
}

function fitFoldRows() {
  const span = visibleColumns();
  for (const cell of document.querySelectorAll('#entries-body tr.fold-row > td')) cell.colSpan = span;
}

function toggleFold(key) {
  const open = !openFolds.has(key);
  if (open) openFolds.add(key); else openFolds.delete(key);
  for (const tr of document.querySelectorAll(`#entries-body tr[data-fold="${CSS.escape(key)}"]`)) {
    if (tr.classList.contains('fold-row')) {
      const button = tr.querySelector('button');
      button.setAttribute('aria-expanded', String(open));
      button.firstChild.replaceWith(icon(open ? 'down' : 'right'));
    } else tr.hidden = !open;
  }
}

function markNew(tr) {
  tr.classList.add('is-new');
  window.setTimeout(() => tr.classList.remove('is-new'), 2400);
}

function renderTable(fresh) {
  const body = $('#entries-body');
  // Re-rendering must not take the keyboard focus away from the row (or fold) that had it.
  const focused = document.activeElement && body.contains(document.activeElement) ? document.activeElement.closest('tr') : null;
  const focusKey = focused ? (focused.classList.contains('fold-row') ? `fold:${focused.dataset.fold}` : focused.dataset.id) : null;
  replace(body, ...tableRows(fresh));
  if (focusKey) {
    const target = focusKey.startsWith('fold:')
      ? body.querySelector(`tr.fold-row[data-fold="${CSS.escape(focusKey.slice(5))}"] button`)
      : body.querySelector(`tr.entry-row[data-id="${CSS.escape(focusKey)}"]`);
    if (target && !target.closest('[hidden]')) target.focus({ preventScroll: true });
  }
  if (page.rows.length) $('#table-state').hidden = true;
  else showTableState('empty');
  renderPager();
}

/** The entry rows a user can see (not inside a closed fold), top to bottom. */
function rowsInTable() {
  return [...document.querySelectorAll('#entries-body tr.entry-row')].filter((row) => !row.hidden);
}

/** What arrow keys move between: visible entry rows and fold buttons. */
function focusStops() {
  return [...document.querySelectorAll('#entries-body tr')]
    .filter((row) => !row.hidden)
    .map((row) => (row.classList.contains('fold-row') ? row.querySelector('button') : row));
}

function markSelected(id) {
  for (const row of rowsInTable()) {
    const selected = row.dataset.id === id;
    row.classList.toggle('is-selected', selected);
    if (selected) row.setAttribute('aria-current', 'true'); else row.removeAttribute('aria-current');
  }
}

function openEntry(id, { focus = true } = {}) {
  const entry = page.rows.find((row) => String(row.id) === id) || null;
  view.entry = id;
  syncUrl('replace');
  markSelected(id);
  detail.open(id, entry, { focus });
}

function closeEntry() {
  const id = detail.currentId;
  detail.close();
  view.entry = null;
  syncUrl('replace');
  markSelected(null);
  const row = id ? rowsInTable().find((r) => r.dataset.id === id) : null;
  if (row) row.focus();
}

function navigateEntry(delta) {
  const rows = rowsInTable();
  const index = rows.findIndex((r) => r.dataset.id === detail.currentId);
  const target = rows[index === -1 ? 0 : index + delta];
  if (!target) {
    toast(delta < 0 ? 'This is the newest entry on the page.' : 'This is the last entry on the page; use Older for more.');
    return;
  }
  target.scrollIntoView({ block: 'nearest' });
  openEntry(target.dataset.id, { focus: false });
}

function onTableClick(event) {
  const row = event.target.closest('tr.entry-row');
  if (!row) return;
  // Let people select text in a row without opening it.
  if (window.getSelection && String(window.getSelection()).length > 0) return;
  openEntry(row.dataset.id);
}

function onTableKey(event) {
  const row = event.target.closest('tr.entry-row');
  const onFold = event.target.classList && event.target.classList.contains('fold-button');
  if (!onFold && (!row || event.target !== row)) return;
  if (!onFold && (event.key === 'Enter' || event.key === ' ')) {
    event.preventDefault();
    openEntry(row.dataset.id);
  } else if (event.key === 'ArrowDown' || event.key === 'ArrowUp' || event.key === 'Home' || event.key === 'End') {
    event.preventDefault();
    const stops = focusStops();
    const index = stops.indexOf(event.target);
    const target = event.key === 'Home' ? stops[0]
      : event.key === 'End' ? stops[stops.length - 1]
        : stops[index + (event.key === 'ArrowDown' ? 1 : -1)];
    if (target) target.focus();
  }
}

// ---- paging ---------------------------------------------------------------------------------

function goOlder() {
  if (!page.olderCursor) return;
  if (view.live) setLive(false);
  view.cursor = page.olderCursor;
  view.order = 'desc';
  syncUrl('push');
  loadEntries();
  $('#table-wrap').scrollTop = 0;
}

function goNewer() {
  if (!page.newerCursor) return;
  view.cursor = page.newerCursor;
  view.order = 'asc';
  syncUrl('push');
  loadEntries();
}

function goLatest() {
  view.cursor = null;
  view.order = 'desc';
  syncUrl('push');
  loadEntries();
}

// ---- live tail ------------------------------------------------------------------------------

function setLive(on) {
  view.live = on;
  syncUrl('replace');
  renderControls();
  if (on) {
    if (!page.atHead) {
      view.cursor = null;
      view.order = 'desc';
      syncUrl('replace');
      loadEntries();
    }
    startLive();
  } else stopLive();
}

function startLive() {
  stopLive();
  $('#live-notice').hidden = true;
  liveTimer = window.setTimeout(pollLive, LIVE_INTERVAL_MS);
}

function stopLive() {
  if (liveTimer) window.clearTimeout(liveTimer);
  liveTimer = null;
}

function scheduleLive() {
  if (view.live && session) liveTimer = window.setTimeout(pollLive, LIVE_INTERVAL_MS);
}

async function pollLive() {
  liveTimer = null;
  if (!view.live || !session) return;
  if (document.hidden || liveBusy || entriesController || !page.atHead || page.error) {
    scheduleLive();
    return;
  }
  liveBusy = true;
  const generation = page.generation;
  try {
    const params = filterParams(view.filters);
    const known = new Set(page.rows.map((row) => String(row.id)));
    let fresh = [];
    let headCursor = page.headCursor;
    if (page.headCursor) {
      params.set('order', 'asc');
      params.set('cursor', page.headCursor);
      params.set('limit', String(LIVE_BATCH));
      const data = await api('entries', { query: params });
      const rows = data && Array.isArray(data.entries) ? data.entries : [];
      fresh = rows.slice().reverse();
      // The next cursor continues after the newest row; without one, the next poll asks for the
      // first page again to learn the newest row's cursor.
      if (rows.length) headCursor = data.nextCursor || null;
    } else {
      params.set('order', 'desc');
      params.set('limit', String(Math.max(view.limit, 50)));
      const data = await api('entries', { query: params });
      const rows = data && Array.isArray(data.entries) ? data.entries : [];
      for (const row of rows) {
        if (known.has(String(row.id))) break;
        fresh.push(row);
      }
      headCursor = data && data.prevCursor ? data.prevCursor : null;
    }
    if (!view.live || !page.atHead || entriesController || generation !== page.generation) return;
    page.headCursor = headCursor;
    fresh = fresh.filter((row) => !known.has(String(row.id)));
    if (fresh.length) prependRows(fresh);
    $('#live-notice').hidden = true;
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) {
      const notice = $('#live-notice');
      notice.textContent = `Live tail: ${error.message} Retrying…`;
      notice.hidden = false;
    }
  } finally {
    liveBusy = false;
    scheduleLive();
  }
}

function prependRows(rows) {
  page.rows = rows.concat(page.rows);
  if (page.total !== null) page.total += rows.length;
  // The whole table is drawn again: new admin reads may join the fold at the top.
  renderTable(new Set(rows.map((row) => String(row.id))));
  if (page.rows.length >= LIVE_MAX_ROWS) {
    setLive(false);
    const notice = $('#live-notice');
    replace(notice, `Live tail paused: ${formatNumber(page.rows.length)} entries on screen. `,
      h('button', { type: 'button', class: 'btn btn-link btn-sm', onclick: () => { goLatest(); setLive(true); } }, 'Reload the newest and resume'));
    notice.hidden = false;
  }
}

// ---- charts ---------------------------------------------------------------------------------

function statsQuery(by, limit, extra) {
  const params = filterParams(view.filters);
  if (extra) for (const [k, v] of Object.entries(extra)) params.set(k, v);
  params.set('by', by);
  params.set('limit', String(limit));
  return params;
}

async function loadCharts({ quiet = false } = {}) {
  if (chartsController) chartsController.abort();
  const controller = new AbortController();
  chartsController = controller;
  const { signal } = controller;
  const now = Date.now();
  let from = resolveTime(view.filters.since, now);
  let to = view.filters.until ? resolveTime(view.filters.until, now) : new Date(now);
  let unit = from && to && to - from <= 2.1 * 86400e3 ? 'hour' : 'day';
  if (!quiet) {
    for (const box of ['#activity-chart', '#top-actions', '#top-actors']) $(box).classList.add('is-loading');
  }
  const settle = (promise) => promise.then((value) => ({ value }), (error) => ({ error }));
  const [activity, actions, actors] = await Promise.all([
    settle(api('stats', { query: statsQuery(unit, 1000), signal })),
    settle(api('stats', { query: statsQuery('action', 8), signal })),
    settle(api('stats', { query: statsQuery('actor', 8), signal })),
  ]);
  if (signal.aborted) return;
  let activityResult = activity;
  // Open-ended ranges: if everything falls within two days, hours read better than days.
  if (!from && activity.value && Array.isArray(activity.value.buckets) && activity.value.buckets.length) {
    const starts = activity.value.buckets.map((b) => bucketStart(String(b.key), 'day')).filter((n) => !Number.isNaN(n));
    const first = Math.min(...starts);
    const last = view.filters.until ? to.getTime() : now;
    if (starts.length && last - first <= 2.1 * 86400e3) {
      const hourly = await settle(api('stats', { query: statsQuery('hour', 1000, { since: new Date(first).toISOString() }), signal }));
      if (signal.aborted) return;
      if (hourly.value) {
        activityResult = hourly;
        unit = 'hour';
        // Start the chart at the first hour with entries, not at the midnight before it.
        const hours = (Array.isArray(hourly.value.buckets) ? hourly.value.buckets : [])
          .map((b) => bucketStart(String(b.key), 'hour')).filter((n) => !Number.isNaN(n));
        from = new Date(hours.length ? Math.min(...hours) : first);
      }
    }
  }
  if (chartsController === controller) chartsController = null;
  for (const box of ['#activity-chart', '#top-actions', '#top-actors']) $(box).classList.remove('is-loading');

  const chartBox = $('#activity-chart');
  const caption = $('#chart-caption');
  if (activityResult.value) {
    const data = activityResult.value;
    // `until` is exclusive: the bucket that starts exactly at it is not part of the range.
    const end = view.filters.until && to ? to.getTime() - 1 : now;
    lastChart = { buckets: Array.isArray(data.buckets) ? data.buckets : [], unit, from: from ? from.getTime() : null, to: end };
    drawChart();
    const total = typeof data.total === 'number' ? data.total : lastChart.buckets.reduce((n, b) => n + (Number(b.count) || 0), 0);
    const range = rangePreset(view.filters) === 'custom' ? describeRange(view.filters) : describeRange(view.filters).toLowerCase();
    caption.textContent = `${formatNumber(total)} ${total === 1 ? 'entry' : 'entries'} · ${range} · per ${unit}${unit === 'day' ? ' (UTC)' : ''}`;
  } else {
    lastChart = null;
    caption.textContent = '';
    replace(chartBox, chartUnavailable(activityResult.error, 'activity-chart-unavailable'));
  }
  if (actions.value) {
    renderTopList($('#top-actions'), actions.value.buckets, {
      testid: 'top-actions', emptyText: 'No actions in this range.', onPick: (key) => setFilter('action', key),
    });
  } else replace($('#top-actions'), chartUnavailable(actions.error, 'top-actions-unavailable'));
  if (actors.value) {
    // The API names requests without an actor "(anonymous)"; that is not something `actor=` finds.
    const buckets = (Array.isArray(actors.value.buckets) ? actors.value.buckets : [])
      .map((b) => (b && b.key === ANONYMOUS_ACTOR_KEY ? { ...b, key: null } : b));
    renderTopList($('#top-actors'), buckets, {
      testid: 'top-actors', emptyText: 'No users in this range.', nullLabel: 'anonymous', onPick: (key) => setFilter('actor', key),
    });
  } else replace($('#top-actors'), chartUnavailable(actors.error, 'top-actors-unavailable'));
}

function chartUnavailable(error, testid) {
  const text = error instanceof ApiError && error.status === 404 ? 'Not available on this server.'
    : error instanceof ApiError && error.status === 400 ? 'Fix the filters to see this.'
      : 'Could not be loaded.';
  return h('p', { class: 'unavailable', testid }, text);
}

function drawChart() {
  if (!lastChart) return;
  const box = $('#activity-chart');
  renderActivityChart(box, lastChart.buckets, {
    unit: lastChart.unit,
    from: lastChart.from,
    to: lastChart.to,
    width: box.clientWidth,
    onSelect: (start, end) => {
      const filters = { ...view.filters, since: new Date(start).toISOString().replace('.000Z', 'Z'), until: new Date(end).toISOString().replace('.000Z', 'Z') };
      applyFilters(filters);
    },
  });
}

async function loadSuggestions() {
  suggestionsLoadedAt = Date.now();
  try {
    const data = await api('stats', { query: new URLSearchParams({ by: 'action', limit: '100' }) });
    const actions = (data && Array.isArray(data.buckets) ? data.buckets : [])
      .map((b) => (b && b.key !== null && b.key !== undefined ? String(b.key) : ''))
      .filter(Boolean);
    const prefixes = new Set();
    for (const action of actions) {
      const dot = action.indexOf('.');
      if (dot > 0) prefixes.add(`${action.slice(0, dot + 1)}*`);
    }
    const values = [...new Set(actions)].sort().concat([...prefixes].sort());
    replace($('#action-suggestions'), ...values.map((value) => h('option', { value })));
  } catch {
    // Suggestions are a convenience; the input works without them.
  }
}

// ---- misc -----------------------------------------------------------------------------------

let toastTimer = null;
function toast(message) {
  const el = $('#toast');
  el.textContent = message;
  el.hidden = false;
  window.clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => { el.hidden = true; }, 2600);
}

function isTyping(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ['INPUT', 'SELECT', 'TEXTAREA'].includes(target.tagName));
}

function onPopState() {
  if (!session) return;
  const next = readLocation();
  const filtersChanged = !sameFilters(next.filters, view.filters);
  const pageChanged = filtersChanged || next.cursor !== view.cursor || next.order !== view.order || next.limit !== view.limit || next.count !== view.count;
  const entryChanged = next.entry !== view.entry;
  view = next;
  fillForm(view.filters);
  renderControls();
  if (pageChanged) loadEntries();
  if (filtersChanged) loadCharts();
  if (entryChanged) {
    if (view.entry) { markSelected(view.entry); detail.open(view.entry, page.rows.find((r) => String(r.id) === view.entry) || null, { focus: false }); } else { detail.close(); markSelected(null); }
  }
  if (view.live) startLive(); else stopLive();
}

function setup() {
  for (const el of document.querySelectorAll('[data-tz]')) el.textContent = `(${TIME_ZONE})`;
  // The table header is narrow: the zone's short name there ("EST"), the full name on hover.
  for (const el of document.querySelectorAll('[data-tz-short]')) {
    el.textContent = `(${TIME_ZONE_SHORT})`;
    el.title = `Times are shown in ${TIME_ZONE}; hover a time for UTC`;
  }

  onUnauthorized(() => {
    if (session) showSignIn('Your session has ended. Sign in again to continue.');
  });

  $('#signin-form').addEventListener('submit', submitSignIn);
  $('#signout').addEventListener('click', signOut);
  $('#signout').prepend(icon('logout'));

  const form = $('#filter-form');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    applyFilters();
    // On narrow screens the filters sit above the results; fold them away to show the results.
    if (window.matchMedia('(max-width: 900px)').matches) setFiltersOpen(false);
  });
  $('#filter-reset').addEventListener('click', () => applyFilters(emptyFilters()));
  input('outcome').addEventListener('change', () => applyFilters());
  $('#filter-hide-own').addEventListener('change', () => applyFilters());
  for (const radio of document.querySelectorAll('input[name="range"]')) {
    radio.addEventListener('change', () => {
      if (radio.value === 'custom') {
        if (!input('since').value && !input('until').value) {
          const since = resolveTime(view.filters.since) || new Date(Date.now() - 86400e3);
          input('since').value = utcToLocalInput(since.toISOString());
        }
        showCustomRange(true, readForm());
        input('since').focus();
      } else applyFilters();
    });
  }
  input('action').addEventListener('focus', () => {
    if (session && Date.now() - suggestionsLoadedAt > 60000) loadSuggestions();
  });
  $('#filters-toggle').prepend(icon('filter'));
  $('#filters-toggle').addEventListener('click', () => setFiltersOpen(!$('#sidebar').classList.contains('is-open')));

  $('#count-toggle').addEventListener('change', (event) => {
    view.count = event.target.checked;
    syncUrl('replace');
    loadEntries();
  });
  $('#live-toggle').addEventListener('change', (event) => setLive(event.target.checked));
  $('#page-size').addEventListener('change', (event) => {
    view.limit = Number(event.target.value) || DEFAULT_LIMIT;
    view.cursor = null;
    view.order = 'desc';
    syncUrl('replace');
    loadEntries();
  });
  $('#page-older').addEventListener('click', goOlder);
  $('#page-newer').addEventListener('click', goNewer);
  $('#page-first').addEventListener('click', goLatest);
  for (const link of document.querySelectorAll('.export a')) {
    link.addEventListener('click', (event) => { if (link.getAttribute('aria-disabled') === 'true') event.preventDefault(); });
  }

  const tbody = $('#entries-body');
  tbody.addEventListener('click', onTableClick);
  tbody.addEventListener('keydown', onTableKey);

  detail = createDetail({
    onFilter: (param, value) => setFilter(param, value),
    onNavigate: navigateEntry,
    onClose: closeEntry,
    entryUrl,
    toast,
  });
  setupIntegrity();
  coverage = setupCoverage({ toast });

  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && detail.isOpen && !event.defaultPrevented) {
      event.preventDefault();
      closeEntry();
    } else if (event.key === '/' && !isTyping(event.target) && !event.ctrlKey && !event.metaKey && session) {
      event.preventDefault();
      setFiltersOpen(true);
      input('q').focus();
    }
  });
  window.addEventListener('popstate', onPopState);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && view.live && session && !liveTimer && !liveBusy) scheduleLive();
  });
  // The breakpoints where style.css hides table columns.
  for (const query of ['(max-width: 1100px)', '(max-width: 900px)']) {
    window.matchMedia(query).addEventListener('change', fitFoldRows);
  }
  if ('ResizeObserver' in window) {
    let frame = 0;
    let lastWidth = 0;
    new ResizeObserver((entries) => {
      const width = Math.round(entries[0].contentRect.width);
      if (width === lastWidth) return;
      lastWidth = width;
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(drawChart);
    }).observe($('#activity-chart'));
  }
}

async function boot() {
  setup();
  try {
    const who = await api('session', { expect401: true });
    showApp(who);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) showSignIn();
    else if (error instanceof ApiError && error.status === 404) showSignIn('This server does not offer sign-in yet (no /api/v1/session).');
    else showSignIn(error instanceof ApiError ? error.message : 'The viewer failed to start.');
  }
}

boot();
