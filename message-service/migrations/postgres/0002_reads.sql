-- Per-message read times, and the activity time that orders a user's conversation list.
CREATE TABLE message_reads (
    message_id BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    BIGINT NOT NULL,
    read_at_ms BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id)
);
ALTER TABLE conversations ADD COLUMN last_message_at_ms BIGINT NOT NULL DEFAULT 0;
