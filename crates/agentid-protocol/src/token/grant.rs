//! The grant builder: the root of a chain, signed by a trust domain's authority key.

use serde_json::Value;

use crate::attenuation::{grant_rules, EnforcedLimits};
use crate::audience::IdSet;
use crate::chain::Chain;
use crate::crypto::JwsSigner;
use crate::encoding::safe_int;
use crate::error::{Error, ErrorCode, Result};
use crate::id::{TaskIdentity, TrustDomain};
use crate::jws::{sign_compact, TokenType};
use crate::limits::Limits;
use crate::scope::Scope;
use crate::token::claims::{
    check_principal, encode_grant, random_jti, valid_jti, GrantClaims, Mode, SharedClaims,
    MAX_DEPTH,
};
use crate::verifier::{grant_lifetime, nbf_not_after_exp};
use crate::PublicKey;

/// Builds and signs a grant (`agentid-grant+jwt`).
///
/// Only the authority of a trust domain (the CA) mints grants; agents extend chains with
/// [`crate::LinkBuilder`].
#[derive(Debug)]
#[must_use]
pub struct GrantBuilder {
    claims: GrantClaims,
    jti: Option<String>,
}

impl GrantBuilder {
    /// A grant from `issuer`'s authority to `holder` (whose task key is `holder_key`) for `scope`.
    ///
    /// Defaults: autonomous mode, `max_depth` 0 (sealed), no `aud`, `limits` or
    /// `may_delegate_to`; validity must be set with [`GrantBuilder::validity`].
    pub fn new(
        issuer: &TrustDomain,
        holder: &TaskIdentity,
        holder_key: &PublicKey,
        scope: Scope,
    ) -> Self {
        Self {
            claims: GrantClaims {
                iss: issuer.clone(),
                mode: Mode::Autonomous,
                principal: None,
                shared: SharedClaims {
                    sub: holder.clone(),
                    cnf: holder_key.clone(),
                    task: holder.task_id(),
                    scope,
                    aud: None,
                    max_depth: 0,
                    limits: None,
                    may_delegate_to: None,
                    iat: 0,
                    nbf: 0,
                    exp: 0,
                    jti: String::new(),
                },
            },
            jti: None,
        }
    }

    /// Restricts the audience (default: the issuer's own trust domain).
    pub fn audience(mut self, aud: IdSet) -> Self {
        self.claims.aud = Some(aud);
        self
    }

    /// The holder acts for `principal`, an RFC 9493 subject identifier such as
    /// `{"format":"email","email":"alice@example.com"}`, which the issuer itself checked.
    pub fn on_behalf_of(mut self, principal: Value) -> Self {
        self.claims.mode = Mode::OnBehalfOf;
        self.claims.principal = Some(principal);
        self
    }

    /// How many more links may follow (0..=8).
    pub fn max_depth(mut self, depth: u8) -> Self {
        self.claims.max_depth = depth;
        self
    }

    /// Ceilings for the limits the verifiers enforce.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.claims.limits = Some(limits);
        self
    }

    /// Whom the chain may be delegated to (default: the issuer's trust domain).
    pub fn may_delegate_to(mut self, ids: IdSet) -> Self {
        self.claims.may_delegate_to = Some(ids);
        self
    }

    /// Issued-at, not-before and expiry, in Unix seconds.
    pub fn validity(mut self, iat: u64, nbf: u64, exp: u64) -> Self {
        self.claims.iat = iat;
        self.claims.nbf = nbf;
        self.claims.exp = exp;
        self
    }

    /// A chosen `jti` (default: 128 random bits).
    pub fn jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = Some(jti.into());
        self
    }

    /// Signs the grant with the authority's grant key; `kid` is the key's RFC 7638 thumbprint.
    ///
    /// Refuses to sign a grant that no verifier would accept (bad validity, lifetime over 24 h,
    /// depth over 8, a time above 2^53 - 1, a holder outside the issuer's trust domain, a
    /// malformed principal).
    pub fn sign(mut self, key: &dyn JwsSigner) -> Result<Chain> {
        let c = &mut self.claims;
        c.jti = match self.jti.take() {
            Some(j) => j,
            None => random_jti()?,
        };
        if !valid_jti(&c.jti) {
            return Err(Error::new(
                ErrorCode::BadClaim,
                "`jti` must be 1..=256 bytes of printable ASCII (0x21..=0x7E)",
            ));
        }
        if c.max_depth > MAX_DEPTH {
            return Err(Error::new(
                ErrorCode::BadClaim,
                "`max_depth` must be at most 8",
            ));
        }
        // Step 3.c.5: times are integers of section 3.3, at most 2^53 - 1.
        if [c.iat, c.nbf, c.exp].iter().any(|t| safe_int(*t).is_none()) {
            return Err(Error::new(
                ErrorCode::BadClaim,
                "`iat`, `nbf` and `exp` must be integers in [0, 2^53-1]",
            ));
        }
        // The rules a verifier applies to a grant on its own: 4.0.1 to 4.0.3 (the enforced
        // limit names are the verifiers' business), 5.1 and 5.2; and `iat < exp`.
        grant_rules(c, EnforcedLimits::Unknown)?;
        nbf_not_after_exp(c.nbf, c.exp)?;
        if c.iat >= c.exp {
            return Err(Error::new(
                ErrorCode::BadValidity,
                "grant validity must satisfy iat < exp",
            ));
        }
        grant_lifetime(c.iat, c.exp)?;
        if let Some(p) = &c.principal {
            check_principal(p)?;
        }
        let payload = encode_grant(c)?;
        let public = key.public_key();
        let kid = public.thumbprint();
        let token = sign_compact(
            TokenType::Grant,
            key.algorithm(),
            Some(&kid),
            &payload,
            |input| key.sign(input),
        )?;
        Ok(Chain::from_grant(token))
    }
}
