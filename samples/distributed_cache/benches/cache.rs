//! The cache's Get and Set, measured with criterion, in process and through a gate.
//!
//! One node (in-memory store) with the cache types; each operation goes through the node's
//! manager to the key's entry, as clients' operations do.
//!
//! - `in_process/{get,set}`: a typed stub call from the node handle, one caller.
//! - `gate/{get,set}`: `goverse::client::Client` over loopback gRPC to a gate linked to the node
//!   in-process, one caller.
//! - `gate/get_64_callers`: 64 tasks sharing one client, Gets of 1,000 keys at random; time per
//!   Get.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use goverse::client::Client;
use goverse::gate::{AllowAnonymous, Gate, GateConfig};
use goverse::prelude::*;
use goverse_sample_cache::CacheManagerRef;
use goverse_sample_cache::proto::{CacheManagerGetRequest, CacheManagerSetRequest};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn get(key: &str) -> CacheManagerGetRequest {
    CacheManagerGetRequest {
        key: key.to_owned(),
    }
}

fn set(key: &str) -> CacheManagerSetRequest {
    CacheManagerSetRequest {
        key: key.to_owned(),
        value: "a value of some thirty-two bytes".to_owned(),
        ttl_seconds: 0,
    }
}

fn cache(c: &mut Criterion) {
    let rt = runtime();
    let (node, gate, client) = rt.block_on(async {
        let node = goverse_sample_cache::register(Node::builder(NodeConfig {
            idle_timeout: Duration::ZERO,
            ..NodeConfig::default()
        }))
        .object_store(Arc::new(goverse::persistence::MemoryStore::new()))
        .start()
        .await
        .expect("node starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::start_local(
            GateConfig {
                advertise_address: addr.to_string(),
                ..GateConfig::default()
            },
            Arc::new(AllowAnonymous),
            node.handler(),
        )
        .expect("gate starts");
        assert!(gate.wait_connected(Duration::from_secs(10)).await);
        let serving = gate.clone();
        tokio::spawn(async move { serving.serve_grpc(listener, std::future::pending()).await });
        let client = Client::connect([addr.to_string()])
            .await
            .expect("client connects");
        (node, gate, client)
    });
    let manager = CacheManagerRef::new(format!("{}/CacheManager", node.address()));
    rt.block_on(async {
        for i in 0..1000 {
            manager.set(&node, set(&format!("k{i}"))).await.unwrap();
        }
    });

    let mut group = c.benchmark_group("in_process");
    group.bench_function("get", |b| {
        b.to_async(&rt)
            .iter(|| async { manager.get(&node, get("k1")).await.unwrap() });
    });
    group.bench_function("set", |b| {
        b.to_async(&rt)
            .iter(|| async { manager.set(&node, set("k2")).await.unwrap() });
    });
    group.finish();

    let mut group = c.benchmark_group("gate");
    group.bench_function("get", |b| {
        b.to_async(&rt)
            .iter(|| async { manager.get(&client, get("k1")).await.unwrap() });
    });
    group.bench_function("set", |b| {
        b.to_async(&rt)
            .iter(|| async { manager.set(&client, set("k2")).await.unwrap() });
    });
    let keys: Arc<Vec<String>> = Arc::new((0..1000).map(|i| format!("k{i}")).collect());
    group.bench_function("get_64_callers", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (client, manager, keys) = (client.clone(), manager.clone(), keys.clone());
            async move {
                let per_task = iters.div_ceil(64);
                let started = Instant::now();
                let tasks: Vec<_> = (0..64u64)
                    .map(|task| {
                        let (client, manager, keys) =
                            (client.clone(), manager.clone(), keys.clone());
                        tokio::spawn(async move {
                            let mut rng = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                            for _ in 0..per_task {
                                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                                let key = &keys[(rng >> 33) as usize % keys.len()];
                                manager.get(&client, get(key)).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                started.elapsed() * (iters as u32).max(1) / ((per_task * 64) as u32).max(1)
            }
        });
    });
    group.finish();
    rt.block_on(async {
        gate.shutdown(Duration::from_secs(5)).await;
        node.shutdown(Duration::from_secs(5)).await;
    });
}

criterion_group!(benches, cache);
criterion_main!(benches);
