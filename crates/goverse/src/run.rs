//! Node processes of a configured cluster, in one call.
//!
//! A node program registers its object types and hands the rest to [`node_main`]: it reads
//! `--config FILE --node-id ID [--grace 20s]`, loads and checks the file (with its
//! `GOVERSE_*` overrides), connects to every etcd endpoint, opens the file's object store,
//! starts the node, serves the node service on the node's `grpc_addr` (peers authenticate with
//! the cluster secret) and runs until SIGTERM or Ctrl-C. Then it hands its shards over, saving
//! every object (within the grace), leaves the cluster and ends its connections. A second
//! signal during that stops waiting for running turns: what is not in the middle of one is
//! saved, and the process exits.
//!
//! ```no_run
//! # use goverse::prelude::*;
//! # #[derive(Debug, Default)] struct Counter;
//! # impl Object for Counter {}
//! # #[goverse::object] impl Counter {
//! #     #[method] async fn get(&self, _r: Empty) -> Result<Empty, ObjectError> { Ok(Empty {}) }
//! # }
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     goverse::run::node_main(|node| node.register::<Counter>()).await
//! }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::cluster::{ClusterStore, EtcdClusterStore};
use crate::config::{ClusterFile, InvalidDuration, parse_duration};
use crate::persistence::{ObjectStore, PostgresStore, SqliteStore};
use crate::{Node, NodeBuilder};

/// The flags of a node process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFlags {
    /// `--config FILE`: the cluster configuration file.
    pub config: PathBuf,
    /// `--node-id ID`: which of the file's `nodes` this process is.
    pub node_id: String,
    /// `--grace DURATION`: how long shutdown may take (hand-over, saves, connections); 20s.
    pub grace: Duration,
}

/// What is wrong with a node program's flags (each message ends with the usage).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagsError {
    /// A flag was given without its value.
    #[error("{0} needs a value (usage: {NODE_USAGE})")]
    NeedsValue(String),
    /// A flag this program does not know.
    #[error("unknown argument {0:?} (usage: {NODE_USAGE})")]
    Unknown(String),
    /// A required flag is missing.
    #[error("{0} is required (usage: {NODE_USAGE})")]
    Required(&'static str),
    /// `--grace` is not a duration.
    #[error("--grace: {0}")]
    Grace(InvalidDuration),
}

/// How the flags are written.
pub const NODE_USAGE: &str = "--config FILE --node-id ID [--grace 20s]";

impl NodeFlags {
    /// Parses the flags (without the program name), naming what is wrong.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, FlagsError> {
        let mut config = None;
        let mut node_id = None;
        let mut grace = Duration::from_secs(20);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| FlagsError::NeedsValue(flag.clone()))
            };
            match flag.as_str() {
                "--config" => config = Some(PathBuf::from(value()?)),
                "--node-id" => node_id = Some(value()?),
                "--grace" => {
                    let text = value()?;
                    grace = parse_duration(&text).map_err(FlagsError::Grace)?;
                }
                other => return Err(FlagsError::Unknown(other.to_owned())),
            }
        }
        Ok(Self {
            config: config.ok_or(FlagsError::Required("--config"))?,
            node_id: node_id.ok_or(FlagsError::Required("--node-id"))?,
            grace,
        })
    }
}

/// Why a node process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration file cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The file does not list the node asked for.
    #[error(transparent)]
    UnknownNode(#[from] crate::config::UnknownEntry),
    /// The object store cannot be opened.
    #[error("cannot open the {what} store: {cause}")]
    Store {
        /// Which store (`PostgreSQL`, `SQLite` and its path).
        what: String,
        /// What it said.
        cause: crate::persistence::StoreError,
    },
    /// No etcd endpoint answered.
    #[error("cannot reach etcd: {0}")]
    Etcd(crate::cluster::ClusterError),
    /// The node service's address cannot be listened on.
    #[error("cannot listen on {address} for the node service: {cause}")]
    Listen {
        /// The address.
        address: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The node did not start.
    #[error("cannot start the node: {0}")]
    Start(crate::NodeError),
    /// Shutdown could not save every object.
    #[error("{0} object states could not be saved")]
    Unsaved(u64),
}

/// Parses the process's flags and runs the node until it is stopped (see the module docs).
/// Errors are printed; the exit code is 0 after a clean stop, 1 otherwise, 2 for bad flags.
pub async fn node_main(
    register: impl FnOnce(NodeBuilder) -> NodeBuilder,
) -> std::process::ExitCode {
    init_logging("info");
    let flags = match NodeFlags::parse(std::env::args().skip(1)) {
        Ok(flags) => flags,
        Err(err) => {
            eprintln!("error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    match run_node(&flags, register).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Sets up the process's logs: to standard error, filtered by `RUST_LOG` (`default` when it is
/// unset, e.g. `"info"`), in colour only when standard error is a terminal (a file or a log
/// shipper gets plain text), and as one JSON object per line when `GOVERSE_LOG_FORMAT=json`.
/// Leaves a logger the process already installed in place.
pub fn init_logging(default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let format = std::env::var("GOVERSE_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format.to_ascii_lowercase().as_str() {
        "json" => builder.json().try_init(),
        "" | "text" => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        other => {
            eprintln!("GOVERSE_LOG_FORMAT={other:?} is not json or text; writing text");
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init()
        }
    };
}

/// Opens the object store the file names: PostgreSQL (whose schema `goverse db init` sets up;
/// it is not created here), one SQLite file, or none.
pub async fn open_store(file: &ClusterFile) -> Result<Option<Arc<dyn ObjectStore>>, RunError> {
    if let Some(pg) = &file.postgres {
        let config = pg.store_config();
        // The schema is not created here: a node pointed at the wrong (empty) database must
        // not start an empty cluster in it. The node's start check refuses a database without
        // this build's schema and names `goverse db init`.
        let store = PostgresStore::connect(&config)
            .await
            .map_err(|cause| RunError::Store {
                what: "PostgreSQL".to_owned(),
                cause,
            })?;
        if let Some(tls) = store.tls() {
            // Reloaded for the process's life, as its other certificates.
            let tls: Arc<dyn goverse_tls::Reloadable> = tls;
            goverse_tls::watch(
                vec![tls],
                file.tls_reload_interval(),
                tokio_util::sync::CancellationToken::new(),
            );
        }
        return Ok(Some(Arc::new(store)));
    }
    if let Some(sqlite) = &file.sqlite {
        let store = SqliteStore::open(&sqlite.path).map_err(|cause| RunError::Store {
            what: format!("SQLite {}", sqlite.path.display()),
            cause,
        })?;
        return Ok(Some(Arc::new(store)));
    }
    Ok(None)
}

/// Warns when the file has neither a cluster secret nor TLS (it loads only when every address
/// is loopback then): peers are not authenticated.
pub fn warn_if_unauthenticated(file: &ClusterFile) {
    if file.cluster.secret.is_none() && file.tls.is_none() {
        tracing::warn!(
            "peers are not authenticated (no cluster.secret): fine on loopback, as this file has it"
        );
    }
}

/// Connects to the file's etcd (every endpoint; over TLS when `cluster.etcd.ca_file` is set,
/// reloading its certificates on SIGHUP or change).
pub async fn connect_cluster(file: &ClusterFile) -> Result<Arc<dyn ClusterStore>, RunError> {
    let config = file.etcd()?;
    if let Some(tls) = &config.tls {
        // Reloaded for the process's life, as its other certificates.
        goverse_tls::watch(
            vec![tls.clone()],
            file.tls_reload_interval(),
            tokio_util::sync::CancellationToken::new(),
        );
    }
    let etcd = EtcdClusterStore::connect(&config)
        .await
        .map_err(RunError::Etcd)?;
    Ok(Arc::new(etcd))
}

/// Shuts `node` down within `grace` (hand-over, saves); a stop signal arriving meanwhile makes
/// it stop waiting ([`Node::hurry_shutdown`]). The report, and whether it was hurried. What a
/// process does after its first stop signal.
pub async fn shutdown_hurried_by_a_second_signal(
    node: &Node,
    grace: Duration,
) -> (crate::ShutdownReport, bool) {
    let second_signal = crate::stop_signal();
    let shutdown = node.shutdown(grace);
    tokio::pin!(shutdown, second_signal);
    let mut hurried = false;
    loop {
        tokio::select! {
            report = &mut shutdown => return (report, hurried),
            () = &mut second_signal, if !hurried => {
                println!("stopping now: saving what is not in the middle of a turn");
                node.hurry_shutdown();
                hurried = true;
            }
        }
    }
}

/// `GET /metrics`, `/healthz` and `/ready` of `node` (its `http_addr` port).
pub fn node_ops_router(node: &Node) -> axum::Router {
    let ready = node.clone();
    goverse_gate::ops_router(
        node.metrics().clone(),
        std::sync::Arc::new(move || ready.readiness().map_err(|why| why.to_string())),
    )
}

/// Runs node `flags.node_id` of the file until SIGTERM or Ctrl-C, with the object types
/// `register` adds (see the module docs).
pub async fn run_node(
    flags: &NodeFlags,
    register: impl FnOnce(NodeBuilder) -> NodeBuilder,
) -> Result<(), RunError> {
    let file = ClusterFile::load(&flags.config)?;
    let entry = file.node(&flags.node_id)?.clone();
    let mut config = file.node_config(&flags.node_id)?;
    config.tls = file.node_tls(&flags.node_id)?;
    warn_if_unauthenticated(&file);
    // Certificates are reloaded on SIGHUP and when their files change, for the process's life.
    let reloading = tokio_util::sync::CancellationToken::new();
    let _reloading = reloading.clone().drop_guard();
    if let Some(tls) = &config.tls {
        goverse_tls::watch(tls.reloadables(), file.tls_reload_interval(), reloading);
    }
    let ops_listener = match &entry.http_addr {
        Some(address) => {
            Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|cause| RunError::Listen {
                        address: address.clone(),
                        cause,
                    })?,
            )
        }
        None => None,
    };
    let listener = TcpListener::bind(&entry.grpc_addr)
        .await
        .map_err(|cause| RunError::Listen {
            address: entry.grpc_addr.clone(),
            cause,
        })?;
    let cluster = connect_cluster(&file).await?;
    let store = open_store(&file).await?;
    let mut builder = register(Node::builder(config)).cluster_store(cluster);
    if let Some(store) = &store {
        builder = builder.object_store(store.clone());
    }
    let node = builder.start().await.map_err(RunError::Start)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(crate::serve(node.clone(), listener, async {
        let _ = stopped.await;
    }));
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(ops_listener) = ops_listener {
        let mut router = node_ops_router(&node);
        if entry.enable_pprof
            && let Some(token) = &file.cluster.admin_token
        {
            router = router.merge(goverse_gate::profiling_router(token.as_str().into()));
        }
        let limits = file.connection_limits();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = ops_stopped.await;
            };
            let served = goverse_gate::serve_router(
                ops_listener,
                router,
                limits,
                "node operations HTTP",
                stopped,
                || {},
            );
            if let Err(err) = served.await {
                tracing::error!(cause = %err, "the operations port stopped");
            }
        });
    }
    let stopping = crate::stop_signal();
    println!(
        "node {} ({}) serving on {}; {} shards; store {}{}",
        entry.id,
        node.address(),
        entry.grpc_addr,
        file.cluster.shards,
        store.as_ref().map_or("none".to_owned(), |s| s.describe()),
        entry
            .http_addr
            .as_ref()
            .map_or(String::new(), |h| format!("; metrics http://{h}/metrics"))
    );
    stopping.await;
    println!("stopping: handing shards over and saving (a second signal stops waiting)");
    // Save first, while the node service still answers (peers' calls for shards handed over
    // are refused as not served and follow the shards), then end the connections.
    let (report, hurried) = shutdown_hurried_by_a_second_signal(&node, flags.grace).await;
    if !hurried {
        // The node has left the map; its peers stop sending to it and close their links once
        // the answers still due have arrived. Requests that arrive meanwhile are refused as not
        // served (their senders resend them to the new owners). Then the connections end.
        let drained = tokio::time::Instant::now() + Duration::from_secs(2);
        while !node.connected_gates().is_empty() && tokio::time::Instant::now() < drained {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = stop.send(());
    let _ = ops_stop.send(());
    let wait = if hurried {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(2)
    };
    let _ = tokio::time::timeout(wait, service).await;
    println!("stopped: {report}");
    if report.unsaved > 0 {
        return Err(RunError::Unsaved(report.unsaved));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NodeFlags, String> {
        NodeFlags::parse(args.iter().map(|a| (*a).to_owned())).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_parse_and_mistakes_are_named() {
        let flags = parse(&["--config", "c.yml", "--node-id=n1", "--grace", "5s"]).unwrap();
        assert_eq!(
            flags,
            NodeFlags {
                config: "c.yml".into(),
                node_id: "n1".into(),
                grace: Duration::from_secs(5),
            }
        );
        assert_eq!(
            parse(&["--node-id", "n1", "--config", "c.yml"])
                .unwrap()
                .grace,
            Duration::from_secs(20)
        );
        assert!(
            parse(&["--config", "c.yml"])
                .unwrap_err()
                .contains("--node-id is required")
        );
        assert!(
            parse(&["--config"])
                .unwrap_err()
                .contains("--config needs a value")
        );
        assert!(
            parse(&["--confg", "x"])
                .unwrap_err()
                .contains("\"--confg\"")
        );
        assert!(
            parse(&["--config", "c", "--node-id", "n", "--grace", "soon"])
                .unwrap_err()
                .contains("--grace")
        );
    }
}
