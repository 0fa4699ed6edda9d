//! The settings every service reads alike: how it reaches the bus, where it keeps its
//! tables, and the error a bad value gives.
//!
//! Each service's `settings.rs` re-exports these under its own names
//! (`gateway::BusSettings`, `message_service::StoreSettings`, …) and reads its own
//! variables with the helpers below, so a bad value fails startup with the same kind of
//! message, naming the variable, whichever service reads it.

use std::net::SocketAddr;
use std::path::PathBuf;

use proto::env;

use crate::{Bus, BusError};

/// NATS URL used when `NATS_URL` is not set.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How a service reaches the bus.
#[derive(Debug, Clone)]
pub enum BusSettings {
    /// Connect to NATS (distributed deployment).
    Nats(NatsSettings),
    /// Use an already created bus (the single-node program's in-process bus).
    Shared(Bus),
}

/// Who a service is to NATS. At most one method; none when the server has no
/// authorization (development, tests).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// `NATS_USER` and `NATS_PASSWORD`.
    UserPassword {
        /// The user name.
        user: String,
        /// Its password.
        password: String,
    },
    /// `NATS_TOKEN`.
    Token(String),
    /// `NATS_NKEY_SEED_FILE`: a file holding an NKey seed (read when connecting).
    NKeySeedFile(PathBuf),
    /// `NATS_CREDS_FILE`: a `.creds` file, user JWT and seed (read when connecting).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, ***)"),
            NatsAuth::Token(_) => f.write_str("Token(***)"),
            NatsAuth::NKeySeedFile(p) => write!(f, "NKeySeedFile({p:?})"),
            NatsAuth::CredsFile(p) => write!(f, "CredsFile({p:?})"),
        }
    }
}

/// Where NATS is and how to reach it: servers, credentials, TLS, reply prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsSettings {
    /// One server URL or a comma-separated list (`NATS_URL`).
    pub url: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// CA certificate(s) (PEM) the server must present a chain to; set, TLS is required.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Reply-subject prefix (`NATS_INBOX_PREFIX`); `None`: async-nats's `_INBOX`. With
    /// per-service permissions (`crate::permissions`) each service has its own.
    pub inbox_prefix: Option<String>,
    /// A setting that cannot be used, found by [`BusSettings::nats_from`] (which cannot
    /// fail): connecting fails at start with this message, naming the variable.
    pub invalid: Option<String>,
    /// Messages a subscriber may hold before the client drops them (a slow-consumer event);
    /// 0: [`crate::SUBSCRIBER_CAPACITY`]. Tests set it small to provoke that event.
    pub subscription_capacity: usize,
}

impl NatsSettings {
    /// No credentials, no TLS beyond what the URL's scheme asks for.
    pub fn new(url: impl Into<String>) -> NatsSettings {
        NatsSettings {
            url: url.into(),
            ..NatsSettings::default()
        }
    }

    /// Reads `NATS_URL` and the credential and TLS settings (README, Configuration).
    pub fn from_source(get: &impl Fn(&str) -> Option<String>) -> Result<NatsSettings, ConfigError> {
        let val = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let path = |k: &str| val(k).map(PathBuf::from);
        let mut s =
            NatsSettings::new(val(env::NATS_URL).unwrap_or_else(|| DEFAULT_NATS_URL.into()));
        let mut methods = Vec::new();
        match (val(env::NATS_USER), val(env::NATS_PASSWORD)) {
            (Some(user), Some(password)) => {
                secret(env::NATS_PASSWORD, &password)?;
                methods.push(env::NATS_USER);
                s.auth = NatsAuth::UserPassword { user, password };
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError(format!(
                    "{} and {} go together",
                    env::NATS_USER,
                    env::NATS_PASSWORD
                )))
            }
        }
        if let Some(token) = val(env::NATS_TOKEN) {
            secret(env::NATS_TOKEN, &token)?;
            methods.push(env::NATS_TOKEN);
            s.auth = NatsAuth::Token(token);
        }
        if let Some(p) = path(env::NATS_NKEY_SEED_FILE) {
            methods.push(env::NATS_NKEY_SEED_FILE);
            s.auth = NatsAuth::NKeySeedFile(p);
        }
        if let Some(p) = path(env::NATS_CREDS_FILE) {
            methods.push(env::NATS_CREDS_FILE);
            s.auth = NatsAuth::CredsFile(p);
        }
        if methods.len() > 1 {
            return Err(ConfigError(format!(
                "set one NATS authentication method, not {}",
                methods.join(" and ")
            )));
        }
        s.ca_file = path(env::NATS_CA_FILE);
        s.client_cert = match (
            path(env::NATS_CLIENT_CERT_FILE),
            path(env::NATS_CLIENT_KEY_FILE),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError(format!(
                    "{} and {} go together",
                    env::NATS_CLIENT_CERT_FILE,
                    env::NATS_CLIENT_KEY_FILE
                )))
            }
        };
        if let Some(p) = val(env::NATS_INBOX_PREFIX) {
            let p = p.trim().to_owned();
            if p.contains(['*', '>', ' ']) || p.starts_with('.') || p.ends_with('.') {
                return Err(ConfigError(format!(
                    "{} must be a subject without wildcards, got {p:?}",
                    env::NATS_INBOX_PREFIX
                )));
            }
            s.inbox_prefix = Some(p);
        }
        Ok(s)
    }
}

/// A NATS secret may not be one of the shipped placeholders.
fn secret(key: &str, value: &str) -> Result<(), ConfigError> {
    if env::is_placeholder(value) {
        return Err(ConfigError(format!(
            "{key} is a placeholder from the examples: set a real secret"
        )));
    }
    Ok(())
}

impl From<String> for NatsSettings {
    fn from(url: String) -> NatsSettings {
        NatsSettings::new(url)
    }
}

impl From<&str> for NatsSettings {
    fn from(url: &str) -> NatsSettings {
        NatsSettings::new(url)
    }
}

/// Compares the server list, so `BusSettings::Nats(s) if s == "nats://…"` reads as before.
impl PartialEq<str> for NatsSettings {
    fn eq(&self, url: &str) -> bool {
        self.url == url
    }
}

impl BusSettings {
    /// NATS settings from `get` (`NATS_URL`, default local, and the credential and TLS
    /// settings). Never fails, so every service's settings reader stays simple: a bad value
    /// makes [`BusSettings::connect`] / [`Bus::connect_nats`] fail at start, naming the
    /// variable. [`NatsSettings::from_source`] reports it at once.
    pub fn nats_from(get: &impl Fn(&str) -> Option<String>) -> BusSettings {
        BusSettings::Nats(
            NatsSettings::from_source(get).unwrap_or_else(|e| NatsSettings {
                invalid: Some(e.0),
                ..NatsSettings::new(get(env::NATS_URL).unwrap_or_else(|| DEFAULT_NATS_URL.into()))
            }),
        )
    }

    /// The bus these settings name; `name` is the NATS client name servers show.
    pub async fn connect(&self, name: &str) -> Result<Bus, BusError> {
        match self {
            BusSettings::Nats(nats) => Bus::connect_nats(nats, name).await,
            BusSettings::Shared(b) => Ok(b.clone()),
        }
    }
}

/// Where a service keeps its tables.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// PostgreSQL URL (distributed deployment).
    Postgres(String),
    /// SQLite file (single-node program).
    Sqlite(PathBuf),
}

/// A configuration value that cannot be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// A socket-address setting (`host:port`, numeric host), or `default` when absent.
pub fn addr(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let v = get(key).unwrap_or_else(|| default.to_owned());
    v.parse().map_err(|_| {
        ConfigError(format!(
            "{key} must be host:port with a numeric host, got {v:?}"
        ))
    })
}

/// A key → value source over fixed pairs, for `Settings::from_source` in tests (and for
/// embedding a service without an environment).
pub fn source(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

/// An integer setting of at least `min`, or `default` when absent ([`env::integer`]).
pub fn integer<T>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
    min: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    env::integer(get, key, default, min).map_err(ConfigError)
}

/// A boolean setting, or `default` when absent ([`env::flag`]).
pub fn flag(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    env::flag(get, key, default).map_err(ConfigError)
}

/// A required setting that may not be blank.
pub fn required(get: &impl Fn(&str) -> Option<String>, key: &str) -> Result<String, ConfigError> {
    get(key)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| ConfigError(format!("{key} is required")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_variable() {
        let none = |_: &str| None;
        assert_eq!(addr(&none, "X", "0.0.0.0:1").unwrap().port(), 1);
        let bad = |_: &str| Some("nowhere".to_owned());
        assert!(addr(&bad, "INDABA_X", "0.0.0.0:1")
            .unwrap_err()
            .0
            .contains("INDABA_X"));
        assert!(integer(&bad, "INDABA_N", 1u32, 1)
            .unwrap_err()
            .0
            .contains("INDABA_N"));
        assert!(required(&none, "DATABASE_URL")
            .unwrap_err()
            .0
            .contains("DATABASE_URL"));
        let blank = |_: &str| Some(" ".to_owned());
        assert!(required(&blank, "DATABASE_URL").is_err());
    }

    #[test]
    fn nats_url_defaults_to_localhost() {
        match BusSettings::nats_from(&|_: &str| None) {
            BusSettings::Nats(nats) => {
                assert_eq!(nats.url, DEFAULT_NATS_URL);
                assert_eq!(nats.auth, NatsAuth::None);
                assert!(nats.invalid.is_none());
            }
            BusSettings::Shared(_) => panic!("expected NATS"),
        }
    }

    fn nats(pairs: &[(&str, &str)]) -> Result<NatsSettings, ConfigError> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        NatsSettings::from_source(&|k: &str| map.get(k).cloned())
    }

    #[test]
    fn nats_credentials_are_read_and_checked() {
        let s = nats(&[
            (env::NATS_USER, "gateway"),
            (env::NATS_PASSWORD, "s3cret-s3cret"),
            (env::NATS_CA_FILE, "/etc/nats/ca.pem"),
            (env::NATS_INBOX_PREFIX, "_INBOX.gateway"),
        ])
        .unwrap();
        assert_eq!(
            s.auth,
            NatsAuth::UserPassword {
                user: "gateway".into(),
                password: "s3cret-s3cret".into()
            }
        );
        assert_eq!(s.ca_file, Some(PathBuf::from("/etc/nats/ca.pem")));
        assert_eq!(s.inbox_prefix.as_deref(), Some("_INBOX.gateway"));
        assert!(!format!("{s:?}").contains("s3cret"), "password in Debug");

        let token = nats(&[(env::NATS_TOKEN, "t0ken-t0ken")]).unwrap();
        assert_eq!(token.auth, NatsAuth::Token("t0ken-t0ken".into()));
        let creds = nats(&[(env::NATS_CREDS_FILE, "/run/x.creds")]).unwrap();
        assert_eq!(creds.auth, NatsAuth::CredsFile("/run/x.creds".into()));

        for (bad, names) in [
            (vec![(env::NATS_USER, "gateway")], env::NATS_PASSWORD),
            (
                vec![
                    (env::NATS_TOKEN, "a-token-a-token"),
                    (env::NATS_CREDS_FILE, "/x"),
                ],
                env::NATS_CREDS_FILE,
            ),
            (
                vec![(env::NATS_CLIENT_CERT_FILE, "/c.pem")],
                env::NATS_CLIENT_KEY_FILE,
            ),
            (
                vec![(env::NATS_INBOX_PREFIX, "_INBOX.>")],
                env::NATS_INBOX_PREFIX,
            ),
            (
                vec![
                    (env::NATS_USER, "gateway"),
                    (env::NATS_PASSWORD, "CHANGE-ME-nats"),
                ],
                env::NATS_PASSWORD,
            ),
        ] {
            let err = nats(&bad).unwrap_err().0;
            assert!(err.contains(names), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_bad_nats_setting_surfaces_when_connecting() {
        let get = |k: &str| (k == env::NATS_USER).then(|| "gateway".to_owned());
        match BusSettings::nats_from(&get) {
            BusSettings::Nats(n) => assert!(n.invalid.unwrap().contains(env::NATS_PASSWORD)),
            BusSettings::Shared(_) => panic!("expected NATS"),
        }
    }
}
