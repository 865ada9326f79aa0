//! Fuzz target `frame_decoder`.
//!
//! A framed byte stream split at arbitrary chunk boundaries decodes exactly like
//! the whole stream; oversized length prefixes are refused as soon as they are buffered.
//!
//! The body is `hybridsync_sim::fuzz::frame_decoder`, shared with the regression tests
//! (`tests/tests/fuzz_regressions.rs`).
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybridsync_sim::fuzz::frame_decoder(data));
