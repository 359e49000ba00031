//! `goverse bench shard-map`: how long writing a whole shard map to etcd takes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use goverse::NodeAddr;
use goverse::ShardId;
use goverse::cluster::{
    ClusterStore, EtcdClusterStore, EtcdConfig, Expect, Keys, MAX_TXN_OPS, Placement,
    PlacementConfig, ShardRecord, TxnOp, TxnOutcome, TxnWrite,
};

#[derive(Debug, clap::Args)]
pub(crate) struct ShardMapArgs {
    /// etcd client endpoints (comma-separated `host:port`).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Shards in the map.
    #[arg(long, default_value_t = 8192)]
    shards: u32,
    /// Nodes the map is placed on.
    #[arg(long, default_value_t = 10)]
    nodes: u16,
    /// Times to write the map (each under a fresh prefix, removed afterwards).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn shard_map(args: ShardMapArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.shards > 0 && args.nodes > 0,
        "--shards and --nodes must be positive"
    );
    let store = EtcdClusterStore::connect(&EtcdConfig {
        endpoints: args.etcd.clone(),
        ..EtcdConfig::default()
    })
    .await
    .context("cannot reach etcd")?;
    let live: BTreeSet<NodeAddr> = (0..args.nodes)
        .map(|n| NodeAddr::new(format!("127.0.0.1:{}", 47000 + n)))
        .collect();
    let empty: Vec<ShardRecord> = (0..args.shards)
        .map(|n| ShardRecord {
            shard: ShardId(n),
            target: None,
            current: None,
            epoch: 0,
        })
        .collect();
    let placed = Instant::now();
    let moves = Placement::new(PlacementConfig::default()).step(
        Duration::ZERO,
        &live,
        &empty,
        &BTreeMap::new(),
    );
    let placement_time = placed.elapsed();
    let mut times = Vec::new();
    for round in 0..args.rounds {
        let keys = Keys::new(&format!("/goverse-bench-{}-{round}", std::process::id()))
            .map_err(anyhow::Error::msg)?;
        let writes: Vec<TxnWrite> = moves
            .iter()
            .map(|m| TxnWrite {
                key: keys.shard(m.shard),
                expect: Some(Expect::Absent),
                op: TxnOp::Put {
                    value: ShardRecord {
                        shard: m.shard,
                        target: Some(m.to.clone()),
                        current: None,
                        epoch: 1,
                    }
                    .encode(),
                    lease: None,
                },
            })
            .collect();
        let started = Instant::now();
        for batch in writes.chunks(MAX_TXN_OPS) {
            let outcome = store.transact(batch).await?;
            anyhow::ensure!(
                matches!(outcome, TxnOutcome::Applied(_)),
                "a batch conflicted"
            );
        }
        times.push(started.elapsed());
        let (kvs, _) = store.get_prefix(&keys.shards()).await?;
        anyhow::ensure!(
            kvs.len() == args.shards as usize,
            "read back {} records",
            kvs.len()
        );
        let removals: Vec<TxnWrite> = kvs
            .iter()
            .map(|kv| TxnWrite {
                key: kv.key.clone(),
                expect: None,
                op: TxnOp::Delete,
            })
            .collect();
        for batch in removals.chunks(MAX_TXN_OPS) {
            store.transact(batch).await?;
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    let transactions = (args.shards as usize).div_ceil(MAX_TXN_OPS);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "shards": args.shards,
                "nodes": args.nodes,
                "transactions": transactions,
                "rounds": args.rounds,
                "placement_ms": placement_time.as_secs_f64() * 1e3,
                "write_ms_median": median.as_secs_f64() * 1e3,
                "write_ms_min": times[0].as_secs_f64() * 1e3,
                "write_ms_max": times[times.len() - 1].as_secs_f64() * 1e3,
            })
        );
    } else {
        println!(
            "{} shards on {} nodes: placed in {:.1} ms; written in {} transactions in {:.0} ms \
             (median of {}; {:.0}–{:.0} ms)",
            args.shards,
            args.nodes,
            placement_time.as_secs_f64() * 1e3,
            transactions,
            median.as_secs_f64() * 1e3,
            args.rounds,
            times[0].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
