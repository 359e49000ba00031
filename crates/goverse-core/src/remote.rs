//! Calls that leave the process through something other than a node: a client connected to a
//! gate. Generated `…Ref` stubs call through any [`RemoteCaller`] as they call through a node.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::CallError;

/// One call a stub hands to a [`RemoteCaller`]: the target, the method's wire name, the request
/// already encoded, and the stub's options.
#[derive(Debug, Clone)]
pub struct RemoteCall<'a> {
    /// The object's type name.
    pub object_type: &'a str,
    /// The object's ID.
    pub object_id: &'a str,
    /// The method's wire name (`Add`).
    pub method: &'a str,
    /// The request as `google.protobuf.Any`.
    pub request: prost_types::Any,
    /// How long the caller waits; `None` means the caller's default.
    pub timeout: Option<Duration>,
    /// The call id of a reliable (exactly-once) call.
    pub reliable_call_id: Option<&'a str>,
}

/// The boxed future a [`RemoteCaller`] answers with.
pub type RemoteAnswer<'a> =
    Pin<Box<dyn Future<Output = Result<prost_types::Any, CallError>> + Send + 'a>>;

/// Something that carries calls to objects from outside any node, such as a client connected to
/// gates. Implemented by `goverse_client::Client`; generated stubs accept any implementation.
pub trait RemoteCaller: Send + Sync {
    /// Makes `call` and returns the response message, or why there is none.
    fn call_remote<'a>(&'a self, call: RemoteCall<'a>) -> RemoteAnswer<'a>;
}
