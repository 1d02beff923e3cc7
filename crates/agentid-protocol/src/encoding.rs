//! Strict encodings shared by every token: base64url without padding and I-JSON (RFC 7493).
//!
//! Parser differentials are an attack surface (spec/PROTOCOL.md section 19): two implementations that disagree on
//! `"a":1,"a":2`, on padding or on trailing bits can be made to read different claims from the
//! same signed bytes. Everything here accepts exactly one spelling of each value.

use core::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{Error, ErrorCode, Result};

/// A refused byte as people read it: `':' (0x3a)` when it is a printable ASCII character,
/// `0xNN` otherwise (a control byte or part of a multi-byte character).
pub(crate) fn shown_byte(b: u8) -> String {
    if b.is_ascii_graphic() || b == b' ' {
        format!("{:?} (0x{b:02x})", char::from(b))
    } else {
        format!("byte 0x{b:02x}")
    }
}

/// Encodes `bytes` as base64url without padding (RFC 7515 section 2).
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Appends `bytes` to `out` as base64url without padding ([`b64_encode`] without a new string).
pub(crate) fn b64_encode_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// Appends `s` to `out` as a JSON string, escaped as serde_json escapes it (the spelling of every
/// payload this crate writes by hand: proofs and revocation lists).
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    serde_json::to_writer(out, s).map_err(|e| Error::new(ErrorCode::BadJson, e.to_string()))
}

/// Appends `n` to `out` as a JSON integer (its decimal digits, as serde_json writes it).
pub(crate) fn write_json_u64(out: &mut Vec<u8>, n: u64) -> Result<()> {
    use std::io::Write as _;
    write!(out, "{n}").map_err(|e| Error::new(ErrorCode::BadJson, e.to_string()))
}

/// Checks strict base64url without decoding: only `[A-Za-z0-9_-]`, no padding, no whitespace,
/// a length that is not 1 mod 4, and canonical (zero) trailing bits. Any deviation is
/// `BadBase64`. Exactly the strings [`b64_decode`] accepts, with no allocation.
pub(crate) fn b64_check(s: &str) -> Result<()> {
    let bad = |why: &str| Error::new(ErrorCode::BadBase64, format!("base64url: {why}"));
    // One pass without a branch per byte: every value in the alphabet is below 64 and
    // `B64_INVALID` has the top bit, so the OR of all values has it iff some byte is outside.
    // Only then is the first such byte looked for (for the message).
    if s.bytes().fold(0u8, |acc, b| acc | b64_table(b)) & 0x80 != 0 {
        let c = s
            .bytes()
            .find(|&b| b64_value_of(b).is_none())
            .unwrap_or_default();
        return Err(bad(&format!(
            "{} outside the base64url alphabet",
            shown_byte(c)
        )));
    }
    // The bits of the last character that carry no data must be zero: with 2 characters in the
    // last quantum it holds 4 data bits (2 unused), with 3 it holds 2 (4 unused).
    let unused_mask = match s.len() % 4 {
        0 => 0,
        1 => return Err(bad("impossible length")),
        2 => 0b1111,
        _ => 0b0011,
    };
    if let Some(&last) = s.as_bytes().last() {
        if b64_value(last) & unused_mask != 0 {
            return Err(bad("non-canonical encoding"));
        }
    }
    Ok(())
}

/// Decodes a part that [`b64_check`] has already accepted (the framing of a chain validates
/// every part first, then decodes the ones it reads exactly once).
pub(crate) fn b64_decode_checked(s: &str) -> Result<Vec<u8>> {
    // One pass that refuses exactly what `b64_check` refuses; a refused string (not expected
    // here) goes to the library decoder for the same error as before.
    b64_decode_strict(s.as_bytes()).map_or_else(
        || {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|e| Error::new(ErrorCode::BadBase64, format!("base64url: {e}")))
        },
        Ok,
    )
}

/// Decodes strict base64url in one pass (a table load per character, three bytes written per
/// four characters): `None` for exactly the strings [`b64_check`] refuses (a byte outside the
/// alphabet, a length of 1 mod 4, non-zero trailing bits), the decoded bytes otherwise.
fn b64_decode_strict(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; b64_decoded_len(s.len())?];
    b64_decode_strict_into(s, &mut out).then_some(out)
}

/// The number of bytes `len` base64url characters decode to (`None` for a length of 1 mod 4).
pub(crate) fn b64_decoded_len(len: usize) -> Option<usize> {
    let tail = len % 4;
    (tail != 1).then(|| len / 4 * 3 + tail.saturating_sub(1))
}

/// Decodes strict base64url of exactly `N` bytes onto the stack: `None` for any other input
/// (the caller then takes the general path, [`b64_decode`], for its error).
pub(crate) fn b64_decode_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    (b64_decoded_len(s.len()) == Some(N) && b64_decode_strict_into(s.as_bytes(), &mut out))
        .then_some(out)
}

/// Decodes strict base64url into `buf` when the decoded bytes fit there, else onto the heap
/// (`heap`) with [`b64_decode`], which also gives a refused string its error: the same bytes
/// or the same error as [`b64_decode`], without an allocation for a short input.
pub(crate) fn b64_decode_in<'b>(
    s: &str,
    buf: &'b mut [u8],
    heap: &'b mut Vec<u8>,
) -> Result<&'b [u8]> {
    if let Some(out) = b64_decoded_len(s.len()).and_then(|n| buf.get_mut(..n)) {
        if b64_decode_strict_into(s.as_bytes(), out) {
            return Ok(out);
        }
    }
    *heap = b64_decode(s)?;
    Ok(heap)
}

/// [`b64_decode_strict`] into `out`, which holds exactly the decoded length of `s`: `false` for
/// exactly the strings [`b64_check`] refuses (or an `out` of another length).
fn b64_decode_strict_into(s: &[u8], out: &mut [u8]) -> bool {
    if b64_decoded_len(s.len()) != Some(out.len()) {
        return false;
    }
    // The OR of every table value: `B64_INVALID`'s top bit marks a byte outside the alphabet.
    let mut acc = 0u8;
    // Eight characters (48 bits) at a time into six bytes; `out` has exactly as many six-byte
    // chunks as `s` has eight-character ones (the rest of `s` decodes to at most five bytes).
    let mut octets = s.chunks_exact(8);
    let mut sextets = out.chunks_exact_mut(6);
    for (q, o) in (&mut octets).zip(&mut sextets) {
        if let (Ok(q), Ok(o)) = (<&[u8; 8]>::try_from(q), <&mut [u8; 6]>::try_from(o)) {
            let mut n = 0u64;
            for c in q {
                let v = b64_table(*c);
                acc |= v;
                n = n << 6 | u64::from(v & 0x3f);
            }
            let [_, _, bytes @ ..] = n.to_be_bytes();
            *o = bytes;
        }
    }
    let (s, out_rest) = (octets.remainder(), sextets.into_remainder());
    let mut quads = s.chunks_exact(4);
    let mut triples = out_rest.chunks_exact_mut(3);
    for (q, o) in (&mut quads).zip(&mut triples) {
        if let ([a, b, c, d], [x, y, z]) = (q, o) {
            let (a, b, c, d) = (b64_table(*a), b64_table(*b), b64_table(*c), b64_table(*d));
            acc |= a | b | c | d;
            let n = u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d);
            *x = (n >> 16) as u8;
            *y = (n >> 8) as u8;
            *z = n as u8;
        }
    }
    let rest = triples.into_remainder();
    match (quads.remainder(), rest) {
        ([], []) => {}
        ([a, b], [x]) => {
            let (a, b) = (b64_table(*a), b64_table(*b));
            // 12 bits, 8 of data: the last character's low 4 bits must be zero.
            acc |= a | b;
            if b & 0b1111 != 0 {
                acc |= B64_INVALID;
            }
            *x = a << 2 | b >> 4;
        }
        ([a, b, c], [x, y]) => {
            let (a, b, c) = (b64_table(*a), b64_table(*b), b64_table(*c));
            // 18 bits, 16 of data: the last character's low 2 bits must be zero.
            acc |= a | b | c;
            if c & 0b0011 != 0 {
                acc |= B64_INVALID;
            }
            *x = a << 2 | b >> 4;
            *y = b << 4 | c >> 2;
        }
        _ => return false,
    }
    acc & 0x80 == 0
}

/// The 6-bit value of a base64url character (already checked to be in the alphabet).
fn b64_value(c: u8) -> u8 {
    b64_value_of(c).unwrap_or(0)
}

/// Marks a byte outside the base64url alphabet in [`B64_VALUES`].
const B64_INVALID: u8 = 0xff;

/// The 6-bit value of every byte in the base64url alphabet, [`B64_INVALID`] for the others: one
/// load per byte of a token (tokens are checked whole, about a kilobyte each).
// Evaluated at compile time: an index out of bounds would fail the build, not panic.
#[allow(clippy::indexing_slicing)]
static B64_VALUES: [u8; 256] = {
    let mut t = [B64_INVALID; 256];
    let mut i = 0u8;
    while i < 26 {
        t[(b'A' + i) as usize] = i;
        t[(b'a' + i) as usize] = i + 26;
        if i < 10 {
            t[(b'0' + i) as usize] = i + 52;
        }
        i += 1;
    }
    t[b'-' as usize] = 62;
    t[b'_' as usize] = 63;
    t
};

/// The entry of [`B64_VALUES`] for `c` (a 256-entry table: never out of bounds).
fn b64_table(c: u8) -> u8 {
    B64_VALUES
        .get(usize::from(c))
        .copied()
        .unwrap_or(B64_INVALID)
}

/// The 6-bit value of `c`, or `None` outside the base64url alphabet.
fn b64_value_of(c: u8) -> Option<u8> {
    match B64_VALUES.get(usize::from(c)) {
        Some(&v) if v != B64_INVALID => Some(v),
        _ => None,
    }
}

/// Decodes strict base64url: only `[A-Za-z0-9_-]`, no padding, no whitespace, a length that is
/// not 1 mod 4, and canonical (zero) trailing bits. Any deviation is `BadBase64`.
pub(crate) fn b64_decode(s: &str) -> Result<Vec<u8>> {
    // Canonicity is checked here, explicitly, rather than left to a library setting: the
    // one-pass decoder refuses exactly what `b64_check` refuses, and a refused string goes
    // through `b64_check` for its error (the first byte outside the alphabet, and so on).
    if let Some(bytes) = b64_decode_strict(s.as_bytes()) {
        return Ok(bytes);
    }
    b64_check(s)?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| Error::new(ErrorCode::BadBase64, format!("base64url: {e}")))
}

/// Maximum JSON nesting depth (the top-level object is depth 1; arrays count too).
pub(crate) const MAX_JSON_DEPTH: usize = 8;

/// The largest integer that every JSON implementation represents exactly (2^53 - 1).
pub(crate) const MAX_SAFE_INT: u64 = (1 << 53) - 1;

/// Parses `bytes` as an I-JSON object: UTF-8, valid JSON, an object at the top level, no
/// duplicate member names at any depth (compared after unescaping), nesting at most
/// [`MAX_JSON_DEPTH`], no lone surrogates, nothing but whitespace after the object. Any
/// deviation is `BadJson`.
pub(crate) fn parse_ijson_object(bytes: &[u8]) -> Result<Map<String, Value>> {
    let bad = |why: String| Error::new(ErrorCode::BadJson, why);
    let text = core::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue { depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| bad(format!("not I-JSON: {e}")))?;
    de.end().map_err(|e| bad(format!("trailing data: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(bad("top level is not an object".into())),
    }
}

/// A JSON time: an integer (no sign, fraction or exponent) in `[0, 2^53 - 1]`.
///
/// `serde_json` keeps `1.0` and `1e3` as floats, so `as_u64` already refuses them.
pub(crate) fn json_time(v: &Value) -> Option<u64> {
    v.as_u64().and_then(safe_int)
}

/// An integer that JSON spelled as such (see [`json_time`]) if it is at most 2^53 - 1.
pub(crate) fn safe_int(n: u64) -> Option<u64> {
    Some(n).filter(|t| *t <= MAX_SAFE_INT)
}

/// A `DeserializeSeed` that builds a [`Value`] while enforcing depth and unique member names.
///
/// `depth` is the depth of the container that holds the value being read (0 at the top).
#[derive(Clone, Copy)]
pub(crate) struct StrictValue {
    depth: usize,
}

impl StrictValue {
    /// A seed for a value held by a container at `depth` (1 for a member of the top object).
    pub(crate) fn at_depth(depth: usize) -> Self {
        Self { depth }
    }

    /// The seed for the values held by a container at this seed's depth plus one (the
    /// container being entered), or the nesting error if that is deeper than [`MAX_JSON_DEPTH`].
    pub(crate) fn enter<E: de::Error>(self) -> core::result::Result<Self, E> {
        let depth = self.depth + 1;
        if depth > MAX_JSON_DEPTH {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_JSON_DEPTH}"
            )));
        }
        Ok(Self { depth })
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> core::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an I-JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> core::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> core::result::Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> core::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> core::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> core::result::Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> core::result::Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut out = Map::new();
        // Keys arrive unescaped, so `"a"` and `"\u0061"` collide as they must. The map itself
        // detects a duplicate, before its value is read.
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate member name {key:?}"
                )));
            }
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// The number of cases of a differential property test: `default`, or `PROPTEST_CASES` when
/// set (a long local run; the committed default stays fast).
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `b64_decode_in` gives what `b64_decode` gives (the bytes, or the error's code and
    /// detail), whether the bytes fit the buffer or not.
    #[test]
    fn b64_decode_in_agrees_with_b64_decode() {
        let mut inputs: Vec<String> = (0..=70usize)
            .map(|len| b64_encode(&(0..len).map(|i| (i * 37 + 11) as u8).collect::<Vec<_>>()))
            .collect();
        for bad in ["A", "AB", "AB=", "A+B/", "AAA.", "AAAAA", "A A", "\u{e9}AA"] {
            inputs.push(bad.to_owned());
            inputs.push(format!("{}{bad}", "A".repeat(64)));
        }
        for s in &inputs {
            for size in [0, 1, 16, 32, 47, 48, 64] {
                let (mut buf, mut heap) = (vec![0u8; size], Vec::new());
                let got = b64_decode_in(s, &mut buf, &mut heap)
                    .map(<[u8]>::to_vec)
                    .map_err(|e| (e.code(), e.detail().to_owned()));
                let want = b64_decode(s).map_err(|e| (e.code(), e.detail().to_owned()));
                assert_eq!(got, want, "{s:?} into {size}");
            }
        }
    }

    #[test]
    fn b64_round_trips_every_length() {
        for len in 0..=70usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let s = b64_encode(&bytes);
            assert!(!s.contains('='));
            assert_eq!(b64_decode(&s).unwrap(), bytes, "len {len}");
        }
    }

    #[test]
    fn b64_check_accepts_exactly_the_canonical_encodings() {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        // Every string of 2 and 3 characters: the last quantum decides canonicity.
        for &a in ALPHABET {
            for &b in ALPHABET {
                let two = String::from_utf8(vec![a, b]).unwrap();
                let canonical = |s: &str| {
                    URL_SAFE_NO_PAD
                        .decode(s)
                        .map(|d| b64_encode(&d) == s)
                        .unwrap_or(false)
                };
                assert_eq!(b64_check(&two).is_ok(), canonical(&two), "{two}");
                for &c in ALPHABET {
                    let three = String::from_utf8(vec![a, b, c]).unwrap();
                    assert_eq!(b64_check(&three).is_ok(), canonical(&three), "{three}");
                }
            }
        }
    }

    #[test]
    fn b64_check_names_the_first_byte_outside_the_alphabet() {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for b in 0..=255u8 {
            for at in [0usize, 5, 31] {
                // 32 bytes: a valid length; `b` at `at`, a later `=` that must not be named.
                let mut bytes = vec![b'A'; 32];
                bytes[at] = b;
                if at < 31 {
                    bytes[31] = b'=';
                }
                let Ok(s) = String::from_utf8(bytes) else {
                    continue;
                };
                let r = b64_check(&s);
                if ALPHABET.contains(&b) && at < 31 {
                    let e = r.unwrap_err();
                    assert!(e.to_string().contains(&shown_byte(b'=')), "{e}");
                } else if ALPHABET.contains(&b) {
                    assert!(r.is_ok(), "{s}");
                } else {
                    let e = r.unwrap_err();
                    assert_eq!(e.code(), ErrorCode::BadBase64);
                    assert!(e.to_string().contains(&shown_byte(b)), "{b}: {e}");
                }
            }
        }
    }

    /// The one-pass decoder against the former path (`b64_check`, then the base64 crate): the
    /// same bytes for every accepted string and a refusal for every refused one, on every
    /// string of up to 3 characters over the alphabet and a few outsiders, and on random
    /// strings of every length up to 70 with mutations.
    #[test]
    fn b64_one_pass_decoder_agrees_with_check_and_the_library() {
        let former = |s: &[u8]| -> Option<Vec<u8>> {
            let s = core::str::from_utf8(s).ok()?;
            b64_check(s).ok()?;
            Some(URL_SAFE_NO_PAD.decode(s).unwrap())
        };
        let mut chars: Vec<u8> =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec();
        chars.extend_from_slice(b"=+/ .\0\x80\xff");
        let mut accepted = 0;
        for a in &chars {
            assert_eq!(b64_decode_strict(&[*a]), None);
            for b in &chars {
                let two = [*a, *b];
                assert_eq!(b64_decode_strict(&two), former(&two), "{two:?}");
                for c in &chars {
                    let three = [*a, *b, *c];
                    let got = b64_decode_strict(&three);
                    accepted += usize::from(got.is_some());
                    assert_eq!(got, former(&three), "{three:?}");
                }
            }
        }
        assert_eq!(
            accepted,
            64 * 64 * 16,
            "the canonical three-character strings"
        );
        assert_eq!(b64_decode_strict(b""), Some(Vec::new()));
        // Random strings: mostly the alphabet, sometimes an outsider, at every length.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in 0..=70usize {
            for round in 0..200 {
                let mut s: Vec<u8> = (0..len).map(|_| chars[(next() % 64) as usize]).collect();
                if round % 3 == 0 && len > 0 {
                    let at = (next() % len as u64) as usize;
                    s[at] = chars[(next() % chars.len() as u64) as usize];
                }
                let got = b64_decode_strict(&s);
                assert_eq!(got, former(&s), "{s:?}");
                if let Ok(text) = core::str::from_utf8(&s) {
                    match (b64_decode(text), former(&s)) {
                        (Ok(d), Some(f)) => assert_eq!(d, f),
                        (Err(e), None) => assert_eq!(e.code(), ErrorCode::BadBase64),
                        (r, f) => panic!("{s:?}: {r:?} vs {f:?}"),
                    }
                    if let Some(f) = former(&s) {
                        assert_eq!(b64_decode_checked(text).unwrap(), f);
                    }
                }
            }
        }
    }

    #[test]
    fn b64_decode_table() {
        // (input, expected bytes or None for BadBase64)
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("", Some(b"")),
            ("Zg", Some(b"f")),
            ("Zm8", Some(b"fo")),
            ("Zm9v", Some(b"foo")),
            ("-_8", Some(&[0xfb, 0xff])),
            // padding in any amount
            ("Zg==", None),
            ("Zg=", None),
            ("Zm8=", None),
            ("=", None),
            // the standard alphabet
            ("+_8", None),
            ("-/8", None),
            // whitespace anywhere
            (" Zm9v", None),
            ("Zm9v ", None),
            ("Zm\n9v", None),
            ("Zm9v\t", None),
            ("Zm9v\r\n", None),
            // impossible lengths
            ("Z", None),
            ("Zm9vZ", None),
            // non-canonical trailing bits: "Zg" is canonical, "Zh".."Zv" are not
            ("Zh", None),
            ("Zv", None),
            ("Zm9", None),
            ("Zm-", None),
            // other bytes
            ("Zm9v.", None),
            ("Zm9\0", None),
            ("Zm9é", None),
        ];
        for (input, want) in cases {
            let got = b64_decode(input);
            match want {
                Some(bytes) => assert_eq!(got.unwrap(), *bytes, "{input:?}"),
                None => assert_eq!(
                    got.unwrap_err().code(),
                    ErrorCode::BadBase64,
                    "{input:?} must be rejected"
                ),
            }
        }
    }

    #[test]
    fn ijson_accepts() {
        let cases: &[(&str, Value)] = &[
            ("{}", json!({})),
            (" {\"a\":1} \n", json!({"a": 1})),
            (r#"{"a":{"a":{"a":1}}}"#, json!({"a": {"a": {"a": 1}}})),
            (
                r#"{"a":[{"b":1},{"b":2}]}"#,
                json!({"a": [{"b": 1}, {"b": 2}]}),
            ),
            (
                r#"{"a":-1,"b":1.5,"c":null,"d":true,"e":"x"}"#,
                json!({"a": -1, "b": 1.5, "c": null, "d": true, "e": "x"}),
            ),
            (r#"{"\ud83d\ude00":"é"}"#, json!({"😀": "é"})),
            // depth exactly 8: object + 7 nested arrays
            (r#"{"a":[[[[[[[1]]]]]]]}"#, json!({"a": [[[[[[[1]]]]]]]})),
            (
                r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":{}}}}}}}}"#,
                json!({"a":{"b":{"c":{"d":{"e":{"f":{"g":{}}}}}}}}),
            ),
        ];
        for (input, want) in cases {
            let got =
                parse_ijson_object(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(Value::Object(got), *want, "{input}");
        }
    }

    #[test]
    fn ijson_rejects() {
        let deep9 = r#"{"a":[[[[[[[[1]]]]]]]]}"#;
        let deep9_obj = r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{}}}}}}}}}"#;
        let very_deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("duplicate at top", br#"{"a":1,"a":1}"#.to_vec()),
            (
                "duplicate, different values",
                br#"{"a":1,"b":2,"a":"x"}"#.to_vec(),
            ),
            ("duplicate nested", br#"{"x":{"a":1,"a":2}}"#.to_vec()),
            ("duplicate in array", br#"{"x":[{"a":1,"a":2}]}"#.to_vec()),
            ("duplicate via escape", br#"{"a":1,"\u0061":2}"#.to_vec()),
            ("depth 9 arrays", deep9.as_bytes().to_vec()),
            ("depth 9 objects", deep9_obj.as_bytes().to_vec()),
            ("depth 100000", very_deep.into_bytes()),
            ("invalid UTF-8 in string", b"{\"a\":\"\xff\"}".to_vec()),
            ("overlong UTF-8", b"{\"a\":\"\xc0\xaf\"}".to_vec()),
            ("lone surrogate", br#"{"a":"\ud800"}"#.to_vec()),
            ("lone low surrogate in key", br#"{"\udc00":1}"#.to_vec()),
            ("BOM", b"\xef\xbb\xbf{}".to_vec()),
            ("top-level array", b"[]".to_vec()),
            ("top-level string", br#""a""#.to_vec()),
            ("top-level number", b"1".to_vec()),
            ("empty", b"".to_vec()),
            ("trailing object", b"{}{}".to_vec()),
            ("trailing garbage", b"{} x".to_vec()),
            ("trailing NUL", b"{}\0".to_vec()),
            ("trailing comma", br#"{"a":1,}"#.to_vec()),
            ("single quotes", b"{'a':1}".to_vec()),
            ("comment", b"{/*x*/}".to_vec()),
            ("NaN", br#"{"a":NaN}"#.to_vec()),
            ("unterminated", br#"{"a":1"#.to_vec()),
            ("control char in string", b"{\"a\":\"\x01\"}".to_vec()),
        ];
        for (name, input) in cases {
            let err = parse_ijson_object(&input).expect_err(name);
            assert_eq!(err.code(), ErrorCode::BadJson, "{name}");
        }
    }

    #[test]
    fn json_time_table() {
        let cases: &[(Value, Option<u64>)] = &[
            (json!(0), Some(0)),
            (json!(1_700_000_000u64), Some(1_700_000_000)),
            (json!(MAX_SAFE_INT), Some(MAX_SAFE_INT)),
            (json!(MAX_SAFE_INT + 1), None),
            (json!(u64::MAX), None),
            (json!(-1), None),
            (json!(1.0), None),
            (json!(1.5), None),
            (json!("1"), None),
            (json!(null), None),
            (json!(true), None),
            (json!([1]), None),
        ];
        for (v, want) in cases {
            assert_eq!(json_time(v), *want, "{v}");
        }
    }

    #[test]
    fn json_time_from_text_rejects_float_spellings() {
        for (text, want) in [
            ("1", Some(1)),
            ("1.0", None),
            ("1e3", None),
            ("1E3", None),
            ("-0", None),
            ("9007199254740991", Some(MAX_SAFE_INT)),
            ("9007199254740992", None),
        ] {
            let obj = parse_ijson_object(format!("{{\"t\":{text}}}").as_bytes()).unwrap();
            assert_eq!(json_time(&obj["t"]), want, "{text}");
        }
    }
}

#[cfg(test)]
mod number_range_tests {
    use super::*;

    /// spec/PROTOCOL.md section 3.2: a number is too large for an IEEE 754 double exactly when
    /// it rounds to infinity under round-to-nearest-even, i.e. when its magnitude is at least
    /// 2^1024 - 2^970 (DBL_MAX plus half an ulp). Such a text is rejected as a whole; anything
    /// below is valid JSON (and then not an integer of section 3.3).
    #[test]
    fn numbers_overflow_exactly_when_they_round_to_infinity() {
        let int_1e308 = format!("1{}", "0".repeat(308));
        let int_1e309 = format!("1{}", "0".repeat(309));
        // 2^1024 - 2^970 (the exact tie: rounds to even, i.e. to infinity) and one below it.
        let tie = "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792";
        let below_tie = "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497791";
        let accepted = [
            "1e308",
            "1.7976931348623157e308",
            // Above DBL_MAX but below DBL_MAX + half an ulp: rounds down to DBL_MAX.
            "1.7976931348623158e308",
            "-1.7976931348623158e308",
            int_1e308.as_str(),
            below_tie,
            "1e-400",
        ];
        for text in accepted {
            let obj = parse_ijson_object(format!("{{\"n\":{text}}}").as_bytes());
            assert!(obj.is_ok(), "{text} must parse");
            assert_eq!(json_time(&obj.unwrap()["n"]), None, "{text}");
        }
        let rejected = [
            // Above DBL_MAX + half an ulp (1.797693134862315807937...e308).
            "1.7976931348623159e308",
            "1.8e308",
            "-1.8e308",
            "1e309",
            "1e400",
            int_1e309.as_str(),
            tie,
        ];
        for text in rejected {
            let err = parse_ijson_object(format!("{{\"n\":{text}}}").as_bytes()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadJson, "{text}");
        }
    }

    /// spec/PROTOCOL.md section 3.2: noncharacters (U+FDD0..U+FDEF and the last two code points
    /// of every plane), raw or escaped, are ordinary characters in this profile.
    #[test]
    fn noncharacters_are_accepted_raw_and_escaped() {
        for text in [
            "{\"s\":\"\u{FFFF}\"}",
            "{\"s\":\"\u{FDD0}\"}",
            "{\"s\":\"\u{10FFFE}\"}",
            r#"{"s":"\uffff"}"#,
            r#"{"s":"\ufdd0"}"#,
            r#"{"s":"\udbff\udfff"}"#,
        ] {
            assert!(parse_ijson_object(text.as_bytes()).is_ok(), "{text}");
        }
    }
}
