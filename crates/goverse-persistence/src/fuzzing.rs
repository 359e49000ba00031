//! How stored state is read back, as damaged or hostile bytes reach it, for the fuzz targets
//! in `fuzz/` and their corpus tests. Not part of the API.

use crate::{ReliableResult, json_column, result_of_columns};

/// Object state through PostgreSQL's JSON column: any bytes are stored as JSON the column
/// accepts and come back unchanged; any text found in the column reads back without a panic.
pub fn json_column(bytes: &[u8]) {
    let stored = json_column::encode(bytes).into_owned();
    serde_json::from_slice::<serde::de::IgnoredAny>(&stored).unwrap_or_else(|err| {
        panic!(
            "stored text is not JSON ({err}): {:?}",
            String::from_utf8_lossy(&stored)
        )
    });
    assert!(
        !json_column::has_escape_jsonb_refuses(&stored),
        "stored text holds an escape JSONB refuses: {:?}",
        String::from_utf8_lossy(&stored)
    );
    assert_eq!(
        json_column::decode(stored).expect("our own wrapper decodes"),
        bytes,
        "state round trip"
    );
    // The bytes as if found in the column.
    let _ = json_column::decode(bytes.to_vec());
}

/// A reliable call's record as its columns hold it (status, result, code, message), split
/// from `bytes` at NULs: a known status reads back as what it names, any other is an error
/// naming it.
pub fn reliable_record(bytes: &[u8]) {
    let mut parts = bytes.splitn(4, |&b| b == 0);
    let text = |p: Option<&[u8]>| p.map(|p| String::from_utf8_lossy(p).into_owned());
    let status = text(parts.next()).unwrap_or_default();
    let result = parts.next().map(<[u8]>::to_vec);
    let (code, message) = (text(parts.next()), text(parts.next()));
    match result_of_columns("fuzz", &status, result.clone(), code, message) {
        Ok(Some(ReliableResult::Success(value))) => {
            assert_eq!(status, "success");
            assert_eq!(value, result.unwrap_or_default());
        }
        Ok(Some(ReliableResult::Failed { .. })) => assert_eq!(status, "failed"),
        Ok(None) => assert!(status == "pending" || status == "skipped", "{status:?}"),
        Err(err) => assert!(err.to_string().contains("unknown status"), "{err}"),
    }
}
