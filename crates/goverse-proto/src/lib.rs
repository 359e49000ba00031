//! Protobuf messages and gRPC services, generated at build time from `proto/`.
//!
//! - [`gate`]: the client-facing `gate.GateService`, wire-compatible with upstream GoVerse
//!   (same package, messages and field numbers), so its Go and Python clients work unchanged.
//! - [`node`]: `goverse.node.v1.NodeService`, one long-lived bidirectional stream per peer with
//!   id-tagged, batched requests and responses, plus pushes to clients.
//! - [`gate_info`]: GoVerse's own additions to a gate's port (type descriptors for tools).
//! - [`upstream`]: upstream's node service `goverse.Goverse`, of which nodes answer `Status`
//!   and `ListObjects`.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    missing_debug_implementations
)]

/// The upstream-compatible client API (`package gate`).
pub mod gate {
    tonic::include_proto!("gate");
}

/// GoVerse's own packages, nested as their protobuf names so generated cross-references resolve;
/// the package `goverse` itself is upstream's node service.
mod goverse {
    tonic::include_proto!("goverse");

    pub mod node {
        pub mod v1 {
            tonic::include_proto!("goverse.node.v1");
        }
    }
    pub mod gate {
        pub mod v1 {
            tonic::include_proto!("goverse.gate.v1");
        }
    }
}

/// The node service (`package goverse.node.v1`).
pub use goverse::node::v1 as node;

/// Additions to the gate's gRPC port (`package goverse.gate.v1`).
pub use goverse::gate::v1 as gate_info;

/// Upstream GoVerse's node service (`package goverse`, service `Goverse`): the read-only calls
/// its tools make to nodes, `Status` and `ListObjects`, with its messages and field numbers.
pub mod upstream {
    pub use super::goverse::{
        Empty, ListObjectsResponse, ObjectInfo, StatusResponse, goverse_client, goverse_server,
    };
}
