//! The core's storage conformance suite, run unchanged on `SqliteStore`.

use hybridsync_core::conformance::{self, Harness};
use hybridsync_sqlite::SqliteStore;
use std::path::PathBuf;
use tempfile::TempDir;

fn in_memory() -> SqliteStore {
    SqliteStore::open_in_memory().expect("in-memory database opens")
}

/// Fresh database files, each in its own directory that lives as long as the test.
struct Files {
    dirs: Vec<TempDir>,
}

impl Files {
    fn new() -> Self {
        Files { dirs: Vec::new() }
    }

    fn fresh(&mut self) -> SqliteStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("replica.db");
        self.dirs.push(dir);
        SqliteStore::open(path).expect("database file opens")
    }
}

fn reopen(store: SqliteStore) -> SqliteStore {
    let path: PathBuf = store.path().to_path_buf();
    drop(store);
    SqliteStore::open(path).expect("database reopens")
}

#[test]
fn in_memory_store_passes_the_conformance_suite() {
    conformance::run_all(in_memory);
}

#[test]
fn file_store_passes_the_conformance_suite() {
    let mut files = Files::new();
    conformance::run_all(|| files.fresh());
}

#[test]
fn file_store_keeps_every_committed_batch_across_reopen() {
    let mut files = Files::new();
    conformance::run_reopen(|| files.fresh(), reopen);
}

#[test]
fn content_digest_equals_the_reference_digest() {
    for seed in 0..4 {
        let mut h = Harness::new("content_digest_equals_the_reference_digest", in_memory());
        for batch in conformance::random_batches(seed, 200) {
            h.apply(batch);
        }
        let expected = h.reference().state().content_digest();
        let got = h.backend_mut().content_digest().expect("digest");
        assert_eq!(got, expected, "seed {seed}");
    }
}

#[test]
fn content_digest_of_empty_store_equals_empty_reference() {
    let expected = hybridsync_core::MemStore::new().state().content_digest();
    assert_eq!(in_memory().content_digest().expect("digest"), expected);
}
