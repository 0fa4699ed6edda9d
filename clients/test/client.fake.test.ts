// The client's state machine against a scripted fake server: the cases a real server does not
// produce on demand (refused handshakes, chosen close codes, lost acks, gaps, SSE fallback).
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createServer, get, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import WebSocket, { WebSocketServer } from 'ws';
import { ChatStore, IndabaClient, webStorage, type IndabaClientOptions, type WebSocketConstructor } from '@indaba/client';
import { sleep, until } from './server.js';
import { collect, waitState } from './helpers.js';

interface Conn {
  ws: WebSocket;
  token: string;
  frames: Record<string, any>[];
}

class FakeServer {
  http: Server;
  wss = new WebSocketServer({ noServer: true });
  port = 0;
  refuseUpgrades = 0; // refuse this many upgrades (503); Infinity = all
  upgrades = 0;
  conns: Conn[] = [];
  onFrame: (c: Conn, f: Record<string, any>) => void = () => {};
  // SSE + REST
  sse: ServerResponse[] = [];
  sseClosed = 0;
  sseUrls: string[] = [];
  posts: { path: string; body: any }[] = [];
  /** Every REST call (method, path with query, body). */
  calls: { method: string; path: string; body: any }[] = [];
  /** Answers REST calls the fake does not know (return undefined: 404). */
  onRest: (method: string, path: string, body: any) => { status: number; body?: unknown } | undefined = () => undefined;
  nextMessageId = 100;
  urlTokens: string[] = []; // tokens clients put in the URL (the SDK must not)
  refuseTokens: string[] = []; // tokens whose `authenticate` is answered with close 4001

  constructor() {
    this.http = createServer((req, res) => this.onHttp(req, res));
    this.http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.upgrades++;
      if (this.refuseUpgrades > 0) {
        this.refuseUpgrades--;
        socket.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        return;
      }
      const urlToken = new URL(req.url!, 'http://x').searchParams.get('token');
      if (urlToken !== null) this.urlTokens.push(urlToken);
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        const c: Conn = { ws, token: urlToken ?? '', frames: [] };
        this.conns.push(c);
        const establish = () =>
          this.send(c, { type: 'connection_established', user_id: 1, connection_id: `fake/${this.conns.length}`, server_time: new Date().toISOString() });
        // Like the gateway: a socket without a token in its URL authenticates with its first frame.
        let authenticated = urlToken !== null;
        ws.on('message', (d) => {
          const f = JSON.parse(String(d));
          if (!authenticated) {
            if (f.type !== 'authenticate' || this.refuseTokens.includes(f.token)) return ws.close(4001, 'unauthorized');
            authenticated = true;
            c.token = f.token;
            return establish();
          }
          c.frames.push(f);
          if (f.type === 'list_conversations') return this.send(c, { type: 'conversations', conversations: this.conversations });
          this.onFrame(c, f);
        });
        if (authenticated) establish();
      });
    });
  }

  conversations: any[] = [];

  get last(): Conn {
    return this.conns[this.conns.length - 1]!;
  }

  send(c: Conn, f: Record<string, unknown>) {
    c.ws.send(JSON.stringify(f));
  }

  ack(c: Conn, f: Record<string, any>, extra: Record<string, unknown> = {}) {
    this.send(c, { type: 'message_sent', message_id: this.nextMessageId++, conversation_id: f.conversation_id ?? 1, seq: 1, client_msg_id: f.client_msg_id, created_at: new Date().toISOString(), ...extra });
  }

  private onHttp(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url!, 'http://x');
    if (req.method === 'GET' && url.pathname === '/api/v1/events/') {
      this.sseUrls.push(req.url!);
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      res.write(`data: ${JSON.stringify({ type: 'connection_established', user_id: 1, connection_id: 'sse/1', server_time: new Date().toISOString() })}\n\n`);
      this.sse.push(res);
      req.on('close', () => this.sseClosed++);
      return;
    }
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const json = body ? JSON.parse(body) : undefined;
      const reply = (status: number, obj?: unknown) => {
        res.writeHead(status, { 'Content-Type': 'application/json' });
        res.end(obj === undefined ? '' : JSON.stringify(obj));
      };
      if (req.method === 'POST') this.posts.push({ path: url.pathname, body: json });
      this.calls.push({ method: req.method!, path: url.pathname + url.search, body: json });
      const custom = this.onRest(req.method!, url.pathname + url.search, json);
      if (custom) return reply(custom.status, custom.body);
      const m = url.pathname.match(/^\/api\/v1\/conversations\/(\d+)\/messages\/$/);
      if (m && req.method === 'POST') {
        return reply(201, { message_id: this.nextMessageId++, conversation_id: Number(m[1]), seq: 1, client_msg_id: json.client_msg_id, created_at: new Date().toISOString() });
      }
      if (m) return reply(200, { messages: [], has_more: false });
      if (url.pathname === '/api/v1/conversations/') return reply(200, { conversations: this.conversations });
      if (url.pathname.endsWith('/typing/')) return reply(204);
      if (url.pathname === '/api/v1/messages/read/') return reply(200, { read: json.message_ids });
      reply(404, { error: { code: 'not_found', message: 'no' } });
    });
  }

  sseEvent(obj: Record<string, unknown>, id?: string) {
    for (const r of this.sse) r.write(`${id ? `id: ${id}\n` : ''}data: ${JSON.stringify(obj)}\n\n`);
  }

  async start() {
    await new Promise<void>((r) => this.http.listen(0, '127.0.0.1', () => r()));
    this.port = (this.http.address() as { port: number }).port;
  }

  async stop() {
    for (const c of this.conns) c.ws.terminate();
    for (const r of this.sse) r.destroy();
    this.http.closeAllConnections();
    await new Promise((r) => this.http.close(r));
  }
}

let fake: FakeServer;
const made: IndabaClient[] = [];
beforeEach(async () => {
  fake = new FakeServer();
  await fake.start();
});
afterEach(async () => {
  for (const c of made.splice(0)) c.disconnect();
  await fake.stop();
});

function client(extra: Partial<IndabaClientOptions> = {}): IndabaClient {
  const c = new IndabaClient({
    url: `http://127.0.0.1:${fake.port}`,
    token: 't1',
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    reconnect: { baseDelayMs: 5, maxDelayMs: 20 },
    fallback: false,
    ...extra,
  });
  made.push(c);
  return c;
}

const newMessage = (id: number, conv: number, seq: number, extra: Record<string, unknown> = {}) => ({
  type: 'new_message',
  message_id: id,
  conversation_id: conv,
  sender_id: 2,
  text: `m${id}`,
  seq,
  created_at: new Date().toISOString(),
  ...extra,
});

describe('connection state machine', () => {
  it('keeps retrying refused handshakes (no give-up) and opens when the server lets it', async () => {
    fake.refuseUpgrades = 12;
    const c = client();
    const states = collect(c, 'state');
    c.connect();
    await waitState(c, 'open');
    expect(fake.upgrades).toBe(13);
    expect(states[0]).toBe('connecting');
    expect(states).toContain('reconnecting');
    expect(states[states.length - 1]).toBe('open');
  });

  it('close 4001: asks getToken for a new token and reconnects with it', async () => {
    const getToken = vi.fn(async (reason: string) => (reason === 'expired' ? 't2' : 't1'));
    const c = client({ token: undefined, getToken });
    c.connect();
    await waitState(c, 'open');
    expect(fake.last.token).toBe('t1');
    fake.last.ws.close(4001, 'token expired');
    await until(() => fake.conns.length === 2 && c.state === 'open', 'reconnect');
    expect(getToken.mock.calls.map((x) => x[0])).toEqual(['initial', 'expired']);
    expect(fake.last.token).toBe('t2');
  });

  it('authenticates with its first frame, never with the token in the URL', async () => {
    const c = client();
    c.connect();
    await waitState(c, 'open');
    expect(fake.last.token).toBe('t1');
    expect(fake.urlTokens).toEqual([]);
  });

  it('a token refused at authentication: getToken("rejected"), with backoff, then open', async () => {
    fake.refuseTokens = ['bad'];
    const getToken = vi.fn(async (reason: string) => (reason === 'rejected' ? 'good' : 'bad'));
    const c = client({ token: undefined, getToken });
    c.connect();
    await waitState(c, 'open');
    expect(getToken.mock.calls.map((x) => x[0])).toEqual(['initial', 'rejected']);
    expect(fake.last.token).toBe('good');
    expect(fake.conns.length).toBe(2);
  });

  it('close 1008: waits the long abuse delay instead of hammering the server', async () => {
    const c = client({ abuseDelayMs: 60_000 });
    c.connect();
    await waitState(c, 'open');
    fake.last.ws.close(1008, 'abuse');
    await waitState(c, 'reconnecting');
    await sleep(500);
    expect(fake.upgrades).toBe(1);
    c.reconnectNow();
    await waitState(c, 'open');
    expect(fake.upgrades).toBe(2);
  });

  it('close 1012: reconnects soon and resumes with the last seq of every conversation', async () => {
    fake.conversations = [{ id: 9, kind: 'group', title: 'g', participant_ids: [1, 2], last_seq: 6, last_read_seq: 0, unread_count: 0 }];
    const c = client({ restartDelayMs: 50 });
    c.connect();
    await waitState(c, 'open');
    await until(() => c.getLastSeqs()['9'] === 6, 'baseline from the conversation list');
    fake.send(fake.last, newMessage(1, 5, 1));
    fake.send(fake.last, newMessage(2, 5, 2));
    fake.send(fake.last, newMessage(3, 9, 7));
    await until(() => c.getLastSeqs()['5'] === 2 && c.getLastSeqs()['9'] === 7, 'seqs tracked');
    fake.last.ws.close(1012, 'restart');
    await until(() => fake.conns.length === 2 && fake.last.frames.some((f) => f.type === 'sync'), 'sync after reconnect');
    expect(fake.last.frames.find((f) => f.type === 'sync')).toEqual({ type: 'sync', conversations: { '5': 2, '9': 7 } });
  });

  it('disconnect() closes for good: no reconnects, state closed', async () => {
    const c = client();
    c.connect();
    await waitState(c, 'open');
    c.disconnect();
    expect(c.state).toBe('closed');
    await sleep(200);
    expect(fake.upgrades).toBe(1);
  });
});

describe('outbox', () => {
  it('unavailable: resent later with the same client_msg_id until message_sent', async () => {
    let n = 0;
    fake.onFrame = (conn, f) => {
      if (f.type !== 'chat_message') return;
      if (n++ === 0) fake.send(conn, { type: 'error', code: 'unavailable', message: 'try again', ref: f.client_msg_id });
      else fake.ack(conn, f);
    };
    const c = client();
    c.connect();
    const r = await c.sendMessage({ conversationId: 1, text: 'hi' });
    const sends = fake.conns.flatMap((x) => x.frames).filter((f) => f.type === 'chat_message');
    expect(sends).toHaveLength(2);
    expect(sends[0]!.client_msg_id).toBe(sends[1]!.client_msg_id);
    expect(r.client_msg_id).toBe(sends[0]!.client_msg_id);
  });

  it('queued while offline, resent after a dropped socket with the same id; resolves once', async () => {
    let n = 0;
    fake.onFrame = (conn, f) => {
      if (f.type !== 'chat_message') return;
      if (n++ === 0) conn.ws.terminate(); // dropped before the ack
      else fake.ack(conn, f, { duplicate: true });
    };
    const c = client();
    const acks = collect(c, 'message_sent');
    const early = c.sendMessage({ receiverId: 2, text: 'queued before connect' });
    expect(c.getOutbox()).toHaveLength(1);
    c.connect();
    const r = await early;
    const sends = fake.conns.flatMap((x) => x.frames).filter((f) => f.type === 'chat_message');
    expect(sends.map((s) => s.client_msg_id)).toEqual([r.client_msg_id, r.client_msg_id]);
    expect(fake.conns).toHaveLength(2);
    expect(acks).toHaveLength(1);
    expect(c.getOutbox()).toEqual([]);
  });

  it('our own message replayed by sync counts as its ack; the late duplicate ack adds nothing', async () => {
    let n = 0;
    fake.onFrame = (conn, f) => {
      if (f.type === 'sync') {
        fake.send(conn, newMessage(500, 1, 1, { sender_id: 1, client_msg_id: 'own-1', text: 'mine' }));
        fake.send(conn, { type: 'sync_complete', conversations: { '1': 1 } });
      }
      if (f.type !== 'chat_message') return;
      if (n++ === 0) {
        conn.ws.terminate();
      } else {
        // The duplicate ack comes late: only the replay can have resolved the send before it.
        setTimeout(() => {
          dupAckSent = true;
          fake.send(conn, { type: 'message_sent', message_id: 500, conversation_id: 1, seq: 1, client_msg_id: 'own-1', created_at: new Date().toISOString(), duplicate: true });
        }, 300);
      }
    };
    let dupAckSent = false;
    const c = client();
    const acks = collect(c, 'message_sent');
    c.connect();
    await waitState(c, 'open');
    fake.send(fake.last, newMessage(499, 1, 0 + 0)); // make conversation 1 known (seq 0)
    await sleep(50);
    const r = await c.sendMessage({ conversationId: 1, text: 'mine', clientMsgId: 'own-1' });
    expect(r.message_id).toBe(500);
    expect(dupAckSent).toBe(false);
    await until(() => dupAckSent, 'the late duplicate ack');
    await sleep(100);
    expect(acks.map((a) => a.message_id)).toEqual([500]);
  });

  it('persisted with webStorage: a new client (page reload) sends what the last one could not', async () => {
    const kv = new Map<string, string>();
    const store = { getItem: (k: string) => kv.get(k) ?? null, setItem: (k: string, v: string) => void kv.set(k, v) };
    fake.refuseUpgrades = Infinity;
    const first = client({ storage: webStorage(store) });
    first.connect();
    void first.sendMessage({ conversationId: 8, text: 'written offline', clientMsgId: 'persist-1' });
    expect(JSON.parse(kv.get('indaba.outbox')!)).toMatchObject([{ client_msg_id: 'persist-1', conversation_id: 8, text: 'written offline' }]);
    first.disconnect();

    fake.refuseUpgrades = 0;
    fake.onFrame = (conn, f) => {
      if (f.type === 'chat_message') fake.ack(conn, f, { conversation_id: 8 });
    };
    const second = client({ storage: webStorage(store) });
    const acks = collect(second, 'message_sent');
    second.connect();
    await until(() => acks.length === 1, 'the stored message to be sent');
    expect(acks[0]!.client_msg_id).toBe('persist-1');
    expect(fake.last.frames.filter((f) => f.type === 'chat_message')).toEqual([{ type: 'chat_message', text: 'written offline', client_msg_id: 'persist-1', conversation_id: 8 }]);
    expect(JSON.parse(kv.get('indaba.outbox')!)).toEqual([]);
  });

  it('refused for good (forbidden): rejects with the code and leaves the outbox', async () => {
    fake.onFrame = (conn, f) => {
      if (f.type === 'chat_message') fake.send(conn, { type: 'error', code: 'forbidden', message: 'not a member', ref: f.client_msg_id });
    };
    const c = client();
    c.connect();
    await expect(c.sendMessage({ conversationId: 3, text: 'x' })).rejects.toMatchObject({ code: 'forbidden' });
    expect(c.getOutbox()).toEqual([]);
  });
});

describe('incoming', () => {
  it('drops repeats by message_id and fills a seq gap with a sync', async () => {
    const c = client();
    const got = collect(c, 'new_message');
    c.connect();
    await waitState(c, 'open');
    fake.send(fake.last, newMessage(10, 4, 1));
    fake.send(fake.last, newMessage(10, 4, 1));
    fake.send(fake.last, newMessage(12, 4, 3)); // seq 2 missing
    await until(() => fake.last.frames.some((f) => f.type === 'sync'), 'a sync for the gap', 5000);
    expect(fake.last.frames.find((f) => f.type === 'sync')).toEqual({ type: 'sync', conversations: { '4': 1 } });
    fake.send(fake.last, newMessage(11, 4, 2));
    fake.send(fake.last, newMessage(12, 4, 3));
    fake.send(fake.last, { type: 'sync_complete', conversations: { '4': 3 } });
    await until(() => c.getLastSeqs()['4'] === 3, 'gap filled');
    expect(got.map((m) => m.message_id)).toEqual([10, 12, 11]);
  });
});

describe('fallback', () => {
  it('WebSockets failing: SSE for events, REST for sends/typing/receipts; back to WebSocket when it works', async () => {
    fake.refuseUpgrades = Infinity;
    const c = client({ fallback: { afterFailures: 3, retryWebSocketMs: 300 } });
    const got = collect(c, 'new_message');
    c.connect();
    await waitState(c, 'fallback');
    expect(c.transport).toBe('sse');
    await until(() => fake.sse.length === 1 && c.isConnected, 'the SSE stream');

    fake.sseEvent(newMessage(7, 2, 1), 'cursor-1');
    fake.sseEvent(newMessage(7, 2, 1), 'cursor-1'); // a replay: dropped
    await until(() => got.length === 1, 'a message over SSE');

    const r = await c.sendMessage({ conversationId: 2, text: 'over rest', clientMsgId: 'rest-1' });
    expect(r.client_msg_id).toBe('rest-1');
    expect(fake.posts.find((p) => p.path === '/api/v1/conversations/2/messages/')?.body).toEqual({ text: 'over rest', client_msg_id: 'rest-1' });
    c.sendTypingIndicator(2);
    c.sendReadReceipt([7]);
    await until(() => fake.posts.some((p) => p.path === '/api/v1/conversations/2/typing/') && fake.posts.some((p) => p.path === '/api/v1/messages/read/'), 'typing and read over REST');
    expect(fake.posts.find((p) => p.path === '/api/v1/messages/read/')?.body).toEqual({ message_ids: [7] });

    const upgradesBefore = fake.upgrades;
    await until(() => fake.upgrades > upgradesBefore, 'a periodic WebSocket attempt');
    fake.refuseUpgrades = 0;
    await waitState(c, 'open', 5000);
    expect(c.transport).toBe('websocket');
    await until(() => fake.sseClosed === 1, 'the SSE stream to be closed');
    expect(got).toHaveLength(1);
  });
});

/** A minimal EventSource over node:http, standing in for React Native's polyfills. */
class TinyEventSource {
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: string; lastEventId?: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  private req;
  constructor(url: string) {
    this.req = get(url, (res) => {
      if (res.statusCode !== 200) return this.onerror?.({});
      this.onopen?.({});
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
          const id = block.split('\n').find((l) => l.startsWith('id:'))?.slice(3).trim();
          if (data) this.onmessage?.({ data, lastEventId: id });
        }
      });
      res.on('end', () => this.onerror?.({}));
    });
    this.req.on('error', () => this.onerror?.({}));
  }
  close() {
    this.req.destroy();
  }
}

describe('rich messages over the REST fallback', () => {
  it('edits, deletes, reactions, pins, threads, pins list, reads and replies go over REST; a change answered by REST and streamed too is applied once', async () => {
    fake.refuseUpgrades = Infinity;
    const at = '2025-01-01T10:00:00.000Z';
    fake.onRest = (method, path, body) => {
      const m = path.match(/^\/api\/v1\/messages\/(\d+)\/(.*)$/);
      if (!m) return undefined;
      const id = Number(m[1]);
      const ev = { message_id: id, conversation_id: 2, seq: 10 + fake.calls.length };
      const rest = m[2];
      if (rest === '' && method === 'PATCH') return { status: 200, body: { type: 'message_updated', ...ev, text: body.text, edited_at: at, user_id: 1 } };
      if (rest === '' && method === 'DELETE') return { status: 200, body: { type: 'message_deleted', ...ev, deleted_at: at, deleted_by: 1 } };
      if (rest === 'reactions/') return { status: 200, body: { type: method === 'POST' ? 'reaction_added' : 'reaction_removed', ...ev, user_id: 1, emoji: body.emoji, count: method === 'POST' ? 1 : 0 } };
      if (rest === 'pin/') return { status: 200, body: { type: method === 'POST' ? 'message_pinned' : 'message_unpinned', ...ev, user_id: 1, at } };
      if (rest.startsWith('thread/')) return { status: 200, body: { message_id: id, conversation_id: 2, messages: [newMessage(id, 2, 1), newMessage(id + 1, 2, 3, { reply_to: id })], has_more: false } };
      if (rest === 'reads/') return { status: 200, body: { message_id: id, conversation_id: 2, reads: [{ user_id: 2, read_at: at }] } };
      return undefined;
    };
    const c = client({ fallback: { afterFailures: 2, retryWebSocketMs: 60_000 } });
    const changes = collect(c, 'message_changed');
    c.connect();
    await waitState(c, 'fallback');
    await until(() => fake.sse.length === 1 && c.isConnected, 'the SSE stream');

    const edited = await c.editMessage(5, 'fixed');
    expect(edited).toMatchObject({ type: 'message_updated', message_id: 5, text: 'fixed' });
    expect(fake.calls.at(-1)).toEqual({ method: 'PATCH', path: '/api/v1/messages/5/', body: { text: 'fixed' } });
    // The same change over the event stream: not emitted a second time.
    fake.sseEvent({ ...edited });
    await sleep(50);
    expect(changes.map((x) => x.type)).toEqual(['message_updated']);

    await expect(c.deleteMessage(5)).resolves.toMatchObject({ type: 'message_deleted' });
    expect(fake.calls.at(-1)).toMatchObject({ method: 'DELETE', path: '/api/v1/messages/5/' });
    await expect(c.addReaction(6, '👍')).resolves.toMatchObject({ type: 'reaction_added', emoji: '👍', count: 1 });
    expect(fake.calls.at(-1)).toEqual({ method: 'POST', path: '/api/v1/messages/6/reactions/', body: { emoji: '👍' } });
    await expect(c.removeReaction(6, '👍')).resolves.toMatchObject({ type: 'reaction_removed', count: 0 });
    expect(fake.calls.at(-1)).toEqual({ method: 'DELETE', path: '/api/v1/messages/6/reactions/', body: { emoji: '👍' } });
    await expect(c.pinMessage(6)).resolves.toMatchObject({ type: 'message_pinned' });
    expect(fake.calls.at(-1)).toMatchObject({ method: 'POST', path: '/api/v1/messages/6/pin/' });
    await expect(c.unpinMessage(6)).resolves.toMatchObject({ type: 'message_unpinned' });
    expect(fake.calls.at(-1)).toMatchObject({ method: 'DELETE', path: '/api/v1/messages/6/pin/' });
    expect(changes).toHaveLength(6);

    const thread = await c.getThread(6, { afterSeq: 2, limit: 20 });
    expect(fake.calls.at(-1)!.path).toBe('/api/v1/messages/6/thread/?after_seq=2&limit=20');
    expect(thread).toMatchObject({ type: 'thread', message_id: 6, conversation_id: 2, has_more: false });
    expect(thread.messages.map((m) => [m.type, m.message_id])).toEqual([
      ['new_message', 6],
      ['new_message', 7],
    ]);
    const reads = await c.getReads(6);
    expect(fake.calls.at(-1)!.path).toBe('/api/v1/messages/6/reads/');
    expect(reads).toMatchObject({ type: 'message_reads', message_id: 6, reads: [{ user_id: 2 }] });
    fake.onRest = (method, path) => (path === '/api/v1/conversations/2/pins/' ? { status: 200, body: { messages: [newMessage(6, 2, 1, { pinned_at: at })] } } : undefined);
    const pins = await c.listPins(2);
    expect(pins).toMatchObject({ type: 'pins', conversation_id: 2, messages: [{ type: 'new_message', message_id: 6 }] });

    await c.sendMessage({ conversationId: 2, text: 'a reply', clientMsgId: 'reply-1', replyTo: 6, mentions: [2, '2'] });
    expect(fake.posts.at(-1)).toEqual({ path: '/api/v1/conversations/2/messages/', body: { text: 'a reply', client_msg_id: 'reply-1', reply_to: 6, mentions: [2] } });
  });

  it('ChatStore: after a resume over REST, loaded conversations are reloaded (changes to older messages included)', async () => {
    fake.refuseUpgrades = Infinity;
    let edited = false;
    fake.onRest = (method, path) =>
      method === 'GET' && path.startsWith('/api/v1/conversations/2/messages/?')
        ? { status: 200, body: { messages: [newMessage(5, 2, 1, edited ? { text: 'edited while away', edited_at: new Date().toISOString(), reactions: { '👍': { count: 1, me: false } } } : {})], has_more: false } }
        : undefined;
    const c = client({ fallback: { afterFailures: 2, retryWebSocketMs: 60_000 } });
    const store = new ChatStore(c, { autoMarkRead: false });
    c.connect();
    await waitState(c, 'fallback');
    await until(() => c.isConnected, 'the SSE stream');
    await store.open(2);
    await until(() => store.getMessage(5)?.text === 'm5', 'the first page');
    edited = true;
    fake.sse[0]!.destroy(); // the stream drops; the client reconnects and resumes over REST
    await until(() => store.getMessage(5)?.text === 'edited while away', 'the page reloaded after the resume');
    expect(store.getMessage(5)).toMatchObject({ reactions: { '👍': { count: 1, me: false } } });
    expect(fake.calls.filter((x) => x.path === '/api/v1/conversations/2/messages/?limit=50').length).toBeGreaterThanOrEqual(2);
    store.dispose();
  });

  it('a REST refusal rejects with its code', async () => {
    fake.refuseUpgrades = Infinity;
    fake.onRest = (method, path) => (path === '/api/v1/messages/9/' ? { status: 403, body: { error: { code: 'forbidden', message: 'not yours' } } } : undefined);
    const c = client({ fallback: { afterFailures: 2, retryWebSocketMs: 60_000 } });
    c.connect();
    await waitState(c, 'fallback');
    await expect(c.editMessage(9, 'x')).rejects.toMatchObject({ code: 'forbidden', status: 403 });
  });
});

describe('fallback without streaming fetch (React Native)', () => {
  it('uses EventSource with the token in the query, and REST through the given fetch', async () => {
    fake.refuseUpgrades = Infinity;
    // fetch as React Native has it: fine for JSON, but no streaming body.
    const rnFetch = (async (url: string, init?: RequestInit) => {
      const res = await fetch(url, init);
      if (url.includes('/api/v1/events/')) {
        await res.body?.cancel();
        return { ok: true, status: 200, body: undefined, headers: res.headers } as unknown as Response;
      }
      return res;
    }) as typeof fetch;
    const c = client({ token: 'rn-token', fetch: rnFetch, EventSource: TinyEventSource, fallback: { afterFailures: 2, retryWebSocketMs: 60_000 } });
    const got = collect(c, 'new_message');
    c.connect();
    await waitState(c, 'fallback');
    await until(() => c.isConnected && fake.sse.length === 2, 'the EventSource stream');
    expect(fake.sseUrls[1]).toBe('/api/v1/events/?token=rn-token');
    fake.sseEvent(newMessage(70, 3, 1), '70');
    await until(() => got.length === 1, 'a message over EventSource');
    const r = await c.sendMessage({ conversationId: 3, text: 'from the phone' });
    expect(r.conversation_id).toBe(3);
  });
});
