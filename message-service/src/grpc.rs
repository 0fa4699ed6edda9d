//! The gRPC `indaba.chat.v1.MessageService` for backends (e.g. a Django monolith creating
//! conversations and posting booking notices), plus standard health checking and server
//! reflection on the same port.
//!
//! Each RPC runs the same [`crate::ops`] function as the NATS path; an `error` in the
//! response becomes a gRPC status with rich details (`google.rpc.ErrorInfo` carrying our
//! stable code, and `google.rpc.BadRequest` naming the field when one is to blame): the
//! mapping every gRPC server shares, `proto::grpc_status`. This door only translates.

use std::sync::Arc;
use std::time::Duration;

use proto::grpc_auth::{require_write, ApiKeys};
use proto::grpc_status::{require_id, status};
use proto::pb;
use proto::pb::message_service_server::{MessageService, MessageServiceServer};
use proto::pb::ChangeKind as K;
use tonic::{Request, Response, Status};

use crate::admission::{gates, Gate, Pass};
use crate::ops::{self, Answer};
use crate::state::Inner;

/// A response, or its `error` as a gRPC status.
fn answer<T: Answer>(resp: T) -> Result<Response<T>, Status> {
    match resp.error() {
        Some(e) => Err(status(e)),
        None => Ok(Response::new(resp)),
    }
}

/// The service.
pub(crate) struct MessageGrpc {
    pub(crate) inner: Arc<Inner>,
}

impl MessageGrpc {
    /// Takes `gate`'s slots, the bound the NATS door applies too, or refuses with
    /// `unavailable` quickly. (A call whose client leaves or whose `grpc-timeout` passes
    /// is dropped by the transport, its work with it.)
    async fn admit(&self, gate: Gate) -> Result<Pass, Status> {
        self.inner
            .admission
            .enter(gate)
            .await
            .map_err(|e| status(&e))
    }
}

#[tonic::async_trait]
impl MessageService for MessageGrpc {
    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        require_write(&request)?;
        let mut req = request.into_inner();
        // Only gateways name a socket to skip.
        req.origin_connection_id.clear();
        let _pass = self.admit(gates::SEND).await?;
        answer(ops::send(&self.inner, req).await)
    }

    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::CreateConversationResponse>, Status> {
        require_write(&request)?;
        let _pass = self.admit(gates::CREATE_CONVERSATION).await?;
        answer(ops::create_conversation(&self.inner, request.into_inner()).await)
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let req = request.into_inner();
        require_id("conversation_id", req.conversation_id)?;
        let _pass = self.admit(gates::GET_CONVERSATION).await?;
        answer(ops::get_conversation(&self.inner, req).await)
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        require_write(&request)?;
        let _pass = self.admit(gates::MARK_READ).await?;
        answer(ops::mark_read(&self.inner, request.into_inner()).await)
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let req = request.into_inner();
        require_id("user_id", req.user_id)?;
        require_id("conversation_id", req.conversation_id)?;
        let _pass = self.admit(gates::LIST_MESSAGES).await?;
        answer(ops::list_messages(&self.inner, req).await)
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let _pass = self.admit(gates::LIST_CONVERSATIONS).await?;
        answer(ops::list_conversations(&self.inner, request.into_inner()).await)
    }

    async fn update_participants(
        &self,
        request: Request<pb::UpdateParticipantsRequest>,
    ) -> Result<Response<pb::UpdateParticipantsResponse>, Status> {
        require_write(&request)?;
        let req = request.into_inner();
        // `actor_id` is 0 for the system: ops checks it against `as_system`.
        require_id("conversation_id", req.conversation_id)?;
        let _pass = self.admit(gates::UPDATE_PARTICIPANTS).await?;
        answer(ops::update_participants(&self.inner, req).await)
    }

    async fn set_participant_role(
        &self,
        request: Request<pb::SetParticipantRoleRequest>,
    ) -> Result<Response<pb::SetParticipantRoleResponse>, Status> {
        require_write(&request)?;
        let _pass = self.admit(gates::SET_PARTICIPANT_ROLE).await?;
        answer(ops::set_participant_role(&self.inner, request.into_inner()).await)
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let _pass = self.admit(gates::GET_MESSAGE).await?;
        answer(ops::get_message(&self.inner, request.into_inner()).await)
    }

    async fn get_unread_counts(
        &self,
        request: Request<pb::GetUnreadCountsRequest>,
    ) -> Result<Response<pb::GetUnreadCountsResponse>, Status> {
        let _pass = self.admit(gates::UNREAD_COUNTS).await?;
        answer(ops::unread_counts(&self.inner, request.into_inner()).await)
    }

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        self.change_rpc(
            request,
            |r| pb::ChangeMessageRequest {
                text: r.text,
                ..change(r.actor_id, r.message_id, K::Edited, r.as_system)
            },
            |c| pb::EditMessageResponse {
                result: Some(pb::edit_message_response::Result::Change(c)),
            },
        )
        .await
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        self.change_rpc(
            request,
            |r| change(r.actor_id, r.message_id, K::Deleted, r.as_system),
            |c| pb::DeleteMessageResponse {
                result: Some(pb::delete_message_response::Result::Change(c)),
            },
        )
        .await
    }

    async fn add_reaction(
        &self,
        request: Request<pb::AddReactionRequest>,
    ) -> Result<Response<pb::AddReactionResponse>, Status> {
        self.change_rpc(
            request,
            |r| pb::ChangeMessageRequest {
                emoji: r.emoji,
                ..change(r.user_id, r.message_id, K::ReactionAdded, false)
            },
            |c| pb::AddReactionResponse {
                result: Some(pb::add_reaction_response::Result::Change(c)),
            },
        )
        .await
    }

    async fn remove_reaction(
        &self,
        request: Request<pb::RemoveReactionRequest>,
    ) -> Result<Response<pb::RemoveReactionResponse>, Status> {
        self.change_rpc(
            request,
            |r| pb::ChangeMessageRequest {
                emoji: r.emoji,
                ..change(r.user_id, r.message_id, K::ReactionRemoved, false)
            },
            |c| pb::RemoveReactionResponse {
                result: Some(pb::remove_reaction_response::Result::Change(c)),
            },
        )
        .await
    }

    async fn pin_message(
        &self,
        request: Request<pb::PinMessageRequest>,
    ) -> Result<Response<pb::PinMessageResponse>, Status> {
        self.change_rpc(
            request,
            |r| {
                let kind = if r.pinned { K::Pinned } else { K::Unpinned };
                change(r.actor_id, r.message_id, kind, r.as_system)
            },
            |c| pb::PinMessageResponse {
                result: Some(pb::pin_message_response::Result::Change(c)),
            },
        )
        .await
    }

    async fn get_thread(
        &self,
        request: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let _pass = self.admit(gates::THREAD).await?;
        answer(ops::thread(&self.inner, request.into_inner()).await)
    }

    async fn list_pins(
        &self,
        request: Request<pb::ListPinsRequest>,
    ) -> Result<Response<pb::ListPinsResponse>, Status> {
        let _pass = self.admit(gates::PINS).await?;
        answer(ops::pins(&self.inner, request.into_inner()).await)
    }

    async fn get_message_reads(
        &self,
        request: Request<pb::GetMessageReadsRequest>,
    ) -> Result<Response<pb::GetMessageReadsResponse>, Status> {
        let _pass = self.admit(gates::MESSAGE_READS).await?;
        answer(ops::message_reads(&self.inner, request.into_inner()).await)
    }

    async fn create_upload(
        &self,
        request: Request<pb::CreateUploadRequest>,
    ) -> Result<Response<pb::CreateUploadResponse>, Status> {
        let _pass = self.admit(gates::CREATE_UPLOAD).await?;
        answer(ops::create_upload(&self.inner, request.into_inner()).await)
    }

    async fn get_attachment_url(
        &self,
        request: Request<pb::GetAttachmentUrlRequest>,
    ) -> Result<Response<pb::GetAttachmentUrlResponse>, Status> {
        let _pass = self.admit(gates::ATTACHMENT_URL).await?;
        answer(ops::attachment_url(&self.inner, request.into_inner()).await)
    }
}

impl MessageGrpc {
    /// Every change RPC: translated (`into`) into the one change request NATS carries too,
    /// run by `ops::change` under its gate, its change wrapped (`wrap`) in the RPC's answer.
    async fn change_rpc<Req, Resp>(
        &self,
        request: Request<Req>,
        into: impl FnOnce(Req) -> pb::ChangeMessageRequest,
        wrap: impl FnOnce(pb::MessageChange) -> Resp,
    ) -> Result<Response<Resp>, Status> {
        require_write(&request)?;
        let _pass = self.admit(gates::CHANGE_MESSAGE).await?;
        let resp = ops::change(&self.inner, into(request.into_inner())).await;
        match resp.result {
            Some(pb::change_message_response::Result::Change(c)) => Ok(Response::new(wrap(c))),
            Some(pb::change_message_response::Result::Error(e)) => Err(status(&e)),
            None => Err(Status::internal("empty change answer")),
        }
    }
}

/// A change request without text or emoji.
fn change(actor_id: i64, message_id: i64, kind: K, as_system: bool) -> pb::ChangeMessageRequest {
    pb::ChangeMessageRequest {
        actor_id,
        message_id,
        kind: kind as i32,
        as_system,
        ..Default::default()
    }
}

/// Serves MessageService, `grpc.health.v1.Health` and reflection until `stop` resolves.
/// Health follows the database: `NOT_SERVING` while it does not answer.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    inner: Arc<Inner>,
    keys: ApiKeys,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if keys.is_open() {
        tracing::warn!(
            "gRPC API is open: set {} to require API keys",
            proto::env::GRPC_API_KEYS
        );
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    let store = inner.store.clone();
    let health_task = tokio::spawn(async move {
        loop {
            if store.ping().await.is_ok() {
                reporter
                    .set_serving::<MessageServiceServer<MessageGrpc>>()
                    .await;
            } else {
                reporter
                    .set_not_serving::<MessageServiceServer<MessageGrpc>>()
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
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
    let svc = MessageServiceServer::with_interceptor(MessageGrpc { inner }, keys.interceptor());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let res = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    health_task.abort();
    if let Err(e) = res {
        tracing::error!(error = %e, "grpc server failed");
    }
}
