//! Where a call starts: a [`Node`] handle, a running turn, or a turn starting a new chain.

use std::sync::Arc;
use tokio::time::Instant;

use goverse_core::{ChainId, ClientIdentity, RemoteCaller};

use crate::context::NewChain;
use crate::host::Host;
use crate::node::NodeInner;
use crate::{Node, ObjectContext};

/// Where a call comes from: a [`Node`] handle (a new call chain), an [`ObjectContext`] (the
/// running turn's chain, deadline and client), [`ObjectContext::new_chain`], or a
/// [`RemoteCaller`] outside any node (a client connected to gates). Generated `…Ref` stubs take
/// any `Caller`.
pub trait Caller: sealed::Sealed {
    #[doc(hidden)]
    fn call_origin(&self) -> CallOrigin<'_>;
}

mod sealed {
    pub trait Sealed {}
    impl<T: goverse_core::RemoteCaller> Sealed for T {}
    impl Sealed for crate::Node {}
    impl Sealed for crate::ObjectContext {}
    impl Sealed for crate::NewChain<'_> {}
}

/// The node, chain and deadline a call starts from.
#[doc(hidden)]
#[derive(Debug)]
pub struct CallOrigin<'a> {
    pub(crate) via: Via<'a>,
    pub(crate) chain: Option<ChainId>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) client: Option<&'a Arc<ClientIdentity>>,
}

/// What runs the call: the node itself (calls from a handle, statically dispatched), the host
/// of a running turn, or a remote caller.
pub(crate) enum Via<'a> {
    Node(&'a Arc<NodeInner>),
    Host(&'a Arc<dyn Host>),
    /// Outside any node: the request is encoded and carried by the caller.
    Remote(&'a dyn RemoteCaller),
}

impl std::fmt::Debug for Via<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node(_) => "Via::Node",
            Self::Host(_) => "Via::Host",
            Self::Remote(_) => "Via::Remote",
        })
    }
}

impl<T: RemoteCaller> Caller for T {
    fn call_origin(&self) -> CallOrigin<'_> {
        CallOrigin {
            via: Via::Remote(self),
            chain: None,
            deadline: None,
            client: None,
        }
    }
}

impl Caller for ObjectContext {
    fn call_origin(&self) -> CallOrigin<'_> {
        CallOrigin {
            via: Via::Host(self.host()),
            chain: Some(self.chain()),
            deadline: Some(self.deadline()),
            client: self.client_arc(),
        }
    }
}

impl Caller for NewChain<'_> {
    fn call_origin(&self) -> CallOrigin<'_> {
        CallOrigin {
            via: Via::Host(self.context.host()),
            chain: None,
            deadline: None,
            client: None,
        }
    }
}

impl Caller for Node {
    fn call_origin(&self) -> CallOrigin<'_> {
        CallOrigin {
            via: Via::Node(self.inner()),
            chain: None,
            deadline: None,
            client: None,
        }
    }
}
