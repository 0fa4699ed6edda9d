// Wire types of the Indaba protocol (README "Protocol"), as the server sends them.

/** An id as sent to the server: a number, or a string of digits. Ids received are numbers. */
export type Id = number | string;

export interface ConnectionEstablished {
  type: 'connection_established';
  user_id: number;
  connection_id: string;
  server_time: string;
}

export interface MessageSent {
  type: 'message_sent';
  message_id: number;
  conversation_id: number;
  seq: number;
  client_msg_id?: string;
  created_at: string;
  duplicate?: boolean;
}

/** One emoji's reactions on a message, as the reader sees them. */
export interface ReactionSummary {
  /** How many users reacted with it. */
  count: number;
  /** Whether you are one of them. */
  me: boolean;
}

/** A message as the server shows it (`new_message`, `history`, `thread`, `pins`, REST pages). */
export interface MessageView {
  message_id: number;
  conversation_id: number;
  sender_id: number;
  receiver_id?: number;
  /** "" for a deleted message (a tombstone). */
  text: string;
  seq: number;
  created_at: string;
  client_msg_id?: string;
  /** The thread root this replies to (threads are one level: always the root), or null. */
  reply_to: number | null;
  /** Users mentioned. */
  mentions: number[];
  /** Last edit (RFC 3339), or null. */
  edited_at: string | null;
  /** Deleted for everyone: `text` is "", reactions are gone; id, seq, sender and time stay. */
  deleted: boolean;
  deleted_at: string | null;
  deleted_by: number | null;
  /** Emoji (a Unicode emoji or `:short_code:`) → count and whether you reacted; `{}` when none. */
  reactions: Record<string, ReactionSummary>;
  /** Replies in this message's thread. */
  reply_count: number;
  last_reply_at: string | null;
  /** When and by whom it was pinned, or null. */
  pinned_at: string | null;
  pinned_by: number | null;
  /** Files attached (photos, documents, voice notes); none once deleted. */
  attachments?: Attachment[];
}

/** A file on a message. `url` and `thumbnail` are the server's members-only routes: fetch
 *  them with the token, or ask `client.attachmentUrl()` for an address an `<img>` can load. */
export interface Attachment {
  id: number;
  filename: string;
  /** What the bytes were found to be (`application/octet-stream`: a download). */
  content_type: string;
  size: number;
  width?: number;
  height?: number;
  duration_ms?: number;
  url: string;
  /** Images: a JPEG of at most 320 px. */
  thumbnail?: string;
  /** Audio: the sender's waveform (0–255 per sample). */
  waveform?: number[];
}

/** What `client.upload()` resolves with: pass `uploadId` in `sendMessage({ attachments })`. */
export interface UploadResult {
  uploadId: number;
  filename: string;
  contentType: string;
  size: number;
}

export interface NewMessage extends MessageView {
  type: 'new_message';
}

// Change events: delivered to every socket of every member (the actor's own included: that is
// the answer to the frame). Each has its own `seq`, in the same numbering as messages.

/** `message_updated`: a message's text was edited. */
export interface MessageUpdated {
  type: 'message_updated';
  message_id: number;
  conversation_id: number;
  seq: number;
  text: string;
  edited_at: string;
  /** Who edited it. */
  user_id: number;
}

/** `message_deleted`: a message was deleted for everyone (it becomes a tombstone). */
export interface MessageDeleted {
  type: 'message_deleted';
  message_id: number;
  conversation_id: number;
  seq: number;
  deleted_at: string;
  deleted_by: number;
}

/** `reaction_added` / `reaction_removed`. `count` is the emoji's total after the change. */
export interface ReactionChanged {
  type: 'reaction_added' | 'reaction_removed';
  message_id: number;
  conversation_id: number;
  seq: number;
  /** Who reacted (or took the reaction back). */
  user_id: number;
  emoji: string;
  count: number;
}

/** `message_pinned` / `message_unpinned`. */
export interface PinChanged {
  type: 'message_pinned' | 'message_unpinned';
  message_id: number;
  conversation_id: number;
  seq: number;
  user_id: number;
  at: string;
}

/** Any change to an existing message. */
export type MessageChange = MessageUpdated | MessageDeleted | ReactionChanged | PinChanged;

/** The change event types. */
export const MESSAGE_CHANGE_TYPES = ['message_updated', 'message_deleted', 'reaction_added', 'reaction_removed', 'message_pinned', 'message_unpinned'] as const;

/** `thread`: a page of a thread, the root first when the page starts there, then replies oldest first. */
export interface ThreadPage {
  type: 'thread';
  /** The root. */
  message_id: number;
  conversation_id: number;
  messages: NewMessage[];
  has_more: boolean;
}

/** `pins`: a conversation's pinned messages, most recently pinned first. */
export interface PinsList {
  type: 'pins';
  conversation_id: number;
  messages: NewMessage[];
}

export interface MessageRead {
  user_id: number;
  read_at: string;
}

/** `message_reads`: who read a message ("seen by"), earliest first. */
export interface MessageReads {
  type: 'message_reads';
  message_id: number;
  conversation_id: number;
  reads: MessageRead[];
}

export interface MessageDelivered {
  type: 'message_delivered';
  message_id: number;
  conversation_id: number;
  recipient_id: number;
  delivered_at: string;
}

export interface TypingIndicator {
  type: 'typing_indicator';
  conversation_id: number;
  user_id: number;
  is_typing: boolean;
}

export interface ReadReceipt {
  type: 'read_receipt';
  message_ids: number[];
  conversation_id: number;
  reader_id: number;
  read_at: string;
}

export interface JoinedConversation {
  type: 'joined_conversation';
  conversation_id: number;
  participant_ids: number[];
}

export interface LeftConversation {
  type: 'left_conversation';
  conversation_id: number;
  reason?: string;
}

export interface ParticipantsChanged {
  type: 'participants_changed';
  conversation_id: number;
  added_user_ids: number[];
  removed_user_ids: number[];
  /** Who did it (absent when the system did). */
  actor_id?: number;
  /** The roles after the change. */
  owner_id?: number;
  admin_ids?: number[];
}

/** `conversation_updated`: a membership or role change you asked for is done. */
export interface ConversationUpdated {
  type: 'conversation_updated';
  conversation: ConversationInfo;
}

export interface SyncComplete {
  type: 'sync_complete';
  conversations: Record<string, number>;
  truncated?: number[];
}

export interface HistoryPage {
  type: 'history';
  conversation_id: number;
  messages: NewMessage[];
  has_more: boolean;
}

export interface ConversationInfo {
  id: number;
  kind: 'direct' | 'group' | string;
  title: string;
  participant_ids: number[];
  /** Groups: the owner (absent for direct chats, and for a group whose owner left). */
  owner_id?: number;
  /** Groups: the admins. */
  admin_ids?: number[];
  last_seq: number;
  last_read_seq: number;
  unread_count: number;
  /** Of the unread messages, those mentioning you. */
  unread_mentions?: number;
  last_message?: NewMessage | null;
  created_by?: number;
  created_at?: string;
  [extra: string]: unknown;
}

export interface Conversations {
  type: 'conversations';
  conversations: ConversationInfo[];
}

export type PresenceStatus = 'online' | 'away' | 'offline';

export interface Presence {
  type: 'presence';
  user_id: number;
  status: PresenceStatus;
  last_seen: string | null;
}

export interface TokenRefreshed {
  type: 'token_refreshed';
  valid_until: string;
}

export interface ErrorFrame {
  type: 'error';
  code: string;
  message: string;
  /** The rejected frame's client_msg_id. */
  ref?: string;
  conversation_id?: number;
  message_ids?: number[];
}

export interface Pong {
  type: 'pong';
}

export type ServerFrame =
  | ConnectionEstablished
  | MessageSent
  | NewMessage
  | MessageDelivered
  | TypingIndicator
  | ReadReceipt
  | JoinedConversation
  | LeftConversation
  | ParticipantsChanged
  | ConversationUpdated
  | MessageUpdated
  | MessageDeleted
  | ReactionChanged
  | PinChanged
  | ThreadPage
  | PinsList
  | MessageReads
  | SyncComplete
  | HistoryPage
  | Conversations
  | Presence
  | TokenRefreshed
  | ErrorFrame
  | Pong;

/** Connection states. See the README of this package for the transitions. */
export type ConnectionState =
  | 'idle' // created, connect() not called yet
  | 'connecting' // first WebSocket attempt in progress
  | 'open' // WebSocket open and authenticated (connection_established received)
  | 'reconnecting' // WebSocket lost; waiting for or making the next attempt
  | 'fallback' // WebSockets keep failing: events over SSE, sends over REST, WebSocket retried periodically
  | 'closed'; // disconnect() was called

export type Transport = 'websocket' | 'sse';

/** A message waiting in the outbox for its `message_sent` (or REST 201/200). */
export interface OutboxItem {
  client_msg_id: string;
  conversation_id?: number;
  receiver_id?: number;
  text: string;
  /** The message this replies to (the server files it in the root's thread). */
  reply_to?: number;
  /** Users mentioned. */
  mentions?: number[];
  /** Upload ids attached. */
  attachments?: number[];
  /** When the app queued it (ms since epoch). */
  queued_at: number;
  /** How many times it was put on the wire. */
  attempts: number;
}

/** The acknowledgement of an outbox item. */
export interface SendResult {
  message_id: number;
  conversation_id: number;
  seq: number;
  client_msg_id: string;
  created_at: string;
  duplicate?: boolean;
}

export interface UnreadSummary {
  total_unread: number;
  conversations: { conversation_id: number; unread_count: number; last_read_seq: number; last_seq: number }[];
}

export class IndabaError extends Error {
  readonly code: string;
  readonly status?: number;
  constructor(code: string, message: string, status?: number) {
    super(message);
    this.name = 'IndabaError';
    this.code = code;
    this.status = status;
  }
}
