//! References to tokens, keys and certificates, each parsed once with the protocol's rules:
//! [`Jti`] (a token's `jti`), [`Jkt`] (a key's RFC 7638 thumbprint) and [`Serial`] (an X.509
//! certificate serial number in its one canonical text form).
//!
//! Holding one of these means the value is well formed: a revocation entry, an audit record or
//! a store lookup made from it cannot fail later on its syntax.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::encoding::b64_decode;
use crate::error::{Error, ErrorCode, Result};

macro_rules! string_newtype {
    ($ty:ident) => {
        impl $ty {
            /// The canonical string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }

        parse_conversions!($ty);

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A token identifier (`jti` of grants, links and revocation entries): 1 to 256 bytes, each in
/// 0x21..=0x7E, printable ASCII without space (spec/PROTOCOL.md section 6.1).
///
/// ```
/// use agentid_protocol::Jti;
/// assert!(Jti::parse("g-1").is_ok());
/// assert!(Jti::parse("has space").is_err());
/// assert!(Jti::parse("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Jti(String);

impl Jti {
    /// Whether `s` is a valid `jti` (the one home of the rule).
    pub(crate) fn is_valid(s: &str) -> bool {
        (1..=256).contains(&s.len()) && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
    }

    /// Parses a `jti` (`bad_claim` if it breaks the rule).
    pub fn parse(s: &str) -> Result<Self> {
        if !Self::is_valid(s) {
            return Err(Error::new(
                ErrorCode::BadClaim,
                "a `jti` is 1..=256 bytes of printable ASCII (0x21..=0x7E)",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

string_newtype!(Jti);

/// A key thumbprint (`jkt`): the RFC 7638 SHA-256 thumbprint of a public key, in base64url
/// (43 characters, no padding, canonical trailing bits), as revocation entries and bundle
/// `kid`s carry it (spec/PROTOCOL.md section 5.2).
///
/// ```
/// use agentid_protocol::Jkt;
/// let jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
/// assert_eq!(Jkt::parse(jkt).unwrap().as_str(), jkt);
/// // 43 base64url characters whose last one carries non-zero trailing bits:
/// assert!(Jkt::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xt").is_err());
/// assert!(Jkt::parse("short").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Jkt(String);

impl Jkt {
    /// Parses a thumbprint: strict base64url (section 3.1) of exactly 32 bytes, else `bad_key`.
    pub fn parse(s: &str) -> Result<Self> {
        match b64_decode(s) {
            Ok(bytes) if s.len() == 43 && bytes.len() == 32 => Ok(Self(s.to_owned())),
            _ => Err(Error::new(
                ErrorCode::BadKey,
                "a key thumbprint is base64url (no padding, canonical) of 32 bytes",
            )),
        }
    }
}

string_newtype!(Jkt);

impl crate::PublicKey {
    /// The key's RFC 7638 thumbprint as a [`Jkt`] (the string of
    /// [`crate::PublicKey::thumbprint`]).
    pub fn jkt(&self) -> Jkt {
        Jkt(self.thumbprint())
    }
}

/// Largest serial number in bytes (RFC 5280, section 4.1.2.2).
const MAX_SERIAL_BYTES: usize = 20;

/// An X.509 certificate serial number in its canonical text form: lowercase hex of the
/// big-endian magnitude, two digits per byte, without leading zero bytes (the `00` that DER
/// adds before a high bit is dropped); zero is `00`. This is how the CA records serials and how
/// logs, audit records and `revoke --serial` name a certificate.
///
/// Parsing accepts either case, `:` separators (as OpenSSL prints serials), and leading zeros.
///
/// ```
/// use agentid_protocol::Serial;
/// let s: Serial = "00:8F:0A".parse().unwrap();
/// assert_eq!(s.as_str(), "8f0a");
/// assert_eq!(Serial::from_der_integer(&[0x00, 0x8f, 0x0a]), s);
/// assert_eq!("abc".parse::<Serial>().unwrap().as_str(), "0abc");
/// assert_eq!("0000".parse::<Serial>().unwrap().as_str(), "00");
/// assert!("xyz".parse::<Serial>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Serial(String);

impl Serial {
    /// The serial of a certificate from the content octets of its DER INTEGER (a positive
    /// number: certificate serials are).
    pub fn from_der_integer(bytes: &[u8]) -> Self {
        use fmt::Write as _;
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let digits = bytes.get(start..).unwrap_or_default();
        if digits.is_empty() {
            return Self("00".to_owned());
        }
        let mut s = String::with_capacity(digits.len() * 2);
        for b in digits {
            let _ = write!(s, "{b:02x}");
        }
        Self(s)
    }

    /// Parses a serial written in hex (either case, optional `:` separators, leading zeros
    /// allowed); at most 20 bytes once leading zeros are dropped. Anything else is `bad_config`
    /// (a serial is an operator's input, never a token's).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::new(ErrorCode::BadConfig, format!("serial {s:?}: {why}"));
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        if hex.is_empty() {
            return Err(bad("empty"));
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not hex"));
        }
        let significant = hex.trim_start_matches('0').to_ascii_lowercase();
        if significant.len() > 2 * MAX_SERIAL_BYTES {
            return Err(bad("longer than 20 bytes"));
        }
        Ok(Self(match significant.len() {
            0 => "00".to_owned(),
            n if n % 2 == 1 => format!("0{significant}"),
            _ => significant,
        }))
    }
}

string_newtype!(Serial);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn serial_forms_agree() {
        for (text, canonical) in [
            ("8f0a", "8f0a"),
            ("8F0A", "8f0a"),
            ("00:8f:0a", "8f0a"),
            ("008f0a", "8f0a"),
            ("0a", "0a"),
            ("a", "0a"),
            ("00", "00"),
            ("0", "00"),
        ] {
            assert_eq!(Serial::parse(text).unwrap().as_str(), canonical, "{text}");
        }
        assert_eq!(Serial::from_der_integer(&[]).as_str(), "00");
        assert_eq!(Serial::from_der_integer(&[0, 0]).as_str(), "00");
        assert_eq!(
            Serial::from_der_integer(&[0x00, 0x80, 0x01]).as_str(),
            "8001"
        );
        assert_eq!(
            Serial::from_der_integer(&[0x0a, 0xbc]),
            Serial::parse("abc").unwrap()
        );
        for bad in ["", ":", "0x12", "12 34", "g1", &"1".repeat(41)] {
            assert!(Serial::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Serial::parse(&format!("00{}", "f".repeat(40))).is_ok());
    }

    #[test]
    fn jkt_is_strict() {
        let key = crate::TaskKey::generate(crate::Algorithm::Ed25519).unwrap();
        let ok = key.public_key().thumbprint();
        assert_eq!(Jkt::parse(&ok).unwrap(), key.public_key().jkt());
        // Same length, non-zero trailing bits in the last character.
        let mut bad = ok.clone();
        bad.pop();
        bad.push('9');
        assert!(Jkt::parse(&bad).is_err());
        assert!(Jkt::parse(&format!("{ok}=")).is_err());
        assert!(Jkt::parse(&ok[..42]).is_err());
        let json = serde_json::to_string(&Jkt::parse(&ok).unwrap()).unwrap();
        assert!(serde_json::from_str::<Jkt>(&json).is_ok());
        assert!(serde_json::from_str::<Jkt>("\"short\"").is_err());
    }

    #[test]
    fn jti_rule() {
        assert!(Jti::parse(&"x".repeat(256)).is_ok());
        for bad in ["", " ", "a b", "é", &"x".repeat(257), "tab\t"] {
            assert!(Jti::parse(bad).is_err(), "{bad:?}");
        }
    }
}
