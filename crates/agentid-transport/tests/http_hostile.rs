//! The HTTP binding (spec/PROTOCOL.md section 22) against peers that do not cooperate: HTTP/2
//! connections that never send their preface, leave a header block unfinished or never answer
//! GOAWAY are still closed (idle, or after a failed presentation); a timeout of
//! `Duration::MAX` still cuts streams at the deadline; and the client fails a served answer
//! without the server's proof.
#![cfg(test)]
#![cfg(feature = "axum")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_transport::http::{self, Authorizer, HttpOptions, HttpServer};
use agentid_transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use axum::routing::get;
use axum::Router;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: &str = "spiffe://example.org/svc/files";
const CLIENT: &str = "spiffe://example.org/agent/client/task/t2";

struct World {
    a: Domain,
    server_creds: Arc<MemoryCredentials>,
    sv: Arc<PeerVerification>,
    cv: Arc<PeerVerification>,
}

impl World {
    fn new() -> Self {
        let a = Domain::new("example.org");
        let sv = verification(SERVER, &[&a], false);
        let cv = verification(CLIENT, &[&a], false);
        let server_creds = credentials(&a.ca, SERVER);
        Self {
            a,
            server_creds,
            sv,
            cv,
        }
    }

    fn client_creds(&self) -> Arc<MemoryCredentials> {
        Arc::new(MemoryCredentials::new(credential(
            &self.a.ca,
            CLIENT,
            key(),
            &LeafOpts::default(),
        )))
    }
}

/// Reads the whole request body.
async fn upload(body: bytes::Bytes) -> String {
    format!("{} bytes", body.len())
}

async fn whoami(a: Authorizer) -> String {
    a.peer_id().to_string()
}

/// One chunk now, then nothing until the connection cuts the body.
async fn stream() -> axum::response::Response {
    axum::response::Response::new(axum::body::Body::new(FirstThenPending(Some(
        bytes::Bytes::from_static(b"first"),
    ))))
}

struct FirstThenPending(Option<bytes::Bytes>);

impl hyper::body::Body for FirstThenPending {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

async fn start(w: &World, o: HttpOptions) -> SocketAddr {
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/stream", get(stream))
        .route("/upload", axum::routing::post(upload));
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

/// A TLS connection of `creds` to `addr` with ALPN `alpn`, nothing sent on it yet.
async fn tls(
    w: &World,
    creds: Arc<MemoryCredentials>,
    addr: SocketAddr,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = http::client_config(creds, &w.cv, PeerPolicy::exact(peer(SERVER))).unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        T,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(
            rustls::pki_types::ServerName::try_from("files").unwrap(),
            tcp,
        ),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Reads (and discards) whatever the server sends until it closes the connection; whether it
/// did within `within`.
async fn server_closes_within(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return false,                // still open at `until`
            Ok(Ok(0)) | Ok(Err(_)) => return true, // EOF or reset
            Ok(Ok(_)) => {}                        // a frame (SETTINGS, GOAWAY, ...): keep reading
        }
    }
}

/// As [`server_closes_within`], also returning the HTTP/2 frames read, as (type, stream id).
async fn read_frames(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> (bool, Vec<(u8, u32)>) {
    let until = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at(until, s.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 9 <= buf.len() {
        let len =
            (usize::from(buf[i]) << 16) | (usize::from(buf[i + 1]) << 8) | usize::from(buf[i + 2]);
        let id = u32::from_be_bytes([buf[i + 5], buf[i + 6], buf[i + 7], buf[i + 8]]) & 0x7fff_ffff;
        frames.push((buf[i + 3], id));
        i += 9 + len;
    }
    (closed, frames)
}

fn idle_options() -> HttpOptions {
    HttpOptions {
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        cut_grace: Duration::from_millis(500),
        ..HttpOptions::default()
    }
}

/// Control: on HTTP/1.1 a connection that sends nothing after the TLS handshake is dropped after
/// the header read timeout (plus the cut grace).
#[tokio::test]
async fn h1_connection_that_sends_nothing_is_closed() {
    let w = World::new();
    let addr = start(&w, idle_options()).await;
    let mut s = tls(&w, w.client_creds(), addr, b"http/1.1").await;
    assert!(server_closes_within(&mut s, Duration::from_secs(8)).await);
}

/// spec/PROTOCOL.md 22.5 "Idle connections": "a server closes a connection gracefully when no
/// request has been in flight ... for an idle timeout, on HTTP/1.1 and HTTP/2 alike". An
/// authenticated peer that negotiates `h2` and then never sends the HTTP/2 connection preface
/// must not keep the connection (and its admission slot) open until its certificate expires:
/// hyper's graceful shutdown waits for the preface, so the server drops the connection once
/// the close it started found nothing in flight for the cut grace.
#[tokio::test]
async fn h2_connection_without_preface_is_closed_when_idle() {
    assert_idle_h2_closed(&[], "that never sent the preface").await;
}

/// The same with a request head that never completes: the preface and SETTINGS, then a HEADERS
/// frame without END_HEADERS (no CONTINUATION follows). No request is ever dispatched, so none
/// is in flight: the idle timeout must close the connection.
#[tokio::test]
async fn h2_connection_with_an_unfinished_header_block_is_closed_when_idle() {
    let mut out = preface_and_settings();
    // HEADERS on stream 1, flags END_STREAM only (no END_HEADERS): `:method GET` (indexed 2).
    out.extend_from_slice(&[0, 0, 1, 1, 0x01, 0, 0, 0, 1, 0x82]);
    assert_idle_h2_closed(&out, "with an unfinished header block").await;
}

/// The same with a peer that sends the preface and an empty SETTINGS frame, then nothing (it
/// never acknowledges the server's SETTINGS nor answers a PING). No request was ever in flight:
/// the idle timeout must close the connection, whatever the peer does not answer.
#[tokio::test]
async fn h2_connection_that_only_sends_the_preface_is_closed_when_idle() {
    assert_idle_h2_closed(&preface_and_settings(), "that sent only its preface").await;
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
fn preface_and_settings() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    out
}

/// An authenticated `h2` connection to a server with a 1 s idle timeout that sends `sent` and
/// then nothing is closed by the server within 8 s.
async fn assert_idle_h2_closed(sent: &[u8], what: &str) {
    let w = World::new();
    let addr = start(&w, idle_options()).await;
    let mut s = tls(&w, w.client_creds(), addr, b"h2").await;
    if !sent.is_empty() {
        s.write_all(sent).await.unwrap();
        s.flush().await.unwrap();
    }
    assert!(
        server_closes_within(&mut s, Duration::from_secs(8)).await,
        "an h2 connection {what} is still open 8 s after a 1 s idle timeout"
    );
}

/// HPACK, literal without indexing, new name (RFC 7541 6.2.2); short names and values only.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// spec/PROTOCOL.md 22.3: "`Failed(c)` refuses every later request with `c` ... and the server
/// closes the connection: ... HTTP/2 sends GOAWAY and lets in-flight streams finish". A peer
/// whose presentation failed (here a malformed proof: 401) and that then does not answer the
/// server's PING has its failed connection dropped once nothing is in flight.
#[tokio::test]
async fn h2_failed_presentation_closes_even_an_uncooperative_peer() {
    let w = World::new();
    let addr = start(
        &w,
        HttpOptions {
            handshake_timeout: Duration::from_secs(2),
            cut_grace: Duration::from_millis(500),
            ..HttpOptions::default()
        },
    )
    .await;
    let mut s = tls(&w, w.client_creds(), addr, b"h2").await;
    let mut block = vec![0x82, 0x87, 0x84]; // :method GET, :scheme https, :path /
    block.extend_from_slice(&[0x01, 5]); // :authority (indexed name 1) "files"
    block.extend_from_slice(b"files");
    literal(&mut block, "agentid-proof", "aaaa.bbbb.cccc");
    let mut out = preface_and_settings();
    let len = block.len();
    // HEADERS on stream 1, END_STREAM | END_HEADERS.
    out.extend_from_slice(&[0, 0, len as u8, 1, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    let (closed, frames) = read_frames(&mut s, Duration::from_secs(8)).await;
    // The server answered the stream (HEADERS on stream 1: the 401) and sent GOAWAY ...
    assert!(
        frames.contains(&(1, 1)),
        "no response on stream 1: {frames:?}"
    );
    assert!(frames.iter().any(|f| f.0 == 7), "no GOAWAY: {frames:?}");
    // ... but never closes the connection.
    assert!(
        closed,
        "an h2 connection whose presentation failed is still open 8 s later (frames {frames:?})"
    );
}

/// The request head of `GET https://files/` on HTTP/2 (HPACK, static entries and literals
/// without indexing, so any stream can carry it), with `extra` header fields.
fn get_block(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x84]; // :method GET, :scheme https, :path /
    block.extend_from_slice(&[0x01, 5]); // :authority (indexed name 1) "files"
    block.extend_from_slice(b"files");
    for (n, v) in extra {
        literal(&mut block, n, v);
    }
    block
}

/// A HEADERS frame on `stream`, END_STREAM | END_HEADERS.
fn headers_frame(out: &mut Vec<u8>, stream: u32, block: &[u8]) {
    let len = u32::try_from(block.len()).unwrap().to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], 1, 0x05]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(block);
}

/// spec/PROTOCOL.md 22.3: "`Failed(c)` refuses every later request with `c` ... and the server
/// closes the connection". A peer whose presentation failed, that never answers the GOAWAY's
/// PING (so the server's GOAWAY keeps admitting new streams) and that keeps opening a stream
/// every 200 ms, each refused with the stored code, must not keep its failed connection (and
/// its admission slot) open until its certificate expires: refused requests are no activity
/// that a graceful close waits for.
#[tokio::test]
async fn h2_failed_connection_is_closed_although_the_peer_keeps_opening_streams() {
    let w = World::new();
    let addr = start(
        &w,
        HttpOptions {
            handshake_timeout: Duration::from_secs(2),
            cut_grace: Duration::from_millis(500),
            ..HttpOptions::default()
        },
    )
    .await;
    let mut s = tls(&w, w.client_creds(), addr, b"h2").await;
    let mut out = preface_and_settings();
    headers_frame(
        &mut out,
        1,
        &get_block(&[("agentid-proof", "aaaa.bbbb.cccc")]),
    );
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    let plain = get_block(&[]);
    let mut frames = Vec::new();
    let mut closed = false;
    // Bounded: 50 streams, one every 200 ms (10 s, twenty times the cut grace).
    for i in 0..50u32 {
        let (c, f) = read_frames(&mut s, Duration::from_millis(200)).await;
        frames.extend(f);
        if c {
            closed = true;
            break;
        }
        let mut out = Vec::new();
        headers_frame(&mut out, 3 + 2 * i, &plain);
        if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(
        frames.contains(&(1, 1)),
        "no response on stream 1: {frames:?}"
    );
    assert!(frames.iter().any(|f| f.0 == 7), "no GOAWAY: {frames:?}");
    assert!(
        closed,
        "a failed h2 connection is still open after 50 refused streams (frames {frames:?})"
    );
}

/// `HttpOptions::idle_timeout` set to `Duration::MAX` (a natural way to say "never close idle
/// connections") is taken as a year, so each connection's watchdog, which cuts streaming
/// bodies at the deadline and on revocation (spec/PROTOCOL.md 22.5: "at the deadline, and on
/// revocation, response bodies still streaming are cut"), does not panic on `Instant +
/// Duration` overflow and a streaming response is cut at the client certificate's `notAfter`.
#[tokio::test]
async fn a_huge_idle_timeout_still_cuts_streams_at_the_deadline() {
    use http_body_util::{BodyExt as _, Full};
    let w = World::new();
    let addr = start(
        &w,
        HttpOptions {
            handshake_timeout: Duration::from_secs(2),
            close_margin: Duration::from_secs(1),
            idle_timeout: Duration::MAX,
            ..HttpOptions::default()
        },
    )
    .await;
    // The client certificate has 3 s left: the connection's deadline.
    let creds = Arc::new(MemoryCredentials::new(credential(
        &w.a.ca,
        CLIENT,
        key(),
        &LeafOpts {
            not_after: Some(3),
            ..LeafOpts::default()
        },
    )));
    let s = tls(&w, creds, addr, b"h2").await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = ::http::Request::get("https://files/stream")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(T, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(T, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    // The deadline is 3 s away: within 10 s the body must be cut (an error or its end).
    let next = tokio::time::timeout(Duration::from_secs(10), body.frame()).await;
    assert!(
        matches!(next, Ok(None) | Ok(Some(Err(_)))),
        "the streaming body was not cut at the deadline: {next:?}"
    );
}

/// spec/PROTOCOL.md 22.4: "A client verifies the server's proof from the first served response
/// ...; a served response without a proof to a request that carried one is a failure of the
/// connection." A 404 (or 409, 422, ...) is no agentid refusal's status (22.6: 400, 401, 403,
/// 431, 500, 503), so it is served, and without a proof it fails the connection. Here a TLS
/// peer with the expected identity that never answers with a proof (a plain hyper server on
/// agentid's TLS configuration) serves the client's presenting request with 404.
#[tokio::test]
async fn the_client_fails_a_served_404_without_the_server_proof() {
    let w = World::new();
    let (addr, _served) = proofless_server(&w).await;
    let mut conn = presenting_client(&w).connect(addr, "files").await.unwrap();
    let sent = tokio::time::timeout(T, conn.send(files_a())).await.unwrap();
    match sent {
        Err(_) => {}
        Ok(resp) => panic!(
            "a served {} without the server's proof was accepted (server proof verified: {})",
            resp.status(),
            conn.server_proof().is_some()
        ),
    }
}

/// "A served response without a proof to a request that carried one is a failure of the
/// connection" (22.4): the connection carries no more requests. It used to stay usable, and
/// each later request went to the server that never proved itself, the presentation again.
#[tokio::test]
async fn after_a_served_answer_without_the_server_proof_the_connection_carries_no_more_requests() {
    let w = World::new();
    let (addr, served) = proofless_server(&w).await;
    let mut conn = presenting_client(&w).connect(addr, "files").await.unwrap();
    let first = tokio::time::timeout(T, conn.send(files_a())).await.unwrap();
    assert!(
        first.is_err(),
        "a served answer without the proof was accepted"
    );
    assert!(
        !conn.is_usable(),
        "the failed connection still counts as usable"
    );
    let again = tokio::time::timeout(T, conn.send(files_a())).await.unwrap();
    match again {
        Err(e) => assert_eq!(e.reason(), "handshake_refused", "{e}"),
        Ok(resp) => panic!("a second request was answered {}", resp.status()),
    }
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a request after the failure reached the server"
    );
}

fn files_a() -> ::http::Request<bytes::Bytes> {
    ::http::Request::get("/files/a")
        .body(bytes::Bytes::new())
        .unwrap()
}

/// A TLS peer with the expected identity that never answers with a proof (a plain hyper
/// server on agentid's TLS configuration): it serves every request with 404, counting them.
async fn proofless_server(w: &World) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use http_body_util::Full;
    let config = Arc::new(
        http::server_config(
            w.server_creds.clone(),
            &w.sv,
            PeerPolicy::trust_domain(w.a.td.clone()),
        )
        .unwrap(),
    );
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(
                            ::http::Response::builder()
                                .status(404)
                                .body(Full::new(bytes::Bytes::from_static(b"served, no proof")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, served)
}

/// The client, with a chain (`files:read`), over HTTP/1.1, expecting the server.
fn presenting_client(w: &World) -> http::HttpClient {
    let k = key();
    let holder = agentid_protocol::TaskIdentity::parse(CLIENT).unwrap();
    let chain = w.a.grant(&holder, &k, "files:read").as_str().to_owned();
    let cred = credential(
        &w.a.ca,
        CLIENT,
        agentid_protocol::TaskKey::from_pkcs8_der(k.danger_pkcs8_der()).unwrap(),
        &LeafOpts::default(),
    )
    .with_chain(chain);
    let creds = Arc::new(MemoryCredentials::new(cred));
    http::HttpClient::builder(creds, w.cv.clone(), PeerPolicy::exact(peer(SERVER)))
        .connect_timeout(T)
        .http1_only()
        .build()
        .unwrap()
}

fn body_idle_options() -> HttpOptions {
    HttpOptions {
        body_idle_timeout: Some(Duration::from_secs(1)),
        ..HttpOptions::default()
    }
}

/// Everything the server sends until `within` has passed or it closes the connection.
async fn read_until_closed(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> (bool, String) {
    let until = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return (false, String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A peer that announces a body and stops sending it does not keep its request (and, on
/// HTTP/1.1, its connection) in flight until the connection's deadline: the service reading
/// the body gets `BodyStalled` after `body_idle_timeout`, answers, and the connection closes
/// (its body was never finished).
#[tokio::test]
async fn h1_request_body_that_stops_arriving_is_failed_after_the_body_idle_timeout() {
    let w = World::new();
    let addr = start(&w, body_idle_options()).await;
    let mut s = tls(&w, w.client_creds(), addr, b"http/1.1").await;
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: files\r\ncontent-length: 100\r\n\r\nonly 10 b.")
        .await
        .unwrap();
    s.flush().await.unwrap();
    let (closed, answer) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "the stalled body's request is answered 400 by the route's extractor: {answer:?}"
    );
    assert!(closed, "the connection of an unfinished body closes");
}

/// The body idle timeout is a limit on silence, not on the whole body: a body whose chunks
/// arrive more slowly than the timeout in total, each within it, is read whole.
#[tokio::test]
async fn h1_request_body_whose_chunks_keep_arriving_is_read_whole() {
    let w = World::new();
    let addr = start(&w, body_idle_options()).await;
    let mut s = tls(&w, w.client_creds(), addr, b"http/1.1").await;
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: files\r\ncontent-length: 12\r\n\r\n")
        .await
        .unwrap();
    for chunk in [b"four", b"more", b"last"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(chunk).await.unwrap();
        s.flush().await.unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("12 bytes") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

/// A zero body idle timeout is a configuration mistake (`None` is "no limit").
#[test]
fn a_zero_body_idle_timeout_is_refused() {
    let w = World::new();
    let built = HttpServer::builder(
        w.server_creds.clone(),
        w.sv.clone(),
        PeerPolicy::trust_domain(w.a.td.clone()),
    )
    .options(HttpOptions {
        body_idle_timeout: Some(Duration::ZERO),
        ..HttpOptions::default()
    })
    .build();
    assert!(built.is_err());
}
