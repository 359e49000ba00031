//! Where object state lives between activations.
//!
//! [`ObjectStore`] is the seam: [`MemoryStore`] for tests and benchmarks, [`SqliteStore`] for the
//! embedded default (one file in a data directory); PostgreSQL joins behind the same trait. One
//! conformance suite (`conformance` module, run by each implementation's tests) pins the contract.
//!
//! Every write carries the epoch of the shard the writer owns. A store refuses a write whose epoch
//! is older than the one it already holds for that object, so a node that lost its shard cannot
//! overwrite the new owner's state.

mod memory;
mod sqlite;

#[cfg(test)]
mod conformance;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use goverse_core::ObjectId;

/// An object's persisted record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The object's type name.
    pub object_type: String,
    /// The state bytes the object produced (JSON for serde-persisted objects).
    pub data: Vec<u8>,
    /// The shard epoch of the last write.
    pub epoch: u64,
}

/// One write in a batch.
#[derive(Debug, Clone, Copy)]
pub struct SaveRequest<'a> {
    /// The object.
    pub id: &'a ObjectId,
    /// Its type name.
    pub object_type: &'a str,
    /// Its state bytes.
    pub data: &'a [u8],
    /// The writer's shard epoch.
    pub epoch: u64,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store holds a newer epoch for the object: the writer no longer owns it.
    #[error("stale epoch for object {id}: store has epoch {stored}, write carried {given}")]
    StaleEpoch {
        /// The object.
        id: String,
        /// The epoch the store holds.
        stored: u64,
        /// The epoch the write carried.
        given: u64,
    },
    /// The backend could not be reached or failed.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// The backend returned something it should not have.
    #[error("object store error: {0}")]
    Backend(String),
}

/// Persistent storage for object state.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// The object's record, if one was saved.
    async fn load(&self, id: &ObjectId) -> Result<Option<StoredObject>, StoreError>;

    /// Inserts or replaces the object's record, unless the store holds a newer epoch.
    async fn save(&self, request: SaveRequest<'_>) -> Result<(), StoreError>;

    /// Saves several records; each is fenced on its own. Returns one result per request, in order.
    async fn save_batch(&self, requests: &[SaveRequest<'_>]) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(self.save(*request).await);
        }
        results
    }

    /// Removes the object's record unless the store holds a newer epoch; `Ok(false)` when there
    /// was none.
    async fn delete(&self, id: &ObjectId, epoch: u64) -> Result<bool, StoreError>;

    /// How many records the store holds.
    async fn count(&self) -> Result<u64, StoreError>;
}
