//! Issue 13 item 5: a member streaming maximal frames as fast as the link allows cannot push
//! a device past its memory budget. One test in its own binary, so the process's peak RSS
//! (`VmHWM`, reset through `/proc/self/clear_refs`) is the victim's (plus the attacker's few
//! pre-encoded frames).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_core::DEFAULT_MAX_FRAME;
use hybridsync_core::{
    encode_frame, ChangeKind, DeviceId, ErrorCode, Hlc, OwnedRecord, SharedChange, SyncMessage,
    Value,
};
use hybridsync_iroh::{offline_endpoint, DEFAULT_ALPN, REALTIME_LANE};
use iroh::{Endpoint, SecretKey};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// The documented budget: what the victim's peak RSS may grow by under the attack from one
/// member, in MiB. Inbound: 8 MiB of frames being read, queued for the driver or waiting for
/// the disk (`INBOUND_BYTES`; one peer's share is 4 MiB), decoded into at most
/// `VALUE_BYTES_PER_INPUT_BYTE` bytes of values per frame byte plus 4 KiB per message (with
/// 16: 136 MiB); outbound: 48 MiB of queued frames per peer
/// (`realtime_queue_bytes` + `bulk_queue_bytes`); the rest is QUIC's windows and, in this
/// in-process test, the attacker's own frames and send buffers.
const BUDGET_MIB: u64 = 256;

/// How long each phase of the attack lasts.
const PHASE: Duration = Duration::from_secs(4);

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resets the peak RSS to the current RSS.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// A shared change of `origin` whose one field is a list of `n` nulls.
fn nulls(origin: DeviceId, n: usize) -> SyncMessage {
    SyncMessage::SharedChange(SharedChange {
        origin,
        seq: 1,
        hlc: Hlc {
            time_ms: 1,
            counter: 0,
            device: origin,
        },
        model: "tag".into(),
        record: Uuid::from_u128(9),
        kind: ChangeKind::Insert,
        fields: [("name".to_owned(), Value::List(vec![Value::Null; n]))].into(),
    })
}

/// Streams `frame` on four streams at the victim, reconnecting whenever it closes the
/// connection, until `until`. Returns the frames written.
async fn flood(ep: &Endpoint, victim: &Dev, frame: &[u8], until: Instant) -> usize {
    let sent = Arc::new(AtomicUsize::new(0));
    while Instant::now() < until {
        let conn = match tokio::time::timeout(
            Duration::from_secs(2),
            ep.connect(victim.endpoint_addr(), DEFAULT_ALPN),
        )
        .await
        {
            Ok(Ok(c)) => c,
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let conn = conn.clone();
            let frame = frame.to_vec();
            let sent = sent.clone();
            streams.spawn(async move {
                let Ok(mut s) = conn.open_uni().await else {
                    return;
                };
                if s.write_all(&[REALTIME_LANE]).await.is_err() {
                    return;
                }
                while Instant::now() < until {
                    if s.write_all(&frame).await.is_err() {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        tokio::select! {
            _ = conn.closed() => {}
            () = tokio::time::sleep_until(until) => {}
        }
        streams.abort_all();
        while streams.join_next().await.is_some() {}
        conn.close(0u32.into(), b"done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sent.load(Ordering::Relaxed)
}

/// Pushes `origin`'s own device-owned records of (almost) a maximal frame each, in seq order
/// on one stream, until `until`: valid messages the victim stores. Returns the frames written.
async fn flood_records(ep: &Endpoint, victim: &Dev, origin: DeviceId, until: Instant) -> usize {
    let mut seq = 0u64;
    let data = vec![7u8; DEFAULT_MAX_FRAME - 1024];
    while Instant::now() < until {
        let conn = match tokio::time::timeout(
            Duration::from_secs(2),
            ep.connect(victim.endpoint_addr(), DEFAULT_ALPN),
        )
        .await
        {
            Ok(Ok(c)) => c,
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(mut s) = conn.open_uni().await else {
            continue;
        };
        if s.write_all(&[REALTIME_LANE]).await.is_err() {
            continue;
        }
        while Instant::now() < until {
            let rec = OwnedRecord {
                owner: origin,
                seq: seq + 1,
                hlc: Hlc {
                    time_ms: seq + 1,
                    counter: 0,
                    device: origin,
                },
                model: "entry".into(),
                uuid: Uuid::from_u128(u128::from(seq % 8)),
                data: Some(data.clone()),
            };
            let frame = encode_frame(&SyncMessage::StateChange(rec.into()));
            match tokio::time::timeout_at(until, s.write_all(&frame)).await {
                Ok(Ok(())) => seq += 1,
                _ => break,
            }
        }
        conn.close(0u32.into(), b"done");
    }
    usize::try_from(seq).unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_streaming_maximal_frames_stays_within_the_memory_budget() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Dev::new(81, dir.path()).await;
    let key = SecretKey::from_bytes(&[82; 32]);
    let rogue = device_id(82);
    let ep = offline_endpoint(key.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rogue_dev = Dev::accept_only(rogue, key);
    let me = a.id;
    let node = start(&mut a, &[&rogue_dev], &[me, rogue], None).await;
    node.put("entry", Uuid::from_u128(1), b"precious".to_vec())
        .await
        .unwrap();

    // Maximal frames, encoded once (the attacker's own memory is these few MiB).
    let text = SyncMessage::Error(hybridsync_core::ErrorReply {
        request_id: None,
        code: ErrorCode::Busy,
        message: "x".repeat(DEFAULT_MAX_FRAME - 64),
    });
    let text_frame = encode_frame(&text);
    assert!(text_frame.len() - 4 <= DEFAULT_MAX_FRAME);
    let nulls_frame = encode_frame(&nulls(rogue, DEFAULT_MAX_FRAME - 128));
    assert!(nulls_frame.len() - 4 <= DEFAULT_MAX_FRAME);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut report = Vec::new();
    for (name, frame) in [
        ("text", Some(&text_frame)),
        ("nulls", Some(&nulls_frame)),
        ("records", None),
    ] {
        let base = status_kib("VmRSS:");
        reset_peak();
        let until = Instant::now() + PHASE;
        let sent = match frame {
            Some(frame) => flood(&ep, &a, frame, until).await,
            None => flood_records(&ep, &a, rogue, until).await,
        };
        let peak = status_kib("VmHWM:");
        let grew_mib = peak.saturating_sub(base) / 1024;
        eprintln!(
            "{name}: {sent} maximal frames sent in {PHASE:?}; RSS before {} MiB, peak {} MiB (+{grew_mib} MiB)",
            base / 1024,
            peak / 1024
        );
        report.push((name, sent, grew_mib));
    }
    for (name, sent, grew) in &report {
        assert!(*sent > 0, "{name}: nothing sent");
        assert!(
            *grew <= BUDGET_MIB,
            "{name}: peak RSS grew by {grew} MiB under the attack (budget {BUDGET_MIB} MiB): {report:?}"
        );
    }
    // The victim still works.
    node.put("entry", Uuid::from_u128(2), b"after".to_vec())
        .await
        .unwrap();
    node.shutdown().await.unwrap();
}
