//! Figure 14: issuance through the CA service with 1, 2 and 3 replicas on one PostgreSQL
//! database against 1 replica on SQLite, 16 concurrent requesters, durable everywhere (SQLite
//! WAL `synchronous=FULL`; PostgreSQL `fsync=on`, `synchronous_commit=on`). Each replica is
//! the service in a child process (this binary with `--ca-service DIR WRITER`: one CA
//! directory, one writer id per replica), the PostgreSQL server is a `PgCluster` of the bench's
//! own on 127.0.0.1, and the requesters' kept-alive mTLS connections go round-robin over the
//! replicas' addresses (what an L4 balancer does). Requests and CSRs as in figure 12, made
//! before the clock starts. All four configurations run side by side; each round measures all
//! of them, in an order rotated from round to round, and the median round counts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use agentid_ca::CertificateAuthority;
use agentid_test_support::pg::PgCluster;

use crate::ca_service::{ca_dir, csrs, over_https, platform_client, policy, Service};
use crate::fixtures::Res;
use crate::harness::median;
use crate::report::{Report, Target};

/// Concurrent requesters.
const REQUESTERS: usize = 16;
/// The PostgreSQL replica counts measured.
const REPLICAS: [usize; 3] = [1, 2, 3];

/// A CA directory in `parent` whose store is the database `db` of `pg`.
fn pg_dir(parent: &Path, pg: &PgCluster, db: &str) -> Res<PathBuf> {
    pg.create_database(db);
    let dir = parent.join(db);
    let mut opts =
        agentid_ca::InitOptions::new(agentid_protocol::TrustDomain::parse("example.org")?);
    opts.store = Some(pg.url(db));
    agentid_ca::init_ca(&dir, &opts, SystemTime::now())?;
    std::fs::write(dir.join("policy.toml"), policy())?;
    Ok(dir)
}

/// Figure 14.
pub fn run(quick: bool, report: &mut Report) -> Res<()> {
    report.section(
        "14. CA issuance over HTTPS: 1, 2, 3 replicas on one PostgreSQL database vs 1 on SQLite (16 requesters, durable)",
    );
    let (n, rounds) = if quick { (64, 3) } else { (256, 5) };
    let pg = PgCluster::start_durable().ok_or("figure 14 needs PostgreSQL (initdb, pg_ctl)")?;
    let parent = tempfile::tempdir()?;
    let sqlite = ca_dir(parent.path(), "sqlite")?;
    let shared = pg_dir(parent.path(), &pg, "agentid")?;
    let sqlite_service = Service::start(&sqlite)?;
    // Started one after the other (each opens the store before it listens).
    let replicas = (0..REPLICAS.len())
        .map(|i| Service::start_as(&shared, &format!("replica-{i}")))
        .collect::<Res<Vec<_>>>()?;
    let pg_addrs: Vec<SocketAddr> = replicas.iter().map(|s| s.addr).collect();
    let sqlite_client = platform_client(&sqlite)?;
    let pg_client = platform_client(&shared)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // (name, client, addresses); configuration 0 is the baseline.
    let mut configs = vec![(
        "sqlite.1".to_owned(),
        &sqlite_client,
        vec![sqlite_service.addr],
    )];
    for &k in &REPLICAS {
        let addrs = pg_addrs.get(..k).ok_or("too few replicas")?.to_vec();
        configs.push((format!("pg.{k}"), &pg_client, addrs));
    }
    // Warm every replica (connections, caches, the first commits).
    for (_, client, addrs) in &configs {
        over_https(&rt, client, addrs, csrs(REQUESTERS)?, REQUESTERS)?;
    }
    let mut ns: Vec<Vec<f64>> = configs.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        for j in 0..configs.len() {
            let i = (j + r) % configs.len();
            let (_, client, addrs) = configs.get(i).ok_or("configuration")?;
            let x = over_https(&rt, client, addrs, csrs(n)?, REQUESTERS)?;
            ns.get_mut(i).ok_or("configuration")?.push(x);
        }
    }
    drop(replicas);
    drop(sqlite_service);
    // Every issuance answered is in the shared store (warm-up and rounds, all replicas).
    let answered = REPLICAS.len() * (REQUESTERS + rounds * n);
    let stored = CertificateAuthority::open(&shared)?.issuances()?.len();
    if stored < answered {
        return Err(format!("{answered} issuances answered, {stored} in PostgreSQL").into());
    }
    let medians: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    let base = *medians.first().ok_or("no baseline")?;
    for ((name, _, addrs), m) in configs.iter().zip(&medians) {
        report.line(
            &format!("fig14.{name}"),
            1e9 / m,
            "issuances/s",
            base / m,
            &format!(
                "of 1 replica on SQLite; {} replica(s), {REQUESTERS} requesters",
                addrs.len()
            ),
            Target::None,
        );
    }
    drop(pg);
    Ok(())
}
