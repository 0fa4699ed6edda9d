//! presence-service, distributed mode: `NATS_URL` from the environment.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bus::runtime::traced("presence-service", async {
        let app = presence_service::App::build(presence_service::Settings::from_env()?).await?;
        app.run(bus::runtime::shutdown_signal()).await
    })
    .await
}
