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
use crate::gate::{Caller, GateInner};

/// A [`CallError`] as a gRPC status with the matching code. The message travels in an HTTP/2
/// header, so a long one is cut (a header of tens of kilobytes resets the stream).
pub fn status_of(err: &CallError) -> Status {
    let message = err.message();
    let message = match message.char_indices().nth(MAX_STATUS_CHARS) {
        Some((cut, _)) => format!("{}… (cut from {} bytes)", &message[..cut], message.len()),
        None => message.to_owned(),
    };
    let mut status = Status::new(tonic::Code::from(err.code().grpc_code()), message);
    // A quota's refusal says when to try again: whole seconds, as HTTP's Retry-After, and
    // milliseconds for clients that can wait less.
    if let Some(wait) = err.retry_after() {
        let metadata = status.metadata_mut();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        metadata.insert("retry-after", secs.max(1).into());
        metadata.insert("retry-after-ms", (wait.as_millis().max(1) as u64).into());
    }
    status
}

/// Longest status message sent, in characters.
const MAX_STATUS_CHARS: usize = 2048;

/// The status a Register stream ends with when the gate stops.
fn shutting_down() -> Status {
    Status::unavailable("the gate is shutting down: reconnect to another gate")
}

/// The client's deadline for this call, from its `grpc-timeout` header (`<digits><unit>`, unit
/// one of `H M S m u n`); `None` when absent or unreadable.
fn client_timeout<T>(request: &Request<T>) -> Option<std::time::Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    // The spec allows at most eight digits.
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

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
    ) -> Result<Caller, CallError> {
        let remote: Option<SocketAddr> = goverse_tls::remote_addr(request);
        let identity = self.identity_at(request, client_id, remote).await?;
        Ok(Caller { identity, remote })
    }

    async fn identity_at<T>(
        &self,
        request: &Request<T>,
        client_id: &str,
        remote: Option<SocketAddr>,
    ) -> Result<Arc<ClientIdentity>, CallError> {
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
        let remote = goverse_tls::remote_addr(&request);
        let stream_slot = self
            .inner
            .quotas
            .admit_stream(remote.map(|r| r.ip()))
            .map_err(|e| status_of(&e))?;
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
            // The stream owns the registration: the client is unregistered when it ends (and
            // its slot under the address's stream limit is given back).
            let _ = (&guard, &stream_slot);
            Ok(message)
        });
        // At shutdown the stream ends with UNAVAILABLE rather than quietly: gRPC clients
        // (upstream's included) take that as "reconnect elsewhere", and fire their disconnect
        // callbacks, which a clean end does not.
        let stop = self.inner.streams_stop.clone();
        let stopped = stop.clone();
        let stream = futures::stream::once(async move { Ok(first) })
            .chain(pushes)
            .take_until(stop.cancelled_owned())
            .chain(futures::stream::iter([()]).filter_map(move |()| {
                let stopping = stopped.is_cancelled();
                async move { stopping.then(|| Err(shutting_down())) }
            }));
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
        let timeout = client_timeout(&request);
        let r = request.into_inner();
        let response = self
            .inner
            .call(&identity, &r.r#type, &r.id, &r.method, r.request, timeout)
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
        let timeout = client_timeout(&request);
        let r = request.into_inner();
        self.inner
            .create(&identity, &r.r#type, &r.id, timeout)
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
        let timeout = client_timeout(&request);
        let r = request.into_inner();
        self.inner
            .delete(&identity, &r.r#type, &r.id, timeout)
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
        let timeout = client_timeout(&request);
        let r = request.into_inner();
        let answer = self
            .inner
            .call_reliable(
                &identity,
                (&r.r#type, &r.id, &r.method),
                r.request,
                &r.call_id,
                timeout,
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
        let acceptor = goverse_transport::Acceptor::new(listener, limits, "gate gRPC");
        match self.inner.config.tls.clone() {
            Some(tls) => {
                let incoming = goverse_transport::tls_incoming(acceptor, tls.server);
                self.serve_grpc_incoming(incoming, shutdown).await
            }
            None => {
                self.serve_grpc_incoming(acceptor.into_incoming(), shutdown)
                    .await
            }
        }
    }

    async fn serve_grpc_incoming<IO>(
        &self,
        incoming: impl futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error>
    where
        IO: goverse_transport::Accepted,
    {
        let limits = self.inner.config.connection_limits;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::client_timeout;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("grpc-timeout", value.parse().unwrap());
        client_timeout(&request)
    }

    #[test]
    fn a_client_s_grpc_timeout_is_read_in_every_unit() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout_of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout_of("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout_of("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "5x", "-5S", "5 S"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
        assert_eq!(client_timeout(&tonic::Request::new(())), None);
    }
}
