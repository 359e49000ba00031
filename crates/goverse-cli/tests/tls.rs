//! A cluster over TLS as an operator starts it: `goverse config gen --tls` (a development CA and
//! a certificate per node and gate), `goverse node` and `goverse gate` processes on a real etcd.
//! Then what an attacker or a mistake would try: plaintext clients of the TLS ports, a client
//! trusting another CA, a node whose certificate another CA signed, an expired certificate
//! loaded by SIGHUP; and what an operator does: renewing a certificate with SIGHUP while
//! clients stay connected. etcd is reached over TLS with a client certificate as well.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use goverse::client::{ALPN_H2, Client, ClientFiles, ClientTls};
use goverse::config::ClusterFile;
use goverse::prelude::ErrorCode;
use goverse::tls::dev::{DevCa, Subject};
use goverse::wkt::Int32Value;
use goverse_testkit::{EtcdServer, EtcdTls, Process, free_ports_in_a_row, python};

/// The `goverse` binary.
const GOVERSE: &str = env!("CARGO_BIN_EXE_goverse");

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// `goverse ARGS` with its logs (standard error) read as output too.
fn goverse(args: &str) -> Process {
    Process::start("sh", ["-c", &format!("exec {GOVERSE} {args} 2>&1")])
}

fn client_tls(ca: &Path) -> Arc<ClientTls> {
    ClientTls::load(
        "test client",
        ClientFiles {
            ca: Some(ca.to_owned()),
            ..ClientFiles::default()
        },
        ALPN_H2,
    )
    .unwrap()
}

fn client(gate: &str, tls: Option<Arc<ClientTls>>) -> Client {
    let mut builder = Client::builder([gate.to_owned()])
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .reconnect_for(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    builder.build()
}

async fn add(client: &Client, id: &str, value: i32) -> Result<i32, goverse::CallError> {
    client
        .call::<_, Int32Value>("Counter", id, "Add", Int32Value { value })
        .await
        .map(|v| v.value)
}

/// Waits for a line of `process` containing every one of `texts`; returns it.
fn expect_line(process: &mut Process, texts: &[&str]) -> String {
    loop {
        let line = process.expect_within(texts[0], Duration::from_secs(20));
        if texts.iter().all(|t| line.contains(t)) {
            return line;
        }
    }
}

/// Issues `{dir}/{name}.pem` and its key from `ca`: `subject`, or one for 127.0.0.1 naming
/// `member` (none when empty).
fn issue(ca: &DevCa, name: &str, member: &str, dir: &Path, subject: Option<Subject>) {
    let subject = subject.unwrap_or_else(|| {
        let subject = Subject::new(name, vec!["127.0.0.1".into(), "localhost".into()], YEAR);
        if member.is_empty() {
            subject
        } else {
            subject.member(member)
        }
    });
    ca.issue(&subject).unwrap().write(dir, name).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_its_clients_and_refuses_plaintext_strangers_and_bad_certificates() {
    // etcd, too, over TLS with client certificates, from a CA of its own.
    let etcd_pki = tempfile::tempdir().unwrap();
    let etcd_ca = DevCa::generate("etcd CA").unwrap();
    etcd_ca.write(etcd_pki.path()).unwrap();
    issue(&etcd_ca, "etcd", "", etcd_pki.path(), None);
    issue(&etcd_ca, "etcd-client", "", etcd_pki.path(), None);
    let etcd = EtcdServer::start_tls(EtcdTls {
        cert: etcd_pki.path().join("etcd.pem"),
        key: etcd_pki.path().join("etcd-key.pem"),
        client_ca: etcd_pki.path().join("ca.pem"),
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.yaml");
    let base = free_ports_in_a_row(16);
    let port = |n: u16| (base + n).to_string();
    let out = std::process::Command::new(GOVERSE)
        .args(["config", "gen", "--tls", "--shards", "16", "--nodes", "3"])
        .args(["--etcd", &etcd.endpoint()])
        .args(["--sqlite", dir.path().join("objects.db").to_str().unwrap()])
        .args(["--node-port", &port(0), "--ops-port", &port(4)])
        .args(["--gate-port", &port(8), "--http-port", &port(11)])
        .args(["--inspector-port", &port(14)])
        .arg("-o")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls_dir = dir.path().join("tls");
    for file in [
        "ca.pem",
        "ca-key.pem",
        "node-1.pem",
        "node-3-key.pem",
        "gate-1.pem",
    ] {
        assert!(
            tls_dir.join(file).exists(),
            "config gen --tls wrote no {file}"
        );
    }
    let mut file = ClusterFile::load(&config).unwrap();
    assert!(file.tls.is_some());
    file.cluster.lease_ttl = Some(Duration::from_secs(2));
    file.cluster.cluster_state_stability_duration = Some(Duration::from_secs(1));
    file.cluster.etcd.ca_file = Some(etcd_pki.path().join("ca.pem"));
    file.cluster.etcd.cert_file = Some(etcd_pki.path().join("etcd-client.pem"));
    file.cluster.etcd.key_file = Some(etcd_pki.path().join("etcd-client-key.pem"));
    std::fs::write(&config, file.to_yaml()).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let ca_pem = tls_dir.join("ca.pem");
    let cluster_ca = DevCa::load(&ca_pem, &tls_dir.join("ca-key.pem")).unwrap();

    // node-3's certificate comes from another CA (a mistake, or an intruder with the file).
    let rogue = DevCa::generate("rogue CA").unwrap();
    issue(&rogue, "node-3", "node/node-3", &tls_dir, None);
    std::fs::write(dir.path().join("rogue-ca.pem"), rogue.cert_pem()).unwrap();

    let node_args = |id: &str| format!("node --config {config} --node-id {id}");
    let mut node1 = goverse(&node_args("node-1"));
    node1.expect_within("serving on", Duration::from_secs(20));
    let mut node2 = goverse(&node_args("node-2"));
    node2.expect_within("serving on", Duration::from_secs(20));
    let mut gate = goverse(&format!("gate --config {config} --gate-id gate-1"));
    gate.expect_within("gRPC", Duration::from_secs(20));
    let (grpc, http) = (
        format!("127.0.0.1:{}", port(8)),
        format!("127.0.0.1:{}", port(11)),
    );

    // A client trusting the cluster's CA: calls go through once the cluster has formed.
    let trusted = client(&grpc, Some(client_tls(&ca_pem)));
    let mut value = None;
    for _ in 0..150 {
        if let Ok(v) = add(&trusted, "tls-counter", 1).await {
            value = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(value, Some(1), "the cluster over TLS never answered");

    // A plaintext client of the TLS port is told why, and the gate logs it.
    let err = add(&client(&grpc, None), "tls-counter", 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthenticated, "{err}");
    assert!(err.message().contains("accepts only TLS"), "{err}");
    expect_line(&mut gate, &["refused a plaintext connection"]);

    // A client that trusts another CA refuses the gate, saying why; the gate logs the refusal.
    let stranger = client(&grpc, Some(client_tls(&dir.path().join("rogue-ca.pem"))));
    let err = add(&stranger, "tls-counter", 1).await.unwrap_err();
    assert!(
        err.message().contains("not signed by a trusted CA"),
        "{err}"
    );
    expect_line(
        &mut gate,
        &["TLS handshake failed", "does not trust our CA"],
    );

    // Upstream's Python stack with TLS credentials; and as a plaintext client of both ports.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/tls.py");
    let mut py = Process::start(
        python(),
        [
            script.to_str().unwrap(),
            "--gate",
            &grpc,
            "--http",
            &http,
            "--ca",
            ca_pem.to_str().unwrap(),
            "--id",
            "tls-counter",
        ],
    );
    assert_eq!(
        py.expect_within("tls-call", Duration::from_secs(60)),
        "tls-call 6"
    );
    let line = py.expect("plaintext-call");
    assert!(
        line.contains("UNAUTHENTICATED") && line.contains("accepts only TLS"),
        "{line}"
    );
    assert_eq!(py.expect("https-ready"), "https-ready 200");
    let line = py.expect("http-plaintext");
    assert!(
        line.starts_with("http-plaintext 400 this port accepts only TLS"),
        "{line}"
    );

    // node-3, with the rogue certificate: its peers refuse it and name it in their logs; it
    // gets no shards, so every object stays reachable.
    let mut node3 = goverse(&node_args("node-3"));
    node3.expect_within("serving on", Duration::from_secs(20));
    expect_line(
        &mut node1,
        &["refused the", "node-3", "not signed by a trusted CA"],
    );
    expect_line(&mut node3, &["does not trust our CA"]);
    for i in 0..32 {
        let id = format!("spread-{i}");
        let mut answered = false;
        for _ in 0..50 {
            if add(&trusted, &id, 1).await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(answered, "{id} unreachable with the rogue node up");
    }
    drop(node3);

    // An expired certificate loaded by SIGHUP: the gate names it in its log, new clients
    // refuse it naming the expiry, and the client already connected keeps calling.
    let mut expired = Subject::new("gate-1", vec!["127.0.0.1".into(), "localhost".into()], YEAR)
        .member("gate/gate-1");
    expired.not_before = std::time::SystemTime::now() - 2 * YEAR;
    expired.not_after = std::time::SystemTime::now() - Duration::from_secs(3600);
    issue(&cluster_ca, "gate-1", "", &tls_dir, Some(expired));
    gate.signal("-HUP");
    expect_line(&mut gate, &["EXPIRED", "gate-1"]);
    expect_line(&mut gate, &["reloaded"]);
    let err = add(&client(&grpc, Some(client_tls(&ca_pem))), "tls-counter", 1)
        .await
        .unwrap_err();
    assert!(err.message().contains("expired at"), "{err}");
    assert_eq!(add(&trusted, "tls-counter", 1).await.unwrap(), 7);

    // Renewed: new clients are served again, with no restart.
    issue(&cluster_ca, "gate-1", "gate/gate-1", &tls_dir, None);
    gate.signal("-HUP");
    expect_line(&mut gate, &["reloaded"]);
    let renewed = client(&grpc, Some(client_tls(&ca_pem)));
    assert_eq!(add(&renewed, "tls-counter", 1).await.unwrap(), 8);
}
