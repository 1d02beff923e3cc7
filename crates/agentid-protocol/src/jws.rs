//! JWS Compact framing (RFC 7515) with agentid's strict header profile.
//!
//! The protected header holds only `alg`, `typ` and, for grants and revocation lists, `kid`.
//! Keys never come from the header (`jwk`, `jku`, `x5c`, ... are `BadHeader`: spec/PROTOCOL.md
//! section 4.2, and "Algorithm confusion" in section 19), and the signature is always checked
//! over the exact transmitted bytes.

use std::collections::BTreeSet;

use serde::de::MapAccess;
use serde_json::Value;

use crate::crypto::Algorithm;
use crate::encoding::{b64_check, b64_decode_in, b64_encode_into, parse_ijson_object, StrictValue};
use crate::error::{Error, ErrorCode, Result};
use crate::token::members::{read_object, Object, StrOr, StrOrSeed};

/// The `typ` of an agentid token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// A grant signed by a trust domain's authority (`agentid-grant+jwt`).
    Grant,
    /// A delegation link signed by the previous holder (`agentid-link+jwt`).
    Link,
    /// A per-connection hop proof (`agentid-proof+jwt`).
    Proof,
    /// A signed revocation list (`agentid-revocations+jwt`).
    Revocations,
}

impl TokenType {
    /// The `typ` issuers write, e.g. `agentid-grant+jwt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "agentid-grant+jwt",
            Self::Link => "agentid-link+jwt",
            Self::Proof => "agentid-proof+jwt",
            Self::Revocations => "agentid-revocations+jwt",
        }
    }

    /// Whether a header's `typ` names this type: compared ASCII-case-insensitively after
    /// removing one leading `application/` (itself matched case-insensitively), as RFC 7515
    /// section 4.1.9 recommends.
    pub fn matches(self, typ: &str) -> bool {
        const PREFIX: &str = "application/";
        let bare = match typ.get(..PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(PREFIX) => typ.get(PREFIX.len()..).unwrap_or(""),
            _ => typ,
        };
        bare.eq_ignore_ascii_case(self.as_str())
    }

    /// Whether the header may carry `kid` (the key is looked up in a bundle).
    fn allows_kid(self) -> bool {
        matches!(self, Self::Grant | Self::Revocations)
    }
}

impl core::fmt::Display for TokenType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest token accepted or produced (8 KiB).
pub(crate) const MAX_TOKEN_BYTES: usize = 8192;

/// A JWS Compact token split into its parts; all borrow from `text`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawToken<'a> {
    /// The whole token.
    pub text: &'a str,
    /// The base64url protected header.
    pub header_b64: &'a str,
    /// The base64url payload.
    pub payload_b64: &'a str,
    /// The base64url signature.
    pub signature_b64: &'a str,
}

impl<'a> RawToken<'a> {
    /// The JWS signing input: the exact transmitted bytes `header "." payload`.
    pub fn signing_input(&self) -> &'a [u8] {
        // Everything before the last '.', i.e. before the signature.
        self.text
            .rsplit_once('.')
            .map_or(self.text, |(input, _)| input)
            .as_bytes()
    }
}

/// Rules 1.4.1 to 1.4.3 (spec/PROTOCOL.md section 10, phase 1) and the framing of a hop proof
/// (section 12, P1): a JWS Compact token of at most [`MAX_TOKEN_BYTES`] (`TokenTooLarge`,
/// checked first), exactly three non-empty parts (`Malformed`), each strict base64url
/// (`BadBase64`).
///
/// All three parts are checked here so that framing rejects bad base64url before any
/// cryptography runs, whichever part carries it.
pub(crate) fn split(token: &str) -> Result<RawToken<'_>> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::new(
            ErrorCode::TokenTooLarge,
            format!("token of {} bytes exceeds {MAX_TOKEN_BYTES}", token.len()),
        ));
    }
    split_parts(token)
}

/// Three non-empty `.`-separated parts (`Malformed`), each strict base64url (`BadBase64`),
/// whatever the size: [`split`] for tokens, and a revocation list's framing (section 14.1, R1)
/// under its own cap.
pub(crate) fn split_parts(token: &str) -> Result<RawToken<'_>> {
    let malformed = || Error::new(ErrorCode::Malformed, "a JWS has three non-empty parts");
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
        return Err(malformed());
    }
    // Validated here, decoded once by whoever reads the part.
    for part in [header_b64, payload_b64, signature_b64] {
        b64_check(part)?;
    }
    Ok(RawToken {
        text: token,
        header_b64,
        payload_b64,
        signature_b64,
    })
}

/// A validated protected header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The signature algorithm.
    pub alg: Algorithm,
    /// The token type (always the expected one).
    pub typ: TokenType,
    /// The key id, for grants and revocation lists.
    pub kid: Option<String>,
}

/// Rules 2.1 to 2.5 (spec/PROTOCOL.md section 10, phase 2), and the headers of a hop proof
/// (section 12, P2) and a revocation list (section 14.1, R2). Parses and checks the protected
/// header, in this order: base64url (`BadBase64`); an I-JSON
/// object (`BadHeader`); members only `alg`, `typ` and `kid` (`BadHeader`); `typ` present, a
/// string, and `expected` (`BadTyp`); `alg` present and `ES256`, `Ed25519` or `EdDSA`
/// (`UnsupportedAlg`); `kid` present, a non-empty string, for grants and revocation lists and
/// absent otherwise (`BadHeader`).
pub(crate) fn parse_header(raw: &RawToken<'_>, expected: TokenType) -> Result<Header> {
    // A header is short: decoded onto the stack (a longer one onto the heap).
    let (mut buf, mut heap) = ([0u8; 256], Vec::new());
    let bytes = b64_decode_in(raw.header_b64, &mut buf, &mut heap)?;
    let members: HeaderMembers<'_> = read_object(bytes)
        .map_err(|e| Error::new(ErrorCode::BadHeader, format!("header: {}", e.detail())))?;
    // `kid` is checked last, so that a grant presented as a link fails `bad_typ`.
    if let Some(name) = members.first_not_in(&HeaderName::ALL) {
        return Err(Error::new(
            ErrorCode::BadHeader,
            format!("header member {name:?} is not allowed in a {expected}"),
        ));
    }
    match &members.typ {
        Some(typ) if typ.as_str().is_some_and(|t| expected.matches(t)) => {}
        Some(other) => {
            return Err(Error::new(
                ErrorCode::BadTyp,
                format!("typ {} where {expected} is expected", other.to_value()),
            ))
        }
        None => {
            return Err(Error::new(
                ErrorCode::BadTyp,
                format!("typ missing, {expected} expected"),
            ))
        }
    }
    let alg = members
        .alg
        .as_ref()
        .and_then(StrOr::as_str)
        .and_then(Algorithm::from_header)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::UnsupportedAlg,
                format!(
                    "alg {} is not ES256, Ed25519 or EdDSA",
                    members.alg.as_ref().map_or(Value::Null, StrOr::to_value)
                ),
            )
        })?;
    let kid = match members.kid {
        None if expected.allows_kid() => {
            return Err(Error::new(
                ErrorCode::BadHeader,
                format!("a {expected} needs `kid`"),
            ))
        }
        None => None,
        Some(_) if !expected.allows_kid() => {
            return Err(Error::new(
                ErrorCode::BadHeader,
                format!("a {expected} takes no `kid`"),
            ))
        }
        Some(StrOr::Str(kid)) if !kid.is_empty() => Some(kid.into_owned()),
        Some(_) => {
            return Err(Error::new(
                ErrorCode::BadHeader,
                "kid must be a non-empty string",
            ))
        }
    };
    Ok(Header {
        alg,
        typ: expected,
        kid,
    })
}

/// The members a protected header may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderName {
    Alg,
    Typ,
    Kid,
}

impl HeaderName {
    const ALL: [Self; 3] = [Self::Alg, Self::Typ, Self::Kid];
}

/// A protected header read in one pass ([`read_object`]): `alg`, `typ` and `kid` as their
/// checks read them, and the names of the other members (each refused).
#[derive(Debug, Default)]
struct HeaderMembers<'a> {
    alg: Option<StrOr<'a>>,
    typ: Option<StrOr<'a>>,
    kid: Option<StrOr<'a>>,
    others: BTreeSet<String>,
}

impl<'a> HeaderMembers<'a> {
    fn slot(&self, name: HeaderName) -> &Option<StrOr<'a>> {
        match name {
            HeaderName::Alg => &self.alg,
            HeaderName::Typ => &self.typ,
            HeaderName::Kid => &self.kid,
        }
    }
}

impl<'de> Object<'de> for HeaderMembers<'de> {
    type Name = HeaderName;
    const NAMES: &'static [HeaderName] = &HeaderName::ALL;

    fn name(s: &str) -> Option<HeaderName> {
        Some(match s {
            "alg" => HeaderName::Alg,
            "typ" => HeaderName::Typ,
            "kid" => HeaderName::Kid,
            _ => return None,
        })
    }

    fn spelling(name: HeaderName) -> &'static str {
        match name {
            HeaderName::Alg => "alg",
            HeaderName::Typ => "typ",
            HeaderName::Kid => "kid",
        }
    }

    fn has(&self, name: HeaderName) -> bool {
        self.slot(name).is_some()
    }

    fn read<A: MapAccess<'de>>(
        &mut self,
        name: HeaderName,
        map: &mut A,
        held_at: StrictValue,
    ) -> core::result::Result<(), A::Error> {
        let value = Some(map.next_value_seed(StrOrSeed { held_at })?);
        match name {
            HeaderName::Alg => self.alg = value,
            HeaderName::Typ => self.typ = value,
            HeaderName::Kid => self.kid = value,
        }
        Ok(())
    }

    fn others(&self) -> &BTreeSet<String> {
        &self.others
    }

    fn others_mut(&mut self) -> &mut BTreeSet<String> {
        &mut self.others
    }
}

/// Builds a JWS Compact token: header `{"alg":..,"typ":..[,"kid":..]}`, `claims_json` as the
/// payload, and the signature from `sign` over the signing input.
///
/// Refuses to produce what a verifier would reject: `kid` missing or empty on a grant or
/// revocation list, or present on a link or proof (`BadHeader`); claims that are not an I-JSON object (`BadJson`); a signature that is not 64
/// bytes, e.g. a DER ECDSA signature from an HSM (`BadSignature`); a token over 8 KiB
/// (`TokenTooLarge`).
pub(crate) fn sign_compact(
    typ: TokenType,
    alg: Algorithm,
    kid: Option<&str>,
    claims_json: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<String> {
    build_compact(typ, alg, kid, claims_json, true, sign)
}

/// [`sign_compact`] for claims whose writer guarantees an I-JSON object (the revocation list's
/// payload, written member by member: parsing it back would cost as much as building it).
pub(crate) fn sign_compact_written(
    typ: TokenType,
    alg: Algorithm,
    kid: Option<&str>,
    claims_json: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<String> {
    build_compact(typ, alg, kid, claims_json, false, sign)
}

fn build_compact(
    typ: TokenType,
    alg: Algorithm,
    kid: Option<&str>,
    claims_json: &[u8],
    parse_claims: bool,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<String> {
    // Written by hand so the member order is fixed whatever serde_json's map type is.
    let mut header_json = format!(r#"{{"alg":"{}","typ":"{}""#, alg.as_str(), typ.as_str());
    match kid {
        Some(kid) if typ.allows_kid() && !kid.is_empty() => {
            header_json.push_str(r#","kid":"#);
            header_json.push_str(&Value::from(kid).to_string()); // a JSON string, escaped
        }
        None if !typ.allows_kid() => {}
        _ => {
            return Err(Error::new(
                ErrorCode::BadHeader,
                format!(
                    "a {typ} needs a non-empty kid if and only if it is a grant or revocation list"
                ),
            ))
        }
    }
    header_json.push('}');
    if parse_claims {
        parse_ijson_object(claims_json)?;
    }
    // One string for the whole token: header, payload and the 64-byte signature appended as
    // encoded, with their two dots.
    let b64_len = |n: usize| n.div_ceil(3) * 4;
    let mut token = String::with_capacity(
        b64_len(header_json.len()) + b64_len(claims_json.len()) + b64_len(64) + 2,
    );
    b64_encode_into(header_json.as_bytes(), &mut token);
    token.push('.');
    b64_encode_into(claims_json, &mut token);
    let signature = sign(token.as_bytes())?;
    if signature.len() != 64 {
        return Err(Error::new(
            ErrorCode::BadSignature,
            format!(
                "signer returned {} bytes, a JWS {alg} signature is 64",
                signature.len()
            ),
        ));
    }
    token.push('.');
    b64_encode_into(&signature, &mut token);
    // Revocation lists are not chain tokens: their size is bounded by the list's own cap.
    if typ != TokenType::Revocations && token.len() > MAX_TOKEN_BYTES {
        return Err(Error::new(
            ErrorCode::TokenTooLarge,
            format!("token of {} bytes exceeds {MAX_TOKEN_BYTES}", token.len()),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{verify, AuthorityKey, JwsSigner, TaskKey};
    use crate::encoding::{b64_decode, b64_encode};

    const ALL: [TokenType; 4] = [
        TokenType::Grant,
        TokenType::Link,
        TokenType::Proof,
        TokenType::Revocations,
    ];

    /// A token with the given header JSON, an empty claims object and a zero signature.
    fn token_with_header(header: &str) -> String {
        format!(
            "{}.{}.{}",
            b64_encode(header.as_bytes()),
            b64_encode(b"{}"),
            b64_encode(&[0; 64])
        )
    }

    fn header_of(header: &str, expected: TokenType) -> Result<Header> {
        let token = token_with_header(header);
        parse_header(&split(&token).unwrap(), expected)
    }

    #[test]
    fn typ_matching_table() {
        let cases = [
            (TokenType::Grant, "agentid-grant+jwt", true),
            (TokenType::Grant, "AGENTID-GRANT+JWT", true),
            (TokenType::Grant, "application/agentid-grant+jwt", true),
            (TokenType::Grant, "Application/Agentid-Grant+JWT", true),
            (TokenType::Grant, "APPLICATION/agentid-grant+jwt", true),
            (TokenType::Link, "agentid-link+jwt", true),
            (TokenType::Proof, "application/agentid-proof+jwt", true),
            (TokenType::Revocations, "agentid-revocations+JWT", true),
            (TokenType::Grant, "agentid-link+jwt", false),
            (TokenType::Link, "agentid-grant+jwt", false),
            (
                TokenType::Grant,
                "application/application/agentid-grant+jwt",
                false,
            ),
            (TokenType::Grant, "application/", false),
            (TokenType::Grant, "application", false),
            (TokenType::Grant, "applicationagentid-grant+jwt", false),
            (TokenType::Grant, "text/agentid-grant+jwt", false),
            (TokenType::Grant, " agentid-grant+jwt", false),
            (TokenType::Grant, "agentid-grant+jwt ", false),
            (TokenType::Grant, "agentid-grant", false),
            (TokenType::Grant, "JWT", false),
            (TokenType::Grant, "", false),
            // Unicode case folding must not apply: K (Kelvin sign) is not k.
            (TokenType::Link, "agentid-lin\u{212a}+jwt", false),
            // A multi-byte character straddling the prefix length must not panic.
            (TokenType::Grant, "applicationé/agentid-grant+jwt", false),
        ];
        for (tt, typ, want) in cases {
            assert_eq!(tt.matches(typ), want, "{tt} vs {typ:?}");
        }
        for tt in ALL {
            assert!(tt.matches(tt.as_str()));
            assert_eq!(tt.to_string(), tt.as_str());
        }
    }

    #[test]
    fn split_table() {
        let good = token_with_header(r#"{"alg":"ES256","typ":"agentid-link+jwt"}"#);
        let sig = b64_encode(&[1; 64]);
        let max = format!("AA.{}.{sig}", "A".repeat(MAX_TOKEN_BYTES - 4 - sig.len()));
        assert_eq!(max.len(), MAX_TOKEN_BYTES);
        let over = format!(
            "AA.{}.{sig}",
            "A".repeat(MAX_TOKEN_BYTES - 4 - sig.len() + 1)
        );
        let over_malformed = "x".repeat(MAX_TOKEN_BYTES + 1);
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Option<ErrorCode>)> = vec![
            ("good", good.clone(), None),
            ("exactly 8 KiB", max, None),
            ("one byte over", over, Some(ErrorCode::TokenTooLarge)),
            ("size checked before framing", over_malformed, Some(ErrorCode::TokenTooLarge)),
            ("empty", String::new(), Some(ErrorCode::Malformed)),
            ("one part", "abc".into(), Some(ErrorCode::Malformed)),
            ("two parts", "abc.def".into(), Some(ErrorCode::Malformed)),
            ("four parts", format!("{good}.AAAA"), Some(ErrorCode::Malformed)),
            ("five parts (JWE)", "a.b.c.d.e".into(), Some(ErrorCode::Malformed)),
            ("empty header", ".AAAA.AAAA".into(), Some(ErrorCode::Malformed)),
            ("empty payload", "AAAA..AAAA".into(), Some(ErrorCode::Malformed)),
            ("empty signature (unsecured JWS)", "AAAA.AAAA.".into(), Some(ErrorCode::Malformed)),
            ("only dots", "..".into(), Some(ErrorCode::Malformed)),
            ("padded header", "AA==.AAAA.AAAA".into(), Some(ErrorCode::BadBase64)),
            ("padded signature", "AAAA.AAAA.AA==".into(), Some(ErrorCode::BadBase64)),
            ("space in payload", "AAAA.AA AA.AAAA".into(), Some(ErrorCode::BadBase64)),
            ("newline at end", "AAAA.AAAA.AAAA\n".into(), Some(ErrorCode::BadBase64)),
            ("standard alphabet", "AAAA.AA+/.AAAA".into(), Some(ErrorCode::BadBase64)),
            ("non-canonical trailing bits", "AAAA.AB.AAAA".into(), Some(ErrorCode::BadBase64)),
            ("impossible length", "AAAAA.AAAA.AAAA".into(), Some(ErrorCode::BadBase64)),
            ("chain separator inside", "AAAA.AA~A.AAAA".into(), Some(ErrorCode::BadBase64)),
        ];
        for (name, token, want) in cases {
            let got = split(&token);
            match want {
                None => {
                    let raw = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(
                        format!(
                            "{}.{}.{}",
                            raw.header_b64, raw.payload_b64, raw.signature_b64
                        ),
                        token
                    );
                    assert_eq!(
                        raw.signing_input(),
                        format!("{}.{}", raw.header_b64, raw.payload_b64).as_bytes()
                    );
                }
                Some(code) => assert_eq!(got.unwrap_err().code(), code, "{name}"),
            }
        }
    }

    #[test]
    fn parse_header_accepts() {
        use Algorithm::{Ed25519, Es256};
        let cases: Vec<(&str, TokenType, Algorithm, Option<&str>)> = vec![
            (
                r#"{"alg":"ES256","typ":"agentid-grant+jwt","kid":"k1"}"#,
                TokenType::Grant,
                Es256,
                Some("k1"),
            ),
            (
                r#"{"alg":"Ed25519","typ":"agentid-grant+jwt","kid":"k"}"#,
                TokenType::Grant,
                Ed25519,
                Some("k"),
            ),
            (
                r#"{"kid":"k","typ":"application/agentid-revocations+jwt","alg":"EdDSA"}"#,
                TokenType::Revocations,
                Ed25519,
                Some("k"),
            ),
            (
                r#"{"alg":"ES256","typ":"agentid-link+jwt"}"#,
                TokenType::Link,
                Es256,
                None,
            ),
            (
                r#"{"alg":"EdDSA","typ":"AGENTID-PROOF+JWT"}"#,
                TokenType::Proof,
                Ed25519,
                None,
            ),
            (
                " {\"typ\" : \"agentid-link+jwt\" ,\n \"alg\":\"Ed25519\"} ",
                TokenType::Link,
                Ed25519,
                None,
            ),
            (
                r#"{"alg":"ES256","typ":"agentid-grant+jwt","kid":"\u006b"}"#,
                TokenType::Grant,
                Es256,
                Some("k"),
            ),
        ];
        for (header, tt, alg, kid) in cases {
            let h = header_of(header, tt).unwrap_or_else(|e| panic!("{header}: {e}"));
            assert_eq!(
                h,
                Header {
                    alg,
                    typ: tt,
                    kid: kid.map(String::from)
                },
                "{header}"
            );
        }
    }

    #[test]
    fn parse_header_rejects() {
        use ErrorCode::{BadHeader, BadJson, BadTyp, UnsupportedAlg};
        let g = TokenType::Grant;
        let l = TokenType::Link;
        let p = TokenType::Proof;
        #[rustfmt::skip]
        let cases: Vec<(&str, TokenType, ErrorCode)> = vec![
            // members outside the allow-list (keys from the header, spec 4.2)
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","crit":["exp"]}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","jwk":{}}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","jku":"https://x"}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","x5u":"https://x"}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","x5c":[]}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","x5t#S256":"x"}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","b64":false}"#, l, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","cty":"JWT"}"#, l, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","zip":"DEF"}"#, l, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","enc":"A128GCM"}"#, l, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","Alg":"none"}"#, l, BadHeader),
            // kid exactly where a bundle lookup uses it
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt"}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-revocations+jwt"}"#, TokenType::Revocations, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","kid":"k"}"#, l, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-proof+jwt","kid":"k"}"#, p, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","kid":""}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","kid":1}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","kid":null}"#, g, BadHeader),
            // not an I-JSON object
            (r#"{"alg":"ES256","alg":"none","typ":"agentid-grant+jwt"}"#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","typ":"agentid-grant+jwt"}"#, g, BadHeader),
            (r#"["alg","ES256"]"#, g, BadHeader),
            (r#""ES256""#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt""#, g, BadHeader),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt"} x"#, g, BadHeader),
            // typ
            (r#"{"alg":"ES256"}"#, g, BadTyp),
            (r#"{"alg":"ES256","typ":"JWT"}"#, g, BadTyp),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt"}"#, g, BadTyp),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt"}"#, l, BadTyp),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt"}"#, TokenType::Revocations, BadTyp),
            (r#"{"alg":"ES256","typ":null}"#, l, BadTyp),
            (r#"{"alg":"ES256","typ":["agentid-link+jwt"]}"#, l, BadTyp),
            // alg (spec 4.3)
            (r#"{"typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":"none","typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":"None","typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":"HS256","typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":"RS256","typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":"es256","typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":"ES384","typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":"","typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":null,"typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            (r#"{"alg":["ES256"],"typ":"agentid-link+jwt"}"#, l, UnsupportedAlg),
            // order of checks: members, then typ, then alg
            (r#"{"alg":"none","typ":"JWT","jwk":{}}"#, l, BadHeader),
            (r#"{"alg":"none","typ":"JWT"}"#, l, BadTyp),
            (r#"{"alg":"none","typ":"agentid-grant+jwt","kid":""}"#, g, UnsupportedAlg),
            (r#"{"alg":"none","typ":"agentid-grant+jwt"}"#, g, UnsupportedAlg),
            (r#"{"alg":"none","typ":"agentid-link+jwt","kid":"k"}"#, l, UnsupportedAlg),
            // a grant presented where a link is expected fails on typ, not on its kid
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","kid":"k"}"#, l, BadTyp),
        ];
        for (header, tt, code) in cases {
            let err = header_of(header, tt).expect_err(header);
            assert_eq!(err.code(), code, "{header} as {tt}: {err}");
        }
        // Invalid UTF-8 in the header is a header error, not a JSON one.
        let token = format!(
            "{}.e30.{}",
            b64_encode(b"{\"alg\":\"\xff\"}"),
            b64_encode(&[0; 64])
        );
        let err = parse_header(&split(&token).unwrap(), l).unwrap_err();
        assert_eq!(err.code(), BadHeader);
        assert_ne!(err.code(), BadJson);
    }

    /// The I-JSON rules and the order of the checks, pinned with each error's code and
    /// detail: duplicate names after unescaping, escapes in names, lone surrogates, nesting,
    /// numbers out of range, trailing data, a later I-JSON fault winning over an earlier bad
    /// member, and the first refused member named in byte order.
    #[test]
    fn parse_header_pins_i_json_and_the_order_of_checks() {
        let g = TokenType::Grant;
        let l = TokenType::Link;
        let outcome = |header: &[u8], tt: TokenType| {
            let token = format!(
                "{}.e30.{}",
                crate::encoding::b64_encode(header),
                crate::encoding::b64_encode(&[0; 64])
            );
            match parse_header(&split(&token).unwrap(), tt) {
                Ok(h) => format!("ok {h:?}"),
                Err(e) => format!("{} {}", e.code(), e.detail()),
            }
        };
        #[rustfmt::skip]
        let cases: &[(&str, TokenType, &str)] = &[
            // duplicates, compared after unescaping, detected before the value is read
            (r#"{"alg":"ES256","\u0061lg":"ES256","typ":"agentid-link+jwt"}"#, l, r##"bad_header header: not I-JSON: duplicate member name "alg" at line 1 column 25"##),
            (r#"{"typ":"agentid-link+jwt","alg":"ES256","typ":1e400}"#, l, r##"bad_header header: not I-JSON: duplicate member name "typ" at line 1 column 45"##),
            (r#"{"kid":"k","alg":"ES256","typ":"agentid-grant+jwt","k\u0069d":"k"}"#, g, r##"bad_header header: not I-JSON: duplicate member name "kid" at line 1 column 61"##),
            (r#"{"x":1,"alg":"ES256","\u0078":2,"typ":"agentid-link+jwt"}"#, l, r##"bad_header header: not I-JSON: duplicate member name "x" at line 1 column 29"##),
            // escapes in names and values
            (r#"{"\u0061lg":"ES256","t\u0079p":"agentid-l\u0069nk+jwt"}"#, l, r##"ok Header { alg: Es256, typ: Link, kid: None }"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","\u0000":1}"#, l, r##"bad_header header member "\0" is not allowed in a agentid-link+jwt"##),
            (r#"{"al\u0000g":"ES256","typ":"agentid-link+jwt"}"#, l, r##"bad_header header member "al\0g" is not allowed in a agentid-link+jwt"##),
            (r#"{"alg":"ES256\u0000","typ":"agentid-link+jwt"}"#, l, r##"unsupported_alg alg "ES256\u0000" is not ES256, Ed25519 or EdDSA"##),
            (r#"{"alg":"ES256","typ":"J\"W\\T\u0001"}"#, l, r##"bad_typ typ "J\"W\\T\u0001" where agentid-link+jwt is expected"##),
            (r#"{"alg":"ES\u0032\u00356","typ":"agentid-grant+jwt","kid":"\u00e9\n"}"#, g, r##"ok Header { alg: Es256, typ: Grant, kid: Some("é\n") }"##),
            // lone surrogates, in a value and in a name, before other faults
            (r#"{"alg":"\ud800","typ":"agentid-link+jwt"}"#, l, r##"bad_header header: not I-JSON: unexpected end of hex escape at line 1 column 15"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","\udc00":1}"#, l, r##"bad_header header: not I-JSON: lone leading surrogate in hex escape at line 1 column 47"##),
            (r#"{"jwk":{},"typ":"JWT","alg":"\ud83d\ude00"}"#, l, r##"bad_header header member "jwk" is not allowed in a agentid-link+jwt"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","x":"\ud83d\ude00"}"#, l, r##"bad_header header member "x" is not allowed in a agentid-link+jwt"##),
            // nested values in header members
            (r#"{"alg":{"a":{}},"typ":"agentid-link+jwt"}"#, l, r##"unsupported_alg alg {"a":{}} is not ES256, Ed25519 or EdDSA"##),
            (r#"{"alg":"ES256","typ":{"a":[1,{"b":null}]}}"#, l, r##"bad_typ typ {"a":[1,{"b":null}]} where agentid-link+jwt is expected"##),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","kid":{"a":1}}"#, g, r##"bad_header kid must be a non-empty string"##),
            (r#"{"alg":"ES256","typ":"agentid-grant+jwt","kid":["k"]}"#, g, r##"bad_header kid must be a non-empty string"##),
            (r#"{"alg":"ES256","typ":[[[[[[[1]]]]]]]}"#, l, r##"bad_typ typ [[[[[[[1]]]]]]] where agentid-link+jwt is expected"##),
            (r#"{"alg":"ES256","typ":[[[[[[[[1]]]]]]]]}"#, l, r##"bad_header header: not I-JSON: nesting deeper than 8 at line 1 column 29"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","x":{"a":{"b":{"c":{"d":{"e":{"f":{}}}}}}}}"#, l, r##"bad_header header member "x" is not allowed in a agentid-link+jwt"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","x":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{}}}}}}}}}"#, l, r##"bad_header header: not I-JSON: nesting deeper than 8 at line 1 column 81"##),
            (r#"{"alg":"ES256","typ":{"a":1,"\u0061":2}}"#, l, r##"bad_header header: not I-JSON: duplicate member name "a" at line 1 column 36"##),
            // numbers: spellings and range
            (r#"{"alg":1,"typ":"agentid-link+jwt"}"#, l, r##"unsupported_alg alg 1 is not ES256, Ed25519 or EdDSA"##),
            (r#"{"alg":-1,"typ":"agentid-link+jwt"}"#, l, r##"unsupported_alg alg -1 is not ES256, Ed25519 or EdDSA"##),
            (r#"{"alg":-0,"typ":"agentid-link+jwt"}"#, l, r##"unsupported_alg alg -0.0 is not ES256, Ed25519 or EdDSA"##),
            (r#"{"alg":1.5e3,"typ":"agentid-link+jwt"}"#, l, r##"unsupported_alg alg 1500.0 is not ES256, Ed25519 or EdDSA"##),
            (r#"{"alg":18446744073709551616,"typ":"agentid-link+jwt"}"#, l, r##"unsupported_alg alg 1.8446744073709552e+19 is not ES256, Ed25519 or EdDSA"##),
            (r#"{"alg":1e400,"typ":"agentid-link+jwt"}"#, l, r##"bad_header header: not I-JSON: number out of range at line 1 column 12"##),
            (r#"{"alg":"ES256","typ":-1e400}"#, l, r##"bad_header header: not I-JSON: number out of range at line 1 column 27"##),
            (r#"{"alg":true,"typ":false}"#, l, r##"bad_typ typ false where agentid-link+jwt is expected"##),
            // trailing data, and the top level's type after it
            (r#"{"alg":"ES256","typ":"agentid-link+jwt"} x"#, l, r##"bad_header header: trailing data: trailing characters at line 1 column 42"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt"}{}"#, l, r##"bad_header header: trailing data: trailing characters at line 1 column 41"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt"}  "#, l, r##"ok Header { alg: Es256, typ: Link, kid: None }"##),
            (r#"[] x"#, l, r##"bad_header header: trailing data: trailing characters at line 1 column 4"##),
            (r#"[]"#, l, r##"bad_header header: top level is not an object"##),
            (r#"null"#, l, r##"bad_header header: top level is not an object"##),
            (r#"1"#, l, r##"bad_header header: top level is not an object"##),
            (r#""x""#, l, r##"bad_header header: top level is not an object"##),
            (r#"[{"a":1,"a":2}]"#, l, r##"bad_header header: not I-JSON: duplicate member name "a" at line 1 column 11"##),
            (r#"{"#, l, r##"bad_header header: not I-JSON: EOF while parsing an object at line 1 column 1"##),
            (r#"{"alg":"ES256",}"#, l, r##"bad_header header: not I-JSON: trailing comma at line 1 column 16"##),
            ("\u{feff}{}", l, r##"bad_header header: not I-JSON: expected value at line 1 column 1"##),
            (r#"{}"#, l, r##"bad_typ typ missing, agentid-link+jwt expected"##),
            // a later I-JSON fault wins over an earlier bad member
            (r#"{"jwk":{},"alg":"ES256","typ":"agentid-link+jwt","alg":1}"#, l, r##"bad_header header: not I-JSON: duplicate member name "alg" at line 1 column 54"##),
            (r#"{"typ":"JWT","alg":"none","x":1e400}"#, l, r##"bad_header header: not I-JSON: number out of range at line 1 column 35"##),
            (r#"{"typ":"JWT","alg":"none"} x"#, l, r##"bad_header header: trailing data: trailing characters at line 1 column 28"##),
            (r#"{"zz":1,"typ":"JWT","alg":"none","y":[[[[[[[[1]]]]]]]]}"#, l, r##"bad_header header: not I-JSON: nesting deeper than 8 at line 1 column 45"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","kid":"k","kid":"k"}"#, l, r##"bad_header header: not I-JSON: duplicate member name "kid" at line 1 column 55"##),
            // an unknown member before a bad typ; the first refused name in byte order
            (r#"{"zz":1,"typ":"JWT","alg":"ES256"}"#, l, r##"bad_header header member "zz" is not allowed in a agentid-link+jwt"##),
            (r#"{"alg":"ES256","typ":"JWT","a":1}"#, l, r##"bad_header header member "a" is not allowed in a agentid-link+jwt"##),
            (r#"{"zz":1,"aa":2,"alg":"ES256","typ":"agentid-link+jwt"}"#, l, r##"bad_header header member "aa" is not allowed in a agentid-link+jwt"##),
            (r#"{"zz":1,"\u0041":2,"alg":"ES256","typ":"agentid-link+jwt"}"#, l, r##"bad_header header member "A" is not allowed in a agentid-link+jwt"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","zz":1,"zz":2}"#, l, r##"bad_header header: not I-JSON: duplicate member name "zz" at line 1 column 51"##),
            (r#"{"alg":"ES256","typ":"agentid-link+jwt","\u00e9":1,"z":2}"#, l, r##"bad_header header member "z" is not allowed in a agentid-link+jwt"##),
            (r#"{"alg":"none","typ":"agentid-link+jwt","kid":1,"x5c":[]}"#, l, r##"bad_header header member "x5c" is not allowed in a agentid-link+jwt"##),
            // typ before alg before kid
            (r#"{"typ":1,"alg":"none","kid":""}"#, g, r##"bad_typ typ 1 where agentid-grant+jwt is expected"##),
            (r#"{"typ":"agentid-grant+jwt","alg":null,"kid":""}"#, g, r##"unsupported_alg alg null is not ES256, Ed25519 or EdDSA"##),
            (r#"{"typ":"agentid-grant+jwt","alg":"ES256","kid":""}"#, g, r##"bad_header kid must be a non-empty string"##),
            (r#"{"typ":"agentid-link+jwt","alg":"ES256","kid":null}"#, l, r##"bad_header a agentid-link+jwt takes no `kid`"##),
            (r#"{"typ":"agentid-grant+jwt","alg":"EdDSA","kid":"\u006b"}"#, g, r##"ok Header { alg: Ed25519, typ: Grant, kid: Some("k") }"##),
        ];
        let mut wrong = String::new();
        for (header, tt, want) in cases {
            let got = outcome(header.as_bytes(), *tt);
            if got != *want {
                wrong.push_str(&format!("{header} as {tt}\n  got  {got}\n  want {want}\n"));
            }
        }
        // Not UTF-8, and UTF-8 that is no JSON.
        for (header, want) in [
            (
                &b"{\"alg\":\"\xff\",\"typ\":\"agentid-link+jwt\"}"[..],
                r##"bad_header header: not UTF-8: invalid utf-8 sequence of 1 bytes from index 8"##,
            ),
            (
                &b"{\"alg\":\"ES256\",\"typ\":\"agentid-link+jwt\"}\xc3"[..],
                r##"bad_header header: not UTF-8: incomplete utf-8 byte sequence from index 40"##,
            ),
            (
                &b"{\"alg\":\"ES256\",\"typ\":\"agentid-link+jwt\"}\x00"[..],
                r##"bad_header header: trailing data: trailing characters at line 1 column 41"##,
            ),
            (
                &b"{\"alg\":\"ES256\",\"typ\":\"agentid-link+jwt\x01\"}"[..],
                r##"bad_header header: not I-JSON: control character (\u0000-\u001F) found while parsing a string at line 1 column 39"##,
            ),
        ] {
            let got = outcome(header, l);
            if got != want {
                wrong.push_str(&format!("{header:?}\n  got  {got}\n  want {want}\n"));
            }
        }
        assert!(wrong.is_empty(), "\n{wrong}");
    }

    /// The tree-based reader [`parse_header`] replaced (an I-JSON tree of the header, then
    /// the checks on the tree), kept unchanged as the oracle of the differential test below.
    fn parse_header_tree(raw: &RawToken<'_>, expected: TokenType) -> Result<Header> {
        let bytes = b64_decode(raw.header_b64)?;
        let map = parse_ijson_object(&bytes)
            .map_err(|e| Error::new(ErrorCode::BadHeader, format!("header: {}", e.detail())))?;
        for name in map.keys() {
            let allowed = matches!(name.as_str(), "alg" | "typ" | "kid");
            if !allowed {
                return Err(Error::new(
                    ErrorCode::BadHeader,
                    format!("header member {name:?} is not allowed in a {expected}"),
                ));
            }
        }
        match map.get("typ") {
            Some(Value::String(typ)) if expected.matches(typ) => {}
            Some(other) => {
                return Err(Error::new(
                    ErrorCode::BadTyp,
                    format!("typ {other} where {expected} is expected"),
                ))
            }
            None => {
                return Err(Error::new(
                    ErrorCode::BadTyp,
                    format!("typ missing, {expected} expected"),
                ))
            }
        }
        let alg = match map.get("alg") {
            Some(Value::String(alg)) => Algorithm::from_header(alg),
            _ => None,
        }
        .ok_or_else(|| {
            Error::new(
                ErrorCode::UnsupportedAlg,
                format!(
                    "alg {} is not ES256, Ed25519 or EdDSA",
                    map.get("alg").unwrap_or(&Value::Null)
                ),
            )
        })?;
        let kid = match map.get("kid") {
            None if expected.allows_kid() => {
                return Err(Error::new(
                    ErrorCode::BadHeader,
                    format!("a {expected} needs `kid`"),
                ))
            }
            None => None,
            Some(_) if !expected.allows_kid() => {
                return Err(Error::new(
                    ErrorCode::BadHeader,
                    format!("a {expected} takes no `kid`"),
                ))
            }
            Some(Value::String(kid)) if !kid.is_empty() => Some(kid.clone()),
            Some(_) => {
                return Err(Error::new(
                    ErrorCode::BadHeader,
                    "kid must be a non-empty string",
                ))
            }
        };
        Ok(Header {
            alg,
            typ: expected,
            kid,
        })
    }

    /// Reads `header` as every token type with both readers; panics on any difference (code
    /// and detail). Returns the outcomes.
    fn headers_agree(header: &[u8]) -> Vec<String> {
        let token = format!(
            "{}.e30.{}",
            crate::encoding::b64_encode(header),
            crate::encoding::b64_encode(&[0; 64])
        );
        let Ok(raw) = split(&token) else {
            return Vec::new();
        };
        let outcome = |r: Result<Header>| match r {
            Ok(h) => format!("ok {h:?}"),
            Err(e) => format!("{} {:?} {}", e.code(), e.index(), e.detail()),
        };
        ALL.iter()
            .map(|tt| {
                let got = outcome(parse_header(&raw, *tt));
                let want = outcome(parse_header_tree(&raw, *tt));
                assert_eq!(got, want, "{} as {tt}", String::from_utf8_lossy(header));
                got
            })
            .collect()
    }

    const HEADER_NAMES: &[&str] = &[
        "alg",
        "typ",
        "kid",
        r"\u0061lg",
        r"t\u0079p",
        r"ki\u0064",
        "jwk",
        "x5c",
        "crit",
        "",
        "a",
        "zz",
        "Alg",
        r"\u0000",
        r"\ud800",
        r"\udc00x",
        "\u{e9}",
        "alg ",
    ];

    const HEADER_VALUES: &[&str] = &[
        r#""ES256""#,
        r#""Ed25519""#,
        r#""EdDSA""#,
        r#""none""#,
        r#""\u0045S256""#,
        r#""agentid-grant+jwt""#,
        r#""agentid-link+jwt""#,
        r#""agentid-proof+jwt""#,
        r#""application/agentid-revocations+jwt""#,
        r#""AGENTID-LINK+JWT""#,
        r#""agentid-l\u0069nk+jwt""#,
        r#""k""#,
        r#""""#,
        r#""\u0000""#,
        r#""\ud800""#,
        r#""\ud83d\ude00""#,
        r#""J\"W\\T""#,
        "0",
        "1",
        "-1",
        "-0",
        "1.0",
        "1e3",
        "1e400",
        "-1e400",
        "18446744073709551616",
        "9007199254740993",
        "true",
        "false",
        "null",
        "[]",
        "{}",
        r#"["ES256"]"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":1,"\u0061":2}"#,
        "[[[[[[[1]]]]]]]",
        "[[[[[[[[1]]]]]]]]",
        r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}"#,
        r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":{}}}}}}}}"#,
    ];

    const HEADER_SNIPPETS: &[&str] = &[
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
        "x",
        r#""alg":"ES256","#,
        r#""typ":1,"#,
        r#""kid":"k","#,
        r#""zz":1,"#,
    ];

    /// Headers of one to six members drawn from the names and values above, each then edited
    /// zero to two times: every outcome of both readers agrees, and the edits reach every
    /// check.
    #[test]
    fn generated_headers_read_as_the_tree_reader_reads_them() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
        };
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..30_000 {
            let mut members: Vec<String> = Vec::new();
            // Mostly the three members with plausible values, then others.
            if next(3) > 0 {
                members.push(format!(r#""alg":{}"#, HEADER_VALUES[next(5)]));
                members.push(format!(r#""typ":{}"#, HEADER_VALUES[5 + next(6)]));
                if next(2) == 0 {
                    members.push(r#""kid":"k""#.to_owned());
                }
            }
            for _ in 0..next(4) {
                let name = HEADER_NAMES[next(HEADER_NAMES.len())];
                let value = HEADER_VALUES[next(HEADER_VALUES.len())];
                members.insert(next(members.len() + 1), format!(r#""{name}":{value}"#));
            }
            let mut text = format!("{{{}}}", members.join(",")).into_bytes();
            for _ in 0..next(3) {
                match next(4) {
                    0 => {
                        let at = next(text.len() + 1);
                        let snippet = HEADER_SNIPPETS[next(HEADER_SNIPPETS.len())];
                        text.splice(at..at, snippet.bytes());
                    }
                    1 => {
                        let at = next(text.len() + 1);
                        let end = (at + 1 + next(4)).min(text.len());
                        text.drain(at.min(end)..end);
                    }
                    2 if !text.is_empty() => {
                        let at = next(text.len());
                        text[at] = next(256) as u8;
                    }
                    _ => text.extend_from_slice(b" "),
                }
            }
            for o in headers_agree(&text) {
                let code = o.split(' ').next().unwrap_or("").to_owned();
                *seen.entry(code).or_default() += 1;
            }
        }
        for code in ["ok", "bad_header", "bad_typ", "unsupported_alg"] {
            assert!(
                seen.get(code).copied().unwrap_or(0) >= 100,
                "{code}: {seen:?}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::encoding::test_cases(2000)))]

        #[test]
        fn any_header_bytes_read_as_the_tree_reader_reads_them(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)
        ) {
            headers_agree(&bytes);
        }

        #[test]
        fn any_header_members_read_as_the_tree_reader_reads_them(
            members in proptest::collection::vec(
                (proptest::sample::select(HEADER_NAMES), proptest::sample::select(HEADER_VALUES)),
                0..6,
            )
        ) {
            let text: Vec<String> = members.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
            headers_agree(format!("{{{}}}", text.join(",")).as_bytes());
        }
    }

    #[test]
    fn parse_header_reports_bad_base64_when_built_by_hand() {
        // `split` already refuses it; parse_header must not rely on that.
        let raw = RawToken {
            text: "A=.e30.AAAA",
            header_b64: "A=",
            payload_b64: "e30",
            signature_b64: "AAAA",
        };
        assert_eq!(
            parse_header(&raw, TokenType::Link).unwrap_err().code(),
            ErrorCode::BadBase64
        );
    }

    #[test]
    fn sign_compact_round_trips() {
        for alg in [Algorithm::Es256, Algorithm::Ed25519] {
            let task = TaskKey::generate(alg).unwrap();
            let authority = AuthorityKey::generate(alg).unwrap();
            let claims = br#"{"sub":"x","n":1}"#;
            let task_sign = |m: &[u8]| task.sign(m);
            let authority_sign = |m: &[u8]| authority.sign(m);
            type Signer<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>>;
            let cases: Vec<(
                TokenType,
                Option<&str>,
                Signer<'_>,
                &crate::crypto::PublicKey,
            )> = vec![
                (TokenType::Link, None, &task_sign, task.public_key()),
                (TokenType::Proof, None, &task_sign, task.public_key()),
                (
                    TokenType::Grant,
                    Some("kid-1"),
                    &authority_sign,
                    authority.public_key(),
                ),
                (
                    TokenType::Revocations,
                    Some("kid-2"),
                    &authority_sign,
                    authority.public_key(),
                ),
            ];
            for (tt, kid, signer, key) in cases {
                let token = sign_compact(tt, alg, kid, claims, signer).unwrap();
                let raw = split(&token).unwrap();
                let header = parse_header(&raw, tt).unwrap();
                assert_eq!(
                    header,
                    Header {
                        alg,
                        typ: tt,
                        kid: kid.map(String::from)
                    }
                );
                assert_eq!(b64_decode(raw.payload_b64).unwrap(), claims);
                let sig = b64_decode(raw.signature_b64).unwrap();
                verify(key, header.alg, raw.signing_input(), &sig).unwrap();
                let expected_header = match kid {
                    Some(k) => format!(r#"{{"alg":"{alg}","typ":"{tt}","kid":"{k}"}}"#),
                    None => format!(r#"{{"alg":"{alg}","typ":"{tt}"}}"#),
                };
                assert_eq!(
                    b64_decode(raw.header_b64).unwrap(),
                    expected_header.as_bytes()
                );
            }
        }
    }

    #[test]
    fn sign_compact_escapes_kid() {
        let kid = "a\"b\\c\u{1}";
        let token = sign_compact(
            TokenType::Grant,
            Algorithm::Ed25519,
            Some(kid),
            b"{}",
            |_| Ok(vec![7; 64]),
        )
        .unwrap();
        let header = parse_header(&split(&token).unwrap(), TokenType::Grant).unwrap();
        assert_eq!(header.kid.as_deref(), Some(kid));
    }

    #[test]
    fn sign_compact_refuses() {
        let ok = |_: &[u8]| -> Result<Vec<u8>> { Ok(vec![1; 64]) };
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_TOKEN_BYTES));
        let just_fits = {
            // header {"alg":"ES256","typ":"agentid-link+jwt"} is 40 bytes -> 54 base64url chars;
            // the signature is 86; 2 dots leave 8192 - 142 = 8050 chars = 6037 bytes of claims
            // (8050 is 2 mod 4: 6036 bytes give 8048, 6037 give 8050).
            format!(r#"{{"x":"{}"}}"#, "a".repeat(6037 - 8))
        };
        type Case<'a> = (
            &'a str,
            TokenType,
            Option<&'a str>,
            Vec<u8>,
            Box<dyn Fn(&[u8]) -> Result<Vec<u8>>>,
            Option<ErrorCode>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case<'_>> = vec![
            ("fits exactly", TokenType::Link, None, just_fits.clone().into_bytes(), Box::new(ok), None),
            ("one byte too many", TokenType::Link, None, just_fits.replacen('a', "aa", 1).into_bytes(), Box::new(ok), Some(ErrorCode::TokenTooLarge)),
            ("kid on a link", TokenType::Link, Some("k"), b"{}".to_vec(), Box::new(ok), Some(ErrorCode::BadHeader)),
            ("kid on a proof", TokenType::Proof, Some("k"), b"{}".to_vec(), Box::new(ok), Some(ErrorCode::BadHeader)),
            ("empty kid", TokenType::Grant, Some(""), b"{}".to_vec(), Box::new(ok), Some(ErrorCode::BadHeader)),
            ("grant without kid", TokenType::Grant, None, b"{}".to_vec(), Box::new(ok), Some(ErrorCode::BadHeader)),
            ("revocations without kid", TokenType::Revocations, None, b"{}".to_vec(), Box::new(ok), Some(ErrorCode::BadHeader)),
            ("claims not an object", TokenType::Link, None, b"[]".to_vec(), Box::new(ok), Some(ErrorCode::BadJson)),
            ("claims with duplicates", TokenType::Link, None, br#"{"a":1,"a":2}"#.to_vec(), Box::new(ok), Some(ErrorCode::BadJson)),
            ("claims not UTF-8", TokenType::Link, None, b"{\"a\":\"\xff\"}".to_vec(), Box::new(ok), Some(ErrorCode::BadJson)),
            ("huge claims", TokenType::Link, None, big.into_bytes(), Box::new(ok), Some(ErrorCode::TokenTooLarge)),
            ("DER signature from an HSM", TokenType::Grant, Some("k"), b"{}".to_vec(), Box::new(|_: &[u8]| Ok(vec![0x30; 71])), Some(ErrorCode::BadSignature)),
            ("empty signature", TokenType::Grant, Some("k"), b"{}".to_vec(), Box::new(|_: &[u8]| Ok(vec![])), Some(ErrorCode::BadSignature)),
            ("signer error passed through", TokenType::Grant, Some("k"), b"{}".to_vec(), Box::new(|_: &[u8]| Err(Error::new(ErrorCode::BadConfig, "hsm down"))), Some(ErrorCode::BadConfig)),
        ];
        for (name, tt, kid, claims, signer, want) in cases {
            let got = sign_compact(tt, Algorithm::Es256, kid, &claims, signer);
            match want {
                None => {
                    let token = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(token.len(), MAX_TOKEN_BYTES, "{name}");
                    split(&token).unwrap();
                }
                Some(code) => assert_eq!(got.unwrap_err().code(), code, "{name}"),
            }
        }
    }

    #[test]
    fn signing_input_is_the_transmitted_bytes() {
        // A header that is valid JSON but not our canonical form is verified as sent.
        let header = b64_encode(br#"{ "typ":"agentid-link+jwt", "alg":"Ed25519" }"#);
        let key = TaskKey::generate(Algorithm::Ed25519).unwrap();
        let input = format!("{header}.{}", b64_encode(b"{}"));
        let sig = key.sign(input.as_bytes()).unwrap();
        let token = format!("{input}.{}", b64_encode(&sig));
        let raw = split(&token).unwrap();
        assert_eq!(raw.signing_input(), input.as_bytes());
        let h = parse_header(&raw, TokenType::Link).unwrap();
        verify(
            key.public_key(),
            h.alg,
            raw.signing_input(),
            &b64_decode(raw.signature_b64).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn the_signer_trait_works_with_sign_compact() {
        let authority = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let signer: &dyn JwsSigner = &authority;
        let token = sign_compact(
            TokenType::Grant,
            signer.algorithm(),
            Some("k"),
            b"{}",
            |m| signer.sign(m),
        )
        .unwrap();
        let raw = split(&token).unwrap();
        verify(
            &signer.public_key(),
            Algorithm::Es256,
            raw.signing_input(),
            &b64_decode(raw.signature_b64).unwrap(),
        )
        .unwrap();
    }
}
