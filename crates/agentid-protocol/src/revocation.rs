//! Signed, sequenced revocation lists (`agentid-revocations+jwt`).
//!
//! A list applies only within its own trust domain: to agents and task identities of that
//! domain, to `jti`s issued by them (or by the domain's authority), and to keys bound to them.
//! Lookups are O(1): every entry is kept as a 128-bit digest of its kind and value.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::bundle::BundleSet;
use crate::crypto::{sha256, verify, JwsSigner};
use crate::encoding::{b64_decode, parse_ijson_object};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{AgentId, IdKind, SpiffeId, TaskId, TrustDomain};
use crate::jws::{parse_header, sign_compact, RawToken, TokenType};
use crate::token::claims::{check_members, get_str, get_time, valid_jti};

/// Maximum size of a revocation list token (large lists are expected: entries are short-lived
/// but there may be many).
pub const MAX_LIST_BYTES: usize = 256 * 1024 * 1024;

/// Default `next_update`: ten minutes after `iat`.
pub const DEFAULT_NEXT_UPDATE: u64 = 600;

const LIST_CLAIMS: &[&str] = &["iss", "seq", "iat", "next_update", "entries"];

fn bad(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadRevocationList, detail)
}

/// What an entry revokes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RevocationTarget {
    /// A token, by `jti`, scoped by its issuer.
    Jti {
        /// The token's issuer (`iss`).
        iss: SpiffeId,
        /// The token's `jti`.
        jti: String,
    },
    /// Every chain of a task.
    Task(TaskId),
    /// Every task of an agent.
    Agent(AgentId),
    /// A key, by RFC 7638 thumbprint (a certificate is revoked through its key).
    Key(String),
}

/// One entry: a target and the time after which it can no longer hit anything.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RevocationEntry {
    /// What is revoked.
    pub target: RevocationTarget,
    /// When everything the entry could hit has expired, plus skew.
    pub exp: u64,
}

fn digest(kind: u8, a: &str, b: &str) -> [u8; 16] {
    let mut buf = Vec::with_capacity(2 + a.len() + b.len());
    buf.push(kind);
    buf.extend_from_slice(a.as_bytes());
    buf.push(0);
    buf.extend_from_slice(b.as_bytes());
    let h = sha256(&buf);
    let mut out = [0u8; 16];
    out.copy_from_slice(h.get(..16).unwrap_or(&[0u8; 16]));
    out
}

const K_JTI: u8 = 1;
const K_TASK: u8 = 2;
const K_AGENT: u8 = 3;
const K_KEY: u8 = 4;

/// A verified revocation list of one trust domain.
#[derive(Clone, Debug)]
pub struct RevocationList {
    issuer: TrustDomain,
    seq: u64,
    iat: u64,
    next_update: u64,
    len: usize,
    /// Entry digest -> the latest `exp` among the entries with that digest.
    set: HashMap<[u8; 16], u64>,
}

impl RevocationList {
    /// Verifies a signed list against the `agentid-revocation` keys of `bundles`: the key is found
    /// by `kid`, the signature checked, and only then the claims read; `iss` must be the domain
    /// whose bundle holds the key. Any failure is `bad_revocation_list` (an invalid list is an
    /// error even where stale or missing lists are tolerated).
    pub fn verify(compact: &str, bundles: &BundleSet) -> Result<Self> {
        if compact.len() > MAX_LIST_BYTES {
            return Err(bad("revocation list too large"));
        }
        let mut parts = compact.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a JWS compact token"));
        };
        if h.is_empty() || p.is_empty() || s.is_empty() {
            return Err(bad("empty JWS part"));
        }
        let raw = RawToken {
            text: compact,
            header_b64: h,
            payload_b64: p,
            signature_b64: s,
        };
        let header = parse_header(&raw, TokenType::Revocations).map_err(|e| bad(e.to_string()))?;
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| bad("revocation list without `kid`"))?;
        let mut found = None;
        for b in bundles.iter() {
            for k in b.revocation_keys() {
                if k.kid == kid {
                    if found.is_some() {
                        return Err(bad("revocation key `kid` found in more than one bundle"));
                    }
                    found = Some((b.trust_domain().clone(), k.key.clone()));
                }
            }
        }
        let (domain, key) = found.ok_or_else(|| bad("revocation list signed by an unknown key"))?;
        let sig = b64_decode(s).map_err(|e| bad(e.to_string()))?;
        verify(&key, header.alg, raw.signing_input(), &sig).map_err(|e| bad(e.to_string()))?;
        let payload = b64_decode(p).map_err(|e| bad(e.to_string()))?;
        let map = parse_ijson_object(&payload).map_err(|e| bad(e.to_string()))?;
        Self::from_claims(&map, &domain).map_err(|e| bad(e.detail().to_owned()))
    }

    fn from_claims(map: &Map<String, Value>, domain: &TrustDomain) -> Result<Self> {
        check_members(map, LIST_CLAIMS, LIST_CLAIMS)?;
        let iss = SpiffeId::parse(get_str(map, "iss")?)?;
        if iss != domain.id() {
            return Err(bad(
                "`iss` is not the trust domain whose bundle holds the signing key",
            ));
        }
        let seq = get_time(map, "seq")?;
        let iat = get_time(map, "iat")?;
        let next_update = get_time(map, "next_update")?;
        if next_update < iat {
            return Err(bad("`next_update` before `iat`"));
        }
        let Some(Value::Array(entries)) = map.get("entries") else {
            return Err(bad("`entries` must be an array"));
        };
        let mut set: HashMap<[u8; 16], u64> = HashMap::with_capacity(entries.len());
        for e in entries {
            let entry = parse_entry(e, domain)?;
            let exp = set.entry(entry_digest(&entry.target)).or_insert(entry.exp);
            *exp = (*exp).max(entry.exp);
        }
        Ok(Self {
            issuer: domain.clone(),
            seq,
            iat,
            next_update,
            len: entries.len(),
            set,
        })
    }

    /// The trust domain whose authority signed the list.
    pub fn issuer(&self) -> &TrustDomain {
        &self.issuer
    }

    /// The list's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Issued-at.
    pub fn iat(&self) -> u64 {
        self.iat
    }

    /// When the next list is due; past `next_update + skew` this one is stale.
    pub fn next_update(&self) -> u64 {
        self.next_update
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the list is stale at `now` with `skew`.
    pub fn is_stale(&self, now: u64, skew: u64) -> bool {
        now >= self.next_update.saturating_add(skew)
    }

    /// Whether the list has an entry for `target`, whatever that entry's `exp` (only targets of
    /// the list's own domain can match). See [`RevocationList::revokes`] for the check at a time.
    pub fn contains(&self, target: &RevocationTarget) -> bool {
        self.set.contains_key(&entry_digest(target))
    }

    /// Whether `target` is revoked at `now`: an entry applies while `now < exp`.
    pub fn revokes(&self, target: &RevocationTarget, now: u64) -> bool {
        self.hit(&entry_digest(target), now)
    }

    fn hit(&self, digest: &[u8; 16], now: u64) -> bool {
        self.set.get(digest).is_some_and(|exp| now < *exp)
    }

    pub(crate) fn has_jti(&self, iss: &SpiffeId, jti: &str, now: u64) -> bool {
        self.hit(&digest(K_JTI, iss.as_str(), jti), now)
    }

    pub(crate) fn has_task(&self, task: &TaskId, now: u64) -> bool {
        self.hit(&digest(K_TASK, task.as_str(), ""), now)
    }

    pub(crate) fn has_agent(&self, agent: &AgentId, now: u64) -> bool {
        self.hit(&digest(K_AGENT, agent.as_str(), ""), now)
    }

    pub(crate) fn has_key(&self, jkt: &str, now: u64) -> bool {
        self.hit(&digest(K_KEY, jkt, ""), now)
    }

    /// Whether a peer (its certificate identity and key) is revoked by this list, counting every
    /// entry whatever its `exp`: by key thumbprint, by agent, or by task, where the peer is of
    /// this list's trust domain. Verifiers use [`RevocationList::covers_peer_at`].
    pub fn covers_peer(&self, peer: &SpiffeId, key: &crate::PublicKey) -> bool {
        self.covers_peer_at(peer, key, 0)
    }

    /// Whether a peer is revoked at `now` (entries apply while `now < exp`): by its certificate
    /// key's thumbprint, then its agent, then its task, where the peer is of this list's domain.
    pub fn covers_peer_at(&self, peer: &SpiffeId, key: &crate::PublicKey, now: u64) -> bool {
        if peer.trust_domain() != self.issuer {
            return false;
        }
        if self.has_key(&key.thumbprint(), now) {
            return true;
        }
        match crate::id::PeerId::parse(peer.as_str()) {
            Ok(crate::id::PeerId::Task(t)) => {
                self.has_agent(&t.agent(), now) || self.has_task(&t.task_id(), now)
            }
            _ => false,
        }
    }
}

fn entry_digest(t: &RevocationTarget) -> [u8; 16] {
    match t {
        RevocationTarget::Jti { iss, jti } => digest(K_JTI, iss.as_str(), jti),
        RevocationTarget::Task(t) => digest(K_TASK, t.as_str(), ""),
        RevocationTarget::Agent(a) => digest(K_AGENT, a.as_str(), ""),
        RevocationTarget::Key(k) => digest(K_KEY, k, ""),
    }
}

fn valid_jkt(s: &str) -> bool {
    s.len() == 43 && b64_decode(s).map(|b| b.len() == 32).unwrap_or(false)
}

fn parse_entry(e: &Value, domain: &TrustDomain) -> Result<RevocationEntry> {
    let Value::Object(m) = e else {
        return Err(bad("entries must be objects"));
    };
    let exp = get_time(m, "exp")?;
    let mut names: Vec<&str> = m
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "exp")
        .collect();
    names.sort_unstable();
    let target = match names.as_slice() {
        ["iss", "jti"] => {
            let iss = SpiffeId::parse(get_str(m, "iss")?)?;
            if iss.trust_domain() != *domain
                || !matches!(iss.kind(), IdKind::TrustDomain | IdKind::Task)
            {
                return Err(bad(
                    "a `jti` entry's `iss` must be this domain's authority or one of its tasks",
                ));
            }
            let jti = get_str(m, "jti")?;
            if !valid_jti(jti) {
                return Err(bad("invalid `jti` in entry"));
            }
            RevocationTarget::Jti {
                iss,
                jti: jti.to_owned(),
            }
        }
        ["task"] => RevocationTarget::Task(TaskId::parse(get_str(m, "task")?)?),
        ["agent"] => {
            let a = AgentId::parse(get_str(m, "agent")?)?;
            if a.trust_domain() != *domain {
                return Err(bad("an `agent` entry must name an agent of this domain"));
            }
            RevocationTarget::Agent(a)
        }
        ["jkt"] => {
            let k = get_str(m, "jkt")?;
            if !valid_jkt(k) {
                return Err(bad("`jkt` must be a base64url SHA-256 thumbprint"));
            }
            RevocationTarget::Key(k.to_owned())
        }
        other => return Err(bad(format!("unknown revocation entry kind {other:?}"))),
    };
    Ok(RevocationEntry { target, exp })
}

fn entry_value(e: &RevocationEntry) -> Value {
    let mut m = Map::new();
    match &e.target {
        RevocationTarget::Jti { iss, jti } => {
            m.insert("jti".into(), Value::from(jti.as_str()));
            m.insert("iss".into(), Value::from(iss.as_str()));
        }
        RevocationTarget::Task(t) => {
            m.insert("task".into(), Value::from(t.as_str()));
        }
        RevocationTarget::Agent(a) => {
            m.insert("agent".into(), Value::from(a.as_str()));
        }
        RevocationTarget::Key(k) => {
            m.insert("jkt".into(), Value::from(k.as_str()));
        }
    }
    m.insert("exp".into(), Value::from(e.exp));
    Value::Object(m)
}

/// Builds and signs a revocation list with a trust domain's revocation key.
#[derive(Debug)]
#[must_use]
pub struct RevocationListBuilder {
    issuer: TrustDomain,
    seq: u64,
    iat: u64,
    next_update: u64,
    entries: Vec<RevocationEntry>,
}

impl RevocationListBuilder {
    /// A list of `issuer` with sequence `seq`, issued at `iat`, due again at `next_update`.
    pub fn new(issuer: &TrustDomain, seq: u64, iat: u64, next_update: u64) -> Self {
        Self {
            issuer: issuer.clone(),
            seq,
            iat,
            next_update,
            entries: Vec::new(),
        }
    }

    /// Revokes a token by issuer and `jti`.
    pub fn revoke_jti(self, iss: &SpiffeId, jti: &str, exp: u64) -> Self {
        self.entry(
            RevocationTarget::Jti {
                iss: iss.clone(),
                jti: jti.to_owned(),
            },
            exp,
        )
    }

    /// Revokes every chain of a task.
    pub fn revoke_task(self, task: &TaskId, exp: u64) -> Self {
        self.entry(RevocationTarget::Task(task.clone()), exp)
    }

    /// Revokes every task of an agent.
    pub fn revoke_agent(self, agent: &AgentId, exp: u64) -> Self {
        self.entry(RevocationTarget::Agent(agent.clone()), exp)
    }

    /// Revokes a key (and so every certificate and link bound to it) by RFC 7638 thumbprint.
    pub fn revoke_key(self, jkt: &str, exp: u64) -> Self {
        self.entry(RevocationTarget::Key(jkt.to_owned()), exp)
    }

    /// Adds an entry.
    pub fn entry(mut self, target: RevocationTarget, exp: u64) -> Self {
        self.entries.push(RevocationEntry { target, exp });
        self
    }

    /// Signs the list. Entries outside the issuer's trust domain are refused.
    pub fn sign(self, key: &dyn JwsSigner) -> Result<String> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let v = entry_value(e);
            parse_entry(&v, &self.issuer)?;
            entries.push(v);
        }
        let mut m = Map::new();
        m.insert("iss".into(), Value::from(self.issuer.id().as_str()));
        m.insert("seq".into(), Value::from(self.seq));
        m.insert("iat".into(), Value::from(self.iat));
        m.insert("next_update".into(), Value::from(self.next_update));
        m.insert("entries".into(), Value::Array(entries));
        let payload = serde_json::to_vec(&Value::Object(m)).map_err(|e| bad(e.to_string()))?;
        let kid = key.public_key().thumbprint();
        sign_compact(
            TokenType::Revocations,
            key.algorithm(),
            Some(&kid),
            &payload,
            |input| key.sign(input),
        )
    }
}
