//! Shared set-up of the root integration tests: a real CA (`init_ca` in a temporary directory,
//! with a policy), agents holding CA-issued certificates, and agentid servers and clients with
//! short limits. Every wait in the tests is bounded by [`T`] or less.
// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

#[allow(unused_imports, reason = "each test binary uses a subset")]
pub use agentid_test_support::net::*;
#[allow(unused_imports, reason = "each test binary uses a subset")]
pub use agentid_test_support::{now, pem, scope, td, T};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentid::ca::{
    init_ca, CertificateAuthority, ChildRequest, InitOptions, IssuedCertificate, KeySource,
    OpenTaskRequest, Policy, RenewRequest, RenewRequester, ServiceRequest, TaskRequester,
};
use agentid::protocol::{
    Algorithm, BundleSet, Chain, LinkBuilder, PeerId, TaskIdentity, TaskKey, TrustBundle,
    TrustDomain, VerifierConfig,
};
use agentid::transport::{
    AgentClient, AgentServer, ConnectionLimits, Credential, MemoryCredentials, PeerPolicy,
    PeerVerification,
};
use rustls::pki_types::CertificateDer;

/// The issuance policy of the test CAs.
pub const POLICY: &str = r#"
[defaults]
ttl = "5m"
task_ttl = "30m"

[agents.planner]
scopes = ["repo:read", "repo:write", "issues:*"]
max_depth = 2
requesters = ["operator"]

[agents.coder]
requesters = ["parent:planner"]

[agents.librarian]
scopes = ["repo:serve"]
requesters = ["operator"]

[agents.auditor]
scopes = ["repo:read"]
requesters = ["operator"]

[services.search]
requesters = ["operator"]
"#;

/// A real CA in a temporary directory.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub td: TrustDomain,
}

/// An agent (or service) holding a CA-issued certificate, its key, and its chain if any.
pub struct Agent {
    pub id: PeerId,
    pub cert: IssuedCertificate,
    pub key_der: Vec<u8>,
    pub chain: Option<Chain>,
    /// The `jti` of the grant the CA minted with this certificate (task root holders only).
    pub grant_jti: Option<String>,
}

impl TestCa {
    pub fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let td = td(trust_domain);
        init_ca(dir.path(), &InitOptions::new(td.clone()), SystemTime::now()).unwrap();
        let mut ca = CertificateAuthority::open(dir.path()).unwrap();
        ca.set_policy(Policy::from_toml(POLICY).unwrap());
        Self { dir, ca, td }
    }

    /// Opens a task for `agent` (operator request): certificate and grant.
    pub fn open_task(
        &self,
        agent: &str,
        grant_scope: &str,
        max_depth: u8,
        ttl: Option<Duration>,
    ) -> Agent {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let mut req = OpenTaskRequest::new(
            agent,
            KeySource::Spki(key.public_key().to_spki_der()),
            TaskRequester::Operator,
            scope(grant_scope),
        );
        req.max_depth = Some(max_depth);
        req.ttl = ttl;
        let task = self.ca.open_task(&req, SystemTime::now()).unwrap();
        Agent {
            id: PeerId::Task(task.identity.clone()),
            cert: task.certificate,
            key_der: key.danger_pkcs8_der().to_vec(),
            chain: Some(task.grant),
            grant_jti: Some(task.grant_jti),
        }
    }

    /// A child certificate in `parent`'s task, without a grant (Ed25519 key, as agent_pair).
    pub fn child(&self, parent: &Agent, agent: &str) -> Agent {
        let key = TaskKey::generate(Algorithm::Ed25519).unwrap();
        let cert = self
            .ca
            .issue_child(
                &ChildRequest {
                    parent: parent.task_identity(),
                    parent_chain: parent.chain.clone(),
                    agent: agent.into(),
                    key: KeySource::Spki(key.public_key().to_spki_der()),
                    ttl: None,
                },
                SystemTime::now(),
            )
            .unwrap();
        Agent::without_grant(cert, &key)
    }

    /// A service certificate (never with a grant).
    pub fn service(&self, name: &str) -> Agent {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let cert = self
            .ca
            .issue_service(
                &ServiceRequest {
                    service: name.into(),
                    key: KeySource::Spki(key.public_key().to_spki_der()),
                    ttl: None,
                },
                SystemTime::now(),
            )
            .unwrap();
        Agent::without_grant(cert, &key)
    }

    /// Renews `agent`'s certificate for the same key.
    pub fn renew(&self, agent: &Agent) -> Agent {
        let cert = self
            .ca
            .renew(
                &RenewRequest {
                    identity: agent.id.clone(),
                    key: KeySource::Spki(agent.key().public_key().to_spki_der()),
                    requester: RenewRequester::Holder,
                    ttl: None,
                },
                SystemTime::now(),
            )
            .unwrap();
        Agent {
            id: agent.id.clone(),
            cert,
            key_der: agent.key_der.clone(),
            chain: agent.chain.clone(),
            grant_jti: agent.grant_jti.clone(),
        }
    }

    pub fn bundle(&self) -> TrustBundle {
        self.ca.trust_bundle().unwrap()
    }

    /// The CA's next signed revocation list.
    pub fn revocations(&self) -> String {
        self.ca.revocation_list(SystemTime::now()).unwrap()
    }
}

impl Agent {
    /// An agent holding `cert` for `key`, with no chain and no grant of its own.
    fn without_grant(cert: IssuedCertificate, key: &TaskKey) -> Self {
        Self {
            id: cert.identity.clone(),
            cert,
            key_der: key.danger_pkcs8_der().to_vec(),
            chain: None,
            grant_jti: None,
        }
    }

    pub fn key(&self) -> TaskKey {
        TaskKey::from_pkcs8_der(&self.key_der).unwrap()
    }

    pub fn task_identity(&self) -> TaskIdentity {
        match &self.id {
            PeerId::Task(t) => t.clone(),
            other => panic!("{other} is not a task identity"),
        }
    }

    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![
            CertificateDer::from(self.cert.leaf.der.clone()),
            CertificateDer::from(self.cert.intermediate_der.clone()),
        ]
    }

    /// The transport credential, presenting the agent's chain if it has one.
    pub fn credential(&self) -> Credential {
        let c = Credential::new(self.cert_chain(), self.key()).unwrap();
        match &self.chain {
            Some(chain) => c.with_chain(chain.as_str()),
            None => c,
        }
    }

    /// The same agent presenting `chain` instead of its own.
    pub fn presenting(&self, chain: Option<Chain>) -> Agent {
        Agent {
            id: self.id.clone(),
            cert: self.cert.clone(),
            key_der: self.key_der.clone(),
            chain,
            grant_jti: None,
        }
    }

    /// Signs a link handing `link_scope` of this agent's chain to `to`, which then holds it.
    pub fn delegate(&self, to: &mut Agent, link_scope: &str) {
        let from = self.chain.as_ref().expect("the delegator holds a chain");
        let t = now();
        let exp = from.read_unverified().unwrap().expires().min(t + 600);
        let chain = LinkBuilder::new(
            from,
            &to.task_identity(),
            to.key().public_key(),
            scope(link_scope),
        )
        .validity(t, t, exp)
        .sign(&self.key())
        .unwrap();
        to.chain = Some(chain);
    }

    /// Writes the credential directory `agentid cert issue` writes: `cert.pem` (leaf, then
    /// intermediate), `key.pem` (PKCS#8, 0600), `bundle.json`, and the chain as `chain.jwt`
    /// (delegated) or `grant.jwt` (a bare grant).
    pub fn write_dir(&self, dir: &Path, bundle: &TrustBundle) {
        use agentid::files::{BUNDLE_FILE, CERT_FILE, CHAIN_FILE, GRANT_FILE, KEY_FILE};
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CERT_FILE), self.cert.chain_pem()).unwrap();
        agentid::fs::write_private_key(&dir.join(KEY_FILE), &self.key_der).unwrap();
        std::fs::write(dir.join(BUNDLE_FILE), bundle.to_json()).unwrap();
        if let Some(chain) = &self.chain {
            let name = if chain.depth() == 0 {
                GRANT_FILE
            } else {
                CHAIN_FILE
            };
            std::fs::write(dir.join(name), format!("{}\n", chain.as_str())).unwrap();
        }
    }
}

/// Verification state for `own` trusting `bundles`; with `revocations` the lists are applied
/// and required (fail closed), without them they are explicitly optional.
pub fn verification(
    own: &PeerId,
    bundles: &[TrustBundle],
    revocations: &[&str],
) -> Arc<PeerVerification> {
    let mut set = BundleSet::new();
    for b in bundles {
        set.insert(b.clone()).unwrap();
    }
    let mut cfg = VerifierConfig::new(own.as_spiffe_id().clone(), set);
    if revocations.is_empty() {
        cfg = cfg.danger_accept_missing_or_stale_revocations();
    }
    for list in revocations {
        cfg.apply_revocation_list(list).unwrap();
    }
    PeerVerification::new(cfg).unwrap()
}

pub fn limits() -> ConnectionLimits {
    ConnectionLimits {
        // Generous: only a failing test waits for them (2 cores shared with other builds).
        handshake_timeout: Duration::from_secs(5),
        first_frame_timeout: Duration::from_secs(5),
        ..ConnectionLimits::default()
    }
}

pub fn server(agent: &Agent, v: Arc<PeerVerification>, policy: PeerPolicy) -> AgentServer {
    AgentServer::builder(
        Arc::new(MemoryCredentials::new(agent.credential())),
        v,
        policy,
    )
    .limits(limits())
    .build()
    .unwrap()
}

pub fn client(agent: &Agent, v: Arc<PeerVerification>, policy: PeerPolicy) -> AgentClient {
    AgentClient::builder(
        Arc::new(MemoryCredentials::new(agent.credential())),
        v,
        policy,
    )
    .limits(limits())
    .build()
    .unwrap()
}
