//! Scopes: what a chain allows, which a delegation can only narrow (spec/PROTOCOL.md section
//! 7.1). Audiences are in `audience.rs`, limits in `limits.rs`.
//!
//! ```
//! use agentid_protocol::Scope;
//! let parent = Scope::parse("repo:read:* issues:write").unwrap();
//! assert!(parent.covers(&Scope::parse("repo:read:main issues:write").unwrap()));
//! assert!(!parent.covers(&Scope::parse("repo:read").unwrap()));
//! assert!(!parent.covers(&Scope::parse("repo:write:main").unwrap()));
//! ```

use core::fmt;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

const WILDCARD: &str = "*";

/// Maximum length of one scope token in bytes.
pub const MAX_SCOPE_TOKEN_BYTES: usize = 256;
/// Maximum length of one scope segment in bytes.
pub const MAX_SCOPE_SEGMENT_BYTES: usize = 64;
/// Maximum number of tokens in a scope.
pub const MAX_SCOPE_TOKENS: usize = 64;

fn bad_scope(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadScope, detail)
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
            "scope character {} outside [A-Za-z0-9-_.]",
            crate::encoding::shown_byte(b)
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
        parse_conversions!($ty);
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.to_string()
            }
        }
    )*};
}

parsed_from_string!(ScopeToken, Scope);

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
}
