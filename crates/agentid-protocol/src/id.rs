//! SPIFFE identities: trust domains, agent IDs, task identities and service IDs.
//!
//! Every type here can only hold a valid, canonical value: it is built by parsing (or by a
//! constructor that re-parses what it builds), and compared parsed, never by string prefix.
//!
//! The rules (spec/PROTOCOL.md section 2.1):
//! * scheme exactly `spiffe://` (lowercase: IDs in tokens and certificates are canonical);
//! * trust domain of 1..=255 bytes of `[a-z0-9._-]` (so no userinfo, port, upper case, ...),
//!   and neither `.` nor `..` (names that a file path or URL built from a trust domain would
//!   read as "this" or "parent" directory);
//! * path segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`, no trailing `/`
//!   (so no percent-encoding, query or fragment);
//! * at most 2048 bytes in all.
//!
//! ```
//! use agentid_protocol::{IdKind, SpiffeId};
//! let agent = SpiffeId::parse("spiffe://example.org/agent/planner").unwrap();
//! let task = SpiffeId::parse("spiffe://example.org/agent/planner/task/t1").unwrap();
//! assert_eq!(task.kind(), IdKind::Task);
//! assert!(agent.covers(&task));
//! assert!(!SpiffeId::parse("spiffe://example.org/agent/plan").unwrap().covers(&task));
//! ```

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

/// The only accepted scheme prefix (canonical, lowercase).
const SCHEME: &str = "spiffe://";
/// Maximum length of a SPIFFE ID in bytes.
pub const MAX_ID_BYTES: usize = 2048;
/// Maximum length of a trust domain name in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

const AGENT: &str = "agent";
const TASK: &str = "task";
const SVC: &str = "svc";

fn bad_id(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadId, detail)
}

fn is_td_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn check_trust_domain(td: &str) -> Result<()> {
    if td.is_empty() {
        return Err(bad_id("empty trust domain"));
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(bad_id(format!(
            "trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
        )));
    }
    if let Some(b) = td.bytes().find(|b| !is_td_byte(*b)) {
        return Err(bad_id(format!(
            "trust domain character {} outside [a-z0-9._-]",
            crate::encoding::shown_byte(b)
        )));
    }
    if td == "." || td == ".." {
        return Err(bad_id("trust domain `.` or `..`"));
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<()> {
    match seg {
        "" => Err(bad_id("empty path segment")),
        "." | ".." => Err(bad_id("`.` or `..` path segment")),
        _ => match seg.bytes().find(|b| !is_segment_byte(*b)) {
            Some(b) => Err(bad_id(format!(
                "path segment character {} outside [A-Za-z0-9._-]",
                crate::encoding::shown_byte(b)
            ))),
            None => Ok(()),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// TrustDomain
// ---------------------------------------------------------------------------------------------

/// A trust domain name such as `example.org` (without the scheme): 1..=255 bytes of `[a-z0-9._-]`.
///
/// ```
/// use agentid_protocol::TrustDomain;
/// let td = TrustDomain::parse("example.org").unwrap();
/// assert_eq!(td.id().as_str(), "spiffe://example.org");
/// assert!(TrustDomain::parse("Example.org").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

/// Maps keyed by trust domain can be searched by name (an ID's `trust_domain_str`) without
/// allocating; hashing and ordering are those of the name.
impl core::borrow::Borrow<str> for TrustDomain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TrustDomain {
    /// Parses a bare trust domain name (`BadId` on any violation).
    pub fn parse(s: &str) -> Result<Self> {
        check_trust_domain(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust-domain ID `spiffe://<td>`, which names the domain's authority.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            s: format!("{SCHEME}{}", self.0),
            td_len: self.0.len(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SpiffeId
// ---------------------------------------------------------------------------------------------

/// What a SPIFFE ID names, decided from its exact path segments (case-sensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// `spiffe://<td>`: the trust domain (its authority).
    TrustDomain,
    /// `spiffe://<td>/agent/<name>`.
    Agent,
    /// `spiffe://<td>/agent/<name>/task/<id>`.
    Task,
    /// `spiffe://<td>/svc/<name>`.
    Service,
    /// Any other valid SPIFFE ID.
    Other,
}

/// Any valid, canonical SPIFFE ID of at most 2048 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    /// The canonical string.
    s: String,
    /// Length of the trust domain, which starts right after the scheme.
    td_len: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, applying every rule of spec/PROTOCOL.md section 2.1 (`BadId` on any
    /// violation).
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() > MAX_ID_BYTES {
            return Err(bad_id(format!("longer than {MAX_ID_BYTES} bytes")));
        }
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad_id("scheme is not exactly `spiffe://`"))?;
        let (td, path) = match rest.split_once('/') {
            Some((td, path)) => (td, Some(path)),
            None => (rest, None),
        };
        check_trust_domain(td)?;
        if let Some(path) = path {
            if path.is_empty() {
                return Err(bad_id("trailing `/`"));
            }
            for seg in path.split('/') {
                check_segment(seg)?;
            }
        }
        Ok(Self {
            s: s.to_owned(),
            td_len: td.len(),
        })
    }

    /// The canonical string.
    pub fn as_str(&self) -> &str {
        &self.s
    }

    /// The trust domain name.
    pub fn trust_domain_str(&self) -> &str {
        self.s
            .get(SCHEME.len()..SCHEME.len() + self.td_len)
            .unwrap_or_default()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path segments; empty for a trust-domain ID.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.s
            .get(SCHEME.len() + self.td_len..)
            .and_then(|p| p.strip_prefix('/'))
            .into_iter()
            .flat_map(|p| p.split('/'))
    }

    /// What this ID names.
    pub fn kind(&self) -> IdKind {
        // `segments()`, without the flattening: this runs for every ID a chain holds.
        let Some(path) = self
            .s
            .get(SCHEME.len() + self.td_len..)
            .and_then(|p| p.strip_prefix('/'))
        else {
            return IdKind::TrustDomain;
        };
        let mut it = path.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (None, ..) => IdKind::TrustDomain,
            (Some(AGENT), Some(_), None, ..) => IdKind::Agent,
            (Some(AGENT), Some(_), Some(TASK), Some(_), None) => IdKind::Task,
            (Some(SVC), Some(_), None, ..) => IdKind::Service,
            _ => IdKind::Other,
        }
    }

    /// The audience rule: `self` covers `other` when they are equal, or `self` is a trust-domain
    /// ID and `other` is in that trust domain, or `self` is an agent ID and `other` is one of its
    /// task identities. Compared parsed, never by string prefix.
    pub fn covers(&self, other: &SpiffeId) -> bool {
        if self == other {
            return true;
        }
        if self.trust_domain_str() != other.trust_domain_str() {
            return false;
        }
        match self.kind() {
            IdKind::TrustDomain => true,
            IdKind::Agent => {
                other.kind() == IdKind::Task && self.segments().eq(other.segments().take(2))
            }
            _ => false,
        }
    }

    /// The last path segment, for the typed wrappers whose kind makes it the name or the task id
    /// (not meaningful for a trust-domain ID, which has no path).
    fn last_segment(&self) -> &str {
        self.s.rsplit_once('/').map_or("", |(_, last)| last)
    }

    /// Requires a given kind (`BadId` otherwise).
    /// This ID as a task identity, if it is one: what `TaskIdentity::parse(self.as_str())`
    /// gives (a `SpiffeId` holds a valid canonical string, so only its kind decides), without
    /// parsing the string again.
    pub(crate) fn as_task_identity(&self) -> Option<TaskIdentity> {
        (self.kind() == IdKind::Task).then(|| TaskIdentity(self.clone()))
    }

    fn require(self, kind: IdKind) -> Result<Self> {
        let got = self.kind();
        if got == kind {
            Ok(self)
        } else {
            Err(bad_id(format!("expected a {kind:?} ID, got {got:?}")))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AgentId, TaskId, TaskIdentity, ServiceId, PeerId
// ---------------------------------------------------------------------------------------------

/// A SPIFFE ID of one kind that names something (`spiffe://<td>/<prefix>/<name>`): [`AgentId`]
/// and [`ServiceId`], the same type for two kinds.
macro_rules! named_id {
    ($(#[$doc:meta])* $ty:ident, $kind:ident, $prefix:ident = $path:literal, $an:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(SpiffeId);

        impl $ty {
            #[doc = concat!("Parses ", $an, " ", $what, " ID (`BadId` if not a valid SPIFFE ID of kind ", $what, ").")]
            pub fn parse(s: &str) -> Result<Self> {
                SpiffeId::parse(s)?.require(IdKind::$kind).map(Self)
            }

            #[doc = concat!("Builds `spiffe://<td>/", $path, "/<name>` (`BadId` if `name` is not a valid segment).")]
            pub fn new(trust_domain: &TrustDomain, name: &str) -> Result<Self> {
                check_segment(name)?;
                Self::parse(&format!("{SCHEME}{}/{}/{name}", trust_domain.as_str(), $prefix))
            }

            #[doc = concat!("The ", $what, " name (the second path segment).")]
            pub fn name(&self) -> &str {
                // Exactly two segments: the second is the last.
                self.0.last_segment()
            }
        }
    };
}

named_id!(
    /// An agent ID, exactly `spiffe://<td>/agent/<name>`.
    AgentId, Agent, AGENT = "agent", "an", "agent"
);

/// A bare task id: the last segment of a task identity (segment rules; at most 2048 bytes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TaskId {
    /// Parses a bare task id (`BadId` if it breaks the path-segment rules).
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() > MAX_ID_BYTES {
            return Err(bad_id(format!("task id longer than {MAX_ID_BYTES} bytes")));
        }
        check_segment(s)?;
        Ok(Self(s.to_owned()))
    }

    /// A fresh task id: 128 random bits as lowercase RFC 4648 base32 without padding (26 chars).
    pub fn generate() -> Result<Self> {
        let bytes: [u8; 16] = crate::crypto::random_bytes::<16>()?;
        Ok(Self(base32_lower(&bytes)))
    }

    /// The task id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lowercase RFC 4648 base32, no padding.
fn base32_lower(bytes: &[u8]) -> String {
    fn symbol(v: u32) -> char {
        // v < 32 by construction: a..z for 0..25, 2..7 for 26..31.
        let v = (v & 31) as u8;
        char::from(if v < 26 { b'a' + v } else { b'2' + (v - 26) })
    }
    let mut out = String::with_capacity((bytes.len() * 8).div_ceil(5));
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(symbol(buf >> bits));
        }
        buf &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(symbol(buf << (5 - bits)));
    }
    out
}

/// A task identity, exactly `spiffe://<td>/agent/<name>/task/<id>`: the URI SAN of a per-task
/// certificate and the `sub` of every grant and link.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskIdentity(SpiffeId);

impl TaskIdentity {
    /// Parses a task identity (`BadId` if not a valid SPIFFE ID of kind task).
    pub fn parse(s: &str) -> Result<Self> {
        SpiffeId::parse(s)?.require(IdKind::Task).map(Self)
    }

    /// Builds `<agent>/task/<id>` (`BadId` if the result exceeds 2048 bytes).
    pub fn new(agent: &AgentId, task: &TaskId) -> Result<Self> {
        Self::parse(&format!("{}/{TASK}/{}", agent.as_str(), task.as_str()))
    }

    /// The agent this task belongs to: the prefix of the canonical string before `/task/<id>`
    /// (copied, not formatted again).
    pub fn agent(&self) -> AgentId {
        AgentId(SpiffeId {
            s: self.agent_str().to_owned(),
            td_len: self.0.trust_domain_str().len(),
        })
    }

    /// The bare task id.
    pub fn task_id(&self) -> TaskId {
        TaskId(self.task_id_str().to_owned())
    }

    /// The bare task id, borrowed (the last segment).
    pub(crate) fn task_id_str(&self) -> &str {
        // Exactly four segments: the fourth is the last.
        self.0.last_segment()
    }

    /// The agent's SPIFFE ID, borrowed: the canonical string is `<agent>/task/<id>`, so the
    /// agent is its prefix (the same string [`TaskIdentity::agent`] builds).
    pub(crate) fn agent_str(&self) -> &str {
        let s = self.as_str();
        let tail = TASK.len() + 2 + self.task_id_str().len();
        s.get(..s.len().saturating_sub(tail)).unwrap_or_default()
    }
}

named_id!(
    /// A service ID, exactly `spiffe://<td>/svc/<name>`: tools and servers that are not agents.
    ServiceId, Service, SVC = "svc", "a", "service"
);

/// The identity of a TLS peer, from its certificate's URI SAN: a task identity or a service ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PeerId {
    /// An agent working on a task.
    Task(TaskIdentity),
    /// A service (tool or server) that is not an agent.
    Service(ServiceId),
}

impl PeerId {
    /// Parses a certificate URI SAN (`BadId` unless it is a task identity or a service ID).
    pub fn parse(s: &str) -> Result<Self> {
        let id = SpiffeId::parse(s)?;
        match id.kind() {
            IdKind::Task => Ok(Self::Task(TaskIdentity(id))),
            IdKind::Service => Ok(Self::Service(ServiceId(id))),
            other => Err(bad_id(format!(
                "a peer must be a task identity or a service ID, got {other:?}"
            ))),
        }
    }

    /// Whether `PeerId::parse(s)`'s SPIFFE ID is `known`, where `s` is expected to be the
    /// string of `known` (a hop proof's `sub` and `aud` name the connection's peer and
    /// verifier): when it is, only `known`'s kind is checked, since a `SpiffeId` holds a valid
    /// string that parses back to itself; any other string is parsed, with the same error as
    /// `PeerId::parse`. Nothing is copied.
    pub(crate) fn parse_names(s: &str, known: &SpiffeId) -> Result<bool> {
        if s == known.as_str() && matches!(known.kind(), IdKind::Task | IdKind::Service) {
            return Ok(true);
        }
        Self::parse(s).map(|p| p.as_spiffe_id() == known)
    }

    /// The underlying SPIFFE ID.
    pub fn as_spiffe_id(&self) -> &SpiffeId {
        match self {
            Self::Task(t) => t.as_spiffe_id(),
            Self::Service(s) => s.as_spiffe_id(),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        self.as_spiffe_id().trust_domain()
    }

    /// The canonical string.
    pub fn as_str(&self) -> &str {
        self.as_spiffe_id().as_str()
    }

    /// The identity a per-agent cap counts this peer under: a task identity's agent (every
    /// task of one agent together), or the service itself.
    pub fn agent_or_service(&self) -> String {
        match self {
            Self::Task(t) => t.agent().to_string(),
            Self::Service(s) => s.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions shared by every type: Display, Debug, FromStr, serde via String.
// ---------------------------------------------------------------------------------------------

macro_rules! string_like {
    ($($ty:ident),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($ty), "({:?})"), self.as_str())
            }
        }
        parse_conversions!($ty);
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.as_str().to_owned()
            }
        }
    )*};
}

string_like!(
    TrustDomain,
    SpiffeId,
    AgentId,
    TaskId,
    TaskIdentity,
    ServiceId,
    PeerId
);

/// What every newtype over a [`SpiffeId`] has: conversions and its accessors.
macro_rules! into_spiffe_id {
    ($($ty:ident),*) => {$(
        impl $ty {
            /// The trust domain.
            pub fn trust_domain(&self) -> TrustDomain {
                self.0.trust_domain()
            }

            /// The underlying SPIFFE ID.
            pub fn as_spiffe_id(&self) -> &SpiffeId {
                &self.0
            }

            /// The canonical string.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }
        impl From<$ty> for SpiffeId {
            fn from(v: $ty) -> SpiffeId {
                v.0
            }
        }
        impl AsRef<SpiffeId> for $ty {
            fn as_ref(&self) -> &SpiffeId {
                &self.0
            }
        }
    )*};
}

into_spiffe_id!(AgentId, TaskIdentity, ServiceId);

impl From<PeerId> for SpiffeId {
    fn from(v: PeerId) -> SpiffeId {
        match v {
            PeerId::Task(t) => t.0,
            PeerId::Service(s) => s.0,
        }
    }
}

impl From<TaskIdentity> for PeerId {
    fn from(v: TaskIdentity) -> Self {
        Self::Task(v)
    }
}

impl From<ServiceId> for PeerId {
    fn from(v: ServiceId) -> Self {
        Self::Service(v)
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn a_peer_id_parsed_expecting_a_known_id_is_what_parsing_gives() {
        let ids = [
            "spiffe://example.org/agent/a/task/t",
            "spiffe://example.org/svc/api",
            "spiffe://example.org",
            "spiffe://example.org/agent/a",
            "spiffe://example.org/other/x",
            "spiffe://example.org/agent/a/task/u",
        ];
        let strings = ids.iter().copied().chain([
            "spiffe://Example.org/agent/a/task/t",
            "spiffe://example.org/agent/a/task/t/",
            "https://example.org/svc/api",
            "",
        ]);
        for s in strings {
            for k in ids {
                let known = id(k);
                let got = PeerId::parse_names(s, &known);
                let parsed = PeerId::parse(s).map(|p| *p.as_spiffe_id() == known);
                match (got, parsed) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{s} / {k}"),
                    (Err(a), Err(b)) => {
                        assert_eq!(a.code(), b.code(), "{s} / {k}");
                        assert_eq!(a.detail(), b.detail(), "{s} / {k}");
                    }
                    (a, b) => panic!("{s} / {k}: {a:?} vs {b:?}"),
                }
            }
        }
    }

    /// `kind`, `name` and the task id read the path without iterating every segment: they give
    /// what the segments say.
    #[test]
    fn kind_name_and_task_id_are_what_the_segments_say() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/agent/a",
            "spiffe://example.org/svc/api",
            "spiffe://example.org/agent/a/task/t",
            "spiffe://a.b-c.example/agent/reviewer.1/task/T_x-9",
            "spiffe://x/agent/task/task/agent",
            "spiffe://x/svc/agent",
            "spiffe://x/agent/svc",
            "spiffe://example.org/agent/a/task",
            "spiffe://example.org/agent/a/task/t/x",
            "spiffe://example.org/task/t/agent/a",
            "spiffe://example.org/other",
            "spiffe://example.org/svc/a/b",
        ] {
            let parsed = id(s);
            let segs: Vec<&str> = parsed.segments().collect();
            let expected = match segs.as_slice() {
                [] => IdKind::TrustDomain,
                [AGENT, _] => IdKind::Agent,
                [AGENT, _, TASK, _] => IdKind::Task,
                [SVC, _] => IdKind::Service,
                _ => IdKind::Other,
            };
            assert_eq!(parsed.kind(), expected, "{s}");
            match expected {
                IdKind::Agent => assert_eq!(AgentId::parse(s).unwrap().name(), segs[1], "{s}"),
                IdKind::Service => {
                    assert_eq!(ServiceId::parse(s).unwrap().name(), segs[1], "{s}");
                }
                IdKind::Task => {
                    let t = TaskIdentity::parse(s).unwrap();
                    assert_eq!(t.task_id_str(), segs[3], "{s}");
                    assert_eq!(t.task_id().as_str(), segs[3], "{s}");
                    assert_eq!(t.agent().name(), segs[1], "{s}");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn an_id_as_a_task_identity_is_what_parsing_it_gives() {
        for s in [
            "spiffe://example.org/agent/a/task/t",
            "spiffe://a.b-c.example/agent/reviewer.1/task/T_x-9",
            "spiffe://x/agent/task/task/agent",
            "spiffe://example.org",
            "spiffe://example.org/agent/a",
            "spiffe://example.org/agent/a/task",
            "spiffe://example.org/agent/a/task/t/x",
            "spiffe://example.org/svc/api",
            "spiffe://example.org/task/t/agent/a",
            "spiffe://example.org/other/a/task/t",
        ] {
            let parsed = id(s);
            assert_eq!(
                parsed.as_task_identity(),
                TaskIdentity::parse(parsed.as_str()).ok(),
                "{s}"
            );
        }
    }

    #[test]
    fn borrowed_agent_and_task_match_the_owned_ones() {
        for s in [
            "spiffe://example.org/agent/a/task/t",
            "spiffe://a.b-c.example/agent/reviewer.1/task/T_x-9",
            "spiffe://x/agent/task/task/agent",
        ] {
            let t = TaskIdentity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(t.agent_str(), t.agent().as_str(), "{s}");
            // The agent as it was built before (formatted from the domain and the name): the
            // same string, the same trust domain, and what parsing that string gives.
            let td = t.as_spiffe_id().trust_domain_str();
            let formatted = format!(
                "{SCHEME}{td}/{AGENT}/{}",
                t.as_spiffe_id().segments().nth(1).unwrap_or_default()
            );
            assert_eq!(t.agent().as_str(), formatted, "{s}");
            assert_eq!(t.agent(), AgentId::parse(&formatted).unwrap(), "{s}");
            assert_eq!(t.agent().as_spiffe_id().trust_domain_str(), td, "{s}");
            assert_eq!(t.task_id_str(), t.task_id().as_str(), "{s}");
            let owned = t.trust_domain();
            let td: &str = core::borrow::Borrow::borrow(&owned);
            assert_eq!(td, t.as_spiffe_id().trust_domain_str(), "{s}");
        }
    }

    fn rejects<T: fmt::Debug>(r: Result<T>, input: &str) {
        match r {
            Ok(v) => panic!("{input:?} accepted as {v:?}"),
            Err(e) => assert_eq!(e.code(), ErrorCode::BadId, "{input:?}: {e}"),
        }
    }

    #[test]
    fn valid_ids_and_their_kinds() {
        let cases: &[(&str, IdKind)] = &[
            ("spiffe://example.org", IdKind::TrustDomain),
            ("spiffe://a", IdKind::TrustDomain),
            ("spiffe://a-b_c.9", IdKind::TrustDomain),
            ("spiffe://example.org/agent/planner", IdKind::Agent),
            ("spiffe://example.org/agent/Plan-ner_2.x", IdKind::Agent),
            ("spiffe://example.org/agent/planner/task/t1", IdKind::Task),
            ("spiffe://example.org/agent/agent/task/task", IdKind::Task),
            ("spiffe://example.org/agent/.../task/..a", IdKind::Task),
            ("spiffe://example.org/svc/search", IdKind::Service),
            ("spiffe://example.org/svc/agent", IdKind::Service),
            // Anything else is a valid SPIFFE ID of no kind of ours.
            ("spiffe://example.org/agent", IdKind::Other),
            ("spiffe://example.org/agent/a/task", IdKind::Other),
            ("spiffe://example.org/agent/a/task/x/y", IdKind::Other),
            ("spiffe://example.org/agent/a/b", IdKind::Other),
            ("spiffe://example.org/agent/a/tasks/x", IdKind::Other),
            ("spiffe://example.org/agent/a/Task/x", IdKind::Other),
            ("spiffe://example.org/agents/a", IdKind::Other),
            ("spiffe://example.org/Agent/a", IdKind::Other),
            ("spiffe://example.org/AGENT/a/task/x", IdKind::Other),
            ("spiffe://example.org/svc", IdKind::Other),
            ("spiffe://example.org/svc/a/b", IdKind::Other),
            ("spiffe://example.org/svcs/a", IdKind::Other),
            ("spiffe://example.org/task/a", IdKind::Other),
            ("spiffe://example.org/x", IdKind::Other),
        ];
        for (s, kind) in cases {
            let parsed = id(s);
            assert_eq!(parsed.as_str(), *s);
            assert_eq!(parsed.kind(), *kind, "{s}");
            assert_eq!(parsed.to_string(), *s);
            assert_eq!(s.parse::<SpiffeId>().unwrap(), parsed);
        }
    }

    #[test]
    fn invalid_ids_are_rejected() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("spiffe://", "empty trust domain"),
            ("spiffe:///agent/a", "empty trust domain with path"),
            ("example.org", "no scheme"),
            ("//example.org", "no scheme name"),
            ("SPIFFE://example.org", "upper-case scheme"),
            ("Spiffe://example.org/agent/a", "mixed-case scheme"),
            ("spiffe:/example.org", "one slash"),
            ("spiffe:example.org", "no slashes"),
            ("https://example.org/agent/a", "other scheme"),
            (" spiffe://example.org", "leading space"),
            ("spiffe://example.org ", "trailing space in trust domain"),
            ("spiffe://Example.org", "upper-case trust domain"),
            (
                "spiffe://EXAMPLE.ORG/agent/a",
                "upper-case trust domain with path",
            ),
            ("spiffe://exa%6dple.org", "percent-encoding in trust domain"),
            (
                "spiffe://example.org/agent/a%2Fb",
                "percent-encoding in path",
            ),
            ("spiffe://example.org/agent/%61", "percent-encoded letter"),
            ("spiffe://example.org?x=1", "query on trust domain"),
            ("spiffe://example.org/agent/a?x=1", "query"),
            ("spiffe://example.org/agent/a?", "empty query"),
            ("spiffe://example.org#f", "fragment on trust domain"),
            ("spiffe://example.org/agent/a#f", "fragment"),
            ("spiffe://example.org/agent/a#", "empty fragment"),
            ("spiffe://user@example.org/agent/a", "userinfo"),
            ("spiffe://user:pw@example.org", "userinfo with password"),
            ("spiffe://example.org:443", "port"),
            ("spiffe://example.org:443/agent/a", "port with path"),
            ("spiffe://example.org:/agent/a", "empty port"),
            ("spiffe://[::1]/agent/a", "IP literal"),
            ("spiffe://exa mple.org", "space in trust domain"),
            ("spiffe://example.org/agent/a b", "space in segment"),
            ("spiffe://example.org/agent/a\0", "NUL"),
            ("spiffe://exa\0mple.org", "NUL in trust domain"),
            ("spiffe://example.org/agent/a\t", "tab"),
            ("spiffe://example.org/agent/a\n", "newline"),
            ("spiffe://exämple.org", "non-ASCII trust domain"),
            ("spiffe://example.org/agent/plänner", "non-ASCII segment"),
            (
                "spiffe://example.org/agent/\u{212a}",
                "Kelvin sign (non-ASCII K)",
            ),
            ("spiffe://example.org/", "trailing slash on trust domain"),
            ("spiffe://example.org/agent/", "trailing slash"),
            (
                "spiffe://example.org/agent/a/task/t/",
                "trailing slash on task",
            ),
            ("spiffe://example.org//agent/a", "empty first segment"),
            ("spiffe://example.org/agent//a", "empty middle segment"),
            ("spiffe://example.org/./agent/a", "dot segment"),
            ("spiffe://example.org/agent/.", "dot last segment"),
            ("spiffe://example.org/agent/..", "dot-dot segment"),
            ("spiffe://example.org/agent/a/../b", "dot-dot in the middle"),
            ("spiffe://example.org\\agent\\a", "backslash"),
            ("spiffe://example.org/agent/a\\b", "backslash in segment"),
            ("spiffe://example.org/agent/a+b", "plus"),
            ("spiffe://example.org/agent/a~b", "tilde"),
            ("spiffe://example.org/agent/a:b", "colon in segment"),
            ("spiffe://example.org/agent/a;b", "semicolon"),
            ("spiffe://example.org/agent/a*", "asterisk"),
            ("spiffe://example.org/agent/a=b", "equals"),
            ("spiffe://example.org/agent/a,b", "comma"),
            ("spiffe://example.org/agent/a'b", "quote"),
            ("spiffe://example.org/agent/a\"b", "double quote"),
            ("spiffe://spiffe://example.org", "doubled scheme"),
        ];
        for (s, why) in cases {
            match SpiffeId::parse(s) {
                Ok(v) => panic!("{why}: {s:?} accepted as {v:?}"),
                Err(e) => assert_eq!(e.code(), ErrorCode::BadId, "{why}: {e}"),
            }
            assert!(s.parse::<SpiffeId>().is_err(), "{why}");
        }
    }

    #[test]
    fn trust_domains_dot_and_dotdot_are_invalid_but_other_dot_names_are_not() {
        for td in [".", ".."] {
            rejects(TrustDomain::parse(td), td);
            let s = format!("spiffe://{td}");
            rejects(SpiffeId::parse(&s), &s);
            let s = format!("spiffe://{td}/agent/a/task/t");
            rejects(SpiffeId::parse(&s), &s);
        }
        for td in ["...", "-", "_", ".a", "a..b", "a."] {
            assert_eq!(TrustDomain::parse(td).unwrap().as_str(), td);
        }
    }

    #[test]
    fn trust_domain_length_boundary() {
        let td255 = "a".repeat(255);
        let td256 = "a".repeat(256);
        assert_eq!(TrustDomain::parse(&td255).unwrap().as_str(), td255);
        rejects(TrustDomain::parse(&td256), &td256);
        let id = SpiffeId::parse(&format!("spiffe://{td255}/agent/a")).unwrap();
        assert_eq!(id.trust_domain_str(), td255);
        assert_eq!(id.kind(), IdKind::Agent);
        let s = format!("spiffe://{td256}/agent/a");
        rejects(SpiffeId::parse(&s), &s);
        let s = format!("spiffe://{td256}");
        rejects(SpiffeId::parse(&s), &s);
    }

    #[test]
    fn id_length_boundary() {
        // "spiffe://td/" is 12 bytes.
        let id2048 = format!("spiffe://td/{}", "a".repeat(2048 - 12));
        let id2049 = format!("spiffe://td/{}", "a".repeat(2049 - 12));
        assert_eq!(id2048.len(), 2048);
        assert_eq!(id2049.len(), 2049);
        assert_eq!(SpiffeId::parse(&id2048).unwrap().as_str(), id2048);
        rejects(SpiffeId::parse(&id2049), &id2049);

        // The same boundary reached through a task identity and its constructor.
        let prefix = "spiffe://td/agent/a/task/";
        let task2048 = format!("{prefix}{}", "t".repeat(2048 - prefix.len()));
        let task2049 = format!("{prefix}{}", "t".repeat(2049 - prefix.len()));
        assert!(TaskIdentity::parse(&task2048).is_ok());
        rejects(TaskIdentity::parse(&task2049), &task2049);
        let agent = AgentId::parse("spiffe://td/agent/a").unwrap();
        let long = TaskId::parse(&"t".repeat(2049 - prefix.len())).unwrap();
        rejects(
            TaskIdentity::new(&agent, &long),
            "constructed 2049-byte task identity",
        );
        let fits = TaskId::parse(&"t".repeat(2048 - prefix.len())).unwrap();
        assert_eq!(TaskIdentity::new(&agent, &fits).unwrap().as_str(), task2048);
    }

    #[test]
    fn trust_domain_parse_table() {
        let good = [
            "example.org",
            "a",
            "0",
            "a-b",
            "a_b",
            "a.b",
            "...",
            "-",
            "x9.y-z_w",
        ];
        for s in good {
            let td = TrustDomain::parse(s).unwrap();
            assert_eq!(td.as_str(), s);
            assert_eq!(td.id().as_str(), format!("spiffe://{s}"));
            assert_eq!(td.id().kind(), IdKind::TrustDomain);
            assert_eq!(td.id().trust_domain(), td);
        }
        let bad = [
            "",
            "Example.org",
            "EXAMPLE",
            "spiffe://example.org",
            "example.org/",
            "example.org:443",
            "user@example.org",
            "exa mple",
            "exa%2Emple",
            "a?b",
            "a#b",
            "a\0",
            "ä",
            "a+b",
        ];
        for s in bad {
            rejects(TrustDomain::parse(s), s);
        }
    }

    #[test]
    fn segments_and_trust_domain() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("spiffe://example.org", "example.org", &[]),
            (
                "spiffe://example.org/agent/a",
                "example.org",
                &["agent", "a"],
            ),
            (
                "spiffe://td/agent/a/task/t",
                "td",
                &["agent", "a", "task", "t"],
            ),
            ("spiffe://td/x", "td", &["x"]),
        ];
        for (s, td, segs) in cases {
            let id = id(s);
            assert_eq!(id.trust_domain_str(), *td);
            assert_eq!(id.trust_domain().as_str(), *td);
            assert_eq!(id.segments().collect::<Vec<_>>(), *segs, "{s}");
        }
    }

    #[test]
    fn covers_compares_parsed_ids() {
        let cases: &[(&str, &str, bool)] = &[
            // Equality.
            ("spiffe://td", "spiffe://td", true),
            ("spiffe://td/agent/a", "spiffe://td/agent/a", true),
            (
                "spiffe://td/agent/a/task/x",
                "spiffe://td/agent/a/task/x",
                true,
            ),
            ("spiffe://td/svc/s", "spiffe://td/svc/s", true),
            ("spiffe://td/other/x", "spiffe://td/other/x", true),
            // A trust-domain ID covers everything in its domain, and nothing outside it.
            ("spiffe://td", "spiffe://td/agent/a", true),
            ("spiffe://td", "spiffe://td/agent/a/task/x", true),
            ("spiffe://td", "spiffe://td/svc/s", true),
            ("spiffe://td", "spiffe://td/other/x", true),
            (
                "spiffe://example.org",
                "spiffe://example.org.evil/agent/a",
                false,
            ),
            ("spiffe://example.org", "spiffe://example.org.evil", false),
            (
                "spiffe://example.org",
                "spiffe://evil.example.org/agent/a",
                false,
            ),
            ("spiffe://example.org", "spiffe://example.or/agent/a", false),
            ("spiffe://td", "spiffe://other", false),
            // An agent ID covers its own task identities only.
            ("spiffe://td/agent/a", "spiffe://td/agent/a/task/x", true),
            ("spiffe://td/agent/a", "spiffe://td/agent/ab/task/x", false),
            ("spiffe://td/agent/ab", "spiffe://td/agent/a/task/x", false),
            ("spiffe://td/agent/A", "spiffe://td/agent/a/task/x", false),
            ("spiffe://td/agent/a", "spiffe://td/agent/b/task/x", false),
            ("spiffe://td/agent/a", "spiffe://td2/agent/a/task/x", false),
            ("spiffe://td/agent/a", "spiffe://t/agent/a/task/x", false),
            ("spiffe://td/agent/a", "spiffe://td/agent/a/task/x/y", false),
            ("spiffe://td/agent/a", "spiffe://td/agent/a/tasks/x", false),
            ("spiffe://td/agent/a", "spiffe://td/agent/a/b", false),
            ("spiffe://td/agent/a", "spiffe://td/agent/ab", false),
            ("spiffe://td/agent/a", "spiffe://td/agent/b", false),
            ("spiffe://td/agent/a", "spiffe://td/svc/a", false),
            ("spiffe://td/agent/a", "spiffe://td", false),
            // Nothing else covers more than itself.
            ("spiffe://td/agent/a/task/x", "spiffe://td/agent/a", false),
            (
                "spiffe://td/agent/a/task/x",
                "spiffe://td/agent/a/task/xy",
                false,
            ),
            (
                "spiffe://td/agent/a/task/x",
                "spiffe://td/agent/a/task/y",
                false,
            ),
            ("spiffe://td/agent/a/task/x", "spiffe://td", false),
            ("spiffe://td/svc/s", "spiffe://td/svc/s2", false),
            ("spiffe://td/svc/s", "spiffe://td/svc/s/task/x", false),
            ("spiffe://td/svc/s", "spiffe://td/agent/s/task/x", false),
            ("spiffe://td/other/a", "spiffe://td/other/a/b", false),
            (
                "spiffe://td/agent/a/b",
                "spiffe://td/agent/a/b/task/x",
                false,
            ),
            (
                "spiffe://td/agent/a/task",
                "spiffe://td/agent/a/task/x",
                false,
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(id(a).covers(&id(b)), *want, "{a} covers {b}");
        }
    }

    #[test]
    fn typed_parsers_require_their_kind() {
        let all = [
            "spiffe://td",
            "spiffe://td/agent/a",
            "spiffe://td/agent/a/task/t",
            "spiffe://td/svc/s",
            "spiffe://td/agent",
            "spiffe://td/agent/a/task",
            "spiffe://td/agent/a/task/t/u",
            "spiffe://td/agents/a",
            "spiffe://td/agents/a/task/t",
            "spiffe://td/agent/a/tasks/t",
            "spiffe://td/services/s",
            "spiffe://td/svc/s/t",
            "spiffe://td/Agent/a",
            "spiffe://td/agent/a/",
            "SPIFFE://td/agent/a/task/t",
            "spiffe://td/agent/a/task/t?x",
        ];
        for s in all {
            let kind = SpiffeId::parse(s).map(|i| i.kind()).ok();
            let check = |ok: bool, want: IdKind, name: &str| {
                assert_eq!(ok, kind == Some(want), "{name}::parse({s:?})");
            };
            check(AgentId::parse(s).is_ok(), IdKind::Agent, "AgentId");
            check(TaskIdentity::parse(s).is_ok(), IdKind::Task, "TaskIdentity");
            check(ServiceId::parse(s).is_ok(), IdKind::Service, "ServiceId");
            let peer = PeerId::parse(s);
            assert_eq!(
                peer.is_ok(),
                matches!(kind, Some(IdKind::Task | IdKind::Service)),
                "PeerId::parse({s:?})"
            );
            for r in [
                AgentId::parse(s).err(),
                TaskIdentity::parse(s).err(),
                ServiceId::parse(s).err(),
                peer.err(),
            ]
            .into_iter()
            .flatten()
            {
                assert_eq!(r.code(), ErrorCode::BadId);
            }
        }
    }

    #[test]
    fn agent_ids() {
        let td = TrustDomain::parse("example.org").unwrap();
        let a = AgentId::new(&td, "Planner-1").unwrap();
        assert_eq!(a.as_str(), "spiffe://example.org/agent/Planner-1");
        assert_eq!(a.name(), "Planner-1");
        assert_eq!(a.trust_domain(), td);
        assert_eq!(a.as_spiffe_id().kind(), IdKind::Agent);
        assert_eq!(AgentId::parse(a.as_str()).unwrap(), a);
        for bad in [
            "", ".", "..", "a/b", "a/task/t", "a b", "a%20", "a?", "ä", "a\0",
        ] {
            rejects(AgentId::new(&td, bad), bad);
        }
    }

    #[test]
    fn service_ids() {
        let td = TrustDomain::parse("example.org").unwrap();
        let s = ServiceId::new(&td, "search").unwrap();
        assert_eq!(s.as_str(), "spiffe://example.org/svc/search");
        assert_eq!(s.name(), "search");
        assert_eq!(s.trust_domain(), td);
        assert_eq!(s.as_spiffe_id().kind(), IdKind::Service);
        for bad in ["", ".", "..", "a/b", "a b", "a#", "ä"] {
            rejects(ServiceId::new(&td, bad), bad);
        }
    }

    #[test]
    fn task_ids_and_identities() {
        let good = ["t1", "abc", "A.b-c_d", "...", "..a", "x".repeat(100).leak()];
        for s in good {
            assert_eq!(TaskId::parse(s).unwrap().as_str(), s);
        }
        let too_long = "t".repeat(2049);
        let bad = [
            "", ".", "..", "a/b", "a b", "a%41", "a?", "a#", "a:b", "ä", "a\0", &too_long,
        ];
        for s in bad {
            rejects(TaskId::parse(s), s);
        }

        let agent = AgentId::parse("spiffe://example.org/agent/planner").unwrap();
        let task = TaskId::parse("t1").unwrap();
        let ti = TaskIdentity::new(&agent, &task).unwrap();
        assert_eq!(ti.as_str(), "spiffe://example.org/agent/planner/task/t1");
        assert_eq!(ti.agent(), agent);
        assert_eq!(ti.task_id(), task);
        assert_eq!(ti.trust_domain().as_str(), "example.org");
        assert_eq!(ti.as_spiffe_id().kind(), IdKind::Task);
        assert!(agent.as_spiffe_id().covers(ti.as_spiffe_id()));
        // agent() is a valid, parseable agent ID.
        assert_eq!(AgentId::parse(ti.agent().as_str()).unwrap(), agent);
        assert_eq!(ti.agent().as_spiffe_id().trust_domain_str(), "example.org");
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"f", "my"),
            (b"fo", "mzxq"),
            (b"foo", "mzxw6"),
            (b"foob", "mzxw6yq"),
            (b"fooba", "mzxw6ytb"),
            (b"foobar", "mzxw6ytboi"),
            (&[0u8; 16], "aaaaaaaaaaaaaaaaaaaaaaaaaa"),
            (&[0xffu8; 16], "77777777777777777777777774"),
            (
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
                "aaaqeayeaudaocajbifqydiob4",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(base32_lower(input), *want, "{input:?}");
        }
    }

    #[test]
    fn generated_task_ids() {
        let a = TaskId::generate().unwrap();
        let b = TaskId::generate().unwrap();
        assert_ne!(a, b);
        for t in [&a, &b] {
            assert_eq!(t.as_str().len(), 26);
            assert!(t
                .as_str()
                .bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c)));
            assert_eq!(TaskId::parse(t.as_str()).unwrap(), *t);
        }
        let agent = AgentId::parse("spiffe://td/agent/a").unwrap();
        let ti = TaskIdentity::new(&agent, &a).unwrap();
        assert_eq!(ti.task_id(), a);
    }

    #[test]
    fn peer_ids() {
        let t = PeerId::parse("spiffe://td/agent/a/task/t").unwrap();
        assert!(matches!(t, PeerId::Task(_)));
        assert_eq!(t.trust_domain().as_str(), "td");
        assert_eq!(t.as_str(), "spiffe://td/agent/a/task/t");
        let s = PeerId::parse("spiffe://td/svc/s").unwrap();
        assert!(matches!(s, PeerId::Service(_)));
        assert_eq!(s.as_spiffe_id().kind(), IdKind::Service);
        assert_eq!(SpiffeId::from(s.clone()), id("spiffe://td/svc/s"));
        for bad in [
            "spiffe://td",
            "spiffe://td/agent/a",
            "spiffe://td/x/y",
            "spiffe://TD/svc/s",
        ] {
            rejects(PeerId::parse(bad), bad);
        }
    }

    #[test]
    fn serde_goes_through_the_parser() {
        fn round_trip<T>(s: &str)
        where
            T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug + fmt::Display,
        {
            let json = serde_json::to_string(s).unwrap();
            let v: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(v.to_string(), s);
            assert_eq!(serde_json::to_string(&v).unwrap(), json);
        }
        fn refuses<T: for<'de> Deserialize<'de> + fmt::Debug>(json: &str) {
            let r = serde_json::from_str::<T>(json);
            assert!(r.is_err(), "{json} accepted as {r:?}");
        }
        round_trip::<TrustDomain>("example.org");
        round_trip::<SpiffeId>("spiffe://example.org/x");
        round_trip::<AgentId>("spiffe://example.org/agent/a");
        round_trip::<TaskId>("t1");
        round_trip::<TaskIdentity>("spiffe://example.org/agent/a/task/t1");
        round_trip::<ServiceId>("spiffe://example.org/svc/s");
        round_trip::<PeerId>("spiffe://example.org/svc/s");
        round_trip::<PeerId>("spiffe://example.org/agent/a/task/t1");

        refuses::<TrustDomain>(r#""Example.org""#);
        refuses::<SpiffeId>(r#""SPIFFE://example.org""#);
        refuses::<SpiffeId>(r#""spiffe://example.org/""#);
        refuses::<SpiffeId>("1");
        refuses::<SpiffeId>("null");
        refuses::<SpiffeId>(r#"["spiffe://td"]"#);
        refuses::<SpiffeId>(r#"{"s":"spiffe://td","td_len":2}"#);
        refuses::<AgentId>(r#""spiffe://td/agent/a/task/t""#);
        refuses::<TaskId>(r#""..""#);
        refuses::<TaskIdentity>(r#""spiffe://td/agent/a""#);
        refuses::<ServiceId>(r#""spiffe://td/agent/a""#);
        refuses::<PeerId>(r#""spiffe://td/agent/a""#);
    }

    #[test]
    fn debug_and_conversions() {
        let a = AgentId::parse("spiffe://td/agent/a").unwrap();
        assert_eq!(format!("{a:?}"), r#"AgentId("spiffe://td/agent/a")"#);
        assert_eq!(String::from(a.clone()), "spiffe://td/agent/a");
        assert_eq!(SpiffeId::from(a.clone()), id("spiffe://td/agent/a"));
        assert_eq!(AgentId::try_from("spiffe://td/agent/a").unwrap(), a);
        assert!(AgentId::try_from(String::from("spiffe://td")).is_err());
        assert!("spiffe://td/agent/a".parse::<AgentId>().is_ok());
    }
}
