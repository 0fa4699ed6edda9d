//! The NATS transport: thin adapters from async-nats to the bus API.

use std::time::Duration;

use bytes::Bytes;

use proto::env;

use crate::config::{NatsAuth, NatsSettings};
use crate::{BusError, Message, Subscriber, SubscriberInner};

/// The client options for `nats`: credentials, TLS and reply prefix. Files (NKey seed,
/// `.creds`) are read here; an unusable one fails the start with its variable's name.
async fn options(nats: &NatsSettings) -> Result<async_nats::ConnectOptions, BusError> {
    if let Some(problem) = &nats.invalid {
        return Err(BusError::Connect(format!("configuration: {problem}")));
    }
    let mut o = async_nats::ConnectOptions::new();
    o = match &nats.auth {
        NatsAuth::None => o,
        NatsAuth::UserPassword { user, password } => {
            o.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(t) => o.token(t.clone()),
        NatsAuth::NKeySeedFile(p) => {
            let seed = std::fs::read_to_string(p).map_err(|e| {
                BusError::Connect(format!("{} {p:?}: {e}", env::NATS_NKEY_SEED_FILE))
            })?;
            o.nkey(seed.trim().to_owned())
        }
        NatsAuth::CredsFile(p) => o
            .credentials_file(p)
            .await
            .map_err(|e| BusError::Connect(format!("{} {p:?}: {e}", env::NATS_CREDS_FILE)))?,
    };
    if let Some(ca) = &nats.ca_file {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &nats.client_cert {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(prefix) = &nats.inbox_prefix {
        o = o.custom_inbox_prefix(prefix);
    }
    Ok(o)
}

pub(crate) async fn connect(
    nats: &NatsSettings,
    name: &str,
) -> Result<(async_nats::Client, tokio::sync::watch::Receiver<u64>), BusError> {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let tx = std::sync::Arc::new(tx);
    let connected_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = options(nats)
        .await?
        .name(name)
        // Reconnect forever: a gateway without NATS fails readiness but keeps its sockets,
        // and recovers by itself when NATS comes back.
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .subscription_capacity(match nats.subscription_capacity {
            0 => crate::SUBSCRIBER_CAPACITY,
            n => n,
        })
        .event_callback(move |event| {
            let tx = tx.clone();
            let connected_once = connected_once.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("nats connected");
                        if connected_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            tx.send_modify(|n| *n += 1);
                        }
                    }
                    async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                    // Permission violations and authorization errors land here: a service
                    // whose user lacks a subject it uses is misconfigured, so say it loudly.
                    async_nats::Event::ServerError(e) => {
                        tracing::error!(error = %e, "nats server error")
                    }
                    // The client dropped messages for a subscriber that fell behind: as
                    // after a reconnect, whoever holds client state may have missed
                    // deliveries and must say so (a gateway asks its clients to resync).
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::error!(sid, "nats slow consumer: messages dropped");
                        tx.send_modify(|n| *n += 1);
                    }
                    other => tracing::info!(event = %other, "nats event"),
                }
            }
        })
        .connect(servers(&nats.url)?)
        .await
        .map_err(|e| BusError::Connect(e.to_string()))?;
    Ok((client, rx))
}

/// Parses `NATS_URL`: one URL or a comma-separated list (every node of a cluster, so the
/// first connection does not depend on one node being up).
pub(crate) fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    let list: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err(BusError::Connect("NATS_URL is empty".into()));
    }
    list.into_iter()
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Connect(format!("NATS server URL {s:?}: {e}")))
        })
        .collect()
}

fn header_map(headers: &[(&str, &str)]) -> Option<async_nats::HeaderMap> {
    if headers.is_empty() {
        return None;
    }
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, *v);
    }
    Some(map)
}

pub(crate) async fn publish(
    client: &async_nats::Client,
    subject: &str,
    _reply: Option<&str>,
    headers: &[(&str, &str)],
    payload: Bytes,
) -> Result<(), BusError> {
    let subject = subject.to_owned();
    let res = match header_map(headers) {
        Some(h) => client.publish_with_headers(subject, h, payload).await,
        None => client.publish(subject, payload).await,
    };
    res.map_err(|e| BusError::Other(e.to_string()))
}

pub(crate) async fn request(
    client: &async_nats::Client,
    subject: &str,
    headers: &[(&str, &str)],
    payload: Bytes,
    timeout: Duration,
) -> Result<Message, BusError> {
    let mut req = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    if let Some(h) = header_map(headers) {
        req = req.headers(h);
    }
    match client.send_request(subject.to_owned(), req).await {
        Ok(m) => Ok(convert(m)),
        Err(e) => Err(match e.kind() {
            async_nats::RequestErrorKind::NoResponders => BusError::NoResponders(subject.into()),
            async_nats::RequestErrorKind::TimedOut => BusError::TimedOut(subject.into()),
            async_nats::RequestErrorKind::InvalidSubject
            | async_nats::RequestErrorKind::MaxPayloadExceeded => BusError::Invalid(e.to_string()),
            _ => BusError::Other(e.to_string()),
        }),
    }
}

pub(crate) async fn subscribe(
    client: &async_nats::Client,
    subject: &str,
    group: Option<&str>,
) -> Result<Subscriber, BusError> {
    let res = match group {
        Some(g) => {
            client
                .queue_subscribe(subject.to_owned(), g.to_owned())
                .await
        }
        None => client.subscribe(subject.to_owned()).await,
    };
    res.map(|s| Subscriber {
        inner: SubscriberInner::Nats(s),
    })
    .map_err(|e| BusError::Other(e.to_string()))
}

pub(crate) fn convert(m: async_nats::Message) -> Message {
    let headers = m
        .headers
        .map(|h| {
            h.iter()
                .flat_map(|(k, vs)| {
                    vs.iter()
                        .map(move |v| (k.to_string(), v.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        subject: m.subject.to_string(),
        reply: m.reply.map(|r| r.to_string()),
        headers,
        payload: m.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::servers;

    #[test]
    fn server_lists_parse_and_bad_entries_are_named() {
        assert_eq!(servers("nats://127.0.0.1:4222").unwrap().len(), 1);
        let three = servers("nats://a:1, nats://b:2,nats://c:3,").unwrap();
        assert_eq!(three.len(), 3);
        assert_eq!(three[1].host(), "b");
        let err = servers("nats://a:1,nats://b:notaport")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats://b:notaport"), "{err}");
        assert!(servers(" , ").is_err());
    }
}
