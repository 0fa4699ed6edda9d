-- Attachments. An upload is a presigned slot in object storage for one file of one user in
-- one conversation; attaching it to a message copies the object to a key the client cannot
-- write (`final_key`), checks and processes it, and records what was found. The message
-- row keeps the readers' view of its attachments (JSON), so a page reads no second table.
CREATE TABLE uploads (
    id                   BIGSERIAL PRIMARY KEY,
    user_id              BIGINT NOT NULL,
    conversation_id      BIGINT NOT NULL,
    filename             TEXT NOT NULL,
    declared_type        TEXT NOT NULL,
    declared_size        BIGINT NOT NULL,
    upload_key           TEXT NOT NULL,
    created_at_ms        BIGINT NOT NULL,
    url_expires_at_ms    BIGINT NOT NULL,
    waveform             BYTEA,
    -- Set once checked (before the message commits).
    final_key            TEXT,
    thumbnail_key        TEXT,
    content_type         TEXT,
    stored_size          BIGINT,
    width                BIGINT NOT NULL DEFAULT 0,
    height               BIGINT NOT NULL DEFAULT 0,
    duration_ms          BIGINT NOT NULL DEFAULT 0,
    -- Set in the message's transaction.
    message_id           BIGINT
);
-- The daily quota and the removal of uploads never attached.
CREATE INDEX uploads_user_created ON uploads (user_id, created_at_ms);
CREATE INDEX uploads_unattached ON uploads (created_at_ms) WHERE message_id IS NULL;
CREATE INDEX uploads_message ON uploads (message_id) WHERE message_id IS NOT NULL;

ALTER TABLE messages ADD COLUMN attachments TEXT;
