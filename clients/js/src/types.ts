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

export interface NewMessage {
  type: 'new_message';
  message_id: number;
  conversation_id: number;
  sender_id: number;
  receiver_id?: number;
  text: string;
  seq: number;
  created_at: string;
  client_msg_id?: string;
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
  last_seq: number;
  last_read_seq: number;
  unread_count: number;
  last_message?: NewMessage | null;
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
