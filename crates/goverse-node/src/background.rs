//! Background work: every loop a node runs besides its calls, started from one function as
//! named, tracked tasks (lease, membership, peer checks, hand-overs, auto-load, idle sweeps,
//! periodic saves, reliable-call pruning), and the work the loops do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use goverse_core::ChainId;
use goverse_transport::Connector;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::MethodKind;
use crate::activation::{CloseReason, Detached};
use crate::host::CallScope;
use crate::node::NodeInner;
use crate::store::wait;
use crate::turn;

impl NodeInner {
    /// Starts every background loop of a node that has joined its cluster, each a named task
    /// on the node's tracker that stops when `background` is cancelled: the lease, the
    /// membership reactor, peer checks, hand-overs, auto-load, idle sweeps, periodic saves and
    /// reliable-call pruning.
    pub(crate) fn start_background(self: &Arc<Self>, connector: Arc<dyn Connector>) {
        let life = &self.lifecycle;
        let stop = &life.background;
        life.spawn_membership_loop("lease", self.membership.clone().keep_alive(stop.clone()));
        let (hand_overs, mut handing_over) = tokio::sync::mpsc::unbounded_channel();
        life.spawn_membership_loop(
            "membership",
            self.membership.clone().react(hand_overs, stop.clone()),
        );
        life.spawn_loop(
            "peer-checks",
            crate::reach::check_peers(
                self.membership.clone(),
                connector,
                self.config.peer_check_interval,
                stop.clone(),
            ),
        );
        let node = self.clone();
        life.spawn_loop("hand-over", async move {
            loop {
                let shards = tokio::select! {
                    () = node.lifecycle.background.cancelled() => return,
                    shards = handing_over.recv() => shards,
                };
                let Some(shards) = shards else { return };
                node.hand_over(shards).await;
            }
        });
        if !self.auto_loaded.is_empty() {
            life.spawn_loop("auto-load", self.clone().keep_auto_loaded());
        }
        if let Some(interval) = self.idle_check_interval() {
            let node = self.clone();
            let ticks = every(stop.clone(), Instant::now(), interval, move || {
                let node = node.clone();
                async move {
                    node.sweep_idle().await;
                }
            });
            life.spawn_loop("idle-sweep", ticks);
        }
        if !self.config.save_interval.is_zero() && self.store.is_some() {
            let node = self.clone();
            let interval = self.config.save_interval;
            let ticks = every(
                stop.clone(),
                Instant::now() + interval,
                interval,
                move || {
                    let node = node.clone();
                    async move {
                        node.save_dirty().await;
                    }
                },
            );
            life.spawn_loop("periodic-save", ticks);
        }
        if let Some(store) = &self.store {
            let store = store.store().clone();
            let retention = self.config.reliable_call_retention;
            // Often enough that the table holds about a retention period's worth of records.
            let period = (retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600));
            let ticks = every(stop.clone(), Instant::now(), period, move || {
                let store = store.clone();
                async move {
                    match store.prune_reliable_calls(retention).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(removed = n, ?retention, "pruned reliable-call records")
                        }
                        Err(err) => {
                            tracing::warn!(cause = %err, "cannot prune reliable-call records")
                        }
                    }
                }
            });
            life.spawn_loop("reliable-prune", ticks);
        }
    }

    /// Closes every activation idle past its timeout. Returns how many closed.
    pub(crate) async fn sweep_idle(self: &Arc<Self>) -> u64 {
        let now = self.now_ms();
        let candidates = self.directory.activations_where(|a| {
            !a.idle_timeout().is_zero()
                && a.idle_for(now, a.idle_timeout())
                && !self.auto_loaded.contains(a.id())
        });
        let closed = AtomicU64::new(0);
        futures::stream::iter(candidates)
            .for_each_concurrent(64, |activation| {
                let closed = &closed;
                async move {
                    let Some(permit) = turn::try_acquire_write(&activation, ChainId::new_root()) else {
                        return;
                    };
                    match Detached::new(activation.close(permit, CloseReason::Idle), &self.lifecycle.tasks).await {
                        Ok(_) => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(object = %activation.id(), "deactivated idle object");
                        }
                        Err(err) => {
                            self.counters.save_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(object = %activation.id(), error = %err,
                                "idle deactivation failed; the object stays active and is retried later");
                        }
                    }
                }
            })
            .await;
        closed.into_inner()
    }

    /// Keeps the auto-load objects alive: once the cluster has first been stable for its
    /// window, creates every one this node serves and lacks, again whenever a shard starts
    /// being served here, one was deleted, or the map changed, and at least every second.
    async fn keep_auto_loaded(self: Arc<Self>) {
        let mut changes = self.membership.view().subscribe();
        let mut stability =
            goverse_cluster::Stability::new(self.config.stability_window, self.config.min_quorum);
        let origin = tokio::time::Instant::now();
        let mut stable_once = false;
        loop {
            let now = origin.elapsed();
            stability.observe(now, &self.membership.view().borrow().nodes);
            let mut wait = crate::autoload::RECHECK;
            if !stable_once {
                stable_once = stability.is_stable(now);
                if !stable_once && stability.has_quorum() {
                    wait = wait.min(stability.stable_at().saturating_sub(now));
                }
            }
            if stable_once && self.membership.is_ready() {
                let deadline = Instant::now() + self.config.call_timeout;
                let (created, failed, first) = self
                    .auto_loaded
                    .load_missing(
                        |shard, id| self.directory.admits(shard, id),
                        |shard, id| self.directory.is_active(shard, id),
                        |type_name, id| {
                            let node = self.clone();
                            async move {
                                let scope = CallScope {
                                    chain: ChainId::new_root(),
                                    deadline,
                                    client: None,
                                    forward: false,
                                };
                                node.create(type_name, &id, scope).await
                            }
                        },
                    )
                    .await;
                if created > 0 {
                    tracing::info!(created, "auto-load objects created");
                }
                if let Some(first) = first {
                    tracing::warn!(failed, first = %first,
                        "auto-load objects could not be created; retrying");
                }
            }
            tokio::select! {
                () = self.lifecycle.background.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.directory.served_more() => {}
                () = self.auto_load_wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Saves every persistent activation changed since its last save. Returns (saved, failed).
    pub(crate) async fn save_dirty(self: &Arc<Self>) -> (u64, u64) {
        let Some(store) = &self.store else {
            return (0, 0);
        };
        let dirty: Vec<_> = self
            .directory
            .all_activations()
            .into_iter()
            .filter(|a| a.persistent() && a.take_dirty())
            .collect();
        // Each state is queued under a read turn, so it commits after any write queued by an
        // earlier turn and before any queued by a later one.
        let mut queued = Vec::with_capacity(dirty.len());
        for activation in dirty {
            let submitted = async {
                let permit = turn::acquire(&activation, MethodKind::Read, ChainId::new_root())
                    .await
                    .ok()?;
                let job = activation.save_job(&permit).ok()?;
                Some(store.submit(job))
            }
            .await;
            match submitted {
                Some(reply) => queued.push((activation, reply)),
                None => activation.mark_dirty(),
            }
        }
        let (mut saved, mut failed) = (0, 0);
        for (activation, reply) in queued {
            match wait(reply).await {
                Ok(()) => saved += 1,
                Err(failure) => {
                    failed += 1;
                    activation.mark_dirty();
                    tracing::warn!(object = %activation.id(), cause = ?failure, "periodic save failed; will retry");
                }
            }
        }
        self.counters.saves.fetch_add(saved, Ordering::Relaxed);
        self.counters
            .save_failures
            .fetch_add(failed, Ordering::Relaxed);
        (saved, failed)
    }

    fn idle_check_interval(&self) -> Option<Duration> {
        if let Some(interval) = self.config.idle_check_interval {
            return Some(interval);
        }
        let shortest = self
            .registry
            .values()
            .map(|e| e.idle_timeout().unwrap_or(self.config.idle_timeout))
            .filter(|t| !t.is_zero())
            .min()?;
        Some((shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(30)))
    }
}

/// Runs `work` at `first` and every `period` after, until `stop`; a tick missed while `work`
/// ran late is not made up (the next comes a period after it).
async fn every<F, Fut>(stop: CancellationToken, first: Instant, period: Duration, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval_at(first, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        work().await;
    }
}
