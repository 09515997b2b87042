//! Fuzz target `chunked`: see `wayfinder_fuzz::check::chunked` for the oracle.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wayfinder_fuzz::check::chunked(data));
