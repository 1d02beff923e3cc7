//! Audiences and delegation targets: the ID sets of `aud` and `may_delegate_to` (spec/PROTOCOL.md
//! sections 7.2 and 7.4), which a delegation can only narrow.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};
use crate::id::{IdKind, SpiffeId};

/// Maximum number of entries in an `aud` or `may_delegate_to` set.
pub const MAX_ID_SET_ENTRIES: usize = 16;

fn bad_claim(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadClaim, detail)
}

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

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn ids(list: &[&str]) -> IdSet {
        IdSet::new(list.iter().map(|s| id(s)).collect()).unwrap()
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
}
