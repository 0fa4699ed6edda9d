-- The delivery outbox, one row per committed batch instead of one per message (see the
-- PostgreSQL migration of the same number). `message_ids` and `origins` are JSON arrays in
-- the same order. The single-node program has no rolling upgrade: the per-message table's
-- rows move over and the table goes.
CREATE TABLE outbox_batches (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_ids    TEXT    NOT NULL,
    origins        TEXT    NOT NULL,
    lease_until_ms INTEGER NOT NULL
);
CREATE INDEX outbox_batches_by_lease ON outbox_batches (lease_until_ms);

INSERT INTO outbox_batches (message_ids, origins, lease_until_ms)
SELECT json_array(message_id), json_array(origin_connection_id), 0 FROM outbox;
DROP TABLE outbox;
