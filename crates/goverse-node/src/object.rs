use std::fmt;
use std::future::Future;

use goverse_core::{CallError, ErrorCode, Payload};

use crate::ObjectContext;

/// Lifecycle hooks of an object type. Every hook has a default, so `impl Object for T {}` is enough
/// for an object without persistence or setup.
///
/// Persistence is opt-in: set `PERSISTENT` and implement `snapshot`/`restore`, or write
/// [`json_state!`](crate::json_state) inside the impl to persist the struct as JSON through serde
/// (JSON because it is what PostgreSQL's JSONB column holds, it stays readable in SQLite and the
/// inspector, and any serde struct works without writing a `.proto` for its state).
pub trait Object: Send + Sync + 'static {
    /// Whether the runtime loads and saves this type's state.
    const PERSISTENT: bool = false;

    /// When a persistent object's changes are committed: periodically (the default) or before
    /// each write turn's reply ([`Durability::WriteThrough`]). Ignored when `PERSISTENT` is false
    /// or the node has no store.
    const DURABILITY: Durability = Durability::Periodic;

    /// Runs once, before the first turn. `restored` is true when saved state was loaded into the
    /// object (through [`Object::restore`]) just before. An error fails the activation: every call
    /// waiting for it gets the error, and the next call tries again.
    fn on_activate(
        &mut self,
        ctx: &ObjectContext,
        restored: bool,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send {
        let _ = (ctx, restored);
        async { Ok(()) }
    }

    /// Runs as the last turn before the activation goes away (idle, delete, shutdown), before the
    /// state is saved. Errors are logged; the deactivation goes on.
    fn on_deactivate(
        &mut self,
        ctx: &ObjectContext,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs as a turn when a timer set with [`ObjectContext::set_timer`] or
    /// [`ObjectContext::set_timeout`] fires. Errors are logged.
    fn on_timer(
        &mut self,
        ctx: &ObjectContext,
        name: &str,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send {
        let _ = (ctx, name);
        async { Ok(()) }
    }

    /// The state to persist. Called only when `PERSISTENT` is true.
    fn snapshot(&self) -> Result<Vec<u8>, ObjectError> {
        Err(ObjectError::internal(
            "snapshot is not implemented for this type",
        ))
    }

    /// Restores persisted state into a fresh instance. Called only when `PERSISTENT` is true.
    fn restore(&mut self, state: &[u8]) -> Result<(), ObjectError> {
        let _ = state;
        Err(ObjectError::internal(
            "restore is not implemented for this type",
        ))
    }
}

/// When a persistent object's changes reach the store, and so what a crash can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Changed objects are saved every `save_interval` (60 s by default), when they deactivate
    /// and at a clean shutdown. A crash of the process (kill -9, power loss) loses the changes
    /// made since the last save, including acknowledged ones.
    #[default]
    Periodic,
    /// After every write turn (`&mut self` method, timer) the new state is committed before the
    /// reply is released; commits of many objects are grouped into one transaction. An
    /// acknowledged call's effect survives a crash. If the commit fails, the caller gets an
    /// error and the activation is discarded, so the next call starts from the committed state.
    WriteThrough,
}

/// Whether a method reads or writes the object: `&self` methods are reads, `&mut self` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// `&self`: may run alongside other reads, never during a write.
    Read,
    /// `&mut self`: runs alone.
    Write,
}

/// One method of an object type, as the `#[object]` macro describes it.
#[derive(Debug, Clone, Copy)]
pub struct MethodSpec {
    /// The wire name (`Add` for `fn add`).
    pub name: &'static str,
    /// Read or write.
    pub kind: MethodKind,
    /// The request message's full protobuf name.
    pub request: fn() -> &'static str,
    /// The response message's full protobuf name.
    pub response: fn() -> &'static str,
}

/// What the `#[object]` macro generates for a type: its name, its methods and name-free dispatch.
///
/// Not meant to be implemented by hand.
pub trait Dispatch: Object + Sized {
    /// The type name clients use.
    const TYPE_NAME: &'static str;
    /// The methods, indexed by position.
    const METHODS: &'static [MethodSpec];

    /// Runs method `method` (any kind) on an exclusive borrow.
    fn dispatch_mut(
        &mut self,
        method: usize,
        ctx: &ObjectContext,
        request: Payload,
    ) -> impl Future<Output = Result<Payload, CallError>> + Send;

    /// Runs read method `method` on a shared borrow.
    fn dispatch_ref(
        &self,
        method: usize,
        ctx: &ObjectContext,
        request: Payload,
    ) -> impl Future<Output = Result<Payload, CallError>> + Send;

    /// The index of the method with this wire name.
    fn method_index(name: &str) -> Option<usize> {
        Self::METHODS.iter().position(|m| m.name == name)
    }
}

/// The error an object method or hook returns: a code and a message.
///
/// Any `std::error::Error` converts into it with `?` (code [`ErrorCode::Unknown`]; a
/// [`CallError`] from a nested call keeps its code), so methods can use `?` freely.
pub struct ObjectError {
    code: ErrorCode,
    message: String,
}

impl ObjectError {
    /// An error with a chosen code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An application error with no particular code ([`ErrorCode::Unknown`]).
    pub fn msg(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unknown, message)
    }

    /// The request was invalid.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// Something the request named does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// The caller may not do this.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    /// An internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl fmt::Debug for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectError({}: {:?})", self.code, self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ObjectError {
    fn from(err: E) -> Self {
        if let Some(call) = (&err as &dyn std::any::Any).downcast_ref::<CallError>() {
            return Self::new(call.code(), call.message());
        }
        Self::msg(err.to_string())
    }
}

impl From<ObjectError> for CallError {
    fn from(err: ObjectError) -> Self {
        CallError::new(err.code, err.message)
    }
}

/// Serialises `value` as JSON state bytes (the helper behind [`json_state!`](crate::json_state)).
pub fn to_json_state<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ObjectError> {
    serde_json::to_vec(value)
        .map_err(|err| ObjectError::internal(format!("cannot encode state: {err}")))
}

/// Replaces `value` with the JSON state in `state` (the helper behind
/// [`json_state!`](crate::json_state)).
pub fn from_json_state<T: serde::de::DeserializeOwned>(
    value: &mut T,
    state: &[u8],
) -> Result<(), ObjectError> {
    *value = serde_json::from_slice(state)
        .map_err(|err| ObjectError::internal(format!("cannot decode saved state: {err}")))?;
    Ok(())
}

/// Inside `impl Object for T { ... }`: persist `T` as JSON through serde.
///
/// ```ignore
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Counter { value: i32 }
/// impl Object for Counter { goverse::json_state!(); }
/// ```
#[macro_export]
macro_rules! json_state {
    () => {
        const PERSISTENT: bool = true;
        fn snapshot(&self) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::ObjectError> {
            $crate::to_json_state(self)
        }
        fn restore(&mut self, state: &[u8]) -> ::core::result::Result<(), $crate::ObjectError> {
            $crate::from_json_state(self, state)
        }
    };
}
