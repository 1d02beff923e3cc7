//! The CA clients (`agentid_transport::enroll`) against a misbehaving or hostile CA and careless
//! files: the `Enroller`, the token file reader and the feed watchers, as spec/CA-API.md says.
//!
//! Some tests run a *fake* CA on 127.0.0.1: a TLS server presenting a genuine
//! `spiffe://example.org/svc/agentid-ca` certificate of the test CA (so the clients accept it),
//! whose HTTP answers each test writes byte for byte.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentid_api::TokenFile;
use agentid_ca::{CertificateAuthority, KeyType};
use agentid_protocol::{
    Algorithm, AuthorityKey, BundleSet, SpiffeId, TaskKey, TrustDomain, VerifierConfig,
};
use agentid_transport::enroll::{
    read_token_file, BundleApplier, BundleWatcher, CaClient, Enroller, WatchOptions,
};
use agentid_transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

const EXTRA: &str = r#"
[services.agentid-ca]
max_ttl = "1h"
requesters = ["operator"]

[services.platform]
max_ttl = "1h"
requesters = ["operator"]

[services.indexer]
requesters = ["operator", "bootstrap"]
"#;

fn ca_dir() -> tempfile::TempDir {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str(EXTRA);
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    dir
}

fn td() -> TrustDomain {
    TrustDomain::parse(common::TD).unwrap()
}

/// What the fake CA answers to one request (method, path): raw bytes written after the
/// request was read whole, then the connection is closed.
type Respond = Arc<dyn Fn(&str, &str) -> Vec<u8> + Send + Sync>;

struct FakeCa {
    addr: SocketAddr,
    /// `METHOD PATH` of every request read, with when.
    requests: Arc<Mutex<Vec<(String, Instant)>>>,
    /// Response bytes the fake CA managed to write (its socket accepted them).
    written: Arc<AtomicU64>,
}

impl FakeCa {
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn count(&self, what: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == what)
            .count()
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
    }
    let line = head.lines().next().unwrap_or_default().to_owned();
    let mut parts = line.split(' ');
    Some((
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    ))
}

/// Starts a fake CA presenting an `agentid-ca` certificate the test CA issued, accepting any
/// client certificate of the trust domain, answering with `respond`.
async fn fake_ca(ca: &CertificateAuthority, respond: Respond) -> FakeCa {
    let cred = common::service_credential(ca, "agentid-ca", Some(Duration::from_secs(3600)));
    let v = common::verification(ca, common::CA_ID);
    let config = agentid_transport::http::server_config(
        Arc::new(MemoryCredentials::new(cred)),
        &v,
        PeerPolicy::trust_domain(td()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let written = Arc::new(AtomicU64::new(0));
    let (reqs, wr) = (requests.clone(), written.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, respond, reqs, wr) =
                (acceptor.clone(), respond.clone(), reqs.clone(), wr.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some((method, path)) = read_request(&mut tls).await else {
                    return;
                };
                reqs.lock()
                    .unwrap()
                    .push((format!("{method} {path}"), Instant::now()));
                let bytes = respond(&method, &path);
                for c in bytes.chunks(256 * 1024) {
                    if tls.write_all(c).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    wr.fetch_add(c.len() as u64, Ordering::SeqCst);
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    FakeCa {
        addr,
        requests,
        written,
    }
}

/// A renewal whose response is cut off in the middle of its body (the CA restarted, the
/// connection was reset) is a connection failure: asking again can succeed. CA-API and the
/// `Enroller` docs: renewals are "retried every few seconds until 90% of [the lifetime]"; only
/// a refusal that asking again cannot change ends the loop at once
/// (`EnrollError::is_transient`: "a connection or time-out failure ... can succeed later").
///
/// Here the certificate has about 48 s of retries left: `Enroller::run` keeps retrying (a
/// cut-off body is transient), where one network glitch at renewal time once stopped renewal
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_answer_cut_off_mid_body_is_retried_not_fatal() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let fake = fake_ca(
        &ca,
        Arc::new(|_m: &str, _p: &str| {
            // A transient refusal (503, Retry-After) whose body is cut off: it promises 2000
            // bytes, sends a few, closes. (A 2xx would first need the server's agentid proof,
            // which the fake cannot sign; refusals carry none.)
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: 2000\r\n\r\n{\"code\":\"unavailable\",\"mess".to_vec()
        }),
    )
    .await;
    // A 60 s certificate back-dated by the CA's 60 s skew: renewal is due at once and retries
    // may go on until about 48 s from now.
    let credential = common::service_credential(&ca, "platform", Some(Duration::from_secs(60)));
    let enroller = Enroller::from_credential(
        &fake.url(),
        credential,
        common::verification(&ca, "spiffe://example.org/svc/platform"),
        Duration::from_secs(5),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(9), enroller.run()).await;
    let renewals = fake.count("POST /v1/renew");
    match outcome {
        Err(_elapsed) => {
            // Still retrying: what the contract asks for.
            assert!(renewals >= 2, "retried: {renewals} renewal requests");
        }
        Ok(r) => panic!(
            "Enroller::run ended after {renewals} renewal request(s) with {r:?}, although the \
             certificate has ~40 s of its retry window left and a cut-off body is a connection \
             failure"
        ),
    }
}

/// The feed watchers read an answer only up to what it can be: a refusal body is a
/// `{code, message, hint}` of a few hundred bytes (at most 64 KiB is read), and the signed
/// agentid bundle is at most `MAX_SIGNED_BUNDLE_BYTES` (2 MiB), not the revocation list's
/// 256 MiB. A CA (or whatever holds its TLS key) answering a 503 with a 48 MiB body is not read
/// to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_watcher_stops_reading_past_the_signed_bundle_cap() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    const BODY: usize = 48 * 1024 * 1024;
    let fake = fake_ca(
        &ca,
        Arc::new(|_m: &str, _p: &str| {
            let mut r = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {BODY}\r\n\r\n"
            )
            .into_bytes();
            r.resize(r.len() + BODY, b'A');
            r
        }),
    )
    .await;
    let creds = Arc::new(MemoryCredentials::new(common::service_credential(
        &ca, "platform", None,
    )));
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let client = CaClient::new(&fake.url(), creds, v.clone(), T).unwrap();
    let signing = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let applier = Arc::new(BundleApplier::new(v, signing.public_key().clone(), td()));
    let handle = BundleWatcher::new(
        client,
        applier,
        WatchOptions::default().with_bundle_interval(Duration::from_secs(600)),
    )
    .spawn();
    assert!(
        handle
            .wait_for(Duration::from_secs(60), |s| s.failures >= 1)
            .await,
        "the oversized bundle is refused"
    );
    handle.stop().await;
    let written = fake.written.load(Ordering::SeqCst);
    let cap = agentid_protocol::MAX_SIGNED_BUNDLE_BYTES as u64;
    // Socket buffers hold a few MiB at most beyond what the client read.
    assert!(
        written < cap + 8 * 1024 * 1024,
        "the bundle watcher read {} MiB of a 503 answer (refusal bodies are tiny; a signed bundle is capped at {} MiB)",
        written / (1024 * 1024),
        cap / (1024 * 1024)
    );
}

/// A CA at its concurrency bound answers `503 unavailable` with `Retry-After` (CA-API 1.3, 5:
/// "past it `503 unavailable` with `Retry-After`"); docs/capacity.md plans for an outage with
/// "agents retry with jitter". `Enroller::run` honours `Retry-After` (within the time it has
/// left) and otherwise waits a jittered few seconds: here at most one renewal request in 12 s
/// against a CA that asked for 20 s of quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_refused_with_retry_after_is_not_asked_again_sooner() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let fake = fake_ca(
        &ca,
        Arc::new(|_m: &str, _p: &str| {
            let body = br#"{"code":"unavailable","message":"the CA is at its concurrency bound","hint":"retry later"}"#;
            let mut r = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 20\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body);
            r
        }),
    )
    .await;
    // Renewal due at once; retries allowed for about 48 s.
    let credential = common::service_credential(&ca, "platform", Some(Duration::from_secs(60)));
    let enroller = Enroller::from_credential(
        &fake.url(),
        credential,
        common::verification(&ca, "spiffe://example.org/svc/platform"),
        Duration::from_secs(5),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(12), enroller.run()).await;
    assert!(outcome.is_err(), "still retrying (transient): {outcome:?}");
    let times: Vec<Instant> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(r, _)| r == "POST /v1/renew")
        .map(|(_, t)| *t)
        .collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        times.len() <= 1,
        "{} renewal requests within 12 s after `Retry-After: 20` (gaps {gaps:?})",
        times.len()
    );
}

/// CA-API 3.3: a client "MUST refuse a `seq` lower than the one it holds" so that whoever
/// holds the CA service's online TLS key cannot change the grant or revocation keys watchers
/// accept. A signed document's bundle carries its `seq` as `spiffe_sequence`, so the
/// verification itself refuses an older one: a new applier on the same live verification (a
/// watcher stopped and started again, as after a credential change) cannot roll the keys back
/// (here a grant key the operator had removed, say compromised, would verify grants again).
#[test]
fn a_new_bundle_applier_does_not_roll_back_a_newer_signed_bundle() {
    let t = common::test_ca(KeyType::P256);
    let base = t.ca.trust_bundle().unwrap();
    assert_eq!(base.sequence(), 1);
    let signer = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let now = common::unix(common::now());
    // The old document still lists a grant key the operator later removed.
    let removed = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let removed_kid = removed.public_key().thumbprint();
    let old = agentid_ca::agentid_bundle::sign(
        &signer,
        &base.clone().add_grant_key(removed.public_key().clone()),
        now - 100,
    )
    .unwrap();
    let new = agentid_ca::agentid_bundle::sign(&signer, &base, now).unwrap();

    let v = common::verification(&t.ca, "spiffe://example.org/svc/platform");
    let grant_kids = |v: &PeerVerification| -> Vec<String> {
        v.verifier()
            .config()
            .bundles()
            .iter()
            .find(|b| b.trust_domain() == &td())
            .unwrap()
            .grant_keys()
            .iter()
            .map(|k| k.kid.clone())
            .collect()
    };
    let first = BundleApplier::new(v.clone(), signer.public_key().clone(), td());
    first.apply(&old, now).unwrap();
    first.apply(&new, now).unwrap();
    assert!(!grant_kids(&v).contains(&removed_kid));
    assert!(
        first.apply(&old, now).is_err(),
        "the same applier refuses it"
    );

    // The watcher is started again on the same verification: a new applier.
    let second = BundleApplier::new(v.clone(), signer.public_key().clone(), td());
    let r = second.apply(&old, now);
    assert!(
        r.is_err() && !grant_kids(&v).contains(&removed_kid),
        "an older signed bundle (seq {}) replaced the newer one (seq {now}) the verification \
         holds: {r:?}; the removed grant key is trusted again",
        now - 100
    );
}

/// The revocation watcher follows "the feed of the CA `client` talks to (the lists of the
/// client's trust domain)" (`RevocationWatcher::new`; CA-API 3.4: "the latest published
/// revocation list of the trust domain"). A feed answering with a list of *another* trust
/// domain whose bundle the verification also holds (a federated domain) is refused before
/// anything is applied: the CA of one domain (or whoever holds its online TLS key) must not
/// decide which of another domain's signed lists (say an old, emptier one, while none is held
/// yet) this verifier holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_list_of_another_trust_domain_is_not_applied() {
    use agentid_protocol::{RevocationListBuilder, TrustBundle};
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    // A federated domain with its own revocation key, and one genuine list of it.
    let other = TrustDomain::parse("other.example").unwrap();
    let other_rev = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let now = common::unix(common::now());
    let other_list = RevocationListBuilder::new(&other, 7, now, now + 3600)
        .sign(&other_rev)
        .unwrap();
    // A fake CA of example.org (a real agentid HTTP server, so its answers carry its proof)
    // whose feed answers that list.
    let body = serde_json::to_string(&agentid_api::RevocationsResponse {
        seq: 7,
        list: other_list,
    })
    .unwrap();
    let server_cred = common::service_credential(&ca, "agentid-ca", None);
    let server = agentid_transport::http::HttpServer::builder(
        Arc::new(MemoryCredentials::new(server_cred)),
        common::verification(&ca, common::CA_ID),
        PeerPolicy::trust_domain(td()),
    )
    .build()
    .unwrap();
    let app = axum::Router::new().route(
        "/v1/revocations",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { server.serve(l, app).await });

    // The watching verifier holds example.org's bundle and the federated one.
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    bundles
        .insert(
            TrustBundle::new(other.clone(), 1).add_revocation_key(other_rev.public_key().clone()),
        )
        .unwrap();
    let v = PeerVerification::new(
        VerifierConfig::new(
            SpiffeId::parse("spiffe://example.org/svc/platform").unwrap(),
            bundles,
        )
        .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap();
    let creds = Arc::new(MemoryCredentials::new(common::service_credential(
        &ca, "platform", None,
    )));
    let client = CaClient::new(&format!("https://{addr}"), creds, v.clone(), T).unwrap();
    let handle = agentid_transport::enroll::RevocationWatcher::new(
        client,
        v.clone(),
        WatchOptions::default().with_backoff(Duration::from_secs(5), Duration::from_secs(5)),
    )
    .spawn();
    assert!(
        handle
            .wait_for(T, |s| s.failures >= 1 || s.applied >= 1)
            .await,
        "the watcher polled"
    );
    let status = handle.status();
    handle.stop().await;
    let held_other = v
        .verifier()
        .config()
        .revocation_list(&other)
        .map(|l| l.seq());
    assert_eq!(
        held_other, None,
        "the example.org feed's answer installed other.example's list (watcher status {status:?})"
    );
}

/// A token file whose `renew_url` is not a URL the clients take (here `http://`, a careless
/// operator's edit) is refused by `Enroller::from_token_file` before the single-use token is
/// sent, as `ca_url` is: otherwise the token would be spent on a credential that can never be
/// renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_with_an_unusable_renew_url_is_refused_before_the_token_is_spent() {
    let (dir, mtls, enroll) = common::serve_ca(EXTRA, true).await;
    let enroll = enroll.unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (token, identity, expires) = ca
        .create_service_token(
            "indexer",
            Some(Duration::from_secs(600)),
            Duration::from_secs(60),
            common::now(),
        )
        .unwrap();
    let file = TokenFile {
        token,
        ca_url: format!("https://{enroll}"),
        root_sha256: agentid_ca::server::root_sha256(&ca),
        identity,
        agent: "svc:indexer".into(),
        task: String::new(),
        expires,
        renew_url: Some(format!("http://{mtls}")),
        bundle_seq: None,
    };
    let before = ca.issuances().unwrap().len();
    let r = Enroller::from_token_file(&file, TaskKey::generate(Algorithm::Es256).unwrap(), T).await;
    let spent = ca.issuances().unwrap().len() > before;
    if let Ok((enroller, _, _)) = &r {
        let renewal = enroller.renew().await;
        panic!(
            "from_token_file accepted renew_url {:?} and spent the token (issued: {spent}); \
             the first renewal then fails: {renewal:?}",
            file.renew_url
        );
    }
    assert!(!spent, "refused, but only after the token was spent");
}

/// `read_token_file` reads at most its 64 KiB bound, and only a regular file: a FIFO (or a
/// device such as /dev/zero named by `AGENTID_TOKEN_FILE`) is refused, not read to its end
/// (it reads with `agentid_fs::read_held_secret`, as the CLI does).
#[test]
fn read_token_file_reads_at_most_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token.json");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
    let path = fifo.clone();
    // 16 MiB offered through the FIFO; a bounded reader stops after 64 KiB (+ the pipe
    // buffer the writer can fill), and the writer then gets EPIPE.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let chunk = vec![b' '; 64 * 1024];
        let mut written = 0usize;
        for _ in 0..256 {
            match f.write_all(&chunk) {
                Ok(()) => written += chunk.len(),
                Err(_) => break,
            }
        }
        written
    });
    let r = read_token_file(&fifo);
    assert!(r.is_err(), "not a token file");
    // A reader that refuses a FIFO without reading may leave the writer waiting in `open`:
    // open and close the FIFO (O_RDWR never blocks on Linux) until the writer is done.
    for _ in 0..500 {
        if writer.is_finished() {
            break;
        }
        drop(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(writer.is_finished(), "the FIFO writer ended");
    let written = writer.join().unwrap();
    assert!(
        written <= 1024 * 1024,
        "read_token_file consumed {} KiB before refusing a file larger than 64 KiB",
        written / 1024
    );
}

/// CA-API 3.6.1: the token file is "JSON, mode 0600". `read_token_file` (which the examples'
/// agents use) refuses one that group or others can read, as the CLI does.
#[test]
fn read_token_file_refuses_a_world_readable_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token.json");
    let file = TokenFile {
        token: "secret".into(),
        ca_url: "https://127.0.0.1:1".into(),
        root_sha256: "00".repeat(32),
        identity: "spiffe://example.org/agent/planner/task/t1".into(),
        agent: "planner".into(),
        task: "t1".into(),
        expires: 0,
        renew_url: None,
        bundle_seq: None,
    };
    std::fs::write(&p, serde_json::to_vec(&file).unwrap()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = read_token_file(&p);
    assert!(
        r.is_err(),
        "a 0644 token file (its secret readable by every local user) was accepted"
    );
}

/// A network attacker in front of the enrollment listener. The first connection (the public
/// bundle fetch, which CA-API 3.6.1 lets any server certificate answer: only the root it
/// carries is pinned) it answers itself with `bundle`; every later connection (the token's,
/// checked against the pinned root) it relays untouched to `upstream`.
async fn bundle_tampering_relay(
    ca: &CertificateAuthority,
    upstream: SocketAddr,
    bundle: Vec<u8>,
) -> SocketAddr {
    let cred = common::service_credential(ca, "agentid-ca", Some(Duration::from_secs(3600)));
    let config = agentid_transport::http::danger_no_client_auth_for_enrollment(Arc::new(
        MemoryCredentials::new(cred),
    ))
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut tcp, _)) = l.accept().await {
            if !std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
                });
                continue;
            }
            let (acceptor, bundle) = (acceptor.clone(), bundle.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if read_request(&mut tls).await.is_none() {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    bundle.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&bundle).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// The public bundle fetch of an enrollment is unauthenticated (CA-API 3.6.1): whoever answers
/// it chooses everything in it but the pinned root. The pinned bundle the enrolled agent keeps
/// (`bundle_json`, written as `bundle.json` by `agentid enroll`) must therefore carry nothing
/// else of that answer: here a network attacker raised its `spiffe_sequence` to 2^53 - 1, and
/// the CA's genuine signed agentid bundle (CA-API 3.3: how an agent gets the grant and
/// revocation keys) was then refused as a rollback by the verification built from it, for
/// good (the sequence is in the file too), leaving the agent without grant and revocation keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_bundle_fetch_cannot_make_the_signed_bundle_a_rollback() {
    use agentid_protocol::TrustBundle;
    let (dir, _mtls, enroll) = common::serve_ca(EXTRA, true).await;
    let enroll = enroll.unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let root = ca.trust_bundle().unwrap().x509_authorities()[0].der.clone();
    let tampered = serde_json::json!({
        "keys": [{
            "use": "x509-svid",
            "kty": "EC",
            "x5c": [base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &root)],
        }],
        "spiffe_sequence": 9_007_199_254_740_991_u64,
    });
    let relay = bundle_tampering_relay(&ca, enroll, serde_json::to_vec(&tampered).unwrap()).await;
    let (token, identity, expires) = ca
        .create_service_token(
            "indexer",
            Some(Duration::from_secs(600)),
            Duration::from_secs(60),
            common::now(),
        )
        .unwrap();
    let file = TokenFile {
        token,
        ca_url: format!("https://{relay}"),
        root_sha256: agentid_ca::server::root_sha256(&ca),
        identity: identity.clone(),
        agent: "svc:indexer".into(),
        task: String::new(),
        expires,
        renew_url: None,
        bundle_seq: None,
    };
    let (_, _, bundle_json) =
        Enroller::from_token_file(&file, TaskKey::generate(Algorithm::Es256).unwrap(), T)
            .await
            .unwrap();

    // The agent's verification from its pinned bundle, and the CA's signed agentid bundle.
    let mut set = BundleSet::new();
    set.insert(TrustBundle::parse(&td(), &bundle_json).unwrap())
        .unwrap();
    let v = PeerVerification::new(
        VerifierConfig::new(SpiffeId::parse(&identity).unwrap(), set)
            .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap();
    let now = common::unix(common::now());
    let jws = agentid_ca::agentid_bundle::sign_dir(&ca, dir.path(), now).unwrap();
    let signing = agentid_ca::agentid_bundle::public_key(dir.path()).unwrap();
    let applier = BundleApplier::new(v.clone(), signing, td());
    let r = applier.apply(&jws, now);
    assert!(
        r.is_ok(),
        "the CA's signed bundle was refused by the verification built from the pinned bundle \
         ({}): {r:?}",
        String::from_utf8_lossy(&bundle_json)
    );
}

/// The other half of CA-API 1.1's rule: a stale list of the CA's trust domain does not refuse
/// the CA, but its entries still do: a CA whose key the held (stale) list revokes gets no
/// request from a `CaClient`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_whose_key_a_held_stale_list_revokes_gets_no_request() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let fake = fake_ca(
        &ca,
        Arc::new(|_: &str, _: &str| {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"tasks\":[]}"
                .to_vec()
        }),
    )
    .await;
    common::revoke_serial(&ca, &common::serial_of(&ca, common::CA_ID));
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    let stale = ca.revocation_list(day_ago).unwrap();
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    let v = PeerVerification::new(VerifierConfig::new(
        SpiffeId::parse("spiffe://example.org/svc/platform").unwrap(),
        bundles,
    ))
    .unwrap();
    v.apply_revocation_list_of(&stale, &td()).unwrap();
    let creds = Arc::new(MemoryCredentials::new(common::service_credential(
        &ca, "platform", None,
    )));
    let client = CaClient::new(&fake.url(), creds, v, T).unwrap();
    let err = client.list().await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert_eq!(
        fake.count("GET /v1/tasks"),
        0,
        "the revoked CA got the request"
    );
}

/// A fake CA of example.org that is a real agentid HTTP server (its answers carry its proof),
/// answering every request `200` with the JSON `body`; its URL.
async fn answering_ca(ca: &CertificateAuthority, body: String) -> String {
    let server_cred = common::service_credential(ca, "agentid-ca", None);
    let server = agentid_transport::http::HttpServer::builder(
        Arc::new(MemoryCredentials::new(server_cred)),
        common::verification(ca, common::CA_ID),
        PeerPolicy::trust_domain(td()),
    )
    .build()
    .unwrap();
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("content-type", "application/json")], body) }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { server.serve(l, app).await });
    format!("https://{addr}")
}

/// The certificate a CA answers to `POST /v1/tasks` or `POST /v1/children` with is for the
/// caller's request (CA-API 3.7, 3.8: the CSR's key, the agent asked for, a task identity of
/// the caller's own task for a child), or the client refuses it: `agentid task open` and `task
/// child` write what `CaClient` returns as the agent's `cert.pem`, and an enrolling client
/// checks as much (3.6.1 step 3). Here a CA (a faulty replica, a mixed-up response) answers
/// with genuine certificates of the trust domain that are not the ones asked for: another key,
/// another agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_key_or_agent_than_asked_is_refused() {
    use agentid_api::{ChildRequest, OpenTaskRequest, TokenRequest};
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let b64url =
        |d: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d);
    let response = |identity: &str, chain: &[rustls_pki_types::CertificateDer<'_>]| {
        serde_json::json!({
            "identity": identity,
            "serial": "01",
            "not_before": 0,
            "not_after": 0,
            "certs": chain.iter().map(|c| b64url(c.as_ref())).collect::<Vec<_>>(),
        })
        .to_string()
    };
    // The key the agent holds, its CSR, and what a platform asks for with it.
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let csr = b64url(
        &key.csr(&SpiffeId::parse("spiffe://example.org/agent/planner").unwrap())
            .unwrap(),
    );
    let open = OpenTaskRequest {
        csr: csr.clone(),
        task: TokenRequest {
            agent: "planner".into(),
            scope: vec!["tickets:read".into()],
            ..Default::default()
        },
    };
    // A planner task for another key.
    let (_, other_key_chain, other_key_id) = common::operator_task(&ca, "planner");
    // A task for the agent's key, of another agent (worker).
    let (worker_chain, worker_id) = common::operator_task_for(&ca, "worker", &key);

    let platform = || {
        Arc::new(MemoryCredentials::new(common::service_credential(
            &ca, "platform", None,
        )))
    };
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    for (what, identity, chain) in [
        ("another key", &other_key_id, &other_key_chain),
        ("another agent", &worker_id, &worker_chain),
    ] {
        let url = answering_ca(&ca, response(identity, chain)).await;
        let client = CaClient::new(&url, platform(), v.clone(), T).unwrap();
        let r = client.open_task(&open).await;
        assert!(
            r.is_err(),
            "open_task for planner with the agent's key accepted a certificate for {what}: {:?}",
            r.map(|c| c.identity)
        );
    }

    // A parent (a planner task) asks for a summarizer child with the agent's key; the CA
    // answers with the worker task (the agent's key, but not a summarizer of the parent's task).
    let (parent_key, parent_chain, _) = common::operator_task(&ca, "planner");
    let parent = Arc::new(MemoryCredentials::new(
        agentid_transport::Credential::new(parent_chain, parent_key).unwrap(),
    ));
    let url = answering_ca(&ca, response(&worker_id, &worker_chain)).await;
    let client = CaClient::new(&url, parent, v.clone(), T).unwrap();
    let r = client
        .issue_child(&ChildRequest {
            agent: "summarizer".into(),
            csr,
            ttl_secs: None,
            parent_chain: None,
        })
        .await;
    assert!(
        r.is_err(),
        "issue_child accepted a certificate of another task and agent: {:?}",
        r.map(|c| c.identity)
    );
}

/// The JSON body of a `200` certificate answer (CA-API 3.5) for `chain`, naming `identity`.
fn certificate_body(identity: &str, chain: &[rustls_pki_types::CertificateDer<'_>]) -> String {
    let b64url =
        |d: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d);
    serde_json::json!({
        "identity": identity,
        "serial": "01",
        "not_before": 0,
        "not_after": 0,
        "certs": chain.iter().map(|c| b64url(c.as_ref())).collect::<Vec<_>>(),
    })
    .to_string()
}

/// A requester that asks for a lifetime (`ttl_secs` of `POST /v1/tasks`, `/v1/children`,
/// `/v1/renew`) gets a certificate that lives no longer (the CA issues `notAfter = min(now +
/// ttl, ...)`, PROTOCOL.md 15.1), or the client refuses it: a platform that opens short tasks
/// (`task open --ttl 1m`, `cert renew --ttl 1m --daemon`) relies on a stolen key being useless
/// within a minute. Here a CA (a faulty replica, a policy mix-up) answers genuine certificates
/// of the right key and identity that live ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_living_longer_than_asked_is_refused() {
    use agentid_api::{OpenTaskRequest, TokenRequest};
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let spki = key.public_key().to_spki_der();
    let mut req = agentid_ca::OpenTaskRequest::new(
        "planner",
        agentid_ca::KeySource::Spki(spki.clone()),
        agentid_ca::TaskRequester::Operator,
        agentid_protocol::Scope::parse("tickets:read").unwrap(),
    );
    req.ttl = Some(Duration::from_secs(600));
    let opened = ca.open_task(&req, common::now()).unwrap();
    let chain = common::chain_of(
        &opened.certificate.leaf.der,
        &opened.certificate.intermediate_der,
    );
    let identity = opened.identity.as_str().to_owned();
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");

    // A platform opens the task asking for a one-minute certificate.
    let url = answering_ca(&ca, certificate_body(&identity, &chain)).await;
    let platform = Arc::new(MemoryCredentials::new(common::service_credential(
        &ca, "platform", None,
    )));
    let client = CaClient::new(&url, platform, v.clone(), T).unwrap();
    let csr = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        key.csr(&SpiffeId::parse("spiffe://example.org/agent/planner").unwrap())
            .unwrap(),
    );
    let r = client
        .open_task(&OpenTaskRequest {
            csr,
            task: TokenRequest {
                agent: "planner".into(),
                scope: vec!["tickets:read".into()],
                ttl_secs: Some(60),
                ..Default::default()
            },
        })
        .await;
    assert!(
        r.is_err(),
        "open_task asking for 60 s accepted a certificate living 600 s"
    );

    // The task's holder renews asking for one minute; the CA answers a ten-minute renewal.
    let renewed = ca
        .renew(
            &agentid_ca::RenewRequest {
                identity: agentid_protocol::PeerId::parse(&identity).unwrap(),
                key: agentid_ca::KeySource::Spki(spki),
                requester: agentid_ca::RenewRequester::Operator,
                ttl: Some(Duration::from_secs(600)),
            },
            common::now(),
        )
        .unwrap();
    let renewed_chain = common::chain_of(&renewed.leaf.der, &renewed.intermediate_der);
    let url = answering_ca(&ca, certificate_body(&identity, &renewed_chain)).await;
    let enroller = Enroller::from_credential(
        &url,
        agentid_transport::Credential::new(chain, key).unwrap(),
        common::verification(&ca, &identity),
        T,
    )
    .with_ttl(Some(Duration::from_secs(60)));
    let r = enroller.renew().await;
    assert!(
        r.is_err(),
        "a renewal asking for 60 s accepted a certificate living 600 s"
    );
}

/// A token answer (`POST /v1/tokens`, CA-API 3.6) carries the `root_sha256` that `agentid token
/// create --ca-url` writes into the token file: the one trust anchor the enrolling agent pins
/// (3.6.1). The creating service already verified the CA against its own bundle, so it must
/// not take another root from the answer (nor a token for another agent than asked): whoever
/// answers with their own root's hash (a faulty replica, or whoever holds the CA service's
/// online TLS key, which CA-API 3.3 keeps from changing what verifiers trust) would get the
/// token and become the enrolled agent's only trust anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_answer_pinning_another_root_or_agent_is_refused() {
    use agentid_api::TokenRequest;
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let other = common::test_ca(KeyType::P256);
    let req = TokenRequest {
        agent: "planner".into(),
        scope: vec!["tickets:read".into()],
        ..Default::default()
    };
    let answer = |agent: &str, root_sha256: String| {
        serde_json::json!({
            "token": "secret",
            "agent": agent,
            "task": "t1",
            "expires": common::unix(common::now()) + 600,
            "root_sha256": root_sha256,
        })
        .to_string()
    };
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let platform = || {
        Arc::new(MemoryCredentials::new(common::service_credential(
            &ca, "platform", None,
        )))
    };
    // The genuine answer is taken.
    let url = answering_ca(&ca, answer("planner", agentid_ca::server::root_sha256(&ca))).await;
    let client = CaClient::new(&url, platform(), v.clone(), T).unwrap();
    client.create_token(&req).await.unwrap();
    for (what, body) in [
        (
            "another root",
            answer("planner", agentid_ca::server::root_sha256(&other.ca)),
        ),
        (
            "another agent",
            answer("auditor", agentid_ca::server::root_sha256(&ca)),
        ),
    ] {
        let url = answering_ca(&ca, body).await;
        let client = CaClient::new(&url, platform(), v.clone(), T).unwrap();
        let r = client.create_token(&req).await;
        assert!(
            r.is_err(),
            "create_token took an answer with {what}: {:?}",
            r.map(|t| (t.agent, t.root_sha256))
        );
    }
}

/// The `serial`, `not_before` and `not_after` of a certificate answer (CA-API 3.5) describe its
/// leaf: `agentid task open`, `task child` and `enroll` report them (`--format json` is what a
/// platform's scripts schedule renewals by), so an answer whose numbers are not its
/// certificate's is refused, not reported. Here a genuine certificate for the right key and
/// agent comes with a `not_after` a day later than the certificate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_answer_whose_numbers_are_not_its_certificates_is_refused() {
    use agentid_api::{OpenTaskRequest, TokenRequest};
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let b64url =
        |d: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d);
    let csr = b64url(
        &key.csr(&SpiffeId::parse("spiffe://example.org/agent/planner").unwrap())
            .unwrap(),
    );
    // A task answer carries the task's grant (CA-API 3.7).
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
    let chain = common::chain_of(
        &opened.certificate.leaf.der,
        &opened.certificate.intermediate_der,
    );
    let identity = opened.identity.as_str().to_owned();
    let info = agentid_transport::Credential::new(chain.clone(), key)
        .unwrap()
        .info()
        .clone();
    let body = |not_after: u64| {
        serde_json::json!({
            "identity": identity,
            "serial": info.serial,
            "not_before": info.not_before,
            "not_after": not_after,
            "certs": chain.iter().map(|c| b64url(c.as_ref())).collect::<Vec<_>>(),
            "grant": opened.grant.as_str(),
        })
        .to_string()
    };
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let request = OpenTaskRequest {
        csr,
        task: TokenRequest {
            agent: "planner".into(),
            scope: vec!["tickets:read".into()],
            ..Default::default()
        },
    };
    let open = |body: String| {
        let (ca, v, request) = (&ca, v.clone(), request.clone());
        async move {
            let url = answering_ca(ca, body).await;
            let platform = Arc::new(MemoryCredentials::new(common::service_credential(
                ca, "platform", None,
            )));
            CaClient::new(&url, platform, v, T)
                .unwrap()
                .open_task(&request)
                .await
        }
    };
    // The certificate's own numbers: taken.
    let taken = open(body(info.not_after)).await.unwrap();
    assert_eq!(taken.not_after, info.not_after);
    // A day more than the certificate says: refused.
    let r = open(body(info.not_after + 86_400)).await;
    assert!(
        r.is_err(),
        "open_task reported a not_after a day past its certificate's: {:?}",
        r.map(|c| c.not_after)
    );
}

/// A service credential of `name` for `key`, issued by the operator as at `at`, living `ttl`.
fn service_credential_at(
    ca: &CertificateAuthority,
    name: &str,
    key: &TaskKey,
    at: std::time::SystemTime,
    ttl: Duration,
) -> agentid_transport::Credential {
    let c = ca
        .issue_service(
            &agentid_ca::ServiceRequest {
                service: name.into(),
                key: agentid_ca::KeySource::Spki(key.public_key().to_spki_der()),
                ttl: Some(ttl),
            },
            at,
        )
        .unwrap();
    let chain = common::chain_of(&c.leaf.der, &c.intermediate_der);
    let key = TaskKey::from_pkcs8_der(key.danger_pkcs8_der()).unwrap();
    agentid_transport::Credential::new(chain, key).unwrap()
}

/// The `200` certificate answer (CA-API 3.5) a CA gives for `cred`, its numbers its leaf's.
fn answer_for(cred: &agentid_transport::Credential) -> String {
    let b64url =
        |d: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d);
    let info = cred.info();
    serde_json::json!({
        "identity": info.id.as_str(),
        "serial": info.serial,
        "not_before": info.not_before,
        "not_after": info.not_after,
        "certs": cred.cert_chain().iter().map(|c| b64url(c.as_ref())).collect::<Vec<_>>(),
    })
    .to_string()
}

/// A renewal (CA-API 3.9) is a certificate issued now for the key and identity held. Whoever
/// answers as the CA (its online TLS key, a proxy, a replica restored from a backup) can
/// replay a genuine earlier certificate of the same key, still valid but ending sooner, or
/// the held certificate itself: the `Enroller` published it over the newer one (and `cert
/// renew --daemon` wrote it to `cert.pem` and ran `--exec`), so that the agent lost the rest
/// of its certificate's life, and "renewed" again and again without any renewal, past the 90%
/// point it promises to give up at. Both answers are refused; the held credential stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_answered_with_an_earlier_or_the_held_certificate_is_refused() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let now = common::now();
    // Issued 20 minutes ago for an hour (40 minutes left), then renewed now for an hour.
    let earlier = service_credential_at(
        &ca,
        "platform",
        &key,
        now - Duration::from_secs(1200),
        Duration::from_secs(3600),
    );
    let held = service_credential_at(&ca, "platform", &key, now, Duration::from_secs(3600));
    assert!(earlier.info().not_after < held.info().not_after);
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    // The genuine renewal (issued now, for the same key) is taken.
    let fresh = service_credential_at(&ca, "platform", &key, now, Duration::from_secs(3000));
    let url = answering_ca(&ca, answer_for(&fresh)).await;
    let key2 = TaskKey::from_pkcs8_der(key.danger_pkcs8_der()).unwrap();
    let enroller = Enroller::from_credential(
        &url,
        agentid_transport::Credential::new(held.cert_chain().to_vec(), key2).unwrap(),
        v.clone(),
        T,
    );
    let renewed = enroller.renew().await.unwrap();
    assert_eq!(renewed.info().serial, fresh.info().serial);

    for (what, answer) in [("an earlier", &earlier), ("the held", &held)] {
        let url = answering_ca(&ca, answer_for(answer)).await;
        let key2 = TaskKey::from_pkcs8_der(key.danger_pkcs8_der()).unwrap();
        let enroller = Enroller::from_credential(
            &url,
            agentid_transport::Credential::new(held.cert_chain().to_vec(), key2).unwrap(),
            v.clone(),
            T,
        );
        let r = enroller.renew().await;
        assert!(
            r.is_err(),
            "a renewal answered with {what} certificate was taken: serial {:?}",
            r.map(|c| c.info().serial.clone())
        );
        let current =
            agentid_transport::CredentialSource::current(enroller.credentials().as_ref()).unwrap();
        assert_eq!(
            current.info().serial,
            held.info().serial,
            "the held certificate was replaced by {what} one"
        );
    }
}

/// `CaClient::renew` is the library's client of `POST /v1/renew` (CA-API 3.9), as `open_task`
/// and `issue_child` are of 3.7 and 3.8, and its answer is checked as theirs (3.7: a
/// certificate answer's chain validates now, certifies the caller's key and identity, lives
/// no longer than the `ttl_secs` asked for, and carries its leaf's numbers). It returned
/// whatever the CA answered: a certificate for another key or identity, or living longer than
/// asked, reached a program that renews with `CaClient` directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_client_renew_refuses_a_certificate_other_than_the_one_asked_for() {
    use agentid_api::RenewRequest;
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let now = common::now();
    let held = service_credential_at(&ca, "platform", &key, now, Duration::from_secs(3600));
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let renew = |body: String, ttl_secs: Option<u64>| {
        let (ca, v, held, key) = (&ca, v.clone(), &held, &key);
        async move {
            let url = answering_ca(ca, body).await;
            let key = TaskKey::from_pkcs8_der(key.danger_pkcs8_der()).unwrap();
            let creds = Arc::new(MemoryCredentials::new(
                agentid_transport::Credential::new(held.cert_chain().to_vec(), key).unwrap(),
            ));
            CaClient::new(&url, creds, v, T)
                .unwrap()
                .renew(&RenewRequest {
                    identity: None,
                    ttl_secs,
                })
                .await
        }
    };
    // A genuine renewal: the same key and identity, issued now.
    let fresh = service_credential_at(&ca, "platform", &key, now, Duration::from_secs(600));
    let taken = renew(answer_for(&fresh), Some(600)).await.unwrap();
    assert_eq!(taken.serial, fresh.info().serial);
    let other_key = common::service_credential(&ca, "platform", None);
    let other_service = common::service_credential(&ca, "search", None);
    // The same key and identity, certified by another CA (another root).
    let other_dir = ca_dir();
    let other_ca = CertificateAuthority::open(other_dir.path()).unwrap();
    let other_root =
        service_credential_at(&other_ca, "platform", &key, now, Duration::from_secs(600));
    let mut wrong_numbers: serde_json::Value = serde_json::from_str(&answer_for(&fresh)).unwrap();
    wrong_numbers["not_after"] = (fresh.info().not_after + 86_400).into();
    for (what, body, ttl) in [
        ("another key", answer_for(&other_key), None),
        ("another identity", answer_for(&other_service), None),
        ("another root", answer_for(&other_root), None),
        ("a longer life than asked", answer_for(&fresh), Some(60)),
        ("numbers not its own", wrong_numbers.to_string(), None),
    ] {
        let r = renew(body, ttl).await;
        assert!(
            r.is_err(),
            "CaClient::renew took a certificate with {what}: {:?}",
            r.map(|c| c.identity)
        );
    }
}

/// `Enroller::run` retries a renewal the CA keeps refusing as unavailable until 90% of the
/// certificate's lifetime, then gives up (its docs: "returns the error once a certificate
/// reaches 90% of its lifetime without a renewal"). What it returned was the last refusal
/// alone, `the CA refused (503): ...`, which `cert renew --daemon` printed as it exited: read
/// as a daemon that died on one 503, not as renewals that failed for the whole retry window of
/// a certificate about to expire. The error says it gave up, after how many attempts, and when
/// the held certificate expires (it is returned while that certificate is still valid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_gives_up_says_so_before_the_certificate_expires() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let fake = fake_ca(
        &ca,
        Arc::new(|_m: &str, _p: &str| {
            let body = br#"{"code":"unavailable","message":"the CA is at its concurrency bound","hint":"retry later"}"#;
            let mut r = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body);
            r
        }),
    )
    .await;
    // A 20 s certificate back-dated by the CA's 60 s skew: renewal due at once, given up about
    // 12 s from now.
    let credential = common::service_credential(&ca, "platform", Some(Duration::from_secs(20)));
    let not_after = credential.info().not_after;
    let enroller = Enroller::from_credential(
        &fake.url(),
        credential,
        common::verification(&ca, "spiffe://example.org/svc/platform"),
        Duration::from_secs(5),
    );
    let e = tokio::time::timeout(Duration::from_secs(60), enroller.run())
        .await
        .expect("Enroller::run gives up within the certificate's lifetime")
        .unwrap_err();
    assert!(
        agentid_transport::CredentialSource::current(enroller.credentials().as_ref()).is_some(),
        "given up only once the certificate had expired: {e}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("gave up") && shown.contains(&not_after.to_string()),
        "the error does not say that renewal gave up, nor when the certificate expires: {shown}"
    );
    let attempts = fake.count("POST /v1/renew");
    assert!(attempts >= 2, "{attempts} renewal requests");
    assert!(
        shown.contains(&format!("{attempts} attempts")),
        "{shown} ({attempts} renewal requests)"
    );
    // The CA's last refusal stays readable (the CLI shows its code and hint).
    assert_eq!(
        e.api_error().map(|a| a.code.to_string()).as_deref(),
        Some("unavailable"),
        "{e:?}"
    );
    assert!(!e.is_transient(), "{e:?}");
}

/// CA-API 3.4: "Without `after`, the latest list is returned at once" (`404` when none was
/// published); `304` answers only a request naming a list (`after`, `If-None-Match`). A
/// watcher that holds no list of the CA's domain (none yet, or one orphaned by a bundle change)
/// asks without `after`; a CA (or whoever holds its TLS key, a broken replica) answering that
/// `304` for ever left it without a list while its status showed no failure at all, the
/// `Unchanged` of a healthy long-poll: an application watching `failures` and `last_error`
/// never learnt that the feed gave it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_to_a_request_for_the_latest_list_is_a_failure() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let server_cred = common::service_credential(&ca, "agentid-ca", None);
    let server = agentid_transport::http::HttpServer::builder(
        Arc::new(MemoryCredentials::new(server_cred)),
        common::verification(&ca, common::CA_ID),
        PeerPolicy::trust_domain(td()),
    )
    .build()
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let paths = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        paths.lock().unwrap().push(uri.to_string());
        async { axum::http::StatusCode::NOT_MODIFIED }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { server.serve(l, app).await });
    // No list held: the watcher asks for the latest one.
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let creds = Arc::new(MemoryCredentials::new(common::service_credential(
        &ca, "platform", None,
    )));
    let client = CaClient::new(&format!("https://{addr}"), creds, v.clone(), T).unwrap();
    let handle = agentid_transport::enroll::RevocationWatcher::new(
        client,
        v,
        WatchOptions::default().with_backoff(Duration::from_secs(1), Duration::from_secs(1)),
    )
    .spawn();
    let failed = handle.wait_for(T, |s| s.failures >= 1).await;
    let status = handle.status();
    handle.stop().await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|p| p == "/v1/revocations"),
        "the watcher asked {seen:?}"
    );
    assert!(!seen.is_empty(), "the watcher asked nothing");
    assert!(
        failed,
        "{} answers of 304 to a request for the latest list, and the status shows no failure: {status:?}",
        seen.len()
    );
    let last = status.last_error.unwrap_or_default();
    assert!(last.contains("304"), "{last}");
}

/// The `200` certificate answer (CA-API 3.5) for an issued certificate, its numbers its leaf's,
/// carrying `grant` when given.
fn issued_body(c: &agentid_ca::IssuedCertificate, grant: Option<&str>) -> String {
    let chain = common::chain_of(&c.leaf.der, &c.intermediate_der);
    let mut v: serde_json::Value =
        serde_json::from_str(&certificate_body(c.identity.as_str(), &chain)).unwrap();
    v["serial"] = c.leaf.serial.clone().into();
    v["not_before"] = c.leaf.not_before.into();
    v["not_after"] = c.leaf.not_after.into();
    if let Some(g) = grant {
        v["grant"] = g.into();
    }
    v.to_string()
}

/// A task's answer (`POST /v1/tasks`, CA-API 3.7) carries the task's grant, which `agentid task
/// open` writes as the agent's `grant.jwt` and the agent presents as its authority. A CA (a
/// faulty replica, whoever holds the CA service's TLS key) answering the right certificate with
/// a grant that is not the one asked for (none, another task's, one signed by a key outside the
/// trust bundle, one wider or longer-lived than asked) handed the agent a chain every peer
/// refuses, found only at its first connection, or one naming another holder. The client checks
/// the grant with the protocol's verifier under the bundle it holds and against the request
/// before anything is handed on; the CA may narrow and shorten, not widen or lengthen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_answer_whose_grant_is_not_the_one_asked_for_is_refused() {
    use agentid_api::{OpenTaskRequest, TokenRequest};
    use agentid_protocol::{GrantBuilder, IdSet, Limits, Scope};
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let search =
        || IdSet::single(SpiffeId::parse("spiffe://example.org/svc/search").unwrap()).unwrap();
    let calls = |n: u64| Limits::new([("calls".to_owned(), n)].into()).unwrap();
    let summarizer = || {
        IdSet::single(SpiffeId::parse("spiffe://example.org/agent/summarizer").unwrap()).unwrap()
    };
    let opened = |key: &TaskKey, scope: &str| {
        let mut req = agentid_ca::OpenTaskRequest::new(
            "planner",
            agentid_ca::KeySource::Spki(key.public_key().to_spki_der()),
            agentid_ca::TaskRequester::Operator,
            Scope::parse(scope).unwrap(),
        );
        req.task_ttl = Some(Duration::from_secs(600));
        req.audience = Some(search());
        req.limits = Some(calls(10));
        req.may_delegate_to = Some(summarizer());
        ca.open_task(&req, common::now()).unwrap()
    };
    let asked = OpenTaskRequest {
        csr: base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            key.csr(&SpiffeId::parse("spiffe://example.org/agent/planner").unwrap())
                .unwrap(),
        ),
        task: TokenRequest {
            agent: "planner".into(),
            scope: vec!["tickets:read".into(), "tickets:write".into()],
            audience: Some(vec!["spiffe://example.org/svc/search".into()]),
            limits: Some([("calls".to_owned(), 10)].into()),
            may_delegate_to: Some(vec!["spiffe://example.org/agent/summarizer".into()]),
            task_ttl_secs: Some(600),
            ..Default::default()
        },
    };
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let ask = |body: String| {
        let (ca, v, asked) = (&ca, v.clone(), asked.clone());
        async move {
            let url = answering_ca(ca, body).await;
            let platform = Arc::new(MemoryCredentials::new(common::service_credential(
                ca, "platform", None,
            )));
            CaClient::new(&url, platform, v, T)
                .unwrap()
                .open_task(&asked)
                .await
        }
    };
    // The genuine answer, grant and all, is taken: the checks refuse no legitimate answer.
    let genuine = opened(&key, "tickets:read tickets:write");
    let grant = genuine.grant.as_str();
    let taken = ask(issued_body(&genuine.certificate, Some(grant)))
        .await
        .unwrap();
    assert_eq!(taken.grant.as_deref(), Some(grant));
    // Grants for the same holder and key signed with the CA's own grant key (a key holds one
    // task at a time): what a replica whose policy differs would answer.
    let grant_key = {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(dir.path().join("grant.key"))
            .unwrap();
        AuthorityKey::from_pkcs8_der(der.secret_pkcs8_der()).unwrap()
    };
    let now = common::unix(common::now());
    let signed = |scope: &str,
                  life: u64,
                  by: &AuthorityKey,
                  terms: &dyn Fn(GrantBuilder) -> GrantBuilder| {
        terms(
            GrantBuilder::new(
                ca.trust_domain(),
                &genuine.identity,
                key.public_key(),
                Scope::parse(scope).unwrap(),
            )
            .validity(now, now, now + life),
        )
        .sign(by)
        .unwrap()
    };
    let asked_terms = |g: GrantBuilder| {
        g.audience(search())
            .limits(calls(10))
            .may_delegate_to(summarizer())
    };
    // The CA may narrow and shorten what was asked for.
    let narrower = signed("tickets:read", 300, &grant_key, &|g| {
        g.audience(search())
            .limits(calls(5))
            .may_delegate_to(summarizer())
    });
    let taken = ask(issued_body(&genuine.certificate, Some(narrower.as_str()))).await;
    assert!(taken.is_ok(), "{taken:?}");

    let other = opened(
        &TaskKey::generate(Algorithm::Es256).unwrap(),
        "tickets:read",
    );
    let rogue = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let cases = [
        ("no grant", None, "no grant"),
        (
            "the grant of another task and key",
            Some(other.grant.clone()),
            "does not verify",
        ),
        (
            "a grant signed by a key outside the trust bundle",
            Some(signed("tickets:read", 600, &rogue, &asked_terms)),
            "does not verify",
        ),
        (
            "a grant wider than the scope asked for",
            Some(signed(
                "tickets:read search:query",
                600,
                &grant_key,
                &asked_terms,
            )),
            "beyond",
        ),
        (
            "a grant living longer than the task_ttl_secs asked for",
            Some(signed("tickets:read", 7200, &grant_key, &asked_terms)),
            "living longer",
        ),
        (
            "a grant for the whole trust domain where one service was asked for",
            Some(signed("tickets:read", 600, &grant_key, &|g| {
                g.limits(calls(10))
            })),
            "audience",
        ),
        (
            "a grant without the limit asked for",
            Some(signed("tickets:read", 600, &grant_key, &|g| {
                g.audience(search())
            })),
            "limit",
        ),
        (
            "a grant that may delegate where a sealed task was asked for",
            Some(signed("tickets:read", 600, &grant_key, &|g| {
                asked_terms(g).max_depth(2)
            })),
            "max_depth",
        ),
        (
            "a grant that may delegate to anyone in the trust domain",
            Some(signed("tickets:read", 600, &grant_key, &|g| {
                g.audience(search()).limits(calls(10))
            })),
            "may delegate to",
        ),
        (
            "a grant acting for a principal nobody asked for",
            Some(signed("tickets:read", 600, &grant_key, &|g| {
                asked_terms(g)
                    .on_behalf_of(serde_json::json!({"format": "opaque", "id": "user:42"}))
            })),
            "on behalf of",
        ),
    ];
    for (what, grant, why) in cases {
        let body = match &grant {
            Some(g) => issued_body(&genuine.certificate, Some(g.as_str())),
            None => issued_body(&genuine.certificate, None),
        };
        match ask(body).await {
            Ok(r) => panic!("open_task took an answer carrying {what}: {:?}", r.grant),
            Err(e) => {
                let shown = e.to_string();
                assert!(
                    shown.contains("the CA answered /v1/tasks with") && shown.contains(why),
                    "{what}: {shown}"
                );
                // A faulty replica's answer: another may answer right.
                assert!(e.is_transient(), "{what}: {shown}");
            }
        }
    }
    let r = ask(issued_body(&genuine.certificate, Some("not.a.grant"))).await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("cannot be read")),
        "{r:?}"
    );

    // A platform enrolled with a token holds the pinned root only (CA-API 3.6.1): no grant key
    // to check a signature with, but the grant's terms are still held to the request.
    let mut pinned = BundleSet::new();
    pinned
        .insert(
            agentid_protocol::TrustBundle::parse(
                &td(),
                ca.trust_bundle().unwrap().to_spiffe_json().as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
    let v = PeerVerification::new(
        VerifierConfig::new(
            SpiffeId::parse("spiffe://example.org/svc/platform").unwrap(),
            pinned,
        )
        .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap();
    let ask_pinned = |body: String| {
        let (ca, v, asked) = (&ca, v.clone(), asked.clone());
        async move {
            let url = answering_ca(ca, body).await;
            let platform = Arc::new(MemoryCredentials::new(common::service_credential(
                ca, "platform", None,
            )));
            CaClient::new(&url, platform, v, T)
                .unwrap()
                .open_task(&asked)
                .await
        }
    };
    let taken = ask_pinned(issued_body(&genuine.certificate, Some(grant))).await;
    assert!(taken.is_ok(), "{taken:?}");
    for (what, grant, why) in [
        (
            "the grant of another task and key",
            other.grant.clone(),
            "instead of",
        ),
        (
            "a grant wider than the scope asked for",
            signed("tickets:read search:query", 600, &grant_key, &asked_terms),
            "beyond",
        ),
        (
            "a grant that may delegate where a sealed task was asked for",
            signed("tickets:read", 600, &grant_key, &|g| {
                asked_terms(g).max_depth(2)
            }),
            "max_depth",
        ),
    ] {
        match ask_pinned(issued_body(&genuine.certificate, Some(grant.as_str()))).await {
            Ok(r) => panic!(
                "open_task with a pinned bundle took an answer carrying {what}: {:?}",
                r.grant
            ),
            Err(e) => assert!(e.to_string().contains(why), "{what}: {e}"),
        }
    }
}

/// A child's answer (`POST /v1/children`, CA-API 3.8) and a renewal's (3.9) carry no grant:
/// `agentid task child` wrote one it was given as the child's `grant.jwt`, which the child then
/// presented as its authority (another holder's grant, refused by every peer). Such an answer
/// is refused; the same answer without the grant is taken. And a child answered to a service
/// (which holds no task, so the CA refuses it) was taken whatever task it named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_or_renewal_answer_carrying_a_grant_is_refused() {
    use agentid_api::{ChildRequest, RenewRequest};
    use agentid_protocol::Scope;
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let parent_key = TaskKey::generate(Algorithm::Es256).unwrap();
    let mut req = agentid_ca::OpenTaskRequest::new(
        "planner",
        agentid_ca::KeySource::Spki(parent_key.public_key().to_spki_der()),
        agentid_ca::TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    req.max_depth = Some(1);
    let parent = ca.open_task(&req, common::now()).unwrap();
    let parent_chain = common::chain_of(
        &parent.certificate.leaf.der,
        &parent.certificate.intermediate_der,
    );
    let child_key = TaskKey::generate(Algorithm::Es256).unwrap();
    let child = ca
        .issue_child(
            &agentid_ca::ChildRequest {
                parent: parent.identity.clone(),
                parent_chain: None,
                agent: "summarizer".into(),
                key: agentid_ca::KeySource::Spki(child_key.public_key().to_spki_der()),
                ttl: None,
            },
            common::now(),
        )
        .unwrap();
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let ask_child = |body: String| {
        let (ca, v, chain, parent_key, child_key) = (
            &ca,
            v.clone(),
            parent_chain.clone(),
            &parent_key,
            &child_key,
        );
        async move {
            let url = answering_ca(ca, body).await;
            let key = TaskKey::from_pkcs8_der(parent_key.danger_pkcs8_der()).unwrap();
            let creds = Arc::new(MemoryCredentials::new(
                agentid_transport::Credential::new(chain, key).unwrap(),
            ));
            CaClient::new(&url, creds, v, T)
                .unwrap()
                .issue_child(&ChildRequest {
                    agent: "summarizer".into(),
                    csr: base64::Engine::encode(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                        child_key
                            .csr(&SpiffeId::parse("spiffe://example.org/agent/summarizer").unwrap())
                            .unwrap(),
                    ),
                    ttl_secs: None,
                    parent_chain: None,
                })
                .await
        }
    };
    let taken = ask_child(issued_body(&child, None)).await;
    assert!(taken.is_ok(), "{taken:?}");
    // A service holds no task to issue a child in (the CA refuses it `not_permitted`): a child
    // certificate answered to one is not taken, whatever task it names.
    let url = answering_ca(&ca, issued_body(&child, None)).await;
    let service = Arc::new(MemoryCredentials::new(common::service_credential(
        &ca, "platform", None,
    )));
    let r = CaClient::new(&url, service, v.clone(), T)
        .unwrap()
        .issue_child(&ChildRequest {
            agent: "summarizer".into(),
            csr: base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                child_key
                    .csr(&SpiffeId::parse("spiffe://example.org/agent/summarizer").unwrap())
                    .unwrap(),
            ),
            ttl_secs: None,
            parent_chain: None,
        })
        .await;
    assert!(
        r.is_err(),
        "issue_child for a service took a child of task {:?}",
        r.map(|c| c.identity)
    );
    let r = ask_child(issued_body(&child, Some(parent.grant.as_str()))).await;
    match r {
        Ok(r) => panic!("issue_child took an answer carrying a grant: {:?}", r.grant),
        Err(e) => assert!(e.to_string().contains("grant"), "{e}"),
    }

    // The parent renews: a genuine renewal is taken, the same with a grant is not.
    let renewed = ca
        .renew(
            &agentid_ca::RenewRequest {
                identity: agentid_protocol::PeerId::parse(parent.identity.as_str()).unwrap(),
                key: agentid_ca::KeySource::Spki(parent_key.public_key().to_spki_der()),
                requester: agentid_ca::RenewRequester::Operator,
                ttl: None,
            },
            common::now(),
        )
        .unwrap();
    let renew = |body: String| {
        let (ca, v, chain, parent_key) = (&ca, v.clone(), parent_chain.clone(), &parent_key);
        async move {
            let url = answering_ca(ca, body).await;
            let key = TaskKey::from_pkcs8_der(parent_key.danger_pkcs8_der()).unwrap();
            let creds = Arc::new(MemoryCredentials::new(
                agentid_transport::Credential::new(chain, key).unwrap(),
            ));
            CaClient::new(&url, creds, v, T)
                .unwrap()
                .renew(&RenewRequest::default())
                .await
        }
    };
    let taken = renew(issued_body(&renewed, None)).await;
    assert!(taken.is_ok(), "{taken:?}");
    let r = renew(issued_body(&renewed, Some(parent.grant.as_str()))).await;
    match r {
        Ok(r) => panic!(
            "CaClient::renew took an answer carrying a grant: {:?}",
            r.grant
        ),
        Err(e) => assert!(e.to_string().contains("grant"), "{e}"),
    }
}

/// A fake enrollment listener of example.org (server-authenticated TLS with a genuine
/// `agentid-ca` certificate, as `--enroll-listen`): `GET /v1/bundle` answers the CA's genuine
/// bundle, `POST /v1/enroll` answers `200` with `enrolled`; its URL.
async fn fake_enrollment(ca: &CertificateAuthority, enrolled: String) -> String {
    let cred = common::service_credential(ca, "agentid-ca", Some(Duration::from_secs(3600)));
    let config = agentid_transport::http::danger_no_client_auth_for_enrollment(Arc::new(
        MemoryCredentials::new(cred),
    ))
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let bundle = ca.trust_bundle().unwrap().to_json();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, bundle, enrolled) = (acceptor.clone(), bundle.clone(), enrolled.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some((method, _)) = read_request(&mut tls).await else {
                    return;
                };
                let body = if method == "GET" { bundle } else { enrolled };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    format!("https://{addr}")
}

/// An enrollment's answer (`POST /v1/enroll`, CA-API 3.5) for an agent's task carries the
/// task's grant, which `agentid enroll` writes as `grant.jwt` beside the key. Whoever answers
/// as the CA (its online TLS key, a faulty replica) answering the agent's genuine certificate
/// with another task's grant (or none) left the agent a credential directory whose chain every
/// peer refuses, found at its first connection. The grant must name the enrolled identity and
/// bind the enrolled key; the genuine answer is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_answer_whose_grant_is_not_the_agents_is_refused() {
    use agentid_protocol::Scope;
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let opened = |key: &TaskKey| {
        let req = agentid_ca::OpenTaskRequest::new(
            "planner",
            agentid_ca::KeySource::Spki(key.public_key().to_spki_der()),
            agentid_ca::TaskRequester::Operator,
            Scope::parse("tickets:read").unwrap(),
        );
        ca.open_task(&req, common::now()).unwrap()
    };
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let genuine = opened(&key);
    let other = opened(&TaskKey::generate(Algorithm::Es256).unwrap());
    let enroll = |body: String| {
        let (ca, key, identity) = (&ca, &key, genuine.identity.clone());
        async move {
            let url = fake_enrollment(ca, body).await;
            let file = TokenFile {
                token: "a-token".into(),
                ca_url: url,
                root_sha256: agentid_ca::server::root_sha256(ca),
                identity: identity.as_str().to_owned(),
                agent: "planner".into(),
                task: identity.task_id().as_str().to_owned(),
                expires: common::unix(common::now()) + 600,
                renew_url: None,
                bundle_seq: None,
            };
            let key = TaskKey::from_pkcs8_der(key.danger_pkcs8_der()).unwrap();
            agentid_transport::enroll::enroll_with_token(&file, key, T).await
        }
    };
    let taken = enroll(issued_body(
        &genuine.certificate,
        Some(genuine.grant.as_str()),
    ))
    .await;
    assert!(taken.is_ok(), "{taken:?}");
    for (what, body, why) in [
        (
            "no grant",
            issued_body(&genuine.certificate, None),
            "no grant",
        ),
        (
            "the grant of another task and key",
            issued_body(&genuine.certificate, Some(other.grant.as_str())),
            "instead of",
        ),
    ] {
        match enroll(body).await {
            Ok(e) => panic!(
                "enroll_with_token took an answer carrying {what}: {:?}",
                e.response.grant
            ),
            Err(e) => {
                let shown = e.to_string();
                assert!(
                    shown.contains("the CA answered /v1/enroll with") && shown.contains(why),
                    "{what}: {shown}"
                );
                // The single-use token went with the request: asking again cannot work.
                assert!(shown.contains("the token is spent"), "{what}: {shown}");
                assert!(!shown.contains("ask again"), "{what}: {shown}");
            }
        }
    }
}

/// A page of `GET /v1/tasks` names its `next` (CA-API 3.11), which `agentid ca list` prints as
/// the `--after` of the next page: an answer whose `next` is not a task id (terminal escapes,
/// a forged line) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_page_whose_next_is_not_a_task_id_is_refused() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let list = |next: &str| {
        let (ca, v) = (&ca, v.clone());
        let body = serde_json::json!({"tasks": [], "next": next}).to_string();
        async move {
            let url = answering_ca(ca, body).await;
            let platform = Arc::new(MemoryCredentials::new(common::service_credential(
                ca, "platform", None,
            )));
            CaClient::new(&url, platform, v, T).unwrap().list().await
        }
    };
    let taken = list("t5znjccwuty6mhbsgg5wtdldxa").await;
    assert!(taken.is_ok(), "{taken:?}");
    let r = list("x\u{1b}[2J\nspiffe://example.org/agent/forged/task/x until never").await;
    match r {
        Ok(p) => panic!("CaClient::list took a next of {:?}", p.next),
        Err(e) => assert!(!e.to_string().chars().any(char::is_control), "{e}"),
    }
}

/// A renewal answered with a certificate that is not the one asked for (here another key's: a
/// faulty replica behind the CA's address, or whoever answers as the CA once) is refused, and
/// its error says to ask again; `Enroller::run` instead ended at once with it (an answer check
/// was not transient), so that `cert renew --daemon` exited at 40-50% of the certificate's
/// life on one bad answer, with the rest of its retry window unused, although the next
/// request may reach a replica that answers right. Such an answer is retried as a failure is,
/// until the 90% point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_answered_with_another_certificate_is_asked_again_not_fatal() {
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let other = common::service_credential(&ca, "platform", None);
    let asked = Arc::new(AtomicU64::new(0));
    let server_cred = common::service_credential(&ca, "agentid-ca", None);
    let server = agentid_transport::http::HttpServer::builder(
        Arc::new(MemoryCredentials::new(server_cred)),
        common::verification(&ca, common::CA_ID),
        PeerPolicy::trust_domain(td()),
    )
    .build()
    .unwrap();
    let (body, count) = (answer_for(&other), asked.clone());
    let app = axum::Router::new().fallback(move || {
        count.fetch_add(1, Ordering::SeqCst);
        let body = body.clone();
        async move { ([("content-type", "application/json")], body) }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    tokio::spawn(async move { server.serve(l, app).await });
    // A 60 s certificate back-dated by the CA's 60 s skew: renewal is due at once and retries
    // may go on until about 48 s from now.
    let credential = common::service_credential(&ca, "platform", Some(Duration::from_secs(60)));
    let enroller = Enroller::from_credential(
        &url,
        credential,
        common::verification(&ca, "spiffe://example.org/svc/platform"),
        Duration::from_secs(5),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(9), enroller.run()).await;
    let renewals = asked.load(Ordering::SeqCst);
    match outcome {
        Err(_elapsed) => assert!(renewals >= 2, "retried: {renewals} renewal requests"),
        Ok(r) => panic!(
            "Enroller::run ended after {renewals} renewal request(s) with {r:?}, although the \
             certificate has ~40 s of its retry window left"
        ),
    }
}

/// A token answer's `expires` (CA-API 3.6) is what `agentid token create --ca-url` writes into
/// the token file and tells the operator ("redeemable until ..."), who hands the file on
/// believing a leak is harmless after that time. A CA (a faulty replica, a policy mix-up)
/// answering a token redeemable for a week where ten minutes were asked for was taken and
/// reported as such without a word; it is refused (the token is not written, nobody holds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_answer_redeemable_longer_than_asked_is_refused() {
    use agentid_api::TokenRequest;
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let answer = |expires: u64| {
        serde_json::json!({
            "token": "secret",
            "agent": "planner",
            "task": "t1",
            "expires": expires,
            "root_sha256": agentid_ca::server::root_sha256(&ca),
        })
        .to_string()
    };
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let create = |body: String, expires_in_secs: Option<u64>| {
        let (ca, v) = (&ca, v.clone());
        async move {
            let url = answering_ca(ca, body).await;
            let platform = Arc::new(MemoryCredentials::new(common::service_credential(
                ca, "platform", None,
            )));
            CaClient::new(&url, platform, v, T)
                .unwrap()
                .create_token(&TokenRequest {
                    agent: "planner".into(),
                    scope: vec!["tickets:read".into()],
                    expires_in_secs,
                    ..Default::default()
                })
                .await
        }
    };
    let now = common::unix(common::now());
    // As asked (and the default, 600 s, when none was): taken.
    let taken = create(answer(now + 300), Some(300)).await;
    assert!(taken.is_ok(), "{taken:?}");
    let taken = create(answer(now + 600), None).await;
    assert!(taken.is_ok(), "{taken:?}");
    for (what, expires, asked) in [
        ("a week for 300 s asked", now + 7 * 86_400, Some(300)),
        ("a week for the default", now + 7 * 86_400, None),
    ] {
        let r = create(answer(expires), asked).await;
        assert!(
            r.as_ref().is_err_and(|e| e.to_string().contains("expires")),
            "create_token took a token redeemable {what}: {:?}",
            r.map(|t| t.expires)
        );
    }
}

/// A revocation's answer (`POST /v1/revoke`, CA-API 3.10) is the list entry the target makes,
/// sent once the list served holds it: its `exp` is the entry's, when everything the entry could
/// hit has expired plus the skew, so an entry still in force (PROTOCOL.md 6.5: an entry applies
/// while `now < exp`), and an integer of the protocol (at most 2^53 - 1). `agentid revoke --ca-url`
/// prints it. An answer whose `exp` has passed (an entry that revokes nothing, or none that a
/// served list can hold) or is no number the CA could give was taken and printed as a
/// revocation; it is refused as the CA's wrong answer, which asking again may correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_answer_whose_exp_is_not_in_force_is_refused() {
    use agentid_api::RevokeRequest;
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let answer = |kind: &str, value: &str, exp: u64| {
        serde_json::json!({"kind": kind, "value": value, "exp": exp}).to_string()
    };
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let revoke = |body: String, req: RevokeRequest| {
        let (ca, v) = (&ca, v.clone());
        async move {
            let url = answering_ca(ca, body).await;
            let platform = Arc::new(MemoryCredentials::new(common::service_credential(
                ca, "platform", None,
            )));
            CaClient::new(&url, platform, v, T)
                .unwrap()
                .revoke(&req)
                .await
        }
    };
    let task = || RevokeRequest {
        task: Some("t1".into()),
        ..Default::default()
    };
    let agent = || RevokeRequest {
        agent: Some("planner".into()),
        ..Default::default()
    };
    let now = common::unix(common::now());
    // What the CA answers: taken.
    let taken = revoke(answer("task", "t1", now + 660), task()).await;
    assert!(taken.is_ok(), "{taken:?}");
    let taken = revoke(answer("agent", "planner", now + 86_460), agent()).await;
    assert!(taken.is_ok(), "{taken:?}");
    for (what, body, req) in [
        ("an exp long past", answer("task", "t1", 1), task()),
        (
            "an exp an hour ago",
            answer("agent", "planner", now - 3600),
            agent(),
        ),
        ("an exp of 0", answer("task", "t1", 0), task()),
        (
            "an exp above 2^53 - 1",
            answer("task", "t1", 1 << 53),
            task(),
        ),
        ("an exp of u64::MAX", answer("task", "t1", u64::MAX), task()),
    ] {
        let r = revoke(body, req).await;
        match r {
            Err(e @ agentid_transport::enroll::EnrollError::BadAnswer(_)) => {
                assert!(e.is_transient(), "{e}");
                assert!(e.to_string().contains("exp"), "{e}");
            }
            other => panic!("revoke took an answer with {what}: {other:?}"),
        }
    }
}

/// The grant a task's answer carries is checked with the protocol's one verifier under the
/// bundles the client holds (row 207), and with the revocation lists it holds too (PROTOCOL.md
/// section 10, the revocation phase): a platform whose verification holds the CA's list (a
/// `RevocationWatcher` on it) was handed, and wrote as the agent's `grant.jwt`, a grant that
/// list revokes by its `jti`, its task, its holder's key or its agent (a replica behind on
/// revocations, whoever holds the CA service's TLS key replaying an answer), which every peer
/// holding the same list refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_answer_whose_grant_a_held_list_revokes_is_refused() {
    use agentid_api::{OpenTaskRequest, TokenRequest};
    use agentid_ca::RevokeTarget;
    use agentid_protocol::{Jkt, Jti, Scope};
    let dir = ca_dir();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let open = || {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let mut req = agentid_ca::OpenTaskRequest::new(
            "planner",
            agentid_ca::KeySource::Spki(key.public_key().to_spki_der()),
            agentid_ca::TaskRequester::Operator,
            Scope::parse("tickets:read").unwrap(),
        );
        req.task_ttl = Some(Duration::from_secs(600));
        let opened = ca.open_task(&req, common::now()).unwrap();
        let asked = OpenTaskRequest {
            csr: base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                key.csr(&SpiffeId::parse("spiffe://example.org/agent/planner").unwrap())
                    .unwrap(),
            ),
            task: TokenRequest {
                agent: "planner".into(),
                scope: vec!["tickets:read".into()],
                task_ttl_secs: Some(600),
                ..Default::default()
            },
        };
        (key, opened, asked)
    };
    let v = common::verification(&ca, "spiffe://example.org/svc/platform");
    let ask = |opened: &agentid_ca::TaskCredentials, asked: OpenTaskRequest| {
        let (ca, v) = (&ca, v.clone());
        let body = issued_body(&opened.certificate, Some(opened.grant.as_str()));
        async move {
            let url = answering_ca(ca, body).await;
            let platform = Arc::new(MemoryCredentials::new(common::service_credential(
                ca, "platform", None,
            )));
            CaClient::new(&url, platform, v, T)
                .unwrap()
                .open_task(&asked)
                .await
        }
    };
    // Opened before any revocation (the CA refuses to open a task for a revoked agent).
    let tasks: Vec<_> = (0..4).map(|_| open()).collect();
    for (i, (key, opened, asked)) in tasks.into_iter().enumerate() {
        // Taken while the held list revokes nothing of it: the lists refuse no genuine grant.
        let taken = ask(&opened, asked.clone()).await;
        assert!(taken.is_ok(), "{taken:?}");
        let (what, target) = match i {
            0 => (
                "its jti",
                RevokeTarget::GrantJti(Jti::parse(&opened.grant_jti).unwrap()),
            ),
            1 => ("its task", RevokeTarget::Task(opened.identity.task_id())),
            2 => (
                "its holder's key",
                RevokeTarget::Key(Jkt::parse(&key.public_key().thumbprint()).unwrap()),
            ),
            _ => ("its agent", RevokeTarget::Agent("planner".into())),
        };
        ca.revoke(&target, Some("test"), "operator", common::now())
            .unwrap();
        v.apply_revocation_list(&ca.revocation_list(common::now()).unwrap())
            .unwrap();
        let r = ask(&opened, asked).await;
        match r {
            Err(e @ agentid_transport::enroll::EnrollError::BadGrant { .. }) => {
                assert!(e.to_string().contains("revoked"), "{e}");
            }
            other => panic!("open_task took a grant the held list revokes by {what}: {other:?}"),
        }
    }
}
