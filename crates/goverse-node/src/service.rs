//! The node as its peers see it: the [`Handler`] the transport hands every request to.
//!
//! The protocol itself (batched peer streams, the in-process peer) is `goverse-transport`'s;
//! this module maps its requests onto the node's calls and its peer streams onto the push hub.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use goverse_core::{CallError, ObjectId, Payload};
use goverse_proto::node::{self as proto, DescribeResponse, response};
use goverse_transport::{Handler, Op, Outcome, PeerSink, Request, ServeError, reliable_to_proto};
use tokio::net::TcpListener;

use crate::{CallOptions, MethodKind, Node};

/// Serves `node` to peers on `listener` until `shutdown` completes; then ends every peer stream
/// (requests already received still get their responses) and returns.
///
/// The node itself keeps running; call [`Node::shutdown`] afterwards.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    goverse_transport::serve(node.handler(), listener, shutdown).await
}

/// The node behind the transport.
pub(crate) struct NodeHandler {
    pub(crate) node: Node,
}

impl Handler for NodeHandler {
    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(handle(&self.node, request))
    }

    fn describe(&self) -> DescribeResponse {
        describe(&self.node)
    }

    fn peer_opened(&self, peer: Arc<str>, sink: PeerSink) {
        self.node.inner().push().attach(peer, sink);
    }

    fn peer_closed(&self, peer: &str, serial: u64) {
        self.node.inner().push().detach(peer, serial);
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

/// Runs one peer request on the node.
async fn handle(node: &Node, request: Request<'_>) -> Outcome {
    let options = CallOptions {
        timeout: request.timeout,
        chain: request.chain,
        client: request.caller,
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
            node.call_reliable_with(object_type, id, method, call_id, payload, options)
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
            node.call_with(object_type, id, method, payload, options)
                .await
                .map(|payload| response::Result::Value(payload.into_any()))
        }
        Op::Create => node
            .create_object_with(object_type, id, options)
            .await
            .map(|()| response::Result::Done(proto::Done {})),
        Op::Delete => node
            .delete_object_with(object_type, id, options)
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
