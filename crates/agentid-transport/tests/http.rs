//! The HTTP binding end to end (spec/PROTOCOL.md section 22): an axum service behind
//! `HttpServer`, the agentid `HttpClient`, and raw hyper clients that send what the library
//! would refuse to send.
#![cfg(test)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentid_protocol::{ProofBuilder, Role, Scope, SpiffeId, TaskKey};
use agentid_transport::http::{
    self, Authorizer, Decision, DecisionSink, HttpClient, HttpOptions, HttpServer, RequirePeer,
    RequireScope,
};
use agentid_transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use axum::handler::Handler as _;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

const SERVER: &str = "spiffe://example.org/svc/files";
const CLIENT: &str = "spiffe://example.org/agent/client/task/t2";
const OTHER: &str = "spiffe://example.org/agent/other/task/t9";

fn copy(k: &TaskKey) -> TaskKey {
    TaskKey::from_pkcs8_der(k.danger_pkcs8_der()).unwrap()
}

/// Everything a test needs: one trust domain, a service, a client with (optionally) a chain.
struct World {
    a: Domain,
    server_creds: Arc<MemoryCredentials>,
    sv: Arc<PeerVerification>,
    cv: Arc<PeerVerification>,
}

impl World {
    fn new(strict: bool) -> Self {
        let a = Domain::new("example.org");
        let sv = verification(SERVER, &[&a], strict);
        let cv = verification(CLIENT, &[&a], strict);
        let server_creds = Arc::new(MemoryCredentials::new(credential(
            &a.ca,
            SERVER,
            key(),
            &LeafOpts::default(),
        )));
        Self {
            a,
            server_creds,
            sv,
            cv,
        }
    }

    /// A client credential for `id` with a fresh key and, if `scope` is given, a grant.
    fn client(
        &self,
        id: &str,
        scope: Option<&str>,
        o: &LeafOpts,
    ) -> (Arc<MemoryCredentials>, TaskKey, Option<String>) {
        let k = key();
        let holder = agentid_protocol::TaskIdentity::parse(id).unwrap();
        let chain = scope.map(|s| self.a.grant(&holder, &k, s).as_str().to_owned());
        let mut cred = credential(&self.a.ca, id, copy(&k), o);
        if let Some(c) = &chain {
            cred = cred.with_chain(c.clone());
        }
        (Arc::new(MemoryCredentials::new(cred)), k, chain)
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, bool, Option<&'static str>)>>);

impl DecisionSink for Recorder {
    fn record(&self, d: &Decision<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((d.resource.to_string(), d.granted, d.code));
    }
}

async fn whoami(a: Authorizer) -> String {
    format!(
        "{} chain={}",
        a.peer_id(),
        a.chain().map(|c| c.scope.to_string()).unwrap_or_default()
    )
}

async fn stream() -> axum::response::Response {
    // One chunk now, then nothing until the connection cuts the body.
    axum::response::Response::new(axum::body::Body::new(FirstThenPending(Some(
        Bytes::from_static(b"first"),
    ))))
}

/// A body that yields one frame and then waits forever.
struct FirstThenPending(Option<Bytes>);

impl hyper::body::Body for FirstThenPending {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

fn app() -> Router {
    Router::new()
        .route(
            "/scope",
            get(whoami).layer(RequireScope::new(Scope::parse("files:read").unwrap())),
        )
        .route(
            "/peer",
            get(whoami).layer(RequirePeer::new(PeerPolicy::agent(
                agentid_protocol::AgentId::parse("spiffe://example.org/agent/client").unwrap(),
            ))),
        )
        // The same requirements on the handler (axum's `Handler::layer`), as the crate documents.
        .route(
            "/scope_handler",
            get(whoami.layer(RequireScope::new(Scope::parse("files:read").unwrap()))),
        )
        .route(
            "/peer_handler",
            get(whoami.layer(RequirePeer::new(PeerPolicy::agent(
                agentid_protocol::AgentId::parse("spiffe://example.org/agent/client").unwrap(),
            )))),
        )
        .route("/whoami", get(whoami))
        .route("/stream", get(stream))
        .route("/slow", get(slow))
        .route("/past_deadline", get(past_deadline))
}

/// A handler slower than half the server's proof lifetime in the tests that use it; its body is
/// the Unix second at which it finished.
async fn slow() -> String {
    tokio::time::sleep(Duration::from_millis(2500)).await;
    now().to_string()
}

/// A handler that finishes one second after the connection's deadline.
async fn past_deadline(a: Authorizer) -> String {
    let left = (a.deadline() + 1).saturating_sub(now());
    tokio::time::sleep(Duration::from_secs(left.min(20))).await;
    "finished".to_owned()
}

/// The `iat` claim of a compact hop proof.
fn iat_of(proof: &str) -> u64 {
    use base64::Engine as _;
    let payload = proof.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["iat"].as_u64().unwrap()
}

fn options() -> HttpOptions {
    HttpOptions {
        handshake_timeout: Duration::from_secs(2),
        pending_timeout: Duration::from_secs(2),
        ..HttpOptions::default()
    }
}

async fn start(w: &World, sink: Option<Arc<dyn DecisionSink>>, o: HttpOptions) -> SocketAddr {
    let mut b = HttpServer::builder(
        w.server_creds.clone(),
        w.sv.clone(),
        PeerPolicy::trust_domain(w.a.td.clone()),
    )
    .options(o);
    if let Some(s) = sink {
        b = b.decision_sink(s);
    }
    let server = b.build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener, app()).await });
    addr
}

fn client(w: &World, creds: Arc<MemoryCredentials>, h1: bool) -> HttpClient {
    let mut b = HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(SERVER)))
        .connect_timeout(T);
    if h1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn get_req(path: &str) -> ::http::Request<Bytes> {
    ::http::Request::get(path).body(Bytes::new()).unwrap()
}

async fn body(resp: ::http::Response<hyper::body::Incoming>) -> String {
    let b = tokio::time::timeout(T, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

fn code_of(s: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(s).unwrap();
    v["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn agentid_client_presents_a_chain_over_h1_and_h2() {
    for h1 in [true, false] {
        let w = World::new(false);
        let recorder = Arc::new(Recorder::default());
        let addr = start(&w, Some(recorder.clone()), options()).await;
        let (creds, _k, _) = w.client(CLIENT, Some("files:read files:list"), &LeafOpts::default());
        let c = client(&w, creds, h1);
        let mut conn = c.connect(addr, "files.example.org").await.unwrap();
        assert_eq!(conn.peer().info.id, peer(SERVER));
        assert_eq!(
            conn.peer().version,
            if h1 {
                http::HttpVersion::Http11
            } else {
                http::HttpVersion::H2
            }
        );

        let resp = conn.send(get_req("/scope")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("agentid-proof"));
        assert_eq!(
            body(resp).await,
            format!("{CLIENT} chain=files:read files:list")
        );
        assert!(
            conn.server_proof().is_some(),
            "the client verified the server proof"
        );

        // Later requests omit the headers and still run under the verified chain.
        for _ in 0..3 {
            let resp = conn.send(get_req("/scope")).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(!resp.headers().contains_key("agentid-proof"));
            body(resp).await;
        }
        let resp = conn.send(get_req("/peer")).await.unwrap();
        assert_eq!(resp.status(), 200);
        body(resp).await;
        let d = recorder.0.lock().unwrap().clone();
        assert_eq!(d.len(), 5);
        assert!(d.iter().all(|(_, granted, _)| *granted));
        assert_eq!(d[0].0, "files:read");
        assert_eq!(d[4].0, "peer");
    }
}

#[tokio::test]
async fn identity_only_peers_pass_peer_routes_and_fail_scope_routes() {
    let w = World::new(false);
    let recorder = Arc::new(Recorder::default());
    let addr = start(&w, Some(recorder.clone()), options()).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let mut conn = client(&w, creds, false)
        .connect(addr, "files")
        .await
        .unwrap();
    // The client presents a proof without a chain.
    let resp = conn.send(get_req("/peer")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body(resp).await, format!("{CLIENT} chain="));
    let resp = conn.send(get_req("/scope")).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(code_of(&body(resp).await), "scope_not_granted");

    // Another agent of the trust domain passes TLS but not the peer route.
    let (creds, _k, _) = w.client(OTHER, Some("files:read"), &LeafOpts::default());
    let mut conn = client(&w, creds, true)
        .connect(addr, "files")
        .await
        .unwrap();
    let resp = conn.send(get_req("/peer")).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(code_of(&body(resp).await), "peer_denied");
    let resp = conn.send(get_req("/scope")).await.unwrap();
    assert_eq!(resp.status(), 200);
    body(resp).await;
    let d = recorder.0.lock().unwrap().clone();
    assert_eq!(
        d.iter().map(|(_, g, c)| (*g, *c)).collect::<Vec<_>>(),
        vec![
            (true, None),
            (false, Some("scope_not_granted")),
            (false, Some("peer_denied")),
            (true, None)
        ]
    );
}

/// Requirements on the handler (`get(h.layer(..))`) decide every request as route layers do:
/// granted and refused alike go to the sink, and a refusal never reaches the handler.
#[tokio::test]
async fn handler_layers_authorize_every_request() {
    let w = World::new(false);
    let recorder = Arc::new(Recorder::default());
    let addr = start(&w, Some(recorder.clone()), options()).await;
    // A chain granting the scope: granted on every request, not only the presenting one.
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = client(&w, creds, false)
        .connect(addr, "files")
        .await
        .unwrap();
    for _ in 0..2 {
        let resp = conn.send(get_req("/scope_handler")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body(resp).await, format!("{CLIENT} chain=files:read"));
    }
    let resp = conn.send(get_req("/peer_handler")).await.unwrap();
    assert_eq!(resp.status(), 200);
    body(resp).await;
    // A chain without it, and a chain-less peer: 403 `scope_not_granted`.
    for scope in [Some("files:list"), None] {
        let (creds, _k, _) = w.client(CLIENT, scope, &LeafOpts::default());
        let mut conn = client(&w, creds, true)
            .connect(addr, "files")
            .await
            .unwrap();
        let resp = conn.send(get_req("/scope_handler")).await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(code_of(&body(resp).await), "scope_not_granted");
    }
    // Another agent: 403 `peer_denied` on the peer requirement.
    let (creds, _k, _) = w.client(OTHER, Some("files:read"), &LeafOpts::default());
    let mut conn = client(&w, creds, false)
        .connect(addr, "files")
        .await
        .unwrap();
    let resp = conn.send(get_req("/peer_handler")).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(code_of(&body(resp).await), "peer_denied");
    let d = recorder.0.lock().unwrap().clone();
    assert_eq!(
        d.iter()
            .map(|(r, g, c)| (r.as_str(), *g, *c))
            .collect::<Vec<_>>(),
        vec![
            ("files:read", true, None),
            ("files:read", true, None),
            ("peer", true, None),
            ("files:read", false, Some("scope_not_granted")),
            ("files:read", false, Some("scope_not_granted")),
            ("peer", false, Some("peer_denied")),
        ]
    );
}

#[tokio::test]
async fn a_foreign_certificate_is_refused_in_the_handshake() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let foreign = Domain::new("example.org");
    let cred = credential(&foreign.ca, CLIENT, key(), &LeafOpts::default());
    let c = client(&w, Arc::new(MemoryCredentials::new(cred)), false);
    // TLS 1.3: the refusal surfaces at the handshake or on the first request.
    let result = async {
        let mut conn = c.connect(addr, "files").await?;
        conn.send(get_req("/peer")).await
    }
    .await;
    assert!(result.is_err(), "{result:?}");
}

/// A raw hyper connection over our TLS client configuration: any headers.
struct Raw {
    h1: Option<http1::SendRequest<Full<Bytes>>>,
    h2: Option<http2::SendRequest<Full<Bytes>>>,
    exporter: [u8; 32],
}

impl Raw {
    /// Whether the server closed the connection (h1: the connection task ended; h2: GOAWAY and
    /// close), polled for at most `T`.
    async fn closed_within_t(&self) -> bool {
        let until = tokio::time::Instant::now() + T;
        while tokio::time::Instant::now() < until {
            let closed = match (&self.h1, &self.h2) {
                (Some(s), _) => s.is_closed(),
                (_, Some(s)) => s.is_closed(),
                _ => true,
            };
            if closed {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn connect(w: &World, creds: Arc<MemoryCredentials>, addr: SocketAddr, h2: bool) -> Self {
        let mut config =
            http::client_config(creds, &w.cv, PeerPolicy::exact(peer(SERVER))).unwrap();
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("files").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let p = http::client_peer(tls.get_ref().1, &w.cv).unwrap();
        let io = TokioIo::new(tls);
        let mut raw = Raw {
            h1: None,
            h2: None,
            exporter: p.exporter(Role::Client),
        };
        if h2 {
            let (s, c) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(c);
            raw.h2 = Some(s);
        } else {
            let (s, c) = http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            raw.h1 = Some(s);
        }
        raw
    }

    fn proof(&self, key: &TaskKey, chain: Option<&str>) -> String {
        proof_for(self.exporter, key, chain)
    }

    async fn send(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> hyper::Result<::http::Response<hyper::body::Incoming>> {
        let mut b = ::http::Request::get(if self.h2.is_some() {
            format!("https://files{path}")
        } else {
            path.to_owned()
        });
        if self.h1.is_some() {
            b = b.header("host", "files");
        }
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let req = b.body(Full::new(Bytes::new())).unwrap();
        if let Some(s) = &mut self.h1 {
            s.ready().await?;
            tokio::time::timeout(T, s.send_request(req)).await.unwrap()
        } else {
            let s = self.h2.as_mut().unwrap();
            s.ready().await?;
            tokio::time::timeout(T, s.send_request(req)).await.unwrap()
        }
    }
}

fn proof_for(exporter: [u8; 32], key: &TaskKey, chain: Option<&str>) -> String {
    let n = now();
    let mut b = ProofBuilder::new(
        &SpiffeId::parse(CLIENT).unwrap(),
        &SpiffeId::parse(SERVER).unwrap(),
        Role::Client,
        exporter,
        n,
        n + 60,
    );
    if let Some(c) = chain {
        b = b.chain(c);
    }
    b.sign(key).unwrap()
}

async fn status_code(
    resp: ::http::Response<hyper::body::Incoming>,
) -> (u16, String, Option<String>) {
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let code = code_of(&body(resp).await);
    (status, code, challenge)
}

#[tokio::test]
async fn bad_headers_get_their_codes_and_statuses() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let chain = chain.unwrap();
    for h2 in [false, true] {
        let mut raw = Raw::connect(&w, creds.clone(), addr, h2).await;
        let proof = raw.proof(&k, Some(&chain));
        // Duplicated headers.
        let r = raw
            .send(
                "/whoami",
                &[("agentid-proof", &proof), ("agentid-proof", &proof)],
            )
            .await
            .unwrap();
        assert_eq!(status_code(r).await, (400, "bad_header".into(), None));
        let r = raw
            .send(
                "/whoami",
                &[
                    ("agentid-chain", &chain),
                    ("agentid-chain", &chain),
                    ("agentid-proof", &proof),
                ],
            )
            .await
            .unwrap();
        assert_eq!(status_code(r).await, (400, "bad_header".into(), None));
        // An oversized proof.
        let big_proof = "a".repeat(8193);
        let r = raw
            .send("/whoami", &[("agentid-proof", &big_proof)])
            .await
            .unwrap();
        assert_eq!(status_code(r).await, (400, "bad_header".into(), None));
        // A comma-joined value.
        let joined = format!("{proof},{proof}");
        let r = raw
            .send("/whoami", &[("agentid-proof", &joined)])
            .await
            .unwrap();
        assert_eq!(status_code(r).await.1, "bad_header");
        // An oversized chain: ours, before hyper's own limit.
        let big = "a".repeat(16385);
        let r = raw
            .send(
                "/whoami",
                &[("agentid-chain", &big), ("agentid-proof", &proof)],
            )
            .await
            .unwrap();
        assert_eq!(status_code(r).await, (431, "chain_too_large".into(), None));
        // A chain without a proof.
        let r = raw
            .send("/whoami", &[("agentid-chain", &chain)])
            .await
            .unwrap();
        assert_eq!(
            status_code(r).await,
            (
                401,
                "proof_missing".into(),
                Some("Agentid error=\"proof_missing\"".into())
            )
        );
        // None of these moved the connection: the real presentation still works.
        let r = raw
            .send(
                "/scope",
                &[("agentid-chain", &chain), ("agentid-proof", &proof)],
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "h2={h2}");
        assert!(r.headers().contains_key("agentid-proof"));
        body(r).await;
    }
}

#[tokio::test]
async fn a_different_presentation_fails_the_connection() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let chain = chain.unwrap();
    for h2 in [false, true] {
        let mut raw = Raw::connect(&w, creds.clone(), addr, h2).await;
        let proof = raw.proof(&k, Some(&chain));
        let r = raw
            .send(
                "/scope",
                &[("agentid-chain", &chain), ("agentid-proof", &proof)],
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        body(r).await;
        // A fresh proof is a different presentation.
        let other = raw.proof(&k, Some(&chain));
        let r = raw
            .send(
                "/scope",
                &[("agentid-chain", &chain), ("agentid-proof", &other)],
            )
            .await
            .unwrap();
        if !h2 {
            assert_eq!(r.headers().get("connection").unwrap(), "close");
        }
        assert_eq!(
            status_code(r).await,
            (
                401,
                "presentation_changed".into(),
                Some("Agentid error=\"presentation_changed\"".into())
            )
        );
        // Later requests, even malformed ones, get the stored code, or find the connection
        // closed.
        let bad: &[(&str, &str)] = &[("agentid-proof", "x"), ("agentid-proof", "y")];
        for headers in [&[][..], bad] {
            match raw.send("/scope", headers).await {
                Ok(r) => assert_eq!(status_code(r).await.1, "presentation_changed"),
                Err(e) => assert!(
                    e.is_closed() || e.is_canceled() || e.to_string().contains("clos"),
                    "{e}"
                ),
            }
        }
    }
}

#[tokio::test]
async fn proofs_bound_to_another_connection_are_refused() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let chain = chain.unwrap();
    let mut first = Raw::connect(&w, creds.clone(), addr, true).await;
    let proof = first.proof(&k, Some(&chain));
    let r = first
        .send(
            "/scope",
            &[("agentid-chain", &chain), ("agentid-proof", &proof)],
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    body(r).await;
    // The same proof replayed on a second connection: refused, and that connection is failed
    // (HTTP/1.1: `Connection: close`; every later request gets the stored code or finds the
    // connection closed).
    let mut second = Raw::connect(&w, creds.clone(), addr, false).await;
    let r = second
        .send(
            "/scope",
            &[("agentid-chain", &chain), ("agentid-proof", &proof)],
        )
        .await
        .unwrap();
    assert_eq!(r.headers().get("connection").unwrap(), "close");
    assert_eq!(
        status_code(r).await,
        (
            401,
            "channel_binding_mismatch".into(),
            Some("Agentid error=\"channel_binding_mismatch\"".into())
        )
    );
    match second.send("/peer", &[]).await {
        Ok(r) => assert_eq!(status_code(r).await.1, "channel_binding_mismatch"),
        Err(e) => assert!(
            e.is_closed() || e.is_canceled() || e.is_incomplete_message(),
            "{e}"
        ),
    }
    assert!(second.closed_within_t().await);
    // The connection the proof was made for is unaffected.
    let r = first.send("/scope", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    body(r).await;
    // A proof made for another connection's exporter (never used there).
    let mut third = Raw::connect(&w, creds.clone(), addr, true).await;
    let foreign = proof_for([7u8; 32], &k, Some(&chain));
    let r = third
        .send(
            "/scope",
            &[("agentid-chain", &chain), ("agentid-proof", &foreign)],
        )
        .await
        .unwrap();
    assert_eq!(
        status_code(r).await,
        (
            401,
            "channel_binding_mismatch".into(),
            Some("Agentid error=\"channel_binding_mismatch\"".into())
        )
    );
    // HTTP/2: the failed connection answers later streams with the stored code (even one with
    // this connection's valid presentation), then goes away.
    let valid = third.proof(&k, Some(&chain));
    match third
        .send(
            "/scope",
            &[("agentid-chain", &chain), ("agentid-proof", &valid)],
        )
        .await
    {
        Ok(r) => assert_eq!(
            status_code(r).await,
            (
                401,
                "channel_binding_mismatch".into(),
                Some("Agentid error=\"channel_binding_mismatch\"".into())
            )
        ),
        Err(e) => assert!(
            e.is_closed() || e.is_canceled() || e.to_string().contains("refused"),
            "{e}"
        ),
    }
    assert!(third.closed_within_t().await);
    // A proof whose `cth` does not match the chain sent.
    let mut fourth = Raw::connect(&w, creds.clone(), addr, false).await;
    let no_cth = fourth.proof(&k, None);
    let r = fourth
        .send(
            "/scope",
            &[("agentid-chain", &chain), ("agentid-proof", &no_cth)],
        )
        .await
        .unwrap();
    assert_eq!(status_code(r).await.1, "chain_hash_mismatch");
}

#[tokio::test]
async fn h2_streams_racing_the_first_presentation_wait_for_it() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let chain = chain.unwrap();
    let raw = Raw::connect(&w, creds, addr, true).await;
    let proof = raw.proof(&k, Some(&chain));
    let mut sender = raw.h2.clone().unwrap();
    sender.ready().await.unwrap();
    let mk = |with: bool| {
        let mut b = ::http::Request::get("https://files/scope");
        if with {
            b = b
                .header("agentid-chain", &chain)
                .header("agentid-proof", &proof);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    // The presenting stream is opened first; the others race it without headers.
    let mut futs = vec![sender.send_request(mk(true))];
    for _ in 0..8 {
        futs.push(sender.send_request(mk(false)));
    }
    for (i, f) in futs.into_iter().enumerate() {
        let r = tokio::time::timeout(T, f).await.unwrap().unwrap();
        assert_eq!(r.status(), 200, "stream {i}");
        assert_eq!(r.headers().contains_key("agentid-proof"), i == 0);
        body(r).await;
    }
}

#[tokio::test]
async fn revocation_ends_the_connection_and_cuts_streams() {
    let w = World::new(true);
    let empty = w.a.revocation_list(1, |b| b);
    w.sv.apply_revocation_list(&empty).unwrap();
    w.cv.apply_revocation_list(&empty).unwrap();
    let addr = start(&w, None, options()).await;
    let (creds, k, _chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = client(&w, creds, false)
        .connect(addr, "files")
        .await
        .unwrap();
    let r = conn.send(get_req("/scope")).await.unwrap();
    assert_eq!(r.status(), 200);
    body(r).await;
    // A streaming response in flight.
    let mut streaming = conn.send(get_req("/stream")).await.unwrap().into_body();
    let first = tokio::time::timeout(T, streaming.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");

    let jkt = k.public_key().thumbprint();
    let _ = &k;
    let list = w.a.revocation_list(2, |b| b.revoke_key(&jkt, now() + 600));
    w.sv.apply_revocation_list(&list).unwrap();
    // The stream is cut (an error or its end), never left hanging.
    let next = tokio::time::timeout(T, streaming.frame()).await.unwrap();
    assert!(!matches!(next, Some(Ok(_))), "{next:?}");
    // New requests on that connection are refused (or find it closed).
    if let Ok(r) = conn.send(get_req("/scope")).await {
        assert_eq!(
            status_code(r).await,
            (
                401,
                "revoked".into(),
                Some("Agentid error=\"revoked\"".into())
            )
        );
    }
}

#[tokio::test]
async fn near_the_deadline_the_server_closes_gracefully_and_the_client_stops() {
    let w = World::new(false);
    // The server's close margin is longer than the client certificate's remaining life.
    let addr = start(
        &w,
        None,
        HttpOptions {
            close_margin: Duration::from_secs(3600),
            ..options()
        },
    )
    .await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds.clone(), addr, false).await;
    match raw.send("/peer", &[]).await {
        // The response leaves past the close point: it says so (whether or not the server's
        // timer has fired yet), and the server closes the connection.
        Ok(r) => {
            assert_eq!(r.headers().get("connection").unwrap(), "close");
            assert_eq!(r.status(), 200);
            body(r).await;
            assert!(raw.closed_within_t().await);
        }
        // The graceful close may win the race against the first request head.
        Err(e) => assert!(
            e.is_closed() || e.is_canceled() || e.is_incomplete_message(),
            "{e}"
        ),
    }
    // The agentid client keeps no connection past its margin.
    let c = HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(SERVER)))
        .close_margin(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut conn = c.connect(addr, "files").await.unwrap();
    assert!(!conn.is_usable());
    assert!(matches!(
        conn.send(get_req("/peer")).await,
        Err(agentid_transport::Error::CredentialExpired)
    ));
}

#[tokio::test]
async fn the_client_refuses_a_server_outside_its_chains_audience() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let k = key();
    let holder = agentid_protocol::TaskIdentity::parse(CLIENT).unwrap();
    let chain = w.a.grant_aud(
        &holder,
        &k,
        "files:read",
        Some(&["spiffe://example.org/svc/other"]),
    );
    let cred = credential(&w.a.ca, CLIENT, k, &LeafOpts::default()).with_chain(chain.as_str());
    let c = client(&w, Arc::new(MemoryCredentials::new(cred)), false);
    let e = c.connect(addr, "files").await.unwrap_err();
    assert_eq!(
        e.protocol_code(),
        Some(agentid_protocol::ErrorCode::AudienceMismatch)
    );
}

#[tokio::test]
async fn server_tls_config_has_no_resumption_and_offers_h2_and_http11() {
    let w = World::new(false);
    let cfg = http::server_config(
        w.server_creds.clone(),
        &w.sv,
        PeerPolicy::trust_domain(w.a.td.clone()),
    )
    .unwrap();
    assert_eq!(
        cfg.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert_eq!(cfg.send_tls13_tickets, 0);
    assert!(!cfg.session_storage.can_cache());
    assert_eq!(cfg.max_early_data_size, 0);
    let (creds, _, _) = w.client(CLIENT, None, &LeafOpts::default());
    let ccfg = http::client_config(creds, &w.cv, PeerPolicy::exact(peer(SERVER))).unwrap();
    assert!(!ccfg.enable_early_data);
    assert_eq!(
        ccfg.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

/// reqwest set up as the `http` module documents (our rustls config, no provider of its own):
/// identity-only calls pass peer routes and never scope routes.
#[tokio::test]
async fn reqwest_with_the_preconfigured_config_is_identity_only() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let tls = http::client_config(creds, &w.cv, PeerPolicy::exact(peer(SERVER))).unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("files.example.org", addr)
        .timeout(T)
        .build()
        .unwrap();
    let base = format!("https://files.example.org:{}", addr.port());
    let r = client.get(format!("{base}/peer")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), format!("{CLIENT} chain="));
    let r = client.get(format!("{base}/scope")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(code_of(&r.text().await.unwrap()), "scope_not_granted");
    // A chain copied into a header without the proof that binds it is refused.
    let r = client
        .get(format!("{base}/peer"))
        .header("agentid-chain", "a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Agentid error=\"proof_missing\""
    );
}

/// At the deadline (here the client certificate's `notAfter`, 3 s away) a streaming response is
/// cut and the connection refuses further requests.
#[tokio::test]
async fn at_the_deadline_streaming_bodies_are_cut() {
    let w = World::new(false);
    let addr = start(
        &w,
        None,
        HttpOptions {
            close_margin: Duration::from_secs(1),
            ..options()
        },
    )
    .await;
    let short = LeafOpts {
        not_after: Some(3),
        ..LeafOpts::default()
    };
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &short);
    let mut raw = Raw::connect(&w, creds, addr, true).await;
    let r = raw.send("/stream", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut streaming = r.into_body();
    let first = tokio::time::timeout(T, streaming.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    // Bounded wait: the cut comes at the deadline, well within T.
    let next = tokio::time::timeout(T, streaming.frame()).await.unwrap();
    assert!(!matches!(next, Some(Ok(_))), "{next:?}");
    if let Ok(r) = raw.send("/peer", &[]).await {
        assert_eq!(status_code(r).await.1, "credential_expired");
    }
}

/// A bundle change that removes the anchor of the peer's certificate ends its connections
/// (`bad_certificate`), as it ends framed sessions.
#[tokio::test]
async fn a_bundle_change_revalidates_the_peer_certificate() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds, addr, false).await;
    let r = raw.send("/peer", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    body(r).await;
    // The domain's x509 authority replaced by another CA (a higher sequence).
    let other = Ca::new("example.org");
    let bundle = agentid_protocol::TrustBundle::new(w.a.td.clone(), 2)
        .add_x509_authority(other.der.to_vec(), other.key.public_key())
        .add_grant_key(w.a.grant_key.public_key().clone())
        .add_revocation_key(w.a.rev_key.public_key().clone());
    w.sv.update_bundle(bundle).unwrap();
    // The connection's watcher may close the idle connection before the request is read.
    match raw.send("/peer", &[]).await {
        Ok(r) => assert_eq!(
            status_code(r).await,
            (
                401,
                "bad_certificate".into(),
                Some("Agentid error=\"bad_certificate\"".into())
            )
        ),
        Err(e) => assert!(
            e.is_incomplete_message() || e.is_closed() || e.is_canceled(),
            "{e}"
        ),
    }
}

/// An idle connection is closed by the server on HTTP/1.1 and HTTP/2 (`idle_timeout`), while a
/// connection with a response still streaming is not.
#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let w = World::new(false);
    let addr = start(
        &w,
        None,
        HttpOptions {
            idle_timeout: Duration::from_secs(1),
            ..options()
        },
    )
    .await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    for h2 in [false, true] {
        let mut raw = Raw::connect(&w, creds.clone(), addr, h2).await;
        let r = raw.send("/peer", &[]).await.unwrap();
        assert_eq!(r.status(), 200);
        body(r).await;
        assert!(raw.closed_within_t().await, "h2={h2}: idle connection kept");
    }
    // A streaming response keeps the HTTP/2 connection in use past the idle timeout.
    let mut raw = Raw::connect(&w, creds.clone(), addr, true).await;
    let r = raw.send("/stream", &[]).await.unwrap();
    let mut streaming = r.into_body();
    let first = tokio::time::timeout(T, streaming.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = raw.send("/peer", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    body(r).await;
    drop(streaming);
}

/// HTTP/1.1 keep-alive: hyper's header read timeout also runs while the connection waits for
/// the next request head, so an idle HTTP/1.1 connection closes after it even when the idle
/// timeout is longer.
#[tokio::test]
async fn an_idle_h1_keep_alive_connection_closes_after_the_header_read_timeout() {
    let w = World::new(false);
    let addr = start(
        &w,
        None,
        HttpOptions {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            ..options()
        },
    )
    .await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds, addr, false).await;
    let r = raw.send("/peer", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    body(r).await;
    assert!(raw.closed_within_t().await);
}

/// A first response slower than half the server's proof lifetime carries a proof signed when
/// the response left, not the one signed at verification; the agentid client (no clock skew
/// allowed) accepts it.
#[tokio::test]
async fn a_slow_first_response_carries_a_fresh_server_proof() {
    let mut w = World::new(false);
    w.cv = verification_with(CLIENT, &[&w.a], |c| {
        c.skew(0)
            .unwrap()
            .danger_accept_missing_or_stale_revocations()
    });
    let addr = start(
        &w,
        None,
        HttpOptions {
            proof_lifetime: Duration::from_secs(2),
            ..options()
        },
    )
    .await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    for h1 in [true, false] {
        let mut conn = client(&w, creds.clone(), h1)
            .connect(addr, "files")
            .await
            .unwrap();
        let resp = conn.send(get_req("/slow")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let proof = resp.headers()["agentid-proof"].to_str().unwrap().to_owned();
        let finished: u64 = body(resp).await.parse().unwrap();
        assert!(iat_of(&proof) >= finished, "h1={h1}: a stale server proof");
        assert_eq!(conn.server_proof(), Some(proof.as_str()));
    }
}

/// The agentid client signs a fresh proof when its connection's first request comes after half
/// the proof's lifetime (the server allows no clock skew here, so a stale one would fail).
#[tokio::test]
async fn a_first_request_sent_late_presents_a_fresh_client_proof() {
    let mut w = World::new(false);
    w.sv = verification_with(SERVER, &[&w.a], |c| {
        c.skew(0)
            .unwrap()
            .danger_accept_missing_or_stale_revocations()
    });
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let c = HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(SERVER)))
        .proof_lifetime(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut conn = c.connect(addr, "files").await.unwrap();
    let signed_at_connect = conn.client_proof().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let sent_after = now();
    let resp = conn.send(get_req("/scope")).await.unwrap();
    assert_eq!(resp.status(), 200);
    body(resp).await;
    assert_ne!(conn.client_proof(), signed_at_connect);
    assert!(iat_of(conn.client_proof()) >= sent_after);
    // Once presented, the bytes stay: later requests are served under the same presentation.
    let presented = conn.client_proof().to_owned();
    let resp = conn.send(get_req("/scope")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.client_proof(), presented);
}

/// A request whose handler is still running when the connection's deadline passes gets
/// `credential_expired`, not the handler's response: the deadline holds for the moment the
/// response leaves.
#[tokio::test]
async fn a_response_finished_after_the_deadline_is_refused() {
    let w = World::new(false);
    let addr = start(
        &w,
        None,
        HttpOptions {
            close_margin: Duration::from_secs(1),
            // Long enough that the connection is still there when the handler finishes.
            cut_grace: Duration::from_secs(20),
            ..options()
        },
    )
    .await;
    let short = LeafOpts {
        not_after: Some(3),
        ..LeafOpts::default()
    };
    for h2 in [false, true] {
        // A certificate per round: each has 3 s left when its connection starts.
        let (creds, _k, _) = w.client(CLIENT, None, &short);
        let mut raw = Raw::connect(&w, creds, addr, h2).await;
        let req = raw.send("/past_deadline", &[]);
        let r = tokio::time::timeout(Duration::from_secs(30), req)
            .await
            .unwrap()
            .unwrap();
        if !h2 {
            assert_eq!(r.headers().get("connection").unwrap(), "close");
        }
        assert_eq!(
            status_code(r).await,
            (
                401,
                "credential_expired".into(),
                Some("Agentid error=\"credential_expired\"".into())
            ),
            "h2={h2}"
        );
    }
}

/// HTTP/2 streams racing a first presentation that fails: the presenting stream gets the
/// verification's code, every racing stream the stored code (or is refused by the GOAWAY),
/// and no stream is served.
#[tokio::test]
async fn h2_streams_racing_a_failing_presentation_get_its_code() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let chain = chain.unwrap();
    let raw = Raw::connect(&w, creds, addr, true).await;
    // Bound to another connection's exporter.
    let proof = proof_for([9u8; 32], &k, Some(&chain));
    let mut sender = raw.h2.clone().unwrap();
    sender.ready().await.unwrap();
    let mk = |with: bool| {
        let mut b = ::http::Request::get("https://files/scope");
        if with {
            b = b
                .header("agentid-chain", &chain)
                .header("agentid-proof", &proof);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let mut futs = vec![sender.send_request(mk(true))];
    for i in 0..8 {
        futs.push(sender.send_request(mk(i % 2 == 0)));
    }
    for (i, f) in futs.into_iter().enumerate() {
        match tokio::time::timeout(T, f).await.unwrap() {
            Ok(r) => assert_eq!(
                status_code(r).await,
                (
                    401,
                    "channel_binding_mismatch".into(),
                    Some("Agentid error=\"channel_binding_mismatch\"".into())
                ),
                "stream {i}"
            ),
            // Streams the server had not yet received when it sent GOAWAY.
            Err(e) => assert!(i > 0, "the presenting stream failed: {e}"),
        }
    }
    assert!(raw.closed_within_t().await);
}

/// A header list over the server's HTTP limit (32 KiB) is refused by hyper itself before any
/// agentid check: HTTP/1.1 gets a bare 431 and the connection closes; HTTP/2 gets 431 or a
/// reset stream. The server keeps serving new connections.
#[tokio::test]
async fn a_header_list_over_the_http_limit_is_refused_and_nothing_breaks() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let huge = "a".repeat(40 * 1024);
    for h2 in [false, true] {
        let mut raw = Raw::connect(&w, creds.clone(), addr, h2).await;
        match raw.send("/peer", &[("x-filler", &huge)]).await {
            Ok(r) => assert_eq!(r.status(), 431, "h2={h2}"),
            Err(e) => assert!(h2, "HTTP/1.1 must answer 431: {e}"),
        }
        if !h2 {
            assert!(raw.closed_within_t().await);
        }
        let mut fresh = Raw::connect(&w, creds.clone(), addr, h2).await;
        let r = fresh.send("/peer", &[]).await.unwrap();
        assert_eq!(r.status(), 200);
        body(r).await;
    }
}

/// The server's proof is signed with the credential of the connection's handshake: a rotation
/// between the handshake and the first request does not make the client see a proof from a key
/// other than the certificate's (new connections get the new credential).
#[tokio::test]
async fn a_rotation_before_the_first_request_keeps_the_handshake_credential() {
    for h1 in [true, false] {
        let w = World::new(false);
        let addr = start(&w, None, options()).await;
        let (creds, _k, _) = w.client(CLIENT, Some("files:read files:list"), &LeafOpts::default());
        let c = client(&w, creds, h1);
        let mut conn = c.connect(addr, "files.example.org").await.unwrap();
        let first_key = conn.peer().info.public_key.clone();
        let rotated = credential(&w.a.ca, SERVER, key(), &LeafOpts::default());
        w.server_creds.rotate(rotated, &w.sv.trust_store()).unwrap();

        let resp = conn.send(get_req("/scope")).await.unwrap();
        assert_eq!(resp.status(), 200, "h1={h1}");
        body(resp).await;
        assert!(
            conn.server_proof().is_some(),
            "h1={h1}: server proof verified"
        );

        let mut later = c.connect(addr, "files.example.org").await.unwrap();
        assert_ne!(later.peer().info.public_key, first_key, "h1={h1}: rotated");
        let resp = later.send(get_req("/scope")).await.unwrap();
        assert_eq!(resp.status(), 200, "h1={h1}");
        body(resp).await;
        assert!(later.server_proof().is_some());
    }
}

/// Serves `app` like [`start`] (no sink), with `o`.
async fn start_app(w: &World, app: Router, o: HttpOptions) -> SocketAddr {
    let server = HttpServer::builder(
        w.server_creds.clone(),
        w.sv.clone(),
        PeerPolicy::trust_domain(w.a.td.clone()),
    )
    .options(o)
    .build()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener, app).await });
    addr
}

/// What a handler's two checks returned: before and after the revocation.
type HeldChecks = (Result<(), &'static str>, Result<(), &'static str>);

/// An `Authorizer` a handler holds across a revocation of its peer: the check after it
/// refuses with `revoked` (the connection checks run first on every call), and the response
/// that leaves after it is refused too.
#[tokio::test]
async fn an_authorizer_held_across_a_revocation_refuses_its_next_check() {
    let w = World::new(true);
    let empty = w.a.revocation_list(1, |b| b);
    w.sv.apply_revocation_list(&empty).unwrap();
    w.cv.apply_revocation_list(&empty).unwrap();
    let entered = Arc::new(tokio::sync::Notify::new());
    let resume = Arc::new(tokio::sync::Notify::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<HeldChecks>();
    let scope = Scope::parse("files:read").unwrap();
    let handler = {
        let (entered, resume) = (entered.clone(), resume.clone());
        move |a: Authorizer| {
            let (entered, resume, tx, scope) =
                (entered.clone(), resume.clone(), tx.clone(), scope.clone());
            async move {
                let before = a.authorize(&scope).map_err(|r| r.code());
                entered.notify_one();
                resume.notified().await;
                let after = a.authorize(&scope).map_err(|r| r.code());
                let _ = tx.send((before, after));
                "held"
            }
        }
    };
    let app = Router::new().route("/held", get(handler));
    // The connection outlives the test once its authority ends (no drop after the cut grace).
    let o = HttpOptions {
        cut_grace: Duration::from_secs(60),
        ..options()
    };
    let addr = start_app(&w, app, o).await;
    let (creds, k, _chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = client(&w, creds, true)
        .connect(addr, "files")
        .await
        .unwrap();
    let sent = tokio::spawn(async move {
        match conn.send(get_req("/held")).await {
            Ok(r) => Some(status_code(r).await),
            Err(_) => None,
        }
    });
    tokio::time::timeout(T, entered.notified()).await.unwrap();
    let jkt = k.public_key().thumbprint();
    let list = w.a.revocation_list(2, |b| b.revoke_key(&jkt, now() + 600));
    w.sv.apply_revocation_list(&list).unwrap();
    resume.notify_one();
    let (before, after) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(before, Ok(()));
    assert_eq!(after, Err("revoked"));
    let response = tokio::time::timeout(T, sent).await.unwrap().unwrap();
    // The response leaves after the revocation: refused (or the connection is cut first).
    if let Some(r) = response {
        assert_eq!(
            r,
            (
                401,
                "revoked".into(),
                Some("Agentid error=\"revoked\"".into())
            )
        );
    }
}

/// A revocation between two requests on one keep-alive connection: the second is not served
/// (401 `revoked`, or the connection is already closed) and its scope is never granted, on
/// both forms of `RequireScope`.
#[tokio::test]
async fn a_revocation_between_two_requests_refuses_the_second() {
    for path in ["/scope", "/scope_handler"] {
        let w = World::new(true);
        let empty = w.a.revocation_list(1, |b| b);
        w.sv.apply_revocation_list(&empty).unwrap();
        w.cv.apply_revocation_list(&empty).unwrap();
        let rec = Arc::new(Recorder::default());
        let addr = start(&w, Some(rec.clone()), options()).await;
        let (creds, k, _chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
        let mut conn = client(&w, creds, true)
            .connect(addr, "files")
            .await
            .unwrap();
        let r = conn.send(get_req(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        body(r).await;
        let granted = |rec: &Recorder| rec.0.lock().unwrap().iter().filter(|d| d.1).count();
        assert_eq!(granted(&rec), 1, "{path}");
        let jkt = k.public_key().thumbprint();
        let list = w.a.revocation_list(2, |b| b.revoke_key(&jkt, now() + 600));
        w.sv.apply_revocation_list(&list).unwrap();
        if let Ok(r) = conn.send(get_req(path)).await {
            assert_eq!(
                status_code(r).await,
                (
                    401,
                    "revoked".into(),
                    Some("Agentid error=\"revoked\"".into())
                ),
                "{path}"
            );
        }
        assert_eq!(granted(&rec), 1, "{path}: a grant after the revocation");
    }
}
