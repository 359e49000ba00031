//! Joining and leaving the cluster: node registration on a lease, shard claims with
//! compare-and-set, lease renewal, and fencing when renewal fails.
//!
//! With one node (the embedded default) the node claims every shard. Placement across several
//! nodes builds on the same records: each claim bumps the shard's epoch. With an object store,
//! the claim is then recorded in the store, which keeps its own epoch per shard and may raise it
//! further (past what an earlier run of the cluster reached); that store epoch is the fence
//! every write carries, and the node serves a shard only once the store has it. Every change of
//! a shard's state goes through the [`ShardDirectory`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use goverse_cluster::{CasOutcome, ClusterError, ClusterStore, Expect, Keys, LeaseId, ShardRecord};
use goverse_core::{NodeAddr, ShardId};
use goverse_persistence::{Fence, ObjectStore};
use parking_lot::Mutex;
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

    /// Claims every shard that is unassigned, assigned to this node, or held by a node that is no
    /// longer registered; each claim raises the shard's epoch, in the cluster store and then in the
    /// object store, before the shard is served.
    async fn claim_shards(&self) -> Result<u32, String> {
        let cluster_error = |err: ClusterError| err.to_string();
        let cluster = &self.cluster;
        let me = self.address.clone();
        let (records, _) = cluster
            .get_prefix(&self.keys.shards())
            .await
            .map_err(cluster_error)?;
        let nodes_prefix = self.keys.nodes();
        let (nodes, _) = cluster
            .get_prefix(&nodes_prefix)
            .await
            .map_err(cluster_error)?;
        let live: HashSet<String> = nodes
            .into_iter()
            .map(|kv| kv.key[nodes_prefix.len()..].to_owned())
            .collect();
        let mut existing = std::collections::HashMap::with_capacity(records.len());
        for kv in records {
            existing.insert(kv.key.clone(), kv);
        }
        let mut claimed: Vec<Fence> = Vec::new();
        for n in 0..self.directory.count() {
            let shard = ShardId(n);
            let key = self.keys.shard(shard);
            let (expect, epoch) = match existing.get(&key) {
                None => (Expect::Absent, 1),
                Some(kv) => {
                    let record = ShardRecord::decode(shard, &kv.value)?;
                    let free = match &record.current {
                        None => true,
                        Some(current) => *current == me || !live.contains(current.as_str()),
                    };
                    if !free {
                        continue;
                    }
                    (Expect::ModRevision(kv.mod_revision), record.epoch + 1)
                }
            };
            let record = ShardRecord {
                shard,
                target: Some(me.clone()),
                current: Some(me.clone()),
                epoch,
            };
            if let CasOutcome::Applied(_) = cluster
                .compare_and_set(&key, expect, record.encode(), None)
                .await
                .map_err(cluster_error)?
            {
                self.directory.apply(shard, ShardEvent::ClaimStarted);
                claimed.push(Fence { shard, epoch });
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
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(ttl / 3) => {}
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
        let cluster = &self.cluster;
        match cluster.get_prefix(&self.keys.shards()).await {
            Ok((records, _)) => {
                for kv in records {
                    let Some(shard) = self.keys.shard_of_key(&kv.key) else {
                        continue;
                    };
                    let Ok(mut record) = ShardRecord::decode(shard, &kv.value) else {
                        continue;
                    };
                    if record.current.as_ref() != Some(me) {
                        continue;
                    }
                    record.current = None;
                    let _ = cluster
                        .compare_and_set(
                            &kv.key,
                            Expect::ModRevision(kv.mod_revision),
                            record.encode(),
                            None,
                        )
                        .await;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot release shards at shutdown"),
        }
        let lease = self.lease.lock().take();
        if let Some(lease) = lease {
            let cluster = cluster.clone();
            // Bounded: a dead store must not hold up shutdown.
            let _ = tokio::time::timeout(Duration::from_secs(2), cluster.revoke_lease(lease)).await;
        }
    }
}
