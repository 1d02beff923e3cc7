//! `kill -9` of the real `agentid ca serve` process in the middle of many concurrent token
//! enrollments over HTTPS: every certificate a client received is in the store and in the audit
//! chain, the chain verifies (`agentid audit verify`), and after a restart every token is
//! accounted for: received before the kill, redeemed after it, or refused as used with its
//! issuance in the store (committed, its answer lost with the process).
//!
//! Sized by `AGENTID_LOAD`: `ci` (default, 120 enrollments) or `full` (1,000). Tokens are made
//! through the library before the service starts; the clients run in this process, all from
//! 127.0.0.1 (the service's per-source limits raised with `--enroll-rate` and
//! `--enroll-pending-per-source`, as for agents behind one NAT address), each retrying with
//! backoff when the listener sheds its handshake or is busy. Every wait is bounded; nothing asserts on timings.
#![cfg(test)]

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use agentid_api::CertificateResponse;
use agentid_ca::{CertificateAuthority, TokenBinding};
use agentid_protocol::{Algorithm, BundleSet, PeerId, TaskKey, VerifierConfig};
use agentid_transport::{PeerPolicy, PeerVerification};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use support::{CaServe, Env};

const POLICY: &str = r#"
[defaults]
ttl = "5m"
max_ttl = "15m"
task_ttl = "1h"
max_task_ttl = "8h"

[agents.planner]
scopes = ["tickets:*"]
requesters = ["operator", "bootstrap"]

[services.agentid-ca]
requesters = ["operator"]
"#;

/// One attempt (connect, handshake, request, response) at most this long.
const ATTEMPT: Duration = Duration::from_secs(20);
/// The whole run (before and after the kill) at most this long.
const RUN: Duration = Duration::from_secs(300);

fn size() -> usize {
    match std::env::var("AGENTID_LOAD").as_deref() {
        Ok("full") => 1000,
        Ok("ci") | Err(_) => 120,
        Ok(other) => panic!("AGENTID_LOAD must be `ci` or `full`, not {other:?}"),
    }
}

/// `agentid ca serve` with an enrollment listener; killed (SIGKILL) when dropped.
struct Server {
    _process: CaServe,
    enroll: SocketAddr,
}

fn serve(env: &Env) -> Server {
    let process = CaServe::start(
        env,
        &[
            "--listen",
            "127.0.0.1:0",
            "--enroll-listen",
            "127.0.0.1:0",
            // every client comes from 127.0.0.1: the per-source limits are the service's
            // whole limits here (the listener's handshake and connection caps still apply)
            "--enroll-rate",
            "1000000",
            "--enroll-pending-per-source",
            "64",
        ],
        Stdio::null(),
    );
    let enroll = process.find_addr("enrollment listening on ");
    Server {
        _process: process,
        enroll,
    }
}

/// One agent-to-be: its token, key and CSR, made before the clock starts.
struct Agent {
    token: String,
    identity: String,
    csr: String,
    source: IpAddr,
}

/// What one enrollment attempt came to.
enum Outcome {
    /// The certificate, received whole.
    Issued(CertificateResponse),
    /// Refused with this status and code.
    Refused(u16, String),
    /// Nothing usable came back (connection refused, reset, shed handshake, cut response).
    Lost(String),
}

fn b64(d: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d)
}

fn b64d(s: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s).unwrap()
}

/// `POST /v1/enroll` over a new TLS connection from `agent.source`, the server required to be
/// the CA's service identity under the pinned root.
async fn enroll_once(
    agent: &Agent,
    server: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Outcome {
    let attempt = async {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::new(agent.source, 0))
            .map_err(|e| e.to_string())?;
        let tcp = socket.connect(server).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from("agentid.invalid").unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let body = format!(r#"{{"token":"{}","csr":"{}"}}"#, agent.token, agent.csr);
        let req = http::Request::builder()
            .method("POST")
            .uri(agentid_api::routes::ENROLL)
            .header(http::header::HOST, server.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(ATTEMPT, attempt).await {
        Err(_) => Outcome::Lost("timed out".into()),
        Ok(Err(e)) => Outcome::Lost(e),
        Ok(Ok((200, body))) => match serde_json::from_slice(&body) {
            Ok(r) => Outcome::Issued(r),
            Err(e) => panic!("a 200 that is not a certificate response: {e}"),
        },
        Ok(Ok((status, body))) => {
            let e: agentid_api::ApiError = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("a {status} without a refusal body: {e}"));
            Outcome::Refused(status, e.code.as_str().to_owned())
        }
    }
}

/// Enrolls until issued or refused for good, retrying what the listener sheds (lost
/// connections, `429`, `503`) with backoff, until `stop` is set or the run's deadline.
async fn enroll(
    agent: &Agent,
    n: usize,
    server: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    stop: &AtomicBool,
    retries: &AtomicUsize,
    deadline: Instant,
) -> Outcome {
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 0u64;
    loop {
        let outcome = enroll_once(agent, server, tls).await;
        let again = match &outcome {
            Outcome::Issued(_) => false,
            Outcome::Refused(s, _) => *s == 429 || *s == 503,
            Outcome::Lost(_) => true,
        };
        if !again {
            return outcome;
        }
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return match outcome {
                Outcome::Refused(s, c) => Outcome::Lost(format!("gave up after {s} {c}")),
                other => other,
            };
        }
        retries.fetch_add(1, Ordering::Relaxed);
        attempt += 1;
        // Deterministic jitter: spreads the clients' retries over [backoff / 2, backoff).
        let spread = (n as u64)
            .wrapping_mul(7919)
            .wrapping_add(attempt * 104_729)
            % 1000;
        let wait = backoff / 2 + backoff.mul_f64(spread as f64 / 2000.0);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Enrolls every agent concurrently; once `kill_after` certificates are received, runs `kill`.
/// Returns each agent's outcome and the number of retries.
fn enroll_all(
    rt: &tokio::runtime::Runtime,
    agents: &Arc<Vec<Agent>>,
    server: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    kill_after: Option<(usize, Box<dyn FnOnce() + Send>)>,
) -> (Vec<Outcome>, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + RUN;
    let handles: Vec<_> = (0..agents.len())
        .map(|n| {
            let (agents, tls) = (agents.clone(), tls.clone());
            let (stop, received, retries) = (stop.clone(), received.clone(), retries.clone());
            rt.spawn(async move {
                let o = enroll(&agents[n], n, server, &tls, &stop, &retries, deadline).await;
                if matches!(o, Outcome::Issued(_)) {
                    received.fetch_add(1, Ordering::SeqCst);
                }
                o
            })
        })
        .collect();
    if let Some((threshold, kill)) = kill_after {
        while received.load(Ordering::SeqCst) < threshold && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            received.load(Ordering::SeqCst) >= threshold,
            "only {} certificates received before the deadline",
            received.load(Ordering::SeqCst)
        );
        stop.store(true, Ordering::SeqCst);
        kill();
    }
    let outcomes = rt.block_on(async {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    });
    (outcomes, retries.load(Ordering::Relaxed))
}

#[test]
fn kill_9_during_concurrent_enrollments_loses_no_received_certificate() {
    let n = size();
    let env = Env::new();
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();

    // Tokens through the library, keys and CSRs: all before the service starts.
    let ca = CertificateAuthority::open(&env.path("ca")).unwrap();
    let binding = TokenBinding {
        scope: "tickets:read".into(),
        ..TokenBinding::default()
    };
    let agents: Arc<Vec<Agent>> = Arc::new(
        (0..n)
            .map(|_| {
                let t = ca
                    .create_bound_token(
                        "planner",
                        None,
                        &binding,
                        Duration::from_secs(3600),
                        SystemTime::now(),
                    )
                    .unwrap();
                let key = TaskKey::generate(Algorithm::Es256).unwrap();
                let source = Ipv4Addr::LOCALHOST;
                Agent {
                    csr: b64(&key.csr(t.identity.as_spiffe_id()).unwrap()),
                    token: t.token,
                    identity: t.identity.as_str().to_owned(),
                    source: IpAddr::V4(source),
                }
            })
            .collect(),
    );
    // The clients pin the CA's root and require its service identity.
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    drop(ca);
    let verification = PeerVerification::new(
        VerifierConfig::new(
            agentid_protocol::SpiffeId::parse(&agents[0].identity).unwrap(),
            bundles,
        )
        .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap();
    let ca_id = PeerId::parse("spiffe://example.org/svc/agentid-ca").unwrap();
    let tls = Arc::new(
        agentid_transport::http::enrollment_client_config(&verification, PeerPolicy::exact(ca_id))
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Run 1: SIGKILL once a third of the certificates are received.
    let server = Arc::new(Mutex::new(Some(serve(&env))));
    let addr = server.lock().unwrap().as_ref().unwrap().enroll;
    let killer = server.clone();
    let kill: Box<dyn FnOnce() + Send> = Box::new(move || {
        // Dropping the guard sends SIGKILL and reaps the process.
        drop(killer.lock().unwrap().take());
    });
    let started = Instant::now();
    let (first, retries) = enroll_all(&rt, &agents, addr, &tls, Some((n / 3, kill)));
    let received: HashMap<&str, &CertificateResponse> = first
        .iter()
        .filter_map(|o| match o {
            Outcome::Issued(r) => Some((r.serial.as_str(), r)),
            _ => None,
        })
        .collect();
    let refused: Vec<(u16, &str)> = first
        .iter()
        .filter_map(|o| match o {
            Outcome::Refused(s, c) => Some((*s, c.as_str())),
            _ => None,
        })
        .collect();
    let lost = first
        .iter()
        .filter(|o| matches!(o, Outcome::Lost(_)))
        .count();
    println!(
        "{n} concurrent enrollments, SIGKILL after {} received: {} received, {} lost in flight or \
         unsent, {} refused, {retries} retries (shed handshakes, 429/503), {:.1} s",
        n / 3,
        received.len(),
        lost,
        refused.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(received.len() >= n / 3);
    assert!(
        refused.is_empty(),
        "no token is refused before the kill: {refused:?}"
    );
    assert_eq!(received.len() + lost, n);
    for (serial, r) in &received {
        assert_eq!(r.serial, *serial);
        assert_eq!(r.certs.len(), 2);
        assert!(!b64d(&r.certs[0]).is_empty());
    }

    // The store after the kill: every received certificate, for the identity its token bound,
    // and in the audit chain; the chain verifies.
    let ca = CertificateAuthority::open(&env.path("ca")).unwrap();
    let stored: HashMap<String, agentid_ca::IssuanceRecord> = ca
        .issuances()
        .unwrap()
        .into_iter()
        .filter(|r| r.requester == "bootstrap token")
        .map(|r| (r.serial.clone(), r))
        .collect();
    for (serial, r) in &received {
        let rec = stored
            .get(*serial)
            .unwrap_or_else(|| panic!("received certificate {serial} is not in the store"));
        assert_eq!(rec.identity, r.identity);
    }
    let audited: HashSet<String> = ca
        .audit_snapshot(None)
        .unwrap()
        .audited_serials
        .into_iter()
        .collect();
    for serial in received.keys() {
        assert!(
            audited.contains(*serial),
            "received certificate {serial} has no audit record"
        );
    }
    let report = agentid_ca::audit::verify_dir(&env.path("ca"))
        .unwrap()
        .unwrap_or_else(|b| panic!("the audit chain is broken after the kill: {b:?}"));
    assert!(report.issuances >= stored.len() as u64);
    env.ok("audit verify --ca ca");
    let committed_unreceived = stored.len() - received.len();
    drop(ca);

    // Run 2: restarted, the agents whose answer was lost try again with the same token.
    let restarted = serve(&env);
    let again: Arc<Vec<Agent>> = Arc::new(
        first
            .iter()
            .zip(agents.iter())
            .filter(|(o, _)| matches!(o, Outcome::Lost(_)))
            .map(|(_, a)| Agent {
                token: a.token.clone(),
                identity: a.identity.clone(),
                csr: a.csr.clone(),
                source: a.source,
            })
            .collect(),
    );
    let (second, _) = enroll_all(&rt, &again, restarted.enroll, &tls, None);
    drop(restarted);
    let ca = CertificateAuthority::open(&env.path("ca")).unwrap();
    let after: HashMap<String, agentid_ca::IssuanceRecord> = ca
        .issuances()
        .unwrap()
        .into_iter()
        .filter(|r| r.requester == "bootstrap token")
        .map(|r| (r.identity.clone(), r))
        .collect();
    let mut used = 0;
    for (agent, o) in again.iter().zip(&second) {
        match o {
            Outcome::Issued(r) => {
                assert_eq!(r.identity, agent.identity);
                assert_eq!(after[&agent.identity].serial, r.serial);
            }
            // Committed before the kill, its answer lost: the issuance is in the store.
            Outcome::Refused(409, code) if code == "token_used" => {
                used += 1;
                let rec = after.get(&agent.identity).unwrap_or_else(|| {
                    panic!("token_used for {} without its issuance", agent.identity)
                });
                assert!(stored.contains_key(&rec.serial));
            }
            Outcome::Refused(s, c) => panic!("{}: refused {s} {c}", agent.identity),
            Outcome::Lost(e) => panic!("{}: lost after the restart: {e}", agent.identity),
        }
    }
    assert_eq!(
        used, committed_unreceived,
        "every committed issuance is accounted for"
    );
    assert_eq!(
        after.len(),
        n,
        "one task per token, every token redeemed once"
    );
    env.ok("audit verify --ca ca");
    println!(
        "after the restart: {} enrolled, {used} refused as used (committed before the kill, \
         answer lost)",
        again.len() - used
    );
}
