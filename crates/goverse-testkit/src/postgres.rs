//! A real PostgreSQL server for one test: `initdb` into a temporary directory, `postgres` on a
//! free loopback port with password authentication, removed when the fixture is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the fixture creates, and its password.
pub const POSTGRES_USER: &str = "goverse";
/// The superuser's password.
pub const POSTGRES_PASSWORD: &str = "goverse-test-password";

/// A PostgreSQL server of the test's own. Stopped and deleted on drop.
///
/// PostgreSQL refuses to run as root; when the test runs as root the server runs as the
/// `postgres` account the Debian package creates, and the data directory is handed to it.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

/// Where PostgreSQL's programs are: the newest `/usr/lib/postgresql/*/bin` (Debian), else the
/// directory of `initdb` on the `PATH`.
fn find_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin and no initdb on PATH): \
         ./scripts/test installs it (apt-get install postgresql)"
    );
}

/// The uid and gid of the `postgres` account, when this process is root.
fn server_owner() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .unwrap_or_else(|| {
            panic!("running as root, and there is no postgres account to run PostgreSQL as")
        });
    let fields: Vec<&str> = entry.split(':').collect();
    Some((
        fields[2].parse().expect("uid"),
        fields[3].parse().expect("gid"),
    ))
}

/// Whether this process runs as root (effective uid 0), read from `/proc/self/status`.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

fn chown_tree(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("cannot chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            chown_tree(&entry.path(), (uid, gid));
        }
    }
}

/// A free TCP port on 127.0.0.1, for a test to bind soon after ([`free_ports_in_a_row`] of one).
pub fn free_port() -> u16 {
    free_ports_in_a_row(1)
}

/// The first of `count` TCP ports in a row on 127.0.0.1, all free now and never handed out
/// before by this test process, for a program that takes ports after a base one (a generated
/// cluster configuration, a demo script). They come from below the kernel's range for outgoing
/// connections (32768 and up), where no other test's client can take one of them before the
/// program binds it.
pub fn free_ports_in_a_row(count: u16) -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let base = (0..1000)
        .map(|_| 20_000 + fastrand::u16(0..12_000 - count))
        .find(|&base| {
            (base..base + count).all(|port| {
                !handed_out.contains(&port)
                    && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            })
        })
        .unwrap_or_else(|| panic!("no {count} free ports in a row below 32000"));
    handed_out.extend(base..base + count);
    base
}

impl PostgresServer {
    /// Creates a cluster in a temporary directory and starts a server on a free port. Panics,
    /// saying what is missing, when PostgreSQL is not installed.
    pub fn start() -> Self {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("goverse-pg-")
            .tempdir()
            .expect("a temporary directory");
        let owner = server_owner();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, POSTGRES_PASSWORD).unwrap();
        let data = dir.path().join("data");
        if let Some(owner) = owner {
            chown_tree(dir.path(), owner);
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", POSTGRES_USER, "-A", "scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let output = Self::as_owner(&mut initdb, owner)
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut server = Self {
            bin,
            dir,
            port: free_port(),
            owner,
            child: None,
        };
        server.start_again();
        server
    }

    fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
        use std::os::unix::process::CommandExt as _;
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Starts the server (again) on the same data directory and port, and waits until it
    /// accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        if let Some(owner) = self.owner {
            chown_tree(&self.dir.path().join("server.log"), owner);
        }
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = Self::as_owner(&mut command, self.owner)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "postgres exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 30 s: {}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the way an operator does (a fast shutdown: connections are closed)
    /// and waits for it to exit. [`PostgresServer::start_again`] brings it back.
    pub fn stop(&mut self) {
        self.signal_and_wait("-INT");
    }

    /// Kills the server outright (SIGKILL).
    pub fn kill(&mut self) {
        self.signal_and_wait("-KILL");
    }

    fn signal_and_wait(&mut self, signal: &str) {
        let Some(child) = self.child.take() else {
            return;
        };
        crate::signal_and_wait(child, signal, Duration::from_secs(30));
        // A killed postmaster leaves its children to notice; give them a moment to go.
        if signal == "-KILL" {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Serves TLS from now on with `cert_pem` and `key_pem` (the server is restarted); with
    /// `only_tls`, connections without TLS are refused (`hostssl` in pg_hba.conf).
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str, only_tls: bool) {
        use std::os::unix::fs::PermissionsExt as _;
        let data = self.dir.path().join("data");
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        // PostgreSQL refuses a key others can read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some(owner) = self.owner {
            chown_tree(&cert, owner);
            chown_tree(&key, owner);
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        if only_tls {
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).unwrap();
            let text: Vec<String> = text
                .lines()
                .map(|line| match line.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}"),
                    None => line.to_owned(),
                })
                .collect();
            std::fs::write(&hba, text.join("\n") + "\n").unwrap();
        }
        self.stop();
        self.start_again();
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database`, as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Creates `database`.
    pub fn create_database(&self, database: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{database}\""));
    }

    /// Runs `sql` with psql against `database`; returns what it printed (unaligned, tuples
    /// only). Panics with psql's error when it fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", POSTGRES_USER, "-d", database])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", POSTGRES_PASSWORD)
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Immediate shutdown: the data directory is deleted next anyway.
        self.signal_and_wait("-QUIT");
    }
}
