//! presence-service, distributed mode: `NATS_URL` from the environment.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bus::runtime::traced("presence-service", presence_service::run_from_env()).await
}
