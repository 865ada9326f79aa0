//! The hybridsync command.
fn main() {}
