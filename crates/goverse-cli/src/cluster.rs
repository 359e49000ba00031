//! The cluster commands: `goverse node`, `goverse gate --gate-id`, `goverse config check|gen`
//! and `goverse cluster status`, all from one configuration file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use goverse::config::ClusterFile;
use goverse::gate::{AllowAnonymous, Gate, GateConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tour::parse_duration;

#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// The cluster configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Which of the file's `nodes` this process is.
    #[arg(long)]
    node_id: String,
    /// How long shutdown may take (hand-over, saves, draining connections).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    grace: Duration,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ConfigCommand {
    /// Reads and checks a configuration file (and the GOVERSE_* variables); prints a summary.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Writes a ready configuration for a local cluster (etcd on 127.0.0.1:2379, SQLite).
    Gen {
        /// Nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Gates.
        #[arg(long, default_value_t = 1)]
        gates: usize,
        /// Shards.
        #[arg(long, default_value_t = goverse::DEFAULT_SHARD_COUNT)]
        shards: u32,
        /// The etcd endpoint.
        #[arg(long, default_value = "127.0.0.1:2379")]
        etcd: String,
        /// The SQLite file the nodes share.
        #[arg(long, default_value = "objects.db")]
        sqlite: String,
        /// The first node's port; the others follow.
        #[arg(long, default_value_t = 47001)]
        node_port: u16,
        /// The first gate's gRPC port; the others follow.
        #[arg(long, default_value_t = 49001)]
        gate_port: u16,
        /// The first gate's HTTP port; the others follow.
        #[arg(long, default_value_t = 8081)]
        http_port: u16,
        /// The first node's operations port (metrics, health); the others follow.
        #[arg(long, default_value_t = 9101)]
        ops_port: u16,
        /// The inspector's port (`goverse inspector`).
        #[arg(long, default_value_t = 8090)]
        inspector_port: u16,
        /// TLS on every node and gate port and link: writes a development CA and a certificate
        /// for each node and gate into `--tls-dir`, and a `tls:` section naming them.
        #[arg(long)]
        tls: bool,
        /// Where `--tls` writes the CA and certificates, relative to the output file's
        /// directory (or the current one).
        #[arg(long, default_value = "tls")]
        tls_dir: PathBuf,
        /// Where to write it (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// The cluster as etcd holds it: leader, readiness, nodes and their shards, gates, moves.
    Status {
        /// The cluster configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Wait up to this long for the cluster to settle: ready, every node and gate of the
        /// file registered, no shard unowned or moving, shards balanced to ±1. Exits 1 if it
        /// does not.
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
        /// Also print this shard's record: owner, target, epoch, pin (repeatable).
        #[arg(long)]
        shard: Vec<u32>,
    },
    /// Removes what the cluster cannot use: shard records numbered past its shard count (left
    /// by a process configured with more shards). Says what it removes; records the cluster's
    /// shard count if it was formed before counts were recorded.
    Repair {
        /// The cluster configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

pub(crate) fn load(path: &Path) -> anyhow::Result<ClusterFile> {
    Ok(ClusterFile::load(path)?)
}

pub(crate) fn config(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let config = load(&file)?;
            println!(
                "{}: valid; {} shards, etcd {} (prefix {}), {} nodes, {} gates, store {}",
                file.display(),
                config.cluster.shards,
                config.cluster.etcd.endpoints.join(","),
                config.cluster.etcd.prefix,
                config.nodes.len(),
                config.gates.len(),
                match (&config.postgres, &config.sqlite) {
                    (Some(pg), _) => format!("postgres {}:{}/{}", pg.host, pg.port, pg.database),
                    (None, Some(sqlite)) => format!("sqlite {}", sqlite.path.display()),
                    (None, None) => "none (objects are not persisted)".to_owned(),
                }
            );
            for warning in config.rule_warnings() {
                println!("warning: {warning}");
            }
            Ok(())
        }
        ConfigCommand::Gen {
            nodes,
            gates,
            shards,
            etcd,
            sqlite,
            node_port,
            gate_port,
            http_port,
            ops_port,
            inspector_port,
            tls,
            tls_dir,
            output,
        } => {
            anyhow::ensure!(nodes > 0, "--nodes must be at least 1");
            anyhow::ensure!(shards > 0, "--shards must be at least 1");
            for (flag, first, count) in [
                ("--node-port", node_port, nodes),
                ("--gate-port", gate_port, gates),
                ("--http-port", http_port, gates),
                ("--ops-port", ops_port, nodes),
            ] {
                anyhow::ensure!(
                    first > 0 && usize::from(first) + count <= usize::from(u16::MAX),
                    "{flag} {first}: {count} ports from there do not fit"
                );
            }
            let text = ClusterFile::generate_with(&goverse::config::Generate {
                nodes,
                gates,
                shards,
                etcd,
                sqlite_path: sqlite,
                node_port,
                gate_port,
                http_port,
                ops_port,
                inspector_port,
                tls_dir: tls.then_some(tls_dir),
            });
            // What was written must load (a bad --etcd or --sqlite is named now, not later).
            let generated = ClusterFile::parse(&text, "the generated configuration", &[])?;
            if tls {
                let base = output
                    .as_deref()
                    .and_then(Path::parent)
                    .map_or_else(|| PathBuf::from("."), Path::to_owned);
                generated
                    .issue_dev_certificates(&base)
                    .context("cannot write the development certificates")?;
                eprintln!(
                    "wrote a development CA and certificates for {} nodes and {} gates under {}",
                    generated.nodes.len(),
                    generated.gates.len(),
                    base.join(generated.tls.as_ref().map_or(Path::new(""), |t| {
                        t.ca_file.parent().unwrap_or(Path::new(""))
                    }))
                    .display()
                );
            }
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
    }
}

/// `goverse node --config FILE --node-id ID`: a node of the file's cluster serving the bundled
/// sample types, through the same helper a user's node program calls.
pub(crate) async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let flags = goverse::run::NodeFlags {
        config: args.config,
        node_id: args.node_id,
        grace: args.grace,
    };
    goverse::run::run_node(&flags, crate::demo::register_samples).await?;
    Ok(())
}

/// `goverse gate --config FILE --gate-id ID`: a gate of the file's cluster.
pub(crate) async fn gate(
    config_path: &Path,
    gate_id: &str,
    advertise: Option<&str>,
) -> anyhow::Result<()> {
    let file = load(config_path)?;
    let mut entry = file.gate(gate_id).map_err(anyhow::Error::msg)?.clone();
    if let Some(advertise) = advertise {
        entry.advertise_addr = Some(advertise.to_owned());
    }
    goverse::run::warn_if_unauthenticated(&file);
    let tls = file.gate_tls(gate_id)?;
    // Certificates are reloaded on SIGHUP and when their files change.
    let reloading = CancellationToken::new();
    let _reloading = reloading.clone().drop_guard();
    if let Some(tls) = &tls {
        goverse::tls::watch(tls.reloadables(), file.tls_reload_interval(), reloading);
    }
    let grpc_listener = TcpListener::bind(&entry.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", entry.grpc_addr))?;
    let http_listener = match &entry.http_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (HTTP)"))?,
        ),
        None => None,
    };
    let ops_listener = match &entry.ops_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (operations HTTP)"))?,
        ),
        None => None,
    };
    let cluster = goverse::run::connect_cluster(&file).await?;
    let lease_ttl = file.cluster.lease_ttl.unwrap_or(Duration::from_secs(10));
    let gate = Gate::start_in_cluster(
        GateConfig {
            advertise_address: entry.advertise().to_owned(),
            call_timeout: file
                .cluster
                .default_call_timeout
                .unwrap_or(Duration::from_secs(30)),
            access_rules: file.object_access_rules.clone(),
            lifecycle_rules: file.object_lifecycle_rules.clone(),
            peer_secret: file.cluster.secret.clone(),
            tls: tls.clone(),
            quotas: file.client_quotas.clone().unwrap_or_default(),
            min_quorum: file.cluster.min_quorum.unwrap_or(1),
            ops_address: entry
                .ops_addr
                .as_ref()
                .or(entry.http_addr.as_ref())
                .map(|listen| goverse::config::published_address(listen, entry.advertise())),
            ..GateConfig::default()
        }
        .with_connection_limits(file.connection_limits()),
        Arc::new(AllowAnonymous),
        cluster,
        &file.cluster.etcd.prefix,
        file.cluster.shards,
        lease_ttl,
    )
    .await?;
    // Watched before the gate says it serves, so a stop sent at once is not fatal.
    let stopping = goverse::stop_signal();
    println!(
        "gate {} ({}): gRPC {}{}{}",
        entry.id,
        entry.advertise(),
        entry.grpc_addr,
        entry
            .http_addr
            .as_ref()
            .map_or(String::new(), |h| format!(", HTTP http://{h}")),
        entry
            .ops_addr
            .as_ref()
            .map_or(String::new(), |h| format!(", metrics http://{h}/metrics"))
    );
    let stop = CancellationToken::new();
    let grpc = tokio::spawn({
        let gate = gate.clone();
        let stop = stop.clone();
        async move { gate.serve_grpc(grpc_listener, stop.cancelled_owned()).await }
    });
    let http = http_listener.map(|listener| {
        let gate = gate.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // The bundled samples' nodes serve their types; their web pages come with the gate.
            let router = gate.http_router().merge(crate::demo::sample_pages());
            gate.serve_http(listener, router, stop.cancelled_owned())
                .await
        })
    });
    let ops = ops_listener.map(|listener| {
        let mut router = gate.ops_router();
        if entry.enable_pprof
            && let Some(token) = &file.cluster.admin_token
        {
            router = router.merge(goverse::gate::profiling_router(token.as_str().into()));
        }
        let limits = gate.config().connection_limits;
        let stop = stop.clone();
        tokio::spawn(async move {
            goverse::gate::serve_router(
                listener,
                router,
                limits,
                "gate operations HTTP",
                stop.cancelled_owned(),
                || {},
            )
            .await
        })
    });
    stopping.await;
    stop.cancel();
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    // One deadline for both servers to finish their requests (a stalled client is cut off then).
    let grace = Duration::from_secs(5);
    let _ = tokio::time::timeout(grace, async {
        let _ = grpc.await;
        if let Some(http) = http {
            let _ = http.await;
        }
    })
    .await;
    gate.shutdown(grace).await;
    println!("gate stopped");
    Ok(())
}

/// `goverse cluster status`.
pub(crate) async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let (config, json, wait, shards) = match command {
        ClusterCommand::Status {
            config,
            json,
            wait,
            shard,
        } => (config, json, wait, shard),
        ClusterCommand::Repair { config, dry_run } => return repair(&config, dry_run).await,
    };
    let file = load(&config)?;
    let store = goverse::run::connect_cluster(&file).await?;
    let keys =
        goverse::cluster::Keys::new(&file.cluster.etcd.prefix).map_err(anyhow::Error::msg)?;
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let settled_map = loop {
        let (kvs, revision) = store
            .get_prefix(&format!("{}/", keys.prefix()))
            .await
            .context("cannot read the cluster from etcd")?;
        let map = goverse::cluster::ClusterMap::load(&keys, file.cluster.shards, &kvs, revision)
            .map_err(anyhow::Error::msg)?;
        // Reachability is asked only of a map that has settled otherwise.
        let unreachable = if deadline.is_none() || settled(&file, &map) {
            unreachable_nodes(&file, &map).await
        } else {
            BTreeMap::new()
        };
        match deadline {
            Some(deadline) if !settled(&file, &map) || !unreachable.is_empty() => {
                if tokio::time::Instant::now() >= deadline {
                    print_status(&file, &keys, &map, &unreachable, &shards, json)?;
                    anyhow::bail!(
                        "the cluster did not settle within {:?}",
                        wait.unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => break (map, unreachable),
        }
    };
    let (map, unreachable) = settled_map;
    print_status(&file, &keys, &map, &unreachable, &shards, json)
}

/// The registered nodes this command cannot reach as a peer would (the node service's
/// `Describe`, with the file's cluster secret, within 2 s), with why: a node registered in etcd
/// but unreachable (a wrong advertise address, a firewall, a wrong secret) still counts as a
/// member, and its shards fail.
async fn unreachable_nodes(
    file: &ClusterFile,
    map: &goverse::cluster::ClusterMap,
) -> BTreeMap<String, String> {
    let secret = file.cluster.secret.as_deref();
    let probes = map.nodes.iter().map(|node| async move {
        let address = node.to_string();
        let outcome =
            goverse::transport::probe_node(&address, secret, Duration::from_secs(2)).await;
        outcome.err().map(|cause| (address, cause.to_string()))
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `goverse cluster repair`.
async fn repair(config: &Path, dry_run: bool) -> anyhow::Result<()> {
    use goverse::cluster::{TxnOp, TxnWrite};
    let file = load(config)?;
    let store = goverse::run::connect_cluster(&file).await?;
    let keys =
        goverse::cluster::Keys::new(&file.cluster.etcd.prefix).map_err(anyhow::Error::msg)?;
    let shards = file.cluster.shards;
    let (kvs, revision) = store
        .get_prefix(&format!("{}/", keys.prefix()))
        .await
        .context("cannot read the cluster from etcd")?;
    let map = goverse::cluster::ClusterMap::load(&keys, shards, &kvs, revision)
        .map_err(anyhow::Error::msg)?;
    if let Some(recorded) = map.recorded_shard_count
        && recorded != shards
    {
        anyhow::bail!(
            "the cluster under {} has {recorded} shards (recorded when it formed) and {} says \
             {shards}: fix the file first; nothing was removed",
            keys.prefix(),
            config.display()
        );
    }
    let stray: Vec<goverse::ShardId> = map.stray.iter().copied().collect();
    if stray.is_empty() {
        println!(
            "cluster {} ({shards} shards): no shard records past shard {}",
            keys.prefix(),
            shards - 1
        );
    } else {
        println!(
            "cluster {} ({shards} shards): {} shard records past shard {}: {} .. {}",
            keys.prefix(),
            stray.len(),
            shards - 1,
            keys.shard(stray[0]),
            keys.shard(stray[stray.len() - 1])
        );
    }
    if dry_run {
        if !stray.is_empty() {
            println!("dry run: nothing removed");
        }
        return Ok(());
    }
    for chunk in stray.chunks(goverse::cluster::MAX_TXN_OPS) {
        let writes: Vec<TxnWrite> = chunk
            .iter()
            .map(|&shard| TxnWrite {
                key: keys.shard(shard),
                expect: None,
                op: TxnOp::Delete,
            })
            .collect();
        store
            .transact(&writes)
            .await
            .context("cannot remove shard records")?;
    }
    if !stray.is_empty() {
        println!("removed {} shard records", stray.len());
    }
    if map.recorded_shard_count.is_none() {
        goverse::cluster::settle_shard_count(&*store, &keys, shards)
            .await
            .map_err(anyhow::Error::msg)?;
        println!("recorded the cluster's shard count: {shards}");
    }
    Ok(())
}

/// Shards each node of the map serves.
fn served(file: &ClusterFile, map: &goverse::cluster::ClusterMap) -> BTreeMap<String, usize> {
    let mut served: BTreeMap<String, usize> =
        map.nodes.iter().map(|n| (n.to_string(), 0)).collect();
    for n in 0..file.cluster.shards {
        if let Some(owner) = map.owner(goverse::ShardId(n)) {
            *served.entry(owner.to_string()).or_default() += 1;
        }
    }
    served
}

fn is_ready(file: &ClusterFile, map: &goverse::cluster::ClusterMap) -> bool {
    map.leader.is_some()
        && map.nodes.len() >= file.cluster.min_quorum.unwrap_or(1)
        && map.unowned() == 0
}

/// Ready, with every node and gate of the file registered and none set aside by its peers,
/// nothing moving, and ±1 balance.
fn settled(file: &ClusterFile, map: &goverse::cluster::ClusterMap) -> bool {
    is_ready(file, map)
        && map.serving(None).excluded.is_empty()
        && map.nodes.len() == file.nodes.len()
        && map.gates.len() == file.gates.len()
        && balanced(file, map)
}

/// Whether placement is done: nothing moving, and the shards spread to ±1 over the nodes that
/// may take them (not drained), a node above that holding only shards pinned to it.
fn balanced(file: &ClusterFile, map: &goverse::cluster::ClusterMap) -> bool {
    let served = served(file, map);
    let placeable = map.placeable(&map.nodes);
    let pins = map.honoured_pins();
    let loads: Vec<(usize, usize)> = served
        .iter()
        .filter(|(node, _)| placeable.contains(&goverse::NodeAddr::new(node.as_str())))
        .map(|(node, load)| {
            let pinned = pins.values().filter(|p| p.as_str() == node).count();
            (*load, pinned)
        })
        .collect();
    let Some(min) = loads.iter().map(|(load, _)| *load).min() else {
        return false;
    };
    map.moving() == 0
        && loads
            .iter()
            .all(|(load, pinned)| *load <= min + 1 || load == pinned)
}

fn print_status(
    file: &ClusterFile,
    keys: &goverse::cluster::Keys,
    map: &goverse::cluster::ClusterMap,
    unreachable: &BTreeMap<String, String>,
    shards: &[u32],
    json: bool,
) -> anyhow::Result<()> {
    let revision = map.revision;
    let served = served(file, map);
    let unowned = map.unowned();
    let moving = map.moving();
    let leader = map.leader.as_ref().map(|(l, _)| l.to_string());
    // Registered nodes their peers set aside (unreachable, or not checked yet): they hold no
    // shards, and the cluster runs short of them.
    let set_aside: BTreeMap<String, String> = map
        .serving(None)
        .excluded
        .into_iter()
        .map(|(node, why)| (node.to_string(), why))
        .collect();
    // A member nobody can reach fails the calls for its shards: not ready.
    let ready = is_ready(file, map) && unreachable.is_empty() && set_aside.is_empty();
    // Serving every shard, but shards still move or one node holds more than its share (a
    // node just joined, or the stability window has not passed yet): balancing.
    let balanced = balanced(file, map);
    let records: Vec<serde_json::Value> = shards
        .iter()
        .map(|&n| {
            let shard = goverse::ShardId(n);
            let record = map.record(shard);
            serde_json::json!({
                "shard": n,
                "exists": n < file.cluster.shards,
                "current": map.owner(shard).map(|o| o.to_string()),
                "target": record.and_then(|r| r.target.as_ref()).map(|t| t.to_string()),
                "epoch": record.map_or(0, |r| r.epoch),
                "pinned": map.pins.get(&shard).map(|p| p.to_string()),
            })
        })
        .collect();
    let pins: BTreeMap<u32, String> = map
        .pins
        .iter()
        .map(|(shard, node)| (shard.0, node.to_string()))
        .collect();
    let drained: Vec<String> = map.drained.iter().map(|n| n.to_string()).collect();
    let state = match (ready, balanced) {
        (false, _) => "not ready",
        (true, false) => "balancing",
        (true, true) => "ready",
    };
    if json {
        let status = serde_json::json!({
            "state": state,
            "ready": ready,
            "balanced": balanced,
            "leader": leader,
            "nodes": served,
            "gates": map.gates,
            "unowned": unowned,
            "moving": moving,
            "shards": file.cluster.shards,
            "recorded_shards": map.recorded_shard_count,
            "stray_records": map.stray.len(),
            "unreachable": unreachable,
            "set_aside": set_aside,
            "pins": pins,
            "drained": drained,
            "shard_records": records,
            "revision": revision,
        });
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!(
            "cluster {} ({} shards): {}",
            keys.prefix(),
            file.cluster.shards,
            state
        );
        println!("  leader   {}", leader.as_deref().unwrap_or("none"));
        for (node, shards) in &served {
            let mut line = format!("  node     {node}  {shards} shards");
            if let Some(cause) = unreachable.get(node) {
                line.push_str(&format!("  UNREACHABLE: {cause}"));
            }
            if let Some(why) = set_aside.get(node) {
                line.push_str(&format!("  SET ASIDE (no shards go to it): {why}"));
            }
            if drained.contains(node) {
                line.push_str("  DRAINED (no shards go to it)");
            }
            println!("{line}");
        }
        for (shard, node) in &pins {
            println!("  pin      shard {shard} -> {node}");
        }
        for record in &records {
            let text = |key: &str| record[key].as_str().unwrap_or("none").to_owned();
            if record["exists"] == false {
                println!("  shard    {}: no such shard", record["shard"]);
                continue;
            }
            println!(
                "  shard    {}: on {}, target {}, epoch {}{}",
                record["shard"],
                text("current"),
                text("target"),
                record["epoch"],
                record["pinned"]
                    .as_str()
                    .map_or(String::new(), |p| format!(", pinned to {p}"))
            );
        }
        for gate in &map.gates {
            println!("  gate     {gate}");
        }
        println!("  unowned  {unowned}");
        println!("  moving   {moving}");
        match map.recorded_shard_count {
            Some(recorded) if recorded != file.cluster.shards => println!(
                "  PROBLEM  the cluster recorded {recorded} shards when it formed; this file says {}",
                file.cluster.shards
            ),
            Some(_) => {}
            None => println!(
                "  note     no shard count recorded yet (the first node or gate records it)"
            ),
        }
        if !map.stray.is_empty() {
            println!(
                "  PROBLEM  {} shard records past shard {} (left by a process with more shards): \
                 `goverse cluster repair --config FILE` removes them",
                map.stray.len(),
                file.cluster.shards - 1
            );
        }
    }
    Ok(())
}
