//! The vocabulary every GoVerse crate shares, with no I/O.
//!
//! - [`ObjectId`], [`ShardId`], [`NodeAddr`], [`ChainId`]: identifiers, parsed the way upstream
//!   GoVerse parses them (`plain-id`, `shard#N/name`, `host:port/name`).
//! - [`Route`]: the one rule for where a call goes, shard N or a pinned node, from one parse of
//!   the ID; the shard is FNV-1a 32-bit of the object ID modulo the shard count, identical to
//!   upstream so the same IDs land on the same shards ([`shard_of`]).
//! - [`CallError`] and [`ErrorCode`]: the one error vocabulary, mapped to gRPC and HTTP status in
//!   one place ([`ErrorCode::grpc_code`], [`ErrorCode::http_status`]).
//! - [`Payload`] and [`Message`]: how requests and responses travel, typed inside a process and as
//!   `google.protobuf.Any` on the wire.
//! - [`ClientIdentity`]: who a call acts for, as a gate authenticated it.
//! - [`ReliableOutcome`] and [`ReliableStatus`]: how a reliable call ended (SUCCESS, FAILED,
//!   SKIPPED, as upstream's clients read them).
//! - [`RemoteCaller`]: what generated stubs call through outside a node (a gate client).
//! - [`metrics`]: the registry components add their metrics to, and the cheap atomics they
//!   record into.
//! - [`wkt`]: the protobuf well-known wrapper messages (`Int32Value`, `Empty`, ...).

mod error;
mod id;
mod identity;
mod message;
pub mod metrics;
mod reliable;
mod remote;
pub mod rules;
mod setting;
mod shard;
pub mod wkt;

pub use error::{CallError, Clipped, ErrorCode};
pub use id::{ChainId, IdError, MAX_OBJECT_ID_CHARS, NodeAddr, ObjectId, ObjectIdKind, kind_of};
pub use identity::{ClientIdentity, gate_of_client};
pub use message::{
    AnyMessage, Message, Payload, TYPE_URL_PREFIX, message_name, message_type_url, type_name_of_url,
};
pub use reliable::{MAX_CALL_ID_CHARS, ReliableOutcome, ReliableStatus};
pub use remote::{RemoteAnswer, RemoteCall, RemoteCaller};
pub use setting::{InvalidSetting, ShardCountError};
pub use shard::{
    DEFAULT_SHARD_COUNT, MAX_SHARD_COUNT, Route, ShardId, check_shard_count, fnv1a_32, shard_of,
};
