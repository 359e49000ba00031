//! Nodes coordinating through a real etcd, started by the test.

use std::sync::Arc;
use std::time::Duration;

use goverse::ShardId;
use goverse::cluster::{ClusterStore, EtcdClusterStore, EtcdConfig, Keys, ShardRecord};
use goverse::prelude::*;
use goverse_testkit::EtcdServer;

fn config(address: &str) -> NodeConfig {
    NodeConfig {
        address: address.to_owned(),
        shard_count: 64,
        lease_ttl: Duration::from_secs(3),
        ..NodeConfig::default()
    }
}

async fn records(store: &EtcdClusterStore) -> Vec<ShardRecord> {
    let keys = Keys::default();
    let (kvs, _) = store.get_prefix(&keys.shards()).await.unwrap();
    kvs.iter()
        .map(|kv| {
            let shard = keys.shard_of_key(&kv.key).unwrap();
            ShardRecord::decode(shard, &kv.value).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claims_its_shards_in_etcd_and_gives_them_back_at_shutdown() {
    let etcd = EtcdServer::start();
    let store = EtcdClusterStore::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    let cluster: Arc<dyn ClusterStore> = Arc::new(store.clone());

    let first = Node::builder(config("127.0.0.1:47001"))
        .cluster_store(cluster.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(first.stats().owned_shards, 64);
    let recorded = records(&store).await;
    assert_eq!(recorded.len(), 64, "written in batched transactions");
    assert!(
        recorded
            .iter()
            .all(|r| r.current.as_ref() == Some(first.address()) && r.epoch == 1)
    );

    // A second node finds every shard served by a live node, and takes none.
    let second = Node::builder(config("127.0.0.1:47002"))
        .cluster_store(cluster.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(second.stats().owned_shards, 0);
    // The same address twice is refused while the first is registered.
    let err = Node::builder(config("127.0.0.1:47001"))
        .cluster_store(cluster.clone())
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");

    first.shutdown(Duration::from_secs(5)).await;
    assert!(
        records(&store)
            .await
            .iter()
            .all(|r| r.current.is_none() && r.epoch == 1)
    );
    second.shutdown(Duration::from_secs(5)).await;

    // Back again: every claim raises the epoch.
    let again = Node::builder(config("127.0.0.1:47001"))
        .cluster_store(cluster)
        .start()
        .await
        .unwrap();
    assert_eq!(again.stats().owned_shards, 64);
    let recorded = records(&store).await;
    assert!(recorded.iter().all(|r| r.epoch == 2), "{:?}", recorded[0]);
    assert_eq!(
        recorded
            .iter()
            .find(|r| r.shard == ShardId(63))
            .unwrap()
            .current
            .as_ref(),
        Some(again.address())
    );
    again.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_never_claim_the_same_shard() {
    let etcd = EtcdServer::start();
    let store = EtcdClusterStore::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    let cluster: Arc<dyn ClusterStore> = Arc::new(store.clone());
    let start = |address: &'static str| {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            Node::builder(NodeConfig {
                shard_count: 512,
                ..config(address)
            })
            .cluster_store(cluster)
            .start()
            .await
            .unwrap()
        })
    };
    let nodes = [
        start("127.0.0.1:47011"),
        start("127.0.0.1:47012"),
        start("127.0.0.1:47013"),
    ];
    let mut started = Vec::new();
    for node in nodes {
        started.push(node.await.unwrap());
    }
    let owned: u64 = started.iter().map(|n| n.stats().owned_shards).sum();
    assert_eq!(owned, 512, "every shard owned exactly once");
    let recorded = records(&store).await;
    assert_eq!(recorded.len(), 512);
    for node in &started {
        let in_etcd = recorded
            .iter()
            .filter(|r| r.current.as_ref() == Some(node.address()))
            .count() as u64;
        assert_eq!(in_etcd, node.stats().owned_shards, "{}", node.address());
    }
    for node in started {
        node.shutdown(Duration::from_secs(5)).await;
    }
}
