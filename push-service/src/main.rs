//! push-service, distributed mode: settings from the environment (see README).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bus::runtime::traced("push-service", push_service::run_from_env()).await
}
