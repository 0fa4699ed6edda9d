-- The delivery outbox, one row per committed batch instead of one per message: a group
-- commit of N messages writes, indexes and later deletes one row, not N. `message_ids` and
-- `origins` are JSON arrays in the same order (origin = the sending connection, so the
-- sender's other sockets get the message and the sending one does not). No foreign key:
-- the sweeper reads the messages by id and skips those retention already removed.
CREATE TABLE outbox_batches (
    id             BIGSERIAL PRIMARY KEY,
    message_ids    TEXT   NOT NULL,
    origins        TEXT   NOT NULL,
    lease_until_ms BIGINT NOT NULL
);
CREATE INDEX outbox_batches_by_lease ON outbox_batches (lease_until_ms);

-- Rows of the per-message table become batch rows whose lease has run out, so the next
-- sweep republishes them. The table itself stays while instances of the previous release
-- may still write to it during a rolling upgrade; the sweeper adopts their orphans the same
-- way (see `Store::claim_expired_outbox`).
INSERT INTO outbox_batches (message_ids, origins, lease_until_ms)
SELECT '[' || message_id || ']', json_build_array(origin_connection_id)::text, 0 FROM outbox;
DELETE FROM outbox;

-- messages.conversation_id: every insert already locks its conversation row in the same
-- statement (for the next seq), and conversations are never deleted, so the foreign key's
-- check (a key-share lock query per inserted message) proved nothing the insert had not.
ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey;
