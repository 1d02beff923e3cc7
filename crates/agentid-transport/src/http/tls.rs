//! TLS for any HTTP stack: rustls configurations with agentid's verifiers, a required peer
//! policy, rotation, no resumption and ALPN `h2` / `http/1.1`; and the peer's identity read
//! from an accepted connection.

use std::sync::Arc;

use agentid_protocol::{Role, EXPORTER_LABEL};
use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ConnectionCommon, HandshakeKind, ServerConfig};

use crate::credentials::{CredentialResolver, CredentialSource};
use crate::error::{Error, Result};
use crate::provider;
use crate::svid::{CertUsage, SvidInfo};
use crate::PeerPolicy;
use crate::PeerVerification;
use crate::{SpiffeClientCertVerifier, SpiffeServerCertVerifier};

/// ALPN of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A rustls server configuration for an HTTP service: TLS 1.3 only, client certificates
/// mandatory and checked by agentid's verifier against the trust domain's anchors, the
/// X509-SVID rules and `policy`; the certificate read from `credentials` on every handshake
/// (rotation); no session cache, no tickets, no 0-RTT; ALPN `h2` then `http/1.1`.
///
/// Any rustls-based stack can use it. A connection accepted with it must still be checked with
/// [`server_peer`] (full handshake) before its peer identity is used.
pub fn server_config(
    credentials: Arc<dyn CredentialSource>,
    verification: &PeerVerification,
    policy: PeerPolicy,
) -> Result<ServerConfig> {
    let verifier = SpiffeClientCertVerifier::new(verification.trust_handle(), policy);
    let mut config = provider::server_config_builder()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CredentialResolver(credentials)));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(config)
}

/// A rustls client configuration for calling agentid HTTP services: TLS 1.3 only, the server
/// certificate checked by agentid's verifier and `policy` (the TLS server name is ignored: the
/// server is authorized by its URI SAN), the client certificate read from `credentials` on
/// every handshake, no resumption, no 0-RTT, no SNI; ALPN `h2` then `http/1.1`.
///
/// Give it to reqwest with `use_preconfigured_tls` for identity-only calls (see the module
/// documentation of [`crate::http`]).
pub fn client_config(
    credentials: Arc<dyn CredentialSource>,
    verification: &PeerVerification,
    policy: PeerPolicy,
) -> Result<ClientConfig> {
    client_config_alpn(
        credentials,
        verification,
        policy,
        vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()],
    )
}

pub(crate) fn client_config_alpn(
    credentials: Arc<dyn CredentialSource>,
    verification: &PeerVerification,
    policy: PeerPolicy,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig> {
    let verifier = SpiffeServerCertVerifier::new(verification.trust_handle(), policy);
    let mut config = provider::client_config_builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CredentialResolver(credentials)));
    config.alpn_protocols = alpn;
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    config.enable_sni = false;
    Ok(config)
}

/// The HTTP version a connection speaks, from ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// `h2` was negotiated.
    H2,
    /// `http/1.1` was negotiated, or no ALPN at all.
    Http11,
}

/// The verified peer of one TLS connection, and the exporter values its hop proofs bind to.
#[derive(Clone)]
pub struct TlsPeer {
    /// What the peer's leaf certificate says (identity, key, validity, serial).
    pub info: SvidInfo,
    /// The negotiated HTTP version.
    pub version: HttpVersion,
    pub(crate) exporter_client: [u8; 32],
    pub(crate) exporter_server: [u8; 32],
}

impl std::fmt::Debug for TlsPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPeer")
            .field("id", &self.info.id.to_string())
            .field("serial", &self.info.serial)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl TlsPeer {
    /// This connection's exporter value for `role` (what a hop proof of that role binds).
    pub fn exporter(&self, role: Role) -> [u8; 32] {
        match role {
            Role::Client => self.exporter_client,
            Role::Server => self.exporter_server,
        }
    }
}

fn peer_of<D>(
    conn: &ConnectionCommon<D>,
    usage: CertUsage,
    verification: &PeerVerification,
) -> Result<TlsPeer> {
    // Only full handshakes: a resumed session would skip the certificate verifier.
    match conn.handshake_kind() {
        Some(HandshakeKind::Full) | Some(HandshakeKind::FullWithHelloRetryRequest) => {}
        _ => return Err(Error::HandshakeRefused("not a full TLS 1.3 handshake")),
    }
    let version = match conn.alpn_protocol() {
        Some(ALPN_H2) => HttpVersion::H2,
        Some(ALPN_HTTP11) | None => HttpVersion::Http11,
        Some(_) => return Err(Error::HandshakeRefused("ALPN is not h2 or http/1.1")),
    };
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(Error::HandshakeRefused("no peer certificate"))?;
    let info = verification
        .trust_store()
        .verified_leaf(leaf.as_ref(), usage)?;
    let exporter = |ctx: &[u8]| {
        conn.export_keying_material([0u8; 32], EXPORTER_LABEL, Some(ctx))
            .map_err(Error::Tls)
    };
    Ok(TlsPeer {
        info,
        version,
        exporter_client: exporter(Role::Client.exporter_context())?,
        exporter_server: exporter(Role::Server.exporter_context())?,
    })
}

/// The verified client of a connection accepted with [`server_config`]: refuses a handshake
/// that is not a full TLS 1.3 one, an ALPN other than `h2` / `http/1.1`, and a missing client
/// certificate.
pub fn server_peer(
    conn: &rustls::ServerConnection,
    verification: &PeerVerification,
) -> Result<TlsPeer> {
    peer_of(conn, CertUsage::ClientAuth, verification)
}

/// The verified server of a connection made with [`client_config`].
pub fn client_peer(
    conn: &rustls::ClientConnection,
    verification: &PeerVerification,
) -> Result<TlsPeer> {
    peer_of(conn, CertUsage::ServerAuth, verification)
}

pub(crate) use crate::credentials::{pinned_client_config, pinned_server_config};
