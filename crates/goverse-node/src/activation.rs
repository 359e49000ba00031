//! One live object: its state, its turn scheduler, and how its turns reach it (the turns
//! themselves are in [`turns`]).

mod turns;
pub(crate) use turns::Detached;

use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use goverse_core::{
    CallError, ChainId, ClientIdentity, ObjectId, Payload, ReliableOutcome, ShardId,
};
use goverse_persistence::ReliableCall;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::host::Host;
use crate::reliable::RecentCalls;
use crate::store::{Change, SaveJob};
use crate::turn::{self, Scheduled, Status};
use crate::{Dispatch, Durability, MethodKind, ObjectContext};

/// A turn on a live object.
pub(crate) type TurnPermit = turn::TurnPermit<dyn ActivationDyn>;
/// The turn state of a live object.
pub(crate) type TurnState = turn::TurnState<dyn ActivationDyn>;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why an activation is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Idle past its timeout: save, then go.
    Idle,
    /// Node shutdown: hand the snapshot back for a batched save.
    Shutdown,
    /// Explicit delete: drop the persisted record too.
    Delete,
}

/// `Activation::close_asked` values.
const CLOSE_NOT_ASKED: u8 = 0;
const CLOSE_ASKED_IDLE: u8 = 1;
const CLOSE_ASKED_DELETE: u8 = 2;

impl<T> Activation<T> {
    /// Takes the close the running turn asked for, if any (one relaxed load when none was).
    pub(crate) fn take_close_asked(&self) -> Option<CloseReason> {
        if self.close_asked.load(Ordering::Relaxed) == CLOSE_NOT_ASKED {
            return None;
        }
        match self.close_asked.swap(CLOSE_NOT_ASKED, Ordering::Relaxed) {
            CLOSE_ASKED_IDLE => Some(CloseReason::Idle),
            CLOSE_ASKED_DELETE => Some(CloseReason::Delete),
            _ => None,
        }
    }
}

/// The type-erased face of an activation, used by the node's tables and the turn scheduler.
pub(crate) trait ActivationDyn: Any + Send + Sync + fmt::Debug {
    fn id(&self) -> &ObjectId;
    fn type_name(&self) -> &'static str;
    fn shard(&self) -> ShardId;
    /// Tells this activation apart from earlier and later ones of the same object.
    fn serial(&self) -> u64;
    fn host(&self) -> &Arc<dyn Host>;
    fn turn_state(&self) -> &Mutex<TurnState>;
    fn idle_timeout(&self) -> Duration;
    /// When it was made, in the node's clock (milliseconds since the node started).
    fn created_ms(&self) -> u64;
    /// Records a call, for idle tracking.
    fn touch(&self);
    /// Idle bookkeeping for the sweeper: whether the activation has been idle for `timeout`
    /// as of `now_ms`.
    fn idle_for(&self, now_ms: u64, timeout: Duration) -> bool;
    /// Whether a write turn ran since the last save; clears the flag.
    fn take_dirty(&self) -> bool;
    fn mark_dirty(&self);
    fn persistent(&self) -> bool;

    /// Runs `on_activate` (after loading saved state) under the activating write turn.
    fn activate(&self, permit: TurnPermit, deadline: Instant) -> BoxFuture<()>;
    /// Runs one method turn.
    fn run(
        &self,
        permit: TurnPermit,
        method: usize,
        request: Payload,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> BoxFuture<Result<Payload, CallError>>;
    /// Runs one reliable call under a write turn: answers an earlier attempt's outcome, or runs
    /// the method and commits its record with the new state.
    fn run_reliable(
        &self,
        permit: TurnPermit,
        call: ReliableRequest,
        request: Payload,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> BoxFuture<ReliableOutcome>;
    /// Closes the activation under a write turn. For [`CloseReason::Shutdown`] returns the state
    /// to save; otherwise saves (idle) or deletes (delete) itself and returns `None`.
    fn close(
        &self,
        permit: TurnPermit,
        reason: CloseReason,
    ) -> BoxFuture<Result<Option<Vec<u8>>, CallError>>;
    /// Runs a timer turn.
    fn fire_timer(&self, permit: TurnPermit, name: Arc<str>) -> BoxFuture<()>;
    /// The state to save, under a read or write turn.
    fn snapshot(&self, permit: &TurnPermit) -> Result<Vec<u8>, CallError>;
    /// A save of the current state (snapshot and fence), under a read or write turn.
    fn save_job(&self, permit: &TurnPermit) -> Result<SaveJob, CallError>;
    /// The timers registry.
    fn timers(&self) -> &Mutex<Vec<(Arc<str>, CancellationToken)>>;
    /// Asks for `reason`'s close when the running write turn ends (a delete outranks a
    /// deactivation).
    fn ask_close(&self, reason: CloseReason);
}

impl Scheduled for dyn ActivationDyn {
    type Lock = Mutex<TurnState>;

    fn turn_state(&self) -> &Mutex<TurnState> {
        ActivationDyn::turn_state(self)
    }

    fn id(&self) -> &ObjectId {
        ActivationDyn::id(self)
    }

    fn type_name(&self) -> &'static str {
        ActivationDyn::type_name(self)
    }
}

/// A reliable call as the activation runs it.
#[derive(Debug)]
pub(crate) struct ReliableRequest {
    /// The caller's call id.
    pub(crate) call_id: Arc<str>,
    /// The method's index.
    pub(crate) method: usize,
    /// The method's kind.
    pub(crate) kind: MethodKind,
}

/// The error for object `id`, of type `actual` (live or stored), asked for as `wanted`:
/// `AlreadyExists` for every operation, since an object ID belongs to one type.
pub(crate) fn type_mismatch(id: &ObjectId, actual: &str, wanted: &str) -> CallError {
    CallError::new(
        goverse_core::ErrorCode::AlreadyExists,
        format!(
            "object {id} already exists with type {:?}, not {:?}: an object id belongs to one type",
            goverse_core::Clipped(actual),
            goverse_core::Clipped(wanted)
        ),
    )
}

/// A live object of type `T`.
pub(crate) struct Activation<T> {
    id: ObjectId,
    shard: ShardId,
    serial: u64,
    host: Arc<dyn Host>,
    idle_timeout: Duration,
    turn: Mutex<TurnState>,
    touched: AtomicBool,
    idle_since_ms: AtomicU64,
    /// When it was made, in the node's clock (milliseconds since the node started).
    created_ms: u64,
    dirty: AtomicBool,
    /// A close the running write turn asked for (`ObjectContext::deactivate`, `delete_self`),
    /// made under that turn's permit when it ends (`CLOSE_*`). An atomic: every turn looks at it
    /// as it ends.
    close_asked: AtomicU8,
    timers: Mutex<Vec<(Arc<str>, CancellationToken)>>,
    /// Allocated on the first reliable call: most objects never take one.
    recent_calls: Mutex<Option<Box<RecentCalls>>>,
    object: UnsafeCell<T>,
}

// SAFETY: `object` is only reached through a turn permit: a write permit is exclusive, read
// permits exclude writers (see `turn`). With `T: Send + Sync`, sharing the activation across
// threads is then as sound as sharing an `RwLock<T>`.
unsafe impl<T: Send + Sync> Sync for Activation<T> {}

impl<T> fmt::Debug for Activation<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activation")
            .field("id", &self.id)
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl<T: Dispatch> Activation<T> {
    pub(crate) fn new(
        host: Arc<dyn Host>,
        id: ObjectId,
        shard: ShardId,
        object: T,
        idle_timeout: Duration,
        activating_chain: ChainId,
        now_ms: u64,
    ) -> Self {
        /// Activations made by this process so far.
        static SERIALS: AtomicU64 = AtomicU64::new(0);
        Self {
            id,
            shard,
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            host,
            idle_timeout,
            turn: Mutex::new(TurnState::activating(activating_chain)),
            touched: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(now_ms),
            created_ms: now_ms,
            dirty: AtomicBool::new(false),
            close_asked: AtomicU8::new(CLOSE_NOT_ASKED),
            timers: Mutex::new(Vec::new()),
            recent_calls: Mutex::new(None),
            object: UnsafeCell::new(object),
        }
    }

    /// The activation a permit is for.
    fn of(permit: &TurnPermit) -> &Self {
        let activation: &dyn Any = &**permit.activation();
        activation
            .downcast_ref::<Self>()
            .expect("permit belongs to an activation of this type")
    }

    /// Shared access to the object.
    fn object<'a>(&'a self, permit: &'a TurnPermit) -> &'a T {
        debug_assert!(std::ptr::addr_eq(Arc::as_ptr(permit.activation()), self));
        // SAFETY: a permit of either kind excludes writers for as long as it lives, and the
        // returned borrow cannot outlive the permit.
        unsafe { &*self.object.get() }
    }

    /// Exclusive access to the object.
    #[allow(clippy::mut_from_ref)]
    fn object_mut<'a>(&'a self, permit: &'a TurnPermit) -> &'a mut T {
        assert_eq!(
            permit.kind(),
            MethodKind::Write,
            "exclusive access needs a write turn"
        );
        debug_assert!(std::ptr::addr_eq(Arc::as_ptr(permit.activation()), self));
        // SAFETY: a write permit is the only live permit on this activation, and the returned
        // borrow cannot outlive it.
        unsafe { &mut *self.object.get() }
    }

    fn context(
        permit: &TurnPermit,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> ObjectContext {
        ObjectContext::new(
            permit.activation().clone(),
            permit.kind(),
            permit.chain(),
            deadline,
            client,
        )
    }

    fn cancel_timers(&self) {
        for (_, token) in self.timers.lock().drain(..) {
            token.cancel();
        }
    }

    /// Takes the activation out of service: off the table, closed to new turns. Waiters are told
    /// to look the object up again when `permit` is dropped.
    fn retire(&self, _permit: &TurnPermit) {
        self.cancel_timers();
        self.host.detach(self.shard, &self.id, self.serial);
        turn::set_status(&self.turn, Status::Closed);
    }

    /// Keeps `record` among the activation's recent reliable calls.
    fn remember(&self, record: ReliableCall) {
        self.recent_calls
            .lock()
            .get_or_insert_with(Box::default)
            .remember(record);
    }

    /// Whether write turns of `T` commit before they reply on this node.
    fn writes_through(&self) -> bool {
        T::PERSISTENT && T::DURABILITY == Durability::WriteThrough && self.host.store().is_some()
    }

    fn what(&self) -> String {
        format!("state of {}/{}", T::TYPE_NAME, self.id)
    }

    /// Commits the current state (a write turn's end, `ctx.save`). On failure the caller decides
    /// what happens to the activation.
    async fn commit_state(&self, permit: &TurnPermit) -> Result<(), CallError> {
        let Some(store) = self.host.store() else {
            return Ok(());
        };
        self.dirty.store(false, Ordering::Relaxed);
        let job = self.save_job(permit)?;
        match store.save(job).await {
            Ok(()) => {
                self.host.count_saves(1);
                Ok(())
            }
            Err(failure) => {
                self.dirty.store(true, Ordering::Relaxed);
                Err(failure.into_call_error(&self.what()))
            }
        }
    }
}

impl<T: Dispatch> ActivationDyn for Activation<T> {
    fn id(&self) -> &ObjectId {
        &self.id
    }

    fn type_name(&self) -> &'static str {
        T::TYPE_NAME
    }

    fn shard(&self) -> ShardId {
        self.shard
    }

    fn serial(&self) -> u64 {
        self.serial
    }

    fn host(&self) -> &Arc<dyn Host> {
        &self.host
    }

    fn turn_state(&self) -> &Mutex<TurnState> {
        &self.turn
    }

    fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn created_ms(&self) -> u64 {
        self.created_ms
    }

    fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    fn idle_for(&self, now_ms: u64, timeout: Duration) -> bool {
        if self.touched.swap(false, Ordering::Relaxed) {
            self.idle_since_ms.store(now_ms, Ordering::Relaxed);
            return false;
        }
        let since = self.idle_since_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(since) >= timeout.as_millis() as u64
    }

    fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    fn persistent(&self) -> bool {
        T::PERSISTENT
    }

    fn activate(&self, permit: TurnPermit, deadline: Instant) -> BoxFuture<()> {
        Box::pin(Self::activate_turn(permit, deadline))
    }

    fn run(
        &self,
        permit: TurnPermit,
        method: usize,
        request: Payload,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> BoxFuture<Result<Payload, CallError>> {
        Box::pin(Self::method_turn(permit, method, request, deadline, client))
    }

    fn run_reliable(
        &self,
        permit: TurnPermit,
        call: ReliableRequest,
        request: Payload,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> BoxFuture<ReliableOutcome> {
        Box::pin(Self::reliable_turn(permit, call, request, deadline, client))
    }

    fn close(
        &self,
        permit: TurnPermit,
        reason: CloseReason,
    ) -> BoxFuture<Result<Option<Vec<u8>>, CallError>> {
        Box::pin(Self::close_turn(permit, reason))
    }

    fn fire_timer(&self, permit: TurnPermit, name: Arc<str>) -> BoxFuture<()> {
        Box::pin(Self::timer_turn(permit, name))
    }

    fn snapshot(&self, permit: &TurnPermit) -> Result<Vec<u8>, CallError> {
        self.object(permit).snapshot().map_err(|err| {
            CallError::internal(format!(
                "cannot snapshot {}/{}: {err}",
                T::TYPE_NAME,
                self.id
            ))
        })
    }

    fn save_job(&self, permit: &TurnPermit) -> Result<SaveJob, CallError> {
        Ok(SaveJob {
            id: self.id.clone(),
            object_type: T::TYPE_NAME,
            change: Change::Save(self.snapshot(permit)?),
            fence: self.host.fence(self.shard)?,
            reliable: None,
        })
    }

    fn timers(&self) -> &Mutex<Vec<(Arc<str>, CancellationToken)>> {
        &self.timers
    }

    fn ask_close(&self, reason: CloseReason) {
        // A delete outranks a deactivation: the larger code wins.
        let code = match reason {
            CloseReason::Delete => CLOSE_ASKED_DELETE,
            _ => CLOSE_ASKED_IDLE,
        };
        self.close_asked.fetch_max(code, Ordering::Relaxed);
    }
}
