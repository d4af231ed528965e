// Small DOM and formatting helpers shared by the viewer's modules.
//
// Everything that comes from the audit log is untrusted (user agents, paths, metadata, emails are
// all chosen by whoever sent the request), so this module only ever creates nodes and sets
// textContent or attributes: there is deliberately no helper that takes HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

function applyProps(node, props) {
  if (!props) return;
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.setAttribute('class', value);
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'testid') node.setAttribute('data-testid', value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, String(value));
  }
}

function appendChildren(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) appendChildren(node, child);
    else if (child instanceof Node) node.append(child);
    else node.append(document.createTextNode(String(child)));
  }
}

/** Creates an HTML element. Strings among the children become text nodes, never markup. */
export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  applyProps(node, props);
  appendChildren(node, children);
  return node;
}

/** Creates an SVG element (same conventions as `h`). */
export function s(tag, props, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  applyProps(node, props);
  appendChildren(node, children);
  return node;
}

/** Replaces every child of `node` with `children`. */
export function replace(node, ...children) {
  node.replaceChildren();
  appendChildren(node, children);
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// Icons are static, trusted SVG drawn here so that no markup string is ever parsed.
const ICONS = {
  check: ['M3.5 8.5l3 3 6-7'],
  shield: ['M8 1.5l5.5 2v4.2c0 3.2-2.3 5.7-5.5 6.8-3.2-1.1-5.5-3.6-5.5-6.8V3.5z', 'M5.5 8l1.8 1.8L10.8 6.3'],
  close: ['M4 4l8 8', 'M12 4l-8 8'],
  up: ['M4 10l4-4 4 4'],
  down: ['M4 6l4 4 4-4'],
  right: ['M6 4l4 4-4 4'],
  filter: ['M2.5 3.5h11l-4.2 5v4l-2.6 1.2V8.5z'],
  link: ['M6.8 9.2a2.6 2.6 0 0 0 3.7 0l2-2a2.6 2.6 0 0 0-3.7-3.7l-.9.9', 'M9.2 6.8a2.6 2.6 0 0 0-3.7 0l-2 2a2.6 2.6 0 0 0 3.7 3.7l.9-.9'],
  refresh: ['M13 3.5v3.2H9.8', 'M12.6 6.5A5 5 0 1 0 13 9'],
  alert: ['M8 2l6.5 11.5h-13z', 'M8 6.5v3', 'M8 11.6v.2'],
  logout: ['M6 2.5H3.5v11H6', 'M10 5l3 3-3 3', 'M13 8H6.5'],
};

/** A 16x16 stroked icon; decorative unless a label is given. */
export function icon(name, label) {
  const paths = ICONS[name] || [];
  const svg = s('svg', {
    class: `icon icon-${name}`, viewBox: '0 0 16 16', width: 16, height: 16,
    fill: 'none', stroke: 'currentColor', 'stroke-width': 1.6,
    'stroke-linecap': 'round', 'stroke-linejoin': 'round', focusable: 'false',
    'aria-hidden': label ? null : 'true', role: label ? 'img' : null, 'aria-label': label || null,
  }, paths.map((d) => s('path', { d })));
  return svg;
}

// ---- time ---------------------------------------------------------------------------------

/** Parses an RFC 3339 timestamp (with up to nanosecond precision) into a Date, or null. */
export function parseTime(text) {
  if (typeof text !== 'string') return null;
  // Date.parse only promises millisecond precision, so trim longer fractions first.
  const trimmed = text.replace(/(\.\d{3})\d+/, '$1');
  const ms = Date.parse(trimmed);
  return Number.isNaN(ms) ? null : new Date(ms);
}

export const TIME_ZONE = (() => {
  try { return Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time'; } catch { return 'local time'; }
})();

/** The zone's short name now ("EST", "CET", "UTC", or "GMT+5:30" where there is none). */
export const TIME_ZONE_SHORT = (() => {
  try {
    const part = new Intl.DateTimeFormat(undefined, { timeZoneName: 'short' }).formatToParts(new Date())
      .find((p) => p.type === 'timeZoneName');
    return part ? part.value : TIME_ZONE;
  } catch { return TIME_ZONE; }
})();

const fmtSameYear = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23',
});
const fmtOtherYear = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23',
});
const fmtLong = new Intl.DateTimeFormat(undefined, {
  weekday: 'short', year: 'numeric', month: 'short', day: 'numeric',
  hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3, hourCycle: 'h23', timeZoneName: 'short',
});
const fmtShort = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });

/** Table form: "Nov 26, 14:03:05" in the viewer's zone (year added when not this year). */
export function formatTime(text) {
  const date = parseTime(text);
  if (!date) return text || '—';
  return (date.getFullYear() === new Date().getFullYear() ? fmtSameYear : fmtOtherYear).format(date);
}

/** Long local form with milliseconds and zone name. */
export function formatTimeLong(text) {
  const date = parseTime(text);
  return date ? fmtLong.format(date) : (text || '—');
}

/** Compact local form without seconds ("Nov 26, 14:03"). */
export function formatTimeShort(textOrDate) {
  const date = textOrDate instanceof Date ? textOrDate : parseTime(textOrDate);
  return date ? fmtShort.format(date) : '—';
}

/** "3 min ago", "2 h ago", "5 d ago" — used for head and verify ages. */
export function formatAge(textOrDate, now = Date.now()) {
  const date = textOrDate instanceof Date ? textOrDate : parseTime(textOrDate);
  if (!date) return '';
  const seconds = Math.round((now - date.getTime()) / 1000);
  if (seconds < 0) return 'just now';
  if (seconds < 45) return `${seconds} s ago`;
  if (seconds < 60 * 60) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

// ---- numbers and strings ------------------------------------------------------------------

const numberFormat = new Intl.NumberFormat();
export const formatNumber = (n) => (typeof n === 'number' && Number.isFinite(n) ? numberFormat.format(n) : '—');

export function formatDuration(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '—';
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

/** Shortens a hex hash for display: "3f2a9c…8d1e". */
export function shortHash(hex, keep = 10) {
  if (typeof hex !== 'string') return '—';
  return hex.length > keep * 2 + 1 ? `${hex.slice(0, keep)}…${hex.slice(-6)}` : hex;
}

/** Clips a string to `max` characters with an ellipsis. */
export function clip(text, max) {
  if (typeof text !== 'string') return '';
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * A short human form of a User-Agent header: "Firefox 121 · Linux", "curl/8.5.0",
 * "python-requests/2.31". Unknown agents are clipped; the full string goes in a title.
 */
export function shortUserAgent(ua) {
  if (typeof ua !== 'string' || ua.trim() === '') return '';
  const os = /Windows NT/.test(ua) ? 'Windows'
    : /iPhone|iPad|iPod/.test(ua) ? 'iOS'
      : /Android/.test(ua) ? 'Android'
        : /Mac OS X|Macintosh/.test(ua) ? 'macOS'
          : /CrOS/.test(ua) ? 'ChromeOS'
            : /Linux/.test(ua) ? 'Linux' : '';
  const browsers = [
    ['Edge', /Edg(?:e|A|iOS)?\/(\d+)/], ['Opera', /OPR\/(\d+)/], ['Firefox', /(?:Firefox|FxiOS)\/(\d+)/],
    ['Chrome', /(?:Chrome|CriOS)\/(\d+)/], ['Safari', /Version\/(\d+)[\d.]* (?:Mobile\/\S+ )?Safari/],
  ];
  if (/^Mozilla\//.test(ua)) {
    for (const [name, pattern] of browsers) {
      const match = ua.match(pattern);
      if (match) return os ? `${name} ${match[1]} · ${os}` : `${name} ${match[1]}`;
    }
    // Safari without a Version/ token (as some privacy modes and embedded views send it).
    if (/AppleWebKit\/[\d.]+.*Safari\//.test(ua)) return os ? `Safari · ${os}` : 'Safari';
    if (/bot|crawler|spider/i.test(ua)) {
      const bot = ua.match(/([A-Za-z][\w.-]*(?:bot|crawler|spider)[\w.-]*)(?:\/([\d.]+))?/i);
      if (bot) return clip(bot[0], 32);
    }
  }
  // Tools usually lead with "name/version".
  const first = ua.match(/^([A-Za-z][\w.+-]*\/[\w.+-]+)/);
  if (first) return clip(first[1], 32);
  return clip(ua, 32);
}
