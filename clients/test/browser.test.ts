// The demo in headless Chromium (Debian's, driven by playwright-core): two users chat.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
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

it('rich messages in the demo: edit, delete, react, reply, thread, pin, seen by', { timeout: 180_000 }, async (ctx) => {
  const opts = { viewport: { width: 1400, height: 800 } };
  const carol = await (await browser.newContext(opts)).newPage();
  const dan = await (await browser.newContext(opts)).newPage();
  const errors: string[] = [];
  ctx.onTestFailed(async () => {
    console.error('page errors:', errors.join('\n'));
    mkdirSync(artifacts, { recursive: true });
    await carol.screenshot({ path: join(artifacts, 'failed-rich-carol.png') }).catch(() => {});
    await dan.screenshot({ path: join(artifacts, 'failed-rich-dan.png') }).catch(() => {});
  });
  for (const [name, p] of [['carol', carol], ['dan', dan]] as const) {
    p.on('pageerror', (e) => errors.push(`${name}: ${e.stack ?? e}`));
    p.on('console', (m) => {
      if (m.type() === 'error') errors.push(`${name} console: ${m.text()} ${m.location().url}`);
    });
  }
  // Messages of the conversation pane (not the thread pane), by text or by id.
  const inList = (p: Page) => p.locator('.messages [data-testid=message]');
  const byText = (p: Page, text: string) => inList(p).filter({ has: p.locator('.text', { hasText: text }) });
  const byId = (p: Page, id: string) => p.locator(`.messages [data-testid=message][data-message-id="${id}"]`);
  const idOf = async (p: Page, text: string) => {
    const loc = byText(p, text);
    await loc.waitFor();
    const end = Date.now() + 15_000;
    for (;;) {
      const id = await loc.getAttribute('data-message-id');
      if (id) return id;
      if (Date.now() > end) throw new Error(`no message id for "${text}"`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  // A message's actions show on hover, as for a person with a mouse.
  const action = async (msg: Locator, name: string) => {
    await msg.hover();
    await msg.getByTestId(name).click();
  };
  const send = async (p: Page, text: string) => {
    await p.getByTestId('composer').fill(text);
    await p.getByTestId('composer').press('Enter');
  };

  await signIn(carol, 3);
  await carol.getByTestId('new-chat').fill('4');
  await carol.getByTestId('start-chat').click();
  await signIn(dan, 4);
  await send(carol, 'Lunch at noon?');
  const lunch = await idOf(carol, 'Lunch at noon?');
  await dan.getByTestId('conversation').filter({ hasText: 'Carol' }).click();
  await byId(dan, lunch).filter({ hasText: 'Lunch at noon?' }).waitFor();

  // Edit: Carol fixes her message; Dan sees the new text, labelled "edited".
  await action(byId(carol, lunch), 'action-edit');
  await carol.getByTestId('edit-input').fill('Lunch at 12:30?');
  await carol.getByTestId('edit-input').press('Enter');
  await byId(dan, lunch).filter({ hasText: 'Lunch at 12:30?' }).getByTestId('edited').waitFor();
  await byId(carol, lunch).filter({ hasText: 'Lunch at 12:30?' }).getByTestId('edited').waitFor();
  expect(await byId(dan, lunch).locator('.text').textContent()).toBe('Lunch at 12:30?');

  // Delete: Carol takes a message back; both see the tombstone, not the text.
  await send(carol, 'Oops, wrong chat');
  const oops = await idOf(carol, 'Oops, wrong chat');
  await byId(dan, oops).filter({ hasText: 'Oops, wrong chat' }).waitFor();
  await action(byId(carol, oops), 'action-delete');
  await byId(dan, oops).getByTestId('tombstone').waitFor();
  await byId(carol, oops).getByTestId('tombstone').waitFor();
  expect(await byId(dan, oops).textContent()).not.toContain('Oops');
  expect(await byId(dan, oops).getAttribute('data-deleted')).toBe('true');

  // React: Dan picks 👍; Carol taps the chip too (2, hers); Dan taps his away (1).
  const chip = (p: Page, count: number, me: boolean) => byId(p, lunch).locator(`[data-testid=reaction][data-emoji="👍"][data-count="${count}"][data-me="${me}"]`);
  await action(byId(dan, lunch), 'action-react');
  await byId(dan, lunch).locator('[data-testid=pick][data-emoji="👍"]').click();
  await chip(dan, 1, true).waitFor();
  await chip(carol, 1, false).waitFor();
  await chip(carol, 1, false).click();
  await chip(carol, 2, true).waitFor();
  await chip(dan, 2, true).waitFor();
  await chip(dan, 2, true).click();
  await chip(dan, 1, false).waitFor();
  await chip(carol, 1, true).waitFor();

  // Reply: Dan replies to the lunch message; Carol sees it with the quote above, and "1 reply".
  await action(byId(dan, lunch), 'action-reply');
  await dan.getByTestId('replying').filter({ hasText: 'Lunch at 12:30?' }).waitFor();
  await send(dan, '12:30 works');
  await byText(carol, '12:30 works').getByTestId('reply-quote').filter({ hasText: 'Lunch at 12:30?' }).waitFor();
  await byId(carol, lunch).getByTestId('thread-link').filter({ hasText: '1 reply' }).waitFor();
  await byId(dan, lunch).getByTestId('thread-link').filter({ hasText: '1 reply' }).waitFor();
  expect(await dan.getByTestId('replying').count()).toBe(0);

  // Thread: both open it (root first, then the reply); Carol answers inside; Dan sees it live.
  await byId(carol, lunch).getByTestId('thread-link').click();
  const carolPane = carol.getByTestId('thread-pane');
  await carolPane.getByTestId('message').filter({ hasText: '12:30 works' }).waitFor();
  expect(await carolPane.getByTestId('message').first().locator('.text').textContent()).toBe('Lunch at 12:30?');
  await byId(dan, lunch).getByTestId('thread-link').click();
  const danPane = dan.getByTestId('thread-pane');
  await danPane.getByTestId('message').filter({ hasText: '12:30 works' }).waitFor();
  await carolPane.getByTestId('thread-composer').fill('See you there');
  await carolPane.getByTestId('thread-composer').press('Enter');
  await danPane.getByTestId('message').filter({ hasText: 'See you there' }).waitFor();
  await danPane.getByTestId('thread-count').filter({ hasText: '2 replies' }).waitFor();
  await carolPane.getByTestId('thread-count').filter({ hasText: '2 replies' }).waitFor();
  await byId(dan, lunch).getByTestId('thread-link').filter({ hasText: '2 replies' }).waitFor();
  await byText(dan, 'See you there').getByTestId('reply-quote').filter({ hasText: 'Lunch at 12:30?' }).waitFor();

  // Pin: Dan pins the lunch message; Carol sees the mark and finds it in her pins pane, where she
  // unpins it: the mark goes for both.
  await action(byId(dan, lunch), 'action-pin');
  await byId(carol, lunch).getByTestId('pinned-mark').waitFor();
  await carol.getByTestId('pins-toggle').click();
  const pins = carol.getByTestId('pins-pane');
  await pins.getByTestId('pinned').filter({ hasText: 'Lunch at 12:30?' }).waitFor();
  await carol.getByTestId('pins-toggle').filter({ hasText: '(1)' }).waitFor();
  await pins.getByTestId('unpin').click();
  await pins.getByTestId('pinned').waitFor({ state: 'detached' });
  await byId(dan, lunch).getByTestId('pinned-mark').waitFor({ state: 'detached' });
  await byId(carol, lunch).getByTestId('pinned-mark').waitFor({ state: 'detached' });

  // Seen by: Dan has the conversation open, so he read Carol's messages. Her newest says so by
  // itself (live read receipts); asking on the first one shows it too (message_reads).
  await byText(carol, 'See you there').getByTestId('seen-by').filter({ hasText: 'Seen by Dan' }).waitFor();
  await action(byId(carol, lunch), 'action-seen');
  await byId(carol, lunch).getByTestId('seen-by').filter({ hasText: 'Seen by Dan' }).waitFor();

  mkdirSync(artifacts, { recursive: true });
  await carol.screenshot({ path: join(artifacts, 'demo-rich-carol.png') });
  await dan.screenshot({ path: join(artifacts, 'demo-rich-dan.png') });
  expect(errors).toEqual([]);
});

/** A real PNG of `w`×`h` (RGB, a gradient), encoded here with zlib: no image library. */
async function pngOf(w: number, h: number): Promise<Buffer> {
  const { deflateSync, crc32 } = await import('node:zlib');
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body) >>> 0);
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const rows: Buffer[] = [];
  for (let y = 0; y < h; y++) {
    const row = Buffer.alloc(1 + w * 3);
    for (let x = 0; x < w; x++) row.set([(x * 255) / w, (y * 255) / h, 128], 1 + x * 3);
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

it('attachments in the demo: a photo by the picker and one by drag-and-drop, seen as thumbnails by the other user', { timeout: 120_000 }, async (ctx) => {
  const opts = { viewport: { width: 1100, height: 700 } };
  const alice = await (await browser.newContext(opts)).newPage();
  const carol = await (await browser.newContext(opts)).newPage();
  const errors: string[] = [];
  ctx.onTestFailed(async () => {
    console.error('page errors:', errors.join('\n'));
    mkdirSync(artifacts, { recursive: true });
    await alice.screenshot({ path: join(artifacts, 'failed-attach-alice.png') }).catch(() => {});
    await carol.screenshot({ path: join(artifacts, 'failed-attach-carol.png') }).catch(() => {});
  });
  for (const [name, p] of [['alice', alice], ['carol', carol]] as const) {
    p.on('pageerror', (e) => errors.push(`${name}: ${e.stack ?? e}`));
    p.on('console', (m) => {
      if (m.type() === 'error') errors.push(`${name} console: ${m.text()} ${m.location().url}`);
    });
  }
  await signIn(alice, 1);
  await alice.getByTestId('new-chat').fill('3');
  await alice.getByTestId('start-chat').click();
  await alice.getByTestId('conversation').filter({ hasText: 'Carol' }).click();
  await signIn(carol, 3);

  // By the picker: a real PNG file.
  await alice.getByTestId('attach-input').setInputFiles({ name: 'living room.png', mimeType: 'image/png', buffer: await pngOf(640, 480) });
  const carolConv = carol.getByTestId('conversation').filter({ hasText: 'Alice' });
  await carolConv.filter({ hasText: '📷 Photo' }).waitFor({ timeout: 20_000 });
  await carolConv.click();
  const thumbs = carol.getByTestId('attachment-thumbnail');
  await thumbs.first().waitFor({ timeout: 20_000 });
  // The thumbnail really loaded (a decoded image, at most 320 px wide).
  await expect.poll(() => thumbs.first().evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth), { timeout: 15_000 }).toBe(320);
  // The sender sees it too, once the server has checked it.
  await alice.getByTestId('attachment-thumbnail').first().waitFor({ timeout: 20_000 });

  // By drag-and-drop onto the conversation.
  const bytes = [...(await pngOf(200, 100))];
  const drop = await alice.evaluateHandle((b: number[]) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(b)], 'key box.png', { type: 'image/png' }));
    return dt;
  }, bytes);
  await alice.getByTestId('drop-zone').dispatchEvent('drop', { dataTransfer: drop });
  await expect.poll(() => thumbs.count(), { timeout: 20_000 }).toBe(2);
  await expect.poll(() => thumbs.nth(1).evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth), { timeout: 15_000 }).toBe(200);

  // Opening it shows the full image: the link the page follows is a short-lived address.
  const [popup] = await Promise.all([carol.waitForEvent('popup'), carol.getByTestId('attachment').first().click()]);
  await popup.waitForURL(/\/api\/v1\/blobs\/|X-Amz-Signature/, { timeout: 15_000 });
  await popup.waitForLoadState();
  const size = await popup.evaluate(() => {
    const img = document.querySelector('img');
    return img ? [img.naturalWidth, img.naturalHeight] : null;
  });
  expect(size).toEqual([640, 480]);
  mkdirSync(artifacts, { recursive: true });
  await carol.screenshot({ path: join(artifacts, 'demo-attachments.png') });
  // Nothing of the file or its addresses is kept by the page.
  const kept = await alice.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  expect(kept).not.toMatch(/blobs|X-Amz|living room/);
  expect(errors).toEqual([]);
});
