//! [`TestCluster`]: nodes and gates of one cluster inside the test's process, linked over the
//! real node protocol (encoder, batching, lanes, HTTP/2) on in-memory pipes, coordinated by the
//! in-memory cluster store, persisting to a store of the test's choice. Everything runs on tokio
//! time, so tests on paused time drive leases, stability windows and hand-overs without real
//! waiting. Each node has its own connection to the coordinator and its own address on the
//! network, either of which a test can cut.

use std::sync::Arc;
use std::time::Duration;

use goverse_cluster::{ClusterStore, MemoryClusterStore};
use goverse_gate::{AllowAnonymous, ClusterNetwork, Gate, GateConfig, GateEventHandler};
use goverse_node::{Node, NodeBuilder, NodeConfig, ShutdownReport};
use goverse_persistence::{MemoryStore, ObjectStore};
use goverse_transport::{MemoryNetwork, NetworkConnector};
use tokio_util::sync::CancellationToken;

/// What every node of a [`TestCluster`] registers (its object types, descriptors).
pub type Setup = Arc<dyn Fn(NodeBuilder) -> NodeBuilder + Send + Sync>;

/// How a [`TestCluster`] is made; [`TestCluster::builder`].
pub struct TestClusterBuilder {
    config: NodeConfig,
    objects: Arc<dyn ObjectStore>,
    setup: Setup,
}

impl std::fmt::Debug for TestClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClusterBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TestClusterBuilder {
    /// Registers what every node serves: `setup` is applied to each node's builder.
    pub fn types(
        mut self,
        setup: impl Fn(NodeBuilder) -> NodeBuilder + Send + Sync + 'static,
    ) -> Self {
        self.setup = Arc::new(setup);
        self
    }

    /// Shards in the cluster (default 64).
    pub fn shards(mut self, count: u32) -> Self {
        self.config.shard_count = count;
        self
    }

    /// Changes the configuration every node starts with (address and shard count are set by
    /// the cluster).
    pub fn configure(mut self, change: impl FnOnce(&mut NodeConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Persists to `store` (default: a fresh in-memory store shared by the nodes).
    pub fn object_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.objects = store;
        self
    }

    /// Starts the cluster with `nodes` nodes, one after the other.
    pub async fn start(self, nodes: usize) -> TestCluster {
        let mut cluster = TestCluster {
            coordinator: MemoryClusterStore::new(),
            network: MemoryNetwork::new(),
            objects: self.objects,
            setup: self.setup,
            config: self.config,
            nodes: Vec::new(),
            gates: Vec::new(),
            next: 1,
        };
        for _ in 0..nodes {
            cluster.add_node().await;
        }
        cluster
    }
}

/// One node of a [`TestCluster`], with its own coordinator connection and network address.
pub struct TestNode {
    /// The node.
    pub node: Node,
    coordinator: MemoryClusterStore,
    serving: CancellationToken,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("address", self.node.address())
            .finish_non_exhaustive()
    }
}

/// Nodes and gates of one cluster in this process, over the real node protocol on in-memory
/// pipes. See the module documentation.
pub struct TestCluster {
    coordinator: MemoryClusterStore,
    network: Arc<MemoryNetwork>,
    objects: Arc<dyn ObjectStore>,
    setup: Setup,
    config: NodeConfig,
    nodes: Vec<TestNode>,
    gates: Vec<Gate>,
    next: u16,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("nodes", &self.nodes)
            .field("gates", &self.gates.len())
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// A builder: 64 shards, a 3 s lease, a 2 s stability window, a quorum of 1, no periodic
    /// saves, an in-memory object store, no types.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            config: NodeConfig {
                shard_count: 64,
                lease_ttl: Duration::from_secs(3),
                stability_window: Duration::from_secs(2),
                save_interval: Duration::ZERO,
                ..NodeConfig::default()
            },
            objects: Arc::new(MemoryStore::new()),
            setup: Arc::new(|builder| builder),
        }
    }

    /// Starts one more node (addresses `127.0.0.1:47001`, `:47002`, … on the in-memory
    /// network) and waits until it serves its node protocol. Returns it.
    pub async fn add_node(&mut self) -> &Node {
        self.add_node_with(|_| {}).await
    }

    /// [`TestCluster::add_node`] with this node's configuration changed by `change`.
    pub async fn add_node_with(&mut self, change: impl FnOnce(&mut NodeConfig)) -> &Node {
        let n = self.next;
        self.next += 1;
        let mut config = self.config.clone();
        config.address = format!("127.0.0.1:{}", 47000 + n);
        change(&mut config);
        let coordinator = self.coordinator.connection();
        let secret = config.peer_secret.as_deref().map(Into::into);
        let connector = NetworkConnector::over(self.network.clone(), secret);
        // Listening before the node starts, so peers reach it as soon as it registers.
        let incoming = self
            .network
            .listen(&config.address)
            .expect("each test node has its own address");
        let node = (self.setup)(Node::builder(config))
            .cluster_store(Arc::new(coordinator.clone()))
            .object_store(self.objects.clone())
            .connector(Arc::new(connector))
            .start()
            .await
            .expect("a test node starts");
        let serving = CancellationToken::new();
        tokio::spawn(goverse_node::serve_incoming(
            node.clone(),
            incoming,
            serving.clone().cancelled_owned(),
        ));
        self.nodes.push(TestNode {
            node,
            coordinator,
            serving,
        });
        &self.nodes.last().expect("just added").node
    }

    /// Starts a gate of the cluster (gRPC address `127.0.0.1:4900N` as it advertises itself;
    /// serve it with [`Gate::serve`] or call it in-process), anonymous clients allowed.
    pub async fn add_gate(&mut self, config: GateConfig) -> Gate {
        self.add_gate_with(config, Arc::new(AllowAnonymous)).await
    }

    /// [`TestCluster::add_gate`] with an authentication hook.
    pub async fn add_gate_with(
        &mut self,
        mut config: GateConfig,
        handler: Arc<dyn GateEventHandler>,
    ) -> Gate {
        if config.advertise_address == GateConfig::default().advertise_address {
            config.advertise_address = format!("127.0.0.1:{}", 49000 + self.gates.len() + 1);
        }
        let network = ClusterNetwork {
            cluster: Arc::new(self.coordinator.connection()) as Arc<dyn ClusterStore>,
            prefix: &self.config.cluster_prefix,
            shard_count: self.config.shard_count,
            lease_ttl: self.config.lease_ttl,
            dialer: self.network.clone(),
        };
        let gate = Gate::start_in_cluster_over(config, handler, network)
            .await
            .expect("a test gate starts");
        self.gates.push(gate.clone());
        gate
    }

    /// The `i`th node started (0-based).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    /// Every node, in the order started.
    pub fn nodes(&self) -> Vec<&Node> {
        self.nodes.iter().map(|n| &n.node).collect()
    }

    /// The coordinator (for reading the map or writing keys a test needs).
    pub fn coordinator(&self) -> &MemoryClusterStore {
        &self.coordinator
    }

    /// The network the nodes and gates are linked over.
    pub fn network(&self) -> &Arc<MemoryNetwork> {
        &self.network
    }

    /// Cuts node `i` off from the coordinator (`false`) or reconnects it (`true`).
    pub fn set_coordinator_reachable(&self, i: usize, reachable: bool) {
        self.nodes[i].coordinator.set_reachable(reachable);
    }

    /// Makes node `i` unreachable for peers and gates (`false`: new connections refused, open
    /// ones broken) or reachable again (`true`).
    pub fn set_node_reachable(&self, i: usize, reachable: bool) {
        self.network
            .set_reachable(self.nodes[i].node.address().as_str(), reachable);
    }

    /// Shuts node `i` down (saving, handing over, leaving) and stops serving its protocol.
    pub async fn stop_node(&mut self, i: usize, grace: Duration) -> ShutdownReport {
        let stopped = self.nodes.remove(i);
        let report = stopped.node.shutdown(grace).await;
        stopped.serving.cancel();
        report
    }

    /// Shuts every gate and node down.
    pub async fn shutdown(mut self) {
        for gate in std::mem::take(&mut self.gates) {
            gate.shutdown(Duration::from_secs(2)).await;
        }
        while !self.nodes.is_empty() {
            self.stop_node(self.nodes.len() - 1, Duration::from_secs(5))
                .await;
        }
    }
}
