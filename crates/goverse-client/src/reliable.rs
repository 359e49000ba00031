//! Reliable (exactly-once) calls: call ids, outcomes, and which failures are worth a retry.

use std::time::Duration;

use goverse_core::{CallError, ErrorCode};

/// A new call id: 16 bytes (a microsecond timestamp and 8 random bytes) in padded URL-safe
/// base64, 24 characters, the shape upstream's clients generate. Make one per logical
/// operation, keep it, and reuse it for every retry of that operation.
pub fn new_call_id() -> String {
    use base64::Engine as _;
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&micros.to_be_bytes());
    bytes[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

/// Why a reliable call has no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReliableError {
    /// The method ran and failed (status FAILED). The failure is recorded: a retry with the same
    /// call id returns it again without running the method.
    #[error("the call ran and failed: {0}")]
    Failed(CallError),
    /// The call was refused and did not run (status SKIPPED for a reason a retry does not
    /// change: a bad request, an access rule, an unknown method).
    #[error("the call was refused and did not run: {0}")]
    Refused(CallError),
    /// No outcome within the retry period (every gate or the object's node down): the call may
    /// or may not have run. Retrying later with the same call id finds out, and never runs it
    /// twice.
    #[error(
        "no outcome after {attempts} attempts in {waited:?} (last: {last}); \
         retry later with call id {call_id}"
    )]
    Unknown {
        /// The call id to retry with.
        call_id: String,
        /// How many attempts were made.
        attempts: u32,
        /// How long they took.
        waited: Duration,
        /// The last attempt's failure.
        last: CallError,
    },
}

impl ReliableError {
    /// The underlying error's code (`Unavailable` or `DeadlineExceeded` for an unknown
    /// outcome).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Failed(err) | Self::Refused(err) => err.code(),
            Self::Unknown { last, .. } => last.code(),
        }
    }
}

impl From<ReliableError> for CallError {
    fn from(err: ReliableError) -> Self {
        match err {
            ReliableError::Failed(err) | ReliableError::Refused(err) => err,
            unknown @ ReliableError::Unknown { .. } => {
                CallError::new(unknown.code(), unknown.to_string())
            }
        }
    }
}

/// One failed attempt the client is about to retry, as reported to
/// [`crate::ClientBuilder::on_retry`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Retry<'a> {
    /// `Type/id.Method` of the call.
    pub target: &'a str,
    /// The reliable call's id.
    pub call_id: &'a str,
    /// Which attempt failed (1 is the first).
    pub attempt: u32,
    /// Why.
    pub error: &'a CallError,
    /// How long the client waits before the next attempt.
    pub delay: Duration,
}

/// Whether an attempt that failed with `code` left the outcome open (or the call not run for a
/// passing reason), so that the same call id is tried again.
pub(crate) fn worth_retrying(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::DeadlineExceeded | ErrorCode::ResourceExhausted
    )
}

/// Reads the `error` of a `ReliableCallObjectResponse`: this project's gates write
/// `code: message`; anything else (another gate's text) is an unknown-coded error.
pub(crate) fn error_of(text: &str) -> CallError {
    if let Some((code, message)) = text.split_once(": ")
        && let Some(code) = ErrorCode::from_name(code)
    {
        return CallError::new(code, message.to_owned());
    }
    CallError::new(ErrorCode::Unknown, text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_24_url_safe_characters_and_differ() {
        let (a, b) = (new_call_id(), new_call_id());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
        );
    }

    #[test]
    fn recorded_errors_keep_their_codes() {
        let err = error_of("unavailable: store is down");
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert_eq!(err.message(), "store is down");
        assert_eq!(error_of("boom").code(), ErrorCode::Unknown);
        assert_eq!(error_of("weird: thing").message(), "weird: thing");
    }

    #[test]
    fn an_unknown_outcome_names_the_call_id_to_retry_with() {
        let err = ReliableError::Unknown {
            call_id: "abc".into(),
            attempts: 3,
            waited: Duration::from_secs(1),
            last: CallError::unavailable("gate down"),
        };
        let call: CallError = err.into();
        assert_eq!(call.code(), ErrorCode::Unavailable);
        assert!(call.message().contains("call id abc"), "{call}");
    }
}
