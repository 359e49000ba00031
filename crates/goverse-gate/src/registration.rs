//! The gate's registration in a cluster: a key on a lease, kept by the cluster's one lease
//! policy (the nodes' too): renewed every quarter of the TTL, fenced (not ready) once the
//! serving window of the last renewal has passed, registered again when the lease is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use goverse_cluster::{BoxFuture, ClusterError, ClusterStore, LeaseHolder, LeaseId};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a gate could not register in its cluster.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No lease was granted.
    #[error("cannot get a lease: {0}")]
    Lease(ClusterError),
    /// The registration key could not be written.
    #[error("cannot register the gate at {key}: {cause}")]
    Put {
        /// The gate's key.
        key: String,
        /// What the store said.
        cause: ClusterError,
    },
}

/// A gate's registration and the state of its lease.
pub(crate) struct ClusterRegistration {
    cluster: Arc<dyn ClusterStore>,
    key: String,
    /// The registration's value (the gate's [`goverse_cluster::ProcessInfo`]).
    value: Vec<u8>,
    ttl: Duration,
    /// The lease, until shutdown revokes it.
    lease: Mutex<Option<LeaseId>>,
    origin: Instant,
    /// When the last renewal (or registration) that succeeded was asked for.
    renewed: Mutex<Instant>,
    fenced: AtomicBool,
}

impl ClusterRegistration {
    /// Registers `value` at `key` on a new lease of `ttl`.
    pub(crate) async fn register(
        cluster: Arc<dyn ClusterStore>,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<Arc<Self>, RegisterError> {
        let asked = Instant::now();
        let lease = grant_and_put(&*cluster, &key, &value, ttl).await?;
        Ok(Arc::new(Self {
            cluster,
            key,
            value,
            ttl,
            lease: Mutex::new(Some(lease)),
            origin: asked,
            renewed: Mutex::new(asked),
            fenced: AtomicBool::new(false),
        }))
    }

    /// Keeps the lease until `stop` (run as a task).
    pub(crate) async fn keep(self: Arc<Self>, stop: CancellationToken) {
        let policy = goverse_cluster::LeasePolicy::new(
            self.ttl,
            self.renewed.lock().duration_since(self.origin),
        );
        goverse_cluster::keep_lease(&*self, policy, self.origin, stop).await;
    }

    /// Whether the registration is surely held now, or why not: not fenced, and renewed within
    /// the serving window (the rule nodes serve by).
    pub(crate) fn check(&self) -> Result<(), crate::NotReady> {
        let since = self.renewed.lock().elapsed();
        let window = goverse_cluster::serving_window(self.ttl);
        if self.fenced.load(Ordering::Acquire) || since >= window {
            return Err(crate::NotReady::RegistrationStale {
                since,
                ttl: self.ttl,
                window,
            });
        }
        Ok(())
    }

    /// Revokes the lease (bounded by `grace`: a dead store must not hold up shutdown).
    pub(crate) async fn revoke(&self, grace: Duration) {
        let lease = self.lease.lock().take();
        if let Some(lease) = lease {
            let _ = tokio::time::timeout(grace, self.cluster.revoke_lease(lease)).await;
        }
    }
}

impl LeaseHolder for ClusterRegistration {
    fn renew(&self) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let lease = *self.lease.lock();
            match lease {
                Some(lease) => self.cluster.keep_alive(lease).await,
                // Revoked at shutdown: nothing to keep.
                None => Ok(()),
            }
        })
    }

    fn rejoin(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match grant_and_put(&*self.cluster, &self.key, &self.value, self.ttl).await {
                Ok(lease) => {
                    let revoked = {
                        let mut held = self.lease.lock();
                        let revoked = held.is_none();
                        if !revoked {
                            *held = Some(lease);
                        }
                        revoked
                    };
                    if revoked {
                        // Shut down meanwhile: the new registration goes too.
                        let _ = self.cluster.revoke_lease(lease).await;
                        return false;
                    }
                    tracing::info!(key = %self.key, "gate registered again on a new lease");
                    true
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot register the gate again yet");
                    false
                }
            }
        })
    }

    fn renewed(&self, asked: Instant) {
        let mut renewed = self.renewed.lock();
        *renewed = (*renewed).max(asked);
    }

    fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    fn unfence(&self) {
        self.fenced.store(false, Ordering::Release);
    }
}

async fn grant_and_put(
    cluster: &dyn ClusterStore,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> Result<LeaseId, RegisterError> {
    let lease = cluster
        .grant_lease(ttl)
        .await
        .map_err(RegisterError::Lease)?;
    cluster
        .put(key, value.to_vec(), Some(lease))
        .await
        .map_err(|cause| RegisterError::Put {
            key: key.to_owned(),
            cause,
        })?;
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use goverse_cluster::MemoryClusterStore;

    use super::*;

    /// Cut off from the coordinator, a gate's registration is not held past its serving
    /// window; once reachable again the gate registers on a new lease and is held again.
    #[tokio::test(start_paused = true)]
    async fn a_cut_off_gate_is_not_ready_within_its_window_and_registers_again() {
        let store = MemoryClusterStore::new();
        let link = store.connection();
        let ttl = Duration::from_secs(2);
        let key = "/goverse/gates/127.0.0.1:1".to_owned();
        let registration =
            ClusterRegistration::register(Arc::new(link.clone()), key.clone(), Vec::new(), ttl)
                .await
                .unwrap();
        let stop = CancellationToken::new();
        let keeping = tokio::spawn(registration.clone().keep(stop.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(registration.check().is_ok(), "renewed every half second");
        let first = store.get(&key).await.unwrap().unwrap().lease;

        link.set_reachable(false);
        let cut = Instant::now();
        while registration.check().is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            cut.elapsed() <= goverse_cluster::serving_window(ttl),
            "held {:?} after the cut",
            cut.elapsed()
        );
        let why = registration.check().unwrap_err();
        assert!(
            matches!(why, crate::NotReady::RegistrationStale { .. }),
            "{why}"
        );
        tokio::time::sleep(ttl).await;
        assert!(store.get(&key).await.unwrap().is_none(), "the lease ended");

        link.set_reachable(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(registration.check().is_ok());
        let second = store.get(&key).await.unwrap().unwrap().lease;
        assert!(
            second.is_some() && second != first,
            "{first:?} then {second:?}"
        );

        registration.revoke(Duration::from_secs(1)).await;
        assert!(
            store.get(&key).await.unwrap().is_none(),
            "revoked at shutdown"
        );
        stop.cancel();
        keeping.await.unwrap();
    }
}
