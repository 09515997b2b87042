//! Fuzz target `config`: see `wayfinder_fuzz::check::config` for the oracle.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wayfinder_fuzz::check::config(data));
