// React bindings: useChat (the spec's useChatWebSocket, done right) and usePresence.
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';
import { IndabaClient, type IndabaClientOptions, type SendMessageInput } from './client.js';
import { ChatStore, type ChatMessage, type ChatSnapshot, type ChatStoreOptions, type PresenceInfo, type ThreadState } from './store.js';
import type { Id, MessageDeleted, MessageRead, MessageReads, MessageUpdated, PinChanged, PinsList, ReactionChanged, SendResult, ThreadPage } from './types.js';

/** Options of a message sent with `sendMessage(text, options)`. */
export type SendOptions = Pick<SendMessageInput, 'replyTo' | 'mentions' | 'attachments'>;

export interface UseChatOptions extends IndabaClientOptions, ChatStoreOptions {
  /** An existing client to use instead of creating one (it is not disconnected on unmount). */
  client?: IndabaClient;
  /** The conversation on screen: loaded, joined, marked read; its messages are `messages`. */
  conversationId?: number | null;
  /** The client is recreated when this changes (e.g. the signed-in user). Default: `url`. */
  key?: string | number;
}

export interface UseChatResult extends Omit<ChatSnapshot, 'messages'> {
  client: IndabaClient | null;
  store: ChatStore | null;
  isConnected: boolean;
  /** Messages of `conversationId`, or of every conversation (by time) without one. */
  messages: ChatMessage[];
  messagesByConversation: Record<number, ChatMessage[]>;
  /** Spec-compatible: sendMessage(conversationId, receiverId, text); sendMessage(text) or
   *  sendMessage(text, { replyTo, mentions }) for the open conversation; or sendMessage({ … }). */
  sendMessage(conversationIdOrText: Id | null | undefined | SendMessageInput, receiverIdOrOptions?: Id | null | SendOptions, text?: string): Promise<SendResult>;
  sendTypingIndicator(conversationId?: Id | null, receiverId?: Id | null, isTyping?: boolean): void;
  sendReadReceipt(messageIds: Id[]): void;
  markRead(conversationId?: number): void;
  open(conversationId: number | null): Promise<void>;
  loadOlder(conversationId?: number): Promise<void>;
  startDirect(userId: number): Promise<number>;

  // Rich messages (resolve with the change event every member gets; reject when refused).
  editMessage(messageId: Id, text: string): Promise<MessageUpdated>;
  deleteMessage(messageId: Id): Promise<MessageDeleted>;
  addReaction(messageId: Id, emoji: string): Promise<ReactionChanged>;
  removeReaction(messageId: Id, emoji: string): Promise<ReactionChanged>;
  /** Adds your reaction, or takes it back if you reacted with that emoji already. */
  toggleReaction(messageId: number, emoji: string): Promise<ReactionChanged>;
  pinMessage(messageId: Id): Promise<PinChanged>;
  unpinMessage(messageId: Id): Promise<PinChanged>;
  /** A thread page, as the server sends it (`openThread` also keeps it in `threads`). */
  getThread(messageId: Id, opts?: { afterSeq?: number; limit?: number }): Promise<ThreadPage>;
  /** Opens the thread of a message (root or reply) as `thread`; `null` closes it. */
  openThread(messageId: number | null): Promise<number | null>;
  loadMoreReplies(rootId?: number): Promise<void>;
  /** The open thread (root, replies, has_more), or null. */
  thread: ThreadState | null;
  /** Pinned messages of `conversationId` (after `listPins`/`loadPins`), most recent first. */
  pinned: ChatMessage[];
  listPins(conversationId?: Id): Promise<PinsList>;
  getReads(messageId: Id): Promise<MessageReads>;
  /** "Seen by" of a message (after `getReads`, and from live read receipts). */
  readsOf(messageId: number): MessageRead[] | undefined;
}

const IDLE: ChatSnapshot = {
  state: 'idle',
  transport: null,
  connected: false,
  userId: null,
  conversations: [],
  messages: {},
  unassigned: [],
  presence: {},
  totalUnread: 0,
  activeConversationId: null,
  threads: {},
  activeThreadId: null,
  pins: {},
  reads: {},
};
const NONE: ChatMessage[] = [];
const notYet = () => Promise.reject(new Error('not connected yet'));
const noopSubscribe = () => () => {};
const idleSnapshot = () => IDLE;

/** Creates a client (connects on mount, disconnects on unmount) or uses `options.client`. */
export function useIndabaClient(options: IndabaClientOptions & { client?: IndabaClient; key?: string | number }): IndabaClient | null {
  const latest = useRef(options);
  latest.current = options;
  const [client, setClient] = useState<IndabaClient | null>(options.client ?? null);
  const key = options.key ?? options.url ?? '';
  useEffect(() => {
    if (options.client) {
      setClient(options.client);
      return;
    }
    const o = latest.current;
    const c = new IndabaClient({
      ...o,
      // Always the latest callback, without recreating the client.
      getToken: o.getToken ? (r) => latest.current.getToken!(r) : undefined,
    });
    setClient(c);
    c.connect();
    return () => {
      c.disconnect();
      setClient(null);
    };
  }, [options.client, key]);
  return client;
}

/** Connection state, conversations with unread counts, messages with ticks, typing and presence. */
export function useChat(options: UseChatOptions): UseChatResult {
  const client = useIndabaClient(options);
  const storeOpts = useRef<ChatStoreOptions>(options);
  const store = useMemo(() => (client ? new ChatStore(client, storeOpts.current) : null), [client]);
  useEffect(() => () => store?.dispose(), [store]);
  const snap = useSyncExternalStore(store ? store.subscribe : noopSubscribe, store ? store.getSnapshot : idleSnapshot, store ? store.getSnapshot : idleSnapshot);

  const active = options.conversationId ?? null;
  useEffect(() => {
    if (store && client && client.state !== 'idle') void store.open(active);
  }, [store, client, active]);

  const messages = useMemo(() => {
    if (active !== null) return snap.messages[active] ?? [];
    return Object.values(snap.messages)
      .flat()
      .sort((a, b) => a.created_at.localeCompare(b.created_at));
  }, [snap.messages, active]);

  const sendMessage = useCallback(
    (a: Id | null | undefined | SendMessageInput, b?: Id | null | SendOptions, c?: string): Promise<SendResult> => {
      if (!client) return notYet();
      if (a !== null && typeof a === 'object') return client.sendMessage(a);
      if (c === undefined && typeof a === 'string' && (b === undefined || (b !== null && typeof b === 'object'))) {
        if (active === null) return Promise.reject(new Error('no conversationId: use sendMessage(conversationId, receiverId, text)'));
        return client.sendMessage({ conversationId: active, text: a, ...(b as SendOptions | undefined) });
      }
      return client.sendMessage(a, b as Id | null | undefined, c as string);
    },
    [client, active],
  );
  const sendTypingIndicator = useCallback(
    (conv?: Id | null, recv?: Id | null, isTyping = true) => {
      const id = conv ?? active;
      if (client && id !== null && id !== undefined) client.sendTypingIndicator(id, recv, isTyping);
    },
    [client, active],
  );
  const sendReadReceipt = useCallback((ids: Id[]) => client?.sendReadReceipt(ids), [client]);
  const markRead = useCallback(
    (conv?: number) => {
      const id = conv ?? active;
      if (store && id !== null) store.markRead(id);
    },
    [store, active],
  );
  const open = useCallback(async (conv: number | null) => store?.open(conv), [store]);
  const loadOlder = useCallback(
    async (conv?: number) => {
      const id = conv ?? active;
      if (store && id !== null) await store.loadOlder(id);
    },
    [store, active],
  );
  const startDirect = useCallback(
    async (userId: number) => {
      if (!store) throw new Error('not connected yet');
      return (await store.startDirect(userId)).id;
    },
    [store],
  );

  const rich = useMemo(
    () => ({
      editMessage: (id: Id, text: string) => (client ? client.editMessage(id, text) : notYet()),
      deleteMessage: (id: Id) => (client ? client.deleteMessage(id) : notYet()),
      addReaction: (id: Id, emoji: string) => (client ? client.addReaction(id, emoji) : notYet()),
      removeReaction: (id: Id, emoji: string) => (client ? client.removeReaction(id, emoji) : notYet()),
      toggleReaction: (id: number, emoji: string) => (store ? store.toggleReaction(id, emoji) : notYet()),
      pinMessage: (id: Id) => (client ? client.pinMessage(id) : notYet()),
      unpinMessage: (id: Id) => (client ? client.unpinMessage(id) : notYet()),
      getThread: (id: Id, opts?: { afterSeq?: number; limit?: number }) => (client ? client.getThread(id, opts) : notYet()),
      openThread: (id: number | null) => (store ? store.openThread(id) : notYet()),
      getReads: (id: Id) => (client ? client.getReads(id) : notYet()),
    }),
    [client, store],
  );
  const listPins = useCallback(
    (conv?: Id) => {
      const id = conv ?? active;
      if (!client) return notYet();
      if (id === null || id === undefined) return Promise.reject(new Error('no conversationId'));
      return client.listPins(id);
    },
    [client, active],
  );
  const loadMoreReplies = useCallback(
    async (root?: number) => {
      const id = root ?? snap.activeThreadId;
      if (store && id !== null) await store.loadMoreReplies(id);
    },
    [store, snap.activeThreadId],
  );
  const readsOf = useCallback((id: number) => snap.reads[id], [snap.reads]);

  return {
    ...snap,
    client,
    store,
    isConnected: snap.connected,
    messages,
    messagesByConversation: snap.messages,
    sendMessage,
    sendTypingIndicator,
    sendReadReceipt,
    markRead,
    open,
    loadOlder,
    startDirect,
    ...rich,
    listPins,
    loadMoreReplies,
    readsOf,
    thread: snap.activeThreadId !== null ? snap.threads[snap.activeThreadId] ?? null : null,
    pinned: active !== null ? snap.pins[active] ?? NONE : NONE,
  };
}

/** Live presence of users: subscribes through the client and follows `presence` events. */
export function usePresence(client: IndabaClient | null | undefined, userIds: readonly number[]): Record<number, PresenceInfo> {
  const [presence, setPresence] = useState<Record<number, PresenceInfo>>({});
  const idsKey = [...new Set(userIds)].sort((a, b) => a - b).join(',');
  useEffect(() => {
    if (!client || !idsKey) return;
    const ids = idsKey.split(',').map(Number);
    const known: Record<number, PresenceInfo> = {};
    for (const id of ids) {
      const p = client.getPresence(id);
      if (p) known[id] = { status: p.status, last_seen: p.last_seen };
    }
    setPresence(known);
    const off = client.on('presence', (p) => {
      if (ids.includes(p.user_id)) setPresence((prev) => ({ ...prev, [p.user_id]: { status: p.status, last_seen: p.last_seen } }));
    });
    client.subscribePresence(ids);
    return off;
  }, [client, idsKey]);
  return presence;
}
