//! push-service, distributed mode: settings from the environment (see README).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bus::runtime::traced("push-service", async {
        let settings = push_service::Settings::from_env()?;
        let app = push_service::App::build(settings).await?;
        app.run(bus::runtime::shutdown_signal()).await
    })
    .await
}
