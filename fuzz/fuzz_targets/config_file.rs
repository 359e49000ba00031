#![no_main]
//! `cargo fuzz run config_file`: see [`goverse_fuzz::config_file`].

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| goverse_fuzz::config_file(bytes));
