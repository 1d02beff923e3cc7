//! Linkage and attenuation: spec/PROTOCOL.md section 10, phase 4, with the covering rules of
//! sections 7.1 to 7.4.
//!
//! [`attenuate`] is the one home of rules 4.1 to 4.11: the verifier runs it for every link of a
//! chain it verifies, and [`crate::LinkBuilder::sign`] runs it on the link it is about to sign, so
//! a holder can never sign a link that a verifier would refuse in phase 4, and learns it with the
//! same code.

use std::collections::BTreeSet;

use crate::audience::IdSet;
use crate::error::{Error, ErrorCode, Result};
use crate::id::{TaskId, TaskIdentity};
use crate::limits::Limits;
use crate::scope::Scope;
use crate::token::claims::{GrantClaims, LinkClaims};

/// The effective values after a token (spec/PROTOCOL.md section 10, phase 4 "running state"):
/// what the next link is checked against.
#[derive(Clone, Debug)]
pub(crate) struct Effective {
    /// The grant's task.
    pub task: TaskId,
    /// The `sub` of that token: the current holder.
    pub holder: TaskIdentity,
    /// That token's `max_depth`.
    pub max_depth: u8,
    /// The effective scope (section 7.1): that token's `scope`.
    pub scope: Scope,
    /// The effective audience (section 7.2).
    pub aud: IdSet,
    /// The effective limits (section 7.3): the name-wise minimum so far.
    pub limits: Limits,
    /// The effective delegation targets (section 7.4).
    pub may_delegate_to: IdSet,
    /// That token's `exp`.
    pub exp: u64,
}

/// The limit names a verifier enforces (rules 4.0.3 and 4.8). A link builder does not know the
/// sets of the verifiers its chain will meet, so it checks everything else and skips these.
#[derive(Clone, Copy, Debug)]
pub(crate) enum EnforcedLimits<'a> {
    /// A verifier's declared names.
    Names(&'a BTreeSet<String>),
    /// Unknown (a builder).
    Unknown,
}

fn fail(code: ErrorCode, detail: impl Into<String>) -> Error {
    Error::new(code, detail)
}

/// Rules 4.0.3 and 4.8 (first half): every limit name is one the verifier enforces, else
/// `unsupported_limit`.
fn limit_names_enforced(limits: Option<&Limits>, enforced: EnforcedLimits<'_>) -> Result<()> {
    let (Some(limits), EnforcedLimits::Names(names)) = (limits, enforced) else {
        return Ok(());
    };
    match limits.names().find(|n| !names.contains(*n)) {
        Some(name) => Err(fail(
            ErrorCode::UnsupportedLimit,
            format!("limit `{name}` is not enforced by this verifier"),
        )),
        None => Ok(()),
    }
}

/// Rules 4.0.1 to 4.0.3 (spec/PROTOCOL.md section 10, phase 4, the grant), in order. The
/// verifier runs them through [`Effective::from_grant`]; [`crate::GrantBuilder::sign`] runs them
/// before signing.
pub(crate) fn grant_rules(grant: &GrantClaims, enforced: EnforcedLimits<'_>) -> Result<()> {
    // Rule 4.0.1: the holder is in the authority's trust domain.
    if grant.sub.as_spiffe_id().trust_domain_str() != grant.iss.as_str() {
        return Err(fail(
            ErrorCode::ForeignHolder,
            "grant holder outside the authority's trust domain",
        ));
    }
    // Rule 4.0.2: the holder's task segment is the grant's task.
    if grant.sub.task_id_str() != grant.task.as_str() {
        return Err(fail(
            ErrorCode::TaskMismatch,
            "grant `sub` is not of the grant's task",
        ));
    }
    // Rule 4.0.3: every limit name is enforced here.
    limit_names_enforced(grant.limits.as_ref(), enforced)
}

/// The effective audience of a grant (section 7.2): its `aud`, or `[iss]` without one.
pub(crate) fn grant_audience(grant: &GrantClaims) -> Result<IdSet> {
    match &grant.aud {
        Some(a) => Ok(a.clone()),
        None => IdSet::single(grant.iss.id()),
    }
}

/// The effective audience after a link (section 7.2): its `aud` if present, else `before`.
pub(crate) fn link_audience(before: IdSet, link: &LinkClaims) -> IdSet {
    link.aud.clone().unwrap_or(before)
}

impl Effective {
    /// [`grant_rules`], then the initial effective values: scope, audience (`aud` or `[iss]`),
    /// limits (or none), delegation targets (`may_delegate_to` or `[iss]`).
    pub(crate) fn from_grant(grant: &GrantClaims, enforced: EnforcedLimits<'_>) -> Result<Self> {
        grant_rules(grant, enforced)?;
        let authority = || IdSet::single(grant.iss.id());
        Ok(Self {
            task: grant.task.clone(),
            holder: grant.sub.clone(),
            max_depth: grant.max_depth,
            scope: grant.scope.clone(),
            aud: grant_audience(grant)?,
            limits: grant.limits.clone().unwrap_or_default(),
            may_delegate_to: match &grant.may_delegate_to {
                Some(d) => d.clone(),
                None => authority()?,
            },
            exp: grant.exp,
        })
    }
}

/// Rules 4.1 to 4.11 (spec/PROTOCOL.md section 10, phase 4) for one link against the effective
/// values before it, in the spec's order; then the effective values after it. `prev_hash` is
/// the SHA-256 of the previous token's compact bytes (what `prev` must be).
///
/// The one home of attenuation: the verifier's phase 4 and [`crate::LinkBuilder::sign`] both
/// call it.
pub(crate) fn attenuate(
    eff: Effective,
    link: &LinkClaims,
    prev_hash: &[u8; 32],
    enforced: EnforcedLimits<'_>,
) -> Result<Effective> {
    // Rule 4.1: `prev` is the hash of the previous token.
    if link.prev != *prev_hash {
        return Err(fail(
            ErrorCode::PrevMismatch,
            "`prev` is not the hash of the previous token",
        ));
    }
    // Rule 4.2: `iss` is the previous `sub`.
    if link.iss != eff.holder {
        return Err(fail(
            ErrorCode::BrokenLink,
            "link `iss` is not the previous `sub`",
        ));
    }
    // Rule 4.3: the grant's task, in the claim and in `sub`.
    if link.task != eff.task || link.sub.task_id_str() != eff.task.as_str() {
        return Err(fail(
            ErrorCode::TaskMismatch,
            "link is not of the grant's task",
        ));
    }
    // Rule 4.4: no link to oneself (version 1).
    if link.sub == eff.holder {
        return Err(fail(
            ErrorCode::SelfDelegation,
            "a link to oneself is not allowed in version 1",
        ));
    }
    // Rule 4.5: the previous token allows a link, and `max_depth` decreases.
    if eff.max_depth == 0 || link.max_depth > eff.max_depth - 1 {
        return Err(fail(
            ErrorCode::DepthExceeded,
            "`max_depth` must decrease and the previous must allow a link",
        ));
    }
    // Rule 4.6: the scope is covered (section 7.1).
    if !eff.scope.covers(&link.scope) {
        return Err(fail(
            ErrorCode::ScopeEscalation,
            "link scope not covered by the previous scope",
        ));
    }
    // Rule 4.7: `aud`, if present, is covered (section 7.2).
    if let Some(a) = &link.aud {
        if !eff.aud.covers(a) {
            return Err(fail(
                ErrorCode::AudienceEscalation,
                "link `aud` not covered by the effective audience",
            ));
        }
    }
    // Rule 4.8: `limits`, if present: enforced names, then no ceiling raised (section 7.3).
    if let Some(l) = &link.limits {
        limit_names_enforced(Some(l), enforced)?;
        if let Err(name) = l.narrows(&eff.limits) {
            return Err(fail(
                ErrorCode::LimitEscalation,
                format!("limit `{name}` raised above its ceiling"),
            ));
        }
    }
    // Rule 4.9: `may_delegate_to`, if present, is covered (section 7.4).
    if let Some(d) = &link.may_delegate_to {
        if !eff.may_delegate_to.covers(d) {
            return Err(fail(
                ErrorCode::DelegationEscalation,
                "`may_delegate_to` widened",
            ));
        }
    }
    // Rule 4.10: the delegatee is covered by the targets before this link (section 7.4).
    if !eff.may_delegate_to.covers_id(link.sub.as_spiffe_id()) {
        return Err(fail(
            ErrorCode::DelegateeDenied,
            "delegatee not allowed by `may_delegate_to`",
        ));
    }
    // Rule 4.11: `exp` never grows.
    if link.exp > eff.exp {
        return Err(fail(
            ErrorCode::ExpiryExtended,
            "link `exp` later than the previous `exp`",
        ));
    }
    // The effective values after this link.
    Ok(Effective {
        task: eff.task,
        holder: link.sub.clone(),
        max_depth: link.max_depth,
        scope: link.scope.clone(),
        aud: link_audience(eff.aud, link),
        limits: match &link.limits {
            Some(l) => eff.limits.merge_min(l),
            None => eff.limits,
        },
        may_delegate_to: link.may_delegate_to.clone().unwrap_or(eff.may_delegate_to),
        exp: link.exp,
    })
}
