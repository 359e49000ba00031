//! The fuzz targets without the fuzzer: every checked-in corpus file and every past finding
//! replayed, then seeded mutations of them. The coverage-guided runs are `scripts/fuzz`'s.
//!
//! The corpus starts from the seeds below (valid messages, files and records of every shape the
//! running code writes or reads); the fuzzer adds what it finds. `GOVERSE_FUZZ_WRITE_SEEDS=1
//! cargo test -p goverse-fuzz --test corpus` writes the seeds after they change.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use goverse_fuzz::TARGETS;
use goverse_proto::node::{self as proto, request, response};
use prost::Message as _;

fn fuzz_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable corpus entry").path())
        .filter(|p| p.is_file() && !p.ends_with("README.md"))
        .collect();
    files.sort();
    files
}

/// Runs `target` on `bytes`, naming `what` if it panics.
fn run(name: &str, target: fn(&[u8]), what: &str, bytes: &[u8]) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(bytes))) {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        panic!(
            "{name} fails on {what} ({} bytes, base64 {}): {why}",
            bytes.len(),
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
    }
}

fn any(type_name: &str, value: Vec<u8>) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value,
    }
}

fn caller(roles: &[&str]) -> proto::Caller {
    proto::Caller {
        client_id: "127.0.0.1:48000/c-1".to_owned(),
        user_id: "ann".to_owned(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    }
}

fn node_requests_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let call =
        |id, object_id: &str, request, reliable: &str, caller, chain, timeout| proto::Request {
            id,
            op: Some(request::Op::Call(proto::Call {
                r#type: "Counter".to_owned(),
                object_id: object_id.to_owned(),
                method: "Add".to_owned(),
                request,
                reliable_call_id: reliable.to_owned(),
                chain,
                timeout_micros: timeout,
                caller,
                from_client: true,
            })),
        };
    let lifecycle = |id, create: bool| {
        let object_id = "shard#5/room".to_owned();
        proto::Request {
            id,
            op: Some(if create {
                request::Op::Create(proto::Create {
                    r#type: "Room".to_owned(),
                    object_id,
                    chain: 7,
                    timeout_micros: 0,
                    caller: Some(caller(&[])),
                    from_client: false,
                })
            } else {
                request::Op::Delete(proto::Delete {
                    r#type: "Room".to_owned(),
                    object_id,
                    chain: 0,
                    timeout_micros: 30_000_000,
                    caller: None,
                    from_client: true,
                })
            }),
        }
    };
    let payload = || Some(any("google.protobuf.Int32Value", vec![8, 5]));
    let batch = |requests: Vec<proto::Request>| proto::RequestBatch { requests }.encode_to_vec();
    vec![
        (
            "calls",
            batch(vec![
                call(
                    1,
                    "c-1",
                    payload(),
                    "",
                    Some(caller(&["admin", ""])),
                    3,
                    5_000_000,
                ),
                call(2, "ünï/cödé", None, "call-9", None, 0, 0),
                call(
                    u64::MAX,
                    "",
                    Some(any("", Vec::new())),
                    "",
                    None,
                    u64::MAX,
                    u64::MAX,
                ),
            ]),
        ),
        (
            "create-delete",
            batch(vec![lifecycle(4, true), lifecycle(5, false)]),
        ),
        ("no-op", batch(vec![proto::Request { id: 6, op: None }])),
        ("empty", Vec::new()),
    ]
}

fn node_responses_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let respond = |id, result| proto::Response {
        id,
        result: Some(result),
    };
    let failure = |code: &str, not_served| proto::Failure {
        code: code.to_owned(),
        message: "boom".to_owned(),
        not_served,
    };
    let reliable = |status: &str, value, error| {
        response::Result::Reliable(proto::Reliable {
            status: status.to_owned(),
            value,
            error,
        })
    };
    let batch = proto::ResponseBatch {
        responses: vec![
            respond(
                1,
                response::Result::Value(any("google.protobuf.Int32Value", vec![8, 6])),
            ),
            respond(2, response::Result::Done(proto::Done {})),
            respond(3, response::Result::Failure(failure("NOT_FOUND", false))),
            respond(4, response::Result::Failure(failure("NO_SUCH_CODE", false))),
            respond(5, response::Result::Failure(failure("UNAVAILABLE", true))),
            respond(6, reliable("SUCCESS", Some(any("x.Y", vec![1])), None)),
            respond(
                7,
                reliable("FAILED", None, Some(failure("INTERNAL", false))),
            ),
            respond(8, reliable("SKIPPED", None, None)),
            respond(9, reliable("MAYBE", None, None)),
            proto::Response {
                id: 10,
                result: None,
            },
        ],
        pushes: vec![proto::Push {
            client_ids: vec!["127.0.0.1:48000/c-1".to_owned()],
            broadcast: false,
            message: Some(any("google.protobuf.StringValue", b"\n\x02hi".to_vec())),
        }],
    };
    vec![("mixed", batch.encode_to_vec())]
}

fn gate_http_body_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let catalog = goverse_fuzz::catalog();
    let methods: Vec<(String, String)> = catalog
        .type_names()
        .into_iter()
        .flat_map(|t| {
            catalog
                .method_names(t)
                .into_iter()
                .map(move |m| (t.to_owned(), m.to_owned()))
        })
        .collect();
    let pick = |object_type: &str, method: &str| {
        u8::try_from(
            methods
                .iter()
                .position(|(t, m)| t == object_type && m == method)
                .expect("a catalog method"),
        )
        .expect("fewer than 256 methods")
    };
    let body = |object_type, method, body: &str| {
        let mut bytes = vec![pick(object_type, method)];
        bytes.extend_from_slice(body.as_bytes());
        bytes
    };
    let envelope = base64::engine::general_purpose::STANDARD
        .encode(any("google.protobuf.Int32Value", vec![8, 5]).encode_to_vec());
    vec![
        ("add-object", body("Counter", "Add", r#"{"value": 5}"#)),
        ("add-bare", body("Counter", "Add", "5")),
        ("add-empty", body("Counter", "Add", "")),
        (
            "add-envelope",
            body("Counter", "Add", &format!(r#"{{"request":"{envelope}"}}"#)),
        ),
        (
            "add-envelope-reliable",
            body(
                "Counter",
                "Add",
                &format!(r#"{{"request":"{envelope}","callId":"c-1"}}"#),
            ),
        ),
        ("rename", body("Counter", "Rename", r#""bob""#)),
        ("get", body("Counter", "Get", "{}")),
        (
            "everything",
            body(
                "Everything",
                "Set",
                r#"{"d": 1.5, "f": "NaN", "i32": -7, "i64": "9007199254740993", "u32": 7,
                    "u64": "18446744073709551615", "s32": -1, "s64": "-2", "fx32": 3, "fx64": "4",
                    "sf32": -5, "sf64": "-6", "b": true, "s": "ünï\u0000", "by": "AAEC/w==",
                    "colour": "GREEN", "inner": {"name": "a", "values": ["1", 2],
                    "child": {"name": "b"}}, "inners": [{}, {"name": "c"}],
                    "byName": {"k": {"name": "v"}}, "byNumber": {"-3": "minus three"},
                    "text": "chosen", "any": {"@type": "type.googleapis.com/goverse.fuzz.v1.Inner",
                    "name": "in any"}, "at": "2026-12-07T10:00:00.500Z", "took": "1.5s",
                    "data": {"a": [1, "x", null, {"b": true}]}, "value": 3, "maybe": 4,
                    "mask": "a.b,c", "colours": ["RED", 2], "opt": "", "ds": ["Infinity", -0.0],
                    "byFlag": {"true": "AQ=="}}"#,
            ),
        ),
        (
            "legacy-plain",
            body("Legacy", "Call", r#"{"request":"hello world"}"#),
        ),
        (
            "legacy-envelope",
            body("Legacy", "Call", r#"{"request":"aGVsbG8="}"#),
        ),
        (
            "post",
            body("Room", "Post", r#"{"user":"ann","text":"hi"}"#),
        ),
        ("ghost", body("Ghost", "Haunt", "{}")),
        (
            "patch",
            body(
                "Config",
                "Patch",
                r#"{"a":[1,"x",null,{"b":true}],"n":-0.5}"#,
            ),
        ),
        (
            "stamp",
            body("Config", "Stamp", r#""2026-12-07T10:00:00Z""#),
        ),
    ]
}

fn object_id_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("regular", "my-counter"),
        ("shard", "shard#5/x"),
        ("node", "127.0.0.1:47000/room"),
        ("bad-shard", "shard#/x"),
        ("huge-shard", "shard#99999999999999999999/x"),
        ("no-node", "/x"),
        ("no-name", "a/"),
        ("unicode", "ünïcödé-☃"),
        ("control", "a\tb"),
        ("shard-no-slash", "shard#12"),
    ]
    .into_iter()
    .map(|(name, id)| (name, id.as_bytes().to_vec()))
    .chain([("long", "é".repeat(256).into_bytes())])
    .collect()
}

fn config_file_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let repo = fuzz_dir().parent().expect("the repository");
    let read = |path: &str| std::fs::read(repo.join(path)).expect("a config in the repository");
    // `goverse config gen`'s file, its random secrets made fixed so the seed stays put.
    let generated: String = goverse::config::ClusterFile::generate(2, 1, 64)
        .lines()
        .map(|line| match line.split_once(": ") {
            Some((key, _)) if key.trim() == "secret" || key.trim() == "admin_token" => {
                format!("{key}: 00112233445566778899aabbccddeeff\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let secured = format!(
        "{generated}tls:\n  ca_file: tls/ca.pem\n  client_ca_file: tls/clients.pem\n  \
         require_client_cert: true\n  reload_interval: 5s\nclient_quotas:\n  per_client: \
         {{ rate: 200, burst: 50 }}\n  per_address: {{ rate: 1000 }}\n  \
         max_concurrent_calls_per_client: 32\n  max_connections_per_address: 64\n  \
         max_streams_per_address: 16\n  methods:\n    - {{ type: Wallet, method: Deposit, \
         rate: 5, burst: 10 }}\n    - {{ type: \"*\", method: \"*\", rate: 500 }}\n"
    );
    let with_override =
        format!("{generated}\0GOVERSE_CLUSTER__SHARDS=128\nGOVERSE_NODES__0__ID=n\n");
    vec![
        ("generated", generated.into_bytes()),
        ("generated-tls-quotas", secured.into_bytes()),
        ("generated-with-overrides", with_override.into_bytes()),
        ("compose", read("deploy/compose/cluster.yaml")),
        (
            "upstream-demo",
            read("crates/goverse/tests/upstream_configs/demo-cluster.yml"),
        ),
        (
            "upstream-access-control",
            read("crates/goverse/tests/upstream_configs/multi-node-with-access-control.yaml"),
        ),
        (
            "upstream-postgres",
            read("crates/goverse/tests/upstream_configs/stress-with-postgres.yml"),
        ),
        (
            "upstream-autoload",
            read("crates/goverse/tests/upstream_configs/cluster-with-autoload.yml"),
        ),
    ]
}

fn persisted_state_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [
        (
            "room",
            &br#"{"name":"lobby","members":{"ann":{"joined":1,"roles":["op"]}},"messages":[[1,"ann","hi"]],"topic":null,"next_id":2,"mode":{"Invite":{"code":"x"}}}"#[..],
        ),
        ("wrapped", br#"{"goverse:bytes":"AAEC"}"#),
        ("binary", b"\x00\xff\x10"),
        ("nul-escape", br#"["\u0000","\ud800"]"#),
        ("reliable-success", b"success\0result\0\0"),
        ("reliable-failed", b"failed\0\0internal\0boom"),
        ("reliable-pending", b"pending"),
    ]
    .into_iter()
    .map(|(name, bytes)| (name, bytes.to_vec()))
    .collect()
}

fn cluster_records_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("shard-record", &b"127.0.0.1:47000,,9"[..]),
        ("shard-record-moving", b"127.0.0.1:47000,127.0.0.1:47001,12"),
        (
            "reach",
            b"up 127.0.0.1:47000\ndown 127.0.0.1:47001 connection refused\n",
        ),
        ("registration", b"ops=127.0.0.1:9101"),
        ("shard-key", b"/goverse/shards/00007"),
        ("pin-key", b"/goverse/pins/00012"),
    ]
    .into_iter()
    .map(|(name, bytes)| (name, bytes.to_vec()))
    .collect()
}

fn seeds(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    match target {
        "node_requests" => node_requests_seeds(),
        "node_responses" => node_responses_seeds(),
        "gate_http_body" => gate_http_body_seeds(),
        "object_id" => object_id_seeds(),
        "config_file" => config_file_seeds(),
        "persisted_state" => persisted_state_seeds(),
        "cluster_records" => cluster_records_seeds(),
        other => panic!("no seeds for {other}"),
    }
}

#[test]
fn every_seed_is_in_the_checked_in_corpus() {
    let write = std::env::var_os("GOVERSE_FUZZ_WRITE_SEEDS").is_some();
    for (target, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        for (name, bytes) in seeds(target) {
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let stored = std::fs::read(&path).unwrap_or_default();
            assert!(
                stored == bytes,
                "{} is missing or stale: GOVERSE_FUZZ_WRITE_SEEDS=1 cargo test -p goverse-fuzz \
                 --test corpus writes it",
                path.display()
            );
        }
    }
}

#[test]
fn the_corpus_and_every_past_finding_replay() {
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "{name} has no corpus");
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let bytes = std::fs::read(path).unwrap();
            run(name, *target, &path.display().to_string(), &bytes);
        }
    }
}

/// One mutation of `bytes`, of the kinds a fuzzer makes: a byte changed, inserted or removed, a
/// run duplicated, a cut, or a splice with another input.
fn mutate(rng: &mut fastrand::Rng, bytes: &mut Vec<u8>, other: &[u8]) {
    let at = |rng: &mut fastrand::Rng, len: usize| rng.usize(0..=len);
    match rng.u8(0..6) {
        0 if !bytes.is_empty() => {
            let i = rng.usize(0..bytes.len());
            bytes[i] ^= 1 << rng.u8(0..8);
        }
        1 => {
            let i = at(rng, bytes.len());
            bytes.insert(
                i,
                *rng.choice(&[0u8, b'"', b'{', b'}', b'\\', b',', 0xff, 0x80])
                    .unwrap(),
            );
        }
        2 if !bytes.is_empty() => {
            let i = rng.usize(0..bytes.len());
            bytes.remove(i);
        }
        3 if !bytes.is_empty() => {
            let start = rng.usize(0..bytes.len());
            let end = rng.usize(start..=bytes.len().min(start + 16));
            let run = bytes[start..end].to_vec();
            bytes.splice(start..start, run);
        }
        4 => bytes.truncate(at(rng, bytes.len())),
        _ => {
            let cut = at(rng, bytes.len());
            let from = at(rng, other.len());
            bytes.truncate(cut);
            bytes.extend_from_slice(&other[from..]);
        }
    }
}

#[test]
fn seeded_mutations_of_the_corpus() {
    /// Mutated inputs per target: a few seconds in all, whatever the corpus has grown to.
    const RUNS: usize = 20_000;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for (name, target) in TARGETS {
        let corpus: Vec<Vec<u8>> = files(&fuzz_dir().join("corpus").join(name))
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        let mut base = 0;
        let mut bytes = Vec::new();
        for run_no in 0..RUNS {
            // A few mutations stacked on one input, then a fresh input.
            if run_no % 8 == 0 {
                base = rng.usize(0..corpus.len());
                bytes.clone_from(&corpus[base]);
            }
            let other = &corpus[rng.usize(0..corpus.len())];
            mutate(&mut rng, &mut bytes, other);
            run(
                name,
                *target,
                &format!("mutation {run_no} (of corpus input {base})"),
                &bytes,
            );
        }
    }
}
