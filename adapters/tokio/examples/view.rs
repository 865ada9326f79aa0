//! An application's view of its data: embed a [`Node`], write, read back through the typed
//! reads, and keep an in-memory view of the records up to date **from events alone** while a
//! second device catches up from scratch.
//!
//! Device A writes device-owned records (`entry`, `location`) and shared tags, overwrites and
//! deletes some, reads them back, and waits until its shared log is pruned (its only other
//! member, C, has everything). Then it adds device B, which starts from an empty store: B takes
//! A's records by catch-up pages ([`Event::RecordsChanged`]) and the shared records by a
//! snapshot ([`Event::SharedSnapshotApplied`]: the log they were in is gone), while A keeps
//! writing in real time ([`Event::RecordChanged`]). B's application builds its view once
//! (subscribing first), then only re-reads what each event names. At the end the view must
//! equal B's store, record by record.
//!
//! ```sh
//! cargo run -p hybridsync-tokio --example view
//! cargo test -p hybridsync-tokio --example view   # the same run, as a test
//! ```

use hybridsync_core::SharedView;
use hybridsync_core::{Config, DeviceId, Event, MemStore, ModelKind, ModelRegistry, Stream, Value};
use hybridsync_tokio::{ChannelNetwork, Node, NodeError};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

const A: DeviceId = DeviceId::from_u128(0xa);
const B: DeviceId = DeviceId::from_u128(0xb);
const C: DeviceId = DeviceId::from_u128(0xc);

/// The models the application follows.
const OWNED: [&str; 2] = ["entry", "location"];
const SHARED: [&str; 2] = ["tag", "album"];

/// What one page of a listing holds (the view never reads more than this at once).
const PAGE: u32 = 16;

/// The application's in-memory view: live device-owned records and visible shared records.
#[derive(Debug, Default, PartialEq)]
struct View {
    owned: BTreeMap<(DeviceId, String, Uuid), Vec<u8>>,
    shared: BTreeMap<(String, Uuid), BTreeMap<String, Value>>,
}

/// How the view was kept up to date.
#[derive(Debug, Default)]
struct Tally {
    record_changed: usize,
    pages: usize,
    snapshots: usize,
    reloads: usize,
}

impl View {
    /// Reads every followed record, a page at a time.
    async fn load(node: &Node<MemStore>) -> Result<View, NodeError> {
        let mut view = View::default();
        for model in OWNED {
            let mut after = None;
            loop {
                let page = node.list_owned(model, after, PAGE).await?;
                for r in page.items {
                    let data = r.data.unwrap_or_default();
                    view.owned.insert((r.owner, r.model, r.uuid), data);
                }
                after = page.next;
                if after.is_none() {
                    break;
                }
            }
        }
        view.reload_shared(node).await?;
        Ok(view)
    }

    /// Reads every followed shared record again (after a snapshot).
    async fn reload_shared(&mut self, node: &Node<MemStore>) -> Result<(), NodeError> {
        self.shared.clear();
        for model in SHARED {
            let mut after = None;
            loop {
                let page = node.list_shared(model, after, PAGE).await?;
                for v in page.items {
                    self.shared.insert((v.model, v.uuid), v.fields);
                }
                after = page.next;
                if after.is_none() {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn reread_owned(
        &mut self,
        node: &Node<MemStore>,
        owner: DeviceId,
        model: &str,
        uuid: Uuid,
    ) -> Result<(), NodeError> {
        if !OWNED.contains(&model) {
            return Ok(());
        }
        let key = (owner, model.to_owned(), uuid);
        match node.get_owned(owner, model, uuid).await? {
            Some(r) if !r.is_tombstone() => {
                self.owned.insert(key, r.data.unwrap_or_default());
            }
            _ => {
                self.owned.remove(&key);
            }
        }
        Ok(())
    }

    async fn reread_shared(
        &mut self,
        node: &Node<MemStore>,
        model: &str,
        uuid: Uuid,
    ) -> Result<(), NodeError> {
        if !SHARED.contains(&model) {
            return Ok(());
        }
        let key = (model.to_owned(), uuid);
        match node.get_shared(model, uuid).await? {
            Some(v) => {
                self.shared.insert(key, v.fields);
            }
            None => {
                self.shared.remove(&key);
            }
        }
        Ok(())
    }

    /// Brings the view up to date with what `event` reports.
    async fn apply(
        &mut self,
        node: &Node<MemStore>,
        event: &Event,
        tally: &mut Tally,
    ) -> Result<(), NodeError> {
        let models = ModelRegistry::spacedrive();
        match event {
            Event::RecordChanged { model, uuid, by } => {
                tally.record_changed += 1;
                match models.kind(model) {
                    // A device-owned record's `by` is its owner.
                    Some(ModelKind::DeviceOwned) => {
                        self.reread_owned(node, *by, model, *uuid).await?
                    }
                    _ => self.reread_shared(node, model, *uuid).await?,
                }
            }
            Event::RecordsChanged { stream, keys, .. } => {
                tally.pages += 1;
                for (model, uuid) in keys {
                    match stream {
                        Stream::Owned(owner) => {
                            self.reread_owned(node, *owner, model, *uuid).await?
                        }
                        _ => self.reread_shared(node, model, *uuid).await?,
                    }
                }
            }
            Event::SharedSnapshotApplied { .. } => {
                tally.snapshots += 1;
                self.reload_shared(node).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The store's content, read directly from `MemStore` (not through the typed reads).
async fn stored(node: &Node<MemStore>) -> Result<View, NodeError> {
    node.inspect(|s: &mut MemStore| {
        let state = s.state();
        View {
            owned: state
                .owned
                .values()
                .filter(|r| OWNED.contains(&r.model.as_str()))
                .filter_map(|r| {
                    let data = r.data.clone()?;
                    Some(((r.owner, r.model.clone(), r.uuid), data))
                })
                .collect(),
            shared: state
                .shared
                .values()
                .filter(|r| SHARED.contains(&r.model.as_str()))
                .filter_map(SharedView::of)
                .map(|v| ((v.model, v.uuid), v.fields))
                .collect(),
        }
    })
    .await
}

fn config(device: DeviceId) -> Config {
    let mut c = Config::new(device, ModelRegistry::spacedrive());
    c.heartbeat_interval = Duration::from_millis(100);
    c.ack_delay = Duration::from_millis(10);
    c.page_records = 8; // several catch-up and snapshot pages
    c
}

fn name(n: impl Into<Value>) -> BTreeMap<String, Value> {
    [("name".to_owned(), n.into())].into()
}

/// Waits until `f` holds, polling.
async fn until<F, Fut>(what: &str, mut f: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, NodeError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await? {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The whole scenario; returns B's view and how it was kept.
async fn run() -> Result<(View, Tally), Error> {
    let net = ChannelNetwork::new();
    net.link(A, C);
    let a = Node::builder(config(A))
        .bootstrap_members([A, C])
        .start(MemStore::new(), net.transport(A))
        .await?;
    let c = Node::builder(config(C))
        .bootstrap_members([A, C])
        .start(MemStore::new(), net.transport(C))
        .await?;

    // 1. Write, then read back through the typed reads.
    for i in 0..40u128 {
        a.put(
            "entry",
            Uuid::from_u128(i),
            format!("entry {i}").into_bytes(),
        )
        .await?;
        a.insert_shared("tag", Uuid::from_u128(100 + i), name(format!("tag {i}")))
            .await?;
    }
    a.put("location", Uuid::from_u128(7), b"/home".to_vec())
        .await?;
    for i in 0..5u128 {
        a.put("entry", Uuid::from_u128(i), b"rewritten".to_vec())
            .await?;
        a.delete("entry", Uuid::from_u128(10 + i)).await?;
        let color = [("color".to_owned(), Value::from("red"))].into();
        a.update_shared("tag", Uuid::from_u128(100 + i), color)
            .await?;
        a.delete_shared("tag", Uuid::from_u128(110 + i)).await?;
    }
    let entry = a.get_owned(A, "entry", Uuid::from_u128(3)).await?;
    assert_eq!(entry.and_then(|r| r.data), Some(b"rewritten".to_vec()));
    let deleted = a.get_owned(A, "entry", Uuid::from_u128(12)).await?;
    assert!(
        deleted.is_some_and(|r| r.is_tombstone()),
        "a tombstone reads as one"
    );
    let tag = a.get_shared("tag", Uuid::from_u128(101)).await?;
    assert_eq!(
        tag.map(|v| v.fields),
        Some(
            [
                ("color".into(), "red".into()),
                ("name".into(), "tag 1".into())
            ]
            .into()
        )
    );
    assert_eq!(a.get_shared("tag", Uuid::from_u128(111)).await?, None);
    assert_eq!(a.count_owned("entry").await?, 35);
    assert_eq!(a.count_shared("tag").await?, 35);
    let first = a.list_owned("entry", None, PAGE).await?;
    assert_eq!(first.items.len(), PAGE as usize);
    assert!(first.next.is_some());

    // 2. A's log is pruned once C acknowledged everything: a newcomer needs a snapshot.
    until("A's shared log is pruned", || async {
        Ok(a.status().await?.horizon.get(A) > 0)
    })
    .await?;
    a.add_member(B).await?;

    // 3. B starts from scratch; its application subscribes first, then reads everything.
    let builder = Node::builder(config(B)).bootstrap_members([A, B, C]);
    let mut events = builder.subscribe();
    let b = builder.start(MemStore::new(), net.transport(B)).await?;
    let mut view = View::load(&b).await?;
    let mut tally = Tally::default();
    net.link(A, B);

    // 4. A keeps writing while B catches up; B's view follows events only.
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..20u128 {
                a.put("entry", Uuid::from_u128(1000 + i), vec![i as u8; 4])
                    .await?;
                a.update_shared(
                    "tag",
                    Uuid::from_u128(120 + i % 5),
                    name(format!("late {i}")),
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<(), NodeError>(())
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
            Ok(Ok(e)) => view.apply(&b, &e, &mut tally).await?,
            Ok(Err(RecvError::Lagged(_))) => {
                // Missed events: build the view again (see `Event`'s change feed).
                tally.reloads += 1;
                view = View::load(&b).await?;
            }
            Ok(Err(RecvError::Closed)) => return Err("the node stopped".into()),
            // Quiet: done once B holds what A holds and nothing is left to write.
            Err(_) => {
                let a_has = stored(&a).await?;
                if writer.is_finished() && stored(&b).await? == a_has {
                    break;
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err("B never caught up".into());
        }
    }
    writer.await??;
    // Events that were still queued: every one is applied before comparing.
    while let Ok(e) = events.try_recv() {
        view.apply(&b, &e, &mut tally).await?;
    }
    let store = stored(&b).await?;
    if view != store {
        return Err(format!("the view differs from the store:\n{view:?}\n{store:?}").into());
    }
    for n in [a, b, c] {
        n.shutdown().await?;
    }
    Ok((view, tally))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (view, tally) = run().await?;
    println!(
        "B's view equals its store: {} device-owned and {} shared records, kept from {} \
         RecordChanged, {} RecordsChanged pages and {} snapshot(s), {} full reload(s)",
        view.owned.len(),
        view.shared.len(),
        tally.record_changed,
        tally.pages,
        tally.snapshots,
        tally.reloads
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_view_kept_from_events_equals_the_store() {
        let (view, tally) = match super::run().await {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        // 35 + 1 + 20 device-owned records, 35 tags; everything arrived through the feed.
        assert_eq!(view.owned.len(), 56);
        assert_eq!(view.shared.len(), 35);
        assert!(tally.pages > 0, "{tally:?}");
        assert_eq!(tally.snapshots, 1, "{tally:?}");
        assert_eq!(tally.reloads, 0, "{tally:?}");
    }
}
