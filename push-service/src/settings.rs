//! push-service configuration, read in one place.

use std::net::SocketAddr;
use std::time::Duration;

use bus::config;
use proto::env;

use crate::providers::apns::ApnsConfig;

pub use bus::config::{BusSettings, ConfigError, StoreSettings};

/// Everything push-service needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bus.
    pub bus: BusSettings,
    /// Tables.
    pub store: StoreSettings,
    /// gRPC `PushService` (`None`: not served).
    pub grpc_listen: Option<SocketAddr>,
    /// Who may call it.
    pub grpc_keys: proto::grpc_auth::ApiKeys,
    /// Operations port.
    pub http_listen: Option<SocketAddr>,
    /// Messages to one user in one conversation within this window make one notification.
    pub collapse_window: Duration,
    /// No push for a user active on any device this recently.
    pub suppress_if_active_within: Duration,
    /// Hide message text unless the user chose otherwise.
    pub hide_text_default: bool,
    /// Rounds of retries before a notification is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (doubles each round, full jitter, capped at 5 minutes).
    pub retry_base: Duration,
    /// How long a claimed batch belongs to the instance sending it.
    pub lease: Duration,
    /// How often due batches are looked for.
    pub tick: Duration,
    /// FCM: the service-account key (JSON text) and an API base URL override.
    pub fcm: Option<(String, Option<String>)>,
    /// APNs.
    pub apns: Option<ApnsConfig>,
    /// Web Push: VAPID private key and subject.
    pub vapid: Option<(String, String)>,
    /// Webhooks: the signing secret.
    pub webhook: Option<String>,
    /// Development and tests only: webhook URLs and Web Push endpoints may be `http://`, on
    /// any port, and on loopback/private addresses (`INDABA_OUTBOUND_ALLOW_PRIVATE`, or its
    /// deprecated alias `INDABA_PUSH_ALLOW_HTTP`). See [`crate::outbound`].
    pub outbound_allow_private: bool,
    /// Replicas of the push queue's stream when push-service creates it
    /// (`INDABA_JETSTREAM_REPLICAS`, default 1).
    pub jetstream_replicas: usize,
}

impl Settings {
    /// Defaults for the given bus and store (no provider configured).
    pub fn new(bus: BusSettings, store: StoreSettings) -> Settings {
        Settings {
            bus,
            store,
            grpc_listen: None,
            grpc_keys: Default::default(),
            http_listen: None,
            collapse_window: Duration::from_secs(10),
            suppress_if_active_within: Duration::from_secs(60),
            hide_text_default: false,
            max_attempts: 8,
            retry_base: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            tick: Duration::from_millis(250),
            fcm: None,
            apns: None,
            vapid: None,
            webhook: None,
            outbound_allow_private: false,
            jetstream_replicas: 1,
        }
    }

    /// Reads the distributed-mode settings from the environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_source(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads settings from any key → value source.
    pub fn from_source(get: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let db = config::required(&get, env::DATABASE_URL)?;
        let mut s = Settings::new(BusSettings::nats_from(&get), StoreSettings::Postgres(db));
        s.grpc_listen = Some(config::addr(&get, env::GRPC_LISTEN, "0.0.0.0:50053")?);
        s.http_listen = Some(config::addr(&get, env::HTTP_LISTEN, "0.0.0.0:9092")?);
        s.grpc_keys = proto::grpc_auth::ApiKeys::from_source(&get).map_err(ConfigError)?;
        s.jetstream_replicas = env::jetstream_replicas(&get).map_err(ConfigError)?;
        s.apply_common(&get)?;
        Ok(s)
    }

    /// The settings shared with the single-node program: timings and providers.
    pub fn apply_common(
        &mut self,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let int = |key: &str, default: u64, min: u64| config::integer(get, key, default, min);
        self.collapse_window = Duration::from_millis(int(env::PUSH_COLLAPSE_MS, 10_000, 0)?);
        self.suppress_if_active_within =
            Duration::from_secs(int(env::PUSH_SUPPRESS_ACTIVE_SECS, 60, 0)?);
        self.max_attempts = u32::try_from(int(env::PUSH_MAX_ATTEMPTS, 8, 1)?).unwrap_or(8);
        self.retry_base = Duration::from_millis(int(env::PUSH_RETRY_BASE_MS, 1_000, 10)?);
        self.lease = Duration::from_secs(int(env::PUSH_LEASE_SECS, 30, 1)?);
        self.hide_text_default = config::flag(get, env::PUSH_HIDE_TEXT, false)?;
        let read = |key: &str| -> Result<Option<String>, ConfigError> {
            match get(key) {
                None => Ok(None),
                Some(path) => std::fs::read_to_string(&path)
                    .map(Some)
                    .map_err(|e| ConfigError(format!("{key}: cannot read {path:?}: {e}"))),
            }
        };
        if let Some(json) = read(env::FCM_SERVICE_ACCOUNT_FILE)? {
            self.fcm = Some((json, get(env::FCM_BASE_URL)));
        }
        if let Some(key_pem) = read(env::APNS_KEY_FILE)? {
            let need = |k: &str| {
                get(k).ok_or_else(|| {
                    ConfigError(format!("{k} is required with {}", env::APNS_KEY_FILE))
                })
            };
            self.apns = Some(ApnsConfig {
                key_pem,
                key_id: need(env::APNS_KEY_ID)?,
                team_id: need(env::APNS_TEAM_ID)?,
                topic: need(env::APNS_TOPIC)?,
                base_url: get(env::APNS_BASE_URL),
            });
        }
        if let Some(key) = get(env::VAPID_PRIVATE_KEY) {
            let subject = get(env::VAPID_SUBJECT).ok_or_else(|| {
                ConfigError(format!(
                    "{} is required with {}",
                    env::VAPID_SUBJECT,
                    env::VAPID_PRIVATE_KEY
                ))
            })?;
            self.vapid = Some((key, subject));
        }
        self.webhook = get(env::WEBHOOK_SECRET);
        let deprecated_alias = config::flag(get, env::PUSH_ALLOW_HTTP, false)?;
        self.outbound_allow_private =
            config::flag(get, env::OUTBOUND_ALLOW_PRIVATE, false)? || deprecated_alias;
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
    fn values_are_checked_and_name_the_variable() {
        assert!(from(&[]).unwrap_err().0.contains("DATABASE_URL"));
        let db = ("DATABASE_URL", "postgres://x/y");
        let s = from(&[db]).unwrap();
        assert_eq!(s.collapse_window, Duration::from_secs(10));
        assert!(s.fcm.is_none() && s.apns.is_none() && s.vapid.is_none());
        for (k, v) in [
            ("INDABA_PUSH_COLLAPSE_MS", "soon"),
            ("INDABA_PUSH_MAX_ATTEMPTS", "0"),
            ("INDABA_PUSH_HIDE_TEXT", "maybe"),
            ("INDABA_FCM_SERVICE_ACCOUNT_FILE", "/no/such/file.json"),
            ("INDABA_VAPID_PRIVATE_KEY", "abc"),
            ("INDABA_GRPC_LISTEN", "nowhere"),
        ] {
            let e = from(&[db, (k, v)]).unwrap_err();
            assert!(e.0.contains(k) || e.0.contains("VAPID_SUBJECT"), "{k}: {e}");
        }
    }
}
