// Drives Debian's headless Chromium for the Rust tests, with playwright-core (installed
// by scripts/browser-setup; NODE_PATH points at it). Prints one JSON object.
//
//   node browser.js load URL       open URL: {ok, status} or {ok: false, error}
//   node browser.js testpage URL   use wssd's WebSocket test page as a person would:
//                                  wait for "open", type and send a message, wait for
//                                  its echo, close with a code and reason
//
// Chromium reads trusted CAs from $HOME/.pki/nssdb, so the caller's HOME decides trust.
'use strict';
const { chromium } = require('playwright-core');

const [mode, url, subprotocol] = process.argv.slice(2);

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.WSSD_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    args: [
      '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
    ],
  });
  try {
    const page = await browser.newPage();
    if (mode === 'load') {
      try {
        const response = await page.goto(url, { timeout: 15000 });
        return { ok: true, status: response.status() };
      } catch (e) {
        return { ok: false, error: e.message.split('\n')[0] };
      }
    }
    if (mode === 'testpage') {
      return await testPage(page);
    }
    throw new Error('unknown mode ' + mode);
  } finally {
    await browser.close();
  }
}

async function testPage(page) {
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push('page error: ' + e.message));
  // Runs before the page's own script, outside its CSP: records every violation.
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation',
      (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
  });
  const response = await page.goto(url, { timeout: 15000 });
  const result = { status: response.status(), csp: response.headers()['content-security-policy'] };
  const text = (id) => page.locator('#' + id).textContent();
  if (subprotocol) {
    // Reconnect offering a subprotocol, as a user would type it.
    await page.waitForFunction(() => document.getElementById('state').textContent === 'open');
    await page.click('#close');
    await page.waitForFunction(() => document.getElementById('state').textContent === 'closed');
    await page.fill('#subprotocol', subprotocol);
    await page.click('#connect');
  }
  await page.waitForFunction(() => document.getElementById('state').textContent === 'open', null, { timeout: 10000 });
  result.url = await text('url');
  result.protocol = await text('protocol');
  result.extensions = await text('extensions');
  const message = 'hello from Chromium ' + Date.now();
  await page.fill('#message', message);
  await page.click('#send');
  const echo = page.locator('#log li.in').last();
  await echo.waitFor({ timeout: 10000 });
  result.sent = message;
  result.echo = await echo.textContent();
  result.rtt = await echo.locator('.rtt').textContent();
  await page.fill('#code', '4001');
  await page.fill('#reason', 'bye from the test');
  await page.click('#close');
  await page.waitForFunction(() => document.getElementById('state').textContent === 'closed', null, { timeout: 10000 });
  result.closed = await text('closed');
  result.violations = await page.evaluate(() => window.__violations);
  result.consoleErrors = consoleErrors;
  result.ok = true;
  return result;
}

main().then(
  (result) => { console.log(JSON.stringify(result)); },
  (e) => { console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e) })); process.exitCode = 1; },
);
