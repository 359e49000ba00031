//! The per-activation turn scheduler.
//!
//! One mutex-guarded [`TurnState`] per activation says who runs: one writer, or any number of
//! readers, plus a FIFO queue of waiting calls. An uncontended call takes its turn with one lock
//! round trip and runs on its own task; a contended one waits on a oneshot until a finishing turn
//! hands it the turn. Hand-over happens at release, in queue order, which keeps calls from one
//! caller in order and lets no reader starve a writer.

use std::collections::VecDeque;
use std::sync::Arc;

use goverse_core::{CallError, ChainId, ErrorCode, ObjectId};
use tokio::sync::oneshot;

use crate::MethodKind;

/// The lock around a turn state. The node uses parking_lot's mutex; the scheduler's loom tests
/// put loom's mutex here, so loom explores every interleaving of the lock sections in an
/// ordinary test build.
pub(crate) trait TurnLock<T>: Send + Sync {
    /// The guard [`TurnLock::lock`] hands out.
    type Guard<'a>: std::ops::DerefMut<Target = T>
    where
        Self: 'a;

    /// Locks the state.
    fn lock(&self) -> Self::Guard<'_>;
}

impl<T: Send> TurnLock<T> for parking_lot::Mutex<T> {
    type Guard<'a>
        = parking_lot::MutexGuard<'a, T>
    where
        T: 'a;

    fn lock(&self) -> Self::Guard<'_> {
        parking_lot::Mutex::lock(self)
    }
}

/// What the scheduler needs of what it schedules. Implemented by the node's type-erased
/// activations, and by the small test objects of the scheduler's own tests.
pub(crate) trait Scheduled: Send + Sync + 'static {
    /// The lock the turn state sits in.
    type Lock: TurnLock<TurnState<Self>>;
    /// The turn state, guarded.
    fn turn_state(&self) -> &Self::Lock;
    /// The object's ID, for error messages.
    fn id(&self) -> &ObjectId;
    /// The object's type name, for error messages.
    fn type_name(&self) -> &'static str;
}

/// The lifecycle of an activation as the scheduler sees it.
#[derive(Debug)]
pub(crate) enum Status {
    /// `on_activate` is running (as a write turn); calls queue.
    Activating,
    /// Serving turns.
    Active,
    /// Gone from the activation table; callers look the object up again.
    Closed,
    /// Activation failed; waiting callers get this error.
    Failed(CallError),
}

struct Waiter<A: ?Sized + Scheduled> {
    kind: MethodKind,
    chain: ChainId,
    tx: oneshot::Sender<Grant<A>>,
}

/// Who runs on one activation, and who waits.
pub(crate) struct TurnState<A: ?Sized + Scheduled> {
    pub(crate) status: Status,
    writer: Option<ChainId>,
    readers: Vec<ChainId>,
    queue: VecDeque<Waiter<A>>,
}

impl<A: ?Sized + Scheduled> std::fmt::Debug for TurnState<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnState")
            .field("status", &self.status)
            .field("writer", &self.writer)
            .field("readers", &self.readers)
            .field("waiting", &self.queue.len())
            .finish()
    }
}

/// What a waiting call receives.
enum Grant<A: ?Sized + Scheduled> {
    Granted(TurnPermit<A>),
    Retry,
    Failed(CallError),
}

/// Why a turn could not be had.
#[derive(Debug)]
pub(crate) enum AcquireError {
    /// The activation went away; look the object up again.
    Retry,
    /// The call fails with this error.
    Failed(CallError),
}

/// The right to run one turn. Dropping it ends the turn and hands over to the next waiter.
pub(crate) struct TurnPermit<A: ?Sized + Scheduled> {
    activation: Option<Arc<A>>,
    kind: MethodKind,
    chain: ChainId,
}

impl<A: ?Sized + Scheduled> std::fmt::Debug for TurnPermit<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnPermit")
            .field("kind", &self.kind)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl<A: ?Sized + Scheduled> TurnPermit<A> {
    pub(crate) fn activation(&self) -> &Arc<A> {
        self.activation
            .as_ref()
            .expect("permit is live until dropped")
    }

    pub(crate) fn chain(&self) -> ChainId {
        self.chain
    }

    pub(crate) fn kind(&self) -> MethodKind {
        self.kind
    }
}

impl<A: ?Sized + Scheduled> TurnPermit<A> {
    /// The permit for a turn already recorded in the activation's state (the activating write
    /// turn a new activation is born with).
    pub(crate) fn preassigned(activation: Arc<A>, kind: MethodKind, chain: ChainId) -> Self {
        Self {
            activation: Some(activation),
            kind,
            chain,
        }
    }
}

impl<A: ?Sized + Scheduled> Drop for TurnPermit<A> {
    fn drop(&mut self) {
        if let Some(activation) = self.activation.take() {
            release(activation, self.kind, self.chain);
        }
    }
}

impl<A: ?Sized + Scheduled> TurnState<A> {
    /// The state of a new activation: activating, with the activating call holding the write turn.
    pub(crate) fn activating(chain: ChainId) -> Self {
        Self {
            status: Status::Activating,
            writer: Some(chain),
            readers: Vec::new(),
            queue: VecDeque::new(),
        }
    }

    fn can_grant(&self, kind: MethodKind) -> bool {
        match kind {
            MethodKind::Write => self.writer.is_none() && self.readers.is_empty(),
            MethodKind::Read => self.writer.is_none(),
        }
    }

    fn grant(&mut self, kind: MethodKind, chain: ChainId) {
        match kind {
            MethodKind::Write => self.writer = Some(chain),
            MethodKind::Read => self.readers.push(chain),
        }
    }

    fn ungrant(&mut self, kind: MethodKind, chain: ChainId) {
        match kind {
            MethodKind::Write => self.writer = None,
            MethodKind::Read => {
                if let Some(i) = self.readers.iter().position(|c| *c == chain) {
                    self.readers.swap_remove(i);
                }
            }
        }
    }
}

fn reentrancy(id: &ObjectId, type_name: &str, chain: ChainId) -> CallError {
    CallError::new(
        ErrorCode::Reentrancy,
        format!(
            "call chain {chain} would re-enter {type_name}/{id} while its running turn waits on the \
             same chain (a certain deadlock)"
        ),
    )
}

enum Decision<A: ?Sized + Scheduled> {
    Granted,
    Wait(oneshot::Receiver<Grant<A>>),
}

/// Takes a turn on `activation`, waiting in line if needed.
///
/// Cancellation-safe: dropping the future while waiting leaves the line (a turn handed over to a
/// dropped waiter passes on to the next one).
pub(crate) async fn acquire<A: ?Sized + Scheduled>(
    activation: &Arc<A>,
    kind: MethodKind,
    chain: ChainId,
) -> Result<TurnPermit<A>, AcquireError> {
    let decision = {
        let mut state = activation.turn_state().lock();
        match &state.status {
            Status::Closed => return Err(AcquireError::Retry),
            Status::Failed(err) => return Err(AcquireError::Failed(err.clone())),
            Status::Activating | Status::Active => {}
        }
        let reentering = state.writer == Some(chain)
            || (kind == MethodKind::Write && state.readers.contains(&chain));
        if reentering {
            return Err(AcquireError::Failed(reentrancy(
                activation.id(),
                activation.type_name(),
                chain,
            )));
        }
        let active = matches!(state.status, Status::Active);
        // A read on a chain that already reads here cannot wait: the reader it would wait behind
        // is its own caller. Let it in beside the other readers.
        let reentrant_read = kind == MethodKind::Read && state.readers.contains(&chain);
        if active && (reentrant_read || (state.queue.is_empty() && state.can_grant(kind))) {
            state.grant(kind, chain);
            Decision::Granted
        } else {
            let (tx, rx) = oneshot::channel();
            state.queue.push_back(Waiter { kind, chain, tx });
            Decision::Wait(rx)
        }
    };
    match decision {
        Decision::Granted => Ok(TurnPermit {
            activation: Some(activation.clone()),
            kind,
            chain,
        }),
        Decision::Wait(rx) => match rx.await {
            Ok(Grant::Granted(permit)) => Ok(permit),
            Ok(Grant::Retry) | Err(_) => Err(AcquireError::Retry),
            Ok(Grant::Failed(err)) => Err(AcquireError::Failed(err)),
        },
    }
}

/// Takes the write turn only if it is free now and nobody waits (idle deactivation, saves).
pub(crate) fn try_acquire_write<A: ?Sized + Scheduled>(
    activation: &Arc<A>,
    chain: ChainId,
) -> Option<TurnPermit<A>> {
    let mut state = activation.turn_state().lock();
    if !matches!(state.status, Status::Active)
        || !state.queue.is_empty()
        || !state.can_grant(MethodKind::Write)
    {
        return None;
    }
    state.grant(MethodKind::Write, chain);
    Some(TurnPermit {
        activation: Some(activation.clone()),
        kind: MethodKind::Write,
        chain,
    })
}

/// Ends a turn and hands over to waiters in queue order: a run of readers, or one writer. When
/// the activation is closed or failed, every waiter is told so instead.
fn release<A: ?Sized + Scheduled>(activation: Arc<A>, kind: MethodKind, chain: ChainId) {
    // A grant sent to a waiter that has gone comes back and is released here in turn; loop rather
    // than recurse so a long line of abandoned waiters cannot overflow the stack. The common case
    // (nobody waiting) allocates nothing.
    let mut next = Some((kind, chain));
    let mut returned: Vec<(MethodKind, ChainId)> = Vec::new();
    while let Some((kind, chain)) = next.take().or_else(|| returned.pop()) {
        let mut handover: Vec<(Waiter<A>, Grant<A>)> = Vec::new();
        {
            let mut state = activation.turn_state().lock();
            state.ungrant(kind, chain);
            if state.queue.is_empty() {
                continue;
            }
            match &state.status {
                Status::Closed => {
                    handover.extend(state.queue.drain(..).map(|w| (w, Grant::Retry)));
                }
                Status::Failed(err) => {
                    let err = err.clone();
                    handover.extend(
                        state
                            .queue
                            .drain(..)
                            .map(|w| (w, Grant::Failed(err.clone()))),
                    );
                }
                Status::Activating => {}
                Status::Active => {
                    while let Some(front) = state.queue.front() {
                        if !state.can_grant(front.kind) {
                            break;
                        }
                        let waiter = state.queue.pop_front().expect("front exists");
                        state.grant(waiter.kind, waiter.chain);
                        let permit = TurnPermit {
                            activation: Some(activation.clone()),
                            kind: waiter.kind,
                            chain: waiter.chain,
                        };
                        let is_write = waiter.kind == MethodKind::Write;
                        handover.push((waiter, Grant::Granted(permit)));
                        if is_write {
                            break;
                        }
                    }
                }
            }
        }
        for (waiter, grant) in handover {
            if let Err(Grant::Granted(mut permit)) = waiter.tx.send(grant) {
                // The waiter left the line: take its turn back without recursing through Drop.
                permit.activation = None;
                returned.push((permit.kind, permit.chain));
            }
        }
    }
}

/// Marks an activation closed or failed. The caller holds the write turn; dropping that permit
/// then hands every waiter the news.
pub(crate) fn set_status<A: ?Sized + Scheduled>(
    state: &impl TurnLock<TurnState<A>>,
    status: Status,
) {
    state.lock().status = status;
}

/// The scheduler under loom: every interleaving of its lock sections, hand-overs and abandoned
/// waiters, with a small object of its own whose turn state sits in loom's mutex.
#[cfg(test)]
mod loom_tests {
    use std::sync::Arc;

    use goverse_core::{ChainId, ObjectId};
    use loom::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// loom's mutex as a turn lock.
    struct LoomLock<T>(loom::sync::Mutex<T>);

    impl<T: Send> TurnLock<T> for LoomLock<T> {
        type Guard<'a>
            = loom::sync::MutexGuard<'a, T>
        where
            T: 'a;

        fn lock(&self) -> Self::Guard<'_> {
            self.0
                .lock()
                .expect("no test thread panics while holding a turn lock")
        }
    }

    struct Probe {
        turns: LoomLock<TurnState<Probe>>,
        id: ObjectId,
        writers: AtomicUsize,
        readers: AtomicUsize,
        done: AtomicUsize,
    }

    impl Scheduled for Probe {
        type Lock = LoomLock<TurnState<Self>>;

        fn turn_state(&self) -> &Self::Lock {
            &self.turns
        }

        fn id(&self) -> &ObjectId {
            &self.id
        }

        fn type_name(&self) -> &'static str {
            "Probe"
        }
    }

    /// An object whose activating write turn (chain 99) the returned permit still holds.
    fn activating() -> (Arc<Probe>, TurnPermit<Probe>) {
        let probe = Arc::new(Probe {
            turns: LoomLock(loom::sync::Mutex::new(TurnState::activating(
                ChainId::from_raw(99),
            ))),
            id: ObjectId::from("p"),
            writers: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        let permit =
            TurnPermit::preassigned(probe.clone(), MethodKind::Write, ChainId::from_raw(99));
        (probe, permit)
    }

    /// Explores every interleaving with up to two preemptions (loom's recommended bound: most
    /// concurrency bugs need no more, and the full space of three threads takes minutes).
    fn model(test: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(test);
    }

    /// Takes a turn, checks nobody is inside who must not be, and leaves.
    async fn take_turn(probe: &Arc<Probe>, kind: MethodKind, chain: u64) {
        let permit = acquire(probe, kind, ChainId::from_raw(chain))
            .await
            .expect("the object is active");
        match kind {
            MethodKind::Write => {
                assert_eq!(
                    probe.writers.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two writers"
                );
                assert_eq!(
                    probe.readers.load(Ordering::SeqCst),
                    0,
                    "a reader during a write"
                );
                loom::thread::yield_now();
                probe.writers.fetch_sub(1, Ordering::SeqCst);
            }
            MethodKind::Read => {
                probe.readers.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    probe.writers.load(Ordering::SeqCst),
                    0,
                    "a write during a read"
                );
                loom::thread::yield_now();
                probe.readers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        probe.done.fetch_add(1, Ordering::SeqCst);
        drop(permit);
    }

    #[test]
    fn writes_exclude_everything_and_every_waiter_gets_its_turn() {
        model(|| {
            let (probe, activating) = activating();
            let threads: Vec<_> = [
                (MethodKind::Write, 1),
                (MethodKind::Write, 2),
                (MethodKind::Read, 3),
            ]
            .into_iter()
            .map(|(kind, chain)| {
                let probe = probe.clone();
                loom::thread::spawn(move || loom::future::block_on(take_turn(&probe, kind, chain)))
            })
            .collect();
            // on_activate finishes while the others arrive: they were queued or come after.
            set_status(&probe.turns, Status::Active);
            drop(activating);
            for thread in threads {
                thread.join().unwrap();
            }
            assert_eq!(probe.done.load(Ordering::SeqCst), 3);
        });
    }

    #[test]
    fn readers_share_and_an_abandoned_waiter_passes_its_turn_on() {
        model(|| {
            let (probe, activating) = activating();
            set_status(&probe.turns, Status::Active);
            let reader = {
                let probe = probe.clone();
                loom::thread::spawn(move || {
                    loom::future::block_on(take_turn(&probe, MethodKind::Read, 1));
                })
            };
            // A writer that gives up while it may be waiting: whatever turn it was handed
            // must reach the others.
            let quitter = {
                let probe = probe.clone();
                loom::thread::spawn(move || {
                    loom::future::block_on(async {
                        let mut waiting = std::pin::pin!(acquire(
                            &probe,
                            MethodKind::Write,
                            ChainId::from_raw(2)
                        ));
                        let _ = futures::poll!(waiting.as_mut());
                    });
                })
            };
            let writer = {
                let probe = probe.clone();
                loom::thread::spawn(move || {
                    loom::future::block_on(take_turn(&probe, MethodKind::Write, 3));
                })
            };
            drop(activating);
            reader.join().unwrap();
            quitter.join().unwrap();
            writer.join().unwrap();
            assert_eq!(probe.done.load(Ordering::SeqCst), 2);
            // Nobody holds or waits for a turn any more.
            let state = probe.turns.lock();
            assert!(state.writer.is_none() && state.readers.is_empty() && state.queue.is_empty());
        });
    }

    #[test]
    fn a_failed_activation_fails_every_waiter() {
        model(|| {
            let (probe, activating) = activating();
            let waiter = {
                let probe = probe.clone();
                loom::thread::spawn(move || {
                    loom::future::block_on(acquire(&probe, MethodKind::Read, ChainId::from_raw(1)))
                        .map(drop)
                })
            };
            set_status(
                &probe.turns,
                Status::Failed(CallError::internal("on_activate failed")),
            );
            drop(activating);
            assert!(matches!(
                waiter.join().unwrap(),
                Err(AcquireError::Failed(_))
            ));
        });
    }
}
