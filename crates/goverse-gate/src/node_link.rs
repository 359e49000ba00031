//! The gate's side of the node service: one long-lived stream to the node, reconnected when it
//! breaks. Requests are tagged with ids, queued, and written in batches (everything queued when
//! the transport is ready for more); responses complete the waiting callers by id; pushes are
//! handed to the gate's clients. A gate in the node's own process links through an in-process
//! peer instead: same requests and responses, no socket.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use foldhash::HashMap;
use futures::Stream;
use goverse_core::{CallError, ClientIdentity, ErrorCode};
use goverse_node::{CallOptions, LocalPeer, LocalPushes};
use goverse_proto::node::node_service_client::NodeServiceClient;
use goverse_proto::node::{
    self as proto, DescribeRequest, Done, Request, RequestBatch, request, response,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::clients::Clients;
use crate::codec::{Catalog, SharedCatalog};

const MAX_BATCH: usize = 1024;

/// What a request resolves to.
pub(crate) type Outcome = Result<response::Result, CallError>;

/// A client's request for the node, before it is put on the wire (or handed over in-process).
pub(crate) struct NodeRequest<'a> {
    pub(crate) identity: &'a Arc<ClientIdentity>,
    pub(crate) object_type: &'a str,
    pub(crate) id: &'a str,
    pub(crate) op: NodeOp<'a>,
}

/// What a [`NodeRequest`] asks for.
pub(crate) enum NodeOp<'a> {
    Call {
        method: &'a str,
        request: Option<prost_types::Any>,
        reliable_call_id: &'a str,
    },
    Create,
    Delete,
}

impl NodeRequest<'_> {
    /// The request as the node service's wire message.
    fn into_proto(self, timeout: Duration) -> request::Op {
        let timeout_micros = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
        let caller = Some(proto::Caller {
            client_id: self.identity.client_id().to_owned(),
            user_id: self.identity.user_id().to_owned(),
            roles: self.identity.roles().map(str::to_owned).collect(),
        });
        let (r#type, object_id) = (self.object_type.to_owned(), self.id.to_owned());
        match self.op {
            NodeOp::Call {
                method,
                request,
                reliable_call_id,
            } => request::Op::Call(proto::Call {
                r#type,
                object_id,
                method: method.to_owned(),
                request,
                chain: 0,
                timeout_micros,
                caller,
                reliable_call_id: reliable_call_id.to_owned(),
            }),
            NodeOp::Create => request::Op::Create(proto::Create {
                r#type,
                object_id,
                chain: 0,
                timeout_micros,
                caller,
            }),
            NodeOp::Delete => request::Op::Delete(proto::Delete {
                r#type,
                object_id,
                chain: 0,
                timeout_micros,
                caller,
            }),
        }
    }
}

/// Callers waiting for responses on one connection.
#[derive(Default)]
struct Pending {
    waiting: Mutex<(bool, HashMap<u64, oneshot::Sender<Outcome>>)>,
}

impl Pending {
    /// Registers request `id`; fails if the connection already closed.
    fn insert(&self, id: u64, tx: oneshot::Sender<Outcome>) -> bool {
        let mut guard = self.waiting.lock();
        if guard.0 {
            return false;
        }
        guard.1.insert(id, tx);
        true
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Outcome>> {
        self.waiting.lock().1.remove(&id)
    }

    /// Closes the connection's table and fails everything still waiting.
    fn close(&self, why: &str) {
        let waiting = {
            let mut guard = self.waiting.lock();
            guard.0 = true;
            std::mem::take(&mut guard.1)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(CallError::unavailable(why.to_owned())));
        }
    }
}

struct Connection {
    tx: mpsc::UnboundedSender<Request>,
    pending: Arc<Pending>,
}

/// A link to one node.
pub(crate) struct NodeLink {
    address: String,
    current: RwLock<Option<Arc<Connection>>>,
    /// Set when the node runs in this process: requests then run in the caller's task.
    local: Option<LocalPeer>,
    local_pushes: Mutex<Option<LocalPushes>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLink")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl NodeLink {
    pub(crate) fn new(address: String) -> Arc<Self> {
        Arc::new(Self {
            address,
            current: RwLock::new(None),
            local: None,
            local_pushes: Mutex::new(None),
            next_id: AtomicU64::new(1),
        })
    }

    /// A link to a node in this process, through an in-process peer stream.
    pub(crate) fn local(node: &goverse_node::Node, gate_address: &str) -> Arc<Self> {
        let (peer, pushes) = goverse_node::open_local(node, gate_address);
        Arc::new(Self {
            address: node.address().to_string(),
            current: RwLock::new(None),
            local: Some(peer),
            local_pushes: Mutex::new(Some(pushes)),
            next_id: AtomicU64::new(1),
        })
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.local.is_some() || self.current.read().is_some()
    }

    /// Sends `request` and waits up to `timeout` (the call's deadline) for its outcome.
    pub(crate) async fn request(&self, request: NodeRequest<'_>, timeout: Duration) -> Outcome {
        if let Some(local) = &self.local {
            return Self::request_local(local, request, timeout).await;
        }
        let op = request.into_proto(timeout);
        let Some(conn) = self.current.read().clone() else {
            return Err(CallError::unavailable(format!(
                "node {} is not connected",
                self.address
            )));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if !conn.pending.insert(id, tx) || conn.tx.send(Request { id, op: Some(op) }).is_err() {
            conn.pending.take(id);
            return Err(CallError::unavailable(format!(
                "connection to node {} was lost",
                self.address
            )));
        }
        // The node enforces the deadline itself; the margin covers the trip back.
        match tokio::time::timeout(timeout + Duration::from_millis(500), rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(CallError::unavailable(format!(
                "connection to node {} was lost",
                self.address
            ))),
            Err(_) => {
                conn.pending.take(id);
                Err(CallError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("node {} did not answer within {timeout:?}", self.address),
                ))
            }
        }
    }

    /// Keeps the link connected until `stop` is cancelled.
    pub(crate) async fn run(
        self: Arc<Self>,
        gate_address: String,
        clients: Arc<Clients>,
        catalog: SharedCatalog,
        stop: CancellationToken,
    ) {
        let local_pushes = self.local_pushes.lock().take();
        if let (Some(peer), Some(pushes)) = (&self.local, local_pushes) {
            *catalog.write() = Arc::new(Catalog::from_describe(&peer.describe()));
            tracing::info!(node = %self.address, "in-process node link up");
            return Self::deliver_local(pushes, &clients, &stop).await;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.connect_once(&gate_address, &clients, &catalog, &stop) => result,
            };
            match result {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(err) => {
                    tracing::warn!(node = %self.address, cause = %err, retry_in = ?backoff,
                        "node link down");
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
        gate_address: &str,
        clients: &Clients,
        catalog: &SharedCatalog,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|e| format!("bad node address {:?}: {e}", self.address))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        let channel: Channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let mut client = NodeServiceClient::new(channel)
            .max_decoding_message_size(goverse_node::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(goverse_node::MAX_MESSAGE_BYTES);
        let described = client
            .describe(DescribeRequest {})
            .await
            .map_err(|s| format!("describe failed: {}", s.message()))?
            .into_inner();
        *catalog.write() = Arc::new(Catalog::from_describe(&described));

        let (tx, rx) = mpsc::unbounded_channel();
        let mut open = tonic::Request::new(RequestStream {
            rx,
            buf: Vec::with_capacity(64),
        });
        open.metadata_mut().insert(
            goverse_node::PEER_ADDRESS_HEADER,
            gate_address
                .parse()
                .map_err(|_| format!("gate address {gate_address:?} is not a valid header"))?,
        );
        let mut inbound = client
            .open(open)
            .await
            .map_err(|s| format!("open failed: {}", s.message()))?
            .into_inner();
        let pending = Arc::new(Pending::default());
        *self.current.write() = Some(Arc::new(Connection {
            tx,
            pending: pending.clone(),
        }));
        tracing::info!(node = %self.address, types = ?catalog.read().type_names(), "node link up");

        let result = loop {
            let batch = tokio::select! {
                () = stop.cancelled() => break Ok(()),
                batch = inbound.message() => batch,
            };
            match batch {
                Ok(Some(batch)) => {
                    for r in batch.responses {
                        if let Some(tx) = pending.take(r.id) {
                            let _ = tx.send(outcome_of(r.result));
                        }
                    }
                    for push in batch.pushes {
                        if let Some(message) = push.message {
                            clients.deliver(&push.client_ids, push.broadcast, message);
                        }
                    }
                }
                Ok(None) => break Err("node closed the stream".to_owned()),
                Err(status) => break Err(format!("stream failed: {}", status.message())),
            }
        };
        *self.current.write() = None;
        pending.close(&format!("connection to node {} was lost", self.address));
        result
    }
}

impl NodeLink {
    /// Runs `request` on the in-process node: the identity is handed over as is, nothing is
    /// encoded.
    async fn request_local(
        local: &LocalPeer,
        request: NodeRequest<'_>,
        timeout: Duration,
    ) -> Outcome {
        let options = CallOptions {
            timeout: Some(timeout),
            chain: None,
            client: Some(request.identity.clone()),
        };
        let (object_type, id) = (request.object_type, request.id);
        match request.op {
            NodeOp::Call {
                method,
                request,
                reliable_call_id,
            } if !reliable_call_id.is_empty() => local
                .call_reliable(object_type, id, method, reliable_call_id, request, options)
                .await
                .map(|outcome| {
                    response::Result::Reliable(goverse_node::reliable_to_proto(outcome))
                }),
            NodeOp::Call {
                method, request, ..
            } => local
                .call(object_type, id, method, request, options)
                .await
                .map(response::Result::Value),
            NodeOp::Create => local
                .create(object_type, id, options)
                .await
                .map(|()| response::Result::Done(Done {})),
            NodeOp::Delete => local
                .delete(object_type, id, options)
                .await
                .map(|()| response::Result::Done(Done {})),
        }
    }

    /// Hands the in-process node's pushes to the gate's clients until `stop`.
    async fn deliver_local(mut pushes: LocalPushes, clients: &Clients, stop: &CancellationToken) {
        loop {
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                batch = pushes.next() => batch,
            };
            let Some(batch) = batch else { return };
            for push in batch {
                if let Some(message) = push.message {
                    clients.deliver(&push.client_ids, push.broadcast, message);
                }
            }
        }
    }
}

/// What a response's result means to the caller.
fn outcome_of(result: Option<response::Result>) -> Outcome {
    match result {
        Some(response::Result::Failure(f)) => Err(goverse_node::failure_to_error(f)),
        Some(other) => Ok(other),
        None => Err(CallError::internal("node sent an empty response")),
    }
}

/// The request half of the stream: everything queued when polled, as one batch.
struct RequestStream {
    rx: mpsc::UnboundedReceiver<Request>,
    buf: Vec<Request>,
}

impl Stream for RequestStream {
    type Item = RequestBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RequestBatch>> {
        let this = self.get_mut();
        match this.rx.poll_recv_many(cx, &mut this.buf, MAX_BATCH) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(Some(RequestBatch {
                requests: std::mem::take(&mut this.buf),
            })),
        }
    }
}
