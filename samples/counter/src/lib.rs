//! The counter sample: a persistent counter, as in upstream GoVerse's README, and a durable one.
//!
//! `Add(google.protobuf.Int32Value) -> Int32Value` adds and returns the new value;
//! `Get(google.protobuf.Empty) -> Int32Value` reads it. State is saved as JSON.
//!
//! - [`Counter`] saves periodically ([`Durability::Periodic`]): fast, and a crash (kill -9) loses
//!   what changed since the last save.
//! - [`DurableCounter`] commits before every reply ([`Durability::WriteThrough`]): an
//!   acknowledged `Add` survives a crash.

use goverse::prelude::*;

/// A counter object, saved periodically.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i32,
}

impl Object for Counter {
    json_state!();
}

/// Adds `delta` to `value`, refusing overflow instead of wrapping.
fn checked_add(value: &mut i32, delta: i32) -> Result<Int32Value, ObjectError> {
    *value = value.checked_add(delta).ok_or_else(|| {
        ObjectError::invalid_argument(format!("adding {delta} to {value} overflows"))
    })?;
    Ok(Int32Value { value: *value })
}

#[goverse::object]
impl Counter {
    /// Adds `request.value` and returns the new value. Overflow is refused, not wrapped.
    #[method]
    async fn add(&mut self, request: Int32Value) -> Result<Int32Value, ObjectError> {
        checked_add(&mut self.value, request.value)
    }

    /// The current value.
    #[method]
    async fn get(&self, _request: Empty) -> Result<Int32Value, ObjectError> {
        Ok(Int32Value { value: self.value })
    }
}

/// [`Counter`] with write-through durability: `Add` replies only once the new value is
/// committed to the store.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DurableCounter {
    value: i32,
}

impl Object for DurableCounter {
    json_state!();
    const DURABILITY: Durability = Durability::WriteThrough;
}

#[goverse::object]
impl DurableCounter {
    /// Adds `request.value` and returns the new value, once it is committed.
    #[method]
    async fn add(&mut self, request: Int32Value) -> Result<Int32Value, ObjectError> {
        checked_add(&mut self.value, request.value)
    }

    /// The current value.
    #[method]
    async fn get(&self, _request: Empty) -> Result<Int32Value, ObjectError> {
        Ok(Int32Value { value: self.value })
    }
}
