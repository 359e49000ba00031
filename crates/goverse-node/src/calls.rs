//! The call path: calls, reliable calls, creates and deletes of one object, served on this node
//! or refused as not served here (nothing ran); what is refused goes on through the one
//! fallback in [`crate::forward`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use goverse_core::metrics::Stamp;
use goverse_core::{
    CallError, ChainId, ClientIdentity, ObjectId, Payload, ReliableOutcome, Route, ShardId,
};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::MethodKind;
use crate::activation::type_mismatch;
use crate::activation::{ActivationDyn, CloseReason, Detached, ReliableRequest, TurnPermit};
use crate::directory::Lookup;
use crate::host::{CallScope, MethodRef};
use crate::lifecycle::Phase;
use crate::node::NodeInner;
use crate::operation::{NotHere, Onward, Operation, Served, Target};
use crate::registry::TypeEntry;
use crate::reliable;
use crate::turn::{self, AcquireError};

impl NodeInner {
    /// Whether this node serves now (running, lease fresh), or why not.
    fn check_serving(&self) -> Result<(), CallError> {
        match self.lifecycle.phase() {
            Phase::Running if self.membership.lease_fresh() => Ok(()),
            Phase::Running => Err(CallError::not_served(format!(
                "node {} has not renewed its lease in time (paused or starved?); it serves \
                 again once the lease is renewed",
                self.address
            ))),
            Phase::Starting => Err(CallError::not_served(format!(
                "node {} is starting",
                self.address
            ))),
            Phase::Stopping | Phase::Stopped => Err(CallError::not_served(format!(
                "node {} is shutting down",
                self.address
            ))),
        }
    }

    /// The directory table `route`'s object lives in on this node (its shard, or the node's own
    /// slot for an ID pinned here), or why this node does not serve it now.
    fn table_of(&self, target: &Target<'_>) -> Result<ShardId, CallError> {
        self.check_serving()?;
        match target.route {
            Route::Shard(shard) => Ok(shard),
            Route::Node { addr, .. } if addr == self.address.as_str() => {
                Ok(self.directory.node_slot())
            }
            Route::Node { addr, .. } => Err(CallError::not_served(format!(
                "object {} is pinned to node {addr}, and this is node {}",
                target.id, self.address
            ))),
        }
    }

    pub(crate) fn entry(&self, type_name: &str) -> Result<&dyn TypeEntry, CallError> {
        self.registry
            .get(type_name)
            .map(|e| &**e)
            .ok_or_else(|| CallError::unknown_type(type_name))
    }

    /// The activation the directory holds for `id`, refusing a type clash.
    fn checked(
        activation: Arc<dyn ActivationDyn>,
        type_name: &str,
        id: &ObjectId,
    ) -> Result<Arc<dyn ActivationDyn>, CallError> {
        if activation.type_name() != type_name {
            return Err(type_mismatch(id, activation.type_name(), type_name));
        }
        Ok(activation)
    }

    /// The live activation of the target, activating it if there is none.
    async fn activation(
        self: &Arc<Self>,
        target: Target<'_>,
        chain: ChainId,
        deadline: Instant,
    ) -> Result<Arc<dyn ActivationDyn>, CallError> {
        let Target { type_name, id, .. } = target;
        let shard = target.shard();
        match self.directory.lookup(shard, id) {
            Lookup::NotServed(err) => return Err(err),
            Lookup::Active(activation) => {
                return Self::checked(activation, type_name, id);
            }
            Lookup::Inactive => {}
        }
        let entry = self.entry(type_name)?;
        // The host handle is cloned only when an activation is made.
        let (activation, made) = self.directory.get_or_insert(shard, id, || {
            entry.new_activation(
                self.clone(),
                id.clone(),
                shard,
                chain,
                self.now_ms(),
                self.config.idle_timeout,
            )
        })?;
        if !made {
            return Self::checked(activation, type_name, id);
        }
        self.counters.activations.fetch_add(1, Ordering::Relaxed);
        // The new activation was born holding its write turn on `chain`; run on_activate under it.
        let permit = TurnPermit::preassigned(activation.clone(), MethodKind::Write, chain);
        Detached::new(activation.activate(permit, deadline), &self.lifecycle.tasks).await;
        if matches!(
            activation.turn_state().lock().status,
            turn::Status::Failed(_)
        ) {
            self.counters
                .activation_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(activation)
    }

    /// Finds or activates the target and takes a turn of `kind` on it, looking again whenever
    /// the activation it found went away before the turn came.
    async fn turn_on(
        self: &Arc<Self>,
        target: Target<'_>,
        kind: MethodKind,
        chain: ChainId,
        deadline: Instant,
    ) -> Result<(Arc<dyn ActivationDyn>, TurnPermit), CallError> {
        loop {
            let activation = self.activation(target, chain, deadline).await?;
            activation.touch();
            match turn::acquire(&activation, kind, chain).await {
                Ok(permit) => return Ok((activation, permit)),
                Err(AcquireError::Retry) => continue,
                Err(AcquireError::Failed(err)) => return Err(err),
            }
        }
    }

    /// [`NodeInner::turn_on`], timed for the call's metrics: when the turn is granted (the
    /// clock read only if the turn had to wait; one granted at once was granted at `started`,
    /// and its lookup's fraction of a microsecond counts as execution).
    async fn timed_turn_on(
        self: &Arc<Self>,
        target: Target<'_>,
        kind: MethodKind,
        chain: ChainId,
        deadline: Instant,
        started: Option<Stamp>,
    ) -> (
        Result<(Arc<dyn ActivationDyn>, TurnPermit), CallError>,
        Option<Stamp>,
    ) {
        let mut turn = std::pin::pin!(self.turn_on(target, kind, chain, deadline));
        let mut waited = false;
        let found = std::future::poll_fn(|cx| {
            let poll = turn.as_mut().poll(cx);
            waited |= poll.is_pending();
            poll
        })
        .await;
        let granted = started.map(|at| {
            if waited {
                goverse_core::metrics::stamp()
            } else {
                at
            }
        });
        (found, granted)
    }

    /// The call path shared by typed stubs, the untyped API and the node protocol.
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        method: MethodRef<'_>,
        request: Payload,
        scope: CallScope,
    ) -> Result<Payload, CallError> {
        let target = self.target(type_name, id)?;
        let onward = Onward::of(&scope);
        match self.serve_call(target, method, request, scope).await? {
            Served::Done(payload) => Ok(payload),
            Served::NotHere(not_here) => Box::pin(self.fall_back(target, not_here, onward))
                .await
                .and_then(crate::forward::value),
        }
    }

    /// Parses `id` once into the target every step of the call uses.
    fn target<'a>(&self, type_name: &'a str, id: &'a ObjectId) -> Result<Target<'a>, CallError> {
        let route = Route::of(id.as_str(), self.config.shard_count)?;
        Ok(Target {
            type_name,
            id,
            route,
        })
    }

    /// Runs a call here, or hands it back when this node does not serve its object (as far as
    /// the directory's hint knows, before any lookup, when the call may go on).
    async fn serve_call<'r>(
        self: &Arc<Self>,
        target: Target<'_>,
        method: MethodRef<'r>,
        request: Payload,
        scope: CallScope,
    ) -> Result<Served<'r, Payload>, CallError> {
        let CallScope {
            chain,
            deadline,
            client,
            forward,
        } = scope;
        let here = match self.table_of(&target) {
            Ok(table) => Ok(table),
            Err(why) if why.is_not_served() => Err(why),
            Err(err) => return Err(err),
        };
        let (index, kind) = self.resolve(target.type_name, method, &request)?;
        // A shard this node does not serve (as far as the hint knows) goes straight to its
        // owner, without a lookup or a refusal made only to be dropped (`why` is `None`).
        let why = match here {
            Err(why) => Some(Some(why)),
            Ok(table) if forward && !self.directory.admits_hint(table) && self.forwards() => {
                Some(None)
            }
            Ok(_) => None,
        };
        if let Some(why) = why {
            return Ok(Served::NotHere(Box::new(NotHere {
                why,
                operation: Operation::Call(method, request),
                client,
            })));
        }
        let started = self.call_metrics.start();
        let (type_name, id, shard) = (target.type_name, target.id, target.shard());
        let work = async move {
            let (found, granted) = self
                .timed_turn_on(target, kind, chain, deadline, started)
                .await;
            match found {
                Ok((activation, permit)) => {
                    let result = Detached::new(
                        activation.run(permit, index, request, deadline, client),
                        &self.lifecycle.tasks,
                    )
                    .await;
                    if let Some(started) = started {
                        let ok = result.is_ok();
                        self.call_metrics
                            .record(type_name, index, shard, started, granted, ok);
                    }
                    result.map(Served::Done)
                }
                Err(why) if why.is_not_served() => {
                    Ok(not_here(why, Operation::Call(method, request), client))
                }
                Err(err) => {
                    if let Some(started) = started {
                        self.call_metrics
                            .record(type_name, index, shard, started, None, false);
                    }
                    Err(err)
                }
            }
        };
        let span = self.call_span(false, type_name, id, index, chain);
        let result = with_deadline(work, deadline, || format!("{type_name}/{id}"))
            .instrument(span)
            .await;
        if let Err(err) = &result {
            self.count_timeout(err, "CallObject");
        }
        result
    }

    /// The span a call runs in (`call`, at debug level): type, ID, method, chain, node, and
    /// whether it is a reliable call. Disabled (and nearly free) unless debug logs of this crate
    /// are on.
    fn call_span(
        &self,
        reliable: bool,
        type_name: &str,
        id: &ObjectId,
        method: usize,
        chain: ChainId,
    ) -> tracing::Span {
        let span = tracing::debug_span!("call", r#type = type_name, %id,
            method = tracing::field::Empty, reliable, chain = %chain, node = %self.address);
        if !span.is_disabled()
            && let Some(spec) = self
                .registry
                .get(type_name)
                .and_then(|entry| entry.methods().get(method))
        {
            span.record("method", spec.name);
        }
        span
    }

    /// Counts `err` in `goverse_operation_timeouts_total` if it is a deadline that passed.
    fn count_timeout(&self, err: &CallError, operation: &'static str) {
        if err.code() == goverse_core::ErrorCode::DeadlineExceeded {
            self.cluster_counters.timed_out(operation);
        }
    }

    /// The method a call names, as index and kind. A call by name is checked here: the type and
    /// method exist, and the request is of the type the method takes (refused before anything
    /// is activated for it). A typed stub's call was checked at compile time.
    fn resolve(
        &self,
        type_name: &str,
        method: MethodRef<'_>,
        request: &Payload,
    ) -> Result<(usize, MethodKind), CallError> {
        let name = match method {
            MethodRef::Index(index, kind) => return Ok((index, kind)),
            MethodRef::Name(name) => name,
        };
        let entry = self.entry(type_name)?;
        let index = entry
            .method_index(name)
            .ok_or_else(|| CallError::unknown_method(type_name, name))?;
        let spec = &entry.methods()[index];
        let expected = (spec.request)();
        if !request.has_name(expected) {
            return Err(CallError::wrong_payload(
                type_name,
                spec.name,
                expected,
                &request.full_name(),
            ));
        }
        Ok((index, spec.kind))
    }

    /// The reliable-call path: the checks a call gets, then one write turn that answers an
    /// earlier attempt or runs the method and commits its record with the state. Refusals come
    /// back as [`ReliableOutcome::Skipped`]; `Err` means the outcome is unknown (the deadline
    /// passed while the call was queued or running): retrying with the same call id is safe.
    pub(crate) async fn invoke_reliable(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        method: MethodRef<'_>,
        call_id: &str,
        request: Payload,
        scope: CallScope,
    ) -> Result<ReliableOutcome, CallError> {
        let target =
            match reliable::check_call_id(call_id).and_then(|()| self.target(type_name, id)) {
                Ok(target) => target,
                Err(err) => return Ok(ReliableOutcome::Skipped(err)),
            };
        let onward = Onward::of(&scope);
        match self
            .serve_reliable(target, method, call_id, request, scope)
            .await?
        {
            Served::Done(outcome) => Ok(outcome),
            Served::NotHere(not_here) => match self.fall_back(target, not_here, onward).await {
                Ok(answer) => crate::forward::reliable(answer),
                // Refused here and not sent on: nothing ran, as SKIPPED says.
                Err(why) if why.is_not_served() => Ok(ReliableOutcome::Skipped(why)),
                Err(err) => Err(err),
            },
        }
    }

    /// Runs a reliable call here, or hands it back when this node does not serve its object.
    async fn serve_reliable<'r>(
        self: &Arc<Self>,
        target: Target<'_>,
        method: MethodRef<'r>,
        call_id: &'r str,
        request: Payload,
        scope: CallScope,
    ) -> Result<Served<'r, ReliableOutcome>, CallError> {
        let CallScope {
            chain,
            deadline,
            client,
            ..
        } = scope;
        let type_name = target.type_name;
        let served = self.table_of(&target);
        let checked = (|| {
            let entry = self.entry(type_name)?;
            if !entry.persistent() {
                return Err(CallError::invalid_argument(format!(
                    "type {type_name:?} cannot take reliable calls: its state is not persisted, \
                     so exactly-once could not survive a restart (make it persistent)"
                )));
            }
            if self.store.is_none() {
                return Err(CallError::unavailable(format!(
                    "node {} has no object store, so it cannot take reliable calls",
                    self.address
                )));
            }
            self.resolve(type_name, method, &request)
        })();
        let skipped = |err| Ok(Served::Done(ReliableOutcome::Skipped(err)));
        let (index, kind) = match (served, checked) {
            (Err(why), Ok(_)) if why.is_not_served() => {
                let operation = Operation::Reliable(method, call_id, request);
                return Ok(not_here(why, operation, client));
            }
            (Err(err), _) | (Ok(_), Err(err)) => return skipped(err),
            (Ok(_), Ok(found)) => found,
        };
        let shared_id: Arc<str> = call_id.into();
        let started = self.call_metrics.start();
        let shard = target.shard();
        let work = async move {
            // A write turn whatever the method: the lookup, the call and its commit are one step.
            let (found, granted) = self
                .timed_turn_on(target, MethodKind::Write, chain, deadline, started)
                .await;
            let (activation, permit) = match found {
                Ok(found) => found,
                Err(why) if why.is_not_served() => {
                    let operation = Operation::Reliable(method, call_id, request);
                    return Ok(not_here(why, operation, client));
                }
                Err(err) => return skipped(err),
            };
            let call = ReliableRequest {
                call_id: shared_id,
                method: index,
                kind,
            };
            let outcome = Detached::new(
                activation.run_reliable(permit, call, request, deadline, client),
                &self.lifecycle.tasks,
            )
            .await;
            self.counters.reliable(&outcome);
            if let Some(started) = started {
                let ok = matches!(outcome, ReliableOutcome::Success(_));
                self.call_metrics
                    .record(type_name, index, shard, started, granted, ok);
            }
            Ok(Served::Done(outcome))
        };
        let id = target.id;
        let span = self.call_span(true, type_name, id, index, chain);
        let result = with_deadline(work, deadline, || {
            format!("reliable call {type_name}/{id} (the call may have run; retry with the same call id)")
        })
        .instrument(span)
        .await;
        if let Err(err) = &result {
            self.count_timeout(err, "ReliableCallObject");
        }
        result
    }

    /// Creates the object here, or on the node serving it when the call may go on.
    pub(crate) async fn create(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        scope: CallScope,
    ) -> Result<(), CallError> {
        let started = std::time::Instant::now();
        let result = async {
            let target = self.target(type_name, id)?;
            let onward = Onward::of(&scope);
            let served = self.serve_create(target, onward).await?;
            self.done_or_fall_back(target, served, onward).await
        }
        .await;
        self.count_operation("CreateObject", &result, started);
        result
    }

    /// Counts a create or delete in `goverse_operation_duration_seconds` (and a timeout).
    fn count_operation(
        &self,
        operation: &'static str,
        result: &Result<(), CallError>,
        started: std::time::Instant,
    ) {
        if let Err(err) = result {
            self.count_timeout(err, operation);
        }
        self.cluster_counters
            .operation(operation, result.is_ok(), started.elapsed());
    }

    /// Deletes the object here, or on the node serving it when the call may go on.
    pub(crate) async fn delete(
        self: &Arc<Self>,
        type_name: &str,
        id: &ObjectId,
        scope: CallScope,
    ) -> Result<(), CallError> {
        let started = std::time::Instant::now();
        let result = async {
            let target = self.target(type_name, id)?;
            let onward = Onward::of(&scope);
            let served = self.serve_delete(target, onward).await?;
            self.done_or_fall_back(target, served, onward).await
        }
        .await;
        self.count_operation("DeleteObject", &result, started);
        result
    }

    async fn done_or_fall_back(
        self: &Arc<Self>,
        target: Target<'_>,
        served: Served<'_, ()>,
        onward: Onward,
    ) -> Result<(), CallError> {
        match served {
            Served::Done(()) => Ok(()),
            Served::NotHere(not_here) => self.fall_back(target, not_here, onward).await.map(|_| ()),
        }
    }

    /// Activates the target here if it is not active, waiting for its `on_activate`.
    async fn serve_create(
        self: &Arc<Self>,
        target: Target<'_>,
        onward: Onward,
    ) -> Result<Served<'static, ()>, CallError> {
        let (chain, deadline) = (onward.chain, onward.deadline);
        let work = async move {
            self.table_of(&target)?;
            self.entry(target.type_name)?;
            // Taking (and dropping) a turn waits for on_activate, wherever it was started.
            let work = self.turn_on(target, MethodKind::Read, chain, deadline);
            let (type_name, id) = (target.type_name, target.id);
            with_deadline(work, deadline, || format!("create {type_name}/{id}")).await
        };
        refused_or_done(work.await.map(|_| ()), Operation::Create)
    }

    /// Closes the target's activation after its running turn and removes its state.
    async fn serve_delete(
        self: &Arc<Self>,
        target: Target<'_>,
        onward: Onward,
    ) -> Result<Served<'static, ()>, CallError> {
        let (chain, deadline) = (onward.chain, onward.deadline);
        let deleted = async move {
            self.table_of(&target)?;
            let entry = self.entry(target.type_name)?;
            // A persistent object is deleted through an activation, so no concurrent
            // activation can load its record while the record is being removed.
            let persistent = self.store.is_some() && entry.persistent();
            let (type_name, id) = (target.type_name, target.id);
            let work = self.delete_here(target, persistent, chain, deadline);
            with_deadline(work, deadline, || format!("delete {type_name}/{id}")).await
        };
        refused_or_done(deleted.await, Operation::Delete)
    }

    async fn delete_here(
        self: &Arc<Self>,
        target: Target<'_>,
        persistent: bool,
        chain: ChainId,
        deadline: Instant,
    ) -> Result<(), CallError> {
        let Target { type_name, id, .. } = target;
        loop {
            let activation = match self.directory.get(target.shard(), id) {
                Some(activation) if activation.type_name() != type_name => {
                    return Err(type_mismatch(id, activation.type_name(), type_name));
                }
                Some(activation) => activation,
                None if persistent => self.activation(target, chain, deadline).await?,
                None => return Ok(()),
            };
            match turn::acquire(&activation, MethodKind::Write, chain).await {
                Ok(permit) => {
                    Detached::new(
                        activation.close(permit, CloseReason::Delete),
                        &self.lifecycle.tasks,
                    )
                    .await?;
                    if self.auto_loaded.contains(id) {
                        self.auto_load_wake.notify_one();
                    }
                    return Ok(());
                }
                Err(AcquireError::Retry) => continue,
                Err(AcquireError::Failed(err)) => return Err(err),
            }
        }
    }
}

fn not_here<'a, T>(
    why: CallError,
    operation: Operation<'a>,
    client: Option<Arc<ClientIdentity>>,
) -> Served<'a, T> {
    Served::NotHere(Box::new(NotHere {
        why: Some(why),
        operation,
        client,
    }))
}

/// What a create or delete came to: done, refused as not served (handed back), or failed.
fn refused_or_done(
    done: Result<(), CallError>,
    operation: Operation<'static>,
) -> Result<Served<'static, ()>, CallError> {
    match done {
        Ok(()) => Ok(Served::Done(())),
        Err(why) if why.is_not_served() => Ok(not_here(why, operation, None)),
        Err(err) => Err(err),
    }
}

/// Runs `work` until it finishes or `deadline` passes. The timer is armed only if `work` does not
/// finish on its first poll, so an uncontended call pays nothing for its timeout.
async fn with_deadline<T, F, D>(work: F, deadline: Instant, describe: D) -> Result<T, CallError>
where
    F: Future<Output = Result<T, CallError>>,
    D: FnOnce() -> String,
{
    let mut work = std::pin::pin!(work);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut describe = Some(describe);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let what = describe.take().map_or_else(String::new, |d| d());
                Poll::Ready(Err(CallError::deadline_exceeded(what)))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
