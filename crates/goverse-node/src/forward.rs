//! The one fallback of the call path: an operation this node refused as not served (nothing
//! ran) goes to the node that serves its object, through the router, by the route the call
//! parsed.

use goverse_core::{CallError, Payload, ReliableOutcome};
use goverse_proto::node::response;
use goverse_transport::{Op, Request};
use tokio::time::Instant;

use crate::host::MethodRef;
use crate::lifecycle::Phase;
use crate::node::NodeInner;
use crate::operation::{NotHere, Onward, Operation, Target};

impl NodeInner {
    /// Whether calls for objects served elsewhere can be sent on: the router runs until the
    /// node has stopped.
    pub(crate) fn forwards(&self) -> bool {
        self.router.get().is_some() && self.lifecycle.phase() != Phase::Stopped
    }

    /// What an operation this node refused comes to: sent to the node serving the object when
    /// the call was made here (`onward.forward`) and the node still routes, its answer
    /// returned; otherwise the refusal itself (`Err`, not served).
    pub(crate) async fn fall_back(
        &self,
        target: Target<'_>,
        not_here: Box<NotHere<'_>>,
        onward: Onward,
    ) -> Result<response::Result, CallError> {
        let NotHere {
            why,
            operation,
            client,
        } = *not_here;
        let router = match self.router.get() {
            Some(router) if onward.forward && self.forwards() => router,
            _ => {
                return Err(why.unwrap_or_else(|| {
                    CallError::not_served(format!(
                        "node {} does not serve the shard of {}",
                        self.address, target.id
                    ))
                }));
            }
        };
        let op = match operation {
            Operation::Call(method, request) => Op::Call {
                method: self.method_name(target.type_name, method)?,
                request: Some(request.into_any()),
                reliable_call_id: None,
            },
            Operation::Reliable(method, call_id, request) => Op::Call {
                method: self.method_name(target.type_name, method)?,
                request: Some(request.into_any()),
                reliable_call_id: Some(call_id),
            },
            Operation::Create => Op::Create,
            Operation::Delete => Op::Delete,
        };
        let request = Request {
            object_type: target.type_name,
            object_id: target.id.as_str(),
            op,
            chain: Some(onward.chain),
            timeout: None,
            caller: client,
            // Checked against the rules where it entered the cluster's nodes.
            from_client: false,
        };
        let timeout = onward.deadline.saturating_duration_since(Instant::now());
        router
            .request_by_route(request, target.route, timeout)
            .await
    }

    /// The wire name of the method `method` refers to.
    fn method_name<'m>(
        &'m self,
        type_name: &str,
        method: MethodRef<'m>,
    ) -> Result<&'m str, CallError> {
        match method {
            MethodRef::Name(name) => Ok(name),
            MethodRef::Index(index, _) => Ok(self.entry(type_name)?.methods()[index].name),
        }
    }
}

/// A forwarded call's answer as the value it carries.
pub(crate) fn value(answer: response::Result) -> Result<Payload, CallError> {
    match answer {
        response::Result::Value(any) => Ok(Payload::Encoded(any)),
        other => Err(unexpected(&other)),
    }
}

/// A forwarded reliable call's answer as its outcome.
pub(crate) fn reliable(answer: response::Result) -> Result<ReliableOutcome, CallError> {
    match answer {
        response::Result::Reliable(reliable) => {
            Ok(goverse_transport::reliable_from_proto(reliable))
        }
        other => Err(unexpected(&other)),
    }
}

/// A response of another kind than the request asked for: a peer that speaks the protocol
/// wrongly.
fn unexpected(result: &response::Result) -> CallError {
    CallError::internal(format!(
        "a node answered with an unexpected response: {result:?}"
    ))
}

/// What the links to other nodes report: nodes push only to gates, so nothing arrives here.
pub(crate) struct PeerEvents;

impl goverse_transport::LinkEvents for PeerEvents {
    fn connected(&self, _described: &goverse_proto::node::DescribeResponse) {}

    fn pushed(&self, push: goverse_proto::node::Push) {
        tracing::debug!(
            clients = push.client_ids.len(),
            "a node pushed to a node; dropped"
        );
    }
}
