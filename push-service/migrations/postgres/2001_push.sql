-- push-service's own tables. Times are unix ms; flags are 0/1 (one SQL text for both backends).
CREATE TABLE push_devices (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT NOT NULL,
    platform      BIGINT NOT NULL,            -- pb::DevicePlatform
    token         TEXT   NOT NULL,            -- FCM/APNs token, Web Push endpoint, webhook URL
    p256dh        TEXT   NOT NULL DEFAULT '',
    auth          TEXT   NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    UNIQUE (platform, token)
);
CREATE INDEX push_devices_by_user ON push_devices (user_id);

-- Muted conversations: until_ms 0 means until unmuted.
CREATE TABLE push_mutes (
    user_id         BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    until_ms        BIGINT NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
);

CREATE TABLE push_prefs (
    user_id   BIGINT PRIMARY KEY,
    hide_text BIGINT NOT NULL
);

-- Jobs already counted for a user: a redelivered job changes nothing.
CREATE TABLE push_seen (
    message_id BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    seen_at_ms BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX push_seen_by_time ON push_seen (seen_at_ms);

-- One notification in the making per (user, conversation): open while it collects
-- messages (the collapse window), then claimed (lease) and sent to every device.
CREATE TABLE push_batches (
    id              BIGSERIAL PRIMARY KEY,
    user_id         BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    is_open         BIGINT NOT NULL,
    count           BIGINT NOT NULL,
    last_message_id BIGINT NOT NULL,
    last_sender_id  BIGINT NOT NULL,
    last_text       TEXT   NOT NULL,
    title           TEXT   NOT NULL,
    kind            BIGINT NOT NULL,
    due_at_ms       BIGINT NOT NULL,
    lease_until_ms  BIGINT NOT NULL DEFAULT 0,
    attempt         BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX push_batches_open ON push_batches (user_id, conversation_id) WHERE is_open = 1;
CREATE INDEX push_batches_due ON push_batches (due_at_ms);

-- Devices a batch has reached: after a crash only the others are sent to.
CREATE TABLE push_sent (
    batch_id  BIGINT NOT NULL,
    device_id BIGINT NOT NULL,
    PRIMARY KEY (batch_id, device_id)
);

-- Notifications given up on (retries exhausted, or refused for good).
CREATE TABLE push_dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    batch_id        BIGINT NOT NULL,
    device_id       BIGINT NOT NULL,
    user_id         BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    reason          TEXT   NOT NULL,
    at_ms           BIGINT NOT NULL
);
