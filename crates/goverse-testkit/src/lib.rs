//! Test helpers for GoVerse.
//!
//! - [`assert_eventually!`]: polls a condition (which may `.await`) until it holds or a timeout
//!   passes, instead of sleeping a fixed time.
//! - [`Process`]: a child process (node, gate, client) driven through its standard streams.
//! - [`PostgresServer`]: a real PostgreSQL server of the test's own, on a free loopback port.
//! - [`EtcdServer`]: a real one-member etcd of the test's own, on free loopback ports.
//! - [`TestCluster`]: nodes and gates of one cluster in the test's process, over the real node
//!   protocol on in-memory pipes on tokio time, or on a real etcd over loopback TCP.
//! - [`Browser`]: headless Chromium through ChromeDriver, for the web pages.
//! - [`ProcessCluster`]: `goverse node` and `goverse gate` processes from one cluster file, with
//!   kill -9, SIGSTOP/SIGCONT and SIGTERM.

mod browser;
mod cluster;
mod etcd;
mod postgres;
mod processes;

pub use browser::Browser;
pub use cluster::{Setup, TestCluster, TestClusterBuilder, TestNode};

pub use etcd::{EtcdServer, EtcdTls};
pub use postgres::{
    POSTGRES_PASSWORD, POSTGRES_USER, PostgresServer, free_port, free_ports_in_a_row, is_root,
};
pub use processes::ProcessCluster;

/// Polls `cond` every 5 ms until it is true; panics naming the condition after `timeout`
/// (default 10 s). Use inside an async test.
///
/// Time is tokio's: on paused time (`#[tokio::test(start_paused = true)]`) the polls and the
/// timeout advance with the test's clock, so a condition that only tokio-driven work can make
/// true is waited for without real waiting. A test that waits on something paused time cannot
/// move (a real process, a real database) runs on real time.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        $crate::assert_eventually!($cond, ::std::time::Duration::from_secs(10))
    };
    ($cond:expr, $timeout:expr) => {{
        let timeout: ::std::time::Duration = $timeout;
        let deadline = $crate::__now() + timeout;
        loop {
            if $cond {
                break;
            }
            if $crate::__now() > deadline {
                panic!(
                    "condition not met within {:?}: {}",
                    timeout,
                    stringify!($cond)
                );
            }
            $crate::__sleep(::std::time::Duration::from_millis(5)).await;
        }
    }};
}

/// The Python with grpcio and grpcio-tools that `scripts/test` prepares (`target/pyenv`), or
/// `GOVERSE_PYTHON`: how tests drive the gates with the official gRPC stack upstream's Python
/// clients use.
///
/// # Panics
/// When neither exists, naming how to make it.
pub fn python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("GOVERSE_PYTHON") {
        return path.into();
    }
    let venv =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "this test needs Python with grpcio and grpcio-tools at {}: ./scripts/test creates it \
         (python3 -m venv target/pyenv && target/pyenv/bin/pip install grpcio grpcio-tools)",
        venv.display()
    );
    venv
}

#[doc(hidden)]
pub async fn __sleep(duration: std::time::Duration) {
    tokio::time::sleep(duration).await;
}

#[doc(hidden)]
pub fn __now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// A child process driven through its standard streams, for end-to-end tests that start nodes,
/// gates and clients the way a user does. Standard output is read line by line on a thread;
/// [`Process::expect`] waits for a line containing a text. The process is killed on drop, so a
/// failing test leaves nothing running.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Process {
    /// Starts `program` with `args`, standard input and output piped (standard error inherited,
    /// so its logs show up in the test's output).
    pub fn start<S: AsRef<std::ffi::OsStr>>(
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::start_with_env(program, args, &[])
    }

    /// [`Process::start`] with `env` added to the environment it inherits.
    pub fn start_with_env<S: AsRef<std::ffi::OsStr>>(
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
        env: &[(String, String)],
    ) -> Self {
        use std::io::BufRead;
        let program = program.as_ref();
        let name = std::path::Path::new(program)
            .file_name()
            .map_or_else(|| program.to_string_lossy(), |n| n.to_string_lossy())
            .into_owned();
        let mut child = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.to_string_lossy()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            name,
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to `timeout` for a line containing `text`; returns it. Panics with everything
    /// the process printed if none comes (or the process exits first).
    pub fn expect_within(&mut self, text: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(err) => panic!(
                    "{}: no line containing {text:?} ({}); it printed:\n{}",
                    self.name,
                    match err {
                        std::sync::mpsc::RecvTimeoutError::Timeout => "timed out",
                        std::sync::mpsc::RecvTimeoutError::Disconnected => "output ended",
                    },
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// [`Process::expect_within`] with a 20 s timeout.
    pub fn expect(&mut self, text: &str) -> String {
        self.expect_within(text, std::time::Duration::from_secs(20))
    }

    /// Writes `line` and a newline to the process's standard input.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("standard input is open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot write to standard input: {e}", self.name));
    }

    /// Closes standard input (end of input for the process).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (kill -9: no chance to save or clean up) and waits for it
    /// to be gone.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    /// Sends `signal` (as `kill` names it: `-STOP`, `-CONT`, `-TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {} failed", self.child.id());
    }

    /// Sends SIGTERM (the way a service manager stops a process).
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code (None if killed by
    /// a signal). Panics if it is still running.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Collect the rest of the output for later expectations and messages.
                while let Ok(line) = self
                    .lines
                    .recv_timeout(std::time::Duration::from_millis(200))
                {
                    self.seen.push(line);
                }
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not exit within {timeout:?}; it printed:\n{}",
                self.name,
                self.seen.join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Every line printed so far.
    pub fn output(&self) -> &[String] {
        &self.seen
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (`-TERM`, `-KILL`, ...) to `child` and waits up to `grace` for it to exit,
/// killing it outright if it has not by then.
pub(crate) fn signal_and_wait(
    mut child: std::process::Child,
    signal: &str,
    grace: std::time::Duration,
) {
    let _ = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + grace;
    while child.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
