//! message-service, distributed mode: `DATABASE_URL` and `NATS_URL` from the environment.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bus::runtime::traced("message-service", async {
        let settings = message_service::Settings::from_env()?;
        let app = message_service::App::build(settings).await?;
        app.run(bus::runtime::shutdown_signal()).await
    })
    .await
}
