//! Cluster coordination for GoVerse.
//!
//! [`ClusterStore`] is a small key/value contract shaped after etcd: keys with revisions, leases
//! that expire, compare-and-set, and prefix watches that resume from a revision. The node uses it
//! to register itself on a lease and to claim shards with compare-and-set, recording an epoch per
//! shard ([`ShardRecord`]) that fences persisted writes. Every key lives under one prefix
//! ([`Keys`], `/goverse` by default).
//!
//! The decisions over the map are pure and live here too: [`Placement`] (where shards should
//! live), [`claims`] (which free shards a node takes), [`serving_nodes`] (which registered nodes
//! may hold shards), [`plan`] (what one node does about the map) and [`Leader`] (when the leader
//! places), and [`LeasePolicy`] (when a registered process renews, fences and rejoins; nodes
//! and gates both run it through [`keep_lease`]). Operators change placement through
//! [`Operator`] (move, pin, drain).
//!
//! Two implementations keep the same contract, checked by one conformance suite:
//! [`MemoryClusterStore`] (the embedded default, on tokio time) and [`EtcdClusterStore`] (etcd
//! 3.4+ over its v3 gRPC API, every configured endpoint used).

mod admin;
mod claims;
mod etcd;
mod lease;
mod membership;
mod memory;
mod placement;
mod reach;
mod shardmap;
mod view;

#[cfg(test)]
mod conformance;

pub use admin::{AdminError, Operator};
pub use claims::{ReadRecord, RecordWrite, claims, preferred, releases};
pub use etcd::{EtcdClusterStore, EtcdConfig};
pub use lease::{BoxFuture, LeaseAction, LeaseHolder, LeasePolicy, keep_lease, serving_window};
pub use membership::{Holding, Leader, LeaderConfig, NodePlan, plan};
pub use memory::MemoryClusterStore;
pub use placement::{Move, MoveReason, Placement, PlacementConfig};
pub use reach::{ReachReport, Serving, serving_nodes};
pub use shardmap::{DEFAULT_PREFIX, Keys, ProcessInfo, ShardRecord};
pub use view::{ClusterMap, MapView, Stability, settle_shard_count};

/// The most writes one [`ClusterStore::transact`] call may carry (etcd's default
/// `--max-txn-ops`). Larger batches are split by the caller into several transactions.
pub const MAX_TXN_OPS: usize = 128;

use std::time::Duration;

use async_trait::async_trait;
use goverse_core::InvalidSetting;
use tokio::sync::mpsc;

/// A store-wide revision: every mutation gets a larger one.
pub type Revision = i64;

/// A lease: keys attached to it vanish when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the write that created the key.
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to.
    pub lease: Option<LeaseId>,
}

/// What compare-and-set expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist with this mod revision.
    ModRevision(Revision),
}

/// The outcome of compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write happened at this revision.
    Applied(Revision),
    /// The expectation failed; this is what the key holds now.
    Conflict(Option<KeyValue>),
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was written.
    Put(KeyValue),
    /// The key was deleted (explicitly or by lease expiry) at this revision.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        mod_revision: Revision,
    },
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Self::Put(kv) => kv.mod_revision,
            Self::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// One write of a [`ClusterStore::transact`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnWrite {
    /// The key written.
    pub key: String,
    /// What the key must hold for the batch to apply; `None`: anything.
    pub expect: Option<Expect>,
    /// The change.
    pub op: TxnOp,
}

/// What a [`TxnWrite`] does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes the value, attached to the lease if one is given.
    Put {
        /// The new value.
        value: Vec<u8>,
        /// The lease the key is attached to.
        lease: Option<LeaseId>,
    },
    /// Deletes the key (a no-op when it is absent).
    Delete,
}

/// The outcome of [`ClusterStore::transact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every write happened, all at this one revision.
    Applied(Revision),
    /// Some expectation failed and nothing was written; what each written key holds now, in
    /// the order of the writes.
    Conflict(Vec<Option<KeyValue>>),
}

/// Events of one watch, in revision order. Ends when the store goes away, or when the store
/// can no longer replay what the watcher missed (its history was compacted while the watch was
/// reconnecting): the watcher then lists the prefix again and watches from there.
pub type WatchStream = mpsc::UnboundedReceiver<WatchEvent>;

/// A record under the cluster's prefix that cannot be read: its key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct BadRecord {
    /// The record's key (or, for a shard record, `shard N`).
    pub key: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl BadRecord {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A cluster key prefix that cannot be used (see [`Keys::new`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cluster key prefix {0:?} must start with '/', not end with '/', and hold no whitespace \
     (e.g. \"/goverse\")"
)]
pub struct BadPrefix(pub String);

/// Why the cluster's map cannot be read or this process cannot take part in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The cluster store failed (`what` says which step).
    #[error("cannot {what}: {cause}")]
    Store {
        /// The step that failed (`read the cluster map`).
        what: &'static str,
        /// The store's error.
        cause: ClusterError,
    },
    /// A record cannot be decoded.
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
    /// The cluster has another shard count than this process is configured with; nothing was
    /// written.
    #[error(
        "the cluster under {prefix} has {recorded} shards ({how}) and this process is configured \
         with {configured}: every node and gate of a cluster needs the same count (set \
         cluster.shards to {recorded}); nothing was written"
    )]
    ShardCountMismatch {
        /// The cluster's key prefix.
        prefix: String,
        /// The count the cluster has.
        recorded: u32,
        /// The count this process has.
        configured: u32,
        /// How the cluster's count is known (`recorded when it formed`, `a full map`).
        how: &'static str,
    },
    /// The cluster has records past this process's shard count and no recorded count.
    #[error(
        "the cluster under {prefix} holds a record for shard {highest}, past this process's \
         {configured} shards, and has no recorded shard count: if {configured} is right, \
         `goverse cluster repair` removes the records past it; nothing was written"
    )]
    RecordsPastCount {
        /// The cluster's key prefix.
        prefix: String,
        /// The highest shard with a record.
        highest: u32,
        /// The count this process has.
        configured: u32,
    },
}

impl MapError {
    pub(crate) fn store(what: &'static str) -> impl Fn(ClusterError) -> Self + Copy {
        move |cause| Self::Store { what, cause }
    }
}

/// Why a cluster-store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The lease is unknown: it expired or was revoked.
    #[error("lease {0} expired or revoked")]
    LeaseExpired(i64),
    /// The watch asked for revisions the store no longer keeps.
    #[error("revision {requested} compacted (oldest kept is {oldest})")]
    Compacted {
        /// What was asked for.
        requested: Revision,
        /// The oldest revision still replayable.
        oldest: Revision,
    },
    /// The store could not be reached.
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request as malformed or too large (the text says which).
    #[error("cluster store refused the request: {0}")]
    Rejected(String),
    /// The store's configuration cannot be used; nothing was tried.
    #[error("invalid cluster store configuration: {0}")]
    Config(InvalidSetting),
}

/// The coordination store: etcd in a cluster, [`MemoryClusterStore`] embedded.
#[async_trait]
pub trait ClusterStore: Send + Sync + std::fmt::Debug + 'static {
    /// Watches that broke and were taken up again inside the store: (resumed, attempts that
    /// failed and were retried). Stores whose watches never break say (0, 0).
    fn watch_reconnections(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Grants a lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, ClusterError>;
    /// Renews a lease for another ttl.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), ClusterError>;
    /// Ends a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), ClusterError>;
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, ClusterError>;
    /// Every key under `prefix`, in key order, with the store revision they were read at.
    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), ClusterError>;
    /// Writes a key unconditionally.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, ClusterError>;
    /// Writes a key only if it matches `expect`.
    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, ClusterError>;
    /// Applies every write or none: all expectations are checked and all writes land at one
    /// revision, atomically. At most [`MAX_TXN_OPS`] writes, each key at most once.
    async fn transact(&self, writes: &[TxnWrite]) -> Result<TxnOutcome, ClusterError>;
    /// Deletes a key; `false` when it did not exist.
    async fn delete(&self, key: &str) -> Result<bool, ClusterError>;
    /// Changes under `prefix` with revision greater than `after`.
    async fn watch_prefix(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<WatchStream, ClusterError>;
}

/// Refuses a batch no store may apply: too many writes, or one key written twice.
pub(crate) fn check_batch(writes: &[TxnWrite]) -> Result<(), ClusterError> {
    if writes.len() > MAX_TXN_OPS {
        return Err(ClusterError::Rejected(format!(
            "a transaction carries {} writes, more than the {MAX_TXN_OPS} allowed",
            writes.len()
        )));
    }
    let mut keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(ClusterError::Rejected(format!(
            "key {:?} is written twice in one transaction",
            pair[0]
        )));
    }
    Ok(())
}
