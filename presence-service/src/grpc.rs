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
        crate::validate_query(&ids).map_err(Status::invalid_argument)?;
        let users = crate::lookup(&self.tracker, &self.store, &ids).await;
        Ok(Response::new(pb::GetPresenceResponse {
            users,
            error: None,
        }))
    }
}

/// Serves until `stop`. With an API key configured, every call must carry it as a bearer
/// token; a missing or wrong one is `UNAUTHENTICATED`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    svc: PresenceGrpc,
    api_key: Option<String>,
    stop: crate::tokio_util_like::Stop,
) {
    let expected = api_key.map(|k| format!("Bearer {k}"));
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        if let Some(want) = &expected {
            let got = req
                .metadata()
                .get(proto::headers::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if got != Some(want.as_str()) {
                return Err(Status::unauthenticated("missing or invalid bearer token"));
            }
        }
        Ok(req)
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let res = tonic::transport::Server::builder()
        .add_service(PresenceServiceServer::with_interceptor(svc, check))
        .serve_with_incoming_shutdown(incoming, async move { stop.stopped().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "grpc server failed");
    }
}
