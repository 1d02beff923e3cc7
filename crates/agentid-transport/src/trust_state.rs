//! The shared verification state of a client or server: the protocol's chain [`Verifier`]
//! (bundles, authority policy, revocation lists, enforced limits), the X.509 anchors derived
//! from the bundles, a change signal that live sessions watch on bundle changes, and the index of
//! live sessions by revocation target, so that a revocation list applied here ends the sessions it
//! covers at once and re-checks no other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agentid_protocol::{
    BundleSet, SpiffeId, TokenCache, TrustBundle, TrustDomain, VerifiedChain, Verifier,
    VerifierConfig,
};
use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::session_index::{Registration, SessionIndex};
use crate::svid::TrustStore;

/// Shared, live-updatable verification state. Cheap to read; updates are serialized.
#[derive(Debug)]
pub struct PeerVerification {
    verifier: ArcSwap<Verifier>,
    trust: Arc<ArcSwap<TrustStore>>,
    changes: watch::Sender<u64>,
    /// Bumped by every update, after it is visible.
    epoch: AtomicU64,
    /// Bumped by every update that re-checks every session (bundles), after it is visible:
    /// per-request checks compare it (one load), besides their own session's signal.
    recheck_all: AtomicU64,
    /// Live sessions by revocation target: a list signals only those it newly covers.
    index: Arc<SessionIndex>,
    write: Mutex<()>,
}

fn trust_store_from(bundles: &BundleSet) -> Result<TrustStore> {
    let mut store = TrustStore::new();
    for bundle in bundles.iter() {
        for authority in bundle.x509_authorities() {
            store.add_authority(bundle.trust_domain(), &authority.der)?;
        }
    }
    Ok(store)
}

impl PeerVerification {
    /// State for `config`: the X.509 anchors come from the `x509-svid` entries of its bundles,
    /// one set per trust domain.
    pub fn new(config: VerifierConfig) -> Result<Arc<Self>> {
        Self::from_verifier(Verifier::new(config)?)
    }

    /// As [`PeerVerification::new`], with a cache of verified tokens shared by every handshake
    /// (see [`TokenCache`]): a chain presented again on a new connection skips the signature
    /// checks and claim decoding of the tokens already verified; time, revocation, possession,
    /// audience and scope are still evaluated on every use.
    pub fn with_token_cache(config: VerifierConfig, cache: Arc<TokenCache>) -> Result<Arc<Self>> {
        Self::from_verifier(Verifier::new(config)?.with_cache(cache))
    }

    fn from_verifier(verifier: Verifier) -> Result<Arc<Self>> {
        let trust = trust_store_from(verifier.config().bundles())?;
        let (changes, _) = watch::channel(0);
        Ok(Arc::new(Self {
            verifier: ArcSwap::from_pointee(verifier),
            trust: Arc::new(ArcSwap::from_pointee(trust)),
            changes,
            epoch: AtomicU64::new(0),
            recheck_all: AtomicU64::new(0),
            index: Arc::new(SessionIndex::default()),
            write: Mutex::new(()),
        }))
    }

    /// The current chain verifier.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier.load_full()
    }

    /// The current X.509 anchors.
    pub fn trust_store(&self) -> Arc<TrustStore> {
        self.trust.load_full()
    }

    pub(crate) fn trust_handle(&self) -> Arc<ArcSwap<TrustStore>> {
        self.trust.clone()
    }

    /// The number of updates applied so far (one atomic load): a per-request check that finds it
    /// unchanged since its last full re-check needs no other work.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Signals updates that every live session re-checks (bundle changes).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The count of updates that re-check every live session (one atomic load).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn recheck_epoch(&self) -> u64 {
        self.recheck_all.load(Ordering::Acquire)
    }

    /// The number of revocation lists applied so far: read it before verifying a peer, and
    /// give it to [`PeerVerification::register`] after.
    pub(crate) fn lists_applied(&self) -> u64 {
        self.index.lists_applied()
    }

    /// Indexes a live session under its revocation `targets`; `lists_seen` is
    /// [`PeerVerification::lists_applied`] as read before its verification.
    pub(crate) fn register(
        &self,
        targets: Option<Vec<std::sync::Arc<agentid_protocol::RevocationTarget>>>,
        lists_seen: u64,
    ) -> Registration {
        self.index.register(targets, lists_seen)
    }

    /// How many live sessions the revocation lists applied so far signalled to re-check (each
    /// list signals only the sessions under a target it newly revokes).
    pub fn sessions_signalled(&self) -> u64 {
        self.index.signalled()
    }

    /// How many live sessions and connections this verification's index holds now (each
    /// leaves it when it ends): for tests that churn connections.
    #[doc(hidden)]
    pub fn indexed_sessions(&self) -> usize {
        self.index.len()
    }

    /// How many re-checks the live sessions of this verification have run so far (on a list
    /// that touched them, a bundle change, or a held list going stale).
    pub fn session_rechecks(&self) -> u64 {
        self.index.rechecks()
    }

    /// Applies `f` to a copy of the verifier and publishes it; returns the verifier it
    /// replaced. The X.509 anchors (and the leaves they remember) are rebuilt only when the
    /// bundles changed: live sessions re-validate their peer's certificate exactly when the
    /// trust store is a new one. Bundle changes signal every live session; other updates signal
    /// none (a list signals the sessions it touches through the index).
    fn update<T>(
        &self,
        bundles_changed: bool,
        f: impl FnOnce(&mut Verifier) -> Result<T>,
    ) -> Result<(Arc<Verifier>, Arc<Verifier>, T)> {
        let _guard = self
            .write
            .lock()
            .map_err(|_| Error::Config("poisoned lock".into()))?;
        let old = self.verifier.load_full();
        let mut next = Verifier::clone(&old);
        let out = f(&mut next)?;
        if bundles_changed {
            let trust = trust_store_from(next.config().bundles())?;
            self.trust.store(Arc::new(trust));
        }
        let next = Arc::new(next);
        self.verifier.store(next.clone());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if bundles_changed {
            self.signal_every_session();
        }
        Ok((old, next, out))
    }

    /// Signals every live session to re-check, after the new state is visible.
    fn signal_every_session(&self) {
        self.recheck_all.fetch_add(1, Ordering::AcqRel);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Verifies and applies a signed revocation list (an older `seq` is refused). The live
    /// sessions under a target it newly revokes (one the list it replaces did not) re-check
    /// their peer and chain and end at once; no other session re-checks.
    pub fn apply_revocation_list(&self, compact: &str) -> Result<()> {
        self.apply_list(compact, None)
    }

    /// [`PeerVerification::apply_revocation_list`] for a list that must be `td`'s (the feed
    /// of `td`'s CA): a list of another trust domain is refused and nothing is applied.
    pub fn apply_revocation_list_of(&self, compact: &str, td: &TrustDomain) -> Result<()> {
        self.apply_list(compact, Some(td))
    }

    fn apply_list(&self, compact: &str, expected: Option<&TrustDomain>) -> Result<()> {
        let (old, new, td) = self.update(false, |v| {
            let list = match expected {
                Some(td) => v.config_mut().apply_revocation_list_of(compact, td)?,
                None => v.config_mut().apply_revocation_list(compact)?,
            };
            tracing::info!(trust_domain = %list.issuer(), seq = list.seq(), entries = list.len(), "revocation list applied");
            Ok(list.issuer().clone())
        })?;
        if let Some(list) = new.config().revocation_list(&td) {
            let replaced = old.config().revocation_list(&td);
            self.index
                .list_applied(replaced.map(|l| &**l), list, crate::session::now_unix());
            // A list that goes stale sooner than the one it replaced moves the staleness time
            // of every session that depends on it, including those it revokes nothing of (which
            // the index does not signal): each re-checks and re-arms its timer (16.4).
            if replaced.is_some_and(|r| list.next_update() < r.next_update()) {
                self.signal_every_session();
            }
        }
        Ok(())
    }

    /// The earliest time (`next_update + skew`) at which a revocation list that a live peer's
    /// verification depends on goes stale: the lists of the peer's trust domain and, with a
    /// chain, of its authority and of every holder along it (the domains phase 6 consults).
    /// `None` when stale lists are tolerated (`danger_` setting) or no such list is held. A
    /// live session or connection re-checks its peer at that time (spec/PROTOCOL.md 16.4,
    /// 22.5).
    pub(crate) fn stale_at(&self, peer: &SpiffeId, chain: Option<&VerifiedChain>) -> Option<u64> {
        let v = self.verifier();
        let config = v.config();
        if config.revocation_optional() {
            return None;
        }
        // Borrowed: a list is found by its domain's name, nothing is copied.
        let mut domains: Vec<&str> = vec![peer.trust_domain_str()];
        if let Some(chain) = chain {
            domains.push(chain.authority.as_str());
            domains.extend(
                chain
                    .actors
                    .iter()
                    .map(|a| a.id.as_spiffe_id().trust_domain_str()),
            );
        }
        domains
            .iter()
            .filter_map(|td| config.revocation_list(*td))
            .map(|l| l.next_update().saturating_add(config.skew_seconds()))
            .min()
    }

    /// Adds or replaces a trust bundle (a lower sequence is refused); new handshakes use its
    /// anchors and keys. A held revocation list whose signing key the bundles no longer hold
    /// is orphaned ([`VerifierConfig::insert_bundle_at`]): stale from now plus the skew (the
    /// peers that need it then fail closed, `revocation_stale`), and replaced by the next list
    /// signed by a key of the bundle, whatever its `seq`.
    pub fn update_bundle(&self, bundle: TrustBundle) -> Result<()> {
        let now = crate::session::now_unix();
        self.update(true, |v| {
            Ok(v.config_mut().insert_bundle_at(bundle, now)?)
        })
        .map(|_| ())
    }
}
