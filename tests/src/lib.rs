//! Deterministic simulator for hybridsync.
