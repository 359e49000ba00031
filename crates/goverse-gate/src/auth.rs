//! The hook through which an application authenticates clients and learns of disconnects.

use std::net::SocketAddr;

use async_trait::async_trait;
use goverse_core::{ClientIdentity, ErrorCode};

/// How a client reached the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The gRPC `Register` stream.
    GrpcRegister,
    /// The HTTP server-sent events stream.
    Sse,
    /// A single gRPC or HTTP call made without a registered client.
    Call,
}

/// What the hook sees of a connecting client.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    /// gRPC metadata or HTTP headers (`authorization`, cookies, custom headers).
    pub headers: &'a http::HeaderMap,
    /// The client's socket address, when known.
    pub remote: Option<SocketAddr>,
    /// Which entry point.
    pub transport: Transport,
}

/// Who the hook says the client is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The user; empty for anonymous clients.
    pub user_id: String,
    /// Roles objects can check with [`ClientIdentity::has_role`].
    pub roles: Vec<String>,
}

/// A refusal from the hook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    /// `Unauthenticated` (who are you?) or `PermissionDenied` (not you).
    pub code: ErrorCode,
    /// Shown to the client.
    pub message: String,
}

impl AuthError {
    /// The client did not prove who it is.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Unauthenticated,
            message: message.into(),
        }
    }

    /// The client is known but not allowed in.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::PermissionDenied,
            message: message.into(),
        }
    }
}

/// Application hook for client connections.
///
/// `authorize` runs when a client opens its Register or SSE stream, and for each call made
/// without a registered client. The principal it returns is bound to the connection: every call
/// the client makes carries it, and objects see it through `ObjectContext::client`, on any node.
#[async_trait]
pub trait GateEventHandler: Send + Sync + 'static {
    /// Decides who the client is, or refuses it.
    async fn authorize(&self, request: &ConnectRequest<'_>) -> Result<Principal, AuthError>;

    /// A registered client's stream ended (the client left, its connection broke or the gate is
    /// stopping).
    async fn on_disconnect(&self, _client: &ClientIdentity) {}
}

/// The default hook: every client is welcome, anonymously.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAnonymous;

#[async_trait]
impl GateEventHandler for AllowAnonymous {
    async fn authorize(&self, _request: &ConnectRequest<'_>) -> Result<Principal, AuthError> {
        Ok(Principal::default())
    }
}
