//! The single-node program: the same gateway, message-service and presence-service code as
//! the distributed deployment, in one process, over [`bus::Bus::local`] and a SQLite file. Nothing else
//! to install.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gateway::auth::KeySource;

/// Name of the generated HS256 secret inside the data directory.
pub const SECRET_FILE: &str = "jwt-secret";
/// Name of the SQLite database inside the data directory.
pub const DB_FILE: &str = "indaba.db";
/// presence-service's own SQLite file (it shares no tables with message-service).
pub const PRESENCE_DB_FILE: &str = "presence.db";
/// push-service's own SQLite file: devices, mutes and the durable notification batches.
pub const PUSH_DB_FILE: &str = "push.db";
/// Attachments (the local storage backend), under the data directory.
pub const UPLOADS_DIR: &str = "uploads";

/// Single-node configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the database and generated secret live.
    pub data_dir: PathBuf,
    /// HTTP/WebSocket listen address.
    pub listen: SocketAddr,
    /// HS256 secret; `None` means use (or create) `<data_dir>/jwt-secret`.
    pub jwt_secret: Option<String>,
    /// Per-service knobs, applied to both services.
    pub max_text_chars: usize,
    /// Message retention (`None`: keep forever).
    pub retention: Option<std::time::Duration>,
    /// Serve the gRPC `MessageService` here (`INDABA_GRPC_LISTEN`; off when unset).
    pub grpc_listen: Option<SocketAddr>,
    /// Who may call it.
    pub grpc_keys: proto::grpc_auth::ApiKeys,
    /// Every other `INDABA_*` setting (gateway limits, push providers, …), applied exactly
    /// as the distributed services apply them.
    pub options: Options,
}

/// `INDABA_*` settings by name. Its `Debug` shows names only: values include secrets.
#[derive(Clone, Default)]
pub struct Options(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The demo web app (`clients/demo`, built and committed), served at `/`.
pub const DEMO_FILES: [gateway::settings::StaticFile; 3] = [
    gateway::settings::StaticFile {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../clients/demo/dist/index.html"),
    },
    gateway::settings::StaticFile {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../clients/demo/dist/app.js"),
    },
    gateway::settings::StaticFile {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../clients/demo/dist/app.css"),
    },
];

impl Settings {
    /// Reads `INDABA_DATA_DIR`, `INDABA_LISTEN`, `INDABA_JWT_SECRET`, `INDABA_MAX_TEXT_CHARS`.
    pub fn from_env() -> anyhow::Result<Settings> {
        use bus::config;
        use proto::env;
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let listen = config::addr(&get, env::LISTEN, "0.0.0.0:8000")?;
        let max_text_chars = config::integer(
            &get,
            env::MAX_TEXT_CHARS,
            proto::limits::DEFAULT_MAX_TEXT_CHARS,
            1,
        )?;
        let retention = message_service::settings::retention_from(&get)?;
        let grpc_listen = match get(env::GRPC_LISTEN) {
            Some(_) => Some(config::addr(&get, env::GRPC_LISTEN, "")?),
            None => None,
        };
        Ok(Settings {
            data_dir: PathBuf::from(get(env::DATA_DIR).unwrap_or_else(|| "./data".into())),
            listen,
            jwt_secret: get(env::JWT_SECRET),
            max_text_chars,
            retention,
            grpc_listen,
            grpc_keys: proto::grpc_auth::ApiKeys::from_source(&get).map_err(anyhow::Error::msg)?,
            options: Options(
                std::env::vars()
                    .filter(|(k, v)| k.starts_with("INDABA_") && !v.is_empty())
                    .collect(),
            ),
        })
    }
}

/// Returns the configured secret, or the one kept in the data directory (created on first
/// use, readable only by its owner).
pub fn load_or_create_secret(data_dir: &Path, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(s) = configured {
        anyhow::ensure!(
            s.len() >= 16,
            "{} must be at least 16 characters",
            proto::env::JWT_SECRET
        );
        anyhow::ensure!(
            !proto::env::is_placeholder(s),
            "{} is the placeholder from the examples: use a random secret",
            proto::env::JWT_SECRET
        );
        return Ok(s.to_owned());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let path = data_dir.join(SECRET_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        anyhow::ensure!(
            s.len() >= 16,
            "{} is too short; delete it to regenerate",
            path.display()
        );
        return Ok(s);
    }
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

/// message-service's settings for the single-node program: read from the same variables a
/// distributed message-service reads (`INDABA_MAX_GROUP_SIZE`, `INDABA_GROUP_COMMIT`,
/// `INDABA_PUSH_JOBS`, …), then over the in-process bus and the SQLite file, with the
/// listeners, keys, text limit and retention the single-node program decided itself.
pub fn message_settings(
    settings: &Settings,
    bus: bus::Bus,
) -> anyhow::Result<message_service::Settings> {
    use proto::env;
    let db = settings.data_dir.join(DB_FILE);
    let get = |k: &str| match k {
        // Required by the distributed reader; the store is replaced below.
        env::DATABASE_URL => Some(format!("sqlite://{}", db.display())),
        // Listeners are the single-node program's own (its operations port is the gateway's).
        env::GRPC_LISTEN | env::HTTP_LISTEN => None,
        k => settings.options.0.get(k).cloned(),
    };
    let mut s = message_service::Settings::from_source(get)?;
    s.store = message_service::StoreSettings::Sqlite(db);
    s.storage = storage_settings(settings)?;
    s.bus = message_service::BusSettings::Shared(bus);
    // SQLite has one writer: a small pool.
    s.pool_size = 4;
    s.max_text_chars = settings.max_text_chars;
    s.retention = settings.retention;
    s.grpc_listen = settings.grpc_listen;
    s.grpc_keys = settings.grpc_keys.clone();
    s.http_listen = None;
    // No JetStream in process; no fault injection outside the cluster tests.
    s.jetstream_replicas = 1;
    s.crash_after_commits = None;
    Ok(s)
}

/// Where the single-node program keeps attachments: S3 when `INDABA_S3_BUCKET` is set,
/// else `INDABA_STORAGE_DIR`, else `<data dir>/uploads` (nothing to install).
pub fn storage_settings(settings: &Settings) -> anyhow::Result<storage::StorageSettings> {
    let get = |k: &str| settings.options.0.get(k).cloned();
    Ok(storage::StorageSettings::from_source(
        &get,
        Some(&settings.data_dir.join(UPLOADS_DIR)),
    )?)
}

/// The assembled single-node server.
#[derive(Debug)]
pub struct SingleNode {
    gateway: gateway::App,
    messages: message_service::App,
    presence: presence_service::App,
    push: push_service::App,
    secret: String,
}

impl SingleNode {
    /// Opens the database, creates the in-process bus, builds both services.
    pub async fn build(settings: Settings) -> anyhow::Result<SingleNode> {
        let secret = load_or_create_secret(&settings.data_dir, settings.jwt_secret.as_deref())?;
        let bus = bus::Bus::local();
        let messages =
            message_service::App::build(message_settings(&settings, bus.clone())?).await?;
        let get = |k: &str| settings.options.0.get(k).cloned();
        let mut presence_settings =
            presence_service::Settings::new(presence_service::BusSettings::Shared(bus.clone()));
        presence_settings.store =
            presence_service::StoreSettings::Sqlite(settings.data_dir.join(PRESENCE_DB_FILE));
        presence_settings.apply_options(&get)?;
        let presence = presence_service::App::build(presence_settings).await?;
        let mut push_settings = push_service::Settings::new(
            push_service::BusSettings::Shared(bus.clone()),
            push_service::StoreSettings::Sqlite(settings.data_dir.join(PUSH_DB_FILE)),
        );
        push_settings.apply_common(&get)?;
        let push = push_service::App::build(push_settings).await?;
        let mut gw = gateway::Settings::new(
            KeySource::Hs256Secret(secret.clone()),
            gateway::BusSettings::Shared(bus),
        );
        // The same variables a distributed gateway reads (origins, limits, timings, …).
        gw.apply_options(&get)?;
        gw.listen = settings.listen;
        gw.gateway_id = "local".into();
        gw.max_text_chars = settings.max_text_chars;
        gw.static_files = DEMO_FILES.to_vec();
        // The gateway serves the local attachment directory's URLs (none with S3).
        gw.storage_dir = match storage_settings(&settings)? {
            storage::StorageSettings::Local { dir } => Some(dir),
            _ => None,
        };
        let gateway = gateway::App::build(gw).await?;
        Ok(SingleNode {
            gateway,
            messages,
            presence,
            push,
            secret,
        })
    }

    /// The bound HTTP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.gateway.local_addr()
    }

    /// Where the gRPC API listens, when configured.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.messages.grpc_addr()
    }

    /// The HS256 secret in use (to mint tokens).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// push-service's store (tests inspect it).
    pub fn push_store(&self) -> push_service::Store {
        self.push.store()
    }

    /// The message store (tests inspect it).
    pub fn store(&self) -> message_service::Store {
        self.messages.store()
    }

    /// Serves until `shutdown` resolves: the gateway drains first, then message-service.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        // Cancelled when the gateway has drained, or when this returns early (the guard).
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop_on_return = stop.clone().drop_guard();
        let messages = tokio::spawn(self.messages.run(stop.clone().cancelled_owned()));
        let presence = tokio::spawn(self.presence.run(stop.clone().cancelled_owned()));
        let push = tokio::spawn(self.push.run(stop.clone().cancelled_owned()));
        self.gateway.run(shutdown).await?;
        stop.cancel();
        messages.await??;
        presence.await??;
        push.await??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(options: &[(&str, &str)]) -> Settings {
        Settings {
            data_dir: PathBuf::from("/nonexistent"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            jwt_secret: None,
            max_text_chars: 100,
            retention: None,
            grpc_listen: None,
            grpc_keys: Default::default(),
            options: Options(
                options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn message_service_reads_the_same_variables_as_a_distributed_one() {
        let s = message_settings(&with(&[]), bus::Bus::local()).unwrap();
        assert_eq!(s.max_group_size, proto::limits::DEFAULT_MAX_GROUP_SIZE);
        assert!(s.group_commit && s.push_jobs);
        assert!(
            matches!(s.store, message_service::StoreSettings::Sqlite(ref p) if p.ends_with(DB_FILE))
        );
        assert_eq!((s.grpc_listen, s.http_listen, s.pool_size), (None, None, 4));
        let s = message_settings(
            &with(&[
                ("INDABA_MAX_GROUP_SIZE", "3"),
                ("INDABA_GROUP_COMMIT", "false"),
                ("INDABA_DB_POOL_SIZE", "64"),
            ]),
            bus::Bus::local(),
        )
        .unwrap();
        assert_eq!(s.max_group_size, 3);
        assert!(!s.group_commit);
        assert_eq!(s.pool_size, 4);
        let e = message_settings(&with(&[("INDABA_MAX_GROUP_SIZE", "0")]), bus::Bus::local());
        assert!(e.unwrap_err().to_string().contains("INDABA_MAX_GROUP_SIZE"));
    }
}
