//! A real etcd server for one test: a one-member cluster on free loopback ports with a
//! temporary data directory, killed and removed when the fixture is dropped.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// An etcd server of the test's own. Killed and deleted on drop.
#[derive(Debug)]
pub struct EtcdServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    tls: Option<EtcdTls>,
}

/// The files of an etcd serving its clients over TLS.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The server's certificate (PEM; it must name 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA clients' certificates are checked against (`--client-cert-auth`).
    pub client_ca: PathBuf,
}

/// The `etcd` binary: on the `PATH`, else Debian's `/usr/bin/etcd`.
fn find_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcd is not installed (no etcd on PATH): ./scripts/test installs it \
                 (apt-get install etcd-server)"
            )
        })
}

impl EtcdServer {
    /// Starts a fresh one-member etcd on free loopback ports and waits until it is healthy.
    /// Panics, saying what is missing, when etcd is not installed.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`EtcdServer::start`] serving clients over TLS only, asking each for a certificate that
    /// `tls.client_ca` signed. Health is then judged by the port accepting connections.
    pub fn start_tls(tls: EtcdTls) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<EtcdTls>) -> Self {
        let mut server = Self {
            bin: find_bin(),
            dir: tempfile::Builder::new()
                .prefix("goverse-etcd-")
                .tempdir()
                .expect("a temporary directory"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            tls,
        };
        server.start_again();
        server
    }

    /// Starts the server (again) on the same data directory and ports, and waits until it
    /// answers its health check.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.bin);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "goverse-test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("goverse-test={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd was not healthy within 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /health` answers `"health":"true"` (over TLS: whether the port accepts).
    fn healthy(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.client_port
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// What etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// The client endpoint, `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Stops the server the way an operator does (SIGTERM) and waits for it to exit.
    /// [`EtcdServer::start_again`] brings it back with its data.
    pub fn stop(&mut self) {
        self.signal_and_wait("-TERM");
    }

    /// Kills the server outright (SIGKILL).
    pub fn kill(&mut self) {
        self.signal_and_wait("-KILL");
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as when etcd
    /// hangs or its host is cut off. [`EtcdServer::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill {signal} etcd failed");
        }
    }

    fn signal_and_wait(&mut self, signal: &str) {
        if let Some(child) = self.child.take() {
            crate::signal_and_wait(child, signal, Duration::from_secs(20));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.signal_and_wait("-KILL");
    }
}
