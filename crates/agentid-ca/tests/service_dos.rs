//! The CA service against clients that hold its resources (red team, resource exhaustion): the
//! enrollment listener's connection caps, the time a request body may take, and the long-poll
//! slots of callers that go away. On 127.0.0.1 with real TLS; every wait is bounded.
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::CA_ID;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{CertificateAuthority, KeyType};
use agentid_protocol::PeerId;
use agentid_transport::http::HttpClient;
use agentid_transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

struct World {
    dir: tempfile::TempDir,
    mtls: SocketAddr,
    enroll: SocketAddr,
    /// The task running the service.
    serving: tokio::task::JoinHandle<Result<(), agentid_ca::server::ServeError>>,
}

async fn start(options: ServiceOptions) -> World {
    let (dir, service) = service(options);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mtls = l.local_addr().unwrap();
    let enroll = e.local_addr().unwrap();
    let serving = tokio::spawn(async move { service.serve_both(l, Some(e)).await });
    World {
        dir,
        mtls,
        enroll,
        serving,
    }
}

/// A CA directory with the test policy (and a rule for the CA's own service) and its service.
fn service(options: ServiceOptions) -> (tempfile::TempDir, CaService) {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str("\n[services.agentid-ca]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n");
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let service = CaService::new(ca, options).unwrap();
    (dir, service)
}

impl World {
    fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::open(self.dir.path()).unwrap()
    }

    fn verification(&self, own: &str) -> Arc<PeerVerification> {
        common::verification(&self.ca(), own)
    }

    /// A task of `agent` opened by the operator: its credentials and identity.
    fn task(&self, agent: &str) -> (Arc<MemoryCredentials>, String) {
        common::operator_credentials(&self.ca(), agent)
    }

    /// A connection to the mTLS listener as `creds` (identity `id`), the CA's identity required.
    async fn mtls_connection(
        &self,
        creds: Arc<MemoryCredentials>,
        id: &str,
    ) -> agentid_transport::http::HttpClientConnection {
        common::ca_connection(&self.ca(), self.mtls, creds, id).await
    }

    /// An HTTP/1.1 connection to the enrollment listener (TLS without a client certificate,
    /// the CA's root trusted), nothing sent on it yet; `None` when the listener refused it.
    async fn enroll_connection(
        &self,
    ) -> Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>> {
        let v = self.verification("spiffe://example.org/agent/x/task/y");
        let config = agentid_transport::http::enrollment_client_config(
            &v,
            PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(self.enroll).await.ok()?;
        let name = rustls_pki_types::ServerName::try_from("agentid.invalid").unwrap();
        let tls = tokio::time::timeout(
            T,
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .ok()?
        .ok()?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .ok()?;
        tokio::spawn(conn);
        Some(sender)
    }
}

/// `GET /healthz` on an enrollment connection: whether it was answered 200 within 5 s.
async fn served(
    sender: &mut Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>>,
) -> bool {
    let Some(s) = sender.as_mut() else {
        return false;
    };
    let req = http::Request::builder()
        .uri("/healthz")
        .header("host", "ca")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let answer = async {
        if s.ready().await.is_err() {
            return false;
        }
        match s.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status() == 200;
                ok && resp.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    };
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .unwrap_or(false)
}

/// Opens `n` enrollment connections one after the other and keeps them all; then asks
/// `/healthz` on each: how many were served while all were held.
async fn served_of(w: &World, n: usize) -> usize {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(w.enroll_connection().await);
    }
    let mut count = 0;
    for s in &mut held {
        if served(s).await {
            count += 1;
        }
    }
    count
}

fn enroll_options(max_connections: usize, per_source: usize) -> ServiceOptions {
    let mut o = ServiceOptions::default();
    o.enroll_limits.max_connections = max_connections;
    o.enroll_limits.max_pending_per_source = per_source;
    o.enroll_rate_per_source = 1000;
    o
}

/// `ServiceOptions::enroll_limits.max_connections` ("connection caps of the enrollment
/// listener, its own, smaller than the mTLS listener's") bounds the connections the
/// unauthenticated enrollment listener holds. Without it, anyone who can reach the listener
/// holds as many TLS connections (each a descriptor, buffers and a task, for up to 60 s) as they
/// open, until the process runs out of descriptors and the mTLS listener cannot accept either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_listener_holds_no_more_connections_than_its_cap() {
    let w = start(enroll_options(3, 64)).await;
    let count = served_of(&w, 8).await;
    assert!(
        count <= 3,
        "{count} of 8 enrollment connections were served at once (cap 3)"
    );
    // The slots come back when the connections go (the server notices asynchronously).
    let mut released = false;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if served(&mut w.enroll_connection().await).await {
            released = true;
            break;
        }
    }
    assert!(released, "the slots were never released");
}

/// Every enrollment connection is unauthenticated for its whole life, so one source address
/// holds at most `enroll_limits.max_pending_per_source` of them, served or handshaking: else one
/// host holds every slot of the listener with idle connections (which send no request, so the
/// per-source request rate never sees them) and no one else enrolls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_its_share_of_enrollment_connections() {
    let w = start(enroll_options(100, 2)).await;
    let served = served_of(&w, 6).await;
    assert!(
        served <= 2,
        "{served} of 6 enrollment connections from one address were served at once (cap 2)"
    );
}

/// An authenticated caller that sends a request head announcing a body and then only part of
/// it (a body that never ends) must not hold its request, and with it its connection, open
/// until its certificate expires: the idle timeout of the HTTP server is suspended while a
/// request is in flight, so the CA bounds the time it waits for a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_never_ends_is_given_up_within_a_bound() {
    let w = start(ServiceOptions::default()).await;
    let (creds, id) = w.task("planner");
    let v = w.verification(&id);
    let mut config = agentid_transport::http::client_config(
        creds,
        &v,
        PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
    )
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(w.mtls).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("ca.example.org").unwrap();
    let mut tls = tokio::time::timeout(
        T,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap()
    .unwrap();
    tls.write_all(
        b"POST /v1/renew HTTP/1.1\r\nhost: ca\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"identity\":",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    // Whatever the server does (a 4xx, or closing), it must do it in bounded time; it keeps
    // the connection and the request forever otherwise.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "a request whose body never ends was still held after 30 s"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "not a refusal: {text}"
    );
}

/// A long-poll slot (per caller, `max_waiters_per_caller`) is released when the caller goes
/// away, not only when the wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_slot_is_released_when_its_caller_goes_away() {
    long_poll_slot_released(false).await;
}

/// The same on HTTP/1.1, where the caller going away is only a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_slot_is_released_when_its_http1_caller_goes_away() {
    long_poll_slot_released(true).await;
}

async fn long_poll_slot_released(h1: bool) {
    let w = start(ServiceOptions {
        max_waiters_per_caller: 1,
        ..ServiceOptions::default()
    })
    .await;
    let (creds, id) = w.task("worker");
    let mut builder = HttpClient::builder(
        creds,
        w.verification(&id),
        PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
    )
    .connect_timeout(T);
    if h1 {
        builder = builder.http1_only();
    }
    let client = builder.build().unwrap();
    let mut first = client.connect(w.mtls, "ca.example.org").await.unwrap();
    let (s, _, b) = common::call_with_headers(&mut first, "GET", "/v1/revocations", "").await;
    assert_eq!(s, 200, "{b}");
    let seq: u64 = serde_json::from_str::<serde_json::Value>(&b).unwrap()["seq"]
        .as_u64()
        .unwrap();
    let held = tokio::spawn(async move {
        let req = http::Request::builder()
            .uri(format!("/v1/revocations?after={seq}&wait=30"))
            .body(Bytes::new())
            .unwrap();
        let _ = first.send(req).await;
    });
    let mut second = client.connect(w.mtls, "ca.example.org").await.unwrap();
    let short = format!("/v1/revocations?after={seq}&wait=1");
    // Until the first connection's wait is the one held (the second is refused 429).
    let mut refused = false;
    for _ in 0..50 {
        let (s, _, _) = common::call_with_headers(&mut second, "GET", &short, "").await;
        if s == 429 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the first long-poll was never held");
    // The first caller goes away: its connection (and the request on it) is dropped.
    held.abort();
    let _ = held.await;
    let mut freed = false;
    for _ in 0..40 {
        let (s, _, _) = common::call_with_headers(&mut second, "GET", &short, "").await;
        if s == 304 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        freed,
        "the long-poll slot of a caller that went away was still held"
    );
}

/// A raw TLS connection to the enrollment listener with ALPN `http/1.1`, nothing sent yet.
async fn enroll_tls(w: &World) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let v = w.verification("spiffe://example.org/agent/x/task/y");
    let mut config = agentid_transport::http::enrollment_client_config(
        &v,
        PeerPolicy::exact(PeerId::parse(CA_ID).unwrap()),
    )
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(w.enroll).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("agentid.invalid").unwrap();
    tokio::time::timeout(
        T,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Whether the server closed `s` within `within`, while `dribble` bytes (if any) are sent one
/// every 200 ms (then nothing).
async fn closed_within(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    dribble: &[u8],
    within: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + within;
    let mut next = 0;
    let mut buf = [0u8; 1024];
    loop {
        let tick = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            () = tick => {
                if tokio::time::Instant::now() >= until {
                    return false;
                }
                if next < dribble.len() {
                    if s.write_all(&dribble[next..=next]).await.is_err() || s.flush().await.is_err() {
                        return true;
                    }
                    next += 1;
                }
            }
        }
    }
}

fn enroll_idle_options() -> ServiceOptions {
    let mut o = ServiceOptions::default();
    o.enroll_limits.idle_timeout = Some(Duration::from_secs(1));
    o
}

/// `enroll_limits.idle_timeout` (default 30 s) closes an enrollment connection on which no
/// request is in flight: one that sends nothing after its TLS handshake does not hold its slot
/// for the connection's whole 60 s lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_enrollment_connection_is_closed_after_the_idle_timeout() {
    let w = start(enroll_idle_options()).await;
    let mut s = enroll_tls(&w).await;
    assert!(
        closed_within(&mut s, b"", Duration::from_secs(15)).await,
        "a silent enrollment connection was still open after 15 s (idle timeout 1 s)"
    );
}

/// The same for a request head dribbled a byte at a time (slowloris): no request is ever
/// dispatched, so the connection is idle and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_request_head_dribbled_byte_by_byte_is_cut_after_the_idle_timeout() {
    let w = start(enroll_idle_options()).await;
    let mut s = enroll_tls(&w).await;
    let head: Vec<u8> = b"GET /healthz HTTP/1.1\r\nhost: ca\r\nx-pad: "
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'a', 200))
        .collect();
    assert!(
        closed_within(&mut s, &head, Duration::from_secs(15)).await,
        "an enrollment request head dribbled for 15 s kept its connection (idle timeout 1 s)"
    );
}

/// Operation and long-poll bounds of `usize::MAX` (no bound) are served: the service panicked
/// when built with them (a semaphore holds at most `usize::MAX >> 3` permits).
#[tokio::test]
async fn operation_and_waiter_bounds_of_usize_max_are_served() {
    let w = start(ServiceOptions {
        max_operations: usize::MAX,
        max_waiters: usize::MAX,
        max_waiters_per_caller: usize::MAX,
        ..ServiceOptions::default()
    })
    .await;
    let (creds, id) = w.task("planner");
    let mut c = w.mtls_connection(creds, &id).await;
    let (s, _, body) = common::call_with_headers(&mut c, "GET", "/healthz", "").await;
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = common::call_with_headers(&mut c, "GET", "/v1/revocations", "").await;
    assert_eq!(s, 200, "{body}");
}

/// With a long-poll bound above what a semaphore holds (`usize::MAX`, no bound), the
/// `agentid_ca_revocation_waiters` gauge counted the permits the semaphore could not hold as
/// held: about 2^63 long-poll requests reported on a service holding none.
#[tokio::test]
async fn a_waiter_bound_of_usize_max_reports_the_waiters_actually_held() {
    let (_dir, service) = service(ServiceOptions {
        max_waiters: usize::MAX,
        ..ServiceOptions::default()
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { service.serve_metrics(l).await });
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: ca\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(T, tcp.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    let held = text
        .lines()
        .find_map(|l| l.strip_prefix("agentid_ca_revocation_waiters "))
        .unwrap_or_else(|| panic!("no waiters gauge: {text}"));
    assert_eq!(held.trim(), "0", "{text}");
}

/// `ServiceOptions::max_operations` bounds the CA operations running on the blocking pool,
/// not only the requests waiting for them: a request whose caller goes away (a reset stream, a
/// closed connection) while its operation is stuck in a slow store must not give its slot to
/// the next request while the operation still runs. Else, against a slow store, any caller
/// piles up blocking operations (and blocking-pool threads) without bound by sending requests
/// and cancelling them.
///
/// The store is made slow by holding SQLite's write lock from outside: the CA's renewal waits
/// for it (its busy timeout), holding the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_keeps_its_operation_slot_until_the_operation_ends() {
    let w = start(ServiceOptions {
        max_operations: 1,
        ..ServiceOptions::default()
    })
    .await;
    let (planner, planner_id) = w.task("planner");
    let (worker, worker_id) = w.task("worker");
    let mut a = w.mtls_connection(planner, &planner_id).await;
    let mut b = w.mtls_connection(worker, &worker_id).await;
    // Control: the store answers.
    let (s, _, body) = common::call_with_headers(&mut b, "GET", "/healthz", "").await;
    assert_eq!(s, 200, "{body}");

    let lock = rusqlite::Connection::open(w.dir.path().join("ca.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // A's renewal enters the store and waits for the lock (sent again if it found the one
    // slot taken by B's control requests below).
    let renewing = tokio::spawn(async move {
        for _ in 0..200 {
            let (s, _, _) = common::call_with_headers(&mut a, "POST", "/v1/renew", "{}").await;
            if s != 503 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Until B is refused: A's renewal holds the slot.
    let mut held = false;
    for _ in 0..100 {
        let (s, _, _) = common::call_with_headers(&mut b, "GET", "/healthz", "").await;
        if s == 503 {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "the renewal never held the operation slot");
    assert!(
        !renewing.is_finished(),
        "the renewal was answered while the store was locked"
    );
    // A goes away (its connection, and the request on it, dropped); its renewal still runs,
    // waiting for the store.
    renewing.abort();
    let _ = renewing.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let req = http::Request::builder()
        .uri("/healthz")
        .body(Bytes::new())
        .unwrap();
    let answer = tokio::time::timeout(T, b.send(req)).await;
    drop(lock);
    let status = answer
        .expect("no answer within 20 s")
        .expect("request failed")
        .status()
        .as_u16();
    assert_eq!(
        status, 503,
        "a second operation was let in while the cancelled request's operation still ran"
    );
}

/// POST /v1/enroll with `token` and a fresh CSR on the enrollment connection `s`: the status.
async fn enroll_status(
    mut s: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    token: String,
) -> Option<u16> {
    let key = common::p256_keypair();
    let csr = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        common::csr_with(&key, &[], |_| {}),
    );
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/enroll")
        .header("host", "ca")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(format!(
            r#"{{"token":"{token}","csr":"{csr}"}}"#
        ))))
        .unwrap();
    s.ready().await.ok()?;
    Some(s.send_request(req).await.ok()?.status().as_u16())
}

/// The enrollment listener (no caller identity) has its own share of operation slots: however
/// many unauthenticated requests wait for a slow store, the mTLS listener's callers still get
/// theirs (a flood from many sources, each within its rate, cannot push them to 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollments_waiting_for_the_store_leave_the_mtls_callers_their_slots() {
    let w = start(ServiceOptions {
        max_operations: 2,
        ..ServiceOptions::default()
    })
    .await;
    let (creds, id) = w.task("worker");
    let mut b = w.mtls_connection(creds, &id).await;
    let mut enrollments = Vec::new();
    for _ in 0..2 {
        let binding = agentid_ca::TokenBinding {
            scope: "tickets:read".into(),
            max_depth: Some(1),
            ..Default::default()
        };
        let token = w
            .ca()
            .create_bound_token(
                "planner",
                None,
                &binding,
                Duration::from_secs(600),
                std::time::SystemTime::now(),
            )
            .unwrap()
            .token;
        enrollments.push((w.enroll_connection().await.unwrap(), token));
    }
    // The store is slow: its write lock held from outside; both enrollments wait for it.
    let lock = rusqlite::Connection::open(w.dir.path().join("ca.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let enrolling: Vec<_> = enrollments
        .into_iter()
        .map(|(s, t)| tokio::spawn(enroll_status(s, t)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Both enrollments are in the store (or one was refused 503 at the listener's share).
    let (s, _, body) = common::call_with_headers(&mut b, "GET", "/healthz", "").await;
    drop(lock);
    assert_eq!(
        s, 200,
        "an mTLS caller was refused while enrollments waited: {body}"
    );
    for e in enrolling {
        let status = tokio::time::timeout(T, e).await.unwrap().unwrap();
        assert!(
            matches!(status, Some(200 | 503)),
            "an enrollment got {status:?}"
        );
    }
}

/// POST /v1/enroll as [`enroll_status`]: the status and the refusal's code (empty for none).
async fn enroll_code(
    mut s: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    token: String,
) -> Option<(u16, String)> {
    let key = common::p256_keypair();
    let csr = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        common::csr_with(&key, &[], |_| {}),
    );
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/enroll")
        .header("host", "ca")
        .body(http_body_util::Full::new(Bytes::from(format!(
            r#"{{"token":"{token}","csr":"{csr}"}}"#
        ))))
        .unwrap();
    s.ready().await.ok()?;
    let resp = s.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let code = serde_json::from_slice::<agentid_api::ApiError>(&body)
        .map(|e| e.code.as_str().to_owned())
        .unwrap_or_default();
    Some((status, code))
}

/// CA-API.md 3.1: `/healthz` on the enrollment listener (where a prober without a client
/// certificate asks: a load balancer, a liveness probe) says whether the service can read its
/// store. Enrollments in flight holding every operation slot of that listener (a burst of agents
/// starting, or a flood from many sources) do not make it answer `503`, which a probe takes for
/// a dead CA (and restarts it, or takes every replica out of rotation at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_health_check_answers_while_enrollments_hold_the_listeners_slots() {
    // Two operation slots: the enrollment listener's share is one.
    let w = start(ServiceOptions {
        max_operations: 2,
        ..ServiceOptions::default()
    })
    .await;
    let token = || {
        let binding = agentid_ca::TokenBinding {
            scope: "tickets:read".into(),
            max_depth: Some(1),
            ..Default::default()
        };
        w.ca()
            .create_bound_token(
                "planner",
                None,
                &binding,
                Duration::from_secs(600),
                std::time::SystemTime::now(),
            )
            .unwrap()
            .token
    };
    let (first, second) = (token(), token());
    let holding = w.enroll_connection().await.unwrap();
    let refused = w.enroll_connection().await.unwrap();
    let mut probe = w.enroll_connection().await;
    // The store's writes wait (its write lock held from outside); its reads do not.
    let lock = rusqlite::Connection::open(w.dir.path().join("ca.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let enrolling = tokio::spawn(enroll_status(holding, first));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The first enrollment holds the listener's one slot, waiting for the store: a second one
    // is refused at the listener's share, not let into the store.
    let (status, code) = enroll_code(refused, second).await.unwrap();
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    let healthy = served(&mut probe).await;
    drop(lock);
    assert!(
        healthy,
        "the health check was refused while the store could be read"
    );
    let status = tokio::time::timeout(T, enrolling).await.unwrap().unwrap();
    assert_eq!(status, Some(200));
}

/// Reads one HTTP/1.1 response head from `s` within `within`: its status, or `None` when the
/// server sent none (closed, or kept waiting).
async fn status_within(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> Option<u16> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A request whose `content-length` announces a body over 64 KiB is a larger body, refused
/// `413 body_too_large` before it is read further (CA-API.md 1.2): the service does not wait
/// for the body (up to `body_timeout`, holding the request) only to answer `400` when the
/// caller sends none, or `413` once the caller has sent 64 KiB of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_over_the_limit_is_refused_413_before_it_is_read() {
    let w = start(ServiceOptions {
        body_timeout: Duration::from_secs(120),
        ..ServiceOptions::default()
    })
    .await;
    let mut s = enroll_tls(&w).await;
    s.write_all(
        b"POST /v1/enroll HTTP/1.1\r\nhost: ca\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n{\"token\":",
    )
    .await
    .unwrap();
    s.flush().await.unwrap();
    assert_eq!(status_within(&mut s, T).await, Some(413));
}

/// An enrollment request head (no caller identity) is held to the header limit of the mTLS
/// listener (`SERVER_HEADER_LIST_LIMIT`, 32 KiB), not hyper's default buffer of 400 KiB: else
/// anyone makes the CA hold twelve times more per connection than an authenticated caller can
/// (100 MB over the listener's 256 connections), and refused `431`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_request_head_over_the_header_limit_is_refused_431() {
    let w = start(ServiceOptions::default()).await;
    let mut s = enroll_tls(&w).await;
    let pad = "a".repeat(agentid_transport::http::SERVER_HEADER_LIST_LIMIT * 3);
    let head = format!("GET /healthz HTTP/1.1\r\nhost: ca\r\nx-pad: {pad}\r\n\r\n");
    // The server may refuse before it has read all of it.
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.flush().await;
    assert_eq!(status_within(&mut s, T).await, Some(431));
}

/// Dropping the service's serve future (here its task is aborted: a shutdown) ends the
/// connections it accepted, on the enrollment listener and on the mTLS listener, as it stops
/// accepting. Before, each ran on a task of its own that nothing ended: an enrollment
/// connection lived on until its idle timeout (30 s) or its lifetime (60 s), an mTLS one until
/// its idle timeout or its deadline.
#[tokio::test]
async fn dropping_the_service_ends_the_connections_it_accepted() {
    let w = start(ServiceOptions::default()).await;
    let mut enroll = enroll_tls(&w).await;
    let (creds, id) = w.task("worker");
    let mut mtls = w.mtls_connection(creds, &id).await;
    let (s, _, body) = common::call_with_headers(&mut mtls, "GET", "/healthz", "").await;
    assert_eq!(s, 200, "{body}");

    w.serving.abort();
    assert!(tokio::time::timeout(T, w.serving).await.unwrap().is_err());

    assert!(
        closed_within(&mut enroll, &[], Duration::from_secs(5)).await,
        "an enrollment connection outlived the service"
    );
    let req = http::Request::get("/healthz").body(Bytes::new()).unwrap();
    let sent = tokio::time::timeout(T, mtls.send(req)).await.unwrap();
    assert!(
        sent.is_err(),
        "an mTLS connection outlived the service: {:?}",
        sent.map(|r| r.status())
    );
}

/// One identity flooding the mTLS listener with refused requests while the store is slow (each
/// refusal an audit record, a write that waits for the store) holds at most its share of the
/// operation slots: another caller is still served, and once the store answers every refusal is
/// recorded. Before, the records waited for slots ahead of every caller's operations (which
/// only try for one) and held them all: the other caller got `503 unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_flooding_refused_requests_leaves_the_others_their_operation_slots() {
    const FLOOD: usize = 12;
    let w = start(ServiceOptions {
        max_operations: 4,
        ..ServiceOptions::default()
    })
    .await;
    let (flooder, flooder_id) = w.task("planner");
    let (other, other_id) = w.task("worker");
    let mut b = w.mtls_connection(other, &other_id).await;
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(w.mtls_connection(flooder.clone(), &flooder_id).await);
    }
    let before = common::audit_records(&w.ca()).len();
    // The store is slow: its write lock held from outside (reads go on).
    let lock = rusqlite::Connection::open(w.dir.path().join("ca.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let flooding: Vec<_> = flood
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (s, _) = common::call(&mut c, "GET", "/v1/no-such-route", "").await;
                s
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The other caller's request waits for the store like every operation (the store is one
    // connection), but it is not refused for want of a slot.
    let other_call = tokio::spawn(async move {
        let (s, _, body) = common::call_with_headers(&mut b, "GET", "/healthz", "").await;
        (s, body)
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(lock);
    let (s, body) = tokio::time::timeout(T, other_call).await.unwrap().unwrap();
    assert_eq!(
        s, 200,
        "another caller was refused while one identity's refusals waited for the store: {body}"
    );
    let mut refused = 0;
    for f in flooding {
        let status = tokio::time::timeout(T, f).await.unwrap().unwrap();
        match status {
            404 => refused += 1,
            // Past its share: refused before any operation, by the bound (not recorded).
            503 => {}
            other => panic!("a flooding request got {other}"),
        }
    }
    assert!(refused >= 1, "no flooding request reached its route");
    // Nothing lost: every refusal answered is recorded, once the store answers.
    let records = common::audit_records(&w.ca());
    let recorded = records
        .iter()
        .skip(before)
        .filter(|r| r["kind"] == "request.refused" && r["actor"] == flooder_id.as_str())
        .count();
    assert_eq!(recorded, refused, "{records:?}");
}
