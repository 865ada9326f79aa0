//! Device-owned records: state-based replication ordered by the owner's sequence counter.

use crate::hlc::Hlc;
use crate::id::DeviceId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One version of a device-owned record: `(owner, seq, hlc, data | tombstone)`.
///
/// `seq` numbers every change the owner makes to any of its device-owned records (1, 2, 3...),
/// so it totally orders the versions of one record. `data: None` is a versioned tombstone.
/// The payload is opaque to the engine (see [`crate::Value::to_bytes`] for a typed encoding).
/// Records are keyed by `(owner, model, uuid)`: two owners can never write the same record.
///
/// Its serde form (used for content digests) leaves out the stamp's device: it is always the
/// owner. On the wire a record travels as an [`OwnedChange`], without its owner either.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnedRecord {
    /// The only device that may write this record.
    pub owner: DeviceId,
    /// The owner's sequence number of this change.
    pub seq: u64,
    /// When the owner made the change (informational: ordering is by `seq`).
    pub hlc: Hlc,
    /// The model type (a device-owned model of the registry).
    pub model: String,
    /// The record id (UUIDv7 recommended: time-ordered keys insert ~9x faster).
    pub uuid: Uuid,
    /// The payload, or `None` for a deletion.
    pub data: Option<Vec<u8>>,
}

/// One version of a device-owned record as it travels: an [`OwnedRecord`] without its owner.
///
/// The owner is never taken from a change's body. A real-time push
/// ([`SyncMessage::StateChange`](crate::SyncMessage::StateChange) or `StateBatch`) holds the
/// authenticated sender's own changes, and a catch-up page (`StateResponse`) names its owner
/// once. So a peer cannot even express a change to another device's record in a push, and the
/// 17 bytes of an owner per record are saved. Record ids are encoded as 16 fixed bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnedChange {
    /// The owner's sequence number of this change.
    pub seq: u64,
    /// The wall-clock part of the owner's stamp (its device is the owner).
    pub time_ms: u64,
    /// The logical counter of the owner's stamp.
    pub counter: u32,
    /// The model type (a device-owned model of the registry).
    pub model: String,
    /// The record id.
    #[serde(with = "uuid_bytes")]
    pub uuid: Uuid,
    /// The payload, or `None` for a deletion.
    #[serde(with = "serde_bytes")]
    pub data: Option<Vec<u8>>,
}

impl OwnedChange {
    /// The record this change is a version of, with its owner.
    pub fn into_record(self, owner: DeviceId) -> OwnedRecord {
        OwnedRecord {
            owner,
            seq: self.seq,
            hlc: Hlc::new(self.time_ms, self.counter, owner),
            model: self.model,
            uuid: self.uuid,
            data: self.data,
        }
    }
}

impl From<OwnedRecord> for OwnedChange {
    /// The change without its owner (and without the stamp's device, which is the owner).
    fn from(r: OwnedRecord) -> Self {
        OwnedChange {
            seq: r.seq,
            time_ms: r.hlc.time_ms,
            counter: r.hlc.counter,
            model: r.model,
            uuid: r.uuid,
            data: r.data,
        }
    }
}

/// A [`Uuid`] as 16 fixed bytes (the `uuid` crate's compact serde form carries a length byte).
pub(crate) mod uuid_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use uuid::Uuid;

    /// Serializes `u` as `[u8; 16]`.
    pub(crate) fn serialize<S: Serializer>(u: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        u.as_bytes().serialize(s)
    }

    /// Deserializes a `[u8; 16]`.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        <[u8; 16]>::deserialize(d).map(Uuid::from_bytes)
    }
}

/// The serde form of an [`OwnedRecord`] (borrowed, for encoding).
#[derive(Serialize)]
struct WireRef<'a> {
    owner: DeviceId,
    seq: u64,
    time_ms: u64,
    counter: u32,
    model: &'a str,
    uuid: Uuid,
    data: Option<&'a serde_bytes::Bytes>,
}

/// The serde form of an [`OwnedRecord`] (owned, for decoding).
#[derive(Deserialize)]
struct Wire {
    owner: DeviceId,
    seq: u64,
    time_ms: u64,
    counter: u32,
    model: String,
    uuid: Uuid,
    data: Option<serde_bytes::ByteBuf>,
}

impl Serialize for OwnedRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireRef {
            owner: self.owner,
            seq: self.seq,
            time_ms: self.hlc.time_ms,
            counter: self.hlc.counter,
            model: &self.model,
            uuid: self.uuid,
            data: self.data.as_deref().map(serde_bytes::Bytes::new),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for OwnedRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(OwnedRecord {
            owner: w.owner,
            seq: w.seq,
            hlc: Hlc::new(w.time_ms, w.counter, w.owner),
            model: w.model,
            uuid: w.uuid,
            data: w.data.map(serde_bytes::ByteBuf::into_vec),
        })
    }
}

/// The storage key of a device-owned record.
pub type OwnedKey = (DeviceId, String, Uuid);

impl OwnedRecord {
    /// The storage key `(owner, model, uuid)`.
    pub fn key(&self) -> OwnedKey {
        (self.owner, self.model.clone(), self.uuid)
    }

    /// Whether this is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.data.is_none()
    }

    /// The size this record counts against a page's byte budget (an upper bound of its
    /// encoding). Every backend pages with this same function.
    pub fn budget_size(&self) -> usize {
        48 + self.model.len() + self.data.as_ref().map_or(0, Vec::len)
    }
}

/// The merge rule for device-owned records: whether `incoming` replaces `existing`.
///
/// A version replaces another only if it is for the same key and has a higher `seq`; a
/// duplicate or older version never regresses a record, and a tombstone is beaten only by a
/// newer version. This is the only definition of the rule; every backend calls it or mirrors it
/// exactly (the conformance suite checks).
pub fn supersedes(incoming: &OwnedRecord, existing: Option<&OwnedRecord>) -> bool {
    match existing {
        None => true,
        Some(e) => incoming.seq > e.seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, data: Option<&[u8]>) -> OwnedRecord {
        OwnedRecord {
            owner: DeviceId::from_u128(1),
            seq,
            hlc: Hlc::new(seq, 0, DeviceId::from_u128(1)),
            model: "entry".into(),
            uuid: Uuid::from_u128(9),
            data: data.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn older_or_duplicate_version_never_regresses_record() {
        let current = rec(5, Some(b"new"));
        assert!(!supersedes(&rec(4, Some(b"old")), Some(&current)));
        assert!(!supersedes(&rec(5, Some(b"dup")), Some(&current)));
        assert!(supersedes(&rec(6, Some(b"newer")), Some(&current)));
    }

    #[test]
    fn wire_form_omits_the_stamp_device_and_restores_it_from_the_owner() {
        let r = rec(5, Some(b"payload"));
        let bytes = postcard::to_stdvec(&r).expect("encodes");
        let back: OwnedRecord = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, r);
        let mut spoofed = r.clone();
        spoofed.hlc.device = DeviceId::from_u128(99);
        let back: OwnedRecord =
            postcard::from_bytes(&postcard::to_stdvec(&spoofed).expect("encodes"))
                .expect("decodes");
        assert_eq!(back.hlc.device, r.owner);
    }

    #[test]
    fn tombstone_beats_older_versions_and_loses_to_newer() {
        let tomb = rec(5, None);
        assert!(supersedes(&tomb, Some(&rec(4, Some(b"x")))));
        assert!(!supersedes(&rec(3, Some(b"late")), Some(&tomb)));
        assert!(supersedes(&rec(6, Some(b"recreated")), Some(&tomb)));
    }
}
