// Rich messages against the real Indaba single-node program (INDABA_BIN): edits, deletes,
// reactions, pins, replies, threads, mentions, "seen by", a resume that carries change events,
// and the same calls over the REST fallback.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ChatStore, type MessageChange, type NewMessage, type WebSocketConstructor } from '@indaba/client';
import { IndabaServer, sleep, until } from './server.js';
import { Clients, collect, connected, recordingWebSocket, waitState } from './helpers.js';

let server: IndabaServer;
let clients: Clients;
const stores: ChatStore[] = [];

beforeAll(async () => {
  server = new IndabaServer();
  await server.start();
  clients = new Clients(server);
});
afterEach(() => {
  for (const s of stores.splice(0)) s.dispose();
  clients.closeAll();
});
afterAll(async () => server?.dispose());

describe('rich messages (real server)', () => {
  it('edit, react, pin and delete reach both users, the actor included (its answer); refusals name the message', async () => {
    const a = clients.make(1);
    const b = clients.make(2);
    await connected(a, b);
    const bChanges = collect(b, 'message_changed');
    const aChanges = collect(a, 'message_changed');
    const r = await a.sendMessage({ receiverId: 2, text: 'hello' });
    const conv = r.conversation_id;

    const edited = await a.editMessage(r.message_id, 'hello, edited');
    expect(edited).toMatchObject({ type: 'message_updated', message_id: r.message_id, conversation_id: conv, text: 'hello, edited', user_id: 1 });
    expect(edited.seq).toBeGreaterThan(r.seq);
    expect(edited.edited_at).toMatch(/^\d{4}-\d\d-\d\dT/);
    await until(() => bChanges.some((c) => c.seq === edited.seq && c.type === 'message_updated'), 'b to see the edit');
    await expect(b.editMessage(r.message_id, 'not yours')).rejects.toMatchObject({ code: 'forbidden' });

    const up = await b.addReaction(r.message_id, '👍');
    expect(up).toMatchObject({ type: 'reaction_added', message_id: r.message_id, user_id: 2, emoji: '👍', count: 1 });
    expect(up.seq).toBeGreaterThan(edited.seq);
    const up2 = await a.addReaction(r.message_id, '👍');
    expect(up2).toMatchObject({ user_id: 1, count: 2 });
    const down = await b.removeReaction(r.message_id, '👍');
    expect(down).toMatchObject({ type: 'reaction_removed', user_id: 2, count: 1 });
    await expect(a.addReaction(r.message_id, 'not an emoji')).rejects.toMatchObject({ code: 'invalid_field' });

    const pinned = await b.pinMessage(r.message_id);
    expect(pinned).toMatchObject({ type: 'message_pinned', message_id: r.message_id, user_id: 2 });
    const pins = await a.listPins(conv);
    expect(pins).toMatchObject({ type: 'pins', conversation_id: conv });
    expect(pins.messages.map((m) => m.message_id)).toEqual([r.message_id]);
    // Message views carry every rich field; `me` is the reader's.
    expect(pins.messages[0]).toMatchObject({
      text: 'hello, edited',
      edited_at: edited.edited_at,
      pinned_by: 2,
      reply_to: null,
      mentions: [],
      deleted: false,
      reactions: { '👍': { count: 1, me: true } },
      reply_count: 0,
    });
    expect((await b.listPins(conv)).messages[0]!.reactions).toEqual({ '👍': { count: 1, me: false } });
    await expect(b.unpinMessage(r.message_id)).resolves.toMatchObject({ type: 'message_unpinned' });
    expect((await a.listPins(conv)).messages).toEqual([]);

    const deleted = await a.deleteMessage(r.message_id);
    expect(deleted).toMatchObject({ type: 'message_deleted', message_id: r.message_id, deleted_by: 1 });
    const page = await b.history(conv);
    expect(page.messages.find((m) => m.message_id === r.message_id)).toMatchObject({
      deleted: true,
      text: '',
      reactions: {},
      pinned_at: null,
      seq: r.seq,
      sender_id: 1,
      created_at: r.created_at,
      deleted_by: 1,
    });
    await expect(b.addReaction(r.message_id, '🎉')).rejects.toMatchObject({ code: 'message_deleted' });

    // Every change reached both users once, and moved both cursors to the last one.
    const types = ['message_updated', 'reaction_added', 'reaction_added', 'reaction_removed', 'message_pinned', 'message_unpinned', 'message_deleted'];
    await until(() => bChanges.length === types.length && aChanges.length === types.length, 'seven changes on both sides');
    expect(bChanges.map((c) => c.type)).toEqual(types);
    expect(aChanges.map((c) => c.seq)).toEqual(bChanges.map((c) => c.seq));
    await until(() => b.getLastSeqs()[conv] === deleted.seq && a.getLastSeqs()[conv] === deleted.seq, 'the cursors at the delete');
  });

  it('replies, threads (one level), mentions and "seen by"', async () => {
    const a = clients.make(3);
    const b = clients.make(4);
    await connected(a, b);
    const aGot = collect(a, 'new_message');
    const root = await a.sendMessage({ receiverId: 4, text: 'root' });
    const conv = root.conversation_id;
    const r1 = await b.sendMessage({ conversationId: conv, text: 'first reply', replyTo: root.message_id, mentions: [3] });
    await until(() => aGot.some((m) => m.message_id === r1.message_id), 'a to get the reply');
    expect(aGot.find((m) => m.message_id === r1.message_id)).toMatchObject({ reply_to: root.message_id, mentions: [3] });
    // A reply to a reply joins the root's thread.
    const r2 = await a.sendMessage({ conversationId: conv, text: 'reply to the reply', replyTo: r1.message_id });
    await expect(a.sendMessage({ conversationId: conv, text: 'x', replyTo: 999_999 })).rejects.toMatchObject({ code: 'invalid_reply' });
    await expect(b.sendMessage({ conversationId: conv, text: 'x', mentions: [77] })).rejects.toMatchObject({ code: 'invalid_mention' });

    const t = await b.getThread(root.message_id);
    expect(t).toMatchObject({ type: 'thread', message_id: root.message_id, conversation_id: conv, has_more: false });
    expect(t.messages.map((m) => m.text)).toEqual(['root', 'first reply', 'reply to the reply']);
    expect(t.messages[0]).toMatchObject({ reply_count: 2, reply_to: null });
    expect(t.messages[0]!.last_reply_at).toBeTruthy();
    expect(t.messages[2]!.reply_to).toBe(root.message_id);
    expect(t.messages[2]!.message_id).toBe(r2.message_id);
    // Asked by a reply: the same thread, named by its root.
    expect((await a.getThread(r1.message_id)).message_id).toBe(root.message_id);
    const after = await b.getThread(root.message_id, { afterSeq: t.messages[1]!.seq });
    expect(after.messages.map((m) => m.text)).toEqual(['reply to the reply']);

    const list = await a.listConversations();
    expect(list.find((c) => c.id === conv)).toMatchObject({ unread_mentions: 1 });

    b.sendReadReceipt([root.message_id]);
    const reads = await until(async () => {
      const r = await a.getReads(root.message_id);
      return r.reads.some((x) => x.user_id === 4) ? r : null;
    }, 'b in "seen by"');
    expect(reads).toMatchObject({ type: 'message_reads', message_id: root.message_id, conversation_id: conv });
    expect(reads.reads.find((x) => x.user_id === 4)!.read_at).toMatch(/^\d{4}-/);
  });

  it('a client away while messages change: the resume brings every change, its store matches and its cursor counts them', async () => {
    const a = clients.make(5);
    const rec = recordingWebSocket();
    const b = clients.make(6, { WebSocket: rec.Ctor });
    const store = new ChatStore(b, { autoMarkRead: false });
    stores.push(store);
    await connected(a, b);
    const first = await a.sendMessage({ receiverId: 6, text: 'one' });
    const conv = first.conversation_id;
    const two = await a.sendMessage({ conversationId: conv, text: 'two' });
    const three = await a.sendMessage({ conversationId: conv, text: 'three' });
    await until(() => store.messagesOf(conv).length === 3, 'b to hold three messages');
    await b.addReaction(three.message_id, '🎉');
    const changes = collect(b, 'message_changed');

    b.disconnect();
    await a.editMessage(first.message_id, 'one, edited');
    await a.deleteMessage(two.message_id);
    await a.addReaction(three.message_id, '🎉');
    await a.pinMessage(first.message_id);
    const four = await a.sendMessage({ conversationId: conv, text: 'four' });
    await a.editMessage(four.message_id, 'four, edited'); // a change to a message the resume carries
    const reply = await a.sendMessage({ conversationId: conv, text: 'a reply', replyTo: first.message_id });
    const end = a.getLastSeqs()[conv]!;
    expect(end).toBe(reply.seq);

    b.connect();
    await waitState(b, 'open');
    await until(() => b.getLastSeqs()[conv] === end && store.getMessage(reply.message_id), 'b to catch up');
    const get = (id: number) => store.getMessage(id, conv)!;
    expect(get(first.message_id)).toMatchObject({ text: 'one, edited', pinned_by: 5, reply_count: 1 });
    expect(get(two.message_id)).toMatchObject({ deleted: true, text: '', reactions: {} });
    expect(get(three.message_id).reactions).toEqual({ '🎉': { count: 2, me: true } });
    expect(get(four.message_id)).toMatchObject({ text: 'four, edited' });
    expect(get(four.message_id).edited_at).toBeTruthy();
    expect(get(reply.message_id)).toMatchObject({ reply_to: first.message_id });
    expect(changes.map((c) => c.type)).toEqual(['message_updated', 'message_deleted', 'reaction_added', 'message_pinned']);
    // The edit folded into "four" leaves no gap behind: no second sync.
    await sleep(2000);
    expect(rec.sent.filter((f) => f.type === 'sync')).toHaveLength(1);
    expect(rec.sent.find((f) => f.type === 'sync')!.conversations[conv]).toBe(three.seq + 1); // the reaction b made
  });

  it('over the REST fallback: replies, edits, reactions, pins, threads, pins list, reads; changes arrive over SSE', async () => {
    const a = clients.make(7);
    const blocked = class extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url.replace(/\/\/[^/]+\//, '//127.0.0.1:9/'), protocols);
      }
    } as unknown as WebSocketConstructor;
    const b = clients.make(8, { WebSocket: blocked, fallback: { afterFailures: 2, retryWebSocketMs: 600_000 } });
    await connected(a);
    const aChanges = collect(a, 'message_changed');
    const bChanges = collect(b, 'message_changed');
    b.connect();
    await waitState(b, 'fallback');
    await until(() => b.isConnected, 'the SSE stream');

    const aGot = collect(a, 'new_message');
    const root = await a.sendMessage({ receiverId: 8, text: 'over rest' });
    const conv = root.conversation_id;
    const reply = await b.sendMessage({ conversationId: conv, text: 'rest reply', replyTo: root.message_id, mentions: [7] });
    await until(() => aGot.some((m: NewMessage) => m.message_id === reply.message_id), 'a to get the REST reply');
    expect(aGot.find((m) => m.message_id === reply.message_id)).toMatchObject({ reply_to: root.message_id, mentions: [7] });

    await expect(b.editMessage(reply.message_id, 'rest reply, edited')).resolves.toMatchObject({ message_id: reply.message_id, text: 'rest reply, edited' });
    await b.addReaction(root.message_id, '👍');
    await b.pinMessage(root.message_id);
    await until(() => ['message_updated', 'reaction_added', 'message_pinned'].every((t) => aChanges.some((c: MessageChange) => c.type === t)), 'a to see b’s REST changes');
    expect(aChanges.find((c) => c.type === 'reaction_added')).toMatchObject({ user_id: 8, emoji: '👍', count: 1 });

    const pins = await b.listPins(conv);
    expect(pins.messages.map((m) => m.message_id)).toEqual([root.message_id]);
    const t = await b.getThread(root.message_id);
    expect(t.messages.map((m) => m.text)).toEqual(['over rest', 'rest reply, edited']);
    expect(t.messages[1]).toMatchObject({ reply_to: root.message_id, mentions: [7] });

    a.sendReadReceipt([reply.message_id]);
    await until(async () => (await b.getReads(reply.message_id)).reads.some((r) => r.user_id === 7), 'a in "seen by" over REST');

    // a's change reaches b over the event stream.
    const aEdit = await a.editMessage(root.message_id, 'over rest, edited');
    await until(() => bChanges.some((c) => c.seq === aEdit.seq), 'the edit over SSE');

    await b.unpinMessage(root.message_id);
    await b.removeReaction(root.message_id, '👍');
    await expect(b.deleteMessage(reply.message_id)).resolves.toMatchObject({ message_id: reply.message_id });
    expect((await b.listPins(conv)).messages).toEqual([]);
  });
});
