//! The client crate against real gates: a node serving its objects over the node service, gates
//! linked to it serving gRPC on loopback ports, and `goverse::client::Client` calling them
//! through typed stubs, by name, reliably, and receiving pushes, across gate stops and restarts.
//!
//! Real time throughout (loopback sockets answer in real time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use goverse::client::{Client, PushEvent, Pushes, ReliableError};
use goverse::gate::{AuthError, ConnectRequest, Gate, GateConfig, GateEventHandler, Principal};
use goverse::prelude::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A counter with a slow method.
#[derive(Debug, Default)]
struct Tally {
    value: i64,
}
impl Object for Tally {}

#[goverse::object]
impl Tally {
    #[method]
    async fn add(&mut self, request: Int64Value) -> Result<Int64Value, ObjectError> {
        self.value += request.value;
        Ok(Int64Value { value: self.value })
    }

    /// Sleeps `request` milliseconds.
    #[method]
    async fn sleep(&self, request: Int64Value) -> Result<Empty, ObjectError> {
        tokio::time::sleep(Duration::from_millis(request.value.unsigned_abs())).await;
        Ok(Empty {})
    }
}

/// A persistent purse, for reliable calls.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Purse {
    coins: i64,
}
impl Object for Purse {
    goverse::json_state!();
}

#[goverse::object]
impl Purse {
    #[method]
    async fn put(&mut self, request: Int64Value) -> Result<Int64Value, ObjectError> {
        if request.value < 0 {
            return Err(ObjectError::invalid_argument("no negative coins"));
        }
        self.coins += request.value;
        Ok(Int64Value { value: self.coins })
    }
}

/// Says who calls it and pushes back to the caller.
#[derive(Debug, Default)]
struct Echo;
impl Object for Echo {}

#[goverse::object]
impl Echo {
    /// The caller's "client_id|user_id".
    #[method]
    async fn whoami(
        &self,
        ctx: &ObjectContext,
        _request: Empty,
    ) -> Result<StringValue, ObjectError> {
        let value = ctx.client().map_or_else(
            || "none".to_owned(),
            |c| format!("{}|{}", c.client_id(), c.user_id()),
        );
        Ok(StringValue { value })
    }

    /// Pushes `request` to the calling client.
    #[method]
    async fn push_me(
        &self,
        ctx: &ObjectContext,
        request: StringValue,
    ) -> Result<Empty, ObjectError> {
        let client = ctx
            .client()
            .map(|c| c.client_id().to_owned())
            .unwrap_or_default();
        ctx.push(&client, request)?;
        Ok(Empty {})
    }
}

/// Lets in clients with `authorization: Bearer <user>`.
#[derive(Debug)]
struct Bearer;

#[async_trait::async_trait]
impl GateEventHandler for Bearer {
    async fn authorize(&self, request: &ConnectRequest<'_>) -> Result<Principal, AuthError> {
        let user = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| AuthError::unauthenticated("missing bearer token"))?;
        Ok(Principal {
            user_id: user.to_owned(),
            roles: Vec::new(),
        })
    }
}

/// One node on a loopback port.
struct Cluster {
    node: Node,
    node_addr: SocketAddr,
    stop: CancellationToken,
}

impl Cluster {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node_addr = listener.local_addr().unwrap();
        let node = Node::builder(NodeConfig {
            address: node_addr.to_string(),
            shard_count: 64,
            ..NodeConfig::default()
        })
        .register::<Tally>()
        .register::<Purse>()
        .register::<Echo>()
        .object_store(Arc::new(goverse::persistence::MemoryStore::new()))
        .start()
        .await
        .unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(goverse::serve(
            node.clone(),
            listener,
            stop.clone().cancelled_owned(),
        ));
        Self {
            node,
            node_addr,
            stop,
        }
    }

    /// A gate linked to the node, serving gRPC on `listener` until it is stopped.
    async fn gate_on(&self, listener: TcpListener) -> ServedGate {
        let addr = listener.local_addr().unwrap();
        let config = GateConfig {
            advertise_address: addr.to_string(),
            node: self.node_addr.to_string(),
            ..GateConfig::default()
        };
        let gate = Gate::start(config, Arc::new(Bearer)).unwrap();
        assert!(gate.wait_connected(Duration::from_secs(10)).await);
        let stop = CancellationToken::new();
        let served = tokio::spawn({
            let gate = gate.clone();
            let stop = stop.clone();
            async move { gate.serve_grpc(listener, stop.cancelled_owned()).await }
        });
        ServedGate {
            gate,
            addr,
            stop,
            served,
        }
    }

    async fn gate(&self) -> ServedGate {
        self.gate_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
            .await
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.node.shutdown(Duration::from_secs(5)).await;
    }
}

struct ServedGate {
    gate: Gate,
    addr: SocketAddr,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServedGate {
    /// Stops the gate as its process does at SIGTERM: the gRPC port drains, then the gate.
    async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap().unwrap();
        self.gate.shutdown(Duration::from_secs(5)).await;
    }
}

/// The next event within 10 s.
async fn next(pushes: &mut Pushes) -> PushEvent {
    tokio::time::timeout(Duration::from_secs(10), pushes.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
}

fn connected(event: PushEvent) -> (String, String) {
    match event {
        PushEvent::Connected { gate, client_id } => (gate, client_id),
        other => panic!("expected Connected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stubs_names_reliable_calls_deadlines_and_pushes_through_a_client() {
    let cluster = Cluster::start().await;
    let gate = cluster.gate().await;
    let client = Client::builder([gate.addr.to_string()])
        .bearer_token("alice")
        .build();

    // The stubs the macro generates, over the gate.
    let tally = TallyRef::new("t1");
    assert_eq!(
        tally.add(&client, Int64Value { value: 2 }).await.unwrap(),
        Int64Value { value: 2 }
    );
    assert_eq!(client.gate(), Some(gate.addr.to_string()));
    // By name.
    let total: Int64Value = client
        .call("Tally", "t1", "Add", Int64Value { value: 3 })
        .await
        .unwrap();
    assert_eq!(total.value, 5);
    // Mistakes come back with their codes and say what was wrong.
    let err = client
        .call::<Empty, Empty>("Tally", "t1", "Nope", Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
    assert!(err.message().contains("Nope"), "{err}");
    let err = client
        .call::<Empty, Empty>("Tally", "shard#x/t", "Add", Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    let err = client
        .call::<Empty, Int64Value>("Tally", "t1", "Add", Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    // No token: the gate's hook refuses.
    let stranger = Client::builder([gate.addr.to_string()]).build();
    let err = tally
        .add(&stranger, Int64Value { value: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthenticated, "{err}");

    // Deadlines per handle and per stub reach the gate and the node.
    let started = Instant::now();
    let err = client
        .with_timeout(Duration::from_millis(300))
        .call::<Int64Value, Empty>("Tally", "t2", "Sleep", Int64Value { value: 3000 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let err = TallyRef::new("t3")
        .with_timeout(Duration::from_millis(300))
        .sleep(&client, Int64Value { value: 3000 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");
    client
        .with_timeout(Duration::from_secs(5))
        .call::<Int64Value, Empty>("Tally", "t2", "Sleep", Int64Value { value: 50 })
        .await
        .unwrap();

    // Reliable calls: the same call id runs once; a recorded failure stays a failure.
    let id = goverse::client::new_call_id();
    let purse = PurseRef::new("p1").call_reliable(id.as_str());
    for _ in 0..2 {
        assert_eq!(
            purse.put(&client, Int64Value { value: 5 }).await.unwrap(),
            Int64Value { value: 5 }
        );
    }
    let other = goverse::client::new_call_id();
    let once: Int64Value = client
        .call_reliable("Purse", "p1", "Put", Int64Value { value: 1 }, &other)
        .await
        .unwrap();
    assert_eq!(once.value, 6);
    let bad = goverse::client::new_call_id();
    for _ in 0..2 {
        let err = client
            .call_reliable::<_, Int64Value>("Purse", "p1", "Put", Int64Value { value: -1 }, &bad)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ReliableError::Failed(e) if e.code() == ErrorCode::InvalidArgument),
            "{err}"
        );
    }
    let err = client
        .call_reliable::<_, Int64Value>("Purse", "p1", "Put", Int64Value { value: 1 }, "")
        .await
        .unwrap_err();
    assert!(matches!(err, ReliableError::Refused(_)), "{err}");

    // Create, delete (clients may not, by default), describe.
    client.create("Tally", "made").await.unwrap();
    let err = client.delete("Tally", "made").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied, "{err}");
    let described = client.describe().await.unwrap();
    let names: Vec<&str> = described.types.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"Purse") && names.contains(&"Echo"),
        "{names:?}"
    );

    // Pushes: the registration binds the client's calls.
    let mut pushes = client.register().await.unwrap();
    let (at, client_id) = connected(next(&mut pushes).await);
    assert_eq!(at, gate.addr.to_string());
    let me = EchoRef::new("e").whoami(&client, Empty {}).await.unwrap();
    assert_eq!(me.value, format!("{client_id}|alice"));
    EchoRef::new("e")
        .push_me(
            &client,
            StringValue {
                value: "hello".into(),
            },
        )
        .await
        .unwrap();
    let pushed = next(&mut pushes).await;
    assert_eq!(
        pushed.decode::<StringValue>().unwrap().unwrap().value,
        "hello"
    );
    assert!(pushed.decode::<Int64Value>().is_none());
    // A refused client cannot register.
    let err = stranger.register().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthenticated, "{err}");

    drop(pushes);
    gate.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_another_gate_when_its_gate_stops_and_back_after_a_restart() {
    let cluster = Cluster::start().await;
    let a = cluster.gate().await;
    let b = cluster.gate().await;
    let a_addr = a.addr;
    let retries = Arc::new(AtomicU32::new(0));
    let client = Client::builder([a.addr.to_string(), b.addr.to_string()])
        .bearer_token("bob")
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .on_retry({
            let retries = retries.clone();
            move |_| {
                retries.fetch_add(1, Ordering::SeqCst);
            }
        })
        .connect()
        .await
        .unwrap();
    let tally = TallyRef::new("moving");
    tally.add(&client, Int64Value { value: 1 }).await.unwrap();
    let mut pushes = client.register().await.unwrap();
    let (at, first_id) = connected(next(&mut pushes).await);
    assert_eq!(at, a.addr.to_string());

    // The gate stops: the push stream hears UNAVAILABLE (not a quiet end), registers at the
    // other gate, and calls follow.
    a.stop().await;
    match next(&mut pushes).await {
        PushEvent::Disconnected { gate, error } => {
            assert_eq!(gate, a_addr.to_string());
            assert_eq!(error.code(), ErrorCode::Unavailable, "{error}");
            assert!(error.message().contains("shutting down"), "{error}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let (at, second_id) = connected(next(&mut pushes).await);
    assert_eq!(at, b.addr.to_string());
    assert_ne!(first_id, second_id);
    assert_eq!(
        tally
            .add(&client, Int64Value { value: 1 })
            .await
            .unwrap()
            .value,
        2
    );
    assert_eq!(client.gate(), Some(b.addr.to_string()));
    let me = EchoRef::new("e").whoami(&client, Empty {}).await.unwrap();
    assert_eq!(me.value, format!("{second_id}|bob"));

    // The first gate comes back on its port; the second stops: back to the first.
    let a = cluster
        .gate_on(TcpListener::bind(a_addr).await.unwrap())
        .await;
    b.stop().await;
    assert!(matches!(
        next(&mut pushes).await,
        PushEvent::Disconnected { .. }
    ));
    let (at, _) = connected(next(&mut pushes).await);
    assert_eq!(at, a_addr.to_string());
    assert_eq!(
        tally
            .add(&client, Int64Value { value: 1 })
            .await
            .unwrap()
            .value,
        3
    );

    // A reliable call started while no gate is up is retried with its call id until one is
    // back, and runs once.
    let a_stopped = a.stop();
    a_stopped.await;
    assert!(matches!(
        next(&mut pushes).await,
        PushEvent::Disconnected { .. }
    ));
    let call_id = goverse::client::new_call_id();
    let reliable = tokio::spawn({
        let client = client.with_timeout(Duration::from_millis(500));
        let call_id = call_id.clone();
        async move {
            PurseRef::new("p")
                .call_reliable(call_id.as_str())
                .put(&client, Int64Value { value: 7 })
                .await
        }
    });
    goverse_testkit::assert_eventually!(
        retries.load(Ordering::SeqCst) >= 2,
        Duration::from_secs(20)
    );
    let a = cluster
        .gate_on(TcpListener::bind(a_addr).await.unwrap())
        .await;
    assert_eq!(reliable.await.unwrap().unwrap().value, 7);
    let again = PurseRef::new("p")
        .call_reliable(call_id.as_str())
        .put(&client, Int64Value { value: 7 })
        .await
        .unwrap();
    assert_eq!(again.value, 7, "the retried call ran once");

    drop(pushes);
    a.stop().await;
    cluster.shutdown().await;
}
