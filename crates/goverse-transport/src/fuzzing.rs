//! The node protocol's decoders as a stranger's bytes reach them, for the fuzz targets in
//! `fuzz/` and their corpus tests. Not part of the API.
//!
//! Each function reads its input the way the running code does and panics only when an
//! invariant breaks: a panic is a finding.

use std::time::Duration;

use goverse_proto::node::{self as proto, RequestBatch, ResponseBatch, request};
use prost::Message as _;

use crate::encode::{EncodedBatch, encode_request, frame_batch, framed_len};
use crate::wire::{Received, failure_of, failure_to_error, outcome_of, reliable_from_proto};

/// A `RequestBatch` as a node's reader takes it: decoded, each request turned into the
/// runtime's [`crate::Request`]. Whatever decodes must come back unchanged when the caller's
/// hand-written encoder writes it again and the batch framing wraps it: the encoder and the
/// generated decoder agree on every message a peer can send.
pub fn request_batch(bytes: &[u8]) {
    let Ok(batch) = RequestBatch::decode(bytes) else {
        return;
    };
    let mut encoded: EncodedBatch = Vec::with_capacity(batch.requests.len());
    let mut expected = Vec::with_capacity(batch.requests.len());
    for sent in batch.requests {
        let Some(mut received) = Received::from_proto(sent.op.clone()) else {
            continue;
        };
        let request = received.request();
        // A request with no deadline is sent on with the shortest one the wire can carry.
        let timeout = request.timeout.unwrap_or(Duration::from_micros(1));
        encoded.push(encode_request(sent.id, &request, timeout));
        expected.push(normalised(sent));
    }
    let mut framed = Vec::with_capacity(framed_len(&encoded));
    frame_batch(&encoded, &mut framed);
    assert_eq!(framed.len(), framed_len(&encoded), "framed length");
    let again = RequestBatch::decode(framed.as_slice()).expect("our own batch decodes");
    assert_eq!(again.requests, expected, "re-encoded requests differ");
}

/// What a request reads as after the runtime has it: the deadline it is sent on with, a call's
/// empty reliable-call id as none.
fn normalised(mut sent: proto::Request) -> proto::Request {
    match sent.op.as_mut() {
        Some(request::Op::Call(call)) => call.timeout_micros = call.timeout_micros.max(1),
        Some(request::Op::Create(create)) => create.timeout_micros = create.timeout_micros.max(1),
        Some(request::Op::Delete(delete)) => delete.timeout_micros = delete.timeout_micros.max(1),
        None => {}
    }
    sent
}

/// A `ResponseBatch` as a link's reader takes it: each response made the caller's outcome, a
/// failure's code and message kept through the error type and back.
pub fn response_batch(bytes: &[u8]) {
    let Ok(batch) = ResponseBatch::decode(bytes) else {
        return;
    };
    for response in batch.responses {
        if let Some(proto::response::Result::Failure(failure)) = &response.result {
            let err = failure_to_error(failure.clone());
            let back = failure_of(&err);
            assert_eq!(back.message, failure.message, "a failure's message");
            assert_eq!(back.not_served, failure.not_served, "not served");
            if !failure.not_served && goverse_core::ErrorCode::from_name(&failure.code).is_some() {
                assert_eq!(back.code, failure.code, "a known code");
            }
        }
        if let Some(proto::response::Result::Reliable(reliable)) = &response.result {
            let _ = reliable_from_proto(reliable.clone());
        }
        let _ = outcome_of(response.result);
    }
}
