//! `goverse demo`: the embedded default as a long-running service. One process holds the
//! in-memory cluster store, a SQLite object store (or PostgreSQL with `--postgres`), a node with
//! the sample types, the node service and a gate (gRPC and HTTP). Runs until Ctrl-C or SIGTERM,
//! then saves every object and exits 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use goverse::gate::rules::{Access, AccessRule, Lifecycle, LifecycleRule};
use goverse::gate::{AllowAnonymous, Gate, GateConfig};
use goverse::persistence::{ObjectStore, PostgresStore};
use goverse::prelude::*;
use goverse_sample_counter::{Counter, DurableCounter};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::stores::PostgresArgs;
use crate::tour::parse_duration;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Run the scripted tour (activation, turns, idle deactivation, reactivation) and exit,
    /// instead of serving.
    #[arg(long)]
    tour: bool,
    /// Run a cluster instead: its own etcd, this many `goverse node` processes and a
    /// `goverse gate`, all on loopback (needs etcd installed: apt-get install etcd-server).
    #[arg(long, conflicts_with_all = ["tour", "postgres"])]
    nodes: Option<usize>,
    /// Where the SQLite store lives (default: a fresh temporary directory, removed at exit; pass
    /// a directory to keep objects between runs).
    #[arg(long, conflicts_with = "postgres")]
    data_dir: Option<PathBuf>,
    /// Keep objects in PostgreSQL instead of SQLite (its schema is created or upgraded first).
    #[command(flatten)]
    postgres: PostgresArgs,
    /// The node's lease in the (in-memory) cluster store: a process paused for longer stops
    /// serving until it has re-claimed its shards.
    #[arg(long, value_parser = parse_duration)]
    lease_ttl: Option<Duration>,
    /// How often objects changed since their last save are saved (periodic durability).
    #[arg(long, value_parser = parse_duration)]
    save_interval: Option<Duration>,
    /// How long reliable-call records are kept (a retry arriving later runs the call again).
    #[arg(long, value_parser = parse_duration)]
    reliable_call_retention: Option<Duration>,
    /// Idle timeout of objects (the node default is 15 minutes; the tour uses 1 s).
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Record each call's metrics (duration, queue wait, execution); `false` serves the same
    /// build with per-call recording off (to measure its cost with `bench gate`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    call_metrics: bool,
    /// The token the inspector's operator actions need (moves, pins, drains); default: a
    /// random one, printed.
    #[arg(long, env = "GOVERSE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The node service address (gates connect here).
    #[arg(long, default_value = "127.0.0.1:47000")]
    node_listen: String,
    /// The secret peers must present on the node service port (at least 16 characters). When
    /// the node listens on a non-loopback address without one, a random secret is made and
    /// printed: the port is never open to strangers.
    #[arg(long, env = "GOVERSE_PEER_SECRET", hide_env_values = true)]
    peer_secret: Option<String>,
    /// Most connections open at once on each port (node service, gate gRPC, gate HTTP); more
    /// wait in the kernel's backlog.
    #[arg(long, default_value_t = goverse::ConnectionLimits::default().max_connections)]
    max_connections: usize,
    /// A connection on which neither side has sent a byte for this long is closed (every port).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    connection_idle_timeout: Duration,
    /// How long an HTTP/1 client may take to send a request's headers.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    header_timeout: Duration,
    /// The gate's gRPC address (upstream `gate.GateService`).
    #[arg(long, default_value = "127.0.0.1:49000")]
    listen: String,
    /// The gate's HTTP address (JSON API and server-sent events).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: String,
}

async fn bind(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for the {what}"))
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(nodes) = args.nodes {
        return crate::demo_cluster::run(nodes, args.data_dir).await;
    }
    if args.tour {
        return crate::tour::run(
            args.data_dir,
            args.idle_timeout.unwrap_or(Duration::from_secs(1)),
        )
        .await;
    }
    let (_temp, store): (Option<tempfile::TempDir>, Arc<dyn ObjectStore>) = match args
        .postgres
        .resolve(None)?
    {
        Some(config) => {
            let store = PostgresStore::connect(&config).await?;
            // The demo sets its database up itself (a node refuses to), and says so.
            if store.schema_version().await? == 0 {
                println!(
                    "database at {} has no GoVerse schema: creating it (as `goverse db init` does)",
                    store.target()
                );
            }
            for (version, description) in store.migrate().await? {
                println!("schema migration {version} applied: {description}");
            }
            (None, Arc::new(store))
        }
        None => {
            let (temp, _, store) = crate::tour::open_store(args.data_dir)?;
            (temp, store)
        }
    };

    // Bind everything first, so a busy port fails before anything starts.
    let node_listener = bind(&args.node_listen, "node service").await?;
    let grpc_listener = bind(&args.listen, "gate (gRPC)").await?;
    let http_listener = bind(&args.http_listen, "gate (HTTP)").await?;
    let node_addr = node_listener.local_addr()?.to_string();
    let grpc_addr = grpc_listener.local_addr()?.to_string();
    let http_addr = http_listener.local_addr()?.to_string();

    let mut counter = TypeOptions::<Counter>::default();
    if let Some(idle) = args.idle_timeout {
        counter = counter.idle_timeout(idle);
    }
    let mut config = NodeConfig {
        address: node_addr.clone(),
        // The gate's HTTP port serves the process's metrics and health.
        ops_address: Some(http_addr.clone()),
        ..NodeConfig::default()
    };
    if let Some(ttl) = args.lease_ttl {
        config.lease_ttl = ttl;
    }
    if let Some(interval) = args.save_interval {
        config.save_interval = interval;
    }
    if let Some(retention) = args.reliable_call_retention {
        config.reliable_call_retention = retention;
    }
    let limits = goverse::ConnectionLimits {
        max_connections: args.max_connections,
        idle_timeout: args.connection_idle_timeout,
        header_timeout: args.header_timeout,
        ..goverse::ConnectionLimits::default()
    };
    config.connection_limits = limits;
    // The gate checks clients' requests against the rules, and the node again.
    config.access_rules = demo_access_rules();
    config.lifecycle_rules = demo_lifecycle_rules();
    config.peer_secret = match args.peer_secret {
        Some(secret) => Some(secret),
        None if !is_loopback(&node_addr) => {
            let secret = goverse::config::random_secret();
            println!(
                "the node service listens on {node_addr}, beyond loopback: peers must present \
                 the secret {secret} (pass --peer-secret to choose one)"
            );
            Some(secret)
        }
        None => None,
    };
    let mut durable = TypeOptions::<DurableCounter>::default();
    if let Some(idle) = args.idle_timeout {
        durable = durable.idle_timeout(idle);
    }
    // One registry for the node and the gate: both are scraped at the gate's `/metrics`.
    let metrics = goverse::metrics::Registry::new();
    // The embedded coordinator, shared with the inspector.
    let coordinator: Arc<dyn goverse::cluster::ClusterStore> =
        Arc::new(goverse::cluster::MemoryClusterStore::new());
    let prefix = config.cluster_prefix.clone();
    let builder = Node::builder(config)
        .cluster_store(coordinator.clone())
        .metrics(metrics.clone())
        .call_metrics(args.call_metrics)
        .register_with(counter)
        .register_with(durable)
        .object_store(store.clone());
    let builder = register_sample_objects(builder);
    let node = builder.start().await.context("cannot start the node")?;

    let stop_node = CancellationToken::new();
    let stop_gate = CancellationToken::new();
    let node_service = tokio::spawn(goverse::serve(
        node.clone(),
        node_listener,
        stop_node.clone().cancelled_owned(),
    ));
    // The gate shares the node's process, so it links to the node in-process: calls run straight
    // on the node, with no loopback socket between them.
    let gate = Gate::start_local(
        GateConfig {
            advertise_address: grpc_addr.clone(),
            access_rules: demo_access_rules(),
            lifecycle_rules: demo_lifecycle_rules(),
            metrics,
            ..GateConfig::default()
        }
        .with_connection_limits(limits),
        Arc::new(AllowAnonymous),
        node.handler(),
    )
    .context("cannot start the gate")?;
    let admin_token = args
        .admin_token
        .clone()
        .unwrap_or_else(goverse::config::random_secret);
    let inspector = goverse::inspector::Inspector::start(
        coordinator,
        &prefix,
        goverse::DEFAULT_SHARD_COUNT,
        goverse::inspector::InspectorConfig {
            admin_token: Some(admin_token.clone()),
            ..Default::default()
        },
    )
    .await
    .context("cannot start the inspector")?;
    let serving = tokio::spawn({
        let gate = gate.clone();
        let router = gate
            .http_router()
            .merge(sample_pages())
            .nest("/inspector", inspector.router())
            .route(
                "/inspector/",
                axum::routing::get(|| async { axum::response::Redirect::permanent("/inspector") }),
            );
        let stop = stop_gate.clone();
        async move {
            gate.serve(
                grpc_listener,
                http_listener,
                router,
                stop.cancelled_owned(),
                Duration::from_secs(5),
            )
            .await
        }
    });
    if !gate.wait_connected(Duration::from_secs(10)).await {
        anyhow::bail!("the gate could not reach the node at {node_addr}");
    }

    // Watched before anything says the demo is up, so a stop sent at once is not fatal.
    let stopping = goverse::stop_signal();
    println!("GoVerse demo: node and gate in one process (in-memory cluster store)");
    println!("  node service  {node_addr}");
    println!("  gate gRPC     {grpc_addr}   (upstream gate.GateService)");
    println!("  gate HTTP     http://{http_addr}");
    println!(
        "  chat          http://{http_addr}/chat/   (web client; two tabs chat with each other)"
    );
    println!(
        "  tic-tac-toe   http://{http_addr}/tictactoe/   (play the AI; games survive restarts)"
    );
    println!("  metrics       http://{http_addr}/metrics   (health: /healthz, /ready)");
    println!("  inspector     http://{http_addr}/inspector   (admin token {admin_token})");
    println!("  store         {}", store.describe());
    println!("  types         {}", crate::tour::type_list(&node));
    println!();
    println!("Try:");
    println!(
        "  curl -s -d '{{\"value\":5}}' http://{http_addr}/api/v1/objects/call/Counter/my-counter/Add"
    );
    println!("  curl -s -d '{{}}' http://{http_addr}/api/v1/objects/call/Counter/my-counter/Get");
    println!(
        "  curl -s -d '{{}}' http://{http_addr}/api/v1/objects/call/ChatRoomMgr/ChatRoomMgr0/ListChatRooms"
    );
    println!(
        "  curl -s -d '{{\"value\":1}}' http://{http_addr}/api/v1/objects/call/DurableCounter/d1/Add   (committed before the reply)"
    );
    println!(
        "  curl -s -H 'Idempotency-Key: dep-1' -d '{{\"amount\":\"100\"}}' http://{http_addr}/api/v1/objects/call/Wallet/alice/Deposit   (exactly once)"
    );
    println!("  curl -sN http://{http_addr}/api/v1/events/stream");
    println!("  goverse call --gate {grpc_addr} Counter my-counter Add '{{\"value\":5}}'");
    println!("  goverse delete --gate {grpc_addr} Counter my-counter");
    println!(
        "  cargo run --release -p goverse-sample-chat --bin chat-client -- --gate {grpc_addr} --name alice"
    );
    println!(
        "  cargo run --release -p goverse-sample-cache --bin cache -- --gate {grpc_addr} set user:1 Alice --ttl 30"
    );
    println!();
    println!("ready; Ctrl-C or SIGTERM stops it and saves every object");

    stopping.await;
    println!("stopping: saving every object (a second signal stops waiting)");
    // Save first, as `goverse node` does: the gate stops taking calls and drains within its own
    // deadline meanwhile, and no connection (a stalled client, a peer that sent half a preface)
    // can hold the saves back. Then the node service's connections end, within a deadline too.
    stop_gate.cancel();
    // The inspector's event streams end now, not at the drain deadline.
    inspector.stop();
    // The gate's own drain deadline is 5 s from now.
    let gate_deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let (report, hurried) =
        goverse::run::shutdown_hurried_by_a_second_signal(&node, Duration::from_secs(10)).await;
    stop_node.cancel();
    let wait = if hurried {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(2)
    };
    match tokio::time::timeout(wait, node_service).await {
        Ok(Ok(Err(err))) => tracing::warn!(cause = %err, "node service stopped with an error"),
        Err(_) => {
            tracing::warn!("node service connections still open after {wait:?}; leaving them")
        }
        _ => {}
    }
    match tokio::time::timeout_at(gate_deadline, serving).await {
        Ok(Ok(Err(err))) => tracing::warn!(cause = %err, "the gate stopped with an error"),
        Ok(Err(err)) => tracing::warn!(cause = %err, "the gate task failed"),
        Err(_) => {
            tracing::warn!("gate connections still open after its drain deadline; leaving them")
        }
        Ok(Ok(Ok(()))) => {}
    }
    println!("stopped: {report}");
    if report.unsaved > 0 {
        anyhow::bail!("{} object states could not be saved", report.unsaved);
    }
    Ok(())
}

/// Whether `address` is a loopback socket address.
fn is_loopback(address: &str) -> bool {
    address
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// The bundled sample types, as `goverse demo` and `goverse node` serve them: `Counter`,
/// `DurableCounter`, and the samples' types.
pub(crate) fn register_samples(builder: goverse::NodeBuilder) -> goverse::NodeBuilder {
    register_sample_objects(builder.register::<Counter>().register::<DurableCounter>())
}

/// The samples' types (chat, wallet, tic-tac-toe, distributed cache, bomberman), their message
/// descriptors and auto-load objects.
fn register_sample_objects(builder: goverse::NodeBuilder) -> goverse::NodeBuilder {
    let builder = goverse_sample_chat::register(builder);
    let builder = goverse_sample_wallet::register(builder);
    let builder = goverse_sample_tictactoe::register(builder);
    let builder = goverse_sample_cache::register(builder);
    goverse_sample_bomberman::register(builder)
}

/// The samples' web pages, served by every gate the `goverse` binary runs: `/chat/`,
/// `/tictactoe/`, `/bomberman/`.
pub(crate) fn sample_pages() -> axum::Router {
    goverse_sample_chat::web::router()
        .merge(goverse_sample_tictactoe::web::router())
        .merge(goverse_sample_bomberman::web::router())
}

/// The demo's types whose client IDs are free-form; each keeps out of the others' names.
const FREE_FORM_TYPES: [&str; 3] = ["Counter", "DurableCounter", "Wallet"];

/// The ID prefixes that belong to types other than `object_type` (the chat's `ChatRoom…`, the
/// tic-tac-toe services' `service-…`, the cache's entries, directory and per-node managers,
/// bomberman's matches, players and queue, and the other free-form types' names), as one
/// pattern.
fn others_prefixes(object_type: &str) -> String {
    let others: Vec<&str> = [
        "ChatRoom",
        "service-",
        "DistributedCache-",
        "CacheDirectory",
        ".+/CacheManager",
        "Match-",
        "Player-",
        "MatchmakingQueue",
    ]
    .into_iter()
    .chain(FREE_FORM_TYPES)
    .filter(|t| *t != object_type)
    .collect();
    format!("/({}).*/", others.join("|"))
}

/// Clients may use the counters, the wallets and the chat (except `ChatRoomMgr.RegisterRoom`,
/// which only rooms call), each type under its own IDs: the chat's are `ChatRoomMgr0` and
/// `ChatRoom-<name>`; the free-form types' may be anything but another type's name as a prefix,
/// so no client can take an ID another type needs (`Counter/ChatRoom-General` is refused).
/// With rules configured, anything unmatched is refused.
pub(crate) fn demo_access_rules() -> Vec<AccessRule> {
    let mut rules = goverse_sample_chat::access_rules();
    rules.extend(goverse_sample_tictactoe::access_rules());
    rules.extend(goverse_sample_cache::access_rules());
    rules.extend(goverse_sample_bomberman::access_rules());
    for object_type in FREE_FORM_TYPES {
        rules.push(AccessRule {
            object_type: object_type.to_owned(),
            id: others_prefixes(object_type),
            method: String::new(),
            access: Access::Reject,
        });
    }
    rules.extend(FREE_FORM_TYPES.into_iter().map(|object_type| AccessRule {
        object_type: object_type.to_owned(),
        id: String::new(),
        method: String::new(),
        access: Access::Allow,
    }));
    rules
}

/// Creates keep to each type's own IDs as calls do; counters may be deleted by clients;
/// everything else keeps the default (delete internal).
pub(crate) fn demo_lifecycle_rules() -> Vec<LifecycleRule> {
    let mut rules = goverse_sample_chat::lifecycle_rules();
    for object_type in FREE_FORM_TYPES {
        rules.push(LifecycleRule {
            object_type: object_type.to_owned(),
            id: others_prefixes(object_type),
            lifecycle: Lifecycle::All,
            access: Access::Reject,
        });
    }
    rules.extend(
        ["Counter", "DurableCounter"]
            .into_iter()
            .map(|object_type| LifecycleRule {
                object_type: object_type.to_owned(),
                id: String::new(),
                lifecycle: Lifecycle::Delete,
                access: Access::Allow,
            }),
    );
    rules
}
