//! Reloading certificates without a restart: on SIGHUP, and when a file changes (checked every
//! few seconds). A new configuration applies to connections made after it; open connections
//! keep the one they were made with. A file that cannot be loaded is logged and the old
//! configuration stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::TlsError;

/// Something built from files that can be built again.
pub trait Reloadable: Send + Sync + std::fmt::Debug {
    /// Builds again from the files when one of them changed since the last build, or always
    /// with `force`; `Ok(true)` when it did.
    fn reload(&self, force: bool) -> Result<bool, TlsError>;
    /// What it is, for the log ("gate gRPC server certificate").
    fn describe(&self) -> String;
}

/// A file's modification time and length; `None` when it cannot be read.
type Stamp = Option<(SystemTime, u64)>;

/// When each file was last seen changed.
#[derive(Debug, Default)]
pub(crate) struct Stamps {
    seen: Mutex<Vec<(PathBuf, Stamp)>>,
}

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Stamps {
    pub(crate) fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            seen: Mutex::new(
                paths
                    .into_iter()
                    .map(|p| {
                        let s = stamp(&p);
                        (p, s)
                    })
                    .collect(),
            ),
        }
    }

    /// Whether a file changed since the last call (or since creation); remembers the new stamps.
    pub(crate) fn changed(&self) -> bool {
        let mut seen = self.seen.lock();
        let mut changed = false;
        for (path, last) in seen.iter_mut() {
            let now = stamp(path);
            if now != *last {
                *last = now;
                changed = true;
            }
        }
        changed
    }
}

/// Rebuilds `items` on SIGHUP (all of them) and when their files change (checked every
/// `interval`), until `stop`. Runs on the current tokio runtime.
pub fn watch(
    items: Vec<Arc<dyn Reloadable>>,
    interval: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if items.is_empty() {
            return;
        }
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let force = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => false,
                _ = hup => {
                    tracing::info!("SIGHUP: reloading certificates and keys");
                    true
                }
            };
            reload_all(&items, force);
        }
    })
}

/// Rebuilds each item (those whose files changed, or all with `force`), logging the outcome.
pub fn reload_all(items: &[Arc<dyn Reloadable>], force: bool) {
    for item in items {
        match item.reload(force) {
            Ok(true) => tracing::info!(what = %item.describe(), "reloaded"),
            Ok(false) => {}
            Err(err) => tracing::error!(
                what = %item.describe(), cause = %err,
                "cannot reload; keeping the configuration loaded before"
            ),
        }
    }
}
