// Smoke test of the harness itself (to be replaced by the console's own flow against CONSOLE_URL):
// a page of our own on 127.0.0.1 with a form and a status that script updates a second later, as
// the console's live updates will; each part a step.
import http from 'node:http';
import { launch, step, screenshot, done } from './lib.mjs';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>harness smoke</title></head>
<body><h1>Jobs — harness smoke ✓</h1>
<form id="submit"><label>Kind <input id="kind" name="kind"></label> <button>Submit job</button></form>
<p>Status: <span id="status">idle</span></p>
<script>
  document.getElementById('submit').addEventListener('submit', (e) => {
    e.preventDefault();
    const kind = document.getElementById('kind').value, status = document.getElementById('status');
    status.textContent = 'queued ' + kind;
    setTimeout(() => { status.textContent = 'succeeded ' + kind; }, 1000);
  });
</script></body></html>`;

let loads = 0; // page loads the server saw: one, unless the form reloaded the page
const server = http.createServer((req, res) => {
  if (req.url === '/') loads++;
  res.writeHead(req.url === '/' ? 200 : 404, { 'content-type': 'text/html; charset=utf-8' }).end(req.url === '/' ? PAGE : '');
});
let url, page;

await step('local page server listens on 127.0.0.1', async () => {
  await new Promise((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', ok));
  url = `http://127.0.0.1:${server.address().port}/`;
});
await step('headless Chromium launches', async () => {
  const b = await launch();
  page = b.page;
  console.log(`# Chromium ${b.browser.version()}`);
});
await step('page loads', async () => {
  await page.goto(url);
  if ((await page.title()) !== 'harness smoke') throw new Error(`title: ${await page.title()}`);
});
await step('form filled and submitted', async () => {
  await page.fill('#kind', 'resize');
  await page.click('button');
  await page.waitForFunction(() => document.getElementById('status').textContent === 'queued resize');
});
await step('status updates live, without a reload', async () => {
  await page.waitForFunction(() => document.getElementById('status').textContent === 'succeeded resize');
  if (loads !== 1) throw new Error(`the page was loaded ${loads} times`);
});
await step('screenshot (when SCREENSHOTS_DIR is set)', async () => {
  const file = await screenshot(page, 'smoke');
  if (file) console.log(`# ${file}`);
});

server.close();
await done();
