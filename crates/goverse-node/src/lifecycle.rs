//! The node's lifecycle: one phase, one cancellation tree, and the trackers every task the node
//! starts is spawned on.
//!
//! ```text
//! root ─┬─ background   lease, membership, reach checks, hand-overs, auto-load, idle sweeps,
//!       │               periodic saves, reliable-call pruning (cancelled first at shutdown)
//!       ├─ store        the saver and loader (cancelled once the last states are saved)
//!       └─ links        the router's links to other nodes (cancelled last: the node stopped)
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Where a node is in its life. It only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Joining the cluster: nothing is served yet.
    Starting = 0,
    /// Serving the shards it holds.
    Running = 1,
    /// Shutting down: no new turns, activations closing and saving.
    Stopping = 2,
    /// Stopped: lease revoked, links closed, nothing is sent to other nodes.
    Stopped = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Starting,
            1 => Self::Running,
            2 => Self::Stopping,
            _ => Self::Stopped,
        }
    }
}

/// A node's phase, cancellation tree and task trackers.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    phase: AtomicU8,
    root: CancellationToken,
    /// Stops the background loops.
    pub(crate) background: CancellationToken,
    /// Stops the saver and loader, after what they hold is written.
    pub(crate) store: CancellationToken,
    /// Stops the router's links.
    pub(crate) links: CancellationToken,
    /// Cancelled to make shutdown stop waiting for running turns and store retries (a second
    /// stop signal). Not part of the tree: hurrying stops nothing by itself.
    pub(crate) hurry: CancellationToken,
    /// Every task the node spawns.
    pub(crate) tasks: TaskTracker,
    /// The lease and membership loops, which shutdown lets finish (a claim being made
    /// completes) before it saves.
    membership: TaskTracker,
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        let root = CancellationToken::new();
        Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            background: root.child_token(),
            store: root.child_token(),
            links: root.child_token(),
            root,
            hurry: CancellationToken::new(),
            tasks: TaskTracker::new(),
            membership: TaskTracker::new(),
        }
    }

    /// The phase now.
    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Joined: serving from now on.
    pub(crate) fn running(&self) {
        self.phase.store(Phase::Running as u8, Ordering::Release);
    }

    /// Starts stopping a running node; `false` when it is not running (a second shutdown, or
    /// one before the start finished).
    pub(crate) fn begin_stop(&self) -> bool {
        self.phase
            .compare_exchange(
                Phase::Running as u8,
                Phase::Stopping as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Stopped: nothing more is sent to other nodes; the whole tree is cancelled and no task
    /// may be added.
    pub(crate) fn stopped(&self) {
        self.phase.store(Phase::Stopped as u8, Ordering::Release);
        self.root.cancel();
        self.tasks.close();
        self.membership.close();
    }

    /// Spawns the background loop `name` on the node's tracker, in a span naming it; it ends
    /// when `background` is cancelled (the loop watches the token it was given).
    pub(crate) fn spawn_loop<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("node_task", task = name);
        self.tasks.spawn(
            async move {
                task.await;
                tracing::debug!("stopped");
            }
            .instrument(span),
        );
    }

    /// [`Lifecycle::spawn_loop`] for a lease or membership loop, which shutdown waits for.
    pub(crate) fn spawn_membership_loop<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_loop(name, self.membership.track_future(task));
    }

    /// Waits for the lease and membership loops to finish (after `background` was cancelled).
    pub(crate) async fn membership_stopped(&self) {
        self.membership.close();
        self.membership.wait().await;
    }
}
