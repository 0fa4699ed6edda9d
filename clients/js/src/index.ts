export { IndabaClient, tokenExpiry } from './client.js';
export type { IndabaClientOptions, IndabaClientEvents, SendMessageInput, TokenReason, UploadOptions, WebSocketConstructor, WebSocketLike } from './client.js';
export { ChatStore } from './store.js';
export type { ChatMessage, ChatSnapshot, ChatStoreOptions, ConversationState, MessageStatus, PresenceInfo, ThreadState } from './store.js';
export { addReply, applyChange, ChangeVersions, richDefaults, setReaction, tombstone } from './changes.js';
export { memoryStorage, webStorage } from './storage.js';
export type { OutboxStorage } from './storage.js';
export type { EventSourceConstructor, EventSourceLike } from './sse.js';
export * from './types.js';
