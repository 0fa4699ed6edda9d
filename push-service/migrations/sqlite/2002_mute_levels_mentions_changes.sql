-- Mute levels: 'all' (nothing notifies) or 'mentions_only' (messages mentioning the user
-- still do). Mutes stored before levels existed keep meaning a full mute.
ALTER TABLE push_mutes ADD COLUMN level TEXT NOT NULL DEFAULT 'all';

-- A batch that includes a message mentioning its user: who wrote the newest such message
-- (NULL: no mention; 0: the system) and which message that is.
ALTER TABLE push_batches ADD COLUMN mentioned_by BIGINT;
ALTER TABLE push_batches ADD COLUMN mention_message_id BIGINT NOT NULL DEFAULT 0;
-- Edits and deletions find the open batches whose newest message they change.
CREATE INDEX push_batches_open_by_message ON push_batches (last_message_id) WHERE is_open = 1;

-- Edits and deletions already applied (a redelivered change job changes nothing), kept
-- like push_seen so a message's job arriving after its change (a republish) still honours
-- it: a deleted message is not notified, an edited one is with its text now.
CREATE TABLE push_changes (
    change_id  BIGINT NOT NULL PRIMARY KEY,
    message_id BIGINT NOT NULL,
    seq        BIGINT NOT NULL,            -- the change's seq in its conversation
    kind       BIGINT NOT NULL,            -- pb::ChangeKind (EDITED or DELETED)
    text       TEXT   NOT NULL,            -- EDITED: the new text
    seen_at_ms BIGINT NOT NULL
);
CREATE INDEX push_changes_by_message ON push_changes (message_id, seq);
CREATE INDEX push_changes_by_time ON push_changes (seen_at_ms);
