//! The JSON shapes of the API, built from the map and the last poll.

use std::collections::BTreeMap;

use goverse_cluster::ClusterMap;
use serde::Serialize;

use crate::poll::{CallStats, Health, ProcessStatus, Status};

/// `GET /api/cluster`: nodes, gates, leader and every shard.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSnapshot {
    /// The cluster's key prefix.
    pub prefix: String,
    /// The store revision the map reflects.
    pub revision: i64,
    /// The shard count.
    pub shard_count: u32,
    /// Leader, nodes and gates.
    #[serde(flatten)]
    pub members: Members,
    /// Every shard, in order.
    pub shards: Vec<ShardView>,
}

/// The cluster's members (the `nodes` event, and part of `GET /api/cluster`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Members {
    /// The leading node.
    pub leader: Option<String>,
    /// Registered nodes, by address.
    pub nodes: Vec<NodeView>,
    /// Registered gates, by address.
    pub gates: Vec<GateView>,
    /// Shards whose target is a registered node that does not serve them yet.
    pub moving: usize,
    /// Shards no registered node serves.
    pub unowned: usize,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    /// Its address (its identity in the cluster).
    pub address: String,
    /// Its operations HTTP address, if it publishes one.
    pub ops: Option<String>,
    /// Whether it leads.
    pub leader: bool,
    /// Whether an operator drained it.
    pub drained: bool,
    /// Shards it serves.
    pub shards: usize,
    /// Shards pinned to it.
    pub pinned: usize,
    /// Live objects (from its metrics; `None` before they are read).
    pub objects: Option<u64>,
    /// Its health.
    pub health: Health,
    /// When its health was read (ms since the Unix epoch; 0: not yet).
    pub checked_ms: u64,
}

/// A registered gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateView {
    /// Its advertised address.
    pub address: String,
    /// Its operations HTTP address, if it publishes one.
    pub ops: Option<String>,
    /// Its health.
    pub health: Health,
    /// When its health was read (ms since the Unix epoch; 0: not yet).
    pub checked_ms: u64,
}

/// One shard's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardView {
    /// The shard.
    pub shard: u32,
    /// The node serving it, if a registered one does.
    pub current: Option<String>,
    /// Where placement wants it.
    pub target: Option<String>,
    /// Its ownership epoch.
    pub epoch: u64,
    /// The node it is pinned to.
    pub pinned: Option<String>,
}

/// `GET /api/calls`: every node's calls by type and method, and live objects by node and type.
#[derive(Debug, Clone, Serialize)]
pub struct CallsSnapshot {
    /// Calls, by type, method and node.
    pub calls: Vec<CallStats>,
    /// Live objects by node and type.
    pub objects: Vec<ObjectCount>,
}

/// Live objects of one type on one node.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectCount {
    /// The node.
    pub node: String,
    /// The type.
    pub object_type: String,
    /// How many.
    pub count: u64,
}

/// `GET /api/objects`: the objects found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectsAnswer {
    /// Matching objects (at most the configured limit), by node, type and ID.
    pub objects: Vec<ObjectEntry>,
    /// How many matched in all.
    pub matched: usize,
    /// Whether more matched than are listed.
    pub truncated: bool,
    /// Nodes that could not be asked, and why.
    pub errors: Vec<NodeError>,
}

/// One live object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectEntry {
    /// The node it lives on.
    pub node: String,
    /// Its type.
    pub object_type: String,
    /// Its ID.
    pub id: String,
    /// Its shard.
    pub shard: Option<u32>,
    /// When it was activated (seconds since the Unix epoch, as upstream's `ListObjects` says).
    pub created_unix: i64,
}

/// A node that did not answer.
#[derive(Debug, Clone, Serialize)]
pub struct NodeError {
    /// The node.
    pub node: String,
    /// What went wrong.
    pub error: String,
}

fn process_status(status: &Status, address: &str) -> (Health, u64) {
    status.processes.get(address).map_or_else(
        || (Health::Unknown("not read yet".to_owned()), 0),
        |ProcessStatus { health, checked_ms }| (health.clone(), *checked_ms),
    )
}

impl ClusterSnapshot {
    pub(crate) fn new(map: &ClusterMap, prefix: &str, status: &Status) -> Self {
        let shards = shard_views(map);
        Self {
            prefix: prefix.to_owned(),
            revision: map.revision,
            shard_count: map.shards.len() as u32,
            members: Members::new(map, status, &shards),
            shards,
        }
    }
}

pub(crate) fn shard_views(map: &ClusterMap) -> Vec<ShardView> {
    map.shards
        .iter()
        .map(|read| {
            let record = read.record.as_ref().map(|(r, _)| r);
            ShardView {
                shard: read.shard.0,
                current: map.owner(read.shard).map(|n| n.as_str().to_owned()),
                target: record
                    .and_then(|r| r.target.as_ref())
                    .map(|n| n.as_str().to_owned()),
                epoch: record.map_or(0, |r| r.epoch),
                pinned: map.pins.get(&read.shard).map(|n| n.as_str().to_owned()),
            }
        })
        .collect()
}

impl Members {
    /// The members `map` names, with what the last poll read of them; `shards` are the map's
    /// [`shard_views`].
    pub(crate) fn new(map: &ClusterMap, status: &Status, shards: &[ShardView]) -> Self {
        Self {
            leader: map.leader.as_ref().map(|(n, _)| n.as_str().to_owned()),
            nodes: node_views(map, status, shards),
            gates: gate_views(map, status),
            moving: map.moving(),
            unowned: map.unowned(),
        }
    }
}

fn node_views(map: &ClusterMap, status: &Status, shards: &[ShardView]) -> Vec<NodeView> {
    let mut served: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pinned: BTreeMap<&str, usize> = BTreeMap::new();
    for shard in shards {
        if let Some(current) = &shard.current {
            *served.entry(current).or_default() += 1;
        }
        if let Some(pin) = &shard.pinned {
            *pinned.entry(pin).or_default() += 1;
        }
    }
    let mut objects: BTreeMap<&str, u64> = BTreeMap::new();
    for ((node, _), count) in &status.objects {
        *objects.entry(node).or_default() += count;
    }
    let polled = status.processes.len();
    map.nodes
        .iter()
        .map(|node| {
            let address = node.as_str();
            let (health, checked_ms) = process_status(status, address);
            NodeView {
                address: address.to_owned(),
                ops: map.info.get(address).and_then(|i| i.ops.clone()),
                leader: map.leader.as_ref().is_some_and(|(l, _)| l == node),
                drained: map.drained.contains(node),
                shards: served.get(address).copied().unwrap_or_default(),
                pinned: pinned.get(address).copied().unwrap_or_default(),
                // A node read without objects has none; one never read is unknown.
                objects: (polled > 0 && matches!(health, Health::Ready | Health::NotReady(_)))
                    .then(|| objects.get(address).copied().unwrap_or_default()),
                health,
                checked_ms,
            }
        })
        .collect()
}

fn gate_views(map: &ClusterMap, status: &Status) -> Vec<GateView> {
    map.gates
        .iter()
        .map(|gate| {
            let (health, checked_ms) = process_status(status, gate);
            GateView {
                address: gate.clone(),
                ops: map.info.get(gate).and_then(|i| i.ops.clone()),
                health,
                checked_ms,
            }
        })
        .collect()
}

impl CallsSnapshot {
    pub(crate) fn new(status: &Status) -> Self {
        Self {
            calls: status.calls.clone(),
            objects: status
                .objects
                .iter()
                .map(|((node, object_type), count)| ObjectCount {
                    node: node.clone(),
                    object_type: object_type.clone(),
                    count: *count,
                })
                .collect(),
        }
    }
}
