use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use goverse_core::{CallError, ChainId, ClientIdentity, Message, ObjectId};
use tokio_util::sync::CancellationToken;

use crate::activation::{ActivationDyn, CloseReason};
use crate::host::Host;
use crate::store::{Change, SaveJob};
use crate::{MethodKind, turn};

/// What a method sees of the runtime during its turn: who it is, the call chain it runs on, the
/// deadline, timers, and (through [`Caller`](crate::Caller)) calls to other objects on the same chain.
pub struct ObjectContext {
    activation: Arc<dyn ActivationDyn>,
    /// The kind of the running turn.
    kind: MethodKind,
    chain: ChainId,
    deadline: Instant,
    client: Option<Arc<ClientIdentity>>,
}

impl ObjectContext {
    pub(crate) fn new(
        activation: Arc<dyn ActivationDyn>,
        kind: MethodKind,
        chain: ChainId,
        deadline: Instant,
        client: Option<Arc<ClientIdentity>>,
    ) -> Self {
        Self {
            activation,
            kind,
            chain,
            deadline,
            client,
        }
    }

    /// This object's ID.
    pub fn id(&self) -> &ObjectId {
        self.activation.id()
    }

    /// This object's type name.
    pub fn type_name(&self) -> &'static str {
        self.activation.type_name()
    }

    /// The call chain this turn runs on. Calls made through this context carry it.
    pub fn chain(&self) -> ChainId {
        self.chain
    }

    /// When the call that started this turn stops waiting, on tokio's clock (so tests with
    /// paused time see deadlines pass as the clock is advanced). Calls made through this context
    /// inherit it (or a shorter timeout of their own).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The client this call chain acts for, when it started at a gate: the identity the gate
    /// authenticated and bound to the client's connection. `None` for calls started by code on a
    /// node (and for `on_activate`, `on_deactivate` and timer turns). Calls made through this
    /// context carry it on.
    pub fn client(&self) -> Option<&ClientIdentity> {
        self.client.as_deref()
    }

    /// Pushes `message` to the client `client_id` (`gateAddr/uniqueId`) through its gate, to be
    /// delivered on the client's Register or SSE stream. Delivery is best effort: an unknown
    /// client, or one whose buffer is full, loses the message and the gate counts and logs it.
    /// Fails at once when no gate of that address is connected to this node.
    pub fn push(&self, client_id: &str, message: impl Message) -> Result<(), CallError> {
        self.activation.host().push().to_client(client_id, message)
    }

    /// Pushes `message` to each of `client_ids` (one copy per gate involved), with the delivery
    /// terms of [`ObjectContext::push`]. Returns the ids it could not route, each with the
    /// reason: a malformed id (`InvalidArgument`), or no connected gate of that address
    /// (`NotFound`: the gate left or restarted, so its clients are gone). Everyone else was sent
    /// the message; an empty result means every id was routed.
    pub fn push_many<'a>(
        &self,
        client_ids: impl IntoIterator<Item = &'a str>,
        message: impl Message,
    ) -> Vec<(String, CallError)> {
        self.activation
            .host()
            .push()
            .to_clients(client_ids, message)
    }

    /// Pushes `message` to every client of every gate connected to this node; returns how many
    /// gates it was sent to.
    pub fn broadcast(&self, message: impl Message) -> usize {
        self.activation.host().push().broadcast(message)
    }

    /// Commits `state` (the object's current state: pass `self` from inside a method) to the
    /// store now, and returns once it is committed. For types that choose their own moment:
    /// after it returns, the change survives a crash even with [`Durability::Periodic`].
    ///
    /// A no-op when the node has no store. Fails when `state` is not this activation's type,
    /// when the type is not persistent, and when the commit fails (the state stays in memory and
    /// is saved later as usual).
    ///
    /// [`Durability::Periodic`]: crate::Durability::Periodic
    pub async fn save<T: crate::Dispatch>(&self, state: &T) -> Result<(), CallError> {
        if T::TYPE_NAME != self.type_name() {
            return Err(CallError::internal(format!(
                "ctx.save got a {} but this turn belongs to {}/{}",
                T::TYPE_NAME,
                self.type_name(),
                self.id()
            )));
        }
        if !T::PERSISTENT {
            return Err(CallError::internal(format!(
                "ctx.save on {}/{}: the type is not persistent",
                T::TYPE_NAME,
                self.id()
            )));
        }
        let host = self.activation.host();
        let Some(store) = host.store() else {
            return Ok(());
        };
        let what = format!("state of {}/{}", T::TYPE_NAME, self.id());
        let data = state.snapshot().map_err(|err| {
            CallError::internal(format!("cannot snapshot {what}: {}", err.message()))
        })?;
        let job = SaveJob {
            id: self.id().clone(),
            object_type: T::TYPE_NAME,
            change: Change::Save(data),
            fence: host.fence(self.activation.shard())?,
            reliable: None,
        };
        store
            .save(job)
            .await
            .map_err(|failure| failure.into_call_error(&what))?;
        host.count_saves(1);
        Ok(())
    }

    /// A caller for calls that start a new chain from this turn: they are not detected as
    /// re-entrant, do not inherit this deadline, and act for no client.
    pub fn new_chain(&self) -> NewChain<'_> {
        NewChain { context: self }
    }

    pub(crate) fn host(&self) -> &Arc<dyn Host> {
        self.activation.host()
    }

    pub(crate) fn client_arc(&self) -> Option<&Arc<ClientIdentity>> {
        self.client.as_ref()
    }

    /// Calls [`Object::on_timer`](crate::Object::on_timer) with `name` every `period`, as a
    /// write turn, until cancelled or the object deactivates. The firings keep to a fixed
    /// schedule (the turns' own time does not make the timer drift); one that comes due while
    /// the previous turn is still running or queued is skipped. Setting a timer with a name that is
    /// already set replaces it. Timer turns do not count as activity for idle deactivation.
    pub fn set_timer(&self, name: &str, period: Duration) {
        self.start_timer(name, period, true);
    }

    /// Calls [`Object::on_timer`](crate::Object::on_timer) with `name` once, after `delay`.
    pub fn set_timeout(&self, name: &str, delay: Duration) {
        self.start_timer(name, delay, false);
    }

    /// Cancels the timer `name`; returns whether there was one.
    pub fn cancel_timer(&self, name: &str) -> bool {
        let mut timers = self.activation.timers().lock();
        let Some(i) = timers.iter().position(|(n, _)| &**n == name) else {
            return false;
        };
        let (_, token) = timers.swap_remove(i);
        token.cancel();
        true
    }

    /// Deactivates this object when the running turn ends, as an idle deactivation would:
    /// [`Object::on_deactivate`](crate::Object::on_deactivate) runs, a persistent object's
    /// changed state is saved, the activation goes, and the next call activates it afresh. From
    /// a write turn (a `&mut self` method, a timer) it happens before any other turn of the
    /// object; from a read turn, at the next write turn's place in the queue.
    pub fn deactivate(&self) {
        if self.kind == MethodKind::Write {
            self.activation.ask_close(CloseReason::Idle);
            return;
        }
        let activation = self.activation.clone();
        self.activation.host().spawn(Box::pin(async move {
            // The object may be gone by then (closed, deleted): nothing to do.
            if let Ok(permit) =
                turn::acquire(&activation, MethodKind::Write, ChainId::new_root()).await
                && let Err(err) = activation.close(permit, CloseReason::Idle).await
            {
                tracing::warn!(object = %activation.id(), error = %err,
                    "the deactivation the object asked for failed; it stays active");
            }
        }));
    }

    /// Deletes this object when the running turn ends, before any other turn of it runs:
    /// [`Object::on_deactivate`](crate::Object::on_deactivate) runs, the activation goes and
    /// its saved state is removed, as [`Node::delete_object`](crate::Node::delete_object) does;
    /// the next call makes a fresh object. For an object whose whole life is over (an expired
    /// cache entry, a finished match).
    ///
    /// Fails from a read turn (a `&self` method): other reads may be running beside it, and a
    /// write queued behind them would be deleted unseen.
    pub fn delete_self(&self) -> Result<(), CallError> {
        if self.kind != MethodKind::Write {
            return Err(CallError::invalid_argument(format!(
                "{}/{} asked to delete itself from a read turn: call delete_self from a \
                 `&mut self` method or a timer",
                self.type_name(),
                self.id()
            )));
        }
        self.activation.ask_close(CloseReason::Delete);
        Ok(())
    }

    fn start_timer(&self, name: &str, period: Duration, repeat: bool) {
        let name: Arc<str> = name.into();
        let token = CancellationToken::new();
        {
            let mut timers = self.activation.timers().lock();
            if let Some(i) = timers.iter().position(|(n, _)| *n == name) {
                timers.swap_remove(i).1.cancel();
            }
            timers.push((name.clone(), token.clone()));
        }
        let activation = self.activation.clone();
        let period = period.max(Duration::from_millis(1));
        self.activation.host().spawn(Box::pin(async move {
            // A fixed schedule from now: a periodic timer does not drift by the time its turns
            // take, and a firing that comes due while the previous turn still runs is skipped,
            // not bunched up after it.
            let mut schedule = tokio::time::interval_at(Instant::now() + period, period);
            schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = schedule.tick() => {}
                }
                let permit = tokio::select! {
                    () = token.cancelled() => return,
                    permit = turn::acquire(&activation, MethodKind::Write, ChainId::new_root()) => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                if token.is_cancelled() {
                    return;
                }
                if !repeat {
                    // A one-shot timer forgets itself, unless it was replaced meanwhile (replacing
                    // cancels the old token, so an uncancelled token means the entry is ours).
                    let mut timers = activation.timers().lock();
                    if !token.is_cancelled()
                        && let Some(i) = timers.iter().position(|(n, _)| *n == name)
                    {
                        timers.swap_remove(i);
                    }
                }
                activation.fire_timer(permit, name.clone()).await;
                if !repeat {
                    return;
                }
            }
        }));
    }
}

/// Calls from a turn on new chains; see [`ObjectContext::new_chain`].
#[derive(Debug)]
pub struct NewChain<'a> {
    pub(crate) context: &'a ObjectContext,
}

impl fmt::Debug for ObjectContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectContext")
            .field("type", &self.type_name())
            .field("id", self.id())
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

/// Per-call options for the untyped call API.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Overrides the node's default timeout for this call.
    pub timeout: Option<Duration>,
    /// Runs the call on an existing chain (calls arriving from elsewhere carry theirs).
    pub chain: Option<ChainId>,
    /// The client the call acts for (set by the node service for calls arriving from a gate);
    /// the object sees it as [`ObjectContext::client`].
    pub client: Option<Arc<ClientIdentity>>,
}
