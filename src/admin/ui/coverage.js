// The route coverage panel: the route templates the sidecar learned from traffic
// (`[discover] enabled = true`), busiest first, each method with the rule that covers it, or
// "generic fallback" / "not recorded", and a draft rule to copy where no rule covers it.
// Data: GET /api/v1/coverage.

import { api, ApiError } from './api.js';
import { h, $, replace, icon, formatNumber, formatTime } from './dom.js';

const COVERAGE_LABELS = {
  rule: 'rule',
  skipped: 'skipped by rule',
  fallback: 'generic fallback',
  not_recorded: 'not recorded',
};

/** Wires the top bar button and the panel; returns `reset` (clears it at sign-out). */
export function setupCoverage({ toast }) {
  const panel = $('#coverage');
  const body = $('#coverage-body');
  $('#coverage-open').prepend(icon('filter'));
  $('#coverage-close').append(icon('close', 'Close'));

  async function open() {
    panel.hidden = false;
    $('#coverage-open').setAttribute('aria-expanded', 'true');
    replace(body, h('p', { class: 'detail-loading' }, 'Loading the learned routes…'));
    try {
      render(await api('coverage'));
    } catch (error) {
      replace(body, h('p', { class: 'form-error', 'data-testid': 'coverage-error' },
        error instanceof ApiError ? error.message : 'The learned routes could not be loaded.'));
    }
    $('#coverage-title').focus();
  }

  function close() {
    panel.hidden = true;
    $('#coverage-open').setAttribute('aria-expanded', 'false');
    replace(body);
  }

  function render(data) {
    if (!data.enabled) {
      replace(body, h('p', { class: 'coverage-note', 'data-testid': 'coverage-off' },
        'Route learning is off. Set ', h('code', null, '[discover] enabled = true'),
        ' in the configuration and restart: the sidecar then learns the app\'s routes from its traffic, without changing it.'));
      return;
    }
    const limits = data.limits || {};
    const summary = h('p', { class: 'coverage-note', 'data-testid': 'coverage-summary' },
      `${formatNumber(data.routes.length)} routes learned (at most ${formatNumber(limits.maxTemplates)}; a path position with more than ${formatNumber(limits.maxValuesPerSegment)} values becomes {id}). `,
      `${formatNumber(data.unmatchedMutations)} changes were recorded only by the generic fallback since the start.`,
      data.unlearned > 0 ? ` ${formatNumber(data.unlearned)} requests were not learned: the cap was reached.` : '');
    const rows = [];
    for (const route of data.routes) {
      for (const method of route.methods) rows.push(row(route, method));
    }
    const table = h('table', { class: 'entries coverage-table', 'data-testid': 'coverage-table' },
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, 'Route'),
        h('th', { scope: 'col' }, 'Method'),
        h('th', { scope: 'col' }, 'Seen'),
        h('th', { scope: 'col' }, 'Covered by'),
        h('th', { scope: 'col' }, 'Last seen'),
        h('th', { scope: 'col' }, ''))),
      h('tbody', null, rows));
    replace(body, summary, rows.length ? table : h('p', { class: 'coverage-note' }, 'No traffic seen yet.'));
  }

  function row(route, method) {
    const covered = method.coverage === 'rule' || method.coverage === 'skipped'
      ? `${COVERAGE_LABELS[method.coverage]} “${method.rule}”`
      : COVERAGE_LABELS[method.coverage] || method.coverage;
    const classes = Object.entries(method.statusClasses || {})
      .filter(([, count]) => count > 0)
      .map(([name, count]) => `${name} ${formatNumber(count)}`)
      .join(', ');
    const cells = [
      h('td', { class: 'mono', title: route.sample ? `e.g. ${route.sample}` : null }, route.template),
      h('td', null, method.method),
      h('td', { title: classes }, formatNumber(method.count)),
      h('td', { 'data-testid': 'coverage-covered', 'data-coverage': method.coverage }, covered),
      h('td', null, formatTime(method.lastSeen)),
    ];
    const tools = h('td');
    if (method.draftRule) {
      const draft = h('pre', { class: 'json coverage-draft', 'data-testid': 'coverage-draft', hidden: true }, method.draftRule);
      const button = h('button', { type: 'button', class: 'btn btn-secondary btn-sm', 'data-testid': 'coverage-copy-draft' }, 'Copy draft rule');
      button.addEventListener('click', async () => {
        // The draft is shown too, so it can be copied by hand where the clipboard is refused
        // (plain http from another host).
        draft.hidden = false;
        try {
          await navigator.clipboard.writeText(method.draftRule);
          toast('Draft rule copied: append it to the configuration');
        } catch {
          toast('Select the draft rule below and copy it');
        }
      });
      tools.append(button, draft);
    }
    cells.push(tools);
    return h('tr', { 'data-testid': 'coverage-row', 'data-template': route.template, 'data-method': method.method }, cells);
  }

  $('#coverage-open').addEventListener('click', () => (panel.hidden ? open() : close()));
  $('#coverage-close').addEventListener('click', close);
  panel.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') { event.preventDefault(); close(); }
  });
  return { reset: close };
}
