//! The gate's HTTP body decoding as a stranger's bytes reach it, for the fuzz targets in
//! `fuzz/` and their corpus tests. Not part of the API.

use crate::codec::Catalog;
use crate::http::request_of_body;

/// The body of `POST /api/v1/objects/call/{type}/{id}/{method}`, read as the handler reads
/// it, for the method of `catalog` that the first byte picks (the rest is the body).
///
/// Panics, a finding, when a body the gate turns away gets anything but a client error
/// (4xx: the request was wrong, not the gate), or when a plain-JSON request does not survive
/// the way back: rendered as JSON and read again, it must read the same.
pub fn http_call_body(catalog: &Catalog, bytes: &[u8]) {
    let Some((&pick, body)) = bytes.split_first() else {
        return;
    };
    let methods: Vec<(&str, &str)> = catalog
        .type_names()
        .into_iter()
        .flat_map(|t| catalog.method_names(t).into_iter().map(move |m| (t, m)))
        .collect();
    let (object_type, method) = methods
        .get(usize::from(pick) % methods.len().max(1))
        .copied()
        .unwrap_or(("NoSuchType", "NoSuchMethod"));
    match request_of_body(catalog, object_type, method, body) {
        Err(refused) => assert!(
            refused.status().is_client_error(),
            "{object_type}.{method}: a bad body answered {} {:?}",
            refused.status(),
            refused.message()
        ),
        Ok((_, _, true)) => {}
        Ok((request, _, false)) => {
            let json = catalog
                .any_to_json(&request)
                .expect("an accepted request renders as JSON");
            let text = serde_json::to_vec(&json).expect("JSON text");
            let again = catalog
                .json_to_any(type_name(&request.type_url), &text)
                .unwrap_or_else(|err| {
                    panic!("{object_type}.{method}: {json} does not read back: {err}")
                });
            let json_again = catalog.any_to_json(&again).expect("renders again");
            assert_eq!(json, json_again, "{object_type}.{method}: JSON round trip");
        }
    }
}

fn type_name(url: &str) -> &str {
    goverse_core::type_name_of_url(url)
}
