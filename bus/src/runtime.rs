//! Process plumbing every Indaba binary shares: logging setup and the shutdown signal.

/// Installs the log subscriber: JSON lines by default (for log shippers), human-readable
/// with `INDABA_LOG_FORMAT=pretty`; filter from `INDABA_LOG` (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env(proto::env::LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = std::env::var(proto::env::LOG_FORMAT).is_ok_and(|v| v == "pretty");
    // stderr, as documented: stdout stays free for program output (`indaba token`).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if pretty {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
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
