// ChatStore: the state a chat screen shows (conversations with unread counts, messages with
// ticks, edits, reactions, replies, threads, pins, who is typing, presence), kept up to date
// from an IndabaClient. Framework-free: subscribe()/getSnapshot() fit React's
// useSyncExternalStore, and anything else.

import { addReply, applyChange, ChangeVersions, richDefaults } from './changes.js';
import type { IndabaClient, SendMessageInput } from './client.js';
import type {
  Attachment,
  ConnectionState,
  ConversationInfo,
  Id,
  MessageChange,
  MessageRead,
  MessageView,
  NewMessage,
  OutboxItem,
  PresenceStatus,
  ReactionSummary,
  SendResult,
  ThreadPage,
  Transport,
} from './types.js';

export type MessageStatus = 'pending' | 'sent' | 'delivered' | 'read' | 'failed';

export interface ChatMessage {
  /** Stable key for lists: the client_msg_id of your own messages, else `m<message_id>`. */
  key: string;
  message_id?: number;
  client_msg_id?: string;
  conversation_id?: number;
  receiver_id?: number;
  sender_id: number;
  text: string;
  seq?: number;
  created_at: string;
  mine: boolean;
  /** Your own messages: pending (in the outbox) → sent → delivered → read, or failed. */
  status?: MessageStatus;
  error?: string;
  /** The thread root this replies to, or null. */
  reply_to: number | null;
  /** Users mentioned. */
  mentions: number[];
  /** Last edit, or null. */
  edited_at: string | null;
  /** A tombstone: `text` is "", no reactions. */
  deleted: boolean;
  deleted_at: string | null;
  deleted_by: number | null;
  /** Emoji → `{count, me}`. */
  reactions: Record<string, ReactionSummary>;
  reply_count: number;
  last_reply_at: string | null;
  pinned_at: string | null;
  pinned_by: number | null;
  /** Files attached (your pending message: none until the server has checked them). */
  attachments?: Attachment[];
  /** Your pending message: the upload ids it carries. */
  upload_ids?: number[];
}

/** A thread: its root and replies (loaded ones and those that arrived live, yours pending last). */
export interface ThreadState {
  root_id: number;
  conversation_id: number;
  /** Absent until the first page arrives (unless the root is already loaded). */
  root?: ChatMessage;
  replies: ChatMessage[];
  /** More replies exist on the server than the pages loaded. */
  has_more: boolean;
  loading: boolean;
}

export interface ConversationState {
  id: number;
  kind: string;
  title: string;
  participant_ids: number[];
  last_seq: number;
  last_read_seq: number;
  unread_count: number;
  /** Of the unread messages, those mentioning you. */
  unread_mentions: number;
  /** Groups: owner and admins. */
  owner_id?: number;
  admin_ids?: number[];
  last_message?: ChatMessage;
  /** Users typing right now. */
  typing: number[];
  /** Older messages exist that are not loaded. */
  has_more?: boolean;
}

export interface PresenceInfo {
  status: PresenceStatus;
  last_seen: string | null;
}

export interface ChatSnapshot {
  state: ConnectionState;
  transport: Transport | null;
  connected: boolean;
  userId: number | null;
  /** Most recently active first. */
  conversations: ConversationState[];
  /** Per conversation, by seq; your unacknowledged messages at the end. */
  messages: Record<number, ChatMessage[]>;
  /** Your pending messages to a receiver_id whose conversation is not known yet. */
  unassigned: ChatMessage[];
  presence: Record<number, PresenceInfo>;
  totalUnread: number;
  activeConversationId: number | null;
  /** Threads opened (by root id), kept current by live events. */
  threads: Record<number, ThreadState>;
  /** The thread open on screen (`openThread`). */
  activeThreadId: number | null;
  /** Pinned messages per conversation, most recently pinned first (once `loadPins` ran). */
  pins: Record<number, ChatMessage[]>;
  /** Who read a message ("seen by"), per message id: from `loadReads` and live read receipts. */
  reads: Record<number, MessageRead[]>;
}

export interface ChatStoreOptions {
  /** Mark incoming messages of the open conversation read while the page is visible. Default true. */
  autoMarkRead?: boolean;
  /** How long a typing user stays shown without a new typing_indicator. Default 8 s. */
  typingExpiryMs?: number;
  /** Messages loaded when a conversation is opened. Default 50. */
  pageSize?: number;
}

const EMPTY: ChatMessage[] = [];

export class ChatStore {
  readonly client: IndabaClient;
  private opts: Required<ChatStoreOptions>;
  private convs = new Map<number, ConversationState>();
  private msgs = new Map<number, ChatMessage[]>();
  private unassigned: ChatMessage[] = [];
  private presence: Record<number, PresenceInfo> = {};
  private typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private active: number | null = null;
  private loaded = new Set<number>();
  /** Delivery/read notices for ids whose message_sent has not arrived yet. */
  private early = new Map<number, MessageStatus>();
  private snapshot: ChatSnapshot;
  private listeners = new Set<() => void>();
  private scheduled = false;
  private offs: (() => void)[] = [];
  private listTimer: ReturnType<typeof setTimeout> | null = null;
  private disposeVisibility: (() => void) | null = null;
  private threads = new Map<number, ThreadState>();
  private activeThread: number | null = null;
  private pinsOf = new Map<number, ChatMessage[]>();
  private readsOf = new Map<number, MessageRead[]>();
  private versions = new ChangeVersions();

  constructor(client: IndabaClient, options: ChatStoreOptions = {}) {
    this.client = client;
    this.opts = { autoMarkRead: true, typingExpiryMs: 8000, pageSize: 50, ...options };
    this.snapshot = this.build();
    const c = client;
    this.offs.push(
      c.on('state', () => this.changed()),
      c.on('connection_established', () => this.changed()),
      c.on('conversations', (f) => this.onConversations(f.conversations)),
      c.on('new_message', (m) => this.onNewMessage(m)),
      c.on('history', (h) => {
        for (const w of h.messages) {
          // A page may bring a message again, in its current state: keep its key and ticks.
          const prev = this.findById(h.conversation_id, w.message_id);
          const m = this.fromWire(w);
          this.insert(prev ? { ...m, key: prev.key, status: prev.status ?? m.status } : m, false);
        }
        const conv = this.convs.get(h.conversation_id);
        if (conv) this.setConv({ ...conv, has_more: h.has_more });
        this.changed();
      }),
      c.on('outbox', (items) => this.onOutbox(items)),
      c.on('message_sent', (s) => {
        const m = this.findByClientId(s.client_msg_id);
        if (!this.convs.has(s.conversation_id)) this.refreshListSoon();
        // Your own reply: the root has one more (unless this message was already known).
        if (m?.reply_to != null && !this.getMessage(s.message_id, s.conversation_id)) this.countReply(s.conversation_id, m.reply_to, s.created_at);
        if (m) {
          // A delivery or read notice can overtake the sender's own message_sent.
          const early = this.early.get(s.message_id);
          this.early.delete(s.message_id);
          const status = m.status === 'pending' ? early ?? 'sent' : m.status;
          this.remove(m);
          this.insert({ ...m, message_id: s.message_id, seq: s.seq, conversation_id: s.conversation_id, created_at: s.created_at, status }, false);
          // Your own socket gets no new_message: read what the server made of the files.
          if (m.upload_ids?.length) void this.loadAttachments(s.conversation_id, s.message_id);
        }
        this.bumpConv(s.conversation_id, s.seq);
        this.changed();
      }),
      c.on('message_failed', (item, err) => {
        const m = this.findByClientId(item.client_msg_id);
        if (m) this.replace(m, { ...m, status: 'failed', error: err.code });
        this.changed();
      }),
      c.on('message_delivered', (d) => {
        const m = this.findById(d.conversation_id, d.message_id);
        if (m && (m.status === 'sent' || m.status === 'pending')) this.replace(m, { ...m, status: 'delivered' });
        else if (!m) this.noteEarly(d.message_id, 'delivered');
        this.changed();
      }),
      c.on('read_receipt', (r) => this.onReadReceipt(r.conversation_id, r.reader_id, r.message_ids, r.read_at)),
      c.on('typing_indicator', (t) => this.onTyping(t.conversation_id, t.user_id, t.is_typing)),
      c.on('presence', (p) => {
        this.presence = { ...this.presence, [p.user_id]: { status: p.status, last_seen: p.last_seen } };
        this.changed();
      }),
      c.on('participants_changed', (p) => {
        const conv = this.convs.get(p.conversation_id);
        if (conv) {
          const ids = conv.participant_ids.filter((u) => !p.removed_user_ids.includes(u));
          for (const u of p.added_user_ids) if (!ids.includes(u)) ids.push(u);
          const next: ConversationState = { ...conv, participant_ids: ids };
          if (p.admin_ids !== undefined) {
            next.admin_ids = p.admin_ids;
            next.owner_id = p.owner_id;
          }
          this.setConv(next);
          this.changed();
        }
      }),
      c.on('conversation_updated', (f) => this.onConversations([f.conversation], true)),
      c.on('sync_complete', () => {
        // A resume over the REST fallback brings new messages, not the changes to older ones:
        // reload the newest page of each conversation loaded (messages in their current state).
        if (c.transport === 'sse') for (const id of this.loaded) c.history(id, { limit: this.opts.pageSize }).catch(() => {});
      }),
      c.on('message_changed', (ev) => this.onChange(ev)),
      c.on('thread', (t) => this.onThread(t)),
      c.on('pins', (f) => {
        this.pinsOf.set(f.conversation_id, f.messages.map((m) => this.fromWire(m)));
        this.changed();
      }),
      c.on('message_reads', (f) => {
        this.mergeReads(f.message_id, f.reads);
        this.changed();
      }),
    );
    const doc = (globalThis as { document?: { addEventListener?: Function; removeEventListener?: Function } }).document;
    if (doc?.addEventListener) {
      const onVis = () => {
        if (this.active !== null && this.visible()) this.markRead(this.active);
      };
      doc.addEventListener('visibilitychange', onVis);
      this.disposeVisibility = () => doc.removeEventListener?.('visibilitychange', onVis);
    }
  }

  // ---------------------------------------------------------------- reading

  subscribe = (fn: () => void): (() => void) => {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  };

  getSnapshot = (): ChatSnapshot => this.snapshot;

  messagesOf(conversationId: number): ChatMessage[] {
    return this.snapshot.messages[conversationId] ?? EMPTY;
  }

  /** A message this store holds (in a conversation, a thread, the pins), by id. */
  /** Fills in a sent message's attachments as the server stored them. */
  private async loadAttachments(conversationId: number, messageId: number): Promise<void> {
    try {
      const v = await this.client.api<MessageView>('GET', `/api/v1/messages/${messageId}/`);
      const cur = this.getMessage(messageId, conversationId);
      if (cur && !cur.deleted) {
        this.replace(cur, { ...cur, attachments: v.attachments ?? [] });
        this.changed();
      }
    } catch {
      /* shown on the next history load */
    }
  }

  getMessage(messageId: number, conversationId?: number): ChatMessage | undefined {
    const lists = conversationId !== undefined ? [this.msgs.get(conversationId) ?? EMPTY] : [...this.msgs.values()];
    for (const list of lists) {
      const m = list.find((x) => x.message_id === messageId);
      if (m) return m;
    }
    for (const t of this.threads.values()) {
      if (conversationId !== undefined && t.conversation_id !== conversationId) continue;
      if (t.root?.message_id === messageId) return t.root;
      const m = t.replies.find((x) => x.message_id === messageId);
      if (m) return m;
    }
    for (const [conv, list] of this.pinsOf) {
      if (conversationId !== undefined && conv !== conversationId) continue;
      const m = list.find((x) => x.message_id === messageId);
      if (m) return m;
    }
    for (const c of this.convs.values()) {
      if (c.last_message?.message_id === messageId && (conversationId === undefined || c.id === conversationId)) return c.last_message;
    }
    return undefined;
  }

  // ---------------------------------------------------------------- actions

  /** Opens a conversation: loads its latest page, joins its room, watches its members'
   *  presence and marks it read. `null` closes it. */
  async open(conversationId: number | null): Promise<void> {
    this.active = conversationId;
    this.changed();
    if (conversationId === null) return;
    const conv = this.convs.get(conversationId);
    if (conv) this.client.subscribePresence(conv.participant_ids.filter((u) => u !== this.client.userId));
    this.client.joinConversation(conversationId).catch(() => {});
    if (!this.loaded.has(conversationId)) {
      this.loaded.add(conversationId);
      try {
        await this.client.history(conversationId, { limit: this.opts.pageSize });
      } catch {
        this.loaded.delete(conversationId);
      }
    }
    if (this.active === conversationId && this.visible()) this.markRead(conversationId);
  }

  /** Loads the page before the oldest loaded message. */
  async loadOlder(conversationId: number): Promise<void> {
    const first = (this.msgs.get(conversationId) ?? []).find((m) => m.seq !== undefined);
    await this.client.history(conversationId, { beforeSeq: first?.seq, limit: this.opts.pageSize });
  }

  /** Sends a message; `replyTo` files it in that message's thread. */
  send(conversationId: number, text: string, opts: Pick<SendMessageInput, 'replyTo' | 'mentions' | 'attachments'> = {}): Promise<SendResult> {
    return this.client.sendMessage({ conversationId, text, ...opts });
  }

  edit(messageId: Id, text: string) {
    return this.client.editMessage(messageId, text);
  }

  delete(messageId: Id) {
    return this.client.deleteMessage(messageId);
  }

  /** Adds your reaction with `emoji`, or takes it back if you reacted with it already. */
  toggleReaction(messageId: number, emoji: string) {
    const m = this.getMessage(messageId);
    return m?.reactions[emoji]?.me ? this.client.removeReaction(messageId, emoji) : this.client.addReaction(messageId, emoji);
  }

  pin(messageId: Id) {
    return this.client.pinMessage(messageId);
  }

  unpin(messageId: Id) {
    return this.client.unpinMessage(messageId);
  }

  /** Opens the thread of a message (the root, or any reply in it) and loads its first page;
   *  `null` closes it. Resolves with the root's id. */
  async openThread(messageId: number | null): Promise<number | null> {
    if (messageId === null) {
      this.activeThread = null;
      this.changed();
      return null;
    }
    const known = this.getMessage(messageId);
    const rootId = known?.reply_to ?? messageId;
    const conv = known?.conversation_id;
    this.activeThread = rootId;
    const t = this.threads.get(rootId);
    if (!t && conv !== undefined) this.threads.set(rootId, { root_id: rootId, conversation_id: conv, replies: [], has_more: false, loading: true });
    else if (t) this.threads.set(rootId, { ...t, loading: true });
    this.changed();
    try {
      const page = await this.client.getThread(rootId, { limit: this.opts.pageSize });
      if (page.message_id !== rootId && this.activeThread === rootId) this.activeThread = page.message_id;
      return page.message_id;
    } catch (e) {
      const cur = this.threads.get(rootId);
      if (cur) this.threads.set(rootId, { ...cur, loading: false });
      this.changed();
      throw e;
    }
  }

  /** Loads the thread's replies after the newest one loaded. */
  async loadMoreReplies(rootId: number): Promise<void> {
    const t = this.threads.get(rootId);
    const last = t?.replies.reduce((n, r) => Math.max(n, r.seq ?? 0), 0) ?? 0;
    await this.client.getThread(rootId, { afterSeq: last || undefined, limit: this.opts.pageSize });
  }

  /** Loads a conversation's pinned messages into `pins` (then kept current by live events). */
  async loadPins(conversationId: number): Promise<ChatMessage[]> {
    await this.client.listPins(conversationId);
    return this.pinsOf.get(conversationId) ?? [];
  }

  /** Loads who read a message into `reads`. */
  async loadReads(messageId: number): Promise<MessageRead[]> {
    await this.client.getReads(messageId);
    return this.readsOf.get(messageId) ?? [];
  }

  /** Starts (or finds) the direct conversation with a user. */
  async startDirect(userId: number): Promise<ConversationState> {
    const info = await this.client.createConversation([userId]);
    this.onConversations([info], true);
    return this.convs.get(info.id)!;
  }

  typing(conversationId: number, isTyping = true): void {
    this.client.sendTypingIndicator(conversationId, undefined, isTyping);
  }

  /** Sends read receipts for every loaded unread message of others in the conversation. */
  markRead(conversationId: number): void {
    const conv = this.convs.get(conversationId);
    const list = this.msgs.get(conversationId) ?? [];
    const me = this.client.userId;
    const from = conv?.last_read_seq ?? 0;
    const ids: number[] = [];
    let maxSeq = from;
    for (const m of list) {
      if (m.sender_id !== me && m.message_id !== undefined && (m.seq ?? 0) > from) {
        ids.push(m.message_id);
        maxSeq = Math.max(maxSeq, m.seq ?? 0);
      }
    }
    if (ids.length) this.client.sendReadReceipt(ids);
    if (conv && (ids.length || conv.unread_count || conv.unread_mentions)) {
      this.setConv({ ...conv, last_read_seq: Math.max(conv.last_read_seq, maxSeq), unread_count: 0, unread_mentions: 0 });
      this.changed();
    }
  }

  dispose(): void {
    for (const off of this.offs.splice(0)) off();
    for (const t of this.typingTimers.values()) clearTimeout(t);
    this.typingTimers.clear();
    if (this.listTimer) clearTimeout(this.listTimer);
    this.disposeVisibility?.();
    this.listeners.clear();
  }

  // ---------------------------------------------------------------- events

  private onConversations(list: ConversationInfo[], merge = false): void {
    for (const c of list) {
      const prev = this.convs.get(c.id);
      const last = c.last_message ? this.fromWire(c.last_message) : prev?.last_message;
      this.setConv({
        id: c.id,
        kind: c.kind,
        title: c.title ?? '',
        participant_ids: c.participant_ids ?? prev?.participant_ids ?? [],
        last_seq: Math.max(c.last_seq ?? 0, prev?.last_seq ?? 0),
        last_read_seq: Math.max(c.last_read_seq ?? 0, prev?.last_read_seq ?? 0),
        unread_count: merge && prev ? prev.unread_count : this.active === c.id && this.visible() ? 0 : c.unread_count ?? 0,
        unread_mentions: merge && prev ? prev.unread_mentions : this.active === c.id && this.visible() ? 0 : c.unread_mentions ?? 0,
        owner_id: c.owner_id ?? (c.admin_ids !== undefined ? undefined : prev?.owner_id),
        admin_ids: c.admin_ids ?? prev?.admin_ids,
        last_message: last,
        typing: prev?.typing ?? [],
        has_more: prev?.has_more,
      });
    }
    if (this.active !== null && this.convs.has(this.active) && this.visible()) this.markRead(this.active);
    this.changed();
  }

  private onNewMessage(w: NewMessage): void {
    const m = this.fromWire(w);
    // A reply the store has not seen: its root (if held) has one more. A repeat counts nothing.
    if (m.reply_to !== null && !this.getMessage(w.message_id, w.conversation_id)) this.countReply(w.conversation_id, m.reply_to, m.created_at);
    const existed = this.findById(w.conversation_id, w.message_id) ?? (m.mine && m.client_msg_id ? this.findByClientId(m.client_msg_id) : undefined);
    if (existed) {
      this.remove(existed);
      this.insert({ ...m, status: existed.status && existed.status !== 'pending' ? existed.status : m.status }, false);
    } else {
      this.insert(m, true);
    }
    if (!this.convs.has(w.conversation_id)) this.refreshListSoon();
    if (!m.mine) this.clearTyping(w.conversation_id, w.sender_id);
    if (!m.mine && this.active === w.conversation_id && this.visible()) this.markRead(w.conversation_id);
    this.changed();
  }

  private onOutbox(items: readonly OutboxItem[]): void {
    const me = this.client.userId ?? 0;
    for (const it of items) {
      if (this.findByClientId(it.client_msg_id)) continue;
      this.insert(
        {
          key: it.client_msg_id,
          client_msg_id: it.client_msg_id,
          conversation_id: it.conversation_id,
          receiver_id: it.receiver_id,
          sender_id: me,
          text: it.text,
          created_at: new Date(it.queued_at).toISOString(),
          mine: true,
          status: 'pending',
          ...richDefaults(),
          reply_to: it.reply_to ?? null,
          mentions: it.mentions ?? [],
          ...(it.attachments?.length ? { upload_ids: it.attachments } : {}),
        },
        false,
      );
    }
    this.changed();
  }

  private onReadReceipt(convId: number, readerId: number, ids: number[], readAt: string): void {
    const list = this.msgs.get(convId) ?? [];
    if (readerId === this.client.userId) {
      // Read on another device of ours.
      const conv = this.convs.get(convId);
      let maxSeq = 0;
      for (const m of list) if (m.message_id !== undefined && ids.includes(m.message_id)) maxSeq = Math.max(maxSeq, m.seq ?? 0);
      if (conv && maxSeq > conv.last_read_seq) {
        const after = list.filter((m) => !m.mine && !m.deleted && (m.seq ?? 0) > maxSeq);
        const mentions = after.filter((m) => m.mentions.includes(readerId)).length;
        this.setConv({ ...conv, last_read_seq: maxSeq, unread_count: after.length, unread_mentions: Math.min(conv.unread_mentions, mentions) });
      }
      this.changed();
      return;
    }
    // "Seen by": the reader, on each message it read.
    for (const id of ids) this.mergeReads(id, [{ user_id: readerId, read_at: readAt ?? new Date().toISOString() }]);
    for (const id of ids) if (!list.some((m) => m.message_id === id)) this.noteEarly(id, 'read');
    // The reader has seen everything up to the newest message it read.
    let upTo = 0;
    for (const m of list) if (m.message_id !== undefined && ids.includes(m.message_id)) upTo = Math.max(upTo, m.seq ?? 0);
    const next = list.map((m) =>
      m.mine && m.status !== 'failed' && m.status !== 'read' && m.message_id !== undefined && (ids.includes(m.message_id) || (m.seq ?? Infinity) <= upTo) ? { ...m, status: 'read' as const } : m,
    );
    this.msgs.set(convId, next);
    this.changed();
  }

  private onTyping(convId: number, userId: number, isTyping: boolean): void {
    if (userId === this.client.userId) return;
    const key = `${convId}:${userId}`;
    const t = this.typingTimers.get(key);
    if (t) clearTimeout(t);
    this.typingTimers.delete(key);
    let conv = this.convs.get(convId);
    if (!conv) {
      conv = this.placeholder(convId);
      this.refreshListSoon();
    }
    const typing = conv.typing.filter((u) => u !== userId);
    if (isTyping) {
      typing.push(userId);
      this.typingTimers.set(key, setTimeout(() => this.onTyping(convId, userId, false), this.opts.typingExpiryMs));
    }
    this.setConv({ ...conv, typing });
    this.changed();
  }

  private clearTyping(convId: number, userId: number): void {
    const conv = this.convs.get(convId);
    if (conv?.typing.includes(userId)) this.onTyping(convId, userId, false);
  }

  /** An edit, delete, reaction or pin: applied to every copy of the message held. */
  private onChange(ev: MessageChange): void {
    const conv = this.convs.get(ev.conversation_id);
    if (conv && ev.seq > conv.last_seq) this.setConv({ ...conv, last_seq: ev.seq });
    if (!this.versions.accept(ev)) return this.changed();
    const before = this.getMessage(ev.message_id, ev.conversation_id);
    const me = this.client.userId;
    this.patchMessage(ev.conversation_id, ev.message_id, (m) => applyChange(m, ev, me));
    const pins = this.pinsOf.get(ev.conversation_id);
    if (ev.type === 'message_deleted' || ev.type === 'message_unpinned') {
      if (pins?.some((m) => m.message_id === ev.message_id))
        this.pinsOf.set(
          ev.conversation_id,
          pins.filter((m) => m.message_id !== ev.message_id),
        );
    } else if (ev.type === 'message_pinned' && pins && !pins.some((m) => m.message_id === ev.message_id)) {
      const m = this.getMessage(ev.message_id, ev.conversation_id);
      if (m && !m.deleted) this.pinsOf.set(ev.conversation_id, [m, ...pins]);
      else if (!m) this.client.listPins(ev.conversation_id).catch(() => {});
    }
    // An unread message deleted is no longer unread.
    if (ev.type === 'message_deleted' && before && !before.deleted && conv && !before.mine && (before.seq ?? 0) > conv.last_read_seq) {
      const cur = this.convs.get(ev.conversation_id)!;
      const mentioned = me !== null && before.mentions.includes(me);
      this.setConv({ ...cur, unread_count: Math.max(0, cur.unread_count - 1), unread_mentions: Math.max(0, cur.unread_mentions - (mentioned ? 1 : 0)) });
    }
    this.changed();
  }

  private onThread(t: ThreadPage): void {
    const rootId = t.message_id;
    const wire = t.messages.map((m) => this.fromWire(m));
    const root = wire.find((m) => m.message_id === rootId);
    const replies = wire.filter((m) => m.message_id !== rootId);
    const convId = t.conversation_id || root?.conversation_id || replies[0]?.conversation_id || 0;
    const prev = this.threads.get(rootId);
    const merged = new Map<number, ChatMessage>();
    for (const r of prev?.replies ?? []) if (r.message_id !== undefined) merged.set(r.message_id, r);
    for (const r of replies) merged.set(r.message_id!, r);
    this.threads.set(rootId, {
      root_id: rootId,
      conversation_id: convId,
      root: root ?? prev?.root,
      replies: [...merged.values()].sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0)),
      has_more: t.has_more,
      loading: false,
    });
    // Fresher copies of messages the conversation's list holds (never new ones: that would
    // leave holes in its pages).
    const list = this.msgs.get(convId);
    if (list) {
      const byId = new Map(wire.map((m) => [m.message_id!, m]));
      if (list.some((m) => m.message_id !== undefined && byId.has(m.message_id)))
        this.msgs.set(
          convId,
          list.map((m) => {
            const w = m.message_id !== undefined ? byId.get(m.message_id) : undefined;
            return w ? { ...w, key: m.key, status: m.status } : m;
          }),
        );
    }
    this.changed();
  }

  /** A new reply to `rootId`: counted on the root wherever the store holds it. */
  private countReply(convId: number, rootId: number, createdAt: string): void {
    this.patchMessage(convId, rootId, (m) => addReply(m, { created_at: createdAt }));
  }

  private mergeReads(messageId: number, reads: readonly MessageRead[]): void {
    const prev = this.readsOf.get(messageId) ?? [];
    const byUser = new Map(prev.map((r) => [r.user_id, r]));
    let changed = false;
    for (const r of reads) {
      const old = byUser.get(r.user_id);
      if (!old || (r.read_at && r.read_at < old.read_at)) {
        byUser.set(r.user_id, r);
        changed = true;
      }
    }
    if (!changed && prev.length) return;
    this.readsOf.set(messageId, [...byUser.values()].sort((a, b) => a.read_at.localeCompare(b.read_at)));
  }

  /** Applies `fn` to every copy of a message: the conversation's list, threads, pins and the
   *  conversation's last message. Returns whether any copy was found. */
  private patchMessage(convId: number, messageId: number, fn: (m: ChatMessage) => ChatMessage): boolean {
    let found = false;
    const each = (list: ChatMessage[]): ChatMessage[] => {
      const i = list.findIndex((m) => m.message_id === messageId);
      if (i < 0) return list;
      found = true;
      const next = fn(list[i]!);
      if (next === list[i]) return list;
      const copy = list.slice();
      copy[i] = next;
      return copy;
    };
    const list = this.msgs.get(convId);
    if (list) this.msgs.set(convId, each(list));
    for (const [id, t] of this.threads) {
      if (t.conversation_id !== convId) continue;
      const root = t.root?.message_id === messageId ? ((found = true), fn(t.root)) : t.root;
      const replies = each(t.replies);
      if (root !== t.root || replies !== t.replies) this.threads.set(id, { ...t, root, replies });
    }
    const pins = this.pinsOf.get(convId);
    if (pins) this.pinsOf.set(convId, each(pins));
    const conv = this.convs.get(convId);
    if (conv?.last_message?.message_id === messageId) {
      found = true;
      const last = fn(conv.last_message);
      if (last !== conv.last_message) this.setConv({ ...conv, last_message: last });
    }
    return found;
  }

  // ---------------------------------------------------------------- internals

  private visible(): boolean {
    if (!this.opts.autoMarkRead) return false;
    const doc = (globalThis as { document?: { visibilityState?: string } }).document;
    return !doc || doc.visibilityState !== 'hidden';
  }

  private refreshListSoon(): void {
    if (this.listTimer) return;
    this.listTimer = setTimeout(() => {
      this.listTimer = null;
      this.client.listConversations().catch(() => {});
    }, 200);
  }

  private placeholder(id: number): ConversationState {
    const conv: ConversationState = { id, kind: 'direct', title: '', participant_ids: [], last_seq: 0, last_read_seq: 0, unread_count: 0, unread_mentions: 0, typing: [] };
    this.setConv(conv);
    return conv;
  }

  private fromWire(w: MessageView): ChatMessage {
    const mine = this.client.userId !== null && w.sender_id === this.client.userId;
    const d = richDefaults();
    const m: ChatMessage = {
      key: mine && w.client_msg_id ? w.client_msg_id : `m${w.message_id}`,
      message_id: w.message_id,
      conversation_id: w.conversation_id,
      sender_id: w.sender_id,
      text: w.text,
      seq: w.seq,
      created_at: w.created_at,
      mine,
      reply_to: w.reply_to ?? d.reply_to,
      mentions: w.mentions ?? d.mentions,
      edited_at: w.edited_at ?? d.edited_at,
      deleted: w.deleted ?? d.deleted,
      deleted_at: w.deleted_at ?? d.deleted_at,
      deleted_by: w.deleted_by ?? d.deleted_by,
      reactions: w.reactions ?? d.reactions,
      reply_count: w.reply_count ?? d.reply_count,
      last_reply_at: w.last_reply_at ?? d.last_reply_at,
      pinned_at: w.pinned_at ?? d.pinned_at,
      pinned_by: w.pinned_by ?? d.pinned_by,
      attachments: w.attachments ?? [],
    };
    if (w.client_msg_id) m.client_msg_id = w.client_msg_id;
    if (w.receiver_id !== undefined) m.receiver_id = w.receiver_id;
    if (mine) m.status = 'sent';
    return m;
  }

  private noteEarly(messageId: number, status: MessageStatus): void {
    if (this.early.get(messageId) === 'read') return;
    this.early.set(messageId, status);
    if (this.early.size > 1000) this.early.delete(this.early.keys().next().value as number);
  }

  private setConv(c: ConversationState): void {
    this.convs.set(c.id, c);
  }

  /** Bumps a conversation's last_seq / last_message for a message; counts it unread when new. */
  private bumpConv(convId: number, seq: number, m?: ChatMessage, isNew = false): void {
    const conv = this.convs.get(convId) ?? this.placeholder(convId);
    const next = { ...conv };
    if (seq > conv.last_seq) next.last_seq = seq;
    if (m && (!conv.last_message || (conv.last_message.seq ?? 0) <= seq)) next.last_message = m;
    if (isNew && m && !m.mine && seq > conv.last_seq && seq > conv.last_read_seq) {
      next.unread_count = conv.unread_count + 1;
      if (this.client.userId !== null && m.mentions.includes(this.client.userId)) next.unread_mentions = conv.unread_mentions + 1;
    }
    this.setConv(next);
  }

  private insert(m: ChatMessage, isNew: boolean): void {
    if (m.conversation_id === undefined) {
      this.unassigned = [...this.unassigned, m];
      return;
    }
    const list = (this.msgs.get(m.conversation_id) ?? []).filter((x) => x.key !== m.key && !(m.message_id !== undefined && x.message_id === m.message_id));
    // Acknowledged messages by seq; pending ones (no seq) stay last, in queue order.
    let i = list.length;
    if (m.seq !== undefined) {
      i = list.findIndex((x) => x.seq === undefined || x.seq > m.seq!);
      if (i < 0) i = list.length;
    }
    list.splice(i, 0, m);
    this.msgs.set(m.conversation_id, list);
    if (m.seq !== undefined) this.bumpConv(m.conversation_id, m.seq, m, isNew);
  }

  private remove(m: ChatMessage): void {
    if (m.conversation_id === undefined) {
      this.unassigned = this.unassigned.filter((x) => x !== m);
      return;
    }
    const list = this.msgs.get(m.conversation_id);
    if (list) this.msgs.set(m.conversation_id, list.filter((x) => x !== m));
    // A pending message to a receiver may sit unassigned.
    this.unassigned = this.unassigned.filter((x) => x !== m);
  }

  private replace(m: ChatMessage, next: ChatMessage): void {
    if (m.conversation_id === undefined) {
      this.unassigned = this.unassigned.map((x) => (x === m ? next : x));
      return;
    }
    const list = this.msgs.get(m.conversation_id) ?? [];
    this.msgs.set(m.conversation_id, list.map((x) => (x === m ? next : x)));
  }

  private findByClientId(id: string | undefined): ChatMessage | undefined {
    if (!id) return undefined;
    for (const list of this.msgs.values()) {
      for (let i = list.length - 1; i >= 0; i--) if (list[i]!.mine && list[i]!.client_msg_id === id) return list[i];
    }
    return this.unassigned.find((m) => m.client_msg_id === id);
  }

  private findById(convId: number, messageId: number): ChatMessage | undefined {
    return (this.msgs.get(convId) ?? []).find((m) => m.message_id === messageId);
  }

  private build(): ChatSnapshot {
    const conversations = [...this.convs.values()].sort(
      (a, b) => (b.last_message?.created_at ?? '').localeCompare(a.last_message?.created_at ?? '') || b.id - a.id,
    );
    const messages: Record<number, ChatMessage[]> = {};
    for (const [id, list] of this.msgs) messages[id] = list;
    const threads: Record<number, ThreadState> = {};
    for (const [id, t] of this.threads) threads[id] = this.threadView(t);
    const pins: Record<number, ChatMessage[]> = {};
    for (const [id, list] of this.pinsOf) {
      // The conversation list's copy is the freshest (ticks): prefer it.
      const byId = new Map((this.msgs.get(id) ?? EMPTY).map((m) => [m.message_id, m]));
      pins[id] = list.map((m) => byId.get(m.message_id) ?? m);
    }
    const reads: Record<number, MessageRead[]> = {};
    for (const [id, list] of this.readsOf) reads[id] = list;
    const c = this.client;
    return {
      state: c.state,
      transport: c.transport,
      connected: c.isConnected,
      userId: c.userId,
      conversations,
      messages,
      unassigned: this.unassigned,
      presence: this.presence,
      totalUnread: conversations.reduce((n, x) => n + x.unread_count, 0),
      activeConversationId: this.active,
      threads,
      activeThreadId: this.activeThread,
      pins,
      reads,
    };
  }

  /** A thread as shown: the loaded replies plus the conversation's messages in it (live ones,
   *  yours pending), the conversation list's copy preferred; by seq, pending last. */
  private threadView(t: ThreadState): ThreadState {
    const list = this.msgs.get(t.conversation_id) ?? EMPTY;
    const out = new Map<string, ChatMessage>();
    const idKey = (m: ChatMessage) => (m.message_id !== undefined ? `#${m.message_id}` : m.key);
    for (const r of t.replies) out.set(idKey(r), r);
    let root = t.root;
    for (const m of list) {
      if (m.message_id === t.root_id) root = m;
      else if (m.reply_to === t.root_id) out.set(idKey(m), m);
    }
    const replies = [...out.values()].sort((a, b) => (a.seq === undefined ? (b.seq === undefined ? 0 : 1) : b.seq === undefined ? -1 : a.seq - b.seq));
    return { ...t, root, replies };
  }

  private changed(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    void Promise.resolve().then(() => {
      this.scheduled = false;
      this.snapshot = this.build();
      for (const fn of [...this.listeners]) fn();
    });
  }
}
