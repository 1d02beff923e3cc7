//! Test PKI and helpers: certificates made with rcgen to the X509-SVID profile (one critical URI
//! SAN, empty subject, cA=false, keyUsage digitalSignature, both EKUs), plus the "bad" variants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{
    Algorithm, AuthorityKey, BundleSet, Chain, GrantBuilder, PeerId, RevocationListBuilder, Scope,
    SpiffeId, TaskIdentity, TaskKey, TrustBundle, TrustDomain, VerifierConfig,
};
use agentid_transport::{
    AgentClient, AgentServer, ConnectionLimits, Credential, MemoryCredentials, PeerPolicy,
    PeerVerification, Session,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const T: Duration = Duration::from_secs(10);

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rcgen_key(k: &TaskKey) -> KeyPair {
    KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(k.pkcs8_der().to_vec()),
        &PKCS_ECDSA_P256_SHA256,
    )
    .unwrap()
}

fn serial() -> SerialNumber {
    let k = TaskKey::generate(Algorithm::Es256).unwrap();
    let mut s = k.public_key().raw_bytes()[1..17].to_vec();
    s[0] &= 0x7f;
    s[0] |= 0x01;
    SerialNumber::from(s)
}

pub struct Ca {
    pub key: TaskKey,
    pub issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, format!("{name} test root"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        p.serial_number = Some(serial());
        let kp = rcgen_key(&key);
        let cert = p.self_signed(&kp).unwrap();
        let der = cert.der().clone();
        Self { key, issuer: Issuer::new(p, kp), der }
    }
}

/// How a leaf departs from the profile.
#[derive(Clone, Default)]
pub struct LeafOpts {
    /// Seconds from now (negative = past) for notBefore / notAfter; default -60 / +300.
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    pub ca: bool,
    pub key_cert_sign: bool,
    pub extra_uri: Option<String>,
    pub no_eku: bool,
    pub dns_only: bool,
}

pub fn leaf(ca: &Ca, uri: &str, key: &TaskKey, o: &LeafOpts) -> CertificateDer<'static> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    if o.dns_only {
        p.subject_alt_names = vec![SanType::DnsName("agent.example".try_into().unwrap())];
    } else {
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    }
    if let Some(u) = &o.extra_uri {
        p.subject_alt_names.push(SanType::URI(u.as_str().try_into().unwrap()));
    }
    p.is_ca = if o.ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if o.key_cert_sign {
        p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    }
    if !o.no_eku {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    }
    let n = time::OffsetDateTime::now_utc();
    p.not_before = n + time::Duration::seconds(o.not_before.unwrap_or(-60));
    p.not_after = n + time::Duration::seconds(o.not_after.unwrap_or(300));
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    p.signed_by(&rcgen_key(key), &ca.issuer).unwrap().der().clone()
}

/// A trust domain with its CA and authority keys.
pub struct Domain {
    pub td: TrustDomain,
    pub ca: Ca,
    pub grant_key: AuthorityKey,
    pub rev_key: AuthorityKey,
}

impl Domain {
    pub fn new(td: &str) -> Self {
        Self {
            td: TrustDomain::parse(td).unwrap(),
            ca: Ca::new(td),
            grant_key: AuthorityKey::generate(Algorithm::Es256).unwrap(),
            rev_key: AuthorityKey::generate(Algorithm::Es256).unwrap(),
        }
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(self.td.clone(), 1)
            .add_x509_authority(self.ca.der.to_vec(), self.ca.key.public_key())
            .add_grant_key(self.grant_key.public_key().clone())
            .add_revocation_key(self.rev_key.public_key().clone())
    }

    pub fn task(&self, agent: &str, task: &str) -> TaskIdentity {
        TaskIdentity::parse(&format!("spiffe://{}/agent/{agent}/task/{task}", self.td)).unwrap()
    }

    pub fn grant(&self, holder: &TaskIdentity, key: &TaskKey, scope: &str) -> Chain {
        let n = now();
        GrantBuilder::new(&self.td, holder, key.public_key(), Scope::parse(scope).unwrap())
            .max_depth(2)
            .validity(n - 5, n - 5, n + 600)
            .sign(&self.grant_key)
            .unwrap()
    }

    pub fn revocation_list(&self, seq: u64, f: impl FnOnce(RevocationListBuilder) -> RevocationListBuilder) -> String {
        let n = now();
        f(RevocationListBuilder::new(&self.td, seq, n, n + 600)).sign(&self.rev_key).unwrap()
    }
}

/// A credential for `id` with a fresh key (or `key`), issued by `ca`.
pub fn credential(ca: &Ca, id: &str, key: TaskKey, o: &LeafOpts) -> Credential {
    let cert = leaf(ca, id, &key, o);
    Credential::new(vec![cert], key).unwrap()
}

pub fn key() -> TaskKey {
    TaskKey::generate(Algorithm::Es256).unwrap()
}

/// Verification state for `own` trusting `domains` (revocation lists optional unless `strict`).
pub fn verification(own: &str, domains: &[&Domain], strict: bool) -> Arc<PeerVerification> {
    let mut bundles = BundleSet::new();
    for d in domains {
        bundles.insert(d.bundle()).unwrap();
    }
    let mut cfg = VerifierConfig::new(SpiffeId::parse(own).unwrap(), bundles);
    if !strict {
        cfg = cfg.danger_accept_missing_or_stale_revocations();
    }
    PeerVerification::new(cfg).unwrap()
}

pub fn peer(s: &str) -> PeerId {
    PeerId::parse(s).unwrap()
}

pub fn limits() -> ConnectionLimits {
    ConnectionLimits {
        handshake_timeout: Duration::from_secs(2),
        first_frame_timeout: Duration::from_secs(2),
        ..ConnectionLimits::default()
    }
}

pub fn server(creds: Arc<MemoryCredentials>, v: Arc<PeerVerification>, policy: PeerPolicy) -> AgentServer {
    AgentServer::builder(creds, v, policy).limits(limits()).build().unwrap()
}

pub fn client(creds: Arc<MemoryCredentials>, v: Arc<PeerVerification>, policy: PeerPolicy) -> AgentClient {
    AgentClient::builder(creds, v, policy).limits(limits()).build().unwrap()
}

pub type ServerResult = agentid_transport::Result<Session<TcpStream>>;

/// Binds 127.0.0.1:0 and accepts `n` connections with `server`, one task each.
pub async fn serve(server: AgentServer, n: usize) -> (SocketAddr, JoinHandle<Vec<ServerResult>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let mut out = Vec::new();
        for _ in 0..n {
            let (tcp, _) = tokio::time::timeout(T, listener.accept()).await.unwrap().unwrap();
            out.push(server.accept(tcp).await);
        }
        out
    });
    (addr, h)
}

/// A raw rustls client (our server verifier, any client certificate) for presenting
/// certificates that `Credential::new` would refuse, and for speaking raw frames.
pub fn raw_client_config(
    v: &PeerVerification,
    cert: Option<(CertificateDer<'static>, &TaskKey)>,
    resumption: bool,
) -> Arc<rustls::ClientConfig> {
    use agentid_transport::verifier::SpiffeServerCertVerifier;
    let verifier = SpiffeServerCertVerifier::new(
        Arc::new(arc_swap::ArcSwap::new(v.trust_store())),
        PeerPolicy::danger_any(),
    );
    let b = rustls::ClientConfig::builder_with_provider(agentid_transport::provider::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut c = match cert {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![cert],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into()),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![agentid_transport::provider::ALPN.to_vec()];
    if !resumption {
        c.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(c)
}

pub async fn raw_connect(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("agentid.invalid").unwrap();
    tokio::time::timeout(T, tokio_rustls::TlsConnector::from(cfg).connect(name, tcp))
        .await
        .unwrap()
}

/// A raw rustls server (our client verifier, any server certificate).
pub fn raw_server_config(v: &PeerVerification, cert: CertificateDer<'static>, key: &TaskKey) -> Arc<rustls::ServerConfig> {
    use agentid_transport::verifier::SpiffeClientCertVerifier;
    let verifier = SpiffeClientCertVerifier::new(
        Arc::new(arc_swap::ArcSwap::new(v.trust_store())),
        PeerPolicy::danger_any(),
    );
    let mut c = rustls::ServerConfig::builder_with_provider(agentid_transport::provider::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![cert], rustls::pki_types::PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into()))
        .unwrap();
    c.alpn_protocols = vec![agentid_transport::provider::ALPN.to_vec()];
    Arc::new(c)
}
