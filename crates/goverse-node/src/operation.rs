//! What the call path and its fallback pass between them: an operation on one object, the
//! object as a call located it, and what became of the operation on this node.

use std::sync::Arc;

use goverse_core::{CallError, ClientIdentity, ObjectId, Payload, Route, ShardId};

use tokio::time::Instant;

use goverse_core::ChainId;

use crate::host::{CallScope, MethodRef};

/// One operation on one object, with what it carries.
pub(crate) enum Operation<'a> {
    /// A method call.
    Call(MethodRef<'a>, Payload),
    /// A reliable call under a call id.
    Reliable(MethodRef<'a>, &'a str, Payload),
    /// Activate the object if it is not active.
    Create,
    /// Close the object and remove its state.
    Delete,
}

/// What an operation on this node came to.
pub(crate) enum Served<'a, T> {
    /// Done here (whatever its outcome).
    Done(T),
    /// Refused as not served here, before anything ran: the operation is handed back to go to
    /// the node that serves the object. Boxed: the common outcome stays small.
    NotHere(Box<NotHere<'a>>),
}

/// An operation refused as not served here, handed back.
pub(crate) struct NotHere<'a> {
    /// Why; `None` when the directory's hint said the shard is served elsewhere (nothing was
    /// looked up, so there is no refusal to report unless the call cannot go on).
    pub(crate) why: Option<CallError>,
    pub(crate) operation: Operation<'a>,
    /// The client the operation acts for.
    pub(crate) client: Option<Arc<ClientIdentity>>,
}

/// The object an operation is for, located once per call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) type_name: &'a str,
    pub(crate) id: &'a ObjectId,
    /// The ID's route: its shard, or the node it is pinned to.
    pub(crate) route: Route<'a>,
}

impl Target<'_> {
    pub(crate) fn shard(&self) -> ShardId {
        self.route.shard()
    }
}

/// What an operation refused here needs to go on: its chain, its deadline, and whether it may
/// go on at all (its client travels with the operation handed back).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Onward {
    pub(crate) chain: ChainId,
    pub(crate) deadline: Instant,
    /// [`CallScope::forward`].
    pub(crate) forward: bool,
}

impl Onward {
    pub(crate) fn of(scope: &CallScope) -> Self {
        Self {
            chain: scope.chain,
            deadline: scope.deadline,
            forward: scope.forward,
        }
    }
}
