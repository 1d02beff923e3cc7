//! Revocation publication through the service (`spec/CA-API.md` 3.4): one `seq` per
//! publication, lists stored and served by every replica from the store, a long-poll waiter
//! woken by a revocation, revocations made by another process published from the store.
//!
//! `revoke_to_long_poll_wake_up_latency` measures the time from the revoke call to the waiter's
//! wake-up and prints p50/p99 (never asserted); sized by `AGENTID_LOAD` (`ci`: 20 trials,
//! `full`: 100).
#![cfg(test)]
#![allow(missing_docs)]

mod common;
use common::call;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentid_api::RevocationsResponse;
use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{CertificateAuthority, KeyType, RevokeTarget};
use agentid_protocol::Algorithm;
use agentid_transport::http::{HttpClient, HttpClientConnection};

const T: Duration = Duration::from_secs(20);

fn ca_dir() -> tempfile::TempDir {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str("\n[services.agentid-ca]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n");
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    dir
}

/// Starts a service (a replica) on `dir`.
async fn replica(dir: &std::path::Path) -> SocketAddr {
    replica_with(dir, ServiceOptions::default()).await
}

async fn replica_with(dir: &std::path::Path, options: ServiceOptions) -> SocketAddr {
    let ca = CertificateAuthority::open(dir).unwrap();
    let service = CaService::new(ca, options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { service.serve(listener).await });
    addr
}

/// Opens a task for `agent` (as the operator) and connects to `addr` with it; returns the
/// connection and the task id.
async fn connect(
    dir: &std::path::Path,
    addr: SocketAddr,
    agent: &str,
) -> (HttpClientConnection, String) {
    let (client, task) = client(dir, agent);
    (client.connect(addr, "ca.example.org").await.unwrap(), task)
}

/// A client holding a new task of `agent`, and the task id.
fn client(dir: &std::path::Path, agent: &str) -> (HttpClient, String) {
    let ca = CertificateAuthority::open(dir).unwrap();
    let (client, id) = common::task_client(&ca, agent, T);
    (client, id.rsplit('/').next().unwrap().to_owned())
}

async fn latest(c: &mut HttpClientConnection) -> RevocationsResponse {
    let (s, b) = call(c, "GET", "/v1/revocations", "").await;
    assert_eq!(s, 200, "{b}");
    serde_json::from_str(&b).unwrap()
}

fn entries(list: &str) -> String {
    let p = list.split('.').nth(1).unwrap();
    let b = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    v["entries"].to_string()
}

fn revoke_body(task: &str) -> String {
    format!(r#"{{"task":"{task}","reason":"trial"}}"#)
}

/// A revocation made through one replica wakes a long-poll on another; both serve the same
/// bytes for the same `seq`, read from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_the_stored_lists_and_wakes_its_waiters() {
    let dir = ca_dir();
    let a = replica(dir.path()).await;
    let b = replica(dir.path()).await;
    let (mut holder, task) = connect(dir.path(), a, "planner").await;
    let (mut watcher, _) = connect(dir.path(), b, "worker").await;
    // The holder's own calls are refused once its task is revoked (every request re-checks its
    // caller), so replica a is read through a second caller.
    let (mut observer, _) = connect(dir.path(), a, "worker").await;

    let first = latest(&mut watcher).await;
    let path = format!("/v1/revocations?after={}&wait=25", first.seq);
    let poll = tokio::spawn(async move {
        let r = call(&mut watcher, "GET", &path, "").await;
        (r, watcher)
    });
    let (s, body) = call(&mut holder, "POST", "/v1/revoke", &revoke_body(&task)).await;
    assert_eq!(s, 200, "{body}");
    // The revoke call answers once a list holding the entry is served by its replica.
    let on_a = latest(&mut observer).await;
    assert!(entries(&on_a.list).contains(&task));

    let ((s, body), mut watcher) = tokio::time::timeout(T, poll).await.unwrap().unwrap();
    assert_eq!(s, 200, "{body}");
    let woken: RevocationsResponse = serde_json::from_str(&body).unwrap();
    assert!(woken.seq > first.seq);
    assert!(entries(&woken.list).contains(&task));

    // Both replicas converge on the latest stored list, byte for byte (bounded wait).
    let deadline = Instant::now() + T;
    loop {
        let (x, y) = (latest(&mut observer).await, latest(&mut watcher).await);
        if x.seq == y.seq {
            assert_eq!(x.list, y.list);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never served the same seq"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A revocation committed by another process on the same store (the operator's CLI) is
/// published by the running service from the store's revocation epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_by_another_process_is_published() {
    let dir = ca_dir();
    let a = replica(dir.path()).await;
    let (mut watcher, _) = connect(dir.path(), a, "worker").await;
    let first = latest(&mut watcher).await;
    let path = format!("/v1/revocations?after={}&wait=25", first.seq);
    let poll = tokio::spawn(async move { call(&mut watcher, "GET", &path, "").await });

    let operator = CertificateAuthority::open(dir.path()).unwrap();
    operator
        .revoke(
            &RevokeTarget::Agent("planner".into()),
            None,
            "operator",
            common::now(),
        )
        .unwrap();
    let (s, body) = tokio::time::timeout(T, poll).await.unwrap().unwrap();
    assert_eq!(s, 200, "{body}");
    let woken: RevocationsResponse = serde_json::from_str(&body).unwrap();
    assert!(woken.seq > first.seq);
    assert!(entries(&woken.list).contains("agent/planner"));
    // The publication is in the store with its audit record.
    let stored = operator.latest_published().unwrap().unwrap();
    assert!(stored.seq >= woken.seq);
    agentid_ca::audit::verify_dir(dir.path()).unwrap().unwrap();
}

fn trials() -> usize {
    match std::env::var("AGENTID_LOAD").as_deref() {
        Ok("full") => 100,
        _ => 20,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// From the revoke call to the long-poll waiter's wake-up, on loopback. Each trial: a fresh
/// task and connection (not timed), a waiter parked on the current `seq`, then the revoke.
/// Trials are spaced past the publisher's coalescing interval so each measures one
/// publication, not the wait for the previous one's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_to_long_poll_wake_up_latency() {
    let dir = ca_dir();
    let addr = replica(dir.path()).await;
    let (mut watcher, _) = connect(dir.path(), addr, "worker").await;
    let n = trials();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut holder, task) = connect(dir.path(), addr, "planner").await;
        let current = latest(&mut watcher).await;
        let path = format!("/v1/revocations?after={}&wait=25", current.seq);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let poll = tokio::spawn(async move {
            let r = call(&mut watcher, "GET", &path, "").await;
            let _ = tx.send(Instant::now());
            (r, watcher)
        });
        // Let the waiter's request reach the server (its outcome does not depend on it).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        let (s, body) = call(&mut holder, "POST", "/v1/revoke", &revoke_body(&task)).await;
        assert_eq!(s, 200, "{body}");
        let woke = tokio::time::timeout(T, rx).await.unwrap().unwrap();
        let ((s, body), w) = poll.await.unwrap();
        watcher = w;
        assert_eq!(s, 200, "{body}");
        let r: RevocationsResponse = serde_json::from_str(&body).unwrap();
        assert!(r.seq > current.seq);
        assert!(entries(&r.list).contains(&task));
        samples.push(woke.saturating_duration_since(t0));
        tokio::time::sleep(agentid_ca::publication::COALESCE + Duration::from_millis(50)).await;
    }
    samples.sort();
    println!(
        "revoke -> long-poll wake-up over {n} trials on loopback: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

/// `GET /v1/bundle/agentid`: the bundle the operator signed offline, served without the
/// bundle-signing key on the service's host; a document this key did not sign is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_agentid_bundle_is_served_without_its_key() {
    use agentid_ca::agentid_bundle;
    let dir = ca_dir();
    let pubkey = agentid_bundle::public_key(dir.path()).unwrap();
    // Offline: the key leaves the service's directory.
    std::fs::remove_file(dir.path().join("bundle-signing.key")).unwrap();
    let addr = replica(dir.path()).await;
    let (mut c, _) = connect(dir.path(), addr, "worker").await;

    let (s, jws) = call(&mut c, "GET", "/v1/bundle/agentid", "").await;
    assert_eq!(s, 200, "{jws}");
    let td = agentid_protocol::TrustDomain::parse(common::TD).unwrap();
    let bundle =
        agentid_protocol::verify_signed_bundle(&jws, &pubkey, &td, common::unix(common::now()), 60)
            .unwrap()
            .bundle;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let current = ca.trust_bundle().unwrap();
    assert_eq!(bundle.grant_keys(), current.grant_keys());
    assert_eq!(bundle.revocation_keys(), current.revocation_keys());

    // A document signed by another key (say, the stolen TLS key's owner) is refused.
    let mallory = agentid_protocol::AuthorityKey::generate(Algorithm::Es256).unwrap();
    let forged = agentid_bundle::sign(&mallory, &current, common::unix(common::now())).unwrap();
    // CA-API.md 3.3: not served, `500 internal` (the CA's own fault, not the request's).
    for doc in [forged.as_str(), "not a JWS"] {
        std::fs::write(dir.path().join("agentid-bundle.jws"), doc).unwrap();
        let (s, body) = call(&mut c, "GET", "/v1/bundle/agentid", "").await;
        let e: agentid_api::ApiError = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (s, e.code),
            (500, agentid_api::ErrorCode::Internal),
            "{body}"
        );
    }
    // None at all: 404.
    std::fs::remove_file(dir.path().join("agentid-bundle.jws")).unwrap();
    let (s, body) = call(&mut c, "GET", "/v1/bundle/agentid", "").await;
    assert_eq!(s, 404, "{body}");
}

/// CA-API 3.3: a document that lists a retiring grant key beside the CA's current one (a
/// planned rotation) is served; one signed by the genuine bundle-signing key that lacks the
/// CA's current grant key (an old document, or one signed before the key was replaced) is
/// not, `500 internal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_bundle_with_a_retiring_key_is_served_and_one_without_the_current_key_is_not() {
    use agentid_ca::agentid_bundle;
    let dir = ca_dir();
    let der = agentid_fs::read_private_key(&dir.path().join("bundle-signing.key")).unwrap();
    let signing = agentid_protocol::AuthorityKey::from_pkcs8_der(&der).unwrap();
    let addr = replica(dir.path()).await;
    let (mut c, _) = connect(dir.path(), addr, "worker").await;
    let current = CertificateAuthority::open(dir.path())
        .unwrap()
        .trust_bundle()
        .unwrap();
    let t = common::unix(common::now());

    let outgoing = agentid_protocol::AuthorityKey::generate(Algorithm::Es256).unwrap();
    let overlap = current.clone().add_grant_key(outgoing.public_key().clone());
    let doc = agentid_protocol::sign_bundle(&signing, &overlap, t, t).unwrap();
    std::fs::write(dir.path().join("agentid-bundle.jws"), &doc).unwrap();
    let (s, body) = call(&mut c, "GET", "/v1/bundle/agentid", "").await;
    assert_eq!((s, body.as_str()), (200, doc.as_str()));

    let mut v: serde_json::Value = serde_json::from_str(&current.to_json()).unwrap();
    v["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["use"] != "agentid-grant");
    let td = agentid_protocol::TrustDomain::parse(common::TD).unwrap();
    let lacking = agentid_protocol::TrustBundle::parse(&td, v.to_string().as_bytes())
        .unwrap()
        .add_grant_key(outgoing.public_key().clone());
    let doc = agentid_bundle::sign(&signing, &lacking, t + 1).unwrap();
    std::fs::write(dir.path().join("agentid-bundle.jws"), doc).unwrap();
    let (s, body) = call(&mut c, "GET", "/v1/bundle/agentid", "").await;
    let e: agentid_api::ApiError = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s, e.code),
        (500, agentid_api::ErrorCode::Internal),
        "{body}"
    );
}

/// Held long-poll requests are bounded per caller: past the bound, `429 rate_limited`; other
/// callers still wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_bounded_per_caller() {
    let dir = ca_dir();
    let addr = replica_with(
        dir.path(),
        ServiceOptions {
            max_waiters_per_caller: 1,
            ..ServiceOptions::default()
        },
    )
    .await;
    let (same, _) = client(dir.path(), "worker");
    let mut first = same.connect(addr, "ca.example.org").await.unwrap();
    let mut second = same.connect(addr, "ca.example.org").await.unwrap();
    let current = latest(&mut first).await;
    let long = format!("/v1/revocations?after={}&wait=25", current.seq);
    let short = format!("/v1/revocations?after={}&wait=1", current.seq);
    let hold = |mut c: HttpClientConnection, path: String| {
        tokio::spawn(async move {
            let r = call(&mut c, "GET", &path, "").await;
            (r, c)
        })
    };
    let mut held = hold(first, long.clone());
    // Bounded: until the first connection's request is the one held and the second's is
    // refused. (Whichever arrives first holds the caller's one slot; a 1-second wait on the
    // second connection frees it again, and a refused first request is sent again.)
    let deadline = Instant::now() + T;
    loop {
        let (s, body) = call(&mut second, "GET", &short, "").await;
        if s == 429 {
            assert!(body.contains("rate_limited"), "{body}");
            break;
        }
        assert_eq!(s, 304, "{body}");
        assert!(
            Instant::now() < deadline,
            "the second request was never refused"
        );
        if held.is_finished() {
            let ((s, body), c) = held.await.unwrap();
            assert_eq!(s, 429, "{body}");
            held = hold(c, long.clone());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (mut other, _) = connect(dir.path(), addr, "planner").await;
    let (s, _) = call(
        &mut other,
        "GET",
        &format!("/v1/revocations?after={}&wait=1", current.seq),
        "",
    )
    .await;
    assert_eq!(s, 304);
    held.abort();
}

/// The tasks of one agent are distinct callers, each under the per-caller bound: an agent with
/// enough tasks held every long-poll slot, and every other caller's watcher was refused
/// `429 rate_limited` (its revocations then arrived only after its back-off). One agent's tasks
/// together hold at most a share of the slots (a quarter, at least the per-caller bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agents_tasks_leave_long_poll_slots_for_the_others() {
    let dir = ca_dir();
    let addr = replica_with(
        dir.path(),
        ServiceOptions {
            max_waiters: 4,
            max_waiters_per_caller: 1,
            ..ServiceOptions::default()
        },
    )
    .await;
    let mut first = connect(dir.path(), addr, "worker").await.0;
    let current = latest(&mut first).await;
    let long = format!("/v1/revocations?after={}&wait=25", current.seq);
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut held = Vec::new();
    for _ in 0..4 {
        let (mut c, _) = connect(dir.path(), addr, "worker").await;
        let (tx, long) = (tx.clone(), long.clone());
        held.push(tokio::spawn(async move {
            let r = call(&mut c, "GET", &long, "").await;
            let _ = tx.send(r);
            c
        }));
    }
    // Four tasks of one agent, four slots: all but the agent's share are refused at once.
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), answers.recv()).await {
            Ok(Some((s, body))) => assert_eq!(s, 429, "{body}"),
            _ => panic!("the four tasks of one agent hold every long-poll slot"),
        }
    }
    let (mut other, _) = connect(dir.path(), addr, "planner").await;
    let (s, body) = call(
        &mut other,
        "GET",
        &format!("/v1/revocations?after={}&wait=1", current.seq),
        "",
    )
    .await;
    assert_eq!(s, 304, "{body}");
    for h in held {
        h.abort();
    }
}

/// After the operator replaces the CA's revocation key (its bundle then names only the new
/// one), the CA serves a list signed with the new key from its start, not the stored list of
/// the old key: verifiers holding the new bundle drop a list the old key signed
/// (spec/PROTOCOL.md 14.1) and can verify only the new key's (spec/CA-API.md 3.4).
#[test]
fn a_ca_whose_revocation_key_was_replaced_serves_a_list_of_the_new_key_from_its_start() {
    let dir = ca_dir();
    let ca = std::sync::Arc::new(CertificateAuthority::open(dir.path()).unwrap());
    let first = agentid_ca::publication::Publisher::new(ca)
        .unwrap()
        .latest()
        .unwrap();
    let path = dir.path().join("revocation.key");
    std::fs::remove_file(&path).unwrap();
    let key = agentid_protocol::AuthorityKey::generate(Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&path, key.pkcs8_der()).unwrap();
    let ca = std::sync::Arc::new(CertificateAuthority::open(dir.path()).unwrap());
    let mut bundles = agentid_protocol::BundleSet::new();
    bundles.insert(ca.trust_bundle().unwrap()).unwrap();
    let served = agentid_ca::publication::Publisher::new(ca)
        .unwrap()
        .latest()
        .unwrap();
    assert!(served.seq > first.seq, "{} after {}", served.seq, first.seq);
    let list = agentid_protocol::RevocationList::verify(&served.compact, &bundles).unwrap();
    assert_eq!(list.seq(), served.seq);
}

/// A copy of the CA directory `dir` as a backup holds it: its files, and its store taken with
/// SQLite's `VACUUM INTO` (docs/replicas.md, "Backing up a SQLite CA").
fn backup(dir: &std::path::Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        assert!(e.file_type().unwrap().is_file(), "{name}");
        if !name.starts_with("ca.db") {
            std::fs::copy(e.path(), copy.path().join(&name)).unwrap();
        }
    }
    let db = rusqlite::Connection::open(dir.join("ca.db")).unwrap();
    db.execute(
        "VACUUM INTO ?1",
        [copy.path().join("ca.db").to_str().unwrap()],
    )
    .unwrap();
    copy
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    u64::try_from(ms).unwrap()
}

/// A CA restored from a backup (its store's list counter back where the backup left it) while
/// agents hold lists it published after the backup: the restored CA's next list is above them,
/// so a revocation made after the restore (the incident response) reaches a watcher holding the
/// latest pre-restore list, at once. A client's `after` above anything published (a forged or
/// future list) is answered `304` and does not move the CA's `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_restored_from_a_backup_reaches_watchers_holding_later_lists() {
    let dir = ca_dir();
    // The tasks are opened before the backup: the restored store knows them.
    let (holder, task) = client(dir.path(), "planner");
    let (watcher, _) = client(dir.path(), "worker");
    let (hostile, _) = client(dir.path(), "worker");
    let operator = CertificateAuthority::open(dir.path()).unwrap();
    let before = operator
        .publish_revocations(std::time::SystemTime::now())
        .unwrap();
    let saved = backup(dir.path());
    // After the backup the CA goes on publishing; the watcher holds the latest list.
    let mut held = before.seq;
    for _ in 0..5 {
        let p = operator
            .publish_revocations(std::time::SystemTime::now())
            .unwrap();
        assert!(p.seq > held, "{} after {held}", p.seq);
        held = p.seq;
    }
    drop(operator);

    // The store is restored from the backup; the CA starts on it.
    let service = CaService::new(
        CertificateAuthority::open(saved.path()).unwrap(),
        ServiceOptions::default(),
    )
    .unwrap();
    let metrics = service.metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let restored = listener.local_addr().unwrap();
    tokio::spawn(async move { service.serve(listener).await });
    let ahead = || {
        let text = metrics.encode().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("agentid_ca_revocation_polls_ahead_total "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap()
    };
    assert_eq!(ahead(), 0);
    let mut watcher = watcher.connect(restored, "ca.example.org").await.unwrap();
    let mut holder = holder.connect(restored, "ca.example.org").await.unwrap();
    let mut hostile = hostile.connect(restored, "ca.example.org").await.unwrap();
    let path = format!("/v1/revocations?after={held}&wait=10");
    let poll = tokio::spawn(async move {
        let r = call(&mut watcher, "GET", &path, "").await;
        (r, watcher)
    });
    // A client claiming a list from the future: `304`, and nothing more.
    let (s, body) = call(
        &mut hostile,
        "GET",
        &format!("/v1/revocations?after={}", u64::MAX),
        "",
    )
    .await;
    assert_eq!(s, 304, "{body}");
    // A client holding a pre-restore list: `304` too, and counted for the operator (the
    // watcher's request, held, may be counted as well).
    let (s, body) = call(
        &mut hostile,
        "GET",
        &format!("/v1/revocations?after={held}"),
        "",
    )
    .await;
    assert_eq!(s, 304, "{body}");
    assert!(ahead() >= 1);

    // The incident response: a revocation on the restored CA.
    let (s, body) = call(&mut holder, "POST", "/v1/revoke", &revoke_body(&task)).await;
    assert_eq!(s, 200, "{body}");
    let ((s, body), _) = tokio::time::timeout(T, poll).await.unwrap().unwrap();
    assert_eq!(s, 200, "the watcher holding seq {held} got no list: {body}");
    let woken: RevocationsResponse = serde_json::from_str(&body).unwrap();
    assert!(woken.seq > held, "{} after {held}", woken.seq);
    assert!(entries(&woken.list).contains(&task));

    // The hostile `after` did not move the counter: the next list is the next one after the
    // one served, or the time's.
    let operator = CertificateAuthority::open(saved.path()).unwrap();
    let served = operator.latest_published().unwrap().unwrap();
    assert!(served.seq >= woken.seq);
    let next = operator
        .publish_revocations(std::time::SystemTime::now())
        .unwrap();
    let bound = (served.seq + 1).max(unix_ms(std::time::SystemTime::now()));
    assert!(
        next.seq > served.seq && next.seq <= bound,
        "{} after {}",
        next.seq,
        served.seq
    );
}

/// The store of a running replica goes back under it (a PostgreSQL point-in-time recovery, or
/// a failover to a standby that lagged: the replica reconnects, it is not restarted), while
/// the replica still serves a later list than any the store now holds. A revocation made then
/// is published at once, and the revoke call answers only once a list holding it is served:
/// the replica does not take the list it held, made at a later revocation epoch of the lost
/// history, for one that holds the new revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_after_the_store_went_back_under_a_running_replica_is_published() {
    let dir = ca_dir();
    let (holder, task) = client(dir.path(), "planner");
    let (watcher, _) = client(dir.path(), "worker");
    let a = replica(dir.path()).await;
    let mut watcher = watcher.connect(a, "ca.example.org").await.unwrap();
    let first = latest(&mut watcher).await;
    // The recovery point: the store's counters and lists as they are now.
    let db = rusqlite::Connection::open(dir.path().join("ca.db")).unwrap();
    let meta = |key: &str| -> i64 {
        db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .unwrap()
    };
    let (seq_at, epoch_at) = (meta("revocation_seq"), meta("revocation_epoch"));

    // After it: revocations by the operator, published by the replica; the watcher holds the
    // latest list.
    let operator = CertificateAuthority::open(dir.path()).unwrap();
    for agent in ["gone-1", "gone-2", "gone-3"] {
        operator
            .revoke(
                &RevokeTarget::Agent(agent.into()),
                None,
                "operator",
                common::now(),
            )
            .unwrap();
    }
    drop(operator);
    let path = format!("/v1/revocations?after={}&wait=10", first.seq);
    let mut held = first;
    while !entries(&held.list).contains("gone-3") {
        let (s, body) = call(&mut watcher, "GET", &path, "").await;
        assert_eq!(s, 200, "{body}");
        held = serde_json::from_str(&body).unwrap();
    }

    // The store goes back to the recovery point under the running replica.
    db.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         DELETE FROM revocations WHERE value LIKE '%gone-%';
         DELETE FROM published_lists WHERE seq > {seq_at};
         UPDATE meta SET value = {seq_at} WHERE key = 'revocation_seq';
         UPDATE meta SET value = {epoch_at} WHERE key = 'revocation_epoch';
         COMMIT;"
    ))
    .unwrap();
    drop(db);

    // The incident response: a revocation through the running replica.
    let path = format!("/v1/revocations?after={}&wait=10", held.seq);
    let poll = tokio::spawn(async move { call(&mut watcher, "GET", &path, "").await });
    let mut holder = holder.connect(a, "ca.example.org").await.unwrap();
    let (s, body) = call(&mut holder, "POST", "/v1/revoke", &revoke_body(&task)).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = tokio::time::timeout(T, poll).await.unwrap().unwrap();
    assert_eq!(
        s, 200,
        "the watcher holding seq {} got no list: {body}",
        held.seq
    );
    let woken: RevocationsResponse = serde_json::from_str(&body).unwrap();
    assert!(woken.seq > held.seq);
    assert!(entries(&woken.list).contains(&task));
}
