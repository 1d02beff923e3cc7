//! What a revocation list would have to name to revoke a verified peer: the targets that
//! phase 6 (every token of its chain) and rule 6.3 (the peer itself) look up, so that a verifier
//! holding many live sessions can index them by target and, when a new list arrives, re-check
//! only the sessions under the targets that list newly revokes.
//!
//! The set over-approximates (it ignores which domain's list each lookup consults, and keeps
//! every agent and key along the chain): a session re-checked for nothing costs one local
//! re-check, a session missed would outlive its revocation.

use std::sync::Arc;

use crate::chain::{frame, Chain};
use crate::crypto::PublicKey;
use crate::error::Result;
use crate::id::{SpiffeId, TaskIdentity};
use crate::jws::{parse_header, TokenType};
use crate::revocation::{RevocationList, RevocationTarget};
use crate::verifier::VerifiedChain;

/// The targets whose entry in a revocation list could revoke a peer `peer_id` holding
/// `peer_key` and presenting `chain` (already verified; `None` for a chain-less peer): for the
/// peer, its key's thumbprint, its agent and its task (rule 6.3); for every token of the chain,
/// its `{jti, iss}`, the grant's task, the agents of its issuer and holder, the thumbprints of
/// its `cnf` key and of the key that signed it (rule 6.2). Duplicates removed.
pub fn peer_revocation_targets(
    chain: Option<&str>,
    peer_id: &SpiffeId,
    peer_key: &PublicKey,
) -> Result<Vec<RevocationTarget>> {
    let mut out = vec![RevocationTarget::Key(peer_key.thumbprint())];
    if let Ok(t) = TaskIdentity::parse(peer_id.as_str()) {
        out.push(RevocationTarget::Agent(t.agent()));
        out.push(RevocationTarget::Task(t.task_id()));
    }
    if let Some(c) = chain {
        let read = Chain::parse_unverified(c)?.read_unverified()?;
        // The grant's signing key: its `kid` is the key's thumbprint (bundles enforce it).
        let framed = frame(c)?;
        if let Some(kid) = parse_header(&framed.grant.raw, TokenType::Grant)?.kid {
            out.push(RevocationTarget::Key(kid));
        }
        let grant = &read.grant;
        out.push(RevocationTarget::Jti {
            iss: grant.iss.id(),
            jti: grant.jti.clone(),
        });
        out.push(RevocationTarget::Task(grant.task.clone()));
        out.push(RevocationTarget::Agent(grant.sub.agent()));
        out.push(RevocationTarget::Key(grant.cnf.thumbprint()));
        for link in &read.links {
            out.push(RevocationTarget::Jti {
                iss: link.iss.as_spiffe_id().clone(),
                jti: link.jti.clone(),
            });
            out.push(RevocationTarget::Agent(link.iss.agent()));
            out.push(RevocationTarget::Agent(link.sub.agent()));
            out.push(RevocationTarget::Key(link.cnf.thumbprint()));
        }
    }
    let mut seen = std::collections::HashSet::with_capacity(out.len());
    out.retain(|t| seen.insert(t.clone()));
    Ok(out)
}

/// [`peer_revocation_targets`] for a peer whose chain (if any) is already verified: the same
/// targets in the same order, from what verification read (no token decoded again, each key's
/// thumbprint the one phase 6 computed). The chain's targets are shared, not copied: the
/// peer's own key, agent and task are the chain's holder's when it has one, and only a target
/// the chain does not hold is built.
pub fn verified_peer_revocation_targets(
    chain: Option<&VerifiedChain>,
    peer_id: &SpiffeId,
    peer_key: &PublicKey,
) -> Vec<Arc<RevocationTarget>> {
    let from_chain = chain.map_or(&[][..], VerifiedChain::revocation_targets);
    // The chain's target `is` names, shared; else `build`'s.
    let shared = |is: &dyn Fn(&RevocationTarget) -> bool, build: &dyn Fn() -> RevocationTarget| {
        match from_chain.iter().find(|t| is(t)) {
            Some(t) => Arc::clone(t),
            None => Arc::new(build()),
        }
    };
    let mut out = Vec::with_capacity(3 + from_chain.len());
    let thumbprint = peer_key.thumbprint_str();
    out.push(shared(
        &|t| matches!(t, RevocationTarget::Key(k) if k == thumbprint),
        &|| RevocationTarget::Key(thumbprint.to_owned()),
    ));
    if let Some(id) = peer_id.as_task_identity() {
        out.push(shared(
            &|t| matches!(t, RevocationTarget::Agent(a) if a.as_str() == id.agent_str()),
            &|| RevocationTarget::Agent(id.agent()),
        ));
        out.push(shared(
            &|t| matches!(t, RevocationTarget::Task(k) if k.as_str() == id.task_id_str()),
            &|| RevocationTarget::Task(id.task_id()),
        ));
    }
    // Duplicates found by comparison, each kept target shared: a chain has at most
    // 5 + 4 * MAX_DEPTH targets, so the quadratic scan is bounded (and cheaper than hashing).
    for t in from_chain {
        if !out.iter().any(|o| Arc::ptr_eq(o, t) || **o == **t) {
            out.push(Arc::clone(t));
        }
    }
    out
}

/// Whether `new` revokes `target` at `now` where `old` (the list of the same domain held
/// before it, if any) did not: the entries a new list adds, seen from one target.
pub fn newly_revokes(
    new: &RevocationList,
    old: Option<&RevocationList>,
    target: &RevocationTarget,
    now: u64,
) -> bool {
    new.revokes(target, now) && !old.is_some_and(|o| o.revokes(target, now))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::bundle::{BundleSet, TrustBundle};
    use crate::config::VerifierConfig;
    use crate::crypto::{AuthorityKey, TaskKey};
    use crate::error::ErrorCode;
    use crate::revocation::RevocationListBuilder;
    use crate::scope::Scope;
    use crate::token::{GrantBuilder, LinkBuilder};
    use crate::verifier::Verifier;
    use crate::{AgentId, Algorithm, TaskId, TrustDomain};

    const NOW: u64 = 1_767_225_600;

    struct Fixture {
        td: TrustDomain,
        grant_key: AuthorityKey,
        rev_key: AuthorityKey,
        ids: Vec<TaskIdentity>,
        keys: Vec<TaskKey>,
        chain: Chain,
    }

    /// A grant to a, delegated to b, then to c (depth 2), all in example.org.
    fn fixture() -> Fixture {
        let td = TrustDomain::parse("example.org").unwrap();
        let grant_key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let rev_key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let ids: Vec<TaskIdentity> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                TaskIdentity::parse(&format!("spiffe://example.org/agent/{n}/task/t1")).unwrap()
            })
            .collect();
        let keys: Vec<TaskKey> = (0..3)
            .map(|_| TaskKey::generate(Algorithm::Es256).unwrap())
            .collect();
        let grant = GrantBuilder::new(
            &td,
            &ids[0],
            keys[0].public_key(),
            Scope::parse("x:*").unwrap(),
        )
        .max_depth(2)
        .validity(NOW - 60, NOW - 60, NOW + 600)
        .jti("g1")
        .sign(&grant_key)
        .unwrap();
        let l1 = LinkBuilder::new(
            &grant,
            &ids[1],
            keys[1].public_key(),
            Scope::parse("x:*").unwrap(),
        )
        .validity(NOW - 30, NOW - 30, NOW + 300)
        .jti("l1")
        .sign(&keys[0])
        .unwrap();
        let chain = LinkBuilder::new(
            &l1,
            &ids[2],
            keys[2].public_key(),
            Scope::parse("x:y").unwrap(),
        )
        .validity(NOW - 30, NOW - 30, NOW + 300)
        .jti("l2")
        .sign(&keys[1])
        .unwrap();
        Fixture {
            td,
            grant_key,
            rev_key,
            ids,
            keys,
            chain,
        }
    }

    fn verifier(f: &Fixture, entry: Option<RevocationTarget>) -> Verifier {
        let mut set = BundleSet::new();
        set.insert(
            TrustBundle::new(f.td.clone(), 1)
                .add_grant_key(f.grant_key.public_key().clone())
                .add_revocation_key(f.rev_key.public_key().clone()),
        )
        .unwrap();
        let mut list = RevocationListBuilder::new(&f.td, 1, NOW - 10, NOW + 590);
        if let Some(t) = entry {
            list = list.entry(t, NOW + 600);
        }
        let own = SpiffeId::parse("spiffe://example.org/agent/c/task/t1").unwrap();
        let mut cfg = VerifierConfig::new(own, set);
        cfg.apply_revocation_list(&list.sign(&f.rev_key).unwrap())
            .unwrap();
        Verifier::new(cfg).unwrap()
    }

    /// Every target of every kind built from the fixture's names, keys and `jti`s, plus some
    /// that name nothing in it.
    fn candidates(f: &Fixture) -> Vec<RevocationTarget> {
        let mut out = Vec::new();
        let mut keys: Vec<String> = f.keys.iter().map(|k| k.public_key().thumbprint()).collect();
        keys.push(f.grant_key.public_key().thumbprint());
        keys.push(f.rev_key.public_key().thumbprint());
        out.extend(keys.into_iter().map(RevocationTarget::Key));
        let mut issuers: Vec<SpiffeId> = f.ids.iter().map(|i| i.as_spiffe_id().clone()).collect();
        issuers.push(f.td.id());
        for iss in &issuers {
            for jti in ["g1", "l1", "l2", "other"] {
                out.push(RevocationTarget::Jti {
                    iss: iss.clone(),
                    jti: jti.to_owned(),
                });
            }
        }
        for n in ["a", "b", "c", "d"] {
            out.push(RevocationTarget::Agent(
                AgentId::parse(&format!("spiffe://example.org/agent/{n}")).unwrap(),
            ));
        }
        out.push(RevocationTarget::Task(TaskId::parse("t1").unwrap()));
        out.push(RevocationTarget::Task(TaskId::parse("t2").unwrap()));
        out
    }

    #[test]
    fn every_entry_that_revokes_the_peer_is_one_of_its_targets() {
        let f = fixture();
        let peer = f.ids[2].as_spiffe_id();
        let key = f.keys[2].public_key();
        let targets = peer_revocation_targets(Some(f.chain.as_str()), peer, key).unwrap();
        assert!(verifier(&f, None)
            .verify_chain(f.chain.as_str(), peer, key, NOW)
            .is_ok());
        let mut revoking = 0;
        for c in candidates(&f) {
            let r = verifier(&f, Some(c.clone())).verify_chain(f.chain.as_str(), peer, key, NOW);
            if let Err(e) = r {
                assert_eq!(e.code(), ErrorCode::Revoked, "{c:?}");
                assert!(
                    targets.contains(&c),
                    "{c:?} revokes the peer but is not indexed"
                );
                revoking += 1;
            }
        }
        // Three keys and the grant key, three jtis, three agents, the task.
        assert_eq!(revoking, 11);
    }

    #[test]
    fn a_chain_less_peer_is_its_key_agent_and_task() {
        let f = fixture();
        let peer = f.ids[1].as_spiffe_id();
        let key = f.keys[1].public_key();
        let targets = peer_revocation_targets(None, peer, key).unwrap();
        assert_eq!(
            targets,
            vec![
                RevocationTarget::Key(key.thumbprint()),
                RevocationTarget::Agent(f.ids[1].agent()),
                RevocationTarget::Task(f.ids[1].task_id()),
            ]
        );
        for t in &targets {
            assert_eq!(
                verifier(&f, Some(t.clone()))
                    .check_peer_revocation(peer, key, NOW)
                    .unwrap_err()
                    .code(),
                ErrorCode::Revoked
            );
        }
    }

    fn unshared(targets: Vec<Arc<RevocationTarget>>) -> Vec<RevocationTarget> {
        targets.iter().map(|t| (**t).clone()).collect()
    }

    #[test]
    fn a_verified_peer_has_the_same_targets_as_its_compact_chain() {
        let f = fixture();
        let cache = std::sync::Arc::new(crate::cache::TokenCache::new(16));
        // A chain-less peer (b), then the chain's holder (c).
        for (who, chain) in [(1, None), (2, Some(f.chain.as_str()))] {
            let peer = f.ids[who].as_spiffe_id();
            let key = f.keys[who].public_key();
            let expected = peer_revocation_targets(chain, peer, key).unwrap();
            let plain = verifier(&f, None);
            let verified = chain.map(|c| plain.verify_chain(c, peer, key, NOW).unwrap());
            assert_eq!(
                unshared(verified_peer_revocation_targets(
                    verified.as_ref(),
                    peer,
                    key
                )),
                expected
            );
            // Twice through a verifier with a token cache: the second time from the cache.
            let cached = verifier(&f, None).with_cache(cache.clone());
            for _ in 0..2 {
                let v = chain.map(|c| cached.verify_chain(c, peer, key, NOW).unwrap());
                assert_eq!(
                    unshared(verified_peer_revocation_targets(v.as_ref(), peer, key)),
                    expected
                );
            }
        }
        assert!(cache.len() >= 3, "the chain's tokens were cached");
    }

    #[test]
    fn only_entries_the_held_list_lacks_are_new() {
        let f = fixture();
        let agent = RevocationTarget::Agent(f.ids[0].agent());
        let task = RevocationTarget::Task(f.ids[0].task_id());
        let old = RevocationList::verify(
            &RevocationListBuilder::new(&f.td, 1, NOW, NOW + 600)
                .entry(agent.clone(), NOW + 600)
                .entry(task.clone(), NOW - 1)
                .sign(&f.rev_key)
                .unwrap(),
            &{
                let mut s = BundleSet::new();
                s.insert(
                    TrustBundle::new(f.td.clone(), 1)
                        .add_revocation_key(f.rev_key.public_key().clone()),
                )
                .unwrap();
                s
            },
        )
        .unwrap();
        let new_list = |entries: &[(RevocationTarget, u64)]| {
            let mut b = RevocationListBuilder::new(&f.td, 2, NOW, NOW + 600);
            for (t, exp) in entries {
                b = b.entry(t.clone(), *exp);
            }
            let mut s = BundleSet::new();
            s.insert(
                TrustBundle::new(f.td.clone(), 1)
                    .add_revocation_key(f.rev_key.public_key().clone()),
            )
            .unwrap();
            RevocationList::verify(&b.sign(&f.rev_key).unwrap(), &s).unwrap()
        };
        let new = new_list(&[(agent.clone(), NOW + 600), (task.clone(), NOW + 600)]);
        assert!(
            !newly_revokes(&new, Some(&old), &agent, NOW),
            "already revoked"
        );
        assert!(
            newly_revokes(&new, Some(&old), &task, NOW),
            "the held entry had expired"
        );
        assert!(newly_revokes(&new, None, &agent, NOW), "no list was held");
        let expired = new_list(&[(task.clone(), NOW)]);
        assert!(!newly_revokes(&expired, Some(&old), &task, NOW));
    }

    /// Generated chains of depth 0 to 8 across two trust domains, agents and keys repeating
    /// along them: the targets shared from verification (plain, and twice through a token
    /// cache) are those read from the compact chain, and every entry of either domain's list
    /// that revokes the peer (the peer's key, agent or task; any `jti`, agent, task or key of any
    /// token) is one of them.
    #[test]
    fn generated_chains_share_every_target_that_revokes_them() {
        let tds = [
            TrustDomain::parse("example.org").unwrap(),
            TrustDomain::parse("other.org").unwrap(),
        ];
        let grant_key = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let rev_keys = [
            AuthorityKey::generate(Algorithm::Es256).unwrap(),
            AuthorityKey::generate(Algorithm::Es256).unwrap(),
        ];
        let mut set = BundleSet::new();
        set.insert(
            TrustBundle::new(tds[0].clone(), 1)
                .add_grant_key(grant_key.public_key().clone())
                .add_revocation_key(rev_keys[0].public_key().clone()),
        )
        .unwrap();
        set.insert(
            TrustBundle::new(tds[1].clone(), 1)
                .add_revocation_key(rev_keys[1].public_key().clone()),
        )
        .unwrap();
        let own = SpiffeId::parse("spiffe://example.org/agent/v/task/t9").unwrap();
        // A verifier holding a list of each domain, `entry` (if any) in domain `d`'s.
        let verifier = |entry: Option<(usize, &RevocationTarget)>| -> Option<Verifier> {
            let mut cfg = VerifierConfig::new(own.clone(), set.clone());
            for (d, td) in tds.iter().enumerate() {
                let mut list = RevocationListBuilder::new(td, 1, NOW - 10, NOW + 590);
                if let Some((_, t)) = entry.filter(|(e, _)| *e == d) {
                    list = list.entry(t.clone(), NOW + 600);
                }
                let signed = list.sign(&rev_keys[d]).ok()?;
                cfg.apply_revocation_list(&signed).ok()?;
            }
            Some(Verifier::new(cfg).unwrap())
        };
        let both = crate::audience::IdSet::new(tds.iter().map(TrustDomain::id).collect()).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
        };
        let (mut verified, mut cross) = (0, 0);
        let mut depths = std::collections::BTreeSet::new();
        for case in 0..100 {
            let depth = if case < 9 { case } else { next(9) };
            // Holders: domain, agent from a pool of three, one task; keys from a pool of four.
            let ids: Vec<TaskIdentity> = (0..=depth)
                .map(|i| {
                    let td = if i == 0 { 0 } else { next(2) };
                    TaskIdentity::parse(&format!(
                        "spiffe://{}/agent/p{}/task/t1",
                        tds[td].as_str(),
                        next(3)
                    ))
                    .unwrap()
                })
                .collect();
            let pool: Vec<TaskKey> = (0..4)
                .map(|_| TaskKey::generate(Algorithm::Es256).unwrap())
                .collect();
            let keys: Vec<&TaskKey> = (0..=depth).map(|_| &pool[next(4)]).collect();
            let scope = Scope::parse("x:*").unwrap();
            let Ok(mut chain) =
                GrantBuilder::new(&tds[0], &ids[0], keys[0].public_key(), scope.clone())
                    .max_depth(depth as u8)
                    .audience(crate::audience::IdSet::new(vec![own.clone()]).unwrap())
                    .may_delegate_to(both.clone())
                    .validity(NOW - 60, NOW - 60, NOW + 600)
                    .sign(&grant_key)
            else {
                continue;
            };
            let mut built = true;
            for i in 1..=depth {
                match LinkBuilder::new(&chain, &ids[i], keys[i].public_key(), scope.clone())
                    .validity(NOW - 30, NOW - 30, NOW + 300)
                    .sign(keys[i - 1])
                {
                    Ok(c) => chain = c,
                    Err(_) => {
                        built = false;
                        break;
                    }
                }
            }
            let (peer, key) = (ids[depth].as_spiffe_id(), keys[depth].public_key());
            let plain = verifier(None).unwrap();
            let Some(v) = built
                .then(|| plain.verify_chain(chain.as_str(), peer, key, NOW).ok())
                .flatten()
            else {
                continue;
            };
            verified += 1;
            depths.insert(depth);
            cross += usize::from(
                ids.iter()
                    .any(|i| i.as_spiffe_id().trust_domain_str() == tds[1].as_str()),
            );
            let compact = peer_revocation_targets(Some(chain.as_str()), peer, key).unwrap();
            assert_eq!(
                unshared(verified_peer_revocation_targets(Some(&v), peer, key)),
                compact,
                "depth {depth}"
            );
            let cache = std::sync::Arc::new(crate::cache::TokenCache::new(64));
            let cached = verifier(None).unwrap().with_cache(cache);
            for _ in 0..2 {
                let v = cached.verify_chain(chain.as_str(), peer, key, NOW).unwrap();
                assert_eq!(
                    unshared(verified_peer_revocation_targets(Some(&v), peer, key)),
                    compact,
                    "depth {depth}, cached"
                );
            }
            // Every entry naming something of the chain, in either domain's list.
            let mut candidates: Vec<RevocationTarget> = pool
                .iter()
                .map(|k| RevocationTarget::Key(k.public_key().thumbprint()))
                .collect();
            candidates.push(RevocationTarget::Key(grant_key.public_key().thumbprint()));
            candidates.push(RevocationTarget::Task(ids[0].task_id()));
            for id in &ids {
                candidates.push(RevocationTarget::Agent(id.agent()));
            }
            for (i, jti) in v.jtis.iter().enumerate() {
                let iss = if i == 0 {
                    tds[0].id()
                } else {
                    ids[i - 1].as_spiffe_id().clone()
                };
                candidates.push(RevocationTarget::Jti {
                    iss,
                    jti: jti.clone(),
                });
            }
            let mut revoking = 0;
            for c in &candidates {
                for d in 0..2 {
                    let Some(with) = verifier(Some((d, c))) else {
                        continue;
                    };
                    if let Err(e) = with.verify_chain(chain.as_str(), peer, key, NOW) {
                        assert_eq!(e.code(), ErrorCode::Revoked, "{c:?} in list {d}: {e}");
                        assert!(
                            compact.contains(c),
                            "depth {depth}: {c:?} revokes the peer but is not indexed"
                        );
                        revoking += 1;
                    }
                }
            }
            assert!(
                revoking >= 3 + 2 * depth,
                "depth {depth}: {revoking} entries revoke"
            );
        }
        assert!(
            verified >= 40 && cross >= 20 && depths.len() == 9,
            "{verified} chains verified, {cross} across domains, depths {depths:?}"
        );
    }
}
