//! Device identities.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The identity of one replica (a device) in a library.
///
/// The transport maps its own authenticated peer identity to a `DeviceId`; the engine trusts the
/// `from` it is given and never a device id found in a message body.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DeviceId(pub Uuid);

impl DeviceId {
    /// The all-zero id, used only as the device of [`crate::Hlc::ZERO`].
    pub const NIL: DeviceId = DeviceId(Uuid::nil());

    /// A device id from raw bytes (tests and simulators use small counters).
    pub const fn from_u128(v: u128) -> Self {
        DeviceId(Uuid::from_u128(v))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for DeviceId {
    /// Short form: the first 8 hex digits are enough to tell devices apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            write!(f, "{}", self.0)
        } else {
            let s = self.0.simple().to_string();
            write!(f, "{}", &s[..8])
        }
    }
}
