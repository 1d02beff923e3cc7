//! The CA tests' helpers: a CA in a temp dir with a test policy, keys, CSRs, OpenSSL (what is
//! not specific to the CA comes from `agentid-test-support`).
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentid_ca::{init_ca, CertificateAuthority, InitOptions, KeySource, KeyType};
use agentid_protocol::{Algorithm, TaskKey, TrustDomain};
use rcgen::{CertificateParams, KeyPair, SanType};

pub const TD: &str = "example.org";

pub const POLICY: &str = r#"
[defaults]
ttl = "5m"
max_ttl = "15m"
task_ttl = "1h"
max_task_ttl = "8h"

[agents.planner]
scopes = ["tickets:*", "search:query"]
max_ttl = "10m"
max_depth = 2
requesters = ["operator", "bootstrap"]

[agents.summarizer]
scopes = ["tickets:read"]
requesters = ["parent:planner"]

[agents.reviewer]
scopes = ["tickets:read"]
requesters = ["parent:summarizer"]

[agents.worker]
scopes = ["tickets:read"]
requesters = ["operator"]

[services.search]
max_ttl = "1h"
requesters = ["operator"]
"#;

/// A fixed "now" well inside the CA's validity (the CA is created at real time).
pub fn now() -> SystemTime {
    SystemTime::now()
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    /// The PostgreSQL server of this CA's store, when the tests run against PostgreSQL
    /// (dropped after the CA: fields drop in order).
    pub pg: Option<agentid_test_support::pg::PgCluster>,
}

/// Which store `test_ca` gives: `AGENTID_TEST_STORE=postgres` (with the `postgres` feature)
/// runs the same tests against a PostgreSQL server of each test's own; SQLite otherwise.
pub fn postgres_under_test() -> bool {
    match std::env::var("AGENTID_TEST_STORE").as_deref() {
        Err(_) | Ok("sqlite") => false,
        Ok("postgres") if cfg!(feature = "postgres") => true,
        Ok("postgres") => panic!("AGENTID_TEST_STORE=postgres needs --features postgres"),
        Ok(other) => panic!("AGENTID_TEST_STORE must be sqlite or postgres, not {other:?}"),
    }
}

/// A CA directory whose `config.toml` names a fresh database on `pg`.
pub fn make_pg_ca_dir(
    key_type: KeyType,
    pg: &agentid_test_support::pg::PgCluster,
    db: &str,
) -> tempfile::TempDir {
    pg.create_database(db);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = InitOptions::new(TrustDomain::parse(TD).unwrap());
    opts.key_type = key_type;
    opts.store = Some(pg.url(db));
    init_ca(dir.path(), &opts, now()).unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    dir
}

impl TestCa {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn make_ca_dir(key_type: KeyType) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = InitOptions::new(TrustDomain::parse(TD).unwrap());
    opts.key_type = key_type;
    init_ca(dir.path(), &opts, now()).unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    dir
}

pub fn test_ca(key_type: KeyType) -> TestCa {
    if postgres_under_test() {
        // Under CI a missing PostgreSQL fails here; elsewhere the run was asked for explicitly.
        let pg = agentid_test_support::pg::PgCluster::start()
            .expect("AGENTID_TEST_STORE=postgres but PostgreSQL is not installed");
        let dir = make_pg_ca_dir(key_type, &pg, "agentid");
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        return TestCa {
            dir,
            ca,
            pg: Some(pg),
        };
    }
    let dir = make_ca_dir(key_type);
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    TestCa { dir, ca, pg: None }
}

/// A fresh task key and its SPKI as a key source.
pub fn spki_key(alg: Algorithm) -> (TaskKey, KeySource) {
    let k = TaskKey::generate(alg).unwrap();
    let spki = k.public_key().to_spki_der();
    (k, KeySource::Spki(spki))
}

/// A CSR made by rcgen with the given SANs and tweaks.
pub fn csr_with(
    key: &KeyPair,
    sans: &[SanType],
    tweak: impl FnOnce(&mut CertificateParams),
) -> Vec<u8> {
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans.to_vec();
    tweak(&mut p);
    p.serialize_request(key).unwrap().der().to_vec()
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub fn p256_keypair() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

/// Runs `openssl ARGS` in the current directory: whether it succeeded, and stdout then stderr.
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = agentid_test_support::openssl::run(None, args);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn write_pem(dir: &Path, name: &str, label: &str, der: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, agentid_test_support::pem(label, der)).unwrap();
    p
}

pub fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// The audit records of the CA's store (every writer), each as its JSON.
pub fn audit_records(ca: &CertificateAuthority) -> Vec<serde_json::Value> {
    ca.audit_snapshot(None)
        .unwrap()
        .records
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

/// The `ok` audit records of principals' revocations (subject `principal:...`), in chain order.
pub fn principal_revoke_records(ca: &CertificateAuthority) -> Vec<serde_json::Value> {
    audit_records(ca)
        .into_iter()
        .filter(|r| {
            r["kind"] == "revoke"
                && r["outcome"] == "ok"
                && r["subject"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("principal:"))
        })
        .collect()
}

/// A CA service on loopback over a CA made by [`make_ca_dir`] (P-256) whose policy is
/// [`POLICY`] followed by `extra_policy`: its CA directory, its mTLS listener and, when
/// `enroll_listener`, its enrollment listener. The service runs until the test's runtime ends.
pub async fn serve_ca(
    extra_policy: &str,
    enroll_listener: bool,
) -> (tempfile::TempDir, SocketAddr, Option<SocketAddr>) {
    serve_ca_in(
        make_ca_dir(KeyType::P256),
        None,
        extra_policy,
        enroll_listener,
        agentid_ca::server::ServiceOptions::default(),
    )
    .await
}

/// [`serve_ca`] with `options`, on the store [`test_ca`] gives (with
/// `AGENTID_TEST_STORE=postgres`, a PostgreSQL server of its own, kept while the service runs).
pub async fn serve_ca_with(
    extra_policy: &str,
    enroll_listener: bool,
    options: agentid_ca::server::ServiceOptions,
) -> (tempfile::TempDir, SocketAddr, Option<SocketAddr>) {
    let pg = postgres_under_test().then(|| {
        agentid_test_support::pg::PgCluster::start()
            .expect("AGENTID_TEST_STORE=postgres but PostgreSQL is not installed")
    });
    let dir = match &pg {
        Some(pg) => make_pg_ca_dir(KeyType::P256, pg, "agentid"),
        None => make_ca_dir(KeyType::P256),
    };
    serve_ca_in(dir, pg, extra_policy, enroll_listener, options).await
}

async fn serve_ca_in(
    dir: tempfile::TempDir,
    pg: Option<agentid_test_support::pg::PgCluster>,
    extra_policy: &str,
    enroll_listener: bool,
    options: agentid_ca::server::ServiceOptions,
) -> (tempfile::TempDir, SocketAddr, Option<SocketAddr>) {
    use agentid_ca::server::CaService;
    let mut policy = POLICY.to_owned();
    policy.push_str(extra_policy);
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let service = CaService::new(ca, options).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mtls = l.local_addr().unwrap();
    let (e, enroll) = if enroll_listener {
        let e = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = e.local_addr().unwrap();
        (Some(e), Some(addr))
    } else {
        (None, None)
    };
    tokio::spawn(async move {
        let _pg = pg;
        service.serve_both(l, e).await
    });
    (dir, mtls, enroll)
}

/// A certificate chain (leaf, then intermediate) from DER.
pub fn chain_of(
    leaf: &[u8],
    intermediate: &[u8],
) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    vec![
        rustls_pki_types::CertificateDer::from(leaf.to_vec()),
        rustls_pki_types::CertificateDer::from(intermediate.to_vec()),
    ]
}

/// The serial of the (first) certificate the CA recorded for `identity`.
pub fn serial_of(ca: &CertificateAuthority, identity: &str) -> String {
    ca.issuances()
        .unwrap()
        .into_iter()
        .find(|r| r.identity == identity)
        .unwrap()
        .serial
}

/// Revokes a certificate by serial as the operator, now.
pub fn revoke_serial(ca: &CertificateAuthority, serial: &str) {
    ca.revoke(
        &agentid_ca::RevokeTarget::Serial(serial.parse().unwrap()),
        Some("test"),
        "operator",
        now(),
    )
    .unwrap();
}

/// Each half of a request made with [`call`] (the response, then its body) within this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// One request with a JSON body on a kept-alive connection: status, headers, body.
pub async fn call_with_headers(
    c: &mut agentid_transport::http::HttpClientConnection,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(bytes::Bytes::from(body.to_owned()))
        .unwrap();
    let resp = tokio::time::timeout(CALL_TIMEOUT, c.send(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let b = tokio::time::timeout(CALL_TIMEOUT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8(b.to_vec()).unwrap())
}

/// [`call_with_headers`] without the headers.
pub async fn call(
    c: &mut agentid_transport::http::HttpClientConnection,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let (status, _, body) = call_with_headers(c, method, path, body).await;
    (status, body)
}

/// A service credential issued by the operator for a new key, for `ttl` (the policy's default
/// when `None`).
pub fn service_credential(
    ca: &CertificateAuthority,
    name: &str,
    ttl: Option<Duration>,
) -> agentid_transport::Credential {
    service_credential_and_id(ca, name, ttl).0
}

/// A service credential issued by the operator: credentials and identity.
pub fn service_credentials(
    ca: &CertificateAuthority,
    name: &str,
) -> (std::sync::Arc<agentid_transport::MemoryCredentials>, String) {
    let (credential, id) = service_credential_and_id(ca, name, None);
    (
        std::sync::Arc::new(agentid_transport::MemoryCredentials::new(credential)),
        id,
    )
}

fn service_credential_and_id(
    ca: &CertificateAuthority,
    name: &str,
    ttl: Option<Duration>,
) -> (agentid_transport::Credential, String) {
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let c = ca
        .issue_service(
            &agentid_ca::ServiceRequest {
                service: name.into(),
                key: KeySource::Spki(key.public_key().to_spki_der()),
                ttl,
            },
            now(),
        )
        .unwrap();
    let chain = chain_of(&c.leaf.der, &c.intermediate_der);
    let id = c.identity.as_str().to_owned();
    (agentid_transport::Credential::new(chain, key).unwrap(), id)
}

/// Verification state for `own` trusting `ca`'s bundle, revocation lists optional.
pub fn verification(
    ca: &CertificateAuthority,
    own: &str,
) -> std::sync::Arc<agentid_transport::PeerVerification> {
    let mut bundles = agentid_protocol::BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    agentid_transport::PeerVerification::new(
        agentid_protocol::VerifierConfig::new(
            agentid_protocol::SpiffeId::parse(own).unwrap(),
            bundles,
        )
        .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap()
}

/// [`operator_task`] as credentials to present, and the task identity.
pub fn operator_credentials(
    ca: &CertificateAuthority,
    agent: &str,
) -> (std::sync::Arc<agentid_transport::MemoryCredentials>, String) {
    let (key, chain, id) = operator_task(ca, agent);
    (
        std::sync::Arc::new(agentid_transport::MemoryCredentials::new(
            agentid_transport::Credential::new(chain, key).unwrap(),
        )),
        id,
    )
}

/// The CA service's identity (`svc:agentid-ca`).
pub const CA_ID: &str = "spiffe://example.org/svc/agentid-ca";

/// A task of `agent` holding `tickets:read`, opened by the operator for a new key: the key,
/// the certificate chain and the task identity.
pub fn operator_task(
    ca: &CertificateAuthority,
    agent: &str,
) -> (
    TaskKey,
    Vec<rustls_pki_types::CertificateDer<'static>>,
    String,
) {
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let (chain, id) = operator_task_for(ca, agent, &key);
    (key, chain, id)
}

/// As [`operator_task`], for `key`: the certificate chain and the task identity.
pub fn operator_task_for(
    ca: &CertificateAuthority,
    agent: &str,
    key: &TaskKey,
) -> (Vec<rustls_pki_types::CertificateDer<'static>>, String) {
    let req = agentid_ca::OpenTaskRequest::new(
        agent,
        KeySource::Spki(key.public_key().to_spki_der()),
        agentid_ca::TaskRequester::Operator,
        agentid_protocol::Scope::parse("tickets:read").unwrap(),
    );
    let c = ca.open_task(&req, now()).unwrap();
    let chain = chain_of(&c.certificate.leaf.der, &c.certificate.intermediate_der);
    (chain, c.identity.as_str().to_owned())
}

/// An HTTP client to the CA service (exactly [`CA_ID`]) holding a new [`operator_task`] of
/// `agent` and accepting missing or stale revocation lists; and the task identity.
pub fn task_client(
    ca: &CertificateAuthority,
    agent: &str,
    connect_timeout: Duration,
) -> (agentid_transport::http::HttpClient, String) {
    use agentid_protocol::{BundleSet, PeerId, SpiffeId, VerifierConfig};
    let (key, chain, id) = operator_task(ca, agent);
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    let cfg = VerifierConfig::new(SpiffeId::parse(&id).unwrap(), bundles)
        .danger_accept_missing_or_stale_revocations();
    let v = agentid_transport::PeerVerification::new(cfg).unwrap();
    let creds = std::sync::Arc::new(agentid_transport::MemoryCredentials::new(
        agentid_transport::Credential::new(chain, key).unwrap(),
    ));
    let client = agentid_transport::http::HttpClient::builder(
        creds,
        v,
        agentid_transport::PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
    )
    .connect_timeout(connect_timeout)
    .build()
    .unwrap();
    (client, id)
}

/// A connection to the CA service's mTLS listener at `addr` as `creds` (identity `own`,
/// verifying with `ca`'s bundle), the server required to be exactly [`CA_ID`].
pub async fn ca_connection(
    ca: &CertificateAuthority,
    addr: std::net::SocketAddr,
    creds: std::sync::Arc<agentid_transport::MemoryCredentials>,
    own: &str,
) -> agentid_transport::http::HttpClientConnection {
    use agentid_protocol::PeerId;
    agentid_transport::http::HttpClient::builder(
        creds,
        verification(ca, own),
        agentid_transport::PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
    )
    .connect_timeout(CALL_TIMEOUT)
    .build()
    .unwrap()
    .connect(addr, "ca.example.org")
    .await
    .unwrap()
}
