//! Where a call starts: a [`Node`] handle, a running turn, or a turn starting a new chain.

use std::sync::Arc;
use tokio::time::Instant;

use goverse_core::{ChainId, ClientIdentity};

use crate::context::NewChain;
use crate::host::Host;
use crate::node::NodeInner;
use crate::{Node, ObjectContext};

/// Where a call comes from: a [`Node`] handle (a new call chain), an [`ObjectContext`] (the
/// running turn's chain, deadline and client), or [`ObjectContext::new_chain`]. Generated
/// `…Ref` stubs take any `Caller`.
pub trait Caller: sealed::Sealed {
    #[doc(hidden)]
    fn call_origin(&self) -> CallOrigin<'_>;
}

mod sealed {
    pub trait Sealed {}
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

/// What runs the call: the node itself (calls from a handle, statically dispatched) or the
/// host of a running turn.
#[derive(Debug)]
pub(crate) enum Via<'a> {
    Node(&'a Arc<NodeInner>),
    Host(&'a Arc<dyn Host>),
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
