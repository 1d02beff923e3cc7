//! Strict JWKs (RFC 7517) for `cnf.jwk` and bundle entries, and RFC 7638 thumbprints.
//!
//! A `cnf.jwk` holds exactly `kty`, `crv`, `x`, [`y`], `alg`: a private member, an unknown
//! member, a mismatched `alg` or an invalid point is `BadKey`. Keys are validated by the
//! constructors of [`PublicKey`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::crypto::{sha256, PublicKey, JKT_LEN};
use crate::encoding::{b64_decode, b64_decode_array, b64_encode};
use crate::error::{Error, ErrorCode, Result};

/// The members an agentid JWK may hold (section 5.1): the one home of their names, for the
/// decoded-map reader ([`PublicKey::from_jwk_members`]), the payload reader's `cnf.jwk` slots and
/// [`jwk_member_allowed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyMember {
    Kty,
    Crv,
    X,
    Y,
    Alg,
}

impl KeyMember {
    /// Every key member.
    pub(crate) const ALL: [Self; 5] = [Self::Kty, Self::Crv, Self::X, Self::Y, Self::Alg];

    /// The member's name in a JWK.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Kty => "kty",
            Self::Crv => "crv",
            Self::X => "x",
            Self::Y => "y",
            Self::Alg => "alg",
        }
    }

    /// The key member named `name`, if `name` is one.
    pub(crate) fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}
/// Private-key members of any JWK type (RFC 7518 section 6): refused even if a caller allows them.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn bad_key(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadKey, detail)
}

/// One of the key members of a JWK, as the rules below read it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JwkMember<'a> {
    /// Not in the JWK.
    Absent,
    /// Present, and not a string.
    NotString,
    /// A string (unescaped).
    Str(&'a str),
}

impl<'a> JwkMember<'a> {
    fn of(map: &'a Map<String, Value>, name: &str) -> Self {
        match map.get(name) {
            Some(Value::String(s)) => Self::Str(s),
            Some(_) => Self::NotString,
            None => Self::Absent,
        }
    }

    fn str(self, member: KeyMember) -> Result<&'a str> {
        let name = member.name();
        match self {
            Self::Str(s) => Ok(s),
            Self::NotString => Err(bad_key(format!("JWK member {name:?} is not a string"))),
            Self::Absent => Err(bad_key(format!("JWK member {name:?} is missing"))),
        }
    }

    /// A 32-byte coordinate in strict base64url.
    fn coordinate(self, member: KeyMember) -> Result<[u8; 32]> {
        let name = member.name();
        let s = self.str(member)?;
        if let Some(bytes) = b64_decode_array(s) {
            return Ok(bytes);
        }
        // Not 32 bytes of strict base64url: the general decoder names the fault.
        let bytes =
            b64_decode(s).map_err(|e| bad_key(format!("JWK member {name:?}: {}", e.detail())))?;
        bytes.as_slice().try_into().map_err(|_| {
            bad_key(format!(
                "JWK member {name:?} must be 32 bytes, got {}",
                bytes.len()
            ))
        })
    }
}

/// A JWK object as the rules of this module read it: the key members, and the first member
/// name in byte order that the JWK may not hold. Built from a decoded map
/// ([`PublicKey::from_jwk_members`]) or while a token's payload is read (`cnf.jwk`), so the rules
/// have one home, [`PublicKey::from_jwk_view`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct JwkView<'a> {
    /// The first member name, in byte order, that is private or not allowed.
    pub(crate) first_refused: Option<&'a str>,
    pub(crate) kty: JwkMember<'a>,
    pub(crate) crv: JwkMember<'a>,
    pub(crate) x: JwkMember<'a>,
    pub(crate) y: JwkMember<'a>,
    pub(crate) alg: JwkMember<'a>,
}

impl<'a> JwkView<'a> {
    /// The view of a JWK whose member `first_refused` (if any) is refused, with each key member
    /// as `member` reads it.
    pub(crate) fn new(
        first_refused: Option<&'a str>,
        mut member: impl FnMut(KeyMember) -> JwkMember<'a>,
    ) -> Self {
        Self {
            first_refused,
            kty: member(KeyMember::Kty),
            crv: member(KeyMember::Crv),
            x: member(KeyMember::X),
            y: member(KeyMember::Y),
            alg: member(KeyMember::Alg),
        }
    }
}

/// The error for a JWK that is not a JSON object.
pub(crate) fn jwk_not_an_object() -> Error {
    bad_key("JWK is not an object")
}

/// Whether a JWK may hold member `name`, given the caller's `extra_allowed` names: a key member
/// or an extra one, and never a private member.
pub(crate) fn jwk_member_allowed(name: &str, extra_allowed: &[&str]) -> bool {
    !PRIVATE_MEMBERS.contains(&name)
        && (KeyMember::named(name).is_some() || extra_allowed.contains(&name))
}

impl PublicKey {
    /// Parses a strict JWK (as in `cnf.jwk`): an object with exactly `kty`, `crv`, `x`, \[`y`\],
    /// `alg`, either `EC`/`P-256`/`ES256` with 32-byte `x` and `y`, or `OKP`/`Ed25519` with
    /// `alg` `Ed25519` (or `EdDSA`) and a 32-byte `x`. Anything else is `BadKey`.
    pub fn from_jwk(v: &Value) -> Result<Self> {
        let map = v.as_object().ok_or_else(jwk_not_an_object)?;
        Self::from_jwk_members(map, &[])
    }

    /// As [`PublicKey::from_jwk`], also allowing the member names in `extra_allowed` (e.g. a
    /// bundle entry's `use`, `kid`, `x5c`), which the caller reads and checks itself. Private
    /// members (`d`, ...) are refused whatever `extra_allowed` says.
    pub fn from_jwk_members(map: &Map<String, Value>, extra_allowed: &[&str]) -> Result<Self> {
        let first_refused = map
            .keys()
            .map(String::as_str)
            .find(|name| !jwk_member_allowed(name, extra_allowed));
        Self::from_jwk_view(JwkView::new(first_refused, |m| {
            JwkMember::of(map, m.name())
        }))
    }

    /// The rules of a strict JWK (section 5.1), on its members: the one home of
    /// [`PublicKey::from_jwk`] and [`PublicKey::from_jwk_members`].
    pub(crate) fn from_jwk_view(jwk: JwkView<'_>) -> Result<Self> {
        if let Some(name) = jwk.first_refused {
            if PRIVATE_MEMBERS.contains(&name) {
                return Err(bad_key(format!("JWK holds private member {name:?}")));
            }
            return Err(bad_key(format!("JWK member {name:?} is not allowed")));
        }
        let kty = jwk.kty.str(KeyMember::Kty)?;
        let crv = jwk.crv.str(KeyMember::Crv)?;
        let alg = jwk.alg.str(KeyMember::Alg)?;
        match (kty, crv) {
            ("EC", "P-256") => {
                if alg != "ES256" {
                    return Err(bad_key(format!("P-256 JWK with alg {alg:?}")));
                }
                let x = jwk.x.coordinate(KeyMember::X)?;
                let y = jwk.y.coordinate(KeyMember::Y)?;
                let mut point = [0u8; 65];
                let (tag, xy) = point.split_at_mut(1);
                let (px, py) = xy.split_at_mut(32);
                tag.copy_from_slice(&[0x04]);
                px.copy_from_slice(&x);
                py.copy_from_slice(&y);
                Self::from_p256_uncompressed(&point)
            }
            ("OKP", "Ed25519") => {
                if alg != "Ed25519" && alg != "EdDSA" {
                    return Err(bad_key(format!("Ed25519 JWK with alg {alg:?}")));
                }
                if !matches!(jwk.y, JwkMember::Absent) {
                    return Err(bad_key("OKP JWK with a \"y\" member"));
                }
                Self::from_ed25519(&jwk.x.coordinate(KeyMember::X)?)
            }
            _ => Err(bad_key(format!(
                "unsupported JWK kty {kty:?} / crv {crv:?}"
            ))),
        }
    }

    /// The JWK of this key: `{"kty","crv","x",["y"],"alg"}` with `alg` `ES256` or `Ed25519`.
    pub fn to_jwk(&self) -> Value {
        match self.jwk_coordinates() {
            (x, Some(y)) => json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256"}),
            (x, None) => json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "Ed25519"}),
        }
    }

    /// The RFC 7638 JWK thumbprint: base64url(SHA-256) of the required members (`crv`, `kty`,
    /// `x`, \[`y`\]) in lexicographic order without whitespace. Revocation lists and bundle `kid`s
    /// name keys by it.
    pub fn thumbprint(&self) -> String {
        self.thumbprint_str().to_owned()
    }

    /// Computes the thumbprint ([`PublicKey::thumbprint`], which keeps it), as ASCII.
    pub(crate) fn compute_thumbprint(&self) -> [u8; JKT_LEN] {
        // The canonical JSON is at most 117 bytes: built on the stack, no allocation but the
        // result's.
        let mut buf = [0u8; 128];
        let raw = self.raw_bytes();
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            if let Some(dst) = buf.get_mut(len..len + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
            len += bytes.len();
        };
        let mut b64 = [0u8; 43];
        let mut coord = |c: &[u8]| -> [u8; 43] {
            let n = URL_SAFE_NO_PAD.encode_slice(c, &mut b64).unwrap_or(0);
            debug_assert_eq!(n, 43);
            b64
        };
        match raw.split_first() {
            // P-256: 0x04 || x || y
            Some((_, xy)) if raw.len() == 65 => {
                let (x, y) = xy.split_at(32);
                put(br#"{"crv":"P-256","kty":"EC","x":""#);
                put(&coord(x));
                put(br#"","y":""#);
                put(&coord(y));
                put(br#""}"#);
            }
            _ => {
                put(br#"{"crv":"Ed25519","kty":"OKP","x":""#);
                put(&coord(raw));
                put(br#""}"#);
            }
        }
        let mut out = [0u8; JKT_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(sha256(buf.get(..len).unwrap_or_default()), &mut out)
            .unwrap_or(0);
        debug_assert_eq!(n, JKT_LEN);
        out
    }

    /// The canonical JSON hashed by [`PublicKey::thumbprint`]. base64url needs no escaping.
    #[cfg(test)]
    fn thumbprint_input(&self) -> String {
        match self.jwk_coordinates() {
            (x, Some(y)) => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            (x, None) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        }
    }

    /// base64url `x` and, for P-256, `y`.
    fn jwk_coordinates(&self) -> (String, Option<String>) {
        let raw = self.raw_bytes();
        match raw.split_first() {
            // P-256: 0x04 || x || y
            Some((_, xy)) if raw.len() == 65 => {
                let (x, y) = xy.split_at(32);
                (b64_encode(x), Some(b64_encode(y)))
            }
            _ => (b64_encode(raw), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;

    // RFC 7515 appendix A.3 (ES256 example key).
    const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    // RFC 8037 appendix A.2 (Ed25519 example key).
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn ec() -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "alg": "ES256"})
    }

    fn okp() -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "alg": "Ed25519"})
    }
    fn with(mut v: Value, name: &str, value: Value) -> Value {
        v.as_object_mut().unwrap().insert(name.into(), value);
        v
    }
    fn without(mut v: Value, name: &str) -> Value {
        v.as_object_mut().unwrap().remove(name);
        v
    }

    #[test]
    fn the_key_members_are_the_five_names_of_section_5_1_and_nothing_else() {
        let names: Vec<&str> = KeyMember::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["kty", "crv", "x", "y", "alg"]);
        for m in KeyMember::ALL {
            assert_eq!(KeyMember::named(m.name()), Some(m));
            assert!(jwk_member_allowed(m.name(), &[]));
        }
        for other in [
            "", "KTY", "kty ", "k", "d", "use", "kid", "x5c", "xy", r"\u0078",
        ] {
            assert_eq!(KeyMember::named(other), None, "{other:?}");
        }
        // Private members stay refused even when a caller allows them.
        assert!(!jwk_member_allowed("d", &["d"]));
        assert!(jwk_member_allowed("kid", &["kid"]));
        assert!(!jwk_member_allowed("kid", &[]));
    }

    #[test]
    fn thumbprint_ed25519_matches_rfc8037() {
        // RFC 8037 appendix A.3 gives this thumbprint for the A.2 key.
        let key = PublicKey::from_jwk(&okp()).unwrap();
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert_eq!(
            key.thumbprint_input(),
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{ED_X}"}}"#)
        );
    }

    #[test]
    fn thumbprint_p256_matches_hand_built_canonical_json() {
        let key = PublicKey::from_jwk(&ec()).unwrap();
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{EC_X}","y":"{EC_Y}"}}"#);
        assert_eq!(key.thumbprint_input(), canonical);
        // Independently computed: base64url(SHA-256(canonical)) with Python's hashlib.
        assert_eq!(
            key.thumbprint(),
            "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"
        );
    }

    #[test]
    fn thumbprint_is_the_hash_of_the_canonical_json() {
        for alg in [Algorithm::Es256, Algorithm::Ed25519] {
            for _ in 0..20 {
                let key = crate::crypto::AuthorityKey::generate(alg)
                    .unwrap()
                    .public_key()
                    .clone();
                assert_eq!(
                    key.thumbprint(),
                    b64_encode(&sha256(key.thumbprint_input().as_bytes()))
                );
            }
        }
    }

    #[test]
    fn thumbprint_ignores_alg_spelling_and_extra_members() {
        let a = PublicKey::from_jwk(&okp()).unwrap();
        let b = PublicKey::from_jwk(&with(okp(), "alg", json!("EdDSA"))).unwrap();
        let c = PublicKey::from_jwk_members(
            with(okp(), "kid", json!("k1")).as_object().unwrap(),
            &["kid"],
        )
        .unwrap();
        assert_eq!(a.thumbprint(), b.thumbprint());
        assert_eq!(a.thumbprint(), c.thumbprint());
    }

    #[test]
    fn to_jwk_round_trips() {
        for alg in [Algorithm::Es256, Algorithm::Ed25519] {
            let key = crate::crypto::AuthorityKey::generate(alg)
                .unwrap()
                .public_key()
                .clone();
            let jwk = key.to_jwk();
            assert_eq!(jwk["alg"], json!(alg.as_str()));
            assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), key);
        }
        assert_eq!(PublicKey::from_jwk(&ec()).unwrap().to_jwk(), ec());
        assert_eq!(PublicKey::from_jwk(&okp()).unwrap().to_jwk(), okp());
    }

    #[test]
    fn accepts() {
        let cases = [
            ("EC", ec(), Algorithm::Es256),
            ("OKP Ed25519", okp(), Algorithm::Ed25519),
            (
                "OKP EdDSA",
                with(okp(), "alg", json!("EdDSA")),
                Algorithm::Ed25519,
            ),
        ];
        for (name, jwk, alg) in cases {
            let key = PublicKey::from_jwk(&jwk).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(key.algorithm(), alg, "{name}");
        }
    }

    #[test]
    fn rejects_with_bad_key() {
        // A point not on the curve: the example x with y + 1 in its last byte.
        let off_curve_y = {
            let mut y = b64_decode(EC_Y).unwrap();
            y[31] ^= 1;
            b64_encode(&y)
        };
        // Ed25519 small-order point (the identity, y = 1) and a non-canonical y = p.
        let identity = b64_encode(&{
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        });
        let y_eq_p = b64_encode(&{
            let mut b = [0xffu8; 32];
            b[0] = 0xed;
            b[31] = 0x7f;
            b
        });
        #[rustfmt::skip]
        let cases: Vec<(&str, Value)> = vec![
            ("not an object", json!([1])),
            ("string", json!("jwk")),
            ("EC private d", with(ec(), "d", json!("AAAA"))),
            ("OKP private d", with(okp(), "d", json!(ED_X))),
            ("kid not allowed", with(ec(), "kid", json!("x"))),
            ("use not allowed", with(okp(), "use", json!("sig"))),
            ("x5c not allowed", with(ec(), "x5c", json!([]))),
            ("EC alg missing", without(ec(), "alg")),
            ("OKP alg missing", without(okp(), "alg")),
            ("kty missing", without(ec(), "kty")),
            ("crv missing", without(ec(), "crv")),
            ("x missing", without(ec(), "x")),
            ("EC y missing", without(ec(), "y")),
            ("OKP with y", with(okp(), "y", json!(ED_X))),
            ("EC alg EdDSA", with(ec(), "alg", json!("EdDSA"))),
            ("EC alg es256", with(ec(), "alg", json!("es256"))),
            ("EC alg ES384", with(ec(), "alg", json!("ES384"))),
            ("OKP alg ES256", with(okp(), "alg", json!("ES256"))),
            ("OKP alg none", with(okp(), "alg", json!("none"))),
            ("alg not a string", with(ec(), "alg", json!(1))),
            ("EC crv Ed25519", with(ec(), "crv", json!("Ed25519"))),
            ("EC crv P-384", with(ec(), "crv", json!("P-384"))),
            ("OKP crv X25519", with(okp(), "crv", json!("X25519"))),
            ("OKP crv P-256", with(okp(), "crv", json!("P-256"))),
            ("kty RSA", with(ec(), "kty", json!("RSA"))),
            ("kty oct", with(okp(), "kty", json!("oct"))),
            ("kty lowercase", with(ec(), "kty", json!("ec"))),
            ("x padded", with(okp(), "x", json!(format!("{ED_X}=")))),
            ("y standard alphabet", with(ec(), "y", json!(EC_Y.replace('_', "/")))),
            ("x standard alphabet", with(okp(), "x", json!(ED_X.replace('_', "/")))),
            ("x 31 bytes", with(okp(), "x", json!(b64_encode(&[9u8; 31])))),
            ("x 33 bytes", with(okp(), "x", json!(b64_encode(&[9u8; 33])))),
            ("EC y 31 bytes", with(ec(), "y", json!(b64_encode(&[9u8; 31])))),
            ("x not a string", with(ec(), "x", json!(5))),
            ("EC off curve", with(ec(), "y", json!(off_curve_y))),
            ("EC zero point", with(with(ec(), "x", json!(b64_encode(&[0; 32]))), "y", json!(b64_encode(&[0; 32])))),
            ("OKP small order", with(okp(), "x", json!(identity))),
            ("OKP y = p", with(okp(), "x", json!(y_eq_p))),
        ];
        for (name, jwk) in cases {
            let err = PublicKey::from_jwk(&jwk).expect_err(name);
            assert_eq!(err.code(), ErrorCode::BadKey, "{name}: {err}");
        }
    }

    #[test]
    fn extra_members_only_when_allowed_and_never_private() {
        let jwk = with(with(ec(), "kid", json!("k")), "use", json!("sig"));
        let map = jwk.as_object().unwrap();
        assert!(PublicKey::from_jwk_members(map, &["kid", "use"]).is_ok());
        assert_eq!(
            PublicKey::from_jwk_members(map, &["kid"])
                .unwrap_err()
                .code(),
            ErrorCode::BadKey
        );
        let private = with(okp(), "d", json!(ED_X));
        for extra in [&["d"][..], &["d", "kid"][..]] {
            assert_eq!(
                PublicKey::from_jwk_members(private.as_object().unwrap(), extra)
                    .unwrap_err()
                    .code(),
                ErrorCode::BadKey
            );
        }
    }
}
