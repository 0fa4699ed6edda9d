// ChatStore: the state a chat screen shows (conversations with unread counts, messages with
// ticks, who is typing, presence), kept up to date from an IndabaClient. Framework-free:
// subscribe()/getSnapshot() fit React's useSyncExternalStore, and anything else.

import type { IndabaClient } from './client.js';
import type { ConnectionState, ConversationInfo, NewMessage, OutboxItem, PresenceStatus, Transport } from './types.js';

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
}

export interface ConversationState {
  id: number;
  kind: string;
  title: string;
  participant_ids: number[];
  last_seq: number;
  last_read_seq: number;
  unread_count: number;
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
        for (const m of h.messages) this.insert(this.fromWire(m), false);
        const conv = this.convs.get(h.conversation_id);
        if (conv) this.setConv({ ...conv, has_more: h.has_more });
        this.changed();
      }),
      c.on('outbox', (items) => this.onOutbox(items)),
      c.on('message_sent', (s) => {
        const m = this.findByClientId(s.client_msg_id);
        if (!this.convs.has(s.conversation_id)) this.refreshListSoon();
        if (m) {
          // A delivery or read notice can overtake the sender's own message_sent.
          const early = this.early.get(s.message_id);
          this.early.delete(s.message_id);
          const status = m.status === 'pending' ? early ?? 'sent' : m.status;
          this.remove(m);
          this.insert({ ...m, message_id: s.message_id, seq: s.seq, conversation_id: s.conversation_id, created_at: s.created_at, status }, false);
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
      c.on('read_receipt', (r) => this.onReadReceipt(r.conversation_id, r.reader_id, r.message_ids)),
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
          this.setConv({ ...conv, participant_ids: ids });
          this.changed();
        }
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

  send(conversationId: number, text: string): Promise<unknown> {
    return this.client.sendMessage({ conversationId, text });
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
    if (conv && (ids.length || conv.unread_count)) {
      this.setConv({ ...conv, last_read_seq: Math.max(conv.last_read_seq, maxSeq), unread_count: 0 });
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
        },
        false,
      );
    }
    this.changed();
  }

  private onReadReceipt(convId: number, readerId: number, ids: number[]): void {
    const list = this.msgs.get(convId) ?? [];
    if (readerId === this.client.userId) {
      // Read on another device of ours.
      const conv = this.convs.get(convId);
      let maxSeq = 0;
      for (const m of list) if (m.message_id !== undefined && ids.includes(m.message_id)) maxSeq = Math.max(maxSeq, m.seq ?? 0);
      if (conv && maxSeq > conv.last_read_seq) {
        const unread = list.filter((m) => !m.mine && (m.seq ?? 0) > maxSeq).length;
        this.setConv({ ...conv, last_read_seq: maxSeq, unread_count: unread });
      }
      this.changed();
      return;
    }
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
    const conv: ConversationState = { id, kind: 'direct', title: '', participant_ids: [], last_seq: 0, last_read_seq: 0, unread_count: 0, typing: [] };
    this.setConv(conv);
    return conv;
  }

  private fromWire(w: NewMessage): ChatMessage {
    const mine = this.client.userId !== null && w.sender_id === this.client.userId;
    const m: ChatMessage = {
      key: mine && w.client_msg_id ? w.client_msg_id : `m${w.message_id}`,
      message_id: w.message_id,
      conversation_id: w.conversation_id,
      sender_id: w.sender_id,
      text: w.text,
      seq: w.seq,
      created_at: w.created_at,
      mine,
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
    if (isNew && m && !m.mine && seq > conv.last_seq && seq > conv.last_read_seq) next.unread_count = conv.unread_count + 1;
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
    };
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
