//! message-service, distributed mode: `DATABASE_URL` and `NATS_URL` from the environment.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bus::runtime::traced("message-service", message_service::run_from_env()).await
}
