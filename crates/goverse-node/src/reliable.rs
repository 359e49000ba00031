//! Reliable calls: exactly-once method calls named by a caller-chosen call id.
//!
//! At the object's owner a reliable call runs as a write turn: the call id is looked up (in the
//! activation's recent calls, then in the store); an earlier outcome is returned as it was
//! recorded; otherwise the method runs and its outcome is recorded in the same transaction as
//! the object's new state. Nothing is acknowledged before that commit, and a commit that fails
//! discards the activation, so the in-memory state never runs ahead of the record.

use std::collections::VecDeque;

use goverse_core::{CallError, ErrorCode, MAX_CALL_ID_CHARS, Payload, ReliableOutcome};
use goverse_persistence::{ReliableCall, ReliableResult};
use prost::Message as _;

/// The outcome a stored record stands for.
pub(crate) fn outcome_of(record: &ReliableCall) -> ReliableOutcome {
    match &record.result {
        ReliableResult::Success(bytes) => match prost_types::Any::decode(bytes.as_slice()) {
            Ok(any) => ReliableOutcome::Success(Payload::Encoded(any)),
            Err(err) => ReliableOutcome::Failed(CallError::new(
                ErrorCode::DataLoss,
                format!(
                    "the recorded response of reliable call {:?} does not decode: {err}",
                    record.call_id
                ),
            )),
        },
        ReliableResult::Failed { code, message } => ReliableOutcome::Failed(CallError::new(
            ErrorCode::from_name(code).unwrap_or(ErrorCode::Unknown),
            message.clone(),
        )),
    }
}

/// The record of a call that ran, with `result`.
pub(crate) fn result_of(result: &Result<Payload, CallError>) -> ReliableResult {
    match result {
        Ok(payload) => ReliableResult::Success(payload.encoded_any()),
        Err(err) => ReliableResult::Failed {
            code: err.code().as_str().to_owned(),
            message: err.message().to_owned(),
        },
    }
}

/// Refuses a call id that is empty, holds a control character (no store keeps a NUL in a key) or
/// is longer than the store's column.
pub(crate) fn check_call_id(call_id: &str) -> Result<(), CallError> {
    if call_id.is_empty() {
        return Err(CallError::invalid_argument(
            "reliable call id is empty: choose one per logical operation and reuse it on retries",
        ));
    }
    if let Some(at) = call_id.bytes().position(|b| b < 0x20 || b == 0x7f) {
        return Err(CallError::invalid_argument(format!(
            "reliable call id {:?} holds the control character {:?} at byte {at}; \
             call ids may not contain control characters",
            goverse_core::Clipped(call_id),
            char::from(call_id.as_bytes()[at])
        )));
    }
    let chars = call_id.chars().count();
    if chars > MAX_CALL_ID_CHARS {
        return Err(CallError::invalid_argument(format!(
            "reliable call id is {chars} characters long; the limit is {MAX_CALL_ID_CHARS}"
        )));
    }
    Ok(())
}

/// A call id used before for something else.
pub(crate) fn reused(call_id: &str, record: &ReliableCall) -> CallError {
    CallError::invalid_argument(format!(
        "reliable call id {:?} was already used for {}/{}.{} with another request; \
         use a new call id for a new operation",
        goverse_core::Clipped(call_id),
        record.object_type,
        record.object_id,
        record.method
    ))
}

/// The last reliable calls an activation answered, so an immediate retry needs no store read.
#[derive(Debug, Default)]
pub(crate) struct RecentCalls {
    calls: VecDeque<ReliableCall>,
}

impl RecentCalls {
    const KEEP: usize = 32;

    pub(crate) fn get(&self, call_id: &str) -> Option<&ReliableCall> {
        self.calls.iter().find(|c| c.call_id == call_id)
    }

    pub(crate) fn remember(&mut self, call: ReliableCall) {
        if self.calls.len() == Self::KEEP {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
    }
}
