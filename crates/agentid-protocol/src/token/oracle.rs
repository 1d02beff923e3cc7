//! The two-pass claim decoder that [`super::members`] replaced (an I-JSON tree of the payload,
//! then typed claims from the tree), kept unchanged as the oracle of the differential tests:
//! both must accept the same payloads into the same claims and refuse the others with the same
//! error (code, detail and order of checks).
#![cfg(test)]

use serde_json::{Map, Value};

use crate::audience::IdSet;
use crate::encoding::{json_time, parse_ijson_object};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{IdKind, SpiffeId, TaskId, TaskIdentity, TrustDomain};
use crate::limits::Limits;
use crate::scope::Scope;
use crate::PublicKey;

use super::claims::{
    check_members, check_principal, get_hash, get_str, get_time, parse_cnf, parse_holder,
    valid_jti, GrantClaims, LinkClaims, Mode, SharedClaims, MAX_DEPTH,
};

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

fn bad(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadClaim, detail)
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

// ---- Step 3.c.5: each claim, in the order of the claim tables of sections 6.1 and 6.2 ----

/// Step 3.c.5, grant `iss`: a SPIFFE ID (`bad_id`) that is a trust-domain ID (`bad_id`).
fn grant_iss(map: &Map<String, Value>) -> Result<TrustDomain> {
    let iss = SpiffeId::parse(get_str(map, "iss")?)?;
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
fn link_iss(map: &Map<String, Value>) -> Result<TaskIdentity> {
    let iss = SpiffeId::parse(get_str(map, "iss")?)?;
    if iss.kind() != IdKind::Task {
        return Err(Error::new(
            ErrorCode::BadId,
            "a link's `iss` must be a task identity",
        ));
    }
    TaskIdentity::parse(iss.as_str())
}

/// Step 3.c.5, `sub`: a task identity (a service ID fails `service_holder`).
fn sub(map: &Map<String, Value>) -> Result<TaskIdentity> {
    parse_holder(get_str(map, "sub")?)
}

/// Step 3.c.5, `cnf`: exactly `{"jwk": key}` with a key of section 5.1.
fn cnf(map: &Map<String, Value>) -> Result<PublicKey> {
    parse_cnf(map.get("cnf").ok_or_else(|| bad("missing `cnf`"))?)
}

/// Step 3.c.5, `task`: a task id (section 2.3).
fn task(map: &Map<String, Value>) -> Result<TaskId> {
    TaskId::parse(get_str(map, "task")?)
}

/// Step 3.c.5, `scope`: a scope set (section 7.1).
fn scope(map: &Map<String, Value>) -> Result<Scope> {
    Scope::parse(get_str(map, "scope")?)
}

/// Step 3.c.5, grant `mode` then `principal` (section 6.1.1).
fn mode_and_principal(map: &Map<String, Value>) -> Result<(Mode, Option<Value>)> {
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
    Ok((mode, principal))
}

/// Step 3.c.5, `max_depth`: an integer in 0..=8.
fn max_depth(map: &Map<String, Value>) -> Result<u8> {
    match map.get("max_depth").and_then(json_time) {
        Some(d) if d <= u64::from(MAX_DEPTH) => Ok(d as u8),
        _ => Err(bad("`max_depth` must be an integer in 0..=8")),
    }
}

/// Step 3.c.5, `limits`: section 7.3.
fn limits(map: &Map<String, Value>) -> Result<Option<Limits>> {
    match map.get("limits") {
        None => Ok(None),
        Some(Value::Object(m)) => {
            let mut out = std::collections::BTreeMap::new();
            for (k, v) in m {
                let n = json_time(v)
                    .ok_or_else(|| bad(format!("limit `{k}` must be an integer in [0, 2^53-1]")))?;
                out.insert(k.clone(), n);
            }
            Limits::new(out).map(Some)
        }
        Some(_) => Err(bad("`limits` must be an object")),
    }
}

/// Step 3.c.5, `jti`: 1..=256 bytes, each in 0x21..=0x7E.
fn jti(map: &Map<String, Value>) -> Result<String> {
    let jti = get_str(map, "jti")?;
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
    let map = parse_ijson_object(payload)?;
    decode_grant_map(&map)
}

pub(crate) fn decode_grant_map(map: &Map<String, Value>) -> Result<GrantClaims> {
    check_members(map, GRANT_CLAIMS, GRANT_REQUIRED)?;
    let iss = grant_iss(map)?;
    let (shared, (), (mode, principal)) = decode_shared(map, |_| Ok(()), mode_and_principal)?;
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
    let map = parse_ijson_object(payload)?;
    decode_link_map(&map)
}

pub(crate) fn decode_link_map(map: &Map<String, Value>) -> Result<LinkClaims> {
    check_members(map, LINK_CLAIMS, LINK_REQUIRED)?;
    let iss = link_iss(map)?;
    let (shared, prev, ()) = decode_shared(map, |m| get_hash(m, "prev"), |_| Ok(()))?;
    Ok(LinkClaims { iss, prev, shared })
}

/// Step 3.c.5 after `iss`, in table order (sections 6.1 and 6.2): the shared claims, with each
/// kind's own claims at their slots: `after_cnf` (a link's `prev`) and `after_aud` (a grant's
/// `mode` and `principal`).
fn decode_shared<A, B>(
    map: &Map<String, Value>,
    after_cnf: impl FnOnce(&Map<String, Value>) -> Result<A>,
    after_aud: impl FnOnce(&Map<String, Value>) -> Result<B>,
) -> Result<(SharedClaims, A, B)> {
    let sub = sub(map)?;
    let cnf = cnf(map)?;
    let own_after_cnf = after_cnf(map)?;
    let task = task(map)?;
    let scope = scope(map)?;
    let aud = get_id_set(map, "aud")?;
    let own_after_aud = after_aud(map)?;
    let shared = SharedClaims {
        sub,
        cnf,
        task,
        scope,
        aud,
        max_depth: max_depth(map)?,
        limits: limits(map)?,
        may_delegate_to: get_id_set(map, "may_delegate_to")?,
        iat: get_time(map, "iat")?,
        nbf: get_time(map, "nbf")?,
        exp: get_time(map, "exp")?,
        jti: jti(map)?,
    };
    Ok((shared, own_after_cnf, own_after_aud))
}

/// The differential tests: the one-pass decoder ([`super::claims::decode_grant`],
/// [`super::claims::decode_link`]) against this oracle, on the payloads of every spec vector,
/// on mutations of valid payloads and on generated JSON.
mod differential {
    use std::collections::{BTreeMap, BTreeSet};
    use std::fmt::Debug;
    use std::path::PathBuf;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use proptest::prelude::*;
    use serde_json::Value;

    use crate::error::Result;
    use crate::token::claims;

    /// A decoding's outcome, in full: the claims (their `Debug`) or the error's code, index and
    /// detail.
    fn outcome<T: Debug>(r: Result<T>) -> String {
        match r {
            Ok(v) => format!("ok {v:?}"),
            Err(e) => format!("err {} {:?} {}", e.code(), e.index(), e.detail()),
        }
    }

    /// Decodes `payload` as a grant and as a link with both decoders; panics on any difference.
    /// Returns the two outcomes (grant, link).
    fn agree(payload: &[u8]) -> (String, String) {
        let grant = outcome(claims::decode_grant(payload));
        let link = outcome(claims::decode_link(payload));
        let shown = String::from_utf8_lossy(payload);
        assert_eq!(
            grant,
            outcome(super::decode_grant(payload)),
            "grant: {shown}"
        );
        assert_eq!(link, outcome(super::decode_link(payload)), "link: {shown}");
        (grant, link)
    }

    /// The payload of every token of every `chain` in spec/vectors.
    fn vector_payloads() -> Vec<Vec<u8>> {
        fn walk(v: &Value, out: &mut Vec<Vec<u8>>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        if let (true, Value::String(chain)) = (k == "chain", v) {
                            for token in chain.split('~') {
                                if let Some(Ok(p)) =
                                    token.split('.').nth(1).map(|p| URL_SAFE_NO_PAD.decode(p))
                                {
                                    out.push(p);
                                }
                            }
                        }
                        walk(v, out);
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec/vectors");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                walk(&doc, &mut out);
            }
        }
        out
    }

    const EC_JWK: &str = r#"{"alg":"ES256","crv":"P-256","kty":"EC","x":"UU6ZOgtkfh728QbtD-OGIV4gEC0Esn5OEsghnScfR3o","y":"Hk4E_JRi9TSRA9to135nNfxC62la9ZyYa5DYQK2sGwE"}"#;
    const ED_JWK: &str = r#"{"alg":"Ed25519","crv":"Ed25519","kty":"OKP","x":"6L_6uZYBB1WsNBnWo_frEJYPf4qMtxvKKo316hrx50A"}"#;
    const TASK: &str = "kq7xm3vzb4df6hjn5p2rstuw5a";

    /// Valid payloads: grants (autonomous, on behalf of a principal, every optional claim) and
    /// links, one of each with escapes in names and values.
    fn valid_payloads() -> Vec<String> {
        let holder = |name: &str| format!("spiffe://example.org/agent/{name}/task/{TASK}");
        let optional = r#""aud":["spiffe://example.org/svc/api","spiffe://example.org/agent/x"],"limits":{"calls":10,"tokens":9007199254740991},"may_delegate_to":["spiffe://example.org"],"#;
        let grant = |cnf: &str, extra: &str, mode: &str| {
            format!(
                r#"{{"cnf":{{"jwk":{cnf}}},"exp":1767228600,"iat":1767225000,"iss":"spiffe://example.org","jti":"g-planner","max_depth":8,{extra}"mode":"{mode}","nbf":1767225000,"scope":"files:* repo:read","sub":"{}","task":"{TASK}","ver":1}}"#,
                holder("planner")
            )
        };
        let link = |cnf: &str, extra: &str| {
            format!(
                r#"{{"cnf":{{"jwk":{cnf}}},"exp":1767227400,"iat":1767225300,"iss":"{}","jti":"l-researcher","max_depth":7,{extra}"nbf":1767225300,"prev":"WyMNedF-8y3IQCtZmd3USXmbzvUVC-L4JpbxjWu6F5U","scope":"files:read","sub":"{}","task":"{TASK}","ver":1}}"#,
                holder("coder"),
                holder("researcher")
            )
        };
        let principal = r#""principal":{"format":"email","email":"ada@example.org"},"#;
        let mut out = vec![
            grant(EC_JWK, "", "autonomous"),
            grant(ED_JWK, optional, "autonomous"),
            grant(EC_JWK, principal, "on_behalf_of"),
            grant(ED_JWK, &format!("{optional}{principal}"), "on_behalf_of"),
            link(ED_JWK, ""),
            link(EC_JWK, optional),
        ];
        // Escaped names and values decode to the same members.
        let escaped = out[1]
            .replace(r#""ver""#, r#""\u0076er""#)
            .replace(r#""aud":["spiffe"#, r#""aud":["\u0073piffe"#)
            .replace(r#""jti":"g-planner""#, r#""jti":"g-pl\u0061nner""#);
        out.push(escaped);
        out.push(out[4].replace(r#""scope":"files:read""#, r#""scope":"files:\u0072ead""#));
        out
    }

    /// Values that exercise every check of 3.c.5 and of I-JSON when put in a member's place.
    const VALUES: &[&str] = &[
        "0",
        "1",
        "2",
        "8",
        "9",
        "-1",
        "-0",
        "1.0",
        "1e0",
        "1E3",
        "0.5",
        "9007199254740991",
        "9007199254740992",
        "18446744073709551615",
        "18446744073709551616",
        "1e400",
        "-1e400",
        "true",
        "null",
        r#""""#,
        r#""x""#,
        r#""\u0000""#,
        r#""\ud800""#,
        r#""\udc00x""#,
        r#""\ud83d\ude00""#,
        "[]",
        "{}",
        "[1]",
        "[null]",
        r#"["spiffe://example.org"]"#,
        r#"["spiffe://example.org","spiffe://example.org"]"#,
        r#"["spiffe://example.org/svc/api",1]"#,
        r#"["spiffe://EXAMPLE.org"]"#,
        r#"["spiffe://example.org/agent/a",["x"]]"#,
        r#"[[[[[[[1]]]]]]]"#,
        r#"[[[[[[[[1]]]]]]]]"#,
        r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":{}}}}}}}}"#,
        r#"{"a":1,"a":1}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"calls":1}"#,
        r#"{"calls":-1}"#,
        r#"{"calls":1.5}"#,
        r#"{"calls":"1"}"#,
        r#"{"b":1,"a":"x"}"#,
        r#"{"calls":[1]}"#,
        r#"{"":1}"#,
        r#"{"Calls":9007199254740992}"#,
        r#"{"jwk":{}}"#,
        r#"{"jwk":1}"#,
        r#"{"jwk":{"kty":"EC"},"x":1}"#,
        r#"{"jwk":{"alg":"ES256","crv":"P-256","kty":"EC","x":"AAAA","y":"AAAA"}}"#,
        r#"{"jwk":{"alg":"EdDSA","crv":"Ed25519","kty":"OKP","x":"6L_6uZYBB1WsNBnWo_frEJYPf4qMtxvKKo316hrx50A"}}"#,
        r#"{"jwk":{"alg":"Ed25519","crv":"Ed25519","kty":"OKP","x":"6L_6uZYBB1WsNBnWo_frEJYPf4qMtxvKKo316hrx50A","d":"x"}}"#,
        r#""spiffe://example.org""#,
        r#""spiffe://example.org/""#,
        r#""spiffe://example.org/svc/api""#,
        r#""spiffe://example.org/agent/a""#,
        r#""spiffe://example.org/agent/a/task/t""#,
        r#""spiffe://other.org/agent/a/task/t""#,
        r#""spiffe://example.org/agent/a/task/kq7xm3vzb4df6hjn5p2rstuw5a""#,
        r#""spiffe://Example.org""#,
        r#""autonomous""#,
        r#""on_behalf_of""#,
        r#""Autonomous""#,
        r#"{"format":"email","email":"a@b"}"#,
        r#"{"format":"email","email":""}"#,
        r#"{"format":"iss_sub","iss":"a","sub":"b"}"#,
        r#"{"format":"iss_sub","iss":"a"}"#,
        r#"{"format":"telepathy","id":"a"}"#,
        r#"{"format":1}"#,
        r#""files:read""#,
        r#""files:read files:read""#,
        r#""bad scope!""#,
        r#""*""#,
        r#""WyMNedF-8y3IQCtZmd3USXmbzvUVC-L4JpbxjWu6F5U""#,
        r#""WyMNedF-8y3IQCtZmd3USXmbzvUVC-L4JpbxjWu6F5V""#,
        r#""WyMNedF-8y3IQCtZmd3USXmbzvUVC-L4JpbxjWu6F5U=""#,
        r#""AAAA""#,
        r#""kq7xm3vzb4df6hjn5p2rstuw5a""#,
        r#""a/b""#,
        r#""g planner""#,
        r#""\u00e9""#,
    ];

    /// Values of `cnf` as the one-pass reader keeps it (no JSON tree): duplicates, escaped names
    /// and values, the least refused name, values of other types, nesting below `jwk`.
    const CNF_VALUES: &[&str] = &[
        r#"{"jwk":{"kty":"EC","kty":"EC"}}"#,
        r#"{"jwk":{"kty":"EC","\u006bty":"EC"}}"#,
        r#"{"jwk":{"b":1,"a":2,"b":3}}"#,
        r#"{"jwk":{"zz":1,"d":"x","alg":"ES256"}}"#,
        r#"{"jwk":{"zz":1,"aa":2,"kty":"EC"}}"#,
        r#"{"jwk":{"\u0064":1,"c":2}}"#,
        r#"{"jwk":{"alg":"ES256","crv":"P-256","kty":"EC","x":"\u0041AAA","y":1}}"#,
        r#"{"jwk":{"alg":"ES256","crv":"P-256","kty":"EC","x":"AAAA","y":"AAAA","y":"AAAA"}}"#,
        r#"{"jwk":{"alg":"EdDSA","crv":"Ed25519","kty":"OKP","x":"6L_6uZYBB1WsNBnWo_frEJYPf4qMtxvKKo316hrx50A","y":null}}"#,
        r#"{"jwk":{"alg":"EdDSA","crv":"\u0045d25519","kty":"OKP","x":"6L_6uZYBB1WsNBnWo_frEJYPf4qMtxvKKo316hrx50A"}}"#,
        r#"{"jwk":{"kty":{"a":[1,{"b":2}]},"crv":true,"alg":1.5,"x":[]}}"#,
        r#"{"jwk":{"kty":[[[[1]]]]}}"#,
        r#"{"jwk":{"kty":[[[[[1]]]]]}}"#,
        r#"{"jwk":{"kty":{"a":{"b":{"c":1}}}}}"#,
        r#"{"jwk":{"kty":{"a":{"b":{"c":{"d":1}}}}}}"#,
        r#"{"jwk":{"kty":{"a":1,"a":2}}}"#,
        r#"{"jwk":{"x":1e400}}"#,
        r#"{"jwk":{"x":-0}}"#,
        r#"{"jwk":{"x":"\ud800"}}"#,
        r#"{"x":{"a":1},"jwk":{}}"#,
        r#"{"x":{"a":1,"a":1},"jwk":{}}"#,
        r#"{"jwk":{},"jwk":{}}"#,
        r#"{"jwk":{},"\u006awk":{}}"#,
        r#"{"a":1,"b":2,"a":3}"#,
        r#"{"jwk":"x"}"#,
        r#"{"jwk":null}"#,
        r#"{"jwk":[{"kty":"EC"}]}"#,
        r#"{"\u006awk":{"alg":"EdDSA","crv":"Ed25519","kty":"OKP","x":"6L_6uZYBB1WsNBnWo_frEJYPf4qMtxvKKo316hrx50A"}}"#,
    ];

    /// Member names: every claim of both kinds, some spelled with escapes, and others.
    const NAMES: &[&str] = &[
        "ver",
        "iss",
        "sub",
        "cnf",
        "prev",
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
        r"\u0076er",
        r"s\u0075b",
        r"\u006dode",
        "",
        "a",
        "zzz",
        "Ver",
        "ver ",
        "jwk",
        "\u{e9}",
        r"\ud800",
    ];

    /// Snippets inserted anywhere (mostly breaking the syntax) or after the opening brace.
    const SNIPPETS: &[&str] = &[
        ",",
        ":",
        "\"",
        "\\",
        "{",
        "}",
        "[",
        "]",
        " ",
        "\n",
        "\u{0}",
        "\u{feff}",
        "/*x*/",
        "NaN",
        r#""ver":1,"#,
        r#""ver":2,"#,
        r#""a":1,"#,
        r#""zzz":{"a":1,"a":2},"#,
        r#""mode":"autonomous","#,
        r#""prev":"AAAA","#,
        r#""principal":null,"#,
    ];

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// The byte range of the value of member `"name":` in `text` (the first such member), found
    /// by skipping strings and counting brackets.
    fn value_span(text: &[u8], name: &str) -> Option<(usize, usize)> {
        let key = format!("\"{name}\":");
        let start = text.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
        let (mut depth, mut in_str, mut escaped) = (0i32, false, false);
        for (i, &b) in text.iter().enumerate().skip(start) {
            if in_str {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => return Some((start, i)),
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => return Some((start, i)),
                _ => {}
            }
        }
        None
    }

    /// One random edit of `text`.
    fn mutate(rng: &mut Rng, text: &mut Vec<u8>) {
        let at = |rng: &mut Rng, text: &Vec<u8>| rng.below(text.len() + 1);
        match rng.below(11) {
            // A member's value replaced (the checks of 3.c.5).
            0..=5 => {
                if let Some((a, b)) = value_span(text, rng.pick(&NAMES[..17])) {
                    text.splice(a..b, rng.pick(VALUES).bytes());
                }
            }
            // A member removed (3.c.4), or renamed (3.c.3, duplicates).
            6 => {
                let name = rng.pick(&NAMES[..17]);
                if let Some((a, b)) = value_span(text, name) {
                    let key_start = a - name.len() - 3;
                    if rng.below(2) == 0 {
                        let end = if text.get(b) == Some(&b',') { b + 1 } else { b };
                        text.drain(key_start..end);
                    } else {
                        text.splice(key_start + 1..a - 2, rng.pick(NAMES).bytes());
                    }
                }
            }
            // A member added after the opening brace.
            7 => {
                let member = format!("\"{}\":{},", rng.pick(NAMES), rng.pick(VALUES));
                if !text.is_empty() {
                    text.splice(1..1, member.bytes());
                }
            }
            // Anything inserted anywhere.
            8 => {
                let i = at(rng, text);
                text.splice(i..i, rng.pick(SNIPPETS).bytes());
            }
            // Bytes deleted.
            9 => {
                let i = at(rng, text);
                let end = (i + 1 + rng.below(8)).min(text.len());
                text.drain(i.min(end)..end);
            }
            // One byte replaced by any byte.
            _ => {
                if !text.is_empty() {
                    let i = rng.below(text.len());
                    text[i] = rng.next() as u8;
                }
            }
        }
    }

    #[test]
    fn the_claim_tables_agree() {
        use super::super::claims::Name;
        let names = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let of = |t: &[Name]| t.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(super::GRANT_CLAIMS), of(claims::GRANT_NAMES));
        assert_eq!(names(super::GRANT_REQUIRED), of(claims::GRANT_NEEDS));
        assert_eq!(names(super::LINK_CLAIMS), of(claims::LINK_NAMES));
        assert_eq!(names(super::LINK_REQUIRED), of(claims::LINK_NEEDS));
    }

    #[test]
    fn every_vector_payload_decodes_as_the_oracle_decodes_it() {
        let payloads = vector_payloads();
        assert!(payloads.len() > 300, "{} payloads", payloads.len());
        let mut ok = 0;
        for p in &payloads {
            let (g, l) = agree(p);
            ok += usize::from(g.starts_with("ok") || l.starts_with("ok"));
        }
        assert!(ok > 200, "{ok} of {} payloads decode", payloads.len());
    }

    #[test]
    fn valid_payloads_decode_as_the_oracle_decodes_them() {
        for p in valid_payloads() {
            let (g, l) = agree(p.as_bytes());
            assert!(g.starts_with("ok") || l.starts_with("ok"), "{p}: {g} / {l}");
        }
    }

    /// `cnf` is read without a JSON tree (only what its rules read is kept): every value of
    /// [`VALUES`] and [`CNF_VALUES`] as the `cnf` of every valid payload decodes as the oracle decodes it, and the
    /// values reach the rules of `cnf` and of a JWK (`bad_key`) as well as I-JSON (`bad_json`).
    #[test]
    fn every_cnf_value_decodes_as_the_oracle_decodes_it() {
        let mut codes = BTreeSet::new();
        for base in valid_payloads() {
            let Some((a, b)) = value_span(base.as_bytes(), "cnf") else {
                panic!("no cnf in {base}");
            };
            for v in VALUES.iter().chain(CNF_VALUES) {
                let text = format!("{}{v}{}", &base[..a], &base[b..]);
                let (g, l) = agree(text.as_bytes());
                codes.extend([g, l].map(|o| o.split(' ').take(2).collect::<Vec<_>>().join(" ")));
            }
        }
        for code in ["ok", "err bad_key", "err bad_json", "err bad_claim"] {
            assert!(
                codes.iter().any(|c| c.starts_with(code)),
                "{code} not reached: {codes:?}"
            );
        }
    }

    /// 40,000 payloads of one to three edits each of a valid payload: every outcome agrees, and
    /// the edits reach every check (each error code of 3.c, and valid payloads).
    #[test]
    fn mutated_payloads_decode_as_the_oracle_decodes_them() {
        let bases = valid_payloads();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..40_000 {
            let mut text = bases[rng.below(bases.len())].clone().into_bytes();
            for _ in 0..=rng.below(3) {
                mutate(&mut rng, &mut text);
            }
            let (g, l) = agree(&text);
            for o in [g, l] {
                let code = o.split(' ').take(2).collect::<Vec<_>>().join(" ");
                *seen.entry(code).or_default() += 1;
            }
        }
        for code in [
            "ok GrantClaims",
            "ok LinkClaims",
            "err bad_json",
            "err missing_claim",
            "err unsupported_version",
            "err unknown_claim",
            "err bad_claim",
            "err bad_id",
            "err bad_key",
            "err bad_scope",
            "err service_holder",
        ] {
            assert!(
                seen.get(code).copied().unwrap_or(0) >= 10,
                "{code} reached {:?} times: {seen:?}",
                seen.get(code)
            );
        }
    }

    /// Generated JSON: members drawn from the claim names (and others), values from the table
    /// above or any JSON up to depth 10, numbers in every spelling, strings with escapes.
    fn json(depth: u32) -> BoxedStrategy<String> {
        let leaf = prop_oneof![
            proptest::sample::select(VALUES).prop_map(str::to_owned),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:e}")),
            "[a-z\u{e9}\\\\\"/]{0,6}".prop_map(|s| format!("{s:?}")),
        ];
        leaf.prop_recursive(depth, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec((proptest::sample::select(NAMES), inner), 0..4).prop_map(
                    |m| {
                        let members: Vec<String> =
                            m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                        format!("{{{}}}", members.join(","))
                    }
                ),
            ]
        })
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::encoding::test_cases(2000)))]

        #[test]
        fn generated_objects_decode_as_the_oracle_decodes_them(
            members in proptest::collection::vec(
                (proptest::sample::select(NAMES), prop_oneof![
                    3 => proptest::sample::select(VALUES).prop_map(str::to_owned),
                    1 => json(10),
                ]),
                0..20,
            ),
            base in proptest::sample::select(valid_payloads()),
            into_valid in any::<bool>(),
        ) {
            let added: String = members.iter().map(|(k, v)| format!("\"{k}\":{v},")).collect();
            let text = if into_valid {
                format!("{{{added}{}", &base[1..])
            } else {
                format!("{{{}}}", added.trim_end_matches(','))
            };
            agree(text.as_bytes());
        }

        #[test]
        fn any_json_decodes_as_the_oracle_decodes_it(text in json(12)) {
            agree(text.as_bytes());
        }

        #[test]
        fn any_bytes_decode_as_the_oracle_decodes_them(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            agree(&bytes);
        }
    }
}
