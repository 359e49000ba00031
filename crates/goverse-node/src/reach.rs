//! Checking the peers: whether this node reaches every other registered node the way calls
//! travel, published as its [`ReachReport`] so that placement gives shards only to nodes that
//! reach each other both ways ([`goverse_cluster::serving_nodes`]).
//!
//! Each peer is checked every interval with a new connection and the node service's
//! `Describe` (presenting the cluster secret), and a newly registered peer at once. A verdict
//! changes only on evidence: a peer is reached after one good check when it is new and after
//! two in a row when it was down; it is down after three failed checks in a row. The report is
//! written on this node's lease whenever a verdict changes, so it vanishes with the node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use goverse_cluster::ReachReport;
use goverse_core::NodeAddr;
use goverse_transport::{Connector, LinkError};
use tokio_util::sync::CancellationToken;

use crate::membership::Membership;

/// Failed checks in a row after which a peer is down.
pub(crate) const DOWN_AFTER: u32 = 3;
/// Good checks in a row after which a peer that was down is reached again.
pub(crate) const UP_AFTER: u32 = 2;

/// What this node knows of one peer.
#[derive(Debug, Default, Clone)]
struct PeerCheck {
    /// `None` until the first verdict; `Some(Err(cause))` while down.
    verdict: Option<Result<(), LinkError>>,
    /// Good checks in a row (while down) or failed checks in a row (while up or unknown).
    streak: u32,
}

impl PeerCheck {
    /// Takes one check's outcome; returns whether the verdict changed.
    fn observe(&mut self, outcome: Result<(), LinkError>) -> bool {
        let up = matches!(self.verdict, Some(Ok(())));
        match (&self.verdict, outcome) {
            (None | Some(Ok(())), Ok(())) => {
                self.streak = 0;
                let changed = !up;
                self.verdict = Some(Ok(()));
                changed
            }
            (None | Some(Ok(())), Err(cause)) => {
                self.streak += 1;
                if self.streak >= DOWN_AFTER {
                    self.streak = 0;
                    self.verdict = Some(Err(cause));
                    return true;
                }
                false
            }
            (Some(Err(_)), Ok(())) => {
                self.streak += 1;
                if self.streak >= UP_AFTER {
                    self.streak = 0;
                    self.verdict = Some(Ok(()));
                    return true;
                }
                false
            }
            (Some(Err(_)), Err(cause)) => {
                // Still down: keep the latest cause, without counting it as a change.
                self.streak = 0;
                self.verdict = Some(Err(cause));
                false
            }
        }
    }
}

/// The report the checks so far make.
fn report_of(checks: &BTreeMap<NodeAddr, PeerCheck>) -> ReachReport {
    let mut report = ReachReport::default();
    for (peer, check) in checks {
        match &check.verdict {
            Some(Ok(())) => {
                report.up.insert(peer.clone());
            }
            Some(Err(cause)) => {
                report.down.insert(peer.clone(), cause.to_string());
            }
            None => {}
        }
    }
    report
}

/// Checks the peers every `interval` (each check bounded by twice it) and keeps this node's
/// report current, until `cancel`.
pub(crate) async fn check_peers(
    membership: Arc<Membership>,
    connector: Arc<dyn Connector>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let me = membership.address().clone();
    let key = membership.keys.reach_of(&me);
    let timeout = interval * 2;
    let mut changes = membership.view().subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checks: BTreeMap<NodeAddr, PeerCheck> = BTreeMap::new();
    // What was last written, and on which lease; rounds since then with the map not showing it.
    let mut written: Option<(goverse_cluster::LeaseId, ReachReport)> = None;
    let mut unseen_rounds = 0u32;
    loop {
        let every_peer = tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => true,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
        };
        let (peers, published) = {
            let map = membership.view().borrow();
            let peers: Vec<NodeAddr> = map.nodes.iter().filter(|n| **n != me).cloned().collect();
            (peers, map.reach.get(&me).cloned())
        };
        checks.retain(|peer, _| peers.contains(peer));
        let due: Vec<NodeAddr> = peers
            .into_iter()
            .filter(|peer| every_peer || !checks.contains_key(peer))
            .collect();
        let mut changed = false;
        if !due.is_empty() {
            let probes =
                futures::future::join_all(due.iter().map(|peer| connector.probe(peer, timeout)));
            let outcomes = tokio::select! {
                () = cancel.cancelled() => return,
                outcomes = probes => outcomes,
            };
            for (peer, outcome) in due.into_iter().zip(outcomes) {
                let check = checks.entry(peer.clone()).or_default();
                if check.observe(outcome) {
                    changed = true;
                    match &check.verdict {
                        Some(Err(cause)) => {
                            tracing::warn!(%peer, %cause, "cannot reach peer node")
                        }
                        _ => tracing::info!(%peer, "peer node reached"),
                    }
                }
            }
        }
        if !every_peer && !changed && published.is_some() {
            continue;
        }
        let report = report_of(&checks);
        let Some(lease) = membership.lease() else {
            continue;
        };
        if !membership.lease_fresh() {
            continue;
        }
        if published.as_ref() == Some(&report) {
            unseen_rounds = 0;
            continue;
        }
        let same_as_written = written
            .as_ref()
            .is_some_and(|(l, r)| *l == lease && *r == report);
        // Written already and not in the map yet: the watch is behind; write again only if it
        // stays missing (the key was removed by hand, say).
        if same_as_written && unseen_rounds < 3 {
            unseen_rounds += u32::from(every_peer);
            continue;
        }
        match membership
            .cluster
            .put(&key, report.encode(), Some(lease))
            .await
        {
            Ok(_) => {
                written = Some((lease, report));
                unseen_rounds = 0;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot publish which peers this node reaches")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_change_only_on_evidence() {
        let fail = || Err(LinkError::Connect("refused".to_owned()));
        let mut check = PeerCheck::default();
        assert!(
            check.observe(Ok(())),
            "a new peer is reached at its first good check"
        );
        assert!(!check.observe(fail()));
        assert!(!check.observe(fail()));
        assert!(!check.observe(Ok(())), "a good check resets the count");
        assert!(!check.observe(fail()));
        assert!(!check.observe(fail()));
        assert!(check.observe(fail()), "down at the third failure in a row");
        assert_eq!(
            check.verdict,
            Some(Err(LinkError::Connect("refused".to_owned())))
        );
        assert!(!check.observe(Err(LinkError::Closed)));
        assert_eq!(
            check.verdict,
            Some(Err(LinkError::Closed)),
            "latest cause kept"
        );
        assert!(!check.observe(Ok(())));
        assert!(
            !check.observe(fail()),
            "one good check is not enough to come back"
        );
        assert!(!check.observe(Ok(())));
        assert!(check.observe(Ok(())), "back after two good checks in a row");

        let mut new = PeerCheck::default();
        for _ in 1..DOWN_AFTER {
            assert!(!new.observe(fail()));
        }
        assert!(new.observe(fail()));
        let checks = BTreeMap::from([
            (NodeAddr::new("127.0.0.1:1"), check),
            (NodeAddr::new("127.0.0.1:2"), new),
            (NodeAddr::new("127.0.0.1:3"), PeerCheck::default()),
        ]);
        let report = report_of(&checks);
        assert_eq!(report.up.len(), 1);
        assert_eq!(report.down.len(), 1);
    }
}
