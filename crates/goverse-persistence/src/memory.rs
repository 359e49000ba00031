use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use goverse_core::ObjectId;
use parking_lot::Mutex;

use crate::{ObjectStore, SaveRequest, StoreError, StoredObject};

/// An in-process store: fast, lost at exit. For tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<ObjectId, StoredObject>>,
    failing: AtomicBool,
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

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("memory store set to fail".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn load(&self, id: &ObjectId) -> Result<Option<StoredObject>, StoreError> {
        self.check()?;
        Ok(self.records.lock().get(id).cloned())
    }

    async fn save(&self, request: SaveRequest<'_>) -> Result<(), StoreError> {
        self.check()?;
        let mut records = self.records.lock();
        if let Some(existing) = records.get(request.id)
            && existing.epoch > request.epoch
        {
            return Err(StoreError::StaleEpoch {
                id: request.id.to_string(),
                stored: existing.epoch,
                given: request.epoch,
            });
        }
        records.insert(
            request.id.clone(),
            StoredObject {
                object_type: request.object_type.to_owned(),
                data: request.data.to_vec(),
                epoch: request.epoch,
            },
        );
        Ok(())
    }

    async fn delete(&self, id: &ObjectId, epoch: u64) -> Result<bool, StoreError> {
        self.check()?;
        let mut records = self.records.lock();
        match records.get(id) {
            None => Ok(false),
            Some(existing) if existing.epoch > epoch => Err(StoreError::StaleEpoch {
                id: id.to_string(),
                stored: existing.epoch,
                given: epoch,
            }),
            Some(_) => {
                records.remove(id);
                Ok(true)
            }
        }
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.check()?;
        Ok(self.records.lock().len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn failing_mode_names_the_outage() {
        let store = MemoryStore::new();
        store.set_failing(true);
        let err = store.load(&ObjectId::from("x")).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        store.set_failing(false);
        assert_eq!(store.load(&ObjectId::from("x")).await.unwrap(), None);
    }
}
