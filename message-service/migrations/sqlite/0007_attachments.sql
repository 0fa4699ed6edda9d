-- Attachments. An upload is a presigned slot in object storage for one file of one user in
-- one conversation; attaching it to a message copies the object to a key the client cannot
-- write (`final_key`), checks and processes it, and records what was found. The message
-- row keeps the readers' view of its attachments (JSON), so a page reads no second table.
CREATE TABLE uploads (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id              INTEGER NOT NULL,
    conversation_id      INTEGER NOT NULL,
    filename             TEXT NOT NULL,
    declared_type        TEXT NOT NULL,
    declared_size        INTEGER NOT NULL,
    upload_key           TEXT NOT NULL,
    created_at_ms        INTEGER NOT NULL,
    url_expires_at_ms    INTEGER NOT NULL,
    waveform             BLOB,
    -- Set once checked (before the message commits).
    final_key            TEXT,
    thumbnail_key        TEXT,
    content_type         TEXT,
    stored_size          INTEGER,
    width                INTEGER NOT NULL DEFAULT 0,
    height               INTEGER NOT NULL DEFAULT 0,
    duration_ms          INTEGER NOT NULL DEFAULT 0,
    -- Set in the message's transaction.
    message_id           INTEGER
);
-- The daily quota and the removal of uploads never attached.
CREATE INDEX uploads_user_created ON uploads (user_id, created_at_ms);
CREATE INDEX uploads_unattached ON uploads (created_at_ms) WHERE message_id IS NULL;
CREATE INDEX uploads_message ON uploads (message_id) WHERE message_id IS NOT NULL;

ALTER TABLE messages ADD COLUMN attachments TEXT;
