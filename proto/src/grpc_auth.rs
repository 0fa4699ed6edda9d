//! Who may call the gRPC APIs: backend services holding an API key.
//!
//! Keys come from `INDABA_GRPC_API_KEYS` as `name:key[:ro|:rw],…` (or one full-access key
//! in `INDABA_GRPC_API_KEY`). A caller sends `authorization: Bearer <key>`. A missing or
//! unknown key is `UNAUTHENTICATED`; a read-only key calling a write method is
//! `PERMISSION_DENIED`.
//!
//! With no key configured the API would be open to anyone who reaches the port, so a
//! service refuses to start that way ([`ApiKeys::check_exposure`]) unless it listens on
//! loopback only or the operator set `INDABA_GRPC_INSECURE=true` (then it logs loudly).
//! Keys from either variable need at least [`MIN_KEY_LEN`] characters, and a shipped
//! example value ([`crate::env::is_placeholder`]) is refused.

use tonic::{Request, Status};

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Queries only.
    ReadOnly,
    /// Queries and writes.
    Full,
}

/// The authenticated caller, put into each request's extensions by the interceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name (for logs; never the key itself).
    pub name: String,
    /// What it may do.
    pub access: Access,
}

/// Shortest API key accepted (from either variable).
pub const MIN_KEY_LEN: usize = 16;

/// The configured keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, Caller)>,
    /// `INDABA_GRPC_INSECURE`: an open API may listen beyond loopback.
    insecure: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys.
        let names: Vec<&str> = self.keys.iter().map(|(_, c)| c.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("names", &names).finish()
    }
}

impl ApiKeys {
    /// Reads `INDABA_GRPC_API_KEYS` and `INDABA_GRPC_API_KEY` from a key → value source.
    pub fn from_source(get: &impl Fn(&str) -> Option<String>) -> Result<ApiKeys, String> {
        let mut keys = match get(crate::env::GRPC_API_KEYS) {
            Some(spec) if !spec.trim().is_empty() => {
                ApiKeys::parse(&spec).map_err(|e| format!("{}: {e}", crate::env::GRPC_API_KEYS))?
            }
            _ => ApiKeys::default(),
        };
        if let Some(k) = get(crate::env::GRPC_API_KEY).filter(|k| !k.is_empty()) {
            check_key(&k).map_err(|e| format!("{}: {e}", crate::env::GRPC_API_KEY))?;
            keys.keys.push((
                k,
                Caller {
                    name: "default".into(),
                    access: Access::Full,
                },
            ));
        }
        keys.insecure = crate::env::flag(get, crate::env::GRPC_INSECURE, false)?;
        Ok(keys)
    }

    /// Refuses to serve an open API (no key configured) on `listen` unless it is a
    /// loopback address or `INDABA_GRPC_INSECURE=true` was set.
    pub fn check_exposure(&self, listen: std::net::SocketAddr) -> Result<(), String> {
        if !self.is_open() || listen.ip().is_loopback() {
            return Ok(());
        }
        if self.insecure {
            tracing_free_warning(listen);
            return Ok(());
        }
        Err(format!(
            "gRPC on {listen} would be open to anyone who reaches it: set {} (or {}), listen on \
             loopback, or set {}=true to accept that (development only)",
            crate::env::GRPC_API_KEYS,
            crate::env::GRPC_API_KEY,
            crate::env::GRPC_INSECURE
        ))
    }

    /// Parses `name:key[:ro|:rw],…`.
    pub fn parse(spec: &str) -> Result<ApiKeys, String> {
        let mut keys = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(key)) = (parts.next(), parts.next()) else {
                return Err("each entry is name:key[:ro|:rw]".into());
            };
            let access = match parts.next() {
                None | Some("rw") => Access::Full,
                Some("ro") => Access::ReadOnly,
                Some(other) => return Err(format!("access must be ro or rw, got {other:?}")),
            };
            if name.is_empty() {
                return Err("each entry needs a name".into());
            }
            check_key(key).map_err(|e| format!("entry {name:?}: {e}"))?;
            keys.push((
                key.to_owned(),
                Caller {
                    name: name.to_owned(),
                    access,
                },
            ));
        }
        Ok(ApiKeys {
            keys,
            insecure: false,
        })
    }

    /// True when no key is configured (every caller has full access).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a bearer value belongs to.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Caller, Status> {
        if self.is_open() {
            return Ok(Caller {
                name: "anonymous".into(),
                access: Access::Full,
            });
        }
        let token = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        self.keys
            .iter()
            .find(|(k, _)| constant_time_eq(k.as_bytes(), token.as_bytes()))
            .map(|(_, c)| c.clone())
            .ok_or_else(|| Status::unauthenticated("unknown API key"))
    }

    /// A tonic interceptor that authenticates every call and records the [`Caller`].
    pub fn interceptor(
        self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static
    {
        move |mut req: Request<()>| {
            let caller = self.identify(
                req.metadata()
                    .get(crate::headers::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            )?;
            req.extensions_mut().insert(caller);
            Ok(req)
        }
    }
}

/// Refuses a write by a read-only caller.
pub fn require_write<T>(req: &Request<T>) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(c) if c.access == Access::Full => Ok(()),
        Some(c) => Err(Status::permission_denied(format!(
            "API key {:?} is read-only",
            c.name
        ))),
        // The interceptor always runs first; reaching here means it was not installed.
        None => Err(Status::unauthenticated("no caller")),
    }
}

/// A key long enough and not a shipped example.
fn check_key(key: &str) -> Result<(), String> {
    if key.len() < MIN_KEY_LEN {
        return Err(format!("a key needs at least {MIN_KEY_LEN} characters"));
    }
    if crate::env::is_placeholder(key) {
        return Err("the key is a placeholder from the examples; generate a random one".into());
    }
    Ok(())
}

/// `proto` does no logging of its own (no tracing dependency): the warning goes to stderr,
/// where every service's logs go.
fn tracing_free_warning(listen: std::net::SocketAddr) {
    eprintln!(
        "WARNING: gRPC on {listen} is open to anyone who reaches it ({}=true); never in production",
        crate::env::GRPC_INSECURE
    );
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_checks_access() {
        let keys = ApiKeys::parse("django:0123456789abcdef:rw, stats:fedcba9876543210:ro").unwrap();
        let django = keys.identify(Some("Bearer 0123456789abcdef")).unwrap();
        assert_eq!(django.access, Access::Full);
        let stats = keys.identify(Some("bearer fedcba9876543210")).unwrap();
        assert_eq!(stats.access, Access::ReadOnly);
        assert_eq!(
            keys.identify(Some("Bearer nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            keys.identify(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut req = Request::new(());
        req.extensions_mut().insert(stats);
        assert_eq!(
            require_write(&req).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(ApiKeys::parse("short:abc").is_err());
        assert!(ApiKeys::parse("backend:CHANGE-ME-0123456789abcdef:rw").is_err());
        assert!(ApiKeys::parse("x:0123456789abcdef:admin").is_err());
        assert!(!format!("{keys:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn an_open_api_listens_on_loopback_only_unless_insecure() {
        let any: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let v6lo: std::net::SocketAddr = "[::1]:50051".parse().unwrap();
        let open = ApiKeys::default();
        assert!(open.check_exposure(any).is_err());
        assert!(open.check_exposure(lo).is_ok() && open.check_exposure(v6lo).is_ok());
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let insecure = ApiKeys::from_source(&env(&[("INDABA_GRPC_INSECURE", "true")])).unwrap();
        assert!(insecure.check_exposure(any).is_ok());
        let keyed =
            ApiKeys::from_source(&env(&[("INDABA_GRPC_API_KEY", "0123456789abcdef0123")])).unwrap();
        assert!(keyed.check_exposure(any).is_ok());
        // The single key has the same minimum length, and no placeholders.
        assert!(ApiKeys::from_source(&env(&[("INDABA_GRPC_API_KEY", "short")])).is_err());
        assert!(ApiKeys::from_source(&env(&[(
            "INDABA_GRPC_API_KEY",
            "PLACEHOLDER-replace-with-a-random-key"
        )]))
        .is_err());
    }
}
