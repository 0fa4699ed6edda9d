//! The push providers, speaking their real protocols: FCM HTTP v1 (OAuth2 service-account
//! tokens), APNs (HTTP/2, ES256 provider tokens), Web Push (RFC 8291 `aes128gcm` + RFC 8292
//! VAPID) and signed webhooks. Base URLs are configurable so tests run local fakes that
//! check the same auth and encryption the real services do.

pub mod apns;
pub mod fcm;
pub mod http;
pub mod webhook;
pub mod webpush;

use std::time::Duration;

use proto::pb::DevicePlatform;

/// One notification for one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Notification {
    /// Recipient.
    pub user_id: i64,
    /// The conversation (the app opens it).
    pub conversation_id: i64,
    /// The newest message it covers.
    pub message_id: i64,
    /// Who wrote the newest message (0: the system).
    pub sender_id: i64,
    /// How many messages it stands for (collapse).
    pub count: i64,
    /// Title line.
    pub title: String,
    /// Body line (no message text when the user hides it).
    pub body: String,
    /// The batch it comes from (with a device id, the idempotency key of one send).
    pub batch_id: i64,
    /// Who mentioned the user in one of its messages (0: the system); `None`: no mention.
    pub mentioned_by: Option<i64>,
}

impl Notification {
    /// Replaces earlier notifications of the same conversation on the device
    /// (`apns-collapse-id`, FCM `collapse_key`/`tag`, Web Push `Topic`).
    pub fn collapse_key(&self) -> String {
        format!("conv-{}", self.conversation_id)
    }

    /// The same for every attempt at one (notification, device): a send repeated after a
    /// crash carries the same id, so receivers can drop the repeat (webhooks:
    /// `X-Indaba-Delivery-Id`; APNs: `apns-id`).
    pub fn delivery_id(&self, device_id: i64) -> String {
        format!("{}-{device_id}", self.batch_id)
    }

    /// `delivery_id` as the UUID APNs wants in `apns-id` (deterministic, not random).
    pub fn apns_id(&self, device_id: i64) -> String {
        let a = u64::try_from(self.batch_id).unwrap_or(0);
        let b = u64::try_from(device_id).unwrap_or(0);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            a as u16,
            (b >> 48) as u16,
            b & 0xffff_ffff_ffff
        )
    }

    /// The app-facing data every provider carries (strings: FCM's data is string to
    /// string). `mentioned_by` only when a message mentions the user.
    pub fn data(&self) -> serde_json::Value {
        let mut d = serde_json::json!({
            "type": "new_messages",
            "conversation_id": self.conversation_id.to_string(),
            "message_id": self.message_id.to_string(),
            "sender_id": self.sender_id.to_string(),
            "count": self.count.to_string(),
        });
        if let Some(by) = self.mentioned_by {
            d["mentioned_by"] = by.to_string().into();
        }
        d
    }
}

/// A device as the providers need it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Registry id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Where it is reached.
    pub platform: DevicePlatform,
    /// FCM/APNs token, Web Push endpoint or webhook URL.
    pub token: String,
    /// Web Push subscription key (base64url).
    pub p256dh: String,
    /// Web Push auth secret (base64url).
    pub auth: String,
}

/// What became of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider.
    Sent,
    /// The token is dead (uninstalled app, expired subscription): forget the device.
    Gone(String),
    /// Try again later (429, 5xx, network); the provider may say when.
    Retry(Option<Duration>, String),
    /// Will never work as is (bad payload, misconfiguration): dead-letter it.
    Failed(String),
}

/// Why a provider could not be configured: the services' one configuration error.
pub use bus::config::ConfigError;

/// Every configured provider.
pub struct Providers {
    /// FCM, when configured.
    pub fcm: Option<fcm::Fcm>,
    /// APNs, when configured.
    pub apns: Option<apns::Apns>,
    /// Web Push, when configured (VAPID key).
    pub webpush: Option<webpush::WebPush>,
    /// Webhooks, when configured (signing secret).
    pub webhook: Option<webhook::Webhook>,
    http: http::Http,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("fcm", &self.fcm.is_some())
            .field("apns", &self.apns.is_some())
            .field("webpush", &self.webpush.is_some())
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

impl Providers {
    /// Builds the HTTP clients (user-chosen targets checked by `guard`); providers are
    /// added by the caller.
    pub fn new(guard: http::Guard) -> Result<Providers, ConfigError> {
        Ok(Providers {
            fcm: None,
            apns: None,
            webpush: None,
            webhook: None,
            http: http::Http::new(guard)?,
        })
    }

    /// The outbound policy and resolver webhook URLs and Web Push endpoints are checked
    /// with (at registration, and by the connector at send time).
    pub fn guard(&self) -> &http::Guard {
        self.http.guard()
    }

    /// Whether a platform can be served (registration of others is refused).
    pub fn supports(&self, p: DevicePlatform) -> bool {
        match p {
            DevicePlatform::Fcm => self.fcm.is_some(),
            DevicePlatform::Apns => self.apns.is_some(),
            DevicePlatform::Webpush => self.webpush.is_some(),
            DevicePlatform::Webhook => self.webhook.is_some(),
            DevicePlatform::Unspecified => false,
        }
    }

    /// Sends one notification to one device.
    pub async fn send(&self, t: &Target, n: &Notification) -> Outcome {
        let not_configured =
            || Outcome::Failed(format!("{} is not configured", t.platform.as_str_name()));
        match t.platform {
            DevicePlatform::Fcm => match &self.fcm {
                Some(p) => p.send(&self.http, &t.token, n).await,
                None => not_configured(),
            },
            DevicePlatform::Apns => match &self.apns {
                Some(p) => p.send(&self.http, &t.token, &n.apns_id(t.id), n).await,
                None => not_configured(),
            },
            DevicePlatform::Webpush => match &self.webpush {
                Some(p) => p.send(&self.http, t, n).await,
                None => not_configured(),
            },
            DevicePlatform::Webhook => match &self.webhook {
                Some(p) => p.send(&self.http, &t.token, &n.delivery_id(t.id), n).await,
                None => not_configured(),
            },
            DevicePlatform::Unspecified => Outcome::Failed("no platform".into()),
        }
    }
}

/// The common reading of a provider's HTTP status: 429 and 5xx are retried (honouring
/// `Retry-After`), other failures are not.
pub fn by_status(r: &http::Reply, what: &str) -> Outcome {
    let s = r.status.as_u16();
    match s {
        200..=299 => Outcome::Sent,
        429 | 500..=599 => Outcome::Retry(r.retry_after, format!("{what}: HTTP {s}")),
        _ => Outcome::Failed(format!("{what}: HTTP {s}: {}", r.text_snippet())),
    }
}
