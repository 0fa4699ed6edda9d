//! [`TestCluster`]: a throwaway NATS, a fresh PostgreSQL database, message-services,
//! optionally presence-service and push-service, and gateways, all real, in one builder:
//!
//! ```ignore
//! let c = TestCluster::builder()
//!     .message_services(2)
//!     .gateways(2)
//!     .presence(true)
//!     .build()
//!     .await;
//! let mut a = Client::connect(c.gw(0), 1).await;
//! ```
//!
//! Dropping the cluster kills NATS, then aborts every service (`kill -9`).

use std::net::SocketAddr;

use super::processes::{fresh_database, Nats, Running};
use super::services::{spawn_gateway_with, spawn_message_service_with, spawn_presence, spawn_push};

type GatewayTweak = Box<dyn Fn(&mut gateway::Settings) + Send + Sync>;
type MessageServiceTweak = Box<dyn Fn(&mut message_service::Settings) + Send + Sync>;

/// A running cluster; see the module documentation.
pub struct TestCluster {
    // Field order is drop order: NATS goes first, then the services.
    nats: Nats,
    services: Vec<Running>,
    db: Option<String>,
    gateways: Vec<SocketAddr>,
    store: Option<message_service::Store>,
    presence: Option<presence_service::Handle>,
    push_store: Option<push_service::Store>,
}

/// What to start; [`TestCluster::builder`]. Defaults: one message-service, one gateway,
/// no presence-service, no push-service.
pub struct TestClusterBuilder {
    message_services: usize,
    gateways: usize,
    presence: bool,
    push_env: Option<Vec<(String, String)>>,
    gateway_tweaks: Vec<GatewayTweak>,
    message_service_tweaks: Vec<MessageServiceTweak>,
}

impl TestCluster {
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            message_services: 1,
            gateways: 1,
            presence: false,
            push_env: None,
            gateway_tweaks: Vec::new(),
            message_service_tweaks: Vec::new(),
        }
    }

    /// The `i`th gateway's address (in start order, from 0).
    pub fn gw(&self, i: usize) -> SocketAddr {
        self.gateways[i]
    }

    /// Every gateway's address, in start order.
    pub fn gateways(&self) -> &[SocketAddr] {
        &self.gateways
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// The database URL (there is one when a message-service or push-service runs).
    pub fn db(&self) -> &str {
        self.db.as_deref().expect("this cluster has no database")
    }

    /// The first message-service's store.
    pub fn store(&self) -> &message_service::Store {
        self.store
            .as_ref()
            .expect("this cluster has no message-service")
    }

    /// presence-service's handle (with [`TestClusterBuilder::presence`]).
    pub fn presence(&self) -> &presence_service::Handle {
        self.presence
            .as_ref()
            .expect("this cluster has no presence-service")
    }

    /// push-service's store (with [`TestClusterBuilder::push`]).
    pub fn push_store(&self) -> &push_service::Store {
        self.push_store
            .as_ref()
            .expect("this cluster has no push-service")
    }
}

impl TestClusterBuilder {
    /// How many message-services share the database (0: none, and no database unless
    /// push-service needs one).
    pub fn message_services(mut self, n: usize) -> Self {
        self.message_services = n;
        self
    }

    /// How many gateways; their ids are `gw-a`, `gw-b`, …
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// Whether a presence-service runs (test timings, see [`spawn_presence`]).
    pub fn presence(mut self, on: bool) -> Self {
        self.presence = on;
        self
    }

    /// Runs a push-service with these provider settings (as environment variables), started
    /// after the gateways.
    pub fn push(mut self, env: Vec<(String, String)>) -> Self {
        self.push_env = Some(env);
        self
    }

    /// The per-user connection cap on every gateway (counted across gateways).
    pub fn max_connections_per_user(self, n: u32) -> Self {
        self.gateway_settings(move |s| s.max_connections_per_user = n)
    }

    /// Changes every gateway's settings (after the test defaults of [`spawn_gateway_with`]).
    pub fn gateway_settings(
        mut self,
        tweak: impl Fn(&mut gateway::Settings) + Send + Sync + 'static,
    ) -> Self {
        self.gateway_tweaks.push(Box::new(tweak));
        self
    }

    /// Changes every message-service's settings.
    pub fn message_service_settings(
        mut self,
        tweak: impl Fn(&mut message_service::Settings) + Send + Sync + 'static,
    ) -> Self {
        self.message_service_tweaks.push(Box::new(tweak));
        self
    }

    /// Starts, in order: NATS, the database, the message-services, presence-service, the
    /// gateways, push-service.
    pub async fn build(self) -> TestCluster {
        let nats = Nats::start();
        let url = nats.url();
        let db = if self.message_services > 0 || self.push_env.is_some() {
            Some(fresh_database().await)
        } else {
            None
        };
        let mut services = Vec::new();
        let mut store = None;
        for _ in 0..self.message_services {
            let (m, s) = spawn_message_service_with(&url, db.as_deref().expect("db"), |s| {
                for t in &self.message_service_tweaks {
                    t(s);
                }
            })
            .await;
            services.push(m);
            store.get_or_insert(s);
        }
        let mut presence = None;
        if self.presence {
            let (p, handle, _) = spawn_presence(&url, |_| {}).await;
            services.push(p);
            presence = Some(handle);
        }
        let mut gateways = Vec::new();
        for i in 0..self.gateways {
            let id = format!(
                "gw-{}",
                char::from(b'a' + u8::try_from(i).expect("gateways"))
            );
            let (g, addr) = spawn_gateway_with(&url, &id, |s| {
                for t in &self.gateway_tweaks {
                    t(s);
                }
            })
            .await;
            services.push(g);
            gateways.push(addr);
        }
        let mut push_store = None;
        if let Some(env) = &self.push_env {
            let (p, s) = spawn_push(&url, db.as_deref().expect("db"), env).await;
            services.push(p);
            push_store = Some(s);
        }
        TestCluster {
            nats,
            services,
            db,
            gateways,
            store,
            presence,
            push_store,
        }
    }
}
