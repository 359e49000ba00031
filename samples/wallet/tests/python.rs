//! Upstream's clients are Go and Python over the official gRPC stacks: the Python one (grpcio,
//! stubs generated from gate.proto) drives a wallet server with reliable calls, 30 % of them
//! replayed, and checks the statuses and the balances (`python/stress_test.py`).

use std::path::PathBuf;
use std::time::Duration;

use goverse_testkit::{Process, free_port, python};

#[test]
fn upstreams_python_grpc_stack_gets_exactly_once_reliable_calls() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut server = Process::start(
        env!("CARGO_BIN_EXE_wallet-server"),
        [
            "--listen",
            grpc.as_str(),
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    server.expect("wallet-server ready");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/stress_test.py");
    let mut stress = Process::start(
        &python,
        [
            script.to_str().unwrap(),
            "--gate",
            &grpc,
            "--clients",
            "8",
            "--calls",
            "100",
        ],
    );
    stress.expect_within("ok: 800 reliable calls", Duration::from_secs(120));
    assert_eq!(stress.wait_exit(Duration::from_secs(30)), Some(0));
    server.terminate();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
}
