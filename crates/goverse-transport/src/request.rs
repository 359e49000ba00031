//! One request as both halves of the protocol see it, what it resolves to, and what flows back
//! on a peer stream (responses, pushes).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use goverse_core::{CallError, ChainId, ClientIdentity};
use goverse_proto::node::{Push, Response, ResponseBatch, response};
use tokio::sync::mpsc;

/// What a request resolves to: a value, a create or delete done, a reliable outcome; or the
/// error.
pub type Outcome = Result<response::Result, CallError>;

/// One request for a node's objects.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The object's type name.
    pub object_type: &'a str,
    /// The object's ID, unparsed.
    pub object_id: &'a str,
    /// What is asked.
    pub op: Op<'a>,
    /// The call chain it runs on; `None` starts a new one.
    pub chain: Option<ChainId>,
    /// How long the caller waits; `None` means the node's default.
    pub timeout: Option<Duration>,
    /// The client the request acts for, as the gate authenticated it.
    pub caller: Option<Arc<ClientIdentity>>,
    /// A client's request, sent by a gate: the node checks it against the access and lifecycle
    /// rules as the gate did. `false` for requests of nodes and objects (and for a request a
    /// node forwards after checking it).
    pub from_client: bool,
}

/// What a [`Request`] asks for.
#[derive(Debug, Clone)]
pub enum Op<'a> {
    /// A method call; with a call id, a reliable (exactly-once) one.
    Call {
        /// The method's wire name.
        method: &'a str,
        /// The request message; `None` means `google.protobuf.Empty`.
        request: Option<prost_types::Any>,
        /// The caller's call id of a reliable call.
        reliable_call_id: Option<&'a str>,
    },
    /// Activate the object.
    Create,
    /// Delete the object.
    Delete,
}

/// Pushes a peer stream may have queued before further pushes to it are refused.
pub const PEER_PUSH_BACKLOG: usize = 65_536;

/// Why a node refused a peer's stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefused {
    /// Another live stream holds the peer's address.
    #[error("peer {0} already has a live stream to this node; a second one is refused")]
    AlreadyConnected(Arc<str>),
    /// The node is stopping or stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushRefused {
    /// The peer's stream is gone.
    #[error("the peer's stream is gone")]
    Closed,
    /// The peer is not reading: this many pushes wait already.
    #[error("the peer is not reading ({0} pushes queued)")]
    Backlog(usize),
}

/// The push side of one peer stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PeerSink {
    serial: u64,
    tx: mpsc::UnboundedSender<Outbound>,
    pending_pushes: Arc<AtomicUsize>,
}

impl PeerSink {
    pub(crate) fn new(
        serial: u64,
        tx: mpsc::UnboundedSender<Outbound>,
    ) -> (Self, Arc<AtomicUsize>) {
        let pending_pushes = Arc::new(AtomicUsize::new(0));
        let sink = Self {
            serial,
            tx,
            pending_pushes: pending_pushes.clone(),
        };
        (sink, pending_pushes)
    }

    /// Tells this stream apart from earlier and later streams of the same peer.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Whether the stream is still there to take pushes.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Queues `push` for the peer, unless its stream is gone or too far behind.
    pub fn push(&self, push: Push) -> Result<(), PushRefused> {
        let queued = self.pending_pushes.fetch_add(1, Ordering::Relaxed);
        if queued >= PEER_PUSH_BACKLOG {
            self.pending_pushes.fetch_sub(1, Ordering::Relaxed);
            return Err(PushRefused::Backlog(queued));
        }
        if self.tx.send(Outbound::Push(push)).is_err() {
            self.pending_pushes.fetch_sub(1, Ordering::Relaxed);
            return Err(PushRefused::Closed);
        }
        Ok(())
    }
}

/// What a node writes to one peer stream.
#[derive(Debug)]
pub(crate) enum Outbound {
    Response(Response),
    Push(Push),
}

impl Outbound {
    /// Adds this item to `batch`.
    pub(crate) fn add_to(self, batch: &mut ResponseBatch, pending_pushes: &AtomicUsize) {
        match self {
            Self::Response(r) => batch.responses.push(r),
            Self::Push(p) => {
                pending_pushes.fetch_sub(1, Ordering::Relaxed);
                batch.pushes.push(p);
            }
        }
    }
}
