//! A2A (protocol 0.3.0) on the HTTP binding (features `a2a`, `axum`): the `a2a_agents` example
//! as a process, then the refusals: a card naming another identity, a card pointing at a bundle
//! endpoint, an mTLS peer other than the configured one, a call without the scope.
#![cfg(test)]
#![cfg(all(feature = "a2a", feature = "axum"))]

use example::demo;

use std::net::SocketAddr;
use std::time::Duration;

use agentid_protocol::{Scope, SpiffeId, TrustDomain};
use agentid_transport::a2a::{
    check_card, identity_extension, mutual_tls_scheme, A2aClient, A2aError, AgentCard,
    AGENT_CARD_PATH,
};
use agentid_transport::http::{HttpClient, HttpServer, RequireScope};
use agentid_transport::PeerPolicy;
use axum::routing::{get, post};
use axum::{Json, Router};

const PLANNER: &str = "spiffe://example.org/svc/planner";
const OTHER: &str = "spiffe://example.org/svc/other";
const CODER: &str = "spiffe://example.org/agent/coder/task/t1";
const T: Duration = Duration::from_secs(10);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn card(names: &SpiffeId, bundle_endpoint: Option<&str>) -> AgentCard {
    AgentCard::new(
        "planner",
        "Plans",
        "https://planner.example.org/a2a",
        "1.0.0",
    )
    .security_scheme("agentid", mutual_tls_scheme("agentid X509-SVID"))
    .extension(identity_extension(names, bundle_endpoint))
}

struct World {
    domain: demo::Domain,
    td: TrustDomain,
}

impl World {
    fn new() -> Self {
        Self {
            domain: demo::Domain::new("example.org").unwrap(),
            td: TrustDomain::parse("example.org").unwrap(),
        }
    }

    /// An A2A agent presenting `cert_id`, publishing `card` (as JSON), on 127.0.0.1.
    async fn agent(&self, cert_id: &str, card: serde_json::Value) -> SocketAddr {
        self.agent_answering(cert_id, card, None).await
    }

    /// As [`World::agent`], answering every `message/send` with `answer` when given (a
    /// hostile agent), else with a message under the request's id.
    async fn agent_answering(
        &self,
        cert_id: &str,
        card: serde_json::Value,
        answer: Option<serde_json::Value>,
    ) -> SocketAddr {
        let app = Router::new()
            .route(
                AGENT_CARD_PATH,
                get(move || {
                    let card = card.clone();
                    async move { Json(card) }
                }),
            )
            .route(
                "/a2a",
                post(move |Json(req): Json<serde_json::Value>| async move {
                    if let Some(answer) = answer {
                        return Json(answer);
                    }
                    Json(serde_json::json!({
                        "jsonrpc": "2.0", "id": req["id"],
                        "result": { "kind": "message", "role": "agent", "messageId": "r",
                                    "parts": [{ "kind": "text", "text": "ok" }] },
                    }))
                })
                .layer(RequireScope::new(Scope::parse("planner:plan").unwrap())),
            );
        let server = HttpServer::builder(
            self.domain.service(cert_id).unwrap(),
            self.domain.verification(cert_id).unwrap(),
            PeerPolicy::agents_in(self.td.clone()),
        )
        .build()
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { server.serve(listener, app).await });
        addr
    }

    /// The coder, delegated `scope`, expecting `expected`; TLS admits any service of the
    /// domain, so that the A2A client's own checks are what is tested.
    fn client(&self, scope: &str, expected: &str) -> A2aClient {
        let http = HttpClient::builder(
            self.domain.task(CODER, scope).unwrap(),
            self.domain.verification(CODER).unwrap(),
            PeerPolicy::services_in(self.td.clone()),
        )
        .connect_timeout(T)
        .build()
        .unwrap();
        A2aClient::new(http, id(expected))
    }
}

async fn connect(
    a2a: &A2aClient,
    addr: SocketAddr,
) -> Result<agentid_transport::a2a::A2aConnection, A2aError> {
    tokio::time::timeout(T, a2a.connect(addr, "planner.example.org"))
        .await
        .unwrap()
}

fn refused_with(r: Result<agentid_transport::a2a::A2aConnection, A2aError>, code: &str) {
    match r {
        Ok(c) => panic!("accepted: {:?}", c.card()),
        Err(e) => assert_eq!(e.code(), code, "{e}"),
    }
}

/// A listener standing in for a bundle endpoint; `visited` says whether anything connected.
struct BundleEndpoint(std::net::TcpListener);

impl BundleEndpoint {
    fn new() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Self(l)
    }
    fn url(&self) -> String {
        format!("https://{}/bundle.json", self.0.local_addr().unwrap())
    }
    /// A completed TCP connection waits in the backlog whether or not it was accepted.
    fn visited(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The card JSON of an agent naming `names` (and `bundle_endpoint`, if given).
fn card_json(names: &str, bundle_endpoint: Option<&str>) -> serde_json::Value {
    serde_json::to_value(card(&id(names), bundle_endpoint)).unwrap()
}

/// The coder, delegated `scope` and expecting the planner, connects to `addr` (bounded).
async fn connect_as_coder(
    w: &World,
    scope: &str,
    addr: SocketAddr,
) -> Result<agentid_transport::a2a::A2aConnection, A2aError> {
    connect(&w.client(scope, PLANNER), addr).await
}

/// An agent presenting `cert_id` and serving `card` refuses the coder (delegated `planner:plan`,
/// expecting the planner) with `code`.
async fn assert_coder_refused(cert_id: &str, card: serde_json::Value, code: &str) {
    let w = World::new();
    let addr = w.agent(cert_id, card).await;
    refused_with(connect_as_coder(&w, "planner:plan", addr).await, code);
}

#[tokio::test]
async fn the_configured_agent_with_its_own_card_answers() {
    let w = World::new();
    let addr = w.agent(PLANNER, card_json(PLANNER, None)).await;
    let mut conn = connect_as_coder(&w, "planner:plan", addr).await.unwrap();
    assert_eq!(conn.card().protocol_version, "0.3.0");
    let r = conn.send_text("/a2a", "hi").await.unwrap();
    assert_eq!(r["parts"][0]["text"], "ok");
    assert!(conn.http().server_proof().is_some());
}

#[tokio::test]
async fn a_card_naming_another_identity_is_refused() {
    assert_coder_refused(PLANNER, card_json(OTHER, None), "card_identity_mismatch").await;
}

#[tokio::test]
async fn a_card_naming_the_right_id_in_another_trust_domain_is_refused() {
    let mut c = card_json(PLANNER, None);
    c["capabilities"]["extensions"][0]["params"]["trustDomain"] = "evil.example".into();
    assert_coder_refused(PLANNER, c, "card_identity_mismatch").await;
}

#[tokio::test]
async fn a_bundle_endpoint_in_a_card_is_never_fetched() {
    let w = World::new();
    // The right agent naming a bundle endpoint: accepted on its identity, endpoint untouched.
    let good = BundleEndpoint::new();
    let addr = w
        .agent(PLANNER, card_json(PLANNER, Some(&good.url())))
        .await;
    let mut conn = connect_as_coder(&w, "planner:plan", addr).await.unwrap();
    conn.send_text("/a2a", "hi").await.unwrap();
    assert!(!good.visited());
    // A card of another identity whose bundle endpoint would vouch for it: refused, untouched.
    let evil = BundleEndpoint::new();
    let addr = w.agent(PLANNER, card_json(OTHER, Some(&evil.url()))).await;
    let r = connect_as_coder(&w, "planner:plan", addr).await;
    refused_with(r, "card_identity_mismatch");
    assert!(!evil.visited());
}

#[tokio::test]
async fn an_mtls_peer_other_than_the_configured_one_is_refused_whatever_its_card_says() {
    // svc/other is a valid member of the domain and serves a card claiming to be the planner.
    assert_coder_refused(OTHER, card_json(PLANNER, None), "peer_mismatch").await;
}

#[tokio::test]
async fn a_message_without_the_delegated_scope_is_refused_with_its_code() {
    let w = World::new();
    let addr = w.agent(PLANNER, card_json(PLANNER, None)).await;
    let mut conn = connect_as_coder(&w, "planner:read", addr).await.unwrap();
    match conn.send_text("/a2a", "hi").await {
        Ok(r) => panic!("allowed: {r}"),
        Err(A2aError::Http { status, code }) => {
            assert_eq!(status, 403);
            assert_eq!(code, "scope_not_granted");
        }
        Err(e) => panic!("{e}"),
    }
}

/// What an error shows of a hostile agent's text: bounded, one line, no terminal escapes.
fn assert_shown_clean(e: &A2aError) {
    let shown = e.to_string();
    assert!(shown.len() <= 1200, "{} bytes shown", shown.len());
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
}

/// `n` bytes and more of forged log lines and terminal escapes (a card holds at most 64 KiB).
fn hostile_text(n: usize) -> String {
    format!(
        "x\n2026-12-06T07:00:00Z INFO forged: all checks passed\u{1b}[2J{}",
        "y".repeat(n)
    )
}

/// A change that spoils a card.
type Spoil = fn(&mut serde_json::Value);

/// A card's text reaches the caller's error only cut and cleaned, whichever check refuses it:
/// another identity, another protocol version, or a malformed card that serde quotes.
#[tokio::test]
async fn a_hostile_cards_text_is_shown_bounded_and_without_control_characters() {
    let w = World::new();
    let cases: [(&str, Spoil); 3] = [
        ("card_identity_mismatch", |card| {
            let params = &mut card["capabilities"]["extensions"][0]["params"];
            params["spiffeId"] = hostile_text(20_000).into();
            params["trustDomain"] = hostile_text(20_000).into();
        }),
        ("card_version", |card| {
            card["protocolVersion"] = hostile_text(40_000).into();
        }),
        // A string where an object belongs: serde quotes it in its error.
        ("malformed", |card| {
            card["capabilities"] = hostile_text(40_000).into();
        }),
    ];
    for (code, spoil) in cases {
        let mut card = card_json(PLANNER, None);
        spoil(&mut card);
        let addr = w.agent(PLANNER, card).await;
        match connect_as_coder(&w, "planner:plan", addr).await {
            Ok(c) => panic!("accepted: {:?}", c.card()),
            Err(e) => {
                assert_eq!(e.code(), code, "{e}");
                assert_shown_clean(&e);
            }
        }
    }
}

#[tokio::test]
async fn a_json_rpc_error_message_from_the_agent_is_shown_bounded_and_without_control_characters() {
    let w = World::new();
    let answer = serde_json::json!({
        "jsonrpc": "2.0", "id": 1,
        "error": { "code": -32000, "message": hostile_text(500_000) },
    });
    let addr = w
        .agent_answering(PLANNER, card_json(PLANNER, None), Some(answer))
        .await;
    let mut conn = connect_as_coder(&w, "planner:plan", addr).await.unwrap();
    match tokio::time::timeout(T, conn.send_text("/a2a", "hi"))
        .await
        .unwrap()
    {
        Ok(r) => panic!("answered: {r}"),
        Err(e) => {
            assert_eq!(e.code(), "rpc_error", "{e}");
            assert_shown_clean(&e);
        }
    }
}

#[tokio::test]
async fn a_json_rpc_response_under_another_id_is_refused() {
    let w = World::new();
    for id in [
        serde_json::json!(7),
        serde_json::json!("1"),
        serde_json::Value::Null,
    ] {
        let answer = serde_json::json!({
            "jsonrpc": "2.0", "id": id,
            "result": { "kind": "message", "role": "agent", "messageId": "r",
                        "parts": [{ "kind": "text", "text": "not yours" }] },
        });
        let addr = w
            .agent_answering(PLANNER, card_json(PLANNER, None), Some(answer))
            .await;
        let mut conn = connect_as_coder(&w, "planner:plan", addr).await.unwrap();
        match tokio::time::timeout(T, conn.send_text("/a2a", "hi"))
            .await
            .unwrap()
        {
            Ok(r) => panic!("id {id}: answered: {r}"),
            Err(e) => assert_eq!(e.code(), "malformed", "id {id}: {e}"),
        }
    }
}

/// An agent presenting the planner's certificate that takes every request and never answers
/// (its response never starts).
async fn silent_planner(w: &World) -> SocketAddr {
    let app = Router::new().fallback(std::future::pending::<Json<serde_json::Value>>);
    let server = HttpServer::builder(
        w.domain.service(PLANNER).unwrap(),
        w.domain.verification(PLANNER).unwrap(),
        PeerPolicy::agents_in(w.td.clone()),
    )
    .build()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener, app).await });
    addr
}

/// The connect timeout covers TCP and TLS only: an agent that never answers the card request
/// held `connect` until the connection's certificates neared their end (hours).
#[tokio::test]
async fn an_agent_that_never_answers_its_card_request_times_out() {
    let w = World::new();
    let addr = silent_planner(&w).await;
    let a2a = w
        .client("planner:plan", PLANNER)
        .timeout(Duration::from_millis(300));
    refused_with(connect(&a2a, addr).await, "response_timeout");
}

#[tokio::test]
async fn a_card_that_is_not_json_is_malformed() {
    assert_coder_refused(
        PLANNER,
        serde_json::json!(["not", "a", "card"]),
        "malformed",
    )
    .await;
}

#[test]
fn check_card_reads_only_the_agentid_extension_and_the_pinned_version() {
    let planner = id(PLANNER);
    assert!(check_card(&card(&planner, None), &planner).is_ok());

    let mut c = card(&planner, None);
    c.protocol_version = "1.0".into();
    assert_eq!(check_card(&c, &planner).unwrap_err().code(), "card_version");

    let mut c = card(&planner, None);
    c.capabilities.extensions.clear();
    assert_eq!(
        check_card(&c, &planner).unwrap_err().code(),
        "card_extension_missing"
    );

    // Two agentid extensions (one honest, one not) are ambiguous: refused.
    let c = card(&planner, None).extension(identity_extension(&id(OTHER), None));
    assert_eq!(
        check_card(&c, &planner).unwrap_err().code(),
        "card_extension_missing"
    );

    let mut c = card(&planner, None);
    c.security_schemes.clear();
    assert_eq!(
        check_card(&c, &planner).unwrap_err().code(),
        "card_no_mutual_tls"
    );

    // Parameters of the wrong type are malformed, not a match.
    let mut c = card(&planner, None);
    if let Some(p) = c.capabilities.extensions[0].params.as_mut() {
        p["spiffeId"] = serde_json::json!(42);
    }
    assert_eq!(check_card(&c, &planner).unwrap_err().code(), "malformed");
}

#[path = "../examples/a2a_agents.rs"]
#[allow(dead_code, reason = "the example's main is not called here")]
mod example;

#[tokio::test]
async fn the_a2a_agents_example_runs() {
    tokio::time::timeout(Duration::from_secs(60), example::run())
        .await
        .expect("the example finishes")
        .expect("every step of the example goes as described");
}
