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
        "--baseline",
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
    // The same run measured the floor: bare tokio actors asked over mpsc and oneshot.
    assert_eq!(
        report["baseline_name"], "tokio mpsc+oneshot ask",
        "{report}"
    );
    for key in ["throughput_vs_baseline", "p50_vs_baseline"] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {report}"
        );
    }
    assert!(report["baseline"]["calls_per_sec"].as_f64().unwrap() > 0.0);

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
    // With a store, every activation loads saved state; RSS growth is not reported then.
    assert_eq!(report["with_saved_state"], true, "{report}");
    assert!(report["rss_bytes_per_activation"].is_null(), "{report}");
}

#[test]
fn bench_shard_map_writes_and_removes_a_whole_map_on_a_real_etcd() {
    let etcd = goverse_testkit::EtcdServer::start();
    let out = goverse(&[
        "bench",
        "shard-map",
        "--etcd",
        &etcd.endpoint(),
        "--shards",
        "1024",
        "--nodes",
        "3",
        "--rounds",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["transactions"], 8, "{report}");
    assert!(
        report["write_ms_median"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // Nothing is left behind.
    let left = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use goverse::cluster::{ClusterStore, EtcdClusterStore, EtcdConfig};
        let store = EtcdClusterStore::connect(&EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            ..EtcdConfig::default()
        })
        .await
        .unwrap();
        store.get_prefix("/").await.unwrap().0.len()
    });
    assert_eq!(left, 0, "the bench removes its maps");
    // An etcd nobody answers at is named.
    let out = goverse(&[
        "bench",
        "shard-map",
        "--etcd",
        "127.0.0.1:1",
        "--shards",
        "8",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"),
        "names the endpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_cluster_calls_another_node_over_the_network_without_errors() {
    let out = goverse(&[
        "bench",
        "cluster",
        "--objects",
        "200",
        "--callers",
        "8",
        "--duration",
        "0.5",
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
    assert_eq!(report["callers"], 8);
}

#[test]
fn bench_rejects_nonsense_arguments() {
    let out = goverse(&["bench", "local", "--callers", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--callers"));
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A plain HTTP/1.1 GET; the whole response as text.
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A plain HTTP/1.1 POST of a JSON body; the whole response as text.
fn http_post(address: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_serves_until_sigterm_then_saves_and_exits_zero() {
    use std::io::{BufRead, BufReader};
    let (node, grpc, http) = (free_port(), free_port(), free_port());
    let data = tempfile::tempdir().unwrap();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_goverse"))
            .args([
                "demo",
                "--node-listen",
                &node,
                "--listen",
                &grpc,
                "--http-listen",
                &http,
            ])
            .arg("--data-dir")
            .arg(data.path())
            // Logs for a log shipper: JSON lines on standard error (a pipe, not a terminal).
            .env("RUST_LOG", "info")
            .env("GOVERSE_LOG_FORMAT", "json")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text).unwrap();
        text
    });
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("ready") {
            break;
        }
    }
    assert!(
        printed.contains(&format!(
            "goverse call --gate {grpc} Counter my-counter Add"
        )),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "http://{http}/api/v1/objects/call/Counter/my-counter/Add"
        )),
        "{printed}"
    );

    let out = goverse(&[
        "call",
        "--gate",
        &grpc,
        "Counter",
        "my-counter",
        "Add",
        r#"{"value":5}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(value, serde_json::json!({"value": 5}));
    // Load through the gate, then the same against a bare tonic echo process.
    let out = goverse(&[
        "bench",
        "gate",
        "--gate",
        &grpc,
        "--callers",
        "4",
        "--connections",
        "1",
        "--objects",
        "10",
        "--duration",
        "0.3",
        "--baseline",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["baseline_name"], "tonic echo", "{report}");
    assert_eq!(report["baseline"]["errors"], 0, "{report}");
    assert!(
        report["throughput_vs_baseline"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    let out = goverse(&["call", "--gate", &grpc, "Counter", "my-counter", "Nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no method \"Nope\""));
    // The chat web client is served by the gate.
    let page = http_get(&http, "/chat/");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("<title>GoVerse chat</title>"),
        "{page}"
    );

    // The chat sample is registered; its manager's internal method is not for clients.
    let out = goverse(&[
        "call",
        "--gate",
        &grpc,
        "ChatRoomMgr",
        "ChatRoomMgr0",
        "ListChatRooms",
    ]);
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"chatRooms": ["Crypto", "General", "Movies", "Sports", "Technology"]})
    );
    let out = goverse(&[
        "call",
        "--gate",
        &grpc,
        "ChatRoomMgr",
        "ChatRoomMgr0",
        "RegisterRoom",
        r#"{"roomName":"Sneaky"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission_denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = goverse(&["create", "--gate", &grpc, "Counter", "c2"]);
    assert_eq!(stdout(&out).trim(), r#"{"id":"c2"}"#);
    // Nobody can take an ID another type needs: a counter under a chat room's ID is refused,
    // by call and by create, and the room stays usable.
    for args in [
        &[
            "call",
            "--gate",
            &grpc,
            "Counter",
            "ChatRoom-General",
            "Add",
            r#"{"value":1}"#,
        ][..],
        &["create", "--gate", &grpc, "Counter", "ChatRoom-General"][..],
        &["create", "--gate", &grpc, "ChatRoom", "alice"][..],
    ] {
        let out = goverse(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("permission_denied"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let squat = http_post(
        &http,
        "/api/v1/objects/call/Counter/ChatRoom-General/Add",
        r#"{"value":1}"#,
    );
    assert!(squat.starts_with("HTTP/1.1 403"), "{squat}");

    // Operations endpoints on the demo's HTTP port, node and gate in one registry.
    let metrics = http_get(&http, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("goverse_method_calls_total{node="),
        "{metrics}"
    );
    assert!(
        metrics.contains("goverse_gate_active_clients{gate="),
        "{metrics}"
    );
    assert!(http_get(&http, "/healthz").starts_with("HTTP/1.1 200"));
    let ready = http_get(&http, "/ready");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains("ready"),
        "{ready}"
    );

    // The inspector, on the same port: its page, the cluster of one node, actions refused
    // without the printed admin token, and an event stream that ends at shutdown.
    assert!(
        printed.contains(&format!("inspector     http://{http}/inspector")),
        "{printed}"
    );
    let page = http_get(&http, "/inspector");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("GoVerse inspector"),
        "{page}"
    );
    let cluster = http_get(&http, "/inspector/api/cluster");
    assert!(
        cluster.contains(r#""shard_count":8192"#)
            && cluster.contains(&format!(r#""address":"{node}""#)),
        "{cluster}"
    );
    let refused = http_post(&http, "/inspector/api/shards/1/pin", "");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let events = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&http).unwrap();
        write!(
            stream,
            "GET /inspector/api/events HTTP/1.1\r\nHost: {http}\r\n\r\n"
        )
        .unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    };

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let exit = child.0.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{rest:?}");
    let events = events.join().unwrap();
    assert!(events.contains("event: cluster"), "{events}");
    let logs = logs.join().unwrap();
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in logs that go to a pipe:\n{logs}"
    );
    let mut entries = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("a log line is not JSON ({err}): {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"].is_object(),
            "{line}"
        );
        entries += 1;
    }
    assert!(
        logs.contains("node started") && entries > 0,
        "no node start logged:\n{logs}"
    );
    assert!(
        rest.iter()
            .any(|l| l.contains("3 saved now, 0 saved before, 0 unsaved")),
        "{rest:?}"
    );

    // The state survived: the tour over the same data directory adds 5 to my-counter's 5.
    let reopened = goverse(&[
        "demo",
        "--tour",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert!(
        reopened.status.success(),
        "{}",
        String::from_utf8_lossy(&reopened.stderr)
    );
    assert!(
        stdout(&reopened).contains("Counter/my-counter Add(5) -> 10"),
        "{}",
        stdout(&reopened)
    );
}

#[test]
fn call_without_a_gate_fails_clearly() {
    let port = free_port();
    let gate = format!("127.0.0.1:{port}");
    let out = goverse(&["call", "--gate", &gate, "Counter", "c", "Get"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no gate reachable") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}
