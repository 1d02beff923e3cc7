//! The one place that pins the crypto provider (aws-lc-rs), the protocol version (TLS 1.3 only)
//! and the ALPN protocol. Nothing else in the crate names a provider, so a port is local.

use std::sync::{Arc, OnceLock};

use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};

use crate::error::{Error, Result};

/// The ALPN protocol identifier of an agentid session.
pub const ALPN: &[u8] = b"agentid/1";

/// TLS 1.3 only: agentid never negotiates TLS 1.2.
pub(crate) static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13];

/// The crypto provider every agentid TLS object uses: aws-lc-rs, rustls's own default.
///
/// It is passed explicitly to every builder; agentid never installs or reads the process-global
/// default provider, so it can live next to other rustls users.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The signature verification algorithms of [`provider`], for certificate chains and TLS 1.3
/// handshake signatures.
pub(crate) fn verification_algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// A server config builder pinned to our provider and TLS 1.3.
pub(crate) fn server_config_builder(
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>> {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(Error::Tls)
}

/// A client config builder pinned to our provider and TLS 1.3.
pub(crate) fn client_config_builder(
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(Error::Tls)
}

/// Loads a PKCS#8 private key for the TLS stack.
pub(crate) fn load_signing_key(pkcs8_der: &[u8]) -> Result<Arc<dyn rustls::sign::SigningKey>> {
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8_der.to_vec().into());
    provider()
        .key_provider
        .load_private_key(der)
        .map_err(Error::Tls)
}
