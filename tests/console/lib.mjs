// Helpers for the console's browser tests: Debian's headless Chromium driven by playwright-core
// (tests/console/run.sh installs both and sets NODE_PATH), a TAP-style step reporter, screenshots.
import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

// require(), not import: only require() looks in NODE_PATH, where run.sh keeps playwright-core.
const { chromium } = createRequire(import.meta.url)('playwright-core');

export const VIEWPORT = { width: 1280, height: 800 }; // a laptop screen
const browsers = [];

// A headless Chromium and one page of VIEWPORT size. Waits give up after STEP_TIMEOUT_MS (10 s),
// so a step that waits for something that never comes fails instead of hanging.
export async function launch() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // playwright-core passes both itself (with --headless); said here so that stays true.
    args: [
      '--no-sandbox', // as root (containers, CI) Chromium's sandbox fails and it will not start
      '--disable-dev-shm-usage', // a container's /dev/shm is often 64 MB: shared memory in /tmp
    ],
  });
  browsers.push(browser);
  const context = await browser.newContext({ viewport: VIEWPORT });
  context.setDefaultTimeout(Number(process.env.STEP_TIMEOUT_MS) || 10_000);
  return { browser, context, page: await context.newPage() };
}

// step(name, fn): runs fn, prints `ok - name` or `not ok - name` and the error as TAP comments.
// The steps of a flow build on each other, so once one fails the rest are skipped, not run.
let passed = 0, failed = 0, skipped = 0;
export async function step(name, fn) {
  if (failed) {
    skipped++;
    console.log(`ok - ${name} # SKIP an earlier step failed`);
    return;
  }
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}`);
    for (const line of String(e?.stack ?? e).split('\n').slice(0, 20)) console.log(`#   ${line}`);
  }
}

// The end of a run: closes the browsers, prints the closing line, exits 1 if any step failed.
export async function done() {
  await Promise.allSettled(browsers.map((b) => b.close()));
  console.log(`${passed} passed, ${failed} failed` + (skipped ? `, ${skipped} skipped` : ''));
  process.exit(failed ? 1 : 0);
}

// A PNG of the whole page in $SCREENSHOTS_DIR/NAME.png; nothing when SCREENSHOTS_DIR is unset.
export async function screenshot(page, name) {
  const dir = process.env.SCREENSHOTS_DIR;
  if (!dir) return null;
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name.replace(/[^\w.-]+/g, '-')}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}
