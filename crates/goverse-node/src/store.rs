//! The node's one way to its object store: a saver that group-commits every write (periodic,
//! write-through, `ctx.save`, idle close, delete, shutdown, reliable-call records), and batchers
//! that turn the loads of activations starting at the same time, and the reliable-call lookups
//! of calls arriving together, into one query each.
//!
//! The saver is one task: it takes everything queued, commits it as one transaction, answers each
//! writer, and takes the next batch, which has grown while the commit ran. One commit is in
//! flight at a time, so writes of one object commit in the order they were queued. Writers queue
//! under the turn that produced their state, so that order is the order of the turns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use goverse_core::{CallError, ErrorCode, ObjectId};
use goverse_persistence::{
    Fence, ObjectStore, Refusal, ReliableCall, StateChange, StoreError, StoredObject, Write,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most writes committed in one transaction.
const MAX_COMMIT_BATCH: usize = 4096;
/// Most loads in one query.
const MAX_LOAD_BATCH: usize = 1024;
/// Load queries in flight at once.
const LOADS_IN_FLIGHT: usize = 4;

/// What a queued write does to the object's state.
#[derive(Debug)]
pub(crate) enum Change {
    Save(Vec<u8>),
    Delete,
    Unchanged,
}

/// One write for the saver.
#[derive(Debug)]
pub(crate) struct SaveJob {
    pub(crate) id: ObjectId,
    pub(crate) object_type: &'static str,
    pub(crate) change: Change,
    pub(crate) fence: Fence,
    pub(crate) reliable: Option<ReliableCall>,
}

impl SaveJob {
    fn as_write(&self) -> Write<'_> {
        Write {
            id: &self.id,
            object_type: self.object_type,
            change: match &self.change {
                Change::Save(data) => StateChange::Save(data),
                Change::Delete => StateChange::Delete,
                Change::Unchanged => StateChange::Unchanged,
            },
            fence: self.fence,
            reliable: self.reliable.as_ref(),
        }
    }
}

/// Why a write was not committed.
#[derive(Debug, Clone)]
pub(crate) enum SaveFailure {
    /// The store refused this write alone (stale fence, taken call id).
    Refused(Refusal),
    /// The commit failed as a whole (or its outcome is unknown).
    Store(StoreError),
    /// The saver has stopped (the node shut down).
    Stopped,
}

impl SaveFailure {
    /// The failure as a call error about `what` ("state of Counter/c1").
    pub(crate) fn into_call_error(self, what: &str) -> CallError {
        match self {
            // Another object recorded the call id first: a permanent refusal, not a retry.
            Self::Refused(refusal @ Refusal::CallIdTaken { .. }) => {
                CallError::invalid_argument(format!("{what} not written: {refusal}"))
            }
            // The shard moved: its new owner will take the retry.
            Self::Refused(refusal) => {
                CallError::unavailable(format!("{what} not written: {refusal}"))
            }
            Self::Store(err) => store_error(err, &format!("{what} not written")),
            Self::Stopped => {
                CallError::unavailable(format!("{what} not written: the node is stopping"))
            }
        }
    }
}

/// A store failure as a call error: transient failures are `Unavailable` (retry), damaged data is
/// `DataLoss`, anything else `Internal`.
pub(crate) fn store_error(err: StoreError, what: &str) -> CallError {
    let code = match &err {
        StoreError::Unavailable(_) | StoreError::ReadOnly(_) => ErrorCode::Unavailable,
        StoreError::Corrupt(_) => ErrorCode::DataLoss,
        StoreError::Schema(_) | StoreError::Backend(_) | StoreError::Config(_) => {
            ErrorCode::Internal
        }
    };
    CallError::new(code, format!("{what}: {err}"))
}

type Reply = oneshot::Sender<Result<(), SaveFailure>>;

/// Counters the saver keeps (reported in `NodeStats`).
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    /// Transactions committed.
    pub(crate) commits: AtomicU64,
    /// Writes refused by a shard's fence.
    pub(crate) fence_refusals: AtomicU64,
    /// Writes the store refused for their content alone (found by committing a failed batch in
    /// parts); each is named in the log.
    pub(crate) unsaveable: AtomicU64,
    /// Writes per committed transaction.
    pub(crate) commit_batch: goverse_core::metrics::SizeHistogram,
}

/// The node's handle on its store.
pub(crate) struct StoreLink {
    store: Arc<dyn ObjectStore>,
    saves: mpsc::UnboundedSender<(SaveJob, Reply)>,
    loads: Option<Batcher<ObjectId, Option<StoredObject>>>,
    lookups: Option<Batcher<String, Option<ReliableCall>>>,
    pub(crate) counters: Arc<StoreCounters>,
}

impl std::fmt::Debug for StoreLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLink")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

impl StoreLink {
    /// Starts the saver (and, for stores that batch, the loader) on `tasks`. They run until
    /// `stop`, after draining what is queued.
    pub(crate) fn start(
        store: Arc<dyn ObjectStore>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let counters = Arc::new(StoreCounters::default());
        let (saves, save_rx) = mpsc::unbounded_channel();
        tasks.spawn(run_saver(
            store.clone(),
            save_rx,
            counters.clone(),
            stop.clone(),
        ));
        let (loads, lookups) = if store.batches_loads() {
            let (loader, finder) = (store.clone(), store.clone());
            let loads = Batcher::start(tasks, stop.clone(), move |ids: Vec<ObjectId>| {
                let store = loader.clone();
                async move { store.load_many(&ids).await }
            });
            let lookups = Batcher::start(tasks, stop, move |call_ids: Vec<String>| {
                let store = finder.clone();
                async move {
                    let ids: Vec<&str> = call_ids.iter().map(String::as_str).collect();
                    store.reliable_calls(&ids).await
                }
            });
            (Some(loads), Some(lookups))
        } else {
            (None, None)
        };
        Self {
            store,
            saves,
            loads,
            lookups,
            counters,
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Queues `job` for the next commit. Call it under the turn that produced the state, so
    /// writes of one object commit in turn order; await the receiver for the outcome.
    pub(crate) fn submit(&self, job: SaveJob) -> oneshot::Receiver<Result<(), SaveFailure>> {
        let (tx, rx) = oneshot::channel();
        // A stopped saver drops the reply: the receiver reports `Stopped`.
        let _ = self.saves.send((job, tx));
        rx
    }

    /// Queues `job` and waits for its commit.
    pub(crate) async fn save(&self, job: SaveJob) -> Result<(), SaveFailure> {
        wait(self.submit(job)).await
    }

    /// The object's record, loaded with whatever other loads are waiting.
    pub(crate) async fn load(&self, id: &ObjectId) -> Result<Option<StoredObject>, StoreError> {
        match &self.loads {
            Some(loads) => loads.get(id.clone()).await,
            None => self.store.load(id).await,
        }
    }

    /// The record of reliable call `call_id`, looked up with whatever other lookups are waiting.
    pub(crate) async fn reliable_call(
        &self,
        call_id: &str,
    ) -> Result<Option<ReliableCall>, StoreError> {
        match &self.lookups {
            Some(lookups) => lookups.get(call_id.to_owned()).await,
            None => self.store.reliable_call(call_id).await,
        }
    }
}

/// The outcome of a submitted write.
pub(crate) async fn wait(
    rx: oneshot::Receiver<Result<(), SaveFailure>>,
) -> Result<(), SaveFailure> {
    rx.await.unwrap_or(Err(SaveFailure::Stopped))
}

async fn run_saver(
    store: Arc<dyn ObjectStore>,
    mut rx: mpsc::UnboundedReceiver<(SaveJob, Reply)>,
    counters: Arc<StoreCounters>,
    stop: CancellationToken,
) {
    let mut batch: Vec<(SaveJob, Reply)> = Vec::with_capacity(256);
    loop {
        let received = tokio::select! {
            // Whatever is queued is committed before stopping.
            biased;
            n = rx.recv_many(&mut batch, MAX_COMMIT_BATCH) => n,
            () = stop.cancelled() => return,
        };
        if received == 0 {
            return;
        }
        let outcomes = commit_batch(&*store, &batch, &counters).await;
        for ((job, reply), outcome) in batch.drain(..).zip(outcomes) {
            if let Err(SaveFailure::Refused(refusal)) = &outcome {
                if matches!(refusal, Refusal::StaleFence { .. }) {
                    counters.fence_refusals.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(object = %job.id, cause = %refusal,
                        "write refused by the shard's fence");
                } else {
                    tracing::warn!(object = %job.id, cause = %refusal, "write refused");
                }
            }
            let _ = reply.send(outcome);
        }
    }
}

/// Commits `batch` as one transaction; the outcome of each write, in order.
///
/// When the transaction fails for a reason that is not transient (the store refused some value
/// in it), the batch is split in halves and each half committed on its own, down to single
/// writes, so the write the store cannot take fails alone, named in the log and counted, and
/// every other object's write commits. Halves commit left to right, so writes of one object
/// still commit in queue order. A transient failure (store unreachable) fails what it hit:
/// splitting would only multiply the attempts.
async fn commit_batch(
    store: &dyn ObjectStore,
    batch: &[(SaveJob, Reply)],
    counters: &StoreCounters,
) -> Vec<Result<(), SaveFailure>> {
    let mut outcomes: Vec<Result<(), SaveFailure>> = Vec::with_capacity(batch.len());
    // Ranges still to commit, the next one last; split in halves after a refusal.
    let mut pending: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
    pending.push(0..batch.len());
    while let Some(range) = pending.pop() {
        let writes: Vec<Write<'_>> = batch[range.clone()]
            .iter()
            .map(|(job, _)| job.as_write())
            .collect();
        match store.commit(&writes).await {
            Ok(results) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters.commit_batch.observe(range.len() as u64);
                outcomes.extend(
                    results
                        .into_iter()
                        .map(|result| result.map_err(SaveFailure::Refused)),
                );
            }
            Err(err) if range.len() > 1 && !err.is_transient() => {
                tracing::warn!(writes = range.len(), cause = %err,
                    "commit failed; committing its halves apart to find the write the store refuses");
                let mid = range.start + range.len() / 2;
                pending.push(mid..range.end);
                pending.push(range.start..mid);
            }
            Err(err) => {
                if range.len() == 1 && !err.is_transient() {
                    let job = &batch[range.start].0;
                    counters.unsaveable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(object = %job.id, object_type = job.object_type, cause = %err,
                        "the store refuses this object's write; other objects' writes go on");
                } else {
                    tracing::warn!(writes = range.len(), cause = %err, "commit failed");
                }
                outcomes.extend(range.map(|_| Err(SaveFailure::Store(err.clone()))));
            }
        }
    }
    outcomes
}

/// Gathers single reads into batches: while `LOADS_IN_FLIGHT` queries run, the next batch
/// grows, so a burst of reads costs a few queries instead of one each.
struct Batcher<K, V> {
    tx: mpsc::UnboundedSender<(K, oneshot::Sender<Result<V, StoreError>>)>,
}

impl<K: Send + 'static, V: Send + 'static> Batcher<K, V> {
    fn start<F, Fut>(tasks: &TaskTracker, stop: CancellationToken, run: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Vec<V>, StoreError>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(K, oneshot::Sender<Result<V, StoreError>>)>();
        let in_flight = Arc::new(Semaphore::new(LOADS_IN_FLIGHT));
        let spawner = tasks.clone();
        tasks.spawn(async move {
            loop {
                // Wait for room first: while queries are in flight, the next batch grows.
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = Vec::with_capacity(64);
                let received = tokio::select! {
                    biased;
                    n = rx.recv_many(&mut batch, MAX_LOAD_BATCH) => n,
                    () = stop.cancelled() => return,
                };
                if received == 0 {
                    return;
                }
                let (keys, replies): (Vec<K>, Vec<_>) = batch.into_iter().unzip();
                let query = run(keys);
                spawner.spawn(async move {
                    match query.await {
                        Ok(found) if found.len() == replies.len() => {
                            for (reply, value) in replies.into_iter().zip(found) {
                                let _ = reply.send(Ok(value));
                            }
                        }
                        Ok(found) => {
                            let err = StoreError::Backend(format!(
                                "the store answered {} of {} reads",
                                found.len(),
                                replies.len()
                            ));
                            for reply in replies {
                                let _ = reply.send(Err(err.clone()));
                            }
                        }
                        Err(err) => {
                            for reply in replies {
                                let _ = reply.send(Err(err.clone()));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    async fn get(&self, key: K) -> Result<V, StoreError> {
        let stopping = || StoreError::Unavailable("the node is stopping".to_owned());
        let (tx, rx) = oneshot::channel();
        if self.tx.send((key, tx)).is_err() {
            return Err(stopping());
        }
        rx.await.unwrap_or_else(|_| Err(stopping()))
    }
}
