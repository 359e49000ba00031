//! What the process tests share: a generated cluster file.

use std::time::Duration;

use goverse_testkit::{EtcdServer, free_ports_in_a_row};

/// The `goverse` binary.
pub(crate) const GOVERSE: &str = env!("CARGO_BIN_EXE_goverse");

/// A cluster file of `nodes` nodes and `gates` gates made by `goverse config gen` on `etcd`, with
/// 16 shards, free ports, a SQLite file in `dir` and short timings; its path.
pub(crate) fn cluster_file(
    dir: &std::path::Path,
    etcd: &EtcdServer,
    nodes: u16,
    gates: u16,
) -> String {
    let base = free_ports_in_a_row(16);
    let db = dir.join("objects.db");
    let port = |n: u16| (base + n).to_string();
    let out = std::process::Command::new(GOVERSE)
        .args(["config", "gen", "--shards", "16"])
        .args(["--nodes", &nodes.to_string(), "--gates", &gates.to_string()])
        .args(["--etcd", &etcd.endpoint(), "--sqlite", db.to_str().unwrap()])
        .args(["--node-port", &port(0), "--ops-port", &port(4)])
        .args(["--gate-port", &port(8), "--http-port", &port(11)])
        .args(["--inspector-port", &port(14)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut file = goverse::config::ClusterFile::parse(&text, "generated", &[]).unwrap();
    file.cluster.lease_ttl = Some(Duration::from_secs(2));
    file.cluster.cluster_state_stability_duration = Some(Duration::from_secs(1));
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, file.to_yaml()).unwrap();
    path.to_str().unwrap().to_owned()
}
