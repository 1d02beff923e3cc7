//! Security checks of the CA service whose removal no other test noticed (found by removing
//! each check in turn and running the tests): each test here fails when its check is dropped.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::call;

use std::net::SocketAddr;
use std::sync::Arc;

use agentid_ca::CertificateAuthority;
use agentid_protocol::{Algorithm, SpiffeId, TaskKey};
use agentid_transport::http::HttpClientConnection;
use agentid_transport::MemoryCredentials;

const EXTRA_POLICY: &str = r#"
[agents.planner.permissions]
"svc:platform" = ["open_task", "create_token", "list", "revoke"]

[services.agentid-ca]
max_ttl = "1h"
requesters = ["operator"]

[services.platform]
max_ttl = "1h"
requesters = ["operator"]

[services.weak]
max_ttl = "1h"
requesters = ["operator"]

[agents.worker.permissions]
"svc:weak" = ["list", "open_task", "revoke"]
"#;

struct World {
    dir: tempfile::TempDir,
    mtls: SocketAddr,
}

async fn start() -> World {
    let (dir, mtls, _) = common::serve_ca(EXTRA_POLICY, false).await;
    World { dir, mtls }
}

impl World {
    fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::open(self.dir.path()).unwrap()
    }

    async fn connect(&self, creds: Arc<MemoryCredentials>, own: &str) -> HttpClientConnection {
        common::ca_connection(&self.ca(), self.mtls, creds, own).await
    }
}

fn code_of(body: &str) -> String {
    let e: agentid_api::ApiError = serde_json::from_str(body).unwrap();
    e.code.as_str().to_owned()
}

/// The operator re-issues a service for a new key (the store rebinds the name to it): the
/// certificate of the old key is still a valid certificate of the CA, but the per-request
/// re-check (the store's key for the caller's identity) refuses it on every route, so a key
/// rotated away (say, leaked) holds none of the service's permissions; and on the routes that
/// run the re-check in their operation's hop, it runs before the operation: nothing is issued
/// and no token is made behind the refusal.
#[tokio::test]
async fn a_service_key_the_operator_rebound_away_is_refused_on_every_route() {
    let w = start().await;
    let (old, pid) = common::service_credentials(&w.ca(), "platform");
    let _new = common::service_credential(&w.ca(), "platform", None);
    let mut c = w.connect(old, &pid).await;
    let before = w.ca().issuances().unwrap().len();
    let tokens_made = || {
        common::audit_records(&w.ca())
            .iter()
            .filter(|r| r["kind"] == "bootstrap.create")
            .count()
    };
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let task = SpiffeId::parse("spiffe://example.org/agent/planner/task/t-rebound").unwrap();
    let csr = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        key.csr(&task).unwrap(),
    );
    let open = serde_json::json!({"agent": "planner", "task": "t-rebound",
                                  "scope": ["tickets:read"], "csr": csr})
    .to_string();
    for (method, path, body) in [
        (
            "POST",
            "/v1/tokens",
            r#"{"agent":"planner","scope":["tickets:read"]}"#,
        ),
        ("POST", "/v1/tasks", open.as_str()),
        ("GET", "/v1/tasks", ""),
        ("POST", "/v1/revoke", r#"{"agent":"planner"}"#),
        ("GET", "/v1/revocations", ""),
    ] {
        let (s, b) = call(&mut c, method, path, body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (409, "key_mismatch"),
            "{method} {path}: {b}"
        );
    }
    assert_eq!(w.ca().issuances().unwrap().len(), before);
    assert_eq!(tokens_made(), 0);
    assert!(w.ca().revocations().unwrap().is_empty());
}

/// `POST /v1/tokens` needs `create_token` for the agent (CA-API.md 3.6): a service holding
/// none of the agent's permissions, or others but not that one, makes no token, although the
/// agent takes bootstrap tokens (`planner`) and the binding is within its rule.
#[tokio::test]
async fn a_service_without_create_token_for_the_agent_makes_no_token() {
    let w = start().await;
    let (weak, wid) = common::service_credentials(&w.ca(), "weak");
    let mut c = w.connect(weak, &wid).await;
    for agent in ["planner", "worker"] {
        let body = format!(r#"{{"agent":"{agent}","scope":["tickets:read"]}}"#);
        let (s, b) = call(&mut c, "POST", "/v1/tokens", &body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (403, "policy_denied"),
            "{agent}: {b}"
        );
    }
    assert!(common::audit_records(&w.ca())
        .iter()
        .all(|r| r["kind"] != "bootstrap.create"));
    // The same request from a service holding `create_token` for the agent is served.
    let (platform, pid) = common::service_credentials(&w.ca(), "platform");
    let mut c = w.connect(platform, &pid).await;
    let (s, b) = call(
        &mut c,
        "POST",
        "/v1/tokens",
        r#"{"agent":"planner","scope":["tickets:read"]}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

/// A task whose grant was revoked (by its `jti`) is refused on every route by the
/// per-request re-check (403 `revoked`), also on those no issuance check covers: it can
/// neither read the revocation list nor close its task as a live holder would.
#[tokio::test]
async fn a_task_whose_grant_was_revoked_is_refused_on_every_route() {
    let w = start().await;
    let ca = w.ca();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let opened = ca
        .open_task(
            &agentid_ca::OpenTaskRequest::new(
                "planner",
                agentid_ca::KeySource::Spki(key.public_key().to_spki_der()),
                agentid_ca::TaskRequester::Operator,
                agentid_protocol::Scope::parse("tickets:read").unwrap(),
            ),
            common::now(),
        )
        .unwrap();
    let id = opened.identity.as_str().to_owned();
    let task = opened.identity.task_id().as_str().to_owned();
    let chain = common::chain_of(
        &opened.certificate.leaf.der,
        &opened.certificate.intermediate_der,
    );
    let creds = Arc::new(MemoryCredentials::new(
        agentid_transport::Credential::new(chain, key).unwrap(),
    ));
    let mut c = w.connect(creds, &id).await;
    let (s, b) = call(&mut c, "GET", "/v1/revocations", "").await;
    assert_eq!(s, 200, "{b}");
    ca.revoke(
        &agentid_ca::RevokeTarget::GrantJti(opened.grant_jti.parse().unwrap()),
        Some("test"),
        "operator",
        common::now(),
    )
    .unwrap();
    let revoked_before = ca.revocations().unwrap().len();
    let own = format!(r#"{{"task":"{task}"}}"#);
    for (method, path, body) in [
        ("GET", "/v1/revocations", ""),
        ("POST", "/v1/revoke", own.as_str()),
        ("POST", "/v1/renew", "{}"),
    ] {
        let (s, b) = call(&mut c, method, path, body).await;
        assert_eq!(
            (s, code_of(&b).as_str()),
            (403, "revoked"),
            "{method} {path}: {b}"
        );
    }
    assert_eq!(ca.revocations().unwrap().len(), revoked_before);
}
