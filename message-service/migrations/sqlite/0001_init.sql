-- Conversations, participants, messages and the delivery outbox. Times are unix ms (UTC).
CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          INTEGER NOT NULL,            -- 1 direct, 2 group (pb::ConversationKind)
    title         TEXT   NOT NULL DEFAULT '',
    direct_key    TEXT   UNIQUE,              -- "<low>:<high>" for direct chats: one per pair
    last_seq      INTEGER NOT NULL DEFAULT 0,  -- newest message's seq; bumped under row lock
    created_by    INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE participants (
    conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         INTEGER NOT NULL,
    joined_at_ms    INTEGER NOT NULL,
    last_read_seq   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX participants_by_user ON participants (user_id);

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    sender_id     INTEGER NOT NULL,
    receiver_id   INTEGER,
    text          TEXT   NOT NULL,
    client_msg_id TEXT,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (conversation_id, seq)
);
-- Idempotency: one row per (sender, client_msg_id).
CREATE UNIQUE INDEX messages_idempotency ON messages (sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

-- Transactional outbox: a row is written in the same transaction as its message and
-- deleted once the delivery is published. Rows whose lease ran out belong to a
-- message-service that died before publishing; any instance republishes them.
CREATE TABLE outbox (
    message_id     INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    origin_connection_id TEXT NOT NULL DEFAULT '',
    lease_until_ms INTEGER NOT NULL
);
CREATE INDEX outbox_by_lease ON outbox (lease_until_ms);
