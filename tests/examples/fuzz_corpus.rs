//! Writes the committed seed corpus of the fuzz targets (`fuzz/corpus/<target>/seed-*`).
//!
//! `cargo run -p hybridsync-sim --example fuzz_corpus -- fuzz/corpus`
//!
//! - `wire_decode`: the encoding of every message a small simulated cluster exchanged (every
//!   message variant appears), plus a refusal of each error code;
//! - `frame_decoder`, `engine_inputs`, `sim_scenario`: deterministic pseudo-random byte
//!   strings of a few sizes (the targets read them through `arbitrary`, so any bytes are a
//!   valid input), and for `frame_decoder` framed message streams as well.
//!
//! Every seed is replayed by `tests/tests/fuzz_regressions.rs`.
use hybridsync_core::Fnv64;
use hybridsync_core::{encode, ChangeKind, ErrorCode, SyncMessage};
use hybridsync_sim::cluster::Cluster;
use hybridsync_sim::device;
use hybridsync_sim::rng::Rng;
use std::collections::BTreeMap;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let root = Path::new(&root);

    let messages = sample_messages();
    let mut kinds: Vec<&str> = messages.iter().map(SyncMessage::kind).collect();
    kinds.dedup();
    println!("message kinds: {kinds:?}");
    let mut wire: Vec<Vec<u8>> = messages.iter().map(encode).collect();
    wire.sort();
    wire.dedup();
    write(root, "wire_decode", &wire)?;

    let mut frames: Vec<Vec<u8>> = messages
        .chunks(7)
        .map(|c| c.iter().flat_map(hybridsync_core::encode_frame).collect())
        .collect();
    frames.extend(random(1, &[16, 64, 256, 1024]));
    write(root, "frame_decoder", &frames)?;

    write(
        root,
        "engine_inputs",
        &random(2, &[32, 128, 512, 1024, 2048, 4096]),
    )?;
    write(root, "sim_scenario", &random(3, &[16, 64, 256, 512, 1024]))?;
    Ok(())
}

/// One message of each kind a cluster sends while writing, catching up (with paging and a
/// snapshot after pruning) and acknowledging, plus error replies.
fn sample_messages() -> Vec<SyncMessage> {
    let (a, b, c) = (device(0), device(1), device(2));
    let mut cl = Cluster::new(3);
    let mut by_kind: BTreeMap<&'static str, Vec<SyncMessage>> = BTreeMap::new();
    let keep = |cl: &Cluster, by_kind: &mut BTreeMap<&'static str, Vec<SyncMessage>>| {
        for m in cl.in_flight.iter().filter_map(|f| f.msg()) {
            let list = by_kind.entry(m.kind()).or_default();
            if list.len() < 4 {
                list.push(m);
            }
        }
    };
    cl.connect(a, b);
    for k in 0..10 {
        cl.put(a, k, format!("record {k}").as_bytes());
        cl.tag(a, k, ChangeKind::Insert, &[("name", k as i64), ("rank", 1)]);
        keep(&cl, &mut by_kind);
    }
    cl.delete(a, 3);
    cl.tag(b, 2, ChangeKind::Update, &[("name", -1)]);
    cl.tag(b, 4, ChangeKind::Delete, &[]);
    keep(&cl, &mut by_kind);
    cl.deliver_all();
    for _ in 0..8 {
        cl.advance(3_000);
        keep(&cl, &mut by_kind);
        cl.deliver_all();
    }
    // c connects late: catch-up of both streams.
    cl.connect(a, c);
    for _ in 0..200 {
        keep(&cl, &mut by_kind);
        if !cl.deliver(0) {
            break;
        }
    }
    // b writes while c (paired with a only) is up: a relays b's changes and acks to c.
    for k in 20..23 {
        cl.put(b, k, b"relayed");
        cl.tag(b, k, ChangeKind::Insert, &[("name", k as i64)]);
        keep(&cl, &mut by_kind);
        for _ in 0..50 {
            keep(&cl, &mut by_kind);
            if !cl.deliver(0) {
                break;
            }
        }
    }
    for _ in 0..4 {
        cl.advance(1_500);
        keep(&cl, &mut by_kind);
        cl.deliver_all();
    }
    let mut out: Vec<SyncMessage> = by_kind.into_values().flatten().collect();
    // Batches and snapshot pages, from what `a` stored.
    if let Some(state) = cl.member(a).map(|m| m.store.state()) {
        out.push(SyncMessage::StateBatch(
            state
                .owned
                .values()
                .take(3)
                .cloned()
                .map(Into::into)
                .collect(),
        ));
        out.push(SyncMessage::SharedChangeBatch(
            state
                .log
                .values()
                .flatten()
                .map(|(_, c)| c)
                .take(3)
                .cloned()
                .collect(),
        ));
        out.push(SyncMessage::AckRelay(
            [(b, state.vv.clone()), (c, state.vv.clone())].into(),
        ));
        // Kinds a cluster that agrees rarely sends: member registers (only where their
        // digests differ), a summary delta and a stand-alone ack.
        let members: Vec<_> = state
            .shared
            .values()
            .filter(|r| r.model == hybridsync_core::MEMBER_MODEL)
            .cloned()
            .collect();
        out.push(SyncMessage::Members(members));
        let heads: BTreeMap<_, _> = state.watermarks.iter().map(|(d, s)| (*d, *s)).collect();
        out.push(SyncMessage::HeartbeatDelta(hybridsync_core::Summary {
            heads,
            vv: state.vv.clone(),
        }));
        out.push(SyncMessage::AckSharedChanges(hybridsync_core::Ack {
            acker: a,
            vv: state.vv.clone(),
        }));
        // Sent only for removed members' records.
        out.push(SyncMessage::OwnedDigest(hybridsync_core::OwnedDigest {
            owner: b,
            through: state.watermarks.get(&b).copied().unwrap_or(1),
            digest: 0x5eed_d1ce_57ab_1e00,
        }));
        out.push(SyncMessage::SharedSnapshotResponse(
            hybridsync_core::SharedSnapshotResponse {
                request_id: 9,
                page: 0,
                vv: state.vv.clone(),
                records: state.shared.values().take(4).cloned().collect(),
                has_more: true,
            },
        ));
    }
    for (i, code) in [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::NotMember,
        ErrorCode::ProtocolViolation,
        ErrorCode::Busy,
        ErrorCode::UnknownModel,
        ErrorCode::ClockDrift,
    ]
    .into_iter()
    .enumerate()
    {
        out.push(SyncMessage::Error(hybridsync_core::ErrorReply {
            request_id: (i % 2 == 0).then_some(i as u64),
            code,
            message: format!("{code:?}"),
        }));
    }
    out.push(SyncMessage::SharedSnapshotRequest(
        hybridsync_core::SharedSnapshotRequest {
            request_id: 1,
            after: Some(("tag".into(), uuid::Uuid::from_u128(7))),
            limit: u32::MAX,
            window: 1,
        },
    ));
    out
}

fn random(seed: u64, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    sizes
        .iter()
        .map(|n| (0..*n).map(|_| rng.next_u64() as u8).collect())
        .collect()
}

fn write(root: &Path, target: &str, inputs: &[Vec<u8>]) -> std::io::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    for input in inputs {
        let mut h = Fnv64::default();
        h.write(input);
        std::fs::write(dir.join(format!("seed-{:016x}", h.finish())), input)?;
    }
    println!("{target}: {} seeds", inputs.len());
    Ok(())
}
