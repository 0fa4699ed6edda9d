//! message-service configuration, read in one place.

use bus::config;
use proto::env;

pub use bus::config::{BusSettings, ConfigError, StoreSettings};

/// Everything message-service needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Database.
    pub store: StoreSettings,
    /// Bus.
    pub bus: BusSettings,
    /// Database pool size.
    pub pool_size: u32,
    /// Maximum message length in characters.
    pub max_text_chars: usize,
    /// Maximum participants of a group.
    pub max_group_size: usize,
    /// How long after sending a user may edit a message (`INDABA_EDIT_WINDOW_SECS`, default
    /// 900; 0: `None`, no limit). System callers edit at any time.
    pub edit_window: Option<std::time::Duration>,
    /// How many requests one instance works on at once (bounds memory and DB pressure).
    pub max_in_flight: usize,
    /// Messages older than this are deleted; `None` keeps them forever.
    pub retention: Option<std::time::Duration>,
    /// Where the gRPC API listens; `None`: no gRPC server.
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// Who may call the gRPC API.
    pub grpc_keys: proto::grpc_auth::ApiKeys,
    /// Operations port (`/livez`, `/readyz`, `/metrics`); `None`: not served.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Enqueue a push job per committed message (`INDABA_PUSH_JOBS`, default true). Off
    /// only for deployments without push-service.
    pub push_jobs: bool,
    /// Commit the sends that arrive together in one transaction (`INDABA_GROUP_COMMIT`,
    /// default true; false: one transaction per message, for comparison).
    pub group_commit: bool,
    /// How long sends may wait for the group commit before new ones are refused with
    /// `unavailable` and a retry hint (`INDABA_SEND_QUEUE_BUDGET_MS`, default 250; `None`:
    /// never refused, they queue).
    pub send_queue_budget: Option<std::time::Duration>,
    /// Answer gateways' send batches (`indaba.v1.msg.send_batch`). Always true in a
    /// deployment; false is what a message-service of the release before batches does
    /// (the rolling-upgrade test runs one).
    pub send_batches: bool,
    /// Fault injection (`INDABA_TEST_CRASH_AFTER_COMMITS`): abort after this many commits of
    /// new messages, before answering or publishing them. `None` in every real deployment.
    pub crash_after_commits: Option<u64>,
    /// Replicas of the push queue's stream when message-service creates it
    /// (`INDABA_JETSTREAM_REPLICAS`, default 1).
    pub jetstream_replicas: usize,
    /// Where attachments live (`INDABA_S3_*`, `INDABA_STORAGE_DIR`; none: attachments are
    /// refused with `unsupported`).
    pub storage: storage::StorageSettings,
    /// What uploads may be.
    pub uploads: Uploads,
}

/// The limits on uploads.
#[derive(Debug, Clone)]
pub struct Uploads {
    /// `INDABA_MAX_UPLOAD_BYTES` (default 25 MiB).
    pub max_bytes: u64,
    /// `INDABA_UPLOAD_ALLOWED_TYPES`: exact types or `image/*`-style wildcards.
    pub allowed_types: Vec<String>,
    /// `INDABA_UPLOAD_DAILY_QUOTA_BYTES` per user per 24 hours (default 500 MiB).
    pub daily_quota_bytes: u64,
    /// How long a client has to send an upload's bytes (`INDABA_UPLOAD_URL_TTL_SECS`,
    /// default 15 minutes).
    pub url_ttl: std::time::Duration,
    /// Milliseconds of image and audio work per second one instance may spend
    /// (`INDABA_MEDIA_CPU_MS_PER_SEC`, default 500: half a core; photos wait past it, chat
    /// does not).
    pub media_cpu_ms_per_sec: u64,
    /// Images with more pixels are refused before decoding (50 megapixels: beyond any
    /// phone camera, far below a decompression bomb).
    pub max_image_pixels: u64,
}

/// The types an upload may declare by default: media, PDF, plain text, common office
/// documents and archives, and anything declared as `application/octet-stream` (the last
/// three are stored as downloads).
pub const DEFAULT_ALLOWED_TYPES: &str = "image/*,audio/*,video/*,application/pdf,text/plain,\
application/zip,application/msword,application/vnd.openxmlformats-officedocument.wordprocessingml.document,\
application/vnd.openxmlformats-officedocument.spreadsheetml.sheet,application/octet-stream";

impl Uploads {
    /// Reads the upload limits.
    pub fn from_source(get: &impl Fn(&str) -> Option<String>) -> Result<Uploads, ConfigError> {
        let allowed_types: Vec<String> = get(env::UPLOAD_ALLOWED_TYPES)
            .unwrap_or_else(|| DEFAULT_ALLOWED_TYPES.into())
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(bad) = allowed_types.iter().find(|t| !t.contains('/')) {
            return Err(ConfigError(format!(
                "{} entries must be types such as image/png or image/*, got {bad:?}",
                env::UPLOAD_ALLOWED_TYPES
            )));
        }
        Ok(Uploads {
            max_bytes: config::integer(get, env::MAX_UPLOAD_BYTES, 25 * 1024 * 1024, 1)?,
            allowed_types,
            daily_quota_bytes: config::integer(
                get,
                env::UPLOAD_DAILY_QUOTA_BYTES,
                500 * 1024 * 1024,
                0,
            )?,
            url_ttl: std::time::Duration::from_secs(config::integer(
                get,
                env::UPLOAD_URL_TTL_SECS,
                900,
                1,
            )?),
            media_cpu_ms_per_sec: config::integer(get, env::MEDIA_CPU_MS_PER_SEC, 500, 10)?
                .min(1000),
            max_image_pixels: 50_000_000,
        })
    }
}

impl Settings {
    /// Reads the distributed-mode settings from the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_source(|k| std::env::var(k).ok())
    }

    /// Reads settings from any key → value source (tests pass a map).
    pub fn from_source(get: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let database = config::required(&get, env::DATABASE_URL)?;
        Ok(Settings {
            store: StoreSettings::Postgres(database),
            bus: BusSettings::nats_from(&get),
            pool_size: parse(&get, env::DB_POOL_SIZE, 16)?,
            max_text_chars: parse(
                &get,
                env::MAX_TEXT_CHARS,
                proto::limits::DEFAULT_MAX_TEXT_CHARS,
            )?,
            max_group_size: parse(
                &get,
                env::MAX_GROUP_SIZE,
                proto::limits::DEFAULT_MAX_GROUP_SIZE,
            )?,
            edit_window: edit_window_from(&get)?,
            max_in_flight: 1024,
            retention: retention_from(&get)?,
            grpc_listen: Some(grpc_listen_from(&get, "0.0.0.0:50051")?),
            grpc_keys: proto::grpc_auth::ApiKeys::from_source(&get).map_err(ConfigError)?,
            http_listen: Some(addr_from(&get, env::HTTP_LISTEN, "0.0.0.0:9090")?),
            push_jobs: config::flag(&get, env::PUSH_JOBS, true)?,
            group_commit: config::flag(&get, env::GROUP_COMMIT, true)?,
            send_queue_budget: send_queue_budget_from(&get)?,
            send_batches: true,
            jetstream_replicas: env::jetstream_replicas(&get).map_err(ConfigError)?,
            storage: storage::StorageSettings::from_source(&get, None)?,
            uploads: Uploads::from_source(&get)?,
            crash_after_commits: match get(env::TEST_CRASH_AFTER_COMMITS) {
                None => None,
                Some(_) => Some(parse(&get, env::TEST_CRASH_AFTER_COMMITS, 1u64)?),
            },
        })
    }
}

/// Reads `INDABA_MESSAGE_RETENTION_DAYS` (absent: keep forever).
pub fn retention_from(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<std::time::Duration>, ConfigError> {
    if get(env::MESSAGE_RETENTION_DAYS).is_none() {
        return Ok(None);
    }
    let days: u64 = parse(get, env::MESSAGE_RETENTION_DAYS, 1)?;
    Ok(Some(std::time::Duration::from_secs(
        days.saturating_mul(86_400),
    )))
}

/// Reads `INDABA_EDIT_WINDOW_SECS` (default 900 s; 0: no limit).
pub fn edit_window_from(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let secs: u64 = config::integer(get, env::EDIT_WINDOW_SECS, 900, 0)?;
    Ok((secs > 0).then(|| std::time::Duration::from_secs(secs)))
}

/// Reads `INDABA_SEND_QUEUE_BUDGET_MS` (default 250 ms; 0: never refuse).
pub fn send_queue_budget_from(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let ms: u64 = config::integer(get, env::SEND_QUEUE_BUDGET_MS, 250, 0)?;
    Ok((ms > 0).then(|| std::time::Duration::from_millis(ms)))
}

/// Reads `INDABA_GRPC_LISTEN` (a socket address).
pub fn grpc_listen_from(
    get: &impl Fn(&str) -> Option<String>,
    default: &str,
) -> Result<std::net::SocketAddr, ConfigError> {
    addr_from(get, env::GRPC_LISTEN, default)
}

/// Reads a socket-address setting.
pub fn addr_from(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: &str,
) -> Result<std::net::SocketAddr, ConfigError> {
    config::addr(get, key, default)
}

/// Parses an optional positive number, naming the variable in the error.
pub fn parse<T>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + From<u8>,
{
    config::integer(get, key, default, T::from(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_source(|k| m.get(k).cloned())
    }

    #[test]
    fn requires_database_url_and_rejects_bad_numbers() {
        assert!(from(&[]).unwrap_err().0.contains("DATABASE_URL"));
        let s = from(&[("DATABASE_URL", "postgres://x/y")]).unwrap();
        assert_eq!(s.max_text_chars, 4000);
        let e = from(&[
            ("DATABASE_URL", "postgres://x"),
            ("INDABA_MAX_TEXT_CHARS", "lots"),
        ]);
        assert!(e.unwrap_err().0.contains("INDABA_MAX_TEXT_CHARS"));
        let e = from(&[
            ("DATABASE_URL", "postgres://x"),
            ("INDABA_MAX_GROUP_SIZE", "0"),
        ]);
        assert!(e.is_err());
    }
}
