//! Fuzz target `response_head`: see `wayfinder_fuzz::check::response` for the oracle.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wayfinder_fuzz::check::response(data));
