//! Configuration files as upstream GoVerse writes them load here, every field applied: each
//! file in `tests/upstream_configs/` has the shape (sections, fields, value forms) of one of
//! upstream's example or stress-test configurations. Plain parsing: no I/O beyond the files.

use goverse::config::ClusterFile;

const SECRET: &str = "a-secret-of-the-test-cluster";

fn load(name: &str) -> ClusterFile {
    let path = format!(
        "{}/tests/upstream_configs/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    // Upstream's files carry no secret; ours refuses a cluster on non-loopback addresses
    // without one, so the operator gives it in the environment, as these tests do.
    let env = [("GOVERSE_CLUSTER__SECRET".to_owned(), SECRET.to_owned())];
    ClusterFile::parse(&text, name, &env).unwrap_or_else(|err| panic!("{err}"))
}

#[test]
fn every_upstream_shaped_configuration_loads() {
    let dir = format!("{}/tests/upstream_configs", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    for name in &names {
        let file = load(name);
        assert_eq!(file.version, 1, "{name}");
        assert!(!file.nodes.is_empty(), "{name}");
        for node in &file.nodes {
            file.node_config(&node.id)
                .unwrap_or_else(|err| panic!("{name}: node {}: {err}", node.id));
        }
    }
}

#[test]
fn postgres_pool_sizes_are_applied() {
    let file = load("stress-with-postgres.yml");
    let pg = file.postgres.as_ref().unwrap();
    assert_eq!((pg.max_open_conns, pg.max_idle_conns), (Some(4), Some(4)));
    let store = pg.store_config();
    assert_eq!((store.pool_size, store.max_idle), (4, Some(4)));

    // Idle beyond the pool is clipped to it; pool_size and max_open_conns must agree.
    let text = std::fs::read_to_string(format!(
        "{}/tests/upstream_configs/stress-with-postgres.yml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let env = |pairs: &[(&str, &str)]| {
        let mut all = vec![("GOVERSE_CLUSTER__SECRET".to_owned(), SECRET.to_owned())];
        all.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        all
    };
    let file = ClusterFile::parse(
        &text,
        "f",
        &env(&[("GOVERSE_POSTGRES__MAX_IDLE_CONNS", "9")]),
    )
    .unwrap();
    assert_eq!(file.postgres.unwrap().store_config().max_idle, Some(4));
    let err =
        ClusterFile::parse(&text, "f", &env(&[("GOVERSE_POSTGRES__POOL_SIZE", "5")])).unwrap_err();
    assert!(err.message.contains("postgres.max_open_conns"), "{err}");
}

#[test]
fn the_inspector_section_and_earlier_access_rules_read_as_upstream_meant() {
    let file = load("demo-cluster.yml");
    let inspector = file.inspector.unwrap();
    assert_eq!(inspector.http_addr.as_deref(), Some("0.0.0.0:48200"));
    assert_eq!(inspector.advertise_addr.as_deref(), Some("localhost:47200"));

    // `object: X` is an ID pattern for any type.
    let file = load("multi-node-with-access-control.yaml");
    let rules = goverse::gate::rules::Rules::new(&file.object_access_rules, &[]).unwrap();
    let first = &file.object_access_rules[0];
    assert_eq!(
        (first.object_type.as_str(), first.id.as_str()),
        ("/.*/", "RoomDirectory0")
    );
    let client = |t: &str, id: &str, m: &str| rules.call_access(t, id, m).allows_clients();
    assert!(client("RoomDirectory", "RoomDirectory0", "ListRooms"));
    assert!(!client("RoomDirectory", "RoomDirectory0", "Reset"));
    assert!(client("Room", "Room-lobby", "Join"));
    assert!(!client("Room", "Room-lobby", "Kick"));

    // Both forms in one rule is a mistake, named.
    let bad = "version: 1\ncluster: {shards: 8, provider: etcd, etcd: {endpoints: [\"127.0.0.1:2379\"]}}\n\
               nodes: [{id: n, grpc_addr: \"127.0.0.1:1\"}]\n\
               object_access_rules: [{object: A, type: T, access: ALLOW}]\n";
    let err = ClusterFile::parse(bad, "bad.yaml", &[]).unwrap_err();
    assert!(err.message.contains("`object`"), "{err}");
}
