//! The gRPC `indaba.chat.v1.PresenceService` for other backends.

use std::sync::{Arc, Mutex};

use proto::pb;
use proto::pb::presence_service_server::{PresenceService, PresenceServiceServer};
use tonic::{Request, Response, Status};

use crate::{LastSeenStore, Tracker};

/// The service: reads the same state the NATS query does.
pub(crate) struct PresenceGrpc {
    pub(crate) tracker: Arc<Mutex<Tracker>>,
    pub(crate) store: LastSeenStore,
}

#[tonic::async_trait]
impl PresenceService for PresenceGrpc {
    async fn get_presence(
        &self,
        request: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let ids = request.into_inner().user_ids;
        crate::validate_query(&ids).map_err(|msg| {
            proto::grpc_status::status(&proto::field_error(
                "user_ids",
                proto::ErrorCode::InvalidField,
                msg,
            ))
        })?;
        let users = crate::lookup(&self.tracker, &self.store, &ids).await;
        Ok(Response::new(pb::GetPresenceResponse {
            users,
            error: None,
        }))
    }
}

/// Serves `PresenceService`, `grpc.health.v1.Health` and reflection until `stop`. Callers
/// authenticate with an API key (see `proto::grpc_auth`).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    svc: PresenceGrpc,
    keys: proto::grpc_auth::ApiKeys,
    stop: tokio_util::sync::CancellationToken,
) {
    if keys.is_open() {
        tracing::warn!(
            "gRPC API is open: set {} to require API keys",
            proto::env::GRPC_API_KEYS
        );
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<PresenceServiceServer<PresenceGrpc>>()
        .await;
    let reflection = match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "grpc reflection unavailable");
            return;
        }
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let res = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(PresenceServiceServer::with_interceptor(
            svc,
            keys.interceptor(),
        ))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "grpc server failed");
    }
}
