#![no_main]
//! `cargo fuzz run node_requests`: see [`goverse_fuzz::node_requests`].

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| goverse_fuzz::node_requests(bytes));
