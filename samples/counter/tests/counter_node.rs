//! `counter-node`, the sample's whole node program (one `goverse::run::node_main` call), run as
//! a user runs it: a process of a two-node cluster on a real etcd and a shared SQLite file, the
//! other node in this test. Calls through the test's node reach counters on both; SIGTERM hands
//! the process's shards over with every state saved; a second signal stops it at once.

use std::time::Duration;

use goverse::config::ClusterFile;
use goverse::prelude::*;
use goverse::{NodeAddr, ShardId};
use goverse_sample_counter::{Counter, DurableCounter, DurableCounterRef};
use goverse_testkit::{EtcdServer, Process, assert_eventually, free_port};

const COUNTER_NODE: &str = env!("CARGO_BIN_EXE_counter-node");
const SHARDS: u32 = 16;
const COUNTERS: usize = 24;

fn write_config(dir: &std::path::Path, etcd: &str) -> std::path::PathBuf {
    let path = dir.join("cluster.yml");
    let text = format!(
        "version: 1
cluster:
  shards: {SHARDS}
  provider: etcd
  etcd:
    endpoints: [\"{etcd}\"]
    prefix: /goverse/counter-node
  lease_ttl: 1s
  cluster_state_stability_duration: 300ms
sqlite:
  path: {db}
nodes:
  - id: n1
    grpc_addr: \"127.0.0.1:{p1}\"
  - id: n2
    grpc_addr: \"127.0.0.1:{p2}\"
",
        db = dir.join("counters.db").display(),
        p1 = free_port(),
        p2 = free_port(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The test's own node, n2 of the file, serving its node service.
async fn test_node(file: &ClusterFile) -> (Node, tokio::sync::oneshot::Sender<()>) {
    let node = Node::builder(file.node_config("n2").unwrap())
        .register::<Counter>()
        .register::<DurableCounter>()
        .cluster_store(goverse::run::connect_cluster(file).await.unwrap())
        .object_store(goverse::run::open_store(file).await.unwrap().unwrap())
        .start()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(&file.node("n2").unwrap().grpc_addr)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(goverse::serve(node.clone(), listener, async {
        let _ = stopped.await;
    }));
    (node, stop)
}

/// Shards the process (n1) serves, as the map says.
fn served_by_process(node: &Node, process: &NodeAddr) -> usize {
    let map = node.cluster_map();
    (0..SHARDS)
        .filter(|n| map.owner(ShardId(*n)) == Some(process))
        .count()
}

async fn add_everywhere(node: &Node, value: i32) {
    for i in 0..COUNTERS {
        DurableCounterRef::new(format!("c{i}").as_str())
            .add(node, Int32Value { value })
            .await
            .unwrap_or_else(|e| panic!("c{i}: {e}"));
    }
}

async fn values(node: &Node) -> Vec<i32> {
    let mut all = Vec::new();
    for i in 0..COUNTERS {
        let got = DurableCounterRef::new(format!("c{i}").as_str())
            .get(node, Empty {})
            .await
            .unwrap_or_else(|e| panic!("c{i}: {e}"));
        all.push(got.value);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_node_serves_hands_over_on_sigterm_and_stops_at_once_on_a_second_signal() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &etcd.endpoint());
    let file = ClusterFile::load(&path).unwrap();
    let process_addr = NodeAddr::new(file.node("n1").unwrap().grpc_addr.as_str());
    let args = ["--config", path.to_str().unwrap(), "--node-id", "n1"];

    // Bad flags are named, with the usage.
    let out = std::process::Command::new(COUNTER_NODE)
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--node-id is required"), "{err}");

    let mut process = Process::start(COUNTER_NODE, args);
    process.expect_within("serving on", Duration::from_secs(30));
    let (node, stop) = test_node(&file).await;
    // The two share the shards; calls through the test's node reach both.
    assert_eventually!(
        served_by_process(&node, &process_addr) == SHARDS as usize / 2
            && node.stats().owned_shards == u64::from(SHARDS) / 2,
        Duration::from_secs(20)
    );
    add_everywhere(&node, 5).await;
    assert_eq!(values(&node).await, vec![5; COUNTERS]);

    // SIGTERM: the process hands its shards to the test's node, saving first, and exits 0.
    process.terminate();
    assert_eq!(process.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        process
            .output()
            .iter()
            .any(|l| l.contains("stopped:") && l.contains(" 0 unsaved")),
        "{:?}",
        process.output()
    );
    assert_eventually!(
        node.stats().owned_shards == u64::from(SHARDS),
        Duration::from_secs(10)
    );
    assert_eq!(values(&node).await, vec![5; COUNTERS]);

    // Again, then two signals at once: the second stops the waiting, nothing idle is lost.
    let mut process = Process::start(COUNTER_NODE, args);
    process.expect_within("serving on", Duration::from_secs(30));
    assert_eventually!(
        served_by_process(&node, &process_addr) == SHARDS as usize / 2,
        Duration::from_secs(20)
    );
    add_everywhere(&node, 1).await;
    process.terminate();
    process.expect_within("stopping:", Duration::from_secs(10));
    process.terminate();
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        process.output().iter().any(|l| l.contains("stopping now")),
        "{:?}",
        process.output()
    );
    assert_eventually!(
        node.stats().owned_shards == u64::from(SHARDS),
        Duration::from_secs(10)
    );
    assert_eq!(values(&node).await, vec![6; COUNTERS]);
    node.shutdown(Duration::from_secs(10)).await;
    let _ = stop.send(());
}
