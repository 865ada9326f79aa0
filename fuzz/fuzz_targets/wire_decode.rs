//! Fuzz target `wire_decode`.
//!
//! Any bytes through the wire codec: `decode` never panics, and whatever decodes
//! re-encodes to bytes that decode to the same message.
//!
//! The body is `hybridsync_sim::fuzz::wire_decode`, shared with the regression tests
//! (`tests/tests/fuzz_regressions.rs`).
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybridsync_sim::fuzz::wire_decode(data));
