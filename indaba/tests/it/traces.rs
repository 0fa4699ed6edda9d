//! One chat message is one trace across processes: gateway → NATS → message-service →
//! database → NATS → gateway, exported over OTLP to a local collector (a fake speaking the
//! real OTLP/gRPC protocol), and its id is in message-service's JSON log lines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

use crate::support::*;

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Span {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_the_hops() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let nats = Nats::start();
    let db = fresh_database().await;
    let common = |service: &str| {
        vec![
            ("NATS_URL", nats.url()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
            ("INDABA_LOG", "info,message_service=debug".to_owned()),
        ]
    };
    let mut ms_env = common("message-service");
    ms_env.extend([
        ("DATABASE_URL", db.clone()),
        ("INDABA_GRPC_LISTEN", "127.0.0.1:0".to_owned()),
        ("INDABA_HTTP_LISTEN", "127.0.0.1:0".to_owned()),
        ("INDABA_PUSH_JOBS", "false".to_owned()),
    ]);
    let ms = RoleProcess::start("message-service", &ms_env);
    let port = free_port();
    let mut gw_env = common("gateway");
    gw_env.extend([
        ("INDABA_JWT_SECRET", SECRET.to_owned()),
        ("INDABA_LISTEN", format!("127.0.0.1:{port}")),
        ("INDABA_GATEWAY_ID", "gw-trace".to_owned()),
    ]);
    let _gw = RoleProcess::start("gateway", &gw_env);
    wait_for_port(port, "gateway process");
    let gw = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let mut alice = Client::connect(gw, 1).await;
    let mut bob = Client::connect(gw, 2).await;
    // message-service may still be starting: retry with the same key, as clients do.
    let deadline = tokio::time::Instant::now() + WAIT;
    let sent = loop {
        let v = alice.chat(2, "traced", Some("trace-1")).await;
        if v["type"] == "message_sent" {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never stored: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = bob.recv_type("new_message").await;
    assert_eq!(got["message_id"], sent["message_id"]);

    // The spans arrive within a few export intervals.
    let find = |spans: &[Span]| -> Option<(String, HashMap<&'static str, Span>)> {
        let hops = [
            ("gateway", "chat_message"),
            ("message-service", "request"),
            ("message-service", "store"),
            ("message-service", "deliver"),
            ("gateway", "delivery"),
        ];
        // Earlier attempts (message-service still starting) are traces that end early.
        spans
            .iter()
            .filter(|s| s.name == "chat_message")
            .find_map(|root| {
                let mut found = HashMap::new();
                for (service, name) in hops {
                    let s = spans.iter().find(|s| {
                        s.trace_id == root.trace_id && s.service == service && s.name == name
                    })?;
                    found.insert(name, s.clone());
                }
                Some((root.trace_id.clone(), found))
            })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (trace_id, hops) = loop {
        let spans = collector.0.lock().unwrap().clone();
        if let Some(t) = find(&spans) {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no complete trace; spans seen: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Parent links follow the hops.
    assert_eq!(hops["request"].parent, hops["chat_message"].span_id);
    assert_eq!(hops["store"].parent, hops["request"].span_id);
    assert_eq!(hops["deliver"].parent, hops["request"].span_id);
    assert_eq!(hops["delivery"].parent, hops["deliver"].span_id);
    assert_eq!(
        hops["chat_message"].parent, "",
        "the gateway starts the trace"
    );

    // message-service's log line about this message names the trace.
    let log = ms.log();
    let line = log
        .lines()
        .find(|l| l.contains("message stored"))
        .unwrap_or_else(|| panic!("no 'message stored' line in:\n{log}"));
    assert!(
        line.contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "{line}"
    );
    server.abort();
}
