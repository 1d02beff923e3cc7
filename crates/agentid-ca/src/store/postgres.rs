//! The PostgreSQL store (feature `postgres`): several CA replicas on one database.
//!
//! * **Same contract as SQLite.** The same [`Store`] trait, the same refusals, proven by the
//!   same test suite.
//! * **Uniqueness by constraints, not process locks.** Serials, grant `jti`s, task ids, key
//!   bindings and identities are primary keys or unique columns; a bootstrap token is consumed
//!   by `UPDATE ... WHERE used_at IS NULL RETURNING` inside the issuance transaction. Two
//!   replicas racing for one key, identity or token: one commits, the other gets the refusal
//!   SQLite would have given.
//! * **READ COMMITTED with bounded retries** on serialization failures (`40001`) and deadlocks
//!   (`40P01`).
//! * **Publication**: one transaction locks the counter row (`UPDATE meta ... RETURNING`), reads
//!   the revocation epoch and then the entries, signs, stores the list and its audit record: a
//!   list with a higher `seq` holds every entry a lower one held.
//! * **Revocations ordered with issuances**: an issuance holds an advisory lock shared, a
//!   revocation exclusively (`REVOCATION_LOCK`), so a revocation reads (a principal's tasks, an
//!   entry's latest certificate) everything committed before it and no issuance checked before
//!   it commits after it.
//! * **Audit chain per writer**: the writer's head row is locked (`SELECT ... FOR UPDATE`) last
//!   in each transaction, so appends of one writer are serialized even across processes.
//! * **A clear error when the database is down**: connecting is bounded (`connect_timeout`),
//!   every statement too (`statement_timeout`, and a bound on each whole operation); the error
//!   is [`CaError::Store`] (`store_unavailable`, 503 with `Retry-After` in the service). A
//!   broken connection is dropped and the next operation connects again; after an operation
//!   that timed out, so is every idle connection (a failover can leave them all dead), and new
//!   operations fail at once for a second (`UNANSWERED_HOLD`).
//!   A transaction in steps (`Inner::stepped`) whose connection breaks between steps is an
//!   error: its later steps never run on a new connection (outside the transaction).
//! * tokio-postgres runs on the store's own runtime; the trait stays synchronous, callable from
//!   any thread, inside an async runtime or not.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use super::{
    AuditPrune, BootstrapRecord, CheckpointState, IdentityRecord, IssuanceCommit,
    IssuanceCommitter, IssuanceKind, IssuanceRecord, ListRow, LiveTask, OwnedCommit, PruneCounts,
    Publication, PublishedList, RevocationKind, RevocationRecord, Store, TaskRecord, TokenBound,
    PUBLISHED_LISTS_KEPT,
};
use crate::audit::{
    AuditEvent, AuditHead, AuditRecord, AuditVisitor, ChainWriter, CheckpointRecord,
    CheckpointSigner,
};
use crate::error::{CaError, Result};

/// Bound on connecting to the database.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one statement, enforced by the server.
const STATEMENT_TIMEOUT_MS: u64 = 10_000;
/// Bound on how long a transaction may sit idle between its statements (a publication while it
/// signs, a principal revocation while its audit record is made), enforced by the server: a
/// replica that stalls there (a frozen process or VM, a hung signer) would otherwise hold the
/// `seq` counter's row lock or [`REVOCATION_LOCK`] for as long as it stalls, stopping
/// publication (and revocations, and issuances) on every replica. Below
/// [`STATEMENT_TIMEOUT_MS`], so a statement waiting for such a lock outlives the stall; the
/// stalled transaction is rolled back and its replica told so (its connection is closed).
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 5_000;
/// Bound on one whole store operation (connect, retries, commit), enforced here.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
/// After an operation found nothing answering within its bound, how long new operations fail
/// at once (`store_unavailable`, whose `Retry-After` is 1 s) instead of each waiting out a bound
/// of its own: the CA runs its store's operations one at a time, so with a database that
/// accepts connections and never answers (a frozen server or VM) the k-th queued request
/// otherwise waited k bounds.
const UNANSWERED_HOLD: Duration = Duration::from_secs(1);
/// Bound on reading the whole audit trail (`agentid audit verify` and `audit export`), statement,
/// idle time between pages (the visitor's) and operation: a read-only snapshot that holds up no writer, of a trail that grows for the
/// CA's whole life (a million records take about 8 s to read), so not a request's bounds,
/// which a trail of a few million records outgrew: it could then never be verified or exported.
const AUDIT_READ_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Attempts of a transaction that fails with a serialization failure or a deadlock.
const MAX_ATTEMPTS: u32 = 5;
/// Idle connections kept per store.
const MAX_IDLE: usize = 8;

/// Where the store connects and how it authenticates; made from the CA's configuration by
/// [`crate::CaConfig::open_store`].
#[derive(Clone)]
pub struct PgSettings {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl core::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PgSettings")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether every host of `config` is on loopback or a Unix socket (no TLS needed there).
fn all_local(config: &tokio_postgres::Config) -> bool {
    config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    }) && config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

impl PgSettings {
    /// Settings from a `postgres://user@host[:port]/db` URL.
    ///
    /// * The URL must not carry a password: it comes from `password_file` (a file readable by
    ///   its owner only, holding the password) or, without one, from the file `PGPASSFILE`
    ///   names (libpq's `host:port:db:user:password` lines, also readable by its owner only).
    /// * TLS (rustls, aws-lc-rs, verifying the server against `ca_file`) is required unless
    ///   every host is on loopback or a Unix socket; `sslmode=disable` is refused then.
    pub fn from_url(
        url: &str,
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Self> {
        let mut config = parse_url(url)?;
        let password = match password_file {
            Some(p) => Some(read_password_file(p)?),
            None => match std::env::var_os("PGPASSFILE") {
                Some(p) => pgpass_lookup(&PathBuf::from(p), &config)?,
                None => None,
            },
        };
        if let Some(pw) = password {
            config.password(pw);
        }
        let local = all_local(&config);
        let tls = if local && ca_file.is_none() {
            None
        } else {
            if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
                return Err(CaError::InvalidRequest(
                    "store: sslmode=disable is refused for a database that is not on loopback or a Unix socket"
                        .into(),
                ));
            }
            let Some(ca_file) = ca_file else {
                return Err(CaError::InvalidRequest(
                    "store: a database that is not on loopback or a Unix socket needs TLS: set \
                     store_ca_file to the PEM file of the CA that issued the server's certificate"
                        .into(),
                ));
            };
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(tls_connector(ca_file)?)
        };
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.options(format!(
            "-c statement_timeout={STATEMENT_TIMEOUT_MS} \
             -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        ));
        config.application_name("agentid-ca");
        Ok(PgSettings { config, tls })
    }
}

/// Parses a store URL, refusing a password in it.
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(CaError::InvalidRequest(
            "store: a PostgreSQL store is a postgres://user@host/db URL".into(),
        ));
    }
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| CaError::InvalidRequest(format!("store: not a valid PostgreSQL URL: {e}")))?;
    if config.get_password().is_some() {
        return Err(CaError::InvalidRequest(
            "store: the URL carries a password; put it in a file readable only by its owner \
             (store_password_file in config.toml, or PGPASSFILE) instead"
                .into(),
        ));
    }
    if config.get_hosts().is_empty() {
        return Err(CaError::InvalidRequest(
            "store: the URL names no host".into(),
        ));
    }
    if config.get_dbname().is_none() {
        return Err(CaError::InvalidRequest(
            "store: the URL names no database".into(),
        ));
    }
    Ok(config)
}

/// The largest password file or libpq password file read.
const MAX_PASSWORD_FILE_BYTES: u64 = 64 * 1024;

/// Reads a file holding a password: a regular file that neither group nor others can access
/// (the mode of the handle read, so the file checked is the file read), of at most
/// [`MAX_PASSWORD_FILE_BYTES`], without blocking on a FIFO planted there.
fn read_owner_only(path: &Path) -> Result<String> {
    let bytes = agentid_fs::read_secret(path, MAX_PASSWORD_FILE_BYTES).map_err(|e| match e {
        agentid_fs::FsError::Io { path, source } => CaError::io(path, source),
        agentid_fs::FsError::InsecureMode { mode, .. } => CaError::material(
            path,
            format!("password file is accessible by group or others (mode {mode:o}); run `chmod 600` on it"),
        ),
        agentid_fs::FsError::NotRegular { kind, .. } => {
            CaError::material(path, format!("password file is {kind}, not a regular file"))
        }
        agentid_fs::FsError::TooLarge { limit, .. } => {
            CaError::material(path, format!("password file is larger than {limit} bytes"))
        }
        e => CaError::material(path, e.to_string()),
    })?;
    String::from_utf8(bytes).map_err(|_| CaError::material(path, "password file is not UTF-8"))
}

fn read_password_file(path: &Path) -> Result<String> {
    let text = read_owner_only(path)?;
    let pw = text.trim_end_matches(['\n', '\r']);
    if pw.is_empty() || pw.contains('\n') {
        return Err(CaError::material(
            path,
            "must hold the password alone, on one line",
        ));
    }
    Ok(pw.to_owned())
}

/// The password for `config` from a libpq password file (`host:port:db:user:password`, `*`
/// matches anything, `\` escapes `:` and `\`).
fn pgpass_lookup(path: &Path, config: &tokio_postgres::Config) -> Result<Option<String>> {
    let text = read_owner_only(path)?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        // libpq matches Unix sockets as `localhost`.
        _ => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let db = config.get_dbname().unwrap_or_default();
    let user = config.get_user().unwrap_or_default();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        let [h, p, d, u, pw] = fields.as_slice() else {
            continue;
        };
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(h, &host) && m(p, &port) && m(d, db) && m(u, user) {
            return Ok(Some(pw.clone()));
        }
    }
    Ok(None)
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), out.last_mut()) {
                    last.push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

fn tls_connector(ca_file: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // The one CA the server is checked against: read as the CA directory's files are, only if
    // held (whoever could write it could answer as the store), bounded, never blocking on a
    // FIFO planted there.
    let pem = crate::material::read_held(ca_file, agentid_fs::MAX_FILE_BYTES)?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| CaError::material(ca_file, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| CaError::material(ca_file, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(CaError::material(ca_file, "holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::InvalidRequest(format!("store TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A store error before it becomes a [`CaError`]: database errors keep their SQLSTATE so that
/// retries and unique violations can be told apart.
#[derive(Debug)]
enum PgErr {
    Db(tokio_postgres::Error),
    Ca(CaError),
    /// Nothing came back from the database within a bound: the operation's
    /// ([`OPERATION_TIMEOUT`]) or the connection's ([`CONNECT_TIMEOUT`]).
    Unanswered(CaError),
}

impl From<tokio_postgres::Error> for PgErr {
    fn from(e: tokio_postgres::Error) -> Self {
        PgErr::Db(e)
    }
}
impl From<CaError> for PgErr {
    fn from(e: CaError) -> Self {
        PgErr::Ca(e)
    }
}

impl PgErr {
    fn code(&self) -> Option<&SqlState> {
        match self {
            PgErr::Db(e) => e.code(),
            PgErr::Ca(_) | PgErr::Unanswered(_) => None,
        }
    }
    fn retryable(&self) -> bool {
        matches!(
            self.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        )
    }
    fn unique_violation(&self) -> bool {
        self.code() == Some(&SqlState::UNIQUE_VIOLATION)
    }
    fn into_ca(self) -> CaError {
        match self {
            PgErr::Ca(e) | PgErr::Unanswered(e) => e,
            PgErr::Db(e) => CaError::Store(describe(&e)),
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres {}: {}", db.code().code(), db.message()),
        None if e.is_closed() => "the database connection is closed".into(),
        None => format!("the database is unavailable: {e}"),
    }
}

type PgResult<T> = core::result::Result<T, PgErr>;

fn to_i64(v: u64) -> PgResult<i64> {
    i64::try_from(v).map_err(|_| PgErr::Ca(CaError::Store("integer out of range".into())))
}
fn to_u64(v: i64) -> PgResult<u64> {
    u64::try_from(v).map_err(|_| PgErr::Ca(CaError::Store("negative integer in the store".into())))
}

type BoxFut<'c, T> = std::pin::Pin<Box<dyn std::future::Future<Output = PgResult<T>> + Send + 'c>>;

/// Runs `$body` (an async block using `$tx: &Transaction`) in a transaction on `$client`,
/// committed at the end, retried on serialization failures and deadlocks (bounded).
/// How many unredeemed bootstrap tokens creator `$1` holds that expire after `$2`, counting
/// at most `$3` (a range of the index `bootstrap_tokens_creator`, schema version 5).
const OUTSTANDING_TOKENS: &str = "SELECT count(*) FROM (SELECT 1 FROM bootstrap_tokens WHERE creator = $1 AND used_at IS NULL AND expires > $2 LIMIT $3) t";
/// Deletes at most `$2` bootstrap tokens that expired before `$1` (a range of the index
/// `bootstrap_tokens_expires`, schema version 5).
const PRUNE_TOKENS: &str = "DELETE FROM bootstrap_tokens WHERE hash IN (SELECT hash FROM bootstrap_tokens WHERE expires < $1 LIMIT $2)";
/// See the SQLite store's `TASK_ID_TAKEN_FOR_TOKEN`.
const TASK_ID_TAKEN_FOR_TOKEN: &str = "SELECT EXISTS (SELECT 1 FROM tasks WHERE task = $1) OR EXISTS (SELECT 1 FROM bootstrap_tokens WHERE task = $1 AND agent <> $2 AND used_at IS NULL)";

/// Takes the transaction-scoped lock of task id `task`: a token naming it and a task opened
/// under a chosen id check that no other agent holds the id, then write, one at a time
/// (READ COMMITTED alone would let two such transactions both pass the check).
async fn lock_task_id(tx: &tokio_postgres::Transaction<'_>, task: &str) -> PgResult<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('agentid-task:' || $1, 0))",
        &[&task],
    )
    .await?;
    Ok(())
}

macro_rules! in_tx {
    ($client:expr, |$tx:ident| $body:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let res: PgResult<_> = async {
                let $tx = $client.transaction().await?;
                check_schema(&$tx).await?;
                let out = $body.await?;
                $tx.commit().await?;
                Ok(out)
            }
            .await;
            match res {
                Err(e) if e.retryable() && attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                other => break other,
            }
        }
    }};
}

struct Inner {
    rt: Option<tokio::runtime::Runtime>,
    settings: PgSettings,
    idle: Mutex<Vec<Client>>,
    writer: ChainWriter,
    /// When an operation last found nothing answering (see [`UNANSWERED_HOLD`]).
    unanswered_at: Mutex<Option<std::time::Instant>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never blocks, also when dropped inside another runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    fn rt(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt
            .as_ref()
            .ok_or_else(|| CaError::Store("the store is closed".into()))
    }

    /// An idle connection, if there is one.
    fn take(&self) -> Option<Client> {
        self.idle.lock().ok().and_then(|mut v| v.pop())
    }

    /// Keeps a healthy connection for later.
    fn give_back(&self, client: Option<Client>) {
        if let (Some(c), Ok(mut idle)) = (client, self.idle.lock()) {
            if idle.len() < MAX_IDLE && !c.is_closed() {
                idle.push(c);
            }
        }
    }

    /// Runs `f` with `client` (or a new connection) on the store's runtime and waits for it
    /// (bounded). Returns the connection unless it broke, failed, or timed out.
    fn exec<T: Send + 'static>(
        &self,
        client: Option<Client>,
        f: impl for<'c> FnOnce(&'c mut Client) -> BoxFut<'c, T> + Send + 'static,
    ) -> (Option<Client>, PgResult<T>) {
        self.exec_with(client, true, OPERATION_TIMEOUT, f)
    }

    /// [`Inner::exec`] on `client` alone: never on a new connection (`reconnect` false), for
    /// the later steps of a transaction begun on `client`. Its connection lost, the transaction
    /// was rolled back; running the step on a new connection would run it outside any
    /// transaction (committing it alone, each statement on its own), so it is an error.
    fn exec_with<T: Send + 'static>(
        &self,
        client: Option<Client>,
        reconnect: bool,
        bound: Duration,
        f: impl for<'c> FnOnce(&'c mut Client) -> BoxFut<'c, T> + Send + 'static,
    ) -> (Option<Client>, PgResult<T>) {
        let rt = match self.rt() {
            Ok(rt) => rt,
            Err(e) => return (None, Err(PgErr::Ca(e))),
        };
        // A new operation right after one waited out a bound for nothing fails at once (the
        // later steps of a transaction already begun go on).
        if reconnect && self.unanswered_within(UNANSWERED_HOLD) {
            return (client, Err(PgErr::Ca(unanswered_lately())));
        }
        let settings = self.settings.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        rt.spawn(async move {
            let work = async move {
                let mut client = match client {
                    Some(c) if !c.is_closed() => c,
                    _ if !reconnect => return Err(PgErr::Ca(lost_in_transaction())),
                    _ => connect(&settings).await?,
                };
                let res = f(&mut client).await;
                // A failure that is not the database's answer (I/O, protocol) leaves the
                // connection in doubt: it is not reused.
                let keep = !client.is_closed()
                    && !matches!(&res, Err(PgErr::Db(e)) if e.as_db_error().is_none());
                Ok::<_, PgErr>((keep.then_some(client), res))
            };
            let out = match tokio::time::timeout(bound, work).await {
                Ok(Ok((client, res))) => (client, res),
                Ok(Err(e)) => (None, Err(e)),
                Err(_) => (None, Err(PgErr::Unanswered(timed_out()))),
            };
            let _ = tx.send(out);
        });
        let out = match rx.recv_timeout(bound + Duration::from_secs(5)) {
            Ok(out) => out,
            Err(_) => (None, Err(PgErr::Unanswered(timed_out()))),
        };
        match &out.1 {
            Err(PgErr::Unanswered(_)) => {
                // Nothing came back in time: the idle connections, made over the same path, are
                // likely dead too (a failover or a dropped link leaves them open without a FIN
                // or RST). Each would hold the next operations for the whole bound in turn; the
                // next operation connects again instead. And the operations queued behind this
                // one (the CA runs its store's operations one at a time) are answered at once
                // for a while rather than each waiting out a bound of its own.
                self.forget_idle();
                if let Ok(mut at) = self.unanswered_at.lock() {
                    *at = Some(std::time::Instant::now());
                }
            }
            Ok(_) => {
                if let Ok(mut at) = self.unanswered_at.lock() {
                    *at = None;
                }
            }
            Err(_) => {}
        }
        out
    }

    /// Whether an operation found nothing answering less than `within` ago.
    fn unanswered_within(&self, within: Duration) -> bool {
        self.unanswered_at
            .lock()
            .map(|at| at.is_some_and(|t| t.elapsed() < within))
            .unwrap_or(false)
    }

    /// Closes every idle connection.
    fn forget_idle(&self) {
        let idle = self.idle.lock().map(|mut v| std::mem::take(&mut *v));
        drop(idle);
    }

    /// Runs `f` with a pooled connection.
    fn run<T: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(&'c mut Client) -> BoxFut<'c, T> + Send + 'static,
    ) -> Result<T> {
        self.run_within(OPERATION_TIMEOUT, f)
    }

    /// [`Inner::run`] bounded by `bound` instead of [`OPERATION_TIMEOUT`].
    fn run_within<T: Send + 'static>(
        &self,
        bound: Duration,
        f: impl for<'c> FnOnce(&'c mut Client) -> BoxFut<'c, T> + Send + 'static,
    ) -> Result<T> {
        let (client, res) = self.exec_with(self.take(), true, bound, f);
        self.give_back(client);
        res.map_err(PgErr::into_ca)
    }

    /// A transaction in steps on one connection, with synchronous work (signing) in between:
    /// `first` begins it and reads, `mid` runs here, `last` writes and commits. Retried as a
    /// whole on serialization failures and deadlocks; on any failure the connection is closed,
    /// which rolls the transaction back.
    fn stepped<A: Send + 'static, B: Send + 'static, R: Send + 'static>(
        &self,
        first: impl for<'c> Fn(&'c mut Client) -> BoxFut<'c, A> + Send + Sync + 'static,
        mut mid: impl FnMut(&A) -> Result<B>,
        last: impl for<'c> Fn(&'c mut Client, A, B) -> BoxFut<'c, R> + Send + Sync + 'static,
    ) -> Result<R> {
        let first = Arc::new(first);
        let last = Arc::new(last);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let f1 = first.clone();
            let (client, a) = self.exec(self.take(), move |c| {
                Box::pin(async move {
                    c.batch_execute("BEGIN").await?;
                    // A write transaction like any other (see [`check_schema`]).
                    check_schema(&*c).await?;
                    f1(c).await
                })
            });
            let res = match a {
                Err(e) => Err(e),
                Ok(a) => match mid(&a) {
                    Err(e) => Err(PgErr::Ca(e)),
                    Ok(b) => {
                        let f2 = last.clone();
                        // On the connection of `first` only: its transaction or nothing.
                        let (client, r) =
                            self.exec_with(client, false, OPERATION_TIMEOUT, move |c| {
                                Box::pin(async move {
                                    let r = f2(c, a, b).await?;
                                    c.batch_execute("COMMIT").await?;
                                    Ok(r)
                                })
                            });
                        if r.is_ok() {
                            self.give_back(client);
                        }
                        r
                    }
                },
            };
            match res {
                Err(e) if e.retryable() && attempt < MAX_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(5 * u64::from(attempt)));
                }
                other => return other.map_err(PgErr::into_ca),
            }
        }
    }
}

/// Rows an audit read fetches from a cursor at a time ([`Store::audit_visit`]).
const AUDIT_PAGE: usize = 512;

/// One step of [`Store::audit_visit`]'s read transaction on `client` (`first`: the one that
/// begins it, which may connect). A failure leaves `client` empty: the connection is dropped,
/// which ends the transaction.
fn audit_step<T: Send + 'static>(
    inner: &Inner,
    client: &mut Option<Client>,
    first: bool,
    f: impl for<'c> FnOnce(&'c mut Client) -> BoxFut<'c, T> + Send + 'static,
) -> Result<T> {
    let (c, res) = inner.exec_with(client.take(), first, AUDIT_READ_TIMEOUT, f);
    match res {
        Ok(v) => {
            *client = c;
            Ok(v)
        }
        Err(e) => Err(e.into_ca()),
    }
}

/// The audited serials, in the store's order, each to `each` until it answers
/// [`ControlFlow::Break`], through a cursor in [`Store::audit_visit`]'s transaction.
fn audit_serials(
    inner: &Inner,
    client: &mut Option<Client>,
    each: &mut dyn FnMut(&str) -> Result<ControlFlow<()>>,
) -> Result<()> {
    audit_step(inner, client, false, |c| {
        Box::pin(async move {
            c.batch_execute(
                "DECLARE audit_serials_c NO SCROLL CURSOR FOR SELECT serial FROM issuances ORDER BY id",
            )
            .await?;
            Ok(())
        })
    })?;
    'pages: loop {
        let page = audit_step(inner, client, false, |c| {
            Box::pin(async move {
                c.query(&format!("FETCH {AUDIT_PAGE} FROM audit_serials_c"), &[])
                    .await?
                    .iter()
                    .map(|r| r.try_get::<_, String>(0).map_err(PgErr::from))
                    .collect::<PgResult<Vec<_>>>()
            })
        })?;
        let last = page.len() < AUDIT_PAGE;
        for s in page {
            if each(&s)?.is_break() {
                break 'pages;
            }
        }
        if last {
            break;
        }
    }
    audit_step(inner, client, false, |c| {
        Box::pin(async move {
            c.batch_execute("CLOSE audit_serials_c").await?;
            Ok(())
        })
    })
}

fn lost_in_transaction() -> CaError {
    CaError::Store(
        "the database connection was lost inside a transaction; nothing was committed".into(),
    )
}

fn timed_out() -> CaError {
    CaError::Store("the database did not answer in time".into())
}

fn unanswered_lately() -> CaError {
    CaError::Store(format!(
        "the database did not answer an operation less than {} s ago",
        UNANSWERED_HOLD.as_secs()
    ))
}

async fn connect(s: &PgSettings) -> PgResult<Client> {
    // `connect_timeout` bounds only the socket's connect, to each host in turn: a server that
    // accepts it and then never answers (a frozen postmaster, a proxy without a backend) would
    // hold the connection's startup, and this store operation, for the whole
    // [`OPERATION_TIMEOUT`]. Each host's whole connection gets the bound, and a host that
    // does not answer within it is left for the next one (libpq's failover list,
    // `host1,host2`): a frozen primary never keeps the store from its standby.
    let names = s.config.get_hosts().len();
    let addrs = s.config.get_hostaddrs().len();
    let ports = s.config.get_ports().len();
    let hosts = names.max(addrs);
    // One host, or lists of hosts, addresses and ports that do not match (tokio-postgres
    // names the mistake).
    if hosts <= 1 || (addrs != 0 && addrs != names) || (ports > 1 && ports != hosts) {
        return connect_bounded(&s.config, s.tls.as_ref()).await;
    }
    let start = match s.config.get_load_balance_hosts() {
        tokio_postgres::config::LoadBalanceHosts::Random => random_below(hosts),
        _ => 0,
    };
    let mut unanswered = None;
    let mut failed = None;
    for i in (0..hosts).map(|k| (start + k) % hosts) {
        match connect_bounded(&one_host(&s.config, i), s.tls.as_ref()).await {
            Ok(client) => return Ok(client),
            Err(e @ PgErr::Unanswered(_)) => unanswered = Some(e),
            Err(e) => failed = Some(e),
        }
    }
    // A host that did not answer makes the whole attempt unanswered (UNANSWERED_HOLD): the
    // next operation would wait on it again.
    Err(unanswered
        .or(failed)
        .unwrap_or_else(|| PgErr::Ca(CaError::Store("the URL names no host".into()))))
}

/// `config` connected to within [`CONNECT_TIMEOUT`] (socket, startup, TLS, authentication).
async fn connect_bounded(
    config: &tokio_postgres::Config,
    tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> PgResult<Client> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_unbounded(config, tls)).await {
        Ok(res) => res,
        Err(_) => Err(PgErr::Unanswered(CaError::Store(format!(
            "could not connect to the database within {} s",
            CONNECT_TIMEOUT.as_secs()
        )))),
    }
}

/// The settings of `config` for its host `i` alone (its host, `hostaddr` and port), every
/// other setting as `config` has it.
fn one_host(config: &tokio_postgres::Config, i: usize) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    if let Some(v) = config.get_user() {
        c.user(v);
    }
    if let Some(v) = config.get_password() {
        c.password(v);
    }
    if let Some(v) = config.get_dbname() {
        c.dbname(v);
    }
    if let Some(v) = config.get_options() {
        c.options(v);
    }
    if let Some(v) = config.get_application_name() {
        c.application_name(v);
    }
    c.ssl_mode(config.get_ssl_mode());
    c.ssl_negotiation(config.get_ssl_negotiation());
    match config.get_hosts().get(i) {
        Some(tokio_postgres::config::Host::Tcp(h)) => {
            c.host(h);
        }
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => {
            c.host_path(p);
        }
        None => {}
    }
    if let Some(a) = config.get_hostaddrs().get(i) {
        c.hostaddr(*a);
    }
    let ports = config.get_ports();
    if let Some(p) = ports.get(i).or_else(|| ports.first()) {
        c.port(*p);
    }
    if let Some(t) = config.get_connect_timeout() {
        c.connect_timeout(*t);
    }
    if let Some(t) = config.get_tcp_user_timeout() {
        c.tcp_user_timeout(*t);
    }
    c.keepalives(config.get_keepalives());
    c.keepalives_idle(config.get_keepalives_idle());
    if let Some(t) = config.get_keepalives_interval() {
        c.keepalives_interval(t);
    }
    if let Some(n) = config.get_keepalives_retries() {
        c.keepalives_retries(n);
    }
    c.target_session_attrs(config.get_target_session_attrs());
    c.channel_binding(config.get_channel_binding());
    c
}

/// A random index below `n` (at least 1), for `load_balance_hosts=random`.
fn random_below(n: usize) -> usize {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0;
    }
    usize::try_from(u64::from_le_bytes(b) % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
}

async fn connect_unbounded(
    config: &tokio_postgres::Config,
    tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> PgResult<Client> {
    let client = match tls {
        None => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
        Some(tls) => {
            let (client, conn) = config.connect(tls.clone()).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
    };
    Ok(client)
}

/// The PostgreSQL store.
pub struct PgStore {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PgStore")
            .field("settings", &self.inner.settings)
            .field("writer", &self.inner.writer)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects and brings the schema to [`crate::migrate::PG_SCHEMA_VERSION`], with the
    /// default audit writer id.
    pub fn open(settings: PgSettings) -> Result<Self> {
        Self::open_as(settings, crate::audit::DEFAULT_WRITER)
    }

    /// [`PgStore::open`] with `writer` as the audit chain's writer id (one per replica is
    /// best; replicas that share one id are serialized by the chain head's row lock).
    pub fn open_as(settings: PgSettings, writer: &str) -> Result<Self> {
        Self::open_with(settings, writer, true)
    }

    /// [`PgStore::open_as`] for a CA that already has its store: a database without the
    /// agentid schema (a wrong database name, a blank standby) is refused, not given a new
    /// empty store, which would lose the CA's revocations and restart its revocation list at
    /// seq 1. `agentid ca init` makes the schema.
    pub fn open_existing(settings: PgSettings, writer: &str) -> Result<Self> {
        Self::open_with(settings, writer, false)
    }

    fn open_with(settings: PgSettings, writer: &str, create: bool) -> Result<Self> {
        if writer.is_empty() || writer.len() > 64 {
            return Err(CaError::InvalidRequest(
                "an audit writer id has 1 to 64 bytes".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("agentid-ca-postgres")
            .enable_all()
            .build()
            .map_err(|e| CaError::Store(format!("store runtime: {e}")))?;
        let inner = Arc::new(Inner {
            rt: Some(rt),
            settings,
            idle: Mutex::new(Vec::new()),
            writer: ChainWriter::new(writer),
            unanswered_at: Mutex::new(None),
        });
        inner.run(move |c| Box::pin(migrate(c, create)))?;
        Ok(PgStore { inner })
    }

    /// Opens the store from a URL (see [`PgSettings::from_url`]).
    pub fn open_url(url: &str, writer: &str) -> Result<Self> {
        Self::open_as(PgSettings::from_url(url, None, None)?, writer)
    }

    /// The schema version of the database (see [`crate::migrate::PG_MIGRATIONS`]).
    pub fn schema_version(&self) -> Result<u32> {
        self.inner.run(|c| {
            Box::pin(async move {
                let v: i32 = c
                    .query_one("SELECT version FROM agentid_schema", &[])
                    .await?
                    .get(0);
                u32::try_from(v).map_err(|_| PgErr::Ca(CaError::Store("bad schema version".into())))
            })
        })
    }
}

/// The advisory lock a migration holds (exclusive) and every write transaction holds shared
/// while it reads the schema version: "agentid" as a number.
const SCHEMA_LOCK: i64 = 6170883411044;

/// At the start of a write transaction: refuses to write a database a newer agentid migrated
/// after this process opened it (a rolling upgrade whose new replicas migrated the shared
/// database). This code does not know the newer schema's invariants (a column it would leave
/// NULL may mean "unlimited" there), so it stops writing instead of running half-compatible.
/// The shared lock waits for a migration in progress, and holds the next one off until this
/// transaction ends; both statements are sent at once (one round trip).
async fn check_schema<C: tokio_postgres::GenericClient + Sync>(tx: &C) -> PgResult<()> {
    use crate::migrate::PG_SCHEMA_VERSION;
    let lock = tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&SCHEMA_LOCK]);
    let version = tx.query_one("SELECT version FROM agentid_schema", &[]);
    let (_, row) = tokio::try_join!(lock, version)?;
    let v: i32 = row.get(0);
    let v = u32::try_from(v).unwrap_or(u32::MAX);
    if v > PG_SCHEMA_VERSION {
        return Err(PgErr::Ca(CaError::Store(format!(
            "the database has schema version {v}, newer than this agentid knows \
             ({PG_SCHEMA_VERSION}): it was migrated by a newer agentid; run that version here"
        ))));
    }
    Ok(())
}

/// Brings the database to [`crate::migrate::PG_SCHEMA_VERSION`] in one transaction under an
/// advisory lock (replicas starting together migrate once); refuses a newer database.
async fn migrate(c: &mut Client, create: bool) -> PgResult<()> {
    use crate::migrate::{PG_MIGRATIONS, PG_SCHEMA_VERSION};
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS agentid_schema (
           one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version INTEGER NOT NULL)",
    )
    .await?;
    let current: Option<i32> = tx
        .query_opt("SELECT version FROM agentid_schema", &[])
        .await?
        .map(|r| r.get(0));
    if current.is_none() && !create {
        return Err(PgErr::Ca(CaError::Store(
            "the database holds no agentid store (no agentid_schema): check `store` in \
             config.toml, or restore the database; `agentid ca init --store` makes a new CA's \
             store"
                .into(),
        )));
    }
    let current = current.unwrap_or(0);
    let current = u32::try_from(current).unwrap_or(u32::MAX);
    if current > PG_SCHEMA_VERSION {
        return Err(PgErr::Ca(CaError::Store(format!(
            "the database has schema version {current}, newer than this agentid knows \
             ({PG_SCHEMA_VERSION}): use a newer agentid with this database"
        ))));
    }
    for m in PG_MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(m.sql).await.map_err(|e| {
            PgErr::Ca(CaError::Store(format!(
                "schema migration to version {} ({}) failed: {}",
                m.version,
                m.description,
                describe(&e)
            )))
        })?;
        tracing::info!(
            version = m.version,
            what = m.description,
            "store schema migrated"
        );
    }
    let v = i32::try_from(PG_SCHEMA_VERSION).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO agentid_schema (one, version) VALUES (TRUE, $1)
         ON CONFLICT (one) DO UPDATE SET version = excluded.version",
        &[&v],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Appends `ev` to `writer`'s chain inside the caller's transaction. The head row is locked
/// until commit, so appends of one writer (in this process or another) are serialized.
async fn append_audit_tx<C: tokio_postgres::GenericClient + Sync>(
    tx: &C,
    chain: &ChainWriter,
    ev: &AuditEvent,
) -> PgResult<()> {
    let writer = chain.id();
    tx.execute(
        "INSERT INTO audit_heads (writer, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (writer) DO NOTHING",
        &[&writer, &crate::audit::GENESIS],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT seq, hash FROM audit_heads WHERE writer = $1 FOR UPDATE",
            &[&writer],
        )
        .await?;
    let seq = to_u64(row.get(0))?.saturating_add(1);
    let prev: String = row.get(1);
    let body = crate::audit::record_body(writer, seq, &prev, ev)?;
    let hash = crate::audit::record_hash(&body);
    let seq_i = to_i64(seq)?;
    tx.execute(
        "INSERT INTO audit_records (writer, seq, ts, body, hash) VALUES ($1, $2, $3, $4, $5)",
        &[&writer, &seq_i, &to_i64(ev.ts)?, &body, &hash],
    )
    .await?;
    tx.execute(
        "UPDATE audit_heads SET seq = $2, hash = $3 WHERE writer = $1",
        &[&writer, &seq_i, &hash],
    )
    .await?;
    // The checkpoint record 1 and every CHECKPOINT_EVERY-th record carry, in its transaction.
    if let Some(cp) = chain.due(seq, &hash, ev.ts)? {
        insert_checkpoint(tx, &cp).await?;
    }
    Ok(())
}

async fn insert_checkpoint<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
    cp: &CheckpointRecord,
) -> PgResult<()> {
    c.execute(
        "INSERT INTO audit_checkpoints (writer, seq, head, iat, jws) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
        &[
            &cp.writer,
            &to_i64(cp.seq)?,
            &cp.head,
            &to_i64(cp.iat)?,
            &cp.jws,
        ],
    )
    .await?;
    Ok(())
}

/// The advisory lock that orders issuances and revocations: every issuance holds it shared
/// for its transaction, every revocation exclusive. Under READ COMMITTED an issuance that
/// checked the revocations before a revocation committed could otherwise commit after the
/// revocation read what it covers (a principal's tasks, an agent's latest certificate): a task
/// of a revoked principal left unlisted, an entry that expires before a certificate it revokes.
/// With the lock, either the issuance commits first and the revocation sees it, or the
/// revocation commits first and the issuance's check sees the entry.
const REVOCATION_LOCK: i64 = 6_170_883_411_045;

/// The query of [`Store::latest_expiry`] for `kind` (one row, one nullable `bigint`).
fn latest_expiry_sql(kind: RevocationKind) -> Option<&'static str> {
    Some(match kind {
        RevocationKind::Agent => {
            "SELECT GREATEST((SELECT MAX(not_after) FROM issuances WHERE agent = $1),
                             (SELECT MAX(cap) FROM identities WHERE agent = $1))"
        }
        RevocationKind::Task => {
            "SELECT GREATEST((SELECT MAX(not_after) FROM issuances WHERE task = $1),
                             (SELECT MAX(cap) FROM identities WHERE task = $1))"
        }
        RevocationKind::Jkt => {
            "SELECT GREATEST((SELECT MAX(not_after) FROM issuances WHERE jkt = $1),
               (SELECT MAX(i.cap) FROM identities i JOIN keys k ON k.identity = i.identity WHERE k.jkt = $1))"
        }
        RevocationKind::Jti => "SELECT MAX(exp) FROM tasks WHERE grant_jti = $1",
        RevocationKind::Principal => "SELECT MAX(exp) FROM tasks WHERE principal = $1",
        // Links are never recorded by the CA: nothing bounds them here.
        RevocationKind::LinkJti => return None,
    })
}

/// Records (or widens) `r` with its audit record in the transaction `tx`, holding
/// [`REVOCATION_LOCK`] exclusively. With `cover` (the skew), `r.exp` is first raised to `cover`
/// past the target's latest certificate or cap, read under the lock. Returns the record as
/// written.
async fn write_revocation(
    tx: &Transaction<'_>,
    writer: &ChainWriter,
    mut r: RevocationRecord,
    cover: Option<u64>,
    audit: &AuditEvent,
) -> PgResult<RevocationRecord> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REVOCATION_LOCK])
        .await?;
    if let (Some(skew), Some(sql)) = (cover, latest_expiry_sql(r.kind)) {
        let latest: Option<i64> = tx.query_one(sql, &[&r.value]).await?.get(0);
        if let Some(latest) = latest {
            r.exp = r.exp.max(to_u64(latest)?.saturating_add(skew));
        }
    }
    upsert_revocation(tx, &r).await?;
    tx.execute(
        "UPDATE meta SET value = GREATEST(value + 1, $1) WHERE key = 'revocation_epoch'",
        &[&super::revocation_epoch_floor()],
    )
    .await?;
    // The record carries the entry's `exp` as it now stands (CA-API.md 4.3).
    let exp: i64 = tx
        .query_one(
            "SELECT exp FROM revocations WHERE kind = $1 AND value = $2",
            &[&r.kind.as_str(), &r.value],
        )
        .await?
        .get(0);
    let audit = AuditEvent {
        exp: Some(to_u64(exp)?),
        ..audit.clone()
    };
    append_audit_tx(tx, writer, &audit).await?;
    Ok(r)
}

/// Checks and records one issuance inside `tx`: revocations, the key binding, the identity,
/// the task, the token, the certificate, its audit record. Races with other transactions end
/// in a constraint (or a row lock) and the refusal SQLite gives.
async fn apply_issuance(
    tx: &Transaction<'_>,
    writer: &ChainWriter,
    c: &IssuanceCommit<'_>,
) -> PgResult<()> {
    // 0. Serialized with revocations (see [`REVOCATION_LOCK`]); issuances do not wait for
    // each other.
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&REVOCATION_LOCK],
    )
    .await?;
    // 1. Revocations: the first entry of `refuse_if_revoked` that is present refuses.
    if !c.refuse_if_revoked.is_empty() {
        let kinds: Vec<&str> = c
            .refuse_if_revoked
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        let values: Vec<&str> = c
            .refuse_if_revoked
            .iter()
            .map(|(_, v)| v.as_str())
            .collect();
        let hits = tx
            .query(
                "SELECT r.kind, r.value FROM revocations r
                 JOIN unnest($1::text[], $2::text[]) AS q(kind, value)
                   ON r.kind = q.kind AND r.value = q.value",
                &[&kinds, &values],
            )
            .await?;
        if !hits.is_empty() {
            for (kind, value) in c.refuse_if_revoked {
                if hits
                    .iter()
                    .any(|r| r.get::<_, &str>(0) == kind.as_str() && r.get::<_, &str>(1) == value)
                {
                    return Err(PgErr::Ca(CaError::Revoked {
                        kind: kind.as_str(),
                        value: value.clone(),
                    }));
                }
            }
        }
    }
    let id = c.identity;
    // 2. One key, one identity: insert the key's binding unless there is one (waiting for a
    // concurrent inserter to finish), then read who holds it.
    tx.execute(
        "INSERT INTO keys (jkt, identity, first_issued_at) VALUES ($1, $2, $3)
         ON CONFLICT (jkt) DO NOTHING",
        &[&id.jkt, &id.identity, &to_i64(c.record.issued_at)?],
    )
    .await?;
    let owner: String = tx
        .query_one("SELECT identity FROM keys WHERE jkt = $1", &[&id.jkt])
        .await?
        .get(0);
    if owner != id.identity {
        return Err(PgErr::Ca(CaError::KeyInUse {
            jkt: id.jkt.clone(),
            bound_to: owner,
        }));
    }
    // 3. The identity's binding, checked and written by one statement each.
    let cap = to_i64(id.cap)?;
    let key_bound_at = id.key_bound_at.map(to_i64).transpose()?;
    let bound = |rows: Vec<tokio_postgres::Row>| rows.first().map(|r| r.get::<_, String>(0));
    match c.binding {
        super::Binding::Fresh => {
            let n = tx
                .execute(
                    "INSERT INTO identities (identity, jkt, spki, agent, task, cap, key_bound_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (identity) DO NOTHING",
                    &[&id.identity, &id.jkt, &id.spki, &id.agent, &id.task, &cap, &key_bound_at],
                )
                .await?;
            if n != 1 {
                return Err(PgErr::Ca(CaError::IdentityExists(id.identity.clone())));
            }
        }
        super::Binding::FreshOrSameKey | super::Binding::SameKey => {
            let n = if c.binding == super::Binding::SameKey {
                tx.execute(
                    "UPDATE identities SET cap = GREATEST(cap, $3),
                       key_bound_at = COALESCE(key_bound_at, $4)
                     WHERE identity = $1 AND jkt = $2",
                    &[&id.identity, &id.jkt, &cap, &key_bound_at],
                )
                .await?
            } else {
                tx.execute(
                    "INSERT INTO identities (identity, jkt, spki, agent, task, cap, key_bound_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (identity) DO UPDATE SET cap = GREATEST(identities.cap, excluded.cap),
                       key_bound_at = COALESCE(identities.key_bound_at, excluded.key_bound_at)
                     WHERE identities.jkt = excluded.jkt",
                    &[&id.identity, &id.jkt, &id.spki, &id.agent, &id.task, &cap, &key_bound_at],
                )
                .await?
            };
            if n != 1 {
                let rows = tx
                    .query(
                        "SELECT jkt FROM identities WHERE identity = $1",
                        &[&id.identity],
                    )
                    .await?;
                return Err(PgErr::Ca(match bound(rows) {
                    Some(jkt) => CaError::KeyMismatch {
                        identity: id.identity.clone(),
                        bound: jkt,
                        requested: id.jkt.clone(),
                    },
                    None => CaError::UnknownIdentity(id.identity.clone()),
                }));
            }
        }
        super::Binding::Rebind => {
            tx.execute(
                "INSERT INTO identities (identity, jkt, spki, agent, task, cap, key_bound_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (identity) DO UPDATE SET jkt = excluded.jkt, spki = excluded.spki,
                   cap = GREATEST(identities.cap, excluded.cap),
                   key_bound_at = CASE WHEN identities.jkt = excluded.jkt
                     THEN COALESCE(identities.key_bound_at, excluded.key_bound_at)
                     ELSE excluded.key_bound_at END",
                &[&id.identity, &id.jkt, &id.spki, &id.agent, &id.task, &cap, &key_bound_at],
            )
            .await?;
        }
    }
    // 4. The task and its bootstrap token. A task id another agent's unredeemed token names is
    // that agent's (CA-API.md 3.10), as one its task holds is (the conflict below).
    if let Some(t) = c.task {
        // Only for an id the requester chose: a generated one is random, and a token's own id
        // was checked when the token was made (an index seek, `bootstrap_tokens_task`).
        if c.chosen_task_id {
            lock_task_id(tx, &t.task).await?;
        }
        let named_by_other = c.chosen_task_id
            && tx
                .query_opt(
                    "SELECT 1 FROM bootstrap_tokens WHERE task = $1 AND agent <> $2 AND used_at IS NULL LIMIT 1",
                    &[&t.task, &id.agent.as_deref().unwrap_or("")],
                )
                .await?
                .is_some();
        if named_by_other {
            return Err(PgErr::Ca(CaError::TaskIdTaken(t.task.clone())));
        }
        let n = tx
            .execute(
                "INSERT INTO tasks (task, holder, grant_jti, exp, created, principal, max_depth) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT DO NOTHING",
                &[&t.task, &t.holder, &t.grant_jti, &to_i64(t.exp)?, &to_i64(t.created)?, &t.principal, &t.max_depth.map(i64::from)],
            )
            .await?;
        if n != 1 {
            return Err(PgErr::Ca(CaError::IdentityExists(format!(
                "task {}",
                t.task
            ))));
        }
    }
    if let Some(b) = c.bootstrap {
        let rows = tx
            .query(
                "UPDATE bootstrap_tokens SET used_at = $4
                 WHERE hash = $1 AND agent = $2 AND task = $3 AND expires > $4 AND used_at IS NULL
                 RETURNING hash",
                &[&b.hash, &b.agent, &b.task, &to_i64(c.now)?],
            )
            .await?;
        if rows.len() != 1 {
            return Err(PgErr::Ca(CaError::BootstrapToken(
                "unknown, already used, expired, or bound to another agent or task",
            )));
        }
    }
    // 5. The certificate itself.
    let r = c.record;
    tx.execute(
        "INSERT INTO issuances (serial, identity, kind, agent, task, not_before, not_after, requester, jkt, issued_at, grant_jti)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &r.serial,
            &r.identity,
            &r.kind.as_str(),
            &r.agent,
            &r.task,
            &to_i64(r.not_before)?,
            &to_i64(r.not_after)?,
            &r.requester,
            &r.jkt,
            &to_i64(r.issued_at)?,
            &r.grant_jti,
        ],
    )
    .await
    .map_err(|e| {
        let e = PgErr::Db(e);
        if e.unique_violation() {
            PgErr::Ca(CaError::Store(format!("serial {} or grant already recorded", r.serial)))
        } else {
            e
        }
    })?;
    // 6. Its audit record: no record, no certificate.
    append_audit_tx(tx, writer, c.audit).await
}

const ISSUANCE_COLS: &str =
    "serial, identity, kind, agent, task, not_before, not_after, requester, jkt, issued_at, grant_jti";

fn row_issuance(r: &tokio_postgres::Row) -> PgResult<IssuanceRecord> {
    Ok(IssuanceRecord {
        serial: r.get(0),
        identity: r.get(1),
        kind: IssuanceKind::parse(r.get(2))?,
        agent: r.get(3),
        task: r.get(4),
        not_before: to_u64(r.get(5))?,
        not_after: to_u64(r.get(6))?,
        requester: r.get(7),
        jkt: r.get(8),
        issued_at: to_u64(r.get(9))?,
        grant_jti: r.get(10),
    })
}

const TASK_COLS: &str = "task, holder, grant_jti, exp, created, principal, max_depth";

fn row_task(r: &tokio_postgres::Row) -> PgResult<TaskRecord> {
    Ok(TaskRecord {
        task: r.get(0),
        holder: r.get(1),
        grant_jti: r.get(2),
        exp: to_u64(r.get(3))?,
        created: to_u64(r.get(4))?,
        principal: r.get(5),
        max_depth: r
            .get::<_, Option<i64>>(6)
            .map(|v| {
                u8::try_from(v).map_err(|_| {
                    PgErr::Ca(CaError::Store(format!("tasks.max_depth {v} out of range")))
                })
            })
            .transpose()?,
    })
}

fn row_published(r: &tokio_postgres::Row) -> PgResult<PublishedList> {
    Ok(PublishedList {
        seq: to_u64(r.get(0))?,
        compact: r.get(1),
        published_at: to_u64(r.get(2))?,
        next_update: to_u64(r.get(3))?,
        revocation_epoch: to_u64(r.get(4))?,
    })
}

async fn read_revocations<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
) -> PgResult<Vec<RevocationRecord>> {
    c.query(
        "SELECT kind, value, exp, revoked_at, reason, requester FROM revocations ORDER BY id",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(RevocationRecord {
            kind: RevocationKind::parse(r.get(0))?,
            value: r.get(1),
            exp: to_u64(r.get(2))?,
            revoked_at: to_u64(r.get(3))?,
            reason: r.get(4),
            requester: r.get(5),
        })
    })
    .collect()
}

/// The revocations a list published at `now` holds, in insertion order (see [`ListRow`]).
async fn read_list_rows<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
    now: u64,
) -> PgResult<Vec<ListRow>> {
    c.query(
        "SELECT id, kind, value, exp FROM revocations WHERE exp > $1 AND kind <> 'principal' ORDER BY id",
        &[&to_i64(now)?],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(ListRow {
            id: r.get(0),
            kind: RevocationKind::parse(r.get(1))?,
            value: r.get(2),
            exp: to_u64(r.get(3))?,
        })
    })
    .collect()
}

const UPSERT_REVOCATION: &str =
    "INSERT INTO revocations (kind, value, exp, revoked_at, reason, requester)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (kind, value) DO UPDATE SET exp = GREATEST(revocations.exp, excluded.exp)";

async fn upsert_revocation<C: tokio_postgres::GenericClient + Sync>(
    tx: &C,
    r: &RevocationRecord,
) -> PgResult<()> {
    tx.execute(
        UPSERT_REVOCATION,
        &[
            &r.kind.as_str(),
            &r.value,
            &to_i64(r.exp)?,
            &to_i64(r.revoked_at)?,
            &r.reason,
            &r.requester,
        ],
    )
    .await?;
    Ok(())
}

async fn commit_owned(c: &mut Client, writer: &ChainWriter, oc: &OwnedCommit) -> PgResult<()> {
    in_tx!(c, |tx| apply_issuance(&tx, writer, &oc.as_commit()))
}

impl IssuanceCommitter for Inner {
    fn commit_issuance(&self, c: &IssuanceCommit<'_>) -> Result<()> {
        let oc = OwnedCommit::new(c);
        let writer = self.writer.clone();
        self.run(move |c| Box::pin(async move { commit_owned(c, &writer, &oc).await }))
    }
}

impl PgStore {
    /// [`write_revocation`] in a transaction of its own.
    fn write_revocation(
        &self,
        r: &RevocationRecord,
        cover: Option<u64>,
        audit: &AuditEvent,
    ) -> Result<RevocationRecord> {
        let (r, audit, writer) = (r.clone(), audit.clone(), self.inner.writer.clone());
        self.inner.run(move |c| {
            Box::pin(async move {
                in_tx!(c, |tx| async {
                    write_revocation(&tx, &writer, r.clone(), cover, &audit).await
                })
            })
        })
    }
}

impl Store for PgStore {
    fn issuance_committer(&self) -> Option<Arc<dyn IssuanceCommitter>> {
        Some(self.inner.clone())
    }

    fn commit_issuance(&mut self, c: &IssuanceCommit<'_>) -> Result<()> {
        self.inner.commit_issuance(c)
    }

    fn identity(&self, identity: &str) -> Result<Option<IdentityRecord>> {
        let identity = identity.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query_opt(
                    "SELECT identity, jkt, spki, agent, task, cap, key_bound_at FROM identities WHERE identity = $1",
                    &[&identity],
                )
                .await?
                .map(|r| {
                    Ok(IdentityRecord {
                        identity: r.get(0),
                        jkt: r.get(1),
                        spki: r.get(2),
                        agent: r.get(3),
                        task: r.get(4),
                        cap: to_u64(r.get(5))?,
                        key_bound_at: r.get::<_, Option<i64>>(6).map(to_u64).transpose()?,
                    })
                })
                .transpose()
            })
        })
    }

    fn key_owner(&self, jkt: &str) -> Result<Option<String>> {
        let jkt = jkt.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                Ok(
                    c.query_opt("SELECT identity FROM keys WHERE jkt = $1", &[&jkt])
                        .await?
                        .map(|r| r.get(0)),
                )
            })
        })
    }

    fn issuance(&self, serial: &str) -> Result<Option<IssuanceRecord>> {
        let serial = serial.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query_opt(
                    &format!("SELECT {ISSUANCE_COLS} FROM issuances WHERE serial = $1"),
                    &[&serial],
                )
                .await?
                .as_ref()
                .map(row_issuance)
                .transpose()
            })
        })
    }

    fn issuances(&self) -> Result<Vec<IssuanceRecord>> {
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query(
                    &format!("SELECT {ISSUANCE_COLS} FROM issuances ORDER BY id"),
                    &[],
                )
                .await?
                .iter()
                .map(row_issuance)
                .collect()
            })
        })
    }

    fn task(&self, task: &str) -> Result<Option<TaskRecord>> {
        let task = task.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query_opt(
                    &format!("SELECT {TASK_COLS} FROM tasks WHERE task = $1"),
                    &[&task],
                )
                .await?
                .as_ref()
                .map(row_task)
                .transpose()
            })
        })
    }

    fn task_by_jti(&self, jti: &str) -> Result<Option<TaskRecord>> {
        let jti = jti.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query_opt(
                    &format!("SELECT {TASK_COLS} FROM tasks WHERE grant_jti = $1"),
                    &[&jti],
                )
                .await?
                .as_ref()
                .map(row_task)
                .transpose()
            })
        })
    }

    fn first_issuance_of_key(&self, jkt: &str) -> Result<Option<IssuanceRecord>> {
        let jkt = jkt.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query_opt(
                    &format!(
                        "SELECT {ISSUANCE_COLS} FROM issuances WHERE jkt = $1 ORDER BY id LIMIT 1"
                    ),
                    &[&jkt],
                )
                .await?
                .as_ref()
                .map(row_issuance)
                .transpose()
            })
        })
    }

    fn key_first_issued_at(&self, jkt: &str) -> Result<Option<u64>> {
        let jkt = jkt.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                // Bindings made before schema version 6 got the column from their issuances.
                let v: Option<Option<i64>> = c
                    .query_opt(
                        "SELECT COALESCE(first_issued_at,
                           (SELECT MIN(issued_at) FROM issuances WHERE jkt = $1))
                         FROM keys WHERE jkt = $1",
                        &[&jkt],
                    )
                    .await?
                    .map(|r| r.get(0));
                v.flatten().map(to_u64).transpose()
            })
        })
    }

    fn prune_audit(&mut self, prunes: &[AuditPrune]) -> Result<PruneCounts> {
        let prunes = prunes.to_vec();
        self.inner.run_within(AUDIT_READ_TIMEOUT, move |c| {
            Box::pin(async move {
                in_tx!(c, |tx| async {
                    // Whole, under the bound of an audit read, not a request's.
                    tx.batch_execute(&format!(
                        "SET LOCAL statement_timeout = {}",
                        AUDIT_READ_TIMEOUT.as_millis()
                    ))
                    .await?;
                    let mut counts = PruneCounts::default();
                    for p in &prunes {
                        let (writer, seq) = (p.plan.writer.as_str(), to_i64(p.plan.seq)?);
                        let stored: Option<String> = tx
                            .query_opt(
                                "SELECT hash FROM audit_records WHERE writer = $1 AND seq = $2",
                                &[&writer, &seq],
                            )
                            .await?
                            .map(|r| r.get(0));
                        let base: Option<i64> = tx
                            .query_opt(
                                "SELECT seq FROM audit_bases WHERE writer = $1 FOR UPDATE",
                                &[&writer],
                            )
                            .await?
                            .map(|r| r.get(0));
                        super::prune_check(stored, base, p).map_err(PgErr::Ca)?;
                        // Only ever forward: a chain without a base has no row to lock
                        // above, so a prune that committed one meanwhile is found here (this
                        // insert waited for it, and READ COMMITTED then updates its row).
                        let moved = tx
                            .execute(
                                "INSERT INTO audit_bases (writer, seq, head, iat, jws)
                             VALUES ($1, $2, $3, $4, $5)
                             ON CONFLICT (writer) DO UPDATE SET seq = EXCLUDED.seq,
                               head = EXCLUDED.head, iat = EXCLUDED.iat, jws = EXCLUDED.jws
                             WHERE audit_bases.seq < EXCLUDED.seq",
                                &[
                                    &writer,
                                    &seq,
                                    &p.base.head,
                                    &to_i64(p.base.iat)?,
                                    &p.base.jws,
                                ],
                            )
                            .await?;
                        if moved != 1 {
                            return Err(PgErr::Ca(CaError::Store(format!(
                                "audit chain {writer:?} was pruned further meanwhile; nothing \
                                 was pruned"
                            ))));
                        }
                        // The certificates the records that go issued: this batch's, read
                        // here a page at a time.
                        let mut batch = crate::audit::PrunedBatch::new(
                            &p.plan,
                            base.map(to_u64).transpose()?.unwrap_or(0),
                        );
                        loop {
                            let rows = tx
                                .query(
                                    "SELECT seq, body, hash FROM audit_records
                                     WHERE writer = $1 AND seq > $2 AND seq <= $3
                                     ORDER BY seq LIMIT 512",
                                    &[&writer, &to_i64(batch.at())?, &seq],
                                )
                                .await?;
                            if rows.is_empty() {
                                break;
                            }
                            for r in &rows {
                                batch.record(
                                    to_u64(r.try_get(0)?)?,
                                    r.try_get(1)?,
                                    r.try_get(2)?,
                                )?;
                            }
                        }
                        let serials = batch.finish()?;
                        counts.chains += 1;
                        counts.records += tx
                            .execute(
                                "DELETE FROM audit_records WHERE writer = $1 AND seq <= $2",
                                &[&writer, &seq],
                            )
                            .await?;
                        counts.checkpoints += tx
                            .execute(
                                "DELETE FROM audit_checkpoints WHERE writer = $1 AND seq < $2",
                                &[&writer, &seq],
                            )
                            .await?;
                        counts.issuances += tx
                            .execute("DELETE FROM issuances WHERE serial = ANY($1)", &[&serials])
                            .await?;
                        tx.execute(
                            "DELETE FROM audit_base_revocations WHERE writer = $1",
                            &[&writer],
                        )
                        .await?;
                        let (subjects, exps): (Vec<&str>, Vec<i64>) = p
                            .revocations
                            .iter()
                            .map(|(s, e)| Ok((s.as_str(), to_i64(*e)?)))
                            .collect::<PgResult<Vec<_>>>()?
                            .into_iter()
                            .unzip();
                        tx.execute(
                            "INSERT INTO audit_base_revocations (writer, subject, exp)
                             SELECT $1, s, e FROM unnest($2::text[], $3::bigint[]) AS k(s, e)",
                            &[&writer, &subjects, &exps],
                        )
                        .await?;
                    }
                    Ok::<_, PgErr>(counts)
                })
            })
        })
    }

    fn latest_not_after(&self, jkt: &str) -> Result<Option<u64>> {
        let jkt = jkt.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                let v: Option<i64> = c
                    .query_one(
                        "SELECT MAX(not_after) FROM issuances WHERE jkt = $1",
                        &[&jkt],
                    )
                    .await?
                    .get(0);
                v.map(to_u64).transpose()
            })
        })
    }

    fn latest_expiry(&self, kind: RevocationKind, value: &str) -> Result<Option<u64>> {
        let Some(sql) = latest_expiry_sql(kind) else {
            return Ok(None);
        };
        let value = value.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                let v: Option<i64> = c.query_one(sql, &[&value]).await?.get(0);
                v.map(to_u64).transpose()
            })
        })
    }

    fn add_revocation(&mut self, r: &RevocationRecord, audit: &AuditEvent) -> Result<()> {
        self.write_revocation(r, None, audit).map(|_| ())
    }

    fn add_revocation_covering(
        &mut self,
        r: &RevocationRecord,
        skew: u64,
        audit: &AuditEvent,
    ) -> Result<RevocationRecord> {
        self.write_revocation(r, Some(skew), audit)
    }

    fn revocations(&self) -> Result<Vec<RevocationRecord>> {
        self.inner
            .run(move |c| Box::pin(async move { read_revocations(&*c).await }))
    }

    fn live_revocations_of(
        &self,
        kinds: &[RevocationKind],
        now: u64,
    ) -> Result<Vec<(RevocationKind, String)>> {
        let kinds: Vec<String> = kinds.iter().map(|k| k.as_str().to_owned()).collect();
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT kind, value FROM revocations WHERE kind = ANY($1::text[]) AND exp > $2",
                    &[&kinds, &to_i64(now)?],
                )
                .await?
                .iter()
                .map(|r| Ok((RevocationKind::parse(r.get(0))?, r.get(1))))
                .collect()
            })
        })
    }

    fn revoked_among(
        &self,
        targets: &[(RevocationKind, &str)],
        now: u64,
    ) -> Result<Option<(RevocationKind, String)>> {
        let kinds: Vec<String> = targets.iter().map(|(k, _)| k.as_str().to_owned()).collect();
        let values: Vec<String> = targets.iter().map(|(_, v)| (*v).to_owned()).collect();
        let hits: Vec<(String, String)> = self.inner.run(move |c| {
            Box::pin(async move {
                let now = to_i64(now)?;
                Ok(c.query(
                    "SELECT r.kind, r.value FROM revocations r
                     JOIN unnest($1::text[], $2::text[]) AS q(kind, value)
                       ON r.kind = q.kind AND r.value = q.value
                     WHERE r.exp > $3",
                    &[&kinds, &values, &now],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
            })
        })?;
        Ok(targets
            .iter()
            .find(|(k, v)| hits.iter().any(|(hk, hv)| hk == k.as_str() && hv == v))
            .map(|(k, v)| (*k, (*v).to_owned())))
    }

    fn add_bootstrap(
        &mut self,
        b: &BootstrapRecord,
        binding: Option<&str>,
        bound: Option<&TokenBound>,
        audit: &AuditEvent,
    ) -> Result<()> {
        let (b, binding, bound, audit, writer) = (
            b.clone(),
            binding.map(str::to_owned),
            bound.cloned(),
            audit.clone(),
            self.inner.writer.clone(),
        );
        self.inner.run(move |c| {
            Box::pin(async move {
                in_tx!(c, |tx| async {
                    // In the insert's transaction, under the task id's lock (READ COMMITTED
                    // would let two tokens of different agents naming one id at once, or a
                    // token and a task opening under it, both commit): CA-API.md 1.3.
                    lock_task_id(&tx, &b.task).await?;
                    let taken: bool = tx
                        .query_one(TASK_ID_TAKEN_FOR_TOKEN, &[&b.task, &b.agent])
                        .await?
                        .get(0);
                    if taken {
                        return Err(PgErr::Ca(CaError::TaskIdTaken(b.task.clone())));
                    }
                    // Under the creator's lock (taken after the task id's, always in that
                    // order): concurrent creations of one service, on any replica, cannot pass
                    // the bound (CA-API.md 3.6).
                    if let Some(bound) = &bound {
                        tx.execute(
                            "SELECT pg_advisory_xact_lock(hashtextextended('agentid-token-creator:' || $1, 0))",
                            &[&bound.creator],
                        )
                        .await?;
                        let held: i64 = tx
                            .query_one(
                                OUTSTANDING_TOKENS,
                                &[&bound.creator, &to_i64(bound.now)?, &to_i64(bound.max)?],
                            )
                            .await?
                            .get(0);
                        if u64::try_from(held).unwrap_or(u64::MAX) >= bound.max {
                            return Err(PgErr::Ca(CaError::TooManyTokens {
                                creator: bound.creator.clone(),
                                max: bound.max,
                            }));
                        }
                    }
                    tx.execute(
                        "INSERT INTO bootstrap_tokens (hash, agent, task, expires, binding, creator)
                         VALUES ($1, $2, $3, $4, $5::text, ($5::text)::jsonb ->> 'creator')",
                        &[&b.hash, &b.agent, &b.task, &to_i64(b.expires)?, &binding],
                    )
                    .await?;
                    append_audit_tx(&tx, &writer, &audit).await
                })
            })
        })
    }

    fn prune_bootstrap_tokens(&mut self, before: u64, limit: usize) -> Result<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.inner.run(move |c| {
            Box::pin(async move {
                in_tx!(c, |tx| async {
                    let n = tx
                        .execute(PRUNE_TOKENS, &[&to_i64(before)?, &limit])
                        .await?;
                    Ok::<_, PgErr>(usize::try_from(n).unwrap_or(usize::MAX))
                })
            })
        })
    }

    fn bootstrap(&self, hash: &str) -> Result<Option<BootstrapRecord>> {
        Ok(self
            .bootstrap_state(hash)?
            .filter(|s| s.used_at.is_none())
            .map(|s| s.record))
    }

    fn bootstrap_state(&self, hash: &str) -> Result<Option<crate::token::BootstrapState>> {
        let hash = hash.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query_opt(
                    "SELECT hash, agent, task, expires, used_at, binding FROM bootstrap_tokens WHERE hash = $1",
                    &[&hash],
                )
                .await?
                .map(|r| {
                    let used: Option<i64> = r.get(4);
                    Ok(crate::token::BootstrapState {
                        record: BootstrapRecord {
                            hash: r.get(0),
                            agent: r.get(1),
                            task: r.get(2),
                            expires: to_u64(r.get(3))?,
                        },
                        used_at: used.map(to_u64).transpose()?,
                        binding: r.get(5),
                    })
                })
                .transpose()
            })
        })
    }

    fn unredeemed_token_agent(&self, task: &str) -> Result<Option<String>> {
        let task = task.to_owned();
        self.inner.run(move |c| {
            Box::pin(async move {
                Ok(c.query_opt(
                    "SELECT agent FROM bootstrap_tokens WHERE task = $1 AND used_at IS NULL LIMIT 1",
                    &[&task],
                )
                .await?
                .map(|r| r.get(0)))
            })
        })
    }

    fn live_tasks_page(
        &self,
        agents: &[String],
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<LiveTask>> {
        use RevocationKind as K;
        let mut agents = agents.to_vec();
        agents.sort_unstable();
        agents.dedup();
        let budget =
            i64::try_from(super::tasks_scan_budget(limit, agents.len())).unwrap_or(i64::MAX);
        let after = after.unwrap_or("").to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.inner.run(move |c| {
            Box::pin(async move {
                // In two phases, each bounded by the page (as SQLite's, see
                // `TASKS_SCAN_FACTOR`): `scan`, the live tasks of the listed agents among the
                // next `budget` tasks by id (up to `e.edge`); then, only if that found less
                // than the page and the tasks go on, `seek`: agent by agent (LATERAL), the
                // agent's identities after the edge sought by (agent, task) in
                // `identities_agent_task` (schema version 3), at most `limit` of them, each
                // joined to the task it holds by the tasks' primary key. A caller that may
                // list a few agents of a large trust domain reads their own rows, never the
                // other agents' tasks.
                c.query(
                    "WITH s AS MATERIALIZED (
                       SELECT task FROM tasks WHERE task > $1 ORDER BY task LIMIT $9),
                     e AS MATERIALIZED (SELECT count(*) AS n, max(task) AS edge FROM s),
                     scan AS MATERIALIZED (
                       SELECT t.task, t.holder, t.grant_jti, t.exp, t.created, t.principal,
                         t.max_depth, i.agent, i.jkt
                       FROM tasks t JOIN identities i ON i.identity = t.holder
                       WHERE t.task > $1 AND t.task <= (SELECT edge FROM e) AND t.exp > $2
                         AND i.agent = ANY($3::text[])
                         AND NOT EXISTS (SELECT 1 FROM revocations r
                                         WHERE r.kind = $4 AND r.value = t.task AND r.exp > $2)
                         AND NOT EXISTS (SELECT 1 FROM revocations r
                                         WHERE r.kind = $5 AND r.value = i.agent AND r.exp > $2)
                         AND NOT EXISTS (SELECT 1 FROM revocations r
                                         WHERE r.kind = $6 AND r.value = i.jkt AND r.exp > $2)
                         AND NOT EXISTS (SELECT 1 FROM revocations r
                                         WHERE r.kind = $7 AND r.value = t.grant_jti AND r.exp > $2)
                       ORDER BY t.task LIMIT $8),
                     seek AS (
                       SELECT x.task, x.holder, x.grant_jti, x.exp, x.created, x.principal,
                         x.max_depth, x.agent, x.jkt
                       FROM e CROSS JOIN (SELECT DISTINCT unnest($3::text[]) AS agent) a
                       CROSS JOIN LATERAL (
                         SELECT t.task, t.holder, t.grant_jti, t.exp, t.created, t.principal,
                           t.max_depth, i.agent, i.jkt
                         FROM identities i JOIN tasks t ON t.task = i.task AND t.holder = i.identity
                         WHERE i.agent = a.agent AND i.task > e.edge AND t.exp > $2
                           AND NOT EXISTS (SELECT 1 FROM revocations r
                                           WHERE r.kind = $4 AND r.value = t.task AND r.exp > $2)
                           AND NOT EXISTS (SELECT 1 FROM revocations r
                                           WHERE r.kind = $5 AND r.value = i.agent AND r.exp > $2)
                           AND NOT EXISTS (SELECT 1 FROM revocations r
                                           WHERE r.kind = $6 AND r.value = i.jkt AND r.exp > $2)
                           AND NOT EXISTS (SELECT 1 FROM revocations r
                                           WHERE r.kind = $7 AND r.value = t.grant_jti AND r.exp > $2)
                         ORDER BY i.task LIMIT $8) x
                       WHERE e.n >= $9 AND (SELECT count(*) FROM scan) < $8)
                     SELECT * FROM scan UNION ALL SELECT * FROM seek ORDER BY task LIMIT $8",
                    &[
                        &after,
                        &to_i64(now)?,
                        &agents,
                        &K::Task.as_str(),
                        &K::Agent.as_str(),
                        &K::Jkt.as_str(),
                        &K::Jti.as_str(),
                        &limit,
                        &budget,
                    ],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(LiveTask {
                        task: row_task(r)?,
                        agent: r.get::<_, Option<String>>(7).unwrap_or_default(),
                        jkt: r.get(8),
                    })
                })
                .collect()
            })
        })
    }

    fn append_audit(&mut self, ev: &AuditEvent) -> Result<()> {
        let (ev, writer) = (ev.clone(), self.inner.writer.clone());
        self.inner.run(move |c| {
            Box::pin(async move { in_tx!(c, |tx| append_audit_tx(&tx, &writer, &ev)) })
        })
    }

    fn checkpoint_state(&self) -> Result<CheckpointState> {
        let writer: Arc<str> = Arc::from(self.inner.writer.id());
        self.inner.run(move |c| {
            Box::pin(async move {
                let head = c
                    .query_opt(
                        "SELECT seq, hash FROM audit_records WHERE writer = $1 ORDER BY seq DESC LIMIT 1",
                        &[&&*writer],
                    )
                    .await?
                    .map(|r| Ok::<_, PgErr>((to_u64(r.get(0))?, r.get(1))))
                    .transpose()?;
                let last = c
                    .query_opt(
                        "SELECT seq, iat FROM audit_checkpoints WHERE writer = $1 ORDER BY seq DESC LIMIT 1",
                        &[&&*writer],
                    )
                    .await?
                    .map(|r| Ok::<_, PgErr>((to_u64(r.get(0))?, to_u64(r.get(1))?)))
                    .transpose()?;
                Ok(CheckpointState {
                    writer: writer.to_string(),
                    head,
                    last,
                })
            })
        })
    }

    fn add_checkpoint(&mut self, cp: &CheckpointRecord) -> Result<()> {
        let cp = cp.clone();
        self.inner
            .run(move |c| Box::pin(async move { in_tx!(c, |tx| insert_checkpoint(&tx, &cp)) }))
    }

    fn set_checkpoint_signer(&mut self, signer: CheckpointSigner) {
        self.inner.writer.set_signer(signer);
    }

    fn audit_has_signatures(&self) -> Result<bool> {
        self.inner.run(|c| {
            Box::pin(async move {
                let row = c
                    .query_one("SELECT EXISTS (SELECT 1 FROM audit_checkpoints) OR EXISTS (SELECT 1 FROM audit_bases)", &[])
                    .await?;
                Ok(row.try_get::<_, bool>(0)?)
            })
        })
    }

    fn audit_visit(&self, since: Option<u64>, visitor: &mut dyn AuditVisitor) -> Result<()> {
        let since = to_i64(since.unwrap_or(0)).map_err(PgErr::into_ca)?;
        // One REPEATABLE READ transaction on one connection, in steps: the head and the
        // writers first, then the serials and each writer's records through cursors, a page
        // at a time, each page visited before the next is fetched. On any failure the
        // connection is dropped, which ends the transaction. Between two pages the
        // transaction is idle while the visitor works (an export writes each page to an output
        // that may stall: a pipe to a slow reader): the connection's idle-in-transaction bound
        // (5 s, for the write transactions that hold locks) would end it and fail the read half
        // done, so this read-only one, which holds up no writer, gets the read's own bound.
        let mut client = self.inner.take();
        let (head, mut writers) = audit_step(&self.inner, &mut client, true, |c| {
            Box::pin(async move {
                c.batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                     SET LOCAL statement_timeout = {0};
                     SET LOCAL idle_in_transaction_session_timeout = {0}",
                    AUDIT_READ_TIMEOUT.as_millis()
                ))
                .await?;
                let signed_head = |r: &tokio_postgres::Row| -> PgResult<CheckpointRecord> {
                    Ok(CheckpointRecord {
                        writer: r.try_get(0)?,
                        seq: crate::audit::stored_number(r.try_get(1)?),
                        head: r.try_get(2)?,
                        iat: crate::audit::stored_number(r.try_get(3)?),
                        jws: r.try_get(4)?,
                    })
                };
                let checkpoints = c
                    .query(
                        "SELECT writer, seq, head, iat, jws FROM audit_checkpoints ORDER BY writer, seq",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(signed_head)
                    .collect::<PgResult<Vec<_>>>()?;
                let bases = c
                    .query(
                        "SELECT writer, seq, head, iat, jws FROM audit_bases ORDER BY writer",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(signed_head)
                    .collect::<PgResult<Vec<_>>>()?;
                let base_revocations = c
                    .query(
                        "SELECT writer, subject, exp FROM audit_base_revocations
                         ORDER BY writer, subject",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            crate::audit::stored_number(r.try_get(2)?),
                        ))
                    })
                    .collect::<PgResult<Vec<_>>>()?;
                // As the CA reads them (`audit::held_revocation`): a row it would not find, or
                // finds ended, is not held.
                let revocations = c
                    .query("SELECT kind, value, exp FROM revocations ORDER BY id", &[])
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(crate::audit::held_revocation_of(
                            r.try_get::<_, &str>(0)?,
                            r.try_get::<_, &str>(1)?,
                            crate::audit::held_exp(r.try_get(2)?),
                        ))
                    })
                    .filter_map(core::result::Result::transpose)
                    .collect::<PgResult<Vec<_>>>()?;
                let writers = c
                    .query("SELECT DISTINCT writer FROM audit_records", &[])
                    .await?
                    .iter()
                    .map(|r| r.try_get::<_, String>(0))
                    .collect::<core::result::Result<Vec<_>, _>>()?;
                Ok((
                    AuditHead {
                        checkpoints,
                        bases,
                        base_revocations,
                        revocations,
                    },
                    writers,
                ))
            })
        })?;
        visitor.head(head)?;
        if visitor.wants_serials() {
            audit_serials(&self.inner, &mut client, &mut |s| {
                visitor.serial(s).map(|()| ControlFlow::Continue(()))
            })?;
        }
        // Chain order: by writer as Rust orders strings (bytes), whatever the database's
        // collation; within a chain by seq, a negative one (read as u64::MAX) last.
        writers.sort();
        'writers: for w in writers {
            for negative in [false, true] {
                let w = w.clone();
                let sql = format!(
                    "DECLARE audit_records_c NO SCROLL CURSOR FOR
                       SELECT writer, seq, ts, body, hash FROM audit_records
                        WHERE writer = $1 AND seq {} 0
                          AND seq >= (SELECT MIN(seq) FROM audit_records
                                       WHERE writer = $1 AND ts >= $2)
                        ORDER BY seq",
                    if negative { "<" } else { ">=" }
                );
                audit_step(&self.inner, &mut client, false, move |c| {
                    Box::pin(async move {
                        c.execute(sql.as_str(), &[&w, &since]).await?;
                        Ok(())
                    })
                })?;
                let mut stop = false;
                while !stop {
                    let page = audit_step(&self.inner, &mut client, false, |c| {
                        Box::pin(async move {
                            c.query(&format!("FETCH {AUDIT_PAGE} FROM audit_records_c"), &[])
                                .await?
                                .iter()
                                .map(|r| {
                                    Ok(AuditRecord {
                                        writer: r.try_get(0)?,
                                        seq: crate::audit::stored_number(r.try_get(1)?),
                                        ts: crate::audit::stored_number(r.try_get(2)?),
                                        body: r.try_get(3)?,
                                        hash: r.try_get(4)?,
                                    })
                                })
                                .collect::<PgResult<Vec<_>>>()
                        })
                    })?;
                    if page.len() < AUDIT_PAGE {
                        stop = true;
                    }
                    for r in page {
                        if visitor.record(&r)?.is_break() {
                            break 'writers;
                        }
                    }
                }
                audit_step(&self.inner, &mut client, false, |c| {
                    Box::pin(async move {
                        c.batch_execute("CLOSE audit_records_c").await?;
                        Ok(())
                    })
                })?;
            }
        }
        if visitor.serials_again() {
            audit_serials(&self.inner, &mut client, &mut |s| visitor.serial_again(s))?;
        }
        audit_step(&self.inner, &mut client, false, |c| {
            Box::pin(async move {
                c.batch_execute("COMMIT").await?;
                Ok(())
            })
        })?;
        self.inner.give_back(client);
        Ok(())
    }

    fn publish_revocations(
        &mut self,
        now: u64,
        min_seq: u64,
        make: &mut dyn FnMut(u64, &[ListRow]) -> Result<Publication>,
    ) -> Result<PublishedList> {
        let writer = self.inner.writer.clone();
        let min_seq = to_i64(min_seq).map_err(PgErr::into_ca)?;
        self.inner.stepped(
            move |c| {
                Box::pin(async move {
                    // The counter's row lock is held until commit: one publisher at a time, and
                    // the entries are read after it is taken, so a higher `seq` holds at least
                    // what a lower one held.
                    let seq: i64 = c
                        .query_one(
                            "UPDATE meta SET value = GREATEST(value + 1, $1) WHERE key = 'revocation_seq' RETURNING value",
                            &[&min_seq],
                        )
                        .await?
                        .get(0);
                    // The epoch before the entries: a revocation committed in between is in
                    // the list and only makes the next publication come sooner.
                    let epoch: i64 = c
                        .query_one("SELECT value FROM meta WHERE key = 'revocation_epoch'", &[])
                        .await?
                        .get(0);
                    let entries = read_list_rows(&*c, now).await?;
                    Ok((to_u64(seq)?, to_u64(epoch)?, entries))
                })
            },
            |(seq, _, entries)| make(*seq, entries),
            move |c, (seq, epoch, _), p: Publication| {
                let writer = writer.clone();
                Box::pin(async move {
                    c.execute(
                        "INSERT INTO published_lists (seq, compact, published_at, next_update, revocation_epoch)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &to_i64(seq)?,
                            &p.compact,
                            &to_i64(p.published_at)?,
                            &to_i64(p.next_update)?,
                            &to_i64(epoch)?,
                        ],
                    )
                    .await?;
                    // The latest PUBLISHED_LISTS_KEPT rows stay, whatever the gaps between
                    // their `seq`s.
                    c.execute(
                        "DELETE FROM published_lists WHERE seq < (SELECT seq FROM published_lists
                         ORDER BY seq DESC LIMIT 1 OFFSET $1)",
                        &[&to_i64(PUBLISHED_LISTS_KEPT.saturating_sub(1))?],
                    )
                    .await?;
                    append_audit_tx(&*c, &writer, &p.audit).await?;
                    Ok(PublishedList {
                        seq,
                        compact: p.compact,
                        published_at: p.published_at,
                        next_update: p.next_update,
                        revocation_epoch: epoch,
                    })
                })
            },
        )
    }

    fn latest_published(&self) -> Result<Option<PublishedList>> {
        self.inner.run(move |c| {
            Box::pin(async move {
                c.query_opt(
                    "SELECT seq, compact, published_at, next_update, revocation_epoch
                     FROM published_lists ORDER BY seq DESC LIMIT 1",
                    &[],
                )
                .await?
                .as_ref()
                .map(row_published)
                .transpose()
            })
        })
    }

    fn latest_published_after(&self, after: Option<u64>) -> Result<Option<PublishedList>> {
        self.inner.run(move |c| {
            Box::pin(async move {
                let after = match after {
                    Some(a) => to_i64(a)?,
                    None => -1,
                };
                c.query_opt(
                    "SELECT seq, compact, published_at, next_update, revocation_epoch
                     FROM published_lists WHERE seq > $1 ORDER BY seq DESC LIMIT 1",
                    &[&after],
                )
                .await?
                .as_ref()
                .map(row_published)
                .transpose()
            })
        })
    }

    fn revocation_epoch(&self) -> Result<u64> {
        self.inner.run(move |c| {
            Box::pin(async move {
                let v: i64 = c
                    .query_one("SELECT value FROM meta WHERE key = 'revocation_epoch'", &[])
                    .await?
                    .get(0);
                to_u64(v)
            })
        })
    }

    fn revoke_principal(
        &mut self,
        p: &RevocationRecord,
        skew: u64,
        audit: &mut dyn FnMut(&[RevocationRecord]) -> Vec<AuditEvent>,
    ) -> Result<Vec<RevocationRecord>> {
        let writer = self.inner.writer.clone();
        let p = Arc::new(p.clone());
        self.inner.stepped(
            move |c| {
                let p = p.clone();
                Box::pin(async move {
                    // Before the tasks are read: a task opening either committed already (and
                    // is read here) or waits, then sees the principal's entry.
                    c.execute("SELECT pg_advisory_xact_lock($1)", &[&REVOCATION_LOCK])
                        .await?;
                    let now = to_i64(p.revoked_at)?;
                    // Verifiers accept a grant until `exp + skew`: a task is live until then.
                    let since = to_i64(p.revoked_at.saturating_sub(skew))?;
                    // Every task's entry in one statement, not one round trip each: a
                    // principal with many tasks (tens of thousands over a network) would
                    // otherwise outlast the operation's bound at every attempt, and never be
                    // revoked, while holding REVOCATION_LOCK (and so every issuance) each time.
                    let rows = c
                        .query(
                            "WITH expanded AS (
                               SELECT t.id, t.task, GREATEST(t.exp,
                                 COALESCE((SELECT MAX(not_after) FROM issuances WHERE task = t.task), 0),
                                 COALESCE((SELECT MAX(cap) FROM identities WHERE task = t.task), 0)) AS latest
                               FROM tasks t WHERE t.principal = $1 AND t.exp > $2),
                             listed AS (
                               INSERT INTO revocations (kind, value, exp, revoked_at, reason, requester)
                               SELECT 'task', task, GREATEST(latest, $3) + $4, $3, $5, $6
                               FROM expanded ORDER BY id
                               ON CONFLICT (kind, value) DO UPDATE
                                 SET exp = GREATEST(revocations.exp, excluded.exp))
                             SELECT task, latest FROM expanded ORDER BY id",
                            &[&p.value, &since, &now, &to_i64(skew)?, &p.reason, &p.requester],
                        )
                        .await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for r in rows {
                        let latest: i64 = r.get(1);
                        out.push(RevocationRecord {
                            kind: RevocationKind::Task,
                            value: r.get(0),
                            exp: to_u64(latest.max(now))?.saturating_add(skew),
                            revoked_at: p.revoked_at,
                            reason: p.reason.clone(),
                            requester: p.requester.clone(),
                        });
                    }
                    upsert_revocation(&*c, &p).await?;
                    c.execute(
                        "UPDATE meta SET value = GREATEST(value + 1, $1) WHERE key = 'revocation_epoch'",
                        &[&super::revocation_epoch_floor()],
                    )
                    .await?;
                    Ok(out)
                })
            },
            |out: &Vec<RevocationRecord>| Ok(audit(out)),
            move |c, out, events: Vec<AuditEvent>| {
                let writer = writer.clone();
                Box::pin(async move {
                    for ev in &events {
                        append_audit_tx(&*c, &writer, ev).await?;
                    }
                    Ok(out)
                })
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_remote_database_needs_tls_and_its_ca() {
        let e = PgSettings::from_url("postgres://ca@db.example.org/agentid", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("store_ca_file"), "{e}");
        let e = PgSettings::from_url(
            "postgres://ca@db.example.org/agentid?sslmode=disable",
            None,
            Some(Path::new("/nonexistent.pem")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sslmode=disable"), "{e}");
        // Loopback and Unix sockets need none.
        for url in [
            "postgres://ca@127.0.0.1/agentid",
            "postgres://ca@localhost:5433/agentid",
            "postgres://ca@[::1]/agentid",
            "postgres://ca@%2Fvar%2Frun%2Fpostgresql/agentid",
        ] {
            let s = PgSettings::from_url(url, None, None).unwrap();
            assert!(s.tls.is_none(), "{url}");
        }
    }

    #[test]
    fn the_password_comes_from_an_owner_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "pw", "s3cret\n", 0o600);
        let s = PgSettings::from_url("postgres://ca@127.0.0.1/agentid", Some(&good), None).unwrap();
        assert_eq!(s.config.get_password(), Some(&b"s3cret"[..]));
        let open = write(dir.path(), "pw-open", "s3cret\n", 0o644);
        let e = PgSettings::from_url("postgres://ca@127.0.0.1/agentid", Some(&open), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let e = parse_url("postgres://ca:pw@127.0.0.1/agentid")
            .unwrap_err()
            .to_string();
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn a_password_file_that_is_not_a_regular_file_or_too_large_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO planted where the password file should be: opening it to read would wait for
        // a writer for ever, and the CA would never start nor say why.
        let fifo = dir.path().join("pw-fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();
        let big = write(dir.path(), "pw-big", &"x".repeat(2 * 1024 * 1024), 0o600);
        for (p, pgpass) in [(&fifo, false), (&fifo, true), (&big, false), (&big, true)] {
            let (tx, rx) = std::sync::mpsc::channel();
            let path = p.clone();
            std::thread::spawn(move || {
                let r = if pgpass {
                    let c = parse_url("postgres://ca@127.0.0.1/agentid").unwrap();
                    pgpass_lookup(&path, &c).map(drop)
                } else {
                    PgSettings::from_url("postgres://ca@127.0.0.1/agentid", Some(&path), None)
                        .map(drop)
                };
                let _ = tx.send(r.map_err(|e| e.to_string()));
            });
            let got = rx.recv_timeout(Duration::from_secs(5));
            if got.is_err() {
                // Release the blocked reader before failing.
                let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
            }
            let e = got
                .unwrap_or_else(|_| panic!("{} (pgpass: {pgpass}) blocked", p.display()))
                .unwrap_err();
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
    }

    /// `store_ca_file` holds the one CA the database server is checked against: whoever could
    /// write it (or a directory above it) could put theirs there and, on the path to the
    /// database, answer as the CA's store. It is read as the CA directory's files are: only if
    /// held, bounded, and a FIFO planted there is refused without blocking.
    #[test]
    fn the_store_ca_file_is_read_only_if_held_bounded_and_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.example.org".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let ca = write(&shared, "db-ca.pem", &cert.pem(), 0o644);
        let url = "postgres://ca@db.example.org/agentid";
        let s = PgSettings::from_url(url, None, Some(&ca)).unwrap();
        assert!(s.tls.is_some());
        for (p, mode) in [(&shared, 0o777), (&ca, 0o666)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = PgSettings::from_url(url, None, Some(&ca)).err().unwrap();
            let CaError::NotHeld(fs) = &e else {
                panic!("{e}")
            };
            assert_eq!(fs.path(), p.as_path(), "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("chmod go-w {}", p.display())),
                "{e}"
            );
            let back = if p.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(back)).unwrap();
        }
        let fifo = dir.path().join("ca-fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let big = write(dir.path(), "ca-big", &"x".repeat(2 * 1024 * 1024), 0o644);
        for p in [&fifo, &big] {
            let (tx, rx) = std::sync::mpsc::channel();
            let path = p.clone();
            std::thread::spawn(move || {
                let r = PgSettings::from_url(url, None, Some(&path)).map(drop);
                let _ = tx.send(r.map_err(|e| e.to_string()));
            });
            let got = rx.recv_timeout(Duration::from_secs(5));
            if got.is_err() {
                // Release the blocked reader before failing.
                let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
            }
            let e = got
                .unwrap_or_else(|_| panic!("{} blocked", p.display()))
                .unwrap_err();
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "pgpass",
            "# comment\nother.host:5432:agentid:ca:wrong\ndb.example.org:5432:agentid:ca:pa\\:ss\\\\w\n*:*:*:*:fallback\n",
            0o600,
        );
        let c = parse_url("postgres://ca@db.example.org/agentid").unwrap();
        assert_eq!(pgpass_lookup(&p, &c).unwrap().as_deref(), Some("pa:ss\\w"));
        let c = parse_url("postgres://someone@elsewhere:6000/x").unwrap();
        assert_eq!(pgpass_lookup(&p, &c).unwrap().as_deref(), Some("fallback"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(pgpass_lookup(&p, &c).is_err());
    }

    #[test]
    fn a_database_that_accepts_the_connection_but_never_answers_is_a_store_error_within_the_connect_bound(
    ) {
        // A listener that never accepts: the kernel completes the TCP handshake, and the
        // server's answer to the startup message never comes (a frozen postmaster).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let start = std::time::Instant::now();
        let e = PgStore::open_url(&format!("postgres://ca@127.0.0.1:{port}/agentid"), "main")
            .unwrap_err();
        println!("{e} after {:?}", start.elapsed());
        assert!(matches!(e, CaError::Store(_)), "{e}");
        assert!(
            e.to_string()
                .contains("could not connect to the database within 3 s"),
            "{e}"
        );
        drop(listener);
    }

    #[test]
    fn a_database_that_is_down_is_a_prompt_store_error() {
        // A port nothing listens on: refused at once, reported as a store error (503).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = PgStore::open_url(&format!("postgres://ca@127.0.0.1:{port}/agentid"), "main")
            .unwrap_err();
        assert!(matches!(e, CaError::Store(_)), "{e}");
    }
}
