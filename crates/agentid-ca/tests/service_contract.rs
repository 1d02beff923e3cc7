//! The CA service against the letter of `spec/CA-API.md` where the written contract and the
//! code were found to disagree: header syntax (`If-None-Match` over several field lines), the
//! refusals of the HTTP binding in front of the routes (1.4), the time a request body may take,
//! the method an audit record names, and a token's principal checked when the token is made.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_api::RevocationsResponse;
use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{CertificateAuthority, KeySource, KeyType, OpenTaskRequest, TaskRequester};
use agentid_protocol::{Algorithm, BundleSet, PeerId, Scope, SpiffeId, TaskKey, VerifierConfig};
use agentid_transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use bytes::Bytes;
use http_body_util::BodyExt;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);
const EXTRA: &str = "\n[services.agentid-ca]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n";

/// A CA service on 127.0.0.1 with `options`: its directory and mTLS address.
async fn serve_with(options: ServiceOptions) -> (tempfile::TempDir, SocketAddr) {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str(EXTRA);
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let service = CaService::new(ca, options).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { service.serve(l).await });
    (dir, addr)
}

/// A planner task opened by the operator with a certificate living `ttl`.
fn planner_task(
    ca: &CertificateAuthority,
    ttl: Option<Duration>,
) -> (TaskKey, Vec<CertificateDer<'static>>, String) {
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let mut req = OpenTaskRequest::new(
        "planner",
        KeySource::Spki(key.public_key().to_spki_der()),
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    req.ttl = ttl;
    let c = ca.open_task(&req, common::now()).unwrap();
    let chain = common::chain_of(&c.certificate.leaf.der, &c.certificate.intermediate_der);
    (key, chain, c.identity.as_str().to_owned())
}

/// A TLS 1.3 connection to the CA's mTLS listener holding `chain` (ALPN `http/1.1` only), for
/// requests the agentid client would not send: it never presents a proof, so the CA serves it
/// identity-only.
async fn raw_tls(
    ca: &CertificateAuthority,
    addr: SocketAddr,
    key: TaskKey,
    chain: Vec<CertificateDer<'static>>,
    id: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let credential = agentid_transport::Credential::new(chain, key).unwrap();
    assert_eq!(credential.identity().as_str(), id);
    raw_tls_as(ca, addr, credential).await
}

/// [`raw_tls`] holding `credential`.
async fn raw_tls_as(
    ca: &CertificateAuthority,
    addr: SocketAddr,
    credential: agentid_transport::Credential,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let id = credential.identity().as_str().to_owned();
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    let cfg = VerifierConfig::new(SpiffeId::parse(&id).unwrap(), bundles)
        .danger_accept_missing_or_stale_revocations();
    let v = PeerVerification::new(cfg).unwrap();
    let creds = Arc::new(MemoryCredentials::new(credential));
    let mut config = agentid_transport::http::client_config(
        creds,
        &v,
        PeerPolicy::exact(PeerId::parse(common::CA_ID).unwrap()),
    )
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("ca.example.org").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// [`raw_tls`] under hyper's HTTP/1.1 client.
async fn raw_h1(
    ca: &CertificateAuthority,
    addr: SocketAddr,
    key: TaskKey,
    chain: Vec<CertificateDer<'static>>,
    id: &str,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>> {
    let tls = raw_tls(ca, addr, key, chain, id).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> (u16, http::HeaderMap, String) {
    sender.ready().await.unwrap();
    let resp = tokio::time::timeout(T * 2, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(b.to_vec()).unwrap())
}

fn get(path: &str) -> http::request::Builder {
    http::Request::get(path).header("host", "ca.example.org")
}

/// CA-API.md 3.4 and RFC 9110 5.2/5.3: `If-None-Match` is a list-based field, so a client or a
/// cache may send its entity tags on several field lines, which mean the same as one line
/// joining them with commas. The highest `seq` among all of them counts, and a tag that is not
/// a quoted decimal `seq` on any line is `400 bad_request`.
#[tokio::test]
async fn if_none_match_over_several_field_lines_counts_every_line() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id) = planner_task(&ca, None);
    let mut c = raw_h1(&ca, addr, key, chain, &id).await;
    let (s, _, b) = send(
        &mut c,
        get("/v1/revocations").body(Default::default()).unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let seq = serde_json::from_str::<RevocationsResponse>(&b).unwrap().seq;
    assert!(seq >= 1);
    let older = seq - 1;

    // Two lines, the current seq on the second: as `"older", "seq"`, not modified.
    let req = get("/v1/revocations")
        .header("if-none-match", format!("\"{older}\""))
        .header("if-none-match", format!("\"{seq}\""))
        .body(Default::default())
        .unwrap();
    let (s, h, b) = send(&mut c, req).await;
    assert_eq!(s, 304, "{b}");
    assert_eq!(
        h.get("etag").and_then(|v| v.to_str().ok()),
        Some(format!("\"{seq}\"").as_str())
    );

    // A malformed tag on the second line: as `"seq", "x"`, refused.
    let req = get("/v1/revocations")
        .header("if-none-match", format!("\"{seq}\""))
        .header("if-none-match", "\"x\"")
        .body(Default::default())
        .unwrap();
    let (s, _, b) = send(&mut c, req).await;
    let e: agentid_api::ApiError = serde_json::from_str(&b).unwrap_or_else(|_| panic!("{s} {b}"));
    assert_eq!((s, e.code.as_str()), (400, "bad_request"), "{b}");
}

/// CA-API.md 5: the service bounds the time of every request. A caller that starts a request
/// body and stops sending it is answered (or dropped) within 20 seconds, instead of keeping
/// the request, and its connection, for as long as its certificate lives.
#[tokio::test]
async fn a_request_body_that_stops_arriving_is_not_waited_for_forever() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id) = planner_task(&ca, None);
    let mut tls = raw_tls(&ca, addr, key, chain, &id).await;
    // A head announcing 100 bytes, and 2 of them.
    tls.write_all(
        b"POST /v1/renew HTTP/1.1\r\nhost: ca.example.org\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{}",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "after {:?} the service still waits for the rest of the body (nothing answered, connection open)",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    // Answered, it is the refusal of a body that could not be read.
    if !text.is_empty() {
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains("\"code\":\"bad_request\""), "{text}");
    }
}

/// A refusal of the HTTP binding in front of the routes (CA-API.md 1.4, PROTOCOL.md 22.6): the
/// body is exactly `{code, message}`, a 401 carries `WWW-Authenticate: Agentid error="<code>"`.
fn binding_code(status: u16, headers: &http::HeaderMap, body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{status} {body}: not JSON ({e})"));
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 2, "{status} {body}: exactly code and message");
    assert!(
        o["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let code = o["code"].as_str().unwrap().to_owned();
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok());
    if status == 401 {
        assert_eq!(
            challenge,
            Some(format!("Agentid error=\"{code}\"").as_str())
        );
    } else {
        assert_eq!(challenge, None, "{status}");
    }
    code
}

/// CA-API.md 1.4 (and 1.3's `certificate_expired`): the HTTP binding in front of the routes
/// holds the connection's deadline, the caller certificate's `notAfter`. A long-poll accepted
/// while the caller's certificate was valid and answered after its `notAfter` is refused by the
/// binding, `401 credential_expired`, in PROTOCOL.md 22.6's shape.
#[tokio::test]
async fn a_caller_whose_certificate_expires_during_its_request_gets_the_bindings_credential_expired(
) {
    let mut options = ServiceOptions::default();
    // No graceful close before the deadline, and in-flight requests kept well past it, so
    // that the held request is answered after the caller's notAfter.
    options.http.close_margin = Duration::ZERO;
    options.http.cut_grace = Duration::from_secs(20);
    let (dir, addr) = serve_with(options).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id) = planner_task(&ca, Some(Duration::from_secs(3)));
    let mut c = raw_h1(&ca, addr, key, chain, &id).await;
    let (s, _, b) = send(
        &mut c,
        get("/v1/revocations").body(Default::default()).unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let seq = serde_json::from_str::<RevocationsResponse>(&b).unwrap().seq;
    // Held 6 s: past the certificate's notAfter (3 s).
    let req = get(&format!("/v1/revocations?after={seq}&wait=6"))
        .body(Default::default())
        .unwrap();
    let (s, h, b) = send(&mut c, req).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(binding_code(s, &h, &b), "credential_expired");
    assert_eq!(
        h.get("connection").and_then(|v| v.to_str().ok()),
        Some("close")
    );
}

/// CA-API.md 1.4: a request on the mTLS listener whose `agentid-proof` field is malformed (a
/// space) is refused by the binding before any route, `400 bad_header` in PROTOCOL.md 22.6's
/// shape (no `hint`), and the connection stays usable (PROTOCOL.md 22.2: the state is
/// unchanged): the next request is served.
#[tokio::test]
async fn a_malformed_agentid_header_on_the_ca_listener_gets_the_bindings_bad_header() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id) = planner_task(&ca, None);
    let mut c = raw_h1(&ca, addr, key, chain, &id).await;
    let req = get("/healthz")
        .header("agentid-proof", "a b")
        .body(Default::default())
        .unwrap();
    let (s, h, b) = send(&mut c, req).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(binding_code(s, &h, &b), "bad_header");
    let (s, _, b) = send(&mut c, get("/healthz").body(Default::default()).unwrap()).await;
    assert_eq!((s, b.as_str()), (200, r#"{"status":"ok"}"#));
}

/// CA-API.md 4.1: a `request.refused` record's `subject` is the method and route of the refused
/// request. A `PUT` (or `DELETE`) on a route that takes only `POST` is refused `404 not_found`
/// and recorded with its own method, not a placeholder.
#[tokio::test]
async fn a_refused_request_is_recorded_with_its_method_and_route() {
    let (dir, addr, _) = common::serve_ca(EXTRA, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (key, chain, id) = planner_task(&ca, None);
    let mut c = raw_h1(&ca, addr, key, chain, &id).await;
    let before = common::audit_records(&ca).len();
    for method in ["PUT", "DELETE"] {
        let req = http::Request::builder()
            .method(method)
            .uri("/v1/renew")
            .header("host", "ca.example.org")
            .body(Default::default())
            .unwrap();
        let (s, _, b) = send(&mut c, req).await;
        assert_eq!(s, 404, "{b}");
        let e: agentid_api::ApiError = serde_json::from_str(&b).unwrap();
        assert_eq!(e.code.as_str(), "not_found");
    }
    let records = common::audit_records(&ca);
    let subjects: Vec<&str> = records[before..]
        .iter()
        .filter(|r| r["kind"] == "request.refused")
        .map(|r| r["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["PUT /v1/renew", "DELETE /v1/renew"]);
}

/// CA-API.md 3.6 and 1.3: the token binds every field and the CA checks the binding when the
/// token is made, as the enrollment will; a `principal` is a PROTOCOL.md 6.1.1 subject
/// identifier. One that is not (not an object, no `format`, the `{"sub": ...}` shape) is
/// refused `400 bad_request` and no token is made, as `POST /v1/tasks` refuses it, instead of a
/// token that no enrollment can redeem.
#[tokio::test]
async fn a_token_naming_a_malformed_principal_is_refused_and_none_is_made() {
    let extra = format!(
        "{EXTRA}[services.platform]\nrequesters = [\"operator\"]\n[agents.planner.permissions]\n\"svc:platform\" = [\"create_token\", \"assert_principal\"]\n"
    );
    let (dir, addr, _) = common::serve_ca(&extra, false).await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let platform = common::service_credential(&ca, "platform", None);
    let tls = raw_tls_as(&ca, addr, platform).await;
    let (mut c, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let tokens = || {
        let db = rusqlite::Connection::open(dir.path().join("ca.db")).unwrap();
        db.query_row("SELECT count(*) FROM bootstrap_tokens", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    let post = |principal: &str| {
        http::Request::post("/v1/tokens")
            .header("host", "ca.example.org")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(format!(
                r#"{{"agent":"planner","scope":["tickets:read"],"principal":{principal}}}"#
            ))))
            .unwrap()
    };
    for principal in ["5", "{}", r#"{"sub":"user:42"}"#, r#"{"format":"opaque"}"#] {
        let (s, _, b) = send(&mut c, post(principal)).await;
        let e: agentid_api::ApiError =
            serde_json::from_str(&b).unwrap_or_else(|_| panic!("{principal}: {s} {b}"));
        assert_eq!(
            (s, e.code.as_str()),
            (400, "bad_request"),
            "{principal}: {b}"
        );
        assert_eq!(tokens(), 0, "{principal}: a token was made");
    }
    let (s, _, b) = send(&mut c, post(r#"{"format":"opaque","id":"user:42"}"#)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(tokens(), 1);
}

/// CA-API.md 1.1 and 1.3: past its source's limit, an enrollment request is refused
/// `429 rate_limited` with `Retry-After`, the time the caller ought to wait (RFC 9110 10.2.3):
/// until the source's count starts again, not a second after which it is refused again (and
/// counted again).
#[tokio::test]
async fn an_enrollment_source_past_its_limit_is_told_to_wait_until_its_count_starts_again() {
    let options = ServiceOptions {
        enroll_rate_per_source: 3,
        ..ServiceOptions::default()
    };
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str(EXTRA);
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let service = CaService::new(ca, options).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let enroll = e.local_addr().unwrap();
    tokio::spawn(async move { service.serve_both(l, Some(e)).await });

    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    let v = PeerVerification::new(
        VerifierConfig::new(
            SpiffeId::parse("spiffe://example.org/agent/x/task/y").unwrap(),
            bundles,
        )
        .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap();
    let config = agentid_transport::http::enrollment_client_config(
        &v,
        PeerPolicy::exact(PeerId::parse(common::CA_ID).unwrap()),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(enroll).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("agentid.invalid").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut c, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let (s, _, b) = send(&mut c, get("/v1/bundle").body(Default::default()).unwrap()).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, h, b) = send(&mut c, get("/v1/bundle").body(Default::default()).unwrap()).await;
    let e: agentid_api::ApiError = serde_json::from_str(&b).unwrap();
    assert_eq!((s, e.code.as_str()), (429, "rate_limited"), "{b}");
    let wait: u64 = h
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no integer Retry-After: {h:?}"));
    let window = agentid_ca::server::ENROLL_RATE_WINDOW.as_secs();
    // The four requests took well under half the window.
    assert!(
        (window / 2..=window).contains(&wait),
        "Retry-After {wait}, the count starts again within {window} s"
    );
}
