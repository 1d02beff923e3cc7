//! Live sessions indexed by the revocation targets of their peer (its key, agent and task, and
//! every `jti`, agent, task and key of its chain: [`agentid_protocol::peer_revocation_targets`]).
//!
//! When a new revocation list is applied, only the sessions under a target that list newly
//! revokes (one the previously held list of its domain did not) are signalled to re-check;
//! bundle changes and staleness still re-check every session. The cost of a list is one lookup
//! per distinct indexed target, whatever the list's size.
//!
//! A session registers after its verification; the list generation it read before verifying
//! tells whether a list landed in between, in which case it is signalled at once: a list applied
//! concurrently with a handshake is never missed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agentid_protocol::{newly_revokes, RevocationList, RevocationTarget};
use tokio::sync::watch;

/// The signal of one registered session: a version bumped each time a list touches it.
#[derive(Debug)]
pub(crate) struct SessionSignal {
    version: AtomicU64,
    wake: watch::Sender<u64>,
}

impl SessionSignal {
    fn bump(&self) {
        let v = self.version.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        self.wake.send_replace(v);
    }
}

/// Hashes the index's own session ids (sequential, never chosen by a peer) with one multiply:
/// no SipHash where there is nothing to resist. Targets, which peers choose, are hashed once
/// with SipHash under the index's random key ([`Keyed`]); this only spreads that hash.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Odd multiplier: distinct ids differ in the low bits (the bucket) and the high bits
        // (the control byte) are mixed.
        self.0 = (self.0 ^ id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Ids<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A revocation target with its keyed hash (SipHash under the index's random key, as a
/// `RandomState` map would take it), taken once when a session registers: indexing and
/// unindexing the session look it up by that hash, not by hashing the target again, and the
/// index and the session share the target instead of each holding a copy.
#[derive(Clone, Debug)]
struct Keyed {
    hash: u64,
    target: Arc<RevocationTarget>,
}

impl Keyed {
    /// `target` (already shared with the verified chain it came from) with its keyed hash.
    fn new(keys: &RandomState, target: Arc<RevocationTarget>) -> Self {
        Self {
            hash: keys.hash_one(&*target),
            target,
        }
    }
}

impl Hash for Keyed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already keyed and uniform: the map's hasher (`IdHasher`) only spreads it.
        state.write_u64(self.hash);
    }
}

impl PartialEq for Keyed {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.target == other.target
    }
}

impl Eq for Keyed {}
type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// The sessions under one target: nearly always one (a `jti`, a key), sometimes many (an agent
/// with many tasks); no set is allocated for one.
#[derive(Debug)]
enum Under {
    One(u64),
    Many(IdSet),
}

impl Under {
    fn insert(&mut self, id: u64) {
        match self {
            Under::One(first) if *first == id => {}
            Under::One(first) => *self = Under::Many([*first, id].into_iter().collect()),
            Under::Many(ids) => {
                ids.insert(id);
            }
        }
    }

    /// Removes `id`; whether no session is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Under::One(first) => *first == id,
            Under::Many(ids) => {
                ids.remove(&id);
                ids.is_empty()
            }
        }
    }

    fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        let (one, many) = match self {
            Under::One(id) => (Some(*id), None),
            Under::Many(ids) => (None, Some(ids.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    by_target: HashMap<Keyed, Under, BuildHasherDefault<IdHasher>>,
    /// Sessions whose targets could not be listed: every list signals them.
    every_list: IdSet,
    sessions: Ids<(Option<Vec<Keyed>>, Arc<SessionSignal>)>,
}

/// The index of one [`crate::PeerVerification`].
#[derive(Debug, Default)]
pub(crate) struct SessionIndex {
    inner: Mutex<Inner>,
    /// Lists applied so far (bumped after the new verifier is visible, before the lookup).
    lists: AtomicU64,
    /// Sessions signalled by lists so far.
    signalled: AtomicU64,
    /// Re-checks run by sessions of this verification so far.
    rechecks: AtomicU64,
    /// The random key of the targets' hashes ([`Keyed`]), one per index.
    keys: RandomState,
}

impl SessionIndex {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lists_applied(&self) -> u64 {
        self.lists.load(Ordering::Acquire)
    }

    pub(crate) fn signalled(&self) -> u64 {
        self.signalled.load(Ordering::Acquire)
    }

    pub(crate) fn rechecks(&self) -> u64 {
        self.rechecks.load(Ordering::Acquire)
    }

    pub(crate) fn count_recheck(&self) {
        self.rechecks.fetch_add(1, Ordering::AcqRel);
    }

    /// The sessions registered now.
    pub(crate) fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Registers a session under `targets` (`None`: signalled by every list). `lists_seen` is
    /// [`SessionIndex::lists_applied`] as read before the session's verification.
    pub(crate) fn register(
        self: &Arc<Self>,
        targets: Option<Vec<Arc<RevocationTarget>>>,
        lists_seen: u64,
    ) -> Registration {
        let targets = self.keyed(targets);
        let (wake, _) = watch::channel(0);
        let signal = Arc::new(SessionSignal {
            version: AtomicU64::new(0),
            wake,
        });
        let id = {
            let mut inner = self.lock();
            let id = inner.next_id;
            inner.next_id = inner.next_id.wrapping_add(1);
            Self::index(&mut inner, id, targets.as_deref());
            inner.sessions.insert(id, (targets, signal.clone()));
            id
        };
        let reg = Registration {
            index: self.clone(),
            id,
            signal,
        };
        reg.catch_up(lists_seen);
        reg
    }

    /// `targets` with their keyed hashes.
    fn keyed(&self, targets: Option<Vec<Arc<RevocationTarget>>>) -> Option<Vec<Keyed>> {
        targets.map(|ts| ts.into_iter().map(|t| Keyed::new(&self.keys, t)).collect())
    }

    fn index(inner: &mut Inner, id: u64, targets: Option<&[Keyed]>) {
        let Some(targets) = targets else {
            inner.every_list.insert(id);
            return;
        };
        for t in targets {
            match inner.by_target.entry(t.clone()) {
                Entry::Occupied(mut under) => under.get_mut().insert(id),
                Entry::Vacant(slot) => {
                    slot.insert(Under::One(id));
                }
            }
        }
    }

    fn unindex(inner: &mut Inner, id: u64, targets: Option<&[Keyed]>) {
        let Some(targets) = targets else {
            inner.every_list.remove(&id);
            return;
        };
        for t in targets {
            // One lookup in the common case (the target was this session's alone); a target
            // other sessions share goes back in.
            if let Some((target, mut under)) = inner.by_target.remove_entry(t) {
                if !under.remove(id) {
                    inner.by_target.insert(target, under);
                }
            }
        }
    }

    /// After a list was applied (`old` the list of its domain held before, `new` the one held
    /// now): signals every session under a target `new` newly revokes at `now`.
    pub(crate) fn list_applied(
        &self,
        old: Option<&RevocationList>,
        new: &RevocationList,
        now: u64,
    ) {
        self.lists.fetch_add(1, Ordering::AcqRel);
        let inner = self.lock();
        let mut touched: IdSet = inner.every_list.clone();
        for (target, under) in &inner.by_target {
            if newly_revokes(new, old, &target.target, now) {
                touched.extend(under.ids());
            }
        }
        for id in &touched {
            if let Some((_, signal)) = inner.sessions.get(id) {
                signal.bump();
            }
        }
        self.signalled
            .fetch_add(touched.len() as u64, Ordering::AcqRel);
    }
}

/// A session's place in the index; dropping it removes the session.
#[derive(Debug)]
pub(crate) struct Registration {
    index: Arc<SessionIndex>,
    id: u64,
    signal: Arc<SessionSignal>,
}

impl Registration {
    /// The session's signal version: changed means a list touched it since it last looked.
    pub(crate) fn version(&self) -> u64 {
        self.signal.version.load(Ordering::Acquire)
    }

    /// A receiver woken on every signal.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.signal.wake.subscribe()
    }

    /// Replaces the session's targets (a new chain after `reauth` or an HTTP presentation);
    /// `lists_seen` as for [`SessionIndex::register`].
    pub(crate) fn update(&self, targets: Option<Vec<Arc<RevocationTarget>>>, lists_seen: u64) {
        let targets = self.index.keyed(targets);
        {
            let mut inner = self.index.lock();
            let old = inner.sessions.get_mut(&self.id).and_then(|(t, _)| t.take());
            // `take` left `None` (every list) in place until the new targets are set below.
            SessionIndex::unindex(&mut inner, self.id, old.as_deref());
            SessionIndex::index(&mut inner, self.id, targets.as_deref());
            if let Some((t, _)) = inner.sessions.get_mut(&self.id) {
                *t = targets;
            }
        }
        self.catch_up(lists_seen);
    }

    /// Signals the session itself when a list was applied since `lists_seen`: its lookup may
    /// have run before this registration was in the index.
    fn catch_up(&self, lists_seen: u64) {
        if self.index.lists_applied() != lists_seen {
            self.signal.bump();
        }
    }

    /// Counts one re-check of this session.
    pub(crate) fn count_recheck(&self) {
        self.index.count_recheck();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.index.lock();
        if let Some((targets, _)) = inner.sessions.remove(&self.id) {
            SessionIndex::unindex(&mut inner, self.id, targets.as_deref());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agentid_protocol::{
        AgentId, Algorithm, AuthorityKey, BundleSet, RevocationListBuilder, TrustBundle,
        TrustDomain,
    };

    const NOW: u64 = 1_767_225_600;

    fn list(key: &AuthorityKey, seq: u64, agents: &[&str]) -> RevocationList {
        let td = TrustDomain::parse("example.org").unwrap();
        let mut b = RevocationListBuilder::new(&td, seq, NOW, NOW + 600);
        for a in agents {
            b = b.revoke_agent(&agent(a), NOW + 600);
        }
        let mut set = BundleSet::new();
        set.insert(TrustBundle::new(td, 1).add_revocation_key(key.public_key().clone()))
            .unwrap();
        RevocationList::verify(&b.sign(key).unwrap(), &set).unwrap()
    }

    fn agent(n: &str) -> AgentId {
        AgentId::parse(&format!("spiffe://example.org/agent/{n}")).unwrap()
    }

    #[test]
    fn a_list_signals_only_the_sessions_under_its_new_entries() {
        let key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let index = Arc::new(SessionIndex::default());
        let regs: Vec<Registration> = ["a", "b", "c"]
            .iter()
            .map(|n| index.register(Some(vec![Arc::new(RevocationTarget::Agent(agent(n)))]), 0))
            .collect();
        let l1 = list(&key, 1, &["a"]);
        index.list_applied(None, &l1, NOW);
        assert_eq!(
            regs.iter().map(Registration::version).collect::<Vec<_>>(),
            [1, 0, 0]
        );
        // The next list keeps a and adds c: only c is new.
        let l2 = list(&key, 2, &["a", "c"]);
        index.list_applied(Some(&l1), &l2, NOW);
        assert_eq!(
            regs.iter().map(Registration::version).collect::<Vec<_>>(),
            [1, 0, 1]
        );
        assert_eq!(index.signalled(), 2);
        // A session moved under a revoked target by an update is found by the next list.
        regs[1].update(
            Some(vec![Arc::new(RevocationTarget::Agent(agent("d")))]),
            index.lists_applied(),
        );
        index.list_applied(Some(&l2), &list(&key, 3, &["a", "c", "d"]), NOW);
        assert_eq!(regs[1].version(), 1);
    }

    #[test]
    fn sessions_sharing_a_target_are_all_signalled_and_leave_one_by_one() {
        let key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let index = Arc::new(SessionIndex::default());
        let shared = Arc::new(RevocationTarget::Agent(agent("a")));
        let regs: Vec<Registration> = ["x", "y", "z"]
            .iter()
            .map(|n| {
                index.register(
                    Some(vec![
                        shared.clone(),
                        Arc::new(RevocationTarget::Agent(agent(n))),
                        shared.clone(),
                    ]),
                    0,
                )
            })
            .collect();
        let mut regs = regs.into_iter();
        let first = regs.next().unwrap();
        drop(first);
        index.list_applied(None, &list(&key, 1, &["a"]), NOW);
        let rest: Vec<Registration> = regs.collect();
        assert_eq!(
            rest.iter().map(Registration::version).collect::<Vec<_>>(),
            [1, 1]
        );
        assert_eq!(index.signalled(), 2, "the dropped session is not signalled");
        // A target two sessions share stays indexed until the last one leaves.
        drop(rest);
        let inner = index.lock();
        assert!(inner.by_target.is_empty() && inner.sessions.is_empty());
    }

    #[test]
    fn a_registration_that_raced_a_list_is_signalled_and_a_dropped_one_leaves_the_index() {
        let key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let index = Arc::new(SessionIndex::default());
        let seen = index.lists_applied();
        index.list_applied(None, &list(&key, 1, &["a"]), NOW);
        let late = index.register(
            Some(vec![Arc::new(RevocationTarget::Agent(agent("a")))]),
            seen,
        );
        assert_eq!(
            late.version(),
            1,
            "verified before the list, registered after it"
        );
        drop(late);
        let inner = index.lock();
        assert!(inner.by_target.is_empty() && inner.sessions.is_empty());
        drop(inner);
        // A session whose targets could not be listed is signalled by every list.
        let every = index.register(None, index.lists_applied());
        index.list_applied(None, &list(&key, 2, &[]), NOW);
        assert_eq!(every.version(), 1);
    }

    /// Random registrations, updates (to other targets, to none listed, or sharing the `Arc`s
    /// of other sessions' targets), drops and lists, checked against a model after every list:
    /// a session is signalled exactly when one of its targets is new in the list (or its
    /// targets could not be listed), whoever shares that target and whatever left before; and
    /// the index is empty once every session left.
    #[test]
    fn the_index_signals_what_a_model_of_its_sessions_expects() {
        const AGENTS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
        let key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let shared: Vec<Arc<RevocationTarget>> = AGENTS
            .iter()
            .map(|n| Arc::new(RevocationTarget::Agent(agent(n))))
            .collect();
        let mut state = 0x5851_f42d_4c95_7f2du64;
        let mut next = move |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
        };
        for _ in 0..200 {
            let index = Arc::new(SessionIndex::default());
            // Each live session: its registration, its targets (as agent numbers), the version
            // last seen.
            let mut live: Vec<(Registration, Option<Vec<usize>>, u64)> = Vec::new();
            let mut held: Option<(RevocationList, Vec<usize>)> = None;
            let mut seq = 1;
            for _ in 0..60 {
                let targets = |next: &mut dyn FnMut(usize) -> usize| {
                    if next(8) == 0 {
                        return (None, None);
                    }
                    let picked: Vec<usize> = (0..next(4)).map(|_| next(AGENTS.len())).collect();
                    let arcs = picked
                        .iter()
                        .map(|i| {
                            if next(2) == 0 {
                                shared[*i].clone()
                            } else {
                                Arc::new(RevocationTarget::Agent(agent(AGENTS[*i])))
                            }
                        })
                        .collect();
                    (Some(arcs), Some(picked))
                };
                match next(5) {
                    0 | 1 => {
                        let (arcs, picked) = targets(&mut next);
                        let reg = index.register(arcs, index.lists_applied());
                        let v = reg.version();
                        live.push((reg, picked, v));
                    }
                    2 if !live.is_empty() => {
                        let at = next(live.len());
                        let (arcs, picked) = targets(&mut next);
                        live[at].0.update(arcs, index.lists_applied());
                        live[at].1 = picked;
                    }
                    3 if !live.is_empty() => {
                        let at = next(live.len());
                        live.swap_remove(at);
                    }
                    _ => {
                        let revoked: Vec<usize> =
                            (0..AGENTS.len()).filter(|_| next(3) == 0).collect();
                        let names: Vec<&str> = revoked.iter().map(|i| AGENTS[*i]).collect();
                        let new = list(&key, seq, &names);
                        seq += 1;
                        index.list_applied(held.as_ref().map(|(l, _)| l), &new, NOW);
                        let old: &[usize] = held.as_ref().map_or(&[], |(_, r)| r);
                        for (reg, picked, seen) in &mut live {
                            let touched = picked.as_ref().is_none_or(|p| {
                                p.iter().any(|i| revoked.contains(i) && !old.contains(i))
                            });
                            let now = reg.version();
                            assert_eq!(
                                now,
                                *seen + u64::from(touched),
                                "targets {picked:?}, list {revoked:?} after {old:?}"
                            );
                            *seen = now;
                        }
                        held = Some((new, revoked));
                    }
                }
            }
            live.clear();
            let inner = index.lock();
            assert!(inner.by_target.is_empty() && inner.sessions.is_empty());
            assert!(inner.every_list.is_empty());
        }
    }
}
