//! Figures 6 and 7 over loopback TCP (127.0.0.1 only, bounded counts, timeouts everywhere).
//!
//! Figure 6: sessions per second and client-side p50/p99 latency with 1 and 2 concurrent
//! clients, client and server in this process on a 2-worker tokio runtime, against raw
//! tokio-rustls mTLS (same certificates and settings; the raw server writes one byte after its
//! handshake so that both measure "the server has accepted", as agentid's accept frame does).
//!
//! Figure 7: memory per idle session. The clients run in a child process (this binary with
//! `--memory-client`), so each side's RSS delta is its own; the server keeps every session open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentid_protocol::{
    BundleSet, PeerId, SpiffeId, TaskKey, TrustBundle, TrustDomain, VerifierConfig,
};
use agentid_transport::{
    AgentClient, AgentServer, Credential, MemoryCredentials, PeerPolicy, PeerVerification,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::fixtures::{server_name, Pki, Res};
use crate::harness::{median, percentile};
use crate::report::{Report, Target};

/// Established connections a server keeps open (figure 7).
type Held = Arc<Mutex<Vec<Box<dyn Send>>>>;

const STEP_TIMEOUT: Duration = Duration::from_secs(20);

fn runtime() -> Res<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Which stack a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Raw tokio-rustls mTLS.
    Raw,
    /// agentid sessions (chain of depth 2).
    Agentid,
}

/// The depth of the chain the clients of figures 6 and 7 present.
const NET_DEPTH: usize = 2;

async fn raw_serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    keep: Option<Held>,
    done: Arc<AtomicUsize>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, keep, done) = (acceptor.clone(), keep.clone(), done.clone());
        tokio::spawn(async move {
            if let Ok(Ok(mut tls)) = timeout(STEP_TIMEOUT, acceptor.accept(tcp)).await {
                if tls.write_all(b"k").await.is_ok() && tls.flush().await.is_ok() {
                    if let Some(k) = keep {
                        if let Ok(mut v) = k.lock() {
                            v.push(Box::new(tls));
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
}

async fn agentid_serve(
    listener: TcpListener,
    server: AgentServer,
    keep: Option<Held>,
    done: Arc<AtomicUsize>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (server, keep, done) = (server.clone(), keep.clone(), done.clone());
        tokio::spawn(async move {
            if let Ok(session) = server.accept(tcp).await {
                if let Some(k) = keep {
                    if let Ok(mut v) = k.lock() {
                        v.push(Box::new(session));
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}

/// One client-side connection of either mode; returns the established stream (kept or dropped).
async fn connect_one(
    addr: SocketAddr,
    raw: &TlsConnector,
    client: &AgentClient,
    mode: Mode,
) -> Res<Box<dyn Send>> {
    match mode {
        Mode::Raw => {
            let tcp = timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await??;
            tcp.set_nodelay(true)?;
            let mut tls = timeout(STEP_TIMEOUT, raw.connect(server_name(), tcp)).await??;
            let mut b = [0u8; 1];
            timeout(STEP_TIMEOUT, tls.read_exact(&mut b)).await??;
            Ok(Box::new(tls))
        }
        Mode::Agentid => Ok(Box::new(
            timeout(STEP_TIMEOUT, client.connect(addr)).await??,
        )),
    }
}

/// Runs `total` sessions with `clients` concurrent clients; returns (sessions/s, latencies ns).
async fn load(
    addr: SocketAddr,
    raw: TlsConnector,
    client: AgentClient,
    mode: Mode,
    clients: usize,
    total: usize,
) -> Res<(f64, Vec<f64>)> {
    let start = Instant::now();
    let mut set = JoinSet::new();
    for c in 0..clients {
        let (raw, client) = (raw.clone(), client.clone());
        let n = total / clients + usize::from(c < total % clients);
        set.spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                connect_one(addr, &raw, &client, mode).await?;
                lat.push(t.elapsed().as_nanos() as f64);
            }
            Res::Ok(lat)
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), all))
}

/// Figure 6.
pub fn throughput(pki: &Pki, quick: bool, report: &mut Report) -> Res<()> {
    report.section("6. loopback TCP (tokio, 2 workers, client and server in this process)");
    let rt = runtime()?;
    let (total, rounds) = if quick { (300, 3) } else { (1500, 5) };
    let raw = TlsConnector::from(pki.raw_client_config(NET_DEPTH)?);
    let client = pki.agentid_client(NET_DEPTH)?;
    let acceptor = TlsAcceptor::from(pki.raw_server_config()?);
    let server = pki.agentid_server(None)?;
    let (raw_addr, agentid_addr) = rt.block_on(async {
        let l1 = TcpListener::bind("127.0.0.1:0").await?;
        let l2 = TcpListener::bind("127.0.0.1:0").await?;
        let addrs = (l1.local_addr()?, l2.local_addr()?);
        tokio::spawn(raw_serve(l1, acceptor, None, Arc::new(AtomicUsize::new(0))));
        tokio::spawn(agentid_serve(
            l2,
            server,
            None,
            Arc::new(AtomicUsize::new(0)),
        ));
        Res::Ok(addrs)
    })?;
    for clients in [1usize, 2] {
        let mut rates = [Vec::new(), Vec::new()];
        let mut lats = [Vec::new(), Vec::new()];
        // Warm-up, then alternate raw and agentid rounds.
        rt.block_on(load(
            raw_addr,
            raw.clone(),
            client.clone(),
            Mode::Raw,
            clients,
            20,
        ))?;
        rt.block_on(load(
            agentid_addr,
            raw.clone(),
            client.clone(),
            Mode::Agentid,
            clients,
            20,
        ))?;
        for _ in 0..rounds {
            for (i, (mode, addr)) in [(Mode::Raw, raw_addr), (Mode::Agentid, agentid_addr)]
                .into_iter()
                .enumerate()
            {
                let (rate, lat) = rt.block_on(load(
                    addr,
                    raw.clone(),
                    client.clone(),
                    mode,
                    clients,
                    total / rounds,
                ))?;
                if let (Some(r), Some(l)) = (rates.get_mut(i), lats.get_mut(i)) {
                    r.push(rate);
                    l.extend(lat);
                }
            }
        }
        let [raw_rates, ours_rates] = &mut rates;
        let [raw_lat, ours_lat] = &mut lats;
        let (raw_rate, our_rate) = (median(raw_rates), median(ours_rates));
        report.line(
            &format!("fig6.raw_tokio_rustls.clients{clients}.rate"),
            raw_rate,
            "sessions/s",
            1.0,
            "baseline",
            Target::None,
        );
        report.line(
            &format!("fig6.agentid.clients{clients}.rate"),
            our_rate,
            "sessions/s",
            our_rate / raw_rate,
            "raw tokio-rustls sessions/s",
            Target::None,
        );
        for (p, name) in [(50.0, "p50"), (99.0, "p99")] {
            let (r, o) = (percentile(raw_lat, p), percentile(ours_lat, p));
            report.time(
                &format!("fig6.raw_tokio_rustls.clients{clients}.{name}"),
                r,
                "session",
                1.0,
                "baseline",
                Target::None,
            );
            report.time(
                &format!("fig6.agentid.clients{clients}.{name}"),
                o,
                "session",
                o / r,
                &format!("raw tokio-rustls {name}"),
                Target::None,
            );
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// What the memory child needs to build its clients.
#[derive(Serialize, Deserialize)]
struct ClientMaterial {
    trust_domain: String,
    bundle_json: String,
    revocations: String,
    leaf_der: Vec<u8>,
    intermediate_der: Vec<u8>,
    root_der: Vec<u8>,
    key_pkcs8: Vec<u8>,
    identity: String,
    chain: String,
    server_identity: String,
}

/// Resident set size of this process, KiB (from /proc/self/status).
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// A `/proc/self/status` field in KiB (0 if absent).
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn build_clients(m: &ClientMaterial) -> Res<(TlsConnector, AgentClient)> {
    let td = TrustDomain::parse(&m.trust_domain)?;
    let mut bundles = BundleSet::new();
    bundles.insert(TrustBundle::parse(&td, m.bundle_json.as_bytes())?)?;
    let own = SpiffeId::parse(&m.identity)?;
    let mut cfg = VerifierConfig::new(own, bundles);
    cfg.apply_revocation_list(&m.revocations)?;
    let certs = vec![
        CertificateDer::from(m.leaf_der.clone()),
        CertificateDer::from(m.intermediate_der.clone()),
    ];
    let cred = Credential::new(certs.clone(), TaskKey::from_pkcs8_der(&m.key_pkcs8)?)?
        .with_chain(m.chain.clone());
    let PeerId::Task(server) = PeerId::parse(&m.server_identity)? else {
        return Err("the server is not a task identity".into());
    };
    let client = AgentClient::builder(
        Arc::new(MemoryCredentials::new(cred)),
        PeerVerification::new(cfg)?,
        PeerPolicy::agent(server.agent()),
    )
    .build()?;
    let provider = agentid_transport::provider::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(m.root_der.clone()))?;
    let verifier = crate::fixtures::ChainOnlyVerifier::new(Arc::new(roots));
    let mut raw = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, PrivateKeyDer::Pkcs8(m.key_pkcs8.clone().into()))?;
    raw.alpn_protocols = vec![agentid_transport::provider::ALPN.to_vec()];
    raw.resumption = rustls::client::Resumption::disabled();
    raw.enable_sni = false;
    Ok((TlsConnector::from(Arc::new(raw)), client))
}

const WARM: usize = 100;

/// The child process of figure 7: connects `WARM` sessions, says `warm`, waits for `go`,
/// connects `count` more, says `done <KiB per session>`, and holds them until stdin closes.
pub fn memory_client(dir: &Path, addr: SocketAddr, count: usize, mode: Mode) -> Res<()> {
    let m: ClientMaterial = serde_json::from_slice(&std::fs::read(dir.join("client.json"))?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (raw, client) = build_clients(&m)?;
        let mut held: Vec<Box<dyn Send>> = Vec::with_capacity(count + WARM);
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        let mut out = tokio::io::stdout();
        connect_many(addr, &raw, &client, mode, WARM, &mut held).await?;
        let before = rss_kib();
        out.write_all(b"warm\n").await?;
        out.flush().await?;
        let _ = timeout(STEP_TIMEOUT, stdin.next_line()).await??;
        connect_many(addr, &raw, &client, mode, count, &mut held).await?;
        let per = (rss_kib().saturating_sub(before)) as f64 / count as f64;
        out.write_all(format!("done {per:.3}\n").as_bytes()).await?;
        out.flush().await?;
        while let Ok(Ok(Some(_))) = timeout(Duration::from_secs(120), stdin.next_line()).await {}
        drop(held);
        Res::Ok(())
    })
}

async fn connect_many(
    addr: SocketAddr,
    raw: &TlsConnector,
    client: &AgentClient,
    mode: Mode,
    n: usize,
    held: &mut Vec<Box<dyn Send>>,
) -> Res<()> {
    // Four in flight: the server's handshake cap is far above that.
    let mut set = JoinSet::new();
    let mut started = 0;
    while started < n || !set.is_empty() {
        while started < n && set.len() < 4 {
            let (raw, client) = (raw.clone(), client.clone());
            set.spawn(async move {
                connect_one(addr, &raw, &client, mode)
                    .await
                    .map_err(|e| e.to_string())
            });
            started += 1;
        }
        if let Some(r) = set.join_next().await {
            held.push(r?.map_err(|e| -> crate::fixtures::BoxError { e.into() })?);
        }
    }
    Ok(())
}

fn write_material(pki: &Pki, dir: &Path) -> Res<()> {
    let h = pki.holders.get(NET_DEPTH).ok_or("no holder")?;
    let m = ClientMaterial {
        trust_domain: pki.td.as_str().to_owned(),
        bundle_json: pki.bundle.to_json(),
        revocations: pki.revocations.clone(),
        leaf_der: h.leaf_der.clone(),
        intermediate_der: pki.intermediate_der.clone(),
        root_der: pki.root_der.clone(),
        key_pkcs8: h.key.danger_pkcs8_der().to_vec(),
        identity: h.id.as_str().to_owned(),
        chain: pki
            .chains
            .get(NET_DEPTH)
            .ok_or("no chain")?
            .as_str()
            .to_owned(),
        server_identity: pki.server.id.as_str().to_owned(),
    };
    std::fs::write(dir.join("client.json"), serde_json::to_vec(&m)?)?;
    Ok(())
}

/// Server and client KiB per idle session for `mode` with `count` sessions.
fn memory_run(pki: &Pki, dir: &PathBuf, count: usize, mode: Mode) -> Res<(f64, f64)> {
    let rt = runtime()?;
    let keep: Held = Arc::new(Mutex::new(Vec::with_capacity(count + WARM)));
    let done = Arc::new(AtomicUsize::new(0));
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    match mode {
        Mode::Raw => rt.spawn(raw_serve(
            listener,
            TlsAcceptor::from(pki.raw_server_config()?),
            Some(keep.clone()),
            done.clone(),
        )),
        Mode::Agentid => rt.spawn(agentid_serve(
            listener,
            pki.agentid_server(None)?,
            Some(keep.clone()),
            done.clone(),
        )),
    };
    let result = rt.block_on(async {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("--memory-client")
            .arg(dir)
            .arg(addr.to_string())
            .arg(count.to_string())
            .arg(if mode == Mode::Raw { "raw" } else { "agentid" })
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or("no child stdin")?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
        let deadline = Duration::from_secs(600);
        let warm = timeout(deadline, lines.next_line()).await??;
        if warm.as_deref() != Some("warm") {
            return Err(format!("memory client: unexpected {warm:?}").into());
        }
        wait_for(&done, WARM).await?;
        let before = rss_kib();
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        let line = timeout(deadline, lines.next_line())
            .await??
            .ok_or("memory client ended early")?;
        let client_per: f64 = line
            .strip_prefix("done ")
            .ok_or("memory client: bad reply")?
            .trim()
            .parse()?;
        wait_for(&done, WARM + count).await?;
        let server_per = rss_kib().saturating_sub(before) as f64 / count as f64;
        drop(stdin);
        let _ = timeout(Duration::from_secs(30), child.wait()).await;
        Res::Ok((server_per, client_per))
    });
    if let Ok(mut v) = keep.lock() {
        v.clear();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn wait_for(done: &AtomicUsize, n: usize) -> Res<()> {
    let start = Instant::now();
    while done.load(Ordering::SeqCst) < n {
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "only {} of {n} sessions accepted",
                done.load(Ordering::SeqCst)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Figure 7.
pub fn memory(pki: &Pki, quick: bool, report: &mut Report) -> Res<()> {
    let count = if quick { 2_000 } else { 10_000 };
    report.section(&format!("7. memory per idle session, {count} live sessions on loopback (clients in a child process)"));
    let dir = tempfile::tempdir()?;
    write_material(pki, dir.path())?;
    let path = dir.path().to_path_buf();
    let (raw_server, raw_client) = memory_run(pki, &path, count, Mode::Raw)?;
    let (server, client) = memory_run(pki, &path, count, Mode::Agentid)?;
    report.line(
        "fig7.raw_tokio_rustls.server",
        raw_server,
        "KiB/session",
        1.0,
        "baseline",
        Target::None,
    );
    report.line(
        "fig7.raw_tokio_rustls.client",
        raw_client,
        "KiB/session",
        1.0,
        "baseline",
        Target::None,
    );
    report.line(
        "fig7.agentid.server",
        server,
        "KiB/session",
        server / 32.0,
        &format!("of 32 KiB; raw tokio-rustls server {raw_server:.1} KiB"),
        Target::AtMost(1.0),
    );
    report.line(
        "fig7.agentid.client",
        client,
        "KiB/session",
        client / 32.0,
        &format!("of 32 KiB; raw tokio-rustls client {raw_client:.1} KiB"),
        Target::AtMost(1.0),
    );
    Ok(())
}
