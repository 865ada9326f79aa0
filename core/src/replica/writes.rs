//! Local writes: validated, stamped, stored (the record tables are the outbox), then pushed.

use super::{Command, CommandError, CommandId, Event, Replica};
use crate::id::DeviceId;
use crate::message::SyncMessage;
use crate::model::{ModelKind, MEMBER_MODEL};
use crate::owned::{OwnedChange, OwnedRecord};
use crate::shared::{ChangeKind, SharedChange};
use crate::storage::StorageCommand;
use crate::value::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A validated local write.
enum Write {
    Owned {
        model: String,
        uuid: Uuid,
        data: Option<Vec<u8>>,
    },
    Shared {
        model: String,
        uuid: Uuid,
        kind: ChangeKind,
        fields: BTreeMap<String, Value>,
    },
}

impl Write {
    /// An upper bound of the bytes this write takes in any message that carries it alone.
    fn budget_size(&self) -> usize {
        match self {
            // As `OwnedRecord::budget_size`, before the record exists.
            Write::Owned { model, data, .. } => {
                48 + model.len() + data.as_ref().map_or(0, Vec::len)
            }
            Write::Shared { model, fields, .. } => crate::shared::write_budget(model, fields),
        }
    }
}

impl Replica {
    /// Checks one command and turns it into a write; nothing changes on error.
    fn validate(&self, cmd: Command) -> Result<Write, CommandError> {
        let (model, write) = match cmd {
            Command::PutOwned { model, uuid, data } => (
                model.clone(),
                Write::Owned {
                    model,
                    uuid,
                    data: Some(data),
                },
            ),
            Command::DeleteOwned { model, uuid } => (
                model.clone(),
                Write::Owned {
                    model,
                    uuid,
                    data: None,
                },
            ),
            Command::InsertShared {
                model,
                uuid,
                fields,
            } => shared(model, uuid, ChangeKind::Insert, fields)?,
            Command::UpdateShared {
                model,
                uuid,
                fields,
            } => shared(model, uuid, ChangeKind::Update, fields)?,
            Command::DeleteShared { model, uuid } => {
                shared(model, uuid, ChangeKind::Delete, BTreeMap::new())?
            }
            Command::AddMember(d) => member(d, ChangeKind::Insert),
            Command::RemoveMember(d) => member(d, ChangeKind::Delete),
            Command::Batch(_)
            | Command::RequestState { .. }
            | Command::RequestSharedChanges { .. } => return Err(CommandError::NotBatchable),
        };
        let want = match write {
            Write::Owned { .. } => ModelKind::DeviceOwned,
            Write::Shared { .. } => ModelKind::Shared,
        };
        match self.config.models.kind(&model) {
            None => return Err(CommandError::UnknownModel(model)),
            Some(kind) if kind != want => return Err(CommandError::WrongModelKind(model)),
            Some(_) => {}
        }
        let bytes = write.budget_size();
        let limit = self.config.max_write_bytes();
        if bytes > limit {
            return Err(CommandError::TooLarge { bytes, limit });
        }
        Ok(write)
    }

    /// Applies a group of writes: all are validated before any is applied.
    pub(super) fn write_batch(&mut self, id: CommandId, cmds: Vec<Command>) {
        let mut writes = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            match self.validate(cmd) {
                Ok(w) => writes.push(w),
                Err(reason) => return self.event(Event::CommandFailed { id, reason }),
            }
        }
        match self.commit_writes(writes) {
            Ok(()) => self.event(Event::CommandDone(id)),
            Err(reason) => self.event(Event::CommandFailed { id, reason }),
        }
    }

    /// Stamps, numbers, stores and pushes validated writes; fails only when this device's
    /// counters cannot number them (nothing changes then).
    fn commit_writes(&mut self, writes: Vec<Write>) -> Result<(), CommandError> {
        let me = self.config.device;
        // Peers can raise this device's own counters (lost-database recovery): refuse the batch
        // rather than overflow them.
        let n_owned = writes
            .iter()
            .filter(|w| matches!(w, Write::Owned { .. }))
            .count() as u64;
        let n_shared = writes.len() as u64 - n_owned;
        if self.watermark(me).checked_add(n_owned).is_none()
            || self.vv.get(me).checked_add(n_shared).is_none()
        {
            return Err(CommandError::SequenceExhausted);
        }
        let mut owned = Vec::new();
        let mut changes = Vec::new();
        for w in writes {
            let hlc = self.clock.tick(self.now.wall_ms);
            match w {
                Write::Owned { model, uuid, data } => {
                    let seq = self.watermark(me) + 1;
                    self.watermarks.insert(me, seq);
                    owned.push(OwnedRecord {
                        owner: me,
                        seq,
                        hlc,
                        model,
                        uuid,
                        data,
                    });
                }
                Write::Shared {
                    model,
                    uuid,
                    kind,
                    fields,
                } => {
                    let seq = self.vv.get(me) + 1;
                    self.vv.set(me, seq);
                    let change = SharedChange {
                        origin: me,
                        seq,
                        hlc,
                        model,
                        record: uuid,
                        kind,
                        fields,
                    };
                    changes.push(change);
                }
            }
        }
        // Counters first: a crash between them and the rows leaves a harmless gap, never a
        // reused sequence number. The log append merges each change into its record.
        self.store(StorageCommand::SetHlc(self.clock.last()));
        if !owned.is_empty() {
            self.store(StorageCommand::SetWatermark {
                owner: me,
                seq: self.watermark(me),
            });
            self.store(StorageCommand::PutOwned(owned.clone()));
        }
        if !changes.is_empty() {
            self.store(StorageCommand::AppendLog(changes.clone()));
            self.schedule_ack();
        }
        // Membership follows the stored change (a removal may disconnect and prune).
        for c in changes.iter().filter(|c| c.model == MEMBER_MODEL) {
            self.merge_member(&c.to_record());
        }
        self.push_owned(owned);
        self.push_shared(changes);
        Ok(())
    }

    /// Pushes own device-owned changes to every connected peer, in byte-bounded batches.
    fn push_owned(&mut self, records: Vec<OwnedRecord>) {
        debug_assert!(records.iter().all(|r| r.owner == self.config.device));
        let budget = self.config.relay_budget();
        for mut chunk in chunks(records, budget, OwnedRecord::budget_size) {
            let msg = if chunk.len() == 1 {
                match chunk.pop() {
                    Some(r) => SyncMessage::StateChange(r.into()),
                    None => continue,
                }
            } else {
                SyncMessage::StateBatch(chunk.into_iter().map(OwnedChange::from).collect())
            };
            self.broadcast(msg);
        }
    }

    /// Pushes own shared changes to every connected peer, in byte-bounded batches.
    fn push_shared(&mut self, changes: Vec<SharedChange>) {
        for msg in self.shared_messages(changes) {
            self.broadcast(msg);
        }
    }

    /// Real-time shared changes as messages: `SharedChange` for one, `SharedChangeBatch` for
    /// runs bounded by the relay budget (a page, never more than a write).
    pub(super) fn shared_messages(&self, changes: Vec<SharedChange>) -> Vec<SyncMessage> {
        let budget = self.config.relay_budget();
        chunks(changes, budget, SharedChange::budget_size)
            .into_iter()
            .filter_map(|mut chunk| {
                if chunk.len() == 1 {
                    chunk.pop().map(SyncMessage::SharedChange)
                } else {
                    Some(SyncMessage::SharedChangeBatch(chunk))
                }
            })
            .collect()
    }
}

fn shared(
    model: String,
    uuid: Uuid,
    kind: ChangeKind,
    fields: BTreeMap<String, Value>,
) -> Result<(String, Write), CommandError> {
    if model == MEMBER_MODEL {
        return Err(CommandError::ReservedModel);
    }
    if fields
        .values()
        .any(|v| v.nesting() > crate::value::MAX_NESTING)
    {
        return Err(CommandError::ValueTooDeep);
    }
    // Peers refuse to decode values denser than their decode budget: such a write could
    // never reach them, so it is refused here instead.
    if crate::value::check_fields_decode(&fields).is_err() {
        return Err(CommandError::ValueTooDense);
    }
    Ok((
        model.clone(),
        Write::Shared {
            model,
            uuid,
            kind,
            fields,
        },
    ))
}

fn member(d: DeviceId, kind: ChangeKind) -> (String, Write) {
    (
        MEMBER_MODEL.to_owned(),
        Write::Shared {
            model: MEMBER_MODEL.to_owned(),
            uuid: d.0,
            kind,
            fields: BTreeMap::new(),
        },
    )
}

/// Splits `items` into runs whose sizes sum to at most `budget` (at least one item each).
pub(super) fn chunks<T>(items: Vec<T>, budget: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut used = 0;
    for item in items {
        let s = size(&item);
        match out.last_mut() {
            Some(cur) if used + s <= budget => {
                used += s;
                cur.push(item);
            }
            _ => {
                used = s;
                out.push(vec![item]);
            }
        }
    }
    out
}
