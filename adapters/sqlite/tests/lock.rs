//! One open store per database file: a second open, from this process or another, is refused
//! while the first store lives; a killed holder's lock is released by the OS.
//!
//! The test binary re-invokes itself: `holder_child_process` is the child's entry point and
//! does nothing unless `HYBRIDSYNC_LOCK_DB` is set. The child opens the database, prints
//! `holding the database`, and holds it until its stdin closes (or it is killed).

use hybridsync_core::{DeviceId, StorageCommand};
use hybridsync_sqlite::{OpenError, SqliteStore};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};

mod common;
use common::spawn_child_test;

const DB_ENV: &str = "HYBRIDSYNC_LOCK_DB";
const ME: DeviceId = DeviceId::from_u128(1);

/// The child's entry point (inert in a normal test run).
#[test]
fn holder_child_process() {
    let Ok(path) = std::env::var(DB_ENV) else {
        return;
    };
    let mut store = SqliteStore::open(&path).expect("child opens the database");
    store
        .execute(vec![StorageCommand::SetWatermark { owner: ME, seq: 7 }])
        .expect("child writes");
    // On a line of its own: the test harness has already written `test ... ` on this one.
    println!("\nholding the database");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(store);
}

/// Starts a child holding the database at `path`; returns once it has opened it.
fn holder(path: &Path) -> Child {
    let mut child = spawn_child_test("holder_child_process", DB_ENV, path, Stdio::piped());
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, opened) = std::sync::mpsc::channel();
    // Keep reading to the end: the child must be able to write its test report.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "holding the database" {
                let _ = tx.send(());
            }
        }
    });
    assert!(opened.recv().is_ok(), "the child did not open the database");
    child
}

/// The refusal must be a typed error naming the database and its lock file.
fn assert_locked(result: Result<SqliteStore, OpenError>, path: &Path) {
    let err = result.expect_err("a second open of a database in use must be refused");
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains(".lock"),
        "{text}"
    );
    assert!(
        matches!(&err, OpenError::Locked { path: p, .. } if p == path),
        "{err:?}"
    );
}

#[test]
fn second_open_in_the_same_process_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("replica.db");
    let mut first = SqliteStore::open(&path).expect("opens");
    assert_locked(SqliteStore::open(&path), &path);
    // The first store is unharmed, and the refused open changed nothing.
    first
        .execute(vec![StorageCommand::SetWatermark { owner: ME, seq: 3 }])
        .expect("the first store still writes");
    drop(first);
    let mut again = SqliteStore::open(&path).expect("opens once the first store is gone");
    assert_eq!(again.load_restored().expect("restores").watermarks[&ME], 3);
}

#[test]
fn open_is_refused_while_another_process_holds_the_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("replica.db");
    let mut child = holder(&path);
    assert_locked(SqliteStore::open(&path), &path);
    // The same file under another name (`dir/./replica.db`) is the same lock.
    assert_locked(
        SqliteStore::open(dir.path().join(".").join("replica.db")),
        &dir.path().join(".").join("replica.db"),
    );
    // The child closes the store and exits: the database is free.
    drop(child.stdin.take());
    assert!(child.wait().expect("child exits").success());
    let mut store = SqliteStore::open(&path).expect("opens after the holder exited");
    assert_eq!(store.load_restored().expect("restores").watermarks[&ME], 7);
}

#[test]
fn lock_of_a_killed_process_is_released() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("replica.db");
    let mut child = holder(&path);
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    child.wait().expect("reap child");
    let mut store = SqliteStore::open(&path).expect("opens after the holder was killed");
    assert_eq!(store.load_restored().expect("restores").watermarks[&ME], 7);
}
