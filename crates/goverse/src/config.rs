//! The cluster configuration file: upstream's YAML (`version: 1`, `cluster`, `postgres`,
//! `nodes`, `gates`, `object_access_rules`, `object_lifecycle_rules`) with this project's
//! additions (`cluster.lease_ttl`, `cluster.min_quorum`, `cluster.save_interval`,
//! `cluster.peer_check_interval`, `cluster.secret`, `sqlite`).
//!
//! Every field is applied; an unknown field, or a value that does not parse, is an error naming
//! it and its line. Environment variables `GOVERSE_<SECTION>__<FIELD>` override fields after the
//! file is read (`GOVERSE_CLUSTER__SHARDS=64`, `GOVERSE_POSTGRES__PASSWORD=…`,
//! `GOVERSE_CLUSTER__ETCD__ENDPOINTS='[a:2379, b:2379]'`): `__` separates the levels, the value
//! is read as YAML.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::InvalidSetting;
use crate::gate::rules::{AccessRule, LifecycleRule};

/// A whole configuration file.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Must be 1.
    pub version: u32,
    /// The cluster: shards, coordination, timeouts.
    pub cluster: ClusterSection,
    /// The object store, when it is PostgreSQL.
    #[serde(default)]
    pub postgres: Option<PostgresSection>,
    /// The object store, when it is one SQLite file shared by the processes of one machine.
    #[serde(default)]
    pub sqlite: Option<SqliteSection>,
    /// The nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeEntry>,
    /// The gates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateEntry>,
    /// Upstream's `object_access_rules`, enforced by every gate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_access_rules: Vec<AccessRule>,
    /// Upstream's `object_lifecycle_rules`, enforced by every gate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_lifecycle_rules: Vec<LifecycleRule>,
    /// Ours: quotas every gate applies to its clients (rates per client, per address and per
    /// type and method; calls in flight per client; connections and push streams per address).
    #[serde(default)]
    pub client_quotas: Option<crate::gate::QuotaConfig>,
    /// Upstream's inspector section: where `goverse inspector` serves its web UI and API
    /// (`http_addr`; upstream's gRPC fields are accepted and unused: nodes here are not pushed
    /// to the inspector, it reads the cluster store and the nodes' operations ports).
    #[serde(default)]
    pub inspector: Option<InspectorSection>,
    /// Ours: TLS on every node and gate port and link (see [`TlsSection`]).
    #[serde(default)]
    pub tls: Option<TlsSection>,
}

/// `tls:` (ours). With it, node services and node links speak mutual TLS (a peer is admitted
/// when its certificate is signed by `ca_file` and names a cluster member, `goverse://node/ID`
/// or `goverse://gate/ID`, and the host it claims), and gates serve clients over TLS. The
/// cluster secret, when set, is asked for as well. Paths are relative to the file's directory.
/// Certificates and keys are reloaded on SIGHUP and when a file changes.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The cluster's CA (PEM): it signs every node's and gate's certificate, and clients check
    /// gates against it.
    pub ca_file: PathBuf,
    /// The certificate of every process without one of its own (`tls_cert_file` of its entry).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Gates ask clients for a certificate signed by this CA (PEM); one that presents another
    /// is refused. Without it, clients authenticate by token only.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: every client must present a certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_client_cert: bool,
    /// How often the files are checked for changes (10s).
    #[serde(default, with = "opt_duration")]
    pub reload_interval: Option<Duration>,
}

/// `cluster:`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Shards (8192 as upstream); every process of the cluster uses the same count.
    pub shards: u32,
    /// Must be `etcd`.
    pub provider: String,
    /// The etcd endpoints and key prefix.
    pub etcd: EtcdSection,
    /// How long the set of nodes must hold still before the leader rebalances (10s).
    #[serde(default, with = "opt_duration")]
    pub cluster_state_stability_duration: Option<Duration>,
    /// A shard its target has not taken for this long goes to another node (1m).
    #[serde(default, with = "opt_duration")]
    pub stuck_shard_reallocation_timeout: Option<Duration>,
    /// Default deadline of calls (30s).
    #[serde(default, with = "opt_duration")]
    pub default_call_timeout: Option<Duration>,
    /// Default deadline of creates (30s).
    #[serde(default, with = "opt_duration")]
    pub default_create_timeout: Option<Duration>,
    /// Default deadline of deletes (30s).
    #[serde(default, with = "opt_duration")]
    pub default_delete_timeout: Option<Duration>,
    /// Objects every node keeps alive: created once the cluster is stable, on the node serving
    /// each, moving with their shard, recreated when deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auto_load_objects: Vec<AutoLoadEntry>,
    /// Ours: the TTL of every node's and gate's lease (10s).
    #[serde(default, with = "opt_duration")]
    pub lease_ttl: Option<Duration>,
    /// Ours: nodes needed before shards are given out and placement runs (1).
    #[serde(default)]
    pub min_quorum: Option<usize>,
    /// Ours: how often each node checks that it reaches every other node (1s); a node its
    /// peers cannot reach gets no shards, and one found unreachable is drained.
    #[serde(default, with = "opt_duration")]
    pub peer_check_interval: Option<Duration>,
    /// Ours: how often changed persistent objects are saved (60s; `0s`: only on deactivation,
    /// hand-over and shutdown).
    #[serde(default, with = "opt_duration")]
    pub save_interval: Option<Duration>,
    /// Ours: limits on every node's and gate's listening ports (`cluster.connections`).
    #[serde(default)]
    pub connections: Option<ConnectionsSection>,
    /// Ours: the token operators send (`Authorization: Bearer …`) for profiles and the
    /// inspector's actions (at least 16 characters; better given as
    /// `GOVERSE_CLUSTER__ADMIN_TOKEN`).
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Ours: the cluster's shared secret (at least 16 characters; better given as
    /// `GOVERSE_CLUSTER__SECRET`). Nodes admit only peers that present it. Without one, every
    /// node and gate address must be loopback.
    #[serde(default)]
    pub secret: Option<String>,
}

/// `cluster.connections:` (ours): limits on every listening port of the cluster's processes;
/// each field left out keeps its default.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsSection {
    /// Most connections one port holds open at once (10000).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// A connection with no byte either way for this long is closed (60s).
    #[serde(default, with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// How long an HTTP/1 client may take to send a request's headers (10s).
    #[serde(default, with = "opt_duration")]
    pub header_timeout: Option<Duration>,
    /// How long a stopping server lets open requests finish (5s).
    #[serde(default, with = "opt_duration")]
    pub drain_timeout: Option<Duration>,
}

/// One `cluster.auto_load_objects` entry (upstream's fields).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoLoadEntry {
    /// The object type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The plain ID.
    pub id: String,
    /// One object per shard, `shard#N/id`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_shard: bool,
    /// One object per node, `host:port/id`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_node: bool,
}

impl AutoLoadEntry {
    /// The node's form of the entry.
    pub fn to_auto_load(&self) -> crate::AutoLoad {
        crate::AutoLoad {
            type_name: self.type_name.clone(),
            id: self.id.clone(),
            scope: match (self.per_shard, self.per_node) {
                (true, _) => crate::AutoLoadScope::PerShard,
                (false, true) => crate::AutoLoadScope::PerNode,
                (false, false) => crate::AutoLoadScope::Singleton,
            },
        }
    }
}

/// What [`ClusterFile::generate_with`] writes.
#[derive(Debug, Clone)]
pub struct Generate {
    /// Nodes (`node-1`, …).
    pub nodes: usize,
    /// Gates (`gate-1`, …).
    pub gates: usize,
    /// Shards.
    pub shards: u32,
    /// The etcd endpoint (`127.0.0.1:2379`).
    pub etcd: String,
    /// The SQLite file (`objects.db`, relative to the processes' directory).
    pub sqlite_path: String,
    /// The first node's port (47001); the others follow.
    pub node_port: u16,
    /// The first gate's gRPC port (49001); the others follow.
    pub gate_port: u16,
    /// The first gate's HTTP port (8081); the others follow.
    pub http_port: u16,
    /// The first node's operations port (`http_addr`: metrics, health; 9101); the others
    /// follow.
    pub ops_port: u16,
    /// The inspector's port (`inspector.http_addr`; 8090).
    pub inspector_port: u16,
    /// TLS: the directory (as the file names it, relative to the file's) of the development
    /// CA and the certificates [`ClusterFile::issue_dev_certificates`] writes. `None`: plaintext.
    pub tls_dir: Option<PathBuf>,
}

impl Default for Generate {
    fn default() -> Self {
        Self {
            nodes: 3,
            gates: 1,
            shards: crate::DEFAULT_SHARD_COUNT,
            etcd: "127.0.0.1:2379".to_owned(),
            sqlite_path: "objects.db".to_owned(),
            node_port: 47001,
            gate_port: 49001,
            http_port: 8081,
            ops_port: 9101,
            inspector_port: 8090,
            tls_dir: None,
        }
    }
}

/// `cluster.etcd:`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// `host:port` of each etcd member; every one is used.
    pub endpoints: Vec<String>,
    /// The key prefix (`/goverse`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Ours: etcd's CA (PEM); with it the endpoints are reached over TLS and etcd's
    /// certificate is checked against it and the endpoint's host.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Ours: the client certificate etcd asks for (`--client-cert-auth`), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_prefix() -> String {
    crate::cluster::DEFAULT_PREFIX.to_owned()
}

impl PostgresSection {
    /// The store configuration this section gives.
    pub fn store_config(&self) -> crate::persistence::PostgresConfig {
        let mut config = crate::persistence::PostgresConfig::from_parts(
            &self.host,
            self.port,
            &self.user,
            &self.password,
            &self.database,
            &self.sslmode,
        )
        .with_ssl_files(
            self.sslrootcert.as_deref(),
            self.sslcert.as_deref(),
            self.sslkey.as_deref(),
        );
        if let Some(size) = self.pool_size.or(self.max_open_conns) {
            config.pool_size = size;
        }
        config.max_idle = self.max_idle_conns.map(|idle| idle.min(config.pool_size));
        if let Some(timeout) = self.statement_timeout {
            config.statement_timeout = timeout;
        }
        config
    }
}

/// `postgres:` (upstream's fields).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// Host (`localhost`).
    #[serde(default = "default_host")]
    pub host: String,
    /// Port (5432).
    #[serde(default = "default_port")]
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (better given as `GOVERSE_POSTGRES__PASSWORD`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// Database.
    pub database: String,
    /// libpq's: `disable`, `allow`, `prefer`, `require`, `verify-ca` or `verify-full` (the last
    /// two check the server's certificate against `sslrootcert`; `verify-full` also its host).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sslmode: String,
    /// Ours (libpq's name): the CA PostgreSQL's certificate is checked against (PEM).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Ours (libpq's name): a client certificate to present (PEM), with `sslkey`.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// Ours: connections in the pool (the same as upstream's `max_open_conns`; give one).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Upstream's name for the pool's size.
    #[serde(default)]
    pub max_open_conns: Option<usize>,
    /// Upstream's idle connections kept open: beyond these, connections idle for 30 s are
    /// closed (at most the pool's size; all are kept when absent).
    #[serde(default)]
    pub max_idle_conns: Option<usize>,
    /// Ours: longest a statement may run.
    #[serde(default, with = "opt_duration")]
    pub statement_timeout: Option<Duration>,
}

fn default_host() -> String {
    "localhost".to_owned()
}

fn default_port() -> u16 {
    5432
}

/// The address others reach a port listening on `listen` at: `listen` itself, or, when it
/// listens on every interface (`0.0.0.0`, `[::]`, no host), the host of `advertise` (the
/// process's advertised `host:port`) with `listen`'s port.
pub fn published_address(listen: &str, advertise: &str) -> String {
    let Some((host, port)) = listen.rsplit_once(':') else {
        return listen.to_owned();
    };
    if !matches!(host, "" | "0.0.0.0" | "[::]" | "::") {
        return listen.to_owned();
    }
    match advertise.rsplit_once(':') {
        Some((advertised_host, _)) => format!("{advertised_host}:{port}"),
        None => listen.to_owned(),
    }
}

/// `inspector:` (upstream's fields).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InspectorSection {
    /// Where the inspector's web UI and JSON API listen (`goverse inspector`).
    #[serde(default)]
    pub http_addr: Option<String>,
    /// Upstream's gRPC port of the inspector (nodes reported to it there).
    #[serde(default)]
    pub grpc_addr: Option<String>,
    /// The address nodes reached the inspector's gRPC port at.
    #[serde(default)]
    pub advertise_addr: Option<String>,
}

/// `sqlite:` (ours).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSection {
    /// The database file (relative paths are taken from the configuration file's directory).
    pub path: PathBuf,
}

/// One of `nodes:`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The name `--node-id` picks it by.
    pub id: String,
    /// Where the node service listens.
    pub grpc_addr: String,
    /// Where the others reach it (its identity in the cluster); `grpc_addr` when absent.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Upstream's HTTP port of a node: `GET /metrics` (Prometheus), `/healthz`, `/ready`.
    #[serde(default)]
    pub http_addr: Option<String>,
    /// Upstream's switch for profiles: `/debug/pprof/profile` and `/debug/pprof/heap` on
    /// `http_addr`, for callers with `cluster.admin_token` (which it needs).
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_pprof: bool,
    /// Ours: this node's certificate (with `tls`; `tls.cert_file` when absent).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

impl NodeEntry {
    /// The address the node is known by.
    pub fn advertise(&self) -> &str {
        self.advertise_addr.as_deref().unwrap_or(&self.grpc_addr)
    }
}

/// One of `gates:`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateEntry {
    /// The name `--gate-id` picks it by.
    pub id: String,
    /// Where clients reach the gate over gRPC.
    pub grpc_addr: String,
    /// The address client ids start with; `grpc_addr` when absent.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Where the gate serves HTTP/JSON and server-sent events, if it does (with `/metrics`,
    /// `/healthz` and `/ready` beside them).
    #[serde(default)]
    pub http_addr: Option<String>,
    /// Upstream's operations port of a gate: `GET /metrics`, `/healthz`, `/ready` alone (kept
    /// off the client-facing port).
    #[serde(default)]
    pub ops_addr: Option<String>,
    /// Profiles on `ops_addr`, as a node's `enable_pprof` (needs `ops_addr` and
    /// `cluster.admin_token`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_pprof: bool,
    /// Ours: this gate's certificate (with `tls`; `tls.cert_file` when absent).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

impl GateEntry {
    /// The address the gate is known by.
    pub fn advertise(&self) -> &str {
        self.advertise_addr.as_deref().unwrap_or(&self.grpc_addr)
    }
}

/// A node or gate id the file does not list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {kind} {id:?} in the configuration ({kind}s: {})", known.join(", "))]
pub struct UnknownEntry {
    /// `node` or `gate`.
    pub kind: &'static str,
    /// The id asked for.
    pub id: String,
    /// The ids the file lists.
    pub known: Vec<String>,
}

/// Why a configuration cannot be used: the file, and what is wrong (with its line for YAML).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file (or the environment variable) at fault.
    pub file: String,
    /// What is wrong.
    pub message: String,
}

impl ClusterFile {
    /// Reads `path`, applies the `GOVERSE_*` variables of this process's environment, and
    /// checks the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.display().to_string(),
            message: format!("cannot read it: {err}"),
        })?;
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let mut file = Self::parse(&text, &path.display().to_string(), &env)?;
        if let Some(dir) = path.parent() {
            file.resolve_paths(dir);
        }
        Ok(file)
    }

    /// Makes the file's relative paths (the SQLite file, certificates and keys) relative to
    /// `dir`, the file's directory.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        if let Some(sqlite) = &mut self.sqlite {
            resolve(&mut sqlite.path);
        }
        if let Some(pg) = &mut self.postgres {
            for path in [&mut pg.sslrootcert, &mut pg.sslcert, &mut pg.sslkey]
                .into_iter()
                .flatten()
            {
                resolve(path);
            }
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.ca_file);
            for path in [
                &mut tls.cert_file,
                &mut tls.key_file,
                &mut tls.client_ca_file,
            ]
            .into_iter()
            .flatten()
            {
                resolve(path);
            }
        }
        let etcd = &mut self.cluster.etcd;
        for path in [&mut etcd.ca_file, &mut etcd.cert_file, &mut etcd.key_file]
            .into_iter()
            .flatten()
        {
            resolve(path);
        }
        for node in &mut self.nodes {
            for path in [&mut node.tls_cert_file, &mut node.tls_key_file]
                .into_iter()
                .flatten()
            {
                resolve(path);
            }
        }
        for gate in &mut self.gates {
            for path in [&mut gate.tls_cert_file, &mut gate.tls_key_file]
                .into_iter()
                .flatten()
            {
                resolve(path);
            }
        }
    }

    /// Parses `text` (named `name` in errors) with the overrides in `env` (pairs of
    /// `GOVERSE_…` names and values), and checks it.
    pub fn parse(text: &str, name: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            file: name.to_owned(),
            message,
        };
        // First straight from the text, so an error names its line.
        let file: Self = serde_yaml_ng::from_str(text).map_err(|err| error(yaml_error(&err)))?;
        let overrides: Vec<_> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        let file = if overrides.is_empty() {
            file
        } else {
            let mut doc: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(text).map_err(|err| error(yaml_error(&err)))?;
            for (key, value) in &overrides {
                apply_override(&mut doc, key, value).map_err(|why| ConfigError {
                    file: key.clone(),
                    message: why.to_string(),
                })?;
            }
            let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            serde_yaml_ng::from_value(doc).map_err(|err| ConfigError {
                file: format!("{name} with {}", names.join(", ")),
                message: err.to_string(),
            })?
        };
        file.validate().map_err(|why| error(why.to_string()))?;
        Ok(file)
    }

    /// Checks what serde cannot: the version, the provider, addresses, unique ids.
    fn validate(&self) -> Result<(), InvalidSetting> {
        if self.version != 1 {
            return Err(InvalidSetting::new(
                "version",
                format!("{} is not supported (expected 1)", self.version),
            ));
        }
        let c = &self.cluster;
        if c.provider != "etcd" {
            return Err(InvalidSetting::new(
                "cluster.provider",
                format!("{:?} is not supported (only \"etcd\")", c.provider),
            ));
        }
        goverse_core::check_shard_count(c.shards)
            .map_err(|why| InvalidSetting::new("cluster.shards", why))?;
        if c.etcd.endpoints.is_empty() {
            return Err(InvalidSetting::new(
                "cluster.etcd.endpoints",
                "at least one endpoint is needed",
            ));
        }
        crate::cluster::Keys::new(&c.etcd.prefix)
            .map_err(|e| InvalidSetting::new("cluster.etcd.prefix", e))?;
        let mut auto_loaded = BTreeSet::new();
        for (i, entry) in c.auto_load_objects.iter().enumerate() {
            let field = format!("cluster.auto_load_objects[{i}]");
            if entry.per_shard && entry.per_node {
                return Err(InvalidSetting::new(
                    field.clone(),
                    "per_shard and per_node cannot both be set",
                ));
            }
            let auto_load = entry.to_auto_load();
            auto_load
                .validate()
                .map_err(|e| InvalidSetting::new(field.clone(), e.reason))?;
            if !auto_loaded.insert((entry.id.clone(), auto_load.scope)) {
                return Err(InvalidSetting::new(
                    field.clone(),
                    format!("id {:?} is listed twice", entry.id),
                ));
            }
        }
        if c.secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err(InvalidSetting::new(
                "cluster.secret",
                "must be at least 16 characters",
            ));
        }
        if c.admin_token.as_deref().is_some_and(|s| s.len() < 16) {
            return Err(InvalidSetting::new(
                "cluster.admin_token",
                "must be at least 16 characters",
            ));
        }
        let profiled = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.enable_pprof)
            .map(|(i, n)| (format!("nodes[{i}]"), n.http_addr.is_some(), "http_addr"))
            .chain(
                self.gates
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.enable_pprof)
                    .map(|(i, g)| (format!("gates[{i}]"), g.ops_addr.is_some(), "ops_addr")),
            );
        for (entry, has_port, port) in profiled {
            if !has_port {
                return Err(InvalidSetting::new(
                    format!("{entry}.enable_pprof"),
                    format!("profiles are served on {port}, which {entry} does not set"),
                ));
            }
            if c.admin_token.is_none() {
                return Err(InvalidSetting::new(
                    format!("{entry}.enable_pprof"),
                    "profiles are only for operators with cluster.admin_token, which is not set \
                     (GOVERSE_CLUSTER__ADMIN_TOKEN)",
                ));
            }
        }
        if c.secret.is_none() && self.tls.is_none() && !self.all_loopback() {
            return Err(InvalidSetting::new(
                "cluster.secret",
                "needed when nodes or gates listen on non-loopback addresses without `tls` \
                 (peers authenticate with it; set it here or in GOVERSE_CLUSTER__SECRET)",
            ));
        }
        if let Some(quotas) = &self.client_quotas {
            quotas
                .validate()
                .map_err(|why| why.within("client_quotas"))?;
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(InvalidSetting::new(
                    "tls.cert_file",
                    "cert_file and key_file go together",
                ));
            }
            if tls.require_client_cert && tls.client_ca_file.is_none() {
                return Err(InvalidSetting::new(
                    "tls.require_client_cert",
                    "needs tls.client_ca_file (the CA client certificates are checked against)",
                ));
            }
            let entries = self
                .nodes
                .iter()
                .map(|n| ("nodes", &n.id, &n.tls_cert_file, &n.tls_key_file))
                .chain(
                    self.gates
                        .iter()
                        .map(|g| ("gates", &g.id, &g.tls_cert_file, &g.tls_key_file)),
                );
            for (kind, id, cert, key) in entries {
                if cert.is_some() != key.is_some() {
                    return Err(InvalidSetting::new(
                        format!("{kind}[{id}].tls_cert_file"),
                        "tls_cert_file and tls_key_file go together",
                    ));
                }
                if cert.is_none() && tls.cert_file.is_none() {
                    return Err(InvalidSetting::new(
                        format!("{kind}[{id}].tls_cert_file"),
                        "with `tls`, every node and gate needs a certificate (its own, or \
                         tls.cert_file)",
                    ));
                }
            }
        }
        let etcd = &c.etcd;
        if etcd.cert_file.is_some() != etcd.key_file.is_some() {
            return Err(InvalidSetting::new(
                "cluster.etcd.cert_file",
                "cert_file and key_file go together",
            ));
        }
        if etcd.cert_file.is_some() && etcd.ca_file.is_none() {
            return Err(InvalidSetting::new(
                "cluster.etcd.cert_file",
                "a client certificate is presented over TLS, which needs cluster.etcd.ca_file",
            ));
        }
        if let Some(quorum) = c.min_quorum {
            if quorum == 0 {
                return Err(InvalidSetting::new(
                    "cluster.min_quorum",
                    "must be at least 1",
                ));
            }
            if !self.nodes.is_empty() && quorum > self.nodes.len() {
                return Err(InvalidSetting::new(
                    "cluster.min_quorum",
                    format!(
                        "{quorum} is more than the {} nodes this file lists: \
                     the cluster could never be ready",
                        self.nodes.len()
                    ),
                ));
            }
        }
        self.connection_limits()
            .validate()
            .map_err(|why| why.within("cluster.connections"))?;
        if let Some(interval) = c.peer_check_interval
            && !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&interval)
        {
            return Err(InvalidSetting::new(
                "cluster.peer_check_interval",
                format!("{interval:?} must be between 10ms and 60s"),
            ));
        }
        if let Some(ttl) = c.lease_ttl {
            if ttl < Duration::from_millis(300) {
                return Err(InvalidSetting::new(
                    "cluster.lease_ttl",
                    format!("{ttl:?} is too short (minimum 300ms)"),
                ));
            }
            if ttl > MAX_LEASE_TTL {
                return Err(InvalidSetting::new(
                    "cluster.lease_ttl",
                    format!(
                        "{ttl:?} is too long (maximum {MAX_LEASE_TTL:?}): a dead \
                     process's shards stay unserved for that long"
                    ),
                ));
            }
        }
        for (field, value) in [
            ("default_call_timeout", c.default_call_timeout),
            ("default_create_timeout", c.default_create_timeout),
            ("default_delete_timeout", c.default_delete_timeout),
            (
                "stuck_shard_reallocation_timeout",
                c.stuck_shard_reallocation_timeout,
            ),
            (
                "cluster_state_stability_duration",
                c.cluster_state_stability_duration,
            ),
            ("save_interval", c.save_interval),
        ] {
            let Some(value) = value else { continue };
            let zero_allowed =
                matches!(field, "save_interval" | "cluster_state_stability_duration");
            if value.is_zero() && !zero_allowed {
                return Err(InvalidSetting::new(
                    format!("cluster.{field}"),
                    "must be positive",
                ));
            }
            if value > MAX_DURATION {
                return Err(InvalidSetting::new(
                    format!("cluster.{field}"),
                    format!(
                        "{value:?} is longer than the {} days any duration may be",
                        MAX_DURATION.as_secs() / 86_400
                    ),
                ));
            }
        }
        if let Some(pg) = &self.postgres {
            for (field, size) in [
                ("pool_size", pg.pool_size),
                ("max_open_conns", pg.max_open_conns),
            ] {
                if let Some(size) = size
                    && !(1..=MAX_POOL_SIZE).contains(&size)
                {
                    return Err(InvalidSetting::new(
                        format!("postgres.{field}"),
                        format!("{size} is outside 1..={MAX_POOL_SIZE}"),
                    ));
                }
            }
            if let (Some(a), Some(b)) = (pg.pool_size, pg.max_open_conns)
                && a != b
            {
                return Err(InvalidSetting::new(
                    "postgres.max_open_conns",
                    format!("{b} disagrees with pool_size {a}; give one of them"),
                ));
            }
            if let Some(timeout) = pg.statement_timeout
                && (timeout.is_zero() || timeout > MAX_DURATION)
            {
                return Err(InvalidSetting::new(
                    "postgres.statement_timeout",
                    format!(
                        "{timeout:?} must be positive and at most {} days",
                        MAX_DURATION.as_secs() / 86_400
                    ),
                ));
            }
        }
        if self.postgres.is_some() && self.sqlite.is_some() {
            return Err(InvalidSetting::new(
                "postgres and sqlite",
                "choose one object store",
            ));
        }
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.id.is_empty() || !ids.insert(("node", node.id.clone())) {
                return Err(InvalidSetting::new(
                    format!("nodes[{i}].id"),
                    format!("{:?} is empty or used twice", node.id),
                ));
            }
            check_address(&format!("nodes[{i}].grpc_addr"), &node.grpc_addr)?;
            check_address(&format!("nodes[{i}].advertise_addr"), node.advertise())?;
            if let Some(http) = &node.http_addr {
                check_address(&format!("nodes[{i}].http_addr"), http)?;
            }
            if !addresses.insert(node.advertise().to_owned()) {
                return Err(InvalidSetting::new(
                    format!("nodes[{i}].advertise_addr"),
                    format!("{} is used twice", node.advertise()),
                ));
            }
        }
        for (i, gate) in self.gates.iter().enumerate() {
            if gate.id.is_empty() || !ids.insert(("gate", gate.id.clone())) {
                return Err(InvalidSetting::new(
                    format!("gates[{i}].id"),
                    format!("{:?} is empty or used twice", gate.id),
                ));
            }
            check_address(&format!("gates[{i}].grpc_addr"), &gate.grpc_addr)?;
            if let Some(ops) = &gate.ops_addr {
                check_address(&format!("gates[{i}].ops_addr"), ops)?;
            }
            if let Some(http) = &gate.http_addr {
                check_address(&format!("gates[{i}].http_addr"), http)?;
            }
        }
        crate::gate::rules::Rules::new(&self.object_access_rules, &self.object_lifecycle_rules)
            .map_err(|e| InvalidSetting::new("object rules", e))?;
        Ok(())
    }

    /// What the file's access rules let clients do that they probably should not: with no
    /// `object_access_rules`, call any type under any ID; otherwise, call a type under an ID
    /// named after another type the rules name (`Counter` under `ChatRoom-1`), which takes
    /// that ID for good (calls activate what they name). One line each.
    pub fn rule_warnings(&self) -> Vec<String> {
        if self.object_access_rules.is_empty() {
            return vec![
                "object_access_rules: none, so clients may call (and so create) any type under any \
                 ID, including IDs another type needs; list each type with the IDs clients may use"
                    .to_owned(),
            ];
        }
        let Ok(rules) =
            crate::gate::rules::Rules::new(&self.object_access_rules, &self.object_lifecycle_rules)
        else {
            return Vec::new();
        };
        rules
            .id_space_overlaps(&rules.named_types())
            .into_iter()
            .map(|(object_type, id)| {
                format!(
                    "object_access_rules let clients call {object_type} under {id:?}, an ID named \
                     after another type: a client can take IDs that type needs; keep each \
                     type's client IDs in its own space (a REJECT rule for the other types' \
                     prefixes before the ALLOW rule)"
                )
            })
            .collect()
    }

    /// The node entry named `id`.
    pub fn node(&self, id: &str) -> Result<&NodeEntry, UnknownEntry> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| UnknownEntry {
                kind: "node",
                id: id.to_owned(),
                known: self.nodes.iter().map(|n| n.id.clone()).collect(),
            })
    }

    /// The gate entry named `id`.
    pub fn gate(&self, id: &str) -> Result<&GateEntry, UnknownEntry> {
        self.gates
            .iter()
            .find(|g| g.id == id)
            .ok_or_else(|| UnknownEntry {
                kind: "gate",
                id: id.to_owned(),
                known: self.gates.iter().map(|g| g.id.clone()).collect(),
            })
    }

    /// The limits every listening port of the cluster's processes applies
    /// (`cluster.connections`, defaults for what it leaves out).
    pub fn connection_limits(&self) -> crate::ConnectionLimits {
        let defaults = crate::ConnectionLimits::default();
        let c = self.cluster.connections.clone().unwrap_or_default();
        crate::ConnectionLimits {
            max_connections: c.max_connections.unwrap_or(defaults.max_connections),
            idle_timeout: c.idle_timeout.unwrap_or(defaults.idle_timeout),
            header_timeout: c.header_timeout.unwrap_or(defaults.header_timeout),
            drain_timeout: c.drain_timeout.unwrap_or(defaults.drain_timeout),
            ..defaults
        }
    }

    /// The node configuration of node `id`.
    pub fn node_config(&self, id: &str) -> Result<crate::NodeConfig, UnknownEntry> {
        let entry = self.node(id)?;
        let c = &self.cluster;
        let defaults = crate::NodeConfig::default();
        Ok(crate::NodeConfig {
            address: entry.advertise().to_owned(),
            shard_count: c.shards,
            call_timeout: c.default_call_timeout.unwrap_or(defaults.call_timeout),
            lease_ttl: c.lease_ttl.unwrap_or(defaults.lease_ttl),
            min_quorum: c.min_quorum.unwrap_or(defaults.min_quorum),
            stability_window: c
                .cluster_state_stability_duration
                .unwrap_or(defaults.stability_window),
            stuck_shard_timeout: c
                .stuck_shard_reallocation_timeout
                .unwrap_or(defaults.stuck_shard_timeout),
            save_interval: c.save_interval.unwrap_or(defaults.save_interval),
            peer_check_interval: c
                .peer_check_interval
                .unwrap_or(defaults.peer_check_interval),
            connection_limits: self.connection_limits(),
            cluster_prefix: c.etcd.prefix.clone(),
            peer_secret: c.secret.clone(),
            auto_load: c
                .auto_load_objects
                .iter()
                .map(AutoLoadEntry::to_auto_load)
                .collect(),
            // Checked again on the node for what gates send for their clients.
            access_rules: self.object_access_rules.clone(),
            lifecycle_rules: self.object_lifecycle_rules.clone(),
            ops_address: entry
                .http_addr
                .as_deref()
                .map(|listen| published_address(listen, entry.advertise())),
            ..defaults
        })
    }

    /// The etcd connection settings (TLS loaded from `cluster.etcd.ca_file` when set).
    pub fn etcd(&self) -> Result<crate::cluster::EtcdConfig, ConfigError> {
        let etcd = &self.cluster.etcd;
        let tls = match &etcd.ca_file {
            Some(ca) => Some(
                goverse_tls::ClientTls::load(
                    "etcd",
                    goverse_tls::ClientFiles {
                        ca: Some(ca.clone()),
                        cert: etcd.cert_file.clone(),
                        key: etcd.key_file.clone(),
                        verify: goverse_tls::Verify::Full,
                    },
                    goverse_tls::ALPN_H2,
                )
                .map_err(|e| tls_error("cluster.etcd", &e))?,
            ),
            None => None,
        };
        Ok(crate::cluster::EtcdConfig {
            endpoints: etcd.endpoints.clone(),
            tls,
            ..crate::cluster::EtcdConfig::default()
        })
    }

    /// The TLS of node `id` (its node service and its links), when the file has `tls`.
    pub fn node_tls(&self, id: &str) -> Result<Option<goverse_tls::Tls>, ConfigError> {
        let entry = self.node(id).map_err(|e| tls_error("nodes", &e))?;
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let (cert, key) = own_files(tls, &entry.tls_cert_file, &entry.tls_key_file);
        let server = goverse_tls::ServerTls::load(
            "node service",
            goverse_tls::ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_auth: goverse_tls::ClientAuth::Required(tls.ca_file.clone()),
            },
            goverse_tls::ALPN_H2,
        )
        .map_err(|e| tls_error("tls", &e))?;
        Ok(Some(goverse_tls::Tls {
            server,
            client: member_client(tls, cert, key)?,
        }))
    }

    /// The TLS of gate `id` (its client-facing ports and its links to nodes), when the file
    /// has `tls`.
    pub fn gate_tls(&self, id: &str) -> Result<Option<goverse_tls::Tls>, ConfigError> {
        let entry = self.gate(id).map_err(|e| tls_error("gates", &e))?;
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let (cert, key) = own_files(tls, &entry.tls_cert_file, &entry.tls_key_file);
        let client_auth = match (&tls.client_ca_file, tls.require_client_cert) {
            (Some(ca), true) => goverse_tls::ClientAuth::Required(ca.clone()),
            (Some(ca), false) => goverse_tls::ClientAuth::Optional(ca.clone()),
            (None, _) => goverse_tls::ClientAuth::None,
        };
        let server = goverse_tls::ServerTls::load(
            "gate",
            goverse_tls::ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_auth,
            },
            goverse_tls::ALPN_HTTP,
        )
        .map_err(|e| tls_error("tls", &e))?;
        Ok(Some(goverse_tls::Tls {
            server,
            client: member_client(tls, cert, key)?,
        }))
    }

    /// How often certificate files are checked for changes (`tls.reload_interval`, 10s).
    pub fn tls_reload_interval(&self) -> Duration {
        self.tls
            .as_ref()
            .and_then(|t| t.reload_interval)
            .unwrap_or(Duration::from_secs(10))
    }

    /// Whether every node and gate address is on loopback (a cluster on one machine).
    pub fn all_loopback(&self) -> bool {
        let loopback = |addr: &str| {
            addr.parse::<std::net::SocketAddr>()
                .map(|a| a.ip().is_loopback())
                .unwrap_or_else(|_| addr.starts_with("localhost:"))
        };
        self.nodes
            .iter()
            .all(|n| loopback(&n.grpc_addr) && loopback(n.advertise()))
            && self
                .gates
                .iter()
                .all(|g| loopback(&g.grpc_addr) && g.http_addr.as_deref().is_none_or(loopback))
    }

    /// A ready configuration for a local cluster of `nodes` nodes and `gates` gates on etcd at
    /// 127.0.0.1:2379 and one SQLite file, with a fresh random secret.
    pub fn generate(nodes: usize, gates: usize, shards: u32) -> String {
        Self::generate_with(&Generate {
            nodes,
            gates,
            shards,
            ..Generate::default()
        })
    }

    /// [`ClusterFile::generate`] with every choice spelled out, as YAML.
    pub fn generate_with(g: &Generate) -> String {
        Self::generated(g).to_yaml()
    }

    /// The configuration [`ClusterFile::generate_with`] writes, as data: change what you need,
    /// then [`ClusterFile::to_yaml`].
    pub fn generated(g: &Generate) -> Self {
        let port = |first: u16, n: usize| format!("127.0.0.1:{}", usize::from(first) + n);
        Self {
            version: 1,
            cluster: ClusterSection {
                shards: g.shards,
                provider: "etcd".to_owned(),
                etcd: EtcdSection {
                    endpoints: vec![g.etcd.clone()],
                    prefix: default_prefix(),
                    ca_file: None,
                    cert_file: None,
                    key_file: None,
                },
                cluster_state_stability_duration: Some(Duration::from_secs(10)),
                stuck_shard_reallocation_timeout: Some(Duration::from_secs(60)),
                default_call_timeout: Some(Duration::from_secs(30)),
                default_create_timeout: None,
                default_delete_timeout: None,
                auto_load_objects: Vec::new(),
                lease_ttl: Some(Duration::from_secs(10)),
                min_quorum: Some(1),
                peer_check_interval: Some(Duration::from_secs(1)),
                save_interval: Some(Duration::from_secs(60)),
                connections: None,
                admin_token: Some(random_secret()),
                secret: Some(random_secret()),
            },
            postgres: None,
            sqlite: Some(SqliteSection {
                path: PathBuf::from(&g.sqlite_path),
            }),
            nodes: (0..g.nodes)
                .map(|n| NodeEntry {
                    id: format!("node-{}", n + 1),
                    grpc_addr: port(g.node_port, n),
                    advertise_addr: None,
                    http_addr: Some(port(g.ops_port, n)),
                    enable_pprof: false,
                    tls_cert_file: tls_file(g, &format!("node-{}.pem", n + 1)),
                    tls_key_file: tls_file(g, &format!("node-{}-key.pem", n + 1)),
                })
                .collect(),
            gates: (0..g.gates)
                .map(|n| GateEntry {
                    id: format!("gate-{}", n + 1),
                    grpc_addr: port(g.gate_port, n),
                    advertise_addr: None,
                    http_addr: Some(port(g.http_port, n)),
                    ops_addr: None,
                    enable_pprof: false,
                    tls_cert_file: tls_file(g, &format!("gate-{}.pem", n + 1)),
                    tls_key_file: tls_file(g, &format!("gate-{}-key.pem", n + 1)),
                })
                .collect(),
            object_access_rules: Vec::new(),
            object_lifecycle_rules: Vec::new(),
            client_quotas: None,
            inspector: Some(InspectorSection {
                http_addr: Some(format!("127.0.0.1:{}", g.inspector_port)),
                ..InspectorSection::default()
            }),
            tls: g.tls_dir.as_ref().map(|dir| TlsSection {
                ca_file: dir.join("ca.pem"),
                cert_file: None,
                key_file: None,
                client_ca_file: None,
                require_client_cert: false,
                reload_interval: None,
            }),
        }
    }

    /// Writes a development CA (`ca.pem`, `ca-key.pem` beside `tls.ca_file`) and, from it, a
    /// certificate and key for every node and gate at the paths their entries name, naming the
    /// hosts of their addresses (with `localhost` and `127.0.0.1`) and the member
    /// (`goverse://node/ID`, `goverse://gate/ID`); valid for a year. Relative paths are taken
    /// from `base` (the file's directory). For development and tests: a production cluster's
    /// certificates come from its own CA.
    pub fn issue_dev_certificates(&self, base: &Path) -> Result<(), goverse_tls::TlsError> {
        use goverse_tls::dev::{DevCa, Subject};
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let at = |path: &Path| base.join(path);
        let write = |path: &Path, text: &str| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|cause| goverse_tls::TlsError::Read {
                    path: dir.to_owned(),
                    cause,
                })?;
            }
            std::fs::write(path, text).map_err(|cause| goverse_tls::TlsError::Read {
                path: path.to_owned(),
                cause,
            })
        };
        let ca_path = at(&tls.ca_file);
        let ca_dir = ca_path.parent().unwrap_or(base).to_owned();
        let ca = DevCa::generate("GoVerse development CA")?;
        ca.write(&ca_dir)
            .map_err(|cause| goverse_tls::TlsError::Read {
                path: ca_dir.clone(),
                cause,
            })?;
        write(&ca_path, ca.cert_pem())?;
        let host = |addr: &str| -> String {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        };
        let year = Duration::from_secs(365 * 24 * 3600);
        let members = self
            .nodes
            .iter()
            .map(|n| {
                let addrs = [
                    Some(n.grpc_addr.as_str()),
                    Some(n.advertise()),
                    n.http_addr.as_deref(),
                ];
                ("node", &n.id, addrs, &n.tls_cert_file, &n.tls_key_file)
            })
            .chain(self.gates.iter().map(|g| {
                let addrs = [
                    Some(g.grpc_addr.as_str()),
                    Some(g.advertise()),
                    g.http_addr.as_deref(),
                ];
                ("gate", &g.id, addrs, &g.tls_cert_file, &g.tls_key_file)
            }));
        for (role, id, addrs, cert, key) in members {
            let (cert, key) = own_files(tls, cert, key);
            let mut hosts: Vec<String> = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            for addr in addrs.into_iter().flatten() {
                let h = host(addr);
                if !h.is_empty() && !matches!(h.as_str(), "0.0.0.0" | "::") && !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
            let issued =
                ca.issue(&Subject::new(id.clone(), hosts, year).member(format!("{role}/{id}")))?;
            write(&at(&cert), &issued.cert_pem)?;
            write(&at(&key), &issued.key_pem)?;
        }
        Ok(())
    }

    /// The file as YAML that [`ClusterFile::parse`] reads back the same, after a comment saying
    /// it was generated and that `cluster.secret` belongs out of version control.
    pub fn to_yaml(&self) -> String {
        let body = serde_yaml_ng::to_string(self).expect("a cluster file always serialises");
        format!(
            "# A GoVerse cluster (goverse config gen). Peers authenticate with cluster.secret and\n\
             # operators with cluster.admin_token: keep both out of version control (or set\n\
             # GOVERSE_CLUSTER__SECRET and GOVERSE_CLUSTER__ADMIN_TOKEN).\n{body}"
        )
    }
}

/// `{tls_dir}/{name}` when the generated file has TLS.
fn tls_file(g: &Generate, name: &str) -> Option<PathBuf> {
    g.tls_dir.as_ref().map(|dir| dir.join(name))
}

fn tls_error(section: &str, err: &dyn std::fmt::Display) -> ConfigError {
    ConfigError {
        file: section.to_owned(),
        message: err.to_string(),
    }
}

/// A process's certificate and key: its entry's, or the section's.
fn own_files(
    tls: &TlsSection,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> (PathBuf, PathBuf) {
    // Validation guarantees one pair or the other.
    let cert = cert
        .clone()
        .or_else(|| tls.cert_file.clone())
        .unwrap_or_default();
    let key = key
        .clone()
        .or_else(|| tls.key_file.clone())
        .unwrap_or_default();
    (cert, key)
}

/// What a member's links to nodes present and trust.
fn member_client(
    tls: &TlsSection,
    cert: PathBuf,
    key: PathBuf,
) -> Result<Arc<goverse_tls::ClientTls>, ConfigError> {
    goverse_tls::ClientTls::load(
        "node links",
        goverse_tls::ClientFiles {
            ca: Some(tls.ca_file.clone()),
            cert: Some(cert),
            key: Some(key),
            verify: goverse_tls::Verify::Full,
        },
        goverse_tls::ALPN_H2,
    )
    .map_err(|e| tls_error("tls", &e))
}

fn is_false(b: &bool) -> bool {
    !*b
}

const ENV_PREFIX: &str = "GOVERSE_";

/// The longest duration any field takes: far past any sensible setting, and far from where a
/// deadline computed from it could overflow.
const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// The longest lease: a dead process's shards wait this long before moving.
const MAX_LEASE_TTL: Duration = Duration::from_secs(600);

/// Most connections one process opens to PostgreSQL.
const MAX_POOL_SIZE: usize = 1024;

/// A fresh cluster secret: 32 random hex digits from the operating system's generator.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` (YAML) with the `GOVERSE_<SECTION>__<FIELD>` variables of `env` applied, as data,
/// for tools that read one section of a configuration file; `name` names the text in errors.
pub fn with_env_overrides(
    text: &str,
    name: &str,
    env: &[(String, String)],
) -> Result<serde_yaml_ng::Value, ConfigError> {
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|err| ConfigError {
            file: name.to_owned(),
            message: yaml_error(&err),
        })?;
    for (key, value) in env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
    {
        apply_override(&mut doc, key, value).map_err(|why| ConfigError {
            file: key.clone(),
            message: why.to_string(),
        })?;
    }
    Ok(doc)
}

/// Why a `GOVERSE_*` variable cannot be applied.
#[derive(Debug, thiserror::Error)]
enum OverrideError {
    #[error("a level of the name is empty")]
    EmptyLevel,
    #[error("value is not YAML: {0}")]
    NotYaml(serde_yaml_ng::Error),
    #[error("{0} is not a section")]
    NotSection(String),
}

/// Sets the field `GOVERSE_A__B__C` names in `doc` to `value` read as YAML.
fn apply_override(
    doc: &mut serde_yaml_ng::Value,
    key: &str,
    value: &str,
) -> Result<(), OverrideError> {
    let path: Vec<String> = key[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(OverrideError::EmptyLevel);
    }
    let parsed: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(value).map_err(OverrideError::NotYaml)?;
    let mut at = doc;
    for (i, segment) in path.iter().enumerate() {
        let map = match at {
            serde_yaml_ng::Value::Null => {
                *at = serde_yaml_ng::Value::Mapping(Default::default());
                at.as_mapping_mut().expect("just made a mapping")
            }
            serde_yaml_ng::Value::Mapping(map) => map,
            _ => return Err(OverrideError::NotSection(path[..i].join("."))),
        };
        let key = serde_yaml_ng::Value::String(segment.clone());
        if i + 1 == path.len() {
            map.insert(key, parsed);
            return Ok(());
        }
        at = map.entry(key).or_insert(serde_yaml_ng::Value::Null);
    }
    Ok(())
}

/// A YAML error with its place first: "line N, column M: field.path: reason". The reader knows
/// where every value is, bad values included (durations are read by their own visitor).
fn yaml_error(err: &serde_yaml_ng::Error) -> String {
    let message = err.to_string();
    let Some(at) = err.location() else {
        return message;
    };
    let reason = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(reason, _)| reason);
    format!("line {}, column {}: {reason}", at.line(), at.column())
}

fn check_address(field: &str, addr: &str) -> Result<(), InvalidSetting> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !addr.contains('/');
    if ok {
        Ok(())
    } else {
        Err(InvalidSetting::new(
            field,
            format!("{addr:?} is not host:port"),
        ))
    }
}

/// Durations as upstream writes them: `500ms`, `10s`, `1m`, `1h30m`.
mod opt_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    /// Writes the duration as [`super::format_duration`] does (`10s`, `1m30s`, `250ms`).
    pub(super) fn serialize<S: serde::Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads the value itself (not through a `String` first), so a bad value is reported by the
    /// YAML reader at its own line and under its own field.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 500ms, 10s, 1m or 1h30m")
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(DurationVisitor).map(Some)
        }
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 500ms, 10s, 1m or 1h30m")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Duration, E> {
            super::parse_duration(text).map_err(E::custom)
        }

        fn visit_u64<E: Error>(self, n: u64) -> Result<Duration, E> {
            if n == 0 {
                return Ok(Duration::ZERO);
            }
            Err(E::custom(format!(
                "{n} has no unit: write {n}s, {n}ms, {n}m or {n}h"
            )))
        }

        fn visit_i64<E: Error>(self, n: i64) -> Result<Duration, E> {
            match u64::try_from(n) {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::custom(format!(
                    "{n} is negative: a duration is at least 0"
                ))),
            }
        }

        fn visit_f64<E: Error>(self, n: f64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "{n} has no unit: write {n}s, {n}ms, {n}m or {n}h"
            )))
        }
    }
}

/// Writes a duration the way [`parse_duration`] reads it, in whole hours, minutes, seconds and
/// milliseconds (`1h30m`, `10s`, `250ms`, `0s`); below a millisecond is dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (sec, milli) = (rest / 1000, rest % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (sec, "s"), (milli, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// Text that is not a duration ([`parse_duration`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (e.g. 500ms, 10s, 1m, 1h30m)")]
pub struct InvalidDuration(pub String);

/// Parses a Go-style duration: one or more `<number><unit>` with units `ms`, `s`, `m`, `h`
/// (`90s`, `1m30s`, `0.5s`); `0` alone is zero.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let bad = || InvalidDuration(text.to_owned());
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_on_every_interface_is_published_at_the_advertised_host() {
        assert_eq!(
            published_address("0.0.0.0:9101", "10.0.0.5:47000"),
            "10.0.0.5:9101"
        );
        assert_eq!(
            published_address("[::]:9101", "node-0.svc:47000"),
            "node-0.svc:9101"
        );
        assert_eq!(
            published_address(":9101", "[fd00::1]:47000"),
            "[fd00::1]:9101"
        );
        assert_eq!(
            published_address("127.0.0.1:9101", "10.0.0.5:47000"),
            "127.0.0.1:9101"
        );
    }

    const FILE: &str = "version: 1
cluster:
  shards: 64
  provider: etcd
  etcd:
    endpoints: [\"127.0.0.1:2379\"]
    prefix: /goverse/test
  cluster_state_stability_duration: 1m30s
  lease_ttl: 3s
  secret: a-long-enough-cluster-secret
nodes:
  - id: a
    grpc_addr: \"127.0.0.1:47001\"
  - id: b
    grpc_addr: \"0.0.0.0:47002\"
    advertise_addr: \"10.0.0.2:47002\"
gates:
  - id: g
    grpc_addr: \"127.0.0.1:49001\"
";

    #[test]
    fn profiles_need_a_port_and_the_admin_token() {
        let with = |extra: &str, env: &[(&str, &str)]| {
            let text = FILE.replace(
                "    grpc_addr: \"127.0.0.1:47001\"\n",
                &format!("    grpc_addr: \"127.0.0.1:47001\"\n{extra}"),
            );
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            ClusterFile::parse(&text, "t.yaml", &env)
        };
        let err = with("    enable_pprof: true\n", &[]).unwrap_err();
        assert!(
            err.message.contains("nodes[0].enable_pprof") && err.message.contains("http_addr"),
            "{err}"
        );
        let on_port = "    http_addr: \"127.0.0.1:9101\"\n    enable_pprof: true\n";
        let err = with(on_port, &[]).unwrap_err();
        assert!(err.message.contains("admin_token"), "{err}");
        let err = with(on_port, &[("GOVERSE_CLUSTER__ADMIN_TOKEN", "short")]).unwrap_err();
        assert!(err.message.contains("cluster.admin_token"), "{err}");
        let file = with(
            on_port,
            &[("GOVERSE_CLUSTER__ADMIN_TOKEN", "a-long-enough-admin-token")],
        )
        .unwrap();
        assert!(file.nodes[0].enable_pprof);
    }

    #[test]
    fn a_file_maps_onto_node_configs() {
        let file = ClusterFile::parse(FILE, "test.yaml", &[]).unwrap();
        let a = file.node_config("a").unwrap();
        assert_eq!(a.address, "127.0.0.1:47001");
        assert_eq!(a.shard_count, 64);
        assert_eq!(a.stability_window, Duration::from_secs(90));
        assert_eq!(a.lease_ttl, Duration::from_secs(3));
        assert_eq!(a.cluster_prefix, "/goverse/test");
        assert_eq!(file.node_config("b").unwrap().address, "10.0.0.2:47002");
        assert!(!file.all_loopback());
        assert_eq!(
            a.peer_secret.as_deref(),
            Some("a-long-enough-cluster-secret")
        );
        // Off loopback, peers must authenticate: no secret, no cluster.
        let open = FILE.replace("  secret: a-long-enough-cluster-secret\n", "");
        let err = ClusterFile::parse(&open, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.secret"), "{err}");
        let short = FILE.replace("a-long-enough-cluster-secret", "short");
        let err = ClusterFile::parse(&short, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("16 characters"), "{err}");
        let err = file.node_config("c").unwrap_err().to_string();
        assert!(err.contains("nodes: a, b"), "{err}");
    }

    #[test]
    fn auto_load_entries_map_onto_every_node_and_bad_ones_are_named() {
        let entries = "  auto_load_objects:
    - type: GlobalMonitor
      id: GlobalMonitor
    - type: ShardMonitor
      id: ShardMonitor
      per_shard: true
    - type: NodeMonitor
      id: NodeMonitor
      per_node: true
";
        let with = FILE.replace("  lease_ttl: 3s\n", &format!("  lease_ttl: 3s\n{entries}"));
        let file = ClusterFile::parse(&with, "test.yaml", &[]).unwrap();
        for node in ["a", "b"] {
            let scopes: Vec<_> = file
                .node_config(node)
                .unwrap()
                .auto_load
                .into_iter()
                .map(|a| (a.type_name, a.id, a.scope))
                .collect();
            assert_eq!(
                scopes,
                [
                    (
                        "GlobalMonitor".into(),
                        "GlobalMonitor".into(),
                        crate::AutoLoadScope::Singleton
                    ),
                    (
                        "ShardMonitor".into(),
                        "ShardMonitor".into(),
                        crate::AutoLoadScope::PerShard
                    ),
                    (
                        "NodeMonitor".into(),
                        "NodeMonitor".into(),
                        crate::AutoLoadScope::PerNode
                    ),
                ]
            );
        }
        let both = with.replace(
            "      per_node: true",
            "      per_node: true\n      per_shard: true",
        );
        let err = ClusterFile::parse(&both, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cluster.auto_load_objects[2]") && err.contains("both"),
            "{err}"
        );
        let slash = with.replace("      id: GlobalMonitor", "      id: a/b");
        let err = ClusterFile::parse(&slash, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cluster.auto_load_objects[0]") && err.contains("plain"),
            "{err}"
        );
        let typo = with.replace("      per_shard: true", "      per_shards: true");
        let err = ClusterFile::parse(&typo, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("per_shards") && err.contains("line 15"),
            "{err}"
        );
    }

    #[test]
    fn unknown_and_bad_fields_are_named_with_their_line() {
        let bad = FILE.replace("  lease_ttl: 3s", "  lease_tll: 3s");
        let err = ClusterFile::parse(&bad, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lease_tll") && err.contains("line 9"), "{err}");
        let bad = FILE.replace("1m30s", "ninety");
        let err = ClusterFile::parse(&bad, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ninety") && err.contains("line 8"), "{err}");
        // A number without a unit, a negative one and nonsense: each at its own line and field
        // (the line of a field after it, or another field's name, would mislead).
        for (value, says) in [
            ("10", "10 has no unit"),
            ("-5", "negative"),
            ("ten", "\"ten\" is not a duration"),
        ] {
            let bad = FILE.replace("  lease_ttl: 3s", &format!("  lease_ttl: {value}"));
            let err = ClusterFile::parse(&bad, "test.yaml", &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("line 9, column")
                    && err.contains("cluster.lease_ttl: ")
                    && err.contains(says),
                "{value}: {err}"
            );
        }
        for (from, to, says) in [
            ("  lease_ttl: 3s", "  lease_ttl: 1000h", "too long"),
            (
                "  lease_ttl: 3s",
                "  lease_ttl: 3s\n  save_interval: 99999h",
                "save_interval",
            ),
            (
                "  lease_ttl: 3s",
                "  lease_ttl: 3s\n  min_quorum: 3",
                "never be ready",
            ),
        ] {
            let err = ClusterFile::parse(&FILE.replace(from, to), "test.yaml", &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{to}: {err}");
        }
        // Shard counts the map and every process can hold.
        for (shards, says) in [("0", "at least 1"), ("4294967295", "more than the 65536")] {
            let bad = FILE.replace("shards: 64", &format!("shards: {shards}"));
            let err = ClusterFile::parse(&bad, "test.yaml", &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cluster.shards") && err.contains(says),
                "{err}"
            );
        }
        let err = ClusterFile::parse(
            FILE,
            "test.yaml",
            &[("GOVERSE_CLUSTER__SHARDS".into(), "100000".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cluster.shards"), "{err}");
        let bad = FILE.replace("provider: etcd", "provider: consul");
        let err = ClusterFile::parse(&bad, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.provider"), "{err}");
        let bad = FILE.replace("id: b", "id: a");
        let err = ClusterFile::parse(&bad, "test.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nodes[1].id"), "{err}");
        let err = ClusterFile::parse("version: 1\ncluster: [", "x.yaml", &[]).unwrap_err();
        assert!(err.to_string().contains("line"), "{err}");
    }

    #[test]
    fn rule_sets_that_let_clients_take_other_types_ids_are_warned_about() {
        let none = ClusterFile::parse(FILE, "test.yaml", &[]).unwrap();
        let warnings = none.rule_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("any type under any ID"),
            "{warnings:?}"
        );

        let open = format!(
            "{FILE}object_access_rules:
  - {{type: /ChatRoom|ChatRoomMgr/, access: ALLOW}}
  - {{type: Counter, access: ALLOW}}
"
        );
        let warnings = ClusterFile::parse(&open, "test.yaml", &[])
            .unwrap()
            .rule_warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("call Counter under \"ChatRoom-1\"")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("call ChatRoom under \"Counter-1\"")),
            "{warnings:?}"
        );

        let kept = format!(
            "{FILE}object_access_rules:
  - {{type: ChatRoomMgr, id: ChatRoomMgr0, access: ALLOW}}
  - {{type: ChatRoom, id: /ChatRoom-.+/, access: ALLOW}}
  - {{type: Counter, id: /ChatRoom.*/, access: REJECT}}
  - {{type: Counter, access: ALLOW}}
"
        );
        let warnings = ClusterFile::parse(&kept, "test.yaml", &[])
            .unwrap()
            .rule_warnings();
        assert!(warnings.is_empty(), "{warnings:?}");
        // The node of such a file checks gates' requests against the same rules.
        let node = ClusterFile::parse(&kept, "test.yaml", &[])
            .unwrap()
            .node_config("a")
            .unwrap();
        assert_eq!(node.access_rules.len(), 4);
    }

    #[test]
    fn environment_variables_override_fields() {
        let env = vec![
            ("GOVERSE_CLUSTER__SHARDS".to_owned(), "128".to_owned()),
            (
                "GOVERSE_CLUSTER__ETCD__ENDPOINTS".to_owned(),
                "[\"10.1.1.1:2379\", \"10.1.1.2:2379\"]".to_owned(),
            ),
            ("GOVERSE_CLUSTER__MIN_QUORUM".to_owned(), "2".to_owned()),
            (
                "GOVERSE_POSTGRES".to_owned(),
                "ignored: no level".to_owned(),
            ),
        ];
        let file = ClusterFile::parse(FILE, "test.yaml", &env).unwrap();
        assert_eq!(file.cluster.shards, 128);
        assert_eq!(file.etcd().unwrap().endpoints.len(), 2);
        assert_eq!(file.node_config("a").unwrap().min_quorum, 2);
        let env = vec![("GOVERSE_CLUSTER__SHARDZ".to_owned(), "1".to_owned())];
        let err = ClusterFile::parse(FILE, "test.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GOVERSE_CLUSTER__SHARDZ") && err.contains("shardz"),
            "{err}"
        );
    }

    #[test]
    fn a_generated_file_is_valid_and_local() {
        let text = ClusterFile::generate(3, 2, 256);
        let file = ClusterFile::parse(&text, "gen.yaml", &[]).unwrap();
        assert_eq!(file.nodes.len(), 3);
        assert_eq!(file.gates.len(), 2);
        assert_eq!(file.cluster.shards, 256);
        assert!(file.all_loopback());
        assert!(file.sqlite.is_some());
        let secret = file.cluster.secret.clone().unwrap();
        assert_eq!(secret.len(), 32);
        assert_ne!(
            ClusterFile::parse(&ClusterFile::generate(1, 0, 8), "gen.yaml", &[])
                .unwrap()
                .cluster
                .secret,
            Some(secret),
            "each file gets its own secret"
        );
        // Data in, the same data out: a file changed as data and written reads back as it was.
        let mut changed = file.clone();
        changed.cluster.lease_ttl = Some(Duration::from_millis(2500));
        changed.nodes[1].advertise_addr = Some("127.0.0.1:9".to_owned());
        changed.gates[0].http_addr = None;
        changed.object_access_rules = vec![AccessRule {
            object_type: "Counter".to_owned(),
            id: String::new(),
            method: "/Get|Add/".to_owned(),
            access: crate::gate::rules::Access::Allow,
        }];
        let again = ClusterFile::parse(&changed.to_yaml(), "again.yaml", &[]).unwrap();
        assert_eq!(again.cluster.lease_ttl, Some(Duration::from_millis(2500)));
        assert_eq!(again.nodes[1].advertise(), "127.0.0.1:9");
        assert_eq!(again.gates[0].http_addr, None);
        assert_eq!(again.object_access_rules, changed.object_access_rules);
        assert_eq!(again.to_yaml(), changed.to_yaml());
        assert!(text.starts_with("# A GoVerse cluster"), "{text}");
    }

    #[test]
    fn the_connection_limits_of_the_file_reach_nodes_and_are_checked() {
        let text = ClusterFile::generate(1, 1, 16).replace(
            "  min_quorum: 1\n",
            "  min_quorum: 1\n  connections:\n    max_connections: 50\n    idle_timeout: 2s\n",
        );
        let file = ClusterFile::parse(&text, "c.yaml", &[]).unwrap();
        let limits = file.node_config("node-1").unwrap().connection_limits;
        assert_eq!(limits.max_connections, 50);
        assert_eq!(limits.idle_timeout, Duration::from_secs(2));
        assert_eq!(
            limits.header_timeout,
            crate::ConnectionLimits::default().header_timeout,
            "what the file leaves out keeps its default"
        );
        let bad = text.replace("max_connections: 50", "max_connections: 0");
        let err = ClusterFile::parse(&bad, "c.yaml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.connections"), "{err}");
    }

    #[test]
    fn durations_are_written_as_they_are_read() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(5_400_500), "1h30m500ms"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn durations_parse_as_upstream_writes_them() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        for bad in ["", "10", "s", "1x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
