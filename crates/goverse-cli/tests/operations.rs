//! What an operator watches, on a real cluster: three `goverse node` processes and a `goverse
//! gate` on a real etcd, their `/metrics` scraped over HTTP and read with a Prometheus text
//! parser, `/healthz` and `/ready` on every node and on the gate's operations port.
//!
//! Real time throughout: processes, sockets and etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use goverse_testkit::{EtcdServer, ProcessCluster, assert_eventually, free_ports_in_a_row};

const GOVERSE: &str = env!("CARGO_BIN_EXE_goverse");
const SHARDS: u32 = 64;

/// `config gen`'s configuration of `nodes` nodes and a gate (with an operations port) on `etcd`,
/// on free loopback ports, with a SQLite file in `dir`.
fn generated(
    dir: &std::path::Path,
    etcd: &EtcdServer,
    nodes: u16,
    shards: u32,
) -> goverse::config::ClusterFile {
    let base = free_ports_in_a_row(2 * nodes + 4);
    let mut file = goverse::config::ClusterFile::generated(&goverse::config::Generate {
        nodes: usize::from(nodes),
        gates: 1,
        shards,
        etcd: etcd.endpoint(),
        sqlite_path: dir.join("objects.db").display().to_string(),
        node_port: base,
        gate_port: base + nodes,
        http_port: base + nodes + 1,
        ops_port: base + nodes + 2,
    });
    file.gates[0].ops_addr = Some(format!("127.0.0.1:{}", base + 2 * nodes + 2));
    file
}

/// Every sample of `url`'s Prometheus text, parsed by `prometheus-parse`.
async fn scrape(url: &str) -> prometheus_parse::Scrape {
    let response = reqwest::get(url).await.expect("metrics answer");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|err| panic!("{url} is not Prometheus text: {err}\n{text}"))
}

/// The sum of the counter or gauge samples of `metric` whose labels include `labels`.
fn sum(scrapes: &[prometheus_parse::Scrape], metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrapes
        .iter()
        .flat_map(|s| &s.samples)
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric} is not a counter or gauge: {other:?}"),
        })
        .sum()
}

/// Shards each node's `goverse_shards_total` reports.
fn shards_per_node(scrapes: &[prometheus_parse::Scrape]) -> Vec<f64> {
    scrapes
        .iter()
        .map(|s| sum(std::slice::from_ref(s), "goverse_shards_total", &[]))
        .collect()
}

/// Every query of `deploy/grafana/goverse.json` names only metric families `served` (the text
/// of the cluster's `/metrics`) declares.
fn dashboard_reads_only(served: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/goverse.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            queries += 1;
            let names: Vec<&str> = expr
                .match_indices("goverse_")
                .map(|(at, _)| {
                    let len = expr[at..]
                        .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                        .unwrap_or(expr.len() - at);
                    &expr[at..at + len]
                })
                .collect();
            assert!(!names.is_empty(), "{expr} reads no goverse metric");
            for metric in names {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| metric.strip_suffix(suffix))
                    .filter(|f| served.contains(&format!("# TYPE {f} histogram")))
                    .unwrap_or(metric);
                assert!(
                    served.contains(&format!("# TYPE {family} ")),
                    "panel {:?} reads {metric}, which no process serves",
                    panel["title"]
                );
            }
        }
    }
    assert!(queries >= 20, "{queries} queries");
}

async fn get_status(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn post(url: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .body(body.to_owned())
        .send()
        .await
        .expect("gate answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_s_metrics_match_the_calls_made_and_health_is_served() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut file = generated(dir.path(), &etcd, 3, SHARDS);
    // Clients may delete counters (deletes are for nodes only by default).
    file.object_lifecycle_rules =
        serde_yaml_ng::from_str("- {type: Counter, lifecycle: DELETE, access: ALLOW}").unwrap();
    file.cluster.lease_ttl = Some(Duration::from_secs(2));
    file.cluster.cluster_state_stability_duration = Some(Duration::from_secs(1));
    let config = dir.path().join("cluster.yaml");
    std::fs::write(&config, file.to_yaml()).unwrap();
    let mut cluster = ProcessCluster::new(GOVERSE, config.to_str().unwrap());
    for id in ["node-1", "node-2", "node-3"] {
        cluster.start_node(id);
    }
    let gate_http = format!("http://{}", file.gates[0].http_addr.as_ref().unwrap());
    cluster.start_gate("gate-1");
    let node_urls: Vec<String> = file
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.http_addr.as_ref().unwrap()))
        .collect();
    let metrics_urls: Vec<String> = node_urls.iter().map(|u| format!("{u}/metrics")).collect();
    let scrape_all = || async {
        let mut all = Vec::new();
        for url in &metrics_urls {
            all.push(scrape(url).await);
        }
        all
    };

    // Balanced: every node serves a third (±1) of the shards, the gauges summing to the count,
    // and every node says it is ready.
    assert_eventually!(
        {
            let shards = shards_per_node(&scrape_all().await);
            shards.iter().sum::<f64>() == f64::from(SHARDS)
                && shards
                    .iter()
                    .all(|s| (*s - f64::from(SHARDS) / 3.0).abs() <= 1.0)
        },
        Duration::from_secs(60)
    );
    for url in &node_urls {
        assert_eventually!(
            get_status(&format!("{url}/ready")).await.0 == 200,
            Duration::from_secs(20)
        );
        let (status, body) = get_status(&format!("{url}/healthz")).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    }
    let gate_ops = format!("http://{}", file.gates[0].ops_addr.as_ref().unwrap());
    assert_eventually!(
        get_status(&format!("{gate_ops}/ready")).await.0 == 200,
        Duration::from_secs(20)
    );

    // 30 counters, two adds and one get each, through the gate's HTTP API.
    for round in 0..2 {
        for i in 0..30 {
            let url = format!("{gate_http}/api/v1/objects/call/Counter/c{i}/Add");
            assert_eq!(post(&url, r#"{"value":1}"#).await, 200, "add {round}/{i}");
        }
    }
    for i in 0..30 {
        let url = format!("{gate_http}/api/v1/objects/call/Counter/c{i}/Get");
        assert_eq!(post(&url, "{}").await, 200, "get {i}");
    }
    let scrapes = scrape_all().await;
    let calls = |method: &str| {
        sum(
            &scrapes,
            "goverse_method_calls_total",
            &[
                ("object_type", "Counter"),
                ("method_name", method),
                ("status", "success"),
            ],
        )
    };
    assert_eq!(calls("Add"), 60.0);
    assert_eq!(calls("Get"), 30.0);
    assert_eq!(
        sum(
            &scrapes,
            "goverse_method_calls_total",
            &[("status", "failure")]
        ),
        0.0
    );
    assert_eq!(
        sum(&scrapes, "goverse_objects_total", &[("type", "Counter")]),
        30.0
    );
    assert_eq!(sum(&scrapes, "goverse_shard_method_calls_total", &[]), 90.0);
    // The histogram of each method's whole calls counts them too.
    let histogram_counts: f64 = scrapes
        .iter()
        .flat_map(|s| &s.samples)
        .filter(|s| {
            s.metric == "goverse_method_call_duration" && s.labels.get("method_name") == Some("Add")
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            other => panic!("not a histogram: {other:?}"),
        })
        .sum();
    assert_eq!(histogram_counts, 60.0);
    // The objects spread over the nodes the way their shards are (each node reports its own).
    let per_node: BTreeMap<usize, f64> = scrapes
        .iter()
        .enumerate()
        .map(|(n, s)| {
            (
                n,
                sum(std::slice::from_ref(s), "goverse_objects_total", &[]),
            )
        })
        .collect();
    assert_eq!(per_node.values().sum::<f64>(), 30.0, "{per_node:?}");

    // Ten deletes: the gauge goes down by ten.
    for i in 0..10 {
        let url = format!("{gate_http}/api/v1/objects/delete/Counter/c{i}");
        assert_eq!(post(&url, "{}").await, 200, "delete {i}");
    }
    let scrapes = scrape_all().await;
    assert_eq!(
        sum(&scrapes, "goverse_objects_total", &[("type", "Counter")]),
        20.0
    );

    // The Grafana dashboard in the repository asks only for metrics the cluster serves.
    let mut served = String::new();
    for url in metrics_urls.iter().chain([&format!("{gate_ops}/metrics")]) {
        served.push_str(&reqwest::get(url).await.unwrap().text().await.unwrap());
    }
    dashboard_reads_only(&served);

    // The gate's operations port: its own metrics, with upstream's names.
    let gate = scrape(&format!("{gate_ops}/metrics")).await;
    // The links batch: the gate wrote its 90 calls' requests in batches, and the nodes wrote
    // the responses in batches.
    let batches = |scrapes: &[prometheus_parse::Scrape], metric: &str| -> f64 {
        scrapes
            .iter()
            .flat_map(|s| &s.samples)
            .filter(|s| s.metric == metric)
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => b.last().map_or(0.0, |b| b.count),
                _ => 0.0,
            })
            .sum()
    };
    let gate_batches = batches(
        std::slice::from_ref(&gate),
        "goverse_link_request_batch_size",
    );
    assert!(
        (1.0..=90.0 + 50.0).contains(&gate_batches),
        "{gate_batches}"
    );
    assert!(batches(&scrapes, "goverse_link_response_batch_size") >= 1.0);
    assert_eq!(
        sum(std::slice::from_ref(&gate), "goverse_gate_ready", &[]),
        1.0
    );
    assert!(
        gate.samples
            .iter()
            .any(|s| s.metric == "goverse_gate_active_clients")
    );

    // A node stopped with SIGTERM leaves: the other two take its shards, and their gauges
    // still sum to the shard count.
    assert_eq!(
        cluster.stop_node("node-3", Duration::from_secs(20)),
        Some(0),
        "{}",
        cluster.tails(30)
    );
    let two = &metrics_urls[..2];
    assert_eventually!(
        {
            let mut shards = 0.0;
            for url in two {
                shards += sum(&[scrape(url).await], "goverse_shards_total", &[]);
            }
            shards == f64::from(SHARDS)
        },
        Duration::from_secs(60)
    );
    cluster.stop(Duration::from_secs(20));
}

/// `/ready` is the present: with etcd frozen (SIGSTOP), a node's and a gate's readiness turn
/// 503 within one lease period, naming the lease, and back to 200 once etcd answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_etcd_going_away_and_coming_back() {
    const LEASE: Duration = Duration::from_secs(2);
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut file = generated(dir.path(), &etcd, 1, 16);
    file.cluster.lease_ttl = Some(LEASE);
    file.cluster.cluster_state_stability_duration = Some(Duration::from_secs(1));
    let config = dir.path().join("cluster.yaml");
    std::fs::write(&config, file.to_yaml()).unwrap();
    let mut cluster = ProcessCluster::new(GOVERSE, config.to_str().unwrap());
    cluster.start_node("node-1");
    cluster.start_gate("gate-1");
    let node = format!("http://{}/ready", file.nodes[0].http_addr.as_ref().unwrap());
    let gate = format!("http://{}/ready", file.gates[0].ops_addr.as_ref().unwrap());
    for url in [&node, &gate] {
        assert_eventually!(get_status(url).await.0 == 200, Duration::from_secs(30));
    }

    etcd.pause();
    let paused = std::time::Instant::now();
    // Within one lease period (and a poll's slack), both say why they do not serve.
    let deadline = LEASE + Duration::from_secs(1);
    for url in [&node, &gate] {
        loop {
            let (status, body) = get_status(url).await;
            if status == 503 {
                let reason = body["reason"].as_str().unwrap_or_default().to_owned();
                assert!(
                    reason.contains("lease") || reason.contains("renew"),
                    "{url}: {body}"
                );
                break;
            }
            assert!(
                paused.elapsed() < deadline,
                "{url} still ready {:?} after etcd froze",
                paused.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    etcd.resume();
    for url in [&node, &gate] {
        assert_eventually!(get_status(url).await.0 == 200, Duration::from_secs(30));
    }
    cluster.stop(Duration::from_secs(20));
}
