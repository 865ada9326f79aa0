//! hybridsync iroh adapter.
