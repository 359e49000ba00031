//! End-to-end tests of the gate: a node serving its objects over the node service, a gate linked
//! to it, and clients over gRPC (the generated upstream-compatible client), HTTP and SSE.
//!
//! Real time throughout: every test talks over loopback sockets (and some to a real etcd), whose
//! answers come in real time; paused time would jump over deadlines while a socket is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use goverse::gate::rules::{Access, AccessRule, Lifecycle, LifecycleRule};
use goverse::gate::{
    AllowAnonymous, AuthError, ConnectRequest, Gate, GateConfig, GateEventHandler, Principal,
};
use goverse::prelude::*;
use goverse::prost::Message as _;
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_proto::gate::{
    CallObjectRequest, CreateObjectRequest, DeleteObjectRequest, Empty as GateEmpty,
    RegisterResponse, ReliableCallObjectRequest,
};
use goverse_testkit::assert_eventually;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// A counter.
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
}

/// A persistent counter, for reliable calls.
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

/// Reports and pushes to whoever calls it.
#[derive(Debug, Default)]
struct Notifier;
impl Object for Notifier {}

#[goverse::object]
impl Notifier {
    /// "client_id|user_id|roles" of the caller.
    #[method]
    async fn whoami(
        &self,
        ctx: &ObjectContext,
        _request: Empty,
    ) -> Result<StringValue, ObjectError> {
        let value = match ctx.client() {
            Some(c) => format!(
                "{}|{}|{}",
                c.client_id(),
                c.user_id(),
                c.roles().collect::<Vec<_>>().join(",")
            ),
            None => "none".to_owned(),
        };
        Ok(StringValue { value })
    }

    /// Pushes `request` back to the calling client `times` (from the text's length) times.
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

    /// Pushes `request` to every client.
    #[method]
    async fn broadcast(
        &self,
        ctx: &ObjectContext,
        request: StringValue,
    ) -> Result<Empty, ObjectError> {
        ctx.broadcast(request);
        Ok(Empty {})
    }
}

struct Setup {
    node: Node,
    gate: Gate,
    grpc: SocketAddr,
    http: SocketAddr,
    stop: CancellationToken,
}

impl Setup {
    async fn start(config: GateConfig, handler: Arc<dyn GateEventHandler>) -> Self {
        Self::start_linked(config, handler, false).await
    }

    /// `local`: the gate links to the node in-process (`Gate::start_local`) instead of over the
    /// node service.
    async fn start_linked(
        mut config: GateConfig,
        handler: Arc<dyn GateEventHandler>,
        local: bool,
    ) -> Self {
        let node_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node_addr = node_listener.local_addr().unwrap();
        let node = Node::builder(NodeConfig {
            address: node_addr.to_string(),
            shard_count: 64,
            ..NodeConfig::default()
        })
        .register::<Tally>()
        .register::<Notifier>()
        .register::<Purse>()
        .object_store(Arc::new(goverse::persistence::MemoryStore::new()))
        .start()
        .await
        .unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(goverse::serve(
            node.clone(),
            node_listener,
            stop.clone().cancelled_owned(),
        ));

        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        config.advertise_address = grpc.to_string();
        config.node = node_addr.to_string();
        let gate = if local {
            Gate::start_local(config, handler, node.handler()).unwrap()
        } else {
            Gate::start(config, handler).unwrap()
        };
        assert!(
            gate.wait_connected(Duration::from_secs(10)).await,
            "gate reaches the node"
        );
        let g = gate.clone();
        tokio::spawn({
            let stop = stop.clone();
            async move { g.serve_grpc(grpc_listener, stop.cancelled_owned()).await }
        });
        let g = gate.clone();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                g.serve_http(http_listener, g.http_router(), stop.cancelled_owned())
                    .await
            }
        });
        Setup {
            node,
            gate,
            grpc,
            http,
            stop,
        }
    }

    async fn plain() -> Self {
        Self::start(GateConfig::default(), Arc::new(AllowAnonymous)).await
    }

    async fn grpc_client(&self) -> GateServiceClient<Channel> {
        GateServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.gate.shutdown(Duration::from_secs(5)).await;
        self.node.shutdown(Duration::from_secs(5)).await;
    }
}

fn type_url<M: goverse::prost::Name>() -> String {
    format!("{}{}", goverse::TYPE_URL_PREFIX, M::full_name())
}

fn any<M: goverse::prost::Message + goverse::prost::Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url::<M>(),
        value: m.encode_to_vec(),
    }
}

fn call(
    client_id: &str,
    t: &str,
    id: &str,
    method: &str,
    request: prost_types::Any,
) -> CallObjectRequest {
    CallObjectRequest {
        client_id: client_id.to_owned(),
        r#type: t.to_owned(),
        id: id.to_owned(),
        method: method.to_owned(),
        request: Some(request),
    }
}

async fn register(
    client: &mut GateServiceClient<Channel>,
) -> (String, tonic::Streaming<prost_types::Any>) {
    let mut stream = client.register(GateEmpty {}).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.type_url, "type.googleapis.com/gate.RegisterResponse");
    let id = RegisterResponse::decode(first.value.as_slice())
        .unwrap()
        .client_id;
    (id, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_register_call_and_push() {
    register_call_and_push(Setup::plain().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_gate_register_call_and_push() {
    let s = Setup::start_linked(GateConfig::default(), Arc::new(AllowAnonymous), true).await;
    assert_eq!(s.gate.config().node, s.node.address().to_string());
    // The catalog comes from the node directly: plain JSON works over HTTP.
    let response = reqwest::Client::new()
        .post(s.url("/api/v1/objects/call/Tally/json/Add"))
        .body(r#"{"value":"4"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"value": "4"})
    );
    register_call_and_push(s).await;
}

async fn register_call_and_push(s: Setup) {
    let mut client = s.grpc_client().await;
    let (client_id, mut pushes) = register(&mut client).await;
    assert!(
        client_id.starts_with(&format!("{}/", s.grpc)),
        "{client_id}"
    );

    for expected in [5, 12] {
        let response = client
            .call_object(call(
                &client_id,
                "Tally",
                "t1",
                "Add",
                any(&Int64Value {
                    value: if expected == 5 { 5 } else { 7 },
                }),
            ))
            .await
            .unwrap()
            .into_inner();
        let any = response.response.unwrap();
        assert_eq!(any.type_url, type_url::<Int64Value>());
        assert_eq!(
            Int64Value::decode(any.value.as_slice()).unwrap().value,
            expected
        );
    }

    // The object sees the client bound to the connection, even when the request names none.
    let who = client
        .call_object(call("", "Notifier", "n", "Whoami", any(&Empty {})))
        .await
        .unwrap()
        .into_inner()
        .response
        .unwrap();
    assert_eq!(
        StringValue::decode(who.value.as_slice()).unwrap().value,
        format!("{client_id}||")
    );

    client
        .call_object(call(
            &client_id,
            "Notifier",
            "n",
            "PushMe",
            any(&StringValue {
                value: "hello".into(),
            }),
        ))
        .await
        .unwrap();
    let pushed = pushes.message().await.unwrap().unwrap();
    assert_eq!(pushed.type_url, type_url::<StringValue>());
    assert_eq!(
        StringValue::decode(pushed.value.as_slice()).unwrap().value,
        "hello"
    );

    // push_many sends to every routable id and names the others.
    let unrouted = s.node.push_many(
        [client_id.as_str(), "127.0.0.1:1/gone", "no-gate-part"],
        StringValue {
            value: "to many".into(),
        },
    );
    let codes: Vec<_> = unrouted
        .iter()
        .map(|(id, e)| (id.as_str(), e.code()))
        .collect();
    assert_eq!(
        codes,
        [
            ("127.0.0.1:1/gone", ErrorCode::NotFound),
            ("no-gate-part", ErrorCode::InvalidArgument)
        ]
    );
    let pushed = pushes.message().await.unwrap().unwrap();
    assert_eq!(
        StringValue::decode(pushed.value.as_slice()).unwrap().value,
        "to many"
    );

    // Create and reliable call; delete is internal by default.
    let created = client
        .create_object(CreateObjectRequest {
            r#type: "Tally".into(),
            id: "t2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.id, "t2");
    let reliable = client
        .reliable_call_object(ReliableCallObjectRequest {
            call_id: "c-1".into(),
            r#type: "Purse".into(),
            id: "p2".into(),
            method: "Put".into(),
            request: Some(any(&Int64Value { value: 3 })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reliable.status, "SUCCESS");
    assert_eq!(
        Int64Value::decode(reliable.response.unwrap().value.as_slice())
            .unwrap()
            .value,
        3
    );
    let denied = client
        .delete_object(DeleteObjectRequest {
            id: "t2".into(),
            r#type: "Tally".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    drop(pushes);
    assert_eventually!(s.gate.stats().clients == 0);
    s.stop().await;
}

fn reliable(
    call_id: &str,
    t: &str,
    id: &str,
    method: &str,
    value: i64,
) -> ReliableCallObjectRequest {
    ReliableCallObjectRequest {
        call_id: call_id.to_owned(),
        r#type: t.to_owned(),
        id: id.to_owned(),
        method: method.to_owned(),
        request: Some(any(&Int64Value { value })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_calls_over_the_node_link_run_once() {
    reliable_calls_run_once(Setup::plain().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_calls_through_an_in_process_gate_run_once() {
    let s = Setup::start_linked(GateConfig::default(), Arc::new(AllowAnonymous), true).await;
    reliable_calls_run_once(s).await;
}

async fn reliable_calls_run_once(s: Setup) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut client = s.grpc_client().await;
    let answer = |r: goverse_proto::gate::ReliableCallObjectResponse| {
        let value = r
            .response
            .map(|a| Int64Value::decode(a.value.as_slice()).unwrap().value);
        (r.status, value, r.error)
    };
    // Run once, replayed on retries (upstream's stress test replays 30% of its calls).
    for _ in 0..3 {
        let r = client
            .reliable_call_object(reliable("g-1", "Purse", "p", "Put", 5))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer(r), ("SUCCESS".into(), Some(5), String::new()));
    }
    // A failure is recorded: FAILED, and FAILED again without running.
    for _ in 0..2 {
        let r = client
            .reliable_call_object(reliable("g-2", "Purse", "p", "Put", -1))
            .await
            .unwrap()
            .into_inner();
        let (status, value, error) = answer(r);
        assert_eq!((status.as_str(), value), ("FAILED", None));
        assert!(error.contains("no negative coins"), "{error}");
    }
    // Refusals are SKIPPED, in the response, with the reason.
    for (request, why) in [
        (reliable("", "Purse", "p", "Put", 1), "call_id is empty"),
        (reliable("g-3", "Tally", "t", "Add", 1), "not persisted"),
        (
            reliable("g-4", "Nope", "p", "Put", 1),
            "unknown object type",
        ),
        (reliable("g-5", "Purse", "p", "Nope", 1), "no method"),
        (reliable("g-1", "Purse", "p", "Put", 6), "already used"),
        (
            reliable("g-6", "Purse", &"x".repeat(300), "Put", 1),
            "limit is 255",
        ),
    ] {
        let r = client
            .reliable_call_object(request)
            .await
            .unwrap()
            .into_inner();
        let (status, _, error) = answer(r);
        assert_eq!(status, "SKIPPED", "{why}: {error}");
        assert!(error.contains(why), "{why}: {error}");
    }

    // HTTP: the envelope's call_id, or an Idempotency-Key with a plain JSON body.
    let http = reqwest::Client::new();
    let envelope = |value: i64| {
        serde_json::json!({
            "request": b64.encode(any(&Int64Value { value }).encode_to_vec()),
            "call_id": "h-1",
        })
    };
    for _ in 0..2 {
        let response = http
            .post(s.url("/api/v1/objects/call/Purse/p/Put"))
            .json(&envelope(10))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-reliable-call-status"], "SUCCESS");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "SUCCESS");
        let bytes = b64.decode(body["response"].as_str().unwrap()).unwrap();
        let any = prost_types::Any::decode(bytes.as_slice()).unwrap();
        assert_eq!(Int64Value::decode(any.value.as_slice()).unwrap().value, 15);
    }
    for _ in 0..2 {
        let response = http
            .post(s.url("/api/v1/objects/call/Purse/p/Put"))
            .header("Idempotency-Key", "h-2")
            .body(r#"{"value":"100"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-reliable-call-status"], "SUCCESS");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"value": "115"}));
    }
    let response = http
        .post(s.url("/api/v1/objects/call/Purse/p/Put"))
        .header("Idempotency-Key", "h-3")
        .body(r#"{"value":"-4"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-reliable-call-status"], "FAILED");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "FAILED");
    let response = http
        .post(s.url("/api/v1/objects/call/Tally/t/Add"))
        .header("Idempotency-Key", "h-4")
        .body(r#"{"value":"1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-reliable-call-status"], "SKIPPED");
    // Plain calls are unaffected: the purse holds 115, once.
    let response = http
        .post(s.url("/api/v1/objects/call/Purse/p/Put"))
        .body(r#"{"value":"0"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"value": "115"})
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_act_as_another() {
    let s = Setup::plain().await;
    let mut alice = s.grpc_client().await;
    let (alice_id, _alice_pushes) = register(&mut alice).await;
    // A second connection.
    let mut mallory = s.grpc_client().await;
    let err = mallory
        .call_object(call(&alice_id, "Notifier", "n", "Whoami", any(&Empty {})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("not registered on this connection"),
        "{}",
        err.message()
    );
    let err = mallory
        .call_object(call(
            "127.0.0.1:1/nobody",
            "Notifier",
            "n",
            "Whoami",
            any(&Empty {}),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Over HTTP: the id alone is not enough.
    let http = reqwest::Client::new();
    let r = http
        .post(s.url("/api/v1/objects/call/Notifier/n/Whoami"))
        .header("X-Client-ID", &alice_id)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHENTICATED");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_input_gets_clear_errors() {
    let s = Setup::start(
        GateConfig {
            max_body_bytes: 64 * 1024,
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .await;
    let mut client = s.grpc_client().await;
    let cases: Vec<(CallObjectRequest, Code, &str)> = vec![
        (
            call("", "Nope", "x", "Add", any(&Int64Value { value: 1 })),
            Code::NotFound,
            "Nope",
        ),
        (
            call("", "Tally", "x", "Nope", any(&Int64Value { value: 1 })),
            Code::NotFound,
            "Nope",
        ),
        (
            call(
                "",
                "Tally",
                "x",
                "Add",
                any(&StringValue { value: "a".into() }),
            ),
            Code::InvalidArgument,
            "google.protobuf.StringValue",
        ),
        (
            call(
                "",
                "Tally",
                "x",
                "Add",
                prost_types::Any {
                    type_url: type_url::<Int64Value>(),
                    value: vec![0xff, 0xff, 0xff],
                },
            ),
            Code::InvalidArgument,
            "Int64Value",
        ),
        (
            call("", "Tally", "", "Add", any(&Int64Value { value: 1 })),
            Code::InvalidArgument,
            "object id",
        ),
        (
            // Longer than any store's column (upstream's is VARCHAR(255)).
            call(
                "",
                "Tally",
                &"i".repeat(60_000),
                "Add",
                any(&Int64Value { value: 1 }),
            ),
            Code::InvalidArgument,
            "limit is 255",
        ),
        (
            call(
                "",
                "Tally",
                "shard#x/y",
                "Add",
                any(&Int64Value { value: 1 }),
            ),
            Code::InvalidArgument,
            "shard#x/y",
        ),
        (
            call("", "", "x", "Add", any(&Int64Value { value: 1 })),
            Code::InvalidArgument,
            "type",
        ),
    ];
    for (request, code, needle) in cases {
        let what = format!("{}/{}.{}", request.r#type, request.id, request.method);
        let err = client.call_object(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            err.message()
        );
    }
    let huge = StringValue {
        value: "x".repeat(100 * 1024),
    };
    let err = client
        .call_object(call("", "Notifier", "n", "PushMe", any(&huge)))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    // Still serving.
    let ok = client
        .call_object(call("", "Tally", "x", "Add", any(&Int64Value { value: 2 })))
        .await
        .unwrap();
    assert!(ok.into_inner().response.is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_envelopes_plain_json_and_lifecycle() {
    let s = Setup::start(
        GateConfig {
            lifecycle_rules: vec![LifecycleRule {
                object_type: "Tally".into(),
                id: "/del-.*/".into(),
                lifecycle: Lifecycle::Delete,
                access: Access::Allow,
            }],
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .await;
    let http = reqwest::Client::new();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;

    // Upstream's envelope.
    let envelope =
        serde_json::json!({ "request": b64.encode(any(&Int64Value { value: 4 }).encode_to_vec()) });
    let r = http
        .post(s.url("/api/v1/objects/call/Tally/h1/Add"))
        .json(&envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let bytes = b64.decode(body["response"].as_str().unwrap()).unwrap();
    let response = prost_types::Any::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        Int64Value::decode(response.value.as_slice()).unwrap().value,
        4
    );

    // Plain JSON both ways (64-bit integers are strings in protobuf's JSON mapping).
    let r = http
        .post(s.url("/api/v1/objects/call/Tally/h1/Add"))
        .body(r#"{"value": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"value": "9"})
    );

    // IDs with '/' when percent-encoded.
    let r = http
        .post(s.url("/api/v1/objects/call/Tally/shard%233%2Froom/Add"))
        .body(r#"{"value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert!(s.node.is_active(&ObjectId::new("shard#3/room")));

    let r = http
        .post(s.url("/api/v1/objects/create/Tally/del-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"id": "del-1"})
    );
    let r = http
        .post(s.url("/api/v1/objects/delete/Tally/del-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"success": true})
    );
    let r = http
        .post(s.url("/api/v1/objects/delete/Tally/h1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "ACCESS_DENIED"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input_gets_clear_errors() {
    let s = Setup::start(
        GateConfig {
            max_body_bytes: 1024,
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .await;
    let http = reqwest::Client::new();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/api/v1/objects/call/Tally/x/Add",
            r#"{"request": "!!!"}"#.into(),
            400,
            "INVALID_BASE64",
        ),
        (
            "/api/v1/objects/call/Tally/x/Add",
            r#"{"request": "////"}"#.into(),
            400,
            "INVALID_PROTOBUF",
        ),
        (
            "/api/v1/objects/call/Tally/x/Add",
            r#"{"value": "#.into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "/api/v1/objects/call/Tally/x/Add",
            r#"{"valu": 1}"#.into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "/api/v1/objects/call/Nope/x/Add",
            "{}".into(),
            404,
            "NOT_FOUND",
        ),
        (
            "/api/v1/objects/call/Tally/x/Nope",
            "{}".into(),
            404,
            "NOT_FOUND",
        ),
        (
            "/api/v1/objects/call/Tally/x/Add",
            "x".repeat(2048),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "/api/v1/objects/call/Tally/x",
            "{}".into(),
            404,
            "INVALID_PATH",
        ),
        (
            "/api/v1/objects/call/Tally/%FF/Add",
            "{}".into(),
            400,
            "INVALID_PATH",
        ),
        (
            "/api/v1/objects/call/Tally/shard%23x%2Fy/Add",
            "{}".into(),
            400,
            "INVALID_ARGUMENT",
        ),
    ];
    for (path, body, status, code) in cases {
        let r = http.post(s.url(path)).body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let json: serde_json::Value = r.json().await.unwrap();
        assert_eq!(json["code"], code, "{path}: {json}");
        assert!(!json["error"].as_str().unwrap().is_empty());
    }
    // An id nobody registered: with a token it is a registration that is gone (404); without
    // one it proves nothing and names nobody (upstream's HTTP clients make ids up), and the call
    // acts for nobody in particular.
    let r = http
        .post(s.url("/api/v1/objects/call/Tally/x/Add"))
        .header("X-Client-ID", "g/none")
        .header("X-Client-Token", "t")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(s.url("/api/v1/objects/call/Notifier/n/Whoami"))
        .header("X-Client-ID", "client-made-up")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["value"], "||", "{body}");
    let r = http
        .get(s.url("/api/v1/objects/call/Tally/x/Add"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Still serving.
    let r = http
        .post(s.url("/api/v1/objects/call/Tally/x/Add"))
        .body(r#"{"value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

/// Reads SSE events (name, data) from a response body.
struct Events {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    fn new(r: reqwest::Response) -> Self {
        Self {
            body: Box::pin(r.bytes_stream()),
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> (String, serde_json::Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                return (name, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")
                .expect("stream open")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_register_push_and_heartbeat() {
    let s = Setup::start(
        GateConfig {
            heartbeat_interval: Duration::from_millis(200),
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .await;
    let http = reqwest::Client::new();
    let r = http
        .get(s.url("/api/v1/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(r);
    let (name, data) = events.next().await;
    assert_eq!(name, "register");
    let client_id = data["clientId"].as_str().unwrap().to_owned();
    let token = data["token"].as_str().unwrap().to_owned();

    let r = http
        .post(s.url("/api/v1/objects/call/Notifier/n/PushMe"))
        .header("X-Client-ID", &client_id)
        .header("X-Client-Token", &token)
        .body(r#"{"value": "hi there"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let mut saw = (false, 0);
    while !saw.0 || saw.1 < 2 {
        let (name, data) = events.next().await;
        match name.as_str() {
            "message" => {
                assert_eq!(data["type"], type_url::<StringValue>());
                assert_eq!(data["json"], serde_json::json!({"value": "hi there"}));
                saw.0 = true;
            }
            "heartbeat" => saw.1 += 1,
            other => panic!("unexpected event {other}"),
        }
    }
    drop(events);
    assert_eventually!(s.gate.stats().clients == 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_are_enforced_for_grpc_and_http() {
    let s = Setup::start(
        GateConfig {
            access_rules: vec![
                AccessRule {
                    object_type: "Tally".into(),
                    id: "/pub-.*/".into(),
                    method: "Add".into(),
                    access: Access::Allow,
                },
                AccessRule {
                    object_type: "Notifier".into(),
                    id: String::new(),
                    method: "Whoami".into(),
                    access: Access::External,
                },
            ],
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .await;
    let mut client = s.grpc_client().await;
    assert!(
        client
            .call_object(call(
                "",
                "Tally",
                "pub-1",
                "Add",
                any(&Int64Value { value: 1 })
            ))
            .await
            .is_ok()
    );
    assert!(
        client
            .call_object(call("", "Notifier", "n", "Whoami", any(&Empty {})))
            .await
            .is_ok()
    );
    for (t, id, m) in [
        ("Tally", "priv-1", "Add"),
        ("Tally", "xpub-1", "Add"),
        ("Notifier", "n", "PushMe"),
    ] {
        let err = client
            .call_object(call("", t, id, m, any(&Empty {})))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{t}/{id}.{m}");
        let r = reqwest::Client::new()
            .post(s.url(&format!("/api/v1/objects/call/{t}/{id}/{m}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{t}/{id}.{m}");
    }
    s.stop().await;
}

/// Admits clients presenting `authorization: Bearer <user>`, as that user with role "player".
#[derive(Default)]
struct BearerAuth {
    disconnects: AtomicUsize,
}

#[async_trait::async_trait]
impl GateEventHandler for BearerAuth {
    async fn authorize(&self, request: &ConnectRequest<'_>) -> Result<Principal, AuthError> {
        let user = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| AuthError::unauthenticated("missing bearer token"))?;
        Ok(Principal {
            user_id: user.to_owned(),
            roles: vec!["player".to_owned()],
        })
    }

    async fn on_disconnect(&self, _client: &ClientIdentity) {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_authenticates_and_learns_of_disconnects() {
    let auth = Arc::new(BearerAuth::default());
    let s = Setup::start(GateConfig::default(), auth.clone()).await;
    let mut client = s.grpc_client().await;
    let err = client.register(GateEmpty {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .call_object(call("", "Notifier", "n", "Whoami", any(&Empty {})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut request = tonic::Request::new(GateEmpty {});
    request
        .metadata_mut()
        .insert("authorization", "Bearer alice".parse().unwrap());
    let mut stream = client.register(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let client_id = RegisterResponse::decode(first.value.as_slice())
        .unwrap()
        .client_id;
    // Calls on the connection act as alice without presenting the token again.
    let who = client
        .call_object(call(&client_id, "Notifier", "n", "Whoami", any(&Empty {})))
        .await
        .unwrap()
        .into_inner()
        .response
        .unwrap();
    assert_eq!(
        StringValue::decode(who.value.as_slice()).unwrap().value,
        format!("{client_id}|alice|player")
    );
    drop(stream);
    assert_eventually!(auth.disconnects.load(Ordering::SeqCst) == 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_loses_pushes_alone() {
    let s = Setup::start(
        GateConfig {
            client_buffer: 8,
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .await;
    let mut slow = s.grpc_client().await;
    let (_slow_id, slow_pushes) = register(&mut slow).await;
    let mut fast = s.grpc_client().await;
    let (_fast_id, mut fast_pushes) = register(&mut fast).await;

    // The fast client reads as it goes; the slow one reads nothing.
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < 300 {
            fast_pushes.message().await.unwrap().unwrap();
            got += 1;
        }
        got
    });
    // Large messages, so the slow client's connection buffers fill and its gate buffer with them.
    let big = StringValue {
        value: "x".repeat(16 * 1024),
    };
    for _ in 0..300 {
        fast.call_object(call("", "Notifier", "n", "Broadcast", any(&big)))
            .await
            .unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, 300);
    assert_eventually!(s.gate.stats().pushes_dropped_full >= 100);
    assert_eq!(s.node.stats().pushes_dropped, 0);
    drop(slow_pushes);
    s.stop().await;
}

/// Three nodes on a real etcd behind two gates: every call through either gate reaches the node
/// serving its object; the caller's identity is the same on every node; pushes from any node
/// reach a client on its own gate; broadcasts reach the clients of every gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gates_route_calls_and_pushes_across_three_nodes() {
    let etcd = goverse_testkit::EtcdServer::start();
    let mut cluster = goverse_testkit::TestCluster::builder()
        .etcd(etcd.endpoint())
        .tcp()
        .types(|node| node.register::<Tally>().register::<Notifier>())
        .configure(|config| config.stability_window = Duration::from_millis(300))
        .start(3)
        .await;
    let nodes: Vec<Node> = cluster.nodes().into_iter().cloned().collect();
    assert_eventually!(
        nodes.iter().all(|n| n.stats().owned_shards >= 21),
        Duration::from_secs(20)
    );
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (gate, grpc) = cluster.add_served_gate(GateConfig::default()).await;
        assert_eventually!(gate.is_linked_to_all(), Duration::from_secs(10));
        clients.push(
            GateServiceClient::connect(format!("http://{grpc}"))
                .await
                .unwrap(),
        );
    }
    assert_eventually!(nodes[0].cluster_map().gates.len() == 2);

    let (first_id, mut first_pushes) = register(&mut clients[0]).await;
    let (_second_id, mut second_pushes) = register(&mut clients[1]).await;
    let map = nodes[0].cluster_map();
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..24 {
        let id = format!("n{i}");
        owners.insert(
            map.owner(goverse::shard_of(&ObjectId::from(id.as_str()), 64).unwrap())
                .unwrap()
                .clone(),
        );
        // Calls through either gate reach the object.
        for client in clients.iter_mut() {
            let reply = client
                .call_object(call(
                    "",
                    "Tally",
                    &format!("t{i}"),
                    "Add",
                    any(&Int64Value { value: 1 }),
                ))
                .await
                .unwrap()
                .into_inner()
                .response
                .unwrap();
            assert!(Int64Value::decode(reply.value.as_slice()).unwrap().value >= 1);
        }
        // The object on whichever node sees the caller the gate authenticated, and its push
        // comes back through the caller's gate.
        let who = clients[0]
            .call_object(call("", "Notifier", &id, "Whoami", any(&Empty {})))
            .await
            .unwrap()
            .into_inner()
            .response
            .unwrap();
        assert_eq!(
            StringValue::decode(who.value.as_slice()).unwrap().value,
            format!("{first_id}||")
        );
        clients[0]
            .call_object(call(
                "",
                "Notifier",
                &id,
                "PushMe",
                any(&StringValue { value: id.clone() }),
            ))
            .await
            .unwrap();
        let push = tokio::time::timeout(Duration::from_secs(5), first_pushes.message())
            .await
            .expect("push arrives")
            .unwrap()
            .unwrap();
        assert_eq!(
            StringValue::decode(push.value.as_slice()).unwrap().value,
            id
        );
    }
    assert_eq!(owners.len(), 3, "the objects live on every node");

    // A broadcast from one node reaches the clients of both gates.
    clients[1]
        .call_object(call(
            "",
            "Notifier",
            "n0",
            "Broadcast",
            any(&StringValue {
                value: "all".into(),
            }),
        ))
        .await
        .unwrap();
    for pushes in [&mut first_pushes, &mut second_pushes] {
        let push = tokio::time::timeout(Duration::from_secs(5), pushes.message())
            .await
            .expect("broadcast arrives")
            .unwrap()
            .unwrap();
        assert_eq!(
            StringValue::decode(push.value.as_slice()).unwrap().value,
            "all"
        );
    }

    cluster.shutdown().await;
}

/// A node with a cluster secret admits only peers that present it: a raw client without it and a
/// gate with the wrong one are refused (`Unauthenticated`, and the gate never links); a gate
/// with it links and calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_cluster_secret_admits_only_peers_that_present_it() {
    use goverse_proto::node::DescribeRequest;
    use goverse_proto::node::node_service_client::NodeServiceClient;
    const SECRET: &str = "correct-horse-battery-staple";
    let (node, node_addr, stop) = node_with_secret(SECRET).await;
    let node_addr = node_addr.to_string();

    let mut raw = NodeServiceClient::connect(format!("http://{node_addr}"))
        .await
        .unwrap();
    let err = raw.describe(DescribeRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let mut forged = tonic::Request::new(DescribeRequest {});
    forged
        .metadata_mut()
        .insert("goverse-peer-secret", "guess".parse().unwrap());
    let err = raw.describe(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    let gate_with = |secret: &str| {
        Gate::start(
            GateConfig {
                node: node_addr.clone(),
                advertise_address: format!("127.0.0.1:{}", goverse_testkit::free_port()),
                peer_secret: Some(secret.to_owned()),
                ..GateConfig::default()
            },
            Arc::new(AllowAnonymous),
        )
        .unwrap()
    };
    let impostor = gate_with("not-the-cluster-secret");
    assert!(!impostor.wait_connected(Duration::from_millis(800)).await);
    assert!(node.connected_gates().is_empty(), "no stream opened");
    let gate = gate_with(SECRET);
    assert!(gate.wait_connected(Duration::from_secs(10)).await);
    assert_eq!(node.connected_gates().len(), 1);

    impostor.shutdown(Duration::from_secs(1)).await;
    gate.shutdown(Duration::from_secs(1)).await;
    stop.cancel();
    node.shutdown(Duration::from_secs(5)).await;
}

/// A second link under the address of a connected gate never takes over its pushes: it is
/// refused while the first is linked, and gets in once the first has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_link_cannot_take_over_a_connected_gate_s_pushes() {
    let s = Setup::plain().await;
    let mut client = s.grpc_client().await;
    let (client_id, mut pushes) = register(&mut client).await;
    let twin = Gate::start(
        GateConfig {
            advertise_address: s.gate.config().advertise_address.clone(),
            node: s.gate.config().node.clone(),
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .unwrap();
    assert!(!twin.wait_connected(Duration::from_millis(800)).await);
    // The real gate's client still gets its pushes.
    client
        .call_object(call(
            &client_id,
            "Notifier",
            "n",
            "PushMe",
            any(&StringValue {
                value: "still mine".into(),
            }),
        ))
        .await
        .unwrap();
    let push = tokio::time::timeout(Duration::from_secs(5), pushes.message())
        .await
        .expect("push arrives")
        .unwrap()
        .unwrap();
    assert_eq!(
        StringValue::decode(push.value.as_slice()).unwrap().value,
        "still mine"
    );
    // Once the real gate has gone, a gate under its address (a restarted one) links.
    s.gate.shutdown(Duration::from_secs(5)).await;
    assert!(twin.wait_connected(Duration::from_secs(10)).await);
    twin.shutdown(Duration::from_secs(1)).await;
    s.stop().await;
}

/// A gate of a cluster reports ready only while its registration is renewed and the map holds
/// its quorum: etcd stopped, it turns not ready within its serving window; etcd back, ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_gate_is_ready_only_while_its_lease_is_renewed_and_its_quorum_holds() {
    let mut etcd = goverse_testkit::EtcdServer::start();
    let mut cluster = goverse_testkit::TestCluster::builder()
        .etcd(etcd.endpoint())
        .tcp()
        .types(|node| node.register::<Tally>())
        .shards(16)
        .configure(|config| {
            config.lease_ttl = Duration::from_secs(1);
            config.stability_window = Duration::from_millis(200);
        })
        .start(1)
        .await;
    let gate = cluster
        .add_served_gate(GateConfig {
            min_quorum: 1,
            ..GateConfig::default()
        })
        .await
        .0;
    assert_eventually!(gate.is_ready(), Duration::from_secs(10));
    // A quorum of two is not met by one node.
    // The map the gate starts with already holds the one node.
    let (waiting, _) = cluster
        .add_served_gate(GateConfig {
            min_quorum: 2,
            ..GateConfig::default()
        })
        .await;
    let why = waiting.readiness().unwrap_err();
    assert_eq!(
        why,
        goverse::gate::NotReady::BelowQuorum {
            nodes: 1,
            quorum: 2
        }
    );

    etcd.stop();
    assert_eventually!(!gate.is_ready(), Duration::from_secs(3));
    let why = gate.readiness().unwrap_err();
    assert!(
        matches!(why, goverse::gate::NotReady::RegistrationStale { .. }),
        "{why}"
    );
    etcd.start_again();
    assert_eventually!(gate.is_ready(), Duration::from_secs(20));
    // The node's watch on etcd ended with it and was set up again, counted as upstream counts
    // it.
    let reconnected = || {
        cluster.node(0).metrics().scrape().sum(
            "goverse_watch_reconnections_total",
            &[("outcome", "reconnected")],
        )
    };
    assert_eventually!(reconnected() >= 1, Duration::from_secs(20));
    cluster.shutdown().await;
}

/// One cause, one code, on every entry point: each bad request goes through gRPC, the HTTP
/// envelope and plain JSON over HTTP, and gets the same code (gRPC status, HTTP status and
/// error name) everywhere, with an error text of bounded length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cause_gets_one_code_through_grpc_the_http_envelope_and_plain_json() {
    use base64::Engine as _;
    let s = Setup::start(
        GateConfig {
            max_body_bytes: 8192,
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .await;
    let mut client = s.grpc_client().await;
    let http = reqwest::Client::new();
    // The object "taken" is a Tally; asking for it as a Purse is one error, whatever the entry.
    client
        .call_object(call(
            "",
            "Tally",
            "taken",
            "Add",
            any(&Int64Value { value: 1 }),
        ))
        .await
        .unwrap();

    struct Case {
        what: &'static str,
        object_type: &'static str,
        id: String,
        method: &'static str,
        request: prost_types::Any,
        plain: String,
        grpc: Code,
        http: u16,
        name: &'static str,
    }
    let add = || any(&Int64Value { value: 1 });
    let huge_type_url = format!("type.googleapis.com/{}", "x".repeat(5000));
    let cases = vec![
        Case {
            what: "unknown type",
            object_type: "Nope",
            id: "x".into(),
            method: "Add",
            request: add(),
            plain: r#"{"value":"1"}"#.into(),
            grpc: Code::NotFound,
            http: 404,
            name: "NOT_FOUND",
        },
        Case {
            what: "unknown method",
            object_type: "Tally",
            id: "x".into(),
            method: "Nope",
            request: add(),
            plain: r#"{"value":"1"}"#.into(),
            grpc: Code::NotFound,
            http: 404,
            name: "NOT_FOUND",
        },
        Case {
            what: "a NUL in the id",
            object_type: "Tally",
            id: "a\u{0}b".into(),
            method: "Add",
            request: add(),
            plain: r#"{"value":"1"}"#.into(),
            grpc: Code::InvalidArgument,
            http: 400,
            name: "INVALID_ARGUMENT",
        },
        Case {
            what: "an id past 255 characters",
            object_type: "Tally",
            id: "z".repeat(300),
            method: "Add",
            request: add(),
            plain: r#"{"value":"1"}"#.into(),
            grpc: Code::InvalidArgument,
            http: 400,
            name: "INVALID_ARGUMENT",
        },
        Case {
            what: "a malformed shard prefix",
            object_type: "Tally",
            id: "shard#x/y".into(),
            method: "Add",
            request: add(),
            plain: r#"{"value":"1"}"#.into(),
            grpc: Code::InvalidArgument,
            http: 400,
            name: "INVALID_ARGUMENT",
        },
        Case {
            what: "an id taken by another type",
            object_type: "Purse",
            id: "taken".into(),
            method: "Put",
            request: add(),
            plain: r#"{"value":"1"}"#.into(),
            grpc: Code::AlreadyExists,
            http: 409,
            name: "ALREADY_EXISTS",
        },
        Case {
            what: "a request of another message type, with a huge type url",
            object_type: "Tally",
            id: "x".into(),
            method: "Add",
            request: prost_types::Any {
                type_url: huge_type_url.clone(),
                value: Vec::new(),
            },
            plain: r#"{"valu":"1"}"#.into(),
            grpc: Code::InvalidArgument,
            http: 400,
            name: "INVALID_ARGUMENT",
        },
    ];
    for case in &cases {
        let what = case.what;
        let status = client
            .call_object(call(
                "",
                case.object_type,
                &case.id,
                case.method,
                case.request.clone(),
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), case.grpc, "gRPC, {what}: {status}");
        assert!(
            status.message().len() < 1024,
            "gRPC, {what}: {} bytes",
            status.message().len()
        );

        // The path carries the id percent-encoded.
        let path = format!(
            "/api/v1/objects/call/{}/{}/{}",
            case.object_type,
            utf8_percent(&case.id),
            case.method
        );
        let envelope = serde_json::json!({
            "request": base64::engine::general_purpose::STANDARD.encode(case.request.encode_to_vec())
        })
        .to_string();
        for (form, body) in [("envelope", envelope), ("plain JSON", case.plain.clone())] {
            let r = http.post(s.url(&path)).body(body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), case.http, "HTTP {form}, {what}");
            let text = r.text().await.unwrap();
            assert!(
                text.len() < 1024,
                "HTTP {form}, {what}: {} bytes",
                text.len()
            );
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(json["code"], case.name, "HTTP {form}, {what}: {json}");
        }
    }

    // Too large: RESOURCE_EXHAUSTED on gRPC (not OUT_OF_RANGE), 413 on HTTP.
    let big = any(&StringValue {
        value: "b".repeat(16384),
    });
    let status = client
        .call_object(call("", "Tally", "x", "Add", big.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    let r = http
        .post(s.url("/api/v1/objects/call/Tally/x/Add"))
        .body("x".repeat(16384))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Reliable calls: an empty call id, or one with a control character, is refused before
    // anything runs, as SKIPPED invalid argument, on both protocols (an empty Idempotency-Key
    // header included: it is not a plain call).
    for call_id in ["", "bad\u{1}id"] {
        let reply = client
            .reliable_call_object(ReliableCallObjectRequest {
                call_id: call_id.to_owned(),
                r#type: "Purse".into(),
                id: "p".into(),
                method: "Put".into(),
                request: Some(add()),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, "SKIPPED", "{call_id:?}: {reply:?}");
        assert!(
            reply.error.contains("call id") || reply.error.contains("call_id"),
            "{reply:?}"
        );
        if let Ok(header) = reqwest::header::HeaderValue::from_str(call_id) {
            let r = http
                .post(s.url("/api/v1/objects/call/Purse/p/Put"))
                .header("Idempotency-Key", header)
                .body(r#"{"value":"1"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{call_id:?}");
            let json: serde_json::Value = r.json().await.unwrap();
            assert_eq!(json["status"], "SKIPPED", "{call_id:?}: {json}");
        }
    }
    s.stop().await;
}

/// Percent-encodes every byte outside unreserved characters, as a client puts an id in a path.
fn utf8_percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The node checks what gates send for their clients against the cluster's rules again: a gate
/// with no rules (misconfigured, or someone else's) still cannot let a client take an ID the
/// rules keep for another type, by call, reliable call or create; calls of objects among
/// themselves are not client requests and are not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_checks_gate_requests_against_the_rules_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = listener.local_addr().unwrap().to_string();
    let node = Node::builder(NodeConfig {
        address: node_addr.clone(),
        shard_count: 64,
        access_rules: vec![
            AccessRule {
                object_type: "Tally".into(),
                id: "/Purse.*/".into(),
                method: String::new(),
                access: Access::Reject,
            },
            AccessRule {
                object_type: "/Tally|Purse/".into(),
                id: String::new(),
                method: String::new(),
                access: Access::Allow,
            },
        ],
        lifecycle_rules: vec![LifecycleRule {
            object_type: "Tally".into(),
            id: "/Purse.*/".into(),
            lifecycle: Lifecycle::Create,
            access: Access::Reject,
        }],
        ..NodeConfig::default()
    })
    .register::<Tally>()
    .register::<Purse>()
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
    // A gate with no rules at all: it lets everything through.
    let gate = Gate::start(
        GateConfig {
            node: node_addr,
            advertise_address: format!("127.0.0.1:{}", goverse_testkit::free_port()),
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .unwrap();
    assert!(gate.wait_connected(Duration::from_secs(10)).await);
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap();
    tokio::spawn({
        let gate = gate.clone();
        let stop = stop.clone();
        async move { gate.serve_grpc(grpc_listener, stop.cancelled_owned()).await }
    });
    let mut client = GateServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let err = client
        .call_object(call(
            "",
            "Tally",
            "Purse-alice",
            "Add",
            any(&Int64Value { value: 1 }),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = client
        .create_object(CreateObjectRequest {
            r#type: "Tally".into(),
            id: "Purse-bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let reply = client
        .reliable_call_object(ReliableCallObjectRequest {
            call_id: "r-1".into(),
            r#type: "Tally".into(),
            id: "Purse-carol".into(),
            method: "Add".into(),
            request: Some(any(&Int64Value { value: 1 })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, "SKIPPED", "{reply:?}");
    assert!(reply.error.contains("access denied"), "{reply:?}");
    // What the rules allow goes through, and the purse's ID is still free for a purse.
    client
        .call_object(call(
            "",
            "Tally",
            "t-1",
            "Add",
            any(&Int64Value { value: 1 }),
        ))
        .await
        .unwrap();
    client
        .call_object(call(
            "",
            "Purse",
            "Purse-alice",
            "Put",
            any(&Int64Value { value: 2 }),
        ))
        .await
        .unwrap();
    // The node's own callers are not clients: not checked.
    TallyRef::new("Purse-internal")
        .add(&node, Int64Value { value: 1 })
        .await
        .unwrap();
    stop.cancel();
    gate.shutdown(Duration::from_secs(1)).await;
    node.shutdown(Duration::from_secs(5)).await;
}

/// A gate that cannot reach its node (here: it presents the wrong cluster secret) says so, with
/// the node and the cause, as `Unavailable`, on HTTP and gRPC, instead of "unknown object
/// type", which reads as permanent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_cannot_reach_its_node_names_the_node_and_the_cause() {
    let (node, node_addr, stop) = node_with_secret("the-right-cluster-secret").await;
    let node_addr = node_addr.to_string();
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc, http) = (
        grpc_listener.local_addr().unwrap(),
        http_listener.local_addr().unwrap(),
    );
    let gate = Gate::start(
        GateConfig {
            node: node_addr.clone(),
            advertise_address: grpc.to_string(),
            peer_secret: Some("a-wrong-cluster-secret".to_owned()),
            call_timeout: Duration::from_millis(500),
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )
    .unwrap();
    tokio::spawn({
        let (gate, stop) = (gate.clone(), stop.clone());
        async move { gate.serve_grpc(grpc_listener, stop.cancelled_owned()).await }
    });
    tokio::spawn({
        let (gate, stop) = (gate.clone(), stop.clone());
        async move {
            gate.serve_http(http_listener, gate.http_router(), stop.cancelled_owned())
                .await
        }
    });
    let http_client = reqwest::Client::new();
    let url = format!("http://{http}/api/v1/objects/call/Tally/t/Add");
    assert_eventually!(
        http_client
            .post(&url)
            .body(r#"{"value":"1"}"#)
            .send()
            .await
            .unwrap()
            .status()
            == 503,
        Duration::from_secs(10)
    );
    let json: serde_json::Value = http_client
        .post(&url)
        .body(r#"{"value":"1"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message = json["error"].as_str().unwrap();
    assert!(
        message.contains(&node_addr) && message.contains("secret"),
        "{json}"
    );
    let mut client = GateServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let status = client
        .call_object(call("", "Tally", "t", "Add", any(&Int64Value { value: 1 })))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert!(
        status.message().contains(&node_addr) && status.message().contains("secret"),
        "{status}"
    );
    stop.cancel();
    gate.shutdown(Duration::from_secs(1)).await;
    node.shutdown(Duration::from_secs(5)).await;
}

/// Upstream's node RPCs on the node port (`goverse.Goverse`): `Status` and `ListObjects` with
/// upstream's message shapes, behind the cluster secret; its other calls are not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_answer_upstream_status_and_list_objects_behind_the_secret() {
    use goverse_proto::upstream::Empty;
    use goverse_proto::upstream::goverse_client::GoverseClient;
    const SECRET: &str = "the-cluster-secret-of-this-test";
    let (node, addr, stop) = node_with_secret(SECRET).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for id in ["t1", "t2", "t3"] {
        TallyRef::new(id)
            .add(&node, Int64Value { value: 1 })
            .await
            .unwrap();
    }
    let mut client = GoverseClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let refused = client.status(Empty {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let with_secret = || {
        let mut request = tonic::Request::new(Empty {});
        request
            .metadata_mut()
            .insert("goverse-peer-secret", SECRET.parse().unwrap());
        request
    };
    let status = client.status(with_secret()).await.unwrap().into_inner();
    assert_eq!(status.advertise_addr, addr.to_string());
    assert_eq!(status.num_objects, 3);
    assert!((0..60).contains(&status.uptime_seconds), "{status:?}");
    let listed = client
        .list_objects(with_secret())
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<(String, String)> = listed
        .objects
        .iter()
        .map(|o| (o.r#type.clone(), o.id.clone()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [("Tally", "t1"), ("Tally", "t2"), ("Tally", "t3")]
            .map(|(t, i)| (t.to_owned(), i.to_owned()))
    );
    for object in &listed.objects {
        assert!(
            (before - 1..=before + 60).contains(&object.creation_time),
            "{object:?} made around {before}"
        );
    }
    stop.cancel();
    node.shutdown(Duration::from_secs(5)).await;
}

/// A minimal reading of pprof's `perftools.profiles.Profile`: its samples and string table.
#[derive(Clone, PartialEq, prost::Message)]
struct PprofProfile {
    #[prost(message, repeated, tag = "2")]
    sample: Vec<PprofSample>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PprofSample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

#[inline(never)]
fn burn_cpu_for_the_profile(until: std::time::Instant) -> u64 {
    let mut x = 0u64;
    while std::time::Instant::now() < until {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
    }
    x
}

/// Profiles on demand: a CPU profile in pprof's protobuf format with the process's busy
/// function in it, and a memory summary, only with the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profiles_and_memory_summaries_are_served_to_the_admin_token_only() {
    const TOKEN: &str = "an-admin-token-for-this-test";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(goverse::gate::serve_router(
        listener,
        goverse::gate::profiling_router(TOKEN.into()),
        goverse::ConnectionLimits::default(),
        "profiles",
        stop.clone().cancelled_owned(),
        || {},
    ));
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    for path in ["/debug/pprof/profile?seconds=1", "/debug/pprof/heap"] {
        let refused = client.get(url(path)).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{path}");
        let wrong = client
            .get(url(path))
            .bearer_auth("not-the-token-at-all")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
    let heap: serde_json::Value = client
        .get(url("/debug/pprof/heap"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(heap["bytes"]["VmRSS"].as_u64().unwrap() > 1 << 20, "{heap}");

    let busy = std::thread::spawn(|| {
        burn_cpu_for_the_profile(std::time::Instant::now() + Duration::from_millis(1500))
    });
    let response = client
        .get(url("/debug/pprof/profile?seconds=1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    busy.join().unwrap();
    let profile = <PprofProfile as prost::Message>::decode(bytes.as_ref()).unwrap();
    assert!(!profile.sample.is_empty(), "no samples");
    assert!(
        profile
            .string_table
            .iter()
            .any(|s| s.contains("burn_cpu_for_the_profile")),
        "the busy function is not in the profile: {:?}",
        &profile.string_table[..profile.string_table.len().min(40)]
    );
    let bad = client
        .get(url("/debug/pprof/profile?seconds=0"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    stop.cancel();
}

/// A node of `Tally` objects whose peers must present `secret`, serving on a loopback port
/// until the token is cancelled.
async fn node_with_secret(secret: &str) -> (Node, SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Node::builder(NodeConfig {
        address: addr.to_string(),
        shard_count: 64,
        peer_secret: Some(secret.to_owned()),
        ..NodeConfig::default()
    })
    .register::<Tally>()
    .start()
    .await
    .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(goverse::serve(
        node.clone(),
        listener,
        stop.clone().cancelled_owned(),
    ));
    (node, addr, stop)
}
