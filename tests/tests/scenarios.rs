//! Scenario tests: one behaviour each, driven step by step through a `Cluster`.

use hybridsync_core::{ChangeKind, Command, Event, Input, Restored, Stream, SyncMessage, Value};
use hybridsync_sim::cluster::Cluster;
use hybridsync_sim::device;

fn name(v: i64) -> Option<std::collections::BTreeMap<String, Value>> {
    Some([("name".to_owned(), Value::Int(v))].into())
}

#[test]
fn offline_device_catches_up_from_relay_while_owner_is_offline() {
    let (a, b, c) = (device(0), device(1), device(2));
    let mut cl = Cluster::new(3);
    cl.connect(a, b);
    for k in 0..10 {
        assert!(cl.put(a, k, b"from-a"));
    }
    assert!(cl.delete(a, 3));
    cl.settle();
    cl.crash(a); // the owner goes away
    cl.connect(b, c);
    cl.settle();
    cl.restart(a);
    cl.check_converged(&[b, c]).expect("c caught up from b");
    assert_eq!(
        cl.member(c)
            .and_then(|m| m.replica.as_ref())
            .map(|r| r.watermark(a)),
        Some(11)
    );
}

#[test]
fn future_clock_does_not_win() {
    let (a, b) = (device(0), device(1));
    let mut cl = Cluster::new(2);
    cl.set_skew(a, 60 * 60_000); // an hour ahead: beyond the 5-minute bound
    cl.connect(a, b);
    assert!(cl.tag(a, 1, ChangeKind::Insert, &[("name", 2099)]));
    cl.settle();
    assert!(cl.tag(b, 1, ChangeKind::Insert, &[("name", 2026)]));
    cl.settle();
    // b refused the future change, kept its own, and its clock was not dragged forward.
    assert_eq!(cl.tag_fields(b, 1), name(2026));
    let rb = cl.member(b).and_then(|m| m.replica.as_ref()).expect("b");
    assert!(rb.hlc().time_ms <= cl.now(b).wall_ms + 5 * 60_000);
    assert!(cl
        .member(b)
        .expect("b")
        .events
        .iter()
        .any(|e| matches!(e, Event::ClockSkew { device, .. } if *device == a)));
}

#[test]
fn delete_never_resurrects_after_reordering() {
    let (a, b) = (device(0), device(1));
    let mut cl = Cluster::new(2);
    cl.connect(a, b);
    cl.settle();
    assert!(cl.put(a, 1, b"v1"));
    assert!(cl.put(a, 1, b"v2"));
    assert!(cl.delete(a, 1));
    assert!(cl.tag(a, 9, ChangeKind::Insert, &[("name", 1)]));
    assert!(cl.tag(a, 9, ChangeKind::Delete, &[]));
    // Deliver everything newest first, then duplicates of the old ones.
    let n = cl.in_flight.len();
    for i in 0..n {
        cl.duplicate(n - 1 - i);
    }
    while !cl.in_flight.is_empty() {
        let last = cl.in_flight.len() - 1;
        cl.deliver(last);
    }
    cl.settle();
    let view = cl.owned_view(b);
    let rec = view.values().next().expect("tombstone kept");
    assert_eq!(rec.1, None, "record stays deleted");
    assert_eq!(cl.tag_fields(b, 9), None);
    cl.check_converged(&[a, b]).expect("converged");
}

#[test]
fn restart_mid_backfill_resumes() {
    let (a, b) = (device(0), device(1));
    let mut cl = Cluster::new(2);
    for k in 0..40 {
        assert!(cl.put(a, k, b"bulk"));
    }
    cl.connect(a, b);
    // Let a few pages through (page size 4), then crash b mid-backfill.
    let mut pages = 0;
    while pages < 3 {
        let Some(i) = cl.in_flight.iter().position(|m| m.to == b) else {
            cl.deliver(0);
            continue;
        };
        if matches!(
            cl.in_flight[i].msg(),
            Some(SyncMessage::StateResponse(
                hybridsync_core::StateResponse { .. }
            ))
        ) {
            pages += 1;
        }
        cl.deliver(i);
    }
    let wm_before = cl
        .member(b)
        .and_then(|m| m.replica.as_ref())
        .map(|r| r.watermark(a));
    assert!(wm_before.is_some_and(|w| w > 0 && w < 40));
    cl.crash(b);
    cl.restart(b);
    let restored_wm = cl
        .member(b)
        .and_then(|m| m.replica.as_ref())
        .map(|r| r.watermark(a));
    assert_eq!(restored_wm, wm_before, "watermark survives the crash");
    cl.connect(a, b);
    // The first request after restart starts at the persisted watermark, not at zero.
    let first_since = loop {
        let found =
            cl.in_flight.iter().find_map(|m| match m.msg() {
                Some(SyncMessage::StateRequest(hybridsync_core::StateRequest {
                    since, ..
                })) if m.from == b => Some(since),
                _ => None,
            });
        if let Some(since) = found {
            break since;
        }
        assert!(cl.deliver(0), "b never asked for the rest");
    };
    assert_eq!(Some(first_since), wm_before);
    cl.settle();
    cl.check_converged(&[a, b]).expect("converged");
}

#[test]
fn new_member_gets_pruned_history_by_snapshot() {
    let (a, b, c) = (device(0), device(1), device(2));
    let mut cl = Cluster::new(2);
    cl.connect(a, b);
    for k in 0..12 {
        assert!(cl.tag(a, k, ChangeKind::Insert, &[("name", k as i64)]));
    }
    cl.settle();
    assert!(
        cl.member(a).expect("a").store.state().log.is_empty(),
        "log pruned"
    );
    assert!(cl.command(a, Command::AddMember(c)));
    cl.settle();
    cl.add(c, Restored::bootstrap([a, b, c]));
    cl.connect(a, c);
    cl.connect(b, c);
    cl.settle();
    assert!(cl.member(c).expect("c").events.iter().any(|e| matches!(
        e,
        Event::CaughtUp {
            stream: Stream::SharedSnapshot,
            ..
        }
    )));
    cl.check_converged(&[a, b, c]).expect("converged");
}

#[test]
fn concurrent_edits_of_different_fields_both_survive() {
    let (a, b) = (device(0), device(1));
    let mut cl = Cluster::new(2);
    cl.connect(a, b);
    assert!(cl.tag(a, 1, ChangeKind::Insert, &[("name", 1), ("color", 1)]));
    cl.settle();
    cl.disconnect(a, b);
    assert!(cl.tag(a, 1, ChangeKind::Update, &[("name", 2)]));
    assert!(cl.tag(b, 1, ChangeKind::Update, &[("color", 3)]));
    cl.connect(a, b);
    cl.settle();
    let want = Some(
        [
            ("color".to_owned(), Value::Int(3)),
            ("name".to_owned(), Value::Int(2)),
        ]
        .into(),
    );
    assert_eq!(cl.tag_fields(a, 1), want);
    cl.check_converged(&[a, b]).expect("converged");
}

#[test]
fn partition_heals_and_converges() {
    let ids: Vec<_> = (0..4).map(device).collect();
    let mut cl = Cluster::new(4);
    cl.connect(ids[0], ids[1]);
    cl.connect(ids[2], ids[3]);
    for (i, d) in ids.iter().enumerate() {
        assert!(cl.put(*d, 1, b"x"));
        assert!(cl.tag(*d, 5, ChangeKind::Update, &[("name", i as i64)]));
        assert!(cl.tag(*d, i as u64, ChangeKind::Insert, &[("rank", 1)]));
    }
    cl.settle();
    cl.connect_all();
    cl.settle();
    cl.check_converged(&ids).expect("converged");
}

#[test]
fn crash_loses_nothing_that_was_acknowledged() {
    let (a, b) = (device(0), device(1));
    let mut cl = Cluster::new(2);
    cl.connect(a, b);
    for k in 0..5 {
        assert!(cl.tag(a, k, ChangeKind::Insert, &[("name", 7)]));
    }
    cl.settle();
    // b acknowledged all five; it crashes and restarts from disk.
    cl.crash(b);
    cl.restart(b);
    for k in 0..5 {
        assert_eq!(cl.tag_fields(b, k), name(7));
    }
    cl.connect(a, b);
    cl.settle();
    cl.check_converged(&[a, b]).expect("converged");
    let spurious = cl
        .member(b)
        .expect("b")
        .events
        .iter()
        .any(|e| matches!(e, Event::CatchUpProgress { applied, .. } if *applied > 0));
    assert!(!spurious, "nothing to refetch after restart");
}

#[test]
fn removed_member_messages_are_refused_everywhere() {
    let (a, b, c) = (device(0), device(1), device(2));
    let mut cl = Cluster::new(3);
    cl.connect_all();
    cl.settle();
    assert!(cl.command(a, Command::RemoveMember(c)));
    cl.settle();
    assert!(!cl.connected(a, c) && !cl.connected(b, c));
    let before = cl.digest(b);
    cl.input(b, Input::PeerUp { peer: c });
    assert_eq!(cl.digest(b), before);
    assert!(!cl
        .member(b)
        .and_then(|m| m.replica.as_ref())
        .expect("b")
        .is_member(c));
}
