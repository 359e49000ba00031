//! The deployment files in the repository (Dockerfile, docker-compose.yml, deploy/k8s,
//! deploy/prometheus) hold together: no container engine runs here, so each file is parsed, the
//! cluster configurations they carry pass `goverse config check` with the environment the files
//! give the processes, every environment variable they set is one the binary reads, and every
//! node, gate, port and probe they name is one the configuration has.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

const GOVERSE: &str = env!("CARGO_BIN_EXE_goverse");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a (multi-document) YAML file.
fn documents(path: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&read(path))
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// Environment variables a process reads that are not configuration overrides.
const PROCESS_VARIABLES: [&str; 2] = ["RUST_LOG", "GOVERSE_LOG_FORMAT"];

/// `goverse config check FILE` with `env` (placeholder values for secrets): passes.
fn config_check(file: &Path, env: &BTreeMap<String, String>) {
    let out = std::process::Command::new(GOVERSE)
        .args(["config", "check"])
        .arg(file)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `vars` with a placeholder value for each, checked to be ones the binary reads.
fn placeholders<'a>(vars: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|name| !PROCESS_VARIABLES.contains(name))
        .map(|name| {
            assert!(
                name.starts_with("GOVERSE_") && name.contains("__"),
                "{name} is not a variable goverse reads"
            );
            (name.to_owned(), "a-placeholder-of-sixteen-chars".to_owned())
        })
        .collect()
}

fn ids(config: &goverse::config::ClusterFile) -> (Vec<String>, Vec<String>) {
    (
        config.nodes.iter().map(|n| n.id.clone()).collect(),
        config.gates.iter().map(|g| g.id.clone()).collect(),
    )
}

/// The value after `flag` in an argument list.
/// The port of the file's `inspector.http_addr`.
fn inspector_port(config: &goverse::config::ClusterFile) -> &str {
    let http = config
        .inspector
        .as_ref()
        .and_then(|i| i.http_addr.as_deref());
    http.expect("an inspector address")
        .rsplit(':')
        .next()
        .unwrap()
}

fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[test]
fn the_dockerfile_builds_the_binary_and_runs_it_unprivileged() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("cargo build --profile dist --bin goverse"));
    assert!(read("Cargo.toml").contains("[profile.dist]"));
    assert!(dockerfile.contains("target/dist/goverse"));
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/goverse\"]"));
    assert_eq!(
        dockerfile.matches("FROM ").count(),
        2,
        "multi-stage: build, then run"
    );
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target"));
}

#[test]
fn docker_compose_runs_the_cluster_its_configuration_describes() {
    let compose = &documents("docker-compose.yml")[0];
    let services = compose["services"].as_mapping().unwrap();
    let names: Vec<&str> = services.keys().map(text).collect();
    for needed in [
        "etcd",
        "postgres",
        "db-init",
        "node-1",
        "node-2",
        "node-3",
        "gate-1",
        "gate-2",
        "inspector",
        "prometheus",
    ] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
    let config_path = root().join("deploy/compose/cluster.yaml");
    let goverse_env = compose["x-goverse"]["environment"].as_mapping().unwrap();
    let env = placeholders(goverse_env.keys().map(text));
    config_check(&config_path, &env);
    let mut full_env: Vec<(String, String)> = env.clone().into_iter().collect();
    full_env.push(("GOVERSE_POSTGRES__PASSWORD".into(), "x".into()));
    let config = goverse::config::ClusterFile::parse(
        &std::fs::read_to_string(&config_path).unwrap(),
        "compose",
        &full_env,
    )
    .unwrap();
    let (nodes, gates) = ids(&config);
    let mounted = text(&compose["x-goverse"]["volumes"][0]);
    assert!(mounted.starts_with("./deploy/compose/cluster.yaml:/etc/goverse/cluster.yaml"));
    for (name, service) in services {
        let Some(command) = service["command"].as_sequence() else {
            continue;
        };
        let args: Vec<String> = command.iter().map(|a| text(a).to_owned()).collect();
        if let Some(path) = flag(&args, "--config") {
            assert_eq!(path, "/etc/goverse/cluster.yaml", "{name:?}");
        }
        if let Some(id) = flag(&args, "--node-id") {
            assert!(
                nodes.iter().any(|n| n == id),
                "{name:?} runs node {id}, not in {nodes:?}"
            );
        }
        if let Some(id) = flag(&args, "--gate-id") {
            assert!(
                gates.iter().any(|g| g == id),
                "{name:?} runs gate {id}, not in {gates:?}"
            );
        }
    }
    // The inspector serves where the file says, with the admin token for its actions.
    let inspector: Vec<String> = services["inspector"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| text(a).to_owned())
        .collect();
    assert_eq!(inspector[0], "inspector");
    let port = inspector_port(&config);
    assert_eq!(
        text(&services["inspector"]["ports"][0]),
        format!("{port}:{port}")
    );
    assert!(
        config.cluster.admin_token.is_some(),
        "the compose env sets the admin token"
    );
    // Prometheus scrapes each node's http_addr port and each gate's ops_addr port.
    let prometheus = &documents("deploy/prometheus/prometheus.yml")[0];
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| {
            job["static_configs"][0]["targets"]
                .as_sequence()
                .unwrap()
                .clone()
        })
        .map(|t| text(&t).to_owned())
        .collect();
    let port = |addr: &Option<String>| {
        addr.as_ref()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };
    for node in &config.nodes {
        assert!(
            targets.contains(&format!("{}:{}", node.id, port(&node.http_addr))),
            "{targets:?}"
        );
    }
    for gate in &config.gates {
        assert!(
            targets.contains(&format!("{}:{}", gate.id, port(&gate.ops_addr))),
            "{targets:?}"
        );
    }
}

#[test]
fn the_kubernetes_manifests_run_the_configuration_in_their_config_map() {
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let dir = root().join("deploy/k8s");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in &files {
        let relative = format!("deploy/k8s/{}", file.file_name().unwrap().to_str().unwrap());
        for doc in documents(&relative) {
            assert!(
                doc["apiVersion"].is_string() && doc["metadata"]["name"].is_string(),
                "{relative}"
            );
            by_kind
                .entry(text(&doc["kind"]).to_owned())
                .or_default()
                .push(doc);
        }
    }
    let config_map = &by_kind["ConfigMap"][0];
    let cluster_yaml = text(&config_map["data"]["cluster.yaml"]);
    let temp = tempfile::tempdir().unwrap();
    let config_path = temp.path().join("cluster.yaml");
    std::fs::write(&config_path, cluster_yaml).unwrap();
    let secret_keys: Vec<&str> = by_kind["Secret"][0]["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(text)
        .collect();

    let mut workloads: Vec<&Value> = by_kind["StatefulSet"].iter().collect();
    workloads.extend(&by_kind["Deployment"]);
    workloads.extend(&by_kind["Job"]);
    let mut all_env = BTreeMap::new();
    for workload in &workloads {
        let name = text(&workload["metadata"]["name"]);
        let pod = &workload["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<String> = container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| text(a).to_owned())
            .collect();
        assert_eq!(
            flag(&args, "--config"),
            Some("/etc/goverse/cluster.yaml"),
            "{name}"
        );
        assert_eq!(
            text(&pod["volumes"][0]["configMap"]["name"]),
            text(&config_map["metadata"]["name"])
        );
        for var in container["env"].as_sequence().unwrap() {
            let var_name = text(&var["name"]);
            if let Some(key) = var["valueFrom"]["secretKeyRef"]["key"].as_str() {
                assert!(
                    secret_keys.contains(&key),
                    "{name}: secret key {key} not in {secret_keys:?}"
                );
            }
            if var_name.starts_with("GOVERSE_") || var_name == "RUST_LOG" {
                all_env.extend(placeholders([var_name]));
            }
        }
        // Servers are probed on their operations port, which the configuration serves.
        if args[0] != "db" {
            let ops = container["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                // The inspector's one port serves its probes beside its pages.
                .find(|p| p["name"] == "ops" || (args[0] == "inspector" && p["name"] == "http"))
                .map(|p| p["containerPort"].as_u64().unwrap())
                .unwrap_or_else(|| panic!("{name} has no ops port"));
            assert_eq!(
                container["livenessProbe"]["httpGet"]["path"], "/healthz",
                "{name}"
            );
            assert_eq!(
                container["readinessProbe"]["httpGet"]["path"], "/ready",
                "{name}"
            );
            assert!(
                cluster_yaml.contains(&format!("0.0.0.0:{ops}")),
                "{name}: port {ops}"
            );
        }
    }
    config_check(&config_path, &all_env);

    let env: Vec<(String, String)> = all_env.into_iter().collect();
    let config = goverse::config::ClusterFile::parse(cluster_yaml, "k8s", &env).unwrap();
    let (nodes, gates) = ids(&config);
    // Nodes: a StatefulSet whose pod names are the configuration's node ids, with stable DNS
    // names as their advertised addresses.
    let nodes_set = &by_kind["StatefulSet"][0];
    let set_name = text(&nodes_set["metadata"]["name"]);
    let replicas = nodes_set["spec"]["replicas"].as_u64().unwrap();
    let service = text(&nodes_set["spec"]["serviceName"]);
    for i in 0..replicas {
        let id = format!("{set_name}-{i}");
        let entry = config
            .nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("{id} not in {nodes:?}"));
        assert!(
            entry.advertise().starts_with(&format!("{id}.{service}.")),
            "{entry:?}"
        );
    }
    let deployment = |name: &str| {
        by_kind["Deployment"]
            .iter()
            .find(|d| text(&d["metadata"]["name"]) == name)
            .unwrap_or_else(|| panic!("no Deployment {name}"))
            .clone()
    };
    // The inspector: serves on the file's inspector port, with the admin token for actions.
    let inspector = deployment("goverse-inspector");
    let container = &inspector["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(text(&container["args"][0]), "inspector");
    assert_eq!(
        container["ports"][0]["containerPort"]
            .as_u64()
            .unwrap()
            .to_string(),
        inspector_port(&config)
    );
    assert!(
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|e| text(&e["name"]) == "GOVERSE_CLUSTER__ADMIN_TOKEN")
    );
    // Gates: a Deployment of one configured entry, each replica advertising its pod address.
    let gate_args: Vec<String> =
        deployment("goverse-gate")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| text(a).to_owned())
            .collect();
    let gate_id = flag(&gate_args, "--gate-id").unwrap();
    assert!(
        gates.iter().any(|g| g == gate_id),
        "{gate_id} not in {gates:?}"
    );
    assert_eq!(flag(&gate_args, "--advertise"), Some("$(POD_IP):49000"));
}
