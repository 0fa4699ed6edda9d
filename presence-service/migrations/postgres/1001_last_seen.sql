-- presence-service's only table: when each user was last connected (unix ms). Versions
-- start at 1001 so they never collide with message-service's in a shared database.
CREATE TABLE presence_last_seen (
    user_id      BIGINT PRIMARY KEY,
    last_seen_ms BIGINT NOT NULL
);
