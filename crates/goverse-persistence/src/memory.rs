use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use goverse_core::{ObjectId, ShardId};
use parking_lot::Mutex;

use crate::{
    Fence, ObjectStore, Refusal, ReliableCall, SCHEMA_VERSION, StateChange, StoreError,
    StoreStatus, StoredObject, Write, next_epoch,
};

/// An in-process store: fast, lost at exit. For tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    failing: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<ObjectId, StoredObject>,
    shards: HashMap<ShardId, u64>,
    calls: HashMap<String, (ReliableCall, Instant)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every operation fail with `Unavailable` until called again with `false`: a stand-in
    /// for a database outage in tests of the runtime's failure handling.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("memory store set to fail".into()));
        }
        Ok(())
    }
}

impl State {
    fn fence_ok(&self, fence: Fence) -> Result<(), Refusal> {
        let current = self.shards.get(&fence.shard).copied().unwrap_or(0);
        if current == 0 || current != fence.epoch {
            return Err(Refusal::StaleFence {
                shard: fence.shard,
                current,
                given: fence.epoch,
            });
        }
        Ok(())
    }

    fn apply(&mut self, write: &Write<'_>) -> Result<(), Refusal> {
        self.fence_ok(write.fence)?;
        if let Some(call) = write.reliable {
            if self.calls.contains_key(&call.call_id) {
                return Err(Refusal::CallIdTaken {
                    call_id: call.call_id.clone(),
                });
            }
            self.calls
                .insert(call.call_id.clone(), (call.clone(), Instant::now()));
        }
        match write.change {
            StateChange::Save(data) => {
                self.records.insert(
                    write.id.clone(),
                    StoredObject {
                        object_type: write.object_type.to_owned(),
                        data: data.to_vec(),
                        epoch: write.fence.epoch,
                    },
                );
            }
            StateChange::Delete => {
                self.records.remove(write.id);
            }
            StateChange::Unchanged => {}
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        "in-memory store".to_owned()
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.check_up()
    }

    async fn load_many(&self, ids: &[ObjectId]) -> Result<Vec<Option<StoredObject>>, StoreError> {
        self.check_up()?;
        let state = self.state.lock();
        Ok(ids
            .iter()
            .map(|id| state.records.get(id).cloned())
            .collect())
    }

    fn batches_loads(&self) -> bool {
        false
    }

    async fn commit(&self, writes: &[Write<'_>]) -> Result<Vec<Result<(), Refusal>>, StoreError> {
        self.check_up()?;
        let mut state = self.state.lock();
        Ok(writes.iter().map(|w| state.apply(w)).collect())
    }

    async fn claim_shards(&self, claims: &[Fence]) -> Result<Vec<u64>, StoreError> {
        self.check_up()?;
        let mut state = self.state.lock();
        Ok(claims
            .iter()
            .map(|claim| {
                let epoch = next_epoch(state.shards.get(&claim.shard).copied(), claim.epoch);
                state.shards.insert(claim.shard, epoch);
                epoch
            })
            .collect())
    }

    async fn reliable_calls(
        &self,
        call_ids: &[&str],
    ) -> Result<Vec<Option<ReliableCall>>, StoreError> {
        self.check_up()?;
        let state = self.state.lock();
        Ok(call_ids
            .iter()
            .map(|id| state.calls.get(*id).map(|(c, _)| c.clone()))
            .collect())
    }

    async fn prune_reliable_calls(&self, age: Duration) -> Result<u64, StoreError> {
        self.check_up()?;
        let mut state = self.state.lock();
        let before = state.calls.len();
        state.calls.retain(|_, (_, at)| at.elapsed() < age);
        Ok((before - state.calls.len()) as u64)
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.check_up()?;
        let state = self.state.lock();
        Ok(StoreStatus {
            schema_version: SCHEMA_VERSION,
            objects: state.records.len() as u64,
            reliable_calls: state.calls.len() as u64,
            claimed_shards: state.shards.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time: the conformance suite ages reliable-call records by the wall clock.
    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failing_mode_names_the_outage() {
        let store = MemoryStore::new();
        store.set_failing(true);
        let err = store.load(&ObjectId::from("x")).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        store.set_failing(false);
        assert_eq!(store.load(&ObjectId::from("x")).await.unwrap(), None);
    }
}
