//! Time as an input: a monotonic instant for timers and a wall clock for HLC stamps.

use serde::{Deserialize, Serialize};
use std::ops::Add;
use std::time::Duration;

/// A point on the caller's monotonic clock, in microseconds since an arbitrary origin.
///
/// The engine never reads a clock; adapters convert their own monotonic clock (for example
/// `tokio::time::Instant` minus a start instant) and simulators use virtual time.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Instant(pub u64);

impl Instant {
    /// The origin of the monotonic clock.
    pub const ZERO: Instant = Instant(0);

    /// An instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Instant(micros)
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

/// The two clocks the engine is given with every input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Now {
    /// Monotonic time, for timers.
    pub mono: Instant,
    /// Wall-clock time in milliseconds since the Unix epoch, the physical time of HLC stamps.
    /// It may jump backwards; the HLC stays strictly increasing anyway.
    pub wall_ms: u64,
}

impl Now {
    /// Both clocks at once.
    pub const fn new(mono: Instant, wall_ms: u64) -> Self {
        Now { mono, wall_ms }
    }
}
