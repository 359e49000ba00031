//! The cache on a cluster of three nodes linked over loopback TCP with two gates serving gRPC:
//! values set through one gate are read through the other, TTLs expire on time (±1 s), also
//! after the entry's shard moved to another node, the per-node stats add up, and the `cache`
//! terminal client does what its help says.
//!
//! Real time throughout (TTLs are wall-clock times).

use std::time::{Duration, Instant};

use goverse::client::Client;
use goverse::gate::GateConfig;
use goverse::prelude::*;
use goverse_sample_cache::client::CacheClient;
use goverse_sample_cache::{access_rules, entry_id};
use goverse_testkit::{TestCluster, assert_eventually};

async fn listed_managers(cache: &CacheClient) -> usize {
    cache.managers().await.map_or(0, |m| m.len())
}

/// Polls `key` through `cache` until it misses; how long after `since` that was.
async fn expires_after(cache: &CacheClient, key: &str, since: Instant) -> Duration {
    loop {
        if cache.get(key).await.unwrap().is_none() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{key} never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the `cache` binary against `gate`; exit code, standard output, standard error.
async fn cache_cli(gate: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cache"));
    command.args(["--gate", gate]).args(args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_two_gates_ttls_on_time_across_a_shard_move_and_stats_add_up() {
    let mut cluster = TestCluster::builder()
        .tcp()
        .types(goverse_sample_cache::register)
        .start(3)
        .await;
    let gate_config = || GateConfig {
        access_rules: access_rules(),
        ..GateConfig::default()
    };
    let (_, gate_a) = cluster.add_served_gate(gate_config()).await;
    let (_, gate_b) = cluster.add_served_gate(gate_config()).await;
    let a = CacheClient::new(Client::builder([gate_a.to_string()]).build());
    let b = CacheClient::new(Client::builder([gate_b.to_string()]).build());
    // Every node's manager enters the directory once the cluster is stable.
    assert_eventually!(listed_managers(&a).await == 3, Duration::from_secs(30));
    let managers = a.managers().await.unwrap();
    assert!(
        managers.iter().all(|m| m.ends_with("/CacheManager")),
        "{managers:?}"
    );

    // Set through one gate, read through the other.
    let (mut hits, mut misses) = (0, 0);
    for i in 0..30 {
        a.set(&format!("user:{i}"), &format!("name-{i}"), 0)
            .await
            .unwrap();
    }
    for i in 0..30 {
        assert_eq!(
            b.get(&format!("user:{i}")).await.unwrap().as_deref(),
            Some(format!("name-{i}").as_str())
        );
        hits += 1;
    }
    for i in 0..7 {
        assert_eq!(b.get(&format!("nobody:{i}")).await.unwrap(), None);
        misses += 1;
    }
    assert!(b.delete("user:0").await.unwrap());
    assert!(!b.delete("user:0").await.unwrap());
    assert_eq!(a.get("user:0").await.unwrap(), None);
    misses += 1;
    // Bad input is refused with the reason.
    let err = a.set("", "v", 0).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.message().contains("key cannot be empty"), "{err}");
    let err = a.set("k", "v", -3).await.unwrap_err();
    assert!(err.message().contains("ttl_seconds is -3"), "{err}");
    // Clients reach the managers, not the entries.
    let err = TestEntry::get(&a, "user:1").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied, "{err}");

    // The stats add up: every node's manager, and the total.
    let stats = b.stats().await.unwrap();
    assert_eq!(stats.nodes.len(), 3, "{stats:?}");
    assert!(stats.unreachable.is_empty(), "{stats:?}");
    let total = stats.total.unwrap();
    assert_eq!((total.hit_count, total.miss_count), (hits, misses));
    assert_eq!(total.total_entries, 30);
    assert_eq!(
        stats.nodes.iter().map(|n| n.hit_count).sum::<i64>(),
        hits,
        "{:?}",
        stats.nodes
    );

    // A TTL expires on time.
    let set_at = Instant::now();
    a.set("temp", "soon gone", 2).await.unwrap();
    assert_eq!(b.get("temp").await.unwrap().as_deref(), Some("soon gone"));
    let after = expires_after(&b, "temp", set_at).await;
    assert!(
        after >= Duration::from_secs(1) && after <= Duration::from_secs(3),
        "expired after {after:?}"
    );

    // An entry whose shard moves keeps its value and its expiry: its node stops (handing its
    // shards over), another serves it, and it still expires on time.
    let map = cluster.node(0).cluster_map();
    let victim = cluster.node(1).address().clone();
    let key = (0..1000)
        .map(|i| format!("moving:{i}"))
        .find(|k| {
            let shard = goverse::shard_of(&ObjectId::from(entry_id(k).as_str()), 64).unwrap();
            map.owner(shard) == Some(&victim)
        })
        .expect("node 1 owns some shard");
    let set_at = Instant::now();
    a.set(&key, "travels", 5).await.unwrap();
    assert_eq!(a.get(&key).await.unwrap().as_deref(), Some("travels"));
    let id = ObjectId::from(entry_id(&key).as_str());
    assert!(cluster.node(1).serves(&id));
    cluster.stop_node(1, Duration::from_secs(10)).await;
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some("travels"));
    assert!(cluster.nodes().iter().any(|n| n.serves(&id)));
    assert!(
        set_at.elapsed() < Duration::from_secs(4),
        "the move took too long to test the TTL"
    );
    let after = expires_after(&b, &key, set_at).await;
    assert!(
        after >= Duration::from_secs(4) && after <= Duration::from_secs(6),
        "expired after {after:?}"
    );
    // The stopped node's manager is out of the directory (at once, or once forgotten); the
    // other two answer.
    assert_eventually!(listed_managers(&a).await == 2, Duration::from_secs(15));
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.nodes.len(), 2, "{stats:?}");

    // The terminal client.
    let gate = gate_b.to_string();
    let (code, out, _) = cache_cli(&gate, &["set", "cli:k", "hello", "--ttl", "60"]).await;
    assert_eq!((code, out.trim()), (Some(0), "OK (expires in 60 s)"));
    let (code, out, err) = cache_cli(&gate, &["get", "cli:k"]).await;
    assert_eq!((code, out.trim()), (Some(0), "hello"), "{err}");
    assert!(err.contains(&format!("via gate {gate}")), "{err}");
    let (code, _, err) = cache_cli(&gate, &["get", "cli:nothing"]).await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cli:nothing: not found"), "{err}");
    let (code, out, _) = cache_cli(&gate, &["del", "cli:k"]).await;
    assert_eq!((code, out.trim()), (Some(0), "deleted cli:k"));
    let (code, _, _) = cache_cli(&gate, &["del", "cli:k"]).await;
    assert_eq!(code, Some(4));
    let (code, out, _) = cache_cli(&gate, &["stats"]).await;
    assert_eq!(code, Some(0));
    assert!(out.lines().last().unwrap().starts_with("total"), "{out}");
    let (code, _, err) = cache_cli(&gate, &["set", "", "v"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("key cannot be empty"), "{err}");
    let (code, _, err) = cache_cli("127.0.0.1:1", &["get", "k"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("no gate reachable"), "{err}");

    cluster.shutdown().await;
}

/// A direct call to an entry, which the access rules refuse to clients.
struct TestEntry;

impl TestEntry {
    async fn get(client: &CacheClient, key: &str) -> Result<(), CallError> {
        goverse_sample_cache::DistributedCacheRef::new(entry_id(key))
            .get_value(
                client.client(),
                goverse_sample_cache::proto::DistributedCacheGetValueRequest {},
            )
            .await
            .map(|_| ())
    }
}
