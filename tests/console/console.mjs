// The operator console in a real headless Chromium, against a real api and worker (drive.py):
// an operator logs in, submits a job and watches it finish without a reload, cancels a running
// one, re-drives every failed job matching a filter and finds each action in the audit trail; a
// viewer finds no action controls, and a forged action is refused anyway. With SCREENSHOTS_DIR
// set, it saves the README's screenshots.
import { launch, step, screenshot, done } from './lib.mjs';

const URL = process.env.CONSOLE_URL;
const { context, page } = await launch();
const expect = (ok, what) => { if (!ok) throw new Error(what); };

async function login(key) {
  await page.goto(`${URL}/ui/login`);
  await page.fill('#key', key);
  await page.click('button[type=submit]');
  await page.waitForURL(/\/ui\/jobs/);
}

// A page that reloads loses this mark: finding it later proves the update came in place.
const mark = () => page.evaluate(() => { window.__noReload = true; });
const marked = () => page.evaluate(() => window.__noReload === true);
const statusIs = (text) => page.waitForFunction(
  (t) => document.querySelector('[data-testid=status]')?.textContent === t, text, { timeout: 30_000 });

async function submit(kind, payload) {
  await page.goto(`${URL}/ui/jobs`);
  await page.click('[data-testid=submit] summary');
  await page.selectOption('[data-testid=submit] select[name=kind]', kind);
  await page.fill('[data-testid=submit] textarea[name=payload]', JSON.stringify(payload));
  await page.click('[data-action=submit]');
  await page.waitForURL(/\/ui\/jobs\/[0-9a-f-]{36}$/);
  return page.url().split('/').pop();
}

await step('a wrong key is refused at the login', async () => {
  await page.goto(`${URL}/ui/login`);
  await page.fill('#key', 'jsk_' + '0'.repeat(64));
  await page.click('button[type=submit]');
  expect(await page.isVisible('.error'), 'no error shown');
  expect(page.url().endsWith('/ui/login'), `went on to ${page.url()}`);
});

await step('without a session the console sends you to the login', async () => {
  await page.goto(`${URL}/ui/jobs`);
  expect(page.url().endsWith('/ui/login'), page.url());
  await screenshot(page, 'login');
});

await step('an operator logs in; the session cookie is HttpOnly and SameSite=Strict', async () => {
  await login(process.env.OPERATOR_KEY);
  const [cookie] = (await context.cookies()).filter((c) => c.name === 'jobstack_session');
  expect(cookie && cookie.httpOnly && cookie.sameSite === 'Strict', JSON.stringify(cookie));
  expect((await page.textContent('[data-testid=who]')).includes('night-shift'), 'not logged in as night-shift');
});

let finished;
await step('a job submitted from the console finishes on its page without a reload', async () => {
  finished = await submit('sleep', { duration_ms: 2500, steps: 5 });
  await mark();
  await statusIs('succeeded');
  expect(await marked(), 'the page reloaded');
  expect((await page.textContent('.timeline')).includes('succeeded'), 'the timeline has no end');
  await screenshot(page, 'job');
});

let cancelled;
await step('a running job is cancelled from its page, which then offers a re-drive', async () => {
  cancelled = await submit('sleep', { duration_ms: 60000, steps: 60 });
  await statusIs('running');
  await page.click('[data-action=cancel]');
  await statusIs('cancelled');
  await page.waitForSelector('[data-action=redrive]');
});

await step('every failed job matching a filter is re-driven after a confirmation with its count', async () => {
  await page.goto(`${URL}/ui/jobs?status=failed&kind=fail`);
  const rows = await page.locator('tr[data-job-id]').count();
  expect(rows === 3, `${rows} failed jobs listed`);
  await screenshot(page, 'jobs');
  await page.click('[data-action=bulk-redrive]');
  expect((await page.textContent('h1')).includes('Re-drive 3 job(s)?'), await page.textContent('h1'));
  await page.click('[data-action=confirm]');
  await page.waitForURL(/done=/);
  expect((await page.textContent('.flash')).includes('3 job(s) queued again'), await page.textContent('.flash'));
});

await step('the audit trail shows each action, by whom', async () => {
  await page.goto(`${URL}/ui/audit`);
  for (const action of ['jobs.redrive', 'job.cancel']) {
    const row = page.locator(`tr[data-entry="${action}"]`).first();
    expect(await row.count() === 1, `no ${action} entry`);
    expect((await row.textContent()).includes('night-shift'), `${action} not by night-shift`);
  }
  await screenshot(page, 'audit');
});

await step('the kinds page offers pause to an operator', async () => {
  await page.goto(`${URL}/ui/kinds`);
  expect(await page.locator('[data-action=pause-kind]').count() > 0, 'no pause button');
  await screenshot(page, 'kinds');
});

let csrf;
await step('a viewer sees jobs and no action control anywhere', async () => {
  await page.click('text=Log out');
  await page.waitForURL(/\/ui\/login/);
  await login(process.env.VIEWER_KEY);
  // Each of these pages shows an operator at least one action (the steps above used them).
  for (const path of ['/ui/jobs?status=failed', `/ui/jobs/${cancelled}`, '/ui/kinds', '/ui/schedules']) {
    await page.goto(URL + path);
    const controls = await page.locator('[data-action]').count();
    expect(controls === 0, `${controls} action controls on ${path}`);
  }
  csrf = await page.inputValue('input[name=csrf]');
});

await step('a viewer\'s forged cancel is refused anyway', async () => {
  const res = await page.request.post(`${URL}/ui/jobs/${finished}/redrive`, { form: { csrf } });
  expect(res.status() === 403, `answered ${res.status()}`);
});

await done();
