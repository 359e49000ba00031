#![no_main]
//! `cargo fuzz run persisted_state`: see [`goverse_fuzz::persisted_state`].

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| goverse_fuzz::persisted_state(bytes));
