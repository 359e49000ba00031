//! The `goverse` binary as a user runs it.

use std::process::Command;

fn goverse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_goverse"))
        .args(args)
        .output()
        .expect("goverse runs")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn shard_prints_upstream_shards() {
    for (id, shards, expected) in [
        ("my-counter", None, "5258"),
        ("my-counter", Some("64"), "10"),
        ("ChatRoomMgr0", None, "1166"),
        ("ChatRoomMgr0", Some("64"), "14"),
        ("abc", None, "2315"),
        ("abc", Some("64"), "11"),
        ("shard#7/pinned", Some("64"), "7"),
    ] {
        let mut args = vec!["shard", id];
        if let Some(n) = shards {
            args.extend(["--shards", n]);
        }
        let out = goverse(&args);
        assert!(out.status.success(), "{args:?}");
        assert_eq!(stdout(&out), format!("{expected}\n"), "{args:?}");
    }
}

#[test]
fn shard_rejects_malformed_ids_clearly() {
    for (id, needle) in [
        ("", "empty"),
        ("shard#x/a", "number"),
        ("shard#9000/a", "out of range"),
    ] {
        let out = goverse(&["shard", id]);
        assert_eq!(out.status.code(), Some(2), "{id:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{id:?}: {err}");
    }
    let out = goverse(&["shard", "x", "--shards", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_local_json_has_the_documented_keys() {
    let out = goverse(&[
        "bench",
        "local",
        "--objects",
        "100",
        "--callers",
        "4",
        "--duration",
        "0.3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    for key in ["calls_per_sec", "p50_us", "p99_us", "p999_us"] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {report}"
        );
    }
    assert_eq!(report["errors"], 0);

    let out = goverse(&[
        "bench",
        "local",
        "--objects",
        "1000",
        "--activate-only",
        "--json",
        "--store",
        "sqlite",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(
        report["activations_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["rss_bytes_per_activation"].is_number(), "{report}");
}

#[test]
fn bench_rejects_nonsense_arguments() {
    let out = goverse(&["bench", "local", "--callers", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--callers"));
}
