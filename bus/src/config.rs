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
    /// Connect to NATS at this URL (distributed deployment).
    Nats(String),
    /// Use an already created bus (the single-node program's in-process bus).
    Shared(Bus),
}

impl BusSettings {
    /// `NATS_URL` from `get`, or the local default.
    pub fn nats_from(get: &impl Fn(&str) -> Option<String>) -> BusSettings {
        BusSettings::Nats(get(env::NATS_URL).unwrap_or_else(|| DEFAULT_NATS_URL.into()))
    }

    /// The bus these settings name; `name` is the NATS client name servers show.
    pub async fn connect(&self, name: &str) -> Result<Bus, BusError> {
        match self {
            BusSettings::Nats(url) => Bus::connect_nats(url, name).await,
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
            BusSettings::Nats(url) => assert_eq!(url, DEFAULT_NATS_URL),
            BusSettings::Shared(_) => panic!("expected NATS"),
        }
    }
}
