-- Rich messages. On the message row: its thread (one level: `reply_to` is always a root),
-- mentions ("3,7": ascending user ids), edits, the tombstone of a deletion (text emptied),
-- the thread's counters on its root, and the pin. In their own tables: reactions (one per
-- user and emoji), mentions by user (unread mention counts), and the changes that took
-- their place in the conversation's seq (the ordered stream a resume replays).
ALTER TABLE messages ADD COLUMN reply_to INTEGER;
ALTER TABLE messages ADD COLUMN mentions TEXT;
ALTER TABLE messages ADD COLUMN edited_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted_by INTEGER;
ALTER TABLE messages ADD COLUMN reply_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN last_reply_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN pinned_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN pinned_by INTEGER;
CREATE INDEX messages_thread ON messages (reply_to, seq) WHERE reply_to IS NOT NULL;
CREATE INDEX messages_pinned ON messages (conversation_id, pinned_at_ms) WHERE pinned_at_ms > 0;

CREATE TABLE message_reactions (
    message_id    INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    emoji         TEXT   NOT NULL,
    user_id       INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);

CREATE TABLE message_mentions (
    message_id      INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id         INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX message_mentions_by_user ON message_mentions (user_id, conversation_id, seq);

CREATE TABLE message_changes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    message_id      INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    message_seq     INTEGER NOT NULL,
    kind            INTEGER NOT NULL,            -- pb::ChangeKind
    actor_id        INTEGER NOT NULL,
    emoji           TEXT   NOT NULL DEFAULT '',
    count           INTEGER NOT NULL DEFAULT 0,
    at_ms           INTEGER NOT NULL,
    UNIQUE (conversation_id, seq)
);
CREATE INDEX message_changes_by_message ON message_changes (message_id);
