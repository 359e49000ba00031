//! The counter sample: a persistent counter, as in upstream GoVerse's README.
//!
//! `Add(google.protobuf.Int32Value) -> Int32Value` adds and returns the new value;
//! `Get(google.protobuf.Empty) -> Int32Value` reads it. State is saved as JSON.

use goverse::prelude::*;

/// A counter object.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    value: i32,
}

impl Object for Counter {
    json_state!();
}

#[goverse::object]
impl Counter {
    /// Adds `request.value` and returns the new value. Overflow is refused, not wrapped.
    #[method]
    async fn add(&mut self, request: Int32Value) -> Result<Int32Value, ObjectError> {
        self.value = self.value.checked_add(request.value).ok_or_else(|| {
            ObjectError::invalid_argument(format!(
                "adding {} to {} overflows",
                request.value, self.value
            ))
        })?;
        Ok(Int32Value { value: self.value })
    }

    /// The current value.
    #[method]
    async fn get(&self, _request: Empty) -> Result<Int32Value, ObjectError> {
        Ok(Int32Value { value: self.value })
    }
}
