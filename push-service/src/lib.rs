//! push-service: notifications for users with no online device.
//!
//! Layout:
//! - [`settings`] — configuration.
//! - [`store`] — devices, mutes, preferences, and durable notification batches.
//! - [`providers`] — FCM, APNs, Web Push and webhooks over their real protocols.
//! - [`api`] — device registration, mute and preferences (NATS for the gateway's REST
//!   routes, gRPC for backends), one typed function per request.
//!
//! Flow: message-service enqueues one `PushJob` per committed message (JetStream work queue;
//! in process, a request answered after the job is stored). *Intake* asks presence about
//! the recipients, drops those online or active within `suppress_if_active_within`, those
//! who muted the conversation (a `mentions_only` mute lets messages mentioning them
//! through) and those without devices, and adds the message to the recipient's open batch
//! for the conversation (one transaction, remembering the (message, user) pair so a
//! redelivered job counts once; the batch remembers a mention and who made it). Only then
//! is the job acknowledged. A job carrying an edit or deletion instead updates the open
//! batches (not yet claimed) whose newest message it changes: a deletion withdraws a batch
//! of that message alone and uncounts it from a larger one; an edit replaces the text. The *sender* claims batches whose collapse window is over (a lease, so a
//! dead instance's batches are taken over), checks presence again, and sends one
//! notification per device, recording each device reached; retries back off with jitter
//! and honour `Retry-After`; dead tokens are pruned; hopeless sends are dead-lettered.
//!
//! Isolation: up to `IN_FLIGHT` (64) batches are sent at once, each in its own task, and the
//! claim tops them up every tick (no sweep waits for its slowest batch). A batch sends to
//! all its devices at once and gives up on a device at 60 % of its lease (retried later
//! like a 5xx), so it never outlives the lease. User-chosen targets (webhooks, Web Push)
//! go through [`outbound`]'s policy at registration and at connect time, and get at most
//! `providers::http::PER_HOST` connections per host.

pub mod api;
mod grpc;
pub mod metrics;
pub mod outbound;
pub mod providers;
pub mod settings;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus::Bus;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use proto::pb;
use proto::subjects;
use tokio::task::JoinSet;

pub use settings::{BusSettings, Settings, StoreSettings};
pub use store::Store;

use providers::{Notification, Outcome, Providers};

/// Most recipients asked about in one presence query.
const PRESENCE_CHUNK: usize = 500;
/// Batches being sent at once by one instance (a semaphore: claiming tops it up on every
/// tick, it never waits for a sweep to finish).
const IN_FLIGHT: usize = 64;
/// Part of the lease a batch may spend sending; the rest is for recording the outcome.
/// A device not answered by then is retried later like a 5xx, so a batch never outlives
/// its lease (another instance would take it over and send again).
const SEND_SHARE: f64 = 0.6;
/// Part of the lease after which a batch is abandoned outright (a stuck store call).
const HARD_SHARE: f64 = 0.9;
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub(crate) struct Inner {
    bus: Bus,
    store: Store,
    settings: Settings,
    providers: Providers,
}

/// A built push-service.
pub struct App {
    inner: Arc<Inner>,
    jobs: bus::jobs::Jobs,
    api: Vec<(api::Route, bus::Subscriber)>,
    grpc: Option<tokio::net::TcpListener>,
    ops: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("push_service::App")
    }
}

impl App {
    /// Connects, migrates, builds the providers (a bad key stops the start), subscribes.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        App::build_with_resolver(settings, Arc::new(providers::http::SystemResolver)).await
    }

    /// [`App::build`] resolving the names of user-chosen targets (webhooks, Web Push
    /// endpoints) with `resolver` (tests substitute one that answers what they need).
    pub async fn build_with_resolver(
        settings: Settings,
        resolver: Arc<dyn providers::http::Resolve>,
    ) -> anyhow::Result<App> {
        // Before anything else: an open gRPC API must not start beyond loopback.
        if let Some(addr) = settings.grpc_listen {
            settings
                .grpc_keys
                .check_exposure(addr)
                .map_err(anyhow::Error::msg)?;
        }
        let policy = outbound::Policy {
            allow_private: settings.outbound_allow_private,
        };
        if policy.allow_private {
            tracing::warn!(
                "outbound targets may be http:// and loopback/private addresses (development only)"
            );
        }
        let mut providers = Providers::new(providers::http::Guard::new(policy, resolver))?;
        if let Some((json, base)) = &settings.fcm {
            providers.fcm = Some(providers::fcm::Fcm::new(json, base.clone())?);
        }
        if let Some(cfg) = &settings.apns {
            providers.apns = Some(providers::apns::Apns::new(cfg.clone())?);
        }
        if let Some((key, subject)) = &settings.vapid {
            providers.webpush = Some(providers::webpush::WebPush::new(key, subject)?);
        }
        if let Some(secret) = &settings.webhook {
            providers.webhook = Some(providers::webhook::Webhook::new(secret)?);
        }
        tracing::info!(?providers, "push providers");
        let store = match &settings.store {
            StoreSettings::Postgres(url) => Store::connect_postgres(url, 8).await?,
            StoreSettings::Sqlite(path) => Store::open_sqlite(path).await?,
        };
        let bus = settings.bus.connect("push-service").await?;
        let jobs = bus
            .consume(&bus::jobs::PUSH_QUEUE.with_replicas(settings.jetstream_replicas))
            .await?;
        let mut api_subs = Vec::new();
        for (route, subject) in api::ROUTES {
            api_subs.push((
                route,
                bus.queue_subscribe(subject, subjects::PUSH_SERVICE_QUEUE)
                    .await?,
            ));
        }
        let bind = |a: Option<std::net::SocketAddr>| async move {
            match a {
                Some(addr) => tokio::net::TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}")),
                None => Ok(None),
            }
        };
        // Subscriptions reach the server before anyone is told we are up.
        bus.flush().await?;
        let grpc = bind(settings.grpc_listen).await?;
        let ops = bind(settings.http_listen).await?;
        Ok(App {
            inner: Arc::new(Inner {
                bus,
                store,
                settings,
                providers,
            }),
            jobs,
            api: api_subs,
            grpc,
            ops,
        })
    }

    /// The store (tests inspect it).
    pub fn store(&self) -> Store {
        self.inner.store.clone()
    }

    /// Where gRPC listens, when served.
    pub fn grpc_addr(&self) -> Option<std::net::SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the operations port listens, when served.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown`. Batches being sent are left to their lease: another
    /// instance (or this one, restarted) finishes them, skipping devices already reached.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        tasks.spawn(intake_loop(self.inner.clone(), self.jobs));
        tasks.spawn(send_loop(self.inner.clone()));
        for (route, sub) in self.api {
            tasks.spawn(api::serve(self.inner.clone(), route, sub));
        }
        if let Some(l) = self.ops {
            tasks.spawn(bus::ops::serve(l, Arc::new(Readiness(self.inner.clone()))));
        }
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some(l) = self.grpc {
            tasks.spawn(grpc::serve(
                l,
                self.inner.clone(),
                stop.clone().cancelled_owned(),
            ));
        }
        tracing::info!("push-service running");
        shutdown.await;
        tracing::info!("push-service stopping");
        stop.cancel();
        tasks.abort_all();
        Ok(())
    }
}

struct Readiness(Arc<Inner>);

impl bus::ops::Probe for Readiness {
    fn ready(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            if !self.0.bus.is_connected() {
                return Err("no NATS connection".into());
            }
            self.0.store.ping().await.map_err(|e| e.to_string())
        })
    }

    fn metrics(&self) -> String {
        metrics::render()
    }
}

/// What presence says about one user.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    connections: u32,
    last_seen_ms: i64,
}

/// Presence of `users`. `None` when presence cannot answer (the caller fails open: a
/// duplicate notification is better than a lost one).
async fn presence(bus: &Bus, users: &[i64]) -> Option<HashMap<i64, Seen>> {
    let mut out = HashMap::with_capacity(users.len());
    for chunk in users.chunks(PRESENCE_CHUNK) {
        let req = pb::GetPresenceRequest {
            user_ids: chunk.to_vec(),
        };
        let reply = bus
            .request(
                subjects::PRESENCE_GET,
                Bytes::from(req.encode_to_vec()),
                Duration::from_secs(2),
            )
            .await
            .ok()?;
        let resp = pb::GetPresenceResponse::decode(reply.payload).ok()?;
        for u in resp.users {
            out.insert(
                u.user_id,
                Seen {
                    connections: u.connections,
                    last_seen_ms: u.last_seen_ms,
                },
            );
        }
    }
    Some(out)
}

/// Whether a user should get no push: online now, or active very recently.
fn present(seen: Option<&Seen>, within: Duration, now_ms: i64) -> bool {
    seen.is_some_and(|s| {
        s.connections > 0
            || (s.last_seen_ms > 0
                && now_ms - s.last_seen_ms < i64::try_from(within.as_millis()).unwrap_or(0))
    })
}

async fn intake_loop(inner: Arc<Inner>, mut jobs: bus::jobs::Jobs) {
    while let Some(job) = jobs.next().await {
        metrics::job();
        match intake(&inner, &job.payload).await {
            Ok(()) => {
                if let Err(e) = job.ack().await {
                    tracing::warn!(error = %e, "push job ack failed; it will be redelivered (and ignored)");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "push job not stored; retrying later");
                let _ = job.retry_later(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Turns one job into batch entries. `Err` only when the store failed (retry the job).
async fn intake(inner: &Inner, payload: &[u8]) -> Result<(), store::StoreError> {
    let job = match pb::PushJob::decode(payload) {
        Ok(j) => j,
        Err(e) => {
            // A job nobody can read never will be: drop it rather than loop on it.
            tracing::error!(error = %e, "undecodable push job dropped");
            return Ok(());
        }
    };
    if let Some(c) = job.change {
        return change_intake(inner, &c).await;
    }
    let Some(m) = job.message else {
        return Ok(());
    };
    let now = proto::time::now_ms();
    let seen = presence(&inner.bus, &job.recipient_ids).await;
    if seen.is_none() {
        tracing::warn!("presence unavailable: treating recipients as offline");
    }
    // A photo or voice note on its own is announced by what it is.
    let summary;
    let text = match m.text.is_empty() {
        true => {
            summary = proto::frames::attachment_summary(&m.attachments);
            summary.as_str()
        }
        false => m.text.as_str(),
    };
    let incoming = store::Incoming {
        message_id: m.id,
        conversation_id: m.conversation_id,
        sender_id: m.sender_id,
        text,
        mentions: &m.mentions,
        title: &job.conversation_title,
        kind: i64::from(job.conversation_kind),
    };
    for user in job.recipient_ids {
        if user == m.sender_id {
            continue;
        }
        if present(
            seen.as_ref().and_then(|s| s.get(&user)),
            inner.settings.suppress_if_active_within,
            now,
        ) {
            metrics::outcome(metrics::Kind::SkippedActive);
            continue;
        }
        match inner
            .store
            .intake(user, &incoming, inner.settings.collapse_window)
            .await?
        {
            store::Intake::Added => metrics::outcome(metrics::Kind::Queued),
            store::Intake::Muted => metrics::outcome(metrics::Kind::SkippedMuted),
            store::Intake::Duplicate | store::Intake::NoDevices | store::Intake::Deleted => {}
        }
    }
    Ok(())
}

/// Applies an edit or deletion to the notifications not sent yet (other kinds of change
/// notify nobody and are dropped).
async fn change_intake(inner: &Inner, c: &pb::MessageChange) -> Result<(), store::StoreError> {
    let change = match pb::ChangeKind::try_from(c.kind) {
        Ok(pb::ChangeKind::Edited) => store::Change::Edited(&c.text),
        Ok(pb::ChangeKind::Deleted) => store::Change::Deleted,
        _ => return Ok(()),
    };
    let r = inner
        .store
        .message_changed(&store::IncomingChange {
            id: c.id,
            conversation_id: c.conversation_id,
            message_id: c.message_id,
            seq: c.seq,
            change,
        })
        .await?;
    tracing::debug!(change_id = c.id, message_id = c.message_id, outcome = ?r, "message change applied to pending notifications");
    Ok(())
}

async fn send_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    // Dropped (aborting every batch task) when the loop is: batches left are the lease's.
    let mut running = JoinSet::new();
    let lease = inner.settings.lease;
    loop {
        tick.tick().await;
        while running.try_join_next().is_some() {}
        let free = slots.available_permits();
        if free == 0 {
            continue;
        }
        // Deadlines count from before the claim: the lease starts no earlier than this.
        let claimed_at = tokio::time::Instant::now();
        let batches = match inner
            .store
            .claim_due(lease, i64::try_from(free).unwrap_or(1))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim push batches");
                continue;
            }
        };
        for b in batches {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Cannot happen (only this loop takes permits); the lease runs out.
                break;
            };
            let inner = inner.clone();
            let send_by = claimed_at + lease.mul_f64(SEND_SHARE);
            let hard = claimed_at + lease.mul_f64(HARD_SHARE);
            running.spawn(async move {
                let _permit = permit;
                match tokio::time::timeout_at(hard, send_batch(&inner, &b, send_by)).await {
                    Ok(Ok(())) => {}
                    // The lease runs out and the batch is retried.
                    Ok(Err(e)) => tracing::warn!(error = %e, batch = b.id, "push batch failed"),
                    Err(_) => tracing::warn!(batch = b.id, "push batch abandoned at its deadline"),
                }
            });
        }
        if last_prune.elapsed() > Duration::from_secs(600) {
            last_prune = tokio::time::Instant::now();
            let _ = inner
                .store
                .prune_seen(proto::time::now_ms() - 24 * 3600 * 1000)
                .await;
        }
    }
}

/// What the user sees: the title is the group's (or "New message"), the body the newest
/// text, after "N new messages" when there are several and "User 7 mentioned you" when one
/// mentions them ("User 7 mentioned you: <text>" when it is the newest). Hidden text keeps
/// the count and the mention, drops the text and the group title.
fn notification(b: &store::Batch, hide_text: bool) -> Notification {
    let group_title = (b.kind == pb::ConversationKind::Group as i64 && !b.title.is_empty())
        .then(|| b.title.clone());
    let mut parts: Vec<String> = Vec::new();
    if b.count > 1 {
        parts.push(format!("{} new messages", b.count));
    }
    let mention = b.mentioned_by.map(|u| {
        if u > 0 {
            format!("User {u} mentioned you")
        } else {
            "You were mentioned".to_owned()
        }
    });
    let (title, body) = if hide_text {
        parts.extend(mention);
        ("New message".to_owned(), parts.join(" · "))
    } else {
        let text: String = b.last_text.chars().take(200).collect();
        match mention {
            Some(m) if b.mention_message_id == b.last_message_id && !text.is_empty() => {
                parts.push(format!("{m}: {text}"));
            }
            Some(m) => {
                parts.push(m);
                parts.push(text);
            }
            None => parts.push(text),
        }
        parts.retain(|p| !p.is_empty());
        (
            group_title.unwrap_or_else(|| "New message".to_owned()),
            parts.join(" · "),
        )
    };
    Notification {
        user_id: b.user_id,
        conversation_id: b.conversation_id,
        message_id: b.last_message_id,
        sender_id: b.last_sender_id,
        count: b.count,
        title,
        body,
        batch_id: b.id,
        mentioned_by: b.mentioned_by,
    }
}

/// The retry delay after `attempt` failed rounds: full jitter over an exponential bound,
/// never less than what the provider asked for.
fn backoff(base: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    use rand::Rng;
    let bound = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_BACKOFF);
    let jittered = rand::rng().random_range(Duration::ZERO..=bound);
    jittered
        .max(retry_after.unwrap_or_default())
        .max(Duration::from_millis(100))
}

/// Sends one batch to every device not yet reached, all at once (each call also limited
/// per host by the guarded client); a device with no answer by `send_by` is retried later.
async fn send_batch(
    inner: &Inner,
    b: &store::Batch,
    send_by: tokio::time::Instant,
) -> Result<(), store::StoreError> {
    // Back online since the batch opened: they will read it in the app. (Presence that
    // cannot answer before the deadline counts as offline, as elsewhere.)
    let seen = tokio::time::timeout_at(send_by, presence(&inner.bus, &[b.user_id]))
        .await
        .ok()
        .flatten();
    if let Some(seen) = seen {
        if seen.get(&b.user_id).is_some_and(|s| s.connections > 0) {
            metrics::outcome(metrics::Kind::SkippedActive);
            return inner.store.finish(b.id).await;
        }
    }
    let done = inner.store.sent_devices(b.id).await?;
    let devices: Vec<providers::Target> = inner
        .store
        .devices(b.user_id)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !done.contains(&t.id))
        .collect();
    let hide = inner
        .store
        .hide_text(b.user_id)
        .await?
        .unwrap_or(inner.settings.hide_text_default);
    let n = notification(b, hide);
    let mut retry: Option<Option<Duration>> = None;
    let mut waiting = Vec::new();
    let mut sends: futures_util::stream::FuturesUnordered<_> = devices
        .iter()
        .map(|d| {
            let n = &n;
            async move {
                let outcome = tokio::time::timeout_at(send_by, inner.providers.send(d, n))
                    .await
                    .unwrap_or_else(|_| {
                        Outcome::Retry(None, "no answer before the batch deadline".into())
                    });
                (d, outcome)
            }
        })
        .collect();
    while let Some((d, outcome)) = sends.next().await {
        match outcome {
            Outcome::Sent => {
                metrics::outcome(metrics::Kind::Sent);
                inner.store.mark_done(b.id, d.id).await?;
            }
            Outcome::Gone(why) => {
                tracing::info!(device = d.id, %why, "pruning dead device token");
                metrics::outcome(metrics::Kind::Pruned);
                inner.store.delete_device(d.id).await?;
                inner.store.mark_done(b.id, d.id).await?;
            }
            Outcome::Failed(why) => {
                tracing::warn!(device = d.id, %why, "notification refused; dead-lettered");
                metrics::outcome(metrics::Kind::DeadLettered);
                inner.store.dead_letter(b, d.id, &why).await?;
            }
            Outcome::Retry(after, why) => {
                tracing::info!(device = d.id, %why, attempt = b.attempt, "notification will be retried");
                metrics::outcome(metrics::Kind::Retried);
                retry = Some(retry.flatten().max(after));
                waiting.push((d.id, why));
            }
        }
    }
    match retry {
        None => inner.store.finish(b.id).await,
        Some(_) if b.attempt + 1 >= i64::from(inner.settings.max_attempts) => {
            for (device, why) in waiting {
                metrics::outcome(metrics::Kind::DeadLettered);
                inner
                    .store
                    .dead_letter(
                        b,
                        device,
                        &format!("gave up after {} attempts: {why}", b.attempt + 1),
                    )
                    .await?;
            }
            inner.store.finish(b.id).await
        }
        Some(after) => {
            let attempt = u32::try_from(b.attempt).unwrap_or(u32::MAX);
            let delay = backoff(inner.settings.retry_base, attempt, after);
            let due = proto::time::now_ms() + i64::try_from(delay.as_millis()).unwrap_or(0);
            inner.store.reschedule(b.id, due).await
        }
    }
}

/// The distributed-mode program: settings from the environment, run until SIGTERM/SIGINT.
/// Shared by the `push-service` binary and `indaba push-service`, so one image serves every role alike.
pub async fn run_from_env() -> anyhow::Result<()> {
    let app = App::build(Settings::from_env()?).await?;
    app.run(bus::runtime::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(count: i64, kind: pb::ConversationKind, title: &str) -> store::Batch {
        store::Batch {
            id: 1,
            user_id: 2,
            conversation_id: 3,
            count,
            last_message_id: 9,
            last_sender_id: 1,
            last_text: "see you at 8".into(),
            title: title.into(),
            kind: kind as i64,
            attempt: 0,
            mentioned_by: None,
            mention_message_id: 0,
        }
    }

    #[test]
    fn notification_text_and_hiding() {
        let n = notification(&batch(1, pb::ConversationKind::Direct, ""), false);
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("New message", "see you at 8")
        );
        let n = notification(&batch(3, pb::ConversationKind::Group, "Trip"), false);
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("Trip", "3 new messages · see you at 8")
        );
        let n = notification(&batch(3, pb::ConversationKind::Group, "Trip"), true);
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("New message", "3 new messages")
        );
        assert!(!n.body.contains("see you"));
        assert_eq!(n.data()["conversation_id"], "3");
        assert_eq!(n.data()["message_id"], "9");
        assert!(n.data().get("mentioned_by").is_none());
        assert_eq!(n.mentioned_by, None);
    }

    #[test]
    fn a_mention_says_who_mentioned_you() {
        let mentioned = |count, by, message: i64| store::Batch {
            mentioned_by: Some(by),
            mention_message_id: message,
            ..batch(count, pb::ConversationKind::Group, "Trip")
        };
        // The newest message is the mention.
        let n = notification(&mentioned(1, 7, 9), false);
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("Trip", "User 7 mentioned you: see you at 8")
        );
        assert_eq!(n.mentioned_by, Some(7));
        assert_eq!(n.data()["mentioned_by"], "7");
        let n = notification(&mentioned(3, 7, 9), false);
        assert_eq!(
            n.body,
            "3 new messages · User 7 mentioned you: see you at 8"
        );
        // An earlier message was.
        let n = notification(&mentioned(3, 7, 8), false);
        assert_eq!(
            n.body,
            "3 new messages · User 7 mentioned you · see you at 8"
        );
        // Hidden text: who, not what.
        let n = notification(&mentioned(1, 7, 9), true);
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("New message", "User 7 mentioned you")
        );
        let n = notification(&mentioned(2, 7, 9), true);
        assert_eq!(n.body, "2 new messages · User 7 mentioned you");
        assert!(!n.body.contains("see you"));
        // A system message.
        let n = notification(&mentioned(1, 0, 9), false);
        assert_eq!(n.body, "You were mentioned: see you at 8");
        // The newest message was deleted (its text blanked).
        let blank = store::Batch {
            last_text: String::new(),
            ..mentioned(2, 7, 9)
        };
        assert_eq!(
            notification(&blank, false).body,
            "2 new messages · User 7 mentioned you"
        );
        let blank = store::Batch {
            last_text: String::new(),
            ..batch(2, pb::ConversationKind::Direct, "")
        };
        assert_eq!(notification(&blank, false).body, "2 new messages");
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let base = Duration::from_secs(1);
        for attempt in 0..20 {
            let d = backoff(base, attempt, None);
            assert!(
                d <= MAX_BACKOFF.max(Duration::from_millis(100)),
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff(base, 0, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
    }

    #[test]
    fn presence_rules() {
        let now = 1_000_000;
        let within = Duration::from_secs(60);
        assert!(!present(None, within, now));
        let online = Seen {
            connections: 1,
            last_seen_ms: now,
        };
        assert!(present(Some(&online), within, now));
        let recent = Seen {
            connections: 0,
            last_seen_ms: now - 10_000,
        };
        assert!(present(Some(&recent), within, now));
        let long_ago = Seen {
            connections: 0,
            last_seen_ms: now - 120_000,
        };
        assert!(!present(Some(&long_ago), within, now));
        let never = Seen::default();
        assert!(!present(Some(&never), within, now));
    }
}
