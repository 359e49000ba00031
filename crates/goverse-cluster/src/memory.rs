use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{
    CasOutcome, ClusterError, ClusterStore, Expect, KeyValue, LeaseId, Revision, TxnOp, TxnOutcome,
    TxnWrite, WatchEvent, WatchStream,
};

/// How many past events a watch can resume from.
const HISTORY: usize = 16_384;

/// The embedded cluster store: the etcd contract inside one process.
///
/// Lease expiry runs on tokio time, so tests with paused time see leases expire deterministically.
///
/// Clones share the store and its connection; [`MemoryClusterStore::connection`] gives another
/// process's connection to the same store, which [`MemoryClusterStore::set_reachable`] can cut
/// (every request fails as unavailable and its watches end, as an etcd client cut off by a
/// partition sees it) while leases keep expiring on time.
#[derive(Debug, Clone, Default)]
pub struct MemoryClusterStore {
    inner: Arc<Mutex<State>>,
    cut: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct State {
    revision: Revision,
    next_lease: i64,
    keys: BTreeMap<String, KeyValue>,
    leases: HashMap<i64, Lease>,
    history: VecDeque<WatchEvent>,
    watchers: Vec<(String, mpsc::UnboundedSender<WatchEvent>, Arc<AtomicBool>)>,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
}

impl State {
    fn emit(&mut self, event: WatchEvent) {
        let key = match &event {
            WatchEvent::Put(kv) => kv.key.as_str(),
            WatchEvent::Delete { key, .. } => key.as_str(),
        };
        self.watchers.retain(|(prefix, tx, cut)| {
            if cut.load(Ordering::Acquire) {
                // Its connection is cut: the watch ends (the watcher resumes from its revision).
                return false;
            }
            !key.starts_with(prefix.as_str()) || tx.send(event.clone()).is_ok()
        });
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), ClusterError> {
        match lease {
            Some(LeaseId(id)) if !self.leases.contains_key(&id) => {
                Err(ClusterError::LeaseExpired(id))
            }
            _ => Ok(()),
        }
    }

    fn write(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, ClusterError> {
        self.check_lease(lease)?;
        self.revision += 1;
        self.write_at(self.revision, key, value, lease);
        Ok(self.revision)
    }

    /// Writes at `revision`, which the caller has already taken.
    fn write_at(&mut self, revision: Revision, key: &str, value: Vec<u8>, lease: Option<LeaseId>) {
        let create_revision = self.keys.get(key).map_or(revision, |kv| kv.create_revision);
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
            lease,
        };
        self.keys.insert(key.to_owned(), kv.clone());
        self.emit(WatchEvent::Put(kv));
    }

    fn remove(&mut self, key: &str) -> bool {
        if !self.keys.contains_key(key) {
            return false;
        }
        self.revision += 1;
        self.remove_at(self.revision, key)
    }

    fn remove_at(&mut self, revision: Revision, key: &str) -> bool {
        if self.keys.remove(key).is_none() {
            return false;
        }
        self.emit(WatchEvent::Delete {
            key: key.to_owned(),
            mod_revision: revision,
        });
        true
    }

    fn matches(&self, key: &str, expect: Expect) -> bool {
        match (expect, self.keys.get(key)) {
            (Expect::Absent, None) => true,
            (Expect::ModRevision(rev), Some(kv)) => kv.mod_revision == rev,
            _ => false,
        }
    }

    fn drop_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let doomed: Vec<String> = self
            .keys
            .values()
            .filter(|kv| kv.lease == Some(LeaseId(id)))
            .map(|kv| kv.key.clone())
            .collect();
        for key in doomed {
            self.remove(&key);
        }
    }
}

impl MemoryClusterStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another connection to the same store, reachable until [`set_reachable`] cuts it.
    ///
    /// [`set_reachable`]: MemoryClusterStore::set_reachable
    pub fn connection(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cut: Arc::default(),
        }
    }

    /// Cuts this connection (`false`: every request fails as unavailable, watches end) or
    /// restores it (`true`). Other connections are not affected.
    pub fn set_reachable(&self, reachable: bool) {
        self.cut.store(!reachable, Ordering::Release);
        if !reachable {
            let mut state = self.inner.lock();
            let cut = &self.cut;
            state.watchers.retain(|(_, _, c)| !Arc::ptr_eq(c, cut));
        }
    }

    fn reach(&self) -> Result<(), ClusterError> {
        if self.cut.load(Ordering::Acquire) {
            return Err(ClusterError::Unavailable(
                "the connection to the cluster store is cut".to_owned(),
            ));
        }
        Ok(())
    }

    fn spawn_expiry(weak: Weak<Mutex<State>>, id: i64) {
        tokio::spawn(async move {
            loop {
                let deadline = {
                    let Some(inner) = weak.upgrade() else { return };
                    let mut state = inner.lock();
                    let Some(lease) = state.leases.get(&id) else {
                        return;
                    };
                    if lease.deadline <= Instant::now() {
                        tracing::debug!(lease = id, "lease expired");
                        state.drop_lease(id);
                        return;
                    }
                    lease.deadline
                };
                tokio::time::sleep_until(deadline).await;
            }
        });
    }
}

#[async_trait]
impl ClusterStore for MemoryClusterStore {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, ClusterError> {
        self.reach()?;
        let id = {
            let mut state = self.inner.lock();
            state.next_lease += 1;
            let id = state.next_lease;
            state.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline: Instant::now() + ttl,
                },
            );
            id
        };
        Self::spawn_expiry(Arc::downgrade(&self.inner), id);
        Ok(LeaseId(id))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), ClusterError> {
        self.reach()?;
        let mut state = self.inner.lock();
        let entry = state
            .leases
            .get_mut(&lease.0)
            .ok_or(ClusterError::LeaseExpired(lease.0))?;
        if entry.deadline <= Instant::now() {
            state.drop_lease(lease.0);
            return Err(ClusterError::LeaseExpired(lease.0));
        }
        entry.deadline = Instant::now() + entry.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), ClusterError> {
        self.reach()?;
        let mut state = self.inner.lock();
        if !state.leases.contains_key(&lease.0) {
            return Err(ClusterError::LeaseExpired(lease.0));
        }
        state.drop_lease(lease.0);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, ClusterError> {
        self.reach()?;
        Ok(self.inner.lock().keys.get(key).cloned())
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), ClusterError> {
        self.reach()?;
        let state = self.inner.lock();
        let kvs = state
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((kvs, state.revision))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, ClusterError> {
        self.reach()?;
        self.inner.lock().write(key, value, lease)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, ClusterError> {
        self.reach()?;
        let mut state = self.inner.lock();
        if !state.matches(key, expect) {
            return Ok(CasOutcome::Conflict(state.keys.get(key).cloned()));
        }
        state.write(key, value, lease).map(CasOutcome::Applied)
    }

    async fn transact(&self, writes: &[TxnWrite]) -> Result<TxnOutcome, ClusterError> {
        self.reach()?;
        crate::check_batch(writes)?;
        let mut state = self.inner.lock();
        let all_match = writes
            .iter()
            .all(|w| w.expect.is_none_or(|expect| state.matches(&w.key, expect)));
        if !all_match {
            let current = writes
                .iter()
                .map(|w| state.keys.get(&w.key).cloned())
                .collect();
            return Ok(TxnOutcome::Conflict(current));
        }
        for write in writes {
            if let TxnOp::Put { lease, .. } = &write.op {
                state.check_lease(*lease)?;
            }
        }
        state.revision += 1;
        let revision = state.revision;
        for write in writes {
            match &write.op {
                TxnOp::Put { value, lease } => {
                    state.write_at(revision, &write.key, value.clone(), *lease);
                }
                TxnOp::Delete => {
                    state.remove_at(revision, &write.key);
                }
            }
        }
        Ok(TxnOutcome::Applied(revision))
    }

    async fn delete(&self, key: &str) -> Result<bool, ClusterError> {
        self.reach()?;
        Ok(self.inner.lock().remove(key))
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<WatchStream, ClusterError> {
        self.reach()?;
        let mut state = self.inner.lock();
        let (tx, rx) = mpsc::unbounded_channel();
        if after < state.revision {
            let oldest = state
                .history
                .front()
                .map_or(state.revision + 1, WatchEvent::revision);
            if after + 1 < oldest {
                return Err(ClusterError::Compacted {
                    requested: after,
                    oldest,
                });
            }
            for event in state.history.iter().filter(|e| e.revision() > after) {
                let key = match event {
                    WatchEvent::Put(kv) => &kv.key,
                    WatchEvent::Delete { key, .. } => key,
                };
                if key.starts_with(prefix) {
                    let _ = tx.send(event.clone());
                }
            }
        }
        state
            .watchers
            .push((prefix.to_owned(), tx, self.cut.clone()));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn conformance() {
        crate::conformance::run_all(&MemoryClusterStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_connection_fails_its_requests_ends_its_watches_and_loses_its_lease() {
        let store = MemoryClusterStore::new();
        let cut_off = store.connection();
        let lease = cut_off.grant_lease(Duration::from_secs(2)).await.unwrap();
        cut_off
            .put("/k/mine", b"1".to_vec(), Some(lease))
            .await
            .unwrap();
        let mut watch = cut_off.watch_prefix("/k/", 0).await.unwrap();
        assert!(watch.recv().await.is_some(), "the put is replayed");

        cut_off.set_reachable(false);
        let err = cut_off.keep_alive(lease).await.unwrap_err();
        assert!(matches!(err, ClusterError::Unavailable(_)), "{err}");
        assert!(cut_off.get("/k/mine").await.is_err());
        assert!(
            watch.recv().await.is_none(),
            "the watch ends when the connection is cut"
        );
        // The other connection still works, and the cut one's lease runs out on time.
        store.put("/k/other", b"2".to_vec(), None).await.unwrap();
        assert!(store.get("/k/mine").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(2_001)).await;
        assert!(store.get("/k/mine").await.unwrap().is_none());

        cut_off.set_reachable(true);
        assert_eq!(
            cut_off.keep_alive(lease).await,
            Err(ClusterError::LeaseExpired(lease.0))
        );
        assert!(cut_off.get("/k/other").await.unwrap().is_some());
    }
}
