#![no_main]
//! `cargo fuzz run gate_http_body`: see [`goverse_fuzz::gate_http_body`].

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| goverse_fuzz::gate_http_body(bytes));
