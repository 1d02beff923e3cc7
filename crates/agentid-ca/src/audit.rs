//! The audit chain: every issuance, revocation, token creation, list publication and audited
//! refusal is a record in the CA's store, written in the same transaction as the change it
//! records (no record, no certificate).
//!
//! * **One hash chain per writer.** Each record carries its writer (a CA replica), its sequence
//!   number in that writer's chain (1, 2, 3, ...) and the hash of the writer's previous record
//!   ([`GENESIS`] for the first). Its own hash is SHA-256 over a domain-separation label and the
//!   record's exact stored JSON ([`record_hash`]). Replicas never wait on each other's chain head.
//! * **Signed checkpoints.** With a writer's record 1 and every [`CHECKPOINT_EVERY`]-th
//!   record ([`checkpoint_required`]), in that record's transaction, and when the head has
//!   moved and the last checkpoint is older than [`CHECKPOINT_INTERVAL_SECS`], the CA signs
//!   the chain head (writer, sequence, hash) with its dedicated audit key (`audit.key`,
//!   public half `audit.pub`): a JWS of type [`CHECKPOINT_TYP`]. [`verify`] requires the one
//!   at record 1 and at every multiple of [`CHECKPOINT_EVERY`], so whoever can write the
//!   database but does not hold the audit key can neither make up a writer's chain, nor
//!   rewrite a chain up to a checkpoint, nor delete the checkpoint first without [`verify`]
//!   noticing. The records after a writer's last checkpoint are not protected against them
//!   (CA-API.md 4.3 says what finds that).
//! * [`verify`] recomputes every chain and checks every checkpoint's signature and head, that
//!   every certificate the store records as issued has its audit record, that every `ok`
//!   issuance record names such a certificate, and that every `ok` revocation record names a
//!   revocation the store still holds.
//! * **Retention.** [`plan_prune`] finds each writer's records past their retention (and
//!   the certificates and tasks they recorded ended as long ago), up to a checkpointed record
//!   before the head; the CA deletes them once an export holds them
//!   ([`crate::CertificateAuthority::prune_audit`]) and signs a base ([`BASE_TYP`]) where the
//!   chain now starts, which [`verify`] requires: deleting a chain's first records without the
//!   audit key is still a break.
//!
//! Refusals before a valid token or identity is known are not written here (they go to `tracing`
//! only), so unauthenticated traffic cannot fill the chain. Records never hold keys, tokens, CSRs
//! or certificates. Every record is mirrored as a `tracing` event (target `agentid::audit`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;

use agentid_protocol::{Algorithm, PublicKey};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{CaError, Result};
use crate::util;

mod export_file;

pub use export_file::ExportFile;

/// The `prev` of a writer's first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The JWS `typ` of a signed checkpoint.
pub const CHECKPOINT_TYP: &str = "agentid-audit-checkpoint+jwt";

/// The JWS `typ` of a signed base: a writer's records up to it were exported and pruned
/// ([`plan_prune`], CA-API.md 4.5).
pub const BASE_TYP: &str = "agentid-audit-base+jwt";

/// The shortest retention [`plan_prune`] takes, seconds: a record is kept at least this long
/// after what it records ended (a day: the longest grant, and every revocation entry the CA
/// does not bound by a certificate, lives that long).
pub const MIN_RETENTION_SECS: u64 = 86_400;

/// A checkpoint is signed with every record whose number is a multiple of this.
pub const CHECKPOINT_EVERY: u64 = 64;

/// A chain head that moved is checkpointed once the last checkpoint is this old, seconds.
pub const CHECKPOINT_INTERVAL_SECS: u64 = 60;

/// The writer id of a store unless configured otherwise.
pub const DEFAULT_WRITER: &str = "main";

/// Domain separation of record hashes.
const RECORD_HASH_LABEL: &[u8] = b"agentid-audit-record-v1\n";

/// One audit event: what happened, as the store's audit record carries it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unix seconds.
    pub ts: u64,
    /// `issue.task`, `issue.child`, `issue.service`, `issue.renewal`, `revoke`,
    /// `revocations.publish`, `bootstrap.create`, `request.refused`.
    pub kind: String,
    /// Who asked.
    pub actor: String,
    /// The identity concerned.
    pub subject: Option<String>,
    /// The task id.
    pub task: Option<String>,
    /// Certificate serial.
    pub serial: Option<String>,
    /// Grant `jti`.
    pub jti: Option<String>,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    /// Why it was denied, or what was revoked or published.
    pub reason: Option<String>,
    /// For an `ok` revocation (a principal's too), the entry's `exp` as stored when it
    /// committed (an entry's `exp` only rises); absent from every other record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// For a principal's revocation, the `task` entries it expanded to, each as `["task:T",
    /// exp]` with the `exp` stored when it committed (a long expansion is recorded in several
    /// records, [`EXPANDED_PER_RECORD`] each); absent from every other record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expanded: Option<Vec<(String, u64)>>,
}

/// The most `task` entries one record of a principal's revocation lists
/// ([`AuditEvent::expanded`]): a principal with more tasks is recorded in several records.
pub const EXPANDED_PER_RECORD: usize = 512;

/// A record's stored JSON: the chain fields, then the event.
// No `deny_unknown_fields` here: serde does not support it with `flatten`. The hash covers the
// exact stored text, whatever it holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordBody {
    /// The writer whose chain holds the record.
    pub writer: String,
    /// Its number in that chain, from 1.
    pub seq: u64,
    /// The hash of the writer's previous record ([`GENESIS`] for the first).
    pub prev: String,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// One audit record as stored: `body` is the exact JSON whose hash is `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// The writer column.
    pub writer: String,
    /// The sequence column.
    pub seq: u64,
    /// The `ts` column (indexed, for `--since`).
    pub ts: u64,
    /// The record's JSON ([`RecordBody`]).
    pub body: String,
    /// Hex SHA-256 of the record ([`record_hash`]).
    pub hash: String,
}

/// Signs the checkpoints a store writes together with the records they sign (one with record
/// 1 and every [`CHECKPOINT_EVERY`]-th record of a writer, in its transaction): the CA's audit
/// key and its trust domain.
#[derive(Clone)]
pub struct CheckpointSigner {
    iss: String,
    signer: std::sync::Arc<dyn agentid_protocol::JwsSigner>,
}

impl core::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("iss", &self.iss)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// Checkpoints of trust domain `iss` (`spiffe://<td>`) signed with `signer`.
    pub fn new(iss: String, signer: std::sync::Arc<dyn agentid_protocol::JwsSigner>) -> Self {
        Self { iss, signer }
    }

    /// The checkpoint of `writer`'s record `seq`, whose hash is `head`, signed at `iat`.
    pub fn checkpoint(
        &self,
        writer: &str,
        seq: u64,
        head: &str,
        iat: u64,
    ) -> Result<CheckpointRecord> {
        self.sign(CHECKPOINT_TYP, writer, (seq, head), iat, None)
    }

    /// The base of `writer`'s chain once its records up to `seq` (whose hash is `head`) are
    /// pruned, signed at `iat` ([`BASE_TYP`]), with the [`base_revocations_digest`] of the
    /// revocations made by every record pruned so far.
    pub fn base(
        &self,
        writer: &str,
        (seq, head): (u64, &str),
        iat: u64,
        revoked: &str,
    ) -> Result<CheckpointRecord> {
        self.sign(BASE_TYP, writer, (seq, head), iat, Some(revoked))
    }

    fn sign(
        &self,
        typ: &str,
        writer: &str,
        (seq, head): (u64, &str),
        iat: u64,
        revoked: Option<&str>,
    ) -> Result<CheckpointRecord> {
        let claims = CheckpointClaims {
            iss: self.iss.clone(),
            writer: writer.to_owned(),
            seq,
            head: head.to_owned(),
            iat,
            revoked: revoked.map(str::to_owned),
        };
        Ok(CheckpointRecord {
            jws: sign_claims(self.signer.as_ref(), typ, &claims)?,
            writer: claims.writer,
            seq,
            head: claims.head,
            iat,
        })
    }
}

/// A writer's chain as a store appends to it: the writer id and, once the CA has given it, the
/// signer of the checkpoint that record 1 and every [`CHECKPOINT_EVERY`]-th record carry. That
/// checkpoint is written in the record's own transaction, so a chain the CA wrote has one at
/// record 1 and every multiple of [`CHECKPOINT_EVERY`], and [`verify`] can require them:
/// deleting one (no key needed) is a break, not a way to rewrite the records it covered.
#[derive(Clone, Debug)]
pub(crate) struct ChainWriter {
    id: std::sync::Arc<str>,
    checkpoints: std::sync::Arc<std::sync::OnceLock<CheckpointSigner>>,
}

impl ChainWriter {
    pub(crate) fn new(id: &str) -> Self {
        Self {
            id: std::sync::Arc::from(id),
            checkpoints: std::sync::Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The writer id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Gives the chain its checkpoint signer (the first one given stays).
    pub(crate) fn set_signer(&self, signer: CheckpointSigner) {
        let _ = self.checkpoints.set(signer);
    }

    /// The checkpoint to write with record `seq` (hash `hash`, time `ts`): one with record 1
    /// and at every multiple of [`CHECKPOINT_EVERY`] ([`checkpoint_required`]), once the
    /// chain has a signer.
    pub(crate) fn due(&self, seq: u64, hash: &str, ts: u64) -> Result<Option<CheckpointRecord>> {
        if !checkpoint_required(seq) {
            return Ok(None);
        }
        self.checkpoints
            .get()
            .map(|s| s.checkpoint(&self.id, seq, hash, ts))
            .transpose()
    }
}

/// Whether the CA signs a checkpoint in the same transaction as a writer's record `seq`:
/// record 1 (so that a writer's chain nobody with the audit key started, made up in the
/// database, does not verify) and every multiple of [`CHECKPOINT_EVERY`] (so that rewriting
/// what one covered needs the audit key). [`verify`] requires each of them.
pub fn checkpoint_required(seq: u64) -> bool {
    seq == 1 || (seq != 0 && seq.is_multiple_of(CHECKPOINT_EVERY))
}

/// A stored number column of an audit record or checkpoint (`seq`, `ts`, `iat`) as read for
/// verification: a value no `u64` holds (a negative one, which only an edit of the store
/// makes) reads as `u64::MAX`, so that [`verify`] names the record or checkpoint it breaks
/// instead of the snapshot failing to read.
pub(crate) fn stored_number(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// A number column as SQLite stored it, whatever its type (SQLite keeps any type in any
/// column): an integer as [`stored_number`] reads it, anything else (text, a real, a blob,
/// NULL: only an edit of the store makes them) as `u64::MAX`, which [`verify`] names.
pub(crate) fn stored_number_of(v: rusqlite::types::ValueRef<'_>) -> u64 {
    match v {
        rusqlite::types::ValueRef::Integer(i) => stored_number(i),
        _ => u64::MAX,
    }
}

/// A text column as SQLite stored it, whatever its type: text or a blob as its bytes (lossy
/// UTF-8: bytes that are not UTF-8 change, and the record's hash no longer matches), anything
/// else (a number, NULL: only an edit of the store makes them) as the empty string, which
/// [`verify`] names as a record that does not match its hash.
pub(crate) fn stored_text_of(v: rusqlite::types::ValueRef<'_>) -> String {
    match v {
        rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        _ => String::new(),
    }
}

/// A row of the store's revocations as verification holds an `ok` `revoke` record to it
/// ([`AuditSnapshot::revocations`]): `kind:value` and its `exp`, read as the CA reads the row,
/// which looks a revocation up by its `kind` and `value` (text) and holds it in force while its
/// `exp` is ahead. So a row whose `kind` or `value` is not UTF-8 text (only an edit of the
/// store makes one), or whose `kind` holds a `:` (no kind does: `kind:value` would read the
/// same as another kind's, e.g. `principal:{"email"` and the rest of a principal's value), is
/// no revocation the CA finds, and is left out; an `exp` no `u64` holds (negative, or not an
/// integer) is one the CA takes as ended, and reads as 0 (not as `u64::MAX`, "never ends",
/// which would hold the entry in force while the CA and the lists no longer do).
pub(crate) fn held_revocation<'a>(
    kind: rusqlite::types::ValueRef<'a>,
    value: rusqlite::types::ValueRef<'a>,
    exp: rusqlite::types::ValueRef<'a>,
) -> Option<(String, u64)> {
    fn text(v: rusqlite::types::ValueRef<'_>) -> Option<&str> {
        match v {
            rusqlite::types::ValueRef::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    let exp = match exp {
        rusqlite::types::ValueRef::Integer(i) => held_exp(i),
        _ => 0,
    };
    held_revocation_of(text(kind)?, text(value)?, exp)
}

/// A revocation's stored `exp` as [`held_revocation`] reads it: one no `u64` holds as 0.
pub(crate) fn held_exp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// [`held_revocation`] of a row read as text: `None` for a `kind` holding a `:`.
pub(crate) fn held_revocation_of(kind: &str, value: &str, exp: u64) -> Option<(String, u64)> {
    (!kind.contains(':')).then(|| (format!("{kind}:{value}"), exp))
}

/// A signed checkpoint as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// The writer column.
    pub writer: String,
    /// The sequence column: the number of the chain's head record it signs.
    pub seq: u64,
    /// The head record's hash.
    pub head: String,
    /// When it was signed, Unix seconds.
    pub iat: u64,
    /// The compact JWS ([`CHECKPOINT_TYP`]) over [`CheckpointClaims`].
    pub jws: String,
}

/// What a checkpoint signs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointClaims {
    /// The trust domain's SPIFFE ID (`spiffe://<td>`).
    pub iss: String,
    /// The writer.
    pub writer: String,
    /// The head's sequence number (= the number of records in the chain).
    pub seq: u64,
    /// The head's hash.
    pub head: String,
    /// When it was signed, Unix seconds.
    pub iat: u64,
    /// A base's only ([`BASE_TYP`]; absent from checkpoints): the
    /// [`base_revocations_digest`] of the revocations its pruned records made, which the store
    /// keeps beside it and [`verify`] holds to the store's revocations as it holds records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

/// Domain separation of [`base_revocations_digest`].
const BASE_REVOCATIONS_LABEL: &[u8] = b"agentid-audit-base-revocations-v1\n";

/// The digest a base signs of the revocations its writer's pruned `ok` `revoke` records made:
/// hex SHA-256 of a label and the JSON array of `[subject, exp]` pairs sorted by subject (`exp`
/// the highest any of those records carried, 0 for none).
pub fn base_revocations_digest(revocations: &[(String, u64)]) -> String {
    let mut sorted: Vec<&(String, u64)> = revocations.iter().collect();
    sorted.sort();
    let mut input = BASE_REVOCATIONS_LABEL.to_vec();
    // A Vec of (String, u64) always serializes.
    let json = serde_json::to_vec(&sorted).unwrap_or_default();
    input.extend_from_slice(&json);
    util::hex(&util::sha256(&input))
}

/// The JSON stored for a record.
pub fn record_body(writer: &str, seq: u64, prev: &str, event: &AuditEvent) -> Result<String> {
    serde_json::to_string(&RecordBody {
        writer: writer.to_owned(),
        seq,
        prev: prev.to_owned(),
        event: event.clone(),
    })
    .map_err(|e| CaError::Store(format!("audit record: {e}")))
}

/// Hex SHA-256 of `"agentid-audit-record-v1\n" || body`.
pub fn record_hash(body: &str) -> String {
    let mut input = Vec::with_capacity(RECORD_HASH_LABEL.len() + body.len());
    input.extend_from_slice(RECORD_HASH_LABEL);
    input.extend_from_slice(body.as_bytes());
    util::hex(&util::sha256(&input))
}

/// Signs a checkpoint over `claims` with the audit key.
pub fn sign_checkpoint(
    signer: &dyn agentid_protocol::JwsSigner,
    claims: &CheckpointClaims,
) -> Result<String> {
    sign_claims(signer, CHECKPOINT_TYP, claims)
}

/// Signs `claims` as a JWS of type `typ` ([`CHECKPOINT_TYP`] or [`BASE_TYP`]) with the audit
/// key.
fn sign_claims(
    signer: &dyn agentid_protocol::JwsSigner,
    typ: &str,
    claims: &CheckpointClaims,
) -> Result<String> {
    let header = serde_json::json!({"alg": signer.algorithm().as_str(), "typ": typ});
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let payload =
        serde_json::to_vec(claims).map_err(|e| CaError::Store(format!("checkpoint: {e}")))?;
    let input = format!("{}.{}", enc(header.to_string().as_bytes()), enc(&payload));
    let sig = signer.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", enc(&sig)))
}

/// Checks a checkpoint's signature with the audit public key and returns its claims.
pub fn verify_checkpoint(
    jws: &str,
    key: &PublicKey,
) -> core::result::Result<CheckpointClaims, String> {
    verify_claims(jws, key, CHECKPOINT_TYP)
}

/// Checks a base's signature ([`BASE_TYP`]) with the audit public key and returns its claims.
pub fn verify_base(jws: &str, key: &PublicKey) -> core::result::Result<CheckpointClaims, String> {
    verify_claims(jws, key, BASE_TYP)
}

/// Checks a JWS of type `typ` signed with the audit key and returns its claims.
fn verify_claims(
    jws: &str,
    key: &PublicKey,
    typ: &str,
) -> core::result::Result<CheckpointClaims, String> {
    let dec = |v: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|_| "not base64url".to_owned())
    };
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS".into());
    };
    // CA-API 4.2: the protected header is exactly `{alg, typ}`: an I-JSON object (a member
    // named twice, which a JSON parser reads as one, is a third) with those two members.
    let header = agentid_protocol::ijson::parse_object(&dec(h)?)
        .map_err(|e| format!("the header is not exactly {{alg, typ}}: {}", e.detail()))?;
    if header.len() != 2 {
        return Err("the header is not exactly {alg, typ}".into());
    }
    let alg = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .and_then(Algorithm::from_header)
        .ok_or("unknown alg")?;
    if alg != key.algorithm() {
        return Err("alg is not the audit key's".into());
    }
    if header.get("typ").and_then(serde_json::Value::as_str) != Some(typ) {
        return Err(format!("typ is not {typ}"));
    }
    let input_len = h.len() + 1 + p.len();
    let input = jws.get(..input_len).ok_or("not a compact JWS")?;
    key.verify_signature(alg, input.as_bytes(), &dec(s)?)
        .map_err(|_| "the signature does not verify with the audit key".to_owned())?;
    serde_json::from_slice(&dec(p)?).map_err(|e| format!("claims: {e}"))
}

/// Everything [`verify`] reads, taken from the store in one read transaction.
#[derive(Clone, Debug, Default)]
pub struct AuditSnapshot {
    /// Every record, by writer then sequence.
    pub records: Vec<AuditRecord>,
    /// Every checkpoint, by writer then sequence.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Each pruned writer's base ([`BASE_TYP`]): its records up to the base's `seq` were
    /// exported and pruned, and its first stored record follows the base's `head`.
    pub bases: Vec<CheckpointRecord>,
    /// The revocations the pruned records of each writer made, as `(writer, subject, exp)`,
    /// which its base signs ([`base_revocations_digest`]).
    pub base_revocations: Vec<(String, String, u64)>,
    /// Serials of the certificates issued since the store has kept an audit chain (schema
    /// version 2); each must have an `ok` issuance record.
    pub audited_serials: Vec<String>,
    /// Every revocation the store holds, as `kind:value` (the subject of its `ok` `revoke`
    /// records) and its `exp`. The CA never deletes one nor lowers its `exp`, so each `ok`
    /// `revoke` record must name one whose `exp` is at least the record's.
    pub revocations: Vec<(String, u64)>,
}

/// Where and how the audit trail is broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditBreak {
    /// A record is missing, edited, moved or does not link to its predecessor.
    #[error("audit chain {writer:?}, record {seq}: {reason}")]
    Record {
        /// The chain.
        writer: String,
        /// The record number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint is forged, or the chain no longer matches what it signed.
    #[error("audit chain {writer:?}, checkpoint at record {seq}: {reason}")]
    Checkpoint {
        /// The chain.
        writer: String,
        /// The record number the checkpoint names.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A writer's base (where its pruned records ended) is forged, or not where its chain
    /// starts.
    #[error("audit chain {writer:?}, base at record {seq} (records up to it pruned): {reason}")]
    Base {
        /// The chain.
        writer: String,
        /// The record number the base names.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record known from outside the store ([`Anchor`]: an earlier export or report) is no
    /// longer the store's record at its number, or no longer in the store.
    #[error("audit chain {writer:?}, record {seq} (known from outside the store): {reason}")]
    Anchor {
        /// The chain.
        writer: String,
        /// The record number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A certificate the store records as issued has no audit record.
    // The serial as the store holds it, whoever wrote it: quoted and escaped, as the writer is.
    #[error("issuance {serial:?} has no audit record")]
    MissingIssuance {
        /// Its serial.
        serial: String,
    },
}

/// One chain's state after verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    /// The writer.
    pub writer: String,
    /// Records in the chain.
    pub records: u64,
    /// The head's hash.
    pub head: String,
    /// The last signed checkpoint's record number (0: none).
    pub checkpointed: u64,
    /// The records up to this number were exported and pruned (0: none), as the chain's
    /// signed base says.
    pub pruned: u64,
}

/// The result of a successful [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Every chain.
    pub chains: Vec<ChainSummary>,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Issuances matched to their records.
    pub issuances: u64,
    /// Records known from outside the store ([`Anchor`]s) found in it unchanged.
    pub anchors: u64,
    /// Of those, the records a signed base says were pruned (not compared: the store no longer
    /// holds them).
    pub anchors_pruned: u64,
}

/// What a store reads of its audit trail before the records (CA-API.md 4.3): everything
/// [`TrailVerifier`] holds whole. Checkpoints and bases are about one record in
/// [`CHECKPOINT_EVERY`]; revocations one per revoked entry.
#[derive(Clone, Debug, Default)]
pub struct AuditHead {
    /// Every checkpoint, by writer then sequence.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Each pruned writer's base ([`AuditSnapshot::bases`]).
    pub bases: Vec<CheckpointRecord>,
    /// [`AuditSnapshot::base_revocations`].
    pub base_revocations: Vec<(String, String, u64)>,
    /// [`AuditSnapshot::revocations`].
    pub revocations: Vec<(String, u64)>,
}

/// A reader of a store's audit trail, fed by [`crate::store::Store::audit_visit`] inside one
/// read transaction, in this order: [`AuditVisitor::head`]; if
/// [`AuditVisitor::wants_serials`], every audited serial ([`AuditSnapshot::audited_serials`],
/// in the store's order) to [`AuditVisitor::serial`]; every record by writer then sequence to
/// [`AuditVisitor::record`] (until it answers [`ControlFlow::Break`]); and, if
/// [`AuditVisitor::serials_again`] then says so, the audited serials once more, in the same
/// order, to [`AuditVisitor::serial_again`]. Each record is dropped once visited.
pub trait AuditVisitor {
    /// What the store holds besides records and audited serials.
    fn head(&mut self, head: AuditHead) -> Result<()>;
    /// Whether to read the audited serials before the records.
    fn wants_serials(&self) -> bool {
        false
    }
    /// One audited serial, before the records.
    fn serial(&mut self, _serial: &str) -> Result<()> {
        Ok(())
    }
    /// One record; [`ControlFlow::Break`] ends the records (nothing after it matters).
    fn record(&mut self, record: &AuditRecord) -> Result<ControlFlow<()>>;
    /// After the records: whether to read the audited serials again.
    fn serials_again(&self) -> bool {
        false
    }
    /// One audited serial, after the records; [`ControlFlow::Break`] ends them.
    fn serial_again(&mut self, _serial: &str) -> Result<ControlFlow<()>> {
        Ok(ControlFlow::Break(()))
    }
}

/// Collects a whole [`AuditSnapshot`] (what [`crate::store::Store::audit_snapshot`] returns:
/// for tests and small stores; verification and export stream instead).
#[derive(Debug, Default)]
pub struct SnapshotCollector {
    /// What was read.
    pub snap: AuditSnapshot,
}

impl AuditVisitor for SnapshotCollector {
    fn head(&mut self, head: AuditHead) -> Result<()> {
        self.snap.checkpoints = head.checkpoints;
        self.snap.bases = head.bases;
        self.snap.base_revocations = head.base_revocations;
        self.snap.revocations = head.revocations;
        Ok(())
    }
    fn wants_serials(&self) -> bool {
        true
    }
    fn serial(&mut self, serial: &str) -> Result<()> {
        self.snap.audited_serials.push(serial.to_owned());
        Ok(())
    }
    fn record(&mut self, record: &AuditRecord) -> Result<ControlFlow<()>> {
        self.snap.records.push(record.clone());
        Ok(ControlFlow::Continue(()))
    }
}

impl AuditSnapshot {
    /// Feeds `visitor` as a store would ([`AuditVisitor`]), the records in chain order
    /// whatever order they are held in here (a seq no store can convert was read as
    /// `u64::MAX`, so it sorts last and shows as the gap it left).
    pub fn visit(&self, visitor: &mut dyn AuditVisitor) -> Result<()> {
        visitor.head(AuditHead {
            checkpoints: self.checkpoints.clone(),
            bases: self.bases.clone(),
            base_revocations: self.base_revocations.clone(),
            revocations: self.revocations.clone(),
        })?;
        if visitor.wants_serials() {
            for s in &self.audited_serials {
                visitor.serial(s)?;
            }
        }
        let mut records: Vec<&AuditRecord> = self.records.iter().collect();
        records.sort_by(|a, b| (a.writer.as_str(), a.seq).cmp(&(b.writer.as_str(), b.seq)));
        for r in records {
            if visitor.record(r)?.is_break() {
                break;
            }
        }
        if visitor.serials_again() {
            for s in &self.audited_serials {
                if visitor.serial_again(s)?.is_break() {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Recomputes every chain, checks every checkpoint against `key` and the trust domain `iss`,
/// that each of `audited_serials` has an `ok` issuance record, that each `ok` issuance
/// record's serial is one of them, and that each `ok` revocation record's subject is one of
/// `revocations`. Returns the first break, in chain order, naming its record.
pub fn verify(
    snap: &AuditSnapshot,
    key: &PublicKey,
    iss: &str,
) -> core::result::Result<VerifyReport, AuditBreak> {
    verify_anchored(snap, key, iss, &[])
}

/// [`verify`], and then that every one of `anchors` (records known from outside the store: an
/// earlier `agentid audit export` or `agentid audit verify --format json` report kept
/// elsewhere, [`read_anchors`]) is still the store's record at its number. This finds what a
/// store alone cannot (CA-API.md 4.3): a writer's whole chain deleted with its checkpoints, or
/// the records after its last required checkpoint removed or rewritten, up to the anchors.
///
/// The [`TrailVerifier`] fed from `snap`: what a store streams to it instead
/// ([`verify_dir_anchored`]).
pub fn verify_anchored(
    snap: &AuditSnapshot,
    key: &PublicKey,
    iss: &str,
    anchors: &[Anchor],
) -> core::result::Result<VerifyReport, AuditBreak> {
    let mut v = TrailVerifier::new(key, iss, anchors);
    // Feeding a verifier from memory fails only where the verifier does, which it records.
    if let Err(e) = snap.visit(&mut v) {
        return Err(AuditBreak::Record {
            writer: String::new(),
            seq: 0,
            reason: e.to_string(),
        });
    }
    v.finish()
}

/// The key [`TrailVerifier`] files an audited serial under: the first 16 bytes of its
/// SHA-256 (a collision needs 2^64 serials).
type SerialKey = [u8; 16];

fn serial_key(serial: &str) -> SerialKey {
    let h = util::sha256(serial.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(h.get(..16).unwrap_or(&[0u8; 16]));
    k
}

/// One chain as [`TrailVerifier`] walks it.
#[derive(Debug)]
struct ChainState {
    /// Records seen (with the pruned ones, up to the base).
    n: u64,
    /// The head's hash.
    head: String,
    /// The hashes of the records a checkpoint names, by number.
    kept: HashMap<u64, String>,
    /// How far the records have come in the chain's anchors ([`TrailVerifier::anchored`]).
    next_anchor: usize,
}

/// What the store holds at an anchor's number ([`TrailVerifier`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// No record (not yet, or the chain ends before).
    Absent,
    /// The record known.
    Same,
    /// Another record.
    Differs,
}

/// [`verify_anchored`] fed record by record ([`AuditVisitor`]): it keeps, per chain, its
/// length and head hash, and only the hashes of the records a checkpoint names; per anchor, its
/// number and place (the store's record is compared as it passes: the anchors of a chain are
/// merged with its records by number) and what was found; per audited issuance, a 16-byte key
/// of its serial and whether a record issued it; per revocation the store holds, the
/// revocation. A record is parsed, checked and dropped.
///
/// Every check and the order in which the first break is reported are
/// [`verify_anchored`]'s: bases, then records in chain order (the store gives them by writer
/// then sequence; a record behind its chain's head is stored twice or out of order), then
/// checkpoints, the required checkpoints, audited serials, issuances, revocations, anchors.
pub struct TrailVerifier<'a> {
    key: &'a PublicKey,
    iss: &'a str,
    /// The records known held in memory ([`Against::Listed`]; empty for an export file).
    anchors: Cow<'a, [Anchor]>,
    /// An export file read beside the records ([`Against::Export`]).
    export: Option<ExportCheck>,
    head: AuditHead,
    bases: BTreeMap<String, (u64, String)>,
    chains: BTreeMap<String, ChainState>,
    /// writer -> the record numbers whose hash is kept.
    wanted: HashMap<String, HashSet<u64>>,
    /// writer -> its anchors' (number, index in `anchors`), by number.
    anchored: HashMap<String, Vec<(u64, usize)>>,
    /// What the store holds at each anchor's number, by index in `anchors`.
    seen: Vec<Seen>,
    /// Each audited serial's key -> whether an `ok` issuance record names it.
    audited: HashMap<SerialKey, bool>,
    issuances: u64,
    /// Of the `ok` issuance records whose serial is not audited, the least serial and its first
    /// record (writer, seq).
    made_up: Option<(String, String, u64)>,
    /// Each revocation the store holds, by subject.
    held: HashMap<String, u64>,
    /// The first `ok` revocation record whose entry the store no longer holds as recorded.
    undone: Option<AuditBreak>,
    /// The first audited serial without an `ok` issuance record (the second pass).
    missing: Option<String>,
    /// The first break found while reading (a base, a record).
    broken: Option<AuditBreak>,
    started: bool,
}

impl core::fmt::Debug for TrailVerifier<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TrailVerifier")
            .field("chains", &self.chains.len())
            .field("audited", &self.audited.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<'a> TrailVerifier<'a> {
    /// A verifier of the trail signed with `key` for trust domain `iss`, holding the store to
    /// `anchors` ([`verify_anchored`]).
    pub fn new(key: &'a PublicKey, iss: &'a str, anchors: &'a [Anchor]) -> Self {
        Self::against(key, iss, Against::Listed(Cow::Borrowed(anchors)))
    }

    /// A verifier of the trail signed with `key` for trust domain `iss`, holding the store to
    /// the records `known` names: held in memory, or an export file read beside the store's
    /// records ([`ExportFile`]). Call [`Self::read_export_rest`] once the store has fed
    /// everything, before [`Self::finish`].
    pub fn against(key: &'a PublicKey, iss: &'a str, known: Against<'a>) -> Self {
        let (anchors, export) = match known {
            Against::Listed(anchors) => (anchors, None),
            Against::Export(file) => (
                Cow::Borrowed(&[][..]),
                Some(ExportCheck {
                    file,
                    writers: HashMap::new(),
                    drained: false,
                }),
            ),
        };
        Self {
            key,
            iss,
            anchors,
            export,
            head: AuditHead::default(),
            bases: BTreeMap::new(),
            chains: BTreeMap::new(),
            wanted: HashMap::new(),
            anchored: HashMap::new(),
            seen: Vec::new(),
            audited: HashMap::new(),
            issuances: 0,
            made_up: None,
            held: HashMap::new(),
            undone: None,
            missing: None,
            broken: None,
            started: false,
        }
    }

    fn check_bases(&mut self) -> core::result::Result<(), AuditBreak> {
        for b in &self.head.bases {
            let bad = |reason: String| AuditBreak::Base {
                writer: b.writer.clone(),
                seq: b.seq,
                reason,
            };
            let claims = verify_base(&b.jws, self.key)
                .and_then(|claims| signs_its_columns(b, &claims, self.iss).map(|()| claims))
                .map_err(&bad)?;
            // The revocations its pruned records made, kept beside it, are the ones it signed.
            let kept: Vec<(String, u64)> = self
                .head
                .base_revocations
                .iter()
                .filter(|(w, _, _)| *w == b.writer)
                .map(|(_, subject, exp)| (subject.clone(), *exp))
                .collect();
            if claims.revoked.as_deref() != Some(base_revocations_digest(&kept).as_str()) {
                return Err(bad(
                    "the revocations its pruned records made are not the ones it signs (a row \
                     of them was deleted, added or changed)"
                        .into(),
                ));
            }
            if b.seq == 0 || b.seq == u64::MAX {
                return Err(bad("names no record".into()));
            }
            if self
                .bases
                .insert(b.writer.clone(), (b.seq, b.head.clone()))
                .is_some()
            {
                return Err(bad("the chain has a second base".into()));
            }
        }
        Ok(())
    }

    fn base_of(&self, writer: &str) -> u64 {
        self.bases.get(writer).map_or(0, |b| b.0)
    }

    fn check_record(&mut self, r: &AuditRecord) -> core::result::Result<(), AuditBreak> {
        let base = self.base_of(&r.writer);
        if !self.chains.contains_key(r.writer.as_str()) {
            let (n, head) = match self.bases.get(r.writer.as_str()) {
                Some((seq, head)) => (*seq, head.clone()),
                None => (0, GENESIS.to_owned()),
            };
            self.chains.insert(
                r.writer.clone(),
                ChainState {
                    n,
                    head,
                    kept: HashMap::new(),
                    next_anchor: 0,
                },
            );
        }
        let Some(entry) = self.chains.get_mut(r.writer.as_str()) else {
            return Ok(());
        };
        let expected = entry.n.saturating_add(1);
        let bad = |reason: String| AuditBreak::Record {
            writer: r.writer.clone(),
            seq: expected,
            reason,
        };
        if r.seq != expected {
            return Err(bad(if r.seq > expected {
                format!("missing (the next record stored is {})", r.seq)
            } else if r.seq <= base {
                format!(
                    "record {} is stored, but the chain's signed base says the records up to \
                     {base} were pruned (it was put back or made up)",
                    r.seq
                )
            } else {
                format!("stored twice or out of order (found record {})", r.seq)
            }));
        }
        let body: RecordBody =
            serde_json::from_str(&r.body).map_err(|e| bad(format!("not an audit record: {e}")))?;
        if body.writer != r.writer || body.seq != r.seq {
            return Err(bad(format!(
                "moved: its content is record {} of chain {:?}",
                body.seq, body.writer
            )));
        }
        if body.event.ts != r.ts {
            return Err(bad("its ts column differs from its content".into()));
        }
        if record_hash(&r.body) != r.hash {
            return Err(bad(
                "edited: its content does not hash to its stored hash".into()
            ));
        }
        if body.prev != entry.head {
            return Err(bad("does not link to the previous record's hash".into()));
        }
        let ev = &body.event;
        if ev.kind.starts_with("issue.") && ev.outcome == "ok" {
            if let Some(s) = &ev.serial {
                match self.audited.get_mut(&serial_key(s)) {
                    Some(issued) => *issued = true,
                    // Not audited: the least such serial is reported, at its first record.
                    None => {
                        if self.made_up.as_ref().is_none_or(|(least, _, _)| s < least) {
                            self.made_up = Some((s.clone(), r.writer.clone(), r.seq));
                        }
                    }
                }
            }
        }
        if ev.kind == "revoke" && ev.outcome == "ok" && self.undone.is_none() {
            let subject = ev.subject.clone().unwrap_or_default();
            self.undone = undone_revocation(&self.held, subject, ev.exp, &r.writer, r.seq, false);
            // A principal's: each task entry it expanded to, held as its own revocation.
            for (task, exp) in ev.expanded.iter().flatten() {
                if self.undone.is_some() {
                    break;
                }
                self.undone = undone_revocation(
                    &self.held,
                    task.clone(),
                    Some(*exp),
                    &r.writer,
                    r.seq,
                    false,
                );
            }
        }
        entry.n = expected;
        entry.head.clone_from(&r.hash);
        if self
            .wanted
            .get(r.writer.as_str())
            .is_some_and(|w| w.contains(&r.seq))
        {
            entry.kept.insert(r.seq, r.hash.clone());
        }
        // The anchors at this number (the chain's records come by number, as its anchors are
        // sorted).
        if let Some(list) = self.anchored.get(r.writer.as_str()) {
            while let Some((seq, i)) = list.get(entry.next_anchor).copied() {
                if seq > r.seq {
                    break;
                }
                if seq == r.seq {
                    if let (Some(a), Some(seen)) = (self.anchors.get(i), self.seen.get_mut(i)) {
                        *seen = if a.hash == r.hash {
                            Seen::Same
                        } else {
                            Seen::Differs
                        };
                    }
                }
                entry.next_anchor += 1;
            }
        }
        Ok(())
    }

    /// The first record of `writer` the store holds, up to `to` (inclusive), that no record
    /// known names, if any ([`crate::CertificateAuthority::prune_audit`]: every record pruned
    /// must be in the export). Asked once the store has fed everything.
    pub fn first_unanchored(&self, writer: &str, to: u64) -> Option<u64> {
        if let Some(ex) = &self.export {
            // Found while the records passed (a writer the file does not name has its first
            // record there).
            return ex
                .writers
                .get(writer)
                .and_then(|w| w.first_unanchored)
                .filter(|seq| *seq <= to);
        }
        let list = self.anchored.get(writer).map_or(&[][..], Vec::as_slice);
        let from = self.base_of(writer).saturating_add(1);
        let mut want = from;
        let start = list.partition_point(|(seq, _)| *seq < from);
        for (seq, _) in list.get(start..).unwrap_or(&[]) {
            if want > to {
                return None;
            }
            if *seq > want {
                return Some(want);
            }
            if *seq == want {
                want = want.saturating_add(1);
            }
        }
        (want <= to).then_some(want)
    }

    /// Reads the rest of an export file ([`Against::Export`]): the records of each writer
    /// past the store's, and those of writers the store holds none of. Nothing for records
    /// held in memory. [`Self::finish`] calls it if it was not; called first, a failure to
    /// read the file is an error rather than a break.
    pub fn read_export_rest(&mut self) -> Result<()> {
        match self.export.as_mut() {
            Some(ex) => ex.drain(&self.bases, &self.chains),
            None => Ok(()),
        }
    }

    /// Compares record `r` (which verified) with the export file's record at its number.
    fn compare_with_export(&mut self, r: &AuditRecord) -> Result<()> {
        let Some(ex) = self.export.as_mut() else {
            return Ok(());
        };
        if !ex.writers.contains_key(r.writer.as_str()) {
            ex.writers.insert(r.writer.clone(), WriterCheck::default());
        }
        let Some(w) = ex.writers.get_mut(r.writer.as_str()) else {
            return Ok(());
        };
        w.start(&mut ex.file, &r.writer, self.bases.get(r.writer.as_str()))?;
        loop {
            match w.next.take() {
                // The store's records come one number after the other from the base, and the
                // file's were skipped up to the base: one below is out of reach, kept as a
                // miss all the same.
                Some(k) if k.seq < r.seq => {
                    w.miss(k.line, k.seq, Miss::Absent);
                    w.next = ex.file.next(&r.writer, &mut w.cursor)?;
                }
                Some(k) if k.seq == r.seq => {
                    if k.hash != r.hash {
                        w.miss(k.line, k.seq, Miss::Differs);
                    }
                    w.next = ex.file.next(&r.writer, &mut w.cursor)?;
                    break;
                }
                next => {
                    w.next = next;
                    w.first_unanchored.get_or_insert(r.seq);
                    break;
                }
            }
        }
        Ok(())
    }

    /// The verdict, once the store has fed everything.
    pub fn finish(&mut self) -> core::result::Result<VerifyReport, AuditBreak> {
        if !self.started {
            // Nothing was fed (a snapshot without head is an empty store).
            self.head(AuditHead::default())
                .map_err(|e| AuditBreak::Record {
                    writer: String::new(),
                    seq: 0,
                    reason: e.to_string(),
                })?;
        }
        if let Some(b) = self.broken.take() {
            return Err(b);
        }
        let mut checkpointed: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &self.head.checkpoints {
            let bad = |reason: String| AuditBreak::Checkpoint {
                writer: c.writer.clone(),
                seq: c.seq,
                reason,
            };
            let claims = verify_checkpoint(&c.jws, self.key)
                .and_then(|claims| signs_its_columns(c, &claims, self.iss).map(|()| claims))
                .map_err(&bad)?;
            let first = self.base_of(&c.writer);
            if let Some((seq, head)) = self.bases.get(c.writer.as_str()) {
                if c.seq <= *seq {
                    // Of a pruned record: only the base's own can still be compared.
                    if c.seq == *seq && *head != claims.head {
                        return Err(bad(
                            "it signs another record than the chain's base names".into()
                        ));
                    }
                    let e = checkpointed.entry(c.writer.as_str()).or_insert(0);
                    *e = (*e).max(c.seq);
                    continue;
                }
            }
            let chain = self.chains.get(c.writer.as_str());
            match chain.and_then(|ch| ch.kept.get(&c.seq)) {
                None => {
                    return Err(bad(format!(
                        "the chain has {} records: records were removed after it",
                        chain.map_or(first, |ch| ch.n)
                    )))
                }
                Some(h) if *h != claims.head => {
                    return Err(bad(
                        "the chain's record there is not the one it signed".into()
                    ))
                }
                Some(_) => {}
            }
            let e = checkpointed.entry(c.writer.as_str()).or_insert(0);
            *e = (*e).max(c.seq);
        }
        // The CA writes a checkpoint in the same transaction as each writer's record 1 and
        // every CHECKPOINT_EVERY-th record (CA-API.md 4.2): one missing at record 1 means the
        // chain was made up in the database (nobody with the audit key started it); one missing
        // further on was deleted, and with it the protection of the records it covered.
        let signed: HashSet<(&str, u64)> = self
            .head
            .checkpoints
            .iter()
            .map(|c| (c.writer.as_str(), c.seq))
            .collect();
        for (writer, chain) in &self.chains {
            // After a base, from the first required one past it (the base is signed itself).
            let mut seq = match self.base_of(writer) {
                0 => 1,
                b => (b / CHECKPOINT_EVERY)
                    .saturating_add(1)
                    .saturating_mul(CHECKPOINT_EVERY),
            };
            while seq <= chain.n {
                if !signed.contains(&(writer.as_str(), seq)) {
                    return Err(AuditBreak::Checkpoint {
                        writer: writer.clone(),
                        seq,
                        reason: if seq == 1 {
                            "missing: the CA signs one with every writer's first record, so this \
                             chain was not started by a CA holding the audit key (it was written \
                             into the store directly)"
                                .to_owned()
                        } else {
                            format!(
                                "missing: the CA signs one with every {CHECKPOINT_EVERY}th \
                                 record, so it was removed (the records up to it are no longer \
                                 protected)"
                            )
                        },
                    });
                }
                seq = if seq == 1 {
                    CHECKPOINT_EVERY
                } else {
                    seq.saturating_add(CHECKPOINT_EVERY)
                };
            }
        }
        if let Some(serial) = self.missing.take() {
            return Err(AuditBreak::MissingIssuance { serial });
        }
        // The other direction: an `ok` issuance record is written in the transaction that
        // stores its certificate, so one whose serial the store does not hold was made up (or
        // its certificate row deleted).
        if let Some((serial, writer, seq)) = self.made_up.take() {
            return Err(AuditBreak::Record {
                writer,
                seq,
                reason: format!(
                    "an ok issuance of serial {serial:?}, which the store has no certificate \
                     for (the record was made up, or the certificate's row deleted)"
                ),
            });
        }
        // Likewise an `ok` revocation record is written in the transaction that stores its
        // revocation, with the entry's `exp` then; the CA never deletes an entry nor lowers its
        // `exp`. One whose entry the store no longer holds, or holds ending earlier, had it
        // deleted or cut short, which undoes the revocation (the lists leave it out, and
        // without the row the CA issues to the target again).
        if let Some(b) = self.undone.take() {
            return Err(b);
        }
        // The same for the revocations of pruned records, which their chain's base signs (a
        // break of the base, the records being gone).
        for (w, subject, exp) in &self.head.base_revocations {
            let Some((seq, _)) = self.bases.get(w.as_str()) else {
                continue;
            };
            if let Some(b) =
                undone_revocation(&self.held, subject.clone(), Some(*exp), w, *seq, true)
            {
                return Err(b);
            }
        }
        if let Some(ex) = self.export.as_mut() {
            if let Err(e) = ex.drain(&self.bases, &self.chains) {
                return Err(AuditBreak::Anchor {
                    writer: String::new(),
                    seq: 0,
                    reason: format!("the export could not be read to its end: {e}"),
                });
            }
        }
        let mut anchors_pruned = 0u64;
        let miss_break = |writer: &str, seq: u64, miss: Miss| {
            let n = self.chains.get(writer).map_or(0, |c| c.n);
            let covered = checkpointed.get(writer).copied().unwrap_or(0) >= seq;
            anchor_break(writer, seq, miss, n, covered)
        };
        for (a, seen) in self.anchors.iter().zip(&self.seen) {
            if let Some((seq, head)) = self.bases.get(a.writer.as_str()) {
                if a.seq == *seq && a.hash != *head {
                    return Err(miss_break(&a.writer, a.seq, Miss::Base));
                }
                if a.seq <= *seq {
                    // Exported and pruned, as the base signed by the audit key says.
                    anchors_pruned += 1;
                    continue;
                }
            }
            if !self.chains.contains_key(a.writer.as_str()) {
                return Err(miss_break(&a.writer, a.seq, Miss::NoChain));
            }
            match seen {
                Seen::Absent => return Err(miss_break(&a.writer, a.seq, Miss::Absent)),
                Seen::Differs => return Err(miss_break(&a.writer, a.seq, Miss::Differs)),
                Seen::Same => {}
            }
        }
        let mut anchors = self.anchors.len() as u64;
        if let Some(ex) = &self.export {
            // The first miss in the file (each writer's first is its earliest line: its
            // records are read in file order).
            let first = ex
                .writers
                .iter()
                .filter_map(|(writer, w)| w.missed.as_ref().map(|m| (m, writer)))
                .min_by_key(|((line, _, _), _)| *line);
            if let Some(((_, seq, miss), writer)) = first {
                return Err(miss_break(writer, *seq, *miss));
            }
            anchors = ex.file.records();
            anchors_pruned = ex.writers.values().map(|w| w.pruned).sum();
        }
        Ok(VerifyReport {
            chains: self
                .chains
                .iter()
                .map(|(w, chain)| ChainSummary {
                    writer: w.clone(),
                    records: chain.n,
                    head: chain.head.clone(),
                    checkpointed: checkpointed.get(w.as_str()).copied().unwrap_or(0),
                    pruned: self.base_of(w),
                })
                .collect(),
            checkpoints: self.head.checkpoints.len() as u64,
            issuances: self.issuances,
            anchors,
            anchors_pruned,
        })
    }
}

impl AuditVisitor for TrailVerifier<'_> {
    fn head(&mut self, head: AuditHead) -> Result<()> {
        self.started = true;
        self.head = head;
        if let Err(b) = self.check_bases() {
            self.broken = Some(b);
            return Ok(());
        }
        // A chain with a base and no record left is still a chain (from its base).
        for (w, (seq, head)) in &self.bases {
            self.chains.insert(
                w.clone(),
                ChainState {
                    n: *seq,
                    head: head.clone(),
                    kept: HashMap::new(),
                    next_anchor: 0,
                },
            );
        }
        for c in &self.head.checkpoints {
            self.wanted
                .entry(c.writer.clone())
                .or_default()
                .insert(c.seq);
        }
        for (i, a) in self.anchors.iter().enumerate() {
            self.anchored
                .entry(a.writer.clone())
                .or_default()
                .push((a.seq, i));
        }
        for list in self.anchored.values_mut() {
            list.sort_unstable();
        }
        self.seen = vec![Seen::Absent; self.anchors.len()];
        self.held = self.head.revocations.iter().cloned().collect();
        Ok(())
    }

    fn wants_serials(&self) -> bool {
        self.broken.is_none()
    }

    fn serial(&mut self, serial: &str) -> Result<()> {
        self.issuances += 1;
        self.audited.entry(serial_key(serial)).or_insert(false);
        Ok(())
    }

    fn record(&mut self, record: &AuditRecord) -> Result<ControlFlow<()>> {
        if self.broken.is_some() {
            return Ok(ControlFlow::Break(()));
        }
        match self.check_record(record) {
            Ok(()) => {
                self.compare_with_export(record)?;
                Ok(ControlFlow::Continue(()))
            }
            Err(b) => {
                self.broken = Some(b);
                Ok(ControlFlow::Break(()))
            }
        }
    }

    fn serials_again(&self) -> bool {
        self.broken.is_none() && self.audited.values().any(|issued| !issued)
    }

    fn serial_again(&mut self, serial: &str) -> Result<ControlFlow<()>> {
        if self.audited.get(&serial_key(serial)) == Some(&false) {
            self.missing = Some(serial.to_owned());
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// How a record known from outside the store ([`Anchor`]) is not the store's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Miss {
    /// At the chain's base, another record than the base names.
    Base,
    /// The store holds no record of its chain.
    NoChain,
    /// The store's chain ends before it.
    Absent,
    /// The store's record there is another.
    Differs,
}

/// The break of the record known at `seq` of `writer` that the store does not hold as known
/// (`n`: the store's records of the chain; `covered`: a checkpoint verified covers `seq`).
fn anchor_break(writer: &str, seq: u64, miss: Miss, n: u64, covered: bool) -> AuditBreak {
    let reason = match miss {
        Miss::Base => "the chain's signed base names another record there: the record known is \
             another CA's (give a file kept from this CA), or whoever pruned the chain held this \
             CA's audit.key"
            .to_owned(),
        Miss::NoChain => "the store holds no record of this chain: the chain was deleted from \
             the store, with its checkpoints"
            .to_owned(),
        Miss::Absent => format!(
            "the store holds {n} records of this chain: records were deleted after record {n}"
        ),
        // Covered by a checkpoint this CA's audit key signed (verified): the store's record
        // is this CA's unless that key was used to rewrite it, so the record known may as well
        // come from another CA (a file kept from another CA's store).
        Miss::Differs if covered => "the store's record there is not the one known, and a \
             checkpoint this CA's audit key signed covers the store's: the record known is \
             another CA's (the file was kept from another CA's store: give one kept from this \
             CA), or whoever rewrote the chain held this CA's audit.key"
            .to_owned(),
        Miss::Differs => "the store's record there is not the one known: it was rewritten (with \
             the chain's records after it, and their checkpoints)"
            .to_owned(),
    };
    AuditBreak::Anchor {
        writer: writer.to_owned(),
        seq,
        reason,
    }
}

/// [`TrailVerifier`]'s reading of an export file beside the store ([`Against::Export`]).
struct ExportCheck {
    file: ExportFile,
    /// Per writer met (in the store or the file), where its reading stands.
    writers: HashMap<String, WriterCheck>,
    /// The writers' records past the store's were read ([`TrailVerifier::read_export_rest`]).
    drained: bool,
}

impl ExportCheck {
    /// [`TrailVerifier::read_export_rest`].
    fn drain(
        &mut self,
        bases: &BTreeMap<String, (u64, String)>,
        chains: &BTreeMap<String, ChainState>,
    ) -> Result<()> {
        if self.drained {
            return Ok(());
        }
        let writers: Vec<String> = self.file.writers().cloned().collect();
        for writer in writers {
            let w = self.writers.entry(writer.clone()).or_default();
            w.start(&mut self.file, &writer, bases.get(writer.as_str()))?;
            if let Some(k) = w.next.take() {
                // Past the store's records (or of a chain the store does not hold).
                let miss = if chains.contains_key(writer.as_str()) {
                    Miss::Absent
                } else {
                    Miss::NoChain
                };
                w.miss(k.line, k.seq, miss);
            }
        }
        self.drained = true;
        Ok(())
    }
}

/// One writer's reading of an export file ([`ExportCheck`]).
#[derive(Debug, Default)]
struct WriterCheck {
    cursor: export_file::Cursor,
    /// Its records were read up to its base ([`WriterCheck::start`]).
    started: bool,
    /// The file's next record of the writer not yet compared (`None`: past its last).
    next: Option<export_file::Known>,
    /// The records known at or below the chain's base: exported and pruned.
    pruned: u64,
    /// The first record of the store that the file does not hold.
    first_unanchored: Option<u64>,
    /// The first record known that the store does not hold as known: (line, seq, how).
    missed: Option<(u64, u64, Miss)>,
}

impl WriterCheck {
    /// Reads the writer's first records, up to its chain's `base` (pruned: only the base's
    /// own is compared, with the head the base names), once.
    fn start(
        &mut self,
        file: &mut ExportFile,
        writer: &str,
        base: Option<&(u64, String)>,
    ) -> Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        self.next = file.next(writer, &mut self.cursor)?;
        let Some((seq, head)) = base else {
            return Ok(());
        };
        while let Some(k) = self.next.take() {
            if k.seq > *seq {
                self.next = Some(k);
                break;
            }
            if k.seq == *seq && k.hash != *head {
                self.miss(k.line, k.seq, Miss::Base);
            }
            self.pruned += 1;
            self.next = file.next(writer, &mut self.cursor)?;
        }
        Ok(())
    }

    /// Keeps the first miss (the writer's records are read in file order).
    fn miss(&mut self, line: u64, seq: u64, miss: Miss) {
        if self.missed.is_none() {
            self.missed = Some((line, seq, miss));
        }
    }
}

/// The records a store is held to ([`TrailVerifier::against`]): what `agentid audit verify
/// --against` or `agentid audit prune --exported` was given.
#[derive(Debug)]
pub enum Against<'a> {
    /// Held in memory ([`read_anchors`], [`read_export`]).
    Listed(Cow<'a, [Anchor]>),
    /// An export in a file, read beside the store's records ([`ExportFile`]).
    Export(ExportFile),
}

impl<'a> From<&'a [Anchor]> for Against<'a> {
    fn from(anchors: &'a [Anchor]) -> Self {
        Self::Listed(Cow::Borrowed(anchors))
    }
}

/// The break of an `ok` revocation of `subject` recorded with `exp` (record `seq` of `writer`,
/// or its base when `pruned`) if the store no longer holds that revocation as recorded.
fn undone_revocation(
    held: &HashMap<String, u64>,
    subject: String,
    exp: Option<u64>,
    writer: &str,
    seq: u64,
    pruned: bool,
) -> Option<AuditBreak> {
    let what = match (held.get(subject.as_str()), exp) {
        (None, _) => "no longer holds (its row was deleted)".to_owned(),
        (Some(now), Some(then)) if *now < then => format!(
            "holds ending at {now}, before the {then} it ended at when recorded (its exp was \
             lowered)"
        ),
        _ => return None,
    };
    let reason = format!(
        "an ok revocation of {subject:?}{}, which the store {what}, which undoes the revocation",
        if pruned { " (its record pruned)" } else { "" }
    );
    let writer = writer.to_owned();
    Some(if pruned {
        AuditBreak::Base {
            writer,
            seq,
            reason,
        }
    } else {
        AuditBreak::Record {
            writer,
            seq,
            reason,
        }
    })
}

/// What [`plan_prune`] would prune of one writer's chain: its records up to `seq` (whose hash
/// is `head`), and the certificates those records issued ([`issued_serial`]). It names where
/// the prune may stop, not those certificates: each batch finds its own among the records it
/// deletes, in its transaction ([`PrunedBatch`]), so what a prune holds does not grow with the
/// records it prunes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunePlan {
    /// The chain.
    pub writer: String,
    /// The chain's base after the prune: its records up to this one go.
    pub seq: u64,
    /// The hash of record `seq`, which the next record links to.
    pub head: String,
    /// The chain's base before the prune (0: none): the records after it up to `seq` go, with
    /// the issuance rows of the certificates they issued ([`issued_serial`]).
    pub from: u64,
    /// The revocations those records made (`ok` `revoke` records), in chain order: each
    /// subject with the `exp` its record carried (0 for none). They join the ones the chain's
    /// base keeps, each subject at its highest `exp`.
    pub revocations: Vec<(String, u64)>,
    /// Every checkpointed record from `from` to `seq` (the last is `seq` itself), where the
    /// prune may also stop: [`crate::CertificateAuthority::prune_audit`] prunes a long chain in
    /// several transactions, each ending at one of these.
    pub steps: Vec<PruneStep>,
}

/// A checkpointed record a prune may stop at ([`PrunePlan::steps`]): record `seq`, whose hash
/// is `head`; the plan's first `revocations` revocations were recorded up to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneStep {
    /// The record.
    pub seq: u64,
    /// Its hash.
    pub head: String,
    /// How many of [`PrunePlan::revocations`] its records made.
    pub revocations: usize,
}

/// The most records [`crate::CertificateAuthority::prune_audit`] deletes of a chain in one
/// transaction (with the issuance rows of the certificates they recorded): a batch ends at the
/// last checkpointed record within it.
pub const PRUNE_BATCH: u64 = 8 * 1024;

/// Where the batches of a prune from `from` (the chain's base, 0 for none) to the last of
/// `steps` end: each at the furthest step at most `batch` records after the previous end, or
/// at the next step when none is that close (a batch is at least a checkpoint interval).
pub fn prune_batches(steps: &[PruneStep], from: u64, batch: u64) -> Vec<&PruneStep> {
    let mut ends: Vec<&PruneStep> = Vec::new();
    let mut at = from;
    let mut i = 0;
    while let Some(first) = steps.get(i) {
        // The next step is always taken; then as many more as fit in the batch.
        let mut end = i;
        while steps
            .get(end + 1)
            .is_some_and(|next| next.seq.saturating_sub(at) <= batch)
        {
            end += 1;
        }
        let last = steps.get(end).unwrap_or(first);
        ends.push(last);
        at = last.seq;
        i = end + 1;
    }
    ends
}

/// What can be pruned of a verified `snap` (CA-API.md 4.5): for each writer, its records from
/// its first stored one up to the last record `S` such that
///
/// * every record up to `S` was written before `cutoff` (`ts < cutoff`), and each of them that
///   issued a certificate (an `ok` `issue.*` record) recorded one that, with its task, ended
///   before `cutoff`: `retained_until(serial)` (the later of the certificate's `notAfter` and
///   its task's end) is below `cutoff` (`None`, a certificate the store does not know, stops
///   the walk);
/// * each `ok` `revoke` record's entry, as the store holds it (and as the record says), ended
///   before `cutoff` (while it is in force, its record is what makes the entry's row deleted or
///   its `exp` lowered a break);
/// * `S` has a checkpoint (so the next record's `prev` is a signed head), and
/// * `S` is not the chain's last record (the chain goes on from a record the store holds).
///
/// The walk stops at the first record that may not go, so what stays is a suffix of each
/// chain. Writers with nothing to prune are left out.
pub fn plan_prune(
    snap: &AuditSnapshot,
    cutoff: u64,
    retained_until: &mut dyn FnMut(&str) -> Result<Option<u64>>,
) -> Result<Vec<PrunePlan>> {
    let mut planner = PrunePlanner::new(cutoff, retained_until);
    snap.visit(&mut planner)?;
    Ok(planner.finish())
}

/// The certificate an audit record issued, whose issuance row goes with the record when it is
/// pruned (and which must have ended, with its task, for the record to go): the `serial` of an
/// `ok` `issue.*` record. The one rule of both [`PrunePlanner`]'s walk and the batches that
/// delete the records it planned ([`PrunedBatch`], in each batch's transaction).
pub fn issued_serial(event: &AuditEvent) -> Option<&str> {
    if event.kind.starts_with("issue.") && event.outcome == "ok" {
        event.serial.as_deref()
    } else {
        None
    }
}

/// The records one batch of a prune deletes, read by the store inside the batch's transaction,
/// in chain order, after the chain's base (CA-API.md 4.5): each must be the next of the chain,
/// of its writer and number, hash to its stored hash and link to the one before, and the last
/// must be the planned record `seq` whose hash is `head` (which the store checked): they are
/// then the records the prune verified and walked, whatever was edited meanwhile. It gives the
/// serials of the certificates they issued ([`issued_serial`]), whose rows go with them: one
/// batch's, at most, never the whole plan's.
#[derive(Debug)]
pub struct PrunedBatch<'a> {
    plan: &'a PrunePlan,
    /// The last record read (the base, to start).
    at: u64,
    /// Its hash (`None` for the base: the chain is held by `head`, at its other end).
    prev: Option<String>,
    serials: Vec<String>,
}

impl<'a> PrunedBatch<'a> {
    /// The batch of `plan`, whose chain's base is now at `base` (0: none): its records from
    /// the later of `base` and the plan's `from` go.
    pub fn new(plan: &'a PrunePlan, base: u64) -> Self {
        Self {
            plan,
            at: plan.from.max(base),
            prev: None,
            serials: Vec::new(),
        }
    }

    /// The number of the last record read (the base's before the first).
    pub fn at(&self) -> u64 {
        self.at
    }

    fn changed(&self, seq: u64, what: &str) -> CaError {
        CaError::Store(format!(
            "audit chain {:?}: record {seq} {what} while the prune was planned; nothing was \
             pruned",
            self.plan.writer
        ))
    }

    /// The next record read: number `seq` (the column), `body` and `hash` as stored.
    pub fn record(&mut self, seq: u64, body: &str, hash: &str) -> Result<()> {
        let expected = self.at.saturating_add(1);
        if seq != expected || seq > self.plan.seq {
            return Err(self.changed(expected, "was deleted or moved"));
        }
        let parsed: RecordBody = serde_json::from_str(body)
            .map_err(|e| self.changed(seq, &format!("is no longer a record ({e})")))?;
        if parsed.writer != self.plan.writer
            || parsed.seq != seq
            || record_hash(body) != hash
            || self.prev.as_ref().is_some_and(|p| *p != parsed.prev)
        {
            return Err(self.changed(seq, "was edited"));
        }
        if let Some(serial) = issued_serial(&parsed.event) {
            self.serials.push(serial.to_owned());
        }
        self.at = seq;
        self.prev = Some(hash.to_owned());
        Ok(())
    }

    /// Every record up to the plan's `seq` read, the last with the plan's `head`: the serials
    /// of the certificates they issued.
    pub fn finish(self) -> Result<Vec<String>> {
        if self.at != self.plan.seq || self.prev.as_deref() != Some(self.plan.head.as_str()) {
            return Err(self.changed(self.at.saturating_add(1), "was deleted or moved"));
        }
        Ok(self.serials)
    }
}

/// One writer's walk of [`PrunePlanner`].
#[derive(Debug)]
struct Walk {
    writer: String,
    /// A record that may not go was met: the rest of the chain is not read.
    stopped: bool,
    revoked: Vec<(String, u64)>,
    /// Every checkpointed record walked, where the walk may cut (the revocations counted up to
    /// each).
    cuts: Vec<PruneStep>,
    /// The chain's last record read so far (a cut there is not one: the chain goes on from a
    /// record the store holds).
    last: u64,
}

/// [`plan_prune`] fed record by record ([`AuditVisitor`]), in chain order: it holds one
/// writer's walk at a time (the revocations of the records that may go, and the checkpointed
/// records where it may stop; not the serials of the certificates they issued) and reads
/// nothing of a chain past the record where its walk stops.
pub struct PrunePlanner<'a> {
    cutoff: u64,
    retained_until: &'a mut dyn FnMut(&str) -> Result<Option<u64>>,
    /// writer -> its checkpointed records.
    signed: HashMap<String, HashSet<u64>>,
    bases: HashMap<String, u64>,
    /// Each revocation's `exp` as the store holds it, by subject (`kind:value`).
    revocations: HashMap<String, u64>,
    walk: Option<Walk>,
    plans: Vec<PrunePlan>,
}

impl core::fmt::Debug for PrunePlanner<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrunePlanner")
            .field("cutoff", &self.cutoff)
            .field("plans", &self.plans)
            .finish_non_exhaustive()
    }
}

impl<'a> PrunePlanner<'a> {
    /// A planner of what is older than `cutoff` ([`plan_prune`]).
    pub fn new(
        cutoff: u64,
        retained_until: &'a mut dyn FnMut(&str) -> Result<Option<u64>>,
    ) -> Self {
        Self {
            cutoff,
            retained_until,
            signed: HashMap::new(),
            bases: HashMap::new(),
            revocations: HashMap::new(),
            walk: None,
            plans: Vec::new(),
        }
    }

    fn close(&mut self) {
        let Some(walk) = self.walk.take() else {
            return;
        };
        // A cut at the chain's last record is not one: the chain goes on from a record the
        // store holds.
        let mut cuts = walk.cuts;
        if cuts.last().is_some_and(|c| c.seq >= walk.last) {
            cuts.pop();
        }
        if let Some(cut) = cuts.last() {
            let mut revoked = walk.revoked;
            revoked.truncate(cut.revocations);
            self.plans.push(PrunePlan {
                from: self.bases.get(walk.writer.as_str()).copied().unwrap_or(0),
                writer: walk.writer,
                seq: cut.seq,
                head: cut.head.clone(),
                revocations: revoked,
                steps: cuts,
            });
        }
    }

    /// The plans, by writer (writers with nothing to prune left out).
    pub fn finish(mut self) -> Vec<PrunePlan> {
        self.close();
        self.plans
    }

    fn walk(&mut self, r: &AuditRecord) -> Result<()> {
        if self.walk.as_ref().is_none_or(|w| w.writer != r.writer) {
            self.close();
            self.walk = Some(Walk {
                writer: r.writer.clone(),
                stopped: false,
                revoked: Vec::new(),
                cuts: Vec::new(),
                last: 0,
            });
        }
        let Some(walk) = self.walk.as_mut() else {
            return Ok(());
        };
        walk.last = walk.last.max(r.seq);
        if walk.stopped {
            return Ok(());
        }
        if r.ts >= self.cutoff {
            walk.stopped = true;
            return Ok(());
        }
        let body: RecordBody = serde_json::from_str(&r.body).map_err(|e| {
            CaError::Store(format!(
                "audit record {} of {:?} is not a record: {e}",
                r.seq, r.writer
            ))
        })?;
        let ev = &body.event;
        // Its certificate's row goes with it (the batch that deletes it finds the serial
        // again, [`PrunedBatch`]): it must have ended, with its task.
        if let Some(serial) = issued_serial(ev) {
            match (self.retained_until)(serial)? {
                Some(until) if until < self.cutoff => {}
                _ => {
                    walk.stopped = true;
                    return Ok(());
                }
            }
        }
        // An `ok` revocation record is what makes its entry's row deleted or its `exp`
        // lowered a break (verify): it stays while the entry is in force.
        if ev.kind == "revoke" && ev.outcome == "ok" {
            let held = ev
                .subject
                .as_deref()
                .and_then(|s| self.revocations.get(s).copied());
            match held.max(ev.exp) {
                Some(exp) if exp < self.cutoff => {}
                _ => {
                    walk.stopped = true;
                    return Ok(());
                }
            }
            // A principal's: each task entry it expanded to, likewise.
            for (task, exp) in ev.expanded.iter().flatten() {
                let held = self.revocations.get(task.as_str()).copied();
                match held.max(Some(*exp)) {
                    Some(exp) if exp < self.cutoff => {}
                    _ => {
                        walk.stopped = true;
                        return Ok(());
                    }
                }
            }
            if let Some(subject) = &ev.subject {
                walk.revoked.push((subject.clone(), ev.exp.unwrap_or(0)));
            }
            walk.revoked.extend(ev.expanded.iter().flatten().cloned());
        }
        if self
            .signed
            .get(r.writer.as_str())
            .is_some_and(|s| s.contains(&r.seq))
        {
            walk.cuts.push(PruneStep {
                seq: r.seq,
                head: r.hash.clone(),
                revocations: walk.revoked.len(),
            });
        }
        Ok(())
    }
}

impl PrunePlanner<'_> {
    /// [`AuditVisitor::head`] by reference: what the walk needs of `head` (the checkpoints'
    /// numbers, the bases', the revocations), for a caller that hands the head on.
    pub fn head_of(&mut self, head: &AuditHead) {
        for c in &head.checkpoints {
            self.signed
                .entry(c.writer.clone())
                .or_default()
                .insert(c.seq);
        }
        self.bases = head
            .bases
            .iter()
            .map(|b| (b.writer.clone(), b.seq))
            .collect();
        self.revocations = head.revocations.iter().cloned().collect();
    }
}

impl AuditVisitor for PrunePlanner<'_> {
    fn head(&mut self, head: AuditHead) -> Result<()> {
        self.head_of(&head);
        Ok(())
    }

    fn record(&mut self, record: &AuditRecord) -> Result<ControlFlow<()>> {
        self.walk(record)?;
        Ok(ControlFlow::Continue(()))
    }
}

/// That a checkpoint or base whose signature verified (`claims`) names trust domain `iss` and
/// signs its stored columns: `iat` too, since the CA reads the column to decide when the next
/// timed checkpoint is due.
fn signs_its_columns(
    stored: &CheckpointRecord,
    claims: &CheckpointClaims,
    iss: &str,
) -> core::result::Result<(), String> {
    if claims.iss != iss {
        return Err(format!("signed for {:?}, not {iss:?}", claims.iss));
    }
    if claims.writer != stored.writer
        || claims.seq != stored.seq
        || claims.head != stored.head
        || claims.iat != stored.iat
    {
        return Err("its columns differ from what it signs".into());
    }
    Ok(())
}

/// A record of a writer's chain known from outside the store: record `seq` of `writer` hashes
/// to `hash` ([`record_hash`]). [`verify_anchored`] requires the store to hold it unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The chain.
    pub writer: String,
    /// The record number (from 1).
    pub seq: u64,
    /// The record's hash (64 lowercase hex).
    pub hash: String,
}

/// The longest line [`read_anchors`] reads from an export: a record is at most a few KiB.
const MAX_ANCHOR_LINE: u64 = 1024 * 1024;

/// The largest `agentid audit verify --format json` report [`read_anchors`] reads.
const MAX_ANCHOR_REPORT: u64 = 16 * 1024 * 1024;

/// Reads [`Anchor`]s from what an earlier run printed and someone kept outside the store:
///
/// * `agentid audit export` (JSON lines): every record line is an anchor at its number, once
///   its `body` hashes to its `hash` (a line that does not is a damaged export, refused);
///   checkpoint lines are skipped (the store's own are checked);
/// * `agentid audit verify --format json` (one JSON document, `{"valid": true, "report":
///   {"chains": [{"writer", "records", "head"}, ...]}}`): each chain's head is an anchor at its
///   record count. A report of a broken trail (`"valid": false`) is refused.
///
/// The error says what is wrong with the input (the line number for an export).
pub fn read_anchors(r: impl std::io::BufRead) -> core::result::Result<Vec<Anchor>, String> {
    read_anchors_of(r, true)
}

/// The records an `agentid audit export` holds, as [`read_anchors`] reads them, refusing an
/// `agentid audit verify --format json` report: a report names each chain's head by its hash
/// and holds no record, so it cannot be where the records a prune deletes are kept
/// ([`crate::CertificateAuthority::prune_audit`]'s `exported`, CA-API.md 4.5).
pub fn read_export(r: impl std::io::BufRead) -> core::result::Result<Vec<Anchor>, String> {
    read_anchors_of(r, false)
}

/// [`read_anchors`], or [`read_export`] without `reports`.
fn read_anchors_of(
    mut r: impl std::io::BufRead,
    reports: bool,
) -> core::result::Result<Vec<Anchor>, String> {
    use std::io::Read as _;
    let mut first = Vec::new();
    read_line(&mut r, &mut first).map_err(|e| format!("reading: {e}"))?;
    if !is_export_line(&first) {
        let mut all = first;
        (&mut r)
            .take(MAX_ANCHOR_REPORT.saturating_add(1))
            .read_to_end(&mut all)
            .map_err(|e| format!("reading: {e}"))?;
        if all.iter().all(u8::is_ascii_whitespace) {
            // What `agentid audit export` writes for a store without records.
            return Err(
                "the file is empty: nothing to compare the store with (`agentid audit export` writes \
                 nothing while the store has no records: keep one made after the CA's first \
                 record)"
                    .to_owned(),
            );
        }
        if !reports {
            return Err(
                "not an export: an `agentid audit verify --format json` report names each \
                 chain's head by its hash only and holds no record, so the records pruned would \
                 be kept nowhere"
                    .to_owned(),
            );
        }
        if all.len() as u64 > MAX_ANCHOR_REPORT {
            return Err(format!(
                "larger than {MAX_ANCHOR_REPORT} bytes: not a report of `agentid audit verify \
                 --format json`"
            ));
        }
        return anchors_of_report(&all);
    }
    let mut anchors = Vec::new();
    let mut line = first;
    let mut number = 1u64;
    loop {
        if line.len() as u64 > MAX_ANCHOR_LINE {
            return Err(format!(
                "line {number}: longer than {MAX_ANCHOR_LINE} bytes"
            ));
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            if let Some(a) =
                anchor_of_export_line(&line).map_err(|e| format!("line {number}: {e}"))?
            {
                anchors.push(a);
            }
        }
        let n = read_line(&mut r, &mut line).map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            break;
        }
        number += 1;
    }
    if anchors.is_empty() {
        return Err("an export without records: nothing to compare the store with".to_owned());
    }
    Ok(anchors)
}

/// Reads the next line of `r` into `line` (cleared first), at most [`MAX_ANCHOR_LINE`] + 1
/// bytes of it (a longer line is refused by its length); 0 at the end.
fn read_line(r: &mut impl std::io::BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::{BufRead as _, Read as _};
    line.clear();
    r.take(MAX_ANCHOR_LINE + 1).read_until(b'\n', line)
}

/// Whether `line`, the first of a file, makes it an `agentid audit export` (JSON lines, each
/// with a `type`) rather than a report.
fn is_export_line(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .is_some_and(|v| v.get("type").is_some())
}

/// The anchor of one `agentid audit export` line (`None` for a checkpoint line).
fn anchor_of_export_line(line: &[u8]) -> core::result::Result<Option<Anchor>, String> {
    let parsed: ExportLine = serde_json::from_slice(line)
        .map_err(|e| format!("not a line of `agentid audit export`: {e}"))?;
    let ExportLine::Record { text, hash, .. } = parsed else {
        return Ok(None);
    };
    if record_hash(&text) != hash {
        return Err("its body does not hash to its hash: the export is damaged".to_owned());
    }
    // The fields are read from the hashed text, not from the line (CA-API.md 4.4).
    let body: RecordBody =
        serde_json::from_str(&text).map_err(|e| format!("its body is not a record: {e}"))?;
    Ok(Some(Anchor {
        writer: body.writer,
        seq: body.seq,
        hash,
    }))
}

/// The anchors of an `agentid audit verify --format json` report: each chain's head.
fn anchors_of_report(text: &[u8]) -> core::result::Result<Vec<Anchor>, String> {
    #[derive(Deserialize)]
    struct Printed {
        valid: bool,
        report: Option<Report>,
    }
    #[derive(Deserialize)]
    struct Report {
        chains: Vec<Chain>,
    }
    #[derive(Deserialize)]
    struct Chain {
        writer: String,
        records: u64,
        head: String,
    }
    let printed: Printed = serde_json::from_slice(text).map_err(|e| {
        format!(
            "neither the JSON lines of `agentid audit export` nor the report of `agentid audit \
             verify --format json`: {e}"
        )
    })?;
    let report = match (printed.valid, printed.report) {
        (true, Some(r)) => r,
        _ => {
            return Err(
                "a report of a broken trail (`\"valid\": false`): it vouches for nothing"
                    .to_owned(),
            )
        }
    };
    let anchors: Vec<Anchor> = report
        .chains
        .into_iter()
        .filter(|c| c.records > 0)
        .map(|c| Anchor {
            writer: c.writer,
            seq: c.records,
            hash: c.head,
        })
        .collect();
    if anchors.is_empty() {
        return Err("a report without chains: nothing to compare the store with".to_owned());
    }
    Ok(anchors)
}

/// One line of `agentid audit export`: a record (its stored JSON with its hash) or a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportLine {
    /// An audit record.
    Record {
        /// The record's content (its fields, for reading).
        #[serde(flatten)]
        body: Box<RecordBody>,
        /// The record's stored text, the exact bytes `hash` covers (JSON key `body`): an
        /// offline checker hashes this ([`record_hash`]) and reads the fields from it, rather
        /// than re-serializing the fields above.
        #[serde(rename = "body", default)]
        text: String,
        /// Its hash.
        hash: String,
    },
    /// A signed checkpoint.
    Checkpoint {
        /// The chain.
        writer: String,
        /// The record number it signs.
        seq: u64,
        /// The compact JWS.
        jws: String,
    },
    /// A chain's signed base ([`BASE_TYP`]): its records up to `seq` were pruned.
    Base {
        /// The chain.
        writer: String,
        /// The last record pruned.
        seq: u64,
        /// The compact JWS.
        jws: String,
    },
}

/// Mirrors audit records as `tracing` events (target `agentid::audit`). The record itself is
/// the store's; this is for logs.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    _private: (),
}

impl AuditLog {
    /// A mirror that emits `tracing` events.
    pub fn tracing_only() -> Self {
        AuditLog { _private: () }
    }

    /// Emits `ev` as a `tracing` event.
    pub fn record(&self, ev: &AuditEvent) {
        tracing::info!(
            target: "agentid::audit",
            kind = %ev.kind,
            actor = %ev.actor,
            subject = ev.subject.as_deref().unwrap_or(""),
            task.id = ev.task.as_deref().unwrap_or(""),
            cert.serial = ev.serial.as_deref().unwrap_or(""),
            jti = ev.jti.as_deref().unwrap_or(""),
            outcome = %ev.outcome,
            reason = ev.reason.as_deref().unwrap_or(""),
            "audit"
        );
    }
}

/// The audit public key of a CA directory (`audit.pub`).
pub fn audit_public_key(dir: &std::path::Path) -> Result<PublicKey> {
    let path = dir.join(crate::material::files::AUDIT_PUB);
    let spki = crate::material::read_public_key(&path)?;
    PublicKey::from_spki_der(&spki).map_err(|e| CaError::material(&path, e.to_string()))
}

/// Verifies the audit trail of the CA directory `dir` (its store, `audit.pub` and trust
/// domain) without loading any private key. The outer error is a failure to read; the inner
/// one is the first break found.
pub fn verify_dir(dir: &std::path::Path) -> Result<core::result::Result<VerifyReport, AuditBreak>> {
    verify_dir_anchored(dir, &[])
}

/// [`verify_dir`] with [`verify_anchored`]'s check of `anchors`.
pub fn verify_dir_anchored(
    dir: &std::path::Path,
    anchors: &[Anchor],
) -> Result<core::result::Result<VerifyReport, AuditBreak>> {
    verify_dir_against(dir, anchors.into())
}

/// [`verify_dir_anchored`] with the records known held in memory or read from an export file
/// beside the store's ([`Against`]).
pub fn verify_dir_against(
    dir: &std::path::Path,
    known: Against<'_>,
) -> Result<core::result::Result<VerifyReport, AuditBreak>> {
    let config = crate::CaConfig::load(&dir.join(crate::material::files::CONFIG))?;
    let key = audit_public_key(dir)?;
    let iss = config.trust_domain.id().as_str().to_owned();
    // Streamed: the records are read, checked and dropped one at a time.
    let mut verifier = TrailVerifier::against(&key, &iss, known);
    config.visit_audit(dir, None, &mut verifier)?;
    verifier.read_export_rest()?;
    Ok(verifier.finish())
}

/// Writes the audit trail of `dir` as JSON lines ([`ExportLine`]): each writer's records from
/// its first with `ts >= since` on, without gaps (every record when `None`), by writer and
/// sequence, after each pruned chain's base and before every checkpoint.
pub fn export_dir(
    dir: &std::path::Path,
    since: Option<u64>,
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    let config = crate::CaConfig::load(&dir.join(crate::material::files::CONFIG))?;
    let mut export = Exporter {
        out,
        checkpoints: Vec::new(),
        lines: 0,
    };
    config.visit_audit(dir, since, &mut export)?;
    // The checkpoints after the records they sign.
    for c in std::mem::take(&mut export.checkpoints) {
        export.line(&ExportLine::Checkpoint {
            writer: c.writer,
            seq: c.seq,
            jws: c.jws,
        })?;
    }
    export
        .out
        .flush()
        .map_err(|e| CaError::Store(format!("audit export: {e}")))?;
    Ok(export.lines)
}

/// [`export_dir`]'s [`AuditVisitor`]: writes each record as it is read.
struct Exporter<'a> {
    out: &'a mut dyn std::io::Write,
    checkpoints: Vec<CheckpointRecord>,
    lines: u64,
}

impl Exporter<'_> {
    fn line(&mut self, line: &ExportLine) -> Result<()> {
        serde_json::to_writer(&mut *self.out, line).map_err(|e| CaError::Store(e.to_string()))?;
        self.out
            .write_all(b"\n")
            .map_err(|e| CaError::Store(format!("audit export: {e}")))?;
        self.lines += 1;
        Ok(())
    }
}

impl AuditVisitor for Exporter<'_> {
    fn head(&mut self, head: AuditHead) -> Result<()> {
        // Where each pruned chain starts, first: an offline checker links its first record
        // there.
        for b in head.bases {
            self.line(&ExportLine::Base {
                writer: b.writer,
                seq: b.seq,
                jws: b.jws,
            })?;
        }
        self.checkpoints = head.checkpoints;
        Ok(())
    }

    fn record(&mut self, r: &AuditRecord) -> Result<ControlFlow<()>> {
        let body: RecordBody = serde_json::from_str(&r.body).map_err(|e| {
            CaError::Store(format!(
                "audit record {} of {:?} is not a record: {e}",
                r.seq, r.writer
            ))
        })?;
        self.line(&ExportLine::Record {
            body: Box::new(body),
            text: r.body.clone(),
            hash: r.hash.clone(),
        })?;
        Ok(ControlFlow::Continue(()))
    }
}
