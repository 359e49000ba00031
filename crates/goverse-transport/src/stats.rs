//! What the transport of this process counts: how many requests and responses each write to a
//! link carries (the batching that makes links fast), and calls held while their shard has no
//! serving node (during moves). One set per process, added to the registry of every node and
//! gate the process runs (the registry scrapes it once).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use goverse_core::metrics::{Scrape, SizeHistogram, Source};

/// The transport's counters (see the module docs).
#[derive(Debug, Default)]
pub struct TransportStats {
    request_batches: SizeHistogram,
    response_batches: SizeHistogram,
    held: AtomicU64,
    held_now: AtomicI64,
    /// Connections closed at once because their address had its limit open.
    refused_per_address: AtomicU64,
}

static STATS: LazyLock<Arc<TransportStats>> = LazyLock::new(Arc::default);

/// This process's transport counters.
pub(crate) fn stats() -> &'static TransportStats {
    &STATS
}

/// This process's transport counters as a metrics source (always the same one, so a registry
/// handed it by several components scrapes it once).
pub fn stats_source() -> Arc<dyn Source> {
    STATS.clone()
}

impl TransportStats {
    pub(crate) fn refused_per_address(&self) {
        self.refused_per_address.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requests_written(&self, n: usize) {
        self.request_batches.observe(n as u64);
    }

    pub(crate) fn responses_written(&self, n: usize) {
        self.response_batches.observe(n as u64);
    }

    /// A call starts waiting for its shard's owner; the guard ends the wait.
    pub(crate) fn held(&'static self) -> HeldGuard {
        self.held.fetch_add(1, Ordering::Relaxed);
        self.held_now.fetch_add(1, Ordering::Relaxed);
        HeldGuard(self)
    }
}

/// A call held by the router; counted down when dropped.
pub(crate) struct HeldGuard(&'static TransportStats);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held_now.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Source for TransportStats {
    fn collect(&self, out: &mut Scrape) {
        out.counter(
            "goverse_connections_refused_total",
            "Connections closed at once because their address had as many open as it may",
            &[("reason", "per_address")],
            self.refused_per_address.load(Ordering::Relaxed),
        );
        out.histogram(
            "goverse_link_request_batch_size",
            "Requests per write on node links (this process's links to nodes)",
            &[],
            self.request_batches.snapshot(),
        );
        out.histogram(
            "goverse_link_response_batch_size",
            "Responses and pushes per write on node links this process serves",
            &[],
            self.response_batches.snapshot(),
        );
        out.counter(
            "goverse_held_calls_total",
            "Calls the router held because their shard had no serving node (moves, failover)",
            &[],
            self.held.load(Ordering::Relaxed),
        );
        out.gauge(
            "goverse_calls_held",
            "Calls held by the router now",
            &[],
            self.held_now.load(Ordering::Relaxed),
        );
    }
}
