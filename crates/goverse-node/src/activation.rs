//! One live object: its state, its turn scheduler, and the futures that run its turns.

use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::task::TaskTracker;

use tokio::time::Instant;

use futures::FutureExt;
use goverse_core::{CallError, ChainId, ClientIdentity, ErrorCode, ObjectId, Payload, ShardId};
use goverse_persistence::ReliableCall;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::host::Host;
use crate::reliable::{self, RecentCalls};
use crate::store::{Change, SaveJob, store_error};
use crate::turn::{self, Scheduled, Status};
use goverse_core::ReliableOutcome;

/// A turn on a live object.
pub(crate) type TurnPermit = turn::TurnPermit<dyn ActivationDyn>;
/// The turn state of a live object.
pub(crate) type TurnState = turn::TurnState<dyn ActivationDyn>;
use crate::{Dispatch, Durability, MethodKind, ObjectContext};

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
    dirty: AtomicBool,
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
            dirty: AtomicBool::new(false),
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

    /// Loads and restores saved state, then runs `on_activate`. A new object (nothing to
    /// restore) is marked changed, so its first state is saved; changes `on_activate` makes to a
    /// restored object are saved with its next change.
    async fn activate_inner(permit: &TurnPermit, deadline: Instant) -> Result<(), CallError> {
        let this = Self::of(permit);
        let object = this.object_mut(permit);
        let mut restored = false;
        if T::PERSISTENT
            && let Some(store) = this.host.store()
        {
            let record = store.load(&this.id).await.map_err(|err| {
                store_error(
                    err,
                    &format!("cannot load state of {}/{}", T::TYPE_NAME, this.id),
                )
            })?;
            if let Some(record) = record {
                if record.object_type != T::TYPE_NAME {
                    return Err(type_mismatch(&this.id, &record.object_type, T::TYPE_NAME));
                }
                object.restore(&record.data).map_err(|err| {
                    // The record is there but unreadable: damaged data, not a passing failure.
                    CallError::new(
                        ErrorCode::DataLoss,
                        format!(
                            "cannot restore {}/{} from its saved state: {}",
                            T::TYPE_NAME,
                            this.id,
                            err.message()
                        ),
                    )
                })?;
                restored = true;
            }
        }
        let ctx = Self::context(permit, deadline, None);
        match AssertUnwindSafe(object.on_activate(&ctx, restored))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => {
                if T::PERSISTENT && !restored {
                    this.dirty.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
            Ok(Err(err)) => Err(CallError::new(
                err.code(),
                format!(
                    "activation of {}/{} failed: {}",
                    T::TYPE_NAME,
                    this.id,
                    err.message()
                ),
            )),
            Err(panic) => Err(CallError::internal(format!(
                "activation of {}/{} panicked: {}",
                T::TYPE_NAME,
                this.id,
                panic_message(&*panic)
            ))),
        }
    }

    async fn activate_turn(permit: TurnPermit, deadline: Instant) {
        let result = Self::activate_inner(&permit, deadline).await;
        let this = Self::of(&permit);
        match result {
            Ok(()) => turn::set_status(&this.turn, Status::Active),
            Err(err) => {
                tracing::warn!(object = %this.id, r#type = T::TYPE_NAME, error = %err, "activation failed");
                this.host.detach(this.shard, &this.id, this.serial);
                turn::set_status(&this.turn, Status::Failed(err));
            }
        }
        // Dropping the permit starts the queued calls (or hands them the failure).
        drop(permit);
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

    /// Runs method `method` of kind `kind` under `permit`, catching a panic. Returns the
    /// method's result and whether the activation was discarded (a write method that panicked).
    /// A read method runs on a shared borrow whatever the turn (a reliable call takes a write
    /// turn for it); a write method needs the write turn.
    async fn dispatch(
        permit: &TurnPermit,
        method: usize,
        kind: MethodKind,
        request: Payload,
        ctx: &ObjectContext,
    ) -> (Result<Payload, CallError>, bool) {
        let this = Self::of(permit);
        let outcome = match kind {
            MethodKind::Read => {
                let object = this.object(permit);
                AssertUnwindSafe(object.dispatch_ref(method, ctx, request))
                    .catch_unwind()
                    .await
            }
            MethodKind::Write => {
                if T::PERSISTENT {
                    this.dirty.store(true, Ordering::Relaxed);
                }
                let object = this.object_mut(permit);
                AssertUnwindSafe(object.dispatch_mut(method, ctx, request))
                    .catch_unwind()
                    .await
            }
        };
        match outcome {
            Ok(result) => (result, false),
            Err(panic) => {
                let name = T::METHODS.get(method).map_or("?", |m| m.name);
                let message = panic_message(&*panic);
                let discarded = kind == MethodKind::Write;
                if discarded {
                    // A write turn that panicked may have left the object half-updated: discard
                    // this activation; the next call reactivates from the last saved state.
                    tracing::error!(object = %this.id, r#type = T::TYPE_NAME, method = name, panic = %message,
                        "method panicked during a write turn; activation discarded");
                    this.retire(permit);
                } else {
                    tracing::error!(object = %this.id, r#type = T::TYPE_NAME, method = name, panic = %message,
                        "method panicked during a read turn");
                }
                let err = CallError::internal(format!(
                    "{}.{name} on {} panicked: {message}",
                    T::TYPE_NAME,
                    this.id
                ));
                (Err(err), discarded)
            }
        }
    }

    async fn method_turn(
        permit: TurnPermit,
        method: usize,
        request: Payload,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> Result<Payload, CallError> {
        let this = Self::of(&permit);
        let ctx = Self::context(&permit, deadline, client);
        // The turn's kind is the method's: calls take the turn their method needs.
        let kind = permit.kind();
        let (result, discarded) = Self::dispatch(&permit, method, kind, request, &ctx).await;
        if discarded || kind != MethodKind::Write || !this.writes_through() {
            return result;
        }
        // Write-through: the reply waits for the commit of the state this turn left, whatever
        // the method returned (an error does not undo its changes).
        match this.commit_state(&permit).await {
            Ok(()) => result,
            Err(err) => {
                // The state in memory is not what is stored: discard it, so nobody sees (or
                // later saves) a change that was not committed.
                tracing::warn!(object = %this.id, cause = %err,
                    "write-through commit failed; activation discarded");
                this.retire(&permit);
                Err(err)
            }
        }
    }

    async fn reliable_turn(
        permit: TurnPermit,
        call: ReliableRequest,
        request: Payload,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> ReliableOutcome {
        let this = Self::of(&permit);
        let Some(store) = this.host.store() else {
            return ReliableOutcome::Skipped(CallError::unavailable(
                "reliable calls need an object store",
            ));
        };
        let spec = &T::METHODS[call.method];
        let request_bytes = request.encoded_any();

        // An earlier attempt with this call id? Calls to this object run one at a time, and the
        // previous ones committed before their turns ended, so the store is up to date.
        let known = this
            .recent_calls
            .lock()
            .as_ref()
            .and_then(|recent| recent.get(&call.call_id).cloned());
        let earlier = match known {
            Some(record) => Some(record),
            None => match store.reliable_call(&call.call_id).await {
                Ok(record) => record,
                Err(err) => {
                    return ReliableOutcome::Skipped(store_error(
                        err,
                        &format!("cannot look up reliable call {:?}", &*call.call_id),
                    ));
                }
            },
        };
        if let Some(record) = earlier {
            if !record.same_request(this.id.as_str(), T::TYPE_NAME, spec.name, &request_bytes) {
                return ReliableOutcome::Skipped(reliable::reused(&call.call_id, &record));
            }
            let outcome = reliable::outcome_of(&record);
            this.remember(record);
            return outcome;
        }

        let ctx = Self::context(&permit, deadline, client);
        let (result, discarded) =
            Self::dispatch(&permit, call.method, call.kind, request, &ctx).await;
        let record = ReliableCall {
            call_id: call.call_id.to_string(),
            object_id: this.id.to_string(),
            object_type: T::TYPE_NAME.to_owned(),
            method: spec.name.to_owned(),
            request: request_bytes,
            result: reliable::result_of(&result),
        };
        // The record commits with the state the call left; a read, or a write whose activation
        // was discarded (a panic), leaves the stored state as it is.
        let change = if discarded || call.kind == MethodKind::Read {
            Ok(Change::Unchanged)
        } else {
            this.dirty.store(false, Ordering::Relaxed);
            this.snapshot(&permit).map(Change::Save)
        };
        let job = match (change, this.host.fence(this.shard)) {
            (Ok(change), Ok(fence)) => SaveJob {
                id: this.id.clone(),
                object_type: T::TYPE_NAME,
                change,
                fence,
                reliable: Some(record.clone()),
            },
            (Err(err), _) | (_, Err(err)) => {
                if !discarded {
                    this.retire(&permit);
                }
                return ReliableOutcome::Skipped(err);
            }
        };
        match store.save(job).await {
            Ok(()) => {
                this.remember(record);
                match result {
                    Ok(payload) => ReliableOutcome::Success(payload),
                    Err(err) => ReliableOutcome::Failed(err),
                }
            }
            Err(failure) => {
                // Not recorded: roll the in-memory state back by discarding the activation, so
                // the effect is neither visible nor saved later. The call did not take effect.
                if !discarded {
                    this.retire(&permit);
                }
                let what = format!(
                    "reliable call {:?} on {}/{}",
                    &*call.call_id,
                    T::TYPE_NAME,
                    this.id
                );
                tracing::warn!(object = %this.id, call_id = %call.call_id, "reliable call not committed; activation discarded");
                ReliableOutcome::Skipped(failure.into_call_error(&what))
            }
        }
    }

    async fn close_turn(
        permit: TurnPermit,
        reason: CloseReason,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let this = Self::of(&permit);
        let ctx = Self::context(&permit, Instant::now() + this.host.call_timeout(), None);
        let object = this.object_mut(&permit);
        match AssertUnwindSafe(object.on_deactivate(&ctx))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(object = %this.id, error = %err, "on_deactivate failed"),
            Err(panic) => {
                tracing::error!(object = %this.id, panic = %panic_message(&*panic), "on_deactivate panicked")
            }
        }
        let mut handed_back = None;
        if T::PERSISTENT
            && let Some(store) = this.host.store()
        {
            match reason {
                // Only changed state is written: an object that was only read is stored as is.
                CloseReason::Shutdown => {
                    if this.dirty.load(Ordering::Relaxed) {
                        handed_back = Some(this.snapshot(&permit)?);
                    }
                }
                CloseReason::Idle => {
                    if this.dirty.load(Ordering::Relaxed) {
                        this.commit_state(&permit).await?;
                    }
                }
                CloseReason::Delete => {
                    let job = SaveJob {
                        id: this.id.clone(),
                        object_type: T::TYPE_NAME,
                        change: Change::Delete,
                        fence: this.host.fence(this.shard)?,
                        reliable: None,
                    };
                    store.save(job).await.map_err(|failure| {
                        failure.into_call_error(&format!(
                            "deletion of the saved state of {}/{}",
                            T::TYPE_NAME,
                            this.id
                        ))
                    })?;
                }
            }
        }
        this.retire(&permit);
        drop(permit);
        Ok(handed_back)
    }

    async fn timer_turn(permit: TurnPermit, name: Arc<str>) {
        let this = Self::of(&permit);
        let deadline = Instant::now() + this.host.call_timeout();
        let ctx = Self::context(&permit, deadline, None);
        if T::PERSISTENT {
            this.dirty.store(true, Ordering::Relaxed);
        }
        let object = this.object_mut(&permit);
        match AssertUnwindSafe(object.on_timer(&ctx, &name))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(object = %this.id, timer = %name, error = %err, "timer turn failed")
            }
            Err(panic) => {
                tracing::error!(object = %this.id, timer = %name, panic = %panic_message(&*panic),
                    "timer turn panicked; activation discarded");
                this.retire(&permit);
                return;
            }
        }
        if this.writes_through()
            && let Err(err) = this.commit_state(&permit).await
        {
            tracing::warn!(object = %this.id, timer = %name, cause = %err,
                "write-through commit after a timer failed; activation discarded");
            this.retire(&permit);
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
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// A future that, once started, finishes even if its caller stops waiting: dropping it before
/// it completes moves the rest of it onto a task of the node's tracker (which shutdown waits
/// for). Turns run to completion this way, so a caller's timeout never leaves an object
/// half-updated.
pub(crate) struct Detached<'t, T: Send + 'static> {
    future: Option<BoxFuture<T>>,
    tracker: &'t TaskTracker,
}

impl<'t, T: Send + 'static> Detached<'t, T> {
    pub(crate) fn new(future: BoxFuture<T>, tracker: &'t TaskTracker) -> Self {
        Self {
            future: Some(future),
            tracker,
        }
    }
}

impl<T: Send + 'static> Future for Detached<'_, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        let future = self
            .future
            .as_mut()
            .expect("Detached polled after completion");
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        std::task::Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for Detached<'_, T> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            self.tracker.spawn(async move {
                let _ = future.await;
            });
        }
    }
}
