// The web viewer end to end: the real `auditgate demo` and Debian's Chromium, driven like a user
// would drive it. What the page shows is checked against what the admin API answers for the same
// question with a bearer token.
//
// Run: scripts/browser-test (installs what is missing), or `node --test tests/browser/` after
// `cargo build`. UPDATE_SCREENSHOT=1 also writes docs/viewer.png.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  BINARY, OUT_DIR, ROOT, apiClient, launchChromium, rowIds, settledRows, startDemo, urlParams, waitForRows, waitUntil,
} from './support.mjs';

// The viewer shows local time; a zone far from UTC makes the difference visible.
const TIME_ZONE = 'America/New_York';

let demo;
let browser;
let context;
let page;
let api;
const pageErrors = [];
/** Requests to anywhere but the admin listener (there must be none: no CDN, no fonts, no beacons). */
const foreignRequests = [];
/** Every API answer of 400 or more the page received, to check that each was expected. */
const failedResponses = [];

before(async () => {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  [demo, browser] = await Promise.all([startDemo(), launchChromium()]);
  api = apiClient(demo);
  context = await browser.newContext({
    viewport: { width: 1280, height: 800 }, colorScheme: 'light', timezoneId: TIME_ZONE, locale: 'en-US', acceptDownloads: true,
  });
  page = await context.newPage();
  page.setDefaultTimeout(10000);
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    // Failed requests are logged by Chromium too; they are checked one by one through `response`.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) pageErrors.push(message.text());
  });
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.origin !== new URL(demo.viewer).origin && url.protocol !== 'blob:') foreignRequests.push(request.url());
  });
  page.on('response', (response) => {
    if (response.status() >= 400) failedResponses.push(`${response.status()} ${response.request().method()} ${new URL(response.url()).pathname}${new URL(response.url()).search}`);
  });
});

after(async () => {
  if (browser) await browser.close();
  if (demo) demo.stop();
});

/** Flips one of the toolbar's switches the way a user does: by clicking its label. */
async function setToggle(testid, on) {
  const input = page.getByTestId(testid);
  if ((await input.isChecked()) !== on) await page.locator('label.toggle', { has: input }).click();
  await waitUntil(`${testid} to be ${on ? 'on' : 'off'}`, async () => (await input.isChecked()) === on);
}

/** Fills a filter field and applies the form. */
async function applyFilter(testid, value) {
  await page.getByTestId(testid).fill(value);
  await page.getByTestId('filter-apply').click();
}

async function resetFilters() {
  await page.getByTestId('filter-reset').click();
  await waitUntil('the URL to lose its filters', () => !new URL(page.url()).search);
}

test('a wrong token is refused and nothing is stored in the browser', async () => {
  await page.goto(demo.viewer);
  await page.getByTestId('signin-view').waitFor();
  await page.getByTestId('signin-token').fill('agt_not-a-real-token');
  await page.getByTestId('signin-submit').click();
  const error = page.getByTestId('signin-error');
  await error.waitFor();
  assert.match(await error.textContent(), /not accepted|unknown token/i);
  assert.equal(await page.getByTestId('app-view').isVisible(), false);
  assert.equal((await context.cookies()).length, 0);
});

test('the right token opens the viewer with an HttpOnly, SameSite=Strict, expiring session cookie', async () => {
  await page.getByTestId('signin-token').fill(demo.token);
  await page.getByTestId('signin-submit').click();
  await page.getByTestId('app-view').waitFor();
  assert.equal(await page.getByTestId('session-name').textContent(), 'demo-admin');
  const cookies = await context.cookies();
  assert.equal(cookies.length, 1, JSON.stringify(cookies));
  const [cookie] = cookies;
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.ok(cookie.expires > Date.now() / 1000 + 60, `expires ${cookie.expires}`);
  assert.ok(!cookie.value.includes(demo.token.slice(4)), 'the cookie is not the token');
  assert.ok(!page.url().includes(demo.token), 'no token in the URL');
  const storage = await page.evaluate(() => localStorage.length + sessionStorage.length);
  assert.equal(storage, 0, 'nothing in web storage');
});

test('the main view: newest first, local time with UTC on hover, coloured outcomes, integrity, chart', async () => {
  const ids = await settledRows(page);
  assert.equal(ids.length, 50);
  const seqs = await page.$$eval('[data-testid="entry-row"]', (rows) => rows.map((row) => Number(row.dataset.seq)));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a), 'newest first');

  const zone = page.locator('th.col-time [data-tz-short]');
  assert.match(await zone.textContent(), /^\((EST|EDT)\)$/);
  assert.match(await zone.getAttribute('title'), new RegExp(TIME_ZONE));
  const first = await api.get(`entries/${ids[0]}`);
  const time = page.locator('[data-testid="entry-row"]').first().locator('time');
  assert.equal(await time.getAttribute('datetime'), first.createdAt);
  assert.ok((await time.getAttribute('title')).startsWith(`${first.createdAt} (UTC)`));
  const expected = new Intl.DateTimeFormat('en-US', { timeZone: TIME_ZONE, hour: '2-digit', minute: '2-digit', hourCycle: 'h23' })
    .format(new Date(first.createdAt));
  assert.ok((await time.textContent()).includes(expected), `${await time.textContent()} shows ${expected} in ${TIME_ZONE}`);

  const colour = (outcome) => page.locator(`[data-testid="outcome-pill"][data-outcome="${outcome}"]`).first()
    .evaluate((pill) => getComputedStyle(pill).color);
  assert.notEqual(await colour('success'), await colour('failure'), 'outcomes are coloured differently');

  const badge = page.getByTestId('integrity-badge');
  await waitUntil('the integrity badge to turn green', async () => (await badge.getAttribute('data-state')) === 'good');
  assert.match(await page.getByTestId('integrity-summary').textContent(), /entries · signed/);
  await page.locator('[data-testid="activity-chart"] g.chart-bar').first().waitFor();
  await page.locator('[data-testid="top-actions-item"]').first().waitFor();
  await page.locator('[data-testid="top-actors-item"]').first().waitFor();

  await page.mouse.move(1, 1); // no hover highlight in the picture
  await page.screenshot({ path: path.join(OUT_DIR, 'viewer-light-1280.png') });
  if (process.env.UPDATE_SCREENSHOT) {
    fs.mkdirSync(path.join(ROOT, 'docs'), { recursive: true });
    fs.copyFileSync(path.join(OUT_DIR, 'viewer-light-1280.png'), path.join(ROOT, 'docs', 'viewer.png'));
  }

  const head = await api.get('log/head');
  assert.ok(head.size > 0, 'the demo has signed its traffic');
  await badge.click();
  const popover = page.getByTestId('integrity-popover');
  await popover.waitFor();
  await waitUntil('the popover to show the latest signed head', async () => {
    const text = await page.getByTestId('integrity-head').textContent();
    const size = Number((/Signed size([\d,]+)/.exec(text) || [])[1]?.replace(/,/g, ''));
    return size >= head.size ? text : false;
  });
  assert.match(await page.getByTestId('integrity-verify-result').textContent(), /Intact/);
  // The check run at sign-in is the incremental one, and says so; "Verify now" runs the full one.
  assert.match(await page.getByTestId('integrity-verify-mode').textContent(), /Incremental/);
  await page.getByTestId('integrity-verify-now').click();
  await waitUntil('the full check to be shown', async () => {
    const text = await page.getByTestId('integrity-verify-mode').textContent().catch(() => '');
    return /Full/.test(text) ? text : false;
  });
  assert.match(await page.getByTestId('integrity-verify-result').textContent(), /Intact/);
  await page.keyboard.press('Escape');
  await popover.waitFor({ state: 'hidden' });
});

test('user filter: id or email', async () => {
  await applyFilter('filter-actor', 'bob@example.com');
  await waitUntil('actor in the URL', () => urlParams(page).actor === 'bob@example.com');
  await waitForRows(page, await api.ids({ actor: 'bob@example.com' }));
  await applyFilter('filter-actor', 'user-3');
  await waitUntil('actor id in the URL', () => urlParams(page).actor === 'user-3');
  await waitForRows(page, await api.ids({ actor: 'user-3' }));
  await resetFilters();
});

test('action filter: exact, prefix with *, and suggestions from the log', async () => {
  const options = await page.$$eval('#action-suggestions option', (list) => list.map((option) => option.value));
  assert.ok(options.includes('user.deleted') && options.includes('user.*'), options.join(' '));
  await applyFilter('filter-action', 'user.deleted');
  await waitUntil('action in the URL', () => urlParams(page).action === 'user.deleted');
  await waitForRows(page, await api.ids({ action: 'user.deleted' }));
  await applyFilter('filter-action', 'user.*');
  await waitUntil('action_prefix in the URL', () => urlParams(page).action_prefix === 'user.' && !urlParams(page).action);
  await waitForRows(page, await api.ids({ action_prefix: 'user.' }));
  await resetFilters();
});

test('resource type and id filters', async () => {
  await page.getByTestId('filter-resource-type').fill('user');
  await applyFilter('filter-resource-id', '2');
  await waitUntil('resource in the URL', () => urlParams(page).resource_type === 'user' && urlParams(page).resource_id === '2');
  const expected = await api.ids({ resource_type: 'user', resource_id: '2' });
  assert.ok(expected.length > 0);
  await waitForRows(page, expected);
  await resetFilters();
});

test('outcome filter applies at once', async () => {
  await page.getByTestId('filter-outcome').selectOption('error');
  await waitUntil('outcome in the URL', () => urlParams(page).outcome === 'error');
  const expected = await api.ids({ outcome: 'error' });
  assert.ok(expected.length > 0, 'the demo has errors');
  await waitForRows(page, expected);
  // The pills of the table's rows (the detail panel and other parts of the page may hold pills of
  // entries the filter does not cover).
  const shown = await page.$$eval('[data-testid="entry-row"] [data-testid="outcome-pill"]', (pills) => [...new Set(pills.map((pill) => pill.dataset.outcome))]);
  assert.deepEqual(shown, ['error']);
  await resetFilters();
});

test('status filter: exact and by class', async () => {
  await applyFilter('filter-status', '403');
  await waitUntil('status in the URL', () => urlParams(page).status === '403');
  await waitForRows(page, await api.ids({ status: '403' }));
  await applyFilter('filter-status', '5xx');
  await waitUntil('status class in the URL', () => urlParams(page).status === '5xx');
  await waitForRows(page, await api.ids({ status: '5xx' }));
  await resetFilters();
});

test('IP filter: address and network', async () => {
  await applyFilter('filter-ip', '45.83.64.2');
  await waitUntil('ip in the URL', () => urlParams(page).ip === '45.83.64.2');
  await waitForRows(page, await api.ids({ ip: '45.83.64.2' }));
  await applyFilter('filter-ip', '203.0.113.0/24');
  await waitUntil('network in the URL', () => urlParams(page).ip === '203.0.113.0/24');
  await waitForRows(page, await api.ids({ ip: '203.0.113.0/24' }));
  await resetFilters();
});

test('free text search', async () => {
  await applyFilter('filter-q', 'legacy');
  await waitUntil('q in the URL', () => urlParams(page).q === 'legacy');
  const expected = await api.ids({ q: 'legacy' });
  assert.ok(expected.length > 1);
  await waitForRows(page, expected);
  await resetFilters();
});

test('a bad filter is shown next to its field', async () => {
  await applyFilter('filter-status', '99x');
  const error = page.getByTestId('filter-error-status');
  await error.waitFor();
  assert.match(await error.textContent(), /status/);
  assert.equal(await page.getByTestId('table-state').getAttribute('data-state'), 'invalid');
  await resetFilters();
  await error.waitFor({ state: 'hidden' });
});

test('time presets: last hour, 24 hours, 7 days narrow the rows', async () => {
  await page.getByTestId('filter-action').fill('auth.login_failed');
  await page.getByTestId('filter-apply').click();
  await setToggle('count-toggle', true);
  const total = async () => {
    await settledRows(page);
    return Number((await page.getByTestId('total').textContent()).replace(/\D/g, ''));
  };
  const all = await total();
  assert.equal(all, (await api.get('entries', { action: 'auth.login_failed', count: 'true' })).total);
  const counts = {};
  for (const [preset, hours] of [['1h', 1], ['24h', 24], ['7d', 168]]) {
    await page.getByTestId(`filter-range-${preset}`).check();
    await waitUntil(`since=${preset} in the URL`, () => urlParams(page).since === preset);
    counts[preset] = await total();
    const times = await page.$$eval('[data-testid="entry-row"] time', (list) => list.map((time) => time.getAttribute('datetime')));
    const earliest = Date.now() - hours * 3600e3 - 60e3;
    assert.ok(times.every((time) => Date.parse(time) >= earliest), `${preset}: every row is inside the range`);
  }
  assert.ok(counts['1h'] < counts['24h'] && counts['24h'] < counts['7d'] && counts['7d'] < all, JSON.stringify({ ...counts, all }));
  await setToggle('count-toggle', false);
  await resetFilters();
});

test('custom date range: local inputs become UTC bounds in the URL', async () => {
  // Yesterday and the day before, in the viewer's zone, as the datetime-local inputs take them.
  const local = (daysAgo) => {
    const parts = new Intl.DateTimeFormat('en-CA', { timeZone: TIME_ZONE, year: 'numeric', month: '2-digit', day: '2-digit' })
      .format(new Date(Date.now() - daysAgo * 86400e3));
    return `${parts}T09:30`;
  };
  await page.getByTestId('filter-range-custom').check();
  await page.getByTestId('filter-since').fill(local(3));
  await page.getByTestId('filter-until').fill(local(1));
  await page.getByTestId('filter-apply').click();
  await waitUntil('since and until in the URL', () => urlParams(page).since && urlParams(page).until);
  const { since, until } = urlParams(page);
  assert.match(since, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  // 09:30 in New York is 13:30 or 14:30 UTC, depending on daylight saving time.
  assert.match(since, /T1[34]:30:00Z$/);
  const expected = await api.ids({ since, until });
  assert.equal(expected.length, 50, 'the range is full of history');
  await waitForRows(page, expected);
  const chip = page.locator('[data-testid="filter-chip"][data-param="range"]');
  await chip.waitFor();
  await page.getByTestId('filter-chip-remove-range').click();
  await waitUntil('the range chip to clear the URL', () => !urlParams(page).since && !urlParams(page).until);
});

test('filters live in the URL: a bookmarked view opens the same way', async () => {
  const bookmark = new URL(demo.viewer);
  bookmark.searchParams.set('actor', 'alice@example.com');
  bookmark.searchParams.set('action_prefix', 'post.');
  bookmark.searchParams.set('limit', '25');
  await page.goto(bookmark.href);
  await page.getByTestId('app-view').waitFor();
  assert.equal(await page.getByTestId('filter-actor').inputValue(), 'alice@example.com');
  assert.equal(await page.getByTestId('filter-action').inputValue(), 'post.*');
  assert.equal(await page.getByTestId('page-size').inputValue(), '25');
  await waitForRows(page, await api.ids({ actor: 'alice@example.com', action_prefix: 'post.', limit: 25 }));
  await page.goBack();
  await page.goto(demo.viewer);
  await page.getByTestId('app-view').waitFor();
});

test("the viewer's own reads are folded into one row that opens on click", async () => {
  await page.goto(demo.viewer);
  await settledRows(page);
  const fold = page.getByTestId('fold-row').first();
  await fold.waitFor();
  const count = Number(await fold.getAttribute('data-count'));
  assert.ok(count >= 2, `${count} reads folded`);
  const key = await fold.getAttribute('data-fold');
  const members = page.locator(`[data-testid="entry-row"][data-fold="${key}"]`);
  assert.equal(await members.count(), count);
  assert.equal(await members.first().isVisible(), false, 'folded rows start closed');
  const toggle = fold.getByTestId('fold-toggle');
  await toggle.click();
  assert.equal(await toggle.getAttribute('aria-expanded'), 'true');
  assert.equal(await members.first().isVisible(), true);
  const actions = await members.locator('.col-action').allTextContents();
  assert.ok(actions.every((action) => action === 'audit.query'), actions.join(' '));
  await toggle.press('Enter');
  assert.equal(await members.first().isVisible(), false);
  // Asking for admin reads on purpose shows them as rows.
  await page.goto(`${demo.viewer}?action=audit.query`);
  await settledRows(page);
  assert.equal(await page.getByTestId('fold-row').count(), 0);
  assert.ok(await page.locator('[data-testid="entry-row"]').first().isVisible());
});

test("hiding auditgate's own activity changes the top lists, the total, the chart and the exports as the API says", async () => {
  // Enough admin reads that audit.query is among the top actions, whatever the demo wrote.
  for (let round = 0; round < 5; round += 1) {
    const top = await api.get('stats', { by: 'action', limit: 8 });
    if (top.buckets.some((bucket) => bucket.key === 'audit.query')) break;
    const needed = (top.buckets.at(-1)?.count ?? 0) + 1;
    for (let i = 0; i < Math.min(needed, 400); i += 1) await api.get('entries', { limit: 1 });
  }
  await page.goto(`${demo.viewer}?count=1`);
  await settledRows(page);
  const toggle = page.getByTestId('filter-hide-own');
  assert.equal(await toggle.isChecked(), false, 'everything is shown unless asked');
  const topActions = () => page.locator('[data-testid="top-actions-item"] .toplist-label').allTextContents();
  await waitUntil('audit.query among the top actions', async () => (await topActions()).includes('audit.query'));

  await setToggle('filter-hide-own', true);
  await waitUntil('the exclusion in the URL', () => urlParams(page).exclude_action_prefix === 'audit.');
  const hidden = { exclude_action_prefix: 'audit.' };
  // With auditgate's own entries hidden the answers no longer change as the viewer reads.
  const actions = await api.get('stats', { ...hidden, by: 'action', limit: 8 });
  const actors = await api.get('stats', { ...hidden, by: 'actor', limit: 8 });
  const counted = await api.get('entries', { ...hidden, count: true, limit: 1 });
  assert.ok(actions.buckets.length > 0 && actions.buckets.every((bucket) => !bucket.key.startsWith('audit.')));
  await waitUntil('the top actions of the API', async () => JSON.stringify(await topActions()) === JSON.stringify(actions.buckets.map((b) => b.key)));
  const users = await page.locator('[data-testid="top-actors-item"] .toplist-label').allTextContents();
  const expectedUsers = actors.buckets.map((bucket) => (bucket.key === '(anonymous)' ? 'anonymous' : bucket.key));
  assert.deepEqual(users, expectedUsers);
  await waitUntil('the total of the API', async () => (await page.getByTestId('total').textContent()) === `${counted.total.toLocaleString('en-US')} total`);
  const caption = await page.getByTestId('chart-caption').textContent();
  assert.ok(caption.startsWith(`${counted.total.toLocaleString('en-US')} entries`), caption);
  await waitForRows(page, await api.ids({ ...hidden, limit: 50 }));
  assert.equal(await page.getByTestId('fold-row').count(), 0, 'no admin reads left to fold');
  const chip = page.locator('[data-testid="filter-chip"][data-param="exclude_action_prefix"]');
  assert.equal(await chip.count(), 1);
  const csv = new URL(await page.getByTestId('export-csv').getAttribute('href'), page.url());
  assert.equal(csv.searchParams.get('exclude_action_prefix'), 'audit.', 'the export leaves out the same entries');

  // A bookmark of the view opens with the toggle on; removing the chip shows everything again.
  await page.goto(page.url());
  await settledRows(page);
  assert.equal(await page.getByTestId('filter-hide-own').isChecked(), true);
  await page.getByTestId('filter-chip-remove-exclude_action_prefix').click();
  await waitUntil('the exclusion to leave the URL', () => !('exclude_action_prefix' in urlParams(page)));
  assert.equal(await page.getByTestId('filter-hide-own').isChecked(), false);
  await waitUntil('audit.query back among the top actions', async () => (await topActions()).includes('audit.query'));
  await page.goto(demo.viewer);
  await settledRows(page);
});

test('keyset paging: older, newer, latest', async () => {
  const filter = { action_prefix: 'auth.' };
  await page.goto(`${demo.viewer}?action_prefix=auth.&limit=25`);
  const first = await api.get('entries', { ...filter, limit: 25 });
  await waitForRows(page, first.entries.map((entry) => entry.id), 'the first page');
  assert.equal(await page.getByTestId('page-newer').isDisabled(), true, 'no newer page on the first');

  await page.getByTestId('page-older').click();
  await waitUntil('a cursor in the URL', () => urlParams(page).cursor === first.nextCursor);
  const second = await api.get('entries', { ...filter, limit: 25, cursor: first.nextCursor });
  await waitForRows(page, second.entries.map((entry) => entry.id), 'the second page');

  await page.getByTestId('page-older').click();
  const third = await api.get('entries', { ...filter, limit: 25, cursor: second.nextCursor });
  await waitForRows(page, third.entries.map((entry) => entry.id), 'the third page');

  await page.getByTestId('page-newer').click();
  await waitForRows(page, second.entries.map((entry) => entry.id), 'the second page again');
  await page.goBack();
  await waitForRows(page, third.entries.map((entry) => entry.id), 'the third page after Back');
  await page.getByTestId('page-latest').click();
  await waitForRows(page, first.entries.map((entry) => entry.id), 'the newest page');
  assert.equal(urlParams(page).cursor, undefined);
});

test('entry detail: every field, metadata, rule, actor, and an inclusion proof that verifies', async () => {
  await page.goto(`${demo.viewer}?action=user.created&outcome=success`);
  const ids = await settledRows(page);
  assert.ok(ids.length > 1);
  const entry = await api.get(`entries/${ids[1]}`);
  const row = page.locator(`[data-testid="entry-row"][data-id="${entry.id}"]`);
  // Keyboard: focus the first row, arrow down to the second, open it with Enter.
  await page.locator('[data-testid="entry-row"]').first().focus();
  await page.keyboard.press('ArrowDown');
  assert.equal(await row.evaluate((element) => element === document.activeElement), true);
  await page.keyboard.press('Enter');
  const panel = page.getByTestId('detail-panel');
  await panel.waitFor();
  await waitUntil('the entry in the URL', () => urlParams(page).entry === entry.id);
  const text = (testid) => page.getByTestId(testid).textContent();
  await waitUntil('the detail to show the entry', async () => (await text('detail-id')) === entry.id);
  assert.equal(await text('detail-action'), 'user.created');
  assert.equal(await text('detail-rule'), 'create user');
  assert.equal(await text('detail-request-id'), entry.requestId);
  assert.equal(await text('detail-actor-email'), entry.actorEmail);
  assert.equal(await text('detail-actor-source'), 'jwt');
  assert.match(await text('detail-actor-verified'), /^Verified/);
  assert.equal(await text('detail-resource-id'), entry.resourceId);
  assert.equal(await text('detail-ip'), entry.ip);
  assert.equal(await text('detail-user-agent'), entry.userAgent);
  assert.equal(await text('detail-time-utc'), entry.createdAt);
  const metadata = await text('detail-metadata');
  assert.deepEqual(JSON.parse(metadata), entry.metadata);
  assert.ok(metadata.includes('\n  "email"'), 'metadata is pretty-printed');

  const proof = page.getByTestId('proof-status');
  await waitUntil('the proof check to finish', async () => {
    const state = await proof.getAttribute('data-state');
    if (state === 'pending') await page.getByTestId('proof-retry').click();
    return state === 'verified' ? state : false;
  }, 15000);
  assert.match(await proof.textContent(), /Verified against signed head of size/);
  assert.equal(await page.getByTestId('proof-content').getAttribute('data-state'), 'match');

  // The offline proof downloads as entry-<seq>.tlog-proof and verifies with auditgate
  // verify-proof under the log's verifier key, without the sidecar.
  const [proofDownload] = await Promise.all([page.waitForEvent('download'), page.getByTestId('proof-download').click()]);
  assert.equal(proofDownload.suggestedFilename(), `entry-${entry.seq}.tlog-proof`);
  const proofFile = path.join(OUT_DIR, `entry-${entry.seq}.tlog-proof`);
  await proofDownload.saveAs(proofFile);
  assert.match(fs.readFileSync(proofFile, 'utf8'), /^c2sp\.org\/tlog-proof@v1\nextra /);
  const vkeyFile = path.join(OUT_DIR, 'log.vkey');
  fs.writeFileSync(vkeyFile, `${(await api.get('log/key')).vkey}\n`);
  // Throws (and fails the test) unless verify-proof exits 0.
  const checked = execFileSync(BINARY, ['verify-proof', proofFile, '--vkey', vkeyFile], { encoding: 'utf8' });
  assert.match(checked, new RegExp(`: ok seq ${entry.seq} action user\\.created in `));

  await page.screenshot({ path: path.join(OUT_DIR, 'detail-light-1280.png') });
  // The open entry is part of the URL, so a pasted link opens it.
  await page.reload();
  await waitUntil('the detail to reopen from the URL', async () => (await text('detail-id').catch(() => null)) === entry.id);
  await page.keyboard.press('Escape');
  await panel.waitFor({ state: 'hidden' });
  assert.equal(urlParams(page).entry, undefined);
});

test('export buttons download exactly what the API exports for the same filters', async () => {
  await page.goto(`${demo.viewer}?action_prefix=user.&ip=198.51.100.10`);
  await settledRows(page);
  for (const format of ['csv', 'json', 'ndjson']) {
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId(`export-${format}`).click()]);
    const file = path.join(OUT_DIR, `export.${format}`);
    await download.saveAs(file);
    const downloaded = fs.readFileSync(file);
    const expected = await api.bytes('export', { action_prefix: 'user.', ip: '198.51.100.10', format });
    assert.ok(expected.length > 100, `${format} export is not empty`);
    assert.ok(downloaded.equals(expected), `${format}: the download equals the API's export`);
    assert.match(download.suggestedFilename(), new RegExp(`^auditgate-export-.*\\.${format}$`));
  }
  // "NDJSON + proofs" downloads an export that auditgate verify-export checks offline.
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-proofs').click()]);
  const file = path.join(OUT_DIR, 'export-proofs.ndjson');
  await download.saveAs(file);
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
  assert.ok(lines.length > 1, 'the proofs export holds entries');
  assert.ok('treeHead' in JSON.parse(lines[lines.length - 1]), 'the signed head ends the file');
  assert.ok('auditPath' in JSON.parse(lines[0]), 'each entry carries its proof');
  // Throws (and fails the test) unless verify-export exits 0.
  const report = execFileSync(BINARY, ['verify-export', file, '--key', path.join(demo.dataDir, 'log.key.pub')], { encoding: 'utf8' });
  assert.match(report, /intact/);
});

test('activity chart and top lists follow the filter and come from /stats', async () => {
  await page.goto(`${demo.viewer}?actor=alice@example.com`);
  await settledRows(page);
  const days = await api.get('stats', { actor: 'alice@example.com', by: 'day' });
  const keys = days.buckets.map((bucket) => bucket.key);
  await waitUntil('one bar per day with entries', async () => {
    const bars = await page.$$eval('[data-testid="activity-chart"] g.chart-bar:not(.is-zero)', (list) => list.map((bar) => bar.dataset.key));
    return JSON.stringify(bars) === JSON.stringify(keys) ? bars : bars;
  }).then((bars) => assert.deepEqual(bars, keys));
  const caption = await page.getByTestId('chart-caption').textContent();
  assert.ok(caption.startsWith(`${days.total.toLocaleString('en-US')} entries`), caption);
  const actions = await api.get('stats', { actor: 'alice@example.com', by: 'action', limit: 8 });
  const items = await page.locator('[data-testid="top-actions-item"] .toplist-label').allTextContents();
  assert.deepEqual(items, actions.buckets.map((bucket) => bucket.key));
  const users = await page.locator('[data-testid="top-actors-item"] .toplist-label').allTextContents();
  assert.deepEqual(users, ['alice@example.com']);

  // A bar of the hour chart, and a click on a top action filters by it.
  await page.getByTestId('filter-range-24h').check();
  await waitUntil('hour bars', async () => (await page.locator('[data-testid="activity-chart"] g.chart-bar').first().getAttribute('data-key'))?.length === 13);
  // The top actions of the last 24 hours, which need not start with the all-time first one.
  const first = await page.locator('[data-testid="top-actions-item"] .toplist-label').first().textContent();
  await page.locator('[data-testid="top-actions-item"]').first().click();
  await waitUntil('the clicked action in the URL', () => urlParams(page).action === first);
  await resetFilters();
});

test('live tail prepends new entries as they are logged', async () => {
  await page.goto(`${demo.viewer}?action=auth.login_failed`);
  const before = await settledRows(page);
  await setToggle('live-toggle', true);
  await waitUntil('live=1 in the URL', () => urlParams(page).live === '1');
  const response = await fetch(new URL('/login', demo.app), {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'user-agent': 'browser-test' },
    body: JSON.stringify({ email: 'eve@example.com', password: 'wrong' }),
  });
  assert.equal(response.status, 401);
  const ids = await waitUntil('the new entry at the top', async () => {
    const now = await rowIds(page);
    return now.length === Math.min(before.length + 1, 51) && now[1] === before[0] ? now : false;
  }, 15000);
  const fresh = await api.get(`entries/${ids[0]}`);
  assert.equal(fresh.actorEmail, 'eve@example.com');
  assert.equal(await page.locator('[data-testid="entry-row"]').first().getAttribute('class').then((c) => c.includes('is-new')), true);
  await setToggle('live-toggle', false);
  await waitUntil('live gone from the URL', () => urlParams(page).live === undefined);
});

test('dark theme and tablet width', async () => {
  const tablet = await browser.newContext({ viewport: { width: 768, height: 1024 }, colorScheme: 'dark', timezoneId: TIME_ZONE, locale: 'en-US' });
  try {
    const other = await tablet.newPage();
    other.setDefaultTimeout(10000);
    await other.goto(demo.viewer);
    await other.getByTestId('signin-token').fill(demo.token);
    await other.getByTestId('signin-submit').click();
    await other.locator('[data-testid="entry-row"]:not([hidden])').first().waitFor();
    await other.locator('[data-testid="activity-chart"] g.chart-bar').first().waitFor();
    const layout = await other.evaluate(() => {
      const rgb = getComputedStyle(document.body).backgroundColor.match(/\d+/g).map(Number);
      return { brightness: (rgb[0] + rgb[1] + rgb[2]) / 3, overflow: document.documentElement.scrollWidth - window.innerWidth };
    });
    assert.ok(layout.brightness < 80, `dark background: ${JSON.stringify(layout)}`);
    assert.ok(layout.overflow <= 0, `no sideways scrolling: ${JSON.stringify(layout)}`);
    assert.equal(await other.getByTestId('filters-toggle').isVisible(), true);
    await other.screenshot({ path: path.join(OUT_DIR, 'viewer-dark-768.png') });
    await other.getByTestId('filters-toggle').click();
    await other.getByTestId('filter-actor').waitFor();
    await other.screenshot({ path: path.join(OUT_DIR, 'viewer-dark-768-filters.png') });
  } finally {
    await tablet.close();
  }
});

test('routes page: learned routes busiest first with what covers them, and a draft rule to copy', async () => {
  await page.goto(demo.viewer);
  await settledRows(page);
  const data = await api.get('coverage');
  assert.equal(data.enabled, true);
  await page.getByTestId('coverage-open').click();
  await page.getByTestId('coverage-table').waitFor();
  const rows = page.locator('[data-testid="coverage-row"]');
  // The page was read a moment after the API, so the demo's own traffic may have added routes
  // since; those the API named come in the same order.
  const shown = await rows.evaluateAll((els) => els.map((el) => `${el.dataset.method} ${el.dataset.template}`));
  const expected = data.routes.flatMap((route) => route.methods.map((m) => `${m.method} ${route.template}`));
  const common = shown.filter((key) => expected.includes(key));
  assert.deepEqual(common, expected.filter((key) => common.includes(key)));
  assert.ok(common.length > 0, 'the demo traffic was learned');
  // A rule-covered route names its rule; a route only the fallback caught offers a draft.
  const covered = data.routes.flatMap((route) => route.methods.map((m) => ({ route, m }))).find(({ m }) => m.coverage === 'rule');
  assert.ok(covered, 'some demo route is covered by a rule');
  const coveredRow = page.locator(`[data-testid="coverage-row"][data-method="${covered.m.method}"][data-template="${covered.route.template}"]`);
  assert.ok((await coveredRow.getByTestId('coverage-covered').textContent()).includes(covered.m.rule));
  const drafted = data.routes.flatMap((route) => route.methods.map((m) => ({ route, m }))).find(({ m }) => m.draftRule);
  if (drafted) {
    const row = page.locator(`[data-testid="coverage-row"][data-method="${drafted.m.method}"][data-template="${drafted.route.template}"]`);
    await row.getByTestId('coverage-copy-draft').click();
    await row.getByTestId('coverage-draft').waitFor();
    assert.equal(await row.getByTestId('coverage-draft').textContent(), drafted.m.draftRule);
    assert.match(drafted.m.draftRule, /^\[\[rule\]\]$/m);
  }
  await page.getByTestId('coverage-close').click();
  assert.equal(await page.getByTestId('coverage-panel').isHidden(), true);
});

test('sign-out clears the session and the page', async () => {
  await page.goto(demo.viewer);
  await settledRows(page);
  await page.getByTestId('signout').click();
  await page.getByTestId('signin-view').waitFor();
  assert.match(await page.getByTestId('signin-notice').textContent(), /signed out/i);
  assert.equal(await page.locator('[data-testid="entry-row"]').count(), 0);
  assert.equal((await context.cookies()).filter((cookie) => cookie.name === 'auditgate_session').length, 0);
  const status = await page.evaluate(async () => (await fetch('api/v1/entries')).status);
  assert.equal(status, 401);
  await page.reload();
  await page.getByTestId('signin-view').waitFor();
});

test('no script errors, no request off the admin listener, no failed API call but the expected ones', () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(foreignRequests, []);
  const expected = [
    /^401 GET \/api\/v1\/session$/, // the probe before signing in
    /^401 POST \/api\/v1\/session$/, // the wrong token
    /^400 GET \/api\/v1\/(entries|stats)\?.*status=99x/, // the bad filter
    /^401 GET \/api\/v1\/entries$/, // the check after signing out
  ];
  const unexpected = failedResponses.filter((line) => !expected.some((pattern) => pattern.test(line)));
  assert.deepEqual(unexpected, []);
});
