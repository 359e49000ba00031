//! Sending each request to the node that serves its object, by the cluster's map.
//!
//! A [`Router`] keeps a link to every registered node (opened when the node registers, closed
//! when it leaves) and resolves each request by the watched [`MapView`]: a node-pinned ID
//! (`host:port/name`) goes to that node, any other to the current owner of its shard. A request
//! whose shard has no owner yet (it is moving, or its node died and the lease has not ended),
//! or that the node refuses as not served there ([`CallError::is_not_served`]: nothing ran), is
//! held and sent again when the map changes, until its deadline: callers see a move as latency,
//! never as an error.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use goverse_cluster::{ClusterMap, MapView};
use goverse_core::{CallError, ErrorCode, NodeAddr, Route, ShardId};
use goverse_proto::node::response;
use parking_lot::RwLock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::io::{Dialer, TcpDialer};
use crate::{Handler, LinkError, LinkEvents, NodeLink, Outcome, Request};

/// Makes the link to a node: over the network by default ([`NodeLink::remote`]); tests and
/// single-process clusters may link nodes in-process. `None`: the node cannot be reached yet
/// (asked again on the next map change or request).
pub trait Connector: Send + Sync + 'static {
    /// The link to the node at `address`; the router runs it.
    fn connect(&self, address: &NodeAddr) -> Option<Arc<NodeLink>>;

    /// Whether a new link to the node at `address` would come up within `timeout`; the error
    /// says why not. Nodes check their peers with it before giving them shards.
    fn probe(
        &self,
        address: &NodeAddr,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), LinkError>>;
}

/// Links over connections a [`Dialer`] opens (TCP by default), one long-lived batched stream per
/// node, presenting the cluster's secret when it has one.
#[derive(Clone)]
pub struct NetworkConnector {
    secret: Option<Arc<str>>,
    dialer: Arc<dyn Dialer>,
}

impl std::fmt::Debug for NetworkConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkConnector")
            .field("secret", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for NetworkConnector {
    fn default() -> Self {
        Self::with_secret(None)
    }
}

impl NetworkConnector {
    /// Links over TCP that present `secret` (`None`: the cluster has none).
    pub fn with_secret(secret: Option<Arc<str>>) -> Self {
        Self::over(Arc::new(TcpDialer), secret)
    }

    /// Links over connections `dialer` opens (a [`crate::MemoryNetwork`] links a cluster inside
    /// one process over the real protocol), presenting `secret`.
    pub fn over(dialer: Arc<dyn Dialer>, secret: Option<Arc<str>>) -> Self {
        Self { secret, dialer }
    }
}

impl Connector for NetworkConnector {
    fn connect(&self, address: &NodeAddr) -> Option<Arc<NodeLink>> {
        Some(NodeLink::dialed(
            address.to_string(),
            self.secret.clone(),
            self.dialer.clone(),
        ))
    }

    fn probe(
        &self,
        address: &NodeAddr,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), LinkError>> {
        let address = address.to_string();
        let secret = self.secret.clone();
        let dialer = self.dialer.clone();
        Box::pin(async move {
            crate::probe_node_over(&dialer, &address, secret.as_deref(), timeout).await
        })
    }
}

/// Nodes of one process linked without sockets: each node's handler is added once it has
/// started, and links to it are in-process links ([`NodeLink::local`]).
#[derive(Default)]
pub struct InProcessNetwork {
    handlers: RwLock<foldhash::HashMap<NodeAddr, Arc<dyn Handler>>>,
}

impl std::fmt::Debug for InProcessNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessNetwork")
            .field("nodes", &self.handlers.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl InProcessNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Makes the node at `address` reachable through `handler`.
    pub fn add(&self, address: &NodeAddr, handler: Arc<dyn Handler>) {
        self.handlers.write().insert(address.clone(), handler);
    }

    /// Makes the node at `address` unreachable (links made before keep their handler).
    pub fn remove(&self, address: &NodeAddr) {
        self.handlers.write().remove(address);
    }
}

impl Connector for InProcessNetwork {
    fn connect(&self, address: &NodeAddr) -> Option<Arc<NodeLink>> {
        let handler = self.handlers.read().get(address)?.clone();
        Some(NodeLink::local(handler, address.to_string()))
    }

    fn probe(
        &self,
        address: &NodeAddr,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<(), LinkError>> {
        let found = self.handlers.read().contains_key(address);
        Box::pin(std::future::ready(if found {
            Ok(())
        } else {
            Err(LinkError::NotInProcess)
        }))
    }
}

/// Where a router's requests go: by the cluster map, or all to one node (a gate in front of a
/// single node, with no cluster store).
enum Routes {
    Map {
        view: MapView,
        shard_count: u32,
        connector: Arc<dyn Connector>,
        links: RwLock<foldhash::HashMap<NodeAddr, (Arc<NodeLink>, CancellationToken)>>,
        /// The map digested for the call path, rebuilt whenever the map changes.
        table: ArcSwap<RouteTable>,
    },
    Single(Arc<NodeLink>),
}

/// The link each shard's calls go to, as of the last map change: one array read per call
/// instead of a walk of the map's records and registrations. It may lag the map for a moment;
/// a call it sends to a node that no longer serves the shard is refused there (nothing ran)
/// and sent again by the map itself.
#[derive(Default)]
struct RouteTable {
    /// Per shard: the index of its owner's link in `links`, or [`RouteTable::NONE`].
    owners: Vec<u32>,
    links: Vec<Arc<NodeLink>>,
}

impl RouteTable {
    const NONE: u32 = u32::MAX;

    fn link(&self, shard: ShardId) -> Option<&Arc<NodeLink>> {
        let index = *self.owners.get(shard.0 as usize)?;
        self.links.get(index as usize)
    }
}

struct RouterInner {
    routes: Routes,
    /// The node in this process, reached without a socket.
    local: Option<(NodeAddr, Arc<NodeLink>)>,
    peer_address: String,
    events: Arc<dyn LinkEvents>,
    stop: CancellationToken,
    /// Every task the router starts: the map follower, links, drains of departed nodes.
    tasks: TaskTracker,
}

/// Sends requests to the nodes that serve their objects. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("peer", &self.inner.peer_address)
            .finish_non_exhaustive()
    }
}

/// How long a held request waits before it is tried again when the map has not changed (a
/// shard claimed in the cluster store is served only once the object store has the claim).
const RETRY_FLOOR: Duration = Duration::from_millis(2);
const RETRY_CEILING: Duration = Duration::from_millis(100);
/// How long the link to a node that left the map stays open for the answers still due.
const LEFT_NODE_DRAIN: Duration = Duration::from_secs(5);
/// A call held this long is logged once (with why it waits).
const HELD_WARNING: Duration = Duration::from_secs(2);

impl Router {
    /// A router by `view`, which names this process to nodes as `peer_address` (pushes for
    /// clients whose id starts with it come back to `events`). Links are made by `connector`
    /// and run until `stop`.
    pub fn by_map(
        view: MapView,
        shard_count: u32,
        connector: Arc<dyn Connector>,
        peer_address: String,
        events: Arc<dyn LinkEvents>,
        stop: CancellationToken,
    ) -> Self {
        let routes = Self::routes(view, shard_count, connector);
        Self::following(routes, None, peer_address, events, stop)
    }

    /// A router by `view` for the node `address` in this process: its own shards are reached
    /// through `handler` without a socket, every other node through `connector`.
    pub fn for_node(
        view: MapView,
        shard_count: u32,
        connector: Arc<dyn Connector>,
        address: NodeAddr,
        handler: Arc<dyn Handler>,
        events: Arc<dyn LinkEvents>,
        stop: CancellationToken,
    ) -> Self {
        let local = NodeLink::local(handler, address.to_string());
        let routes = Self::routes(view, shard_count, connector);
        let peer = address.to_string();
        Self::following(routes, Some((address, local)), peer, events, stop)
    }

    fn routes(view: MapView, shard_count: u32, connector: Arc<dyn Connector>) -> Routes {
        Routes::Map {
            view,
            shard_count,
            connector,
            links: RwLock::new(foldhash::HashMap::default()),
            table: ArcSwap::from_pointee(RouteTable::default()),
        }
    }

    /// A router by a map, following it from now on.
    fn following(
        routes: Routes,
        local: Option<(NodeAddr, Arc<NodeLink>)>,
        peer_address: String,
        events: Arc<dyn LinkEvents>,
        stop: CancellationToken,
    ) -> Self {
        let router = Self {
            inner: Arc::new(RouterInner {
                routes,
                local,
                peer_address,
                events,
                stop,
                tasks: TaskTracker::new(),
            }),
        };
        router.start_following();
        router
    }

    /// A router that sends everything to `link` (one node, no cluster store), running it until
    /// `stop`.
    pub fn single(
        link: Arc<NodeLink>,
        peer_address: String,
        events: Arc<dyn LinkEvents>,
        stop: CancellationToken,
    ) -> Self {
        let tasks = TaskTracker::new();
        tasks.spawn(
            link.clone()
                .run(peer_address.clone(), events.clone(), stop.clone()),
        );
        Self {
            inner: Arc::new(RouterInner {
                routes: Routes::Single(link),
                local: None,
                peer_address,
                events,
                stop,
                tasks,
            }),
        }
    }

    /// Waits up to `grace` for every task the router started to end (after its stop token was
    /// cancelled); `false` if some had not.
    pub async fn stopped(&self, grace: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// The links open now (one per registered node, or the single one).
    pub fn links(&self) -> Vec<Arc<NodeLink>> {
        match &self.inner.routes {
            Routes::Single(link) => vec![link.clone()],
            Routes::Map { links, .. } => links.read().values().map(|(l, _)| l.clone()).collect(),
        }
    }

    /// The watched map, when routing by one.
    pub fn view(&self) -> Option<&MapView> {
        match &self.inner.routes {
            Routes::Map { view, .. } => Some(view),
            Routes::Single(_) => None,
        }
    }

    /// Opens links to nodes that registered and closes those of nodes that left, whenever the
    /// map changes, until the router stops.
    fn start_following(&self) {
        let Routes::Map { view, .. } = &self.inner.routes else {
            return;
        };
        let mut changes = view.subscribe();
        let router = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.clone();
        Self::follow(&self.inner, &view.borrow());
        self.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let Some(inner) = router.upgrade() else {
                    return;
                };
                Self::follow(&inner, &changes.borrow_and_update());
            }
        });
    }

    /// Brings the links and the route table up to date with `map`.
    fn follow(inner: &Arc<RouterInner>, map: &ClusterMap) {
        Self::sync_links(inner, &map.nodes);
        Self::rebuild_table(inner, map);
    }

    /// The route table of `map`, with the links open now.
    fn rebuild_table(inner: &RouterInner, map: &ClusterMap) {
        let Routes::Map {
            links,
            table,
            shard_count,
            ..
        } = &inner.routes
        else {
            return;
        };
        let open = links.read();
        let mut route = RouteTable::default();
        let mut index: foldhash::HashMap<&NodeAddr, u32> = foldhash::HashMap::default();
        for addr in &map.nodes {
            let link = match &inner.local {
                Some((own, link)) if own == addr => Some(link),
                _ => open.get(addr).map(|(link, _)| link),
            };
            if let Some(link) = link {
                index.insert(addr, route.links.len() as u32);
                route.links.push(link.clone());
            }
        }
        route.owners = (0..*shard_count)
            .map(|n| {
                map.owner(ShardId(n))
                    .and_then(|addr| index.get(addr).copied())
                    .unwrap_or(RouteTable::NONE)
            })
            .collect();
        table.store(Arc::new(route));
    }

    fn sync_links(inner: &Arc<RouterInner>, nodes: &BTreeSet<NodeAddr>) {
        let Routes::Map {
            connector, links, ..
        } = &inner.routes
        else {
            return;
        };
        let own = inner.local.as_ref().map(|(addr, _)| addr);
        let mut links = links.write();
        links.retain(|addr, (link, stop)| {
            let keep = nodes.contains(addr);
            if !keep {
                // No new requests go to a node that left; those on their way still get their
                // answers (its node service answers until it exits), then the link closes.
                let (link, stop) = (link.clone(), stop.clone());
                inner.tasks.spawn(async move {
                    let deadline = Instant::now() + LEFT_NODE_DRAIN;
                    while link.in_flight() > 0 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    stop.cancel();
                });
            }
            keep
        });
        for addr in nodes {
            if Some(addr) == own || links.contains_key(addr) {
                continue;
            }
            let Some(link) = connector.connect(addr) else {
                continue;
            };
            let stop = inner.stop.child_token();
            inner.tasks.spawn(link.clone().run(
                inner.peer_address.clone(),
                inner.events.clone(),
                stop.clone(),
            ));
            links.insert(addr.clone(), (link, stop));
        }
    }

    /// The link to `addr`, making it if the map has the node and the router has none yet.
    fn link_to(&self, addr: &NodeAddr) -> Option<Arc<NodeLink>> {
        if let Some((own, link)) = &self.inner.local
            && own == addr
        {
            return Some(link.clone());
        }
        let Routes::Map { links, view, .. } = &self.inner.routes else {
            return None;
        };
        if let Some((link, _)) = links.read().get(addr) {
            return Some(link.clone());
        }
        Self::follow(&self.inner, &view.borrow());
        links.read().get(addr).map(|(link, _)| link.clone())
    }

    /// Sends `request` to the node serving its object and waits up to `timeout` for the
    /// outcome, holding it while its shard has no owner and sending it again when a node
    /// refuses it as not served there.
    pub async fn request(&self, request: Request<'_>, timeout: Duration) -> Outcome {
        let (view, shard_count, table) = match &self.inner.routes {
            Routes::Single(link) => return self.request_single(link, request, timeout).await,
            Routes::Map {
                view,
                shard_count,
                table,
                ..
            } => (view, *shard_count, table),
        };
        let route = Route::of(request.object_id, shard_count)?;
        self.request_routed(request, route, timeout, view, table)
            .await
    }

    /// [`Router::request`] for a request whose route the caller has already worked out (a node
    /// that found it does not serve the object's shard).
    pub async fn request_by_route(
        &self,
        request: Request<'_>,
        route: Route<'_>,
        timeout: Duration,
    ) -> Outcome {
        match &self.inner.routes {
            Routes::Single(link) => self.request_single(link, request, timeout).await,
            Routes::Map { view, table, .. } => {
                self.request_routed(request, route, timeout, view, table)
                    .await
            }
        }
    }

    async fn request_routed(
        &self,
        request: Request<'_>,
        route: Route<'_>,
        timeout: Duration,
        view: &MapView,
        table: &ArcSwap<RouteTable>,
    ) -> Outcome {
        let started = Instant::now();
        let id = request.object_id;
        let mut last: Option<CallError> = None;
        // The common case: the route table names a connected owner, which serves the call.
        let routed = match route {
            Route::Shard(shard) => table.load().link(shard).cloned(),
            Route::Node { .. } => None,
        };
        if let Some(link) = routed
            && link.is_connected()
        {
            let outcome = link.request_ref(&request, timeout).await;
            match settled(id, &link, outcome, started) {
                Ok(outcome) => return outcome,
                Err(refused) => last = Some(refused),
            }
        }
        // Boxed: the held path's timers and watches would otherwise make every call's
        // future several times larger.
        Box::pin(self.request_held(request, route, timeout, view, started, last)).await
    }

    /// [`Router::request`] by the map itself, after the route table named no connected owner
    /// or its owner refused (`last`).
    async fn request_held(
        &self,
        request: Request<'_>,
        route: Route<'_>,
        timeout: Duration,
        view: &MapView,
        started: Instant,
        mut last: Option<CallError>,
    ) -> Outcome {
        let deadline = started + timeout;
        let id = request.object_id;
        let _held = crate::stats::stats().held();
        // Held while the shard has no owner, sent again on a refusal, until the deadline.
        let mut changes = view.subscribe();
        let mut pause = RETRY_FLOOR;
        let mut warned = false;
        // The clock is read once per attempt.
        let mut now = if last.is_some() {
            Instant::now()
        } else {
            started
        };
        loop {
            let target = resolve(&changes.borrow_and_update(), id, route)?;
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(held_too_long(id, last, timeout));
            }
            let link = target.as_ref().and_then(|addr| self.link_to(addr));
            match link {
                Some(link) if link.is_connected() => {
                    let outcome = link.request_ref(&request, remaining).await;
                    match settled(id, &link, outcome, now) {
                        Ok(outcome) => return outcome,
                        Err(refused) => last = Some(refused),
                    }
                }
                Some(link) => {
                    last = Some(CallError::unavailable(format!(
                        "node {} is not connected yet",
                        link.address()
                    )));
                }
                None => {
                    last = Some(CallError::unavailable(match &target {
                        Some(addr) => format!("node {addr} cannot be reached"),
                        None => format!("the shard of {id} has no owner now (it is moving)"),
                    }));
                }
            }
            if !warned && started.elapsed() > HELD_WARNING {
                warned = true;
                tracing::warn!(object = %id, held = ?started.elapsed(), cause = ?last,
                    "a call is still waiting for a node to serve its object");
            }
            // Held: until the map changes, or a short pause (growing while nothing changes).
            let until = (Instant::now() + pause).min(deadline);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(CallError::unavailable("the cluster map is gone (shutting down)"));
                    }
                    pause = RETRY_FLOOR;
                }
                () = tokio::time::sleep_until(until) => pause = (pause * 2).min(RETRY_CEILING),
                () = self.inner.stop.cancelled() => {
                    return Err(CallError::unavailable("the router is stopping"));
                }
            }
            now = Instant::now();
        }
    }
}

impl Router {
    /// The one node's answer to `request`, sent again while the node refuses it as not served
    /// (it is starting, or renewing a late lease: nothing ran), within the deadline.
    async fn request_single(
        &self,
        link: &NodeLink,
        request: Request<'_>,
        timeout: Duration,
    ) -> Outcome {
        let started = Instant::now();
        let outcome = link.request_ref(&request, timeout).await;
        match refusal(&outcome) {
            None => outcome,
            // Boxed, as the held path of a call by the map is.
            Some(err) => {
                Box::pin(self.request_single_again(link, request, timeout, started, err)).await
            }
        }
    }

    /// [`Router::request_single`] after the node refused with `err`.
    async fn request_single_again(
        &self,
        link: &NodeLink,
        request: Request<'_>,
        timeout: Duration,
        started: Instant,
        mut err: CallError,
    ) -> Outcome {
        let deadline = started + timeout;
        let mut pause = RETRY_FLOOR;
        loop {
            if Instant::now() + pause >= deadline {
                return Err(held_too_long(request.object_id, Some(err), timeout));
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.inner.stop.cancelled() => {
                    return Err(CallError::unavailable("the router is stopping"));
                }
            }
            pause = (pause * 2).min(RETRY_CEILING);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = link.request_ref(&request, remaining).await;
            match refusal(&outcome) {
                Some(again) => err = again,
                None => return outcome,
            }
        }
    }
}

/// The node a request for `id` (routed `route`) goes to by `map`: the pinned node of a
/// node-pinned ID, the owner of the shard otherwise (`None`: no owner now). A pinned node that is
/// not a member is an error at once.
fn resolve(map: &ClusterMap, id: &str, route: Route<'_>) -> Result<Option<NodeAddr>, CallError> {
    match route {
        Route::Node { addr, .. } => {
            let addr = NodeAddr::new(addr);
            if !map.nodes.contains(&addr) {
                return Err(CallError::unavailable(format!(
                    "object {id} is pinned to node {addr}, which is not a member of the cluster"
                )));
            }
            Ok(Some(addr))
        }
        Route::Shard(shard) => Ok(map.owner(shard).cloned()),
    }
}

/// What one attempt sent to `link` at `sent` came to: the outcome to return (`Ok`), or the
/// refusal that makes sending it again safe (`Err`). A slow answer is logged either way.
fn settled(
    id: &str,
    link: &NodeLink,
    outcome: Outcome,
    sent: Instant,
) -> Result<Outcome, CallError> {
    let took = sent.elapsed();
    if took > HELD_WARNING {
        tracing::warn!(object = %id, node = link.address(), took = ?took,
            ok = outcome.is_ok(), "a node was slow to answer");
    }
    match refusal(&outcome) {
        Some(refused) => Err(refused),
        None => Ok(outcome),
    }
}

/// The refusal in `outcome` that makes sending it again safe (nothing ran), if it is one.
fn refusal(outcome: &Outcome) -> Option<CallError> {
    match outcome {
        Err(err) if err.is_not_served() => Some(err.clone()),
        Ok(response::Result::Reliable(reliable)) => {
            let failure = reliable.error.as_ref()?;
            (reliable.status == goverse_core::ReliableStatus::Skipped.as_str()
                && failure.not_served)
                .then(|| crate::failure_to_error(failure.clone()))
        }
        _ => None,
    }
}

fn held_too_long(id: &str, last: Option<CallError>, timeout: Duration) -> CallError {
    let why = last.map_or_else(String::new, |err| format!(": {}", err.message()));
    CallError::new(
        ErrorCode::DeadlineExceeded,
        format!("deadline exceeded after {timeout:?} waiting for a node to serve {id}{why}"),
    )
}
