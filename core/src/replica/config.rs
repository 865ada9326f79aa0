//! Engine configuration.

use crate::codec::DEFAULT_MAX_FRAME;
use crate::id::DeviceId;
use crate::model::ModelRegistry;
use std::time::Duration;

/// Bytes of a frame kept for the message around the largest single change it carries.
pub const FRAME_ENVELOPE: usize = 1024;

/// How a [`crate::Replica`] behaves. Every limit here bounds memory or work per peer.
#[derive(Clone, Debug)]
pub struct Config {
    /// This device.
    pub device: DeviceId,
    /// The model types of the library.
    pub models: ModelRegistry,
    /// Remote shared stamps further ahead of local wall time are refused (default 5 min).
    pub max_clock_drift: Duration,
    /// Period of the anti-entropy summary (default 5 s).
    pub heartbeat_interval: Duration,
    /// Debounce of acknowledgements (default 5 s, the summary period): one ack per link
    /// covers every change of the period, so acks cost a bounded number of messages per
    /// second, not per change; the log prunes about this much later. An ack never waits past
    /// the next summary, which carries it (a summary's version vector is a cumulative ack):
    /// with the default, acknowledgements cost no message of their own.
    pub ack_delay: Duration,
    /// A catch-up request without an answer for this long is abandoned (default 30 s).
    pub request_timeout: Duration,
    /// Records asked for per catch-up page (default 2048).
    pub page_records: u32,
    /// Cap on records served per page, whatever the request asks (default 4096).
    pub max_page_records: u32,
    /// Byte budget of a served page (default 1 MiB, well below the 4 MiB frame limit).
    pub page_bytes: usize,
    /// Pages of a device-owned catch-up this device asks to have in flight at once (default
    /// 32): over a link of round-trip time `r`, catch-up moves at most this many pages per
    /// `r`, so the window hides the latency as long as the pages it holds take longer than
    /// `r` to apply. 1 is one page per round trip.
    pub catch_up_window: u32,
    /// Bytes of catch-up pages this device, serving, keeps in flight to one requester for one
    /// stream, whatever window it asks for (default 8 MiB, half the iroh transport's bulk
    /// queue per peer): the memory a catch-up can take on either side stays bounded.
    pub serve_window_bytes: usize,
    /// The transport's maximum frame size (default [`DEFAULT_MAX_FRAME`], the iroh
    /// transport's). A local write whose change could not travel in one frame is refused up
    /// front with [`CommandError::TooLarge`](crate::CommandError::TooLarge): every write the
    /// engine accepts can reach every member. Set it to the limit of the transport in use.
    pub max_frame: usize,
    /// Storage reads pending for one peer's requests before it is answered `Busy` (default 4).
    pub max_pending_reads_per_peer: usize,
    /// The most shared-change origins this device tracks (default
    /// [`MAX_ORIGINS`](crate::replica::MAX_ORIGINS)): a change from one more origin, or a
    /// snapshot whose claim would add more, is refused as misbehaviour
    /// ([`Refusal::TooManyOrigins`](crate::Refusal::TooManyOrigins)). Lowering it lowers the
    /// most memory and summary bytes a member can make this device spend on origins.
    pub max_origins: usize,
    /// A member not heard from for this long stops pinning the shared log (default: never).
    /// When it returns below the pruned horizon it takes a snapshot.
    pub eviction_after: Option<Duration>,
}

impl Config {
    /// Defaults for `device` with the given models.
    pub fn new(device: DeviceId, models: ModelRegistry) -> Self {
        Config {
            device,
            models,
            max_clock_drift: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(5),
            ack_delay: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            page_records: 2048,
            max_page_records: 4096,
            page_bytes: 1024 * 1024,
            catch_up_window: 32,
            serve_window_bytes: 8 * 1024 * 1024,
            max_frame: DEFAULT_MAX_FRAME,
            max_pending_reads_per_peer: 4,
            max_origins: super::MAX_ORIGINS,
            eviction_after: None,
        }
    }

    /// The largest change a local write may produce, in [`budget_size`] bytes: the frame
    /// limit minus [`FRAME_ENVELOPE`] for the message around it (request ids, cursors, the
    /// variant tag), so the change fits in any message that carries it alone — a push, a
    /// catch-up page. A shared record built by several updates of different fields can still
    /// outgrow it (see the README's known limits).
    ///
    /// [`budget_size`]: crate::OwnedRecord::budget_size
    pub fn max_write_bytes(&self) -> usize {
        self.max_frame.saturating_sub(FRAME_ENVELOPE)
    }

    /// Byte budget of the messages the engine splits itself (relays, relayed acks): the page
    /// budget, never more than a write may take.
    pub(crate) fn relay_budget(&self) -> usize {
        self.page_bytes.min(self.max_write_bytes()).max(1)
    }

    pub(crate) fn max_drift_ms(&self) -> u64 {
        u64::try_from(self.max_clock_drift.as_millis()).unwrap_or(u64::MAX)
    }
}
