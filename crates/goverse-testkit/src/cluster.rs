//! [`TestCluster`]: nodes and gates of one cluster inside the test's process, linked over the
//! real node protocol (encoder, batching, lanes, HTTP/2), persisting to a store of the test's
//! choice (in memory by default; a [`crate::PostgresServer`]'s database through
//! [`TestClusterBuilder::object_store`]).
//!
//! By default the links run on in-memory pipes and the coordinator is the in-memory cluster
//! store: everything runs on tokio time, so tests on paused time drive leases, stability windows
//! and hand-overs without real waiting, and each node has its own connection to the coordinator
//! and its own address on the network, either of which a test can cut.
//! [`TestClusterBuilder::etcd`] coordinates through a real etcd instead, and
//! [`TestClusterBuilder::tcp`] links over loopback TCP sockets; tests on those run on real time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use goverse_cluster::{ClusterStore, EtcdClusterStore, EtcdConfig, MemoryClusterStore};
use goverse_gate::{AllowAnonymous, ClusterNetwork, Gate, GateConfig, GateEventHandler};
use goverse_node::{Node, NodeBuilder, NodeConfig, ShutdownReport};
use goverse_persistence::{MemoryStore, ObjectStore};
use goverse_transport::{Dialer, MemoryNetwork, NetworkConnector, TcpDialer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the processes of a [`TestCluster`] coordinate.
enum Coordinator {
    /// The in-memory cluster store; each node and gate has its own connection to it.
    Memory(MemoryClusterStore),
    /// A real etcd; each node and gate connects on its own.
    Etcd(EtcdConfig),
}

/// How the nodes and gates of a [`TestCluster`] reach each other.
enum Wire {
    /// In-memory pipes; addresses can be cut.
    Memory(Arc<MemoryNetwork>),
    /// Loopback TCP sockets on ports the operating system picks.
    Tcp,
}

/// What every node of a [`TestCluster`] registers (its object types, descriptors).
pub type Setup = Arc<dyn Fn(NodeBuilder) -> NodeBuilder + Send + Sync>;

/// How a [`TestCluster`] is made; [`TestCluster::builder`].
pub struct TestClusterBuilder {
    config: NodeConfig,
    objects: Arc<dyn ObjectStore>,
    setup: Setup,
    etcd: Option<EtcdConfig>,
    tcp: bool,
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

    /// Coordinates through the etcd at `endpoint` (a [`crate::EtcdServer`]'s) instead of the
    /// in-memory store.
    pub fn etcd(mut self, endpoint: impl Into<String>) -> Self {
        self.etcd = Some(EtcdConfig {
            endpoints: vec![endpoint.into()],
            ..EtcdConfig::default()
        });
        self
    }

    /// Links nodes and gates over loopback TCP (each node on a port the operating system picks)
    /// instead of in-memory pipes.
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Starts the cluster with `nodes` nodes, one after the other.
    pub async fn start(self, nodes: usize) -> TestCluster {
        let mut cluster = TestCluster {
            coordinator: match self.etcd {
                Some(config) => Coordinator::Etcd(config),
                None => Coordinator::Memory(MemoryClusterStore::new()),
            },
            wire: if self.tcp {
                Wire::Tcp
            } else {
                Wire::Memory(MemoryNetwork::new())
            },
            objects: self.objects,
            setup: self.setup,
            config: self.config,
            nodes: Vec::new(),
            zombies: Vec::new(),
            gates: Vec::new(),
            next: 1,
            stop: CancellationToken::new(),
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
    /// Its own connection to the in-memory coordinator (none on etcd).
    coordinator: Option<MemoryClusterStore>,
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
    coordinator: Coordinator,
    wire: Wire,
    objects: Arc<dyn ObjectStore>,
    setup: Setup,
    config: NodeConfig,
    nodes: Vec<TestNode>,
    /// Nodes killed with [`TestCluster::kill_node`], still running cut off from everything.
    zombies: Vec<TestNode>,
    gates: Vec<Gate>,
    next: u16,
    /// Ends what the cluster serves besides its nodes (gates' gRPC ports).
    stop: CancellationToken,
}

/// Where a new node listens.
enum Listening {
    Memory(goverse_transport::MemoryIncoming),
    Tcp(TcpListener),
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
    /// saves, an in-memory object store, no types, the in-memory coordinator and network.
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
            etcd: None,
            tcp: false,
        }
    }

    /// A connection to the coordinator of its own, and the in-memory connection behind it (to
    /// cut) when the coordinator is the in-memory one.
    async fn connect(&self) -> (Arc<dyn ClusterStore>, Option<MemoryClusterStore>) {
        match &self.coordinator {
            Coordinator::Memory(store) => {
                let connection = store.connection();
                (Arc::new(connection.clone()), Some(connection))
            }
            Coordinator::Etcd(config) => (
                Arc::new(
                    EtcdClusterStore::connect(config)
                        .await
                        .expect("the test's etcd answers"),
                ),
                None,
            ),
        }
    }

    /// Starts one more node (addresses `127.0.0.1:47001`, `:47002`, … on the in-memory
    /// network; a free loopback port over TCP) and serves its node protocol. Returns it.
    pub async fn add_node(&mut self) -> &Node {
        self.add_node_with(|_| {}).await
    }

    /// [`TestCluster::add_node`] with this node's configuration changed by `change` (on the
    /// in-memory network it may choose the node's address; over TCP the address is the port's).
    pub async fn add_node_with(&mut self, change: impl FnOnce(&mut NodeConfig)) -> &Node {
        let n = self.next;
        self.next += 1;
        let mut config = self.config.clone();
        // Listening before the node starts, so peers reach it as soon as it registers.
        let listening = match &self.wire {
            Wire::Memory(network) => {
                config.address = format!("127.0.0.1:{}", 47000 + n);
                change(&mut config);
                Listening::Memory(
                    network
                        .listen(&config.address)
                        .expect("each test node has its own address"),
                )
            }
            Wire::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("a loopback port is free");
                config.address = listener.local_addr().expect("bound").to_string();
                change(&mut config);
                Listening::Tcp(listener)
            }
        };
        let (cluster, coordinator) = self.connect().await;
        let secret = config.peer_secret.as_deref().map(Into::into);
        let connector = NetworkConnector::over(self.dialer(), secret);
        let node = (self.setup)(Node::builder(config))
            .cluster_store(cluster)
            .object_store(self.objects.clone())
            .connector(Arc::new(connector))
            .start()
            .await
            .expect("a test node starts");
        let serving = CancellationToken::new();
        let stopped = serving.clone().cancelled_owned();
        match listening {
            Listening::Memory(incoming) => {
                tokio::spawn(goverse_node::serve_incoming(
                    node.clone(),
                    incoming,
                    stopped,
                ));
            }
            Listening::Tcp(listener) => {
                tokio::spawn(goverse_node::serve(node.clone(), listener, stopped));
            }
        }
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
        let (cluster, _) = self.connect().await;
        let network = ClusterNetwork {
            cluster,
            prefix: &self.config.cluster_prefix,
            shard_count: self.config.shard_count,
            lease_ttl: self.config.lease_ttl,
            dialer: self.dialer(),
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

    /// Starts a gate as [`TestCluster::add_gate`] does and serves its gRPC port on a free
    /// loopback port (over TCP only), until the cluster shuts down. Returns the gate and the
    /// port's address.
    pub async fn add_served_gate(&mut self, mut config: GateConfig) -> (Gate, SocketAddr) {
        assert!(
            matches!(self.wire, Wire::Tcp),
            "a served gate needs a TCP cluster (TestClusterBuilder::tcp)"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port is free");
        let addr = listener.local_addr().expect("bound");
        config.advertise_address = addr.to_string();
        let gate = self.add_gate(config).await;
        let serving = gate.clone();
        let stop = self.stop.clone().cancelled_owned();
        tokio::spawn(async move { serving.serve_grpc(listener, stop).await });
        (gate, addr)
    }

    /// The in-memory coordinator (for reading the map or writing keys a test needs).
    ///
    /// # Panics
    /// On a cluster coordinated by etcd: use [`TestCluster::cluster_store`].
    pub fn coordinator(&self) -> &MemoryClusterStore {
        match &self.coordinator {
            Coordinator::Memory(store) => store,
            Coordinator::Etcd(_) => panic!("this test cluster is coordinated by etcd"),
        }
    }

    /// A connection to the coordinator, whichever it is.
    pub async fn cluster_store(&self) -> Arc<dyn ClusterStore> {
        self.connect().await.0
    }

    /// The in-memory network the nodes and gates are linked over.
    ///
    /// # Panics
    /// On a cluster linked over TCP.
    pub fn network(&self) -> &Arc<MemoryNetwork> {
        match &self.wire {
            Wire::Memory(network) => network,
            Wire::Tcp => panic!("this test cluster is linked over TCP"),
        }
    }

    /// What links dial through.
    fn dialer(&self) -> Arc<dyn Dialer> {
        match &self.wire {
            Wire::Memory(network) => network.clone(),
            Wire::Tcp => Arc::new(TcpDialer),
        }
    }

    /// Cuts node `i` off from the coordinator (`false`) or reconnects it (`true`).
    ///
    /// # Panics
    /// On a cluster coordinated by etcd (stop the [`crate::EtcdServer`] instead).
    pub fn set_coordinator_reachable(&self, i: usize, reachable: bool) {
        self.nodes[i]
            .coordinator
            .as_ref()
            .expect("cutting a node off needs the in-memory coordinator")
            .set_reachable(reachable);
    }

    /// Makes node `i` unreachable for peers and gates (`false`: new connections refused, open
    /// ones broken) or reachable again (`true`).
    ///
    /// # Panics
    /// On a cluster linked over TCP.
    pub fn set_node_reachable(&self, i: usize, reachable: bool) {
        self.network()
            .set_reachable(self.nodes[i].node.address().as_str(), reachable);
    }

    /// Shuts node `i` down (saving, handing over, leaving) and stops serving its protocol.
    pub async fn stop_node(&mut self, i: usize, grace: Duration) -> ShutdownReport {
        let stopped = self.nodes.remove(i);
        let report = stopped.node.shutdown(grace).await;
        stopped.serving.cancel();
        report
    }

    /// Kills node `i` as kill -9 would look to the rest of the cluster: from now on nothing
    /// reaches it and it reaches nothing (neither the coordinator nor its peers), and it never
    /// shuts down cleanly. Unlike a dead process it keeps running, believing what it believed,
    /// so it is a zombie the others must fence out: anything it still tries to write is
    /// refused by the epochs their claims raise. Returns its handle (to watch it); the cluster
    /// stops it at [`TestCluster::shutdown`] without saving.
    ///
    /// # Panics
    /// On a cluster coordinated by etcd or linked over TCP.
    pub fn kill_node(&mut self, i: usize) -> Node {
        self.set_coordinator_reachable(i, false);
        self.set_node_reachable(i, false);
        let killed = self.nodes.remove(i);
        let node = killed.node.clone();
        self.zombies.push(killed);
        node
    }

    /// Shuts every gate and node down.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for zombie in std::mem::take(&mut self.zombies) {
            zombie.node.hurry_shutdown();
            zombie.node.shutdown(Duration::from_millis(100)).await;
            zombie.serving.cancel();
        }
        for gate in std::mem::take(&mut self.gates) {
            gate.shutdown(Duration::from_secs(2)).await;
        }
        while !self.nodes.is_empty() {
            self.stop_node(self.nodes.len() - 1, Duration::from_secs(5))
                .await;
        }
    }
}
