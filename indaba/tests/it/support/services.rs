//! The real services, each built with its own `App::build` and test settings, as tasks of
//! the test's runtime.

use std::net::SocketAddr;
use std::time::Duration;

use super::processes::{run_with_stop, stopped, Running};
use super::SECRET;

/// message-service's test settings: PostgreSQL at `database_url`, NATS at `nats_url`, texts
/// of at most 100 characters, no gRPC or operations port.
pub fn message_service_settings(nats_url: &str, database_url: &str) -> message_service::Settings {
    message_service::Settings {
        store: message_service::StoreSettings::Postgres(database_url.into()),
        bus: message_service::BusSettings::Nats(nats_url.into()),
        pool_size: 8,
        max_text_chars: 100,
        max_group_size: 1000,
        edit_window: Some(Duration::from_secs(900)),
        max_in_flight: 256,
        retention: None,
        grpc_listen: None,
        grpc_keys: Default::default(),
        http_listen: None,
        push_jobs: true,
        group_commit: true,
        send_queue_budget: Some(Duration::from_millis(250)),
        send_batches: true,
        crash_after_commits: None,
        jetstream_replicas: 1,
        storage: storage::StorageSettings::None,
        uploads: message_service::settings::Uploads::from_source(&|_| None)
            .expect("default upload limits"),
    }
}

pub async fn spawn_message_service(
    nats_url: &str,
    database_url: &str,
) -> (Running, message_service::Store) {
    spawn_message_service_with(nats_url, database_url, |_| {}).await
}

pub async fn spawn_message_service_with(
    nats_url: &str,
    database_url: &str,
    tweak: impl FnOnce(&mut message_service::Settings),
) -> (Running, message_service::Store) {
    let mut settings = message_service_settings(nats_url, database_url);
    tweak(&mut settings);
    let app = message_service::App::build(settings)
        .await
        .expect("build message-service");
    let store = app.store();
    let running = run_with_stop(|rx| app.run(stopped(rx)));
    (running, store)
}

/// A message-service serving gRPC on a free port, guarded by `keys`. Returns the gRPC
/// address; [`spawn_message_service_ops`] also the operations port.
pub async fn spawn_message_service_grpc(
    nats_url: &str,
    database_url: &str,
    keys: &str,
) -> (Running, SocketAddr) {
    let (r, grpc, _) = spawn_message_service_ops(nats_url, database_url, keys).await;
    (r, grpc)
}

/// A message-service with gRPC and its operations port on free ports.
pub async fn spawn_message_service_ops(
    nats_url: &str,
    database_url: &str,
    keys: &str,
) -> (Running, SocketAddr, SocketAddr) {
    let mut settings = message_service_settings(nats_url, database_url);
    settings.grpc_listen = Some("127.0.0.1:0".parse().expect("addr"));
    settings.grpc_keys = proto::grpc_auth::ApiKeys::parse(keys).expect("keys");
    settings.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let app = message_service::App::build(settings)
        .await
        .expect("build message-service");
    let addr = app.grpc_addr().expect("grpc addr");
    let ops = app.http_addr().expect("ops addr");
    let running = run_with_stop(|rx| app.run(stopped(rx)));
    (running, addr, ops)
}

pub async fn spawn_gateway(nats_url: &str, id: &str) -> (Running, SocketAddr) {
    spawn_gateway_with(nats_url, id, |_| {}).await
}

pub async fn spawn_gateway_with(
    nats_url: &str,
    id: &str,
    tweak: impl FnOnce(&mut gateway::Settings),
) -> (Running, SocketAddr) {
    let mut s = gateway::Settings::new(
        gateway::auth::KeySource::Hs256Secret(SECRET.into()),
        gateway::BusSettings::Nats(nats_url.into()),
    );
    s.listen = "127.0.0.1:0".parse().expect("addr");
    s.gateway_id = id.into();
    s.max_text_chars = 100;
    // Tests send bursts far above a human rate; the rate-limit tests set their own.
    s.chat_rate_per_10s = 100_000;
    s.connect_rate_per_ip_10s = 0;
    s.max_connections_per_ip = 0;
    s.rest_rate_per_10s = 0;
    s.conversation_create_rate_per_min = 0;
    // Bursts from one test process on a debug build can queue past the overload budget;
    // the overload tests set their own.
    s.send_queue_budget = None;
    tweak(&mut s);
    let app = gateway::App::build(s).await.expect("build gateway");
    let addr = app.local_addr().expect("addr");
    let running = run_with_stop(|rx| app.run(stopped(rx)));
    (running, addr)
}

/// A presence-service with test timings: 300 ms grace, no warm-up (unless tweaked).
pub async fn spawn_presence(
    nats_url: &str,
    tweak: impl FnOnce(&mut presence_service::Settings),
) -> (Running, presence_service::Handle, Option<SocketAddr>) {
    let mut s =
        presence_service::Settings::new(presence_service::BusSettings::Nats(nats_url.into()));
    s.grace = Duration::from_millis(300);
    s.warmup = Duration::ZERO;
    s.tick = Duration::from_millis(50);
    tweak(&mut s);
    let app = presence_service::App::build(s)
        .await
        .expect("build presence");
    let handle = app.handle();
    let grpc = app.grpc_addr();
    let running = run_with_stop(|rx| app.run(stopped(rx)));
    (running, handle, grpc)
}

pub async fn spawn_single_node(
    dir: &std::path::Path,
) -> (Running, SocketAddr, message_service::Store) {
    spawn_single_node_with(dir, "127.0.0.1:0", &[]).await
}

/// A single node on a given address with `INDABA_*` options (as the environment gives them).
pub async fn spawn_single_node_with(
    dir: &std::path::Path,
    listen: &str,
    options: &[(String, String)],
) -> (Running, SocketAddr, message_service::Store) {
    let node = indaba::SingleNode::build(indaba::Settings {
        data_dir: dir.to_path_buf(),
        listen: listen.parse().expect("addr"),
        jwt_secret: Some(SECRET.into()),
        max_text_chars: 100,
        retention: None,
        grpc_listen: None,
        grpc_keys: Default::default(),
        // Tests make requests far faster than a person: no per-user REST budget or
        // per-address connection limit unless a test sets its own.
        options: indaba::Options(
            [
                ("INDABA_REST_RATE_PER_10S", "0"),
                ("INDABA_MAX_CONNECTIONS_PER_IP", "0"),
                ("INDABA_CONVERSATION_CREATE_RATE_PER_MIN", "0"),
                // Bursts on a debug build can queue past the overload budget.
                ("INDABA_SEND_QUEUE_BUDGET_MS", "0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .chain(options.iter().cloned())
            .collect(),
        ),
    })
    .await
    .expect("build single node");
    let addr = node.local_addr().expect("addr");
    let store = node.store();
    let running = run_with_stop(|rx| node.run(stopped(rx)));
    (running, addr, store)
}

pub fn token(user: i64) -> String {
    gateway::auth::mint_hs256(SECRET, user, Duration::from_secs(3600)).expect("mint")
}

/// A push-service with its provider settings from `env` (the variable names an operator
/// sets) and a 50 ms tick.
pub async fn spawn_push(
    nats_url: &str,
    database_url: &str,
    env: &[(String, String)],
) -> (Running, push_service::Store) {
    let map: std::collections::HashMap<String, String> = env.iter().cloned().collect();
    let mut s = push_service::Settings::new(
        push_service::BusSettings::Nats(nats_url.into()),
        push_service::StoreSettings::Postgres(database_url.into()),
    );
    s.apply_common(&|k: &str| map.get(k).cloned())
        .expect("push settings");
    s.tick = Duration::from_millis(50);
    let app = push_service::App::build(s)
        .await
        .expect("build push-service");
    let store = app.store();
    let running = run_with_stop(|rx| app.run(stopped(rx)));
    (running, store)
}
