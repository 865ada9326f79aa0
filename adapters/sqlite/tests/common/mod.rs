//! Helpers shared by the SQLite integration tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Re-invokes this test binary to run only the test `entry` in a child process, with `env` set
/// to the database `path` (the child's entry point does nothing without it), its stdout piped
/// and its stdin as given.
pub fn spawn_child_test(entry: &str, env: &str, path: &Path, stdin: Stdio) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    Command::new(exe)
        .args([entry, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, path)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child")
}
