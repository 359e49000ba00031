//! Joining and leaving the cluster: node registration on a lease, shard claims with
//! compare-and-set, lease renewal, and fencing when renewal fails.
//!
//! With one node (the embedded default) the node claims every shard. Placement across several
//! nodes builds on the same records: each claim bumps the shard's epoch. With an object store,
//! the claim is then recorded in the store, which keeps its own epoch per shard and may raise it
//! further (past what an earlier run of the cluster reached); that store epoch is the fence
//! every write carries, and the node serves a shard only once the store has it. Every change of
//! a shard's state goes through the [`ShardDirectory`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use goverse_cluster::{
    CasOutcome, ClusterError, ClusterStore, Expect, Keys, LeaseId, MAX_TXN_OPS, ReadRecord,
    ShardRecord, TxnOutcome, WatchEvent, claims, releases,
};
use goverse_core::{NodeAddr, ShardId};
use goverse_persistence::{Fence, ObjectStore};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::directory::{ShardDirectory, ShardEvent, ShardState};

/// This node's membership: its registration, its lease, and the claims behind its shards.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) cluster: Arc<dyn ClusterStore>,
    pub(crate) keys: Keys,
    address: NodeAddr,
    lease_ttl: Duration,
    directory: Arc<ShardDirectory>,
    store: Option<Arc<dyn ObjectStore>>,
    lease: Mutex<Option<LeaseId>>,
    /// Woken when a node left or a shard was released: a claim pass may find shards to take.
    claims_wanted: Notify,
}

impl Membership {
    pub(crate) fn new(
        cluster: Arc<dyn ClusterStore>,
        keys: Keys,
        address: NodeAddr,
        lease_ttl: Duration,
        directory: Arc<ShardDirectory>,
        store: Option<Arc<dyn ObjectStore>>,
    ) -> Self {
        Self {
            cluster,
            keys,
            address,
            lease_ttl,
            directory,
            store,
            lease: Mutex::new(None),
            claims_wanted: Notify::new(),
        }
    }

    /// The lease the node is registered on, while it is.
    pub(crate) fn lease(&self) -> Option<LeaseId> {
        *self.lease.lock()
    }

    /// Registers the node and claims the shards no live node holds.
    pub(crate) async fn join(&self) -> Result<(), String> {
        let cluster = &self.cluster;
        let address = self.address.clone();
        let lease = cluster
            .grant_lease(self.lease_ttl)
            .await
            .map_err(|err| format!("cannot get a lease: {err}"))?;
        let key = self.keys.node(&address);
        match cluster
            .compare_and_set(
                &key,
                Expect::Absent,
                address.as_str().as_bytes().to_vec(),
                Some(lease),
            )
            .await
            .map_err(|err| format!("cannot register node {address}: {err}"))?
        {
            CasOutcome::Applied(_) => {}
            CasOutcome::Conflict(_) => {
                let _ = cluster.revoke_lease(lease).await;
                return Err(format!(
                    "node address {address} is already registered: is another node running with it?"
                ));
            }
        }
        *self.lease.lock() = Some(lease);
        if let Err(err) = self.claim_shards().await {
            // Leave no registration behind: the shards it claimed are free for the next node.
            self.directory
                .apply_all(|s| s == ShardState::Incoming, ShardEvent::Release);
            self.lease.lock().take();
            let _ = cluster.revoke_lease(lease).await;
            return Err(format!("cannot claim shards: {err}"));
        }
        Ok(())
    }

    /// Every shard's record as the cluster store holds it now, in shard order.
    async fn read_records(&self) -> Result<Vec<ReadRecord>, String> {
        let (kvs, _) = self
            .cluster
            .get_prefix(&self.keys.shards())
            .await
            .map_err(|err| err.to_string())?;
        let mut records: Vec<ReadRecord> = (0..self.directory.count())
            .map(|n| ReadRecord {
                shard: ShardId(n),
                record: None,
            })
            .collect();
        for kv in kvs {
            let Some(shard) = self.keys.shard_of_key(&kv.key) else {
                continue;
            };
            let Some(slot) = records.get_mut(shard.0 as usize) else {
                return Err(format!(
                    "the cluster store holds a record for shard {shard}, but this node is \
                     configured with {} shards: every node of a cluster needs the same shard count",
                    self.directory.count()
                ));
            };
            slot.record = Some((ShardRecord::decode(shard, &kv.value)?, kv.mod_revision));
        }
        Ok(records)
    }

    /// The nodes registered now.
    async fn live_nodes(&self) -> Result<BTreeSet<NodeAddr>, String> {
        let prefix = self.keys.nodes();
        let (nodes, _) = self
            .cluster
            .get_prefix(&prefix)
            .await
            .map_err(|err| err.to_string())?;
        Ok(nodes
            .into_iter()
            .map(|kv| NodeAddr::new(&kv.key[prefix.len()..]))
            .collect())
    }

    /// Claims every shard nobody live serves and placement does not want elsewhere
    /// ([`claims`] decides); each claim raises the shard's epoch, in the cluster store (in
    /// transactions of up to [`MAX_TXN_OPS`] records) and then in the object store, before the
    /// shard is served. A batch that meets a record changed since it was read is decided again
    /// on what the store holds now.
    async fn claim_shards(&self) -> Result<u32, String> {
        let me = &self.address;
        // Records first, then registrations: a node registers before it claims, so every owner
        // a record names is in the later listing unless its lease has really ended. (The other
        // order could take a node that registered and claimed in between for a gone one.)
        let records = self.read_records().await?;
        let live = self.live_nodes().await?;
        let mut claimed: Vec<Fence> = Vec::new();
        // Shards this node serves or is claiming already are not claimed again (that would
        // raise their epoch under the running activations and fence their writes).
        let mine = |shard: ShardId| {
            !matches!(
                self.directory.state(shard),
                ShardState::Unowned | ShardState::Fenced
            )
        };
        let wanted: Vec<_> = claims(me, &live, &records)
            .into_iter()
            .filter(|w| !mine(w.record.shard))
            .collect();
        for batch in wanted.chunks(MAX_TXN_OPS) {
            let mut batch = batch.to_vec();
            for _attempt in 0..3 {
                if batch.is_empty() {
                    break;
                }
                let txn: Vec<_> = batch.iter().map(|w| w.to_txn(&self.keys)).collect();
                match self
                    .cluster
                    .transact(&txn)
                    .await
                    .map_err(|err| err.to_string())?
                {
                    TxnOutcome::Applied(_) => {
                        for write in &batch {
                            self.directory
                                .apply(write.record.shard, ShardEvent::ClaimStarted);
                            claimed.push(Fence {
                                shard: write.record.shard,
                                epoch: write.record.epoch,
                            });
                        }
                        break;
                    }
                    TxnOutcome::Conflict(current) => {
                        let reread: Vec<ReadRecord> = batch
                            .iter()
                            .zip(current)
                            .map(|(write, kv)| {
                                let shard = write.record.shard;
                                let record = kv
                                    .map(|kv| {
                                        ShardRecord::decode(shard, &kv.value)
                                            .map(|r| (r, kv.mod_revision))
                                    })
                                    .transpose()?;
                                Ok(ReadRecord { shard, record })
                            })
                            .collect::<Result<_, String>>()?;
                        batch = claims(me, &live, &reread)
                            .into_iter()
                            .filter(|w| !mine(w.record.shard))
                            .collect();
                    }
                }
            }
        }
        let epochs = match &self.store {
            Some(store) => store.claim_shards(&claimed).await.map_err(|err| {
                format!("cannot record the shard claims in the object store: {err}")
            })?,
            None => claimed.iter().map(|c| c.epoch).collect(),
        };
        for (claim, epoch) in claimed.iter().zip(&epochs) {
            self.directory
                .apply(claim.shard, ShardEvent::Claimed { epoch: *epoch });
        }
        tracing::info!(node = %me, claimed = claimed.len(), "claimed shards");
        Ok(claimed.len() as u32)
    }

    /// Stops serving every shard (fencing): used when the lease cannot be renewed in time.
    fn fence(&self) {
        self.directory.apply_all(|_| true, ShardEvent::Fence);
    }

    /// Renews the lease every third of its TTL. If renewal has failed for half the TTL the node
    /// stops serving before the lease can expire; once renewal works again (or a new lease is had)
    /// the node re-registers and reclaims its shards.
    pub(crate) async fn keep_alive(self: Arc<Self>, cancel: CancellationToken) {
        let ttl = self.lease_ttl;
        let Some(mut lease) = self.lease() else {
            return;
        };
        let mut last_renewed = tokio::time::Instant::now();
        let mut fenced = false;
        loop {
            let renew_at = tokio::time::Instant::now() + ttl / 3;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep_until(renew_at) => break,
                    () = self.claims_wanted.notified() => {
                        if !fenced && let Err(err) = self.claim_shards().await {
                            tracing::warn!(error = %err, "cannot claim released shards yet");
                        }
                    }
                }
            }
            match self.cluster.keep_alive(lease).await {
                Ok(()) => {
                    last_renewed = tokio::time::Instant::now();
                    if fenced && self.claim_shards().await.is_ok() {
                        fenced = false;
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot renew the node lease");
                    if !fenced && last_renewed.elapsed() >= ttl / 2
                        || matches!(err, ClusterError::LeaseExpired(_))
                    {
                        if !fenced {
                            tracing::error!(
                                "stopping service of every shard until the lease is renewed"
                            );
                            self.fence();
                            fenced = true;
                        }
                        if matches!(err, ClusterError::LeaseExpired(_)) && self.rejoin().await {
                            let Some(renewed) = self.lease() else {
                                return;
                            };
                            lease = renewed;
                            last_renewed = tokio::time::Instant::now();
                            fenced = false;
                        }
                    }
                }
            }
        }
    }

    /// Watches the cluster's registrations and shard records, and asks for a claim pass
    /// whenever a node leaves or a shard is released. Re-lists and watches again when the
    /// watch ends (the store restarted, or could not replay what was missed).
    pub(crate) async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let prefix = format!("{}/", self.keys.prefix());
        let nodes = self.keys.nodes();
        let shards = self.keys.shards();
        let mut backoff = Duration::from_millis(100);
        loop {
            // Any read gives the store-wide revision to watch from; the registrations are the
            // small listing (the shard records are thousands).
            let watching = match self.cluster.get_prefix(&nodes).await {
                Ok((_, revision)) => self.cluster.watch_prefix(&prefix, revision).await,
                Err(err) => Err(err),
            };
            let mut events = match watching {
                Ok(events) => {
                    backoff = Duration::from_millis(100);
                    events
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?backoff, "cannot watch the cluster");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // Whatever changed before the watch started is picked up by one pass now.
            self.claims_wanted.notify_one();
            loop {
                let event = tokio::select! {
                    () = cancel.cancelled() => return,
                    event = events.recv() => event,
                };
                let Some(event) = event else { break };
                let frees = match &event {
                    WatchEvent::Delete { key, .. } => {
                        key.starts_with(&nodes) || key.starts_with(&shards)
                    }
                    WatchEvent::Put(kv) => self.record_changed(&kv.key, &kv.value),
                };
                if frees {
                    self.claims_wanted.notify_one();
                }
            }
        }
    }

    /// A shard record was written: stops serving the shard at once if the record names
    /// another owner (this node lost it), and returns whether the shard is now free.
    fn record_changed(&self, key: &str, value: &[u8]) -> bool {
        let Some(shard) = self.keys.shard_of_key(key) else {
            return false;
        };
        let Ok(record) = ShardRecord::decode(shard, value) else {
            return false;
        };
        if record.current.as_ref() != Some(&self.address)
            && self.directory.state(shard).write_epoch().is_some()
        {
            tracing::warn!(%shard, owner = ?record.current, "shard taken by another node; fencing it");
            self.directory.apply(shard, ShardEvent::Fence);
        }
        record.current.is_none()
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

    /// Releases this node's shards (clearing `current`, keeping the epoch) and revokes its lease.
    pub(crate) async fn leave(&self) {
        let me = &self.address;
        // Nothing runs or writes from here on: the shards are free once the records say so.
        self.fence();
        self.directory.apply_all(|_| true, ShardEvent::Release);
        match self.read_records().await {
            Ok(records) => {
                for batch in releases(me, &records).chunks(MAX_TXN_OPS) {
                    let txn: Vec<_> = batch.iter().map(|w| w.to_txn(&self.keys)).collect();
                    // A record changed meanwhile belongs to someone else now: nothing to give up.
                    if let Err(err) = self.cluster.transact(&txn).await {
                        tracing::warn!(error = %err, "cannot release shards at shutdown");
                    }
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
