use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use crate::CallError;

/// The type URL prefix upstream clients put in `google.protobuf.Any`.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// A protobuf message GoVerse can carry as a request or response.
///
/// Implemented for every prost message that also implements [`prost::Name`] (prost-build's
/// `enable_type_names()`; the well-known wrappers in [`crate::wkt`] do).
pub trait Message: prost::Message + prost::Name + Default + Send + Sync + 'static {}

impl<T> Message for T where T: prost::Message + prost::Name + Default + Send + Sync + 'static {}

/// A message type's names, made once per type and process.
#[derive(Clone, Copy)]
struct Names {
    full: &'static str,
    type_url: &'static str,
}

/// The names of `M`. [`prost::Name::full_name`] builds a new string on every call; calls carry
/// messages by name on every hop, so each type's names are built once, kept for the life of
/// the process (one pair per message type), and found again through a per-thread table
/// without a lock.
fn names_of<M: prost::Name + 'static>() -> Names {
    /// Every type's names, made once.
    static MADE: Mutex<Option<HashMap<TypeId, Names>>> = Mutex::new(None);
    thread_local! {
        static SEEN: RefCell<HashMap<TypeId, Names>> = RefCell::new(HashMap::new());
    }
    let key = TypeId::of::<M>();
    if let Some(names) = SEEN.with_borrow(|seen| seen.get(&key).copied()) {
        return names;
    }
    let names = *MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert_with(|| {
            let full = M::full_name();
            Names {
                type_url: Box::leak(format!("{TYPE_URL_PREFIX}{full}").into_boxed_str()),
                full: Box::leak(full.into_boxed_str()),
            }
        });
    SEEN.with_borrow_mut(|seen| seen.insert(key, names));
    names
}

/// The fully-qualified protobuf name of `M` (e.g. `google.protobuf.Int32Value`), without
/// building a string each time.
pub fn message_name<M: prost::Name + 'static>() -> &'static str {
    names_of::<M>().full
}

/// The type URL of `M` in `google.protobuf.Any` (with the `type.googleapis.com/` prefix).
pub fn message_type_url<M: prost::Name + 'static>() -> &'static str {
    names_of::<M>().type_url
}

/// A message behind a pointer: the typed form a payload takes inside one process.
pub trait AnyMessage: Send + Sync + 'static {
    /// The fully-qualified protobuf name, e.g. `google.protobuf.Int32Value`.
    fn full_name(&self) -> String {
        self.name().to_owned()
    }
    /// [`AnyMessage::full_name`], without a new string.
    fn name(&self) -> &'static str;
    /// Encodes as `google.protobuf.Any` (type URL with the `type.googleapis.com/` prefix).
    fn to_any(&self) -> prost_types::Any;
    /// For downcasting to the concrete message.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    /// For inspecting without taking ownership.
    fn as_any(&self) -> &(dyn Any + Send);
}

impl<T: Message> AnyMessage for T {
    fn name(&self) -> &'static str {
        message_name::<T>()
    }

    fn to_any(&self) -> prost_types::Any {
        prost_types::Any {
            type_url: message_type_url::<T>().to_owned(),
            value: self.encode_to_vec(),
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn as_any(&self) -> &(dyn Any + Send) {
        self
    }
}

/// The part of a type URL after its last `/`: the message's full name.
pub fn type_name_of_url(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// A request or response in flight.
///
/// Inside one process a call moves the typed message and nothing is encoded; a call arriving
/// from the wire carries the `Any` its client sent, decoded only by the method that takes it.
pub enum Payload {
    /// A typed message, moved without encoding.
    Typed(Box<dyn AnyMessage>),
    /// An encoded message as upstream clients send it.
    Encoded(prost_types::Any),
}

impl Payload {
    /// Wraps a typed message.
    pub fn typed<M: Message>(message: M) -> Self {
        Self::Typed(Box::new(message))
    }

    /// The message's full protobuf name (from the type URL when encoded).
    pub fn full_name(&self) -> String {
        match self {
            Self::Typed(m) => m.full_name(),
            Self::Encoded(any) => type_name_of_url(&any.type_url).to_owned(),
        }
    }

    /// Takes the message as `M`, decoding it if it arrived encoded.
    ///
    /// Fails with `InvalidArgument` naming both types when the payload holds another message, or
    /// naming the decode error when the bytes are not a valid `M`.
    pub fn into_message<M: Message>(self) -> Result<M, CallError> {
        self.into_message_or(|got| {
            CallError::invalid_argument(format!(
                "payload is a {got:?}, expected {}",
                message_name::<M>()
            ))
        })
    }

    /// [`Payload::into_message`] with the caller's error for a payload of another type (given the
    /// name of the type it holds). The type is checked once, without allocating for a typed
    /// payload of the right type.
    pub fn into_message_or<M: Message>(
        self,
        mismatch: impl FnOnce(&str) -> CallError,
    ) -> Result<M, CallError> {
        match self {
            Self::Typed(m) => {
                if !m.as_any().is::<M>() {
                    return Err(mismatch(m.name()));
                }
                let m = m.into_any().downcast::<M>().expect("type checked above");
                Ok(*m)
            }
            Self::Encoded(any) => {
                let got = type_name_of_url(&any.type_url);
                if got != message_name::<M>() {
                    return Err(mismatch(got));
                }
                M::decode(any.value.as_slice()).map_err(|err| {
                    CallError::invalid_argument(format!(
                        "malformed {} payload: {err}",
                        message_name::<M>()
                    ))
                })
            }
        }
    }

    /// Whether the payload holds the message with this full name (no allocation when encoded).
    pub fn has_name(&self, full_name: &str) -> bool {
        match self {
            Self::Typed(m) => m.name() == full_name,
            Self::Encoded(any) => type_name_of_url(&any.type_url) == full_name,
        }
    }

    /// The payload's `google.protobuf.Any` encoding (what a reliable-call record keeps), without
    /// consuming it.
    pub fn encoded_any(&self) -> Vec<u8> {
        use prost::Message as _;
        match self {
            Self::Typed(m) => m.to_any().encode_to_vec(),
            Self::Encoded(any) => any.encode_to_vec(),
        }
    }

    /// The payload as `google.protobuf.Any`, encoding it if it is typed.
    pub fn into_any(self) -> prost_types::Any {
        match self {
            Self::Typed(m) => m.to_any(),
            Self::Encoded(any) => any,
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Typed(m) => write!(f, "Payload::Typed({})", m.name()),
            Self::Encoded(any) => write!(
                f,
                "Payload::Encoded({}, {} bytes)",
                any.type_url,
                any.value.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wkt::{Int32Value, StringValue};

    #[test]
    fn names_are_made_once_and_agree_with_prost_on_every_thread() {
        let first = message_name::<Int32Value>();
        assert_eq!(first, <Int32Value as prost::Name>::full_name());
        assert_eq!(message_name::<StringValue>(), "google.protobuf.StringValue");
        assert_eq!(
            message_type_url::<Int32Value>(),
            "type.googleapis.com/google.protobuf.Int32Value"
        );
        let elsewhere = std::thread::spawn(|| message_name::<Int32Value>().as_ptr() as usize)
            .join()
            .unwrap();
        assert_eq!(first.as_ptr() as usize, elsewhere, "one copy per process");
    }

    #[test]
    fn typed_round_trip_moves_without_encoding() {
        let p = Payload::typed(Int32Value { value: 7 });
        assert!(p.has_name("google.protobuf.Int32Value"));
        assert!(!p.has_name("google.protobuf.Empty"));
        assert_eq!(p.full_name(), "google.protobuf.Int32Value");
        assert_eq!(p.into_message::<Int32Value>().unwrap().value, 7);
    }

    #[test]
    fn encoded_round_trip_uses_upstream_type_urls() {
        let any = Payload::typed(Int32Value { value: 42 }).into_any();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/google.protobuf.Int32Value"
        );
        let back = Payload::Encoded(any).into_message::<Int32Value>().unwrap();
        assert_eq!(back.value, 42);
    }

    #[test]
    fn wrong_type_and_garbage_are_named() {
        let err = Payload::typed(StringValue { value: "x".into() })
            .into_message::<Int32Value>()
            .unwrap_err();
        assert!(
            err.message().contains("google.protobuf.Int32Value"),
            "{err}"
        );

        let any = prost_types::Any {
            type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
            value: vec![],
        };
        let err = Payload::Encoded(any)
            .into_message::<Int32Value>()
            .unwrap_err();
        assert!(err.message().contains("StringValue"), "{err}");

        let any = prost_types::Any {
            type_url: "type.googleapis.com/google.protobuf.Int32Value".into(),
            value: vec![0x08, 0xff, 0xff],
        };
        let err = Payload::Encoded(any)
            .into_message::<Int32Value>()
            .unwrap_err();
        assert!(err.message().contains("malformed"), "{err}");
    }
}
