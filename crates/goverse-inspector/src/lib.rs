//! The GoVerse inspector: what a cluster is doing, in a browser and as JSON.
//!
//! An [`Inspector`] follows one cluster's map in its cluster store (nodes, gates, leader, every
//! shard's owner and target, pins and drains), polls each registered process's operations port
//! (`/ready` for health, `/metrics` for call rates, latencies and objects per type), asks nodes
//! for their objects on demand (upstream's `goverse.Goverse/ListObjects`, behind the cluster
//! secret), and serves it all on [`Inspector::router`]:
//!
//! | Route | What |
//! |---|---|
//! | `GET /` | the web UI: the shard map as a grid coloured by owner, moves live, nodes, gates, objects, calls |
//! | `GET /healthz`, `GET /ready` | alive; ready while the cluster store answers |
//! | `GET /api/cluster` | nodes, gates, leader and the shard map ([`ClusterSnapshot`]) |
//! | `GET /api/calls` | calls per node, type and method: rate, failures, mean, p50, p99 ([`CallsSnapshot`]) |
//! | `GET /api/objects?node=&type=&q=&limit=` | live objects, by node, type and ID substring |
//! | `GET /api/events` | server-sent events: `cluster` (whole), then `shards` (changed records), `nodes`, `calls` |
//! | `POST /api/shards/{shard}/move` `{"node": "host:port"}` | sets the shard's target |
//! | `POST /api/shards/{shard}/pin` `{"node": …}` | pins the shard (to its owner when no node is given) |
//! | `POST /api/shards/{shard}/unpin` | removes the pin |
//! | `POST /api/nodes/{addr}/drain`, `…/undrain` | drains a node of every shard, or ends it |
//!
//! Operators' actions need `Authorization: Bearer <admin token>` (401 without it, 403 when no
//! token is configured); reads are open, as `/metrics` is. Nothing on the call path waits for
//! the inspector: it reads the store's watch and the processes' operations ports.

mod api;
mod events;
mod poll;
mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use goverse_cluster::{ClusterStore, Keys, MapError, MapView, Operator};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use poll::{CallStats, Health, ProcessStatus};
pub use snapshot::{
    CallsSnapshot, ClusterSnapshot, GateView, Members, NodeError, NodeView, ObjectCount,
    ObjectEntry, ObjectsAnswer, ShardView,
};

/// How an inspector behaves. Plain data with defaults.
#[derive(Debug, Clone)]
pub struct InspectorConfig {
    /// The token operators' actions must send (`cluster.admin_token`); `None` refuses them.
    pub admin_token: Option<String>,
    /// The cluster's secret, presented to nodes when asking for their objects.
    pub peer_secret: Option<String>,
    /// How often each process's health and metrics are read. Default 2 s.
    pub poll_interval: Duration,
    /// How long one read of a process may take. Default 2 s.
    pub request_timeout: Duration,
    /// The most objects one `/api/objects` answer lists. Default 1000.
    pub max_objects: usize,
}

impl Default for InspectorConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            peer_secret: None,
            poll_interval: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            max_objects: 1000,
        }
    }
}

/// Why an inspector could not start.
#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    /// The key prefix cannot be used.
    #[error(transparent)]
    Prefix(#[from] goverse_cluster::BadPrefix),
    /// The cluster's map cannot be read.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The admin token is too short to be one.
    #[error("the admin token must be at least 16 characters")]
    ShortToken,
}

/// A running inspector of one cluster; cheap to clone. Its background work ends at
/// [`Inspector::stop`] or when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Inspector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ClusterStore>,
    view: MapView,
    keys: Keys,
    shard_count: u32,
    operator: Operator,
    config: InspectorConfig,
    status: watch::Receiver<Arc<poll::Status>>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inspector {
    /// Follows the cluster under `prefix` in `store` (which has `shard_count` shards) and
    /// starts polling its processes. Must run inside a tokio runtime.
    pub async fn start(
        store: Arc<dyn ClusterStore>,
        prefix: &str,
        shard_count: u32,
        config: InspectorConfig,
    ) -> Result<Self, InspectorError> {
        if config.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(InspectorError::ShortToken);
        }
        let keys = Keys::new(prefix)?;
        let view = MapView::start(store.clone(), keys.clone(), shard_count).await?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .build()
            .expect("an HTTP client without TLS builds");
        let stop = CancellationToken::new();
        let (status_tx, status) = watch::channel(Arc::new(poll::Status::default()));
        tokio::spawn(poll::run(
            view.clone(),
            http,
            config.poll_interval,
            status_tx,
            stop.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                operator: Operator::new(store.clone(), keys.clone(), shard_count),
                store,
                view,
                keys,
                shard_count,
                config,
                status,
                stop,
            }),
        })
    }

    /// The web UI and the API (see the crate docs).
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// The cluster as the inspector sees it now.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let map = self.inner.view.borrow();
        let status = self.inner.status.borrow().clone();
        ClusterSnapshot::new(&map, self.inner.keys.prefix(), &status)
    }

    /// Calls per node, type and method over the last poll.
    pub fn calls(&self) -> CallsSnapshot {
        CallsSnapshot::new(&self.inner.status.borrow())
    }

    /// Ends the polling and every open event stream (their clients see the stream end).
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}
