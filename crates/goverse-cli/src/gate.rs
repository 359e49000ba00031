//! `goverse gate`: a gate process linked to one node (or, with `--gate-id`, a gate of a
//! cluster: see `cluster.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use goverse::gate::rules::{AccessRule, LifecycleRule};
use goverse::gate::{AllowAnonymous, Gate, GateConfig};
use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub(crate) struct GateArgs {
    /// gRPC address to listen on (upstream `gate.GateService`).
    #[arg(long, default_value = "127.0.0.1:49000")]
    listen: String,
    /// HTTP address to listen on (JSON API and server-sent events).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: String,
    /// The address clients and nodes know this gate by (client ids start with it). Default: the
    /// gRPC listen address, or with `--gate-id` the entry's `advertise_addr`, which this
    /// overrides (replicas of one entry, each with its own address: a Kubernetes Deployment).
    #[arg(long)]
    advertise: Option<String>,
    /// The node's service address.
    #[arg(long, default_value = "127.0.0.1:47000")]
    node: String,
    /// A YAML file in upstream's format. With `--gate-id`, the cluster configuration the gate
    /// joins; without, only its `object_access_rules` and `object_lifecycle_rules` are read.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Which of the configuration's `gates` this process is: the gate joins the cluster and
    /// routes by the shard map (`--listen`, `--http-listen` and `--node` are then unused).
    #[arg(long, requires = "config")]
    gate_id: Option<String>,
    /// Largest request body or message accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Pushes buffered per client before further ones are dropped for it.
    #[arg(long, default_value_t = 1024)]
    client_buffer: usize,
}

/// The parts of upstream's YAML configuration a gate applies.
#[derive(Debug, Default, serde::Deserialize)]
struct RulesFile {
    #[serde(default)]
    object_access_rules: Vec<AccessRule>,
    #[serde(default)]
    object_lifecycle_rules: Vec<LifecycleRule>,
    #[serde(default)]
    client_quotas: Option<goverse::gate::QuotaConfig>,
}

fn load_rules(path: &Path) -> anyhow::Result<RulesFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml_ng::from_str(&text)
        .with_context(|| format!("invalid configuration in {}", path.display()))
}

pub(crate) async fn run(args: GateArgs) -> anyhow::Result<()> {
    if let (Some(config), Some(gate_id)) = (&args.config, &args.gate_id) {
        return crate::cluster::gate(config, gate_id, args.advertise.as_deref()).await;
    }
    let rules = match &args.config {
        Some(path) => load_rules(path)?,
        None => RulesFile::default(),
    };
    let grpc_listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", args.listen))?;
    let http_listener = TcpListener::bind(&args.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", args.http_listen))?;
    let advertise = match args.advertise {
        Some(a) => a,
        None => grpc_listener.local_addr()?.to_string(),
    };
    let gate = Gate::start(
        GateConfig {
            advertise_address: advertise.clone(),
            node: args.node.clone(),
            max_body_bytes: args.max_body_bytes,
            client_buffer: args.client_buffer,
            access_rules: rules.object_access_rules,
            lifecycle_rules: rules.object_lifecycle_rules,
            quotas: rules.client_quotas.unwrap_or_default(),
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )?;
    // Watched before the gate says it serves, so a stop sent at once is not fatal.
    let stopping = goverse::stop_signal();
    println!(
        "gate {advertise}: gRPC {}, HTTP http://{}, node {}",
        args.listen, args.http_listen, args.node
    );
    tokio::spawn({
        let gate = gate.clone();
        let node = args.node.clone();
        async move {
            if !gate.wait_connected(Duration::from_secs(5)).await {
                println!("node {node} not reachable yet; retrying in the background");
            }
        }
    });
    gate.serve(
        grpc_listener,
        http_listener,
        gate.http_router().merge(crate::demo::sample_pages()),
        stopping,
        Duration::from_secs(5),
    )
    .await?;
    println!("gate stopped");
    Ok(())
}
