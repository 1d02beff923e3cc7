//! Several CA replicas on one PostgreSQL database (feature `postgres`), each a `CaService` of
//! its own (its own store connections, its own audit writer) on 127.0.0.1, sharing only the
//! CA directory's key material and the database of a `PgCluster` the test starts:
//!
//! * 2 and 3 replicas, 16 concurrent clients enrolling with bootstrap tokens over mTLS: every
//!   token redeemed on two replicas at once is accepted once, a key offered for two identities
//!   is bound once, no serial is recorded twice, every returned certificate is recorded and
//!   audited;
//! * revocations and publications racing on 3 replicas: every stored list has a higher `seq`
//!   than the one before and holds every entry the one before held;
//! * PostgreSQL stopped under load: `store_unavailable` (503 with `Retry-After`) while it is
//!   down, success after it is back, nothing lost.
//!
//! Sized by `AGENTID_LOAD`: `ci` (default) or `full` (10,000 issuances per replica count).
#![cfg(test)]
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_api::CertificateResponse;
use agentid_ca::audit::{AuditBreak, VerifyReport};
use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{CertificateAuthority, KeyType, RevokeTarget};
use agentid_protocol::{Jti, TaskId, TaskIdentity};
use agentid_test_support::pg::{with_client, PgCluster};
use agentid_transport::http::{HttpClient, HttpClientConnection};
use bytes::Bytes;
use http_body_util::BodyExt;

const T: Duration = Duration::from_secs(30);
const CLIENTS: usize = 16;

/// Issuances per run (each token is also offered a second time on another replica).
fn issuances() -> usize {
    match std::env::var("AGENTID_LOAD").as_deref() {
        Err(_) | Ok("ci") => 160,
        Ok("full") => 10_000,
        Ok(other) => panic!("AGENTID_LOAD must be `ci` or `full`, not {other:?}"),
    }
}

struct Db {
    pg: PgCluster,
    dir: tempfile::TempDir,
}

/// A PostgreSQL server and a CA directory whose store is a database on it; `None` (after a
/// SKIP line) when PostgreSQL is not installed outside CI.
async fn db() -> Option<Db> {
    tokio::task::spawn_blocking(|| {
        let pg = PgCluster::start()?;
        let dir = common::make_pg_ca_dir(KeyType::P256, &pg, "agentid");
        let mut policy = common::POLICY.to_owned();
        policy.push_str("\n[services.agentid-ca]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n");
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        Some(Db { pg, dir })
    })
    .await
    .unwrap()
}

/// Starts replica `i` on the CA directory (its own store and audit writer `replica-i`).
async fn replica(dir: &std::path::Path, i: usize) -> SocketAddr {
    let dir = dir.to_path_buf();
    let ca = tokio::task::spawn_blocking(move || {
        CertificateAuthority::open_as(&dir, &format!("replica-{i}")).unwrap()
    })
    .await
    .unwrap();
    let (service, listener) = replica_service(ca).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { service.serve(listener).await });
    addr
}

/// A replica's service on `ca` and its listener on 127.0.0.1 (not yet serving).
async fn replica_service(ca: CertificateAuthority) -> (CaService, tokio::net::TcpListener) {
    let service = CaService::new(ca, ServiceOptions::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (service, listener)
}

/// The operator's handle on the CA (its own writer), for tokens and the final checks.
async fn operator(dir: &std::path::Path) -> Arc<CertificateAuthority> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Arc::new(CertificateAuthority::open_as(&dir, "operator").unwrap())
    })
    .await
    .unwrap()
}

/// [`client`], made off the async workers.
async fn new_client(op: &Arc<CertificateAuthority>) -> HttpClient {
    let op = op.clone();
    tokio::task::spawn_blocking(move || client(&op))
        .await
        .unwrap()
}

/// A client holding a new `worker` task, made by the operator.
fn client(ca: &CertificateAuthority) -> HttpClient {
    common::task_client(ca, "worker", T).0
}

/// One request: status, `Retry-After`, body. `None` when the connection failed.
async fn call(
    c: &mut HttpClientConnection,
    path: &str,
    body: String,
) -> Option<(u16, Option<String>, String)> {
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Bytes::from(body))
        .unwrap();
    let resp = tokio::time::timeout(T, c.send(req))
        .await
        .expect("request timed out")
        .ok()?;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let b = tokio::time::timeout(T, resp.into_body().collect())
        .await
        .expect("body timed out")
        .ok()?
        .to_bytes();
    Some((status, retry, String::from_utf8(b.to_vec()).unwrap()))
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn b64(b: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
}

/// `n` bound tokens for `planner` tasks `prefix-0..n`, made by the operator.
async fn tokens(op: &Arc<CertificateAuthority>, prefix: &str, n: usize) -> Vec<String> {
    let op = op.clone();
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || {
        let binding = agentid_ca::TokenBinding {
            scope: "tickets:read".into(),
            max_depth: Some(1),
            ..Default::default()
        };
        (0..n)
            .map(|i| {
                op.create_bound_token(
                    "planner",
                    Some(TaskId::parse(&format!("{prefix}-{i}")).unwrap()),
                    &binding,
                    Duration::from_secs(3600),
                    common::now(),
                )
                .unwrap()
                .token
            })
            .collect()
    })
    .await
    .unwrap()
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Serials of every certificate returned, with the token index.
    issued: Vec<(usize, String)>,
    /// Codes of the refusals.
    refusals: HashMap<String, usize>,
}

/// The serials of the `planner` certificates the store holds, and the audit chains' verdict.
async fn planner_serials(
    op: &Arc<CertificateAuthority>,
    dir: &std::path::Path,
) -> (Vec<String>, Result<VerifyReport, AuditBreak>) {
    let (op, dir) = (op.clone(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let stored = op
            .issuances()
            .unwrap()
            .into_iter()
            .filter(|r| r.agent.as_deref() == Some("planner"))
            .map(|r| r.serial)
            .collect();
        (stored, agentid_ca::audit::verify_dir(&dir).unwrap())
    })
    .await
    .unwrap()
}

/// Issues through `replicas` replicas with 16 clients and checks the store.
async fn replicas_issue_once(replicas: usize) {
    let Some(db) = db().await else { return };
    let mut addrs = Vec::new();
    for i in 0..replicas {
        addrs.push(replica(db.dir.path(), i).await);
    }
    let op = operator(db.dir.path()).await;
    let n = issuances();
    let toks = Arc::new(tokens(&op, &format!("r{replicas}"), n).await);
    // Every 8th token reuses the previous token's key: one of the two identities gets it.
    let keys: Arc<Vec<String>> = Arc::new({
        let mut v = Vec::with_capacity(n);
        let mut last = String::new();
        for i in 0..n {
            if i % 8 != 7 {
                last = b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}));
            }
            v.push(last.clone());
        }
        v
    });
    // Each client's two connections, made one after the other before the clock starts.
    let mut conns = Vec::new();
    for j in 0..CLIENTS {
        let http = new_client(&op).await;
        let (a, b) = (addrs[j % replicas], addrs[(j + 1) % replicas]);
        let ca = http.connect(a, "ca.example.org").await.unwrap();
        let cb = http.connect(b, "ca.example.org").await.unwrap();
        conns.push((http, ca, cb));
    }
    // Wall clock of the issuance phase, printed (never asserted; the machine is shared).
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for (j, (http, mut ca, mut cb)) in conns.into_iter().enumerate() {
        let (toks, keys) = (toks.clone(), keys.clone());
        handles.push(tokio::spawn(async move {
            let _client = http;
            let mut seen = Seen::default();
            for i in (j..toks.len()).step_by(CLIENTS) {
                let body = format!(r#"{{"token":"{}","csr":"{}"}}"#, toks[i], keys[i]);
                // Every 4th token is offered on two replicas at once.
                let (r1, r2) = if i % 4 == 0 {
                    let (x, y) = tokio::join!(
                        call(&mut ca, "/v1/enroll", body.clone()),
                        call(&mut cb, "/v1/enroll", body)
                    );
                    (x, y)
                } else {
                    (call(&mut ca, "/v1/enroll", body).await, None)
                };
                for (s, _, b) in [r1, r2].into_iter().flatten() {
                    if s == 200 {
                        let r: CertificateResponse = serde_json::from_str(&b).unwrap();
                        seen.issued.push((i, r.serial));
                    } else {
                        *seen.refusals.entry(code_of(&b)).or_default() += 1;
                    }
                }
            }
            seen
        }));
    }
    let mut issued = Vec::new();
    let mut refusals: HashMap<String, usize> = HashMap::new();
    for h in handles {
        let s = tokio::time::timeout(Duration::from_secs(1800), h)
            .await
            .unwrap()
            .unwrap();
        issued.extend(s.issued);
        for (k, v) in s.refusals {
            *refusals.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    // 0 reused tokens: at most one certificate per token.
    let mut per_token: HashMap<usize, usize> = HashMap::new();
    for (i, _) in &issued {
        *per_token.entry(*i).or_default() += 1;
    }
    let reused = per_token.values().filter(|&&c| c > 1).count();
    // 0 double bindings: a reused key (tokens i - 1 and i, i % 8 == 7, run by two clients at
    // once) got exactly one of its two identities.
    let pairs: Vec<usize> = (0..n).filter(|i| i % 8 == 7).collect();
    let double_bound = pairs
        .iter()
        .filter(|&&i| per_token.contains_key(&i) && per_token.contains_key(&(i - 1)))
        .count();
    let unbound = pairs
        .iter()
        .filter(|&&i| !per_token.contains_key(&i) && !per_token.contains_key(&(i - 1)))
        .count();
    // 0 duplicate serials, and exactly the returned ones are recorded (beside the clients'
    // own task certificates).
    let serials: HashSet<&String> = issued.iter().map(|(_, s)| s).collect();
    let dup = issued.len() - serials.len();
    let (stored, report) = planner_serials(&op, db.dir.path()).await;
    let stored_set: HashSet<&String> = stored.iter().collect();
    println!(
        "replicas={replicas} clients={CLIENTS} issued={} stored={} refusals={refusals:?} \
         duplicate_serials={dup} reused_tokens={reused} double_bindings={double_bound} \
         elapsed={elapsed:?} ({:.0} requests/s, debug build, shared machine)",
        issued.len(),
        stored.len(),
        (issued.len() + refusals.values().sum::<usize>()) as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(dup, 0, "duplicate serials");
    assert_eq!(reused, 0, "a token was accepted twice");
    assert_eq!(double_bound, 0, "a key was bound to two identities");
    assert_eq!(stored.len(), stored_set.len(), "a serial recorded twice");
    assert_eq!(
        stored_set, serials,
        "returned and recorded certificates differ"
    );
    assert_eq!(
        unbound, 0,
        "a key offered twice was bound to neither identity"
    );
    assert_eq!(
        issued.len(),
        n - pairs.len(),
        "a token that should have issued did not"
    );
    let report = report.expect("the audit chains verify");
    assert!(report.chains.len() >= replicas, "{report:?}");
    // The refusals are the two races and nothing else: a token's second offer is told
    // `token_used` (whichever step it lost on); a key's second identity loses on the binding
    // (`key_mismatch`).
    for code in refusals.keys() {
        assert!(
            code == "token_used" || code == "key_mismatch",
            "unexpected refusal {code}: {refusals:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_issue_each_token_key_and_serial_once() {
    replicas_issue_once(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_issue_each_token_key_and_serial_once() {
    replicas_issue_once(3).await;
}

/// Revocations and publications race on three replicas: the published lists, in `seq` order,
/// only grow, and the store keeps the latest `PUBLISHED_LISTS_KEPT` of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publications_on_three_replicas_only_grow() {
    let Some(db) = db().await else { return };
    // Each publication signs every entry so far: 20 rounds per replica (ci), 200 (full).
    let rounds = issuances().min(1_600) / 8;
    let mut threads = Vec::new();
    for r in 0..3 {
        let dir = db.dir.path().to_path_buf();
        threads.push(std::thread::spawn(move || {
            let ca = CertificateAuthority::open_as(&dir, &format!("replica-{r}")).unwrap();
            let iss = TaskIdentity::parse("spiffe://example.org/agent/planner/task/t1").unwrap();
            let mut published = Vec::new();
            for k in 0..rounds {
                let jti = Jti::parse(&format!("link-{r}-{k}")).unwrap();
                ca.revoke(
                    &RevokeTarget::LinkJti {
                        iss: iss.clone(),
                        jti,
                    },
                    Some("race"),
                    "operator",
                    common::now(),
                )
                .unwrap();
                let p = ca.publish_revocations(common::now()).unwrap();
                published.push((p.seq, p.compact));
            }
            published
        }));
    }
    // Every list the publications returned (older rows are pruned from the store).
    let mut lists = Vec::new();
    for t in threads {
        lists.extend(
            tokio::task::spawn_blocking(move || t.join().unwrap())
                .await
                .unwrap(),
        );
    }
    lists.sort();
    assert_eq!(lists.len(), 3 * rounds, "one list per publication");
    let mut prev: Option<(u64, BTreeSet<String>)> = None;
    for (seq, compact) in &lists {
        let p = compact.split('.').nth(1).unwrap();
        let b =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v["seq"].as_u64(),
            Some(*seq),
            "returned seq and signed seq differ"
        );
        let entries: BTreeSet<String> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect();
        if let Some((ps, pe)) = &prev {
            assert!(seq > ps, "seq {seq} published twice");
            assert!(
                entries.is_superset(pe),
                "list {seq} lacks an entry of list {ps}"
            );
        }
        prev = Some((*seq, entries));
    }
    let last = prev.unwrap().1;
    assert_eq!(
        last.len(),
        3 * rounds,
        "the last list holds every revocation"
    );
    // The store holds the latest lists only, exactly as published.
    let url = db.pg.url("agentid");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT seq, compact FROM published_lists ORDER BY seq", &[])
        .await
        .unwrap();
    let stored: Vec<(u64, String)> = rows
        .iter()
        .map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap(), r.get(1)))
        .collect();
    let kept = usize::try_from(agentid_ca::store::PUBLISHED_LISTS_KEPT).unwrap();
    assert_eq!(stored.as_slice(), &lists[lists.len() - kept..]);
    println!(
        "publications={} entries_in_last={}",
        lists.len(),
        last.len()
    );
}

/// PostgreSQL stopped under load: `store_unavailable` with `Retry-After` while it is down,
/// success once it is back, and every returned certificate recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_store_unavailable_and_loses_nothing() {
    let Some(db) = db().await else { return };
    let a = replica(db.dir.path(), 0).await;
    let b = replica(db.dir.path(), 1).await;
    let op = operator(db.dir.path()).await;
    let per_phase = 16;
    let toks = tokens(&op, "outage", per_phase * 3).await;
    let http = new_client(&op).await;
    let mut ca = http.connect(a, "ca.example.org").await.unwrap();
    let mut cb = http.connect(b, "ca.example.org").await.unwrap();
    let mut issued = Vec::new();
    let enroll = |t: &str| {
        format!(
            r#"{{"token":"{t}","csr":"{}"}}"#,
            b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}))
        )
    };
    // Before.
    for (k, t) in toks[..per_phase].iter().enumerate() {
        let c = if k % 2 == 0 { &mut ca } else { &mut cb };
        let (s, _, body) = call(c, "/v1/enroll", enroll(t)).await.unwrap();
        assert_eq!(s, 200, "{body}");
        issued.push(
            serde_json::from_str::<CertificateResponse>(&body)
                .unwrap()
                .serial,
        );
    }
    // Down.
    let mut pg = db.pg;
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let mut unavailable = 0;
    for (k, t) in toks[per_phase..2 * per_phase].iter().enumerate() {
        let c = if k % 2 == 0 { &mut ca } else { &mut cb };
        let (s, retry, body) = call(c, "/v1/enroll", enroll(t)).await.unwrap();
        assert_eq!(
            (s, code_of(&body).as_str()),
            (503, "store_unavailable"),
            "{body}"
        );
        assert!(retry.is_some(), "503 without Retry-After");
        unavailable += 1;
    }
    // Back: the tokens refused while it was down are still good, and new ones too.
    pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    for (k, t) in toks[per_phase..].iter().enumerate() {
        let c = if k % 2 == 0 { &mut ca } else { &mut cb };
        let (s, _, body) = call(c, "/v1/enroll", enroll(t)).await.unwrap();
        assert_eq!(s, 200, "after the restart: {body}");
        issued.push(
            serde_json::from_str::<CertificateResponse>(&body)
                .unwrap()
                .serial,
        );
    }
    let (stored, report) = planner_serials(&op, db.dir.path()).await;
    let stored: HashSet<String> = stored.into_iter().collect();
    let issued_set: HashSet<String> = issued.iter().cloned().collect();
    println!(
        "before={per_phase} unavailable={unavailable} after={} stored={}",
        2 * per_phase,
        stored.len()
    );
    assert_eq!(
        stored, issued_set,
        "returned and recorded certificates differ"
    );
    assert_eq!(issued.len(), 3 * per_phase);
    report.expect("the audit chains verify");
    drop(pg);
}

const REPLICA_CHILD_ENV: &str = "AGENTID_PG_REPLICA_CHILD";

/// Child mode: one replica (`agentid ca serve`'s service) in its own process, printing its
/// address, serving until killed (at most five minutes). Does nothing unless started by
/// `a_killed_replica_leaves_the_others_serving_and_loses_nothing`.
#[test]
fn replica_child_serve() {
    let Some(spec) = std::env::var_os(REPLICA_CHILD_ENV) else {
        return;
    };
    let spec = spec.into_string().unwrap();
    let (writer, dir) = spec.split_once(':').unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = CertificateAuthority::open_as(std::path::Path::new(dir), writer).unwrap();
        let (service, listener) = replica_service(ca).await;
        println!("LISTENING {}", listener.local_addr().unwrap());
        let _ = tokio::time::timeout(Duration::from_secs(300), service.serve(listener)).await;
    });
}

/// Starts a replica process; its address.
fn replica_process(dir: &std::path::Path, writer: &str) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "replica_child_serve",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(REPLICA_CHILD_ENV, format!("{writer}:{}", dir.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break None;
        }
        // libtest may print `test replica_child_serve ... ` on the same line first.
        if let Some(a) = line.split("LISTENING ").nth(1).map(str::trim) {
            break Some(a.parse().unwrap());
        }
    };
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the replica exited before listening");
    };
    // The rest of its output is not read: keep the pipe open until the process is killed.
    std::mem::forget(out);
    (child, addr)
}

/// kill -9 of one replica process under load: the other keeps serving; every certificate
/// returned to a client is in the database and the audit chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_leaves_the_others_serving_and_loses_nothing() {
    let Some(db) = db().await else { return };
    let dir = db.dir.path().to_path_buf();
    let (mut victim, a, mut survivor, b) = tokio::task::spawn_blocking(move || {
        let (va, a) = replica_process(&dir, "replica-a");
        let (vb, b) = replica_process(&dir, "replica-b");
        (va, a, vb, b)
    })
    .await
    .unwrap();
    let op = operator(db.dir.path()).await;
    let n = issuances();
    let toks = Arc::new(tokens(&op, "kill", n).await);
    let done_before_kill = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for j in 0..CLIENTS {
        let http = new_client(&op).await;
        let toks = toks.clone();
        let done = done_before_kill.clone();
        handles.push(tokio::spawn(async move {
            // Even clients start on the victim, odd ones on the survivor.
            let mut on_victim = j % 2 == 0;
            let mut c = http
                .connect(if on_victim { a } else { b }, "ca.example.org")
                .await
                .unwrap();
            let mut issued = Vec::new();
            let mut after_kill = 0usize;
            for i in (j..toks.len()).step_by(CLIENTS) {
                let body = format!(
                    r#"{{"token":"{}","csr":"{}"}}"#,
                    toks[i],
                    b64(&common::csr_with(&common::p256_keypair(), &[], |_| {}))
                );
                let r = call(&mut c, "/v1/enroll", body.clone()).await;
                let (s, _, b_) = match r {
                    Some(r) => r,
                    None => {
                        // The replica died under us: go to the other one and offer the same
                        // token again (it may or may not have been consumed).
                        assert!(on_victim, "the survivor failed a request");
                        on_victim = false;
                        c = http.connect(b, "ca.example.org").await.unwrap();
                        match call(&mut c, "/v1/enroll", body).await {
                            Some(r) => r,
                            None => panic!("the survivor failed a request"),
                        }
                    }
                };
                if s == 200 {
                    let r: CertificateResponse = serde_json::from_str(&b_).unwrap();
                    issued.push(r.serial);
                    if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= n {
                        after_kill += 1;
                    }
                } else {
                    // Only a token the victim consumed before dying may be refused.
                    assert_eq!(code_of(&b_), "token_used", "{b_}");
                }
            }
            (issued, after_kill)
        }));
    }
    // Kill the victim once a third of the work is done.
    let done = done_before_kill.clone();
    let killer = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while done.load(std::sync::atomic::Ordering::SeqCst) < n / 3 {
            assert!(tokio::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        victim.kill().unwrap(); // SIGKILL
        let before = done.swap(n + 1_000_000, std::sync::atomic::Ordering::SeqCst);
        victim.wait().unwrap();
        before
    });
    let mut issued = Vec::new();
    let mut after_kill = 0;
    for h in handles {
        let (i, k) = tokio::time::timeout(Duration::from_secs(1800), h)
            .await
            .unwrap()
            .unwrap();
        issued.extend(i);
        after_kill += k;
    }
    let before_kill = killer.await.unwrap();
    let _ = survivor.kill();
    let _ = survivor.wait();
    let (stored, report) = planner_serials(&op, db.dir.path()).await;
    let stored: HashSet<String> = stored.into_iter().collect();
    let returned: HashSet<&String> = issued.iter().collect();
    let missing = returned.iter().filter(|s| !stored.contains(**s)).count();
    println!(
        "tokens={n} returned={} before_kill={before_kill} after_kill={after_kill} stored={} missing={missing}",
        issued.len(),
        stored.len()
    );
    assert_eq!(returned.len(), issued.len(), "a serial returned twice");
    assert_eq!(missing, 0, "a returned certificate is not recorded");
    assert!(after_kill > 0, "the survivor served nothing after the kill");
    // The store may hold a certificate the victim recorded but never delivered; never fewer.
    assert!(stored.len() >= issued.len());
    report.expect("the audit chains verify");
}

/// Ends (`pg_terminate_backend`) every connection to `db` that is idle inside a transaction,
/// as a database failover or a dropped link would, and waits until its client has seen it.
/// Returns how many were ended.
fn cut_idle_transactions(url: &str) -> i64 {
    let n = with_client(url, |client| async move {
        let row = tokio::time::timeout(
            T,
            client.query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND state = 'idle in transaction'",
                &[],
            ),
        )
        .await
        .unwrap()
        .unwrap();
        row.get::<_, i64>(0)
    });
    // The store's connection task sees the end of its socket.
    std::thread::sleep(Duration::from_millis(500));
    n
}

/// A PostgreSQL server with an `agentid` database and a store on it (writer `replica-0`).
fn pg_store() -> Option<(PgCluster, agentid_ca::store::PgStore)> {
    let pg = PgCluster::start()?;
    pg.create_database("agentid");
    let store = agentid_ca::store::PgStore::open_url(&pg.url("agentid"), "replica-0").unwrap();
    Some((pg, store))
}

fn stored_seqs(url: &str) -> (i64, Vec<i64>) {
    with_client(url, |client| async move {
        let counter: i64 = client
            .query_one("SELECT value FROM meta WHERE key = 'revocation_seq'", &[])
            .await
            .unwrap()
            .get(0);
        let seqs = client
            .query("SELECT seq FROM published_lists ORDER BY seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect();
        (counter, seqs)
    })
}

/// Holds `LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE` on `url` until `release` is sent or
/// dropped; `locked` says when it holds it.
fn lock_table(
    url: &str,
    table: &'static str,
    locked: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) =
                tokio::time::timeout(T, tokio_postgres::connect(&url, tokio_postgres::NoTls))
                    .await
                    .unwrap()
                    .unwrap();
            tokio::spawn(conn);
            tokio::time::timeout(
                T,
                client.batch_execute(&format!(
                    "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
                )),
            )
            .await
            .unwrap()
            .unwrap();
            locked.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || release.recv_timeout(T)).await;
            tokio::time::timeout(T, client.batch_execute("COMMIT"))
                .await
                .unwrap()
                .unwrap();
        });
    })
}

/// How many connections to `url`'s database wait for a lock.
fn waiting_for_a_lock(url: &str) -> i64 {
    with_client(url, |client| async move {
        tokio::time::timeout(
            T,
            client.query_one(
                "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            ),
        )
        .await
        .unwrap()
        .unwrap()
        .get::<_, i64>(0)
    })
}

/// A failover (or a dropped link) can leave every connection a replica holds to the database
/// dead without a FIN or RST: nothing comes back on them, while a new connection reaches the
/// database. Once an operation on such a connection has timed out (`store_unavailable`), the
/// next operation (after `Retry-After`) connects again, instead of taking the next dead
/// connection of the pool and timing out again (up to 8 in a row, 20 s each, the CA's other
/// requests queued behind them).
#[test]
fn after_an_operation_times_out_on_a_dead_connection_the_next_one_connects_again() {
    use agentid_ca::store::PgStore;
    use agentid_ca::Store;
    const HELD: usize = 3;
    let Some(pg) = PgCluster::start() else {
        return;
    };
    pg.create_database("agentid");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let link = rt.block_on(Link::new(SocketAddr::from(([127, 0, 0, 1], pg.port()))));
    let url = format!("postgres://postgres@127.0.0.1:{}/agentid", link.addr.port());
    let store = PgStore::open_url(&url, "replica-0").unwrap();
    // The store holds HELD connections: as many operations at once, held by a lock until all
    // of them wait.
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let holder = lock_table(&pg.url("agentid"), "meta", locked_tx, release_rx);
    locked.recv_timeout(T).unwrap();
    std::thread::scope(|s| {
        let ops: Vec<_> = (0..HELD)
            .map(|_| s.spawn(|| store.revocation_epoch()))
            .collect();
        let mut waiting = 0;
        for _ in 0..300 {
            waiting = waiting_for_a_lock(&pg.url("agentid"));
            if waiting >= HELD as i64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(waiting, HELD as i64, "operations waiting at once");
        release.send(()).unwrap();
        for op in ops {
            op.join().unwrap().unwrap();
        }
    });
    holder.join().unwrap();

    link.freeze();
    let first = store.revocation_epoch().map_err(|e| e.to_string());
    println!("on a dead connection: {first:?}");
    assert!(first.is_err(), "an answer on a dead connection: {first:?}");
    // Asked again after `Retry-After` (1 s), as a client would.
    std::thread::sleep(Duration::from_millis(1500));
    let next = store.revocation_epoch();
    assert!(
        next.is_ok(),
        "the next operation took another dead connection: {next:?}"
    );
    drop(store);
    drop(link);
    drop(rt);
    drop(pg);
}

/// A database that accepts connections and answers nothing (a frozen server or VM): the CA runs
/// its store's operations one at a time, so requests queued behind one that waits out the
/// store's bound must not each wait out a bound of their own (the k-th answered after k times
/// 20 s), but be answered `store_unavailable` (503 with `Retry-After`) at once.
#[test]
fn requests_queued_behind_an_unanswered_database_do_not_each_wait_out_a_bound() {
    const QUEUED: usize = 4;
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let dir = common::make_pg_ca_dir(KeyType::P256, &pg, "agentid");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let link = rt.block_on(Link::new(SocketAddr::from(([127, 0, 0, 1], pg.port()))));
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let direct = format!("127.0.0.1:{}", pg.port());
    assert!(text.contains(&direct), "{text}");
    std::fs::write(
        &config,
        text.replace(&direct, &format!("127.0.0.1:{}", link.addr.port())),
    )
    .unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    ca.revocation_epoch().unwrap();

    link.blackhole();
    let start = std::time::Instant::now();
    let answers: Vec<(String, Duration)> = std::thread::scope(|s| {
        let ops: Vec<_> = (0..QUEUED)
            .map(|_| {
                s.spawn(|| {
                    let e = ca.revocation_epoch().unwrap_err();
                    assert_eq!(
                        agentid_ca::server::error_code(&e).as_str(),
                        "store_unavailable"
                    );
                    (e.to_string(), start.elapsed())
                })
            })
            .collect();
        ops.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (e, at) in &answers {
        println!("{e} after {at:?}");
    }
    let waited = answers
        .iter()
        .filter(|(e, _)| e.contains("did not answer in time") || e.contains("could not connect"))
        .count();
    assert_eq!(
        waited, 1,
        "requests queued behind the first each waited out a bound: {answers:?}"
    );
    drop(ca);
    drop(link);
    drop(rt);
    drop(pg);
}

/// `agentid audit verify` and `audit export` read the whole audit trail in one snapshot. The
/// trail grows for the CA's whole life (a million records take about 8 s to read), and that read
/// was bounded like a request's (10 s a statement, 20 s the operation): a trail of about 2.5
/// million records was cut off at every attempt (`57014 canceling statement due to statement
/// timeout`) and could never be verified or exported again. Here the read is kept waiting for
/// longer than a statement's bound (behind a lock, as a large trail keeps it reading), and
/// must still complete.
#[test]
fn reading_the_audit_trail_is_not_cut_off_at_a_requests_bounds() {
    use agentid_ca::Store;
    let Some((pg, store)) = pg_store() else {
        return;
    };
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let holder = lock_table(&pg.url("agentid"), "audit_records", locked_tx, release_rx);
    locked.recv_timeout(T).unwrap();
    let reader = std::thread::spawn(move || {
        let read = store
            .audit_snapshot(None)
            .map(|s| s.records.len())
            .map_err(|e| e.to_string());
        (read, store)
    });
    // Longer than a statement's bound (10 s).
    std::thread::sleep(Duration::from_secs(12));
    release.send(()).unwrap();
    holder.join().unwrap();
    let (read, store) = reader.join().unwrap();
    assert_eq!(read, Ok(0), "the audit trail could not be read whole");
    drop(store);
    drop(pg);
}

/// One `seq` per publication (spec/CA-API.md 3.4): the counter and the list commit together.
/// A publication whose connection is lost while it signs (a failover, a dropped link) stores
/// nothing: its second half must not run on a new connection outside the transaction (storing
/// a list under a `seq` the counter never kept), and the next publication succeeds.
#[test]
fn a_publication_cut_off_while_signing_stores_nothing_and_publishing_goes_on() {
    use agentid_ca::store::Publication;
    use agentid_ca::{AuditEvent, Store};
    let Some((pg, mut store)) = pg_store() else {
        return;
    };
    let url = pg.url("agentid");
    let now = common::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut cut = true;
    let mut make = |seq: u64, _: &[agentid_ca::store::ListRow]| {
        if std::mem::take(&mut cut) {
            assert_eq!(
                cut_idle_transactions(&url),
                1,
                "the publication's connection"
            );
        }
        Ok(Publication {
            compact: format!("list-{seq}"),
            published_at: now,
            next_update: now + 600,
            audit: AuditEvent {
                ts: now,
                kind: "revocations.publish".into(),
                actor: "ca".into(),
                outcome: "ok".into(),
                reason: Some(format!("seq {seq}")),
                ..AuditEvent::default()
            },
        })
    };
    let first = store.publish_revocations(now, 0, &mut make);
    let (counter, seqs) = stored_seqs(&url);
    let next = store.publish_revocations(now, 0, &mut make);
    assert!(
        next.is_ok(),
        "the next publication failed: {next:?} (counter {counter}, lists {seqs:?})"
    );
    assert!(
        seqs.iter().all(|s| *s <= counter),
        "a list was stored under a seq the counter never kept: counter {counter}, lists {seqs:?} \
         (the cut-off publication returned {first:?})"
    );
    assert!(
        first.is_err(),
        "a publication whose transaction was lost reported success: {first:?}"
    );
    drop(store);
    drop(pg);
}

/// A principal revocation is acknowledged only once it is committed: one whose connection is
/// lost while its audit record is made is an error, never an `Ok` with nothing recorded (and
/// an audit record of a revocation that does not exist).
#[test]
fn a_principal_revocation_cut_off_mid_transaction_is_not_acknowledged() {
    use agentid_ca::{AuditEvent, RevocationKind, RevocationRecord, Store};
    let Some((pg, mut store)) = pg_store() else {
        return;
    };
    let url = pg.url("agentid");
    let now = common::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let p = RevocationRecord {
        kind: RevocationKind::Principal,
        value: r#"{"sub":"alice"}"#.into(),
        exp: now + 3600,
        revoked_at: now,
        reason: None,
        requester: "operator".into(),
    };
    let mut cut = true;
    let res = store.revoke_principal(&p, 60, &mut |_| {
        if std::mem::take(&mut cut) {
            assert_eq!(
                cut_idle_transactions(&url),
                1,
                "the revocation's connection"
            );
        }
        vec![AuditEvent {
            ts: now,
            kind: "revoke".into(),
            actor: "operator".into(),
            subject: Some(format!("principal:{}", p.value)),
            outcome: "ok".into(),
            ..AuditEvent::default()
        }]
    });
    let recorded = store
        .revocations()
        .unwrap()
        .iter()
        .any(|r| r.kind == RevocationKind::Principal && r.value == p.value);
    assert!(
        res.is_err() || recorded,
        "the principal revocation returned {res:?} but nothing was recorded"
    );
    drop(store);
    drop(pg);
}

/// A publication holds the `seq` counter's row lock from taking its `seq` until it commits,
/// signing in between. A replica that stalls there (a frozen VM, SIGSTOP, a signer that hangs)
/// must not stop publication on the others (spec/CA-API.md 3.4: a revocation is published
/// within about a second): the database ends the stalled transaction well before a waiting
/// publication's statement gives up, and the stalled one commits nothing.
#[test]
fn a_stalled_publisher_does_not_stop_publication_on_the_other_replicas() {
    use agentid_ca::store::{ListRow, PgStore, Publication};
    use agentid_ca::{AuditEvent, Store};
    const STALL: Duration = Duration::from_secs(8);
    let Some((pg, mut a)) = pg_store() else {
        return;
    };
    let url = pg.url("agentid");
    let mut b = PgStore::open_url(&url, "replica-1").unwrap();
    let now = common::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let publication = move |seq: u64| Publication {
        compact: format!("list-{seq}"),
        published_at: now,
        next_update: now + 600,
        audit: AuditEvent {
            ts: now,
            kind: "revocations.publish".into(),
            actor: "ca".into(),
            outcome: "ok".into(),
            reason: Some(format!("seq {seq}")),
            ..AuditEvent::default()
        },
    };
    let (signing_tx, signing) = std::sync::mpsc::channel();
    let stalled = std::thread::spawn(move || {
        let mut first = true;
        let res = a.publish_revocations(now, 0, &mut |seq: u64, _: &[ListRow]| {
            if std::mem::take(&mut first) {
                signing_tx.send(()).unwrap();
                std::thread::sleep(STALL);
            }
            Ok(publication(seq))
        });
        (res, a)
    });
    signing.recv_timeout(T).unwrap();
    let start = std::time::Instant::now();
    let other = b.publish_revocations(now, 0, &mut |seq: u64, _: &[ListRow]| Ok(publication(seq)));
    let took = start.elapsed();
    let (stalled_res, a) = stalled.join().unwrap();
    println!("other replica: {other:?} after {took:?}; stalled one: {stalled_res:?}");
    assert!(
        other.is_ok(),
        "the other replica could not publish: {other:?}"
    );
    assert!(
        took < STALL - Duration::from_secs(1),
        "the other replica published only after {took:?}, once the stalled one resumed"
    );
    // Whatever the stalled one returned, one seq per list, counter and lists agreeing.
    let (counter, seqs) = stored_seqs(&url);
    assert!(seqs.iter().all(|s| *s <= counter), "{counter} {seqs:?}");
    if let Ok(p) = &stalled_res {
        assert_ne!(Some(p.seq), other.as_ref().ok().map(|o| o.seq));
    }
    drop((a, b));
    drop(pg);
}

/// A TCP forwarder on 127.0.0.1 to `to`; `cut` closes every forwarded connection and stops
/// accepting (a replica cut off from the database while the others still reach it); `freeze`
/// stops forwarding on the connections open now without closing them, while new ones are
/// forwarded (a failover that leaves the old connections dead without a FIN or RST);
/// `blackhole` also accepts new ones and forwards nothing on them (a frozen server or VM).
struct Link {
    addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    generation: tokio::sync::watch::Sender<u64>,
    hold_new: Arc<std::sync::atomic::AtomicBool>,
}

impl Link {
    async fn new(to: SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let t2 = tasks.clone();
        let generation = tokio::sync::watch::Sender::new(0u64);
        let g2 = generation.clone();
        let hold_new = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h2 = hold_new.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if h2.load(std::sync::atomic::Ordering::SeqCst) {
                    let h = tokio::spawn(async move {
                        let _open = inbound;
                        std::future::pending::<()>().await;
                    });
                    t2.lock().unwrap().push(h);
                    continue;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let mut frozen = g2.subscribe();
                let born = *frozen.borrow_and_update();
                let h = tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async { frozen.wait_for(|g| *g > born).await.map(|_| ()) } => {
                            // Both sockets stay open, and nothing passes any more.
                            std::future::pending::<()>().await;
                        }
                    }
                });
                t2.lock().unwrap().push(h);
            }
        });
        tasks.lock().unwrap().push(accept);
        Link {
            addr,
            tasks,
            generation,
            hold_new,
        }
    }

    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn freeze(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn blackhole(&self) {
        self.hold_new
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.freeze();
    }
}

/// `GET path`: status and body.
async fn get(c: &mut HttpClientConnection, path: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method("GET")
        .uri(path)
        .body(Bytes::new())
        .unwrap();
    let resp = tokio::time::timeout(T, c.send(req))
        .await
        .expect("request timed out")
        .unwrap();
    let status = resp.status().as_u16();
    let b = tokio::time::timeout(T, resp.into_body().collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(b.to_vec()).unwrap())
}

fn seq_of(body: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// Replicas A and B on one database, B reaching it through a [`Link`] (its own copy of the CA
/// directory), a client connected to each, and the operator.
async fn partitioned() -> Option<(
    Db,
    Link,
    tempfile::TempDir,
    HttpClientConnection,
    HttpClientConnection,
    Arc<CertificateAuthority>,
)> {
    let db = db().await?;
    // Replica B reaches the database through a link the test cuts.
    let link = Link::new(SocketAddr::from(([127, 0, 0, 1], db.pg.port()))).await;
    let dir_b = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", db.dir.path().display()))
        .arg(dir_b.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "copy of the CA directory");
    let config = dir_b.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let direct = format!("127.0.0.1:{}", db.pg.port());
    assert!(text.contains(&direct), "{text}");
    std::fs::write(
        &config,
        text.replace(&direct, &format!("127.0.0.1:{}", link.addr.port())),
    )
    .unwrap();
    let a = replica(db.dir.path(), 0).await;
    let b = replica(dir_b.path(), 1).await;
    let op = operator(db.dir.path()).await;
    let http = new_client(&op).await;
    let ca = http.connect(a, "ca.example.org").await.unwrap();
    let cb = http.connect(b, "ca.example.org").await.unwrap();
    Some((db, link, dir_b, ca, cb, op))
}

/// The operator revokes a link `jti` (in the store, as another process would).
async fn revoke_link(op: &Arc<CertificateAuthority>, jti: &str) {
    let (op, jti) = (op.clone(), jti.to_owned());
    tokio::task::spawn_blocking(move || {
        let iss = TaskIdentity::parse("spiffe://example.org/agent/planner/task/t1").unwrap();
        op.revoke(
            &RevokeTarget::LinkJti {
                iss,
                jti: Jti::parse(&jti).unwrap(),
            },
            Some("partition"),
            "operator",
            common::now(),
        )
        .unwrap();
    })
    .await
    .unwrap();
}

/// A long-poll held on replica B when B is cut off from the database, while replica A
/// publishes a newer list, is not answered `304 Not Modified` at its deadline: B cannot know
/// that none was published (spec/CA-API.md 3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_held_across_a_cut_off_is_not_answered_not_modified() {
    let Some((db, link, _dir_b, mut ca, mut cb, op)) = partitioned().await else {
        return;
    };
    let (s, body) = get(&mut cb, "/v1/revocations").await;
    assert_eq!(s, 200, "{body}");
    let before = seq_of(&body);
    let held = tokio::spawn(async move {
        get(&mut cb, &format!("/v1/revocations?after={before}&wait=4")).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.cut();
    revoke_link(&op, "held-across").await;
    let (s, body) = get(&mut ca, &format!("/v1/revocations?after={before}&wait=5")).await;
    assert_eq!(s, 200, "replica A: {body}");
    let newer = seq_of(&body);
    let (s, body) = tokio::time::timeout(T, held).await.unwrap().unwrap();
    println!("replica B's held request: {s} {body}");
    assert_ne!(
        s, 304,
        "replica B answered a held request 304 Not Modified while list {newer} is published"
    );
    drop((link, db));
}

/// `304 Not Modified` says no newer list was published (spec/CA-API.md 3.4). A replica that
/// cannot read the store (cut off from the database while the other replicas are not) does not
/// know that: it must not answer `304` while another replica serves a newer list holding a
/// revocation, but `503 store_unavailable`, so its subscribers go elsewhere or retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_never_answers_not_modified() {
    let Some((_db, link, _dir_b, mut ca, mut cb, op)) = partitioned().await else {
        return;
    };
    let (s, body) = get(&mut cb, "/v1/revocations").await;
    assert_eq!(s, 200, "{body}");
    let before = seq_of(&body);

    link.cut();
    let cut_at = tokio::time::Instant::now();
    let op2 = op.clone();
    tokio::task::spawn_blocking(move || {
        let iss = TaskIdentity::parse("spiffe://example.org/agent/planner/task/t1").unwrap();
        op2.revoke(
            &RevokeTarget::LinkJti {
                iss,
                jti: Jti::parse("cut-off").unwrap(),
            },
            Some("partition"),
            "operator",
            common::now(),
        )
        .unwrap();
    })
    .await
    .unwrap();
    // Replica A publishes it.
    let (s, body) = get(&mut ca, &format!("/v1/revocations?after={before}&wait=5")).await;
    assert_eq!(s, 200, "replica A: {body}");
    let newer = seq_of(&body);
    assert!(newer > before);
    // Replica B, cut off for longer than a replica takes to learn of a list (200 ms) and
    // than the store's bound on staying unread (2 s): anything but "nothing newer".
    tokio::time::sleep_until(cut_at + Duration::from_millis(2500)).await;
    for path in [
        format!("/v1/revocations?after={before}"),
        format!("/v1/revocations?after={before}&wait=2"),
    ] {
        let (s, body) = get(&mut cb, &path).await;
        assert_ne!(
            s, 304,
            "replica B answered {path} 304 Not Modified while list {newer} is published"
        );
        println!("replica B, {path}: {s} {body}");
    }
    drop(link);
}

/// A revocation made on replica A wakes a long-poll held on replica B within about a second
/// (spec/CA-API.md 3.4: a replica learns of another's list within 200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_wakes_a_long_poll_on_another_within_a_second() {
    let Some(db) = db().await else { return };
    let a = replica(db.dir.path(), 0).await;
    let b = replica(db.dir.path(), 1).await;
    let op = operator(db.dir.path()).await;
    let op2 = op.clone();
    let (revoker, id) = tokio::task::spawn_blocking(move || common::task_client(&op2, "worker", T))
        .await
        .unwrap();
    let task = id.rsplit('/').next().unwrap().to_owned();
    let watcher = new_client(&op).await;
    let mut cb = watcher.connect(b, "ca.example.org").await.unwrap();
    let (s, body) = get(&mut cb, "/v1/revocations").await;
    assert_eq!(s, 200, "{body}");
    let before = seq_of(&body);
    let held = tokio::spawn(async move {
        let r = get(&mut cb, &format!("/v1/revocations?after={before}&wait=20")).await;
        (r, tokio::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ca = revoker.connect(a, "ca.example.org").await.unwrap();
    let (s, _, body) = call(&mut ca, "/v1/revoke", format!(r#"{{"task":"{task}"}}"#))
        .await
        .unwrap();
    let revoked_at = tokio::time::Instant::now();
    assert_eq!(s, 200, "{body}");
    let ((s, body), woke_at) = tokio::time::timeout(T, held).await.unwrap().unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(seq_of(&body) > before);
    assert!(body.len() > 20);
    let lag = woke_at.saturating_duration_since(revoked_at);
    println!("replica B answered {lag:?} after replica A acknowledged the revocation");
    assert!(lag < Duration::from_secs(1), "replica B woke {lag:?} late");
}

/// A principal revocation lists every task of the principal (spec/CA-API.md 3.4) in one
/// transaction, under the lock that holds every issuance off. A principal with many live tasks
/// must still be revoked: listing them one round trip each outlasted the store's bound on an
/// operation (20 s: about 120,000 tasks on loopback, far fewer over a network), so every
/// attempt was rolled back (`store_unavailable`) and the principal could never be revoked,
/// while each attempt held the issuances of every replica for those 20 s.
#[test]
fn a_principal_with_many_tasks_is_revoked() {
    use agentid_ca::{AuditEvent, RevocationKind, RevocationRecord, Store};
    const TASKS: i64 = 300_000;
    let Some((pg, mut store)) = pg_store() else {
        return;
    };
    let now = common::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let principal = r#"{"sub":"alice"}"#;
    // The tasks opened for the principal over the day, written directly (opening each through
    // the CA would take the test much longer than the bug).
    let url = pg.url("agentid");
    let sql = format!(
        "INSERT INTO tasks (task, holder, grant_jti, exp, created, principal)
         SELECT 'T' || g, 'holder-' || g, 'jti-' || g, {exp}, {now}, '{principal}'
         FROM generate_series(1, {TASKS}) g",
        exp = now + 3600,
    );
    let count_sql = "SELECT count(*) FROM revocations WHERE kind = 'task'";
    let run = move |sql: String| -> i64 {
        let url = url.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) =
                    tokio::time::timeout(T, tokio_postgres::connect(&url, tokio_postgres::NoTls))
                        .await
                        .unwrap()
                        .unwrap();
                tokio::spawn(conn);
                let rows = tokio::time::timeout(T, client.simple_query(&sql))
                    .await
                    .unwrap()
                    .unwrap();
                rows.iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            r.get(0).map(|v| v.parse().unwrap())
                        }
                        _ => None,
                    })
                    .unwrap_or(0)
            })
        })
        .join()
        .unwrap()
    };
    run(sql);
    let p = RevocationRecord {
        kind: RevocationKind::Principal,
        value: principal.into(),
        exp: now + 3600,
        revoked_at: now,
        reason: None,
        requester: "operator".into(),
    };
    let res = store.revoke_principal(&p, 60, &mut |tasks| {
        vec![AuditEvent {
            ts: now,
            kind: "revoke".into(),
            actor: "operator".into(),
            subject: Some(format!("principal:{principal}")),
            outcome: "ok".into(),
            reason: Some(format!("expanded to {} task(s)", tasks.len())),
            ..AuditEvent::default()
        }]
    });
    let listed = res.unwrap();
    assert_eq!(listed.len() as i64, TASKS);
    assert!(listed.iter().all(|r| r.exp == now + 3600 + 60));
    assert_eq!(run(count_sql.into()), TASKS, "task entries stored");
    assert!(store
        .revocations()
        .unwrap()
        .iter()
        .any(|r| r.kind == RevocationKind::Principal && r.value == principal));
    drop(store);
    drop(pg);
}

/// The connect bound is per host (docs/replicas.md, 3 s): a store URL naming a standby after
/// its primary (`host1,host2`, libpq's failover list) reaches the second host when the first
/// accepts the connection and never answers (a frozen server or VM, the very case the bound is
/// for). Before, the bound was 3 s times the number of hosts for the whole connection, all
/// spent waiting on the first host: the second was never tried, and every operation failed.
#[test]
fn a_frozen_first_host_does_not_keep_the_store_from_the_next_host() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    pg.create_database("agentid");
    // A listener that never accepts: the kernel completes the TCP handshake, and no answer to
    // the startup message ever comes.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = frozen.local_addr().unwrap().port();
    let url = format!(
        "postgres://postgres@127.0.0.1:{port},127.0.0.1:{}/agentid",
        pg.port()
    );
    let store = agentid_ca::store::PgStore::open_url(&url, "replica-0");
    assert!(store.is_ok(), "{:?}", store.err());
    drop(frozen);
}

/// Runs `sql` (several statements) on `url`.
fn exec_batch(url: &str, sql: String) {
    with_client(url, |client| async move {
        client.batch_execute(&sql).await.unwrap();
    });
}

/// A database recovered to an earlier point (PITR, or a failover to a standby that lagged: the
/// list counter and the stored lists as they were then) publishes above every list published
/// before the recovery, which agents hold and refuse to go below (CA-API 3.4).
#[test]
fn a_database_recovered_to_an_earlier_point_publishes_above_the_lists_it_lost() {
    use agentid_ca::store::{list_seq_floor, ListRow, Publication};
    use agentid_ca::{AuditEvent, Store};
    let Some((pg, mut store)) = pg_store() else {
        return;
    };
    let url = pg.url("agentid");
    let t0 = common::now();
    let mut publish = |at: std::time::SystemTime| {
        let now = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        store
            .publish_revocations(now, list_seq_floor(at), &mut |seq: u64, _: &[ListRow]| {
                Ok(Publication {
                    compact: format!("list-{seq}"),
                    published_at: now,
                    next_update: now + 600,
                    audit: AuditEvent {
                        ts: now,
                        kind: "revocations.publish".into(),
                        actor: "ca".into(),
                        outcome: "ok".into(),
                        reason: Some(format!("seq {seq}")),
                        ..AuditEvent::default()
                    },
                })
            })
            .unwrap()
            .seq
    };
    let first = publish(t0);
    assert!(first >= list_seq_floor(t0));
    let (at_recovery, _) = stored_seqs(&url);
    let mut last = first;
    for i in 1..=3 {
        let seq = publish(t0 + Duration::from_secs(i));
        assert!(seq > last, "{seq} after {last}");
        last = seq;
    }
    exec_batch(
        &url,
        format!(
            "UPDATE meta SET value = {at_recovery} WHERE key = 'revocation_seq';
             DELETE FROM published_lists WHERE seq > {at_recovery};"
        ),
    );
    let next = publish(t0 + Duration::from_secs(4));
    assert!(
        next > last,
        "{next} after {last}: below a list published before the recovery"
    );
    let (counter, seqs) = stored_seqs(&url);
    assert_eq!(counter, i64::try_from(next).unwrap());
    assert_eq!(seqs.last().copied(), Some(counter));
}
