//! Which registered nodes may hold shards: those every other such node can reach, and which
//! can reach them.
//!
//! A registration proves only that a node reaches etcd. Each node therefore checks its peers
//! the way calls travel (the node service, with the cluster's secret) and publishes what it
//! found as a [`ReachReport`] under `{prefix}/reach/{host:port}`, on its lease. Two nodes are
//! *linked* when each one's report says it reaches the other; a missing report or verdict counts
//! as not linked, so a node that has just joined holds nothing until its peers have checked it.
//!
//! [`serving_nodes`] turns the registrations and the reports into the set placement and claims
//! use. It is pure, so every node and the leader decide the same from the same map: while some
//! pair of the remaining nodes is not linked, the node with the most such pairs is set aside
//! (ties: the one registered last, which is the likelier to be misconfigured; then the larger
//! address). What remains is fully linked, and a node with no broken pair is never set aside.

use std::collections::{BTreeMap, BTreeSet};

use goverse_core::NodeAddr;

use crate::Revision;

/// What one node found when it last checked its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReachReport {
    /// Peers it reaches.
    pub up: BTreeSet<NodeAddr>,
    /// Peers it cannot reach, each with why.
    pub down: BTreeMap<NodeAddr, String>,
}

/// Longest cause kept in a report (a report is one etcd value).
const MAX_CAUSE: usize = 200;

impl ReachReport {
    /// Whether the report says `peer` is reached.
    pub fn reaches(&self, peer: &NodeAddr) -> bool {
        self.up.contains(peer)
    }

    /// Encodes one line per peer, `up {addr}` or `down {addr} {cause}`: readable with
    /// etcdctl, and causes are cut to 200 bytes on one line.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = String::new();
        for peer in &self.up {
            text.push_str("up ");
            text.push_str(peer.as_str());
            text.push('\n');
        }
        for (peer, cause) in &self.down {
            let mut cause: String = cause
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if cause.len() > MAX_CAUSE {
                let mut end = MAX_CAUSE;
                while !cause.is_char_boundary(end) {
                    end -= 1;
                }
                cause.truncate(end);
            }
            text.push_str("down ");
            text.push_str(peer.as_str());
            text.push(' ');
            text.push_str(&cause);
            text.push('\n');
        }
        text.into_bytes()
    }

    /// Decodes [`ReachReport::encode`]'s format, naming what is wrong on failure.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self, crate::BadRecord> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| crate::BadRecord::new(key, "reach report is not utf-8"))?;
        let mut report = Self::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let bad =
                || crate::BadRecord::new(key, format!("malformed reach report line {line:?}"));
            let (verdict, rest) = line.split_once(' ').ok_or_else(bad)?;
            // A peer is an address (`host:port`): never empty, no spaces or control characters
            // (a line's `\r` would otherwise become part of it and change as it is rewritten).
            let peer = |addr: &str| {
                (!addr.is_empty() && !addr.chars().any(|c| c.is_whitespace() || c.is_control()))
                    .then(|| NodeAddr::new(addr))
                    .ok_or_else(bad)
            };
            match verdict {
                "up" => {
                    report.up.insert(peer(rest)?);
                }
                "down" => {
                    let (addr, cause) = rest.split_once(' ').unwrap_or((rest, ""));
                    report.down.insert(peer(addr)?, cause.to_owned());
                }
                _ => return Err(bad()),
            }
        }
        Ok(report)
    }
}

/// The registered nodes that may hold shards, and why each other one may not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Serving {
    /// Nodes every other one of them reaches both ways.
    pub nodes: BTreeSet<NodeAddr>,
    /// Registered nodes set aside, each with the first broken pair's reason.
    pub excluded: BTreeMap<NodeAddr, String>,
}

/// Decides which of the `registered` nodes (each with the revision it registered at) may hold
/// shards, from their `reports` (see the module docs). Never empty when `registered` is not.
pub fn serving_nodes(
    registered: &BTreeMap<NodeAddr, Revision>,
    reports: &BTreeMap<NodeAddr, ReachReport>,
) -> Serving {
    let linked = |a: &NodeAddr, b: &NodeAddr| {
        let reaches = |from: &NodeAddr, to: &NodeAddr| {
            reports.get(from).is_some_and(|report| report.reaches(to))
        };
        reaches(a, b) && reaches(b, a)
    };
    let mut remaining: Vec<&NodeAddr> = registered.keys().collect();
    let mut excluded = BTreeMap::new();
    loop {
        let mut worst: Option<(usize, Revision, &NodeAddr, &NodeAddr)> = None;
        for &node in &remaining {
            let mut broken = 0;
            let mut first = None;
            for &other in &remaining {
                if other != node && !linked(node, other) {
                    broken += 1;
                    first.get_or_insert(other);
                }
            }
            let Some(first) = first else { continue };
            let joined = registered[node];
            let rank = (broken, joined, node);
            if worst.is_none_or(|(b, j, n, _)| rank > (b, j, n)) {
                worst = Some((broken, joined, node, first));
            }
        }
        let Some((_, _, node, other)) = worst else {
            break;
        };
        excluded.insert(node.clone(), reason(node, other, reports));
        remaining.retain(|n| *n != node);
    }
    Serving {
        nodes: remaining.into_iter().cloned().collect(),
        excluded,
    }
}

/// Why `node` and `other` are not linked, from the reports.
fn reason(node: &NodeAddr, other: &NodeAddr, reports: &BTreeMap<NodeAddr, ReachReport>) -> String {
    let says = |from: &NodeAddr, to: &NodeAddr| -> Option<String> {
        let Some(report) = reports.get(from) else {
            return Some(format!(
                "{from} has not reported which peers it reaches yet"
            ));
        };
        if report.reaches(to) {
            return None;
        }
        Some(match report.down.get(to) {
            Some(cause) => format!("{from} cannot reach {to}: {cause}"),
            None => format!("{from} has not checked {to} yet"),
        })
    };
    says(other, node)
        .or_else(|| says(node, other))
        .unwrap_or_else(|| format!("{node} and {other} are not linked"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(n: u16) -> NodeAddr {
        NodeAddr::new(format!("127.0.0.1:{}", 47000 + n))
    }

    fn registered(n: u16) -> BTreeMap<NodeAddr, Revision> {
        (0..n).map(|i| (node(i), Revision::from(i) + 1)).collect()
    }

    /// Reports in which every node reaches every other, except the `(from, to)` pairs given.
    fn reports(n: u16, unreached: &[(u16, u16)]) -> BTreeMap<NodeAddr, ReachReport> {
        (0..n)
            .map(|from| {
                let mut report = ReachReport::default();
                for to in (0..n).filter(|to| *to != from) {
                    if unreached.contains(&(from, to)) {
                        report.down.insert(node(to), "connection refused".into());
                    } else {
                        report.up.insert(node(to));
                    }
                }
                (node(from), report)
            })
            .collect()
    }

    fn serving(set: &[u16]) -> BTreeSet<NodeAddr> {
        set.iter().map(|n| node(*n)).collect()
    }

    #[test]
    fn reports_round_trip_and_bad_ones_are_named() {
        let mut report = ReachReport::default();
        report.up.insert(node(1));
        report
            .down
            .insert(node(2), "cannot connect:\nrefused".into());
        report.down.insert(node(3), "x".repeat(500));
        let decoded = ReachReport::decode("/goverse/reach/a", &report.encode()).unwrap();
        assert_eq!(decoded.up, report.up);
        assert_eq!(decoded.down[&node(2)], "cannot connect: refused");
        assert_eq!(decoded.down[&node(3)].len(), 200);
        let err = ReachReport::decode("/goverse/reach/a", b"maybe 127.0.0.1:1").unwrap_err();
        assert!(
            err.key == "/goverse/reach/a" && err.reason.contains("maybe"),
            "{err}"
        );
        assert!(ReachReport::decode("k", b"").unwrap().up.is_empty());
        // Found by the fuzzer: a peer ending in `\r` changed each time it was rewritten. A peer
        // is an address; empty ones and ones with spaces or control characters are refused.
        for line in [
            &b"up 10.0.0.1:1\r\r\n"[..],
            b"up ",
            b"down  cause",
            b"up a\tb",
        ] {
            let err = ReachReport::decode("k", line).unwrap_err();
            assert!(err.reason.contains("malformed reach report line"), "{err}");
        }
    }

    #[test]
    fn an_unreachable_node_is_set_aside_whichever_way_the_link_breaks() {
        // Nobody reaches node 2 (a wrong advertise address, or its incoming traffic cut).
        let got = serving_nodes(&registered(3), &reports(3, &[(0, 2), (1, 2)]));
        assert_eq!(got.nodes, serving(&[0, 1]));
        assert_eq!(
            got.excluded[&node(2)],
            format!("{} cannot reach {}: connection refused", node(0), node(2))
        );
        // Node 2 reaches nobody (its outgoing traffic cut): it goes, not the two it blames.
        let got = serving_nodes(&registered(3), &reports(3, &[(2, 0), (2, 1)]));
        assert_eq!(got.nodes, serving(&[0, 1]));
        // A wrong secret breaks both ways; with two nodes the later one goes.
        let got = serving_nodes(&registered(2), &reports(2, &[(0, 1), (1, 0)]));
        assert_eq!(got.nodes, serving(&[0]));
        // A split of five into two and three: the three keep serving.
        let cut: Vec<(u16, u16)> = [0, 1]
            .into_iter()
            .flat_map(|a| [2, 3, 4].into_iter().flat_map(move |b| [(a, b), (b, a)]))
            .collect();
        let got = serving_nodes(&registered(5), &reports(5, &cut));
        assert_eq!(got.nodes, serving(&[2, 3, 4]));
    }

    #[test]
    fn a_node_serves_only_once_checked_and_alone_it_always_serves() {
        let mut reports = reports(3, &[]);
        reports.remove(&node(2));
        let got = serving_nodes(&registered(3), &reports);
        assert_eq!(got.nodes, serving(&[0, 1]));
        assert!(
            got.excluded[&node(2)].contains("has not reported"),
            "{got:?}"
        );
        // Node 0 has not checked node 2 yet.
        let mut reports = self::reports(3, &[]);
        reports.get_mut(&node(0)).unwrap().up.remove(&node(2));
        let got = serving_nodes(&registered(3), &reports);
        assert_eq!(got.nodes, serving(&[0, 1]));
        assert!(
            got.excluded[&node(2)].contains("has not checked"),
            "{got:?}"
        );
        // One node needs nobody's word; no node, nobody serves.
        assert_eq!(
            serving_nodes(&registered(1), &BTreeMap::new()).nodes,
            serving(&[0])
        );
        assert!(
            serving_nodes(&registered(0), &BTreeMap::new())
                .nodes
                .is_empty()
        );
    }

    proptest! {
        /// Whatever the reports say: somebody serves, the serving nodes are linked pairwise,
        /// and a node linked to every other registered node is never set aside.
        #[test]
        fn the_serving_set_is_linked_and_keeps_every_healthy_node(
            n in 1u16..8,
            cut in proptest::collection::vec((0u16..8, 0u16..8), 0..20),
            silent in proptest::collection::vec(0u16..8, 0..3),
        ) {
            let mut reports = reports(n, &cut);
            for s in &silent {
                reports.remove(&node(*s));
            }
            let registered = registered(n);
            let got = serving_nodes(&registered, &reports);
            prop_assert!(!got.nodes.is_empty());
            prop_assert_eq!(got.nodes.len() + got.excluded.len(), n as usize);
            let linked = |a: &NodeAddr, b: &NodeAddr| {
                reports.get(a).is_some_and(|r| r.reaches(b))
                    && reports.get(b).is_some_and(|r| r.reaches(a))
            };
            for a in &got.nodes {
                for b in got.nodes.iter().filter(|b| *b != a) {
                    prop_assert!(linked(a, b), "{a} and {b} both serve");
                }
            }
            for a in registered.keys() {
                if registered.keys().filter(|b| *b != a).all(|b| linked(a, b)) {
                    prop_assert!(got.nodes.contains(a), "healthy {a} set aside: {got:?}");
                }
            }
        }
    }
}
