use crate::id::{IdError, ObjectId, ObjectIdKind};

/// Upstream's default shard count.
pub const DEFAULT_SHARD_COUNT: u32 = 8192;

/// The most shards a cluster may have. The shard map keeps one etcd key per shard and every
/// node and gate holds the whole map, so the count is bounded by what etcd and every process
/// hold comfortably (65,536 keys of about 100 bytes), not by the hash.
pub const MAX_SHARD_COUNT: u32 = 65_536;

/// Checks a shard count: at least 1 and at most [`MAX_SHARD_COUNT`].
pub fn check_shard_count(count: u32) -> Result<(), String> {
    if count == 0 {
        return Err("must be at least 1".to_owned());
    }
    if count > MAX_SHARD_COUNT {
        return Err(format!(
            "{count} is more than the {MAX_SHARD_COUNT} a cluster can hold \
             (the shard map is one etcd key per shard, held whole by every process)"
        ));
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

/// The shard an object lives on.
///
/// `shard#N/name` pins the object to shard N; every other form hashes the full ID with FNV-1a
/// 32-bit modulo `shard_count`, as upstream does (so `host:port/name` also has a shard, even
/// though it is placed on its named node).
pub fn shard_of(id: &ObjectId, shard_count: u32) -> Result<ShardId, IdError> {
    debug_assert!(shard_count > 0);
    match id.kind()? {
        ObjectIdKind::FixedShard(n) => {
            if n >= u64::from(shard_count) {
                return Err(IdError::ShardOutOfRange {
                    id: id.as_str().to_owned(),
                    shard: n,
                    shard_count,
                });
            }
            Ok(ShardId(n as u32))
        }
        ObjectIdKind::Regular | ObjectIdKind::FixedNode(_) => {
            Ok(ShardId(fnv1a_32(id.as_str().as_bytes()) % shard_count))
        }
    }
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
}
