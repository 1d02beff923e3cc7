//! Claim decoding for grants and links (phase 3c).
//!
//! The order of checks is normative (spec/PROTOCOL.md, phase 3c): I-JSON, `ver`, unknown claims,
//! missing claims, then each claim's type and value in the order of the claim table.

use serde_json::{Map, Value};

use crate::encoding::{b64_decode, json_time, parse_ijson_object};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{IdKind, PeerId, SpiffeId, TaskId, TaskIdentity};
use crate::scope::{IdSet, Limits, Scope};
use crate::PublicKey;

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

pub(crate) const GRANT_CLAIMS: &[&str] = &[
    "ver",
    "iss",
    "sub",
    "cnf",
    "task",
    "scope",
    "aud",
    "mode",
    "principal",
    "max_depth",
    "limits",
    "may_delegate_to",
    "iat",
    "nbf",
    "exp",
    "jti",
];
pub(crate) const GRANT_REQUIRED: &[&str] = &[
    "ver",
    "iss",
    "sub",
    "cnf",
    "task",
    "scope",
    "mode",
    "max_depth",
    "iat",
    "nbf",
    "exp",
    "jti",
];
pub(crate) const LINK_CLAIMS: &[&str] = &[
    "ver",
    "iss",
    "sub",
    "cnf",
    "prev",
    "task",
    "scope",
    "aud",
    "max_depth",
    "limits",
    "may_delegate_to",
    "iat",
    "nbf",
    "exp",
    "jti",
];
pub(crate) const LINK_REQUIRED: &[&str] = &[
    "ver",
    "iss",
    "sub",
    "cnf",
    "prev",
    "task",
    "scope",
    "max_depth",
    "iat",
    "nbf",
    "exp",
    "jti",
];

/// The decoded claims of a grant (`prev` absent) or a link (`mode`/`principal` absent).
#[derive(Clone, Debug)]
pub(crate) struct ChainClaims {
    pub iss: SpiffeId,
    pub sub: TaskIdentity,
    pub cnf: PublicKey,
    pub prev: Option<[u8; 32]>,
    pub task: TaskId,
    pub scope: Scope,
    pub aud: Option<IdSet>,
    pub mode: Option<Mode>,
    pub principal: Option<Value>,
    pub max_depth: u8,
    pub limits: Option<Limits>,
    pub may_delegate_to: Option<IdSet>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

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
    match map.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(format!("`{name}` must be a string"))),
        None => Err(Error::new(
            ErrorCode::MissingClaim,
            format!("missing claim `{name}`"),
        )),
    }
}

pub(crate) fn get_time(map: &Map<String, Value>, name: &str) -> Result<u64> {
    let v = map
        .get(name)
        .ok_or_else(|| Error::new(ErrorCode::MissingClaim, format!("missing claim `{name}`")))?;
    json_time(v).ok_or_else(|| bad(format!("`{name}` must be an integer in [0, 2^53-1]")))
}

/// A base64url string decoding to exactly 32 bytes (hashes and channel bindings).
pub(crate) fn get_hash(map: &Map<String, Value>, name: &str) -> Result<[u8; 32]> {
    let s = get_str(map, name)?;
    let bytes = b64_decode(s).map_err(|_| bad(format!("`{name}` is not base64url")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| bad(format!("`{name}` must encode 32 bytes")))
}

/// `jti` of grants, links and revocation entries: 1..=256 bytes, each in 0x21..=0x7E (printable
/// ASCII without space; spec/PROTOCOL.md section 6.1).
pub(crate) fn valid_jti(s: &str) -> bool {
    (1..=256).contains(&s.len()) && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn get_id_set(map: &Map<String, Value>, name: &str) -> Result<Option<IdSet>> {
    let Some(v) = map.get(name) else {
        return Ok(None);
    };
    let Value::Array(items) = v else {
        return Err(bad(format!("`{name}` must be an array of SPIFFE IDs")));
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err(bad(format!("`{name}` entries must be strings")));
        };
        ids.push(SpiffeId::parse(s)?);
    }
    IdSet::new(ids).map(Some)
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

fn parse_cnf(v: &Value) -> Result<PublicKey> {
    let Value::Object(cnf) = v else {
        return Err(bad("`cnf` must be an object"));
    };
    let only_jwk = || Error::new(ErrorCode::BadKey, "`cnf` must hold exactly `jwk`");
    if cnf.len() != 1 {
        return Err(only_jwk());
    }
    let jwk = cnf.get("jwk").ok_or_else(only_jwk)?;
    PublicKey::from_jwk(jwk)
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

/// Checks an RFC 9493 subject identifier: an object with a known `format` and exactly that
/// format's members, every value a non-empty string of at most 1024 bytes.
pub(crate) fn check_principal(v: &Value) -> Result<()> {
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

/// Decodes the claims of a grant (`is_grant`) or a link. Runs only after the signature verified.
pub(crate) fn decode_chain_claims(payload: &[u8], is_grant: bool) -> Result<ChainClaims> {
    let map = parse_ijson_object(payload)?;
    decode_chain_claims_map(&map, is_grant)
}

pub(crate) fn decode_chain_claims_map(
    map: &Map<String, Value>,
    is_grant: bool,
) -> Result<ChainClaims> {
    let (allowed, required) = if is_grant {
        (GRANT_CLAIMS, GRANT_REQUIRED)
    } else {
        (LINK_CLAIMS, LINK_REQUIRED)
    };
    check_members(map, allowed, required)?;

    let iss_str = get_str(map, "iss")?;
    let iss = SpiffeId::parse(iss_str)?;
    if is_grant && iss.kind() != IdKind::TrustDomain {
        return Err(Error::new(
            ErrorCode::BadId,
            "a grant's `iss` must be a trust-domain ID",
        ));
    }
    if !is_grant && iss.kind() != IdKind::Task {
        return Err(Error::new(
            ErrorCode::BadId,
            "a link's `iss` must be a task identity",
        ));
    }
    let sub = parse_holder(get_str(map, "sub")?)?;
    let cnf = parse_cnf(map.get("cnf").ok_or_else(|| bad("missing `cnf`"))?)?;
    let prev = if is_grant {
        None
    } else {
        Some(get_hash(map, "prev")?)
    };
    let task = TaskId::parse(get_str(map, "task")?)?;
    let scope = Scope::parse(get_str(map, "scope")?)?;
    let aud = get_id_set(map, "aud")?;
    let (mode, principal) = if is_grant {
        let mode = match get_str(map, "mode")? {
            "autonomous" => Mode::Autonomous,
            "on_behalf_of" => Mode::OnBehalfOf,
            other => return Err(bad(format!("unknown mode `{other}`"))),
        };
        let principal = map.get("principal").cloned();
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
        (Some(mode), principal)
    } else {
        (None, None)
    };
    let max_depth = match map.get("max_depth").and_then(json_time) {
        Some(d) if d <= u64::from(MAX_DEPTH) => d as u8,
        _ => return Err(bad("`max_depth` must be an integer in 0..=8")),
    };
    let limits = match map.get("limits") {
        None => None,
        Some(Value::Object(m)) => {
            let mut out = std::collections::BTreeMap::new();
            for (k, v) in m {
                let n = json_time(v)
                    .ok_or_else(|| bad(format!("limit `{k}` must be an integer in [0, 2^53-1]")))?;
                out.insert(k.clone(), n);
            }
            Some(Limits::new(out)?)
        }
        Some(_) => return Err(bad("`limits` must be an object")),
    };
    let may_delegate_to = get_id_set(map, "may_delegate_to")?;
    let iat = get_time(map, "iat")?;
    let nbf = get_time(map, "nbf")?;
    let exp = get_time(map, "exp")?;
    let jti = get_str(map, "jti")?;
    if !valid_jti(jti) {
        return Err(bad(
            "`jti` must be 1..=256 bytes of printable ASCII (0x21..=0x7E)",
        ));
    }
    Ok(ChainClaims {
        iss,
        sub,
        cnf,
        prev,
        task,
        scope,
        aud,
        mode,
        principal,
        max_depth,
        limits,
        may_delegate_to,
        iat,
        nbf,
        exp,
        jti: jti.to_owned(),
    })
}

/// Serializes claims for signing (the builders' side).
pub(crate) fn encode_chain_claims(c: &ChainClaims) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("ver".into(), Value::from(VERSION));
    m.insert("iss".into(), Value::from(c.iss.as_str()));
    m.insert("sub".into(), Value::from(c.sub.as_str()));
    let mut cnf = Map::new();
    cnf.insert("jwk".into(), c.cnf.to_jwk());
    m.insert("cnf".into(), Value::Object(cnf));
    if let Some(prev) = &c.prev {
        m.insert(
            "prev".into(),
            Value::from(crate::encoding::b64_encode(prev)),
        );
    }
    m.insert("task".into(), Value::from(c.task.as_str()));
    m.insert("scope".into(), Value::from(c.scope.to_string()));
    if let Some(aud) = &c.aud {
        m.insert("aud".into(), id_set_value(aud));
    }
    if let Some(mode) = c.mode {
        m.insert("mode".into(), Value::from(mode.as_str()));
    }
    if let Some(p) = &c.principal {
        m.insert("principal".into(), p.clone());
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
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
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
