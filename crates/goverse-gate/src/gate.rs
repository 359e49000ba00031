//! The gate core shared by the gRPC and HTTP front ends: identity, rules, routing to the node,
//! client registration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use goverse_cluster::{ClusterStore, Keys, MapError, MapView};
use goverse_core::{CallError, ClientIdentity, Clipped, InvalidSetting, ObjectId, ReliableStatus};
use goverse_proto::node::{self as proto, DescribeResponse, Push, response};
use goverse_transport::{
    Dialer, Handler, LinkEvents, NetworkConnector, NodeLink, Op, Request, Router, TcpDialer,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{ConnectRequest, GateEventHandler, Transport};
use crate::clients::{Binding, ClientEntry, Clients};
use crate::codec::{Catalog, SharedCatalog};
use crate::registration::{ClusterRegistration, RegisterError};
use crate::rules::{AccessRule, Lifecycle, LifecycleRule, RuleError, Rules};

/// How a gate runs.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// The address clients reach the gate's gRPC port at; client ids start with it and nodes
    /// route pushes by it. Default `127.0.0.1:49000`.
    pub advertise_address: String,
    /// The node's service address. Default `127.0.0.1:47000`.
    pub node: String,
    /// How long a client call may take before it fails with `DeadlineExceeded`. Default 30 s.
    pub call_timeout: Duration,
    /// Largest request body (HTTP) or message (gRPC) accepted. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Pushes buffered per client before further ones are dropped for it. Default 1024.
    pub client_buffer: usize,
    /// Interval of SSE `heartbeat` events, well inside common proxy idle timeouts. Default 15 s.
    pub heartbeat_interval: Duration,
    /// `object_access_rules`; empty allows every call.
    pub access_rules: Vec<AccessRule>,
    /// `object_lifecycle_rules`; defaults apply when none match.
    pub lifecycle_rules: Vec<LifecycleRule>,
    /// The cluster's shared secret, presented to every node (which refuse peers without it
    /// when they have one).
    pub peer_secret: Option<String>,
    /// In a cluster: the nodes the map must hold for the gate to report ready (the cluster's
    /// `min_quorum`). Default 1.
    pub min_quorum: usize,
    /// Limits on the connections of each of the gate's ports (a cap, idle and header timeouts,
    /// the drain deadline at shutdown).
    pub connection_limits: goverse_transport::ConnectionLimits,
    /// The registry the gate adds its metrics to (scraped as long as the gate lives). Default:
    /// a registry of the gate's own, which [`Gate::metrics`] returns.
    pub metrics: goverse_core::metrics::Registry,
    /// Where the gate's operations HTTP (`/metrics`, `/ready`) is reached (`host:port`),
    /// published in its registration so the inspector finds it. `None`: not published.
    pub ops_address: Option<String>,
    /// Quotas per client, per address and per method (all off by default).
    pub quotas: crate::quota::QuotaConfig,
    /// TLS: `server` for the client-facing ports (gRPC and HTTP), `client` for the links to
    /// nodes (mutual TLS: nodes admit only certificates naming a cluster member). `None`:
    /// plaintext.
    pub tls: Option<goverse_tls::Tls>,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            advertise_address: "127.0.0.1:49000".to_owned(),
            node: "127.0.0.1:47000".to_owned(),
            call_timeout: Duration::from_secs(30),
            max_body_bytes: 4 * 1024 * 1024,
            client_buffer: 1024,
            heartbeat_interval: Duration::from_secs(15),
            access_rules: Vec::new(),
            lifecycle_rules: Vec::new(),
            peer_secret: None,
            min_quorum: 1,
            connection_limits: goverse_transport::ConnectionLimits::default(),
            metrics: goverse_core::metrics::Registry::default(),
            ops_address: None,
            quotas: crate::quota::QuotaConfig::default(),
            tls: None,
        }
    }
}

impl GateConfig {
    /// Takes `limits` for the gate's ports, lowering the event streams' heartbeat to half the
    /// idle timeout when it is longer, so quiet streams are never closed as idle.
    pub fn with_connection_limits(mut self, limits: goverse_transport::ConnectionLimits) -> Self {
        self.heartbeat_interval = self.heartbeat_interval.min(limits.idle_timeout / 2);
        self.connection_limits = limits;
        self
    }
}

/// How a gate reaches nodes.
enum Routing {
    Single(Arc<NodeLink>),
    Map(MapView, u32, Arc<dyn Dialer>),
}

/// The cluster a gate joins and how it reaches the cluster's nodes.
pub struct ClusterNetwork<'a> {
    /// The coordinator the gate registers in and watches the map of.
    pub cluster: Arc<dyn ClusterStore>,
    /// The cluster's key prefix (`/goverse` by default).
    pub prefix: &'a str,
    /// The cluster's shard count.
    pub shard_count: u32,
    /// The TTL of the gate's registration.
    pub lease_ttl: Duration,
    /// Opens connections to nodes.
    pub dialer: Arc<dyn Dialer>,
}

impl std::fmt::Debug for ClusterNetwork<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNetwork")
            .field("prefix", &self.prefix)
            .field("shard_count", &self.shard_count)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// Why a gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A configuration value is unusable.
    #[error("invalid gate configuration: {0}")]
    Config(InvalidSetting),
    /// An access or lifecycle rule does not compile.
    #[error("invalid rule: {0}")]
    Rule(RuleError),
    /// The cluster's map cannot be read, or has another shard count.
    #[error("cluster: {0}")]
    Cluster(MapError),
    /// The gate could not register in the cluster.
    #[error("cluster: {0}")]
    Register(RegisterError),
}

// Each variant shows its cause in its text, so none is also a `source` (a chain printer would
// repeat it): the conversions are written out.
impl From<InvalidSetting> for GateError {
    fn from(err: InvalidSetting) -> Self {
        Self::Config(err)
    }
}

impl From<RuleError> for GateError {
    fn from(err: RuleError) -> Self {
        Self::Rule(err)
    }
}

impl From<MapError> for GateError {
    fn from(err: MapError) -> Self {
        Self::Cluster(err)
    }
}

/// Why a gate does not serve now ([`Gate::readiness`]; the `/ready` endpoint's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The gate is shutting down.
    #[error("gate is stopping")]
    Stopping,
    /// The gate's cluster registration is not surely held.
    #[error(
        "the gate's cluster registration was last renewed {since:?} ago (lease {ttl:?}, serving \
         window {window:?}); is the cluster store reachable?"
    )]
    RegistrationStale {
        /// Since the last successful renewal.
        since: Duration,
        /// The lease's time-to-live.
        ttl: Duration,
        /// How long after a renewal the registration counts as held.
        window: Duration,
    },
    /// The map holds fewer nodes than the quorum.
    #[error("the cluster has {nodes} nodes, below its quorum of {quorum}")]
    BelowQuorum {
        /// Nodes in the map.
        nodes: usize,
        /// The configured quorum.
        quorum: usize,
    },
    /// No node link is up and described.
    #[error("node {0} is not connected")]
    NodeNotConnected(String),
}

/// Counters of a gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Clients registered now (gRPC Register and SSE streams).
    pub clients: u64,
    /// Pushes handed to client buffers.
    pub pushes_delivered: u64,
    /// Pushes dropped because a client's buffer was full.
    pub pushes_dropped_full: u64,
    /// Pushes for clients not (or no longer) registered here.
    pub pushes_dropped_unknown: u64,
}

pub(crate) struct GateInner {
    pub(crate) config: GateConfig,
    rules: Rules,
    pub(crate) handler: Arc<dyn GateEventHandler>,
    pub(crate) clients: Arc<Clients>,
    pub(crate) catalog: SharedCatalog,
    /// Why the last attempt to reach a node failed, while no node has described its types.
    link_failure: Arc<parking_lot::Mutex<Option<String>>>,
    router: Router,
    /// The gate's registration in the cluster, when it is in one.
    registration: std::sync::OnceLock<Arc<ClusterRegistration>>,
    pub(crate) stop: CancellationToken,
    /// Ends client streams (Register and SSE); a child of `stop`.
    pub(crate) streams_stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// What the registry scrapes (it holds only a weak reference).
    metrics_source: Arc<dyn goverse_core::metrics::Source>,
    /// The clients' quotas and what they hold.
    pub(crate) quotas: Arc<crate::quota::Quotas>,
}

/// Who a client request acts for, and where it came from (quotas are per both).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) identity: Arc<ClientIdentity>,
    pub(crate) remote: Option<SocketAddr>,
}

/// Reads a gate's figures at scrape time.
struct GateSource {
    gate: std::sync::Weak<GateInner>,
}

impl goverse_core::metrics::Source for GateSource {
    fn collect(&self, out: &mut goverse_core::metrics::Scrape) {
        let Some(gate) = self.gate.upgrade() else {
            return;
        };
        let me = gate.config.advertise_address.as_str();
        let labels = [("gate", me)];
        let c = &gate.clients.counters;
        out.gauge(
            "goverse_gate_active_clients",
            "Clients connected to the gate (gRPC Register and SSE streams)",
            &labels,
            gate.clients.len() as i64,
        );
        out.counter(
            "goverse_gate_pushed_messages_total",
            "Messages the gate handed to its clients",
            &labels,
            c.delivered.load(Ordering::Relaxed),
        );
        let full = c.dropped_full.load(Ordering::Relaxed);
        let unknown = c.dropped_unknown.load(Ordering::Relaxed);
        out.counter(
            "goverse_gate_dropped_messages_total",
            "Messages the gate dropped (client unknown or its buffer full)",
            &labels,
            full + unknown,
        );
        for (reason, count) in [("buffer_full", full), ("client_unknown", unknown)] {
            out.counter(
                "goverse_gate_push_drops_total",
                "Messages the gate dropped, by reason",
                &[("gate", me), ("reason", reason)],
                count,
            );
        }
        for (limit, count) in gate.quotas.refusals() {
            out.counter(
                "goverse_gate_quota_refusals_total",
                "Client requests and streams the gate refused for a quota, by limit",
                &[("gate", me), ("limit", limit.label())],
                count,
            );
        }
        out.gauge(
            "goverse_gate_ready",
            "1 when the gate is ready to serve calls, else 0",
            &labels,
            i64::from(
                Gate {
                    inner: gate.clone(),
                }
                .readiness()
                .is_ok(),
            ),
        );
    }
}

/// A running gate: a cheap, cloneable handle. Serve it with [`Gate::serve`] (both front ends),
/// [`Gate::serve_grpc`] and [`Gate::serve_http`] separately, or mount [`Gate::grpc_routes`] /
/// [`Gate::http_router`] on servers of your own.
#[derive(Clone)]
pub struct Gate {
    pub(crate) inner: Arc<GateInner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("address", &self.inner.config.advertise_address)
            .field("node", &self.inner.config.node)
            .finish_non_exhaustive()
    }
}

/// How a gate dials nodes: TCP, with TLS when the config has it.
fn node_dialer(config: &GateConfig) -> Arc<dyn Dialer> {
    match &config.tls {
        Some(tls) => Arc::new(goverse_transport::TlsDialer::new(
            Arc::new(TcpDialer),
            tls.client.clone(),
        )),
        None => Arc::new(TcpDialer),
    }
}

impl Gate {
    /// Validates `config`, compiles its rules and starts linking to the node (in the
    /// background, reconnecting whenever the link breaks). Must run inside a tokio runtime.
    pub fn start(
        config: GateConfig,
        handler: Arc<dyn GateEventHandler>,
    ) -> Result<Self, GateError> {
        let secret = config.peer_secret.as_deref().map(Into::into);
        let link = NodeLink::dialed(config.node.clone(), secret, node_dialer(&config));
        Self::start_with(config, handler, Routing::Single(link))
    }

    /// Like [`Gate::start`], for a gate in the same process as the node behind `node` (a
    /// node's `handler()`, as in `goverse demo`): calls run straight on the node, with no
    /// socket or encoding between gate and node; `config.node` is ignored. Clients see no
    /// difference.
    pub fn start_local(
        mut config: GateConfig,
        handler: Arc<dyn GateEventHandler>,
        node: Arc<dyn Handler>,
    ) -> Result<Self, GateError> {
        config.node = node.describe().node_address;
        let link = NodeLink::local(node, config.node.clone());
        Self::start_with(config, handler, Routing::Single(link))
    }

    /// A gate of a cluster: it registers on a lease of `cluster` (under `cluster_prefix`, with
    /// `lease_ttl`), links to every node the map names, and sends each call to the node serving
    /// its object, holding calls while their shard moves. `config.node` is ignored.
    pub async fn start_in_cluster(
        config: GateConfig,
        handler: Arc<dyn GateEventHandler>,
        cluster: Arc<dyn ClusterStore>,
        cluster_prefix: &str,
        shard_count: u32,
        lease_ttl: Duration,
    ) -> Result<Self, GateError> {
        let network = ClusterNetwork {
            cluster,
            prefix: cluster_prefix,
            shard_count,
            lease_ttl,
            dialer: node_dialer(&config),
        };
        Self::start_in_cluster_over(config, handler, network).await
    }

    /// [`Gate::start_in_cluster`] reaching nodes over connections `network.dialer` opens (a
    /// `MemoryNetwork` runs a cluster inside one process over the real node protocol).
    pub async fn start_in_cluster_over(
        mut config: GateConfig,
        handler: Arc<dyn GateEventHandler>,
        network: ClusterNetwork<'_>,
    ) -> Result<Self, GateError> {
        let ClusterNetwork {
            cluster,
            prefix: cluster_prefix,
            shard_count,
            lease_ttl,
            dialer,
        } = network;
        let keys =
            Keys::new(cluster_prefix).map_err(|why| InvalidSetting::new("cluster_prefix", why))?;
        if lease_ttl < Duration::from_millis(300) {
            return Err(InvalidSetting::new(
                "lease_ttl",
                format!("{lease_ttl:?} is too short (minimum 300ms)"),
            )
            .into());
        }
        // The cluster's shard count is settled before anything is written to it.
        goverse_cluster::settle_shard_count(&*cluster, &keys, shard_count).await?;
        let view = MapView::start(cluster.clone(), keys.clone(), shard_count).await?;
        config.node = format!("cluster {}", keys.prefix());
        let key = keys.gate(&config.advertise_address);
        let info = goverse_cluster::ProcessInfo {
            ops: config.ops_address.clone(),
        };
        let gate = Self::start_with(config, handler, Routing::Map(view, shard_count, dialer))?;
        let registration = ClusterRegistration::register(cluster, key, info.encode(), lease_ttl)
            .await
            .map_err(|err| {
                gate.inner.stop.cancel();
                GateError::Register(err)
            })?;
        let _ = gate.inner.registration.set(registration.clone());
        gate.inner
            .tasks
            .spawn(registration.keep(gate.inner.stop.clone()));
        Ok(gate)
    }

    fn start_with(
        mut config: GateConfig,
        handler: Arc<dyn GateEventHandler>,
        routing: Routing,
    ) -> Result<Self, GateError> {
        if config.advertise_address.is_empty() || config.advertise_address.contains('/') {
            return Err(InvalidSetting::new(
                "advertise_address",
                format!(
                    "{:?} must be a non-empty host:port",
                    config.advertise_address
                ),
            )
            .into());
        }
        if config.node.is_empty() {
            return Err(InvalidSetting::new("node", "the node address is empty").into());
        }
        config
            .connection_limits
            .validate()
            .map_err(|why| why.within("connection_limits"))?;
        for (setting, value) in [
            ("max_body_bytes", config.max_body_bytes),
            ("client_buffer", config.client_buffer),
        ] {
            if value == 0 {
                return Err(InvalidSetting::new(setting, "must be positive").into());
            }
        }
        if config.heartbeat_interval >= config.connection_limits.idle_timeout {
            return Err(InvalidSetting::new(
                "heartbeat_interval",
                format!(
                    "{:?} must be shorter than the connection idle timeout {:?}, or quiet event \
                     streams would be closed as idle",
                    config.heartbeat_interval, config.connection_limits.idle_timeout
                ),
            )
            .into());
        }
        for (setting, value) in [
            ("heartbeat_interval", config.heartbeat_interval),
            ("call_timeout", config.call_timeout),
        ] {
            if value.is_zero() {
                return Err(InvalidSetting::new(setting, "must be positive").into());
            }
        }
        config
            .quotas
            .validate()
            .map_err(|why| why.within("quotas"))?;
        if let Some(cap) = config.quotas.max_connections_per_address {
            config.connection_limits.max_connections_per_address = Some(cap);
        }
        let rules = Rules::new(&config.access_rules, &config.lifecycle_rules)?;
        let stop = CancellationToken::new();
        let clients = Arc::new(Clients::default());
        let catalog: SharedCatalog =
            Arc::new(parking_lot::RwLock::new(Arc::new(Catalog::default())));
        let link_failure = Arc::new(parking_lot::Mutex::new(None));
        let events = Arc::new(GateLinkEvents {
            clients: clients.clone(),
            catalog: catalog.clone(),
            link_failure: link_failure.clone(),
        });
        let peer = config.advertise_address.clone();
        let router = match routing {
            Routing::Single(link) => Router::single(link, peer, events, stop.clone()),
            Routing::Map(view, shard_count, dialer) => Router::by_map(
                view,
                shard_count,
                Arc::new(NetworkConnector::over(
                    dialer,
                    config.peer_secret.as_deref().map(Into::into),
                )),
                peer,
                events,
                stop.clone(),
            ),
        };
        let inner = Arc::new_cyclic(|gate| GateInner {
            rules,
            handler,
            clients,
            catalog,
            link_failure,
            router,
            registration: std::sync::OnceLock::new(),
            streams_stop: stop.child_token(),
            stop,
            tasks: TaskTracker::new(),
            quotas: Arc::new(crate::quota::Quotas::new(config.quotas.clone())),
            config,
            metrics_source: Arc::new(GateSource { gate: gate.clone() }),
        });
        inner.config.metrics.add_source(&inner.metrics_source);
        inner
            .config
            .metrics
            .add_source(&goverse_transport::stats_source());
        tracing::info!(address = %inner.config.advertise_address, node = %inner.config.node, "gate started");
        Ok(Self { inner })
    }

    /// The gate's configuration.
    pub fn config(&self) -> &GateConfig {
        &self.inner.config
    }

    /// Whether the gate serves now, or why not: it is not stopping, a node link is up and has
    /// described what it serves, and in a cluster its registration is held by the cluster's lease
    /// rule (not fenced, renewed within the serving window, as nodes serve) and the map holds at least `min_quorum` nodes. Live: false while any of these
    /// fails, true again once they hold.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let inner = &self.inner;
        if inner.stop.is_cancelled() {
            return Err(NotReady::Stopping);
        }
        if let Some(registration) = inner.registration.get() {
            registration.check()?;
            if let Some(view) = inner.router.view() {
                let nodes = view.borrow().nodes.len();
                if nodes < inner.config.min_quorum {
                    return Err(NotReady::BelowQuorum {
                        nodes,
                        quorum: inner.config.min_quorum,
                    });
                }
            }
        }
        if inner.catalog.read().described().is_none() || !self.is_connected() {
            return Err(NotReady::NodeNotConnected(inner.config.node.clone()));
        }
        Ok(())
    }

    /// [`Gate::readiness`] as a flag.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Whether a link to a node is up now (in a cluster: to at least one node).
    pub fn is_connected(&self) -> bool {
        self.inner.router.links().iter().any(|l| l.is_connected())
    }

    /// Whether the gate is linked to every node of its cluster's map (or to its one node).
    pub fn is_linked_to_all(&self) -> bool {
        let links = self.inner.router.links();
        let nodes = self
            .inner
            .router
            .view()
            .map_or(links.len(), |view| view.borrow().nodes.len());
        links.len() == nodes && links.iter().all(|l| l.is_connected())
    }

    /// Waits until a link to a node is up and the node has described its types, or `timeout`
    /// passes; returns whether that happened.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Linked, and the node's types known: an in-process link is up at once, and its node's
        // description arrives from the link's task a moment later.
        while !(self.is_connected() && self.inner.catalog.read().described().is_some()) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The object types reachable through the gate and their message descriptors.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.catalog.read().clone()
    }

    /// The registry this gate's metrics are in ([`GateConfig::metrics`]).
    pub fn metrics(&self) -> &goverse_core::metrics::Registry {
        &self.inner.config.metrics
    }

    /// Counters.
    pub fn stats(&self) -> GateStats {
        let c = &self.inner.clients.counters;
        GateStats {
            clients: self.inner.clients.len() as u64,
            pushes_delivered: c.delivered.load(Ordering::Relaxed),
            pushes_dropped_full: c.dropped_full.load(Ordering::Relaxed),
            pushes_dropped_unknown: c.dropped_unknown.load(Ordering::Relaxed),
        }
    }

    /// Stops the gate: ends every client stream (disconnect hooks run), drops the node link and
    /// waits up to `grace` for background work to finish. Serving futures should be stopped by
    /// their own shutdown signals first.
    pub async fn shutdown(&self, grace: Duration) {
        if let Some(registration) = self.inner.registration.get() {
            registration.revoke(grace).await;
        }
        self.inner.stop.cancel();
        for client in self.inner.clients.clear() {
            let handler = self.inner.handler.clone();
            handler.on_disconnect(&client.identity).await;
        }
        self.inner.tasks.close();
        let deadline = tokio::time::Instant::now() + grace;
        let tasks_stopped = tokio::time::timeout_at(deadline, self.inner.tasks.wait())
            .await
            .is_ok();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let router_stopped = self.inner.router.stopped(left).await;
        if !(tasks_stopped && router_stopped) {
            tracing::warn!(
                tasks_stopped,
                router_stopped,
                "gate background work did not finish within the grace period"
            );
        }
    }
}

/// A reliable call's outcome at the gate.
#[derive(Debug)]
pub(crate) struct ReliableAnswer {
    pub(crate) status: ReliableStatus,
    /// The response (SUCCESS), or the error (FAILED, SKIPPED).
    pub(crate) result: Result<prost_types::Any, CallError>,
}

impl ReliableAnswer {
    fn from_proto(r: proto::Reliable) -> Self {
        let status = ReliableStatus::from_name(&r.status).unwrap_or(ReliableStatus::Failed);
        let result = match (status, r.value, r.error) {
            (ReliableStatus::Success, Some(value), _) => Ok(value),
            (ReliableStatus::Success, None, _) => Ok(prost_types::Any::default()),
            (_, _, Some(failure)) => Err(goverse_transport::failure_to_error(failure)),
            (_, _, None) => Err(CallError::internal(
                "node sent a failed outcome with no error",
            )),
        };
        Self { status, result }
    }
}

/// A registered client's stream; dropping it unregisters the client and runs the disconnect hook.
pub(crate) struct Registration {
    pub(crate) entry: Arc<ClientEntry>,
    rx: Option<mpsc::Receiver<prost_types::Any>>,
    gate: Arc<GateInner>,
}

impl Registration {
    /// Separates the push receiver from the guard that unregisters the client.
    pub(crate) fn split(mut self) -> (Self, mpsc::Receiver<prost_types::Any>) {
        let rx = self.rx.take().expect("a registration is split once");
        (self, rx)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.entry.identity.client_id().to_owned();
        if self.gate.clients.unregister(&id).is_some() {
            tracing::debug!(client = %id, "client disconnected");
            let handler = self.gate.handler.clone();
            let identity = self.entry.identity.clone();
            self.gate.tasks.spawn(async move {
                handler.on_disconnect(&identity).await;
            });
        }
    }
}

impl GateInner {
    /// The node's `Describe` answer, as last fetched.
    pub(crate) async fn describe(&self) -> Result<proto::DescribeResponse, CallError> {
        let catalog = self.catalog.read().clone();
        match catalog.described() {
            Some(d) => Ok(d.clone()),
            None => Err(CallError::unavailable(format!(
                "node {} has not been reached yet",
                self.config.node
            ))),
        }
    }

    /// Runs the authorisation hook.
    pub(crate) async fn authorize(
        &self,
        headers: &http::HeaderMap,
        remote: Option<SocketAddr>,
        transport: Transport,
    ) -> Result<crate::auth::Principal, CallError> {
        self.handler
            .authorize(&ConnectRequest {
                headers,
                remote,
                transport,
            })
            .await
            .map_err(|e| CallError::new(e.code, e.message))
    }

    /// Registers a client that passed the hook.
    pub(crate) fn register(
        self: &Arc<Self>,
        principal: crate::auth::Principal,
        binding: Binding,
    ) -> Registration {
        let (entry, rx) = self.clients.register(
            &self.config.advertise_address,
            principal.user_id,
            principal.roles,
            binding,
            self.config.client_buffer,
        );
        tracing::debug!(client = %entry.identity.client_id(), "client registered");
        Registration {
            entry,
            rx: Some(rx),
            gate: self.clone(),
        }
    }

    /// An identity for a call made without a registered client.
    pub(crate) async fn anonymous(
        &self,
        headers: &http::HeaderMap,
        remote: Option<SocketAddr>,
    ) -> Result<Arc<ClientIdentity>, CallError> {
        let p = self.authorize(headers, remote, Transport::Call).await?;
        Ok(Arc::new(ClientIdentity::new("", p.user_id, p.roles)))
    }

    /// The types the nodes serve, to read requests and answers by; while no node has described
    /// them because none can be reached, `Unavailable` naming the node and why (a wrong cluster
    /// secret, an unreachable address), not "unknown object type", which reads as permanent.
    pub(crate) fn catalog(&self) -> Result<Arc<Catalog>, CallError> {
        let catalog = self.catalog.read().clone();
        if catalog.described().is_none()
            && let Some(failure) = self.link_failure.lock().clone()
        {
            return Err(CallError::unavailable(format!(
                "the gate has not reached a node yet ({failure})"
            )));
        }
        Ok(catalog)
    }

    fn check_target(object_type: &str, id: &str) -> Result<(), CallError> {
        if object_type.is_empty() {
            return Err(CallError::invalid_argument("object type is empty"));
        }
        ObjectId::new(id).kind().map(|_| ()).map_err(|e| {
            CallError::invalid_argument(format!("invalid object id {:?}: {e}", Clipped(id)))
        })
    }

    /// What the gate checks before a call leaves for the node: the target, the method, the
    /// access rules.
    fn check_call(&self, object_type: &str, id: &str, method: &str) -> Result<(), CallError> {
        Self::check_target(object_type, id)?;
        if method.is_empty() {
            return Err(CallError::invalid_argument("method is empty"));
        }
        self.rules.check_client_call(object_type, id, method)
    }

    /// Calls `object_type/id.method` for `caller`.
    pub(crate) async fn call(
        &self,
        caller: &Caller,
        object_type: &str,
        id: &str,
        method: &str,
        request: Option<prost_types::Any>,
        timeout: Option<Duration>,
    ) -> Result<prost_types::Any, CallError> {
        self.check_call(object_type, id, method)?;
        let op = Op::Call {
            method,
            request,
            reliable_call_id: None,
        };
        match self.send(caller, object_type, id, op, timeout).await? {
            response::Result::Value(any) => Ok(any),
            _ => Err(CallError::internal("node answered a call with no value")),
        }
    }

    /// Calls `object_type/id.method` for `identity` as a reliable call with `call_id`. What the
    /// gate refuses (bad target, empty call id, access rules) and what the node refuses or rolls
    /// back come back as [`ReliableStatus::Skipped`]; `Err` means the outcome is unknown (the
    /// node link broke, the deadline passed): a retry with the same call id is safe.
    pub(crate) async fn call_reliable(
        &self,
        caller: &Caller,
        (object_type, id, method): (&str, &str, &str),
        request: Option<prost_types::Any>,
        call_id: &str,
        timeout: Option<Duration>,
    ) -> Result<ReliableAnswer, CallError> {
        let checked = if call_id.is_empty() {
            Err(CallError::invalid_argument(
                "call_id is empty: choose one per logical operation and reuse it on retries",
            ))
        } else {
            self.check_call(object_type, id, method)
        };
        if let Err(err) = checked {
            return Ok(ReliableAnswer {
                status: ReliableStatus::Skipped,
                result: Err(err),
            });
        }
        let op = Op::Call {
            method,
            request,
            reliable_call_id: Some(call_id),
        };
        match self.send(caller, object_type, id, op, timeout).await? {
            response::Result::Reliable(r) => Ok(ReliableAnswer::from_proto(r)),
            _ => Err(CallError::internal(
                "node answered a reliable call without its outcome",
            )),
        }
    }

    /// Creates (activates) `object_type/id` for `caller`.
    pub(crate) async fn create(
        &self,
        caller: &Caller,
        object_type: &str,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<(), CallError> {
        Self::check_target(object_type, id)?;
        self.check_lifecycle(Lifecycle::Create, object_type, id)?;
        self.send(caller, object_type, id, Op::Create, timeout)
            .await
            .map(|_| ())
    }

    /// Deletes `object_type/id` for `caller`.
    pub(crate) async fn delete(
        &self,
        caller: &Caller,
        object_type: &str,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<(), CallError> {
        if object_type.is_empty() {
            return Err(CallError::invalid_argument(
                "delete needs the object type (the access check depends on it)",
            ));
        }
        Self::check_target(object_type, id)?;
        self.check_lifecycle(Lifecycle::Delete, object_type, id)?;
        self.send(caller, object_type, id, Op::Delete, timeout)
            .await
            .map(|_| ())
    }

    async fn send(
        &self,
        caller: &Caller,
        object_type: &str,
        id: &str,
        op: Op<'_>,
        timeout: Option<Duration>,
    ) -> Result<response::Result, CallError> {
        let method = match &op {
            Op::Call { method, .. } => *method,
            _ => "",
        };
        // Held until the answer is in: the client's calls in flight.
        let admitted = self.quotas.admit(
            &caller.identity,
            caller.remote.map(|r| r.ip()),
            object_type,
            method,
        );
        let _in_flight = match admitted {
            Ok(in_flight) => in_flight,
            Err(err) => {
                // A refusal is answered after the wait it names, at least 50 ms and at most a
                // second: a client that ignores it cannot loop faster than that, so its flood
                // of refusals costs the gate (and the clients beside it) little.
                if let Some(wait) = err.retry_after() {
                    let wait = wait.clamp(Duration::from_millis(50), Duration::from_secs(1));
                    tokio::time::sleep(wait).await;
                }
                return Err(err);
            }
        };
        let identity = &caller.identity;
        // A client's own deadline (gRPC's `grpc-timeout`) shortens the gate's, and travels to
        // the node so the call stops waiting there too.
        let wait = timeout.map_or(self.config.call_timeout, |t| {
            t.min(self.config.call_timeout)
        });
        let request = Request {
            object_type,
            object_id: id,
            op,
            chain: None,
            timeout: timeout.map(|_| wait),
            caller: Some(identity.clone()),
            // The node checks the rules again.
            from_client: true,
        };
        match self.router.request(request, wait).await {
            // No node reached yet: say why (a wrong secret, an unreachable address) instead.
            Err(err)
                if matches!(
                    err.code(),
                    goverse_core::ErrorCode::Unavailable
                        | goverse_core::ErrorCode::DeadlineExceeded
                ) =>
            {
                self.catalog()?;
                Err(err)
            }
            other => other,
        }
    }

    fn check_lifecycle(&self, op: Lifecycle, object_type: &str, id: &str) -> Result<(), CallError> {
        self.rules.check_client_lifecycle(op, object_type, id)
    }
}

/// What the node link reports, applied to the gate: the node's catalog, and pushes for the
/// gate's clients.
struct GateLinkEvents {
    clients: Arc<Clients>,
    catalog: SharedCatalog,
    /// Why the last attempt to reach a node failed, while no node has described its types.
    link_failure: Arc<parking_lot::Mutex<Option<String>>>,
}

impl LinkEvents for GateLinkEvents {
    fn connected(&self, described: &DescribeResponse) {
        let catalog = Catalog::from_describe(described);
        tracing::info!(types = ?catalog.type_names(), "node catalog received");
        *self.catalog.write() = Arc::new(catalog);
        *self.link_failure.lock() = None;
    }

    fn failed(&self, node: &str, cause: &goverse_transport::LinkError) {
        *self.link_failure.lock() = Some(format!("node {node}: {cause}"));
    }

    fn pushed(&self, push: Push) {
        if let Some(message) = push.message {
            self.clients
                .deliver(&push.client_ids, push.broadcast, message);
        }
    }
}
