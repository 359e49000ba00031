//! Several nodes of one cluster in one process ([`TestCluster`]: the real node protocol over
//! in-memory pipes, the in-memory coordinator and a shared object store), on paused time: leadership, placement to ±1, hand-overs that keep
//! every object's state, and calls through any node that never fail while shards move.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use goverse::cluster::ClusterMap;
use goverse::prelude::*;
use goverse::{AutoLoad, AutoLoadScope, NodeAddr, ShardId, shard_of};
use goverse_testkit::{TestCluster, assert_eventually};

const SHARDS: u32 = 64;

/// A counter whose state is saved only when it is deactivated or handed over.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Tally {
    total: i64,
}

impl Object for Tally {
    json_state!();
}

#[goverse::object]
impl Tally {
    #[method]
    async fn add(&mut self, request: Int64Value) -> Result<Int64Value, ObjectError> {
        self.total += request.value;
        Ok(Int64Value { value: self.total })
    }

    #[method]
    async fn get(&self, _request: Empty) -> Result<Int64Value, ObjectError> {
        Ok(Int64Value { value: self.total })
    }
}

/// A cluster of Tally nodes over the real node protocol (in-memory pipes), on the in-memory
/// coordinator and object store, each node with a quorum of `min_quorum`.
async fn cluster(min_quorum: usize) -> TestCluster {
    TestCluster::builder()
        .shards(SHARDS)
        .configure(|c| c.min_quorum = min_quorum)
        .types(|node| node.register::<Tally>())
        .start(0)
        .await
}

/// Adds 1 to random tallies through random nodes of `via` until stopped, counting every
/// acknowledged add per tally and every failure.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<i64>, Vec<String>)>,
    calls: Arc<AtomicU64>,
}

impl Load {
    fn start(via: Vec<Node>, tallies: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), calls.clone());
        let task = tokio::spawn(async move {
            let mut acked = vec![0i64; tallies];
            let mut failures = Vec::new();
            let mut n: u64 = 0;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                // A cheap spread over tallies and nodes (deterministic, so reruns match).
                let i = (n.wrapping_mul(2_654_435_761) % tallies as u64) as usize;
                let node = &via[(n as usize / 7) % via.len()];
                match TallyRef::new(format!("tally-{i}").as_str())
                    .add(node, Int64Value { value: 1 })
                    .await
                {
                    Ok(_) => acked[i] += 1,
                    Err(err) => failures.push(format!("tally-{i} via {}: {err}", node.address())),
                }
                count.fetch_add(1, Ordering::Relaxed);
                // Lets paused time move on between calls.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (acked, failures)
        });
        Self { stop, task, calls }
    }

    async fn finish(self) -> (Vec<i64>, Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (acked, failures) = self.task.await.unwrap();
        (acked, failures, self.calls.load(Ordering::Relaxed))
    }
}

/// Each node serves its share to ±1, every shard has its target as owner, and the shard states
/// the nodes report agree with the map.
fn balanced(nodes: &[&Node]) -> bool {
    let map = nodes[0].cluster_map();
    let owned: Vec<u64> = nodes.iter().map(|n| n.stats().owned_shards).collect();
    let (min, max) = (owned.iter().min().unwrap(), owned.iter().max().unwrap());
    max - min <= 1
        && owned.iter().sum::<u64>() == u64::from(SHARDS)
        && map.unowned() == 0
        && map.moving() == 0
        && map.nodes.len() == nodes.len()
}

fn owner_of<'a>(map: &ClusterMap, nodes: &'a [&'a Node], id: &str) -> &'a Node {
    let shard = shard_of(&ObjectId::from(id), SHARDS).unwrap();
    let addr = map.owner(shard).expect("every shard has an owner");
    nodes.iter().find(|n| n.address() == addr).unwrap()
}

async fn total(node: &Node, id: &str) -> i64 {
    TallyRef::new(id).get(node, Empty {}).await.unwrap().value
}

#[tokio::test(start_paused = true)]
async fn joining_nodes_get_an_even_share_and_calls_never_fail_while_shards_move() {
    let mut cluster = cluster(1).await;
    let a = cluster.add_node().await.clone();
    assert!(a.is_ready());
    assert_eq!(a.stats().owned_shards, u64::from(SHARDS));
    assert_eventually!(
        a.cluster_map()
            .leader
            .is_some_and(|(l, _)| &l == a.address())
    );
    const TALLIES: usize = 120;
    let ids: Vec<String> = (0..TALLIES).map(|i| format!("tally-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        TallyRef::new(id.as_str())
            .add(
                &a,
                Int64Value {
                    value: 1000 * i as i64,
                },
            )
            .await
            .unwrap();
    }

    // Calls through the first node go on while two nodes join and the shards move.
    let load = Load::start(vec![a.clone()], TALLIES);
    let b = cluster.add_node().await.clone();
    let c = cluster.add_node().await.clone();
    // Nothing moves while the joins are within the stability window.
    assert_eq!(b.stats().owned_shards + c.stats().owned_shards, 0);
    assert_eventually!(balanced(&[&a, &b, &c]), Duration::from_secs(20));
    let (acked, failures, calls) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(calls > 500, "only {calls} calls");
    // The nodes reached each other over the node protocol (peer checks and links).
    assert!(cluster.network().connections_made() >= 6);

    // Every object holds exactly what was acknowledged, answers through any node, and is
    // active on its shard's owner only.
    let nodes = [&a, &b, &c];
    let map = a.cluster_map();
    let moved = ids
        .iter()
        .filter(|id| owner_of(&map, &nodes, id).address() != a.address())
        .count();
    assert!(moved > 40, "only {moved} of {TALLIES} objects moved");
    for (i, id) in ids.iter().enumerate() {
        let expected = 1000 * i as i64 + acked[i];
        for via in nodes {
            assert_eq!(total(via, id).await, expected, "{id} via {}", via.address());
        }
        let oid = ObjectId::from(id.as_str());
        let active: Vec<_> = nodes
            .iter()
            .filter(|n| n.is_active(&oid))
            .map(|n| n.address())
            .collect();
        assert_eq!(active, [owner_of(&map, &nodes, id).address()], "{id}");
    }
    // Each move raised its shard's epoch once.
    for n in 0..SHARDS {
        let record = map.record(ShardId(n)).unwrap();
        let expected = if record.current.as_ref() == Some(a.address()) {
            1
        } else {
            2
        };
        assert_eq!(record.epoch, expected, "shard {n}");
    }

    // The leader leaves under load: it resigns, another node leads, and the two left share
    // every shard, with nothing acknowledged lost.
    let load = Load::start(vec![b.clone(), c.clone()], TALLIES);
    let report = a.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.unsaved, 0);
    assert_eventually!(
        b.cluster_map()
            .leader
            .is_some_and(|(l, _)| &l == b.address() || &l == c.address()),
        Duration::from_secs(1)
    );
    assert_eventually!(balanced(&[&b, &c]), Duration::from_secs(20));
    let (more, failures, calls) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            total(&b, id).await,
            1000 * i as i64 + acked[i] + more[i],
            "{id}"
        );
    }
    b.shutdown(Duration::from_secs(5)).await;
    c.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_starting_cluster_waits_for_its_quorum_then_spreads_the_shards() {
    let mut cluster = cluster(3).await;
    let a = cluster.add_node().await.clone();
    assert!(!a.is_ready(), "one node of three is not ready");
    assert_eq!(
        a.stats().owned_shards,
        0,
        "no shard is given out before the quorum"
    );
    let b = cluster.add_node().await.clone();
    assert!(!b.is_ready());
    assert_eq!(a.stats().owned_shards + b.stats().owned_shards, 0);
    let c = cluster.add_node().await.clone();
    // With the quorum, each node takes its preferred shards at once; the leader then evens
    // them out to ±1 once the window has passed.
    assert_eventually!(a.is_ready() && b.is_ready() && c.is_ready());
    assert_eventually!(
        [&a, &b, &c].iter().all(|n| n.stats().owned_shards > 0) && a.cluster_map().unowned() == 0
    );
    assert_eventually!(balanced(&[&a, &b, &c]), Duration::from_secs(20));
    // Losing a node loses the quorum: the others report not ready, and still serve its shards.
    c.shutdown(Duration::from_secs(5)).await;
    assert_eventually!(!a.is_ready() && !b.is_ready());
    assert_eventually!(
        a.cluster_map().unowned() == 0
            && a.stats().owned_shards + b.stats().owned_shards == u64::from(SHARDS)
    );
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

/// A node cut off from the coordinator stops serving within its serving window, before its
/// lease can end and another node take its shards; once the connection is back it registers on
/// a new lease and serves again, with every saved state kept.
#[tokio::test(start_paused = true)]
async fn a_node_cut_off_from_the_coordinator_stops_serving_before_its_lease_ends_and_rejoins() {
    let mut cluster = cluster(1).await;
    let a = cluster.add_node().await.clone();
    let b = cluster.add_node().await.clone();
    assert_eventually!(balanced(&[&a, &b]), Duration::from_secs(20));
    let ids: Vec<String> = (0..40).map(|i| format!("tally-{i}")).collect();
    for id in &ids {
        TallyRef::new(id.as_str())
            .add(&b, Int64Value { value: 1 })
            .await
            .unwrap();
    }

    // Saved before the cut: a Tally keeps in memory what changed since its last save, and a
    // fenced node may not write any more.
    a.save_changed().await;
    b.save_changed().await;
    cluster.set_coordinator_reachable(0, false);
    let cut = tokio::time::Instant::now();
    // Fenced first (within the serving window of its last renewal, 2.7 s of a 3 s lease) ...
    assert_eventually!(!a.is_ready(), Duration::from_secs(3));
    let fenced_after = cut.elapsed();
    // A fenced node runs nothing, not even for an object of a shard it holds.
    let map = a.cluster_map();
    let held = (0..SHARDS)
        .find(|n| map.owner(ShardId(*n)) == Some(a.address()))
        .expect("a holds shards until its lease ends");
    let refused = a
        .call_with(
            "Tally",
            format!("shard#{held}/x"),
            "Get",
            Payload::typed(Empty {}),
            CallOptions {
                timeout: Some(Duration::from_millis(100)),
                ..CallOptions::default()
            },
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // ... and only then, once the lease has ended, the other node takes every shard over.
    assert_eventually!(
        b.stats().owned_shards == u64::from(SHARDS),
        Duration::from_secs(10)
    );
    let taken_after = cut.elapsed();
    assert!(
        fenced_after < taken_after,
        "fenced after {fenced_after:?}, shards taken over after {taken_after:?}"
    );
    for id in &ids {
        assert_eq!(total(&b, id).await, 1, "{id}");
    }

    cluster.set_coordinator_reachable(0, true);
    assert_eventually!(a.is_ready(), Duration::from_secs(10));
    assert_eventually!(balanced(&[&a, &b]), Duration::from_secs(30));
    for id in &ids {
        assert_eq!(total(&a, id).await, 1, "{id}");
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

const IDLE: Duration = Duration::from_secs(30);

fn auto_loaded() -> Vec<AutoLoad> {
    [
        ("global", AutoLoadScope::Singleton),
        ("monitor", AutoLoadScope::PerShard),
        ("local", AutoLoadScope::PerNode),
    ]
    .into_iter()
    .map(|(id, scope)| AutoLoad {
        type_name: "Tally".into(),
        id: id.into(),
        scope,
    })
    .collect()
}

/// The nodes on which `id` is active.
fn active_on<'a>(nodes: &[&'a Node], id: &str) -> Vec<&'a NodeAddr> {
    let id = ObjectId::from(id);
    nodes
        .iter()
        .filter(|n| n.is_active(&id))
        .map(|n| n.address())
        .collect()
}

/// Every auto-load object of `nodes` is active exactly once, on the node serving it.
fn auto_loaded_once(nodes: &[&Node]) -> Result<(), String> {
    let map = nodes[0].cluster_map();
    let mut wanted: Vec<(String, &NodeAddr)> = (0..SHARDS)
        .map(|n| {
            let owner = map
                .owner(ShardId(n))
                .ok_or(format!("shard {n} has no owner"))?;
            Ok((format!("shard#{n}/monitor"), owner))
        })
        .collect::<Result<_, String>>()?;
    let global = shard_of(&ObjectId::from("global"), SHARDS).unwrap();
    wanted.push(("global".into(), map.owner(global).unwrap()));
    for node in nodes {
        wanted.push((format!("{}/local", node.address()), node.address()));
    }
    for (id, owner) in wanted {
        let on = active_on(nodes, &id);
        if on != [owner] {
            return Err(format!("{id} is active on {on:?}, wanted on {owner}"));
        }
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn auto_load_objects_exist_once_move_with_their_shard_and_come_back_when_deleted() {
    let mut cluster = cluster(1).await;
    let auto_loading = |c: &mut NodeConfig| {
        c.auto_load = auto_loaded();
        c.idle_timeout = IDLE;
    };
    let a = cluster.add_node_with(auto_loading).await.clone();
    // Created once the cluster has been stable for its window (2 s), not before.
    assert!(active_on(&[&a], "global").is_empty());
    assert_eventually!(auto_loaded_once(&[&a]).is_ok(), Duration::from_secs(5));
    for n in 0..SHARDS {
        TallyRef::new(format!("shard#{n}/monitor").as_str())
            .add(&a, Int64Value { value: 5 })
            .await
            .unwrap();
    }
    let ordinary = ObjectId::from("tally-ordinary");
    TallyRef::new(ordinary.clone())
        .add(&a, Int64Value { value: 1 })
        .await
        .unwrap();

    // A second node joins: half the shards move, and their monitors with them, state and all,
    // leaving no copy behind.
    let b = cluster.add_node_with(auto_loading).await.clone();
    assert_eventually!(balanced(&[&a, &b]), Duration::from_secs(20));
    assert_eventually!(auto_loaded_once(&[&a, &b]).is_ok(), Duration::from_secs(5));
    if let Err(err) = auto_loaded_once(&[&a, &b]) {
        panic!("{err}");
    }
    assert!(b.stats().owned_shards > 0);
    for n in 0..SHARDS {
        assert_eq!(
            total(&b, &format!("shard#{n}/monitor")).await,
            5,
            "shard {n}"
        );
    }

    // Idle for longer than the idle timeout: the ordinary object goes, the auto-load ones stay
    // (none is closed and recreated).
    let activations = |nodes: &[&Node]| -> (u64, u64) {
        nodes.iter().fold((0, 0), |(a, d), n| {
            let stats = n.stats();
            (a + stats.activations, d + stats.deactivations)
        })
    };
    let before = activations(&[&a, &b]);
    tokio::time::sleep(IDLE * 2).await;
    assert!(active_on(&[&a, &b], ordinary.as_str()).is_empty());
    assert!(auto_loaded_once(&[&a, &b]).is_ok());
    assert_eq!(activations(&[&a, &b]), (before.0, before.1 + 1));

    // Deleted, one comes back, fresh, on its shard's owner.
    let deleted = "shard#3/monitor";
    a.delete_object("Tally", deleted).await.unwrap();
    assert_eventually!(
        active_on(&[&a, &b], deleted).len() == 1,
        Duration::from_secs(2)
    );
    assert_eq!(total(&a, deleted).await, 0);
    assert!(auto_loaded_once(&[&a, &b]).is_ok());

    // The first node leaves: everything it held comes back on the other.
    a.shutdown(Duration::from_secs(5)).await;
    assert_eventually!(balanced(&[&b]), Duration::from_secs(20));
    assert_eventually!(
        (0..SHARDS).all(|n| b.is_active(&ObjectId::from(format!("shard#{n}/monitor").as_str()))),
        Duration::from_secs(5)
    );
    assert_eq!(total(&b, "shard#5/monitor").await, 5);
    b.shutdown(Duration::from_secs(5)).await;
}
