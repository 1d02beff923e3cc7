//! The HTTP binding end to end (spec/PROTOCOL.md section 22): an axum service behind
//! `HttpServer`, the agentid `HttpClient`, and raw hyper clients that send what the library
//! would refuse to send.
#![cfg(test)]

#[path = "support/decisions.rs"]
mod decisions;
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{ProofBuilder, Role, Scope, SpiffeId, TaskKey};
use agentid_transport::http::{
    self, Authorizer, DecisionSink, HttpClient, HttpClientConnection, HttpOptions, HttpServer,
    RequirePeer, RequireScope,
};
use agentid_transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use axum::handler::Handler as _;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use decisions::Recorder;
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
        let server_creds = credentials(&a.ca, SERVER);
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

    /// A world with revocation checking on (`strict`), both sides holding an empty list.
    fn revocable() -> Self {
        let w = Self::new(true);
        let empty = w.a.revocation_list(1, |b| b);
        w.sv.apply_revocation_list(&empty).unwrap();
        w.cv.apply_revocation_list(&empty).unwrap();
        w
    }

    /// The server applies a newer list that revokes `k`.
    fn revoke(&self, k: &TaskKey) {
        let jkt = k.public_key().thumbprint();
        let list = self
            .a
            .revocation_list(2, |b| b.revoke_key(&jkt, now() + 600));
        self.sv.apply_revocation_list(&list).unwrap();
    }

    /// Verification for `own` that allows no clock skew (revocation lists optional).
    fn without_skew(&self, own: &str) -> Arc<PeerVerification> {
        verification_with(own, &[&self.a], |c| {
            c.skew(0)
                .unwrap()
                .danger_accept_missing_or_stale_revocations()
        })
    }
}

/// A certificate with `secs` of life left.
fn expiring_in(secs: i64) -> LeafOpts {
    LeafOpts {
        not_after: Some(secs),
        ..LeafOpts::default()
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
    start_app(w, sink, app(), o).await
}

/// [`start`] without a sink, with [`options`] as `f` changes them.
async fn start_with(w: &World, f: impl FnOnce(&mut HttpOptions)) -> SocketAddr {
    let mut o = options();
    f(&mut o);
    start(w, None, o).await
}

/// Serves `app` on 127.0.0.1 with the world's server, `o` and, if given, the decision `sink`.
async fn start_app(
    w: &World,
    sink: Option<Arc<dyn DecisionSink>>,
    app: Router,
    o: HttpOptions,
) -> SocketAddr {
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
    tokio::spawn(async move { server.serve(listener, app).await });
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

/// An agentid client connection of `creds` to `addr` (HTTP/1.1 only if `h1`).
async fn connect(
    w: &World,
    creds: Arc<MemoryCredentials>,
    h1: bool,
    addr: SocketAddr,
) -> HttpClientConnection {
    client(w, creds, h1).connect(addr, "files").await.unwrap()
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

/// A response that must be 200; its body.
async fn served(resp: ::http::Response<hyper::body::Incoming>) -> String {
    assert_eq!(resp.status(), 200);
    body(resp).await
}

/// GET `path` on `conn`, which must answer 200; the body.
async fn get_ok(conn: &mut HttpClientConnection, path: &str) -> String {
    let resp = conn.send(get_req(path)).await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    body(resp).await
}

/// GET `path` on `conn`, which must answer 403 with `code`, and as a refusal without the
/// server's proof or chain (spec 22.4 step 3), also when the request presented.
async fn get_denied(conn: &mut HttpClientConnection, path: &str, code: &str) {
    let resp = conn.send(get_req(path)).await.unwrap();
    assert_eq!(resp.status(), 403, "{path}");
    assert!(!resp.headers().contains_key("agentid-proof"), "{path}");
    assert!(!resp.headers().contains_key("agentid-chain"), "{path}");
    assert_eq!(code_of(&body(resp).await), code, "{path}");
}

fn code_of(s: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(s).unwrap();
    v["code"].as_str().unwrap().to_owned()
}

/// Reads the first frame of a `/stream` body (bounded): "first".
async fn first_frame(streaming: &mut hyper::body::Incoming) {
    let first = tokio::time::timeout(T, streaming.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
}

/// The rest of a streaming body is cut (an error or its end) within `T`, never left hanging.
async fn assert_cut(streaming: &mut hyper::body::Incoming) {
    let next = tokio::time::timeout(T, streaming.frame()).await.unwrap();
    assert!(!matches!(next, Some(Ok(_))), "{next:?}");
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
        get_ok(&mut conn, "/peer").await;
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
    let mut conn = connect(&w, creds, false, addr).await;
    // The client presents a proof without a chain.
    assert_eq!(get_ok(&mut conn, "/peer").await, format!("{CLIENT} chain="));
    get_denied(&mut conn, "/scope", "scope_not_granted").await;

    // Another agent of the trust domain passes TLS but not the peer route.
    let (creds, _k, _) = w.client(OTHER, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds, true, addr).await;
    get_denied(&mut conn, "/peer", "peer_denied").await;
    // The refusal carried no proof, so the client still presents; the next request is served
    // under the same (cached) presentation and carries the server's proof.
    assert!(conn.server_proof().is_none());
    get_ok(&mut conn, "/scope").await;
    assert!(conn.server_proof().is_some());
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

/// Section 13 is one verdict in every model: a request that is not a valid request (a requested
/// scope with `*`, rule A1; an amount above 2^53 - 1, section 3.3, before A1) is refused with that
/// code whether or not the peer presented a chain, exactly as the vectors
/// `chainless-peer-requests-wildcard` and `input-amount-above-max-safe-integer` and a framed
/// session have it; only a valid request of a chain-less peer is `scope_not_granted`.
#[tokio::test]
async fn a_malformed_request_gets_its_own_code_whether_or_not_the_peer_presented_a_chain() {
    use std::collections::BTreeMap;
    async fn decide(a: Authorizer, scope: &str, amount: Option<u64>) -> String {
        let amounts: BTreeMap<String, u64> = amount
            .map(|n| ("calls".to_owned(), n))
            .into_iter()
            .collect();
        match a.authorize_with_limits(&Scope::parse(scope).unwrap(), &amounts) {
            Ok(()) => "granted".to_owned(),
            Err(r) => format!("{} {}", r.status().as_u16(), r.code()),
        }
    }
    let app = Router::new()
        .route("/wildcard", get(|a: Authorizer| decide(a, "files:*", None)))
        .route(
            "/amount",
            get(|a: Authorizer| decide(a, "files:read", Some(1 << 53))),
        )
        .route("/valid", get(|a: Authorizer| decide(a, "files:read", None)));
    let w = World::new(false);
    let addr = start_app(&w, None, app, options()).await;
    for scope in [Some("files:list"), None] {
        let (creds, _k, _) = w.client(CLIENT, scope, &LeafOpts::default());
        let mut conn = connect(&w, creds, false, addr).await;
        assert_eq!(
            get_ok(&mut conn, "/wildcard").await,
            "403 bad_scope",
            "chain {scope:?}"
        );
        assert_eq!(
            get_ok(&mut conn, "/amount").await,
            "403 bad_config",
            "chain {scope:?}"
        );
        assert_eq!(
            get_ok(&mut conn, "/valid").await,
            "403 scope_not_granted",
            "chain {scope:?}"
        );
    }
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
    let mut conn = connect(&w, creds, false, addr).await;
    for _ in 0..2 {
        assert_eq!(
            get_ok(&mut conn, "/scope_handler").await,
            format!("{CLIENT} chain=files:read")
        );
    }
    get_ok(&mut conn, "/peer_handler").await;
    // A chain without it, and a chain-less peer: 403 `scope_not_granted`.
    for scope in [Some("files:list"), None] {
        let (creds, _k, _) = w.client(CLIENT, scope, &LeafOpts::default());
        let mut conn = connect(&w, creds, true, addr).await;
        get_denied(&mut conn, "/scope_handler", "scope_not_granted").await;
    }
    // Another agent: 403 `peer_denied` on the peer requirement.
    let (creds, _k, _) = w.client(OTHER, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds, false, addr).await;
    get_denied(&mut conn, "/peer_handler", "peer_denied").await;
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

/// A TLS connection to the server at `addr` with the client's certificate and agentid's
/// verifiers, offering `h2` or `http/1.1` only: no HTTP on it yet.
async fn raw_tls(
    w: &World,
    creds: Arc<MemoryCredentials>,
    addr: SocketAddr,
    h2: bool,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = http::client_config(creds, &w.cv, PeerPolicy::exact(peer(SERVER))).unwrap();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("files").unwrap(),
            tcp,
        )
        .await
        .unwrap()
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
        let tls = raw_tls(w, creds, addr, h2).await;
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

    /// Sends `path` with `chain` and `proof` as the agentid headers.
    async fn present(
        &mut self,
        path: &str,
        chain: &str,
        proof: &str,
    ) -> hyper::Result<::http::Response<hyper::body::Incoming>> {
        self.send(path, &[("agentid-chain", chain), ("agentid-proof", proof)])
            .await
    }

    /// HTTP/2: opens a `/scope` stream presenting `chain` and `proof`, then eight streams racing
    /// it (stream `i` of those presents the same again if `again(i)`, else nothing), and awaits
    /// each response in order (bounded).
    async fn race(
        &self,
        chain: &str,
        proof: &str,
        again: impl Fn(usize) -> bool,
    ) -> Vec<hyper::Result<::http::Response<hyper::body::Incoming>>> {
        let mut sender = self.h2.clone().unwrap();
        sender.ready().await.unwrap();
        let mk = |with: bool| {
            let mut b = ::http::Request::get("https://files/scope");
            if with {
                b = b
                    .header("agentid-chain", chain)
                    .header("agentid-proof", proof);
            }
            b.body(Full::new(Bytes::new())).unwrap()
        };
        let mut streams = vec![sender.send_request(mk(true))];
        for i in 0..8 {
            streams.push(sender.send_request(mk(again(i))));
        }
        let mut responses = Vec::new();
        for s in streams {
            responses.push(tokio::time::timeout(T, s).await.unwrap());
        }
        responses
    }
}

fn proof_for(exporter: [u8; 32], key: &TaskKey, chain: Option<&str>) -> String {
    let n = now();
    let (client, server) = (
        SpiffeId::parse(CLIENT).unwrap(),
        SpiffeId::parse(SERVER).unwrap(),
    );
    let mut b = ProofBuilder::new(&client, &server, Role::Client, exporter, n, n + 60);
    if let Some(c) = chain {
        b = b.chain(c);
    }
    b.sign(key).unwrap()
}

/// A server, and a client credential with a chain granting `files:read`.
struct Chained {
    w: World,
    addr: SocketAddr,
    creds: Arc<MemoryCredentials>,
    k: TaskKey,
    chain: String,
}

impl Chained {
    async fn start() -> Self {
        let w = World::new(false);
        let addr = start(&w, None, options()).await;
        let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
        Self {
            chain: chain.unwrap(),
            w,
            addr,
            creds,
            k,
        }
    }

    /// A raw connection of the client (HTTP/2 if `h2`).
    async fn raw(&self, h2: bool) -> Raw {
        Raw::connect(&self.w, self.creds.clone(), self.addr, h2).await
    }

    /// A proof of the chain for `raw`'s connection.
    fn proof(&self, raw: &Raw) -> String {
        raw.proof(&self.k, Some(&self.chain))
    }
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

/// What [`status_code`] gives for a 401 refusal with `code`: the code in the body and in the
/// challenge.
fn refused(code: &str) -> (u16, String, Option<String>) {
    (401, code.into(), Some(format!("Agentid error=\"{code}\"")))
}

/// Whether `e` says the server ended the connection: closed, canceled, or what `also` allows.
fn gone(e: &hyper::Error, also: impl Fn(&hyper::Error) -> bool) -> bool {
    e.is_closed() || e.is_canceled() || also(e)
}

/// A request on a failed connection: refused with the stored `code`, or it finds the
/// connection [`gone`].
async fn refused_or_gone(
    sent: hyper::Result<::http::Response<hyper::body::Incoming>>,
    code: &str,
    also: impl Fn(&hyper::Error) -> bool,
) {
    match sent {
        Ok(r) => assert_eq!(status_code(r).await, refused(code)),
        Err(e) => assert!(gone(&e, also), "{e}"),
    }
}

#[tokio::test]
async fn bad_headers_get_their_codes_and_statuses() {
    let c = Chained::start().await;
    let chain = c.chain.as_str();
    let big_proof = "a".repeat(8193);
    let big_chain = "a".repeat(16385);
    let bad_header = || (400, "bad_header".to_owned(), None);
    for h2 in [false, true] {
        let mut raw = c.raw(h2).await;
        let proof = c.proof(&raw);
        let joined = format!("{proof},{proof}");
        let proof = proof.as_str();
        // (case, headers, expected status, code and challenge)
        let cases = [
            (
                "the proof twice",
                vec![("agentid-proof", proof), ("agentid-proof", proof)],
                bad_header(),
            ),
            (
                "the chain twice",
                vec![
                    ("agentid-chain", chain),
                    ("agentid-chain", chain),
                    ("agentid-proof", proof),
                ],
                bad_header(),
            ),
            (
                "an oversized proof",
                vec![("agentid-proof", &big_proof)],
                bad_header(),
            ),
            (
                "a comma-joined proof",
                vec![("agentid-proof", &joined)],
                bad_header(),
            ),
            // Ours, before hyper's own limit.
            (
                "an oversized chain",
                vec![("agentid-chain", &big_chain), ("agentid-proof", proof)],
                (431, "chain_too_large".into(), None),
            ),
            (
                "a chain without a proof",
                vec![("agentid-chain", chain)],
                refused("proof_missing"),
            ),
        ];
        for (case, headers, expected) in cases {
            let r = raw.send("/whoami", &headers).await;
            let r = r.unwrap_or_else(|e| panic!("h2={h2}, {case}: {e}"));
            assert_eq!(status_code(r).await, expected, "h2={h2}, {case}");
        }
        // None of these moved the connection: the real presentation still works.
        let r = raw.present("/scope", chain, proof).await.unwrap();
        assert_eq!(r.status(), 200, "h2={h2}");
        assert!(r.headers().contains_key("agentid-proof"));
        body(r).await;
    }
}

#[tokio::test]
async fn a_different_presentation_fails_the_connection() {
    let c = Chained::start().await;
    for h2 in [false, true] {
        let mut raw = c.raw(h2).await;
        let proof = c.proof(&raw);
        served(raw.present("/scope", &c.chain, &proof).await.unwrap()).await;
        // A fresh proof is a different presentation.
        let other = c.proof(&raw);
        let r = raw.present("/scope", &c.chain, &other).await.unwrap();
        if !h2 {
            assert_eq!(r.headers().get("connection").unwrap(), "close");
        }
        assert_eq!(status_code(r).await, refused("presentation_changed"));
        // Later requests, even malformed ones, get the stored code, or find the connection
        // closed.
        let bad: &[(&str, &str)] = &[("agentid-proof", "x"), ("agentid-proof", "y")];
        for headers in [&[][..], bad] {
            let sent = raw.send("/scope", headers).await;
            refused_or_gone(sent, "presentation_changed", |e| {
                e.to_string().contains("clos")
            })
            .await;
        }
    }
}

#[tokio::test]
async fn proofs_bound_to_another_connection_are_refused() {
    let c = Chained::start().await;
    let mut first = c.raw(true).await;
    let proof = c.proof(&first);
    served(first.present("/scope", &c.chain, &proof).await.unwrap()).await;
    // The same proof replayed on a second connection: refused, and that connection is failed
    // (HTTP/1.1: `Connection: close`; every later request gets the stored code or finds the
    // connection closed).
    let mut second = c.raw(false).await;
    let r = second.present("/scope", &c.chain, &proof).await.unwrap();
    assert_eq!(r.headers().get("connection").unwrap(), "close");
    assert_eq!(status_code(r).await, refused("channel_binding_mismatch"));
    let sent = second.send("/peer", &[]).await;
    refused_or_gone(
        sent,
        "channel_binding_mismatch",
        hyper::Error::is_incomplete_message,
    )
    .await;
    assert!(second.closed_within_t().await);
    // The connection the proof was made for is unaffected.
    served(first.send("/scope", &[]).await.unwrap()).await;
    // A proof made for another connection's exporter (never used there).
    let mut third = c.raw(true).await;
    let foreign = proof_for([7u8; 32], &c.k, Some(&c.chain));
    let r = third.present("/scope", &c.chain, &foreign).await.unwrap();
    assert_eq!(status_code(r).await, refused("channel_binding_mismatch"));
    // HTTP/2: the failed connection answers later streams with the stored code (even one with
    // this connection's valid presentation), then goes away.
    let valid = c.proof(&third);
    let sent = third.present("/scope", &c.chain, &valid).await;
    refused_or_gone(sent, "channel_binding_mismatch", |e| {
        e.to_string().contains("refused")
    })
    .await;
    assert!(third.closed_within_t().await);
    // A proof whose `cth` does not match the chain sent.
    let mut fourth = c.raw(false).await;
    let no_cth = fourth.proof(&c.k, None);
    let r = fourth.present("/scope", &c.chain, &no_cth).await.unwrap();
    assert_eq!(status_code(r).await.1, "chain_hash_mismatch");
}

#[tokio::test]
async fn h2_streams_racing_the_first_presentation_wait_for_it() {
    let c = Chained::start().await;
    let raw = c.raw(true).await;
    let proof = c.proof(&raw);
    // The presenting stream is opened first; the others race it without headers.
    let responses = raw.race(&c.chain, &proof, |_| false).await;
    for (i, r) in responses.into_iter().enumerate() {
        let r = r.unwrap();
        assert_eq!(r.status(), 200, "stream {i}");
        assert_eq!(r.headers().contains_key("agentid-proof"), i == 0);
        body(r).await;
    }
}

#[tokio::test]
async fn revocation_ends_the_connection_and_cuts_streams() {
    for h1 in [true, false] {
        let w = World::revocable();
        let addr = start(&w, None, options()).await;
        let (creds, k, _chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
        let mut conn = connect(&w, creds, h1, addr).await;
        get_ok(&mut conn, "/scope").await;
        // A streaming response in flight.
        let mut streaming = conn.send(get_req("/stream")).await.unwrap().into_body();
        first_frame(&mut streaming).await;

        w.revoke(&k);
        // The stream is cut (an error or its end), never left hanging.
        assert_cut(&mut streaming).await;
        // New requests on that connection are refused (or find it closed).
        if let Ok(r) = conn.send(get_req("/scope")).await {
            assert_eq!(status_code(r).await, refused("revoked"), "h1={h1}");
        }
    }
}

/// On HTTP/2 a request body that failed (here: it stalled past the body idle timeout) is never
/// read again, but a service may still hold it (a handler that answers the error with a
/// response streaming on, keeping its request). What its peer sends on that stream afterwards
/// must not stay buffered against the connection's flow-control window: otherwise one stalled
/// stream starves every other stream of the connection.
#[tokio::test]
async fn an_h2_body_that_failed_but_is_still_held_does_not_starve_the_connections_other_streams() {
    let w = World::new(false);
    let held: Arc<std::sync::Mutex<Vec<axum::body::Body>>> = Arc::default();
    let keep = held.clone();
    let app = Router::new()
        .route(
            "/hold",
            axum::routing::post(move |body: axum::body::Body| {
                let keep = keep.clone();
                async move {
                    let mut body = body;
                    // Bounded: the body stalls after its first chunk.
                    for _ in 0..16 {
                        match body.frame().await {
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                    keep.lock().unwrap().push(body);
                    "stalled"
                }
            }),
        )
        .route(
            "/upload",
            axum::routing::post(|b: Bytes| async move { format!("{} bytes", b.len()) }),
        );
    let o = HttpOptions {
        body_idle_timeout: Some(Duration::from_secs(1)),
        ..options()
    };
    let addr = start_app(&w, None, app, o).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let io = TokioIo::new(raw_tls(&w, creds, addr, true).await);
    let (s, c) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(c);
    let mut stalled_sender = s.clone();
    let (chunks, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stalled = tokio::spawn(async move {
        let req = ::http::Request::post("https://files/hold")
            .body(ChannelBody(rx))
            .unwrap();
        stalled_sender.send_request(req).await.map(|r| r.status())
    });
    chunks.send(Bytes::from_static(b"first")).await.unwrap();
    let status = tokio::time::timeout(T, stalled).await.unwrap().unwrap();
    assert_eq!(
        status.unwrap(),
        200,
        "the handler answered the stalled body"
    );
    assert_eq!(held.lock().unwrap().len(), 1);
    // The peer resumes the stalled stream: 2 MiB (hyper's default windows are 1 MiB), sent
    // by a task of its own as flow control allows.
    let resumed = tokio::spawn(async move {
        for _ in 0..32 {
            if chunks
                .send(Bytes::from(vec![b'y'; 64 << 10]))
                .await
                .is_err()
            {
                break;
            }
        }
        chunks
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another stream of the same connection still gets its body through.
    let mut s = s;
    let (whole, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    whole.send(Bytes::from(vec![b'x'; 3 << 19])).await.unwrap();
    drop(whole);
    let req = ::http::Request::post("https://files/upload")
        .body(ChannelBody(rx))
        .unwrap();
    s.ready().await.unwrap();
    let resp = tokio::time::timeout(T, s.send_request(req))
        .await
        .expect("the connection's other stream stalled behind the held body")
        .unwrap();
    assert_eq!(served(resp).await, format!("{} bytes", 3 << 19));
    resumed.abort();
}

/// On HTTP/2 a request body that stops arriving fails in its own stream only (the body idle
/// timeout, spec 22.5 "Idle connections"): the route answers that stream, and the connection
/// goes on serving other streams, also a body larger than the connection's whole flow-control
/// window, so the stalled stream leaves none of the window consumed.
#[tokio::test]
async fn an_h2_request_body_that_stops_arriving_fails_its_stream_alone() {
    let w = World::new(false);
    let app = Router::new().route(
        "/upload",
        axum::routing::post(|b: Bytes| async move { format!("{} bytes", b.len()) }),
    );
    let o = HttpOptions {
        body_idle_timeout: Some(Duration::from_secs(1)),
        ..options()
    };
    let addr = start_app(&w, None, app, o).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let io = TokioIo::new(raw_tls(&w, creds, addr, true).await);
    let (s, c) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(c);
    let mut stalled_sender = s.clone();
    let (chunks, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stalled = tokio::spawn(async move {
        let req = ::http::Request::post("https://files/upload")
            .body(ChannelBody(rx))
            .unwrap();
        stalled_sender.send_request(req).await.map(|r| r.status())
    });
    chunks
        .send(Bytes::from_static(b"only 10 b."))
        .await
        .unwrap();
    let status = tokio::time::timeout(T, stalled).await.unwrap().unwrap();
    assert_eq!(status.unwrap(), 400, "the stalled body's route answers it");
    // One and a half times hyper's default connection window (1 MiB) on another stream (under
    // axum's default body limit).
    let mut s = s;
    let (whole, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    whole.send(Bytes::from(vec![b'x'; 3 << 19])).await.unwrap();
    drop(whole);
    let req = ::http::Request::post("https://files/upload")
        .body(ChannelBody(rx))
        .unwrap();
    s.ready().await.unwrap();
    let resp = tokio::time::timeout(T, s.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served(resp).await, format!("{} bytes", 3 << 19));
    drop(chunks);
}

/// Spec 22.5 step 2 ("as a framed session does", section 16.4 "Re-checking live sessions") and
/// 14.3: a connection is re-checked when a held revocation list it depends on goes stale at
/// `next_update + skew` without a fresh list, and the re-check fails closed with
/// `revocation_stale`, as a new connection would. Without it, a peer whose revocation is
/// withheld (the feed blocked) keeps its connection's authority until the deadline.
#[tokio::test]
async fn a_connection_fails_closed_when_the_held_revocation_list_goes_stale() {
    let mut w = World::new(false);
    // The server requires fresh lists and allows no skew; its list is fresh for 2 more seconds.
    w.sv = verification_with(SERVER, &[&w.a], |c| c.skew(0).unwrap());
    w.sv.apply_revocation_list(&w.a.revocation_list_until(1, now() + 2, |b| b))
        .unwrap();
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds.clone(), false, addr).await;
    get_ok(&mut conn, "/scope").await;
    // Past next_update + skew, no fresh list: a new connection is refused...
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut fresh = connect(&w, creds, false, addr).await;
    let r = fresh.send(get_req("/scope")).await.unwrap();
    assert_eq!(status_code(r).await, refused("revocation_stale"));
    // ...and so is the live one (or it is closed), never served.
    if let Ok(r) = conn.send(get_req("/scope")).await {
        let status = r.status();
        let text = body(r).await;
        assert_eq!(status, 401, "served past next_update + skew: {text}");
        assert_eq!(code_of(&text), "revocation_stale");
    }
}

/// Spec 22.5 and 16.4 ("each side"): the client's list for the server's domain going stale
/// (`next_update` + skew passed, no fresh list) ends its use of a connection to a server it
/// verified: the next request fails `revocation_stale` and never goes out.
#[tokio::test]
async fn a_client_stops_using_a_connection_once_its_list_for_the_server_goes_stale() {
    let mut w = World::new(false);
    // The client requires fresh lists and allows no skew; its list is fresh for 2 more seconds.
    w.cv = verification_with(CLIENT, &[&w.a], |c| c.skew(0).unwrap());
    w.cv.apply_revocation_list(&w.a.revocation_list_until(1, now() + 2, |b| b))
        .unwrap();
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds, false, addr).await;
    get_ok(&mut conn, "/scope").await;
    assert!(conn.server_proof().is_some(), "the server was verified");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    match conn.send(get_req("/scope")).await {
        Err(e) => assert_eq!(
            e.protocol_code(),
            Some(agentid_protocol::ErrorCode::RevocationStale),
            "{e:?}"
        ),
        Ok(r) => panic!(
            "a request went out on a list gone stale and got {}",
            r.status()
        ),
    }
    assert!(!conn.is_usable(), "the connection is not used again");
}

/// Spec 14.3 ("a transport that applies a new list MUST re-check its live sessions against it
/// and end at once every session whose peer ... the list covers") and 16.4 ("each side"): a
/// client whose verification applies a list revoking the server's certificate key sends no
/// further request on its connection to that server; the next one fails with `revoked`.
#[tokio::test]
async fn a_client_stops_using_a_connection_whose_server_a_new_list_revokes() {
    let w = World::revocable();
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds, false, addr).await;
    get_ok(&mut conn, "/scope").await;
    assert!(
        conn.server_proof().is_some(),
        "the server's proof was verified"
    );
    // The client learns that the server's certificate key is revoked.
    let jkt = conn.peer().info.public_key.thumbprint();
    let list = w.a.revocation_list(2, |b| b.revoke_key(&jkt, now() + 600));
    w.cv.apply_revocation_list(&list).unwrap();
    match conn.send(get_req("/scope")).await {
        Err(e) => assert_eq!(
            e.protocol_code(),
            Some(agentid_protocol::ErrorCode::Revoked),
            "{e:?}"
        ),
        Ok(r) => panic!(
            "a request went out to a revoked server and got {}",
            r.status()
        ),
    }
    assert!(!conn.is_usable(), "the connection is not used again");
}

/// Spec 22.4: the client checks the server's own revocation status before it sends anything.
/// A server whose certificate key the client's list revokes gets no connection to serve: not
/// the presentation, not the first request (whose body may be the application's data).
#[tokio::test]
async fn a_client_sends_nothing_to_a_server_its_list_revokes() {
    let w = World::revocable();
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let server_key = connect(&w, creds.clone(), false, addr)
        .await
        .peer()
        .info
        .public_key
        .thumbprint();
    let list =
        w.a.revocation_list(2, |b| b.revoke_key(&server_key, now() + 600));
    w.cv.apply_revocation_list(&list).unwrap();
    for h1 in [true, false] {
        let e = client(&w, creds.clone(), h1)
            .connect(addr, "files")
            .await
            .unwrap_err();
        assert_eq!(
            e.protocol_code(),
            Some(agentid_protocol::ErrorCode::Revoked),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn near_the_deadline_the_server_closes_gracefully_and_the_client_stops() {
    let w = World::new(false);
    // The server's close margin is longer than the client certificate's remaining life.
    let addr = start_with(&w, |o| o.close_margin = Duration::from_secs(3600)).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds.clone(), addr, false).await;
    match raw.send("/peer", &[]).await {
        // The response leaves past the close point: it says so (whether or not the server's
        // timer has fired yet), and the server closes the connection.
        Ok(r) => {
            assert_eq!(r.headers().get("connection").unwrap(), "close");
            served(r).await;
            assert!(raw.closed_within_t().await);
        }
        // The graceful close may win the race against the first request head.
        Err(e) => assert!(gone(&e, hyper::Error::is_incomplete_message), "{e}"),
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

/// The same on HTTP/2: past the close point the server sends GOAWAY; a request either finds
/// the connection going away or is served, and the connection then closes.
#[tokio::test]
async fn near_the_deadline_the_server_sends_goaway_on_h2_and_closes() {
    let w = World::new(false);
    let addr = start_with(&w, |o| o.close_margin = Duration::from_secs(3600)).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds, addr, true).await;
    match raw.send("/peer", &[]).await {
        Ok(r) => {
            served(r).await;
        }
        // Refused by the GOAWAY (hyper reports the h2 reason as an error of its own).
        Err(e) => assert!(gone(&e, |_| true), "{e}"),
    }
    assert!(raw.closed_within_t().await);
}

/// Spec 22.2 step 2: an `agentid-chain` value of up to 16384 bytes is carried over HTTP, and
/// 22.4 step 3: every served response carries the server's chain and proof. A server whose chain
/// is close to that cap (here two tokens with long scopes) answers with a header list just
/// over 16 KiB; the agentid client must read it on HTTP/2 as it does on HTTP/1.1 (hyper's
/// HTTP/2 client announces a 16 KiB header-list limit by default, and the server's answer then
/// never reaches the client).
#[tokio::test]
async fn a_server_chain_near_the_http_cap_is_read_over_h1_and_h2() {
    const TASK_SERVER: &str = "spiffe://example.org/agent/files/task/t1";
    let mut w = World::new(false);
    let (boss_key, sk) = (key(), key());
    let boss =
        agentid_protocol::TaskIdentity::parse("spiffe://example.org/agent/boss/task/t1").unwrap();
    let holder = agentid_protocol::TaskIdentity::parse(TASK_SERVER).unwrap();
    let scope: Vec<String> = (0..29)
        .map(|i| {
            format!(
                "r{i:02}:{}:{}:{}",
                "a".repeat(60),
                "b".repeat(60),
                "c".repeat(60)
            )
        })
        .collect();
    let scope = scope.join(" ");
    let grant = w.a.grant(&boss, &boss_key, &scope);
    let chain = delegate(&grant, &boss_key, &holder, &sk, &scope, None);
    let len = chain.as_str().len();
    assert!((15_600..=16_384).contains(&len), "chain of {len} bytes");
    let cred = credential(&w.a.ca, TASK_SERVER, copy(&sk), &LeafOpts::default())
        .with_chain(chain.as_str());
    w.server_creds = Arc::new(MemoryCredentials::new(cred));
    let addr = start(&w, None, options()).await;
    for h1 in [true, false] {
        let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
        let c = HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(TASK_SERVER)))
            .connect_timeout(T);
        let c = if h1 { c.http1_only() } else { c }.build().unwrap();
        let mut conn = c.connect(addr, "files").await.unwrap();
        let resp = conn
            .send(get_req("/peer"))
            .await
            .unwrap_or_else(|e| panic!("h1={h1}: {e}"));
        assert_eq!(resp.status(), 200, "h1={h1}");
        body(resp).await;
        assert!(conn.server_chain().is_some(), "h1={h1}");
    }
}

/// Spec 22.5: the client keeps no connection past the verified server chain's `exp` minus its
/// margin (the server's authority ends there), as it keeps none past either certificate's.
#[tokio::test]
async fn the_client_keeps_no_connection_past_the_servers_chain_exp() {
    // A server that holds a chain: a task identity.
    const TASK_SERVER: &str = "spiffe://example.org/agent/files/task/t1";
    let mut w = World::new(false);
    let sk = key();
    let holder = agentid_protocol::TaskIdentity::parse(TASK_SERVER).unwrap();
    // The server's chain ends in 600 s, both certificates in two hours.
    let chain = w.a.grant(&holder, &sk, "files:read");
    let cred =
        credential(&w.a.ca, TASK_SERVER, copy(&sk), &expiring_in(7200)).with_chain(chain.as_str());
    w.server_creds = Arc::new(MemoryCredentials::new(cred));
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, None, &expiring_in(7200));
    // A margin of 900 s: the certificates leave time, the server's chain does not.
    let c = HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(TASK_SERVER)))
        .close_margin(Duration::from_secs(900))
        .build()
        .unwrap();
    let mut conn = c.connect(addr, "files").await.unwrap();
    assert!(conn.is_usable(), "before the server's chain is known");
    get_ok(&mut conn, "/peer").await;
    assert!(
        conn.server_chain().is_some(),
        "the server presented its chain"
    );
    assert!(
        !conn.is_usable(),
        "past the server chain's exp minus the margin"
    );
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
    let addr = start_with(&w, |o| o.close_margin = Duration::from_secs(1)).await;
    for h2 in [true, false] {
        let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &expiring_in(3));
        let mut raw = Raw::connect(&w, creds, addr, h2).await;
        let r = raw.send("/stream", &[]).await.unwrap();
        assert_eq!(r.status(), 200, "h2={h2}");
        let mut streaming = r.into_body();
        first_frame(&mut streaming).await;
        // Bounded wait: the cut comes at the deadline, well within T.
        assert_cut(&mut streaming).await;
        if let Ok(r) = raw.send("/peer", &[]).await {
            assert_eq!(status_code(r).await.1, "credential_expired", "h2={h2}");
        }
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
    served(raw.send("/peer", &[]).await.unwrap()).await;
    // The domain's x509 authority replaced by another CA (a higher sequence).
    let other = Ca::new("example.org");
    let bundle = agentid_protocol::TrustBundle::new(w.a.td.clone(), 2)
        .add_x509_authority(other.der.to_vec(), other.key.public_key())
        .add_grant_key(w.a.grant_key.public_key().clone())
        .add_revocation_key(w.a.rev_key.public_key().clone());
    w.sv.update_bundle(bundle).unwrap();
    // The connection's watcher may close the idle connection before the request is read.
    let sent = raw.send("/peer", &[]).await;
    refused_or_gone(sent, "bad_certificate", hyper::Error::is_incomplete_message).await;
}

/// Spec 16.4 ("Re-checking live sessions", each side): after a bundle change a client
/// validates the server's certificate path again against the new anchors of its domain; a
/// server whose CA left the bundle gets no further request on the connection.
#[tokio::test]
async fn a_bundle_change_revalidates_the_server_certificate_at_the_client() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds, false, addr).await;
    get_ok(&mut conn, "/scope").await;
    // The domain's x509 authority replaced by another CA (a higher sequence), at the client.
    let other = Ca::new("example.org");
    let bundle = agentid_protocol::TrustBundle::new(w.a.td.clone(), 2)
        .add_x509_authority(other.der.to_vec(), other.key.public_key())
        .add_grant_key(w.a.grant_key.public_key().clone())
        .add_revocation_key(w.a.rev_key.public_key().clone());
    w.cv.update_bundle(bundle).unwrap();
    match conn.send(get_req("/scope")).await {
        Err(agentid_transport::Error::Certificate(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(r) => panic!(
            "a request went out to a server no longer trusted and got {}",
            r.status()
        ),
    }
    assert!(!conn.is_usable(), "the connection is not used again");
}

/// A bundle change landing after the client validated the server's certificate and before its
/// handshake ended is a change since: the first request re-checks the certificate path against
/// the new anchors, and neither the presentation nor the request goes to a server whose CA left
/// the bundle (before, the connection counted the change as seen once the first response came).
#[tokio::test]
async fn a_bundle_change_during_the_client_handshake_is_rechecked_before_the_first_request() {
    for h1 in [true, false] {
        let w = World::new(false);
        let addr = start(&w, None, options()).await;
        let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
        // The domain's x509 authority replaced by another CA (a higher sequence), at the client,
        // once the server's certificate was validated.
        let other = Ca::new("example.org");
        let bundle = agentid_protocol::TrustBundle::new(w.a.td.clone(), 2)
            .add_x509_authority(other.der.to_vec(), other.key.public_key())
            .add_grant_key(w.a.grant_key.public_key().clone())
            .add_revocation_key(w.a.rev_key.public_key().clone());
        let cv = w.cv.clone();
        // Once the server's certificate was validated, before the handshake completes.
        let io = Hooked::new(
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            &[Burst::Write, Burst::Read],
            Burst::Write,
            move || cv.update_bundle(bundle).unwrap(),
        );
        let mut conn = client(&w, creds, h1)
            .connect_with(io, "files")
            .await
            .unwrap();
        match conn.send(get_req("/scope")).await {
            Err(agentid_transport::Error::Certificate(_)) => {}
            Err(e) => panic!("h1={h1}: {e:?}"),
            Ok(r) => panic!(
                "h1={h1}: a request went out to a server no longer trusted and got {}",
                r.status()
            ),
        }
        assert!(
            !conn.is_usable(),
            "h1={h1}: the connection is not used again"
        );
    }
}

/// A revocation (a list revoking the peer, or a bundle change removing its CA) applied after
/// the server accepted a connection and before it served it ends the idle connection at once,
/// as one applied later does (spec/PROTOCOL.md 22.5): before, the connection's watchdog
/// subscribed to the changes only when serving began and counted those as seen, so the
/// connection stayed open until its first request or its idle timeout.
#[tokio::test]
async fn a_revocation_between_accept_and_serve_ends_the_idle_connection() {
    for revoke_by_list in [true, false] {
        let w = World::revocable();
        let server = HttpServer::builder(
            w.server_creds.clone(),
            w.sv.clone(),
            PeerPolicy::trust_domain(w.a.td.clone()),
        )
        .options(HttpOptions {
            idle_timeout: Duration::from_secs(3600),
            header_read_timeout: Duration::from_secs(3600),
            ..options()
        })
        .build()
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::time::timeout(T, server.accept(tcp))
                .await
                .unwrap()
                .unwrap()
        });
        let (creds, k, _) = w.client(CLIENT, None, &LeafOpts::default());
        let raw = Raw::connect(&w, creds, addr, true).await;
        let conn = tokio::time::timeout(T, accepted).await.unwrap().unwrap();
        if revoke_by_list {
            w.revoke(&k);
        } else {
            // The domain's x509 authority replaced by another CA (a higher sequence).
            let other = Ca::new("example.org");
            let bundle = agentid_protocol::TrustBundle::new(w.a.td.clone(), 2)
                .add_x509_authority(other.der.to_vec(), other.key.public_key())
                .add_grant_key(w.a.grant_key.public_key().clone())
                .add_revocation_key(w.a.rev_key.public_key().clone());
            w.sv.update_bundle(bundle).unwrap();
        }
        tokio::spawn(conn.serve(app()));
        assert!(
            raw.closed_within_t().await,
            "list={revoke_by_list}: the revoked peer's connection stayed open"
        );
    }
}

/// An idle connection is closed by the server on HTTP/1.1 and HTTP/2 (`idle_timeout`), while a
/// connection with a response still streaming is not.
#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let w = World::new(false);
    let addr = start_with(&w, |o| o.idle_timeout = Duration::from_secs(1)).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    for h2 in [false, true] {
        let mut raw = Raw::connect(&w, creds.clone(), addr, h2).await;
        served(raw.send("/peer", &[]).await.unwrap()).await;
        assert!(raw.closed_within_t().await, "h2={h2}: idle connection kept");
    }
    // A streaming response keeps the HTTP/2 connection in use past the idle timeout.
    let mut raw = Raw::connect(&w, creds.clone(), addr, true).await;
    let r = raw.send("/stream", &[]).await.unwrap();
    let mut streaming = r.into_body();
    first_frame(&mut streaming).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    served(raw.send("/peer", &[]).await.unwrap()).await;
    drop(streaming);
}

/// HTTP/1.1 keep-alive: hyper's header read timeout also runs while the connection waits for
/// the next request head, so an idle HTTP/1.1 connection closes after it even when the idle
/// timeout is longer.
#[tokio::test]
async fn an_idle_h1_keep_alive_connection_closes_after_the_header_read_timeout() {
    let w = World::new(false);
    let addr = start_with(&w, |o| {
        o.header_read_timeout = Duration::from_secs(1);
        o.idle_timeout = Duration::from_secs(3600);
    })
    .await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds, addr, false).await;
    served(raw.send("/peer", &[]).await.unwrap()).await;
    assert!(raw.closed_within_t().await);
}

/// A first response slower than half the server's proof lifetime carries a proof signed when
/// the response left, not the one signed at verification; the agentid client (no clock skew
/// allowed) accepts it.
#[tokio::test]
async fn a_slow_first_response_carries_a_fresh_server_proof() {
    let mut w = World::new(false);
    w.cv = w.without_skew(CLIENT);
    let addr = start_with(&w, |o| o.proof_lifetime = Duration::from_secs(2)).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    for h1 in [true, false] {
        let mut conn = connect(&w, creds.clone(), h1, addr).await;
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
    w.sv = w.without_skew(SERVER);
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
    get_ok(&mut conn, "/scope").await;
    assert_ne!(conn.client_proof(), signed_at_connect);
    assert!(iat_of(conn.client_proof()) >= sent_after);
    // Once presented, the bytes stay: later requests are served under the same presentation.
    let presented = conn.client_proof().to_owned();
    let resp = conn.send(get_req("/scope")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.client_proof(), presented);
}

/// A hop proof lives at most 60 s (spec 7): a client or server configured to sign longer ones
/// (or none) is refused when it is built, with `bad_config` and the option named, instead of
/// signing proofs every verifier refuses at the first request.
#[test]
fn a_proof_lifetime_outside_1_to_60_seconds_is_refused_when_built() {
    let w = World::new(false);
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    for bad in [
        Duration::ZERO,
        Duration::from_millis(999),
        Duration::from_millis(60_001),
        Duration::from_secs(61),
        Duration::MAX,
    ] {
        let e = HttpClient::builder(creds.clone(), w.cv.clone(), PeerPolicy::exact(peer(SERVER)))
            .proof_lifetime(bad)
            .build()
            .unwrap_err();
        assert_eq!(e.reason(), "bad_config", "client, {bad:?}");
        assert!(e.to_string().contains("proof_lifetime"), "{e}");
        let e = HttpServer::builder(
            w.server_creds.clone(),
            w.sv.clone(),
            PeerPolicy::trust_domain(w.a.td.clone()),
        )
        .options(HttpOptions {
            proof_lifetime: bad,
            ..options()
        })
        .build()
        .unwrap_err();
        assert_eq!(e.reason(), "bad_config", "server, {bad:?}");
        assert!(e.to_string().contains("proof_lifetime"), "{e}");
    }
    for good in [Duration::from_secs(1), Duration::from_secs(60)] {
        HttpClient::builder(creds.clone(), w.cv.clone(), PeerPolicy::exact(peer(SERVER)))
            .proof_lifetime(good)
            .build()
            .unwrap();
        HttpServer::builder(
            w.server_creds.clone(),
            w.sv.clone(),
            PeerPolicy::trust_domain(w.a.td.clone()),
        )
        .options(HttpOptions {
            proof_lifetime: good,
            ..options()
        })
        .build()
        .unwrap();
    }
}

/// A request whose handler is still running when the connection's deadline passes gets
/// `credential_expired`, not the handler's response: the deadline holds for the moment the
/// response leaves.
#[tokio::test]
async fn a_response_finished_after_the_deadline_is_refused() {
    let w = World::new(false);
    let addr = start_with(&w, |o| {
        o.close_margin = Duration::from_secs(1);
        // Long enough that the connection is still there when the handler finishes.
        o.cut_grace = Duration::from_secs(20);
    })
    .await;
    for h2 in [false, true] {
        // A certificate per round: each has 3 s left when its connection starts.
        let (creds, _k, _) = w.client(CLIENT, None, &expiring_in(3));
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
            refused("credential_expired"),
            "h2={h2}"
        );
    }
}

/// HTTP/2 streams racing a first presentation that fails: the presenting stream gets the
/// verification's code, every racing stream the stored code (or is refused by the GOAWAY),
/// and no stream is served.
#[tokio::test]
async fn h2_streams_racing_a_failing_presentation_get_its_code() {
    let c = Chained::start().await;
    let raw = c.raw(true).await;
    // Bound to another connection's exporter; every other racing stream presents it too.
    let proof = proof_for([9u8; 32], &c.k, Some(&c.chain));
    let responses = raw.race(&c.chain, &proof, |i| i % 2 == 0).await;
    for (i, r) in responses.into_iter().enumerate() {
        match r {
            Ok(r) => assert_eq!(
                status_code(r).await,
                refused("channel_binding_mismatch"),
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
        served(fresh.send("/peer", &[]).await.unwrap()).await;
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

/// What a handler's two checks returned: before and after the revocation.
type HeldChecks = (Result<(), &'static str>, Result<(), &'static str>);

/// An `Authorizer` a handler holds across a revocation of its peer: the check after it
/// refuses with `revoked` (the connection checks run first on every call), and the response
/// that leaves after it is refused too.
#[tokio::test]
async fn an_authorizer_held_across_a_revocation_refuses_its_next_check() {
    let w = World::revocable();
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
    let addr = start_app(&w, None, app, o).await;
    let (creds, k, _chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds, true, addr).await;
    let sent = tokio::spawn(async move {
        match conn.send(get_req("/held")).await {
            Ok(r) => Some(status_code(r).await),
            Err(_) => None,
        }
    });
    tokio::time::timeout(T, entered.notified()).await.unwrap();
    w.revoke(&k);
    resume.notify_one();
    let (before, after) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(before, Ok(()));
    assert_eq!(after, Err("revoked"));
    let response = tokio::time::timeout(T, sent).await.unwrap().unwrap();
    // The response leaves after the revocation: refused (or the connection is cut first).
    if let Some(r) = response {
        assert_eq!(r, refused("revoked"));
    }
}

/// A revocation between two requests on one keep-alive connection: the second is not served
/// (401 `revoked`, or the connection is already closed) and its scope is never granted, on
/// both forms of `RequireScope`.
#[tokio::test]
async fn a_revocation_between_two_requests_refuses_the_second() {
    for path in ["/scope", "/scope_handler"] {
        let w = World::revocable();
        let rec = Arc::new(Recorder::default());
        let addr = start(&w, Some(rec.clone()), options()).await;
        let (creds, k, _chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
        let mut conn = connect(&w, creds, true, addr).await;
        get_ok(&mut conn, path).await;
        let granted = |rec: &Recorder| rec.0.lock().unwrap().iter().filter(|d| d.1).count();
        assert_eq!(granted(&rec), 1, "{path}");
        w.revoke(&k);
        if let Ok(r) = conn.send(get_req(path)).await {
            assert_eq!(status_code(r).await, refused("revoked"), "{path}");
        }
        assert_eq!(granted(&rec), 1, "{path}: a grant after the revocation");
    }
}

// ---- Changes racing the handshake and the first presentation ----

/// As `Raw::connect` (HTTP/1.1), with TLS records of at most `fragment` bytes.
async fn raw_fragmented(
    w: &World,
    creds: Arc<MemoryCredentials>,
    addr: SocketAddr,
    fragment: usize,
) -> Raw {
    let mut config = http::client_config(creds, &w.cv, PeerPolicy::exact(peer(SERVER))).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.max_fragment_size = Some(fragment);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("files").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let p = http::client_peer(tls.get_ref().1, &w.cv).unwrap();
    let (s, c) = http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(c);
    Raw {
        h1: Some(s),
        h2: None,
        exporter: p.exporter(Role::Client),
    }
}

/// A bundle change that lands after the server validated the client's certificate in the TLS
/// handshake, but before the handshake finished (the client holds the tail of its Finished),
/// must still re-validate the peer's certificate: spec 22.5 step 2 (a bundle change re-validates
/// the certificate; `bad_certificate`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_change_during_the_handshake_is_applied_to_the_connection() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    // Sanity: a normal connection is served.
    let mut ok = Raw::connect(&w, creds.clone(), addr, false).await;
    served(ok.send("/peer", &[]).await.unwrap()).await;
    let held = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let proxy = holding_proxy(addr, held.clone(), release.clone()).await;
    let control = async {
        held.notified().await;
        let other = Ca::new("example.org");
        let bundle = agentid_protocol::TrustBundle::new(w.a.td.clone(), 2)
            .add_x509_authority(other.der.to_vec(), other.key.public_key())
            .add_grant_key(w.a.grant_key.public_key().clone())
            .add_revocation_key(w.a.rev_key.public_key().clone());
        w.sv.update_bundle(bundle).unwrap();
        eprintln!("bundle replaced; releasing the Finished");
        release.notify_one();
    };
    let (mut raw, ()) = tokio::join!(raw_fragmented(&w, creds.clone(), proxy, 64), control);
    // Control: a new connection with the same certificate is now refused (the bundle change
    // took effect for handshakes).
    let fresh = client(&w, creds.clone(), true);
    let refused_now = async {
        let mut conn = fresh.connect(addr, "files").await?;
        conn.send(get_req("/peer")).await
    }
    .await;
    assert!(refused_now.is_err(), "control: {refused_now:?}");
    // The held connection's certificate no longer chains to any anchor of the server either.
    let sent = raw.send("/peer", &[]).await;
    match sent {
        Ok(r) => {
            let status = r.status();
            let b = body(r).await;
            eprintln!("status {status}, body {b}");
            assert_ne!(status, 200, "served a peer whose CA was removed: {b}");
        }
        Err(e) => eprintln!("connection refused/closed: {e}"),
    }
}

/// Spec 22.5: a bundle change (here the grant key removed) landing while the presentation is
/// being verified (`Pending`, with the verifier read before the change) is applied to the
/// chain once it settles: a re-check that ran meanwhile saw no chain and records nothing.
/// Each iteration times the change to land around the first request's verification; a
/// refusal of the first request is fine, serving a later one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_change_while_the_presentation_is_verified_is_applied() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let bundle = |seq: u64, grant: bool| {
        let mut b = agentid_protocol::TrustBundle::new(w.a.td.clone(), seq)
            .add_x509_authority(w.a.ca.der.to_vec(), w.a.ca.key.public_key())
            .add_revocation_key(w.a.rev_key.public_key().clone());
        if grant {
            b = b.add_grant_key(w.a.grant_key.public_key().clone());
        }
        b
    };
    let (mut served_after, mut first_ok, mut first_refused) = (0, 0, 0);
    for i in 0..150u64 {
        let seq = 2 + 2 * i;
        w.sv.update_bundle(bundle(seq, true)).unwrap();
        let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
        let chain = chain.unwrap();
        let mut raw = Raw::connect(&w, creds, addr, false).await;
        let proof = raw.proof(&k, Some(&chain));
        let sender = raw.h1.as_mut().unwrap();
        sender.ready().await.unwrap();
        let req = ::http::Request::get("/scope")
            .header("host", "files")
            .header("agentid-chain", chain.as_str())
            .header("agentid-proof", proof.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let sv = w.sv.clone();
        let removal = bundle(seq + 1, false);
        let delay = Duration::from_micros(39_000 + (i * 23) % 3_500);
        let update = tokio::task::spawn_blocking(move || {
            // Land the removal at varying points of the verification.
            let spin = std::time::Instant::now();
            while spin.elapsed() < delay {
                std::hint::spin_loop();
            }
            sv.update_bundle(removal).unwrap();
        });
        let first = sender.send_request(req).await;
        update.await.unwrap();
        // The connection may also end before answering (the re-check closed it): a refusal.
        let Ok(first) = first else {
            first_refused += 1;
            continue;
        };
        if first.status() != 200 {
            first_refused += 1;
            if i % 10 == 0 {
                eprintln!(
                    "iteration {i}: first refused {:?}",
                    status_code(first).await
                );
            }
            continue;
        }
        first_ok += 1;
        eprintln!("iteration {i}: first served (delay {delay:?})");
        body(first).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(r) = raw.send("/scope", &[]).await {
            if r.status() == 200 {
                served_after += 1;
                eprintln!("iteration {i}: served under a chain whose grant key was removed");
            }
        }
    }
    eprintln!("first ok {first_ok}, first refused {first_refused}, served after {served_after}");
    assert_eq!(served_after, 0);
}

/// The `iss` and `jti` of a chain's first token (its grant).
fn grant_iss_jti(chain: &str) -> (SpiffeId, String) {
    use base64::Engine as _;
    let grant = chain.split('~').next().unwrap();
    let payload = grant.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    (
        SpiffeId::parse(v["iss"].as_str().unwrap()).unwrap(),
        v["jti"].as_str().unwrap().to_owned(),
    )
}

/// The same with a revocation list revoking the chain's grant (by `jti`) while the presentation
/// is `Pending`: the index's signal must not be used up by a re-check that sees no chain yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_the_presentation_is_verified_is_applied() {
    let w = World::revocable();
    let addr = start(&w, None, options()).await;
    let (mut served_after, mut first_ok, mut first_refused) = (0, 0, 0);
    for i in 0..150u64 {
        let seq = 2 + i;
        let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
        let chain = chain.unwrap();
        let (iss, jti) = grant_iss_jti(&chain);
        let list =
            w.a.revocation_list(seq, |b| b.revoke_jti(&iss, &jti, now() + 600));
        let mut raw = Raw::connect(&w, creds, addr, false).await;
        let proof = raw.proof(&k, Some(&chain));
        let sender = raw.h1.as_mut().unwrap();
        sender.ready().await.unwrap();
        let req = ::http::Request::get("/scope")
            .header("host", "files")
            .header("agentid-chain", chain.as_str())
            .header("agentid-proof", proof.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let sv = w.sv.clone();
        let delay = Duration::from_micros(38_000 + (i * 29) % 5_000);
        let update = tokio::task::spawn_blocking(move || {
            let spin = std::time::Instant::now();
            while spin.elapsed() < delay {
                std::hint::spin_loop();
            }
            sv.apply_revocation_list(&list).unwrap();
        });
        let first = sender.send_request(req).await;
        update.await.unwrap();
        // The connection may also end before answering (the re-check closed it): a refusal.
        let Ok(first) = first else {
            first_refused += 1;
            continue;
        };
        if first.status() != 200 {
            first_refused += 1;
            continue;
        }
        first_ok += 1;
        body(first).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(r) = raw.send("/scope", &[]).await {
            if r.status() == 200 {
                served_after += 1;
                eprintln!("iteration {i}: served under a revoked grant (delay {delay:?})");
            }
        }
    }
    eprintln!("first ok {first_ok}, first refused {first_refused}, served after {served_after}");
    assert_eq!(served_after, 0);
}

// ---- A request held by the service's backpressure ----

/// A service whose readiness waits for a gate the test opens (a concurrency limit or buffer in
/// front of the handlers), counting the requests it is handed.
#[derive(Clone, Default)]
struct Gated(Arc<Gate>);

#[derive(Default)]
struct Gate {
    open: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
    waiting: tokio::sync::Notify,
    called: std::sync::atomic::AtomicUsize,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }

    fn called(&self) -> usize {
        self.called.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl tower_service::Service<::http::Request<agentid_transport::http::RequestBody>> for Gated {
    type Response = ::http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        use std::sync::atomic::Ordering;
        if self.0.open.load(Ordering::Acquire) {
            return std::task::Poll::Ready(Ok(()));
        }
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.0.open.load(Ordering::Acquire) {
            return std::task::Poll::Ready(Ok(()));
        }
        self.0.waiting.notify_one();
        std::task::Poll::Pending
    }

    fn call(
        &mut self,
        _req: ::http::Request<agentid_transport::http::RequestBody>,
    ) -> Self::Future {
        self.0
            .called
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        std::future::ready(Ok(::http::Response::new(Full::new(Bytes::from_static(
            b"served",
        )))))
    }
}

/// A request that waits for the service's readiness (backpressure) while its peer is revoked
/// is never handed to the service: the connection checks of spec 22.5 hold when the request is
/// served, not only when it was dispatched (h1 and h2).
#[tokio::test]
async fn a_request_held_by_backpressure_across_a_revocation_is_never_served() {
    for h1 in [true, false] {
        let w = World::revocable();
        let gated = Gated::default();
        let server = HttpServer::builder(
            w.server_creds.clone(),
            w.sv.clone(),
            PeerPolicy::trust_domain(w.a.td.clone()),
        )
        // The connection outlives the test once its authority ends (no drop after the grace).
        .options(HttpOptions {
            cut_grace: Duration::from_secs(60),
            ..options()
        })
        .build()
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = gated.clone();
        tokio::spawn(async move { server.serve(listener, service).await });
        let (creds, k, _chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
        let mut conn = connect(&w, creds, h1, addr).await;
        let sent = tokio::spawn(async move {
            match conn.send(get_req("/held")).await {
                Ok(r) => Some(r.status().as_u16()),
                Err(_) => None,
            }
        });
        // The request passed the presentation and the connection checks, and waits for the
        // service's readiness.
        tokio::time::timeout(T, gated.0.waiting.notified())
            .await
            .unwrap();
        w.revoke(&k);
        gated.0.open();
        let status = tokio::time::timeout(T, sent).await.unwrap().unwrap();
        assert_ne!(status, Some(200), "h1 {h1}");
        assert_eq!(
            gated.0.called(),
            0,
            "h1 {h1}: a revoked peer's request was handed to the service"
        );
    }
}

/// A request body the client sends frame by frame, from a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Spec 22.5 and 14.3 (a revoked peer's connection ends "at once"): once the server applies a
/// list revoking the client, no more of a request body that is still arriving reaches the
/// handler. Its next read fails, although the connection is kept for the cut grace (60 s
/// here): the handler waiting for the next frame is woken with an error, so data the revoked
/// peer sends afterwards is never handed to the service (h1 and h2).
#[tokio::test]
async fn a_request_body_still_arriving_reaches_its_handler_no_further_once_the_peer_is_revoked() {
    for h2 in [false, true] {
        let w = World::revocable();
        let (seen_tx, mut seen) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
        let upload = move |body: axum::body::Body| {
            let seen_tx = seen_tx.clone();
            async move {
                let mut body = body;
                loop {
                    let read = match body.frame().await {
                        Some(Ok(f)) => match f.into_data() {
                            Ok(d) => Ok(d),
                            Err(_) => continue,
                        },
                        Some(Err(e)) => Err(e.to_string()),
                        None => Err("end of body".to_owned()),
                    };
                    let last = read.is_err();
                    let _ = seen_tx.send(read).await;
                    if last {
                        return "done";
                    }
                }
            }
        };
        let app = Router::new().route("/upload", axum::routing::post(upload));
        let o = HttpOptions {
            cut_grace: Duration::from_secs(60),
            ..options()
        };
        let addr = start_app(&w, None, app, o).await;
        let (creds, k, _chain) = w.client(CLIENT, None, &LeafOpts::default());
        let io = TokioIo::new(raw_tls(&w, creds, addr, h2).await);
        let (chunks, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let uri = if h2 {
            "https://files/upload"
        } else {
            "/upload"
        };
        let req = ::http::Request::post(uri)
            .header("host", "files")
            .body(ChannelBody(rx))
            .unwrap();
        let response = if h2 {
            let (mut s, c) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(c);
            tokio::spawn(async move { s.send_request(req).await.map(|r| r.status()) })
        } else {
            let (mut s, c) = http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            tokio::spawn(async move { s.send_request(req).await.map(|r| r.status()) })
        };
        chunks.send(Bytes::from_static(b"before")).await.unwrap();
        let first = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
        assert_eq!(first, Ok(Bytes::from_static(b"before")), "h2 {h2}");

        w.revoke(&k);
        // The handler waiting for more is woken with an error at once, not at the end of the
        // grace (60 s, longer than T): nothing more of the body can reach it.
        let next = tokio::time::timeout(T, seen.recv())
            .await
            .expect("the handler was not told that the body was cut")
            .unwrap();
        assert!(
            next.is_err(),
            "h2 {h2}: the handler read {next:?} from a revoked peer"
        );
        drop(chunks);
        // The request is answered with a refusal or not at all; never a success.
        if let Ok(Ok(Ok(status))) = tokio::time::timeout(T, response).await {
            assert_ne!(status, 200, "h2 {h2}");
        }
    }
}

/// An identity-only peer (no chain) never reaches a handler behind `RequireScope` through
/// another method (HEAD, OPTIONS, POST), another spelling of the path (trailing or doubled
/// slash, percent-encoding, case, a parameter), an absolute-form target or another `Host`, on
/// HTTP/1.1 and HTTP/2, on both forms of the layer (holds).
#[tokio::test]
async fn methods_and_path_spellings_do_not_pass_around_require_scope() {
    let w = World::new(false);
    let addr = start(&w, None, options()).await;
    let (creds, _k, _chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    for h2 in [false, true] {
        let mut raw = Raw::connect(&w, creds.clone(), addr, h2).await;
        for base in ["/scope", "/scope_handler"] {
            let mut cases: Vec<(::http::Method, String, Option<&str>)> = vec![
                (::http::Method::HEAD, base.to_owned(), None),
                (::http::Method::OPTIONS, base.to_owned(), None),
                (::http::Method::POST, base.to_owned(), None),
                (::http::Method::GET, format!("{base}/"), None),
                (::http::Method::GET, format!("/{base}"), None),
                (::http::Method::GET, base.replacen('s', "%73", 1), None),
                (::http::Method::GET, base.to_uppercase(), None),
                (::http::Method::GET, format!("{base};a=b"), None),
                (::http::Method::GET, format!("{base}?x=/whoami"), None),
                (::http::Method::GET, base.to_owned(), Some("other.example")),
            ];
            if !h2 {
                cases.push((::http::Method::GET, format!("https://files{base}"), None));
            }
            for (method, target, host) in cases {
                let uri = if h2 && !target.starts_with("https:") {
                    format!("https://{}{target}", host.unwrap_or("files"))
                } else {
                    target.clone()
                };
                let mut b = ::http::Request::builder().method(method.clone()).uri(uri);
                if !h2 {
                    b = b.header("host", host.unwrap_or("files"));
                }
                let req = b.body(Full::new(Bytes::new())).unwrap();
                let resp = if let Some(s) = &mut raw.h1 {
                    s.ready().await.unwrap();
                    tokio::time::timeout(T, s.send_request(req)).await.unwrap()
                } else {
                    let s = raw.h2.as_mut().unwrap();
                    s.ready().await.unwrap();
                    tokio::time::timeout(T, s.send_request(req)).await.unwrap()
                }
                .unwrap();
                let status = resp.status();
                let text = body(resp).await;
                assert!(
                    !status.is_success() && !text.contains("chain="),
                    "h2 {h2}: {method} {target} host {host:?} answered {status}: {text}"
                );
            }
        }
    }
}

/// Spec 14.3 ("a transport that applies a new list MUST re-check its live sessions against it
/// and end at once every session whose peer ... the list covers"): a client whose verification
/// applies a list revoking the server's certificate key while a response is still streaming
/// stops receiving it (the body ends with an error), instead of reading a revoked server's
/// data until it sends its next request (h1 and h2).
#[tokio::test]
async fn a_client_stops_reading_a_stream_of_a_server_a_new_list_revokes() {
    for h1 in [true, false] {
        let (w, conn, mut streaming) = streaming_from_a_revocable_server(h1).await;
        // The client learns that the server's certificate key is revoked.
        let jkt = conn.peer().info.public_key.thumbprint();
        let list = w.a.revocation_list(2, |b| b.revoke_key(&jkt, now() + 600));
        w.cv.apply_revocation_list(&list).unwrap();
        let next = tokio::time::timeout(T, streaming.frame()).await;
        assert!(
            matches!(next, Ok(Some(Err(_)))),
            "h1 {h1}: the revoked server's stream is still open: {next:?}"
        );
        drop(conn);
    }
}

/// As above, with a list that stays fresh longer than the one it replaces (the usual case: a
/// CA republishes with a later `next_update`): the list is signalled to the connection through
/// the revocation index, under the server's key, agent and task, not only when every session
/// re-checks.
#[tokio::test]
async fn a_client_stops_reading_a_stream_of_a_server_a_longer_lived_list_revokes() {
    for h1 in [true, false] {
        let (w, conn, mut streaming) = streaming_from_a_revocable_server(h1).await;
        // The connection's watcher re-checks the server once it has its proof; let that pass
        // first, so that nothing but the list can end the stream below.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rechecks = w.cv.session_rechecks();
        let jkt = conn.peer().info.public_key.thumbprint();
        let list =
            w.a.revocation_list_until(2, now() + 3600, |b| b.revoke_key(&jkt, now() + 600));
        w.cv.apply_revocation_list(&list).unwrap();
        let next = tokio::time::timeout(T, streaming.frame()).await;
        assert!(
            matches!(next, Ok(Some(Err(_)))),
            "h1 {h1}: the revoked server's stream is still open: {next:?}"
        );
        assert!(w.cv.session_rechecks() > rechecks, "h1 {h1}: {next:?}");
        drop(conn);
    }
}

/// A revocable world, a client connection (`h1` or h2) to its server holding a verified server
/// proof, and a response body of `/stream` whose first frame has arrived.
async fn streaming_from_a_revocable_server(
    h1: bool,
) -> (World, HttpClientConnection, hyper::body::Incoming) {
    let w = World::revocable();
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds, h1, addr).await;
    let resp = conn.send(get_req("/stream")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        conn.server_proof().is_some(),
        "the server's proof was verified"
    );
    let mut streaming = resp.into_body();
    first_frame(&mut streaming).await;
    (w, conn, streaming)
}

/// Spec 22.5: past its close point (here the server chain's `exp` minus the margin) the client
/// keeps no connection, also for a response still streaming: its body ends with an error, on
/// HTTP/2 too, where hyper drives the streams on a task of its own that dropping the
/// connection's task left running.
#[tokio::test]
async fn a_stream_does_not_outlive_the_clients_close_point() {
    const TASK_SERVER: &str = "spiffe://example.org/agent/files/task/t1";
    for h1 in [true, false] {
        let mut w = World::new(false);
        let sk = key();
        let holder = agentid_protocol::TaskIdentity::parse(TASK_SERVER).unwrap();
        // The server's chain ends in 600 s, both certificates in two hours.
        let chain = w.a.grant(&holder, &sk, "files:read");
        let cred = credential(&w.a.ca, TASK_SERVER, copy(&sk), &expiring_in(7200))
            .with_chain(chain.as_str());
        w.server_creds = Arc::new(MemoryCredentials::new(cred));
        let addr = start(&w, None, options()).await;
        let (creds, _k, _) = w.client(CLIENT, None, &expiring_in(7200));
        // A margin of 900 s: the first served response moves the close point to now.
        let mut b = HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(TASK_SERVER)))
            .close_margin(Duration::from_secs(900));
        if h1 {
            b = b.http1_only();
        }
        let mut conn = b.build().unwrap().connect(addr, "files").await.unwrap();
        let resp = conn.send(get_req("/stream")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut streaming = resp.into_body();
        let end = tokio::time::timeout(T, async {
            loop {
                match streaming.frame().await {
                    Some(Ok(_)) => {}
                    other => return other,
                }
            }
        })
        .await;
        assert!(
            matches!(end, Ok(Some(Err(_)))),
            "h1 {h1}: the stream outlived the close point: {end:?}"
        );
        drop(conn);
    }
}

/// A decision's correlation ID is the request's `x-request-id` when it is at most
/// `MAX_CORRELATION_ID_BYTES` long; a peer's 16 KiB header is not copied into every decision
/// its request causes (the default sink logs each denial at INFO).
#[tokio::test]
async fn an_over_long_correlation_id_is_not_copied_into_decisions() {
    #[derive(Default)]
    struct Ids(std::sync::Mutex<Vec<Option<String>>>);
    impl DecisionSink for Ids {
        fn record(&self, d: &agentid_transport::http::Decision<'_>) {
            self.0
                .lock()
                .unwrap()
                .push(d.correlation_id.map(str::to_owned));
        }
    }
    let w = World::new(false);
    let ids = Arc::new(Ids::default());
    let addr = start(&w, Some(ids.clone()), options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let mut conn = connect(&w, creds, true, addr).await;
    let long = "r".repeat(16 * 1024);
    let at_cap = "c".repeat(agentid_transport::http::MAX_CORRELATION_ID_BYTES);
    for id in ["req-1", at_cap.as_str(), long.as_str()] {
        let req = ::http::Request::get("/scope")
            .header("x-request-id", id)
            .body(Bytes::new())
            .unwrap();
        let resp = conn.send(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let got = ids.0.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        3,
        "{:?}",
        got.iter()
            .map(|i| i.as_ref().map(String::len))
            .collect::<Vec<_>>()
    );
    assert_eq!(got[0].as_deref(), Some("req-1"));
    assert_eq!(got[1].as_deref(), Some(at_cap.as_str()));
    assert_eq!(
        got[2].as_ref().map(String::len),
        None,
        "the 16 KiB correlation ID reached the decision sink"
    );
}

/// Connections come and go by the million on a long-running server: each one leaves the
/// verification's index of live sessions (used for revocation re-checks) when it ends, also
/// when the client dropped it mid-response or never sent a request.
#[tokio::test]
async fn churned_connections_leave_the_revocation_index() {
    let w = World::revocable();
    let addr = start(&w, None, options()).await;
    let (creds, _k, _) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    assert_eq!(w.sv.indexed_sessions(), 0);
    for h1 in [true, false] {
        for i in 0..150 {
            let mut conn = connect(&w, creds.clone(), h1, addr).await;
            match i % 3 {
                0 => {
                    get_ok(&mut conn, "/scope").await;
                }
                1 => {
                    let resp = conn.send(get_req("/stream")).await.unwrap();
                    let mut streaming = resp.into_body();
                    first_frame(&mut streaming).await;
                }
                _ => {}
            }
            drop(conn);
        }
    }
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = w.sv.indexed_sessions();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "connections that ended are still indexed");
}

/// Dropping the future of `HttpServer::serve` (a shutdown, or a configuration change that must
/// cut the old peers: here its task is aborted) ends the connections it accepted, on HTTP/1.1
/// and HTTP/2, idle ones and ones with a response still streaming, as it stops accepting new
/// ones. Before, each accepted connection ran on a task of its own that nothing ended: it kept
/// serving its peer until its idle timeout or its deadline.
#[tokio::test]
async fn dropping_the_serve_future_ends_the_connections_it_accepted() {
    for h2 in [false, true] {
        let w = World::new(false);
        let server = HttpServer::builder(
            w.server_creds.clone(),
            w.sv.clone(),
            PeerPolicy::trust_domain(w.a.td.clone()),
        )
        // Nothing but the drop may end the connections within the test.
        .options(HttpOptions {
            header_read_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            ..options()
        })
        .build()
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move { server.serve(listener, app()).await });
        let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
        let mut idle = Raw::connect(&w, creds.clone(), addr, h2).await;
        served(idle.send("/peer", &[]).await.unwrap()).await;
        let mut busy = Raw::connect(&w, creds.clone(), addr, h2).await;
        let r = busy.send("/stream", &[]).await.unwrap();
        let mut streaming = r.into_body();
        first_frame(&mut streaming).await;

        serving.abort();
        assert!(tokio::time::timeout(T, serving).await.unwrap().is_err());

        assert!(
            idle.closed_within_t().await,
            "h2={h2}: an idle connection outlived the server's serve"
        );
        assert_cut(&mut streaming).await;
        assert!(
            busy.closed_within_t().await,
            "h2={h2}: a streaming connection outlived the server's serve"
        );
        // Nothing accepts any more.
        let refused = tokio::time::timeout(T, tokio::net::TcpStream::connect(addr)).await;
        assert!(!matches!(refused, Ok(Ok(_))), "h2={h2}: still accepting");
    }
}

/// One failure code per connection (spec/PROTOCOL.md 22.3: "`c` is the first failure's code: a
/// later revocation, deadline or different presentation on a connection already in `Failed`
/// does not replace it"). An HTTP/2 stream is in its handler when another stream fails the
/// connection with `presentation_changed`; the peer is then revoked, and the handler finishes:
/// its response is refused with the connection's code, `presentation_changed`, not with
/// `revoked` while later streams get `presentation_changed`. The handler is held and released
/// by the test (no sleeps).
#[tokio::test]
async fn a_revocation_after_the_connection_failed_does_not_replace_its_code() {
    let w = World::revocable();
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (e, r) = (entered.clone(), release.clone());
    let held = app().route(
        "/hold",
        get(move || async move {
            e.notify_one();
            r.notified().await;
            "held"
        }),
    );
    // The connection is not dropped after the revocation's cut within the test.
    let o = HttpOptions {
        cut_grace: Duration::from_secs(60),
        ..options()
    };
    let addr = start_app(&w, None, held, o).await;
    let (creds, k, chain) = w.client(CLIENT, Some("files:read"), &LeafOpts::default());
    let chain = chain.unwrap();
    let mut raw = Raw::connect(&w, creds, addr, true).await;
    let proof = raw.proof(&k, Some(&chain));
    served(raw.present("/scope", &chain, &proof).await.unwrap()).await;

    // A stream under the verified presentation, in its handler.
    let mut sender = raw.h2.clone().unwrap();
    sender.ready().await.unwrap();
    let in_flight = sender.send_request(
        ::http::Request::get("https://files/hold")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    );
    let in_flight = tokio::spawn(async move { tokio::time::timeout(T, in_flight).await });
    tokio::time::timeout(T, entered.notified()).await.unwrap();

    // The first failure: a different presentation.
    let other = raw.proof(&k, Some(&chain));
    let r = raw.present("/scope", &chain, &other).await.unwrap();
    assert_eq!(status_code(r).await, refused("presentation_changed"));

    // A later one: the peer is revoked, then the held handler finishes.
    w.revoke(&k);
    release.notify_one();
    let r = tokio::time::timeout(T, in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status_code(r).await, refused("presentation_changed"));
}

/// A client byte stream that stops moving one way once `stall` is set: with `side` `Write` its
/// writes never complete (the server stopped taking bytes: a zero window), with `Read` its reads
/// never return (the client stopped reading); the other way passes.
struct Stallable {
    io: tokio::io::DuplexStream,
    stall: Arc<std::sync::atomic::AtomicBool>,
    side: Burst,
}

impl Stallable {
    fn stalled(&self, side: Burst) -> bool {
        self.side == side && self.stall.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl tokio::io::AsyncRead for Stallable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stalled(Burst::Read) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Stallable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.stalled(Burst::Write) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stalled(Burst::Write) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stalled(Burst::Write) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client connection dropped while its server takes no more bytes (its close, HTTP/1.1's
/// shutdown with TLS `close_notify` or HTTP/2's GOAWAY, can never be written) ends within the
/// client's connect timeout (2 s here) of the drop: its task, its socket and its place in the
/// revocation index are let go. Before, they were kept until the connection's close point,
/// minutes or hours later (here 300 s less the margin).
#[tokio::test]
async fn a_dropped_client_connection_does_not_wait_for_a_server_that_stopped_reading() {
    for h1 in [true, false] {
        let w = World::new(false);
        let server = HttpServer::builder(
            w.server_creds.clone(),
            w.sv.clone(),
            PeerPolicy::trust_domain(w.a.td.clone()),
        )
        .options(options())
        .build()
        .unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            if let Ok(conn) = server.accept(server_io).await {
                conn.serve(app()).await;
            }
        });
        let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
        let mut b = HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(SERVER)))
            .connect_timeout(Duration::from_secs(2));
        if h1 {
            b = b.http1_only();
        }
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let io = Stallable {
            io: client_io,
            stall: stall.clone(),
            side: Burst::Write,
        };
        let mut conn = b.build().unwrap().connect_with(io, "files").await.unwrap();
        get_ok(&mut conn, "/peer").await;
        assert_eq!(w.cv.indexed_sessions(), 1, "h1={h1}");

        stall.store(true, std::sync::atomic::Ordering::Release);
        drop(conn);
        let mut left = usize::MAX;
        for _ in 0..100 {
            left = w.cv.indexed_sessions();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(left, 0, "h1={h1}: the dropped connection is still held");
    }
}

/// 64 KiB of zeros: the frames of [`Big`].
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A response body of that many 64 KiB frames, each ready at once.
struct Big(usize);

impl hyper::body::Body for Big {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &ZEROS,
        )))))
    }
}

/// A 64 MiB response.
async fn big() -> axum::response::Response {
    axum::response::Response::new(axum::body::Body::new(Big(1024)))
}

/// A peer that asks for a large response and then stops reading (it keeps the connection and
/// the response open, and takes no more bytes) loses the connection once the server's write
/// has waited the idle timeout (1 s here), on HTTP/1.1 and HTTP/2 alike: its task, its
/// connection slot and its place in the revocation index are let go. Before, the response in
/// flight kept the idle timer off and nothing else bounded the write: the connection was held
/// until its deadline (the certificate's end, 300 s here; minutes to hours in use), so a few
/// such peers could take every one of the server's `max_connections`.
#[tokio::test]
async fn a_peer_that_stops_reading_a_response_loses_its_connection_after_the_idle_timeout() {
    for h1 in [true, false] {
        let w = World::new(false);
        let server = HttpServer::builder(
            w.server_creds.clone(),
            w.sv.clone(),
            PeerPolicy::trust_domain(w.a.td.clone()),
        )
        .options(HttpOptions {
            idle_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(1),
            ..options()
        })
        .build()
        .unwrap();
        let admission = server.admission().clone();
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let serving = tokio::spawn(async move {
            if let Ok(conn) = server.accept(server_io).await {
                conn.serve(app().route("/big", get(big))).await;
            }
        });
        let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
        let mut b = HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(SERVER)))
            .connect_timeout(T);
        if h1 {
            b = b.http1_only();
        }
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let io = Stallable {
            io: client_io,
            stall: stall.clone(),
            side: Burst::Read,
        };
        let mut conn = b.build().unwrap().connect_with(io, "files").await.unwrap();
        get_ok(&mut conn, "/peer").await;
        assert_eq!(w.sv.indexed_sessions(), 1, "h1={h1}");
        assert_eq!(admission.sessions(), 1, "h1={h1}");

        let resp = conn.send(get_req("/big")).await.unwrap();
        assert_eq!(resp.status(), 200, "h1={h1}");
        let mut streaming = resp.into_body();
        let first = tokio::time::timeout(T, streaming.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(first.is_data(), "h1={h1}");
        // From here the client reads nothing, and holds its connection and the response.
        stall.store(true, std::sync::atomic::Ordering::Release);

        let mut held = true;
        for _ in 0..100 {
            held =
                !serving.is_finished() || w.sv.indexed_sessions() != 0 || admission.sessions() != 0;
            if !held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!held, "h1={h1}: the server still holds the connection");
        drop((streaming, conn));
    }
}

/// An HTTP/2 peer that asks for a large response and then grants no more flow-control window
/// (it keeps reading the socket, so no write of the server ever waits, but never takes the
/// stream's data) loses the connection once every request in flight has waited that long for it
/// to take a response frame: the idle timeout, sampled at idle-timeout intervals (1 s here).
/// Before, the response in flight kept the idle timer off and the connection, its slot and its
/// revocation-index entry were held until its deadline (300 s here).
#[tokio::test]
async fn an_h2_peer_that_grants_no_window_loses_its_connection_after_the_idle_timeout() {
    let w = World::new(false);
    let o = HttpOptions {
        idle_timeout: Duration::from_secs(1),
        ..options()
    };
    let addr = start_app(&w, None, app().route("/big", get(big)), o).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds, addr, true).await;
    // The response's body is held and never read: hyper's client grants no window for it.
    let resp = raw.send("/big", &[]).await.unwrap();
    assert_eq!(resp.status(), 200);
    let held = resp.into_body();
    assert!(
        raw.closed_within_t().await,
        "the server still holds the connection"
    );
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = w.sv.indexed_sessions();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the dropped connection is still indexed");
    drop(held);
}

/// A response the peer takes in bursts is no stall: an HTTP/2 connection whose only stream the
/// peer reads 1.5 MiB of every half idle timeout (so that hyper's client, which grants window
/// once half of its 2 MiB was read, grants some each time) keeps serving it for three idle
/// timeouts (1 s each).
#[tokio::test]
async fn a_response_the_peer_keeps_taking_is_not_cut() {
    read_in_bursts_for_three_idle_timeouts("/big", app().route("/big", get(big))).await;
}

/// Serves `router` with an idle timeout of 1 s and reads `path` over HTTP/2 in bursts of
/// 1.5 MiB every half idle timeout, six times: the connection must still be indexed after.
async fn read_in_bursts_for_three_idle_timeouts(path: &str, router: Router) {
    let w = World::new(false);
    let o = HttpOptions {
        idle_timeout: Duration::from_secs(1),
        ..options()
    };
    let addr = start_app(&w, None, router, o).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds, addr, true).await;
    let resp = raw.send(path, &[]).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for _ in 0..6 {
        let mut read = 0;
        while read < 3 * 512 * 1024 {
            let f = tokio::time::timeout(T, body.frame()).await.unwrap();
            match f {
                Some(Ok(f)) => read += f.into_data().map_or(0, |d| d.len()),
                other => panic!("the response was cut: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(w.sv.indexed_sessions(), 1);
}

/// A response body of that many frames of 32 MiB each (the same bytes, shared), each ready at
/// once: a service that streams a large download in large chunks.
struct Chunked(usize, Bytes);

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.1.clone()))))
    }
}

/// A 64 MiB response in two frames of 32 MiB.
async fn chunked() -> axum::response::Response {
    let chunk = Bytes::from(vec![0u8; 32 * 1024 * 1024]);
    axum::response::Response::new(axum::body::Body::new(Chunked(2, chunk)))
}

/// The HTTP/2 stall bound counts what the peer takes, not how the service cut its body: a peer
/// that keeps reading a response whose service gives it in frames of 32 MiB (1.5 MiB every half
/// idle timeout, so that hyper's client grants window each time) keeps its connection for three
/// idle timeouts (1 s each), as it does when the same response comes in 64 KiB frames. Before,
/// a frame counted as taken only when the body was polled again, after the peer had taken the
/// whole frame: the connection was dropped as one whose peer took nothing.
#[tokio::test]
async fn a_response_given_in_large_frames_that_the_peer_keeps_taking_is_not_cut() {
    read_in_bursts_for_three_idle_timeouts("/chunked", app().route("/chunked", get(chunked))).await;
}

/// A 16 MiB response in one frame (a body made from one buffer).
async fn whole() -> axum::response::Response {
    axum::response::Response::new(axum::body::Body::from(vec![0u8; 16 * 1024 * 1024]))
}

/// A response made from one large buffer is served to its end to a peer that keeps reading
/// it (1.5 MiB every half idle timeout, 1 s): the request stays in flight until its last bytes
/// are handed on, so the connection is neither closed as idle nor dropped as one whose peer
/// does not finish the close. Before, hyper took the whole buffer at once and dropped the
/// body: with nothing in flight the connection was closed as idle a second later, and dropped
/// a cut grace after that, with most of the response unsent.
#[tokio::test]
async fn a_response_made_from_one_large_buffer_is_served_to_its_end() {
    for h2 in [false, true] {
        one_large_buffer_served(h2).await;
    }
}

async fn one_large_buffer_served(h2: bool) {
    let w = World::new(false);
    let o = HttpOptions {
        idle_timeout: Duration::from_secs(1),
        ..options()
    };
    let addr = start_app(&w, None, app().route("/whole", get(whole)), o).await;
    let (creds, _k, _) = w.client(CLIENT, None, &LeafOpts::default());
    let mut raw = Raw::connect(&w, creds, addr, h2).await;
    let resp = raw.send("/whole", &[]).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut read = 0;
    for _ in 0..100 {
        let mut burst = 0;
        while burst < 3 * 512 * 1024 {
            let f = tokio::time::timeout(T, body.frame()).await.unwrap();
            match f {
                Some(Ok(f)) => burst += f.into_data().map_or(0, |d| d.len()),
                None => break,
                other => panic!("h2={h2}: the response was cut after {read} bytes: {other:?}"),
            }
        }
        read += burst;
        if read >= 16 * 1024 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(read, 16 * 1024 * 1024, "h2={h2}");
}

/// A presented chain whose `exp` comes before the peer certificate's `notAfter` becomes the
/// connection's deadline (spec/PROTOCOL.md 22.5): past the chain's `exp`, a request on the
/// same connection is refused (`credential_expired`) or finds the connection closed; it is not
/// served under the expired chain's authority for the rest of the certificate's life.
#[tokio::test]
async fn a_chain_that_expires_before_the_certificate_ends_the_connection_at_its_exp() {
    let w = World::new(false);
    let addr = start_with(&w, |o| o.close_margin = Duration::from_secs(1)).await;
    for h2 in [false, true] {
        let k = key();
        let holder = agentid_protocol::TaskIdentity::parse(CLIENT).unwrap();
        let n = now();
        let exp = n + 3;
        let chain = agentid_protocol::GrantBuilder::new(
            &w.a.td,
            &holder,
            k.public_key(),
            Scope::parse("files:read").unwrap(),
        )
        .validity(n - 5, n - 5, exp)
        .sign(&w.a.grant_key)
        .unwrap();
        let creds = Arc::new(MemoryCredentials::new(credential(
            &w.a.ca,
            CLIENT,
            copy(&k),
            &expiring_in(7200),
        )));
        let mut raw = Raw::connect(&w, creds, addr, h2).await;
        let proof = raw.proof(&k, Some(chain.as_str()));
        served(raw.present("/scope", chain.as_str(), &proof).await.unwrap()).await;
        // Past the chain's `exp` (whole seconds), the certificate still two hours from its end.
        while now() <= exp {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let sent = raw.send("/scope", &[]).await;
        refused_or_gone(sent, "credential_expired", |e| {
            e.to_string().contains("clos")
        })
        .await;
    }
}
