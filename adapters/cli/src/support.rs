//! Helpers shared by the subcommands: logging, runtime, identities, reading records back.

use anyhow::Context;
use hybridsync_core::Fnv64;
use hybridsync_core::{
    DeviceId, OwnedRecord, ReadId, SharedRecord, StorageBackend, StorageCommand, StorageDone,
};
use hybridsync_iroh::offline_endpoint;
use hybridsync_sqlite::SqliteStore;
use hybridsync_tokio::Node;
use iroh::{Endpoint, SecretKey};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// An offline iroh endpoint on 127.0.0.1 (any port) and the address peers dial it at.
pub async fn loopback_endpoint(key: SecretKey) -> anyhow::Result<(Endpoint, SocketAddr)> {
    loopback_endpoint_at(key, false).await
}

/// [`loopback_endpoint`] on the IPv4 (`127.0.0.1`) or the IPv6 (`::1`) loopback. Two endpoints
/// on different ones cannot reach each other directly: the WAN benchmark puts them so, with
/// its link as the only path between them (iroh's NAT traversal would otherwise find the
/// direct loopback path around the link).
pub async fn loopback_endpoint_at(
    key: SecretKey,
    v6: bool,
) -> anyhow::Result<(Endpoint, SocketAddr)> {
    let bind = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
    let endpoint = offline_endpoint(key, bind.parse()?).await?;
    let addr = *endpoint
        .addr()
        .ip_addrs()
        .next()
        .context("endpoint has no address")?;
    Ok((endpoint, addr))
}

/// The directory to work in: `given` (created if needed), else the temporary directory `tmp`.
pub fn work_dir(given: Option<&Path>, tmp: &Path) -> std::io::Result<PathBuf> {
    match given {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Ok(d.to_path_buf())
        }
        None => Ok(tmp.to_path_buf()),
    }
}

/// Logs go to stderr; `RUST_LOG` overrides `default` (e.g. `RUST_LOG=hybridsync_iroh=debug`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // No colour codes where nobody reads colours (a pipe, a file, a test harness).
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A multi-threaded tokio runtime.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A stable record id for a human name (two FNV-1a hashes; not cryptographic).
pub fn uuid_for(name: &str) -> Uuid {
    let mut hi = Fnv64::default();
    hi.write(b"hybridsync-name-hi:");
    hi.write(name.as_bytes());
    let mut lo = Fnv64::default();
    lo.write(b"hybridsync-name-lo:");
    lo.write(name.as_bytes());
    Uuid::from_u64_pair(hi.finish(), lo.finish())
}

/// The storage backend of the CLI.
pub type Store = SqliteStore;

/// The content digest of a node's database (equal digests: equal content).
pub async fn digest(node: &Node<Store>) -> anyhow::Result<u64> {
    Ok(node.inspect(|s: &mut Store| s.content_digest()).await??)
}

/// Every record a store holds, read back through the storage contract's own paged reads.
#[derive(Debug, Default)]
pub struct Dump {
    /// Device-owned records (tombstones included) of the owners asked for, in seq order.
    pub owned: Vec<OwnedRecord>,
    /// Every shared record's registers, in key order.
    pub shared: Vec<SharedRecord>,
}

impl Dump {
    /// Reads everything `owners` own and every shared record.
    pub fn read<S: StorageBackend>(
        store: &mut S,
        owners: impl IntoIterator<Item = DeviceId>,
    ) -> Result<Dump, S::Error> {
        let mut dump = Dump::default();
        for owner in owners {
            let mut after = 0;
            loop {
                let read = StorageCommand::ReadOwned {
                    id: ReadId(0),
                    owner,
                    after,
                    upto: u64::MAX >> 1,
                    limit: 4096,
                    max_bytes: 4 << 20,
                };
                let mut more = false;
                for done in store.execute(vec![read])? {
                    if let StorageDone::Owned {
                        records, more: m, ..
                    } = done
                    {
                        more = m && !records.is_empty();
                        after = records.last().map_or(after, |r| r.seq);
                        dump.owned.extend(records);
                    }
                }
                if !more {
                    break;
                }
            }
        }
        let mut after = None;
        loop {
            let read = StorageCommand::ReadSharedSnapshot {
                id: ReadId(0),
                after: after.clone(),
                limit: 4096,
                max_bytes: 4 << 20,
            };
            let mut more = false;
            for done in store.execute(vec![read])? {
                if let StorageDone::Snapshot {
                    records, more: m, ..
                } = done
                {
                    more = m && !records.is_empty();
                    after = records.last().map(SharedRecord::key).or(after);
                    dump.shared.extend(records);
                }
            }
            if !more {
                break;
            }
        }
        Ok(dump)
    }

    /// Live (not deleted) device-owned records.
    pub fn live_owned(&self) -> usize {
        self.owned.iter().filter(|r| !r.is_tombstone()).count()
    }

    /// Visible shared records of `model`.
    pub fn visible(&self, model: &str) -> impl Iterator<Item = &SharedRecord> + '_ {
        let model = model.to_owned();
        self.shared
            .iter()
            .filter(move |r| r.model == model && r.visible().is_some())
    }
}
