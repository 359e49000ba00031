//! `goverse demo --nodes N`: a whole cluster on this machine, as separate processes. Starts etcd
//! (its own, on free loopback ports, data in a temporary directory), writes a configuration,
//! starts N `goverse node` processes and one `goverse gate`, prints how to call them, and on
//! Ctrl-C or SIGTERM stops the gate, then each node (each hands its shards over and saves), then
//! etcd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use goverse::config::ClusterFile;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The etcd binary: on PATH, or where Debian's `etcd-server` puts it.
fn etcd_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "goverse demo --nodes needs etcd, and it is not installed: \
         apt-get install etcd-server (Debian/Ubuntu), or put an etcd 3.4+ binary on PATH"
    )
}

/// A child process, stopped with SIGTERM (then killed after `grace`) when dropped.
struct Managed {
    name: String,
    child: Child,
}

impl Managed {
    fn spawn(name: &str, command: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot write {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// SIGTERM, then up to `grace` for it to exit (SIGKILL after); its exit status.
    fn stop(&mut self, grace: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `log` holds `text`, failing if `process` exits first or `timeout` passes.
fn wait_for(
    process: &mut Managed,
    log: &Path,
    text: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = std::fs::read_to_string(log).unwrap_or_default();
        if seen.contains(text) {
            return Ok(());
        }
        if process.exited() {
            anyhow::bail!("{} exited while starting:\n{seen}", process.name);
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} did not start within {timeout:?}:\n{seen}", process.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) async fn run(nodes: usize, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!((2..=16).contains(&nodes), "--nodes must be 2 to 16");
    let etcd = etcd_binary()?;
    let temp = tempfile::Builder::new().prefix("goverse-demo-").tempdir()?;
    let dir = match &data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => temp.path().to_owned(),
    };
    let me = std::env::current_exe().context("cannot find the goverse binary")?;

    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd_log = temp.path().join("etcd.log");
    let mut etcd = Managed::spawn(
        "etcd",
        Command::new(etcd)
            .args(["--name", "goverse-demo", "--data-dir"])
            .arg(temp.path().join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("goverse-demo={peer_url}")]),
        &etcd_log,
    )?;
    // Ready once it answers its health check.
    let health = format!("{client_url}/health");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = reqwest::get(&health)
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .is_some();
        if healthy {
            break;
        }
        if etcd.exited() || Instant::now() > deadline {
            let seen = std::fs::read_to_string(&etcd_log).unwrap_or_default();
            anyhow::bail!("etcd did not start:\n{seen}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One configuration for every process: the generated one on this etcd and free ports.
    let mut file = ClusterFile::generated(&goverse::config::Generate {
        nodes,
        gates: 1,
        etcd: format!("127.0.0.1:{client}"),
        sqlite_path: dir.join("objects.db").display().to_string(),
        ..goverse::config::Generate::default()
    });
    for node in &mut file.nodes {
        node.grpc_addr = format!("127.0.0.1:{}", free_port()?);
        node.http_addr = Some(format!("127.0.0.1:{}", free_port()?));
    }
    let (grpc, http) = (free_port()?, free_port()?);
    file.gates[0].grpc_addr = format!("127.0.0.1:{grpc}");
    file.gates[0].http_addr = Some(format!("127.0.0.1:{http}"));
    let inspector_port = free_port()?;
    file.inspector = Some(goverse::config::InspectorSection {
        http_addr: Some(format!("127.0.0.1:{inspector_port}")),
        ..Default::default()
    });
    // The samples' access and lifecycle rules, in the file as an operator writes them: every
    // gate and node of the cluster enforces what the one-process demo does.
    file.object_access_rules = crate::demo::demo_access_rules();
    file.object_lifecycle_rules = crate::demo::demo_lifecycle_rules();
    let text = file.to_yaml();
    let config = temp.path().join("cluster.yaml");
    std::fs::write(&config, text)?;
    ClusterFile::load(&config)?;

    let mut processes = Vec::new();
    for n in 1..=nodes {
        let id = format!("node-{n}");
        let log = temp.path().join(format!("{id}.log"));
        let mut node = Managed::spawn(
            &id,
            Command::new(&me)
                .arg("node")
                .arg("--config")
                .arg(&config)
                .args(["--node-id", &id]),
            &log,
        )?;
        wait_for(&mut node, &log, "serving on", Duration::from_secs(60))?;
        processes.push(node);
    }
    let gate_log = temp.path().join("gate-1.log");
    let mut gate = Managed::spawn(
        "gate-1",
        Command::new(&me)
            .arg("gate")
            .arg("--config")
            .arg(&config)
            .args(["--gate-id", "gate-1"]),
        &gate_log,
    )?;
    wait_for(&mut gate, &gate_log, "gRPC", Duration::from_secs(60))?;
    let inspector_log = temp.path().join("inspector.log");
    let mut inspector = Managed::spawn(
        "inspector",
        Command::new(&me)
            .arg("inspector")
            .arg("--config")
            .arg(&config),
        &inspector_log,
    )?;
    wait_for(
        &mut inspector,
        &inspector_log,
        "inspector of cluster",
        Duration::from_secs(60),
    )?;

    let stopping = goverse::stop_signal();
    println!("GoVerse demo: a cluster of {nodes} node processes and a gate, on etcd");
    println!("  etcd          {client_url}");
    println!("  configuration {}", config.display());
    println!("  logs          {}", temp.path().display());
    println!("  gate gRPC     127.0.0.1:{grpc}");
    println!("  gate HTTP     http://127.0.0.1:{http}   (metrics: /metrics)");
    println!("  chat          http://127.0.0.1:{http}/chat/");
    println!("  tic-tac-toe   http://127.0.0.1:{http}/tictactoe/");
    println!("  bomberman     http://127.0.0.1:{http}/bomberman/");
    println!(
        "  inspector     http://127.0.0.1:{inspector_port}/   (admin token {})",
        file.cluster.admin_token.as_deref().unwrap_or("none")
    );
    for node in &file.nodes {
        if let Some(ops) = &node.http_addr {
            println!(
                "  {:<13} http://{ops}/metrics   (health: /healthz, /ready)",
                node.id
            );
        }
    }
    println!();
    println!("Try:");
    println!(
        "  curl -s -d '{{\"value\":5}}' http://127.0.0.1:{http}/api/v1/objects/call/DurableCounter/c1/Add"
    );
    println!("  goverse call --gate 127.0.0.1:{grpc} Counter my-counter Add '{{\"value\":5}}'");
    println!("  goverse cluster status --config {}", config.display());
    println!();
    println!("ready; Ctrl-C or SIGTERM stops the gate, each node (saving), then etcd");

    stopping.await;
    println!("stopping");
    let mut failed = Vec::new();
    if inspector.stop(Duration::from_secs(10)) != Some(0) {
        failed.push(inspector.name.clone());
    }
    if gate.stop(Duration::from_secs(10)) != Some(0) {
        failed.push(gate.name.clone());
    }
    for node in processes.iter_mut() {
        if node.stop(Duration::from_secs(30)) != Some(0) {
            failed.push(node.name.clone());
        }
    }
    etcd.stop(Duration::from_secs(10));
    if !failed.is_empty() {
        anyhow::bail!(
            "{} did not stop cleanly (logs in {})",
            failed.join(", "),
            temp.keep().display()
        );
    }
    println!("stopped");
    Ok(())
}
