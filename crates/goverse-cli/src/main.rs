//! `goverse`: the one binary for everything generic (demo, gate, call, shard, bench, db).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every process started from this binary (nodes, gates, the demo, benchmarks) allocates with
/// mimalloc; see BENCHMARKS.md for what it changes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often, at most, a runtime thread gives the memory it freed back to the system.
const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Called when a runtime thread runs out of work: gives back to the system the memory this
/// thread's allocator heap holds after frees, at most every [`RELEASE_EVERY`]. mimalloc keeps
/// freed pages per thread and returns them only as later allocations come by, so a process that
/// goes quiet (an idle node, the demo after its start) would otherwise keep its start-up peak
/// resident; a busy thread parks rarely and collects at most once a second.
fn release_freed_memory_when_idle() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> =
            const { std::cell::Cell::new(None) };
    }
    LAST.with(|last| {
        let now = std::time::Instant::now();
        if last
            .get()
            .is_none_or(|at| now.duration_since(at) >= RELEASE_EVERY)
        {
            last.set(Some(now));
            // SAFETY: mi_collect walks the calling thread's heap and the allocator's shared
            // structures under their own locks; it may be called from any thread at any time.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}

mod bench;
mod bench_map;
mod bench_stream;
mod client;
mod cluster;
mod db;
mod demo;
mod demo_cluster;
mod gate;
mod inspector;
mod stores;
mod tour;

#[derive(Debug, Parser)]
#[command(
    name = "goverse",
    version,
    about = "GoVerse: a distributed virtual-actor runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node and a gate on the embedded defaults until stopped (or, with --tour, a scripted
    /// workload that exits).
    Demo(demo::DemoArgs),
    /// Runs a node of a cluster from its configuration file (serving the bundled sample types).
    Node(cluster::NodeArgs),
    /// Runs a gate: of a cluster (`--config FILE --gate-id ID`), or linked to one node (`--node`).
    Gate(gate::GateArgs),
    /// Serves the inspector of a cluster: a web UI and a JSON + SSE API over its nodes, gates,
    /// shard map, objects and calls, with moves, pins and drains for operators.
    Inspector(inspector::InspectorArgs),
    /// Checks or generates a cluster configuration file.
    #[command(subcommand)]
    Config(cluster::ConfigCommand),
    /// Looks at a running cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Calls a method through a gate; request and response are JSON.
    Call(client::CallArgs),
    /// Creates (activates) an object through a gate.
    Create(client::Target),
    /// Deletes an object through a gate.
    Delete(client::Target),
    /// Prints the shard an object ID lands on (FNV-1a 32-bit of the ID modulo the shard count).
    Shard {
        /// The object ID (plain, shard#N/name or host:port/name).
        object_id: String,
        /// Shard count.
        #[arg(long, default_value_t = goverse::DEFAULT_SHARD_COUNT)]
        shards: u32,
    },
    /// Load generators.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The object store's schema: init, status, verify, reset (PostgreSQL or SQLite).
    #[command(subcommand)]
    Db(db::DbCommand),
}

fn init_tracing(default: &str) {
    goverse::run::init_logging(default);
}

/// Lets a command that only prints end quietly when its reader goes away (`goverse cluster
/// status | head`): the default action of SIGPIPE, which Rust programs otherwise ignore, so that
/// printing to the closed pipe would panic. Servers keep ignoring it (a peer that hangs up must
/// not stop them).
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any other thread exists; restoring a
    // signal's default disposition has no other effect on this process's memory.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Shard { .. }
            | Command::Config(_)
            | Command::Cluster(_)
            | Command::Call(_)
            | Command::Create(_)
            | Command::Delete(_)
            | Command::Db(_)
    ) {
        quiet_on_closed_pipe();
    }
    match cli.command {
        Command::Shard { object_id, shards } => shard(&object_id, shards),
        Command::Demo(args) => {
            init_tracing("warn");
            run(demo::run(args))
        }
        Command::Node(args) => {
            init_tracing("info");
            run(cluster::node(args))
        }
        Command::Gate(args) => {
            init_tracing("info");
            run(gate::run(args))
        }
        Command::Inspector(args) => {
            init_tracing("info");
            run(inspector::run(args))
        }
        Command::Config(command) => {
            init_tracing("warn");
            run(async move { cluster::config(command) })
        }
        Command::Cluster(command) => {
            init_tracing("error");
            run(cluster::cluster(command))
        }
        Command::Call(args) => {
            init_tracing("error");
            run(client::call(args))
        }
        Command::Create(target) => {
            init_tracing("error");
            run(client::create(target))
        }
        Command::Delete(target) => {
            init_tracing("error");
            run(client::delete(target))
        }
        Command::Bench(command) => {
            init_tracing("error");
            run(bench::run(command))
        }
        Command::Db(command) => {
            init_tracing("warn");
            run(db::run(command))
        }
    }
}

fn run(job: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(release_freed_memory_when_idle)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn shard(object_id: &str, shards: u32) -> ExitCode {
    if let Err(why) = goverse::check_shard_count(shards) {
        eprintln!("error: --shards: {why}");
        return ExitCode::from(2);
    }
    match goverse::shard_of(&goverse::ObjectId::from(object_id), shards) {
        Ok(shard) => {
            println!("{shard}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}
