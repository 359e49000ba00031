//! Requests and outcomes to and from the node protocol's messages.

use std::time::Duration;

use goverse_core::{CallError, ChainId, ClientIdentity, ErrorCode, ReliableOutcome};
use goverse_proto::node::{self as proto, request, response};

use crate::{Op, Outcome, Request};

/// An error as the protocol carries it.
pub fn failure_of(err: &CallError) -> proto::Failure {
    proto::Failure {
        code: err.code().as_str().to_owned(),
        message: err.message().to_owned(),
        not_served: err.is_not_served(),
    }
}

/// Converts a [`proto::Failure`] back into a [`CallError`].
pub fn failure_to_error(failure: proto::Failure) -> CallError {
    if failure.not_served {
        return CallError::not_served(failure.message);
    }
    let code = ErrorCode::from_name(&failure.code).unwrap_or(ErrorCode::Unknown);
    CallError::new(code, failure.message)
}

/// A reliable call's outcome as the protocol carried it, back as the runtime's. An unknown
/// status is a failure naming it.
pub fn reliable_from_proto(reliable: proto::Reliable) -> ReliableOutcome {
    let error = || {
        reliable.error.clone().map_or_else(
            || CallError::internal("a reliable outcome without its error"),
            failure_to_error,
        )
    };
    match reliable.status.as_str() {
        s if s == goverse_core::ReliableStatus::Success.as_str() => ReliableOutcome::Success(
            goverse_core::Payload::Encoded(reliable.value.clone().unwrap_or_default()),
        ),
        s if s == goverse_core::ReliableStatus::Skipped.as_str() => {
            ReliableOutcome::Skipped(error())
        }
        s if s == goverse_core::ReliableStatus::Failed.as_str() => ReliableOutcome::Failed(error()),
        other => ReliableOutcome::Failed(CallError::internal(format!(
            "a reliable outcome with unknown status {other:?}"
        ))),
    }
}

/// A reliable call's outcome as the protocol carries it.
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

/// What a response's result means to the caller.
pub(crate) fn outcome_of(result: Option<response::Result>) -> Outcome {
    match result {
        Some(response::Result::Failure(f)) => Err(failure_to_error(f)),
        Some(other) => Ok(other),
        None => Err(CallError::internal("node sent an empty response")),
    }
}

/// The response to request `id`.
pub(crate) fn response_of(id: u64, outcome: Outcome) -> proto::Response {
    proto::Response {
        id,
        result: Some(outcome.unwrap_or_else(|err| response::Result::Failure(failure_of(&err)))),
    }
}

pub(crate) fn micros(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |t| {
        u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1)
    })
}

#[cfg(test)]
fn caller_of(identity: Option<&ClientIdentity>) -> Option<proto::Caller> {
    identity.map(|identity| proto::Caller {
        client_id: identity.client_id().to_owned(),
        user_id: identity.user_id().to_owned(),
        roles: identity.roles().map(str::to_owned).collect(),
    })
}

/// A request as its wire message, built by prost's types (the reference the direct encoding
/// is tested against).
#[cfg(test)]
pub(crate) fn request_to_proto(request: &Request<'_>) -> request::Op {
    let timeout_micros = micros(request.timeout);
    let chain = request.chain.map_or(0, ChainId::raw);
    let caller = caller_of(request.caller.as_deref());
    let from_client = request.from_client;
    let (r#type, object_id) = (request.object_type.to_owned(), request.object_id.to_owned());
    match &request.op {
        Op::Call {
            method,
            request,
            reliable_call_id,
        } => request::Op::Call(proto::Call {
            r#type,
            object_id,
            method: (*method).to_owned(),
            request: request.clone(),
            chain,
            timeout_micros,
            caller,
            reliable_call_id: reliable_call_id.unwrap_or_default().to_owned(),
            from_client,
        }),
        Op::Create => request::Op::Create(proto::Create {
            r#type,
            object_id,
            chain,
            timeout_micros,
            caller,
            from_client,
        }),
        Op::Delete => request::Op::Delete(proto::Delete {
            r#type,
            object_id,
            chain,
            timeout_micros,
            caller,
            from_client,
        }),
    }
}

/// Sets the deadline a request carries.
#[cfg(test)]
pub(crate) fn set_timeout(op: &mut request::Op, timeout: Duration) {
    let micros = micros(Some(timeout));
    match op {
        request::Op::Call(call) => call.timeout_micros = micros,
        request::Op::Create(create) => create.timeout_micros = micros,
        request::Op::Delete(delete) => delete.timeout_micros = micros,
    }
}

fn timeout_of(micros: u64) -> Option<Duration> {
    (micros > 0).then(|| Duration::from_micros(micros))
}

fn chain_of(raw: u64) -> Option<ChainId> {
    (raw != 0).then(|| ChainId::from_raw(raw))
}

fn client_of(caller: Option<proto::Caller>) -> Option<std::sync::Arc<ClientIdentity>> {
    caller.map(|c| std::sync::Arc::new(ClientIdentity::new(c.client_id, c.user_id, c.roles)))
}

/// A wire request's parts, owned, so a [`Request`] can borrow from them.
pub(crate) struct Received {
    object_type: String,
    object_id: String,
    method: String,
    reliable_call_id: String,
    request: Option<prost_types::Any>,
    kind: Kind,
    chain: Option<ChainId>,
    timeout: Option<Duration>,
    caller: Option<std::sync::Arc<ClientIdentity>>,
    from_client: bool,
}

enum Kind {
    Call,
    Create,
    Delete,
}

impl Received {
    /// The parts of a wire request; `None` when it carries no operation.
    pub(crate) fn from_proto(op: Option<request::Op>) -> Option<Self> {
        Some(match op? {
            request::Op::Call(call) => Self {
                object_type: call.r#type,
                object_id: call.object_id,
                method: call.method,
                reliable_call_id: call.reliable_call_id,
                request: call.request,
                kind: Kind::Call,
                chain: chain_of(call.chain),
                timeout: timeout_of(call.timeout_micros),
                caller: client_of(call.caller),
                from_client: call.from_client,
            },
            request::Op::Create(create) => Self::lifecycle(
                Kind::Create,
                create.r#type,
                create.object_id,
                create.chain,
                create.timeout_micros,
                create.caller,
                create.from_client,
            ),
            request::Op::Delete(delete) => Self::lifecycle(
                Kind::Delete,
                delete.r#type,
                delete.object_id,
                delete.chain,
                delete.timeout_micros,
                delete.caller,
                delete.from_client,
            ),
        })
    }

    /// A create or delete: the fields they share.
    fn lifecycle(
        kind: Kind,
        object_type: String,
        object_id: String,
        chain: u64,
        timeout_micros: u64,
        caller: Option<proto::Caller>,
        from_client: bool,
    ) -> Self {
        Self {
            object_type,
            object_id,
            method: String::new(),
            reliable_call_id: String::new(),
            request: None,
            kind,
            chain: chain_of(chain),
            timeout: timeout_of(timeout_micros),
            caller: client_of(caller),
            from_client,
        }
    }

    /// The request, borrowing the strings.
    pub(crate) fn request(&mut self) -> Request<'_> {
        let op = match self.kind {
            Kind::Call => Op::Call {
                method: &self.method,
                request: self.request.take(),
                reliable_call_id: (!self.reliable_call_id.is_empty())
                    .then_some(self.reliable_call_id.as_str()),
            },
            Kind::Create => Op::Create,
            Kind::Delete => Op::Delete,
        };
        Request {
            object_type: &self.object_type,
            object_id: &self.object_id,
            op,
            chain: self.chain,
            timeout: self.timeout,
            caller: self.caller.take(),
            from_client: self.from_client,
        }
    }
}
