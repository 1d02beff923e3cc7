//! Local credentials and rotation: a [`CredentialSource`] is read on every new handshake, so
//! swapping the credential never drops live sessions and new handshakes use the new certificate.
//! A renewal (same identity, same key: [`Credential::renewed`]) is also sent by live framed
//! sessions to their peers as a `reauth` ([`CredentialSource::subscribe`]). A source yields no
//! credential once its certificate is past `notAfter`: a handshake then fails locally with
//! `no_credential` instead of presenting an expired certificate.

use std::fmt;
use std::sync::Arc;

use agentid_protocol::{PeerId, TaskKey};
use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tokio::sync::watch;

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
    /// The chain's [`agentid_protocol::token_hash`] (every hop proof's `cth`), taken once.
    chain_hash: Option<String>,
    /// The chain as a JSON string (quoted and escaped), written once: every hello or accept
    /// copies it instead of escaping ~10 KB again.
    chain_json: Option<String>,
    /// The chain's effective audience (read unverified, the presenter's own chain), read once:
    /// a client checks every server against it before it sends the chain.
    chain_audience: Option<std::result::Result<agentid_protocol::IdSet, agentid_protocol::Error>>,
}

impl Credential {
    /// Checks the leaf against the X509-SVID rules (both EKUs, as issued leaves have) and that it
    /// certifies `key`.
    pub fn new(cert_chain: Vec<CertificateDer<'static>>, key: TaskKey) -> Result<Self> {
        Self::with_shared_key(cert_chain, Arc::new(key))
    }

    /// As [`Credential::new`], with a key shared with its other users (the enroller that renews
    /// it, the next credential of the same task).
    pub fn with_shared_key(
        cert_chain: Vec<CertificateDer<'static>>,
        key: Arc<TaskKey>,
    ) -> Result<Self> {
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
            key,
            info,
            chain: None,
            chain_hash: None,
            chain_json: None,
            chain_audience: None,
        })
    }

    /// This credential renewed with `cert_chain` (leaf first): a certificate for the same
    /// identity (URI SAN) and the same key, with the same task key and delegation chain. A
    /// different identity or key is [`CertError::IdentityChanged`]: that is a new credential,
    /// not a renewal.
    pub fn renewed(&self, cert_chain: Vec<CertificateDer<'static>>) -> Result<Self> {
        let renewed = Self::with_shared_key(cert_chain, self.key.clone())?;
        if renewed.info.id != self.info.id || renewed.info.public_key != self.info.public_key {
            return Err(CertError::IdentityChanged.into());
        }
        // Everything read from the chain comes with it (the audience a client checks every
        // server against included): a renewal changes the certificate only.
        Ok(Self {
            chain: self.chain.clone(),
            chain_hash: self.chain_hash.clone(),
            chain_json: self.chain_json.clone(),
            chain_audience: self.chain_audience.clone(),
            ..renewed
        })
    }

    /// Whether `other` is a renewal of this credential: same identity and key, another
    /// certificate.
    pub fn is_renewal(&self, other: &Credential) -> bool {
        other.info.id == self.info.id
            && other.info.public_key == self.info.public_key
            && other.certified.cert != self.certified.cert
    }

    /// The task key, shared.
    pub fn shared_key(&self) -> Arc<TaskKey> {
        self.key.clone()
    }

    /// Attaches the delegation chain presented in the session hello (or accept).
    #[must_use]
    pub fn with_chain(mut self, chain: impl Into<String>) -> Self {
        let chain = chain.into();
        self.chain_hash = Some(agentid_protocol::token_hash(&chain));
        self.chain_json = Some(crate::frame::json_string(&chain));
        self.chain_audience = Some(
            agentid_protocol::Chain::parse_unverified(&chain)
                .and_then(|c| c.read_unverified())
                .and_then(|r| r.audience()),
        );
        self.chain = Some(chain);
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

    /// The delegation chain's effective audience, read without verification (the presenter's
    /// own chain), if a chain is held; an unreadable chain gives the reader's error.
    pub(crate) fn chain_audience(
        &self,
    ) -> Option<&std::result::Result<agentid_protocol::IdSet, agentid_protocol::Error>> {
        self.chain_audience.as_ref()
    }

    /// The delegation chain's [`agentid_protocol::token_hash`] (a hop proof's `cth`), if any.
    pub(crate) fn chain_hash(&self) -> Option<&str> {
        self.chain_hash.as_deref()
    }

    /// The delegation chain as a JSON string literal ([`crate::frame::json_string`]), if any.
    pub(crate) fn chain_json(&self) -> Option<&str> {
        self.chain_json.as_deref()
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
    /// The credential to present now, if any. A source must not yield a credential whose
    /// certificate is past its `notAfter`.
    fn current(&self) -> Option<Arc<Credential>>;

    /// A signal that [`CredentialSource::current`] changed (the value is a change counter), for
    /// live framed sessions, which send a renewal to their peer as a `reauth`. `None` (the
    /// default) for a source that never signals.
    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// An in-memory credential source that can be swapped at run time.
#[derive(Debug)]
pub struct MemoryCredentials {
    current: ArcSwapOption<Credential>,
    changes: watch::Sender<u64>,
}

impl Default for MemoryCredentials {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            changes: watch::channel(0).0,
        }
    }
}

impl MemoryCredentials {
    /// A source holding `credential`.
    pub fn new(credential: Credential) -> Self {
        Self {
            current: ArcSwapOption::from_pointee(credential),
            changes: watch::channel(0).0,
        }
    }

    /// Publishes a new credential for new handshakes; live sessions are unaffected. Every
    /// rotation is validated: the credential passed [`Credential::new`], and its certificate
    /// chain must validate against `trust` now, for both roles (what a peer will check);
    /// nothing is published on failure.
    pub fn rotate(&self, credential: Credential, trust: &TrustStore) -> Result<()> {
        credential.verify_with(trust, UnixTime::now())?;
        self.current.store(Some(Arc::new(credential)));
        self.rotated();
        Ok(())
    }

    /// [`MemoryCredentials::rotate`], only while the source still holds `expected` (the
    /// credential a renewal started from, as [`CredentialSource::current`] gave it): a credential
    /// rotated in meanwhile (another key or identity) is never replaced by the renewal of the one
    /// before it. Returns whether `credential` was published.
    pub fn rotate_from(
        &self,
        expected: &Arc<Credential>,
        credential: Credential,
        trust: &TrustStore,
    ) -> Result<bool> {
        credential.verify_with(trust, UnixTime::now())?;
        let held = Some(Arc::clone(expected));
        let previous = self
            .current
            .compare_and_swap(&held, Some(Arc::new(credential)));
        if !matches!(&*previous, Some(p) if Arc::ptr_eq(p, expected)) {
            return Ok(false);
        }
        self.rotated();
        Ok(true)
    }

    /// Logs the credential now published and signals the subscribers.
    fn rotated(&self) {
        if let Some(c) = self.current.load_full() {
            tracing::info!(
                agent.id = %c.identity(),
                cert.serial = %c.info().serial,
                "credential rotated"
            );
        }
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl CredentialSource for MemoryCredentials {
    fn current(&self) -> Option<Arc<Credential>> {
        self.current
            .load_full()
            .filter(|c| crate::session::now_unix() < c.info.not_after)
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

/// Presents one credential's certificate: the one a connection's hop proofs are signed with, so
/// that a rotation during the handshake cannot make the proof and the certificate disagree.
#[derive(Debug)]
struct Pinned(Arc<CertifiedKey>);

impl ResolvesServerCert for Pinned {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for Pinned {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `config` presenting exactly `local` (for one connection).
pub(crate) fn pinned_server_config(config: &ServerConfig, local: &Credential) -> Arc<ServerConfig> {
    let mut c = config.clone();
    c.cert_resolver = Arc::new(Pinned(local.certified_key()));
    Arc::new(c)
}

/// `config` presenting exactly `local` (for one connection).
pub(crate) fn pinned_client_config(config: &ClientConfig, local: &Credential) -> Arc<ClientConfig> {
    let mut c = config.clone();
    c.client_auth_cert_resolver = Arc::new(Pinned(local.certified_key()));
    Arc::new(c)
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
