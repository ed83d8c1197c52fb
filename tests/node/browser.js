// The chat page in headless Chromium (Debian's `chromium`, driven by
// puppeteer-core): two pages join one room and chat; one reloads and comes
// back with the same session, still in the room, with no second onAdd.
// Usage: CHROMIUM=/usr/bin/chromium node browser.js <page url> [screenshot.png]
'use strict';
const assert = require('assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const puppeteer = require('puppeteer-core');

const [url, screenshot] = process.argv.slice(2);
if (!url || !process.env.CHROMIUM) {
  console.error('usage: CHROMIUM=<chromium binary> node browser.js <page url> [screenshot.png]');
  process.exit(2);
}
const WAIT = 10000;

async function open(browser, name) {
  // A context each: its own sessionStorage, like two people.
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 760, height: 460 });
  page.on('pageerror', (err) => console.error(`${name} page error: ${err.message}`));
  await page.goto(url);
  await page.type('#name', name);
  await page.$eval('#room', (el) => { el.value = 'lobby'; });
  await page.click('#join');
  await page.waitForFunction(() => window.chat.state && window.chat.client, { timeout: WAIT });
  return page;
}

async function say(page, msg) {
  await page.type('#text', msg);
  await page.click('#send');
}

function sees(page, from, msg) {
  return page.waitForFunction(
    (f, m) => window.chat.state && window.chat.state.messages.some((x) => x.from === f && x.msg === m),
    { timeout: WAIT }, from, msg);
}

function members(page) {
  return page.$$eval('#members li', (lis) => lis.map((li) => li.textContent).sort());
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-page-'));
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    userDataDir: profile,
    // Root in CI: no sandbox there. Loopback only.
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  try {
    const ann = await open(browser, 'ann');
    const bob = await open(browser, 'bob');
    await ann.waitForFunction(() => window.chat.added.includes('bob'), { timeout: WAIT });
    assert.deepStrictEqual(await members(ann), ['ann', 'bob']);
    assert.deepStrictEqual(await members(bob), ['ann', 'bob']);
    // Chromium offers permessage-deflate; the gateway declines it.
    assert.strictEqual(await bob.evaluate(() => window.chat.extensions), '');

    await say(ann, 'hello from ann');
    await sees(bob, 'ann', 'hello from ann');
    await say(bob, 'hi ann');
    await sees(ann, 'bob', 'hi ann');

    // A reload: the page comes back with its token from sessionStorage.
    const before = await bob.evaluate(() => window.chat.state.token);
    await bob.reload();
    await bob.waitForFunction(() => window.chat.ready && window.chat.client, { timeout: WAIT });
    await bob.evaluate(() => window.chat.ready);
    assert.strictEqual(await bob.evaluate(() => window.chat.resumed), true, 'resumed');
    assert.notStrictEqual(await bob.evaluate(() => window.chat.state.token), before, 'a fresh token');
    assert.strictEqual(await bob.evaluate(() => window.chat.state.name), 'bob');
    assert.deepStrictEqual(await members(bob), ['ann', 'bob']);
    assert(/session resumed/.test(await bob.$eval('#status', (el) => el.textContent)));
    // Still in the room, both ways.
    await say(bob, 'back after a reload');
    await sees(ann, 'bob', 'back after a reload');
    await say(ann, 'welcome back');
    await sees(bob, 'ann', 'welcome back');
    // No second onAdd, no onLeave.
    assert.deepStrictEqual(await ann.evaluate(() => window.chat.added), ['bob']);
    assert.deepStrictEqual(await ann.evaluate(() => window.chat.left), []);

    if (screenshot) await bob.screenshot({ path: screenshot });
    console.log('browser: ok');
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
})().catch((err) => {
  console.error(`browser failed: ${err.stack || err}`);
  process.exit(1);
});
