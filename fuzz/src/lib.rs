//! Fuzz targets for every decoder that reads bytes from the network or from disk.
//!
//! Each target is a function of arbitrary bytes that reads them the way the running code does
//! and checks what must hold of the result; it panics only when something that must hold does
//! not. The same functions run three ways:
//!
//! - `scripts/fuzz` (and `./scripts/test`, for a bounded time): coverage-guided, by libFuzzer
//!   through `cargo fuzz`, from the checked-in corpus in `fuzz/corpus/<target>`;
//! - `cargo test -p goverse-fuzz`: every corpus file and every past finding
//!   (`fuzz/regressions/<target>`) replayed, then seeded mutations of them;
//! - `cargo fuzz run <target> <file>` to replay one input by hand.
//!
//! | target | what it reads |
//! |---|---|
//! | [`node_requests`] | a node's incoming `RequestBatch` (peers' bytes), and the hand-written request encoder and batch framing against prost's decoder |
//! | [`node_responses`] | a link's incoming `ResponseBatch` (a node's bytes) |
//! | [`gate_http_body`] | an HTTP call body: upstream's base64 envelope or plain protobuf-JSON |
//! | [`object_id`] | an object ID: its routing form and its shard |
//! | [`config_file`] | the cluster file (YAML) with `GOVERSE_…` overrides |
//! | [`persisted_state`] | state in PostgreSQL's JSON column, reliable-call records, JSON object state |
//! | [`cluster_records`] | the shard map's and the reach reports' values and keys in etcd |

use std::collections::BTreeMap;
use std::sync::OnceLock;

use goverse::config::ClusterFile;
use goverse_cluster::{Keys, ProcessInfo, ReachReport, ShardRecord};
use goverse_core::{MAX_OBJECT_ID_CHARS, MAX_SHARD_COUNT, ObjectIdKind, Route, ShardId, kind_of};
use goverse_gate::codec::Catalog;
use goverse_proto::node::{DescribeResponse, Method, ObjectType};
use prost::Message as _;

/// A fuzz target: reads the bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name `cargo fuzz` and the corpus directories use.
pub const TARGETS: &[(&str, Target)] = &[
    ("node_requests", node_requests),
    ("node_responses", node_responses),
    ("gate_http_body", gate_http_body),
    ("object_id", object_id),
    ("config_file", config_file),
    ("persisted_state", persisted_state),
    ("cluster_records", cluster_records),
];

/// A `RequestBatch` as a node reads it from a peer; every request in it written again by the
/// caller's encoder and framed as a batch reads back the same.
pub fn node_requests(bytes: &[u8]) {
    goverse_transport::fuzzing::request_batch(bytes);
}

/// A `ResponseBatch` as a link reads it from a node: each response becomes the caller's
/// outcome; a failure's code and message survive the error type.
pub fn node_responses(bytes: &[u8]) {
    goverse_transport::fuzzing::response_batch(bytes);
}

/// An HTTP call body for the method the first byte picks among [`catalog`]'s: refused with a
/// client error, or accepted and, when plain JSON, the same after rendering and reading again.
pub fn gate_http_body(bytes: &[u8]) {
    goverse_gate::fuzzing::http_call_body(catalog(), bytes);
}

/// FNV-1a 32-bit written out from its definition, apart from the runtime's: upstream places an
/// object by this hash of its ID modulo the shard count.
fn fnv1a_reference(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 2_166_136_261;
    const PRIME: u32 = 16_777_619;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(PRIME)
    })
}

/// An object ID as a client sends it (IDs arrive as UTF-8 strings): its routing form is what its
/// text says, and its shard is in range and is upstream's (FNV-1a of the whole ID, or the
/// `shard#N` it names).
pub fn object_id(bytes: &[u8]) {
    let Ok(id) = std::str::from_utf8(bytes) else {
        return;
    };
    let kind = kind_of(id);
    match &kind {
        Ok(kind) => {
            assert!(!id.is_empty(), "an empty ID accepted");
            assert!(
                id.chars().count() <= MAX_OBJECT_ID_CHARS,
                "a long ID accepted"
            );
            assert!(
                !id.bytes().any(|b| b < 0x20 || b == 0x7f),
                "an ID with a control character accepted: {id:?}"
            );
            match kind {
                ObjectIdKind::Regular => {
                    assert!(!id.contains('/') && !id.starts_with("shard#"), "{id:?}");
                }
                ObjectIdKind::FixedShard(n) => {
                    let (prefix, name) = id.split_once('/').expect("a pinned ID has a name");
                    let number = prefix.strip_prefix("shard#").unwrap_or_default();
                    assert!(!number.is_empty() && !name.is_empty(), "{id:?}");
                    if let Ok(parsed) = number.parse::<u64>() {
                        assert_eq!(parsed, *n, "{id:?}");
                    }
                }
                ObjectIdKind::FixedNode(addr) => {
                    let (prefix, name) = id.split_once('/').expect("a pinned ID has a name");
                    assert_eq!(prefix, *addr, "{id:?}");
                    assert!(!addr.is_empty() && !name.is_empty(), "{id:?}");
                }
            }
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
    for count in [1, 7, 64, 8192, MAX_SHARD_COUNT] {
        let hashed = ShardId(fnv1a_reference(id.as_bytes()) % count);
        match (&kind, Route::of(id, count)) {
            (Err(_), Ok(route)) => panic!("{id:?} refused by its kind but routed to {route:?}"),
            (Err(_), Err(_)) => {}
            (Ok(ObjectIdKind::Regular), Ok(route)) => {
                assert_eq!(route, Route::Shard(hashed), "{id:?} of {count}");
            }
            (Ok(ObjectIdKind::FixedNode(addr)), Ok(route)) => {
                assert_eq!(
                    route,
                    Route::Node {
                        addr,
                        shard: hashed
                    },
                    "{id:?} of {count}"
                );
            }
            (Ok(ObjectIdKind::FixedShard(n)), Ok(route)) => {
                assert!(
                    *n < u64::from(count),
                    "{id:?} routed outside {count} shards"
                );
                assert_eq!(u64::from(route.shard().0), *n, "{id:?}");
            }
            (Ok(ObjectIdKind::FixedShard(n)), Err(err)) => {
                assert!(*n >= u64::from(count), "{id:?} of {count}: {err}");
            }
            (Ok(_), Err(err)) => panic!("{id:?} of {count} refused: {err}"),
        }
    }
}

/// The cluster file as an operator writes it, with overrides after a NUL (`GOVERSE_…=value`
/// lines, as the environment gives them): refused with an error naming the file, or accepted,
/// every setting derived from it without a panic, and written back out it reads the same.
pub fn config_file(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (yaml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let file = match ClusterFile::parse(yaml, "fuzz.yaml", &env) {
        Ok(file) => file,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    let _ = file.rule_warnings();
    let _ = file.connection_limits();
    let _ = file.etcd();
    let _ = file.all_loopback();
    let _ = file.tls_reload_interval();
    for node in &file.nodes {
        let _ = file.node_config(&node.id);
    }
    let written = file.to_yaml();
    let again = ClusterFile::parse(&written, "written.yaml", &[])
        .unwrap_or_else(|err| panic!("the file written back is refused: {err}\n{written}"));
    assert_eq!(
        again.to_yaml(),
        written,
        "the file written back reads differently"
    );
}

/// The shape of a typical object's JSON state: nested records, maps, lists, options, enums.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct RoomState {
    name: String,
    members: BTreeMap<String, Member>,
    messages: Vec<(u64, String, String)>,
    topic: Option<String>,
    next_id: u64,
    mode: Mode,
}

#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Member {
    joined: i64,
    roles: Vec<String>,
}

#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
enum Mode {
    #[default]
    Open,
    Invite {
        code: String,
    },
    Closed(u32),
}

/// Stored state as a store hands it back: PostgreSQL's JSON column (any bytes stored as JSON
/// it accepts and back unchanged), reliable-call records from their columns, and an object's
/// JSON state restored (refused with an error, or restored and saved again the same).
pub fn persisted_state(bytes: &[u8]) {
    goverse_persistence::fuzzing::json_column(bytes);
    goverse_persistence::fuzzing::reliable_record(bytes);
    let mut state = RoomState::default();
    if goverse_node::from_json_state(&mut state, bytes).is_ok() {
        let saved = goverse_node::to_json_state(&state).expect("a restored state saves");
        let mut again = RoomState::default();
        goverse_node::from_json_state(&mut again, &saved).expect("a saved state restores");
        assert_eq!(again, state, "state round trip");
    }
}

/// Values and keys of the cluster store as a node reads them from etcd (written by other
/// processes, possibly older or damaged): refused with a reason, or read and written back the
/// same.
pub fn cluster_records(bytes: &[u8]) {
    if let Ok(record) = ShardRecord::decode(ShardId(3), bytes) {
        let again = ShardRecord::decode(ShardId(3), &record.encode())
            .unwrap_or_else(|err| panic!("{record:?} written back is refused: {err}"));
        assert_eq!(again, record, "shard record round trip");
    }
    if let Ok(report) = ReachReport::decode("/goverse/reach/fuzz", bytes) {
        // Causes are cut and stripped of control characters when written, so the first
        // writing settles the report and every later one keeps it.
        let settled = ReachReport::decode("settled", &report.encode()).expect("written back");
        assert_eq!(settled.up, report.up, "peers reached");
        assert_eq!(
            settled.down.keys().collect::<Vec<_>>(),
            report.down.keys().collect::<Vec<_>>(),
            "peers not reached"
        );
        let again = ReachReport::decode("again", &settled.encode()).expect("written again");
        assert_eq!(again, settled, "reach report round trip");
    }
    let info = ProcessInfo::decode(bytes);
    assert_eq!(
        ProcessInfo::decode(&info.encode()),
        info,
        "registration round trip"
    );
    if let Ok(key) = std::str::from_utf8(bytes) {
        let keys = Keys::default();
        if let Some(shard) = keys.shard_of_key(key) {
            assert_eq!(
                keys.shard_of_key(&keys.shard(shard)),
                Some(shard),
                "{key:?}"
            );
        }
        if let Some(shard) = keys.pin_of_key(key) {
            assert_eq!(keys.pin_of_key(&keys.pin(shard)), Some(shard), "{key:?}");
        }
    }
}

/// The object types the gate body target calls: every JSON shape of `fuzz/proto/fuzz.proto`, a
/// wrapper type (written `{"value": …}` or bare), a message shaped like upstream's envelope,
/// and a method whose request type no node described.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
        let files = protox::compile(["fuzz.proto"], [dir]).expect("fuzz.proto compiles");
        let method = |name: &str, request: &str| Method {
            name: name.to_owned(),
            request_type: request.to_owned(),
            response_type: request.to_owned(),
            read_only: false,
        };
        let object = |name: &str, methods: Vec<Method>| ObjectType {
            name: name.to_owned(),
            methods,
        };
        let describe = DescribeResponse {
            node_address: "fuzz:1".to_owned(),
            types: vec![
                object(
                    "Everything",
                    vec![method("Set", "goverse.fuzz.v1.Everything")],
                ),
                object(
                    "Counter",
                    vec![
                        method("Add", "google.protobuf.Int32Value"),
                        method("Rename", "google.protobuf.StringValue"),
                        method("Get", "google.protobuf.Empty"),
                    ],
                ),
                object("Room", vec![method("Post", "goverse.fuzz.v1.ChatMessage")]),
                object("Legacy", vec![method("Call", "goverse.fuzz.v1.Enveloped")]),
                object("Ghost", vec![method("Haunt", "goverse.fuzz.v1.Missing")]),
                object(
                    "Config",
                    vec![
                        method("Patch", "google.protobuf.Struct"),
                        method("Stamp", "google.protobuf.Timestamp"),
                    ],
                ),
            ],
            file_descriptor_set: files.encode_to_vec(),
        };
        Catalog::from_describe(&describe)
    })
}
