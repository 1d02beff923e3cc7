//! The CA service's routes for services and enrollment (`spec/CA-API.md` 3.5-3.12) on 127.0.0.1
//! with real TLS: `POST /v1/tasks`, `GET /v1/tasks`, `POST /v1/tokens`, the enrollment listener,
//! the per-request re-check of every caller, and the refusals with their codes.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::call;
use common::chain_of;
use common::CA_ID;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_api::{CertificateResponse, TokenFile, TokenResponse};
use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{
    CertificateAuthority, KeySource, KeyType, OpenTaskRequest, RevokeTarget, TaskRequester,
};
use agentid_protocol::{Algorithm, PeerId, Scope, SpiffeId, TaskKey};
use agentid_transport::http::{HttpClient, HttpClientConnection};
use agentid_transport::{Credential, MemoryCredentials, PeerPolicy, PeerVerification};
use bytes::Bytes;
use http_body_util::BodyExt;

const T: Duration = Duration::from_secs(20);

const EXTRA_POLICY: &str = r#"
[agents.planner.permissions]
"svc:platform" = ["open_task", "create_token", "assert_principal", "list", "revoke"]

[agents.worker.permissions]
"svc:platform" = ["list", "create_token"]

[agents.fetcher]
scopes = ["search:query"]
audiences = ["spiffe://example.org/svc/search"]
requesters = ["bootstrap"]

[agents.fetcher.permissions]
"svc:platform" = ["open_task", "create_token"]

[services.agentid-ca]
max_ttl = "1h"
requesters = ["operator"]

[services.platform]
max_ttl = "1h"
requesters = ["operator"]

[services.weak]
max_ttl = "1h"
requesters = ["operator"]
"#;

struct World {
    dir: tempfile::TempDir,
    mtls: SocketAddr,
    enroll: SocketAddr,
}

async fn start() -> World {
    let (dir, mtls, enroll) = common::serve_ca(EXTRA_POLICY, true).await;
    let enroll = enroll.expect("serve_ca(_, true) binds the enrollment listener");
    World { dir, mtls, enroll }
}

impl World {
    fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::open(self.dir.path()).unwrap()
    }

    fn verification(&self, own: &str) -> Arc<PeerVerification> {
        common::verification(&self.ca(), own)
    }

    /// A task opened by the operator for `agent`.
    fn task(&self, agent: &str) -> (Arc<MemoryCredentials>, String) {
        common::operator_credentials(&self.ca(), agent)
    }

    /// `POST /v1/tokens` with `body` (a token for `agent`), which must answer 200, and the
    /// answer's token file for the enrollment listener (no `renew_url`).
    async fn token_file(&self, c: &mut HttpClientConnection, agent: &str, body: &str) -> TokenFile {
        let (s, b) = call(c, "POST", "/v1/tokens", body).await;
        assert_eq!(s, 200, "{b}");
        let t: TokenResponse = serde_json::from_str(&b).unwrap();
        TokenFile {
            identity: format!("spiffe://example.org/agent/{agent}/task/{}", t.task),
            ca_url: format!("https://{}", self.enroll),
            token: t.token,
            root_sha256: t.root_sha256,
            agent: t.agent,
            task: t.task,
            expires: t.expires,
            renew_url: None,
            bundle_seq: None,
        }
    }

    async fn connect(
        &self,
        creds: Arc<MemoryCredentials>,
        own: &str,
    ) -> agentid_transport::Result<HttpClientConnection> {
        HttpClient::builder(
            creds,
            self.verification(own),
            PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
        )
        .connect_timeout(T)
        .build()
        .unwrap()
        .connect(self.mtls, "ca.example.org")
        .await
    }
}

fn code_of(body: &str) -> String {
    let e: agentid_api::ApiError = serde_json::from_str(body).unwrap();
    assert!(!e.message.is_empty());
    e.code.as_str().to_owned()
}

fn b64(d: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d)
}

/// A CSR for the agent's key naming exactly `identity`.
fn csr(key: &TaskKey, identity: &str) -> String {
    b64(&key.csr(&SpiffeId::parse(identity).unwrap()).unwrap())
}

#[tokio::test]
async fn a_service_opens_a_task_from_the_agents_csr_within_its_permissions() {
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let agent_key = TaskKey::generate(Algorithm::Es256).unwrap();
    let task = "t-open-1";
    let identity = format!("spiffe://example.org/agent/planner/task/{task}");
    let body = serde_json::json!({"agent": "planner", "task": task, "scope": ["tickets:read"],
                                  "csr": csr(&agent_key, &identity)});
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let r: CertificateResponse = serde_json::from_str(&b).unwrap();
    assert_eq!(r.identity, identity);
    assert!(r.grant.is_some());
    let rec = w.ca().issuance(&r.serial).unwrap().unwrap();
    assert_eq!(rec.requester, "svc:platform");

    let before = w.ca().issuances().unwrap().len();
    // A CSR with an extra SAN: 400 bad_csr, nothing issued.
    let kp = common::p256_keypair();
    let extra = common::csr_with(
        &kp,
        &[
            common::uri("spiffe://example.org/agent/planner/task/t-open-2"),
            common::uri("spiffe://example.org/agent/admin/task/x"),
        ],
        |_| {},
    );
    let body = serde_json::json!({"agent": "planner", "task": "t-open-2",
                                  "scope": ["tickets:read"], "csr": b64(&extra)});
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_csr"), "{b}");
    // An agent the service holds no `open_task` for: 403 policy_denied.
    let body = serde_json::json!({"agent": "worker", "scope": ["tickets:read"],
                                  "csr": csr(&agent_key, "spiffe://example.org/agent/worker/task/w")});
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");
    // A token-only field: 400 bad_request.
    let body = serde_json::json!({"agent": "planner", "scope": ["tickets:read"],
                                  "expires_in_secs": 5, "csr": csr(&agent_key, &identity)});
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"), "{b}");
    assert_eq!(w.ca().issuances().unwrap().len(), before);

    // A service without any permission, and a task holder: refused.
    let (weak, wid) = common::service_credentials(&w.ca(), "weak");
    let (holder, hid) = w.task("planner");
    let before = w.ca().issuances().unwrap().len();
    let mut c = w.connect(weak, &wid).await.unwrap();
    let body = serde_json::json!({"agent": "planner", "scope": ["tickets:read"],
                                  "csr": csr(&agent_key, &identity)});
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");
    let (s, b) = call(&mut c, "GET", "/v1/tasks", "").await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");
    // A method a route does not take is a route that does not exist, with the same body.
    let (s, b) = call(&mut c, "GET", "/v1/tokens", "").await;
    assert_eq!((s, code_of(&b).as_str()), (404, "not_found"), "{b}");
    let mut c = w.connect(holder, &hid).await.unwrap();
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "not_permitted"), "{b}");
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/tokens",
        r#"{"agent":"planner","scope":["tickets:read"]}"#,
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (403, "not_permitted"), "{b}");
    assert_eq!(w.ca().issuances().unwrap().len(), before);
}

#[tokio::test]
async fn the_inventory_lists_live_tasks_of_the_listed_agents_only() {
    let w = start().await;
    let (_, planner) = w.task("planner");
    let (_, worker) = w.task("worker");
    let (_, closed) = w.task("planner");
    let closed_task = closed.rsplit('/').next().unwrap();
    w.ca()
        .revoke(
            &RevokeTarget::Task(agentid_protocol::TaskId::parse(closed_task).unwrap()),
            None,
            "operator",
            common::now(),
        )
        .unwrap();
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let (s, b) = call(&mut c, "GET", "/v1/tasks", "").await;
    assert_eq!(s, 200, "{b}");
    let r: agentid_api::TasksResponse = serde_json::from_str(&b).unwrap();
    let mut holders: Vec<&str> = r.tasks.iter().map(|t| t.holder.as_str()).collect();
    holders.sort_unstable();
    let mut want = vec![planner.as_str(), worker.as_str()];
    want.sort_unstable();
    assert_eq!(holders, want);
    // The inventory seeks each listed agent's tasks by (agent, task id) (schema version 5).
    let db = rusqlite::Connection::open(w.dir.path().join("ca.db")).unwrap();
    let index: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'identities_agent_task'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1);
}

#[tokio::test]
async fn the_inventory_is_answered_in_bounded_pages_that_together_list_every_live_task() {
    // CA-API.md 3.11: one answer lists at most a page of tasks (here 2) and names the `next`
    // task id to ask `after`; the pages together are the whole inventory, each task once, and
    // no request reads or answers the whole inventory at once.
    // `other`: an agent the service may not list; `gone`: one it may, revoked.
    let policy = format!(
        "{EXTRA_POLICY}
[agents.other]
scopes = [\"tickets:read\"]
requesters = [\"operator\"]

[agents.gone]
scopes = [\"tickets:read\"]
requesters = [\"operator\"]

[agents.gone.permissions]
\"svc:platform\" = [\"list\"]
"
    );
    let (dir, mtls, _) = common::serve_ca_with(
        &policy,
        false,
        ServiceOptions {
            tasks_page: 2,
            ..ServiceOptions::default()
        },
    )
    .await;
    let w = World {
        dir,
        mtls,
        enroll: mtls,
    };
    let mut want: Vec<String> = Vec::new();
    for agent in ["planner", "worker", "planner", "worker", "planner"] {
        want.push(w.task(agent).1);
    }
    // A task of an agent the service may not list, and a revoked one: in no page.
    let _ = w.task("other");
    let (_, revoked) = w.task("planner");
    let revoked_task = revoked.rsplit('/').next().unwrap();
    w.ca()
        .revoke(
            &RevokeTarget::Task(agentid_protocol::TaskId::parse(revoked_task).unwrap()),
            None,
            "operator",
            common::now(),
        )
        .unwrap();
    // A task whose holder key is revoked (by serial), one whose grant is revoked (by `jti`),
    // and one of a revoked agent: in no page either.
    let (_, key_revoked) = w.task("planner");
    common::revoke_serial(&w.ca(), &common::serial_of(&w.ca(), &key_revoked));
    let (_, grant_revoked) = w.task("worker");
    let jti = w
        .ca()
        .issuances()
        .unwrap()
        .into_iter()
        .find(|r| r.identity == grant_revoked)
        .and_then(|r| r.grant_jti)
        .unwrap();
    let _ = w.task("gone");
    for target in [
        RevokeTarget::GrantJti(agentid_protocol::Jti::parse(&jti).unwrap()),
        RevokeTarget::Agent("gone".into()),
    ] {
        w.ca()
            .revoke(&target, None, "operator", common::now())
            .unwrap();
    }
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/v1/tasks".to_owned();
    for _ in 0..10 {
        let (s, b) = call(&mut c, "GET", &path, "").await;
        assert_eq!(s, 200, "{b}");
        let r: agentid_api::TasksResponse = serde_json::from_str(&b).unwrap();
        assert!(r.tasks.len() <= 2, "a page over its bound: {b}");
        seen.extend(r.tasks.iter().map(|t| t.holder.clone()));
        match r.next {
            Some(next) => {
                assert_eq!(r.tasks.last().map(|t| t.task.as_str()), Some(next.as_str()));
                path = format!("/v1/tasks?after={next}");
            }
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a task listed twice: {seen:?}");
    want.sort_unstable();
    assert_eq!(sorted, want);
    // `after` is a task id; anything else, or another parameter, is refused.
    for bad in [
        "/v1/tasks?after=",
        "/v1/tasks?after=a/b",
        "/v1/tasks?after=x&after=y",
        "/v1/tasks?limit=5",
    ] {
        let (s, b) = call(&mut c, "GET", bad, "").await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (400, "bad_request"),
            "{bad}: {b}"
        );
    }
}

#[tokio::test]
async fn a_service_token_enrolls_on_the_enrollment_listener_pinned_to_the_root() {
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let file = w
        .token_file(
            &mut c,
            "planner",
            r#"{"agent":"planner","scope":["tickets:read"],"max_depth":1,"expires_in_secs":60}"#,
        )
        .await;
    let identity = file.identity.clone();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let e = agentid_transport::enroll::enroll_with_token(&file, key, T)
        .await
        .unwrap();
    assert_eq!(e.credential.identity().as_str(), identity);
    assert!(e.response.grant.is_some());
    // The grant binds what the token bound.
    let rec = w.ca().issuance(&e.response.serial).unwrap().unwrap();
    assert_eq!(rec.requester, "bootstrap token");
    // The store records who created the token.
    let db = rusqlite::Connection::open(w.dir.path().join("ca.db")).unwrap();
    let creator: Option<String> = db
        .query_row("SELECT creator FROM bootstrap_tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(creator.as_deref(), Some("svc:platform"));

    // A second use: 409 token_used, through the library's error.
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let err = agentid_transport::enroll::enroll_with_token(&file, key, T)
        .await
        .unwrap_err();
    assert_eq!(
        err.api_error().map(|e| e.code),
        Some(agentid_api::ErrorCode::TokenUsed),
        "{err}"
    );
    // A wrong pin: the token is never sent.
    let mut wrong = file.clone();
    wrong.root_sha256 = "00".repeat(32);
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let err = agentid_transport::enroll::enroll_with_token(&wrong, key, T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, agentid_transport::enroll::EnrollError::RootMismatch(_)),
        "{err}"
    );
}

#[tokio::test]
async fn the_enrollment_listener_serves_only_enroll_bundle_and_health() {
    let w = start().await;
    // A plain TLS client without a certificate, trusting the CA's root.
    let v = w.verification("spiffe://example.org/agent/x/task/y");
    let config = agentid_transport::http::enrollment_client_config(
        &v,
        PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
    )
    .unwrap();
    let get = |path: &'static str| {
        let config = Arc::new(config.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(w.enroll).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("agentid.invalid").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::builder()
                .uri(path)
                .header("host", "ca")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(b.to_vec()).unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/v1/bundle").await.0, 200);
    for path in ["/v1/tasks", "/v1/revocations", "/v1/renew", "/v1/enroll"] {
        let (s, b) = get(path).await;
        assert_eq!((s, code_of(&b).as_str()), (404, "not_found"), "{path}");
    }
}

#[tokio::test]
async fn every_mtls_route_rechecks_the_caller_and_a_foreign_certificate_gets_a_tls_alert() {
    let w = start().await;
    let (holder, hid) = w.task("planner");
    let mut c = w.connect(holder, &hid).await.unwrap();
    let (s, _) = call(&mut c, "GET", "/v1/bundle", "").await;
    assert_eq!(s, 200);
    let task = hid.rsplit('/').next().unwrap();
    w.ca()
        .revoke(
            &RevokeTarget::Task(agentid_protocol::TaskId::parse(task).unwrap()),
            None,
            "operator",
            common::now(),
        )
        .unwrap();
    // Same connection, a route that issues nothing: refused at once.
    let (s, b) = call(&mut c, "GET", "/v1/bundle", "").await;
    assert_eq!((s, code_of(&b).as_str()), (403, "revoked"), "{b}");

    // A client certificate from another CA of the same trust domain name: the handshake fails
    // with an alert, and no HTTP response is ever produced.
    let other = common::make_ca_dir(KeyType::P256);
    let other_ca = CertificateAuthority::open(other.path()).unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let oc = other_ca
        .open_task(
            &OpenTaskRequest::new(
                "planner",
                KeySource::Spki(key.public_key().to_spki_der()),
                TaskRequester::Operator,
                Scope::parse("tickets:read").unwrap(),
            ),
            common::now(),
        )
        .unwrap();
    let creds = Arc::new(MemoryCredentials::new(
        Credential::new(
            chain_of(&oc.certificate.leaf.der, &oc.certificate.intermediate_der),
            key,
        )
        .unwrap(),
    ));
    let result = async {
        let mut c = w.connect(creds, oc.identity.as_str()).await?;
        let req = http::Request::builder()
            .uri("/healthz")
            .body(Bytes::new())
            .unwrap();
        c.send(req).await.map(|_| ())
    }
    .await;
    let err = result.expect_err("a foreign certificate is refused");
    let text = format!("{err:?}");
    assert!(
        text.contains("alert") || text.contains("Alert"),
        "not a TLS alert: {text}"
    );
}

#[tokio::test]
async fn the_enroller_renews_its_credential_with_the_same_key_and_signals_the_change() {
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let mut file = w
        .token_file(
            &mut c,
            "planner",
            r#"{"agent":"planner","scope":["tickets:read"],"ttl_secs":60}"#,
        )
        .await;
    // Renewals go to the mTLS listener; `ca_url` is the enrollment one.
    file.renew_url = Some(format!("https://{}", w.mtls));
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let (enroller, first, _) = agentid_transport::enroll::Enroller::from_token_file(&file, key, T)
        .await
        .unwrap();
    let source = enroller.credentials();
    let mut changes = agentid_transport::CredentialSource::subscribe(source.as_ref()).unwrap();
    let renewed = enroller.renew().await.unwrap();
    assert_eq!(renewed.identity().as_str(), file.identity);
    assert_ne!(renewed.info().serial, first.serial);
    assert_eq!(
        renewed.info().public_key,
        agentid_transport::CredentialSource::current(source.as_ref())
            .unwrap()
            .info()
            .public_key
    );
    // The grant stays attached across the renewal.
    assert!(renewed.chain().is_some());
    tokio::time::timeout(T, changes.changed())
        .await
        .unwrap()
        .unwrap();
    let rec = w.ca().issuance(&renewed.info().serial).unwrap().unwrap();
    assert_eq!(rec.kind, agentid_ca::IssuanceKind::Renewal);
}

#[tokio::test]
async fn the_enrollment_listener_limits_requests_per_source_address() {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str(EXTRA_POLICY);
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let options = ServiceOptions {
        enroll_rate_per_source: 3,
        ..ServiceOptions::default()
    };
    let service = CaService::new(ca, options).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let enroll = e.local_addr().unwrap();
    tokio::spawn(async move { service.serve_both(l, Some(e)).await });
    let file = TokenFile {
        token: "not-a-token".into(),
        ca_url: format!("https://{enroll}"),
        root_sha256: "00".repeat(32),
        identity: "spiffe://example.org/agent/planner/task/t".into(),
        agent: "planner".into(),
        task: "t".into(),
        expires: 0,
        renew_url: None,
        bundle_seq: None,
    };
    // Each attempt fetches the bundle (one request) and stops at the pin: three pass, the
    // fourth is refused 429 rate_limited within the same window.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let err = agentid_transport::enroll::enroll_with_token(&file, key, T)
            .await
            .unwrap_err();
        codes.push(match err {
            agentid_transport::enroll::EnrollError::RootMismatch(_) => "pin".to_owned(),
            other => other.to_string(),
        });
    }
    assert_eq!(codes[..3], ["pin", "pin", "pin"]);
    assert!(codes[3].contains("429"), "{codes:?}");
}

#[tokio::test]
async fn a_token_binds_a_principal_only_for_a_service_that_may_assert_it() {
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let principal = r#"{"format":"email","email":"alice@example.com"}"#;
    // `create_token` for worker, but not `assert_principal`: refused, naming the permission.
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/tokens",
        &format!(r#"{{"agent":"worker","scope":["tickets:read"],"principal":{principal}}}"#),
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");
    assert!(b.contains("assert_principal"), "{b}");

    let file = w
        .token_file(
            &mut c,
            "planner",
            &format!(r#"{{"agent":"planner","scope":["tickets:read"],"principal":{principal}}}"#),
        )
        .await;
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let e = agentid_transport::enroll::enroll_with_token(&file, key, T)
        .await
        .unwrap();
    // The grant acts for the principal the token bound; the enrollee never named it.
    let grant = e.response.grant.unwrap();
    let payload = grant.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert!(claims.to_string().contains("alice@example.com"), "{claims}");
}

#[tokio::test]
async fn malformed_service_requests_are_4xx_with_their_code_and_issue_nothing() {
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let before = w.ca().issuances().unwrap().len();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/v1/tokens", r#"{"agent":"planner"}"#, 400, "bad_request"),
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["a b"]}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"expires_in_secs":0}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"expires_in_secs":99999999}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"task":"not a task id!"}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"limits":{"calls":"x"}}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/tokens",
            r#"{"agent":"../x","scope":["tickets:read"]}"#,
            403,
            "policy_denied",
        ),
        (
            "/v1/tasks",
            r#"{"agent":"planner","scope":["tickets:read"],"csr":"***"}"#,
            400,
            "bad_csr",
        ),
        (
            "/v1/tasks",
            r#"{"agent":"planner","scope":["tickets:read"],"csr":"AAAA"}"#,
            400,
            "bad_csr",
        ),
        (
            "/v1/tasks",
            r#"{"agent":"planner","scope":["tickets:read"],"csr":"AAAA","audience":["nope"]}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/revoke",
            r#"{"task":"a","agent":"planner"}"#,
            400,
            "bad_request",
        ),
        ("/v1/revoke", r#"{}"#, 400, "bad_request"),
        (
            "/v1/revoke",
            r#"{"jti":"x","iss":"spiffe://example.org"}"#,
            400,
            "bad_request",
        ),
        // An unknown target is refused as one the service may not revoke (CA-API.md 3.10).
        (
            "/v1/revoke",
            r#"{"task":"unknown-task"}"#,
            403,
            "policy_denied",
        ),
        ("/v1/revoke", r#"{"agent":"worker"}"#, 403, "policy_denied"),
    ];
    for (path, body, status, code) in cases {
        let (s, b) = call(&mut c, "POST", path, body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (*status, *code),
            "{path} {body}: {b}"
        );
    }
    assert_eq!(w.ca().issuances().unwrap().len(), before);
    assert!(w.ca().revocations().unwrap().is_empty());
}

/// A service revoked after its handshake: its next `POST /v1/tasks` with a valid body, a token
/// request and the inventory are refused `403 revoked` on the same connection, and nothing is
/// issued or recorded.
#[tokio::test]
async fn a_service_revoked_mid_connection_opens_nothing_more() {
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let open = |task: &str| {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let identity = format!("spiffe://example.org/agent/planner/task/{task}");
        serde_json::json!({"agent": "planner", "task": task, "scope": ["tickets:read"],
                           "csr": csr(&key, &identity)})
        .to_string()
    };
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &open("t-before")).await;
    assert_eq!(s, 200, "{b}");
    common::revoke_serial(&w.ca(), &common::serial_of(&w.ca(), &pid));
    let before = w.ca().issuances().unwrap().len();
    let token = r#"{"agent":"planner","scope":["tickets:read"]}"#;
    for (method, path, body) in [
        ("POST", "/v1/tasks", open("t-after")),
        ("POST", "/v1/tasks", "{".to_owned()),
        ("POST", "/v1/tokens", token.to_owned()),
        ("GET", "/v1/tasks", String::new()),
    ] {
        let (s, b) = call(&mut c, method, path, &body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (403, "revoked"),
            "{method} {path}: {b}"
        );
    }
    assert_eq!(w.ca().issuances().unwrap().len(), before);
    assert!(w
        .ca()
        .issuances()
        .unwrap()
        .iter()
        .all(|r| !r.identity.ends_with("/t-after")));
}

#[tokio::test]
async fn a_task_a_service_opens_without_an_audience_is_held_to_the_rules_audiences() {
    // An agent rule's `audiences` bounds the grant of every task opened for the agent, through
    // `POST /v1/tasks` and through a token redeemed at `POST /v1/enroll`: a request naming no
    // audience gets the rule's list, not a grant without `aud` (`[iss]`, the whole trust
    // domain, so that every other service of the trust domain would accept the chain).
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let identity = "spiffe://example.org/agent/fetcher/task/t-aud";
    let body = serde_json::json!({"agent": "fetcher", "task": "t-aud",
                                  "scope": ["search:query"], "csr": csr(&key, identity)});
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let r: CertificateResponse = serde_json::from_str(&b).unwrap();
    let token = r#"{"agent":"fetcher","task":"t-aud-enrolled","scope":["search:query"]}"#;
    let file = w.token_file(&mut c, "fetcher", token).await;
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let (enroller, _, _) = agentid_transport::enroll::Enroller::from_token_file(&file, key, T)
        .await
        .unwrap();
    let enrolled = agentid_transport::CredentialSource::current(enroller.credentials().as_ref())
        .unwrap()
        .chain()
        .map(str::to_owned);
    for grant in [r.grant, enrolled] {
        let grant = agentid_protocol::Chain::parse_unverified(&grant.unwrap()).unwrap();
        let aud = grant.read_unverified().unwrap().audience().unwrap();
        let id = |s: &str| SpiffeId::parse(&format!("spiffe://example.org/{s}")).unwrap();
        assert!(aud.covers_id(&id("svc/search")), "{aud:?}");
        assert!(!aud.covers_id(&id("svc/payments")), "{aud:?}");
    }
}

#[tokio::test]
async fn a_token_binding_more_than_the_agents_rule_allows_is_refused_when_created() {
    // CA-API.md 3.6: the token binds every field and the policy applies to the bound values
    // when the token is made (and again when it is redeemed). A binding that no enrollment could
    // ever redeem is refused at once, with the rule that refuses it, not handed out as a secret.
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    for (field, extra) in [
        // agents.planner.max_depth = 2
        ("max_depth", r#""max_depth":9"#),
        // agents.planner.max_ttl = 10m
        ("max_ttl", r#""ttl_secs":3600"#),
        // defaults.max_task_ttl = 8h
        ("max_task_ttl", r#""task_ttl_secs":86400"#),
        // no agents.planner.audiences: the trust domain only
        (
            "audiences",
            r#""audience":["spiffe://elsewhere.org/svc/search"]"#,
        ),
    ] {
        let (s, b) = call(
            &mut c,
            "POST",
            "/v1/tokens",
            &format!(r#"{{"agent":"planner","scope":["tickets:read"],{extra}}}"#),
        )
        .await;
        assert_eq!(s, 403, "{field}: a token was made: {b}");
        assert_eq!(code_of(&b), "policy_denied", "{field}: {b}");
        assert!(b.contains(field), "{field}: {b}");
    }
    // Within the rule, the same request makes a token.
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/tokens",
        r#"{"agent":"planner","scope":["tickets:read"],"max_depth":2,"ttl_secs":600,"task_ttl_secs":28800}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_task_request_takes_one_scope_token_per_entry_as_a_token_request_does() {
    // CA-API.md 3.7: a task request has the fields of 3.6, whose `scope` is one scope token per
    // entry. An entry holding several tokens (or none) is 400 bad_request on both routes, and
    // nothing is issued.
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let before = w.ca().issuances().unwrap().len();
    for (i, scope) in [
        serde_json::json!(["tickets:read tickets:write"]),
        serde_json::json!(["tickets:read", ""]),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, b) = call(
            &mut c,
            "POST",
            "/v1/tokens",
            &serde_json::json!({"agent": "planner", "scope": scope}).to_string(),
        )
        .await;
        assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"), "{b}");
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let task = format!("t-scope-{i}");
        let identity = format!("spiffe://example.org/agent/planner/task/{task}");
        let body = serde_json::json!({"agent": "planner", "task": task, "scope": scope,
                                      "csr": csr(&key, &identity)});
        let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
        assert_eq!(s, 400, "scope {scope}: a task was opened: {b}");
        assert_eq!(code_of(&b), "bad_request", "{b}");
    }
    assert_eq!(w.ca().issuances().unwrap().len(), before);
}

#[tokio::test]
async fn a_request_body_that_is_not_a_json_object_is_refused_and_changes_nothing() {
    // CA-API.md 1.2: request bodies are JSON objects only. A JSON array holding a route's
    // fields in their declared order is not that route's body: a replica written from the spec
    // refuses it, so the reference must too (`400 bad_request`), and nothing is made, issued
    // or revoked.
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let issued = w.ca().issuances().unwrap().len();
    for body in [
        r#"["planner",null,["tickets:read"]]"#,
        r#" ["planner"]"#,
        r#""planner""#,
        "null",
    ] {
        let (s, b) = call(&mut c, "POST", "/v1/tokens", body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (400, "bad_request"),
            "{body}: {b}"
        );
    }
    let (holder, hid) = w.task("planner");
    let own = hid.rsplit('/').next().unwrap().to_owned();
    let mut c = w.connect(holder, &hid).await.unwrap();
    for (path, body) in [
        ("/v1/renew", "[]".to_owned()),
        ("/v1/revoke", format!(r#"["{own}"]"#)),
        ("/v1/children", r#"["summarizer","AAAA"]"#.to_owned()),
    ] {
        let (s, b) = call(&mut c, "POST", path, &body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (400, "bad_request"),
            "{path} {body}: {b}"
        );
    }
    // One task was opened (the holder's) and nothing else issued; nothing revoked.
    assert_eq!(w.ca().issuances().unwrap().len(), issued + 1);
    assert!(w.ca().revocations().unwrap().is_empty());
    // The same fields as an object are served.
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/revoke",
        &format!(r#"{{"task":"{own}"}}"#),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_service_revoking_another_services_certificate_is_denied_not_told_it_is_unknown() {
    // CA-API.md 3.10: a service may revoke a target of an agent for which it holds `revoke`
    // (`403 policy_denied` otherwise). A service's certificate or key is known and belongs to
    // no agent: policy_denied, as a target the store does not know is.
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let (_, wid) = common::service_credentials(&w.ca(), "weak");
    let weak = w
        .ca()
        .issuance(&common::serial_of(&w.ca(), &wid))
        .unwrap()
        .unwrap();
    let mut c = w.connect(platform, &pid).await.unwrap();
    for body in [
        format!(r#"{{"serial":"{}"}}"#, weak.serial),
        format!(r#"{{"jkt":"{}"}}"#, weak.jkt),
    ] {
        let (s, b) = call(&mut c, "POST", "/v1/revoke", &body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (403, "policy_denied"),
            "{body}: {b}"
        );
    }
    let (s, b) = call(&mut c, "POST", "/v1/revoke", r#"{"serial":"0badc0de"}"#).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");
    assert!(w.ca().revocations().unwrap().is_empty());
}

#[tokio::test]
async fn a_service_holding_revoke_for_no_agent_learns_nothing_of_the_store() {
    // CA-API.md 3.10: a service holding `revoke` for no agent is refused `403 policy_denied`
    // before the target is looked up, as `GET /v1/tasks` refuses one holding `list` for none
    // (3.11). Otherwise its `404` for an unknown target against `403` for a known one told any
    // enrolled service which serials, keys, tasks and grants the CA knows.
    let w = start().await;
    let (_, known) = w.task("planner");
    let rec = w
        .ca()
        .issuance(&common::serial_of(&w.ca(), &known))
        .unwrap()
        .unwrap();
    let (weak, wid) = common::service_credentials(&w.ca(), "weak");
    let mut c = w.connect(weak, &wid).await.unwrap();
    let unknown_jkt = TaskKey::generate(Algorithm::Es256)
        .unwrap()
        .public_key()
        .thumbprint();
    for body in [
        format!(r#"{{"serial":"{}"}}"#, rec.serial),
        r#"{"serial":"0badc0de"}"#.to_owned(),
        format!(r#"{{"jkt":"{}"}}"#, rec.jkt),
        format!(r#"{{"jkt":"{unknown_jkt}"}}"#),
        r#"{"task":"no-such-task"}"#.to_owned(),
        r#"{"jti":"no-such-grant"}"#.to_owned(),
    ] {
        let (s, b) = call(&mut c, "POST", "/v1/revoke", &body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (403, "policy_denied"),
            "{body}: {b}"
        );
    }
    assert!(w.ca().revocations().unwrap().is_empty());
}

#[tokio::test]
async fn a_service_with_revoke_for_one_agent_learns_nothing_of_other_agents_targets() {
    // CA-API.md 3.10: a service holding `revoke` for some agent (platform: planner) names a
    // target it may not revoke (another agent's task, serial, key or grant; a service's serial)
    // or one the store does not know: one refusal for both, naming no agent. Otherwise its
    // `404` for an unknown target against `403` (naming the owner agent) for a known one told
    // the service which targets exist, and whose they are.
    let w = start().await;
    let ca = w.ca();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let worker = ca
        .open_task(
            &OpenTaskRequest::new(
                "worker",
                KeySource::Spki(key.public_key().to_spki_der()),
                TaskRequester::Operator,
                Scope::parse("tickets:read").unwrap(),
            ),
            common::now(),
        )
        .unwrap();
    let (platform, pid) = common::service_credentials(&ca, "platform");
    let (_, weak_id) = common::service_credentials(&ca, "weak");
    let weak_serial = common::serial_of(&ca, &weak_id);
    let mut c = w.connect(platform, &pid).await.unwrap();
    let unknown_jkt = TaskKey::generate(Algorithm::Es256)
        .unwrap()
        .public_key()
        .thumbprint();
    let task = worker.identity.task_id().as_str().to_owned();
    for (field, known, unknown) in [
        ("task", task.clone(), "no-such-task".to_owned()),
        (
            "serial",
            worker.certificate.leaf.serial.clone(),
            "0badc0de".to_owned(),
        ),
        ("serial", weak_serial, "0badc0df".to_owned()),
        ("jkt", worker.certificate.jkt.clone(), unknown_jkt),
        ("jti", worker.grant_jti.clone(), "no-such-grant".to_owned()),
    ] {
        let answer = |v: &str| format!(r#"{{"{field}":"{v}"}}"#);
        let (sk, bk) = call(&mut c, "POST", "/v1/revoke", &answer(&known)).await;
        let (su, bu) = call(&mut c, "POST", "/v1/revoke", &answer(&unknown)).await;
        assert_eq!(
            (sk, bk.replace(&known, "V")),
            (su, bu.replace(&unknown, "V")),
            "{field}: a known target and an unknown one are refused alike"
        );
        assert_eq!((sk, code_of(&bk).as_str()), (403, "policy_denied"), "{bk}");
        assert!(!bk.contains("worker") && !bk.contains("weak"), "{bk}");
    }
    assert!(ca.revocations().unwrap().is_empty());
    // Its own agent's targets it still revokes.
    let (_, planner) = w.task("planner");
    let planner_task = planner.rsplit('/').next().unwrap().to_owned();
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/revoke",
        &format!(r#"{{"task":"{planner_task}"}}"#),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_service_learns_no_agent_names_from_a_missing_permission() {
    // CA-API.md 3.6, 3.7, 3.10: a service naming an agent it holds no permission for is refused
    // `403 policy_denied` alike whether the policy has a rule for that agent or not. Otherwise
    // "no rule for agent" against "does not hold" told any service which agents the trust
    // domain has.
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let bodies = |agent: &str| {
        [
            (
                "/v1/tokens",
                format!(r#"{{"agent":"{agent}","scope":["tickets:read"]}}"#),
            ),
            (
                "/v1/tasks",
                format!(r#"{{"agent":"{agent}","scope":["tickets:read"],"csr":"AAAA"}}"#),
            ),
            ("/v1/revoke", format!(r#"{{"agent":"{agent}"}}"#)),
        ]
    };
    for ((path, known), (_, unknown)) in bodies("summarizer").into_iter().zip(bodies("nosuchagent"))
    {
        let (sk, bk) = call(&mut c, "POST", path, &known).await;
        let (su, bu) = call(&mut c, "POST", path, &unknown).await;
        assert_eq!(
            (sk, code_of(&bk).as_str()),
            (403, "policy_denied"),
            "{path}: {bk}"
        );
        assert_eq!(
            (sk, bk.replace("summarizer", "A")),
            (su, bu.replace("nosuchagent", "A")),
            "{path}: an agent with a rule and one without are refused alike"
        );
    }
    assert!(w.ca().revocations().unwrap().is_empty());
}

#[tokio::test]
async fn a_task_holder_learns_no_agent_names_from_a_child_refusal() {
    // CA-API.md 3.8: a child of an agent whose rule does not list the parent's agent, and of
    // an agent the policy has no rule for, are refused alike. Otherwise "no rule for agent"
    // against "not listed" told any task holder which agents the trust domain has.
    let w = start().await;
    let (creds, id) = w.task("planner");
    let mut c = w.connect(creds, &id).await.unwrap();
    let body = |agent: &str| format!(r#"{{"agent":"{agent}","csr":"AAAA"}}"#);
    let (sk, bk) = call(&mut c, "POST", "/v1/children", &body("worker")).await;
    let (su, bu) = call(&mut c, "POST", "/v1/children", &body("nosuchagent")).await;
    assert_eq!((sk, code_of(&bk).as_str()), (403, "policy_denied"), "{bk}");
    assert_eq!(
        (sk, bk.replace("worker", "A")),
        (su, bu.replace("nosuchagent", "A")),
        "an agent with a rule and one without are refused alike"
    );
}

#[tokio::test]
async fn a_revoke_answer_names_the_entry_the_target_makes() {
    // CA-API.md 3.10: the answer is the list entry: the target's kind and value, except that a
    // serial is revoked as its certificate's key (`jkt`, that key's thumbprint).
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let (_, by_serial) = w.task("planner");
    let rec = w
        .ca()
        .issuance(&common::serial_of(&w.ca(), &by_serial))
        .unwrap()
        .unwrap();
    let (_, by_task) = w.task("planner");
    let task = by_task.rsplit('/').next().unwrap().to_owned();
    for (body, kind, value) in [
        (
            format!(r#"{{"serial":"{}"}}"#, rec.serial),
            "jkt",
            rec.jkt.clone(),
        ),
        (format!(r#"{{"task":"{task}"}}"#), "task", task.clone()),
        (
            r#"{"agent":"planner"}"#.to_owned(),
            "agent",
            "planner".to_owned(),
        ),
    ] {
        let (s, b) = call(&mut c, "POST", "/v1/revoke", &body).await;
        assert_eq!(s, 200, "{body}: {b}");
        let r: agentid_api::RevokeResponse = serde_json::from_str(&b).unwrap();
        assert_eq!(
            (r.kind.as_str(), r.value.as_str()),
            (kind, value.as_str()),
            "{body}"
        );
        assert!(r.exp > common::unix(common::now()), "{body}: {b}");
    }
}

#[tokio::test]
async fn a_token_refusal_on_the_mtls_listener_is_recorded_once() {
    // CA-API.md 4.1: `request.refused` records a 4xx answer to an authenticated caller that no
    // operation recorded. A stored token refused (used, say) is recorded as the issuance it
    // asked for, `denied`; on `--listen` (where `POST /v1/enroll` is served too, to an
    // authenticated caller) it is not recorded a second time. An unknown token, which no
    // operation records, is one `request.refused`.
    let w = start().await;
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    let token = w
        .ca()
        .create_bound_token(
            "planner",
            Some(agentid_protocol::TaskId::parse("t-audit-once").unwrap()),
            &binding,
            Duration::from_secs(600),
            common::now(),
        )
        .unwrap()
        .token;
    let (holder, hid) = w.task("worker");
    let mut c = w.connect(holder, &hid).await.unwrap();
    let body = |token: &str| {
        let csr = common::csr_with(&common::p256_keypair(), &[], |_| {});
        format!(r#"{{"token":"{token}","csr":"{}"}}"#, b64(&csr))
    };
    let (s, b) = call(&mut c, "POST", "/v1/enroll", &body(&token)).await;
    assert_eq!(s, 200, "{b}");
    for (token, code, kinds) in [
        (token.as_str(), "token_used", ["issue.task"]),
        ("no-such-token", "token_invalid", ["request.refused"]),
    ] {
        let before = common::audit_records(&w.ca()).len();
        let (s, b) = call(&mut c, "POST", "/v1/enroll", &body(token)).await;
        assert_eq!(code_of(&b), code, "{s} {b}");
        let records = common::audit_records(&w.ca());
        let new: Vec<&str> = records[before..]
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .collect();
        assert_eq!(new, kinds, "{code}: {:?}", &records[before..]);
    }
}

#[tokio::test]
async fn revocation_query_numbers_are_decimal_digits_only() {
    // CA-API.md 3.4: `after` and `wait` are integers, as an `If-None-Match` tag is a quoted
    // decimal `seq`. A sign (which a form decoder reads as a space), an empty value or an
    // exponent is `400 bad_request`, not read as a number by one replica and refused by another;
    // so is a parameter named twice, not read as its first value by one and its last by another.
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    for query in [
        "after=+0",
        "after=0&wait=+1",
        "after=",
        "wait=1e1",
        "after=-0",
        // A parameter named twice: which one counts would differ between implementations.
        "after=5&after=0",
        "after=0&wait=1&wait=0",
    ] {
        let (s, b) = call(&mut c, "GET", &format!("/v1/revocations?{query}"), "").await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (400, "bad_request"),
            "{query}: {b}"
        );
    }
    let (s, b) = call(&mut c, "GET", "/v1/revocations?after=0&wait=0", "").await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn null_is_an_absent_optional_field_and_a_zero_lifetime_is_malformed() {
    // CA-API.md 1.2: an optional field given as `null` is as if absent (also `expires_in_secs`
    // of a task request, 3.7); a required one is `400 bad_request`. A lifetime (`ttl_secs`,
    // `task_ttl_secs`) is at least one second: 0 is `400 bad_request` on every route.
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/tokens",
        r#"{"agent":"planner","scope":["tickets:read"],"task":null,"audience":null,"ttl_secs":null,"expires_in_secs":null}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let task = |t: &str, extra: &str| {
        let id = format!("spiffe://example.org/agent/planner/task/{t}");
        format!(
            r#"{{"agent":"planner","task":"{t}","scope":["tickets:read"],"csr":"{}"{extra}}}"#,
            csr(&key, &id)
        )
    };
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/tasks",
        &task("t-null", r#","expires_in_secs":null"#),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let before = w.ca().issuances().unwrap().len();
    for (path, body) in [
        (
            "/v1/tokens",
            r#"{"agent":null,"scope":["tickets:read"]}"#.to_owned(),
        ),
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"ttl_secs":0}"#.to_owned(),
        ),
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"task_ttl_secs":0}"#.to_owned(),
        ),
        ("/v1/tasks", task("t-zero-1", r#","ttl_secs":0"#)),
        ("/v1/tasks", task("t-zero-2", r#","task_ttl_secs":0"#)),
    ] {
        let (s, b) = call(&mut c, "POST", path, &body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (400, "bad_request"),
            "{path} {body}: {b}"
        );
    }
    let (holder, hid) = w.task("planner");
    let mut c = w.connect(holder, &hid).await.unwrap();
    let (s, b) = call(&mut c, "POST", "/v1/renew", r#"{"ttl_secs":0}"#).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"), "{b}");
    assert_eq!(w.ca().issuances().unwrap().len(), before + 1);
}

#[tokio::test]
async fn a_get_route_takes_head_and_a_body_is_read_whatever_its_content_type() {
    // CA-API.md 1.2 and 1.3: a GET route also takes HEAD (RFC 9110 9.3.2: the GET answer
    // without its body); a POST route does not (`404 not_found`, a method the route does not
    // take). A request body is read as JSON whatever `Content-Type` it is sent with (a client
    // sends `application/json`; the service refuses no request for its media type).
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let (s, h, b) = common::call_with_headers(&mut c, "HEAD", "/v1/tasks", "").await;
    assert_eq!((s, b.as_str()), (200, ""), "{h:?}");
    assert_eq!(h["content-type"], "application/json");
    let (s, _, _) = common::call_with_headers(&mut c, "HEAD", "/v1/tokens", "").await;
    assert_eq!(s, 404);
    for content_type in [None, Some("text/plain")] {
        let mut req = http::Request::builder().method("POST").uri("/v1/tokens");
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let req = req
            .body(Bytes::from_static(
                br#"{"agent":"planner","scope":["tickets:read"]}"#,
            ))
            .unwrap();
        let resp = tokio::time::timeout(T, c.send(req)).await.unwrap().unwrap();
        let s = resp.status().as_u16();
        let b = tokio::time::timeout(T, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(s, 200, "{content_type:?}: {b:?}");
    }
}

#[tokio::test]
async fn the_cas_own_identity_is_not_permitted_on_any_service_route() {
    // CA-API.md 3.12: `svc:agentid-ca` holds no permission, and is no service on the service
    // routes: it is refused as any other non-service caller is, `403 not_permitted`, on each of
    // them alike (it was `policy_denied` on `POST /v1/revoke` only).
    let w = start().await;
    let (own, id) = common::service_credentials(&w.ca(), "agentid-ca");
    let mut c = w.connect(own, &id).await.unwrap();
    let (_, victim) = w.task("planner");
    let victim_task = victim.rsplit('/').next().unwrap().to_owned();
    for (method, path, body) in [
        ("GET", "/v1/tasks", String::new()),
        (
            "POST",
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"]}"#.to_owned(),
        ),
        ("POST", "/v1/revoke", r#"{"agent":"planner"}"#.to_owned()),
        (
            "POST",
            "/v1/revoke",
            format!(r#"{{"task":"{victim_task}"}}"#),
        ),
    ] {
        let (s, b) = call(&mut c, method, path, &body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (403, "not_permitted"),
            "{method} {path} {body}: {b}"
        );
    }
    assert!(w.ca().revocations().unwrap().is_empty());
}

#[tokio::test]
async fn a_stored_tokens_refusal_for_a_csr_that_is_not_base64url_is_recorded() {
    // CA-API.md 4: every refusal of an existing token is an audit record. On the enrollment
    // listener (no caller identity, so nothing records it but the redemption), a stored token
    // sent with a CSR that is not base64url is refused `400 bad_csr` and recorded as the issuance
    // it asked for, `denied`, as one with a CSR that does not parse is; the token stays
    // redeemable.
    let w = start().await;
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    let token = w
        .ca()
        .create_bound_token(
            "planner",
            Some(agentid_protocol::TaskId::parse("t-b64").unwrap()),
            &binding,
            Duration::from_secs(600),
            common::now(),
        )
        .unwrap()
        .token;
    let v = w.verification("spiffe://example.org/agent/planner/task/t-b64");
    let config = Arc::new(
        agentid_transport::http::enrollment_client_config(
            &v,
            PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
        )
        .unwrap(),
    );
    let post = |body: String| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(w.enroll).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("agentid.invalid").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::post("/v1/enroll")
                .header("host", "ca")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap();
            let resp = tokio::time::timeout(T, sender.send_request(req))
                .await
                .unwrap()
                .unwrap();
            let status = resp.status().as_u16();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(b.to_vec()).unwrap())
        }
    };
    let before = common::audit_records(&w.ca()).len();
    let (s, b) = post(format!(r#"{{"token":"{token}","csr":"***"}}"#)).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_csr"), "{b}");
    let records = common::audit_records(&w.ca());
    let new: Vec<(&str, &str)> = records[before..]
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(new, [("issue.task", "denied")], "{:?}", &records[before..]);
    // The token was not spent.
    let csr = common::csr_with(&common::p256_keypair(), &[], |_| {});
    let (s, b) = post(format!(r#"{{"token":"{token}","csr":"{}"}}"#, b64(&csr))).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_task_id_another_agents_task_holds_is_key_mismatch() {
    // CA-API.md 1.3: task ids are unique in the trust domain, whatever the agent. A task
    // request naming the id of another agent's task is `409 key_mismatch` (the task id is
    // bound to another holder), and nothing is issued.
    let w = start().await;
    let (_, worker) = w.task("worker");
    let taken = worker.rsplit('/').next().unwrap().to_owned();
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let before = w.ca().issuances().unwrap().len();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let identity = format!("spiffe://example.org/agent/planner/task/{taken}");
    let body = serde_json::json!({"agent": "planner", "task": taken, "scope": ["tickets:read"],
                                  "csr": csr(&key, &identity)});
    let (s, b) = call(&mut c, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "key_mismatch"), "{b}");
    assert_eq!(w.ca().issuances().unwrap().len(), before);
}

#[tokio::test]
async fn a_member_named_twice_in_a_request_body_is_refused() {
    // CA-API.md 1.2: a request body names each member once (I-JSON, RFC 7493 2.3), compared
    // after unescaping. A body naming one twice is `400 bad_request`, never read as its first
    // or its last value (parsers differ on which: a proxy and the CA would read two requests).
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let id = "spiffe://example.org/agent/planner/task/t-dup";
    let csr = csr(&key, id);
    for (path, body) in [
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"agent":"worker"}"#.to_owned(),
        ),
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"ag\u0065nt":"worker"}"#.to_owned(),
        ),
        (
            "/v1/tasks",
            format!(
                r#"{{"agent":"planner","task":"t-dup","scope":["tickets:read"],"csr":"{csr}","ttl_secs":60,"ttl_secs":600}}"#
            ),
        ),
        (
            "/v1/revoke",
            r#"{"agent":"planner","agent":"worker"}"#.to_owned(),
        ),
        // At any depth: the principal a token binds, the limits a task's grant carries.
        (
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"],"principal":{"format":"opaque","id":"user:1","id":"user:2"}}"#.to_owned(),
        ),
        (
            "/v1/tasks",
            format!(
                r#"{{"agent":"planner","task":"t-dup","scope":["tickets:read"],"csr":"{csr}","limits":{{"calls":1,"calls":1000}}}}"#
            ),
        ),
    ] {
        let (s, b) = call(&mut c, "POST", path, &body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (400, "bad_request"),
            "{path} {body}: {b}"
        );
    }
    assert!(w.ca().revocations().unwrap().is_empty());
    assert!(w.ca().issuances().unwrap().iter().all(|r| r.identity != id));
}

/// A bootstrap token's refused redemption is recorded with the actor its issuance records
/// (CA-API 4.1): the redemption that opened the task and the replay refused `token_used`
/// name the same requester, so that a trail read by actor shows both. Before, the task's
/// issuance named `bootstrap token` and every refusal of a task token `bootstrap`.
#[tokio::test]
async fn a_task_tokens_refused_redemption_names_the_actor_its_issuance_names() {
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let file = w
        .token_file(
            &mut c,
            "planner",
            r#"{"agent":"planner","scope":["tickets:read"],"expires_in_secs":60}"#,
        )
        .await;
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    agentid_transport::enroll::enroll_with_token(&file, key, T)
        .await
        .unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let err = agentid_transport::enroll::enroll_with_token(&file, key, T)
        .await
        .unwrap_err();
    assert_eq!(
        err.api_error().map(|e| e.code),
        Some(agentid_api::ErrorCode::TokenUsed),
        "{err}"
    );
    let records = common::audit_records(&w.ca());
    let of_task: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "issue.task" && r["subject"] == file.identity.as_str())
        .map(|r| (r["outcome"].as_str(), r["actor"].as_str()))
        .collect();
    assert_eq!(
        of_task,
        [
            (Some("ok"), Some("bootstrap token")),
            (Some("denied"), Some("bootstrap token"))
        ]
    );
}

/// A revocation's `reason` is the requester's text: kept, and recorded, as at most 256 bytes
/// with its control characters replaced (CA-API 3.10), as every requester's text the CA
/// records is. Before, a service with `revoke` copied up to the 64 KiB body, newlines and
/// terminal escapes included, into the audit record and the store's row with every request.
#[tokio::test]
async fn a_revocation_reason_is_recorded_bounded_and_without_control_characters() {
    let w = start().await;
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await.unwrap();
    let (_, holder) = w.task("planner");
    let task = holder.rsplit('/').next().unwrap().to_owned();
    let reason = format!("leaked\n\u{1b}[2J{}", "r".repeat(60_000));
    let body = serde_json::json!({"task": task, "reason": reason}).to_string();
    let (s, b) = call(&mut c, "POST", "/v1/revoke", &body).await;
    assert_eq!(s, 200, "{b}");
    let records = common::audit_records(&w.ca());
    let r = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "revoke" && r["outcome"] == "ok")
        .unwrap();
    let recorded = r["reason"].as_str().unwrap();
    assert!(recorded.len() <= 256, "{} bytes", recorded.len());
    assert!(recorded.starts_with("leaked"), "{recorded}");
    assert!(!recorded.chars().any(char::is_control), "{recorded:?}");
    let stored = w
        .ca()
        .revocations()
        .unwrap()
        .into_iter()
        .find(|x| x.value == task)
        .unwrap();
    assert_eq!(stored.reason.as_deref(), Some(recorded));
}
