// The demo in headless Chromium (Debian's, driven by playwright-core): two users chat.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { IndabaServer } from './server.js';
// @ts-expect-error plain ESM helper without types
import { serveDemo } from '../demo/serve.mjs';

const clientsDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const artifacts = join(clientsDir, 'artifacts');
const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let server: IndabaServer;
let browser: Browser;
let base = '';
let proxy: { url: string; close(): Promise<void> } | null = null;

beforeAll(async () => {
  if (!existsSync(chromiumPath)) throw new Error(`no Chromium at ${chromiumPath} (apt-get install chromium, or set CHROMIUM_PATH)`);
  server = new IndabaServer();
  await server.start();
  // The single-node program serves the demo at `/` from the files embedded when it was built.
  // Use that route when it serves this checkout's build; else serve dist/ here and proxy.
  const local = readFileSync(join(clientsDir, 'demo/dist/app.js'), 'utf8');
  const served = await fetch(`${server.url}/app.js`).then((r) => (r.ok ? r.text() : ''), () => '');
  if (served === local) {
    base = server.url;
  } else {
    proxy = await serveDemo({ target: server.url });
    base = proxy!.url;
    console.warn(`demo: the server's / ${served ? 'serves another build' : 'is missing'}; serving clients/demo/dist through a proxy`);
  }
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
  });
});

afterAll(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.dispose();
});

async function signIn(page: Page, user: number) {
  await page.goto(base);
  const dev = await fetch(`${server.url}/api/v1/dev/token/?user_id=${user}`);
  if (dev.ok) {
    await page.getByTestId(`signin-${user}`).click();
  } else {
    // No dev tokens in this binary: sign in with a token minted by `indaba token`.
    await page.locator('summary').click();
    await page.getByTestId('token').fill(await server.token(user));
    await page.getByTestId('use-token').click();
  }
  await page.locator('[data-testid=connection][data-state=open]').waitFor({ timeout: 15_000 });
}

it('two users chat: typing, the message, unread count, presence and the read tick', async (ctx) => {
  const opts = { viewport: { width: 1100, height: 640 } };
  const alice = await (await browser.newContext(opts)).newPage();
  const bob = await (await browser.newContext(opts)).newPage();
  const errors: string[] = [];
  ctx.onTestFailed(async () => {
    console.error('page errors:', errors.join('\n'));
    mkdirSync(artifacts, { recursive: true });
    await alice.screenshot({ path: join(artifacts, 'failed-alice.png') }).catch(() => {});
    await bob.screenshot({ path: join(artifacts, 'failed-bob.png') }).catch(() => {});
  });
  for (const [name, p] of [['alice', alice], ['bob', bob]] as const) {
    p.on('pageerror', (e) => errors.push(`${name}: ${e.stack ?? e}`));
    p.on('console', (m) => {
      if (m.type() === 'error') errors.push(`${name} console: ${m.text()} ${m.location().url}`);
    });
  }

  await signIn(alice, 1);
  await alice.getByTestId('new-chat').fill('2');
  await alice.getByTestId('start-chat').click();
  const aliceConv = alice.getByTestId('conversation').filter({ hasText: 'Bob' });
  await aliceConv.waitFor();
  await expect(aliceConv.getByTestId('presence').getAttribute('data-presence')).resolves.toBe('offline');

  await signIn(bob, 2);
  // Bob comes online: Alice's dot turns green.
  await aliceConv.locator('[data-presence=online]').waitFor({ timeout: 15_000 });

  // Alice starts typing: Bob sees it (the conversation appears in his list, "typing…").
  await alice.getByTestId('composer').click();
  await alice.keyboard.type('Hello B', { delay: 30 });
  const bobConv = bob.getByTestId('conversation').filter({ hasText: 'Alice' });
  await bobConv.filter({ hasText: 'typing…' }).waitFor({ timeout: 15_000 });

  await alice.keyboard.type('ob!', { delay: 30 });
  await alice.keyboard.press('Enter');
  // Bob: the message, unread.
  await bobConv.filter({ hasText: 'Hello Bob!' }).getByTestId('unread').filter({ hasText: '1' }).waitFor({ timeout: 15_000 });
  const sent = (...statuses: string[]) =>
    alice.locator(statuses.map((s) => `[data-testid=message][data-status=${s}]`).join(', ')).filter({ hasText: 'Hello Bob!' });
  await sent('delivered', 'read').waitFor({ timeout: 15_000 });

  // Bob opens the conversation: he sees the message, reads it; Alice gets the read tick.
  await bobConv.click();
  await bob.getByTestId('message').filter({ hasText: 'Hello Bob!' }).waitFor();
  await sent('read').locator('[data-testid=tick]').waitFor({ timeout: 15_000 });
  await expect(bobConv.getByTestId('unread').count()).resolves.toBe(0);

  // In the open conversation, typing shows under the messages; Bob replies.
  await alice.keyboard.type('Are you th', { delay: 30 });
  await bob.getByTestId('typing').filter({ hasText: 'Alice is typing…' }).waitFor({ timeout: 15_000 });
  await bob.getByTestId('composer').fill('Hi Alice, I am here.');
  await bob.getByTestId('composer').press('Enter');
  await alice.getByTestId('message').filter({ hasText: 'Hi Alice, I am here.' }).waitFor({ timeout: 15_000 });
  await alice.keyboard.press('Control+A');
  await alice.keyboard.press('Backspace');

  mkdirSync(artifacts, { recursive: true });
  await alice.screenshot({ path: join(artifacts, 'demo.png') });
  await bob.screenshot({ path: join(artifacts, 'demo-bob.png') });
  expect(existsSync(join(artifacts, 'demo.png'))).toBe(true);
  expect(errors).toEqual([]);
});
