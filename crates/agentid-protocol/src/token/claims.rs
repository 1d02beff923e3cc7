//! Claim decoding for grants and links (phase 3c).
//!
//! The order of checks is normative (spec/PROTOCOL.md, phase 3c): I-JSON, `ver`, unknown claims,
//! missing claims, then each claim's type and value in the order of the claim table. The payload
//! is read once (3.c.1, [`super::members`]) into the members the tables name; the checks of 3.c.2
//! to 3.c.5 run on them afterwards, so an I-JSON fault anywhere in the payload comes first.

use serde_json::{Map, Value};

use crate::audience::IdSet;
use crate::encoding::{b64_decode, b64_decode_array, safe_int};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{IdKind, PeerId, SpiffeId, TaskId, TaskIdentity, TrustDomain};
use crate::limits::Limits;
use crate::scope::Scope;
use crate::PublicKey;

use super::members::{read_members, CnfRaw, JwkRaw, Members, Object, Raw};
use crate::jwk::jwk_not_an_object;

/// Whether the grant's holder acts on its own or for a principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The agent acts on its own authority (as granted).
    Autonomous,
    /// The agent acts for the `principal` named in the grant.
    OnBehalfOf,
}

impl Mode {
    /// The claim value: `autonomous` or `on_behalf_of`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Autonomous => "autonomous",
            Mode::OnBehalfOf => "on_behalf_of",
        }
    }
}

/// Maximum `max_depth`, and maximum number of links in a chain.
pub const MAX_DEPTH: u8 = 8;

/// The protocol version this crate implements.
pub(crate) const VERSION: u64 = 1;

fn bad(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadClaim, detail)
}

/// Checks `ver`, then that every member is allowed, then that every required one is present.
pub(crate) fn check_members(
    map: &Map<String, Value>,
    allowed: &[&str],
    required: &[&str],
) -> Result<()> {
    if allowed.contains(&"ver") {
        match map.get("ver") {
            None => return Err(Error::new(ErrorCode::MissingClaim, "missing claim `ver`")),
            Some(v) if v.as_u64() == Some(VERSION) && v.is_u64() => {}
            Some(_) => {
                return Err(Error::new(
                    ErrorCode::UnsupportedVersion,
                    "`ver` must be the integer 1",
                ))
            }
        }
    }
    if let Some(name) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::new(
            ErrorCode::UnknownClaim,
            format!("unknown claim `{name}`"),
        ));
    }
    if let Some(name) = required.iter().find(|k| !map.contains_key(**k)) {
        return Err(Error::new(
            ErrorCode::MissingClaim,
            format!("missing claim `{name}`"),
        ));
    }
    Ok(())
}

pub(crate) fn get_str<'a>(map: &'a Map<String, Value>, name: &str) -> Result<&'a str> {
    string_claim(name, map.get(name).map(Value::as_str))
}

pub(crate) fn get_time(map: &Map<String, Value>, name: &str) -> Result<u64> {
    time_claim(name, map.get(name).map(Value::as_u64))
}

/// A base64url string decoding to exactly 32 bytes (hashes and channel bindings).
#[cfg(test)]
pub(crate) fn get_hash(map: &Map<String, Value>, name: &str) -> Result<[u8; 32]> {
    hash_value(name, get_str(map, name)?)
}

/// `missing_claim` for member `name`.
pub(crate) fn missing_claim(name: &str) -> Error {
    Error::new(ErrorCode::MissingClaim, format!("missing claim `{name}`"))
}

/// A string member `name`: `v` is `None` when it is absent (`missing_claim`), `Some(None)` when
/// it holds another type (`bad_claim`).
pub(crate) fn string_claim<'v>(name: &str, v: Option<Option<&'v str>>) -> Result<&'v str> {
    match v {
        Some(Some(s)) => Ok(s),
        Some(None) => Err(bad(format!("`{name}` must be a string"))),
        None => Err(missing_claim(name)),
    }
}

/// A time member `name` (section 3.3): `v` is `None` when it is absent (`missing_claim`), else
/// the non-negative integer JSON spelled (`Some(None)` for any other value); an integer in
/// [0, 2^53 - 1], else `bad_claim`.
pub(crate) fn time_claim(name: &str, v: Option<Option<u64>>) -> Result<u64> {
    v.ok_or_else(|| missing_claim(name))?
        .and_then(safe_int)
        .ok_or_else(|| bad(format!("`{name}` must be an integer in [0, 2^53-1]")))
}

/// Steps 3.c.3 and 3.c.4 (and a proof's P4): every member in `allowed` (`unknown_claim`,
/// naming the first other member in byte order); then every member of `required` present
/// (`missing_claim`, the first absent in the order of `required`).
pub(crate) fn known_and_present<'de, T: Object<'de>>(
    m: &T,
    allowed: &[T::Name],
    required: &[T::Name],
) -> Result<()> {
    if let Some(name) = m.first_not_in(allowed) {
        return Err(Error::new(
            ErrorCode::UnknownClaim,
            format!("unknown claim `{name}`"),
        ));
    }
    match m.first_absent(required) {
        Some(name) => Err(missing_claim(T::spelling(name))),
        None => Ok(()),
    }
}

/// The value of the hash member `name`: strict base64url decoding to exactly 32 bytes, else
/// `bad_claim`.
pub(crate) fn hash_value(name: &str, s: &str) -> Result<[u8; 32]> {
    // Onto the stack; any other input goes the general way, for its error.
    if let Some(hash) = b64_decode_array::<32>(s) {
        return Ok(hash);
    }
    let bytes = b64_decode(s).map_err(|_| bad(format!("`{name}` is not base64url")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| bad(format!("`{name}` must encode 32 bytes")))
}

/// `jti` of grants, links and revocation entries: the rule of [`crate::Jti`].
pub(crate) fn valid_jti(s: &str) -> bool {
    crate::refs::Jti::is_valid(s)
}

/// Parses a holder (`sub`): a task identity; a service ID is refused with `service_holder`.
pub(crate) fn parse_holder(s: &str) -> Result<TaskIdentity> {
    match PeerId::parse(s) {
        Ok(PeerId::Task(t)) => Ok(t),
        Ok(PeerId::Service(_)) => Err(Error::new(
            ErrorCode::ServiceHolder,
            format!("`sub` {s} is a service ID; services never hold chains"),
        )),
        Err(e) => Err(e),
    }
}

/// `cnf` read into a JSON tree (the two-pass decoder): the same rules as the one-pass reader's,
/// [`cnf_key`].
#[cfg(test)]
pub(crate) fn parse_cnf(v: &Value) -> Result<PublicKey> {
    cnf_key(&CnfRaw::from_value(v))
}

/// Section 5.1, `cnf`: exactly `{"jwk": key}` with a strict JWK. The one home of these rules.
pub(crate) fn cnf_key(cnf: &CnfRaw<'_>) -> Result<PublicKey> {
    let CnfRaw::Object { members, jwk } = cnf else {
        return Err(bad("`cnf` must be an object"));
    };
    let only_jwk = || Error::new(ErrorCode::BadKey, "`cnf` must hold exactly `jwk`");
    if *members != 1 {
        return Err(only_jwk());
    }
    match jwk.as_ref().ok_or_else(only_jwk)? {
        JwkRaw::NotObject => Err(jwk_not_an_object()),
        JwkRaw::Object(jwk) => PublicKey::from_jwk_view(jwk.view()),
    }
}

/// RFC 9493 subject identifiers accepted as `principal`, with their members besides `format`.
const PRINCIPAL_FORMATS: &[(&str, &[&str])] = &[
    ("account", &["uri"]),
    ("did", &["url"]),
    ("email", &["email"]),
    ("iss_sub", &["iss", "sub"]),
    ("opaque", &["id"]),
    ("phone_number", &["phone_number"]),
    ("uri", &["uri"]),
];

/// Checks a grant's `principal` (spec/PROTOCOL.md 6.1.1): an RFC 9493 subject identifier, an
/// object with a known `format` and exactly that format's members, every value a non-empty
/// string of at most 1024 bytes; `bad_claim` otherwise.
pub fn check_principal(v: &Value) -> Result<()> {
    let Value::Object(m) = v else {
        return Err(bad("`principal` must be an object"));
    };
    let format = match m.get("format") {
        Some(Value::String(f)) => f.as_str(),
        _ => return Err(bad("`principal.format` must be a string")),
    };
    let (_, members) = PRINCIPAL_FORMATS
        .iter()
        .find(|(f, _)| *f == format)
        .ok_or_else(|| bad(format!("unsupported principal format `{format}`")))?;
    if m.len() != members.len() + 1 {
        return Err(bad(format!(
            "principal of format `{format}` must have exactly {members:?}"
        )));
    }
    for name in *members {
        match m.get(*name) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => {}
            _ => {
                return Err(bad(format!(
                    "`principal.{name}` must be a non-empty string"
                )))
            }
        }
    }
    Ok(())
}

/// The claims a grant and a link share (the tables of sections 6.1 and 6.2 but `iss` and each
/// kind's own claims), decoded and validated (step 3.c). Both claim types dereference to it.
#[derive(Clone, Debug)]
pub(crate) struct SharedClaims {
    /// The holder.
    pub sub: TaskIdentity,
    /// The holder's key.
    pub cnf: PublicKey,
    pub task: TaskId,
    pub scope: Scope,
    pub aud: Option<IdSet>,
    pub max_depth: u8,
    pub limits: Option<Limits>,
    pub may_delegate_to: Option<IdSet>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

impl SharedClaims {
    /// `iat`, `nbf`, `exp`.
    pub(crate) fn times(&self) -> (u64, u64, u64) {
        (self.iat, self.nbf, self.exp)
    }
}

/// The claims of a grant (spec/PROTOCOL.md section 6.1), decoded and validated (step 3.c).
#[derive(Clone, Debug)]
pub(crate) struct GrantClaims {
    /// The authority: `iss` is the trust-domain ID `spiffe://<td>`.
    pub iss: TrustDomain,
    pub mode: Mode,
    /// Present exactly with [`Mode::OnBehalfOf`].
    pub principal: Option<Value>,
    /// The claims every token has.
    pub shared: SharedClaims,
}

/// The claims of a link (spec/PROTOCOL.md section 6.2), decoded and validated (step 3.c).
#[derive(Clone, Debug)]
pub(crate) struct LinkClaims {
    /// The delegator: the previous holder's task identity.
    pub iss: TaskIdentity,
    /// SHA-256 of the previous token's compact bytes.
    pub prev: [u8; 32],
    /// The claims every token has.
    pub shared: SharedClaims,
}

impl core::ops::Deref for GrantClaims {
    type Target = SharedClaims;
    fn deref(&self) -> &SharedClaims {
        &self.shared
    }
}

impl core::ops::DerefMut for GrantClaims {
    fn deref_mut(&mut self) -> &mut SharedClaims {
        &mut self.shared
    }
}

impl core::ops::Deref for LinkClaims {
    type Target = SharedClaims;
    fn deref(&self) -> &SharedClaims {
        &self.shared
    }
}

/// What every token of a chain has, whatever its kind: read by phases 5 to 7.
pub(crate) trait TokenClaims {
    /// `iss` as a SPIFFE ID (a trust-domain ID for the grant, a task identity for links).
    fn iss_td(&self) -> &str;
    /// The claims every token has.
    fn shared(&self) -> &SharedClaims;
    /// The holder.
    fn sub(&self) -> &TaskIdentity {
        &self.shared().sub
    }
    /// The holder's key.
    fn cnf(&self) -> &PublicKey {
        &self.shared().cnf
    }
    /// `iat`, `nbf`, `exp`.
    fn times(&self) -> (u64, u64, u64) {
        self.shared().times()
    }
    /// The token's `jti`.
    fn jti(&self) -> &str {
        &self.shared().jti
    }
}

impl TokenClaims for GrantClaims {
    fn iss_td(&self) -> &str {
        self.iss.as_str()
    }
    fn shared(&self) -> &SharedClaims {
        &self.shared
    }
}

impl TokenClaims for LinkClaims {
    fn iss_td(&self) -> &str {
        self.iss.as_spiffe_id().trust_domain_str()
    }
    fn shared(&self) -> &SharedClaims {
        &self.shared
    }
}

// ---- Steps 3.c.2 to 3.c.5 on the members read in 3.c.1 ----

/// The claim tables of sections 6.1 (grant) and 6.2 (link), as one table: the one home of the
/// member names, their spelling, and which kind requires, allows or refuses each. It makes
/// [`Name`] (the members step 3.c.1 reads) and the lists of steps 3.c.3 and 3.c.4
/// ([`GRANT_NAMES`], [`GRANT_NEEDS`], [`LINK_NAMES`], [`LINK_NEEDS`]), all at compile time.
macro_rules! claim_table {
    ($($name:ident $spelling:literal $grant:ident $link:ident,)*) => {
        /// The name of every member a grant or a link may have (the union of the tables of
        /// sections 6.1 and 6.2). Which of them a kind allows is the caller's (step 3.c.3).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Name {
            $($name,)*
        }

        /// Number of [`Name`]s.
        pub(crate) const NAMES: usize = [$(Name::$name),*].len();

        impl Name {
            /// Every name, in the order of the enum (the index of a member's slot).
            pub(crate) const ALL: [Name; NAMES] = [$(Name::$name),*];

            /// The member name as the payload spells it.
            pub(crate) const fn as_str(self) -> &'static str {
                match self {
                    $(Name::$name => $spelling,)*
                }
            }
        }

        /// Each member's presence in a grant and in a link.
        const TABLE: [(Name, Presence, Presence); NAMES] =
            [$((Name::$name, Presence::$grant, Presence::$link)),*];
    };
}

// Rows in the order of both tables (each table is this one without its `Absent` rows). A grant's
// `principal` is required iff `mode` is `on_behalf_of`, a check of step 3.c.5.
claim_table! {
    // member       spelling            grant       link
    Ver             "ver"               Required    Required,
    Iss             "iss"               Required    Required,
    Sub             "sub"               Required    Required,
    Cnf             "cnf"               Required    Required,
    Prev            "prev"              Absent      Required,
    Task            "task"              Required    Required,
    Scope           "scope"             Required    Required,
    Aud             "aud"               Optional    Optional,
    Mode            "mode"              Required    Absent,
    Principal       "principal"         Optional    Absent,
    MaxDepth        "max_depth"         Required    Required,
    Limits          "limits"            Optional    Optional,
    MayDelegateTo   "may_delegate_to"   Optional    Optional,
    Iat             "iat"               Required    Required,
    Nbf             "nbf"               Required    Required,
    Exp             "exp"               Required    Required,
    Jti             "jti"               Required    Required,
}

/// A member's presence in one kind of token, as its claim table says.
#[derive(Clone, Copy)]
enum Presence {
    Required,
    Optional,
    Absent,
}

/// Whether a member of presence `p` is in a list of the members a kind may have (`needs` false)
/// or must have (`needs` true).
const fn listed(p: Presence, needs: bool) -> bool {
    match p {
        Presence::Required => true,
        Presence::Optional => !needs,
        Presence::Absent => false,
    }
}

/// The presence of the member of [`TABLE`] row `row` in a link (`link`) or a grant.
#[allow(clippy::indexing_slicing)] // Evaluated at compile time only: out of range fails the build.
const fn presence(row: usize, link: bool) -> Presence {
    let (_, grant, in_link) = TABLE[row];
    if link {
        in_link
    } else {
        grant
    }
}

/// How many members [`list`] lists.
const fn count(link: bool, needs: bool) -> usize {
    let mut n = 0;
    let mut row = 0;
    while row < NAMES {
        if listed(presence(row, link), needs) {
            n += 1;
        }
        row += 1;
    }
    n
}

/// The members a link (`link`) or a grant may have (`needs` false) or must have (`needs`
/// true), in table order; `N` is their [`count`].
#[allow(clippy::indexing_slicing)] // Evaluated at compile time only: out of range fails the build.
const fn list<const N: usize>(link: bool, needs: bool) -> [Name; N] {
    let mut out = [TABLE[0].0; N];
    let mut n = 0;
    let mut row = 0;
    while row < NAMES {
        if listed(presence(row, link), needs) {
            out[n] = TABLE[row].0;
            n += 1;
        }
        row += 1;
    }
    out
}

/// The members a grant may have (the table of section 6.1), in table order.
pub(crate) const GRANT_NAMES: &[Name] = &list::<{ count(false, false) }>(false, false);
/// The members a grant must have (unconditionally), in table order.
pub(crate) const GRANT_NEEDS: &[Name] = &list::<{ count(false, true) }>(false, true);
/// The members a link may have (the table of section 6.2), in table order.
pub(crate) const LINK_NAMES: &[Name] = &list::<{ count(true, false) }>(true, false);
/// The members a link must have, in table order.
pub(crate) const LINK_NEEDS: &[Name] = &list::<{ count(true, true) }>(true, true);

fn missing(name: Name) -> Error {
    missing_claim(name.as_str())
}

/// Steps 3.c.2 to 3.c.4: `ver` present (`missing_claim`) and the integer 1
/// (`unsupported_version`); then every member in `allowed` (`unknown_claim`, naming the first
/// other member in byte order); then every member of `required` present (`missing_claim`, the
/// first absent in table order).
fn check_names(m: &Members<'_>, allowed: &[Name], required: &[Name]) -> Result<()> {
    match m.get(Name::Ver) {
        None => return Err(missing(Name::Ver)),
        Some(Raw::Int(VERSION)) => {}
        Some(_) => {
            return Err(Error::new(
                ErrorCode::UnsupportedVersion,
                "`ver` must be the integer 1",
            ))
        }
    }
    known_and_present(m, allowed, required)
}

/// A string member (`bad_claim` if of another type).
fn string<'m>(m: &'m Members<'_>, name: Name) -> Result<&'m str> {
    let v = m.get(name).map(|raw| match raw {
        Raw::Str(s) => Some(s.as_ref()),
        _ => None,
    });
    string_claim(name.as_str(), v)
}

/// A time member: an integer in [0, 2^53 - 1] (section 3.3), else `bad_claim`.
fn time(m: &Members<'_>, name: Name) -> Result<u64> {
    let v = m.get(name).map(|raw| match raw {
        Raw::Int(n) => Some(*n),
        _ => None,
    });
    time_claim(name.as_str(), v)
}

/// An ID set member (section 7.2), if present: an array (`bad_claim`) of strings (`bad_claim`),
/// each a SPIFFE ID (`bad_id`), checked in order; then the set's own rules ([`IdSet::new`]).
fn id_set(m: &Members<'_>, name: Name) -> Result<Option<IdSet>> {
    let entries = match m.get(name) {
        None => return Ok(None),
        Some(Raw::Ids(entries)) => entries,
        Some(_) => {
            return Err(bad(format!(
                "`{}` must be an array of SPIFFE IDs",
                name.as_str()
            )))
        }
    };
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(s) = entry else {
            return Err(bad(format!("`{}` entries must be strings", name.as_str())));
        };
        ids.push(SpiffeId::parse(s)?);
    }
    IdSet::new(ids).map(Some)
}

// ---- Step 3.c.5: each claim, in the order of the claim tables of sections 6.1 and 6.2 ----

/// Step 3.c.5, grant `iss`: a SPIFFE ID (`bad_id`) that is a trust-domain ID (`bad_id`).
fn grant_iss(m: &Members<'_>) -> Result<TrustDomain> {
    let iss = SpiffeId::parse(string(m, Name::Iss)?)?;
    if iss.kind() != IdKind::TrustDomain {
        return Err(Error::new(
            ErrorCode::BadId,
            "a grant's `iss` must be a trust-domain ID",
        ));
    }
    Ok(iss.trust_domain())
}

/// Step 3.c.5, link `iss`: a SPIFFE ID (`bad_id`) that is a task identity (`bad_id`, a service
/// ID included).
fn link_iss(m: &Members<'_>) -> Result<TaskIdentity> {
    let iss = SpiffeId::parse(string(m, Name::Iss)?)?;
    if iss.kind() != IdKind::Task {
        return Err(Error::new(
            ErrorCode::BadId,
            "a link's `iss` must be a task identity",
        ));
    }
    TaskIdentity::parse(iss.as_str())
}

/// Step 3.c.5, `sub`: a task identity (a service ID fails `service_holder`).
fn sub(m: &Members<'_>) -> Result<TaskIdentity> {
    parse_holder(string(m, Name::Sub)?)
}

/// Step 3.c.5, `cnf`: exactly `{"jwk": key}` with a key of section 5.1.
fn cnf(m: &Members<'_>) -> Result<PublicKey> {
    match m.get(Name::Cnf) {
        Some(_) => match m.cnf() {
            Some(c) => cnf_key(c),
            // `cnf` is always read into `Members::cnf`.
            None => Err(bad("`cnf` must be an object")),
        },
        None => Err(bad("missing `cnf`")),
    }
}

/// Step 3.c.5, link `prev`: strict base64url of exactly 32 bytes.
fn prev(m: &Members<'_>) -> Result<[u8; 32]> {
    hash_value("prev", string(m, Name::Prev)?)
}

/// Step 3.c.5, `task`: a task id (section 2.3).
fn task(m: &Members<'_>) -> Result<TaskId> {
    TaskId::parse(string(m, Name::Task)?)
}

/// Step 3.c.5, `scope`: a scope set (section 7.1).
fn scope(m: &Members<'_>) -> Result<Scope> {
    Scope::parse(string(m, Name::Scope)?)
}

/// Step 3.c.5, grant `mode` then `principal` (section 6.1.1).
fn mode_and_principal(m: &mut Members<'_>) -> Result<(Mode, Option<Value>)> {
    let mode = match string(m, Name::Mode)? {
        "autonomous" => Mode::Autonomous,
        "on_behalf_of" => Mode::OnBehalfOf,
        other => return Err(bad(format!("unknown mode `{other}`"))),
    };
    // `principal` is always read whole ([`Raw::Value`]).
    let principal = m.take(Name::Principal).map(|raw| match raw {
        Raw::Value(v) => v,
        _ => Value::Null,
    });
    match (mode, &principal) {
        (Mode::OnBehalfOf, None) => {
            return Err(Error::new(
                ErrorCode::MissingClaim,
                "`principal` is required with `on_behalf_of`",
            ))
        }
        (Mode::Autonomous, Some(_)) => {
            return Err(bad("`principal` is only allowed with `on_behalf_of`"))
        }
        (_, Some(p)) => check_principal(p)?,
        (Mode::Autonomous, None) => {}
    }
    Ok((mode, principal))
}

/// Step 3.c.5, `max_depth`: an integer in 0..=8.
fn max_depth(m: &Members<'_>) -> Result<u8> {
    match m.get(Name::MaxDepth) {
        Some(Raw::Int(d)) if *d <= u64::from(MAX_DEPTH) => Ok(*d as u8),
        _ => Err(bad("`max_depth` must be an integer in 0..=8")),
    }
}

/// Step 3.c.5, `limits`: section 7.3.
fn limits(m: &mut Members<'_>) -> Result<Option<Limits>> {
    match m.take(Name::Limits) {
        None => Ok(None),
        Some(Raw::Limits(members)) => {
            let mut out = std::collections::BTreeMap::new();
            for (k, v) in members {
                let n = v
                    .and_then(safe_int)
                    .ok_or_else(|| bad(format!("limit `{k}` must be an integer in [0, 2^53-1]")))?;
                out.insert(k, n);
            }
            Limits::new(out).map(Some)
        }
        Some(_) => Err(bad("`limits` must be an object")),
    }
}

/// Step 3.c.5, `jti`: 1..=256 bytes, each in 0x21..=0x7E.
fn jti(m: &Members<'_>) -> Result<String> {
    let jti = string(m, Name::Jti)?;
    if !valid_jti(jti) {
        return Err(bad(
            "`jti` must be 1..=256 bytes of printable ASCII (0x21..=0x7E)",
        ));
    }
    Ok(jti.to_owned())
}

/// Steps 3.c.1 to 3.c.5 for a grant: I-JSON, `ver`, unknown and missing claims, then each claim
/// in the order of the table of section 6.1. Runs only after the signature verified.
pub(crate) fn decode_grant(payload: &[u8]) -> Result<GrantClaims> {
    let mut m = read_members(payload)?;
    check_names(&m, GRANT_NAMES, GRANT_NEEDS)?;
    let iss = grant_iss(&m)?;
    let (shared, (), (mode, principal)) = decode_shared(&mut m, |_| Ok(()), mode_and_principal)?;
    Ok(GrantClaims {
        iss,
        mode,
        principal,
        shared,
    })
}

/// Steps 3.c.1 to 3.c.5 for a link: I-JSON, `ver`, unknown and missing claims, then each claim
/// in the order of the table of section 6.2. Runs only after the signature verified.
pub(crate) fn decode_link(payload: &[u8]) -> Result<LinkClaims> {
    let mut m = read_members(payload)?;
    check_names(&m, LINK_NAMES, LINK_NEEDS)?;
    let iss = link_iss(&m)?;
    let (shared, prev, ()) = decode_shared(&mut m, prev, |_| Ok(()))?;
    Ok(LinkClaims { iss, prev, shared })
}

/// Step 3.c.5 after `iss`, in table order (sections 6.1 and 6.2): the shared claims, with each
/// kind's own claims at their slots: `after_cnf` (a link's `prev`) and `after_aud` (a grant's
/// `mode` and `principal`).
fn decode_shared<'a, A, B>(
    m: &mut Members<'a>,
    after_cnf: impl FnOnce(&Members<'a>) -> Result<A>,
    after_aud: impl FnOnce(&mut Members<'a>) -> Result<B>,
) -> Result<(SharedClaims, A, B)> {
    let sub = sub(m)?;
    let cnf = cnf(m)?;
    let own_after_cnf = after_cnf(m)?;
    let task = task(m)?;
    let scope = scope(m)?;
    let aud = id_set(m, Name::Aud)?;
    let own_after_aud = after_aud(m)?;
    let shared = SharedClaims {
        sub,
        cnf,
        task,
        scope,
        aud,
        max_depth: max_depth(m)?,
        limits: limits(m)?,
        may_delegate_to: id_set(m, Name::MayDelegateTo)?,
        iat: time(m, Name::Iat)?,
        nbf: time(m, Name::Nbf)?,
        exp: time(m, Name::Exp)?,
        jti: jti(m)?,
    };
    Ok((shared, own_after_cnf, own_after_aud))
}

/// The shared members, written in the same way for a grant and a link, with the kind's own
/// members already in `m`.
fn encode_shared(mut m: Map<String, Value>, c: &SharedClaims) -> Result<Vec<u8>> {
    m.insert("ver".into(), Value::from(VERSION));
    m.insert("sub".into(), Value::from(c.sub.as_str()));
    let mut jwk = Map::new();
    jwk.insert("jwk".into(), c.cnf.to_jwk());
    m.insert("cnf".into(), Value::Object(jwk));
    m.insert("task".into(), Value::from(c.task.as_str()));
    m.insert("scope".into(), Value::from(c.scope.to_string()));
    if let Some(aud) = &c.aud {
        m.insert("aud".into(), id_set_value(aud));
    }
    m.insert("max_depth".into(), Value::from(c.max_depth));
    if let Some(l) = &c.limits {
        let lm: Map<String, Value> = l
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect();
        m.insert("limits".into(), Value::Object(lm));
    }
    if let Some(d) = &c.may_delegate_to {
        m.insert("may_delegate_to".into(), id_set_value(d));
    }
    m.insert("iat".into(), Value::from(c.iat));
    m.insert("nbf".into(), Value::from(c.nbf));
    m.insert("exp".into(), Value::from(c.exp));
    m.insert("jti".into(), Value::from(c.jti.as_str()));
    serde_json::to_vec(&m).map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))
}

/// Serializes a grant's claims for signing.
pub(crate) fn encode_grant(c: &GrantClaims) -> Result<Vec<u8>> {
    let mut m = Map::new();
    m.insert("iss".into(), Value::from(c.iss.id().as_str()));
    m.insert("mode".into(), Value::from(c.mode.as_str()));
    if let Some(p) = &c.principal {
        m.insert("principal".into(), p.clone());
    }
    encode_shared(m, &c.shared)
}

/// Serializes a link's claims for signing.
pub(crate) fn encode_link(c: &LinkClaims) -> Result<Vec<u8>> {
    let mut m = Map::new();
    m.insert("iss".into(), Value::from(c.iss.as_str()));
    m.insert(
        "prev".into(),
        Value::from(crate::encoding::b64_encode(&c.prev)),
    );
    encode_shared(m, &c.shared)
}

pub(crate) fn id_set_value(s: &IdSet) -> Value {
    Value::Array(s.ids().iter().map(|i| Value::from(i.as_str())).collect())
}

/// A fresh random `jti`: base64url of 16 random bytes.
pub(crate) fn random_jti() -> Result<String> {
    Ok(crate::encoding::b64_encode(&crate::crypto::random_bytes::<
        16,
    >()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim's name is the token's text (a link is signed by whoever holds the key before
    /// it): echoed in the error's detail, it reaches the logs of the verifier's transport
    /// (the framed `handshake failed` and `ending session` lines write the error as it is).
    #[test]
    fn an_unknown_claims_name_reaches_the_error_bounded_and_without_control_characters() {
        let name = format!(
            "x\n2026-12-06T00:00:00Z  INFO agentid: forged\u{1b}[2J{}",
            "y".repeat(20_000)
        );
        let mut claims = serde_json::Map::new();
        claims.insert("ver".into(), Value::from(1));
        claims.insert(name, Value::from(1));
        let payload = serde_json::to_vec(&Value::Object(claims)).unwrap_or_default();
        for e in [decode_link(&payload).err(), decode_grant(&payload).err()] {
            let e = e.unwrap_or_else(|| Error::new(ErrorCode::Internal, "decoded"));
            assert_eq!(e.code(), ErrorCode::UnknownClaim, "{e}");
            let shown = e.to_string();
            assert!(shown.len() <= 1100, "{} bytes", shown.len());
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
    }
}
