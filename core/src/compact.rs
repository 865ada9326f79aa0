//! What the compact run forms (`owned_batch`,
//! `shared_batch`) share: record ids split into a delta-coded half and a
//! raw half, and the checks on a run's model table.

use crate::model::MAX_MODEL_NAME;
use serde::de;
use std::collections::BTreeSet;
use uuid::Uuid;

/// The id's two halves: the big-endian first 8 bytes (a UUIDv7's timestamp, close to the
/// previous id's in a run) and the last 8 bytes (random).
pub(crate) fn split_id(id: &Uuid) -> (u64, [u8; 8]) {
    let b = id.as_bytes();
    let mut high = [0u8; 8];
    let mut low = [0u8; 8];
    high.copy_from_slice(&b[..8]);
    low.copy_from_slice(&b[8..]);
    (u64::from_be_bytes(high), low)
}

/// Inverse of [`split_id`].
pub(crate) fn join_id(high: u64, low: [u8; 8]) -> Uuid {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&high.to_be_bytes());
    b[8..].copy_from_slice(&low);
    Uuid::from_bytes(b)
}

/// Refuses a model table with a name longer than [`MAX_MODEL_NAME`] (every change gets its
/// own copy of its model name: a long name would let a small frame of many tiny changes claim
/// memory quadratic in its size) or a name listed twice (one encoding per run).
pub(crate) fn check_models<E: de::Error>(models: &[String]) -> Result<(), E> {
    if models.iter().any(|m| m.len() > MAX_MODEL_NAME) {
        return Err(E::custom("model name too long"));
    }
    let mut distinct = BTreeSet::new();
    if !models.iter().all(|m| distinct.insert(m.as_str())) {
        return Err(E::custom("a model is listed twice"));
    }
    Ok(())
}
