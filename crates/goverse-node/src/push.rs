//! Routing of pushes from objects to the gates their clients are connected to.
//!
//! Every gate holds one node-service stream to this node; the stream registers a [`PeerSink`]
//! under the gate's address. A push to client `gateAddr/uniqueId` goes to the link of `gateAddr`.
//! Each link has a bounded backlog: a gate that stops reading loses pushes (counted and logged)
//! instead of growing the node's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::HashMap;
use goverse_core::{AnyMessage, CallError, ErrorCode, Message, gate_of_client};
use goverse_proto::node::Push;
use goverse_transport::{PeerRefused, PeerSink};
use parking_lot::RwLock;

/// Pushes sent to one gate address and dropped for it, kept after the gate goes (a gate that
/// reconnects goes on counting where it was).
#[derive(Debug, Default)]
struct GateCounts {
    sent: AtomicU64,
    dropped: AtomicU64,
}

/// A connected gate: its stream and its counts.
#[derive(Debug, Clone)]
struct Attached {
    link: PeerSink,
    counts: Arc<GateCounts>,
}

/// The node's table of connected gates.
#[derive(Debug, Default)]
pub(crate) struct PushHub {
    gates: RwLock<HashMap<Arc<str>, Attached>>,
    /// Every gate address pushed to so far; the totals are their sums.
    counts: RwLock<HashMap<Arc<str>, Arc<GateCounts>>>,
}

impl PushHub {
    /// Registers the stream of gate `address`. An older stream of the same address that is
    /// still open keeps it: the new one is refused (a peer that reconnects gets in once its old
    /// stream is gone).
    pub(crate) fn attach(&self, address: Arc<str>, link: PeerSink) -> Result<(), PeerRefused> {
        let mut gates = self.gates.write();
        if let Some(current) = gates.get(&address)
            && current.link.is_open()
            && current.link.serial() != link.serial()
        {
            return Err(PeerRefused::AlreadyConnected(address));
        }
        let counts = self
            .counts
            .write()
            .entry(address.clone())
            .or_default()
            .clone();
        gates.insert(address, Attached { link, counts });
        Ok(())
    }

    /// Removes the stream of gate `address` if it is still the one with `serial`.
    pub(crate) fn detach(&self, address: &str, serial: u64) {
        let mut gates = self.gates.write();
        if gates
            .get(address)
            .is_some_and(|g| g.link.serial() == serial)
        {
            gates.remove(address);
        }
    }

    /// (pushed, dropped) over every gate.
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.per_gate()
            .iter()
            .fold((0, 0), |(s, d), (_, sent, dropped)| (s + sent, d + dropped))
    }

    /// (gate, pushed, dropped) for every gate connected so far, sorted by gate.
    pub(crate) fn per_gate(&self) -> Vec<(String, u64, u64)> {
        let mut all: Vec<(String, u64, u64)> = self
            .counts
            .read()
            .iter()
            .map(|(gate, c)| {
                let sent = c.sent.load(Ordering::Relaxed);
                (gate.to_string(), sent, c.dropped.load(Ordering::Relaxed))
            })
            .collect();
        all.sort();
        all
    }

    /// Addresses of the connected gates, sorted.
    pub(crate) fn gates(&self) -> Vec<String> {
        let mut gates: Vec<String> = self.gates.read().keys().map(|k| k.to_string()).collect();
        gates.sort();
        gates
    }

    pub(crate) fn to_client(
        &self,
        client_id: &str,
        message: impl Message,
    ) -> Result<(), CallError> {
        match self.to_clients([client_id], message).pop() {
            None => Ok(()),
            Some((_, err)) => Err(err),
        }
    }

    /// Sends `message` to every client whose gate is connected (one copy per gate); returns the
    /// ids it could not route, each with the reason.
    pub(crate) fn to_clients<'a>(
        &self,
        client_ids: impl IntoIterator<Item = &'a str>,
        message: impl Message,
    ) -> Vec<(String, CallError)> {
        let mut unrouted = Vec::new();
        let mut by_gate: Vec<(&str, Attached, Vec<String>)> = Vec::new();
        {
            let gates = self.gates.read();
            for client in client_ids {
                let Some(gate) = gate_of_client(client) else {
                    let why = CallError::invalid_argument(format!(
                        "client id {client:?} is not of the form gateAddr/uniqueId"
                    ));
                    unrouted.push((client.to_owned(), why));
                    continue;
                };
                let Some(attached) = gates.get(gate) else {
                    let why = CallError::new(
                        ErrorCode::NotFound,
                        format!("no gate {gate} is connected to this node (pushing to {client})"),
                    );
                    unrouted.push((client.to_owned(), why));
                    continue;
                };
                match by_gate.iter_mut().find(|(g, _, _)| *g == gate) {
                    Some((_, _, ids)) => ids.push(client.to_owned()),
                    None => by_gate.push((gate, attached.clone(), vec![client.to_owned()])),
                }
            }
        }
        if !by_gate.is_empty() {
            let any = message.to_any();
            for (_, attached, client_ids) in by_gate {
                Self::send(
                    &attached,
                    Push {
                        client_ids,
                        broadcast: false,
                        message: Some(any.clone()),
                    },
                );
            }
        }
        unrouted
    }

    pub(crate) fn broadcast(&self, message: impl Message) -> usize {
        let links: Vec<Attached> = self.gates.read().values().cloned().collect();
        let any = message.to_any();
        for attached in &links {
            Self::send(
                attached,
                Push {
                    client_ids: Vec::new(),
                    broadcast: true,
                    message: Some(any.clone()),
                },
            );
        }
        links.len()
    }

    fn send(attached: &Attached, push: Push) {
        if let Err(refused) = attached.link.push(push) {
            let dropped = attached.counts.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped_to_this_gate = dropped, cause = %refused, "push dropped");
            }
            return;
        }
        attached.counts.sent.fetch_add(1, Ordering::Relaxed);
    }
}
