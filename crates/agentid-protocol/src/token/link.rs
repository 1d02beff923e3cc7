//! The link builder: a holder hands a narrower slice of its rights to the next agent.

use crate::attenuation::{attenuate, EnforcedLimits};
use crate::audience::IdSet;
use crate::chain::{Chain, MAX_CHAIN_BYTES};
use crate::crypto::{sha256, TaskKey};
use crate::error::{Error, ErrorCode, Result};
use crate::id::TaskIdentity;
use crate::jws::{sign_compact, TokenType};
use crate::limits::Limits;
use crate::scope::Scope;
use crate::token::claims::{encode_link, random_jti, valid_jti, LinkClaims, SharedClaims};
use crate::verifier::nbf_not_after_exp;
use crate::PublicKey;

/// Builds and signs a link (`agentid-link+jwt`) appended to a chain the signer holds.
///
/// The scope is always explicit: a delegation never silently hands over everything the
/// delegator holds. [`LinkBuilder::sign`] refuses, with the verifier's own code, every link a
/// verifier would refuse in phase 4: a wider scope, `aud`, limit or `may_delegate_to`, a
/// delegatee outside `may_delegate_to`, more depth, a longer life, self-delegation.
#[derive(Debug)]
#[must_use]
pub struct LinkBuilder {
    prev_chain: Chain,
    to: TaskIdentity,
    to_key: PublicKey,
    scope: Scope,
    aud: Option<IdSet>,
    limits: Option<Limits>,
    may_delegate_to: Option<IdSet>,
    max_depth: Option<u8>,
    validity: Option<(u64, u64, u64)>,
    jti: Option<String>,
}

impl LinkBuilder {
    /// A link from the holder of `prev` to `to` (whose task key is `to_key`) for `scope`.
    ///
    /// Defaults: `max_depth` one less than the previous token's, `aud`, `limits` and
    /// `may_delegate_to` inherited; validity must be set with [`LinkBuilder::validity`].
    pub fn new(prev: &Chain, to: &TaskIdentity, to_key: &PublicKey, scope: Scope) -> Self {
        Self {
            prev_chain: prev.clone(),
            to: to.clone(),
            to_key: to_key.clone(),
            scope,
            aud: None,
            limits: None,
            may_delegate_to: None,
            max_depth: None,
            validity: None,
            jti: None,
        }
    }

    /// Narrows the audience.
    pub fn audience(mut self, aud: IdSet) -> Self {
        self.aud = Some(aud);
        self
    }

    /// Lowers limit ceilings.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Narrows whom later links may delegate to.
    pub fn may_delegate_to(mut self, ids: IdSet) -> Self {
        self.may_delegate_to = Some(ids);
        self
    }

    /// How many more links may follow (at most the previous `max_depth - 1`).
    pub fn max_depth(mut self, depth: u8) -> Self {
        self.max_depth = Some(depth);
        self
    }

    /// Issued-at, not-before and expiry, in Unix seconds (`exp` at most the previous `exp`).
    pub fn validity(mut self, iat: u64, nbf: u64, exp: u64) -> Self {
        self.validity = Some((iat, nbf, exp));
        self
    }

    /// A chosen `jti` (default: 128 random bits).
    pub fn jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = Some(jti.into());
        self
    }

    /// Signs the link with the current holder's task key and returns the extended chain.
    ///
    /// Refuses, with the code a verifier would give, every link that a verifier would reject
    /// in phase 4 (the one attenuation function: `prev`, task, self-delegation, depth, scope, `aud`, limits,
    /// `may_delegate_to`, the delegatee, `exp`) or in rule 5.1 (`nbf` after `exp`); also a key
    /// that is not the one the chain is bound to (`possession_mismatch`), `iat >= exp`, and a
    /// link that would make the chain longer than 64 KiB (rule 1.1, `chain_too_large`). The
    /// chain held is read without verifying its signatures: it is the signer's own, and its
    /// effective values are replayed through the same rules. Limit names are not checked
    /// against any verifier's enforced set (rule 4.8's first half), which the builder cannot
    /// know.
    pub fn sign(self, key: &TaskKey) -> Result<Chain> {
        let held = self.prev_chain.read_unverified()?;
        if key.public_key() != held.holder_key() {
            return Err(Error::new(
                ErrorCode::PossessionMismatch,
                "the signing key is not the key the chain is bound to",
            ));
        }
        let effective = held.effective()?;
        let prev_hash = sha256(held.last_token().as_bytes());
        let (iat, nbf, exp) = self
            .validity
            .ok_or_else(|| Error::new(ErrorCode::BadValidity, "link validity must be set"))?;
        let jti = match self.jti {
            Some(j) => j,
            None => random_jti()?,
        };
        if !valid_jti(&jti) {
            return Err(Error::new(
                ErrorCode::BadClaim,
                "`jti` must be 1..=256 bytes of printable ASCII (0x21..=0x7E)",
            ));
        }
        let claims = LinkClaims {
            iss: effective.holder.clone(),
            prev: prev_hash,
            shared: SharedClaims {
                sub: self.to,
                cnf: self.to_key,
                task: effective.task.clone(),
                scope: self.scope,
                aud: self.aud,
                // Default: one less than the previous (rule 4.5 refuses a sealed previous token).
                max_depth: self
                    .max_depth
                    .unwrap_or(effective.max_depth.saturating_sub(1)),
                limits: self.limits,
                may_delegate_to: self.may_delegate_to,
                iat,
                nbf,
                exp,
                jti,
            },
        };
        // Phase 4 exactly as a verifier runs it on this link.
        attenuate(effective, &claims, &prev_hash, EnforcedLimits::Unknown)?;
        nbf_not_after_exp(nbf, exp)?;
        if iat >= exp {
            return Err(Error::new(
                ErrorCode::BadValidity,
                "link validity must satisfy iat < exp",
            ));
        }
        let payload = encode_link(&claims)?;
        let token = sign_compact(TokenType::Link, key.algorithm(), None, &payload, |input| {
            key.sign(input)
        })?;
        // Rule 1.1: nine tokens of up to 8 KiB each can exceed the chain's 64 KiB cap.
        let len = self.prev_chain.as_str().len() + 1 + token.len();
        if len > MAX_CHAIN_BYTES {
            return Err(Error::new(
                ErrorCode::ChainTooLarge,
                format!("the chain with this link would be {len} bytes, over 64 KiB"),
            ));
        }
        Ok(self.prev_chain.appended(&token))
    }
}
