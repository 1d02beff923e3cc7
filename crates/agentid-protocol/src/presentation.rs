//! Verifying a presentation: what a transport does with a hello, an accept or a reauth
//! (spec/PROTOCOL.md sections 16.3 and 16.4).
//!
//! A presentation is a hop proof and, optionally, a chain, received on one TLS connection from a
//! peer whose certificate TLS already verified. [`Verifier::verify_presentation`] runs, in the
//! spec's order: the proof (section 12), the replay check of a later proof on the same
//! connection, then the chain (section 10) or, without one, the peer's revocation checks
//! ("Verifying a peer without a chain"), and computes the session deadline. Every transport
//! (the framed server and client, reauth, an HTTP binding) calls this one function.

use crate::crypto::sha256_with_prefix;
use crate::error::{Error, ErrorCode, Result};
use crate::id::SpiffeId;
use crate::proof::{verify_proof_with, ProofContext, Role, VerifiedProof, EXPORTER_LEN};
use crate::verifier::{VerifiedChain, Verifier};
use crate::PublicKey;

/// What was received: the hop proof and the chain sent with it, if any.
#[derive(Clone, Copy, Debug)]
pub struct Presentation<'a> {
    /// The compact hop proof.
    pub proof: &'a str,
    /// The chain sent with the proof (what its `cth` binds), if any.
    pub chain: Option<&'a str>,
}

/// What the verifying side knows about the connection and the presenter; nothing here comes
/// from the presentation itself.
#[derive(Clone, Copy, Debug)]
pub struct PresentationContext<'a> {
    /// The presenter's URI SAN, from its verified certificate.
    pub presenter: &'a SpiffeId,
    /// The presenter's certificate public key.
    pub presenter_key: &'a PublicKey,
    /// The presenter's certificate `notAfter`, Unix seconds (for the deadline).
    pub presenter_not_after: u64,
    /// The verifier's own URI SAN (the proof's `aud`): the verifier configuration's own ID
    /// (anything else is refused `bad_config` when a chain is verified).
    pub verifier_id: &'a SpiffeId,
    /// The presenter's role in the TLS connection.
    pub role: Role,
    /// The verifier's own exporter value for the presenter's role.
    pub exporter: [u8; EXPORTER_LEN],
    /// For a server proof: the client proof it answers (`rth`).
    pub client_proof: Option<&'a str>,
    /// The `jti`s of every proof already accepted on this connection (empty for the first):
    /// a proof that reuses one fails `proof_replayed` before any chain is looked at.
    pub accepted_jtis: &'a [String],
    /// For a reauth without a chain: the chain the session holds, verified again instead
    /// (spec section 16.4, reauth step 7). `None` for a hello or an accept.
    pub held_chain: Option<&'a str>,
    /// Current time, Unix seconds.
    pub now: u64,
}

/// A verified presentation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct VerifiedPresentation {
    /// The verified hop proof: the session's receipt.
    pub proof: VerifiedProof,
    /// The verified chain (the one sent, or the held one for a reauth without a chain); `None`
    /// for a chain-less peer, which holds no authority.
    pub chain: Option<VerifiedChain>,
    /// The session deadline: `min(presenter certificate notAfter, chain expires)`, or the
    /// certificate's `notAfter` without a chain (section 16.3, server step 8).
    pub deadline: u64,
}

impl Verifier {
    /// Verifies a presentation (spec/PROTOCOL.md section 16.3, server step 6 and client step
    /// 6; section 16.4, reauth steps 5 to 7), in this order; the first failure is the result:
    ///
    /// 0. with a chain (sent or held), the context's `verifier_id` is this verifier's own ID
    ///    (section 9: the own ID is the verifier's URI SAN; rule 8.1 checks the chain's audience
    ///    against it), else `bad_config`;
    /// 1. the hop proof (section 12) with the context's presenter, verifier, role, exporter and
    ///    client proof, and this verifier's skew;
    /// 2. its `jti` is not one of `accepted_jtis`, else `proof_replayed`;
    /// 3. the chain sent, else the held chain, through [`Verifier::verify_peer`];
    ///
    /// then the deadline (section 16.3, server step 8). A reauth's transport also requires
    /// the deadline to be in the future (section 16.4, reauth step 8, `credential_expired`).
    pub fn verify_presentation(
        &self,
        presentation: &Presentation<'_>,
        ctx: &PresentationContext<'_>,
    ) -> Result<VerifiedPresentation> {
        // The own ID is the verifier's own URI SAN (section 9): a configuration made for another
        // identity would check a chain's audience (rule 8.1) against that identity.
        let with_chain = presentation.chain.is_some() || ctx.held_chain.is_some();
        if with_chain && ctx.verifier_id != self.config().own_id() {
            return Err(Error::new(
                ErrorCode::BadConfig,
                format!(
                    "the verifier's own ID {} is not the identity it verifies as, {}",
                    self.config().own_id(),
                    ctx.verifier_id
                ),
            ));
        }
        // Rule P9 hashes the chain sent: a chain this verifier verified before has its hash
        // remembered with the token cache (found by the `cth` claimed, the chain compared byte
        // for byte); a new one's is remembered once the chain verified.
        let mut new_hash = None;
        // The chain starts with its grant (up to the first `~`): hashing the chain for P9 gives
        // the grant's hash (the first link's `prev`) for the blocks they share.
        let mut grant_hash = None;
        let proof = verify_proof_with(
            presentation.proof,
            &ProofContext {
                presenter_id: ctx.presenter,
                presenter_key: ctx.presenter_key,
                verifier_id: ctx.verifier_id,
                role: ctx.role,
                exporter: ctx.exporter,
                now: ctx.now,
                skew: self.config().skew_seconds(),
                chain: presentation.chain,
                client_proof: ctx.client_proof,
            },
            |chain, claimed| {
                let known = self
                    .cache()
                    .and_then(|cache| cache.chain_hash(chain, claimed));
                known.unwrap_or_else(|| {
                    let grant_len = chain.find('~').unwrap_or(chain.len());
                    // The grant's signing input: up to its last `.` (framing checks the rest).
                    let signed = chain
                        .get(..grant_len)
                        .and_then(|g| g.rfind('.'))
                        .unwrap_or(0);
                    let (h, g, s) = sha256_with_prefix(chain.as_bytes(), grant_len, signed);
                    new_hash = Some(h);
                    grant_hash = Some((g, s));
                    h
                })
            },
        )?;
        if ctx.accepted_jtis.contains(&proof.jti) {
            return Err(Error::new(
                ErrorCode::ProofReplayed,
                "a proof already accepted on this connection",
            ));
        }
        let chain = match presentation.chain {
            // The grant's hash goes only with the chain it was taken from.
            Some(c) => Some(self.verify_chain_with(
                c,
                ctx.presenter,
                ctx.presenter_key,
                ctx.now,
                grant_hash,
            )?),
            None => self.verify_peer(ctx.held_chain, ctx.presenter, ctx.presenter_key, ctx.now)?,
        };
        if let (Some(c), Some(h), Some(cache)) = (presentation.chain, new_hash, self.cache()) {
            cache.remember_chain_hash(c, h);
        }
        let deadline = chain.as_ref().map_or(ctx.presenter_not_after, |c| {
            c.expires.min(ctx.presenter_not_after)
        });
        Ok(VerifiedPresentation {
            proof,
            chain,
            deadline,
        })
    }

    /// The peer's authority (spec/PROTOCOL.md section 16.3, server step 6, after the proof):
    /// with a chain, the chain (section 10, phases 1 to 8, possession against `peer_key`);
    /// without, the checks of "Verifying a peer without a chain" (section 10). `Ok(None)` is an
    /// authenticated peer with no authority.
    pub fn verify_peer(
        &self,
        chain: Option<&str>,
        peer_id: &SpiffeId,
        peer_key: &PublicKey,
        now: u64,
    ) -> Result<Option<VerifiedChain>> {
        match chain {
            Some(c) => self.verify_chain(c, peer_id, peer_key, now).map(Some),
            None => self
                .check_peer_revocation(peer_id, peer_key, now)
                .map(|()| None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::bundle::{BundleSet, TrustBundle};
    use crate::config::VerifierConfig;
    use crate::crypto::{AuthorityKey, TaskKey};
    use crate::proof::ProofBuilder;
    use crate::revocation::RevocationListBuilder;
    use crate::scope::Scope;
    use crate::token::GrantBuilder;
    use crate::{Algorithm, Chain, TaskIdentity, TrustDomain};

    const NOW: u64 = 1_767_225_600;
    const EXPORTER: [u8; 32] = [7; 32];

    struct Fixture {
        verifier: Verifier,
        holder: TaskIdentity,
        key: TaskKey,
        chain: Chain,
        server: SpiffeId,
        grant_key: AuthorityKey,
    }

    fn fixture(revoke_holder_key: bool) -> Fixture {
        let td = TrustDomain::parse("example.org").unwrap();
        let grant_key = AuthorityKey::generate(Algorithm::Ed25519).unwrap();
        let rev_key = AuthorityKey::generate(Algorithm::Ed25519).unwrap();
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let holder = TaskIdentity::parse("spiffe://example.org/agent/a/task/t1").unwrap();
        let chain = GrantBuilder::new(&td, &holder, key.public_key(), Scope::parse("x:*").unwrap())
            .max_depth(1)
            .validity(NOW - 60, NOW - 60, NOW + 600)
            .sign(&grant_key)
            .unwrap();
        let mut bundles = BundleSet::new();
        bundles
            .insert(
                TrustBundle::new(td.clone(), 1)
                    .add_grant_key(grant_key.public_key().clone())
                    .add_revocation_key(rev_key.public_key().clone()),
            )
            .unwrap();
        let mut list = RevocationListBuilder::new(&td, 1, NOW - 10, NOW + 590);
        if revoke_holder_key {
            list = list.revoke_key(&key.public_key().thumbprint(), NOW + 600);
        }
        let server = SpiffeId::parse("spiffe://example.org/svc/s").unwrap();
        let mut cfg = VerifierConfig::new(server.clone(), bundles);
        cfg.apply_revocation_list(&list.sign(&rev_key).unwrap())
            .unwrap();
        Fixture {
            verifier: Verifier::new(cfg).unwrap(),
            holder,
            key,
            chain,
            server,
            grant_key,
        }
    }

    fn proof(f: &Fixture, chain: Option<&str>) -> String {
        let mut b = ProofBuilder::new(
            f.holder.as_spiffe_id(),
            &f.server,
            Role::Client,
            EXPORTER,
            NOW,
            NOW + 60,
        );
        if let Some(c) = chain {
            b = b.chain(c);
        }
        b.sign(&f.key).unwrap()
    }

    fn ctx<'a>(
        f: &'a Fixture,
        accepted: &'a [String],
        held: Option<&'a str>,
    ) -> PresentationContext<'a> {
        PresentationContext {
            presenter: f.holder.as_spiffe_id(),
            presenter_key: f.key.public_key(),
            presenter_not_after: NOW + 300,
            verifier_id: &f.server,
            role: Role::Client,
            exporter: EXPORTER,
            client_proof: None,
            accepted_jtis: accepted,
            held_chain: held,
            now: NOW,
        }
    }

    #[test]
    fn a_chain_gives_authority_and_the_earlier_deadline() {
        let f = fixture(false);
        let p = proof(&f, Some(f.chain.as_str()));
        let v = f
            .verifier
            .verify_presentation(
                &Presentation {
                    proof: &p,
                    chain: Some(f.chain.as_str()),
                },
                &ctx(&f, &[], None),
            )
            .unwrap();
        assert_eq!(v.chain.unwrap().holder, f.holder);
        assert_eq!(
            v.deadline,
            NOW + 300,
            "the certificate ends before the chain"
        );
        assert_eq!(v.proof.compact, p);
    }

    /// P9 hashes the chain and hands the grant's hash to the chain's verification (the first
    /// link's `prev`): a delegated chain verifies as `verify_chain` verifies it, and a chain
    /// whose grant was swapped for another fails as `verify_chain` fails it.
    #[test]
    fn a_delegated_chain_verifies_as_verify_chain_does() {
        let f = fixture(false);
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let holder = TaskIdentity::parse("spiffe://example.org/agent/b/task/t1").unwrap();
        let scope = Scope::parse("x:*").unwrap();
        let chain =
            crate::token::LinkBuilder::new(&f.chain, &holder, key.public_key(), scope.clone())
                .validity(NOW - 30, NOW - 30, NOW + 300)
                .sign(&f.key)
                .unwrap();
        let present = |c: &str| {
            let p = ProofBuilder::new(
                holder.as_spiffe_id(),
                &f.server,
                Role::Client,
                EXPORTER,
                NOW,
                NOW + 60,
            )
            .chain(c)
            .sign(&key)
            .unwrap();
            let mut cx = ctx(&f, &[], None);
            cx.presenter = holder.as_spiffe_id();
            cx.presenter_key = key.public_key();
            f.verifier
                .verify_presentation(
                    &Presentation {
                        proof: &p,
                        chain: Some(c),
                    },
                    &cx,
                )
                .map(|v| v.chain.unwrap())
        };
        let direct = |c: &str| {
            f.verifier
                .verify_chain(c, holder.as_spiffe_id(), key.public_key(), NOW)
        };
        let v = present(chain.as_str()).unwrap();
        assert_eq!(v, direct(chain.as_str()).unwrap());
        assert_eq!(v.depth, 1);
        // The link's `prev` is the hash of the original grant: with another grant in its place
        // (same holder, key and scope, another `jti`), the link no longer follows it.
        let (_, link) = chain.as_str().split_once('~').unwrap();
        let other = GrantBuilder::new(
            &TrustDomain::parse("example.org").unwrap(),
            &f.holder,
            f.key.public_key(),
            scope,
        )
        .max_depth(1)
        .validity(NOW - 60, NOW - 60, NOW + 600)
        .sign(&f.grant_key)
        .unwrap();
        let swapped = format!("{}~{link}", other.as_str());
        let outcome = |r: Result<VerifiedChain>| r.map(|_| ()).map_err(|e| (e.code(), e.index()));
        assert_eq!(
            present(&swapped).unwrap_err().code(),
            crate::error::ErrorCode::PrevMismatch
        );
        assert_eq!(outcome(present(&swapped)), outcome(direct(&swapped)));
    }

    #[test]
    fn a_chainless_peer_has_no_authority_and_the_certificate_deadline() {
        let f = fixture(false);
        let p = proof(&f, None);
        let v = f
            .verifier
            .verify_presentation(
                &Presentation {
                    proof: &p,
                    chain: None,
                },
                &ctx(&f, &[], None),
            )
            .unwrap();
        assert!(v.chain.is_none());
        assert_eq!(v.deadline, NOW + 300);
    }

    #[test]
    fn a_reauth_without_a_chain_re_verifies_the_held_one() {
        let f = fixture(false);
        let p = proof(&f, None);
        let v = f
            .verifier
            .verify_presentation(
                &Presentation {
                    proof: &p,
                    chain: None,
                },
                &ctx(&f, &[], Some(f.chain.as_str())),
            )
            .unwrap();
        assert!(v.chain.is_some());
    }

    #[test]
    fn the_proof_comes_first_then_replay_then_the_chain_or_peer() {
        // A revoked peer key: the chain fails `revoked` once the proof passed.
        let f = fixture(true);
        let p = proof(&f, None);
        let pres = Presentation {
            proof: &p,
            chain: None,
        };
        let e = f
            .verifier
            .verify_presentation(&pres, &ctx(&f, &[], None))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Revoked);
        let e = f
            .verifier
            .verify_presentation(&pres, &ctx(&f, &[], Some(f.chain.as_str())))
            .unwrap_err();
        assert_eq!((e.code(), e.index()), (ErrorCode::Revoked, Some(0)));
        // A replayed proof fails before the chain is looked at.
        let ok = fixture(false);
        let p3 = proof(&ok, None);
        let first = ok
            .verifier
            .verify_presentation(
                &Presentation {
                    proof: &p3,
                    chain: None,
                },
                &ctx(&ok, &[], None),
            )
            .unwrap();
        let accepted = [first.proof.jti.clone()];
        let e = ok
            .verifier
            .verify_presentation(
                &Presentation {
                    proof: &p3,
                    chain: None,
                },
                &ctx(&ok, &accepted, Some("not a chain")),
            )
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ProofReplayed);
        // A proof bound to another chain fails as a proof (`chain_hash_mismatch`), before the
        // chain's own failure.
        let e = ok
            .verifier
            .verify_presentation(
                &Presentation {
                    proof: &p3,
                    chain: Some("x~"),
                },
                &ctx(&ok, &[], None),
            )
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ChainHashMismatch);
    }
}
