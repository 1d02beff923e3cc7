//! Test PKI and helpers: certificates made with rcgen to the X509-SVID profile (one critical URI
//! SAN, empty subject, cA=false, keyUsage digitalSignature, both EKUs), plus the "bad" variants.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{
    Algorithm, AuthorityKey, BundleSet, Chain, GrantBuilder, IdSet, LinkBuilder, PeerId,
    ProofBuilder, RevocationListBuilder, Role, Scope, SpiffeId, TaskIdentity, TaskKey, TrustBundle,
    TrustDomain, VerifierConfig, EXPORTER_LABEL,
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
use tokio::net::TcpStream;

/// The control-frame bodies as spec/PROTOCOL.md section 16 writes them, defined here rather
/// than borrowed from the crate, so that tests speak the wire format the way another
/// implementation would.
pub mod wire {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Hello {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub chain: Option<String>,
        pub proof: String,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Accept {
        pub proof: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub chain: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Reason {
        pub code: String,
        pub message: String,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Reauth {
        pub certs: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub chain: Option<String>,
        pub proof: String,
    }

    pub fn body<T: Serialize>(t: &T) -> Vec<u8> {
        serde_json::to_vec(t).unwrap()
    }

    pub fn parse<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
        serde_json::from_slice(b).unwrap()
    }
}

#[allow(unused_imports, reason = "each test binary uses a subset")]
pub use agentid_test_support::net::*;
pub use agentid_test_support::{now, T};

/// The server most tests run: an agent task of example.org.
pub const SERVER: &str = "spiffe://example.org/agent/server/task/t1";
/// The client most tests run: another agent task of example.org.
pub const CLIENT: &str = "spiffe://example.org/agent/client/task/t2";

fn rcgen_key(k: &TaskKey) -> KeyPair {
    KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(k.danger_pkcs8_der().to_vec()),
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
        Self {
            key,
            issuer: Issuer::new(p, kp),
            der,
        }
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
    /// The serial's bytes (default: 16 random bytes, high bit clear).
    pub serial: Option<Vec<u8>>,
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
        p.subject_alt_names
            .push(SanType::URI(u.as_str().try_into().unwrap()));
    }
    p.is_ca = if o.ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if o.key_cert_sign {
        p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    }
    if !o.no_eku {
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    let n = time::OffsetDateTime::now_utc();
    p.not_before = n + time::Duration::seconds(o.not_before.unwrap_or(-60));
    p.not_after = n + time::Duration::seconds(o.not_after.unwrap_or(300));
    p.serial_number = Some(o.serial.clone().map_or_else(serial, SerialNumber::from));
    p.use_authority_key_identifier_extension = true;
    p.signed_by(&rcgen_key(key), &ca.issuer)
        .unwrap()
        .der()
        .clone()
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
        GrantBuilder::new(
            &self.td,
            holder,
            key.public_key(),
            Scope::parse(scope).unwrap(),
        )
        .max_depth(2)
        .validity(n - 5, n - 5, n + 600)
        .sign(&self.grant_key)
        .unwrap()
    }

    /// A grant with an explicit audience (or none: the grant's trust domain).
    pub fn grant_aud(
        &self,
        holder: &TaskIdentity,
        key: &TaskKey,
        scope: &str,
        aud: Option<&[&str]>,
    ) -> Chain {
        let n = now();
        let mut b = GrantBuilder::new(
            &self.td,
            holder,
            key.public_key(),
            Scope::parse(scope).unwrap(),
        )
        .max_depth(2)
        .validity(n - 5, n - 5, n + 600);
        if let Some(aud) = aud {
            b = b.audience(id_set(aud));
        }
        b.sign(&self.grant_key).unwrap()
    }

    pub fn revocation_list(
        &self,
        seq: u64,
        f: impl FnOnce(RevocationListBuilder) -> RevocationListBuilder,
    ) -> String {
        self.revocation_list_until(seq, now() + 600, f)
    }

    /// A signed list of this domain with `next_update` given.
    pub fn revocation_list_until(
        &self,
        seq: u64,
        next_update: u64,
        f: impl FnOnce(RevocationListBuilder) -> RevocationListBuilder,
    ) -> String {
        f(RevocationListBuilder::new(
            &self.td,
            seq,
            now(),
            next_update,
        ))
        .sign(&self.rev_key)
        .unwrap()
    }
}

pub fn id_set(ids: &[&str]) -> IdSet {
    IdSet::new(ids.iter().map(|s| SpiffeId::parse(s).unwrap()).collect()).unwrap()
}

/// Extends `prev` (held with `holder_key`) by a link to `to` (key `to_key`) for `scope`.
pub fn delegate(
    prev: &Chain,
    holder_key: &TaskKey,
    to: &TaskIdentity,
    to_key: &TaskKey,
    scope: &str,
    aud: Option<&[&str]>,
) -> Chain {
    let n = now();
    // No later than the previous token's `exp` (a link may not outlive it): chained calls
    // straddling a second boundary would otherwise ask for one second more and be refused.
    let exp = (n + 500).min(prev.read_unverified().unwrap().expires());
    let mut b = LinkBuilder::new(prev, to, to_key.public_key(), Scope::parse(scope).unwrap())
        .validity(n - 5, n - 5, exp);
    if let Some(aud) = aud {
        b = b.audience(id_set(aud));
    }
    b.sign(holder_key).unwrap()
}

/// Verification state from an explicit configuration of `own` trusting `domains`.
pub fn verification_with(
    own: &str,
    domains: &[&Domain],
    f: impl FnOnce(VerifierConfig) -> VerifierConfig,
) -> Arc<PeerVerification> {
    let mut bundles = BundleSet::new();
    for d in domains {
        bundles.insert(d.bundle()).unwrap();
    }
    PeerVerification::new(f(VerifierConfig::new(
        SpiffeId::parse(own).unwrap(),
        bundles,
    )))
    .unwrap()
}

/// A client speaking the agentid exchange by hand over a raw TLS connection (our server
/// verifier), so tests can send frames the library would refuse to send.
pub struct RawAgent<S = TcpStream> {
    pub tls: tokio_rustls::client::TlsStream<S>,
    pub id: SpiffeId,
    pub server: SpiffeId,
    /// This connection's exporter value for the client role (what a client proof binds).
    pub exporter: [u8; 32],
    /// The client proof sent in hello.
    pub hello_proof: String,
}

impl RawAgent {
    /// TLS with `cert` and `key`, then a valid hello (with `chain` if given). Returns after
    /// writing the hello, without reading the answer.
    pub async fn hello(
        v: &PeerVerification,
        addr: SocketAddr,
        id: &str,
        cert: CertificateDer<'static>,
        key: &TaskKey,
        chain: Option<&str>,
    ) -> Self {
        let tls = raw_connect(raw_client_config(v, Some((cert, key)), false), addr)
            .await
            .unwrap();
        Self::hello_on(tls, id, key, chain).await
    }

    /// A reauth body: `certs` (DER, leaf first), optional chain, `proof`.
    pub fn reauth_body(
        certs: &[CertificateDer<'_>],
        chain: Option<&str>,
        proof: String,
    ) -> Vec<u8> {
        use base64::Engine as _;
        let certs = certs
            .iter()
            .map(|c| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.as_ref()))
            .collect();
        wire::body(&wire::Reauth {
            certs,
            chain: chain.map(str::to_owned),
            proof,
        })
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawAgent<S> {
    /// [`RawAgent::hello`] over `io` (a pipe standing for a connection, say).
    pub async fn hello_over(
        v: &PeerVerification,
        io: S,
        id: &str,
        cert: CertificateDer<'static>,
        key: &TaskKey,
        chain: Option<&str>,
    ) -> Self {
        let name = rustls::pki_types::ServerName::try_from("agentid.invalid").unwrap();
        let connect =
            tokio_rustls::TlsConnector::from(raw_client_config(v, Some((cert, key)), false))
                .connect(name, io);
        let tls = tokio::time::timeout(T, connect).await.unwrap().unwrap();
        Self::hello_on(tls, id, key, chain).await
    }

    async fn hello_on(
        tls: tokio_rustls::client::TlsStream<S>,
        id: &str,
        key: &TaskKey,
        chain: Option<&str>,
    ) -> Self {
        let conn = tls.get_ref().1;
        let exporter = conn
            .export_keying_material(
                [0u8; 32],
                EXPORTER_LABEL,
                Some(Role::Client.exporter_context()),
            )
            .unwrap();
        let server_cert = conn.peer_certificates().unwrap()[0].clone();
        let server =
            agentid_transport::check_leaf(&server_cert, agentid_transport::CertUsage::ServerAuth)
                .unwrap()
                .id
                .as_spiffe_id()
                .clone();
        let mut agent = Self {
            tls,
            id: SpiffeId::parse(id).unwrap(),
            server,
            exporter,
            hello_proof: String::new(),
        };
        agent.hello_proof = agent.proof(key, chain, None);
        let body = wire::body(&wire::Hello {
            chain: chain.map(str::to_owned),
            proof: agent.hello_proof.clone(),
        });
        agent
            .write(agentid_transport::internal::FrameType::Hello, &body)
            .await;
        agent
    }

    /// A client-role proof for this connection (or for `exporter` when given), signed by `key`.
    pub fn proof(&self, key: &TaskKey, chain: Option<&str>, exporter: Option<[u8; 32]>) -> String {
        let n = now();
        let mut b = ProofBuilder::new(
            &self.id,
            &self.server,
            Role::Client,
            exporter.unwrap_or(self.exporter),
            n,
            n + 60,
        );
        if let Some(c) = chain {
            b = b.chain(c);
        }
        b.sign(key).unwrap()
    }

    pub async fn write(&mut self, ty: agentid_transport::internal::FrameType, body: &[u8]) {
        agentid_transport::internal::write_frame(&mut self.tls, ty, body)
            .await
            .unwrap();
    }

    pub async fn read(&mut self) -> Option<agentid_transport::internal::Frame> {
        tokio::time::timeout(T, agentid_transport::internal::read_frame(&mut self.tls))
            .await
            .unwrap()
            .unwrap()
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

pub fn server(
    creds: Arc<MemoryCredentials>,
    v: Arc<PeerVerification>,
    policy: PeerPolicy,
) -> AgentServer {
    AgentServer::builder(creds, v, policy)
        .limits(limits())
        .build()
        .unwrap()
}

pub fn client(
    creds: Arc<MemoryCredentials>,
    v: Arc<PeerVerification>,
    policy: PeerPolicy,
) -> AgentClient {
    AgentClient::builder(creds, v, policy)
        .limits(limits())
        .build()
        .unwrap()
}

/// A raw rustls client (our server verifier, any client certificate) for presenting
/// certificates that `Credential::new` would refuse, and for speaking raw frames.
pub fn raw_client_config(
    v: &PeerVerification,
    cert: Option<(CertificateDer<'static>, &TaskKey)>,
    resumption: bool,
) -> Arc<rustls::ClientConfig> {
    use agentid_transport::SpiffeServerCertVerifier;
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
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.danger_pkcs8_der().to_vec().into()),
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
pub fn raw_server_config(
    v: &PeerVerification,
    cert: CertificateDer<'static>,
    key: &TaskKey,
) -> Arc<rustls::ServerConfig> {
    use agentid_transport::SpiffeClientCertVerifier;
    let verifier = SpiffeClientCertVerifier::new(
        Arc::new(arc_swap::ArcSwap::new(v.trust_store())),
        PeerPolicy::danger_any(),
    );
    let mut c =
        rustls::ServerConfig::builder_with_provider(agentid_transport::provider::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(
                vec![cert],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.danger_pkcs8_der().to_vec().into()),
            )
            .unwrap();
    c.alpn_protocols = vec![agentid_transport::provider::ALPN.to_vec()];
    Arc::new(c)
}

/// The credentials of `id` under `ca`: a fresh key and a leaf of the profile.
pub fn credentials(ca: &Ca, id: &str) -> Arc<MemoryCredentials> {
    Arc::new(MemoryCredentials::new(credential(
        ca,
        id,
        key(),
        &LeafOpts::default(),
    )))
}

/// A server and a client of example.org ([`SERVER`], [`CLIENT`]), with their verifications.
pub struct Pair {
    pub a: Domain,
    pub server_creds: Arc<MemoryCredentials>,
    pub client_creds: Arc<MemoryCredentials>,
    pub client_key_pub: agentid_protocol::PublicKey,
    pub sv: Arc<PeerVerification>,
    pub cv: Arc<PeerVerification>,
}

/// A server and a client of example.org; the client holds a grant for `scope` unless `None`.
pub fn pair(scope: Option<&str>, client_opts: LeafOpts, strict: bool) -> Pair {
    let a = Domain::new("example.org");
    let ck = key();
    let client_key_pub = ck.public_key().clone();
    let holder = a.task("client", "t2");
    let chain = scope.map(|s| a.grant(&holder, &ck, s));
    let mut cred = credential(&a.ca, CLIENT, ck, &client_opts);
    if let Some(c) = chain {
        cred = cred.with_chain(c.as_str());
    }
    Pair {
        server_creds: credentials(&a.ca, SERVER),
        client_creds: Arc::new(MemoryCredentials::new(cred)),
        client_key_pub,
        sv: verification(SERVER, &[&a], strict),
        cv: verification(CLIENT, &[&a], strict),
        a,
    }
}

impl Pair {
    /// Serves `n` connections with this pair's server, admitting any client.
    pub async fn serve(
        &self,
        n: usize,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<ServerResult>>) {
        serve(
            server(
                self.server_creds.clone(),
                self.sv.clone(),
                PeerPolicy::danger_any(),
            ),
            n,
        )
        .await
    }

    /// A live session: [`Pair::connect`] with each side admitting any peer, and one message
    /// (`x`) from the client that the server received.
    pub async fn live(&self) -> (Session<TcpStream>, Session<TcpStream>) {
        let (mut cs, mut ss) = self
            .connect(PeerPolicy::danger_any(), PeerPolicy::danger_any())
            .await;
        assert_eq!(roundtrip(&mut cs, &mut ss, b"x").await, b"x");
        (cs, ss)
    }

    /// Serves one connection and connects the client to it, each side admitting the other by
    /// its policy: (the client's session, the server's session).
    pub async fn connect(
        &self,
        server_policy: PeerPolicy,
        client_policy: PeerPolicy,
    ) -> (Session<TcpStream>, Session<TcpStream>) {
        sessions(
            server(self.server_creds.clone(), self.sv.clone(), server_policy),
            &client(self.client_creds.clone(), self.cv.clone(), client_policy),
        )
        .await
    }
}

/// Serves one connection with `server` and connects `client` to it: (the client's result, the
/// server's result), each wait bounded.
pub async fn handshake(server: AgentServer, client: &AgentClient) -> (ServerResult, ServerResult) {
    let (addr, h) = serve(server, 1).await;
    let client_result = connect(client, addr).await;
    (client_result, accepted(h).await)
}

/// A [`handshake`] that both sides accept: (the client's session, the server's session).
pub async fn sessions(
    server: AgentServer,
    client: &AgentClient,
) -> (Session<TcpStream>, Session<TcpStream>) {
    let (cs, ss) = handshake(server, client).await;
    (cs.unwrap(), ss.unwrap())
}

/// A session that a server of `a` ([`SERVER`], any client admitted) accepted from a raw client
/// ([`CLIENT`], no chain) whose hello it accepted.
pub struct RawSession {
    /// The server's verification.
    pub sv: Arc<PeerVerification>,
    /// The raw client, after reading the accept.
    pub raw: RawAgent,
    /// The raw client's key.
    pub key: TaskKey,
    /// The server's session.
    pub server: Session<TcpStream>,
}

/// A server of `a` and a raw client of `a` whose hello it accepted.
pub async fn raw_session(a: &Domain) -> RawSession {
    let sv = verification(SERVER, &[a], false);
    let (addr, h) = serve(
        server(
            credentials(&a.ca, SERVER),
            sv.clone(),
            PeerPolicy::danger_any(),
        ),
        1,
    )
    .await;
    let key = key();
    let cert = leaf(&a.ca, CLIENT, &key, &LeafOpts::default());
    let mut raw = RawAgent::hello(&sv, addr, CLIENT, cert, &key, None).await;
    assert_eq!(
        raw.read().await.unwrap().ty,
        agentid_transport::internal::FrameType::Accept
    );
    let server = h.await.unwrap().pop().unwrap().unwrap();
    RawSession {
        sv,
        raw,
        key,
        server,
    }
}
