//! `run-cluster.sh` as a user runs it, on binaries this build made: etcd, three sharding-node
//! processes and two gates from one generated config, the monitors auto-loaded, the stress
//! client through both gates with every reply checked, then everything stopped cleanly.

use std::path::PathBuf;
use std::process::Command;

fn bin_dir() -> PathBuf {
    let node = PathBuf::from(env!("CARGO_BIN_EXE_sharding-node"));
    let dir = node.parent().expect("a directory").to_path_buf();
    assert!(
        dir.join("goverse").exists(),
        "the goverse binary is not in {} yet: run the workspace's tests (cargo test \
         --workspace) or build it first (cargo build -p goverse-cli)",
        dir.display()
    );
    dir
}

#[test]
fn run_cluster_starts_settles_and_passes_the_stress_client() {
    let bins = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    // Twenty ports in a row: etcd, three nodes, two gates and their HTTP ports.
    let base = goverse_testkit::free_ports_in_a_row(20);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/run-cluster.sh");
    let out = Command::new("bash")
        .arg(script)
        .args([
            "--nodes", "3", "--gates", "2", "--shards", "64", "--stress", "4",
        ])
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--dir")
        .arg(dir.path())
        .args(["--port-base", &base.to_string()])
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: String = ["node-1", "node-2", "node-3", "gate-1", "gate-2"]
        .iter()
        .map(|name| {
            let log =
                std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            format!(
                "--- {name}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect();
    assert!(
        out.status.success(),
        "run-cluster.sh failed ({}):\n{stdout}\n{stderr}\n{logs}",
        out.status
    );
    assert!(stdout.contains("moving   0"), "{stdout}");
    let stress = stdout
        .lines()
        .find(|l| l.starts_with("stress:"))
        .unwrap_or_else(|| panic!("no stress line:\n{stdout}"));
    assert!(stress.contains(" 0 failed, 0 mismatches"), "{stress}");
    assert!(stress.contains("through 2 gates to 3 nodes"), "{stress}");
    // Each node stopped cleanly, every object saved.
    for node in ["node-1", "node-2", "node-3"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{node}.log"))).unwrap();
        assert!(log.contains(" 0 unsaved"), "{node}:\n{log}");
    }
}
