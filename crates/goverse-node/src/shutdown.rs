//! Shutdown and hand-over: closing activations after their running turns and saving what they
//! hand back under each shard's epoch, for the whole node at shutdown or for shards placement
//! moved away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use goverse_core::{ChainId, ShardId};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::MethodKind;
use crate::activation::{ActivationDyn, CloseReason, Detached};
use crate::directory::{ShardEvent, ShardState};
use crate::node::{NodeInner, ShutdownReport};
use crate::store::{Change, SaveJob, wait};
use crate::turn;

impl NodeInner {
    /// Stops serving and saves everything; see [`crate::Node::shutdown`].
    pub(crate) async fn shutdown(self: &Arc<Self>, grace: Duration) -> ShutdownReport {
        let life = &self.lifecycle;
        if !life.begin_stop() {
            return ShutdownReport::default();
        }
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + grace;
        life.background.cancel();
        // A renewal, rejoin or claim pass in progress finishes before the saves (and before
        // `leave` takes the lease), so the shards it claims can be saved to.
        tokio::select! {
            _ = tokio::time::timeout_at(deadline, life.membership_stopped()) => {}
            () = life.hurry.cancelled() => {}
        }

        // No new activations from here on; running turns finish and states are saved under
        // each shard's epoch.
        self.directory
            .apply_all(|s| matches!(s, ShardState::Owned { .. }), ShardEvent::Drain);
        let report = self
            .close_and_save(self.directory.all_activations(), Some(deadline))
            .await;
        self.membership.leave().await;
        life.store.cancel();
        life.stopped();
        let router_stopped = match self.router.get() {
            Some(router) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                router.stopped(left).await
            }
            None => true,
        };
        let tasks_stopped = tokio::time::timeout_at(deadline, life.tasks.wait())
            .await
            .is_ok();
        if !(router_stopped && tasks_stopped) {
            tracing::warn!(
                router_stopped,
                tasks_stopped,
                "background tasks did not stop within the shutdown grace"
            );
        }
        let ok = report.unsaved == 0 && router_stopped && tasks_stopped;
        self.cluster_counters.stopped(ok, started.elapsed());
        report
    }

    /// Hands `shards` (already draining) over: closes their activations once their running
    /// turns finish, saves the changed states under each shard's epoch (retrying until saved or
    /// the node stops), then gives the shards up and lets membership release their records.
    pub(crate) async fn hand_over(self: &Arc<Self>, shards: Vec<ShardId>) {
        let report = self
            .close_and_save(self.directory.activations_of(&shards), None)
            .await;
        for shard in &shards {
            if matches!(
                self.directory.state(*shard),
                ShardState::Draining { .. } | ShardState::Fenced
            ) {
                self.directory.apply(*shard, ShardEvent::Release);
            }
        }
        tracing::info!(
            shards = shards.len(),
            deactivated = report.deactivated,
            saved = report.saved,
            unsaved = report.unsaved,
            "shards handed over"
        );
        self.membership.wake();
    }

    /// Closes `activations` (each after its running turn) and saves the states they hand back,
    /// in batches under each shard's epoch, retrying transient store failures until `deadline`
    /// (`None`: until saved, or the node stops).
    async fn close_and_save(
        self: &Arc<Self>,
        activations: Vec<Arc<dyn ActivationDyn>>,
        deadline: Option<Instant>,
    ) -> ShutdownReport {
        let deactivations_before = self.counters.deactivations.load(Ordering::Relaxed);
        let closed = Mutex::new(Vec::new());
        let unsaved = AtomicU64::new(0);
        let already_saved = AtomicU64::new(0);
        let persisting = self.store.is_some();
        let close_all = futures::stream::iter(activations).for_each_concurrent(256, |activation| {
            let (closed, unsaved, already_saved) = (&closed, &unsaved, &already_saved);
            async move {
                let chain = ChainId::new_root();
                let permit = tokio::select! {
                    biased;
                    permit = turn::acquire(&activation, MethodKind::Write, chain) => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    // In a hurry: whatever is not in the middle of a turn is closed now, the
                    // rest is left.
                    () = self.lifecycle.hurry.cancelled() => match turn::try_acquire_write(&activation, chain) {
                        Some(permit) => permit,
                        None => {
                            unsaved.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(object = %activation.id(),
                                "left unsaved: in the middle of a turn when shutdown was hurried");
                            return;
                        }
                    },
                };
                let shard = activation.shard();
                match Detached::new(activation.close(permit, CloseReason::Shutdown), &self.lifecycle.tasks).await {
                    Ok(Some(data)) => closed.lock().push((activation, data, shard)),
                    Ok(None) => {
                        if persisting && activation.persistent() {
                            already_saved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(err) => {
                        unsaved.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(object = %activation.id(), error = %err, "cannot snapshot its state");
                    }
                }
            }
        });
        match deadline {
            Some(deadline) => {
                if tokio::time::timeout_at(deadline, close_all).await.is_err() {
                    tracing::error!(
                        "grace ran out while closing activations (a turn did not finish)"
                    );
                }
            }
            None => close_all.await,
        }
        let deactivated =
            self.counters.deactivations.load(Ordering::Relaxed) - deactivations_before;
        let mut pending: Vec<(Arc<dyn ActivationDyn>, Vec<u8>, ShardId)> = closed.into_inner();
        let mut saved = 0;
        if let Some(store) = &self.store {
            let mut backoff = Duration::from_millis(50);
            while !pending.is_empty() {
                let mut queued = Vec::with_capacity(pending.len());
                for item in pending {
                    let (activation, data, shard) = &item;
                    match self.directory.fence(*shard) {
                        Ok(fence) => {
                            let reply = store.submit(SaveJob {
                                id: activation.id().clone(),
                                object_type: activation.type_name(),
                                change: Change::Save(data.clone()),
                                fence,
                                reliable: None,
                            });
                            queued.push((item, reply));
                        }
                        Err(err) => {
                            unsaved.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(object = %activation.id(), cause = %err, "state not saved");
                        }
                    }
                }
                let mut retry = Vec::new();
                for (item, reply) in queued {
                    match wait(reply).await {
                        Ok(()) => saved += 1,
                        Err(crate::store::SaveFailure::Store(err)) if err.is_transient() => {
                            tracing::warn!(object = %item.0.id(), cause = %err, "save failed; retrying");
                            retry.push(item);
                        }
                        Err(failure) => {
                            unsaved.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(object = %item.0.id(), cause = ?failure, "state not saved");
                        }
                    }
                }
                pending = retry;
                if pending.is_empty() {
                    break;
                }
                let give_up = match deadline {
                    Some(_) if self.lifecycle.hurry.is_cancelled() => true,
                    Some(deadline) => {
                        let late = tokio::time::Instant::now() + backoff > deadline;
                        if !late {
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = self.lifecycle.hurry.cancelled() => {}
                            }
                        }
                        late || self.lifecycle.hurry.is_cancelled()
                    }
                    None => tokio::select! {
                        () = self.lifecycle.background.cancelled() => true,
                        () = tokio::time::sleep(backoff) => false,
                    },
                };
                if give_up {
                    unsaved.fetch_add(pending.len() as u64, Ordering::Relaxed);
                    tracing::error!(count = pending.len(), "gave up saving; states not saved");
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        self.counters.saves.fetch_add(saved, Ordering::Relaxed);
        ShutdownReport {
            deactivated,
            saved,
            already_saved: already_saved.into_inner(),
            unsaved: unsaved.into_inner(),
        }
    }
}
