//! gateway, distributed mode: settings from the environment (see README, Configuration).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bus::runtime::traced("gateway", gateway::run_from_env()).await
}
