//! The GoVerse gate: how clients reach objects.
//!
//! A gate is a separate process (or a component of one) linked to a node by the node service's
//! batched stream. It serves:
//!
//! - gRPC `gate.GateService`, wire-compatible with upstream GoVerse clients (Register push
//!   stream, CallObject, CreateObject, DeleteObject, ReliableCallObject), plus
//!   `goverse.gate.v1.GateInfo` (type descriptors for tools);
//! - HTTP with upstream's routes and JSON shapes (`{"request": "<base64 Any>"}`), plain
//!   protobuf-JSON bodies, and a server-sent events stream for pushes that stays open.
//!
//! Identity comes from a [`GateEventHandler`] at connect time and is bound to the connection (a
//! gRPC connection, or an HTTP token handed out on the events stream); it is never taken from a
//! request field. Access and lifecycle [`rules`] are checked on every request. Pushes from
//! objects reach clients through bounded per-client buffers; drops are counted and logged.
//!
//! Layout: `gate` (core: identity, rules, routing to the node over a `goverse-transport` link),
//! `grpc`, `http`, `clients` (registry and push delivery), [`codec`] (JSON ⇄ protobuf),
//! [`rules`]. The gate links no runtime and no store.

mod auth;
mod clients;
pub mod codec;
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod grpc;
mod http;
mod ops;
mod pages;
mod quota;
mod registration;
/// Access and lifecycle rules (`object_access_rules`, `object_lifecycle_rules`): the gate
/// checks every client request against them, and nodes check again what gates send.
pub mod rules {
    pub use goverse_core::rules::*;
}
mod serve;

pub use auth::{AllowAnonymous, AuthError, ConnectRequest, GateEventHandler, Principal, Transport};
pub use gate::{ClusterNetwork, Gate, GateConfig, GateError, GateStats, NotReady};
pub use grpc::status_of;
pub use http::{
    CLIENT_ID_HEADER, CLIENT_TOKEN_HEADER, IDEMPOTENCY_KEY_HEADER, RELIABLE_STATUS_HEADER,
};
pub use ops::{
    ReadyCheck, authorised, ops_router, profiling_router, serve_router, serve_router_tls,
    unauthorised,
};
pub use pages::{PageFile, pages_router};
pub use quota::{MethodQuota, QuotaConfig, Rate};
pub use registration::RegisterError;
pub use serve::GateServeError;
