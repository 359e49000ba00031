//! Operators' changes to placement: move a shard, pin and unpin it, drain and undrain a node.
//!
//! Each is a small write to the cluster store that the leader's placement then follows
//! ([`crate::Leader`]): a move sets the shard's target (the owner hands the shard over as for
//! any rebalancing move); a pin keeps the shard on its node for as long as that node is
//! registered and not drained; a drain mark, put on the drained node's own lease, keeps every
//! shard off the node until it is undrained or the process ends. Each checks what it names
//! first and says what is wrong, and each write is compare-and-set or idempotent, so two
//! operators (or an operator and the leader) never lose each other's changes.

use std::sync::Arc;

use goverse_core::{NodeAddr, ShardId};

use crate::{CasOutcome, ClusterError, ClusterStore, Expect, Keys, Revision, ShardRecord};

/// Why an operator's change was not made. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The shard number is past the cluster's shard count.
    #[error("there is no shard {shard}: the cluster has {count} shards (0 to {last})", last = count.saturating_sub(1))]
    NoSuchShard {
        /// The shard asked for.
        shard: u32,
        /// The cluster's shard count.
        count: u32,
    },
    /// No node is registered at that address.
    #[error("no node {0} is registered in the cluster")]
    NoSuchNode(NodeAddr),
    /// The node is drained and takes no shards.
    #[error("node {0} is drained: undrain it before giving it shards")]
    Drained(NodeAddr),
    /// The shard is pinned elsewhere; a move would be undone at once.
    #[error("shard {shard} is pinned to {node}: unpin it, or pin it to the node it should move to")]
    Pinned {
        /// The shard.
        shard: ShardId,
        /// Where it is pinned.
        node: NodeAddr,
    },
    /// Draining the node would leave no undrained node to serve the shards.
    #[error(
        "node {0} is the last undrained node: draining it would leave the shards nowhere to go"
    )]
    LastNode(NodeAddr),
    /// The records kept changing under the write (a busy leader); try again.
    #[error("shard {0}'s record kept changing while it was written; try again")]
    Contended(ShardId),
    /// The cluster store failed.
    #[error(transparent)]
    Store(#[from] ClusterError),
}

/// Operators' changes to one cluster's placement (see the module docs).
#[derive(Debug, Clone)]
pub struct Operator {
    store: Arc<dyn ClusterStore>,
    keys: Keys,
    shard_count: u32,
}

impl Operator {
    /// Changes to the cluster under `keys` in `store`, which has `shard_count` shards.
    pub fn new(store: Arc<dyn ClusterStore>, keys: Keys, shard_count: u32) -> Self {
        Self {
            store,
            keys,
            shard_count,
        }
    }

    fn shard(&self, shard: u32) -> Result<ShardId, AdminError> {
        if shard < self.shard_count {
            Ok(ShardId(shard))
        } else {
            Err(AdminError::NoSuchShard {
                shard,
                count: self.shard_count,
            })
        }
    }

    /// The lease of node `node`'s registration; an error when it is not registered or is
    /// drained (when `undrained`).
    async fn registered(
        &self,
        node: &NodeAddr,
        undrained: bool,
    ) -> Result<Option<crate::LeaseId>, AdminError> {
        let registration = self
            .store
            .get(&self.keys.node(node))
            .await?
            .ok_or_else(|| AdminError::NoSuchNode(node.clone()))?;
        if undrained && self.store.get(&self.keys.drain(node)).await?.is_some() {
            return Err(AdminError::Drained(node.clone()));
        }
        Ok(registration.lease)
    }

    /// Sets shard `shard`'s target to `node`: its owner hands it over and `node` takes it,
    /// as for a rebalancing move. The leader keeps the load balanced to ±1 shard, so a move
    /// that leaves the nodes further apart is evened out by a later move (of this shard or
    /// another); pin a shard to keep it on a node. The revision of the write.
    pub async fn move_shard(&self, shard: u32, node: &NodeAddr) -> Result<Revision, AdminError> {
        let shard = self.shard(shard)?;
        self.registered(node, true).await?;
        if let Some(pin) = self.store.get(&self.keys.pin(shard)).await?
            && pin.value != node.as_str().as_bytes()
        {
            return Err(AdminError::Pinned {
                shard,
                node: NodeAddr::new(String::from_utf8_lossy(&pin.value)),
            });
        }
        let key = self.keys.shard(shard);
        for _ in 0..8 {
            let (expect, record) = match self.store.get(&key).await? {
                Some(kv) => (
                    Expect::ModRevision(kv.mod_revision),
                    ShardRecord::decode(shard, &kv.value)
                        .map_err(|bad| ClusterError::Rejected(bad.to_string()))?,
                ),
                None => (
                    Expect::Absent,
                    ShardRecord {
                        shard,
                        target: None,
                        current: None,
                        epoch: 0,
                    },
                ),
            };
            let moved = ShardRecord {
                target: Some(node.clone()),
                ..record
            };
            match self
                .store
                .compare_and_set(&key, expect, moved.encode(), None)
                .await?
            {
                CasOutcome::Applied(revision) => return Ok(revision),
                CasOutcome::Conflict(_) => continue,
            }
        }
        Err(AdminError::Contended(shard))
    }

    /// Pins shard `shard` to `node`: the leader moves it there and keeps it there while the
    /// node is registered and not drained (meanwhile it lives elsewhere, and comes back).
    pub async fn pin(&self, shard: u32, node: &NodeAddr) -> Result<Revision, AdminError> {
        let shard = self.shard(shard)?;
        self.registered(node, true).await?;
        Ok(self
            .store
            .put(
                &self.keys.pin(shard),
                node.as_str().as_bytes().to_vec(),
                None,
            )
            .await?)
    }

    /// Removes shard `shard`'s pin; `false` when it had none.
    pub async fn unpin(&self, shard: u32) -> Result<bool, AdminError> {
        let shard = self.shard(shard)?;
        Ok(self.store.delete(&self.keys.pin(shard)).await?)
    }

    /// Drains `node`: the leader moves every shard off it (pins to it are set aside) and
    /// gives it none until it is undrained. The mark is put on the node's own lease, so a
    /// restarted node (a new process) starts undrained. Refused for the last undrained node.
    pub async fn drain(&self, node: &NodeAddr) -> Result<Revision, AdminError> {
        let lease = self.registered(node, false).await?;
        let (nodes, _) = self.store.get_prefix(&self.keys.nodes()).await?;
        let (drains, _) = self.store.get_prefix(&self.keys.drains()).await?;
        let drained: std::collections::BTreeSet<&str> = drains
            .iter()
            .map(|kv| &kv.key[self.keys.drains().len()..])
            .collect();
        let others = nodes
            .iter()
            .map(|kv| &kv.key[self.keys.nodes().len()..])
            .filter(|n| *n != node.as_str() && !drained.contains(n))
            .count();
        if others == 0 {
            return Err(AdminError::LastNode(node.clone()));
        }
        // On the node's lease: a node that left meanwhile has no lease, and the put fails.
        match self
            .store
            .put(&self.keys.drain(node), Vec::new(), lease)
            .await
        {
            Ok(revision) => Ok(revision),
            Err(ClusterError::LeaseExpired(_)) => Err(AdminError::NoSuchNode(node.clone())),
            Err(err) => Err(err.into()),
        }
    }

    /// Ends `node`'s drain; `false` when it was not drained.
    pub async fn undrain(&self, node: &NodeAddr) -> Result<bool, AdminError> {
        Ok(self.store.delete(&self.keys.drain(node)).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{ClusterMap, MemoryClusterStore};

    fn node(n: u16) -> NodeAddr {
        NodeAddr::new(format!("127.0.0.1:{}", 47000 + n))
    }

    async fn map(store: &MemoryClusterStore, keys: &Keys) -> ClusterMap {
        let (kvs, revision) = store.get_prefix("/goverse/").await.unwrap();
        ClusterMap::load(keys, 8, &kvs, revision).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn operators_move_pin_and_drain_and_mistakes_are_named() {
        let store = MemoryClusterStore::new();
        let keys = Keys::default();
        let ops = Operator::new(Arc::new(store.clone()), keys.clone(), 8);
        let mut leases = Vec::new();
        for n in [1, 2] {
            let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
            store
                .put(&keys.node(&node(n)), Vec::new(), Some(lease))
                .await
                .unwrap();
            leases.push(lease);
        }

        // A move sets the target and keeps the rest of the record.
        let record = ShardRecord {
            shard: ShardId(3),
            target: Some(node(1)),
            current: Some(node(1)),
            epoch: 4,
        };
        store
            .put(&keys.shard(ShardId(3)), record.encode(), None)
            .await
            .unwrap();
        ops.move_shard(3, &node(2)).await.unwrap();
        ops.move_shard(5, &node(1)).await.unwrap();
        let seen = map(&store, &keys).await;
        assert_eq!(
            seen.record(ShardId(3)),
            Some(&ShardRecord {
                target: Some(node(2)),
                ..record
            })
        );
        assert_eq!(seen.record(ShardId(5)).unwrap().target, Some(node(1)));

        // Mistakes are named, and nothing is written.
        let err = ops.move_shard(8, &node(1)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "there is no shard 8: the cluster has 8 shards (0 to 7)"
        );
        let err = ops.pin(2, &node(9)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no node 127.0.0.1:47009 is registered in the cluster"
        );

        // A pin shows in the map; a move of a pinned shard elsewhere is refused.
        ops.pin(2, &node(1)).await.unwrap();
        assert_eq!(
            map(&store, &keys).await.pins.get(&ShardId(2)),
            Some(&node(1))
        );
        let err = ops.move_shard(2, &node(2)).await.unwrap_err();
        assert!(matches!(err, AdminError::Pinned { .. }), "{err}");
        assert!(ops.unpin(2).await.unwrap());
        assert!(!ops.unpin(2).await.unwrap());
        assert!(map(&store, &keys).await.pins.is_empty());

        // A drain: no moves or pins to the node, the last undrained node cannot be drained,
        // and the mark ends with the node's lease.
        ops.drain(&node(2)).await.unwrap();
        assert!(map(&store, &keys).await.drained.contains(&node(2)));
        assert_eq!(
            ops.move_shard(1, &node(2)).await.unwrap_err(),
            AdminError::Drained(node(2))
        );
        assert_eq!(
            ops.drain(&node(1)).await.unwrap_err(),
            AdminError::LastNode(node(1))
        );
        assert!(ops.undrain(&node(2)).await.unwrap());
        ops.drain(&node(2)).await.unwrap();
        store.revoke_lease(leases[1]).await.unwrap();
        let seen = map(&store, &keys).await;
        assert!(seen.drained.is_empty() && !seen.nodes.contains(&node(2)));
        assert_eq!(
            ops.drain(&node(2)).await.unwrap_err(),
            AdminError::NoSuchNode(node(2))
        );
    }
}
