//! Trace context across the bus: every publish and request made inside a traced span carries
//! the W3C `traceparent` header, and a receiver continues the trace from it. So one chat
//! message is one trace: gateway (`chat_message`) → NATS → message-service (`request`,
//! `store`, `deliver`) → NATS → gateway (`delivery`), exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `runtime::init_tracing`), and its id is
//! in every JSON log line written inside those spans (`span.trace_id`).

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Message;

/// The `traceparent` value for the current span, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == proto::headers::TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![proto::headers::TRACEPARENT]
    }
}

/// Makes `span` continue the trace the message came with (a message without a valid
/// `traceparent` leaves the span a new trace's root).
pub fn follow(span: &tracing::Span, msg: &Message) {
    match msg.header(proto::headers::TRACEPARENT) {
        Some(tp) => follow_traceparent(span, tp),
        None => record_trace_id(span),
    }
}

/// Makes `span` continue the trace of a `traceparent` value carried in a payload (one per
/// entry of a batch); an invalid one leaves the span a new trace's root.
pub fn follow_traceparent(span: &tracing::Span, traceparent: &str) {
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    record_trace_id(span);
}

/// Writes the span's trace id into its `trace_id` field (declared `trace_id =
/// tracing::field::Empty`), so log lines inside it name the trace.
pub fn record_trace_id(span: &tracing::Span) {
    let cx = span.context();
    let s = cx.span();
    let sc = s.span_context();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_continues_through_a_message() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::registry(),
            tracing_opentelemetry::layer().with_tracer(tracer),
        );
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current_traceparent(), None, "no span, no trace");
            let root = tracing::info_span!("root", trace_id = tracing::field::Empty);
            let tp = root.in_scope(current_traceparent).expect("traceparent");
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));

            let msg = Message {
                subject: "s".into(),
                reply: None,
                headers: vec![(proto::headers::TRACEPARENT.into(), tp.clone())],
                payload: Default::default(),
            };
            let child = tracing::info_span!("child", trace_id = tracing::field::Empty);
            follow(&child, &msg);
            let child_tp = child
                .in_scope(current_traceparent)
                .expect("child traceparent");
            assert_eq!(child_tp.split('-').nth(1), Some(parts[1]), "same trace");
            assert_ne!(child_tp.split('-').nth(2), Some(parts[2]), "its own span");

            // Garbage in the header starts a fresh trace instead of failing.
            let bad = Message {
                headers: vec![(proto::headers::TRACEPARENT.into(), "00-zz".into())],
                ..msg
            };
            let other = tracing::info_span!("other", trace_id = tracing::field::Empty);
            follow(&other, &bad);
            let other_tp = other.in_scope(current_traceparent).expect("fresh trace");
            assert_ne!(other_tp.split('-').nth(1), Some(parts[1]));
        });
    }
}
