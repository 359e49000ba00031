//! `goverse bench local`: whole-system load on one in-process node.
//! `goverse bench gate`: load through a running gate (gRPC or HTTP) to its node.
//! `goverse bench shard-map`: a whole shard map written to etcd (in `bench_map`).
//! `goverse bench cluster`: calls from one node to another over the batched link (its
//! `--baseline`, a bare tonic stream, in `bench_stream`).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use goverse::persistence::{MemoryStore, ObjectStore, PostgresStore, SqliteStore};
use goverse::prelude::*;
use goverse_sample_counter::{Counter, CounterRef, DurableCounter, DurableCounterRef};
use hdrhistogram::Histogram;

use crate::bench_stream::CallFn;
use crate::stores::PostgresArgs;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// Counters on an in-process node: M callers call random objects of N.
    Local(LocalArgs),
    /// Counter.Add through a running gate (start one with `goverse demo`): M callers call
    /// random counters of N.
    Gate(GateArgs),
    /// Places a whole shard map and writes it to a running etcd in batched transactions.
    ShardMap(crate::bench_map::ShardMapArgs),
    /// Two nodes in this process linked over loopback TCP: M callers on one node call random
    /// counters of N that the other node serves, every call over the batched node link.
    Cluster(ClusterArgs),
    /// The bare tonic echo server `bench gate --baseline` starts as its own process (as the
    /// gate is): prints its address, serves until its standard input closes.
    #[command(hide = true)]
    Echo,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    /// Counters to call (all served by the other node).
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 256)]
    callers: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Then run the same callers over one bare tonic stream in this process carrying the node
    /// protocol's messages to a server that answers each call at once (no runtime on either
    /// end), and report both and the ratios: the floor node links are measured against, in the
    /// same run.
    #[arg(long)]
    baseline: bool,
    /// Record each call's metrics (duration, queue wait, execution); `false` measures the same
    /// build with per-call recording off, for the overhead.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    call_metrics: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GateArgs {
    /// The gate's gRPC address, or its HTTP address with --http.
    #[arg(long, default_value = "127.0.0.1:49000")]
    gate: String,
    /// Drive the HTTP API (plain JSON bodies) instead of gRPC.
    #[arg(long)]
    http: bool,
    /// Reach the gate's gRPC port over TLS, checking its certificate against this CA (PEM).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 256)]
    callers: usize,
    /// Connections the callers share (HTTP/2 multiplexes callers over each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Counters to call.
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Then run the same load against a bare tonic server in this process that answers
    /// CallObject by echoing the request (no runtime behind it), and report both and the
    /// ratios: the floor the gate is measured against, in the same run.
    #[arg(long)]
    baseline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// No persistence: measures the runtime alone.
    None,
    /// The in-memory store.
    Memory,
    /// SQLite in a temporary directory (fsync on every commit).
    Sqlite,
    /// PostgreSQL at --postgres (its schema is created or upgraded first).
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DurabilityKind {
    /// Counter: saved periodically (here: at shutdown only).
    Periodic,
    /// DurableCounter: every Add is committed before it is acknowledged.
    WriteThrough,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LocalArgs {
    /// Objects to activate and call.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Measure activations per second and resident memory per activation instead of calls.
    /// With a store, the objects are first given saved state (by another node), so every
    /// activation loads a record.
    #[arg(long)]
    activate_only: bool,
    /// Object store behind the node.
    #[arg(long, value_enum, default_value_t = StoreKind::None)]
    store: StoreKind,
    /// When calls commit: periodic (Counter) or write-through (DurableCounter, acknowledged
    /// only once committed; needs a store).
    #[arg(long, value_enum, default_value_t = DurabilityKind::Periodic)]
    durability: DurabilityKind,
    /// Make every call a reliable call (a fresh call id each: a lookup, the call, and its
    /// record committed with the state before the reply). Needs a store.
    #[arg(long)]
    reliable: bool,
    /// Then run the same callers against bare tokio actors (one task per object, an mpsc
    /// queue in and a oneshot reply out) and report both and the ratios: the floor local calls
    /// are measured against, in the same run.
    #[arg(long)]
    baseline: bool,
    /// Record each call's metrics (duration, queue wait, execution); `false` measures the same
    /// build with per-call recording off, for the overhead.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    call_metrics: bool,
    #[command(flatten)]
    postgres: PostgresArgs,
}

pub(crate) async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Local(args) => local(args).await,
        BenchCommand::Gate(args) => gate(args).await,
        BenchCommand::Echo => echo_process().await,
        BenchCommand::ShardMap(args) => crate::bench_map::shard_map(args).await,
        BenchCommand::Cluster(args) => cluster(args).await,
    }
}

fn resident_bytes() -> u64 {
    // Second field of /proc/self/statm: resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

async fn open_store(
    args: &LocalArgs,
) -> anyhow::Result<(Option<Arc<dyn ObjectStore>>, Option<tempfile::TempDir>)> {
    Ok(match args.store {
        StoreKind::None => (None, None),
        StoreKind::Memory => (Some(Arc::new(MemoryStore::new())), None),
        StoreKind::Sqlite => {
            let dir = tempfile::tempdir()?;
            let store = SqliteStore::open(dir.path().join("bench.db"))?;
            (Some(Arc::new(store)), Some(dir))
        }
        StoreKind::Postgres => {
            let config = args
                .postgres
                .resolve(None)?
                .context("--store postgres needs --postgres URL")?;
            let store = PostgresStore::connect(&config).await?;
            store.migrate().await?;
            (Some(Arc::new(store)), None)
        }
    })
}

async fn start_node(
    store: Option<Arc<dyn ObjectStore>>,
    call_metrics: bool,
) -> anyhow::Result<Node> {
    let config = NodeConfig {
        idle_timeout: Duration::ZERO,
        save_interval: Duration::ZERO,
        ..NodeConfig::default()
    };
    let mut builder = Node::builder(config)
        .call_metrics(call_metrics)
        .register::<Counter>()
        .register::<DurableCounter>();
    if let Some(store) = store {
        builder = builder.object_store(store);
    }
    Ok(builder.start().await?)
}

/// Gives every object of `ids` saved state, through a node of its own: Add(1) on each, then one
/// save of everything changed.
async fn give_saved_state(
    store: Arc<dyn ObjectStore>,
    ids: &Arc<Vec<ObjectId>>,
    callers: usize,
) -> anyhow::Result<()> {
    let node = start_node(Some(store), true).await?;
    let mut tasks = Vec::new();
    for c in 0..callers.max(1) {
        let (node, ids) = (node.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            for id in ids.iter().skip(c).step_by(callers.max(1)) {
                CounterRef::new(id)
                    .add(&node, Int32Value { value: 1 })
                    .await?;
            }
            Ok::<_, CallError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let (_, failed) = node.save_changed().await;
    anyhow::ensure!(failed == 0, "{failed} states could not be saved");
    let report = node.shutdown(Duration::from_secs(60)).await;
    anyhow::ensure!(report.unsaved == 0, "{} states not saved", report.unsaved);
    Ok(())
}

/// Activates `ids` with `callers` concurrent creators; returns the elapsed time.
async fn activate_all(
    node: &Node,
    type_name: &'static str,
    ids: Arc<Vec<ObjectId>>,
    callers: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers.max(1) {
        let (node, ids) = (node.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            for id in ids.iter().skip(c).step_by(callers.max(1)) {
                node.create_object(type_name, id.clone()).await?;
            }
            Ok::<_, CallError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

async fn local(args: LocalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.objects > 0, "--objects must be at least 1");
    anyhow::ensure!(args.callers > 0, "--callers must be at least 1");
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    anyhow::ensure!(
        args.durability == DurabilityKind::Periodic || args.store != StoreKind::None,
        "--durability write-through needs a store (--store sqlite, postgres or memory)"
    );
    anyhow::ensure!(
        !args.reliable || args.store != StoreKind::None,
        "--reliable needs a store (--store sqlite, postgres or memory)"
    );
    let (store, _dir) = open_store(&args).await?;
    // Durable counters get their own IDs: an ID holds one type, and a database may be reused.
    let prefix = match args.durability {
        DurabilityKind::Periodic => "counter",
        DurabilityKind::WriteThrough => "durable",
    };
    let ids: Arc<Vec<ObjectId>> = Arc::new(
        (0..args.objects)
            .map(|i| ObjectId::from(format!("{prefix}-{i}")))
            .collect(),
    );

    if args.activate_only {
        if let Some(store) = &store {
            if !args.json {
                eprintln!("giving {} counters saved state first", args.objects);
            }
            give_saved_state(store.clone(), &ids, args.callers).await?;
        }
        let node = start_node(store.clone(), args.call_metrics).await?;
        let before = resident_bytes();
        let elapsed = activate_all(&node, "Counter", ids.clone(), args.callers).await?;
        let after = resident_bytes();
        let per_sec = args.objects as f64 / elapsed.as_secs_f64();
        let per_activation = after.saturating_sub(before) as f64 / args.objects as f64;
        let loaded = node.stats().activations;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "objects": args.objects,
                    "activations_per_sec": per_sec.round(),
                    // The node that gave the objects state freed memory this one reuses, so
                    // RSS growth says nothing then.
                    "rss_bytes_per_activation": store.is_none().then(|| per_activation.round()),
                    "seconds": elapsed.as_secs_f64(),
                    "with_saved_state": store.is_some(),
                })
            );
        } else {
            println!(
                "activated {} counters ({loaded} activations{}) in {:.3} s",
                args.objects,
                if store.is_some() {
                    ", each loading saved state"
                } else {
                    ""
                },
                elapsed.as_secs_f64()
            );
            println!("activations/s          {per_sec:.0}");
            if store.is_none() {
                println!(
                    "resident bytes/object  {per_activation:.0}  (RSS growth / objects, Counter state is 4 bytes)"
                );
            }
        }
        node.shutdown(Duration::from_secs(30)).await;
        return Ok(());
    }

    let node = start_node(store.clone(), args.call_metrics).await?;
    let durable = args.durability == DurabilityKind::WriteThrough;
    let type_name = if durable { "DurableCounter" } else { "Counter" };
    activate_all(&node, type_name, ids.clone(), args.callers).await?;
    let refs: Arc<Vec<(CounterRef, DurableCounterRef)>> = Arc::new(
        ids.iter()
            .map(|id| (CounterRef::new(id), DurableCounterRef::new(id)))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let reliable = args.reliable;
    let run = fastrand::u64(..);
    for caller in 0..args.callers {
        let (node, refs, stop, done, errors) = (
            node.clone(),
            refs.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
            let mut rng = fastrand::Rng::new();
            let mut local = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (counter, durable_counter) = &refs[rng.usize(..refs.len())];
                let started = Instant::now();
                let result = if reliable {
                    let call_id = format!("bench-{run:x}-{caller}-{}", histogram.len());
                    counter
                        .call_reliable(call_id)
                        .add(&node, Int32Value { value: 1 })
                        .await
                } else if durable {
                    durable_counter.add(&node, Int32Value { value: 1 }).await
                } else {
                    counter.add(&node, Int32Value { value: 1 }).await
                };
                let nanos = started.elapsed().as_nanos() as u64;
                if result.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = histogram.record(nanos.max(1));
                local += 1;
                if local == 256 {
                    done.fetch_add(local, Ordering::Relaxed);
                    local = 0;
                    // Let other callers on this worker run, as a real service's tasks would.
                    tokio::task::yield_now().await;
                }
            }
            done.fetch_add(local, Ordering::Relaxed);
            histogram
        }));
    }
    let started = Instant::now();
    let total = Duration::from_secs_f64(args.duration);
    let mut last = (0u64, started);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(1).min(total.saturating_sub(started.elapsed())))
            .await;
        if !args.json {
            let now = (done.load(Ordering::Relaxed), Instant::now());
            let rate = (now.0 - last.0) as f64 / now.1.duration_since(last.1).as_secs_f64();
            eprint!(
                "\r  {:>5.1} s  {:>10.0} calls/s",
                started.elapsed().as_secs_f64(),
                rate
            );
            let _ = std::io::stderr().flush();
            last = now;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut histogram = Histogram::<u64>::new(3)?;
    for task in tasks {
        histogram.add(task.await?)?;
    }
    if !args.json {
        eprintln!();
    }
    let calls = histogram.len();
    let per_sec = calls as f64 / elapsed.as_secs_f64();
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let errors = errors.load(Ordering::Relaxed);
    let commits = node.stats().commits;
    node.shutdown(Duration::from_secs(30)).await;
    let ours = Load {
        histogram: histogram.clone(),
        errors,
        elapsed,
    };
    let baseline = if args.baseline {
        if !args.json {
            eprintln!("the same callers against bare tokio actors (mpsc in, oneshot out)");
        }
        Some(ask_baseline(args.objects, args.callers, args.duration, args.json).await)
    } else {
        None
    };
    if args.json {
        let mut value = serde_json::json!({
            "calls_per_sec": per_sec.round(),
            "p50_us": us(0.5),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "calls": calls,
            "errors": errors,
            "objects": args.objects,
            "callers": args.callers,
            "seconds": elapsed.as_secs_f64(),
            "durability": if durable { "write-through" } else { "periodic" },
            "reliable": reliable,
            "commits": commits,
        });
        if let Some(floor) = &baseline {
            add_baseline(
                &mut value,
                &ours,
                floor,
                args.objects,
                args.callers,
                "tokio mpsc+oneshot ask",
            );
        }
        println!("{value}");
    } else {
        println!(
            "objects {}  callers {}  duration {:.1} s  {}",
            args.objects,
            args.callers,
            elapsed.as_secs_f64(),
            if durable {
                "write-through (each call acknowledged once committed)"
            } else {
                "periodic"
            }
        );
        println!("calls/s   {per_sec:.0}  ({calls} calls, {errors} errors)");
        if durable && commits > 0 {
            println!(
                "commits   {commits}  ({:.1} writes per transaction)",
                calls as f64 / commits as f64
            );
        }
        println!(
            "latency   p50 {:.2} µs  p99 {:.2} µs  p99.9 {:.2} µs",
            us(0.5),
            us(0.99),
            us(0.999)
        );
        if let Some(floor) = &baseline {
            print_baseline(
                &ours,
                floor,
                args.objects,
                args.callers,
                "tokio mpsc+oneshot ask",
            );
        }
    }
    anyhow::ensure!(errors == 0, "{errors} calls failed");
    Ok(())
}

/// The floor of a local call: one tokio task per object holding its counter, asked through an
/// mpsc queue with a oneshot for the reply, by callers looping as the local bench's do.
async fn ask_baseline(objects: usize, callers: usize, seconds: f64, quiet: bool) -> Load {
    type Ask = (i32, tokio::sync::oneshot::Sender<i32>);
    let actors: Arc<Vec<tokio::sync::mpsc::Sender<Ask>>> = Arc::new(
        (0..objects)
            .map(|_| {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Ask>(1024);
                tokio::spawn(async move {
                    let mut value = 0i32;
                    while let Some((delta, reply)) = rx.recv().await {
                        value = value.wrapping_add(delta);
                        let _ = reply.send(value);
                    }
                });
                tx
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (actors, stop, errors) = (actors.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
            let mut rng = fastrand::Rng::new();
            let mut local = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let actor = &actors[rng.usize(..actors.len())];
                let started = Instant::now();
                let (reply, answer) = tokio::sync::oneshot::channel();
                let ok = actor.send((1, reply)).await.is_ok() && answer.await.is_ok();
                let nanos = started.elapsed().as_nanos() as u64;
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = histogram.record(nanos.max(1));
                local += 1;
                if local == 256 {
                    local = 0;
                    tokio::task::yield_now().await;
                }
            }
            histogram
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
    for task in tasks {
        if let Ok(h) = task.await {
            let _ = histogram.add(h);
        }
    }
    if !quiet {
        eprintln!(
            "  {:.0} asks/s",
            histogram.len() as f64 / elapsed.as_secs_f64()
        );
    }
    Load {
        histogram,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
    }
}

/// `goverse bench cluster`: node B serves every shard; callers on node A call B's counters,
/// each call forwarded over A's link to B (loopback TCP, one batched stream).
async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    use goverse::cluster::{ClusterStore, MemoryClusterStore};
    anyhow::ensure!(args.objects > 0, "--objects must be at least 1");
    anyhow::ensure!(args.callers > 0, "--callers must be at least 1");
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    let coordinator: Arc<dyn ClusterStore> = Arc::new(MemoryClusterStore::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let config = NodeConfig {
            address: listener.local_addr()?.to_string(),
            idle_timeout: Duration::ZERO,
            save_interval: Duration::ZERO,
            // No rebalancing while the benchmark runs: the first node keeps every shard.
            stability_window: Duration::from_secs(24 * 3600),
            ..NodeConfig::default()
        };
        let node = Node::builder(config)
            .call_metrics(args.call_metrics)
            .register::<Counter>()
            .register::<DurableCounter>()
            .cluster_store(coordinator.clone())
            .start()
            .await?;
        tokio::spawn(goverse::serve(
            node.clone(),
            listener,
            stop.clone().cancelled_owned(),
        ));
        nodes.push(node);
    }
    let (owner, caller) = (nodes[0].clone(), nodes[1].clone());
    anyhow::ensure!(
        owner.stats().owned_shards == u64::from(owner.config().shard_count)
            && caller.stats().owned_shards == 0,
        "the serving node does not own every shard"
    );
    let ids: Arc<Vec<CounterRef>> = Arc::new(
        (0..args.objects)
            .map(|i| CounterRef::new(format!("counter-{i}").as_str()))
            .collect(),
    );
    // Activate every counter on its owner, through the calling node (and wait for its link).
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids[0].add(&caller, Int32Value { value: 0 }).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the nodes did not link");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    activate_all(
        &caller,
        "Counter",
        Arc::new(
            (0..args.objects)
                .map(|i| ObjectId::from(format!("counter-{i}")))
                .collect(),
        ),
        args.callers,
    )
    .await?;
    anyhow::ensure!(
        caller.stats().active_objects == 0,
        "objects became active on the caller"
    );
    let call: CallFn = {
        let (caller, ids) = (caller.clone(), ids.clone());
        Arc::new(move |_caller, object| {
            let (caller, ids) = (caller.clone(), ids.clone());
            Box::pin(async move {
                ids[object]
                    .add(&caller, Int32Value { value: 1 })
                    .await
                    .is_ok()
            })
        })
    };
    let load = drive(args.callers, args.objects, args.duration, args.json, call).await?;
    caller.shutdown(Duration::from_secs(10)).await;
    owner.shutdown(Duration::from_secs(10)).await;
    stop.cancel();
    if args.baseline {
        if !args.json {
            eprintln!("the same callers over one bare tonic stream to an answering server");
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let call = crate::bench_stream::stream_calls(stop.clone()).await?;
        let floor = drive(args.callers, args.objects, args.duration, args.json, call).await?;
        stop.cancel();
        compare(
            &load,
            &floor,
            args.json,
            args.objects,
            args.callers,
            "bare tonic stream",
        );
        anyhow::ensure!(floor.errors == 0, "{} baseline calls failed", floor.errors);
    } else {
        load.report(args.json, args.objects, args.callers);
    }
    anyhow::ensure!(load.errors == 0, "{} calls failed", load.errors);
    Ok(())
}

async fn gate(args: GateArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::io::AsyncBufReadExt as _;
    anyhow::ensure!(args.objects > 0, "--objects must be at least 1");
    anyhow::ensure!(args.callers > 0, "--callers must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    let objects = args.objects;
    let call: CallFn = if args.http {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.callers)
            .tcp_nodelay(true)
            .build()?;
        let base = format!("http://{}/api/v1/objects/call/Counter", args.gate);
        client
            .post(format!("{base}/bench-0/Add"))
            .body(r#"{"value":0}"#)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("cannot call Counter.Add through http://{}", args.gate))?;
        Arc::new(move |_caller, object| {
            let request = client
                .post(format!("{base}/bench-{object}/Add"))
                .body(r#"{"value":1}"#);
            Box::pin(
                async move { matches!(request.send().await, Ok(r) if r.status().is_success()) },
            )
        })
    } else {
        let tls = match &args.tls_ca {
            Some(ca) => Some(goverse::tls::ClientTls::load(
                "bench",
                goverse::tls::ClientFiles {
                    ca: Some(ca.clone()),
                    ..goverse::tls::ClientFiles::default()
                },
                goverse::tls::ALPN_H2,
            )?),
            None => None,
        };
        grpc_calls(&args.gate, args.connections, tls).await?
    };
    let load = drive(args.callers, objects, args.duration, args.json, call).await?;
    if !args.baseline {
        load.report(args.json, objects, args.callers);
        anyhow::ensure!(load.errors == 0, "{} calls failed", load.errors);
        return Ok(());
    }
    anyhow::ensure!(
        !args.http,
        "--baseline compares gRPC calls; leave out --http"
    );
    // The echo server is a process of its own, as the gate is, so both runs cross the same
    // process boundary and share the machine the same way.
    let mut echo = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "echo"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the echo server")?;
    let mut lines = tokio::io::BufReader::new(echo.stdout.take().expect("piped")).lines();
    let address = lines
        .next_line()
        .await?
        .context("the echo server printed no address")?;
    if !args.json {
        eprintln!("the same load against a bare tonic echo server (its own process) at {address}");
    }
    let call = grpc_calls(&address, args.connections, None).await?;
    let baseline = drive(args.callers, objects, args.duration, args.json, call).await?;
    drop(echo.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), echo.wait()).await;
    compare(
        &load,
        &baseline,
        args.json,
        objects,
        args.callers,
        "tonic echo",
    );
    anyhow::ensure!(load.errors == 0, "{} calls failed", load.errors);
    Ok(())
}

/// Counter.Add calls over `connections` gRPC connections (over TLS with `tls`) to the gate (or
/// echo server) at `address`, each caller on one of them.
async fn grpc_calls(
    address: &str,
    connections: usize,
    tls: Option<Arc<goverse::tls::ClientTls>>,
) -> anyhow::Result<CallFn> {
    use goverse::prost::Message as _;
    use goverse_proto::gate::CallObjectRequest;
    use goverse_proto::gate::gate_service_client::GateServiceClient;

    let mut clients = Vec::new();
    for _ in 0..connections {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{address}"))?.tcp_nodelay(true);
        let connected = match &tls {
            None => endpoint.connect().await,
            Some(tls) => {
                let connector = goverse::tls::connector(tls.clone(), address.to_owned());
                endpoint.connect_with_connector(connector).await
            }
        };
        let channel =
            connected.with_context(|| format!("cannot connect to the gate at {address}"))?;
        clients.push(GateServiceClient::new(channel));
    }
    let one = Int32Value { value: 1 }.encode_to_vec();
    let type_url = format!("{}google.protobuf.Int32Value", goverse::TYPE_URL_PREFIX);
    let clients = Arc::new(clients);
    Ok(Arc::new(move |caller, object| {
        let mut client = clients[caller % clients.len()].clone();
        let request = CallObjectRequest {
            client_id: String::new(),
            r#type: "Counter".to_owned(),
            id: format!("bench-{object}"),
            method: "Add".to_owned(),
            request: Some(prost_types::Any {
                type_url: type_url.clone(),
                value: one.clone(),
            }),
        };
        Box::pin(async move { client.call_object(request).await.is_ok() })
    }))
}

/// A gate service that answers CallObject with the request's payload and nothing else.
struct Echo;

#[tonic::async_trait]
impl goverse_proto::gate::gate_service_server::GateService for Echo {
    type RegisterStream = futures::stream::Empty<Result<prost_types::Any, tonic::Status>>;

    async fn register(
        &self,
        _request: tonic::Request<goverse_proto::gate::Empty>,
    ) -> Result<tonic::Response<Self::RegisterStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("echo only"))
    }

    async fn call_object(
        &self,
        request: tonic::Request<goverse_proto::gate::CallObjectRequest>,
    ) -> Result<tonic::Response<goverse_proto::gate::CallObjectResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            goverse_proto::gate::CallObjectResponse {
                response: request.into_inner().request,
            },
        ))
    }

    async fn create_object(
        &self,
        _request: tonic::Request<goverse_proto::gate::CreateObjectRequest>,
    ) -> Result<tonic::Response<goverse_proto::gate::CreateObjectResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("echo only"))
    }

    async fn delete_object(
        &self,
        _request: tonic::Request<goverse_proto::gate::DeleteObjectRequest>,
    ) -> Result<tonic::Response<goverse_proto::gate::DeleteObjectResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("echo only"))
    }

    async fn reliable_call_object(
        &self,
        _request: tonic::Request<goverse_proto::gate::ReliableCallObjectRequest>,
    ) -> Result<tonic::Response<goverse_proto::gate::ReliableCallObjectResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("echo only"))
    }
}

/// `goverse bench echo`: serves [`Echo`] on a free loopback port, printing the address, until
/// standard input closes.
async fn echo_process() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(goverse_proto::gate::gate_service_server::GateServiceServer::new(Echo))
        .serve_with_incoming_shutdown(incoming, async {
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        })
        .await?;
    Ok(())
}

/// `ours` / `floor`: (calls/s ratio, p50 ratio).
fn ratios(ours: &Load, floor: &Load) -> (f64, f64) {
    let rate = |l: &Load| l.histogram.len() as f64 / l.elapsed.as_secs_f64();
    let p50 = |l: &Load| l.histogram.value_at_quantile(0.5) as f64 / 1000.0;
    (rate(ours) / rate(floor), p50(ours) / p50(floor))
}

/// Adds the baseline `floor` and the ratios to a bench's JSON.
fn add_baseline(
    value: &mut serde_json::Value,
    ours: &Load,
    floor: &Load,
    objects: usize,
    callers: usize,
    name: &str,
) {
    let (throughput, latency) = ratios(ours, floor);
    value["baseline"] = floor.json(objects, callers);
    value["baseline_name"] = name.into();
    value["throughput_vs_baseline"] = ((throughput * 1000.0).round() / 1000.0).into();
    value["p50_vs_baseline"] = ((latency * 1000.0).round() / 1000.0).into();
}

/// Prints the baseline `floor` and the ratios after a bench's own lines.
fn print_baseline(ours: &Load, floor: &Load, objects: usize, callers: usize, name: &str) {
    let (throughput, latency) = ratios(ours, floor);
    println!("-- baseline: {name}");
    floor.report(false, objects, callers);
    println!("-- ours / baseline: calls/s {throughput:.2} x, p50 {latency:.2} x");
}

/// Prints `ours` and `floor` and how they compare.
fn compare(ours: &Load, floor: &Load, json: bool, objects: usize, callers: usize, name: &str) {
    if json {
        let mut value = ours.json(objects, callers);
        add_baseline(&mut value, ours, floor, objects, callers, name);
        println!("{value}");
    } else {
        ours.report(false, objects, callers);
        print_baseline(ours, floor, objects, callers, name);
    }
}

struct Load {
    histogram: Histogram<u64>,
    errors: u64,
    elapsed: Duration,
}

impl Load {
    fn json(&self, objects: usize, callers: usize) -> serde_json::Value {
        let calls = self.histogram.len();
        let us = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        serde_json::json!({
            "calls_per_sec": (calls as f64 / self.elapsed.as_secs_f64()).round(),
            "p50_us": us(0.5),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "calls": calls,
            "errors": self.errors,
            "objects": objects,
            "callers": callers,
            "seconds": self.elapsed.as_secs_f64(),
        })
    }

    fn report(&self, json: bool, objects: usize, callers: usize) {
        let calls = self.histogram.len();
        let per_sec = calls as f64 / self.elapsed.as_secs_f64();
        let us = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        if json {
            println!("{}", self.json(objects, callers));
        } else {
            println!(
                "objects {objects}  callers {callers}  duration {:.1} s",
                self.elapsed.as_secs_f64()
            );
            println!(
                "calls/s   {per_sec:.0}  ({calls} calls, {} errors)",
                self.errors
            );
            println!(
                "latency   p50 {:.2} µs  p99 {:.2} µs  p99.9 {:.2} µs",
                us(0.5),
                us(0.99),
                us(0.999)
            );
        }
    }
}

/// Runs `callers` tasks calling `call(caller, random object)` for `seconds`.
async fn drive(
    callers: usize,
    objects: usize,
    seconds: f64,
    quiet: bool,
    call: CallFn,
) -> anyhow::Result<Load> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let (call, stop, done, errors) = (call.clone(), stop.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
            let mut rng = fastrand::Rng::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                if !call(caller, rng.usize(..objects)).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = histogram.record((started.elapsed().as_nanos() as u64).max(1));
                done.fetch_add(1, Ordering::Relaxed);
            }
            histogram
        }));
    }
    let started = Instant::now();
    let total = Duration::from_secs_f64(seconds);
    let mut last = (0u64, started);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(1).min(total.saturating_sub(started.elapsed())))
            .await;
        if !quiet {
            let now = (done.load(Ordering::Relaxed), Instant::now());
            let rate = (now.0 - last.0) as f64 / now.1.duration_since(last.1).as_secs_f64();
            eprint!(
                "\r  {:>5.1} s  {:>10.0} calls/s",
                started.elapsed().as_secs_f64(),
                rate
            );
            let _ = std::io::stderr().flush();
            last = now;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut histogram = Histogram::<u64>::new(3)?;
    for task in tasks {
        histogram.add(task.await?)?;
    }
    if !quiet {
        eprintln!();
    }
    Ok(Load {
        histogram,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
    })
}
