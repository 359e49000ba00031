//! The node service: how gates (and, later, other nodes) reach this node's objects.
//!
//! A peer opens one long-lived `Open` stream and writes [`RequestBatch`]es of id-tagged
//! requests; each request runs as its own task (a call waiting for its turn never holds up the
//! others) and its response is queued for the peer. The response half drains everything queued
//! when it is polled into one [`ResponseBatch`], so batches grow with load and a lone call is
//! written at once. Pushes for the peer's clients travel on the same response half.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use goverse_core::{CallError, ChainId, ClientIdentity, ErrorCode, ObjectId, Payload};
use goverse_proto::node::node_service_server::{NodeService, NodeServiceServer};
use goverse_proto::node::{
    self as proto, DescribeRequest, DescribeResponse, RequestBatch, ResponseBatch, request,
    response,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::push::{GateLink, Outbound};
use crate::{CallOptions, MethodKind, Node, ReliableOutcome};

/// The request header a peer names its own address in (`host:port` of a gate). Pushes for
/// clients whose id starts with this address are sent on that peer's stream.
pub const PEER_ADDRESS_HEADER: &str = "goverse-peer-address";

/// Largest message the service accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most items written in one response batch.
const MAX_BATCH: usize = 1024;

/// Why [`serve`] stopped.
#[derive(Debug, thiserror::Error)]
#[error("node service failed: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

/// Serves `node` to peers on `listener` until `shutdown` completes; then ends every peer stream
/// (requests already received still get their responses) and returns.
///
/// The node itself keeps running; call [`Node::shutdown`] afterwards.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let stop = CancellationToken::new();
    let service = NodeServiceServer::new(NodeRpc {
        node,
        stop: stop.clone(),
        serials: AtomicU64::new(0),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            stop.cancel();
        })
        .await?;
    Ok(())
}

struct NodeRpc {
    node: Node,
    stop: CancellationToken,
    serials: AtomicU64,
}

#[tonic::async_trait]
impl NodeService for NodeRpc {
    type OpenStream = BatchStream;

    async fn open(
        &self,
        request: Request<Streaming<RequestBatch>>,
    ) -> Result<Response<BatchStream>, Status> {
        let peer: Option<Arc<str>> = request
            .metadata()
            .get(PEER_ADDRESS_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(Into::into);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let pending_pushes = Arc::new(AtomicUsize::new(0));
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let hub_node = self.node.inner().clone();
        if let Some(peer) = &peer {
            hub_node.push().attach(
                peer.clone(),
                GateLink {
                    serial,
                    tx: tx.clone(),
                    pending_pushes: pending_pushes.clone(),
                },
            );
            tracing::info!(peer = %peer, "peer stream opened");
        }
        let node = self.node.clone();
        let stop = self.stop.clone();
        self.node.inner().spawn_task(async move {
            loop {
                let batch = tokio::select! {
                    () = stop.cancelled() => break,
                    batch = inbound.message() => batch,
                };
                match batch {
                    Ok(Some(batch)) => {
                        for request in batch.requests {
                            run_request(&node, &tx, request);
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
                hub_node.push().detach(peer, serial);
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
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(describe(&self.node)))
    }
}

/// The node's types and message descriptors, as the `Describe` RPC reports them.
pub fn describe(node: &Node) -> DescribeResponse {
    DescribeResponse {
        node_address: node.address().to_string(),
        types: node
            .types()
            .into_iter()
            .map(|t| proto::ObjectType {
                name: t.name.to_owned(),
                methods: t
                    .methods
                    .iter()
                    .map(|m| proto::Method {
                        name: m.name.to_owned(),
                        request_type: (m.request)(),
                        response_type: (m.response)(),
                        read_only: m.kind == MethodKind::Read,
                    })
                    .collect(),
            })
            .collect(),
        file_descriptor_set: node.inner().descriptors().to_vec(),
    }
}

fn client_of(caller: Option<proto::Caller>) -> Option<Arc<ClientIdentity>> {
    caller.map(|c| Arc::new(ClientIdentity::new(c.client_id, c.user_id, c.roles)))
}

fn options(chain: u64, timeout_micros: u64, caller: Option<proto::Caller>) -> CallOptions {
    CallOptions {
        timeout: (timeout_micros > 0).then(|| Duration::from_micros(timeout_micros)),
        chain: (chain != 0).then(|| ChainId::from_raw(chain)),
        client: client_of(caller),
    }
}

/// Starts one request. Most calls finish without waiting (a free object, no I/O), so the request
/// is polled once right here and answered at once; only one that has to wait (for its turn, a
/// load, a nested call) becomes a task of its own, so it never holds up the requests behind it.
/// That saves a task spawn and a cross-thread wake-up per call.
fn run_request(node: &Node, tx: &mpsc::UnboundedSender<Outbound>, request: proto::Request) {
    let node = node.clone();
    let tx = tx.clone();
    let mut task = Box::pin(async move {
        let response = handle(&node, request).await;
        // The peer may be gone; its responses are then dropped.
        let _ = tx.send(Outbound::Response(response));
    });
    let waker = futures::task::noop_waker_ref();
    if task
        .as_mut()
        .poll(&mut Context::from_waker(waker))
        .is_pending()
    {
        // Spawned tasks are polled again at once, registering their own waker.
        tokio::spawn(task);
    }
}

/// Runs one request and builds its response.
async fn handle(node: &Node, request: proto::Request) -> proto::Response {
    let id = request.id;
    let result = match request.op {
        Some(request::Op::Call(call)) if !call.reliable_call_id.is_empty() => {
            let options = options(call.chain, call.timeout_micros, call.caller);
            reliable_call_object(
                node,
                &call.r#type,
                call.object_id,
                &call.method,
                &call.reliable_call_id,
                call.request,
                options,
            )
            .await
            .map(|outcome| response::Result::Reliable(reliable_to_proto(outcome)))
        }
        Some(request::Op::Call(call)) => {
            let options = options(call.chain, call.timeout_micros, call.caller);
            call_object(
                node,
                &call.r#type,
                call.object_id,
                &call.method,
                call.request,
                options,
            )
            .await
            .map(response::Result::Value)
        }
        Some(request::Op::Create(create)) => {
            let options = options(create.chain, create.timeout_micros, create.caller);
            node.create_object_with(&create.r#type, ObjectId::from(create.object_id), options)
                .await
                .map(|()| response::Result::Done(proto::Done {}))
        }
        Some(request::Op::Delete(delete)) => {
            let options = options(delete.chain, delete.timeout_micros, delete.caller);
            node.delete_object_with(&delete.r#type, ObjectId::from(delete.object_id), options)
                .await
                .map(|()| response::Result::Done(proto::Done {}))
        }
        None => Err(CallError::invalid_argument(
            "request carries no operation (call, create or delete)",
        )),
    };
    proto::Response {
        id,
        result: Some(result.unwrap_or_else(|err| response::Result::Failure(failure_of(&err)))),
    }
}

fn failure_of(err: &CallError) -> proto::Failure {
    proto::Failure {
        code: err.code().as_str().to_owned(),
        message: err.message().to_owned(),
    }
}

/// A reliable call's outcome as the node service sends it.
pub fn reliable_to_proto(outcome: ReliableOutcome) -> proto::Reliable {
    let status = outcome.status().as_str().to_owned();
    match outcome {
        ReliableOutcome::Success(payload) => proto::Reliable {
            status,
            value: Some(payload.into_any()),
            error: None,
        },
        ReliableOutcome::Failed(err) | ReliableOutcome::Skipped(err) => proto::Reliable {
            status,
            value: None,
            error: Some(failure_of(&err)),
        },
    }
}

/// A peer's reliable call, as the node service runs it (over the network or in-process).
async fn reliable_call_object(
    node: &Node,
    object_type: &str,
    id: impl Into<ObjectId>,
    method: &str,
    call_id: &str,
    request: Option<prost_types::Any>,
    options: CallOptions,
) -> Result<ReliableOutcome, CallError> {
    // An empty or malformed ID is refused (SKIPPED) where every call's ID is checked.
    let payload = Payload::Encoded(request.unwrap_or_else(empty_any));
    node.call_reliable_with(object_type, id, method, call_id, payload, options)
        .await
}

/// A peer's call, as the node service runs it (over the network or in-process).
async fn call_object(
    node: &Node,
    object_type: &str,
    id: impl Into<ObjectId>,
    method: &str,
    request: Option<prost_types::Any>,
    options: CallOptions,
) -> Result<prost_types::Any, CallError> {
    let id = id.into();
    if id.as_str().is_empty() {
        return Err(CallError::invalid_argument("object id is empty"));
    }
    let payload = Payload::Encoded(request.unwrap_or_else(empty_any));
    node.call_with(object_type, id, method, payload, options)
        .await
        .map(Payload::into_any)
}

/// A missing request travels as `google.protobuf.Empty`, so methods taking `Empty` can be called
/// without one.
fn empty_any() -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{}google.protobuf.Empty", goverse_core::TYPE_URL_PREFIX),
        value: Vec::new(),
    }
}

/// Converts a [`proto::Failure`] back into a [`CallError`].
pub fn failure_to_error(failure: proto::Failure) -> CallError {
    let code = ErrorCode::from_name(&failure.code).unwrap_or(ErrorCode::Unknown);
    CallError::new(code, failure.message)
}

/// The response half of a peer stream: everything queued when polled, as one batch.
#[doc(hidden)]
pub(crate) struct BatchStream {
    rx: mpsc::UnboundedReceiver<Outbound>,
    buf: Vec<Outbound>,
    pending_pushes: Arc<AtomicUsize>,
}

impl std::fmt::Debug for BatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchStream").finish_non_exhaustive()
    }
}

impl Stream for BatchStream {
    type Item = Result<ResponseBatch, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.rx.poll_recv_many(cx, &mut this.buf, MAX_BATCH) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => {
                let mut batch = ResponseBatch::default();
                for item in this.buf.drain(..) {
                    item.add_to(&mut batch, &this.pending_pushes);
                }
                Poll::Ready(Some(Ok(batch)))
            }
        }
    }
}

/// Opens an in-process peer stream for a gate running in the node's own process (as in
/// `goverse demo`): requests run straight in the caller's task, with the caller's identity handed
/// over as is, and pushes for clients whose id starts with `peer_address` arrive on the returned
/// [`LocalPushes`]; no socket, no encoding in between. Calls behave as over the network.
pub fn open_local(node: &Node, peer_address: &str) -> (LocalPeer, LocalPushes) {
    static SERIALS: AtomicU64 = AtomicU64::new(1 << 62);
    let (tx, rx) = mpsc::unbounded_channel();
    let pending_pushes = Arc::new(AtomicUsize::new(0));
    let serial = SERIALS.fetch_add(1, Ordering::Relaxed);
    let peer: Arc<str> = peer_address.into();
    node.inner().push().attach(
        peer.clone(),
        GateLink {
            serial,
            tx,
            pending_pushes: pending_pushes.clone(),
        },
    );
    (
        LocalPeer { node: node.clone() },
        LocalPushes {
            node: node.clone(),
            peer,
            serial,
            rx,
            pending_pushes,
            buf: Vec::with_capacity(64),
        },
    )
}

/// The request side of an in-process peer stream: the node service's operations, typed.
#[derive(Debug, Clone)]
pub struct LocalPeer {
    node: Node,
}

impl LocalPeer {
    /// Calls `object_type/id.method` with an encoded request (`None` means
    /// `google.protobuf.Empty`), as a peer's call over the network would run.
    pub async fn call(
        &self,
        object_type: &str,
        id: &str,
        method: &str,
        request: Option<prost_types::Any>,
        options: CallOptions,
    ) -> Result<prost_types::Any, CallError> {
        call_object(&self.node, object_type, id, method, request, options).await
    }

    /// Calls `object_type/id.method` as a reliable call with `call_id`, as a peer's reliable
    /// call over the network would run.
    pub async fn call_reliable(
        &self,
        object_type: &str,
        id: &str,
        method: &str,
        call_id: &str,
        request: Option<prost_types::Any>,
        options: CallOptions,
    ) -> Result<ReliableOutcome, CallError> {
        reliable_call_object(
            &self.node,
            object_type,
            id,
            method,
            call_id,
            request,
            options,
        )
        .await
    }

    /// Creates (activates) `object_type/id`.
    pub async fn create(
        &self,
        object_type: &str,
        id: &str,
        options: CallOptions,
    ) -> Result<(), CallError> {
        self.node.create_object_with(object_type, id, options).await
    }

    /// Deletes `object_type/id`.
    pub async fn delete(
        &self,
        object_type: &str,
        id: &str,
        options: CallOptions,
    ) -> Result<(), CallError> {
        self.node.delete_object_with(object_type, id, options).await
    }

    /// The node's types and descriptors, as the `Describe` RPC reports them.
    pub fn describe(&self) -> DescribeResponse {
        describe(&self.node)
    }
}

/// The push side of an in-process peer stream; dropping it detaches the peer.
#[derive(Debug)]
pub struct LocalPushes {
    node: Node,
    peer: Arc<str>,
    serial: u64,
    rx: mpsc::UnboundedReceiver<Outbound>,
    pending_pushes: Arc<AtomicUsize>,
    buf: Vec<Outbound>,
}

impl LocalPushes {
    /// The pushes queued since the last call, waiting for at least one; `None` once the node
    /// has detached the peer.
    pub async fn next(&mut self) -> Option<Vec<proto::Push>> {
        if self.rx.recv_many(&mut self.buf, MAX_BATCH).await == 0 {
            return None;
        }
        let mut batch = ResponseBatch::default();
        for item in self.buf.drain(..) {
            item.add_to(&mut batch, &self.pending_pushes);
        }
        Some(batch.pushes)
    }
}

impl Drop for LocalPushes {
    fn drop(&mut self) {
        self.node.inner().push().detach(&self.peer, self.serial);
    }
}
