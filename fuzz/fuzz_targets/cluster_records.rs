#![no_main]
//! `cargo fuzz run cluster_records`: see [`goverse_fuzz::cluster_records`].

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| goverse_fuzz::cluster_records(bytes));
