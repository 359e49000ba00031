//! The turns an activation runs, from start to reply: activating, a method call, a reliable
//! call, a close, a timer; and [`Detached`], which lets a started turn finish when its caller
//! stops waiting.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use goverse_core::{CallError, ClientIdentity, ErrorCode, Payload, ReliableOutcome};
use goverse_persistence::ReliableCall;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{
    Activation, ActivationDyn, BoxFuture, CloseReason, ReliableRequest, TurnPermit, type_mismatch,
};
use crate::reliable;
use crate::store::{Change, SaveJob, store_error};
use crate::turn::{self, Status};
use crate::{Dispatch, MethodKind, ObjectContext};

impl<T: Dispatch> Activation<T> {
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

    pub(super) async fn activate_turn(permit: TurnPermit, deadline: Instant) {
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

    pub(super) async fn method_turn(
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
            Self::end_turn(permit);
            return result;
        }
        // Write-through: the reply waits for the commit of the state this turn left, whatever
        // the method returned (an error does not undo its changes).
        match this.commit_state(&permit).await {
            Ok(()) => {
                Self::end_turn(permit);
                result
            }
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

    /// Ends a turn. A close the turn asked for (`ObjectContext::deactivate`, `delete_self`)
    /// runs now under the same permit, so no other turn comes between; on a task of the node,
    /// so the turn's reply is not held up by the save or delete.
    fn end_turn(permit: TurnPermit) {
        let this = Self::of(&permit);
        let Some(reason) = this.take_close_asked() else {
            return;
        };
        if matches!(
            permit.activation().turn_state().lock().status,
            Status::Closed
        ) {
            return;
        }
        let id = this.id.clone();
        let host = this.host.clone();
        host.spawn(Box::pin(async move {
            match Self::close_turn(permit, reason).await {
                Ok(_) => tracing::debug!(object = %id, ?reason, "closed as the object asked"),
                Err(err) => tracing::warn!(object = %id, ?reason, error = %err,
                    "the close the object asked for failed; it stays active"),
            }
        }));
    }

    pub(super) async fn reliable_turn(
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
                Self::end_turn(permit);
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

    pub(super) async fn close_turn(
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

    pub(super) async fn timer_turn(permit: TurnPermit, name: Arc<str>) {
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
            return;
        }
        Self::end_turn(permit);
    }
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn Any + Send)) -> String {
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
