//! Which shards a node takes and gives up: pure decisions over what it read from the store.
//!
//! [`claims`] and [`releases`] turn a snapshot of the shard records (with their revisions) and
//! the live nodes into compare-and-set writes. The expectations make the writes safe when the
//! snapshot is stale or two nodes decide at once: each write applies only if the record is still
//! the one decided on, so at most one node wins a shard, and a loser re-reads and decides again.

use std::collections::BTreeSet;

use goverse_core::{NodeAddr, ShardId};

use crate::{Expect, Keys, Revision, ShardRecord, TxnOp, TxnWrite};

/// A shard's record as read, with the revision it was read at; `None` when it has none yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// The shard.
    pub shard: ShardId,
    /// Its record and that record's mod revision.
    pub record: Option<(ShardRecord, Revision)>,
}

/// One compare-and-set write of a shard record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWrite {
    /// What the record must still be for the write to apply.
    pub expect: Expect,
    /// The new record.
    pub record: ShardRecord,
}

impl RecordWrite {
    /// The write as a transaction entry under `keys`.
    pub fn to_txn(&self, keys: &Keys) -> TxnWrite {
        TxnWrite {
            key: keys.shard(self.record.shard),
            expect: Some(self.expect),
            op: TxnOp::Put {
                value: self.record.encode(),
                lease: None,
            },
        }
    }
}

/// The shards `me` may serve now, as claims that raise each shard's epoch.
///
/// A shard is claimed when nobody live serves it (no current owner, `me`, or an owner that is
/// no longer `live`, i.e. registered) and placement wants it here: its target is `me`; or it
/// has no target among the `serving` nodes (those its peers reach, [`crate::serving_nodes`])
/// and `me` serves and either served it last or is its [`preferred`] node among the serving
/// ones (so the shards of a node that died are spread over the others at once, each claimed by
/// one node, before the leader balances them exactly). A shard a live node serves is never
/// claimed, whatever its target: a hand-over starts with that node releasing it.
pub fn claims(
    me: &NodeAddr,
    live: &BTreeSet<NodeAddr>,
    serving: &BTreeSet<NodeAddr>,
    records: &[ReadRecord],
) -> Vec<RecordWrite> {
    let gone = |node: &Option<NodeAddr>| node.as_ref().is_none_or(|n| !live.contains(n));
    let serves = serving.contains(me);
    let takes_orphan = |shard: ShardId| serves && preferred(shard, serving, me) == me;
    let mut writes = Vec::new();
    for read in records {
        let (expect, epoch, free) = match &read.record {
            None => (Expect::Absent, 1, true),
            Some((record, revision)) => {
                let served_elsewhere =
                    record.current.as_ref() != Some(me) && !gone(&record.current);
                let wanted_here = match &record.target {
                    Some(target) if serving.contains(target) => target == me,
                    _ => {
                        (serves && record.current.as_ref() == Some(me)) || takes_orphan(read.shard)
                    }
                };
                (
                    Expect::ModRevision(*revision),
                    record.epoch + 1,
                    !served_elsewhere && wanted_here,
                )
            }
        };
        let free = free && (read.record.is_some() || takes_orphan(read.shard));
        if free {
            writes.push(RecordWrite {
                expect,
                record: ShardRecord {
                    shard: read.shard,
                    target: Some(me.clone()),
                    current: Some(me.clone()),
                    epoch,
                },
            });
        }
    }
    writes
}

/// The node that takes `shard` when it has no live target: the highest of a hash of the shard
/// and each node (rendezvous hashing) over the `live` nodes and `me`. Every node computes the
/// same answer from the same registrations, and when a node leaves only its own shards get a
/// new preferred node.
pub fn preferred<'a>(
    shard: ShardId,
    live: &'a BTreeSet<NodeAddr>,
    me: &'a NodeAddr,
) -> &'a NodeAddr {
    let score = |node: &NodeAddr| -> u64 {
        // FNV-1a over the address and the shard, then a 64-bit finaliser (splitmix64) so close
        // addresses still spread evenly.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in node.as_str().bytes().chain(shard.0.to_le_bytes()) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    };
    live.iter()
        .chain(std::iter::once(me))
        .max_by(|a, b| score(a).cmp(&score(b)).then_with(|| a.cmp(b)))
        .expect("me is always a candidate")
}

/// Writes that give up every shard `me` serves: the current owner is cleared, the target and
/// the epoch stay (the next claim raises the epoch).
pub fn releases(me: &NodeAddr, records: &[ReadRecord]) -> Vec<RecordWrite> {
    records
        .iter()
        .filter_map(|read| {
            let (record, revision) = read.record.as_ref()?;
            (record.current.as_ref() == Some(me)).then(|| RecordWrite {
                expect: Expect::ModRevision(*revision),
                record: ShardRecord {
                    current: None,
                    ..record.clone()
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn node(n: u8) -> NodeAddr {
        NodeAddr::new(format!("127.0.0.1:{}", 47000 + u16::from(n)))
    }

    fn read(
        shard: u32,
        target: Option<u8>,
        current: Option<u8>,
        epoch: u64,
        rev: i64,
    ) -> ReadRecord {
        ReadRecord {
            shard: ShardId(shard),
            record: Some((
                ShardRecord {
                    shard: ShardId(shard),
                    target: target.map(node),
                    current: current.map(node),
                    epoch,
                },
                rev,
            )),
        }
    }

    #[test]
    fn free_shards_are_claimed_and_served_ones_are_left_alone() {
        let me = node(0);
        let live: BTreeSet<_> = [node(0), node(1)].into();
        let records = [
            ReadRecord {
                shard: ShardId(0),
                record: None,
            },
            read(1, Some(0), None, 4, 10),    // mine, unserved
            read(2, Some(1), Some(1), 2, 11), // node 1 serves it
            read(3, Some(1), None, 2, 12),    // wanted by live node 1
            read(4, Some(5), Some(5), 7, 13), // its node is gone
            read(5, Some(1), Some(0), 3, 14), // I serve it, placement moves it: hand over, no claim
            read(6, None, Some(0), 9, 15),    // I served it before a restart
        ];
        let claimed: BTreeMap<u32, (Expect, u64)> = claims(&me, &live, &live, &records)
            .into_iter()
            .map(|w| (w.record.shard.0, (w.expect, w.record.epoch)))
            .collect();
        let mut expected = BTreeMap::from([
            (1, (Expect::ModRevision(10), 5)),
            (6, (Expect::ModRevision(15), 10)),
        ]);
        // Shards with no live target go to their preferred node: 0 (never recorded) and 4.
        if preferred(ShardId(0), &live, &me) == &me {
            expected.insert(0, (Expect::Absent, 1));
        }
        if preferred(ShardId(4), &live, &me) == &me {
            expected.insert(4, (Expect::ModRevision(13), 8));
        }
        assert_eq!(claimed, expected);
        let other = claims(&node(1), &live, &live, &records);
        for shard in [0, 4] {
            let mine = claimed.contains_key(&shard);
            let theirs = other.iter().any(|w| w.record.shard.0 == shard);
            assert!(mine != theirs, "shard {shard}: exactly one node claims it");
        }
        let released: Vec<u32> = releases(&me, &records)
            .iter()
            .map(|w| w.record.shard.0)
            .collect();
        assert_eq!(released, [5, 6]);
    }

    fn record_strategy() -> impl Strategy<Value = Option<(Option<u8>, Option<u8>, u64)>> {
        proptest::option::of((
            proptest::option::of(0u8..5),
            proptest::option::of(0u8..5),
            0u64..100,
        ))
    }

    proptest! {
        /// Whatever the records and live nodes: no claim of a shard a live node serves, every
        /// claim raises the epoch and expects exactly the record it read, and of two nodes
        /// deciding on one snapshot at most one wins each shard (both expect the same revision,
        /// so only the first compare-and-set applies).
        #[test]
        fn claims_never_take_a_served_shard_and_race_safely(
            records in proptest::collection::vec(record_strategy(), 1..40),
            live_mask in 0u8..32,
            aside_mask in 0u8..32,
        ) {
            let live: BTreeSet<NodeAddr> = (0..5).filter(|n| live_mask & (1 << n) != 0).map(node).collect();
            // Some registered nodes may be set aside as unreachable: they serve nothing new.
            let mut serving: BTreeSet<NodeAddr> = (0..5)
                .filter(|n| live_mask & (1 << n) != 0 && aside_mask & (1 << n) == 0)
                .map(node)
                .collect();
            if serving.is_empty() {
                serving = live.clone();
            }
            let reads: Vec<ReadRecord> = records
                .iter()
                .enumerate()
                .map(|(i, r)| match r {
                    None => ReadRecord { shard: ShardId(i as u32), record: None },
                    Some((t, c, e)) => read(i as u32, *t, *c, *e, 100 + i as i64),
                })
                .collect();
            let mut winners: BTreeMap<ShardId, NodeAddr> = BTreeMap::new();
            for me in live.iter() {
                for write in claims(me, &live, &serving, &reads) {
                    let read = &reads[write.record.shard.0 as usize];
                    if !serving.contains(me) {
                        prop_assert_eq!(read.record.as_ref().and_then(|(r, _)| r.target.as_ref()),
                            Some(me), "a node set aside claimed a shard not targeted at it");
                    }
                    match &read.record {
                        None => prop_assert_eq!(write.expect, Expect::Absent),
                        Some((record, revision)) => {
                            prop_assert_eq!(write.expect, Expect::ModRevision(*revision));
                            prop_assert!(write.record.epoch > record.epoch);
                            if let Some(current) = &record.current {
                                prop_assert!(current == me || !live.contains(current),
                                    "claimed a shard live {} serves", current);
                            }
                        }
                    }
                    prop_assert_eq!(write.record.current.as_ref(), Some(me));
                    // The store applies the first write expecting this revision; a second one
                    // expecting the same revision finds the first's and fails.
                    winners.entry(write.record.shard).or_insert_with(|| me.clone());
                }
            }
            // A free shard with no live target is claimed by someone when any node is live.
            for read in &reads {
                let free = match &read.record {
                    None => true,
                    Some((r, _)) => r.current.as_ref().is_none_or(|c| !live.contains(c))
                        && r.target.as_ref().is_none_or(|t| !serving.contains(t)),
                };
                if free && !live.is_empty() {
                    prop_assert!(winners.contains_key(&read.shard), "shard {} left unclaimed", read.shard);
                    let claimants = live.iter()
                        .filter(|me| claims(me, &live, &serving, std::slice::from_ref(read)).len() == 1)
                        .count();
                    // Only a node that served it last may claim it besides the preferred one.
                    let last = read.record.as_ref().and_then(|(r, _)| r.current.as_ref());
                    prop_assert!(claimants == 1 || last.is_some_and(|c| serving.contains(c)),
                        "shard {}: {} claimants", read.shard, claimants);
                }
            }
        }
    }

    /// Rendezvous spreads shards evenly enough for a failover to land everywhere, and a node
    /// leaving changes the preferred node of its own shards only.
    #[test]
    fn preferred_nodes_spread_and_move_only_what_must() {
        let live: BTreeSet<_> = (0..5).map(node).collect();
        let me = node(0);
        let mut counts: BTreeMap<NodeAddr, usize> = BTreeMap::new();
        for shard in 0..8192 {
            *counts
                .entry(preferred(ShardId(shard), &live, &me).clone())
                .or_default() += 1;
        }
        for (node, n) in &counts {
            assert!((1400..=1880).contains(n), "{node}: {n} of 8192");
        }
        let fewer: BTreeSet<_> = (0..4).map(node).collect();
        for shard in 0..8192 {
            let before = preferred(ShardId(shard), &live, &me);
            if before != &node(4) {
                assert_eq!(preferred(ShardId(shard), &fewer, &me), before);
            }
        }
    }
}
