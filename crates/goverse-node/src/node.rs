//! The node's state and its handle: what a node holds (types, directory, store link,
//! membership, router, lifecycle, counters) and the public [`Node`] API over it. The work is in
//! the modules by role: `calls` and `forward` (the call path), `background`, `shutdown`, `build`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use goverse_cluster::MapError;
use goverse_core::rules::RuleError;
use goverse_core::{
    CallError, ChainId, InvalidSetting, Message, NodeAddr, ObjectId, Payload, ShardId, shard_of,
};
use goverse_persistence::{Fence, StoreError};
use goverse_transport::Router;

use crate::autoload::AutoLoaded;
use crate::directory::ShardDirectory;
use crate::host::{CallScope, Host, MethodRef, deadline_for};
use crate::lifecycle::{Lifecycle, Phase};
use crate::membership::{JoinError, Membership, NotReady};
use crate::metrics::{CallMetrics, ClusterCounters};
use crate::push::PushHub;
use crate::registry::{TypeEntry, TypeInfo};
use crate::store::StoreLink;
use crate::{CallOptions, NodeConfig};
use goverse_core::ReliableOutcome;

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid node configuration: {0}")]
    Config(InvalidSetting),
    /// An access or lifecycle rule does not compile.
    #[error("invalid rule: {0}")]
    Rule(RuleError),
    /// The cluster's map cannot be read, or has another shard count.
    #[error("cannot join the cluster: {0}")]
    Cluster(MapError),
    /// The node could not register or claim its shards.
    #[error("cannot join the cluster: {0}")]
    Join(JoinError),
    /// Two types registered under one name.
    #[error("object type {0:?} is registered twice")]
    DuplicateType(&'static str),
    /// The object store failed its start check (unreachable, wrong schema, read-only, damaged).
    #[error("the object store cannot be used: {store}: {cause}")]
    Store {
        /// The store, as it describes itself.
        store: String,
        /// What its check found.
        cause: StoreError,
    },
}

// Each variant shows its cause in its text, so none is also a `source` (a chain printer would
// repeat it): the conversions are written out.
impl From<InvalidSetting> for NodeError {
    fn from(err: InvalidSetting) -> Self {
        Self::Config(err)
    }
}

impl From<RuleError> for NodeError {
    fn from(err: RuleError) -> Self {
        Self::Rule(err)
    }
}

impl From<MapError> for NodeError {
    fn from(err: MapError) -> Self {
        Self::Cluster(err)
    }
}

impl From<JoinError> for NodeError {
    fn from(err: JoinError) -> Self {
        Self::Join(err)
    }
}

/// Counters describing what a node has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Activations live now.
    pub active_objects: u64,
    /// Activations started since the node started.
    pub activations: u64,
    /// Activations that failed (load error, `on_activate` error or panic).
    pub activation_failures: u64,
    /// Activations closed (idle, delete, shutdown, discarded after a panic).
    pub deactivations: u64,
    /// Successful state saves.
    pub saves: u64,
    /// Failed state saves (the state stays in memory and is retried).
    pub save_failures: u64,
    /// Store transactions committed (each carries every write queued when it started).
    pub commits: u64,
    /// Writes refused because the shard's epoch in the store had moved on.
    pub fence_refusals: u64,
    /// Writes the store refused for what they held (found by committing a failed batch in
    /// parts, so the other writes of the batch still committed); each is named in the log.
    pub unsaveable_writes: u64,
    /// Reliable calls answered (run now, or answered from an earlier attempt's record).
    pub reliable_calls: u64,
    /// Shards this node serves now.
    pub owned_shards: u64,
    /// Pushes handed to gate streams.
    pub pushes_sent: u64,
    /// Pushes dropped because their gate's stream was gone or too far behind.
    pub pushes_dropped: u64,
}

/// What [`Node::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Activations closed.
    pub deactivated: u64,
    /// States saved now (changed since their last save).
    pub saved: u64,
    /// Persistent objects whose state was saved before (unchanged since): nothing to do.
    pub already_saved: u64,
    /// States that could not be saved before the grace period ran out.
    pub unsaved: u64,
}

impl fmt::Display for ShutdownReport {
    /// `3 objects closed: 1 saved now, 2 saved before, 0 unsaved`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} objects closed: {} saved now, {} saved before, {} unsaved",
            self.deactivated, self.saved, self.already_saved, self.unsaved
        )
    }
}

/// On cache lines of their own: bumped on every activation, and read by nobody on the call path.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub(crate) activations: AtomicU64,
    pub(crate) activation_failures: AtomicU64,
    pub(crate) deactivations: AtomicU64,
    pub(crate) saves: AtomicU64,
    pub(crate) save_failures: AtomicU64,
    pub(crate) reliable_calls: AtomicU64,
    pub(crate) reliable_failed: AtomicU64,
    pub(crate) reliable_skipped: AtomicU64,
}

impl Counters {
    /// Counts a reliable call's outcome.
    pub(crate) fn reliable(&self, outcome: &goverse_core::ReliableOutcome) {
        self.reliable_calls.fetch_add(1, Ordering::Relaxed);
        match outcome {
            ReliableOutcome::Success(_) => {}
            ReliableOutcome::Failed(_) => {
                self.reliable_failed.fetch_add(1, Ordering::Relaxed);
            }
            ReliableOutcome::Skipped(_) => {
                self.reliable_skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub(crate) struct NodeInner {
    pub(crate) config: NodeConfig,
    pub(crate) address: NodeAddr,
    pub(crate) registry: FastMap<&'static str, Box<dyn TypeEntry>>,
    /// Which shards this node serves, and their activations.
    pub(crate) directory: Arc<ShardDirectory>,
    pub(crate) store: Option<StoreLink>,
    pub(crate) membership: Arc<Membership>,
    /// Sends calls for objects other nodes serve to them (set once the node has started).
    pub(crate) router: std::sync::OnceLock<Router>,
    /// Phase, cancellation tree and task trackers.
    pub(crate) lifecycle: Lifecycle,
    pub(crate) clock: tokio::time::Instant,
    pub(crate) counters: Counters,
    pub(crate) push: PushHub,
    pub(crate) descriptors: Vec<u8>,
    /// The objects this node keeps alive (`NodeConfig::auto_load`).
    pub(crate) auto_loaded: AutoLoaded,
    /// Wakes the auto-loader (an auto-load object was deleted).
    pub(crate) auto_load_wake: tokio::sync::Notify,
    /// The access and lifecycle rules, checked again for what gates send for their clients;
    /// `None` with no rules configured (the node leaves the judging to its gates).
    pub(crate) client_rules: Option<goverse_core::rules::Rules>,
    /// Per-call figures, recorded where calls run.
    pub(crate) call_metrics: CallMetrics,
    /// Membership, store and shutdown figures.
    pub(crate) cluster_counters: Arc<ClusterCounters>,
    /// What the registry scrapes (it holds only a weak reference).
    pub(crate) metrics_source: Arc<dyn goverse_core::metrics::Source>,
    /// The registry the node's figures are scraped from.
    pub(crate) metrics: goverse_core::metrics::Registry,
}

impl fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl NodeInner {
    pub(crate) fn push(&self) -> &PushHub {
        &self.push
    }

    pub(crate) fn descriptors(&self) -> &[u8] {
        &self.descriptors
    }

    pub(crate) fn address(&self) -> &NodeAddr {
        &self.address
    }

    pub(crate) fn shard_count(&self) -> u32 {
        self.config.shard_count
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.config.call_timeout
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Reliable calls answered, by outcome.
    pub(crate) fn reliable_outcomes(&self) -> [(&'static str, u64); 3] {
        let all = self.counters.reliable_calls.load(Ordering::Relaxed);
        let failed = self.counters.reliable_failed.load(Ordering::Relaxed);
        let skipped = self.counters.reliable_skipped.load(Ordering::Relaxed);
        [
            ("success", all.saturating_sub(failed + skipped)),
            ("failed", failed),
            ("skipped", skipped),
        ]
    }

    pub(crate) fn stats(&self) -> NodeStats {
        let (active, owned) = self.directory.counts();
        let (pushes_sent, pushes_dropped) = self.push.totals();
        NodeStats {
            active_objects: active,
            activations: self.counters.activations.load(Ordering::Relaxed),
            activation_failures: self.counters.activation_failures.load(Ordering::Relaxed),
            deactivations: self.counters.deactivations.load(Ordering::Relaxed),
            saves: self.counters.saves.load(Ordering::Relaxed),
            save_failures: self.counters.save_failures.load(Ordering::Relaxed),
            commits: self
                .store
                .as_ref()
                .map_or(0, |s| s.counters.commits.load(Ordering::Relaxed)),
            fence_refusals: self
                .store
                .as_ref()
                .map_or(0, |s| s.counters.fence_refusals.load(Ordering::Relaxed)),
            unsaveable_writes: self
                .store
                .as_ref()
                .map_or(0, |s| s.counters.unsaveable.load(Ordering::Relaxed)),
            reliable_calls: self.counters.reliable_calls.load(Ordering::Relaxed),
            owned_shards: owned,
            pushes_sent,
            pushes_dropped,
        }
    }
}

impl Host for NodeInner {
    fn call_timeout(&self) -> Duration {
        self.config.call_timeout
    }

    fn store(&self) -> Option<&StoreLink> {
        self.store.as_ref()
    }

    fn fence(&self, shard: ShardId) -> Result<Fence, CallError> {
        self.directory.fence(shard)
    }

    fn detach(&self, shard: ShardId, id: &ObjectId, serial: u64) {
        if self.directory.remove(shard, id, serial) {
            self.counters.deactivations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_saves(&self, n: u64) {
        self.counters.saves.fetch_add(n, Ordering::Relaxed);
    }

    fn spawn(&self, task: futures::future::BoxFuture<'static, ()>) {
        self.lifecycle.tasks.spawn(task);
    }

    fn push(&self) -> &PushHub {
        &self.push
    }

    fn call_object<'a>(
        self: Arc<Self>,
        type_name: &'a str,
        id: &'a ObjectId,
        method: MethodRef<'a>,
        request: Payload,
        scope: CallScope,
    ) -> futures::future::BoxFuture<'a, Result<Payload, CallError>> {
        Box::pin(async move { self.invoke(type_name, id, method, request, scope).await })
    }

    fn call_object_reliable<'a>(
        self: Arc<Self>,
        type_name: &'a str,
        id: &'a ObjectId,
        method: MethodRef<'a>,
        call_id: &'a str,
        request: Payload,
        scope: CallScope,
    ) -> futures::future::BoxFuture<'a, Result<ReliableOutcome, CallError>> {
        Box::pin(async move {
            self.invoke_reliable(type_name, id, method, call_id, request, scope)
                .await
        })
    }
}

/// A running node: a cheap, cloneable handle.
///
/// Calls go through generated `…Ref` stubs (typed, no encoding) or [`Node::call`] (by type and
/// method name, with a [`Payload`]). Dropping the handles does not stop the node: call
/// [`Node::shutdown`], which saves every object's state.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.inner, f)
    }
}

impl Node {
    pub(crate) fn from_inner(inner: Arc<NodeInner>) -> Self {
        Self { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<NodeInner> {
        &self.inner
    }

    /// This node's advertised address.
    pub fn address(&self) -> &NodeAddr {
        self.inner.address()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The registered types, sorted by name.
    pub fn types(&self) -> Vec<TypeInfo> {
        let mut types: Vec<TypeInfo> = self
            .inner
            .registry
            .iter()
            .map(|(name, entry)| TypeInfo {
                name,
                methods: entry.methods(),
            })
            .collect();
        types.sort_by_key(|t| t.name);
        types
    }

    /// Calls `method` (wire name) on object `id` of type `type_name` on a new call chain.
    pub async fn call(
        &self,
        type_name: &str,
        id: impl Into<ObjectId>,
        method: &str,
        request: Payload,
    ) -> Result<Payload, CallError> {
        self.call_with(type_name, id, method, request, CallOptions::default())
            .await
    }

    /// [`Node::call`] with per-call options.
    pub async fn call_with(
        &self,
        type_name: &str,
        id: impl Into<ObjectId>,
        method: &str,
        request: Payload,
        options: CallOptions,
    ) -> Result<Payload, CallError> {
        let id = id.into();
        self.inner
            .invoke(
                type_name,
                &id,
                MethodRef::Name(method),
                request,
                self.scope(options),
            )
            .await
    }

    /// The chain, deadline and client a call from this handle runs with.
    fn scope(&self, options: CallOptions) -> CallScope {
        CallScope {
            chain: options.chain.unwrap_or_else(ChainId::new_root),
            deadline: deadline_for(self.inner.call_timeout(), None, options.timeout),
            client: options.client,
            forward: true,
        }
    }

    /// Calls `method` on object `id` exactly once for `call_id`: the first call with this call id
    /// runs the method and records its outcome in the same transaction as the object's new
    /// state; every later call with the same call id (a retry, after a timeout, a crash, a
    /// restart) returns that recorded outcome without running the method again. A call id used
    /// before for another object, method or request is refused.
    ///
    /// The type must be persistent and the node must have a store. `Err` means the outcome is
    /// unknown (the deadline passed); retrying with the same call id is always safe.
    pub async fn call_reliable(
        &self,
        type_name: &str,
        id: impl Into<ObjectId>,
        method: &str,
        call_id: &str,
        request: Payload,
    ) -> Result<ReliableOutcome, CallError> {
        self.call_reliable_with(
            type_name,
            id,
            method,
            call_id,
            request,
            CallOptions::default(),
        )
        .await
    }

    /// [`Node::call_reliable`] with per-call options.
    pub async fn call_reliable_with(
        &self,
        type_name: &str,
        id: impl Into<ObjectId>,
        method: &str,
        call_id: &str,
        request: Payload,
        options: CallOptions,
    ) -> Result<ReliableOutcome, CallError> {
        let id = id.into();
        self.inner
            .invoke_reliable(
                type_name,
                &id,
                MethodRef::Name(method),
                call_id,
                request,
                self.scope(options),
            )
            .await
    }

    /// Activates object `id` as `type_name` if it is not active. Idempotent; concurrent creates
    /// of one ID yield one activation; returns once `on_activate` has finished. Fails with
    /// `AlreadyExists` when the object exists with another type.
    pub async fn create_object(
        &self,
        type_name: &str,
        id: impl Into<ObjectId>,
    ) -> Result<(), CallError> {
        self.create_object_with(type_name, id, CallOptions::default())
            .await
    }

    /// [`Node::create_object`] with per-call options (timeout, chain).
    pub async fn create_object_with(
        &self,
        type_name: &str,
        id: impl Into<ObjectId>,
        options: CallOptions,
    ) -> Result<(), CallError> {
        let id = id.into();
        self.inner.create(type_name, &id, self.scope(options)).await
    }

    /// Deletes object `id`: waits for its running turn, runs `on_deactivate`, removes it and its
    /// saved state. Idempotent; fails when the object has another type.
    pub async fn delete_object(
        &self,
        type_name: &str,
        id: impl Into<ObjectId>,
    ) -> Result<(), CallError> {
        self.delete_object_with(type_name, id, CallOptions::default())
            .await
    }

    /// [`Node::delete_object`] with per-call options (timeout, chain).
    pub async fn delete_object_with(
        &self,
        type_name: &str,
        id: impl Into<ObjectId>,
        options: CallOptions,
    ) -> Result<(), CallError> {
        let id = id.into();
        self.inner.delete(type_name, &id, self.scope(options)).await
    }

    /// Whether object `id` is active on this node now.
    pub fn is_active(&self, id: &ObjectId) -> bool {
        match shard_of(id, self.inner.shard_count()) {
            Ok(shard) => self.inner.directory.is_active(shard, id),
            Err(_) => false,
        }
    }

    /// Whether this node serves object `id` at this moment: running on a lease it holds, the
    /// object active here and its shard admitting turns. At most one node of a cluster serves
    /// an object at any moment (what fencing guarantees); a node that may have lost its lease
    /// stops answering `true` before another can take the object over.
    pub fn serves(&self, id: &ObjectId) -> bool {
        let inner = &self.inner;
        if inner.lifecycle.phase() != Phase::Running || !inner.membership.lease_fresh() {
            return false;
        }
        let Ok(route) = goverse_core::Route::of(id.as_str(), inner.config.shard_count) else {
            return false;
        };
        matches!(
            inner.directory.lookup(route.shard(), id),
            crate::directory::Lookup::Active(_)
        )
    }

    /// Pushes `message` to client `client_id` through its gate; see [`ObjectContext::push`].
    ///
    /// [`ObjectContext::push`]: crate::ObjectContext::push
    pub fn push(&self, client_id: &str, message: impl Message) -> Result<(), CallError> {
        self.inner.push.to_client(client_id, message)
    }

    /// Pushes `message` to each of `client_ids`; see [`ObjectContext::push_many`].
    ///
    /// [`ObjectContext::push_many`]: crate::ObjectContext::push_many
    pub fn push_many<'a>(
        &self,
        client_ids: impl IntoIterator<Item = &'a str>,
        message: impl Message,
    ) -> Vec<(String, CallError)> {
        self.inner.push.to_clients(client_ids, message)
    }

    /// Pushes `message` to every client of every connected gate; returns the number of gates.
    pub fn broadcast(&self, message: impl Message) -> usize {
        self.inner.push.broadcast(message)
    }

    /// Addresses of the gates connected to this node now.
    pub fn connected_gates(&self) -> Vec<String> {
        self.inner.push.gates()
    }

    /// Whether the node serves now: running, registered on a lease it renews, in a cluster that
    /// has its `min_quorum` of nodes. Live: it turns false when the lease or the quorum is lost
    /// and true again when they are back.
    pub fn is_ready(&self) -> bool {
        self.inner.lifecycle.phase() == Phase::Running && self.inner.membership.is_ready()
    }

    /// What `/ready` answers: [`Node::is_ready`] and, beyond it, the node serves exactly the
    /// shards the map names it for (not while claims or hand-overs are under way); the reason
    /// when not. Live, like `is_ready`.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let inner = &self.inner;
        match inner.lifecycle.phase() {
            Phase::Running => {}
            Phase::Starting => return Err(NotReady::Phase("starting")),
            _ => return Err(NotReady::Phase("stopping")),
        }
        inner.membership.readiness()?;
        let (_, serving) = inner.directory.counts();
        let mapped = inner.membership.mapped_shards();
        if serving != mapped {
            return Err(NotReady::ShardsUnsettled { serving, mapped });
        }
        Ok(())
    }

    /// The cluster as this node sees it now: registered nodes and gates, the leader, and every
    /// shard's record (a copy of the watched map).
    pub fn cluster_map(&self) -> goverse_cluster::ClusterMap {
        self.inner.membership.view().borrow().clone()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> NodeStats {
        self.inner.stats()
    }

    /// The registry this node's metrics are in (the one handed to
    /// [`NodeBuilder::metrics`](crate::NodeBuilder::metrics), or its own): serve
    /// [`Registry::encode`](goverse_core::metrics::Registry::encode) to Prometheus.
    pub fn metrics(&self) -> &goverse_core::metrics::Registry {
        &self.inner.metrics
    }

    /// Deactivates idle objects now instead of at the next idle check; returns how many.
    pub async fn deactivate_idle(&self) -> u64 {
        self.inner.sweep_idle().await
    }

    /// Saves every persistent object changed since its last save now; returns (saved, failed).
    pub async fn save_changed(&self) -> (u64, u64) {
        self.inner.save_dirty().await
    }

    /// Stops serving: new calls fail with `Unavailable`, running turns finish, every activation
    /// is closed and its state saved (retrying a failing store until `grace` runs out), shards
    /// are released and the lease revoked. Idempotent.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.inner.shutdown(grace).await
    }

    /// Makes a shutdown in progress (or the next one) stop waiting: objects in the middle of a
    /// turn are left unsaved (and counted in [`ShutdownReport::unsaved`]), every other one is
    /// closed and saved at once, and a failing store is not retried. For a second stop signal.
    pub fn hurry_shutdown(&self) {
        self.inner.lifecycle.hurry.cancel();
    }
}
