//! Figure 5: CA issuance from a CSR (CSR signature check, leaf, root grant), sequentially on one
//! core: with the durable SQLite store (WAL, `synchronous=FULL`, group commit: one transaction
//! and fsync per batch of pending issuances, which is one issuance when issuing sequentially)
//! and the audit file, the same with 2 concurrent issuers (threads), with SQLite but the audit log to `tracing` only, without any
//! store (an in-memory [`Store`] below, same lookups), and the crypto limit: the same signature
//! operations raw (one P-256 verify, two P-256 signs).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Instant, SystemTime};

use agentid_ca::material::{self, files};
use agentid_ca::store::{Binding, BootstrapRecord, IdentityRecord, IssuanceCommit, TaskRecord};
use agentid_ca::{
    AuditLog, CaConfig, CaError, CaParts, CertificateAuthority, FileX509Signer, IssuanceRecord,
    KeySource, OpenTaskRequest, Policy, RevocationKind, RevocationRecord, SqliteStore, Store,
    TaskRequester,
};
use agentid_protocol::{AuthorityKey, Scope};

use crate::fixtures::{Pki, Res};
use crate::harness::median;
use crate::report::{Report, Target};
use crate::sigops::SigOps;

type CaResult<T> = agentid_ca::Result<T>;

/// A store in memory: the same checks as the SQLite store's `commit_issuance`, in hash maps.
#[derive(Default)]
struct MemStore {
    identities: HashMap<String, IdentityRecord>,
    keys: HashMap<String, String>,
    issuances: Vec<IssuanceRecord>,
    tasks: HashMap<String, TaskRecord>,
    revocations: HashMap<(RevocationKind, String), RevocationRecord>,
}

impl Store for MemStore {
    fn commit_issuance(&mut self, c: &IssuanceCommit<'_>) -> CaResult<()> {
        for (kind, value) in c.refuse_if_revoked {
            if self.revocations.contains_key(&(*kind, value.clone())) {
                return Err(CaError::Revoked {
                    kind: kind.as_str(),
                    value: value.clone(),
                });
            }
        }
        let id = c.identity;
        if let Some(owner) = self.keys.get(&id.jkt) {
            if owner != &id.identity {
                return Err(CaError::KeyInUse {
                    jkt: id.jkt.clone(),
                    bound_to: owner.clone(),
                });
            }
        }
        match (self.identities.get(&id.identity), c.binding) {
            (Some(_), Binding::Fresh) => return Err(CaError::IdentityExists(id.identity.clone())),
            (None, Binding::SameKey) => return Err(CaError::UnknownIdentity(id.identity.clone())),
            _ => {}
        }
        self.keys.insert(id.jkt.clone(), id.identity.clone());
        let mut id = id.clone();
        if let Some(old) = self.identities.get(&id.identity) {
            // The same key keeps the time of its first certificate, as the stores do.
            if old.jkt == id.jkt {
                id.key_bound_at = old.key_bound_at.or(id.key_bound_at);
            }
        }
        self.identities.insert(id.identity.clone(), id);
        if let Some(t) = c.task {
            self.tasks.insert(t.task.clone(), t.clone());
        }
        self.issuances.push(c.record.clone());
        Ok(())
    }
    fn identity(&self, identity: &str) -> CaResult<Option<IdentityRecord>> {
        Ok(self.identities.get(identity).cloned())
    }
    fn key_owner(&self, jkt: &str) -> CaResult<Option<String>> {
        Ok(self.keys.get(jkt).cloned())
    }
    fn issuance(&self, serial: &str) -> CaResult<Option<IssuanceRecord>> {
        Ok(self.issuances.iter().find(|r| r.serial == serial).cloned())
    }
    fn issuances(&self) -> CaResult<Vec<IssuanceRecord>> {
        Ok(self.issuances.clone())
    }
    fn task(&self, task: &str) -> CaResult<Option<TaskRecord>> {
        Ok(self.tasks.get(task).cloned())
    }
    fn task_by_jti(&self, jti: &str) -> CaResult<Option<TaskRecord>> {
        Ok(self.tasks.values().find(|t| t.grant_jti == jti).cloned())
    }
    fn latest_expiry(&self, _kind: RevocationKind, _value: &str) -> CaResult<Option<u64>> {
        Ok(None)
    }
    fn add_revocation(
        &mut self,
        r: &RevocationRecord,
        _audit: &agentid_ca::AuditEvent,
    ) -> CaResult<()> {
        self.revocations
            .insert((r.kind, r.value.clone()), r.clone());
        Ok(())
    }
    fn revocations(&self) -> CaResult<Vec<RevocationRecord>> {
        Ok(self.revocations.values().cloned().collect())
    }
    fn add_bootstrap(
        &mut self,
        _b: &BootstrapRecord,
        _binding: Option<&str>,
        _bound: Option<&agentid_ca::store::TokenBound>,
        _audit: &agentid_ca::AuditEvent,
    ) -> CaResult<()> {
        Ok(())
    }
    fn bootstrap(&self, _hash: &str) -> CaResult<Option<BootstrapRecord>> {
        Ok(None)
    }
    // No bootstrap token is kept (`add_bootstrap` keeps none), so none names a task.
    fn unredeemed_token_agent(&self, _task: &str) -> CaResult<Option<String>> {
        Ok(None)
    }
}

/// The CA of `dir` assembled from its files, with `store` and `audit`.
fn ca_with(dir: &Path, store: Box<dyn Store>, audit: AuditLog) -> Res<CertificateAuthority> {
    let config = CaConfig::load(&dir.join(files::CONFIG))?;
    let policy = Policy::load(&dir.join(files::POLICY))?;
    let cert = |name: &str| -> Res<Vec<u8>> {
        Ok(material::read_certificates(&dir.join(name))?
            .first()
            .ok_or("no certificate")?
            .to_vec())
    };
    let key = |name: &str| -> Res<Vec<u8>> { Ok(material::read_private_key(&dir.join(name))?) };
    let issuer = FileX509Signer::from_pkcs8_der(&key(files::INTERMEDIATE_KEY)?, config.key_type)?;
    Ok(CertificateAuthority::from_parts(CaParts {
        config,
        policy,
        root_der: cert(files::ROOT_CERT)?,
        intermediate_der: cert(files::INTERMEDIATE_CERT)?,
        issuer: Box::new(issuer),
        grant_signer: Box::new(AuthorityKey::from_pkcs8_der(&key(files::GRANT_KEY)?)?),
        revocation_signer: Box::new(AuthorityKey::from_pkcs8_der(&key(files::REVOCATION_KEY)?)?),
        store,
        audit,
        audit_signer: None,
    })?)
}

/// `n` fresh P-256 keys as CSRs (made before the clock starts).
pub(crate) fn csrs(n: usize) -> Res<Vec<Vec<u8>>> {
    (0..n)
        .map(|_| -> Res<Vec<u8>> {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            Ok(rcgen::CertificateParams::new(Vec::<String>::new())?
                .serialize_request(&kp)?
                .der()
                .to_vec())
        })
        .collect()
}

/// Issues one task certificate + grant per CSR, in rounds; returns the median ns per issuance.
fn issue_all(ca: &CertificateAuthority, csrs: Vec<Vec<u8>>, rounds: usize) -> Res<f64> {
    let scope = Scope::parse("repo:read")?;
    let per_round = (csrs.len() / rounds).max(1);
    let mut samples = Vec::new();
    let mut it = csrs.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<Vec<u8>> = it.by_ref().take(per_round).collect();
        let n = batch.len();
        let start = Instant::now();
        for der in batch {
            let req = OpenTaskRequest::new(
                "worker",
                KeySource::Csr(der),
                TaskRequester::Operator,
                scope.clone(),
            );
            ca.open_task(&req, SystemTime::now())?;
        }
        samples.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    Ok(median(&mut samples))
}

/// Splits `v` round-robin into `k` parts.
pub(crate) fn split<T>(v: Vec<T>, k: usize) -> Vec<Vec<T>> {
    let mut parts: Vec<Vec<T>> = (0..k).map(|_| Vec::new()).collect();
    for (i, x) in v.into_iter().enumerate() {
        if let Some(p) = parts.get_mut(i % k) {
            p.push(x);
        }
    }
    parts
}

/// Issues one task certificate + grant per CSR from `threads` concurrent issuers, each request
/// from `requester`; returns the wall-clock ns per issuance.
pub(crate) fn issue_concurrently(
    ca: &CertificateAuthority,
    csrs: Vec<Vec<u8>>,
    threads: usize,
    requester: &TaskRequester,
) -> Res<f64> {
    let scope = Scope::parse("repo:read")?;
    let n = csrs.len();
    let parts = split(csrs, threads);
    let start = Instant::now();
    std::thread::scope(|s| -> Res<()> {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                let scope = scope.clone();
                s.spawn(move || -> CaResult<()> {
                    for der in part {
                        let req = OpenTaskRequest::new(
                            "worker",
                            KeySource::Csr(der),
                            requester.clone(),
                            scope.clone(),
                        );
                        ca.open_task(&req, SystemTime::now())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "issuer thread panicked")??;
        }
        Ok(())
    })?;
    Ok(start.elapsed().as_nanos() as f64 / n as f64)
}

/// A 4 KiB append + fdatasync in the CA's directory: the durable-write floor of this disk.
fn fsync_ns(dir: &Path, n: usize) -> Res<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let block = [0u8; 4096];
    let mut samples = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(start.elapsed().as_nanos() as f64);
    }
    std::fs::remove_file(&path)?;
    Ok(median(&mut samples))
}

/// Figure 5.
pub fn run(pki: &Pki, ops: &SigOps, quick: bool, report: &mut Report) -> Res<()> {
    report.section("5. CA issuance from a CSR (CSR check, leaf, root grant), one core, sequential");
    let dir = pki.dir.path();
    let (n_store, n_mem, rounds) = if quick {
        (300, 1500, 5)
    } else {
        (1500, 6000, 9)
    };
    let durable = CertificateAuthority::open(dir)?;
    let sqlite_only = ca_with(
        dir,
        Box::new(SqliteStore::open(&dir.join(files::DB))?),
        AuditLog::tracing_only(),
    )?;
    let memory = ca_with(dir, Box::new(MemStore::default()), AuditLog::tracing_only())?;

    // The same SQLite store on tmpfs, where fsync costs nothing: the store's CPU work alone.
    let shm = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    agentid_ca::init_ca(
        shm.path(),
        &agentid_ca::InitOptions::new(pki.td.clone()),
        SystemTime::now(),
    )?;
    std::fs::write(shm.path().join(files::POLICY), crate::fixtures::policy())?;
    let on_tmpfs = ca_with(
        shm.path(),
        Box::new(SqliteStore::open(&shm.path().join(files::DB))?),
        AuditLog::tracing_only(),
    )?;

    let t_mem = issue_all(&memory, csrs(n_mem)?, rounds)?;
    let t_tmpfs = issue_all(&on_tmpfs, csrs(n_store)?, rounds)?;
    let t_sqlite = issue_all(&sqlite_only, csrs(n_store)?, rounds)?;
    let t_durable = issue_all(&durable, csrs(n_store)?, rounds)?;
    let t_durable2 = issue_concurrently(&durable, csrs(n_store)?, 2, &TaskRequester::Operator)?;
    let t_fsync = fsync_ns(dir, if quick { 50 } else { 200 })?;
    // One CSR signature verification, the leaf signature and the grant signature.
    let limit = ops.p256_verify + ops.p256_sign_asn1 + ops.p256_sign;
    let per_s = |ns: f64| 1e9 / ns;
    report.line(
        "fig5.crypto_limit",
        per_s(limit),
        "issuances/s",
        1.0,
        "baseline: 1 P-256 verify + 2 P-256 sign, raw",
        Target::None,
    );
    report.line(
        "fig5.issue.no_store",
        per_s(t_mem),
        "issuances/s",
        limit / t_mem,
        "of the crypto limit",
        Target::None,
    );
    report.line(
        "fig5.issue.sqlite_on_tmpfs",
        per_s(t_tmpfs),
        "issuances/s",
        limit / t_tmpfs,
        "of the crypto limit; no real fsync: the store's CPU cost",
        Target::None,
    );
    report.line(
        "fig5.issue.sqlite_no_audit_file",
        per_s(t_sqlite),
        "issuances/s",
        limit / t_sqlite,
        "of the crypto limit",
        Target::None,
    );
    report.line(
        "fig5.issue.sqlite_durable",
        per_s(t_durable),
        "issuances/s",
        limit / t_durable,
        "of the crypto limit; SQLite WAL synchronous=FULL + audit file",
        Target::AtLeast(0.60),
    );
    report.line(
        "fig5.issue.sqlite_durable_2_issuers",
        per_s(t_durable2),
        "issuances/s",
        limit / t_durable2,
        "of the crypto limit (one core's); 2 concurrent issuers sharing group commits + audit file",
        Target::None,
    );
    report.time(
        "fig5.fsync_4k",
        t_fsync,
        "fsync",
        t_fsync / limit,
        "crypto limit per issuance",
        Target::None,
    );
    // Group commit: B issuances per transaction share one fsync. Per issuance, roughly
    // (store on tmpfs) + (durable - tmpfs) / B; the batch that reaches 60% of the limit:
    let io = (t_sqlite - t_tmpfs).max(0.0);
    let budget = limit / 0.60 - t_tmpfs;
    let batch = if budget > 0.0 {
        (io / budget).ceil().max(1.0)
    } else {
        f64::INFINITY
    };
    report.line(
        "fig5.group_commit_batch_needed",
        batch,
        "issuances/commit",
        1.0,
        &format!(
            "estimate: store CPU (tmpfs) {:.0} us + durable I/O {:.0} us / batch <= limit / 0.6 = {:.0} us; inf = unreachable by group commit alone",
            t_tmpfs / 1000.0,
            io / 1000.0,
            limit / 0.6 / 1000.0
        ),
        Target::None,
    );
    Ok(())
}
