use std::sync::Arc;
use std::time::Duration;

use goverse::persistence::SqliteStore;
use goverse::prelude::*;
use goverse_sample_counter::{Counter, CounterRef};

async fn node_with(store: Arc<SqliteStore>) -> Node {
    Node::builder(NodeConfig {
        shard_count: 64,
        ..NodeConfig::default()
    })
    .register::<Counter>()
    .object_store(store)
    .start()
    .await
    .expect("node starts")
}

/// A node without persistence.
async fn memory_node() -> Node {
    Node::builder(NodeConfig {
        shard_count: 64,
        ..NodeConfig::default()
    })
    .register::<Counter>()
    .start()
    .await
    .expect("node starts")
}

#[tokio::test]
async fn add_returns_the_new_value_and_get_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(Arc::new(
        SqliteStore::open(dir.path().join("objects.db")).unwrap(),
    ))
    .await;
    let counter = CounterRef::new("my-counter");
    assert_eq!(
        counter
            .add(&node, Int32Value { value: 5 })
            .await
            .unwrap()
            .value,
        5
    );
    assert_eq!(
        counter
            .add(&node, Int32Value { value: -2 })
            .await
            .unwrap()
            .value,
        3
    );
    assert_eq!(counter.get(&node, Empty {}).await.unwrap().value, 3);
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn overflow_is_an_invalid_argument_and_leaves_the_value() {
    let node = memory_node().await;
    let counter = CounterRef::new("big");
    counter
        .add(&node, Int32Value { value: i32::MAX })
        .await
        .unwrap();
    let err = counter
        .add(&node, Int32Value { value: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.message().contains("overflows"), "{err}");
    assert_eq!(counter.get(&node, Empty {}).await.unwrap().value, i32::MAX);
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_value_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.db");
    let node = node_with(Arc::new(SqliteStore::open(&path).unwrap())).await;
    CounterRef::new("durable")
        .add(&node, Int32Value { value: 41 })
        .await
        .unwrap();
    let report = node.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.saved, report.unsaved), (1, 0));

    let node = node_with(Arc::new(SqliteStore::open(&path).unwrap())).await;
    let value = CounterRef::new("durable")
        .add(&node, Int32Value { value: 1 })
        .await
        .unwrap();
    assert_eq!(value.value, 42);
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn callable_by_name_with_upstream_any_payloads() {
    let node = memory_node().await;
    // What an upstream client sends: an Any with the type.googleapis.com/ prefix.
    let any = Payload::typed(Int32Value { value: 7 }).into_any();
    let response = node
        .call("Counter", "wire", "Add", Payload::Encoded(any))
        .await
        .unwrap();
    let any = response.into_any();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/google.protobuf.Int32Value"
    );
    assert_eq!(any.value, vec![0x08, 7]);
    node.shutdown(Duration::from_secs(5)).await;
}
