// The SSE + REST fallback against the real server. These need the REST/SSE endpoints
// (GET /api/v1/events/, POST /api/v1/conversations/{id}/messages/, …). With a binary that
// lacks them the suite is skipped, loudly; INDABA_TEST_FALLBACK=1 makes that a failure instead.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { WebSocketConstructor } from '@indaba/client';
import { IndabaServer, sleep, until } from './server.js';
import { Clients, collect, connected, waitState } from './helpers.js';

let server: IndabaServer;
let clients: Clients;
let available = false;

beforeAll(async () => {
  server = new IndabaServer();
  await server.start();
  clients = new Clients(server);
  const token = await server.token(1);
  const ctrl = new AbortController();
  const r = await fetch(`${server.url}/api/v1/events/`, { headers: { Authorization: `Bearer ${token}` }, signal: ctrl.signal });
  ctrl.abort();
  const post = await fetch(`${server.url}/api/v1/messages/`, { method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body: '{}' });
  available = r.status === 200 && (r.headers.get('content-type') ?? '').includes('text/event-stream') && post.status !== 404 && post.status !== 405;
  if (!available) {
    const msg = `the server has no SSE/REST messaging endpoints (events: ${r.status}, POST messages: ${post.status})`;
    if (process.env.INDABA_TEST_FALLBACK === '1') throw new Error(msg);
    console.warn(`\n*** SKIPPING the SSE/REST fallback tests: ${msg} ***\n`);
  }
});
afterEach(() => clients?.closeAll());
afterAll(async () => server?.dispose());

/** A WebSocket that can be "blocked" (as by a proxy that breaks upgrades): it then dials a dead port. */
function blockableWebSocket() {
  const ctl = { blocked: true };
  class Blockable extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(ctl.blocked ? url.replace(/\/\/[^/]+\//, '//127.0.0.1:9/') : url, protocols);
    }
  }
  return { ctl, Ctor: Blockable as unknown as WebSocketConstructor };
}

describe('SSE + REST fallback (real server)', () => {
  it('events over SSE, sends/typing/receipts over REST, resume over REST, and back to WebSocket', async (ctx) => {
    if (!available) return ctx.skip();
    const a = clients.make(51);
    const ws = blockableWebSocket();
    const b = clients.make(52, { WebSocket: ws.Ctor, fallback: { afterFailures: 2, retryWebSocketMs: 2000 } });
    await connected(a);
    const bGot = collect(b, 'new_message');
    b.connect();
    await waitState(b, 'fallback');
    expect(b.transport).toBe('sse');
    await until(() => b.isConnected, 'the SSE stream');

    // Live events arrive over SSE.
    const first = await a.sendMessage({ receiverId: 52, text: 'to the fallback' });
    const conv = first.conversation_id;
    await until(() => bGot.length === 1, 'a message over SSE');
    expect(bGot[0]).toMatchObject({ message_id: first.message_id, text: 'to the fallback' });

    // Sends go over REST, idempotently.
    const aGot = collect(a, 'new_message');
    const reply = await b.sendMessage({ conversationId: conv, text: 'reply over REST', clientMsgId: 'rest-reply-1' });
    expect(reply).toMatchObject({ conversation_id: conv, seq: 2 });
    const again = await b.sendMessage({ conversationId: conv, text: 'reply over REST', clientMsgId: 'rest-reply-1' });
    expect(again).toMatchObject({ message_id: reply.message_id, duplicate: true });
    const direct = await b.sendMessage({ receiverId: 51, text: 'by receiver over REST' });
    expect(direct.conversation_id).toBe(conv);
    await until(() => aGot.length === 2, 'alice to get both REST messages');
    expect(aGot.map((m) => m.text)).toEqual(['reply over REST', 'by receiver over REST']);

    // Typing and read receipts over REST.
    const typing = collect(a, 'typing_indicator');
    const receipts = collect(a, 'read_receipt');
    b.sendTypingIndicator(conv);
    await until(() => typing.some((t) => t.user_id === 52 && t.is_typing), 'alice to see bob typing');
    b.sendReadReceipt([first.message_id]);
    await until(() => receipts.some((r) => r.message_ids.includes(first.message_id) && r.reader_id === 52), 'alice to get the receipt');

    // Requests over REST.
    const list = await b.listConversations();
    expect(list.find((c) => c.id === conv)).toMatchObject({ last_seq: 3, unread_count: 0 });
    const page = await b.history(conv, { limit: 2 });
    expect(page.messages.map((m) => m.seq)).toEqual([2, 3]);

    // Away and back, still without WebSockets: what was missed comes over REST, once.
    b.disconnect();
    await a.sendMessage({ conversationId: conv, text: 'missed 1' });
    await a.sendMessage({ conversationId: conv, text: 'missed 2' });
    b.connect();
    await waitState(b, 'fallback');
    await until(() => bGot.length === 3, 'the missed messages over REST');
    expect(bGot.map((m) => m.text)).toEqual(['to the fallback', 'missed 1', 'missed 2']);

    // WebSockets work again: the periodic attempt takes the client back.
    ws.ctl.blocked = false;
    await waitState(b, 'open', 15_000);
    expect(b.transport).toBe('websocket');
    await a.sendMessage({ conversationId: conv, text: 'over the socket again' });
    await until(() => bGot.length === 4, 'a message over the WebSocket');
    await sleep(300);
    expect(bGot.map((m) => m.text)).toEqual(['to the fallback', 'missed 1', 'missed 2', 'over the socket again']);
  });
});
