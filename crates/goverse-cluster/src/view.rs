//! A watched copy of the cluster: registrations, the leader and every shard record.
//!
//! [`ClusterMap`] is the plain data (loaded from one listing, changed by watch events, both
//! pure); [`MapView`] keeps one up to date from a [`ClusterStore`]: it lists everything under
//! the prefix at one revision, watches from that revision, applies each burst of events in one
//! update, and lists again when the watch ends. Nodes decide their claims, hand-overs and
//! placement from it; routers send calls by it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use goverse_core::{NodeAddr, ShardId};
use tokio::sync::watch;

use crate::{
    BadRecord, ClusterStore, KeyValue, Keys, MapError, ProcessInfo, ReachReport, ReadRecord,
    Revision, Serving, ShardRecord, WatchEvent, serving_nodes,
};

/// The cluster as last read: who is registered, who leads, and every shard's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// The store revision this copy reflects.
    pub revision: Revision,
    /// Registered nodes.
    pub nodes: BTreeSet<NodeAddr>,
    /// The revision each registered node's key was created at (when it joined).
    pub joined: BTreeMap<NodeAddr, Revision>,
    /// Each node's last [`ReachReport`]: which peers it reaches.
    pub reach: BTreeMap<NodeAddr, ReachReport>,
    /// Registered gates.
    pub gates: BTreeSet<String>,
    /// The leader and the revision its key was written at (what resigning expects).
    pub leader: Option<(NodeAddr, Revision)>,
    /// One entry per shard, in shard order.
    pub shards: Vec<ReadRecord>,
    /// The shard count recorded in the store when the cluster formed (`None` before that).
    pub recorded_shard_count: Option<u32>,
    /// Shard records numbered past this process's shard count: left by a process configured
    /// with more shards. Ignored for routing and placement; `goverse cluster repair` removes
    /// them.
    pub stray: BTreeSet<ShardId>,
    /// What each registered node and gate says about itself, by its address.
    pub info: BTreeMap<String, ProcessInfo>,
    /// Shards an operator pinned, and to which node.
    pub pins: BTreeMap<ShardId, NodeAddr>,
    /// Nodes an operator drained: placement gives them nothing.
    pub drained: BTreeSet<NodeAddr>,
}

impl ClusterMap {
    /// A map of `shard_count` shards with nothing recorded.
    pub fn empty(shard_count: u32) -> Self {
        Self {
            revision: 0,
            nodes: BTreeSet::new(),
            joined: BTreeMap::new(),
            reach: BTreeMap::new(),
            gates: BTreeSet::new(),
            leader: None,
            shards: (0..shard_count)
                .map(|n| ReadRecord {
                    shard: ShardId(n),
                    record: None,
                })
                .collect(),
            recorded_shard_count: None,
            stray: BTreeSet::new(),
            info: BTreeMap::new(),
            pins: BTreeMap::new(),
            drained: BTreeSet::new(),
        }
    }

    /// The map a listing of everything under `keys`' prefix describes, read at `revision`.
    /// A shard record the shard count has no room for is kept aside in [`ClusterMap::stray`];
    /// an undecodable record is an error.
    pub fn load(
        keys: &Keys,
        shard_count: u32,
        kvs: &[KeyValue],
        revision: Revision,
    ) -> Result<Self, BadRecord> {
        let mut map = Self::empty(shard_count);
        map.revision = revision;
        for kv in kvs {
            map.put(keys, kv)?;
        }
        Ok(map)
    }

    /// Applies one watch event. Keys outside the layout are ignored; a bad shard record is an
    /// error and leaves the map as it was.
    pub fn apply(&mut self, keys: &Keys, event: &WatchEvent) -> Result<(), BadRecord> {
        self.revision = self.revision.max(event.revision());
        match event {
            WatchEvent::Put(kv) => self.put(keys, kv),
            WatchEvent::Delete { key, .. } => {
                if let Some(node) = key.strip_prefix(&keys.nodes()) {
                    self.info.remove(node);
                    let node = NodeAddr::new(node);
                    self.joined.remove(&node);
                    self.nodes.remove(&node);
                } else if let Some(node) = key.strip_prefix(&keys.reach()) {
                    self.reach.remove(&NodeAddr::new(node));
                } else if let Some(gate) = key.strip_prefix(&keys.gates()) {
                    self.info.remove(gate);
                    self.gates.remove(gate);
                } else if let Some(node) = key.strip_prefix(&keys.drains()) {
                    self.drained.remove(&NodeAddr::new(node));
                } else if let Some(shard) = keys.pin_of_key(key) {
                    self.pins.remove(&shard);
                } else if *key == keys.leader() {
                    self.leader = None;
                } else if *key == keys.shard_count() {
                    self.recorded_shard_count = None;
                } else if let Some(shard) = keys.shard_of_key(key) {
                    match self.shards.get_mut(shard.0 as usize) {
                        Some(slot) => slot.record = None,
                        None => {
                            self.stray.remove(&shard);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn put(&mut self, keys: &Keys, kv: &KeyValue) -> Result<(), BadRecord> {
        if let Some(node) = kv.key.strip_prefix(&keys.nodes()) {
            self.info
                .insert(node.to_owned(), ProcessInfo::decode(&kv.value));
            let node = NodeAddr::new(node);
            self.joined.insert(node.clone(), kv.create_revision);
            self.nodes.insert(node);
        } else if let Some(node) = kv.key.strip_prefix(&keys.reach()) {
            // A report that cannot be read counts as none: its node serves nothing until it
            // writes a good one, and the map stays usable.
            match ReachReport::decode(&kv.key, &kv.value) {
                Ok(report) => {
                    self.reach.insert(NodeAddr::new(node), report);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "ignoring an unreadable reach report");
                    self.reach.remove(&NodeAddr::new(node));
                }
            }
        } else if let Some(gate) = kv.key.strip_prefix(&keys.gates()) {
            self.info
                .insert(gate.to_owned(), ProcessInfo::decode(&kv.value));
            self.gates.insert(gate.to_owned());
        } else if let Some(node) = kv.key.strip_prefix(&keys.drains()) {
            self.drained.insert(NodeAddr::new(node));
        } else if let Some(shard) = keys.pin_of_key(&kv.key) {
            // A pin that cannot be read counts as none (placement goes on without it).
            match std::str::from_utf8(&kv.value) {
                Ok(node) if !node.is_empty() && !node.contains(char::is_whitespace) => {
                    self.pins.insert(shard, NodeAddr::new(node));
                }
                _ => {
                    tracing::warn!(%shard, "ignoring an unreadable shard pin");
                    self.pins.remove(&shard);
                }
            }
        } else if kv.key == keys.leader() {
            let addr = std::str::from_utf8(&kv.value)
                .map_err(|_| BadRecord::new(kv.key.clone(), "leader record is not utf-8"))?;
            self.leader = Some((NodeAddr::new(addr), kv.mod_revision));
        } else if kv.key == keys.shard_count() {
            self.recorded_shard_count = Some(parse_shard_count(&kv.key, &kv.value)?);
        } else if let Some(shard) = keys.shard_of_key(&kv.key) {
            match self.shards.get_mut(shard.0 as usize) {
                Some(slot) => {
                    slot.record = Some((ShardRecord::decode(shard, &kv.value)?, kv.mod_revision));
                }
                None => {
                    self.stray.insert(shard);
                }
            }
        }
        Ok(())
    }

    /// The record of `shard`, if it has one.
    pub fn record(&self, shard: ShardId) -> Option<&ShardRecord> {
        self.shards
            .get(shard.0 as usize)?
            .record
            .as_ref()
            .map(|(record, _)| record)
    }

    /// The registered nodes (and `me`, taken as registered last if the map does not show it
    /// yet) that may hold shards: those linked both ways to each other by their reach reports
    /// ([`serving_nodes`]).
    pub fn serving(&self, me: Option<&NodeAddr>) -> Serving {
        let mut joined: BTreeMap<NodeAddr, Revision> = self
            .nodes
            .iter()
            .map(|node| {
                let at = self.joined.get(node).copied().unwrap_or(Revision::MAX);
                (node.clone(), at)
            })
            .collect();
        if let Some(me) = me {
            joined.entry(me.clone()).or_insert(Revision::MAX);
        }
        serving_nodes(&joined, &self.reach)
    }

    /// The nodes placement may give shards to, of those `serving` names: the ones not drained,
    /// or all of them when every one is drained (shards must live somewhere).
    pub fn placeable(&self, serving: &BTreeSet<NodeAddr>) -> BTreeSet<NodeAddr> {
        let undrained: BTreeSet<NodeAddr> = serving.difference(&self.drained).cloned().collect();
        if undrained.is_empty() {
            serving.clone()
        } else {
            undrained
        }
    }

    /// The pins placement honours: those to a node that is registered and not drained.
    pub fn honoured_pins(&self) -> BTreeMap<ShardId, NodeAddr> {
        self.pins
            .iter()
            .filter(|(shard, node)| {
                self.nodes.contains(*node)
                    && !self.drained.contains(*node)
                    && (shard.0 as usize) < self.shards.len()
            })
            .map(|(shard, node)| (*shard, node.clone()))
            .collect()
    }

    /// The node serving `shard` now, if it is a registered one.
    pub fn owner(&self, shard: ShardId) -> Option<&NodeAddr> {
        self.record(shard)?
            .current
            .as_ref()
            .filter(|n| self.nodes.contains(*n))
    }

    /// Every shard's record, an absent one as an empty record of epoch 0 (what placement reads).
    pub fn records(&self) -> Vec<ShardRecord> {
        self.shards
            .iter()
            .map(|read| match &read.record {
                Some((record, _)) => record.clone(),
                None => ShardRecord {
                    shard: read.shard,
                    target: None,
                    current: None,
                    epoch: 0,
                },
            })
            .collect()
    }

    /// Shards with no registered node serving them.
    pub fn unowned(&self) -> usize {
        (0..self.shards.len() as u32)
            .filter(|n| self.owner(ShardId(*n)).is_none())
            .count()
    }

    /// Shards whose target is a registered node other than the one serving them: hand-overs
    /// placement asked for that have not finished.
    pub fn moving(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|read| read.record.as_ref())
            .filter(|(r, _)| {
                r.target.as_ref().is_some_and(|t| self.nodes.contains(t)) && r.target != r.current
            })
            .count()
    }
}

/// Whether the set of nodes has held still long enough for placement to act on it: it is
/// stable once it has not changed for `window` and holds at least `min_quorum` nodes. Pure:
/// the caller passes the time.
#[derive(Debug, Clone)]
pub struct Stability {
    window: Duration,
    min_quorum: usize,
    nodes: BTreeSet<NodeAddr>,
    since: Duration,
}

impl Stability {
    /// Stability over `window` with at least `min_quorum` nodes.
    pub fn new(window: Duration, min_quorum: usize) -> Self {
        Self {
            window,
            min_quorum,
            nodes: BTreeSet::new(),
            since: Duration::ZERO,
        }
    }

    /// Records the nodes seen at `now`; a change restarts the window.
    pub fn observe(&mut self, now: Duration, nodes: &BTreeSet<NodeAddr>) {
        if *nodes != self.nodes {
            self.nodes = nodes.clone();
            self.since = now;
        }
    }

    /// Whether the cluster has its quorum.
    pub fn has_quorum(&self) -> bool {
        self.nodes.len() >= self.min_quorum
    }

    /// Whether placement may act at `now`: quorum, and no change for the window.
    pub fn is_stable(&self, now: Duration) -> bool {
        self.has_quorum() && now.saturating_sub(self.since) >= self.window
    }

    /// When the window started by the last change ends.
    pub fn stable_at(&self) -> Duration {
        self.since + self.window
    }
}

/// A [`ClusterMap`] kept up to date from a store by a background task; cheap to clone.
/// The task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MapView {
    map: watch::Receiver<ClusterMap>,
    _task: Arc<AbortOnDrop>,
    reconnections: Arc<Reconnections>,
    store: Arc<dyn ClusterStore>,
}

/// How often the watch ended and the map was listed again: done, or failed (and retried).
#[derive(Debug, Default)]
struct Reconnections {
    reloaded: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MapView {
    /// Lists the cluster under `keys` (an error when the store cannot be read or holds a map
    /// for another shard count), then follows it. Must run inside a tokio runtime.
    pub async fn start(
        store: Arc<dyn ClusterStore>,
        keys: Keys,
        shard_count: u32,
    ) -> Result<Self, MapError> {
        let prefix = format!("{}/", keys.prefix());
        let (kvs, revision) = store
            .get_prefix(&prefix)
            .await
            .map_err(MapError::store("read the cluster map"))?;
        let map = ClusterMap::load(&keys, shard_count, &kvs, revision)?;
        if let Some(recorded) = map.recorded_shard_count
            && recorded != shard_count
        {
            return Err(count_mismatch(&keys, recorded, shard_count));
        }
        if !map.stray.is_empty() {
            tracing::warn!(
                records = map.stray.len(),
                first = %map.stray.first().expect("not empty"),
                "the cluster store holds shard records past the shard count; they are ignored \
                 (goverse cluster repair removes them)"
            );
        }
        let (tx, rx) = watch::channel(map);
        let reconnections = Arc::new(Reconnections::default());
        let task = tokio::spawn(follow(
            store.clone(),
            keys,
            shard_count,
            tx,
            revision,
            reconnections.clone(),
        ));
        Ok(Self {
            map: rx,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
            reconnections,
            store,
        })
    }

    /// How often the watch on the store broke and was taken up again: (resumed or listed again,
    /// attempts that failed and were retried). Upstream's `goverse_watch_reconnections_total`
    /// outcomes `reconnected` and `reload_failed`.
    pub fn reconnections(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        // A watch the store took up again by itself, or one that ended and was listed again.
        let (resumed, resume_failed) = self.store.watch_reconnections();
        (
            resumed + self.reconnections.reloaded.load(Relaxed),
            resume_failed + self.reconnections.failed.load(Relaxed),
        )
    }

    /// The map now. Holds a read lock: copy out what is needed, never hold it across an await.
    pub fn borrow(&self) -> watch::Ref<'_, ClusterMap> {
        self.map.borrow()
    }

    /// A receiver that sees every later update (`changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<ClusterMap> {
        let mut rx = self.map.clone();
        rx.mark_unchanged();
        rx
    }

    /// Waits until `ready` holds for the map (checked now and after every update), or `timeout`
    /// passes; returns whether it held.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        ready: impl FnMut(&ClusterMap) -> bool,
    ) -> bool {
        let mut rx = self.map.clone();
        tokio::time::timeout(timeout, rx.wait_for(ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Follows the store from `after`, publishing each burst of events as one update; lists and
/// watches again when the watch ends.
async fn follow(
    store: Arc<dyn ClusterStore>,
    keys: Keys,
    shard_count: u32,
    tx: watch::Sender<ClusterMap>,
    mut after: Revision,
    reconnections: Arc<Reconnections>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let prefix = format!("{}/", keys.prefix());
    let mut backoff = Duration::from_millis(100);
    let mut relist = false;
    loop {
        if relist {
            match store.get_prefix(&prefix).await {
                Ok((kvs, revision)) => match ClusterMap::load(&keys, shard_count, &kvs, revision) {
                    Ok(map) => {
                        after = revision;
                        tx.send_replace(map);
                        reconnections.reloaded.fetch_add(1, Relaxed);
                    }
                    Err(err) => tracing::error!(error = %err, "cannot load the cluster map"),
                },
                Err(err) => {
                    reconnections.failed.fetch_add(1, Relaxed);
                    tracing::warn!(error = %err, retry_in = ?backoff, "cannot list the cluster");
                    if pause(&tx, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let mut events = match store.watch_prefix(&prefix, after).await {
            Ok(events) => {
                backoff = Duration::from_millis(100);
                events
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "cannot watch the cluster");
                relist = true;
                if pause(&tx, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                () = tx.closed() => return,
                event = events.recv() => event,
            };
            let Some(first) = first else { break };
            let mut burst = vec![first];
            while let Ok(event) = events.try_recv() {
                burst.push(event);
            }
            tx.send_modify(|map| {
                for event in &burst {
                    if let Err(err) = map.apply(&keys, event) {
                        tracing::warn!(error = %err, "ignoring a bad cluster record");
                    }
                }
            });
            after = burst.last().map_or(after, WatchEvent::revision);
        }
        relist = true;
    }
}

/// Reads a recorded shard count.
fn parse_shard_count(key: &str, value: &[u8]) -> Result<u32, BadRecord> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&n| goverse_core::check_shard_count(n).is_ok())
        .ok_or_else(|| {
            BadRecord::new(
                key,
                format!("{:?} is not a shard count", String::from_utf8_lossy(value)),
            )
        })
}

fn count_mismatch(keys: &Keys, recorded: u32, configured: u32) -> MapError {
    MapError::ShardCountMismatch {
        prefix: keys.prefix().to_owned(),
        recorded,
        configured,
        how: "recorded when it formed",
    }
}

/// Makes sure the cluster under `keys` has `shard_count` shards before this process writes
/// anything to it. The first process of a cluster records its count (`{prefix}/shard_count`,
/// created only if absent); every later one compares and is refused on a difference. A
/// cluster formed before the count was recorded has it recorded now, if its shard records
/// agree with `shard_count` (records numbered past it, or a full map of another size, refuse).
pub async fn settle_shard_count(
    store: &dyn ClusterStore,
    keys: &Keys,
    shard_count: u32,
) -> Result<(), MapError> {
    let key = keys.shard_count();
    let read = MapError::store("read the cluster's shard count");
    loop {
        if let Some(kv) = store.get(&key).await.map_err(read)? {
            let recorded = parse_shard_count(&key, &kv.value)?;
            if recorded != shard_count {
                return Err(count_mismatch(keys, recorded, shard_count));
            }
            return Ok(());
        }
        // Not recorded yet: a new cluster, or one formed before counts were recorded, whose
        // records must fit this count.
        let (records, _) = store.get_prefix(&keys.shards()).await.map_err(read)?;
        let highest = records
            .iter()
            .filter_map(|kv| keys.shard_of_key(&kv.key))
            .map(|shard| shard.0)
            .max();
        if let Some(highest) = highest {
            if records.len() as u64 == u64::from(highest) + 1 && highest + 1 != shard_count {
                return Err(MapError::ShardCountMismatch {
                    prefix: keys.prefix().to_owned(),
                    recorded: highest + 1,
                    configured: shard_count,
                    how: "a full map of records",
                });
            }
            if highest >= shard_count {
                return Err(MapError::RecordsPastCount {
                    prefix: keys.prefix().to_owned(),
                    highest,
                    configured: shard_count,
                });
            }
        }
        match store
            .compare_and_set(
                &key,
                crate::Expect::Absent,
                shard_count.to_string().into_bytes(),
                None,
            )
            .await
            .map_err(MapError::store("record the cluster's shard count"))?
        {
            crate::CasOutcome::Applied(_) => {
                tracing::info!(
                    shards = shard_count,
                    prefix = keys.prefix(),
                    "recorded the cluster's shard count"
                );
                return Ok(());
            }
            // Another process recorded one first: compare with it.
            crate::CasOutcome::Conflict(_) => continue,
        }
    }
}

/// Waits out a backoff (doubling it, up to 5 s); `true` when every receiver is gone.
async fn pause(tx: &watch::Sender<ClusterMap>, backoff: &mut Duration) -> bool {
    let closed = tokio::select! {
        () = tx.closed() => true,
        () = tokio::time::sleep(*backoff) => false,
    };
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Expect, MemoryClusterStore};

    fn addr(n: u16) -> NodeAddr {
        NodeAddr::new(format!("127.0.0.1:{}", 47000 + n))
    }

    #[test]
    fn stability_needs_quorum_and_a_quiet_window() {
        let mut s = Stability::new(Duration::from_secs(10), 2);
        let one: BTreeSet<_> = [addr(1)].into();
        let two: BTreeSet<_> = [addr(1), addr(2)].into();
        s.observe(Duration::from_secs(1), &one);
        assert!(!s.has_quorum());
        assert!(!s.is_stable(Duration::from_secs(100)));
        s.observe(Duration::from_secs(5), &two);
        assert!(s.has_quorum());
        assert!(!s.is_stable(Duration::from_secs(14)));
        // Seeing the same nodes again does not restart the window.
        s.observe(Duration::from_secs(12), &two);
        assert!(s.is_stable(Duration::from_secs(15)));
        assert_eq!(s.stable_at(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn the_view_follows_the_store() {
        let store = Arc::new(MemoryClusterStore::new());
        let keys = Keys::default();
        let record = |target: u16, epoch| ShardRecord {
            shard: ShardId(3),
            target: Some(addr(target)),
            current: Some(addr(target)),
            epoch,
        };
        store
            .put(&keys.node(&addr(1)), b"x".to_vec(), None)
            .await
            .unwrap();
        store
            .put(&keys.shard(ShardId(3)), record(1, 1).encode(), None)
            .await
            .unwrap();
        let view = MapView::start(store.clone(), keys.clone(), 8)
            .await
            .unwrap();
        assert_eq!(view.borrow().owner(ShardId(3)), Some(&addr(1)));
        assert_eq!(view.borrow().unowned(), 7);

        store
            .compare_and_set(
                &keys.leader(),
                Expect::Absent,
                b"127.0.0.1:47002".to_vec(),
                None,
            )
            .await
            .unwrap();
        store
            .put(&keys.node(&addr(2)), b"x".to_vec(), None)
            .await
            .unwrap();
        store
            .put(&keys.gate("127.0.0.1:48000"), b"x".to_vec(), None)
            .await
            .unwrap();
        store
            .put(&keys.shard(ShardId(3)), record(2, 2).encode(), None)
            .await
            .unwrap();
        assert!(
            view.wait_for(Duration::from_secs(5), |m| m.owner(ShardId(3))
                == Some(&addr(2)))
                .await
        );
        {
            let map = view.borrow();
            assert_eq!(map.leader.as_ref().map(|l| &l.0), Some(&addr(2)));
            assert_eq!(map.gates.len(), 1);
            assert_eq!(map.nodes.len(), 2);
            assert_eq!(map.record(ShardId(3)).unwrap().epoch, 2);
        }
        // A node that is gone serves nothing, whatever its records say.
        store.delete(&keys.node(&addr(2))).await.unwrap();
        assert!(
            view.wait_for(Duration::from_secs(5), |m| m.owner(ShardId(3)).is_none())
                .await
        );
        assert_eq!(view.borrow().moving(), 0);

        // A record for a shard the count has no room for is set aside, not fatal; watched
        // ones too, and their deletion clears them.
        store
            .put(&keys.shard(ShardId(100)), record(1, 1).encode(), None)
            .await
            .unwrap();
        let again = MapView::start(store.clone(), keys.clone(), 8)
            .await
            .unwrap();
        assert_eq!(again.borrow().stray, BTreeSet::from([ShardId(100)]));
        store.delete(&keys.shard(ShardId(100))).await.unwrap();
        assert!(
            again
                .wait_for(Duration::from_secs(5), |m| m.stray.is_empty())
                .await
        );
        // A recorded count other than this process's is refused.
        store
            .put(&keys.shard_count(), b"16".to_vec(), None)
            .await
            .unwrap();
        let err = MapView::start(store, keys, 8).await.unwrap_err();
        assert!(
            matches!(
                err,
                MapError::ShardCountMismatch {
                    recorded: 16,
                    configured: 8,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_process_records_the_count_and_later_ones_must_match() {
        let store = MemoryClusterStore::new();
        let keys = Keys::default();
        settle_shard_count(&store, &keys, 64).await.unwrap();
        settle_shard_count(&store, &keys, 64).await.unwrap();
        let err = settle_shard_count(&store, &keys, 128).await.unwrap_err();
        assert!(
            matches!(
                err,
                MapError::ShardCountMismatch {
                    recorded: 64,
                    configured: 128,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            store.get(&keys.shard_count()).await.unwrap().unwrap().value,
            b"64"
        );
        // A cluster formed before counts were recorded is judged by its records.
        let old = MemoryClusterStore::new();
        for n in 0..16 {
            let record = ShardRecord {
                shard: ShardId(n),
                target: Some(addr(1)),
                current: Some(addr(1)),
                epoch: 1,
            };
            old.put(&keys.shard(ShardId(n)), record.encode(), None)
                .await
                .unwrap();
        }
        for configured in [32, 8] {
            let err = settle_shard_count(&old, &keys, configured)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    MapError::ShardCountMismatch {
                        recorded: 16,
                        how: "a full map of records",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("nothing was written"), "{err}");
        }
        old.delete(&keys.shard(ShardId(3))).await.unwrap();
        let err = settle_shard_count(&old, &keys, 8).await.unwrap_err();
        assert!(
            matches!(err, MapError::RecordsPastCount { highest: 15, .. }),
            "{err}"
        );
        settle_shard_count(&old, &keys, 16).await.unwrap();
        assert_eq!(
            old.get(&keys.shard_count()).await.unwrap().unwrap().value,
            b"16"
        );
        // Garbage in the key is named.
        let bad = MemoryClusterStore::new();
        bad.put(&keys.shard_count(), b"lots".to_vec(), None)
            .await
            .unwrap();
        let err = settle_shard_count(&bad, &keys, 16).await.unwrap_err();
        assert!(
            matches!(&err, MapError::BadRecord(bad) if bad.reason.contains("not a shard count")),
            "{err}"
        );
    }
}
