//! Fuzz target `request_head`: see `wayfinder_fuzz::check::request` for the oracle.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wayfinder_fuzz::check::request(data));
