//! The wallet sample end to end: `wallet-server` as a real process, clients over the gate's
//! gRPC API, and the server killed with kill -9 while transfers are in flight.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use goverse_sample_wallet::client::{Transfer, WalletClient};
use goverse_testkit::{PostgresServer, Process, free_port};

const SERVER: &str = env!("CARGO_BIN_EXE_wallet-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_wallet");

struct Server {
    process: Process,
    grpc: String,
    args: Vec<String>,
}

impl Server {
    fn start(store_args: &[&str]) -> Self {
        let grpc = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "--listen".into(),
            grpc.clone(),
            "--http-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        args.extend(store_args.iter().map(|s| s.to_string()));
        let mut process = Process::start(SERVER, &args);
        process.expect("wallet-server ready");
        Self {
            process,
            grpc,
            args,
        }
    }

    /// kill -9, then a new process on the same store and ports.
    fn kill_and_restart(&mut self) {
        self.process.kill();
        self.process = Process::start(SERVER, &self.args);
        self.process.expect("wallet-server ready");
    }

    /// Stops the server (SIGTERM) and keeps what it needs to start again on the same ports.
    fn halt(&mut self) {
        self.process.terminate();
        assert_eq!(self.process.wait_exit(Duration::from_secs(20)), Some(0));
    }

    /// Starts the server again after [`Server::halt`].
    fn resume(&mut self) {
        self.process = Process::start(SERVER, &self.args);
        self.process.expect("wallet-server ready");
    }

    fn stop(mut self) {
        self.process.terminate();
        assert_eq!(self.process.wait_exit(Duration::from_secs(20)), Some(0));
    }
}

fn client(server: &Server) -> WalletClient {
    WalletClient::new(
        std::slice::from_ref(&server.grpc),
        Duration::from_secs(60),
        None,
    )
}

const WALLETS: usize = 8;
const START: i64 = 1_000;

fn wallet(i: usize) -> String {
    format!("wallet-{i:03}")
}

/// Transfers from `tasks` concurrent clients, replaying 30 % of them with the same id, while the
/// server is killed with kill -9 and restarted once `kill_after` transfers are done. Returns the
/// completed transfers (from, to, amount) that went through.
async fn run_transfers(
    server: &mut Server,
    tasks: usize,
    per_task: usize,
    kill_after: usize,
) -> Vec<(usize, usize, i64)> {
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let c = client(server);
        let done = done.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task as u64);
            let mut applied = Vec::new();
            for n in 0..per_task {
                let from = rng.usize(..WALLETS);
                let to = (from + 1 + rng.usize(..WALLETS - 1)) % WALLETS;
                let amount = rng.i64(1..300);
                let id = format!("t-{task}-{n}");
                let first: Transfer = c
                    .transfer(&wallet(from), &wallet(to), amount, &id)
                    .await
                    .unwrap_or_else(|e| panic!("transfer {id}: {e}"));
                if rng.f32() < 0.3 {
                    // A replay returns what the first attempt did, and moves nothing.
                    let again = c
                        .transfer(&wallet(from), &wallet(to), amount, &id)
                        .await
                        .unwrap();
                    assert_eq!(again, first, "replay of {id}");
                }
                if first.deposited.is_some() {
                    applied.push((from, to, amount));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            applied
        }));
    }
    // (A task that failed ends early: stop waiting and let its panic surface below.)
    while done.load(Ordering::SeqCst) < kill_after && !handles.iter().any(|h| h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = done.load(Ordering::SeqCst);
    server.kill_and_restart();
    let mut applied = Vec::new();
    for handle in handles {
        applied.extend(handle.await.unwrap());
    }
    assert!(
        killed_at < tasks * per_task,
        "the kill landed while transfers were in flight"
    );
    applied
}

async fn assert_exact_balances(server: &Server, applied: &[(usize, usize, i64)]) {
    let mut expected: HashMap<usize, i64> = (0..WALLETS).map(|i| (i, START)).collect();
    for (from, to, amount) in applied {
        *expected.get_mut(from).unwrap() -= amount;
        *expected.get_mut(to).unwrap() += amount;
    }
    let c = client(server);
    let mut total = 0;
    for i in 0..WALLETS {
        let balance = c.balance(&wallet(i)).await.unwrap();
        assert_eq!(balance, expected[&i], "{}", wallet(i));
        total += balance;
    }
    assert_eq!(total, START * WALLETS as i64, "money is conserved");
}

async fn seed(server: &Server) {
    let c = client(server);
    for i in 0..WALLETS {
        let r = c
            .deposit(&wallet(i), START, &format!("seed-{i}"))
            .await
            .unwrap();
        assert!(r.ok && r.balance == START, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_with_retries_across_a_kill_9_end_with_exact_balances_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut server = Server::start(&["--data-dir", &data]);
    seed(&server).await;
    let applied = run_transfers(&mut server, 16, 40, 150).await;
    assert!(
        applied.len() > 300,
        "{} transfers went through",
        applied.len()
    );
    assert_exact_balances(&server, &applied).await;
    // A clean stop saves everything; the balances survive it too.
    server.stop();
    let server = Server::start(&["--data-dir", &data]);
    assert_exact_balances(&server, &applied).await;
    server.stop();
    assert!(Path::new(&data).join("wallets.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_with_retries_across_a_kill_9_end_with_exact_balances_on_postgres() {
    let postgres = PostgresServer::start();
    postgres.create_database("wallets");
    let url = postgres.url("wallets");
    // A node refuses an uninitialised database, and says what to run.
    let refused = std::process::Command::new(SERVER)
        .args(["--postgres", &url, "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("goverse db init"), "{err}");
    goverse_init(&url).await;

    let mut server = Server::start(&["--postgres", &url]);
    seed(&server).await;
    let applied = run_transfers(&mut server, 16, 25, 100).await;
    assert!(
        applied.len() > 150,
        "{} transfers went through",
        applied.len()
    );
    assert_exact_balances(&server, &applied).await;
    server.stop();
    // Each call id recorded once; readable with psql.
    let records = postgres.psql(
        "wallets",
        "SELECT count(*) FROM goverse_reliable_calls WHERE call_id LIKE 'seed-%'",
    );
    assert_eq!(records.trim(), WALLETS.to_string());
}

/// What `goverse db init` does, through the library (the CLI's own tests run the command).
async fn goverse_init(url: &str) {
    use goverse::persistence::{PostgresConfig, PostgresStore};
    let store = PostgresStore::connect(&PostgresConfig::new(url))
        .await
        .unwrap();
    store.migrate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_client_deposits_withdraws_and_transfers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let grpc = server.grpc.clone();
    let wallet = |args: &[&str]| {
        let out = std::process::Command::new(CLIENT)
            .args(["--gate", &grpc])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = wallet(&["deposit", "alice", "100", "--id", "d-1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("alice: balance 100"), "{out}");
    // The same id again: the recorded answer, not a second deposit.
    let (_, out, _) = wallet(&["deposit", "alice", "100", "--id", "d-1"]);
    assert!(out.contains("alice: balance 100"), "{out}");
    // A refused withdrawal says so, prints its call id, and exits 2.
    let (code, out, err) = wallet(&["withdraw", "alice", "500"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("refused (insufficient funds"), "{out}");
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("withdrawing 500 from alice with call id "))
        .unwrap_or_else(|| panic!("the call id is printed first: {err}"));
    assert!(out.contains(&format!("(call id {id})")), "{out}");
    let (_, out, _) = wallet(&["transfer", "alice", "bob", "30", "--id", "x-1"]);
    assert!(
        out.contains("transferred 30") && out.contains("bob: balance 30"),
        "{out}"
    );
    let (_, out, _) = wallet(&["transfer", "alice", "bob", "30", "--id", "x-1"]);
    assert!(out.contains("bob: balance 30"), "{out}");
    let (_, out, _) = wallet(&["balance", "alice"]);
    assert_eq!(out.trim(), "alice: balance 70");
    // A call id reused for something else is refused, with the reason.
    let (code, _, err) = wallet(&["deposit", "bob", "1", "--id", "d-1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already used"), "{err}");

    // With the server down, the client shows each retry and, giving up, the id to retry with;
    // the same command later applies the deposit once.
    server.halt();
    let (code, _, err) = wallet(&[
        "--retry-for",
        "1.5",
        "deposit",
        "carol",
        "7",
        "--id",
        "late-1",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("retrying Wallet/carol.Deposit with call id late-1 (attempt 1 failed"),
        "{err}"
    );
    assert!(err.contains("retry later with --id late-1"), "{err}");
    server.resume();
    for _ in 0..2 {
        let (code, out, _) = wallet(&["deposit", "carol", "7", "--id", "late-1"]);
        assert_eq!(code, Some(0));
        assert!(out.contains("carol: balance 7"), "{out}");
    }
    server.stop();
}
