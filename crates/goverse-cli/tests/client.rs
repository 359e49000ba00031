//! `goverse::client::Client` against gates run as processes (`goverse node` and two
//! `goverse gate` processes from one generated file, on a real etcd): a gate killed with
//! kill -9 under a connected client, a call in flight on it included; and a gate stopped with
//! SIGTERM under upstream's Python gRPC stack, whose push stream must end with a status its
//! client acts on.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use goverse::client::{Client, PushEvent, Pushes};
use goverse::prelude::ErrorCode;
use goverse::wkt::Int32Value;
use goverse_testkit::{EtcdServer, Process, ProcessCluster, python};

mod common;
use common::cluster_file;

const GOVERSE: &str = common::GOVERSE;

async fn next(pushes: &mut Pushes) -> PushEvent {
    tokio::time::timeout(Duration::from_secs(20), pushes.next())
        .await
        .expect("an event within 20 s")
        .expect("the stream goes on")
}

async fn add(client: &Client, id: &str, value: i32) -> Result<i32, goverse::CallError> {
    client
        .call::<_, Int32Value>("Counter", id, "Add", Int32Value { value })
        .await
        .map(|v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_survives_a_gate_killed_under_it_and_its_call_in_flight_fails_clearly() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file(dir.path(), &etcd, 1, 2);
    let mut cluster = ProcessCluster::new(GOVERSE, &config);
    cluster.start_node("node-1");
    let a = cluster.start_gate("gate-1");
    let b = cluster.start_gate("gate-2");

    let client = Client::builder([a.clone(), b.clone()])
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
        .call_timeout(Duration::from_secs(10))
        .build();
    // The cluster forms within a few seconds.
    let mut formed = false;
    for _ in 0..100 {
        if add(&client, "c1", 1).await.is_ok() {
            formed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(formed, "{}", cluster.tails(20));
    assert_eq!(client.gate().as_deref(), Some(a.as_str()));
    let mut pushes = client.register().await.unwrap();
    assert!(matches!(next(&mut pushes).await, PushEvent::Connected { gate, .. } if gate == a));

    // A call in flight when the gate dies: paused, the gate holds the call; killed, its socket
    // closes under it.
    cluster.gate("gate-1").signal("-STOP");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { add(&client, "c1", 100).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the paused gate holds the call");
    cluster.kill_gate("gate-1");
    let err = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the call fails soon after the kill")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(
        err.message().contains(&a) && err.message().contains("may or may not have run"),
        "{err}"
    );

    // Later calls go to the live gate; the push stream registers there.
    let value = add(&client, "c1", 1).await.unwrap();
    assert!(value == 2 || value == 102, "{value}");
    assert_eq!(client.gate().as_deref(), Some(b.as_str()));
    match next(&mut pushes).await {
        PushEvent::Disconnected { gate, error } => {
            assert_eq!(gate, a);
            assert_eq!(error.code(), ErrorCode::Unavailable, "{error}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(matches!(next(&mut pushes).await, PushEvent::Connected { gate, .. } if gate == b));

    // The killed gate restarts; a client made now, listing it first, uses it.
    let a_again = cluster.start_gate("gate-1");
    assert_eq!(a_again, a);
    let fresh = Client::connect([a.clone(), b.clone()]).await.unwrap();
    assert_eq!(add(&fresh, "c2", 5).await.unwrap(), 5);
    assert_eq!(fresh.gate().as_deref(), Some(a.as_str()));

    // Upstream's Python client over grpcio: when its gate stops, the push stream ends with
    // UNAVAILABLE, the error its client fires the disconnect callback on.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/register.py");
    let mut py = Process::start(python(), [script.to_str().unwrap(), "--gate", &a]);
    py.expect_within("registered ", Duration::from_secs(60));
    assert_eq!(
        cluster.stop_gate("gate-1", Duration::from_secs(20)),
        Some(0)
    );
    let line = py.expect_within("disconnected", Duration::from_secs(20));
    assert!(
        line.contains("UNAVAILABLE") && line.contains("shutting down"),
        "{line}"
    );
    assert_eq!(py.wait_exit(Duration::from_secs(10)), Some(0));

    drop(pushes);
    cluster.stop(Duration::from_secs(20));
}
