//! Persistence as a user meets it: `goverse demo` as a real process on SQLite and on a real
//! PostgreSQL, killed with kill -9, paused with SIGSTOP, given a read-only or damaged file, its
//! database stopped under it; and `goverse db`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use goverse::prost::Message as _;
use goverse::wkt::{Empty, Int32Value};
use goverse_proto::gate::CallObjectRequest;
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_testkit::{PostgresServer, Process, free_port};
use tonic::transport::Channel;

const GOVERSE: &str = env!("CARGO_BIN_EXE_goverse");

fn goverse(args: &[&str]) -> std::process::Output {
    std::process::Command::new(GOVERSE)
        .args(args)
        .output()
        .expect("goverse runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `goverse demo` on free ports with `store_args`.
struct Demo {
    process: Process,
    grpc: String,
    args: Vec<String>,
}

/// The value after `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args.iter().position(|a| a == flag).expect("flag present");
    &args[at + 1]
}

impl Demo {
    fn args(store_args: &[&str]) -> (Vec<String>, String) {
        let grpc = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec!["demo".into(), "--listen".into(), grpc.clone()];
        for (flag, port) in [
            ("--node-listen", free_port()),
            ("--http-listen", free_port()),
        ] {
            args.push(flag.into());
            args.push(format!("127.0.0.1:{port}"));
        }
        args.extend(store_args.iter().map(|s| s.to_string()));
        (args, grpc)
    }

    fn start(store_args: &[&str]) -> Self {
        let (args, grpc) = Self::args(store_args);
        let mut process = Process::start(GOVERSE, &args);
        process.expect_within("ready;", Duration::from_secs(60));
        Self {
            process,
            grpc,
            args,
        }
    }

    /// A new process with the same arguments (same store, same ports).
    fn restart(&mut self) {
        self.process = Process::start(GOVERSE, &self.args);
        self.process
            .expect_within("ready;", Duration::from_secs(60));
    }

    /// SIGTERM; the exit code.
    fn stop(&mut self) -> Option<i32> {
        self.process.terminate();
        self.process.wait_exit(Duration::from_secs(30))
    }
}

async fn gate(address: &str) -> GateServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    GateServiceClient::new(channel)
}

fn any<M: goverse::prost::Message + goverse::prost::Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{}{}", goverse::TYPE_URL_PREFIX, M::full_name()),
        value: m.encode_to_vec(),
    }
}

async fn call(
    client: &mut GateServiceClient<Channel>,
    object_type: &str,
    id: &str,
    method: &str,
    request: prost_types::Any,
) -> Result<i32, tonic::Status> {
    let mut request = tonic::Request::new(CallObjectRequest {
        client_id: String::new(),
        r#type: object_type.to_owned(),
        id: id.to_owned(),
        method: method.to_owned(),
        request: Some(request),
    });
    request.set_timeout(Duration::from_secs(5));
    let response = client.call_object(request).await?.into_inner();
    let any = response.response.expect("a response");
    Ok(Int32Value::decode(any.value.as_slice()).unwrap().value)
}

async fn add(
    client: &mut GateServiceClient<Channel>,
    t: &str,
    id: &str,
) -> Result<i32, tonic::Status> {
    call(client, t, id, "Add", any(&Int32Value { value: 1 })).await
}

async fn get(client: &mut GateServiceClient<Channel>, t: &str, id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call(client, t, id, "Get", any(&Empty {})).await {
            Ok(v) => return v,
            Err(status) if Instant::now() < deadline => {
                let _ = status;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("Get {t}/{id}: {status}"),
        }
    }
}

/// Adds to `{prefix}-{task}` of `object_type` from `tasks` concurrent callers until `stop`;
/// returns the acknowledged adds per object.
fn spawn_adders(
    grpc: &str,
    object_type: &'static str,
    prefix: &'static str,
    tasks: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<(String, u64)>> {
    (0..tasks)
        .map(|task| {
            let (grpc, stop, acked) = (grpc.to_owned(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut client = gate(&grpc).await;
                let id = format!("{prefix}-{task}");
                let mut mine = 0;
                while !stop.load(Ordering::SeqCst) {
                    match add(&mut client, object_type, &id).await {
                        Ok(_) => {
                            mine += 1;
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        // The server is gone: stop; this add's outcome is unknown.
                        Err(_) => break,
                    }
                }
                (id, mine)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_durable_adds_survive_kill_9_and_periodic_ones_do_not() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    // No periodic save during the test: what Counter keeps is only what shutdown would save.
    let mut demo = Demo::start(&["--data-dir", dir, "--save-interval", "1h"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (durable_acked, periodic_acked) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let durable = spawn_adders(
        &demo.grpc,
        "DurableCounter",
        "d",
        24,
        stop.clone(),
        durable_acked.clone(),
    );
    let periodic = spawn_adders(
        &demo.grpc,
        "Counter",
        "c",
        8,
        stop.clone(),
        periodic_acked.clone(),
    );
    let started = Instant::now();
    while durable_acked.load(Ordering::SeqCst) < 3000 && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    demo.process.kill();
    stop.store(true, Ordering::SeqCst);
    let mut durable_counts = Vec::new();
    for task in durable {
        durable_counts.push(task.await.unwrap());
    }
    let mut periodic_counts = Vec::new();
    for task in periodic {
        periodic_counts.push(task.await.unwrap());
    }
    let total: u64 = durable_counts.iter().map(|(_, n)| n).sum();
    assert!(total >= 3000, "thousands of acknowledged adds: {total}");

    demo.restart();
    let mut client = gate(&demo.grpc).await;
    for (id, acked) in &durable_counts {
        let value = get(&mut client, "DurableCounter", id).await as u64;
        // Every acknowledged add is there; at most the one in flight at the kill was also
        // committed without its acknowledgement arriving.
        assert!(
            (*acked..=acked + 1).contains(&value),
            "DurableCounter/{id}: {acked} acknowledged, {value} stored"
        );
    }
    let mut lost = 0;
    let mut acked_periodic = 0;
    for (id, acked) in &periodic_counts {
        let value = get(&mut client, "Counter", id).await as u64;
        assert!(value <= *acked);
        lost += acked - value;
        acked_periodic += acked;
    }
    println!(
        "kill -9: DurableCounter kept all {total} acknowledged adds; Counter (periodic) lost \
         {lost} of {acked_periodic}"
    );
    assert!(
        lost > 0,
        "a periodic counter loses what changed since its last save"
    );
    assert_eq!(demo.stop(), Some(0));
}

/// Opens a TCP connection to `addr`, sends `bytes` and says nothing more.
fn stalled_client(addr: &str, bytes: &[u8]) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sigterm_saves_first_and_stalled_connections_do_not_hold_it() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    // Only the saves at shutdown keep the counters.
    let mut demo = Demo::start(&["--data-dir", dir, "--save-interval", "1h"]);
    let mut client = gate(&demo.grpc).await;
    for i in 0..200 {
        add(&mut client, "Counter", &format!("held-{}", i % 10))
            .await
            .unwrap();
    }
    // A connection on every port that sent only the HTTP/2 preface (or nothing, or half a
    // request) and then nothing more.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let node_addr = flag_value(&demo.args, "--node-listen").to_owned();
    let http_addr = flag_value(&demo.args, "--http-listen").to_owned();
    let _stalled = [
        stalled_client(&node_addr, preface),
        stalled_client(&node_addr, b""),
        stalled_client(&demo.grpc, preface),
        stalled_client(
            &http_addr,
            b"POST /api/v1/objects/call/Counter/held-0/Get HTTP/1.1\r\n",
        ),
    ];
    let asked = Instant::now();
    demo.process.terminate();
    let exit = demo.process.wait_exit(Duration::from_secs(20));
    let took = asked.elapsed();
    assert_eq!(exit, Some(0), "{:?}", demo.process.output());
    assert!(
        demo.process
            .output()
            .iter()
            .any(|l| l.contains("10 saved now, 0 saved before, 0 unsaved")),
        "{:?}",
        demo.process.output()
    );
    // The node's service and the gate each drain within their deadlines (2 s and 5 s).
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    println!("demo stopped in {took:?} with stalled connections on every port");

    demo.restart();
    let mut client = gate(&demo.grpc).await;
    let mut total = 0;
    for i in 0..10 {
        total += get(&mut client, "Counter", &format!("held-{i}")).await;
    }
    assert_eq!(total, 200, "every acknowledged add was saved at SIGTERM");
    assert_eq!(demo.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_node_port_beyond_loopback_admits_only_peers_with_the_secret() {
    use goverse_proto::node::DescribeRequest;
    use goverse_proto::node::node_service_client::NodeServiceClient;
    let port = free_port();
    let (mut args, _) = Demo::args(&[]);
    let at = args.iter().position(|a| a == "--node-listen").unwrap();
    args[at + 1] = format!("0.0.0.0:{port}");
    let mut process = Process::start(GOVERSE, &args);
    process.expect_within("ready;", Duration::from_secs(60));
    let printed = process.output().join("\n");
    let secret = printed
        .split("peers must present the secret ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the made-up secret is printed: {printed}"))
        .to_owned();
    assert_eq!(secret.len(), 32, "{secret}");

    let mut raw = NodeServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let err = raw.describe(DescribeRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let mut with_secret = tonic::Request::new(DescribeRequest {});
    with_secret
        .metadata_mut()
        .insert("goverse-peer-secret", secret.parse().unwrap());
    raw.describe(with_secret)
        .await
        .expect("the printed secret is admitted");
    process.terminate();
    assert_eq!(process.wait_exit(Duration::from_secs(20)), Some(0));

    // A chosen secret that is too short is refused at start, by name.
    let (mut args, _) = Demo::args(&["--peer-secret", "short"]);
    let at = args.iter().position(|a| a == "--node-listen").unwrap();
    args[at + 1] = format!("0.0.0.0:{}", free_port());
    let out = std::process::Command::new(GOVERSE)
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("at least 16 characters"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_past_the_lease_then_a_restart_still_writes_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut demo = Demo::start(&["--data-dir", dir, "--lease-ttl", "1s"]);
    let mut client = gate(&demo.grpc).await;
    assert_eq!(add(&mut client, "DurableCounter", "p").await.unwrap(), 1);
    assert_eq!(add(&mut client, "Counter", "q").await.unwrap(), 1);

    // Ctrl-Z, then fg: the lease expired meanwhile.
    demo.process.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    demo.process.signal("-CONT");
    // The node re-claims its shards (raising their epochs in the store) and serves again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let value = loop {
        match add(&mut client, "DurableCounter", "p").await {
            Ok(value) => break value,
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ),
                    "{status}"
                );
                assert!(Instant::now() < deadline, "not serving again: {status}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(value >= 2, "{value}");
    assert_eq!(demo.stop(), Some(0), "every state saved at the stop");

    // A new process (a new in-memory cluster store, starting at epoch 1) writes past the
    // epochs the store holds, and stops cleanly too.
    demo.restart();
    let mut client = gate(&demo.grpc).await;
    assert_eq!(
        add(&mut client, "DurableCounter", "p").await.unwrap(),
        value + 1
    );
    assert_eq!(add(&mut client, "Counter", "q").await.unwrap(), 2);

    // Ctrl-Z past the lease, fg, and Ctrl-C at once: the node stops while it may still be
    // fenced, takes back the shards nobody else holds, and saves the periodic counter.
    demo.process.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    demo.process.signal("-CONT");
    assert_eq!(demo.stop(), Some(0), "saved at the stop after the pause");
    demo.restart();
    let mut client = gate(&demo.grpc).await;
    assert_eq!(get(&mut client, "Counter", "q").await, 2);
    assert_eq!(demo.stop(), Some(0));
}

#[test]
fn an_empty_store_file_is_named_at_start() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("objects.db");
    std::fs::write(&file, b"").unwrap();
    let out = goverse(&["db", "status", "--sqlite", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("the store file is empty (0 bytes)") && err.contains("objects.db"),
        "{err}"
    );
    // Set up now: the next start says nothing.
    let out = goverse(&["db", "status", "--sqlite", file.to_str().unwrap()]);
    assert!(
        !text(&out.stderr).contains("empty"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_read_only_or_damaged_store_stops_the_start_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let (args, _) = Demo::args(&["--data-dir", &dir]);
    // Create the store, then stop.
    let mut demo = Process::start(GOVERSE, &args);
    demo.expect_within("ready;", Duration::from_secs(60));
    demo.terminate();
    assert_eq!(demo.wait_exit(Duration::from_secs(30)), Some(0));

    // Read-only: the file and its directory may not be written by the user running the demo.
    let bin_dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(GOVERSE);
    if goverse_testkit::is_root() {
        // Root writes anything; run as nobody, to whom the root-owned files are read-only (the
        // directory readable, so the file can be opened at all). A copy of the binary in a
        // directory nobody may enter, wherever the checkout lives.
        use std::os::unix::fs::PermissionsExt as _;
        use std::os::unix::process::CommandExt as _;
        let open = |path: &std::path::Path| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        open(std::path::Path::new(&dir));
        open(bin_dir.path());
        let copy = bin_dir.path().join("goverse");
        std::fs::copy(GOVERSE, &copy).unwrap();
        open(&copy);
        command = std::process::Command::new(copy);
        command.uid(65534).gid(65534);
    } else {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let mut perms = std::fs::metadata(&path).unwrap().permissions();
            perms.set_readonly(true);
            std::fs::set_permissions(&path, perms).unwrap();
        }
    }
    let out = command.args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("read-only") || err.contains("readonly"),
        "{err}"
    );
    assert!(err.contains("objects.db"), "{err}");

    // Damaged: a file that is not a database is named as corrupt, not as unavailable.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("objects.db"), vec![0x5a; 16384]).unwrap();
    let (args, _) = Demo::args(&["--data-dir", broken.path().to_str().unwrap()]);
    let out = goverse(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("corrupted"), "{err}");
    assert!(!err.contains("unavailable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_postgres_survives_the_database_stopping_and_returning() {
    let mut postgres = PostgresServer::start();
    postgres.create_database("demo");
    let url = postgres.url("demo");
    // Short timeouts so calls during the outage fail quickly.
    let mut demo = Demo::start(&["--postgres", &url, "--pg-statement-timeout", "2s"]);
    // The demo sets up its empty database itself, and says so (a node would refuse).
    assert!(
        demo.process
            .output()
            .iter()
            .any(|l| l.contains("has no GoVerse schema: creating it")),
        "{:?}",
        demo.process.output()
    );
    let mut client = gate(&demo.grpc).await;
    let mut acked = 0;
    for _ in 0..20 {
        add(&mut client, "DurableCounter", "pg").await.unwrap();
        acked += 1;
    }
    // The state is JSON in upstream's table, readable with psql.
    let stored = postgres.psql(
        "demo",
        "SELECT data->>'value' FROM goverse_objects WHERE object_id = 'pg'",
    );
    assert_eq!(stored.trim(), "20");

    postgres.stop();
    let mut failed = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let status = add(&mut client, "DurableCounter", "pg").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(status.message().contains("PostgreSQL"), "{status}");
        assert!(started.elapsed() < Duration::from_secs(5));
        failed += 1;
    }
    postgres.start_again();
    // The node recovers by itself: no restart, no operator.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match add(&mut client, "DurableCounter", "pg").await {
            Ok(_) => {
                acked += 1;
                break;
            }
            Err(status) => {
                assert!(Instant::now() < deadline, "not recovered: {status}");
                failed += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let value = get(&mut client, "DurableCounter", "pg").await;
    assert!(
        (acked..=acked + failed).contains(&value),
        "{acked} acknowledged, {failed} failed, {value} stored"
    );
    assert_eq!(demo.stop(), Some(0));
}

#[test]
fn db_commands_init_status_verify_and_reset_postgres() {
    let postgres = PostgresServer::start();
    postgres.create_database("ops");
    let url = postgres.url("ops");

    let out = goverse(&["db", "status", "--postgres", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("not initialised"),
        "{}",
        text(&out.stdout)
    );
    let out = goverse(&["db", "verify", "--postgres", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("goverse db init"),
        "{}",
        text(&out.stdout)
    );

    let out = goverse(&["db", "init", "--postgres", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("applied migration 2"),
        "{}",
        text(&out.stdout)
    );
    let out = goverse(&["db", "init", "--postgres", &url]);
    assert!(
        text(&out.stdout).contains("up to date"),
        "idempotent: {}",
        text(&out.stdout)
    );

    // Upstream's YAML, read for its postgres: section.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "version: 1\ncluster:\n  shards: 64\npostgres:\n  host: 127.0.0.1\n  port: {}\n  user: {}\n  password: {}\n  database: ops\n  sslmode: disable\n",
            postgres.port(),
            goverse_testkit::POSTGRES_USER,
            goverse_testkit::POSTGRES_PASSWORD
        ),
    )
    .unwrap();
    let config_path = config.path().to_str().unwrap();
    postgres.psql(
        "ops",
        "INSERT INTO goverse_objects (object_id, object_type, data) VALUES ('x', 'Counter', '{}')",
    );
    let out = goverse(&["db", "status", "--config", config_path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(
        status.contains("version 2") && status.contains("objects         1"),
        "{status}"
    );
    let out = goverse(&["db", "verify", "--config", config_path]);
    assert!(out.status.success(), "{}", text(&out.stdout));

    // A broken file names the problem and its line.
    std::fs::write(config.path(), "postgres:\n  host: [oops\n").unwrap();
    let out = goverse(&["db", "status", "--config", config_path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("line"), "{}", text(&out.stderr));
    std::fs::write(
        config.path(),
        "postgres:\n  host: h\n  user: u\n  database: d\n  colour: blue\n",
    )
    .unwrap();
    let out = goverse(&["db", "status", "--config", config_path]);
    assert!(
        text(&out.stderr).contains("colour"),
        "{}",
        text(&out.stderr)
    );

    // An unreachable server is named by host and port.
    let port = free_port();
    let out = goverse(&[
        "db",
        "status",
        "--postgres",
        &format!("postgres://u:p@127.0.0.1:{port}/x"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("127.0.0.1:{port}")),
        "{}",
        text(&out.stderr)
    );

    // Reset asks first.
    let out = goverse(&["db", "reset", "--postgres", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert_eq!(
        postgres
            .psql("ops", "SELECT count(*) FROM goverse_objects")
            .trim(),
        "1"
    );
    let out = goverse(&["db", "reset", "--postgres", &url, "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        postgres
            .psql("ops", "SELECT to_regclass('goverse_objects') IS NULL")
            .trim(),
        "t"
    );
}

#[test]
fn db_commands_work_on_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.db");
    let file = file.to_str().unwrap();
    let out = goverse(&["db", "status", "--sqlite", file]);
    assert_eq!(out.status.code(), Some(1), "no file, no store");
    let out = goverse(&["db", "init", "--sqlite", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = goverse(&["db", "status", "--sqlite", file]);
    assert!(
        text(&out.stdout).contains("version 2"),
        "{}",
        text(&out.stdout)
    );
    let out = goverse(&["db", "verify", "--sqlite", file]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let out = goverse(&["db", "reset", "--sqlite", file, "--yes"]);
    assert!(out.status.success());
    assert!(!std::path::Path::new(file).exists());
}

/// Whether the server ended the connection within `within`: a read sees end of file or an
/// error. Meanwhile `drip`, if set, is written a byte at a time every 200 ms (a slow client).
async fn closed_by_server(
    mut stream: tokio::net::TcpStream,
    drip: Option<&'static [u8]>,
    within: Duration,
) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let deadline = tokio::time::Instant::now() + within;
    let mut at = 0;
    let mut buf = [0u8; 4096];
    loop {
        let step = tokio::time::Instant::now() + Duration::from_millis(200);
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(step.min(deadline)) => {
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                if let Some(bytes) = drip
                    && stream.write_all(&bytes[at % bytes.len()..at % bytes.len() + 1]).await.is_err()
                {
                    return true;
                }
                at += 1;
            }
        }
    }
}

/// Every port closes what would otherwise hold it forever: connections that say nothing, that
/// sent only the HTTP/2 preface, that send headers a byte at a time; healthy clients still get
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_ports_close_idle_preface_only_and_slow_header_connections() {
    let mut demo = Demo::start(&["--connection-idle-timeout", "1s", "--header-timeout", "1s"]);
    let node_addr = flag_value(&demo.args, "--node-listen").to_owned();
    let http_addr = flag_value(&demo.args, "--http-listen").to_owned();
    let preface: &'static [u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut checks = Vec::new();
    let started = Instant::now();
    for (addr, first, drip, what) in [
        (node_addr.clone(), &b""[..], None, "idle, node port"),
        (demo.grpc.clone(), b"", None, "idle, gate gRPC"),
        (http_addr.clone(), b"", None, "idle, gate HTTP"),
        (node_addr.clone(), preface, None, "preface only, node port"),
        (demo.grpc.clone(), preface, None, "preface only, gate gRPC"),
        (
            http_addr.clone(),
            b"POST /api/v1/objects/call/Counter/c/Get HTTP/1.1\r\n",
            Some(&b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"[..]),
            "slow headers, gate HTTP",
        ),
    ] {
        for _ in 0..20 {
            use tokio::io::AsyncWriteExt as _;
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream.write_all(first).await.unwrap();
            checks.push((
                what,
                tokio::spawn(closed_by_server(stream, drip, Duration::from_secs(8))),
            ));
        }
    }
    for (what, check) in checks {
        assert!(check.await.unwrap(), "{what}: still open after 8 s");
    }
    println!(
        "120 stalled connections closed by the demo in {:?}",
        started.elapsed()
    );
    // Healthy clients are served throughout.
    let mut client = gate(&demo.grpc).await;
    assert_eq!(add(&mut client, "Counter", "healthy").await.unwrap(), 1);
    assert_eq!(demo.stop(), Some(0));
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 14th field overall.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    // Clock ticks of 10 ms (USER_HZ is 100 on Linux).
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// Out of file descriptors, the accept loops wait instead of spinning a core, log it once per
/// interval, and serve again once connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_out_of_file_descriptors_waits_quietly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let (args, grpc) = Demo::args(&[]);
    let command = format!(
        "exec prlimit --nofile=256:256 {GOVERSE} {} 2>{}",
        args.join(" "),
        log.display()
    );
    let mut process = Process::start("sh", ["-c", &command]);
    process.expect_within("ready;", Duration::from_secs(60));
    let pid = process.pid();
    let mut held = Vec::new();
    // Past the limit the kernel's backlog fills and a connect waits: stop at the first that
    // does not complete in time.
    let connecting = Instant::now();
    for _ in 0..400 {
        // A full backlog drops the SYN; the client sends it again after 1 s.
        match tokio::time::timeout(
            Duration::from_millis(1500),
            tokio::net::TcpStream::connect(&grpc),
        )
        .await
        {
            Ok(Ok(stream)) => held.push(stream),
            _ => break,
        }
    }
    println!(
        "{} connections opened in {:?}",
        held.len(),
        connecting.elapsed()
    );
    assert!(
        held.len() > 256,
        "more connections than descriptors: {}",
        held.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time(pid) - before;
    println!(
        "out of descriptors with {} connections held: {used:?} CPU in 3 s",
        held.len()
    );
    assert!(used < Duration::from_millis(600), "{used:?} of CPU in 3 s");
    drop(held);
    let freed = Instant::now();
    // Serving again once the connections are gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut client = gate(&grpc).await;
        match add(&mut client, "Counter", "after").await {
            Ok(_) => break,
            Err(status) => {
                assert!(Instant::now() < deadline, "not serving again: {status}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    println!(
        "serving again {:?} after the connections closed",
        freed.elapsed()
    );
    process.terminate();
    assert_eq!(process.wait_exit(Duration::from_secs(30)), Some(0));
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines = logged
        .lines()
        .filter(|l| l.contains("cannot accept connections"))
        .count();
    // One line per 10 s while it lasted (a few seconds), not one per failed accept.
    assert!(
        (1..=2).contains(&lines),
        "{lines} accept-error lines:\n{logged}"
    );
}
