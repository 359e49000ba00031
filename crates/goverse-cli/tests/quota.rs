//! Quotas as an attacker meets them: `goverse node` and `goverse gate` processes from a file with
//! `client_quotas`; a flooding process (`goverse bench gate`, anonymous, many callers) beside a
//! registered client calling one at a time. The flood is refused with RESOURCE_EXHAUSTED and a
//! retry-after, counted in the gate's metrics, and the other client's p99 stays within twice
//! its p99 alone. Over HTTP a refusal is a 429 with Retry-After.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use goverse::client::{Client, PushEvent};
use goverse::config::ClusterFile;
use goverse::gate::{QuotaConfig, Rate};
use goverse::prelude::ErrorCode;
use goverse::wkt::Int32Value;
use goverse_testkit::{EtcdServer, Process, ProcessCluster};

mod common;
use common::{GOVERSE, cluster_file};

/// The latencies of `n` serial calls of `client`, one every 8 ms (125/s, under its quota), in
/// microseconds.
async fn serial_calls(client: &Client, n: usize) -> Vec<u128> {
    let mut took = Vec::with_capacity(n);
    let mut pace = tokio::time::interval(Duration::from_millis(8));
    for i in 0..n {
        pace.tick().await;
        let started = Instant::now();
        client
            .call::<_, Int32Value>(
                "Counter",
                &format!("calm-{}", i % 8),
                "Add",
                Int32Value { value: 1 },
            )
            .await
            .expect("the calm client is never refused");
        took.push(started.elapsed().as_micros());
    }
    took
}

fn p99(mut took: Vec<u128>) -> u128 {
    took.sort_unstable();
    took[took.len() * 99 / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_refused_and_does_not_slow_a_calm_one() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file(dir.path(), &etcd, 1, 1);
    let mut file = ClusterFile::load(std::path::Path::new(&config)).unwrap();
    file.client_quotas = Some(QuotaConfig {
        per_client: Some(Rate {
            rate: 200.0,
            burst: Some(50.0),
        }),
        max_concurrent_calls_per_client: Some(32),
        ..QuotaConfig::default()
    });
    std::fs::write(&config, file.to_yaml()).unwrap();
    let gate_http = file.gates[0].http_addr.clone().unwrap();

    let mut cluster = ProcessCluster::new(GOVERSE, &config);
    cluster.start_node("node-1");
    let gate = cluster.start_gate("gate-1");

    // The calm client registers: its calls count against its own client id.
    let calm = Client::builder([gate.clone()])
        .call_timeout(Duration::from_secs(10))
        .build();
    let mut formed = false;
    for _ in 0..100 {
        if calm
            .call::<_, Int32Value>("Counter", "calm-0", "Add", Int32Value { value: 1 })
            .await
            .is_ok()
        {
            formed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(formed, "{}", cluster.tails(20));
    let mut pushes = calm.register().await.unwrap();
    assert!(matches!(
        pushes.next().await,
        Some(PushEvent::Connected { .. })
    ));
    // Alone is measured on both sides of the flood (half before, half after), so a slow or
    // fast stretch of this shared machine weighs on both figures alike; 800 calls each make
    // a p99 of the 8th-slowest call rather than of a single outlier.
    let mut alone = serial_calls(&calm, 400).await;

    // The flood: anonymous callers from one address share one quota. The flooding program runs
    // at the lowest CPU priority: its own work would be on its own machine; what is measured
    // is what its requests cost the gate and the node.
    let mut flood = Process::start(
        "nice",
        [
            "-n",
            "19",
            GOVERSE,
            "bench",
            "gate",
            "--gate",
            &gate,
            "--callers",
            "32",
            "--connections",
            "2",
            "--duration",
            "9",
            "--json",
        ],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = p99(serial_calls(&calm, 800).await);
    let line = flood.expect_within("calls_per_sec", Duration::from_secs(30));
    alone.extend(serial_calls(&calm, 400).await);
    let alone = p99(alone);
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    let (calls, errors) = (
        report["calls"].as_u64().unwrap(),
        report["errors"].as_u64().unwrap(),
    );
    assert!(errors > calls / 2, "the flood was mostly refused: {report}");
    eprintln!("calm p99 alone {alone} µs, beside the flood {flooded} µs; flood: {report}");
    assert!(
        flooded <= 2 * alone.max(1_000),
        "the calm client's p99: {flooded} µs beside the flood, {alone} µs alone"
    );

    // The refusal as a program sees it, and as the metrics count it.
    let anonymous = Client::builder([gate.clone()]).build();
    let mut refused = None;
    for _ in 0..200 {
        if let Err(err) = anonymous
            .call::<_, Int32Value>("Counter", "x", "Add", Int32Value { value: 1 })
            .await
        {
            refused = Some(err);
            break;
        }
    }
    let err = refused.expect("an anonymous burst past 50 is refused");
    assert_eq!(err.code(), ErrorCode::ResourceExhausted, "{err}");
    assert!(
        err.message()
            .contains("over its quota (200 calls/s, burst 50)"),
        "{err}"
    );

    // Over HTTP: 429 with Retry-After.
    let http = reqwest::Client::new();
    let mut answer = None;
    for _ in 0..200 {
        let response = http
            .post(format!(
                "http://{gate_http}/api/v1/objects/call/Counter/h/Add"
            ))
            .body(r#"{"value":1}"#)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            answer = Some(response);
            break;
        }
    }
    let answer = answer.expect("an HTTP burst past 50 is refused");
    let retry_after: u64 = answer.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED", "{body}");

    let metrics = http
        .get(format!("http://{gate_http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refusals: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("goverse_gate_quota_refusals_total")
                && l.contains("limit=\"client_rate\"")
        })
        .filter_map(|l| l.rsplit(" ").next()?.parse::<u64>().ok())
        .sum();
    assert!(
        refusals >= errors,
        "{refusals} refusals counted, {errors} seen by the flood"
    );
    drop(pushes);
    cluster.stop(Duration::from_secs(20));
}
