//! Process plumbing every Indaba binary shares: logging setup and the shutdown signal.

/// The tracing pipeline of a process; [`Telemetry::shutdown`] flushes spans not yet exported.
#[must_use = "keep it until the process ends, then call shutdown()"]
pub struct Telemetry {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Telemetry {
    /// Exports what is still buffered, for at most 5 s: an unreachable collector must not
    /// hold the exit past Kubernetes' grace period.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flush).await;
    }
}

/// Installs the log subscriber and the trace pipeline.
///
/// Logs: JSON lines by default (for log shippers), human-readable with
/// `INDABA_LOG_FORMAT=pretty`; filter from `INDABA_LOG` (default `info`). A line written
/// inside a traced span carries its trace id (`span.trace_id`).
///
/// Traces: spans always get W3C trace ids (they travel between services in `traceparent`
/// headers, see the `trace` module); they are exported over OTLP/gRPC only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with `service.name` = `OTEL_SERVICE_NAME` or
/// `service`, batched as the standard `OTEL_BSP_*` variables say.
pub fn init_tracing(service: &str) -> Telemetry {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env(proto::env::LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = std::env::var(proto::env::LOG_FORMAT).is_ok_and(|v| v == "pretty");
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var(proto::env::OTEL_SERVICE_NAME).is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut provider =
        opentelemetry_sdk::trace::SdkTracerProvider::builder().with_resource(resource.build());
    let mut export_error = None;
    if std::env::var(proto::env::OTEL_EXPORTER_OTLP_ENDPOINT).is_ok() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                let batch = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .build();
                provider = provider.with_span_processor(batch);
            }
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let provider = provider.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("indaba"));
    // stderr, as documented: stdout stays free for program output (`indaba token`).
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if pretty {
        fmt.boxed()
    } else {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    };
    // The log filter applies to the log lines only: `INDABA_LOG=warn` must not switch off
    // the spans (and with them the `traceparent` headers and exported traces).
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
        .try_init();
    if let Some(e) = export_error {
        tracing::error!(error = %e, "OTLP exporter not started; traces are not exported");
    }
    Telemetry { provider }
}

/// Runs a program's body with [`init_tracing`] done first and the traces flushed after.
pub async fn traced<T>(service: &str, body: impl std::future::Future<Output = T>) -> T {
    let telemetry = init_tracing(service);
    let out = body.await;
    telemetry.shutdown().await;
    out
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! { () = ctrl_c => {}, _ = term.recv() => {} },
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
