use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use goverse_core::{ChainId, ObjectId, ShardId};

use crate::activation::{Activation, ActivationDyn};
use crate::host::Host;
use crate::{Dispatch, MethodSpec};

/// How instances of a registered type are built and how long they may sit idle.
pub struct TypeOptions<T> {
    factory: Arc<dyn Fn(&ObjectId) -> T + Send + Sync>,
    idle_timeout: Option<Duration>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Dispatch + Default> Default for TypeOptions<T> {
    fn default() -> Self {
        Self::with_factory(|_| T::default())
    }
}

impl<T: Dispatch> TypeOptions<T> {
    /// Builds each instance with `factory`, given the object's ID.
    pub fn with_factory(factory: impl Fn(&ObjectId) -> T + Send + Sync + 'static) -> Self {
        Self {
            factory: Arc::new(factory),
            idle_timeout: None,
            _type: PhantomData,
        }
    }

    /// This type's idle timeout, overriding the node's. Zero: never deactivate when idle.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }
}

impl<T> fmt::Debug for TypeOptions<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypeOptions")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// A registered type, type-erased.
pub(crate) trait TypeEntry: Send + Sync {
    fn methods(&self) -> &'static [MethodSpec];
    fn method_index(&self, name: &str) -> Option<usize>;
    fn idle_timeout(&self) -> Option<Duration>;
    fn persistent(&self) -> bool;
    fn new_activation(
        &self,
        host: Arc<dyn Host>,
        id: ObjectId,
        shard: ShardId,
        chain: ChainId,
        now_ms: u64,
        default_idle: Duration,
    ) -> Arc<dyn ActivationDyn>;
}

impl<T: Dispatch> TypeEntry for TypeOptions<T> {
    fn methods(&self) -> &'static [MethodSpec] {
        T::METHODS
    }

    fn method_index(&self, name: &str) -> Option<usize> {
        T::method_index(name)
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    fn persistent(&self) -> bool {
        T::PERSISTENT
    }

    fn new_activation(
        &self,
        host: Arc<dyn Host>,
        id: ObjectId,
        shard: ShardId,
        chain: ChainId,
        now_ms: u64,
        default_idle: Duration,
    ) -> Arc<dyn ActivationDyn> {
        let object = (self.factory)(&id);
        let idle = self.idle_timeout.unwrap_or(default_idle);
        Arc::new(Activation::new(
            host, id, shard, object, idle, chain, now_ms,
        ))
    }
}

/// A registered type as the node reports it.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    /// The type name.
    pub name: &'static str,
    /// Its methods.
    pub methods: &'static [MethodSpec],
}
