//! Joining and leaving the cluster: node registration on a lease, shard claims with
//! compare-and-set, lease renewal, and fencing when renewal fails.
//!
//! With one node (the embedded default) the node claims every shard. Placement across several
//! nodes builds on the same records: each claim bumps the shard's epoch. With an object store,
//! the claim is then recorded in the store, which keeps its own epoch per shard and may raise it
//! further (past what an earlier run of the cluster reached); that store epoch is the fence
//! every write carries, and the node serves a shard only once the store has it. Every change of
//! a shard's state goes through the [`ShardDirectory`]. What to do about the map is decided by
//! the pure [`plan`] and [`Leader`] of goverse-cluster; this module does their I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use goverse_cluster::{
    BadRecord, CasOutcome, ClusterError, ClusterMap, ClusterStore, Expect, Holding, Keys, Leader,
    LeaderConfig, LeaseId, MAX_TXN_OPS, MapView, NodePlan, ReadRecord, RecordWrite, Revision,
    ShardRecord, TxnOp, TxnOutcome, TxnWrite, claims, plan, serving_window,
};
use goverse_core::{NodeAddr, ShardId};
use goverse_persistence::{Fence, ObjectStore, StoreError};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::directory::{ShardDirectory, ShardEvent, ShardState};
use crate::metrics::ClusterCounters;

/// How this node takes part in the cluster (from [`crate::NodeConfig`]).
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    pub(crate) lease_ttl: Duration,
    pub(crate) min_quorum: usize,
    pub(crate) stability_window: Duration,
    pub(crate) stuck_timeout: Duration,
    /// What the registration says about the node.
    pub(crate) info: goverse_cluster::ProcessInfo,
}

/// This node's membership: its registration, its lease, and the claims behind its shards.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) cluster: Arc<dyn ClusterStore>,
    pub(crate) keys: Keys,
    address: NodeAddr,
    settings: ClusterSettings,
    directory: Arc<ShardDirectory>,
    store: Option<Arc<dyn ObjectStore>>,
    view: MapView,
    lease: Mutex<Option<LeaseId>>,
    /// Set while the lease may be lost: nothing is served, claimed or written.
    fenced: AtomicBool,
    /// Wakes the reactor: a hand-over finished, or the lease is back.
    wake: Notify,
    /// Held by a claim pass: joining and the reactor never claim at once.
    claiming: tokio::sync::Mutex<()>,
    /// Origin of `serve_until_us`.
    origin: tokio::time::Instant,
    /// Turns are admitted until then (µs since `origin`): [`serving_window`] after the last
    /// renewal was asked for, so a node paused or starved past it refuses work the moment it
    /// runs again, before any of its tasks has noticed the lease may be gone.
    serve_until_us: std::sync::atomic::AtomicU64,
    /// Claims, releases, moves, renewals: read by the node's metrics.
    counters: Arc<ClusterCounters>,
}

/// What this node holds of `state`'s shard, for the pure decisions of [`plan`].
fn holding(state: ShardState) -> Holding {
    match state {
        ShardState::Unowned => Holding::Nothing,
        ShardState::Incoming => Holding::Claiming,
        ShardState::Owned { .. } => Holding::Serving,
        ShardState::Draining { .. } => Holding::Draining,
        ShardState::Fenced => Holding::Fenced,
    }
}

impl Membership {
    /// Membership of the node at `address`, deciding from `view`.
    pub(crate) fn new(
        cluster: Arc<dyn ClusterStore>,
        keys: Keys,
        address: NodeAddr,
        settings: ClusterSettings,
        directory: Arc<ShardDirectory>,
        store: Option<Arc<dyn ObjectStore>>,
        view: MapView,
    ) -> Self {
        Self {
            counters: Arc::default(),
            cluster,
            keys,
            address,
            settings,
            directory,
            store,
            view,
            lease: Mutex::new(None),
            fenced: AtomicBool::new(false),
            wake: Notify::new(),
            claiming: tokio::sync::Mutex::new(()),
            origin: tokio::time::Instant::now(),
            serve_until_us: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the lease is surely still held: the last renewal was asked for less than the
    /// [`serving_window`] ago.
    pub(crate) fn lease_fresh(&self) -> bool {
        (self.origin.elapsed().as_micros() as u64) < self.serve_until_us.load(Ordering::Acquire)
    }

    /// A renewal (or the grant) asked for at `asked` succeeded.
    fn renewed(&self, asked: tokio::time::Instant) {
        let window = serving_window(self.settings.lease_ttl);
        let until = asked.duration_since(self.origin) + window;
        let before = self
            .serve_until_us
            .fetch_max(until.as_micros() as u64, Ordering::AcqRel);
        // The previous renewal was asked for a serving window before the deadline it set; this
        // one was due a period after it.
        if before > 0 {
            let due =
                Duration::from_micros(before).saturating_sub(window) + self.settings.lease_ttl / 4;
            self.counters
                .renewal_lateness
                .observe(until.saturating_sub(window).saturating_sub(due));
        }
        self.counters.renewals.fetch_add(1, Ordering::Relaxed);
    }

    /// This node's address.
    pub(crate) fn address(&self) -> &NodeAddr {
        &self.address
    }

    /// The lease the node is registered on, while it is.
    pub(crate) fn lease(&self) -> Option<LeaseId> {
        *self.lease.lock()
    }

    /// Claims, releases, moves and renewals counted so far (the node's metrics read them).
    pub(crate) fn counters(&self) -> &Arc<ClusterCounters> {
        &self.counters
    }

    /// The watched map.
    pub(crate) fn view(&self) -> &MapView {
        &self.view
    }

    /// Whether the node serves now, by the rule gates are ready by too: registered on a lease
    /// that is not fenced and was renewed within the serving window, in a cluster that has its
    /// quorum.
    pub(crate) fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// [`Membership::is_ready`], with the reason when not.
    pub(crate) fn readiness(&self) -> Result<(), NotReady> {
        if self.lease().is_none() {
            return Err(NotReady::NoLease);
        }
        if self.fenced.load(Ordering::Acquire) || !self.lease_fresh() {
            return Err(NotReady::LeaseNotRenewed);
        }
        let map = self.view.borrow();
        let others = map.nodes.iter().filter(|n| **n != self.address).count();
        if others + 1 < self.settings.min_quorum {
            return Err(NotReady::BelowQuorum {
                nodes: others + 1,
                needed: self.settings.min_quorum,
            });
        }
        Ok(())
    }

    /// Shards the map names this node as serving.
    pub(crate) fn mapped_shards(&self) -> u64 {
        let map = self.view.borrow();
        map.shards
            .iter()
            .filter_map(|r| r.record.as_ref())
            .filter(|(record, _)| record.current.as_ref() == Some(&self.address))
            .count() as u64
    }

    /// Asks the reactor to look at the map again.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Registers the node and claims the shards the map gives it.
    pub(crate) async fn join(&self) -> Result<(), JoinError> {
        let cluster = &self.cluster;
        let address = self.address.clone();
        let asked = tokio::time::Instant::now();
        let lease = cluster
            .grant_lease(self.settings.lease_ttl)
            .await
            .map_err(JoinError::Lease)?;
        let key = self.keys.node(&address);
        match cluster
            .compare_and_set(
                &key,
                Expect::Absent,
                self.settings.info.encode(),
                Some(lease),
            )
            .await
            .map_err(|cause| JoinError::Register {
                address: address.clone(),
                cause,
            })? {
            CasOutcome::Applied(_) => {}
            CasOutcome::Conflict(_) => {
                let _ = cluster.revoke_lease(lease).await;
                return Err(JoinError::AddressTaken(address));
            }
        }
        *self.lease.lock() = Some(lease);
        self.renewed(asked);
        self.fenced.store(false, Ordering::Release);
        let claims = self.plan().claim;
        if let Err(err) = self.claim(claims).await {
            // Leave no registration behind: the shards it claimed are free for the next node.
            self.directory
                .apply_all(|s| s == ShardState::Incoming, ShardEvent::Release);
            self.lease.lock().take();
            let _ = cluster.revoke_lease(lease).await;
            return Err(JoinError::Claim(err));
        }
        self.directory.serve_node_slot();
        Ok(())
    }

    /// What to do about the map as the view holds it now.
    fn plan(&self) -> NodePlan {
        let map = self.view.borrow();
        plan(&self.address, &map, self.settings.min_quorum, |s| {
            holding(self.directory.state(s))
        })
    }

    /// Every shard's record as the cluster store holds it now, in shard order.
    async fn read_records(&self) -> Result<Vec<ReadRecord>, ClaimError> {
        let (kvs, revision) = self.cluster.get_prefix(&self.keys.shards()).await?;
        Ok(ClusterMap::load(&self.keys, self.directory.count(), &kvs, revision)?.shards)
    }

    /// The nodes registered now, as the store lists them.
    async fn live_nodes(&self) -> Result<std::collections::BTreeSet<NodeAddr>, ClusterError> {
        let prefix = self.keys.nodes();
        let (nodes, _) = self.cluster.get_prefix(&prefix).await?;
        Ok(nodes
            .into_iter()
            .map(|kv| NodeAddr::new(&kv.key[prefix.len()..]))
            .collect())
    }

    /// Takes `wanted` shards: each claim raises the shard's epoch, in the cluster store (in
    /// transactions of up to [`MAX_TXN_OPS`] records) and then in the object store, before the
    /// shard is served. A batch that meets a record changed since the map was read is decided
    /// again on what the store holds now.
    async fn claim(&self, wanted: Vec<RecordWrite>) -> Result<u32, ClaimError> {
        if wanted.is_empty() {
            return Ok(0);
        }
        let _claiming = self.claiming.lock().await;
        let me = &self.address;
        let (mut live, serving) = {
            let map = self.view.borrow();
            (
                map.nodes.clone(),
                map.placeable(&map.serving(Some(me)).nodes),
            )
        };
        live.insert(me.clone());
        let mut claimed: Vec<Fence> = Vec::new();
        // Shards this node serves or is claiming already are not claimed again (that would
        // raise their epoch under the running activations and fence their writes).
        let free = |shard: ShardId| {
            matches!(
                self.directory.state(shard),
                ShardState::Unowned | ShardState::Fenced
            )
        };
        let wanted: Vec<RecordWrite> = wanted
            .into_iter()
            .filter(|w| free(w.record.shard))
            .collect();
        for batch in wanted.chunks(MAX_TXN_OPS) {
            let mut batch = batch.to_vec();
            for _attempt in 0..3 {
                if batch.is_empty() {
                    break;
                }
                let txn: Vec<_> = batch.iter().map(|w| w.to_txn(&self.keys)).collect();
                match self.cluster.transact(&txn).await? {
                    TxnOutcome::Applied(_) => {
                        for write in &batch {
                            self.directory
                                .claim_started(write.record.shard, write.record.epoch);
                            claimed.push(Fence {
                                shard: write.record.shard,
                                epoch: write.record.epoch,
                            });
                        }
                        break;
                    }
                    TxnOutcome::Conflict(current) => {
                        let reread = reread(&batch, current)?;
                        // Registrations listed after the records: a node that registered and
                        // claimed since the map was read is live here, not taken for gone.
                        live = self.live_nodes().await?;
                        live.insert(me.clone());
                        batch = claims(me, &live, &serving, &reread)
                            .into_iter()
                            .filter(|w| free(w.record.shard))
                            .collect();
                    }
                }
            }
        }
        let epochs = match &self.store {
            Some(store) => store
                .claim_shards(&claimed)
                .await
                .map_err(ClaimError::Store)?,
            None => claimed.iter().map(|c| c.epoch).collect(),
        };
        for (claim, epoch) in claimed.iter().zip(&epochs) {
            self.directory
                .apply(claim.shard, ShardEvent::Claimed { epoch: *epoch });
        }
        self.counters
            .claims
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        tracing::info!(node = %me, claimed = claimed.len(), "claimed shards");
        Ok(claimed.len() as u32)
    }

    /// Writes records (releases, target changes) in transactions of up to [`MAX_TXN_OPS`].
    /// A batch that meets a changed record is written again without the writes whose record
    /// changed (those are decided again from the next map). Returns the last revision written.
    async fn write_records(&self, writes: &[RecordWrite]) -> Result<Revision, ClusterError> {
        let mut last = 0;
        for batch in writes.chunks(MAX_TXN_OPS) {
            let mut batch = batch.to_vec();
            while !batch.is_empty() {
                let txn: Vec<_> = batch.iter().map(|w| w.to_txn(&self.keys)).collect();
                match self.cluster.transact(&txn).await? {
                    TxnOutcome::Applied(revision) => {
                        last = revision;
                        break;
                    }
                    TxnOutcome::Conflict(current) => {
                        self.counters.map_write_failure("modrevision_conflict");
                        let before = batch.len();
                        batch = batch
                            .into_iter()
                            .zip(current)
                            .filter(|(w, kv)| match (w.expect, kv) {
                                (Expect::Absent, None) => true,
                                (Expect::ModRevision(r), Some(kv)) => kv.mod_revision == r,
                                _ => false,
                            })
                            .map(|(w, _)| w)
                            .collect();
                        if batch.len() == before {
                            break;
                        }
                    }
                }
            }
        }
        Ok(last)
    }

    /// Counts `releases` written: shards let go, and those handed to another node.
    fn released(&self, releases: &[RecordWrite]) {
        self.counters
            .releases
            .fetch_add(releases.len() as u64, Ordering::Relaxed);
        let mut moved = self.counters.migrations_to.lock();
        for write in releases {
            if let Some(to) = &write.record.target
                && *to != self.address
            {
                *moved.entry(to.to_string()).or_default() += 1;
            }
        }
    }

    /// Stops serving every shard (fencing): used when the lease cannot be renewed in time.
    fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
        self.directory.apply_all(|_| true, ShardEvent::Fence);
    }

    /// Keeps the node's lease by the cluster's one lease policy
    /// ([`goverse_cluster::LeasePolicy`]) until `cancel`: renews every quarter of the TTL,
    /// stops serving every shard once the [`serving_window`] of the last renewal has passed
    /// (before the lease can expire), registers again when the lease is gone, and serves again
    /// (the reactor reclaiming its shards) once the lease is held.
    pub(crate) async fn keep_alive(self: Arc<Self>, cancel: CancellationToken) {
        let policy = goverse_cluster::LeasePolicy::new(
            self.settings.lease_ttl,
            tokio::time::Instant::now().duration_since(self.origin),
        );
        goverse_cluster::keep_lease(&*self, policy, self.origin, cancel).await;
    }

    /// Acts on every change of the map: fences shards another node took, hands over shards
    /// placement moved away, releases records left naming this node, claims what the map gives
    /// it, stands for leader when nobody leads, and while leading steps placement. Shards to
    /// hand over go to `hand_overs` (the node drains and saves them, then wakes the reactor,
    /// which releases them).
    pub(crate) async fn react(
        self: Arc<Self>,
        hand_overs: mpsc::UnboundedSender<Vec<ShardId>>,
        cancel: CancellationToken,
    ) {
        let mut changes = self.view.subscribe();
        let mut leader = Leader::new(LeaderConfig {
            stability_window: self.settings.stability_window,
            min_quorum: self.settings.min_quorum,
            stuck_timeout: self.settings.stuck_timeout,
        });
        let origin = tokio::time::Instant::now();
        // A first pass at once: the map changed while the node was joining.
        self.wake();
        loop {
            let tick = leader
                .next_tick(origin.elapsed())
                .map(|after| origin + after);
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                () = self.wake.notified() => {}
                () = sleep_until_some(tick) => {}
            }
            if self.fenced.load(Ordering::Acquire) || self.lease().is_none() {
                continue;
            }
            let plan = self.plan();
            for shard in &plan.fence {
                let was = self.directory.state(*shard);
                let dropped = self.directory.lose(*shard);
                if was.write_epoch().is_some() || dropped > 0 {
                    tracing::warn!(%shard, dropped, "shard taken by another node; stopped serving it");
                }
            }
            if !plan.hand_over.is_empty() {
                for shard in &plan.hand_over {
                    self.directory.apply(*shard, ShardEvent::Drain);
                }
                tracing::info!(shards = plan.hand_over.len(), "handing shards over");
                let _ = hand_overs.send(plan.hand_over);
            }
            if !plan.release.is_empty() {
                match self.write_records(&plan.release).await {
                    Ok(_) => self.released(&plan.release),
                    Err(err) => tracing::warn!(error = %err, "cannot release shards yet"),
                }
            }
            if let Err(err) = self.claim(plan.claim).await {
                tracing::warn!(error = %err, "cannot claim shards yet");
            }
            if plan.campaign {
                self.campaign().await;
            }
            let now = origin.elapsed();
            let moves = {
                let map = self.view.borrow();
                let leading = map.leader.as_ref().is_some_and(|(l, _)| *l == self.address);
                leader.step(now, leading, &map)
            };
            if !moves.is_empty() {
                match self.write_records(&moves).await {
                    Ok(revision) => {
                        leader.written(revision);
                        self.counters
                            .reallocations
                            .fetch_add(moves.len() as u64, Ordering::Relaxed);
                    }
                    Err(err) => {
                        self.counters.map_write_failed(&err);
                        tracing::warn!(error = %err, "cannot write shard targets");
                    }
                }
            }
        }
    }

    /// Stands for leader: writes the leader key on this node's lease if nobody holds it.
    async fn campaign(&self) {
        let Some(lease) = self.lease() else { return };
        let key = self.keys.leader();
        let me = self.address.as_str().as_bytes().to_vec();
        match self
            .cluster
            .compare_and_set(&key, Expect::Absent, me, Some(lease))
            .await
        {
            Ok(CasOutcome::Applied(_)) => {
                tracing::info!(node = %self.address, "leading the cluster")
            }
            Ok(CasOutcome::Conflict(_)) => {}
            Err(err) => tracing::warn!(error = %err, "cannot stand for leader"),
        }
    }

    /// Gives up leadership, if this node has it, so another node can lead at once.
    async fn resign(&self) {
        let leader = self.view.borrow().leader.clone();
        if let Some((addr, revision)) = leader
            && addr == self.address
        {
            let write = TxnWrite {
                key: self.keys.leader(),
                expect: Some(Expect::ModRevision(revision)),
                op: TxnOp::Delete,
            };
            match self.cluster.transact(&[write]).await {
                Ok(_) => tracing::info!(node = %self.address, "resigned as leader"),
                Err(err) => tracing::warn!(error = %err, "cannot resign as leader"),
            }
        }
    }

    async fn rejoin(&self) -> bool {
        match self.join().await {
            Ok(()) => {
                tracing::info!("rejoined the cluster with a new lease");
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot rejoin the cluster yet");
                false
            }
        }
    }

    /// Resigns, releases this node's shards (clearing `current`, keeping the epoch) and revokes
    /// its lease.
    pub(crate) async fn leave(&self) {
        let me = &self.address;
        self.resign().await;
        // Nothing runs or writes from here on: the shards are free once the records say so.
        self.fence();
        self.directory.apply_all(|_| true, ShardEvent::Release);
        match self.read_records().await {
            Ok(records) => {
                let releases = goverse_cluster::releases(me, &records);
                // A record changed meanwhile belongs to someone else now: nothing to give up.
                match self.write_records(&releases).await {
                    Ok(_) => self.released(&releases),
                    Err(err) => tracing::warn!(error = %err, "cannot release shards at shutdown"),
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot release shards at shutdown"),
        }
        let lease = self.lease.lock().take();
        if let Some(lease) = lease {
            let cluster = self.cluster.clone();
            // Bounded: a dead store must not hold up shutdown.
            let _ = tokio::time::timeout(Duration::from_secs(2), cluster.revoke_lease(lease)).await;
        }
    }
}

impl goverse_cluster::LeaseHolder for Membership {
    fn renew(&self) -> goverse_cluster::BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            match self.lease() {
                Some(lease) => self.cluster.keep_alive(lease).await,
                None => Err(ClusterError::LeaseExpired(0)),
            }
        })
    }

    fn rejoin(&self) -> goverse_cluster::BoxFuture<'_, bool> {
        Box::pin(async move {
            let joined = self.rejoin().await;
            if joined {
                self.wake();
            }
            joined
        })
    }

    fn renewed(&self, asked: tokio::time::Instant) {
        Membership::renewed(self, asked);
    }

    fn renew_failed(&self) {
        self.counters
            .renewal_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    fn fence(&self) {
        Membership::fence(self);
    }

    fn unfence(&self) {
        self.fenced.store(false, Ordering::Release);
        self.wake();
    }
}

/// Why a node does not serve now ([`Node::readiness`](crate::Node::readiness)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The node is starting or stopping.
    #[error("the node is {0}")]
    Phase(&'static str),
    /// The node holds no lease (it lost it and has not registered again yet).
    #[error("the node holds no lease in the cluster store")]
    NoLease,
    /// The lease was not renewed within the serving window (the cluster store is unreachable
    /// or the process was paused): the node fenced itself.
    #[error("the lease was not renewed in time (cluster store unreachable?); serving nothing")]
    LeaseNotRenewed,
    /// Fewer nodes than `min_quorum` are registered.
    #[error("{nodes} node(s) registered, the quorum is {needed}")]
    BelowQuorum {
        /// Registered nodes, this one included.
        nodes: usize,
        /// `min_quorum`.
        needed: usize,
    },
    /// The node does not serve the shards the map gives it yet (claims or hand-overs under
    /// way).
    #[error("serving {serving} shards, the map gives this node {mapped}")]
    ShardsUnsettled {
        /// Shards served.
        serving: u64,
        /// Shards the map names this node as serving.
        mapped: u64,
    },
}

/// Why a node could not join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The cluster store granted no lease.
    #[error("cannot get a lease: {0}")]
    Lease(ClusterError),
    /// The registration could not be written.
    #[error("cannot register node {address}: {cause}")]
    Register {
        /// The node's address.
        address: NodeAddr,
        /// The store's error.
        cause: ClusterError,
    },
    /// Another live node is registered with this address.
    #[error("node address {0} is already registered: is another node running with it?")]
    AddressTaken(NodeAddr),
    /// The shards the map gives the node could not be claimed; the registration was removed.
    #[error("cannot claim shards: {0}")]
    Claim(ClaimError),
}

/// Why shards could not be claimed (or their records read).
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The cluster store failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A shard record cannot be decoded.
    #[error(transparent)]
    BadRecord(#[from] BadRecord),
    /// The object store did not record the claims' epochs.
    #[error("cannot record the shard claims in the object store: {0}")]
    Store(StoreError),
}

/// The records a conflicting batch met, as the store returned them.
fn reread(
    batch: &[RecordWrite],
    current: Vec<Option<goverse_cluster::KeyValue>>,
) -> Result<Vec<ReadRecord>, BadRecord> {
    batch
        .iter()
        .zip(current)
        .map(|(write, kv)| {
            let shard = write.record.shard;
            let record = kv
                .map(|kv| ShardRecord::decode(shard, &kv.value).map(|r| (r, kv.mod_revision)))
                .transpose()?;
            Ok(ReadRecord { shard, record })
        })
        .collect()
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn the_serving_window_is_the_ttl_less_a_tenth_at_least_100ms() {
        let ms = Duration::from_millis;
        assert_eq!(serving_window(Duration::from_secs(10)), ms(9000));
        assert_eq!(serving_window(Duration::from_secs(2)), ms(1800));
        assert_eq!(serving_window(ms(500)), ms(400));
        assert_eq!(serving_window(ms(300)), ms(200));
        for ttl in (300..60_000).step_by(97).map(ms) {
            let window = serving_window(ttl);
            assert!(
                window >= ttl / 2 && window <= ttl - ms(100).min(ttl / 2),
                "{ttl:?}"
            );
        }
    }
}
