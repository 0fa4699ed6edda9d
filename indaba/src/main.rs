//! `indaba`: the single-node server, and a token minting helper.

use clap::{Parser, Subcommand};
use futures_util::FutureExt as _;

#[derive(Parser)]
#[command(
    name = "indaba",
    about = "Indaba real-time messaging, single-node mode",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run gateway + message-service in one process (the default).
    Serve,
    /// Run one distributed-mode gateway (settings from the environment, as the `gateway`
    /// binary): one image can then serve every role.
    Gateway,
    /// Run one distributed-mode message-service (settings from the environment, as the
    /// `message-service` binary).
    MessageService,
    /// Run one distributed-mode presence-service (settings from the environment, as the
    /// `presence-service` binary).
    PresenceService,
    /// Run one distributed-mode push-service (settings from the environment, as the
    /// `push-service` binary).
    #[command(alias = "push-service")]
    Push,
    /// Print a client JWT for a user, signed with this data directory's secret.
    Token {
        /// The user id to put in the `user_id` claim.
        #[arg(long)]
        user: i64,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The distributed roles read their settings from the environment, as their binaries do.
    let role = match cli.command {
        Some(Command::Gateway) => Some(("gateway", gateway::run_from_env().boxed())),
        Some(Command::MessageService) => {
            Some(("message-service", message_service::run_from_env().boxed()))
        }
        Some(Command::PresenceService) => {
            Some(("presence-service", presence_service::run_from_env().boxed()))
        }
        Some(Command::Push) => Some(("push-service", push_service::run_from_env().boxed())),
        _ => None,
    };
    if let Some((name, program)) = role {
        return bus::runtime::traced(name, program).await;
    }
    let settings = indaba::Settings::from_env()?;
    match cli.command.unwrap_or(Command::Serve) {
        // Handled above: they read their settings from the environment, not these.
        Command::Gateway | Command::Push | Command::MessageService | Command::PresenceService => {
            Ok(())
        }
        Command::Token { user, ttl_secs } => {
            anyhow::ensure!(user > 0, "--user must be a positive integer");
            let secret =
                indaba::load_or_create_secret(&settings.data_dir, settings.jwt_secret.as_deref())?;
            let token =
                gateway::auth::mint_hs256(&secret, user, std::time::Duration::from_secs(ttl_secs))?;
            println!("{token}");
            Ok(())
        }
        Command::Serve => {
            bus::runtime::traced("indaba", async {
                let node = indaba::SingleNode::build(settings.clone()).await?;
                let addr = node.local_addr()?;
                tracing::info!(%addr, data_dir = %settings.data_dir.display(), "indaba single-node listening");
                eprintln!(
                    "indaba listening on ws://{addr}/ws/chat/?token=…  (mint a token: indaba token --user 1)"
                );
                node.run(bus::runtime::shutdown_signal()).await
            })
            .await
        }
    }
}
