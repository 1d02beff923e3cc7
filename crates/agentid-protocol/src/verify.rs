//! The chain verifier: the eight phases of spec/PROTOCOL.md, in order, and per-request
//! authorization.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::cache::{CachedToken, TokenCache};
use crate::chain::{frame, FramedToken};
use crate::crypto::{sha256, verify};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{AgentId, IdKind, SpiffeId, TaskId, TaskIdentity, TrustDomain};
use crate::jws::{parse_header, Header, TokenType};
use crate::policy::{VerifierConfig, MAX_SKEW};
use crate::revocation::RevocationList;
use crate::scope::{IdSet, Limits, Scope};
use crate::token::claims::{decode_chain_claims, Mode};
use crate::token::MAX_TOKEN_LIFETIME;
use crate::PublicKey;

/// One holder along a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The holder's task identity.
    pub id: TaskIdentity,
    /// Whether the holder's identity is attested: in version 1 only the grant holder (by the
    /// authority) and the TLS peer (by its certificate). Policy must not trust the others.
    pub attested: bool,
}

/// The result of a successful chain verification.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct VerifiedChain {
    /// The trust domain whose authority signed the grant.
    pub authority: TrustDomain,
    /// Autonomous or on behalf of `principal`.
    pub mode: Mode,
    /// The RFC 9493 subject identifier the chain acts for (with [`Mode::OnBehalfOf`]).
    pub principal: Option<Value>,
    /// The last holder: the TLS peer.
    pub holder: TaskIdentity,
    /// The task.
    pub task: TaskId,
    /// The effective scope (the last token's; each covered by the previous).
    pub scope: Scope,
    /// The effective audience.
    pub audience: IdSet,
    /// The effective limit ceilings (minimum along the chain).
    pub limits: Limits,
    /// Latest `nbf` along the chain.
    pub not_before: u64,
    /// Earliest `exp` along the chain.
    pub expires: u64,
    /// Every holder, grant holder first.
    pub actors: Vec<Actor>,
    /// Number of links.
    pub depth: usize,
    /// The grant's `jti` (for limit counting keyed by authority, grant and limit).
    pub grant_jti: String,
    /// Every token's `jti`, grant first.
    pub jtis: Vec<String>,
}

/// Verifies chains against one configuration.
#[derive(Clone, Debug)]
pub struct Verifier {
    config: VerifierConfig,
    cache: Option<Arc<TokenCache>>,
}

/// Token state carried from phase 3 to the later phases.
struct Checked {
    token: Arc<CachedToken>,
    /// The key that verified the token's signature.
    signing_key: PublicKey,
}

impl std::ops::Deref for Checked {
    type Target = CachedToken;
    fn deref(&self) -> &CachedToken {
        &self.token
    }
}

impl Verifier {
    /// A verifier for `config`.
    pub fn new(config: VerifierConfig) -> Result<Self> {
        if config.skew > MAX_SKEW {
            return Err(Error::new(ErrorCode::BadConfig, "skew above 120 seconds"));
        }
        if !matches!(config.own_id.kind(), IdKind::Task | IdKind::Service) {
            return Err(Error::new(
                ErrorCode::BadConfig,
                "a verifier's own ID is a task identity or a service ID",
            ));
        }
        for name in &config.enforced_limits {
            crate::scope::check_limit_name(name).map_err(|e| {
                Error::new(
                    ErrorCode::BadConfig,
                    format!("enforced limit: {}", e.detail()),
                )
            })?;
        }
        Ok(Self {
            config,
            cache: None,
        })
    }

    /// Adds a cache of verified tokens (see [`TokenCache`]), shared by clones of this verifier.
    #[must_use]
    pub fn with_cache(mut self, cache: Arc<TokenCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Mutable access to the configuration (to apply revocation lists or rotate bundles).
    pub fn config_mut(&mut self) -> &mut VerifierConfig {
        &mut self.config
    }

    /// Verifies `chain` presented by the TLS peer `peer_id` holding `peer_key`, at `now`.
    ///
    /// Runs phases 1 to 8; the first failure ends verification with one error carrying a stable
    /// code and the index of the offending token.
    pub fn verify_chain(
        &self,
        chain: &str,
        peer_id: &SpiffeId,
        peer_key: &PublicKey,
        now: u64,
    ) -> Result<VerifiedChain> {
        // Phase 1: framing.
        let framed = frame(chain)?;
        // Phase 2: headers.
        let headers = framed
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let expected = if i == 0 {
                    TokenType::Grant
                } else {
                    TokenType::Link
                };
                parse_header(&t.raw, expected).map_err(|e| e.at(i))
            })
            .collect::<Result<Vec<Header>>>()?;
        // Phase 3: keys, signatures, claims, token by token.
        let checked = self.phase3(&framed, headers)?;
        let authority = checked
            .first()
            .map(|c| c.claims.iss.trust_domain())
            .ok_or_else(|| Error::new(ErrorCode::Malformed, "empty chain"))?;
        // Phase 4: linkage and attenuation.
        let eff = self.phase4(&framed, &checked, &authority)?;
        // Phase 5: time.
        self.phase5(&checked, now)?;
        // Phase 6: revocation.
        self.phase6(&checked, &authority, peer_id, peer_key, now)?;
        // Phase 7: possession.
        let last_index = checked.len() - 1;
        let last = checked
            .last()
            .ok_or_else(|| Error::new(ErrorCode::Malformed, "empty chain"))?;
        if last.claims.cnf != *peer_key {
            return Err(Error::new(
                ErrorCode::PossessionMismatch,
                "the last `cnf` key is not the peer's certificate key",
            )
            .at(last_index));
        }
        if last.claims.sub.as_spiffe_id() != peer_id {
            return Err(Error::new(
                ErrorCode::HolderMismatch,
                "the last `sub` is not the peer's URI SAN",
            )
            .at(last_index));
        }
        // Phase 8: audience.
        if !eff.aud.covers_id(&self.config.own_id) {
            return Err(Error::new(
                ErrorCode::AudienceMismatch,
                "this verifier is not in the chain's audience",
            ));
        }
        let grant = &checked
            .first()
            .ok_or_else(|| Error::new(ErrorCode::Malformed, "empty chain"))?
            .claims;
        let actors = checked
            .iter()
            .enumerate()
            .map(|(i, c)| Actor {
                id: c.claims.sub.clone(),
                attested: i == 0 || i == last_index,
            })
            .collect();
        Ok(VerifiedChain {
            authority,
            mode: grant.mode.unwrap_or(Mode::Autonomous),
            principal: grant.principal.clone(),
            holder: last.claims.sub.clone(),
            task: grant.task.clone(),
            scope: last.claims.scope.clone(),
            audience: eff.aud,
            limits: eff.limits,
            not_before: checked
                .iter()
                .map(|c| c.claims.nbf)
                .max()
                .unwrap_or_default(),
            expires: checked
                .iter()
                .map(|c| c.claims.exp)
                .min()
                .unwrap_or_default(),
            actors,
            depth: last_index,
            grant_jti: grant.jti.clone(),
            jtis: checked.iter().map(|c| c.claims.jti.clone()).collect(),
        })
    }

    fn phase3(&self, framed: &[FramedToken<'_>], headers: Vec<Header>) -> Result<Vec<Checked>> {
        let mut out: Vec<Checked> = Vec::with_capacity(framed.len());
        for (i, (t, h)) in framed.iter().zip(headers).enumerate() {
            // (a) The key: never from the token itself.
            let (key, domain) = match out.last() {
                None => {
                    let kid = h.kid.as_deref().ok_or_else(|| {
                        Error::new(ErrorCode::BadHeader, "a grant needs `kid`").at(i)
                    })?;
                    let (td, key) = self.config.bundles.find_grant_key(kid).ok_or_else(|| {
                        Error::new(
                            ErrorCode::UntrustedAuthority,
                            "no single trusted bundle holds the grant key",
                        )
                        .at(i)
                    })?;
                    if !self.config.authority.accepts(td) {
                        return Err(Error::new(
                            ErrorCode::AuthorityNotAccepted,
                            format!("{td} is not an accepted authority here"),
                        )
                        .at(i));
                    }
                    (key.clone(), Some(td.clone()))
                }
                Some(prev) => (prev.claims.cnf.clone(), None),
            };
            // A cache hit stands for (b) and (c): the same bytes verified under the same key.
            let cache_key = self
                .cache
                .as_ref()
                .map(|_| (sha256(t.raw.text.as_bytes()), key.thumbprint()));
            let hit = match (&self.cache, &cache_key) {
                (Some(c), Some(k)) => c.get(k),
                _ => None,
            };
            let token = match hit {
                Some(tok) => tok,
                None => {
                    // (b) The signature over the exact transmitted bytes.
                    verify(&key, h.alg, t.raw.signing_input(), &t.signature)
                        .map_err(|e| e.at(i))?;
                    // (c) Only now the claims.
                    let claims = decode_chain_claims(&t.payload, i == 0).map_err(|e| e.at(i))?;
                    Arc::new(CachedToken { claims })
                }
            };
            let claims = &token.claims;
            if let Some(td) = domain {
                if claims.iss != td.id() {
                    return Err(Error::new(
                        ErrorCode::IssuerMismatch,
                        "grant `iss` is not the trust domain whose bundle holds its key",
                    )
                    .at(i));
                }
            }
            if let (Some(c), Some(k)) = (&self.cache, cache_key) {
                c.insert(k, Arc::clone(&token));
            }
            out.push(Checked {
                token,
                signing_key: key,
            });
        }
        Ok(out)
    }

    fn phase4(
        &self,
        framed: &[FramedToken<'_>],
        checked: &[Checked],
        authority: &TrustDomain,
    ) -> Result<Effective> {
        let mut eff: Option<Effective> = None;
        for (i, c) in checked.iter().enumerate() {
            let t = &c.claims;
            let err = |code: ErrorCode, d: &str| Error::new(code, d).at(i);
            match &mut eff {
                None => {
                    if t.sub.as_spiffe_id().trust_domain_str() != authority.as_str() {
                        return Err(err(
                            ErrorCode::ForeignHolder,
                            "grant holder outside the authority's trust domain",
                        ));
                    }
                    if t.sub.task_id_str() != t.task.as_str() {
                        return Err(err(
                            ErrorCode::TaskMismatch,
                            "grant `sub` is not of the grant's task",
                        ));
                    }
                    self.check_limit_names(t.limits.as_ref())
                        .map_err(|e| e.at(i))?;
                    eff = Some(Effective {
                        task: t.task.clone(),
                        sub: t.sub.clone(),
                        max_depth: t.max_depth,
                        scope: t.scope.clone(),
                        aud: match &t.aud {
                            Some(a) => a.clone(),
                            None => IdSet::new(vec![authority.id()]).map_err(|e| e.at(i))?,
                        },
                        limits: t.limits.clone().unwrap_or_default(),
                        may_delegate_to: match &t.may_delegate_to {
                            Some(d) => d.clone(),
                            None => IdSet::new(vec![authority.id()]).map_err(|e| e.at(i))?,
                        },
                        exp: t.exp,
                    });
                }
                Some(e) => {
                    let prev_token = framed.get(i - 1).map(|f| f.raw.text).unwrap_or_default();
                    if t.prev != Some(sha256(prev_token.as_bytes())) {
                        return Err(err(
                            ErrorCode::PrevMismatch,
                            "`prev` is not the hash of the previous token",
                        ));
                    }
                    if t.iss != *e.sub.as_spiffe_id() {
                        return Err(err(
                            ErrorCode::BrokenLink,
                            "link `iss` is not the previous `sub`",
                        ));
                    }
                    if t.task != e.task || t.sub.task_id_str() != e.task.as_str() {
                        return Err(err(
                            ErrorCode::TaskMismatch,
                            "link is not of the grant's task",
                        ));
                    }
                    if t.sub == e.sub {
                        return Err(err(
                            ErrorCode::SelfDelegation,
                            "a link to oneself is not allowed in version 1",
                        ));
                    }
                    if e.max_depth == 0 || t.max_depth > e.max_depth - 1 {
                        return Err(err(
                            ErrorCode::DepthExceeded,
                            "`max_depth` must decrease and the previous must allow a link",
                        ));
                    }
                    if !e.scope.covers(&t.scope) {
                        return Err(err(
                            ErrorCode::ScopeEscalation,
                            "link scope not covered by the previous scope",
                        ));
                    }
                    if let Some(a) = &t.aud {
                        if !e.aud.covers(a) {
                            return Err(err(
                                ErrorCode::AudienceEscalation,
                                "link `aud` not covered by the effective audience",
                            ));
                        }
                    }
                    if let Some(l) = &t.limits {
                        self.check_limit_names(Some(l)).map_err(|x| x.at(i))?;
                        if let Err(name) = l.narrows(&e.limits) {
                            return Err(err(
                                ErrorCode::LimitEscalation,
                                &format!("limit `{name}` raised above its ceiling"),
                            ));
                        }
                    }
                    if let Some(d) = &t.may_delegate_to {
                        if !e.may_delegate_to.covers(d) {
                            return Err(err(
                                ErrorCode::DelegationEscalation,
                                "`may_delegate_to` widened",
                            ));
                        }
                    }
                    if !e.may_delegate_to.covers_id(t.sub.as_spiffe_id()) {
                        return Err(err(
                            ErrorCode::DelegateeDenied,
                            "delegatee not allowed by `may_delegate_to`",
                        ));
                    }
                    if t.exp > e.exp {
                        return Err(err(
                            ErrorCode::ExpiryExtended,
                            "link `exp` later than the previous `exp`",
                        ));
                    }
                    // Narrow the effective values for the next link.
                    e.sub = t.sub.clone();
                    e.max_depth = t.max_depth;
                    e.scope = t.scope.clone();
                    if let Some(a) = &t.aud {
                        e.aud = a.clone();
                    }
                    if let Some(l) = &t.limits {
                        e.limits = e.limits.merge_min(l);
                    }
                    if let Some(d) = &t.may_delegate_to {
                        e.may_delegate_to = d.clone();
                    }
                    e.exp = t.exp;
                }
            }
        }
        eff.ok_or_else(|| Error::new(ErrorCode::Malformed, "empty chain"))
    }

    fn check_limit_names(&self, limits: Option<&Limits>) -> Result<()> {
        if let Some(l) = limits {
            for (name, _) in l.iter() {
                if !self.config.enforced_limits.contains(name) {
                    return Err(Error::new(
                        ErrorCode::UnsupportedLimit,
                        format!("limit `{name}` is not enforced by this verifier"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn phase5(&self, checked: &[Checked], now: u64) -> Result<()> {
        let skew = self.config.skew;
        for (i, c) in checked.iter().enumerate() {
            let t = &c.claims;
            if t.nbf > t.exp {
                return Err(Error::new(ErrorCode::BadValidity, "`nbf` after `exp`").at(i));
            }
            // Only the grant has a lifetime cap: a link's `exp` never exceeds the grant's.
            if i == 0 && t.exp.saturating_sub(t.iat) > MAX_TOKEN_LIFETIME {
                return Err(Error::new(
                    ErrorCode::LifetimeExceeded,
                    "grant lifetime above 24 hours",
                )
                .at(i));
            }
            if t.iat > now.saturating_add(skew) {
                return Err(Error::new(ErrorCode::IssuedInFuture, "`iat` in the future").at(i));
            }
            if now.saturating_add(skew) < t.nbf {
                return Err(Error::new(ErrorCode::NotYetValid, "token not yet valid").at(i));
            }
            if now >= t.exp.saturating_add(skew) {
                return Err(Error::new(ErrorCode::Expired, "token expired").at(i));
            }
        }
        Ok(())
    }

    /// The list of `td`: `Ok(None)` only where missing or stale lists are tolerated.
    fn list_for(
        &self,
        td: &TrustDomain,
        now: u64,
        index: Option<usize>,
    ) -> Result<Option<&RevocationList>> {
        let at = |e: Error| match index {
            Some(i) => e.at(i),
            None => e,
        };
        match self.config.revocations.get(td) {
            Some(l) if !l.is_stale(now, self.config.skew) => Ok(Some(l)),
            Some(l) if self.config.danger_revocation_optional => Ok(Some(l)),
            Some(_) => Err(at(Error::new(
                ErrorCode::RevocationStale,
                format!("the revocation list of {td} is stale"),
            ))),
            None if self.config.danger_revocation_optional => Ok(None),
            None => Err(at(Error::new(
                ErrorCode::RevocationMissing,
                format!("no revocation list for {td}"),
            ))),
        }
    }

    /// [`Verifier::list_for`] for a trust domain given as its name (an ID's `trust_domain_str`),
    /// not tied to a token; the owned name is built only for an error.
    fn list_for_str(&self, td: &str, now: u64) -> Result<Option<&RevocationList>> {
        match self.config.revocations.get(td) {
            Some(l) if !l.is_stale(now, self.config.skew) => Ok(Some(l)),
            _ => self.list_for(&TrustDomain::from_canonical(td), now, None),
        }
    }

    fn phase6(
        &self,
        checked: &[Checked],
        authority: &TrustDomain,
        peer_id: &SpiffeId,
        peer_key: &PublicKey,
        now: u64,
    ) -> Result<()> {
        // 6.1 The lists themselves: every distinct trust domain in order of first appearance
        // (iss_0, sub_0, iss_1, sub_1, ..., then the peer's); failures are not tied to a token.
        let peer_td = peer_id.trust_domain_str();
        let mut domains: Vec<&str> = Vec::new();
        let all = checked
            .iter()
            .flat_map(|c| {
                [
                    c.claims.iss.trust_domain_str(),
                    c.claims.sub.as_spiffe_id().trust_domain_str(),
                ]
            })
            .chain(core::iter::once(peer_td));
        for d in all {
            if !domains.contains(&d) {
                self.list_for_str(d, now)?;
                domains.push(d);
            }
        }
        // 6.2 Every token. Each lookup whose answer an earlier one already gave is skipped,
        // which keeps the order and the outcome of the checks (same lists, same `now`):
        // - every token names the grant's task (phase 4): the task is looked up once;
        // - for i >= 1, `iss` is the previous `sub` (phase 4) and the signing key is the previous
        //   `cnf`, both already found clean at token i-1 in the same domain's list;
        // - each `cnf` thumbprint is computed once.
        let revoked =
            |i: usize, what: &str| Err(Error::new(ErrorCode::Revoked, what.to_owned()).at(i));
        let task_list = self.list_for(authority, now, None)?;
        let task_revoked = checked
            .first()
            .is_some_and(|c| task_list.is_some_and(|l| l.has_task(&c.claims.task, now)));
        for (i, c) in checked.iter().enumerate() {
            let t = &c.claims;
            let iss_list = self.list_for_str(t.iss.trust_domain_str(), now)?;
            let sub_list = self.list_for_str(t.sub.as_spiffe_id().trust_domain_str(), now)?;
            if iss_list.is_some_and(|l| l.has_jti(&t.iss, &t.jti, now)) {
                return revoked(i, "token revoked by `jti`");
            }
            if task_revoked {
                return revoked(i, "task revoked");
            }
            if i == 0 && t.iss.kind() == IdKind::Task {
                if let Ok(agent) = AgentId::parse(&agent_of(&t.iss)) {
                    if iss_list.is_some_and(|l| l.has_agent(&agent, now)) {
                        return revoked(i, "issuing agent revoked");
                    }
                }
            }
            if sub_list.is_some_and(|l| l.has_agent_str(t.sub.agent_str(), now)) {
                return revoked(i, "holder agent revoked");
            }
            if sub_list.is_some_and(|l| l.has_key(&t.cnf.thumbprint(), now)) {
                return revoked(i, "holder key revoked");
            }
            if i == 0 && iss_list.is_some_and(|l| l.has_key(&c.signing_key.thumbprint(), now)) {
                return revoked(i, "signing key revoked");
            }
        }
        // 6.3 The peer: its certificate's key, then its agent and its task. When the peer is the
        // last holder with the last `cnf` key (what phase 7 then requires) in the authority's
        // domain, all three were just found clean in the same list.
        let is_last_holder = peer_td == authority.as_str()
            && checked.last().is_some_and(|l| {
                l.claims.cnf == *peer_key && l.claims.sub.as_spiffe_id() == peer_id
            });
        if !is_last_holder
            && self
                .list_for_str(peer_td, now)?
                .is_some_and(|l| l.covers_peer_at(peer_id, peer_key, now))
        {
            return Err(Error::new(
                ErrorCode::Revoked,
                "peer revoked (certificate key, agent or task)",
            ));
        }
        Ok(())
    }

    /// Checks a peer that presents no chain (or a service) against its domain's revocation list:
    /// its key, its agent and its task.
    pub fn check_peer_revocation(
        &self,
        peer_id: &SpiffeId,
        peer_key: &PublicKey,
        now: u64,
    ) -> Result<()> {
        match self.list_for(&peer_id.trust_domain(), now, None)? {
            Some(l) if l.covers_peer_at(peer_id, peer_key, now) => Err(Error::new(
                ErrorCode::Revoked,
                format!("peer {peer_id} is revoked"),
            )),
            _ => Ok(()),
        }
    }

    /// Authorizes one request for `requested` (concrete scope tokens, no `*`) under a verified
    /// chain: covered by the effective scope, and the chain's authority may grant it here.
    pub fn authorize(&self, verified: &VerifiedChain, requested: &Scope) -> Result<()> {
        self.authorize_with_limits(verified, requested, &BTreeMap::new())
    }

    /// As [`Verifier::authorize`], also checking requested amounts against the effective limit
    /// ceilings (`limit_exceeded`); a requested name the verifier does not enforce is refused.
    pub fn authorize_with_limits(
        &self,
        verified: &VerifiedChain,
        requested: &Scope,
        amounts: &BTreeMap<String, u64>,
    ) -> Result<()> {
        if !requested.is_concrete() {
            return Err(Error::new(
                ErrorCode::BadScope,
                "a requested scope contains no `*`",
            ));
        }
        if !verified.scope.covers(requested) {
            return Err(Error::new(
                ErrorCode::ScopeNotGranted,
                format!("scope `{requested}` not granted by the chain"),
            ));
        }
        if !self
            .config
            .authority
            .permits(&verified.authority, requested)
        {
            return Err(Error::new(
                ErrorCode::AuthorityScopeDenied,
                format!("{} may not grant `{requested}` here", verified.authority),
            ));
        }
        for (name, amount) in amounts {
            if !self.config.enforced_limits.contains(name) {
                return Err(Error::new(
                    ErrorCode::UnsupportedLimit,
                    format!("limit `{name}` is not enforced here"),
                ));
            }
            if let Some(ceiling) = verified.limits.get(name) {
                if *amount > ceiling {
                    return Err(Error::new(
                        ErrorCode::LimitExceeded,
                        format!("`{name}` {amount} above the ceiling {ceiling}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The effective values along a chain during phase 4.
struct Effective {
    task: TaskId,
    sub: TaskIdentity,
    max_depth: u8,
    scope: Scope,
    aud: IdSet,
    limits: Limits,
    may_delegate_to: IdSet,
    exp: u64,
}

fn agent_of(task_identity: &SpiffeId) -> String {
    match crate::id::PeerId::parse(task_identity.as_str()) {
        Ok(crate::id::PeerId::Task(t)) => t.agent().as_str().to_owned(),
        _ => String::new(),
    }
}
