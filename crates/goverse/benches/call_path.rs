//! The in-process call path, measured with criterion.
//!
//! - `typed_call`: a typed stub call on an active object (no encoding), one caller.
//! - `untyped_call_any`: the same call by type and method name with an encoded `Any` request,
//!   as the wire path will make it.
//! - `activation`: activating a new object (create on a fresh ID), no store.
//! - `contended_64_callers`: 64 tasks calling 1,000 objects at random; time per call.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use goverse::prelude::*;

#[derive(Default)]
struct Counter {
    value: i32,
}

impl Object for Counter {}

#[goverse::object]
impl Counter {
    #[method]
    async fn add(&mut self, request: Int32Value) -> Result<Int32Value, ObjectError> {
        self.value = self.value.wrapping_add(request.value);
        Ok(Int32Value { value: self.value })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn node() -> Node {
    Node::builder(NodeConfig {
        idle_timeout: Duration::ZERO,
        ..NodeConfig::default()
    })
    .register::<Counter>()
    .start()
    .await
    .expect("node starts")
}

fn call_path(c: &mut Criterion) {
    let rt = runtime();
    let node = rt.block_on(node());
    let counter = CounterRef::new("bench");
    rt.block_on(counter.add(&node, Int32Value { value: 0 }))
        .unwrap();

    c.bench_function("typed_call", |b| {
        b.to_async(&rt)
            .iter(|| async { counter.add(&node, Int32Value { value: 1 }).await.unwrap() });
    });

    let any = Payload::typed(Int32Value { value: 1 }).into_any();
    c.bench_function("untyped_call_any", |b| {
        b.to_async(&rt).iter(|| async {
            let response = node
                .call("Counter", "bench", "Add", Payload::Encoded(any.clone()))
                .await
                .unwrap();
            response.into_any()
        });
    });

    let mut next = 0u64;
    c.bench_function("activation", |b| {
        b.to_async(&rt).iter(|| {
            next += 1;
            let id = format!("fresh-{next}");
            let node = node.clone();
            async move { node.create_object("Counter", id).await.unwrap() }
        });
    });

    let refs: Vec<CounterRef> = (0..1000)
        .map(|i| CounterRef::new(format!("c{i}")))
        .collect();
    c.bench_function("contended_64_callers", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (node, refs) = (node.clone(), refs.clone());
            async move {
                let per_task = iters.div_ceil(64);
                let started = Instant::now();
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let (node, refs) = (node.clone(), refs.clone());
                        tokio::spawn(async move {
                            // A small LCG: cheap, and keeps the benchmark's own cost out of the figure.
                            let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
                            for _ in 0..per_task {
                                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                                let c = &refs[(rng >> 33) as usize % refs.len()];
                                c.add(&node, Int32Value { value: 1 }).await.unwrap();
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
    rt.block_on(node.shutdown(Duration::from_secs(5)));
}

criterion_group!(benches, call_path);
criterion_main!(benches);
