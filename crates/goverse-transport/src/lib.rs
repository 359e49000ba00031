//! The node protocol of GoVerse, both halves.
//!
//! A peer (a gate, later another node) holds one long-lived bidirectional gRPC stream to each
//! node it talks to. Requests are tagged with ids and written in batches (everything queued
//! when the transport is ready for more); responses come back tagged, in whatever order they
//! finish, batched the same way; pushes for the peer's clients travel on the node's half.
//!
//! - [`Handler`]: what a node offers its peers. The node implements it; this crate knows
//!   nothing else of the runtime.
//! - [`serve`]: the server half: a node's [`Handler`] on a listener, or on any stream of
//!   incoming connections ([`serve_incoming`]).
//! - [`Dialer`]: how links open connections: [`TcpDialer`], or [`MemoryNetwork`] (a network
//!   inside one process: the real protocol over in-memory pipes, for tests on paused time).
//! - [`NodeLink`]: the client half: a reconnecting link to one node, or an in-process link
//!   straight to a [`Handler`] in the same process (no socket, no encoding, same semantics).
//! - [`Router`]: a link to every node of the cluster, and each request sent to the node that
//!   serves its object by the watched shard map (held and sent again while its shard moves).
//! - [`Request`], [`Op`], [`Outcome`]: one request as both halves see it.

mod encode;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod io;
mod link;
mod listen;
mod request;
mod router;
mod server;
mod stats;
mod tls;
mod wire;

pub use handler::{Handler, Incoming};
pub use io::{Accepted, Dialer, Io, MemoryIncoming, MemoryNetwork, MemoryStream, TcpDialer};
pub use link::{
    LINK_IN_FLIGHT_LIMIT, LinkError, LinkEvents, NodeLink, probe_node, probe_node_over,
};
pub use listen::{Acceptor, ConnectionLimits, Guarded, Throttle, with_drain_deadline};
pub use request::{Op, Outcome, PEER_PUSH_BACKLOG, PeerRefused, PeerSink, PushRefused, Request};
pub use router::{Connector, InProcessNetwork, NetworkConnector, Router};
pub use server::{
    ServeError, constant_time_eq, serve, serve_incoming, serve_tls, serve_with_limits,
    serve_with_secret,
};
pub use stats::{TransportStats, stats_source};
pub use tls::{HandshakeLog, TlsDialer, accept_tls, tls_incoming};
/// What a server learns of an accepted connection (implement it for a connection type of your
/// own to serve on it).
pub use tonic::transport::server::Connected;
pub use wire::{failure_of, failure_to_error, reliable_from_proto, reliable_to_proto};

/// The request header a peer names its own address in (`host:port` of a gate). Pushes for
/// clients whose id starts with this address are sent on that peer's stream.
pub const PEER_ADDRESS_HEADER: &str = "goverse-peer-address";

/// The request header a peer proves it belongs to the cluster with: the cluster's shared
/// secret. A node serving with a secret refuses every peer without it.
pub const PEER_SECRET_HEADER: &str = "goverse-peer-secret";

/// Largest message either half accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most items written in one batch.
const MAX_BATCH: usize = 1024;
