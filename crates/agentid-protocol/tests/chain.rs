//! Chains built with the typed builders, verified end to end: one case per rule that a builder
//! can produce. Cases that need tokens no builder would sign live in spec/vectors.
#![cfg(test)]

use agentid_protocol::*;

const NOW: u64 = 1_767_225_600;

struct Domain {
    td: TrustDomain,
    grant_key: AuthorityKey,
    revocation_key: AuthorityKey,
}

impl Domain {
    fn new(td: &str, alg: Algorithm) -> Self {
        Self {
            td: TrustDomain::parse(td).unwrap(),
            grant_key: AuthorityKey::generate(alg).unwrap(),
            revocation_key: AuthorityKey::generate(alg).unwrap(),
        }
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::new(self.td.clone(), 1)
            .add_grant_key(self.grant_key.public_key().clone())
            .add_revocation_key(self.revocation_key.public_key().clone())
    }

    fn list(&self, seq: u64, targets: &[RevocationTarget]) -> String {
        let mut b = RevocationListBuilder::new(&self.td, seq, NOW - 10, NOW + 600);
        for t in targets {
            b = b.entry(t.clone(), NOW + 3600);
        }
        b.sign(self.grant_key_for_lists()).unwrap()
    }

    fn grant_key_for_lists(&self) -> &AuthorityKey {
        &self.revocation_key
    }
}

struct Agent {
    id: TaskIdentity,
    key: TaskKey,
}

fn agent(td: &TrustDomain, name: &str, task: &TaskId, alg: Algorithm) -> Agent {
    let a = AgentId::new(td, name).unwrap();
    Agent {
        id: TaskIdentity::new(&a, task).unwrap(),
        key: TaskKey::generate(alg).unwrap(),
    }
}

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

fn verifier_for(own: &SpiffeId, domains: &[&Domain], lists: &[String]) -> Verifier {
    let mut bundles = BundleSet::new();
    for d in domains {
        bundles.insert(d.bundle()).unwrap();
    }
    let mut cfg = VerifierConfig::new(own.clone(), bundles).enforce_limits(["requests"]);
    for l in lists {
        cfg.apply_revocation_list(l).unwrap();
    }
    Verifier::new(cfg).unwrap()
}

struct World {
    org: Domain,
    task: TaskId,
    planner: Agent,
    coder: Agent,
    tester: Agent,
    server: SpiffeId,
}

fn world(alg: Algorithm) -> World {
    let org = Domain::new("example.org", alg);
    let task = TaskId::generate().unwrap();
    let planner = agent(&org.td, "planner", &task, alg);
    let coder = agent(&org.td, "coder", &task, Algorithm::Ed25519);
    let tester = agent(&org.td, "tester", &task, Algorithm::Es256);
    let server = ServiceId::new(&org.td, "repo")
        .unwrap()
        .as_spiffe_id()
        .clone();
    World {
        org,
        task,
        planner,
        coder,
        tester,
        server,
    }
}

fn grant(w: &World, s: &str, depth: u8) -> Chain {
    GrantBuilder::new(
        &w.org.td,
        &w.planner.id,
        w.planner.key.public_key(),
        scope(s),
    )
    .max_depth(depth)
    .validity(NOW - 60, NOW - 60, NOW + 3600)
    .sign(&w.org.grant_key)
    .unwrap()
}

fn link(prev: &Chain, from: &Agent, to: &Agent, s: &str) -> Chain {
    LinkBuilder::new(prev, &to.id, to.key.public_key(), scope(s))
        .validity(NOW - 30, NOW - 30, NOW + 1800)
        .sign(&from.key)
        .unwrap()
}

#[test]
fn depth_two_chain_verifies_and_narrows() {
    for alg in [Algorithm::Es256, Algorithm::Ed25519] {
        let w = world(alg);
        let g = grant(&w, "repo:* issues:read", 2);
        let c1 = link(&g, &w.planner, &w.coder, "repo:read repo:write");
        let c2 = link(&c1, &w.coder, &w.tester, "repo:read");
        let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
        let r = v
            .verify_chain(
                c2.as_str(),
                w.tester.id.as_spiffe_id(),
                w.tester.key.public_key(),
                NOW,
            )
            .unwrap();
        assert_eq!(r.depth, 2);
        assert_eq!(r.holder, w.tester.id);
        assert_eq!(r.task, w.task);
        assert_eq!(r.scope, scope("repo:read"));
        assert_eq!(r.mode, Mode::Autonomous);
        assert_eq!(r.expires, NOW + 1800);
        assert_eq!(r.not_before, NOW - 30);
        let attested: Vec<bool> = r.actors.iter().map(|a| a.attested).collect();
        assert_eq!(
            attested,
            [true, false, true],
            "only the grant holder and the TLS peer are attested"
        );
        v.authorize(&r, &scope("repo:read")).unwrap();
        let e = v.authorize(&r, &scope("repo:write")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ScopeNotGranted);
        let e = v.authorize(&r, &scope("repo:*")).unwrap_err();
        assert_eq!(
            e.code(),
            ErrorCode::BadScope,
            "requested scopes are concrete"
        );
    }
}

#[test]
fn a_bare_grant_verifies_for_its_holder() {
    let w = world(Algorithm::Es256);
    let g = GrantBuilder::new(
        &w.org.td,
        &w.planner.id,
        w.planner.key.public_key(),
        scope("repo:read"),
    )
    .on_behalf_of(serde_json::json!({"format": "email", "email": "alice@example.com"}))
    .validity(NOW - 60, NOW - 60, NOW + 3600)
    .sign(&w.org.grant_key)
    .unwrap();
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    let r = v
        .verify_chain(
            g.as_str(),
            w.planner.id.as_spiffe_id(),
            w.planner.key.public_key(),
            NOW,
        )
        .unwrap();
    assert_eq!(r.mode, Mode::OnBehalfOf);
    assert_eq!(r.principal.unwrap()["email"], "alice@example.com");
    assert_eq!(r.actors.len(), 1);
}

fn expect_err(r: Result<VerifiedChain>, code: ErrorCode, index: Option<usize>) {
    let e = r.expect_err("verification must fail");
    assert_eq!((e.code(), e.index()), (code, index), "{e}");
}

#[test]
fn possession_and_holder_are_checked_against_the_tls_peer() {
    let w = world(Algorithm::Es256);
    let c = link(
        &grant(&w, "repo:read", 1),
        &w.planner,
        &w.coder,
        "repo:read",
    );
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    // The coder's chain presented by the tester's connection.
    expect_err(
        v.verify_chain(
            c.as_str(),
            w.tester.id.as_spiffe_id(),
            w.tester.key.public_key(),
            NOW,
        ),
        ErrorCode::PossessionMismatch,
        Some(1),
    );
    expect_err(
        v.verify_chain(
            c.as_str(),
            w.tester.id.as_spiffe_id(),
            w.coder.key.public_key(),
            NOW,
        ),
        ErrorCode::HolderMismatch,
        Some(1),
    );
}

#[test]
fn audience_must_cover_the_verifier() {
    let w = world(Algorithm::Es256);
    let other = ServiceId::new(&w.org.td, "payments").unwrap();
    let g = GrantBuilder::new(
        &w.org.td,
        &w.planner.id,
        w.planner.key.public_key(),
        scope("repo:read"),
    )
    .audience(IdSet::new(vec![other.as_spiffe_id().clone()]).unwrap())
    .validity(NOW - 60, NOW - 60, NOW + 3600)
    .sign(&w.org.grant_key)
    .unwrap();
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    expect_err(
        v.verify_chain(
            g.as_str(),
            w.planner.id.as_spiffe_id(),
            w.planner.key.public_key(),
            NOW,
        ),
        ErrorCode::AudienceMismatch,
        None,
    );
}

#[test]
fn revocation_cuts_every_chain_through_a_revoked_holder() {
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:*", 2);
    let c2 = link(
        &link(&g, &w.planner, &w.coder, "repo:read"),
        &w.coder,
        &w.tester,
        "repo:read",
    );
    let peer = (w.tester.id.as_spiffe_id(), w.tester.key.public_key());
    let cases = [
        (
            RevocationTarget::Key(w.coder.key.public_key().thumbprint()),
            Some(1),
        ),
        (
            RevocationTarget::Key(w.planner.key.public_key().thumbprint()),
            Some(0),
        ),
        (RevocationTarget::Agent(w.coder.id.agent()), Some(1)),
        (RevocationTarget::Task(w.task.clone()), Some(0)),
        (
            RevocationTarget::Jti {
                iss: w.org.td.id(),
                jti: jti_of(&g, 0),
            },
            Some(0),
        ),
    ];
    for (target, index) in cases {
        let v = verifier_for(
            &w.server,
            &[&w.org],
            &[w.org.list(2, std::slice::from_ref(&target))],
        );
        expect_err(
            v.verify_chain(c2.as_str(), peer.0, peer.1, NOW),
            ErrorCode::Revoked,
            index,
        );
    }
    // The peer certificate's own key.
    let v = verifier_for(
        &w.server,
        &[&w.org],
        &[w.org.list(
            2,
            &[RevocationTarget::Key(
                w.tester.key.public_key().thumbprint(),
            )],
        )],
    );
    expect_err(
        v.verify_chain(c2.as_str(), peer.0, peer.1, NOW),
        ErrorCode::Revoked,
        Some(2),
    );
}

/// Rule 6.3 for a peer that is the chain's last holder: phase 6 skips the peer's three questions
/// only when rules 6.2.2, 6.2.4 and 6.2.5 already asked them of the same list (the peer in the
/// authority's trust domain). A last holder of another trust domain is asked by its own
/// domain's list: a task entry there revokes it as the peer (rule 6.3.3, index `null`), although
/// that list never revokes the chain's task for an intermediate holder (rule 6.2.2).
#[test]
fn a_foreign_last_holder_is_revoked_as_the_peer_by_its_own_domains_task_entry() {
    let w = world(Algorithm::Es256);
    let partner = Domain::new("partner.example", Algorithm::Ed25519);
    let broker = agent(&partner.td, "broker", &w.task, Algorithm::Ed25519);
    let both = IdSet::new(vec![w.org.td.id(), partner.td.id()]).unwrap();
    let g = GrantBuilder::new(
        &w.org.td,
        &w.planner.id,
        w.planner.key.public_key(),
        scope("repo:*"),
    )
    .max_depth(2)
    .may_delegate_to(both)
    .validity(NOW - 60, NOW - 60, NOW + 3600)
    .sign(&w.org.grant_key)
    .unwrap();
    let to_broker = link(&g, &w.planner, &broker, "repo:read");
    let through_broker = link(&to_broker, &broker, &w.coder, "repo:read");
    let task = RevocationTarget::Task(w.task.clone());
    let lists = |org: &[RevocationTarget], partner_entries: &[RevocationTarget]| {
        [w.org.list(2, org), partner.list(2, partner_entries)]
    };
    let verify = |v: &Verifier, c: &Chain, peer: &Agent| {
        v.verify_chain(
            c.as_str(),
            peer.id.as_spiffe_id(),
            peer.key.public_key(),
            NOW,
        )
    };
    let cache = std::sync::Arc::new(TokenCache::new(16));
    for cached in [false, true] {
        let with = |v: Verifier| {
            if cached {
                v.with_cache(std::sync::Arc::clone(&cache))
            } else {
                v
            }
        };
        // The broker's own domain revokes the task: the broker as the peer is revoked.
        let v = with(verifier_for(
            &w.server,
            &[&w.org, &partner],
            &lists(&[], std::slice::from_ref(&task)),
        ));
        expect_err(verify(&v, &to_broker, &broker), ErrorCode::Revoked, None);
        // The same entry does not touch the chain through the broker to an example.org peer.
        verify(&v, &through_broker, &w.coder).unwrap();
        // Without the entry the broker's chain verifies; the authority's task entry revokes
        // the chain at its grant (rule 6.2.2), before the peer is looked at.
        let v = with(verifier_for(
            &w.server,
            &[&w.org, &partner],
            &lists(&[], &[]),
        ));
        verify(&v, &to_broker, &broker).unwrap();
        let v = with(verifier_for(
            &w.server,
            &[&w.org, &partner],
            &lists(std::slice::from_ref(&task), &[]),
        ));
        expect_err(verify(&v, &to_broker, &broker), ErrorCode::Revoked, Some(0));
    }
}

fn jti_of(chain: &Chain, i: usize) -> String {
    use base64::Engine as _;
    let tok = chain.tokens().nth(i).unwrap();
    let payload = tok.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["jti"].as_str().unwrap().to_owned()
}

#[test]
fn revocation_lists_fail_closed() {
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:read", 0);
    let peer = (w.planner.id.as_spiffe_id(), w.planner.key.public_key());
    // Missing.
    let v = verifier_for(&w.server, &[&w.org], &[]);
    expect_err(
        v.verify_chain(g.as_str(), peer.0, peer.1, NOW),
        ErrorCode::RevocationMissing,
        None,
    );
    // Stale: at next_update + skew exactly.
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    expect_err(
        v.verify_chain(g.as_str(), peer.0, peer.1, NOW + 600 + 60),
        ErrorCode::RevocationStale,
        None,
    );
    assert!(v
        .verify_chain(g.as_str(), peer.0, peer.1, NOW + 600 + 59)
        .is_ok());
    // The danger setting tolerates a missing list.
    let mut bundles = BundleSet::new();
    bundles.insert(w.org.bundle()).unwrap();
    let cfg =
        VerifierConfig::new(w.server.clone(), bundles).danger_accept_missing_or_stale_revocations();
    assert!(Verifier::new(cfg)
        .unwrap()
        .verify_chain(g.as_str(), peer.0, peer.1, NOW)
        .is_ok());
}

#[test]
fn an_older_revocation_list_is_refused() {
    let w = world(Algorithm::Es256);
    let mut bundles = BundleSet::new();
    bundles.insert(w.org.bundle()).unwrap();
    let mut cfg = VerifierConfig::new(w.server.clone(), bundles);
    cfg.apply_revocation_list(&w.org.list(5, &[])).unwrap();
    let e = cfg.apply_revocation_list(&w.org.list(4, &[])).unwrap_err();
    assert_eq!(e.code(), ErrorCode::SequenceRollback);
    cfg.apply_revocation_list(&w.org.list(5, &[])).unwrap();
}

#[test]
fn rotating_a_revocation_key_out_of_the_bundle_orphans_the_list_it_signed() {
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:read", 0);
    let peer = (w.planner.id.as_spiffe_id(), w.planner.key.public_key());
    let mut bundles = BundleSet::new();
    bundles.insert(w.org.bundle()).unwrap();
    let mut cfg = VerifierConfig::new(w.server.clone(), bundles);
    // Whoever stole the revocation key signs a list that revokes nothing, with the highest
    // `seq` and a `next_update` that never comes.
    let top = (1 << 53) - 1;
    let forged = RevocationListBuilder::new(&w.org.td, top, NOW - 10, top)
        .sign(&w.org.revocation_key)
        .unwrap();
    cfg.apply_revocation_list(&forged).unwrap();
    // A bundle change that keeps the key keeps the list as it is.
    cfg.insert_bundle_at(w.org.bundle(), NOW).unwrap();
    let held = cfg.revocation_list(&w.org.td).unwrap();
    assert_eq!((held.seq(), held.is_orphaned()), (top, false));
    // The operator rotates the stolen key out of the bundle (SECURITY.md's remedy).
    let new_key = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let rotated = TrustBundle::new(w.org.td.clone(), 2)
        .add_grant_key(w.org.grant_key.public_key().clone())
        .add_revocation_key(new_key.public_key().clone());
    let mut at_once = cfg.clone();
    cfg.insert_bundle_at(rotated.clone(), NOW).unwrap();
    // The list that key signed is due again from the change: stale at the skew after it.
    let held = cfg.revocation_list(&w.org.td).unwrap();
    assert_eq!(
        (held.seq(), held.is_orphaned(), held.next_update()),
        (top, true, NOW)
    );
    let v = Verifier::new(cfg.clone()).unwrap();
    assert!(v.verify_chain(g.as_str(), peer.0, peer.1, NOW + 59).is_ok());
    expect_err(
        v.verify_chain(g.as_str(), peer.0, peer.1, NOW + 60),
        ErrorCode::RevocationStale,
        None,
    );
    // Without a time, the change makes it stale at once.
    at_once.insert_bundle(rotated).unwrap();
    expect_err(
        Verifier::new(at_once)
            .unwrap()
            .verify_chain(g.as_str(), peer.0, peer.1, NOW),
        ErrorCode::RevocationStale,
        None,
    );
    // The CA's next list, signed with the new key, replaces it although its `seq` is below the
    // forged one's, and its revocation holds.
    let agent = w.planner.id.agent();
    let genuine = RevocationListBuilder::new(&w.org.td, 7, NOW - 10, NOW + 600)
        .revoke_agent(&agent, NOW + 3600)
        .sign(&new_key)
        .unwrap();
    cfg.apply_revocation_list(&genuine).unwrap();
    let held = cfg.revocation_list(&w.org.td).unwrap();
    assert_eq!((held.seq(), held.is_orphaned()), (7, false));
    let v = Verifier::new(cfg.clone()).unwrap();
    expect_err(
        v.verify_chain(g.as_str(), peer.0, peer.1, NOW),
        ErrorCode::Revoked,
        Some(0),
    );
    // From then on, lists are ordered again.
    let older = RevocationListBuilder::new(&w.org.td, 6, NOW - 10, NOW + 600)
        .sign(&new_key)
        .unwrap();
    let e = cfg.apply_revocation_list(&older).unwrap_err();
    assert_eq!(e.code(), ErrorCode::SequenceRollback);
}

#[test]
fn a_federated_bundle_never_authorizes_its_authority() {
    let w = world(Algorithm::Es256);
    let partner = Domain::new("partner.example", Algorithm::Es256);
    let p_task = TaskId::generate().unwrap();
    let p_agent = agent(&partner.td, "helper", &p_task, Algorithm::Es256);
    let g = GrantBuilder::new(
        &partner.td,
        &p_agent.id,
        p_agent.key.public_key(),
        scope("repo:read"),
    )
    .audience(IdSet::new(vec![w.org.td.id()]).unwrap())
    .validity(NOW - 60, NOW - 60, NOW + 3600)
    .sign(&partner.grant_key)
    .unwrap();
    let lists = [w.org.list(1, &[]), partner.list(1, &[])];
    let v = verifier_for(&w.server, &[&w.org, &partner], &lists);
    expect_err(
        v.verify_chain(
            g.as_str(),
            p_agent.id.as_spiffe_id(),
            p_agent.key.public_key(),
            NOW,
        ),
        ErrorCode::AuthorityNotAccepted,
        Some(0),
    );
    // Accepted for `repo:*` only: verification passes, authorization is per request.
    let mut bundles = BundleSet::new();
    bundles.insert(w.org.bundle()).unwrap();
    bundles.insert(partner.bundle()).unwrap();
    let mut cfg = VerifierConfig::new(w.server.clone(), bundles).authority_policy(
        AuthorityPolicy::own_domain(&w.org.td).allow(partner.td.clone(), scope("issues:*")),
    );
    for l in &lists {
        cfg.apply_revocation_list(l).unwrap();
    }
    let v = Verifier::new(cfg).unwrap();
    let r = v
        .verify_chain(
            g.as_str(),
            p_agent.id.as_spiffe_id(),
            p_agent.key.public_key(),
            NOW,
        )
        .unwrap();
    let e = v.authorize(&r, &scope("repo:read")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AuthorityScopeDenied);
    // Without any bundle for the authority the grant is untrusted.
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    expect_err(
        v.verify_chain(
            g.as_str(),
            p_agent.id.as_spiffe_id(),
            p_agent.key.public_key(),
            NOW,
        ),
        ErrorCode::UntrustedAuthority,
        Some(0),
    );
}

#[test]
fn builders_refuse_what_verifiers_refuse() {
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:read", 1);
    let try_link = |s: &str, from: &Agent, to: &Agent, exp: u64| {
        LinkBuilder::new(&g, &to.id, to.key.public_key(), scope(s))
            .validity(NOW, NOW, exp)
            .sign(&from.key)
    };
    let code = |r: Result<Chain>| r.unwrap_err().code();
    assert_eq!(
        code(try_link("repo:write", &w.planner, &w.coder, NOW + 60)),
        ErrorCode::ScopeEscalation
    );
    assert_eq!(
        code(try_link("repo:read", &w.planner, &w.coder, NOW + 7200)),
        ErrorCode::ExpiryExtended
    );
    assert_eq!(
        code(try_link("repo:read", &w.coder, &w.tester, NOW + 60)),
        ErrorCode::PossessionMismatch
    );
    assert_eq!(
        code(try_link("repo:read", &w.planner, &w.planner, NOW + 60)),
        ErrorCode::SelfDelegation
    );
    let sealed = link(&g, &w.planner, &w.coder, "repo:read");
    let r = LinkBuilder::new(
        &sealed,
        &w.tester.id,
        w.tester.key.public_key(),
        scope("repo:read"),
    )
    .validity(NOW, NOW, NOW + 60)
    .sign(&w.coder.key);
    assert_eq!(code(r), ErrorCode::DepthExceeded);
}

/// Every widening case of spec/vectors/attenuation.json that a builder could be asked to sign:
/// `LinkBuilder::sign` refuses it with the code the verifier gives that vector.
#[test]
fn builder_refuses_every_widening_with_the_verifiers_code() {
    let w = world(Algorithm::Es256);
    let partner = TrustDomain::parse("partner.example").unwrap();
    let outsider = agent(&partner, "outsider", &w.task, Algorithm::Es256);
    let limits = |n: u64| Limits::new([("requests".to_owned(), n)].into_iter().collect()).unwrap();
    let ids =
        |v: &[&str]| IdSet::new(v.iter().map(|s| SpiffeId::parse(s).unwrap()).collect()).unwrap();
    let coder_agent = w.coder.id.agent();
    let g = GrantBuilder::new(
        &w.org.td,
        &w.planner.id,
        w.planner.key.public_key(),
        scope("files:* repo:read"),
    )
    .audience(IdSet::single(w.server.clone()).unwrap())
    .limits(limits(10))
    .max_depth(3)
    .validity(NOW - 60, NOW - 60, NOW + 3600)
    .sign(&w.org.grant_key)
    .unwrap();
    let base = |to: &Agent| {
        LinkBuilder::new(&g, &to.id, to.key.public_key(), scope("files:read")).validity(
            NOW,
            NOW,
            NOW + 600,
        )
    };
    let code = |r: Result<Chain>| r.map(|_| ()).unwrap_err().code();
    let cases: Vec<(&str, Result<Chain>, ErrorCode)> = vec![
        (
            "aud widened to the whole trust domain",
            base(&w.coder)
                .audience(ids(&["spiffe://example.org"]))
                .sign(&w.planner.key),
            ErrorCode::AudienceEscalation,
        ),
        (
            "aud adding another trust domain",
            base(&w.coder)
                .audience(ids(&[w.server.as_str(), "spiffe://partner.example"]))
                .sign(&w.planner.key),
            ErrorCode::AudienceEscalation,
        ),
        (
            "limit raised from 10 to 11",
            base(&w.coder).limits(limits(11)).sign(&w.planner.key),
            ErrorCode::LimitEscalation,
        ),
        (
            "delegatee outside the default may_delegate_to (the authority's domain)",
            base(&outsider).sign(&w.planner.key),
            ErrorCode::DelegateeDenied,
        ),
        (
            "self-delegation",
            base(&w.planner).sign(&w.planner.key),
            ErrorCode::SelfDelegation,
        ),
        (
            "max_depth equal to the predecessor's",
            base(&w.coder).max_depth(3).sign(&w.planner.key),
            ErrorCode::DepthExceeded,
        ),
        (
            "scope token not covered",
            LinkBuilder::new(
                &g,
                &w.coder.id,
                w.coder.key.public_key(),
                scope("repo:write"),
            )
            .validity(NOW, NOW, NOW + 600)
            .sign(&w.planner.key),
            ErrorCode::ScopeEscalation,
        ),
        (
            "`files:*` does not cover `files`",
            LinkBuilder::new(&g, &w.coder.id, w.coder.key.public_key(), scope("files"))
                .validity(NOW, NOW, NOW + 600)
                .sign(&w.planner.key),
            ErrorCode::ScopeEscalation,
        ),
        (
            "scope widened to `*`",
            LinkBuilder::new(&g, &w.coder.id, w.coder.key.public_key(), scope("*"))
                .validity(NOW, NOW, NOW + 600)
                .sign(&w.planner.key),
            ErrorCode::ScopeEscalation,
        ),
        (
            "exp one second past the predecessor's",
            base(&w.coder)
                .validity(NOW, NOW, NOW + 3601)
                .sign(&w.planner.key),
            ErrorCode::ExpiryExtended,
        ),
        (
            "nbf after exp",
            base(&w.coder)
                .validity(NOW, NOW + 601, NOW + 600)
                .sign(&w.planner.key),
            ErrorCode::BadValidity,
        ),
    ];
    for (name, result, expected) in cases {
        assert_eq!(code(result), expected, "{name}");
    }

    // may_delegate_to narrowed to one agent constrains the next link, and cannot be widened back.
    let c1 = base(&w.coder)
        .may_delegate_to(IdSet::single(coder_agent.as_spiffe_id().clone()).unwrap())
        .max_depth(2)
        .sign(&w.planner.key)
        .unwrap();
    let next = |to: &Agent| {
        LinkBuilder::new(&c1, &to.id, to.key.public_key(), scope("files:read")).validity(
            NOW,
            NOW,
            NOW + 300,
        )
    };
    assert_eq!(
        code(next(&w.tester).sign(&w.coder.key)),
        ErrorCode::DelegateeDenied,
        "a link's may_delegate_to constrains the next link"
    );
    let coder2 = Agent {
        id: TaskIdentity::new(&coder_agent, &TaskId::parse("other").unwrap()).unwrap(),
        key: TaskKey::generate(Algorithm::Es256).unwrap(),
    };
    assert_eq!(
        code(next(&coder2).sign(&w.coder.key)),
        ErrorCode::TaskMismatch,
        "a delegatee of another task"
    );
    assert_eq!(
        code(
            next(&w.tester)
                .may_delegate_to(ids(&["spiffe://example.org"]))
                .sign(&w.coder.key)
        ),
        ErrorCode::DelegationEscalation,
        "may_delegate_to widened from one agent to the whole domain"
    );

    // What the builder signs, the verifier accepts.
    let ok = base(&w.coder)
        .audience(IdSet::single(w.server.clone()).unwrap())
        .limits(limits(10))
        .max_depth(2)
        .sign(&w.planner.key)
        .unwrap();
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    v.verify_chain(
        ok.as_str(),
        w.coder.id.as_spiffe_id(),
        w.coder.key.public_key(),
        NOW,
    )
    .unwrap();
}

#[test]
fn limits_are_ceilings_and_must_be_enforced() {
    let w = world(Algorithm::Es256);
    let limits = |n: u64| Limits::new([("requests".to_owned(), n)].into_iter().collect()).unwrap();
    let g = GrantBuilder::new(
        &w.org.td,
        &w.planner.id,
        w.planner.key.public_key(),
        scope("repo:read"),
    )
    .limits(limits(100))
    .max_depth(1)
    .validity(NOW - 60, NOW - 60, NOW + 3600)
    .sign(&w.org.grant_key)
    .unwrap();
    let c = LinkBuilder::new(
        &g,
        &w.coder.id,
        w.coder.key.public_key(),
        scope("repo:read"),
    )
    .limits(limits(10))
    .validity(NOW, NOW, NOW + 60)
    .sign(&w.planner.key)
    .unwrap();
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    let r = v
        .verify_chain(
            c.as_str(),
            w.coder.id.as_spiffe_id(),
            w.coder.key.public_key(),
            NOW,
        )
        .unwrap();
    assert_eq!(r.limits.get("requests"), Some(10));
    let amounts = |n: u64| [("requests".to_owned(), n)].into_iter().collect();
    v.authorize_with_limits(&r, &scope("repo:read"), &amounts(10))
        .unwrap();
    let e = v
        .authorize_with_limits(&r, &scope("repo:read"), &amounts(11))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    // Section 3.3: an amount above 2^53 - 1 is not a valid request (`bad_config`), not a value
    // compared with the ceiling, and it is refused even where no ceiling constrains it.
    for (name, n) in [("requests", 1u64 << 53), ("requests", u64::MAX)] {
        let e = v
            .authorize_with_limits(
                &r,
                &scope("repo:read"),
                &[(name.to_owned(), n)].into_iter().collect(),
            )
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadConfig, "{n}");
    }
    // 2^53 - 1 is a valid amount: compared with the ceiling.
    let e = v
        .authorize_with_limits(&r, &scope("repo:read"), &amounts((1 << 53) - 1))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    // A verifier that does not enforce `requests` refuses the chain.
    let mut bundles = BundleSet::new();
    bundles.insert(w.org.bundle()).unwrap();
    let mut cfg = VerifierConfig::new(w.server.clone(), bundles);
    cfg.apply_revocation_list(&w.org.list(1, &[])).unwrap();
    let v = Verifier::new(cfg).unwrap();
    expect_err(
        v.verify_chain(
            c.as_str(),
            w.coder.id.as_spiffe_id(),
            w.coder.key.public_key(),
            NOW,
        ),
        ErrorCode::UnsupportedLimit,
        Some(0),
    );
}

#[test]
fn bundles_round_trip_and_refuse_rollback() {
    let w = world(Algorithm::Ed25519);
    let b = w.org.bundle().with_refresh_hint(300);
    let parsed = TrustBundle::parse(&w.org.td, b.to_json().as_bytes()).unwrap();
    assert_eq!(parsed, b);
    let mut set = BundleSet::new();
    set.insert(TrustBundle::new(w.org.td.clone(), 7)).unwrap();
    let e = set
        .insert(TrustBundle::new(w.org.td.clone(), 6))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SequenceRollback);
}

#[test]
fn an_empty_bundle_trusts_nothing() {
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:read", 0);
    let mut bundles = BundleSet::new();
    bundles
        .insert(TrustBundle::new(w.org.td.clone(), 1))
        .unwrap();
    let v = Verifier::new(
        VerifierConfig::new(w.server.clone(), bundles).danger_accept_missing_or_stale_revocations(),
    )
    .unwrap();
    expect_err(
        v.verify_chain(
            g.as_str(),
            w.planner.id.as_spiffe_id(),
            w.planner.key.public_key(),
            NOW,
        ),
        ErrorCode::UntrustedAuthority,
        Some(0),
    );
}

#[test]
fn hop_proofs_bind_the_connection_and_the_chain() {
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:read", 0);
    let client = w.planner.id.as_spiffe_id();
    let cb = [7u8; 32];
    let proof = ProofBuilder::new(client, &w.server, Role::Client, cb, NOW, NOW + 30)
        .chain(g.as_str())
        .sign(&w.planner.key)
        .unwrap();
    let ctx = ProofContext {
        presenter_id: client,
        presenter_key: w.planner.key.public_key(),
        verifier_id: &w.server,
        role: Role::Client,
        exporter: cb,
        now: NOW,
        skew: 60,
        chain: Some(g.as_str()),
        client_proof: None,
    };
    verify_proof(&proof, &ctx).unwrap();
    let code = |ctx: ProofContext<'_>| verify_proof(&proof, &ctx).unwrap_err().code();
    assert_eq!(
        code(ProofContext {
            exporter: [8u8; 32],
            ..ctx
        }),
        ErrorCode::ChannelBindingMismatch
    );
    assert_eq!(
        code(ProofContext { chain: None, ..ctx }),
        ErrorCode::ChainHashMismatch
    );
    assert_eq!(
        code(ProofContext {
            verifier_id: client,
            ..ctx
        }),
        ErrorCode::AudienceMismatch
    );
    assert_eq!(
        code(ProofContext {
            now: NOW + 30 + 60,
            ..ctx
        }),
        ErrorCode::Expired
    );
    assert_eq!(
        code(ProofContext {
            presenter_key: w.coder.key.public_key(),
            ..ctx
        }),
        ErrorCode::AlgMismatch
    );
    assert_eq!(
        code(ProofContext {
            presenter_key: w.tester.key.public_key(),
            ..ctx
        }),
        ErrorCode::BadSignature
    );
    // The server answers with `rth`.
    let sp = ProofBuilder::new(&w.server, client, Role::Server, [9u8; 32], NOW, NOW + 30)
        .responding_to(&proof)
        .sign(&w.tester.key)
        .unwrap();
    let sctx = ProofContext {
        presenter_id: &w.server,
        presenter_key: w.tester.key.public_key(),
        verifier_id: client,
        role: Role::Server,
        exporter: [9u8; 32],
        now: NOW,
        skew: 60,
        chain: None,
        client_proof: Some(&proof),
    };
    verify_proof(&sp, &sctx).unwrap();
    let e = verify_proof(
        &sp,
        &ProofContext {
            client_proof: Some("x.y.z"),
            ..sctx
        },
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResponseHashMismatch);
    // A client proof verified as a server proof lacks `rth`.
    let e = verify_proof(
        &proof,
        &ProofContext {
            role: Role::Server,
            client_proof: Some(&proof),
            chain: Some(g.as_str()),
            ..ctx
        },
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MissingClaim);
}

#[test]
fn the_token_cache_skips_only_signatures_and_claims() {
    use std::sync::Arc;
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:*", 2);
    let c2 = link(
        &link(&g, &w.planner, &w.coder, "repo:read"),
        &w.coder,
        &w.tester,
        "repo:read",
    );
    let peer = (w.tester.id.as_spiffe_id(), w.tester.key.public_key());
    let cache = Arc::new(TokenCache::new(64));
    let v =
        verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]).with_cache(Arc::clone(&cache));
    let first = v.verify_chain(c2.as_str(), peer.0, peer.1, NOW).unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(
        v.verify_chain(c2.as_str(), peer.0, peer.1, NOW).unwrap(),
        first
    );
    // Time, possession and revocation are evaluated on every use.
    expect_err(
        v.verify_chain(c2.as_str(), peer.0, peer.1, NOW + 7200),
        ErrorCode::Expired,
        Some(0),
    );
    expect_err(
        v.verify_chain(c2.as_str(), peer.0, w.coder.key.public_key(), NOW),
        ErrorCode::PossessionMismatch,
        Some(2),
    );
    let revoked = verifier_for(
        &w.server,
        &[&w.org],
        &[w.org
            .list(2, &[RevocationTarget::Agent(w.coder.id.agent())])],
    )
    .with_cache(Arc::clone(&cache));
    expect_err(
        revoked.verify_chain(c2.as_str(), peer.0, peer.1, NOW),
        ErrorCode::Revoked,
        Some(1),
    );
    // A grant hit still needs its key in the current bundle.
    let mut bundles = BundleSet::new();
    bundles
        .insert(
            TrustBundle::new(w.org.td.clone(), 2)
                .add_revocation_key(w.org.revocation_key.public_key().clone()),
        )
        .unwrap();
    let mut cfg = VerifierConfig::new(w.server.clone(), bundles);
    cfg.apply_revocation_list(&w.org.list(1, &[])).unwrap();
    let rotated = Verifier::new(cfg).unwrap().with_cache(Arc::clone(&cache));
    expect_err(
        rotated.verify_chain(c2.as_str(), peer.0, peer.1, NOW),
        ErrorCode::UntrustedAuthority,
        Some(0),
    );
    // The cache is bounded.
    let small = Arc::new(TokenCache::new(2));
    let v =
        verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]).with_cache(Arc::clone(&small));
    v.verify_chain(c2.as_str(), peer.0, peer.1, NOW).unwrap();
    assert_eq!(small.len(), 2);
}

/// A warm token cache (phase 2 takes a cached token's header from it) gives every chain built
/// from cached and altered tokens the verdict, code and index of a verifier without a cache.
#[test]
fn a_warm_cache_changes_no_verdict_code_or_index() {
    use std::sync::Arc;
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:*", 2);
    let l1 = link(&g, &w.planner, &w.coder, "repo:read");
    let c2 = link(&l1, &w.coder, &w.tester, "repo:read");
    let peer = (w.tester.id.as_spiffe_id(), w.tester.key.public_key());
    let cache = Arc::new(TokenCache::new(64));
    let cached =
        verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]).with_cache(Arc::clone(&cache));
    let plain = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    cached
        .verify_chain(c2.as_str(), peer.0, peer.1, NOW)
        .unwrap();
    assert_eq!(cache.len(), 3);
    let tokens: Vec<String> = c2.as_str().split('~').map(str::to_owned).collect();
    let base64_url = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    let b64 = |s: &str| base64_url(s.as_bytes());
    // Each token with a header of the wrong kind, one with a bad header, and a bad signature.
    let mut variants: Vec<Vec<String>> = vec![
        vec![tokens[0].clone(), tokens[0].clone()],
        vec![tokens[1].clone(), tokens[2].clone()],
        vec![tokens[0].clone(), tokens[2].clone(), tokens[1].clone()],
        vec![tokens[0].clone(), tokens[1].clone(), tokens[1].clone()],
    ];
    for i in 0..tokens.len() {
        for header in [
            r#"{"alg":"ES256","typ":"wrong"}"#,
            r#"{"alg":"ES256","typ":"agentid-link+jwt"}"#,
            "{",
        ] {
            let mut t = tokens.clone();
            let rest = t[i].split_once('.').unwrap().1.to_owned();
            t[i] = format!("{}.{rest}", b64(header));
            variants.push(t);
        }
        let mut t = tokens.clone();
        let (head, _) = t[i].rsplit_once('.').unwrap();
        t[i] = format!("{head}.{}", base64_url(&[7u8; 64]));
        variants.push(t);
    }
    for v in variants {
        let chain = v.join("~");
        let outcome = |r: Result<VerifiedChain>| r.map_err(|e| (e.code(), e.index()));
        assert_eq!(
            outcome(cached.verify_chain(&chain, peer.0, peer.1, NOW)),
            outcome(plain.verify_chain(&chain, peer.0, peer.1, NOW)),
            "{chain}"
        );
    }
}

#[test]
fn verifier_configuration_is_checked() {
    let w = world(Algorithm::Es256);
    let code = |cfg: VerifierConfig| Verifier::new(cfg).unwrap_err().code();
    // A verifier is a task or a service, never a whole trust domain or an agent.
    for own in ["spiffe://example.org", "spiffe://example.org/agent/planner"] {
        let cfg = VerifierConfig::new(SpiffeId::parse(own).unwrap(), BundleSet::new());
        assert_eq!(code(cfg), ErrorCode::BadConfig, "{own}");
    }
    let cfg = VerifierConfig::new(w.server.clone(), BundleSet::new()).enforce_limits(["Bad Name"]);
    assert_eq!(code(cfg), ErrorCode::BadConfig);
    assert_eq!(
        VerifierConfig::new(w.server.clone(), BundleSet::new())
            .skew(121)
            .unwrap_err()
            .code(),
        ErrorCode::BadConfig
    );
}

#[test]
fn a_bundle_authority_must_be_one_der_certificate() {
    let w = world(Algorithm::Es256);
    let mut json: serde_json::Value = serde_json::from_str(&w.org.bundle().to_json()).unwrap();
    let jwk = w.org.grant_key.public_key().to_jwk();
    let mut entry = jwk.as_object().unwrap().clone();
    entry.remove("alg");
    entry.insert("use".into(), "x509-svid".into());
    for junk in ["AAAA", "MAA=", "MAMBAgM="] {
        entry.insert("x5c".into(), serde_json::json!([junk]));
        json["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::Value::Object(entry.clone()));
        let e = TrustBundle::parse(&w.org.td, json.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadBundle, "{junk}");
        json["keys"].as_array_mut().unwrap().pop();
    }
}

/// Phase 2 takes a link's header from the link before it when the header bytes are the same:
/// a link whose header differs (even by one byte) is still parsed, and its failure keeps its
/// code and index, whether the links before it share a header or not.
#[test]
fn a_link_header_shared_with_the_link_before_decides_nothing_for_another() {
    let w = world(Algorithm::Es256);
    // Both links signed with ES256 keys: the same header bytes.
    let reviewer = agent(&w.org.td, "reviewer", &w.task, Algorithm::Es256);
    let g = grant(&w, "repo:*", 2);
    let l1 = link(&g, &w.planner, &w.tester, "repo:read");
    let c2 = link(&l1, &w.tester, &reviewer, "repo:read");
    let peer = (reviewer.id.as_spiffe_id(), reviewer.key.public_key());
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    let tokens: Vec<String> = c2.as_str().split('~').map(str::to_owned).collect();
    assert_eq!(
        tokens[1].split_once('.').unwrap().0,
        tokens[2].split_once('.').unwrap().0,
        "the links share a header"
    );
    v.verify_chain(c2.as_str(), peer.0, peer.1, NOW).unwrap();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes())
    };
    let outcome = |chain: &str| {
        v.verify_chain(chain, peer.0, peer.1, NOW)
            .map(|_| ())
            .map_err(|e| (e.code(), e.index()))
    };
    for (header, code) in [
        (r#"{"alg":"ES256","typ":"wrong"}"#, ErrorCode::BadTyp),
        (
            r#"{"alg":"ES256","typ":"agentid-link+jwt","kid":"k"}"#,
            ErrorCode::BadHeader,
        ),
        (
            r#"{"alg":"none","typ":"agentid-link+jwt"}"#,
            ErrorCode::UnsupportedAlg,
        ),
        ("{", ErrorCode::BadHeader),
        // The same members in another order: valid, but other bytes (a bad signature then).
        (
            r#"{"typ":"agentid-link+jwt","alg":"ES256"}"#,
            ErrorCode::BadSignature,
        ),
    ] {
        for i in [1usize, 2] {
            let mut t = tokens.clone();
            let rest = t[i].split_once('.').unwrap().1.to_owned();
            t[i] = format!("{}.{rest}", b64(header));
            assert_eq!(
                outcome(&t.join("~")),
                Err((code, Some(i))),
                "{header} at {i}"
            );
        }
    }
}

/// Rule 1.1 (a chain is at most 64 KiB) for builders: nine tokens of up to 8 KiB each can add up
/// to more than the cap, so `LinkBuilder::sign` must refuse the link that would cross it
/// (`chain_too_large`, the verifier's code) rather than return a `Chain` that is not well framed
/// and that every verifier refuses.
#[test]
fn link_builder_never_returns_a_chain_over_the_size_cap() {
    let w = world(Algorithm::Es256);
    // 21 tokens of 255 bytes: each token of the chain is close to, but under, 8 KiB.
    let s = (0..21)
        .map(|i| {
            format!(
                "{i:02}{}:{}:{}:{}",
                "x".repeat(62),
                "x".repeat(64),
                "x".repeat(64),
                "x".repeat(60)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut chain = grant(&w, &s, 8);
    assert!(chain.as_str().len() > 7000, "{}", chain.as_str().len());
    let holders = [&w.planner, &w.coder];
    let mut refused = None;
    for i in 0..8 {
        let (from, to) = (holders[i % 2], holders[(i + 1) % 2]);
        let r = LinkBuilder::new(&chain, &to.id, to.key.public_key(), scope(&s))
            .validity(NOW - 30, NOW - 30, NOW + 1800)
            .sign(&from.key);
        match r {
            Ok(c) => {
                assert!(
                    c.as_str().len() <= caps::MAX_CHAIN_BYTES,
                    "link {}: the builder returned a chain of {} bytes",
                    i + 1,
                    c.as_str().len()
                );
                assert!(Chain::parse_unverified(c.as_str()).is_ok());
                chain = c;
            }
            Err(e) => {
                refused = Some((i + 1, e.code()));
                break;
            }
        }
    }
    assert_eq!(refused.map(|r| r.1), Some(ErrorCode::ChainTooLarge));
    // What was returned before the refusal verifies.
    let holder = holders[chain.depth() % 2];
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    let r = v
        .verify_chain(
            chain.as_str(),
            holder.id.as_spiffe_id(),
            holder.key.public_key(),
            NOW,
        )
        .unwrap();
    assert_eq!(r.depth, chain.depth());
}

/// Section 3.3: every time claim is an integer in [0, 2^53 - 1] (else `bad_claim` in step
/// 3.c.5). `GrantBuilder::sign` refuses a validity outside that range, with the verifier's code,
/// rather than sign a grant no verifier accepts.
#[test]
fn grant_builder_refuses_times_outside_the_integer_range() {
    let w = world(Algorithm::Es256);
    let max = caps::MAX_LIMIT_VALUE; // 2^53 - 1, the range of every integer claim
    for (iat, nbf, exp) in [(max - 30, max - 30, max + 30), (max + 1, max + 1, max + 60)] {
        let r = GrantBuilder::new(
            &w.org.td,
            &w.planner.id,
            w.planner.key.public_key(),
            scope("repo:read"),
        )
        .validity(iat, nbf, exp)
        .sign(&w.org.grant_key);
        match r {
            Err(e) => assert_eq!(e.code(), ErrorCode::BadClaim, "{exp}: {e}"),
            Ok(g) => {
                // What was signed: the verifier's verdict at a valid `now`.
                let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
                let got = v.verify_chain(
                    g.as_str(),
                    w.planner.id.as_spiffe_id(),
                    w.planner.key.public_key(),
                    max - 30,
                );
                panic!(
                    "exp {exp}: signed a grant the verifier gives {:?}",
                    got.map(drop).map_err(|e| e.code())
                );
            }
        }
    }
}

/// Section 3.3: `now` is an input of verification in [0, 2^53 - 1]; `now` of 2^53 "is not a
/// valid input (`bad_config`), not a value to be computed with" (vectors
/// `input-now-max-safe-integer` and `input-now-above-max-safe-integer`). The verifier's own
/// API gives the vectors' verdicts, with and without a chain.
#[test]
fn now_outside_the_integer_range_is_bad_config() {
    let w = world(Algorithm::Es256);
    let g = grant(&w, "repo:read", 0);
    let v = verifier_for(&w.server, &[&w.org], &[w.org.list(1, &[])]);
    let max = caps::MAX_LIMIT_VALUE; // 2^53 - 1
    let at = |now: u64| {
        v.verify_chain(
            g.as_str(),
            w.planner.id.as_spiffe_id(),
            w.planner.key.public_key(),
            now,
        )
    };
    expect_err(at(max), ErrorCode::Expired, Some(0));
    expect_err(at(max + 1), ErrorCode::BadConfig, None);
    expect_err(at(u64::MAX), ErrorCode::BadConfig, None);
    let peer = v.verify_peer(
        None,
        w.planner.id.as_spiffe_id(),
        w.planner.key.public_key(),
        max + 1,
    );
    assert_eq!(
        peer.map_err(|e| (e.code(), e.index())).err(),
        Some((ErrorCode::BadConfig, None))
    );
}

/// Section 14.1, R6: `seq`, `iat` and `next_update` are integers of section 3.3 and
/// `next_update >= iat`, else every verifier refuses the list (`bad_revocation_list`), and the
/// domain's verifiers, keeping the older list, soon fail closed (`revocation_stale`). The list
/// builder refuses such a list with that code, as it refuses a bad entry `exp`.
#[test]
fn revocation_list_builder_refuses_what_r6_refuses() {
    let w = world(Algorithm::Es256);
    let max = caps::MAX_LIMIT_VALUE; // 2^53 - 1
    for (seq, iat, next_update) in [
        (1, NOW, NOW - 1),
        (max + 1, NOW, NOW + 600),
        (1, max + 1, max + 2),
        (1, max - 1, max + 1),
    ] {
        let r = RevocationListBuilder::new(&w.org.td, seq, iat, next_update)
            .sign(&w.org.revocation_key);
        match r {
            Err(e) => assert_eq!(
                e.code(),
                ErrorCode::BadRevocationList,
                "{seq} {iat} {next_update}: {e}"
            ),
            Ok(list) => {
                let mut bundles = BundleSet::new();
                bundles.insert(w.org.bundle()).unwrap();
                let mut cfg = VerifierConfig::new(w.server.clone(), bundles);
                panic!(
                    "seq {seq}, iat {iat}, next_update {next_update}: signed a list the verifier \
                     gives {:?}",
                    cfg.apply_revocation_list(&list).map_err(|e| e.code())
                );
            }
        }
    }
}

/// spec/PROTOCOL.md section 8, "Keys across bundles": a `kid` the own trust domain's bundle
/// holds names the own domain's key, whatever another bundle loaded earlier holds, under either
/// use. A partner whose bundle listed our next revocation key as its grant key before our bundle
/// did (a rotation fetched in that order) must not turn it into its grant key here.
#[test]
fn a_kid_our_bundle_holds_as_a_revocation_key_never_verifies_a_partners_grant() {
    let w = world(Algorithm::Es256);
    let partner = Domain::new("partner.example", Algorithm::Es256);
    let p_task = TaskId::generate().unwrap();
    let p_agent = agent(&partner.td, "helper", &p_task, Algorithm::Es256);
    let mut bundles = BundleSet::for_trust_domain(w.org.td.clone());
    bundles
        .insert(
            TrustBundle::new(partner.td.clone(), 1)
                .add_grant_key(w.org.revocation_key.public_key().clone()),
        )
        .unwrap();
    // Our own bundle is never refused for a kid another domain holds (section 8).
    bundles.insert(w.org.bundle()).unwrap();
    let cfg = VerifierConfig::new(w.server.clone(), bundles)
        .authority_policy(
            AuthorityPolicy::own_domain(&w.org.td).allow(partner.td.clone(), scope("repo:*")),
        )
        .danger_accept_missing_or_stale_revocations();
    let v = Verifier::new(cfg).unwrap();
    // A grant of the partner's authority whose kid is our revocation key's thumbprint.
    let g = GrantBuilder::new(
        &partner.td,
        &p_agent.id,
        p_agent.key.public_key(),
        scope("repo:read"),
    )
    .audience(IdSet::new(vec![w.org.td.id()]).unwrap())
    .validity(NOW - 60, NOW - 60, NOW + 3600)
    .sign(&w.org.revocation_key)
    .unwrap();
    expect_err(
        v.verify_chain(
            g.as_str(),
            p_agent.id.as_spiffe_id(),
            p_agent.key.public_key(),
            NOW,
        ),
        ErrorCode::UntrustedAuthority,
        Some(0),
    );
}

/// The same rule for revocation lists (section 14.1, R3): our grant key, listed by a partner as
/// its revocation key before our bundle held it, never verifies a list of the partner's domain.
#[test]
fn a_kid_our_bundle_holds_as_a_grant_key_never_verifies_a_partners_revocation_list() {
    let w = world(Algorithm::Es256);
    let partner = Domain::new("partner.example", Algorithm::Es256);
    let mut bundles = BundleSet::for_trust_domain(w.org.td.clone());
    bundles
        .insert(
            TrustBundle::new(partner.td.clone(), 1)
                .add_revocation_key(w.org.grant_key.public_key().clone()),
        )
        .unwrap();
    bundles.insert(w.org.bundle()).unwrap();
    let mut cfg = VerifierConfig::new(w.server.clone(), bundles);
    let list = RevocationListBuilder::new(&partner.td, 1, NOW - 10, NOW + 600)
        .sign(&w.org.grant_key)
        .unwrap();
    let e = cfg.apply_revocation_list(&list).unwrap_err();
    assert_eq!(
        (e.code(), e.index()),
        (ErrorCode::BadRevocationList, None),
        "{e}"
    );
}
