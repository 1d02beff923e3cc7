//! The link builder: a holder hands a narrower slice of its rights to the next agent.

use crate::chain::Chain;
use crate::crypto::{sha256, TaskKey};
use crate::error::{Error, ErrorCode, Result};
use crate::id::TaskIdentity;
use crate::jws::{sign_compact, TokenType};
use crate::scope::{IdSet, Limits, Scope};
use crate::token::claims::{encode_chain_claims, random_jti, valid_jti, ChainClaims};
use crate::PublicKey;

/// Builds and signs a link (`agentid-link+jwt`) appended to a chain the signer holds.
///
/// The scope is always explicit: a delegation never silently hands over everything the
/// delegator holds. The builder refuses what a verifier would refuse (a wider scope, a longer
/// life, more depth, a delegatee outside `may_delegate_to`, self-delegation, a key that is not
/// the current holder's).
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
    pub fn sign(self, key: &TaskKey) -> Result<Chain> {
        let prev = self.prev_chain.last_claims_unverified()?;
        if key.public_key() != &prev.cnf {
            return Err(Error::new(
                ErrorCode::PossessionMismatch,
                "the signing key is not the key the chain is bound to",
            ));
        }
        if prev.sub == self.to {
            return Err(Error::new(
                ErrorCode::SelfDelegation,
                "a link to oneself is not allowed",
            ));
        }
        if prev.max_depth == 0 || self.prev_chain.depth() >= usize::from(crate::token::MAX_DEPTH) {
            return Err(Error::new(
                ErrorCode::DepthExceeded,
                "the chain is sealed (max_depth 0)",
            ));
        }
        let max_depth = self.max_depth.unwrap_or(prev.max_depth - 1);
        if max_depth > prev.max_depth - 1 {
            return Err(Error::new(
                ErrorCode::DepthExceeded,
                "max_depth must decrease along the chain",
            ));
        }
        if !prev.scope.covers(&self.scope) {
            return Err(Error::new(
                ErrorCode::ScopeEscalation,
                "the scope is wider than the delegator's",
            ));
        }
        if self.to.task_id() != prev.task {
            return Err(Error::new(
                ErrorCode::TaskMismatch,
                "the delegatee must belong to the chain's task",
            ));
        }
        let (iat, nbf, exp) = self
            .validity
            .ok_or_else(|| Error::new(ErrorCode::BadValidity, "link validity must be set"))?;
        if exp > prev.exp {
            return Err(Error::new(
                ErrorCode::ExpiryExtended,
                "a link cannot outlive the previous token",
            ));
        }
        if nbf > exp || iat >= exp {
            return Err(Error::new(
                ErrorCode::BadValidity,
                "link validity must satisfy iat < exp and nbf <= exp",
            ));
        }
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
        let claims = ChainClaims {
            iss: prev.sub.as_spiffe_id().clone(),
            sub: self.to,
            cnf: self.to_key,
            prev: Some(sha256(self.prev_chain.last_token().as_bytes())),
            task: prev.task,
            scope: self.scope,
            aud: self.aud,
            mode: None,
            principal: None,
            max_depth,
            limits: self.limits,
            may_delegate_to: self.may_delegate_to,
            iat,
            nbf,
            exp,
            jti,
        };
        let payload = encode_chain_claims(&claims);
        let token = sign_compact(TokenType::Link, key.algorithm(), None, &payload, |input| {
            key.sign(input)
        })?;
        Ok(self.prev_chain.appended(&token))
    }
}
