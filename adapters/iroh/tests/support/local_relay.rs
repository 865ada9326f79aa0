//! A real iroh relay server (the `iroh-relay` crate's server, the version iroh's relay client
//! speaks) on 127.0.0.1, with a throwaway self-signed certificate that only the test's
//! endpoints trust. Used by `adapters/iroh/tests/relay.rs` and, through `#[path]`, by
//! `adapters/cli/tests/node.rs`.
//!
//! It serves relaying over HTTPS only: no QUIC address discovery, no metrics server, and the
//! endpoints are told so ([`LocalRelay::network`]), so nothing probes another port.

#![allow(dead_code, clippy::unwrap_used)]

use hybridsync_iroh::NetworkConfig;
use iroh::tls::CaTlsConfig;
use iroh::{NetReportConfig, RelayConfig, RelayMap, RelayUrl};
use iroh_relay::server::{
    CertConfig, RelayConfig as RelayServerConfig, Server, ServerConfig, SpawnError, TlsConfig,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Generous: a loaded 2-core machine runs the relay, the devices and their SQLite threads.
pub const T: Duration = Duration::from_secs(30);

/// A relay server on 127.0.0.1 that can be stopped and started again on the same port (so
/// its URL, which the devices' tickets and registries hold, stays valid).
pub struct LocalRelay {
    server: Option<Server>,
    port: u16,
    url: RelayUrl,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: PrivatePkcs8KeyDer<'static>,
    /// Datagram bytes the relay delivered to clients in the runs that were stopped.
    delivered_before: u64,
}

impl LocalRelay {
    /// Generates a self-signed certificate for `127.0.0.1` and starts the relay on a free port.
    pub async fn start() -> LocalRelay {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let server = spawn(0, &cert, &key).await.unwrap();
        let port = server.https_addr().unwrap().port();
        LocalRelay {
            server: Some(server),
            port,
            url: format!("https://127.0.0.1:{port}").parse().unwrap(),
            cert,
            cert_pem: certified.cert.pem(),
            key,
            delivered_before: 0,
        }
    }

    /// The relay's URL.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// Its certificate in PEM (for `hybridsync node --relay-ca`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Stops the relay: every client connection is cut.
    pub async fn stop(&mut self) {
        let server = self.server.take().expect("relay running");
        self.delivered_before += server.metrics().server.bytes_sent.get();
        server.shutdown().await.unwrap();
    }

    /// Starts the relay again on its port, with the same certificate.
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "relay already running");
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match spawn(self.port, &self.cert, &self.key).await {
                Ok(s) => {
                    self.server = Some(s);
                    return;
                }
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot restart the relay on port {}: {e}",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Datagram bytes the relay delivered to clients so far (all its runs).
    pub fn delivered(&self) -> u64 {
        self.delivered_before
            + self
                .server
                .as_ref()
                .map_or(0, |s| s.metrics().server.bytes_sent.get())
    }

    /// The network of a device that uses only this relay and trusts only its certificate:
    /// relay only (`direct` false: no socket of its own) or with a direct socket on 127.0.0.1.
    pub fn network(&self, direct: bool) -> NetworkConfig {
        // No QUIC address discovery: the relay does not serve it, and nothing should probe
        // the default QAD port.
        let map = RelayMap::from(RelayConfig::new(self.url.clone(), None));
        let bind = direct.then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let mut network = NetworkConfig::relays(bind, map);
        network.relay_tls = Some(CaTlsConfig::custom_roots([self.cert.clone()]));
        // The captive-portal check would GET port 80 of the relay's host: not ours.
        let mut report = NetReportConfig::default();
        report.captive_portal_check = false;
        network.net_report = report;
        network
    }
}

async fn spawn(
    port: u16,
    cert: &CertificateDer<'static>,
    key: &PrivatePkcs8KeyDer<'static>,
) -> Result<Server, SpawnError> {
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key.clone_key()))
    .unwrap();
    // The plain-HTTP side (captive-portal answers) on a free port; relaying over HTTPS.
    let mut relay = RelayServerConfig::new((Ipv4Addr::LOCALHOST, 0));
    relay.tls = Some(TlsConfig::new(
        (Ipv4Addr::LOCALHOST, port),
        CertConfig::Manual { server_config: tls },
    ));
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    Server::spawn(config).await
}
