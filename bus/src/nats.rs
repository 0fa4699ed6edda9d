//! The NATS transport: thin adapters from async-nats to the bus API.

use std::time::Duration;

use bytes::Bytes;

use crate::{BusError, Message, Subscriber, SubscriberInner};

pub(crate) async fn connect(url: &str, name: &str) -> Result<async_nats::Client, BusError> {
    async_nats::ConnectOptions::new()
        .name(name)
        // Reconnect forever: a gateway without NATS fails readiness but keeps its sockets,
        // and recovers by itself when NATS comes back.
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .subscription_capacity(crate::SUBSCRIBER_CAPACITY)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::error!(sid, "nats slow consumer: messages dropped")
                }
                other => tracing::info!(event = %other, "nats event"),
            }
        })
        .connect(url)
        .await
        .map_err(|e| BusError::Connect(e.to_string()))
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
