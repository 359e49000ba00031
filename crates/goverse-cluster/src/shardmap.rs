use goverse_core::{NodeAddr, ShardId};

/// The prefix every GoVerse key lives under unless configured otherwise (as upstream).
pub const DEFAULT_PREFIX: &str = "/goverse";

/// Where a cluster keeps its keys: everything under one prefix (`/goverse` by default), so
/// several clusters can share one etcd.
///
/// ```text
/// {prefix}/nodes/{host:port}     a live node, on its lease
/// {prefix}/gates/{host:port}     a live gate, on its lease
/// {prefix}/leader                the leader node's address, on its lease
/// {prefix}/shards/{00000..}      a shard record (target, current, epoch)
/// {prefix}/shard_count           the cluster's shard count, written once when it forms
/// {prefix}/reach/{host:port}     which peers a live node reaches, on its lease
/// {prefix}/pins/{00000..}        the node an operator pinned a shard to
/// {prefix}/drain/{host:port}     a node an operator drained, on that node's lease
/// ```
///
/// A node's and a gate's registration value is its [`ProcessInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Keys {
    /// A layout under `prefix`: it must start with `/`, must not end with one, and may hold
    /// no whitespace.
    pub fn new(prefix: &str) -> Result<Self, crate::BadPrefix> {
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.chars().any(char::is_whitespace)
        {
            return Err(crate::BadPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Prefix of live node registrations (each on its node's lease).
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// A node's registration key.
    pub fn node(&self, addr: &NodeAddr) -> String {
        format!("{}/nodes/{addr}", self.prefix)
    }

    /// Prefix of live gate registrations (each on its gate's lease).
    pub fn gates(&self) -> String {
        format!("{}/gates/", self.prefix)
    }

    /// A gate's registration key.
    pub fn gate(&self, addr: &str) -> String {
        format!("{}/gates/{addr}", self.prefix)
    }

    /// The leader key: the leading node's address, attached to that node's lease, so a leader
    /// that dies is gone when its lease ends.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// The cluster's shard count, recorded once by the first process of the cluster and
    /// checked by every later one before it writes anything.
    pub fn shard_count(&self) -> String {
        format!("{}/shard_count", self.prefix)
    }

    /// Prefix of the nodes' reach reports (each on its node's lease).
    pub fn reach(&self) -> String {
        format!("{}/reach/", self.prefix)
    }

    /// A node's reach report key: which of its peers it reaches ([`crate::ReachReport`]).
    pub fn reach_of(&self, addr: &NodeAddr) -> String {
        format!("{}/reach/{addr}", self.prefix)
    }

    /// Prefix of shard pins: `pins/{shard}` holds the address of the node the shard is
    /// pinned to (kept until unpinned; honoured while that node is live and not drained).
    pub fn pins(&self) -> String {
        format!("{}/pins/", self.prefix)
    }

    /// A shard's pin key.
    pub fn pin(&self, shard: ShardId) -> String {
        format!("{}/pins/{:05}", self.prefix, shard.0)
    }

    /// The shard a pin key names, if it is one.
    pub fn pin_of_key(&self, key: &str) -> Option<ShardId> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/pins/")?;
        rest.parse::<u32>().ok().map(ShardId)
    }

    /// Prefix of drain marks: a node with one gets no shards (on the node's own lease, so the
    /// mark ends with the process it was put on).
    pub fn drains(&self) -> String {
        format!("{}/drain/", self.prefix)
    }

    /// A node's drain key.
    pub fn drain(&self, addr: &NodeAddr) -> String {
        format!("{}/drain/{addr}", self.prefix)
    }

    /// Prefix of shard records.
    pub fn shards(&self) -> String {
        format!("{}/shards/", self.prefix)
    }

    /// A shard's record key (zero-padded so prefix listings come back in shard order).
    pub fn shard(&self, shard: ShardId) -> String {
        format!("{}/shards/{:05}", self.prefix, shard.0)
    }

    /// The shard a record key names, if it is one.
    pub fn shard_of_key(&self, key: &str) -> Option<ShardId> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/shards/")?;
        rest.parse::<u32>().ok().map(ShardId)
    }
}

/// What a node or gate says about itself in its registration: where its operations HTTP port
/// (`/metrics`, `/ready`) answers, if it has one. Encoded as `ops=host:port` lines; unknown
/// lines are skipped, so later fields can be added without breaking older readers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The `host:port` of the process's operations HTTP port.
    pub ops: Option<String>,
}

impl ProcessInfo {
    /// The registration value.
    pub fn encode(&self) -> Vec<u8> {
        match &self.ops {
            Some(ops) => format!("ops={ops}").into_bytes(),
            None => Vec::new(),
        }
    }

    /// Reads a registration value; anything it does not know is skipped (an older process
    /// registered with its address, which says nothing here).
    pub fn decode(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let ops = text
            .lines()
            .find_map(|line| line.strip_prefix("ops="))
            .map(str::trim)
            .filter(|ops| !ops.is_empty() && !ops.contains(char::is_whitespace))
            .map(str::to_owned);
        Self { ops }
    }
}

/// Who serves a shard, as recorded in the cluster store.
///
/// `target` is where placement wants the shard; `current` is the node serving it now; `epoch`
/// rises every time `current` changes and fences every persisted write made for the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRecord {
    /// The shard.
    pub shard: ShardId,
    /// Where placement wants it.
    pub target: Option<NodeAddr>,
    /// Who serves it now.
    pub current: Option<NodeAddr>,
    /// Ownership epoch.
    pub epoch: u64,
}

impl ShardRecord {
    /// Encodes as `target,current,epoch` (empty for none): small, and readable with etcdctl.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{},{},{}",
            self.target.as_ref().map_or("", NodeAddr::as_str),
            self.current.as_ref().map_or("", NodeAddr::as_str),
            self.epoch
        )
        .into_bytes()
    }

    /// Decodes [`ShardRecord::encode`]'s format, naming what is wrong on failure.
    pub fn decode(shard: ShardId, bytes: &[u8]) -> Result<Self, crate::BadRecord> {
        let bad = |reason: String| crate::BadRecord::new(format!("shard {shard}"), reason);
        let text = std::str::from_utf8(bytes).map_err(|_| bad("record is not utf-8".to_owned()))?;
        let mut parts = text.rsplitn(2, ',');
        let epoch = parts
            .next()
            .and_then(|e| e.parse::<u64>().ok())
            .ok_or_else(|| bad(format!("bad epoch in record {text:?}")))?;
        let rest = parts
            .next()
            .ok_or_else(|| bad(format!("malformed record {text:?}")))?;
        let (target, current) = rest
            .split_once(',')
            .ok_or_else(|| bad(format!("malformed record {text:?}")))?;
        let node = |s: &str| (!s.is_empty()).then(|| NodeAddr::new(s));
        Ok(Self {
            shard,
            target: node(target),
            current: node(current),
            epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let rec = ShardRecord {
            shard: ShardId(12),
            target: Some(NodeAddr::new("127.0.0.1:47000")),
            current: None,
            epoch: 9,
        };
        assert_eq!(rec.encode(), b"127.0.0.1:47000,,9");
        assert_eq!(
            ShardRecord::decode(ShardId(12), &rec.encode()).unwrap(),
            rec
        );
        assert!(ShardRecord::decode(ShardId(1), b"nonsense").is_err());
        let keys = Keys::default();
        assert_eq!(keys.shard(ShardId(7)), "/goverse/shards/00007");
        assert_eq!(keys.shard_of_key("/goverse/shards/00007"), Some(ShardId(7)));
        assert_eq!(keys.shard_of_key("/other/shards/00007"), None);
        assert_eq!(keys.pin(ShardId(7)), "/goverse/pins/00007");
        assert_eq!(keys.pin_of_key("/goverse/pins/00007"), Some(ShardId(7)));
        assert_eq!(keys.pin_of_key("/goverse/shards/00007"), None);
        assert_eq!(
            keys.drain(&NodeAddr::new("10.0.0.1:47000")),
            "/goverse/drain/10.0.0.1:47000"
        );
        let info = ProcessInfo {
            ops: Some("10.0.0.1:9101".to_owned()),
        };
        assert_eq!(ProcessInfo::decode(&info.encode()), info);
        assert_eq!(
            ProcessInfo::decode(b"10.0.0.1:47000"),
            ProcessInfo::default()
        );
        assert_eq!(
            ProcessInfo::decode(b"later=1\nops=h:1"),
            ProcessInfo {
                ops: Some("h:1".into())
            }
        );
        let keys = Keys::new("/apps/game1").unwrap();
        assert_eq!(keys.nodes(), "/apps/game1/nodes/");
        for bad in ["", "/", "goverse", "/goverse/", "/a b"] {
            assert!(Keys::new(bad).is_err(), "{bad:?}");
        }
    }
}
