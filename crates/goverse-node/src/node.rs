//! The node: registry, activation table, call path, lifecycle operations and background work.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use goverse_cluster::{ClusterStore, Keys, MapView, MemoryClusterStore};
use goverse_core::{
    CallError, ChainId, ClientIdentity, Message, NodeAddr, ObjectId, ObjectIdKind, Payload,
    ShardId, fnv1a_32, shard_of,
};
use goverse_persistence::{Fence, ObjectStore};
use goverse_proto::node::response;
use goverse_transport::{Connector, Op, Request, Router};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::{
    ActivationDyn, CloseReason, Detached, ReliableRequest, TurnPermit, type_mismatch,
};
use crate::autoload::AutoLoaded;
use crate::directory::{Lookup, ShardDirectory, ShardEvent, ShardState};
use crate::host::{CallScope, Host, MethodRef, deadline_for};
use crate::membership::{ClusterSettings, Membership};
use crate::push::PushHub;
use crate::registry::{TypeEntry, TypeInfo, TypeOptions};
use crate::reliable;
use crate::store::{Change, SaveJob, StoreLink, wait};
use crate::turn::{self, AcquireError};
use crate::{CallOptions, Dispatch, MethodKind, NodeConfig};
use goverse_core::ReliableOutcome;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid node configuration: {0}")]
    Config(String),
    /// The cluster store refused or failed.
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
    /// Two types registered under one name.
    #[error("object type {0:?} is registered twice")]
    DuplicateType(&'static str),
    /// The object store failed its start check (unreachable, wrong schema, read-only, damaged).
    #[error("the object store cannot be used: {0}")]
    Store(String),
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
    /// States saved.
    pub saved: u64,
    /// States that could not be saved before the grace period ran out.
    pub unsaved: u64,
}

#[derive(Default)]
struct Counters {
    activations: AtomicU64,
    activation_failures: AtomicU64,
    deactivations: AtomicU64,
    saves: AtomicU64,
    save_failures: AtomicU64,
    reliable_calls: AtomicU64,
}

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;

pub(crate) struct NodeInner {
    config: NodeConfig,
    address: NodeAddr,
    registry: FastMap<&'static str, Box<dyn TypeEntry>>,
    /// Which shards this node serves, and their activations.
    directory: Arc<ShardDirectory>,
    store: Option<StoreLink>,
    /// Stops the saver and loader, once the last saves are done.
    store_stop: CancellationToken,
    membership: Arc<Membership>,
    /// Sends calls for objects other nodes serve to them (set once the node has started).
    router: std::sync::OnceLock<Router>,
    /// Stops the router's links, once the node has handed everything over.
    links_stop: CancellationToken,
    /// Set with `links_stop` ([`NodeInner::stop_links`]): read on every forwarded call, without
    /// the token's lock.
    links_stopped: AtomicBool,
    /// The lease renewal and membership reactor tasks, which shutdown waits for before it
    /// saves (a claim they are making finishes first).
    renewing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    state: AtomicU8,
    clock: tokio::time::Instant,
    tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
    counters: Counters,
    push: PushHub,
    descriptors: Vec<u8>,
    /// The objects this node keeps alive (`NodeConfig::auto_load`).
    auto_loaded: AutoLoaded,
    /// Wakes the auto-loader (an auto-load object was deleted).
    auto_load_wake: tokio::sync::Notify,
    /// The access and lifecycle rules, checked again for what gates send for their clients;
    /// `None` with no rules configured (the node leaves the judging to its gates).
    pub(crate) client_rules: Option<goverse_core::rules::Rules>,
    /// Cancelled to make shutdown stop waiting for running turns and store retries.
    hurry: CancellationToken,
}

impl fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A call as it is sent on to another node: the object, and what travels with the call.
struct Routed<'a> {
    type_name: &'a str,
    id: &'a ObjectId,
    chain: ChainId,
    deadline: Instant,
    client: Option<Arc<ClientIdentity>>,
}

impl<'a> Routed<'a> {
    fn call(
        type_name: &'a str,
        id: &'a ObjectId,
        chain: ChainId,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> Self {
        Self {
            type_name,
            id,
            chain,
            deadline,
            client,
        }
    }
}

/// What became of a call that reached this node: done here, or its request handed back to be
/// sent to the node serving the object (nothing ran here).
enum Here<T, R> {
    Done(T),
    Elsewhere(R),
}

/// A response of another kind than the request asked for: a peer that speaks the protocol
/// wrongly.
fn unexpected(result: &response::Result) -> CallError {
    CallError::internal(format!(
        "a node answered with an unexpected response: {result:?}"
    ))
}

/// What the links to other nodes report: nodes push only to gates, so nothing arrives here.
struct PeerEvents;

impl goverse_transport::LinkEvents for PeerEvents {
    fn connected(&self, _described: &goverse_proto::node::DescribeResponse) {}

    fn pushed(&self, push: goverse_proto::node::Push) {
        tracing::debug!(
            clients = push.client_ids.len(),
            "a node pushed to a node; dropped"
        );
    }
}

/// The object a call is for.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    type_name: &'a str,
    id: &'a ObjectId,
    shard: ShardId,
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

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn check_serving(&self) -> Result<(), CallError> {
        match self.state.load(Ordering::Acquire) {
            RUNNING if self.membership.lease_fresh() => Ok(()),
            RUNNING => Err(CallError::not_served(format!(
                "node {} has not renewed its lease in time (paused or starved?); it serves \
                 again once the lease is renewed",
                self.address
            ))),
            STARTING => Err(CallError::not_served(format!(
                "node {} is starting",
                self.address
            ))),
            _ => Err(CallError::not_served(format!(
                "node {} is shutting down",
                self.address
            ))),
        }
    }

    /// The shard `id` routes to, and the directory table it lives in (its shard, or the node's
    /// own slot for an ID pinned to this node), from one parse of the ID.
    fn route_with_table(&self, id: &ObjectId) -> Result<(ShardId, ShardId), CallError> {
        let count = self.config.shard_count;
        match id.kind()? {
            ObjectIdKind::Regular => {
                let shard = ShardId(fnv1a_32(id.as_str().as_bytes()) % count);
                Ok((shard, shard))
            }
            ObjectIdKind::FixedNode(addr) if addr != self.address.as_str() => {
                Err(CallError::not_served(format!(
                    "object {id} is pinned to node {addr}, and this is node {}",
                    self.address
                )))
            }
            ObjectIdKind::FixedNode(_) => Ok((shard_of(id, count)?, self.directory.node_slot())),
            ObjectIdKind::FixedShard(_) => {
                let shard = shard_of(id, count)?;
                Ok((shard, shard))
            }
        }
    }

    fn route(&self, id: &ObjectId) -> Result<ShardId, CallError> {
        self.route_with_table(id).map(|(shard, _)| shard)
    }

    fn entry(&self, type_name: &str) -> Result<&dyn TypeEntry, CallError> {
        self.registry
            .get(type_name)
            .map(|e| &**e)
            .ok_or_else(|| CallError::unknown_type(type_name))
    }

    /// The activation the directory holds for `id`, refusing a type clash.
    fn checked(
        activation: Arc<dyn ActivationDyn>,
        type_name: &str,
        id: &ObjectId,
    ) -> Result<Arc<dyn ActivationDyn>, CallError> {
        if activation.type_name() != type_name {
            return Err(type_mismatch(id, activation.type_name(), type_name));
        }
        Ok(activation)
    }

    /// The live activation of `id`, activating it (as `type_name`) if there is none.
    async fn activation(
        self: &Arc<Self>,
        target: Target<'_>,
        chain: ChainId,
        deadline: Instant,
    ) -> Result<Arc<dyn ActivationDyn>, CallError> {
        let Target {
            type_name,
            id,
            shard,
        } = target;
        match self.directory.lookup(shard, id) {
            Lookup::NotServed(err) => return Err(err),
            Lookup::Active(activation) => {
                return Self::checked(activation, type_name, id);
            }
            Lookup::Inactive => {}
        }
        let entry = self.entry(type_name)?;
        // The host handle is cloned only when an activation is made.
        let (activation, made) = self.directory.get_or_insert(shard, id, || {
            entry.new_activation(
                self.clone(),
                id.clone(),
                shard,
                chain,
                self.now_ms(),
                self.config.idle_timeout,
            )
        })?;
        if !made {
            return Self::checked(activation, type_name, id);
        }
        self.counters.activations.fetch_add(1, Ordering::Relaxed);
        // The new activation was born holding its write turn on `chain`; run on_activate under it.
        let permit = TurnPermit::preassigned(activation.clone(), MethodKind::Write, chain);
        Detached::new(activation.activate(permit, deadline)).await;
        if matches!(
            activation.turn_state().lock().status,
            turn::Status::Failed(_)
        ) {
            self.counters
                .activation_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(activation)
    }

    /// Finds or activates `id` and takes a turn of `kind` on it, looking again whenever the
    /// activation it found went away before the turn came.
    async fn turn_on(
        self: &Arc<Self>,
        target: Target<'_>,
        kind: MethodKind,
        chain: ChainId,
        deadline: Instant,
    ) -> Result<(Arc<dyn ActivationDyn>, TurnPermit), CallError> {
        loop {
            let activation = self.activation(target, chain, deadline).await?;
            activation.touch();
            match turn::acquire(&activation, kind, chain).await {
                Ok(permit) => return Ok((activation, permit)),
                Err(AcquireError::Retry) => continue,
                Err(AcquireError::Failed(err)) => return Err(err),
            }
        }
    }

    /// The call path shared by typed stubs, the untyped API and the node protocol. A call for
    /// an object this node does not serve (now, or any more once its turn would start) goes to
    /// the node that does when `scope.forward` is set.
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        method: MethodRef<'_>,
        request: Payload,
        scope: CallScope,
    ) -> Result<Payload, CallError> {
        let CallScope {
            chain,
            deadline,
            client,
            forward,
        } = scope;
        let shard = match self
            .check_serving()
            .and_then(|()| self.route_with_table(id))
        {
            // A shard this node does not serve (as far as the hint knows) goes straight to its
            // owner, without a lookup or a refusal made only to be dropped.
            Ok((_, table)) if forward && !self.directory.admits_hint(table) && self.forwards() => {
                None
            }
            Ok((shard, _)) => Some(shard),
            Err(err) if err.is_not_served() && forward && self.forwards() => None,
            Err(err) => return Err(err),
        };
        let (index, kind) = self.resolve(type_name, method, &request)?;
        let Some(shard) = shard else {
            let routed = Routed::call(type_name, id, chain, deadline, client);
            return Box::pin(self.forward_call(routed, method, request)).await;
        };
        let work = async move {
            let turn = self
                .turn_on(
                    Target {
                        type_name,
                        id,
                        shard,
                    },
                    kind,
                    chain,
                    deadline,
                )
                .await;
            match turn {
                Ok((activation, permit)) => {
                    Detached::new(activation.run(permit, index, request, deadline, client))
                        .await
                        .map(Here::Done)
                }
                // Nothing ran: the request goes to the shard's owner instead.
                Err(err) if err.is_not_served() && forward && self.forwards() => {
                    Ok(Here::Elsewhere((request, client)))
                }
                Err(err) => Err(err),
            }
        };
        match with_deadline(work, deadline, || format!("{type_name}/{id}")).await? {
            Here::Done(payload) => Ok(payload),
            Here::Elsewhere((request, client)) => {
                let routed = Routed::call(type_name, id, chain, deadline, client);
                Box::pin(self.forward_call(routed, method, request)).await
            }
        }
    }

    /// Stops the router's links: no call is sent to another node from now on.
    fn stop_links(&self) {
        self.links_stopped.store(true, Ordering::Release);
        self.links_stop.cancel();
    }

    /// Whether calls for objects served elsewhere can be sent on: the router runs until the
    /// node has stopped.
    fn forwards(&self) -> bool {
        self.router.get().is_some() && !self.links_stopped.load(Ordering::Acquire)
    }

    /// Sends a call on to the node serving its object, through the router.
    async fn forward_call(
        &self,
        routed: Routed<'_>,
        method: MethodRef<'_>,
        request: Payload,
    ) -> Result<Payload, CallError> {
        let name = self.method_name(routed.type_name, method)?;
        let op = Op::Call {
            method: name,
            request: Some(request.into_any()),
            reliable_call_id: None,
        };
        match self.forward(routed, op).await? {
            response::Result::Value(any) => Ok(Payload::Encoded(any)),
            other => Err(unexpected(&other)),
        }
    }

    /// The wire name of the method `method` refers to.
    fn method_name<'m>(
        &'m self,
        type_name: &str,
        method: MethodRef<'m>,
    ) -> Result<&'m str, CallError> {
        match method {
            MethodRef::Name(name) => Ok(name),
            MethodRef::Index(index, _) => Ok(self.entry(type_name)?.methods()[index].name),
        }
    }

    /// Sends `op` for `routed`'s object to the node serving it, within the call's deadline.
    async fn forward(&self, routed: Routed<'_>, op: Op<'_>) -> Result<response::Result, CallError> {
        let Some(router) = self.router.get() else {
            return Err(CallError::unavailable(format!(
                "node {} does not serve {} and routes to no other node",
                self.address, routed.id
            )));
        };
        let timeout = routed.deadline.saturating_duration_since(Instant::now());
        let request = Request {
            object_type: routed.type_name,
            object_id: routed.id.as_str(),
            op,
            chain: Some(routed.chain),
            timeout: None,
            caller: routed.client,
            // Checked against the rules where it entered the cluster's nodes.
            from_client: false,
        };
        router.request(request, timeout).await
    }

    /// The method a call names, as index and kind. A call by name is checked here: the type and
    /// method exist, and the request is of the type the method takes (refused before anything
    /// is activated for it). A typed stub's call was checked at compile time.
    fn resolve(
        &self,
        type_name: &str,
        method: MethodRef<'_>,
        request: &Payload,
    ) -> Result<(usize, MethodKind), CallError> {
        let name = match method {
            MethodRef::Index(index, kind) => return Ok((index, kind)),
            MethodRef::Name(name) => name,
        };
        let entry = self.entry(type_name)?;
        let index = entry
            .method_index(name)
            .ok_or_else(|| CallError::unknown_method(type_name, name))?;
        let spec = &entry.methods()[index];
        let expected = (spec.request)();
        if !request.has_name(expected) {
            return Err(CallError::wrong_payload(
                type_name,
                spec.name,
                expected,
                &request.full_name(),
            ));
        }
        Ok((index, spec.kind))
    }

    /// The reliable-call path: the checks a call gets, then one write turn that answers an
    /// earlier attempt or runs the method and commits its record with the state. Refusals come
    /// back as [`ReliableOutcome::Skipped`]; `Err` means the outcome is unknown (the deadline
    /// passed while the call was queued or running): retrying with the same call id is safe.
    pub(crate) async fn invoke_reliable(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        method: MethodRef<'_>,
        call_id: &str,
        request: Payload,
        scope: CallScope,
    ) -> Result<ReliableOutcome, CallError> {
        let CallScope {
            chain,
            deadline,
            client,
            forward,
        } = scope;
        if let Err(err) = reliable::check_call_id(call_id) {
            return Ok(ReliableOutcome::Skipped(err));
        }
        let served = match self.check_serving().and_then(|()| self.route(id)) {
            Ok(shard) => Some(shard),
            Err(err) if err.is_not_served() && forward && self.forwards() => None,
            Err(err) => return Ok(ReliableOutcome::Skipped(err)),
        };
        let checked = (|| {
            let entry = self.entry(type_name)?;
            if !entry.persistent() {
                return Err(CallError::invalid_argument(format!(
                    "type {type_name:?} cannot take reliable calls: its state is not persisted, \
                     so exactly-once could not survive a restart (make it persistent)"
                )));
            }
            if self.store.is_none() {
                return Err(CallError::unavailable(format!(
                    "node {} has no object store, so it cannot take reliable calls",
                    self.address
                )));
            }
            self.resolve(type_name, method, &request)
        })();
        let (index, kind) = match checked {
            Ok(found) => found,
            Err(err) => return Ok(ReliableOutcome::Skipped(err)),
        };
        let Some(shard) = served else {
            let routed = Routed::call(type_name, id, chain, deadline, client);
            return self
                .forward_reliable(routed, method, call_id, request)
                .await;
        };
        let shared_id: Arc<str> = call_id.into();
        let work = async move {
            let target = Target {
                type_name,
                id,
                shard,
            };
            // A write turn whatever the method: the lookup, the call and its commit are one step.
            let (activation, permit) = match self
                .turn_on(target, MethodKind::Write, chain, deadline)
                .await
            {
                Ok(found) => found,
                Err(err) if err.is_not_served() && forward && self.forwards() => {
                    return Ok(Here::Elsewhere((request, client)));
                }
                Err(err) => return Ok(Here::Done(ReliableOutcome::Skipped(err))),
            };
            self.counters.reliable_calls.fetch_add(1, Ordering::Relaxed);
            let call = ReliableRequest {
                call_id: shared_id,
                method: index,
                kind,
            };
            Ok(Here::Done(
                Detached::new(activation.run_reliable(permit, call, request, deadline, client))
                    .await,
            ))
        };
        let here = with_deadline(work, deadline, || {
            format!("reliable call {type_name}/{id} (the call may have run; retry with the same call id)")
        })
        .await?;
        match here {
            Here::Done(outcome) => Ok(outcome),
            Here::Elsewhere((request, client)) => {
                let routed = Routed::call(type_name, id, chain, deadline, client);
                self.forward_reliable(routed, method, call_id, request)
                    .await
            }
        }
    }

    /// Sends a reliable call on to the node serving its object, through the router.
    async fn forward_reliable(
        &self,
        routed: Routed<'_>,
        method: MethodRef<'_>,
        call_id: &str,
        request: Payload,
    ) -> Result<ReliableOutcome, CallError> {
        let name = self.method_name(routed.type_name, method)?;
        let op = Op::Call {
            method: name,
            request: Some(request.into_any()),
            reliable_call_id: Some(call_id),
        };
        match self.forward(routed, op).await? {
            response::Result::Reliable(reliable) => {
                Ok(goverse_transport::reliable_from_proto(reliable))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Creates `id` here, or on the node serving it when `forward` is set and this one does not.
    pub(crate) async fn create_routed(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        chain: ChainId,
        deadline: Instant,
        forward: bool,
    ) -> Result<(), CallError> {
        let done = self.create(type_name, id, chain, deadline).await;
        let routed = Routed::call(type_name, id, chain, deadline, None);
        self.or_forward(done, Op::Create, routed, forward).await
    }

    /// Deletes `id` here, or on the node serving it when `forward` is set and this one does not.
    pub(crate) async fn delete_routed(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        chain: ChainId,
        deadline: Instant,
        forward: bool,
    ) -> Result<(), CallError> {
        let done = self.delete(type_name, id, chain, deadline).await;
        let routed = Routed::call(type_name, id, chain, deadline, None);
        self.or_forward(done, Op::Delete, routed, forward).await
    }

    /// `done`, or `op` sent to the node serving the object when this one refused it as not
    /// served.
    async fn or_forward(
        &self,
        done: Result<(), CallError>,
        op: Op<'_>,
        routed: Routed<'_>,
        forward: bool,
    ) -> Result<(), CallError> {
        match done {
            Err(err) if err.is_not_served() && forward && self.forwards() => {
                self.forward(routed, op).await.map(|_| ())
            }
            done => done,
        }
    }

    async fn create(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        chain: ChainId,
        deadline: Instant,
    ) -> Result<(), CallError> {
        self.check_serving()?;
        let shard = self.route(id)?;
        self.entry(type_name)?;
        // Taking (and dropping) a turn waits for on_activate, wherever it was started.
        let work = async move {
            self.turn_on(
                Target {
                    type_name,
                    id,
                    shard,
                },
                MethodKind::Read,
                chain,
                deadline,
            )
            .await
            .map(|_| ())
        };
        with_deadline(work, deadline, || format!("create {type_name}/{id}")).await
    }

    async fn delete(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        chain: ChainId,
        deadline: Instant,
    ) -> Result<(), CallError> {
        self.check_serving()?;
        let shard = self.route(id)?;
        let entry = self.entry(type_name)?;
        // A persistent object is deleted through an activation, so no concurrent activation can
        // load its record while the record is being removed.
        let persistent = self.store.is_some() && entry.persistent();
        let work = async move {
            loop {
                let live = self.directory.get(shard, id);
                let activation = match live {
                    Some(activation) if activation.type_name() != type_name => {
                        return Err(type_mismatch(id, activation.type_name(), type_name));
                    }
                    Some(activation) => activation,
                    None if persistent => {
                        self.activation(
                            Target {
                                type_name,
                                id,
                                shard,
                            },
                            chain,
                            deadline,
                        )
                        .await?
                    }
                    None => return Ok(()),
                };
                match turn::acquire(&activation, MethodKind::Write, chain).await {
                    Ok(permit) => {
                        let deleted = Detached::new(activation.close(permit, CloseReason::Delete))
                            .await
                            .map(|_| ());
                        if deleted.is_ok() && self.auto_loaded.contains(id) {
                            self.auto_load_wake.notify_one();
                        }
                        return deleted;
                    }
                    Err(AcquireError::Retry) => continue,
                    Err(AcquireError::Failed(err)) => return Err(err),
                }
            }
        };
        with_deadline(work, deadline, || format!("delete {type_name}/{id}")).await
    }

    /// Closes every activation idle past its timeout. Returns how many closed.
    async fn sweep_idle(self: &Arc<Self>) -> u64 {
        let now = self.now_ms();
        let candidates = self.directory.activations_where(|a| {
            !a.idle_timeout().is_zero()
                && a.idle_for(now, a.idle_timeout())
                && !self.auto_loaded.contains(a.id())
        });
        let closed = AtomicU64::new(0);
        futures::stream::iter(candidates)
            .for_each_concurrent(64, |activation| {
                let closed = &closed;
                async move {
                    let Some(permit) = turn::try_acquire_write(&activation, ChainId::new_root()) else {
                        return;
                    };
                    match Detached::new(activation.close(permit, CloseReason::Idle)).await {
                        Ok(_) => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(object = %activation.id(), "deactivated idle object");
                        }
                        Err(err) => {
                            self.counters.save_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(object = %activation.id(), error = %err,
                                "idle deactivation failed; the object stays active and is retried later");
                        }
                    }
                }
            })
            .await;
        closed.into_inner()
    }

    /// Keeps the auto-load objects alive: once the cluster has first been stable for its
    /// window, creates every one this node serves and lacks, again whenever a shard starts
    /// being served here, one was deleted, or the map changed, and at least every second.
    async fn keep_auto_loaded(self: Arc<Self>) {
        let mut changes = self.membership.view().subscribe();
        let mut stability =
            goverse_cluster::Stability::new(self.config.stability_window, self.config.min_quorum);
        let origin = tokio::time::Instant::now();
        let mut stable_once = false;
        loop {
            let now = origin.elapsed();
            stability.observe(now, &self.membership.view().borrow().nodes);
            let mut wait = crate::autoload::RECHECK;
            if !stable_once {
                stable_once = stability.is_stable(now);
                if !stable_once && stability.has_quorum() {
                    wait = wait.min(stability.stable_at().saturating_sub(now));
                }
            }
            if stable_once && self.membership.is_ready() {
                let deadline = Instant::now() + self.config.call_timeout;
                let (created, failed, first) = self
                    .auto_loaded
                    .load_missing(
                        |shard, id| self.directory.admits(shard, id),
                        |shard, id| self.directory.is_active(shard, id),
                        |type_name, id| {
                            let node = self.clone();
                            async move {
                                node.create(type_name, &id, ChainId::new_root(), deadline)
                                    .await
                            }
                        },
                    )
                    .await;
                if created > 0 {
                    tracing::info!(created, "auto-load objects created");
                }
                if let Some(first) = first {
                    tracing::warn!(failed, first = %first,
                        "auto-load objects could not be created; retrying");
                }
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.directory.served_more() => {}
                () = self.auto_load_wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Saves every persistent activation changed since its last save. Returns (saved, failed).
    async fn save_dirty(self: &Arc<Self>) -> (u64, u64) {
        let Some(store) = &self.store else {
            return (0, 0);
        };
        let dirty: Vec<_> = self
            .directory
            .all_activations()
            .into_iter()
            .filter(|a| a.persistent() && a.take_dirty())
            .collect();
        // Each state is queued under a read turn, so it commits after any write queued by an
        // earlier turn and before any queued by a later one.
        let mut queued = Vec::with_capacity(dirty.len());
        for activation in dirty {
            let submitted = async {
                let permit = turn::acquire(&activation, MethodKind::Read, ChainId::new_root())
                    .await
                    .ok()?;
                let job = activation.save_job(&permit).ok()?;
                Some(store.submit(job))
            }
            .await;
            match submitted {
                Some(reply) => queued.push((activation, reply)),
                None => activation.mark_dirty(),
            }
        }
        let (mut saved, mut failed) = (0, 0);
        for (activation, reply) in queued {
            match wait(reply).await {
                Ok(()) => saved += 1,
                Err(failure) => {
                    failed += 1;
                    activation.mark_dirty();
                    tracing::warn!(object = %activation.id(), cause = ?failure, "periodic save failed; will retry");
                }
            }
        }
        self.counters.saves.fetch_add(saved, Ordering::Relaxed);
        self.counters
            .save_failures
            .fetch_add(failed, Ordering::Relaxed);
        (saved, failed)
    }

    fn idle_check_interval(&self) -> Option<Duration> {
        if let Some(interval) = self.config.idle_check_interval {
            return Some(interval);
        }
        let shortest = self
            .registry
            .values()
            .map(|e| e.idle_timeout().unwrap_or(self.config.idle_timeout))
            .filter(|t| !t.is_zero())
            .min()?;
        Some((shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(30)))
    }

    fn stats(&self) -> NodeStats {
        let (active, owned) = self.directory.counts();
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
            pushes_sent: self.push.counters.sent.load(Ordering::Relaxed),
            pushes_dropped: self.push.counters.dropped.load(Ordering::Relaxed),
        }
    }

    async fn shutdown(self: &Arc<Self>, grace: Duration) -> ShutdownReport {
        if self
            .state
            .compare_exchange(RUNNING, STOPPING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return ShutdownReport::default();
        }
        let deadline = tokio::time::Instant::now() + grace;
        self.cancel.cancel();
        // A renewal, rejoin or claim pass in progress finishes before the saves (and before
        // `leave` takes the lease), so the shards it claims can be saved to.
        let renewing = std::mem::take(&mut *self.renewing.lock());
        for task in renewing {
            tokio::select! {
                _ = tokio::time::timeout_at(deadline, task) => {}
                () = self.hurry.cancelled() => {}
            }
        }

        // No new activations from here on; running turns finish and states are saved under
        // each shard's epoch.
        self.directory
            .apply_all(|s| matches!(s, ShardState::Owned { .. }), ShardEvent::Drain);
        let report = self
            .close_and_save(self.directory.all_activations(), Some(deadline))
            .await;
        self.membership.leave().await;
        self.store_stop.cancel();
        self.stop_links();
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within the shutdown grace");
        }
        report
    }

    /// Hands `shards` (already draining) over: closes their activations once their running
    /// turns finish, saves the changed states under each shard's epoch (retrying until saved or
    /// the node stops), then gives the shards up and lets membership release their records.
    async fn hand_over(self: &Arc<Self>, shards: Vec<ShardId>) {
        let report = self
            .close_and_save(self.directory.activations_of(&shards), None)
            .await;
        for shard in &shards {
            if matches!(
                self.directory.state(*shard),
                ShardState::Draining { .. } | ShardState::Fenced
            ) {
                self.directory.apply(*shard, ShardEvent::Release);
            }
        }
        tracing::info!(
            shards = shards.len(),
            deactivated = report.deactivated,
            saved = report.saved,
            unsaved = report.unsaved,
            "shards handed over"
        );
        self.membership.wake();
    }

    /// Closes `activations` (each after its running turn) and saves the states they hand back,
    /// in batches under each shard's epoch, retrying transient store failures until `deadline`
    /// (`None`: until saved, or the node stops).
    async fn close_and_save(
        self: &Arc<Self>,
        activations: Vec<Arc<dyn ActivationDyn>>,
        deadline: Option<Instant>,
    ) -> ShutdownReport {
        let deactivations_before = self.counters.deactivations.load(Ordering::Relaxed);
        let closed = Mutex::new(Vec::new());
        let unsaved = AtomicU64::new(0);
        let close_all = futures::stream::iter(activations).for_each_concurrent(256, |activation| {
            let (closed, unsaved) = (&closed, &unsaved);
            async move {
                let chain = ChainId::new_root();
                let permit = tokio::select! {
                    biased;
                    permit = turn::acquire(&activation, MethodKind::Write, chain) => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    // In a hurry: whatever is not in the middle of a turn is closed now, the
                    // rest is left.
                    () = self.hurry.cancelled() => match turn::try_acquire_write(&activation, chain) {
                        Some(permit) => permit,
                        None => {
                            unsaved.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(object = %activation.id(),
                                "left unsaved: in the middle of a turn when shutdown was hurried");
                            return;
                        }
                    },
                };
                let shard = activation.shard();
                match Detached::new(activation.close(permit, CloseReason::Shutdown)).await {
                    Ok(Some(data)) => closed.lock().push((activation, data, shard)),
                    Ok(None) => {}
                    Err(err) => {
                        unsaved.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(object = %activation.id(), error = %err, "cannot snapshot its state");
                    }
                }
            }
        });
        match deadline {
            Some(deadline) => {
                if tokio::time::timeout_at(deadline, close_all).await.is_err() {
                    tracing::error!(
                        "grace ran out while closing activations (a turn did not finish)"
                    );
                }
            }
            None => close_all.await,
        }
        let deactivated =
            self.counters.deactivations.load(Ordering::Relaxed) - deactivations_before;
        let mut pending: Vec<(Arc<dyn ActivationDyn>, Vec<u8>, ShardId)> = closed.into_inner();
        let mut saved = 0;
        if let Some(store) = &self.store {
            let mut backoff = Duration::from_millis(50);
            while !pending.is_empty() {
                let mut queued = Vec::with_capacity(pending.len());
                for item in pending {
                    let (activation, data, shard) = &item;
                    match self.directory.fence(*shard) {
                        Ok(fence) => {
                            let reply = store.submit(SaveJob {
                                id: activation.id().clone(),
                                object_type: activation.type_name(),
                                change: Change::Save(data.clone()),
                                fence,
                                reliable: None,
                            });
                            queued.push((item, reply));
                        }
                        Err(err) => {
                            unsaved.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(object = %activation.id(), cause = %err, "state not saved");
                        }
                    }
                }
                let mut retry = Vec::new();
                for (item, reply) in queued {
                    match wait(reply).await {
                        Ok(()) => saved += 1,
                        Err(crate::store::SaveFailure::Store(err)) if err.is_transient() => {
                            tracing::warn!(object = %item.0.id(), cause = %err, "save failed; retrying");
                            retry.push(item);
                        }
                        Err(failure) => {
                            unsaved.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(object = %item.0.id(), cause = ?failure, "state not saved");
                        }
                    }
                }
                pending = retry;
                if pending.is_empty() {
                    break;
                }
                let give_up = match deadline {
                    Some(_) if self.hurry.is_cancelled() => true,
                    Some(deadline) => {
                        let late = tokio::time::Instant::now() + backoff > deadline;
                        if !late {
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = self.hurry.cancelled() => {}
                            }
                        }
                        late || self.hurry.is_cancelled()
                    }
                    None => tokio::select! {
                        () = self.cancel.cancelled() => true,
                        () = tokio::time::sleep(backoff) => false,
                    },
                };
                if give_up {
                    unsaved.fetch_add(pending.len() as u64, Ordering::Relaxed);
                    tracing::error!(count = pending.len(), "gave up saving; states not saved");
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        self.counters.saves.fetch_add(saved, Ordering::Relaxed);
        ShutdownReport {
            deactivated,
            saved,
            unsaved: unsaved.into_inner(),
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
        self.tasks.spawn(task);
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

/// Runs `work` until it finishes or `deadline` passes. The timer is armed only if `work` does not
/// finish on its first poll, so an uncontended call pays nothing for its timeout.
async fn with_deadline<T, F, D>(work: F, deadline: Instant, describe: D) -> Result<T, CallError>
where
    F: Future<Output = Result<T, CallError>>,
    D: FnOnce() -> String,
{
    let mut work = std::pin::pin!(work);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut describe = Some(describe);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let what = describe.take().map_or_else(String::new, |d| d());
                Poll::Ready(Err(CallError::deadline_exceeded(what)))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Builds and starts a [`Node`].
pub struct NodeBuilder {
    config: NodeConfig,
    registry: FastMap<&'static str, Box<dyn TypeEntry>>,
    duplicate: Option<&'static str>,
    store: Option<Arc<dyn ObjectStore>>,
    cluster: Option<Arc<dyn ClusterStore>>,
    connector: Option<Arc<dyn Connector>>,
    descriptors: Vec<u8>,
}

impl fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Registers `T`, building instances with `T::default()`.
    pub fn register<T: Dispatch + Default>(self) -> Self {
        self.register_with(TypeOptions::<T>::default())
    }

    /// Registers `T` with explicit options (factory, idle timeout).
    pub fn register_with<T: Dispatch>(mut self, options: TypeOptions<T>) -> Self {
        if self
            .registry
            .insert(T::TYPE_NAME, Box::new(options))
            .is_some()
        {
            self.duplicate = Some(T::TYPE_NAME);
        }
        self
    }

    /// Persists object state in `store`. Without one, nothing is persisted.
    pub fn object_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Coordinates through `cluster`. Default: a private in-memory store (single node).
    pub fn cluster_store(mut self, cluster: Arc<dyn ClusterStore>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// How this node links to the other nodes of its cluster; by default over the network
    /// (`goverse_transport::NetworkConnector`). Nodes of one process may be linked in-process.
    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Publishes the protobuf descriptors of the registered types' messages: an encoded
    /// `google.protobuf.FileDescriptorSet`, as `prost-build`/`protox` write it. Gates use them to
    /// accept and return plain JSON. The well-known types (`google.protobuf.*`) need no
    /// descriptors. May be called more than once; the sets are concatenated (an encoded
    /// `FileDescriptorSet` is a repeated field, so concatenation merges them).
    pub fn file_descriptor_set(mut self, encoded: &[u8]) -> Self {
        self.descriptors.extend_from_slice(encoded);
        self
    }

    /// Validates the configuration, joins the cluster (registering the node on a lease and
    /// claiming shards) and starts background work. Must run inside a tokio runtime.
    pub async fn start(self) -> Result<Node, NodeError> {
        self.config.validate().map_err(NodeError::Config)?;
        if let Some(name) = self.duplicate {
            return Err(NodeError::DuplicateType(name));
        }
        // The store is checked before anything is claimed: a node that could not write must not
        // start serving (and lose every write at shutdown).
        if let Some(store) = &self.store {
            store
                .check()
                .await
                .map_err(|err| NodeError::Store(format!("{}: {err}", store.describe())))?;
        }
        let address = NodeAddr::new(self.config.address.as_str());
        let auto_loaded = AutoLoaded::new(
            &self.config.auto_load,
            &address,
            self.config.shard_count,
            |name| self.registry.get_key_value(name).map(|(name, _)| *name),
        )
        .map_err(NodeError::Config)?;
        let client_rules =
            if self.config.access_rules.is_empty() && self.config.lifecycle_rules.is_empty() {
                None
            } else {
                let rules = goverse_core::rules::Rules::new(
                    &self.config.access_rules,
                    &self.config.lifecycle_rules,
                )
                .map_err(|err| NodeError::Config(err.to_string()))?;
                Some(rules)
            };
        let tasks = TaskTracker::new();
        let store_stop = CancellationToken::new();
        let store = self
            .store
            .map(|store| StoreLink::start(store, &tasks, store_stop.clone()));
        let keys = Keys::new(&self.config.cluster_prefix).map_err(NodeError::Config)?;
        let directory = Arc::new(ShardDirectory::new(
            address.clone(),
            self.config.shard_count,
        ));
        let cluster: Arc<dyn ClusterStore> = self
            .cluster
            .unwrap_or_else(|| Arc::new(MemoryClusterStore::new()));
        // The cluster's shard count is settled before anything is written to it.
        let shard_count = self.config.shard_count;
        let view = async {
            goverse_cluster::settle_shard_count(&*cluster, &keys, shard_count).await?;
            MapView::start(cluster.clone(), keys.clone(), shard_count).await
        };
        let view = match view.await {
            Ok(view) => view,
            Err(err) => {
                store_stop.cancel();
                tasks.close();
                return Err(NodeError::Cluster(err));
            }
        };
        let membership = Arc::new(Membership::new(
            cluster,
            keys,
            address.clone(),
            ClusterSettings {
                lease_ttl: self.config.lease_ttl,
                min_quorum: self.config.min_quorum,
                stability_window: self.config.stability_window,
                stuck_timeout: self.config.stuck_shard_timeout,
            },
            directory.clone(),
            store.as_ref().map(|s| s.store().clone()),
            view,
        ));
        let inner = Arc::new(NodeInner {
            address,
            config: self.config,
            registry: self.registry,
            directory,
            store,
            store_stop,
            membership,
            router: std::sync::OnceLock::new(),
            links_stop: CancellationToken::new(),
            links_stopped: AtomicBool::new(false),
            renewing: Mutex::new(Vec::new()),
            state: AtomicU8::new(STARTING),
            clock: tokio::time::Instant::now(),
            tasks,
            cancel: CancellationToken::new(),
            counters: Counters::default(),
            push: PushHub::default(),
            descriptors: self.descriptors,
            auto_loaded,
            auto_load_wake: tokio::sync::Notify::new(),
            hurry: CancellationToken::new(),
            client_rules,
        });
        let connector = self.connector.unwrap_or_else(|| {
            Arc::new(goverse_transport::NetworkConnector::with_secret(
                inner.config.peer_secret.as_deref().map(Into::into),
            ))
        });
        let router = Router::for_node(
            inner.membership.view().clone(),
            inner.config.shard_count,
            connector.clone(),
            inner.address.clone(),
            Arc::new(crate::service::NodeHandler {
                node: crate::service::HeldNode::Weak(Arc::downgrade(&inner)),
            }),
            Arc::new(PeerEvents),
            inner.links_stop.clone(),
        );
        let _ = inner.router.set(router);
        if let Err(err) = inner.membership.join().await {
            inner.stop_links();
            inner.store_stop.cancel();
            inner.tasks.close();
            return Err(NodeError::Cluster(err));
        }
        inner.state.store(RUNNING, Ordering::Release);

        let renewing = inner
            .tasks
            .spawn(inner.membership.clone().keep_alive(inner.cancel.clone()));
        let (hand_overs, mut handing_over) = tokio::sync::mpsc::unbounded_channel();
        let reacting = inner.tasks.spawn(
            inner
                .membership
                .clone()
                .react(hand_overs, inner.cancel.clone()),
        );
        inner.tasks.spawn(crate::reach::check_peers(
            inner.membership.clone(),
            connector,
            inner.config.peer_check_interval,
            inner.cancel.clone(),
        ));
        *inner.renewing.lock() = vec![renewing, reacting];
        {
            let node = inner.clone();
            inner.tasks.spawn(async move {
                loop {
                    let shards = tokio::select! {
                        () = node.cancel.cancelled() => return,
                        shards = handing_over.recv() => shards,
                    };
                    let Some(shards) = shards else { return };
                    node.hand_over(shards).await;
                }
            });
        }
        if !inner.auto_loaded.is_empty() {
            inner.tasks.spawn(inner.clone().keep_auto_loaded());
        }
        if let Some(interval) = inner.idle_check_interval() {
            let node = inner.clone();
            inner.tasks.spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = node.cancel.cancelled() => return,
                        _ = ticker.tick() => { node.sweep_idle().await; }
                    }
                }
            });
        }
        if !inner.config.save_interval.is_zero() && inner.store.is_some() {
            let node = inner.clone();
            let interval = inner.config.save_interval;
            inner.tasks.spawn(async move {
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    tokio::select! {
                        () = node.cancel.cancelled() => return,
                        _ = ticker.tick() => { node.save_dirty().await; }
                    }
                }
            });
        }
        if let Some(store) = &inner.store {
            let node = inner.clone();
            let store = store.store().clone();
            let retention = inner.config.reliable_call_retention;
            // Often enough that the table holds about a retention period's worth of records.
            let period = (retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600));
            inner.tasks.spawn(async move {
                let mut ticker = tokio::time::interval(period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = node.cancel.cancelled() => return,
                        _ = ticker.tick() => {}
                    }
                    match store.prune_reliable_calls(retention).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(removed = n, ?retention, "pruned reliable-call records")
                        }
                        Err(err) => {
                            tracing::warn!(cause = %err, "cannot prune reliable-call records")
                        }
                    }
                }
            });
        }
        tracing::info!(address = %inner.address, shards = inner.config.shard_count,
            types = inner.registry.len(), "node started");
        Ok(Node { inner })
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
    /// A builder for a node with `config`.
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            registry: FastMap::default(),
            duplicate: None,
            store: None,
            cluster: None,
            connector: None,
            descriptors: Vec::new(),
        }
    }

    /// The node as the node protocol serves it: hand it to `goverse_transport::serve` (what
    /// [`serve`](crate::serve) does), or to an in-process link (`NodeLink::local`) for a gate in
    /// this process.
    pub fn handler(&self) -> Arc<dyn goverse_transport::Handler> {
        Arc::new(crate::service::NodeHandler {
            node: crate::service::HeldNode::Strong(self.clone()),
        })
    }

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
        let deadline = deadline_for(self.inner.call_timeout(), None, options.timeout);
        let chain = options.chain.unwrap_or_else(ChainId::new_root);
        self.inner
            .create_routed(type_name, &id, chain, deadline, true)
            .await
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
        let deadline = deadline_for(self.inner.call_timeout(), None, options.timeout);
        let chain = options.chain.unwrap_or_else(ChainId::new_root);
        self.inner
            .delete_routed(type_name, &id, chain, deadline, true)
            .await
    }

    /// Whether object `id` is active on this node now.
    pub fn is_active(&self, id: &ObjectId) -> bool {
        match shard_of(id, self.inner.shard_count()) {
            Ok(shard) => self.inner.directory.is_active(shard, id),
            Err(_) => false,
        }
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
        self.inner.state.load(Ordering::Acquire) == RUNNING && self.inner.membership.is_ready()
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
        self.inner.hurry.cancel();
    }
}
