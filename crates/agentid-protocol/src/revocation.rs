//! Signed, sequenced revocation lists (`agentid-revocations+jwt`).
//!
//! A list applies only within its own trust domain: to agents and task identities of that
//! domain, to `jti`s issued by them (or by the domain's authority), and to keys bound to them.
//! Lookups are O(1) and exact: every entry is kept as the full 128-bit digest of its kind and
//! value, in one sorted array with a radix index over the digests' leading bits (about 22 bytes
//! per entry: a million entries keep 21 MiB).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::bundle::BundleSet;
use crate::crypto::{sha256, verify, JwsSigner};
use crate::encoding::{b64_decode, StrictValue};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{AgentId, IdKind, SpiffeId, TaskId, TrustDomain};
use crate::jws::{parse_header, sign_compact, split_parts, TokenType};
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
    // Short inputs (the common case) are assembled on the stack.
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let len = 2 + a.len() + b.len();
    let buf: &mut [u8] = match stack.get_mut(..len) {
        Some(b) => b,
        None => {
            heap.resize(len, 0);
            &mut heap
        }
    };
    let (head, rest) = buf.split_at_mut(1 + a.len());
    if let Some((k, a_out)) = head.split_first_mut() {
        *k = kind;
        a_out.copy_from_slice(a.as_bytes());
    }
    if let Some((zero, b_out)) = rest.split_first_mut() {
        *zero = 0;
        b_out.copy_from_slice(b.as_bytes());
    }
    let h = sha256(buf);
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
    set: DigestSet,
}

impl RevocationList {
    /// Rules R1 to R7 (spec/PROTOCOL.md section 14.1; R8 is [`crate::VerifierConfig::apply_revocation_list`]).
    /// Verifies a signed list against the `agentid-revocation` keys of `bundles`: the key is found
    /// by `kid`, the signature checked, and only then the claims read; `iss` must be the domain
    /// whose bundle holds the key. Any failure is `bad_revocation_list` (an invalid list is an
    /// error even where stale or missing lists are tolerated).
    pub fn verify(compact: &str, bundles: &BundleSet) -> Result<Self> {
        // R1: the list's own cap, then the JWS framing of every token.
        if compact.len() > MAX_LIST_BYTES {
            return Err(bad("revocation list too large"));
        }
        let raw = split_parts(compact).map_err(|e| bad(e.to_string()))?;
        // R2.
        let header = parse_header(&raw, TokenType::Revocations).map_err(|e| bad(e.to_string()))?;
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| bad("revocation list without `kid`"))?;
        // R3.
        let (domain, key) = bundles
            .find_revocation_key(kid)
            .map(|(d, k)| (d.clone(), k.clone()))
            .ok_or_else(|| bad("revocation list signed by a key that no bundle holds"))?;
        // R4.
        let sig = b64_decode(raw.signature_b64).map_err(|e| bad(e.to_string()))?;
        verify(&key, header.alg, raw.signing_input(), &sig).map_err(|e| bad(e.to_string()))?;
        // R5 to R7.
        let payload = b64_decode(raw.payload_b64).map_err(|e| bad(e.to_string()))?;
        Self::from_payload(&payload, &domain).map_err(|e| bad(e.detail().to_owned()))
    }

    /// Parses the claims in one pass. The entries are read one at a time, checked, and kept
    /// only as digests: a list of a million entries never exists as a JSON tree in memory
    /// (which took about 0.9 GB, most of it kept by the allocator afterwards). The I-JSON rules
    /// are those of every token: UTF-8, unique member names, nesting depth, no trailing data.
    fn from_payload(payload: &[u8], domain: &TrustDomain) -> Result<Self> {
        let json = |why: String| Error::new(ErrorCode::BadJson, why);
        let text = core::str::from_utf8(payload).map_err(|e| json(format!("not UTF-8: {e}")))?;
        let mut de = serde_json::Deserializer::from_str(text);
        let claims = ListSeed { domain }
            .deserialize(&mut de)
            .map_err(|e| bad(format!("not I-JSON or a bad entry: {e}")))?;
        de.end().map_err(|e| json(format!("trailing data: {e}")))?;
        let (map, set, len) = claims;
        Self::from_claims(&map, domain, set, len)
    }

    fn from_claims(
        map: &Map<String, Value>,
        domain: &TrustDomain,
        set: DigestSet,
        len: usize,
    ) -> Result<Self> {
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
        Ok(Self {
            issuer: domain.clone(),
            seq,
            iat,
            next_update,
            len,
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
        self.set.get(&entry_digest(target)).is_some()
    }

    /// Whether `target` is revoked at `now`: an entry applies while `now < exp`.
    pub fn revokes(&self, target: &RevocationTarget, now: u64) -> bool {
        self.hit(&entry_digest(target), now)
    }

    fn hit(&self, digest: &[u8; 16], now: u64) -> bool {
        self.set.get(digest).is_some_and(|exp| now < exp)
    }

    pub(crate) fn has_jti(&self, iss: &SpiffeId, jti: &str, now: u64) -> bool {
        self.hit(&digest(K_JTI, iss.as_str(), jti), now)
    }

    pub(crate) fn has_task(&self, task: &TaskId, now: u64) -> bool {
        self.hit(&digest(K_TASK, task.as_str(), ""), now)
    }

    /// Whether the list has the agent entry of an agent ID given as its canonical string.
    pub(crate) fn has_agent_str(&self, agent: &str, now: u64) -> bool {
        self.hit(&digest(K_AGENT, agent, ""), now)
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
        // Rule 6.3, for a list of the peer's own domain.
        peer.trust_domain() == self.issuer
            && crate::verifier::peer_revoked(Some(self), peer, &key.thumbprint(), now)
    }
}

/// The list's claims object: every member but `entries` as a value (with a `null` standing in
/// for `entries`, so that the member checks see it), and the entries as digests.
struct ListSeed<'a> {
    domain: &'a TrustDomain,
}

type ListClaims = (Map<String, Value>, DigestSet, usize);

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ListClaims;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> core::result::Result<ListClaims, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ListClaims;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> core::result::Result<ListClaims, A::Error> {
        let mut out = Map::new();
        let mut entries: Option<(DigestSet, usize)> = None;
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate member name {key:?}"
                )));
            }
            if key == "entries" {
                entries = Some(map.next_value_seed(EntriesSeed {
                    domain: self.domain,
                })?);
                out.insert(key, Value::Null);
            } else {
                let value = map.next_value_seed(StrictValue::at_depth(1))?;
                out.insert(key, value);
            }
        }
        let (set, len) = entries.unwrap_or_default();
        Ok((out, set, len))
    }
}

/// The `entries` array, read entry by entry into digests (latest `exp` per digest).
struct EntriesSeed<'a> {
    domain: &'a TrustDomain,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = (DigestSet, usize);
    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = (DigestSet, usize);

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("`entries` must be an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> core::result::Result<Self::Value, A::Error> {
        let mut digests: Vec<([u8; 16], u64)> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        // The array is at depth 2 (a member of the top object); its entries at depth 3.
        while let Some(e) = seq.next_element_seed(StrictValue::at_depth(2))? {
            let entry = parse_entry(&e, self.domain).map_err(|x| de::Error::custom(x.detail()))?;
            digests.push((entry_digest(&entry.target), entry.exp));
        }
        let len = digests.len();
        let set = DigestSet::new(digests)
            .ok_or_else(|| de::Error::custom("too many revocation entries"))?;
        Ok((set, len))
    }
}

/// Entry digests and, for each, the latest `exp` among the entries with that digest: one array
/// sorted by digest, and a radix index from the digests' leading `bits` bits to the range of the
/// array that holds them. Digests are SHA-256 outputs, so the ranges hold about one to two
/// entries each, and a lookup reads one index pair and one short range: O(1), and exact (the
/// whole 128-bit digest is compared; nothing is answered from a prefix alone).
#[derive(Clone)]
struct DigestSet {
    /// How many leading bits of a digest key the index: `floor(log2(n))`, at most 24.
    bits: u32,
    /// `index[p]..index[p + 1]` is the range of slots whose digests start with the prefix `p`
    /// (`2^bits + 1` offsets).
    index: Box<[u32]>,
    slots: Slots,
}

/// The sorted slots. `exp`s are kept as 32-bit offsets from the smallest when they all fit (any
/// list whose entries expire within 136 years of each other), as themselves otherwise.
#[derive(Clone)]
enum Slots {
    Narrow { base: u64, slots: Box<[Slot<u32>]> },
    Wide(Box<[Slot<u64>]>),
}

#[derive(Clone, Copy)]
struct Slot<E> {
    digest: [u8; 16],
    exp: E,
}

/// The index bucket of a digest: its leading `bits` bits (`bits` <= 24).
fn prefix(digest: &[u8; 16], bits: u32) -> usize {
    let [a, b, c, d, ..] = *digest;
    let lead = u64::from(u32::from_be_bytes([a, b, c, d]));
    usize::try_from(lead >> (32 - bits.min(24))).unwrap_or(0)
}

fn find<E: Copy>(slots: &[Slot<E>], digest: &[u8; 16]) -> Option<E> {
    let i = slots.binary_search_by(|s| s.digest.cmp(digest)).ok()?;
    slots.get(i).map(|s| s.exp)
}

impl DigestSet {
    /// The set of `entries` (digest, `exp`), in any order and with repeated digests (the
    /// latest `exp` wins). `None` past `u32::MAX` distinct digests (a list under
    /// [`MAX_LIST_BYTES`] has far fewer).
    fn new(mut entries: Vec<([u8; 16], u64)>) -> Option<Self> {
        entries.sort_unstable_by_key(|e| e.0);
        // `dedup_by` hands (later, kept): a repeated digest folds its `exp` into the kept one.
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.max(later.1);
            }
            same
        });
        let n = entries.len();
        u32::try_from(n).ok()?;
        let bits = n.checked_ilog2().unwrap_or(0).min(24);
        let mut index = vec![0u32; (1usize << bits) + 1].into_boxed_slice();
        for (digest, _) in &entries {
            let count = index.get_mut(prefix(digest, bits) + 1)?;
            *count += 1;
        }
        let mut total = 0u32;
        for offset in index.iter_mut() {
            total += *offset;
            *offset = total;
        }
        let min = entries.iter().map(|e| e.1).min().unwrap_or(0);
        let max = entries.iter().map(|e| e.1).max().unwrap_or(0);
        let slots = if max - min <= u64::from(u32::MAX) {
            Slots::Narrow {
                base: min,
                slots: entries
                    .iter()
                    .map(|&(digest, exp)| Slot {
                        digest,
                        exp: u32::try_from(exp - min).unwrap_or(u32::MAX),
                    })
                    .collect(),
            }
        } else {
            Slots::Wide(
                entries
                    .iter()
                    .map(|&(digest, exp)| Slot { digest, exp })
                    .collect(),
            )
        };
        Some(Self { bits, index, slots })
    }

    /// The latest `exp` of the entries with exactly this digest.
    fn get(&self, digest: &[u8; 16]) -> Option<u64> {
        let p = prefix(digest, self.bits);
        let lo = usize::try_from(*self.index.get(p)?).ok()?;
        let hi = usize::try_from(*self.index.get(p + 1)?).ok()?;
        match &self.slots {
            Slots::Narrow { base, slots } => {
                find(slots.get(lo..hi)?, digest).map(|d| base + u64::from(d))
            }
            Slots::Wide(slots) => find(slots.get(lo..hi)?, digest),
        }
    }

    /// Number of distinct digests.
    fn distinct(&self) -> usize {
        match &self.slots {
            Slots::Narrow { slots, .. } => slots.len(),
            Slots::Wide(slots) => slots.len(),
        }
    }
}

impl Default for DigestSet {
    fn default() -> Self {
        Self {
            bits: 0,
            index: Box::new([0, 0]),
            slots: Slots::Narrow {
                base: 0,
                slots: Box::new([]),
            },
        }
    }
}

impl core::fmt::Debug for DigestSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DigestSet")
            .field("distinct", &self.distinct())
            .field("index_bits", &self.bits)
            .finish_non_exhaustive()
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
    crate::refs::Jkt::parse(s).is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, AuthorityKey, TrustBundle};

    fn setup() -> (AuthorityKey, BundleSet, TrustDomain) {
        let td = TrustDomain::parse("example.org").unwrap();
        let key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let mut bundles = BundleSet::new();
        bundles
            .insert(TrustBundle::new(td.clone(), 1).add_revocation_key(JwsSigner::public_key(&key)))
            .unwrap();
        (key, bundles, td)
    }

    /// A list with exactly these payload bytes, correctly signed (built by hand: the builders
    /// refuse to sign malformed claims).
    fn signed(key: &AuthorityKey, payload: &str) -> String {
        let kid = JwsSigner::public_key(key).thumbprint();
        let header = format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"agentid-revocations+jwt"}}"#);
        let input = format!(
            "{}.{}",
            crate::encoding::b64_encode(header.as_bytes()),
            crate::encoding::b64_encode(payload.as_bytes())
        );
        let sig = JwsSigner::sign(key, input.as_bytes()).unwrap();
        format!("{input}.{}", crate::encoding::b64_encode(&sig))
    }

    const JKT: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    /// A deterministic pseudo-random digest (SHA-256 of the counter).
    fn d(i: u64) -> [u8; 16] {
        sha256(&i.to_le_bytes())
            .get(..16)
            .and_then(|x| <[u8; 16]>::try_from(x).ok())
            .unwrap()
    }

    #[test]
    fn digest_set_answers_exactly_what_a_map_answers() {
        for n in [0u64, 1, 2, 3, 7, 8, 1000, 4099] {
            let entries: Vec<_> = (0..n).map(|i| (d(i), 1000 + i % 7)).collect();
            let model: std::collections::HashMap<_, _> = entries.iter().copied().collect();
            let set = DigestSet::new(entries).unwrap();
            assert_eq!(set.distinct(), model.len());
            assert_eq!(1usize << set.bits, set.index.len() - 1, "n = {n}");
            for i in 0..n {
                assert_eq!(
                    set.get(&d(i)),
                    model.get(&d(i)).copied(),
                    "n = {n}, i = {i}"
                );
            }
            for i in n..n + 2000 {
                assert_eq!(set.get(&d(i)), None, "n = {n}, absent {i}");
            }
        }
    }

    #[test]
    fn digests_that_share_a_prefix_are_told_apart() {
        // Every entry lands in the same index bucket and agrees with the probes on 15 of 16
        // bytes (or on all but one bit): only the whole digest answers.
        let base = d(42);
        let mut entries = Vec::new();
        for (k, byte) in [2usize, 3, 8, 15].into_iter().enumerate() {
            let mut x = base;
            x[byte] ^= 0x01;
            entries.push((x, 100 + k as u64));
        }
        entries.push((base, 7));
        let set = DigestSet::new(entries.clone()).unwrap();
        for (x, exp) in &entries {
            assert_eq!(set.get(x), Some(*exp));
        }
        for byte in 0..16 {
            for bit in 0..8 {
                let mut probe = base;
                probe[byte] ^= 1 << bit;
                let expected = entries.iter().find(|(x, _)| *x == probe).map(|e| e.1);
                assert_eq!(set.get(&probe), expected, "byte {byte} bit {bit}");
            }
        }
        let mut high = base;
        high[15] = base[15].wrapping_add(0x80);
        assert_eq!(set.get(&high), None);
    }

    #[test]
    fn an_empty_set_holds_nothing() {
        for set in [DigestSet::new(Vec::new()).unwrap(), DigestSet::default()] {
            assert_eq!(set.distinct(), 0);
            assert_eq!(set.get(&[0; 16]), None);
            assert_eq!(set.get(&[0xff; 16]), None);
            assert_eq!(set.get(&d(1)), None);
        }
    }

    #[test]
    fn repeated_digests_keep_the_latest_exp_in_any_order() {
        let entries = vec![(d(1), 50), (d(2), 9), (d(1), 70), (d(1), 60), (d(2), 3)];
        for rotation in 0..entries.len() {
            let mut e = entries.clone();
            e.rotate_left(rotation);
            let set = DigestSet::new(e).unwrap();
            assert_eq!(set.distinct(), 2);
            assert_eq!(set.get(&d(1)), Some(70));
            assert_eq!(set.get(&d(2)), Some(9));
        }
    }

    #[test]
    fn exps_far_apart_are_kept_whole() {
        let far = (1u64 << 53) - 1;
        let set = DigestSet::new(vec![(d(1), 0), (d(2), far), (d(3), 5)]).unwrap();
        assert!(matches!(set.slots, Slots::Wide(_)));
        assert_eq!(set.get(&d(1)), Some(0));
        assert_eq!(set.get(&d(2)), Some(far));
        assert_eq!(set.get(&d(3)), Some(5));
        let near = DigestSet::new(vec![(d(1), far - u64::from(u32::MAX)), (d(2), far)]).unwrap();
        assert!(matches!(near.slots, Slots::Narrow { .. }));
        assert_eq!(near.get(&d(1)), Some(far - u64::from(u32::MAX)));
        assert_eq!(near.get(&d(2)), Some(far));
    }

    #[test]
    fn every_entry_kind_is_found_and_only_its_own_kind() {
        let (key, bundles, td) = setup();
        let iss = SpiffeId::parse("spiffe://example.org").unwrap();
        let task = TaskId::parse("aaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let other_task = TaskId::parse("aaaaaaaaaaaaaaaaaaaaaaaaab").unwrap();
        let agent = AgentId::new(&td, "alice").unwrap();
        let jkt_b = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB";
        let signed = RevocationListBuilder::new(&td, 1, 10, 20)
            .revoke_jti(&iss, "jti-1", 1000)
            .revoke_task(&task, 1000)
            .revoke_agent(&agent, 1000)
            .revoke_key(JKT, 1000)
            .revoke_key(JKT, 500)
            .sign(&key)
            .unwrap();
        let list = RevocationList::verify(&signed, &bundles).unwrap();
        assert_eq!(list.len(), 5, "every entry counts, repeated or not");
        let present = [
            RevocationTarget::Jti {
                iss: iss.clone(),
                jti: "jti-1".into(),
            },
            RevocationTarget::Task(task.clone()),
            RevocationTarget::Agent(agent.clone()),
            RevocationTarget::Key(JKT.into()),
        ];
        for t in &present {
            assert!(list.contains(t), "{t:?}");
            assert!(list.revokes(t, 999), "{t:?}");
            assert!(!list.revokes(t, 1000), "{t:?} after its exp");
        }
        assert!(list.has_jti(&iss, "jti-1", 0));
        assert!(list.has_task(&task, 0));
        assert!(list.has_agent_str(agent.as_str(), 0));
        assert!(list.has_key(JKT, 0));
        let absent = [
            RevocationTarget::Jti {
                iss: iss.clone(),
                jti: "jti-2".into(),
            },
            RevocationTarget::Jti {
                iss: SpiffeId::parse(&format!("{}/agent/alice/task/{}", iss.as_str(), task))
                    .unwrap(),
                jti: "jti-1".into(),
            },
            RevocationTarget::Task(other_task),
            RevocationTarget::Agent(AgentId::new(&td, "alicf").unwrap()),
            RevocationTarget::Key(jkt_b.into()),
        ];
        for t in &absent {
            assert!(!list.contains(t), "{t:?}");
            assert!(!list.revokes(t, 0), "{t:?}");
        }
        // The same string under another kind is another entry.
        assert!(!list.has_key(agent.as_str(), 0));
        assert!(!list.has_agent_str(task.as_str(), 0));

        let empty = RevocationListBuilder::new(&td, 2, 10, 20)
            .sign(&key)
            .unwrap();
        let empty = RevocationList::verify(&empty, &bundles).unwrap();
        assert!(empty.is_empty());
        for t in present.iter().chain(&absent) {
            assert!(!empty.contains(t), "{t:?}");
        }
    }

    #[test]
    fn streaming_parse_keeps_every_rule() {
        let (key, bundles, td) = setup();
        let head = r#""iss":"spiffe://example.org","seq":1,"iat":10,"next_update":20"#;
        let ok = format!(
            r#"{{"entries":[{{"jkt":"{JKT}","exp":30}},{{"jkt":"{JKT}","exp":40}}],{head}}}"#
        );
        let list = RevocationList::verify(&signed(&key, &ok), &bundles).unwrap();
        assert_eq!(list.len(), 2);
        assert!(
            list.revokes(&RevocationTarget::Key(JKT.into()), 35),
            "the latest exp wins"
        );
        assert!(!list.revokes(&RevocationTarget::Key(JKT.into()), 40));
        assert_eq!(list.issuer(), &td);

        let bad_payloads = [
            // duplicate member names, at the top and inside an entry
            format!(r#"{{"entries":[],"entries":[],{head}}}"#),
            format!(r#"{{"entries":[{{"jkt":"{JKT}","jkt":"{JKT}","exp":1}}],{head}}}"#),
            // entries missing, not an array, an entry not an object, an unknown kind
            format!(r#"{{{head}}}"#),
            format!(r#"{{"entries":{{}},{head}}}"#),
            format!(r#"{{"entries":[1],{head}}}"#),
            format!(r#"{{"entries":[{{"cert":"x","exp":1}}],{head}}}"#),
            // an entry nested beyond the depth cap, an unknown claim, trailing data
            format!(r#"{{"entries":[{{"jkt":[[[[[[[[1]]]]]]]],"exp":1}}],{head}}}"#),
            format!(r#"{{"entries":[],"extra":1,{head}}}"#),
            format!(r#"{{"entries":[],{head}}} x"#),
            // the wrong issuer, a top level that is not an object
            r#"{"entries":[],"iss":"spiffe://other.org","seq":1,"iat":10,"next_update":20}"#
                .to_owned(),
            r#"[]"#.to_owned(),
        ];
        for p in &bad_payloads {
            let err = RevocationList::verify(&signed(&key, p), &bundles).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadRevocationList, "{p}");
        }
    }
}
