//! GoVerse: a distributed virtual-actor runtime.
//!
//! Write an object type in plain Rust, call it by ID; the runtime activates it on demand, runs its
//! methods in turns (`&mut self` methods one at a time, `&self` methods together), deactivates it
//! when idle and persists its state.
//!
//! ```no_run
//! use goverse::prelude::*;
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! pub struct Counter {
//!     value: i32,
//! }
//!
//! impl Object for Counter {
//!     json_state!(); // persist as JSON; omit for in-memory-only objects
//! }
//!
//! #[goverse::object]
//! impl Counter {
//!     #[method]
//!     async fn add(&mut self, request: Int32Value) -> Result<Int32Value, ObjectError> {
//!         self.value += request.value;
//!         Ok(Int32Value { value: self.value })
//!     }
//!
//!     #[method]
//!     async fn get(&self, _request: Empty) -> Result<Int32Value, ObjectError> {
//!         Ok(Int32Value { value: self.value })
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let node = Node::builder(NodeConfig::default()).register::<Counter>().start().await?;
//! let total = CounterRef::new("my-counter").add(&node, Int32Value { value: 5 }).await?;
//! assert_eq!(total.value, 5);
//! node.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! The guarantees (turns, ordering, reentrancy, lifecycle, failures) are in `docs/` of the
//! repository.

pub use goverse_core::{
    AnyMessage, CallError, ChainId, ClientIdentity, DEFAULT_SHARD_COUNT, ErrorCode, IdError,
    InvalidSetting, MAX_OBJECT_ID_CHARS, MAX_SHARD_COUNT, Message, NodeAddr, ObjectId,
    ObjectIdKind, Payload, Route, ShardCountError, ShardId, TYPE_URL_PREFIX, check_shard_count,
    fnv1a_32, gate_of_client, shard_of, wkt,
};
pub use goverse_macros::{method, object};
pub use goverse_node::{
    AutoLoad, AutoLoadScope, CallOptions, Caller, Dispatch, Durability, MAX_CALL_ID_CHARS,
    MethodKind, MethodSpec, Node, NodeBuilder, NodeConfig, NodeError, NodeStats,
    NotReady as NodeNotReady, Object, ObjectContext, ObjectError, ReliableOutcome, ReliableStatus,
    ShutdownReport, TypeInfo, TypeOptions, from_json_state, json_state, to_json_state,
};
/// The node service: serve a node's objects to gates (`goverse::serve(node, listener, shutdown)`).
pub use goverse_node::{ServeError, serve, serve_incoming};
/// Limits on a listening port's connections (`NodeConfig::connection_limits`,
/// `GateConfig::connection_limits`).
pub use goverse_transport::ConnectionLimits;

/// The gate: upstream-compatible gRPC, HTTP/JSON and SSE for clients, with an authorisation hook
/// and access rules. Run `goverse gate`, or embed one to install your own [`gate::GateEventHandler`].
pub mod gate {
    pub use goverse_gate::*;
}

/// A client of a cluster through its gates: failover across gates, the typed stubs and calls
/// by name, reliable calls retried with their call id, pushes as a stream (see
/// [`goverse_client`]).
pub mod client {
    pub use goverse_client::*;
}

pub mod config;
/// TLS: certificates from PEM files, reloaded on SIGHUP or change (`goverse-tls`).
pub use goverse_tls as tls;
pub mod run;

/// The inspector: a web UI and a JSON + SSE API over a cluster, with operators' moves, pins
/// and drains (`goverse inspector`; see [`goverse_inspector`]).
pub mod inspector {
    pub use goverse_inspector::*;
}

/// Metrics: the registry nodes and gates add theirs to (`NodeBuilder::metrics`,
/// `GateConfig::metrics`), served as Prometheus text at `/metrics`; an application registers
/// its own `prometheus-client` metrics with [`metrics::Registry::with_prometheus`].
pub mod metrics {
    pub use goverse_core::metrics::*;
}

/// The node protocol: links to nodes, and the router that sends each call to the node serving
/// its object by the cluster's shard map.
pub mod transport {
    pub use goverse_transport::{
        Accepted, Connected, Connector, Dialer, Handler, InProcessNetwork, Io, LinkEvents,
        MemoryIncoming, MemoryNetwork, MemoryStream, NetworkConnector, NodeLink, Router, TcpDialer,
        probe_node, probe_node_over,
    };
}
/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM, the two ways a
/// terminal and a service manager stop a node or gate. A `main` serving a node awaits it, then
/// shuts the node down so every object is saved.
///
/// The signals are watched from the call on, not from the first poll: call it before saying
/// the process is ready, so a stop sent right after is never met by the default action (the
/// process killed without saving).
pub fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let watched = signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
        async move {
            match watched {
                Ok((mut term, mut interrupt)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot watch SIGTERM; stop with Ctrl-C");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The prost version GoVerse messages are built with.
pub use prost;

/// Object state storage: the [`persistence::ObjectStore`] trait and its SQLite, PostgreSQL and
/// in-memory implementations.
pub mod persistence {
    pub use goverse_persistence::{
        Fence, MemoryStore, ObjectStore, PostgresConfig, PostgresStore, Refusal, ReliableCall,
        ReliableResult, SCHEMA_VERSION, SqliteConfig, SqliteStore, StateChange, StoreError,
        StoreStatus, StoredObject, Synchronous, Write,
    };
}

/// Cluster coordination.
pub mod cluster {
    pub use goverse_cluster::{
        CasOutcome, ClusterError, ClusterMap, ClusterStore, DEFAULT_PREFIX, EtcdClusterStore,
        EtcdConfig, Expect, KeyValue, Keys, LeaseId, MAX_TXN_OPS, MapView, MemoryClusterStore,
        Move, MoveReason, Placement, PlacementConfig, ReachReport, ReadRecord, RecordWrite,
        Revision, Serving, ShardRecord, Stability, TxnOp, TxnOutcome, TxnWrite, WatchEvent,
        WatchStream, claims, preferred, releases, serving_nodes, settle_shard_count,
    };
}

/// Everything an object type and its callers need: `use goverse::prelude::*;`.
pub mod prelude {
    pub use crate::wkt::{
        BoolValue, BytesValue, DoubleValue, Empty, FloatValue, Int32Value, Int64Value, StringValue,
        UInt32Value, UInt64Value,
    };
    pub use crate::{
        CallError, CallOptions, Caller, ClientIdentity, Durability, ErrorCode, Node, NodeConfig,
        Object, ObjectContext, ObjectError, ObjectId, Payload, ReliableOutcome, ReliableStatus,
        TypeOptions, json_state, method, object,
    };
}

/// Support for code generated by `#[goverse::object]`. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use goverse_core::{CallError, ObjectId, Payload, message_name};
    pub use goverse_node::__private::*;
    pub use goverse_node::{Caller, Dispatch, MethodKind, MethodSpec, ObjectContext};
    pub use prost::Name;
    pub use std::sync::Arc;
    pub use std::time::Duration;
}
