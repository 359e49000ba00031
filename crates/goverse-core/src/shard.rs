use crate::id::{IdError, ObjectId, ObjectIdKind, kind_of};

/// Upstream's default shard count.
pub const DEFAULT_SHARD_COUNT: u32 = 8192;

/// The most shards a cluster may have. The shard map keeps one etcd key per shard and every
/// node and gate holds the whole map, so the count is bounded by what etcd and every process
/// hold comfortably (65,536 keys of about 100 bytes), not by the hash.
pub const MAX_SHARD_COUNT: u32 = 65_536;

/// Checks a shard count: at least 1 and at most [`MAX_SHARD_COUNT`].
pub fn check_shard_count(count: u32) -> Result<(), crate::ShardCountError> {
    if count == 0 {
        return Err(crate::ShardCountError::Zero);
    }
    if count > MAX_SHARD_COUNT {
        return Err(crate::ShardCountError::TooMany(count));
    }
    Ok(())
}

/// A shard number in `0..shard_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u32);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// FNV-1a, 32-bit.
#[inline]
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Where a call for an object goes: the one rule, from one parse of its ID, that the gate, the
/// router and the node all ask.
///
/// `shard#N/name` goes to shard N; `host:port/name` goes to the node at that address (and still
/// has a hash shard, which upstream also gives it); every other ID goes to the shard FNV-1a
/// 32-bit of the whole ID selects, modulo the shard count, as upstream places it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// To the node serving this shard.
    Shard(ShardId),
    /// To the node at `addr`, whatever serves `shard`.
    Node {
        /// The node the ID is pinned to.
        addr: &'a str,
        /// The ID's hash shard.
        shard: ShardId,
    },
}

impl<'a> Route<'a> {
    /// The route of `id` in a cluster of `shard_count` shards; a malformed ID, or a pinned
    /// shard out of range, is an error naming it.
    #[inline]
    pub fn of(id: &'a str, shard_count: u32) -> Result<Self, IdError> {
        debug_assert!(shard_count > 0);
        let hashed = || ShardId(fnv1a_32(id.as_bytes()) % shard_count);
        match kind_of(id)? {
            ObjectIdKind::Regular => Ok(Self::Shard(hashed())),
            ObjectIdKind::FixedNode(addr) => Ok(Self::Node {
                addr,
                shard: hashed(),
            }),
            ObjectIdKind::FixedShard(n) if n < u64::from(shard_count) => {
                Ok(Self::Shard(ShardId(n as u32)))
            }
            ObjectIdKind::FixedShard(n) => Err(IdError::ShardOutOfRange {
                id: id.to_owned(),
                shard: n,
                shard_count,
            }),
        }
    }

    /// The shard the ID belongs to (for a node-pinned ID, its hash shard).
    #[inline]
    pub fn shard(self) -> ShardId {
        match self {
            Self::Shard(shard) | Self::Node { shard, .. } => shard,
        }
    }

    /// The node the ID is pinned to, if it is pinned to one.
    #[inline]
    pub fn pinned_node(self) -> Option<&'a str> {
        match self {
            Self::Shard(_) => None,
            Self::Node { addr, .. } => Some(addr),
        }
    }
}

/// The shard an object lives on: [`Route::of`]`(id).shard()`.
pub fn shard_of(id: &ObjectId, shard_count: u32) -> Result<ShardId, IdError> {
    Route::of(id.as_str(), shard_count).map(Route::shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, count: u32) -> u32 {
        shard_of(&ObjectId::from(id), count).unwrap().0
    }

    #[test]
    fn matches_upstream_vectors() {
        assert_eq!(shard("my-counter", 8192), 5258);
        assert_eq!(shard("my-counter", 64), 10);
        assert_eq!(shard("ChatRoomMgr0", 8192), 1166);
        assert_eq!(shard("ChatRoomMgr0", 64), 14);
        assert_eq!(shard("abc", 8192), 2315);
        assert_eq!(shard("abc", 64), 11);
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 32-bit test vectors.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn fixed_shard_and_range() {
        assert_eq!(shard("shard#7/x", 64), 7);
        assert_eq!(shard("shard#63/x", 64), 63);
        let err = shard_of(&ObjectId::from("shard#64/x"), 64).unwrap_err();
        assert!(matches!(
            err,
            IdError::ShardOutOfRange {
                shard: 64,
                shard_count: 64,
                ..
            }
        ));
        assert!(err.to_string().contains("out of range"), "{err}");
        // Fixed-node IDs hash like plain ones.
        let pinned = "127.0.0.1:47000/x";
        assert_eq!(shard(pinned, 8192), fnv1a_32(pinned.as_bytes()) % 8192);
    }

    #[test]
    fn routes_name_a_shard_or_a_node() {
        assert_eq!(Route::of("abc", 64).unwrap(), Route::Shard(ShardId(11)));
        assert_eq!(
            Route::of("shard#7/x", 64).unwrap(),
            Route::Shard(ShardId(7))
        );
        let pinned = "127.0.0.1:47000/x";
        let route = Route::of(pinned, 64).unwrap();
        assert_eq!(route.pinned_node(), Some("127.0.0.1:47000"));
        assert_eq!(route.shard(), ShardId(fnv1a_32(pinned.as_bytes()) % 64));
        assert_eq!(Route::of("abc", 64).unwrap().pinned_node(), None);
        assert!(matches!(Route::of("", 64), Err(IdError::Empty)));
        assert!(matches!(
            Route::of("shard#64/x", 64),
            Err(IdError::ShardOutOfRange { shard: 64, .. })
        ));
    }
}
