//! What a node offers its peers ([`Handler`]), and one request on its way through it: what
//! arrived, and where its outcome goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use goverse_proto::node::DescribeResponse;
use tokio::sync::mpsc;

use crate::request::{Outbound, Outcome, PeerRefused, PeerSink, Request};
use crate::wire::{Received, response_of};

/// What a node offers the peers that link to it. The transport hands it every request that
/// arrives, and the push side of every peer stream that opens.
pub trait Handler: Send + Sync + 'static {
    /// Runs one request.
    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Outcome>;

    /// Runs one request that arrived from a peer and replies: the whole of its work as one
    /// future, which the transport polls once where the request arrived and spawns only if it
    /// has to wait (a request that completes at once costs no task). The default runs
    /// [`Handler::handle`]'s boxed future inside it; a handler overrides it to make one
    /// allocation per request instead of two.
    fn serve(self: Arc<Self>, mut incoming: Incoming) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let outcome = self.handle(incoming.request()).await;
            incoming.reply(outcome);
        })
    }
    /// The node's types and the descriptors of their messages.
    fn describe(&self) -> DescribeResponse;
    /// A stream from peer `peer` opened: pushes for its clients go to `sink`. Refused (the
    /// reason says why) while another live stream holds the same peer address: a second stream
    /// never silently takes over a connected peer's pushes.
    fn peer_opened(&self, peer: Arc<str>, sink: PeerSink) -> Result<(), PeerRefused>;
    /// The stream of `peer` with sink serial `serial` closed.
    fn peer_closed(&self, peer: &str, serial: u64);

    /// Upstream's `goverse.Goverse/Status`: the node's address, its objects, its uptime. The
    /// default gives the address alone.
    fn status(&self) -> goverse_proto::upstream::StatusResponse {
        goverse_proto::upstream::StatusResponse {
            advertise_addr: self.describe().node_address,
            ..Default::default()
        }
    }

    /// Upstream's `goverse.Goverse/ListObjects`: every object active on the node. The default
    /// lists none.
    fn list_objects(&self) -> goverse_proto::upstream::ListObjectsResponse {
        goverse_proto::upstream::ListObjectsResponse::default()
    }
}

/// A request as it arrived from a peer, and where its outcome goes ([`Handler::serve`]).
pub struct Incoming {
    received: Received,
    reply: Reply,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.reply.id)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    pub(crate) fn new(received: Received, reply: Reply) -> Self {
        Self { received, reply }
    }

    /// The request, borrowing what arrived (its request message is taken: call once).
    pub fn request(&mut self) -> Request<'_> {
        self.received.request()
    }

    /// Sends the outcome back to the peer (dropped if the peer is gone).
    pub fn reply(self, outcome: Outcome) {
        self.reply.send(outcome);
    }
}

/// Where one request's outcome goes: the peer stream's response queue, under the request's id.
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::UnboundedSender<Outbound>,
    pub(crate) in_flight: Arc<InFlight>,
}

impl Reply {
    /// Queues the response and counts the request as finished.
    pub(crate) fn send(self, outcome: Outcome) {
        // The peer may be gone; its responses are then dropped.
        let _ = self
            .tx
            .send(Outbound::Response(response_of(self.id, outcome)));
        self.in_flight.finished();
    }
}

/// The requests of one peer stream running now; the stream's reader waits for room when the
/// limit is reached.
pub(crate) struct InFlight {
    running: AtomicUsize,
    room: tokio::sync::Notify,
    limit: usize,
}

impl InFlight {
    /// Room for `limit` requests at once.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            running: AtomicUsize::new(0),
            room: tokio::sync::Notify::new(),
            limit,
        }
    }

    /// `n` requests are about to start.
    pub(crate) fn starting(&self, n: usize) {
        self.running.fetch_add(n, Ordering::AcqRel);
    }

    /// How many more may start now.
    pub(crate) fn free(&self) -> usize {
        self.limit
            .saturating_sub(self.running.load(Ordering::Acquire))
    }

    /// One request has replied.
    pub(crate) fn finished(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == self.limit {
            self.room.notify_one();
        }
    }

    /// Resolves once fewer than the limit are running.
    pub(crate) async fn room(&self) {
        while self.running.load(Ordering::Acquire) >= self.limit {
            self.room.notified().await;
        }
    }
}
