//! Figure 12: issuance through the CA service (`POST /v1/tasks` over mutual TLS, HTTP/1.1
//! keep-alive connections, one per requester) with the durable store and audit, 1, 4 and 16
//! concurrent requesters in this process and the service in a child process (this binary with
//! `--ca-service DIR`, the same `CaService` and options `agentid ca serve` runs), against
//! in-process `open_task` on the same kind of store (a CA directory made the same way, SQLite
//! WAL `synchronous=FULL` with group commit, audit chain) with as many threads and the same
//! requester (`svc:platform`). Every CSR is made before the clock starts. Also: the fraction of
//! the crypto limit (one CSR verify and two P-256 signs per issuance, measured alone, one core).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agentid_ca::{CertificateAuthority, KeySource, ServiceRequest, TaskRequester};
use agentid_protocol::{Algorithm, BundleSet, PeerId, SpiffeId, TaskKey, VerifierConfig};
use agentid_transport::http::{HttpClient, HttpClientConnection};
use agentid_transport::{Credential, MemoryCredentials, PeerPolicy, PeerVerification};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use rustls_pki_types::CertificateDer;

pub(crate) use crate::ca::csrs;
use crate::ca::{issue_concurrently, split};
use crate::fixtures::Res;
use crate::harness::median;
use crate::report::{Report, Target};
use crate::sigops::SigOps;

/// Concurrent requesters (and in-process threads).
const LEVELS: [usize; 3] = [1, 4, 16];
/// One request at most this long.
const T: Duration = Duration::from_secs(30);

/// The bench's policy plus the service's own rule and a platform allowed to open `worker`
/// tasks over the network.
pub(crate) fn policy() -> String {
    let mut p = crate::fixtures::policy();
    p.push_str(
        "\n[agents.worker.permissions]\n\"svc:platform\" = [\"open_task\", \"revoke\"]\n\n\
         [services.agentid-ca]\nrequesters = [\"operator\"]\n\n\
         [services.platform]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n\n\
         [services.watch-server]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n",
    );
    p
}

/// A new CA directory in `parent` with [`policy`] (also figure 13's).
pub(crate) fn ca_dir(parent: &Path, name: &str) -> Res<std::path::PathBuf> {
    let dir = parent.join(name);
    agentid_ca::init_ca(
        &dir,
        &agentid_ca::InitOptions::new(agentid_protocol::TrustDomain::parse("example.org")?),
        SystemTime::now(),
    )?;
    std::fs::write(dir.join("policy.toml"), policy())?;
    Ok(dir)
}

/// The service child process, killed when dropped.
pub(crate) struct Service {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    pub(crate) fn start(dir: &Path) -> Res<Service> {
        Self::start_as(dir, agentid_ca::audit::DEFAULT_WRITER)
    }

    /// A replica: the service on `dir` with `writer` as its audit chain writer id.
    pub(crate) fn start_as(dir: &Path, writer: &str) -> Res<Service> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--ca-service")
            .arg(dir)
            .arg(writer)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        // Guarded from here.
        let mut s = Service {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        s.addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("the service printed {line:?}"))?
            .parse()?;
        Ok(s)
    }
}

/// `--ca-service DIR WRITER`: what `agentid ca serve --ca DIR --listen 127.0.0.1:0` runs, with
/// `WRITER` as the audit chain writer id (one per replica).
pub fn child(dir: &Path, writer: &str) -> Res<()> {
    let ca = CertificateAuthority::open_as(dir, writer)?;
    let service = agentid_ca::server::CaService::new(ca, Default::default())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        service.serve_both(listener, None).await?;
        Ok(())
    })
}

/// In-process: `threads` threads calling `open_task` as `svc:platform`; wall ns per issuance.
fn in_process(ca: &CertificateAuthority, csrs: Vec<Vec<u8>>, threads: usize) -> Res<f64> {
    issue_concurrently(
        ca,
        csrs,
        threads,
        &TaskRequester::Service("platform".into()),
    )
}

/// One `POST /v1/tasks` on a kept-alive connection; an error unless the CA issued.
async fn open_over_https(conn: &mut HttpClientConnection, body: Bytes) -> Res<()> {
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/tasks")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)?;
    let resp = tokio::time::timeout(T, conn.send(req)).await??;
    let status = resp.status();
    let body = tokio::time::timeout(T, resp.into_body().collect())
        .await?
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!(
            "POST /v1/tasks answered {status}: {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    let r: agentid_api::CertificateResponse = serde_json::from_slice(&body)?;
    if r.certs.len() != 2 || r.grant.is_none() {
        return Err("an issuance without its chain or grant".into());
    }
    Ok(())
}

/// Over HTTPS: one kept-alive connection per requester, opened before the clock starts,
/// round-robin over `addrs` (an L4 balancer's choice); each sends its share of requests one
/// after the other. Wall ns per issuance.
pub(crate) fn over_https(
    rt: &tokio::runtime::Runtime,
    client: &HttpClient,
    addrs: &[SocketAddr],
    csrs: Vec<Vec<u8>>,
    requesters: usize,
) -> Res<f64> {
    let n = csrs.len();
    let bodies: Vec<Bytes> = csrs
        .iter()
        .map(|der| -> Res<Bytes> {
            let req = agentid_api::OpenTaskRequest {
                csr: URL_SAFE_NO_PAD.encode(der),
                task: agentid_api::TokenRequest {
                    agent: "worker".into(),
                    task: None,
                    scope: vec!["repo:read".into()],
                    audience: None,
                    max_depth: None,
                    ttl_secs: None,
                    task_ttl_secs: None,
                    principal: None,
                    may_delegate_to: None,
                    limits: None,
                    expires_in_secs: None,
                },
            };
            Ok(Bytes::from(serde_json::to_vec(&req)?))
        })
        .collect::<Res<_>>()?;
    let parts = split(bodies, requesters);
    rt.block_on(async {
        let mut conns = Vec::with_capacity(requesters);
        for i in 0..requesters {
            let addr = *addrs.get(i % addrs.len().max(1)).ok_or("no address")?;
            conns.push(client.connect(addr, "ca.example.org").await?);
        }
        let start = Instant::now();
        let tasks: Vec<_> = conns
            .into_iter()
            .zip(parts)
            .map(|(mut conn, part)| {
                tokio::spawn(async move {
                    for body in part {
                        open_over_https(&mut conn, body)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok::<_, String>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        Ok(start.elapsed().as_nanos() as f64 / n as f64)
    })
}

/// A client of the service as `svc:platform` (its certificate issued by the operator).
pub(crate) fn platform_client(dir: &Path) -> Res<HttpClient> {
    let ca = CertificateAuthority::open(dir)?;
    let key = TaskKey::generate(Algorithm::Es256)?;
    let c = ca.issue_service(
        &ServiceRequest {
            service: "platform".into(),
            key: KeySource::Spki(key.public_key().to_spki_der()),
            ttl: Some(Duration::from_secs(3600)),
        },
        SystemTime::now(),
    )?;
    let chain = vec![
        CertificateDer::from(c.leaf.der.clone()),
        CertificateDer::from(c.intermediate_der.clone()),
    ];
    let mut bundles = BundleSet::new();
    bundles.insert(ca.trust_bundle()?)?;
    let verification = PeerVerification::new(
        VerifierConfig::new(SpiffeId::parse(c.identity.as_str())?, bundles)
            .danger_accept_missing_or_stale_revocations(),
    )?;
    let creds = Arc::new(MemoryCredentials::new(Credential::new(chain, key)?));
    Ok(HttpClient::builder(
        creds,
        verification,
        PeerPolicy::exact(PeerId::parse("spiffe://example.org/svc/agentid-ca")?),
    )
    .connect_timeout(T)
    .http1_only()
    .build()?)
}

/// One comparison on CA directories under `parent`: per level, the median wall ns per issuance
/// in-process and over HTTPS. Rounds alternate the order of the two paths (ABBA) at every level,
/// so that a drift of the machine's load (or of the disk's fsync latency) weighs on both.
fn compare(parent: &Path, n: usize, rounds: usize) -> Res<Vec<(usize, f64, f64)>> {
    let served = ca_dir(parent, "served")?;
    let local = ca_dir(parent, "local")?;
    let service = Service::start(&served)?;
    let client = platform_client(&served)?;
    let ca = CertificateAuthority::open(&local)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Warm both paths (connections, caches, the first fsyncs).
    over_https(&rt, &client, &[service.addr], csrs(16)?, 4)?;
    in_process(&ca, csrs(16)?, 4)?;
    let mut out = Vec::new();
    for &k in &LEVELS {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let (x, y) = (csrs(n)?, csrs(n)?);
            if r % 2 == 0 {
                a.push(in_process(&ca, x, k)?);
                b.push(over_https(&rt, &client, &[service.addr], y, k)?);
            } else {
                b.push(over_https(&rt, &client, &[service.addr], y, k)?);
                a.push(in_process(&ca, x, k)?);
            }
        }
        out.push((k, median(&mut a), median(&mut b)));
    }
    drop(service);
    // Every issuance over HTTPS is in the store with its audit record; the chain verifies.
    let audit = agentid_ca::audit::verify_dir(&served)?
        .map_err(|b| format!("the served CA's audit chain does not verify: {b:?}"))?;
    let stored = CertificateAuthority::open(&served)?.issuances()?.len();
    if (audit.issuances as usize) < stored {
        return Err("issuances without audit records".into());
    }
    Ok(out)
}

/// `--profile-ca-service in_process|https disk|tmpfs N`: N issuances by one requester, the loop of
/// figure 12 alone (the service a child process, started and warmed before the loop), for
/// `perf stat` (task-clock and context switches per issuance, both processes) or `strace -f -c`.
/// Prints the wall time per issuance.
pub fn profile(args: &[String]) -> Res<()> {
    let mode = args.get(1).map(String::as_str).unwrap_or("https");
    let place = args.get(2).map(String::as_str).unwrap_or("tmpfs");
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let parent = match place {
        "disk" => tempfile::tempdir()?,
        "tmpfs" => tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?,
        other => return Err(format!("place {other:?}: disk or tmpfs").into()),
    };
    let dir = ca_dir(parent.path(), "ca")?;
    let ns = match mode {
        "in_process" => {
            let ca = CertificateAuthority::open(&dir)?;
            in_process(&ca, csrs(16)?, 1)?;
            in_process(&ca, csrs(n)?, 1)?
        }
        "https" => {
            let service = Service::start(&dir)?;
            let client = platform_client(&dir)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            over_https(&rt, &client, &[service.addr], csrs(16)?, 1)?;
            over_https(&rt, &client, &[service.addr], csrs(n)?, 1)?
        }
        other => return Err(format!("mode {other:?}: in_process or https").into()),
    };
    println!(
        "{mode} {place}: {:.0} us per issuance, {n} issuances",
        ns / 1e3
    );
    Ok(())
}

/// Figure 12.
pub fn run(ops: &SigOps, quick: bool, report: &mut Report) -> Res<()> {
    report.section(
        "12. CA issuance through the service (mTLS, keep-alive, durable store + audit, requesters in another process) vs in-process open_task",
    );
    let (n, rounds) = if quick { (48, 5) } else { (128, 9) };
    let limit = ops.p256_verify + ops.p256_sign_asn1 + ops.p256_sign;
    let per_s = |ns: f64| 1e9 / ns;
    report.line(
        "fig12.crypto_limit",
        per_s(limit),
        "issuances/s",
        1.0,
        "baseline: 1 P-256 verify + 2 P-256 sign, raw, one core",
        Target::None,
    );
    // On disk (durable: one fsync per group commit), then the same on tmpfs, where fsync costs
    // nothing: the service's own CPU overhead without the disk's latency and its noise.
    let disk = tempfile::tempdir()?;
    let shm = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    for (place, parent, target) in [
        ("disk", disk.path(), Target::AtLeast(0.8)),
        ("tmpfs", shm.path(), Target::None),
    ] {
        for (k, l, h) in compare(parent, n, rounds)? {
            report.line(
                &format!("fig12.{place}.in_process.{k}"),
                per_s(l),
                "issuances/s",
                limit / l,
                &format!("of the crypto limit (one core's); {k} threads"),
                Target::None,
            );
            report.line(
                &format!("fig12.{place}.https.{k}"),
                per_s(h),
                "issuances/s",
                l / h,
                &format!(
                    "of in-process open_task at {k}; {:.2}x of the crypto limit (one core's)",
                    limit / h
                ),
                target,
            );
        }
    }
    Ok(())
}
