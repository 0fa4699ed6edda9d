//! Gateway configuration, read in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bus::config;
use proto::env;

use crate::auth::KeySource;

pub use bus::config::{BusSettings, ConfigError};

/// Whose presence a user may see (`INDABA_PRESENCE_VISIBILITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceVisibility {
    /// Only users who share a conversation with them (default): a stranger's id tells
    /// nothing about when they are online.
    Shared,
    /// Anyone's.
    Everyone,
}

/// Everything the gateway needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on (`INDABA_LISTEN`); port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// How client JWTs are verified.
    pub jwt: KeySource,
    /// Clock skew allowed on `exp`/`nbf`.
    pub jwt_leeway: Duration,
    /// The bus.
    pub bus: BusSettings,
    /// This instance's id: names its delivery subject, prefixes its connection ids.
    pub gateway_id: String,
    /// Maximum message text length (characters); checked here to fail fast, and again by
    /// message-service.
    pub max_text_chars: usize,
    /// Largest WebSocket message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Frames queued per socket before the client counts as a slow consumer and is closed.
    pub outbound_queue: usize,
    /// Bytes one socket may have queued before it counts as a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Kernel send buffer per accepted socket (`SO_SNDBUF`); `None`: the kernel autotunes
    /// (up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default).
    pub socket_send_buffer: Option<usize>,
    /// How often the full socket list is announced to the routing tables.
    pub heartbeat_interval: Duration,
    /// How long to wait for message-service before telling the client `unavailable`.
    pub request_timeout: Duration,
    /// Send the sends that queue while earlier ones are in flight as one request
    /// (`INDABA_SEND_BATCHES`, default true; see `send_queue`).
    pub send_batches: bool,
    /// Past this wait in the send queue, sends are refused with `unavailable` and a retry
    /// hint (`INDABA_SEND_QUEUE_BUDGET_MS`, default 250; `None`: never).
    pub send_queue_budget: Option<Duration>,
    /// Time allowed to send a complete HTTP request head (slowloris guard).
    pub header_timeout: Duration,
    /// A socket with no client frame for this long counts as away (presence).
    pub idle_away: Duration,
    /// Browser origins allowed to open sockets; empty means any.
    pub allowed_origins: Vec<String>,
    /// Chat messages per user per 10 s on this gateway.
    pub chat_rate_per_10s: u32,
    /// Whose presence a user may see.
    pub presence_visibility: PresenceVisibility,
    /// REST requests and event-stream opens per user per 10 s on this gateway (0: no limit).
    pub rest_rate_per_10s: u32,
    /// Conversations a user may create per minute on this gateway (0: no limit).
    pub conversation_create_rate_per_min: u32,
    /// The claim naming a token's type, and the only type accepted when it is present
    /// (SimpleJWT: `token_type`, `access`).
    pub jwt_token_type: (String, String),
    /// Server ping interval; a socket that answers none of two pings is closed.
    pub ping_interval: Duration,
    /// Most sockets per user across all gateways.
    pub max_connections_per_user: u32,
    /// On shutdown, sockets are closed in batches spread over this window.
    pub drain_window: Duration,
    /// Open TCP connections allowed per client address (0: no limit); trusted proxies are
    /// not counted.
    pub max_connections_per_ip: u32,
    /// Time allowed for a request body to arrive completely (slow-body guard).
    pub body_timeout: Duration,
    /// WebSocket/SSE connection attempts allowed per client address per 10 s (0: no limit).
    pub connect_rate_per_ip_10s: u32,
    /// Load balancers whose `X-Forwarded-For` is believed: the client address is the
    /// rightmost address in that header not itself a trusted proxy.
    pub trusted_proxies: Vec<crate::limits::IpNet>,
    /// How long a socket opened without a token has to send `authenticate`.
    pub auth_timeout: Duration,
    /// Required `iss` of client tokens (`INDABA_JWT_ISSUER`), if any.
    pub jwt_issuer: Option<String>,
    /// Required `aud` of client tokens (`INDABA_JWT_AUDIENCE`), if any.
    pub jwt_audience: Option<String>,
    /// Serve `GET /api/v1/dev/token/?user_id=N` (HS256 only). Development only: anyone who
    /// reaches the port can act as any user.
    pub dev_tokens: bool,
    /// Files served at `/<name>` (`index.html` also at `/`): the single-node program's demo.
    pub static_files: Vec<StaticFile>,
    /// The local attachment directory whose signed URLs this gateway serves
    /// (`/api/v1/blobs/…`; `INDABA_STORAGE_DIR` when no S3 bucket is set). `None`: none.
    pub storage_dir: Option<PathBuf>,
}

/// A file compiled into the program and served over HTTP.
#[derive(Debug, Clone, Copy)]
pub struct StaticFile {
    /// Path without the leading `/`.
    pub name: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Contents.
    pub body: &'static [u8],
}

impl Settings {
    /// Defaults for everything but the key and the bus.
    pub fn new(jwt: KeySource, bus: BusSettings) -> Settings {
        Settings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            jwt,
            jwt_leeway: Duration::from_secs(30),
            bus,
            gateway_id: random_id(),
            max_text_chars: proto::limits::DEFAULT_MAX_TEXT_CHARS,
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 1 << 20,
            socket_send_buffer: None,
            heartbeat_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            send_batches: true,
            send_queue_budget: Some(Duration::from_millis(250)),
            header_timeout: Duration::from_secs(10),
            idle_away: Duration::from_secs(300),
            allowed_origins: Vec::new(),
            chat_rate_per_10s: 30,
            presence_visibility: PresenceVisibility::Shared,
            rest_rate_per_10s: 100,
            conversation_create_rate_per_min: 20,
            jwt_token_type: (
                crate::auth::DEFAULT_TOKEN_TYPE_CLAIM.to_owned(),
                crate::auth::DEFAULT_ACCESS_TOKEN_TYPE.to_owned(),
            ),
            ping_interval: Duration::from_secs(25),
            max_connections_per_user: 10,
            drain_window: Duration::from_secs(10),
            dev_tokens: false,
            static_files: Vec::new(),
            storage_dir: None,
            jwt_issuer: None,
            jwt_audience: None,
            auth_timeout: Duration::from_secs(5),
            connect_rate_per_ip_10s: 300,
            max_connections_per_ip: 256,
            body_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
        }
    }

    /// Reads the distributed-mode settings from the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_source(|k| std::env::var(k).ok())
    }

    /// Reads settings from any key → value source (tests pass a map).
    pub fn from_source(get: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let jwt = match (get(env::JWT_PUBLIC_KEY_FILE), get(env::JWT_SECRET)) {
            (Some(path), _) => KeySource::Rs256PublicKeyFile(PathBuf::from(path)),
            (None, Some(secret)) if env::is_placeholder(&secret) => {
                return Err(ConfigError(format!(
                    "{} is the placeholder from the examples: use your auth system's secret",
                    env::JWT_SECRET
                )))
            }
            (None, Some(secret)) if secret.len() >= 16 => KeySource::Hs256Secret(secret),
            (None, Some(_)) => {
                return Err(ConfigError(format!(
                    "{} must be at least 16 characters",
                    env::JWT_SECRET
                )))
            }
            (None, None) => {
                return Err(ConfigError(format!(
                    "set {} (HS256) or {} (RS256)",
                    env::JWT_SECRET,
                    env::JWT_PUBLIC_KEY_FILE
                )))
            }
        };
        let mut s = Settings::new(jwt, BusSettings::nats_from(&get));
        s.apply_options(&get)?;
        Ok(s)
    }

    /// Applies every optional setting found in `get` (all but the key and the bus), so the
    /// single-node program honours exactly the same variables as a gateway.
    pub fn apply_options(
        &mut self,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let s = self;
        if let storage::StorageSettings::Local { dir } =
            storage::StorageSettings::from_source(get, None)?
        {
            s.storage_dir = Some(dir);
        }
        if let Some(l) = get(env::LISTEN) {
            s.listen = l.parse().map_err(|_| {
                ConfigError(format!("{} must be host:port, got {l:?}", env::LISTEN))
            })?;
        }
        if let Some(id) = get(env::GATEWAY_ID) {
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError(format!(
                    "{} may only contain letters, digits, '-' and '_'",
                    env::GATEWAY_ID
                )));
            }
            s.gateway_id = id;
        }
        let int = |key: &str, default: u64, min: u64| config::integer(get, key, default, min);
        s.jwt_leeway = Duration::from_secs(int(env::JWT_LEEWAY_SECS, s.jwt_leeway.as_secs(), 0)?);
        s.heartbeat_interval = Duration::from_millis(int(env::GATEWAY_HEARTBEAT_MS, 10_000, 100)?);
        s.idle_away = Duration::from_secs(int(env::IDLE_AWAY_SECS, s.idle_away.as_secs(), 1)?);
        s.ping_interval =
            Duration::from_secs(int(env::PING_INTERVAL_SECS, s.ping_interval.as_secs(), 1)?);
        s.drain_window = Duration::from_secs(int(env::DRAIN_SECS, s.drain_window.as_secs(), 0)?);
        s.outbound_queue = config::integer(get, env::OUTBOUND_QUEUE, s.outbound_queue, 16)?;
        s.outbound_queue_bytes = config::integer(
            get,
            env::OUTBOUND_QUEUE_BYTES,
            s.outbound_queue_bytes,
            65_536,
        )?;
        s.chat_rate_per_10s = config::integer(get, env::CHAT_RATE_PER_10S, s.chat_rate_per_10s, 1)?;
        s.send_batches = config::flag(get, env::SEND_BATCHES, s.send_batches)?;
        let budget_ms = int(env::SEND_QUEUE_BUDGET_MS, 250, 0)?;
        s.send_queue_budget = (budget_ms > 0).then(|| Duration::from_millis(budget_ms));
        s.rest_rate_per_10s = config::integer(get, env::REST_RATE_PER_10S, s.rest_rate_per_10s, 0)?;
        s.presence_visibility = match get(env::PRESENCE_VISIBILITY).as_deref().map(str::trim) {
            None | Some("") | Some("shared") => PresenceVisibility::Shared,
            Some("everyone") => PresenceVisibility::Everyone,
            Some(other) => {
                return Err(ConfigError(format!(
                    "{} must be shared or everyone, got {other:?}",
                    env::PRESENCE_VISIBILITY
                )))
            }
        };
        s.conversation_create_rate_per_min = config::integer(
            get,
            env::CONVERSATION_CREATE_RATE_PER_MIN,
            s.conversation_create_rate_per_min,
            0,
        )?;
        if let Some(claim) = get(env::JWT_TOKEN_TYPE_CLAIM).filter(|c| !c.is_empty()) {
            s.jwt_token_type.0 = claim;
        }
        if let Some(t) = get(env::JWT_ACCESS_TOKEN_TYPE).filter(|t| !t.is_empty()) {
            s.jwt_token_type.1 = t;
        }
        s.max_connections_per_user = config::integer(
            get,
            env::MAX_CONNECTIONS_PER_USER,
            s.max_connections_per_user,
            1,
        )?;
        s.max_text_chars = config::integer(get, env::MAX_TEXT_CHARS, s.max_text_chars, 1)?;
        if get(env::SOCKET_SEND_BUFFER).is_some() {
            s.socket_send_buffer = Some(config::integer(get, env::SOCKET_SEND_BUFFER, 0, 4096)?);
        }
        if let Some(v) = get(env::ALLOWED_ORIGINS) {
            s.allowed_origins = v
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
        s.dev_tokens = config::flag(get, env::DEV_TOKENS, false)?;
        s.auth_timeout = Duration::from_secs(int(env::AUTH_TIMEOUT_SECS, 5, 1)?);
        s.connect_rate_per_ip_10s = config::integer(
            get,
            env::CONNECT_RATE_PER_IP_10S,
            s.connect_rate_per_ip_10s,
            0,
        )?;
        s.max_connections_per_ip = config::integer(
            get,
            env::MAX_CONNECTIONS_PER_IP,
            s.max_connections_per_ip,
            0,
        )?;
        s.body_timeout = Duration::from_secs(int(env::BODY_TIMEOUT_SECS, 10, 1)?);
        if let Some(v) = get(env::TRUSTED_PROXIES) {
            s.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse().map_err(|_| {
                        ConfigError(format!(
                            "{} must list IP addresses or CIDR networks, got {p:?}",
                            env::TRUSTED_PROXIES
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        s.jwt_issuer = get(env::JWT_ISSUER).filter(|v| !v.trim().is_empty());
        s.jwt_audience = get(env::JWT_AUDIENCE).filter(|v| !v.trim().is_empty());
        Ok(())
    }
}

/// A random gateway id, for instances without a configured one.
pub fn random_id() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("gw-{n:012x}").chars().take(15).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_source(bus::config::source(pairs))
    }

    #[test]
    fn key_is_required_and_values_are_checked() {
        assert!(from(&[]).unwrap_err().0.contains("INDABA_JWT_SECRET"));
        assert!(from(&[("INDABA_JWT_SECRET", "short")]).is_err());
        let ok = from(&[("INDABA_JWT_SECRET", "0123456789abcdef")]).unwrap();
        assert_eq!(ok.listen.port(), 8000);
        let e = from(&[
            ("INDABA_JWT_SECRET", "0123456789abcdef"),
            ("INDABA_LISTEN", "nope"),
        ]);
        assert!(e.unwrap_err().0.contains("INDABA_LISTEN"));
        let e = from(&[
            ("INDABA_JWT_SECRET", "0123456789abcdef"),
            ("INDABA_GATEWAY_ID", "a.b"),
        ]);
        assert!(e.is_err());
    }

    #[test]
    fn outbound_limits_are_read_and_checked() {
        let key = ("INDABA_JWT_SECRET", "0123456789abcdef");
        let d = from(&[key]).unwrap();
        assert_eq!((d.outbound_queue, d.outbound_queue_bytes), (1024, 1 << 20));
        assert_eq!(d.socket_send_buffer, None);
        let s = from(&[
            key,
            ("INDABA_OUTBOUND_QUEUE", "64"),
            ("INDABA_OUTBOUND_QUEUE_BYTES", "131072"),
            ("INDABA_SOCKET_SEND_BUFFER", "32768"),
        ])
        .unwrap();
        assert_eq!(s.outbound_queue, 64);
        assert_eq!(s.outbound_queue_bytes, 131_072);
        assert_eq!(s.socket_send_buffer, Some(32_768));
        for bad in [
            ("INDABA_OUTBOUND_QUEUE_BYTES", "1000"),
            ("INDABA_SOCKET_SEND_BUFFER", "lots"),
            ("INDABA_OUTBOUND_QUEUE", "0"),
        ] {
            let e = from(&[key, bad]).unwrap_err();
            assert!(e.0.contains(bad.0), "{e}");
        }
    }
}
