//! The server half: a node's [`Handler`] served to peers on a listener.
//!
//! A peer opens one long-lived `Open` stream and writes batches of id-tagged requests. Each
//! request is polled once as it is read and becomes a task of its own only if it has to wait
//! (for its turn, a load, a nested call), so it never holds up the requests behind it, and a
//! request that completes at once costs no task spawn and no cross-thread wake-up. The response
//! half drains everything queued when it is polled into one batch, so batches grow with load and
//! a lone response is written at once. Pushes for the peer's clients travel on the same half.
//!
//! A large batch is shared out: requests are dealt to lanes by a hash of their object ID, lane
//! 0 run by the reader itself and the others by one task each, so the batch's work spreads
//! over the worker threads. One object always maps to one lane and each lane starts its
//! requests in arrival order, so requests to one object still start in the order they came;
//! while any lane task has work, every batch is dealt out the same way, so a later small batch
//! cannot overtake an earlier large one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use goverse_core::CallError;
use goverse_proto::node::node_service_server::{NodeService, NodeServiceServer};
use goverse_proto::node::{
    self as proto, DescribeRequest, DescribeResponse, RequestBatch, ResponseBatch,
};
use goverse_proto::upstream::goverse_server::GoverseServer as UpstreamNodeServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Response, Status, Streaming};

use crate::handler::{InFlight, Incoming, Reply};
use crate::listen::{Acceptor, ConnectionLimits, Throttle, with_drain_deadline};
use crate::request::Outbound;
use crate::wire::Received;
use crate::{Handler, MAX_BATCH, MAX_MESSAGE_BYTES, PEER_ADDRESS_HEADER, PeerSink};

/// Why [`serve`] stopped.
#[derive(Debug, thiserror::Error)]
#[error("node service failed: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

/// Serves `handler` to peers on `listener` until `shutdown` completes; then ends every peer
/// stream (requests already received still get their responses) and returns.
pub async fn serve(
    handler: Arc<dyn Handler>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with_secret(handler, listener, None, shutdown).await
}

/// [`serve`], admitting only peers that send `secret` (the cluster's shared secret) in the
/// [`crate::PEER_SECRET_HEADER`] header; `None` admits every peer (loopback-only clusters).
/// A refused peer gets `Unauthenticated` and is logged with its address.
pub async fn serve_with_secret(
    handler: Arc<dyn Handler>,
    listener: TcpListener,
    secret: Option<Arc<str>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with_limits(
        handler,
        listener,
        secret,
        ConnectionLimits::default(),
        shutdown,
    )
    .await
}

/// Streams one peer may have open at once: a peer uses one `Open` stream (and a `Describe`
/// now and then), so a few are plenty; the cap keeps a stranger from opening thousands.
const MAX_STREAMS_PER_PEER: u32 = 16;
/// Largest header list a peer may send (the node protocol's headers are a few short values).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// [`serve_with_secret`] within `limits`: a cap on open connections, idle connections (a peer
/// that sent half a preface, or nothing) closed, accept errors backed off; per connection at
/// most 16 streams, a bounded header list and a bounded rate of stream
/// resets.
pub async fn serve_with_limits(
    handler: Arc<dyn Handler>,
    listener: TcpListener,
    secret: Option<Arc<str>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let incoming = Acceptor::new(listener, limits, "node service").into_incoming();
    serve_incoming(handler, incoming, secret, limits, shutdown).await
}

/// [`serve_with_limits`] over TLS: peers must present a certificate that `tls`'s client CA
/// signed and that names a cluster member (`goverse://node/ID` or `goverse://gate/ID`); a
/// peer naming its address in [`PEER_ADDRESS_HEADER`] must have that host in its certificate.
/// The secret, when there is one, is asked for as well.
pub async fn serve_tls(
    handler: Arc<dyn Handler>,
    listener: TcpListener,
    secret: Option<Arc<str>>,
    limits: ConnectionLimits,
    tls: Arc<goverse_tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let acceptor = Acceptor::new(listener, limits, "node service");
    let incoming = crate::tls::tls_incoming(acceptor, tls);
    serve_inner(handler, incoming, secret, true, limits, shutdown).await
}

/// Serves `handler` on every connection `incoming` yields (a guarded TCP listener, a
/// [`crate::MemoryNetwork`] listener, a TLS acceptor) until `shutdown` completes; then ends
/// every peer stream and waits up to `limits.drain_timeout` for the answers still due. Admits
/// only peers that send `secret` when there is one. Per connection: at most 16 streams, a
/// bounded header list and a bounded rate of stream resets; per stream at most
/// `limits.peer_requests_in_flight` requests running (the connection limits that concern
/// accepting, `max_connections` and the timeouts, are the acceptor's to apply).
pub async fn serve_incoming<S, IO>(
    handler: Arc<dyn Handler>,
    incoming: S,
    secret: Option<Arc<str>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: crate::Accepted,
{
    serve_inner(handler, incoming, secret, false, limits, shutdown).await
}

/// [`serve_incoming`]; with `members`, only peers whose TLS certificate names a cluster member.
async fn serve_inner<S, IO>(
    handler: Arc<dyn Handler>,
    incoming: S,
    secret: Option<Arc<str>>,
    members: bool,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: crate::Accepted,
{
    let drain_timeout = limits.drain_timeout;
    let stop = CancellationToken::new();
    let readers = TaskTracker::new();
    let admission = Arc::new(Admission {
        secret,
        members,
        refusals: Throttle::new(Duration::from_secs(10)),
    });
    let service_handler = handler.clone();
    let service = NodeServiceServer::new(NodeRpc {
        handler,
        admission: admission.clone(),
        stop: stop.clone(),
        readers: readers.clone(),
        serials: AtomicU64::new(0),
        in_flight_limit: limits.peer_requests_in_flight.max(1),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let upstream = UpstreamNodeServer::new(UpstreamNode {
        handler: service_handler.clone(),
        admission,
    });
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(MAX_STREAMS_PER_PEER)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(32))
        .http2_max_local_error_reset_streams(Some(256))
        .add_service(service)
        .add_service(upstream)
        .serve_with_incoming_shutdown(incoming, {
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        });
    // A connection that never finishes (a stalled peer) cannot hold the stop past the drain
    // deadline.
    let served = with_drain_deadline(served, stop, drain_timeout, "node service").await;
    readers.close();
    if tokio::time::timeout(drain_timeout, readers.wait())
        .await
        .is_err()
    {
        tracing::warn!("peer streams still answering after the drain deadline; leaving them");
    }
    served.transpose()?;
    Ok(())
}

struct NodeRpc {
    handler: Arc<dyn Handler>,
    admission: Arc<Admission>,
    stop: CancellationToken,
    readers: TaskTracker,
    serials: AtomicU64,
    /// Requests of one stream that may run at once.
    in_flight_limit: usize,
}

/// Who a node's services (its own and upstream's) admit, shared by both.
struct Admission {
    /// The cluster's secret, when peers must send it.
    secret: Option<Arc<str>>,
    /// Only peers whose TLS certificate names a cluster member.
    members: bool,
    /// Refused peers are logged once per interval, with how many more there were.
    refusals: Throttle,
}

impl Admission {
    /// Refuses a caller that is not a member (when `members`) or does not send the secret
    /// (when there is one), logging refusals at most once per interval.
    fn admit<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        let refusals = &self.refusals;
        if self.members {
            admit_member(request, refusals)?;
        }
        let Some(secret) = self.secret.as_deref() else {
            return Ok(());
        };
        let sent = request
            .metadata()
            .get(crate::PEER_SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(sent, secret.as_bytes()) {
            return Ok(());
        }
        let from = goverse_tls::remote_addr(request)
            .map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
        if let Some(more) = refusals.hit() {
            tracing::warn!(peer = %from, sent = !sent.is_empty(), refused_since_last = more,
            "refused a peer without the cluster secret");
        }
        Err(Status::unauthenticated(
            "this node admits only peers of its cluster: the peer secret is missing or wrong",
        ))
    }
}

/// Refuses a peer whose certificate does not name a cluster member, or names another host than
/// the address it claims in [`PEER_ADDRESS_HEADER`].
fn admit_member<T>(request: &tonic::Request<T>, refusals: &Throttle) -> Result<(), Status> {
    let from = goverse_tls::remote_addr(request)
        .map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
    let refuse = |why: String| {
        if let Some(more) = refusals.hit() {
            tracing::warn!(peer = %from, refused_since_last = more, "refused a peer: {why}");
        }
        Status::permission_denied(why)
    };
    let Some(cert) = goverse_tls::peer_certificate(request) else {
        return Err(refuse(
            "this node admits only cluster members over mutual TLS: no client certificate".into(),
        ));
    };
    match cert.member() {
        Some(("node" | "gate", _)) => {}
        _ => {
            return Err(refuse(format!(
                "the certificate {cert} names no cluster member (goverse://node/ID or goverse://gate/ID)"
            )));
        }
    }
    if let Some(claimed) = request
        .metadata()
        .get(PEER_ADDRESS_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        let host = claimed.rsplit_once(':').map_or(claimed, |(host, _)| host);
        if !cert.names_host(host) {
            return Err(refuse(format!(
                "the peer claims the address {claimed}, which its certificate {cert} does not name"
            )));
        }
    }
    Ok(())
}

/// Upstream's node service (`goverse.Goverse`): its read-only calls, for upstream's tools;
/// behind the cluster secret as the node protocol is. Its other calls answer UNIMPLEMENTED.
struct UpstreamNode {
    handler: Arc<dyn Handler>,
    admission: Arc<Admission>,
}

#[tonic::async_trait]
impl goverse_proto::upstream::goverse_server::Goverse for UpstreamNode {
    async fn status(
        &self,
        request: tonic::Request<goverse_proto::upstream::Empty>,
    ) -> Result<tonic::Response<goverse_proto::upstream::StatusResponse>, Status> {
        self.admission.admit(&request)?;
        Ok(tonic::Response::new(self.handler.status()))
    }

    async fn list_objects(
        &self,
        request: tonic::Request<goverse_proto::upstream::Empty>,
    ) -> Result<tonic::Response<goverse_proto::upstream::ListObjectsResponse>, Status> {
        self.admission.admit(&request)?;
        Ok(tonic::Response::new(self.handler.list_objects()))
    }
}

/// Compares without an early exit, so the time taken says nothing of how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl NodeService for NodeRpc {
    type OpenStream = BatchStream;

    async fn open(
        &self,
        request: tonic::Request<Streaming<RequestBatch>>,
    ) -> Result<Response<BatchStream>, Status> {
        self.admission.admit(&request)?;
        let peer: Option<Arc<str>> = request
            .metadata()
            .get(PEER_ADDRESS_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(Into::into);
        let request_remote = goverse_tls::remote_addr(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let (sink, pending_pushes) = PeerSink::new(serial, tx.clone());
        if let Some(peer) = &peer {
            if let Err(why) = self.handler.peer_opened(peer.clone(), sink) {
                tracing::warn!(peer = %peer, remote = ?request_remote, cause = %why,
                    "refused a second stream for a connected peer");
                return Err(Status::already_exists(why.to_string()));
            }
            tracing::info!(peer = %peer, "peer stream opened");
        }
        let handler = self.handler.clone();
        let stop = self.stop.clone();
        let tracker = self.readers.clone();
        let in_flight = Arc::new(InFlight::new(self.in_flight_limit));
        self.readers.spawn(async move {
            let mut lanes = Lanes::new(&handler, &tx, &tracker, &in_flight);
            'read: loop {
                // Nothing more is read while the stream's limit of running requests is reached.
                let batch = tokio::select! {
                    () = stop.cancelled() => break,
                    batch = async {
                        in_flight.room().await;
                        inbound.message().await
                    } => batch,
                };
                match batch {
                    Ok(Some(batch)) => {
                        // Started as far as the limit allows, the rest as room comes.
                        let mut requests = batch.requests;
                        loop {
                            let free = in_flight.free();
                            let rest = if requests.len() > free {
                                requests.split_off(free)
                            } else {
                                Vec::new()
                            };
                            in_flight.starting(requests.len());
                            lanes.run(requests);
                            if rest.is_empty() {
                                break;
                            }
                            requests = rest;
                            tokio::select! {
                                () = stop.cancelled() => break 'read,
                                () = in_flight.room() => {}
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(cause = %status, "peer stream failed");
                        break;
                    }
                }
            }
            if let Some(peer) = &peer {
                handler.peer_closed(peer, serial);
                tracing::info!(peer = %peer, "peer stream closed");
            }
        });
        Ok(Response::new(BatchStream {
            rx,
            buf: Vec::with_capacity(64),
            pending_pushes,
        }))
    }

    async fn describe(
        &self,
        request: tonic::Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        self.admission.admit(&request)?;
        Ok(Response::new(self.handler.describe()))
    }
}

/// Batches of at most this many requests are started by the reader alone, when no lane task
/// has work: sharing them out would cost more (a wake-up on another thread) than it saves.
const INLINE_REQUESTS: usize = 32;

/// Most lanes a stream's requests are dealt to (the reader's own included).
const MAX_LANES: usize = 8;

/// The lanes one peer stream's requests are dealt to; see the module docs.
struct Lanes {
    handler: Arc<dyn Handler>,
    tx: mpsc::UnboundedSender<Outbound>,
    /// One sender per lane task (lanes 1..); empty on a single worker thread.
    tasks: Vec<mpsc::UnboundedSender<Vec<proto::Request>>>,
    /// Chunks sent to lane tasks and not yet started in full.
    busy: Arc<AtomicUsize>,
    /// The requests of the batch being dealt, per lane task.
    dealt: Vec<Vec<proto::Request>>,
    /// The stream's tracker, which every request task is spawned on.
    tracker: TaskTracker,
    /// The stream's running requests.
    in_flight: Arc<InFlight>,
}

impl Lanes {
    /// Lane tasks are tracked with the stream's reader, so a draining server waits for them.
    fn new(
        handler: &Arc<dyn Handler>,
        tx: &mpsc::UnboundedSender<Outbound>,
        tracker: &TaskTracker,
        in_flight: &Arc<InFlight>,
    ) -> Self {
        let threads = tokio::runtime::Handle::try_current()
            .map_or(1, |h| h.metrics().num_workers())
            .clamp(1, MAX_LANES);
        let busy = Arc::new(AtomicUsize::new(0));
        let tasks = (1..threads)
            .map(|_| {
                let (lane_tx, mut lane_rx) = mpsc::unbounded_channel::<Vec<proto::Request>>();
                let (handler, tx, busy) = (handler.clone(), tx.clone(), busy.clone());
                let lane_tracker = tracker.clone();
                let lane_in_flight = in_flight.clone();
                tracker.spawn(async move {
                    while let Some(chunk) = lane_rx.recv().await {
                        for request in chunk {
                            run_request(&handler, &tx, &lane_tracker, &lane_in_flight, request);
                        }
                        busy.fetch_sub(1, Ordering::Release);
                    }
                });
                lane_tx
            })
            .collect::<Vec<_>>();
        Self {
            handler: handler.clone(),
            tx: tx.clone(),
            tracker: tracker.clone(),
            in_flight: in_flight.clone(),
            dealt: tasks.iter().map(|_| Vec::new()).collect(),
            tasks,
            busy,
        }
    }

    /// Starts one batch's requests.
    fn run(&mut self, requests: Vec<proto::Request>) {
        let inline = self.tasks.is_empty()
            || (requests.len() <= INLINE_REQUESTS && self.busy.load(Ordering::Acquire) == 0);
        if inline {
            for request in requests {
                run_request(
                    &self.handler,
                    &self.tx,
                    &self.tracker,
                    &self.in_flight,
                    request,
                );
            }
            return;
        }
        let lanes = self.tasks.len() + 1;
        for request in requests {
            match lane_of(&request, lanes) {
                0 => run_request(
                    &self.handler,
                    &self.tx,
                    &self.tracker,
                    &self.in_flight,
                    request,
                ),
                lane => self.dealt[lane - 1].push(request),
            }
        }
        for (lane, chunk) in self.tasks.iter().zip(&mut self.dealt) {
            if chunk.is_empty() {
                continue;
            }
            self.busy.fetch_add(1, Ordering::Relaxed);
            if lane.send(std::mem::take(chunk)).is_err() {
                // Lane tasks live as long as the stream's reader; this cannot happen.
                self.busy.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The lane a request is dealt to: by an FNV-1a hash of its object ID, so one object always
/// maps to one lane (requests without an operation go to the reader's own lane). The shard is
/// the hash's low bits; lanes take the high ones, so a node that owns only even shards (say)
/// still spreads its requests over every lane.
fn lane_of(request: &proto::Request, lanes: usize) -> usize {
    let id = match &request.op {
        Some(proto::request::Op::Call(call)) => &call.object_id,
        Some(proto::request::Op::Create(create)) => &create.object_id,
        Some(proto::request::Op::Delete(delete)) => &delete.object_id,
        None => return 0,
    };
    (goverse_core::fnv1a_32(id.as_bytes()) >> 16) as usize % lanes
}

/// Starts one request: polled once here, and spawned only if it has to wait.
fn run_request(
    handler: &Arc<dyn Handler>,
    tx: &mpsc::UnboundedSender<Outbound>,
    tracker: &TaskTracker,
    in_flight: &Arc<InFlight>,
    request: proto::Request,
) {
    let reply = Reply {
        id: request.id,
        tx: tx.clone(),
        in_flight: in_flight.clone(),
    };
    let Some(received) = Received::from_proto(request.op) else {
        reply.send(Err(CallError::invalid_argument(
            "request carries no operation (call, create or delete)",
        )));
        return;
    };
    let mut task = handler.clone().serve(Incoming::new(received, reply));
    let waker = futures::task::noop_waker_ref();
    if task
        .as_mut()
        .poll(&mut Context::from_waker(waker))
        .is_pending()
    {
        // Spawned tasks are polled again at once, registering their own waker. Tracked with
        // the stream's reader, so a draining server waits for the answers still due.
        tracker.spawn(task);
    }
}

/// The response half of a peer stream: everything queued when polled, as one batch.
pub(crate) struct BatchStream {
    rx: mpsc::UnboundedReceiver<Outbound>,
    buf: Vec<Outbound>,
    pending_pushes: Arc<AtomicUsize>,
}

impl Stream for BatchStream {
    type Item = Result<ResponseBatch, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.rx.poll_recv_many(cx, &mut this.buf, MAX_BATCH) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(n) => {
                crate::stats::stats().responses_written(n);
                let mut batch = ResponseBatch::default();
                for item in this.buf.drain(..) {
                    item.add_to(&mut batch, &this.pending_pushes);
                }
                Poll::Ready(Some(Ok(batch)))
            }
        }
    }
}
