//! Where object state lives between activations.
//!
//! [`ObjectStore`] is the seam: [`MemoryStore`] for tests and benchmarks, [`SqliteStore`] for the
//! embedded default (one file in a data directory) and [`PostgresStore`] for clusters (upstream
//! GoVerse's tables, so an upstream database opens as is). One conformance suite
//! (`conformance` module, run by each implementation's tests, PostgreSQL's against a real server)
//! pins the contract.
//!
//! # Fencing
//!
//! The store keeps an epoch per shard. A node raises it with [`ObjectStore::claim_shards`] when it
//! takes a shard, before serving it, and every write carries a [`Fence`] (shard, epoch). A write
//! whose fence is not the shard's current epoch is refused in the same transaction that would
//! have applied it, so a node that lost a shard (paused, partitioned, restarted elsewhere) cannot
//! write over the new owner, whether or not the new owner has written that object yet.
//!
//! # One way to write
//!
//! [`ObjectStore::commit`] is the only write: a batch of [`Write`]s (save, delete, or no state
//! change), each with its fence and an optional [`ReliableCall`] record, committed in one
//! transaction. A reliable call's record and the object's new state commit together or not at
//! all.

#[doc(hidden)]
pub mod fuzzing;
mod memory;
mod pg_tls;
mod postgres;
mod sqlite;

#[cfg(test)]
mod conformance;

pub use memory::MemoryStore;
pub use postgres::{PostgresConfig, PostgresStore};
pub use sqlite::{SqliteConfig, SqliteStore, Synchronous};

use std::time::Duration;

use async_trait::async_trait;
use goverse_core::{ObjectId, ShardId};

/// The schema version this build writes and expects (SQLite and PostgreSQL share the number).
pub const SCHEMA_VERSION: u32 = 2;

/// An object's persisted record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The object's type name.
    pub object_type: String,
    /// The state bytes the object produced (JSON for serde-persisted objects).
    pub data: Vec<u8>,
    /// The shard epoch of the write that stored it.
    pub epoch: u64,
}

/// A writer's claim on a shard: writes are accepted only while `epoch` is the shard's current
/// epoch in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The shard the object belongs to.
    pub shard: ShardId,
    /// The epoch the writer holds for it.
    pub epoch: u64,
}

/// What a [`Write`] does to the object's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange<'a> {
    /// Insert or replace the record with these state bytes.
    Save(&'a [u8]),
    /// Remove the record (nothing to remove is fine).
    Delete,
    /// Leave the record alone (a reliable-call record on its own).
    Unchanged,
}

/// One write of a [`ObjectStore::commit`] batch.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// The object.
    pub id: &'a ObjectId,
    /// Its type name.
    pub object_type: &'a str,
    /// What happens to its state.
    pub change: StateChange<'a>,
    /// The writer's fence for the object's shard.
    pub fence: Fence,
    /// A reliable call's record, committed with the state or not at all.
    pub reliable: Option<&'a ReliableCall>,
}

/// How a reliable call ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReliableResult {
    /// The method returned this response: an encoded `google.protobuf.Any`.
    Success(Vec<u8>),
    /// The method ran and returned this error.
    Failed {
        /// The error code's name (`ErrorCode::as_str`).
        code: String,
        /// The error message.
        message: String,
    },
}

/// The record of a reliable call: what was asked (to recognise a retry, and a call id reused for
/// something else) and how it ended. Stored in `goverse_reliable_calls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReliableCall {
    /// The caller-chosen call id.
    pub call_id: String,
    /// The object called.
    pub object_id: String,
    /// Its type.
    pub object_type: String,
    /// The method's wire name.
    pub method: String,
    /// The request as an encoded `google.protobuf.Any`.
    pub request: Vec<u8>,
    /// The outcome.
    pub result: ReliableResult,
}

impl ReliableCall {
    /// Whether `other` asks for the same thing (object, type, method and request bytes).
    pub fn same_request(
        &self,
        object_id: &str,
        object_type: &str,
        method: &str,
        request: &[u8],
    ) -> bool {
        self.object_id == object_id
            && self.object_type == object_type
            && self.method == method
            && self.request == request
    }
}

/// Why a store refused one write of a batch. The rest of the batch is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The shard's epoch has moved on (or was never claimed): the writer does not own the shard.
    #[error(
        "shard {shard} is at epoch {current} in the store and the write carried epoch {given}: \
         the writer no longer owns the shard"
    )]
    StaleFence {
        /// The shard.
        shard: ShardId,
        /// The store's epoch for it (0: never claimed).
        current: u64,
        /// The epoch the write carried.
        given: u64,
    },
    /// A reliable call with this id is already recorded (for this or another object).
    #[error("reliable call id {call_id:?} is already recorded")]
    CallIdTaken {
        /// The call id.
        call_id: String,
    },
}

/// Why a store operation failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or is busy now; the operation may succeed if retried.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// The backend refuses writes (a read-only file, directory or database).
    #[error("object store is read-only: {0}")]
    ReadOnly(String),
    /// Stored data is damaged: a corrupted database file, a record that does not decode.
    /// Permanent; retrying does not help.
    #[error("object store data is corrupted: {0}")]
    Corrupt(String),
    /// The database has no GoVerse schema, an older one, or a newer one than this build knows.
    #[error("object store schema: {0}")]
    Schema(String),
    /// Anything else the backend reported.
    #[error("object store error: {0}")]
    Backend(String),
    /// The store's configuration cannot be used; nothing was tried.
    #[error("invalid object store configuration: {0}")]
    Config(goverse_core::InvalidSetting),
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Counts a store reports (`goverse db status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStatus {
    /// The schema version found.
    pub schema_version: u32,
    /// Object records.
    pub objects: u64,
    /// Reliable-call records.
    pub reliable_calls: u64,
    /// Shards with an epoch.
    pub claimed_shards: u64,
}

/// Persistent storage for object state.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// What and where the store is, for messages ("SQLite file /data/objects.db").
    fn describe(&self) -> String;

    /// Checks that the store can be used now: reachable, the expected schema, and writable.
    /// A node calls it before it starts serving.
    async fn check(&self) -> Result<(), StoreError>;

    /// The records of `ids`, in the same order (`None` where there is none), in one query.
    async fn load_many(&self, ids: &[ObjectId]) -> Result<Vec<Option<StoredObject>>, StoreError>;

    /// One object's record.
    async fn load(&self, id: &ObjectId) -> Result<Option<StoredObject>, StoreError> {
        let mut found = self.load_many(std::slice::from_ref(id)).await?;
        Ok(found.pop().flatten())
    }

    /// Whether [`ObjectStore::load_many`] pays off: true for stores behind I/O, false for one
    /// that answers from memory (callers then load one by one, without waiting for a batch).
    fn batches_loads(&self) -> bool {
        true
    }

    /// Commits `writes` in one transaction. Each write is checked on its own: one whose fence is
    /// stale, or whose reliable-call id is taken, is refused (its state change and record are
    /// not applied) and the others commit. Several writes to one object apply in order.
    ///
    /// `Err` means nothing was committed, or (for a connection lost during commit) that the
    /// outcome is unknown.
    async fn commit(&self, writes: &[Write<'_>]) -> Result<Vec<Result<(), Refusal>>, StoreError>;

    /// Raises the epochs of shards a node is taking, before it serves them: each shard's epoch
    /// becomes the larger of its stored epoch plus one and the epoch asked for (at least 1).
    /// Returns the new epochs, in order; they are the fences for the writer's writes.
    async fn claim_shards(&self, claims: &[Fence]) -> Result<Vec<u64>, StoreError>;

    /// The records of `call_ids`, in the same order (`None` where there is none), in one query.
    async fn reliable_calls(
        &self,
        call_ids: &[&str],
    ) -> Result<Vec<Option<ReliableCall>>, StoreError>;

    /// The record of reliable call `call_id`, if any.
    async fn reliable_call(&self, call_id: &str) -> Result<Option<ReliableCall>, StoreError> {
        Ok(self.reliable_calls(&[call_id]).await?.pop().flatten())
    }

    /// Removes reliable-call records older than `age`; returns how many.
    async fn prune_reliable_calls(&self, age: Duration) -> Result<u64, StoreError>;

    /// Counts of what the store holds.
    async fn status(&self) -> Result<StoreStatus, StoreError>;

    /// How many object records the store holds.
    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.status().await?.objects)
    }

    /// Saves one object's state (a one-write [`ObjectStore::commit`]).
    async fn save(
        &self,
        id: &ObjectId,
        object_type: &str,
        data: &[u8],
        fence: Fence,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let write = Write {
            id,
            object_type,
            change: StateChange::Save(data),
            fence,
            reliable: None,
        };
        Ok(self.commit(&[write]).await?.pop().unwrap_or(Ok(())))
    }

    /// Deletes one object's state (a one-write [`ObjectStore::commit`]).
    async fn delete(
        &self,
        id: &ObjectId,
        object_type: &str,
        fence: Fence,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let write = Write {
            id,
            object_type,
            change: StateChange::Delete,
            fence,
            reliable: None,
        };
        Ok(self.commit(&[write]).await?.pop().unwrap_or(Ok(())))
    }
}

/// The new epoch of a claim: the stored one plus one, or the asked one if larger (at least 1).
pub(crate) fn next_epoch(stored: Option<u64>, asked: u64) -> u64 {
    stored.map_or(0, |e| e.saturating_add(1)).max(asked).max(1)
}

/// The status name of a recorded result, as upstream's table stores it.
pub(crate) fn status_name(result: &ReliableResult) -> &'static str {
    match result {
        ReliableResult::Success(_) => "success",
        ReliableResult::Failed { .. } => "failed",
    }
}

/// Rebuilds a recorded result from its columns, naming what is wrong with a damaged one.
pub(crate) fn result_of_columns(
    call_id: &str,
    status: &str,
    result: Option<Vec<u8>>,
    code: Option<String>,
    message: Option<String>,
) -> Result<Option<ReliableResult>, StoreError> {
    match status {
        "success" => Ok(Some(ReliableResult::Success(result.unwrap_or_default()))),
        "failed" => Ok(Some(ReliableResult::Failed {
            code: code.unwrap_or_else(|| "unknown".to_owned()),
            message: message.unwrap_or_default(),
        })),
        // Upstream writes `pending` before running a call and `skipped` for calls that did not
        // run; neither records an outcome, so the call may run (and its record is replaced).
        "pending" | "skipped" => Ok(None),
        other => Err(StoreError::Corrupt(format!(
            "reliable call {call_id:?} has unknown status {other:?}"
        ))),
    }
}

/// Object state as it goes into a JSON column: JSON state as is, anything else wrapped (base64)
/// in an object with one key, so any bytes round-trip.
pub(crate) mod json_column {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    const KEY: &str = "goverse:bytes";

    /// The JSON text to store for `data`: the state itself when it is JSON that every JSON
    /// column can hold, otherwise a wrapper object holding the bytes in base64. PostgreSQL's
    /// JSONB refuses a `\u0000` escape (no text value can hold a NUL) and lone surrogates, so JSON
    /// carrying one is wrapped too, and a chat message with a NUL in it is stored like any other.
    ///
    /// JSONB also changes or refuses some valid JSON, which is wrapped as well: an object with a
    /// key twice (JSONB keeps the last one, so the state read back would differ) and a number
    /// beyond PostgreSQL's `numeric` (`1e1000000`, `1e-100000`: the save would fail every
    /// time, and the object could never be saved again).
    pub(crate) fn encode(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
        if !has_escape_jsonb_refuses(data) && !is_wrapper(data) && jsonb_keeps(data) {
            return std::borrow::Cow::Borrowed(data);
        }
        let wrapped = serde_json::json!({ KEY: STANDARD.encode(data) });
        std::borrow::Cow::Owned(wrapped.to_string().into_bytes())
    }

    /// Whether JSON text holds an escape PostgreSQL's JSONB refuses: `\u0000` (no text value
    /// holds a NUL) or a UTF-16 surrogate (JSONB refuses a lone one; a paired one is wrapped too,
    /// which costs nothing but readability: serializers write such characters as UTF-8).
    pub(crate) fn has_escape_jsonb_refuses(text: &[u8]) -> bool {
        // Backslashes appear only inside strings, where each starts a two-byte escape or a
        // `\uXXXX` one, so walking escape by escape is exact.
        let mut i = 0;
        while let Some(found) = text[i..].iter().position(|&b| b == b'\\') {
            let at = i + found;
            match text.get(at + 1) {
                Some(b'u') => {
                    let hex = text.get(at + 2..at + 6).unwrap_or_default();
                    if hex == b"0000"
                        || matches!(
                            hex,
                            [b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F', ..]
                        )
                    {
                        return true;
                    }
                    i = at + 2;
                }
                Some(_) => i = at + 2,
                None => return false,
            }
        }
        false
    }

    /// Whether `text` is JSON that JSONB stores as it is meant: no object with a key twice, every
    /// number within `numeric`'s range.
    fn jsonb_keeps(text: &[u8]) -> bool {
        let mut de = serde_json::Deserializer::from_slice(text);
        serde::Deserialize::deserialize(&mut de).is_ok_and(|KeptByJsonb| de.end().is_ok())
            && numbers_fit_numeric(text)
    }

    /// Most digits, and the largest decimal exponent, a stored number may have: `numeric` takes
    /// 131072 digits before the point and 16383 after, so a number within these bounds fits
    /// however its digits and exponent combine (anything past them is wrapped, which is always
    /// safe).
    const NUMBER_LIMIT: u64 = 5000;

    /// Whether every number in the JSON `text` (valid JSON) fits `numeric`.
    fn numbers_fit_numeric(text: &[u8]) -> bool {
        let mut i = 0;
        let mut in_string = false;
        while i < text.len() {
            let b = text[i];
            if in_string {
                match b {
                    b'\\' => i += 1,
                    b'"' => in_string = false,
                    _ => {}
                }
                i += 1;
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'-' | b'0'..=b'9' => {
                    let mut digits = 0u64;
                    let mut exponent = 0u64;
                    let mut in_exponent = false;
                    while let Some(&c) = text.get(i) {
                        match c {
                            b'0'..=b'9' if in_exponent => {
                                exponent = exponent
                                    .saturating_mul(10)
                                    .saturating_add(u64::from(c - b'0'));
                            }
                            b'0'..=b'9' => digits += 1,
                            b'e' | b'E' => in_exponent = true,
                            b'-' | b'+' | b'.' => {}
                            _ => break,
                        }
                        i += 1;
                    }
                    if digits > NUMBER_LIMIT || exponent > NUMBER_LIMIT {
                        return false;
                    }
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        true
    }

    /// Any JSON value in which no object has a key twice.
    struct KeptByJsonb;

    impl<'de> serde::Deserialize<'de> for KeptByJsonb {
        fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
            de.deserialize_any(KeptByJsonb)
        }
    }

    impl<'de> serde::de::Visitor<'de> for KeptByJsonb {
        type Value = Self;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON without repeated keys")
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
            Ok(self)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
            Ok(self)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
            Ok(self)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
            Ok(self)
        }

        fn visit_str<E>(self, _: &str) -> Result<Self, E> {
            Ok(self)
        }

        fn visit_unit<E>(self) -> Result<Self, E> {
            Ok(self)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
            while seq.next_element::<KeptByJsonb>()?.is_some() {}
            Ok(self)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
            // Keys as hashes, compared once the object is read: no allocation per key, and a
            // collision only wraps a state that did not need it, which is always safe.
            let mut keys = Vec::new();
            while let Some(key) = map.next_key_seed(KeyHash)? {
                keys.push(key);
                map.next_value::<KeptByJsonb>()?;
            }
            keys.sort_unstable();
            if keys.windows(2).any(|pair| pair[0] == pair[1]) {
                return Err(serde::de::Error::custom("a repeated key"));
            }
            Ok(self)
        }
    }

    /// An object's key, read as its hash.
    struct KeyHash;

    impl<'de> serde::de::DeserializeSeed<'de> for KeyHash {
        type Value = u64;

        fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<u64, D::Error> {
            de.deserialize_str(self)
        }
    }

    impl serde::de::Visitor<'_> for KeyHash {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a key")
        }

        fn visit_str<E>(self, key: &str) -> Result<u64, E> {
            use std::hash::BuildHasher as _;
            Ok(foldhash::fast::FixedState::with_seed(0).hash_one(key))
        }
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapped {
        #[serde(rename = "goverse:bytes")]
        bytes: String,
    }

    /// The wrapper `text` is, if it is one: an object whose single key is ours. A state of that
    /// very shape is wrapped itself when stored, so it is never mistaken for one.
    fn as_wrapper(text: &[u8]) -> Option<Wrapped> {
        let starts_like_wrapper = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|i| text[i] == b'{')
            && text.windows(KEY.len()).any(|w| w == KEY.as_bytes());
        if !starts_like_wrapper {
            return None;
        }
        serde_json::from_slice::<Wrapped>(text).ok()
    }

    fn is_wrapper(text: &[u8]) -> bool {
        as_wrapper(text).is_some()
    }

    /// The state bytes a stored JSON text stands for.
    pub(crate) fn decode(text: Vec<u8>) -> Result<Vec<u8>, base64::DecodeError> {
        match as_wrapper(&text) {
            Some(w) => STANDARD.decode(w.bytes),
            None => Ok(text),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn json_passes_through_and_other_bytes_round_trip() {
            assert_eq!(&*super::encode(br#"{"value":1}"#), br#"{"value":1}"#);
            for raw in [&b"\x00\xffnot json"[..], b"[1,2", b""] {
                let stored = super::encode(raw).into_owned();
                assert!(serde_json::from_slice::<serde_json::Value>(&stored).is_ok());
                assert_eq!(super::decode(stored).unwrap(), raw);
            }
            // JSON with a NUL in a string is wrapped (JSONB cannot hold it) and comes back as is;
            // an escaped backslash before "u0000" is no NUL.
            for (json, wrapped) in [
                (&br#"{"text":"hi \u0000 there"}"#[..], true),
                (br#"["\\\u0000"]"#, true),
                (br#"["\\u0000"]"#, false),
                (br#"["lone \ud800"]"#, true),
                (br#"["pair \uD83D\uDE00"]"#, true),
                (br#"["fine \u00e9 \n \\"]"#, false),
                // A key twice (JSONB keeps the last), numbers past `numeric`.
                (br#"{"a":1,"a":2}"#, true),
                (br#"{"a":{"b":1},"b":{"b":2}}"#, false),
                (b"[1e1000000]", true),
                (b"[1e-100000]", true),
                (b"[1.5e300, -0.25E-300, 12345678901234567890]", false),
                (br#"["1e1000000 in a string"]"#, false),
            ] {
                let stored = super::encode(json).into_owned();
                assert_eq!(stored != json, wrapped, "{}", String::from_utf8_lossy(json));
                assert_eq!(super::decode(stored).unwrap(), json);
            }
            // A user's own object with other keys is not mistaken for a wrapper.
            let own = br#"{"goverse:bytes":"AA==","other":1}"#.to_vec();
            assert_eq!(super::decode(own.clone()).unwrap(), own);
        }
    }
}
