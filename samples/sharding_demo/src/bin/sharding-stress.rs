//! Stresses a sharding-demo cluster through its gates and checks every reply:
//! `sharding-stress --config FILE [--duration 10s] [--callers 32]`.
//!
//! Callers increment random demo counters through random gates. Every `Increment` reply must be
//! a value no other reply of that counter had, and at the end each counter must hold its value
//! from the start plus the increments acknowledged: an increment lost, applied twice, or served
//! by two activations at once shows up as a mismatch. Now and then a caller also asks a random
//! shard's monitor for its stats (the shard it names must be its own), the global monitor for
//! its uptime, and a random node's monitor for its status. Exits 1 on any failure or mismatch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use goverse::config::{ClusterFile, parse_duration};
use goverse_proto::gate::CallObjectRequest;
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_sample_sharding::proto::{
    GetNodeStatsRequest, GetNodeStatsResponse, GetStatsRequest, GetStatsResponse, GetUptimeRequest,
    GetUptimeResponse, GetValueRequest, GetValueResponse, IncrementRequest, IncrementResponse,
};
use goverse_sample_sharding::{COUNTERS, GLOBAL_MONITOR, NODE_MONITOR, SHARD_MONITOR, counter_id};
use prost::{Message, Name};
use tonic::transport::Channel;

#[derive(Debug, clap::Parser)]
struct Args {
    /// The cluster configuration file (its gates are called).
    #[arg(long)]
    config: std::path::PathBuf,
    /// How long to call.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    callers: usize,
}

type Gate = GateServiceClient<Channel>;

async fn call<Req: Name, Resp: Message + Default>(
    gate: &mut Gate,
    object_type: &str,
    id: &str,
    method: &str,
    request: &Req,
) -> Result<Resp, String> {
    let mut call = tonic::Request::new(CallObjectRequest {
        client_id: String::new(),
        r#type: object_type.to_owned(),
        id: id.to_owned(),
        method: method.to_owned(),
        request: Some(prost_types::Any {
            type_url: format!("{}{}", goverse::TYPE_URL_PREFIX, Req::full_name()),
            value: request.encode_to_vec(),
        }),
    });
    call.set_timeout(Duration::from_secs(10));
    let reply = gate
        .call_object(call)
        .await
        .map_err(|s| {
            format!(
                "{object_type}/{id} {method}: {:?}: {}",
                s.code(),
                s.message()
            )
        })?
        .into_inner();
    let any = reply
        .response
        .ok_or_else(|| format!("{object_type}/{id} {method}: no response"))?;
    Resp::decode(any.value.as_slice())
        .map_err(|e| format!("{object_type}/{id} {method}: bad response: {e}"))
}

#[derive(Default)]
struct Tally {
    /// Every Increment reply, per counter.
    replies: BTreeMap<usize, Vec<i64>>,
    latencies: Vec<Duration>,
    failures: Vec<String>,
    monitor_checks: u64,
}

async fn caller(
    mut gates: Vec<(String, Gate)>,
    nodes: Arc<Vec<String>>,
    shards: u32,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let g = fastrand::usize(..gates.len());
        let (address, gate) = &mut gates[g];
        if n.is_multiple_of(50) {
            tally.monitor_checks += 1;
            if let Err(err) = check_monitors(gate, &nodes, shards).await {
                tally.failures.push(format!("via {address}: {err}"));
            }
            continue;
        }
        let c = fastrand::usize(1..=COUNTERS);
        let started = Instant::now();
        match call::<_, IncrementResponse>(
            gate,
            "SimpleCounter",
            &counter_id(c),
            "Increment",
            &IncrementRequest {},
        )
        .await
        {
            Ok(reply) => {
                tally.latencies.push(started.elapsed());
                tally.replies.entry(c).or_default().push(reply.value);
            }
            Err(err) => tally.failures.push(format!("via {address}: {err}")),
        }
    }
    tally
}

/// A random shard's monitor names its shard; the global monitor answers; a random node's
/// monitor answers for its node.
async fn check_monitors(gate: &mut Gate, nodes: &[String], shards: u32) -> Result<(), String> {
    let shard = fastrand::u32(..shards);
    let id = format!("shard#{shard}/{SHARD_MONITOR}");
    let stats: GetStatsResponse =
        call(gate, "ShardMonitor", &id, "GetStats", &GetStatsRequest {}).await?;
    if stats.shard_id != shard as i32 {
        return Err(format!("{id} says it is shard {}", stats.shard_id));
    }
    let uptime: GetUptimeResponse = call(
        gate,
        "GlobalMonitor",
        GLOBAL_MONITOR,
        "GetUptime",
        &GetUptimeRequest {},
    )
    .await?;
    if uptime.uptime.is_empty() {
        return Err("GlobalMonitor answered no uptime".to_owned());
    }
    let node = &nodes[fastrand::usize(..nodes.len())];
    let id = format!("{node}/{NODE_MONITOR}");
    let status: GetNodeStatsResponse = call(
        gate,
        "NodeMonitor",
        &id,
        "GetStats",
        &GetNodeStatsRequest {},
    )
    .await?;
    if !status.status.contains(&id) {
        return Err(format!("{id} answered {:?}", status.status));
    }
    Ok(())
}

async fn values(gate: &mut Gate) -> anyhow::Result<Vec<i64>> {
    let mut all = Vec::with_capacity(COUNTERS);
    for c in 1..=COUNTERS {
        let value: GetValueResponse = call(
            gate,
            "SimpleCounter",
            &counter_id(c),
            "GetValue",
            &GetValueRequest {},
        )
        .await
        .map_err(anyhow::Error::msg)?;
        all.push(value.value);
    }
    Ok(all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let file = ClusterFile::load(&args.config)?;
    anyhow::ensure!(
        !file.gates.is_empty(),
        "the configuration has no gates to call"
    );
    anyhow::ensure!(args.callers > 0, "--callers must be at least 1");
    let mut gates = Vec::new();
    for gate in &file.gates {
        let address = gate.advertise().to_owned();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to gate {} at {address}", gate.id))?;
        gates.push((address, GateServiceClient::new(channel)));
    }
    let nodes: Arc<Vec<String>> = Arc::new(
        file.nodes
            .iter()
            .map(|n| n.advertise().to_owned())
            .collect(),
    );
    let shards = file.cluster.shards;

    let before = values(&mut gates[0].1)
        .await
        .context("reading the counters")?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.callers)
        .map(|_| tokio::spawn(caller(gates.clone(), nodes.clone(), shards, stop.clone())))
        .collect();
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await?;
        for (c, replies) in tally.replies {
            total.replies.entry(c).or_default().extend(replies);
        }
        total.latencies.extend(tally.latencies);
        total.failures.extend(tally.failures);
        total.monitor_checks += tally.monitor_checks;
    }
    let elapsed = started.elapsed();
    let last = gates.len() - 1;
    let after = values(&mut gates[last].1)
        .await
        .context("reading the counters again")?;

    // Every reply distinct, and exactly the values between the start and the end.
    let mut mismatches = Vec::new();
    for c in 1..=COUNTERS {
        let mut replies = total.replies.remove(&c).unwrap_or_default();
        replies.sort_unstable();
        let (from, to) = (before[c - 1], after[c - 1]);
        let expected: Vec<i64> = (from + 1..=to).collect();
        if replies != expected {
            mismatches.push(format!(
                "{}: {} increments acknowledged, value went {from} -> {to}",
                counter_id(c),
                replies.len()
            ));
        }
    }
    total.latencies.sort_unstable();
    let at = |q: f64| {
        total
            .latencies
            .get(((total.latencies.len() as f64 - 1.0) * q) as usize)
            .map_or(0, |d| d.as_micros())
    };
    let increments = total.latencies.len();
    println!(
        "stress: {increments} increments and {} monitor checks in {:.1}s ({:.0}/s) through {} gates \
         to {} nodes; p50 {} µs, p99 {} µs; {} failed, {} mismatches",
        total.monitor_checks,
        elapsed.as_secs_f64(),
        increments as f64 / elapsed.as_secs_f64(),
        gates.len(),
        nodes.len(),
        at(0.5),
        at(0.99),
        total.failures.len(),
        mismatches.len()
    );
    for failure in total.failures.iter().take(5) {
        println!("  failed: {failure}");
    }
    for mismatch in mismatches.iter().take(5) {
        println!("  mismatch: {mismatch}");
    }
    anyhow::ensure!(
        total.failures.is_empty() && mismatches.is_empty(),
        "{} calls failed and {} counters do not add up",
        total.failures.len(),
        mismatches.len()
    );
    Ok(())
}
