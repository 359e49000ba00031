//! Nodes coordinating through a real etcd, started by the test (one test also persists to a real
//! PostgreSQL). Real time throughout: etcd's leases and answers run on its clock, not on tokio's.

use std::sync::Arc;
use std::time::Duration;

use goverse::ShardId;
use goverse::cluster::{ClusterStore, EtcdClusterStore, EtcdConfig, Keys, ShardRecord};
use goverse::prelude::*;
use goverse_testkit::{EtcdServer, TestCluster};

fn config(address: &str) -> NodeConfig {
    NodeConfig {
        address: address.to_owned(),
        shard_count: 64,
        lease_ttl: Duration::from_secs(3),
        ..NodeConfig::default()
    }
}

async fn connect(etcd: &EtcdServer) -> EtcdClusterStore {
    EtcdClusterStore::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        ..EtcdConfig::default()
    })
    .await
    .unwrap()
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
    let store = connect(&etcd).await;
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

    // The idle node leaves first; then the owner, with nobody left to take its shards.
    second.shutdown(Duration::from_secs(5)).await;
    first.shutdown(Duration::from_secs(5)).await;
    assert!(
        records(&store)
            .await
            .iter()
            .all(|r| r.current.is_none() && r.epoch == 1)
    );

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
    let store = connect(&etcd).await;
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
    // Claim passes the watches start may still be finishing: wait until the owners settle,
    // checking all along that no shard is ever served twice.
    let settled = || async {
        let owned: u64 = started.iter().map(|n| n.stats().owned_shards).sum();
        assert!(owned <= 512, "a shard is served twice: {owned} owned");
        let recorded = records(&store).await;
        owned == 512
            && recorded.len() == 512
            && started.iter().all(|node| {
                let in_etcd = recorded
                    .iter()
                    .filter(|r| r.current.as_ref() == Some(node.address()))
                    .count() as u64;
                in_etcd == node.stats().owned_shards
            })
    };
    goverse_testkit::assert_eventually!(settled().await);
    for node in started {
        node.shutdown(Duration::from_secs(5)).await;
    }
}

/// Two nodes on one etcd; the first serves every shard.
async fn pair(etcd: &EtcdServer) -> (EtcdClusterStore, Node, Node) {
    let store = connect(etcd).await;
    let cluster: Arc<dyn ClusterStore> = Arc::new(store.clone());
    let first = Node::builder(config("127.0.0.1:47021"))
        .cluster_store(cluster.clone())
        .start()
        .await
        .unwrap();
    let second = Node::builder(config("127.0.0.1:47022"))
        .cluster_store(cluster)
        .start()
        .await
        .unwrap();
    assert_eq!(
        (first.stats().owned_shards, second.stats().owned_shards),
        (64, 0)
    );
    (store, first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_s_shards_are_taken_by_the_others() {
    let etcd = EtcdServer::start();
    let (store, first, second) = pair(&etcd).await;
    first.shutdown(Duration::from_secs(5)).await;
    goverse_testkit::assert_eventually!(second.stats().owned_shards == 64);
    let recorded = records(&store).await;
    assert!(
        recorded
            .iter()
            .all(|r| r.current.as_ref() == Some(second.address()) && r.epoch == 2),
        "{:?}",
        recorded[0]
    );
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_is_lost_stops_serving_and_its_shards_are_claimed_again() {
    let etcd = EtcdServer::start();
    let (store, first, second) = pair(&etcd).await;
    // The first node's lease is revoked (as an operator would). Unlike a lease that expires
    // after renewals failed, which the node outlives by fencing itself at half the TTL, a
    // revocation takes effect at once: the first node may serve until its next renewal finds
    // the lease gone, and its writes are refused by the epochs the second node's claims raise.
    let registration = store
        .get(&Keys::default().node(first.address()))
        .await
        .unwrap()
        .unwrap();
    store
        .revoke_lease(registration.lease.unwrap())
        .await
        .unwrap();

    // Every shard is claimed again under a new epoch, each by exactly one node: normally the
    // second (it sees the registration vanish at once); the first fences itself when its next
    // renewal finds the lease gone, rejoins, and claims only what is still free.
    let key = Keys::default().node(first.address());
    let settled = || async {
        let recorded = records(&store).await;
        let owned = |node: &Node| {
            recorded
                .iter()
                .filter(|r| r.current.as_ref() == Some(node.address()))
                .count() as u64
        };
        // (Until the first node's next renewal both may serve: see the note above.)
        let (a, b) = (first.stats().owned_shards, second.stats().owned_shards);
        a + b == 64
            && owned(&first) == a
            && owned(&second) == b
            && recorded.iter().all(|r| r.epoch == 2)
            && store.get(&key).await.unwrap().is_some()
    };
    goverse_testkit::assert_eventually!(settled().await, Duration::from_secs(15));
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_balances_the_shards_and_a_lost_leader_is_replaced() {
    let etcd = EtcdServer::start();
    let store = connect(&etcd).await;
    // The nodes reach each other over the in-memory network: placement gives shards only to
    // nodes their peers reach.
    let mut cluster = TestCluster::builder()
        .etcd(etcd.endpoint())
        .configure(|config| config.stability_window = Duration::from_millis(500))
        .start(3)
        .await;
    // ±1 of 64 over three nodes, every record's owner its target, as etcd holds them.
    let balanced = |nodes: Vec<&Node>| {
        let store = store.clone();
        let owned: Vec<u64> = nodes.iter().map(|n| n.stats().owned_shards).collect();
        async move {
            let recorded = records(&store).await;
            owned.iter().sum::<u64>() == 64
                && owned.iter().max().unwrap() - owned.iter().min().unwrap() <= 1
                && recorded.len() == 64
                && recorded
                    .iter()
                    .all(|r| r.current.is_some() && r.current == r.target)
        }
    };
    goverse_testkit::assert_eventually!(balanced(cluster.nodes()).await, Duration::from_secs(20));
    let leader_key = Keys::default().leader();
    let leader = store.get(&leader_key).await.unwrap().expect("a leader");
    let leader_addr = String::from_utf8(leader.value.clone()).unwrap();
    assert!(
        cluster
            .nodes()
            .iter()
            .any(|n| n.address().as_str() == leader_addr)
    );

    // The leader's lease ends (as when its process dies): its key goes with it, and another
    // node leads at once.
    store.revoke_lease(leader.lease.unwrap()).await.unwrap();
    goverse_testkit::assert_eventually!(
        store
            .get(&leader_key)
            .await
            .unwrap()
            .is_some_and(|kv| kv.create_revision > leader.create_revision),
        Duration::from_secs(5)
    );
    // The old leader rejoins; the cluster settles balanced again.
    goverse_testkit::assert_eventually!(balanced(cluster.nodes()).await, Duration::from_secs(20));

    // A leader that shuts down resigns: the key is taken over without waiting for its lease.
    let leader = store.get(&leader_key).await.unwrap().unwrap();
    let at = cluster
        .nodes()
        .iter()
        .position(|n| n.address().as_str().as_bytes() == leader.value.as_slice())
        .unwrap();
    cluster.stop_node(at, Duration::from_secs(5)).await;
    goverse_testkit::assert_eventually!(
        store
            .get(&leader_key)
            .await
            .unwrap()
            .is_some_and(|kv| kv.value != leader.value),
        Duration::from_secs(2)
    );
    goverse_testkit::assert_eventually!(balanced(cluster.nodes()).await, Duration::from_secs(20));
    cluster.shutdown().await;
}

/// Answers with its ID, or bounces a call to another echo (which calls back).
#[derive(Debug, Default)]
struct Echo;

impl Object for Echo {}

#[goverse::object]
impl Echo {
    #[method]
    async fn hello(&self, _request: Empty) -> Result<StringValue, ObjectError> {
        Ok(StringValue {
            value: "hello".to_owned(),
        })
    }

    /// Calls `request.value`'s `bounce` with this object's ID, which calls this one back on
    /// the same chain while this turn waits: a cycle, whichever nodes the two live on.
    #[method]
    async fn bounce(
        &mut self,
        ctx: &ObjectContext,
        request: StringValue,
    ) -> Result<StringValue, ObjectError> {
        if request.value.is_empty() {
            return Ok(StringValue {
                value: ctx.id().to_string(),
            });
        }
        let back = StringValue {
            value: ctx.id().to_string(),
        };
        Ok(EchoRef::new(request.value.as_str())
            .bounce(ctx, back)
            .await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_owning_node_over_the_network_and_cycles_across_nodes_fail_at_once() {
    let etcd = EtcdServer::start();
    let cluster = TestCluster::builder()
        .etcd(etcd.endpoint())
        .tcp()
        .types(|node| node.register::<Echo>())
        .configure(|config| config.stability_window = Duration::from_millis(300))
        .start(3)
        .await;
    let nodes: Vec<Node> = cluster.nodes().into_iter().cloned().collect();
    goverse_testkit::assert_eventually!(
        nodes.iter().all(|n| n.stats().owned_shards >= 21) && nodes[0].cluster_map().moving() == 0,
        Duration::from_secs(20)
    );

    // Every object answers through every node; it is active on its shard's owner only.
    let map = nodes[0].cluster_map();
    let owner = |id: &str| {
        let shard = goverse::shard_of(&ObjectId::from(id), 64).unwrap();
        map.owner(shard).unwrap().clone()
    };
    for i in 0..30 {
        let id = format!("echo-{i}");
        for via in &nodes {
            let reply = EchoRef::new(id.as_str())
                .hello(via, Empty {})
                .await
                .unwrap();
            assert_eq!(reply.value, "hello");
        }
        let active: Vec<_> = nodes
            .iter()
            .filter(|n| n.is_active(&ObjectId::from(id.as_str())))
            .map(|n| n.address().clone())
            .collect();
        assert_eq!(active, [owner(&id)], "{id}");
    }

    // A→B→A with A and B on different nodes: the chain travels with each call, so the call
    // back into A fails at once with Reentrancy instead of waiting for its deadline.
    let a = "echo-0".to_owned();
    let b = (1..)
        .map(|i| format!("echo-{i}"))
        .find(|b| owner(b) != owner(&a))
        .unwrap();
    let started = std::time::Instant::now();
    let err = EchoRef::new(a.as_str())
        .bounce(&nodes[0], StringValue { value: b.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Reentrancy, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A node-pinned ID runs on its node, whichever node it is called through.
    let pinned = format!("{}/pinned", nodes[2].address());
    let reply = EchoRef::new(pinned.as_str())
        .bounce(&nodes[0], StringValue::default())
        .await
        .unwrap();
    assert_eq!(reply.value, pinned);
    assert!(nodes[2].is_active(&ObjectId::from(pinned.as_str())));
    assert!(!nodes[0].is_active(&ObjectId::from(pinned.as_str())));
    // A pinned node that is not a member is refused at once.
    let err = EchoRef::new("127.0.0.1:1/nobody")
        .hello(&nodes[0], Empty {})
        .await
        .unwrap_err();
    assert!(err.message().contains("not a member"), "{err}");
    cluster.shutdown().await;
}

/// A write-through counter: every acknowledged add is committed first.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Tally {
    total: i64,
}

impl Object for Tally {
    json_state!();
    const DURABILITY: Durability = Durability::WriteThrough;
}

#[goverse::object]
impl Tally {
    #[method]
    async fn add(&mut self, request: Int64Value) -> Result<Int64Value, ObjectError> {
        self.total += request.value;
        Ok(Int64Value { value: self.total })
    }
}

/// The whole real stack in one process: three nodes on a real etcd, linked over loopback TCP,
/// persisting to a real PostgreSQL. Objects on every node take writes; a node leaves and its
/// objects go on elsewhere from what PostgreSQL holds; a node joins and takes its share; no
/// acknowledged add is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_etcd_and_postgres_keeps_every_acknowledged_write_through_leave_and_join() {
    use goverse::persistence::{ObjectStore, PostgresConfig, PostgresStore};
    let etcd = EtcdServer::start();
    let postgres = goverse_testkit::PostgresServer::start();
    postgres.create_database("cluster");
    let store = PostgresStore::connect(&PostgresConfig::new(postgres.url("cluster")))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let mut cluster = TestCluster::builder()
        .etcd(etcd.endpoint())
        .tcp()
        .object_store(store.clone())
        .types(|node| node.register::<Tally>())
        .configure(|config| config.stability_window = Duration::from_millis(300))
        .start(3)
        .await;
    let settled = |cluster: &TestCluster, nodes: u64| {
        let owned: Vec<u64> = cluster
            .nodes()
            .iter()
            .map(|n| n.stats().owned_shards)
            .collect();
        owned.iter().sum::<u64>() == 64
            && owned.iter().all(|&o| o >= 64 / nodes - 1)
            && cluster.node(0).cluster_map().moving() == 0
    };
    goverse_testkit::assert_eventually!(settled(&cluster, 3), Duration::from_secs(20));

    let ids: Vec<String> = (0..30).map(|i| format!("tally-{i}")).collect();
    let mut expected = vec![0i64; ids.len()];
    let add_all = |via: Node, expected: &mut Vec<i64>| {
        let ids = ids.clone();
        let mut want = expected.clone();
        for w in &mut want {
            *w += 1;
        }
        *expected = want.clone();
        async move {
            for (id, want) in ids.iter().zip(want) {
                let got = TallyRef::new(id.as_str())
                    .add(&via, Int64Value { value: 1 })
                    .await
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(got.value, want, "{id}");
            }
        }
    };
    add_all(cluster.node(0).clone(), &mut expected).await;
    let owners: std::collections::BTreeSet<_> = ids
        .iter()
        .map(|id| {
            let shard = goverse::shard_of(&ObjectId::from(id.as_str()), 64).unwrap();
            cluster.node(0).cluster_map().owner(shard).unwrap().clone()
        })
        .collect();
    assert_eq!(owners.len(), 3, "the objects live on every node");

    // A node leaves: its objects are saved, its shards taken, and the adds go on from there.
    let report = cluster.stop_node(2, Duration::from_secs(5)).await;
    assert_eq!(report.unsaved, 0);
    goverse_testkit::assert_eventually!(settled(&cluster, 2), Duration::from_secs(20));
    add_all(cluster.node(1).clone(), &mut expected).await;

    // A node joins and takes its share; the adds go on again.
    cluster.add_node().await;
    goverse_testkit::assert_eventually!(settled(&cluster, 3), Duration::from_secs(20));
    add_all(cluster.node(2).clone(), &mut expected).await;

    // What PostgreSQL holds after everything is saved: each add exactly once.
    cluster.shutdown().await;
    for (id, want) in ids.iter().zip(&expected) {
        let stored = store
            .load(&ObjectId::from(id.as_str()))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} was never stored"));
        let total = serde_json::from_slice::<serde_json::Value>(&stored.data).unwrap()["total"]
            .as_i64()
            .unwrap();
        assert_eq!(total, *want, "{id}");
    }
}
