//! How a reliable (exactly-once) call ended, in upstream's terms.

use std::fmt;

use crate::{CallError, Payload};

/// The longest call id accepted (upstream's column is `VARCHAR(255)`).
pub const MAX_CALL_ID_CHARS: usize = 255;

/// How a reliable call ended, with upstream's statuses.
#[derive(Debug)]
pub enum ReliableOutcome {
    /// The method ran (now, or on an earlier attempt with this call id) and returned this.
    Success(Payload),
    /// The method ran (now or earlier) and failed with this error. The failure is recorded: a
    /// retry with the same call id returns it again without running the method.
    Failed(CallError),
    /// The call did not take effect and nothing was recorded (refused before running, or
    /// rolled back because its commit failed). A retry with the same call id is safe and may
    /// run it.
    Skipped(CallError),
}

/// A [`ReliableOutcome`]'s status, as upstream's clients read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReliableStatus {
    /// See [`ReliableOutcome::Success`].
    Success,
    /// See [`ReliableOutcome::Failed`].
    Failed,
    /// See [`ReliableOutcome::Skipped`].
    Skipped,
}

impl ReliableStatus {
    /// `SUCCESS`, `FAILED` or `SKIPPED`, as in `ReliableCallObjectResponse.status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Failed => "FAILED",
            Self::Skipped => "SKIPPED",
        }
    }

    /// Parses [`ReliableStatus::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Success, Self::Failed, Self::Skipped]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

impl fmt::Display for ReliableStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ReliableOutcome {
    /// The status.
    pub fn status(&self) -> ReliableStatus {
        match self {
            Self::Success(_) => ReliableStatus::Success,
            Self::Failed(_) => ReliableStatus::Failed,
            Self::Skipped(_) => ReliableStatus::Skipped,
        }
    }

    /// The response, or the error of a failed or skipped call.
    pub fn into_result(self) -> Result<Payload, CallError> {
        match self {
            Self::Success(payload) => Ok(payload),
            Self::Failed(err) | Self::Skipped(err) => Err(err),
        }
    }
}
