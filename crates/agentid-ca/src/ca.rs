//! The certificate authority: loading its material, bundles, bootstrap tokens, revocation.
//! Issuance itself is in [`crate::issue`].

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use agentid_protocol::{
    AgentId, AuthorityKey, EncodedEntry, Jkt, Jti, JwsSigner, PublicKey, RevocationEntry,
    RevocationListBuilder, RevocationTarget, Serial, TaskId, TaskIdentity, TrustBundle,
    TrustDomain,
};

use crate::audit::{AuditEvent, AuditLog, CheckpointClaims, CheckpointRecord};
use crate::config::CaConfig;
use crate::error::{CaError, Result};
use crate::hierarchy::check_signer_matches;
use crate::material::{self, files, join};
use crate::policy::Policy;
use crate::policy::MAX_GRANT_LIFETIME_SECS;
use crate::profile::cert_not_after;
use crate::signer::{FileX509Signer, X509Signer};
use crate::store::{
    BootstrapRecord, IssuanceCommitter, IssuanceRecord, ListRow, Publication, PublishedList,
    RevocationKind, RevocationRecord, Store,
};
use crate::util;

/// Refresh hint published in the trust bundle, seconds.
pub const BUNDLE_REFRESH_HINT_SECS: u64 = 300;

/// The most bytes of a revocation's `reason` the CA keeps and records (CA-API.md 3.10).
pub const MAX_REASON_BYTES: usize = 256;

/// The parts of a CA, for callers that keep keys elsewhere (KMS, HSM) or the store elsewhere.
pub struct CaParts {
    /// Trust domain, key type, skew.
    pub config: CaConfig,
    /// Issuance policy.
    pub policy: Policy,
    /// Root certificate DER.
    pub root_der: Vec<u8>,
    /// Issuing intermediate certificate DER.
    pub intermediate_der: Vec<u8>,
    /// The intermediate's key.
    pub issuer: Box<dyn X509Signer>,
    /// The grant-signing key.
    pub grant_signer: Box<dyn JwsSigner>,
    /// The revocation-list signing key.
    pub revocation_signer: Box<dyn JwsSigner>,
    /// The store (it holds the audit chain).
    pub store: Box<dyn Store>,
    /// The `tracing` mirror of audit records.
    pub audit: AuditLog,
    /// The audit key that signs checkpoints of the store's audit chain; `None`: no checkpoints.
    pub audit_signer: Option<Box<dyn JwsSigner>>,
}

/// A certificate authority for one trust domain.
///
/// All methods take `&self`; the store is behind a mutex, so one `CertificateAuthority` can
/// serve concurrent requests. Issuances are committed through the store's
/// [`IssuanceCommitter`] when it has one (the SQLite store does), outside that mutex, so
/// concurrent issuers share durable commits. Every method that decides something takes `now` so that tests
/// (and replays) pin the clock.
pub struct CertificateAuthority {
    pub(crate) dir: Option<PathBuf>,
    pub(crate) config: CaConfig,
    pub(crate) policy: Policy,
    pub(crate) root_der: Vec<u8>,
    pub(crate) intermediate_der: Vec<u8>,
    pub(crate) intermediate_not_after: u64,
    pub(crate) issuer: Box<dyn X509Signer>,
    pub(crate) grant_signer: Box<dyn JwsSigner>,
    pub(crate) revocation_signer: Box<dyn JwsSigner>,
    pub(crate) store: Mutex<Box<dyn Store>>,
    /// The store's lock-free issuance path (group commit), when it has one.
    pub(crate) committer: Option<Arc<dyn IssuanceCommitter>>,
    pub(crate) audit: AuditLog,
    pub(crate) audit_signer: Option<Arc<dyn JwsSigner>>,
    /// Audited operations since the last checkpoint check.
    audit_pending: AtomicU64,
    /// When the checkpoint state was last checked, Unix seconds.
    audit_checked_at: AtomicU64,
    /// The entries of the last revocation list this process signed, written, in its order,
    /// each with the store row, kind, value and `exp` it was written from: the next list
    /// re-writes only the others. An entry's writing depends on its kind, value, `exp` and the
    /// trust domain alone, so what is kept stays right whether or not that list's transaction
    /// committed; it holds one list's entries, never more.
    published_entries: Mutex<EntryCache>,
    /// The most unredeemed, unexpired bootstrap tokens one service may hold
    /// ([`DEFAULT_MAX_TOKENS_PER_SERVICE`] unless set).
    max_tokens_per_service: u64,
}

/// The most unredeemed bootstrap tokens that have not expired one service holds by default
/// (CA-API.md 3.6): past it, `POST /v1/tokens` is refused `409 cap_reached` until one is
/// redeemed or expires.
pub const DEFAULT_MAX_TOKENS_PER_SERVICE: u64 = 10_000;

/// How long the CA keeps a bootstrap token, used or not, after its expiry: a redemption in
/// that time is told `token_used` or `token_expired` (and recorded); afterwards the token is
/// forgotten and the store does not grow with every token ever made (CA-API.md 3.6).
pub const TOKEN_RETENTION_SECS: u64 = 7 * 86_400;

/// The tokens one transaction of [`CertificateAuthority::prune_bootstrap_tokens`] deletes at
/// most, and how many such transactions one call runs at most: the store's write lock is
/// held for one batch at a time.
const PRUNE_BATCH: usize = 1_000;
const PRUNE_BATCHES: usize = 100;

/// The written entries of the last list, in its order (ascending store `id`).
type EntryCache = Vec<WrittenEntry>;

/// One entry of the last list as written, with the row it was written from.
struct WrittenEntry {
    id: i64,
    kind: RevocationKind,
    value: String,
    exp: u64,
    encoded: EncodedEntry,
}

impl core::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.config.trust_domain)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What to revoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeTarget {
    /// A certificate by serial: revokes its key's thumbprint, since a task key belongs to one
    /// identity.
    Serial(Serial),
    /// Every holder of a task.
    Task(TaskId),
    /// An agent name: every task identity of that agent.
    Agent(String),
    /// A key by RFC 7638 thumbprint.
    Key(Jkt),
    /// A grant by `jti`.
    GrantJti(Jti),
    /// A link by issuer (the delegating task identity of this trust domain) and `jti`. The CA
    /// does not see links, so the entry lives for the longest token lifetime (24 h) plus skew.
    LinkJti {
        /// The link's `iss`.
        iss: TaskIdentity,
        /// The link's `jti`.
        jti: Jti,
    },
    /// A principal (an RFC 9493 subject identifier, as the CA recorded it when opening tasks):
    /// a CA-side expansion, not a list entry kind. Every task of that principal whose grant has
    /// not expired is revoked as a `task` entry, in one transaction with the principal's own
    /// entry, which refuses new tasks for it for [`MAX_GRANT_LIFETIME_SECS`] (or as long as its
    /// latest task, if longer) and is never published: the principal never leaves the CA.
    Principal(serde_json::Value),
}

/// A fresh single-use bootstrap token. Only its SHA-256 is stored; hand `token` to the agent
/// through a file or the environment, never a command line.
#[derive(Clone)]
pub struct BootstrapToken {
    /// The secret.
    pub token: String,
    /// The task identity it opens.
    pub identity: TaskIdentity,
    /// Expiry, Unix seconds.
    pub expires: u64,
}

impl core::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("identity", &self.identity)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

pub(crate) fn token_hash(token: &str) -> String {
    util::hex(&util::sha256(token.as_bytes()))
}

/// The audit key of `dir` (`audit.key`, its public half in `audit.pub`). A CA directory made
/// before the audit chain gets one on first open; a directory whose `store` holds checkpoints
/// (signed with a key it no longer has) never does.
pub(crate) fn load_or_create_audit_key(
    dir: &Path,
    alg: agentid_protocol::Algorithm,
    store: Option<&dyn Store>,
) -> Result<AuthorityKey> {
    let key_path = join(dir, files::AUDIT_KEY);
    let pub_path = join(dir, files::AUDIT_PUB);
    let key = if key_path.exists() {
        load_authority_key(&key_path)?
    } else if pub_path.exists() {
        // The key the checkpoints were signed with is gone: a new one would not match
        // audit.pub, and replacing both would leave the existing checkpoints unverifiable.
        return Err(CaError::material(
            &key_path,
            "is missing (audit.pub is its public key): restore it from a backup",
        ));
    } else {
        // Both are gone: a new key is for a trail that has no checkpoint yet. Over checkpoints
        // (or a pruned chain's base, signed with the same key) it would sign the next ones, and
        // `audit verify` with its public key would call every earlier one forged (the key is
        // rotated without a word).
        if let Some(store) = store {
            if store.audit_has_signatures()? {
                return Err(CaError::material(
                    &key_path,
                    "is missing, with audit.pub, while the store holds checkpoints or pruned \
                     chains' bases it signed: restore both from a backup",
                ));
            }
        }
        let key = AuthorityKey::generate(alg)?;
        material::write_private_key(&key_path, key.pkcs8_der())?;
        tracing::info!(path = %key_path.display(), "created the audit checkpoint key");
        key
    };
    let spki = JwsSigner::public_key(&key).to_spki_der();
    if pub_path.exists() {
        if material::read_public_key(&pub_path)? != spki {
            return Err(CaError::material(
                &pub_path,
                "is not the public key of audit.key",
            ));
        }
    } else {
        material::write_public_file(&pub_path, material::public_key_pem(&spki).as_bytes())?;
    }
    Ok(key)
}

/// `config.toml`'s trust domain against the one `agentid ca init` named the issuing
/// certificate for (`CN=agentid issuing CA <trust domain>`): an edited `trust_domain` would
/// have the CA issue identities of another trust domain under this root and sign audit
/// checkpoints for it (after which `audit verify` calls the untouched chain broken). An
/// intermediate named otherwise (not made by `ca init`) is not checked.
fn check_trust_domain(dir: &Path, config: &CaConfig, intermediate: &[u8]) -> Result<()> {
    const PREFIX: &str = "agentid issuing CA ";
    let cn = crate::profile::cert_common_name(intermediate)?;
    let Some(td) = cn.as_deref().and_then(|cn| cn.strip_prefix(PREFIX)) else {
        return Ok(());
    };
    if td != config.trust_domain.as_str() {
        return Err(CaError::material(
            join(dir, files::CONFIG),
            format!(
                "trust_domain {:?} is not the trust domain of this CA's certificates ({td:?}, \
                 {}): put it back (a CA serves the one trust domain it was made for)",
                config.trust_domain.as_str(),
                files::INTERMEDIATE_CERT
            ),
        ));
    }
    Ok(())
}

/// The SPIFFE trust bundle of a CA of `td` with root `root_der` and these grant and revocation
/// keys ([`CertificateAuthority::trust_bundle`], and the bundle signed where the CA's store is
/// not: [`crate::agentid_bundle::sign_offline`]).
pub(crate) fn domain_bundle(
    td: &TrustDomain,
    root_der: &[u8],
    grant: PublicKey,
    revocation: PublicKey,
) -> Result<TrustBundle> {
    use x509_parser::prelude::FromDer;
    distinct_authority_keys(&grant, &revocation)?;
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(root_der)
        .map_err(|e| CaError::CertificateGeneration(format!("root: {e}")))?;
    let root_key = PublicKey::from_spki_der(root.tbs_certificate.subject_pki.raw)?;
    Ok(TrustBundle::new(td.clone(), 1)
        .with_refresh_hint(BUNDLE_REFRESH_HINT_SECS)
        .add_x509_authority(root_der.to_vec(), &root_key)
        .add_grant_key(grant)
        .add_revocation_key(revocation))
}

/// A bundle lists no key twice, not even once per use (spec/PROTOCOL.md 8).
fn distinct_authority_keys(grant: &PublicKey, revocation: &PublicKey) -> Result<()> {
    if grant == revocation {
        return Err(CaError::InvalidRequest(
            "the grant and revocation keys must be distinct".into(),
        ));
    }
    Ok(())
}

pub(crate) fn load_authority_key(path: &Path) -> Result<AuthorityKey> {
    let der = material::read_private_key(path)?;
    AuthorityKey::from_pkcs8_der(&der).map_err(|e| CaError::material(path, e.to_string()))
}

impl CertificateAuthority {
    /// Opens the CA in `dir` with file-backed keys and the SQLite store. Refuses private keys
    /// that are group- or world-accessible, and an issuing key that does not match the
    /// intermediate certificate.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_as(dir, crate::audit::DEFAULT_WRITER)
    }

    /// [`CertificateAuthority::open`] with the store `config.toml` chooses (SQLite's `ca.db` or
    /// a shared PostgreSQL database) and `writer` as this process's audit chain writer id
    /// (one per replica of a shared database).
    pub fn open_as(dir: &Path, writer: &str) -> Result<Self> {
        let config = CaConfig::load(&join(dir, files::CONFIG))?;
        let policy = Policy::load(&join(dir, files::POLICY))?;
        let root = material::read_one_certificate(&join(dir, files::ROOT_CERT))?;
        let intermediate = material::read_one_certificate(&join(dir, files::INTERMEDIATE_CERT))?;
        check_trust_domain(dir, &config, &intermediate)?;
        let int_key_path = join(dir, files::INTERMEDIATE_KEY);
        let int_key = material::read_private_key(&int_key_path)?;
        let issuer = FileX509Signer::from_pkcs8_der(&int_key, config.key_type)
            .map_err(|e| CaError::material(&int_key_path, e.to_string()))?;
        let grant = load_authority_key(&join(dir, files::GRANT_KEY))?;
        let revocation = load_authority_key(&join(dir, files::REVOCATION_KEY))?;
        let store = config.open_store(dir, writer)?;
        let audit_key = load_or_create_audit_key(dir, config.key_type.algorithm(), Some(&*store))?;
        let mut ca = Self::from_parts(CaParts {
            config,
            policy,
            root_der: root.to_vec(),
            intermediate_der: intermediate.to_vec(),
            issuer: Box::new(issuer),
            grant_signer: Box::new(grant),
            revocation_signer: Box::new(revocation),
            store,
            audit: AuditLog::tracing_only(),
            audit_signer: Some(Box::new(audit_key)),
        })?;
        ca.dir = Some(dir.to_path_buf());
        Ok(ca)
    }

    /// Assembles a CA from its parts (keys in a KMS, another store, ...).
    pub fn from_parts(p: CaParts) -> Result<Self> {
        check_signer_matches(p.issuer.as_ref(), &p.intermediate_der)?;
        distinct_authority_keys(
            &p.grant_signer.public_key(),
            &p.revocation_signer.public_key(),
        )?;
        let intermediate_not_after = cert_not_after(&p.intermediate_der)?;
        let mut store = p.store;
        let audit_signer: Option<Arc<dyn JwsSigner>> = p.audit_signer.map(Arc::from);
        if let Some(signer) = &audit_signer {
            // The store writes a checkpoint with record 1 and every CHECKPOINT_EVERY-th record, in
            // that record's transaction (CA-API.md 4.2).
            store.set_checkpoint_signer(crate::audit::CheckpointSigner::new(
                p.config.trust_domain.id().as_str().to_owned(),
                signer.clone(),
            ));
        }
        let committer = store.issuance_committer();
        Ok(CertificateAuthority {
            dir: None,
            config: p.config,
            policy: p.policy,
            root_der: p.root_der,
            intermediate_der: p.intermediate_der,
            intermediate_not_after,
            issuer: p.issuer,
            grant_signer: p.grant_signer,
            revocation_signer: p.revocation_signer,
            store: Mutex::new(store),
            committer,
            audit: p.audit,
            audit_signer,
            audit_pending: AtomicU64::new(0),
            audit_checked_at: AtomicU64::new(0),
            published_entries: Mutex::new(Vec::new()),
            max_tokens_per_service: DEFAULT_MAX_TOKENS_PER_SERVICE,
        })
    }

    /// Sets the most unredeemed, unexpired bootstrap tokens one service may hold (at least 1,
    /// at most what the stores count, `i64::MAX`; [`DEFAULT_MAX_TOKENS_PER_SERVICE`] by
    /// default).
    pub fn set_max_tokens_per_service(&mut self, max: u64) {
        self.max_tokens_per_service = max.clamp(1, i64::MAX.unsigned_abs());
    }

    /// Forgets the bootstrap tokens, used or not, that expired more than
    /// [`TOKEN_RETENTION_SECS`] before `now` (at most 100,000 per call, in transactions of
    /// 1,000); returns how many. The CA service runs it about once a minute.
    pub fn prune_bootstrap_tokens(&self, now: SystemTime) -> Result<usize> {
        let before = util::unix(now)?.saturating_sub(TOKEN_RETENTION_SECS);
        let mut total = 0;
        for _ in 0..PRUNE_BATCHES {
            let n = self.store()?.prune_bootstrap_tokens(before, PRUNE_BATCH)?;
            total += n;
            if n < PRUNE_BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// The CA's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// The configuration.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// The issuance policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (e.g. after editing `policy.toml`).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The issuing intermediate certificate, DER.
    pub fn intermediate_der(&self) -> &[u8] {
        &self.intermediate_der
    }

    /// The root certificate(s) as PEM (`bundle.pem`).
    pub fn bundle_pem(&self) -> String {
        material::cert_pem(&self.root_der)
    }

    /// The SPIFFE trust bundle: the root as `x509-svid` authority, the grant key and the
    /// revocation key.
    pub fn trust_bundle(&self) -> Result<TrustBundle> {
        domain_bundle(
            &self.config.trust_domain,
            &self.root_der,
            self.grant_signer.public_key(),
            self.revocation_signer.public_key(),
        )
    }

    pub(crate) fn store(&self) -> Result<MutexGuard<'_, Box<dyn Store>>> {
        self.store
            .lock()
            .map_err(|_| CaError::Store("store mutex poisoned".into()))
    }

    /// Every issuance recorded, oldest first.
    pub fn issuances(&self) -> Result<Vec<IssuanceRecord>> {
        self.store()?.issuances()
    }

    /// One issuance by serial.
    pub fn issuance(&self, serial: &str) -> Result<Option<IssuanceRecord>> {
        self.store()?.issuance(serial)
    }

    /// Every revocation recorded (including those already pruned from the list).
    pub fn revocations(&self) -> Result<Vec<RevocationRecord>> {
        self.store()?.revocations()
    }

    /// Creates a single-use bootstrap token for opening `agent`'s task `task` (generated when
    /// `None`), valid for `ttl`. The agent's policy must list `bootstrap` as a requester.
    ///
    /// The token binds no task terms: it is redeemed in process, by
    /// [`CertificateAuthority::open_task`] with [`crate::TaskRequester::Bootstrap`], whose request
    /// gives the scope and the rest. `POST /v1/enroll` refuses it (`token_invalid`): a token an
    /// agent enrolls with over the network is made by [`CertificateAuthority::create_bound_token`]
    /// (`agentid token create`).
    pub fn create_bootstrap_token(
        &self,
        agent: &str,
        task: Option<TaskId>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<BootstrapToken> {
        self.create_bootstrap_token_as(agent, task, ttl, now, "operator", None)
    }

    /// Creates a single-use bootstrap token for the service `service`
    /// (`spiffe://<td>/svc/<service>`), valid for `ttl`: services enroll the same way as
    /// agents, from a token file, with only a CSR leaving their host. The service's rule must
    /// list `bootstrap` as a requester (checked now and at enrollment); `cert_ttl` is the
    /// certificate lifetime asked for at enrollment (the policy's default when `None`), checked
    /// now against the rule's `max_ttl` as it will be then: a token no enrollment could redeem
    /// is refused here, naming the rule, rather than handed out.
    /// Returns the secret, the service's identity and the token's expiry.
    pub fn create_service_token(
        &self,
        service: &str,
        cert_ttl: Option<Duration>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, String, u64)> {
        let now_s = util::unix(now)?;
        let svc = agentid_protocol::ServiceId::new(&self.config.trust_domain, service)?;
        self.policy.check_service_requester(
            svc.name(),
            &crate::policy::RequesterKind::Bootstrap,
            "bootstrap",
            svc.as_str(),
        )?;
        let rule = self.policy.service(svc.name())?;
        self.policy.check_token_ttl(
            &format!("services.{}.max_token_ttl", svc.name()),
            ttl,
            rule.max_token_ttl,
        )?;
        self.validity(
            now_s,
            cert_ttl,
            rule.max_ttl,
            u64::MAX,
            &format!("services.{}.max_ttl", svc.name()),
        )?;
        let binding = crate::TokenBinding {
            service: Some(svc.name().to_owned()),
            ttl_secs: cert_ttl.map(|d| d.as_secs()),
            ..crate::TokenBinding::default()
        };
        let json =
            serde_json::to_string(&binding).map_err(|e| CaError::InvalidRequest(e.to_string()))?;
        // A service has no task: the record's task is a fresh unique id, never a task.
        let slot = TaskId::generate()?;
        let (token, expires) = self.add_bootstrap_token(
            format!("svc:{}", svc.name()),
            slot.as_str().to_string(),
            AuditEvent {
                actor: "operator".into(),
                subject: Some(svc.as_str().into()),
                ..AuditEvent::default()
            },
            Some(&json),
            ttl,
            now_s,
        )?;
        Ok((token, svc.as_str().to_owned(), expires))
    }

    /// As [`CertificateAuthority::create_bootstrap_token`], audited as created by `actor`,
    /// binding `binding` (`TokenBinding` JSON) when given.
    pub(crate) fn create_bootstrap_token_as(
        &self,
        agent: &str,
        task: Option<TaskId>,
        ttl: Duration,
        now: SystemTime,
        actor: &str,
        binding: Option<&str>,
    ) -> Result<BootstrapToken> {
        let now_s = util::unix(now)?;
        let agent_id = AgentId::new(&self.config.trust_domain, agent)?;
        // Task ids are unique whatever the agent (CA-API.md 1.3): the store refuses a token
        // naming one a task holds or another agent's token names, in the insert's transaction.
        let task = match task {
            Some(t) => t,
            None => TaskId::generate()?,
        };
        let identity = TaskIdentity::new(&agent_id, &task)?;
        self.policy.check_agent_requester(
            agent,
            &crate::policy::RequesterKind::Bootstrap,
            "bootstrap",
            identity.as_str(),
        )?;
        self.policy.check_token_ttl(
            &format!("agents.{agent}.max_token_ttl"),
            ttl,
            self.policy.agent(agent)?.max_token_ttl,
        )?;
        let (token, expires) = self.add_bootstrap_token(
            agent.to_string(),
            task.as_str().to_string(),
            AuditEvent {
                actor: actor.into(),
                subject: Some(identity.as_str().into()),
                task: Some(task.as_str().into()),
                ..AuditEvent::default()
            },
            binding,
            ttl,
            now_s,
        )?;
        Ok(BootstrapToken {
            token,
            identity,
            expires,
        })
    }

    /// Stores a new single-use bootstrap token: its record (`agent` is an agent name or
    /// `svc:NAME`; `task` the task it opens, or a fresh unique id for a service) valid for `ttl`
    /// from `now_s`, committed with its `bootstrap.create` audit record (`created` names actor,
    /// subject and task); then what it binds (`TokenBinding` JSON), when given; refused when
    /// the creator (`created.actor`) is a service holding as many outstanding tokens as it may.
    /// The caller has checked that the policy lets a bootstrap token request the identity.
    /// Returns the secret and its expiry.
    fn add_bootstrap_token(
        &self,
        agent: String,
        task: String,
        created: AuditEvent,
        binding: Option<&str>,
        ttl: Duration,
        now_s: u64,
    ) -> Result<(String, u64)> {
        if ttl.is_zero() {
            return Err(CaError::InvalidRequest(
                "bootstrap token TTL must be positive".into(),
            ));
        }
        let token = util::b64url(&util::random::<32>()?);
        let expires = now_s.saturating_add(ttl.as_secs());
        let ev = AuditEvent {
            ts: now_s,
            kind: "bootstrap.create".into(),
            outcome: "ok".into(),
            ..created
        };
        let record = BootstrapRecord {
            hash: token_hash(&token),
            agent,
            task,
            expires,
        };
        // The token, what it binds and its audit record in one transaction.
        // A service's tokens are bounded (CA-API.md 3.6); the operator's are not.
        let bound = ev
            .actor
            .starts_with("svc:")
            .then(|| crate::store::TokenBound {
                creator: ev.actor.clone(),
                max: self.max_tokens_per_service,
                now: now_s,
            });
        self.store()?
            .add_bootstrap(&record, binding, bound.as_ref(), &ev)?;
        self.audit.record(&ev);
        self.after_audit(now_s);
        Ok((token, expires))
    }

    /// Revokes a certificate (by its key), task, agent, key or grant. The entry's `exp` is when
    /// everything it could hit has expired, plus the skew. The CA refuses any later request
    /// hit by the revocation.
    pub fn revoke(
        &self,
        target: &RevokeTarget,
        reason: Option<&str>,
        actor: &str,
        now: SystemTime,
    ) -> Result<RevocationRecord> {
        let now_s = util::unix(now)?;
        // The requester's text, kept and recorded bounded and without control characters
        // (CA-API.md 3.10), as every requester's text the CA records is.
        let reason = reason.map(|r| agentid_protocol::clean_text(r.to_owned(), MAX_REASON_BYTES));
        let res = self.revoke_inner(target, reason.as_deref(), actor, now_s);
        match &res {
            Ok(_) => self.after_audit(now_s),
            Err(e) => self.record_refusal(AuditEvent {
                ts: now_s,
                kind: "revoke".into(),
                actor: actor.into(),
                subject: self.revoke_subject(target),
                outcome: "error".into(),
                reason: Some(e.to_string()),
                ..AuditEvent::default()
            }),
        }
        res
    }

    /// The `subject` of a refused revocation's audit record: its target as `kind:value`, as a
    /// committed one records it (CA-API.md 4.1, 4.3); a serial, whose key is not known then, as
    /// `serial:<hex>`. `None` for a target that names nothing valid (an agent name that is no
    /// agent name, a principal that is none): the requester's text is not copied into it.
    fn revoke_subject(&self, target: &RevokeTarget) -> Option<String> {
        let (kind, value) = match target {
            RevokeTarget::Serial(serial) => ("serial", serial.to_string()),
            RevokeTarget::Task(task) => (RevocationKind::Task.as_str(), task.as_str().to_owned()),
            RevokeTarget::Agent(name) => {
                AgentId::new(&self.config.trust_domain, name).ok()?;
                (RevocationKind::Agent.as_str(), name.clone())
            }
            RevokeTarget::Key(jkt) => (RevocationKind::Jkt.as_str(), jkt.to_string()),
            RevokeTarget::GrantJti(jti) => (RevocationKind::Jti.as_str(), jti.to_string()),
            RevokeTarget::LinkJti { iss, jti } => (
                RevocationKind::LinkJti.as_str(),
                format!("{} {jti}", iss.as_str()),
            ),
            RevokeTarget::Principal(p) => (
                RevocationKind::Principal.as_str(),
                crate::store::canonical_principal(p).ok()?,
            ),
        };
        Some(format!("{kind}:{value}"))
    }

    fn revoke_inner(
        &self,
        target: &RevokeTarget,
        reason: Option<&str>,
        actor: &str,
        now: u64,
    ) -> Result<RevocationRecord> {
        if let RevokeTarget::Principal(p) = target {
            return self.revoke_principal(p, reason, actor, now);
        }
        let mut store = self.store()?;
        let (kind, value) = match target {
            RevokeTarget::Serial(serial) => {
                let rec = store.issuance(serial.as_str())?.ok_or(CaError::NotFound {
                    kind: "serial",
                    value: serial.to_string(),
                })?;
                (RevocationKind::Jkt, rec.jkt)
            }
            RevokeTarget::Task(task) => {
                // Known: opened, certified, or named by a token no one redeemed yet (a leaked
                // token file is answered by revoking its task: the redemption is then refused).
                if store.task(task.as_str())?.is_none()
                    && store
                        .latest_expiry(RevocationKind::Task, task.as_str())?
                        .is_none()
                    && store.unredeemed_token_agent(task.as_str())?.is_none()
                {
                    return Err(CaError::NotFound {
                        kind: "task",
                        value: task.as_str().into(),
                    });
                }
                (RevocationKind::Task, task.as_str().to_string())
            }
            RevokeTarget::Agent(name) => {
                // Validates the name.
                AgentId::new(&self.config.trust_domain, name)?;
                (RevocationKind::Agent, name.clone())
            }
            // The thumbprint and `jti` types hold only what the protocol accepts in a list entry.
            RevokeTarget::Key(jkt) => (RevocationKind::Jkt, jkt.to_string()),
            RevokeTarget::GrantJti(jti) => {
                if store.task_by_jti(jti.as_str())?.is_none() {
                    return Err(CaError::NotFound {
                        kind: "jti",
                        value: jti.to_string(),
                    });
                }
                (RevocationKind::Jti, jti.to_string())
            }
            RevokeTarget::LinkJti { iss, jti } => {
                self.check_td(iss.as_spiffe_id())?;
                (RevocationKind::LinkJti, format!("{} {jti}", iss.as_str()))
            }
            RevokeTarget::Principal(_) => {
                return Err(CaError::InvalidRequest("principal revocation".into()))
            }
        };
        let skew = self.config.skew_secs;
        let latest = match kind {
            // Links are not recorded here: keep the entry as long as any link can live. An
            // agent or a key is hit by every link that names it as `sub` or `iss` or binds or
            // signs with it, in any task, certified or not (a child's links outlive its
            // certificate, which ends with its parent's): the same.
            RevocationKind::LinkJti | RevocationKind::Agent | RevocationKind::Jkt => {
                let links = now.saturating_add(MAX_GRANT_LIFETIME_SECS);
                Some(
                    store
                        .latest_expiry(kind, &value)?
                        .map_or(links, |l| l.max(links)),
                )
            }
            _ => store.latest_expiry(kind, &value)?,
        }
        .unwrap_or(now);
        let rec = RevocationRecord {
            kind,
            value,
            exp: latest.max(now).saturating_add(skew),
            revoked_at: now,
            reason: reason.map(str::to_string),
            requester: actor.to_string(),
        };
        let ev = AuditEvent {
            ts: now,
            kind: "revoke".into(),
            actor: actor.into(),
            subject: Some(format!("{}:{}", rec.kind.as_str(), rec.value)),
            serial: match target {
                RevokeTarget::Serial(s) => Some(s.to_string()),
                _ => None,
            },
            jti: match target {
                RevokeTarget::GrantJti(j) | RevokeTarget::LinkJti { jti: j, .. } => {
                    Some(j.to_string())
                }
                _ => None,
            },
            outcome: "ok".into(),
            reason: reason.map(str::to_string),
            ..AuditEvent::default()
        };
        // The entry's `exp` is raised in the revocation's own transaction to cover what an
        // issuance committed meanwhile (`latest` above was read before it).
        let rec = store.add_revocation_covering(&rec, skew, &ev)?;
        drop(store);
        self.audit.record(&ev);
        tracing::info!(kind = rec.kind.as_str(), value = %rec.value, "revoked");
        Ok(rec)
    }

    /// See [`RevokeTarget::Principal`]. Returns the principal's own (unpublished) entry.
    fn revoke_principal(
        &self,
        principal: &serde_json::Value,
        reason: Option<&str>,
        actor: &str,
        now: u64,
    ) -> Result<RevocationRecord> {
        let value = crate::store::canonical_principal(principal)?;
        let mut store = self.store()?;
        let latest = store
            .latest_expiry(RevocationKind::Principal, &value)?
            .unwrap_or(now)
            .max(now.saturating_add(MAX_GRANT_LIFETIME_SECS));
        let rec = RevocationRecord {
            kind: RevocationKind::Principal,
            value,
            exp: latest.saturating_add(self.config.skew_secs),
            revoked_at: now,
            reason: reason.map(str::to_string),
            requester: actor.to_string(),
        };
        let mut recorded = Vec::new();
        let tasks = store.revoke_principal(&rec, self.config.skew_secs, &mut |tasks| {
            // One record names the principal's entry and the first task entries it expanded
            // to, each with the `exp` it committed with; a long expansion goes on in further
            // records of the same subject (CA-API 4.1).
            let event = |part: &[RevocationRecord], first: bool| AuditEvent {
                ts: now,
                kind: "revoke".into(),
                actor: actor.into(),
                subject: Some(format!("principal:{}", rec.value)),
                outcome: "ok".into(),
                reason: Some(if first {
                    format!(
                        "{}expanded to {} task(s)",
                        reason.map(|r| format!("{r}; ")).unwrap_or_default(),
                        tasks.len()
                    )
                } else {
                    "expanded (continued)".to_owned()
                }),
                // As every `ok` revoke record: the entry's `exp`, which the store holds at
                // least until it ends (a row cut short is a break, CA-API 4.3).
                exp: Some(rec.exp),
                expanded: (!part.is_empty()).then(|| {
                    part.iter()
                        .map(|t| (format!("task:{}", t.value), t.exp))
                        .collect()
                }),
                ..AuditEvent::default()
            };
            let mut events: Vec<AuditEvent> = tasks
                .chunks(crate::audit::EXPANDED_PER_RECORD)
                .enumerate()
                .map(|(i, part)| event(part, i == 0))
                .collect();
            if events.is_empty() {
                events.push(event(&[], true));
            }
            recorded.clone_from(&events);
            events
        })?;
        drop(store);
        for ev in &recorded {
            self.audit.record(ev);
        }
        tracing::info!(tasks = tasks.len(), "principal revoked");
        Ok(rec)
    }

    /// Publishes the next signed revocation list and returns it: the next `seq` of the store
    /// (see [`CertificateAuthority::publish_revocations`]), `iat = now`, `next_update = now + revocation_next_update_secs`; entries whose `exp`
    /// has passed are pruned. See [`CertificateAuthority::publish_revocations`].
    pub fn revocation_list(&self, now: SystemTime) -> Result<String> {
        Ok(self.publish_revocations(now)?.compact)
    }

    /// Whether the stored list `compact` names this CA's revocation key as its `kid` (the
    /// header is read, not verified: the list comes from the store). A list signed with a key
    /// the operator has since replaced is not: [`crate::publication::Publisher`] publishes
    /// again at its start.
    pub fn signed_with_own_revocation_key(&self, compact: &str) -> bool {
        use base64::Engine as _;
        let own = self.revocation_signer.public_key().thumbprint();
        compact
            .split('.')
            .next()
            .and_then(|h| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h)
                    .ok()
            })
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .is_some_and(|h| h.get("kid").and_then(serde_json::Value::as_str) == Some(own.as_str()))
    }

    /// Publishes the next revocation list: one store transaction takes the next `seq` (above
    /// every earlier one, and at least `now` in milliseconds since the Unix epoch, so that a
    /// store restored from a backup publishes above the lists it lost: see
    /// [`crate::store::list_seq_floor`]), reads
    /// the entries, signs, stores the list (every replica serves it from there) and its audit
    /// record. The store reads only what the list holds (kind, value and `exp` of the
    /// unexpired, published rows). The entries are written once: an entry of the last list this
    /// process published, from the same row with the same kind, value and `exp`, is reused as
    /// written (the writing depends on nothing else), so a list costs reading the rows, the new
    /// entries, and copying and signing the whole.
    pub fn publish_revocations(&self, now: SystemTime) -> Result<PublishedList> {
        let now_s = util::unix(now)?;
        let td = self.config.trust_domain.clone();
        let next_update = now_s.saturating_add(self.config.revocation_next_update_secs);
        let signer = self.revocation_signer.as_ref();
        // Taken before the store, as every publication does: one publication at a time here.
        let mut cache = self
            .published_entries
            .lock()
            .map_err(|_| CaError::Store("entry cache mutex poisoned".into()))?;
        let mut make = |seq: u64, entries: &[ListRow]| -> Result<Publication> {
            // Both the rows and the kept entries ascend by store `id`: one merge walk pairs
            // each row with the kept entry of the same `id` (entries whose rows expired are
            // passed over); a pair is reused only if kind, value and `exp` are all equal,
            // anything else is written anew.
            let mut old = std::mem::take(&mut *cache).into_iter().peekable();
            // The store passes only what the list holds: unexpired, and no principal entries
            // (they stay at the CA: their tasks are listed instead). Checked again here.
            let published = entries
                .iter()
                .filter(|e| e.exp > now_s && e.kind != RevocationKind::Principal);
            let mut written: EntryCache = Vec::with_capacity(entries.len());
            for e in published {
                while old.next_if(|o| o.id < e.id).is_some() {}
                let same = old.next_if(|o| o.id == e.id).filter(|o| {
                    o.kind == e.kind && o.exp == e.exp && o.value.as_str() == e.value.as_str()
                });
                written.push(match same {
                    Some(o) => o,
                    None => WrittenEntry {
                        id: e.id,
                        kind: e.kind,
                        value: e.value.clone(),
                        exp: e.exp,
                        encoded: encode_entry(&td, e.kind, &e.value, e.exp)?,
                    },
                });
            }
            drop(old);
            let n = written.len();
            let compact = RevocationListBuilder::new(&td, seq, now_s, next_update)
                .sign_encoded(written.iter().map(|w| &w.encoded), signer)?;
            *cache = written;
            Ok(Publication {
                compact,
                published_at: now_s,
                next_update,
                audit: AuditEvent {
                    ts: now_s,
                    kind: "revocations.publish".into(),
                    actor: "ca".into(),
                    outcome: "ok".into(),
                    reason: Some(format!("seq {seq}, {n} entries")),
                    ..AuditEvent::default()
                },
            })
        };
        let min_seq = crate::store::list_seq_floor(now);
        let published = self
            .store()?
            .publish_revocations(now_s, min_seq, &mut make)?;
        self.after_audit(now_s);
        Ok(published)
    }

    /// The latest published revocation list, from the store.
    pub fn latest_published(&self) -> Result<Option<PublishedList>> {
        self.store()?.latest_published()
    }

    /// The latest published revocation list if its `seq` is above `after` (whatever its `seq`
    /// when `after` is `None`), from the store; `None` when there is no newer one.
    pub fn latest_published_after(&self, after: Option<u64>) -> Result<Option<PublishedList>> {
        self.store()?.latest_published_after(after)
    }

    /// The store's revocation epoch (see [`Store::revocation_epoch`]).
    pub fn revocation_epoch(&self) -> Result<u64> {
        self.store()?.revocation_epoch()
    }

    /// Signs a checkpoint of this CA's audit chain head with the audit key when one is due
    /// (the head moved [`crate::audit::CHECKPOINT_EVERY`] records since the last checkpoint,
    /// or the last one is [`crate::audit::CHECKPOINT_INTERVAL_SECS`] old), or whenever the head
    /// moved if `force`. Returns the checkpointed record number.
    pub fn checkpoint_audit(&self, now: SystemTime, force: bool) -> Result<Option<u64>> {
        let Some(signer) = self.audit_signer.as_deref() else {
            return Ok(None);
        };
        let now_s = util::unix(now)?;
        let mut store = self.store()?;
        let st = store.checkpoint_state()?;
        let Some((seq, head)) = st.head else {
            return Ok(None);
        };
        let (last_seq, last_iat) = st.last.unwrap_or((0, 0));
        let due = seq.saturating_sub(last_seq) >= crate::audit::CHECKPOINT_EVERY
            || now_s >= last_iat.saturating_add(crate::audit::CHECKPOINT_INTERVAL_SECS);
        if seq <= last_seq || !(due || force) {
            return Ok(None);
        }
        let claims = CheckpointClaims {
            iss: self.config.trust_domain.id().as_str().to_owned(),
            writer: st.writer.clone(),
            seq,
            head: head.clone(),
            iat: now_s,
            revoked: None,
        };
        let jws = crate::audit::sign_checkpoint(signer, &claims)?;
        store.add_checkpoint(&CheckpointRecord {
            writer: st.writer,
            seq,
            head,
            iat: now_s,
            jws,
        })?;
        Ok(Some(seq))
    }

    /// After an audited change: checks (cheaply, by counting) whether a checkpoint may be due.
    /// A failed checkpoint is logged; the change and its record are already durable.
    pub(crate) fn after_audit(&self, now: u64) {
        let pending = self.audit_pending.fetch_add(1, Ordering::Relaxed) + 1;
        let checked = self.audit_checked_at.load(Ordering::Relaxed);
        if pending < crate::audit::CHECKPOINT_EVERY
            && now < checked.saturating_add(crate::audit::CHECKPOINT_INTERVAL_SECS)
        {
            return;
        }
        self.audit_pending.store(0, Ordering::Relaxed);
        self.audit_checked_at.store(now, Ordering::Relaxed);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        if let Err(e) = self.checkpoint_audit(at, false) {
            tracing::warn!(error = %e, "audit checkpoint failed");
        }
    }

    /// Records a refusal on its own (nothing else changed). A failure is logged: the refusal
    /// stands either way.
    pub(crate) fn record_refusal(&self, ev: AuditEvent) {
        self.audit.record(&ev);
        let res = self.store().and_then(|mut s| s.append_audit(&ev));
        match res {
            Ok(()) => self.after_audit(ev.ts),
            Err(e) => {
                tracing::error!(error = %e, kind = %ev.kind, "audit record of a refusal not written")
            }
        }
    }

    /// Prunes the audit trail (CA-API.md 4.5): verifies it first (with `exported` as
    /// [`crate::audit::verify_anchored`]'s anchors: the export must match the store), then,
    /// for each writer, the records [`crate::audit::plan_prune`] finds older than `retain`
    /// before `now` (and the certificates they issued ended, with their tasks, as long ago)
    /// go, with their checkpoints and the issuance rows of those certificates; a base signed
    /// with the audit key names where each pruned chain now starts. Every record pruned must be
    /// in `exported` (an `agentid audit export` kept elsewhere, read with
    /// [`crate::audit::read_export`]: a report's anchors name records it does not hold), else
    /// nothing is pruned.
    ///
    /// `retain` is at least [`crate::audit::MIN_RETENTION_SECS`]. Refused without the audit key,
    /// or when the trail does not verify ([`CaError::AuditBroken`]: the store is evidence).
    ///
    /// A chain with more than [`crate::audit::PRUNE_BATCH`] records to prune goes in several
    /// transactions ([`Self::prune_audit_in_batches`]).
    pub fn prune_audit(
        &self,
        retain: Duration,
        now: SystemTime,
        exported: &[crate::audit::Anchor],
    ) -> Result<crate::store::PruneCounts> {
        self.prune_audit_in_batches(retain, now, exported.into(), crate::audit::PRUNE_BATCH)
    }

    /// [`Self::prune_audit`], each chain's records pruned in transactions of at most `batch`
    /// records (each ending at a checkpointed record, so at least one checkpoint interval,
    /// [`crate::audit::CHECKPOINT_EVERY`], whatever `batch` says), one after the other, each
    /// leaving the chain at a signed base of its own: the store's write lock is held for one
    /// batch at a time (the CA goes on issuing between them), and a prune stopped part-way
    /// leaves a trail that verifies, pruned up to its last committed batch. The trail is
    /// verified, and the export checked, once, before the first. `exported` is held in
    /// memory, or an export file read beside the store ([`crate::audit::ExportFile`]: what
    /// the prune holds then does not grow with the records exported).
    pub fn prune_audit_in_batches(
        &self,
        retain: Duration,
        now: SystemTime,
        exported: crate::audit::Against<'_>,
        batch: u64,
    ) -> Result<crate::store::PruneCounts> {
        let retain = retain.as_secs();
        if retain < crate::audit::MIN_RETENTION_SECS {
            return Err(CaError::InvalidRequest(format!(
                "a retention of {retain} s is shorter than a day ({} s): a record is kept at \
                 least a day after what it records ended",
                crate::audit::MIN_RETENTION_SECS
            )));
        }
        let Some(signer) = self.audit_signer.clone() else {
            return Err(CaError::InvalidRequest(
                "this CA has no audit key: it cannot sign where a pruned chain starts".into(),
            ));
        };
        let now_s = util::unix(now)?;
        let cutoff = now_s.saturating_sub(retain);
        let iss = self.config.trust_domain.id().as_str().to_owned();
        let store = self.store()?;
        let key = signer.public_key();
        // One pass over the trail, in one read transaction: verified whole (the plan is used
        // only if it verifies) while each writer's walk plans what may go.
        let reader: &dyn crate::store::Store = &**store;
        let mut retained_until = |serial: &str| reader.issuance_retained_until(serial);
        let mut both = VerifyAndPlan {
            verifier: crate::audit::TrailVerifier::against(&key, &iss, exported),
            planner: crate::audit::PrunePlanner::new(cutoff, &mut retained_until),
            base_revocations: Vec::new(),
        };
        reader.audit_visit(None, &mut both)?;
        let VerifyAndPlan {
            mut verifier,
            planner,
            base_revocations,
        } = both;
        verifier.read_export_rest()?;
        verifier
            .finish()
            .map_err(|b| CaError::AuditBroken(Box::new(b)))?;
        let plans = planner.finish();
        // The batches below take the store one at a time: this process's own requests go on
        // between them, as other processes' do.
        drop(store);
        // Every record that goes must be in the export (compared with the store above).
        for p in &plans {
            if let Some(seq) = verifier.first_unanchored(&p.writer, p.seq) {
                return Err(CaError::InvalidRequest(format!(
                    "the export does not hold record {seq} of chain {:?}, which is old enough \
                     to prune: nothing was pruned; export the trail first (`agentid audit \
                     export --ca DIR > FILE`, kept outside the store) and give that FILE",
                    p.writer
                )));
            }
        }
        let checkpoints = crate::audit::CheckpointSigner::new(iss, signer);
        let mut counts = crate::store::PruneCounts::default();
        for p in plans {
            // The revocations of every record pruned so far: the base's own, then each
            // batch's, each subject at the highest `exp` recorded.
            let mut kept: std::collections::BTreeMap<String, u64> = base_revocations
                .iter()
                .filter(|(w, _, _)| *w == p.writer)
                .map(|(_, subject, exp)| (subject.clone(), *exp))
                .collect();
            let (mut from, mut revocations) = (p.from, 0usize);
            for end in crate::audit::prune_batches(&p.steps, p.from, batch) {
                let made = p
                    .revocations
                    .get(revocations..end.revocations)
                    .unwrap_or(&[]);
                for (subject, exp) in made {
                    let e = kept.entry(subject.clone()).or_insert(0);
                    *e = (*e).max(*exp);
                }
                let all: Vec<(String, u64)> = kept.iter().map(|(s, e)| (s.clone(), *e)).collect();
                let digest = crate::audit::base_revocations_digest(&all);
                let base = checkpoints.base(&p.writer, (end.seq, &end.head), now_s, &digest)?;
                let prune = crate::store::AuditPrune {
                    plan: crate::audit::PrunePlan {
                        writer: p.writer.clone(),
                        seq: end.seq,
                        head: end.head.clone(),
                        from,
                        revocations: made.to_vec(),
                        steps: Vec::new(),
                    },
                    base,
                    revocations: all,
                };
                let done = self
                    .store()
                    .and_then(|mut store| store.prune_audit(std::slice::from_ref(&prune)))
                    .map_err(|e| {
                        if counts.transactions == 0 {
                            e
                        } else {
                            CaError::Store(format!(
                                "{e} (in the batch after record {from} of chain {:?}; {} records \
                             were pruned before it, in {} transactions, and the trail still \
                             verifies: run the prune again)",
                                p.writer, counts.records, counts.transactions
                            ))
                        }
                    })?;
                counts.records += done.records;
                counts.checkpoints += done.checkpoints;
                counts.issuances += done.issuances;
                counts.transactions += 1;
                (from, revocations) = (end.seq, end.revocations);
            }
            counts.chains += 1;
        }
        Ok(counts)
    }

    /// Every audit record (with `ts >= since`), checkpoint and audited serial, for
    /// [`crate::audit::verify`] and export.
    pub fn audit_snapshot(&self, since: Option<u64>) -> Result<crate::audit::AuditSnapshot> {
        self.store()?.audit_snapshot(since)
    }
}

/// [`CertificateAuthority::prune_audit`]'s one pass: the trail verified and the prune planned
/// from the same records.
struct VerifyAndPlan<'a, 'p> {
    verifier: crate::audit::TrailVerifier<'a>,
    planner: crate::audit::PrunePlanner<'p>,
    /// The revocations the chains' bases keep ([`crate::audit::AuditHead::base_revocations`]).
    base_revocations: Vec<(String, String, u64)>,
}

impl crate::audit::AuditVisitor for VerifyAndPlan<'_, '_> {
    fn head(&mut self, head: crate::audit::AuditHead) -> Result<()> {
        self.base_revocations.clone_from(&head.base_revocations);
        self.planner.head_of(&head);
        self.verifier.head(head)
    }
    fn wants_serials(&self) -> bool {
        self.verifier.wants_serials()
    }
    fn serial(&mut self, serial: &str) -> Result<()> {
        self.verifier.serial(serial)
    }
    fn record(&mut self, record: &crate::audit::AuditRecord) -> Result<ControlFlow<()>> {
        // Past a break nothing is planned: the trail does not verify.
        if self.verifier.record(record)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        self.planner.record(record)
    }
    fn serials_again(&self) -> bool {
        self.verifier.serials_again()
    }
    fn serial_again(&mut self, serial: &str) -> Result<ControlFlow<()>> {
        self.verifier.serial_again(serial)
    }
}

/// One stored revocation (`kind`, `value`, `exp`) as its list entry, checked and written for a
/// list of `td`.
fn encode_entry(
    td: &TrustDomain,
    kind: RevocationKind,
    value: &str,
    exp: u64,
) -> Result<EncodedEntry> {
    let target = match kind {
        RevocationKind::Jti => RevocationTarget::Jti {
            iss: td.id(),
            jti: value.to_owned(),
        },
        RevocationKind::Task => RevocationTarget::Task(TaskId::parse(value)?),
        RevocationKind::Agent => RevocationTarget::Agent(AgentId::new(td, value)?),
        RevocationKind::Jkt => RevocationTarget::Key(value.to_owned()),
        RevocationKind::LinkJti => match value.split_once(' ') {
            Some((iss, jti)) => RevocationTarget::Jti {
                iss: agentid_protocol::SpiffeId::parse(iss)?,
                jti: jti.to_owned(),
            },
            None => {
                return Err(CaError::Store(format!(
                    "malformed link_jti entry {value:?}"
                )))
            }
        },
        RevocationKind::Principal => {
            return Err(CaError::Store("principal entries are not published".into()))
        }
    };
    Ok(RevocationListBuilder::encode_entry(
        td,
        &RevocationEntry { target, exp },
    )?)
}
