//! Every environment variable any Indaba program reads. This is the single place their
//! names are written; programs read them only in their settings modules, through these
//! constants.

/// `host:port` the HTTP/WebSocket listener binds (gateway, single-node). Default `0.0.0.0:8000`.
pub const LISTEN: &str = "INDABA_LISTEN";
/// `host:port` of a worker service's operations port (`/livez`, `/readyz`, `/metrics`);
/// message-service default `0.0.0.0:9090`, presence-service `0.0.0.0:9091`.
pub const HTTP_LISTEN: &str = "INDABA_HTTP_LISTEN";
/// `false`: message-service commits each message in its own transaction instead of grouping
/// the sends that arrive together (for comparison; default true).
pub const GROUP_COMMIT: &str = "INDABA_GROUP_COMMIT";
/// Fault injection for the fault tests (`indaba/tests/faults`): message-service aborts the
/// process right after its Nth commit of new messages, before answering or publishing them:
/// the crash window the outbox exists for. Never set it in production.
pub const TEST_CRASH_AFTER_COMMITS: &str = "INDABA_TEST_CRASH_AFTER_COMMITS";
/// Replicas of the JetStream stream Indaba creates (the push queue), 1–5 (default 1). Set
/// 3 on a 3-node NATS cluster so the queue survives losing a node; it applies when the
/// stream is created (an existing stream keeps its replicas; change it with `nats stream
/// edit`).
pub const JETSTREAM_REPLICAS: &str = "INDABA_JETSTREAM_REPLICAS";
/// `false`: message-service enqueues no push jobs (deployments without push-service).
pub const PUSH_JOBS: &str = "INDABA_PUSH_JOBS";
/// `true`: serve development tokens at `/api/v1/dev/token/` (HS256 only; never in production).
pub const DEV_TOKENS: &str = "INDABA_DEV_TOKENS";
/// OpenTelemetry (standard name): where traces go over OTLP/gRPC, e.g.
/// `http://otel-collector:4317`. Unset: trace ids still travel and appear in logs, nothing
/// is exported.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// OpenTelemetry (standard name): the `service.name` of exported spans (default: the
/// program's role, e.g. `gateway`).
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// HS256 shared secret for client JWTs.
pub const JWT_SECRET: &str = "INDABA_JWT_SECRET";
/// Path to a PEM RSA public key; when set, client JWTs are verified as RS256.
pub const JWT_PUBLIC_KEY_FILE: &str = "INDABA_JWT_PUBLIC_KEY_FILE";
/// Allowed clock skew for `exp`/`nbf`, in seconds. Default 30.
pub const JWT_LEEWAY_SECS: &str = "INDABA_JWT_LEEWAY_SECS";
/// WebSocket/SSE connection attempts per client address per 10 s (default 300; 0: no limit).
pub const CONNECT_RATE_PER_IP_10S: &str = "INDABA_CONNECT_RATE_PER_IP_10S";
/// Open HTTP/WebSocket/SSE connections allowed per client address (default 256; 0: no
/// limit). Connections from `INDABA_TRUSTED_PROXIES` are not counted.
pub const MAX_CONNECTIONS_PER_IP: &str = "INDABA_MAX_CONNECTIONS_PER_IP";
/// Seconds a REST request body may take to arrive (default 10); slower: 408.
pub const BODY_TIMEOUT_SECS: &str = "INDABA_BODY_TIMEOUT_SECS";
/// Comma-separated IP addresses of load balancers whose `X-Forwarded-For` is trusted.
pub const TRUSTED_PROXIES: &str = "INDABA_TRUSTED_PROXIES";
/// Seconds a socket opened without a token has to send `authenticate` (default 5).
pub const AUTH_TIMEOUT_SECS: &str = "INDABA_AUTH_TIMEOUT_SECS";
/// When set, client tokens must carry this `iss`.
pub const JWT_ISSUER: &str = "INDABA_JWT_ISSUER";
/// When set, client tokens must carry this `aud` (or a list containing it).
pub const JWT_AUDIENCE: &str = "INDABA_JWT_AUDIENCE";
/// The claim that names a token's type (default `token_type`, SimpleJWT's).
pub const JWT_TOKEN_TYPE_CLAIM: &str = "INDABA_JWT_TOKEN_TYPE_CLAIM";
/// The only token type accepted when a token names one (default `access`): SimpleJWT's
/// refresh tokens carry `token_type: refresh` and are refused.
pub const JWT_ACCESS_TOKEN_TYPE: &str = "INDABA_JWT_ACCESS_TOKEN_TYPE";
/// NATS server URL(s), comma separated (distributed mode).
pub const NATS_URL: &str = "NATS_URL";
/// NATS user name (with [`NATS_PASSWORD`]): one user per service, whose subject
/// permissions allow only what that service uses (`bus::permissions`).
pub const NATS_USER: &str = "NATS_USER";
/// Password of [`NATS_USER`].
pub const NATS_PASSWORD: &str = "NATS_PASSWORD";
/// NATS authentication token (instead of a user).
pub const NATS_TOKEN: &str = "NATS_TOKEN";
/// File holding a NATS NKey seed (`SU…`), instead of a user or token.
pub const NATS_NKEY_SEED_FILE: &str = "NATS_NKEY_SEED_FILE";
/// NATS `.creds` file (JWT and NKey seed, decentralized auth), instead of the others.
pub const NATS_CREDS_FILE: &str = "NATS_CREDS_FILE";
/// PEM CA certificate(s) the NATS server's certificate must chain to; set, TLS is required.
pub const NATS_CA_FILE: &str = "NATS_CA_FILE";
/// PEM client certificate for mutual TLS with NATS (with [`NATS_CLIENT_KEY_FILE`]).
pub const NATS_CLIENT_CERT_FILE: &str = "NATS_CLIENT_CERT_FILE";
/// PEM private key of [`NATS_CLIENT_CERT_FILE`].
pub const NATS_CLIENT_KEY_FILE: &str = "NATS_CLIENT_KEY_FILE";
/// Prefix of this client's reply subjects (default `_INBOX`). Per service
/// (`_INBOX.gateway`, …), so a service may subscribe only to its own replies.
pub const NATS_INBOX_PREFIX: &str = "NATS_INBOX_PREFIX";
/// PostgreSQL connection string (message-service, distributed mode).
pub const DATABASE_URL: &str = "DATABASE_URL";
/// Directory for the single-node program's SQLite file and generated secret. Default `./data`.
pub const DATA_DIR: &str = "INDABA_DATA_DIR";
/// Maximum message text length in characters. Default 4000.
pub const MAX_TEXT_CHARS: &str = "INDABA_MAX_TEXT_CHARS";
/// Seconds after sending during which a user may edit a message. Default 900; 0: no limit.
pub const EDIT_WINDOW_SECS: &str = "INDABA_EDIT_WINDOW_SECS";
/// Whether a gateway sends the sends that queue while earlier ones are in flight as one
/// request (`true`, the default) or each on its own (`false`).
pub const SEND_BATCHES: &str = "INDABA_SEND_BATCHES";
/// Milliseconds sends may queue for the group commit before new ones are refused with
/// `unavailable` and a retry hint (overload). Default 250; 0: never refuse.
pub const SEND_QUEUE_BUDGET_MS: &str = "INDABA_SEND_QUEUE_BUDGET_MS";
/// Maximum participants of a group conversation. Default 1000.
pub const MAX_GROUP_SIZE: &str = "INDABA_MAX_GROUP_SIZE";
/// Stable id of this gateway instance (defaults to a random one; set it to the pod name).
pub const GATEWAY_ID: &str = "INDABA_GATEWAY_ID";
/// Gateway heartbeat interval in milliseconds (default 10000). Routing tables and
/// presence drop a gateway silent for three intervals, so this sets the crash TTL.
pub const GATEWAY_HEARTBEAT_MS: &str = "INDABA_GATEWAY_HEARTBEAT_MS";
/// Seconds without a client frame after which a socket counts as away (default 300).
pub const IDLE_AWAY_SECS: &str = "INDABA_IDLE_AWAY_SECS";
/// Seconds a user stays present after the last socket closes (default 5).
pub const PRESENCE_GRACE_SECS: &str = "INDABA_PRESENCE_GRACE_SECS";
/// `host:port` a service's gRPC API listens on (presence-service default `0.0.0.0:50052`).
pub const GRPC_LISTEN: &str = "INDABA_GRPC_LISTEN";
/// gRPC caller keys: `name:key[:ro|:rw],…` (see `grpc_auth`).
pub const GRPC_API_KEYS: &str = "INDABA_GRPC_API_KEYS";
/// One full-access gRPC key: callers send `authorization: Bearer <this key>`.
pub const GRPC_API_KEY: &str = "INDABA_GRPC_API_KEY";
/// Comma-separated browser origins allowed to open WebSockets (e.g.
/// `https://app.example.com`). Unset: any origin. Requests without an `Origin` header
/// (native apps, servers) are always allowed.
pub const ALLOWED_ORIGINS: &str = "INDABA_ALLOWED_ORIGINS";
/// Chat messages one user may send per 10 s on one gateway (default 30).
pub const CHAT_RATE_PER_10S: &str = "INDABA_CHAT_RATE_PER_10S";
/// Whose presence a user may see: `shared` (default; users who share a conversation with
/// them, everyone else reads as offline without `last_seen`) or `everyone`.
pub const PRESENCE_VISIBILITY: &str = "INDABA_PRESENCE_VISIBILITY";
/// REST requests and event-stream opens one user may make per 10 s on one gateway
/// (default 100; 0: no limit). Over it: 429 with `Retry-After` and `RateLimit` headers.
pub const REST_RATE_PER_10S: &str = "INDABA_REST_RATE_PER_10S";
/// Conversations one user may create per minute on one gateway (default 20; 0: no limit).
pub const CONVERSATION_CREATE_RATE_PER_MIN: &str = "INDABA_CONVERSATION_CREATE_RATE_PER_MIN";
/// Seconds between server pings (default 25); a socket that misses two is closed.
pub const PING_INTERVAL_SECS: &str = "INDABA_PING_INTERVAL_SECS";
/// Most sockets one user may hold across all gateways (default 10; counted by
/// presence-service).
pub const MAX_CONNECTIONS_PER_USER: &str = "INDABA_MAX_CONNECTIONS_PER_USER";
/// Frames one socket may have queued for its client before it counts as a slow consumer and
/// is closed with 1013 (default 1024).
pub const OUTBOUND_QUEUE: &str = "INDABA_OUTBOUND_QUEUE";
/// Bytes one socket may have queued for its client (default 1048576, 1 MiB): the frame
/// count alone would let a client that stops reading pin 1024 × 64 KiB.
pub const OUTBOUND_QUEUE_BYTES: &str = "INDABA_OUTBOUND_QUEUE_BYTES";
/// Kernel send buffer (`SO_SNDBUF`) of each client socket, in bytes (min 4096; unset: the
/// kernel autotunes, up to 4 MiB per socket on default Linux settings).
pub const SOCKET_SEND_BUFFER: &str = "INDABA_SOCKET_SEND_BUFFER";
/// Seconds over which a stopping gateway closes its sockets, in batches (default 10); keep
/// `terminationGracePeriodSeconds` above it.
pub const DRAIN_SECS: &str = "INDABA_DRAIN_SECS";
/// Log format: `json` (default in distributed binaries) or `pretty`.
pub const LOG_FORMAT: &str = "INDABA_LOG_FORMAT";
/// Log filter, `tracing_subscriber::EnvFilter` syntax. Default `info`.
pub const LOG: &str = "INDABA_LOG";
/// Delete messages older than this many days (default: keep forever). Clients resuming
/// past the retained range are told (`sync_complete.truncated`).
pub const MESSAGE_RETENTION_DAYS: &str = "INDABA_MESSAGE_RETENTION_DAYS";
/// Attachments: the directory of the local storage backend (the single-node program's
/// default: `<INDABA_DATA_DIR>/uploads`). The gateway serves its signed URLs itself.
pub const STORAGE_DIR: &str = "INDABA_STORAGE_DIR";
/// Attachments in S3-compatible object storage: the bucket (setting it selects S3).
pub const S3_BUCKET: &str = "INDABA_S3_BUCKET";
/// The S3 API endpoint message-service talks to (default `https://s3.<region>.amazonaws.com`).
pub const S3_ENDPOINT: &str = "INDABA_S3_ENDPOINT";
/// The endpoint clients' presigned URLs name, when they reach storage by another address
/// than message-service does (default: `INDABA_S3_ENDPOINT`).
pub const S3_PUBLIC_ENDPOINT: &str = "INDABA_S3_PUBLIC_ENDPOINT";
/// The bucket's region (default `us-east-1`; R2: `auto`).
pub const S3_REGION: &str = "INDABA_S3_REGION";
/// Credentials for S3 (required with `INDABA_S3_BUCKET`).
pub const S3_ACCESS_KEY_ID: &str = "INDABA_S3_ACCESS_KEY_ID";
pub const S3_SECRET_ACCESS_KEY: &str = "INDABA_S3_SECRET_ACCESS_KEY";
/// Path-style URLs (`endpoint/bucket/key`) instead of virtual-host ones (default true with
/// a custom endpoint, as MinIO and most S3-compatible servers want; false for AWS).
pub const S3_PATH_STYLE: &str = "INDABA_S3_PATH_STYLE";
/// The largest upload accepted, in bytes (default 25 MiB).
pub const MAX_UPLOAD_BYTES: &str = "INDABA_MAX_UPLOAD_BYTES";
/// Comma-separated declared types an upload may have (`image/*` style prefixes allowed;
/// default: images, audio, video, PDF and `application/octet-stream`).
pub const UPLOAD_ALLOWED_TYPES: &str = "INDABA_UPLOAD_ALLOWED_TYPES";
/// How long an upload URL is valid, in seconds (default 900).
pub const UPLOAD_URL_TTL_SECS: &str = "INDABA_UPLOAD_URL_TTL_SECS";
/// Milliseconds of image and audio processing per second one message-service may spend
/// (default 500, at most 1000).
pub const MEDIA_CPU_MS_PER_SEC: &str = "INDABA_MEDIA_CPU_MS_PER_SEC";
/// Bytes one user may upload per 24 hours (default 500 MiB).
pub const UPLOAD_DAILY_QUOTA_BYTES: &str = "INDABA_UPLOAD_DAILY_QUOTA_BYTES";

/// Size of the PostgreSQL/SQLite connection pool. Default 16 (PostgreSQL), 4 (SQLite).
pub const DB_POOL_SIZE: &str = "INDABA_DB_POOL_SIZE";

/// Reads an optional integer setting through `get` (the environment, or a map in tests):
/// `default` when absent, an error naming the variable when it is not an integer of at
/// least `min`. Every service parses its numbers this one way.
pub fn integer<T>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
    min: T,
) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match get(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(format!("{key} must be an integer >= {min}, got {v:?}")),
        },
    }
}

/// `true`: a gRPC server with no API key may listen beyond loopback (development only;
/// logged loudly). Default false: such a server refuses to start.
pub const GRPC_INSECURE: &str = "INDABA_GRPC_INSECURE";

/// Whether a secret is one of the example values shipped in `deploy/` and `k8s/`
/// (`CHANGE-ME…`, `PLACEHOLDER…`): an unedited deployment must not run with a public secret.
pub fn is_placeholder(secret: &str) -> bool {
    let s = secret.to_ascii_lowercase();
    s.contains("change-me") || s.contains("changeme") || s.contains("placeholder")
}

/// Reads [`JETSTREAM_REPLICAS`]: 1 to 5 (JetStream's own limit), default 1.
pub fn jetstream_replicas(get: &impl Fn(&str) -> Option<String>) -> Result<usize, String> {
    let n = integer(get, JETSTREAM_REPLICAS, 1usize, 1)?;
    if n > 5 {
        return Err(format!("{JETSTREAM_REPLICAS} must be 1 to 5, got {n}"));
    }
    Ok(n)
}

/// Reads an optional boolean setting through `get`: `default` when absent or empty,
/// `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (any case), otherwise an error naming the
/// variable. Every service parses its switches this one way.
pub fn flag(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: bool,
) -> Result<bool, String> {
    match get(key).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(format!("{key} must be true or false, got {v:?}")),
    }
}

/// push-service: messages to a user in one conversation within this many ms make one
/// notification (default 10000).
pub const PUSH_COLLAPSE_MS: &str = "INDABA_PUSH_COLLAPSE_MS";
/// push-service: no push for a user active on any device within this many seconds (default 60).
pub const PUSH_SUPPRESS_ACTIVE_SECS: &str = "INDABA_PUSH_SUPPRESS_ACTIVE_SECS";
/// push-service: retry rounds before a notification is dead-lettered (default 8).
pub const PUSH_MAX_ATTEMPTS: &str = "INDABA_PUSH_MAX_ATTEMPTS";
/// push-service: first retry delay in ms, doubled per round with full jitter (default 1000).
pub const PUSH_RETRY_BASE_MS: &str = "INDABA_PUSH_RETRY_BASE_MS";
/// push-service: seconds a claimed notification batch belongs to one instance (default 30).
pub const PUSH_LEASE_SECS: &str = "INDABA_PUSH_LEASE_SECS";
/// push-service: `true` hides message text in notifications unless a user chose otherwise.
pub const PUSH_HIDE_TEXT: &str = "INDABA_PUSH_HIDE_TEXT";
/// FCM: path of the Google service-account key (JSON).
pub const FCM_SERVICE_ACCOUNT_FILE: &str = "INDABA_FCM_SERVICE_ACCOUNT_FILE";
/// FCM: API base URL (default `https://fcm.googleapis.com`).
pub const FCM_BASE_URL: &str = "INDABA_FCM_BASE_URL";
/// APNs: path of the `.p8` signing key.
pub const APNS_KEY_FILE: &str = "INDABA_APNS_KEY_FILE";
/// APNs: the key's id.
pub const APNS_KEY_ID: &str = "INDABA_APNS_KEY_ID";
/// APNs: the team id.
pub const APNS_TEAM_ID: &str = "INDABA_APNS_TEAM_ID";
/// APNs: the app's bundle id (`apns-topic`).
pub const APNS_TOPIC: &str = "INDABA_APNS_TOPIC";
/// APNs: API base URL (default `https://api.push.apple.com`; sandbox: `https://api.sandbox.push.apple.com`).
pub const APNS_BASE_URL: &str = "INDABA_APNS_BASE_URL";
/// Web Push: the VAPID private key (PKCS#8 PEM or base64url scalar).
pub const VAPID_PRIVATE_KEY: &str = "INDABA_VAPID_PRIVATE_KEY";
/// Web Push: the VAPID contact (`mailto:` or `https:` URL).
pub const VAPID_SUBJECT: &str = "INDABA_VAPID_SUBJECT";
/// Webhooks: the HMAC-SHA256 signing secret (≥ 16 characters).
pub const WEBHOOK_SECRET: &str = "INDABA_WEBHOOK_SECRET";
/// Deprecated alias of [`OUTBOUND_ALLOW_PRIVATE`] (push-service reads either; it now also
/// allows loopback and private addresses).
pub const PUSH_ALLOW_HTTP: &str = "INDABA_PUSH_ALLOW_HTTP";
/// `true` (development and tests only): every outbound target a user chooses (push webhooks,
/// Web Push endpoints, and later hooks) may be `http://`, on any port, and on loopback or
/// private addresses. Default false: `https://` on 443 to public addresses only.
pub const OUTBOUND_ALLOW_PRIVATE: &str = "INDABA_OUTBOUND_ALLOW_PRIVATE";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetstream_replicas_are_1_to_5() {
        let get = |v: &'static str| move |k: &str| (k == JETSTREAM_REPLICAS).then(|| v.to_owned());
        assert_eq!(jetstream_replicas(&|_: &str| None), Ok(1));
        assert_eq!(jetstream_replicas(&get("3")), Ok(3));
        assert!(jetstream_replicas(&get("0")).is_err());
        assert!(jetstream_replicas(&get("7"))
            .unwrap_err()
            .contains(JETSTREAM_REPLICAS));
    }

    #[test]
    fn integer_settings() {
        let get = |k: &str| (k == "A").then(|| "7".to_owned());
        assert_eq!(integer(&get, "A", 1u32, 1), Ok(7));
        assert_eq!(integer(&get, "B", 3u32, 1), Ok(3));
        assert!(integer(&get, "A", 1u32, 8)
            .unwrap_err()
            .contains("A must be"));
        let bad = |_: &str| Some("lots".to_owned());
        assert!(integer(&bad, "A", 1u64, 0).is_err());
        assert_eq!(
            flag(&bad, "B", true).unwrap_err(),
            "B must be true or false, got \"lots\""
        );
        let on = |_: &str| Some(" YES ".to_owned());
        assert_eq!(flag(&on, "B", false), Ok(true));
        let none = |_: &str| None;
        assert_eq!(flag(&none, "B", true), Ok(true));
    }
}
