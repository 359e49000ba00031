//! `cache`: the distributed cache's terminal client. It connects to any of the gates given
//! (moving to the next when one goes away) and says what it is doing on standard error.
//!
//! ```text
//! cache --gate 127.0.0.1:49001,127.0.0.1:49002 set user:1001 Alice
//! cache set session:abc active --ttl 30
//! cache get user:1001
//! cache del user:1001
//! cache stats
//! ```
//!
//! Exit codes: 0 done, 1 failed (the error says why), 3 `get` found nothing, 4 `del` had
//! nothing to delete.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use goverse::client::Client;
use goverse_sample_cache::client::CacheClient;

#[derive(Debug, Parser)]
#[command(version, about = "The distributed cache sample's client")]
struct Args {
    /// Gate gRPC addresses, comma-separated, tried in turn.
    #[arg(
        long,
        default_value = "127.0.0.1:49000",
        env = "GOVERSE_GATE",
        value_delimiter = ','
    )]
    gate: Vec<String>,
    /// How long to wait for each answer.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stores VALUE under KEY.
    Set {
        key: String,
        value: String,
        /// Seconds until the entry is gone (default: never).
        #[arg(long, default_value_t = 0)]
        ttl: i64,
    },
    /// Prints the value under KEY.
    Get { key: String },
    /// Removes KEY.
    Del { key: String },
    /// Hits and misses per node, and the cluster's total.
    Stats,
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let client = Client::builder(args.gate.iter().cloned())
        .call_timeout(timeout)
        .reconnect_for(timeout.min(Duration::from_secs(5)))
        .build();
    let cache = CacheClient::new(client);
    let code = match args.command {
        Command::Set { key, value, ttl } => {
            cache.set(&key, &value, ttl).await?;
            let expiry = if ttl > 0 {
                format!("expires in {ttl} s")
            } else {
                "no expiry".to_owned()
            };
            println!("OK ({expiry})");
            ExitCode::SUCCESS
        }
        Command::Get { key } => match cache.get(&key).await? {
            Some(value) => {
                println!("{value}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("{key}: not found (never set, deleted or expired)");
                ExitCode::from(3)
            }
        },
        Command::Del { key } => {
            if cache.delete(&key).await? {
                println!("deleted {key}");
                ExitCode::SUCCESS
            } else {
                eprintln!("{key}: nothing to delete");
                ExitCode::from(4)
            }
        }
        Command::Stats => {
            let stats = cache.stats().await?;
            println!(
                "{:<24} {:>10} {:>10} {:>10}",
                "node", "sets", "hits", "misses"
            );
            for node in &stats.nodes {
                println!(
                    "{:<24} {:>10} {:>10} {:>10}",
                    node.node_address, node.total_entries, node.hit_count, node.miss_count
                );
            }
            let total = stats.total.unwrap_or_default();
            println!(
                "{:<24} {:>10} {:>10} {:>10}",
                "total", total.total_entries, total.hit_count, total.miss_count
            );
            for missing in &stats.unreachable {
                eprintln!("not counted: {missing}");
            }
            ExitCode::SUCCESS
        }
    };
    if let Some(gate) = cache.client().gate() {
        eprintln!("(via gate {gate})");
    }
    Ok(code)
}

#[tokio::main]
async fn main() -> ExitCode {
    goverse::run::init_logging("warn");
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
