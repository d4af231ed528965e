// The view's state in the URL: filters, page position, toggles and the open entry.
//
// A view is a URL. Everything that decides what is on screen lives in the query string, so a view
// can be bookmarked or pasted into a ticket and opens the same way. Filter names are the API's
// own parameter names, so the query string can be handed to the API almost unchanged.

/** Every filter the entries, stats and export endpoints share, in display order. */
export const FILTER_KEYS = [
  'q', 'actor', 'action', 'action_prefix', 'resource_type', 'resource_id',
  'outcome', 'status', 'ip', 'since', 'until', 'log_id',
];

/**
 * Action prefixes to leave out: the API's repeatable `exclude_action_prefix`, kept as a list
 * beside the single-valued filters above (it is never in FILTER_KEYS).
 */
export const EXCLUDE_KEY = 'exclude_action_prefix';

/** The prefix of every entry auditgate writes about itself: admin reads, exports, sign-ins, prunes. */
export const OWN_ACTIVITY_PREFIX = 'audit.';

export const RANGE_PRESETS = [
  { key: '1h', label: '1h', title: 'Last hour', ms: 3600e3 },
  { key: '24h', label: '24h', title: 'Last 24 hours', ms: 24 * 3600e3 },
  { key: '7d', label: '7d', title: 'Last 7 days', ms: 7 * 24 * 3600e3 },
  { key: 'all', label: 'All', title: 'All time', ms: null },
  { key: 'custom', label: 'Custom', title: 'Custom range', ms: null },
];

export const PAGE_SIZES = [25, 50, 100, 200];
export const DEFAULT_LIMIT = 50;

export const OUTCOMES = ['success', 'failure', 'error', 'unknown'];

/** A fresh, empty filter set. */
export function emptyFilters() {
  const filters = Object.fromEntries(FILTER_KEYS.map((key) => [key, '']));
  filters[EXCLUDE_KEY] = [];
  return filters;
}

/** Trimmed, non-empty, each once, in the order given. */
function cleanList(values) {
  return [...new Set((values || []).map((value) => String(value).trim()).filter(Boolean))];
}

/** Whether a filter set hides auditgate's own entries. */
export function hidesOwnActivity(filters) {
  return (filters[EXCLUDE_KEY] || []).includes(OWN_ACTIVITY_PREFIX);
}

/** The filter set with auditgate's own entries hidden or shown; other exclusions are kept. */
export function withOwnActivityHidden(filters, hide) {
  const others = (filters[EXCLUDE_KEY] || []).filter((prefix) => prefix !== OWN_ACTIVITY_PREFIX);
  return { ...filters, [EXCLUDE_KEY]: hide ? [OWN_ACTIVITY_PREFIX, ...others] : others };
}

/** Reads the whole view state from a query string. */
export function readLocation(search = window.location.search) {
  const params = new URLSearchParams(search);
  const filters = emptyFilters();
  for (const key of FILTER_KEYS) filters[key] = (params.get(key) || '').trim();
  filters[EXCLUDE_KEY] = cleanList(params.getAll(EXCLUDE_KEY));
  const limit = Number(params.get('limit'));
  return {
    filters,
    limit: PAGE_SIZES.includes(limit) ? limit : DEFAULT_LIMIT,
    count: params.get('count') === '1' || params.get('count') === 'true',
    live: params.get('live') === '1' || params.get('live') === 'true',
    cursor: params.get('cursor') || null,
    order: params.get('order') === 'asc' ? 'asc' : 'desc',
    entry: params.get('entry') || null,
  };
}

/** The query string for a view state (empty values left out, so URLs stay short). */
export function toLocationSearch(view) {
  const params = filterParams(view.filters);
  if (view.limit && view.limit !== DEFAULT_LIMIT) params.set('limit', String(view.limit));
  if (view.count) params.set('count', '1');
  if (view.live) params.set('live', '1');
  if (view.cursor) {
    params.set('cursor', view.cursor);
    if (view.order === 'asc') params.set('order', 'asc');
  }
  if (view.entry) params.set('entry', view.entry);
  const text = params.toString();
  return text ? `?${text}` : '';
}

/** Only the non-empty filters, as API parameters. */
export function filterParams(filters) {
  const params = new URLSearchParams();
  for (const key of FILTER_KEYS) {
    const value = (filters[key] || '').trim();
    if (value) params.set(key, value);
  }
  for (const prefix of cleanList(filters[EXCLUDE_KEY])) params.append(EXCLUDE_KEY, prefix);
  return params;
}

/** Whether any filter other than the time range is set. */
export function hasNonTimeFilters(filters) {
  return FILTER_KEYS.some((key) => key !== 'since' && key !== 'until' && (filters[key] || '').trim() !== '')
    || cleanList(filters[EXCLUDE_KEY]).length > 0;
}

export function sameFilters(a, b) {
  const excludedA = cleanList(a[EXCLUDE_KEY]);
  const excludedB = cleanList(b[EXCLUDE_KEY]);
  return FILTER_KEYS.every((key) => (a[key] || '') === (b[key] || ''))
    && excludedA.length === excludedB.length && excludedA.every((prefix, i) => prefix === excludedB[i]);
}

/** Which preset a since/until pair is: '1h' | '24h' | '7d' | 'all' | 'custom'. */
export function rangePreset(filters) {
  const since = filters.since || '';
  const until = filters.until || '';
  if (!since && !until) return 'all';
  if (!until && ['1h', '24h', '7d'].includes(since)) return since;
  return 'custom';
}

const RELATIVE = /^(\d+)\s*([smhdw])$/i;
const UNIT_MS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };

/** Resolves a since/until value (RFC 3339 or relative like "24h") to a Date, or null. */
export function resolveTime(value, now = Date.now()) {
  if (!value) return null;
  const relative = value.match(RELATIVE);
  if (relative) return new Date(now - Number(relative[1]) * UNIT_MS[relative[2].toLowerCase()]);
  const ms = Date.parse(value.replace(/(\.\d{3})\d+/, '$1'));
  return Number.isNaN(ms) ? null : new Date(ms);
}

export const isRelative = (value) => RELATIVE.test(value || '');

/** A datetime-local value ("2026-11-26T14:30", the viewer's zone) as UTC RFC 3339. */
export function localInputToUtc(value) {
  if (!value) return '';
  const date = new Date(value); // datetime-local text without a zone parses as local time
  if (Number.isNaN(date.getTime())) return '';
  return date.toISOString().replace(/\.000Z$/, 'Z');
}

/** An RFC 3339 time as a datetime-local value in the viewer's zone ('' if not absolute). */
export function utcToLocalInput(value) {
  if (!value || isRelative(value)) return '';
  const date = resolveTime(value);
  if (!date) return '';
  const pad = (n) => String(n).padStart(2, '0');
  const base = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  return date.getSeconds() ? `${base}:${pad(date.getSeconds())}` : base;
}

/** The action input's text for a filter set: "user.deleted", or "user.*" for a prefix. */
export function actionInputValue(filters) {
  if (filters.action) return filters.action;
  if (filters.action_prefix) return `${filters.action_prefix}*`;
  return '';
}

/** Splits the action input: a trailing "*" asks for a prefix match. */
export function parseActionInput(text) {
  const value = (text || '').trim();
  if (value.endsWith('*')) return { action: '', action_prefix: value.replace(/\*+$/, '') };
  return { action: value, action_prefix: '' };
}

/** Human labels for filter chips. */
export const FILTER_LABELS = {
  q: 'Text', actor: 'User', action: 'Action', action_prefix: 'Action', resource_type: 'Resource type',
  resource_id: 'Resource id', outcome: 'Outcome', status: 'Status', ip: 'IP', since: 'Since', until: 'Until',
  log_id: 'Log', exclude_action_prefix: 'Not action',
};
