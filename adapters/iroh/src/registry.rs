//! The device registry: which iroh endpoints are which devices, and where to dial them.

use hybridsync_core::DeviceId;
use iroh::{EndpointAddr, EndpointId};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Inner {
    by_endpoint: BTreeMap<EndpointId, DeviceId>,
    by_device: BTreeMap<DeviceId, EndpointAddr>,
}

/// Maps authenticated iroh [`EndpointId`]s to [`DeviceId`]s (pairing: what a user approved).
///
/// A connection from an endpoint that is not registered is refused before any message is read.
/// Registered devices with at least one address are dialed and kept connected. The registry
/// can change while the transport runs (cheap to clone; every clone is the same registry).
/// Registration is about *identity*; membership in the library is the engine's decision (a
/// registered device that is not a member is refused by the engine and disconnected).
#[derive(Clone, Debug)]
pub struct DeviceRegistry {
    inner: Arc<Mutex<Inner>>,
    changed: watch::Sender<u64>,
}

impl Default for DeviceRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        DeviceRegistry {
            inner: Arc::default(),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation is a pair of map inserts/removes; a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers (or updates) `device` at `addr` (`addr.id` is its authenticated key). With
    /// no IP address in `addr`, the device is accepted but not dialed.
    pub fn insert(&self, device: DeviceId, addr: EndpointAddr) {
        {
            let mut inner = self.lock();
            if let Some(old) = inner.by_device.remove(&device) {
                inner.by_endpoint.remove(&old.id);
            }
            if let Some(other) = inner.by_endpoint.insert(addr.id, device) {
                if other != device {
                    inner.by_device.remove(&other);
                }
            }
            inner.by_device.insert(device, addr);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Forgets `device`: its connections are refused from now on.
    pub fn remove(&self, device: DeviceId) {
        {
            let mut inner = self.lock();
            if let Some(addr) = inner.by_device.remove(&device) {
                inner.by_endpoint.remove(&addr.id);
            }
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// The device an authenticated endpoint belongs to.
    pub fn device_of(&self, endpoint: &EndpointId) -> Option<DeviceId> {
        self.lock().by_endpoint.get(endpoint).copied()
    }

    /// Where to reach `device`.
    pub fn addr_of(&self, device: DeviceId) -> Option<EndpointAddr> {
        self.lock().by_device.get(&device).cloned()
    }

    /// Every registered device.
    pub fn devices(&self) -> Vec<(DeviceId, EndpointAddr)> {
        self.lock()
            .by_device
            .iter()
            .map(|(d, a)| (*d, a.clone()))
            .collect()
    }

    /// A receiver that changes whenever the registry does.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// What a device shares so others can pair with it: its device id, its endpoint id and its
/// direct addresses. Text form: `hybridsync:<device uuid>@<endpoint id hex>@<addr>,<addr>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The device.
    pub device: DeviceId,
    /// Its endpoint id and addresses.
    pub addr: EndpointAddr,
}

/// A ticket could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// Not of the form `hybridsync:<uuid>@<hex>@<addrs>`.
    #[error("a ticket looks like hybridsync:<device>@<endpoint>@<addr>,...")]
    Format,
    /// The device id is not a UUID.
    #[error("bad device id: {0}")]
    Device(String),
    /// The endpoint id is not 64 hex digits of a valid key.
    #[error("bad endpoint id")]
    Endpoint,
    /// An address is not `ip:port`.
    #[error("bad address {0:?}")]
    Address(String),
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self.addr.ip_addrs().map(ToString::to_string).collect();
        write!(
            f,
            "hybridsync:{}@{}@{}",
            self.device.0.simple(),
            self.addr.id,
            addrs.join(",")
        )
    }
}

fn hex_decode_32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = char::from(*bytes.get(2 * i)?).to_digit(16)?;
        let lo = char::from(*bytes.get(2 * i + 1)?).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix("hybridsync:")
            .ok_or(TicketError::Format)?;
        let mut parts = rest.splitn(3, '@');
        let (Some(dev), Some(ep), Some(addrs)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TicketError::Format);
        };
        let device = uuid::Uuid::parse_str(dev)
            .map(DeviceId)
            .map_err(|e| TicketError::Device(e.to_string()))?;
        let key = hex_decode_32(ep).ok_or(TicketError::Endpoint)?;
        let id = EndpointId::from_bytes(&key).map_err(|_| TicketError::Endpoint)?;
        let mut addr = EndpointAddr::new(id);
        for a in addrs.split(',').filter(|a| !a.is_empty()) {
            let sock = SocketAddr::from_str(a).map_err(|_| TicketError::Address(a.to_owned()))?;
            addr = addr.with_ip_addr(sock);
        }
        Ok(Ticket { device, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trips_through_text() {
        let key = iroh::SecretKey::from_bytes(&[7; 32]);
        let t = Ticket {
            device: DeviceId::from_u128(0xabc),
            addr: EndpointAddr::new(key.public())
                .with_ip_addr("127.0.0.1:4000".parse().expect("addr"))
                .with_ip_addr("[::1]:4001".parse().expect("addr")),
        };
        let back: Ticket = t.to_string().parse().expect("parses");
        assert_eq!(back, t);
    }

    #[test]
    fn malformed_ticket_is_a_typed_error() {
        assert!(matches!("nope".parse::<Ticket>(), Err(TicketError::Format)));
        assert!(matches!(
            "hybridsync:00000000000000000000000000000abc@zz@".parse::<Ticket>(),
            Err(TicketError::Endpoint)
        ));
    }

    #[test]
    fn re_registering_a_device_replaces_its_endpoint() {
        let r = DeviceRegistry::new();
        let k1 = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let k2 = iroh::SecretKey::from_bytes(&[2; 32]).public();
        let d = DeviceId::from_u128(1);
        r.insert(d, EndpointAddr::new(k1));
        r.insert(d, EndpointAddr::new(k2));
        assert_eq!(r.device_of(&k1), None);
        assert_eq!(r.device_of(&k2), Some(d));
    }
}
