//! [`ProcessCluster`]: `goverse node` and `goverse gate` processes started from one cluster file,
//! the way an operator runs them, with the signals failure tests send (kill -9, SIGSTOP and
//! SIGCONT, SIGTERM). Everything runs on real time against whatever the file names (the test's
//! [`crate::EtcdServer`], [`crate::PostgresServer`] or SQLite file).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Process;

/// How long a process may take to say it serves.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Nodes and gates of one cluster as child processes; see the module documentation. Processes
/// still running when it is dropped are killed.
#[derive(Debug)]
pub struct ProcessCluster {
    binary: String,
    config: String,
    nodes: BTreeMap<String, Process>,
    gates: BTreeMap<String, Process>,
    /// Added to every process's environment.
    env: Vec<(String, String)>,
}

impl ProcessCluster {
    /// A cluster of `binary` (the `goverse` program, or a node program taking the same flags)
    /// processes reading the cluster file at `config`. Nothing runs yet.
    pub fn new(binary: impl Into<String>, config: impl Into<String>) -> Self {
        Self {
            binary: binary.into(),
            config: config.into(),
            nodes: BTreeMap::new(),
            gates: BTreeMap::new(),
            env: Vec::new(),
        }
    }

    /// Sets `key` to `value` in the environment of every process started from now on.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The cluster file's path.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Starts node `id` of the file and waits until it says it serves.
    pub fn start_node(&mut self, id: &str) -> &mut Process {
        let config = self.config.clone();
        self.start_node_from(&config, id)
    }

    /// [`ProcessCluster::start_node`] from another file (a node configured unlike the rest).
    pub fn start_node_from(&mut self, config: &str, id: &str) -> &mut Process {
        let mut node = Process::start_with_env(
            &self.binary,
            ["node", "--config", config, "--node-id", id],
            &self.env,
        );
        node.expect_within("serving on", START_TIMEOUT);
        self.nodes.insert(id.to_owned(), node);
        self.nodes.get_mut(id).expect("just started")
    }

    /// Starts gate `id` of the file, waits until it serves, and returns its gRPC address.
    pub fn start_gate(&mut self, id: &str) -> String {
        let mut gate = Process::start_with_env(
            &self.binary,
            ["gate", "--config", &self.config, "--gate-id", id],
            &self.env,
        );
        let line = gate.expect_within("gRPC", START_TIMEOUT);
        self.gates.insert(id.to_owned(), gate);
        line.split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:") || w.starts_with("0.0.0.0:"))
            .unwrap_or_else(|| panic!("gate {id} named no gRPC address: {line}"))
            .trim_end_matches(',')
            .to_owned()
    }

    /// Node `id`'s process.
    pub fn node(&mut self, id: &str) -> &mut Process {
        self.nodes
            .get_mut(id)
            .unwrap_or_else(|| panic!("no node {id} is running"))
    }

    /// Gate `id`'s process.
    pub fn gate(&mut self, id: &str) -> &mut Process {
        self.gates
            .get_mut(id)
            .unwrap_or_else(|| panic!("no gate {id} is running"))
    }

    /// Kills node `id` with SIGKILL (no saving, no hand-over) and waits until it is gone.
    pub fn kill_node(&mut self, id: &str) {
        let mut node = self
            .nodes
            .remove(id)
            .unwrap_or_else(|| panic!("no node {id} is running"));
        node.kill();
    }

    /// Kills gate `id` with SIGKILL and waits until it is gone.
    pub fn kill_gate(&mut self, id: &str) {
        let mut gate = self
            .gates
            .remove(id)
            .unwrap_or_else(|| panic!("no gate {id} is running"));
        gate.kill();
    }

    /// Stops gate `id` with SIGTERM and returns its exit code; panics if it has not exited within
    /// `timeout`.
    pub fn stop_gate(&mut self, id: &str, timeout: Duration) -> Option<i32> {
        let mut gate = self
            .gates
            .remove(id)
            .unwrap_or_else(|| panic!("no gate {id} is running"));
        gate.terminate();
        gate.wait_exit(timeout)
    }

    /// Stops node `id` with SIGSTOP (it keeps its sockets and holds its lease until the lease
    /// runs out).
    pub fn pause_node(&mut self, id: &str) {
        self.node(id).signal("-STOP");
    }

    /// Lets node `id` run again (SIGCONT).
    pub fn resume_node(&mut self, id: &str) {
        self.node(id).signal("-CONT");
    }

    /// Stops node `id` with SIGTERM (it hands its shards over and saves) and returns its exit
    /// code; panics if it has not exited within `timeout`.
    pub fn stop_node(&mut self, id: &str, timeout: Duration) -> Option<i32> {
        let mut node = self
            .nodes
            .remove(id)
            .unwrap_or_else(|| panic!("no node {id} is running"));
        node.terminate();
        node.wait_exit(timeout)
    }

    /// Stops every gate, then every node, with SIGTERM; panics naming the first that did not
    /// exit with 0 within `timeout`.
    pub fn stop(&mut self, timeout: Duration) {
        for processes in [&mut self.gates, &mut self.nodes] {
            for process in processes.values() {
                process.terminate();
            }
            for (id, mut process) in std::mem::take(processes) {
                assert_eq!(process.wait_exit(timeout), Some(0), "{id}");
            }
        }
    }

    /// The last `lines` lines each process printed, for a failing test's message.
    pub fn tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for (id, process) in self.nodes.iter().chain(&self.gates) {
            text.push_str(&format!("---- {id}\n"));
            let output = process.output();
            for line in &output[output.len().saturating_sub(lines)..] {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}
