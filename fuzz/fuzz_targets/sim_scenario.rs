//! Fuzz target `sim_scenario`.
//!
//! A simulated cluster scenario built from the bytes (a seeded world or a
//! hand-driven `Cluster`) converges to the state the reference model computes.
//!
//! The body is `hybridsync_sim::fuzz::sim_scenario`, shared with the regression tests
//! (`tests/tests/fuzz_regressions.rs`).
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hybridsync_sim::fuzz::sim_scenario(data));
