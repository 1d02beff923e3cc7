//! A bounded cache of verified tokens.
//!
//! Keyed by the token's exact compact bytes, each entry for the thumbprint of the key that
//! verified it; holds only tokens that passed phases 2 and 3 (header, signature, claims). A hit
//! skips only those: linkage, time, revocation, possession, audience and scope are evaluated on
//! every use, and a grant hit still requires its key in the current bundle of an accepted
//! authority. Looking a token up costs a keyed hash of its bytes (no SHA-256), and a hit also
//! gives back the token's SHA-256 (what the next link's `prev` is checked against). An entry
//! keeps the token's bytes, usually under a kilobyte, and what they decode to. The capacity is
//! counted in slots of one kilobyte: a token takes one slot per started kilobyte of its bytes
//! (up to 8 for the largest, 8 KiB), so a holder of any grant who signs links of the largest
//! size fills the cache with no more bytes than tokens of the usual size would. The cache also
//! remembers the SHA-256 of the last 64 chains that verified (a hop proof's `cth` binds the
//! whole chain): up to 64 chains of at most 64 KiB each.
//!
//! Eviction gives each entry a second chance (CLOCK): a token found since it was last passed
//! over is kept once more, one never found again goes first. Any holder of a valid chain can
//! sign as many new links as it likes, each passing phases 2 and 3 and so cached; in the order of
//! insertion alone (FIFO) such a flood would push out the tokens other peers' chains keep using.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::crypto::JKT_LEN;
use crate::jws::Header;
use crate::token::claims::{GrantClaims, LinkClaims};

/// What a hit gives back: everything phases 2 and 3 established for the token. A grant's bytes
/// never pass phase 2 as a link (nor the reverse), so a hit of the other kind is a miss.
#[derive(Clone, Debug)]
pub(crate) enum CachedToken {
    Grant(Arc<GrantClaims>),
    Link(Arc<LinkClaims>),
}

/// One cached token: what phases 2 and 3 established for its exact bytes.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The thumbprint (ASCII) of the key that verified it: a hit needs the same key.
    pub(crate) jkt: [u8; JKT_LEN],
    /// SHA-256 of the token's compact bytes.
    pub(crate) hash: [u8; 32],
    /// Its protected header (phase 2 reads the same from the same bytes).
    pub(crate) header: Header,
    pub(crate) token: CachedToken,
}

/// At most this many chain hashes are remembered ([`TokenCache::chain_hash`]).
const CHAIN_HASHES: usize = 64;

/// The bytes of token one slot of the capacity stands for.
const SLOT_BYTES: usize = 1024;

/// The slots a token of `len` bytes takes: one per started kilobyte.
fn slots(len: usize) -> usize {
    len.div_ceil(SLOT_BYTES).max(1)
}

#[derive(Debug, Default)]
struct Inner {
    /// Chains that verified by their SHA-256 (rule P9 compares a hop proof's `cth` with the
    /// hash of the chain sent), and their hashes oldest first. Keyed by the hash, not the
    /// bytes: a lookup hashes the 32 bytes of the `cth` claimed, not a chain of up to 64 KiB.
    chains: HashMap<[u8; 32], Arc<str>>,
    chain_order: VecDeque<[u8; 32]>,
    map: HashMap<Arc<str>, Slot>,
    /// The keys of `map`, in the order eviction passes over them.
    order: VecDeque<Arc<str>>,
    /// The slots the entries of `map` take ([`slots`] of each key's length).
    used: usize,
}

/// An entry and whether it was found since eviction last passed over it.
#[derive(Debug)]
struct Slot {
    entry: Entry,
    found: bool,
}

/// A bounded, thread-safe cache of verified tokens, shared by clones of a [`crate::Verifier`].
/// Its capacity is counted in slots of one kilobyte of token bytes (see the module
/// documentation).
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens of up to a kilobyte each (a larger token takes
    /// one slot per started kilobyte; one larger than the whole cache is not kept), the oldest
    /// not found since eviction last passed over it evicted first.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.map.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry (for example after a bundle rotation).
    pub fn clear(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.map.clear();
            i.order.clear();
            i.used = 0;
            i.chains.clear();
            i.chain_order.clear();
        }
    }

    /// The SHA-256 of `chain` if it is `claimed`, the hash of a chain with exactly these
    /// bytes that verified before (compared byte for byte); `None` otherwise (not remembered,
    /// or `claimed` is not its hash: hash it).
    pub(crate) fn chain_hash(&self, chain: &str, claimed: &[u8; 32]) -> Option<[u8; 32]> {
        let inner = self.inner.lock().ok()?;
        let held = inner.chains.get(claimed)?;
        (**held == *chain).then_some(*claimed)
    }

    /// Remembers the SHA-256 of a chain that verified (at most [`CHAIN_HASHES`], and none
    /// when the cache holds no tokens).
    pub(crate) fn remember_chain_hash(&self, chain: &str, hash: [u8; 32]) {
        let limit = CHAIN_HASHES.min(self.capacity);
        if limit == 0 {
            return;
        }
        let Ok(mut i) = self.inner.lock() else { return };
        if i.chains.contains_key(&hash) {
            return;
        }
        while i.chains.len() >= limit {
            match i.chain_order.pop_front() {
                Some(old) => {
                    i.chains.remove(&old);
                }
                None => break,
            }
        }
        i.chain_order.push_back(hash);
        i.chains.insert(hash, Arc::from(chain));
    }

    /// The entry of the token with compact bytes `token`, whatever key verified it: a hit
    /// needs the caller to check [`Entry::jkt`] against the key it would verify with.
    pub(crate) fn get(&self, token: &str) -> Option<Entry> {
        // A poisoned lock only means another thread panicked mid-insert: treat it as a miss.
        let mut inner = self.inner.lock().ok()?;
        let slot = inner.map.get_mut(token)?;
        slot.found = true;
        Some(slot.entry.clone())
    }

    /// Caches `value` for the token with compact bytes `token` (SHA-256 `hash`, protected header
    /// `header`), verified by the key with thumbprint `jkt` (replacing an entry of the same
    /// bytes under another key).
    pub(crate) fn insert(
        &self,
        token: &str,
        jkt: [u8; JKT_LEN],
        hash: [u8; 32],
        header: Header,
        value: CachedToken,
    ) {
        let weight = slots(token.len());
        if weight > self.capacity {
            return;
        }
        let Ok(mut i) = self.inner.lock() else { return };
        let entry = Entry {
            jkt,
            hash,
            header,
            token: value,
        };
        if let Some(slot) = i.map.get_mut(token) {
            slot.entry = entry;
            return;
        }
        // Second chance: a key found since it was last passed over goes to the back, unmarked;
        // each key is marked at most once per pass, so this ends within two passes.
        while i.used.saturating_add(weight) > self.capacity {
            let Some(old) = i.order.pop_front() else {
                break;
            };
            match i.map.get_mut(&old) {
                Some(slot) if slot.found => {
                    slot.found = false;
                    i.order.push_back(old);
                }
                _ => {
                    if i.map.remove(&old).is_some() {
                        i.used = i.used.saturating_sub(slots(old.len()));
                    }
                }
            }
        }
        let key: Arc<str> = Arc::from(token);
        i.used = i.used.saturating_add(weight);
        i.order.push_back(Arc::clone(&key));
        i.map.insert(
            key,
            Slot {
                entry,
                found: false,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::bundle::{BundleSet, TrustBundle};
    use crate::config::VerifierConfig;
    use crate::crypto::{AuthorityKey, TaskKey};
    use crate::id::{SpiffeId, TaskIdentity};
    use crate::revocation::RevocationListBuilder;
    use crate::scope::Scope;
    use crate::token::GrantBuilder;
    use crate::verifier::Verifier;
    use crate::{Algorithm, TrustDomain};

    const NOW: u64 = 1_767_225_600;

    /// The entry a real verification caches for a grant (what every slot below holds).
    fn a_verified_entry() -> Entry {
        let td = TrustDomain::parse("example.org").unwrap();
        let grant_key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let rev_key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let id = TaskIdentity::parse("spiffe://example.org/agent/a/task/t1").unwrap();
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let grant = GrantBuilder::new(&td, &id, key.public_key(), Scope::parse("x:*").unwrap())
            .validity(NOW - 60, NOW - 60, NOW + 600)
            .jti("g1")
            .sign(&grant_key)
            .unwrap();
        let mut set = BundleSet::new();
        set.insert(
            TrustBundle::new(td.clone(), 1)
                .add_grant_key(grant_key.public_key().clone())
                .add_revocation_key(rev_key.public_key().clone()),
        )
        .unwrap();
        let own = SpiffeId::parse("spiffe://example.org/agent/b/task/t1").unwrap();
        let mut cfg = VerifierConfig::new(own, set);
        let list = RevocationListBuilder::new(&td, 1, NOW - 10, NOW + 590);
        cfg.apply_revocation_list(&list.sign(&rev_key).unwrap())
            .unwrap();
        let cache = Arc::new(TokenCache::new(1));
        let verifier = Verifier::new(cfg).unwrap().with_cache(cache.clone());
        verifier
            .verify_chain(grant.as_str(), id.as_spiffe_id(), key.public_key(), NOW)
            .unwrap();
        cache.get(grant.as_str()).unwrap()
    }

    fn put(cache: &TokenCache, token: &str, e: &Entry) {
        cache.insert(token, e.jkt, e.hash, e.header.clone(), e.token.clone());
    }

    #[test]
    fn a_flood_of_tokens_never_found_again_does_not_evict_the_ones_in_use() {
        let e = a_verified_entry();
        let cache = TokenCache::new(8);
        put(&cache, "in use", &e);
        // One holder of a valid chain signs link after link, each cached once and never
        // presented again, while another peer's chain keeps being verified.
        for k in 0..1000 {
            assert!(
                cache.get("in use").is_some(),
                "evicted after {k} new tokens"
            );
            put(&cache, &format!("flood {k}"), &e);
            assert!(cache.len() <= 8);
        }
        // Among the tokens never found again, the oldest went first.
        assert!(cache.get("flood 999").is_some());
        assert!(cache.get("flood 993").is_some());
        assert!(cache.get("flood 992").is_none());
        // A token found once and then no longer is kept for one more pass only.
        for k in 0..16 {
            put(&cache, &format!("later {k}"), &e);
        }
        assert!(cache.get("in use").is_none());
        assert_eq!(cache.len(), 8);
        // Every key marked: eviction ends (one pass unmarks them, the next evicts the oldest).
        for k in 8..16 {
            assert!(cache.get(&format!("later {k}")).is_some());
        }
        put(&cache, "next", &e);
        assert_eq!(cache.len(), 8);
        assert!(cache.get("next").is_some());
        assert!(cache.get("later 8").is_none());
    }

    /// The token bytes the cache holds now.
    fn bytes_held(cache: &TokenCache) -> usize {
        cache
            .inner
            .lock()
            .unwrap()
            .map
            .keys()
            .map(|k| k.len())
            .sum()
    }

    #[test]
    fn large_tokens_are_bounded_by_their_bytes_not_only_their_number() {
        let e = a_verified_entry();
        let cache = TokenCache::new(16);
        // Tokens of the usual size (under a kilobyte): `capacity` of them.
        for k in 0..32 {
            put(&cache, &format!("{k:04}{}", "s".repeat(796)), &e);
        }
        assert_eq!(cache.len(), 16);
        // Any holder of a grant can sign links of up to 8 KiB (each passes phases 2 and 3, so
        // each is cached): they take one slot per started kilobyte, and push out the small ones.
        for k in 0..32 {
            put(&cache, &format!("{k:04}{}", "L".repeat(8188)), &e);
            assert!(
                bytes_held(&cache) <= 16 * 1024,
                "{} bytes held in 16 slots",
                bytes_held(&cache)
            );
        }
        assert_eq!(cache.len(), 2);
        assert!(cache
            .get(&format!("{:04}{}", 31, "L".repeat(8188)))
            .is_some());
        // A token larger than the whole cache is not kept (and evicts nothing).
        let tiny = TokenCache::new(4);
        put(&tiny, "small", &e);
        put(&tiny, &"L".repeat(8192), &e);
        assert_eq!(tiny.len(), 1);
        assert!(tiny.get("small").is_some());
    }

    #[test]
    fn chain_hashes_are_remembered_by_exact_bytes_and_bounded() {
        let cache = TokenCache::new(4096);
        assert_eq!(cache.chain_hash("a~b", &[1; 32]), None);
        cache.remember_chain_hash("a~b", [1; 32]);
        assert_eq!(cache.chain_hash("a~b", &[1; 32]), Some([1; 32]));
        assert_eq!(
            cache.chain_hash("a~b", &[2; 32]),
            None,
            "another hash claimed"
        );
        assert_eq!(cache.chain_hash("a~b ", &[1; 32]), None);
        assert_eq!(cache.chain_hash("a~", &[1; 32]), None);
        for i in 0..200u8 {
            cache.remember_chain_hash(&format!("chain {i}"), [i.wrapping_add(2); 32]);
        }
        let held = (0..200u8)
            .filter(|i| {
                cache
                    .chain_hash(&format!("chain {i}"), &[i.wrapping_add(2); 32])
                    .is_some()
            })
            .count();
        assert_eq!(held, CHAIN_HASHES);
        assert_eq!(
            cache.chain_hash("a~b", &[1; 32]),
            None,
            "the oldest went first"
        );
        cache.clear();
        assert_eq!(cache.chain_hash("chain 199", &[201; 32]), None);
        // A cache that holds no tokens remembers no chains either.
        let none = TokenCache::new(0);
        none.remember_chain_hash("a~b", [1; 32]);
        assert_eq!(none.chain_hash("a~b", &[1; 32]), None);
    }
}
