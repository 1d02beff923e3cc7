//! Limits: ceilings by name, which a delegation can only lower (spec/PROTOCOL.md section 7.3).

use core::fmt;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

/// Maximum number of entries in a `limits` object.
pub const MAX_LIMITS: usize = 32;
/// Maximum length of a limit name in bytes.
pub const MAX_LIMIT_NAME_BYTES: usize = 64;
/// Largest limit value (the I-JSON safe integer range).
pub const MAX_LIMIT_VALUE: u64 = (1 << 53) - 1;

fn bad_claim(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadClaim, detail)
}

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
            "limit name character {} outside [a-z0-9_.-]",
            crate::encoding::shown_byte(b)
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

    fn limits(list: &[(&str, u64)]) -> Limits {
        Limits::new(list.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()).unwrap()
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
