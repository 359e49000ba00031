use goverse_core::{NodeAddr, ShardId};

/// Key layout in the cluster store.
pub mod keys {
    use goverse_core::{NodeAddr, ShardId};

    /// Prefix of live node registrations (each on its node's lease).
    pub const NODES: &str = "/goverse/nodes/";
    /// Prefix of shard records.
    pub const SHARDS: &str = "/goverse/shards/";

    /// A node's registration key.
    pub fn node(addr: &NodeAddr) -> String {
        format!("{NODES}{addr}")
    }

    /// A shard's record key (zero-padded so prefix listings come back in shard order).
    pub fn shard(shard: ShardId) -> String {
        format!("{SHARDS}{:05}", shard.0)
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
    pub fn decode(shard: ShardId, bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| format!("shard {shard}: record is not utf-8"))?;
        let mut parts = text.rsplitn(2, ',');
        let epoch = parts
            .next()
            .and_then(|e| e.parse::<u64>().ok())
            .ok_or_else(|| format!("shard {shard}: bad epoch in record {text:?}"))?;
        let rest = parts
            .next()
            .ok_or_else(|| format!("shard {shard}: malformed record {text:?}"))?;
        let (target, current) = rest
            .split_once(',')
            .ok_or_else(|| format!("shard {shard}: malformed record {text:?}"))?;
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
        assert_eq!(keys::shard(ShardId(7)), "/goverse/shards/00007");
    }
}
