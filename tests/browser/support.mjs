// Helpers of the browser test: the real `auditgate demo` on free loopback ports, Debian's
// Chromium driven by playwright-core, and the admin API called with a bearer token to know what
// the page should show.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BINARY = process.env.AUDITGATE_BIN || path.join(ROOT, 'target', 'debug', 'auditgate');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** Screenshots of every run go here (inside target/, so never committed by accident). */
export const OUT_DIR = path.join(ROOT, 'target', 'browser-test');

/** The flags the project runs Chromium with, everywhere (CI runs as root, hence no sandbox). */
export const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
  '--disable-component-update', '--disable-sync', '--disable-quic',
];

/** Polls `check` until it returns a truthy value; throws with `what` and the last value after `ms`. */
export async function waitUntil(what, check, ms = 10000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      const shown = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${ms} ms waiting for ${what}; last: ${shown}`);
    }
    await new Promise((resolve) => { setTimeout(resolve, 50); });
  }
}

/**
 * Starts `auditgate demo` on free loopback ports with a fresh data directory, and resolves once
 * it has printed the viewer URL and the admin token (it prints them after its sample traffic).
 */
export async function startDemo() {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing; run cargo build first`);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'auditgate-browser-'));
  const child = spawn(BINARY, [
    'demo', '--proxy-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--data-dir', dataDir,
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the demo did not start in 30 s:\n${stdout}\n${stderr}`)), 30000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the demo exited with ${code}:\n${stdout}\n${stderr}`));
    });
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const viewer = /viewer and admin API\s+(http:\/\/\S+)/.exec(stdout);
      const token = /admin token\s+(\S+)/.exec(stdout);
      const app = /app \(through the proxy\)\s+(http:\/\/\S+)/.exec(stdout);
      if (viewer && token && app) {
        clearTimeout(timer);
        resolve({ viewer: viewer[1], token: token[1], app: app[1] });
      }
    });
  });
  const demo = {
    child,
    dataDir,
    stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
  // Never leave the demo behind, even if the test process dies on an uncaught error.
  process.once('exit', () => demo.stop());
  try {
    Object.assign(demo, await ready);
  } catch (error) {
    demo.stop();
    throw error;
  }
  return demo;
}

/** Launches Chromium with the project's flags (playwright gives it a fresh profile directory). */
export function launchChromium() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing; apt-get install chromium`);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS, timeout: 30000 });
}

/** The admin API with a bearer token: `get('entries', {action: 'x'})` → parsed JSON. */
export function apiClient(demo) {
  const url = (route, params = {}) => {
    const target = new URL(`api/v1/${route}`, demo.viewer);
    for (const [key, value] of Object.entries(params)) target.searchParams.set(key, String(value));
    return target;
  };
  const call = async (route, params) => {
    const response = await fetch(url(route, params), { headers: { Authorization: `Bearer ${demo.token}` } });
    if (!response.ok) throw new Error(`GET ${route} answered ${response.status}: ${await response.text()}`);
    return response;
  };
  return {
    url,
    async get(route, params) { return (await call(route, params)).json(); },
    async bytes(route, params) { return Buffer.from(await (await call(route, params)).arrayBuffer()); },
    async ids(params) {
      const data = await this.get('entries', params);
      return data.entries.map((entry) => entry.id);
    },
  };
}

/** The ids of the table's rows, top to bottom. */
export function rowIds(page) {
  return page.$$eval('[data-testid="entry-row"]', (rows) => rows.map((row) => row.dataset.id));
}

/** The page's query string as a plain object. */
export function urlParams(page) {
  return Object.fromEntries(new URL(page.url()).searchParams);
}

/** Waits until the table has finished loading and shows exactly `expected` (ids, in order). */
export async function waitForRows(page, expected, what = 'the table') {
  await waitUntil(`${what} to show ${expected.length} expected rows`, async () => {
    const busy = await page.getAttribute('#table-wrap', 'aria-busy');
    const ids = await rowIds(page);
    return busy !== 'true' && JSON.stringify(ids) === JSON.stringify(expected) ? ids : { busy, ids: ids.slice(0, 5), count: ids.length };
  });
}

/** Waits until the table is loaded (not busy) and returns its row ids. */
export async function settledRows(page) {
  await waitUntil('the table to finish loading', async () => (await page.getAttribute('#table-wrap', 'aria-busy')) === 'false');
  return rowIds(page);
}
