//! Model registry: which record types exist and how each replicates.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The built-in shared model that holds the library's member set.
///
/// Its records are keyed by the member's device UUID; an `Insert` adds a member, a `Delete`
/// removes one. It replicates through the shared log like every shared model.
pub const MEMBER_MODEL: &str = "hybridsync.member";

/// The longest model name, in bytes. A decoded run of device-owned changes copies its model
/// names into every change, so the cap bounds what a hostile frame can make a peer allocate.
pub const MAX_MODEL_NAME: usize = 128;

/// How a model replicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    /// Written only by its owner; replicated state-based by per-owner sequence numbers.
    DeviceOwned,
    /// Written by anyone; replicated through the HLC-stamped log, merged per field.
    Shared,
}

/// The set of model types a library knows. Changes to unknown models are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRegistry {
    models: BTreeMap<String, ModelKind>,
}

impl Default for ModelRegistry {
    fn default() -> Self {
        let mut models = BTreeMap::new();
        models.insert(MEMBER_MODEL.to_owned(), ModelKind::Shared);
        ModelRegistry { models }
    }
}

impl ModelRegistry {
    /// A registry with only the built-in member model.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Spacedrive-style default set: `location`, `entry`, `volume` are device-owned;
    /// `tag`, `album`, `user_metadata` are shared.
    pub fn spacedrive() -> Self {
        Self::new()
            .with("location", ModelKind::DeviceOwned)
            .with("entry", ModelKind::DeviceOwned)
            .with("volume", ModelKind::DeviceOwned)
            .with("tag", ModelKind::Shared)
            .with("album", ModelKind::Shared)
            .with("user_metadata", ModelKind::Shared)
    }

    /// Adds (or redefines) a model.
    ///
    /// # Panics
    ///
    /// If `name` is longer than [`MAX_MODEL_NAME`] bytes (peers refuse such names in
    /// device-owned runs, so records of the model could never be sent).
    pub fn with(mut self, name: &str, kind: ModelKind) -> Self {
        assert!(
            name.len() <= MAX_MODEL_NAME,
            "model name of {} bytes, longer than MAX_MODEL_NAME ({MAX_MODEL_NAME})",
            name.len()
        );
        self.models.insert(name.to_owned(), kind);
        self
    }

    /// How `name` replicates, if it is known.
    pub fn kind(&self, name: &str) -> Option<ModelKind> {
        self.models.get(name).copied()
    }

    /// Every model in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ModelKind)> {
        self.models.iter().map(|(n, k)| (n.as_str(), *k))
    }
}
