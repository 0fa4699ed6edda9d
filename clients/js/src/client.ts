import { Emitter } from './emitter.js';
import { openSse, type EventSourceConstructor, type SseHandle } from './sse.js';
import { memoryStorage, type OutboxStorage } from './storage.js';
import {
  IndabaError,
  MESSAGE_CHANGE_TYPES,
  type ConnectionEstablished,
  type ConnectionState,
  type ConversationInfo,
  type ConversationUpdated,
  type ErrorFrame,
  type HistoryPage,
  type Id,
  type JoinedConversation,
  type MessageChange,
  type MessageDeleted,
  type MessageReads,
  type MessageSent,
  type MessageUpdated,
  type NewMessage,
  type OutboxItem,
  type PinChanged,
  type PinsList,
  type Presence,
  type ReactionChanged,
  type SendResult,
  type UploadResult,
  type ServerFrame,
  type ThreadPage,
  type Transport,
  type UnreadSummary,
} from './types.js';

/** The part of the WebSocket API the client uses (browsers, React Native, `ws` in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export type TokenReason = 'initial' | 'expired' | 'refresh' | 'rejected';

export interface IndabaClientOptions {
  /** Server base URL (`https://chat.example.com`, `http://127.0.0.1:8000`, or ws(s)://).
   *  Default: the page's origin (`location`). */
  url?: string;
  /** The JWT. Either this or `getToken`. */
  token?: string;
  /** Returns a (new) JWT: called at first connect without `token`, after close code 4001
   *  (`expired`), when handshakes keep failing (`rejected`), and ahead of expiry (`refresh`,
   *  sent as `refresh_token` so the socket stays up). */
  getToken?: (reason: TokenReason) => string | Promise<string>;
  /** WebSocket constructor. Default: `globalThis.WebSocket`. In Node < 22 pass `ws`. */
  WebSocket?: WebSocketConstructor;
  /** fetch, for the REST/SSE fallback. Default: `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** EventSource, used for SSE only where fetch cannot stream. Default: `globalThis.EventSource`. */
  EventSource?: EventSourceConstructor;
  /** Where the outbox is kept between sends (default: memory). See `webStorage`. */
  storage?: OutboxStorage;
  /** Full-jitter exponential backoff: delay = random(0, min(max, base·2^attempt)). Never gives up. */
  reconnect?: { baseDelayMs?: number; maxDelayMs?: number };
  /** Delay before reconnecting after close code 1008 (sustained rate-limit abuse). Default 60 s. */
  abuseDelayMs?: number;
  /** After close code 1012 (server restarting): reconnect after random(0, this). Default 1 s. */
  restartDelayMs?: number;
  /** SSE + REST after `afterFailures` WebSocket attempts in a row fail, trying WebSockets again
   *  every `retryWebSocketMs`. `false` disables. Default `{ afterFailures: 4, retryWebSocketMs: 30000 }`. */
  fallback?: false | { afterFailures?: number; retryWebSocketMs?: number };
  /** A `typing_indicator` true is sent at most once per this window while typing goes on. Default 2 s. */
  typingThrottleMs?: number;
  /** Typing stops by itself (is_typing false sent) after this long without a call. Default 5 s. */
  typingTimeoutMs?: number;
  /** Read receipts are collected for this long and sent as one frame. Default 300 ms. */
  readReceiptDelayMs?: number;
  /** Time allowed from opening a socket to `connection_established`. Default 15 s. */
  connectTimeoutMs?: number;
  /** Time allowed for request/answer frames (history, list_conversations, join). Default 20 s. */
  requestTimeoutMs?: number;
  /** Refresh the token (getToken('refresh') + `refresh_token`) this long before it expires;
   *  `false` leaves expiry to close code 4001. Default 60 s. */
  tokenRefreshLeadMs?: number | false;
  /** Random source (tests). Default Math.random. */
  random?: () => number;
  /** Debug log sink. */
  log?: (message: string, data?: unknown) => void;
}

export interface SendMessageInput {
  conversationId?: Id | null;
  receiverId?: Id | null;
  text?: string;
  /** Your own idempotency key (1–64 printable ASCII). Default: a random one. */
  clientMsgId?: string;
  /** Reply to this message (a reply to a reply joins the root's thread). */
  replyTo?: Id | null;
  /** Users mentioned (participants of the conversation). */
  mentions?: Id[];
  /** Uploads to attach (`uploadId`s from `upload()`, at most 10); the text may then be empty. */
  attachments?: Id[];
}

export interface UploadOptions {
  /** The conversation the file will be sent in (uploads are per conversation). */
  conversationId: Id;
  /** Default: the File's name, else "file". */
  filename?: string;
  /** Default: the Blob's type, else application/octet-stream. */
  contentType?: string;
  /** Audio: amplitudes 0–255, at most 100. */
  waveform?: number[];
  /** Called as bytes go out (browsers: as they are sent; elsewhere: at the start and end). */
  onProgress?: (sent: number, total: number) => void;
}

/** Events: every server frame type (after de-duplication for `new_message`), plus the client's own. */
export interface IndabaClientEvents {
  state: [state: ConnectionState, previous: ConnectionState];
  connection_established: [frame: ConnectionEstablished, transport: Transport];
  new_message: [frame: NewMessage];
  message_sent: [frame: MessageSent];
  message_failed: [item: OutboxItem, error: IndabaError];
  message_delivered: [frame: Extract<ServerFrame, { type: 'message_delivered' }>];
  typing_indicator: [frame: Extract<ServerFrame, { type: 'typing_indicator' }>];
  read_receipt: [frame: Extract<ServerFrame, { type: 'read_receipt' }>];
  joined_conversation: [frame: JoinedConversation];
  left_conversation: [frame: Extract<ServerFrame, { type: 'left_conversation' }>];
  participants_changed: [frame: Extract<ServerFrame, { type: 'participants_changed' }>];
  conversation_updated: [frame: ConversationUpdated];
  message_updated: [frame: MessageUpdated];
  message_deleted: [frame: MessageDeleted];
  reaction_added: [frame: ReactionChanged];
  reaction_removed: [frame: ReactionChanged];
  message_pinned: [frame: PinChanged];
  message_unpinned: [frame: PinChanged];
  /** Any of the six change events above (once each, live or replayed by a resume). */
  message_changed: [frame: MessageChange];
  thread: [frame: ThreadPage];
  pins: [frame: PinsList];
  message_reads: [frame: MessageReads];
  sync_complete: [frame: Extract<ServerFrame, { type: 'sync_complete' }>];
  history: [frame: HistoryPage];
  conversations: [frame: Extract<ServerFrame, { type: 'conversations' }>];
  presence: [frame: Presence];
  token_refreshed: [frame: Extract<ServerFrame, { type: 'token_refreshed' }>];
  error: [frame: ErrorFrame];
  pong: [frame: Extract<ServerFrame, { type: 'pong' }>];
  /** A WebSocket closed (code as received; 1006 when it never opened or dropped). */
  socket_closed: [code: number, reason: string];
  /** The outbox changed (queued, acknowledged or failed). */
  outbox: [items: readonly OutboxItem[]];
  /** Every frame as received, before the client handles it. */
  frame: [frame: ServerFrame, transport: Transport];
}

type PendingKind = 'conversations' | 'history' | 'join' | 'thread' | 'pins' | 'reads' | MessageOp;
/** Requests answered by a change event. */
type MessageOp = 'edit' | 'delete' | 'react' | 'unreact' | 'pin' | 'unpin';

interface Pending<T> {
  kind: PendingKind;
  conversationId?: number;
  messageId?: number;
  emoji?: string;
  frame: Record<string, unknown>;
  resolve(v: T): void;
  reject(e: IndabaError): void;
  timer: ReturnType<typeof setTimeout>;
  /** The same request over REST (when the client falls back while it waits). */
  rest?: () => Promise<T>;
}

/** Which pending request a change event answers. */
const OP_OF: Record<MessageChange['type'], MessageOp> = {
  message_updated: 'edit',
  message_deleted: 'delete',
  reaction_added: 'react',
  reaction_removed: 'unreact',
  message_pinned: 'pin',
  message_unpinned: 'unpin',
};
const CHANGE_TYPES: ReadonlySet<string> = new Set(MESSAGE_CHANGE_TYPES);
/** Requests about one message, which an `error` with `message_ids` refuses. */
const MESSAGE_KINDS: ReadonlySet<PendingKind> = new Set<PendingKind>(['thread', 'reads', 'edit', 'delete', 'react', 'unreact', 'pin', 'unpin']);

const OPEN = 1;
const RETRYABLE = new Set(['unavailable', 'rate_limited', 'internal', 'timeout']);
const SEEN_CAP = 20_000;
const OUTBOX_WINDOW = 10;
const SYNC_CHUNK = 1000;
const RECEIPT_CHUNK = 500;

let idCounter = 0;
function newClientMsgId(random: () => number): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  idCounter = (idCounter + 1) % 1e6;
  return `${Date.now().toString(36)}-${Math.floor(random() * 2 ** 48).toString(36)}-${idCounter.toString(36)}`;
}

/** Seconds since epoch at which a JWT expires, or undefined. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split('.')[1];
    if (!part) return undefined;
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (part.length % 4)) % 4);
    const json = JSON.parse(globalThis.atob(b64));
    return typeof json.exp === 'number' ? json.exp : undefined;
  } catch {
    return undefined;
  }
}

function isChange(frame: { type: string }): frame is MessageChange {
  return CHANGE_TYPES.has(frame.type);
}

function checkEmoji(emoji: string): void {
  if (typeof emoji !== 'string' || emoji.trim() === '') throw new IndabaError('invalid_field', 'emoji is empty');
  if (new TextEncoder().encode(emoji).length > 32) throw new IndabaError('invalid_field', 'emoji is longer than 32 bytes');
}

function rejected<T>(e: unknown): Promise<T> {
  const p = Promise.reject(e);
  p.catch(() => {});
  return p as Promise<T>;
}

/** An id that must be there. */
function needId(id: Id | null | undefined, what = 'id'): number {
  const n = toInt(id);
  if (n === undefined) throw new IndabaError('invalid_field', `${what} is missing`);
  return n;
}

function toInt(id: Id | null | undefined): number | undefined {
  if (id === null || id === undefined || id === '') return undefined;
  const n = typeof id === 'number' ? id : Number(id);
  if (!Number.isSafeInteger(n) || n <= 0) throw new IndabaError('invalid_field', `not an id: ${String(id)}`);
  return n;
}

/**
 * A connection to Indaba that stays up: WebSocket with reconnects, resume, an outbox and an
 * SSE/REST fallback. Create, subscribe with `on(...)`, then `connect()`.
 */
export class IndabaClient extends Emitter<IndabaClientEvents> {
  readonly wsUrl: string;
  readonly apiUrl: string;

  private opts: IndabaClientOptions;
  private random: () => number;
  private _state: ConnectionState = 'idle';
  private _transport: Transport | null = null;
  private _userId: number | null = null;
  private token: string | undefined;

  private ws: WebSocketLike | null = null;
  /** The token the current socket authenticated (or is authenticating) with. */
  private wsToken: string | undefined;
  private wsEstablished = false;
  private establishedAt = 0;
  private wsIsProbe = false;
  private failures = 0;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private probeTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private nextTokenReason: TokenReason | null = null;

  private sse: SseHandle | null = null;
  private sseOpen = false;
  private sseAttempt = 0;
  private sseTimer: ReturnType<typeof setTimeout> | null = null;
  private lastEventId: string | undefined;

  private lastSeq = new Map<number, number>();
  private ahead = new Map<number, Set<number>>();
  private gapTimer: ReturnType<typeof setTimeout> | null = null;
  private hasBaseline = false;
  private syncing = 0;
  private seen = new Set<number>();
  /** Change events seen, as `conversation:seq`. */
  private seenChanges = new Set<string>();

  private outbox: OutboxItem[] = [];
  private waiters = new Map<string, { resolve(r: SendResult): void; reject(e: IndabaError): void }[]>();
  private inflight = new Set<string>();
  private acked = new Set<string>();
  private outboxPausedUntil = 0;
  private outboxTimer: ReturnType<typeof setTimeout> | null = null;
  private restFlushing = false;
  private storage: OutboxStorage;
  private storageLoaded: Promise<void> | null = null;

  private receipts = new Set<number>();
  private receiptTimer: ReturnType<typeof setTimeout> | null = null;
  private typing = new Map<number, { lastTrueAt: number; active: boolean; receiverId?: number; timer: ReturnType<typeof setTimeout> | null }>();
  private joined = new Set<number>();
  private presenceIds = new Set<number>();
  private presenceCache = new Map<number, Presence>();
  private status: 'online' | 'away' = 'online';
  private pending: Pending<any>[] = [];
  private removeOnline: (() => void) | null = null;

  constructor(options: IndabaClientOptions = {}) {
    super();
    this.opts = options;
    this.random = options.random ?? Math.random;
    this.token = options.token;
    this.storage = options.storage ?? memoryStorage();
    let base = options.url;
    if (!base) {
      const loc = (globalThis as { location?: { origin?: string } }).location;
      if (!loc?.origin || loc.origin === 'null') throw new IndabaError('invalid_field', 'IndabaClient needs `url` outside a web page');
      base = loc.origin;
    }
    base = base.replace(/\/+$/, '');
    this.apiUrl = base.replace(/^ws(s?):/i, 'http$1:');
    this.wsUrl = this.apiUrl.replace(/^http(s?):/i, 'ws$1:') + '/ws/chat/';
    if (options.log) this.onListenerError = (e) => options.log!('listener threw', e);
  }

  // ---------------------------------------------------------------- public state

  get state(): ConnectionState {
    return this._state;
  }
  /** How events arrive right now: `websocket`, `sse` (fallback), or null. */
  get transport(): Transport | null {
    return this._transport;
  }
  /** The authenticated user, once connected. */
  get userId(): number | null {
    return this._userId;
  }
  get isConnected(): boolean {
    return this._state === 'open' || (this._state === 'fallback' && this.sseOpen);
  }
  /** Messages not yet acknowledged by the server, oldest first. */
  getOutbox(): readonly OutboxItem[] {
    return this.outbox.slice();
  }
  /** The newest seq this client has without gaps, per conversation (what `sync` will ask from). */
  getLastSeqs(): Record<string, number> {
    return Object.fromEntries(this.lastSeq);
  }

  // ---------------------------------------------------------------- lifecycle

  /** Starts connecting (again). Safe to call more than once. */
  connect(): void {
    if (this._state !== 'idle' && this._state !== 'closed') return;
    if (!this.opts.WebSocket && !(globalThis as { WebSocket?: unknown }).WebSocket) {
      throw new IndabaError('unsupported', 'no WebSocket here: pass the `WebSocket` option (e.g. the `ws` package in Node)');
    }
    this.setState('connecting');
    this.failures = 0;
    this.attempt = 0;
    this.storageLoaded ??= Promise.resolve()
      .then(() => this.storage.load())
      .then((items) => {
        for (const it of items ?? []) {
          if (!this.outbox.some((o) => o.client_msg_id === it.client_msg_id)) this.outbox.push({ ...it });
        }
        if (items?.length) this.emit('outbox', this.getOutbox());
      })
      .catch((e) => this.log('outbox storage load failed', e));
    const g = globalThis as { addEventListener?: Function; removeEventListener?: Function };
    if (typeof g.addEventListener === 'function' && !this.removeOnline) {
      const onOnline = () => this.reconnectNow();
      g.addEventListener('online', onOnline);
      this.removeOnline = () => g.removeEventListener?.('online', onOnline);
    }
    void this.openWebSocket(false);
  }

  /** Closes everything. The outbox is kept: `connect()` later sends it. */
  disconnect(): void {
    if (this._state === 'closed' || this._state === 'idle') {
      this.setState('closed');
      return;
    }
    this.setState('closed');
    this.clearTimers();
    this.removeOnline?.();
    this.removeOnline = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, 'client disconnect');
      } catch {
        /* already closed */
      }
    }
    this.stopSse();
    this._transport = null;
    this.inflight.clear();
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(new IndabaError('closed', 'client disconnected'));
    }
    for (const t of this.typing.values()) if (t.timer) clearTimeout(t.timer);
    this.typing.clear();
  }

  /** Skips the wait of a scheduled reconnect (e.g. the app came to the foreground). */
  reconnectNow(): void {
    if (this._state === 'reconnecting' && this.reconnectTimer) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
      void this.openWebSocket(false);
    } else if (this._state === 'fallback' && !this.ws) {
      if (this.probeTimer) clearTimeout(this.probeTimer);
      this.probeTimer = null;
      void this.openWebSocket(true);
    }
  }

  // ---------------------------------------------------------------- sending

  /** Queues a message and resolves with its `message_sent`. Survives disconnects: the same
   *  `client_msg_id` is resent until the server acknowledges it. Rejects only when the server
   *  refuses the message for good (e.g. `forbidden`, `text_too_long`). */
  sendMessage(conversationId: Id | null | undefined, receiverId: Id | null | undefined, text: string): Promise<SendResult>;
  sendMessage(input: SendMessageInput): Promise<SendResult>;
  sendMessage(a: Id | null | undefined | SendMessageInput, b?: Id | null, c?: string): Promise<SendResult> {
    const input: SendMessageInput =
      a !== null && typeof a === 'object' ? a : { conversationId: a as Id | null | undefined, receiverId: b, text: c as string };
    let item: OutboxItem;
    try {
      const conversation_id = toInt(input.conversationId);
      const receiver_id = toInt(input.receiverId);
      if (conversation_id === undefined && receiver_id === undefined)
        throw new IndabaError('invalid_field', 'sendMessage needs a conversationId or a receiverId');
      const attachments = (input.attachments ?? []).map((a) => needId(a, 'attachments'));
      if (attachments.length > 10) throw new IndabaError('invalid_field', 'a message has at most 10 attachments');
      const text = input.text ?? '';
      if (typeof text !== 'string' || (text.trim() === '' && !attachments.length)) throw new IndabaError('empty_text', 'text is empty');
      const id = input.clientMsgId ?? newClientMsgId(this.random);
      if (!/^[\x21-\x7e]{1,64}$/.test(id)) throw new IndabaError('invalid_field', 'clientMsgId must be 1-64 printable ASCII characters');
      item = { client_msg_id: id, text, queued_at: Date.now(), attempts: 0 };
      if (attachments.length) item.attachments = attachments;
      if (conversation_id !== undefined) item.conversation_id = conversation_id;
      if (receiver_id !== undefined) item.receiver_id = receiver_id;
      const reply_to = toInt(input.replyTo);
      if (reply_to !== undefined) item.reply_to = reply_to;
      if (input.mentions?.length) item.mentions = [...new Set(input.mentions.map((u) => toInt(u)!))];
    } catch (e) {
      const p = Promise.reject(e);
      p.catch(() => {});
      return p;
    }
    const p = new Promise<SendResult>((resolve, reject) => {
      const list = this.waiters.get(item.client_msg_id) ?? [];
      list.push({ resolve, reject });
      this.waiters.set(item.client_msg_id, list);
    });
    p.catch(() => {}); // fire-and-forget callers must not get unhandled rejections
    if (!this.outbox.some((o) => o.client_msg_id === item.client_msg_id)) {
      this.outbox.push(item);
      this.outboxChanged();
    }
    if (item.conversation_id !== undefined && this.typing.get(item.conversation_id)?.active) {
      this.sendTypingIndicator(item.conversation_id, item.receiver_id, false);
    }
    this.flushOutbox();
    return p;
  }

  /** Typing: throttled (one `true` per `typingThrottleMs` while typing goes on), stopped
   *  automatically after `typingTimeoutMs` of silence, and on `sendMessage`. */
  sendTypingIndicator(conversationId: Id, receiverId?: Id | null, isTyping = true): void {
    const conv = toInt(conversationId)!;
    const recv = toInt(receiverId ?? undefined);
    const throttle = this.opts.typingThrottleMs ?? 2000;
    const timeout = this.opts.typingTimeoutMs ?? 5000;
    let t = this.typing.get(conv);
    if (!t) this.typing.set(conv, (t = { lastTrueAt: 0, active: false, timer: null }));
    if (recv !== undefined) t.receiverId = recv;
    if (t.timer) clearTimeout(t.timer);
    t.timer = null;
    const now = Date.now();
    if (isTyping) {
      if (!t.active || now - t.lastTrueAt >= throttle) {
        t.active = true;
        t.lastTrueAt = now;
        this.transmitTyping(conv, t.receiverId, true);
      }
      t.timer = setTimeout(() => this.sendTypingIndicator(conv, undefined, false), timeout);
    } else if (t.active) {
      t.active = false;
      this.transmitTyping(conv, t.receiverId, false);
    }
  }

  /** Marks messages read. Collected for `readReceiptDelayMs` and sent together; kept until a
   *  connection can take them. */
  sendReadReceipt(messageIds: Id[]): void {
    for (const id of messageIds) {
      const n = toInt(id);
      if (n !== undefined) this.receipts.add(n);
    }
    if (!this.receipts.size || this.receiptTimer) return;
    this.receiptTimer = setTimeout(() => {
      this.receiptTimer = null;
      this.flushReceipts();
    }, this.opts.readReceiptDelayMs ?? 300);
  }

  /** Joins a conversation's room (watches its members' presence); rejoined after reconnects. */
  joinConversation(conversationId: Id): Promise<JoinedConversation> {
    const conv = toInt(conversationId)!;
    this.joined.add(conv);
    if (this._state === 'fallback') {
      return Promise.resolve({ type: 'joined_conversation', conversation_id: conv, participant_ids: [] });
    }
    return this.request<JoinedConversation>('join', { type: 'join_conversation', conversation_id: conv }, conv);
  }

  leaveConversation(conversationId: Id): void {
    const conv = toInt(conversationId)!;
    this.joined.delete(conv);
    this.sendFrame({ type: 'leave_conversation', conversation_id: conv });
  }

  /** Watches users' presence (`presence` events); renewed after reconnects. */
  subscribePresence(userIds: Id[]): void {
    const fresh = userIds.map((u) => toInt(u)!).filter((u) => !this.presenceIds.has(u));
    if (!fresh.length) return;
    for (const u of fresh) this.presenceIds.add(u);
    if (this._state === 'open') this.sendFrame({ type: 'presence_subscribe', user_ids: fresh });
    else if (this._state === 'fallback') void this.pollPresence(fresh);
  }

  /** The last `presence` heard for a user, if any. */
  getPresence(userId: number): Presence | undefined {
    return this.presenceCache.get(userId);
  }

  /** `away` / `online` (kept across reconnects). */
  setStatus(status: 'online' | 'away'): void {
    this.status = status;
    this.sendFrame({ type: 'set_status', status });
  }

  /** The conversation list with unread counts (WebSocket, or REST in fallback). */
  async listConversations(): Promise<ConversationInfo[]> {
    if (this._state === 'fallback') {
      const r = await this.api<{ conversations: ConversationInfo[] }>('GET', '/api/v1/conversations/');
      this.discover(r.conversations);
      this.emit('conversations', { type: 'conversations', conversations: r.conversations });
      return r.conversations;
    }
    const f = await this.request<{ conversations: ConversationInfo[] }>('conversations', { type: 'list_conversations' });
    return f.conversations;
  }

  /** An older page of a conversation, oldest first. */
  async history(conversationId: Id, opts: { beforeSeq?: number; limit?: number } = {}): Promise<HistoryPage> {
    const conv = toInt(conversationId)!;
    if (this._state === 'fallback') {
      const q = new URLSearchParams();
      if (opts.beforeSeq) q.set('before_seq', String(opts.beforeSeq));
      if (opts.limit) q.set('limit', String(opts.limit));
      const r = await this.api<{ messages: NewMessage[]; has_more: boolean }>('GET', `/api/v1/conversations/${conv}/messages/?${q}`);
      const page: HistoryPage = { type: 'history', conversation_id: conv, messages: r.messages.map((m) => ({ ...m, type: 'new_message' as const })), has_more: r.has_more };
      this.emit('history', page);
      return page;
    }
    const frame: Record<string, unknown> = { type: 'history', conversation_id: conv };
    if (opts.beforeSeq) frame.before_seq = opts.beforeSeq;
    if (opts.limit) frame.limit = opts.limit;
    return this.request<HistoryPage>('history', frame, conv);
  }

  /** Creates a conversation over REST (`kind` direct or group). */
  createConversation(participantIds: Id[], opts: { title?: string; kind?: 'direct' | 'group' } = {}): Promise<ConversationInfo> {
    return this.api('POST', '/api/v1/conversations/', { participant_ids: participantIds.map((p) => toInt(p)), ...opts });
  }

  /** Unread counts over REST. */
  unread(): Promise<UnreadSummary> {
    return this.api('GET', '/api/v1/messages/unread/');
  }

  // ---------------------------------------------------------------- rich messages

  /** Replaces the text of your message. Resolves with the `message_updated` every member gets. */
  editMessage(messageId: Id, text: string): Promise<MessageUpdated> {
    try {
      const id = needId(messageId, 'messageId');
      if (typeof text !== 'string' || text.trim() === '') throw new IndabaError('empty_text', 'text is empty');
      return this.messageRequest('edit', { type: 'edit_message', message_id: id, text }, id, () =>
        this.restChange<MessageUpdated>('message_updated', 'PATCH', `/api/v1/messages/${id}/`, { text }),
      );
    } catch (e) {
      return rejected(e);
    }
  }

  /** Deletes a message for everyone (it stays as a tombstone). Resolves with `message_deleted`. */
  deleteMessage(messageId: Id): Promise<MessageDeleted> {
    try {
      const id = needId(messageId, 'messageId');
      return this.messageRequest('delete', { type: 'delete_message', message_id: id }, id, () =>
        this.restChange<MessageDeleted>('message_deleted', 'DELETE', `/api/v1/messages/${id}/`),
      );
    } catch (e) {
      return rejected(e);
    }
  }

  /** Reacts with one emoji (a Unicode emoji sequence or `:short_code:`, ≤ 32 bytes).
   *  Resolves with your `reaction_added`. */
  addReaction(messageId: Id, emoji: string): Promise<ReactionChanged> {
    return this.reaction('react', messageId, emoji);
  }

  /** Takes your reaction back. Resolves with your `reaction_removed`. */
  removeReaction(messageId: Id, emoji: string): Promise<ReactionChanged> {
    return this.reaction('unreact', messageId, emoji);
  }

  /** Pins a message in its conversation. Resolves with `message_pinned`. */
  pinMessage(messageId: Id): Promise<PinChanged> {
    return this.pin('pin', messageId);
  }

  /** Unpins a message. Resolves with `message_unpinned`. */
  unpinMessage(messageId: Id): Promise<PinChanged> {
    return this.pin('unpin', messageId);
  }

  /** A page of a thread: the root first (without `afterSeq`), then replies oldest first.
   *  `messageId` may be the root or any reply in its thread. */
  getThread(messageId: Id, opts: { afterSeq?: number; limit?: number } = {}): Promise<ThreadPage> {
    try {
      const id = needId(messageId, 'messageId');
      const rest = async (): Promise<ThreadPage> => {
        const q = new URLSearchParams();
        if (opts.afterSeq) q.set('after_seq', String(opts.afterSeq));
        if (opts.limit) q.set('limit', String(opts.limit));
        const r = await this.api<Partial<ThreadPage> & { messages: NewMessage[]; has_more?: boolean }>('GET', `/api/v1/messages/${id}/thread/?${q}`);
        const messages = r.messages.map((m) => ({ ...m, type: 'new_message' as const }));
        const root = messages.find((m) => m.reply_to === null || m.reply_to === undefined);
        const page: ThreadPage = {
          type: 'thread',
          message_id: r.message_id ?? root?.message_id ?? messages[0]?.reply_to ?? id,
          conversation_id: r.conversation_id ?? messages[0]?.conversation_id ?? 0,
          messages,
          has_more: !!r.has_more,
        };
        this.emit('thread', page);
        return page;
      };
      const frame: Record<string, unknown> = { type: 'thread', message_id: id };
      if (opts.afterSeq) frame.after_seq = opts.afterSeq;
      if (opts.limit) frame.limit = opts.limit;
      return this.messageRequest('thread', frame, id, rest);
    } catch (e) {
      return rejected(e);
    }
  }

  /** A conversation's pinned messages, most recently pinned first. */
  listPins(conversationId: Id): Promise<PinsList> {
    try {
      const conv = needId(conversationId, 'conversationId');
      const rest = async (): Promise<PinsList> => {
        const r = await this.api<{ messages: NewMessage[] }>('GET', `/api/v1/conversations/${conv}/pins/`);
        const page: PinsList = { type: 'pins', conversation_id: conv, messages: r.messages.map((m) => ({ ...m, type: 'new_message' as const })) };
        this.emit('pins', page);
        return page;
      };
      if (this._state === 'fallback') return rest();
      return this.request<PinsList>('pins', { type: 'list_pins', conversation_id: conv }, conv, { rest });
    } catch (e) {
      return rejected(e);
    }
  }

  // ---------------------------------------------------------------- attachments

  /** Uploads a file straight to the server's object storage (a presigned `PUT`: the bytes
   *  never pass through a gateway), then resolves with the id to attach:
   *  `sendMessage({ conversationId, text, attachments: [uploadId] })`. The server checks
   *  the type against the bytes, and strips photos' metadata (location) when attached. */
  async upload(file: Blob | ArrayBuffer | Uint8Array, opts: UploadOptions): Promise<UploadResult> {
    const conversation_id = needId(opts.conversationId, 'conversationId');
    const blob = file as Blob & { name?: string };
    const size = typeof blob.size === 'number' ? blob.size : (file as ArrayBuffer).byteLength;
    const filename = opts.filename ?? blob.name ?? 'file';
    const contentType = opts.contentType || blob.type || 'application/octet-stream';
    const slot = await this.api<{ upload_id: number; url: string; method: string; headers: Record<string, string> }>(
      'POST',
      '/api/v1/uploads/',
      { conversation_id, filename, content_type: contentType, size, ...(opts.waveform ? { waveform: opts.waveform } : {}) },
    );
    const url = /^https?:/i.test(slot.url) ? slot.url : this.apiUrl + slot.url;
    // The length is signed too; the runtime sets it from the body (browsers forbid setting it).
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(slot.headers)) if (k.toLowerCase() !== 'content-length') headers[k] = v;
    const progress = opts.onProgress;
    const XHR = (globalThis as { XMLHttpRequest?: typeof XMLHttpRequest }).XMLHttpRequest;
    let status: number;
    if (progress && XHR) {
      status = await new Promise<number>((resolve, reject) => {
        const x = new XHR();
        x.open(slot.method, url);
        for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
        x.upload.onprogress = (e) => progress(e.loaded, size);
        x.onload = () => resolve(x.status);
        x.onerror = () => reject(new IndabaError('network', 'upload failed'));
        x.send(file as XMLHttpRequestBodyInit);
      });
    } else {
      const f = this.opts.fetch ?? (globalThis.fetch as typeof fetch | undefined);
      if (!f) throw new IndabaError('unsupported', 'no fetch available');
      progress?.(0, size);
      try {
        const res = await f(url, { method: slot.method, headers, body: file as BodyInit });
        status = res.status;
      } catch (e) {
        throw new IndabaError('network', String((e as Error)?.message ?? e));
      }
    }
    if (status < 200 || status >= 300) throw new IndabaError(status === 410 || status === 403 ? 'upload_expired' : 'upload_failed', `the storage answered ${status}`, status);
    progress?.(size, size);
    return { uploadId: slot.upload_id, filename, contentType, size };
  }

  /** A short-lived address (minutes) of an attachment or its thumbnail, for an `<img>`,
   *  a download link or React Native's `Image` (members only). */
  async attachmentUrl(attachmentId: Id, opts: { thumbnail?: boolean } = {}): Promise<string> {
    const id = needId(attachmentId, 'attachmentId');
    const r = await this.api<{ url: string }>('GET', `/api/v1/attachments/${id}/${opts.thumbnail ? 'thumbnail/' : ''}?redirect=false`);
    return /^https?:/i.test(r.url) ? r.url : this.apiUrl + r.url;
  }

  /** Who read a message ("seen by"), earliest first. */
  getReads(messageId: Id): Promise<MessageReads> {
    try {
      const id = needId(messageId, 'messageId');
      return this.messageRequest('reads', { type: 'message_reads', message_id: id }, id, async () => {
        const r = await this.api<Partial<MessageReads> & { reads: MessageReads['reads'] }>('GET', `/api/v1/messages/${id}/reads/`);
        const f: MessageReads = { type: 'message_reads', message_id: r.message_id ?? id, conversation_id: r.conversation_id ?? 0, reads: r.reads };
        this.emit('message_reads', f);
        return f;
      });
    } catch (e) {
      return rejected(e);
    }
  }

  private reaction(kind: 'react' | 'unreact', messageId: Id, emoji: string): Promise<ReactionChanged> {
    try {
      const id = needId(messageId, 'messageId');
      checkEmoji(emoji);
      const type = kind === 'react' ? 'add_reaction' : 'remove_reaction';
      return this.messageRequest(
        kind,
        { type, message_id: id, emoji },
        id,
        () => this.restChange<ReactionChanged>(kind === 'react' ? 'reaction_added' : 'reaction_removed', kind === 'react' ? 'POST' : 'DELETE', `/api/v1/messages/${id}/reactions/`, { emoji }),
        emoji,
      );
    } catch (e) {
      return rejected(e);
    }
  }

  private pin(kind: 'pin' | 'unpin', messageId: Id): Promise<PinChanged> {
    try {
      const id = needId(messageId, 'messageId');
      return this.messageRequest(kind, { type: kind === 'pin' ? 'pin_message' : 'unpin_message', message_id: id }, id, () =>
        this.restChange<PinChanged>(kind === 'pin' ? 'message_pinned' : 'message_unpinned', kind === 'pin' ? 'POST' : 'DELETE', `/api/v1/messages/${id}/pin/`),
      );
    } catch (e) {
      return rejected(e);
    }
  }

  /** A request about one message: over the socket, or REST in fallback. */
  private messageRequest<T>(kind: PendingKind, frame: Record<string, unknown>, messageId: number, rest: () => Promise<T>, emoji?: string): Promise<T> {
    if (this._state === 'fallback') return rest();
    return this.request<T>(kind, frame, undefined, { messageId, emoji, rest });
  }

  /** A change over REST: its answer is the change event, applied like one from the stream. */
  private async restChange<T extends MessageChange>(type: T['type'], method: string, path: string, body?: unknown): Promise<T> {
    const r = await this.api<Record<string, unknown> | undefined>(method, path, body);
    const ev = { ...(r ?? {}), type: typeof r?.type === 'string' ? r.type : type } as unknown as T;
    if (typeof ev.seq === 'number' && typeof ev.message_id === 'number' && typeof ev.conversation_id === 'number') this.dispatch(ev, this._transport ?? 'sse');
    return ev;
  }

  /** Sends any frame as is (escape hatch). Returns false when no socket is open. */
  sendFrame(frame: Record<string, unknown>): boolean {
    const ws = this.ws;
    if (!ws || !this.wsEstablished || this.wsIsProbe || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      this.log('send failed', e);
      return false;
    }
  }

  /** A REST call with the current token (`path` starts with /api/). */
  async api<T = unknown>(method: string, path: string, body?: unknown, retried = false): Promise<T> {
    const f = this.opts.fetch ?? (globalThis.fetch as typeof fetch | undefined);
    if (!f) throw new IndabaError('unsupported', 'no fetch available');
    const token = await this.currentToken();
    const headers: Record<string, string> = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res: Response;
    try {
      res = await f(this.apiUrl + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new IndabaError('network', String((e as Error)?.message ?? e));
    }
    if (res.status === 401 && !retried && this.opts.getToken) {
      this.token = await this.opts.getToken('expired');
      return this.api(method, path, body, true);
    }
    const textBody = res.status === 204 ? '' : await res.text();
    let json: any = undefined;
    try {
      json = textBody ? JSON.parse(textBody) : undefined;
    } catch {
      /* not JSON */
    }
    if (!res.ok) {
      throw new IndabaError(json?.error?.code ?? 'http_error', json?.error?.message ?? `HTTP ${res.status}`, res.status);
    }
    return json as T;
  }

  // ---------------------------------------------------------------- WebSocket

  private async currentToken(reason: TokenReason = 'initial'): Promise<string> {
    if (this.token === undefined || this.nextTokenReason) {
      const r = this.nextTokenReason ?? reason;
      this.nextTokenReason = null;
      if (!this.opts.getToken) {
        if (this.token === undefined) throw new IndabaError('unauthorized', 'no token and no getToken');
        return this.token;
      }
      this.token = await this.opts.getToken(r);
    }
    return this.token!;
  }

  private async openWebSocket(probe: boolean): Promise<void> {
    if (this._state === 'closed') return;
    const Ctor = (this.opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket)!;
    let token: string;
    try {
      token = await this.currentToken();
    } catch (e) {
      this.log('getToken failed', e);
      this.afterWsFailure(probe, 0, false);
      return;
    }
    if (this.isClosed()) return;
    let ws: WebSocketLike;
    try {
      // No token in the URL (URLs end up in proxy and server logs): the token goes in the
      // first frame, `authenticate`, and the server answers `connection_established` or
      // closes with 4001.
      ws = new Ctor(this.wsUrl);
    } catch (e) {
      this.log('WebSocket constructor threw', e);
      this.afterWsFailure(probe, 0, false);
      return;
    }
    this.ws = ws;
    this.wsEstablished = false;
    this.wsIsProbe = probe;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = setTimeout(() => {
      if (this.ws === ws && !this.wsEstablished) {
        this.log('no connection_established in time');
        try {
          ws.close(4000, 'connect timeout');
        } catch {
          /* ignore */
        }
        this.onWsClose(ws, 1006);
      }
    }, this.opts.connectTimeoutMs ?? 15_000);
    this.wsToken = token;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      try {
        ws.send(JSON.stringify({ type: 'authenticate', token }));
      } catch (e) {
        this.log('authenticate frame not sent', e);
      }
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      const data = typeof ev.data === 'string' ? ev.data : new TextDecoder().decode(ev.data as ArrayBuffer);
      let frame: ServerFrame;
      try {
        frame = JSON.parse(data);
      } catch {
        this.log('non-JSON frame', data);
        return;
      }
      if (!this.wsEstablished) {
        if (frame.type !== 'connection_established') return;
        this.onWsEstablished(frame);
      }
      this.dispatch(frame, 'websocket');
    };
    ws.onclose = (ev) => this.onWsClose(ws, ev?.code ?? 1006, ev?.reason ?? '');
    ws.onerror = () => {
      /* onclose follows */
    };
  }

  private onWsEstablished(frame: ConnectionEstablished): void {
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    this.wsEstablished = true;
    this.establishedAt = Date.now();
    this.failures = 0;
    if (this.wsIsProbe) {
      this.wsIsProbe = false;
      this.stopSse();
      if (this.probeTimer) clearTimeout(this.probeTimer);
      this.probeTimer = null;
    }
    this._userId = frame.user_id;
    this._transport = 'websocket';
    this.setState('open');
    this.scheduleTokenRefresh();
    this.resume();
  }

  private onWsClose(ws: WebSocketLike, code: number, reason = ''): void {
    if (this.ws !== ws) return;
    this.emit('socket_closed', code, reason);
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    const wasEstablished = this.wsEstablished;
    const wasProbe = this.wsIsProbe;
    this.wsEstablished = false;
    this.wsIsProbe = false;
    this.inflight.clear();
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (this._state === 'closed') return;
    this.log(`socket closed ${code}`, { wasEstablished, wasProbe });
    if (wasEstablished) this._transport = null;
    // The backoff starts over only after a socket that stayed up: a server that accepts and
    // drops every socket at once must not be hammered.
    if (wasEstablished && Date.now() - this.establishedAt >= 10_000) this.attempt = 0;
    this.afterWsFailure(wasProbe, code, wasEstablished);
  }

  private afterWsFailure(probe: boolean, code: number, wasEstablished: boolean): void {
    if (this._state === 'closed') return;
    const jitter = (max: number) => Math.floor(this.random() * max);
    let delay: number;
    const expired = (t: string | undefined) => {
      const exp = t === undefined ? undefined : tokenExpiry(t);
      return exp !== undefined && exp * 1000 <= Date.now();
    };
    if (code === 4001 && (wasEstablished || expired(this.wsToken))) {
      // Token expired: a new one, then straight back.
      this.nextTokenReason = 'expired';
      delay = jitter(250);
    } else if (code === 4001) {
      // The first frame's token was refused (bad signature, wrong audience, …): ask for
      // another one, and back off like any failed attempt so a token that stays bad is not
      // retried in a tight loop.
      this.nextTokenReason = this.opts.getToken ? 'rejected' : null;
      this.failures++;
      const base = this.opts.reconnect?.baseDelayMs ?? 500;
      const max = this.opts.reconnect?.maxDelayMs ?? 30_000;
      delay = jitter(Math.min(max, base * 2 ** Math.min(this.attempt, 30)) + 1);
      this.attempt++;
    } else if (code === 1012) {
      delay = jitter(this.opts.restartDelayMs ?? 1000);
    } else if (code === 1008) {
      const d = this.opts.abuseDelayMs ?? 60_000;
      delay = d / 2 + jitter(d / 2);
    } else {
      if (!wasEstablished) this.failures++;
      const base = this.opts.reconnect?.baseDelayMs ?? 500;
      const max = this.opts.reconnect?.maxDelayMs ?? 30_000;
      delay = jitter(Math.min(max, base * 2 ** Math.min(this.attempt, 30)) + 1);
      this.attempt++;
      // A handshake refused again and again may be a rejected token (browsers hide the 401).
      if (!wasEstablished && this.failures >= 2 && this.opts.getToken && this.failures % 2 === 0) this.nextTokenReason = 'rejected';
    }
    const fb = this.opts.fallback === false ? null : { afterFailures: 4, retryWebSocketMs: 30_000, ...(this.opts.fallback ?? {}) };
    if (probe || this._state === 'fallback') {
      this.scheduleProbe();
      return;
    }
    if (fb && !wasEstablished && this.failures >= fb.afterFailures) {
      this.enterFallback();
      return;
    }
    this.setState('reconnecting');
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.openWebSocket(false);
    }, delay);
  }

  /** After (re)connecting: rooms, presence, status, resume, outbox, receipts, open requests. */
  private resume(): void {
    for (const conv of this.joined) this.sendFrame({ type: 'join_conversation', conversation_id: conv });
    if (this.presenceIds.size) this.sendFrame({ type: 'presence_subscribe', user_ids: [...this.presenceIds].slice(-500) });
    if (this.status === 'away') this.sendFrame({ type: 'set_status', status: 'away' });
    if (this.lastSeq.size) this.sendSync(Object.fromEntries(this.lastSeq));
    // Requests whose socket went away before the answer.
    for (const p of this.pending) this.sendFrame(p.frame);
    // The list names conversations this client has never seen (first connect: the baseline;
    // later: conversations created while offline, synced from the start).
    this.request<{ conversations: ConversationInfo[] }>('conversations', { type: 'list_conversations' })
      .then((f) => this.discover(f.conversations))
      .catch((e) => this.log('list_conversations failed', e));
    void (this.storageLoaded ?? Promise.resolve()).then(() => this.flushOutbox());
    this.flushReceipts();
  }

  private sendSync(map: Record<string, number>): void {
    const entries = Object.entries(map);
    for (let i = 0; i < entries.length; i += SYNC_CHUNK) {
      if (this.sendFrame({ type: 'sync', conversations: Object.fromEntries(entries.slice(i, i + SYNC_CHUNK)) })) this.syncing++;
    }
  }

  /** Conversations seen for the first time: the first list sets the baseline; later ones were
   *  created while this client was away, and everything in them is missed. */
  private discover(list: ConversationInfo[]): void {
    const missed: Record<string, number> = {};
    for (const c of list) {
      if (this.lastSeq.has(c.id)) continue;
      if (!this.hasBaseline) this.lastSeq.set(c.id, c.last_seq);
      else if (c.last_seq > 0) missed[c.id] = 0;
      else this.lastSeq.set(c.id, 0);
    }
    this.hasBaseline = true;
    if (!Object.keys(missed).length) return;
    if (this._state === 'open') this.sendSync(missed);
    else if (this._state === 'fallback') void this.restSync(missed);
  }

  private scheduleTokenRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    const lead = this.opts.tokenRefreshLeadMs ?? 60_000;
    if (!this.opts.getToken || !this.token || lead === false) return;
    const exp = tokenExpiry(this.token);
    if (!exp) return;
    const ms = Math.max(1_000, exp * 1000 - Date.now() - lead);
    if (ms > 2 ** 31 - 1) return;
    this.refreshTimer = setTimeout(async () => {
      this.refreshTimer = null;
      try {
        const t = await this.opts.getToken!('refresh');
        this.token = t;
        this.sendFrame({ type: 'refresh_token', token: t });
      } catch (e) {
        this.log('token refresh failed', e);
      }
    }, ms);
  }

  // ---------------------------------------------------------------- incoming frames

  private dispatch(frame: ServerFrame, transport: Transport): void {
    this.emit('frame', frame, transport);
    switch (frame.type) {
      case 'connection_established':
        this._userId = frame.user_id;
        this.emit('connection_established', frame, transport);
        return;
      case 'new_message': {
        this.observeSeq(frame.conversation_id, frame.seq);
        if (this.seen.has(frame.message_id)) return;
        this.remember(frame.message_id);
        // This client's own message coming back (a resume, the SSE stream) before its ack:
        // it is the ack, not a new message.
        if (frame.client_msg_id && frame.sender_id === this._userId && this.outbox.some((o) => o.client_msg_id === frame.client_msg_id)) {
          this.acknowledge({
            message_id: frame.message_id,
            conversation_id: frame.conversation_id,
            seq: frame.seq,
            client_msg_id: frame.client_msg_id,
            created_at: frame.created_at,
          });
          return;
        }
        this.emit('new_message', frame);
        return;
      }
      case 'message_sent':
        this.observeSeq(frame.conversation_id, frame.seq);
        this.remember(frame.message_id);
        if (frame.client_msg_id) this.acknowledge({ ...frame, client_msg_id: frame.client_msg_id });
        else this.emit('message_sent', frame);
        return;
      case 'sync_complete': {
        this.syncing = Math.max(0, this.syncing - 1);
        for (const t of frame.truncated ?? []) {
          // Gone from the store: accept the gap.
          const newest = frame.conversations[String(t)];
          if (newest !== undefined) this.lastSeq.set(t, Math.max(newest, this.lastSeq.get(t) ?? 0));
          this.ahead.delete(t);
        }
        // The resume streamed everything up to these seqs: a change to a message it carried
        // is folded into that message's state, so its seq never comes and is no gap.
        for (const [conv, newest] of Object.entries(frame.conversations ?? {})) {
          if (typeof newest === 'number' && this.lastSeq.has(Number(conv))) this.advanceTo(Number(conv), newest);
        }
        this.emit('sync_complete', frame);
        this.checkGaps();
        return;
      }
      case 'conversations': {
        const p = this.takePending('conversations');
        if (p) p.resolve(frame);
        this.emit('conversations', frame);
        return;
      }
      case 'history': {
        this.takePending('history', frame.conversation_id)?.resolve(frame);
        this.emit('history', frame);
        return;
      }
      case 'token_refreshed':
        this.scheduleTokenRefresh();
        this.emit('token_refreshed', frame);
        return;
      case 'presence':
        this.presenceCache.set(frame.user_id, frame);
        this.emit('presence', frame);
        return;
      case 'left_conversation':
        if (frame.reason === 'removed') this.joined.delete(frame.conversation_id);
        this.emit('left_conversation', frame);
        return;
      case 'joined_conversation':
        this.takePending('join', frame.conversation_id)?.resolve(frame);
        this.emit('joined_conversation', frame);
        return;
      case 'error':
        this.onErrorFrame(frame);
        return;
      case 'thread': {
        const ids = new Set(frame.messages.map((m) => m.message_id));
        const p =
          this.takeWhere((x) => x.kind === 'thread' && x.messageId === frame.message_id) ??
          this.takeWhere((x) => x.kind === 'thread' && ids.has(x.messageId!)) ??
          this.takePending('thread');
        p?.resolve(frame);
        this.emit('thread', frame);
        return;
      }
      case 'pins':
        this.takePending('pins', frame.conversation_id)?.resolve(frame);
        this.emit('pins', frame);
        return;
      case 'message_reads':
        this.takeWhere((x) => x.kind === 'reads' && x.messageId === frame.message_id)?.resolve(frame);
        this.emit('message_reads', frame);
        return;
      default:
        if (isChange(frame)) return this.onChange(frame);
        (this.emit as (e: string, f: ServerFrame) => void)(frame.type, frame);
    }
  }

  private onErrorFrame(frame: ErrorFrame): void {
    const item = frame.ref !== undefined ? this.outbox.find((o) => o.client_msg_id === frame.ref) : undefined;
    if (item) {
      this.inflight.delete(item.client_msg_id);
      if (RETRYABLE.has(frame.code)) {
        const wait = frame.code === 'rate_limited' ? 2000 + this.random() * 3000 : 500 + this.random() * 1500;
        this.outboxPausedUntil = Math.max(this.outboxPausedUntil, Date.now() + wait);
        this.flushOutbox();
      } else {
        this.failItem(item, new IndabaError(frame.code, frame.message));
      }
    } else if (frame.message_ids?.length && this.pending.some((p) => MESSAGE_KINDS.has(p.kind) && frame.message_ids!.includes(p.messageId!))) {
      // A refused edit, delete, reaction, pin, thread or reads request.
      const p = this.takeWhere((x) => MESSAGE_KINDS.has(x.kind) && frame.message_ids!.includes(x.messageId!));
      p?.reject(new IndabaError(frame.code, frame.message));
    } else if (frame.conversation_id !== undefined && (frame.code === 'forbidden' || frame.code === 'conversation_not_found' || frame.code === 'not_found')) {
      const p = this.takePending('history', frame.conversation_id) ?? this.takePending('join', frame.conversation_id) ?? this.takePending('pins', frame.conversation_id);
      if (p) {
        if (p.kind === 'join') this.joined.delete(frame.conversation_id);
        p.reject(new IndabaError(frame.code, frame.message));
      }
    }
    this.emit('error', frame);
  }

  private remember(id: number): void {
    this.seen.add(id);
    if (this.seen.size > SEEN_CAP) {
      const it = this.seen.values();
      for (let i = 0; i < SEEN_CAP / 4; i++) this.seen.delete(it.next().value as number);
    }
  }

  /** A change event: it moves the cursor like a message, and is emitted once. */
  private onChange(frame: MessageChange): void {
    const known = typeof frame.seq === 'number' && frame.seq > 0;
    if (known) this.observeSeq(frame.conversation_id, frame.seq);
    this.answerChange(frame);
    if (known) {
      const key = `${frame.conversation_id}:${frame.seq}`;
      if (this.seenChanges.has(key)) return;
      this.seenChanges.add(key);
      if (this.seenChanges.size > SEEN_CAP) {
        const it = this.seenChanges.values();
        for (let i = 0; i < SEEN_CAP / 4; i++) this.seenChanges.delete(it.next().value as string);
      }
    }
    (this.emit as (e: string, f: MessageChange) => void)(frame.type, frame);
    this.emit('message_changed', frame);
  }

  /** Everything up to `seq` is here (a completed resume): moves the cursor past it. */
  private advanceTo(conv: number, seq: number): void {
    let n = Math.max(seq, this.lastSeq.get(conv) ?? 0);
    const ahead = this.ahead.get(conv);
    if (ahead) {
      for (const s of ahead) if (s <= n) ahead.delete(s);
      while (ahead.delete(n + 1)) n++;
      if (!ahead.size) this.ahead.delete(conv);
    }
    this.lastSeq.set(conv, n);
  }

  /** Tracks the newest gap-free seq per conversation; a gap that stays open is synced. */
  private observeSeq(conv: number, seq: number): void {
    const cur = this.lastSeq.get(conv);
    if (cur === undefined) {
      this.lastSeq.set(conv, seq);
      return;
    }
    if (seq <= cur) return;
    if (seq === cur + 1) {
      let n = seq;
      const ahead = this.ahead.get(conv);
      while (ahead?.delete(n + 1)) n++;
      if (ahead && !ahead.size) this.ahead.delete(conv);
      this.lastSeq.set(conv, n);
      return;
    }
    let ahead = this.ahead.get(conv);
    if (!ahead) this.ahead.set(conv, (ahead = new Set()));
    ahead.add(seq);
    this.checkGaps();
  }

  private checkGaps(): void {
    if (this.gapTimer || !this.ahead.size) return;
    this.gapTimer = setTimeout(() => {
      this.gapTimer = null;
      if (!this.ahead.size) return;
      if (this.syncing > 0) return this.checkGaps();
      const map: Record<string, number> = {};
      for (const conv of this.ahead.keys()) map[conv] = this.lastSeq.get(conv) ?? 0;
      if (this._state === 'open') this.sendSync(map);
      else if (this._state === 'fallback') void this.restSync(map);
    }, 1500);
  }

  // ---------------------------------------------------------------- outbox

  private outboxChanged(): void {
    const items = this.getOutbox();
    try {
      const r = this.storage.save(items);
      if (r && typeof (r as Promise<void>).catch === 'function') (r as Promise<void>).catch((e) => this.log('outbox save failed', e));
    } catch (e) {
      this.log('outbox save failed', e);
    }
    this.emit('outbox', items);
  }

  /** An acknowledgement. With `item` (a REST answer), only if that very item is still queued:
   *  a replay may have acknowledged it already, and a later send with the same id must then
   *  get its own answer. */
  private acknowledge(r: SendResult, item?: OutboxItem): void {
    if (item && !this.outbox.includes(item)) {
      this.flushOutbox();
      return;
    }
    const i = this.outbox.findIndex((o) => o.client_msg_id === r.client_msg_id);
    this.inflight.delete(r.client_msg_id);
    const msg: MessageSent = { type: 'message_sent', ...r };
    if (i >= 0) {
      this.outbox.splice(i, 1);
      this.outboxChanged();
    }
    if (i >= 0 || !this.acked.has(r.client_msg_id)) this.emit('message_sent', msg);
    this.acked.add(r.client_msg_id);
    if (this.acked.size > 2000) this.acked.delete(this.acked.values().next().value as string);
    const ws = this.waiters.get(r.client_msg_id);
    this.waiters.delete(r.client_msg_id);
    for (const w of ws ?? []) w.resolve(r);
    this.flushOutbox();
  }

  private failItem(item: OutboxItem, err: IndabaError): void {
    const i = this.outbox.indexOf(item);
    if (i >= 0) this.outbox.splice(i, 1);
    this.outboxChanged();
    const ws = this.waiters.get(item.client_msg_id);
    this.waiters.delete(item.client_msg_id);
    for (const w of ws ?? []) w.reject(err);
    this.emit('message_failed', item, err);
  }

  private flushOutbox(): void {
    if (!this.outbox.length) return;
    const wait = this.outboxPausedUntil - Date.now();
    if (wait > 0) {
      if (!this.outboxTimer)
        this.outboxTimer = setTimeout(() => {
          this.outboxTimer = null;
          this.flushOutbox();
        }, wait);
      return;
    }
    if (this._state === 'open') {
      for (const item of this.outbox) {
        if (this.inflight.size >= OUTBOX_WINDOW) break;
        if (this.inflight.has(item.client_msg_id)) continue;
        const frame: Record<string, unknown> = { type: 'chat_message', text: item.text, client_msg_id: item.client_msg_id };
        if (item.conversation_id !== undefined) frame.conversation_id = item.conversation_id;
        if (item.receiver_id !== undefined) frame.receiver_id = item.receiver_id;
        if (item.reply_to !== undefined) frame.reply_to = item.reply_to;
        if (item.mentions?.length) frame.mentions = item.mentions;
        if (item.attachments?.length) frame.attachments = item.attachments;
        if (!this.sendFrame(frame)) break;
        this.inflight.add(item.client_msg_id);
        item.attempts++;
      }
    } else if (this._state === 'fallback') {
      void this.flushOutboxRest();
    }
  }

  private async flushOutboxRest(): Promise<void> {
    if (this.restFlushing) return;
    this.restFlushing = true;
    try {
      while (this._state === 'fallback' && this.outbox.length) {
        const item = this.outbox[0]!;
        item.attempts++;
        try {
          const path = item.conversation_id !== undefined ? `/api/v1/conversations/${item.conversation_id}/messages/` : '/api/v1/messages/';
          const body: Record<string, unknown> = { text: item.text, client_msg_id: item.client_msg_id };
          if (item.conversation_id === undefined) body.receiver_id = item.receiver_id;
          else if (item.receiver_id !== undefined) body.receiver_id = item.receiver_id;
          if (item.reply_to !== undefined) body.reply_to = item.reply_to;
          if (item.mentions?.length) body.mentions = item.mentions;
          if (item.attachments?.length) body.attachments = item.attachments;
          const r = await this.api<SendResult>('POST', path, body);
          this.remember(r.message_id);
          this.observeSeq(r.conversation_id, r.seq);
          this.acknowledge({ ...r, client_msg_id: item.client_msg_id }, item);
        } catch (e) {
          const err = e as IndabaError;
          const status = err.status ?? 0;
          if (status >= 400 && status < 500 && status !== 408 && status !== 429 && !RETRYABLE.has(err.code)) {
            this.failItem(item, err);
            continue;
          }
          this.outboxPausedUntil = Date.now() + 1000 + this.random() * 4000;
          this.restFlushing = false;
          this.flushOutbox();
          return;
        }
      }
    } finally {
      this.restFlushing = false;
    }
  }

  // ---------------------------------------------------------------- typing, receipts, requests

  private transmitTyping(conv: number, receiverId: number | undefined, isTyping: boolean): void {
    if (this._state === 'open') {
      const f: Record<string, unknown> = { type: 'typing_indicator', conversation_id: conv, is_typing: isTyping };
      if (receiverId !== undefined) f.receiver_id = receiverId;
      this.sendFrame(f);
    } else if (this._state === 'fallback') {
      this.api('POST', `/api/v1/conversations/${conv}/typing/`, { is_typing: isTyping }).catch((e) => this.log('typing failed', e));
    }
  }

  private flushReceipts(): void {
    if (!this.receipts.size) return;
    const ids = [...this.receipts];
    if (this._state === 'open') {
      for (let i = 0; i < ids.length; i += RECEIPT_CHUNK) {
        const chunk = ids.slice(i, i + RECEIPT_CHUNK);
        if (!this.sendFrame({ type: 'read_receipt', message_ids: chunk })) return;
        for (const id of chunk) this.receipts.delete(id);
      }
    } else if (this._state === 'fallback' && this.sseOpen) {
      for (let i = 0; i < ids.length; i += RECEIPT_CHUNK) {
        const chunk = ids.slice(i, i + RECEIPT_CHUNK);
        for (const id of chunk) this.receipts.delete(id);
        this.api('POST', '/api/v1/messages/read/', { message_ids: chunk }).catch((e) => {
          this.log('read receipts failed', e);
          if ((e as IndabaError).status === undefined || (e as IndabaError).status! >= 500) for (const id of chunk) this.receipts.add(id);
        });
      }
    }
  }

  private request<T>(
    kind: Pending<T>['kind'],
    frame: Record<string, unknown>,
    conversationId?: number,
    extra: Pick<Pending<T>, 'messageId' | 'emoji' | 'rest'> = {},
  ): Promise<T> {
    if (this._state === 'closed' || this._state === 'idle') {
      return Promise.reject(new IndabaError('closed', 'not connected: call connect() first'));
    }
    return new Promise<T>((resolve, reject) => {
      const p: Pending<T> = {
        ...extra,
        kind,
        conversationId,
        frame,
        resolve: (v) => {
          clearTimeout(p.timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(p.timer);
          reject(e);
        },
        timer: setTimeout(() => {
          const i = this.pending.indexOf(p);
          if (i >= 0) this.pending.splice(i, 1);
          reject(new IndabaError('timeout', `no answer to ${String(frame.type)}`));
        }, this.opts.requestTimeoutMs ?? 20_000),
      };
      this.pending.push(p);
      this.sendFrame(frame); // if not open now, resume() sends it
    });
  }

  private takePending(kind: Pending<unknown>['kind'], conversationId?: number): Pending<any> | undefined {
    return this.takeWhere((p) => p.kind === kind && (conversationId === undefined || p.conversationId === conversationId));
  }

  /** The oldest pending request that `match` accepts, taken out of the list. */
  private takeWhere(match: (p: Pending<any>) => boolean): Pending<any> | undefined {
    const i = this.pending.findIndex(match);
    if (i < 0) return undefined;
    return this.pending.splice(i, 1)[0];
  }

  /** The request a change event answers: the actor's own, same message (and emoji). */
  private answerChange(frame: MessageChange): void {
    const kind = OP_OF[frame.type];
    const actor = frame.type === 'message_deleted' ? frame.deleted_by : frame.user_id;
    const mine = this._userId === null || actor === this._userId;
    const same = (p: Pending<any>) => p.kind === kind && p.messageId === frame.message_id;
    let p: Pending<any> | undefined;
    if (frame.type === 'reaction_added' || frame.type === 'reaction_removed') {
      if (!mine) return;
      // The server may spell an emoji differently (a normalized form): then the oldest.
      p = this.takeWhere((x) => same(x) && x.emoji === frame.emoji) ?? this.takeWhere(same);
    } else {
      p = this.takeWhere(same);
    }
    p?.resolve(frame);
  }

  // ---------------------------------------------------------------- fallback: SSE + REST

  private enterFallback(): void {
    this.log('WebSockets keep failing: falling back to SSE + REST');
    this.setState('fallback');
    this._transport = 'sse';
    this.sseAttempt = 0;
    this.startSse();
    this.scheduleProbe();
    // Requests waiting for a socket go over REST now.
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      const conv = p.conversationId;
      const done = p.rest
        ? p.rest()
        : p.kind === 'conversations'
          ? this.listConversations()
          : p.kind === 'history'
            ? this.history(conv!, { beforeSeq: p.frame.before_seq as number | undefined, limit: p.frame.limit as number | undefined })
            : this.joinConversation(conv!);
      (done as Promise<unknown>).then(p.resolve as (v: unknown) => void, p.reject);
    }
  }

  private scheduleProbe(): void {
    if (this._state !== 'fallback' || this.probeTimer || this.ws) return;
    const every = (this.opts.fallback && this.opts.fallback.retryWebSocketMs) || 30_000;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      if (this._state === 'fallback' && !this.ws) void this.openWebSocket(true);
    }, every / 2 + Math.floor(this.random() * (every / 2)));
  }

  private async startSse(): Promise<void> {
    if (this._state !== 'fallback' || this.sse) return;
    let token: string;
    try {
      token = await this.currentToken();
    } catch (e) {
      this.log('getToken failed', e);
      return this.retrySse();
    }
    if (this._state !== 'fallback' || this.sse) return;
    const handle = openSse({
      url: `${this.apiUrl}/api/v1/events/`,
      token,
      lastEventId: this.lastEventId,
      fetch: this.opts.fetch ?? (globalThis.fetch as typeof fetch | undefined),
      EventSource: this.opts.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource,
      onOpen: () => {
        if (this.sse !== handle) return;
        this.sseOpen = true;
        this.sseAttempt = 0;
      },
      onEvent: (data, id) => {
        if (this.sse !== handle) return;
        let frame: ServerFrame;
        try {
          frame = JSON.parse(data);
        } catch {
          return;
        }
        if (id) this.lastEventId = id;
        this.dispatch(frame, 'sse');
        if (frame.type === 'connection_established') this.afterSseEstablished();
      },
      onError: (err) => {
        if (this.sse !== handle) return;
        this.sse = null;
        this.sseOpen = false;
        this.log('SSE failed', err);
        if (err.status === 401) this.nextTokenReason = 'expired';
        this.retrySse(err.status === 404 ? 10 : 0);
      },
    });
    this.sse = handle;
  }

  private afterSseEstablished(): void {
    const known = Object.fromEntries(this.lastSeq);
    void this.restSync(known).then(async () => {
      try {
        await this.listConversations();
      } catch (e) {
        this.log('conversation list failed', e);
      }
    });
    if (this.presenceIds.size) void this.pollPresence([...this.presenceIds]);
    this.flushOutbox();
    this.flushReceipts();
  }

  private retrySse(extraAttempts = 0): void {
    if (this._state !== 'fallback' || this.sseTimer) return;
    this.sseAttempt += 1 + extraAttempts;
    const base = this.opts.reconnect?.baseDelayMs ?? 500;
    const max = this.opts.reconnect?.maxDelayMs ?? 30_000;
    const delay = Math.floor(this.random() * (Math.min(max, base * 2 ** Math.min(this.sseAttempt, 30)) + 1));
    this.sseTimer = setTimeout(() => {
      this.sseTimer = null;
      void this.startSse();
    }, delay);
  }

  private stopSse(): void {
    if (this.sseTimer) clearTimeout(this.sseTimer);
    this.sseTimer = null;
    this.sse?.close();
    this.sse = null;
    this.sseOpen = false;
  }

  /** Resume over REST: every message after our seq in each conversation, oldest first. */
  private async restSync(map: Record<string, number>): Promise<void> {
    const done: Record<string, number> = {};
    for (const [conv, from] of Object.entries(map)) {
      let after = from;
      for (let page = 0; page < 1000 && this._state === 'fallback'; page++) {
        let r: { messages: NewMessage[]; has_more: boolean };
        try {
          r = await this.api('GET', `/api/v1/conversations/${conv}/messages/?after_seq=${after}&limit=200`);
        } catch (e) {
          this.log('REST sync failed', e);
          break;
        }
        for (const m of r.messages) {
          after = Math.max(after, m.seq);
          this.dispatch({ ...m, type: 'new_message' }, 'sse');
        }
        if (!r.has_more || !r.messages.length) {
          // Change events have seqs of their own, which this REST page does not list.
          this.advanceTo(Number(conv), after);
          done[conv] = after;
          break;
        }
      }
    }
    if (this._state === 'fallback') this.emit('sync_complete', { type: 'sync_complete', conversations: done });
  }

  private async pollPresence(ids: number[]): Promise<void> {
    for (let i = 0; i < ids.length; i += 100) {
      try {
        const r = await this.api<{ presence: Omit<Presence, 'type'>[] }>('GET', `/api/v1/presence/?user_ids=${ids.slice(i, i + 100).join(',')}`);
        for (const p of r.presence) this.dispatch({ ...p, type: 'presence' }, 'sse');
      } catch (e) {
        this.log('presence failed', e);
      }
    }
  }

  // ---------------------------------------------------------------- misc

  private isClosed(): boolean {
    return this._state === 'closed';
  }

  private setState(s: ConnectionState): void {
    const prev = this._state;
    if (prev === s) return;
    this._state = s;
    this.emit('state', s, prev);
  }

  private clearTimers(): void {
    for (const k of ['reconnectTimer', 'connectTimer', 'probeTimer', 'refreshTimer', 'gapTimer', 'outboxTimer', 'receiptTimer', 'sseTimer'] as const) {
      const t = this[k];
      if (t) clearTimeout(t);
      this[k] = null;
    }
  }

  private log(message: string, data?: unknown): void {
    this.opts.log?.(message, data);
  }
}
