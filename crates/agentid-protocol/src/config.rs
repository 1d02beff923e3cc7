//! Verifier configuration: bundles (authentication), authority policy (authorization of
//! grants), revocation lists, skew and enforced limits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::bundle::{BundleSet, TrustBundle};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{SpiffeId, TrustDomain};
use crate::revocation::RevocationList;
use crate::scope::Scope;

/// Default clock skew, seconds.
pub const DEFAULT_SKEW: u64 = 60;
/// Maximum clock skew a verifier may be configured with, seconds.
pub const MAX_SKEW: u64 = 120;

/// Which trust domains' grants this verifier accepts, and for which scope patterns.
///
/// Holding a domain's bundle authenticates its identities; it never lets that domain's authority
/// grant anything here unless this policy says so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthorityPolicy {
    /// `None`: any scope. Ordered: a lookup (on every authorization) compares a few names
    /// instead of hashing one with SipHash.
    domains: BTreeMap<TrustDomain, Option<Scope>>,
}

impl AuthorityPolicy {
    /// A policy accepting no authority at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// The default: only `own` may grant, any scope.
    pub fn own_domain(own: &TrustDomain) -> Self {
        Self::none().allow_any(own.clone())
    }

    /// Accepts grants of `domain`'s authority for scopes covered by `patterns`.
    #[must_use]
    pub fn allow(mut self, domain: TrustDomain, patterns: Scope) -> Self {
        self.domains.insert(domain, Some(patterns));
        self
    }

    /// Accepts grants of `domain`'s authority for any scope.
    #[must_use]
    pub fn allow_any(mut self, domain: TrustDomain) -> Self {
        self.domains.insert(domain, None);
        self
    }

    /// Whether `domain`'s grants are accepted at all.
    pub fn accepts(&self, domain: &TrustDomain) -> bool {
        self.domains.contains_key(domain)
    }

    /// Whether `domain` may grant `scope` here.
    pub fn permits(&self, domain: &TrustDomain, scope: &Scope) -> bool {
        match self.domains.get(domain) {
            Some(None) => true,
            Some(Some(patterns)) => patterns.covers(scope),
            None => false,
        }
    }
}

/// Everything a chain verifier needs besides the chain, the peer and the time.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    pub(crate) own_id: SpiffeId,
    pub(crate) bundles: BundleSet,
    pub(crate) authority: AuthorityPolicy,
    pub(crate) revocations: HashMap<TrustDomain, Arc<RevocationList>>,
    pub(crate) skew: u64,
    pub(crate) enforced_limits: BTreeSet<String>,
    pub(crate) danger_revocation_optional: bool,
}

impl VerifierConfig {
    /// A configuration for the verifier `own_id` trusting `bundles`. Defaults: the verifier's own
    /// trust domain is the only accepted authority (any scope), skew 60 s, no enforced limits,
    /// revocation lists required.
    ///
    /// The bundle set is told the verifier's own trust domain (spec/PROTOCOL.md section 8, "Keys
    /// across bundles"): its bundle wins every `kid` conflict, and a later bundle of another
    /// domain that repeats one of its keys is refused.
    pub fn new(own_id: SpiffeId, mut bundles: BundleSet) -> Self {
        bundles.set_own_trust_domain(own_id.trust_domain());
        let authority = AuthorityPolicy::own_domain(&own_id.trust_domain());
        Self {
            own_id,
            bundles,
            authority,
            revocations: HashMap::new(),
            skew: DEFAULT_SKEW,
            enforced_limits: BTreeSet::new(),
            danger_revocation_optional: false,
        }
    }

    /// Replaces the authority policy.
    #[must_use]
    pub fn authority_policy(mut self, policy: AuthorityPolicy) -> Self {
        self.authority = policy;
        self
    }

    /// Sets the clock skew (at most [`MAX_SKEW`]).
    pub fn skew(mut self, seconds: u64) -> Result<Self> {
        if seconds > MAX_SKEW {
            return Err(Error::new(
                ErrorCode::BadConfig,
                "skew must be at most 120 seconds",
            ));
        }
        self.skew = seconds;
        Ok(self)
    }

    /// Declares the limit names this verifier's application enforces; a chain carrying any
    /// other name fails `unsupported_limit`.
    #[must_use]
    pub fn enforce_limits<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.enforced_limits = names.into_iter().map(Into::into).collect();
        self
    }

    /// DANGER: accepts chains and peers whose trust domains have no revocation list, or only a
    /// stale one. Without this, a missing or stale list fails closed. An invalid list is still
    /// an error.
    #[must_use]
    pub fn danger_accept_missing_or_stale_revocations(mut self) -> Self {
        self.danger_revocation_optional = true;
        self
    }

    /// Holds the revocation lists `other` holds, in place of its own: lists verified and applied
    /// there (R1 to R8 of spec/PROTOCOL.md section 14.1, each still orphaned or not as there), to
    /// check a chain under the same bundles with another verifier's identity or settings.
    #[must_use]
    pub fn revocation_lists_of(mut self, other: &VerifierConfig) -> Self {
        self.revocations = other.revocations.clone();
        self
    }

    /// Verifies and applies a revocation list (spec/PROTOCOL.md section 14.1): R1 to R7 in
    /// [`RevocationList::verify`], then R8: an older `seq` than the one held is refused
    /// (`sequence_rollback`), unless the held list is orphaned (its signing key left the
    /// bundles, [`VerifierConfig::insert_bundle_at`]).
    pub fn apply_revocation_list(&mut self, compact: &str) -> Result<Arc<RevocationList>> {
        self.apply_list(compact, None)
    }

    /// [`VerifierConfig::apply_revocation_list`] for a list that must be `td`'s (a feed of
    /// `td`'s CA): a list of another trust domain, however genuine, is refused
    /// (`issuer_mismatch`) and nothing is applied.
    pub fn apply_revocation_list_of(
        &mut self,
        compact: &str,
        td: &TrustDomain,
    ) -> Result<Arc<RevocationList>> {
        self.apply_list(compact, Some(td))
    }

    fn apply_list(
        &mut self,
        compact: &str,
        td: Option<&TrustDomain>,
    ) -> Result<Arc<RevocationList>> {
        let list = RevocationList::verify(compact, &self.bundles)?;
        if let Some(td) = td.filter(|td| list.issuer() != *td) {
            return Err(Error::new(
                ErrorCode::IssuerMismatch,
                format!(
                    "a revocation list of {}, where one of {td} was expected",
                    list.issuer()
                ),
            ));
        }
        if let Some(old) = self
            .revocations
            .get(list.issuer())
            .filter(|old| !old.is_orphaned())
        {
            if list.seq() < old.seq() {
                return Err(Error::new(
                    ErrorCode::SequenceRollback,
                    format!(
                        "revocation list seq {} is older than the held {}",
                        list.seq(),
                        old.seq()
                    ),
                ));
            }
        }
        let list = Arc::new(list);
        self.revocations
            .insert(list.issuer().clone(), Arc::clone(&list));
        Ok(list)
    }

    /// Adds or replaces a trust bundle (a lower sequence is refused):
    /// [`VerifierConfig::insert_bundle_at`] at time 0, so that a held list whose signing key
    /// the bundle change takes away is stale at once.
    pub fn insert_bundle(&mut self, bundle: TrustBundle) -> Result<()> {
        self.insert_bundle_at(bundle, 0)
    }

    /// Adds or replaces a trust bundle at `now` (a lower sequence is refused). A held revocation
    /// list whose signing key the bundles no longer hold as a revocation key of its domain is
    /// orphaned (spec/PROTOCOL.md 14.1, "Held lists and bundle changes"): the key was rotated
    /// out, perhaps after a compromise, so the list is due again at `now` (stale from
    /// `now + skew`, however late its `next_update`) and a list of any `seq` signed by a key of
    /// the bundle replaces it (however high its own `seq`).
    pub fn insert_bundle_at(&mut self, bundle: TrustBundle, now: u64) -> Result<()> {
        self.bundles.insert(bundle)?;
        let bundles = &self.bundles;
        for list in self.revocations.values_mut() {
            if !list.is_orphaned() && !list.still_anchored(bundles) {
                *list = Arc::new(list.orphaned(now));
            }
        }
        Ok(())
    }

    /// The verifier's own identity.
    pub fn own_id(&self) -> &SpiffeId {
        &self.own_id
    }

    /// The trust bundles.
    pub fn bundles(&self) -> &BundleSet {
        &self.bundles
    }

    /// The configured skew.
    pub fn skew_seconds(&self) -> u64 {
        self.skew
    }

    /// The revocation list held for `td`.
    pub fn revocation_list<Q>(&self, td: &Q) -> Option<&Arc<RevocationList>>
    where
        TrustDomain: core::borrow::Borrow<Q>,
        Q: core::hash::Hash + Eq + ?Sized,
    {
        self.revocations.get(td)
    }

    /// Whether missing or stale revocation lists are tolerated (a `danger_` setting).
    pub fn revocation_optional(&self) -> bool {
        self.danger_revocation_optional
    }
}
