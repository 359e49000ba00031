//! Which shards this node serves, in what state, and the activations of each.
//!
//! Every shard has one [`ShardState`], changed only through [`ShardState::step`], a pure
//! transition function tested exhaustively below. The [`ShardDirectory`] keeps a shard's state
//! and its activation table under one lock, so an activation can only be added while its shard
//! admits new work, and a write can only be fenced with the epoch the shard is served under.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use goverse_core::{CallError, NodeAddr, ObjectId, ShardId};
use goverse_persistence::Fence;
use parking_lot::{RwLock, RwLockReadGuard};

use crate::activation::ActivationDyn;

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What this node does with one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardState {
    /// Not served here.
    Unowned,
    /// Being claimed: the cluster store says this node is its owner, the object store does not
    /// have the claim yet. Nothing runs.
    Incoming,
    /// Served under `epoch`: new turns are admitted, writes carry the epoch.
    Owned {
        /// The ownership epoch every write for the shard carries.
        epoch: u64,
    },
    /// Being handed over (shutdown, a planned move): no new activations, running turns finish
    /// and their states are saved under `epoch`, then the shard is released.
    Draining {
        /// The epoch the last writes carry.
        epoch: u64,
    },
    /// Service stopped because this node may have lost the shard (its lease could not be
    /// renewed): nothing runs and nothing is written until it is claimed again.
    Fenced,
}

/// What happens to a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardEvent {
    /// The cluster store recorded this node as owner; the object-store claim is next.
    ClaimStarted,
    /// Both stores have the claim, under `epoch`.
    Claimed {
        /// The epoch the object store settled on.
        epoch: u64,
    },
    /// The lease may be lost: stop serving now.
    Fence,
    /// A hand-over starts.
    Drain,
    /// The shard is given up (after a drain, or a claim that failed).
    Release,
}

/// An event a shard's state cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a shard that is {state:?} cannot take {event:?}")]
pub(crate) struct NoTransition {
    state: ShardState,
    event: ShardEvent,
}

impl ShardState {
    /// The state after `event`, or why `event` cannot happen now.
    pub(crate) fn step(self, event: ShardEvent) -> Result<Self, NoTransition> {
        use ShardEvent as E;
        use ShardState as S;
        match (self, event) {
            (S::Unowned | S::Fenced, E::ClaimStarted) => Ok(S::Incoming),
            // A shard this node already serves is claimed again (with a higher epoch) when the
            // node rejoins; that goes through Fenced first, never straight from Owned.
            (S::Incoming, E::Claimed { epoch }) => Ok(S::Owned { epoch }),
            (S::Owned { .. } | S::Draining { .. } | S::Incoming, E::Fence) => Ok(S::Fenced),
            (S::Fenced | S::Unowned, E::Fence) => Ok(self),
            (S::Owned { epoch }, E::Drain) => Ok(S::Draining { epoch }),
            (S::Draining { .. }, E::Drain) => Ok(self),
            (S::Draining { .. } | S::Incoming | S::Fenced | S::Unowned, E::Release) => {
                Ok(S::Unowned)
            }
            (state, event) => Err(NoTransition { state, event }),
        }
    }

    /// Whether new turns may start (and new activations be made).
    pub(crate) fn admits_turns(self) -> bool {
        matches!(self, Self::Owned { .. })
    }

    /// The epoch writes carry now, if writes are allowed.
    pub(crate) fn write_epoch(self) -> Option<u64> {
        match self {
            Self::Owned { epoch } | Self::Draining { epoch } => Some(epoch),
            _ => None,
        }
    }
}

/// One shard's state and activations.
#[derive(Debug)]
pub(crate) struct ShardSlot {
    state: ShardState,
    objects: FastMap<ObjectId, Arc<dyn ActivationDyn>>,
    /// The cluster-store epoch of this node's last claim of the shard (0: never claimed).
    claim_epoch: u64,
}

/// What the directory knows of an object.
pub(crate) enum Lookup {
    /// Its shard admits no turns here; the error says why.
    NotServed(CallError),
    /// It is active.
    Active(Arc<dyn ActivationDyn>),
    /// Its shard is served and it is not active.
    Inactive,
}

/// Shard states and activation tables of one node.
#[derive(Debug)]
pub(crate) struct ShardDirectory {
    address: NodeAddr,
    shards: Box<[RwLock<ShardSlot>]>,
    /// Whether each table admits turns, as last set under its lock: a hint that lets a call
    /// for a shard served elsewhere go there without taking the lock or building a refusal.
    admitting: Box<[AtomicBool]>,
    /// Notified when a shard starts being served (the auto-loader waits on it).
    served: tokio::sync::Notify,
}

impl ShardDirectory {
    /// A directory of `count` shards, none served, and the node's own slot (for objects
    /// pinned to this node, `host:port/name`: they never move, and are served while the node
    /// is a member).
    pub(crate) fn new(address: NodeAddr, count: u32) -> Self {
        let shards = (0..=count)
            .map(|_| {
                RwLock::new(ShardSlot {
                    state: ShardState::Unowned,
                    objects: FastMap::default(),
                    claim_epoch: 0,
                })
            })
            .collect();
        let admitting = (0..=count).map(|_| AtomicBool::new(false)).collect();
        Self {
            address,
            shards,
            admitting,
            served: tokio::sync::Notify::new(),
        }
    }

    /// Shards in the cluster.
    pub(crate) fn count(&self) -> u32 {
        self.shards.len() as u32 - 1
    }

    /// The slot of objects pinned to this node: not a shard of the map, never handed over.
    pub(crate) fn node_slot(&self) -> ShardId {
        ShardId(self.count())
    }

    fn slot(&self, shard: ShardId) -> &RwLock<ShardSlot> {
        &self.shards[shard.0 as usize]
    }

    /// The table `id` lives in: its shard's, or the node's own for a node-pinned ID (whose
    /// shard only fences its writes).
    fn table(&self, shard: ShardId, id: &ObjectId) -> (ShardId, &RwLock<ShardSlot>) {
        if matches!(id.kind(), Ok(goverse_core::ObjectIdKind::FixedNode(_))) {
            let own = self.node_slot();
            (own, self.slot(own))
        } else {
            (shard, self.slot(shard))
        }
    }

    /// A shard's state now.
    pub(crate) fn state(&self, shard: ShardId) -> ShardState {
        self.slot(shard).read().state
    }

    /// Applies `event` to `shard`. An impossible transition is a bug in the caller: it is
    /// logged and the state is left as it was.
    pub(crate) fn apply(&self, shard: ShardId, event: ShardEvent) -> ShardState {
        let mut slot = self.slot(shard).write();
        match slot.state.step(event) {
            Ok(next) => self.set_state(shard, &mut slot, next),
            Err(err) => tracing::error!(%shard, cause = %err, "shard state unchanged"),
        }
        slot.state
    }

    /// Moves `slot` (of `shard`, locked by the caller) to `next`, keeping the hint in step.
    fn set_state(&self, shard: ShardId, slot: &mut ShardSlot, next: ShardState) {
        if next.admits_turns() && !slot.state.admits_turns() {
            self.served.notify_one();
        }
        slot.state = next;
        self.admitting[shard.0 as usize].store(next.admits_turns(), Ordering::Release);
    }

    /// Whether table `table` (a shard, or [`ShardDirectory::node_slot`]) admitted turns when
    /// last looked at: a hint, without the lock. A call may go elsewhere on it; what runs here
    /// is still checked under the lock.
    pub(crate) fn admits_hint(&self, table: ShardId) -> bool {
        self.admitting[table.0 as usize].load(Ordering::Acquire)
    }

    /// Resolves once a shard has started being served since the last time it resolved.
    pub(crate) async fn served_more(&self) {
        self.served.notified().await;
    }

    /// [`ShardDirectory::admits_hint`] of the table `id` lives in.
    pub(crate) fn admits(&self, shard: ShardId, id: &ObjectId) -> bool {
        self.admits_hint(self.table(shard, id).0)
    }

    /// The cluster store recorded this node's claim of `shard` under `epoch`. Activations left
    /// from an earlier claim stay only if that claim's epoch is the one just before (nobody
    /// else claimed the shard between: a lease that lapsed and came back); otherwise another
    /// node may have served their objects since, so they go and the next call loads what the
    /// store holds.
    pub(crate) fn claim_started(&self, shard: ShardId, epoch: u64) {
        let mut slot = self.slot(shard).write();
        if slot.claim_epoch + 1 != epoch && !slot.objects.is_empty() {
            tracing::warn!(%shard, activations = slot.objects.len(),
                "dropping activations from an earlier claim of the shard");
            slot.objects.clear();
        }
        slot.claim_epoch = epoch;
        match slot.state.step(ShardEvent::ClaimStarted) {
            Ok(next) => self.set_state(shard, &mut slot, next),
            Err(err) => tracing::error!(%shard, cause = %err, "shard state unchanged"),
        }
    }

    /// Stops serving `shard` because another node has it now: its activations are stale and
    /// go without being saved (the new owner holds the objects). Returns how many went.
    pub(crate) fn lose(&self, shard: ShardId) -> usize {
        let mut slot = self.slot(shard).write();
        if let Ok(next) = slot.state.step(ShardEvent::Fence) {
            self.set_state(shard, &mut slot, next);
        }
        let dropped = slot.objects.len();
        slot.objects.clear();
        dropped
    }

    /// Applies `event` to every shard in a state `filter` accepts.
    pub(crate) fn apply_all(&self, filter: impl Fn(ShardState) -> bool, event: ShardEvent) {
        for n in 0..=self.count() {
            let shard = ShardId(n);
            if filter(self.state(shard)) {
                self.apply(shard, event);
            }
        }
    }

    fn refusal(&self, shard: ShardId, state: ShardState) -> CallError {
        let why = match state {
            ShardState::Unowned => "is not served by",
            ShardState::Incoming => "is still being claimed by",
            ShardState::Owned { .. } => "is served by",
            ShardState::Draining { .. } => "is being handed over by",
            ShardState::Fenced => "is fenced (lease not renewed) on",
        };
        if shard == self.node_slot() {
            return CallError::not_served(format!(
                "objects pinned to node {} are not served now (the node is {state:?})",
                self.address
            ));
        }
        CallError::not_served(format!("shard {shard} {why} node {}", self.address))
    }

    fn lookup_in(&self, slot: &ShardSlot, shard: ShardId, id: &ObjectId) -> Lookup {
        if !slot.state.admits_turns() {
            return Lookup::NotServed(self.refusal(shard, slot.state));
        }
        match slot.objects.get(id) {
            Some(activation) => Lookup::Active(activation.clone()),
            None => Lookup::Inactive,
        }
    }

    /// What the directory knows of `id` on `shard`.
    pub(crate) fn lookup(&self, shard: ShardId, id: &ObjectId) -> Lookup {
        let (shard, table) = self.table(shard, id);
        self.lookup_in(&table.read(), shard, id)
    }

    /// The live activation of `id`, whatever its shard's state (delete and idle sweeps reach
    /// activations of a shard being drained).
    pub(crate) fn get(&self, shard: ShardId, id: &ObjectId) -> Option<Arc<dyn ActivationDyn>> {
        self.table(shard, id).1.read().objects.get(id).cloned()
    }

    /// The activation of `id`, made by `make` and added when there is none, atomically with
    /// the check that the shard admits turns. `Ok((activation, true))` when it was made now.
    pub(crate) fn get_or_insert(
        &self,
        shard: ShardId,
        id: &ObjectId,
        make: impl FnOnce() -> Arc<dyn ActivationDyn>,
    ) -> Result<(Arc<dyn ActivationDyn>, bool), CallError> {
        let (shard, table) = self.table(shard, id);
        let mut slot = table.write();
        match self.lookup_in(&slot, shard, id) {
            Lookup::NotServed(err) => Err(err),
            Lookup::Active(activation) => Ok((activation, false)),
            Lookup::Inactive => {
                let activation = make();
                slot.objects.insert(id.clone(), activation.clone());
                Ok((activation, true))
            }
        }
    }

    /// Removes activation `serial` of `id` if it is still the entry there; `true` if it was.
    pub(crate) fn remove(&self, shard: ShardId, id: &ObjectId, serial: u64) -> bool {
        let mut slot = self.table(shard, id).1.write();
        match slot.objects.get(id) {
            Some(current) if current.serial() == serial => {
                slot.objects.remove(id);
                true
            }
            _ => false,
        }
    }

    /// The fence for a write of an object on `shard`, refusing when the shard may not be
    /// written by this node now.
    pub(crate) fn fence(&self, shard: ShardId) -> Result<Fence, CallError> {
        let state = self.state(shard);
        match state.write_epoch() {
            Some(epoch) => Ok(Fence { shard, epoch }),
            None => Err(CallError::unavailable(format!(
                "{}; state not written",
                self.refusal(shard, state).message()
            ))),
        }
    }

    /// Whether `id` is active.
    pub(crate) fn is_active(&self, shard: ShardId, id: &ObjectId) -> bool {
        self.table(shard, id).1.read().objects.contains_key(id)
    }

    /// Every activation, of every shard.
    pub(crate) fn all_activations(&self) -> Vec<Arc<dyn ActivationDyn>> {
        let mut all = Vec::new();
        for slot in self.shards.iter() {
            all.extend(slot.read().objects.values().cloned());
        }
        all
    }

    /// Every activation of `shards`.
    pub(crate) fn activations_of(&self, shards: &[ShardId]) -> Vec<Arc<dyn ActivationDyn>> {
        let mut found = Vec::new();
        for shard in shards {
            found.extend(self.slot(*shard).read().objects.values().cloned());
        }
        found
    }

    /// Every activation `keep` accepts, shard by shard (the shard's lock held while `keep`
    /// runs: keep it short).
    pub(crate) fn activations_where(
        &self,
        keep: impl Fn(&Arc<dyn ActivationDyn>) -> bool,
    ) -> Vec<Arc<dyn ActivationDyn>> {
        let mut found = Vec::new();
        for slot in self.shards.iter() {
            let slot: RwLockReadGuard<'_, ShardSlot> = slot.read();
            found.extend(slot.objects.values().filter(|a| keep(a)).cloned());
        }
        found
    }

    /// Activations per (shard, type) now, counted shard by shard; the node's own slot (objects
    /// pinned to this node) is reported as shard `None`.
    pub(crate) fn objects_per_type(&self, mut each: impl FnMut(Option<u32>, &'static str, u64)) {
        let mut per_type: Vec<(&'static str, u64)> = Vec::new();
        for (n, slot) in self.shards.iter().enumerate() {
            per_type.clear();
            for activation in slot.read().objects.values() {
                let name = activation.type_name();
                match per_type.iter_mut().find(|(t, _)| *t == name) {
                    Some((_, count)) => *count += 1,
                    None => per_type.push((name, 1)),
                }
            }
            let shard = (n < self.count() as usize).then_some(n as u32);
            for (name, count) in &per_type {
                each(shard, name, *count);
            }
        }
    }

    /// (activations, shards served) now.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let (mut active, mut owned) = (0, 0);
        for (n, slot) in self.shards.iter().enumerate() {
            let slot = slot.read();
            active += slot.objects.len() as u64;
            if n < self.count() as usize {
                owned += u64::from(slot.state.write_epoch().is_some());
            }
        }
        (active, owned)
    }

    /// Serves the node's own slot (the node joined, or rejoined after its lease was lost).
    pub(crate) fn serve_node_slot(&self) {
        let own = self.node_slot();
        if matches!(self.state(own), ShardState::Unowned | ShardState::Fenced) {
            self.apply(own, ShardEvent::ClaimStarted);
            self.apply(own, ShardEvent::Claimed { epoch: 0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [ShardState; 5] = [
        ShardState::Unowned,
        ShardState::Incoming,
        ShardState::Owned { epoch: 3 },
        ShardState::Draining { epoch: 3 },
        ShardState::Fenced,
    ];
    const EVENTS: [ShardEvent; 5] = [
        ShardEvent::ClaimStarted,
        ShardEvent::Claimed { epoch: 4 },
        ShardEvent::Fence,
        ShardEvent::Drain,
        ShardEvent::Release,
    ];

    /// Every (state, event) pair, against the table of what is allowed.
    #[test]
    fn every_transition_is_the_one_intended() {
        use ShardEvent as E;
        use ShardState as S;
        for state in STATES {
            for event in EVENTS {
                let expected = match (state, event) {
                    (S::Unowned | S::Fenced, E::ClaimStarted) => Some(S::Incoming),
                    (S::Incoming, E::Claimed { epoch }) => Some(S::Owned { epoch }),
                    (_, E::Fence) if state == S::Unowned => Some(S::Unowned),
                    (_, E::Fence) => Some(S::Fenced),
                    (S::Owned { epoch } | S::Draining { epoch }, E::Drain) => {
                        Some(S::Draining { epoch })
                    }
                    (S::Owned { .. }, E::Release) => None,
                    (_, E::Release) => Some(S::Unowned),
                    _ => None,
                };
                assert_eq!(state.step(event).ok(), expected, "{state:?} on {event:?}");
            }
        }
    }

    /// Turns run only in Owned; writes happen only in Owned and Draining, so a fenced or
    /// released shard never writes, and a draining one never starts new work.
    #[test]
    fn only_owned_shards_run_and_only_owned_or_draining_shards_write() {
        for state in STATES {
            assert_eq!(
                state.admits_turns(),
                matches!(state, ShardState::Owned { .. })
            );
            assert_eq!(
                state.write_epoch().is_some(),
                matches!(
                    state,
                    ShardState::Owned { .. } | ShardState::Draining { .. }
                )
            );
        }
        // An owned shard cannot be given up without draining first.
        assert!(
            ShardState::Owned { epoch: 1 }
                .step(ShardEvent::Release)
                .is_err()
        );
    }

    #[test]
    fn the_directory_refuses_what_its_states_refuse() {
        let directory = ShardDirectory::new(NodeAddr::new("127.0.0.1:1"), 4);
        let shard = ShardId(2);
        let id = ObjectId::from("o");
        assert!(matches!(directory.lookup(shard, &id), Lookup::NotServed(_)));
        assert!(directory.fence(shard).is_err());
        directory.apply(shard, ShardEvent::ClaimStarted);
        assert!(
            directory.fence(shard).is_err(),
            "incoming shards do not write"
        );
        directory.apply(shard, ShardEvent::Claimed { epoch: 7 });
        assert_eq!(directory.fence(shard).unwrap().epoch, 7);
        assert!(matches!(directory.lookup(shard, &id), Lookup::Inactive));
        directory.apply(shard, ShardEvent::Drain);
        let err = match directory.lookup(shard, &id) {
            Lookup::NotServed(err) => err,
            _ => panic!("a draining shard admits no new turns"),
        };
        assert!(err.message().contains("handed over"), "{err}");
        assert_eq!(
            directory.fence(shard).unwrap().epoch,
            7,
            "drains still save"
        );
        directory.apply(shard, ShardEvent::Fence);
        let err = directory.fence(shard).unwrap_err();
        assert!(err.message().contains("fenced"), "{err}");
        assert_eq!(directory.counts(), (0, 0));
    }
}
