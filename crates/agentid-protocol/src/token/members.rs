//! Step 3.c.1 for grants and links, in one pass: the payload is read as I-JSON (spec/PROTOCOL.md
//! section 3.2) straight into the members a token may have, each value kept only as far as its
//! check in step 3.c.5 reads it (a string, an integer, the entries of an ID set, the members of
//! `limits`; `cnf` and `principal` whole). No JSON tree of the payload is built.
//!
//! The I-JSON rules are those of [`parse_ijson_object`](crate::encoding::parse_ijson_object),
//! with the same error at the same place: the same `serde_json` reader (UTF-8, escapes, lone
//! surrogates, number range, trailing data), member names compared after unescaping at every
//! depth, nesting at most [`MAX_JSON_DEPTH`](crate::encoding::MAX_JSON_DEPTH) (containers below
//! the members are read by [`StrictValue`]). Nothing about the claims is decided here: every
//! value is accepted, and the checks of 3.c.2 to 3.c.5 run on [`Members`] after the whole payload
//! passed 3.c.1, so a later I-JSON fault still wins over an earlier bad claim.
//!
//! The same reader, [`read_object`], reads the protected header of every JWS
//! ([`crate::jws::parse_header`]) and a hop proof's payload: each kind says what it keeps of its
//! members ([`Object`]); the I-JSON rules stay here.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use core::fmt;
use core::marker::PhantomData;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::claims::{Name, NAMES};
use crate::encoding::StrictValue;
use crate::error::{Error, ErrorCode, Result};
use crate::jwk::{JwkMember, JwkView, KeyMember};

impl Name {
    /// The name spelled `s` (already unescaped), if it is one.
    fn from_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

/// A member's value, as far as its check in step 3.c.5 reads it.
#[derive(Debug)]
pub(crate) enum Raw<'a> {
    /// A string, borrowed from the payload when it holds no escape.
    Str(Cow<'a, str>),
    /// A number that JSON spells as a non-negative integer (`1`; `1.0`, `1e0` and `-0` are not).
    Int(u64),
    /// `aud` and `may_delegate_to` holding an array: its entries in order, `None` for an entry
    /// that is not a string.
    Ids(Vec<Option<Cow<'a, str>>>),
    /// `limits` holding an object: its members, each value the integer it spells (as
    /// [`Raw::Int`]) or `None`.
    Limits(BTreeMap<String, Option<u64>>),
    /// `cnf`: present, read into [`Members::cnf`] (kept outside the slots, which it would make
    /// five times larger).
    Cnf,
    /// `principal`: the value itself, whatever it is.
    Value(Value),
    /// Any other value (read whole, checked for I-JSON, then dropped).
    Other,
}

/// The members of one payload after step 3.c.1: the known ones by [`Name`], and the names of
/// the others.
#[derive(Debug, Default)]
pub(crate) struct Members<'a> {
    slots: [Option<Raw<'a>>; NAMES],
    /// Names outside [`Name`], in byte order.
    unknown: BTreeSet<String>,
    /// The value of `cnf`, if present.
    cnf: Option<CnfRaw<'a>>,
}

impl<'a> Members<'a> {
    /// The value of member `name`, if present.
    pub(crate) fn get(&self, name: Name) -> Option<&Raw<'a>> {
        self.slots.get(name as usize).and_then(Option::as_ref)
    }

    /// The value of `cnf`, if present.
    pub(crate) fn cnf(&self) -> Option<&CnfRaw<'a>> {
        self.cnf.as_ref()
    }

    /// Takes the value of member `name` out, if present.
    pub(crate) fn take(&mut self, name: Name) -> Option<Raw<'a>> {
        self.slots.get_mut(name as usize).and_then(Option::take)
    }
}

/// Step 3.c.1: reads `payload` as an I-JSON object into its [`Members`]. Any deviation from
/// I-JSON is `BadJson`, with the error (and its detail) that
/// [`parse_ijson_object`](crate::encoding::parse_ijson_object) gives for the same bytes.
pub(crate) fn read_members(payload: &[u8]) -> Result<Members<'_>> {
    read_object(payload)
}

/// What one kind of object (a grant's or link's payload, a protected header, a hop proof's
/// payload) keeps of its members when [`read_object`] reads it: the values of the members it
/// names, each as far as its checks read it, and the names of the others.
pub(crate) trait Object<'de>: Default {
    /// The members this kind keeps.
    type Name: Copy + PartialEq + 'static;
    /// Every [`Object::Name`].
    const NAMES: &'static [Self::Name];
    /// The name spelled `s` (already unescaped), if it is one.
    fn name(s: &str) -> Option<Self::Name>;
    /// How the object spells `name`.
    fn spelling(name: Self::Name) -> &'static str;
    /// Whether member `name` was read.
    fn has(&self, name: Self::Name) -> bool;
    /// Reads the value of member `name` (not read before), held at depth `held_at`, with the
    /// errors [`StrictValue`] gives for it.
    fn read<A: MapAccess<'de>>(
        &mut self,
        name: Self::Name,
        map: &mut A,
        held_at: StrictValue,
    ) -> core::result::Result<(), A::Error>;
    /// The names of the other members, in byte order.
    fn others(&self) -> &BTreeSet<String>;
    /// The same, to add to.
    fn others_mut(&mut self) -> &mut BTreeSet<String>;

    /// The first member name, in byte order, that is not in `allowed`.
    fn first_not_in(&self, allowed: &[Self::Name]) -> Option<&str> {
        let known = Self::NAMES
            .iter()
            .filter(|n| self.has(**n) && !allowed.contains(n))
            .map(|n| Self::spelling(*n))
            .min();
        let unknown = self.others().first().map(String::as_str);
        match (known, unknown) {
            (Some(k), Some(u)) => Some(k.min(u)),
            (k, u) => k.or(u),
        }
    }

    /// The first name of `required` (in its order) that is absent.
    fn first_absent(&self, required: &[Self::Name]) -> Option<Self::Name> {
        required.iter().copied().find(|n| !self.has(*n))
    }
}

/// Reads `payload` as an I-JSON object into what `T` keeps of it, in one pass, without a JSON
/// tree. Any deviation from I-JSON is `BadJson`, with the error (and its detail) that
/// [`parse_ijson_object`](crate::encoding::parse_ijson_object) gives for the same bytes.
pub(crate) fn read_object<'de, T: Object<'de>>(payload: &'de [u8]) -> Result<T> {
    let bad = |why: String| Error::new(ErrorCode::BadJson, why);
    let text = core::str::from_utf8(payload).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = Top(PhantomData)
        .deserialize(&mut de)
        .map_err(|e| bad(format!("not I-JSON: {e}")))?;
    de.end().map_err(|e| bad(format!("trailing data: {e}")))?;
    top.ok_or_else(|| bad("top level is not an object".into()))
}

fn duplicate<E: de::Error>(name: &str) -> E {
    E::custom(format_args!("duplicate member name {name:?}"))
}

/// The top level: an object's members as `T` keeps them, or `None` after reading any other
/// value (checked for I-JSON all the same, as the caller reports trailing data before a top
/// level of the wrong type).
struct Top<T>(PhantomData<T>);

impl<'de, T: Object<'de>> DeserializeSeed<'de> for Top<T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// What [`Top`] makes of a value that is not an object: read it as any other value is read.
fn not_an_object<T, E>(read: core::result::Result<Value, E>) -> core::result::Result<Option<T>, E> {
    read.map(|_| None)
}

impl<'de, T: Object<'de>> Visitor<'de> for Top<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an I-JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> core::result::Result<Self::Value, E> {
        not_an_object(StrictValue::at_depth(0).visit_bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<Self::Value, E> {
        not_an_object(StrictValue::at_depth(0).visit_i64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<Self::Value, E> {
        not_an_object(StrictValue::at_depth(0).visit_u64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> core::result::Result<Self::Value, E> {
        not_an_object(StrictValue::at_depth(0).visit_f64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Self::Value, E> {
        not_an_object(StrictValue::at_depth(0).visit_str(v))
    }

    fn visit_unit<E: de::Error>(self) -> core::result::Result<Self::Value, E> {
        not_an_object(StrictValue::at_depth(0).visit_unit())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> core::result::Result<Self::Value, A::Error> {
        not_an_object(StrictValue::at_depth(0).visit_seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> core::result::Result<Self::Value, A::Error> {
        // The top object is at depth 1; its members' values are held at depth 1.
        let held_at = StrictValue::at_depth(0).enter::<A::Error>()?;
        let mut out = T::default();
        // A duplicate is detected before its value is read, as for every other object.
        while let Some(key) = map.next_key_seed(KeySeed::<T::Name>(T::name))? {
            match key {
                Key::Known(name) => {
                    if out.has(name) {
                        return Err(duplicate(T::spelling(name)));
                    }
                    out.read(name, &mut map, held_at)?;
                }
                Key::Unknown(name) => {
                    if out.others().contains(&name) {
                        return Err(duplicate(&name));
                    }
                    map.next_value_seed(held_at)?;
                    out.others_mut().insert(name);
                }
            }
        }
        Ok(Some(out))
    }
}

impl<'de> Object<'de> for Members<'de> {
    type Name = Name;
    const NAMES: &'static [Name] = &Name::ALL;

    fn name(s: &str) -> Option<Name> {
        Name::from_str(s)
    }

    fn spelling(name: Name) -> &'static str {
        name.as_str()
    }

    fn has(&self, name: Name) -> bool {
        self.get(name).is_some()
    }

    fn read<A: MapAccess<'de>>(
        &mut self,
        name: Name,
        map: &mut A,
        held_at: StrictValue,
    ) -> core::result::Result<(), A::Error> {
        let raw = if name == Name::Cnf {
            self.cnf = Some(map.next_value_seed(CnfSeed { held_at })?);
            Raw::Cnf
        } else {
            map.next_value_seed(MemberSeed { name, held_at })?
        };
        if let Some(slot) = self.slots.get_mut(name as usize) {
            *slot = Some(raw);
        }
        Ok(())
    }

    fn others(&self) -> &BTreeSet<String> {
        &self.unknown
    }

    fn others_mut(&mut self) -> &mut BTreeSet<String> {
        &mut self.unknown
    }
}

/// A member name, unescaped: one the object keeps, or another.
enum Key<N> {
    Known(N),
    Unknown(String),
}

/// Reads a member name of the top object, telling the names the object keeps (by its
/// [`Object::name`]) without copying them.
struct KeySeed<N>(fn(&str) -> Option<N>);

impl<'de, N> DeserializeSeed<'de> for KeySeed<N> {
    type Value = Key<N>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> core::result::Result<Key<N>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<N> Visitor<'_> for KeySeed<N> {
    type Value = Key<N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Key<N>, E> {
        Ok((self.0)(v).map_or_else(|| Key::Unknown(v.to_owned()), Key::Known))
    }
}

/// A member's value as a protected header's and a hop proof's checks read it: a string
/// (unescaped, borrowed from the input when it holds no escape), or any other value, whole.
#[derive(Debug)]
pub(crate) enum StrOr<'a> {
    Str(Cow<'a, str>),
    Value(Value),
}

impl StrOr<'_> {
    /// The string, if the value is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            Self::Value(_) => None,
        }
    }

    /// The integer the value spells, as [`Value::as_u64`] reads it.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Str(_) => None,
            Self::Value(v) => v.as_u64(),
        }
    }

    /// The value as a JSON tree (for an error's detail).
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Self::Str(s) => Value::String(s.as_ref().to_owned()),
            Self::Value(v) => v.clone(),
        }
    }
}

/// Reads a [`StrOr`] held at depth `held_at`: any value but a string exactly as
/// [`StrictValue`] reads it.
#[derive(Clone, Copy)]
pub(crate) struct StrOrSeed {
    pub(crate) held_at: StrictValue,
}

impl<'de> DeserializeSeed<'de> for StrOrSeed {
    type Value = StrOr<'de>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrOrSeed {
    type Value = StrOr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an I-JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> core::result::Result<Self::Value, E> {
        self.held_at.visit_bool(v).map(StrOr::Value)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<Self::Value, E> {
        self.held_at.visit_i64(v).map(StrOr::Value)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<Self::Value, E> {
        self.held_at.visit_u64(v).map(StrOr::Value)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> core::result::Result<Self::Value, E> {
        self.held_at.visit_f64(v).map(StrOr::Value)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> core::result::Result<Self::Value, E> {
        Ok(StrOr::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Self::Value, E> {
        Ok(StrOr::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> core::result::Result<Self::Value, E> {
        Ok(StrOr::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> core::result::Result<Self::Value, E> {
        self.held_at.visit_unit().map(StrOr::Value)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> core::result::Result<Self::Value, A::Error> {
        self.held_at.visit_seq(seq).map(StrOr::Value)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> core::result::Result<Self::Value, A::Error> {
        self.held_at.visit_map(map).map(StrOr::Value)
    }
}

/// The value of member `name` of the top object (held at depth `held_at`).
#[derive(Clone, Copy)]
struct MemberSeed {
    name: Name,
    held_at: StrictValue,
}

impl<'de> DeserializeSeed<'de> for MemberSeed {
    type Value = Raw<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> core::result::Result<Raw<'de>, D::Error> {
        match self.name {
            Name::Principal => self.held_at.deserialize(d).map(Raw::Value),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for MemberSeed {
    type Value = Raw<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an I-JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> core::result::Result<Raw<'de>, E> {
        Ok(Raw::Other)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<Raw<'de>, E> {
        Ok(u64::try_from(v).map_or(Raw::Other, Raw::Int))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<Raw<'de>, E> {
        Ok(Raw::Int(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> core::result::Result<Raw<'de>, E> {
        self.held_at.visit_f64(v).map(|_| Raw::Other)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> core::result::Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> core::result::Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> core::result::Result<Raw<'de>, E> {
        Ok(Raw::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> core::result::Result<Raw<'de>, A::Error> {
        if !matches!(self.name, Name::Aud | Name::MayDelegateTo) {
            return self.held_at.visit_seq(seq).map(|_| Raw::Other);
        }
        let entry = IdEntrySeed {
            held_at: self.held_at.enter()?,
        };
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(e) = seq.next_element_seed(entry)? {
            out.push(e);
        }
        Ok(Raw::Ids(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> core::result::Result<Raw<'de>, A::Error> {
        if self.name != Name::Limits {
            return self.held_at.visit_map(map).map(|_| Raw::Other);
        }
        let value = IntSeed {
            held_at: self.held_at.enter()?,
        };
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(duplicate(&key));
            }
            let v = map.next_value_seed(value)?;
            out.insert(key, v);
        }
        Ok(Raw::Limits(out))
    }
}

/// An entry of an ID set's array: the string, or `None` for any other value (read whole).
#[derive(Clone, Copy)]
struct IdEntrySeed {
    held_at: StrictValue,
}

impl<'de> DeserializeSeed<'de> for IdEntrySeed {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdEntrySeed {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an I-JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> core::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> core::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> core::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> core::result::Result<Self::Value, E> {
        self.held_at.visit_f64(v).map(|_| None)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> core::result::Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> core::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> core::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> core::result::Result<Self::Value, A::Error> {
        self.held_at.visit_seq(seq).map(|_| None)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> core::result::Result<Self::Value, A::Error> {
        self.held_at.visit_map(map).map(|_| None)
    }
}

/// A value of `limits`: the integer it spells (as [`Raw::Int`]), or `None` for any other value
/// (read whole).
#[derive(Clone, Copy)]
struct IntSeed {
    held_at: StrictValue,
}

impl<'de> DeserializeSeed<'de> for IntSeed {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IntSeed {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an I-JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> core::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<Self::Value, E> {
        Ok(u64::try_from(v).ok())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> core::result::Result<Self::Value, E> {
        self.held_at.visit_f64(v).map(|_| None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> core::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> core::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> core::result::Result<Self::Value, A::Error> {
        self.held_at.visit_seq(seq).map(|_| None)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> core::result::Result<Self::Value, A::Error> {
        self.held_at.visit_map(map).map(|_| None)
    }
}

// ---- `cnf`: `{"jwk": {...}}` read without a JSON tree ----

/// `cnf` as far as its check in step 3.c.5 reads it (section 5.1: exactly `{"jwk": key}`).
#[derive(Debug)]
pub(crate) enum CnfRaw<'a> {
    /// Any value but an object.
    NotObject,
    /// An object: its number of members and its `jwk` member, if it has one.
    Object {
        members: usize,
        jwk: Option<JwkRaw<'a>>,
    },
}

/// The `jwk` member of `cnf`.
#[derive(Debug)]
pub(crate) enum JwkRaw<'a> {
    /// Any value but an object.
    NotObject,
    /// An object's members, as [`JwkView`] reads them.
    Object(JwkMembers<'a>),
}

/// A JWK value of a key member: a string (unescaped), or any other value.
#[derive(Debug)]
pub(crate) enum JwkValue<'a> {
    Str(Cow<'a, str>),
    NotString,
}

/// The members of a `cnf.jwk` object: the key members ([`KeyMember`]), and the first other
/// name in byte order (a `cnf.jwk` may hold no other member).
#[derive(Debug, Default)]
pub(crate) struct JwkMembers<'a> {
    kty: Option<JwkValue<'a>>,
    crv: Option<JwkValue<'a>>,
    x: Option<JwkValue<'a>>,
    y: Option<JwkValue<'a>>,
    alg: Option<JwkValue<'a>>,
    first_other: Option<Cow<'a, str>>,
}

impl<'a> JwkMembers<'a> {
    /// The members as the JWK rules read them.
    pub(crate) fn view(&self) -> JwkView<'_> {
        JwkView::new(self.first_other.as_deref(), |m| match self.held(m) {
            None => JwkMember::Absent,
            Some(JwkValue::NotString) => JwkMember::NotString,
            Some(JwkValue::Str(s)) => JwkMember::Str(s),
        })
    }

    fn held(&self, member: KeyMember) -> &Option<JwkValue<'a>> {
        match member {
            KeyMember::Kty => &self.kty,
            KeyMember::Crv => &self.crv,
            KeyMember::X => &self.x,
            KeyMember::Y => &self.y,
            KeyMember::Alg => &self.alg,
        }
    }

    /// The slot of member `name`, if it is a key member.
    fn slot(&mut self, name: &str) -> Option<&mut Option<JwkValue<'a>>> {
        Some(match KeyMember::named(name)? {
            KeyMember::Kty => &mut self.kty,
            KeyMember::Crv => &mut self.crv,
            KeyMember::X => &mut self.x,
            KeyMember::Y => &mut self.y,
            KeyMember::Alg => &mut self.alg,
        })
    }
}

impl<'a> CnfRaw<'a> {
    /// What the payload reader makes of `cnf` holding `v` (the two-pass decoder reads `cnf`
    /// into a JSON tree first; both go through the same rules).
    #[cfg(test)]
    pub(crate) fn from_value(v: &'a Value) -> Self {
        let Value::Object(cnf) = v else {
            return Self::NotObject;
        };
        let jwk = cnf.get("jwk").map(|jwk| {
            let Value::Object(map) = jwk else {
                return JwkRaw::NotObject;
            };
            let mut out = JwkMembers::default();
            for (name, value) in map {
                let value = match value {
                    Value::String(s) => JwkValue::Str(Cow::Borrowed(s)),
                    _ => JwkValue::NotString,
                };
                if let Some(slot) = out.slot(name) {
                    *slot = Some(value);
                } else if out.first_other.is_none() {
                    // Map keys come in byte order: the first is the least.
                    out.first_other = Some(Cow::Borrowed(name));
                }
            }
            JwkRaw::Object(out)
        });
        Self::Object {
            members: cnf.len(),
            jwk,
        }
    }
}

/// A member name of an object below the top one, unescaped (borrowed when it holds no escape).
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> core::result::Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> core::result::Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Reads the names of an object (below the top one) that are not kept, detecting a duplicate
/// among them before its value is read, as [`StrictValue`] does for every object.
#[derive(Default)]
struct OtherNames<'a>(Vec<Cow<'a, str>>);

impl<'a> OtherNames<'a> {
    fn insert<E: de::Error>(&mut self, name: Cow<'a, str>) -> core::result::Result<(), E> {
        if self.0.contains(&name) {
            return Err(duplicate(&name));
        }
        self.0.push(name);
        Ok(())
    }
}

/// Reads the value of `cnf` (held at depth `held_at`): every value is read whole as
/// [`StrictValue`] reads it, keeping only what the rules of `cnf` and of a JWK read.
#[derive(Clone, Copy)]
struct CnfSeed {
    held_at: StrictValue,
}

/// Reads the value of `cnf.jwk` (held at depth `held_at`).
#[derive(Clone, Copy)]
struct JwkSeed {
    held_at: StrictValue,
}

/// Reads the value of a member of `cnf.jwk` (held at depth `held_at`).
#[derive(Clone, Copy)]
struct JwkValueSeed {
    held_at: StrictValue,
}

impl<'de> DeserializeSeed<'de> for CnfSeed {
    type Value = CnfRaw<'de>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> DeserializeSeed<'de> for JwkSeed {
    type Value = JwkRaw<'de>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> DeserializeSeed<'de> for JwkValueSeed {
    type Value = JwkValue<'de>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// The visits of a seed that keeps `$other` for every value but the ones it implements itself,
/// after reading that value as [`StrictValue`] at the seed's depth would (the same errors).
macro_rules! read_whole_as {
    ($other:expr) => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an I-JSON value")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> core::result::Result<Self::Value, E> {
            self.held_at.visit_bool(v).map(|_| $other)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<Self::Value, E> {
            self.held_at.visit_i64(v).map(|_| $other)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<Self::Value, E> {
            self.held_at.visit_u64(v).map(|_| $other)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> core::result::Result<Self::Value, E> {
            self.held_at.visit_f64(v).map(|_| $other)
        }

        fn visit_unit<E: de::Error>(self) -> core::result::Result<Self::Value, E> {
            self.held_at.visit_unit().map(|_| $other)
        }

        fn visit_seq<A: SeqAccess<'de>>(
            self,
            seq: A,
        ) -> core::result::Result<Self::Value, A::Error> {
            self.held_at.visit_seq(seq).map(|_| $other)
        }
    };
}

impl<'de> Visitor<'de> for CnfSeed {
    type Value = CnfRaw<'de>;

    read_whole_as!(CnfRaw::NotObject);

    fn visit_str<E: de::Error>(self, _: &str) -> core::result::Result<Self::Value, E> {
        Ok(CnfRaw::NotObject)
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> core::result::Result<Self::Value, A::Error> {
        let inner = self.held_at.enter()?;
        let mut jwk = None;
        let mut others = OtherNames::default();
        while let Some(name) = map.next_key_seed(NameSeed)? {
            if name == "jwk" {
                if jwk.is_some() {
                    return Err(duplicate(&name));
                }
                jwk = Some(map.next_value_seed(JwkSeed { held_at: inner })?);
            } else {
                others.insert(name)?;
                map.next_value_seed(inner)?;
            }
        }
        Ok(CnfRaw::Object {
            members: others.0.len() + usize::from(jwk.is_some()),
            jwk,
        })
    }
}

impl<'de> Visitor<'de> for JwkSeed {
    type Value = JwkRaw<'de>;

    read_whole_as!(JwkRaw::NotObject);

    fn visit_str<E: de::Error>(self, _: &str) -> core::result::Result<Self::Value, E> {
        Ok(JwkRaw::NotObject)
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> core::result::Result<Self::Value, A::Error> {
        let inner = self.held_at.enter()?;
        let mut out = JwkMembers::default();
        let mut others = OtherNames::default();
        while let Some(name) = map.next_key_seed(NameSeed)? {
            match out.slot(&name) {
                Some(Some(_)) => return Err(duplicate(&name)),
                Some(slot @ None) => {
                    *slot = Some(map.next_value_seed(JwkValueSeed { held_at: inner })?);
                }
                None => {
                    others.insert(name)?;
                    map.next_value_seed(inner)?;
                }
            }
        }
        // A `cnf.jwk` may hold no other name (no caller allows extra members here).
        out.first_other = others.0.into_iter().min();
        Ok(JwkRaw::Object(out))
    }
}

impl<'de> Visitor<'de> for JwkValueSeed {
    type Value = JwkValue<'de>;

    read_whole_as!(JwkValue::NotString);

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> core::result::Result<Self::Value, E> {
        Ok(JwkValue::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Self::Value, E> {
        Ok(JwkValue::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> core::result::Result<Self::Value, E> {
        Ok(JwkValue::Str(Cow::Owned(v)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> core::result::Result<Self::Value, A::Error> {
        self.held_at.visit_map(map).map(|_| JwkValue::NotString)
    }
}
