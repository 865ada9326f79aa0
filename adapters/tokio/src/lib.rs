//! hybridsync tokio adapter.
