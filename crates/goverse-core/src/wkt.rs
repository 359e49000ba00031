//! The protobuf well-known wrapper messages (`google/protobuf/wrappers.proto`, `empty.proto`).
//!
//! prost maps these to Rust primitives inside generated code, so they are defined here as
//! messages in their own right: the same names, package and field numbers, hence the same bytes
//! and `Any` type URLs as upstream's Go clients send.

macro_rules! wrapper {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $kind:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct $name {
            /// The wrapped value.
            #[prost($kind, tag = "1")]
            pub value: $ty,
        }

        impl ::prost::Name for $name {
            const NAME: &'static str = stringify!($name);
            const PACKAGE: &'static str = "google.protobuf";
        }

        impl From<$ty> for $name {
            fn from(value: $ty) -> Self {
                Self { value }
            }
        }
    };
}

wrapper!(
    /// `google.protobuf.BoolValue`.
    BoolValue, bool, bool
);
wrapper!(
    /// `google.protobuf.Int32Value`.
    Int32Value, i32, int32
);
wrapper!(
    /// `google.protobuf.Int64Value`.
    Int64Value, i64, int64
);
wrapper!(
    /// `google.protobuf.UInt32Value`.
    UInt32Value, u32, uint32
);
wrapper!(
    /// `google.protobuf.UInt64Value`.
    UInt64Value, u64, uint64
);
wrapper!(
    /// `google.protobuf.FloatValue`.
    FloatValue, f32, float
);
wrapper!(
    /// `google.protobuf.DoubleValue`.
    DoubleValue, f64, double
);
wrapper!(
    /// `google.protobuf.StringValue`.
    StringValue, ::prost::alloc::string::String, string
);
wrapper!(
    /// `google.protobuf.BytesValue`.
    BytesValue, ::prost::alloc::vec::Vec<u8>, bytes
);

/// `google.protobuf.Empty`.
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct Empty {}

impl ::prost::Name for Empty {
    const NAME: &'static str = "Empty";
    const PACKAGE: &'static str = "google.protobuf";
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn wire_bytes_match_protobuf() {
        // field 1, varint 5
        assert_eq!(Int32Value { value: 5 }.encode_to_vec(), vec![0x08, 0x05]);
        assert_eq!(Empty {}.encode_to_vec(), Vec::<u8>::new());
        assert_eq!(
            StringValue { value: "hi".into() }.encode_to_vec(),
            vec![0x0a, 0x02, b'h', b'i']
        );
    }
}
