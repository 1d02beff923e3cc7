//! Figure 13: revocation propagation through the CA service, from the revoke call
//! (`POST /v1/revoke` by a platform service) to the close of the revoked task's live session,
//! observed in the client's process, with a revocation list already holding `ENTRIES` entries
//! and 1,000 live sessions. Three processes: the CA service (this binary with `--ca-service`),
//! this one (the platform's `CaClient` and a server agent whose `PeerVerification` is fed by a
//! `RevocationWatcher` long-polling the CA's feed), and the client agents (this binary with
//! `--revocation-sessions`: one framed session per task, each its own TLS connection).
//!
//! The list's entries are link `jti` revocations (they live 24 h, so every publication carries
//! them all), made through the library before the service starts. The CA's directory is on
//! tmpfs (so that making 100,000 entries, one transaction each, takes seconds): publication
//! pays no fsync here.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use agentid_api::RevokeRequest;
use agentid_ca::{
    CertificateAuthority, KeySource, OpenTaskRequest, RevokeTarget, ServiceRequest, TaskRequester,
};
use agentid_protocol::{
    Algorithm, BundleSet, Jti, PeerId, Scope, SpiffeId, TaskIdentity, TaskKey, TrustBundle,
    TrustDomain, VerifierConfig,
};
use agentid_transport::enroll::{CaClient, RevocationWatcher, WatchOptions};
use agentid_transport::{
    AgentClient, AgentServer, ConnectionLimits, Credential, CredentialSource, Error,
    MemoryCredentials, PeerPolicy, PeerVerification,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls_pki_types::CertificateDer;

use crate::fixtures::Res;
use crate::harness::percentile;
use crate::report::{Report, Target};

/// Every wait of this figure is bounded by this.
const T: Duration = Duration::from_secs(60);
const SERVER_ID: &str = "spiffe://example.org/svc/watch-server";
const CA_ID: &str = "spiffe://example.org/svc/agentid-ca";

fn td() -> Res<TrustDomain> {
    Ok(TrustDomain::parse("example.org")?)
}

fn chain(leaf: &[u8], intermediate: &[u8]) -> Vec<CertificateDer<'static>> {
    vec![
        CertificateDer::from(leaf.to_vec()),
        CertificateDer::from(intermediate.to_vec()),
    ]
}

/// A verification for `own` trusting `bundle`; `strict` requires the domain's revocation list.
fn verification(own: &str, bundle: TrustBundle, strict: bool) -> Res<Arc<PeerVerification>> {
    let mut bundles = BundleSet::new();
    bundles.insert(bundle)?;
    let config = VerifierConfig::new(SpiffeId::parse(own)?, bundles);
    let config = if strict {
        config
    } else {
        config.danger_accept_missing_or_stale_revocations()
    };
    Ok(PeerVerification::new(config)?)
}

/// A service credential issued by the operator.
fn service(ca: &CertificateAuthority, name: &str) -> Res<Arc<MemoryCredentials>> {
    let key = TaskKey::generate(Algorithm::Es256)?;
    let c = ca.issue_service(
        &ServiceRequest {
            service: name.into(),
            key: KeySource::Spki(key.public_key().to_spki_der()),
            ttl: Some(Duration::from_secs(3600)),
        },
        SystemTime::now(),
    )?;
    Ok(Arc::new(MemoryCredentials::new(Credential::new(
        chain(&c.leaf.der, &c.intermediate_der),
        key,
    )?)))
}

/// The client process, killed when dropped.
struct Clients {
    child: Child,
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a line starting with `prefix`; returns the rest.
fn expect(lines: &mpsc::Receiver<String>, prefix: &str) -> Res<String> {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = lines
            .recv_timeout(left)
            .map_err(|e| format!("no `{prefix}` line from the client process: {e}"))?;
        if let Some(rest) = l.strip_prefix(prefix) {
            return Ok(rest.to_owned());
        }
        if l.starts_with("CLOSED ") {
            return Err(format!("a session closed unexpectedly: {l}").into());
        }
    }
}

/// Figure 13.
pub fn run(quick: bool, report: &mut Report) -> Res<()> {
    let (entries, sessions, trials) = if quick {
        (10_000, 200, 20)
    } else {
        (100_000, 1000, 100)
    };
    report.section(&format!(
        "13. revocation propagation: revoke call -> close of the live session in another process, list of {entries} entries, {sessions} live sessions"
    ));
    let parent = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    let dir = crate::ca_service::ca_dir(parent.path(), "ca")?;
    let ca = CertificateAuthority::open(&dir)?;

    // The list's standing entries.
    let started = Instant::now();
    let iss = TaskIdentity::parse("spiffe://example.org/agent/worker/task/links")?;
    for i in 0..entries {
        let jti = Jti::parse(&format!("link-{i:08}"))?;
        ca.revoke(
            &RevokeTarget::LinkJti {
                iss: iss.clone(),
                jti,
            },
            None,
            "operator",
            SystemTime::now(),
        )?;
    }
    let populate = started.elapsed();

    // The client agents' credentials: one task each.
    let files = tempfile::tempdir()?;
    let scope = Scope::parse("repo:read")?;
    let mut tasks = Vec::with_capacity(sessions);
    let mut out = String::new();
    for n in 0..sessions {
        let key = TaskKey::generate(Algorithm::Es256)?;
        let c = ca.open_task(
            &OpenTaskRequest::new(
                "worker",
                KeySource::Spki(key.public_key().to_spki_der()),
                TaskRequester::Operator,
                scope.clone(),
            ),
            SystemTime::now(),
        )?;
        let id = c.identity.as_str().to_owned();
        out.push_str(&format!(
            "{n} {id} {} {} {}\n",
            URL_SAFE_NO_PAD.encode(key.danger_pkcs8_der()),
            URL_SAFE_NO_PAD.encode(&c.certificate.leaf.der),
            URL_SAFE_NO_PAD.encode(&c.certificate.intermediate_der),
        ));
        tasks.push(c.identity.task_id().as_str().to_owned());
    }
    std::fs::write(files.path().join("sessions"), out)?;
    let bundle = ca.trust_bundle()?;
    std::fs::write(files.path().join("bundle.json"), bundle.to_json())?;
    let server_creds = service(&ca, "watch-server")?;
    let platform_creds = service(&ca, "platform")?;
    drop(ca);

    let service_proc = crate::ca_service::Service::start(&dir)?;
    let url = format!("https://{}", service_proc.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _in = rt.enter();

    // The server agent, strict about revocation, fed by the watcher.
    let sv = verification(SERVER_ID, bundle.clone(), true)?;
    let watcher = RevocationWatcher::new(
        CaClient::new(
            &url,
            server_creds.clone(),
            verification(SERVER_ID, bundle.clone(), false)?,
            T,
        )?,
        sv.clone(),
        WatchOptions::default(),
    )
    .spawn();
    if !rt.block_on(watcher.wait_for(T, |s| s.seq.is_some())) {
        return Err(format!("the watcher applied no list: {:?}", watcher.status()).into());
    }
    let list_entries = sv
        .verifier()
        .config()
        .revocation_list(&td()?)
        .map(|l| l.len())
        .unwrap_or(0);
    let limits = ConnectionLimits {
        max_connections: sessions + 64,
        max_sessions_per_agent: sessions + 64,
        ..ConnectionLimits::default()
    };
    let server = Arc::new(
        AgentServer::builder(server_creds, sv, PeerPolicy::agents_in(td()?))
            .limits(limits)
            .build()?,
    );
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let Ok(mut s) = server.accept(tcp).await else {
                    return;
                };
                // Echo until the session ends (revoked, closed, idle).
                while let Ok(Ok(Some(d))) = tokio::time::timeout(T * 10, s.recv()).await {
                    if s.send(&d).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    // The client agents, in another process.
    let mut clients = Clients {
        child: Command::new(std::env::current_exe()?)
            .arg("--revocation-sessions")
            .arg(files.path())
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    };
    let stdout = clients.child.stdout.take().ok_or("no stdout")?;
    let mut stdin = clients.child.stdin.take().ok_or("no stdin")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready: usize = expect(&lines, "READY ")?.trim().parse()?;
    if ready != sessions {
        return Err(format!("{ready} of {sessions} sessions connected").into());
    }

    let platform = CaClient::new(&url, platform_creds, verification(CA_ID, bundle, false)?, T)?;
    let mut times = Vec::with_capacity(trials);
    // The revoke call alone: it answers once its replica serves a list holding the entry.
    let mut calls = Vec::with_capacity(trials);
    for (n, task) in tasks.iter().enumerate().take(trials) {
        let t0 = Instant::now();
        rt.block_on(platform.revoke(&RevokeRequest {
            task: Some(task.clone()),
            reason: Some("bench".into()),
            ..RevokeRequest::default()
        }))?;
        calls.push(t0.elapsed().as_secs_f64() * 1e9);
        let code = expect(&lines, &format!("CLOSED {n} "))?;
        times.push(t0.elapsed().as_secs_f64() * 1e9);
        if code != "revoked" {
            return Err(format!("session {n} closed with {code}, not revoked").into());
        }
    }
    // The sessions not revoked are still live.
    writeln!(stdin, "COUNT")?;
    stdin.flush()?;
    let live: usize = expect(&lines, "LIVE ")?.trim().parse()?;
    if live != sessions - trials {
        return Err(format!("{live} sessions live, expected {}", sessions - trials).into());
    }
    writeln!(stdin, "QUIT")?;
    drop(stdin);
    drop(clients);
    rt.block_on(watcher.stop());
    drop(service_proc);

    let list_bytes = CertificateAuthority::open(&dir)?
        .latest_published()?
        .map(|p| p.compact.len())
        .unwrap_or(0);
    let p50 = percentile(&mut times, 50.0);
    let p99 = percentile(&mut times, 99.0);
    let max = times.iter().copied().fold(0.0, f64::max);
    let target_ns = 1e9;
    report.line(
        "fig13.list",
        list_entries as f64,
        "entries",
        list_bytes as f64 / 1e6,
        &format!(
            "MB the signed list weighs; made in {:.1} s through the library",
            populate.as_secs_f64()
        ),
        Target::None,
    );
    let call_p50 = percentile(&mut calls, 50.0);
    report.time(
        "fig13.revoke_call.p50",
        call_p50,
        "revocation",
        call_p50 / p50,
        "of revoke-to-close p50: the CA's share (record, sign and store the list)",
        Target::None,
    );
    report.time(
        "fig13.revoke_to_close.p50",
        p50,
        "revocation",
        p50 / target_ns,
        &format!("of 1 s; {trials} trials, {sessions} live sessions"),
        Target::None,
    );
    report.time(
        "fig13.revoke_to_close.p99",
        p99,
        "revocation",
        p99 / target_ns,
        &format!("of 1 s; max {:.0} ms", max / 1e6),
        Target::AtMost(1.0),
    );
    Ok(())
}

/// `--revocation-sessions DIR ADDR`: the client agents of figure 13. Connects one session per
/// line of `DIR/sessions` (16 handshakes at a time), prints `READY n`, then `CLOSED i CODE` as
/// each session ends; on stdin, `COUNT` prints `LIVE n`, `QUIT` ends.
pub fn clients(dir: &Path, addr: SocketAddr) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let td = td()?;
    let bundle = TrustBundle::parse(&td, &std::fs::read(dir.join("bundle.json"))?)?;
    let text = std::fs::read_to_string(dir.join("sessions"))?;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let say = move |s: String| {
        if let Ok(mut o) = out.lock() {
            let _ = writeln!(o, "{s}");
            let _ = o.flush();
        }
    };
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = PeerPolicy::exact(PeerId::parse(SERVER_ID)?);
    let mut connects = Vec::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [n, id, key, leaf, int] = f.as_slice() else {
            return Err(format!("bad sessions line {line:?}").into());
        };
        let n: usize = n.parse()?;
        let key = TaskKey::from_pkcs8_der(&URL_SAFE_NO_PAD.decode(key)?)?;
        let creds: Arc<dyn CredentialSource> = Arc::new(MemoryCredentials::new(Credential::new(
            chain(
                &URL_SAFE_NO_PAD.decode(leaf)?,
                &URL_SAFE_NO_PAD.decode(int)?,
            ),
            key,
        )?));
        let client = AgentClient::builder(
            creds,
            verification(id, bundle.clone(), false)?,
            server.clone(),
        )
        .build()?;
        let (gate, live, say) = (gate.clone(), live.clone(), say.clone());
        connects.push(rt.spawn(async move {
            let mut session = {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                let mut s = tokio::time::timeout(T, client.connect(addr))
                    .await
                    .map_err(|_| "connect timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
                // Live both ways before the revocations start.
                s.send(b"ping").await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(T, s.recv()).await {
                    Ok(Ok(Some(d))) if d.as_ref() == b"ping" => {}
                    other => return Err(format!("no echo: {other:?}")),
                }
                s
            };
            live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let code = match tokio::time::timeout(T * 30, session.recv()).await {
                    Ok(Err(Error::Closed { code, .. })) => code,
                    Ok(Err(e)) => format!("error: {e}"),
                    Ok(Ok(Some(_))) => "unexpected data".to_owned(),
                    Ok(Ok(None)) => "eof".to_owned(),
                    Err(_) => "idle".to_owned(),
                };
                live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                say(format!("CLOSED {n} {code}"));
            });
            Ok::<_, String>(())
        }));
    }
    let mut ready = 0;
    for c in connects {
        match rt.block_on(c)? {
            Ok(()) => ready += 1,
            Err(e) => eprintln!("revocation-sessions: {e}"),
        }
    }
    say(format!("READY {ready}"));
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "COUNT" => say(format!(
                "LIVE {}",
                live.load(std::sync::atomic::Ordering::SeqCst)
            )),
            _ => break,
        }
    }
    Ok(())
}
