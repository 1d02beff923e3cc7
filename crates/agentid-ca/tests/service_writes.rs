//! The CA service's state-changing routes (`spec/CA-API.md` 3.6, 3.7, 3.10) against what the
//! spec says about who may change what: task ids are unique in the trust domain whatever the
//! agent, from the moment a bootstrap token names one (1.3, 3.10).
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::call;

use std::net::SocketAddr;
use std::time::Duration;

use agentid_api::{TokenFile, TokenResponse};
use agentid_ca::CertificateAuthority;
use agentid_protocol::{Algorithm, SpiffeId, TaskKey};
use agentid_transport::http::HttpClientConnection;

const T: Duration = Duration::from_secs(20);

/// Two platforms, each with its own agent: `one` may make tokens for `alpha`, `two` may make
/// tokens, open tasks and revoke for `beta` only.
const EXTRA_POLICY: &str = r#"
[agents.alpha]
scopes = ["tickets:read"]
requesters = ["operator", "bootstrap"]

[agents.alpha.permissions]
"svc:one" = ["create_token", "open_task"]

[agents.beta]
scopes = ["tickets:read"]
requesters = ["operator", "bootstrap"]

[agents.beta.permissions]
"svc:two" = ["create_token", "open_task", "revoke"]

[agents.gamma]
scopes = ["tickets:*"]
requesters = ["operator", "bootstrap"]

[agents.gamma.permissions]
"svc:one" = ["create_token", "open_task"]

[agents.delta]
scopes = ["tickets:read"]
requesters = ["operator", "bootstrap"]
max_token_ttl = "15m"

[agents.delta.permissions]
"svc:one" = ["create_token"]

[services.short]
max_token_ttl = "5m"
requesters = ["operator", "bootstrap"]

[services.agentid-ca]
max_ttl = "1h"
requesters = ["operator"]

[services.one]
max_ttl = "1h"
requesters = ["operator"]

[services.two]
max_ttl = "1h"
requesters = ["operator"]
"#;

struct World {
    dir: tempfile::TempDir,
    mtls: SocketAddr,
    enroll: SocketAddr,
}

async fn start() -> World {
    // On PostgreSQL too with AGENTID_TEST_STORE=postgres.
    let (dir, mtls, enroll) = common::serve_ca_with(
        EXTRA_POLICY,
        true,
        agentid_ca::server::ServiceOptions::default(),
    )
    .await;
    let enroll = enroll.expect("serve_ca(_, true) binds the enrollment listener");
    World { dir, mtls, enroll }
}

impl World {
    fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::open(self.dir.path()).unwrap()
    }

    async fn service(&self, name: &str) -> HttpClientConnection {
        let ca = self.ca();
        let (creds, id) = common::service_credentials(&ca, name);
        common::ca_connection(&ca, self.mtls, creds, &id).await
    }

    /// The token file of a `POST /v1/tokens` answer, for the enrollment listener.
    fn token_file(&self, agent: &str, answer: &str) -> TokenFile {
        let t: TokenResponse = serde_json::from_str(answer).unwrap();
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
}

/// The `code` of a refusal (empty for an answer that is none).
fn code_of(body: &str) -> String {
    serde_json::from_str::<agentid_api::ApiError>(body)
        .map(|e| e.code.as_str().to_owned())
        .unwrap_or_default()
}

fn csr(key: &TaskKey, identity: &str) -> String {
    base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        key.csr(&SpiffeId::parse(identity).unwrap()).unwrap(),
    )
}

/// A task id a bootstrap token of one agent names is that agent's (CA-API.md 3.10: the task is
/// known from the moment a token names it; 1.3: task ids are unique whatever the agent). Before,
/// a service of another agent could take it: open the task for its own agent (the token then
/// never redeemed), or make a token of its own naming it and then revoke the task as its own,
/// so that the first token was refused `revoked`.
#[tokio::test]
async fn a_task_id_another_agents_token_names_is_not_taken_by_another_service() {
    let w = start().await;
    let mut one = w.service("one").await;
    let mut two = w.service("two").await;
    let (s, b) = call(
        &mut one,
        "POST",
        "/v1/tokens",
        r#"{"agent":"alpha","task":"t-shared","scope":["tickets:read"],"expires_in_secs":600}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let file = w.token_file("alpha", &b);

    // Another agent's task under that id.
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let body = serde_json::json!({"agent": "beta", "task": "t-shared", "scope": ["tickets:read"],
        "csr": csr(&key, "spiffe://example.org/agent/beta/task/t-shared")});
    let (s, b) = call(&mut two, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "key_mismatch"), "{b}");

    // Another agent's token under that id.
    let (s, b) = call(
        &mut two,
        "POST",
        "/v1/tokens",
        r#"{"agent":"beta","task":"t-shared","scope":["tickets:read"]}"#,
    )
    .await;
    assert_eq!((s, code_of(&b).as_str()), (409, "key_mismatch"), "{b}");

    // So the task stays alpha's: beta's platform may not revoke it.
    let (s, b) = call(&mut two, "POST", "/v1/revoke", r#"{"task":"t-shared"}"#).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");
    assert!(w.ca().revocations().unwrap().is_empty());

    // And the token still opens it.
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let creds = agentid_transport::enroll::enroll_with_token(&file, key, T)
        .await
        .unwrap();
    assert_eq!(
        creds.credential.identity().as_str(),
        "spiffe://example.org/agent/alpha/task/t-shared"
    );
    assert!(w
        .ca()
        .issuances()
        .unwrap()
        .iter()
        .all(|r| r.identity != "spiffe://example.org/agent/beta/task/t-shared"));
}

/// A token naming a task id a task already holds could never be redeemed (the task is opened
/// once): it is refused when made, `409 key_mismatch` (CA-API.md 1.3), whatever the agent.
#[tokio::test]
async fn a_token_naming_a_task_id_a_task_holds_is_key_mismatch() {
    let w = start().await;
    let (_, held) = common::operator_credentials(&w.ca(), "beta");
    let taken = held.rsplit('/').next().unwrap().to_owned();
    let mut one = w.service("one").await;
    let before = common::audit_records(&w.ca())
        .iter()
        .filter(|r| r["kind"] == "bootstrap.create")
        .count();
    let body = serde_json::json!({"agent": "alpha", "task": taken, "scope": ["tickets:read"]});
    let (s, b) = call(&mut one, "POST", "/v1/tokens", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "key_mismatch"), "{b}");
    let after = common::audit_records(&w.ca())
        .iter()
        .filter(|r| r["kind"] == "bootstrap.create")
        .count();
    assert_eq!(before, after, "no token was made");
}

/// A token binding terms whose grant would be larger than any verifier takes (a chain token is
/// at most 8 KiB, PROTOCOL.md) could never be redeemed: every enrollment would be refused. It is
/// refused when made (`400 bad_request`, no token), as a task asking for them is.
#[tokio::test]
async fn a_token_whose_grant_could_never_be_signed_is_not_made() {
    let w = start().await;
    let mut one = w.service("one").await;
    // 40 scope tokens of about 200 bytes, each within the rule's `tickets:*`.
    let scope: Vec<String> = (0..40)
        .map(|i| format!("tickets:{i:03}{}", format!(":{}", "a".repeat(60)).repeat(3)))
        .collect();
    let before = common::audit_records(&w.ca())
        .iter()
        .filter(|r| r["kind"] == "bootstrap.create")
        .count();
    let body = serde_json::json!({"agent": "gamma", "scope": scope});
    let (s, b) = call(&mut one, "POST", "/v1/tokens", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"), "{b}");
    let after = common::audit_records(&w.ca())
        .iter()
        .filter(|r| r["kind"] == "bootstrap.create")
        .count();
    assert_eq!(before, after, "no token was made");
    // The same terms asked for at once are refused the same way.
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let body = serde_json::json!({"agent": "gamma", "task": "t-big", "scope": scope,
        "csr": csr(&key, "spiffe://example.org/agent/gamma/task/t-big")});
    let (s, b) = call(&mut one, "POST", "/v1/tasks", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (400, "bad_request"), "{b}");
}

/// Two tokens of different agents naming one task id at once: exactly one is made, the other
/// refused as the id another agent holds (CA-API 1.3). The check runs in the insert's
/// transaction (on PostgreSQL under the task id's lock), not before it, where two creations
/// could both pass it (red team, specs: the token and its task then belonged to whichever
/// agent a later lookup found first). On PostgreSQL too with `AGENTID_TEST_STORE=postgres`.
#[tokio::test]
async fn tokens_of_two_agents_naming_one_task_id_at_once_make_one() {
    let w = start().await;
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    for round in 0..20 {
        let task = agentid_protocol::TaskId::parse(&format!("t-race-{round}")).unwrap();
        let makers: Vec<_> = ["alpha", "beta"]
            .into_iter()
            .map(|agent| {
                let (ca, task, binding) = (w.ca(), task.clone(), binding.clone());
                std::thread::spawn(move || {
                    ca.create_bound_token(
                        agent,
                        Some(task),
                        &binding,
                        Duration::from_secs(600),
                        std::time::SystemTime::now(),
                    )
                })
            })
            .collect();
        let results: Vec<_> = makers.into_iter().map(|m| m.join().unwrap()).collect();
        let made = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(made, 1, "round {round}: {results:?}");
        assert!(
            results.iter().any(|r| matches!(
                r,
                Err(agentid_ca::CaError::TaskIdTaken(t)) if t == task.as_str()
            )),
            "round {round}: {results:?}"
        );
    }
}

/// [`start`] with the service's bound on outstanding tokens set to `max`.
async fn start_bounded(max: u64) -> World {
    let (dir, mtls, enroll) = common::serve_ca_with(
        EXTRA_POLICY,
        true,
        agentid_ca::server::ServiceOptions {
            max_tokens_per_service: max,
            ..agentid_ca::server::ServiceOptions::default()
        },
    )
    .await;
    let enroll = enroll.expect("serve_ca(_, true) binds the enrollment listener");
    World { dir, mtls, enroll }
}

fn tokens_made(ca: &CertificateAuthority) -> usize {
    common::audit_records(ca)
        .iter()
        .filter(|r| r["kind"] == "bootstrap.create" && r["outcome"] == "ok")
        .count()
}

/// A service holds at most its bound of unredeemed tokens that have not expired (CA-API.md
/// 3.6): past it `409 cap_reached`, nothing made, another service unaffected, and a redeemed
/// token frees its place. Before, a service making tokens in a loop grew the store without
/// bound. On PostgreSQL too with `AGENTID_TEST_STORE=postgres`.
#[tokio::test]
async fn a_service_holds_at_most_its_bound_of_outstanding_tokens() {
    let w = start_bounded(3).await;
    let mut one = w.service("one").await;
    let mut two = w.service("two").await;
    let ask = r#"{"agent":"alpha","scope":["tickets:read"],"expires_in_secs":600}"#;
    let mut files = Vec::new();
    for _ in 0..3 {
        let (s, b) = call(&mut one, "POST", "/v1/tokens", ask).await;
        assert_eq!(s, 200, "{b}");
        files.push(w.token_file("alpha", &b));
    }
    let before = tokens_made(&w.ca());
    let (s, b) = call(&mut one, "POST", "/v1/tokens", ask).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "cap_reached"), "{b}");
    let e: agentid_api::ApiError = serde_json::from_str(&b).unwrap();
    assert!(e.hint.contains("redeem"), "{b}");
    assert_eq!(tokens_made(&w.ca()), before, "no token was made");
    // The bound is per service.
    let (s, b) = call(
        &mut two,
        "POST",
        "/v1/tokens",
        r#"{"agent":"beta","scope":["tickets:read"]}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // A redeemed token is no longer outstanding.
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    agentid_transport::enroll::enroll_with_token(&files[0], key, T)
        .await
        .unwrap();
    let (s, b) = call(&mut one, "POST", "/v1/tokens", ask).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(&mut one, "POST", "/v1/tokens", ask).await;
    assert_eq!((s, code_of(&b).as_str()), (409, "cap_reached"), "{b}");
}

/// Creations of one service at once never pass its bound: it is counted in the insert's
/// transaction (on PostgreSQL under the creator's lock). On PostgreSQL too with
/// `AGENTID_TEST_STORE=postgres`.
#[tokio::test]
async fn a_services_tokens_made_at_once_stay_within_its_bound() {
    let w = start().await;
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        creator: Some("svc:one".into()),
        ..Default::default()
    };
    let makers: Vec<_> = (0..12)
        .map(|_| {
            let (mut ca, binding) = (w.ca(), binding.clone());
            ca.set_max_tokens_per_service(5);
            std::thread::spawn(move || {
                ca.create_bound_token(
                    "alpha",
                    None,
                    &binding,
                    Duration::from_secs(600),
                    std::time::SystemTime::now(),
                )
            })
        })
        .collect();
    let results: Vec<_> = makers.into_iter().map(|m| m.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        5,
        "{results:?}"
    );
    assert!(
        results.iter().all(|r| matches!(
            r,
            Ok(_) | Err(agentid_ca::CaError::TooManyTokens { max: 5, .. })
        )),
        "{results:?}"
    );
}

/// Tokens, used or not, are forgotten once past their retention after expiry (CA-API.md 3.6):
/// until then a redemption is told `token_used` or `token_expired`; afterwards the token is
/// unknown (`token_invalid`), its row gone, and the task id an unredeemed one named is free.
/// Before, every token ever made stayed in the store. On PostgreSQL too with
/// `AGENTID_TEST_STORE=postgres`.
#[tokio::test]
async fn tokens_past_their_retention_are_forgotten() {
    use agentid_ca::{EnrollError, TOKEN_RETENTION_SECS};
    let w = start().await;
    let ca = w.ca();
    let t0 = std::time::SystemTime::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    let make = |task: &str, when| {
        ca.create_bound_token(
            "alpha",
            Some(agentid_protocol::TaskId::parse(task).unwrap()),
            &binding,
            Duration::from_secs(600),
            when,
        )
        .unwrap()
    };
    let used = make("t-used", t0);
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let der = key
        .csr(&SpiffeId::parse(used.identity.as_str()).unwrap())
        .unwrap();
    ca.redeem(&used.token, der.clone(), t0).unwrap();
    let expired = make("t-expired", t0);
    let later = make("t-later", at(TOKEN_RETENTION_SECS));

    // At the end of the retention: kept.
    let kept = at(600 + TOKEN_RETENTION_SECS);
    assert_eq!(ca.prune_bootstrap_tokens(kept).unwrap(), 0);
    assert!(matches!(
        ca.redeem(&used.token, der.clone(), kept),
        Err(EnrollError::TokenUsed)
    ));
    assert!(matches!(
        ca.redeem(&expired.token, der.clone(), kept),
        Err(EnrollError::TokenExpired)
    ));
    let other = |when| {
        ca.create_bound_token(
            "beta",
            Some(agentid_protocol::TaskId::parse("t-expired").unwrap()),
            &binding,
            Duration::from_secs(600),
            when,
        )
    };
    assert!(matches!(
        other(kept),
        Err(agentid_ca::CaError::TaskIdTaken(_))
    ));

    // A second later: forgotten, the later token kept.
    let gone = at(601 + TOKEN_RETENTION_SECS);
    assert_eq!(ca.prune_bootstrap_tokens(gone).unwrap(), 2);
    for t in [&used.token, &expired.token] {
        assert!(matches!(
            ca.redeem(t, der.clone(), gone),
            Err(EnrollError::TokenInvalid)
        ));
    }
    assert!(matches!(
        ca.redeem(&later.token, der, gone),
        Err(EnrollError::TokenExpired)
    ));
    // The task the used token opened keeps its id; the id only a forgotten token named is free.
    assert!(ca
        .issuances()
        .unwrap()
        .iter()
        .any(|r| r.identity == used.identity.as_str()));
    other(gone).unwrap();
}

/// A bound set as high as it goes (the operator's "no bound") still makes tokens: it is not
/// turned into a store error.
#[tokio::test]
async fn the_highest_bound_on_a_services_tokens_makes_tokens() {
    let w = start().await;
    let mut ca = w.ca();
    ca.set_max_tokens_per_service(u64::MAX);
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        creator: Some("svc:one".into()),
        ..Default::default()
    };
    ca.create_bound_token(
        "alpha",
        None,
        &binding,
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    )
    .unwrap();
}

/// The `bootstrap.create` records in the audit chain.
fn tokens_created(ca: &CertificateAuthority) -> usize {
    common::audit_records(ca)
        .iter()
        .filter(|r| r["kind"] == "bootstrap.create")
        .count()
}

/// An agent rule's `max_token_ttl` bounds how long a token a service makes for it stays
/// redeemable (CA-API.md 3.6): past it `403 policy_denied` naming the rule, with the most it
/// may ask for, and no token is made. Before, only the wire's 7 days applied, so a service with
/// `create_token` made week-long tokens whatever the operator wanted. A rule that sets none
/// keeps the 7 days. On PostgreSQL too with `AGENTID_TEST_STORE=postgres`.
#[tokio::test]
async fn a_rules_max_token_ttl_bounds_the_tokens_a_service_makes() {
    let w = start().await;
    let mut one = w.service("one").await;
    let ca = w.ca();
    let body = serde_json::json!({"agent": "delta", "scope": ["tickets:read"],
        "expires_in_secs": 900});
    let (s, b) = call(&mut one, "POST", "/v1/tokens", &body.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let before = tokens_created(&ca);
    let body = serde_json::json!({"agent": "delta", "scope": ["tickets:read"],
        "expires_in_secs": 901});
    let (s, b) = call(&mut one, "POST", "/v1/tokens", &body.to_string()).await;
    assert_eq!((s, code_of(&b).as_str()), (403, "policy_denied"), "{b}");
    let e: agentid_api::ApiError = serde_json::from_str(&b).unwrap();
    assert!(
        e.message.contains("agents.delta.max_token_ttl")
            && e.message
                .contains("15m 1s exceeds the maximum of 15m; ask for 15m or less"),
        "names the rule and the next step: {b}"
    );
    assert_eq!(before, tokens_created(&ca), "no token was made");
    // A rule without it: the wire's 7 days, as before.
    let body = serde_json::json!({"agent": "alpha", "scope": ["tickets:read"],
        "expires_in_secs": 604_800});
    let (s, b) = call(&mut one, "POST", "/v1/tokens", &body.to_string()).await;
    assert_eq!(s, 200, "{b}");
}

/// The operator's tokens are bounded the same way: by the agent's or the service's
/// `max_token_ttl`, and by 7 days (`defaults.max_token_ttl`) when the rule sets none. Before,
/// the operator's had no bound at all (`agentid token create --ca --expires-in 10y` made a token
/// redeemable, and its task id reserved, for ten years).
#[tokio::test]
async fn the_operators_tokens_are_bounded_by_max_token_ttl() {
    let w = start().await;
    let ca = w.ca();
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        creator: Some("operator".into()),
        ..Default::default()
    };
    let rule_of = |e: agentid_ca::CaError| match e {
        agentid_ca::CaError::Policy { rule, message } => (rule, message),
        other => panic!("not a policy refusal: {other:?}"),
    };
    let before = tokens_created(&ca);
    let e = ca
        .create_bound_token(
            "delta",
            None,
            &binding,
            Duration::from_secs(16 * 60),
            common::now(),
        )
        .unwrap_err();
    let (rule, message) = rule_of(e);
    assert_eq!(rule, "agents.delta.max_token_ttl", "{message}");
    assert!(message.contains("ask for 15m or less"), "{message}");
    let e = ca
        .create_bound_token(
            "alpha",
            None,
            &binding,
            Duration::from_secs(8 * 86_400),
            common::now(),
        )
        .unwrap_err();
    let (rule, message) = rule_of(e);
    assert_eq!(rule, "defaults.max_token_ttl", "{message}");
    assert!(
        message.contains("(agents.alpha sets no max_token_ttl)"),
        "{message}"
    );
    let e = ca
        .create_service_token("short", None, Duration::from_secs(301), common::now())
        .unwrap_err();
    assert_eq!(rule_of(e).0, "services.short.max_token_ttl");
    assert_eq!(before, tokens_created(&ca), "no token was made");
    // Within the bounds, tokens are made.
    ca.create_bound_token(
        "delta",
        None,
        &binding,
        Duration::from_secs(15 * 60),
        common::now(),
    )
    .unwrap();
    ca.create_bound_token(
        "alpha",
        None,
        &binding,
        Duration::from_secs(7 * 86_400),
        common::now(),
    )
    .unwrap();
    ca.create_service_token("short", None, Duration::from_secs(300), common::now())
        .unwrap();
}

/// `max_token_ttl` is a duration of at most 7 days, wherever it is written.
#[test]
fn a_max_token_ttl_above_seven_days_is_refused() {
    for (text, rule) in [
        (
            "[defaults]\nmax_token_ttl = \"8d\"\n",
            "defaults.max_token_ttl",
        ),
        (
            "[agents.a]\nmax_token_ttl = \"7d 1s\"\n",
            "agents.a.max_token_ttl",
        ),
        (
            "[services.s]\nmax_token_ttl = \"1month\"\n",
            "services.s.max_token_ttl",
        ),
        (
            "[agents.a]\nmax_token_ttl = \"0s\"\n",
            "agents.a.max_token_ttl",
        ),
    ] {
        let e = agentid_ca::Policy::from_toml(text).unwrap_err();
        assert_eq!(e.policy_rule(), Some(rule), "{text}: {e}");
    }
    let p = agentid_ca::Policy::from_toml(
        "[defaults]\nmax_token_ttl = \"1h\"\n[agents.a]\n[agents.b]\nmax_token_ttl = \"7d\"\n",
    )
    .unwrap();
    assert_eq!(p.agent("a").unwrap().max_token_ttl, 3600);
    assert_eq!(p.agent("b").unwrap().max_token_ttl, 7 * 86_400);
    // The example `ca init` writes, uncommented, says what it documents.
    let example: String = agentid_ca::hierarchy::DEFAULT_POLICY
        .lines()
        .skip_while(|l| *l != "# [defaults]")
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
        .collect();
    let p = agentid_ca::Policy::from_toml(&example).unwrap();
    assert_eq!(p.agent("planner").unwrap().max_token_ttl, 15 * 60);
    assert_eq!(p.agent("summarizer").unwrap().max_token_ttl, 7 * 86_400);
    assert_eq!(p.service("search").unwrap().max_token_ttl, 7 * 86_400);
}
