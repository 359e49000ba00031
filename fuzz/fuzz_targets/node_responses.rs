#![no_main]
//! `cargo fuzz run node_responses`: see [`goverse_fuzz::node_responses`].

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| goverse_fuzz::node_responses(bytes));
