//! hybridsync sqlite adapter.
