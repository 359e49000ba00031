use std::fmt;
use std::sync::Arc;

/// The longest object ID accepted, in characters: what every store can hold (upstream's
/// `object_id` column is `VARCHAR(255)`).
pub const MAX_OBJECT_ID_CHARS: usize = 255;

/// Why an object ID was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The ID is the empty string.
    #[error("object id is empty")]
    Empty,
    /// The ID is longer than [`MAX_OBJECT_ID_CHARS`].
    #[error(
        "object id is {chars} characters long ({bytes} bytes, starting {start:?}); the limit is {MAX_OBJECT_ID_CHARS}"
    )]
    TooLong {
        /// Its length in characters.
        chars: usize,
        /// Its length in bytes.
        bytes: usize,
        /// Its first characters.
        start: String,
    },
    /// The ID holds a control character (U+0000–U+001F or U+007F): no store keeps a NUL in a
    /// key, and the others break logs and URLs.
    #[error(
        "invalid object id {id:?}: it holds the control character {ch:?} at byte {at}; \
         object ids may not contain control characters"
    )]
    ControlCharacter {
        /// The rejected ID (at most its first 64 characters).
        id: String,
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// `shard#.../name` where the part after `shard#` is not a number.
    #[error(
        "invalid object id {id:?}: shard# must be followed by a number and '/', as in shard#12/name"
    )]
    BadShardPrefix {
        /// The rejected ID.
        id: String,
    },
    /// `shard#N/name` with N outside `0..shard_count`.
    #[error("invalid object id {id:?}: shard {shard} out of range [0, {shard_count})")]
    ShardOutOfRange {
        /// The rejected ID.
        id: String,
        /// The shard number it named.
        shard: u64,
        /// The cluster's shard count.
        shard_count: u32,
    },
    /// `/name` with nothing before the slash.
    #[error("invalid object id {id:?}: node address before '/' is empty")]
    EmptyNodeAddress {
        /// The rejected ID.
        id: String,
    },
    /// `prefix/` with nothing after the slash.
    #[error("invalid object id {id:?}: name after '/' is empty")]
    EmptyName {
        /// The rejected ID.
        id: String,
    },
}

/// The identity of an object: unique across the cluster and across types.
///
/// Cheap to clone (a shared string). Any string converts into an `ObjectId`; the format is
/// checked when the ID is used (see [`ObjectId::kind`]), so a malformed ID fails the call that
/// uses it with [`crate::ErrorCode::InvalidArgument`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(Arc<str>);

/// How an object ID routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectIdKind<'a> {
    /// A plain ID: placed on the shard its hash selects.
    Regular,
    /// `shard#N/name`: pinned to shard N.
    FixedShard(u64),
    /// `host:port/name`: pinned to the node at that address.
    FixedNode(&'a str),
}

impl ObjectId {
    /// Wraps a string as an object ID without checking its format.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the ID's routing form (and checks its length); shard ranges are checked by
    /// [`crate::shard_of`].
    pub fn kind(&self) -> Result<ObjectIdKind<'_>, IdError> {
        kind_of(&self.0)
    }
}

/// [`ObjectId::kind`] of an ID not (yet) held as an [`ObjectId`].
pub fn kind_of(id: &str) -> Result<ObjectIdKind<'_>, IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    check_length(id)?;
    check_characters(id)?;
    let Some((prefix, name)) = id.split_once('/') else {
        if id.starts_with("shard#") {
            return Err(IdError::BadShardPrefix { id: id.to_owned() });
        }
        return Ok(ObjectIdKind::Regular);
    };
    if let Some(number) = prefix.strip_prefix("shard#") {
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::BadShardPrefix { id: id.to_owned() });
        }
        if name.is_empty() {
            return Err(IdError::EmptyName { id: id.to_owned() });
        }
        // Saturate absurdly long numbers: they are out of range either way.
        let shard = number.parse::<u64>().unwrap_or(u64::MAX);
        return Ok(ObjectIdKind::FixedShard(shard));
    }
    if prefix.is_empty() {
        return Err(IdError::EmptyNodeAddress { id: id.to_owned() });
    }
    if name.is_empty() {
        return Err(IdError::EmptyName { id: id.to_owned() });
    }
    Ok(ObjectIdKind::FixedNode(prefix))
}

/// Refuses an ID longer than [`MAX_OBJECT_ID_CHARS`] characters. Cheap for short IDs: the
/// characters are counted only when the byte length could exceed the limit.
fn check_length(id: &str) -> Result<(), IdError> {
    if id.len() <= MAX_OBJECT_ID_CHARS {
        return Ok(());
    }
    let chars = id.chars().count();
    if chars <= MAX_OBJECT_ID_CHARS {
        return Ok(());
    }
    Err(IdError::TooLong {
        chars,
        bytes: id.len(),
        start: id.chars().take(32).collect(),
    })
}

/// Refuses an ID holding an ASCII control character. One pass over at most 255 bytes; UTF-8
/// continuation bytes are never below 0x80, so a byte test is exact.
fn check_characters(id: &str) -> Result<(), IdError> {
    match id.bytes().position(|b| b < 0x20 || b == 0x7f) {
        None => Ok(()),
        Some(at) => Err(IdError::ControlCharacter {
            id: id.chars().take(64).collect(),
            ch: char::from(id.as_bytes()[at]),
            at,
        }),
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for ObjectId {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for ObjectId {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<&String> for ObjectId {
    fn from(s: &String) -> Self {
        Self(s.as_str().into())
    }
}

impl From<&ObjectId> for ObjectId {
    fn from(id: &ObjectId) -> Self {
        id.clone()
    }
}

impl AsRef<str> for ObjectId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ObjectId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The advertised address of a node (`host:port`), which is also its identity in the cluster.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr(Arc<str>);

impl NodeAddr {
    /// Wraps an address.
    pub fn new(addr: impl Into<Arc<str>>) -> Self {
        Self(addr.into())
    }

    /// The address as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Identifies one logical call chain: a root call and every call made on its behalf.
///
/// It travels with every call so the runtime can refuse a call that would re-enter an object
/// whose running turn is waiting on the same chain (a certain deadlock).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainId(u64);

impl ChainId {
    /// A fresh random chain id for a new root call.
    pub fn new_root() -> Self {
        // Zero is reserved for "no chain" on the wire; skip it.
        Self(fastrand::u64(1..))
    }

    /// Rebuilds a chain id received from elsewhere (0 is treated as absent by callers).
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value, for the wire.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(id: &str) -> Result<ObjectIdKind<'_>, IdError> {
        // Leak is fine in tests: we need the borrow to outlive the temporary.
        let id: &'static ObjectId = Box::leak(Box::new(ObjectId::from(id)));
        id.kind()
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(kind("my-counter"), Ok(ObjectIdKind::Regular));
        assert_eq!(kind("shard#5/object-123"), Ok(ObjectIdKind::FixedShard(5)));
        assert_eq!(
            kind("127.0.0.1:47000/obj"),
            Ok(ObjectIdKind::FixedNode("127.0.0.1:47000"))
        );
        // Only the first '/' separates: the rest belongs to the name.
        assert_eq!(kind("shard#1/a/b"), Ok(ObjectIdKind::FixedShard(1)));
    }

    #[test]
    fn control_characters_are_refused_wherever_they_are() {
        for id in ["a\0b", "\0", "shard#1/x\ny", "host:1/\x7f", "tab\there"] {
            let err = kind(id).unwrap_err();
            assert!(
                matches!(err, IdError::ControlCharacter { .. }),
                "{id:?}: {err:?}"
            );
            assert!(err.to_string().contains("control character"), "{err}");
        }
        assert_eq!(
            kind("hi \0 there"),
            Err(IdError::ControlCharacter {
                id: "hi \0 there".into(),
                ch: '\0',
                at: 3
            })
        );
        // Non-ASCII text is fine.
        assert_eq!(kind("Zimmer-Ä-ß-房间"), Ok(ObjectIdKind::Regular));
    }

    #[test]
    fn rejects_malformed_ids_with_a_reason() {
        assert_eq!(kind(""), Err(IdError::Empty));
        assert!(matches!(
            kind("shard#x/name"),
            Err(IdError::BadShardPrefix { .. })
        ));
        assert!(matches!(
            kind("shard#/name"),
            Err(IdError::BadShardPrefix { .. })
        ));
        assert!(matches!(
            kind("shard#-1/name"),
            Err(IdError::BadShardPrefix { .. })
        ));
        assert!(matches!(
            kind("shard#12"),
            Err(IdError::BadShardPrefix { .. })
        ));
        assert!(matches!(kind("shard#3/"), Err(IdError::EmptyName { .. })));
        assert!(matches!(
            kind("/name"),
            Err(IdError::EmptyNodeAddress { .. })
        ));
        assert!(matches!(kind("host:1/"), Err(IdError::EmptyName { .. })));
        let msg = kind("shard#x/name").unwrap_err().to_string();
        assert!(
            msg.contains("shard#x/name") && msg.contains("number"),
            "{msg}"
        );
    }

    #[test]
    fn ids_longer_than_the_column_are_refused_by_length_in_characters() {
        let ok = "é".repeat(MAX_OBJECT_ID_CHARS);
        assert_eq!(kind(&ok), Ok(ObjectIdKind::Regular));
        let long = "a".repeat(MAX_OBJECT_ID_CHARS + 1);
        let err = kind(&long).unwrap_err();
        assert!(matches!(err, IdError::TooLong { chars: 256, .. }), "{err}");
        let huge = "b".repeat(4_000_000);
        let msg = kind(&huge).unwrap_err().to_string();
        assert!(
            msg.contains("4000000 characters") && msg.len() < 200,
            "{msg}"
        );
        let pinned = format!("shard#1/{}", "c".repeat(300));
        assert!(matches!(kind(&pinned), Err(IdError::TooLong { .. })));
    }

    #[test]
    fn chain_ids_are_nonzero_and_distinct() {
        let a = ChainId::new_root();
        let b = ChainId::new_root();
        assert_ne!(a.raw(), 0);
        assert_ne!(a, b);
        assert_eq!(ChainId::from_raw(a.raw()), a);
    }
}
