// Checks, in the browser, that an entry is in the signed log.
//
// Two independent checks, both done here so the viewer does not have to take the server's word:
//  1. Inclusion: the audit path from GET /entries/{id}/proof leads from the leaf hash to the root
//     hash of a signed tree head (RFC 9162 section 2.1.3.2; node = SHA-256(0x01 || left || right)).
//  2. Content: the entry as served hashes to that leaf hash. The leaf is SHA-256(0x00 || canonical
//     entry), where the canonical entry is the JSON built by `AuditEntry::canonical_bytes` in
//     src/entry.rs: every field present, keys sorted byte-wise at every depth, no white space.
//     Numbers are copied as the server wrote them (see parseJsonKeepingNumbers) because JSON.parse
//     would turn serde_json's `3.0` into `3` and change the bytes.
// The head's Ed25519 signature is not checked here (the page has no trusted copy of the public
// key); `auditgate verify --heads` does that offline.

// ---- SHA-256 --------------------------------------------------------------------------------

const subtle = globalThis.crypto && globalThis.crypto.subtle;

/** SHA-256 of bytes; WebCrypto when the page is a secure context, else a small JS fallback. */
export async function sha256(bytes) {
  if (subtle) return new Uint8Array(await subtle.digest('SHA-256', bytes));
  return sha256Fallback(bytes);
}

export const usesWebCrypto = Boolean(subtle);

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** Plain SHA-256 (FIPS 180-4), used only where WebCrypto is unavailable (plain HTTP off-host). */
export function sha256Fallback(input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  const bitLength = bytes.length * 8;
  const padded = new Uint8Array(((bytes.length + 9 + 63) >> 6) << 6);
  padded.set(bytes);
  padded[bytes.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bitLength / 2 ** 32));
  view.setUint32(padded.length - 4, bitLength >>> 0);
  const hash = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let offset = 0; offset < padded.length; offset += 64) {
    for (let i = 0; i < 16; i += 1) w[i] = view.getUint32(offset + i * 4);
    for (let i = 16; i < 64; i += 1) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = hash;
    for (let i = 0; i < 64; i += 1) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) >>> 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    hash[0] += a; hash[1] += b; hash[2] += c; hash[3] += d;
    hash[4] += e; hash[5] += f; hash[6] += g; hash[7] += hh;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  hash.forEach((word, i) => outView.setUint32(i * 4, word));
  return out;
}

// ---- hex ----------------------------------------------------------------------------------

export function hexToBytes(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) return null;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

export const bytesToHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

const NODE_PREFIX = new Uint8Array([1]);
const LEAF_PREFIX = new Uint8Array([0]);

// ---- inclusion (RFC 9162 2.1.3.2) ---------------------------------------------------------

/**
 * Verifies an inclusion proof. Returns {ok: true, root} or {ok: false, reason}.
 * Index arithmetic uses plain division, not bit operators, so sizes above 2^31 work.
 */
export async function verifyInclusion({ leafIndex, treeSize, leafHash, auditPath, rootHash }) {
  if (!Number.isSafeInteger(leafIndex) || !Number.isSafeInteger(treeSize) || leafIndex < 0) {
    return { ok: false, reason: 'the proof has no valid leaf index or tree size' };
  }
  if (leafIndex >= treeSize) return { ok: false, reason: `leaf index ${leafIndex} is outside a tree of size ${treeSize}` };
  const leaf = hexToBytes(leafHash);
  const root = hexToBytes(rootHash);
  if (!leaf || leaf.length !== 32) return { ok: false, reason: 'the leaf hash is not a 32-byte hex string' };
  if (!root || root.length !== 32) return { ok: false, reason: 'the head root hash is not a 32-byte hex string' };
  if (!Array.isArray(auditPath)) return { ok: false, reason: 'the proof has no audit path' };
  const path = auditPath.map(hexToBytes);
  if (path.some((p) => !p || p.length !== 32)) return { ok: false, reason: 'the audit path holds a value that is not a 32-byte hex hash' };

  let fn = leafIndex;
  let sn = treeSize - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) return { ok: false, reason: 'the audit path is longer than the tree allows' };
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(concat(NODE_PREFIX, p, r));
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      }
    } else {
      r = await sha256(concat(NODE_PREFIX, r, p));
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) return { ok: false, reason: 'the audit path is shorter than the tree needs' };
  const computed = bytesToHex(r);
  if (computed !== rootHash.toLowerCase()) {
    return { ok: false, reason: 'the audit path does not lead to the signed root hash', computed };
  }
  return { ok: true, root: computed };
}

// ---- canonical entry and leaf hash --------------------------------------------------------

/** A JSON number kept as the exact text the server wrote. */
export class RawNumber {
  constructor(text) { this.text = text; }
  valueOf() { return Number(this.text); }
}

/**
 * JSON.parse, except that numbers become RawNumber so they can be written back byte for byte.
 * Throws SyntaxError on malformed input.
 */
export function parseJsonKeepingNumbers(text) {
  let at = 0;
  const fail = (what) => { throw new SyntaxError(`${what} at ${at}`); };
  const ws = () => { while (at < text.length && ' \t\n\r'.includes(text[at])) at += 1; };
  const value = () => {
    ws();
    const c = text[at];
    if (c === '{') {
      at += 1;
      const object = {};
      ws();
      if (text[at] === '}') { at += 1; return object; }
      for (;;) {
        ws();
        if (text[at] !== '"') fail('expected a key');
        const key = string();
        ws();
        if (text[at] !== ':') fail('expected ":"');
        at += 1;
        Object.defineProperty(object, key, { value: value(), enumerable: true, writable: true, configurable: true });
        ws();
        if (text[at] === ',') { at += 1; continue; }
        if (text[at] === '}') { at += 1; return object; }
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      at += 1;
      const array = [];
      ws();
      if (text[at] === ']') { at += 1; return array; }
      for (;;) {
        array.push(value());
        ws();
        if (text[at] === ',') { at += 1; continue; }
        if (text[at] === ']') { at += 1; return array; }
        fail('expected "," or "]"');
      }
    }
    if (c === '"') return string();
    if (text.startsWith('true', at)) { at += 4; return true; }
    if (text.startsWith('false', at)) { at += 5; return false; }
    if (text.startsWith('null', at)) { at += 4; return null; }
    const match = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
    match.lastIndex = at;
    const number = match.exec(text);
    if (!number || !number[0]) fail('unexpected character');
    at += number[0].length;
    return new RawNumber(number[0]);
  };
  const string = () => {
    const match = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
    match.lastIndex = at;
    const found = match.exec(text);
    if (!found) fail('bad string');
    at += found[0].length;
    return JSON.parse(found[0]);
  };
  const result = value();
  ws();
  if (at !== text.length) fail('trailing text');
  return result;
}

/** Compares by Unicode code point, which is the byte order of UTF-8 (Rust's String order). */
function compareCodePoints(a, b) {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done || y.done) return x.done === y.done ? 0 : x.done ? -1 : 1;
    const cx = x.value.codePointAt(0);
    const cy = y.value.codePointAt(0);
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

/** serde_json's compact output of a value with sorted keys (JSON.stringify escapes strings alike). */
export function canonicalJson(value) {
  if (value === null) return 'null';
  if (value instanceof RawNumber) return value.text;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) return 'null';
    return Number.isInteger(value) ? String(value) : JSON.stringify(value);
  }
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(value).sort(compareCodePoints);
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(',')}}`;
}

const CANONICAL_STRINGS = [
  'id', 'createdAt', 'logId', 'actorId', 'actorEmail', 'actorName', 'actorSource', 'tenant', 'action',
  'resourceType', 'resourceId', 'outcome', 'method', 'path', 'route', 'rule', 'ip', 'userAgent', 'requestId', 'error',
];

/**
 * The canonical form (version 1) of an entry as served by GET /entries/{id}, given that answer's
 * raw text. Returns {text} or {error} when the answer lacks something the form needs.
 */
export function canonicalEntry(rawText) {
  let served;
  try {
    served = parseJsonKeepingNumbers(rawText);
  } catch (error) {
    return { error: `the entry could not be read (${error.message})` };
  }
  if (!served || typeof served !== 'object' || Array.isArray(served)) return { error: 'the entry is not an object' };
  const own = (key) => (Object.prototype.hasOwnProperty.call(served, key) ? served[key] : undefined);
  const form = { v: new RawNumber('1') };
  for (const key of CANONICAL_STRINGS) {
    const value = own(key);
    form[key] = value === undefined ? null : value;
  }
  if (!(own('seq') instanceof RawNumber)) return { error: 'the entry has no sequence number' };
  form.seq = own('seq');
  form.status = own('status') ?? null;
  form.actorVerified = own('actorVerified') === true;
  // The canonical form holds the duration in whole microseconds; the API may serve only
  // durationMs (microseconds / 1000), from which the integer is recovered exactly.
  const us = own('durationUs');
  const ms = own('durationMs');
  if (us instanceof RawNumber || us === null) form.durationUs = us;
  else if (ms instanceof RawNumber) form.durationUs = new RawNumber(String(Math.round(Number(ms.text) * 1000)));
  else form.durationUs = null;
  const metadata = own('metadata');
  form.metadata = metadata && typeof metadata === 'object' && !Array.isArray(metadata) ? metadata : {};
  return { text: canonicalJson(form) };
}

/** SHA-256(0x00 || canonical entry) as hex, or {error}. */
export async function leafHashOfEntry(rawText) {
  const canonical = canonicalEntry(rawText);
  if (canonical.error) return canonical;
  const bytes = new TextEncoder().encode(canonical.text);
  return { hash: bytesToHex(await sha256(concat(LEAF_PREFIX, bytes))), canonical: canonical.text };
}
