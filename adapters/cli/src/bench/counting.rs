//! A [`Transport`] wrapper that counts the messages and frame bytes a device sends.

use hybridsync_core::{encode, DeviceId, Refusal, SyncMessage};
use hybridsync_tokio::{BoxFuture, EventSink, Transport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Messages and frame bytes (length prefix included) of one message kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Messages sent.
    pub messages: u64,
    /// Frame bytes sent: the `u32` length prefix plus the postcard body.
    pub bytes: u64,
}

impl Traffic {
    /// Adds `other` to this count.
    pub fn add(&mut self, other: Traffic) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

/// What a device sent, per message kind.
pub type Sent = BTreeMap<String, Traffic>;

/// The sum over every kind.
pub fn total(sent: &Sent) -> Traffic {
    let mut t = Traffic::default();
    for v in sent.values() {
        t.add(*v);
    }
    t
}

/// The handle that starts counting and reads the counts. Counting is off until
/// [`Counter::start`] (encoding a message only to measure it costs time the sync benchmark must
/// not pay).
#[derive(Clone, Debug, Default)]
pub struct Counter {
    counts: Arc<Mutex<Option<BTreeMap<&'static str, Traffic>>>>,
}

impl Counter {
    /// Starts counting from zero.
    pub fn start(&self) {
        *self.lock() = Some(BTreeMap::new());
    }

    /// The counts since [`Counter::start`] (empty if not started).
    pub fn snapshot(&self) -> Sent {
        self.lock()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<BTreeMap<&'static str, Traffic>>> {
        // Only counters live behind the lock: a poisoned one is still consistent enough.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, msg: &SyncMessage) {
        let mut guard = self.lock();
        if let Some(m) = guard.as_mut() {
            let t = m.entry(msg.kind()).or_default();
            t.messages += 1;
            t.bytes += 4 + encode(msg).len() as u64;
        }
    }
}

/// Wraps a transport and counts what the driver sends through it.
pub struct Counting<T> {
    inner: T,
    counter: Counter,
}

impl<T> Counting<T> {
    /// Wraps `inner`; counts go to `counter`.
    pub fn new(inner: T, counter: Counter) -> Self {
        Counting { inner, counter }
    }
}

impl<T: Transport> Transport for Counting<T> {
    fn start(&mut self, sink: EventSink) {
        self.inner.start(sink);
    }

    fn send(&mut self, to: DeviceId, msg: SyncMessage) {
        self.counter.record(&msg);
        self.inner.send(to, msg);
    }

    fn disconnect(&mut self, peer: DeviceId, reason: Refusal) {
        self.inner.disconnect(peer, reason);
    }

    fn shutdown(&mut self) -> BoxFuture {
        self.inner.shutdown()
    }
}
