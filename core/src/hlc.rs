//! Hybrid logical clocks (Kulkarni et al., 2014).

use crate::id::DeviceId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A hybrid logical clock stamp, totally ordered by `(time_ms, counter, device)`.
///
/// The device makes stamps unique: two stamps are equal only if they name the same event.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Hlc {
    /// Physical component: milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Logical component: orders events within one millisecond.
    pub counter: u32,
    /// The device that made the stamp.
    pub device: DeviceId,
}

impl Hlc {
    /// The smallest stamp; older than every real event.
    pub const ZERO: Hlc = Hlc {
        time_ms: 0,
        counter: 0,
        device: DeviceId::NIL,
    };

    /// A stamp from its parts.
    pub const fn new(time_ms: u64, counter: u32, device: DeviceId) -> Self {
        Hlc {
            time_ms,
            counter,
            device,
        }
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.time_ms, self.counter, self.device)
    }
}

/// Why a remote stamp was not adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// The stamp is further ahead of local physical time than the configured drift bound.
    #[error("remote stamp is {ahead_ms} ms ahead of local time (bound {max_drift_ms} ms)")]
    TooFarAhead {
        /// How far ahead of local physical time the stamp is.
        ahead_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
}

/// The clock state of one device: the last stamp it issued or observed.
///
/// Stamps issued by [`HlcClock::tick`] are strictly increasing, whatever the wall clock does,
/// and across restarts as long as the caller persists [`HlcClock::last`] before it uses a stamp
/// and restores it with [`HlcClock::restore`].
#[derive(Clone, Debug)]
pub struct HlcClock {
    device: DeviceId,
    time_ms: u64,
    counter: u32,
    max_drift_ms: u64,
}

impl HlcClock {
    /// A clock for `device` that has seen nothing yet.
    pub fn new(device: DeviceId, max_drift_ms: u64) -> Self {
        HlcClock {
            device,
            time_ms: 0,
            counter: 0,
            max_drift_ms,
        }
    }

    /// A clock that continues after the persisted high-water mark `last`.
    pub fn restore(device: DeviceId, max_drift_ms: u64, last: Hlc) -> Self {
        HlcClock {
            device,
            time_ms: last.time_ms,
            counter: last.counter,
            max_drift_ms,
        }
    }

    /// The last stamp issued or observed (the high-water mark to persist).
    pub fn last(&self) -> Hlc {
        Hlc::new(self.time_ms, self.counter, self.device)
    }

    /// Issues a stamp for a local event or a send, at physical time `pt_ms`.
    ///
    /// `l' = max(l, pt)`; `c = c + 1` if `l' == l`, else `0`. A counter that would overflow
    /// advances `time_ms` by one instead of wrapping.
    pub fn tick(&mut self, pt_ms: u64) -> Hlc {
        if pt_ms > self.time_ms {
            self.time_ms = pt_ms;
            self.counter = 0;
        } else {
            self.bump_counter(self.counter);
        }
        self.last()
    }

    /// Checks that a remote stamp is within the drift bound of physical time `pt_ms`.
    pub fn check_drift(&self, remote: Hlc, pt_ms: u64) -> Result<(), ClockError> {
        let ahead_ms = remote.time_ms.saturating_sub(pt_ms);
        if ahead_ms > self.max_drift_ms {
            Err(ClockError::TooFarAhead {
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
            })
        } else {
            Ok(())
        }
    }

    /// Applies the receive rule for a remote stamp at physical time `pt_ms`.
    ///
    /// A stamp beyond the drift bound is refused and leaves the clock unchanged: one device with
    /// a clock in the far future must not drag everyone else forward.
    pub fn observe(&mut self, remote: Hlc, pt_ms: u64) -> Result<Hlc, ClockError> {
        self.check_drift(remote, pt_ms)?;
        let (l, c) = (self.time_ms, self.counter);
        let (lm, cm) = (remote.time_ms, remote.counter);
        let new_l = l.max(lm).max(pt_ms);
        if new_l == l && new_l == lm {
            self.time_ms = new_l;
            self.bump_counter(c.max(cm));
        } else if new_l == l {
            self.bump_counter(c);
        } else if new_l == lm {
            self.time_ms = new_l;
            self.bump_counter(cm);
        } else {
            self.time_ms = new_l;
            self.counter = 0;
        }
        Ok(self.last())
    }

    /// Sets the counter to `from + 1`, advancing the physical part on overflow.
    fn bump_counter(&mut self, from: u32) {
        match from.checked_add(1) {
            Some(c) => self.counter = c,
            None => {
                self.time_ms = self.time_ms.saturating_add(1);
                self.counter = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DeviceId = DeviceId::from_u128(1);
    const E: DeviceId = DeviceId::from_u128(2);
    const DRIFT: u64 = 300_000;

    #[test]
    fn local_stamps_strictly_increase_when_wall_clock_steps_back() {
        let mut c = HlcClock::new(D, DRIFT);
        let a = c.tick(1_000);
        let b = c.tick(500);
        let d = c.tick(500);
        let e = c.tick(1_000);
        assert!(a < b && b < d && d < e, "{a:?} {b:?} {d:?} {e:?}");
        assert_eq!(b, Hlc::new(1_000, 1, D));
    }

    #[test]
    fn local_stamp_takes_physical_time_when_it_is_ahead() {
        let mut c = HlcClock::new(D, DRIFT);
        c.tick(1_000);
        assert_eq!(c.tick(2_000), Hlc::new(2_000, 0, D));
    }

    #[test]
    fn restored_clock_continues_after_high_water_mark() {
        let mut c = HlcClock::new(D, DRIFT);
        let before = c.tick(10_000);
        let mut restarted = HlcClock::restore(D, DRIFT, c.last());
        let after = restarted.tick(1_000);
        assert!(after > before);
    }

    #[test]
    fn counter_overflow_advances_time_instead_of_wrapping() {
        let mut c = HlcClock::restore(D, DRIFT, Hlc::new(5, u32::MAX, D));
        let s = c.tick(1);
        assert_eq!(s, Hlc::new(6, 0, D));
        let mut c = HlcClock::restore(D, DRIFT, Hlc::new(5, u32::MAX - 1, D));
        c.observe(Hlc::new(5, u32::MAX, E), 1)
            .expect("within drift");
        assert_eq!(c.last(), Hlc::new(6, 0, D));
    }

    #[test]
    fn receive_rule_increments_counter_when_local_stays_maximum() {
        // Trap 4: l' == l only (remote and physical are behind).
        let mut c = HlcClock::restore(D, DRIFT, Hlc::new(100, 7, D));
        let s = c.observe(Hlc::new(50, 99, E), 10).expect("within drift");
        assert_eq!(s, Hlc::new(100, 8, D));
    }

    #[test]
    fn receive_rule_takes_max_counter_plus_one_when_times_tie() {
        let mut c = HlcClock::restore(D, DRIFT, Hlc::new(100, 7, D));
        let s = c.observe(Hlc::new(100, 3, E), 10).expect("within drift");
        assert_eq!(s, Hlc::new(100, 8, D));
        let s = c.observe(Hlc::new(100, 20, E), 10).expect("within drift");
        assert_eq!(s, Hlc::new(100, 21, D));
    }

    #[test]
    fn receive_rule_takes_remote_counter_plus_one_when_remote_leads() {
        let mut c = HlcClock::restore(D, DRIFT, Hlc::new(100, 7, D));
        let s = c.observe(Hlc::new(200, 4, E), 150).expect("within drift");
        assert_eq!(s, Hlc::new(200, 5, D));
    }

    #[test]
    fn receive_rule_resets_counter_when_physical_time_leads() {
        let mut c = HlcClock::restore(D, DRIFT, Hlc::new(100, 7, D));
        let s = c.observe(Hlc::new(200, 4, E), 300).expect("within drift");
        assert_eq!(s, Hlc::new(300, 0, D));
    }

    #[test]
    fn stamps_after_adopting_remote_stamp_exceed_it() {
        let mut c = HlcClock::new(D, DRIFT);
        let remote = Hlc::new(5_000, 9, E);
        c.observe(remote, 4_000).expect("within drift");
        let next = c.tick(4_000);
        assert!(next > remote);
    }

    #[test]
    fn far_future_stamp_is_refused_and_not_adopted() {
        let mut c = HlcClock::new(D, DRIFT);
        c.tick(1_000);
        let before = c.last();
        let err = c
            .observe(Hlc::new(1_000 + DRIFT + 1, 0, E), 1_000)
            .expect_err("beyond drift");
        assert_eq!(
            err,
            ClockError::TooFarAhead {
                ahead_ms: DRIFT + 1,
                max_drift_ms: DRIFT
            }
        );
        assert_eq!(c.last(), before);
        assert!(c.observe(Hlc::new(1_000 + DRIFT, 0, E), 1_000).is_ok());
    }
}
