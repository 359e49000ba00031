//! The clients registered at a gate and the delivery of pushes to them.
//!
//! Each client has a bounded buffer between the node link and its stream; when it is full the
//! push is dropped for that client alone (counted per client and in total, and logged), so a
//! slow client never holds up the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::HashMap;
use goverse_core::ClientIdentity;
use parking_lot::RwLock;
use tokio::sync::mpsc;

/// Where a client's calls come from, for binding calls to the registered client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    /// Calls on the same gRPC connection (same remote socket) act as this client.
    Grpc(Option<SocketAddr>),
    /// Calls presenting the client's token act as this client.
    Sse,
}

#[derive(Debug)]
pub(crate) struct ClientEntry {
    pub(crate) identity: Arc<ClientIdentity>,
    pub(crate) token: String,
    pub(crate) binding: Binding,
    tx: mpsc::Sender<prost_types::Any>,
    dropped: AtomicU64,
}

/// Push delivery counters of a gate.
#[derive(Debug, Default)]
pub(crate) struct DeliveryCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped_full: AtomicU64,
    pub(crate) dropped_unknown: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Clients {
    by_id: RwLock<HashMap<Arc<str>, Arc<ClientEntry>>>,
    pub(crate) counters: DeliveryCounters,
}

/// A random identifier of `bytes` bytes, hex encoded, from the operating system's CSPRNG.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source works");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Clients {
    /// Registers a client; returns its entry and the receiving end of its buffer.
    pub(crate) fn register(
        &self,
        gate_address: &str,
        user_id: String,
        roles: Vec<String>,
        binding: Binding,
        buffer: usize,
    ) -> (Arc<ClientEntry>, mpsc::Receiver<prost_types::Any>) {
        let client_id = format!("{gate_address}/{}", random_hex(8));
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let entry = Arc::new(ClientEntry {
            identity: Arc::new(ClientIdentity::new(client_id.as_str(), user_id, roles)),
            token: random_hex(16),
            binding,
            tx,
            dropped: AtomicU64::new(0),
        });
        self.by_id.write().insert(client_id.into(), entry.clone());
        (entry, rx)
    }

    pub(crate) fn unregister(&self, client_id: &str) -> Option<Arc<ClientEntry>> {
        self.by_id.write().remove(client_id)
    }

    pub(crate) fn get(&self, client_id: &str) -> Option<Arc<ClientEntry>> {
        self.by_id.read().get(client_id).cloned()
    }

    /// The only client registered from gRPC connection `remote`, if exactly one is.
    pub(crate) fn sole_client_of(&self, remote: SocketAddr) -> Option<Arc<ClientEntry>> {
        let clients = self.by_id.read();
        let mut found = clients
            .values()
            .filter(|c| c.binding == Binding::Grpc(Some(remote)));
        let first = found.next()?;
        found.next().is_none().then(|| first.clone())
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.read().len()
    }

    /// Drops every client; their streams end.
    pub(crate) fn clear(&self) -> Vec<Arc<ClientEntry>> {
        self.by_id.write().drain().map(|(_, c)| c).collect()
    }

    /// Delivers `message` to the listed clients, or to all of them.
    pub(crate) fn deliver(
        &self,
        client_ids: &[String],
        broadcast: bool,
        message: prost_types::Any,
    ) {
        if broadcast {
            let all: Vec<Arc<ClientEntry>> = self.by_id.read().values().cloned().collect();
            for client in all {
                self.offer(&client, message.clone());
            }
            return;
        }
        for id in client_ids {
            match self.get(id) {
                Some(client) => self.offer(&client, message.clone()),
                None => {
                    let n = self
                        .counters
                        .dropped_unknown
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(client = %id, dropped_total = n,
                            "push dropped: no such client at this gate");
                    }
                }
            }
        }
    }

    fn offer(&self, client: &ClientEntry, message: prost_types::Any) {
        match client.tx.try_send(message) {
            Ok(()) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let mine = client.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                if mine.is_power_of_two() {
                    tracing::warn!(client = %client.identity.client_id(), dropped = mine,
                        "push dropped: the client's buffer is full (it is not reading fast enough)");
                }
            }
            // The stream is ending; its entry is about to be removed.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters
                    .dropped_unknown
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
