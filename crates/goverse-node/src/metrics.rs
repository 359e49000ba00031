//! What a node counts, and how it reaches the registry it was handed.
//!
//! Per-call figures ([`CallMetrics`]) are recorded where the call runs, into striped histograms
//! made for each method of each registered type when the node is built, so recording is a few
//! relaxed atomic adds and no lookup by name. Everything else is read at scrape time by
//! [`NodeSource`] from the node itself: objects per type and shard, shards served, gates
//! connected, and the counters [`NodeStats`](crate::NodeStats) reports. The names and labels of
//! upstream GoVerse's metrics are kept (its dashboards read them); this project's own sit beside
//! them (queue wait apart from execution time, activations, saves, commits, fencing, reliable
//! calls, lease renewals).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use goverse_core::ShardId;
use goverse_core::metrics::{
    HistogramSnapshot, Kind, LatencyCells, LatencyHistogram, PerThread, Scrape, Source, Stamp,
    stamp,
};
use parking_lot::Mutex;

use crate::node::{FastMap, NodeInner};
use crate::registry::TypeEntry;

/// One method's calls on one thread (see [`PerThread`]).
#[derive(Debug, Default)]
struct MethodCells {
    /// Whole calls on this node (waiting for the turn and running), by outcome.
    succeeded: LatencyCells,
    failed: LatencyCells,
    /// From arriving at the node to holding the turn (includes activating the object); a turn
    /// granted at once counts none.
    wait: LatencyCells,
    /// The method's run, with a write-through commit.
    run: LatencyCells,
}

/// One method's calls on this node.
#[derive(Debug)]
pub(crate) struct MethodCalls {
    name: &'static str,
    cells: PerThread<MethodCells>,
}

/// Which of a method's histograms to read.
type Pick = fn(&MethodCells) -> &LatencyCells;

impl MethodCalls {
    fn snapshot(&self, pick: Pick) -> HistogramSnapshot {
        LatencyCells::sum(self.cells.all().map(pick))
    }
}

/// The per-call figures of a node.
#[derive(Debug)]
pub(crate) struct CallMetrics {
    enabled: bool,
    types: FastMap<&'static str, Box<[MethodCalls]>>,
    /// Calls run per shard (the node's own slot last), per thread.
    shard_calls: PerThread<Box<[AtomicU64]>>,
    shard_count: usize,
}

impl CallMetrics {
    pub(crate) fn new(
        enabled: bool,
        types: &FastMap<&'static str, Box<dyn TypeEntry>>,
        shard_count: u32,
    ) -> Self {
        let types = types
            .iter()
            .map(|(name, entry)| {
                let methods = entry
                    .methods()
                    .iter()
                    .map(|m| MethodCalls {
                        name: m.name,
                        cells: PerThread::default(),
                    })
                    .collect();
                (*name, methods)
            })
            .collect();
        let slots = shard_count as usize + 1;
        Self {
            enabled,
            types,
            shard_calls: PerThread::new(move || (0..slots).map(|_| AtomicU64::new(0)).collect()),
            shard_count: slots,
        }
    }

    /// When recording starts for a call (`None` with recording off).
    #[inline]
    pub(crate) fn start(&self) -> Option<Stamp> {
        self.enabled.then(stamp)
    }

    /// Records a call of method `method` of `type_name` that arrived at `started`, held its
    /// turn from `granted` (if it got that far) and ended now.
    pub(crate) fn record(
        &self,
        type_name: &str,
        method: usize,
        shard: ShardId,
        started: Stamp,
        granted: Option<Stamp>,
        ok: bool,
    ) {
        let Some(calls) = self.types.get(type_name).and_then(|m| m.get(method)) else {
            return;
        };
        let now = stamp();
        let total = now.nanos_since(started);
        let cells = calls.cells.local();
        if ok {
            cells.succeeded.add_nanos(total);
        } else {
            cells.failed.add_nanos(total);
        }
        if let Some(granted) = granted {
            if granted == started {
                // Granted at once (no clock read then): no wait, all of it running.
                cells.wait.add_nanos(0);
                cells.run.add_nanos(total);
            } else {
                cells.wait.add_nanos(granted.nanos_since(started));
                cells.run.add_nanos(now.nanos_since(granted));
            }
        }
        if let Some(count) = self.shard_calls.local().get(shard.0 as usize) {
            // This thread's own cell: no other thread writes it.
            count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Calls run per shard, every thread's summed (the node's own slot last).
    fn per_shard(&self) -> Vec<u64> {
        let mut totals = vec![0u64; self.shard_count];
        for counts in self.shard_calls.all() {
            for (total, count) in totals.iter_mut().zip(counts.iter()) {
                *total += count.load(Ordering::Relaxed);
            }
        }
        totals
    }
}

/// The node's counters of its membership and shutdown.
#[derive(Debug, Default)]
pub(crate) struct ClusterCounters {
    pub(crate) claims: AtomicU64,
    pub(crate) releases: AtomicU64,
    /// Shards this node handed over to another node, by that node.
    pub(crate) migrations_to: Mutex<BTreeMap<String, u64>>,
    /// Shard targets this node, as leader, moved.
    pub(crate) reallocations: AtomicU64,
    /// Shard-map writes that failed, by kind (`modrevision_conflict`, `connection_error`,
    /// `timeout`, `other`).
    pub(crate) map_write_failures: Mutex<BTreeMap<&'static str, u64>>,
    pub(crate) renewals: AtomicU64,
    pub(crate) renewal_failures: AtomicU64,
    /// How much later than its period each renewal was asked for.
    pub(crate) renewal_lateness: LatencyHistogram,
    /// Operations that ran out of time, by name (`CallObject`, `CreateObject`, `DeleteObject`).
    pub(crate) timeouts: Mutex<BTreeMap<&'static str, u64>>,
    /// Creates and deletes, by operation and outcome.
    pub(crate) operations: Mutex<BTreeMap<(&'static str, bool), Arc<LatencyHistogram>>>,
    /// Shutdowns, by outcome.
    pub(crate) stops: Mutex<BTreeMap<bool, Arc<LatencyHistogram>>>,
}

impl ClusterCounters {
    pub(crate) fn map_write_failed(&self, err: &goverse_cluster::ClusterError) {
        use goverse_cluster::ClusterError;
        let kind = match err {
            ClusterError::Unavailable(why)
                if why.contains("timed out") || why.contains("deadline") =>
            {
                "timeout"
            }
            ClusterError::Unavailable(_) => "connection_error",
            ClusterError::Rejected(why) if why.contains("revision") || why.contains("changed") => {
                "modrevision_conflict"
            }
            _ => "other",
        };
        self.map_write_failure(kind);
    }

    /// Counts a shard-map write that failed for `kind` of reason.
    pub(crate) fn map_write_failure(&self, kind: &'static str) {
        *self.map_write_failures.lock().entry(kind).or_default() += 1;
    }

    pub(crate) fn timed_out(&self, operation: &'static str) {
        *self.timeouts.lock().entry(operation).or_default() += 1;
    }

    pub(crate) fn operation(&self, operation: &'static str, ok: bool, took: Duration) {
        let histogram = self
            .operations
            .lock()
            .entry((operation, ok))
            .or_default()
            .clone();
        histogram.observe(took);
    }

    pub(crate) fn stopped(&self, ok: bool, took: Duration) {
        let histogram = self.stops.lock().entry(ok).or_default().clone();
        histogram.observe(took);
    }
}

fn status(ok: bool) -> &'static str {
    if ok { "success" } else { "failure" }
}

/// Reads a node's figures at scrape time.
pub(crate) struct NodeSource {
    pub(crate) node: Weak<NodeInner>,
}

impl Source for NodeSource {
    fn collect(&self, out: &mut Scrape) {
        if let Some(node) = self.node.upgrade() {
            node.collect(out);
        }
    }
}

impl NodeInner {
    fn collect(&self, out: &mut Scrape) {
        let me = self.address.as_str();
        let node = [("node", me)];

        out.declare(
            "goverse_objects_total",
            "Objects active on the node, by type and shard",
            Kind::Gauge,
        );
        self.directory.objects_per_type(|shard, type_name, count| {
            let shard = shard.map_or_else(|| "-1".to_owned(), |s| s.to_string());
            out.gauge(
                "goverse_objects_total",
                "Objects active on the node, by type and shard",
                &[("node", me), ("type", type_name), ("shard", &shard)],
                count as i64,
            );
        });
        let stats = self.stats();
        out.gauge(
            "goverse_shards_total",
            "Shards the node serves",
            &node,
            stats.owned_shards as i64,
        );

        for (name, help, kind) in [
            (
                "goverse_method_calls_total",
                "Method calls run on the node, by type, method and outcome",
                Kind::Counter,
            ),
            (
                "goverse_method_call_duration",
                "Method calls on the node in seconds, from arrival to reply",
                Kind::Histogram,
            ),
        ] {
            out.declare(name, help, kind);
        }
        let calls = &self.call_metrics;
        let mut types: Vec<_> = calls.types.iter().collect();
        types.sort_by_key(|(name, _)| **name);
        for (type_name, methods) in types {
            for m in methods.iter() {
                let outcomes: [(bool, Pick); 2] =
                    [(true, |c| &c.succeeded), (false, |c| &c.failed)];
                for (ok, pick) in outcomes {
                    let snapshot = m.snapshot(pick);
                    if snapshot.count == 0 {
                        // Methods never called (or never failing) add no series.
                        continue;
                    }
                    let labels = [
                        ("node", me),
                        ("object_type", type_name),
                        ("method_name", m.name),
                        ("status", status(ok)),
                    ];
                    out.counter(
                        "goverse_method_calls_total",
                        "Method calls run on the node, by type, method and outcome",
                        &labels,
                        snapshot.count,
                    );
                    out.histogram(
                        "goverse_method_call_duration",
                        "Method calls on the node in seconds, from arrival to reply",
                        &labels,
                        snapshot,
                    );
                }
                let wait = m.snapshot(|c| &c.wait);
                if wait.count == 0 {
                    continue;
                }
                let labels = [
                    ("node", me),
                    ("object_type", type_name),
                    ("method_name", m.name),
                ];
                out.histogram(
                    "goverse_method_queue_wait_seconds",
                    "Time calls waited for their turn (and for the object to activate), in seconds",
                    &labels,
                    wait,
                );
                out.histogram(
                    "goverse_method_execution_seconds",
                    "Time methods ran (with a write-through commit), in seconds",
                    &labels,
                    m.snapshot(|c| &c.run),
                );
            }
        }
        out.declare(
            "goverse_shard_method_calls_total",
            "Method calls run, by shard",
            Kind::Counter,
        );
        let per_shard = calls.per_shard();
        for (shard, count) in per_shard.iter().copied().enumerate() {
            if count > 0 && shard < per_shard.len() - 1 {
                out.counter(
                    "goverse_shard_method_calls_total",
                    "Method calls run, by shard",
                    &[("node", me), ("shard", &shard.to_string())],
                    count,
                );
            }
        }

        let cluster = &self.cluster_counters;
        out.counter(
            "goverse_shard_claims_total",
            "Shards the node claimed",
            &node,
            cluster.claims.load(Ordering::Relaxed),
        );
        out.counter(
            "goverse_shard_releases_total",
            "Shards the node released",
            &node,
            cluster.releases.load(Ordering::Relaxed),
        );
        out.declare(
            "goverse_shard_migrations_total",
            "Shards handed from one node to another, counted by the node that handed them over",
            Kind::Counter,
        );
        for (to, count) in cluster.migrations_to.lock().iter() {
            out.counter(
                "goverse_shard_migrations_total",
                "Shards handed from one node to another, counted by the node that handed them over",
                &[("from_node", me), ("to_node", to)],
                *count,
            );
        }
        let migrating = {
            let map = self.membership.view().borrow();
            map.shards
                .iter()
                .filter_map(|r| r.record.as_ref().map(|(record, _)| record))
                .filter(|r| r.target.is_some() && r.target != r.current)
                .count()
        };
        out.gauge(
            "goverse_shards_migrating",
            "Shards whose target is not their current node, as this node sees the map",
            &node,
            migrating as i64,
        );
        let (reconnected, reload_failed) = self.membership.view().reconnections();
        for (outcome, count) in [
            ("reconnected", reconnected),
            ("reload_failed", reload_failed),
        ] {
            out.counter(
                "goverse_watch_reconnections_total",
                "Times the watch on the cluster store ended and the map was listed again, by outcome",
                &[("node_addr", me), ("outcome", outcome)],
                count,
            );
        }
        out.counter(
            "goverse_shard_reallocations_total",
            "Shard targets this node moved while leading",
            &node,
            cluster.reallocations.load(Ordering::Relaxed),
        );
        out.declare(
            "goverse_shard_mapping_write_failures_total",
            "Shard-map writes that failed, by kind",
            Kind::Counter,
        );
        for (kind, count) in cluster.map_write_failures.lock().iter() {
            out.counter(
                "goverse_shard_mapping_write_failures_total",
                "Shard-map writes that failed, by kind",
                &[("node", me), ("error_type", kind)],
                *count,
            );
        }
        out.declare(
            "goverse_operation_timeouts_total",
            "Operations that ran out of time, by operation",
            Kind::Counter,
        );
        for (operation, count) in cluster.timeouts.lock().iter() {
            out.counter(
                "goverse_operation_timeouts_total",
                "Operations that ran out of time, by operation",
                &[("node_addr", me), ("operation", operation)],
                *count,
            );
        }
        out.declare(
            "goverse_operation_duration_seconds",
            "Creates and deletes in seconds, by operation and outcome",
            Kind::Histogram,
        );
        for ((operation, ok), histogram) in cluster.operations.lock().iter() {
            out.histogram(
                "goverse_operation_duration_seconds",
                "Creates and deletes in seconds, by operation and outcome",
                &[
                    ("node_addr", me),
                    ("operation", operation),
                    ("status", status(*ok)),
                ],
                histogram.snapshot(),
            );
        }
        out.declare(
            "goverse_node_stop_duration_seconds",
            "Node shutdowns in seconds, by outcome",
            Kind::Histogram,
        );
        for (ok, histogram) in cluster.stops.lock().iter() {
            out.histogram(
                "goverse_node_stop_duration_seconds",
                "Node shutdowns in seconds, by outcome",
                &[("node_addr", me), ("status", status(*ok))],
                histogram.snapshot(),
            );
        }
        for (outcome, count) in [
            ("success", cluster.renewals.load(Ordering::Relaxed)),
            ("failure", cluster.renewal_failures.load(Ordering::Relaxed)),
        ] {
            out.counter(
                "goverse_lease_renewals_total",
                "Lease renewals, by outcome",
                &[("node", me), ("status", outcome)],
                count,
            );
        }
        out.histogram(
            "goverse_lease_renewal_lateness_seconds",
            "How much later than due each lease renewal was asked for, in seconds",
            &node,
            cluster.renewal_lateness.snapshot(),
        );

        let gates = self.push.gates();
        out.gauge(
            "goverse_node_connected_gates",
            "Gates connected to the node",
            &node,
            gates.len() as i64,
        );
        out.declare(
            "goverse_node_pushed_messages_total",
            "Messages the node pushed to gates, by gate",
            Kind::Counter,
        );
        out.declare(
            "goverse_node_dropped_messages_total",
            "Messages the node dropped (gate gone or too far behind), by gate",
            Kind::Counter,
        );
        for (gate, sent, dropped) in self.push.per_gate() {
            out.counter(
                "goverse_node_pushed_messages_total",
                "Messages the node pushed to gates, by gate",
                &[("node", me), ("gate", &gate)],
                sent,
            );
            out.counter(
                "goverse_node_dropped_messages_total",
                "Messages the node dropped (gate gone or too far behind), by gate",
                &[("node", me), ("gate", &gate)],
                dropped,
            );
        }

        for (name, help, value) in [
            (
                "goverse_activations_total",
                "Activations started",
                stats.activations,
            ),
            (
                "goverse_activation_failures_total",
                "Activations that failed (load error, on_activate error or panic)",
                stats.activation_failures,
            ),
            (
                "goverse_deactivations_total",
                "Activations closed (idle, delete, shutdown, discarded)",
                stats.deactivations,
            ),
            (
                "goverse_saves_total",
                "State saves that committed",
                stats.saves,
            ),
            (
                "goverse_save_failures_total",
                "State saves that failed",
                stats.save_failures,
            ),
            (
                "goverse_store_commits_total",
                "Store transactions committed",
                stats.commits,
            ),
            (
                "goverse_fencing_refusals_total",
                "Writes the store refused because the shard's epoch had moved on",
                stats.fence_refusals,
            ),
            (
                "goverse_unsaveable_writes_total",
                "Writes the store refused for what they held",
                stats.unsaveable_writes,
            ),
        ] {
            out.counter(name, help, &node, value);
        }
        if let Some(store) = &self.store {
            out.histogram(
                "goverse_store_commit_batch_size",
                "Writes per store transaction",
                &node,
                store.counters.commit_batch.snapshot(),
            );
        }
        for (outcome, count) in self.reliable_outcomes() {
            out.counter(
                "goverse_reliable_calls_total",
                "Reliable calls answered, by outcome (success, failed, skipped, replayed)",
                &[("node", me), ("outcome", outcome)],
                count,
            );
        }
    }
}
