//! The CA service (`spec/CA-API.md`) on 127.0.0.1 with real mTLS: health, bundle, renewal,
//! revocation and the revocation feed's long-poll, and the refusals' codes.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::call_with_headers as call;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_api::{CertificateResponse, RevocationsResponse};
use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{CertificateAuthority, KeySource, KeyType, OpenTaskRequest, TaskRequester};
use agentid_protocol::{
    Algorithm, BundleSet, PeerId, Scope, SpiffeId, TaskKey, TrustDomain, VerifierConfig,
};
use agentid_transport::http::{HttpClient, HttpClientConnection};
use agentid_transport::{Credential, MemoryCredentials, PeerPolicy, PeerVerification};
use rustls_pki_types::CertificateDer;

const T: Duration = Duration::from_secs(20);
const CA_ID: &str = "spiffe://example.org/svc/agentid-ca";

struct World {
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

async fn start() -> World {
    start_with(ServiceOptions::default()).await
}

async fn start_with(options: ServiceOptions) -> World {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str("\n[services.agentid-ca]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n");
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let service = CaService::new(ca, options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { service.serve(listener).await });
    World { dir, addr }
}

impl World {
    /// A second handle on the same CA directory (reads the store the service writes).
    fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::open(self.dir.path()).unwrap()
    }

    /// Opens a task for `agent` as the operator; returns its key and certificate chain.
    fn task(&self, agent: &str) -> (TaskKey, Vec<CertificateDer<'static>>, String) {
        self.task_for(agent, None, None)
    }

    /// As [`World::task`], with the grant's lifetime.
    fn task_for(
        &self,
        agent: &str,
        task_ttl: Option<Duration>,
        max_depth: Option<u8>,
    ) -> (TaskKey, Vec<CertificateDer<'static>>, String) {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let mut req = OpenTaskRequest::new(
            agent,
            KeySource::Spki(key.public_key().to_spki_der()),
            TaskRequester::Operator,
            Scope::parse("tickets:read").unwrap(),
        );
        req.task_ttl = task_ttl;
        req.max_depth = max_depth;
        let c = self.ca().open_task(&req, common::now()).unwrap();
        let chain = vec![
            CertificateDer::from(c.certificate.leaf.der.clone()),
            CertificateDer::from(c.certificate.intermediate_der.clone()),
        ];
        (key, chain, c.identity.as_str().to_owned())
    }

    async fn connect(&self, agent: &str) -> (HttpClientConnection, String, String) {
        self.connect_for(agent, None, None).await
    }

    async fn connect_for(
        &self,
        agent: &str,
        task_ttl: Option<Duration>,
        max_depth: Option<u8>,
    ) -> (HttpClientConnection, String, String) {
        let (key, chain, id) = self.task_for(agent, task_ttl, max_depth);
        let serial = common::serial_of(&self.ca(), &id);
        let conn = self.connect_with(key, chain, &id).await;
        (conn, id, serial)
    }

    /// A connection to the service as `id`, with its key and certificate chain.
    async fn connect_with(
        &self,
        key: TaskKey,
        chain: Vec<CertificateDer<'static>>,
        id: &str,
    ) -> HttpClientConnection {
        let mut bundles = BundleSet::new();
        bundles.insert(self.ca().trust_bundle().unwrap()).unwrap();
        let cfg = VerifierConfig::new(SpiffeId::parse(id).unwrap(), bundles)
            .danger_accept_missing_or_stale_revocations();
        let v = PeerVerification::new(cfg).unwrap();
        let creds = Arc::new(MemoryCredentials::new(Credential::new(chain, key).unwrap()));
        let client =
            HttpClient::builder(creds, v, PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()))
                .connect_timeout(T)
                .build()
                .unwrap();
        client.connect(self.addr, "ca.example.org").await.unwrap()
    }
}

/// The refusal's code, after checking the body is exactly `{code, message, hint}`.
fn code_of(body: &str) -> String {
    let e: agentid_api::ApiError = serde_json::from_str(body).unwrap();
    assert!(!e.message.is_empty());
    e.code.as_str().to_owned()
}

fn list_payload(list: &str) -> serde_json::Value {
    let p = list.split('.').nth(1).unwrap();
    let b = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).unwrap();
    serde_json::from_slice(&b).unwrap()
}

#[tokio::test]
async fn health_bundle_and_refusals_of_malformed_requests() {
    let w = start().await;
    let (mut c, _, _) = w.connect("planner").await;

    let (s, _, b) = call(&mut c, "GET", "/healthz", "").await;
    assert_eq!((s, b.as_str()), (200, r#"{"status":"ok"}"#));

    let (s, _, b) = call(&mut c, "GET", "/v1/bundle", "").await;
    assert_eq!(s, 200);
    let bundle = agentid_protocol::TrustBundle::parse(
        &TrustDomain::parse("example.org").unwrap(),
        b.as_bytes(),
    )
    .unwrap();
    assert!(!bundle.x509_authorities().is_empty());
    assert!(bundle.grant_keys().is_empty() && bundle.revocation_keys().is_empty());

    let (s, _, b) = call(&mut c, "GET", "/v1/nothing", "").await;
    assert_eq!((s, code_of(&b).as_str()), (404, "not_found"));
    let (s, _, b) = call(&mut c, "POST", "/v1/renew", "{not json").await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"));
    let (s, _, b) = call(&mut c, "POST", "/v1/renew", r#"{"key":"x"}"#).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"));
    let big = format!(
        r#"{{"identity":"{}"}}"#,
        "a".repeat(agentid_api::MAX_BODY_BYTES)
    );
    let (s, _, b) = call(&mut c, "POST", "/v1/renew", &big).await;
    assert_eq!((s, code_of(&b).as_str()), (413, "body_too_large"));
    let (s, _, b) = call(&mut c, "GET", "/v1/revocations?after=0&wait=31", "").await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"));
    let (s, _, b) = call(&mut c, "GET", "/v1/revocations?after=x", "").await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"));
}

#[tokio::test]
async fn renewal_keeps_the_key_and_the_identity() {
    let w = start().await;
    let (mut c, id, old_serial) = w.connect("planner").await;
    let (s, _, b) = call(&mut c, "POST", "/v1/renew", "{}").await;
    assert_eq!(s, 200, "{b}");
    let r: CertificateResponse = serde_json::from_str(&b).unwrap();
    assert_eq!(r.identity, id);
    assert_ne!(r.serial, old_serial);
    assert_eq!(r.certs.len(), 2);
    let ca = w.ca();
    let old = ca.issuance(&old_serial).unwrap().unwrap();
    let new = ca.issuance(&r.serial).unwrap().unwrap();
    assert_eq!(new.identity, id);
    assert_eq!(new.jkt, old.jkt, "renewal certifies the same key");
    // Naming itself is allowed too.
    let (s, _, b) = call(
        &mut c,
        "POST",
        "/v1/renew",
        &format!(r#"{{"identity":"{id}"}}"#),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn renewal_naming_another_identity_is_refused_and_issues_nothing() {
    let w = start().await;
    let (mut c, _, _) = w.connect("planner").await;
    let (_, _, other) = w.task("worker");
    let before = w.ca().issuances().unwrap().len();
    let (s, _, b) = call(
        &mut c,
        "POST",
        "/v1/renew",
        &format!(r#"{{"identity":"{other}"}}"#),
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (403, "not_permitted"));
    assert_eq!(w.ca().issuances().unwrap().len(), before);
}

#[tokio::test]
async fn revoking_the_own_task_publishes_a_list_that_wakes_a_long_poll() {
    let w = start().await;
    let (mut c, id, _) = w.connect("planner").await;
    let (mut watcher, _, _) = w.connect("worker").await;
    let task = id.rsplit('/').next().unwrap().to_owned();

    let (s, h, b) = call(&mut watcher, "GET", "/v1/revocations", "").await;
    assert_eq!(s, 200);
    let first: RevocationsResponse = serde_json::from_str(&b).unwrap();
    assert_eq!(h["etag"], format!("\"{}\"", first.seq).as_str());
    // Nothing newer: 304 at once without wait, and with If-None-Match.
    let (s, _, _) = call(
        &mut watcher,
        "GET",
        &format!("/v1/revocations?after={}", first.seq),
        "",
    )
    .await;
    assert_eq!(s, 304);

    let path = format!("/v1/revocations?after={}&wait=25", first.seq);
    let poll = tokio::spawn(async move { call(&mut watcher, "GET", &path, "").await });

    // Another holder's task is not the caller's to revoke.
    let (_, _, other) = w.task("worker");
    let other_task = other.rsplit('/').next().unwrap().to_owned();
    let (s, _, b) = call(
        &mut c,
        "POST",
        "/v1/revoke",
        &format!(r#"{{"task":"{other_task}"}}"#),
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (403, "not_permitted"));

    let (s, _, b) = call(
        &mut c,
        "POST",
        "/v1/revoke",
        &format!(r#"{{"task":"{task}","reason":"done"}}"#),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    let (s, h, b) = tokio::time::timeout(T, poll).await.unwrap().unwrap();
    assert_eq!(s, 200, "{b}");
    let next: RevocationsResponse = serde_json::from_str(&b).unwrap();
    assert!(next.seq > first.seq);
    assert_eq!(h["etag"], format!("\"{}\"", next.seq).as_str());
    let payload = list_payload(&next.list);
    assert!(payload.to_string().contains(&task), "{payload}");

    // The revoked holder's connection is re-checked per request: no renewal.
    let before = w.ca().issuances().unwrap().len();
    let (s, _, b) = call(&mut c, "POST", "/v1/renew", "{}").await;
    assert_eq!((s, code_of(&b).as_str()), (403, "revoked"));
    assert_eq!(w.ca().issuances().unwrap().len(), before);
}

/// `GET /v1/revocations` with one `If-None-Match` value: the status.
async fn poll_if_none_match(c: &mut HttpClientConnection, value: &str) -> u16 {
    let req = http::Request::get("/v1/revocations")
        .header("if-none-match", value)
        .body(bytes::Bytes::new())
        .unwrap();
    let resp = tokio::time::timeout(T, c.send(req)).await.unwrap().unwrap();
    resp.status().as_u16()
}

/// CA-API.md 3.4 and RFC 9110 13.1.2: `If-None-Match` may list several entity tags, weak or
/// strong, as an HTTP cache sends them; the highest `seq` among them counts, and `*` matches
/// any list. A value that is not a list of quoted `seq`s is `400`.
#[tokio::test]
async fn if_none_match_takes_lists_weak_tags_and_star_as_http_caches_send_them() {
    let w = start().await;
    let (mut c, _, _) = w.connect("worker").await;
    let (s, _, b) = call(&mut c, "GET", "/v1/revocations", "").await;
    assert_eq!(s, 200, "{b}");
    let seq = serde_json::from_str::<RevocationsResponse>(&b).unwrap().seq;
    let older = seq.saturating_sub(1);
    for (value, want) in [
        (format!("\"{seq}\""), 304),
        (format!("W/\"{seq}\""), 304),
        (format!("\"{older}\", W/\"{seq}\""), 304),
        ("*".to_owned(), 304),
        (format!("\"{older}\""), if older < seq { 200 } else { 304 }),
        (format!("\"{seq}"), 400),
        ("\"x\"".to_owned(), 400),
        ("\"+1\"".to_owned(), 400),
        (format!("\"{seq}\",,"), 400),
    ] {
        assert_eq!(poll_if_none_match(&mut c, &value).await, want, "{value}");
    }
}

fn b64(d: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d)
}

fn bound_token(w: &World, task: &str) -> String {
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        max_depth: Some(1),
        ..Default::default()
    };
    w.ca()
        .create_bound_token(
            "planner",
            Some(agentid_protocol::TaskId::parse(task).unwrap()),
            &binding,
            Duration::from_secs(600),
            common::now(),
        )
        .unwrap()
        .token
}

#[tokio::test]
async fn enrollment_with_a_token_issues_once_and_a_second_use_is_refused() {
    let w = start().await;
    let (mut c, _, _) = w.connect("worker").await;
    let token = bound_token(&w, "enrolled-1");
    let key = common::p256_keypair();
    let csr = b64(&common::csr_with(&key, &[], |_| {}));

    // A malformed CSR is refused and leaves the token redeemable.
    let body = format!(r#"{{"token":"{token}","csr":"{}"}}"#, b64(b"not a csr"));
    let (s, _, b) = call(&mut c, "POST", "/v1/enroll", &body).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_csr"));
    let (s, _, b) = call(&mut c, "POST", "/v1/enroll", r#"{"token":"x","csr":"%%"}"#).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_csr"));
    let (s, h, b) = call(
        &mut c,
        "POST",
        "/v1/enroll",
        &format!(r#"{{"token":"nope","csr":"{csr}"}}"#),
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (401, "token_invalid"));
    // Every 401 names its scheme (RFC 9110 15.5.2; CA-API 1.3), as the binding's do.
    assert_eq!(
        h.get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some(r#"Agentid error="token_invalid""#)
    );

    let body = format!(r#"{{"token":"{token}","csr":"{csr}"}}"#);
    let (s, _, b) = call(&mut c, "POST", "/v1/enroll", &body).await;
    assert_eq!(s, 200, "{b}");
    let r: CertificateResponse = serde_json::from_str(&b).unwrap();
    assert_eq!(
        r.identity,
        "spiffe://example.org/agent/planner/task/enrolled-1"
    );
    let grant = r.grant.expect("a task's root holder gets its grant");
    assert_eq!(grant.split('.').count(), 3);
    let rec = w.ca().issuance(&r.serial).unwrap().unwrap();
    assert_eq!(rec.requester, "bootstrap token");

    // Second use: refused with its code, nothing more issued.
    let before = w.ca().issuances().unwrap().len();
    let key2 = common::p256_keypair();
    let csr2 = b64(&common::csr_with(&key2, &[], |_| {}));
    let (s, _, b) = call(
        &mut c,
        "POST",
        "/v1/enroll",
        &format!(r#"{{"token":"{token}","csr":"{csr2}"}}"#),
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (409, "token_used"));
    let (s, _, b) = call(&mut c, "POST", "/v1/enroll", &body).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "token_used"));
    assert_eq!(w.ca().issuances().unwrap().len(), before);
}

#[tokio::test]
async fn an_expired_token_is_refused_and_issues_nothing() {
    let w = start().await;
    let (mut c, _, _) = w.connect("worker").await;
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    let past = common::now() - Duration::from_secs(3600);
    let token = w
        .ca()
        .create_bound_token("planner", None, &binding, Duration::from_secs(60), past)
        .unwrap()
        .token;
    let before = w.ca().issuances().unwrap().len();
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    let (s, _, b) = call(
        &mut c,
        "POST",
        "/v1/enroll",
        &format!(r#"{{"token":"{token}","csr":"{csr}"}}"#),
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (401, "token_expired"));
    assert_eq!(w.ca().issuances().unwrap().len(), before);
}

#[tokio::test]
async fn a_parent_gets_a_child_capped_by_its_task() {
    let w = start().await;
    // The task (the parent's grant) ends in 2 minutes: a child may not outlive it.
    let (mut c, parent, parent_serial) = w
        .connect_for("planner", Some(Duration::from_secs(120)), Some(1))
        .await;
    let task = parent.rsplit('/').next().unwrap().to_owned();
    let parent_rec = w.ca().issuance(&parent_serial).unwrap().unwrap();
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));

    // Longer than the parent's task: refused, nothing issued.
    let before = w.ca().issuances().unwrap().len();
    let body = format!(r#"{{"agent":"summarizer","csr":"{csr}","ttl_secs":600}}"#);
    let (s, _, b) = call(&mut c, "POST", "/v1/children", &body).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "cap_reached"), "{b}");
    assert_eq!(w.ca().issuances().unwrap().len(), before);

    // An agent the parent's rule does not cover: refused by policy.
    let body = format!(r#"{{"agent":"worker","csr":"{csr}"}}"#);
    let (s, _, b) = call(&mut c, "POST", "/v1/children", &body).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");

    let body = format!(r#"{{"agent":"summarizer","csr":"{csr}"}}"#);
    let (s, _, b) = call(&mut c, "POST", "/v1/children", &body).await;
    assert_eq!(s, 200, "{b}");
    let r: CertificateResponse = serde_json::from_str(&b).unwrap();
    assert_eq!(
        r.identity,
        format!("spiffe://example.org/agent/summarizer/task/{task}")
    );
    assert!(r.grant.is_none(), "a child has no grant");
    assert!(r.not_after <= parent_rec.not_after);
    let issued = w.ca().issuances().unwrap().len(); // the child is recorded
    assert_eq!(issued, before + 1);
    assert_eq!(
        w.ca().issuance(&r.serial).unwrap().unwrap().requester,
        parent
    );
}

#[tokio::test]
async fn a_worker_is_not_a_parent_of_summarizers() {
    let w = start().await;
    let (mut c, _, _) = w.connect("worker").await;
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    let body = format!(r#"{{"agent":"summarizer","csr":"{csr}"}}"#);
    let (s, _, b) = call(&mut c, "POST", "/v1/children", &body).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");
}

#[tokio::test]
async fn the_service_certificate_is_renewed_before_it_expires() {
    let w = start_with(ServiceOptions {
        service_ttl: Some(Duration::from_secs(8)),
        ..ServiceOptions::default()
    })
    .await;
    let first = w.connect("planner").await.0;
    let first_serial = first.peer().info.serial.clone();
    // Past the first certificate's notAfter, a new connection still completes its handshake
    // (the client verifies the server's validity) and sees a renewed certificate.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (mut c, _, _) = w.connect("planner").await;
    assert_ne!(c.peer().info.serial, first_serial);
    assert!(c.peer().info.not_after > first.peer().info.not_after);
    let (s, _, _) = call(&mut c, "GET", "/healthz", "").await;
    assert_eq!(s, 200);
    let own: Vec<_> = w
        .ca()
        .issuances()
        .unwrap()
        .into_iter()
        .filter(|r| r.identity == CA_ID)
        .collect();
    assert!(own.len() >= 2, "{}", own.len());
    // Each with a new key: however long the process runs, its key stays within the
    // service's max_key_age.
    let keys: std::collections::BTreeSet<_> = own.iter().map(|r| r.jkt.as_str()).collect();
    assert_eq!(keys.len(), own.len(), "the CA's own key was issued again");
}

/// A caller revoked after its handshake is refused `403 revoked` on every route of its
/// connection, before anything else the request could be refused for (a body that does not
/// parse, a route it holds no permission for), and nothing is issued.
#[tokio::test]
async fn a_revoked_caller_is_refused_before_its_body_is_judged_and_nothing_is_issued() {
    let w = start().await;
    let (mut c, _, serial) = w.connect("planner").await;
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    let child = format!(r#"{{"agent":"summarizer","csr":"{csr}"}}"#);
    // Before the revocation the same connection renews.
    let (s, _, b) = call(&mut c, "POST", "/v1/renew", "{}").await;
    assert_eq!(s, 200, "{b}");
    common::revoke_serial(&w.ca(), &serial);
    let before = w.ca().issuances().unwrap().len();
    for (method, path, body) in [
        ("POST", "/v1/renew", "{}"),
        ("POST", "/v1/renew", "not json"),
        ("POST", "/v1/children", child.as_str()),
        ("POST", "/v1/children", "{"),
        // A task holder may not use these at all; revoked comes first.
        (
            "POST",
            "/v1/tasks",
            r#"{"agent":"planner","scope":["tickets:read"],"csr":"AA"}"#,
        ),
        ("POST", "/v1/tasks", "[]"),
        (
            "POST",
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"]}"#,
        ),
        ("GET", "/v1/tasks", ""),
        ("POST", "/v1/revoke", r#"{"task":"x"}"#),
        ("GET", "/v1/revocations", ""),
        ("GET", "/v1/bundle", ""),
    ] {
        let (s, _, b) = call(&mut c, method, path, body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (403, "revoked"),
            "{method} {path} {body}: {b}"
        );
    }
    assert_eq!(w.ca().issuances().unwrap().len(), before);
}

/// A parent's child request naming an agent that is no agent name (a path, control
/// characters, 60 KB of text) is refused, and its audit record names no identity made of the
/// caller's text: a record's `subject` is an identity the CA validated, or none (CA-API 4.1).
/// Before, the whole name went into the denied record's `subject` (and the `issuance refused`
/// log line), so a parent wrote what it liked into the trail, a made-up task path included.
#[tokio::test]
async fn a_child_request_naming_no_agent_leaves_none_of_its_text_in_the_audit_record() {
    let w = start().await;
    let (mut c, parent, _) = w.connect("planner").await;
    let csr = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
    let names = [
        "worker/task/someone-elses-task".to_owned(),
        "summarizer\n{\"kind\":\"issue.child\",\"outcome\":\"ok\"}\u{1b}[2J".to_owned(),
        "n".repeat(60_000),
    ];
    for name in names {
        let before = w.ca().audit_snapshot(None).unwrap().records.len();
        let body = serde_json::json!({"agent": name, "csr": csr}).to_string();
        let (s, _, b) = call(&mut c, "POST", "/v1/children", &body).await;
        assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"), "{b}");
        let records = common::audit_records(&w.ca());
        assert_eq!(records.len(), before + 1, "one record for the refusal");
        let r = records.last().unwrap();
        assert_eq!(
            (
                r["kind"].as_str(),
                r["outcome"].as_str(),
                r["actor"].as_str()
            ),
            (Some("issue.child"), Some("denied"), Some(parent.as_str()))
        );
        assert_eq!(r["subject"], serde_json::Value::Null, "{r}");
        let text = r.to_string();
        assert!(text.len() < 4096, "{} bytes", text.len());
        assert!(!text.contains("\\u001b"), "{text}");
    }
}

/// Only the task's root holder closes the task (CA-API 2, 3.10): a child in it, which holds a
/// narrower slice of the task's authority, is refused `403 not_permitted` and the task lives on
/// (red team, CA write side: any child, a grandchild with a narrowed scope too, ended its
/// parent's task and every chain in it).
#[tokio::test]
async fn a_child_cannot_close_its_parents_task_and_the_root_holder_can() {
    let w = start().await;
    let (mut parent, parent_id, _) = w.connect_for("planner", None, Some(1)).await;
    let task = parent_id.rsplit('/').next().unwrap().to_owned();
    let child_key = TaskKey::generate(Algorithm::Es256).unwrap();
    let child_id = format!("spiffe://example.org/agent/summarizer/task/{task}");
    let csr = b64(&child_key.csr(&SpiffeId::parse(&child_id).unwrap()).unwrap());
    let (s, _, b) = call(
        &mut parent,
        "POST",
        "/v1/children",
        &format!(r#"{{"agent":"summarizer","csr":"{csr}"}}"#),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let r: CertificateResponse = serde_json::from_str(&b).unwrap();
    assert_eq!(r.identity, child_id);
    let chain: Vec<CertificateDer<'static>> = r
        .certs
        .iter()
        .map(|c| {
            CertificateDer::from(
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, c)
                    .unwrap(),
            )
        })
        .collect();
    let mut child = w.connect_with(child_key, chain, &child_id).await;
    let body = format!(r#"{{"task":"{task}"}}"#);
    let (s, _, b) = call(&mut child, "POST", "/v1/revoke", &body).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "not_permitted"), "{b}");
    assert!(b.contains("root holder"), "{b}");
    assert!(
        !w.ca()
            .revocations()
            .unwrap()
            .iter()
            .any(|e| e.value == task),
        "the task was not revoked"
    );
    // The root holder closes it.
    let (s, _, b) = call(&mut parent, "POST", "/v1/revoke", &body).await;
    assert_eq!(s, 200, "{b}");
    assert!(w
        .ca()
        .revocations()
        .unwrap()
        .iter()
        .any(|e| e.value == task));
}
