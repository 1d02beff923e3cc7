//! Scopes, audiences (`aud`, `may_delegate_to`) and limits: the three things a delegation can
//! only narrow.
//!
//! ```
//! use agentid_protocol::Scope;
//! let parent = Scope::parse("repo:read:* issues:write").unwrap();
//! assert!(parent.covers(&Scope::parse("repo:read:main issues:write").unwrap()));
//! assert!(!parent.covers(&Scope::parse("repo:read").unwrap()));
//! assert!(!parent.covers(&Scope::parse("repo:write:main").unwrap()));
//! ```

use core::fmt;
use core::str::FromStr;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};
use crate::id::{IdKind, SpiffeId};

/// Maximum length of one scope token in bytes.
pub const MAX_SCOPE_TOKEN_BYTES: usize = 256;
/// Maximum length of one scope segment in bytes.
pub const MAX_SCOPE_SEGMENT_BYTES: usize = 64;
/// Maximum number of tokens in a scope.
pub const MAX_SCOPE_TOKENS: usize = 64;
/// Maximum number of entries in an `aud` or `may_delegate_to` set.
pub const MAX_ID_SET_ENTRIES: usize = 16;
/// Maximum number of entries in a `limits` object.
pub const MAX_LIMITS: usize = 32;
/// Maximum length of a limit name in bytes.
pub const MAX_LIMIT_NAME_BYTES: usize = 64;
/// Largest limit value (the I-JSON safe integer range).
pub const MAX_LIMIT_VALUE: u64 = (1 << 53) - 1;

const WILDCARD: &str = "*";

fn bad_scope(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadScope, detail)
}

fn bad_claim(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadClaim, detail)
}

// ---------------------------------------------------------------------------------------------
// ScopeToken
// ---------------------------------------------------------------------------------------------

/// One scope token: `"*" / seg *(":" seg) [":*"]`, `seg = 1*64 [A-Za-z0-9-_.]`, at most 256
/// bytes, case-sensitive.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScopeToken(String);

fn check_scope_segment(seg: &str) -> Result<()> {
    if seg.is_empty() {
        return Err(bad_scope("empty scope segment"));
    }
    if seg.len() > MAX_SCOPE_SEGMENT_BYTES {
        return Err(bad_scope(format!(
            "scope segment longer than {MAX_SCOPE_SEGMENT_BYTES} bytes"
        )));
    }
    match seg
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        Some(b) => Err(bad_scope(format!(
            "scope byte 0x{b:02x} outside [A-Za-z0-9-_.]"
        ))),
        None => Ok(()),
    }
}

impl ScopeToken {
    /// Parses one token (`BadScope` on any violation).
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() > MAX_SCOPE_TOKEN_BYTES {
            return Err(bad_scope(format!(
                "scope token longer than {MAX_SCOPE_TOKEN_BYTES} bytes"
            )));
        }
        if s != WILDCARD {
            // A `*` is allowed only as the whole token or as the last segment after a real one.
            let base = s.strip_suffix(":*").unwrap_or(s);
            for seg in base.split(':') {
                check_scope_segment(seg)?;
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this token is a pattern (`*` or `...:*`).
    pub fn is_wildcard(&self) -> bool {
        self.0.ends_with('*')
    }

    /// Whether this token covers `t`: `t == self`, or `self` is `*`, or `self` is `q:*` and the
    /// segments of `t` strictly extend `q` (`a:*` covers `a:*`, `a:b`, `a:b:*`, but not `a`).
    pub fn covers(&self, t: &ScopeToken) -> bool {
        if self == t || self.0 == WILDCARD {
            return true;
        }
        let Some(q) = self.0.strip_suffix(":*") else {
            return false;
        };
        // Segment by segment, so that `a:*` never covers `ab:c`.
        let mut t_segs = t.0.split(':');
        let prefix_matches = q.split(':').all(|qs| t_segs.next() == Some(qs));
        prefix_matches && t_segs.next().is_some()
    }
}

// ---------------------------------------------------------------------------------------------
// Scope
// ---------------------------------------------------------------------------------------------

/// A scope: 1..=64 distinct tokens separated by single spaces (as RFC 8693). Tokens keep the
/// order in which they were written, and `Display` gives back that exact string. Equality is
/// therefore order-sensitive; for the semantic relation use [`Scope::covers`] both ways.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(Vec<ScopeToken>);

impl Scope {
    /// Parses a space-delimited scope string (`BadScope` on any violation).
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(bad_scope("empty scope"));
        }
        let mut tokens = Vec::new();
        let mut seen = BTreeSet::new();
        for part in s.split(' ') {
            if part.is_empty() {
                return Err(bad_scope(
                    "scope tokens must be separated by single spaces, with none leading or trailing",
                ));
            }
            if tokens.len() == MAX_SCOPE_TOKENS {
                return Err(bad_scope(format!(
                    "more than {MAX_SCOPE_TOKENS} scope tokens"
                )));
            }
            let token = ScopeToken::parse(part)?;
            if !seen.insert(part) {
                return Err(bad_scope(format!("duplicate scope token `{part}`")));
            }
            tokens.push(token);
        }
        Ok(Self(tokens))
    }

    /// Whether every token of `other` is covered by one single token of `self`.
    pub fn covers(&self, other: &Scope) -> bool {
        other.0.iter().all(|t| self.covers_token(t))
    }

    /// Whether one token of `self` covers `t`.
    pub fn covers_token(&self, t: &ScopeToken) -> bool {
        self.0.iter().any(|p| p.covers(t))
    }

    /// The tokens, in written order.
    pub fn tokens(&self) -> &[ScopeToken] {
        &self.0
    }

    /// Whether no token is a pattern (requested scopes must be concrete).
    pub fn is_concrete(&self) -> bool {
        !self.0.iter().any(ScopeToken::is_wildcard)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(t.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", self.to_string())
    }
}

impl fmt::Display for ScopeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ScopeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeToken({:?})", self.0)
    }
}

macro_rules! parsed_from_string {
    ($($ty:ident),*) => {$(
        impl FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(&s)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.to_string()
            }
        }
    )*};
}

parsed_from_string!(ScopeToken, Scope);

// ---------------------------------------------------------------------------------------------
// IdSet
// ---------------------------------------------------------------------------------------------

/// An `aud` or `may_delegate_to` set: 1..=16 distinct IDs, each a trust-domain ID, agent ID,
/// task identity or service ID. Entry E covers X as [`SpiffeId::covers`] says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<SpiffeId>", into = "Vec<SpiffeId>")]
pub struct IdSet(Vec<SpiffeId>);

impl IdSet {
    /// Builds a set: `BadClaim` for 0 or more than 16 entries or a duplicate, `BadId` for an
    /// entry of another kind.
    pub fn new(ids: Vec<SpiffeId>) -> Result<Self> {
        if ids.is_empty() || ids.len() > MAX_ID_SET_ENTRIES {
            return Err(bad_claim(format!(
                "an ID set holds 1..={MAX_ID_SET_ENTRIES} entries, got {}",
                ids.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for id in &ids {
            match id.kind() {
                IdKind::TrustDomain | IdKind::Agent | IdKind::Task | IdKind::Service => {}
                IdKind::Other => {
                    return Err(Error::new(
                        ErrorCode::BadId,
                        format!("`{id}` is not a trust domain, agent, task or service ID"),
                    ))
                }
            }
            if !seen.insert(id) {
                return Err(bad_claim(format!("duplicate ID `{id}`")));
            }
        }
        Ok(Self(ids))
    }

    /// A one-entry set.
    pub fn single(id: SpiffeId) -> Result<Self> {
        Self::new(vec![id])
    }

    /// Whether one entry covers `id`.
    pub fn covers_id(&self, id: &SpiffeId) -> bool {
        self.0.iter().any(|e| e.covers(id))
    }

    /// Whether every entry of `other` is covered by one entry of `self`.
    pub fn covers(&self, other: &IdSet) -> bool {
        other.0.iter().all(|id| self.covers_id(id))
    }

    /// The entries, in written order.
    pub fn ids(&self) -> &[SpiffeId] {
        &self.0
    }
}

impl TryFrom<Vec<SpiffeId>> for IdSet {
    type Error = Error;
    fn try_from(ids: Vec<SpiffeId>) -> Result<Self> {
        Self::new(ids)
    }
}

impl From<IdSet> for Vec<SpiffeId> {
    fn from(v: IdSet) -> Self {
        v.0
    }
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Limits: ceilings by name (not budgets). On the wire (`Limits::new`, deserialization) a
/// `limits` object has 1..=32 entries, names of 1..=64 bytes of `[a-z0-9_.-]` and values in
/// `0..=2^53-1`. The *effective* limits of a chain ([`Limits::merge_min`]) may be empty
/// ([`Limits::none`]) or hold more than 32 names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Limits(BTreeMap<String, u64>);

pub(crate) fn check_limit_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_LIMIT_NAME_BYTES {
        return Err(bad_claim(format!(
            "limit names have 1..={MAX_LIMIT_NAME_BYTES} bytes"
        )));
    }
    if let Some(b) = name.bytes().find(|b| {
        !(b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
    }) {
        return Err(bad_claim(format!(
            "limit name byte 0x{b:02x} outside [a-z0-9_.-]"
        )));
    }
    Ok(())
}

impl Limits {
    /// Validates a `limits` object (`BadClaim` on any violation).
    pub fn new(limits: BTreeMap<String, u64>) -> Result<Self> {
        if limits.is_empty() || limits.len() > MAX_LIMITS {
            return Err(bad_claim(format!(
                "limits hold 1..={MAX_LIMITS} entries, got {}",
                limits.len()
            )));
        }
        for (name, value) in &limits {
            check_limit_name(name)?;
            if *value > MAX_LIMIT_VALUE {
                return Err(bad_claim(format!("limit `{name}` above 2^53-1")));
            }
        }
        Ok(Self(limits))
    }

    /// No limits at all (the effective limits of a chain that carries none).
    pub fn none() -> Self {
        Self(BTreeMap::new())
    }

    /// Whether there are no limits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of limits.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The ceiling named `name`, if any.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.get(name).copied()
    }

    /// The limits, by name in byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The limit names, in byte order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether `self` (a link's limits) narrows `effective`: for every name present in both,
    /// `self <= effective`. A name only in `self` adds a ceiling; a name only in `effective` is
    /// inherited. On failure, returns the first offending name.
    pub fn narrows(&self, effective: &Limits) -> core::result::Result<(), String> {
        match self
            .0
            .iter()
            .find(|(name, v)| effective.get(name).is_some_and(|e| **v > e))
        {
            Some((name, _)) => Err(name.clone()),
            None => Ok(()),
        }
    }

    /// The effective limits after both: every name of either, at the smaller value where both
    /// have it.
    #[must_use]
    pub fn merge_min(&self, other: &Limits) -> Limits {
        let mut out = self.0.clone();
        for (name, v) in &other.0 {
            out.entry(name.clone())
                .and_modify(|e| *e = (*e).min(*v))
                .or_insert(*v);
        }
        Limits(out)
    }
}

impl TryFrom<BTreeMap<String, u64>> for Limits {
    type Error = Error;
    fn try_from(limits: BTreeMap<String, u64>) -> Result<Self> {
        Self::new(limits)
    }
}

impl<'de> Deserialize<'de> for Limits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Limits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of limit names to integers")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> core::result::Result<Limits, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((name, value)) = map.next_entry::<String, u64>()? {
                    // Checked before inserting, so an oversized object stops early.
                    if out.len() == MAX_LIMITS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_LIMITS} limits"
                        )));
                    }
                    if out.contains_key(&name) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate limit `{name}`"
                        )));
                    }
                    out.insert(name, value);
                }
                Limits::new(out).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn tok(s: &str) -> ScopeToken {
        ScopeToken::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn scope(s: &str) -> Scope {
        Scope::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn ids(list: &[&str]) -> IdSet {
        IdSet::new(list.iter().map(|s| id(s)).collect()).unwrap()
    }

    fn limits(list: &[(&str, u64)]) -> Limits {
        Limits::new(list.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()).unwrap()
    }

    /// A token of exactly `len` bytes made of 64-byte segments, optionally ending in `:*`.
    fn long_token(len: usize, wildcard: bool) -> String {
        let body = if wildcard { len - 2 } else { len };
        let mut out = String::new();
        while out.len() < body {
            if !out.is_empty() {
                out.push(':');
            }
            let n = (body - out.len()).min(64);
            out.push_str(&"s".repeat(n));
        }
        if wildcard {
            out.push_str(":*");
        }
        assert_eq!(out.len(), len);
        out
    }

    #[test]
    fn token_grammar_accepts() {
        let seg64 = "x".repeat(64);
        let cases = [
            "*".to_owned(),
            "a".to_owned(),
            "a:b".to_owned(),
            "a:b:c".to_owned(),
            "a:*".to_owned(),
            "a:b:*".to_owned(),
            "AZaz09-_.".to_owned(),
            "...:-:_".to_owned(),
            seg64.clone(),
            format!("{seg64}:*"),
            long_token(256, false),
            long_token(256, true),
        ];
        for s in &cases {
            let t = tok(s);
            assert_eq!(t.as_str(), s);
            assert_eq!(t.to_string(), *s);
            assert_eq!(t.is_wildcard(), s.ends_with('*'));
        }
    }

    #[test]
    fn token_grammar_rejects() {
        let seg65 = "x".repeat(65);
        let cases = [
            "".to_owned(),
            ":".to_owned(),
            "a:".to_owned(),
            ":a".to_owned(),
            "a::b".to_owned(),
            "*:a".to_owned(),
            "*:*".to_owned(),
            "a:*:b".to_owned(),
            "a:*:*".to_owned(),
            "**".to_owned(),
            "a*".to_owned(),
            "a:b*".to_owned(),
            "a:**".to_owned(),
            ":*".to_owned(),
            "a::*".to_owned(),
            "a b".to_owned(),
            " a".to_owned(),
            "a\t".to_owned(),
            "a\n".to_owned(),
            "a\0".to_owned(),
            "a/b".to_owned(),
            "a%20".to_owned(),
            "a,b".to_owned(),
            "a+b".to_owned(),
            "é".to_owned(),
            "a:\u{212a}".to_owned(),
            seg65.clone(),
            format!("a:{seg65}"),
            format!("{seg65}:*"),
            long_token(257, false),
            long_token(257, true),
        ];
        for s in &cases {
            let e = ScopeToken::parse(s).expect_err(s);
            assert_eq!(e.code(), ErrorCode::BadScope, "{s:?}");
        }
    }

    #[test]
    fn token_covering() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "a", true),
            ("*", "a:b:c", true),
            ("*", "a:*", true),
            ("*", "*", true),
            ("a", "a", true),
            ("a", "A", false),
            ("A", "a", false),
            ("a", "a:b", false),
            ("a", "a:*", false),
            ("a", "*", false),
            ("a:b", "a:b", true),
            ("a:b", "a", false),
            ("a:b", "a:b:c", false),
            ("a:b", "a:b:*", false),
            ("a:b", "a:*", false),
            ("a:*", "a:*", true),
            ("a:*", "a:b", true),
            ("a:*", "a:b:c", true),
            ("a:*", "a:b:*", true),
            ("a:*", "a", false),
            ("a:*", "ab", false),
            ("a:*", "ab:c", false),
            ("a:*", "ab:*", false),
            ("a:*", "b:a", false),
            ("a:*", "A:b", false),
            ("a:*", "*", false),
            ("a:b:*", "a:b:c", true),
            ("a:b:*", "a:b:c:*", true),
            ("a:b:*", "a:b:*", true),
            ("a:b:*", "a:b", false),
            ("a:b:*", "a:*", false),
            ("a:b:*", "a:bc:d", false),
            ("a:b:*", "a:c:b", false),
            ("a:b:*", "*", false),
            ("a.b:*", "a.b:c", true),
            ("a.b:*", "a:b:c", false),
            ("a:*", "a.b", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(tok(p).covers(&tok(t)), *want, "{p} covers {t}");
        }
    }

    #[test]
    fn scope_parse_accepts() {
        let sixty_four: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
        let sixty_four = sixty_four.join(" ");
        for s in ["a", "a b", "* a", "a a:*", "a:b a:b:*", "A a", &sixty_four] {
            let sc = scope(s);
            assert_eq!(sc.to_string(), s);
            assert_eq!(sc.tokens().len(), s.split(' ').count());
        }
    }

    #[test]
    fn scope_parse_rejects() {
        let sixty_five: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        let sixty_five = sixty_five.join(" ");
        let cases = [
            ("", "empty"),
            (" ", "only a space"),
            (" a", "leading space"),
            ("a ", "trailing space"),
            ("a  b", "double space"),
            ("a\tb", "tab separator"),
            ("a\nb", "newline separator"),
            ("a,b", "comma separator"),
            ("a a", "duplicate"),
            ("a:* b a:*", "duplicate pattern"),
            ("a b:", "bad second token"),
            ("a *:*", "bad wildcard token"),
            (&sixty_five, "65 tokens"),
        ];
        for (s, why) in cases {
            let e = Scope::parse(s).expect_err(why);
            assert_eq!(e.code(), ErrorCode::BadScope, "{why}");
        }
    }

    #[test]
    fn scope_covering() {
        let cases: &[(&str, &str, bool)] = &[
            ("a", "a", true),
            ("a b", "a", true),
            ("a b", "b a", true),
            ("a", "a b", false),
            ("a b", "a c", false),
            ("*", "a b:c c:d:*", true),
            ("a:* b", "a:x b", true),
            ("a:* b", "a:x a:y:* b", true),
            ("a:* b", "a", false),
            ("a:* b", "a:x c", false),
            ("a:x a:y", "a:*", false),
            ("a:b:* a:c:*", "a:*", false),
            ("a:b c", "a:b:c", false),
            (
                "repo:read:* issues:write",
                "repo:read:main issues:write",
                true,
            ),
            ("repo:read:* issues:write", "repo:write:main", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(scope(p).covers(&scope(t)), *want, "{p:?} covers {t:?}");
        }
        assert!(scope("a:*").covers_token(&tok("a:b")));
        assert!(!scope("a:*").covers_token(&tok("a")));
    }

    #[test]
    fn scope_concreteness() {
        for (s, want) in [
            ("a b:c", true),
            ("a:* b", false),
            ("*", false),
            ("a b:*", false),
        ] {
            assert_eq!(scope(s).is_concrete(), want, "{s}");
        }
    }

    #[test]
    fn scope_serde() {
        let sc: Scope = serde_json::from_str(r#""b a:*""#).unwrap();
        assert_eq!(sc, scope("b a:*"));
        assert_eq!(serde_json::to_string(&sc).unwrap(), r#""b a:*""#);
        for bad in [r#""""#, r#""a  b""#, r#""a a""#, r#"["a"]"#, "1", "null"] {
            assert!(serde_json::from_str::<Scope>(bad).is_err(), "{bad}");
        }
        let t: ScopeToken = serde_json::from_str(r#""a:*""#).unwrap();
        assert_eq!(t, tok("a:*"));
        assert!(serde_json::from_str::<ScopeToken>(r#""a b""#).is_err());
    }

    #[test]
    fn id_set_new() {
        let sixteen: Vec<SpiffeId> = (0..16)
            .map(|i| id(&format!("spiffe://td/agent/a{i}")))
            .collect();
        assert_eq!(
            IdSet::new(sixteen.clone()).unwrap().ids(),
            sixteen.as_slice()
        );
        let mut seventeen = sixteen.clone();
        seventeen.push(id("spiffe://td/agent/x"));
        let cases: &[(Vec<SpiffeId>, ErrorCode)] = &[
            (vec![], ErrorCode::BadClaim),
            (seventeen, ErrorCode::BadClaim),
            (
                vec![id("spiffe://td"), id("spiffe://td")],
                ErrorCode::BadClaim,
            ),
            (
                vec![
                    id("spiffe://td/agent/a"),
                    id("spiffe://td/svc/s"),
                    id("spiffe://td/agent/a"),
                ],
                ErrorCode::BadClaim,
            ),
            (vec![id("spiffe://td/x")], ErrorCode::BadId),
            (vec![id("spiffe://td/agent/a/task")], ErrorCode::BadId),
            (
                vec![id("spiffe://td"), id("spiffe://td/agent/a/b/c/d/e")],
                ErrorCode::BadId,
            ),
        ];
        for (list, code) in cases {
            let e = IdSet::new(list.clone()).expect_err("accepted");
            assert_eq!(e.code(), *code, "{list:?}");
        }
        for ok in [
            "spiffe://td",
            "spiffe://td/agent/a",
            "spiffe://td/agent/a/task/t",
            "spiffe://td/svc/s",
        ] {
            assert_eq!(IdSet::single(id(ok)).unwrap().ids(), &[id(ok)]);
        }
    }

    #[test]
    fn id_set_covering() {
        let id_cases: &[(&[&str], &str, bool)] = &[
            (&["spiffe://td"], "spiffe://td/agent/a/task/t", true),
            (&["spiffe://td"], "spiffe://td2/agent/a/task/t", false),
            (
                &["spiffe://example.org"],
                "spiffe://example.org.evil/svc/s",
                false,
            ),
            (&["spiffe://td/agent/a"], "spiffe://td/agent/a/task/t", true),
            (
                &["spiffe://td/agent/a"],
                "spiffe://td/agent/ab/task/t",
                false,
            ),
            (
                &["spiffe://td/agent/b", "spiffe://td/agent/a"],
                "spiffe://td/agent/a/task/t",
                true,
            ),
            (&["spiffe://td/svc/s"], "spiffe://td/svc/s", true),
            (&["spiffe://td/svc/s"], "spiffe://td/svc/t", false),
            (
                &["spiffe://td/agent/a/task/t"],
                "spiffe://td/agent/a",
                false,
            ),
        ];
        for (set, x, want) in id_cases {
            assert_eq!(ids(set).covers_id(&id(x)), *want, "{set:?} covers {x}");
        }
        let set_cases: &[(&[&str], &[&str], bool)] = &[
            (&["spiffe://td"], &["spiffe://td"], true),
            (
                &["spiffe://td"],
                &["spiffe://td/agent/a", "spiffe://td/svc/s"],
                true,
            ),
            (&["spiffe://td/agent/a"], &["spiffe://td"], false),
            (
                &["spiffe://td/agent/a"],
                &["spiffe://td/agent/a/task/t"],
                true,
            ),
            (
                &["spiffe://td/agent/a"],
                &["spiffe://td/agent/a/task/t", "spiffe://td/agent/b"],
                false,
            ),
            (
                &["spiffe://td/agent/a", "spiffe://td2"],
                &["spiffe://td2/svc/s", "spiffe://td/agent/a/task/t"],
                true,
            ),
            (
                &["spiffe://td/agent/a/task/t"],
                &["spiffe://td/agent/a"],
                false,
            ),
            (&["spiffe://td2"], &["spiffe://td"], false),
        ];
        for (parent, child, want) in set_cases {
            assert_eq!(
                ids(parent).covers(&ids(child)),
                *want,
                "{parent:?} covers {child:?}"
            );
        }
    }

    #[test]
    fn id_set_serde() {
        let json = r#"["spiffe://td/agent/a","spiffe://td2"]"#;
        let set: IdSet = serde_json::from_str(json).unwrap();
        assert_eq!(set, ids(&["spiffe://td/agent/a", "spiffe://td2"]));
        assert_eq!(serde_json::to_string(&set).unwrap(), json);
        let bad = [
            "[]",
            r#""spiffe://td""#,
            r#"["spiffe://td","spiffe://td"]"#,
            r#"["spiffe://td/x/y"]"#,
            r#"["SPIFFE://td"]"#,
            r#"["spiffe://td/"]"#,
            "[1]",
            "null",
            r#"{"a":"spiffe://td"}"#,
        ];
        for b in bad {
            assert!(serde_json::from_str::<IdSet>(b).is_err(), "{b}");
        }
        let seventeen: Vec<String> = (0..17).map(|i| format!("spiffe://td/agent/a{i}")).collect();
        let json = serde_json::to_string(&seventeen).unwrap();
        assert!(serde_json::from_str::<IdSet>(&json).is_err());
    }

    #[test]
    fn limits_new() {
        let name64 = "n".repeat(64);
        let name65 = "n".repeat(65);
        let ok = limits(&[("calls", 0), ("a-b_c.9", MAX_LIMIT_VALUE), (&name64, 1)]);
        assert_eq!(ok.get("calls"), Some(0));
        assert_eq!(ok.get("a-b_c.9"), Some(MAX_LIMIT_VALUE));
        assert_eq!(ok.get("missing"), None);
        assert_eq!(ok.len(), 3);
        let thirty_two: BTreeMap<String, u64> = (0..32).map(|i| (format!("l{i}"), i)).collect();
        assert_eq!(Limits::new(thirty_two.clone()).unwrap().len(), 32);
        let mut thirty_three = thirty_two;
        thirty_three.insert("l32".into(), 1);

        let bad: Vec<BTreeMap<String, u64>> = vec![
            BTreeMap::new(),
            thirty_three,
            [(String::new(), 1)].into(),
            [(name65, 1)].into(),
            [("Calls".to_owned(), 1)].into(),
            [("a b".to_owned(), 1)].into(),
            [("a:b".to_owned(), 1)].into(),
            [("a/b".to_owned(), 1)].into(),
            [("é".to_owned(), 1)].into(),
            [("a\0".to_owned(), 1)].into(),
            [("calls".to_owned(), MAX_LIMIT_VALUE + 1)].into(),
            [("calls".to_owned(), u64::MAX)].into(),
        ];
        for m in bad {
            let e = Limits::new(m.clone()).expect_err("accepted");
            assert_eq!(e.code(), ErrorCode::BadClaim, "{m:?}");
        }
        assert!(Limits::none().is_empty());
        assert_eq!(Limits::default(), Limits::none());
    }

    #[test]
    fn limits_narrowing() {
        let cases: &[(&[(&str, u64)], &[(&str, u64)], Option<&str>)] = &[
            (&[("a", 5)], &[("a", 5)], None),
            (&[("a", 4)], &[("a", 5)], None),
            (&[("a", 0)], &[("a", 5)], None),
            (&[("a", 6)], &[("a", 5)], Some("a")),
            (&[("b", 100)], &[("a", 5)], None),
            (&[("a", 5)], &[("a", 5), ("b", 1)], None),
            (&[("a", 1), ("b", 2)], &[("a", 5), ("b", 1)], Some("b")),
            (&[("a", MAX_LIMIT_VALUE)], &[("a", 0)], Some("a")),
        ];
        for (link, effective, want) in cases {
            let got = limits(link).narrows(&limits(effective));
            assert_eq!(
                got.err().as_deref(),
                *want,
                "{link:?} narrows {effective:?}"
            );
        }
        assert_eq!(limits(&[("a", 1)]).narrows(&Limits::none()), Ok(()));
        assert_eq!(Limits::none().narrows(&limits(&[("a", 1)])), Ok(()));
    }

    #[test]
    fn limits_merge_min() {
        let cases: &[(&[(&str, u64)], &[(&str, u64)], &[(&str, u64)])] = &[
            (&[("a", 5)], &[("a", 3)], &[("a", 3)]),
            (&[("a", 3)], &[("a", 5)], &[("a", 3)]),
            (&[("a", 5)], &[("b", 3)], &[("a", 5), ("b", 3)]),
            (
                &[("a", 5), ("b", 1)],
                &[("b", 3), ("c", 0)],
                &[("a", 5), ("b", 1), ("c", 0)],
            ),
        ];
        for (x, y, want) in cases {
            assert_eq!(
                limits(x).merge_min(&limits(y)),
                limits(want),
                "{x:?} min {y:?}"
            );
            assert_eq!(
                limits(y).merge_min(&limits(x)),
                limits(want),
                "{y:?} min {x:?}"
            );
        }
        assert_eq!(
            Limits::none().merge_min(&limits(&[("a", 1)])),
            limits(&[("a", 1)])
        );
        assert_eq!(
            limits(&[("a", 1)]).merge_min(&Limits::none()),
            limits(&[("a", 1)])
        );
        assert!(Limits::none().merge_min(&Limits::none()).is_empty());
    }

    #[test]
    fn limits_accessors() {
        let l = limits(&[("b", 2), ("a", 1)]);
        assert_eq!(l.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(l.iter().collect::<Vec<_>>(), [("a", 1), ("b", 2)]);
    }

    #[test]
    fn limits_serde() {
        let l: Limits = serde_json::from_str(r#"{"calls":10,"bytes":9007199254740991}"#).unwrap();
        assert_eq!(l, limits(&[("calls", 10), ("bytes", MAX_LIMIT_VALUE)]));
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"bytes":9007199254740991,"calls":10}"#
        );
        let thirty_three: BTreeMap<String, u64> = (0..33).map(|i| (format!("l{i}"), i)).collect();
        let thirty_three = serde_json::to_string(&thirty_three).unwrap();
        let bad = [
            "{}",
            r#"{"calls":-1}"#,
            r#"{"calls":1.0}"#,
            r#"{"calls":1e2}"#,
            r#"{"calls":"1"}"#,
            r#"{"calls":null}"#,
            r#"{"calls":9007199254740992}"#,
            r#"{"calls":1,"calls":2}"#,
            r#"{"Calls":1}"#,
            r#"{"":1}"#,
            "[]",
            "null",
            "1",
            &thirty_three,
        ];
        for b in bad {
            assert!(serde_json::from_str::<Limits>(b).is_err(), "{b}");
        }
    }
}
