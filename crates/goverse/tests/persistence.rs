//! Durability, fencing, batched loads and reliable calls, end to end through the public API.
//! The tests run on paused time (SQLite's blocking work holds the clock while it runs); the one
//! on PostgreSQL runs on real time (a real server answers in real time), and so does the one
//! on reliable-call retention (records are stamped with the wall clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use goverse::cluster::MemoryClusterStore;
use goverse::persistence::{
    Fence, MemoryStore, ObjectStore, Refusal, ReliableCall, SqliteStore, StoreError, StoreStatus,
    StoredObject, Write,
};
use goverse::prelude::*;
use goverse::{ReliableOutcome, ReliableStatus};
use goverse_testkit::assert_eventually;

/// How many times methods actually ran, across instances.
#[derive(Debug, Default)]
struct Runs {
    deposits: AtomicUsize,
}

/// A write-through account: every acknowledged deposit is committed.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Account {
    balance: i64,
    #[serde(skip)]
    runs: Option<Arc<Runs>>,
}

impl Object for Account {
    json_state!();
    const DURABILITY: Durability = Durability::WriteThrough;
}

#[goverse::object]
impl Account {
    #[method]
    async fn deposit(&mut self, request: Int64Value) -> Result<Int64Value, ObjectError> {
        if let Some(runs) = &self.runs {
            runs.deposits.fetch_add(1, Ordering::SeqCst);
        }
        if request.value <= 0 {
            return Err(ObjectError::invalid_argument(format!(
                "deposit {} is not positive",
                request.value
            )));
        }
        self.balance += request.value;
        Ok(Int64Value {
            value: self.balance,
        })
    }

    #[method]
    async fn balance(&self, _request: Empty) -> Result<Int64Value, ObjectError> {
        Ok(Int64Value {
            value: self.balance,
        })
    }

    #[method]
    async fn explode(&mut self, _request: Int64Value) -> Result<Empty, ObjectError> {
        self.balance += 1_000_000;
        panic!("explode");
    }
}

/// A periodic type that commits when it chooses, with `ctx.save`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Ledger {
    entries: Vec<i64>,
}

impl Object for Ledger {
    json_state!();
}

#[goverse::object]
impl Ledger {
    #[method]
    async fn record(&mut self, request: Int64Value) -> Result<Empty, ObjectError> {
        self.entries.push(request.value);
        Ok(Empty {})
    }

    /// Records and commits before answering.
    #[method]
    async fn record_now(
        &mut self,
        ctx: &ObjectContext,
        request: Int64Value,
    ) -> Result<Empty, ObjectError> {
        self.entries.push(request.value);
        ctx.save(self).await?;
        Ok(Empty {})
    }
}

/// Not persistent: cannot take reliable calls.
#[derive(Debug, Default)]
struct Volatile;

impl Object for Volatile {}

#[goverse::object]
impl Volatile {
    #[method]
    async fn ping(&mut self, _request: Empty) -> Result<Empty, ObjectError> {
        Ok(Empty {})
    }
}

/// Wraps a store, counting what the node asks of it.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ObjectStore>,
    load_queries: AtomicUsize,
    loaded: AtomicUsize,
    commits: AtomicUsize,
}

impl Counting {
    fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            load_queries: AtomicUsize::new(0),
            loaded: AtomicUsize::new(0),
            commits: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl ObjectStore for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }
    async fn load_many(&self, ids: &[ObjectId]) -> Result<Vec<Option<StoredObject>>, StoreError> {
        self.load_queries.fetch_add(1, Ordering::SeqCst);
        self.loaded.fetch_add(ids.len(), Ordering::SeqCst);
        self.inner.load_many(ids).await
    }
    fn batches_loads(&self) -> bool {
        true
    }
    async fn commit(&self, writes: &[Write<'_>]) -> Result<Vec<Result<(), Refusal>>, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(writes).await
    }
    async fn claim_shards(&self, claims: &[Fence]) -> Result<Vec<u64>, StoreError> {
        self.inner.claim_shards(claims).await
    }
    async fn reliable_calls(
        &self,
        call_ids: &[&str],
    ) -> Result<Vec<Option<ReliableCall>>, StoreError> {
        self.inner.reliable_calls(call_ids).await
    }
    async fn prune_reliable_calls(&self, age: Duration) -> Result<u64, StoreError> {
        self.inner.prune_reliable_calls(age).await
    }
    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.inner.status().await
    }
}

fn config() -> NodeConfig {
    NodeConfig {
        shard_count: 64,
        save_interval: Duration::ZERO,
        ..NodeConfig::default()
    }
}

async fn node_on(store: Arc<dyn ObjectStore>, runs: Arc<Runs>) -> Node {
    node_on_cluster(store, runs, Arc::new(MemoryClusterStore::new())).await
}

async fn node_on_cluster(
    store: Arc<dyn ObjectStore>,
    runs: Arc<Runs>,
    cluster: Arc<MemoryClusterStore>,
) -> Node {
    Node::builder(config())
        .register_with(TypeOptions::<Account>::with_factory(move |_| Account {
            balance: 0,
            runs: Some(runs.clone()),
        }))
        .register::<Ledger>()
        .register::<Volatile>()
        .object_store(store)
        .cluster_store(cluster)
        .start()
        .await
        .expect("node starts")
}

fn balance_in(record: Option<StoredObject>) -> i64 {
    let record = record.expect("a stored record");
    serde_json::from_slice::<serde_json::Value>(&record.data).unwrap()["balance"]
        .as_i64()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn write_through_replies_only_after_the_state_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(SqliteStore::open(dir.path().join("objects.db")).unwrap());
    let node = node_on(store.clone(), Arc::default()).await;
    let account = AccountRef::new("acct-1");
    for i in 1..=5 {
        let total = account
            .deposit(&node, Int64Value { value: 10 })
            .await
            .unwrap();
        assert_eq!(total.value, 10 * i);
        // No periodic save runs (save_interval is zero): the reply means it is stored.
        assert_eq!(
            balance_in(store.load(&ObjectId::from("acct-1")).await.unwrap()),
            10 * i
        );
    }
    // A failing method's changes are committed too (here it changed nothing).
    let err = account
        .deposit(&node, Int64Value { value: -1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_write_through_calls_share_commits() {
    let memory = Arc::new(MemoryStore::new());
    let store = Counting::new(memory.clone());
    let node = node_on(store.clone(), Arc::default()).await;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            AccountRef::new(format!("acct-{}", i % 100))
                .deposit(&node, Int64Value { value: 1 })
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let commits = store.commits.load(Ordering::SeqCst);
    assert!(
        commits < 400,
        "group commit: {commits} commits for 400 writes"
    );
    for i in 0..100 {
        assert_eq!(
            balance_in(
                memory
                    .load(&ObjectId::from(format!("acct-{i}")))
                    .await
                    .unwrap()
            ),
            4
        );
    }
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_through_commit_discards_the_uncommitted_change() {
    let memory = Arc::new(MemoryStore::new());
    let node = node_on(memory.clone(), Arc::default()).await;
    let account = AccountRef::new("acct-f");
    account
        .deposit(&node, Int64Value { value: 5 })
        .await
        .unwrap();
    memory.set_failing(true);
    let err = account
        .deposit(&node, Int64Value { value: 100 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(err.message().contains("not written"), "{err}");
    memory.set_failing(false);
    // The unacknowledged 100 is gone: the activation was discarded and reloads what was stored.
    assert_eq!(account.balance(&node, Empty {}).await.unwrap().value, 5);
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn ctx_save_commits_a_periodic_type_at_the_moment_it_chooses() {
    let memory = Arc::new(MemoryStore::new());
    let node = node_on(memory.clone(), Arc::default()).await;
    let ledger = LedgerRef::new("ledger");
    ledger.record(&node, Int64Value { value: 1 }).await.unwrap();
    assert_eq!(memory.load(&ObjectId::from("ledger")).await.unwrap(), None);
    ledger
        .record_now(&node, Int64Value { value: 2 })
        .await
        .unwrap();
    let stored = memory
        .load(&ObjectId::from("ledger"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.data, br#"{"entries":[1,2]}"#);
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn activations_starting_together_share_load_queries() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn ObjectStore> =
        Arc::new(SqliteStore::open(dir.path().join("objects.db")).unwrap());
    {
        let node = node_on(sqlite.clone(), Arc::default()).await;
        for i in 0..500 {
            AccountRef::new(format!("acct-{i}"))
                .deposit(&node, Int64Value { value: i + 1 })
                .await
                .unwrap();
        }
        node.shutdown(Duration::from_secs(5)).await;
    }
    let store = Counting::new(sqlite);
    let node = node_on(store.clone(), Arc::default()).await;
    let mut tasks = Vec::new();
    for i in 0..500 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let got = AccountRef::new(format!("acct-{i}"))
                .balance(&node, Empty {})
                .await
                .unwrap();
            assert_eq!(got.value, i + 1);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (queries, loaded) = (
        store.load_queries.load(Ordering::SeqCst),
        store.loaded.load(Ordering::SeqCst),
    );
    assert_eq!(loaded, 500);
    assert!(queries < 100, "{queries} queries for 500 activations");
    // Objects that were only read are not written back at shutdown.
    let report = node.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.deactivated, report.saved), (500, 0));
    assert_eq!(store.commits.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_lost_its_shards_cannot_write_even_to_objects_the_new_owner_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(SqliteStore::open(dir.path().join("objects.db")).unwrap());
    let old = node_on(store.clone(), Arc::default()).await;
    AccountRef::new("a")
        .deposit(&old, Int64Value { value: 1 })
        .await
        .unwrap();
    // A second node (its own cluster store: as after a partition, or a restart while the old
    // process is paused) takes every shard. It writes nothing.
    let new = node_on(store.clone(), Arc::default()).await;
    // The old node still believes it owns the shards, and the store refuses it anyway.
    let err = AccountRef::new("b")
        .deposit(&old, Int64Value { value: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(err.message().contains("no longer owns"), "{err}");
    let err = AccountRef::new("a")
        .deposit(&old, Int64Value { value: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(old.stats().fence_refusals >= 2);
    assert_eq!(store.load(&ObjectId::from("b")).await.unwrap(), None);
    assert_eq!(
        balance_in(store.load(&ObjectId::from("a")).await.unwrap()),
        1
    );
    // Its shutdown saves are refused too, and reported.
    let report = old.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.saved, 0);
    assert_eq!(
        AccountRef::new("a")
            .deposit(&new, Int64Value { value: 2 })
            .await
            .unwrap()
            .value,
        3
    );
    new.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_a_fresh_cluster_store_writes_past_the_stored_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.db");
    for round in 1..=3 {
        // Every run starts a new in-memory cluster store at epoch 1, as `goverse demo` does.
        let store: Arc<dyn ObjectStore> = Arc::new(SqliteStore::open(&path).unwrap());
        let node = node_on(store, Arc::default()).await;
        let total = AccountRef::new("acct")
            .deposit(&node, Int64Value { value: 1 })
            .await
            .unwrap();
        assert_eq!(total.value, round);
        let report = node.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.unsaved, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn reliable_calls_run_once_and_replay_their_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.db");
    let runs = Arc::new(Runs::default());
    let store: Arc<dyn ObjectStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let node = node_on(store.clone(), runs.clone()).await;
    let deposit = |value: i64| Payload::typed(Int64Value { value });

    let first = node
        .call_reliable("Account", "w", "Deposit", "call-1", deposit(7))
        .await
        .unwrap();
    assert_eq!(first.status(), ReliableStatus::Success);
    for _ in 0..3 {
        let again = node
            .call_reliable("Account", "w", "Deposit", "call-1", deposit(7))
            .await
            .unwrap();
        assert_eq!(again.status(), ReliableStatus::Success);
        let value = again
            .into_result()
            .unwrap()
            .into_message::<Int64Value>()
            .unwrap();
        assert_eq!(
            value.value, 7,
            "the first call's response, not a second deposit"
        );
    }
    assert_eq!(runs.deposits.load(Ordering::SeqCst), 1);

    // A failure is recorded and replayed as FAILED, without running again.
    let failed = node
        .call_reliable("Account", "w", "Deposit", "call-2", deposit(-5))
        .await
        .unwrap();
    let ReliableOutcome::Failed(err) = failed else {
        panic!("{failed:?}")
    };
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let replay = node
        .call_reliable("Account", "w", "Deposit", "call-2", deposit(-5))
        .await
        .unwrap();
    assert!(matches!(&replay, ReliableOutcome::Failed(e) if e.message() == err.message()));
    assert_eq!(runs.deposits.load(Ordering::SeqCst), 2);

    // The same id for another request, method or object is refused, and nothing runs.
    for (id, method, request) in [
        ("w", "Deposit", deposit(8)),
        ("w", "Balance", Payload::typed(Empty {})),
        ("other", "Deposit", deposit(7)),
    ] {
        let refused = node
            .call_reliable("Account", id, method, "call-1", request)
            .await
            .unwrap();
        let ReliableOutcome::Skipped(err) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        assert!(err.message().contains("already used"), "{err}");
    }
    assert_eq!(runs.deposits.load(Ordering::SeqCst), 2);

    // Typed stubs take reliable calls too.
    let account = AccountRef::new("w");
    let via_stub = account
        .call_reliable("call-3")
        .deposit(&node, Int64Value { value: 3 })
        .await
        .unwrap();
    assert_eq!(via_stub.value, 10);
    assert_eq!(
        account
            .call_reliable("call-3")
            .deposit(&node, Int64Value { value: 3 })
            .await
            .unwrap()
            .value,
        10
    );
    assert_eq!(account.balance(&node, Empty {}).await.unwrap().value, 10);
    node.shutdown(Duration::from_secs(5)).await;

    // After a restart the records are still there: retries still do not run.
    let store: Arc<dyn ObjectStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let node = node_on(store, runs.clone()).await;
    let again = node
        .call_reliable("Account", "w", "Deposit", "call-1", deposit(7))
        .await
        .unwrap();
    assert_eq!(
        again
            .into_result()
            .unwrap()
            .into_message::<Int64Value>()
            .unwrap()
            .value,
        7
    );
    assert_eq!(
        runs.deposits.load(Ordering::SeqCst),
        3,
        "only call-3 ran since"
    );
    assert_eq!(node.stats().reliable_calls, 1);
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn reliable_calls_that_cannot_run_are_skipped_with_the_reason() {
    let memory = Arc::new(MemoryStore::new());
    let node = node_on(memory.clone(), Arc::default()).await;
    let cases = [
        ("Volatile", "v", "Ping", "c1", "not persisted"),
        ("Nope", "x", "Ping", "c2", "unknown object type"),
        ("Account", "a", "Nope", "c3", "no method"),
        ("Account", "a", "Deposit", "", "call id is empty"),
        ("Account", "a", "Deposit", &"x".repeat(300), "limit is 255"),
        ("Account", &"y".repeat(300), "Deposit", "c4", "limit is 255"),
    ];
    for (ty, id, method, call_id, why) in cases {
        let outcome = node
            .call_reliable(
                ty,
                id,
                method,
                call_id,
                Payload::typed(Int64Value { value: 1 }),
            )
            .await
            .unwrap();
        let ReliableOutcome::Skipped(err) = outcome else {
            panic!("{ty}.{method}: {outcome:?}")
        };
        assert!(err.message().contains(why), "{ty}.{method}: {err}");
    }
    // Wrong request type.
    let outcome = node
        .call_reliable("Account", "a", "Deposit", "c5", Payload::typed(Empty {}))
        .await
        .unwrap();
    assert_eq!(outcome.status(), ReliableStatus::Skipped);

    // A commit that fails rolls the call back: SKIPPED, and the retry runs it.
    AccountRef::new("a")
        .deposit(&node, Int64Value { value: 1 })
        .await
        .unwrap();
    memory.set_failing(true);
    let outcome = node
        .call_reliable(
            "Account",
            "a",
            "Deposit",
            "c6",
            Payload::typed(Int64Value { value: 10 }),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status(), ReliableStatus::Skipped, "{outcome:?}");
    memory.set_failing(false);
    let outcome = node
        .call_reliable(
            "Account",
            "a",
            "Deposit",
            "c6",
            Payload::typed(Int64Value { value: 10 }),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome
            .into_result()
            .unwrap()
            .into_message::<Int64Value>()
            .unwrap()
            .value,
        11,
        "applied once"
    );

    // A panic is recorded as FAILED with the state left as stored.
    let outcome = node
        .call_reliable(
            "Account",
            "a",
            "Explode",
            "c7",
            Payload::typed(Int64Value { value: 1 }),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status(), ReliableStatus::Failed);
    assert_eq!(
        AccountRef::new("a")
            .balance(&node, Empty {})
            .await
            .unwrap()
            .value,
        11
    );
    node.shutdown(Duration::from_secs(5)).await;
}

// Real time: a reliable-call record is stamped with the wall clock (it outlives processes), and
// its age is judged by the wall clock, which paused time does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_records_are_pruned_after_the_retention() {
    let memory = Arc::new(MemoryStore::new());
    let node = Node::builder(NodeConfig {
        reliable_call_retention: Duration::from_secs(1),
        ..config()
    })
    .register::<Account>()
    .object_store(memory.clone())
    .start()
    .await
    .unwrap();
    node.call_reliable(
        "Account",
        "p",
        "Deposit",
        "old",
        Payload::typed(Int64Value { value: 1 }),
    )
    .await
    .unwrap();
    assert!(memory.reliable_call("old").await.unwrap().is_some());
    assert_eventually!(
        memory.reliable_call("old").await.unwrap().is_none(),
        Duration::from_secs(10)
    );
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn ids_longer_than_the_store_can_hold_are_refused_everywhere() {
    let node = node_on(Arc::new(MemoryStore::new()), Arc::default()).await;
    let long = "z".repeat(256);
    let err = node
        .call(
            "Account",
            long.as_str(),
            "Balance",
            Payload::typed(Empty {}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.message().contains("limit is 255"), "{err}");
    let err = node
        .create_object("Account", long.as_str())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let err = node
        .delete_object("Account", long.as_str())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_fails_its_check_stops_the_start() {
    let memory = Arc::new(MemoryStore::new());
    memory.set_failing(true);
    let err = Node::builder(config())
        .register::<Account>()
        .object_store(memory)
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("object store"), "{err}");
}

/// Periodic notes: any text a client sends, NULs included.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Notebook {
    lines: Vec<String>,
}

impl Object for Notebook {
    json_state!();
}

#[goverse::object]
impl Notebook {
    #[method]
    async fn write(&mut self, request: StringValue) -> Result<Empty, ObjectError> {
        self.lines.push(request.value);
        Ok(Empty {})
    }

    #[method]
    async fn read(&self, _request: Empty) -> Result<StringValue, ObjectError> {
        Ok(StringValue {
            value: self.lines.join("\n"),
        })
    }
}

/// On a real PostgreSQL: a state with a NUL in its text is stored and read back (JSONB cannot
/// hold one as is); an object whose write the database refuses (here a CHECK constraint refuses
/// one ledger's state) fails alone, named and counted, and every other object's periodic save
/// in the same batches commits; NULs in object and call ids are invalid arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unsaveable_object_fails_alone_and_nul_text_round_trips_on_postgres() {
    use goverse::persistence::{PostgresConfig, PostgresStore};
    let postgres = goverse_testkit::PostgresServer::start();
    postgres.create_database("isolation");
    let store = PostgresStore::connect(&PostgresConfig::new(postgres.url("isolation")))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    postgres.psql(
        "isolation",
        r#"ALTER TABLE goverse_objects ADD CONSTRAINT refuses_666
           CHECK (NOT (data @> '{"entries":[666]}'))"#,
    );
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let start = |store: Arc<dyn ObjectStore>| async move {
        Node::builder(NodeConfig {
            shard_count: 64,
            save_interval: Duration::from_millis(100),
            ..NodeConfig::default()
        })
        .register::<Ledger>()
        .register::<Notebook>()
        .object_store(store)
        .start()
        .await
        .expect("node starts")
    };
    let node = start(store.clone()).await;
    let text = "hi \u{0} there";
    NotebookRef::new("room")
        .write(&node, StringValue { value: text.into() })
        .await
        .unwrap();
    LedgerRef::new("poisoned")
        .record(&node, Int64Value { value: 666 })
        .await
        .unwrap();
    for i in 0..30 {
        LedgerRef::new(format!("ledger-{i}"))
            .record(&node, Int64Value { value: i })
            .await
            .unwrap();
    }
    // Every other object is saved by the periodic saves; the refused one is counted.
    let saved = || async {
        let ids: Vec<ObjectId> = (0..30)
            .map(|i| ObjectId::from(format!("ledger-{i}")))
            .chain([ObjectId::from("room")])
            .collect();
        store
            .load_many(&ids)
            .await
            .unwrap()
            .iter()
            .filter(|o| o.is_some())
            .count()
    };
    assert_eventually!(saved().await == 31, Duration::from_secs(20));
    assert_eventually!(node.stats().unsaveable_writes >= 1, Duration::from_secs(20));
    assert_eq!(store.load(&ObjectId::from("poisoned")).await.unwrap(), None);

    // NULs in ids are the caller's mistake, said so, not an internal error.
    let err = node
        .call(
            "Ledger",
            "a\u{0}b",
            "Record",
            Payload::typed(Int64Value { value: 1 }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(err.message().contains("control character"), "{err}");
    // A reliable call refused before it runs is reported as skipped, with the reason's code.
    let outcome = node
        .call_reliable(
            "Ledger",
            "ledger-0",
            "Record",
            "call\u{0}id",
            Payload::typed(Int64Value { value: 1 }),
        )
        .await
        .unwrap();
    let ReliableOutcome::Skipped(err) = outcome else {
        panic!("refused before running: {outcome:?}");
    };
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(err.message().contains("control character"), "{err}");

    // At shutdown only the refused object stays unsaved.
    let report = node.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.unsaved, 1, "{report:?}");
    let node = start(store.clone()).await;
    let read = NotebookRef::new("room")
        .read(&node, Empty {})
        .await
        .unwrap();
    assert_eq!(read.value, text);
    node.shutdown(Duration::from_secs(5)).await;
}

/// An object id belongs to one type: asking for it as another gets `AlreadyExists`, whether the
/// object is active or only stored, and for calls and creates alike.
#[tokio::test(start_paused = true)]
async fn another_type_is_refused_alike_whether_the_object_is_active_or_stored() {
    let memory: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let node = node_on(memory.clone(), Arc::default()).await;
    AccountRef::new("owned")
        .deposit(&node, Int64Value { value: 5 })
        .await
        .unwrap();
    let check = |err: CallError, state: &str| {
        assert_eq!(err.code(), ErrorCode::AlreadyExists, "{state}: {err}");
        assert!(
            err.message()
                .contains("already exists with type \"Account\""),
            "{state}: {err}"
        );
    };
    let as_ledger = |node: Node| async move {
        LedgerRef::new("owned")
            .record(&node, Int64Value { value: 1 })
            .await
            .unwrap_err()
    };
    check(as_ledger(node.clone()).await, "active, call");
    check(
        node.create_object("Ledger", "owned").await.unwrap_err(),
        "active, create",
    );
    node.shutdown(Duration::from_secs(5)).await;
    // Only stored now.
    let node = node_on(memory, Arc::default()).await;
    check(as_ledger(node.clone()).await, "stored, call");
    check(
        node.create_object("Ledger", "owned").await.unwrap_err(),
        "stored, create",
    );
    // The refused attempts left nothing behind: the object answers as what it is.
    let balance = AccountRef::new("owned")
        .balance(&node, Empty {})
        .await
        .unwrap();
    assert_eq!(balance.value, 5);
    node.shutdown(Duration::from_secs(5)).await;
}

/// Upstream's `max_idle_conns` on a real PostgreSQL: a burst opens the pool's connections, and
/// once idle past the idle timeout those beyond `max_idle` are closed (the pool stays usable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_postgres_connections_beyond_max_idle_are_closed() {
    use goverse::persistence::{PostgresConfig, PostgresStore};
    let postgres = goverse_testkit::PostgresServer::start();
    postgres.create_database("idle");
    let mut config = PostgresConfig::new(postgres.url("idle"));
    config.pool_size = 4;
    config.max_idle = Some(1);
    config.idle_timeout = Duration::from_millis(300);
    let store = PostgresStore::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    // Many loads at once take more than one connection (each waits on the server).
    let ids: Vec<ObjectId> = (0..32).map(|i| ObjectId::from(format!("o{i}"))).collect();
    let loads = ids.iter().map(|id| store.load(id));
    for loaded in futures::future::join_all(loads).await {
        assert!(loaded.unwrap().is_none());
    }
    let (open, _) = store.connections();
    assert!(open > 1, "the burst used {open} connection(s)");
    assert_eventually!(store.connections().0 == 1, Duration::from_secs(10));
    assert!(
        store
            .load(&ObjectId::from("after"))
            .await
            .unwrap()
            .is_none()
    );
}
