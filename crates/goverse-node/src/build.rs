//! Building a node: the builder takes the object types, stores and connector, checks the
//! configuration and the store, wires the directory, membership, router and the node's service
//! handler together, joins the cluster and starts the background work.

use std::fmt;
use std::sync::Arc;

use goverse_cluster::{ClusterStore, Keys, MapView, MemoryClusterStore};
use goverse_core::metrics::Registry;
use goverse_core::{InvalidSetting, NodeAddr};
use goverse_persistence::ObjectStore;
use goverse_transport::{Connector, Router};

use crate::autoload::AutoLoaded;
use crate::directory::ShardDirectory;
use crate::forward::PeerEvents;
use crate::lifecycle::Lifecycle;
use crate::membership::{ClusterSettings, Membership};
use crate::metrics::{CallMetrics, NodeSource};
use crate::node::{Counters, FastMap, Node, NodeError, NodeInner};
use crate::push::PushHub;
use crate::registry::{TypeEntry, TypeOptions};
use crate::service::{HeldNode, NodeHandler};
use crate::store::StoreLink;
use crate::{Dispatch, NodeConfig};

/// Builds and starts a [`Node`].
pub struct NodeBuilder {
    config: NodeConfig,
    registry: FastMap<&'static str, Box<dyn TypeEntry>>,
    duplicate: Option<&'static str>,
    store: Option<Arc<dyn ObjectStore>>,
    cluster: Option<Arc<dyn ClusterStore>>,
    connector: Option<Arc<dyn Connector>>,
    descriptors: Vec<u8>,
    metrics: Option<Registry>,
    call_metrics: bool,
}

impl fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Registers `T`, building instances with `T::default()`.
    pub fn register<T: Dispatch + Default>(self) -> Self {
        self.register_with(TypeOptions::<T>::default())
    }

    /// Registers `T` with explicit options (factory, idle timeout).
    pub fn register_with<T: Dispatch>(mut self, options: TypeOptions<T>) -> Self {
        if self
            .registry
            .insert(T::TYPE_NAME, Box::new(options))
            .is_some()
        {
            self.duplicate = Some(T::TYPE_NAME);
        }
        self
    }

    /// Keeps `entry`'s objects alive on the cluster (as a `cluster.auto_load_objects` entry of
    /// the configuration does): how a library's registration brings the objects it needs, such
    /// as one manager per node. An entry the configuration has already is not added twice.
    pub fn auto_load(mut self, entry: crate::AutoLoad) -> Self {
        if !self.config.auto_load.contains(&entry) {
            self.config.auto_load.push(entry);
        }
        self
    }

    /// Persists object state in `store`. Without one, nothing is persisted.
    pub fn object_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Coordinates through `cluster`. Default: a private in-memory store (single node).
    pub fn cluster_store(mut self, cluster: Arc<dyn ClusterStore>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// How this node links to the other nodes of its cluster; by default over the network
    /// (`goverse_transport::NetworkConnector`). Nodes of one process may be linked in-process.
    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Publishes the protobuf descriptors of the registered types' messages: an encoded
    /// `google.protobuf.FileDescriptorSet`, as `prost-build`/`protox` write it. Gates use them to
    /// accept and return plain JSON. The well-known types (`google.protobuf.*`) need no
    /// descriptors. May be called more than once; the sets are concatenated (an encoded
    /// `FileDescriptorSet` is a repeated field, so concatenation merges them).
    pub fn file_descriptor_set(mut self, encoded: &[u8]) -> Self {
        self.descriptors.extend_from_slice(encoded);
        self
    }

    /// Adds the node's metrics to `registry` (scraped as long as the node lives). Without one,
    /// the node still counts (its [`Node::stats`] and [`Node::metrics`] read the figures) in a
    /// registry of its own.
    pub fn metrics(mut self, registry: Registry) -> Self {
        self.metrics = Some(registry);
        self
    }

    /// Whether each call's duration, queue wait and execution time are recorded (on by default;
    /// a few relaxed atomic adds and three clock reads per call). Off, the per-method and
    /// per-shard call figures stay at zero.
    pub fn call_metrics(mut self, enabled: bool) -> Self {
        self.call_metrics = enabled;
        self
    }

    /// Validates the configuration, joins the cluster (registering the node on a lease and
    /// claiming shards) and starts background work. Must run inside a tokio runtime.
    pub async fn start(self) -> Result<Node, NodeError> {
        self.config.validate()?;
        if let Some(name) = self.duplicate {
            return Err(NodeError::DuplicateType(name));
        }
        // The store is checked before anything is claimed: a node that could not write must not
        // start serving (and lose every write at shutdown).
        if let Some(store) = &self.store {
            store.check().await.map_err(|cause| NodeError::Store {
                store: store.describe(),
                cause,
            })?;
        }
        let address = NodeAddr::new(self.config.address.as_str());
        let auto_loaded = AutoLoaded::new(
            &self.config.auto_load,
            &address,
            self.config.shard_count,
            |name| self.registry.get_key_value(name).map(|(name, _)| *name),
        )?;
        let client_rules =
            if self.config.access_rules.is_empty() && self.config.lifecycle_rules.is_empty() {
                None
            } else {
                let rules = goverse_core::rules::Rules::new(
                    &self.config.access_rules,
                    &self.config.lifecycle_rules,
                )?;
                Some(rules)
            };
        let lifecycle = Lifecycle::new();
        let store = self
            .store
            .map(|store| StoreLink::start(store, &lifecycle.tasks, lifecycle.store.clone()));
        let keys = Keys::new(&self.config.cluster_prefix)
            .map_err(|why| InvalidSetting::new("cluster_prefix", why))?;
        let directory = Arc::new(ShardDirectory::new(
            address.clone(),
            self.config.shard_count,
        ));
        let cluster: Arc<dyn ClusterStore> = self
            .cluster
            .unwrap_or_else(|| Arc::new(MemoryClusterStore::new()));
        // The cluster's shard count is settled before anything is written to it.
        let shard_count = self.config.shard_count;
        let view = async {
            goverse_cluster::settle_shard_count(&*cluster, &keys, shard_count).await?;
            MapView::start(cluster.clone(), keys.clone(), shard_count).await
        };
        let view = match view.await {
            Ok(view) => view,
            Err(err) => {
                lifecycle.stopped();
                return Err(err.into());
            }
        };
        let membership = Arc::new(Membership::new(
            cluster,
            keys,
            address.clone(),
            ClusterSettings {
                lease_ttl: self.config.lease_ttl,
                min_quorum: self.config.min_quorum,
                stability_window: self.config.stability_window,
                stuck_timeout: self.config.stuck_shard_timeout,
                info: goverse_cluster::ProcessInfo {
                    ops: self.config.ops_address.clone(),
                },
            },
            directory.clone(),
            store.as_ref().map(|s| s.store().clone()),
            view,
        ));
        let cluster_counters = membership.counters().clone();
        let call_metrics =
            CallMetrics::new(self.call_metrics, &self.registry, self.config.shard_count);
        let inner = Arc::new_cyclic(|node| NodeInner {
            address,
            config: self.config,
            registry: self.registry,
            directory,
            store,
            membership,
            router: std::sync::OnceLock::new(),
            lifecycle,
            clock: tokio::time::Instant::now(),
            counters: Counters::default(),
            push: PushHub::default(),
            descriptors: self.descriptors,
            auto_loaded,
            auto_load_wake: tokio::sync::Notify::new(),
            client_rules,
            call_metrics,
            cluster_counters,
            metrics_source: Arc::new(NodeSource { node: node.clone() }),
            metrics: self.metrics.unwrap_or_default(),
        });
        inner.metrics.add_source(&inner.metrics_source);
        inner.metrics.add_source(&goverse_transport::stats_source());
        let connector = self.connector.unwrap_or_else(|| {
            let secret = inner.config.peer_secret.as_deref().map(Into::into);
            match &inner.config.tls {
                Some(tls) => Arc::new(goverse_transport::NetworkConnector::over(
                    Arc::new(goverse_transport::TlsDialer::new(
                        Arc::new(goverse_transport::TcpDialer),
                        tls.client.clone(),
                    )),
                    secret,
                )),
                None => Arc::new(goverse_transport::NetworkConnector::with_secret(secret)),
            }
        });
        let router = Router::for_node(
            inner.membership.view().clone(),
            inner.config.shard_count,
            connector.clone(),
            inner.address.clone(),
            Arc::new(NodeHandler {
                node: HeldNode::Weak(Arc::downgrade(&inner)),
            }),
            Arc::new(PeerEvents),
            inner.lifecycle.links.clone(),
        );
        let _ = inner.router.set(router);
        if let Err(err) = inner.membership.join().await {
            inner.lifecycle.stopped();
            return Err(err.into());
        }
        inner.lifecycle.running();
        inner.start_background(connector);
        tracing::info!(address = %inner.address, shards = inner.config.shard_count,
            types = inner.registry.len(), "node started");
        Ok(Node::from_inner(inner))
    }
}

impl Node {
    /// A builder for a node with `config`.
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            registry: FastMap::default(),
            duplicate: None,
            store: None,
            cluster: None,
            connector: None,
            descriptors: Vec::new(),
            metrics: None,
            call_metrics: true,
        }
    }
}
