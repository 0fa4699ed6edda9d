// Rich messages without a server: the reducers (changes.ts) as pure functions, and ChatStore
// with its IndabaClient fed frames through an in-memory WebSocket.
import { afterEach, describe, expect, it } from 'vitest';
import {
  addReply,
  applyChange,
  ChangeVersions,
  ChatStore,
  IndabaClient,
  richDefaults,
  setReaction,
  type ChatMessage,
  type MessageChange,
  type WebSocketConstructor,
  type WebSocketLike,
} from '@indaba/client';
import { sleep, until } from './server.js';

const ME = 1;
const OTHER = 2;
const CONV = 7;
const T0 = '2025-01-01T10:00:00.000Z';

function msg(id: number, seq: number, extra: Partial<ChatMessage> = {}): ChatMessage {
  return { key: `m${id}`, message_id: id, conversation_id: CONV, sender_id: OTHER, text: `m${id}`, seq, created_at: T0, mine: false, ...richDefaults(), ...extra };
}

const wire = (id: number, seq: number, extra: Record<string, unknown> = {}) => ({
  type: 'new_message',
  message_id: id,
  conversation_id: CONV,
  sender_id: OTHER,
  text: `m${id}`,
  seq,
  created_at: T0,
  ...richDefaults(),
  ...extra,
});

const edit = (id: number, seq: number, text: string, by = OTHER): MessageChange => ({ type: 'message_updated', message_id: id, conversation_id: CONV, seq, text, edited_at: `2025-01-01T10:00:${String(seq).padStart(2, '0')}.000Z`, user_id: by });
const del = (id: number, seq: number, by = OTHER): MessageChange => ({ type: 'message_deleted', message_id: id, conversation_id: CONV, seq, deleted_at: '2025-01-01T11:00:00.000Z', deleted_by: by });
const react = (id: number, seq: number, emoji: string, count: number, by: number, removed = false): MessageChange => ({
  type: removed ? 'reaction_removed' : 'reaction_added',
  message_id: id,
  conversation_id: CONV,
  seq,
  user_id: by,
  emoji,
  count,
});
const pin = (id: number, seq: number, unpin = false, by = OTHER): MessageChange => ({ type: unpin ? 'message_unpinned' : 'message_pinned', message_id: id, conversation_id: CONV, seq, user_id: by, at: '2025-01-01T12:00:00.000Z' });

describe('reducers (changes.ts)', () => {
  it('every change is idempotent: applying it twice is applying it once', () => {
    const m = msg(1, 1, { reactions: { '👍': { count: 1, me: false } } });
    for (const ev of [edit(1, 2, 'new'), del(1, 3), react(1, 4, '👍', 2, ME), react(1, 5, '👍', 0, OTHER, true), pin(1, 6), pin(1, 7, true)]) {
      const once = applyChange(m, ev, ME);
      const twice = applyChange(once, ev, ME);
      expect(twice).toBe(once); // the very same object: nothing changed the second time
      expect(twice).toEqual(once);
    }
  });

  it('an edit sets text and edited_at; a change to another message is ignored', () => {
    const m = msg(1, 1);
    expect(applyChange(m, edit(1, 2, 'fixed'), ME)).toMatchObject({ text: 'fixed', edited_at: '2025-01-01T10:00:02.000Z' });
    expect(applyChange(m, edit(99, 2, 'other'), ME)).toBe(m);
  });

  it('a delete leaves a tombstone: no text, no reactions, unpinned; id, seq, sender and time stay', () => {
    const m = msg(1, 4, { text: 'secret', reactions: { '🎉': { count: 3, me: true } }, pinned_at: T0, pinned_by: OTHER, reply_count: 2 });
    const t = applyChange(m, del(1, 9, OTHER), ME);
    expect(t).toMatchObject({ message_id: 1, seq: 4, sender_id: OTHER, created_at: T0, text: '', deleted: true, deleted_by: OTHER, deleted_at: '2025-01-01T11:00:00.000Z', reactions: {}, pinned_at: null, pinned_by: null });
    // A tombstone takes no later edit, reaction or pin.
    expect(applyChange(t, edit(1, 10, 'back'), ME)).toBe(t);
    expect(applyChange(t, react(1, 11, '👍', 1, OTHER), ME)).toBe(t);
    expect(applyChange(t, pin(1, 12), ME)).toBe(t);
  });

  it('reaction counts are set, not incremented; `me` changes only with your own reactions; 0 removes the chip', () => {
    let m = msg(1, 1);
    m = applyChange(m, react(1, 2, '👍', 3, OTHER), ME);
    expect(m.reactions).toEqual({ '👍': { count: 3, me: false } });
    m = applyChange(m, react(1, 3, '👍', 4, ME), ME);
    expect(m.reactions).toEqual({ '👍': { count: 4, me: true } });
    m = applyChange(m, react(1, 3, '👍', 4, ME), ME); // the same event again: still 4
    expect(m.reactions['👍']).toEqual({ count: 4, me: true });
    m = applyChange(m, react(1, 4, '👍', 3, OTHER, true), ME); // someone else took theirs back
    expect(m.reactions['👍']).toEqual({ count: 3, me: true });
    m = applyChange(m, react(1, 5, '👍', 2, ME, true), ME);
    expect(m.reactions['👍']).toEqual({ count: 2, me: false });
    m = applyChange(m, react(1, 6, ':tada:', 1, OTHER), ME);
    m = applyChange(m, react(1, 7, '👍', 0, OTHER, true), ME);
    expect(m.reactions).toEqual({ ':tada:': { count: 1, me: false } });
    expect(setReaction({}, 'x', 0)).toEqual({});
  });

  it('pins set pinned_at/pinned_by; unpin clears them', () => {
    const p = applyChange(msg(1, 1), pin(1, 2, false, ME), ME);
    expect(p).toMatchObject({ pinned_at: '2025-01-01T12:00:00.000Z', pinned_by: ME });
    expect(applyChange(p, pin(1, 3, true), ME)).toMatchObject({ pinned_at: null, pinned_by: null });
  });

  it('a reply counts on its root and moves last_reply_at forward only', () => {
    const r = addReply(msg(1, 1), { created_at: '2025-01-02T00:00:00.000Z' });
    expect(r).toMatchObject({ reply_count: 1, last_reply_at: '2025-01-02T00:00:00.000Z' });
    expect(addReply(r, { created_at: '2025-01-01T00:00:00.000Z' })).toMatchObject({ reply_count: 2, last_reply_at: '2025-01-02T00:00:00.000Z' });
  });

  it('ChangeVersions: a repeated or older change to the same field is refused; other fields are independent', () => {
    const v = new ChangeVersions();
    expect(v.accept(edit(1, 5, 'b'))).toBe(true);
    expect(v.accept(edit(1, 5, 'b'))).toBe(false);
    expect(v.accept(edit(1, 3, 'a'))).toBe(false);
    expect(v.accept(react(1, 4, '👍', 1, OTHER))).toBe(true); // another field, older seq: fine
    expect(v.accept(react(1, 4, '🎉', 1, OTHER))).toBe(true);
    expect(v.accept(edit(1, 6, 'c'))).toBe(true);
    expect(v.accept(edit(2, 1, 'x'))).toBe(true);
  });
});

// ---------------------------------------------------------------- client + store, in memory

/** A WebSocket that talks to the test: `sent` holds the client's frames, `receive` feeds it. */
class MemSocket implements WebSocketLike {
  static all: MemSocket[] = [];
  static onFrame: (s: MemSocket, f: Record<string, any>) => void = () => {};
  readyState = 0;
  sent: Record<string, any>[] = [];
  onopen: ((ev: any) => void) | null = null;
  onmessage: ((ev: { data: any }) => void) | null = null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null = null;
  onerror: ((ev: any) => void) | null = null;
  constructor(readonly url: string) {
    MemSocket.all.push(this);
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }
  send(data: string) {
    const f = JSON.parse(data);
    this.sent.push(f);
    if (f.type === 'authenticate') return this.receive({ type: 'connection_established', user_id: ME, connection_id: `mem/${MemSocket.all.length}`, server_time: T0 });
    if (f.type === 'list_conversations') return this.receive({ type: 'conversations', conversations: [conversation()] });
    MemSocket.onFrame(this, f);
  }
  close(code = 1000) {
    this.drop(code);
  }
  /** The server closes the socket. */
  drop(code: number) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code }), 0);
  }
  receive(f: object) {
    if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(f) });
  }
  static get last(): MemSocket {
    return MemSocket.all[MemSocket.all.length - 1]!;
  }
}

const conversation = () => ({ id: CONV, kind: 'direct', title: '', participant_ids: [ME, OTHER], last_seq: 0, last_read_seq: 0, unread_count: 0, unread_mentions: 0 });

let made: { client: IndabaClient; store: ChatStore }[] = [];
afterEach(() => {
  for (const { client, store } of made.splice(0)) {
    store.dispose();
    client.disconnect();
  }
  MemSocket.all = [];
  MemSocket.onFrame = () => {};
});

async function setup() {
  const client = new IndabaClient({
    url: 'http://mem.invalid',
    token: 't',
    WebSocket: MemSocket as unknown as WebSocketConstructor,
    reconnect: { baseDelayMs: 5, maxDelayMs: 20 },
    restartDelayMs: 10,
    fallback: false,
    requestTimeoutMs: 2000,
  });
  const store = new ChatStore(client, { autoMarkRead: false });
  made.push({ client, store });
  client.connect();
  await until(() => client.state === 'open' && store.getSnapshot().conversations.length === 1, 'open, with the conversation listed');
  const feed = (...frames: object[]) => {
    for (const f of frames) MemSocket.last.receive(f);
  };
  const settle = () => sleep(5);
  const get = (id: number) => store.getMessage(id, CONV);
  return { client, store, feed, settle, get };
}

describe('ChatStore with change events', () => {
  it('the cursor is the highest seq of messages and change events alike, and sync sends it', async () => {
    const { client, feed } = await setup();
    feed(wire(100, 1), wire(101, 2), edit(100, 3, 'edited'), react(101, 4, '👍', 1, OTHER));
    expect(client.getLastSeqs()).toEqual({ [CONV]: 4 });
    feed(pin(101, 5));
    expect(client.getLastSeqs()).toEqual({ [CONV]: 5 });
    MemSocket.last.drop(1012);
    await until(() => MemSocket.all.length === 2 && MemSocket.last.sent.some((f) => f.type === 'sync'), 'sync after the reconnect');
    expect(MemSocket.last.sent.find((f) => f.type === 'sync')).toEqual({ type: 'sync', conversations: { [CONV]: 5 } });
  });

  it('after a resume: state matches, a change folded into a resumed message leaves no gap, repeats apply once', async () => {
    const { client, store, feed, settle, get } = await setup();
    const changes: MessageChange[] = [];
    client.on('message_changed', (c) => changes.push(c));
    feed(wire(100, 1), wire(101, 2, { reactions: { '👍': { count: 1, me: false } } }), react(101, 3, '👍', 2, ME));
    await settle();
    expect(get(101)!.reactions).toEqual({ '👍': { count: 2, me: true } });
    MemSocket.last.drop(1006);
    await until(() => MemSocket.all.length === 2 && MemSocket.last.sent.some((f) => f.type === 'sync'), 'sync');
    expect(MemSocket.last.sent.find((f) => f.type === 'sync')!.conversations).toEqual({ [CONV]: 3 });
    // Offline: 100 edited (4), 101 deleted (5), 102 sent (6) and edited (7: folded into 102's
    // state, never sent), 103 sent (8) as a reply to 100.
    feed(
      edit(100, 4, 'edited offline'),
      del(101, 5),
      wire(102, 6, { text: 'new, edited', edited_at: T0 }),
      wire(103, 8, { reply_to: 100 }),
      { type: 'sync_complete', conversations: { [CONV]: 8 } },
    );
    await settle();
    expect(client.getLastSeqs()).toEqual({ [CONV]: 8 });
    expect(get(100)).toMatchObject({ text: 'edited offline', reply_count: 1 });
    expect(get(101)).toMatchObject({ deleted: true, text: '', reactions: {} });
    expect(get(102)).toMatchObject({ text: 'new, edited', edited_at: T0 });
    expect(store.messagesOf(CONV).map((m) => m.message_id)).toEqual([100, 101, 102, 103]);
    // The same changes again (a second resume from an older cursor): nothing moves, nothing re-emitted.
    const before = store.getSnapshot().messages[CONV];
    const emitted = changes.length;
    feed(react(101, 3, '👍', 2, ME), edit(100, 4, 'edited offline'), del(101, 5));
    await settle();
    expect(changes.length).toBe(emitted);
    expect(store.getSnapshot().messages[CONV]).toBe(before);
    // No gap is left open at seq 7: no second sync.
    await sleep(1700);
    expect(MemSocket.last.sent.filter((f) => f.type === 'sync')).toHaveLength(1);
  });

  it('an older change arriving after a newer one is not applied (per field, by seq)', async () => {
    const { store, feed, settle, get } = await setup();
    feed(wire(100, 1), edit(100, 5, 'second'));
    await settle();
    // Delivered again by a path the client cannot de-duplicate (e.g. a REST answer).
    (store as unknown as { onChange(ev: MessageChange): void }).onChange(edit(100, 3, 'first'));
    await settle();
    expect(get(100)!.text).toBe('second');
  });

  it('delete: a tombstone everywhere (list, last message, pins), reactions cleared, unread count down', async () => {
    const { store, feed, settle, get } = await setup();
    MemSocket.onFrame = (s, f) => {
      if (f.type === 'list_pins') s.receive({ type: 'pins', conversation_id: CONV, messages: [wire(100, 1, { pinned_at: T0, pinned_by: OTHER })] });
    };
    feed(wire(100, 1, { reactions: { '😂': { count: 2, me: true } }, pinned_at: T0, pinned_by: OTHER }), wire(101, 2, { mentions: [ME] }));
    await settle();
    expect(await store.loadPins(CONV)).toHaveLength(1);
    expect(store.getSnapshot().conversations[0]).toMatchObject({ unread_count: 2, unread_mentions: 1 });
    feed(del(100, 3));
    await settle();
    expect(get(100)).toMatchObject({ deleted: true, text: '', reactions: {}, pinned_at: null });
    expect(store.getSnapshot().pins[CONV]).toEqual([]);
    expect(store.getSnapshot().conversations[0]!.unread_count).toBe(1);
    feed(del(101, 4));
    await settle();
    const conv = store.getSnapshot().conversations[0]!;
    expect(conv).toMatchObject({ unread_count: 0, unread_mentions: 0, last_seq: 4 });
    expect(conv.last_message).toMatchObject({ message_id: 101, deleted: true, text: '' });
  });

  it('reply_count goes up once per reply: live, repeated, from history, and your own reply', async () => {
    const { client, store, feed, settle, get } = await setup();
    MemSocket.onFrame = (s, f) => {
      if (f.type === 'chat_message') s.receive({ type: 'message_sent', message_id: 201, conversation_id: CONV, seq: 4, client_msg_id: f.client_msg_id, created_at: '2025-01-03T00:00:00.000Z' });
      if (f.type === 'history') s.receive({ type: 'history', conversation_id: CONV, messages: [wire(100, 1, { reply_count: 2 }), wire(200, 2, { reply_to: 100 })], has_more: false });
    };
    feed(wire(100, 1), wire(200, 2, { reply_to: 100 }));
    await settle();
    expect(get(100)!.reply_count).toBe(1);
    feed(wire(200, 2, { reply_to: 100 })); // a repeat
    await settle();
    expect(get(100)!.reply_count).toBe(1);
    await client.history(CONV); // the server's copy: the count it says, not one more
    await settle();
    expect(get(100)!.reply_count).toBe(2);
    const r = await store.send(CONV, 'my reply', { replyTo: 100, mentions: [OTHER] });
    await settle();
    expect(MemSocket.last.sent.find((f) => f.type === 'chat_message')).toMatchObject({ text: 'my reply', reply_to: 100, mentions: [OTHER] });
    expect(r.message_id).toBe(201);
    expect(get(100)).toMatchObject({ reply_count: 3, last_reply_at: '2025-01-03T00:00:00.000Z' });
    expect(get(201)).toMatchObject({ reply_to: 100, mentions: [OTHER], mine: true, status: 'sent' });
    // Your own message coming back (another path): known already, not counted again.
    feed(wire(201, 4, { sender_id: ME, reply_to: 100 }));
    await settle();
    expect(get(100)!.reply_count).toBe(3);
  });

  it('threads: openThread loads root and replies; live replies and your pending ones join it', async () => {
    const { client, store, feed, settle } = await setup();
    let answer = true;
    MemSocket.onFrame = (s, f) => {
      if (f.type === 'thread' && answer)
        s.receive({ type: 'thread', message_id: 100, conversation_id: CONV, messages: [wire(100, 1, { reply_count: 1 }), wire(150, 3, { reply_to: 100 })], has_more: false });
    };
    // 150 (a reply) is not in the conversation's loaded page; 151 replies in another thread.
    feed(wire(100, 1, { reply_count: 1 }), wire(151, 4, { reply_to: 999 }));
    await store.openThread(100);
    await settle();
    let t = store.getSnapshot().threads[100]!;
    expect(store.getSnapshot().activeThreadId).toBe(100);
    expect(t.root).toMatchObject({ message_id: 100, reply_count: 1 });
    expect(t.replies.map((m) => m.message_id)).toEqual([150]);
    expect(MemSocket.last.sent.find((f) => f.type === 'thread')).toEqual({ type: 'thread', message_id: 100, limit: 50 });
    // A live reply, and an edit to a reply held only by the thread.
    feed(wire(152, 5, { reply_to: 100 }), edit(150, 6, 'reply, edited'));
    answer = false;
    void store.send(CONV, 'pending reply', { replyTo: 100 });
    await settle();
    t = store.getSnapshot().threads[100]!;
    expect(t.root!.reply_count).toBe(2);
    expect(t.replies.map((m) => m.text)).toEqual(['reply, edited', 'm152', 'pending reply']);
    expect(t.replies[2]!.status).toBe('pending');
    await store.openThread(null);
    expect(store.getSnapshot().activeThreadId).toBe(null);
    // Seqs 2 and 3 never came live (the thread page does not count): the cursor waits at 1.
    expect(client.getLastSeqs()[CONV]).toBe(1);
  });

  it('pins: loaded, then kept current by pinned/unpinned events', async () => {
    const { store, feed, settle } = await setup();
    MemSocket.onFrame = (s, f) => {
      if (f.type === 'list_pins') s.receive({ type: 'pins', conversation_id: CONV, messages: [wire(101, 2, { pinned_at: T0, pinned_by: OTHER })] });
    };
    feed(wire(100, 1), wire(101, 2, { pinned_at: T0, pinned_by: OTHER }));
    await store.loadPins(CONV);
    feed(pin(100, 3, false, ME));
    await settle();
    expect(store.getSnapshot().pins[CONV]!.map((m) => [m.message_id, m.pinned_by])).toEqual([
      [100, ME],
      [101, OTHER],
    ]);
    feed(pin(101, 4, true));
    await settle();
    expect(store.getSnapshot().pins[CONV]!.map((m) => m.message_id)).toEqual([100]);
    expect(store.getMessage(101)!.pinned_at).toBe(null);
  });

  it('seen by: getReads fills reads; live read receipts add readers', async () => {
    const { store, feed, settle } = await setup();
    MemSocket.onFrame = (s, f) => {
      if (f.type === 'message_reads') s.receive({ type: 'message_reads', message_id: f.message_id, conversation_id: CONV, reads: [{ user_id: 3, read_at: '2025-01-01T10:05:00.000Z' }] });
    };
    feed(wire(300, 1, { sender_id: ME }));
    expect(await store.loadReads(300)).toEqual([{ user_id: 3, read_at: '2025-01-01T10:05:00.000Z' }]);
    feed({ type: 'read_receipt', message_ids: [300], conversation_id: CONV, reader_id: OTHER, read_at: '2025-01-01T10:06:00.000Z' });
    await settle();
    expect(store.getSnapshot().reads[300]!.map((r) => r.user_id)).toEqual([3, OTHER]);
  });
});

describe('IndabaClient rich-message requests', () => {
  it('each request is answered by its change event (your own, for reactions) and refused by an error naming the message', async () => {
    const { client, store, feed, settle } = await setup();
    feed(wire(100, 1), wire(101, 2));
    await settle();

    const edited = client.editMessage(100, 'new text');
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'edit_message', message_id: 100, text: 'new text' });
    feed(edit(100, 3, 'new text', ME));
    await expect(edited).resolves.toMatchObject({ type: 'message_updated', seq: 3 });

    let done = false;
    const reacted = client.addReaction(101, '👍').then((r) => ((done = true), r));
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'add_reaction', message_id: 101, emoji: '👍' });
    feed(react(101, 4, '👍', 1, OTHER)); // someone else's: not the answer
    await settle();
    expect(done).toBe(false);
    feed(react(101, 5, '👍', 2, ME));
    await expect(reacted).resolves.toMatchObject({ user_id: ME, count: 2 });
    await settle();
    expect(store.getMessage(101)!.reactions).toEqual({ '👍': { count: 2, me: true } });

    const toggled = store.toggleReaction(101, '👍');
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'remove_reaction', message_id: 101, emoji: '👍' });
    feed(react(101, 6, '👍', 1, ME, true));
    await expect(toggled).resolves.toMatchObject({ type: 'reaction_removed' });

    const pinned = client.pinMessage(101);
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'pin_message', message_id: 101 });
    feed(pin(101, 7, false, ME));
    await expect(pinned).resolves.toMatchObject({ type: 'message_pinned' });
    const unpinned = client.unpinMessage(101);
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'unpin_message', message_id: 101 });
    feed(pin(101, 8, true, ME));
    await expect(unpinned).resolves.toMatchObject({ type: 'message_unpinned' });

    const refused = client.deleteMessage(101);
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'delete_message', message_id: 101 });
    feed({ type: 'error', code: 'forbidden', message: 'not yours', message_ids: [101] });
    await expect(refused).rejects.toMatchObject({ code: 'forbidden' });

    const deleted = client.deleteMessage(100);
    feed(del(100, 9, ME));
    await expect(deleted).resolves.toMatchObject({ type: 'message_deleted', deleted_by: ME });

    // A thread asked by a reply's id is answered with the root's.
    const thread = client.getThread(151, { afterSeq: 2, limit: 10 });
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'thread', message_id: 151, after_seq: 2, limit: 10 });
    feed({ type: 'thread', message_id: 150, conversation_id: CONV, messages: [wire(151, 3, { reply_to: 150 })], has_more: false });
    await expect(thread).resolves.toMatchObject({ message_id: 150 });

    const pins = client.listPins(CONV);
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'list_pins', conversation_id: CONV });
    feed({ type: 'pins', conversation_id: CONV, messages: [] });
    await expect(pins).resolves.toMatchObject({ messages: [] });

    const reads = client.getReads(100);
    expect(MemSocket.last.sent.at(-1)).toEqual({ type: 'message_reads', message_id: 100 });
    feed({ type: 'message_reads', message_id: 100, conversation_id: CONV, reads: [] });
    await expect(reads).resolves.toMatchObject({ reads: [] });
    expect(client.getLastSeqs()[CONV]).toBe(9);
  });

  it('checks arguments locally', async () => {
    const { client } = await setup();
    await expect(client.editMessage(1, '  ')).rejects.toMatchObject({ code: 'empty_text' });
    await expect(client.addReaction(1, '')).rejects.toMatchObject({ code: 'invalid_field' });
    await expect(client.addReaction(1, ':' + 'x'.repeat(40) + ':')).rejects.toMatchObject({ code: 'invalid_field' });
    await expect(client.deleteMessage('nope')).rejects.toMatchObject({ code: 'invalid_field' });
  });

  it('a request whose socket drops is sent again after the reconnect', async () => {
    const { client } = await setup();
    const edited = client.editMessage(100, 'again');
    MemSocket.last.drop(1012);
    await until(() => MemSocket.all.length === 2 && MemSocket.last.sent.some((f) => f.type === 'edit_message'), 'the edit resent');
    MemSocket.last.receive(edit(100, 3, 'again', ME));
    await expect(edited).resolves.toMatchObject({ text: 'again' });
  });
});
