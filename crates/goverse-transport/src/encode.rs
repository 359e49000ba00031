//! Requests encoded once, where they are made.
//!
//! A request leaves the caller as the bytes of its `goverse.node.v1.Request` message, written
//! straight from the caller's borrowed strings and payload into one buffer of exactly the
//! right size. The stream's writer then only frames those bytes into a `RequestBatch` (field 1,
//! repeated): no owned copy of every field is built, queued, encoded on another thread and
//! freed there, and a request sent again elsewhere is encoded again from what the caller still
//! holds. The bytes are the protobuf encoding prost produces for the same message (fields in
//! tag order, defaults left out), so the node's generated decoder reads them unchanged.

use std::time::Duration;

use bytes::BufMut;
use goverse_core::{ChainId, ClientIdentity};
use goverse_proto::node::ResponseBatch;
use prost::Message as _;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::{Op, Request};

/// Length-delimited wire type.
const LEN: u32 = 2;
/// Varint wire type.
const VARINT: u32 = 0;

fn varint_len(value: u64) -> usize {
    // 7 bits a byte; 0 still takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut value: u64, buf: &mut impl BufMut) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

fn put_key(tag: u32, wire_type: u32, buf: &mut impl BufMut) {
    put_varint(u64::from((tag << 3) | wire_type), buf);
}

/// A length-delimited field of `len` bytes, left out when empty (as proto3 leaves out an
/// empty string or bytes field).
fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + varint_len(len as u64) + len
    }
}

fn put_bytes_field(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    if !bytes.is_empty() {
        put_key(tag, LEN, buf);
        put_varint(bytes.len() as u64, buf);
        buf.put_slice(bytes);
    }
}

fn uint_field_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + varint_len(value)
    }
}

fn put_uint_field(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        put_key(tag, VARINT, buf);
        put_varint(value, buf);
    }
}

/// A nested message field of `len` bytes; present even when empty (a set message field is
/// always written).
fn message_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + varint_len(len as u64) + len
}

fn put_message_header(tag: u32, len: usize, buf: &mut impl BufMut) {
    put_key(tag, LEN, buf);
    put_varint(len as u64, buf);
}

/// `goverse.node.v1.Caller`'s body.
fn caller_len(caller: &ClientIdentity) -> usize {
    bytes_field_len(1, caller.client_id().len())
        + bytes_field_len(2, caller.user_id().len())
        + caller
            .roles()
            .map(|role| message_field_len(3, role.len()))
            .sum::<usize>()
}

fn put_caller(caller: &ClientIdentity, buf: &mut impl BufMut) {
    put_bytes_field(1, caller.client_id().as_bytes(), buf);
    put_bytes_field(2, caller.user_id().as_bytes(), buf);
    for role in caller.roles() {
        // Repeated strings keep empty elements.
        put_message_header(3, role.len(), buf);
        buf.put_slice(role.as_bytes());
    }
}

/// `google.protobuf.Any`'s body.
fn any_len(any: &prost_types::Any) -> usize {
    bytes_field_len(1, any.type_url.len()) + bytes_field_len(2, any.value.len())
}

fn put_any(any: &prost_types::Any, buf: &mut impl BufMut) {
    put_bytes_field(1, any.type_url.as_bytes(), buf);
    put_bytes_field(2, &any.value, buf);
}

/// The fields of one operation, borrowed from the request.
struct Fields<'r> {
    /// 2 = Call, 3 = Create, 4 = Delete (the `Request.op` oneof).
    op_tag: u32,
    object_type: &'r str,
    object_id: &'r str,
    method: &'r str,
    payload: Option<&'r prost_types::Any>,
    reliable_call_id: &'r str,
    chain: u64,
    timeout_micros: u64,
    caller: Option<&'r ClientIdentity>,
    from_client: bool,
}

impl Fields<'_> {
    /// The tags of chain, timeout and caller: Call has method and payload before them.
    fn tags(&self) -> (u32, u32, u32) {
        if self.op_tag == 2 {
            (5, 6, 7)
        } else {
            (3, 4, 5)
        }
    }

    /// The tag of `from_client`: after the reliable call id in Call, after the caller otherwise.
    fn client_flag_tag(&self) -> u32 {
        if self.op_tag == 2 { 9 } else { 6 }
    }

    fn body_len(&self, caller_len: usize, any_len: usize) -> usize {
        let (chain, timeout, caller) = self.tags();
        let mut len = bytes_field_len(1, self.object_type.len())
            + bytes_field_len(2, self.object_id.len())
            + uint_field_len(chain, self.chain)
            + uint_field_len(timeout, self.timeout_micros);
        if self.caller.is_some() {
            len += message_field_len(caller, caller_len);
        }
        if self.op_tag == 2 {
            len += bytes_field_len(3, self.method.len())
                + bytes_field_len(8, self.reliable_call_id.len());
            if self.payload.is_some() {
                len += message_field_len(4, any_len);
            }
        }
        len + uint_field_len(self.client_flag_tag(), u64::from(self.from_client))
    }

    fn put_body(&self, caller_len: usize, any_len: usize, buf: &mut impl BufMut) {
        let (chain, timeout, caller_tag) = self.tags();
        put_bytes_field(1, self.object_type.as_bytes(), buf);
        put_bytes_field(2, self.object_id.as_bytes(), buf);
        if self.op_tag == 2 {
            put_bytes_field(3, self.method.as_bytes(), buf);
            if let Some(any) = self.payload {
                put_message_header(4, any_len, buf);
                put_any(any, buf);
            }
        }
        put_uint_field(chain, self.chain, buf);
        put_uint_field(timeout, self.timeout_micros, buf);
        if let Some(caller) = self.caller {
            put_message_header(caller_tag, caller_len, buf);
            put_caller(caller, buf);
        }
        if self.op_tag == 2 {
            put_bytes_field(8, self.reliable_call_id.as_bytes(), buf);
        }
        put_uint_field(self.client_flag_tag(), u64::from(self.from_client), buf);
    }
}

/// The `goverse.node.v1.Request` message of request `id`, carrying `timeout` as its deadline,
/// in one buffer of exactly its size.
pub(crate) fn encode_request(id: u64, request: &Request<'_>, timeout: Duration) -> Vec<u8> {
    let (op_tag, method, payload, reliable_call_id) = match &request.op {
        Op::Call {
            method,
            request,
            reliable_call_id,
        } => (
            2,
            *method,
            request.as_ref(),
            reliable_call_id.unwrap_or_default(),
        ),
        Op::Create => (3, "", None, ""),
        Op::Delete => (4, "", None, ""),
    };
    let fields = Fields {
        op_tag,
        object_type: request.object_type,
        object_id: request.object_id,
        method,
        payload,
        reliable_call_id,
        chain: request.chain.map_or(0, ChainId::raw),
        timeout_micros: crate::wire::micros(Some(timeout)),
        caller: request.caller.as_deref(),
        from_client: request.from_client,
    };
    let caller_len = fields.caller.map_or(0, caller_len);
    let any_len = fields.payload.map_or(0, any_len);
    let body_len = fields.body_len(caller_len, any_len);
    let len = uint_field_len(1, id) + message_field_len(op_tag, body_len);
    let mut buf = Vec::with_capacity(len);
    put_uint_field(1, id, &mut buf);
    put_message_header(op_tag, body_len, &mut buf);
    fields.put_body(caller_len, any_len, &mut buf);
    debug_assert_eq!(buf.len(), len, "encoded length");
    buf
}

/// The client half's codec for the `Open` stream: it writes batches of requests already
/// encoded ([`encode_request`]) as a `RequestBatch`, and reads `ResponseBatch`es as prost's
/// codec would.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BatchCodec;

/// Requests encoded by [`encode_request`], written as one `RequestBatch`.
pub(crate) type EncodedBatch = Vec<Vec<u8>>;

impl Codec for BatchCodec {
    type Encode = EncodedBatch;
    type Decode = ResponseBatch;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for BatchCodec {
    type Item = EncodedBatch;
    type Error = Status;

    fn encode(&mut self, item: EncodedBatch, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(framed_len(&item));
        frame_batch(&item, dst);
        Ok(())
    }
}

/// The length of `batch` framed by [`frame_batch`].
pub(crate) fn framed_len(batch: &EncodedBatch) -> usize {
    batch.iter().map(|r| message_field_len(1, r.len())).sum()
}

/// Writes `batch` as a `RequestBatch`: field 1 (repeated Request), once per request.
pub(crate) fn frame_batch(batch: &EncodedBatch, dst: &mut impl BufMut) {
    for request in batch {
        put_message_header(1, request.len(), dst);
        dst.put_slice(request);
    }
}

impl Decoder for BatchCodec {
    type Item = ResponseBatch;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ResponseBatch>, Status> {
        ResponseBatch::decode(src)
            .map(Some)
            .map_err(|err| Status::internal(format!("undecodable response batch: {err}")))
    }
}

/// What the node's generated decoder reads from an [`EncodedBatch`] (for tests).
#[cfg(test)]
fn decoded(batch: &EncodedBatch) -> goverse_proto::node::RequestBatch {
    let mut framed = Vec::new();
    frame_batch(batch, &mut framed);
    goverse_proto::node::RequestBatch::decode(framed.as_slice()).expect("a valid RequestBatch")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use goverse_proto::node::{self as proto, request};
    use proptest::prelude::*;

    use super::*;

    /// What prost encodes for `request` (the reference encoding).
    fn by_prost(id: u64, request: &Request<'_>, timeout: Duration) -> Vec<u8> {
        let mut op = crate::wire::request_to_proto(request);
        crate::wire::set_timeout(&mut op, timeout);
        proto::Request { id, op: Some(op) }.encode_to_vec()
    }

    fn call<'a>(
        object_id: &'a str,
        method: &'a str,
        payload: Option<prost_types::Any>,
        reliable_call_id: Option<&'a str>,
        caller: Option<Arc<ClientIdentity>>,
        chain: Option<ChainId>,
    ) -> Request<'a> {
        Request {
            object_type: "Counter",
            object_id,
            op: Op::Call {
                method,
                request: payload,
                reliable_call_id,
            },
            chain,
            timeout: None,
            caller,
            from_client: false,
        }
    }

    #[test]
    fn every_operation_encodes_as_prost_does() {
        let identity = Arc::new(ClientIdentity::new(
            "127.0.0.1:49000/c1",
            "alice",
            ["admin", "", "ops"],
        ));
        let any = prost_types::Any {
            type_url: "type.googleapis.com/google.protobuf.Int32Value".into(),
            value: vec![8, 1],
        };
        let cases = [
            call("counter-1", "Add", Some(any.clone()), None, None, None),
            call(
                "shard#7/x",
                "Add",
                Some(any),
                Some("call-1"),
                Some(identity.clone()),
                Some(ChainId::from_raw(u64::MAX)),
            ),
            // An empty payload message and an empty object ID (refused by the node, but
            // carried faithfully).
            call(
                "",
                "Get",
                Some(prost_types::Any::default()),
                None,
                None,
                None,
            ),
            call("c", "Get", None, None, Some(identity.clone()), None),
            Request {
                op: Op::Create,
                caller: Some(identity.clone()),
                chain: Some(ChainId::from_raw(3)),
                ..call("created", "", None, None, None, None)
            },
            Request {
                op: Op::Delete,
                ..call("deleted", "", None, None, None, None)
            },
            Request {
                from_client: true,
                ..call("from-a-gate", "Add", None, Some("c"), None, None)
            },
            Request {
                op: Op::Create,
                from_client: true,
                ..call("created-by-a-client", "", None, None, None, None)
            },
            Request {
                op: Op::Delete,
                from_client: true,
                ..call("deleted-by-a-client", "", None, None, None, None)
            },
        ];
        for (n, request) in cases.iter().enumerate() {
            for (id, timeout) in [
                (1, Duration::from_secs(5)),
                (u64::MAX, Duration::MAX),
                (300, Duration::ZERO),
            ] {
                assert_eq!(
                    encode_request(id, request, timeout),
                    by_prost(id, request, timeout),
                    "case {n}, id {id}, timeout {timeout:?}"
                );
            }
        }
    }

    #[test]
    fn a_batch_reads_back_as_its_requests() {
        let one = call("a", "Add", None, None, None, None);
        let two = call("b", "Get", None, Some("r"), None, None);
        let batch = vec![
            encode_request(1, &one, Duration::from_secs(1)),
            encode_request(2, &two, Duration::from_secs(2)),
        ];
        let read = decoded(&batch);
        assert_eq!(read.requests.len(), 2);
        assert_eq!(read.requests[1].id, 2);
        let Some(request::Op::Call(call)) = &read.requests[1].op else {
            panic!("not a call: {:?}", read.requests[1]);
        };
        assert_eq!(
            (call.object_id.as_str(), call.method.as_str()),
            ("b", "Get")
        );
        assert_eq!(call.reliable_call_id, "r");
        assert_eq!(call.timeout_micros, 2_000_000);
    }

    proptest! {
        #[test]
        fn any_call_encodes_as_prost_does(
            id in any::<u64>(),
            object_id in ".{0,40}",
            method in "[A-Za-z]{0,12}",
            value in proptest::collection::vec(any::<u8>(), 0..300),
            type_url in ".{0,60}",
            with_payload in any::<bool>(),
            reliable in proptest::option::of("[a-z0-9-]{0,20}"),
            chain in any::<u64>(),
            timeout_micros in any::<u64>(),
            roles in proptest::option::of(proptest::collection::vec(".{0,8}", 0..4)),
            from_client in any::<bool>(),
        ) {
            let caller = roles.map(|roles| {
                Arc::new(ClientIdentity::new("gate/c", "u", roles))
            });
            let payload = with_payload.then_some(prost_types::Any { type_url, value });
            let request = Request {
                from_client,
                ..call(
                    &object_id,
                    &method,
                    payload,
                    reliable.as_deref(),
                    caller,
                    (chain != 0).then(|| ChainId::from_raw(chain)),
                )
            };
            let timeout = Duration::from_micros(timeout_micros);
            prop_assert_eq!(encode_request(id, &request, timeout), by_prost(id, &request, timeout));
        }
    }
}
