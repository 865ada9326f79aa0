//! Issue 13 item 5: what a peer sends is held in memory within the inbound byte budget, also
//! while storage is slower than the network.

#![allow(clippy::unwrap_used)]

use hybridsync_core::{
    Config, DeviceId, Hlc, MemStore, ModelRegistry, OwnedRecord, Refusal, Restored, StorageBackend,
    StorageCommand, StorageDone, SyncMessage,
};
use hybridsync_tokio::{BoxFuture, EventSink, Node, Transport, INBOUND_BYTES};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const A: DeviceId = DeviceId::from_u128(0xa);
const B: DeviceId = DeviceId::from_u128(0xb);

/// A disk that stalls while `stalled` is set.
struct SlowStore {
    inner: MemStore,
    stalled: Arc<AtomicBool>,
}

impl StorageBackend for SlowStore {
    type Error = std::convert::Infallible;

    fn execute(&mut self, commands: Vec<StorageCommand>) -> Result<Vec<StorageDone>, Self::Error> {
        while self.stalled.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(StorageBackend::execute(&mut self.inner, commands).unwrap_or_default())
    }

    fn load_restored(&mut self) -> Result<Restored, Self::Error> {
        Ok(self.inner.restored())
    }
}

/// Member B pushing its own records of `size` bytes, in order, as fast as the sink takes them;
/// `taken` counts the bytes the sink took.
struct Flood {
    records: u64,
    size: usize,
    taken: Arc<AtomicUsize>,
}

impl Transport for Flood {
    fn start(&mut self, sink: EventSink) {
        let (records, size, taken) = (self.records, self.size, self.taken.clone());
        tokio::spawn(async move {
            if sink.peer_up(B).await.is_err() {
                return;
            }
            for seq in 1..=records {
                let rec = OwnedRecord {
                    owner: B,
                    seq,
                    hlc: Hlc::new(seq, 0, B),
                    model: "entry".into(),
                    uuid: Uuid::from_u128(u128::from(seq)),
                    data: Some(vec![seq as u8; size]),
                };
                let msg = SyncMessage::StateChange(rec.into());
                let bytes = hybridsync_core::encode(&msg).len();
                if sink.message(B, msg).await.is_err() {
                    return;
                }
                taken.fetch_add(bytes, Ordering::AcqRel);
            }
        });
    }
    fn send(&mut self, _: DeviceId, _: SyncMessage) {}
    fn disconnect(&mut self, _: DeviceId, _: Refusal) {}
    fn shutdown(&mut self) -> BoxFuture {
        Box::pin(async {})
    }
}

#[tokio::test]
async fn records_waiting_for_a_slow_disk_hold_the_inbound_budget() {
    let stalled = Arc::new(AtomicBool::new(true));
    let taken = Arc::new(AtomicUsize::new(0));

    // 200 records of 256 KiB (50 MiB) while the disk stalls.
    let mut config = Config::new(A, ModelRegistry::spacedrive());
    config.heartbeat_interval = Duration::from_secs(60);
    let node = Node::builder(config)
        .bootstrap_members([A, B])
        .start(
            SlowStore {
                inner: MemStore::new(),
                stalled: stalled.clone(),
            },
            Flood {
                records: 200,
                size: 256 * 1024,
                taken: taken.clone(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = taken.load(Ordering::Acquire);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = taken.load(Ordering::Acquire);
    assert_eq!(before, held, "the sink still takes while the disk stalls");
    assert!(
        held <= INBOUND_BYTES + 2 * 300 * 1024,
        "{held} bytes taken while the disk stalled (budget {INBOUND_BYTES})"
    );
    // Once the disk is back, everything arrives and is stored.
    stalled.store(false, Ordering::Release);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored = node
            .inspect(|s: &mut SlowStore| s.inner.state().owned.len())
            .await
            .unwrap();
        if stored == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stored} of 200 stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_shared_write_peers_would_refuse_to_decode_is_refused_at_once() {
    let node = Node::builder(Config::new(A, ModelRegistry::spacedrive()))
        .bootstrap_members([A, B])
        .start(
            SlowStore {
                inner: MemStore::new(),
                stalled: Arc::new(AtomicBool::new(false)),
            },
            Flood {
                records: 0,
                size: 0,
                taken: Arc::new(AtomicUsize::new(0)),
            },
        )
        .await
        .unwrap();
    // 100,000 nulls: 100 KB on the wire, 3.2 MB decoded: every peer would refuse the change.
    let nulls = hybridsync_core::Value::List(vec![hybridsync_core::Value::Null; 100_000]);
    let r = node
        .insert_shared(
            "tag",
            Uuid::from_u128(1),
            [("name".to_owned(), nulls)].into(),
        )
        .await;
    assert!(
        matches!(r, Err(hybridsync_tokio::NodeError::TooManyValues { .. })),
        "{r:?}"
    );
    // Ordinary values are written.
    node.insert_shared(
        "tag",
        Uuid::from_u128(2),
        [("name".to_owned(), "holiday".into())].into(),
    )
    .await
    .unwrap();
    node.shutdown().await.unwrap();
}
