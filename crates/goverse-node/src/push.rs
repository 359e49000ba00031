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

/// Counters of the push path.
#[derive(Debug, Default)]
pub(crate) struct PushCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// (sent, dropped) per gate address, kept after the gate goes (its counts stay counts).
    per_gate: RwLock<HashMap<Arc<str>, Arc<GateCounts>>>,
}

#[derive(Debug, Default)]
struct GateCounts {
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl PushCounters {
    fn of(&self, gate: &str) -> Arc<GateCounts> {
        if let Some(counts) = self.per_gate.read().get(gate) {
            return counts.clone();
        }
        self.per_gate
            .write()
            .entry(gate.into())
            .or_default()
            .clone()
    }
}

/// The node's table of connected gates.
#[derive(Debug, Default)]
pub(crate) struct PushHub {
    gates: RwLock<HashMap<Arc<str>, PeerSink>>,
    pub(crate) counters: PushCounters,
}

impl PushHub {
    /// Registers the stream of gate `address`. An older stream of the same address that is
    /// still open keeps it: the new one is refused (a peer that reconnects gets in once its old
    /// stream is gone).
    pub(crate) fn attach(&self, address: Arc<str>, link: PeerSink) -> Result<(), PeerRefused> {
        let mut gates = self.gates.write();
        if let Some(current) = gates.get(&address)
            && current.is_open()
            && current.serial() != link.serial()
        {
            return Err(PeerRefused::AlreadyConnected(address));
        }
        gates.insert(address, link);
        Ok(())
    }

    /// Removes the stream of gate `address` if it is still the one with `serial`.
    pub(crate) fn detach(&self, address: &str, serial: u64) {
        let mut gates = self.gates.write();
        if gates.get(address).is_some_and(|l| l.serial() == serial) {
            gates.remove(address);
        }
    }

    /// (gate, pushed, dropped) for every gate pushed to so far, sorted by gate.
    pub(crate) fn per_gate(&self) -> Vec<(String, u64, u64)> {
        let mut all: Vec<(String, u64, u64)> = self
            .counters
            .per_gate
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
        let mut by_gate: Vec<(&str, PeerSink, Vec<String>)> = Vec::new();
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
                let Some(link) = gates.get(gate) else {
                    let why = CallError::new(
                        ErrorCode::NotFound,
                        format!("no gate {gate} is connected to this node (pushing to {client})"),
                    );
                    unrouted.push((client.to_owned(), why));
                    continue;
                };
                match by_gate.iter_mut().find(|(g, _, _)| *g == gate) {
                    Some((_, _, ids)) => ids.push(client.to_owned()),
                    None => by_gate.push((gate, link.clone(), vec![client.to_owned()])),
                }
            }
        }
        if !by_gate.is_empty() {
            let any = message.to_any();
            for (gate, link, client_ids) in by_gate {
                self.send(
                    gate,
                    &link,
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
        let links: Vec<(Arc<str>, PeerSink)> = self
            .gates
            .read()
            .iter()
            .map(|(gate, link)| (gate.clone(), link.clone()))
            .collect();
        let any = message.to_any();
        for (gate, link) in &links {
            self.send(
                gate,
                link,
                Push {
                    client_ids: Vec::new(),
                    broadcast: true,
                    message: Some(any.clone()),
                },
            );
        }
        links.len()
    }

    fn send(&self, gate: &str, link: &PeerSink, push: Push) {
        let counts = self.counters.of(gate);
        if let Err(refused) = link.push(push) {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped_total = dropped, cause = %refused, "push dropped");
            }
            return;
        }
        counts.sent.fetch_add(1, Ordering::Relaxed);
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
    }
}
