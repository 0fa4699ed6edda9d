//! The gRPC API for backends (issue 6): `MessageService` over real NATS and PostgreSQL, API
//! keys, rich error details, health and reflection, and the Python example a Django backend
//! would copy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use proto::pb;
use proto::pb::message_service_client::MessageServiceClient;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::support::*;

const RW_KEY: &str = "django-0123456789abcdef";
const RO_KEY: &str = "stats-0123456789abcdef";

fn keys() -> String {
    format!("django:{RW_KEY}:rw,stats:{RO_KEY}:ro")
}

async fn client(addr: SocketAddr) -> MessageServiceClient<tonic::transport::Channel> {
    MessageServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("grpc connect")
}

fn with_key<T>(msg: T, key: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(k) = key {
        let v: MetadataValue<_> = format!("Bearer {k}").parse().expect("metadata");
        r.metadata_mut().insert("authorization", v);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_service_rpcs_keys_and_errors() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_ms, grpc) = spawn_message_service_grpc(&nats.url(), &db, &keys()).await;
    let (_gw, gw) = spawn_gateway(&nats.url(), "gw-grpc").await;
    let mut host = Client::connect(gw, 20).await;
    let mut c = client(grpc).await;
    let k = Some(RW_KEY);

    // A backend opens a booking conversation between guest 10 and host 20.
    let conv = c
        .create_conversation(with_key(
            pb::CreateConversationRequest {
                creator_id: 10,
                participant_ids: vec![20],
                title: "Booking #1234".into(),
                kind: pb::ConversationKind::Group as i32,
            },
            k,
        ))
        .await
        .expect("create")
        .into_inner();
    let Some(pb::create_conversation_response::Result::Conversation(conv)) = conv.result else {
        panic!("no conversation");
    };

    // A system message: sender 0, delivered live to the host's socket.
    let system = |key: &'static str| pb::SendMessageRequest {
        sender_id: 0,
        as_system: true,
        conversation_id: Some(conv.id),
        text: "Booking #1234 confirmed".into(),
        client_msg_id: key.into(),
        ..Default::default()
    };
    let sent = c
        .send_message(with_key(system("booking-1234"), k))
        .await
        .expect("send")
        .into_inner();
    let Some(pb::send_message_response::Result::Message(m)) = sent.result else {
        panic!("no message");
    };
    assert_eq!(m.sender_id, 0);
    let live = host.recv_type("new_message").await;
    assert_eq!(live["message_id"], m.id);
    assert_eq!(live["sender_id"], 0);
    // Same key: the original, nothing new stored or delivered.
    let again = c
        .send_message(with_key(system("booking-1234"), k))
        .await
        .expect("retry")
        .into_inner();
    assert!(again.duplicate);
    host.expect_none_of("new_message", Duration::from_millis(300))
        .await;

    // Unread counts and history, as a read-only caller may read them.
    let unread = c
        .get_unread_counts(with_key(
            pb::GetUnreadCountsRequest { user_id: 20 },
            Some(RO_KEY),
        ))
        .await
        .expect("unread")
        .into_inner();
    assert_eq!(unread.total_unread, 1);
    assert_eq!(unread.conversations[0].conversation_id, conv.id);
    let page = c
        .list_messages(with_key(
            pb::ListMessagesRequest {
                user_id: 10,
                conversation_id: conv.id,
                limit: 10,
                ..Default::default()
            },
            Some(RO_KEY),
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    let got = c
        .get_message(with_key(
            pb::GetMessageRequest {
                message_id: m.id,
                as_user_id: 20,
            },
            k,
        ))
        .await
        .expect("get")
        .into_inner();
    assert!(matches!(
        got.result,
        Some(pb::get_message_response::Result::Message(_))
    ));

    // AIP-158 paging over five conversations, two at a time.
    for other in 30..34 {
        c.create_conversation(with_key(
            pb::CreateConversationRequest {
                creator_id: 10,
                participant_ids: vec![other],
                ..Default::default()
            },
            k,
        ))
        .await
        .expect("create");
    }
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let p = c
            .list_conversations(with_key(
                pb::ListConversationsRequest {
                    user_id: 10,
                    page_size: 2,
                    page_token: token.clone(),
                },
                k,
            ))
            .await
            .expect("page")
            .into_inner();
        assert!(p.conversations.len() <= 2);
        ids.extend(
            p.conversations
                .iter()
                .filter_map(|s| s.conversation.as_ref().map(|c| c.id)),
        );
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5);

    // Errors: codes and rich details.
    let e = c
        .send_message(with_key(
            pb::SendMessageRequest {
                sender_id: 10,
                conversation_id: Some(conv.id),
                text: "   ".into(),
                ..Default::default()
            },
            k,
        ))
        .await
        .expect_err("empty text");
    assert_eq!(e.code(), Code::InvalidArgument);
    let details = e.get_error_details();
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some("empty_text")
    );
    let violations = &details
        .bad_request()
        .expect("bad request details")
        .field_violations;
    assert_eq!(violations[0].field, "text");
    let e = c
        .list_conversations(with_key(
            pb::ListConversationsRequest {
                user_id: 10,
                page_size: 2,
                page_token: "forged".into(),
            },
            k,
        ))
        .await
        .expect_err("bad token");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_error_details()
            .bad_request()
            .expect("details")
            .field_violations[0]
            .field,
        "page_token"
    );
    let e = c
        .get_conversation(with_key(
            pb::GetConversationRequest {
                conversation_id: conv.id,
                as_user_id: 99,
            },
            k,
        ))
        .await
        .expect_err("outsider");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .get_conversation(with_key(
            pb::GetConversationRequest {
                conversation_id: 987_654,
                as_user_id: 0,
            },
            k,
        ))
        .await
        .expect_err("missing");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .get_conversation(with_key(pb::GetConversationRequest::default(), k))
        .await
        .expect_err("zero id");
    assert_eq!(e.code(), Code::InvalidArgument);
    // A user may not post as the system.
    let mut forged = system("forged");
    forged.sender_id = 10;
    let e = c
        .send_message(with_key(forged, k))
        .await
        .expect_err("forged system");
    assert_eq!(e.code(), Code::InvalidArgument);

    // Keys: none or unknown → UNAUTHENTICATED; read-only writing → PERMISSION_DENIED.
    for key in [None, Some("wrong-key-0123456789")] {
        let e = c
            .get_unread_counts(with_key(pb::GetUnreadCountsRequest { user_id: 20 }, key))
            .await
            .expect_err("no key");
        assert_eq!(e.code(), Code::Unauthenticated, "{key:?}");
    }
    let e = c
        .send_message(with_key(system("ro"), Some(RO_KEY)))
        .await
        .expect_err("read-only");
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let nats = Nats::start();
    let db = fresh_database().await;
    let (_ms, grpc) = spawn_message_service_grpc(&nats.url(), &db, &keys()).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "indaba.chat.v1.MessageService".into(),
            })
            .await;
        if matches!(&r, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut refl = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"indaba.chat.v1.MessageService"),
        "{names:?}"
    );
}

/// The Python interpreter with grpcio, grpcio-tools and grpcio-status (installed into
/// `.tools/venv` by `scripts/test.sh`).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("INDABA_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with grpcio: run scripts/test.sh (it installs one) or set INDABA_PYTHON"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_creates_a_conversation_and_posts_a_system_message() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_ms, grpc) = spawn_message_service_grpc(&nats.url(), &db, &keys()).await;
    let (_gw, gw) = spawn_gateway(&nats.url(), "gw-py").await;
    let mut host = Client::connect(gw, 20).await;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let stubs = tempfile::tempdir().expect("tempdir");
    let py = python();
    let gen = tokio::process::Command::new(&py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto/proto"))
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg("indaba/chat/v1/chat.proto")
        .output()
        .await
        .expect("run grpc_tools.protoc");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let out = tokio::process::Command::new(&py)
        .arg(root.join("examples/python/booking_notice.py"))
        .args(["--guest", "10", "--host", "20", "--booking", "1234"])
        .env("PYTHONPATH", stubs.path())
        .env("INDABA_GRPC_TARGET", grpc.to_string())
        .env("INDABA_GRPC_API_KEY", RW_KEY)
        .output()
        .await
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .expect("the example prints a JSON summary last");
    // What the example did is real: the host's socket got the notice live.
    let live = host.recv_type("new_message").await;
    assert_eq!(live["message_id"], report["message_id"]);
    assert_eq!(live["sender_id"], 0);
    assert_eq!(live["text"], "Booking #1234 confirmed");
    assert_eq!(report["host_unread"], 1);
    assert_eq!(report["invalid_argument_field"], "text");
}

/// message-service's operations port: probes and Prometheus counters that move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_service_ops_port_probes_and_metrics() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_ms, _, ops) = spawn_message_service_ops(&nats.url(), &db, &keys()).await;
    let (_gw, gw) = spawn_gateway(&nats.url(), "gw-ops").await;
    assert_eq!(http_text(ops, "/livez").await.0, 200);
    assert_eq!(http_text(ops, "/readyz").await.0, 200);
    let sent_before = counter(
        &http_text(ops, "/metrics").await.1,
        "indaba_messages_stored_total",
    );
    let mut a = Client::connect(gw, 1).await;
    a.chat(2, "counted", Some("m-1")).await;
    let (status, text) = http_text(ops, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        counter(&text, "indaba_messages_stored_total"),
        sent_before + 1.0
    );
    assert!(
        counter(&text, "indaba_requests_total{op=\"send\"}") >= 1.0,
        "{text}"
    );
    assert_eq!(http_text(ops, "/nope").await.0, 404);
}

fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}
