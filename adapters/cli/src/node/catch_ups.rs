//! What `hybridsync node` prints of the catch-ups it runs: at most one progress line a period
//! for each, then its total.

use hybridsync_core::{DeviceId, Stream};
use std::time::{Duration, Instant};

/// One applied catch-up page, as [`Event::CatchUpProgress`](hybridsync_core::Event::CatchUpProgress) reports it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Page {
    /// Records (or shared changes) in the page.
    pub(super) applied: usize,
    /// The watermark reached (device-owned) or the changes so far (shared log).
    pub(super) position: u64,
    /// The head the peer announced (device-owned) or the changes in all (shared log).
    pub(super) target: Option<u64>,
}

/// The catch-ups running, and what of them is printed: at most one progress line per
/// `every` for each, none before it has run for `every` (a catch-up of a few records says
/// nothing until its total), and its total once done (nothing for a catch-up that brought
/// nothing: every connection starts with one per stream, most of them empty).
#[derive(Debug)]
pub(super) struct CatchUps {
    every: Duration,
    running: Vec<CatchUp>,
}

#[derive(Debug)]
struct CatchUp {
    peer: DeviceId,
    stream: Stream,
    started: Instant,
    /// Records (or shared changes) applied so far.
    records: u64,
    /// How far along, when the peer said how far it goes.
    percent: Option<u64>,
    /// When a progress line was last printed, if one was.
    shown: Option<Instant>,
}

impl CatchUps {
    pub(super) fn new(every: Duration) -> Self {
        CatchUps {
            every,
            running: Vec::new(),
        }
    }

    /// Records a page; returns the progress line to print, if one is due.
    pub(super) fn progress(
        &mut self,
        now: Instant,
        peer: DeviceId,
        stream: Stream,
        page: Page,
    ) -> Option<String> {
        let every = self.every;
        let c = match self
            .running
            .iter()
            .position(|c| c.peer == peer && c.stream == stream)
        {
            Some(i) => &mut self.running[i],
            None => {
                self.running.push(CatchUp {
                    peer,
                    stream,
                    started: now,
                    records: 0,
                    percent: None,
                    shown: None,
                });
                self.running.last_mut()?
            }
        };
        c.records = c.records.saturating_add(page.applied as u64);
        c.percent = page
            .target
            .filter(|t| *t > 0)
            .map(|t| (u128::from(page.position.min(t)) * 100 / u128::from(t)) as u64);
        let due = match c.shown {
            Some(at) => now.duration_since(at) >= every,
            None => now.duration_since(c.started) >= every,
        };
        if !due {
            return None;
        }
        c.shown = Some(now);
        let percent = c.percent.map(|p| format!(" ({p}%)")).unwrap_or_default();
        Some(format!(
            "catching up {} from {peer}: {} so far{percent}",
            what(stream),
            count(stream, c.records),
        ))
    }

    /// The catch-up is done; returns its total line, unless it brought nothing.
    pub(super) fn caught_up(
        &mut self,
        now: Instant,
        peer: DeviceId,
        stream: Stream,
    ) -> Option<String> {
        let i = self
            .running
            .iter()
            .position(|c| c.peer == peer && c.stream == stream)?;
        let c = self.running.swap_remove(i);
        if c.records == 0 {
            return None;
        }
        // The time it took is news only to a user who watched it go.
        let took = match c.shown {
            Some(_) => format!(" in {:.1}s", now.duration_since(c.started).as_secs_f64()),
            None => String::new(),
        };
        Some(format!(
            "caught up {} from {peer}{took}",
            amount(stream, c.records)
        ))
    }

    /// `peer` disconnected: its catch-ups end unfinished (they resume from where they got to
    /// once it is back). Returns a line for each one whose progress was shown.
    pub(super) fn interrupted(&mut self, peer: DeviceId) -> Vec<String> {
        let (gone, running) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|c| c.peer == peer);
        self.running = running;
        gone.into_iter()
            .filter(|c| c.shown.is_some())
            .map(|c| {
                format!(
                    "catching up {} from {peer}: interrupted after {} (resumes when it is back)",
                    what(c.stream),
                    count(c.stream, c.records)
                )
            })
            .collect()
    }
}

/// What a catch-up of `stream` brings, for a progress line.
fn what(stream: Stream) -> String {
    match stream {
        Stream::Owned(owner) => format!("records of {owner}"),
        Stream::SharedLog => "shared changes".to_owned(),
        Stream::SharedSnapshot => "a shared snapshot".to_owned(),
    }
}

/// `n` records (or shared changes) of `stream`.
fn count(stream: Stream, n: u64) -> String {
    let unit = match stream {
        Stream::SharedLog => "change",
        Stream::Owned(_) | Stream::SharedSnapshot => "record",
    };
    let s = if n == 1 { "" } else { "s" };
    format!("{n} {unit}{s}")
}

/// What a catch-up of `stream` brought, `n` of them, for its total line.
fn amount(stream: Stream, n: u64) -> String {
    let s = if n == 1 { "" } else { "s" };
    match stream {
        Stream::Owned(owner) => format!("{n} record{s} of {owner}"),
        Stream::SharedLog => format!("{n} shared change{s}"),
        Stream::SharedSnapshot => format!("a shared snapshot of {n} record{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn device(n: u8) -> DeviceId {
        DeviceId(uuid::Uuid::from_bytes([n; 16]))
    }

    fn page(applied: usize, position: u64, target: u64) -> Page {
        Page {
            applied,
            position,
            target: Some(target),
        }
    }

    #[test]
    fn a_short_catch_up_prints_only_its_total() {
        let (peer, t0) = (device(1), Instant::now());
        let mut c = CatchUps::new(SEC);
        let s = Stream::Owned(peer);
        assert_eq!(c.progress(t0, peer, s, page(3, 3, 5)), None);
        assert_eq!(c.progress(t0 + SEC / 2, peer, s, page(2, 5, 5)), None);
        assert_eq!(
            c.caught_up(t0 + SEC / 2, peer, s).as_deref(),
            Some("caught up 5 records of 01010101 from 01010101")
        );
        assert!(c.running.is_empty());
    }

    #[test]
    fn an_empty_catch_up_prints_nothing_and_one_change_is_singular() {
        let (peer, t0) = (device(1), Instant::now());
        let mut c = CatchUps::new(SEC);
        let s = Stream::SharedLog;
        assert_eq!(c.progress(t0, peer, s, page(0, 0, 0)), None);
        assert_eq!(c.caught_up(t0, peer, s), None);
        // One is one.
        assert_eq!(c.progress(t0, peer, s, page(1, 1, 1)), None);
        assert_eq!(
            c.caught_up(t0, peer, s).as_deref(),
            Some("caught up 1 shared change from 01010101")
        );
        // A catch-up that never reported a page is not news either.
        assert_eq!(c.caught_up(t0, peer, Stream::SharedSnapshot), None);
    }

    #[test]
    fn a_long_catch_up_prints_at_most_one_line_a_second_then_its_total() {
        let (peer, owner, t0) = (device(1), device(2), Instant::now());
        let mut c = CatchUps::new(SEC);
        let s = Stream::Owned(owner);
        // A page every 300 ms for 3 s: 1,000 records each, of 10,000.
        let lines: Vec<(u64, String)> = (1..=10u64)
            .filter_map(|k| {
                let at = t0 + Duration::from_millis(300 * (k - 1));
                let line = c.progress(at, peer, s, page(1000, k * 1000, 10_000))?;
                Some((300 * (k - 1), line))
            })
            .collect();
        let at: Vec<u64> = lines.iter().map(|(ms, _)| *ms).collect();
        assert_eq!(at, [1200, 2400], "{lines:?}");
        assert_eq!(
            lines[0].1,
            "catching up records of 02020202 from 01010101: 5000 records so far (50%)"
        );
        assert_eq!(
            c.caught_up(t0 + 3 * SEC, peer, s).as_deref(),
            Some("caught up 10000 records of 02020202 from 01010101 in 3.0s")
        );
    }

    #[test]
    fn a_catch_up_cut_short_says_so_only_if_its_progress_was_shown() {
        let (p, q, t0) = (device(1), device(2), Instant::now());
        let mut c = CatchUps::new(SEC);
        let log = Stream::SharedLog;
        assert_eq!(c.progress(t0, p, log, page(100, 100, 400)), None);
        assert!(c.progress(t0 + SEC, p, log, page(100, 200, 400)).is_some());
        assert_eq!(c.progress(t0, q, Stream::Owned(q), page(1, 1, 9)), None);
        assert_eq!(
            c.interrupted(p),
            [
                "catching up shared changes from 01010101: interrupted after 200 changes \
              (resumes when it is back)"
            ]
        );
        assert!(c.interrupted(q).is_empty());
        assert!(c.running.is_empty());
    }
}
