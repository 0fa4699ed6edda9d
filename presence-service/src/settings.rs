//! presence-service configuration, read in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bus::config;
use proto::env;

pub use bus::config::{BusSettings, ConfigError};

/// Where `last_seen` is kept. Unlike the other services' [`bus::config::StoreSettings`],
/// presence can run without a database: its state is soft, only `last_seen` is lost.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// Nowhere durable (a warning is logged).
    Memory,
    /// PostgreSQL URL.
    Postgres(String),
    /// SQLite file.
    Sqlite(PathBuf),
}

/// presence-service configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The bus.
    pub bus: BusSettings,
    /// Offline only after the last socket has been gone this long
    /// (`INDABA_PRESENCE_GRACE_SECS`, default 5 s).
    pub grace: Duration,
    /// After start, learn silently this long (default 3 s) while gateways report in.
    pub warmup: Duration,
    /// How often timers are evaluated (default 250 ms).
    pub tick: Duration,
    /// Durable `last_seen` (`DATABASE_URL`; absent: memory only).
    pub store: StoreSettings,
    /// Where the gRPC `PresenceService` listens (`None`: not served).
    pub grpc_listen: Option<SocketAddr>,
    /// Who may call the gRPC API.
    pub grpc_keys: proto::grpc_auth::ApiKeys,
    /// Operations port (`/livez`, `/readyz`, `/metrics`); `None`: not served.
    pub http_listen: Option<SocketAddr>,
}

impl Settings {
    /// Defaults with the given bus.
    pub fn new(bus: BusSettings) -> Settings {
        Settings {
            bus,
            grace: Duration::from_secs(5),
            warmup: Duration::from_secs(3),
            tick: Duration::from_millis(250),
            store: StoreSettings::Memory,
            grpc_listen: None,
            grpc_keys: proto::grpc_auth::ApiKeys::default(),
            http_listen: None,
        }
    }

    /// Reads the distributed-mode settings from the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_source(|k| std::env::var(k).ok())
    }

    /// Reads settings from any key → value source (tests pass a map).
    pub fn from_source(get: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let mut s = Settings::new(BusSettings::nats_from(&get));
        if let Some(url) = get(env::DATABASE_URL) {
            s.store = StoreSettings::Postgres(url);
        }
        s.grpc_listen = Some(config::addr(&get, env::GRPC_LISTEN, "0.0.0.0:50052")?);
        s.grpc_keys = proto::grpc_auth::ApiKeys::from_source(&get).map_err(ConfigError)?;
        s.http_listen = Some(config::addr(&get, env::HTTP_LISTEN, "0.0.0.0:9091")?);
        s.apply_options(&get)?;
        Ok(s)
    }

    /// Applies the settings shared with the single-node program (all but the bus, the
    /// store and the listeners), so both honour the same variables.
    pub fn apply_options(
        &mut self,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let grace = config::integer(get, env::PRESENCE_GRACE_SECS, self.grace.as_secs(), 0)?;
        self.grace = Duration::from_secs(grace);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_source(bus::config::source(pairs))
    }

    #[test]
    fn defaults_need_no_variable() {
        let s = from(&[]).unwrap();
        assert_eq!(s.grace, Duration::from_secs(5));
        assert!(matches!(s.store, StoreSettings::Memory));
        assert!(matches!(&s.bus, BusSettings::Nats(url) if url == config::DEFAULT_NATS_URL));
        assert_eq!(s.grpc_listen.map(|a| a.port()), Some(50052));
        assert_eq!(s.http_listen.map(|a| a.port()), Some(9091));
    }

    #[test]
    fn values_are_read() {
        let s = from(&[
            ("NATS_URL", "nats://nats:4222"),
            ("DATABASE_URL", "postgres://x/y"),
            ("INDABA_PRESENCE_GRACE_SECS", "0"),
            ("INDABA_GRPC_LISTEN", "127.0.0.1:7000"),
            ("INDABA_HTTP_LISTEN", "127.0.0.1:7001"),
        ])
        .unwrap();
        assert!(matches!(&s.bus, BusSettings::Nats(url) if url == "nats://nats:4222"));
        assert!(matches!(&s.store, StoreSettings::Postgres(url) if url == "postgres://x/y"));
        assert_eq!(s.grace, Duration::ZERO);
        assert_eq!(s.grpc_listen.map(|a| a.port()), Some(7000));
        assert_eq!(s.http_listen.map(|a| a.port()), Some(7001));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("INDABA_PRESENCE_GRACE_SECS", "soon"),
            ("INDABA_GRPC_LISTEN", "nowhere"),
            ("INDABA_HTTP_LISTEN", "9091"),
        ] {
            let e = from(&[(k, v)]).unwrap_err();
            assert!(e.0.contains(k), "{k}: {e}");
        }
    }
}
