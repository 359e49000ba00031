//! Auto-load objects: objects the node keeps alive without anybody calling them.
//!
//! Each [`AutoLoad`] entry names a type and an ID, and a scope: one object for the cluster
//! (`id`), one per shard (`shard#N/id`, for every shard) or one per node (`host:port/id`). The
//! node that serves an entry's shard creates it once the cluster has first been stable for its
//! window, and again whenever it is missing: after a planned move brings the shard here (the old
//! owner saved and closed its copy), after a failover, or after somebody deleted it. Auto-load
//! objects are never deactivated for being idle.

use std::time::Duration;

use futures::StreamExt;
use goverse_core::{InvalidSetting, NodeAddr, ObjectId, ObjectIdKind, ShardId};

type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Where an auto-load entry's objects live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AutoLoadScope {
    /// One object, `id`, on whichever node serves its shard.
    Singleton,
    /// One object per shard, `shard#N/id`, on the shard's owner (upstream's `per_shard: true`).
    PerShard,
    /// One object per node, `host:port/id`, on that node (upstream's `per_node: true`).
    PerNode,
}

/// One `auto_load_objects` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoLoad {
    /// The registered type to create.
    pub type_name: String,
    /// The plain ID (no `/`, no `shard#` prefix); the scope adds the prefix.
    pub id: String,
    /// One, per shard or per node.
    pub scope: AutoLoadScope,
}

impl AutoLoad {
    /// Checks the entry's ID, naming what is wrong.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let bad = |why: String| {
            InvalidSetting::new(
                "auto_load",
                format!("entry {}/{:?}: {why}", self.type_name, self.id),
            )
        };
        if self.type_name.is_empty() {
            return Err(bad("the type is empty".to_owned()));
        }
        match goverse_core::kind_of(&self.id) {
            Ok(ObjectIdKind::Regular) => Ok(()),
            Ok(_) => Err(bad(
                "the id must be plain (no '/'); the scope adds the shard or node prefix".to_owned(),
            )),
            Err(err) => Err(bad(err.to_string())),
        }
    }
}

/// One object an entry stands for, with the shard that routes it.
#[derive(Debug)]
struct Wanted {
    type_name: &'static str,
    id: ObjectId,
    shard: ShardId,
}

/// Every object the node's entries stand for, worked out once at start.
#[derive(Debug, Default)]
pub(crate) struct AutoLoaded {
    wanted: Vec<Wanted>,
    /// Every wanted ID, for the idle sweeper and deletes.
    ids: FastSet<ObjectId>,
}

/// Objects created at once by one pass.
const CONCURRENT_CREATES: usize = 32;
/// How often the node looks for missing auto-load objects besides map changes and deletes.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

impl AutoLoaded {
    /// The objects `entries` stand for on the node at `address`, with type names resolved to
    /// the registered ones by `registered`.
    pub(crate) fn new(
        entries: &[AutoLoad],
        address: &NodeAddr,
        shard_count: u32,
        registered: impl Fn(&str) -> Option<&'static str>,
    ) -> Result<Self, InvalidSetting> {
        let mut loaded = Self::default();
        for entry in entries {
            entry.validate()?;
            let type_name = registered(&entry.type_name).ok_or_else(|| {
                InvalidSetting::new(
                    "auto_load",
                    format!(
                        "entry {}/{}: type {:?} is not registered on this node",
                        entry.type_name, entry.id, entry.type_name
                    ),
                )
            })?;
            let mut add = |id: String| -> Result<(), InvalidSetting> {
                let id = ObjectId::new(id);
                let bad = |why: &dyn std::fmt::Display| {
                    InvalidSetting::new("auto_load", format!("entry {type_name}/{id}: {why}"))
                };
                let shard = goverse_core::shard_of(&id, shard_count).map_err(|err| bad(&err))?;
                if !loaded.ids.insert(id.clone()) {
                    return Err(bad(&"listed twice"));
                }
                loaded.wanted.push(Wanted {
                    type_name,
                    id,
                    shard,
                });
                Ok(())
            };
            match entry.scope {
                AutoLoadScope::Singleton => add(entry.id.clone())?,
                AutoLoadScope::PerShard => {
                    for n in 0..shard_count {
                        add(format!("shard#{n}/{}", entry.id))?;
                    }
                }
                AutoLoadScope::PerNode => add(format!("{address}/{}", entry.id))?,
            }
        }
        Ok(loaded)
    }

    /// Whether the node has anything to keep alive.
    pub(crate) fn is_empty(&self) -> bool {
        self.wanted.is_empty()
    }

    /// Whether `id` is one of them.
    pub(crate) fn contains(&self, id: &ObjectId) -> bool {
        !self.ids.is_empty() && self.ids.contains(id)
    }

    /// Creates every wanted object that `serves` says is this node's and `active` says is
    /// missing, with `create`. Returns (created, failed, the first failure).
    pub(crate) async fn load_missing<F, Fut>(
        &self,
        serves: impl Fn(ShardId, &ObjectId) -> bool,
        active: impl Fn(ShardId, &ObjectId) -> bool,
        create: F,
    ) -> (usize, usize, Option<String>)
    where
        F: Fn(&'static str, ObjectId) -> Fut,
        Fut: Future<Output = Result<(), goverse_core::CallError>>,
    {
        let mut created = 0;
        let mut failed = 0;
        let mut first = None;
        // Collected before the stream, so the stream holds no closure (whose signature would
        // have to be higher-ranked for the future to be `Send`).
        let creates: Vec<_> = self
            .wanted
            .iter()
            .filter(|w| serves(w.shard, &w.id) && !active(w.shard, &w.id))
            .map(|w| {
                let (type_name, id) = (w.type_name, w.id.clone());
                let done = create(type_name, id.clone());
                async move { (type_name, id, done.await) }
            })
            .collect();
        let mut results = futures::stream::iter(creates).buffer_unordered(CONCURRENT_CREATES);
        while let Some((type_name, id, done)) = results.next().await {
            match done {
                Ok(()) => created += 1,
                // The shard moved on while the pass ran: its new owner creates it.
                Err(err) if err.is_not_served() => {}
                Err(err) => {
                    failed += 1;
                    first.get_or_insert_with(|| format!("{type_name}/{id}: {err}"));
                }
            }
        }
        (created, failed, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(type_name: &str, id: &str, scope: AutoLoadScope) -> AutoLoad {
        AutoLoad {
            type_name: type_name.into(),
            id: id.into(),
            scope,
        }
    }

    fn known(name: &str) -> Option<&'static str> {
        ["Monitor", "Counter"].into_iter().find(|n| *n == name)
    }

    #[test]
    fn entries_expand_to_their_scopes_and_bad_ones_are_named() {
        let address = NodeAddr::new("127.0.0.1:7001");
        let loaded = AutoLoaded::new(
            &[
                entry("Monitor", "Global", AutoLoadScope::Singleton),
                entry("Monitor", "ShardMonitor", AutoLoadScope::PerShard),
                entry("Counter", "NodeMonitor", AutoLoadScope::PerNode),
            ],
            &address,
            4,
            known,
        )
        .unwrap();
        let ids: Vec<&str> = loaded.wanted.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "Global",
                "shard#0/ShardMonitor",
                "shard#1/ShardMonitor",
                "shard#2/ShardMonitor",
                "shard#3/ShardMonitor",
                "127.0.0.1:7001/NodeMonitor"
            ]
        );
        assert_eq!(loaded.wanted[3].shard, ShardId(2));
        assert!(loaded.contains(&ObjectId::from("shard#1/ShardMonitor")));
        assert!(!loaded.contains(&ObjectId::from("shard#1/Other")));

        let err = AutoLoaded::new(
            &[entry("Nope", "x", AutoLoadScope::Singleton)],
            &address,
            4,
            known,
        )
        .unwrap_err();
        assert!(err.reason.contains("\"Nope\" is not registered"), "{err}");
        let err = AutoLoaded::new(
            &[entry("Monitor", "shard#1/x", AutoLoadScope::PerShard)],
            &address,
            4,
            known,
        )
        .unwrap_err();
        assert!(err.reason.contains("must be plain"), "{err}");
        let err = AutoLoaded::new(
            &[
                entry("Monitor", "x", AutoLoadScope::Singleton),
                entry("Counter", "x", AutoLoadScope::Singleton),
            ],
            &address,
            4,
            known,
        )
        .unwrap_err();
        assert!(err.reason.contains("listed twice"), "{err}");
    }
}
