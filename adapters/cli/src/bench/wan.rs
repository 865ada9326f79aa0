//! The WAN figures: the initial sync, one change's latency and a reconnect, each across a
//! [`Link`](super::link::Link) on 127.0.0.1 that adds a round-trip time (and optionally caps the bandwidth and
//! loses datagrams) on the real UDP path between the iroh endpoints.
//!
//! Next to each sync with the engine's catch-up window, the first round-trip time is also
//! measured with a window of one page (one page per round trip, as catch-up was before the
//! window): the same-run baseline of what the window buys.

use super::latency::{self, LatencyFigures};
use super::link::{Carried, LinkSpec};
use super::sync::{self, remove_db, Over, ReconnectFigures};
use super::{median, progress, Plan};
use crate::support;
use anyhow::Context;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// History of the reconnect measured across the link.
const RECONNECT_HISTORY: u64 = 10_000;

/// One initial sync across a link (medians over its rounds).
#[derive(Clone, Debug, Serialize)]
pub struct WanSync {
    /// Round-trip time of the link, ms.
    pub rtt_ms: u64,
    /// Bandwidth cap, Mbit/s (`None`: uncapped).
    pub rate_mbit: Option<f64>,
    /// Datagram loss probability in each direction.
    pub loss: f64,
    /// The sink's catch-up window, pages.
    pub window: u32,
    /// Records synced.
    pub records: u64,
    /// Rounds measured.
    pub rounds: usize,
    /// Dial to caught up, seconds (median).
    pub total_s: f64,
    /// Every round, seconds.
    pub rounds_s: Vec<f64>,
    /// Catch-up pages.
    pub pages: u64,
    /// What the link carried source -> sink (last round).
    pub down: Carried,
    /// What the link carried sink -> source (last round).
    pub up: Carried,
    /// With a cap: the time the link needs to carry `down.bytes`, seconds.
    pub link_s: Option<f64>,
    /// With a cap: `total_s / link_s`.
    pub ratio_to_link: Option<f64>,
}

/// Everything measured across links.
#[derive(Clone, Debug, Serialize)]
pub struct WanFigures {
    /// The initial syncs.
    pub syncs: Vec<WanSync>,
    /// One change's latency across the first round-trip time.
    pub latency: Option<LatencyFigures>,
    /// Its round-trip time, ms.
    pub latency_rtt_ms: u64,
    /// A reconnect across the first round-trip time.
    pub reconnect: Option<ReconnectFigures>,
}

/// Runs the WAN part of `plan` with database files in `dir`.
pub fn run(plan: &Plan, dir: &Path) -> anyhow::Result<WanFigures> {
    let (_, source_id) = super::child::identity(sync::SOURCE_KEY);
    let first_rtt = plan.wan_rtts_ms.first().copied().unwrap_or(50);
    let spec = |rtt_ms: u64, rate_mbit: Option<f64>| LinkSpec {
        rtt: Duration::from_millis(rtt_ms),
        rate_bps: rate_mbit.map(|m| (m * 1e6) as u64),
        loss: plan.wan_loss,
    };
    let n = plan.sync_records;
    let src = dir.join(format!("wan-source-{n}.db"));
    let sink = dir.join(format!("wan-sink-{n}.db"));
    progress(&format!("wan: seeding the source with {n} records"));
    sync::seed(&src, source_id, n)?;
    let mut syncs = Vec::new();
    // (rtt, cap, window, rounds): every rtt with the default window; the first also capped
    // and with one page per round trip.
    let mut runs: Vec<(u64, Option<f64>, Option<u32>, usize)> = plan
        .wan_rtts_ms
        .iter()
        .map(|&rtt| (rtt, None, None, plan.rounds))
        .collect();
    if let Some(rate) = plan.wan_rate_mbit {
        runs.push((first_rtt, Some(rate), None, plan.rounds));
    }
    runs.push((first_rtt, None, Some(1), 1));
    for (rtt_ms, rate_mbit, window, rounds) in runs {
        let mut times = Vec::new();
        let mut last = None;
        for round in 0..rounds {
            progress(&format!(
                "wan: sync of {n} records, rtt {rtt_ms} ms{}, window {}: round {} of {rounds}",
                rate_mbit.map_or(String::new(), |r| format!(", {r} Mbit/s")),
                window.map_or("default".to_owned(), |w| w.to_string()),
                round + 1
            ));
            let over = Over {
                link: Some(spec(rtt_ms, rate_mbit)),
                window,
            };
            let (r, _) = sync::sync_round(&src, &sink, n, false, over)?;
            progress(&format!("wan: {:.2} s", r.synced.total_ms / 1e3));
            times.push(r.synced.total_ms / 1e3);
            last = Some(r);
        }
        let last = last.context("no round")?;
        let (down, up) = last.carried.unwrap_or_default();
        let total_s = median(&times);
        let link_s = rate_mbit.map(|m| down.bytes as f64 * 8.0 / (m * 1e6));
        syncs.push(WanSync {
            rtt_ms,
            rate_mbit,
            loss: plan.wan_loss,
            window: window.unwrap_or_else(default_window),
            records: n,
            rounds,
            total_s,
            rounds_s: times,
            pages: last.synced.pages,
            down,
            up,
            link_s,
            ratio_to_link: link_s.map(|l| total_s / l.max(1e-9)),
        });
    }
    remove_db(&sink);
    remove_db(&src);

    progress(&format!(
        "wan: reconnect at {RECONNECT_HISTORY} records of history, rtt {first_rtt} ms"
    ));
    let src = dir.join("wan-reconnect-source.db");
    let sink = dir.join("wan-reconnect-sink.db");
    sync::seed(&src, source_id, RECONNECT_HISTORY)?;
    let over = Over {
        link: Some(spec(first_rtt, None)),
        window: None,
    };
    let (_, reconnect) = sync::sync_round(&src, &sink, RECONNECT_HISTORY, true, over)?;
    remove_db(&sink);
    remove_db(&src);

    progress(&format!(
        "wan: latency of {} changes, rtt {first_rtt} ms",
        plan.latency_samples
    ));
    let latency = support::runtime()?.block_on(latency::run(
        dir,
        plan.latency_samples,
        Some(spec(first_rtt, None)),
    ))?;
    Ok(WanFigures {
        syncs,
        latency: Some(latency),
        latency_rtt_ms: first_rtt,
        reconnect,
    })
}

fn default_window() -> u32 {
    hybridsync_core::Config::new(
        hybridsync_core::DeviceId::NIL,
        hybridsync_core::ModelRegistry::new(),
    )
    .catch_up_window
}
