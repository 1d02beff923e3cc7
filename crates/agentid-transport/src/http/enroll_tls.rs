//! TLS for bootstrap enrollment, where the client holds no certificate yet.
//!
//! A CA serves token enrollment on a listener of its own whose TLS asks for no client
//! certificate ([`danger_no_client_auth_for_enrollment`]); every other route stays on a
//! listener built with [`super::server_config`], where a client certificate is mandatory. The
//! enrolling client authenticates the server as usual ([`enrollment_client_config`]) against the
//! root it pinned, but presents nothing.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use super::tls::{ALPN_H2, ALPN_HTTP11};
use crate::credentials::{CredentialResolver, CredentialSource};
use crate::error::Result;
use crate::provider;
use crate::{PeerPolicy, PeerVerification, SpiffeServerCertVerifier};

/// A rustls server configuration that requests NO client certificate: TLS 1.3 only, the
/// server's certificate read from `credentials` on every handshake, no resumption, ALPN `h2`
/// then `http/1.1`.
///
/// Dangerous: nothing identifies the client. Use it only for a listener that serves bootstrap
/// enrollment (a bearer token in the body is the only credential), public documents and health
/// checks, and nothing else; serve every other route on a listener built with
/// [`super::server_config`].
pub fn danger_no_client_auth_for_enrollment(
    credentials: Arc<dyn CredentialSource>,
) -> Result<ServerConfig> {
    let mut config = provider::server_config_builder()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CredentialResolver(credentials)));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(config)
}

/// A rustls client configuration for an enrolling client: the server certificate checked by
/// agentid's verifier (`verification`'s anchors, the X509-SVID rules) and `policy`; no client
/// certificate; TLS 1.3 only, no resumption, no 0-RTT, no SNI; ALPN `http/1.1`.
pub fn enrollment_client_config(
    verification: &PeerVerification,
    policy: PeerPolicy,
) -> Result<ClientConfig> {
    let verifier = SpiffeServerCertVerifier::new(verification.trust_handle(), policy);
    let mut config = provider::client_config_builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    config.enable_sni = false;
    Ok(config)
}
