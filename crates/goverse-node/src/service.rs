//! The node as its peers see it: the [`Handler`] the transport hands every request to.
//!
//! The protocol itself (batched peer streams, the in-process peer) is `goverse-transport`'s;
//! this module maps its requests onto the node's calls and its peer streams onto the push hub.

use std::future::Future;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use goverse_core::{CallError, ChainId, ObjectId, Payload};
use goverse_proto::node::{self as proto, DescribeResponse, response};
use goverse_transport::{
    Handler, Incoming, Op, Outcome, PeerRefused, PeerSink, Request, ServeError, reliable_to_proto,
};
use tokio::net::TcpListener;

use crate::host::{CallScope, MethodRef, deadline_for};
use crate::node::NodeInner;
use crate::{MethodKind, Node};

/// Serves `node` to peers on `listener` until `shutdown` completes; then ends every peer stream
/// (requests already received still get their responses) and returns.
///
/// The node itself keeps running; call [`Node::shutdown`] afterwards.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // With a cluster secret configured, only peers that present it are admitted; with TLS, only
    // peers whose certificate names a cluster member.
    let secret = node.config().peer_secret.as_deref().map(Into::into);
    let limits = node.config().connection_limits;
    match &node.config().tls {
        Some(tls) => {
            let server = tls.server.clone();
            goverse_transport::serve_tls(node.handler(), listener, secret, limits, server, shutdown)
                .await
        }
        None => {
            goverse_transport::serve_with_limits(node.handler(), listener, secret, limits, shutdown)
                .await
        }
    }
}

impl Node {
    /// The node as the node protocol serves it: hand it to `goverse_transport::serve` (what
    /// [`serve`] does), or to an in-process link (`NodeLink::local`) for a gate in this process.
    pub fn handler(&self) -> Arc<dyn goverse_transport::Handler> {
        Arc::new(NodeHandler {
            node: HeldNode::Strong(self.clone()),
        })
    }
}

/// [`serve`] on any stream of incoming connections (a `goverse_transport::MemoryNetwork`
/// listener, a TLS acceptor), with the node's secret and connection limits.
pub async fn serve_incoming<S, IO>(
    node: Node,
    incoming: S,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: goverse_transport::Accepted,
{
    let secret = node.config().peer_secret.as_deref().map(Into::into);
    let limits = node.config().connection_limits;
    goverse_transport::serve_incoming(node.handler(), incoming, secret, limits, shutdown).await
}

/// The node behind the transport.
pub(crate) struct NodeHandler {
    pub(crate) node: HeldNode,
}

/// How a handler holds its node: strongly for servers and gates, weakly for the node's own
/// router (which the node holds).
pub(crate) enum HeldNode {
    Strong(Node),
    Weak(Weak<NodeInner>),
}

impl HeldNode {
    fn get(&self) -> Option<Node> {
        match self {
            Self::Strong(node) => Some(node.clone()),
            Self::Weak(inner) => inner.upgrade().map(Node::from_inner),
        }
    }
}

impl NodeHandler {
    /// Runs `request` on the node, borrowing a strongly held node rather than cloning it.
    async fn run(&self, request: Request<'_>) -> Outcome {
        match &self.node {
            HeldNode::Strong(node) => handle(node, request).await,
            HeldNode::Weak(inner) => match inner.upgrade() {
                Some(inner) => handle(&Node::from_inner(inner), request).await,
                None => Err(CallError::not_served("the node has stopped")),
            },
        }
    }
}

impl Handler for NodeHandler {
    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(self.run(request))
    }

    fn serve(self: Arc<Self>, mut incoming: Incoming) -> BoxFuture<'static, ()> {
        // The request's whole work in one allocation: `run`'s future inline.
        Box::pin(async move {
            let outcome = self.run(incoming.request()).await;
            incoming.reply(outcome);
        })
    }

    fn describe(&self) -> DescribeResponse {
        match self.node.get() {
            Some(node) => describe(&node),
            None => DescribeResponse::default(),
        }
    }

    fn status(&self) -> goverse_proto::upstream::StatusResponse {
        match self.node.get() {
            Some(node) => {
                let inner = node.inner();
                goverse_proto::upstream::StatusResponse {
                    advertise_addr: inner.address().to_string(),
                    num_objects: node.stats().active_objects as i64,
                    uptime_seconds: inner.clock.elapsed().as_secs() as i64,
                }
            }
            None => goverse_proto::upstream::StatusResponse::default(),
        }
    }

    fn list_objects(&self) -> goverse_proto::upstream::ListObjectsResponse {
        let Some(node) = self.node.get() else {
            return Default::default();
        };
        let inner = node.inner();
        // Activation times are kept in the node's clock; the epoch is now minus their age.
        let now_ms = inner.now_ms();
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let objects = inner
            .directory
            .all_activations()
            .into_iter()
            .map(|a| {
                let age = std::time::Duration::from_millis(now_ms.saturating_sub(a.created_ms()));
                goverse_proto::upstream::ObjectInfo {
                    r#type: a.type_name().to_owned(),
                    id: a.id().to_string(),
                    creation_time: now_unix.saturating_sub(age).as_secs() as i64,
                }
            })
            .collect();
        goverse_proto::upstream::ListObjectsResponse { objects }
    }

    fn peer_opened(&self, peer: Arc<str>, sink: PeerSink) -> Result<(), PeerRefused> {
        match self.node.get() {
            Some(node) => node.inner().push().attach(peer, sink),
            None => Err(PeerRefused::Stopped),
        }
    }

    fn peer_closed(&self, peer: &str, serial: u64) {
        if let Some(node) = self.node.get() {
            node.inner().push().detach(peer, serial);
        }
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
                        request_type: (m.request)().to_owned(),
                        response_type: (m.response)().to_owned(),
                        read_only: m.kind == MethodKind::Read,
                    })
                    .collect(),
            })
            .collect(),
        file_descriptor_set: node.inner().descriptors().to_vec(),
    }
}

/// Runs one peer request on the node. A request for an object this node does not serve is
/// refused as not served (nothing runs): the peer routed it by its map, and its router sends it
/// again once the map shows the owner.
/// A client's request from a gate, judged by the rules again (the gate judged it first): a
/// gate with other or no rules cannot take an object ID the cluster's rules keep from clients.
fn check_client_request(
    rules: &goverse_core::rules::Rules,
    request: &Request<'_>,
) -> Result<(), CallError> {
    use goverse_core::rules::Lifecycle;
    let (object_type, id) = (request.object_type, request.object_id);
    match &request.op {
        Op::Call { method, .. } => rules.check_client_call(object_type, id, method),
        Op::Create => rules.check_client_lifecycle(Lifecycle::Create, object_type, id),
        Op::Delete => rules.check_client_lifecycle(Lifecycle::Delete, object_type, id),
    }
}

async fn handle(node: &Node, request: Request<'_>) -> Outcome {
    // A node with no rules configured leaves the judging to its gates (a node embedded in a
    // program whose gate holds the rules); with rules, it judges again.
    if request.from_client
        && let Some(rules) = &node.inner().client_rules
        && let Err(err) = check_client_request(rules, &request)
    {
        // A refused reliable call did not take effect: SKIPPED, as the gate would answer.
        return match request.op {
            Op::Call {
                reliable_call_id: Some(_),
                ..
            } => Ok(response::Result::Reliable(reliable_to_proto(
                goverse_core::ReliableOutcome::Skipped(err),
            ))),
            _ => Err(err),
        };
    }
    let inner = node.inner();
    let scope = CallScope {
        chain: request.chain.unwrap_or_else(ChainId::new_root),
        deadline: deadline_for(inner.call_timeout(), None, request.timeout),
        client: request.caller,
        forward: false,
    };
    let object_type = request.object_type;
    let id = ObjectId::from(request.object_id);
    match request.op {
        Op::Call {
            method,
            request,
            reliable_call_id: Some(call_id),
        } => {
            // An empty or malformed ID is refused (SKIPPED) where every call's ID is checked.
            let payload = Payload::Encoded(request.unwrap_or_else(empty_any));
            // The rarer operations are boxed, so the plain call's future stays small.
            Box::pin(inner.invoke_reliable(
                object_type,
                &id,
                MethodRef::Name(method),
                call_id,
                payload,
                scope,
            ))
            .await
            .map(|outcome| response::Result::Reliable(reliable_to_proto(outcome)))
        }
        Op::Call {
            method, request, ..
        } => {
            if id.as_str().is_empty() {
                return Err(CallError::invalid_argument("object id is empty"));
            }
            let payload = Payload::Encoded(request.unwrap_or_else(empty_any));
            inner
                .invoke(object_type, &id, MethodRef::Name(method), payload, scope)
                .await
                .map(|payload| response::Result::Value(payload.into_any()))
        }
        Op::Create => Box::pin(inner.create(object_type, &id, scope))
            .await
            .map(|()| response::Result::Done(proto::Done {})),
        Op::Delete => Box::pin(inner.delete(object_type, &id, scope))
            .await
            .map(|()| response::Result::Done(proto::Done {})),
    }
}

/// A missing request travels as `google.protobuf.Empty`, so methods taking `Empty` can be called
/// without one.
fn empty_any() -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{}google.protobuf.Empty", goverse_core::TYPE_URL_PREFIX),
        value: Vec::new(),
    }
}
