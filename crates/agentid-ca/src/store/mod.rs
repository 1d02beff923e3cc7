//! The CA's record of every issuance and revocation, behind a trait; SQLite by default,
//! PostgreSQL for several replicas (module `postgres`, feature `postgres`).
//!
//! An issuance is committed (with its key binding, its task and the consumption of a bootstrap
//! token, in one transaction) before the certificate is handed out, so that the store holds
//! exactly one record per certificate returned, also across crashes.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::audit::{
    AuditEvent, AuditHead, AuditRecord, AuditSnapshot, AuditVisitor, ChainWriter, CheckpointRecord,
    CheckpointSigner,
};
use crate::error::{CaError, Result};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::{PgSettings, PgStore};

/// What an issuance was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuanceKind {
    /// A task opened for its root holder, with a grant.
    Task,
    /// A child agent's certificate in its parent's task, without a grant.
    Child,
    /// A service certificate.
    Service,
    /// A renewal for the same key and identity.
    Renewal,
}

impl IssuanceKind {
    /// Stable string form used in the store and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuanceKind::Task => "task",
            IssuanceKind::Child => "child",
            IssuanceKind::Service => "service",
            IssuanceKind::Renewal => "renewal",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "task" => IssuanceKind::Task,
            "child" => IssuanceKind::Child,
            "service" => IssuanceKind::Service,
            "renewal" => IssuanceKind::Renewal,
            other => return Err(CaError::Store(format!("unknown issuance kind {other:?}"))),
        })
    }
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuanceRecord {
    /// Serial number (hex).
    pub serial: String,
    /// The URI SAN.
    pub identity: String,
    /// What kind of issuance.
    pub kind: IssuanceKind,
    /// Agent name (agents only).
    pub agent: Option<String>,
    /// Task id (agents only).
    pub task: Option<String>,
    /// notBefore, Unix seconds.
    pub not_before: u64,
    /// notAfter, Unix seconds.
    pub not_after: u64,
    /// Who asked (`operator`, `bootstrap`, a parent's task identity, the holder).
    pub requester: String,
    /// RFC 7638 thumbprint of the certified key.
    pub jkt: String,
    /// When it was issued, Unix seconds.
    pub issued_at: u64,
    /// The grant's `jti`, for task openings.
    pub grant_jti: Option<String>,
}

/// The key bound to an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The URI SAN.
    pub identity: String,
    /// The bound key's thumbprint.
    pub jkt: String,
    /// The bound key's SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
    /// Agent name (agents only).
    pub agent: Option<String>,
    /// Task id (agents only).
    pub task: Option<String>,
    /// No certificate for this identity may end after this (the task's chain expiry), Unix s.
    pub cap: u64,
    /// When the bound key got its first certificate for this identity, Unix s (what a
    /// service's `max_key_age` counts from). Kept while the same key is issued again; a new key
    /// starts it again. `None` for a task identity bound before schema version 6 (SQLite;
    /// PostgreSQL 4); a service's is filled in by that migration.
    pub key_bound_at: Option<u64>,
}

/// A task opened with a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    /// The task id.
    pub task: String,
    /// The root holder's task identity.
    pub holder: String,
    /// The grant's `jti`.
    pub grant_jti: String,
    /// The grant's `exp`, Unix seconds.
    pub exp: u64,
    /// When it was opened, Unix seconds.
    pub created: u64,
    /// The principal the task acts for, as canonical JSON (see [`canonical_principal`]).
    pub principal: Option<String>,
    /// The grant's `max_depth`, which caps the task's children (CA-API.md 3.8); `None` for a
    /// task opened before the store recorded it (SQLite schema 4, PostgreSQL schema 2).
    pub max_depth: Option<u8>,
}

/// The canonical form of an RFC 9493 principal as the store keeps it: its JSON with object keys
/// sorted (by their UTF-8 bytes, at every level), no whitespace. The keys are sorted here, not
/// left to `serde_json`'s map, whose order is insertion order once any crate in a program enables
/// its `preserve_order` feature: a principal revocation must not be dodged by reordering keys.
pub fn canonical_principal(p: &serde_json::Value) -> Result<String> {
    let mut out = String::new();
    write_canonical(p, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &serde_json::Value, out: &mut String) -> Result<()> {
    fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
        serde_json::to_string(v).map_err(|e| CaError::InvalidRequest(format!("principal: {e}")))
    }
    match v {
        serde_json::Value::Object(map) => {
            let mut members: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json(k)?);
                out.push(':');
                write_canonical(v, out)?;
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out)?;
            }
            out.push(']');
        }
        scalar => out.push_str(&json(scalar)?),
    }
    Ok(())
}

/// What a revocation entry targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// A token `jti` (grants of this trust domain).
    Jti,
    /// A task id.
    Task,
    /// An agent name.
    Agent,
    /// A key thumbprint.
    Jkt,
    /// A link `jti`, scoped by its issuer: the value is `"<issuer task identity> <jti>"`.
    LinkJti,
    /// A principal (canonical JSON): kept at the CA only, never published. Revoking a
    /// principal revokes each of its live tasks as a `task` entry and refuses new tasks for it
    /// (as every entry does, also after its `exp`: the CA forgets no revocation).
    Principal,
}

impl RevocationKind {
    /// Stable string form.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Jti => "jti",
            RevocationKind::Task => "task",
            RevocationKind::Agent => "agent",
            RevocationKind::Jkt => "jkt",
            RevocationKind::LinkJti => "link_jti",
            RevocationKind::Principal => "principal",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "jti" => RevocationKind::Jti,
            "task" => RevocationKind::Task,
            "agent" => RevocationKind::Agent,
            "jkt" => RevocationKind::Jkt,
            "link_jti" => RevocationKind::LinkJti,
            "principal" => RevocationKind::Principal,
            other => return Err(CaError::Store(format!("unknown revocation kind {other:?}"))),
        })
    }
}

/// One revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationRecord {
    /// What is revoked.
    pub kind: RevocationKind,
    /// The revoked value (jti, task id, agent name, thumbprint).
    pub value: String,
    /// The entry's `exp` in the list: when everything it could hit has expired, plus skew.
    pub exp: u64,
    /// When it was revoked.
    pub revoked_at: u64,
    /// Free-text reason.
    pub reason: Option<String>,
    /// Who revoked it.
    pub requester: String,
}

/// How an issuance binds its key to its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The identity must be new (a task's root holder).
    Fresh,
    /// New, or already bound to this same key (a child in its parent's task).
    FreshOrSameKey,
    /// Must exist with this same key (renewal).
    SameKey,
    /// New, same key, or a new key replacing the old one (services rotate keys).
    Rebind,
}

/// A bootstrap token as stored: only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapRecord {
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// The agent it is bound to.
    pub agent: String,
    /// The task it is bound to.
    pub task: String,
    /// Expiry, Unix seconds.
    pub expires: u64,
}

/// A bound on the bootstrap tokens one creator holds outstanding (unredeemed, not expired at
/// `now`), checked in the insert's transaction (CA-API.md 3.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBound {
    /// The creator, as stored (`svc:NAME`).
    pub creator: String,
    /// The most it may hold: the token is refused ([`CaError::TooManyTokens`]) when it holds
    /// this many already.
    pub max: u64,
    /// Now, Unix seconds.
    pub now: u64,
}

/// A task whose grant has not expired, with its holder's agent and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveTask {
    /// The task.
    pub task: TaskRecord,
    /// The holder's agent name.
    pub agent: String,
    /// The thumbprint of the key bound to the holder.
    pub jkt: String,
}

/// Everything committed atomically for one issuance.
#[derive(Clone, Debug)]
pub struct IssuanceCommit<'a> {
    /// The certificate.
    pub record: &'a IssuanceRecord,
    /// The identity binding (its `cap` is written for new bindings and raised, never lowered).
    pub identity: &'a IdentityRecord,
    /// How the binding is checked.
    pub binding: Binding,
    /// The task, when this issuance opens one.
    pub task: Option<&'a TaskRecord>,
    /// The requester named the task's id (neither generated by the CA nor a bootstrap token's,
    /// checked when the token was made): refused when another agent's unredeemed bootstrap
    /// token names it (CA-API.md 1.3, 3.10).
    pub chosen_task_id: bool,
    /// The bootstrap token consumed by this issuance (its hash).
    pub bootstrap: Option<&'a BootstrapRecord>,
    /// Revocation entries that refuse this issuance when present.
    pub refuse_if_revoked: &'a [(RevocationKind, String)],
    /// The issuance's audit record, appended to the writer's chain in the same transaction.
    pub audit: &'a AuditEvent,
    /// Now, Unix seconds.
    pub now: u64,
}

/// The least `seq` a revocation list published at `now` takes: the milliseconds since the
/// Unix epoch (0 before it). A publication's `seq` is one above the store's counter or this,
/// whichever is higher: lists go on ascending by one within a millisecond, and a store whose
/// counter went back (restored from a backup, a PostgreSQL point-in-time recovery, a failover
/// to a standby that lagged) still publishes above every list published before the restore,
/// which agents hold and compare `seq`s with (PROTOCOL.md 14, R8). The counter moves only on
/// publication: nothing a client sends (a long-poll's `after`) raises it. At most 2^53 - 1,
/// the largest integer a list may carry (PROTOCOL.md 3.3).
pub fn list_seq_floor(now: std::time::SystemTime) -> u64 {
    const MAX: u64 = (1 << 53) - 1;
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(MAX).min(MAX))
}

/// The least value a transaction that adds or widens a revocation moves the store's revocation
/// epoch to: the time in milliseconds ([`list_seq_floor`] of now). A store that went back
/// (restored, a point-in-time recovery) under a running publisher still moves past the epoch
/// of the list that publisher holds, made in the history the store lost, so the revocation is
/// published, and a revoke call waits for a list that holds it, not for that one.
pub(crate) fn revocation_epoch_floor() -> i64 {
    i64::try_from(list_seq_floor(std::time::SystemTime::now())).unwrap_or(0)
}

/// How many published lists a publication keeps (itself and the two before it); older
/// rows are deleted in its transaction. Only the latest is served; the rest is for the
/// operator's inspection.
pub const PUBLISHED_LISTS_KEPT: u64 = 3;

/// A published revocation list as stored (one row per `seq`, the latest
/// [`PUBLISHED_LISTS_KEPT`] kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedList {
    /// The list's `seq`.
    pub seq: u64,
    /// The signed list, exactly as served.
    pub compact: String,
    /// Its `iat`, Unix seconds.
    pub published_at: u64,
    /// Its `next_update`, Unix seconds.
    pub next_update: u64,
    /// The store's revocation epoch the list was made at: a higher current epoch means a
    /// revocation committed since.
    pub revocation_epoch: u64,
}

/// A revocation as a published list needs it: what its entry is written from. The list holds
/// the revocations whose `exp` is after the publication's `now`, except
/// [`RevocationKind::Principal`] (never published), in the order they were first recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRow {
    /// The row's id in the store (SQLite `rowid`, PostgreSQL `id`): rows are passed in
    /// ascending `id`, the order they were first recorded.
    pub id: i64,
    /// What is revoked.
    pub kind: RevocationKind,
    /// The revoked value, as stored.
    pub value: String,
    /// Until when, Unix seconds.
    pub exp: u64,
}

/// What a publication signs and stores, made inside the store's transaction from the next
/// `seq` and the current entries.
#[derive(Clone, Debug)]
pub struct Publication {
    /// The signed list.
    pub compact: String,
    /// Its `iat`.
    pub published_at: u64,
    /// Its `next_update`.
    pub next_update: u64,
    /// The publication's audit record.
    pub audit: AuditEvent,
}

/// The latest chain head of a writer and its last checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointState {
    /// The writer id of this store's chain.
    pub writer: String,
    /// `(seq, hash)` of the head record.
    pub head: Option<(u64, String)>,
    /// `(seq, iat)` of the last checkpoint.
    pub last: Option<(u64, u64)>,
}

/// One writer's prune, as [`Store::prune_audit`] applies it: the plan and the base signed for
/// it.
#[derive(Clone, Debug)]
pub struct AuditPrune {
    /// What goes.
    pub plan: crate::audit::PrunePlan,
    /// The chain's new base ([`crate::audit::BASE_TYP`]), at the plan's `seq` and `head`.
    pub base: CheckpointRecord,
    /// The revocations of every record of the chain pruned so far, as the base signs them
    /// ([`crate::audit::base_revocations_digest`]): they replace the chain's kept ones.
    pub revocations: Vec<(String, u64)>,
}

/// What [`Store::prune_audit`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneCounts {
    /// Chains given a new base.
    pub chains: u64,
    /// Audit records.
    pub records: u64,
    /// Checkpoints of those records.
    pub checkpoints: u64,
    /// Issuance rows of the certificates those records issued.
    pub issuances: u64,
    /// Transactions the prune took ([`crate::CertificateAuthority::prune_audit_in_batches`]; a
    /// store's own [`Store::prune_audit`] takes one).
    pub transactions: u64,
}

/// Commits issuances without the store's lock, so that concurrent issuers can share one
/// durable commit (group commit). Same contract as [`Store::commit_issuance`]: returns only once
/// the record is durable, and refuses exactly what it would refuse.
pub trait IssuanceCommitter: Send + Sync {
    /// See [`Store::commit_issuance`].
    fn commit_issuance(&self, c: &IssuanceCommit<'_>) -> Result<()>;
}

/// Storage of issuances, bindings, tasks, revocations and bootstrap tokens.
pub trait Store: Send {
    /// A committer the CA may call without holding the store's lock (for group commit); `None`
    /// (the default) means issuances go through [`Store::commit_issuance`] under the lock.
    fn issuance_committer(&self) -> Option<Arc<dyn IssuanceCommitter>> {
        None
    }
    /// Atomically checks revocations, the key binding and the bootstrap token, then records the
    /// issuance. Returns only once the record is durable.
    fn commit_issuance(&mut self, c: &IssuanceCommit<'_>) -> Result<()>;
    /// The binding of an identity.
    fn identity(&self, identity: &str) -> Result<Option<IdentityRecord>>;
    /// The identity a key is (or was) bound to.
    fn key_owner(&self, jkt: &str) -> Result<Option<String>>;
    /// One issuance by serial.
    fn issuance(&self, serial: &str) -> Result<Option<IssuanceRecord>>;
    /// Every issuance, oldest first.
    fn issuances(&self) -> Result<Vec<IssuanceRecord>>;
    /// A task.
    fn task(&self, task: &str) -> Result<Option<TaskRecord>>;
    /// A task by its grant `jti`.
    fn task_by_jti(&self, jti: &str) -> Result<Option<TaskRecord>>;
    /// Latest notAfter or cap among the identities matching the filter (agent name, task, key).
    fn latest_expiry(&self, kind: RevocationKind, value: &str) -> Result<Option<u64>>;
    /// The first issuance of the key `jkt` (a key is bound to one identity forever): for a child,
    /// the one whose `requester` is its parent. The default scans.
    fn first_issuance_of_key(&self, jkt: &str) -> Result<Option<IssuanceRecord>> {
        Ok(self.issuances()?.into_iter().find(|i| i.jkt == jkt))
    }
    /// When the key `jkt` got its first certificate (a key is bound to one identity forever):
    /// what a service's `max_key_age` counts from when the key is bound again. Kept with the
    /// key's binding, so that it outlives the issuance rows a prune deletes. The default reads
    /// the first issuance.
    fn key_first_issued_at(&self, jkt: &str) -> Result<Option<u64>> {
        Ok(self.first_issuance_of_key(jkt)?.map(|i| i.issued_at))
    }
    /// Until when the store must keep the certificate `serial` and the audit record that issued
    /// it: the later of its `notAfter` and its task's end (`None`: no such certificate). What
    /// [`crate::audit::plan_prune`] reads.
    fn issuance_retained_until(&self, serial: &str) -> Result<Option<u64>> {
        let Some(i) = self.issuance(serial)? else {
            return Ok(None);
        };
        let task_exp = match &i.task {
            Some(t) => self.task(t)?.map_or(0, |t| t.exp),
            None => 0,
        };
        Ok(Some(i.not_after.max(task_exp)))
    }
    /// Applies `prunes` in one transaction (CA-API.md 4.5): for each, checks that the chain's
    /// record `seq` still hashes to `head` and that its base is older, reads the records after
    /// the base up to `seq` ([`crate::audit::PrunedBatch`]: unchanged since they were planned)
    /// for the certificates they issued ([`crate::audit::issued_serial`]), then stores the base
    /// and deletes the chain's records up to `seq`, their checkpoints and the issuance rows of
    /// those certificates. Stores without an audit chain refuse.
    fn prune_audit(&mut self, prunes: &[AuditPrune]) -> Result<PruneCounts> {
        let _ = prunes;
        Err(CaError::Store(
            "this store keeps no audit chain to prune".into(),
        ))
    }
    /// The latest `notAfter` among the certificates issued for the key `jkt`: its holder's
    /// current certificate (a renewal keeps the key). The default scans.
    fn latest_not_after(&self, jkt: &str) -> Result<Option<u64>> {
        Ok(self
            .issuances()?
            .into_iter()
            .filter(|i| i.jkt == jkt)
            .map(|i| i.not_after)
            .max())
    }
    /// Records (or widens) a revocation, with its audit record, in one transaction.
    fn add_revocation(&mut self, r: &RevocationRecord, audit: &AuditEvent) -> Result<()>;
    /// [`Store::add_revocation`] for an entry that must outlive what it covers: in the same
    /// transaction, and serialized with issuances, `r.exp` is raised to `skew` past the
    /// target's [`Store::latest_expiry`], so a certificate or cap an issuance committed after
    /// `r.exp` was computed (concurrently with this revocation) is still covered, and an
    /// issuance after it is refused by the entry. Returns the record as written. The default
    /// reads and writes in two steps (for stores without concurrent issuers).
    fn add_revocation_covering(
        &mut self,
        r: &RevocationRecord,
        skew: u64,
        audit: &AuditEvent,
    ) -> Result<RevocationRecord> {
        let mut r = r.clone();
        if let Some(latest) = self.latest_expiry(r.kind, &r.value)? {
            r.exp = r.exp.max(latest.saturating_add(skew));
        }
        self.add_revocation(&r, audit)?;
        Ok(r)
    }
    /// Every revocation.
    fn revocations(&self) -> Result<Vec<RevocationRecord>>;
    /// The first of `targets` (in their order) revoked by an entry whose `exp` is after `now`:
    /// what a per-request check needs, without reading every revocation. The default scans.
    fn revoked_among(
        &self,
        targets: &[(RevocationKind, &str)],
        now: u64,
    ) -> Result<Option<(RevocationKind, String)>> {
        let live: Vec<RevocationRecord> = self
            .revocations()?
            .into_iter()
            .filter(|r| r.exp > now)
            .collect();
        Ok(targets
            .iter()
            .find(|(k, v)| live.iter().any(|r| r.kind == *k && r.value == *v))
            .map(|(k, v)| (*k, (*v).to_owned())))
    }
    /// The revocations of `kinds` whose `exp` is after `now`, as (kind, value): what a check
    /// over many identities needs (the task inventory), without reading the other kinds. The
    /// default scans.
    fn live_revocations_of(
        &self,
        kinds: &[RevocationKind],
        now: u64,
    ) -> Result<Vec<(RevocationKind, String)>> {
        Ok(self
            .revocations()?
            .into_iter()
            .filter(|r| r.exp > now && kinds.contains(&r.kind))
            .map(|r| (r.kind, r.value))
            .collect())
    }
    /// Stores a bootstrap token's hash with what it binds (JSON of [`crate::TokenBinding`],
    /// schema version 1; `None` binds nothing more) and its audit record, in one transaction: a
    /// token is never stored without its binding. With `bound`, refused
    /// ([`CaError::TooManyTokens`]) when the binding's creator already holds `bound.max`
    /// unredeemed tokens not expired at `bound.now`, counted in the same transaction.
    fn add_bootstrap(
        &mut self,
        b: &BootstrapRecord,
        binding: Option<&str>,
        bound: Option<&TokenBound>,
        audit: &AuditEvent,
    ) -> Result<()>;
    /// Deletes at most `limit` bootstrap tokens, used or not, that expired before `before`
    /// (Unix seconds); returns how many. Nothing reads a token once the CA has forgotten it
    /// (CA-API.md 3.6: its redemption is then `token_invalid`). The default keeps every token.
    fn prune_bootstrap_tokens(&mut self, _before: u64, _limit: usize) -> Result<usize> {
        Ok(0)
    }
    /// A bootstrap token by hash, if unused.
    fn bootstrap(&self, hash: &str) -> Result<Option<BootstrapRecord>>;
    /// A bootstrap token by hash, used or not, with what it binds (schema version 1). The
    /// default knows only unused tokens and no bindings.
    fn bootstrap_state(&self, hash: &str) -> Result<Option<crate::token::BootstrapState>> {
        Ok(self
            .bootstrap(hash)?
            .map(|record| crate::token::BootstrapState {
                record,
                used_at: None,
                binding: None,
            }))
    }
    /// The agent of an unused bootstrap token that names task `task` (a task no one opened
    /// yet): what makes such a task known to a revocation (CA-API 3.10).
    fn unredeemed_token_agent(&self, task: &str) -> Result<Option<String>>;
    /// One page of the live tasks of `agents` (`GET /v1/tasks`, CA-API 3.11): the tasks whose
    /// task id is after `after` (all when `None`), whose grant expires after `now`, and whose
    /// task, holder agent, holder key and grant `jti` no revocation live at `now` names, each
    /// with its holder's agent name and bound key thumbprint; by task id, at most `limit`. The
    /// default scans every issuance and revocation; the SQLite and PostgreSQL stores read one
    /// page in one snapshot (a revocation committed before it is seen with the tasks it hits):
    /// the next few tasks by id, then, if the page is not full, each agent's tasks sought by
    /// (agent, task id), so that a page's work is bounded by the page, the number of agents
    /// and the listed agents' own rows, never by the other agents' tasks; holding no more than
    /// about two pages in memory.
    fn live_tasks_page(
        &self,
        agents: &[String],
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<LiveTask>> {
        use RevocationKind as K;
        let revoked: std::collections::HashSet<(RevocationKind, String)> = self
            .live_revocations_of(&[K::Task, K::Agent, K::Jkt, K::Jti], now)?
            .into_iter()
            .collect();
        let is = |k: RevocationKind, v: &str| revoked.contains(&(k, v.to_owned()));
        let mut out = Vec::new();
        for rec in self.issuances()? {
            if rec.kind != IssuanceKind::Task {
                continue;
            }
            let (Some(agent), Some(task)) = (rec.agent, rec.task) else {
                continue;
            };
            if !agents.contains(&agent) || after.is_some_and(|a| task.as_str() <= a) {
                continue;
            }
            let Some(t) = self.task(&task)? else {
                continue;
            };
            if t.exp <= now
                || is(K::Task, &t.task)
                || is(K::Agent, &agent)
                || is(K::Jkt, &rec.jkt)
                || is(K::Jti, &t.grant_jti)
            {
                continue;
            }
            out.push(LiveTask {
                task: t,
                agent,
                jkt: rec.jkt,
            });
        }
        out.sort_by(|a, b| a.task.task.cmp(&b.task.task));
        out.dedup_by(|a, b| a.task.task == b.task.task);
        out.truncate(limit);
        Ok(out)
    }
    /// Appends a record that goes with no other change (a refusal) to the writer's chain.
    fn append_audit(&mut self, _ev: &AuditEvent) -> Result<()> {
        Err(CaError::Store("this store keeps no audit chain".into()))
    }
    /// The writer's chain head and last checkpoint.
    fn checkpoint_state(&self) -> Result<CheckpointState> {
        Ok(CheckpointState::default())
    }
    /// Gives the store the signer of the checkpoints it writes with record 1 and every
    /// [`crate::audit::CHECKPOINT_EVERY`]-th record of its chain, in that record's transaction
    /// (CA-API.md 4.2). The default writes none (a store without an audit chain).
    fn set_checkpoint_signer(&mut self, _signer: CheckpointSigner) {}
    /// Stores a signed checkpoint (a second one for the same record is ignored).
    fn add_checkpoint(&mut self, _cp: &CheckpointRecord) -> Result<()> {
        Err(CaError::Store("this store keeps no audit chain".into()))
    }
    /// Every record (with `ts >= since` when given), every checkpoint and the serials that
    /// must have a record, read in one transaction: [`Store::audit_visit`] collected in memory
    /// (for tests and small stores: verification, export and prune stream instead).
    fn audit_snapshot(&self, since: Option<u64>) -> Result<AuditSnapshot> {
        let mut all = crate::audit::SnapshotCollector::default();
        self.audit_visit(since, &mut all)?;
        Ok(all.snap)
    }
    /// Feeds `visitor` the audit trail in one read transaction ([`AuditVisitor`] says in what
    /// order): records with `ts >= since` when given (each writer's chain from its first such
    /// record on), read a page at a time and dropped once visited.
    fn audit_visit(&self, _since: Option<u64>, _visitor: &mut dyn AuditVisitor) -> Result<()> {
        Err(CaError::Store("this store keeps no audit chain".into()))
    }
    /// Whether the store holds anything the audit key signed: a checkpoint, or a pruned
    /// chain's base.
    fn audit_has_signatures(&self) -> Result<bool> {
        Err(CaError::Store("this store keeps no audit chain".into()))
    }
    /// Publishes the next revocation list in one transaction: takes the next `seq` (one above
    /// the store's counter, and at least `min_seq`: see [`list_seq_floor`]), reads the entries
    /// (only what a list holds at `now`: see [`ListRow`]), lets `make` sign them, stores the
    /// list and its audit record. A list with a higher `seq` therefore never lacks an entry a
    /// lower one had.
    fn publish_revocations(
        &mut self,
        _now: u64,
        _min_seq: u64,
        _make: &mut dyn FnMut(u64, &[ListRow]) -> Result<Publication>,
    ) -> Result<PublishedList> {
        Err(CaError::Store("this store does not publish lists".into()))
    }
    /// The latest published list.
    fn latest_published(&self) -> Result<Option<PublishedList>> {
        Ok(None)
    }
    /// The latest published list if its `seq` is above `after` (any when `None`): a poll that
    /// finds nothing newer reads no list.
    fn latest_published_after(&self, after: Option<u64>) -> Result<Option<PublishedList>> {
        Ok(self
            .latest_published()?
            .filter(|p| after.is_none_or(|a| p.seq > a)))
    }
    /// The revocation epoch: bumped by every transaction that adds or widens a revocation.
    fn revocation_epoch(&self) -> Result<u64> {
        Ok(0)
    }
    /// Revokes a principal in one transaction: its own entry `p` (kind
    /// [`RevocationKind::Principal`]) and a `task` entry for each task of that principal whose
    /// grant verifiers may still accept at `p.revoked_at` (`exp + skew` after it, PROTOCOL.md
    /// rule 5.5; each entry lasting until everything in the task has expired, plus `skew`),
    /// with the audit records `audit(tasks)` naming the expansion (each appended in the same
    /// transaction; `tasks` as stored, each `exp` the one it committed with).
    /// Returns the task entries.
    fn revoke_principal(
        &mut self,
        _p: &RevocationRecord,
        _skew: u64,
        _audit: &mut dyn FnMut(&[RevocationRecord]) -> Vec<AuditEvent>,
    ) -> Result<Vec<RevocationRecord>> {
        Err(CaError::Store("this store cannot revoke principals".into()))
    }
}

/// The embedded SQLite store (`ca.db`): WAL, `synchronous=FULL`.
///
/// Issuances are committed through a second connection with group commit (concurrent
/// issuances share one transaction and one fsync); lookups and the other writes use the
/// store's connection.
pub struct SqliteStore {
    conn: Connection,
    writer: Arc<GroupCommitter>,
    audit_writer: ChainWriter,
}

impl core::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// The version 0 schema (see [`crate::migrate`]); later versions are migrations.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identities (
  identity TEXT PRIMARY KEY, jkt TEXT NOT NULL, spki BLOB NOT NULL,
  agent TEXT, task TEXT, cap INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  jkt TEXT PRIMARY KEY, identity TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS issuances (
  serial TEXT PRIMARY KEY, identity TEXT NOT NULL, kind TEXT NOT NULL, agent TEXT, task TEXT,
  not_before INTEGER NOT NULL, not_after INTEGER NOT NULL, requester TEXT NOT NULL,
  jkt TEXT NOT NULL, issued_at INTEGER NOT NULL, grant_jti TEXT UNIQUE);
-- No query looks issuances up by identity (identities are keyed by their own table).
DROP INDEX IF EXISTS issuances_identity;
CREATE INDEX IF NOT EXISTS issuances_agent ON issuances(agent);
CREATE INDEX IF NOT EXISTS issuances_task ON issuances(task);
CREATE INDEX IF NOT EXISTS issuances_jkt ON issuances(jkt);
CREATE TABLE IF NOT EXISTS tasks (
  task TEXT PRIMARY KEY, holder TEXT NOT NULL, grant_jti TEXT NOT NULL UNIQUE,
  exp INTEGER NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (
  kind TEXT NOT NULL, value TEXT NOT NULL, exp INTEGER NOT NULL, revoked_at INTEGER NOT NULL,
  reason TEXT, requester TEXT NOT NULL, PRIMARY KEY (kind, value));
CREATE TABLE IF NOT EXISTS bootstrap_tokens (
  hash TEXT PRIMARY KEY, agent TEXT NOT NULL, task TEXT NOT NULL, expires INTEGER NOT NULL,
  used_at INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revocation_seq', 0);
";

/// `GET /v1/tasks` (CA-API 3.11) reads a page in two phases, each bounded by the page's size:
///
/// 1. [`NEXT_TASKS_SCAN`]: among the next few tasks by id ([`tasks_scan_budget`],
///    [`NEXT_TASKS_EDGE`]), those of the listed agents that are live: a caller that may list
///    most agents (a platform service) finds its page there, reading little more than the
///    page.
/// 2. If the page is not full and the tasks go on, [`AGENT_TASKS`] from the last id phase 1
///    read: each listed agent's identities sought by (agent, task) in the index
///    `identities_agent_task` (schema version 5), in task id order, at most `limit`, each
///    joined to the task it holds by the tasks' primary key; merged by task id, the page's
///    last id bounding the later agents' seeks ([`AGENT_TASKS_BELOW`]). A caller that may list
///    a few agents of a large trust domain reads those agents' own rows, never the others'.
///
/// Each revocation is looked up by its primary key (kind, value).
const TASKS_SCAN_FACTOR: usize = 4;

/// How many tasks phase 1 of a page reads at most: [`TASKS_SCAN_FACTOR`] times the page, or
/// times the number of agents when there are more (phase 2 costs at least one seek per agent:
/// reading a few tasks per agent first costs no more).
pub(crate) fn tasks_scan_budget(limit: usize, agents: usize) -> usize {
    limit.max(agents).saturating_mul(TASKS_SCAN_FACTOR)
}
/// Before phase 1 of a tasks page (see [`TASKS_SCAN_FACTOR`]): how many tasks follow `?1`
/// (at most `?2`), and the id of the last of those.
const NEXT_TASKS_EDGE: &str =
    "SELECT count(*), max(task) FROM (SELECT task FROM tasks WHERE task > ?1 ORDER BY task LIMIT ?2)";
/// Phase 1 of a tasks page (see [`TASKS_SCAN_FACTOR`]): the live tasks of the listed agents
/// (JSON array `?3`) after `?1` up to `?9` (included), by the tasks' primary key, stopping at
/// `?8` found.
const NEXT_TASKS_SCAN: &str =
    "SELECT t.task, t.holder, t.grant_jti, t.exp, t.created, t.principal, t.max_depth,
       i.agent, i.jkt
     FROM tasks t CROSS JOIN identities i
     WHERE t.task > ?1 AND t.task <= ?9 AND i.identity = t.holder AND t.exp > ?2
       AND i.agent IN (SELECT value FROM json_each(?3))
       AND NOT EXISTS (SELECT 1 FROM revocations r
                       WHERE r.kind = ?4 AND r.value = t.task AND r.exp > ?2)
       AND NOT EXISTS (SELECT 1 FROM revocations r
                       WHERE r.kind = ?5 AND r.value = i.agent AND r.exp > ?2)
       AND NOT EXISTS (SELECT 1 FROM revocations r
                       WHERE r.kind = ?6 AND r.value = i.jkt AND r.exp > ?2)
       AND NOT EXISTS (SELECT 1 FROM revocations r
                       WHERE r.kind = ?7 AND r.value = t.grant_jti AND r.exp > ?2)
     ORDER BY t.task LIMIT ?8";
/// Phase 2 of a tasks page (see [`TASKS_SCAN_FACTOR`]): one agent's live tasks after `?2`.
/// `$bound` adds an upper bound on the task id.
macro_rules! agent_tasks_sql {
    ($bound:literal) => {
        concat!(
            "SELECT t.task, t.holder, t.grant_jti, t.exp, t.created, t.principal, t.max_depth,
               i.agent, i.jkt
             FROM identities i CROSS JOIN tasks t
             WHERE i.agent = ?1 AND i.task > ?2 ",
            $bound,
            "
               AND t.task = i.task AND t.holder = i.identity AND t.exp > ?3
               AND NOT EXISTS (SELECT 1 FROM revocations r
                               WHERE r.kind = ?4 AND r.value = t.task AND r.exp > ?3)
               AND NOT EXISTS (SELECT 1 FROM revocations r
                               WHERE r.kind = ?5 AND r.value = i.agent AND r.exp > ?3)
               AND NOT EXISTS (SELECT 1 FROM revocations r
                               WHERE r.kind = ?6 AND r.value = i.jkt AND r.exp > ?3)
               AND NOT EXISTS (SELECT 1 FROM revocations r
                               WHERE r.kind = ?7 AND r.value = t.grant_jti AND r.exp > ?3)
             ORDER BY i.task LIMIT ?8"
        )
    };
}
/// Phase 2 for one agent.
const AGENT_TASKS: &str = agent_tasks_sql!("");
/// Phase 2 for one agent, below a task id (excluded) the page already reaches.
const AGENT_TASKS_BELOW: &str = agent_tasks_sql!("AND i.task < ?9");

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| CaError::Store("integer out of range".into()))
}
fn to_u64(v: i64) -> rusqlite::Result<u64> {
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, v))
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl SqliteStore {
    /// Opens (creating on first use) the database file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_as(path, crate::audit::DEFAULT_WRITER)
    }

    /// Opens the database with `writer` as the audit chain's writer id. Processes that share
    /// one SQLite file may share a writer id (their appends are serialized by SQLite's write
    /// lock); replicas of a shared database each have their own.
    pub fn open_as(path: &Path, writer: &str) -> Result<Self> {
        if writer.is_empty() || writer.len() > 64 {
            return Err(CaError::InvalidRequest(
                "an audit writer id has 1 to 64 bytes".into(),
            ));
        }
        let mut conn = Self::connect(path)?;
        crate::migrate::migrate(&mut conn, SCHEMA)?;
        let audit_writer = ChainWriter::new(writer);
        let writer = Arc::new(GroupCommitter::start(
            Self::connect(path)?,
            audit_writer.clone(),
        )?);
        Ok(SqliteStore {
            conn,
            writer,
            audit_writer,
        })
    }

    /// A write transaction, refused if a newer agentid migrated the database since it was
    /// opened (see [`check_schema`]).
    fn immediate(&mut self) -> Result<rusqlite::Transaction<'_>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_schema(&tx)?;
        Ok(tx)
    }

    /// Records (or widens) `r` with its audit record in one IMMEDIATE transaction. With
    /// `cover` (the skew), `r.exp` is first raised to `cover` past the target's latest
    /// certificate or cap, read under the write lock that issuances take too, so nothing the
    /// entry covers commits between the read and the entry. Returns the record as written.
    fn write_revocation(
        &mut self,
        r: &RevocationRecord,
        cover: Option<u64>,
        audit: &AuditEvent,
    ) -> Result<RevocationRecord> {
        let writer = self.audit_writer.clone();
        let mut r = r.clone();
        let tx = self.immediate()?;
        if let Some(skew) = cover {
            if let Some(latest) = latest_expiry_on(&tx, r.kind, &r.value)? {
                r.exp = r.exp.max(latest.saturating_add(skew));
            }
        }
        tx.prepare_cached("INSERT INTO revocations (kind, value, exp, revoked_at, reason, requester) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (kind, value) DO UPDATE SET exp = MAX(exp, excluded.exp)")?.execute(params![r.kind.as_str(), r.value, to_i64(r.exp)?, to_i64(r.revoked_at)?, r.reason, r.requester],
        )?;
        bump_revocation_epoch(&tx)?;
        // The record carries the entry's `exp` as it now stands (CA-API.md 4.3).
        let exp: i64 = tx
            .prepare_cached("SELECT exp FROM revocations WHERE kind = ?1 AND value = ?2")?
            .query_row(params![r.kind.as_str(), r.value], |row| row.get(0))?;
        let audit = AuditEvent {
            exp: Some(to_u64(exp)?),
            ..audit.clone()
        };
        append_audit_tx(&tx, &writer, &audit)?;
        tx.commit()?;
        Ok(r)
    }

    fn connect(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path)
            .map_err(|e| CaError::Store(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Each issuance of a group commit runs in its own savepoint, whose undo pages (about 20
        // per issuance) SQLite keeps in a statement journal. Past 64 KiB that journal spills to
        // a new temporary file (created, written and unlinked per issuance: ~90 us of the
        // ~600 us of an in-process issuance). In memory it is freed at `RELEASE`; durability is
        // the WAL's and does not depend on it.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        Ok(conn)
    }

    fn row_issuance(row: &rusqlite::Row<'_>) -> rusqlite::Result<(IssuanceRecord, String)> {
        let kind: String = row.get(2)?;
        Ok((
            IssuanceRecord {
                serial: row.get(0)?,
                identity: row.get(1)?,
                kind: IssuanceKind::Task, // replaced by the caller from `kind`
                agent: row.get(3)?,
                task: row.get(4)?,
                not_before: to_u64(row.get(5)?)?,
                not_after: to_u64(row.get(6)?)?,
                requester: row.get(7)?,
                jkt: row.get(8)?,
                issued_at: to_u64(row.get(9)?)?,
                grant_jti: row.get(10)?,
            },
            kind,
        ))
    }

    fn fix_kind((mut r, kind): (IssuanceRecord, String)) -> Result<IssuanceRecord> {
        r.kind = IssuanceKind::parse(&kind)?;
        Ok(r)
    }
}

/// The revocation lookup for `n` (kind, value) pairs, one statement.
fn revocation_sql(n: usize) -> String {
    let mut sql = String::from("SELECT kind, value FROM revocations WHERE ");
    for i in 0..n {
        if i > 0 {
            sql.push_str(" OR ");
        }
        sql.push_str(&format!(
            "(kind = ?{} AND value = ?{})",
            2 * i + 1,
            2 * i + 2
        ));
    }
    sql
}

/// Checks and records one issuance inside the caller's transaction (or savepoint): revocations
/// (one statement), the key binding (one statement), then the writes.
/// Whether an unredeemed bootstrap token of another agent than `?2` names task id `?1` (an
/// index seek: `bootstrap_tokens_task`, schema version 5).
const TOKEN_OF_ANOTHER_AGENT: &str = "SELECT EXISTS (SELECT 1 FROM bootstrap_tokens WHERE task = ?1 AND agent <> ?2 AND used_at IS NULL)";

/// Whether a bootstrap token of agent `?2` may not name task id `?1`: task ids are unique
/// whatever the agent (CA-API.md 1.3), so a token never names one a task holds (it could never
/// be redeemed) nor one another agent's unredeemed token names (the task is that agent's from
/// then on, 3.10). Index seeks only (the tasks' key, `bootstrap_tokens_task`).
pub(crate) const TASK_ID_TAKEN_FOR_TOKEN: &str = "SELECT EXISTS (SELECT 1 FROM tasks WHERE task = ?1) OR EXISTS (SELECT 1 FROM bootstrap_tokens WHERE task = ?1 AND agent <> ?2 AND used_at IS NULL)";

/// How many unredeemed bootstrap tokens creator `?1` holds that expire after `?2`, counting
/// at most `?3` (a range of the index `bootstrap_tokens_creator`, schema version 7).
pub(crate) const OUTSTANDING_TOKENS: &str = "SELECT count(*) FROM (SELECT 1 FROM bootstrap_tokens WHERE creator = ?1 AND used_at IS NULL AND expires > ?2 LIMIT ?3)";
/// Deletes at most `?2` bootstrap tokens that expired before `?1` (a range of the index
/// `bootstrap_tokens_expires`, schema version 7).
pub(crate) const PRUNE_TOKENS: &str = "DELETE FROM bootstrap_tokens WHERE rowid IN (SELECT rowid FROM bootstrap_tokens WHERE expires < ?1 LIMIT ?2)";
/// The agent of an unredeemed bootstrap token naming task id `?1` (an index seek, as
/// [`TOKEN_OF_ANOTHER_AGENT`]).
const TOKEN_AGENT_BY_TASK: &str =
    "SELECT agent FROM bootstrap_tokens WHERE task = ?1 AND used_at IS NULL LIMIT 1";

fn apply_issuance(conn: &Connection, writer: &ChainWriter, c: &IssuanceCommit<'_>) -> Result<()> {
    // 1. Revocations: the first entry of `refuse_if_revoked` that is present refuses.
    if !c.refuse_if_revoked.is_empty() {
        let mut st = conn.prepare_cached(&revocation_sql(c.refuse_if_revoked.len()))?;
        let args = rusqlite::params_from_iter(
            c.refuse_if_revoked
                .iter()
                .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
        );
        let hits = st
            .query_map(args, |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !hits.is_empty() {
            for (kind, value) in c.refuse_if_revoked {
                if hits.iter().any(|(k, v)| k == kind.as_str() && v == value) {
                    return Err(CaError::Revoked {
                        kind: kind.as_str(),
                        value: value.clone(),
                    });
                }
            }
        }
    }
    let id = c.identity;
    // 2. One key, one identity: a key once bound stays with its identity forever.
    let (owner, bound): (Option<String>, Option<(String, i64)>) = conn
        .prepare_cached(
            "SELECT (SELECT identity FROM keys WHERE jkt = ?1), i.jkt, i.cap
             FROM (SELECT 1) LEFT JOIN identities i ON i.identity = ?2",
        )?
        .query_row(params![id.jkt, id.identity], |r| {
            let jkt: Option<String> = r.get(1)?;
            let cap: Option<i64> = r.get(2)?;
            Ok((r.get(0)?, jkt.zip(cap)))
        })?;
    if let Some(owner) = &owner {
        if owner != &id.identity {
            return Err(CaError::KeyInUse {
                jkt: id.jkt.clone(),
                bound_to: owner.clone(),
            });
        }
    }
    match (&bound, c.binding) {
        (Some(_), Binding::Fresh) => return Err(CaError::IdentityExists(id.identity.clone())),
        (None, Binding::SameKey) => return Err(CaError::UnknownIdentity(id.identity.clone())),
        (Some((jkt, _)), Binding::SameKey | Binding::FreshOrSameKey) if *jkt != id.jkt => {
            return Err(CaError::KeyMismatch {
                identity: id.identity.clone(),
                bound: jkt.clone(),
                requested: id.jkt.clone(),
            })
        }
        _ => {}
    }
    if owner.is_none() {
        conn.prepare_cached(
            "INSERT INTO keys (jkt, identity, first_issued_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![id.jkt, id.identity, to_i64(c.record.issued_at)?])
        .map_err(|e| {
            if is_constraint(&e) {
                CaError::KeyInUse {
                    jkt: id.jkt.clone(),
                    bound_to: "another identity".into(),
                }
            } else {
                e.into()
            }
        })?;
    }
    // A new binding, or the same/rebound key with its cap raised (never lowered). The key's
    // first certificate time stays while the key does (the right-hand sides read the row as it
    // was), and starts again with a new key.
    conn.prepare_cached(
        "INSERT INTO identities (identity, jkt, spki, agent, task, cap, key_bound_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (identity) DO UPDATE SET jkt = excluded.jkt, spki = excluded.spki,
           cap = MAX(cap, excluded.cap),
           key_bound_at = CASE WHEN jkt = excluded.jkt THEN COALESCE(key_bound_at, excluded.key_bound_at)
                          ELSE excluded.key_bound_at END",
    )?
    .execute(params![
        id.identity,
        id.jkt,
        id.spki,
        id.agent,
        id.task,
        to_i64(id.cap)?,
        id.key_bound_at.map(to_i64).transpose()?
    ])?;
    // 3. The task and its bootstrap token. A task id another agent's unredeemed token names is
    // that agent's (CA-API.md 3.10), as one its task holds is (the primary key below).
    if let Some(t) = c.task {
        // Only for an id the requester chose: a generated one is random, and a token's own id
        // was checked when the token was made.
        let named_by_other = c.chosen_task_id
            && conn
                .prepare_cached(TOKEN_OF_ANOTHER_AGENT)?
                .query_row(params![t.task, id.agent.as_deref().unwrap_or("")], |r| {
                    r.get::<_, bool>(0)
                })?;
        if named_by_other {
            return Err(CaError::TaskIdTaken(t.task.clone()));
        }
        conn.prepare_cached(
            "INSERT INTO tasks (task, holder, grant_jti, exp, created, principal, max_depth) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            t.task,
            t.holder,
            t.grant_jti,
            to_i64(t.exp)?,
            to_i64(t.created)?,
            t.principal,
            t.max_depth.map(i64::from)
        ])
        .map_err(|e| {
            if is_constraint(&e) {
                CaError::IdentityExists(format!("task {}", t.task))
            } else {
                e.into()
            }
        })?;
    }
    if let Some(b) = c.bootstrap {
        let n = conn
            .prepare_cached(
                "UPDATE bootstrap_tokens SET used_at = ?4 WHERE hash = ?1 AND agent = ?2 AND task = ?3 AND expires > ?4 AND used_at IS NULL",
            )?
            .execute(params![b.hash, b.agent, b.task, to_i64(c.now)?])?;
        if n != 1 {
            return Err(CaError::BootstrapToken(
                "unknown, already used, expired, or bound to another agent or task",
            ));
        }
    }
    // 4. The certificate itself.
    let r = c.record;
    conn.prepare_cached(INSERT_ISSUANCE)?.execute(params![
        r.serial,
        r.identity,
        r.kind.as_str(),
        r.agent,
        r.task,
        to_i64(r.not_before)?,
        to_i64(r.not_after)?,
        r.requester,
        r.jkt,
        to_i64(r.issued_at)?,
        r.grant_jti
    ])?;
    // 5. Its audit record: no record, no certificate.
    append_audit_tx(conn, writer, c.audit)?;
    Ok(())
}

/// Appends `ev` to `writer`'s chain inside the caller's write transaction (which serializes
/// appends: the head read here is still the head at commit), with the checkpoint the record
/// carries when its number is a multiple of [`crate::audit::CHECKPOINT_EVERY`].
pub(crate) fn append_audit_tx(
    conn: &Connection,
    writer: &ChainWriter,
    ev: &AuditEvent,
) -> Result<()> {
    let chain = writer;
    let writer = chain.id();
    let head: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT seq, hash FROM audit_records WHERE writer = ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![writer], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev) = match head {
        Some((s, h)) => (to_u64(s)?.saturating_add(1), h),
        None => (1, crate::audit::GENESIS.to_owned()),
    };
    let body = crate::audit::record_body(writer, seq, &prev, ev)?;
    let hash = crate::audit::record_hash(&body);
    conn.prepare_cached(
        "INSERT INTO audit_records (writer, seq, ts, body, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![writer, to_i64(seq)?, to_i64(ev.ts)?, body, hash])?;
    if let Some(cp) = chain.due(seq, &hash, ev.ts)? {
        insert_checkpoint(conn, &cp)?;
    }
    Ok(())
}

fn insert_checkpoint(conn: &Connection, cp: &CheckpointRecord) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO audit_checkpoints (writer, seq, head, iat, jws) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![cp.writer, to_i64(cp.seq)?, cp.head, to_i64(cp.iat)?, cp.jws])?;
    Ok(())
}

const INSERT_ISSUANCE: &str = "INSERT INTO issuances (serial, identity, kind, agent, task, not_before, not_after, requester, jkt, issued_at, grant_jti) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const ISSUANCE_COLS: &str = "serial, identity, kind, agent, task, not_before, not_after, requester, jkt, issued_at, grant_jti";

impl Store for SqliteStore {
    fn issuance_committer(&self) -> Option<Arc<dyn IssuanceCommitter>> {
        Some(self.writer.clone())
    }

    fn commit_issuance(&mut self, c: &IssuanceCommit<'_>) -> Result<()> {
        self.writer.commit_issuance(c)
    }

    fn identity(&self, identity: &str) -> Result<Option<IdentityRecord>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT identity, jkt, spki, agent, task, cap, key_bound_at FROM identities WHERE identity = ?1",
            )?
            .query_row(params![identity], |r| {
                Ok(IdentityRecord {
                    identity: r.get(0)?,
                    jkt: r.get(1)?,
                    spki: r.get(2)?,
                    agent: r.get(3)?,
                    task: r.get(4)?,
                    cap: to_u64(r.get(5)?)?,
                    key_bound_at: r.get::<_, Option<i64>>(6)?.map(to_u64).transpose()?,
                })
            })
            .optional()?)
    }

    fn key_owner(&self, jkt: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT identity FROM keys WHERE jkt = ?1")?
            .query_row(params![jkt], |r| r.get(0))
            .optional()?)
    }

    fn issuance(&self, serial: &str) -> Result<Option<IssuanceRecord>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {ISSUANCE_COLS} FROM issuances WHERE serial = ?1"
            ))?
            .query_row(params![serial], Self::row_issuance)
            .optional()?
            .map(Self::fix_kind)
            .transpose()
    }

    fn issuances(&self) -> Result<Vec<IssuanceRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ISSUANCE_COLS} FROM issuances ORDER BY rowid"
        ))?;
        let rows = st.query_map([], Self::row_issuance)?;
        rows.map(|r| Self::fix_kind(r?)).collect()
    }

    fn task(&self, task: &str) -> Result<Option<TaskRecord>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT task, holder, grant_jti, exp, created, principal, max_depth FROM tasks WHERE task = ?1",
            )?
            .query_row(params![task], row_task)
            .optional()?)
    }

    fn task_by_jti(&self, jti: &str) -> Result<Option<TaskRecord>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT task, holder, grant_jti, exp, created, principal, max_depth FROM tasks WHERE grant_jti = ?1",
            )?
            .query_row(params![jti], row_task)
            .optional()?)
    }

    fn first_issuance_of_key(&self, jkt: &str) -> Result<Option<IssuanceRecord>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {ISSUANCE_COLS} FROM issuances WHERE jkt = ?1 ORDER BY rowid LIMIT 1"
            ))?
            .query_row(params![jkt], Self::row_issuance)
            .optional()?
            .map(Self::fix_kind)
            .transpose()
    }

    fn key_first_issued_at(&self, jkt: &str) -> Result<Option<u64>> {
        // Bindings made before schema version 8 got the column from their issuances then.
        let v: Option<Option<i64>> = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(first_issued_at,
                   (SELECT MIN(issued_at) FROM issuances WHERE jkt = ?1)) FROM keys WHERE jkt = ?1",
            )?
            .query_row(params![jkt], |r| r.get(0))
            .optional()?;
        Ok(v.flatten().map(to_u64).transpose()?)
    }

    fn prune_audit(&mut self, prunes: &[AuditPrune]) -> Result<PruneCounts> {
        let tx = self.immediate()?;
        let mut counts = PruneCounts::default();
        for p in prunes {
            let (writer, seq) = (p.plan.writer.as_str(), to_i64(p.plan.seq)?);
            let base: Option<i64> = tx
                .prepare_cached("SELECT seq FROM audit_bases WHERE writer = ?1")?
                .query_row(params![writer], |r| r.get(0))
                .optional()?;
            prune_check(
                tx.prepare_cached("SELECT hash FROM audit_records WHERE writer = ?1 AND seq = ?2")?
                    .query_row(params![writer, seq], |r| r.get(0))
                    .optional()?,
                base,
                p,
            )?;
            // The certificates the records that go issued: this batch's, read here.
            let mut batch =
                crate::audit::PrunedBatch::new(&p.plan, base.map(to_u64).transpose()?.unwrap_or(0));
            {
                let mut st = tx.prepare_cached(
                    "SELECT seq, body, hash FROM audit_records
                     WHERE writer = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
                )?;
                let mut rows = st.query(params![writer, to_i64(batch.at())?, seq])?;
                while let Some(r) = rows.next()? {
                    let (body, hash): (String, String) = (r.get(1)?, r.get(2)?);
                    batch.record(to_u64(r.get(0)?)?, &body, &hash)?;
                }
            }
            let serials = batch.finish()?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO audit_bases (writer, seq, head, iat, jws)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                writer,
                seq,
                p.base.head,
                to_i64(p.base.iat)?,
                p.base.jws
            ])?;
            counts.chains += 1;
            counts.records += tx
                .prepare_cached("DELETE FROM audit_records WHERE writer = ?1 AND seq <= ?2")?
                .execute(params![writer, seq])? as u64;
            counts.checkpoints += tx
                .prepare_cached("DELETE FROM audit_checkpoints WHERE writer = ?1 AND seq < ?2")?
                .execute(params![writer, seq])? as u64;
            tx.prepare_cached("DELETE FROM audit_base_revocations WHERE writer = ?1")?
                .execute(params![writer])?;
            let mut keep = tx.prepare_cached(
                "INSERT INTO audit_base_revocations (writer, subject, exp) VALUES (?1, ?2, ?3)",
            )?;
            for (subject, exp) in &p.revocations {
                keep.execute(params![writer, subject, to_i64(*exp)?])?;
            }
            let mut del = tx.prepare_cached("DELETE FROM issuances WHERE serial = ?1")?;
            for serial in &serials {
                counts.issuances += del.execute(params![serial])? as u64;
            }
        }
        // Issuances up to the mark predate the chain: with every later row gone, the next
        // rowid would fall under it (SQLite takes one above the largest left), so the mark
        // comes down to the largest row left, which predates the chain as before.
        tx.execute(
            "UPDATE meta SET value = MIN(value, COALESCE((SELECT MAX(rowid) FROM issuances), 0))
             WHERE key = 'audit_issuances_from'",
            [],
        )?;
        tx.commit()?;
        Ok(counts)
    }

    fn latest_not_after(&self, jkt: &str) -> Result<Option<u64>> {
        let v: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(not_after) FROM issuances WHERE jkt = ?1")?
            .query_row(params![jkt], |r| r.get(0))?;
        Ok(v.map(to_u64).transpose()?)
    }

    fn latest_expiry(&self, kind: RevocationKind, value: &str) -> Result<Option<u64>> {
        latest_expiry_on(&self.conn, kind, value)
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
        read_revocations(&self.conn)
    }

    fn revoked_among(
        &self,
        targets: &[(RevocationKind, &str)],
        now: u64,
    ) -> Result<Option<(RevocationKind, String)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT exp FROM revocations WHERE kind = ?1 AND value = ?2")?;
        for (kind, value) in targets {
            let exp: Option<i64> = st
                .query_row(params![kind.as_str(), value], |r| r.get(0))
                .optional()?;
            if let Some(exp) = exp {
                if to_u64(exp)? > now {
                    return Ok(Some((*kind, (*value).to_owned())));
                }
            }
        }
        Ok(None)
    }

    fn live_revocations_of(
        &self,
        kinds: &[RevocationKind],
        now: u64,
    ) -> Result<Vec<(RevocationKind, String)>> {
        // One range of the primary key (kind, value) per kind.
        let mut st = self
            .conn
            .prepare_cached("SELECT value FROM revocations WHERE kind = ?1 AND exp > ?2")?;
        let mut out = Vec::new();
        for kind in kinds {
            let rows = st.query_map(params![kind.as_str(), to_i64(now)?], |r| r.get(0))?;
            for v in rows {
                out.push((*kind, v?));
            }
        }
        Ok(out)
    }

    fn add_bootstrap(
        &mut self,
        b: &BootstrapRecord,
        binding: Option<&str>,
        bound: Option<&TokenBound>,
        audit: &AuditEvent,
    ) -> Result<()> {
        let writer = self.audit_writer.clone();
        let tx = self.immediate()?;
        // In the insert's transaction (the write lock): two tokens of different agents naming
        // one task id at once cannot both be made.
        let taken: bool = tx
            .prepare_cached(TASK_ID_TAKEN_FOR_TOKEN)?
            .query_row(params![b.task, b.agent], |r| r.get(0))?;
        if taken {
            return Err(CaError::TaskIdTaken(b.task.clone()));
        }
        // Under the same lock: concurrent creations of one service cannot pass the bound.
        if let Some(bound) = bound {
            let held: i64 = tx.prepare_cached(OUTSTANDING_TOKENS)?.query_row(
                params![bound.creator, to_i64(bound.now)?, to_i64(bound.max)?],
                |r| r.get(0),
            )?;
            if u64::try_from(held).unwrap_or(u64::MAX) >= bound.max {
                return Err(CaError::TooManyTokens {
                    creator: bound.creator.clone(),
                    max: bound.max,
                });
            }
        }
        tx.prepare_cached(
            "INSERT INTO bootstrap_tokens (hash, agent, task, expires, binding, creator)
             VALUES (?1, ?2, ?3, ?4, ?5, json_extract(?5, '$.creator'))",
        )?
        .execute(params![
            b.hash,
            b.agent,
            b.task,
            to_i64(b.expires)?,
            binding
        ])?;
        append_audit_tx(&tx, &writer, audit)?;
        tx.commit()?;
        Ok(())
    }

    fn prune_bootstrap_tokens(&mut self, before: u64, limit: usize) -> Result<usize> {
        // A read first (an index seek, no write lock): the store's lock is held by this call,
        // and the usual pass, with nothing to forget, must not wait for SQLite's write lock
        // while another process holds it (the health check reads through this same lock).
        let any: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM bootstrap_tokens WHERE expires < ?1)")?
            .query_row(params![to_i64(before)?], |r| r.get(0))?;
        if !any {
            return Ok(0);
        }
        let tx = self.immediate()?;
        let n = tx.prepare_cached(PRUNE_TOKENS)?.execute(params![
            to_i64(before)?,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ])?;
        tx.commit()?;
        Ok(n)
    }

    fn bootstrap(&self, hash: &str) -> Result<Option<BootstrapRecord>> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash, agent, task, expires FROM bootstrap_tokens WHERE hash = ?1 AND used_at IS NULL")?.query_row(params![hash],
                |r| {
                    Ok(BootstrapRecord {
                        hash: r.get(0)?,
                        agent: r.get(1)?,
                        task: r.get(2)?,
                        expires: to_u64(r.get(3)?)?,
                    })
                },
            )
            .optional()?)
    }

    fn bootstrap_state(&self, hash: &str) -> Result<Option<crate::token::BootstrapState>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT hash, agent, task, expires, used_at, binding FROM bootstrap_tokens WHERE hash = ?1",
            )?
            .query_row(params![hash], |r| {
                let used: Option<i64> = r.get(4)?;
                Ok(crate::token::BootstrapState {
                    record: BootstrapRecord {
                        hash: r.get(0)?,
                        agent: r.get(1)?,
                        task: r.get(2)?,
                        expires: to_u64(r.get(3)?)?,
                    },
                    used_at: used.map(to_u64).transpose()?,
                    binding: r.get(5)?,
                })
            })
            .optional()?)
    }

    fn unredeemed_token_agent(&self, task: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(TOKEN_AGENT_BY_TASK)?
            .query_row(params![task], |r| r.get(0))
            .optional()?)
    }

    fn live_tasks_page(
        &self,
        agents: &[String],
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<LiveTask>> {
        use RevocationKind as K;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut agents: Vec<&str> = agents.iter().map(String::as_str).collect();
        agents.sort_unstable();
        agents.dedup();
        let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let budget = i64::try_from(tasks_scan_budget(limit, agents.len())).unwrap_or(i64::MAX);
        let after = after.unwrap_or("");
        let now = to_i64(now)?;
        let [kt, ka, kj, ki] = [K::Task, K::Agent, K::Jkt, K::Jti].map(K::as_str);
        let row = |r: &rusqlite::Row<'_>| {
            Ok(LiveTask {
                task: row_task(r)?,
                agent: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                jkt: r.get(8)?,
            })
        };
        // One read transaction: one snapshot for every statement of the page (a revocation
        // committed before it is seen with the tasks it hits).
        let tx = self.conn.unchecked_transaction()?;
        // The page so far, by task id (bytes, as SQLite's BINARY collation orders them); at
        // most `limit` entries.
        let mut page: std::collections::BTreeMap<String, LiveTask> =
            std::collections::BTreeMap::new();
        // Phase 1: the next tasks by id.
        let (scanned, edge): (i64, Option<String>) = tx
            .prepare_cached(NEXT_TASKS_EDGE)?
            .query_row(params![after, budget], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let Some(edge) = edge else {
            // No task after `after`.
            return Ok(Vec::new());
        };
        let listed =
            serde_json::to_string(&agents).map_err(|e| CaError::Store(format!("agents: {e}")))?;
        for live in tx.prepare_cached(NEXT_TASKS_SCAN)?.query_map(
            params![after, now, listed, kt, ka, kj, ki, sql_limit, edge],
            row,
        )? {
            let live = live?;
            page.insert(live.task.task.clone(), live);
        }
        if page.len() >= limit || scanned < budget {
            // A full page, or phase 1 read every task after `after`.
            return Ok(page.into_values().take(limit).collect());
        }
        // Phase 2: each agent's tasks after the last one phase 1 read.
        for agent in agents {
            let bound = if page.len() >= limit {
                page.last_key_value().map(|(k, _)| k.clone())
            } else {
                None
            };
            let mut st = tx.prepare_cached(if bound.is_some() {
                AGENT_TASKS_BELOW
            } else {
                AGENT_TASKS
            })?;
            let rows = match &bound {
                Some(b) => {
                    st.query_map(params![agent, edge, now, kt, ka, kj, ki, sql_limit, b], row)?
                }
                None => st.query_map(params![agent, edge, now, kt, ka, kj, ki, sql_limit], row)?,
            };
            for live in rows {
                let live = live?;
                page.insert(live.task.task.clone(), live);
            }
            while page.len() > limit {
                page.pop_last();
            }
        }
        Ok(page.into_values().collect())
    }

    fn append_audit(&mut self, ev: &AuditEvent) -> Result<()> {
        let writer = self.audit_writer.clone();
        let tx = self.immediate()?;
        append_audit_tx(&tx, &writer, ev)?;
        tx.commit()?;
        Ok(())
    }

    fn checkpoint_state(&self) -> Result<CheckpointState> {
        let w = self.audit_writer.id();
        let head = self
            .conn
            .prepare_cached(
                "SELECT seq, hash FROM audit_records WHERE writer = ?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![w], |r| Ok((to_u64(r.get(0)?)?, r.get(1)?)))
            .optional()?;
        let last = self
            .conn
            .prepare_cached(
                "SELECT seq, iat FROM audit_checkpoints WHERE writer = ?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![w], |r| Ok((to_u64(r.get(0)?)?, to_u64(r.get(1)?)?)))
            .optional()?;
        Ok(CheckpointState {
            writer: w.to_owned(),
            head,
            last,
        })
    }

    fn add_checkpoint(&mut self, cp: &CheckpointRecord) -> Result<()> {
        insert_checkpoint(&self.conn, cp)
    }

    fn set_checkpoint_signer(&mut self, signer: CheckpointSigner) {
        self.audit_writer.set_signer(signer);
    }

    fn audit_visit(&self, since: Option<u64>, visitor: &mut dyn AuditVisitor) -> Result<()> {
        audit_visit_on(&self.conn, since, true, visitor)
    }

    fn audit_has_signatures(&self) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM audit_checkpoints) OR EXISTS (SELECT 1 FROM audit_bases)")?
            .query_row([], |r| r.get(0))?)
    }

    fn publish_revocations(
        &mut self,
        now: u64,
        min_seq: u64,
        make: &mut dyn FnMut(u64, &[ListRow]) -> Result<Publication>,
    ) -> Result<PublishedList> {
        let writer = self.audit_writer.clone();
        // The write lock is taken before the counter moves and held while the entries are
        // read, the list signed and stored: no revocation commits in between, and two
        // publishers (other processes on this file) are serialized.
        let tx = self.immediate()?;
        let seq: i64 = tx
            .prepare_cached(
                "UPDATE meta SET value = MAX(value + 1, ?1) WHERE key = 'revocation_seq' RETURNING value",
            )?
            .query_row(params![to_i64(min_seq)?], |r| r.get(0))?;
        let epoch: i64 = tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'revocation_epoch'")?
            .query_row([], |r| r.get(0))?;
        let seq = to_u64(seq)?;
        let entries = read_list_rows(&tx, now)?;
        let p = make(seq, &entries)?;
        tx.prepare_cached(
            "INSERT INTO published_lists (seq, compact, published_at, next_update, revocation_epoch) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            to_i64(seq)?,
            p.compact,
            to_i64(p.published_at)?,
            to_i64(p.next_update)?,
            epoch
        ])?;
        // The latest PUBLISHED_LISTS_KEPT rows stay, whatever the gaps between their `seq`s.
        tx.prepare_cached(
            "DELETE FROM published_lists WHERE seq < (SELECT seq FROM published_lists ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
        )?
        .execute(params![to_i64(PUBLISHED_LISTS_KEPT.saturating_sub(1))?])?;
        append_audit_tx(&tx, &writer, &p.audit)?;
        tx.commit()?;
        Ok(PublishedList {
            seq,
            compact: p.compact,
            published_at: p.published_at,
            next_update: p.next_update,
            revocation_epoch: to_u64(epoch)?,
        })
    }

    fn latest_published(&self) -> Result<Option<PublishedList>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT seq, compact, published_at, next_update, revocation_epoch FROM published_lists ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([], |r| {
                Ok(PublishedList {
                    seq: to_u64(r.get(0)?)?,
                    compact: r.get(1)?,
                    published_at: to_u64(r.get(2)?)?,
                    next_update: to_u64(r.get(3)?)?,
                    revocation_epoch: to_u64(r.get(4)?)?,
                })
            })
            .optional()?)
    }

    fn latest_published_after(&self, after: Option<u64>) -> Result<Option<PublishedList>> {
        let after = match after {
            Some(a) => to_i64(a)?,
            None => -1,
        };
        Ok(self
            .conn
            .prepare_cached(
                "SELECT seq, compact, published_at, next_update, revocation_epoch FROM published_lists WHERE seq > ?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![after], |r| {
                Ok(PublishedList {
                    seq: to_u64(r.get(0)?)?,
                    compact: r.get(1)?,
                    published_at: to_u64(r.get(2)?)?,
                    next_update: to_u64(r.get(3)?)?,
                    revocation_epoch: to_u64(r.get(4)?)?,
                })
            })
            .optional()?)
    }

    fn revoke_principal(
        &mut self,
        p: &RevocationRecord,
        skew: u64,
        audit: &mut dyn FnMut(&[RevocationRecord]) -> Vec<AuditEvent>,
    ) -> Result<Vec<RevocationRecord>> {
        let writer = self.audit_writer.clone();
        let tx = self.immediate()?;
        let now = to_i64(p.revoked_at)?;
        // Verifiers accept a grant until `exp + skew`: a task is live until then.
        let since = to_i64(p.revoked_at.saturating_sub(skew))?;
        let tasks: Vec<(String, i64)> = tx
            .prepare_cached(
                "SELECT t.task, MAX(t.exp,
                   COALESCE((SELECT MAX(not_after) FROM issuances WHERE task = t.task), 0),
                   COALESCE((SELECT MAX(cap) FROM identities WHERE task = t.task), 0))
                 FROM tasks t WHERE t.principal = ?1 AND t.exp > ?2 ORDER BY t.rowid",
            )?
            .query_map(params![p.value, since], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(tasks.len());
        let insert = "INSERT INTO revocations (kind, value, exp, revoked_at, reason, requester) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (kind, value) DO UPDATE SET exp = MAX(exp, excluded.exp)";
        for (task, latest) in tasks {
            let rec = RevocationRecord {
                kind: RevocationKind::Task,
                value: task,
                exp: to_u64(latest.max(now))?.saturating_add(skew),
                revoked_at: p.revoked_at,
                reason: p.reason.clone(),
                requester: p.requester.clone(),
            };
            tx.prepare_cached(insert)?.execute(params![
                rec.kind.as_str(),
                rec.value,
                to_i64(rec.exp)?,
                now,
                rec.reason,
                rec.requester
            ])?;
            out.push(rec);
        }
        tx.prepare_cached(insert)?.execute(params![
            p.kind.as_str(),
            p.value,
            to_i64(p.exp)?,
            now,
            p.reason,
            p.requester
        ])?;
        bump_revocation_epoch(&tx)?;
        for ev in audit(&out) {
            append_audit_tx(&tx, &writer, &ev)?;
        }
        tx.commit()?;
        Ok(out)
    }

    fn revocation_epoch(&self) -> Result<u64> {
        let v: i64 = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'revocation_epoch'")?
            .query_row([], |r| r.get(0))?;
        Ok(to_u64(v)?)
    }
}

/// What a record row of SQLite sorts as in chain order ([`audit_visit_on`]): its writer and
/// seq as read ([`crate::audit::stored_text_of`], [`crate::audit::stored_number_of`]), then
/// where SQLite sorts its writer's type (NULL, a number, text, a blob).
type OddKey = (String, u64, u8);

/// [`Store::audit_visit`] on `conn` (SQLite), in one read transaction. `bases`: the store has
/// the tables of pruned chains (schema version 8 on; a read-only reader may read an older
/// store).
///
/// The records come in the order [`crate::audit::AuditSnapshot::visit`] sorts them: the rows
/// whose writer is text and seq a non-negative integer (every row the CA writes) by the
/// primary key's index, merged with the others (only an edit of the store makes them: a
/// negative seq or one of another type reads as `u64::MAX`, so it sorts last in its chain),
/// which are read first and held.
fn audit_visit_on(
    conn: &Connection,
    since: Option<u64>,
    bases: bool,
    visitor: &mut dyn AuditVisitor,
) -> Result<()> {
    use crate::audit::{stored_number_of, stored_text_of};
    // One read transaction: records, checkpoints and issuances are one state.
    let tx = conn.unchecked_transaction()?;
    let since = to_i64(since.unwrap_or(0))?;
    // A checkpoint or a base (the same columns).
    let signed_head = |r: &rusqlite::Row<'_>| {
        Ok(CheckpointRecord {
            writer: stored_text_of(r.get_ref(0)?),
            seq: stored_number_of(r.get_ref(1)?),
            head: stored_text_of(r.get_ref(2)?),
            iat: stored_number_of(r.get_ref(3)?),
            jws: stored_text_of(r.get_ref(4)?),
        })
    };
    let checkpoints = tx
        .prepare_cached(
            "SELECT writer, seq, head, iat, jws FROM audit_checkpoints ORDER BY writer, seq",
        )?
        .query_map([], signed_head)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let bases = if bases {
        tx.prepare_cached("SELECT writer, seq, head, iat, jws FROM audit_bases ORDER BY writer")?
            .query_map([], signed_head)?
            .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let base_revocations = if bases.is_empty() {
        Vec::new()
    } else {
        tx.prepare_cached(
            "SELECT writer, subject, exp FROM audit_base_revocations ORDER BY writer, subject",
        )?
        .query_map([], |r| {
            Ok((
                stored_text_of(r.get_ref(0)?),
                stored_text_of(r.get_ref(1)?),
                stored_number_of(r.get_ref(2)?),
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
    };
    // As the CA reads them (`audit::held_revocation`): a row it would not find, or finds
    // ended, is not held.
    let revocations = tx
        .prepare_cached("SELECT kind, value, exp FROM revocations ORDER BY rowid")?
        .query_map([], |r| {
            Ok(crate::audit::held_revocation(
                r.get_ref(0)?,
                r.get_ref(1)?,
                r.get_ref(2)?,
            ))
        })?
        .filter_map(core::result::Result::transpose)
        .collect::<rusqlite::Result<Vec<_>>>()?;
    visitor.head(AuditHead {
        checkpoints,
        bases,
        base_revocations,
        revocations,
    })?;
    const SERIALS: &str = "SELECT serial FROM issuances WHERE rowid > COALESCE(
           (SELECT value FROM meta WHERE key = 'audit_issuances_from'), 0) ORDER BY rowid";
    let serials = |each: &mut dyn FnMut(&str) -> Result<ControlFlow<()>>| -> Result<()> {
        let mut stmt = tx.prepare_cached(SERIALS)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let serial: String = row.get(0)?;
            if each(&serial)?.is_break() {
                break;
            }
        }
        Ok(())
    };
    if visitor.wants_serials() {
        serials(&mut |s| visitor.serial(s).map(|()| ControlFlow::Continue(())))?;
    }
    // Each writer's chain from its first record at or after `since` on, without gaps (a record
    // stamped before its predecessor, after a clock step, stays in).
    const CHAINS: &str = "SELECT a.writer, a.seq, a.ts, a.body, a.hash FROM audit_records a
           JOIN (SELECT writer, MIN(seq) AS first FROM audit_records WHERE ts >= ?1
                 GROUP BY writer) f ON a.writer = f.writer AND a.seq >= f.first";
    // Read whatever type each column holds (an edit can store any): a wrong one is a break
    // `verify` names, not a failure to read.
    let record_of = |r: &rusqlite::Row<'_>| -> rusqlite::Result<AuditRecord> {
        Ok(AuditRecord {
            writer: stored_text_of(r.get_ref(0)?),
            seq: stored_number_of(r.get_ref(1)?),
            ts: stored_number_of(r.get_ref(2)?),
            body: stored_text_of(r.get_ref(3)?),
            hash: stored_text_of(r.get_ref(4)?),
        })
    };
    let mut odd: Vec<(OddKey, AuditRecord)> = tx
        .prepare_cached(&format!(
            "{CHAINS} WHERE NOT (typeof(a.writer) = 'text' AND typeof(a.seq) = 'integer'
                                AND a.seq >= 0)
               ORDER BY a.writer, a.seq"
        ))?
        .query_map(params![since], |r| {
            let rank = match r.get_ref(0)? {
                rusqlite::types::ValueRef::Null => 0,
                rusqlite::types::ValueRef::Integer(_) | rusqlite::types::ValueRef::Real(_) => 1,
                rusqlite::types::ValueRef::Text(_) => 2,
                rusqlite::types::ValueRef::Blob(_) => 3,
            };
            let rec = record_of(r)?;
            Ok(((rec.writer.clone(), rec.seq, rank), rec))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Stable: rows of one key stay in SQLite's order.
    odd.sort_by(|a, b| a.0.cmp(&b.0));
    let mut odd = odd.into_iter().peekable();
    // The writers, each as stored (its bytes) and as read (lossy UTF-8, how chains sort).
    let mut writers: Vec<(String, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT DISTINCT writer FROM audit_records WHERE typeof(writer) = 'text'
               ORDER BY writer",
        )?
        .query_map([], |r| {
            Ok((
                stored_text_of(r.get_ref(0)?),
                r.get_ref(0)?
                    .as_bytes()
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    writers.sort();
    // Each writer's records by the primary key's index, a row at a time.
    let mut stmt = tx.prepare_cached(
        "SELECT writer, seq, ts, body, hash FROM audit_records
          WHERE writer = CAST(?1 AS TEXT) AND typeof(seq) = 'integer' AND seq >= 0
            AND seq >= (SELECT MIN(seq) FROM audit_records
                         WHERE writer = CAST(?1 AS TEXT) AND ts >= ?2)
          ORDER BY seq",
    )?;
    // Visits the odd rows that sort before `next` (all of them when `None`).
    let mut odd_before =
        |next: Option<&AuditRecord>, visitor: &mut dyn AuditVisitor| -> Result<ControlFlow<()>> {
            while let Some((key, _)) = odd.peek() {
                let before = next
                    .is_none_or(|n| (key.0.as_str(), key.1, key.2) < (n.writer.as_str(), n.seq, 2));
                if !before {
                    break;
                }
                if let Some((_, r)) = odd.next() {
                    if visitor.record(&r)?.is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
            }
            Ok(ControlFlow::Continue(()))
        };
    let mut ended = false;
    'writers: for (_, bytes) in writers {
        let mut rows = stmt.query(params![bytes, since])?;
        while let Some(row) = rows.next()? {
            let r = record_of(row)?;
            if odd_before(Some(&r), visitor)?.is_break() || visitor.record(&r)?.is_break() {
                ended = true;
                break 'writers;
            }
        }
    }
    if !ended {
        // The last odd rows: nothing follows them, whether the visitor goes on or not.
        let _ = odd_before(None, visitor)?;
    }
    drop(stmt);
    if visitor.serials_again() {
        serials(&mut |s| visitor.serial_again(s))?;
    }
    tx.commit()?;
    Ok(())
}

/// [`Store::prune_audit`]'s check of one prune inside its transaction, given the stored hash
/// of the chain's record `seq` and the chain's base: the record must still be the one planned
/// (the trail verified against the export holds it), and the base older (no other prune went
/// further meanwhile).
fn prune_check(stored: Option<String>, base: Option<i64>, p: &AuditPrune) -> Result<()> {
    if stored.as_deref() != Some(p.plan.head.as_str()) {
        return Err(CaError::Store(format!(
            "audit chain {:?}: record {} changed while the prune was planned; nothing was pruned",
            p.plan.writer, p.plan.seq
        )));
    }
    if base.is_some_and(|b| b >= to_i64(p.plan.seq).unwrap_or(i64::MAX)) {
        return Err(CaError::Store(format!(
            "audit chain {:?} was pruned further meanwhile; nothing was pruned",
            p.plan.writer
        )));
    }
    Ok(())
}

/// The audit snapshot of the SQLite database at `path`, read through a read-only connection:
/// no schema migration, no write (what `agentid audit verify` and `audit export` read may be
/// the store of a running CA of another version, or an evidence copy). A store from before the
/// audit chain (schema version below 2) has no records, and none of its issuances needs one.
pub fn read_audit_snapshot(path: &Path, since: Option<u64>) -> Result<AuditSnapshot> {
    let mut all = crate::audit::SnapshotCollector::default();
    read_audit_visit(path, since, &mut all)?;
    Ok(all.snap)
}

/// [`read_audit_snapshot`] streamed: [`Store::audit_visit`] on the SQLite database at `path`,
/// through a read-only connection.
pub fn read_audit_visit(
    path: &Path,
    since: Option<u64>,
    visitor: &mut dyn AuditVisitor,
) -> Result<()> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| CaError::Store(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let version = crate::migrate::schema_version(&conn)?;
    crate::migrate::check_not_newer(version)?;
    if version < 2 {
        // No records, no checkpoints: what an empty snapshot feeds.
        return AuditSnapshot::default().visit(visitor);
    }
    audit_visit_on(&conn, since, version >= 8, visitor)
}

fn latest_expiry_on(conn: &Connection, kind: RevocationKind, value: &str) -> Result<Option<u64>> {
    let (cert_sql, cap_sql) = match kind {
        RevocationKind::Agent => (
            "SELECT MAX(not_after) FROM issuances WHERE agent = ?1",
            "SELECT MAX(cap) FROM identities WHERE agent = ?1",
        ),
        RevocationKind::Task => (
            "SELECT MAX(not_after) FROM issuances WHERE task = ?1",
            "SELECT MAX(cap) FROM identities WHERE task = ?1",
        ),
        RevocationKind::Jkt => (
            "SELECT MAX(not_after) FROM issuances WHERE jkt = ?1",
            "SELECT MAX(i.cap) FROM identities i JOIN keys k ON k.identity = i.identity WHERE k.jkt = ?1",
        ),
        RevocationKind::Jti => (
            "SELECT MAX(exp) FROM tasks WHERE grant_jti = ?1",
            "SELECT MAX(exp) FROM tasks WHERE grant_jti = ?1",
        ),
        RevocationKind::Principal => (
            "SELECT MAX(exp) FROM tasks WHERE principal = ?1",
            "SELECT MAX(exp) FROM tasks WHERE principal = ?1",
        ),
        // Links are never recorded by the CA: nothing bounds them here.
        RevocationKind::LinkJti => return Ok(None),
    };
    let a: Option<i64> = conn
        .prepare_cached(cert_sql)?
        .query_row(params![value], |r| r.get(0))?;
    let b: Option<i64> = conn
        .prepare_cached(cap_sql)?
        .query_row(params![value], |r| r.get(0))?;
    let m = match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (x, None) | (None, x) => x,
    };
    m.map(|v| to_u64(v).map_err(CaError::from)).transpose()
}

/// Every revocation, in insertion order.
fn read_revocations(conn: &Connection) -> Result<Vec<RevocationRecord>> {
    let mut st = conn.prepare_cached(
        "SELECT kind, value, exp, revoked_at, reason, requester FROM revocations ORDER BY rowid",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            RevocationRecord {
                kind: RevocationKind::Jti,
                value: r.get(1)?,
                exp: to_u64(r.get(2)?)?,
                revoked_at: to_u64(r.get(3)?)?,
                reason: r.get(4)?,
                requester: r.get(5)?,
            },
        ))
    })?;
    rows.map(|row| {
        let (kind, mut rec) = row?;
        rec.kind = RevocationKind::parse(&kind)?;
        Ok(rec)
    })
    .collect()
}

/// The revocations a list published at `now` holds, in insertion order: three columns, and
/// only the rows whose `exp` is after `now` and whose kind is published.
fn read_list_rows(conn: &Connection, now: u64) -> Result<Vec<ListRow>> {
    let mut st = conn.prepare_cached(
        "SELECT rowid, kind, value, exp FROM revocations WHERE exp > ?1 AND kind <> 'principal' ORDER BY rowid",
    )?;
    let mut rows = st.query(params![to_i64(now)?])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(ListRow {
            id: r.get(0)?,
            kind: RevocationKind::parse(
                r.get_ref(1)?
                    .as_str()
                    .map_err(|e| CaError::Store(format!("revocation kind: {e}")))?,
            )?,
            value: r.get(2)?,
            exp: to_u64(r.get(3)?)?,
        });
    }
    Ok(out)
}

/// Most issuances committed in one transaction.
pub(crate) const MAX_GROUP_COMMIT: usize = 64;

/// An issuance as queued for the group commit.
struct OwnedCommit {
    record: IssuanceRecord,
    identity: IdentityRecord,
    binding: Binding,
    task: Option<TaskRecord>,
    chosen_task_id: bool,
    bootstrap: Option<BootstrapRecord>,
    refuse_if_revoked: Vec<(RevocationKind, String)>,
    audit: AuditEvent,
    now: u64,
}

impl OwnedCommit {
    fn new(c: &IssuanceCommit<'_>) -> Self {
        OwnedCommit {
            record: c.record.clone(),
            identity: c.identity.clone(),
            binding: c.binding,
            task: c.task.cloned(),
            chosen_task_id: c.chosen_task_id,
            bootstrap: c.bootstrap.cloned(),
            refuse_if_revoked: c.refuse_if_revoked.to_vec(),
            audit: c.audit.clone(),
            now: c.now,
        }
    }
    fn as_commit(&self) -> IssuanceCommit<'_> {
        IssuanceCommit {
            record: &self.record,
            identity: &self.identity,
            binding: self.binding,
            task: self.task.as_ref(),
            chosen_task_id: self.chosen_task_id,
            bootstrap: self.bootstrap.as_ref(),
            refuse_if_revoked: &self.refuse_if_revoked,
            audit: &self.audit,
            now: self.now,
        }
    }
}

struct Job {
    commit: OwnedCommit,
    reply: SyncSender<Result<()>>,
}

/// Group commit for the SQLite store, leader/follower style (no extra thread, so a lone issuer
/// pays no hand-off): a caller queues its issuance, then takes the writer connection; whoever
/// holds it takes every request pending (up to [`MAX_GROUP_COMMIT`], never waiting for more),
/// runs them in order in ONE `BEGIN IMMEDIATE` transaction, each in its own savepoint (so a
/// refused request is rolled back alone and the next one sees what the earlier ones wrote: two
/// requests racing for one key in the same batch get one binding and one `KeyInUse`), commits
/// with `synchronous=FULL` (one fsync for the batch), and only then answers each caller. A caller
/// whose request was committed by another one's batch returns that answer. A failed commit
/// fails every request of the batch.
pub(crate) struct GroupCommitter {
    pending: Mutex<Vec<Job>>,
    writer: Mutex<Connection>,
    audit_writer: ChainWriter,
}

impl core::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupCommitter").finish_non_exhaustive()
    }
}

impl GroupCommitter {
    fn start(conn: Connection, audit_writer: ChainWriter) -> Result<Self> {
        Ok(GroupCommitter {
            pending: Mutex::new(Vec::new()),
            writer: Mutex::new(conn),
            audit_writer,
        })
    }
}

impl IssuanceCommitter for GroupCommitter {
    fn commit_issuance(&self, c: &IssuanceCommit<'_>) -> Result<()> {
        let poisoned = || CaError::Store("store writer lock poisoned".into());
        let (reply, answer) = mpsc::sync_channel(1);
        self.pending.lock().map_err(|_| poisoned())?.push(Job {
            commit: OwnedCommit::new(c),
            reply,
        });
        loop {
            // Batches are taken only under the writer lock and answered before it is released,
            // so once we hold it our request is either answered or still pending.
            let conn = self.writer.lock().map_err(|_| poisoned())?;
            if let Ok(res) = answer.try_recv() {
                return res;
            }
            let batch: Vec<Job> = {
                let mut q = self.pending.lock().map_err(|_| poisoned())?;
                let n = q.len().min(MAX_GROUP_COMMIT);
                q.drain(..n).collect()
            };
            let results = run_batch(&conn, &self.audit_writer, &batch);
            for (job, res) in batch.into_iter().zip(results) {
                // A caller that went away no longer needs its answer.
                let _ = job.reply.send(res);
            }
            drop(conn);
            if let Ok(res) = answer.try_recv() {
                return res;
            }
        }
    }
}

/// Inside a write transaction (which holds SQLite's write lock, so the version cannot move
/// until it ends): refuses to write a database a newer agentid migrated after this process
/// opened it. This code does not know the newer schema's invariants (a column it would leave
/// NULL may mean "unlimited" there), so it stops writing instead of running half-compatible.
fn check_schema(conn: &Connection) -> Result<()> {
    crate::migrate::check_not_newer(crate::migrate::schema_version(conn)?)
}

/// Moves the revocation epoch past its value and past the time in milliseconds
/// ([`revocation_epoch_floor`]).
fn bump_revocation_epoch(conn: &Connection) -> Result<()> {
    conn.prepare_cached(
        "UPDATE meta SET value = MAX(value + 1, ?1) WHERE key = 'revocation_epoch'",
    )?
    .execute(params![revocation_epoch_floor()])?;
    Ok(())
}

fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// One transaction for the batch, one savepoint per request; per-request results, all errors
/// when the transaction itself fails (nothing of it is durable then).
fn run_batch(conn: &Connection, writer: &ChainWriter, batch: &[Job]) -> Vec<Result<()>> {
    let fail_all = |e: &dyn core::fmt::Display| -> Vec<Result<()>> {
        batch
            .iter()
            .map(|_| Err(CaError::Store(format!("issuance not committed: {e}"))))
            .collect()
    };
    if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
        return fail_all(&e);
    }
    if let Err(e) = check_schema(conn) {
        let _ = exec_cached(conn, "ROLLBACK");
        let msg = match e {
            CaError::Store(m) => m,
            e => e.to_string(),
        };
        return batch
            .iter()
            .map(|_| Err(CaError::Store(msg.clone())))
            .collect();
    }
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let step = exec_cached(conn, "SAVEPOINT issuance").map_err(CaError::from);
        let res = step.and_then(|()| apply_issuance(conn, writer, &job.commit.as_commit()));
        let undo = match &res {
            Ok(()) => exec_cached(conn, "RELEASE issuance"),
            Err(_) if conn.is_autocommit() => Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("transaction rolled back".into()),
            )),
            Err(_) => exec_cached(conn, "ROLLBACK TO issuance")
                .and_then(|()| exec_cached(conn, "RELEASE issuance")),
        };
        if let Err(e) = undo {
            if !conn.is_autocommit() {
                let _ = exec_cached(conn, "ROLLBACK");
            }
            return fail_all(&e);
        }
        results.push(res);
    }
    if let Err(e) = exec_cached(conn, "COMMIT") {
        if !conn.is_autocommit() {
            let _ = exec_cached(conn, "ROLLBACK");
        }
        return fail_all(&e);
    }
    results
}

fn row_task(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        task: r.get(0)?,
        holder: r.get(1)?,
        grant_jti: r.get(2)?,
        exp: to_u64(r.get(3)?)?,
        created: to_u64(r.get(4)?)?,
        principal: r.get(5)?,
        max_depth: r
            .get::<_, Option<i64>>(6)?
            .map(|v| u8::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(6, v)))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A principal's canonical form sorts object keys at every level by their bytes, keeps
    /// array order, and writes no whitespace; it is the same whatever order the keys were
    /// given in (under `serde_json`'s `preserve_order` too, where the map keeps that order), so
    /// two spellings of one principal are one store key.
    #[test]
    fn a_principal_is_canonical_whatever_its_key_order() {
        let given = r#"{"sub_id":{"iss":"https://idp.example","sub":"alice"},"format":"aliases","identifiers":[{"format":"email","email":"a@example.com"},{"format":"opaque","id":"\u00e9"}]}"#;
        let reordered = r#"{ "identifiers": [ {"email":"a@example.com","format":"email"}, {"id":"é","format":"opaque"} ], "format":"aliases", "sub_id":{"sub":"alice","iss":"https://idp.example"} }"#;
        let want = r#"{"format":"aliases","identifiers":[{"email":"a@example.com","format":"email"},{"format":"opaque","id":"é"}],"sub_id":{"iss":"https://idp.example","sub":"alice"}}"#;
        for text in [given, reordered] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(canonical_principal(&v).unwrap(), want);
        }
        // Keys sort by bytes: "B" (0x42) before "a" (0x61) before "é" (0xC3 0xA9).
        let v = serde_json::json!({"é": 1, "a": [true, null, 1.5], "B": "x\"y"});
        assert_eq!(
            canonical_principal(&v).unwrap(),
            r#"{"B":"x\"y","a":[true,null,1.5],"é":1}"#
        );
    }

    fn commit(n: usize, jkt: &str, binding: Binding) -> OwnedCommit {
        let task = format!("task{n}");
        let identity = format!("spiffe://example.org/agent/worker/task/{task}");
        OwnedCommit {
            record: IssuanceRecord {
                serial: format!("{n:032x}"),
                identity: identity.clone(),
                kind: IssuanceKind::Task,
                agent: Some("worker".into()),
                task: Some(task.clone()),
                not_before: 1,
                not_after: 100,
                requester: "operator".into(),
                jkt: jkt.into(),
                issued_at: 1,
                grant_jti: Some(format!("jti{n}")),
            },
            identity: IdentityRecord {
                identity: identity.clone(),
                jkt: jkt.into(),
                spki: vec![1, 2, 3],
                agent: Some("worker".into()),
                task: Some(task.clone()),
                cap: 100,
                key_bound_at: Some(1),
            },
            binding,
            task: Some(TaskRecord {
                task: task.clone(),
                holder: identity,
                grant_jti: format!("jti{n}"),
                exp: 100,
                created: 1,
                principal: None,
                max_depth: Some(1),
            }),
            chosen_task_id: false,
            bootstrap: None,
            refuse_if_revoked: vec![
                (RevocationKind::Agent, "worker".into()),
                (RevocationKind::Task, task),
                (RevocationKind::Jkt, jkt.into()),
            ],
            audit: AuditEvent {
                ts: 1,
                kind: "issue.task".into(),
                serial: Some(format!("{n:032x}")),
                outcome: "ok".into(),
                ..AuditEvent::default()
            },
            now: 1,
        }
    }

    fn batch(conn: &Connection, commits: Vec<OwnedCommit>) -> Vec<Result<()>> {
        let jobs: Vec<Job> = commits
            .into_iter()
            .map(|commit| Job {
                commit,
                reply: mpsc::sync_channel(1).0,
            })
            .collect();
        run_batch(conn, &ChainWriter::new("main"), &jobs)
    }

    /// Requests in one batch are checked in order against what the earlier ones wrote; a
    /// refused one is rolled back alone.
    #[test]
    fn one_batch_key_race_and_refusals_are_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.db");
        let store = SqliteStore::open(&path).unwrap();
        store
            .conn
            .execute(
                "INSERT INTO revocations (kind, value, exp, revoked_at, requester) VALUES ('task', 'task3', 100, 1, 'op')",
                [],
            )
            .unwrap();
        let writer = SqliteStore::connect(&path).unwrap();
        let res = batch(
            &writer,
            vec![
                commit(1, "key-a", Binding::Fresh),
                // Same key, another identity, same batch: refused.
                commit(2, "key-a", Binding::Fresh),
                // Revoked task: refused, after having nothing to undo.
                commit(3, "key-c", Binding::Fresh),
                // Same identity as request 1 again: refused (Fresh), after the earlier writes.
                commit(1, "key-a", Binding::Fresh),
                commit(4, "key-d", Binding::Fresh),
            ],
        );
        assert!(res[0].is_ok(), "{:?}", res[0]);
        assert!(
            matches!(&res[1], Err(CaError::KeyInUse { bound_to, .. }) if bound_to.ends_with("task1")),
            "{:?}",
            res[1]
        );
        assert!(
            matches!(&res[2], Err(CaError::Revoked { kind: "task", .. })),
            "{:?}",
            res[2]
        );
        assert!(
            matches!(&res[3], Err(CaError::IdentityExists(_))),
            "{:?}",
            res[3]
        );
        assert!(res[4].is_ok(), "{:?}", res[4]);
        let serials: Vec<String> = store
            .issuances()
            .unwrap()
            .into_iter()
            .map(|r| r.serial)
            .collect();
        assert_eq!(serials, vec![format!("{:032x}", 1), format!("{:032x}", 4)]);
        assert!(
            store.task("task2").unwrap().is_none(),
            "refused request left a task"
        );
        assert!(store
            .identity("spiffe://example.org/agent/worker/task/task2")
            .unwrap()
            .is_none());
        assert!(store.key_owner("key-c").unwrap().is_none());
        assert_eq!(
            store.key_owner("key-a").unwrap().as_deref(),
            Some("spiffe://example.org/agent/worker/task/task1")
        );
    }

    /// Writes `inv`'s rows into the store's tables as the CA writes them: each task with its
    /// root holder's identity (agent and task), child identities holding no task, revocations.
    fn load(store: &SqliteStore, inv: &agentid_test_support::inventory::Inventory) {
        let tx = store.conn.unchecked_transaction().unwrap();
        for t in &inv.tasks {
            tx.prepare_cached(
                "INSERT INTO identities (identity, jkt, spki, agent, task, cap) VALUES (?1, ?2, x'00', ?3, ?4, ?5)",
            )
            .unwrap()
            .execute(params![t.holder, t.jkt, t.agent, t.task, to_i64(t.exp).unwrap()])
            .unwrap();
            tx.prepare_cached(
                "INSERT INTO tasks (task, holder, grant_jti, exp, created) VALUES (?1, ?2, ?3, ?4, 1)",
            )
            .unwrap()
            .execute(params![t.task, t.holder, t.grant_jti, to_i64(t.exp).unwrap()])
            .unwrap();
        }
        for c in &inv.children {
            tx.prepare_cached(
                "INSERT INTO identities (identity, jkt, spki, agent, task, cap) VALUES (?1, ?2, x'00', ?3, ?4, 1)",
            )
            .unwrap()
            .execute(params![c.identity, c.jkt, c.agent, c.task])
            .unwrap();
        }
        for (kind, value, exp) in &inv.revocations {
            tx.prepare_cached(
                "INSERT INTO revocations (kind, value, exp, revoked_at, requester) VALUES (?1, ?2, ?3, 1, 'operator')",
            )
            .unwrap()
            .execute(params![kind, value, to_i64(*exp).unwrap()])
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn page_rows(
        store: &SqliteStore,
        agents: &[String],
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Vec<(String, String, String, String, u64)> {
        store
            .live_tasks_page(agents, after, limit, now)
            .unwrap()
            .into_iter()
            .map(|l| (l.task.task, l.task.holder, l.agent, l.jkt, l.task.exp))
            .collect()
    }

    /// CA-API.md 3.11 on a domain of many agents of which the caller may list a few (one of
    /// them revoked, one revoked by a lapsed entry, one with no tasks, one listed twice): every
    /// page is the next `limit` live tasks of those agents by task id, whatever `after` names
    /// (a listed task, another agent's task, an id no task has), and never a task of an agent
    /// the caller may not list (children of a listed agent in others' tasks included).
    #[test]
    fn a_tasks_page_is_the_next_live_tasks_of_the_listed_agents_by_task_id() {
        use agentid_test_support::inventory::Inventory;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
        let now = 1_000_000;
        let inv = Inventory::generate("a", 60, 40, now, 0);
        load(&store, &inv);
        let few: Vec<String> = [1, 2, 3, 7, 59, 7]
            .iter()
            .map(|i| Inventory::agent("a", *i))
            .chain(["nobody".to_owned()])
            .collect();
        // And every agent (a platform service): the page is found among the next tasks.
        let every: Vec<String> = (0..60).map(|i| Inventory::agent("a", i)).collect();
        for (listed, limits) in [(few, [1, 7, 1000]), (every, [29, 97, 1000])] {
            pages_are_the_spec_answer(&store, &inv, &listed, &limits, now);
        }
        assert!(page_rows(&store, &["nobody".to_owned()], None, 10, now).is_empty());
    }

    fn pages_are_the_spec_answer(
        store: &SqliteStore,
        inv: &agentid_test_support::inventory::Inventory,
        listed: &[String],
        limits: &[usize],
        now: u64,
    ) {
        let all = inv.expected(listed, None, now);
        assert!(all.len() > 50, "{}", all.len());
        for &limit in limits {
            let mut after: Option<String> = None;
            let mut seen = Vec::new();
            loop {
                let page = page_rows(store, listed, after.as_deref(), limit, now);
                let want = inv.expected(listed, after.as_deref(), now);
                assert_eq!(page, want[..want.len().min(limit)], "after {after:?}");
                seen.extend(page.iter().cloned());
                match page.last() {
                    Some(last) if page.len() == limit => after = Some(last.0.clone()),
                    _ => break,
                }
            }
            assert_eq!(seen, all, "limit {limit}");
        }
        // Another agent's task id (when there is one), one in the middle, ids no task has.
        let unlisted = inv
            .tasks
            .iter()
            .find(|t| !listed.contains(&t.agent))
            .map_or("t", |t| t.task.as_str());
        let middle = inv.tasks[inv.tasks.len() / 2].task.as_str();
        for after in ["", "t", "t8", unlisted, middle, "u", "zzzz"] {
            let want = inv.expected(listed, Some(after), now);
            assert_eq!(
                page_rows(store, listed, Some(after), 9, now),
                want[..want.len().min(9)],
                "{after}"
            );
        }
        assert!(page_rows(store, listed, None, 0, now).is_empty());
    }

    /// A page's work is bounded by the page and the tasks of the agents the caller may list,
    /// not by the table: a trust domain with as many more tasks again, of agents the caller may
    /// not list, costs the page no more work (SQLite's virtual machine steps, counted on the
    /// store's connection; the lock every issuance needs is held for that work).
    #[test]
    fn a_tasks_page_does_no_more_work_when_agents_it_does_not_list_have_more_tasks() {
        use agentid_test_support::inventory::Inventory;
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
        let now = 1_000_000;
        let inv = Inventory::generate("a", 200, 100, now, 0);
        load(&store, &inv);
        let listed: Vec<String> = [1, 5, 9]
            .iter()
            .map(|i| Inventory::agent("a", *i))
            .collect();
        let steps = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&steps);
        store.conn.progress_handler(
            16,
            Some(move || {
                counter.fetch_add(16, Ordering::Relaxed);
                false
            }),
        );
        let measure = |after: Option<&str>| {
            steps.store(0, Ordering::Relaxed);
            let rows = page_rows(&store, &listed, after, 1001, now);
            (rows, steps.load(Ordering::Relaxed))
        };
        let (first, before) = measure(None);
        assert_eq!(first, inv.expected(&listed, None, now));
        let mid = first[first.len() / 2].0.clone();
        let (second, before_mid) = measure(Some(&mid));
        assert_eq!(second, inv.expected(&listed, Some(&mid), now));
        // As many tasks again, of 200 agents the caller may not list.
        load(&store, &Inventory::generate("b", 200, 100, now, 1));
        let (again, after) = measure(None);
        assert_eq!(again, first);
        let (again_mid, after_mid) = measure(Some(&mid));
        assert_eq!(again_mid, second);
        println!("steps: {before} -> {after}; after {mid}: {before_mid} -> {after_mid}");
        // Each agent's statement seeks its identities by (agent, task) in task id order and
        // each task by its key: no table scan, no sort of all the agent's tasks.
        let plan_of = |sql: &str| -> String {
            let plan = query_plan(&store.conn, sql);
            // No table is scanned (the listed agents' JSON array and subqueries may be), no
            // result sorted.
            for line in &plan {
                if let Some(what) = line.strip_prefix("SCAN ") {
                    assert!(
                        what.starts_with("json_each") || what.starts_with("(subquery"),
                        "{line} in {plan:#?}"
                    );
                }
                assert!(!line.contains("TEMP B-TREE"), "{line} in {plan:#?}");
            }
            plan.join("\n")
        };
        // Phase 1 reads the next tasks by their key, up to the edge, and stops at the page.
        let edge = plan_of(NEXT_TASKS_EDGE);
        assert!(
            edge.contains("USING COVERING INDEX sqlite_autoindex_tasks_1 (task>?)"),
            "{edge}"
        );
        let scan = plan_of(NEXT_TASKS_SCAN);
        assert!(
            scan.contains("SEARCH t USING INDEX sqlite_autoindex_tasks_1 (task>? AND task<?)"),
            "{scan}"
        );
        // Phase 2 seeks each agent's identities by (agent, task) and each task by its key.
        for sql in [AGENT_TASKS, AGENT_TASKS_BELOW] {
            let plan = plan_of(sql);
            assert!(
                plan.contains("SEARCH i USING INDEX identities_agent_task (agent=? AND task>?")
                    && plan.contains("SEARCH t USING INDEX sqlite_autoindex_tasks_1 (task=?)"),
                "{plan}"
            );
        }
        assert!(
            after <= before + before / 10 && after_mid <= before_mid + before_mid / 10,
            "a page's work grew with the tasks of agents it does not list: {before} -> {after} \
             steps, from the middle {before_mid} -> {after_mid}"
        );
    }

    /// SQLite's plan for `sql` (its parameters bound to NULL), a line per step.
    fn query_plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Null; st.parameter_count()];
        st.query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// The unredeemed tokens naming a task id are found through their index, not by reading
    /// every token ever made (under the store's lock: revoking a task not opened yet, opening a
    /// task under a chosen id).
    #[test]
    fn tokens_by_task_id_are_an_index_seek() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
        for sql in [
            TOKEN_OF_ANOTHER_AGENT,
            TOKEN_AGENT_BY_TASK,
            TASK_ID_TAKEN_FOR_TOKEN,
        ] {
            let plan = query_plan(&store.conn, sql);
            assert!(
                plan.iter()
                    .any(|l| l.contains("USING INDEX bootstrap_tokens_task (task=?)")),
                "{sql}: {plan:#?}"
            );
            assert!(
                !plan.iter().any(|l| l.starts_with("SCAN bootstrap_tokens")),
                "{sql}: {plan:#?}"
            );
        }
    }

    /// A service's outstanding tokens are counted in its own range of an index, and tokens
    /// past their retention are found by expiry: neither reads every token ever made (both
    /// run under the store's write lock).
    #[test]
    fn outstanding_and_pruned_tokens_are_index_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
        for (sql, index) in [
            (
                OUTSTANDING_TOKENS,
                "INDEX bootstrap_tokens_creator (creator=? AND expires>?)",
            ),
            (PRUNE_TOKENS, "INDEX bootstrap_tokens_expires (expires<?)"),
        ] {
            let plan = query_plan(&store.conn, sql);
            assert!(plan.iter().any(|l| l.contains(index)), "{sql}: {plan:#?}");
            assert!(
                !plan.iter().any(|l| l.starts_with("SCAN bootstrap_tokens")),
                "{sql}: {plan:#?}"
            );
        }
    }

    /// The store's own `commit_issuance` goes through the writer and is visible at once.
    #[test]
    fn commit_through_writer_is_visible_to_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
        let c = commit(7, "key-7", Binding::Fresh);
        store.commit_issuance(&c.as_commit()).unwrap();
        assert!(store.issuance(&format!("{:032x}", 7)).unwrap().is_some());
        let again = store.commit_issuance(&commit(8, "key-7", Binding::Fresh).as_commit());
        assert!(matches!(again, Err(CaError::KeyInUse { .. })), "{again:?}");
    }
}
