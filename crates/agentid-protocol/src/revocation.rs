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
use crate::encoding::{b64_decode, safe_int, write_json_str, write_json_u64, StrictValue};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{AgentId, IdKind, SpiffeId, TaskId, TrustDomain};
use crate::jws::{parse_header, sign_compact_written, split_parts, TokenType};
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

/// The bit of entry kind `kind` in [`RevocationList`]'s `kinds`.
const fn kind_bit(kind: u8) -> u8 {
    1 << kind
}

/// A verified revocation list of one trust domain.
#[derive(Clone, Debug)]
pub struct RevocationList {
    issuer: TrustDomain,
    /// The `kid` of the key that verified the list (its thumbprint): a bundle change that
    /// takes that key from the issuer's bundle orphans the list ([`RevocationList::orphaned`]).
    kid: String,
    /// Whether a bundle change took the list's signing key away after it was applied.
    orphaned: bool,
    seq: u64,
    iat: u64,
    next_update: u64,
    len: usize,
    /// Entry digest -> the latest `exp` among the entries with that digest.
    set: DigestSet,
    /// The entry kinds the list holds (bit `1 << K_*`): a lookup of a kind the list has no
    /// entry of cannot hit, and its digest is not computed.
    kinds: u8,
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
        let mut list =
            Self::from_payload(&payload, &domain).map_err(|e| bad(e.detail().to_owned()))?;
        kid.clone_into(&mut list.kid);
        Ok(list)
    }

    /// Whether the key that verified the list is still a revocation key of the list's trust
    /// domain in `bundles`, as rule R3 would look it up now (spec/PROTOCOL.md 14.1, "Held lists
    /// and bundle changes").
    pub(crate) fn still_anchored(&self, bundles: &BundleSet) -> bool {
        bundles
            .find_revocation_key(&self.kid)
            .is_some_and(|(d, _)| *d == self.issuer)
    }

    /// This list once its signing key left the bundles at `now` (spec/PROTOCOL.md 14.1, "Held
    /// lists and bundle changes"): due again at `now` at the latest (so stale from `now + skew`
    /// on, whatever `next_update` it claimed), and no longer a floor for the next list's `seq`.
    pub(crate) fn orphaned(&self, now: u64) -> Self {
        let mut list = self.clone();
        list.orphaned = true;
        list.next_update = list.next_update.min(now);
        list
    }

    /// Whether a bundle change took this list's signing key away after it was applied: it is
    /// then due again from that change on, and a list of any `seq` replaces it (rule R8).
    pub fn is_orphaned(&self) -> bool {
        self.orphaned
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
        let (map, set, len, kinds) = claims;
        Self::from_claims(&map, domain, set, len, kinds)
    }

    fn from_claims(
        map: &Map<String, Value>,
        domain: &TrustDomain,
        set: DigestSet,
        len: usize,
        kinds: u8,
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
            kid: String::new(),
            orphaned: false,
            seq,
            iat,
            next_update,
            len,
            set,
            kinds,
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
        self.holds(target_kind(target)) && self.set.get(&entry_digest(target)).is_some()
    }

    /// Whether `target` is revoked at `now`: an entry applies while `now < exp`.
    pub fn revokes(&self, target: &RevocationTarget, now: u64) -> bool {
        self.holds(target_kind(target)) && self.hit(&entry_digest(target), now)
    }

    /// Whether the list has any entry of `kind`: only then can a lookup of that kind hit.
    fn holds(&self, kind: u8) -> bool {
        self.kinds & kind_bit(kind) != 0
    }

    fn hit(&self, digest: &[u8; 16], now: u64) -> bool {
        self.set.get(digest).is_some_and(|exp| now < exp)
    }

    pub(crate) fn has_jti(&self, iss: &SpiffeId, jti: &str, now: u64) -> bool {
        self.holds(K_JTI) && self.hit(&digest(K_JTI, iss.as_str(), jti), now)
    }

    pub(crate) fn has_task(&self, task: &TaskId, now: u64) -> bool {
        self.has_task_str(task.as_str(), now)
    }

    /// [`RevocationList::has_task`] for a bare task id given as its string.
    pub(crate) fn has_task_str(&self, task: &str, now: u64) -> bool {
        self.holds(K_TASK) && self.hit(&digest(K_TASK, task, ""), now)
    }

    /// Whether the list has the agent entry of an agent ID given as its canonical string.
    pub(crate) fn has_agent_str(&self, agent: &str, now: u64) -> bool {
        self.holds(K_AGENT) && self.hit(&digest(K_AGENT, agent, ""), now)
    }

    pub(crate) fn has_key(&self, jkt: &str, now: u64) -> bool {
        self.holds(K_KEY) && self.hit(&digest(K_KEY, jkt, ""), now)
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

/// The claims, the entries' digests, their number and the entry kinds seen (`kinds`' bits).
type ListClaims = (Map<String, Value>, DigestSet, usize, u8);

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
        let mut entries: Option<(DigestSet, usize, u8)> = None;
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
        let (set, len, kinds) = entries.unwrap_or_default();
        Ok((out, set, len, kinds))
    }
}

/// The `entries` array, read entry by entry into digests (latest `exp` per digest), with the
/// entry kinds seen.
struct EntriesSeed<'a> {
    domain: &'a TrustDomain,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = (DigestSet, usize, u8);
    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = (DigestSet, usize, u8);

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("`entries` must be an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> core::result::Result<Self::Value, A::Error> {
        let mut digests: Vec<([u8; 16], u64)> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        // The array is at depth 2 (a member of the top object); its entries at depth 3 hold
        // only strings and integers.
        let mut last_iss = None;
        let mut kinds = 0u8;
        while let Some((kind, digest, exp)) = seq.next_element_seed(EntrySeed {
            domain: self.domain,
            last_iss: &mut last_iss,
        })? {
            kinds |= kind_bit(kind);
            digests.push((digest, exp));
        }
        let len = digests.len();
        let set = DigestSet::new(digests)
            .ok_or_else(|| de::Error::custom("too many revocation entries"))?;
        Ok((set, len, kinds))
    }
}

/// One entry object, read member by member into its digest and `exp` (no JSON tree): the rules
/// the entry parser of the tests (`parse_entry`, the former reader) applies to its value. Its members are `exp` (an integer in
/// [0, 2^53-1]) and exactly one entry kind's strings, each once (names compared unescaped),
/// checked by [`check_target`]'s rules; anything else is refused.
struct EntrySeed<'a> {
    domain: &'a TrustDomain,
    /// The last `jti` issuer accepted, as read and as parsed: entries repeat a few issuers, and
    /// the same string parses and checks the same way.
    last_iss: &'a mut Option<(String, SpiffeId)>,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = (u8, [u8; 16], u64);
    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = (u8, [u8; 16], u64);

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("entries must be objects")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> core::result::Result<Self::Value, A::Error> {
        let mut exp: Option<u64> = None;
        let mut strs: [Option<std::borrow::Cow<'de, str>>; 5] = Default::default();
        while let Some(key) = map.next_key_seed(StrSeed)? {
            let i = match key.as_ref() {
                "exp" => {
                    if exp.is_some() {
                        return Err(de::Error::custom("duplicate member name \"exp\""));
                    }
                    exp = Some(map.next_value_seed(TimeSeed)?);
                    continue;
                }
                "iss" => 0,
                "jti" => 1,
                "task" => 2,
                "agent" => 3,
                "jkt" => 4,
                other => {
                    return Err(de::Error::custom(format_args!(
                        "unknown revocation entry member {other:?}"
                    )))
                }
            };
            let slot = strs
                .get_mut(i)
                .ok_or_else(|| de::Error::custom("entry member"))?;
            if slot.is_some() {
                return Err(de::Error::custom(format_args!(
                    "duplicate member name {key:?}"
                )));
            }
            *slot = Some(map.next_value_seed(StrSeed)?);
        }
        let exp = exp.ok_or_else(|| de::Error::custom("missing claim `exp`"))?;
        let err = |e: Error| -> A::Error { de::Error::custom(e.detail()) };
        let (kind, digest) = match strs {
            [Some(iss), Some(jti), None, None, None] => {
                if self.last_iss.as_ref().is_none_or(|(s, _)| *s != *iss) {
                    let id = SpiffeId::parse(&iss).map_err(err)?;
                    check_jti_issuer(&id, self.domain).map_err(err)?;
                    *self.last_iss = Some((iss.into_owned(), id));
                }
                let iss_id = self
                    .last_iss
                    .as_ref()
                    .map(|(_, id)| id.as_str())
                    .ok_or_else(|| de::Error::custom("a `jti` entry's `iss`"))?;
                if !valid_jti(&jti) {
                    return Err(err(bad("invalid `jti` in entry")));
                }
                (K_JTI, digest(K_JTI, iss_id, &jti))
            }
            [None, None, Some(task), None, None] => {
                let t = TaskId::parse(&task).map_err(err)?;
                (K_TASK, digest(K_TASK, t.as_str(), ""))
            }
            [None, None, None, Some(agent), None] => {
                let a = AgentId::parse(&agent).map_err(err)?;
                check_agent(&a, self.domain).map_err(err)?;
                (K_AGENT, digest(K_AGENT, a.as_str(), ""))
            }
            [None, None, None, None, Some(jkt)] => {
                check_jkt(&jkt).map_err(err)?;
                (K_KEY, digest(K_KEY, &jkt, ""))
            }
            _ => return Err(de::Error::custom("unknown revocation entry kind")),
        };
        Ok((kind, digest, exp))
    }
}

/// A JSON string, borrowed from the input where it holds no escape.
struct StrSeed;

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = std::borrow::Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for StrSeed {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> core::result::Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> core::result::Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

/// A time: a JSON integer in [0, 2^53-1] (as [`crate::encoding::json_time`] reads a value).
struct TimeSeed;

impl<'de> DeserializeSeed<'de> for TimeSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> core::result::Result<u64, D::Error> {
        d.deserialize_u64(self)
    }
}

impl<'de> Visitor<'de> for TimeSeed {
    type Value = u64;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("`exp` must be an integer in [0, 2^53-1]")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<u64, E> {
        safe_int(v).ok_or_else(|| E::custom("`exp` must be an integer in [0, 2^53-1]"))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<u64, E> {
        u64::try_from(v)
            .ok()
            .and_then(safe_int)
            .ok_or_else(|| E::custom("`exp` must be an integer in [0, 2^53-1]"))
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

fn target_kind(t: &RevocationTarget) -> u8 {
    match t {
        RevocationTarget::Jti { .. } => K_JTI,
        RevocationTarget::Task(_) => K_TASK,
        RevocationTarget::Agent(_) => K_AGENT,
        RevocationTarget::Key(_) => K_KEY,
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

/// An entry's JSON value read whole (the reader before [`EntrySeed`]): the tests' reference.
#[cfg(test)]
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
        ["iss", "jti"] => RevocationTarget::Jti {
            iss: SpiffeId::parse(get_str(m, "iss")?)?,
            jti: get_str(m, "jti")?.to_owned(),
        },
        ["task"] => RevocationTarget::Task(TaskId::parse(get_str(m, "task")?)?),
        ["agent"] => RevocationTarget::Agent(AgentId::parse(get_str(m, "agent")?)?),
        ["jkt"] => RevocationTarget::Key(get_str(m, "jkt")?.to_owned()),
        other => return Err(bad(format!("unknown revocation entry kind {other:?}"))),
    };
    check_target(&target, domain)?;
    Ok(RevocationEntry { target, exp })
}

/// What a list of `domain` may revoke (rule R6), for the lists read and the lists signed: a
/// `jti` of the domain's authority or of one of its tasks, any task, an agent of the domain,
/// a key by its thumbprint.
fn check_target(target: &RevocationTarget, domain: &TrustDomain) -> Result<()> {
    match target {
        RevocationTarget::Jti { iss, jti } => {
            check_jti_issuer(iss, domain)?;
            if !valid_jti(jti) {
                return Err(bad("invalid `jti` in entry"));
            }
        }
        RevocationTarget::Task(_) => {}
        RevocationTarget::Agent(a) => check_agent(a, domain)?,
        RevocationTarget::Key(k) => check_jkt(k)?,
    }
    Ok(())
}

/// A `jti` entry's issuer: the domain's authority or one of its tasks.
fn check_jti_issuer(iss: &SpiffeId, domain: &TrustDomain) -> Result<()> {
    if iss.trust_domain() != *domain || !matches!(iss.kind(), IdKind::TrustDomain | IdKind::Task) {
        return Err(bad(
            "a `jti` entry's `iss` must be this domain's authority or one of its tasks",
        ));
    }
    Ok(())
}

/// An `agent` entry names an agent of the domain.
fn check_agent(agent: &AgentId, domain: &TrustDomain) -> Result<()> {
    if agent.trust_domain() != *domain {
        return Err(bad("an `agent` entry must name an agent of this domain"));
    }
    Ok(())
}

/// A `jkt` entry is a base64url SHA-256 thumbprint.
fn check_jkt(jkt: &str) -> Result<()> {
    if !valid_jkt(jkt) {
        return Err(bad("`jkt` must be a base64url SHA-256 thumbprint"));
    }
    Ok(())
}

/// Appends one entry of a list of `domain`, checked ([`check_target`], `exp` in
/// [0, 2^53-1]), as the list's payload carries it: the bytes serde_json writes for the entry's
/// object (members in name order, as its map type orders them).
fn write_entry(out: &mut Vec<u8>, e: &RevocationEntry, domain: &TrustDomain) -> Result<()> {
    check_target(&e.target, domain)?;
    let exp = safe_int(e.exp).ok_or_else(|| {
        Error::new(
            ErrorCode::BadClaim,
            "`exp` must be an integer in [0, 2^53-1]",
        )
    })?;
    match &e.target {
        RevocationTarget::Jti { iss, jti } => {
            out.extend_from_slice(br#"{"exp":"#);
            write_json_u64(out, exp)?;
            out.extend_from_slice(br#","iss":"#);
            write_json_str(out, iss.as_str())?;
            out.extend_from_slice(br#","jti":"#);
            write_json_str(out, jti)?;
        }
        RevocationTarget::Task(t) => {
            out.extend_from_slice(br#"{"exp":"#);
            write_json_u64(out, exp)?;
            out.extend_from_slice(br#","task":"#);
            write_json_str(out, t.as_str())?;
        }
        RevocationTarget::Agent(a) => {
            out.extend_from_slice(br#"{"agent":"#);
            write_json_str(out, a.as_str())?;
            out.extend_from_slice(br#","exp":"#);
            write_json_u64(out, exp)?;
        }
        RevocationTarget::Key(k) => {
            out.extend_from_slice(br#"{"exp":"#);
            write_json_u64(out, exp)?;
            out.extend_from_slice(br#","jkt":"#);
            write_json_str(out, k)?;
        }
    }
    out.push(b'}');
    Ok(())
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

    /// Signs the list. Entries outside the issuer's trust domain are refused, and so is a list
    /// every verifier would refuse in R6 (`seq`, `iat` or `next_update` above 2^53 - 1, or
    /// `next_update` before `iat`).
    pub fn sign(self, key: &dyn JwsSigner) -> Result<String> {
        let mut entries = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                entries.push(b',');
            }
            write_entry(&mut entries, e, &self.issuer)?;
        }
        sign_entries(
            &self.issuer,
            self.seq,
            self.iat,
            self.next_update,
            &entries,
            key,
        )
    }

    /// Checks and writes one entry for a list of `issuer` ahead of signing: a publisher that
    /// signs the same entries in list after list keeps them written (see
    /// [`RevocationListBuilder::sign_encoded`]). Refuses what [`RevocationListBuilder::sign`]
    /// refuses.
    pub fn encode_entry(issuer: &TrustDomain, entry: &RevocationEntry) -> Result<EncodedEntry> {
        let mut json = Vec::new();
        write_entry(&mut json, entry, issuer)?;
        Ok(EncodedEntry {
            issuer: issuer.clone(),
            json: json.into_boxed_slice(),
        })
    }

    /// Signs the list of the builder's own entries followed by `encoded`, in that order: the
    /// same bytes [`RevocationListBuilder::sign`] makes from the same entries. An entry
    /// encoded for another trust domain is refused.
    pub fn sign_encoded<'a>(
        self,
        encoded: impl IntoIterator<Item = &'a EncodedEntry>,
        key: &dyn JwsSigner,
    ) -> Result<String> {
        let mut entries = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                entries.push(b',');
            }
            write_entry(&mut entries, e, &self.issuer)?;
        }
        for e in encoded {
            if e.issuer != self.issuer {
                return Err(bad("an entry encoded for another trust domain"));
            }
            if !entries.is_empty() {
                entries.push(b',');
            }
            entries.extend_from_slice(&e.json);
        }
        sign_entries(
            &self.issuer,
            self.seq,
            self.iat,
            self.next_update,
            &entries,
            key,
        )
    }
}

/// One revocation list entry, checked for a trust domain's list and written as the list's
/// payload carries it ([`RevocationListBuilder::encode_entry`]).
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedEntry {
    issuer: TrustDomain,
    json: Box<[u8]>,
}

impl EncodedEntry {
    /// The entry's JSON object, as the list carries it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.json
    }
}

impl core::fmt::Debug for EncodedEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EncodedEntry")
            .field("issuer", &self.issuer)
            .field("json", &String::from_utf8_lossy(&self.json))
            .finish()
    }
}

/// Signs the list whose `entries` array holds `entries` (entry objects as [`write_entry`] writes
/// them, comma-separated). The payload is written directly, member names in serde_json's
/// (sorted) order, so it is the bytes serde_json writes for the same claims object: valid
/// I-JSON by construction (one writer for the strings, entries only from [`write_entry`]),
/// which is why it is not parsed back before signing as other tokens' claims are.
fn sign_entries(
    issuer: &TrustDomain,
    seq: u64,
    iat: u64,
    next_update: u64,
    entries: &[u8],
    key: &dyn JwsSigner,
) -> Result<String> {
    // R6: what every verifier requires of the list's own claims.
    if [seq, iat, next_update]
        .iter()
        .any(|n| safe_int(*n).is_none())
    {
        return Err(bad(
            "`seq`, `iat` and `next_update` must be integers in [0, 2^53-1]",
        ));
    }
    if next_update < iat {
        return Err(bad("`next_update` before `iat`"));
    }
    let mut payload = Vec::with_capacity(entries.len() + 128);
    payload.extend_from_slice(br#"{"entries":["#);
    payload.extend_from_slice(entries);
    payload.extend_from_slice(br#"],"iat":"#);
    write_json_u64(&mut payload, iat)?;
    payload.extend_from_slice(br#","iss":"#);
    write_json_str(&mut payload, issuer.id().as_str())?;
    payload.extend_from_slice(br#","next_update":"#);
    write_json_u64(&mut payload, next_update)?;
    payload.extend_from_slice(br#","seq":"#);
    write_json_u64(&mut payload, seq)?;
    payload.push(b'}');
    let kid = key.public_key().thumbprint();
    sign_compact_written(
        TokenType::Revocations,
        key.algorithm(),
        Some(&kid),
        &payload,
        |input| key.sign(input),
    )
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
    fn a_lookup_skipped_for_a_kind_the_list_lacks_answers_as_the_digest_set_does() {
        // Lookups of a kind the list has no entry of skip the digest: for every subset of the
        // four kinds, each lookup answers exactly what the unfiltered digest set answers.
        let (key, bundles, td) = setup();
        let iss = SpiffeId::parse("spiffe://example.org").unwrap();
        let task = TaskId::parse("aaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let agent = AgentId::new(&td, "alice").unwrap();
        let targets = [
            RevocationTarget::Jti {
                iss: iss.clone(),
                jti: "jti-1".into(),
            },
            RevocationTarget::Task(task.clone()),
            RevocationTarget::Agent(agent.clone()),
            RevocationTarget::Key(JKT.into()),
            RevocationTarget::Jti {
                iss: iss.clone(),
                jti: "jti-2".into(),
            },
            RevocationTarget::Key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB".into()),
        ];
        for subset in 0u8..16 {
            let mut b = RevocationListBuilder::new(&td, 1, 10, 20);
            if subset & 1 != 0 {
                b = b.revoke_jti(&iss, "jti-1", 1000);
            }
            if subset & 2 != 0 {
                b = b.revoke_task(&task, 1000);
            }
            if subset & 4 != 0 {
                b = b.revoke_agent(&agent, 1000);
            }
            if subset & 8 != 0 {
                b = b.revoke_key(JKT, 1000);
            }
            let list = RevocationList::verify(&b.sign(&key).unwrap(), &bundles).unwrap();
            let expected_kinds = [K_JTI, K_TASK, K_AGENT, K_KEY]
                .iter()
                .enumerate()
                .filter(|(i, _)| subset & (1 << i) != 0)
                .fold(0u8, |m, (_, k)| m | kind_bit(*k));
            assert_eq!(list.kinds, expected_kinds, "subset {subset}");
            for t in &targets {
                let d = entry_digest(t);
                let held = list.set.get(&d).is_some();
                assert_eq!(list.contains(t), held, "subset {subset}: {t:?}");
                for now in [0, 999, 1000] {
                    let hit = list.hit(&d, now);
                    assert_eq!(list.revokes(t, now), hit, "subset {subset}: {t:?} at {now}");
                    let by_kind = match t {
                        RevocationTarget::Jti { iss, jti } => list.has_jti(iss, jti, now),
                        RevocationTarget::Task(x) => list.has_task(x, now),
                        RevocationTarget::Agent(a) => list.has_agent_str(a.as_str(), now),
                        RevocationTarget::Key(k) => list.has_key(k, now),
                    };
                    assert_eq!(by_kind, hit, "subset {subset}: {t:?} at {now}");
                }
            }
            // Each kind present is found (the filter never hides an entry).
            for (i, t) in targets.iter().take(4).enumerate() {
                assert_eq!(
                    list.revokes(t, 999),
                    subset & (1 << i) != 0,
                    "subset {subset}"
                );
            }
        }
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

    /// The payload as the builder wrote it before writing it directly: each entry a JSON map,
    /// entries re-parsed, the claims one `serde_json::Value` serialized whole.
    fn reference_payload(
        td: &TrustDomain,
        seq: u64,
        iat: u64,
        next_update: u64,
        entries: &[RevocationEntry],
    ) -> Result<Vec<u8>> {
        let mut values = Vec::new();
        for e in entries {
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
            let v = Value::Object(m);
            parse_entry(&v, td)?;
            values.push(v);
        }
        let mut m = Map::new();
        m.insert("iss".into(), Value::from(td.id().as_str()));
        m.insert("seq".into(), Value::from(seq));
        m.insert("iat".into(), Value::from(iat));
        m.insert("next_update".into(), Value::from(next_update));
        m.insert("entries".into(), Value::Array(values));
        Ok(serde_json::to_vec(&Value::Object(m)).unwrap())
    }

    fn payload_of(compact: &str) -> Vec<u8> {
        let p = compact.split('.').nth(1).unwrap();
        crate::encoding::b64_decode(p).unwrap()
    }

    #[test]
    fn written_payload_is_the_reference_encoding_byte_for_byte() {
        let (key, bundles, td) = setup();
        let root = td.id();
        let task_iss = SpiffeId::parse("spiffe://example.org/agent/w-1/task/t.2_x").unwrap();
        // Every printable ASCII byte appears in some jti, `"` and `\` (escaped) included.
        let printable: Vec<char> = (0x21u8..=0x7e).map(char::from).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for n in [0usize, 1, 2, 3, 17, 300] {
            let mut entries = Vec::new();
            for i in 0..n {
                let r = next();
                let exp = match r % 5 {
                    0 => 0,
                    1 => crate::encoding::MAX_SAFE_INT,
                    _ => r >> 20,
                };
                let target = match (r >> 3) % 5 {
                    0 | 1 => {
                        let len = 1 + (r >> 8) as usize % 40;
                        let jti: String = (0..len)
                            .map(|k| printable[(next() as usize + k) % printable.len()])
                            .collect();
                        let iss = if r % 2 == 0 { &root } else { &task_iss };
                        RevocationTarget::Jti {
                            iss: iss.clone(),
                            jti,
                        }
                    }
                    2 => RevocationTarget::Task(TaskId::parse(&format!("task-{i}.{r}")).unwrap()),
                    3 => RevocationTarget::Agent(AgentId::new(&td, &format!("agent_{r}")).unwrap()),
                    _ => RevocationTarget::Key(crate::encoding::b64_encode(&sha256(
                        &r.to_le_bytes(),
                    ))),
                };
                entries.push(RevocationEntry { target, exp });
            }
            let (seq, iat) = (next() >> 11, next() >> 11);
            let next_update = iat.saturating_add(600);
            let mut b = RevocationListBuilder::new(&td, seq, iat, next_update);
            for e in &entries {
                b = b.entry(e.target.clone(), e.exp);
            }
            let signed = b.sign(&key).unwrap();
            let expected = reference_payload(&td, seq, iat, next_update, &entries).unwrap();
            assert_eq!(
                String::from_utf8(payload_of(&signed)).unwrap(),
                String::from_utf8(expected).unwrap(),
                "{n} entries"
            );
            // Half the entries written ahead of signing: the same bytes.
            let k = n / 2;
            let mut b = RevocationListBuilder::new(&td, seq, iat, next_update);
            for e in &entries[..k] {
                b = b.entry(e.target.clone(), e.exp);
            }
            let encoded: Vec<EncodedEntry> = entries[k..]
                .iter()
                .map(|e| RevocationListBuilder::encode_entry(&td, e).unwrap())
                .collect();
            let signed_encoded = b.sign_encoded(&encoded, &key).unwrap();
            assert_eq!(
                payload_of(&signed_encoded),
                payload_of(&signed),
                "{n} entries"
            );
            let list = RevocationList::verify(&signed, &bundles).unwrap();
            assert_eq!(list.len(), n);
            assert_eq!((list.seq(), list.iat()), (seq, iat));
            for e in &entries {
                assert!(list.contains(&e.target), "{e:?}");
            }
        }
    }

    #[test]
    fn the_builder_refuses_what_a_verifier_would_refuse() {
        let (key, _, td) = setup();
        let other = TrustDomain::parse("other.org").unwrap();
        let bad_entries = [
            (
                RevocationTarget::Key(JKT.into()),
                crate::encoding::MAX_SAFE_INT + 1,
            ),
            (RevocationTarget::Key("not-a-thumbprint".into()), 1),
            (
                RevocationTarget::Agent(AgentId::new(&other, "a").unwrap()),
                1,
            ),
            (
                RevocationTarget::Jti {
                    iss: other.id(),
                    jti: "j".into(),
                },
                1,
            ),
            (
                RevocationTarget::Jti {
                    iss: SpiffeId::parse("spiffe://example.org/agent/a").unwrap(),
                    jti: "j".into(),
                },
                1,
            ),
            (
                RevocationTarget::Jti {
                    iss: td.id(),
                    jti: "with space".into(),
                },
                1,
            ),
        ];
        for (target, exp) in bad_entries {
            let res = RevocationListBuilder::new(&td, 1, 10, 20)
                .revoke_key(JKT, 5)
                .entry(target.clone(), exp)
                .sign(&key);
            assert!(res.is_err(), "{target:?} exp {exp}");
            // The reference encoding refused the same entries, and so does the encoder.
            let e = RevocationEntry { target, exp };
            assert!(RevocationListBuilder::encode_entry(&td, &e).is_err());
            assert!(reference_payload(&td, 1, 10, 20, &[e]).is_err());
        }
        // An entry written for another domain's list is refused by this domain's.
        let e = RevocationEntry {
            target: RevocationTarget::Key(JKT.into()),
            exp: 5,
        };
        let foreign = RevocationListBuilder::encode_entry(&other, &e).unwrap();
        let res = RevocationListBuilder::new(&td, 1, 10, 20).sign_encoded([&foreign], &key);
        assert!(res.is_err());
    }

    #[test]
    fn entries_are_read_as_the_whole_value_reader_reads_them() {
        let (key, bundles, td) = setup();
        let head = r#""iss":"spiffe://example.org","seq":1,"iat":10,"next_update":20"#;
        let t = "spiffe://example.org/agent/a/task/t1";
        let corpus = [
            format!(r#"{{"jkt":"{JKT}","exp":30}}"#),
            r#"{"task":"t-1.x_y","exp":0}"#.to_owned(),
            r#"{"agent":"spiffe://example.org/agent/alice","exp":9007199254740991}"#.to_owned(),
            r#"{"iss":"spiffe://example.org","jti":"j1","exp":5}"#.to_owned(),
            format!(r#"{{"exp":5,"jti":"a\"b\\c","iss":"{t}"}}"#),
            format!(r#"{{"\u0065xp":5,"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":5,"jkt":"\u0041{}"}}"#, &JKT[1..]),
            // refused
            format!(r#"{{"exp":5,"exp":6,"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":5,"jkt":"{JKT}","j\u006bt":"{JKT}"}}"#),
            format!(r#"{{"exp":1.0,"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":1e3,"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":-1,"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":-0,"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":9007199254740992,"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":18446744073709551616,"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":"5","jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":null,"jkt":"{JKT}"}}"#),
            format!(r#"{{"jkt":"{JKT}"}}"#),
            format!(r#"{{"exp":5,"jkt":"{JKT}","task":"t"}}"#),
            format!(r#"{{"exp":5,"iss":"{t}"}}"#),
            r#"{"exp":5,"jti":"j"}"#.to_owned(),
            format!(r#"{{"exp":5,"jkt":"{JKT}","note":"x"}}"#),
            r#"{"exp":5,"agent":"spiffe://other.org/agent/alice"}"#.to_owned(),
            r#"{"exp":5,"agent":"spiffe://example.org/agent/alice/task/t"}"#.to_owned(),
            r#"{"exp":5,"iss":"spiffe://other.org","jti":"j"}"#.to_owned(),
            r#"{"exp":5,"iss":"spiffe://example.org/agent/a","jti":"j"}"#.to_owned(),
            r#"{"exp":5,"iss":"spiffe://example.org","jti":"a b"}"#.to_owned(),
            r#"{"exp":5,"iss":"spiffe://example.org","jti":""}"#.to_owned(),
            r#"{"exp":5,"jkt":"short"}"#.to_owned(),
            r#"{"exp":5,"task":"a/b"}"#.to_owned(),
            r#"{"exp":5,"task":7}"#.to_owned(),
            format!(r#"{{"exp":5,"jkt":["{JKT}"]}}"#),
            r#"{"exp":5,"jkt":{"a":[[[[[[[[1]]]]]]]]}}"#.to_owned(),
            "1".to_owned(),
            "[]".to_owned(),
            "null".to_owned(),
            r#""x""#.to_owned(),
            "{}".to_owned(),
            r#"{"exp":5}"#.to_owned(),
        ];
        let mut accepted = 0;
        for entry in &corpus {
            let payload = format!(r#"{{"entries":[{entry}],{head}}}"#);
            let streamed = RevocationList::verify(&signed(&key, &payload), &bundles);
            // The former reader: the entry as a strict value at depth 2, then `parse_entry`.
            let mut de = serde_json::Deserializer::from_str(entry);
            let whole = StrictValue::at_depth(2)
                .deserialize(&mut de)
                .map_err(|e| bad(e.to_string()))
                .and_then(|v| parse_entry(&v, &td));
            match (&streamed, &whole) {
                (Ok(list), Ok(e)) => {
                    accepted += 1;
                    assert_eq!(list.len(), 1, "{entry}");
                    assert!(list.contains(&e.target), "{entry}");
                    assert!(e.exp == 0 || list.revokes(&e.target, e.exp - 1), "{entry}");
                    assert!(!list.revokes(&e.target, e.exp), "{entry}");
                }
                (Err(err), Err(_)) => assert_eq!(err.code(), ErrorCode::BadRevocationList),
                _ => panic!("{entry}: streamed {streamed:?}, whole {whole:?}"),
            }
        }
        assert_eq!(accepted, 7);
        // Many entries sharing an issuer, then another one: each checked.
        let mut many: Vec<String> = (0..5)
            .map(|i| format!(r#"{{"exp":5,"iss":"{t}","jti":"j{i}"}}"#))
            .collect();
        many.push(r#"{"exp":5,"iss":"spiffe://other.org","jti":"j"}"#.to_owned());
        let payload = format!(r#"{{"entries":[{}],{head}}}"#, many.join(","));
        assert!(RevocationList::verify(&signed(&key, &payload), &bundles).is_err());
        many.pop();
        many.push(format!(
            r#"{{"exp":5,"iss":"{}","jti":"j"}}"#,
            td.id().as_str()
        ));
        let payload = format!(r#"{{"entries":[{}],{head}}}"#, many.join(","));
        let list = RevocationList::verify(&signed(&key, &payload), &bundles).unwrap();
        assert_eq!(list.len(), 6);
        assert!(list.has_jti(&SpiffeId::parse(t).unwrap(), "j4", 0));
        assert!(list.has_jti(&td.id(), "j", 0));
        assert!(!list.has_jti(&td.id(), "j4", 0));
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
