//! The object types a gate can reach and the JSON ⇄ protobuf translation built on the message
//! descriptors that nodes publish.
//!
//! JSON follows protobuf's JSON mapping (prost-reflect implements it), with one exception made
//! for people typing requests by hand: the wrapper types (`google.protobuf.Int32Value`, ...)
//! are written as the object `{"value": 5}` and accepted either as that object or as the bare
//! value the mapping prescribes.

use std::collections::HashMap;
use std::sync::Arc;

use goverse_core::{CallError, ErrorCode, TYPE_URL_PREFIX, type_name_of_url};
use goverse_proto::node::DescribeResponse;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

/// Why a node's message descriptors cannot be loaded.
#[derive(Debug, thiserror::Error)]
enum DescriptorError {
    /// The descriptor set is not a `FileDescriptorSet`.
    #[error("the descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The files do not form a consistent pool.
    #[error("the descriptors do not fit together: {0}")]
    Pool(#[from] prost_reflect::DescriptorError),
}

/// One method of an object type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// Full name of the request message.
    pub request_type: String,
    /// Full name of the response message.
    pub response_type: String,
}

/// Object types, their methods and the descriptors of their messages.
#[derive(Debug, Clone)]
pub struct Catalog {
    types: HashMap<String, HashMap<String, MethodInfo>>,
    pool: DescriptorPool,
    described: Option<DescribeResponse>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            types: HashMap::new(),
            pool: DescriptorPool::global(),
            described: None,
        }
    }
}

const WRAPPERS: [&str; 9] = [
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

fn is_wrapper(name: &str) -> bool {
    WRAPPERS.contains(&name)
}

impl Catalog {
    /// Builds a catalog from a node's `Describe` answer. Descriptors that do not load are logged
    /// and skipped: their types still work with base64 envelopes, just not with plain JSON.
    pub fn from_describe(describe: &DescribeResponse) -> Self {
        let mut catalog = Self::default();
        for t in &describe.types {
            let methods = t
                .methods
                .iter()
                .map(|m| {
                    (
                        m.name.clone(),
                        MethodInfo {
                            request_type: m.request_type.clone(),
                            response_type: m.response_type.clone(),
                        },
                    )
                })
                .collect();
            catalog.types.insert(t.name.clone(), methods);
        }
        if !describe.file_descriptor_set.is_empty()
            && let Err(err) = catalog.add_descriptors(&describe.file_descriptor_set)
        {
            tracing::warn!(node = %describe.node_address, cause = %err,
                "cannot load the node's message descriptors; plain JSON is unavailable for its types");
        }
        catalog.described = Some(describe.clone());
        catalog
    }

    /// The `Describe` answer the catalog was built from.
    pub fn described(&self) -> Option<&DescribeResponse> {
        self.described.as_ref()
    }

    fn add_descriptors(&mut self, encoded: &[u8]) -> Result<(), DescriptorError> {
        let set = prost_types::FileDescriptorSet::decode(encoded)?;
        // Files the pool already has (the well-known types, or a file repeated in two sets) are
        // skipped rather than reported as conflicts.
        let mut seen = std::collections::HashSet::new();
        let files: Vec<_> = set
            .file
            .into_iter()
            .filter(|f| {
                let name = f.name();
                self.pool.get_file_by_name(name).is_none() && seen.insert(name.to_owned())
            })
            .collect();
        self.pool.add_file_descriptor_protos(files)?;
        Ok(())
    }

    /// Whether the catalog knows any types yet.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The type names, sorted.
    pub fn type_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.types.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The method names of `object_type`, sorted (none for an unknown type).
    pub fn method_names(&self, object_type: &str) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .types
            .get(object_type)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        names.sort_unstable();
        names
    }

    /// The method `object_type.method`, or the error a client should see.
    pub fn method(&self, object_type: &str, method: &str) -> Result<&MethodInfo, CallError> {
        let methods = self
            .types
            .get(object_type)
            .ok_or_else(|| CallError::unknown_type(object_type))?;
        methods
            .get(method)
            .ok_or_else(|| CallError::unknown_method(object_type, method))
    }

    fn descriptor(&self, message: &str) -> Result<MessageDescriptor, CallError> {
        self.pool.get_message_by_name(message).ok_or_else(|| {
            CallError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "no descriptor for message {message}: the node did not publish it, so only \
                     base64 Any envelopes work for this method"
                ),
            )
        })
    }

    /// Encodes the JSON `body` as message `message` inside an Any.
    pub fn json_to_any(&self, message: &str, body: &[u8]) -> Result<prost_types::Any, CallError> {
        let desc = self.descriptor(message)?;
        let invalid = |e: serde_json::Error| {
            CallError::invalid_argument(format!("invalid JSON for {message}: {e}"))
        };
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            body
        };
        let dynamic = if is_wrapper(message) {
            let mut value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
            if let serde_json::Value::Object(map) = &mut value {
                value = match (map.len(), map.remove("value")) {
                    (0, _) => serde_json::Value::Null,
                    (1, Some(inner)) => inner,
                    _ => {
                        return Err(CallError::invalid_argument(format!(
                            "invalid JSON for {message}: expected {{\"value\": …}} or a bare value"
                        )));
                    }
                };
            }
            if value.is_null() {
                DynamicMessage::new(desc)
            } else {
                DynamicMessage::deserialize(desc, value).map_err(invalid)?
            }
        } else {
            let mut de = serde_json::Deserializer::from_slice(body);
            let dynamic = DynamicMessage::deserialize(desc, &mut de).map_err(invalid)?;
            de.end().map_err(invalid)?;
            dynamic
        };
        Ok(prost_types::Any {
            type_url: format!("{TYPE_URL_PREFIX}{message}"),
            value: dynamic.encode_to_vec(),
        })
    }

    /// Renders the message in `any` as JSON.
    pub fn any_to_json(&self, any: &prost_types::Any) -> Result<serde_json::Value, CallError> {
        let name = type_name_of_url(&any.type_url);
        let desc = self.pool.get_message_by_name(name).ok_or_else(|| {
            CallError::internal(format!("no descriptor for response message {name}"))
        })?;
        let dynamic = DynamicMessage::decode(desc, any.value.as_slice())
            .map_err(|e| CallError::internal(format!("cannot decode {name}: {e}")))?;
        let options = SerializeOptions::new().skip_default_fields(false);
        let value = dynamic
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| CallError::internal(format!("cannot render {name} as JSON: {e}")))?;
        Ok(if is_wrapper(name) {
            serde_json::json!({ "value": value })
        } else {
            value
        })
    }

    /// Whether message `message` has a field named `field` (JSON or proto name).
    pub fn has_field(&self, message: &str, field: &str) -> bool {
        self.pool.get_message_by_name(message).is_some_and(|d| {
            d.get_field_by_name(field).is_some() || d.get_field_by_json_name(field).is_some()
        })
    }
}

/// A catalog shared between the node link (which replaces it) and request handlers.
pub(crate) type SharedCatalog = Arc<parking_lot::RwLock<Arc<Catalog>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use goverse_core::wkt::Int32Value;
    use prost::Name;

    #[test]
    fn wrappers_are_objects_both_ways() {
        let catalog = Catalog::default();
        let name = Int32Value::full_name();
        for body in [&b"{\"value\": 5}"[..], b"5"] {
            let any = catalog.json_to_any(&name, body).unwrap();
            assert_eq!(Int32Value::decode(any.value.as_slice()).unwrap().value, 5);
            assert_eq!(
                catalog.any_to_json(&any).unwrap(),
                serde_json::json!({"value": 5})
            );
        }
        let any = catalog.json_to_any(&name, b"").unwrap();
        assert_eq!(
            catalog.any_to_json(&any).unwrap(),
            serde_json::json!({"value": 0})
        );
        let err = catalog.json_to_any(&name, b"{\"valu\": 5}").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        let err = catalog
            .json_to_any(&name, b"{\"value\": \"five\"}")
            .unwrap_err();
        assert!(
            err.message()
                .contains("invalid JSON for google.protobuf.Int32Value"),
            "{err}"
        );
        // Found by the fuzzer: a double is read correctly rounded, as Rust reads it, so a value
        // rendered and read again stays the same (serde_json's default parser can be 1 ulp off).
        let text = "-1.0544444444444444444444444";
        let any = catalog
            .json_to_any("google.protobuf.DoubleValue", text.as_bytes())
            .unwrap();
        let value = goverse_core::wkt::DoubleValue::decode(any.value.as_slice()).unwrap();
        assert_eq!(
            value.value.to_bits(),
            text.parse::<f64>().unwrap().to_bits()
        );
        let err = catalog.json_to_any("no.Such", b"{}").unwrap_err();
        assert!(
            err.message().contains("no descriptor for message no.Such"),
            "{err}"
        );
    }
}
