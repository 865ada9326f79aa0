//! The tokio driver for hybridsync.
//!
//! [`Node`] runs one [`hybridsync_core::Replica`] with a storage backend and a [`Transport`]:
//!
//! - the run loop is one tokio task; it owns the engine, drains its outputs after every input,
//!   and arms one timer at [`hybridsync_core::Replica::poll_timeout`] (engine instants are
//!   microseconds since the node started; the wall clock comes from `SystemTime`);
//! - storage runs on **one dedicated OS thread**, in order. The storage commands of an engine
//!   step (and of the steps that ran while the previous batch was committing) go to
//!   [`hybridsync_core::StorageBackend::execute`] as **one batch** (group commit); every send,
//!   disconnect and event emitted after them waits until that batch is durable (write-ahead),
//!   and read completions come back as [`hybridsync_core::Input::Storage`];
//! - the transport reports peers and authenticated messages through an [`EventSink`]; real-time
//!   messages take a priority queue so they never wait behind catch-up pages;
//! - what peers send is held within a byte budget: a message's encoded bytes are taken from
//!   [`INBOUND_BYTES`] (8 MiB across every peer; a transport may give each peer a
//!   [`PeerBudget`] share) before its frame is read, and given back once the storage batch
//!   holding what it caused is committed, so a peer faster than the disk is simply not read
//!   (decoded, a message takes at most
//!   [`hybridsync_core::VALUE_BYTES_PER_INPUT_BYTE`] bytes per encoded byte plus 4 KiB:
//!   [`hybridsync_core::value_budget`]);
//! - the application's typed reads ([`Node::get_owned`], [`Node::list_shared`], ...) run on the
//!   storage thread behind every batch already handed to it, so they see every completed
//!   command and every write an event reported (`examples/view.rs` keeps a view from events).
//!
//! The driver holds no protocol logic: every decision is the engine's.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hybridsync_tokio::NodeError> {
//! use hybridsync_core::{Config, DeviceId, MemStore, ModelRegistry};
//! use hybridsync_tokio::{ChannelNetwork, Node};
//!
//! let (a, b) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
//! let net = ChannelNetwork::new();
//! net.link(a, b);
//! let node_a = Node::builder(Config::new(a, ModelRegistry::spacedrive()))
//!     .bootstrap_members([a, b])
//!     .start(MemStore::new(), net.transport(a))
//!     .await?;
//! node_a.put("location", uuid::Uuid::from_u128(7), b"/home".to_vec()).await?;
//! let store: MemStore = node_a.shutdown().await?;
//! # drop(store); Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod channel;
mod driver;
mod failure;
mod node;
mod storage;
mod transport;

pub use channel::{ChannelNetwork, ChannelTransport, CHANNEL_INBOX_BYTES};
pub use failure::StorageFailure;
pub use node::{Fetch, Node, NodeBuilder, NodeError, Progress, Status};
pub use transport::{
    BoxFuture, EventSink, EventSource, InboundPermit, PeerBudget, SinkClosed, Transport,
    TransportEvent, BULK_QUEUE, INBOUND_BYTES, REALTIME_QUEUE,
};
