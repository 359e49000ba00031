//! The client half against the server half over loopback TCP: responses find their callers by
//! id whatever order they finish in, a node that never answers fails the call once its deadline
//! and the margin have passed (the link keeps no timer per request), a node that goes away
//! fails what waits on it, and requests to one object start in the order they were sent even
//! when the node shares large batches out over its threads. Those run on real time (loopback
//! sockets answer in real time); the in-process network's tests run on paused time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use goverse_core::{CallError, ErrorCode};
use goverse_proto::node::{DescribeResponse, Push, response};
use goverse_testkit::assert_eventually;
use goverse_transport::{
    Handler, LinkError, LinkEvents, NodeLink, Op, Outcome, PeerRefused, PeerSink, Request,
};
use tokio_util::sync::CancellationToken;

/// Answers a call after the number of milliseconds its method names (`"25"`), with the object
/// ID as the value's type URL; never answers `"never"`.
struct Sleepy;

impl Handler for Sleepy {
    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Op::Call { method, .. } = request.op else {
                return Err(CallError::invalid_argument("calls only"));
            };
            if method == "never" {
                std::future::pending::<()>().await;
            }
            let millis: u64 = method
                .parse()
                .map_err(|_| CallError::invalid_argument(method))?;
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok(response::Result::Value(prost_types::Any {
                type_url: request.object_id.to_owned(),
                value: Vec::new(),
            }))
        })
    }

    fn describe(&self) -> DescribeResponse {
        DescribeResponse::default()
    }

    fn peer_opened(&self, _peer: Arc<str>, _sink: PeerSink) -> Result<(), PeerRefused> {
        Ok(())
    }

    fn peer_closed(&self, _peer: &str, _serial: u64) {}
}

struct Quiet;

impl LinkEvents for Quiet {
    fn connected(&self, _described: &DescribeResponse) {}
    fn pushed(&self, _push: Push) {}
}

fn call<'a>(id: &'a str, method: &'a str) -> Request<'a> {
    Request {
        object_type: "Sleepy",
        object_id: id,
        op: Op::Call {
            method,
            request: None,
            reliable_call_id: None,
        },
        chain: None,
        timeout: None,
        caller: None,
        from_client: false,
    }
}

/// A node serving [`Sleepy`] on a runtime of its own, as if in another process: its address,
/// and the switch that kills it (every task and socket of that runtime dropped at once, no
/// drain, as kill -9 would).
fn killable_node() -> (String, std::sync::mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            goverse_transport::serve(Arc::new(Sleepy), listener, std::future::pending()).await
        });
        let _ = killed.recv();
        runtime.shutdown_background();
    });
    (address, kill)
}

/// A link to the node at `address`, connected, running until `stop`.
async fn link_to(address: String, stop: CancellationToken) -> Arc<NodeLink> {
    let link = NodeLink::remote(address);
    tokio::spawn(
        link.clone()
            .run("127.0.0.1:1".into(), Arc::new(Quiet), stop),
    );
    assert_eventually!(link.is_connected());
    link
}

/// A node serving [`Sleepy`] until `stop`, and a connected link to it.
async fn linked(stop: &CancellationToken) -> Arc<NodeLink> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(goverse_transport::serve(
        Arc::new(Sleepy),
        listener,
        stop.clone().cancelled_owned(),
    ));
    link_to(address, stop.child_token()).await
}

fn object_of(outcome: Outcome) -> String {
    match outcome {
        Ok(response::Result::Value(any)) => any.type_url,
        other => panic!("not a value: {other:?}"),
    }
}

#[tokio::test]
async fn responses_find_their_callers_whatever_order_they_finish_in() {
    let stop = CancellationToken::new();
    let link = linked(&stop).await;
    let calls = (0..200).map(|i| {
        let link = link.clone();
        async move {
            let (id, millis) = (format!("object-{i}"), ((200 - i) % 40).to_string());
            let got = object_of(
                link.request(call(&id, &millis), Duration::from_secs(5))
                    .await,
            );
            assert_eq!(got, id);
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(link.in_flight(), 0);
    stop.cancel();
}

#[tokio::test]
async fn a_node_that_never_answers_fails_the_call_after_its_deadline_and_the_margin() {
    let stop = CancellationToken::new();
    let link = linked(&stop).await;
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        link.request(call("stuck", "never"), Duration::from_millis(300)),
    )
    .await
    .expect("the link never gave up")
    .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");
    assert!(
        err.message().contains("did not answer within 300ms"),
        "{err}"
    );
    // Not before the deadline and the margin for the trip back (500 ms), nor long after.
    assert!(took >= Duration::from_millis(800), "gave up after {took:?}");
    assert!(took < Duration::from_secs(3), "gave up only after {took:?}");
    // The link forgot it, and serves the next call.
    assert_eq!(link.in_flight(), 0);
    assert_eq!(
        object_of(
            link.request(call("next", "0"), Duration::from_secs(5))
                .await
        ),
        "next"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_node_that_goes_away_fails_the_calls_waiting_on_it() {
    let (address, kill) = killable_node();
    let stop = CancellationToken::new();
    let link = link_to(address, stop.clone()).await;
    let waiting = tokio::spawn({
        let link = link.clone();
        async move {
            link.request(call("left", "never"), Duration::from_secs(60))
                .await
        }
    });
    assert_eventually!(link.in_flight() == 1);
    kill.send(()).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the call still waits on a dead node")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(err.message().contains("was lost"), "{err}");
    stop.cancel();
}

/// Records, per object, the order its calls started in (the method names a sequence number).
#[derive(Default)]
struct Recorder {
    started: parking_lot::Mutex<std::collections::HashMap<String, Vec<u64>>>,
}

impl Handler for Recorder {
    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Op::Call { method, .. } = request.op else {
                return Err(CallError::invalid_argument("calls only"));
            };
            let seq = method
                .parse()
                .map_err(|_| CallError::invalid_argument(method))?;
            self.started
                .lock()
                .entry(request.object_id.to_owned())
                .or_default()
                .push(seq);
            Ok(response::Result::Done(goverse_proto::node::Done {}))
        })
    }

    fn describe(&self) -> DescribeResponse {
        DescribeResponse::default()
    }

    fn peer_opened(&self, _peer: Arc<str>, _sink: PeerSink) -> Result<(), PeerRefused> {
        Ok(())
    }

    fn peer_closed(&self, _peer: &str, _serial: u64) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_to_one_object_start_in_the_order_they_were_sent() {
    let stop = CancellationToken::new();
    let recorder = Arc::new(Recorder::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(goverse_transport::serve(
        recorder.clone(),
        listener,
        stop.clone().cancelled_owned(),
    ));
    let link = link_to(address, stop.child_token()).await;
    let (objects, per_object) = (50, 100);
    for round in 0..5_u64 {
        // All queued before the link writes: batches far larger than the node runs inline.
        let calls = (0..objects * per_object).map(|i| {
            let link = link.clone();
            async move {
                let (id, seq) = (
                    format!("object-{}", i % objects),
                    (round * per_object + i / objects).to_string(),
                );
                link.request(call(&id, &seq), Duration::from_secs(10))
                    .await
                    .unwrap();
            }
        });
        futures::future::join_all(calls).await;
    }
    let started = recorder.started.lock();
    assert_eq!(started.len(), objects as usize);
    for (object, seqs) in started.iter() {
        let expected: Vec<u64> = (0..5 * per_object).collect();
        assert_eq!(seqs, &expected, "{object} started its calls out of order");
    }
    drop(started);
    stop.cancel();
}

/// The same protocol over a network inside the process, on paused time: calls answer in the
/// order they finish, a deadline passes without real waiting, a cut address breaks the open
/// connection (what waits on it fails at once) and refuses new ones, and the link comes back
/// by itself once the address is reachable again.
#[tokio::test(start_paused = true)]
async fn the_protocol_runs_over_an_in_process_network_on_paused_time() {
    use goverse_transport::{Dialer, MemoryNetwork};
    let network = MemoryNetwork::new();
    let stop = CancellationToken::new();
    let address = "10.0.0.1:7000";
    let incoming = network.listen(address).unwrap();
    assert!(network.listen(address).is_err(), "one listener per address");
    tokio::spawn(goverse_transport::serve_incoming(
        Arc::new(Sleepy),
        incoming,
        None,
        goverse_transport::ConnectionLimits::default(),
        stop.clone().cancelled_owned(),
    ));
    let dialer: Arc<dyn Dialer> = network.clone();
    let link = NodeLink::dialed(address.to_owned(), None, dialer.clone());
    tokio::spawn(
        link.clone()
            .run("10.0.0.9:1".into(), Arc::new(Quiet), stop.child_token()),
    );
    assert_eventually!(link.is_connected());

    let started = tokio::time::Instant::now();
    let (slow, fast) = tokio::join!(
        link.request(call("slow", "3000"), Duration::from_secs(10)),
        link.request(call("fast", "10"), Duration::from_secs(10)),
    );
    assert_eq!(object_of(slow), "slow");
    assert_eq!(object_of(fast), "fast");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "paused time moved on"
    );
    assert!(network.connections_made() >= 1);

    let waiting = tokio::spawn({
        let link = link.clone();
        async move {
            link.request(call("cut", "never"), Duration::from_secs(60))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    network.set_reachable(address, false);
    let cut = waiting.await.unwrap().unwrap_err();
    assert_eq!(cut.code(), ErrorCode::Unavailable, "{cut}");
    assert_eventually!(!link.is_connected());
    let refused = dialer.dial(address).await.err().expect("refused while cut");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let probe =
        goverse_transport::probe_node_over(&dialer, address, None, Duration::from_secs(1)).await;
    assert!(matches!(probe.unwrap_err(), LinkError::Connect(_)));

    network.set_reachable(address, true);
    assert_eventually!(link.is_connected(), Duration::from_secs(10));
    let back = link
        .request(call("back", "1"), Duration::from_secs(5))
        .await;
    assert_eq!(object_of(back), "back");
    stop.cancel();
}

/// Calls that wait for a gate the test opens, counting how many run at once.
struct Gated {
    running: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    gate: tokio::sync::Semaphore,
}

impl Handler for Gated {
    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Outcome> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            self.gate.acquire().await.unwrap().forget();
            self.running.fetch_sub(1, SeqCst);
            Ok(response::Result::Value(prost_types::Any {
                type_url: request.object_id.to_owned(),
                value: Vec::new(),
            }))
        })
    }

    fn describe(&self) -> DescribeResponse {
        DescribeResponse::default()
    }

    fn peer_opened(&self, _peer: Arc<str>, _sink: PeerSink) -> Result<(), PeerRefused> {
        Ok(())
    }

    fn peer_closed(&self, _peer: &str, _serial: u64) {}
}

/// Both ends of the call path are bounded: a node runs at most its limit of one peer's
/// requests at once and reads no more of the stream meanwhile (the rest wait in the peer's
/// link and flow control), and a link keeps at most its limit of calls waiting for answers,
/// failing the next at once with ResourceExhausted (nothing sent) until one is answered.
#[tokio::test(start_paused = true)]
async fn a_node_runs_at_most_its_limit_of_a_peer_s_requests_and_a_full_link_refuses_at_once() {
    use goverse_transport::{ConnectionLimits, Dialer, MemoryNetwork};
    use std::sync::atomic::Ordering::SeqCst;
    let network = MemoryNetwork::new();
    let stop = CancellationToken::new();
    let address = "10.0.0.2:7000";
    let gated = Arc::new(Gated {
        running: Default::default(),
        most: Default::default(),
        gate: tokio::sync::Semaphore::new(0),
    });
    tokio::spawn(goverse_transport::serve_incoming(
        gated.clone(),
        network.listen(address).unwrap(),
        None,
        ConnectionLimits {
            peer_requests_in_flight: 8,
            ..ConnectionLimits::default()
        },
        stop.clone().cancelled_owned(),
    ));
    let dialer: Arc<dyn Dialer> = network.clone();
    let link = NodeLink::dialed(address.to_owned(), None, dialer);
    link.limit_in_flight(40);
    tokio::spawn(
        link.clone()
            .run("10.0.0.9:2".into(), Arc::new(Quiet), stop.child_token()),
    );
    assert_eventually!(link.is_connected());

    let calls: Vec<_> = (0..40)
        .map(|i| {
            let link = link.clone();
            tokio::spawn(async move {
                let id = format!("o{i}");
                link.request(call(&id, "gated"), Duration::from_secs(60))
                    .await
            })
        })
        .collect();
    assert_eventually!(link.in_flight() == 40);
    assert_eventually!(gated.running.load(SeqCst) == 8);
    // Time passes; the node still runs no more than eight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gated.running.load(SeqCst), 8);
    // The link is full: the next call fails at once, with nothing sent.
    let refused = link
        .request(call("extra", "gated"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("40 calls waiting"), "{refused}");

    gated.gate.add_permits(1_000);
    for done in calls {
        assert!(done.await.unwrap().is_ok());
    }
    assert_eq!(
        gated.most.load(SeqCst),
        8,
        "never more than the limit at once"
    );
    let after = link
        .request(call("after", "gated"), Duration::from_secs(5))
        .await;
    assert_eq!(object_of(after), "after");
    stop.cancel();
}
