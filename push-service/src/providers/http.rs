//! The outbound HTTP client: HTTP/1.1 and HTTP/2 over rustls (ring) or plain TCP, with a
//! second client that speaks only HTTP/2 (APNs requires it; over `http://` it uses prior
//! knowledge, which is what a local fake needs).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::ConfigError;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Longest a provider call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response body read.
const MAX_BODY: usize = 64 * 1024;

/// A provider's answer.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: http::StatusCode,
    /// `Retry-After` (seconds form), if sent.
    pub retry_after: Option<Duration>,
    /// Body (at most 64 KiB).
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The start of the body, for error messages.
    pub fn text_snippet(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned()
    }
}

/// The two clients.
#[derive(Clone)]
pub struct Http {
    any: Client<Https, Full<Bytes>>,
    h2: Client<Https, Full<Bytes>>,
}

fn connector() -> Result<Https, ConfigError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

impl Http {
    /// Both clients, sharing nothing (APNs keeps its own long-lived HTTP/2 connections).
    pub fn new() -> Result<Http, ConfigError> {
        Ok(Http {
            any: Client::builder(TokioExecutor::new()).build(connector()?),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector()?),
        })
    }

    /// One request. Network failures and timeouts are `Err` (retryable).
    pub async fn call(
        &self,
        req: http::Request<Full<Bytes>>,
        http2_only: bool,
    ) -> Result<Reply, String> {
        let client = if http2_only { &self.h2 } else { &self.any };
        let resp = tokio::time::timeout(CALL_TIMEOUT, client.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = tokio::time::timeout(
            CALL_TIMEOUT,
            Limited::new(resp.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| "body timed out".to_owned())?
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}
