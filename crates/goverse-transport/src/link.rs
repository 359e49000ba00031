//! The client half: one link to one node.
//!
//! A remote link holds one long-lived stream to the node, reconnected with backoff whenever it
//! breaks. Requests are tagged with ids, queued, and written in batches (everything queued when
//! the transport is ready for more); responses complete the waiting callers by id; pushes go to
//! the link's [`LinkEvents`]. A local link reaches a [`Handler`] in the same process instead:
//! the same requests and responses, run in the caller's task, with no socket and no encoding.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use foldhash::HashMap;
use futures::Stream;
use goverse_core::{CallError, ErrorCode};
use goverse_proto::node::node_service_client::NodeServiceClient;
use goverse_proto::node::{DescribeRequest, DescribeResponse, Push, ResponseBatch};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::encode::{BatchCodec, EncodedBatch, encode_request};
use crate::io::{Dialer, TcpDialer};
use crate::wire::outcome_of;
use crate::{
    Handler, MAX_BATCH, MAX_MESSAGE_BYTES, Outcome, PEER_ADDRESS_HEADER, PeerSink, Request,
};

/// The node service's `Open` method.
const OPEN_PATH: &str = "/goverse.node.v1.NodeService/Open";

/// What a link reports to its owner.
pub trait LinkEvents: Send + Sync + 'static {
    /// The link is up; this is what the node serves.
    fn connected(&self, described: &DescribeResponse);
    /// A push for clients of this peer arrived.
    fn pushed(&self, push: Push);
    /// A connection attempt to node `node` failed with `cause` (the link retries); a peer can
    /// name it to its own callers instead of a misleading error.
    fn failed(&self, node: &str, cause: &LinkError) {
        let _ = (node, cause);
    }
}

/// Checks that the node at `address` answers as a peer would reach it: a new connection, and
/// the node service's `Describe` presenting `secret`, all within `timeout`. The error says what
/// failed (cannot connect and why, the node's refusal, or no answer in time).
pub async fn probe_node(
    address: &str,
    secret: Option<&str>,
    timeout: Duration,
) -> Result<(), LinkError> {
    let tcp: Arc<dyn Dialer> = Arc::new(TcpDialer);
    probe_node_over(&tcp, address, secret, timeout).await
}

/// [`probe_node`] over connections `dialer` opens.
pub async fn probe_node_over(
    dialer: &Arc<dyn Dialer>,
    address: &str,
    secret: Option<&str>,
    timeout: Duration,
) -> Result<(), LinkError> {
    let probe = async {
        let channel = crate::io::channel(address, dialer, timeout).await?;
        let mut request = tonic::Request::new(DescribeRequest {});
        if let Some(secret) = secret {
            let value = secret.parse().map_err(|_| LinkError::BadSecret)?;
            request
                .metadata_mut()
                .insert(crate::PEER_SECRET_HEADER, value);
        }
        NodeServiceClient::new(channel)
            .describe(request)
            .await
            .map(|_| ())
            .map_err(LinkError::refused("describe"))
    };
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or(Err(LinkError::NoAnswer(timeout)))
}

/// Why a link to a node could not come up, or went down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The address is not one a connection can be made to.
    #[error("bad node address {address:?}: {reason}")]
    BadAddress {
        /// The address.
        address: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The connection failed; the innermost cause says why ("Connection refused").
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No connection within the connect timeout.
    #[error("cannot connect: no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The node did not answer within the probe's timeout.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// The cluster secret cannot be sent as a header.
    #[error("the cluster secret is not a valid header value")]
    BadSecret,
    /// This node's own address cannot be sent as a header.
    #[error("peer address {0:?} is not a valid header")]
    BadPeerAddress(String),
    /// The connection is not ready for requests.
    #[error("node service not ready: {0}")]
    NotReady(String),
    /// The node answered a step (`describe`, `open`, `stream`) with an error status.
    #[error("{step} failed: {code:?}: {message}")]
    Refused {
        /// The step.
        step: &'static str,
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The node ended the stream.
    #[error("node closed the stream")]
    Closed,
    /// The address has no node in this process's network.
    #[error("not in this process's network")]
    NotInProcess,
}

impl LinkError {
    fn refused(step: &'static str) -> impl Fn(tonic::Status) -> Self {
        move |status| Self::Refused {
            step,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// How often a connection fails the calls whose node has not answered in time.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// How long past its deadline a call waits for its node's answer: the node enforces the
/// deadline itself, so this covers only the trip back (and a node that stopped answering).
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// One caller waiting for its response.
struct Waiter {
    tx: oneshot::Sender<Outcome>,
    /// When to stop waiting, on the connection's coarse clock (milliseconds since it opened).
    give_up_ms: u64,
    timeout: Duration,
}

/// Callers waiting for responses on one connection.
///
/// Deadlines are kept here instead of a timer per request: the connection's reader sweeps the
/// table every [`SWEEP_EVERY`] and fails what is overdue, so a request costs no timer entry
/// and no clock read.
/// What became of a request registered with [`Pending::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inserted {
    Waiting,
    /// The connection closed meanwhile.
    Closed,
    /// The link's limit of requests waiting for answers is reached.
    Full,
}

/// The most requests one link keeps waiting for answers by default; see
/// [`NodeLink::limit_in_flight`].
pub const LINK_IN_FLIGHT_LIMIT: usize = 65_536;

struct Pending {
    waiting: Mutex<(bool, HashMap<u64, Waiter>)>,
    /// Milliseconds since `opened`, as of the last sweep.
    clock_ms: AtomicU64,
    opened: tokio::time::Instant,
}

impl Pending {
    fn new() -> Self {
        Self {
            waiting: Mutex::default(),
            clock_ms: AtomicU64::new(0),
            opened: tokio::time::Instant::now(),
        }
    }

    /// Registers request `id`, waited for up to `timeout` (and the margin), unless the
    /// connection already closed or `limit` requests are waiting on it.
    fn insert(
        &self,
        id: u64,
        tx: oneshot::Sender<Outcome>,
        timeout: Duration,
        limit: usize,
    ) -> Inserted {
        // The clock lags by up to one sweep: a request waits at least its whole time.
        let wait = timeout + ANSWER_MARGIN + SWEEP_EVERY;
        let give_up_ms = self
            .clock_ms
            .load(Ordering::Relaxed)
            .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        let mut guard = self.waiting.lock();
        if guard.0 {
            return Inserted::Closed;
        }
        if guard.1.len() >= limit {
            return Inserted::Full;
        }
        let waiter = Waiter {
            tx,
            give_up_ms,
            timeout,
        };
        guard.1.insert(id, waiter);
        Inserted::Waiting
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Outcome>> {
        self.waiting.lock().1.remove(&id).map(|w| w.tx)
    }

    /// Advances the clock and fails the requests whose time is up, and forgets those whose
    /// callers stopped waiting.
    fn sweep(&self, address: &str) {
        let now_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.clock_ms.store(now_ms, Ordering::Relaxed);
        let overdue: Vec<Waiter> = self
            .waiting
            .lock()
            .1
            .extract_if(|_, w| w.give_up_ms <= now_ms || w.tx.is_closed())
            .map(|(_, w)| w)
            .collect();
        for waiter in overdue {
            let _ = waiter.tx.send(Err(CallError::new(
                ErrorCode::DeadlineExceeded,
                format!("node {address} did not answer within {:?}", waiter.timeout),
            )));
        }
    }

    /// Closes the connection's table and fails everything still waiting.
    fn close(&self, why: &str) {
        let waiting = {
            let mut guard = self.waiting.lock();
            guard.0 = true;
            std::mem::take(&mut guard.1)
        };
        for (_, waiter) in waiting {
            let _ = waiter.tx.send(Err(CallError::unavailable(why.to_owned())));
        }
    }
}

struct Connection {
    /// Requests encoded where they were made ([`crate::encode::encode_request`]).
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Pending>,
}

/// A link to one node: over the network, or in-process.
pub struct NodeLink {
    address: String,
    /// The cluster secret this link presents to the node, if the cluster has one.
    secret: Option<Arc<str>>,
    /// Opens its connections (over the network, or a network inside this process).
    dialer: Arc<dyn Dialer>,
    /// The most requests kept waiting for answers ([`NodeLink::limit_in_flight`]).
    in_flight_limit: std::sync::atomic::AtomicUsize,
    current: ArcSwapOption<Connection>,
    /// Set when the node runs in this process: requests then run in the caller's task.
    local: Option<Arc<dyn Handler>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLink")
            .field("address", &self.address)
            .field("local", &self.local.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeLink {
    /// A link to the node serving at `address` (`host:port`); it connects once
    /// [`NodeLink::run`] runs.
    pub fn remote(address: String) -> Arc<Self> {
        Self::remote_with_secret(address, None)
    }

    /// [`NodeLink::remote`] presenting the cluster's `secret` to the node.
    pub fn remote_with_secret(address: String, secret: Option<Arc<str>>) -> Arc<Self> {
        Self::dialed(address, secret, Arc::new(TcpDialer))
    }

    /// A link to the node at `address` over connections `dialer` opens, presenting `secret`.
    pub fn dialed(address: String, secret: Option<Arc<str>>, dialer: Arc<dyn Dialer>) -> Arc<Self> {
        Arc::new(Self {
            address,
            secret,
            dialer,
            in_flight_limit: std::sync::atomic::AtomicUsize::new(LINK_IN_FLIGHT_LIMIT),
            current: ArcSwapOption::empty(),
            local: None,
            next_id: AtomicU64::new(1),
        })
    }

    /// A link to `handler`, a node in this process known as `address`.
    pub fn local(handler: Arc<dyn Handler>, address: String) -> Arc<Self> {
        Arc::new(Self {
            address,
            secret: None,
            dialer: Arc::new(TcpDialer),
            in_flight_limit: std::sync::atomic::AtomicUsize::new(LINK_IN_FLIGHT_LIMIT),
            current: ArcSwapOption::empty(),
            local: Some(handler),
            next_id: AtomicU64::new(1),
        })
    }

    /// The node's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether requests can be sent now.
    pub fn is_connected(&self) -> bool {
        self.local.is_some() || self.current.load().is_some()
    }

    /// Requests sent on the current connection and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.current
            .load()
            .as_ref()
            .map_or(0, |conn| conn.pending.waiting.lock().1.len())
    }

    /// Sends `request` and waits up to `timeout` (the call's deadline, which travels with the
    /// request) for its outcome.
    pub async fn request(&self, mut request: Request<'_>, timeout: Duration) -> Outcome {
        if let Some(local) = &self.local {
            request.timeout = Some(timeout);
            return local.handle(request).await;
        }
        self.send(&request, timeout).await
    }

    /// [`NodeLink::request`] of a request the caller keeps (to send it again elsewhere): over
    /// the network it is encoded from the reference; in-process it is copied.
    pub async fn request_ref(&self, request: &Request<'_>, timeout: Duration) -> Outcome {
        if self.local.is_some() {
            return self.request(request.clone(), timeout).await;
        }
        self.send(request, timeout).await
    }

    async fn send(&self, request: &Request<'_>, timeout: Duration) -> Outcome {
        let rx = {
            // No refcount taken: the guard lives only while the request is queued.
            let conn = self.current.load();
            let Some(conn) = conn.as_ref() else {
                // Nothing was sent: a router may send it again elsewhere or later.
                return Err(CallError::not_served(format!(
                    "node {} is not connected",
                    self.address
                )));
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            let limit = self.in_flight_limit.load(Ordering::Relaxed);
            match conn.pending.insert(id, tx, timeout, limit) {
                Inserted::Waiting => {}
                Inserted::Closed => return Err(self.lost()),
                Inserted::Full => {
                    return Err(CallError::new(
                        ErrorCode::ResourceExhausted,
                        format!(
                            "the link to node {} has {limit} calls waiting for answers; the \
                             node is not keeping up (nothing was sent)",
                            self.address
                        ),
                    ));
                }
            }
            if conn.tx.send(encode_request(id, request, timeout)).is_err() {
                conn.pending.take(id);
                return Err(self.lost());
            }
            rx
        };
        // Answered, failed by the connection's sweep when overdue, or failed when it closes.
        rx.await.unwrap_or_else(|_| Err(self.lost()))
    }

    fn lost(&self) -> CallError {
        CallError::unavailable(format!("connection to node {} was lost", self.address))
    }

    /// Caps the requests this link keeps waiting for answers at `limit` (default
    /// [`LINK_IN_FLIGHT_LIMIT`]): a request beyond it fails at once with `ResourceExhausted`,
    /// nothing sent, so a node that stops keeping up bounds its callers' memory instead of
    /// queueing without end.
    pub fn limit_in_flight(&self, limit: usize) {
        self.in_flight_limit.store(limit.max(1), Ordering::Relaxed);
    }

    /// Keeps the link up until `stop` is cancelled, naming this peer `peer_address` to the
    /// node (pushes for clients whose id starts with it come back on this link).
    pub async fn run(
        self: Arc<Self>,
        peer_address: String,
        events: Arc<dyn LinkEvents>,
        stop: CancellationToken,
    ) {
        if let Some(local) = &self.local {
            return Self::run_local(local, &self.address, peer_address, &*events, &stop).await;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = tokio::select! {
                () = stop.cancelled() => {
                    // The connection attempt may have been dropped half-way: forget it, failing
                    // whatever still waits on it.
                    if let Some(conn) = self.current.swap(None) {
                        conn.pending.close(&format!("link to node {} closed", self.address));
                    }
                    return;
                }
                result = self.connect_once(&peer_address, &*events, &stop) => result,
            };
            match result {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(err) => {
                    tracing::warn!(node = %self.address, cause = %err, retry_in = ?backoff,
                        "node link down");
                    events.failed(&self.address, &err);
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One connection: describe, open the stream, serve it until it breaks.
    async fn connect_once(
        &self,
        peer_address: &str,
        events: &dyn LinkEvents,
        stop: &CancellationToken,
    ) -> Result<(), LinkError> {
        let channel: Channel =
            crate::io::channel(&self.address, &self.dialer, Duration::from_secs(2)).await?;
        let mut client = NodeServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut describe = tonic::Request::new(DescribeRequest {});
        self.present_secret(describe.metadata_mut())?;
        let described = client
            .describe(describe)
            .await
            .map_err(LinkError::refused("describe"))?
            .into_inner();
        events.connected(&described);

        let (tx, rx) = mpsc::unbounded_channel();
        let mut open = tonic::Request::new(RequestStream {
            rx,
            buf: Vec::with_capacity(64),
        });
        open.metadata_mut().insert(
            PEER_ADDRESS_HEADER,
            peer_address
                .parse()
                .map_err(|_| LinkError::BadPeerAddress(peer_address.to_owned()))?,
        );
        self.present_secret(open.metadata_mut())?;
        // The generated client's `open` takes owned `RequestBatch`es; this one writes requests
        // already encoded, on the same channel and path.
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        grpc.ready()
            .await
            .map_err(|e| LinkError::NotReady(e.to_string()))?;
        open.extensions_mut().insert(tonic::GrpcMethod::new(
            "goverse.node.v1.NodeService",
            "Open",
        ));
        let mut inbound = grpc
            .streaming(
                open,
                tonic::codegen::http::uri::PathAndQuery::from_static(OPEN_PATH),
                BatchCodec,
            )
            .await
            .map_err(LinkError::refused("open"))?
            .into_inner();
        let pending = Arc::new(Pending::new());
        let mut sweeps = tokio::time::interval(SWEEP_EVERY);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.current.store(Some(Arc::new(Connection {
            tx,
            pending: pending.clone(),
        })));
        tracing::info!(node = %self.address, "node link up");

        let result = loop {
            let batch = tokio::select! {
                () = stop.cancelled() => break Ok(()),
                batch = inbound.message() => batch,
                _ = sweeps.tick() => {
                    pending.sweep(&self.address);
                    continue;
                }
            };
            match batch {
                Ok(Some(batch)) => {
                    for r in batch.responses {
                        if let Some(tx) = pending.take(r.id) {
                            let _ = tx.send(outcome_of(r.result));
                        }
                    }
                    for push in batch.pushes {
                        events.pushed(push);
                    }
                }
                Ok(None) => break Err(LinkError::Closed),
                Err(status) => break Err(LinkError::refused("stream")(status)),
            }
        };
        self.current.store(None);
        pending.close(&format!("connection to node {} was lost", self.address));
        result
    }

    fn present_secret(&self, metadata: &mut tonic::metadata::MetadataMap) -> Result<(), LinkError> {
        if let Some(secret) = &self.secret {
            let value = secret.parse().map_err(|_| LinkError::BadSecret)?;
            metadata.insert(crate::PEER_SECRET_HEADER, value);
        }
        Ok(())
    }

    /// An in-process link: attaches a push sink to the handler and hands what arrives on it to
    /// `events` until `stop`.
    async fn run_local(
        handler: &Arc<dyn Handler>,
        address: &str,
        peer_address: String,
        events: &dyn LinkEvents,
        stop: &CancellationToken,
    ) {
        /// Serials of in-process streams, apart from the network ones.
        static SERIALS: AtomicU64 = AtomicU64::new(1 << 62);
        let serial = SERIALS.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (sink, pending_pushes) = PeerSink::new(serial, tx);
        let peer: Arc<str> = peer_address.into();
        if let Err(why) = handler.peer_opened(peer.clone(), sink) {
            tracing::warn!(node = %address, cause = %why, "in-process node link refused");
            return;
        }
        events.connected(&handler.describe());
        tracing::info!(node = %address, "in-process node link up");
        let mut buf = Vec::with_capacity(64);
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => break,
                n = rx.recv_many(&mut buf, MAX_BATCH) => n,
            };
            if received == 0 {
                break;
            }
            let mut batch = ResponseBatch::default();
            for item in buf.drain(..) {
                item.add_to(&mut batch, &pending_pushes);
            }
            for push in batch.pushes {
                events.pushed(push);
            }
        }
        handler.peer_closed(&peer, serial);
    }
}

/// The request half of the stream: everything queued when polled, as one batch.
struct RequestStream {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    buf: EncodedBatch,
}

impl Stream for RequestStream {
    type Item = EncodedBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<EncodedBatch>> {
        let this = self.get_mut();
        match this.rx.poll_recv_many(cx, &mut this.buf, MAX_BATCH) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(n) => {
                crate::stats::stats().requests_written(n);
                Poll::Ready(Some(std::mem::take(&mut this.buf)))
            }
        }
    }
}
