// Drives the web console in headless Chromium, as tests/console.rs asks:
//
//   node tests/console/console.mjs URL TOKEN JOBID OUTDIR
//
// Signs in with TOKEN, finds job JOBID in the list, opens it, waits until
// it has succeeded, checks its curves, checkpoints (one file downloaded)
// and the workers page, saves screenshots in OUTDIR (console.png is the
// job's page), then checks that a wrong token is refused with the API's
// message. Prints one JSON line of what it saw on stdout; progress and
// failures go to stderr. Exits non-zero on any failure or after 240 s.

import { statSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const TOTAL_MS = 240_000;
const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

const [url, token, jobId, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error('usage: node console.mjs URL TOKEN JOBID OUTDIR');
  process.exit(2);
}

const overtime = setTimeout(() => {
  console.error(`console test: not done after ${TOTAL_MS / 1000} s`);
  process.exit(1);
}, TOTAL_MS);

function step(what) {
  console.error(`console test: ${what}`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function pointsOf(page, selector) {
  const value = await page.getAttribute(selector, 'data-points');
  return Number(value);
}

async function run(browser) {
  const context = await browser.newContext({
    viewport: { width: 1360, height: 900 },
    deviceScaleFactor: 1,
    acceptDownloads: true,
  });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // A refused token answers 401, which Chromium reports as a console
    // error; anything else (a script error, a refused asset) is a failure.
    if (message.type() === 'error' && !message.text().includes('status of 401')) {
      problems.push(`console: ${message.text()}`);
    }
  });

  step(`open ${url}`);
  await page.goto(url);
  await page.waitForSelector('#login-form');

  step('sign in');
  await page.fill('#token', token);
  await page.click('#sign-in');
  const row = `#jobs-table tr[data-job-id="${jobId}"]`;
  await page.waitForSelector(row);
  const jobsShown = await page.locator('#jobs-table tbody tr').count();
  await page.screenshot({ path: path.join(outDir, 'console-jobs.png') });

  step(`open job ${jobId}`);
  await page.click(`${row} a`);
  await page.waitForSelector('#job-status');
  check(page.url().endsWith(`#/jobs/${jobId}`), `the job's page is ${page.url()}`);
  step('wait for the job to succeed');
  const status = page.locator('#job-status');
  const deadline = Date.now() + 180_000;
  for (;;) {
    const shown = await status.getAttribute('data-status');
    if (shown === 'succeeded') break;
    check(shown !== 'failed' && shown !== 'cancelled', `the job ended ${shown}`);
    check(Date.now() < deadline, `the job is still ${shown} after 180 s`);
    await page.waitForTimeout(500);
  }

  step('check the curves');
  // The page polls once more after the job ends: wait for the last step.
  await page.waitForFunction(() => {
    const path = document.querySelector('#loss-chart path.series-train');
    return path && Number(path.getAttribute('data-points')) >= 2;
  });
  const trainPoints = await pointsOf(page, '#loss-chart path.series-train');
  const validPoints = await page.locator('#loss-chart path.series-valid').count()
    ? await pointsOf(page, '#loss-chart path.series-valid') : 0;
  const lrPoints = await pointsOf(page, '#lr-chart path.series-lr');
  const d = await page.getAttribute('#loss-chart path.series-train', 'd');
  check((d.match(/L/g) || []).length === trainPoints - 1, `the train path has ${trainPoints} points: ${d}`);
  const axisLabels = await page.locator('#loss-chart text').allTextContents();
  check(axisLabels.includes('Step') && axisLabels.includes('Loss'), `axis titles: ${axisLabels}`);

  step('download a checkpoint file');
  const file = page.locator('#checkpoints-table button.file-button').first();
  await file.waitFor();
  const checkpointFiles = await page.locator('#checkpoints-table button.file-button').count();
  const name = await file.getAttribute('data-file');
  const bytes = Number(await file.getAttribute('data-bytes'));
  const [download] = await Promise.all([page.waitForEvent('download'), file.click()]);
  const saved = path.join(outDir, `downloaded-${name}`);
  await download.saveAs(saved);
  check(download.suggestedFilename() === name, `saved as ${download.suggestedFilename()}`);
  check(statSync(saved).size === bytes, `${name}: ${statSync(saved).size} bytes, listed ${bytes}`);

  step('screenshot the job');
  const events = await page.locator('#events-table tr').count();
  const box = await page.locator('#loss-chart').boundingBox();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.4);
  await page.screenshot({ path: path.join(outDir, 'console.png'), fullPage: true });

  step('workers');
  await page.click('[data-nav="workers"]');
  await page.waitForSelector('#workers-table tr[data-worker-name]');
  const workers = await page.$$eval('#workers-table tr[data-worker-name]', (rows) =>
    rows.map((r) => ({ name: r.dataset.workerName, state: r.querySelector('.badge').dataset.status })));
  await page.screenshot({ path: path.join(outDir, 'console-workers.png') });

  step('a wrong token');
  await page.click('#sign-out');
  await page.waitForSelector('#login-form');
  await page.fill('#token', `${token}-wrong`);
  await page.click('#sign-in');
  await page.waitForSelector('#login-error:not([hidden])');
  const loginError = (await page.textContent('#login-error-message')).trim();
  check(loginError.length > 0, 'the sign-in error is empty');
  const stored = await page.evaluate(() => sessionStorage.getItem('lorafleet.token'));
  check(stored === null, 'a refused token stays in sessionStorage');

  check(problems.length === 0, problems.join('\n'));
  await context.close();
  return {
    jobs_shown: jobsShown,
    job_status: 'succeeded',
    train_points: trainPoints,
    valid_points: validPoints,
    lr_points: lrPoints,
    events,
    checkpoint_files: checkpointFiles,
    downloaded: { name, bytes },
    workers,
    login_error: loginError,
  };
}

let browser;
let failed = false;
try {
  step('launch chromium');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, timeout: 60_000 });
  const seen = await run(browser);
  process.stdout.write(JSON.stringify(seen) + '\n');
} catch (error) {
  failed = true;
  console.error(`console test failed: ${error.stack || error}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(overtime);
}
process.exit(failed ? 1 : 0);
