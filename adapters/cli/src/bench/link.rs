//! A wide-area link between two devices on 127.0.0.1, for the WAN figures of `hybridsync
//! bench`: a UDP forwarder that delays every datagram by half the round-trip time and can cap
//! the bandwidth (a FIFO queue drained at the link rate, dropping at its tail when it holds
//! more than one bandwidth-delay product, as a router's buffer would) and lose datagrams at
//! random.
//!
//! The forwarder stands in for each device towards the other: device A is given
//! [`Link::to_b`] as B's address and B is given [`Link::to_a`] as A's, so every datagram
//! between them, whichever side dials, crosses the link. iroh runs with relays and address
//! lookup off, and A listens on the IPv4 loopback while B listens on the IPv6 one: iroh's NAT
//! traversal tells each side the other's own addresses over the connection, and on one
//! loopback it would find the direct path around the link within a second.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the forwarder's threads look at the stop flag while idle.
const POLL: Duration = Duration::from_millis(50);

/// Receive buffer of the forwarder's sockets, bytes (more than the bandwidth-delay product of
/// the catch-up windows at the round-trip times the bench uses).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// The shape of a link.
#[derive(Clone, Copy, Debug)]
pub struct LinkSpec {
    /// Round-trip time added (half in each direction).
    pub rtt: Duration,
    /// Bandwidth cap in each direction, bits per second (`None`: as fast as loopback).
    pub rate_bps: Option<u64>,
    /// Probability that a datagram is lost, in each direction.
    pub loss: f64,
}

/// Datagrams and bytes one direction of a link carried and dropped.
#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
    datagrams: AtomicU64,
    dropped: AtomicU64,
}

/// What one direction of a link carried.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Carried {
    /// UDP payload bytes delivered (QUIC packets, headers and all).
    pub bytes: u64,
    /// Datagrams delivered.
    pub datagrams: u64,
    /// Datagrams lost (at random, or at the tail of a full queue).
    pub dropped: u64,
}

impl Counters {
    fn carried(&self) -> Carried {
        Carried {
            bytes: self.bytes.load(Ordering::Relaxed),
            datagrams: self.datagrams.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// A running link; stops when dropped.
pub struct Link {
    /// The address A uses for B.
    pub to_b: SocketAddr,
    /// The address B uses for A.
    pub to_a: SocketAddr,
    a_to_b: Arc<Counters>,
    b_to_a: Arc<Counters>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts a link between A (on the IPv4 loopback at `a`, or learnt from its datagrams
    /// when `None`; the latest sender wins) and B (at `b`, on either loopback).
    pub fn start(spec: LinkSpec, a: Option<SocketAddr>, b: SocketAddr) -> io::Result<Link> {
        let to_b = UdpSocket::bind("127.0.0.1:0")?;
        let to_a = UdpSocket::bind(if b.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })?;
        to_b.set_read_timeout(Some(POLL))?;
        to_a.set_read_timeout(Some(POLL))?;
        for socket in [&to_b, &to_a] {
            // A router's buffer, not the kernel's default (about 200 KB): a catch-up burst
            // of a few MB arriving while both cores are busy overflowed it (the kernel's UDP
            // receive-buffer errors rose by about 260 per sync), and every such loss made QUIC
            // back off as if the link were congested. The kernel caps it at `rmem_max`.
            socket2::SockRef::from(socket).set_recv_buffer_size(SOCKET_BUFFER)?;
        }
        let a_addr = Arc::new(Mutex::new(a));
        let stop = Arc::new(AtomicBool::new(false));
        let (a_to_b, b_to_a) = (Arc::<Counters>::default(), Arc::<Counters>::default());
        let mut threads = Vec::new();
        // A -> B: datagrams arrive at `to_b` and leave from `to_a` (so B sees them from "A").
        let (tx, rx) = mpsc::channel();
        threads.push(receive(
            to_b.try_clone()?,
            Shaper::new(spec, 1),
            tx,
            Some(a_addr.clone()),
            a_to_b.clone(),
            stop.clone(),
        ));
        let dest = Arc::new(Mutex::new(Some(b)));
        threads.push(deliver(
            to_a.try_clone()?,
            rx,
            dest,
            a_to_b.clone(),
            stop.clone(),
        ));
        // B -> A: the other way round.
        let (tx, rx) = mpsc::channel();
        threads.push(receive(
            to_a.try_clone()?,
            Shaper::new(spec, 2),
            tx,
            None,
            b_to_a.clone(),
            stop.clone(),
        ));
        threads.push(deliver(
            to_b.try_clone()?,
            rx,
            a_addr,
            b_to_a.clone(),
            stop.clone(),
        ));
        Ok(Link {
            to_b: to_b.local_addr()?,
            to_a: to_a.local_addr()?,
            a_to_b,
            b_to_a,
            stop,
            threads,
        })
    }

    /// What the link carried from A to B so far.
    pub fn a_to_b(&self) -> Carried {
        self.a_to_b.carried()
    }

    /// What the link carried from B to A so far.
    pub fn b_to_a(&self) -> Carried {
        self.b_to_a.carried()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// When each datagram of one direction reaches the far end.
struct Shaper {
    one_way: Duration,
    rate_bps: Option<u64>,
    loss: f64,
    /// When the link finishes sending what it holds (the tail of the FIFO queue).
    free_at: Instant,
    /// Bytes the queue may hold before it drops at its tail: one bandwidth-delay product
    /// (at least 64 KiB).
    queue_limit: u64,
    rng: u64,
}

impl Shaper {
    fn new(spec: LinkSpec, seed: u64) -> Shaper {
        let bdp = spec
            .rate_bps
            .map_or(0, |r| (r as f64 / 8.0 * spec.rtt.as_secs_f64()) as u64);
        Shaper {
            one_way: spec.rtt / 2,
            rate_bps: spec.rate_bps.filter(|r| *r > 0),
            loss: spec.loss,
            free_at: Instant::now(),
            queue_limit: bdp.max(64 * 1024),
            rng: 0x9e37_79b9_7f4a_7c15 ^ seed,
        }
    }

    /// xorshift64*: a benchmark's loss pattern needs no better.
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When a datagram of `len` bytes arriving `now` is delivered, or `None` if it is lost.
    fn admit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        if self.loss > 0.0 && self.uniform() < self.loss {
            return None;
        }
        let Some(rate) = self.rate_bps else {
            return Some(now + self.one_way);
        };
        let start = self.free_at.max(now);
        let queued = (start - now).as_secs_f64() * rate as f64 / 8.0;
        if queued > self.queue_limit as f64 {
            return None;
        }
        self.free_at = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
        Some(self.free_at + self.one_way)
    }
}

/// Reads datagrams arriving at `socket` and queues them for delivery; remembers the latest
/// sender in `learn` (A's address: A may restart on another port, as a device does).
fn receive(
    socket: UdpSocket,
    mut shaper: Shaper,
    queue: Sender<(Instant, Vec<u8>)>,
    learn: Option<Arc<Mutex<Option<SocketAddr>>>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let (n, from) = match socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => return,
            };
            if let Some(learn) = &learn {
                if let Ok(mut a) = learn.lock() {
                    *a = Some(from);
                }
            }
            match shaper.admit(Instant::now(), n) {
                Some(at) => {
                    if queue.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                None => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// Sends each queued datagram from `socket` to `dest` at its delivery time.
fn deliver(
    socket: UdpSocket,
    queue: Receiver<(Instant, Vec<u8>)>,
    dest: Arc<Mutex<Option<SocketAddr>>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let (at, bytes) = match queue.recv_timeout(POLL) {
                Ok(d) => d,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let wait = at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let to = dest.lock().ok().and_then(|d| *d);
            if let Some(to) = to {
                // Counted before it leaves, so the far end never sees a datagram the counters
                // do not show yet.
                counters
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                counters.datagrams.fetch_add(1, Ordering::Relaxed);
                if socket.send_to(&bytes, to).is_err() {
                    counters
                        .bytes
                        .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
                    counters.datagrams.fetch_sub(1, Ordering::Relaxed);
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_crosses_the_link_after_half_the_round_trip_and_replies_come_back() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        b.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        a.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let spec = LinkSpec {
            rtt: Duration::from_millis(60),
            rate_bps: None,
            loss: 0.0,
        };
        let link = Link::start(spec, None, b.local_addr().expect("addr")).expect("link");
        let t = Instant::now();
        a.send_to(b"ping", link.to_b).expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).expect("b receives");
        assert!(
            t.elapsed() >= Duration::from_millis(30),
            "{:?}",
            t.elapsed()
        );
        assert_eq!((&buf[..n], from), (&b"ping"[..], link.to_a));
        b.send_to(b"pong", from).expect("reply");
        let (n, from) = a.recv_from(&mut buf).expect("a receives");
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );
        assert_eq!((&buf[..n], from), (&b"pong"[..], link.to_b));
        assert_eq!(link.a_to_b().bytes, 4);
        assert_eq!(link.b_to_a().datagrams, 1);
    }

    #[test]
    fn a_capped_link_spaces_datagrams_at_its_rate_and_drops_past_its_queue() {
        let spec = LinkSpec {
            rtt: Duration::from_millis(10),
            rate_bps: Some(8_000_000), // 1 MB/s: 1,000 bytes take 1 ms
            loss: 0.0,
        };
        let mut s = Shaper::new(spec, 1);
        let now = Instant::now();
        let first = s.admit(now, 1000).expect("admitted");
        let second = s.admit(now, 1000).expect("admitted");
        assert_eq!(second - first, Duration::from_millis(1));
        // The queue holds 64 KiB (more than the bandwidth-delay product of 10 KB).
        let admitted = (0..200).filter(|_| s.admit(now, 1000).is_some()).count();
        assert!((60..70).contains(&admitted), "{admitted}");
    }
}
