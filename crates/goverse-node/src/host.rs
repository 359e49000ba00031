//! What an activation sees of the node that hosts it.
//!
//! Activations, their contexts and the type registry reach the node only through [`Host`]:
//! the store link, write fences, detaching themselves, pushes, and calls to other objects. The
//! node implements it; nothing below the node names the node.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;
use goverse_core::{CallError, ChainId, ClientIdentity, ObjectId, Payload, ShardId};
use goverse_persistence::Fence;

use crate::MethodKind;
use crate::push::PushHub;
use crate::store::StoreLink;
use goverse_core::ReliableOutcome;

/// The chain, deadline and client a call runs with.
#[derive(Debug)]
pub(crate) struct CallScope {
    pub(crate) chain: ChainId,
    pub(crate) deadline: Instant,
    pub(crate) client: Option<Arc<ClientIdentity>>,
    /// Whether a call for an object this node does not serve is sent on to the node that does
    /// (calls made here), or refused as not served (calls a peer routed here: the peer's router
    /// holds and resends them by its map).
    pub(crate) forward: bool,
}

/// The way a call names its method.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MethodRef<'a> {
    /// By wire name (untyped and wire calls).
    Name(&'a str),
    /// By index, with its kind (typed stubs, resolved at compile time).
    Index(usize, MethodKind),
}

/// The node as its activations see it.
pub(crate) trait Host: Send + Sync + fmt::Debug + 'static {
    /// The node's default call timeout.
    fn call_timeout(&self) -> Duration;
    /// The object store, when the node has one.
    fn store(&self) -> Option<&StoreLink>;
    /// The fence for a write of an object on `shard`, refusing when the shard may not be
    /// written by this node now.
    fn fence(&self, shard: ShardId) -> Result<Fence, CallError>;
    /// Takes the activation `serial` of `id` out of its shard's table, if it is still the entry
    /// there.
    fn detach(&self, shard: ShardId, id: &ObjectId, serial: u64);
    /// Counts states committed outside the periodic and shutdown saves.
    fn count_saves(&self, n: u64);
    /// Runs `task` on the node's task tracker (it stops with the node).
    fn spawn(&self, task: BoxFuture<'static, ()>);
    /// Routes pushes to the gates of clients.
    fn push(&self) -> &PushHub;
    /// Calls an object on behalf of a running turn.
    fn call_object<'a>(
        self: Arc<Self>,
        type_name: &'a str,
        id: &'a ObjectId,
        method: MethodRef<'a>,
        request: Payload,
        scope: CallScope,
    ) -> BoxFuture<'a, Result<Payload, CallError>>;
    /// Makes a reliable call on behalf of a running turn.
    fn call_object_reliable<'a>(
        self: Arc<Self>,
        type_name: &'a str,
        id: &'a ObjectId,
        method: MethodRef<'a>,
        call_id: &'a str,
        request: Payload,
        scope: CallScope,
    ) -> BoxFuture<'a, Result<ReliableOutcome, CallError>>;
}

/// The deadline for a call: the caller's own, or now plus the timeout (the node's default when
/// none is given), whichever comes first.
pub(crate) fn deadline_for(
    default_timeout: Duration,
    inherited: Option<Instant>,
    timeout: Option<Duration>,
) -> Instant {
    let own = Instant::now() + timeout.unwrap_or(default_timeout);
    match inherited {
        Some(inherited) if inherited < own => inherited,
        _ => own,
    }
}
