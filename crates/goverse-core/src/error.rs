use std::fmt;
use std::sync::Arc;

/// The one vocabulary of failure, shared by the runtime, the gate and clients.
///
/// Each code maps to exactly one gRPC status, one HTTP status and one HTTP error name, here and
/// nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No such object type, method or object.
    NotFound,
    /// The request was malformed: bad object ID, wrong payload type, undecodable bytes.
    InvalidArgument,
    /// The object exists with another type (create with a different type).
    AlreadyExists,
    /// The node cannot serve the call now (shutting down, shard not owned, store down); retry.
    Unavailable,
    /// The call's deadline passed before it finished.
    DeadlineExceeded,
    /// A limit was hit (payload size, queue length).
    ResourceExhausted,
    /// The caller may not do this.
    PermissionDenied,
    /// The caller is not authenticated.
    Unauthenticated,
    /// The call would re-enter an object whose running turn waits on the same call chain.
    Reentrancy,
    /// The method returned an application error without choosing a code.
    Unknown,
    /// A bug or a panic inside the runtime or a method.
    Internal,
    /// Stored data is damaged or unreadable (a corrupted database file, a record that does not
    /// decode). Permanent: retrying does not help; an operator must look.
    DataLoss,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::NotFound,
        ErrorCode::InvalidArgument,
        ErrorCode::AlreadyExists,
        ErrorCode::Unavailable,
        ErrorCode::DeadlineExceeded,
        ErrorCode::ResourceExhausted,
        ErrorCode::PermissionDenied,
        ErrorCode::Unauthenticated,
        ErrorCode::Reentrancy,
        ErrorCode::Unknown,
        ErrorCode::Internal,
        ErrorCode::DataLoss,
    ];

    /// A stable lowercase name (`not_found`, `reentrancy`, ...), used in JSON error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::InvalidArgument => "invalid_argument",
            Self::AlreadyExists => "already_exists",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::ResourceExhausted => "resource_exhausted",
            Self::PermissionDenied => "permission_denied",
            Self::Unauthenticated => "unauthenticated",
            Self::Reentrancy => "reentrancy",
            Self::Unknown => "unknown",
            Self::Internal => "internal",
            Self::DataLoss => "data_loss",
        }
    }

    /// The gRPC status code number (as in `google.rpc.Code`).
    ///
    /// Reentrancy maps to `FAILED_PRECONDITION` (9): retrying the same chain cannot succeed.
    pub const fn grpc_code(self) -> i32 {
        match self {
            Self::Unknown => 2,
            Self::InvalidArgument => 3,
            Self::DeadlineExceeded => 4,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::Reentrancy => 9,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::DataLoss => 15,
            Self::Unauthenticated => 16,
        }
    }

    /// The code a gRPC status number stands for: the inverse of [`ErrorCode::grpc_code`], with
    /// the numbers no code maps to read as the nearest one (`CANCELLED` as a passed deadline,
    /// `ABORTED` as unavailable, `UNIMPLEMENTED` as not found, `OK` and anything unknown as
    /// unknown).
    pub const fn from_grpc_code(code: i32) -> Self {
        match code {
            1 | 4 => Self::DeadlineExceeded,
            3 | 11 => Self::InvalidArgument,
            5 | 12 => Self::NotFound,
            6 => Self::AlreadyExists,
            7 => Self::PermissionDenied,
            8 => Self::ResourceExhausted,
            9 => Self::Reentrancy,
            10 | 14 => Self::Unavailable,
            13 => Self::Internal,
            15 => Self::DataLoss,
            16 => Self::Unauthenticated,
            _ => Self::Unknown,
        }
    }

    /// The HTTP status for this code.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::AlreadyExists | Self::Reentrancy => 409,
            Self::ResourceExhausted => 429,
            Self::Unknown | Self::Internal | Self::DataLoss => 500,
            Self::Unavailable => 503,
            Self::DeadlineExceeded => 504,
        }
    }

    /// The `code` of an HTTP error body, in upstream's vocabulary (`NOT_FOUND`,
    /// `ACCESS_DENIED`, `CALL_FAILED`, ...), so upstream's HTTP clients read our errors.
    pub const fn http_name(self) -> &'static str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::Unavailable => "UNAVAILABLE",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::PermissionDenied => "ACCESS_DENIED",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Reentrancy => "REENTRANCY",
            Self::Unknown => "CALL_FAILED",
            Self::Internal => "INTERNAL",
            Self::DataLoss => "DATA_LOSS",
        }
    }

    /// Parses [`ErrorCode::as_str`] back.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call failed: a code and a message naming what was wrong.
///
/// Cheap to clone, so one failure (say, a failed activation) can be handed to every waiting call.
#[derive(Clone, PartialEq, Eq)]
pub struct CallError {
    code: ErrorCode,
    message: Arc<str>,
    /// The request did not run: the node does not serve the object's shard now.
    not_served: bool,
    /// When trying again may succeed (a quota refused the call).
    retry_after: Option<std::time::Duration>,
}

impl CallError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<Arc<str>>) -> Self {
        Self {
            code,
            message: message.into(),
            not_served: false,
            retry_after: None,
        }
    }

    /// The same error, saying that trying again after `wait` may succeed (sent to clients as
    /// `Retry-After`).
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// How long to wait before trying again, when the refusal says.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// The node does not serve the object's shard now (it is moving, or another node has it),
    /// and the request did not run: a router sends it again to the shard's owner. Clients that
    /// see it (their deadline passed before the shard found an owner) see `Unavailable`.
    pub fn not_served(message: impl Into<Arc<str>>) -> Self {
        Self {
            not_served: true,
            ..Self::new(ErrorCode::Unavailable, message)
        }
    }

    /// Whether this is a [`CallError::not_served`] refusal: nothing ran, sending the request
    /// elsewhere is safe.
    pub fn is_not_served(&self) -> bool {
        self.not_served
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message, without the code.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// No type of that name is registered.
    pub fn unknown_type(type_name: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("unknown object type {:?}", Clipped(type_name)),
        )
    }

    /// The type has no method of that name.
    pub fn unknown_method(type_name: &str, method: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!(
                "object type {:?} has no method {:?}",
                Clipped(type_name),
                Clipped(method)
            ),
        )
    }

    /// The request is a message of another type than the method takes.
    pub fn wrong_payload(type_name: &str, method: &str, expected: &str, got: &str) -> Self {
        Self::new(
            ErrorCode::InvalidArgument,
            format!(
                "{}.{} takes {expected}, got {}",
                Clipped(type_name),
                Clipped(method),
                Clipped(got)
            ),
        )
    }

    /// The call's deadline passed.
    pub fn deadline_exceeded(what: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::DeadlineExceeded,
            format!("deadline exceeded: {what}"),
        )
    }

    /// An invalid argument.
    pub fn invalid_argument(message: impl Into<Arc<str>>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// The node cannot serve this now.
    pub fn unavailable(message: impl Into<Arc<str>>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// An internal failure.
    pub fn internal(message: impl Into<Arc<str>>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// Client-supplied text quoted in an error message, cut short when it is long so a huge name or
/// ID does not come back whole in every error. `{:?}` quotes it; `{}` writes it as is.
#[derive(Clone, Copy)]
pub struct Clipped<'a>(pub &'a str);

impl Clipped<'_> {
    /// Characters quoted before the text is cut.
    pub const LIMIT: usize = 80;

    fn parts(&self) -> (&str, Option<usize>) {
        match self.0.char_indices().nth(Self::LIMIT) {
            Some((cut, _)) => (&self.0[..cut], Some(self.0.len())),
            None => (self.0, None),
        }
    }
}

impl fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            (head, None) => fmt::Debug::fmt(head, f),
            (head, Some(len)) => write!(f, "{head:?}… ({len} bytes)"),
        }
    }
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            (head, None) => f.write_str(head),
            (head, Some(len)) => write!(f, "{head}… ({len} bytes)"),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl fmt::Debug for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallError({}: {:?})", self.code, &*self.message)
    }
}

impl std::error::Error for CallError {}

impl From<crate::IdError> for CallError {
    fn from(err: crate::IdError) -> Self {
        Self::invalid_argument(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_statuses_are_distinct_where_it_matters() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::NotFound.grpc_code(), 5);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_grpc_code(code.grpc_code()), code);
        }
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
        assert_eq!(ErrorCode::DeadlineExceeded.http_status(), 504);
        // Upstream's HTTP names: one per code, and the two upstream spells its own way.
        let names: std::collections::BTreeSet<_> =
            ErrorCode::ALL.iter().map(|c| c.http_name()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::PermissionDenied.http_name(), "ACCESS_DENIED");
        assert_eq!(ErrorCode::Unknown.http_name(), "CALL_FAILED");
    }

    #[test]
    fn long_client_text_is_clipped_in_messages() {
        let long = "x".repeat(10_000);
        let e = CallError::unknown_type(&long);
        assert!(e.message().len() < 200, "{e}");
        assert!(e.message().contains("10000 bytes"), "{e}");
        assert_eq!(format!("{:?}", Clipped("short")), "\"short\"");
    }

    #[test]
    fn display_is_code_then_message() {
        let e = CallError::unknown_method("Counter", "Nope");
        assert_eq!(
            e.to_string(),
            "not_found: object type \"Counter\" has no method \"Nope\""
        );
    }
}
