//! The revocation feed watcher (`agentid_transport::enroll::RevocationWatcher`) against the real
//! CA service on 127.0.0.1: it applies each newer verified list to a live verification, refuses
//! lists it cannot verify, and a revocation at the CA closes a live session in another process.
//!
//! The cross-process test runs a framed-transport server agent (`AgentServer`) with a watcher in
//! this process and its client agents in a child process (this test binary re-executed with
//! `AGENTID_WATCH_CHILD_DIR` set: see `watch_client_child`). It is sized by `AGENTID_LOAD`:
//! `ci` (default, 10 trials) or `full` (100 trials), and prints p50/p99 of the time from the
//! revoke call to the client process reporting the close; nothing asserts on timings.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use agentid_api::RevokeRequest;
use agentid_ca::{CertificateAuthority, KeyType};
use agentid_protocol::{
    BundleSet, PeerId, SpiffeId, TaskKey, TrustBundle, TrustDomain, VerifierConfig,
};
use agentid_transport::enroll::{CaClient, RevocationWatcher, WatchOptions, WatcherHandle};
use agentid_transport::{
    AgentClient, AgentServer, Credential, CredentialSource, Error, MemoryCredentials, PeerPolicy,
    PeerVerification,
};
use rustls_pki_types::CertificateDer;

const T: Duration = Duration::from_secs(20);
const CHILD_ENV: &str = "AGENTID_WATCH_CHILD_DIR";
const SERVER_ID: &str = "spiffe://example.org/svc/watch-server";

const EXTRA_POLICY: &str = r#"
[agents.planner.permissions]
"svc:platform" = ["open_task", "revoke"]

[services.agentid-ca]
max_ttl = "1h"
requesters = ["operator"]

[services.platform]
max_ttl = "1h"
requesters = ["operator"]

[services.watch-server]
max_ttl = "1h"
requesters = ["operator"]
"#;

fn trials() -> usize {
    match std::env::var("AGENTID_LOAD").as_deref() {
        Ok("full") => 100,
        Ok("ci") | Err(_) => 10,
        Ok(other) => panic!("AGENTID_LOAD must be `ci` or `full`, not {other:?}"),
    }
}

struct World {
    dir: tempfile::TempDir,
    mtls: SocketAddr,
}

async fn start() -> World {
    let (dir, mtls, _) = common::serve_ca(EXTRA_POLICY, false).await;
    World { dir, mtls }
}

/// A verification for `own` trusting `bundle`; `strict` requires the domain's revocation list.
fn verification_with(own: &str, bundle: TrustBundle, strict: bool) -> Arc<PeerVerification> {
    let mut bundles = BundleSet::new();
    bundles.insert(bundle).unwrap();
    let config = VerifierConfig::new(SpiffeId::parse(own).unwrap(), bundles);
    let config = if strict {
        config
    } else {
        config.danger_accept_missing_or_stale_revocations()
    };
    PeerVerification::new(config).unwrap()
}

impl World {
    fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::open(self.dir.path()).unwrap()
    }

    fn url(&self) -> String {
        format!("https://{}", self.mtls)
    }

    fn verification(&self, own: &str, strict: bool) -> Arc<PeerVerification> {
        verification_with(own, self.ca().trust_bundle().unwrap(), strict)
    }

    /// A `planner` task opened by the operator: its key, chain and identity.
    fn task(&self) -> (TaskKey, Vec<CertificateDer<'static>>, String) {
        common::operator_task(&self.ca(), "planner")
    }

    /// A client of the CA's mutual-TLS listener holding `name`'s service certificate.
    fn ca_client(&self, name: &str) -> CaClient {
        let (creds, _) = common::service_credentials(&self.ca(), name);
        self.ca_client_with(creds)
    }

    fn ca_client_with(&self, creds: Arc<MemoryCredentials>) -> CaClient {
        let id = creds.current().unwrap().identity().as_str().to_owned();
        CaClient::new(&self.url(), creds, self.verification(&id, false), T).unwrap()
    }

    /// A watcher of the CA's feed, as the holder of `creds`, applying to `target`.
    fn watch(
        &self,
        creds: Arc<MemoryCredentials>,
        target: Arc<PeerVerification>,
        options: WatchOptions,
    ) -> WatcherHandle {
        RevocationWatcher::new(self.ca_client_with(creds), target, options).spawn()
    }
}

fn task_of(identity: &str) -> String {
    identity.rsplit_once("/task/").unwrap().1.to_owned()
}

fn revoke_task(task: &str) -> RevokeRequest {
    RevokeRequest {
        task: Some(task.to_owned()),
        agent: None,
        serial: None,
        jkt: None,
        jti: None,
        iss: None,
        reason: Some("test".into()),
    }
}

fn td() -> TrustDomain {
    TrustDomain::parse(common::TD).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_applies_each_newer_list_from_the_feed() {
    let w = start().await;
    let target = w.verification(SERVER_ID, true);
    let (creds, _) = common::service_credentials(&w.ca(), "watch-server");
    let watcher = w.watch(creds, target.clone(), WatchOptions::default());
    assert!(
        watcher.wait_for(T, |s| s.seq.is_some()).await,
        "{:?}",
        watcher.status()
    );
    let first = watcher.status().seq.unwrap();
    let list = target.verifier().config().revocation_list(&td()).cloned();
    assert_eq!(list.map(|l| l.seq()), Some(first));

    let (_, _, identity) = w.task();
    let platform = w.ca_client("platform");
    platform
        .revoke(&revoke_task(&task_of(&identity)))
        .await
        .unwrap();
    assert!(
        watcher
            .wait_for(T, |s| s.seq.is_some_and(|q| q > first))
            .await,
        "{:?}",
        watcher.status()
    );
    let status = watcher.status();
    assert!(status.applied >= 2, "{status:?}");
    let list = target
        .verifier()
        .config()
        .revocation_list(&td())
        .cloned()
        .unwrap();
    assert_eq!(Some(list.seq()), status.seq);
    assert!(!list.is_empty(), "the new list holds the revoked task");
    // A long-poll (wait 25 s) is held now: stopping does not wait for it.
    tokio::time::timeout(Duration::from_secs(5), watcher.stop())
        .await
        .expect("the watcher stops while its long-poll is held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_never_applies_a_list_it_cannot_verify() {
    let w = start().await;
    // The same trust domain, another CA: its revocation key did not sign the feed's lists.
    let other = common::test_ca(KeyType::P256);
    let target = verification_with(SERVER_ID, other.ca.trust_bundle().unwrap(), false);
    let options = WatchOptions::default()
        .with_backoff(Duration::from_millis(100), Duration::from_millis(400));
    let (creds, _) = common::service_credentials(&w.ca(), "watch-server");
    let watcher = w.watch(creds, target.clone(), options);
    assert!(
        watcher.wait_for(T, |s| s.failures >= 2).await,
        "{:?}",
        watcher.status()
    );
    let status = watcher.status();
    assert_eq!((status.seq, status.applied), (None, 0), "{status:?}");
    assert!(target.verifier().config().revocation_list(&td()).is_none());
    assert_eq!(target.epoch(), 0, "nothing was applied");
    watcher.stop().await;
}

/// A list forged with the CA's stolen revocation key (the highest `seq`, a `next_update` that
/// never comes, nothing revoked) no longer holds once the operator replaces the key and the
/// verification takes the new bundle (spec/PROTOCOL.md 14.1): the watcher at once applies the
/// list the CA signs with the new key, although its `seq` is far below the forged one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stolen_revocation_key_is_replaced_the_watcher_applies_the_cas_lists_again() {
    let w = start().await;
    let target = w.verification(SERVER_ID, true);
    let key_path = w.dir.path().join("revocation.key");
    let stolen = agentid_protocol::AuthorityKey::from_pkcs8_der(
        &agentid_fs::read_private_key(&key_path).unwrap(),
    )
    .unwrap();
    let top = (1 << 53) - 1;
    let forged =
        agentid_protocol::RevocationListBuilder::new(&td(), top, common::unix(common::now()), top)
            .sign(&stolen)
            .unwrap();
    target.apply_revocation_list(&forged).unwrap();
    // The operator replaces the key; a replica started afterwards signs with the new one.
    std::fs::remove_file(&key_path).unwrap();
    let new_key =
        agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&key_path, new_key.pkcs8_der()).unwrap();
    let service =
        agentid_ca::server::CaService::new(w.ca(), agentid_ca::server::ServiceOptions::default())
            .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replaced = World {
        mtls: l.local_addr().unwrap(),
        dir: w.dir,
    };
    tokio::spawn(async move { service.serve(l).await });
    let (creds, _) = common::service_credentials(&replaced.ca(), "watch-server");
    // Long-polls of 30 s: the list must come from the bundle change, not a poll's end.
    let options = WatchOptions::default().with_wait(Duration::from_secs(30));
    let watcher = replaced.watch(creds, target.clone(), options);
    tokio::time::sleep(Duration::from_millis(300)).await;
    target
        .update_bundle(replaced.ca().trust_bundle().unwrap())
        .unwrap();
    assert!(
        watcher
            .wait_for(T, |s| s.seq.is_some_and(|q| q < top))
            .await,
        "{:?}",
        watcher.status()
    );
    let held = target
        .verifier()
        .config()
        .revocation_list(&td())
        .map(|l| l.seq());
    assert!(held.is_some_and(|q| q < top), "{held:?}");
    watcher.stop().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn write_client(dir: &Path, n: usize, key: &TaskKey, chain: &[CertificateDer<'_>], id: &str) {
    std::fs::write(dir.join(format!("c{n}.key")), key.danger_pkcs8_der()).unwrap();
    std::fs::write(dir.join(format!("c{n}.leaf")), chain[0].as_ref()).unwrap();
    std::fs::write(dir.join(format!("c{n}.int")), chain[1].as_ref()).unwrap();
    std::fs::write(dir.join(format!("c{n}.id")), id).unwrap();
}

/// Waits for a line of the child holding `prefix`; returns it from `prefix` on.
fn expect(lines: &mpsc::Receiver<String>, prefix: &str, context: impl Fn() -> String) -> String {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            // libtest writes `test NAME ... ` before the child's first line.
            Ok(l) => {
                if let Some(i) = l.find(prefix) {
                    return l[i..].to_owned();
                }
            }
            Err(e) => panic!(
                "no `{prefix}` line from the client process: {e} {}",
                context()
            ),
        }
    }
}

#[test]
fn a_revocation_at_the_ca_closes_a_live_session_in_another_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // the child runs `watch_client_child` only
    }
    let trials = trials();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(start());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bundle.json"),
        w.ca().trust_bundle().unwrap().to_json(),
    )
    .unwrap();

    // The server agent: strict revocation, fed by the watcher.
    // The same credential serves the agents and reads the CA's feed.
    let sv = w.verification(SERVER_ID, true);
    let (server_creds, _) = common::service_credentials(&w.ca(), "watch-server");
    let watcher = {
        let _in = rt.enter();
        w.watch(server_creds.clone(), sv.clone(), WatchOptions::default())
    };
    assert!(rt.block_on(watcher.wait_for(T, |s| s.seq.is_some())));
    let server = Arc::new(
        AgentServer::builder(server_creds, sv, PeerPolicy::agents_in(td()))
            .build()
            .unwrap(),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended_tx, ended) = mpsc::channel::<(String, String)>();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let Ok(mut s) = server.accept(tcp).await else {
                    return;
                };
                let peer = s.peer().id.as_str().to_owned();
                let why = loop {
                    match tokio::time::timeout(Duration::from_secs(120), s.recv()).await {
                        Ok(Ok(Some(d))) => {
                            if s.send(&d).await.is_err() {
                                break "send failed".to_owned();
                            }
                        }
                        Ok(Ok(None)) => break "eof".to_owned(),
                        Ok(Err(Error::Revoked(_))) => break "revoked".to_owned(),
                        Ok(Err(e)) => break format!("{e}"),
                        Err(_) => break "idle".to_owned(),
                    }
                };
                let _ = ended_tx.send((peer, why));
            });
        }
    });

    // The client agents, in another process.
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "watch_client_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .env("AGENTID_WATCH_ADDR", addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = proc.stdin.take().unwrap();
    let stdout = proc.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let platform = w.ca_client("platform");
    let mut times = Vec::with_capacity(trials);
    for n in 0..trials {
        let (key, chain, id) = w.task();
        write_client(dir.path(), n, &key, &chain, &id);
        writeln!(stdin, "CONNECT {n}").unwrap();
        stdin.flush().unwrap();
        let line = expect(&lines, &format!("CONNECTED {n} "), String::new);
        assert!(line.ends_with(" ok"), "{line}");

        let started = Instant::now();
        rt.block_on(platform.revoke(&revoke_task(&task_of(&id))))
            .unwrap();
        let line = expect(&lines, &format!("CLOSED {n} "), || {
            format!("{:?}", watcher.status())
        });
        let elapsed = started.elapsed();
        assert_eq!(line, format!("CLOSED {n} revoked"), "trial {n}");
        let (peer, why) = ended.recv_timeout(T).unwrap();
        assert_eq!((peer.as_str(), why.as_str()), (id.as_str(), "revoked"));
        times.push(elapsed);
    }
    writeln!(stdin, "QUIT").unwrap();
    stdin.flush().unwrap();
    drop(stdin);
    assert!(proc.wait().unwrap().success());
    rt.block_on(watcher.stop());

    times.sort();
    println!(
        "revocation at the CA -> close in another process, {trials} trials: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&times, 0.50).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0,
        times.last().unwrap().as_secs_f64() * 1000.0,
    );
}

/// The client process: does nothing unless started by
/// `a_revocation_at_the_ca_closes_a_live_session_in_another_process`. Reads commands on stdin
/// (`CONNECT n`: connect and exchange one message; `QUIT`) and reports each session's end as `CLOSED n <code>`.
#[test]
fn watch_client_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let addr: SocketAddr = std::env::var("AGENTID_WATCH_ADDR")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let bundle =
        TrustBundle::parse(&td(), &std::fs::read(dir.join("bundle.json")).unwrap()).unwrap();
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let say = move |s: String| {
        let mut o = out.lock().unwrap();
        writeln!(o, "{s}").unwrap();
        o.flush().unwrap();
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|n| n.parse::<usize>().ok()),
        ) {
            (Some("CONNECT"), Some(n)) => {
                let read = |ext: &str| std::fs::read(dir.join(format!("c{n}.{ext}"))).unwrap();
                let key = TaskKey::from_pkcs8_der(&read("key")).unwrap();
                let id = String::from_utf8(read("id")).unwrap();
                let chain = vec![
                    CertificateDer::from(read("leaf")),
                    CertificateDer::from(read("int")),
                ];
                let creds = Arc::new(MemoryCredentials::new(Credential::new(chain, key).unwrap()));
                let client = AgentClient::builder(
                    creds,
                    verification_with(&id, bundle.clone(), false),
                    PeerPolicy::exact(PeerId::parse(SERVER_ID).unwrap()),
                )
                .build()
                .unwrap();
                let mut session =
                    match rt.block_on(tokio::time::timeout(T / 4, client.connect(addr))) {
                        Ok(Ok(s)) => s,
                        other => {
                            say(format!("CONNECTED {n} failed: {other:?}"));
                            continue;
                        }
                    };
                // The session is live both ways before the revocation.
                let sent = rt.block_on(session.send(b"ping"));
                let echoed = rt.block_on(tokio::time::timeout(T / 4, session.recv()));
                match (sent, echoed) {
                    (Ok(()), Ok(Ok(Some(d)))) if d.as_ref() == b"ping" => {}
                    other => {
                        say(format!("CONNECTED {n} failed: {other:?}"));
                        continue;
                    }
                }
                say(format!("CONNECTED {n} ok"));
                let say = say.clone();
                rt.spawn(async move {
                    let code = match tokio::time::timeout(Duration::from_secs(120), session.recv())
                        .await
                    {
                        Ok(Err(Error::Closed { code, .. })) => code,
                        Ok(Err(e)) => format!("error: {e}"),
                        Ok(Ok(Some(_))) => "unexpected data".to_owned(),
                        Ok(Ok(None)) => "eof".to_owned(),
                        Err(_) => "idle".to_owned(),
                    };
                    say(format!("CLOSED {n} {code}"));
                });
            }
            (Some("QUIT"), _) => break,
            _ => panic!("unknown command {line:?}"),
        }
    }
}

/// A watcher whose own connection to the CA is checked with the verification it feeds, as
/// `RevocationWatcher::new` allows when that verification "already holds" a list, must still
/// get a fresh list once the held one went stale (the CA was unreachable past the list's
/// `next_update`, or the process was suspended): the stale list cannot be replaced by anything
/// but a newer one from the feed, so refusing to talk to the CA because of it would fail the
/// verification closed for good, even once the CA publishes again (PROTOCOL 14.3 fails closed
/// until a fresh list arrives, not forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_holding_a_stale_list_gets_a_fresh_one_from_the_ca() {
    let w = start().await;
    // A list of the CA, published a day ago: long stale.
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    let stale = w.ca().revocation_list(day_ago).unwrap();
    let target = w.verification(SERVER_ID, true);
    target.apply_revocation_list_of(&stale, &td()).unwrap();
    let stale_seq = target
        .verifier()
        .config()
        .revocation_list(&td())
        .unwrap()
        .seq();
    // A newer list at the CA.
    let (_, _, identity) = w.task();
    w.ca_client("platform")
        .revoke(&revoke_task(&task_of(&identity)))
        .await
        .unwrap();

    // The watcher's client checks the CA with the verification it feeds.
    let (creds, _) = common::service_credentials(&w.ca(), "watch-server");
    let client = CaClient::new(&w.url(), creds, target.clone(), T).unwrap();
    let options = WatchOptions::default()
        .with_backoff(Duration::from_millis(100), Duration::from_millis(400));
    let watcher = RevocationWatcher::new(client, target.clone(), options).spawn();
    assert!(
        watcher
            .wait_for(T, |s| s.seq.is_some_and(|q| q > stale_seq))
            .await,
        "{:?}",
        watcher.status()
    );
    watcher.stop().await;
}
