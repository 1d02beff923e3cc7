//! The one error type of the CA crate.

use std::path::PathBuf;

/// A `Result` with [`CaError`].
pub type Result<T, E = CaError> = core::result::Result<T, E>;

/// Everything that can go wrong while running the CA.
///
/// Each refusal has its own variant so that callers (the CLI, the HTTP service, tests) can tell a
/// policy decision from a malformed request or a broken CA directory.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    // ---- CA directory and key material ----
    /// Reading or writing a file of the CA directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A private key file is readable by group or others; the CA refuses to use it.
    #[error("{path}: private key file is accessible by group or others (mode {mode:o}); run `chmod 600` on it")]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file of the CA directory (its configuration, policy, certificates, keys or signed
    /// bundle) that others could have put there: it, or a directory or link on the way to it,
    /// is not held by the user reading it ([`agentid_fs::FsError::NotHeld`], which names the
    /// entry and the `chmod` or `chown` to run). Whoever controls that entry could choose what
    /// the CA issues, to whom, and with which key.
    #[error(transparent)]
    NotHeld(agentid_fs::FsError),
    /// `ca init` found existing CA material in the target directory.
    #[error("{path}: already exists; refusing to overwrite CA material")]
    AlreadyInitialized {
        /// The existing file.
        path: PathBuf,
    },
    /// A file of the CA directory is not what it should be (bad PEM, bad TOML, wrong key).
    #[error("{path}: {reason}")]
    BadMaterial {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The issuing key does not match the public key of the intermediate certificate.
    #[error("issuing key does not match the intermediate certificate's public key")]
    IssuerKeyMismatch,
    /// The X.509 signer (file, KMS or HSM) failed to sign.
    #[error("issuing key signer failed: {0}")]
    Signer(String),
    /// Building or serializing a certificate failed.
    #[error("certificate generation failed: {0}")]
    CertificateGeneration(String),
    /// Random bytes could not be obtained from the operating system.
    #[error("system random number generator failed")]
    Random,

    // ---- CSR ----
    /// The CSR is not a DER (or PEM) PKCS#10 request, or has trailing bytes.
    #[error("csr: malformed certification request: {0}")]
    CsrMalformed(String),
    /// The CSR's self-signature does not verify with the key it carries.
    #[error("csr: signature does not verify with the requested public key")]
    CsrBadSignature,
    /// The CSR's key is not P-256 (uncompressed) or Ed25519 (for example RSA, P-384, a compressed point).
    #[error("csr: unsupported public key ({0}); only ECDSA P-256 (uncompressed) and Ed25519 are accepted")]
    CsrUnsupportedKey(String),
    /// The CSR asks for a CA certificate (`basicConstraints` with `cA` TRUE).
    #[error("csr: requests a CA certificate (basicConstraints CA:TRUE); per-task certificates are never CAs")]
    CsrRequestsCa,
    /// The CSR asks for subject alternative names other than exactly the identity being issued.
    #[error("csr: requests subject alternative names {requested:?}; only the single URI SAN {expected} may be requested")]
    CsrSanMismatch {
        /// The names the CSR asks for.
        requested: Vec<String>,
        /// The identity being issued.
        expected: String,
    },
    /// The CSR asks for key usages that the leaf profile never grants (keyCertSign, cRLSign, ...).
    #[error("csr: requests key usage {0}; per-task certificates carry digitalSignature only")]
    CsrKeyUsage(String),
    /// The CSR asks for an extended key usage other than serverAuth/clientAuth.
    #[error("csr: requests extended key usage {0}; per-task certificates carry serverAuth and clientAuth only")]
    CsrExtendedKeyUsage(String),
    /// The CSR asks for an extension the CA does not understand, or repeats one.
    #[error("csr: requests unsupported or duplicate extension {0}")]
    CsrUnsupportedExtension(String),

    // ---- Identity and keys ----
    /// An identity, name, scope or other protocol value is invalid.
    #[error("{0}")]
    Protocol(#[from] agentid_protocol::Error),
    /// The request names an identity of another trust domain.
    #[error("identity {identity} is not in this CA's trust domain {trust_domain}")]
    WrongTrustDomain {
        /// The requested identity.
        identity: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The key is already recorded for another identity (a task key belongs to one identity).
    #[error("key {jkt} is already bound to {bound_to}; a key serves exactly one identity")]
    KeyInUse {
        /// The key's RFC 7638 thumbprint.
        jkt: String,
        /// The identity that holds it.
        bound_to: String,
    },
    /// The identity already has another key (renewal and re-issuance keep the task key).
    #[error("{identity} is bound to key {bound}; refusing a certificate for key {requested}")]
    KeyMismatch {
        /// The identity.
        identity: String,
        /// Its recorded key thumbprint.
        bound: String,
        /// The requested key thumbprint.
        requested: String,
    },
    /// The identity is already issued (a task is opened once; use renewal).
    #[error("{0} already exists; renew it instead of issuing it again")]
    IdentityExists(String),
    /// A task id another agent's task holds, or another agent's unredeemed bootstrap token
    /// names: task ids are unique in the trust domain, whatever the agent (CA-API.md 1.3), and a
    /// task is known from the moment a token names it (3.10).
    #[error("task id {0} belongs to another agent (its task, or a bootstrap token naming it); task ids are unique in the trust domain")]
    TaskIdTaken(String),
    /// A service already holds as many unredeemed bootstrap tokens that have not expired as it
    /// may (CA-API.md 3.6): no token is made until one is redeemed or expires.
    #[error("{creator} holds {max} unredeemed bootstrap tokens that have not expired, the most a service may hold; no token was made")]
    TooManyTokens {
        /// The creator, `svc:NAME`.
        creator: String,
        /// The bound.
        max: u64,
    },
    /// Renewal or a child request names an identity the CA never issued.
    #[error("{0} was never issued by this CA")]
    UnknownIdentity(String),
    /// The serial number, task or `jti` to revoke is unknown to this CA.
    #[error("unknown {kind} {value}")]
    NotFound {
        /// What was looked up (`serial`, `task`, `jti`).
        kind: &'static str,
        /// The value.
        value: String,
    },
    /// The agent, task, key or identity has been revoked; the CA issues nothing more for it.
    #[error("{kind} {value} is revoked")]
    Revoked {
        /// The kind of entry (`agent`, `task`, `jkt`, `jti`).
        kind: &'static str,
        /// The revoked value.
        value: String,
    },

    // ---- Policy and authorization ----
    /// The request is outside the issuance policy; the message names the rule.
    #[error("policy: {message} (rule {rule})")]
    Policy {
        /// The rule's path in policy.toml, e.g. `agents.planner.scopes`.
        rule: String,
        /// What was refused.
        message: String,
    },
    /// The requester may not request this certificate.
    #[error("unauthorized: {requester} may not request {subject} (rule {rule})")]
    Unauthorized {
        /// Who asked.
        requester: String,
        /// What was asked for.
        subject: String,
        /// The policy rule consulted.
        rule: String,
    },
    /// A bootstrap token is unknown, used, expired, or bound to another agent or task.
    #[error("bootstrap token rejected: {0}")]
    BootstrapToken(&'static str),
    /// A child certificate would outlive its parent's chain (or the parent's chain has expired).
    #[error(
        "child certificate would end at {} but the parent's chain ends at {}",
        unix_time(.requested),
        unix_time(.parent_exp)
    )]
    OutlivesParent {
        /// The requested notAfter (Unix seconds).
        requested: u64,
        /// The parent's chain expiry (Unix seconds).
        parent_exp: u64,
    },
    /// A child would sit deeper in its task than the task's grant allows (`max_depth`: 0 seals
    /// the task, 1 allows children of the root holder, ...).
    #[error("a child at depth {depth} exceeds the task's max_depth {max_depth}")]
    ChildTooDeep {
        /// The child's depth (1 for a child of the task's root holder).
        depth: u32,
        /// The task grant's `max_depth`.
        max_depth: u8,
    },
    /// The parent named in a child request holds no live certificate for this task.
    #[error("parent {0} holds no live certificate")]
    ParentNotActive(String),
    /// A request parameter is invalid (zero TTL, time before the epoch, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    // ---- Store ----
    /// The store failed.
    #[error("store: {0}")]
    Store(String),

    // ---- Audit ----
    /// The audit record of an operation could not be written, so its result is not handed out
    /// (no record, no certificate). The SQLite store writes records in the operation's own
    /// transaction, so there a failed record is a failed (rolled back) store operation instead;
    /// this variant is for stores that keep their audit trail elsewhere.
    #[error("audit log write failed, result withheld: {0}")]
    AuditWrite(String),
    /// The audit trail does not verify, so nothing was pruned: a prune would delete the
    /// evidence ([`crate::CertificateAuthority::prune_audit`]).
    #[error("the audit trail does not verify, so nothing was pruned: {0}")]
    AuditBroken(Box<crate::audit::AuditBreak>),
}

impl CaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CaError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn material(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CaError::BadMaterial {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn policy(rule: impl Into<String>, message: impl Into<String>) -> Self {
        CaError::Policy {
            rule: rule.into(),
            message: message.into(),
        }
    }

    /// The policy.toml rule that refused, for a policy refusal ([`CaError::Policy`],
    /// [`CaError::Unauthorized`]): e.g. `agents.planner.scopes`.
    pub fn policy_rule(&self) -> Option<&str> {
        match self {
            CaError::Policy { rule, .. } | CaError::Unauthorized { rule, .. } => Some(rule),
            _ => None,
        }
    }

    /// What the requester can do about a refusal that is not a policy rule's, when there is
    /// one: a child of a sealed task needs a task opened with a deeper `max_depth`.
    pub fn next_step(&self) -> Option<String> {
        match self {
            CaError::NotHeld(e) => e.next_step(),
            CaError::ChildTooDeep { depth, .. } => Some(format!(
                "open the parent's task with --max-depth {depth} or more (within its agent rule's max_depth), then ask for the child again"
            )),
            CaError::Revoked { kind, .. } => match *kind {
                "agent" => Some(
                    "the CA forgets no revocation: to use the name again, give its policy rule a new name"
                        .to_owned(),
                ),
                "task" | "jti" => Some("open a new task".to_owned()),
                "jkt" => Some("use a new key, in a new task".to_owned()),
                _ => None,
            },
            CaError::TooManyTokens { .. } => Some(
                "have the agents redeem the tokens already handed out, or wait for them to expire (a shorter expires_in_secs frees the slots sooner); the CA's operator sets the bound (agentid ca serve --max-tokens-per-service)"
                    .to_owned(),
            ),
            CaError::TaskIdTaken(_) => Some(
                "choose another task id (--task), or leave it out (a new one is made)".to_owned(),
            ),
            CaError::KeyMismatch { .. } => Some(
                "a task identity keeps one key for its life: renew its certificate with that key (agentid cert renew), or open a new task for a new key"
                    .to_owned(),
            ),
            // The clock is read for the hint only: when the parent's end is already past, no
            // lifetime fits and "a shorter --ttl" would send the user round in a circle.
            CaError::OutlivesParent { parent_exp, .. } if unix_now() >= *parent_exp => Some(
                "a child's certificate never outlives its parent's certificate (as it was when the child was issued), task or chain, and that end is past: no --ttl fits. Issue the parent again (agentid cert issue --force: a new task), then the child (agentid cert issue --parent DIR --force) and delegate again; through the CA service, have the parent, once renewed, ask for the child again with the child's key (agentid task child --csr)"
                    .to_owned(),
            ),
            CaError::OutlivesParent { .. } => Some(
                "a child's certificate never outlives its parent's certificate (as it was when the child was issued), task or chain: ask for a shorter --ttl, or have the parent, once renewed, ask for the child again with the child's key (agentid task child --csr)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Now, in Unix seconds (0 before the epoch), for a hint.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A time of an error message, RFC 3339 (UTC, seconds); the number itself beyond year 9999.
fn unix_time(secs: &u64) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(*secs)) {
        Some(t) if *secs < YEAR_10000 => humantime::format_rfc3339_seconds(t).to_string(),
        _ => secs.to_string(),
    }
}

impl From<rusqlite::Error> for CaError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        // The two failures an operator must act on say what to do; nothing of the failed
        // transaction was recorded either way.
        let next = match e.sqlite_error_code() {
            Some(C::DiskFull) => Some(
                "the disk holding the CA directory is full: free space there and retry (nothing of \
                 this operation was recorded)",
            ),
            Some(C::DatabaseCorrupt | C::NotADatabase) => Some(
                "ca.db is damaged: stop every process using this CA directory, check it with \
                 `sqlite3 ca.db 'PRAGMA integrity_check'` and restore it (with its -wal file) from \
                 a backup",
            ),
            _ => None,
        };
        match next {
            Some(next) => CaError::Store(format!("{e}; {next}")),
            None => CaError::Store(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CaError;

    fn store_error(code: std::ffi::c_int) -> String {
        CaError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
        .to_string()
    }

    /// A full disk and a damaged database say what the operator must do; other store errors
    /// are SQLite's own words.
    #[test]
    fn a_full_disk_and_a_damaged_database_name_the_next_step() {
        let full = store_error(rusqlite::ffi::SQLITE_FULL);
        assert!(full.contains("free space"), "{full}");
        for code in [rusqlite::ffi::SQLITE_CORRUPT, rusqlite::ffi::SQLITE_NOTADB] {
            let damaged = store_error(code);
            assert!(damaged.contains("restore it"), "{damaged}");
        }
        let busy = store_error(rusqlite::ffi::SQLITE_BUSY);
        assert!(!busy.contains(';'), "{busy}");
    }
}
