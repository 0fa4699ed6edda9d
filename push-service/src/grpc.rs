//! The gRPC `indaba.chat.v1.PushService` (devices, mutes, preferences) for backends, with
//! health checking and reflection.

use std::sync::Arc;

use proto::grpc_auth::require_write;
use proto::pb;
use proto::pb::push_service_server::{PushService, PushServiceServer};
use tonic::{Request, Response, Status};

use crate::{api, Inner};

/// The response, or the gRPC status for its `error` (code and rich details shared by
/// every gRPC server: [`proto::grpc_status`]).
fn answer<T>(resp: T, error: Option<&pb::Error>) -> Result<Response<T>, Status> {
    match error {
        Some(e) => Err(proto::grpc_status::status(e)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ErrorCode;
    use tonic_types::StatusExt;

    #[test]
    fn errors_carry_the_stable_code_and_the_field() {
        let e = proto::field_error("token", ErrorCode::InvalidField, "token must be https");
        let s = answer((), Some(&e)).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        let d = s.get_error_details();
        assert_eq!(
            d.error_info().map(|i| i.reason.as_str()),
            Some("invalid_field")
        );
        assert_eq!(
            d.bad_request()
                .map(|b| b.field_violations[0].field.as_str()),
            Some("token")
        );
        let missing = proto::pb_error(ErrorCode::NotFound, "no such device");
        assert_eq!(
            answer((), Some(&missing)).unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
}
