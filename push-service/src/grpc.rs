//! The gRPC `indaba.chat.v1.PushService` (devices, mutes, preferences) for backends, with
//! health checking and reflection.

use std::sync::Arc;

use proto::grpc_auth::require_write;
use proto::pb;
use proto::pb::push_service_server::{PushService, PushServiceServer};
use proto::ErrorCode;
use tonic::{Code, Request, Response, Status};

use crate::{api, Inner};

fn status(e: &pb::Error) -> Status {
    let code = match ErrorCode::parse(&e.code) {
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::RateLimited => Code::ResourceExhausted,
        ErrorCode::Unsupported => Code::FailedPrecondition,
        ErrorCode::Internal => Code::Internal,
        _ => Code::InvalidArgument,
    };
    let message = if e.field.is_empty() {
        e.message.clone()
    } else {
        format!("{}: {}", e.field, e.message)
    };
    Status::new(code, message)
}

fn answer<T>(resp: T, error: Option<&pb::Error>) -> Result<Response<T>, Status> {
    match error {
        Some(e) => Err(status(e)),
        None => Ok(Response::new(resp)),
    }
}

struct PushGrpc(Arc<Inner>);

#[tonic::async_trait]
impl PushService for PushGrpc {
    async fn register_device(
        &self,
        request: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        require_write(&request)?;
        let r = api::register(&self.0, request.into_inner()).await;
        let err = match &r.result {
            Some(pb::register_device_response::Result::Error(e)) => Some(e.clone()),
            _ => None,
        };
        answer(r, err.as_ref())
    }

    async fn unregister_device(
        &self,
        request: Request<pb::UnregisterDeviceRequest>,
    ) -> Result<Response<pb::UnregisterDeviceResponse>, Status> {
        require_write(&request)?;
        let r = api::unregister(&self.0, request.into_inner()).await;
        let err = r.error.clone();
        answer(r, err.as_ref())
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let r = api::list(&self.0, request.into_inner()).await;
        let err = r.error.clone();
        answer(r, err.as_ref())
    }

    async fn set_mute(
        &self,
        request: Request<pb::SetMuteRequest>,
    ) -> Result<Response<pb::SetMuteResponse>, Status> {
        require_write(&request)?;
        let r = api::mute(&self.0, request.into_inner()).await;
        let err = r.error.clone();
        answer(r, err.as_ref())
    }

    async fn set_push_preferences(
        &self,
        request: Request<pb::SetPushPreferencesRequest>,
    ) -> Result<Response<pb::SetPushPreferencesResponse>, Status> {
        require_write(&request)?;
        let r = api::prefs(&self.0, request.into_inner()).await;
        let err = r.error.clone();
        answer(r, err.as_ref())
    }
}

/// Serves until `stop` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    inner: Arc<Inner>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let keys = inner.settings.grpc_keys.clone();
    if keys.is_open() {
        tracing::warn!(
            "gRPC API is open: set {} to require API keys",
            proto::env::GRPC_API_KEYS
        );
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<PushServiceServer<PushGrpc>>().await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let res = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(PushServiceServer::with_interceptor(
            PushGrpc(inner),
            keys.interceptor(),
        ))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "grpc server failed");
    }
}
