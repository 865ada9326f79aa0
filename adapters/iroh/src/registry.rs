//! The device registry: which iroh endpoints are which devices, and where to dial them.

use hybridsync_core::DeviceId;
use iroh::{EndpointAddr, EndpointId, RelayUrl};
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

/// The device id of an endpoint key: the key's first 16 bytes, as a UUID.
///
/// A [`Ticket`] must name this device id for its key, so a ticket cannot claim another
/// device's id (finding a key whose first 16 bytes equal another key's takes about 2^128
/// tries) and a mistyped key in the first half of a ticket's key is caught. The
/// `hybridsync` CLI gives every device this id; an application that exchanges tickets must
/// do the same.
pub fn device_id_for(key: &EndpointId) -> DeviceId {
    let mut b = [0u8; 16];
    b.copy_from_slice(&key.as_bytes()[..16]);
    DeviceId(uuid::Uuid::from_bytes(b))
}

/// A registration was refused: it would have re-bound a device or a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The device is registered with another endpoint key. [`DeviceRegistry::insert`] never
    /// replaces a device's key; [`DeviceRegistry::rebind`] does, when that is what is meant.
    #[error(
        "device {device:#} is already paired with endpoint {bound}, not {offered} (a device's key never changes by re-adding it)"
    )]
    DeviceBound {
        /// The device.
        device: DeviceId,
        /// The key it is registered with.
        bound: EndpointId,
        /// The key that was offered.
        offered: EndpointId,
    },
    /// The endpoint key is registered as another device.
    #[error("endpoint {endpoint} is already paired as device {bound:#}, not {offered:#}")]
    EndpointBound {
        /// The key.
        endpoint: EndpointId,
        /// The device it is registered as.
        bound: DeviceId,
        /// The device that was offered.
        offered: DeviceId,
    },
}

/// Maps authenticated iroh [`EndpointId`]s to [`DeviceId`]s (pairing: what a user approved).
///
/// A connection from an endpoint that is not registered is refused before any message is read.
/// Registered devices with at least one address (direct or relay URL) are dialed and kept
/// connected. The registry
/// can change while the transport runs (cheap to clone; every clone is the same registry).
/// Registration is about *identity*; membership in the library is the engine's decision (a
/// registered device that is not a member is refused by the engine and disconnected).
///
/// The binding between a device and its key is one-to-one and never changes by accident:
/// [`insert`](Self::insert) refuses a device that is registered with another key and a key
/// that is registered as another device ([`RegistryError`]); only
/// [`rebind`](Self::rebind) replaces a device's key. The registry itself accepts any device
/// id (an application may assign its own); a [`Ticket`] only parses when its device id is
/// [`device_id_for`] its key.
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

    /// Registers `device` at `addr` (`addr.id` is its authenticated key), or updates the
    /// addresses of a device already registered with that same key. `addr` may hold direct
    /// addresses and relay URLs; with neither, the device is accepted but dialed only by an
    /// endpoint with address lookup (which finds it by its id).
    ///
    /// Never re-binds: a device registered with another key ([`RegistryError::DeviceBound`])
    /// and a key registered as another device ([`RegistryError::EndpointBound`]) are refused
    /// and the registry is left unchanged. Use [`rebind`](Self::rebind) to replace a device's
    /// key, or [`remove`](Self::remove) the other device first.
    pub fn insert(&self, device: DeviceId, addr: EndpointAddr) -> Result<(), RegistryError> {
        {
            let mut inner = self.lock();
            if let Some(bound) = inner.by_device.get(&device) {
                if bound.id != addr.id {
                    return Err(RegistryError::DeviceBound {
                        device,
                        bound: bound.id,
                        offered: addr.id,
                    });
                }
            }
            Self::check_endpoint(&inner, device, &addr)?;
            inner.by_endpoint.insert(addr.id, device);
            inner.by_device.insert(device, addr);
        }
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Registers `device` at `addr` even if it is registered with another key: the old key
    /// is forgotten (its connections are closed and refused from now on). Returns the key it
    /// replaced, if any. Still refuses a key registered as another device
    /// ([`RegistryError::EndpointBound`]): [`remove`](Self::remove) that device first.
    ///
    /// This is the only way to change a device's key; call it only when the user confirmed
    /// that the device really has a new key (tickets are checked by [`Ticket`]'s parser, but
    /// a device id not derived from the key, or a typo in the second half of a key, is not
    /// caught there).
    pub fn rebind(
        &self,
        device: DeviceId,
        addr: EndpointAddr,
    ) -> Result<Option<EndpointId>, RegistryError> {
        let replaced = {
            let mut inner = self.lock();
            Self::check_endpoint(&inner, device, &addr)?;
            let old = inner.by_device.insert(device, addr.clone());
            if let Some(old) = &old {
                inner.by_endpoint.remove(&old.id);
            }
            inner.by_endpoint.insert(addr.id, device);
            old.map(|a| a.id).filter(|id| *id != addr.id)
        };
        self.changed.send_modify(|v| *v += 1);
        Ok(replaced)
    }

    /// Refuses `addr.id` if it is registered as a device other than `device`.
    fn check_endpoint(
        inner: &Inner,
        device: DeviceId,
        addr: &EndpointAddr,
    ) -> Result<(), RegistryError> {
        match inner.by_endpoint.get(&addr.id) {
            Some(bound) if *bound != device => Err(RegistryError::EndpointBound {
                endpoint: addr.id,
                bound: *bound,
                offered: device,
            }),
            _ => Ok(()),
        }
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

/// What a device shares so others can pair with it: its device id, its endpoint id, its
/// direct addresses and its home relay's URL. Text form:
/// `hybridsync:<device uuid>@<endpoint id hex>@<addr>,<addr>,<relay url>`, where each item of
/// the list is an `ip:port` or a relay URL (`https://...`; a `,` in a URL is written `%2C`).
/// The list may be empty (the device is then found by address lookup, or dials in itself).
///
/// The endpoint id is the stable part: a device that restarts on another port, or on another
/// network, keeps it, and is reached again through the relay the ticket names (or through
/// address lookup) without a new ticket; direct addresses are a shortcut that may go stale.
///
/// The device id must be [`device_id_for`] the endpoint id: parsing refuses any other
/// ([`TicketError::DeviceMismatch`]), so a ticket cannot pair someone else's key under a
/// known device's id. Build tickets with [`Ticket::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The device ([`device_id_for`] `addr.id`).
    pub device: DeviceId,
    /// Its endpoint id and addresses.
    pub addr: EndpointAddr,
}

impl Ticket {
    /// The ticket of the endpoint at `addr`: its device id is [`device_id_for`] its key.
    pub fn new(addr: EndpointAddr) -> Ticket {
        Ticket {
            device: device_id_for(&addr.id),
            addr,
        }
    }

    /// Checks that the device id is the one its key stands for.
    pub fn verify(&self) -> Result<(), TicketError> {
        let expected = device_id_for(&self.addr.id);
        if self.device == expected {
            Ok(())
        } else {
            Err(TicketError::DeviceMismatch {
                device: self.device,
                endpoint: self.addr.id,
                expected,
            })
        }
    }
}

/// A ticket could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// Not of the form `hybridsync:<uuid>@<hex>@<addrs>`.
    #[error("a ticket looks like hybridsync:<device>@<endpoint>@<addr or relay url>,...")]
    Format,
    /// The device id is not a UUID.
    #[error("bad device id: {0}")]
    Device(String),
    /// The endpoint id is not 64 hex digits of a valid key.
    #[error("bad endpoint id")]
    Endpoint,
    /// An item of the address list is neither `ip:port` nor a relay URL.
    #[error("bad address {0:?} (expected ip:port or a relay url such as https://relay.example)")]
    Address(String),
    /// The device id is not the one the endpoint key stands for ([`device_id_for`]): a
    /// mistyped or forged ticket.
    #[error(
        "the ticket's device id {device:#} does not match its endpoint key {endpoint} (whose device id is {expected:#}): mistyped or forged ticket"
    )]
    DeviceMismatch {
        /// The device id the ticket names.
        device: DeviceId,
        /// The endpoint key the ticket names.
        endpoint: EndpointId,
        /// The device id of that key.
        expected: DeviceId,
    },
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relay URLs go after the direct addresses; `,` separates the items, so a URL's own
        // commas are percent-encoded (an HTTP server reads `%2C` in a path as `,`).
        let addrs: Vec<String> = self
            .addr
            .ip_addrs()
            .map(ToString::to_string)
            .chain(
                self.addr
                    .relay_urls()
                    .map(|u| u.to_string().replace(',', "%2C")),
            )
            .collect();
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
            let bad = || TicketError::Address(a.to_owned());
            addr = if a.contains("://") {
                addr.with_relay_url(RelayUrl::from_str(a).map_err(|_| bad())?)
            } else {
                addr.with_ip_addr(SocketAddr::from_str(a).map_err(|_| bad())?)
            };
        }
        let ticket = Ticket { device, addr };
        ticket.verify()?;
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `key`'s hex form with one digit at `at` changed so that it is still a valid key.
    fn typo(key: &EndpointId, at: usize) -> String {
        let hex = key.to_string();
        for c in "0123456789abcdef".chars() {
            let mut t: Vec<char> = hex.chars().collect();
            if t[at] == c {
                continue;
            }
            t[at] = c;
            let t: String = t.into_iter().collect();
            let valid = hex_decode_32(&t).is_some_and(|b| EndpointId::from_bytes(&b).is_ok());
            if valid {
                return t;
            }
        }
        panic!("no valid one-digit typo at {at}");
    }

    fn key(n: u8) -> EndpointId {
        iroh::SecretKey::from_bytes(&[n; 32]).public()
    }

    #[test]
    fn device_id_is_the_first_16_bytes_of_the_key() {
        // Existing data directories hold device ids derived this way: it must never change.
        let k = key(7);
        assert_eq!(device_id_for(&k).0.as_bytes()[..], k.as_bytes()[..16]);
    }

    #[test]
    fn ticket_round_trips_through_text() {
        let t = Ticket::new(
            EndpointAddr::new(key(7))
                .with_ip_addr("127.0.0.1:4000".parse().expect("addr"))
                .with_ip_addr("[::1]:4001".parse().expect("addr")),
        );
        assert_eq!(t.device, device_id_for(&key(7)));
        let back: Ticket = t.to_string().parse().expect("parses");
        assert_eq!(back, t);
    }

    #[test]
    fn ticket_carries_relay_urls_next_to_direct_addresses() {
        let relay: RelayUrl = "https://relay.example:4433".parse().expect("url");
        let both = Ticket::new(
            EndpointAddr::new(key(8))
                .with_ip_addr("127.0.0.1:4000".parse().expect("addr"))
                .with_relay_url(relay.clone()),
        );
        let text = both.to_string();
        assert!(
            text.ends_with("@127.0.0.1:4000,https://relay.example:4433/"),
            "{text}"
        );
        assert_eq!(text.parse::<Ticket>().expect("parses"), both);
        // Only a relay: the device is reached by id through it, wherever it listens.
        let relay_only = Ticket::new(EndpointAddr::new(key(8)).with_relay_url(relay.clone()));
        let back: Ticket = relay_only.to_string().parse().expect("parses");
        assert_eq!(back.addr.ip_addrs().count(), 0);
        assert_eq!(back.addr.relay_urls().collect::<Vec<_>>(), vec![&relay]);
    }

    #[test]
    fn a_relay_url_with_a_comma_survives_the_ticket() {
        let relay: RelayUrl = "https://relay.example/a,b".parse().expect("url");
        let t = Ticket::new(EndpointAddr::new(key(9)).with_relay_url(relay));
        let back: Ticket = t.to_string().parse().expect("parses");
        let urls: Vec<String> = back.addr.relay_urls().map(ToString::to_string).collect();
        assert_eq!(urls, vec!["https://relay.example/a%2Cb".to_owned()]);
    }

    #[test]
    fn a_ticket_with_neither_an_address_nor_a_url_in_its_list_is_refused() {
        let k = key(10);
        let device = device_id_for(&k).0.simple();
        for item in ["nope", "https://", "127.0.0.1", "relay.example:443"] {
            let t = format!("hybridsync:{device}@{k}@{item}");
            assert!(
                matches!(t.parse::<Ticket>(), Err(TicketError::Address(a)) if a == item),
                "{item} accepted"
            );
        }
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
    fn ticket_naming_another_devices_id_is_refused() {
        let (victim, attacker) = (key(1), key(2));
        let forged = format!(
            "hybridsync:{}@{}@127.0.0.1:4000",
            device_id_for(&victim).0.simple(),
            attacker
        );
        let err = forged
            .parse::<Ticket>()
            .expect_err("forged ticket accepted");
        assert_eq!(
            err.to_string(),
            format!(
                "the ticket's device id {:#} does not match its endpoint key {attacker} \
                 (whose device id is {:#}): mistyped or forged ticket",
                device_id_for(&victim),
                device_id_for(&attacker)
            )
        );
        match err {
            TicketError::DeviceMismatch {
                device,
                endpoint,
                expected,
            } => {
                assert_eq!(device, device_id_for(&victim));
                assert_eq!(endpoint, attacker);
                assert_eq!(expected, device_id_for(&attacker));
            }
            other => panic!("{other:?}"),
        }
        // A hand-built ticket is checked the same way.
        let built = Ticket {
            device: device_id_for(&victim),
            addr: EndpointAddr::new(attacker),
        };
        assert!(matches!(
            built.verify(),
            Err(TicketError::DeviceMismatch { .. })
        ));
    }

    #[test]
    fn ticket_with_a_typo_in_the_key_is_refused() {
        let k = key(3);
        let device = device_id_for(&k).0.simple();
        // A typo in the first half of the key changes the device id the key stands for.
        for at in [0, 5, 31] {
            let t = format!("hybridsync:{device}@{}@127.0.0.1:4000", typo(&k, at));
            let parsed = t.parse::<Ticket>();
            assert!(
                matches!(parsed, Err(TicketError::DeviceMismatch { .. })),
                "typo at {at} accepted: {parsed:?}"
            );
        }
        let good = format!("hybridsync:{device}@{k}@127.0.0.1:4000");
        assert!(good.parse::<Ticket>().is_ok());
    }

    #[test]
    fn insert_never_rebinds_a_device_to_another_key() {
        let r = DeviceRegistry::new();
        let (k1, k2) = (key(1), key(2));
        let d = DeviceId::from_u128(1);
        r.insert(d, EndpointAddr::new(k1)).expect("first pairing");
        assert_eq!(
            r.insert(d, EndpointAddr::new(k2)),
            Err(RegistryError::DeviceBound {
                device: d,
                bound: k1,
                offered: k2
            })
        );
        assert_eq!(r.device_of(&k1), Some(d));
        assert_eq!(r.device_of(&k2), None);
        assert_eq!(r.addr_of(d).map(|a| a.id), Some(k1));
    }

    #[test]
    fn a_typo_in_the_second_half_of_a_key_never_rebinds_the_device() {
        // Same device id (the first half is intact), another key: the ticket parses, the
        // registry refuses it.
        let r = DeviceRegistry::new();
        let k = key(4);
        let good: Ticket = format!(
            "hybridsync:{}@{k}@127.0.0.1:4000",
            device_id_for(&k).0.simple()
        )
        .parse()
        .expect("good ticket");
        r.insert(good.device, good.addr.clone()).expect("pairs");
        let typo: Ticket = format!(
            "hybridsync:{}@{}@127.0.0.1:4000",
            device_id_for(&k).0.simple(),
            typo(&k, 50)
        )
        .parse()
        .expect("the device id still matches");
        assert!(matches!(
            r.insert(typo.device, typo.addr.clone()),
            Err(RegistryError::DeviceBound { .. })
        ));
        assert_eq!(r.addr_of(good.device), Some(good.addr));
    }

    #[test]
    fn insert_never_moves_a_key_to_another_device() {
        let r = DeviceRegistry::new();
        let k = key(1);
        let (d1, d2) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
        r.insert(d1, EndpointAddr::new(k)).expect("first pairing");
        assert_eq!(
            r.insert(d2, EndpointAddr::new(k)),
            Err(RegistryError::EndpointBound {
                endpoint: k,
                bound: d1,
                offered: d2
            })
        );
        assert_eq!(r.device_of(&k), Some(d1));
        assert_eq!(r.addr_of(d2), None);
        assert_eq!(r.devices().len(), 1);
    }

    #[test]
    fn re_adding_a_device_with_its_own_key_updates_its_addresses() {
        let r = DeviceRegistry::new();
        let k = key(1);
        let d = DeviceId::from_u128(1);
        let old: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let new: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        r.insert(d, EndpointAddr::new(k).with_ip_addr(old))
            .expect("pairs");
        r.insert(d, EndpointAddr::new(k).with_ip_addr(new))
            .expect("same key: new addresses");
        let addrs: Vec<SocketAddr> = r
            .addr_of(d)
            .map(|a| a.ip_addrs().copied().collect())
            .unwrap_or_default();
        assert_eq!(addrs, vec![new]);
        assert_eq!(r.device_of(&k), Some(d));
    }

    #[test]
    fn rebind_replaces_a_devices_key_and_forgets_the_old_one() {
        let r = DeviceRegistry::new();
        let (k1, k2) = (key(1), key(2));
        let d = DeviceId::from_u128(1);
        r.insert(d, EndpointAddr::new(k1)).expect("pairs");
        assert_eq!(r.rebind(d, EndpointAddr::new(k2)), Ok(Some(k1)));
        assert_eq!(r.device_of(&k1), None);
        assert_eq!(r.device_of(&k2), Some(d));
        assert_eq!(r.rebind(d, EndpointAddr::new(k2)), Ok(None));
        // A new device: nothing replaced.
        let d2 = DeviceId::from_u128(2);
        assert_eq!(r.rebind(d2, EndpointAddr::new(k1)), Ok(None));
        assert_eq!(r.device_of(&k1), Some(d2));
    }

    #[test]
    fn rebind_never_takes_another_devices_key() {
        let r = DeviceRegistry::new();
        let (k1, k2) = (key(1), key(2));
        let (d1, d2) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
        r.insert(d1, EndpointAddr::new(k1)).expect("pairs d1");
        r.insert(d2, EndpointAddr::new(k2)).expect("pairs d2");
        assert!(matches!(
            r.rebind(d2, EndpointAddr::new(k1)),
            Err(RegistryError::EndpointBound { .. })
        ));
        assert_eq!(r.device_of(&k1), Some(d1));
        assert_eq!(r.device_of(&k2), Some(d2));
    }
}
