//! A bounded cache of verified tokens.
//!
//! Keyed by (SHA-256 of the token's compact bytes, thumbprint of the key that verified it); holds
//! only tokens that passed phases 2 and 3 (header, signature, claims). A hit skips only those:
//! linkage, time, revocation, possession, audience and scope are evaluated on every use, and a
//! grant hit still requires its key in the current bundle of an accepted authority.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::token::claims::{GrantClaims, LinkClaims};

/// The key of a cache entry: the token's SHA-256 and the verifying key's thumbprint (ASCII).
pub(crate) type CacheKey = ([u8; 32], [u8; crate::crypto::JKT_LEN]);

/// What a hit gives back: everything phases 2 and 3 established for the token. A grant's bytes
/// never pass phase 2 as a link (nor the reverse), so a hit of the other kind is a miss.
#[derive(Clone, Debug)]
pub(crate) enum CachedToken {
    Grant(Arc<GrantClaims>),
    Link(Arc<LinkClaims>),
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<CacheKey, CachedToken>,
    order: VecDeque<CacheKey>,
}

/// A bounded, thread-safe cache of verified tokens, shared by clones of a [`crate::Verifier`].
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens (oldest evicted first).
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
        }
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<CachedToken> {
        // A poisoned lock only means another thread panicked mid-insert: treat it as a miss.
        self.inner.lock().ok()?.map.get(key).cloned()
    }

    pub(crate) fn insert(&self, key: CacheKey, value: CachedToken) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut i) = self.inner.lock() else { return };
        if i.map.contains_key(&key) {
            return;
        }
        while i.map.len() >= self.capacity {
            match i.order.pop_front() {
                Some(old) => {
                    i.map.remove(&old);
                }
                None => break,
            }
        }
        i.order.push_back(key);
        i.map.insert(key, value);
    }
}
