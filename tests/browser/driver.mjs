// Drives Debian's Chromium (playwright-core with the system browser at `chromium`,
// headless "new", --no-sandbox as root) through the browser test of
// tests/test_browser.py. Playwright's routing is never used: it would answer CORS
// preflights itself, and the preflights are part of what is tested.
//
//   node driver.mjs '{"mode": "resume" | "refused", "pageHost": ..., "pagePort": ...,
//                     "endpoint": "<server>/tus/", "serverUrl": ..., "size": N,
//                     "seed": N, "chunk": N, "hold": N, "throttle": bytes/s or 0,
//                     "chromium": "/usr/bin/chromium", "deadlineMs": N}'
//
// resume: load the page from pageHost:pagePort, click Upload, wait (polling the
// server's HEAD /uploads/{id} with a deadline, never a timer) until the server holds
// part of the file (0 < Upload-Offset < size: the `hold`-th chunk acknowledged and the
// next one held by the page, or, with `throttle` (Chromium's own network throttling,
// through CDP), a part acknowledged while the next PATCH crawls on the wire), reload
// the page, click Upload again and wait for the end. refused: load, click, wait for
// the failure.
//
// Prints one JSON report on stdout (what each page load saw, the server's offsets, the
// browser's console errors and failed requests) and exits 0; a step that times out or
// breaks prints the report so far with "error" and exits 1.
import { chromium } from 'playwright-core';
import { serveStatic } from './static.mjs';

const config = JSON.parse(process.argv[2]);
const report = { mode: config.mode, console: [], failedRequests: [], loads: [] };

async function until(probe, what) {
  const end = Date.now() + config.deadlineMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${config.deadlineMs} ms: ${what}`);
    await new Promise((resolve) => { setTimeout(resolve, 10); }); // a poll interval
  }
}

async function serverOffset(uploadUrl) {
  const id = uploadUrl.replace(/\/+$/, '').split('/').pop();
  const answer = await fetch(`${config.serverUrl}/uploads/${id}`, { method: 'HEAD' });
  if (answer.status !== 200) throw new Error(`HEAD /uploads/${id}: ${answer.status}`);
  return Number(answer.headers.get('Upload-Offset'));
}

const pageState = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.pageState)));

async function clickUpload(page) {
  await page.click('#upload', { timeout: config.deadlineMs });
  return until(async () => {
    const state = await pageState(page);
    return ['uploading', 'done', 'failed'].includes(state.phase) && state;
  }, 'the page to start its upload');
}

async function untilPartAcknowledged(page) {
  return until(async () => {
    const state = await pageState(page);
    if (state.phase === 'failed') throw new Error(`the upload failed: ${state.error}`);
    if (!state.url || (config.hold && !state.held)) return null;
    const offset = await serverOffset(state.url);
    // Throttled: also wait until the page has sent the PATCH from that offset, so the
    // reload cuts a request on the wire rather than landing between two.
    const inFlight = !config.throttle || state.patchOffsets.includes(offset);
    return offset > 0 && offset < config.size && inFlight && { offset, state };
  }, 'the server to acknowledge part of the upload');
}

async function untilFinished(page) {
  return until(async () => {
    const state = await pageState(page);
    return ['done', 'failed'].includes(state.phase) && state;
  }, 'the upload to finish or fail');
}

async function throttle(cdp, bytesPerSecond) {
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: bytesPerSecond,
  });
}

async function resume(context, page, url) {
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  if (config.throttle) await throttle(cdp, config.throttle);
  await page.goto(url);
  await clickUpload(page);
  const part = await untilPartAcknowledged(page);
  report.reloadedAt = part.offset;
  report.loads.push(part.state);
  await page.reload(); // still throttled: the reload cuts a PATCH body short
  if (config.throttle) await throttle(cdp, -1);
  await clickUpload(page);
  const second = await untilFinished(page);
  report.loads.push(second);
  if (second.phase !== 'done') throw new Error(`the resumed upload failed: ${second.error}`);
  report.finalOffset = await serverOffset(second.url);
}

async function refused(page, url) {
  await page.goto(url);
  await clickUpload(page);
  report.loads.push(await untilFinished(page));
}

function watch(page) {
  page.on('console', (message) => {
    if (message.type() === 'error') report.console.push(message.text());
  });
  page.on('requestfailed', (request) => {
    report.failedRequests.push({
      method: request.method(), url: request.url(), failure: request.failure()?.errorText,
    });
  });
}

function pageUrl() {
  const query = new URLSearchParams({
    endpoint: config.endpoint, size: config.size, seed: config.seed,
    chunk: config.chunk, hold: config.hold ?? 0,
  });
  return `http://${config.pageHost}:${config.pagePort}/?${query}`;
}

async function run() {
  const site = await serveStatic(config.pageHost, config.pagePort);
  const browser = await chromium.launch({
    executablePath: config.chromium,
    headless: true,
    args: [
      '--headless=new', // after playwright's own `--headless`, so this one wins
      ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
      // Loopback only: no other host resolves, so no request leaves this machine even
      // if some background service of Chromium's tried (playwright disables most).
      `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE ${config.pageHost}, EXCLUDE ${
        new URL(config.serverUrl).hostname}`,
    ],
    timeout: config.deadlineMs,
  });
  try {
    report.browser = browser.version();
    const context = await browser.newContext();
    const page = await context.newPage();
    watch(page);
    report.pageUrl = pageUrl();
    if (config.mode === 'resume') await resume(context, page, report.pageUrl);
    else await refused(page, report.pageUrl);
  } finally {
    await browser.close();
    site.close();
  }
}

try {
  await run();
  process.stdout.write(`${JSON.stringify(report)}\n`);
} catch (error) {
  report.error = String(error?.stack ?? error);
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exitCode = 1;
}
