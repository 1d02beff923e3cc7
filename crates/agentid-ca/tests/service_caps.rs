//! What the CA service caps and records beyond the per-route tests: a child's depth and
//! lifetime against its task and parent, a child's renewal and requests against its ancestors'
//! revocations, refusals decided by the routes in the audit chain, and tokens against their
//! creator's key.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::call;

use std::sync::Arc;
use std::time::Duration;

use agentid_api::CertificateResponse;
use agentid_ca::{CertificateAuthority, KeySource, OpenTaskRequest, TaskRequester};
use agentid_protocol::{Algorithm, BundleSet, PeerId, Scope, SpiffeId, TaskKey, VerifierConfig};
use agentid_transport::http::{HttpClient, HttpClientConnection};
use agentid_transport::{Credential, MemoryCredentials, PeerPolicy, PeerVerification};

const T: Duration = Duration::from_secs(20);

/// The refusal's code, after checking the body is `{code, message, hint}`.
fn code_of(body: &str) -> String {
    let e: agentid_api::ApiError = serde_json::from_str(body).unwrap();
    e.code.as_str().to_owned()
}
const EXTRA: &str = "\n[services.agentid-ca]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n";

fn b64(d: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d)
}
fn unb64(s: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s).unwrap()
}

async fn connect_with(
    ca: &CertificateAuthority,
    addr: std::net::SocketAddr,
    key: TaskKey,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    id: &str,
) -> HttpClientConnection {
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    let cfg = VerifierConfig::new(SpiffeId::parse(id).unwrap(), bundles)
        .danger_accept_missing_or_stale_revocations();
    let v = PeerVerification::new(cfg).unwrap();
    let creds = Arc::new(MemoryCredentials::new(Credential::new(chain, key).unwrap()));
    HttpClient::builder(
        creds,
        v,
        PeerPolicy::exact(PeerId::parse(common::CA_ID).unwrap()),
    )
    .connect_timeout(T)
    .build()
    .unwrap()
    .connect(addr, "ca.example.org")
    .await
    .unwrap()
}

/// A planner task opened by the operator with the given certificate TTL and grant max_depth.
fn planner_task(
    ca: &CertificateAuthority,
    ttl: Option<Duration>,
    max_depth: Option<u8>,
) -> (
    TaskKey,
    Vec<rustls_pki_types::CertificateDer<'static>>,
    String,
    u64,
) {
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let mut req = OpenTaskRequest::new(
        "planner",
        KeySource::Spki(key.public_key().to_spki_der()),
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    req.ttl = ttl;
    req.task_ttl = Some(Duration::from_secs(3600));
    req.max_depth = max_depth;
    let c = ca.open_task(&req, common::now()).unwrap();
    let chain = common::chain_of(&c.certificate.leaf.der, &c.certificate.intermediate_der);
    (
        key,
        chain,
        c.identity.as_str().to_owned(),
        c.certificate.leaf.not_after,
    )
}

/// spec/CA-API.md 3.8: a child above the task's `max_depth` is refused (`cap_reached`): a
/// sealed task (max_depth 0) has no child, and nothing is issued.
#[tokio::test]
async fn a_sealed_tasks_holder_gets_no_child() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id, _) = planner_task(&ca, None, Some(0));
    let mut c = connect_with(&ca, addr, key, chain, &id).await;
    let before = ca.issuances().unwrap().len();
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    let body = format!(r#"{{"agent":"summarizer","csr":"{csr}"}}"#);
    let (s, b) = call(&mut c, "POST", "/v1/children", &body).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "cap_reached"), "{b}");
    assert_eq!(ca.issuances().unwrap().len(), before);
}

/// spec/CA-API.md 3.8: the child never outlives the parent's certificate. The parent's
/// certificate lives 60 s; the child asks for 600 s (within its rule and the task).
#[tokio::test]
async fn a_child_never_outlives_its_parents_certificate() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id, parent_not_after) =
        planner_task(&ca, Some(Duration::from_secs(60)), Some(1));
    let mut c = connect_with(&ca, addr, key, chain, &id).await;
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    // Asked for explicitly: refused, nothing issued.
    let before = ca.issuances().unwrap().len();
    let body = format!(r#"{{"agent":"summarizer","csr":"{csr}","ttl_secs":600}}"#);
    let (s, b) = call(&mut c, "POST", "/v1/children", &body).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "cap_reached"), "{b}");
    assert_eq!(ca.issuances().unwrap().len(), before);
    // The default TTL (5 minutes) is cut to the parent's certificate.
    let body = format!(r#"{{"agent":"summarizer","csr":"{csr}"}}"#);
    let (s, b) = call(&mut c, "POST", "/v1/children", &body).await;
    assert_eq!(s, 200, "{b}");
    let r: CertificateResponse = serde_json::from_str(&b).unwrap();
    assert_eq!(r.not_after, parent_not_after);
}

/// A `summarizer` child of `parent_id` (whose connection is `parent`), issued over
/// `POST /v1/children`, and the child's own connection to the CA.
async fn child_connection(
    ca: &CertificateAuthority,
    addr: std::net::SocketAddr,
    parent: &mut HttpClientConnection,
    parent_id: &str,
) -> HttpClientConnection {
    agent_child_connection(ca, addr, parent, parent_id, "summarizer")
        .await
        .0
}

/// A child of agent `agent` of `parent_id` (whose connection is `parent`), issued over
/// `POST /v1/children`: the child's own connection to the CA and its identity.
async fn agent_child_connection(
    ca: &CertificateAuthority,
    addr: std::net::SocketAddr,
    parent: &mut HttpClientConnection,
    parent_id: &str,
    agent: &str,
) -> (HttpClientConnection, String) {
    let child_key = TaskKey::generate(Algorithm::Es256).unwrap();
    let task = parent_id.rsplit('/').next().unwrap();
    let child_id = format!("spiffe://example.org/agent/{agent}/task/{task}");
    let csr = b64(&child_key.csr(&SpiffeId::parse(&child_id).unwrap()).unwrap());
    let body = format!(r#"{{"agent":"{agent}","csr":"{csr}"}}"#);
    let (s, b) = call(parent, "POST", "/v1/children", &body).await;
    assert_eq!(s, 200, "{b}");
    let r: CertificateResponse = serde_json::from_str(&b).unwrap();
    let child_chain = common::chain_of(&unb64(&r.certs[0]), &unb64(&r.certs[1]));
    let conn = connect_with(ca, addr, child_key, child_chain, &child_id).await;
    (conn, child_id)
}

/// spec/CA-API.md 3.9: a child is not renewed while its parent's key or agent is revoked, as
/// a new child of that parent would not be issued.
#[tokio::test]
async fn a_child_is_not_renewed_once_its_parent_is_revoked() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id, _) = planner_task(&ca, None, Some(1));
    let parent_serial = common::serial_of(&ca, &id);
    let mut c = connect_with(&ca, addr, key, chain, &id).await;
    let mut cc = child_connection(&ca, addr, &mut c, &id).await;

    // The parent's key is revoked (operator revokes its serial), and its agent too.
    common::revoke_serial(&ca, &parent_serial);
    ca.revoke(
        &agentid_ca::RevokeTarget::Agent("planner".into()),
        Some("test"),
        "operator",
        common::now(),
    )
    .unwrap();

    let before = ca.issuances().unwrap().len();
    let (s, b) = call(&mut cc, "POST", "/v1/renew", "{}").await;
    assert_eq!((s, code_of(&b).as_str()), (403, "revoked"), "{b}");
    assert_eq!(ca.issuances().unwrap().len(), before);
}

/// The same with only the parent's key revoked (its agent stays live).
#[tokio::test]
async fn a_child_is_not_renewed_once_its_parents_key_is_revoked() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id, _) = planner_task(&ca, None, Some(1));
    let mut c = connect_with(&ca, addr, key, chain, &id).await;
    let mut cc = child_connection(&ca, addr, &mut c, &id).await;
    // Before: the child renews.
    let (s, b) = call(&mut cc, "POST", "/v1/renew", "{}").await;
    assert_eq!(s, 200, "{b}");
    common::revoke_serial(&ca, &common::serial_of(&ca, &id));
    let (s, b) = call(&mut cc, "POST", "/v1/renew", "{}").await;
    assert_eq!((s, code_of(&b).as_str()), (403, "revoked"), "{b}");
}

/// A revoked key ends what its descendants can do at the CA, at every depth: once the root
/// holder's key is revoked, its child can renew nothing and open no grandchild, and its
/// grandchild can renew nothing and is refused on every route (403 `revoked`), with nothing
/// issued. (At verifiers their chains already fail: each carries the revoked key.)
#[tokio::test]
async fn a_revoked_key_ends_its_descendants_requests_at_every_depth() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id, _) = planner_task(&ca, None, Some(2));
    let mut root = connect_with(&ca, addr, key, chain, &id).await;
    let (mut child, child_id) =
        agent_child_connection(&ca, addr, &mut root, &id, "summarizer").await;
    let (mut grandchild, _) =
        agent_child_connection(&ca, addr, &mut child, &child_id, "reviewer").await;
    // Before: the grandchild renews.
    let (s, b) = call(&mut grandchild, "POST", "/v1/renew", "{}").await;
    assert_eq!(s, 200, "{b}");

    common::revoke_serial(&ca, &common::serial_of(&ca, &id));
    let before = ca.issuances().unwrap().len();
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    let gc_child = format!(r#"{{"agent":"summarizer","csr":"{csr}"}}"#);
    let child_child = format!(r#"{{"agent":"reviewer","csr":"{csr}"}}"#);
    let requests = [
        (true, "/v1/renew", "{}"),
        (false, "/v1/renew", "{}"),
        (true, "/v1/children", gc_child.as_str()),
        (false, "/v1/children", child_child.as_str()),
        (true, "/v1/revoke", r#"{"task":"any"}"#),
    ];
    for (by_grandchild, path, body) in requests {
        let conn = if by_grandchild {
            &mut grandchild
        } else {
            &mut child
        };
        let (s, b) = call(conn, "POST", path, body).await;
        assert_eq!((s, code_of(&b).as_str()), (403, "revoked"), "{path}: {b}");
    }
    assert_eq!(ca.issuances().unwrap().len(), before, "nothing issued");
}

/// spec/CA-API.md 4: every refusal of an authenticated caller is an audit record, including
/// those the routes decide before any CA operation (`not_permitted` here).
#[tokio::test]
async fn refusals_decided_by_the_routes_are_audited() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id, _) = planner_task(&ca, None, Some(1));
    let (_, _, other) = common::operator_task(&ca, "worker");
    let mut c = connect_with(&ca, addr, key, chain, &id).await;
    let before = common::audit_records(&ca).len();
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/renew",
        &format!(r#"{{"identity":"{other}"}}"#),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = call(&mut c, "POST", "/v1/revoke", r#"{"task":"someone-elses"}"#).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/tokens",
        r#"{"agent":"planner","scope":["tickets:read"]}"#,
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let records = common::audit_records(&ca);
    assert_eq!(records.len(), before + 3, "one record per refusal");
    let subjects: Vec<(&str, &str, &str)> = records[before..]
        .iter()
        .map(|r| {
            assert_eq!(r["kind"], "request.refused", "{r}");
            assert_eq!(r["actor"], id.as_str(), "{r}");
            assert_eq!(r["outcome"], "denied", "{r}");
            (
                r["subject"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        [
            ("POST /v1/renew", "not_permitted", "request.refused"),
            ("POST /v1/revoke", "not_permitted", "request.refused"),
            ("POST /v1/tokens", "not_permitted", "request.refused"),
        ]
    );
    // A refusal the operation records itself is recorded once, as that operation's.
    let before = common::audit_records(&ca).len();
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    let body = format!(r#"{{"agent":"summarizer","csr":"{csr}","ttl_secs":36000}}"#);
    let (s, b) = call(&mut c, "POST", "/v1/children", &body).await;
    assert_eq!(s / 100, 4, "{b}");
    let records = common::audit_records(&ca);
    assert_eq!(records.len(), before + 1, "{:?}", &records[before..]);
    assert_eq!(records[before]["kind"], "issue.child");
    assert_eq!(records[before]["outcome"], "denied");
}

/// spec/CA-API.md 3.6: a token a service made is refused at redemption (`403 revoked`) once
/// the key the service made it with is revoked.
#[tokio::test]
async fn a_token_dies_with_the_key_of_the_service_that_made_it() {
    let extra = format!(
        "{EXTRA}\n[agents.planner.permissions]\n\"svc:platform\" = [\"create_token\"]\n\n[services.platform]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n"
    );
    let (dir, addr, _) = common::serve_ca(&extra, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (creds, pid) = common::service_credentials(&ca, "platform");
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    let v = PeerVerification::new(
        VerifierConfig::new(SpiffeId::parse(&pid).unwrap(), bundles)
            .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap();
    let mut svc = HttpClient::builder(
        creds,
        v,
        PeerPolicy::exact(PeerId::parse(common::CA_ID).unwrap()),
    )
    .connect_timeout(T)
    .build()
    .unwrap()
    .connect(addr, "ca.example.org")
    .await
    .unwrap();
    let (s, b) = call(
        &mut svc,
        "POST",
        "/v1/tokens",
        r#"{"agent":"planner","scope":["tickets:read"],"expires_in_secs":604800}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let t: agentid_api::TokenResponse = serde_json::from_str(&b).unwrap();

    // The operator revokes the (compromised) service; it can no longer call the CA...
    common::revoke_serial(&ca, &common::serial_of(&ca, &pid));
    let (s, b) = call(
        &mut svc,
        "POST",
        "/v1/tokens",
        r#"{"agent":"planner","scope":["tickets:read"]}"#,
    )
    .await;
    assert_eq!(s, 403, "{b}");

    // ...and the token it made before opens nothing either (redeemed here over another caller's
    // mTLS connection; the enrollment listener runs the same redemption).
    let (key, chain, id, _) = planner_task(&ca, None, Some(1));
    let mut c = connect_with(&ca, addr, key, chain, &id).await;
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    let before = ca.issuances().unwrap().len();
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/enroll",
        &format!(r#"{{"token":"{}","csr":"{csr}"}}"#, t.token),
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (403, "revoked"), "{b}");
    assert_eq!(ca.issuances().unwrap().len(), before);
}
