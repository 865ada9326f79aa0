//! Fuzz target `engine_inputs`.
//!
//! One `Replica` with a `MemStore` fed arbitrary inputs (messages from members
//! and strangers, commands, delayed and reordered storage completions, time): it never
//! panics and its invariants hold after every step.
//!
//! The body is `hybridsync_sim::fuzz::engine_inputs`, shared with the regression tests
//! (`tests/tests/fuzz_regressions.rs`).
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybridsync_sim::fuzz::engine_inputs(data));
