// Rich messages, as pure functions: how a change event (edit, delete, reaction, pin) or a new
// reply changes a message the client holds. ChatStore applies them to every copy it keeps
// (the conversation's list, threads, pins, the conversation's last message).

import type { ChatMessage } from './store.js';
import type { MessageChange, MessageView, ReactionSummary } from './types.js';

/** The rich fields of a message that carries none (an older server, or your pending message). */
export function richDefaults(): Pick<
  MessageView,
  'reply_to' | 'mentions' | 'edited_at' | 'deleted' | 'deleted_at' | 'deleted_by' | 'reactions' | 'reply_count' | 'last_reply_at' | 'pinned_at' | 'pinned_by'
> {
  return {
    reply_to: null,
    mentions: [],
    edited_at: null,
    deleted: false,
    deleted_at: null,
    deleted_by: null,
    reactions: {},
    reply_count: 0,
    last_reply_at: null,
    pinned_at: null,
    pinned_by: null,
  };
}

/** Sets one emoji's reaction count (absolute, as the server reports it after the change).
 *  `me` is set only when the change is the current user's own (`undefined`: keep it).
 *  A count of 0 removes the emoji. Returns `reactions` itself when nothing changes. */
export function setReaction(
  reactions: Record<string, ReactionSummary>,
  emoji: string,
  count: number,
  me?: boolean,
): Record<string, ReactionSummary> {
  const prev = reactions[emoji];
  if (count <= 0) {
    if (!prev) return reactions;
    const next = { ...reactions };
    delete next[emoji];
    return next;
  }
  const mine = me ?? prev?.me ?? false;
  if (prev && prev.count === count && prev.me === mine) return reactions;
  return { ...reactions, [emoji]: { count, me: mine } };
}

/** A message deleted for everyone: no text, no reactions, not pinned; id, seq, sender, time stay. */
export function tombstone<M extends ChatMessage>(m: M, deletedAt: string, deletedBy: number): M {
  if (m.deleted && m.deleted_at === deletedAt && m.deleted_by === deletedBy) return m;
  return { ...m, text: '', deleted: true, deleted_at: deletedAt, deleted_by: deletedBy, reactions: {}, pinned_at: null, pinned_by: null, attachments: [] };
}

/** Applies a change event to a message (absolute values: applying one twice changes nothing).
 *  Returns `m` itself when the event is not about it or changes nothing. A deleted message only
 *  takes an unpin. `me` is the current user (for reactions' `me`). */
export function applyChange<M extends ChatMessage>(m: M, ev: MessageChange, me: number | null): M {
  if (m.message_id !== ev.message_id) return m;
  switch (ev.type) {
    case 'message_updated':
      if (m.deleted || (m.text === ev.text && m.edited_at === ev.edited_at)) return m;
      return { ...m, text: ev.text, edited_at: ev.edited_at };
    case 'message_deleted':
      return tombstone(m, ev.deleted_at, ev.deleted_by);
    case 'reaction_added':
    case 'reaction_removed': {
      if (m.deleted) return m;
      const mine = me !== null && ev.user_id === me ? ev.type === 'reaction_added' : undefined;
      const reactions = setReaction(m.reactions, ev.emoji, ev.count, mine);
      return reactions === m.reactions ? m : { ...m, reactions };
    }
    case 'message_pinned':
      if (m.deleted || (m.pinned_at === ev.at && m.pinned_by === ev.user_id)) return m;
      return { ...m, pinned_at: ev.at, pinned_by: ev.user_id };
    case 'message_unpinned':
      if (m.pinned_at === null && m.pinned_by === null) return m;
      return { ...m, pinned_at: null, pinned_by: null };
    default:
      return m;
  }
}

/** A thread root that got a new reply: one more in `reply_count`, `last_reply_at` moved on.
 *  The caller makes sure a reply is counted once (a repeat of a known message is not). */
export function addReply<M extends ChatMessage>(root: M, reply: Pick<ChatMessage, 'created_at'>): M {
  const last = root.last_reply_at && root.last_reply_at > reply.created_at ? root.last_reply_at : reply.created_at;
  return { ...root, reply_count: root.reply_count + 1, last_reply_at: last };
}

/** Which field of which message a change sets: changes to one field apply in seq order. */
function fieldOf(ev: MessageChange): string {
  switch (ev.type) {
    case 'message_updated':
      return `${ev.message_id}:text`;
    case 'message_deleted':
      return `${ev.message_id}:deleted`;
    case 'reaction_added':
    case 'reaction_removed':
      return `${ev.message_id}:r:${ev.emoji}`;
    default:
      return `${ev.message_id}:pin`;
  }
}

/** Remembers the seq of the last change applied to each field of each message, so that a
 *  repeated or older change (a resume replaying what was seen live) is not applied again. */
export class ChangeVersions {
  private seqs = new Map<string, number>();
  constructor(private cap = 20_000) {}

  /** True when `ev` is newer than the last change applied to its field (then it is recorded). */
  accept(ev: MessageChange): boolean {
    if (typeof ev.seq !== 'number') return true;
    const key = fieldOf(ev);
    const prev = this.seqs.get(key);
    if (prev !== undefined && ev.seq <= prev) return false;
    this.seqs.delete(key);
    this.seqs.set(key, ev.seq);
    if (this.seqs.size > this.cap) {
      const it = this.seqs.keys();
      for (let i = 0; i < this.cap / 4; i++) this.seqs.delete(it.next().value as string);
    }
    return true;
  }
}
