//! Local credentials and rotation: a [`CredentialSource`] is read on every new handshake, so
//! swapping the credential never drops live sessions and new handshakes use the new certificate.

use std::fmt;
use std::sync::Arc;

use agentid_protocol::{PeerId, TaskKey};
use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::error::{CertError, Error, Result};
use crate::provider;
use crate::svid::{check_leaf, CertUsage, SvidInfo, TrustStore};

/// One local credential: a certificate chain (leaf first), its task key, and optionally the
/// delegation chain this identity presents as its authority.
pub struct Credential {
    certified: Arc<CertifiedKey>,
    key: Arc<TaskKey>,
    info: SvidInfo,
    chain: Option<String>,
}

impl Credential {
    /// Checks the leaf against the X509-SVID rules (both EKUs, as issued leaves have) and that it
    /// certifies `key`.
    pub fn new(cert_chain: Vec<CertificateDer<'static>>, key: TaskKey) -> Result<Self> {
        let leaf = cert_chain
            .first()
            .ok_or(Error::Certificate(CertError::Missing))?;
        let info = check_leaf(leaf.as_ref(), CertUsage::ClientAuth)?;
        check_leaf(leaf.as_ref(), CertUsage::ServerAuth)?;
        if info.public_key != *key.public_key() {
            return Err(Error::Config(
                "certificate does not certify the task key".into(),
            ));
        }
        let signing = provider::load_signing_key(key.danger_pkcs8_der())?;
        let certified = CertifiedKey::new(cert_chain, signing);
        certified.keys_match().map_err(Error::Tls)?;
        Ok(Self {
            certified: Arc::new(certified),
            key: Arc::new(key),
            info,
            chain: None,
        })
    }

    /// Attaches the delegation chain presented in the session hello (or accept).
    #[must_use]
    pub fn with_chain(mut self, chain: impl Into<String>) -> Self {
        self.chain = Some(chain.into());
        self
    }

    /// Also validates the chain against the local trust store at `now` (both roles): what a peer
    /// will check. Use before publishing a rotated credential.
    pub fn verify_with(&self, trust: &TrustStore, now: UnixTime) -> Result<()> {
        let (leaf, rest) = self
            .certified
            .cert
            .split_first()
            .ok_or(Error::Certificate(CertError::Missing))?;
        trust.verify(leaf, rest, now, CertUsage::ClientAuth)?;
        trust.verify(leaf, rest, now, CertUsage::ServerAuth)?;
        Ok(())
    }

    /// The identity of the leaf's URI SAN.
    pub fn identity(&self) -> &PeerId {
        &self.info.id
    }

    /// What the leaf says (identity, key, validity, serial).
    pub fn info(&self) -> &SvidInfo {
        &self.info
    }

    /// The delegation chain, if any.
    pub fn chain(&self) -> Option<&str> {
        self.chain.as_deref()
    }

    /// The certificate chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    pub(crate) fn task_key(&self) -> &TaskKey {
        &self.key
    }

    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key, never the chain's tokens.
        f.debug_struct("Credential")
            .field("identity", &self.info.id.to_string())
            .field("serial", &self.info.serial)
            .field("not_after", &self.info.not_after)
            .field("has_chain", &self.chain.is_some())
            .finish()
    }
}

/// Where a client or server finds its current credential. Read on every new handshake.
pub trait CredentialSource: Send + Sync + fmt::Debug {
    /// The credential to present now, if any.
    fn current(&self) -> Option<Arc<Credential>>;
}

/// An in-memory credential source that can be swapped at run time.
#[derive(Debug, Default)]
pub struct MemoryCredentials {
    current: ArcSwapOption<Credential>,
}

impl MemoryCredentials {
    /// A source holding `credential`.
    pub fn new(credential: Credential) -> Self {
        Self {
            current: ArcSwapOption::from_pointee(credential),
        }
    }

    /// Publishes a new credential for new handshakes; live sessions are unaffected. Every
    /// rotation is validated: the credential passed [`Credential::new`], and its certificate
    /// chain must validate against `trust` now, for both roles (what a peer will check);
    /// nothing is published on failure.
    pub fn rotate(&self, credential: Credential, trust: &TrustStore) -> Result<()> {
        credential.verify_with(trust, UnixTime::now())?;
        tracing::info!(
            agent.id = %credential.identity(),
            cert.serial = %credential.info().serial,
            "credential rotated"
        );
        self.current.store(Some(Arc::new(credential)));
        Ok(())
    }
}

impl CredentialSource for MemoryCredentials {
    fn current(&self) -> Option<Arc<Credential>> {
        self.current.load_full()
    }
}

/// Adapts a [`CredentialSource`] to rustls's certificate resolvers (both sides).
#[derive(Debug)]
pub(crate) struct CredentialResolver(pub(crate) Arc<dyn CredentialSource>);

impl ResolvesServerCert for CredentialResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key())
    }
}

impl ResolvesClientCert for CredentialResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key())
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}
