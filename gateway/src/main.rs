//! gateway, distributed mode: settings from the environment (see README, Configuration).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bus::runtime::traced("gateway", async {
        let settings = gateway::Settings::from_env()?;
        let app = gateway::App::build(settings).await?;
        tracing::info!(addr = %app.local_addr()?, "listening");
        app.run(bus::runtime::shutdown_signal()).await
    })
    .await
}
