//! `gate.GateService` over gRPC, wire-compatible with upstream clients, and the
//! `goverse.gate.v1.GateInfo` additions.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use goverse_core::ReliableStatus;
use goverse_core::{AnyMessage as _, CallError, ClientIdentity, ErrorCode};
use goverse_proto::gate::gate_service_server::{GateService, GateServiceServer};
use goverse_proto::gate::{
    CallObjectRequest, CallObjectResponse, CreateObjectRequest, CreateObjectResponse,
    DeleteObjectRequest, DeleteObjectResponse, Empty, RegisterResponse, ReliableCallObjectRequest,
    ReliableCallObjectResponse,
};
use goverse_proto::gate_info::gate_info_server::{GateInfo, GateInfoServer};
use goverse_proto::node::{DescribeRequest, DescribeResponse};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::Gate;
use crate::auth::Transport;
use crate::clients::Binding;
use crate::gate::GateInner;

/// A [`CallError`] as a gRPC status with the matching code. The message travels in an HTTP/2
/// header, so a long one is cut (a header of tens of kilobytes resets the stream).
pub fn status_of(err: &CallError) -> Status {
    let message = err.message();
    let message = match message.char_indices().nth(MAX_STATUS_CHARS) {
        Some((cut, _)) => format!("{}… (cut from {} bytes)", &message[..cut], message.len()),
        None => message.to_owned(),
    };
    Status::new(tonic::Code::from(err.code().grpc_code()), message)
}

/// Longest status message sent, in characters.
const MAX_STATUS_CHARS: usize = 2048;

pub(crate) struct GrpcGate {
    inner: Arc<GateInner>,
}

type RegisterStream = Pin<Box<dyn Stream<Item = Result<prost_types::Any, Status>> + Send>>;

impl GrpcGate {
    /// Who a call acts for: the client registered on this connection (named in `client_id`, or
    /// the connection's only client), otherwise an anonymous identity from the hook.
    async fn identity<T>(
        &self,
        request: &Request<T>,
        client_id: &str,
    ) -> Result<Arc<ClientIdentity>, CallError> {
        let remote: Option<SocketAddr> = request.remote_addr();
        let clients = &self.inner.clients;
        if !client_id.is_empty() {
            let Some(entry) = clients.get(client_id) else {
                return Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("client {client_id:?} is not registered at this gate"),
                ));
            };
            if entry.binding != Binding::Grpc(remote) || remote.is_none() {
                return Err(CallError::new(
                    ErrorCode::PermissionDenied,
                    format!("client {client_id:?} is not registered on this connection"),
                ));
            }
            return Ok(entry.identity.clone());
        }
        if let Some(entry) = remote.and_then(|r| clients.sole_client_of(r)) {
            return Ok(entry.identity.clone());
        }
        let headers = request.metadata().clone().into_headers();
        self.inner.anonymous(&headers, remote).await
    }
}

#[tonic::async_trait]
impl GateService for GrpcGate {
    type RegisterStream = RegisterStream;

    async fn register(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        let remote = request.remote_addr();
        let headers = request.metadata().clone().into_headers();
        let principal = self
            .inner
            .authorize(&headers, remote, Transport::GrpcRegister)
            .await
            .map_err(|e| status_of(&e))?;
        let registration = self.inner.register(principal, Binding::Grpc(remote));
        let first = RegisterResponse {
            client_id: registration.entry.identity.client_id().to_owned(),
        }
        .to_any();
        let (guard, rx) = registration.split();
        let pushes = ReceiverStream::new(rx).map(move |message| {
            // The stream owns the registration: the client is unregistered when it ends.
            let _ = &guard;
            Ok(message)
        });
        let stream = futures::stream::once(async move { Ok(first) })
            .chain(pushes)
            .take_until(self.inner.streams_stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn call_object(
        &self,
        request: Request<CallObjectRequest>,
    ) -> Result<Response<CallObjectResponse>, Status> {
        let identity = self
            .identity(&request, &request.get_ref().client_id)
            .await
            .map_err(|e| status_of(&e))?;
        let r = request.into_inner();
        let response = self
            .inner
            .call(&identity, &r.r#type, &r.id, &r.method, r.request)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(CallObjectResponse {
            response: Some(response),
        }))
    }

    async fn create_object(
        &self,
        request: Request<CreateObjectRequest>,
    ) -> Result<Response<CreateObjectResponse>, Status> {
        let identity = self
            .identity(&request, "")
            .await
            .map_err(|e| status_of(&e))?;
        let r = request.into_inner();
        self.inner
            .create(&identity, &r.r#type, &r.id)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(CreateObjectResponse { id: r.id }))
    }

    async fn delete_object(
        &self,
        request: Request<DeleteObjectRequest>,
    ) -> Result<Response<DeleteObjectResponse>, Status> {
        let identity = self
            .identity(&request, "")
            .await
            .map_err(|e| status_of(&e))?;
        let r = request.into_inner();
        self.inner
            .delete(&identity, &r.r#type, &r.id)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(DeleteObjectResponse {}))
    }

    async fn reliable_call_object(
        &self,
        request: Request<ReliableCallObjectRequest>,
    ) -> Result<Response<ReliableCallObjectResponse>, Status> {
        // Refusals travel in the response with status SKIPPED, as upstream's clients expect
        // (their `ReliableCallError.status` says whether a retry is safe); only an unknown
        // outcome (link lost, deadline) is a gRPC error, and a retry with the same call_id is
        // safe then too.
        let skipped = |err: CallError| {
            Ok(Response::new(ReliableCallObjectResponse {
                response: None,
                error: err.to_string(),
                status: ReliableStatus::Skipped.as_str().to_owned(),
            }))
        };
        let identity = match self.identity(&request, "").await {
            Ok(identity) => identity,
            Err(err) => return skipped(err),
        };
        let r = request.into_inner();
        let answer = self
            .inner
            .call_reliable(
                &identity, &r.r#type, &r.id, &r.method, r.request, &r.call_id,
            )
            .await
            .map_err(|e| status_of(&e))?;
        let status = answer.status.as_str().to_owned();
        Ok(Response::new(match answer.result {
            Ok(response) => ReliableCallObjectResponse {
                response: Some(response),
                error: String::new(),
                status,
            },
            Err(err) => ReliableCallObjectResponse {
                response: None,
                error: err.to_string(),
                status,
            },
        }))
    }
}

pub(crate) struct GrpcInfo {
    gate: Gate,
}

#[tonic::async_trait]
impl GateInfo for GrpcInfo {
    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        self.gate
            .inner
            .describe()
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }
}

impl Gate {
    /// The gate's gRPC services (`gate.GateService` and `goverse.gate.v1.GateInfo`), to mount on
    /// a tonic server of your own.
    pub fn grpc_routes(&self) -> tonic::service::Routes {
        let limit = self.inner.config.max_body_bytes;
        let gate = GateServiceServer::new(GrpcGate {
            inner: self.inner.clone(),
        })
        .max_decoding_message_size(limit);
        let info = GateInfoServer::new(GrpcInfo { gate: self.clone() });
        tonic::service::Routes::new(gate).add_service(info)
    }

    /// Serves the gRPC API on `listener` until `shutdown` completes; then ends the gate's client
    /// streams (Register and SSE; they would hold a graceful shutdown open) and returns.
    pub async fn serve_grpc(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let limits = self.inner.config.connection_limits;
        let incoming =
            goverse_transport::Acceptor::new(listener, limits, "gate gRPC").into_incoming();
        let stop = self.inner.streams_stop.clone();
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(15)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_max_pending_accept_reset_streams(Some(64))
            .http2_max_local_error_reset_streams(Some(1024))
            .layer(tower::util::MapResponseLayer::new(
                oversize_is_resource_exhausted as fn(_) -> _,
            ))
            .add_routes(self.grpc_routes())
            .serve_with_incoming_shutdown(incoming, {
                let stop = stop.clone();
                async move {
                    shutdown.await;
                    stop.cancel();
                }
            });
        // A stalled client cannot hold the stop past the drain deadline.
        goverse_transport::with_drain_deadline(served, stop, limits.drain_timeout, "gate gRPC")
            .await
            .unwrap_or(Ok(()))
    }
}

/// Calls one client connection may have in flight at once (gRPC clients multiplex every call
/// of a process over one connection; more wait in the client).
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest header list a client may send (room for bearer tokens and metadata).
pub(crate) const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// A request message over the size limit is `RESOURCE_EXHAUSTED` (8), as gRPC specifies and as
/// every other entry point of the gate answers an oversized request; the codec reports it as
/// `OUT_OF_RANGE` (11). The refusal comes back before any response message, so its status is in
/// the response headers.
fn oversize_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let oversize = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("decoded%20message%20length%20too%20large")
                    || m.contains("decoded message length too large")
            });
    if oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
