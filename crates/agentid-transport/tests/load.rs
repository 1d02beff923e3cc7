//! Load and fault test: many concurrent sessions on loopback, with the server's certificate
//! rotated, every client re-authenticating with a renewed certificate, and revocation lists
//! applied while traffic flows. Healthy sessions must all survive; the one revoked peer must end.
//!
//! Sized by `AGENTID_LOAD`: `ci` (default, 500 sessions) or `full` (10,000 sessions). The
//! clients run in a child process (this test binary re-executed with `AGENTID_LOAD_CHILD_DIR`
//! set: see `load_client_child`), so that client and server do not share a runtime or a file
//! limit. Everything is bounded by timeouts; nothing asserts on timings (the figures are
//! printed).
#![cfg(test)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use agentid_protocol::{BundleSet, SpiffeId, TaskKey, TrustBundle, TrustDomain, VerifierConfig};
use agentid_transport::{
    AgentClient, AgentServer, ConnectionLimits, Credential, MemoryCredentials, PeerPolicy,
    PeerVerification, Session,
};
use rustls::pki_types::CertificateDer;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};

const CHILD_ENV: &str = "AGENTID_LOAD_CHILD_DIR";
const SERVER: &str = "spiffe://example.org/svc/load-server";
/// Rounds of (server rotation, client reauth, revocation list) under traffic.
const ROUNDS: usize = 3;

struct Size {
    sessions: usize,
    identities: usize,
}

fn size() -> Size {
    match std::env::var("AGENTID_LOAD").as_deref() {
        Ok("full") => Size {
            sessions: 10_000,
            identities: 100,
        },
        Ok("ci") | Err(_) => Size {
            sessions: 500,
            identities: 20,
        },
        Ok(other) => panic!("AGENTID_LOAD must be `ci` or `full`, not {other:?}"),
    }
}

fn client_id(i: usize) -> String {
    format!("spiffe://example.org/agent/load-{i}/task/t1")
}

/// Long enough for the full run on a busy machine (the session deadline is the notAfter).
fn long_leaf() -> LeafOpts {
    LeafOpts {
        not_after: Some(7200),
        ..Default::default()
    }
}

// `..default()`: caps this test does not size keep their defaults.
#[allow(clippy::needless_update)]
fn load_limits(sessions: usize) -> ConnectionLimits {
    ConnectionLimits {
        handshake_timeout: Duration::from_secs(60),
        first_frame_timeout: Duration::from_secs(60),
        max_connections: sessions + 256,
        max_handshakes: 512,
        // Each agent name holds `sessions / identities` sessions here; the caps stay the
        // defaults' meaning (a share of the server) without refusing the load itself.
        max_sessions_per_agent: sessions,
        max_sessions_per_task: sessions,
        // Sessions wait minutes between pings in the full run (opening 10,000 sessions on a
        // busy machine): not what an idle timeout is for.
        idle_timeout: Some(Duration::from_secs(1800)),
        ..ConnectionLimits::default()
    }
}

/// How the server's sessions ended, by reason.
#[derive(Default)]
struct ServerStats {
    established: AtomicUsize,
    refused: AtomicUsize,
    ended: Mutex<BTreeMap<String, usize>>,
    first_refusals: Mutex<Vec<String>>,
}

impl ServerStats {
    fn end(&self, who: &str, why: &str) {
        *self
            .ended
            .lock()
            .unwrap()
            .entry(format!("{who}: {why}"))
            .or_default() += 1;
    }

    fn ended(&self) -> BTreeMap<String, usize> {
        self.ended.lock().unwrap().clone()
    }
}

/// Echo server: each data frame comes back as `<data>|<the peer certificate serial now>`.
async fn echo(mut s: Session<TcpStream>, stats: Arc<ServerStats>) {
    stats.established.fetch_add(1, Ordering::SeqCst);
    let who = if s.peer().id.as_str().contains("/agent/victim/") {
        "victim"
    } else {
        "healthy"
    };
    loop {
        match s.recv().await {
            Ok(Some(d)) => {
                let reply = format!("{}|{}", String::from_utf8_lossy(&d), s.peer().cert_serial);
                if let Err(e) = s.send(reply.as_bytes()).await {
                    stats.end(who, &format!("send: {}", e.reason()));
                    return;
                }
            }
            Ok(None) => {
                stats.end(who, "closed by client");
                return;
            }
            Err(e) => {
                stats.end(who, e.reason());
                return;
            }
        }
    }
}

async fn serve_forever(listener: TcpListener, server: Arc<AgentServer>, stats: Arc<ServerStats>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning or exiting.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let server = server.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            match server.accept(tcp).await {
                Ok(s) => echo(s, stats).await,
                Err(e) => {
                    stats.refused.fetch_add(1, Ordering::SeqCst);
                    let mut first = stats.first_refusals.lock().unwrap();
                    if first.len() < 5 {
                        first.push(e.to_string());
                    }
                }
            }
        });
    }
}

fn write_credential(dir: &Path, name: &str, cert: &CertificateDer<'_>, key: Option<&TaskKey>) {
    std::fs::write(dir.join(format!("{name}.der")), cert.as_ref()).unwrap();
    if let Some(k) = key {
        std::fs::write(dir.join(format!("{name}.key")), k.danger_pkcs8_der()).unwrap();
    }
}

/// The child's `LOAD ...` lines, as key=value maps.
struct Child {
    proc: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Child {
    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn expect(&self, tag: &str, timeout: Duration) -> BTreeMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no `LOAD {tag}` line from the client process: {e}"));
            // libtest may print `test load_client_child ... ` on the same line first.
            let Some(at) = line.find("LOAD ") else {
                continue;
            };
            let mut words = line[at..].split_whitespace().skip(1);
            if words.next() != Some(tag) {
                continue;
            }
            return words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        }
    }
}

impl Drop for Child {
    /// A failed assertion must not leave the client process behind.
    fn drop(&mut self) {
        if let Ok(None) = self.proc.try_wait() {
            let _ = self.proc.kill();
            let _ = self.proc.wait();
        }
    }
}

/// The runtime of each side (the test and its child process): two workers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn num(m: &BTreeMap<String, String>, k: &str) -> usize {
    m.get(k)
        .unwrap_or_else(|| panic!("no {k} in {m:?}"))
        .parse()
        .unwrap()
}

#[test]
fn sessions_survive_rotation_and_revocation_under_load() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // the child runs `load_client_child` only
    }
    let size = size();
    let rt = runtime();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let a = Domain::new("example.org");
    std::fs::write(dir.path().join("bundle.json"), a.bundle().to_json()).unwrap();

    // Server: strict revocation (a list for example.org is required), sessions capped above
    // the load.
    let sv = verification(SERVER, &[&a], true);
    let mut seq = 1;
    sv.apply_revocation_list(&a.revocation_list(seq, |b| b))
        .unwrap();
    let server_creds = Arc::new(MemoryCredentials::new(credential(
        &a.ca,
        SERVER,
        key(),
        &long_leaf(),
    )));
    let server = Arc::new(
        AgentServer::builder(
            server_creds.clone(),
            sv.clone(),
            PeerPolicy::agents_in(a.td.clone()),
        )
        .limits(load_limits(size.sessions))
        .build()
        .unwrap(),
    );
    let stats = Arc::new(ServerStats::default());
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(serve_forever(listener, server, stats.clone()));

    // Client identities: one key each, a certificate per round (round 0 = initial).
    let mut keys = Vec::new();
    for i in 0..size.identities {
        let k = key();
        write_credential(
            dir.path(),
            &format!("c{i}-r0"),
            &leaf(&a.ca, &client_id(i), &k, &long_leaf()),
            Some(&k),
        );
        keys.push(k);
    }

    // A victim in this process: its key gets revoked in round 1.
    let victim_key = key();
    let victim_pub = victim_key.public_key().clone();
    let victim_id = "spiffe://example.org/agent/victim/task/t1";
    let victim = client(
        Arc::new(MemoryCredentials::new(credential(
            &a.ca,
            victim_id,
            victim_key,
            &long_leaf(),
        ))),
        verification(victim_id, &[&a], false),
        PeerPolicy::exact(peer(SERVER)),
    );
    let mut victim_session = rt
        .block_on(tokio::time::timeout(T, victim.connect(addr)))
        .unwrap()
        .unwrap();

    // The clients.
    let started = Instant::now();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "load_client_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .env("AGENTID_LOAD_ADDR", addr.to_string())
        .env("AGENTID_LOAD_SESSIONS", size.sessions.to_string())
        .env("AGENTID_LOAD_IDENTITIES", size.identities.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdin = proc.stdin.take().unwrap();
    let stdout = proc.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut child = Child { proc, stdin, lines };
    let setup_timeout = Duration::from_secs(60 + size.sessions as u64 / 10);

    let ready = child.expect("READY", setup_timeout);
    let connect_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        num(&ready, "fail"),
        0,
        "sessions that failed to open: {ready:?}"
    );
    assert_eq!(num(&ready, "ok"), size.sessions);
    // The server counts its side too (the victim is one more).
    let deadline = Instant::now() + T;
    while stats.established.load(Ordering::SeqCst) < size.sessions + 1 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stats.established.load(Ordering::SeqCst), size.sessions + 1);
    assert_eq!(
        stats.refused.load(Ordering::SeqCst),
        0,
        "refused: {:?}",
        stats.first_refusals.lock().unwrap()
    );
    eprintln!(
        "load: {} concurrent sessions ({} identities) open in {connect_secs:.1} s",
        size.sessions, size.identities
    );

    let ping_timeout = Duration::from_secs(60 + size.sessions as u64 / 20);
    child.send("PING 0");
    let pong = child.expect("PONG", ping_timeout);
    assert_eq!(num(&pong, "fail"), 0, "{pong:?}");
    assert_eq!(num(&pong, "ok"), size.sessions);
    assert_eq!(num(&pong, "live"), size.sessions);

    for round in 1..=ROUNDS {
        let t0 = Instant::now();
        // Renewed client certificates (same key) for this round.
        for (i, k) in keys.iter().enumerate() {
            let cert = leaf(&a.ca, &client_id(i), k, &long_leaf());
            write_credential(dir.path(), &format!("c{i}-r{round}"), &cert, None);
        }
        // Traffic in flight while the server's certificate and key rotate and a revocation
        // list (revoking the victim in round 1, unrelated agents later) is applied.
        child.send(&format!("PING {round}"));
        server_creds
            .rotate(
                credential(&a.ca, SERVER, key(), &long_leaf()),
                &sv.trust_store(),
            )
            .unwrap();
        seq += 1;
        let list = a.revocation_list(seq, |b| {
            let b = b.revoke_agent(
                &agentid_protocol::AgentId::new(&a.td, &format!("gone-{round}")).unwrap(),
                now() + 600,
            );
            if round == 1 {
                b.revoke_key(&victim_pub.thumbprint(), now() + 600)
            } else {
                b
            }
        });
        sv.apply_revocation_list(&list).unwrap();
        let pong = child.expect("PONG", ping_timeout);
        assert_eq!(num(&pong, "fail"), 0, "round {round}: {pong:?}");
        assert_eq!(num(&pong, "ok"), num(&pong, "live"), "round {round}");
        assert!(num(&pong, "live") >= size.sessions, "round {round}");

        // Every client session re-authenticates with its renewed certificate, then traffic
        // again: the server must now see the renewed serial on every session.
        child.send(&format!("REAUTH {round}"));
        let re = child.expect("REAUTHED", ping_timeout);
        assert_eq!(num(&re, "fail"), 0, "round {round}: {re:?}");
        child.send(&format!("PING {}", 100 + round));
        let pong = child.expect("PONG", ping_timeout);
        assert_eq!(
            num(&pong, "fail"),
            0,
            "round {round} after reauth: {pong:?}"
        );
        assert_eq!(num(&pong, "serial_mismatch"), 0, "round {round}");

        // New handshakes get the rotated server certificate.
        child.send("NEW 20");
        let new = child.expect("NEW", ping_timeout);
        assert_eq!(num(&new, "fail"), 0, "round {round}: {new:?}");
        let current = server_creds_serial(&server_creds);
        assert_eq!(
            new.get("server_serials").map(String::as_str),
            Some(current.as_str()),
            "round {round}: new sessions must see the rotated certificate"
        );
        eprintln!(
            "load: round {round} (rotation, revocation list seq {seq}, {} reauths, pings) in {:.1} s",
            size.sessions,
            t0.elapsed().as_secs_f64()
        );
    }

    // The revoked victim's session ended, with `revoked`; no healthy session ended.
    let r = rt.block_on(tokio::time::timeout(T, victim_session.recv()));
    assert!(
        matches!(&r, Ok(Err(agentid_transport::Error::Closed { code, .. })) if code == "revoked"),
        "victim: {r:?}"
    );
    let ended = stats.ended();
    assert_eq!(
        ended,
        BTreeMap::from([("victim: revoked".to_owned(), 1)]),
        "only the revoked peer's session may end under load"
    );

    child.send("QUIT");
    child.expect("BYE", ping_timeout);
    let status = child.proc.wait().unwrap();
    drop(child);
    assert!(status.success(), "client process: {status:?}");
    eprintln!(
        "load: total {:.1} s for {} sessions + {} new, {ROUNDS} rounds",
        started.elapsed().as_secs_f64(),
        size.sessions,
        20 * ROUNDS
    );
}

fn server_creds_serial(c: &MemoryCredentials) -> String {
    use agentid_transport::CredentialSource;
    c.current().unwrap().info().serial.clone()
}

// ------------------------------------------------------------------------------------------
// The client process.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Cmd {
    Ping(u64),
    Reauth(usize),
    Quit,
}

/// What one session task reports for one command.
type Report = Result<bool, String>; // Ok(serial matched)

struct Ident {
    client: AgentClient,
    creds: Arc<MemoryCredentials>,
    verification: Arc<PeerVerification>,
    /// The serial of the certificate new sessions present.
    serial: Mutex<String>,
}

fn read_credential(dir: &Path, i: usize, round: usize, key: &TaskKey) -> Credential {
    let cert = std::fs::read(dir.join(format!("c{i}-r{round}.der"))).unwrap();
    let key = TaskKey::from_pkcs8_der(key.danger_pkcs8_der()).unwrap();
    Credential::new(vec![CertificateDer::from(cert)], key).unwrap()
}

fn client_verification(dir: &Path, own: &str) -> Arc<PeerVerification> {
    let td = TrustDomain::parse("example.org").unwrap();
    let json = std::fs::read(dir.join("bundle.json")).unwrap();
    let mut bundles = BundleSet::new();
    bundles
        .insert(TrustBundle::parse(&td, &json).unwrap())
        .unwrap();
    PeerVerification::new(
        VerifierConfig::new(SpiffeId::parse(own).unwrap(), bundles)
            .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap()
}

async fn session_task(
    mut s: Session<TcpStream>,
    mut serial: String,
    dir: PathBuf,
    ident: usize,
    key: Arc<TaskKey>,
    mut cmds: broadcast::Receiver<Cmd>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
) {
    loop {
        let cmd = match cmds.recv().await {
            Ok(c) => c,
            Err(e) => {
                let _ = reports.send(Err(format!("command channel: {e}")));
                return;
            }
        };
        let report = match cmd {
            Cmd::Ping(n) => ping(&mut s, n, &serial).await,
            Cmd::Reauth(round) => {
                let cred = Arc::new(read_credential(&dir, ident, round, &key));
                let next = cred.info().serial.clone();
                match tokio::time::timeout(T, s.reauth(cred)).await {
                    Ok(Ok(())) => {
                        serial = next;
                        Ok(true)
                    }
                    Ok(Err(e)) => Err(format!("reauth: {e}")),
                    Err(_) => Err("reauth: timeout".into()),
                }
            }
            Cmd::Quit => {
                let r = tokio::time::timeout(T, s.close("normal", "load test done")).await;
                let _ = reports.send(match r {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(e)) => Err(format!("close: {e}")),
                    Err(_) => Err("close: timeout".into()),
                });
                return;
            }
        };
        let _ = reports.send(report);
    }
}

async fn ping(s: &mut Session<TcpStream>, n: u64, serial: &str) -> Report {
    let msg = format!("ping {n}");
    s.send(msg.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(120), s.recv()).await {
        Ok(Ok(Some(d))) => {
            let text = String::from_utf8_lossy(&d);
            let (echoed, seen) = text.split_once('|').ok_or("no serial in the echo")?;
            if echoed != msg {
                return Err(format!("echo {echoed:?} for {msg:?}"));
            }
            Ok(seen == serial)
        }
        Ok(Ok(None)) => Err("closed by server".into()),
        Ok(Err(e)) => Err(format!("recv: {e}")),
        Err(_) => Err("recv: timeout".into()),
    }
}

/// Opens `n` sessions with bounded concurrency; returns (sessions, failures, server serials).
async fn open(
    idents: &Arc<Vec<Ident>>,
    addr: SocketAddr,
    n: usize,
    offset: usize,
) -> (
    Vec<(usize, String, Session<TcpStream>)>,
    Vec<String>,
    Vec<String>,
) {
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for j in 0..n {
        let idents = idents.clone();
        let gate = gate.clone();
        let ident = (offset + j) % idents.len();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let serial = idents[ident].serial.lock().unwrap().clone();
            let r =
                tokio::time::timeout(Duration::from_secs(120), idents[ident].client.connect(addr))
                    .await;
            (ident, serial, r)
        }));
    }
    let mut ok = Vec::with_capacity(n);
    let mut failures = Vec::new();
    let mut serials = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (ident, serial, Ok(Ok(s))) => {
                serials.push(s.peer().cert_serial.clone());
                ok.push((ident, serial, s));
            }
            (_, _, Ok(Err(e))) => failures.push(format!("connect: {e}")),
            (_, _, Err(_)) => failures.push("connect: timeout".into()),
        }
    }
    (ok, failures, serials)
}

/// The client process: does nothing unless started by
/// `sessions_survive_rotation_and_revocation_under_load`.
#[test]
fn load_client_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let var = |k: &str| std::env::var(k).unwrap();
    let addr: SocketAddr = var("AGENTID_LOAD_ADDR").parse().unwrap();
    let sessions: usize = var("AGENTID_LOAD_SESSIONS").parse().unwrap();
    let identities: usize = var("AGENTID_LOAD_IDENTITIES").parse().unwrap();
    let rt = runtime();
    let _in_runtime = rt.enter();
    let mut keys = Vec::new();
    let mut idents = Vec::new();
    for i in 0..identities {
        let pkcs8 = std::fs::read(dir.join(format!("c{i}-r0.key"))).unwrap();
        let key = Arc::new(TaskKey::from_pkcs8_der(&pkcs8).unwrap());
        let cred = read_credential(&dir, i, 0, &key);
        let serial = Mutex::new(cred.info().serial.clone());
        let creds = Arc::new(MemoryCredentials::new(cred));
        let verification = client_verification(&dir, &client_id(i));
        let client = AgentClient::builder(
            creds.clone(),
            verification.clone(),
            PeerPolicy::exact(peer(SERVER)),
        )
        .limits(load_limits(sessions))
        .build()
        .unwrap();
        keys.push(key);
        idents.push(Ident {
            client,
            creds,
            verification,
            serial,
        });
    }
    let idents = Arc::new(idents);
    let (cmd_tx, _) = broadcast::channel::<Cmd>(16);
    let (rep_tx, mut rep_rx) = tokio::sync::mpsc::unbounded_channel::<Report>();
    let mut live = 0usize;
    let spawn_all = |opened: Vec<(usize, String, Session<TcpStream>)>, live: &mut usize| {
        for (ident, serial, s) in opened {
            *live += 1;
            rt.spawn(session_task(
                s,
                serial,
                dir.clone(),
                ident,
                keys[ident].clone(),
                cmd_tx.subscribe(),
                rep_tx.clone(),
            ));
        }
    };

    let (opened, failures, _) = rt.block_on(open(&idents, addr, sessions, 0));
    for f in failures.iter().take(5) {
        eprintln!("load client: {f}");
    }
    println!("LOAD READY ok={} fail={}", opened.len(), failures.len());
    spawn_all(opened, &mut live);

    let collect = |rep_rx: &mut tokio::sync::mpsc::UnboundedReceiver<Report>, n: usize| {
        rt.block_on(async {
            let (mut ok, mut fail, mut mismatch) = (0usize, 0usize, 0usize);
            for _ in 0..n {
                match tokio::time::timeout(Duration::from_secs(300), rep_rx.recv()).await {
                    Ok(Some(Ok(matched))) => {
                        ok += 1;
                        if !matched {
                            mismatch += 1;
                        }
                    }
                    Ok(Some(Err(e))) => {
                        if fail < 5 {
                            eprintln!("load client: {e}");
                        }
                        fail += 1;
                    }
                    Ok(None) | Err(_) => fail += 1,
                }
            }
            (ok, fail, mismatch)
        })
    };

    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let mut words = line.split_whitespace();
        let (cmd, arg) = (words.next().unwrap_or(""), words.next().unwrap_or("0"));
        let arg: usize = arg.parse().unwrap();
        match cmd {
            "PING" => {
                cmd_tx.send(Cmd::Ping(arg as u64)).unwrap();
                let (ok, fail, mismatch) = collect(&mut rep_rx, live);
                println!("LOAD PONG ok={ok} live={live} fail={fail} serial_mismatch={mismatch}");
            }
            "REAUTH" => {
                // As an agent would: the renewed certificate is also what new handshakes
                // present from now on, and live sessions re-authenticate with it.
                for (i, ident) in idents.iter().enumerate() {
                    let cred = read_credential(&dir, i, arg, &keys[i]);
                    *ident.serial.lock().unwrap() = cred.info().serial.clone();
                    ident
                        .creds
                        .rotate(cred, &ident.verification.trust_store())
                        .unwrap();
                }
                cmd_tx.send(Cmd::Reauth(arg)).unwrap();
                let (ok, fail, _) = collect(&mut rep_rx, live);
                println!("LOAD REAUTHED ok={ok} fail={fail}");
            }
            "NEW" => {
                let (opened, failures, serials) = rt.block_on(open(&idents, addr, arg, live));
                for f in failures.iter().take(5) {
                    eprintln!("load client: {f}");
                }
                let mut distinct = serials.clone();
                distinct.sort();
                distinct.dedup();
                println!(
                    "LOAD NEW ok={} fail={} server_serials={}",
                    opened.len(),
                    failures.len(),
                    distinct.join(",")
                );
                // These stay open and take part in later commands.
                spawn_all(opened, &mut live);
            }
            "QUIT" => {
                cmd_tx.send(Cmd::Quit).unwrap();
                let (_, fail, _) = collect(&mut rep_rx, live);
                println!("LOAD BYE fail={fail}");
                break;
            }
            other => panic!("unknown command {other:?}"),
        }
        std::io::stdout().flush().unwrap();
    }
    std::io::stdout().flush().unwrap();
}
