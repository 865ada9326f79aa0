//! Crash safety: a writer process killed with SIGKILL in the middle of a stream of batches loses
//! no batch whose `execute` returned, and never leaves half a batch behind.
//!
//! The test binary re-invokes itself: `writer_child_process` is the child's entry point and
//! does nothing unless `HYBRIDSYNC_CRASH_DB` is set. The child prints `committed <n>` after
//! batch `n`'s `execute` returned `Ok` (and flushes) before it starts the next batch.

use hybridsync_core::{
    ChangeKind, DeviceId, Hlc, OwnedRecord, ReadId, SharedChange, StorageCommand, StorageDone,
};
use hybridsync_sqlite::SqliteStore;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;

mod common;
use common::spawn_child_test;
use std::time::Duration;

const DB_ENV: &str = "HYBRIDSYNC_CRASH_DB";
const OWNER: DeviceId = DeviceId::from_u128(0xc0ffee);
/// Records per batch: large enough that most of the child's time is spent inside `execute`.
const PER_BATCH: u64 = 400;
/// The child gives up after this many batches (the parent kills it long before).
const MAX_BATCHES: u64 = 20_000;

/// Batch `n` (1-based): new records `(n-1)*PER_BATCH+1 ..= n*PER_BATCH`, log entry `n`, the
/// watermark raised to the last record, the HLC to the log entry's stamp: one transaction.
fn batch(n: u64) -> Vec<StorageCommand> {
    let first = (n - 1) * PER_BATCH + 1;
    let records = (first..first + PER_BATCH)
        .map(|seq| OwnedRecord {
            owner: OWNER,
            seq,
            hlc: Hlc::new(1_000_000 + seq, 0, OWNER),
            model: "entry".into(),
            uuid: uuid::Uuid::from_u128((1u128 << 100) | u128::from(seq)),
            data: Some(seq.to_le_bytes().repeat(8)),
        })
        .collect();
    vec![
        StorageCommand::PutOwned(records),
        StorageCommand::AppendLog(vec![SharedChange {
            origin: OWNER,
            seq: n,
            hlc: Hlc::new(2_000_000 + n, 0, OWNER),
            model: "tag".into(),
            record: uuid::Uuid::from_u128(u128::from(n % 13)),
            kind: ChangeKind::Update,
            fields: [("n".to_owned(), hybridsync_core::Value::UInt(n))]
                .into_iter()
                .collect(),
        }]),
        StorageCommand::SetWatermark {
            owner: OWNER,
            seq: n * PER_BATCH,
        },
        StorageCommand::SetHlc(Hlc::new(2_000_000 + n, 0, OWNER)),
    ]
}

/// The child's entry point (inert in a normal test run).
#[test]
fn writer_child_process() {
    let Ok(path) = std::env::var(DB_ENV) else {
        return;
    };
    let mut store = SqliteStore::open(&path).expect("child opens the database");
    // Continue after whatever a previous (killed) child committed.
    let restored = store.load_restored().expect("child restores");
    let start = restored.watermarks.get(&OWNER).copied().unwrap_or(0) / PER_BATCH + 1;
    let mut out = std::io::stdout().lock();
    for n in start..start + MAX_BATCHES {
        store.execute(batch(n)).expect("child batch");
        writeln!(out, "committed {n}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// Runs a child on `path`, kills it with SIGKILL after it reported `kill_after` more commits
/// (plus a short delay, so the kill lands at an arbitrary point), and returns the highest batch
/// it reported committed.
fn run_and_kill(path: &Path, kill_after: u64, delay: Duration) -> u64 {
    let mut child = spawn_child_test("writer_child_process", DB_ENV, path, Stdio::inherit());
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = 0;
    let mut last = 0;
    for line in lines.by_ref() {
        let line = line.expect("child output");
        if let Some(n) = line.strip_prefix("committed ") {
            last = n.trim().parse().expect("batch number");
            seen += 1;
            if seen >= kill_after {
                break;
            }
        }
    }
    assert!(
        seen >= kill_after,
        "child stopped early after {seen} batches"
    );
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    let status = child.wait().expect("reap child");
    assert!(!status.success(), "child was not killed: {status:?}");
    // Lines the child wrote between our last read and the kill are commits too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("committed ") {
            if let Ok(n) = n.trim().parse() {
                last = n;
            }
        }
    }
    last
}

/// Reopens the database and checks that it holds exactly whole batches `1..=b` for some
/// `b >= committed`; returns `b`.
fn verify(path: &Path, committed: u64) -> u64 {
    let mut store = SqliteStore::open(path).expect("reopens after the kill");
    store.check_integrity().expect("integrity_check is ok");
    let restored = store.load_restored().expect("restores");
    let head = restored.watermarks.get(&OWNER).copied().unwrap_or(0);
    assert_eq!(head % PER_BATCH, 0, "half a batch: watermark {head}");
    let batches = head / PER_BATCH;
    assert!(
        batches >= committed,
        "lost committed batches: the child reported {committed}, the database holds {batches}"
    );
    // The log, vv and HLC moved with the watermark, in the same transactions.
    assert_eq!(
        restored.vv.get(OWNER),
        batches,
        "vv disagrees with the watermark"
    );
    assert_eq!(restored.hlc, Hlc::new(2_000_000 + batches, 0, OWNER));
    // Every record up to the watermark is there, nothing beyond it.
    let done = store
        .execute(vec![
            StorageCommand::ReadOwned {
                id: ReadId(1),
                owner: OWNER,
                after: 0,
                upto: u64::MAX,
                limit: u32::MAX,
                max_bytes: usize::MAX,
            },
            StorageCommand::ReadLog {
                id: ReadId(2),
                since: Default::default(),
                limit: u32::MAX,
                max_bytes: usize::MAX,
            },
        ])
        .expect("reads");
    match done.as_slice() {
        [StorageDone::Owned { records, .. }, StorageDone::Log { entries, .. }] => {
            let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
            assert_eq!(
                seqs,
                (1..=head).collect::<Vec<_>>(),
                "records missing or extra"
            );
            for r in records.iter().step_by(97) {
                assert_eq!(
                    r.data,
                    Some(r.seq.to_le_bytes().repeat(8)),
                    "damaged record"
                );
            }
            let log: Vec<u64> = entries.iter().map(|e| e.seq).collect();
            assert_eq!(
                log,
                (1..=batches).collect::<Vec<_>>(),
                "log entries missing or extra"
            );
        }
        other => panic!("unexpected completions {other:?}"),
    }
    batches
}

#[test]
fn sigkill_mid_stream_loses_no_committed_batch_and_leaves_no_half_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.db");
    let mut previous = 0;
    // Several kill points, each resuming from what the previous child left behind.
    for (round, (kill_after, delay_ms)) in
        [(40, 0), (25, 3), (60, 1), (10, 7)].into_iter().enumerate()
    {
        let committed = run_and_kill(&path, kill_after, Duration::from_millis(delay_ms));
        assert!(
            committed >= previous + kill_after,
            "round {round}: child did not resume after the previous batches"
        );
        previous = verify(&path, committed);
        eprintln!("round {round}: child reported {committed} committed, database holds {previous}");
    }
}
