//! `wallet-server`: a node with the Wallet type and a gate in one process, on SQLite or
//! PostgreSQL.
//!
//! ```text
//! wallet-server --data-dir ./wallets                # SQLite file ./wallets/wallets.db
//! wallet-server --postgres postgres://user:pw@host/db
//! wallet deposit alice 100                          # the terminal client
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use goverse::gate::{AllowAnonymous, Gate, GateConfig};
use goverse::persistence::{ObjectStore, PostgresConfig, PostgresStore, SqliteStore};
use goverse::prelude::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A GoVerse node serving wallets, with a gate (gRPC and HTTP) in the same process.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The gate's gRPC address (upstream `gate.GateService`).
    #[arg(long, default_value = "127.0.0.1:49000")]
    listen: String,
    /// The gate's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: String,
    /// Keep wallets in the SQLite file `wallets.db` in this directory.
    #[arg(long, conflicts_with = "postgres")]
    data_dir: Option<PathBuf>,
    /// Keep wallets in PostgreSQL (a URL or libpq key=value string); the database needs
    /// `goverse db init` first.
    #[arg(long)]
    postgres: Option<String>,
}

async fn open_store(args: &Args) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if let Some(url) = &args.postgres {
        let store = PostgresStore::connect(&PostgresConfig::new(url.clone())).await?;
        return Ok(Arc::new(store));
    }
    let dir = args
        .data_dir
        .clone()
        .context("say where wallets are kept: --data-dir DIR or --postgres URL")?;
    let path = dir.join("wallets.db");
    let store = SqliteStore::open(&path)
        .with_context(|| format!("cannot open the store at {}", path.display()))?;
    Ok(Arc::new(store))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    goverse_sample_wallet::init_logging("warn");
    let args = Args::parse();
    let store = open_store(&args).await?;
    let grpc = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", args.listen))?;
    let http = TcpListener::bind(&args.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", args.http_listen))?;
    let grpc_addr = grpc.local_addr()?.to_string();
    let http_addr = http.local_addr()?.to_string();
    let node = goverse_sample_wallet::register(Node::builder(NodeConfig::default()))
        .object_store(store.clone())
        .start()
        .await
        .context("cannot start the node")?;
    let gate = Gate::start_local(
        GateConfig {
            advertise_address: grpc_addr.clone(),
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
        node.handler(),
    )?;
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (gate, stop) = (gate.clone(), stop.clone());
        async move {
            gate.serve(
                grpc,
                http,
                gate.http_router(),
                stop.cancelled_owned(),
                Duration::from_secs(5),
            )
            .await
        }
    });
    let stopping = goverse::stop_signal();
    println!(
        "wallet-server ready: gRPC {grpc_addr}, HTTP http://{http_addr}, store {}",
        store.describe()
    );
    stopping.await;
    stop.cancel();
    if let Ok(Err(err)) = serving.await {
        tracing::warn!(cause = %err, "the gate stopped with an error");
    }
    let report = node.shutdown(Duration::from_secs(10)).await;
    println!(
        "wallet-server stopped: {} wallets closed, {} saved, {} unsaved",
        report.deactivated, report.saved, report.unsaved
    );
    anyhow::ensure!(report.unsaved == 0, "{} wallets not saved", report.unsaved);
    Ok(())
}
