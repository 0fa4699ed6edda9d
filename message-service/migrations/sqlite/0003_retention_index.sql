-- Retention deletes by age; without this every sweep would scan the whole table.
CREATE INDEX messages_by_created_at ON messages (created_at_ms);
