//! The write-ahead rule, as one small pure type every host shares.
//!
//! A [`Replica`](crate::Replica) emits storage commands, sends, disconnects and events in one
//! stream. The rule that makes its acknowledgements and advertisements true is: **an output
//! other than a storage command is performed only once every storage command emitted before
//! it is durable.** [`WriteAhead`] applies that rule with group commit, so that the tokio
//! driver, the simulator and any other host run the same ordering:
//!
//! - storage commands accumulate into the next batch; at most one batch is committing;
//! - a send or disconnect emitted when no command is queued waits only for the batch that is
//!   committing (a catch-up request emitted before the writes of its step goes out while they
//!   commit: pipelining);
//! - any other action waits for the commands queued before it, so it goes with their batch;
//! - events always wait for the writes of their step, so an application hears of nothing
//!   that is not durable.
//!
//! The host loop, with storage that commits a batch as one transaction:
//!
//! ```
//! use hybridsync_core::WriteAhead;
//! use hybridsync_core::*;
//!
//! let me = DeviceId::from_u128(1);
//! let now = Now::new(Instant::ZERO, 1_700_000_000_000);
//! let mut replica = Replica::new(
//!     Config::new(me, ModelRegistry::spacedrive()),
//!     Restored::bootstrap([me]),
//!     now,
//! );
//! let mut store = MemStore::new();
//! let mut wal = WriteAhead::new();
//! let cmd = Command::PutOwned { model: "entry".into(), uuid: uuid::Uuid::from_u128(7), data: vec![1] };
//! replica.handle(now, Input::Command { id: CommandId(1), cmd });
//! loop {
//!     while let Some(out) = replica.poll_output() {
//!         wal.push(out);
//!     }
//!     let flush = wal.flush();
//!     for action in flush.actions {
//!         // perform: send to the transport, disconnect, or hand the event to the application
//!         let _ = action;
//!     }
//!     let Some(batch) = flush.batch else { break };
//!     // commit the batch as one transaction (here: at once), collecting read results
//!     let reads: Vec<StorageDone> = batch.into_iter().filter_map(|c| store.execute(c)).collect();
//!     store.sync();
//!     for action in wal.committed() {
//!         let _ = action; // perform, as above
//!     }
//!     for done in reads {
//!         replica.handle(now, Input::Storage(done));
//!     }
//! }
//! assert!(wal.is_idle());
//! ```

use crate::replica::Output;
use crate::storage::StorageCommand;
use std::mem;

/// Orders a replica's outputs so that nothing leaves before the writes it depends on are
/// durable (the rule that [`Replica`](crate::Replica) states).
///
/// Call protocol: [`push`](Self::push) every output the replica emits, in order; then
/// [`flush`](Self::flush) and perform its actions in order, then commit its batch, if any; when
/// that batch is durable, [`committed`](Self::committed) and perform its actions, feed the
/// batch's read results to the replica, and continue with `push` and `flush`. While a batch is
/// committing, `flush` returns nothing: later outputs wait for it.
#[derive(Debug, Default)]
pub struct WriteAhead {
    /// Commands of the next batch.
    queued: Vec<StorageCommand>,
    /// Sends and disconnects emitted before any queued command: they wait only for the batch
    /// that is committing.
    ready: Vec<Output>,
    /// Actions emitted after a queued command (and every event): they go with the next batch.
    behind_queued: Vec<Output>,
    /// The actions of the batch that is committing (`None`: no batch is committing).
    committing: Option<Vec<Output>>,
}

/// What a host does next: perform `actions` in order, then commit `batch`.
#[derive(Debug, Default)]
#[must_use]
pub struct Flush {
    /// Outputs whose writes are durable: perform them now, in order.
    pub actions: Vec<Output>,
    /// The next batch to commit as one transaction, if any.
    pub batch: Option<Vec<StorageCommand>>,
}

impl WriteAhead {
    /// Nothing queued, nothing committing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one output of the replica, in emission order.
    pub fn push(&mut self, out: Output) {
        match out {
            Output::Storage(cmd) => self.queued.push(cmd),
            Output::Send { .. } | Output::Disconnect { .. } if self.queued.is_empty() => {
                self.ready.push(out);
            }
            other => self.behind_queued.push(other),
        }
    }

    /// What can go now. Nothing while a batch is committing; otherwise the actions that wait
    /// for nothing more, and the next batch with its actions held behind it.
    pub fn flush(&mut self) -> Flush {
        if self.committing.is_some() {
            return Flush::default();
        }
        let mut actions = mem::take(&mut self.ready);
        if self.queued.is_empty() {
            actions.append(&mut self.behind_queued);
            return Flush {
                actions,
                batch: None,
            };
        }
        self.committing = Some(mem::take(&mut self.behind_queued));
        Flush {
            actions,
            batch: Some(mem::take(&mut self.queued)),
        }
    }

    /// The batch from the last [`flush`](Self::flush) is durable: its actions, to perform
    /// now, in order.
    pub fn committed(&mut self) -> Vec<Output> {
        self.committing.take().unwrap_or_default()
    }

    /// The committing batch was lost (the process stopped before it was durable): its
    /// actions must never be performed, and nothing queued after it either.
    pub fn abandon(&mut self) {
        *self = WriteAhead::new();
    }

    /// Whether a batch is committing.
    pub fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    /// Storage commands waiting for the next batch.
    pub fn queued_commands(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing is queued or committing.
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty()
            && self.ready.is_empty()
            && self.behind_queued.is_empty()
            && self.committing.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SyncMessage;
    use crate::replica::Event;
    use crate::DeviceId;

    fn send(n: u64) -> Output {
        Output::Send {
            to: DeviceId::from_u128(9),
            msg: SyncMessage::Error(crate::ErrorReply {
                request_id: Some(n),
                code: crate::ErrorCode::Busy,
                message: String::new(),
            }),
        }
    }

    fn write() -> Output {
        Output::Storage(StorageCommand::SetHlc(crate::Hlc::ZERO))
    }

    #[test]
    fn a_send_after_a_write_waits_until_the_write_is_durable() {
        let mut w = WriteAhead::new();
        w.push(write());
        w.push(send(1));
        let f = w.flush();
        assert!(f.actions.is_empty());
        assert_eq!(f.batch.map(|b| b.len()), Some(1));
        assert!(w.flush().actions.is_empty() && w.is_committing());
        assert_eq!(w.committed(), vec![send(1)]);
        assert!(w.is_idle());
    }

    #[test]
    fn a_send_before_any_queued_write_waits_only_for_the_committing_batch() {
        let mut w = WriteAhead::new();
        w.push(write());
        let _ = w.flush();
        // While batch 1 commits: a request emitted before the writes of its step...
        w.push(send(2));
        w.push(write());
        w.push(send(3));
        assert!(
            w.flush().actions.is_empty(),
            "nothing leaves while a batch commits"
        );
        assert!(w.committed().is_empty());
        // ...goes out ahead of batch 2, and the send behind batch 2 waits for it.
        let f = w.flush();
        assert_eq!(f.actions, vec![send(2)]);
        assert!(f.batch.is_some());
        assert_eq!(w.committed(), vec![send(3)]);
    }

    #[test]
    fn events_wait_for_the_batch_of_their_step() {
        let mut w = WriteAhead::new();
        w.push(write());
        let _ = w.flush();
        w.push(Output::Event(Event::PeerConnected(DeviceId::from_u128(2))));
        assert!(w.flush().actions.is_empty());
        let _ = w.committed();
        let f = w.flush();
        assert_eq!(f.actions.len(), 1);
        assert!(f.batch.is_none());
    }

    #[test]
    fn an_abandoned_batch_performs_nothing_queued_behind_it() {
        let mut w = WriteAhead::new();
        w.push(write());
        w.push(send(1));
        let _ = w.flush();
        w.push(send(2));
        w.abandon();
        assert!(w.is_idle());
        assert!(w.committed().is_empty());
        assert!(w.flush().actions.is_empty());
    }
}
