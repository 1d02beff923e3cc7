//! The material every figure shares: an embedded CA (the real `agentid-ca`, SQLite store) in a
//! temporary directory, nine holders h0..h8 of one task with P-256 per-task certificates, the
//! depth-8 delegation chain h0 -> h1 -> ... -> h8 (each prefix is the chain at that depth), a
//! server agent, and the rustls / agentid client and server configurations built from them.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentid_ca::{
    init_ca, CertificateAuthority, ChildRequest, InitOptions, KeySource, OpenTaskRequest, Policy,
    TaskRequester,
};
use agentid_protocol::{
    Algorithm, BundleSet, Chain, LinkBuilder, PeerId, Scope, SpiffeId, TaskIdentity, TaskKey,
    TokenCache, TrustBundle, TrustDomain, VerifierConfig,
};
use agentid_transport::{
    AgentClient, AgentServer, ConnectionLimits, Credential, MemoryCredentials, PeerPolicy,
    PeerVerification,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The boxed error of the bench.
pub type BoxError = Box<dyn StdError + Send + Sync>;
/// The result type of the bench.
pub type Res<T> = Result<T, BoxError>;

/// The deepest chain the protocol allows.
pub const MAX_DEPTH: usize = agentid_protocol::caps::MAX_DEPTH as usize;

/// Now, Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The issuance policy of the bench CA.
pub fn policy() -> String {
    let mut p = String::from(
        "[defaults]\nttl = \"30m\"\ntask_ttl = \"1h\"\n\n\
         [agents.h0]\nscopes = [\"repo:*\"]\nmax_depth = 8\nmax_ttl = \"1h\"\nmax_task_ttl = \"2h\"\nrequesters = [\"operator\"]\n\n\
         [agents.server]\nscopes = [\"repo:serve\"]\nmax_ttl = \"1h\"\nmax_task_ttl = \"2h\"\nrequesters = [\"operator\"]\n\n\
         [agents.worker]\nscopes = [\"repo:*\"]\nmax_ttl = \"1h\"\nmax_task_ttl = \"2h\"\nrequesters = [\"operator\"]\n",
    );
    for i in 1..=MAX_DEPTH {
        p.push_str(&format!(
            "\n[agents.h{i}]\nscopes = []\nmax_ttl = \"1h\"\nrequesters = [\"parent:h0\"]\n"
        ));
    }
    p
}

/// One holder: its task identity, its key and its certificate.
pub struct Holder {
    /// The task identity (the certificate's URI SAN).
    pub id: TaskIdentity,
    /// The task key.
    pub key: TaskKey,
    /// The leaf certificate (DER).
    pub leaf_der: Vec<u8>,
}

impl Holder {
    /// A copy of the task key (the key is not `Clone` on purpose; PKCS#8 round trip).
    pub fn key_copy(&self) -> Res<TaskKey> {
        Ok(TaskKey::from_pkcs8_der(self.key.danger_pkcs8_der())?)
    }
}

/// The shared material.
pub struct Pki {
    /// Keeps the CA directory alive.
    pub dir: tempfile::TempDir,
    /// The trust domain.
    pub td: TrustDomain,
    /// The CA's trust bundle (x509 anchors, grant and revocation keys).
    pub bundle: TrustBundle,
    /// The CA's current (empty) signed revocation list.
    pub revocations: String,
    /// h0..h8.
    pub holders: Vec<Holder>,
    /// `chains[d]`: the chain of depth `d`, held by `holders[d]`.
    pub chains: Vec<Chain>,
    /// The server agent.
    pub server: Holder,
    /// The root certificate (DER).
    pub root_der: Vec<u8>,
    /// The issuing certificate (DER).
    pub intermediate_der: Vec<u8>,
}

impl Pki {
    /// Builds the CA, the holders, the chains and the server.
    pub fn new() -> Res<Self> {
        let dir = tempfile::tempdir()?;
        let td = TrustDomain::parse("bench.example")?;
        init_ca(dir.path(), &InitOptions::new(td.clone()), SystemTime::now())?;
        // The policy goes to the CA's own file, so that every CA opened on this directory has it.
        Policy::from_toml(&policy())?;
        std::fs::write(
            dir.path().join(agentid_ca::material::files::POLICY),
            policy(),
        )?;
        let ca = CertificateAuthority::open(dir.path())?;

        let key0 = TaskKey::generate(Algorithm::Es256)?;
        let mut req = OpenTaskRequest::new(
            "h0",
            KeySource::Spki(key0.public_key().to_spki_der()),
            TaskRequester::Operator,
            Scope::parse("repo:read repo:write repo:admin")?,
        );
        req.max_depth = Some(MAX_DEPTH as u8);
        let opened = ca.open_task(&req, SystemTime::now())?;
        let grant_exp = opened.grant_exp;
        let mut holders = vec![Holder {
            id: opened.identity.clone(),
            key: key0,
            leaf_der: opened.certificate.leaf.der.clone(),
        }];
        let mut chains = vec![opened.grant.clone()];
        let t = now();
        for i in 1..=MAX_DEPTH {
            let key = TaskKey::generate(Algorithm::Es256)?;
            let cert = ca.issue_child(
                &ChildRequest {
                    parent: opened.identity.clone(),
                    parent_chain: Some(opened.grant.clone()),
                    agent: format!("h{i}"),
                    key: KeySource::Spki(key.public_key().to_spki_der()),
                    ttl: None,
                },
                SystemTime::now(),
            )?;
            let PeerId::Task(id) = cert.identity.clone() else {
                return Err("the CA issued a non-task identity for a child".into());
            };
            let prev = chains.last().ok_or("no chain")?;
            let signer = &holders.last().ok_or("no holder")?.key;
            // Scopes narrow along the chain; the last two holders keep `repo:read`.
            let scope = match i {
                1..=3 => "repo:read repo:write",
                _ => "repo:read",
            };
            let link = LinkBuilder::new(prev, &id, key.public_key(), Scope::parse(scope)?)
                .max_depth((MAX_DEPTH - i) as u8)
                .validity(t, t, grant_exp)
                .sign(signer)?;
            chains.push(link);
            holders.push(Holder {
                id,
                key,
                leaf_der: cert.leaf.der.clone(),
            });
        }

        let server_key = TaskKey::generate(Algorithm::Es256)?;
        let srv = ca.open_task(
            &OpenTaskRequest::new(
                "server",
                KeySource::Spki(server_key.public_key().to_spki_der()),
                TaskRequester::Operator,
                Scope::parse("repo:serve")?,
            ),
            SystemTime::now(),
        )?;
        let server = Holder {
            id: srv.identity.clone(),
            key: server_key,
            leaf_der: srv.certificate.leaf.der.clone(),
        };
        let bundle = ca.trust_bundle()?;
        let revocations = ca.revocation_list(SystemTime::now())?;
        let root_der = ca.root_der().to_vec();
        let intermediate_der = ca.intermediate_der().to_vec();
        Ok(Self {
            dir,
            td,
            bundle,
            revocations,
            holders,
            chains,
            server,
            root_der,
            intermediate_der,
        })
    }

    /// A verifier configuration for `own`: this CA's bundle and its revocation list applied.
    pub fn verifier_config(&self, own: &SpiffeId) -> Res<VerifierConfig> {
        let mut bundles = BundleSet::new();
        bundles.insert(self.bundle.clone())?;
        let mut cfg = VerifierConfig::new(own.clone(), bundles);
        cfg.apply_revocation_list(&self.revocations)?;
        Ok(cfg)
    }

    /// Transport verification state for `own`, optionally with a verified-token cache.
    pub fn verification(
        &self,
        own: &SpiffeId,
        cache: Option<Arc<TokenCache>>,
    ) -> Res<Arc<PeerVerification>> {
        let cfg = self.verifier_config(own)?;
        Ok(match cache {
            Some(c) => PeerVerification::with_token_cache(cfg, c)?,
            None => PeerVerification::new(cfg)?,
        })
    }

    /// The credential of `h` (its leaf and the issuing certificate), with `chain` if given.
    pub fn credential(&self, h: &Holder, chain: Option<&Chain>) -> Res<Credential> {
        let certs = vec![
            CertificateDer::from(h.leaf_der.clone()),
            CertificateDer::from(self.intermediate_der.clone()),
        ];
        let c = Credential::new(certs, h.key_copy()?)?;
        Ok(match chain {
            Some(ch) => c.with_chain(ch.as_str()),
            None => c,
        })
    }

    /// The agentid server (the `server` agent, admitting agents of the trust domain), with
    /// caps raised for the memory figure.
    pub fn agentid_server(&self, cache: Option<Arc<TokenCache>>) -> Res<AgentServer> {
        let limits = ConnectionLimits {
            max_connections: 50_000,
            max_handshakes: 1024,
            handshake_timeout: Duration::from_secs(20),
            first_frame_timeout: Duration::from_secs(20),
            // The memory figure opens every session from the same few agents.
            max_sessions_per_agent: 50_000,
            max_sessions_per_task: 50_000,
            ..ConnectionLimits::default()
        };
        Ok(AgentServer::builder(
            Arc::new(MemoryCredentials::new(self.credential(&self.server, None)?)),
            self.verification(self.server.id.as_spiffe_id(), cache)?,
            PeerPolicy::agents_in(self.td.clone()),
        )
        .limits(limits)
        .build()?)
    }

    /// The agentid client of holder `depth`, presenting the chain of that depth.
    pub fn agentid_client(&self, depth: usize) -> Res<AgentClient> {
        let h = self.holders.get(depth).ok_or("depth above 8")?;
        let chain = self.chains.get(depth).ok_or("depth above 8")?;
        Ok(AgentClient::builder(
            Arc::new(MemoryCredentials::new(self.credential(h, Some(chain))?)),
            self.verification(h.id.as_spiffe_id(), None)?,
            PeerPolicy::agent(self.server.id.agent()),
        )
        .build()?)
    }

    fn roots(&self) -> Res<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.root_der.clone()))?;
        Ok(Arc::new(roots))
    }

    fn key_der(h: &Holder) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(h.key.danger_pkcs8_der().to_vec().into())
    }

    /// Raw rustls server: the same certificates, provider (aws-lc-rs, X25519MLKEM768 preferred),
    /// TLS 1.3 only, mandatory client certificates checked by webpki, no resumption or tickets.
    pub fn raw_server_config(&self) -> Res<Arc<rustls::ServerConfig>> {
        let provider = agentid_transport::provider::provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![
                    CertificateDer::from(self.server.leaf_der.clone()),
                    CertificateDer::from(self.intermediate_der.clone()),
                ],
                Self::key_der(&self.server),
            )?;
        cfg.alpn_protocols = vec![agentid_transport::provider::ALPN.to_vec()];
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// Raw rustls client of holder `depth`: webpki chain validation of the server (URI-only
    /// certificates carry no DNS name, so only the name check is skipped), no resumption.
    pub fn raw_client_config(&self, depth: usize) -> Res<Arc<rustls::ClientConfig>> {
        let provider = agentid_transport::provider::provider();
        let h = self.holders.get(depth).ok_or("depth above 8")?;
        let verifier = ChainOnlyVerifier::new(self.roots()?);
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(
                vec![
                    CertificateDer::from(h.leaf_der.clone()),
                    CertificateDer::from(self.intermediate_der.clone()),
                ],
                Self::key_der(h),
            )?;
        cfg.alpn_protocols = vec![agentid_transport::provider::ALPN.to_vec()];
        cfg.resumption = Resumption::disabled();
        cfg.enable_sni = false;
        Ok(Arc::new(cfg))
    }
}

/// The server name a raw client passes (never checked; SNI is off).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("agentid.invalid")
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// Server certificate verification as webpki does it, minus the DNS name check.
#[derive(Debug)]
pub struct ChainOnlyVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ChainOnlyVerifier {
    /// A verifier anchored at `roots`, with agentid's provider.
    pub fn new(roots: Arc<RootCertStore>) -> Self {
        Self {
            roots,
            provider: agentid_transport::provider::provider(),
        }
    }
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
