#![no_main]
//! `cargo fuzz run object_id`: see [`goverse_fuzz::object_id`].

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| goverse_fuzz::object_id(bytes));
