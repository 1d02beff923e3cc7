//! agentid's rustls certificate verifiers: chain to the anchors of the peer's own trust domain,
//! the X509-SVID leaf rules, then the peer policy. TLS 1.2 signatures are refused outright.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible,
    SignatureScheme,
};

use crate::error::{CertError, Error};
use crate::peer_policy::PeerPolicy;
use crate::provider;
use crate::svid::{CertUsage, SvidInfo, TrustStore};
use crate::trust_state::PeerVerification;

/// The shared part of both verifiers.
#[derive(Debug)]
struct PeerVerifier {
    trust: Arc<ArcSwap<TrustStore>>,
    policy: PeerPolicy,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(trust: Arc<ArcSwap<TrustStore>>, policy: PeerPolicy) -> Self {
        Self {
            trust,
            policy,
            algs: provider::verification_algorithms(),
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: CertUsage,
    ) -> Result<Arc<SvidInfo>, rustls::Error> {
        let info = self
            .trust
            .load()
            .verify_shared(end_entity, intermediates, now, usage)
            .map_err(|e| {
                tracing::debug!(outcome = "rejected", reason = %e, "peer certificate refused");
                match e {
                    CertError::Expired => {
                        rustls::Error::InvalidCertificate(CertificateError::Expired)
                    }
                    other => reject(Error::Certificate(other)),
                }
            })?;
        if !self.policy.allows(&info.id) {
            tracing::debug!(peer = %info.id, outcome = "rejected", reason = "policy_denied", "peer denied by policy");
            return Err(reject(Error::PolicyDenied(info.id.to_string())));
        }
        Ok(info)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    /// TLS 1.3 only: a TLS 1.2 signature is never verified.
    fn tls12(&self) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
        ))
    }
}

/// The handshake-signature methods that both rustls verifier traits declare with the same
/// signatures, answered by the shared [`PeerVerifier`] in `self.inner`.
macro_rules! signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.tls12()
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.algs.supported_schemes()
        }
    };
}

fn reject(e: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Recovers agentid's own refusal reason from a TLS error raised by one of our verifiers.
pub(crate) fn from_tls_error(e: &rustls::Error) -> Option<Error> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            match inner.downcast_ref::<Error>()? {
                Error::Certificate(c) => Some(Error::Certificate(c.clone())),
                Error::PolicyDenied(p) => Some(Error::PolicyDenied(p.clone())),
                _ => None,
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            Some(Error::Certificate(CertError::Expired))
        }
        _ => None,
    }
}

/// Verifies client certificates on an agentid server.
#[derive(Debug)]
pub struct SpiffeClientCertVerifier {
    inner: PeerVerifier,
}

impl SpiffeClientCertVerifier {
    /// A verifier over the live X.509 anchors of `verification` (bundle updates apply to the
    /// next handshake) and `policy`: what a rustls config of another stack (HTTP) needs.
    pub fn from_verification(verification: &PeerVerification, policy: PeerPolicy) -> Self {
        Self::new(verification.trust_handle(), policy)
    }

    /// A verifier over the (live-updatable) trust store and the policy.
    pub fn new(trust: Arc<ArcSwap<TrustStore>>, policy: PeerPolicy) -> Self {
        Self {
            inner: PeerVerifier::new(trust, policy),
        }
    }
}

impl ClientCertVerifier for SpiffeClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .check(end_entity, intermediates, now, CertUsage::ClientAuth)
            .map(|_| ClientCertVerified::assertion())
    }

    signature_methods!();
}

/// Verifies server certificates on an agentid client. The TLS server name is ignored: the server
/// is authorized by its URI SAN through the peer policy.
#[derive(Debug)]
pub struct SpiffeServerCertVerifier {
    inner: PeerVerifier,
}

impl SpiffeServerCertVerifier {
    /// A verifier over the live X.509 anchors of `verification` (bundle updates apply to the
    /// next handshake) and `policy`: what a rustls config of another stack (HTTP) needs.
    pub fn from_verification(verification: &PeerVerification, policy: PeerPolicy) -> Self {
        Self::new(verification.trust_handle(), policy)
    }

    /// A verifier over the (live-updatable) trust store and the policy.
    pub fn new(trust: Arc<ArcSwap<TrustStore>>, policy: PeerPolicy) -> Self {
        Self {
            inner: PeerVerifier::new(trust, policy),
        }
    }
}

impl ServerCertVerifier for SpiffeServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .check(end_entity, intermediates, now, CertUsage::ServerAuth)
            .map(|_| ServerCertVerified::assertion())
    }

    signature_methods!();
}
