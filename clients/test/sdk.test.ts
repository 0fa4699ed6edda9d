// @indaba/client against the real Indaba single-node program (INDABA_BIN).
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createRequire } from 'node:module';
import { ChatStore, type IndabaClient, type NewMessage, type SendResult } from '@indaba/client';
import { IndabaServer, sleep, until } from './server.js';
import { Clients, collect, connected, recordingWebSocket, waitState } from './helpers.js';

let server: IndabaServer;
let clients: Clients;

beforeAll(async () => {
  // No clock-skew leeway, so that short-lived tokens really expire.
  server = new IndabaServer({ INDABA_JWT_LEEWAY_SECS: '0' });
  await server.start();
  clients = new Clients(server);
});
afterEach(() => clients.closeAll());
afterAll(async () => server?.dispose());

const textsOf = (ms: NewMessage[]) => ms.map((m) => m.text);

describe('messaging', () => {
  it('sends and receives; a retry with the same client_msg_id is a duplicate, not a second message', async () => {
    const a = clients.make(1);
    const b = clients.make(2);
    await connected(a, b);
    expect(a.userId).toBe(1);
    const got = collect(b, 'new_message');
    const delivered = collect(a, 'message_delivered');

    const r1 = await a.sendMessage({ receiverId: 2, text: 'hello bob', clientMsgId: 'send-1' });
    expect(r1.seq).toBe(1);
    await until(() => got.length === 1, 'bob to get the message');
    expect(got[0]).toMatchObject({ message_id: r1.message_id, conversation_id: r1.conversation_id, sender_id: 1, text: 'hello bob', seq: 1 });

    const again = await a.sendMessage({ conversationId: r1.conversation_id, text: 'hello bob', clientMsgId: 'send-1' });
    expect(again).toMatchObject({ message_id: r1.message_id, duplicate: true });

    // The spec's signature: sendMessage(conversationId, receiverId, text).
    const r2 = await a.sendMessage(r1.conversation_id, 2, 'second');
    expect(r2.seq).toBe(2);
    await until(() => got.length >= 2, 'the second message');
    await sleep(200);
    expect(textsOf(got)).toEqual(['hello bob', 'second']);
    expect(b.getLastSeqs()[r1.conversation_id]).toBe(2);
    await until(() => delivered.length === 2, 'two message_delivered');
    expect(delivered.map((d) => d.message_id).sort()).toEqual([r1.message_id, r2.message_id].sort());
    expect(a.getOutbox()).toEqual([]);
  });

  it('refused messages reject and leave the outbox; empty text is refused locally', async () => {
    const a = clients.make(3);
    await connected(a);
    const failed = collect(a, 'message_failed');
    await expect(a.sendMessage({ conversationId: 999_999, text: 'nobody here' })).rejects.toMatchObject({ code: expect.stringMatching(/conversation_not_found|forbidden/) });
    expect(failed).toHaveLength(1);
    await expect(a.sendMessage({ receiverId: 4, text: '   ' })).rejects.toMatchObject({ code: 'empty_text' });
    await expect(a.sendMessage({ receiverId: 4, text: 'x'.repeat(5000) })).rejects.toMatchObject({ code: 'text_too_long' });
    expect(a.getOutbox()).toEqual([]);
  });

  it('typing: throttled on the wire, relayed, stopped explicitly and by sendMessage', async () => {
    const rec = recordingWebSocket();
    const a = clients.make(5, { WebSocket: rec.Ctor });
    const b = clients.make(6);
    await connected(a, b);
    const conv = await a.createConversation([6]);
    const typing = collect(b, 'typing_indicator');

    for (let i = 0; i < 10; i++) a.sendTypingIndicator(conv.id);
    const sentTyping = () => rec.sent.filter((f) => f.type === 'typing_indicator');
    expect(sentTyping()).toEqual([{ type: 'typing_indicator', conversation_id: conv.id, is_typing: true }]);
    await until(() => typing.some((t) => t.is_typing), 'bob to see alice typing');
    expect(typing[0]).toMatchObject({ conversation_id: conv.id, user_id: 5, is_typing: true });

    a.sendTypingIndicator(conv.id, undefined, false);
    await until(() => typing.some((t) => !t.is_typing), 'typing to stop');

    await sleep(1100); // the server coalesces repeats of one state within 1 s
    typing.length = 0;
    a.sendTypingIndicator(conv.id);
    await until(() => typing.some((t) => t.is_typing), 'typing again');
    await a.sendMessage({ conversationId: conv.id, text: 'done typing' });
    const frames = rec.sent.filter((f) => f.type === 'typing_indicator' || f.type === 'chat_message').map((f) => f.type + ':' + (f.is_typing ?? ''));
    expect(frames.slice(-3)).toEqual(['typing_indicator:true', 'typing_indicator:false', 'chat_message:']);
    await until(() => typing.some((t) => !t.is_typing), 'typing to stop on send');
  });

  it('read receipts: batched into one frame, reach the sender, and clear the unread count', async () => {
    const a = clients.make(7);
    const rec = recordingWebSocket();
    const b = clients.make(8, { WebSocket: rec.Ctor });
    await connected(a, b);
    const got = collect(b, 'new_message');
    const sent: SendResult[] = [];
    for (const t of ['one', 'two', 'three']) sent.push(await a.sendMessage({ receiverId: 8, text: t }));
    await until(() => got.length === 3, 'three messages');
    const conv = sent[0]!.conversation_id;
    const before = (await b.listConversations()).find((c) => c.id === conv);
    expect(before).toMatchObject({ unread_count: 3, last_read_seq: 0, last_seq: 3 });

    const receipts = collect(a, 'read_receipt');
    b.sendReadReceipt([got[0]!.message_id]);
    b.sendReadReceipt([got[1]!.message_id, got[2]!.message_id]);
    await until(() => new Set(receipts.flatMap((r) => r.message_ids)).size === 3, 'alice to get all three receipts');
    expect(receipts.every((r) => r.reader_id === 8 && r.conversation_id === conv)).toBe(true);
    const frames = rec.sent.filter((f) => f.type === 'read_receipt');
    expect(frames).toHaveLength(1);
    expect([...frames[0]!.message_ids].sort()).toEqual(sent.map((s) => s.message_id).sort());

    const after = (await b.listConversations()).find((c) => c.id === conv);
    expect(after).toMatchObject({ unread_count: 0, last_read_seq: 3 });
  });

  it('history and the conversation list work as requests', async () => {
    const a = clients.make(9);
    await connected(a);
    let conv = 0;
    for (let i = 1; i <= 5; i++) conv = (await a.sendMessage({ receiverId: 10, text: `h${i}` })).conversation_id;
    const page = await a.history(conv, { limit: 2 });
    expect(page.has_more).toBe(true);
    expect(textsOf(page.messages)).toEqual(['h4', 'h5']);
    const older = await a.history(conv, { beforeSeq: 4, limit: 10 });
    expect(textsOf(older.messages)).toEqual(['h1', 'h2', 'h3']);
    expect(older.has_more).toBe(false);
    const list = await a.listConversations();
    expect(list.find((c) => c.id === conv)).toMatchObject({ last_seq: 5, participant_ids: expect.arrayContaining([9, 10]) });
  });
});

describe('attachments', () => {
  it('upload() sends the bytes to storage with progress; sendMessage({attachments}) delivers them; attachmentUrl() fetches them', async () => {
    const a = clients.make(71);
    const b = clients.make(72);
    await connected(a, b);
    const got = collect(b, 'new_message');
    const first = await a.sendMessage({ receiverId: 72, text: 'the contract follows' });
    const pdf = new TextEncoder().encode('%PDF-1.4\n% a contract\n');
    const progress: number[] = [];
    const up = await a.upload(pdf, { conversationId: first.conversation_id, filename: 'contract.pdf', contentType: 'application/pdf', onProgress: (sent) => progress.push(sent) });
    expect(up).toMatchObject({ filename: 'contract.pdf', contentType: 'application/pdf', size: pdf.length });
    expect(progress.at(-1)).toBe(pdf.length);
    // No text: the file is the message.
    const sent = await a.sendMessage({ conversationId: first.conversation_id, attachments: [up.uploadId] });
    await until(() => got.length === 2, 'bob to get the file');
    const view = got[1]!.attachments![0]!;
    expect(view).toMatchObject({ id: up.uploadId, filename: 'contract.pdf', content_type: 'application/pdf', size: pdf.length, url: `/api/v1/attachments/${up.uploadId}/` });
    expect(got[1]!.message_id).toBe(sent.message_id);
    const url = await b.attachmentUrl(view.id);
    const res = await fetch(url);
    expect(res.status).toBe(200);
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(pdf);
    // Refusals reject like any other send.
    await expect(a.sendMessage({ conversationId: first.conversation_id, attachments: [up.uploadId] })).rejects.toMatchObject({ code: 'invalid_attachment' });
    await expect(a.upload(pdf, { conversationId: first.conversation_id, filename: 'x.exe', contentType: 'application/x-msdownload' })).rejects.toMatchObject({ code: 'unsupported_media_type' });
    await expect(a.sendMessage({ conversationId: first.conversation_id, text: ' ' })).rejects.toMatchObject({ code: 'empty_text' });
  });
});

describe('resume', () => {
  it('a client that was away gets what it missed, once and in order', async () => {
    const a = clients.make(11);
    const b = clients.make(12);
    await connected(a, b);
    const got = collect(b, 'new_message');
    const first = await a.sendMessage({ receiverId: 12, text: 'before' });
    await until(() => got.length === 1, 'the first message');

    b.disconnect();
    for (let i = 1; i <= 5; i++) await a.sendMessage({ conversationId: first.conversation_id, text: `missed ${i}` });
    const syncs = collect(b, 'sync_complete');
    b.connect();
    await waitState(b, 'open');
    await until(() => got.length === 6 && syncs.length > 0, 'the missed messages');
    await sleep(300);
    expect(textsOf(got)).toEqual(['before', 'missed 1', 'missed 2', 'missed 3', 'missed 4', 'missed 5']);
    expect(got.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(b.getLastSeqs()[first.conversation_id]).toBe(6);
  });

  it('a conversation created while the client was away is synced from its start', async () => {
    const a = clients.make(13);
    const b = clients.make(14);
    await connected(a, b);
    await sleep(200); // b's first conversation list (the baseline) is in
    b.disconnect();
    const r = await a.sendMessage({ receiverId: 14, text: 'while you were out' });
    await a.sendMessage({ conversationId: r.conversation_id, text: 'and again' });
    const got = collect(b, 'new_message');
    b.connect();
    await until(() => got.length === 2, 'both messages of the new conversation');
    expect(textsOf(got)).toEqual(['while you were out', 'and again']);
  });
});

describe('server restarts', () => {
  async function restartScenario(signal: 'SIGKILL' | 'SIGTERM', users: [number, number], total: number) {
    const a = clients.make(users[0]);
    const b = clients.make(users[1]);
    await connected(a, b);
    const conv = (await a.createConversation([users[1]])).id;
    const got = collect(b, 'new_message');
    const states: string[] = [];
    a.on('state', (s) => states.push(s));
    const closes = collect(a, 'socket_closed');

    const sends: Promise<SendResult>[] = [];
    const texts = Array.from({ length: total }, (_, i) => `${signal} ${i}`);
    let i = 0;
    for (; i < total / 3; i++) {
      sends.push(a.sendMessage({ conversationId: conv, text: texts[i]! }));
      await sleep(10);
    }
    // Crash or stop the server with messages in flight, keep writing while it is down.
    const stopping = server.stop(signal);
    for (; i < (2 * total) / 3; i++) {
      sends.push(a.sendMessage({ conversationId: conv, text: texts[i]! }));
      await sleep(20);
    }
    await stopping;
    expect(a.getOutbox().length).toBeGreaterThan(0);
    await server.start(); // same port, same data
    for (; i < total; i++) sends.push(a.sendMessage({ conversationId: conv, text: texts[i]! }));

    let timer: ReturnType<typeof setTimeout> | undefined;
    const results = await Promise.race([
      Promise.all(sends),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`sends not acknowledged 30 s after the restart: ${a.getOutbox().length} still in the outbox (state ${a.state})`)), 30_000);
      }),
    ]).finally(() => clearTimeout(timer));
    expect(a.getOutbox()).toEqual([]);
    // Every send acknowledged with its own stored message, numbered without gaps.
    expect(new Set(results.map((r) => r.message_id)).size).toBe(total);
    expect(results.map((r) => r.seq).sort((x, y) => x - y)).toEqual(Array.from({ length: total }, (_, k) => k + 1));
    // The other side got each exactly once.
    await until(() => got.length >= total, `bob to get all ${total} messages (has ${got.length})`, 30_000);
    await sleep(300);
    expect(got.length).toBe(total);
    expect([...textsOf(got)].sort()).toEqual([...texts].sort());
    // The store holds each once, in the order they were written.
    const fresh = clients.make(users[1]);
    await connected(fresh);
    const page = await fresh.history(conv, { limit: 200 });
    expect(textsOf(page.messages)).toEqual(texts);
    expect(states).toContain('reconnecting');
    expect(a.state).toBe('open');
    return closes;
  }

  it('killed (SIGKILL) mid-conversation and restarted: the outbox drains, nothing lost or doubled', async () => {
    await restartScenario('SIGKILL', [21, 22], 45);
  });

  it('stopped gracefully (SIGTERM → close 1012) and restarted: same guarantees', async () => {
    const closes = await restartScenario('SIGTERM', [23, 24], 30);
    expect(closes).toContain(1012);
  });
});

describe('tokens', () => {
  it('an expired token (close 4001) is replaced through getToken and the client reconnects', async () => {
    const short = await server.mintToken(31, 2);
    const getToken = vi.fn(async () => server.token(31));
    const a = clients.make(31, { token: short, getToken, tokenRefreshLeadMs: false });
    const closes = collect(a, 'socket_closed');
    await connected(a);
    await until(() => closes.includes(4001), 'close code 4001', 10_000);
    await until(() => a.state === 'open', 'reconnected');
    expect(getToken).toHaveBeenCalledWith('expired');
    const r = await a.sendMessage({ receiverId: 32, text: 'still here' });
    expect(r.seq).toBe(1);
  });

  it('a token about to expire is refreshed on the open socket (refresh_token), without a reconnect', async () => {
    const short = await server.mintToken(33, 4);
    const getToken = vi.fn(async () => server.token(33));
    const a = clients.make(33, { token: short, getToken, tokenRefreshLeadMs: 3000 });
    const closes = collect(a, 'socket_closed');
    const refreshed = collect(a, 'token_refreshed');
    await connected(a);
    await until(() => refreshed.length > 0, 'token_refreshed', 10_000);
    expect(getToken).toHaveBeenCalledWith('refresh');
    await sleep(4500 - 1000); // past the first token's expiry
    expect(closes).toEqual([]);
    expect(a.state).toBe('open');
  });
});

describe('ChatStore (what the demo and useChat show)', () => {
  it('ticks go pending → sent → delivered → read; unread counts and typing follow', async () => {
    const a = clients.make(41);
    const b = clients.make(42);
    await connected(a, b);
    const sa = new ChatStore(a);
    const sb = new ChatStore(b);
    try {
      const conv = (await sa.startDirect(42)).id;
      await sa.open(conv);
      const statuses: string[] = [];
      sa.subscribe(() => {
        const m = sa.getSnapshot().messages[conv]?.find((x) => x.text === 'tick tock');
        if (m?.status && statuses[statuses.length - 1] !== m.status) statuses.push(m.status);
      });
      sa.typing(conv);
      await until(() => sb.getSnapshot().conversations.find((c) => c.id === conv)?.typing.includes(41), 'bob to see alice typing');
      void sa.send(conv, 'tick tock');
      await until(() => statuses.includes('delivered'), 'delivered');
      await until(() => sb.getSnapshot().conversations.find((c) => c.id === conv)?.unread_count === 1, 'bob to have one unread');
      expect(sb.getSnapshot().conversations.find((c) => c.id === conv)?.typing).toEqual([]);
      expect(sb.getSnapshot().totalUnread).toBe(1);
      await sb.open(conv);
      expect(sb.messagesOf(conv).map((m) => m.text)).toEqual(['tick tock']);
      await until(() => statuses.includes('read'), 'read');
      // Snapshots are batched per tick, so 'sent' may fold into 'delivered'; the order never goes back.
      const order = ['pending', 'sent', 'delivered', 'read'];
      const ranks = statuses.map((x) => order.indexOf(x));
      expect(ranks).toEqual([...ranks].sort((x, y) => x - y));
      expect(new Set(ranks).size).toBe(ranks.length);
      expect(statuses[0]).toBe('pending');
      expect(statuses).toContain('delivered');
      expect(statuses[statuses.length - 1]).toBe('read');
      expect(sb.getSnapshot().conversations.find((c) => c.id === conv)?.unread_count).toBe(0);
      const list = await b.listConversations();
      expect(list.find((c) => c.id === conv)?.unread_count).toBe(0);
    } finally {
      sa.dispose();
      sb.dispose();
    }
  });
});

describe('package', () => {
  it('the CommonJS build loads with require()', () => {
    const require = createRequire(import.meta.url);
    const cjs = require('@indaba/client');
    expect(typeof cjs.IndabaClient).toBe('function');
    expect(typeof cjs.ChatStore).toBe('function');
    const react = require('@indaba/client/react');
    expect(typeof react.useChat).toBe('function');
    expect(typeof react.usePresence).toBe('function');
  });
});

export type { IndabaClient };
