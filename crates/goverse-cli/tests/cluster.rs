//! A cluster as a user starts it: `goverse config gen`/`check`, `goverse node` processes and two
//! `goverse gate --gate-id` processes from one file, on a real etcd and a real PostgreSQL;
//! under load through both gates: a third node joins, one node is killed with kill -9, every
//! node is restarted in turn, one node is paused with SIGSTOP past its lease. Throughout, no
//! acknowledged add of a write-through counter is lost or applied twice, the shards are
//! balanced to ±1 at rest, and planned moves fail no call. `goverse cluster status`; SIGTERM
//! stops each cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use goverse::prost::Message as _;
use goverse::wkt::{Empty, Int32Value};
use goverse_proto::gate::CallObjectRequest;
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_testkit::{
    EtcdServer, POSTGRES_PASSWORD, POSTGRES_USER, PostgresServer, Process, ProcessCluster,
    free_port, free_ports_in_a_row,
};
use parking_lot::Mutex;
use tonic::transport::Channel;

const GOVERSE: &str = env!("CARGO_BIN_EXE_goverse");
const LEASE_TTL: Duration = Duration::from_secs(2);

fn goverse(args: &[&str]) -> std::process::Output {
    std::process::Command::new(GOVERSE)
        .args(args)
        .output()
        .expect("goverse runs")
}

fn any<M: goverse::prost::Message + goverse::prost::Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{}{}", goverse::TYPE_URL_PREFIX, M::full_name()),
        value: m.encode_to_vec(),
    }
}

async fn call(
    client: &mut GateServiceClient<Channel>,
    object_type: &str,
    id: &str,
    method: &str,
    request: prost_types::Any,
) -> Result<i32, tonic::Status> {
    let mut request = tonic::Request::new(CallObjectRequest {
        client_id: String::new(),
        r#type: object_type.to_owned(),
        id: id.to_owned(),
        method: method.to_owned(),
        request: Some(request),
    });
    request.set_timeout(Duration::from_secs(20));
    let response = client.call_object(request).await?.into_inner();
    let any = response.response.expect("a response");
    Ok(Int32Value::decode(any.value.as_slice()).unwrap().value)
}

/// Adds 1 to the counter `object_type/id`; its new value.
async fn add_one(
    client: &mut GateServiceClient<Channel>,
    object_type: &str,
    id: &str,
) -> Result<i32, tonic::Status> {
    call(
        client,
        object_type,
        id,
        "Add",
        any(&Int32Value { value: 1 }),
    )
    .await
}

/// The cluster's status as `goverse cluster status --json` prints it.
fn status(config: &str) -> serde_json::Value {
    let out = goverse(&["cluster", "status", "--config", config, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn balanced(status: &serde_json::Value, nodes: usize, shards: u64) -> bool {
    let served: Vec<u64> = status["nodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let settled = status["ready"] == true
        && served.len() == nodes
        && served.iter().sum::<u64>() == shards
        && served.iter().max().unwrap() - served.iter().min().unwrap() <= 1
        && status["moving"] == 0;
    // Serving but not yet settled reads "balancing", never "ready".
    if status["ready"] == true && status["balanced"] == false {
        assert_eq!(status["state"], "balancing", "{status}");
    }
    settled && status["state"] == "ready"
}

type Caller = tokio::task::JoinHandle<(String, i32, i32, Vec<Instant>)>;

/// 16 callers adding 1 to `{prefix}-{n}` through the gates (by turns) until stopped; each
/// returns its counter, the adds acknowledged, the adds whose outcome is unknown (failed), and
/// when each acknowledgement came.
fn load(
    channels: &[Channel],
    object_type: &'static str,
    prefix: &'static str,
) -> (Arc<AtomicBool>, Arc<Mutex<Vec<String>>>, Vec<Caller>) {
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut callers = Vec::new();
    for c in 0..16 {
        let mut client = GateServiceClient::new(channels[c % channels.len()].clone());
        let (stop, failures) = (stop.clone(), failures.clone());
        callers.push(tokio::spawn(async move {
            let id = format!("{prefix}-{c}");
            let (mut acked, mut unknown) = (0, 0);
            let mut successes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match add_one(&mut client, object_type, &id).await {
                    Ok(_) => {
                        acked += 1;
                        successes.push(Instant::now());
                    }
                    Err(status) => {
                        // The outcome of a call in flight when its node died is unknown.
                        unknown += 1;
                        failures.lock().push(format!("{id}: {status}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (id, acked, unknown, successes)
        }));
    }
    (stop, failures, callers)
}

/// Stops the callers and checks every counter: each acknowledged add is stored, and each add
/// whose outcome was unknown at most once.
async fn finish(
    channel: &Channel,
    stop: &AtomicBool,
    callers: Vec<Caller>,
) -> Vec<(String, i32, i32, Vec<Instant>)> {
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for caller in callers {
        results.push(caller.await.unwrap());
    }
    let mut client = GateServiceClient::new(channel.clone());
    for (id, acked, unknown, _) in &results {
        let value = call(&mut client, "DurableCounter", id, "Get", any(&Empty {}))
            .await
            .unwrap();
        assert!(
            value >= *acked && value <= acked + unknown,
            "{id}: {value} stored, {acked} acknowledged, {unknown} unknown"
        );
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_from_one_file_survives_kill_restart_and_pause_without_losing_a_write() {
    let etcd = EtcdServer::start();
    let postgres = PostgresServer::start();
    postgres.create_database("cluster");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.yaml");
    let config_str = config.to_str().unwrap().to_owned();

    // The generated file, moved onto this test's etcd, PostgreSQL and free ports, with short
    // timings.
    let out = goverse(&[
        "config", "gen", "--nodes", "3", "--gates", "2", "--shards", "64",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut file = goverse::config::ClusterFile::parse(&text, "generated", &[]).unwrap();
    file.cluster.etcd.endpoints = vec![etcd.endpoint()];
    file.cluster.cluster_state_stability_duration = Some(Duration::from_secs(1));
    file.cluster.lease_ttl = Some(LEASE_TTL);
    file.sqlite = None;
    file.postgres = Some(goverse::config::PostgresSection {
        host: "127.0.0.1".to_owned(),
        port: postgres.port(),
        user: POSTGRES_USER.to_owned(),
        password: POSTGRES_PASSWORD.to_owned(),
        database: "cluster".to_owned(),
        sslmode: "disable".to_owned(),
        sslrootcert: None,
        sslcert: None,
        sslkey: None,
        pool_size: None,
        max_open_conns: None,
        max_idle_conns: None,
        statement_timeout: Some(Duration::from_secs(2)),
    });
    for node in &mut file.nodes {
        node.grpc_addr = format!("127.0.0.1:{}", free_port());
        node.http_addr = Some(format!("127.0.0.1:{}", free_port()));
    }
    for gate in &mut file.gates {
        gate.grpc_addr = format!("127.0.0.1:{}", free_port());
        gate.http_addr = Some(format!("127.0.0.1:{}", free_port()));
    }
    let text = file.to_yaml();
    std::fs::write(&config, &text).unwrap();
    let out = goverse(&["config", "check", &config_str]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked = String::from_utf8_lossy(&out.stdout);
    assert!(
        checked.contains("3 nodes, 2 gates") && checked.contains("store postgres"),
        "{checked}"
    );
    let file = goverse::config::ClusterFile::load(&config).unwrap();
    let gate_addrs: Vec<String> = file.gates.iter().map(|g| g.grpc_addr.clone()).collect();

    // A node does not set up an empty database by itself (it may be the wrong one): it refuses
    // and names the command; the operator runs it.
    let refused = goverse(&["node", "--config", &config_str, "--node-id", "node-1"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("has no GoVerse schema") && err.contains("goverse db init"),
        "{err}"
    );
    let tables = postgres.psql(
        "cluster",
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'goverse%'",
    );
    assert_eq!(tables.trim(), "0", "the refused node created nothing");
    let out = goverse(&["db", "init", "--config", &config_str]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut cluster = ProcessCluster::new(GOVERSE, &config_str);
    for id in ["node-1", "node-2"] {
        cluster.start_node(id);
    }
    for id in ["gate-1", "gate-2"] {
        cluster.start_gate(id);
    }
    goverse_testkit::assert_eventually!(
        balanced(&status(&config_str), 2, 64)
            && status(&config_str)["gates"].as_array().unwrap().len() == 2,
        Duration::from_secs(30)
    );
    let channels: Vec<Channel> = gate_addrs
        .iter()
        .map(|addr| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy()
        })
        .collect();
    let channel = &channels[0];

    // A third node joins under load: the shards it takes move as planned, failing no call.
    let (stop, failures, callers) = load(&channels, "DurableCounter", "join");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_node("node-3");
    goverse_testkit::assert_eventually!(
        balanced(&status(&config_str), 3, 64),
        Duration::from_secs(30)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = finish(channel, &stop, callers).await;
    let calls: i32 = results.iter().map(|r| r.1).sum();
    println!(
        "join under load: {calls} calls acknowledged, {} failed",
        failures.lock().len()
    );
    assert!(failures.lock().is_empty(), "{:?}", failures.lock());

    // Load: 16 callers adding to their own durable counters through both gates, counting
    // every acknowledged add and every failure.
    let (stop, failures, callers) = load(&channels, "DurableCounter", "fail");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(failures.lock().is_empty(), "{:?}", failures.lock());

    // kill -9 one node: about a third of the counters live on it.
    let victim = "node-2";
    let killed_at = Instant::now();
    cluster.kill_node(victim);
    // Calls succeed again once the lease ends and the others take the shards.
    goverse_testkit::assert_eventually!(
        balanced(&status(&config_str), 2, 64),
        Duration::from_secs(30)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = finish(channel, &stop, callers).await;
    // A caller's longest gap between acknowledged calls after the kill is how long its
    // counter was unreachable; the longest of them is the time to recover.
    let mut gap = Duration::ZERO;
    let mut stalled = 0;
    for (_, _, _, successes) in &results {
        let mut last = killed_at;
        let mut longest = Duration::ZERO;
        for at in successes.iter().filter(|t| **t >= killed_at) {
            longest = longest.max(at.duration_since(last));
            last = *at;
        }
        stalled += usize::from(longest > Duration::from_millis(500));
        gap = gap.max(longest);
    }
    println!(
        "kill -9: calls to the dead node's counters succeeded again after {gap:?} (lease TTL \
         {LEASE_TTL:?}); {stalled} of 16 counters stalled; {} calls failed",
        failures.lock().len()
    );
    assert!(stalled > 0, "no counter lived on the killed node");
    assert!(
        gap <= LEASE_TTL + Duration::from_secs(2),
        "calls stalled for {gap:?}"
    );

    // The killed node comes back and gets its share again.
    cluster.start_node(victim);
    goverse_testkit::assert_eventually!(
        balanced(&status(&config_str), 3, 64),
        Duration::from_secs(30)
    );

    // A rolling restart under load: each node in turn is stopped with SIGTERM (it hands its
    // shards over and saves) and started again. Planned moves fail no call.
    let (stop, failures, callers) = load(&channels, "DurableCounter", "roll");
    let started = Instant::now();
    for id in ["node-1", "node-2", "node-3"] {
        assert_eq!(
            cluster.stop_node(id, Duration::from_secs(30)),
            Some(0),
            "{id}"
        );
        goverse_testkit::assert_eventually!(
            balanced(&status(&config_str), 2, 64),
            Duration::from_secs(30)
        );
        cluster.start_node(id);
        goverse_testkit::assert_eventually!(
            balanced(&status(&config_str), 3, 64),
            Duration::from_secs(30)
        );
    }
    let results = finish(channel, &stop, callers).await;
    let calls: i32 = results.iter().map(|r| r.1).sum();
    println!(
        "rolling restart of 3 nodes in {:?}: {calls} calls acknowledged, {} failed",
        started.elapsed(),
        failures.lock().len()
    );
    assert!(
        failures.lock().is_empty(),
        "{:?}\n{}",
        failures.lock(),
        cluster.tails(60)
    );

    // SIGSTOP one node past its lease under load: the others take its shards (a write it was
    // making when it stopped is ended by PostgreSQL, releasing its locks); on SIGCONT it
    // refuses every call before anything else runs (its lease is overdue), writes nothing for
    // the shards it lost (fenced), rejoins, and gets its share back.
    let (stop, failures, callers) = load(&channels, "DurableCounter", "pause");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.pause_node("node-1");
    let stopped_at = Instant::now();
    goverse_testkit::assert_eventually!(
        balanced(&status(&config_str), 2, 64),
        Duration::from_secs(30)
    );
    let taken_after = stopped_at.elapsed();
    std::thread::sleep((LEASE_TTL * 2).saturating_sub(taken_after));
    cluster.resume_node("node-1");
    let resumed_at = Instant::now();
    goverse_testkit::assert_eventually!(
        balanced(&status(&config_str), 3, 64),
        Duration::from_secs(30)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = finish(channel, &stop, callers).await;
    let after_resume: usize = results
        .iter()
        .map(|(_, _, _, successes)| successes.iter().filter(|t| **t > resumed_at).count())
        .sum();
    println!(
        "SIGSTOP past the lease: shards taken over after {taken_after:?}; {after_resume} calls \
         acknowledged after SIGCONT, {} failed (in flight at the pause)",
        failures.lock().len()
    );
    assert!(
        taken_after <= LEASE_TTL + Duration::from_secs(3),
        "{taken_after:?}"
    );
    assert!(after_resume > 0);
    assert!(failures.lock().len() <= 16, "{:?}", failures.lock());

    // SIGTERM stops everything cleanly.
    cluster.stop(Duration::from_secs(30));
    let last = status(&config_str);
    assert_eq!(last["nodes"].as_object().unwrap().len(), 0, "{last}");
}

#[test]
fn demo_with_nodes_runs_a_cluster_of_processes_and_stops_it_cleanly() {
    let mut demo = Process::start(GOVERSE, ["demo", "--nodes", "3"]);
    let banner = demo.expect_within("ready;", Duration::from_secs(120));
    let _ = banner;
    let grpc = demo
        .output()
        .iter()
        .find_map(|line| {
            line.trim()
                .strip_prefix("gate gRPC")
                .map(|a| a.trim().to_owned())
        })
        .expect("the gate's address is printed");
    let config = demo
        .output()
        .iter()
        .find_map(|line| {
            line.trim()
                .strip_prefix("configuration")
                .map(|a| a.trim().to_owned())
        })
        .expect("the configuration is printed");
    let out = goverse(&[
        "call",
        "--gate",
        &grpc,
        "DurableCounter",
        "demo-1",
        "Add",
        r#"{"value":2}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('2'));
    let status = status(&config);
    assert_eq!(status["nodes"].as_object().unwrap().len(), 3, "{status}");
    assert_eq!(status["gates"].as_array().unwrap().len(), 1, "{status}");
    // The chat page, and each node's metrics at the address printed for it.
    let chat = demo
        .output()
        .iter()
        .find_map(|line| {
            line.trim()
                .strip_prefix("chat")
                .map(|a| a.trim().to_owned())
        })
        .expect("the chat page is printed");
    let page = http_text(&chat);
    assert!(page.contains("<title>GoVerse chat</title>"), "{page}");
    // Every sample's page is on the gate, and every sample's types on the nodes.
    for (name, title) in [
        ("tic-tac-toe", "GoVerse tic-tac-toe"),
        ("bomberman", "GoVerse bomberman"),
    ] {
        let url = demo
            .output()
            .iter()
            .find_map(|line| line.trim().strip_prefix(name).map(|a| a.trim().to_owned()))
            .unwrap_or_else(|| panic!("the {name} page is printed"));
        assert!(http_text(&url).contains(title), "{url}");
    }
    let out = goverse(&[
        "call",
        "--gate",
        &grpc,
        "TicTacToeService",
        "service-3",
        "MakeMove",
        r#"{"gameId":"g","position":4}"#,
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""X""#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The samples' access rules are in the file, so the cluster's gate enforces them: clients
    // may not add players to matches.
    let out = goverse(&[
        "call",
        "--gate",
        &grpc,
        "Match",
        "Match-x",
        "AddPlayer",
        r#"{"playerId":"mallory"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission_denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A cache manager on each node, in the directory once the cluster is stable.
    let managers = || {
        let out = goverse(&[
            "call",
            "--gate",
            &grpc,
            "CacheDirectory",
            "CacheDirectory",
            "List",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .matches("/CacheManager")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while managers() < 3 {
        assert!(
            Instant::now() < deadline,
            "three cache managers never listed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let node_metrics: Vec<String> = demo
        .output()
        .iter()
        .filter(|line| line.trim().starts_with("node-"))
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    assert_eq!(node_metrics.len(), 3, "{:?}", demo.output());
    for url in &node_metrics {
        assert!(http_text(url).contains("goverse_shards_total"), "{url}");
    }
    // The inspector, at the address printed for it: the page and the three nodes.
    let inspector = demo
        .output()
        .iter()
        .find_map(|line| {
            line.trim()
                .strip_prefix("inspector")
                .and_then(|a| a.split_whitespace().next())
                .map(str::to_owned)
        })
        .expect("the inspector is printed");
    assert!(http_text(&inspector).contains("<title>GoVerse inspector</title>"));
    let cluster = http_text(&format!("{inspector}api/cluster"));
    assert_eq!(cluster.matches(r#""leader":"#).count(), 4, "{cluster}");
    demo.terminate();
    assert_eq!(demo.wait_exit(Duration::from_secs(60)), Some(0));
    assert!(demo.output().iter().any(|l| l.contains("stopped")));
}

/// The body of `GET url` (an `http://host:port/path` URL), over a plain socket.
fn http_text(url: &str) -> String {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Opens a TCP connection to `addr` and sends `bytes`, then leaves it open, saying nothing
/// more: a client stalled half-way through a preface, headers or a body.
fn stalled_client(addr: &str, bytes: &[u8]) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_saves_first_and_is_not_held_up_by_stalled_clients() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut file = generated(dir.path(), &etcd, "1", "1", "16");
    // Only the saves at shutdown keep the counter.
    file.cluster.save_interval = Some(Duration::ZERO);
    let config_str = write_config(dir.path(), "cluster.yaml", &file);
    let node_addr = file.nodes[0].grpc_addr.clone();
    let gate_grpc = file.gates[0].grpc_addr.clone();
    let gate_http = file.gates[0].http_addr.clone().unwrap();

    let mut cluster = ProcessCluster::new(GOVERSE, &config_str);
    cluster.start_node("node-1");
    cluster.start_gate("gate-1");
    goverse_testkit::assert_eventually!(
        balanced(&status(&config_str), 1, 16) && status(&config_str)["gates"][0] == gate_grpc,
        Duration::from_secs(30)
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gate_grpc}"))
        .unwrap()
        .connect_lazy();
    let mut client = GateServiceClient::new(channel.clone());
    let added = call(
        &mut client,
        "Counter",
        "kept",
        "Add",
        any(&Int32Value { value: 3 }),
    )
    .await
    .unwrap();
    assert_eq!(added, 3);

    // Stalled clients on every port: half an HTTP/2 preface to the node, a silent connection
    // and half a request body to the gate.
    let _node_stalled = stalled_client(&node_addr, b"PRI * HTTP/2.0\r\n");
    let _gate_silent = stalled_client(&gate_grpc, b"");
    let _gate_body = stalled_client(
        &gate_http,
        b"POST /api/v1/objects/call/Counter/kept/Get HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    );

    // The node saves, hands over and exits within its bounds, stalled clients or not.
    let asked = Instant::now();
    let node = cluster.node("node-1");
    node.terminate();
    assert_eq!(node.wait_exit(Duration::from_secs(15)), Some(0));
    let node_took = asked.elapsed();
    assert!(
        node.output()
            .iter()
            .any(|l| l.contains("stopped:") && l.contains("1 saved") && l.contains(" 0 unsaved")),
        "{:?}",
        node.output()
    );
    // What it saved is there when it comes back.
    cluster.start_node("node-1");
    let got = call(&mut client, "Counter", "kept", "Get", any(&Empty {}))
        .await
        .unwrap();
    assert_eq!(got, 3);

    let asked = Instant::now();
    let gate = cluster.gate("gate-1");
    gate.terminate();
    assert_eq!(gate.wait_exit(Duration::from_secs(30)), Some(0));
    let gate_took = asked.elapsed();
    println!(
        "SIGTERM with stalled clients: node exited after {node_took:?}, gate after {gate_took:?}"
    );
    assert_eq!(
        cluster.stop_node("node-1", Duration::from_secs(15)),
        Some(0)
    );
}

/// A generated configuration of `nodes` nodes and `gates` gates (`goverse config gen`, as a user
/// runs it) on `etcd` with `shards` shards, free ports, one SQLite file in `dir`, and short
/// timings.
fn generated(
    dir: &std::path::Path,
    etcd: &EtcdServer,
    nodes: &str,
    gates: &str,
    shards: &str,
) -> goverse::config::ClusterFile {
    let db = dir.join("objects.db");
    let base = free_ports_in_a_row(24);
    let out = goverse(&[
        "config",
        "gen",
        "--nodes",
        nodes,
        "--gates",
        gates,
        "--shards",
        shards,
        "--etcd",
        &etcd.endpoint(),
        "--sqlite",
        db.to_str().unwrap(),
        // The generator numbers each kind's ports up from these: up to eight nodes (and
        // their operations ports) and four gates.
        "--node-port",
        &base.to_string(),
        "--gate-port",
        &(base + 8).to_string(),
        "--http-port",
        &(base + 12).to_string(),
        "--ops-port",
        &(base + 16).to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut file = goverse::config::ClusterFile::parse(&text, "generated", &[]).unwrap();
    file.cluster.lease_ttl = Some(LEASE_TTL);
    file.cluster.cluster_state_stability_duration = Some(Duration::from_secs(1));
    file
}

/// Writes `file` to `dir/{name}`; its path.
fn write_config(dir: &std::path::Path, name: &str, file: &goverse::config::ClusterFile) -> String {
    let path = dir.join(name);
    std::fs::write(&path, file.to_yaml()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// [`generated`], written to `dir/cluster.yaml`; its path.
fn generated_config(
    dir: &std::path::Path,
    etcd: &EtcdServer,
    nodes: &str,
    gates: &str,
    shards: &str,
) -> String {
    write_config(
        dir,
        "cluster.yaml",
        &generated(dir, etcd, nodes, gates, shards),
    )
}

/// The cluster's shard count is recorded when it forms: a node or gate configured with another
/// count is refused before it writes anything; records a cluster cannot use (left by an older
/// build's mismatched node) are reported by `cluster status` and removed by `cluster repair`,
/// which says what it removes; `cluster status | head` ends quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_shard_count_is_refused_and_repair_removes_unusable_records() {
    use goverse::cluster::{ClusterStore as _, EtcdClusterStore, EtcdConfig, Keys, ShardRecord};
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = generated_config(dir.path(), &etcd, "2", "1", "16");
    let mut cluster = ProcessCluster::new(GOVERSE, &config);
    cluster.start_node("node-1");
    goverse_testkit::assert_eventually!(balanced(&status(&config), 1, 16), Duration::from_secs(30));
    assert_eq!(status(&config)["recorded_shards"], 16);

    // A second node with twice the shards: refused, naming both counts, having written nothing.
    for command in [
        vec!["node", "--config", &config, "--node-id", "node-2"],
        vec!["gate", "--config", &config, "--gate-id", "gate-1"],
    ] {
        let out = std::process::Command::new(GOVERSE)
            .args(&command)
            .env("GOVERSE_CLUSTER__SHARDS", "32")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{command:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("has 16 shards") && err.contains("configured with 32"),
            "{command:?}: {err}"
        );
    }
    let etcd_store = EtcdClusterStore::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    let keys = Keys::new("/goverse").unwrap();
    let (records, _) = etcd_store.get_prefix(&keys.shards()).await.unwrap();
    assert_eq!(records.len(), 16, "nothing past shard 15 was written");
    let after = status(&config);
    assert_eq!(after["stray_records"], 0, "{after}");
    assert_eq!(after["nodes"].as_object().unwrap().len(), 1, "{after}");

    // What an older build left: records past the count. Status reports them and keeps working;
    // a gate still starts; repair removes exactly them and says so.
    for n in 16..40 {
        let record = ShardRecord {
            shard: goverse::ShardId(n),
            target: None,
            current: Some(goverse::NodeAddr::new("127.0.0.1:1")),
            epoch: 3,
        };
        etcd_store
            .put(&keys.shard(record.shard), record.encode(), None)
            .await
            .unwrap();
    }
    let reported = status(&config);
    assert_eq!(reported["stray_records"], 24, "{reported}");
    let text = goverse(&["cluster", "status", "--config", &config]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("24 shard records past shard 15"), "{text}");
    cluster.start_gate("gate-1");
    let dry = goverse(&["cluster", "repair", "--config", &config, "--dry-run"]);
    let dry = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(
        dry.contains(
            "24 shard records past shard 15: /goverse/shards/00016 .. /goverse/shards/00039"
        ) && dry.contains("nothing removed"),
        "{dry}"
    );
    assert_eq!(status(&config)["stray_records"], 24);
    let repaired = goverse(&["cluster", "repair", "--config", &config]);
    assert!(repaired.status.success());
    let repaired = String::from_utf8_lossy(&repaired.stdout).into_owned();
    assert!(repaired.contains("removed 24 shard records"), "{repaired}");
    assert_eq!(status(&config)["stray_records"], 0);
    assert!(balanced(&status(&config), 1, 16));

    // A cluster formed before counts were recorded (no count key, a full map of 16): a node of
    // 32 is refused by the map it finds.
    etcd_store.delete(&keys.shard_count()).await.unwrap();
    let out = std::process::Command::new(GOVERSE)
        .args(["node", "--config", &config, "--node-id", "node-2"])
        .env("GOVERSE_CLUSTER__SHARDS", "32")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has 16 shards (a full map of records)"),
        "{err}"
    );

    // A member nobody can reach (registered at an address nothing listens on): status names it
    // and the cause, and the cluster is not ready while it is registered.
    let status_now = status(&config);
    assert_eq!(
        status_now["unreachable"],
        serde_json::json!({}),
        "{status_now}"
    );
    let lease = etcd_store
        .grant_lease(Duration::from_secs(60))
        .await
        .unwrap();
    let ghost = goverse::NodeAddr::new("127.0.0.1:1");
    etcd_store
        .put(&keys.node(&ghost), b"ghost".to_vec(), Some(lease))
        .await
        .unwrap();
    let with_ghost = status(&config);
    assert_eq!(with_ghost["ready"], false, "{with_ghost}");
    let cause = with_ghost["unreachable"]["127.0.0.1:1"]
        .as_str()
        .unwrap_or_default();
    assert!(cause.contains("connect"), "{with_ghost}");
    let text = goverse(&["cluster", "status", "--config", &config]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("127.0.0.1:1") && text.contains("UNREACHABLE"),
        "{text}"
    );
    etcd_store.revoke_lease(lease).await.unwrap();
    assert_eq!(status(&config)["unreachable"], serde_json::json!({}));

    // A reader that stops early: no panic, no error text.
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{GOVERSE} cluster status --config {config} | head -c 5"
        ))
        .output()
        .unwrap();
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    cluster.stop(Duration::from_secs(20));
}

/// A loopback TCP forwarder standing in front of a node's port: what the node's peers and the
/// gates dial. Cutting it refuses new connections and drops open ones, in that direction only
/// (the node still dials out): a node cut off from incoming traffic.
struct Forwarder {
    stop: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Forwarder {
    async fn start(listen: &str, to: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let to = to.to_owned();
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let (cut, tracker) = (stop.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = cut.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => return,
                    },
                };
                let (to, cut) = (to.clone(), cut.clone());
                tracker.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                        tokio::select! {
                            () = cut.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                    }
                });
            }
        });
        Self { stop, tasks }
    }

    /// Closes the port and every connection through it; returns once all are closed.
    async fn cut(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Every shard record, as etcd holds it.
async fn shard_records(
    store: &goverse::cluster::EtcdClusterStore,
) -> Vec<goverse::cluster::ShardRecord> {
    use goverse::cluster::ClusterStore as _;
    let keys = goverse::cluster::Keys::new("/goverse").unwrap();
    let (kvs, _) = store.get_prefix(&keys.shards()).await.unwrap();
    kvs.iter()
        .map(|kv| {
            let shard = keys.shard_of_key(&kv.key).unwrap();
            goverse::cluster::ShardRecord::decode(shard, &kv.value).unwrap()
        })
        .collect()
}

/// Registration proves only that a node reaches etcd. A node whose advertised address nothing
/// answers on, and a node with the wrong cluster secret, register and get no shard; `cluster
/// status` names both and why. Once the address answers, the node gets its share. Then it is
/// cut off from incoming traffic (it still reaches etcd, the store and its peers): its peers
/// find it unreachable and it is drained, and calls to its objects made meanwhile wait for the
/// move instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_their_peers_cannot_reach_get_no_shards_and_one_cut_off_is_drained() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut file = generated(dir.path(), &etcd, "4", "1", "64");
    // node-3 advertises a port of this test's forwarder, which is not listening yet.
    let front = format!("127.0.0.1:{}", free_port());
    let node3_addr = file.nodes[2].grpc_addr.clone();
    file.nodes[2].advertise_addr = Some(front.clone());
    let config = write_config(dir.path(), "cluster.yaml", &file);
    // node-4 runs with another secret than the rest of the cluster.
    file.cluster.secret = Some("not-the-cluster-secret-at-all".to_owned());
    let wrong = write_config(dir.path(), "wrong-secret.yaml", &file);
    let node4 = file.nodes[3].advertise().to_owned();

    let mut cluster = ProcessCluster::new(GOVERSE, &config);
    cluster.start_node("node-1");
    cluster.start_node("node-2");
    let grpc = cluster.start_gate("gate-1");
    goverse_testkit::assert_eventually!(balanced(&status(&config), 2, 64), Duration::from_secs(30));
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Both newcomers register; for four stability windows no record names either of them.
    cluster.start_node("node-3");
    cluster.start_node_from(&wrong, "node-4");
    let etcd_store = goverse::cluster::EtcdClusterStore::connect(&goverse::cluster::EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        ..goverse::cluster::EtcdConfig::default()
    })
    .await
    .unwrap();
    goverse_testkit::assert_eventually!(
        status(&config)["nodes"].as_object().unwrap().len() == 4,
        Duration::from_secs(20)
    );
    let outsiders = [front.clone(), node4.clone()];
    let watched_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watched_until {
        for record in shard_records(&etcd_store).await {
            for node in [&record.target, &record.current].into_iter().flatten() {
                assert!(
                    !outsiders.contains(&node.to_string()),
                    "shard {} went to {node}, which its peers cannot reach",
                    record.shard
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = status(&config);
    assert_eq!(seen["ready"], false, "{seen}");
    let aside = |status: &serde_json::Value, node: &str| {
        status["set_aside"][node]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(aside(&seen, &front).contains("cannot connect"), "{seen}");
    assert!(aside(&seen, &node4).contains("Unauthenticated"), "{seen}");
    assert!(
        seen["unreachable"][&node4]
            .as_str()
            .is_some_and(|c| c.contains("Unauthenticated")),
        "{seen}"
    );
    let text = goverse(&["cluster", "status", "--config", &config]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("SET ASIDE"), "{text}");
    // The two that serve answer for every object.
    let mut client = GateServiceClient::new(channel.clone());
    for n in 0..32 {
        let id = format!("reach-{n}");
        let value = add_one(&mut client, "DurableCounter", &id)
            .await
            .unwrap_or_else(|status| panic!("{id}: {status}"));
        assert_eq!(value, 1);
    }

    // node-3's address answers now: it gets its share. node-4 leaves.
    let forwarder = Forwarder::start(&front, &node3_addr).await;
    assert_eq!(
        cluster.stop_node("node-4", Duration::from_secs(20)),
        Some(0)
    );
    goverse_testkit::assert_eventually!(balanced(&status(&config), 3, 64), Duration::from_secs(30));

    // Cut off from incoming traffic: drained like a dead node, though its lease lives on; calls
    // to its objects made meanwhile wait for the move and succeed.
    let cut_at = Instant::now();
    forwarder.cut().await;
    // A call the gate wrote on its connection to node-3 just as the connection closed has an
    // unknown outcome (`Unavailable`, as documented): it is tried again, and the counter may
    // then count it once more.
    let calls: Vec<_> = (0..32)
        .map(|n| {
            let mut client = GateServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let id = format!("reach-{n}");
                let mut unknown = 0;
                loop {
                    match add_one(&mut client, "DurableCounter", &id).await {
                        Ok(value) => return (id, value, unknown, cut_at.elapsed()),
                        Err(status)
                            if status.code() == tonic::Code::Unavailable
                                && status.message().contains("was lost")
                                && unknown < 3 =>
                        {
                            unknown += 1;
                        }
                        Err(status) => panic!("{id}: {status}"),
                    }
                }
            })
        })
        .collect();
    let (mut slowest, mut raced) = (Duration::ZERO, 0);
    for call in calls {
        let (id, value, unknown, took) = call.await.unwrap();
        assert!(
            (2..=2 + unknown).contains(&value),
            "{id}: {value} after 1 + 1 acknowledged adds and {unknown} of unknown outcome"
        );
        slowest = slowest.max(took);
        raced += unknown;
    }
    goverse_testkit::assert_eventually!(
        shard_records(&etcd_store)
            .await
            .iter()
            .all(|r| r.current.as_ref().is_some_and(|c| c.to_string() != front)),
        Duration::from_secs(30)
    );
    let drained = cut_at.elapsed();
    let after = status(&config);
    assert_eq!(after["nodes"][&front], 0, "{after}");
    assert!(aside(&after, &front).contains("cannot connect"), "{after}");
    eprintln!(
        "cut off from incoming traffic: slowest call {slowest:?}, drained in {drained:?}, \
         {raced} calls caught on the closing connection"
    );

    cluster.stop(Duration::from_secs(20));
}

/// `cluster.connections` in the file reaches every port of `goverse node` and `goverse gate`:
/// with a 1 s idle timeout, silent connections to the node service, the gate's gRPC and its
/// HTTP port are closed by the servers within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_s_connection_limits_reach_node_and_gate_ports() {
    use std::io::Read as _;
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut file = generated(dir.path(), &etcd, "1", "1", "16");
    file.cluster.connections = Some(goverse::config::ConnectionsSection {
        idle_timeout: Some(Duration::from_secs(1)),
        header_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    });
    let config = write_config(dir.path(), "cluster.yaml", &file);
    let mut cluster = ProcessCluster::new(GOVERSE, &config);
    cluster.start_node("node-1");
    cluster.start_gate("gate-1");
    let ports = [
        file.nodes[0].grpc_addr.clone(),
        file.gates[0].grpc_addr.clone(),
        file.gates[0].http_addr.clone().unwrap(),
    ];
    for addr in &ports {
        let mut idle = stalled_client(addr, b"");
        idle.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let opened = Instant::now();
        let mut buf = [0u8; 64];
        // The server closes it: the read ends (0 bytes, or a reset) instead of timing out.
        let ended = loop {
            match idle.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(ended, "{addr}: an idle connection was still open after 8 s");
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "{addr}: closed after {:?}",
            opened.elapsed()
        );
    }
    cluster.stop(Duration::from_secs(20));
}
