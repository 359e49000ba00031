//! Where shards should live: a pure state machine the leader steps with what it sees.
//!
//! [`Placement::step`] takes the live nodes, every shard's record and the pinned shards, and
//! returns the target changes to write. It does no I/O and reads no clock (the caller passes the
//! time), so it is tested exhaustively and with random join/leave sequences. Rules, in order:
//!
//! 1. A pinned shard goes to its pinned node while that node is live.
//! 2. A shard with no target, or a target that is not live, goes to the least-loaded live node.
//! 3. A shard whose live target has not taken it (no current owner) for `stuck_timeout` goes to
//!    the least-loaded other live node.
//! 4. Then, while one node serves two or more shards more than another, one unpinned shard moves
//!    from the most-loaded node to the least-loaded one: the result is balanced to ±1 and only
//!    shards that must move do (at most `max_rebalance_moves` per step; later steps go on).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use goverse_core::{NodeAddr, ShardId};

use crate::ShardRecord;

/// How placement behaves. Plain data with defaults.
#[derive(Debug, Clone)]
pub struct PlacementConfig {
    /// A shard whose target has not taken it for this long is given to another node.
    pub stuck_timeout: Duration,
    /// At most this many rebalancing moves per step (moves of orphaned, pinned and stuck shards
    /// are never held back). Spreads the hand-overs of a join over several steps.
    pub max_rebalance_moves: usize,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            stuck_timeout: Duration::from_secs(60),
            max_rebalance_moves: 1024,
        }
    }
}

/// Why a shard's target changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MoveReason {
    /// It had no target.
    Unassigned,
    /// Its target is not a live node.
    NodeGone,
    /// It is pinned to a live node it was not targeted at.
    Pinned,
    /// Its target did not take it within the stuck timeout.
    Stuck,
    /// Balancing the load.
    Rebalance,
}

/// One target change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The shard.
    pub shard: ShardId,
    /// Its target before.
    pub from: Option<NodeAddr>,
    /// Its target now.
    pub to: NodeAddr,
    /// Why.
    pub reason: MoveReason,
}

/// The placement state machine: the decisions, plus how long each shard has waited for its
/// target to take it.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    config: PlacementConfig,
    /// Shards whose live target has not taken them, and since when.
    waiting_since: BTreeMap<ShardId, Duration>,
}

impl Placement {
    /// A placement with `config`.
    pub fn new(config: PlacementConfig) -> Self {
        Self {
            config,
            waiting_since: BTreeMap::new(),
        }
    }

    /// The target changes that bring `records` (one per shard, in shard order) to a placement
    /// that follows the rules, given the `live` nodes and the `pinned` shards, at time `now`
    /// (any monotonic clock, as a duration since its origin). No live node: no moves.
    pub fn step(
        &mut self,
        now: Duration,
        live: &BTreeSet<NodeAddr>,
        records: &[ShardRecord],
        pinned: &BTreeMap<ShardId, NodeAddr>,
    ) -> Vec<Move> {
        if live.is_empty() {
            self.waiting_since.clear();
            return Vec::new();
        }
        let mut targets: Vec<Option<NodeAddr>> = records.iter().map(|r| r.target.clone()).collect();
        let mut moves = Vec::new();
        let mut assign = |targets: &mut Vec<Option<NodeAddr>>, i: usize, to: &NodeAddr, reason| {
            moves.push(Move {
                shard: records[i].shard,
                from: targets[i].clone(),
                to: to.clone(),
                reason,
            });
            targets[i] = Some(to.clone());
        };

        // 1. Pins.
        for (i, record) in records.iter().enumerate() {
            if let Some(pin) = pinned.get(&record.shard)
                && live.contains(pin)
                && targets[i].as_ref() != Some(pin)
            {
                assign(&mut targets, i, pin, MoveReason::Pinned);
            }
        }

        let mut loads = Loads::new(live);
        for target in targets.iter().flatten() {
            loads.add(target);
        }

        // 2. Orphans.
        for i in 0..records.len() {
            let reason = match &targets[i] {
                None => MoveReason::Unassigned,
                Some(target) if !live.contains(target) => MoveReason::NodeGone,
                Some(_) => continue,
            };
            let to = loads.least(None);
            loads.add(&to);
            assign(&mut targets, i, &to, reason);
        }

        // 3. Stuck shards: the target is live but nobody serves the shard.
        let mut still_waiting = BTreeMap::new();
        for (i, record) in records.iter().enumerate() {
            let target = targets[i]
                .clone()
                .expect("every shard has a live target now");
            let taken = record.current.as_ref() == Some(&target);
            let moved_now = record.target.as_ref() != Some(&target);
            let handing_over = record.current.as_ref().is_some_and(|c| live.contains(c));
            if taken || moved_now || handing_over {
                // Taken, just assigned, or still served by its live previous owner (a
                // hand-over in progress): not stuck.
                continue;
            }
            let since = *self.waiting_since.get(&record.shard).unwrap_or(&now);
            if now.saturating_sub(since) < self.config.stuck_timeout || live.len() < 2 {
                still_waiting.insert(record.shard, since);
                continue;
            }
            loads.remove(&target);
            let to = loads.least(Some(&target));
            loads.add(&to);
            assign(&mut targets, i, &to, MoveReason::Stuck);
            still_waiting.insert(record.shard, now);
        }
        self.waiting_since = still_waiting;

        // 4. Rebalance, one shard at a time from the most- to the least-loaded node.
        let mut movable: BTreeMap<NodeAddr, Vec<usize>> = BTreeMap::new();
        for (i, target) in targets.iter().enumerate() {
            let target = target.as_ref().expect("every shard has a live target now");
            if pinned.get(&records[i].shard) != Some(target) {
                movable.entry(target.clone()).or_default().push(i);
            }
        }
        let mut rebalanced = 0;
        while rebalanced < self.config.max_rebalance_moves {
            let Some((from, to)) = loads.imbalance(&movable) else {
                break;
            };
            let i = movable
                .get_mut(&from)
                .and_then(Vec::pop)
                .expect("the donor has a movable shard");
            loads.remove(&from);
            loads.add(&to);
            movable.entry(to.clone()).or_default().push(i);
            assign(&mut targets, i, &to, MoveReason::Rebalance);
            rebalanced += 1;
        }
        moves
    }
}

/// Shards per live node, ordered for "least loaded" and "most loaded" in O(log n).
struct Loads {
    by_node: BTreeMap<NodeAddr, usize>,
    order: BTreeSet<(usize, NodeAddr)>,
}

impl Loads {
    fn new(live: &BTreeSet<NodeAddr>) -> Self {
        Self {
            by_node: live.iter().map(|n| (n.clone(), 0)).collect(),
            order: live.iter().map(|n| (0, n.clone())).collect(),
        }
    }

    fn change(&mut self, node: &NodeAddr, delta: isize) {
        let Some(load) = self.by_node.get_mut(node) else {
            return;
        };
        self.order.remove(&(*load, node.clone()));
        *load = load.saturating_add_signed(delta);
        self.order.insert((*load, node.clone()));
    }

    fn add(&mut self, node: &NodeAddr) {
        self.change(node, 1);
    }

    fn remove(&mut self, node: &NodeAddr) {
        self.change(node, -1);
    }

    /// The least-loaded node other than `except` (ties: the smallest address); `except` itself
    /// when it is the only node.
    fn least(&self, except: Option<&NodeAddr>) -> NodeAddr {
        self.order
            .iter()
            .map(|(_, n)| n)
            .find(|n| Some(*n) != except)
            .or_else(|| self.order.first().map(|(_, n)| n))
            .expect("at least one live node")
            .clone()
    }

    /// A (donor, receiver) pair whose loads differ by two or more, the donor having a shard it
    /// may give: the most-loaded such donor and the least-loaded node.
    fn imbalance(&self, movable: &BTreeMap<NodeAddr, Vec<usize>>) -> Option<(NodeAddr, NodeAddr)> {
        let (least, receiver) = self.order.first()?;
        self.order
            .iter()
            .rev()
            .take_while(|(load, _)| *load >= least + 2)
            .find(|(_, node)| movable.get(node).is_some_and(|m| !m.is_empty()))
            .map(|(_, donor)| (donor.clone(), receiver.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(n: u8) -> NodeAddr {
        NodeAddr::new(format!("127.0.0.1:{}", 47000 + u16::from(n)))
    }

    fn fresh(count: u32) -> Vec<ShardRecord> {
        (0..count)
            .map(|n| ShardRecord {
                shard: ShardId(n),
                target: None,
                current: None,
                epoch: 0,
            })
            .collect()
    }

    /// Applies the moves, and lets every target take its shard at once.
    fn apply(records: &mut [ShardRecord], moves: &[Move]) {
        for m in moves {
            records[m.shard.0 as usize].target = Some(m.to.clone());
        }
        for r in records.iter_mut() {
            r.current = r.target.clone();
        }
    }

    fn loads(records: &[ShardRecord], live: &BTreeSet<NodeAddr>) -> BTreeMap<NodeAddr, usize> {
        let mut loads: BTreeMap<NodeAddr, usize> = live.iter().map(|n| (n.clone(), 0)).collect();
        for r in records {
            *loads.get_mut(r.target.as_ref().unwrap()).unwrap() += 1;
        }
        loads
    }

    /// The fewest target changes that balance `records` over `live` to ±1: every orphan moves,
    /// and each node gives up what it holds beyond its share, where the r larger shares go to
    /// the nodes that already hold more than the smaller share.
    fn fewest_moves(records: &[ShardRecord], live: &BTreeSet<NodeAddr>) -> usize {
        let (s, n) = (records.len(), live.len());
        let (q, r) = (s / n, s % n);
        let mut held: BTreeMap<&NodeAddr, usize> = live.iter().map(|n| (n, 0)).collect();
        let mut orphans = 0;
        for rec in records {
            match rec.target.as_ref().and_then(|t| held.get_mut(t)) {
                Some(count) => *count += 1,
                None => orphans += 1,
            }
        }
        let above = held.values().filter(|&&h| h > q).count();
        let excess: usize = held.values().map(|&h| h.saturating_sub(q)).sum();
        orphans + excess - above.min(r)
    }

    #[test]
    fn a_fresh_map_is_balanced_to_one_shard() {
        let live: BTreeSet<_> = (0..3).map(node).collect();
        let mut records = fresh(64);
        let moves = Placement::default().step(Duration::ZERO, &live, &records, &BTreeMap::new());
        assert_eq!(moves.len(), 64);
        assert!(moves.iter().all(|m| m.reason == MoveReason::Unassigned));
        apply(&mut records, &moves);
        let loads = loads(&records, &live);
        assert_eq!(loads.values().copied().collect::<Vec<_>>(), [22, 21, 21]);
    }

    #[test]
    fn a_joining_node_takes_only_its_share_and_a_leaving_one_gives_only_its_own() {
        let mut placement = Placement::default();
        let mut live: BTreeSet<_> = (0..3).map(node).collect();
        let mut records = fresh(60);
        let moves = placement.step(Duration::ZERO, &live, &records, &BTreeMap::new());
        apply(&mut records, &moves);

        live.insert(node(3));
        let moves = placement.step(Duration::ZERO, &live, &records, &BTreeMap::new());
        assert_eq!(
            moves.len(),
            15,
            "60 shards over 4 nodes: the new one takes 15"
        );
        assert!(
            moves
                .iter()
                .all(|m| m.to == node(3) && m.reason == MoveReason::Rebalance)
        );
        apply(&mut records, &moves);

        live.remove(&node(1));
        let moves = placement.step(Duration::ZERO, &live, &records, &BTreeMap::new());
        assert_eq!(moves.len(), 15, "only the leaver's shards move");
        assert!(
            moves
                .iter()
                .all(|m| m.from == Some(node(1)) && m.reason == MoveReason::NodeGone)
        );
    }

    #[test]
    fn pinned_shards_stay_and_stuck_shards_are_reassigned_after_the_timeout() {
        let config = PlacementConfig {
            stuck_timeout: Duration::from_secs(10),
            ..PlacementConfig::default()
        };
        let mut placement = Placement::new(config);
        let live: BTreeSet<_> = (0..2).map(node).collect();
        let pinned = BTreeMap::from([(ShardId(0), node(0)), (ShardId(1), node(0))]);
        let mut records = fresh(8);
        let moves = placement.step(Duration::ZERO, &live, &records, &pinned);
        apply(&mut records, &moves);
        assert_eq!(records[0].target, Some(node(0)));
        assert_eq!(records[1].target, Some(node(0)));
        assert_eq!(
            loads(&records, &live).values().copied().collect::<Vec<_>>(),
            [4, 4]
        );

        // Shard 5's target never takes it.
        let stuck_on = records[5].target.clone().unwrap();
        records[5].current = None;
        for secs in [1, 5, 10] {
            let moves = placement.step(Duration::from_secs(secs), &live, &records, &pinned);
            assert!(moves.is_empty(), "{secs} s: not stuck yet: {moves:?}");
        }
        let moves = placement.step(Duration::from_secs(11), &live, &records, &pinned);
        assert!(
            moves.iter().any(|m| m.shard == ShardId(5)
                && m.reason == MoveReason::Stuck
                && m.to != stuck_on),
            "{moves:?}"
        );

        // A hand-over in progress (its live old owner still serves it) is not stuck, however
        // long it takes; one whose old owner is gone is.
        let mut placement = Placement::new(PlacementConfig {
            stuck_timeout: Duration::from_secs(10),
            ..PlacementConfig::default()
        });
        let mut records = fresh(8);
        let moves = placement.step(Duration::ZERO, &live, &records, &BTreeMap::new());
        apply(&mut records, &moves);
        let target = records[6].target.clone().unwrap();
        let other = live.iter().find(|n| **n != target).unwrap().clone();
        records[6].current = Some(other);
        for secs in [0, 100, 1000] {
            let moves =
                placement.step(Duration::from_secs(secs), &live, &records, &BTreeMap::new());
            assert!(moves.is_empty(), "{moves:?}");
        }
        records[6].current = Some(NodeAddr::new("127.0.0.1:1"));
        placement.step(Duration::from_secs(1000), &live, &records, &BTreeMap::new());
        let moves = placement.step(Duration::from_secs(1011), &live, &records, &BTreeMap::new());
        assert!(
            moves
                .iter()
                .any(|m| m.shard == ShardId(6) && m.reason == MoveReason::Stuck),
            "{moves:?}"
        );
    }

    #[test]
    fn rebalancing_is_rate_limited_and_continues_in_later_steps() {
        let mut placement = Placement::new(PlacementConfig {
            max_rebalance_moves: 4,
            ..PlacementConfig::default()
        });
        let mut live: BTreeSet<_> = [node(0)].into();
        let mut records = fresh(20);
        let moves = placement.step(Duration::ZERO, &live, &records, &BTreeMap::new());
        assert_eq!(moves.len(), 20, "orphans are never held back");
        apply(&mut records, &moves);
        live.insert(node(1));
        let mut steps = 0;
        loop {
            let moves = placement.step(Duration::ZERO, &live, &records, &BTreeMap::new());
            if moves.is_empty() {
                break;
            }
            assert!(moves.len() <= 4);
            apply(&mut records, &moves);
            steps += 1;
        }
        assert_eq!(steps, 3, "10 moves, 4 per step");
        assert_eq!(
            loads(&records, &live).values().copied().collect::<Vec<_>>(),
            [10, 10]
        );
    }

    #[derive(Debug, Clone)]
    enum Change {
        Join(u8),
        Leave(u8),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0u8..8).prop_map(Change::Join),
            (0u8..8).prop_map(Change::Leave),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Over random join/leave sequences: every shard has a live target, the load is
        /// balanced to ±1, and each step moves exactly as many shards as it must.
        #[test]
        fn joins_and_leaves_keep_balance_with_the_fewest_moves(
            shard_count in 1u32..300,
            changes in proptest::collection::vec(change(), 1..25),
        ) {
            let mut placement = Placement::new(PlacementConfig {
                max_rebalance_moves: usize::MAX,
                ..PlacementConfig::default()
            });
            let mut live = BTreeSet::new();
            let mut records = fresh(shard_count);
            for change in changes {
                match change {
                    Change::Join(n) => { live.insert(node(n)); }
                    Change::Leave(n) => { live.remove(&node(n)); }
                }
                let moves = placement.step(Duration::ZERO, &live, &records, &BTreeMap::new());
                if live.is_empty() {
                    prop_assert!(moves.is_empty());
                    continue;
                }
                let fewest = fewest_moves(&records, &live);
                prop_assert_eq!(moves.len(), fewest);
                let shards: BTreeSet<_> = moves.iter().map(|m| m.shard).collect();
                prop_assert_eq!(shards.len(), moves.len(), "no shard moves twice in a step");
                apply(&mut records, &moves);
                let loads = loads(&records, &live);
                let (min, max) = (loads.values().min().unwrap(), loads.values().max().unwrap());
                prop_assert!(max - min <= 1, "loads {:?}", loads);
                // A second step with nothing changed moves nothing.
                prop_assert!(placement.step(Duration::ZERO, &live, &records, &BTreeMap::new()).is_empty());
            }
        }

        /// With pins: a pinned shard is on its node whenever that node is live, and the other
        /// shards are spread to ±1 over the nodes that hold no more than their share in pins.
        #[test]
        fn pins_are_kept_and_the_rest_is_balanced(
            shard_count in 8u32..200,
            pins in proptest::collection::btree_map(0u32..8, 0u8..4, 0..6),
            changes in proptest::collection::vec(change(), 1..15),
        ) {
            let pinned: BTreeMap<ShardId, NodeAddr> =
                pins.into_iter().map(|(s, n)| (ShardId(s), node(n))).collect();
            let mut placement = Placement::default();
            let mut live = BTreeSet::new();
            let mut records = fresh(shard_count);
            for change in changes {
                match change {
                    Change::Join(n) => { live.insert(node(n)); }
                    Change::Leave(n) => { live.remove(&node(n)); }
                }
                let moves = placement.step(Duration::ZERO, &live, &records, &pinned);
                apply(&mut records, &moves);
                if live.is_empty() {
                    continue;
                }
                for (shard, pin) in &pinned {
                    if live.contains(pin) {
                        prop_assert_eq!(records[shard.0 as usize].target.as_ref(), Some(pin));
                    }
                }
                let loads = loads(&records, &live);
                let min = *loads.values().min().unwrap();
                for (n, load) in &loads {
                    let pins_here = pinned.values().filter(|p| *p == n).count();
                    prop_assert!(
                        *load <= min + 1 || pins_here == *load,
                        "{} holds {} shards, {} of them pinned; loads {:?}", n, load, pins_here, loads
                    );
                }
            }
        }
    }
}
