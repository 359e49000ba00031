//! Runtime behaviour, end to end through the public API. Every test runs on paused time (the
//! runtime's timers and deadlines are on tokio's clock), so none waits in real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use goverse::cluster::{ClusterStore, Keys, MemoryClusterStore, ShardRecord};
use goverse::persistence::{MemoryStore, ObjectStore, SqliteStore};
use goverse::prelude::*;
use goverse::{ShardId, TypeOptions};
use goverse_testkit::assert_eventually;

/// Shared with every instance, so tests can see what happened inside.
#[derive(Debug, Default)]
struct Shared {
    activations: AtomicUsize,
    deactivations: AtomicUsize,
    activate_delay_ms: AtomicUsize,
    in_write: AtomicBool,
    overlap: AtomicBool,
    readers: AtomicUsize,
    max_readers: AtomicUsize,
    read_during_write: AtomicBool,
    ticks: AtomicUsize,
    slow_done: AtomicUsize,
}

#[derive(Debug)]
struct Probe {
    shared: Arc<Shared>,
    ready: bool,
    log: Vec<i32>,
}

impl Object for Probe {
    const PERSISTENT: bool = true;

    async fn on_activate(
        &mut self,
        _ctx: &ObjectContext,
        _restored: bool,
    ) -> Result<(), ObjectError> {
        self.shared.activations.fetch_add(1, Ordering::SeqCst);
        let delay = self.shared.activate_delay_ms.load(Ordering::SeqCst) as u64;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.ready = true;
        Ok(())
    }

    async fn on_deactivate(&mut self, _ctx: &ObjectContext) -> Result<(), ObjectError> {
        self.shared.deactivations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn on_timer(&mut self, _ctx: &ObjectContext, name: &str) -> Result<(), ObjectError> {
        assert_eq!(name, "tick");
        self.shared.ticks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, ObjectError> {
        Ok(serde_json::to_vec(&self.log)?)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), ObjectError> {
        self.log = serde_json::from_slice(state)?;
        Ok(())
    }
}

impl Probe {
    fn enter_write(&self) -> Result<(), ObjectError> {
        if !self.ready {
            return Err(ObjectError::internal(
                "turn ran before on_activate finished",
            ));
        }
        if self.shared.in_write.swap(true, Ordering::SeqCst) {
            self.shared.overlap.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    fn leave_write(&self) {
        self.shared.in_write.store(false, Ordering::SeqCst);
    }
}

#[goverse::object]
impl Probe {
    /// Appends a number, yielding in the middle to give overlapping turns a chance to show.
    #[method]
    async fn append(&mut self, request: Int32Value) -> Result<Int32Value, ObjectError> {
        self.enter_write()?;
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.log.push(request.value);
        self.leave_write();
        Ok(Int32Value {
            value: self.log.len() as i32,
        })
    }

    #[method]
    async fn slow_write(&mut self, request: Int32Value) -> Result<Empty, ObjectError> {
        self.enter_write()?;
        tokio::time::sleep(Duration::from_millis(request.value as u64)).await;
        self.log.push(-1);
        self.shared.slow_done.fetch_add(1, Ordering::SeqCst);
        self.leave_write();
        Ok(Empty {})
    }

    /// Appends `request.value`, then deactivates (value even) or deletes itself (odd).
    #[method]
    async fn append_and_go(
        &mut self,
        ctx: &ObjectContext,
        request: Int32Value,
    ) -> Result<Empty, ObjectError> {
        self.log.push(request.value);
        if request.value % 2 == 0 {
            ctx.deactivate();
        } else {
            ctx.delete_self()?;
        }
        Ok(Empty {})
    }

    /// Asks to delete itself from a read turn (refused), then to deactivate.
    #[method]
    async fn go_from_a_read(
        &self,
        ctx: &ObjectContext,
        _request: Empty,
    ) -> Result<StringValue, ObjectError> {
        let refused = ctx.delete_self().unwrap_err();
        ctx.deactivate();
        Ok(StringValue {
            value: refused.to_string(),
        })
    }

    #[method]
    async fn get_log(&self, _request: Empty) -> Result<StringValue, ObjectError> {
        let text: Vec<String> = self.log.iter().map(i32::to_string).collect();
        Ok(StringValue {
            value: text.join(","),
        })
    }

    /// Waits until `request.value` readers are inside at once (or gives up after a second).
    #[method]
    async fn read_together(&self, request: Int32Value) -> Result<Int32Value, ObjectError> {
        if self.shared.in_write.load(Ordering::SeqCst) {
            self.shared.read_during_write.store(true, Ordering::SeqCst);
        }
        let now = self.shared.readers.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.max_readers.fetch_max(now, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(1);
        while self.shared.max_readers.load(Ordering::SeqCst) < request.value as usize
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.shared.readers.fetch_sub(1, Ordering::SeqCst);
        Ok(Int32Value {
            value: self.shared.max_readers.load(Ordering::SeqCst) as i32,
        })
    }

    /// A -> A on the same chain.
    #[method]
    async fn call_self(
        &mut self,
        ctx: &ObjectContext,
        _request: Empty,
    ) -> Result<Empty, ObjectError> {
        ProbeRef::new(ctx.id()).get_log(ctx, Empty {}).await?;
        Ok(Empty {})
    }

    /// A -> B -> A: asks `request.value` to call back.
    #[method]
    async fn call_via(
        &mut self,
        ctx: &ObjectContext,
        request: StringValue,
    ) -> Result<Empty, ObjectError> {
        ProbeRef::new(request.value)
            .call_back(
                ctx,
                StringValue {
                    value: ctx.id().to_string(),
                },
            )
            .await?;
        Ok(Empty {})
    }

    #[method]
    async fn call_back(
        &mut self,
        ctx: &ObjectContext,
        request: StringValue,
    ) -> Result<Empty, ObjectError> {
        ProbeRef::new(request.value)
            .append(ctx, Int32Value { value: 99 })
            .await?;
        Ok(Empty {})
    }

    /// A -> B on a new chain, then B -> A on that chain: not re-entrant by chain, so B's call
    /// waits behind A's running turn.
    #[method]
    async fn call_via_new_chain(
        &mut self,
        ctx: &ObjectContext,
        request: StringValue,
    ) -> Result<Empty, ObjectError> {
        ProbeRef::new(request.value)
            .call_back(
                &ctx.new_chain(),
                StringValue {
                    value: ctx.id().to_string(),
                },
            )
            .await?;
        Ok(Empty {})
    }

    /// A(read) -> B(read) -> A(read): a reentrant read, allowed.
    #[method]
    async fn read_via(
        &self,
        ctx: &ObjectContext,
        request: StringValue,
    ) -> Result<StringValue, ObjectError> {
        Ok(ProbeRef::new(request.value)
            .read_back(
                ctx,
                StringValue {
                    value: ctx.id().to_string(),
                },
            )
            .await?)
    }

    #[method]
    async fn read_back(
        &self,
        ctx: &ObjectContext,
        request: StringValue,
    ) -> Result<StringValue, ObjectError> {
        Ok(ProbeRef::new(request.value).get_log(ctx, Empty {}).await?)
    }

    #[method]
    async fn panic_write(&mut self, _request: Empty) -> Result<Empty, ObjectError> {
        self.log.push(666);
        panic!("boom in a write");
    }

    #[method]
    async fn panic_read(&self, _request: Empty) -> Result<Empty, ObjectError> {
        panic!("boom in a read");
    }

    #[method]
    async fn start_ticker(
        &mut self,
        ctx: &ObjectContext,
        request: Int32Value,
    ) -> Result<Empty, ObjectError> {
        ctx.set_timer("tick", Duration::from_millis(request.value as u64));
        Ok(Empty {})
    }

    #[method(name = "Fail")]
    async fn fail_with_code(&self, _request: Empty) -> Result<Empty, ObjectError> {
        Err(ObjectError::permission_denied("not for you"))
    }
}

/// A second type, for type-mismatch checks.
#[derive(Debug, Default)]
struct Other;

impl Object for Other {}

#[goverse::object]
impl Other {
    #[method]
    async fn ping(&self, _request: Empty) -> Result<Empty, ObjectError> {
        Ok(Empty {})
    }
}

struct Fixture {
    node: Node,
    shared: Arc<Shared>,
    store: Arc<dyn ObjectStore>,
}

fn config() -> NodeConfig {
    NodeConfig {
        shard_count: 64,
        ..NodeConfig::default()
    }
}

/// The `Probe` type's options: every activation shares `shared`.
fn probe_options(shared: &Arc<Shared>) -> TypeOptions<Probe> {
    let shared = shared.clone();
    TypeOptions::<Probe>::with_factory(move |_| Probe {
        shared: shared.clone(),
        ready: false,
        log: Vec::new(),
    })
}

async fn fixture_with(
    config: NodeConfig,
    store: Arc<dyn ObjectStore>,
    idle: Option<Duration>,
) -> Fixture {
    let shared = Arc::new(Shared::default());
    let mut options = probe_options(&shared);
    if let Some(idle) = idle {
        options = options.idle_timeout(idle);
    }
    let node = Node::builder(config)
        .register_with(options)
        .register::<Other>()
        .object_store(store.clone())
        .start()
        .await
        .expect("node starts");
    Fixture {
        node,
        shared,
        store,
    }
}

async fn fixture() -> Fixture {
    fixture_with(config(), Arc::new(MemoryStore::new()), None).await
}

async fn log_of(node: &Node, id: &str) -> String {
    ProbeRef::new(id)
        .get_log(node, Empty {})
        .await
        .unwrap()
        .value
}

#[tokio::test(start_paused = true)]
async fn concurrent_creates_yield_one_activation_that_finishes_before_any_turn() {
    let f = fixture().await;
    f.shared.activate_delay_ms.store(50, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let node = f.node.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                node.create_object("Probe", "racy").await.map(|_| ())
            } else {
                ProbeRef::new("racy")
                    .append(&node, Int32Value { value: i })
                    .await
                    .map(|_| ())
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("create and calls succeed");
    }
    assert_eq!(
        f.shared.activations.load(Ordering::SeqCst),
        1,
        "exactly one activation"
    );
    assert_eq!(f.node.stats().activations, 1);
    // Idempotent once active, and a type clash is refused.
    f.node.create_object("Probe", "racy").await.unwrap();
    let err = f.node.create_object("Other", "racy").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::AlreadyExists, "{err}");
    assert_eq!(log_of(&f.node, "racy").await.split(',').count(), 16);
}

#[tokio::test(start_paused = true)]
async fn write_turns_never_overlap_and_keep_caller_order() {
    let f = fixture().await;
    // Many callers at once: no two write turns overlap.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let node = f.node.clone();
        tasks.push(tokio::spawn(async move {
            ProbeRef::new("w")
                .append(&node, Int32Value { value: i })
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(
        !f.shared.overlap.load(Ordering::SeqCst),
        "write turns overlapped"
    );
    assert_eq!(log_of(&f.node, "w").await.split(',').count(), 200);

    // One caller issuing calls without waiting for each (queued behind a slow turn) keeps order.
    let probe = ProbeRef::new("ordered");
    let node = f.node.clone();
    let slow = tokio::spawn(async move {
        ProbeRef::new("ordered")
            .slow_write(&node, Int32Value { value: 100 })
            .await
    });
    assert_eventually!(f.node.is_active(&ObjectId::from("ordered")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let calls: Vec<_> = (0..50)
        .map(|i| probe.append(&f.node, Int32Value { value: i }))
        .collect();
    futures_join_all(calls).await;
    slow.await.unwrap().unwrap();
    let expected: Vec<String> = std::iter::once("-1".to_owned())
        .chain((0..50).map(|i: i32| i.to_string()))
        .collect();
    assert_eq!(log_of(&f.node, "ordered").await, expected.join(","));
}

/// Polls the futures in order (first poll enqueues them in order), then waits for all.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(start_paused = true)]
async fn read_turns_run_together_but_never_during_a_write() {
    let f = fixture().await;
    f.node.create_object("Probe", "r").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let node = f.node.clone();
        tasks.push(tokio::spawn(async move {
            ProbeRef::new("r")
                .read_together(&node, Int32Value { value: 4 })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap().value,
            4,
            "four reads were inside at once"
        );
    }
    // Writes interleaved with reads: no read ever sees a write in progress.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let node = f.node.clone();
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                ProbeRef::new("r")
                    .append(&node, Int32Value { value: i })
                    .await
                    .map(|_| ())
            } else {
                ProbeRef::new("r")
                    .read_together(&node, Int32Value { value: 0 })
                    .await
                    .map(|_| ())
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(
        !f.shared.read_during_write.load(Ordering::SeqCst),
        "a read ran during a write"
    );
    assert!(!f.shared.overlap.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn delete_waits_for_the_running_turn_and_is_idempotent() {
    let f = fixture().await;
    ProbeRef::new("d")
        .append(&f.node, Int32Value { value: 1 })
        .await
        .unwrap();
    f.node.save_changed().await;
    assert!(f.store.load(&ObjectId::from("d")).await.unwrap().is_some());

    let node = f.node.clone();
    let slow = tokio::spawn(async move {
        ProbeRef::new("d")
            .slow_write(&node, Int32Value { value: 150 })
            .await
    });
    assert_eventually!(f.shared.in_write.load(Ordering::SeqCst));
    let err = f.node.delete_object("Other", "d").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::AlreadyExists, "type mismatch: {err}");
    f.node.delete_object("Probe", "d").await.unwrap();
    // The turn that was running when delete arrived finished first.
    assert_eq!(f.shared.slow_done.load(Ordering::SeqCst), 1);
    slow.await.unwrap().unwrap();
    assert!(!f.node.is_active(&ObjectId::from("d")));
    assert_eq!(
        f.store.load(&ObjectId::from("d")).await.unwrap(),
        None,
        "saved state deleted"
    );
    assert_eq!(
        f.shared.deactivations.load(Ordering::SeqCst),
        1,
        "on_deactivate ran"
    );
    // Idempotent, also for objects never seen.
    f.node.delete_object("Probe", "d").await.unwrap();
    f.node
        .delete_object("Other", "never-existed")
        .await
        .unwrap();
    let err = f.node.delete_object("Nope", "d").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    // A call after delete starts afresh.
    assert_eq!(log_of(&f.node, "d").await, "");
}

#[tokio::test(start_paused = true)]
async fn reentrant_calls_fail_fast_naming_the_chain() {
    let f = fixture().await;
    let started = Instant::now();
    let err = ProbeRef::new("a")
        .call_self(&f.node, Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Reentrancy, "{err}");
    assert!(
        err.message().contains("call chain") && err.message().contains("Probe/a"),
        "{err}"
    );

    let err = ProbeRef::new("a")
        .call_via(&f.node, StringValue { value: "b".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Reentrancy, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed at once, not at the 30 s timeout"
    );
    // Both objects keep serving.
    assert_eq!(log_of(&f.node, "a").await, "");
    assert_eq!(log_of(&f.node, "b").await, "");
}

#[tokio::test(start_paused = true)]
async fn calls_on_a_new_chain_are_not_checked_for_reentrancy() {
    let f = fixture().await;
    // A -> B (new chain) -> A: B's call back waits behind A's turn; the cycle ends at the
    // deadline instead of failing at once as re-entrant (which the same chain would).
    let err = f
        .node
        .call_with(
            "Probe",
            "a",
            "CallViaNewChain",
            Payload::typed(StringValue { value: "b".into() }),
            CallOptions {
                timeout: Some(Duration::from_millis(300)),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");
}

#[tokio::test(start_paused = true)]
async fn reentrant_reads_on_one_chain_are_allowed() {
    let f = fixture().await;
    ProbeRef::new("ra")
        .append(&f.node, Int32Value { value: 5 })
        .await
        .unwrap();
    let got = ProbeRef::new("ra")
        .read_via(&f.node, StringValue { value: "rb".into() })
        .await
        .unwrap();
    assert_eq!(got.value, "5");
}

#[tokio::test(start_paused = true)]
async fn idle_objects_deactivate_and_reactivate_with_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("objects.db")).unwrap());
    let config = NodeConfig {
        idle_check_interval: Some(Duration::from_millis(20)),
        ..config()
    };
    let f = fixture_with(config, store, Some(Duration::from_millis(100))).await;
    ProbeRef::new("idle")
        .append(&f.node, Int32Value { value: 7 })
        .await
        .unwrap();
    ProbeRef::new("idle")
        .append(&f.node, Int32Value { value: 8 })
        .await
        .unwrap();
    let id = ObjectId::from("idle");
    assert!(f.node.is_active(&id));
    assert_eventually!(!f.node.is_active(&id));
    assert_eq!(f.shared.deactivations.load(Ordering::SeqCst), 1);
    assert_eq!(f.store.load(&id).await.unwrap().unwrap().data, b"[7,8]");
    // The next call reactivates it transparently, with its state.
    assert_eq!(log_of(&f.node, "idle").await, "7,8");
    assert_eq!(f.shared.activations.load(Ordering::SeqCst), 2);
    let stats = f.node.stats();
    assert_eq!(
        (stats.activations, stats.deactivations, stats.active_objects),
        (2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn an_object_deactivates_or_deletes_itself_before_its_next_turn() {
    let f = fixture().await;
    let id = ObjectId::from("leaver");
    let probe = ProbeRef::new("leaver");
    probe
        .append(&f.node, Int32Value { value: 1 })
        .await
        .unwrap();
    // A deactivation: the call queued behind it runs on a fresh activation with the saved state.
    let (gone, next) = tokio::join!(
        probe.append_and_go(&f.node, Int32Value { value: 2 }),
        probe.append(&f.node, Int32Value { value: 3 })
    );
    gone.unwrap();
    next.unwrap();
    assert_eq!(log_of(&f.node, "leaver").await, "1,2,3");
    assert_eq!(f.shared.deactivations.load(Ordering::SeqCst), 1);
    assert_eq!(f.shared.activations.load(Ordering::SeqCst), 2);
    // A delete: the state goes with it, before any other turn.
    let (gone, next) = tokio::join!(
        probe.append_and_go(&f.node, Int32Value { value: 5 }),
        probe.append(&f.node, Int32Value { value: 6 })
    );
    gone.unwrap();
    next.unwrap();
    assert_eq!(log_of(&f.node, "leaver").await, "6");
    assert_eq!(f.shared.deactivations.load(Ordering::SeqCst), 2);
    assert_eq!(f.shared.activations.load(Ordering::SeqCst), 3);
    // Deleted with nothing after it: no record is left.
    probe
        .append_and_go(&f.node, Int32Value { value: 7 })
        .await
        .unwrap();
    assert_eventually!(!f.node.is_active(&id));
    assert!(f.store.load(&id).await.unwrap().is_none());
    // From a read turn a delete is refused (with the reason); a deactivation still happens.
    probe
        .append(&f.node, Int32Value { value: 8 })
        .await
        .unwrap();
    let refused = probe.go_from_a_read(&f.node, Empty {}).await.unwrap().value;
    assert!(refused.contains("read turn"), "{refused}");
    assert_eventually!(!f.node.is_active(&id));
    assert_eq!(f.store.load(&id).await.unwrap().unwrap().data, b"[8]");
}

#[tokio::test(start_paused = true)]
async fn a_busy_object_is_not_deactivated_and_zero_means_never() {
    let fast = NodeConfig {
        idle_check_interval: Some(Duration::from_millis(10)),
        ..config()
    };
    let f = fixture_with(
        fast,
        Arc::new(MemoryStore::new()),
        Some(Duration::from_millis(80)),
    )
    .await;
    // Calls every 20 ms keep it active well past its idle timeout.
    for i in 0..15 {
        ProbeRef::new("busy")
            .append(&f.node, Int32Value { value: i })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        f.shared.activations.load(Ordering::SeqCst),
        1,
        "stayed active while used"
    );

    let node = Node::builder(NodeConfig {
        idle_timeout: Duration::ZERO,
        idle_check_interval: Some(Duration::from_millis(10)),
        ..config()
    })
    .register::<Other>()
    .start()
    .await
    .unwrap();
    node.call("Other", "forever", "Ping", Payload::typed(Empty {}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(node.deactivate_idle().await, 0);
    assert!(node.is_active(&ObjectId::from("forever")));
}

#[tokio::test(start_paused = true)]
async fn wrong_payload_unknown_type_and_unknown_method_are_distinct_errors() {
    let f = fixture().await;
    let err = f
        .node
        .call(
            "Probe",
            "p",
            "Append",
            Payload::typed(StringValue { value: "x".into() }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(
        err.message(),
        "Probe.Append takes google.protobuf.Int32Value, got google.protobuf.StringValue"
    );
    let err = f
        .node
        .call("Nope", "p", "Append", Payload::typed(Empty {}))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (ErrorCode::NotFound, "unknown object type \"Nope\"")
    );
    let err = f
        .node
        .call("Probe", "p", "Nope", Payload::typed(Empty {}))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            ErrorCode::NotFound,
            "object type \"Probe\" has no method \"Nope\""
        )
    );
    // Unknown type or method activates nothing.
    assert!(!f.node.is_active(&ObjectId::from("p")));
    // Garbage bytes under the right type URL.
    let any = goverse::prelude::Payload::Encoded(
        goverse::prelude::Payload::typed(Int32Value { value: 1 }).into_any(),
    );
    let Payload::Encoded(mut bad) = any else {
        unreachable!()
    };
    bad.value = vec![0x08, 0xff];
    let err = f
        .node
        .call("Probe", "p", "Append", Payload::Encoded(bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.message().contains("malformed"), "{err}");
    // The method's own error code travels.
    let err = f
        .node
        .call("Probe", "p", "Fail", Payload::typed(Empty {}))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (ErrorCode::PermissionDenied, "not for you")
    );
    // A typed stub on an object of another type.
    f.node.create_object("Other", "o").await.unwrap();
    let err = ProbeRef::new("o")
        .get_log(&f.node, Empty {})
        .await
        .unwrap_err();
    // An object id belongs to one type: the same code as a create under a taken id.
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    assert!(err.message().contains("\"Other\""), "{err}");
}

#[tokio::test(start_paused = true)]
async fn malformed_and_pinned_ids() {
    let f = fixture().await;
    for bad in ["", "shard#x/a", "shard#64/a", "/a", "shard#3"] {
        let err = ProbeRef::new(bad)
            .get_log(&f.node, Empty {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}: {err}");
    }
    ProbeRef::new("shard#63/pinned")
        .append(&f.node, Int32Value { value: 1 })
        .await
        .unwrap();
    ProbeRef::new("127.0.0.1:47000/here")
        .append(&f.node, Int32Value { value: 1 })
        .await
        .unwrap();
    let err = ProbeRef::new("10.9.9.9:1/elsewhere")
        .get_log(&f.node, Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(err.message().contains("pinned"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_write_discards_the_activation_and_the_node_keeps_serving() {
    let f = fixture().await;
    ProbeRef::new("p")
        .append(&f.node, Int32Value { value: 1 })
        .await
        .unwrap();
    f.node.save_changed().await;
    ProbeRef::new("p")
        .append(&f.node, Int32Value { value: 2 })
        .await
        .unwrap(); // not saved
    let err = ProbeRef::new("p")
        .panic_write(&f.node, Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert!(err.message().contains("boom in a write"), "{err}");
    assert!(!f.node.is_active(&ObjectId::from("p")), "discarded");
    // Reactivated from the last save: the half-done write (666) and the unsaved 2 are gone.
    assert_eq!(log_of(&f.node, "p").await, "1");

    let err = ProbeRef::new("p")
        .panic_read(&f.node, Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert!(
        f.node.is_active(&ObjectId::from("p")),
        "a read cannot have changed state: kept"
    );
    assert_eq!(log_of(&f.node, "p").await, "1");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_times_out_does_not_cut_the_turn_short() {
    let f = fixture().await;
    let started = Instant::now();
    let err = ProbeRef::new("t")
        .with_timeout(Duration::from_millis(50))
        .slow_write(&f.node, Int32Value { value: 300 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eventually!(f.shared.slow_done.load(Ordering::SeqCst) == 1);
    assert_eq!(log_of(&f.node, "t").await, "-1");
    // A call queued behind a long turn times out while waiting, and never runs.
    let node = f.node.clone();
    let slow = tokio::spawn(async move {
        ProbeRef::new("t")
            .slow_write(&node, Int32Value { value: 200 })
            .await
    });
    assert_eventually!(f.shared.in_write.load(Ordering::SeqCst));
    let err = ProbeRef::new("t")
        .with_timeout(Duration::from_millis(30))
        .append(&f.node, Int32Value { value: 5 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded);
    slow.await.unwrap().unwrap();
    assert_eq!(log_of(&f.node, "t").await, "-1,-1");
}

/// Deadlines run on tokio's clock: with paused time an hour-long turn and a 30 s deadline take
/// no real time, and the deadline is met exactly.
#[tokio::test(start_paused = true)]
async fn deadlines_follow_paused_time() {
    let f = fixture().await;
    let (real, clock) = (std::time::Instant::now(), tokio::time::Instant::now());
    let err = ProbeRef::new("p")
        .with_timeout(Duration::from_secs(30))
        .slow_write(&f.node, Int32Value { value: 3_600_000 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");
    assert_eq!(clock.elapsed(), Duration::from_secs(30));
    // The turn runs to its end, an hour later on the paused clock.
    assert_eq!(f.shared.slow_done.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(f.shared.slow_done.load(Ordering::SeqCst), 1);
    assert_eq!(log_of(&f.node, "p").await, "-1");
    assert!(real.elapsed() < Duration::from_secs(5), "no real waiting");
}

#[tokio::test(start_paused = true)]
async fn timers_run_as_turns_and_stop_at_deactivation() {
    let f = fixture().await;
    ProbeRef::new("tick")
        .start_ticker(&f.node, Int32Value { value: 10 })
        .await
        .unwrap();
    assert_eventually!(f.shared.ticks.load(Ordering::SeqCst) >= 3);
    f.node.delete_object("Probe", "tick").await.unwrap();
    let after = f.shared.ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        f.shared.ticks.load(Ordering::SeqCst),
        after,
        "timer stopped with the activation"
    );
}

#[tokio::test(start_paused = true)]
async fn periodic_saves_write_changed_objects() {
    let config = NodeConfig {
        save_interval: Duration::from_millis(30),
        ..config()
    };
    let f = fixture_with(config, Arc::new(MemoryStore::new()), None).await;
    ProbeRef::new("s")
        .append(&f.node, Int32Value { value: 3 })
        .await
        .unwrap();
    let id = ObjectId::from("s");
    assert_eventually!(
        f.store
            .load(&id)
            .await
            .unwrap()
            .is_some_and(|r| r.data == b"[3]")
    );
    let record = f.store.load(&id).await.unwrap().unwrap();
    assert_eq!(record.object_type, "Probe");
    assert!(record.epoch >= 1, "saves carry the shard epoch");
}

#[tokio::test(start_paused = true)]
async fn a_dead_store_keeps_objects_in_memory_until_it_returns() {
    let store = Arc::new(MemoryStore::new());
    let config = NodeConfig {
        idle_check_interval: Some(Duration::from_millis(10)),
        ..config()
    };
    let f = fixture_with(config, store.clone(), Some(Duration::from_millis(50))).await;
    ProbeRef::new("keep")
        .append(&f.node, Int32Value { value: 1 })
        .await
        .unwrap();
    store.set_failing(true);
    // Activation needs the store: a clear error, and the node keeps running.
    let err = ProbeRef::new("new-one")
        .get_log(&f.node, Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(
        err.message().contains("cannot load state of Probe/new-one"),
        "{err}"
    );
    // Idle deactivation cannot save: the object stays, with its state.
    assert_eventually!(f.node.stats().save_failures >= 2);
    assert!(f.node.is_active(&ObjectId::from("keep")));
    assert_eq!(log_of(&f.node, "keep").await, "1");
    store.set_failing(false);
    assert_eventually!(!f.node.is_active(&ObjectId::from("keep")));
    assert_eq!(
        store
            .load(&ObjectId::from("keep"))
            .await
            .unwrap()
            .unwrap()
            .data,
        b"[1]"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_saves_refuses_new_calls_and_releases_shards() {
    let cluster = Arc::new(MemoryClusterStore::new());
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let shared = Arc::new(Shared::default());
    let node = Node::builder(config())
        .register_with(probe_options(&shared))
        .object_store(store.clone())
        .cluster_store(cluster.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(node.stats().owned_shards, 64);
    let record = cluster
        .get(&Keys::default().shard(ShardId(5)))
        .await
        .unwrap()
        .unwrap();
    let record = ShardRecord::decode(ShardId(5), &record.value).unwrap();
    assert_eq!(record.current.unwrap().as_str(), "127.0.0.1:47000");
    assert!(
        cluster
            .get(&Keys::default().node(node.address()))
            .await
            .unwrap()
            .is_some()
    );

    // A second node with the same address is refused.
    let err = Node::builder(config())
        .cluster_store(cluster.clone())
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");

    for i in 0..10 {
        ProbeRef::new(format!("o{i}"))
            .append(&node, Int32Value { value: i })
            .await
            .unwrap();
    }
    let report = node.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        (report.deactivated, report.saved, report.unsaved),
        (10, 10, 0)
    );
    assert_eq!(store.count().await.unwrap(), 10);
    let err = ProbeRef::new("o1")
        .get_log(&node, Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(err.message().contains("shutting down"), "{err}");
    let record = cluster
        .get(&Keys::default().shard(ShardId(5)))
        .await
        .unwrap()
        .unwrap();
    let record = ShardRecord::decode(ShardId(5), &record.value).unwrap();
    assert_eq!(record.current, None, "shard released");
    assert_eq!(
        cluster
            .get(&Keys::default().node(node.address()))
            .await
            .unwrap(),
        None,
        "lease revoked"
    );

    // The next node claims with a higher epoch, and its writes carry it.
    let node = Node::builder(config())
        .cluster_store(cluster.clone())
        .start()
        .await
        .unwrap();
    let record = cluster
        .get(&Keys::default().shard(ShardId(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ShardRecord::decode(ShardId(5), &record.value)
            .unwrap()
            .epoch,
        2
    );
    node.shutdown(Duration::from_secs(5)).await;
}

/// A hurried shutdown (a second stop signal) does not wait for a turn that runs for an hour:
/// the busy object is left unsaved and counted, every other object is saved at once.
#[tokio::test(start_paused = true)]
async fn a_hurried_shutdown_saves_what_is_idle_and_leaves_the_busy_object() {
    let f = fixture().await;
    for id in ["a", "b", "c"] {
        ProbeRef::new(id)
            .append(&f.node, Int32Value { value: 7 })
            .await
            .unwrap();
    }
    let busy = {
        let node = f.node.clone();
        tokio::spawn(async move {
            ProbeRef::new("busy")
                .with_timeout(Duration::from_secs(7200))
                .slow_write(&node, Int32Value { value: 3_600_000 })
                .await
        })
    };
    assert_eventually!(
        f.node.is_active(&ObjectId::from("busy")) && f.shared.in_write.load(Ordering::SeqCst)
    );
    let started = tokio::time::Instant::now();
    let shutdown = {
        let node = f.node.clone();
        tokio::spawn(async move { node.shutdown(Duration::from_secs(7200)).await })
    };
    // Without the hurry, the shutdown waits for the running turn.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!shutdown.is_finished());
    f.node.hurry_shutdown();
    let report = shutdown.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(61),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((report.saved, report.unsaved), (3, 1), "{report:?}");
    for id in ["a", "b", "c"] {
        assert!(
            f.store.load(&ObjectId::from(id)).await.unwrap().is_some(),
            "{id} saved"
        );
    }
    busy.abort();
}

/// Queue wait and execution on real time: of two calls of a 50 ms method queued on one
/// object, the second waits for the first's turn (its wait is the first's run); an uncontended
/// call waits for nothing; every call's execution counts its run.
#[tokio::test]
async fn queue_wait_is_the_time_spent_behind_other_turns() {
    let registry = goverse::metrics::Registry::new();
    let options = probe_options(&Arc::new(Shared::default()));
    let node = Node::builder(config())
        .metrics(registry.clone())
        .register_with(options)
        .start()
        .await
        .unwrap();
    let seconds = |family: &str| -> f64 {
        registry
            .scrape()
            .samples(family)
            .iter()
            .filter(|s| {
                s.labels
                    .iter()
                    .any(|(k, v)| *k == "method_name" && v == "SlowWrite")
            })
            .map(|s| match &s.value {
                goverse::metrics::Value::Histogram(h) => h.sum,
                other => panic!("{family} is not a histogram: {other:?}"),
            })
            .sum()
    };
    let probe = ProbeRef::new("contended");
    probe.append(&node, Int32Value { value: 0 }).await.unwrap();
    let slow = || Int32Value { value: 50 };
    let (first, second) = tokio::join!(
        probe.slow_write(&node, slow()),
        probe.slow_write(&node, slow())
    );
    first.unwrap();
    second.unwrap();
    let waited = seconds("goverse_method_queue_wait_seconds");
    let ran = seconds("goverse_method_execution_seconds");
    assert!((0.045..1.0).contains(&waited), "queue wait {waited} s");
    assert!((0.095..2.0).contains(&ran), "execution {ran} s");
    // Alone on its object, a call waits for nothing (well under a millisecond).
    ProbeRef::new("alone")
        .slow_write(&node, slow())
        .await
        .unwrap();
    let alone = seconds("goverse_method_queue_wait_seconds") - waited;
    assert!(alone < 0.001, "an uncontended call waited {alone} s");
    node.shutdown(Duration::from_secs(1)).await;
}

/// The node's metrics follow what it did: calls per method and outcome (a method's own error
/// is a failure), queue wait and execution per method, the objects gauge up with activations
/// and back down after idle deactivation, shards served, all in the Prometheus text the
/// registry writes.
#[tokio::test(start_paused = true)]
async fn metrics_count_calls_by_method_and_outcome_and_the_objects_gauge_goes_down() {
    let registry = goverse::metrics::Registry::new();
    let options = probe_options(&Arc::new(Shared::default())).idle_timeout(Duration::from_secs(5));
    let config = NodeConfig {
        idle_check_interval: Some(Duration::from_millis(20)),
        ..config()
    };
    let node = Node::builder(config)
        .metrics(registry.clone())
        .register_with(options)
        .start()
        .await
        .unwrap();
    for i in 0..10 {
        ProbeRef::new(format!("o{i}"))
            .append(&node, Int32Value { value: i })
            .await
            .unwrap();
    }
    for i in 0..3 {
        ProbeRef::new(format!("o{i}"))
            .fail_with_code(&node, Empty {})
            .await
            .unwrap_err();
    }
    let scrape = registry.scrape();
    let calls = |method: &str, status: &str| {
        scrape.sum(
            "goverse_method_calls_total",
            &[
                ("object_type", "Probe"),
                ("method_name", method),
                ("status", status),
            ],
        )
    };
    assert_eq!(calls("Append", "success"), 10);
    assert_eq!(calls("Append", "failure"), 0);
    assert_eq!(calls("Fail", "failure"), 3);
    assert_eq!(
        scrape.sum(
            "goverse_method_queue_wait_seconds",
            &[("method_name", "Append")]
        ),
        10
    );
    assert_eq!(
        scrape.sum(
            "goverse_method_execution_seconds",
            &[("method_name", "Append")]
        ),
        10
    );
    assert_eq!(scrape.sum("goverse_shard_method_calls_total", &[]), 13);
    assert_eq!(
        scrape.sum("goverse_objects_total", &[("type", "Probe")]),
        10
    );
    assert_eq!(scrape.sum("goverse_shards_total", &[]), 64);
    assert_eq!(scrape.sum("goverse_activations_total", &[]), 10);

    // Idle past the type's timeout: the node's idle sweep closes all ten.
    assert_eventually!(registry.scrape().sum("goverse_objects_total", &[]) == 0);
    let scrape = registry.scrape();
    assert_eq!(scrape.sum("goverse_objects_total", &[]), 0);
    assert_eq!(scrape.sum("goverse_deactivations_total", &[]), 10);

    let text = registry.encode();
    assert!(
        text.contains("# TYPE goverse_method_calls_total counter"),
        "{text}"
    );
    assert!(text.contains(
        "goverse_method_calls_total{node=\"127.0.0.1:47000\",object_type=\"Probe\",method_name=\"Append\",status=\"success\"} 10"
    ), "{text}");
    node.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        node.metrics()
            .scrape()
            .samples("goverse_node_stop_duration_seconds")
            .len(),
        1
    );
}
