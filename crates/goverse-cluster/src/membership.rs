//! What a node and the leader decide from the map: pure, beside [`Placement`] and the claims.
//!
//! [`plan`] is one node's answer to the map it sees (which shards to fence, hand over, release
//! and claim, and whether to stand for leader), given what it holds of each shard. [`Leader`]
//! is the leader's side: placement stepped over the nodes that may hold shards once they have
//! held still for the stability window, never again before the map shows the targets it wrote
//! last. Neither does I/O or reads a clock; the node's reactor runs them and writes what they
//! return with compare-and-set.

use std::collections::BTreeMap;
use std::time::Duration;

use goverse_core::{NodeAddr, ShardId};

use crate::{
    ClusterMap, Expect, Placement, PlacementConfig, RecordWrite, Revision, ShardRecord, Stability,
    claims,
};

/// What a node holds of one shard, as far as its decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Nothing: the shard is not served here.
    Nothing,
    /// Claimed in the cluster store and not served yet.
    Claiming,
    /// Served: turns run.
    Serving,
    /// Being handed over or shut down: running turns finish, nothing new starts.
    Draining,
    /// Stopped by fencing: nothing runs, activations may still be held.
    Fenced,
}

impl Holding {
    /// Whether the shard may be claimed here (nothing runs for it here).
    fn free(self) -> bool {
        matches!(self, Self::Nothing | Self::Fenced)
    }
}

/// What a node does about the map it sees (decided by [`plan`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// Shards another live node serves now while this node still holds them: stop at once.
    pub fence: Vec<ShardId>,
    /// Shards served here that placement wants on another live node: drain and give up.
    pub hand_over: Vec<ShardId>,
    /// Records that still name this node as owner of a shard it no longer serves, while
    /// placement wants the shard elsewhere: clear the owner so the target can claim it.
    pub release: Vec<RecordWrite>,
    /// Shards to take ([`claims`]).
    pub claim: Vec<RecordWrite>,
    /// Nobody leads: stand for leader.
    pub campaign: bool,
}

/// Decides, from the map and what node `me` holds of each shard, what `me` does.
///
/// Without quorum, only shards that had a target (a node that died, or this one) are claimed:
/// a cluster that is still starting waits for its nodes, a running one fails over at once.
/// Quorum and claims count only the nodes that may hold shards ([`ClusterMap::serving`]): a
/// registered node its peers cannot reach, or that has not been checked yet, takes nothing
/// but what the leader gave it.
pub fn plan(
    me: &NodeAddr,
    map: &ClusterMap,
    min_quorum: usize,
    holding: impl Fn(ShardId) -> Holding,
) -> NodePlan {
    let mut live = map.nodes.clone();
    live.insert(me.clone());
    let serving = map.serving(Some(me)).nodes;
    let quorum = serving.len() >= min_quorum;
    // Orphans go to nodes placement may give shards to: not to a drained one.
    let serving = map.placeable(&serving);
    let live_other = |n: &Option<NodeAddr>| n.as_ref().is_some_and(|n| n != me && live.contains(n));
    let mut plan = NodePlan {
        campaign: map.leader.is_none(),
        ..NodePlan::default()
    };
    for read in &map.shards {
        let Some((record, revision)) = &read.record else {
            continue;
        };
        let here = holding(read.shard);
        let mine = record.current.as_ref() == Some(me);
        // Held here (served, draining, or fenced with activations) while another live node has it.
        if live_other(&record.current)
            && matches!(here, Holding::Serving | Holding::Draining | Holding::Fenced)
        {
            plan.fence.push(read.shard);
        }
        if mine && live_other(&record.target) {
            match here {
                Holding::Serving => plan.hand_over.push(read.shard),
                Holding::Nothing | Holding::Fenced => plan.release.push(RecordWrite {
                    expect: Expect::ModRevision(*revision),
                    record: ShardRecord {
                        current: None,
                        ..record.clone()
                    },
                }),
                Holding::Claiming | Holding::Draining => {}
            }
        }
    }
    plan.claim = claims(me, &live, &serving, &map.shards)
        .into_iter()
        .filter(|w| holding(w.record.shard).free())
        .filter(|w| {
            quorum
                || map
                    .record(w.record.shard)
                    .is_some_and(|r| r.target.is_some())
        })
        .collect();
    plan
}

/// How the leader places shards.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// How long the nodes that may hold shards must hold still before placement acts.
    pub stability_window: Duration,
    /// Nodes needed before placement acts.
    pub min_quorum: usize,
    /// A shard whose target has not taken it for this long is given to another node.
    pub stuck_timeout: Duration,
}

/// The leader's side of membership: placement stepped over the map once the nodes that may
/// hold shards are stable, and never again before the map shows the targets it wrote last.
/// Times are durations since any fixed origin the caller keeps.
#[derive(Debug)]
pub struct Leader {
    placement: Placement,
    stability: Stability,
    config: LeaderConfig,
    leading: bool,
    /// The revision of the last targets written; placement waits until the map has it.
    written: Revision,
    tick: Duration,
    /// Registered nodes set aside as last seen, with why (logged when it changes).
    excluded: BTreeMap<NodeAddr, String>,
}

impl Leader {
    /// A leader that does not lead yet.
    pub fn new(config: LeaderConfig) -> Self {
        Self {
            placement: Placement::new(PlacementConfig {
                stuck_timeout: config.stuck_timeout,
                ..PlacementConfig::default()
            }),
            stability: Stability::new(config.stability_window, config.min_quorum),
            leading: false,
            written: 0,
            excluded: BTreeMap::new(),
            // Often enough to act soon after the window ends and to notice stuck shards.
            tick: (config.stability_window / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
            config,
        }
    }

    /// When to look at the map again without a change, after `now`: only while leading.
    pub fn next_tick(&self, now: Duration) -> Option<Duration> {
        self.leading.then(|| {
            let stable_at = self.stability.stable_at();
            if stable_at > now {
                stable_at.min(now + self.tick)
            } else {
                now + self.tick
            }
        })
    }

    /// The target changes to write at `now`, as compare-and-set writes of the records read;
    /// nothing unless `leading`.
    pub fn step(&mut self, now: Duration, leading: bool, map: &ClusterMap) -> Vec<RecordWrite> {
        if !leading {
            if self.leading {
                tracing::info!("no longer leading");
            }
            self.leading = false;
            return Vec::new();
        }
        if !self.leading {
            // A new term: the window starts now, whatever an earlier term saw.
            self.stability = Stability::new(self.config.stability_window, self.config.min_quorum);
            self.leading = true;
        }
        // Placement sees only the nodes that may hold shards: one its peers cannot reach is
        // drained like one that died, and a node that joined waits until it has been checked.
        let serving = map.serving(None);
        self.stability.observe(now, &serving.nodes);
        if serving.excluded != self.excluded {
            log_set_aside(&self.excluded, &serving.excluded, map);
            self.excluded = serving.excluded;
        }
        if !self.stability.is_stable(now) || map.revision < self.written {
            return Vec::new();
        }
        let records = map.records();
        let placeable = map.placeable(&serving.nodes);
        let moves = self
            .placement
            .step(now, &placeable, &records, &map.honoured_pins());
        moves
            .into_iter()
            .map(|m| {
                let read = &map.shards[m.shard.0 as usize];
                let (expect, record) = match &read.record {
                    Some((record, revision)) => (Expect::ModRevision(*revision), record.clone()),
                    None => (Expect::Absent, records[m.shard.0 as usize].clone()),
                };
                RecordWrite {
                    expect,
                    record: ShardRecord {
                        target: Some(m.to),
                        ..record
                    },
                }
            })
            .collect()
    }

    /// The targets returned by the last step were written at `revision`.
    pub fn written(&mut self, revision: Revision) {
        self.written = self.written.max(revision);
    }
}

/// Logs the nodes newly set aside and those back.
fn log_set_aside(
    before: &BTreeMap<NodeAddr, String>,
    now: &BTreeMap<NodeAddr, String>,
    map: &ClusterMap,
) {
    for (node, why) in now {
        if before.contains_key(node) {
            continue;
        }
        // A node that joined waits for its checks as a matter of course.
        if why.contains(" cannot reach ") {
            tracing::warn!(%node, cause = %why, "node set aside: no shards go to it");
        } else {
            tracing::info!(%node, cause = %why, "node set aside until its peers check it");
        }
    }
    for node in before.keys() {
        if !now.contains_key(node) && map.nodes.contains(node) {
            tracing::info!(%node, "node reached by its peers again: it may hold shards");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::{KeyValue, Keys, WatchEvent};

    fn node(n: u16) -> NodeAddr {
        NodeAddr::new(format!("127.0.0.1:{}", 47000 + n))
    }

    /// A map of six shards with the given (target, current) and nodes 1 and 2 registered.
    fn map(records: &[(Option<u16>, Option<u16>)]) -> ClusterMap {
        let keys = Keys::default();
        let mut map = ClusterMap::empty(records.len() as u32);
        for n in [1, 2] {
            let kv = KeyValue {
                key: keys.node(&node(n)),
                value: Vec::new(),
                create_revision: 1,
                mod_revision: 1,
                lease: None,
            };
            map.apply(&keys, &WatchEvent::Put(kv)).unwrap();
            // Nodes 1 and 2 reach each other.
            let report = crate::ReachReport {
                up: [node(3 - n)].into(),
                ..Default::default()
            };
            let kv = KeyValue {
                key: keys.reach_of(&node(n)),
                value: report.encode(),
                create_revision: 2,
                mod_revision: 2,
                lease: None,
            };
            map.apply(&keys, &WatchEvent::Put(kv)).unwrap();
        }
        for (i, (target, current)) in records.iter().enumerate() {
            let record = ShardRecord {
                shard: ShardId(i as u32),
                target: target.map(node),
                current: current.map(node),
                epoch: 3,
            };
            let kv = KeyValue {
                key: keys.shard(ShardId(i as u32)),
                value: record.encode(),
                create_revision: 10 + i as i64,
                mod_revision: 10 + i as i64,
                lease: None,
            };
            map.apply(&keys, &WatchEvent::Put(kv)).unwrap();
        }
        map
    }

    #[test]
    fn the_plan_follows_the_map() {
        let me = node(1);
        let map = map(&[
            (Some(1), Some(1)), // 0: mine, served here: nothing
            (Some(2), Some(1)), // 1: moved to node 2 while served here: hand over
            (Some(2), Some(1)), // 2: moved to node 2, no longer served here: release
            (Some(2), Some(2)), // 3: node 2 serves it, but this node still writes: fence
            (Some(1), None),    // 4: targeted here, nobody serves it: claim
            (Some(9), Some(9)), // 5: its node is gone: claimed by its preferred node
        ]);
        let states = |s: ShardId| match s.0 {
            0 | 1 => Holding::Serving,
            3 => Holding::Draining,
            _ => Holding::Nothing,
        };
        let plan = plan(&me, &map, 1, states);
        assert_eq!(plan.fence, [ShardId(3)]);
        assert_eq!(plan.hand_over, [ShardId(1)]);
        assert_eq!(plan.release.len(), 1);
        assert_eq!(plan.release[0].record.shard, ShardId(2));
        assert_eq!(plan.release[0].record.current, None);
        assert_eq!(plan.release[0].record.target, Some(node(2)));
        assert_eq!(plan.release[0].expect, Expect::ModRevision(12));
        let mut live = map.nodes.clone();
        live.insert(me.clone());
        let mut claimed: Vec<u32> = vec![4];
        if crate::preferred(ShardId(5), &live, &me) == &me {
            claimed.push(5);
        }
        let got: Vec<u32> = plan.claim.iter().map(|w| w.record.shard.0).collect();
        assert_eq!(got, claimed);
        assert!(plan.campaign, "nobody leads");

        // Without the quorum, shards nobody was ever given stay where they are; shards of a
        // node that died are still taken.
        let fresh = ClusterMap::empty(4);
        assert!(plan_claims(&me, &fresh, 3).is_empty());
        assert_eq!(plan_claims(&me, &fresh, 1).len(), 4);
        let orphaned = map_with_gone_target();
        assert_eq!(plan_claims(&me, &orphaned, 3).len(), 1);
    }

    #[test]
    fn a_node_its_peers_have_not_reached_claims_only_what_it_was_given() {
        let keys = Keys::default();
        // Shard 0 targeted at node 1 and unserved; shards 1..6 orphaned by a node that died.
        let mut map = map(&[
            (Some(1), None),
            (Some(9), Some(9)),
            (Some(9), Some(9)),
            (Some(9), Some(9)),
            (Some(9), Some(9)),
            (Some(9), Some(9)),
        ]);
        let unreachable = |map: &mut ClusterMap, cause: &str| {
            let report = crate::ReachReport {
                down: [(node(1), cause.to_owned())].into(),
                ..Default::default()
            };
            let kv = KeyValue {
                key: keys.reach_of(&node(2)),
                value: report.encode(),
                create_revision: 2,
                mod_revision: 30,
                lease: None,
            };
            map.apply(&keys, &WatchEvent::Put(kv)).unwrap();
        };
        unreachable(&mut map, "cannot connect: connection refused");
        assert_eq!(
            map.serving(None).excluded[&node(2)],
            format!(
                "{} cannot reach {}: cannot connect: connection refused",
                node(2),
                node(1)
            )
        );
        // Nodes 1 and 2 joined at the same revision: the larger address is set aside.
        let aside = plan(&node(2), &map, 1, |_| Holding::Nothing);
        assert!(aside.claim.is_empty(), "{:?}", aside.claim);
        let kept = plan(&node(1), &map, 1, |_| Holding::Nothing);
        assert_eq!(
            kept.claim.len(),
            6,
            "node 1 takes its own shard and every orphan"
        );
        // Quorum counts only the nodes that may serve: with two wanted, orphans stay put.
        let short = plan(&node(1), &map, 2, |_| Holding::Nothing);
        assert_eq!(short.claim.len(), 6, "a node that died is still replaced");
        let fresh = plan(&node(1), &ClusterMap::empty(2), 2, |_| Holding::Nothing);
        assert!(fresh.claim.is_empty());
    }

    fn plan_claims(me: &NodeAddr, map: &ClusterMap, quorum: usize) -> Vec<RecordWrite> {
        plan(me, map, quorum, |_| Holding::Nothing).claim
    }

    fn map_with_gone_target() -> ClusterMap {
        // Shard 0 was node 9's, which is gone; node 1 is its only candidate.
        let mut map = map(&[(Some(9), Some(9))]);
        map.nodes.remove(&node(2));
        map
    }

    #[test]
    fn nobody_leading_means_every_node_stands() {
        let mut map = map(&[(Some(1), Some(1))]);
        assert!(plan(&node(1), &map, 1, |_| Holding::Serving).campaign);
        assert!(plan(&node(2), &map, 1, |_| Holding::Nothing).campaign);
        map.leader = Some((node(1), 5));
        assert!(!plan(&node(1), &map, 1, |_| Holding::Serving).campaign);
        assert!(!plan(&node(2), &map, 1, |_| Holding::Nothing).campaign);
    }

    /// A cluster in a map, changed as the store would change it: nodes join and leave (each
    /// reaching every other), the leader's writes apply only if their expectations hold, and a
    /// target takes its shard at once (a hand-over that finished).
    struct Sim {
        keys: Keys,
        map: ClusterMap,
        revision: Revision,
    }

    impl Sim {
        fn new(shards: u32) -> Self {
            Self {
                keys: Keys::default(),
                map: ClusterMap::empty(shards),
                revision: 0,
            }
        }

        fn put(&mut self, key: String, value: Vec<u8>) {
            self.revision += 1;
            let kv = KeyValue {
                key,
                value,
                create_revision: self.revision,
                mod_revision: self.revision,
                lease: None,
            };
            self.map.apply(&self.keys, &WatchEvent::Put(kv)).unwrap();
        }

        fn delete(&mut self, key: String) {
            self.revision += 1;
            let event = WatchEvent::Delete {
                key,
                mod_revision: self.revision,
            };
            self.map.apply(&self.keys, &event).unwrap();
        }

        /// Every registered node reports reaching every other.
        fn report(&mut self) {
            let nodes = self.map.nodes.clone();
            for n in &nodes {
                let report = crate::ReachReport {
                    up: nodes.iter().filter(|m| *m != n).cloned().collect(),
                    ..Default::default()
                };
                if self.map.reach.get(n) != Some(&report) {
                    self.put(self.keys.reach_of(n), report.encode());
                }
            }
        }

        fn join(&mut self, n: u16) {
            if !self.map.nodes.contains(&node(n)) {
                self.put(self.keys.node(&node(n)), Vec::new());
                self.report();
            }
        }

        fn leave(&mut self, n: u16) {
            if self.map.nodes.contains(&node(n)) {
                self.delete(self.keys.node(&node(n)));
                self.delete(self.keys.reach_of(&node(n)));
                // A drain mark lives on the node's lease.
                self.delete(self.keys.drain(&node(n)));
                self.report();
            }
        }

        /// An operator's action, as the inspector writes it.
        fn operate(&mut self, op: Operator) {
            match op {
                Operator::Drain(n) if self.map.nodes.contains(&node(n)) => {
                    self.put(self.keys.drain(&node(n)), Vec::new());
                }
                Operator::Drain(_) => {}
                Operator::Undrain(n) => self.delete(self.keys.drain(&node(n))),
                Operator::Pin(shard, n) => {
                    let shard = ShardId(shard % self.map.shards.len() as u32);
                    self.put(self.keys.pin(shard), node(n).as_str().as_bytes().to_vec());
                }
                Operator::Unpin(shard) => {
                    let shard = ShardId(shard % self.map.shards.len() as u32);
                    self.delete(self.keys.pin(shard));
                }
            }
        }

        /// Applies the writes whose expectations hold; the revision of the last one.
        fn write(&mut self, writes: &[RecordWrite]) -> Revision {
            for w in writes {
                let now = &self.map.shards[w.record.shard.0 as usize].record;
                let holds = match (w.expect, now) {
                    (Expect::Absent, None) => true,
                    (Expect::ModRevision(r), Some((_, at))) => r == *at,
                    _ => false,
                };
                if holds {
                    self.put(self.keys.shard(w.record.shard), w.record.encode());
                }
            }
            self.revision
        }

        /// Every shard whose target is registered is taken by it.
        fn take(&mut self) {
            for record in self.map.records() {
                if let Some(target) = &record.target
                    && self.map.nodes.contains(target)
                    && record.current.as_ref() != Some(target)
                {
                    let taken = ShardRecord {
                        current: Some(target.clone()),
                        epoch: record.epoch + 1,
                        ..record
                    };
                    self.put(self.keys.shard(taken.shard), taken.encode());
                }
            }
        }

        fn loads(&self) -> BTreeMap<NodeAddr, usize> {
            let mut loads: BTreeMap<NodeAddr, usize> =
                self.map.nodes.iter().map(|n| (n.clone(), 0)).collect();
            for record in self.map.records() {
                if let Some(current) = record.current {
                    *loads.entry(current).or_default() += 1;
                }
            }
            loads
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Operator {
        Drain(u16),
        Undrain(u16),
        Pin(u32, u16),
        Unpin(u32),
    }

    fn operator() -> impl Strategy<Value = Operator> {
        prop_oneof![
            (0u16..4).prop_map(Operator::Drain),
            (0u16..4).prop_map(Operator::Undrain),
            (0u32..64, 0u16..4).prop_map(|(s, n)| Operator::Pin(s, n)),
            (0u32..64).prop_map(Operator::Unpin),
        ]
    }

    const WINDOW: Duration = Duration::from_millis(1000);

    fn leader(min_quorum: usize) -> Leader {
        Leader::new(LeaderConfig {
            stability_window: WINDOW,
            min_quorum,
            stuck_timeout: Duration::from_secs(600),
        })
    }

    proptest! {
        /// Whatever nodes join and leave when: the leader moves nothing while the nodes that
        /// may hold shards changed within the window or are fewer than the quorum, targets
        /// only such nodes, and once things hold still the shards are balanced to ±1 over
        /// them, each served by its target.
        #[test]
        fn the_leader_waits_for_stability_and_quorum_and_then_balances(
            shards in 4u32..48,
            min_quorum in 1usize..4,
            events in proptest::collection::vec((0u64..2500, any::<bool>(), 0u16..5), 1..12),
        ) {
            let mut sim = Sim::new(shards);
            let mut leader = leader(min_quorum);
            let mut now = Duration::ZERO;
            let mut serving: BTreeSet<NodeAddr> = BTreeSet::new();
            let mut changed_at = Duration::ZERO;
            let mut step = |sim: &mut Sim, now: Duration, serving: &mut BTreeSet<NodeAddr>,
                            changed_at: &mut Duration| -> Result<usize, TestCaseError> {
                let current = sim.map.serving(None).nodes;
                if current != *serving {
                    *serving = current;
                    *changed_at = now;
                }
                let writes = leader.step(now, true, &sim.map);
                if !writes.is_empty() {
                    prop_assert!(serving.len() >= min_quorum, "moved below quorum");
                    prop_assert!(now - *changed_at >= WINDOW, "moved {:?} after a change", now - *changed_at);
                    for w in &writes {
                        prop_assert!(w.record.target.as_ref().is_some_and(|t| serving.contains(t)));
                    }
                }
                let revision = sim.write(&writes);
                leader.written(revision);
                sim.take();
                Ok(writes.len())
            };
            for (gap, join, n) in events {
                let until = now + Duration::from_millis(gap);
                while now < until {
                    step(&mut sim, now, &mut serving, &mut changed_at)?;
                    now += Duration::from_millis(100);
                }
                if join { sim.join(n) } else { sim.leave(n) }
            }
            for _ in 0..60 {
                step(&mut sim, now, &mut serving, &mut changed_at)?;
                now += Duration::from_millis(100);
            }
            if serving.len() >= min_quorum {
                let loads = sim.loads();
                let (min, max) = (loads.values().min().unwrap(), loads.values().max().unwrap());
                prop_assert!(max - min <= 1, "unbalanced: {loads:?}");
                prop_assert_eq!(loads.values().sum::<usize>(), shards as usize);
                for record in sim.map.records() {
                    prop_assert_eq!(&record.current, &record.target);
                }
            }
        }

        /// A node joining a balanced cluster takes its share, and only its share moves.
        #[test]
        fn a_join_moves_only_the_newcomer_s_share(shards in 8u32..64, before in 1u16..5) {
            let mut sim = Sim::new(shards);
            let mut leader = leader(1);
            let mut now = Duration::ZERO;
            for n in 0..before {
                sim.join(n);
            }
            let mut settle = |sim: &mut Sim, now: &mut Duration| {
                let mut moved = 0;
                for _ in 0..40 {
                    let writes = leader.step(*now, true, &sim.map);
                    moved += writes.len();
                    let revision = sim.write(&writes);
                    leader.written(revision);
                    sim.take();
                    *now += Duration::from_millis(100);
                }
                moved
            };
            settle(&mut sim, &mut now);
            sim.join(before);
            let moved = settle(&mut sim, &mut now);
            let share = shards.div_ceil(u32::from(before) + 1) as usize;
            prop_assert!(moved <= share, "{moved} moves for a share of {share}");
            let loads = sim.loads();
            prop_assert!(loads[&node(before)] + 1 >= share, "{loads:?}");
        }
    }

    proptest! {
        /// Whatever operators drain, undrain, pin and unpin while nodes come and go: once
        /// things hold still, no shard is on a drained node while an undrained one is
        /// registered, every pin to a registered, undrained node holds, every shard is served
        /// by its target, and the shards nobody pinned are spread to ±1 over the undrained
        /// nodes that hold no more than their share in pins.
        #[test]
        fn drains_and_pins_are_honoured_and_the_rest_is_balanced(
            shards in 8u32..48,
            steps in proptest::collection::vec(
                (0u64..1500, prop_oneof![
                    (any::<bool>(), 0u16..4).prop_map(|(join, n)| Err((join, n))),
                    operator().prop_map(Ok),
                ]),
                1..16,
            ),
        ) {
            let mut sim = Sim::new(shards);
            let mut leader = leader(1);
            let mut now = Duration::ZERO;
            sim.join(0);
            let mut step = |sim: &mut Sim, now: Duration| {
                let writes = leader.step(now, true, &sim.map);
                let revision = sim.write(&writes);
                leader.written(revision);
                sim.take();
            };
            for (gap, change) in steps {
                let until = now + Duration::from_millis(gap);
                while now < until {
                    step(&mut sim, now);
                    now += Duration::from_millis(100);
                }
                match change {
                    Err((true, n)) => sim.join(n),
                    Err((false, n)) => sim.leave(n),
                    Ok(op) => sim.operate(op),
                }
            }
            for _ in 0..60 {
                step(&mut sim, now);
                now += Duration::from_millis(100);
            }
            let nodes = sim.map.nodes.clone();
            if nodes.is_empty() {
                return Ok(());
            }
            let undrained: BTreeSet<NodeAddr> = nodes.difference(&sim.map.drained).cloned().collect();
            let pins = sim.map.honoured_pins();
            for record in sim.map.records() {
                prop_assert_eq!(&record.current, &record.target, "shard {} not settled", record.shard);
                let at = record.current.clone().expect("every shard is served");
                if !undrained.is_empty() {
                    prop_assert!(undrained.contains(&at), "shard {} on drained {}", record.shard, at);
                }
                if let Some(pin) = pins.get(&record.shard) {
                    prop_assert_eq!(&at, pin, "pin of shard {} not honoured", record.shard);
                }
            }
            if !undrained.is_empty() {
                let loads: BTreeMap<NodeAddr, usize> = sim
                    .loads()
                    .into_iter()
                    .filter(|(n, _)| undrained.contains(n))
                    .collect();
                let min = *loads.values().min().unwrap();
                for (n, load) in &loads {
                    let pins_here = pins.values().filter(|p| *p == n).count();
                    prop_assert!(
                        *load <= min + 1 || pins_here == *load,
                        "{} holds {} shards, {} of them pinned; loads {:?}", n, load, pins_here, loads
                    );
                }
            }
        }
    }

    #[test]
    fn a_new_term_waits_a_whole_window_and_a_former_leader_does_nothing() {
        let mut sim = Sim::new(8);
        sim.join(0);
        sim.join(1);
        let mut leader = leader(1);
        let second = Duration::from_secs(1);
        // Not leading: nothing, whatever the map.
        assert!(leader.step(second * 10, false, &sim.map).is_empty());
        assert_eq!(leader.next_tick(second * 10), None);
        // A term starts at 10 s: the nodes have held still for long, yet the window starts now.
        assert!(leader.step(second * 10, true, &sim.map).is_empty());
        assert_eq!(
            leader.next_tick(second * 10),
            Some(second * 10 + WINDOW / 4)
        );
        assert!(
            leader
                .step(second * 10 + WINDOW / 2, true, &sim.map)
                .is_empty()
        );
        let writes = leader.step(second * 11, true, &sim.map);
        assert_eq!(writes.len(), 8, "every unassigned shard gets a target");
        // The term lapses (another node leads): nothing more from this one.
        assert!(leader.step(second * 12, false, &sim.map).is_empty());
    }
}
