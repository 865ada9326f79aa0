//! Insert-throughput benchmark: [`SqliteStore::execute`] against a raw rusqlite baseline, in
//! the same run (not a timed test: call [`run`] from `hybridsync bench` or
//! `cargo run --release -p hybridsync-sqlite --example sqlite_bench -- 1000000`).
//!
//! Both sides write the same rows — device-owned records of one owner, with time-ordered
//! (UUIDv7-like) or random (UUIDv4-like) ids from a deterministic generator — into tables of
//! the same shape (the `owned` table, its record-key index and the `devices` / `models` id
//! tables), with the same pragmas, in the same batch size:
//!
//! - **store**: one `execute(vec![PutOwned(batch), SetWatermark { .. }])` per batch, as the
//!   engine emits during catch-up (conditional upserts, watermark raise, one transaction);
//! - **raw**: one transaction of plain prepared `INSERT`s per batch (with the owner's and the
//!   model's ids known up front: no lookups, no conflict handling).
//!
//! Only the storage calls are timed; generating the rows is not. Besides wall-clock time, the
//! benchmark reports the CPU time of the timed calls (Linux: `/proc/thread-self/schedstat`),
//! so a run on a machine shared with other work still shows what the code costs: records per
//! CPU-second is what an otherwise idle machine approaches when the disk keeps up.

use crate::error::SqliteError;
use crate::schema::{enc_u64, OWNED_TABLE};
use crate::store::{tune, SqliteStore};
use hybridsync_core::{DeviceId, Hlc, OwnedRecord, StorageCommand};
use rusqlite::{params, Connection};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How record ids are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrder {
    /// UUIDv7-like: a millisecond timestamp prefix, increasing with the record number.
    TimeOrdered,
    /// UUIDv4-like: 122 random bits.
    Random,
}

impl fmt::Display for KeyOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyOrder::TimeOrdered => "time-ordered (UUIDv7-like)",
            KeyOrder::Random => "random (UUIDv4-like)",
        })
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// How many records to insert.
    pub records: u64,
    /// Records per batch (one transaction each); catch-up pages are about this size.
    pub batch: usize,
    /// Payload bytes per record.
    pub payload: usize,
    /// Id order.
    pub keys: KeyOrder,
    /// Seed of the id and payload generator.
    pub seed: u64,
}

impl BenchConfig {
    /// `records` records with `keys` ids, 2048 per batch, 100-byte payloads.
    pub fn new(records: u64, keys: KeyOrder) -> Self {
        BenchConfig {
            records,
            batch: 2048,
            payload: 100,
            keys,
            seed: 1,
        }
    }
}

/// The figures of one run.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// What was measured.
    pub config: BenchConfig,
    /// Time spent in [`SqliteStore::execute`].
    pub store_time: Duration,
    /// Time spent in the raw baseline's transactions.
    pub raw_time: Duration,
    /// CPU time of the benchmark thread inside [`SqliteStore::execute`] (Linux only).
    pub store_cpu: Option<Duration>,
    /// CPU time of the benchmark thread inside the raw baseline's transactions (Linux only).
    pub raw_cpu: Option<Duration>,
    /// Records per second through [`SqliteStore::execute`].
    pub store_per_sec: f64,
    /// Records per second through the raw baseline.
    pub raw_per_sec: f64,
    /// `raw_per_sec / store_per_sec`: how many times faster the raw baseline is (1.0 = same).
    pub slowdown: f64,
    /// Size of the store's database after the run (main file plus WAL), in bytes.
    pub store_bytes: u64,
}

impl fmt::Display for BenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "{} records, {} keys, {} per batch, {}-byte payloads",
            c.records, c.keys, c.batch, c.payload
        )?;
        let cpu = |t: Option<Duration>| match t {
            Some(t) => format!(
                ", {:.0} records per CPU-second ({:.2} s on CPU)",
                c.records as f64 / t.as_secs_f64().max(1e-9),
                t.as_secs_f64()
            ),
            None => String::new(),
        };
        writeln!(
            f,
            "  SqliteStore::execute  {:>10.0} records/s  ({:.2} s{}; {:.1} MiB on disk)",
            self.store_per_sec,
            self.store_time.as_secs_f64(),
            cpu(self.store_cpu),
            self.store_bytes as f64 / (1024.0 * 1024.0)
        )?;
        writeln!(
            f,
            "  raw rusqlite INSERT   {:>10.0} records/s  ({:.2} s{})",
            self.raw_per_sec,
            self.raw_time.as_secs_f64(),
            cpu(self.raw_cpu)
        )?;
        write!(f, "  raw / store           {:>10.2}x", self.slowdown)
    }
}

/// Runs the benchmark with database files in `dir` (created there, removed afterwards).
pub fn run(
    dir: &Path,
    config: &BenchConfig,
) -> Result<BenchResult, Box<dyn std::error::Error + Send + Sync>> {
    let tag = match config.keys {
        KeyOrder::TimeOrdered => "v7",
        KeyOrder::Random => "v4",
    };
    let store_path = dir.join(format!("bench-store-{tag}.db"));
    let raw_path = dir.join(format!("bench-raw-{tag}.db"));
    remove_db(&store_path);
    remove_db(&raw_path);
    let result = measure(&store_path, &raw_path, config);
    remove_db(&store_path);
    remove_db(&raw_path);
    result
}

fn measure(
    store_path: &Path,
    raw_path: &Path,
    config: &BenchConfig,
) -> Result<BenchResult, Box<dyn std::error::Error + Send + Sync>> {
    let owner = DeviceId::from_u128(0x0b0b);
    let batch = config.batch.max(1) as u64;

    let mut store = SqliteStore::open(store_path)?;
    let mut rows = Rows::new(config, owner);
    let mut store_time = Duration::ZERO;
    let mut store_cpu = Some(Duration::ZERO);
    let mut done = 0;
    while done < config.records {
        let n = batch.min(config.records - done);
        let records = rows.take(n);
        let head = done + n;
        let cpu = thread_cpu();
        let started = Instant::now();
        store.execute(vec![
            StorageCommand::PutOwned(records),
            StorageCommand::SetWatermark { owner, seq: head },
        ])?;
        store_time += started.elapsed();
        store_cpu = add_cpu(store_cpu, cpu, thread_cpu());
        done = head;
    }
    let store_bytes = db_bytes(store_path);
    drop(store);

    let sql = |e| SqliteError::from_sqlite(raw_path, e);
    let mut conn = Connection::open(raw_path).map_err(sql)?;
    tune(&conn, true, true).map_err(sql)?;
    conn.execute_batch(OWNED_TABLE).map_err(sql)?;
    // The raw baseline knows its one owner and model: ids 1 and 1, no lookups.
    conn.execute(
        "INSERT INTO devices (id, device) VALUES (1, ?1)",
        params![owner.0.as_bytes()],
    )
    .map_err(sql)?;
    conn.execute("INSERT INTO models (id, name) VALUES (1, 'entry')", [])
        .map_err(sql)?;
    let mut rows = Rows::new(config, owner);
    let mut raw_time = Duration::ZERO;
    let mut raw_cpu = Some(Duration::ZERO);
    let mut done = 0;
    while done < config.records {
        let n = batch.min(config.records - done);
        let records = rows.take(n);
        let cpu = thread_cpu();
        let started = Instant::now();
        let tx = conn.transaction().map_err(sql)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO owned (owner, model, uuid, seq, hlc_ms, hlc_counter, hlc_device, data)
                     VALUES (1, 1, ?1, ?2, ?3, ?4, 1, ?5)",
                )
                .map_err(sql)?;
            for r in &records {
                stmt.execute(params![
                    r.uuid.as_bytes(),
                    enc_u64(r.seq),
                    enc_u64(r.hlc.time_ms),
                    r.hlc.counter,
                    r.data.as_deref(),
                ])
                .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        raw_time += started.elapsed();
        raw_cpu = add_cpu(raw_cpu, cpu, thread_cpu());
        done += n;
    }
    drop(conn);

    let per_sec = |t: Duration| config.records as f64 / t.as_secs_f64().max(1e-9);
    let store_per_sec = per_sec(store_time);
    let raw_per_sec = per_sec(raw_time);
    Ok(BenchResult {
        config: config.clone(),
        store_time,
        raw_time,
        store_cpu,
        raw_cpu,
        store_per_sec,
        raw_per_sec,
        slowdown: raw_per_sec / store_per_sec,
        store_bytes,
    })
}

/// CPU time of the calling thread so far, where the platform tells (Linux).
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn add_cpu(
    total: Option<Duration>,
    before: Option<Duration>,
    after: Option<Duration>,
) -> Option<Duration> {
    Some(total? + after?.checked_sub(before?)?)
}

fn db_bytes(path: &Path) -> u64 {
    [PathBuf::from(path), wal_path(path, "-wal")]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn wal_path(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_db(path: &Path) {
    for p in [
        path.to_path_buf(),
        wal_path(path, "-wal"),
        wal_path(path, "-shm"),
        // The store's lock file (no store is open here).
        wal_path(path, ".lock"),
    ] {
        // Missing files are fine: this only clears leftovers.
        let _ = std::fs::remove_file(p);
    }
}

/// The deterministic row generator shared by both sides.
struct Rows {
    rng: u64,
    next: u64,
    keys: KeyOrder,
    payload: usize,
    owner: DeviceId,
}

/// 2023-11-14T22:13:20Z: the timestamp of the first time-ordered id.
const BASE_MS: u64 = 1_700_000_000_000;
/// Time-ordered ids per millisecond (their 12-bit counter orders them within it).
const PER_MS: u64 = 64;

impl Rows {
    fn new(config: &BenchConfig, owner: DeviceId) -> Self {
        Rows {
            rng: config.seed,
            next: 0,
            keys: config.keys,
            payload: config.payload,
            owner,
        }
    }

    /// SplitMix64.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn take(&mut self, n: u64) -> Vec<OwnedRecord> {
        (0..n).map(|_| self.record()).collect()
    }

    fn record(&mut self) -> OwnedRecord {
        let i = self.next;
        self.next += 1;
        let ms = BASE_MS + i / PER_MS;
        let counter = (i % PER_MS) as u16;
        let (hi, lo) = (self.random(), self.random());
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&hi.to_be_bytes());
        b[8..].copy_from_slice(&lo.to_be_bytes());
        match self.keys {
            KeyOrder::TimeOrdered => {
                // unix_ts_ms (48) | ver 7 (4) | counter (12) | var 10 (2) | random (62)
                b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
                b[6] = 0x70 | (counter >> 8) as u8;
                b[7] = counter as u8;
            }
            KeyOrder::Random => b[6] = 0x40 | (b[6] & 0x0f),
        }
        b[8] = 0x80 | (b[8] & 0x3f);
        let mut data = Vec::with_capacity(self.payload);
        while data.len() < self.payload {
            let word = self.random().to_le_bytes();
            let take = (self.payload - data.len()).min(8);
            data.extend_from_slice(&word[..take]);
        }
        OwnedRecord {
            owner: self.owner,
            seq: i + 1,
            hlc: Hlc::new(ms, u32::from(counter), self.owner),
            model: "entry".to_owned(),
            uuid: Uuid::from_bytes(b),
            data: Some(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_ids_increase_and_random_ids_do_not() {
        let owner = DeviceId::from_u128(1);
        let mut v7 = Rows::new(&BenchConfig::new(0, KeyOrder::TimeOrdered), owner);
        let ids: Vec<Uuid> = (0..500).map(|_| v7.record().uuid).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|u| u.get_version_num() == 7));
        let mut v4 = Rows::new(&BenchConfig::new(0, KeyOrder::Random), owner);
        let ids: Vec<Uuid> = (0..500).map(|_| v4.record().uuid).collect();
        assert!(!ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|u| u.get_version_num() == 4));
    }
}
