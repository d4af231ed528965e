// The entry detail panel: every field of one entry, its metadata, and its proof check.

import { api, apiUrl, ApiError } from './api.js';
import {
  h, $, replace, icon, formatTimeLong, formatNumber, formatDuration, shortHash, formatTimeShort, formatAge, TIME_ZONE,
} from './dom.js';
import { verifyInclusion, leafHashOfEntry, usesWebCrypto } from './proof.js';

const OUTCOME_LABELS = { success: 'Success', failure: 'Failure', error: 'Error', unknown: 'Unknown' };

/** The coloured outcome pill used by the table and the panel. */
export function outcomePill(outcome) {
  const known = Object.prototype.hasOwnProperty.call(OUTCOME_LABELS, outcome) ? outcome : 'unknown';
  return h('span', { class: `pill pill-${known}`, testid: 'outcome-pill', 'data-outcome': known },
    h('span', { class: 'pill-dot', 'aria-hidden': 'true' }), OUTCOME_LABELS[known] || String(outcome));
}

const str = (v) => (v === null || v === undefined || v === '' ? null : String(v));

/** Pretty JSON with token colours; every token is a text node, never parsed markup. */
function prettyJson(value) {
  const text = JSON.stringify(value, null, 2);
  const pre = h('pre', { class: 'json', testid: 'detail-metadata' });
  const token = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (let m = token.exec(text); m; m = token.exec(text)) {
    if (m.index > last) pre.append(document.createTextNode(text.slice(last, m.index)));
    if (m[1]) {
      pre.append(h('span', { class: m[2] ? 'j-key' : 'j-str' }, m[1]));
      if (m[2]) pre.append(document.createTextNode(m[2]));
    } else if (m[3]) pre.append(h('span', { class: 'j-lit' }, m[3]));
    else pre.append(h('span', { class: 'j-num' }, m[4]));
    last = token.lastIndex;
  }
  if (last < text.length) pre.append(document.createTextNode(text.slice(last)));
  return pre;
}

export function createDetail({ onFilter, onNavigate, onClose, entryUrl, toast }) {
  const panel = $('#detail');
  const body = $('#detail-body');
  const title = $('#detail-title');
  const kicker = $('#detail-kicker');
  let current = null; // {id, entry, raw}
  let generation = 0;

  $('#detail-prev').append(icon('up'));
  $('#detail-next').append(icon('down'));
  $('#detail-copy').append(icon('link'));
  $('#detail-close').append(icon('close'));
  $('#detail-close').addEventListener('click', () => onClose());
  $('#detail-prev').addEventListener('click', () => onNavigate(-1));
  $('#detail-next').addEventListener('click', () => onNavigate(1));
  $('#detail-copy').addEventListener('click', async () => {
    if (!current) return;
    const url = entryUrl(current.id);
    try {
      await navigator.clipboard.writeText(url);
      toast('Link to this entry copied');
    } catch {
      window.prompt('Copy the link to this entry:', url);
    }
  });

  const filterButton = (param, value, label, testid = `detail-filter-${param.replace(/_/g, '-')}`) => (value ? h('button', {
    type: 'button', class: 'btn btn-icon btn-xs filter-by', title: `Filter by ${label}`, 'aria-label': `Filter by ${label}`,
    testid, onclick: () => onFilter(param, value),
  }, icon('filter')) : null);

  function kv(label, value, { mono = false, title: hover, testid, extra, wrap = false } = {}) {
    const text = str(value);
    return [
      h('dt', null, label),
      h('dd', { class: [mono ? 'mono' : '', wrap ? 'wrap' : '', text ? '' : 'empty'].filter(Boolean).join(' ') || null, title: hover || null, testid: testid || null },
        value instanceof Node ? value : (text ?? '—'), extra || null),
    ];
  }

  function section(name, testid, ...content) {
    return h('section', { class: 'detail-section', testid }, h('h3', { class: 'detail-section-title' }, name), ...content);
  }

  function renderEntry(entry) {
    const actorLabel = str(entry.actorEmail) || str(entry.actorId) || str(entry.actorName);
    kicker.replaceChildren(outcomePill(entry.outcome),
      h('span', { class: 'kicker-text' }, `#${formatNumber(entry.seq)} · ${formatTimeShort(entry.createdAt)}`));
    title.textContent = str(entry.action) || '(no action)';

    const request = [str(entry.method), str(entry.path)].filter(Boolean).join(' ');
    const event = h('dl', { class: 'kv' },
      ...kv('Time', formatTimeLong(entry.createdAt), { title: `${TIME_ZONE}`, testid: 'detail-time' }),
      ...kv('UTC', entry.createdAt, { mono: true, testid: 'detail-time-utc' }),
      ...kv('Action', entry.action, { mono: true, testid: 'detail-action', extra: filterButton('action', str(entry.action), `action ${entry.action}`) }),
      ...kv('Outcome', h('span', { class: 'inline-pair' }, outcomePill(entry.outcome),
        entry.status !== null && entry.status !== undefined ? h('span', { class: 'mono' }, `HTTP ${entry.status}`) : null), { testid: 'detail-outcome' }),
      ...kv('Request', request, { mono: true, wrap: true, testid: 'detail-request' }),
      ...kv('Route', entry.route, { mono: true, wrap: true, testid: 'detail-route' }),
      ...kv('Rule', entry.rule, { testid: 'detail-rule' }),
      ...kv('Duration', typeof entry.durationMs === 'number' ? formatDuration(entry.durationMs) : null, { testid: 'detail-duration' }),
      ...kv('Request id', entry.requestId, { mono: true, wrap: true, testid: 'detail-request-id' }),
    );
    if (str(entry.error)) event.append(...kv('Error', entry.error, { wrap: true, testid: 'detail-error' }));

    const verifiedMark = entry.actorVerified
      ? h('span', { class: 'verified yes', testid: 'detail-actor-verified' }, icon('shield'), 'Verified')
      : h('span', { class: 'verified no', testid: 'detail-actor-verified' }, 'Not verified');
    const actor = h('dl', { class: 'kv' },
      ...kv('Id', entry.actorId, { mono: true, wrap: true, testid: 'detail-actor-id', extra: filterButton('actor', str(entry.actorId), `user ${entry.actorId}`) }),
      ...kv('Email', entry.actorEmail, { wrap: true, testid: 'detail-actor-email', extra: filterButton('actor', str(entry.actorEmail), `user ${entry.actorEmail}`, 'detail-filter-actor-email') }),
      ...kv('Name', entry.actorName, { wrap: true, testid: 'detail-actor-name' }),
      ...kv('Tenant', entry.tenant, { mono: true, testid: 'detail-tenant' }),
      ...kv('Source', entry.actorSource, { mono: true, testid: 'detail-actor-source' }),
      ...kv('Identity', actorLabel || entry.actorVerified
        ? h('span', { class: 'inline-pair' }, verifiedMark,
          h('span', { class: 'muted' }, entry.actorVerified ? `by ${str(entry.actorSource) || 'its source'}` : 'claimed, not proven'))
        : h('span', { class: 'muted', testid: 'detail-actor-verified' }, 'Anonymous request')),
    );

    const resource = h('dl', { class: 'kv' },
      ...kv('Type', entry.resourceType, { mono: true, testid: 'detail-resource-type', extra: filterButton('resource_type', str(entry.resourceType), `resource type ${entry.resourceType}`) }),
      ...kv('Id', entry.resourceId, { mono: true, wrap: true, testid: 'detail-resource-id', extra: filterButton('resource_id', str(entry.resourceId), `resource id ${entry.resourceId}`) }),
    );

    const client = h('dl', { class: 'kv' },
      ...kv('IP', entry.ip, { mono: true, testid: 'detail-ip', extra: filterButton('ip', str(entry.ip), `IP ${entry.ip}`) }),
      ...kv('User agent', entry.userAgent, { wrap: true, testid: 'detail-user-agent' }),
    );

    const log = h('dl', { class: 'kv' },
      ...kv('Sequence', `#${formatNumber(entry.seq)}`, { mono: true, testid: 'detail-seq' }),
      ...kv('Entry id', entry.id, { mono: true, wrap: true, testid: 'detail-id' }),
      ...kv('Log id', entry.logId, { mono: true, wrap: true, testid: 'detail-log-id', extra: filterButton('log_id', str(entry.logId), `log ${entry.logId}`) }),
    );

    const metadata = entry.metadata && typeof entry.metadata === 'object' && Object.keys(entry.metadata).length
      ? prettyJson(entry.metadata)
      : h('p', { class: 'muted', testid: 'detail-metadata' }, 'No metadata.');

    const proofBox = h('div', { class: 'proof', id: 'proof-box', testid: 'proof' },
      h('p', { class: 'proof-status', testid: 'proof-status', 'data-state': 'checking' }, h('span', { class: 'spinner spinner-sm', 'aria-hidden': 'true' }), 'Checking inclusion proof…'));

    replace(body,
      section('Event', 'detail-section-event', event),
      section('User', 'detail-section-actor', actor),
      section('Resource', 'detail-section-resource', resource),
      section('Client', 'detail-section-client', client),
      section('Metadata', 'detail-section-metadata', metadata),
      section('Integrity', 'detail-section-proof', proofBox),
      section('Position in the log', 'detail-section-log', log),
    );
  }

  function renderProof(result) {
    const box = $('#proof-box');
    if (!box) return;
    const statusLine = (state, text, iconName) => h('p', { class: `proof-status state-${state}`, testid: 'proof-status', 'data-state': state },
      iconName ? icon(iconName) : null, h('span', null, text));
    const parts = [];
    if (result.state === 'verified') {
      const head = result.proof.head;
      parts.push(statusLine('verified', `Verified against signed head of size ${formatNumber(head.size)} at ${formatTimeLong(head.timestamp)}`, 'shield'));
    } else if (result.state === 'failed') {
      parts.push(statusLine('failed', `Proof check failed: ${result.reason}`, 'alert'));
    } else if (result.state === 'pending') {
      parts.push(statusLine('pending', result.reason, null));
    } else {
      parts.push(statusLine(result.state, result.reason, result.state === 'error' ? 'alert' : null));
    }

    if (result.content) {
      const c = result.content;
      parts.push(h('p', { class: `proof-content state-${c.state}`, testid: 'proof-content', 'data-state': c.state },
        c.state === 'match' ? icon('check') : c.state === 'mismatch' ? icon('alert') : null, h('span', null, c.text)));
    }

    if (result.proof) {
      const p = result.proof;
      const head = p.head || {};
      parts.push(h('dl', { class: 'kv proof-details', testid: 'proof-details' },
        ...kv('Leaf index', formatNumber(p.leafIndex), { mono: true }),
        ...kv('Leaf hash', shortHash(p.leafHash, 14), { mono: true, title: p.leafHash }),
        ...kv('Audit path', `${Array.isArray(p.auditPath) ? p.auditPath.length : 0} hashes`),
        ...kv('Tree size', formatNumber(p.treeSize), { mono: true }),
        ...kv('Root hash', shortHash(head.rootHash, 14), { mono: true, title: head.rootHash }),
        ...kv('Signed at', head.timestamp ? `${formatTimeShort(head.timestamp)} (${formatAge(head.timestamp)})` : null, { title: head.timestamp }),
        ...kv('Key id', head.keyId, { mono: true }),
      ));
      parts.push(h('p', { class: 'proof-note' },
        `Recomputed in this browser with ${usesWebCrypto ? 'WebCrypto' : 'a JavaScript'} SHA-256 (RFC 9162 inclusion proof). The head's signature is checked offline by `,
        h('code', null, 'auditgate verify --heads'), '.'));
      // The same proof as a self-contained file (C2SP tlog-proof: the entry, its audit path and
      // the signed checkpoint) an auditor keeps and checks offline, with auditgate or any C2SP
      // client. Same-origin, so the session cookie authenticates the download as it does every
      // other call.
      const seq = current && current.entry && Number.isInteger(current.entry.seq) ? current.entry.seq : p.seq;
      if (Number.isInteger(seq)) {
        parts.push(h('p', { class: 'proof-note' },
          h('a', {
            class: 'btn btn-secondary btn-sm', testid: 'proof-download', download: `entry-${seq}.tlog-proof`,
            href: apiUrl(`entries/${encodeURIComponent(String(seq))}/tlog-proof`),
            title: 'Download this entry with its inclusion proof and the signed checkpoint, to check offline',
          }, 'Download offline proof'),
          ' Check it with ', h('code', null, `auditgate verify-proof entry-${seq}.tlog-proof --vkey log.vkey`), '.'));
      }
    }
    if (result.retry) {
      parts.push(h('button', { type: 'button', class: 'btn btn-secondary btn-sm', testid: 'proof-retry', onclick: () => loadProof(current.id, generation) },
        icon('refresh'), 'Check again'));
    }
    replace(box, ...parts);
  }

  async function loadProof(id, gen) {
    const box = $('#proof-box');
    if (box) {
      replace(box, h('p', { class: 'proof-status', testid: 'proof-status', 'data-state': 'checking' },
        h('span', { class: 'spinner spinner-sm', 'aria-hidden': 'true' }), 'Checking inclusion proof…'));
    }
    let proof;
    try {
      proof = await api(`entries/${encodeURIComponent(id)}/proof`);
    } catch (error) {
      if (gen !== generation) return;
      if (error instanceof ApiError && (error.status === 404 || error.status === 409)) {
        const known = error.body && typeof error.body.error === 'string';
        renderProof({
          state: known ? 'pending' : 'unavailable',
          reason: known
            ? `No signed tree head covers this entry yet (${error.body.error}). Heads are signed every few seconds or entries; check again shortly.`
            : 'Inclusion proofs are not available on this server.',
          retry: known,
        });
      } else if (error instanceof ApiError) {
        renderProof({ state: 'error', reason: `The proof could not be fetched: ${error.message}`, retry: error.status !== 401 });
      }
      return;
    }
    if (gen !== generation) return;
    const entry = current.entry;
    const head = proof && proof.head;
    if (!proof || !head || typeof head !== 'object') {
      renderProof({ state: 'failed', reason: 'the server sent a proof without a signed head', proof: null });
      return;
    }
    let verdict;
    if (entry && Number.isInteger(entry.seq) && proof.seq !== undefined && proof.seq !== entry.seq) {
      verdict = { ok: false, reason: `the proof is for entry #${proof.seq}, not #${entry.seq}` };
    } else if (entry && Number.isInteger(entry.seq) && proof.leafIndex !== entry.seq - 1) {
      verdict = { ok: false, reason: `leaf index ${proof.leafIndex} does not match sequence number #${entry.seq}` };
    } else if (Number.isInteger(head.size) && proof.treeSize !== head.size) {
      verdict = { ok: false, reason: `the proof is for a tree of size ${proof.treeSize} but the head signs size ${head.size}` };
    } else {
      verdict = await verifyInclusion({
        leafIndex: proof.leafIndex, treeSize: proof.treeSize, leafHash: proof.leafHash, auditPath: proof.auditPath, rootHash: head.rootHash,
      });
    }

    let content = null;
    if (current.raw) {
      const leaf = await leafHashOfEntry(current.raw);
      if (leaf.error) content = { state: 'unknown', text: `The entry's content could not be hashed here (${leaf.error}).` };
      else if (typeof proof.leafHash === 'string' && leaf.hash === proof.leafHash.toLowerCase()) {
        content = { state: 'match', text: 'The entry as shown hashes to this leaf: its content is what was signed.' };
      } else {
        content = { state: 'mismatch', text: 'The entry as shown does not hash to its leaf hash. Its content may have been changed after it was logged; run auditgate verify.' };
      }
    }
    if (gen !== generation) return;
    renderProof(verdict.ok
      ? { state: 'verified', proof, content }
      : { state: 'failed', reason: verdict.reason, proof, content });
  }

  async function open(id, known, { focus = true } = {}) {
    generation += 1;
    const gen = generation;
    current = { id, entry: known || null, raw: null };
    panel.hidden = false;
    document.body.classList.add('has-detail');
    if (known) renderEntry(known);
    else {
      kicker.replaceChildren();
      title.textContent = 'Loading entry…';
      replace(body, h('div', { class: 'detail-loading' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Loading…'));
    }
    if (focus) title.focus({ preventScroll: true });
    try {
      const raw = await api(`entries/${encodeURIComponent(id)}`, { text: true });
      if (gen !== generation) return;
      const entry = JSON.parse(raw);
      current.raw = raw;
      current.entry = entry;
      renderEntry(entry);
    } catch (error) {
      if (gen !== generation || !(error instanceof ApiError || error instanceof SyntaxError)) return;
      if (!known) {
        title.textContent = error.status === 404 ? 'Entry not found' : 'Entry could not be loaded';
        replace(body, h('div', { class: 'state-box state-error', testid: 'detail-error-state' },
          h('p', null, error.status === 404 ? `There is no entry with id ${id}.` : error.message)));
        return;
      }
    }
    loadProof(id, gen);
  }

  function close() {
    generation += 1;
    current = null;
    panel.hidden = true;
    document.body.classList.remove('has-detail');
  }

  return {
    open,
    close,
    get currentId() { return current ? current.id : null; },
    get isOpen() { return !panel.hidden; },
  };
}
