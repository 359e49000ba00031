//! What an operator watches, on a real cluster: three `goverse node` processes and a `goverse
//! gate` on a real etcd, their `/metrics` scraped over HTTP and read with a Prometheus text
//! parser, `/healthz` and `/ready` on every node and on the gate's operations port; the
//! inspector's API and its page in headless Chromium, moving, pinning and draining shards.
//!
//! Real time throughout: processes, sockets and etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use goverse_testkit::{
    Browser, EtcdServer, Process, ProcessCluster, assert_eventually, free_ports_in_a_row,
};

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
        inspector_port: base + 2 * nodes + 3,
        tls_dir: None,
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
    // Per shard, every call is counted: the 90 above, and the calls the bundled samples' own
    // objects make in the background (the cache managers entering their directory). Both
    // figures of a node come from one scrape; a call in flight may be in one and not yet in the
    // other, so they are compared until they agree.
    assert_eventually!(
        {
            let scrapes = scrape_all().await;
            let shard_calls = sum(&scrapes, "goverse_shard_method_calls_total", &[]);
            shard_calls >= 90.0 && shard_calls == sum(&scrapes, "goverse_method_calls_total", &[])
        },
        Duration::from_secs(10)
    );
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
    // The counters spread over the nodes the way their shards are (each node reports its own;
    // the bundled samples' auto-load objects are there too, under their own types).
    let per_node: BTreeMap<usize, f64> = scrapes
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let counters = sum(
                std::slice::from_ref(s),
                "goverse_objects_total",
                &[("type", "Counter")],
            );
            (n, counters)
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

const TOKEN: &str = "inspector-test-admin-token";

/// `goverse cluster status --json --shard N` of `config`.
fn status_json(config: &std::path::Path, shard: u32) -> serde_json::Value {
    let output = std::process::Command::new(GOVERSE)
        .args(["cluster", "status", "--json", "--config"])
        .arg(config)
        .args(["--shard", &shard.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// POSTs `body` to the inspector with `token`; the status and the answer.
async fn act(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().post(url).body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the inspector answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Shards each node serves, by the inspector's `/api/cluster`.
fn loads(cluster: &serde_json::Value) -> BTreeMap<String, u64> {
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["address"].as_str().unwrap().to_owned(),
                n["shards"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Whether the grid paints shard `shard` in the colour of node `node`'s swatch (the cell's
/// centre pixel against the swatch's colour drawn on a canvas of its own).
async fn painted_as(browser: &Browser, shard: u32, node: &str) -> bool {
    let script = "const [n, node] = arguments; \
        const { canvas, cols, cell } = geometry(); \
        const x = (n % cols) * cell + Math.floor(cell / 2), y = Math.floor(n / cols) * cell + Math.floor(cell / 2); \
        const p = canvas.getContext('2d').getImageData(x, y, 1, 1).data; \
        const row = [...document.querySelectorAll('#nodes tr[data-node]')].find(r => r.dataset.node === node); \
        if (!row) return false; \
        const c = document.createElement('canvas').getContext('2d'); \
        c.fillStyle = getComputedStyle(row.querySelector('.swatch')).backgroundColor; \
        c.fillRect(0, 0, 1, 1); \
        const q = c.getImageData(0, 0, 1, 1).data; \
        return p[0] === q[0] && p[1] === q[1] && p[2] === q[2];";
    let painted = browser
        .client
        .execute(
            script,
            vec![serde_json::json!(shard), serde_json::json!(node)],
        )
        .await
        .unwrap();
    painted == serde_json::json!(true)
}

/// The inspector on a real three-node cluster: its API shows the nodes, gate, leader and
/// shard map with every process's health, the calls made and the objects made; its page in
/// headless Chromium shows the nodes and the shard grid, refuses a move without the admin
/// token, and makes one with it (seen by `goverse cluster status` and on the page); pins and
/// drains through the API are honoured by placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_shows_the_cluster_and_operators_move_pin_and_drain() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut file = generated(dir.path(), &etcd, 3, SHARDS);
    file.cluster.lease_ttl = Some(Duration::from_secs(2));
    file.cluster.cluster_state_stability_duration = Some(Duration::from_secs(1));
    file.cluster.admin_token = Some(TOKEN.to_owned());
    let config = dir.path().join("cluster.yaml");
    std::fs::write(&config, file.to_yaml()).unwrap();
    let mut cluster = ProcessCluster::new(GOVERSE, config.to_str().unwrap());
    for id in ["node-1", "node-2", "node-3"] {
        cluster.start_node(id);
    }
    cluster.start_gate("gate-1");
    let gate_http = format!("http://{}", file.gates[0].http_addr.as_ref().unwrap());
    let mut inspector =
        Process::start(GOVERSE, ["inspector", "--config", config.to_str().unwrap()]);
    inspector.expect_within("inspector of cluster", Duration::from_secs(30));
    let base = format!(
        "http://{}",
        file.inspector.as_ref().unwrap().http_addr.as_ref().unwrap()
    );

    assert_eq!(get_status(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(get_status(&format!("{base}/ready")).await.0, 200);
    // The API: three ready nodes serving the 64 shards balanced, a leader, the gate ready.
    assert_eventually!(
        {
            let (_, c) = get_status(&format!("{base}/api/cluster")).await;
            let loads = loads(&c);
            c["shard_count"] == SHARDS
                && c["leader"].is_string()
                && c["moving"] == 0
                && loads.len() == 3
                && loads.values().sum::<u64>() == u64::from(SHARDS)
                && loads
                    .values()
                    .all(|l| l.abs_diff(u64::from(SHARDS) / 3) <= 1)
                && c["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n["health"]["state"] == "ready")
                && c["gates"].as_array().unwrap().len() == 1
                && c["gates"][0]["health"]["state"] == "ready"
        },
        Duration::from_secs(60)
    );

    // Calls and objects: ten counters made through the gate.
    for i in 0..10 {
        let url = format!("{gate_http}/api/v1/objects/call/Counter/inspected-{i}/Add");
        assert_eq!(post(&url, r#"{"value":1}"#).await, 200);
    }
    assert_eventually!(
        {
            let (_, calls) = get_status(&format!("{base}/api/calls")).await;
            let adds: u64 = calls["calls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["object_type"] == "Counter" && c["method"] == "Add")
                .map(|c| c["calls_total"].as_u64().unwrap())
                .sum();
            let objects: u64 = calls["objects"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["object_type"] == "Counter")
                .map(|o| o["count"].as_u64().unwrap())
                .sum();
            adds == 10 && objects == 10
        },
        Duration::from_secs(20)
    );
    let (status, found) =
        get_status(&format!("{base}/api/objects?type=Counter&q=inspected-3")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["matched"], 1, "{found}");
    let object = &found["objects"][0];
    assert_eq!(object["id"], "inspected-3");
    let shard = object["shard"].as_u64().unwrap() as u32;
    assert_eq!(
        status_json(&config, shard)["shard_records"][0]["current"],
        object["node"],
        "the object lives where its shard is"
    );
    let (status, _) = get_status(&format!("{base}/api/objects?node=127.0.0.1:1")).await;
    assert_eq!(status, 404);

    // The page, in headless Chromium: the nodes, the gate and the grid.
    let browser = Browser::start().await;
    browser.client.goto(&format!("{base}/")).await.unwrap();
    browser.wait_text("#summary", "3 nodes").await;
    browser.wait_text("#summary", "64 shards").await;
    browser.wait_text("#conn", "live").await;
    let rows = browser
        .client
        .execute(
            "return [...document.querySelectorAll('#nodes tr[data-node]')].map(r => r.textContent)",
            vec![],
        )
        .await
        .unwrap();
    let rows: Vec<String> = serde_json::from_value(rows).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.contains("ready")), "{rows:?}");
    assert!(rows.iter().any(|r| r.contains("leader")), "{rows:?}");
    browser.wait_text("#gates", "ready").await;
    let painted = browser
        .client
        .execute(
            "const c = document.getElementById('grid'); \
             return c.width > 0 && c.getContext('2d').getImageData(1, 1, 1, 1).data[3] > 0",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(painted, serde_json::json!(true), "the grid is drawn");

    // A shard of the most-loaded node moves to the least-loaded one (balance holds, so the
    // leader leaves it there). Without the token the page is refused.
    let (_, c) = get_status(&format!("{base}/api/cluster")).await;
    let loads = loads(&c);
    let from = loads
        .iter()
        .max_by_key(|(n, l)| (**l, (*n).clone()))
        .unwrap()
        .0
        .clone();
    let to = loads
        .iter()
        .min_by_key(|(n, l)| (**l, (*n).clone()))
        .unwrap()
        .0
        .clone();
    let moved = c["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == from.as_str())
        .unwrap()["shard"]
        .as_u64()
        .unwrap() as u32;
    browser.type_into("#shard-number", &moved.to_string()).await;
    browser
        .wait_text("#shard-info", &format!("on {from}"))
        .await;
    assert!(
        painted_as(&browser, moved, &from).await,
        "shard {moved} painted as {from}"
    );
    assert!(
        !painted_as(&browser, moved, &to).await,
        "{from} and {to} look alike"
    );
    browser
        .client
        .execute(
            "document.getElementById('move-node').value = arguments[0];",
            vec![serde_json::json!(to)],
        )
        .await
        .unwrap();
    browser.click("#move").await;
    browser.wait_text("#message", "refused (401)").await;
    assert_eq!(
        status_json(&config, moved)["shard_records"][0]["current"],
        from.as_str()
    );

    browser.type_into("#token", TOKEN).await;
    browser.click("#move").await;
    browser.wait_text("#message", "done").await;
    browser.wait_text("#shard-info", &format!("on {to}")).await;
    assert_eventually!(
        painted_as(&browser, moved, &to).await,
        Duration::from_secs(10)
    );
    assert_eventually!(
        status_json(&config, moved)["shard_records"][0]["current"] == to.as_str(),
        Duration::from_secs(30)
    );

    // Actions without the token, or with a wrong one, are refused.
    let pin_url = format!("{base}/api/shards/{moved}/pin");
    assert_eq!(act(&pin_url, None, "").await.0, 401);
    assert_eq!(act(&pin_url, Some("not-the-admin-token"), "").await.0, 401);
    let (status, answer) = act(
        &format!("{base}/api/shards/64/move"),
        Some(TOKEN),
        &format!(r#"{{"node":"{to}"}}"#),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("no shard 64"),
        "{answer}"
    );

    // A pin takes a shard to its node and keeps it there.
    let (_, c) = get_status(&format!("{base}/api/cluster")).await;
    let pinned = c["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] != to.as_str())
        .unwrap()["shard"]
        .as_u64()
        .unwrap() as u32;
    let (status, answer) = act(
        &format!("{base}/api/shards/{pinned}/pin"),
        Some(TOKEN),
        &format!(r#"{{"node":"{to}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eventually!(
        {
            let s = status_json(&config, pinned);
            s["shard_records"][0]["current"] == to.as_str()
                && s["pins"][pinned.to_string()] == to.as_str()
        },
        Duration::from_secs(30)
    );

    // A drain empties a node, a move to it is refused meanwhile, and an undrain refills it.
    let drained = loads.keys().find(|n| **n != to).unwrap().clone();
    let (status, answer) = act(
        &format!("{base}/api/nodes/{drained}/drain"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eventually!(
        {
            let (_, c) = get_status(&format!("{base}/api/cluster")).await;
            let loads = self::loads(&c);
            loads[&drained] == 0
                && c["moving"] == 0
                && loads.values().sum::<u64>() == u64::from(SHARDS)
        },
        Duration::from_secs(30)
    );
    let (status, answer) = act(
        &format!("{base}/api/shards/0/move"),
        Some(TOKEN),
        &format!(r#"{{"node":"{drained}"}}"#),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    let text = std::process::Command::new(GOVERSE)
        .args(["cluster", "status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DRAINED"), "{text}");
    assert!(
        text.contains(&format!("pin      shard {pinned} -> {to}")),
        "{text}"
    );
    browser.wait_text("#nodes", "(drained)").await;
    let (status, _) = act(
        &format!("{base}/api/nodes/{drained}/undrain"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eventually!(
        {
            let (_, c) = get_status(&format!("{base}/api/cluster")).await;
            self::loads(&c)[&drained] >= u64::from(SHARDS) / 3 - 2
        },
        Duration::from_secs(30)
    );

    // The inspector stops on SIGTERM, its event streams included.
    inspector.terminate();
    assert_eq!(inspector.wait_exit(Duration::from_secs(10)), Some(0));
    cluster.stop(Duration::from_secs(20));
}
