// Hand-drawn SVG charts: activity over time, and the "top N" bar lists.
//
// Bucket keys come from GET /stats: day keys "YYYY-MM-DD" and hour keys "YYYY-MM-DDTHH", both
// UTC. The activity chart fills the gaps between buckets with zeros so that time reads evenly.

import { h, s, replace, formatNumber } from './dom.js';

const HOUR = 3600e3;
const DAY = 86400e3;

/** The UTC start of a bucket key, in ms, or NaN. */
export function bucketStart(key, unit) {
  const match = unit === 'hour'
    ? /^(\d{4})-(\d{2})-(\d{2})T(\d{2})/.exec(key)
    : /^(\d{4})-(\d{2})-(\d{2})$/.exec(key);
  if (!match) return NaN;
  return Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3]), unit === 'hour' ? Number(match[4]) : 0);
}

export function bucketKey(ms, unit) {
  const iso = new Date(ms).toISOString();
  return unit === 'hour' ? iso.slice(0, 13) : iso.slice(0, 10);
}

const floorTo = (ms, unit) => {
  const step = unit === 'hour' ? HOUR : DAY;
  return Math.floor(ms / step) * step;
};

/**
 * Evenly spaced buckets from `from` to `to` (ms, either may be null) merged with the API's
 * buckets. Falls back to the API's buckets alone when the span would be absurdly long.
 */
export function fillBuckets(buckets, unit, from, to) {
  const step = unit === 'hour' ? HOUR : DAY;
  const counts = new Map();
  for (const bucket of buckets) {
    const start = bucketStart(String(bucket.key), unit);
    if (!Number.isNaN(start)) counts.set(start, (counts.get(start) || 0) + (Number(bucket.count) || 0));
  }
  const starts = [...counts.keys()].sort((a, b) => a - b);
  let first = from != null ? floorTo(from, unit) : starts[0];
  let last = to != null ? floorTo(to, unit) : starts[starts.length - 1];
  if (starts.length) {
    first = Math.min(first, starts[0]);
    last = Math.max(last, starts[starts.length - 1]);
  }
  if (first === undefined || last === undefined || Number.isNaN(first) || Number.isNaN(last)) return [];
  if ((last - first) / step > 800) return starts.map((start) => ({ start, count: counts.get(start) }));
  const out = [];
  for (let t = first; t <= last; t += step) out.push({ start: t, count: counts.get(t) || 0 });
  return out;
}

function niceMax(value) {
  if (value <= 4) return Math.max(1, Math.ceil(value));
  const exponent = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    if (m * exponent >= value) return m * exponent;
  }
  return 10 * exponent;
}

const hourLabel = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
const dayLabel = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
const dayLabelUtc = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
const weekdayUtc = new Intl.DateTimeFormat(undefined, { weekday: 'short', year: 'numeric', month: 'short', day: 'numeric', timeZone: 'UTC' });
const hourTitle = new Intl.DateTimeFormat(undefined, { weekday: 'short', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });

function bucketTitle(start, unit, count) {
  const n = `${formatNumber(count)} ${count === 1 ? 'entry' : 'entries'}`;
  if (unit === 'hour') {
    return `${hourTitle.format(new Date(start))} – ${hourLabel.format(new Date(start + HOUR))}: ${n}`;
  }
  return `${weekdayUtc.format(new Date(start))} (UTC day): ${n}`;
}

function axisLabel(start, unit, previous) {
  if (unit === 'day') return dayLabelUtc.format(new Date(start));
  const date = new Date(start);
  const prev = previous == null ? null : new Date(previous);
  if (!prev || prev.toDateString() !== date.toDateString()) return `${dayLabel.format(date)} ${hourLabel.format(date)}`;
  return hourLabel.format(date);
}

/**
 * Draws the activity chart into `container`.
 * options: {unit: 'hour'|'day', from, to (ms or null), width, onSelect(startMs, endMs)}.
 */
export function renderActivityChart(container, buckets, { unit, from, to, width, onSelect }) {
  const data = fillBuckets(buckets, unit, from, to);
  if (!data.length || data.every((d) => d.count === 0)) {
    replace(container, h('div', { class: 'chart-empty', testid: 'activity-chart-empty' }, 'No activity in this range.'));
    return;
  }
  const W = Math.max(280, Math.floor(width || container.clientWidth || 600));
  const H = 168;
  const margin = { top: 10, right: 8, bottom: 24, left: 40 };
  const plotW = W - margin.left - margin.right;
  const plotH = H - margin.top - margin.bottom;
  const max = niceMax(Math.max(...data.map((d) => d.count)));
  const band = plotW / data.length;
  const barW = Math.max(1, Math.min(48, band * (band > 6 ? 0.72 : 0.9)));
  const y = (v) => margin.top + plotH - (v / max) * plotH;
  const step = unit === 'hour' ? HOUR : DAY;

  const grid = s('g', { class: 'chart-grid', 'aria-hidden': 'true' });
  for (const v of [0, max / 2, max]) {
    const yy = Math.round(y(v)) + 0.5;
    grid.append(
      s('line', { x1: margin.left, x2: W - margin.right, y1: yy, y2: yy, class: v === 0 ? 'chart-baseline' : 'chart-gridline' }),
      s('text', { x: margin.left - 8, y: yy, class: 'chart-axis-label', 'text-anchor': 'end', 'dominant-baseline': 'middle' },
        formatNumber(Number.isInteger(v) ? v : Math.round(v * 10) / 10)),
    );
  }

  const bars = s('g', { class: 'chart-bars' });
  data.forEach((d, i) => {
    const x = margin.left + i * band;
    const title = bucketTitle(d.start, unit, d.count);
    const group = s('g', { class: d.count ? 'chart-bar' : 'chart-bar is-zero', 'data-key': bucketKey(d.start, unit) },
      s('title', null, title),
      s('rect', { class: 'chart-hit', x: x, y: margin.top, width: Math.max(band, 1), height: plotH }),
      s('rect', {
        class: 'chart-fill', x: x + (band - barW) / 2, y: d.count ? Math.min(y(d.count), margin.top + plotH - 1.5) : margin.top + plotH,
        width: barW, height: d.count ? Math.max(1.5, (d.count / max) * plotH) : 0, rx: Math.min(2, barW / 3),
      }));
    if (onSelect && d.count) group.addEventListener('click', () => onSelect(d.start, d.start + step));
    bars.append(group);
  });

  // Roughly one label per 90px, aligned to bucket starts.
  const labels = s('g', { class: 'chart-xaxis', 'aria-hidden': 'true' });
  const every = Math.max(1, Math.ceil(data.length / Math.max(2, Math.floor(plotW / 90))));
  let previous = null;
  for (let i = 0; i < data.length; i += every) {
    const x = margin.left + i * band + band / 2;
    labels.append(s('text', { x, y: H - 6, class: 'chart-axis-label', 'text-anchor': i === 0 && band < 40 ? 'start' : 'middle' },
      axisLabel(data[i].start, unit, previous)));
    previous = data[i].start;
  }

  const total = data.reduce((n, d) => n + d.count, 0);
  const peak = data.reduce((best, d) => (d.count > best.count ? d : best), data[0]);
  const svg = s('svg', {
    class: 'chart', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', testid: 'activity-chart',
    'aria-label': `Entries per ${unit}: ${formatNumber(total)} in ${data.length} ${unit}s, peak ${formatNumber(peak.count)} (${bucketTitle(peak.start, unit, peak.count)})`,
  }, grid, bars, labels);
  replace(container, svg);
}

/**
 * Draws a ranked list ("top actions", "top actors") with proportional bars. Each item with a key
 * is a button that calls onPick(key).
 */
export function renderTopList(container, buckets, { testid, emptyText, onPick, nullLabel = '(none)' }) {
  const rows = (buckets || []).filter((b) => b && Number(b.count) > 0);
  if (!rows.length) {
    replace(container, h('p', { class: 'toplist-empty' }, emptyText));
    return;
  }
  const max = Math.max(...rows.map((b) => Number(b.count)));
  const list = h('ol', { class: 'toplist', testid });
  for (const bucket of rows) {
    const hasKey = bucket.key !== null && bucket.key !== undefined && String(bucket.key) !== '';
    const label = hasKey ? String(bucket.key) : nullLabel;
    const count = Number(bucket.count);
    const inner = [
      h('span', { class: 'toplist-track' },
        h('span', { class: 'toplist-bar', 'aria-hidden': 'true' }),
        h('span', { class: hasKey ? 'toplist-label' : 'toplist-label is-null', title: label }, label)),
      h('span', { class: 'toplist-count' }, formatNumber(count)),
    ];
    const item = hasKey && onPick
      ? h('button', { type: 'button', class: 'toplist-item', testid: `${testid}-item`, title: `Filter by ${label}`, onclick: () => onPick(String(bucket.key)) }, inner)
      : h('div', { class: 'toplist-item is-static', testid: `${testid}-item` }, inner);
    item.style.setProperty('--share', `${Math.max(2, (count / max) * 100)}%`);
    list.append(h('li', null, item));
  }
  replace(container, list);
}
