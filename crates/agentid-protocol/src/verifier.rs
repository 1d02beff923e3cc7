//! The chain verifier: the eight phases of spec/PROTOCOL.md section 10, in order, and per-request
//! authorization (section 13).
//!
//! Every numbered rule that this crate enforces has exactly one home, a function whose doc
//! comment (or, inside a function that runs several rules in order, a comment) names it as
//! "Rule N.M"; every other caller calls that function. The index, in spec order:
//!
//! | spec/PROTOCOL.md | rule | home |
//! |---|---|---|
//! | 10, phase 1 | 1.1 to 1.3 | `chain::frame` |
//! | | 1.4 (1.4.1 to 1.4.3) | `chain::frame_token`, through `jws::split` |
//! | 10, phase 2 | 2.1 to 2.5 | `phase2` (here), through `jws::parse_header` |
//! | 10, phase 3 | 3.a.1, 3.a.2 | `Verifier::grant_key` |
//! | | 3.a.3 | `Verifier::phase3` |
//! | | 3.b.1, 3.b.2 | `signature`, through `crypto::verify` |
//! | | 3.c.1 to 3.c.4 | `token::claims::decode_grant`, `token::claims::decode_link` (3.c.1 in one pass: `token::members::read_members`; 3.c.2 to 3.c.4: `check_names`) |
//! | | 3.c.5 | one function per claim in `token/claims.rs`: `grant_iss`, `link_iss`, `sub`, `cnf`, `prev`, `task`, `scope`, `mode_and_principal`, `max_depth`, `limits`, `jti`; ID sets: `id_set`, `IdSet::new` |
//! | | 3.c.6 | `issuer_is_authority` |
//! | 10, phase 4 | 4.0.1 to 4.0.3 | `attenuation::grant_rules` |
//! | | 4.1 to 4.11 | `attenuation::attenuate` (also run by `LinkBuilder::sign`) |
//! | | effective values (7.2 to 7.4) | `attenuation::Effective::from_grant`, `attenuation::attenuate`; the audience alone: `attenuation::grant_audience`, `attenuation::link_audience` |
//! | 10, phase 5 | 5.1 | `nbf_not_after_exp` (also run by both builders) |
//! | | 5.2 | `grant_lifetime` (also run by `GrantBuilder::sign`) |
//! | | 5.3, 5.4, 5.5 | `not_issued_in_future`, `already_valid`, `not_expired` (5.3 and 5.5 also for proofs, P5) |
//! | 10, phase 6 | 6.1 (6.1.1, 6.1.2) | `Verifier::list` |
//! | | 6.2.1, 6.2.2, 6.2.3, 6.2.4 | `jti_revoked`, `task_revoked`, `issuing_agent_revoked`, `holder_agent_revoked` |
//! | | 6.2.5, 6.2.6, 6.3.1 | `key_revoked` |
//! | | 6.3 (6.3.1 to 6.3.3) | `peer_revoked` (also `RevocationList::covers_peer_at`) |
//! | 10, phase 7 | 7.1, 7.2 | `phase7` |
//! | 10, phase 8 | 8.1 | `Verifier::phase8` |
//! | 10, peer without a chain | 6.1 then 6.3 | `Verifier::check_peer_revocation` |
//! | 12 | P0 to P10 | `proof::verify_proof` (P1 through `jws::split`, P2 through `jws::parse_header`) |
//! | 12 | replay (`proof_replayed`) | `Verifier::verify_presentation` |
//! | 13 | A1 | `requested_scope_is_concrete` |
//! | | A2 to A4 | `Verifier::authorize_with_limits` (`Verifier::authorize`, `Verifier::authorize_peer` call it) |
//! | 14.1 | R1 to R7 | `RevocationList::verify` |
//! | | R8 | `VerifierConfig::apply_revocation_list` |
//! | 16.3, 16.4 | the presentation (server and client step 6, reauth steps 5 to 7) | `Verifier::verify_presentation`, its chain-or-peer step `Verifier::verify_peer` (also a live session's re-check) |
//!
//! Phases 1 and 2 run in `verify_chain`; phases 3 to 8 are the functions `phase3` ... `phase8`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::attenuation::{attenuate, Effective, EnforcedLimits};
use crate::audience::IdSet;
use crate::cache::{CachedToken, Entry, TokenCache};
use crate::chain::{frame, Framed, FramedToken};
use crate::config::{VerifierConfig, MAX_SKEW};
use crate::crypto::{verify, verify_and_hash, verify_digest, SigningDigest};
use crate::encoding::b64_decode_array;
use crate::error::{Error, ErrorCode, Result};
use crate::id::{IdKind, SpiffeId, TaskId, TaskIdentity, TrustDomain};
use crate::jws::{parse_header, Header, TokenType};
use crate::limits::Limits;
use crate::revocation::{RevocationList, RevocationTarget};
use crate::scope::Scope;
use crate::token::claims::{decode_grant, decode_link, GrantClaims, LinkClaims, Mode, TokenClaims};
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
    /// What a revocation list would have to name to revoke this chain, from the claims and
    /// keys phase 6 read (see [`crate::verified_peer_revocation_targets`]), each shared (with
    /// the peer's targets and a session index) rather than copied.
    revocation_targets: Vec<Arc<RevocationTarget>>,
}

impl VerifiedChain {
    /// The targets whose entry in a revocation list could revoke this chain (rule 6.2), in the
    /// order [`crate::peer_revocation_targets`] lists them after the peer's own, duplicates
    /// kept: the grant's signing key (its `kid`); for the grant its `{jti, iss}`, task, holder's
    /// agent and `cnf` key; for every link its `{jti, iss}`, the agents of its issuer and
    /// holder, and its `cnf` key. Keys by RFC 7638 thumbprint. Each is shared: a copy is an
    /// [`Arc::clone`].
    pub fn revocation_targets(&self) -> &[Arc<RevocationTarget>] {
        &self.revocation_targets
    }

    /// The verification result as spec/PROTOCOL.md section 11 writes it in JSON (the members
    /// of a valid vector's `expected`, without `valid`).
    pub fn to_json(&self) -> serde_json::Map<String, Value> {
        let limits: serde_json::Map<String, Value> = self
            .limits
            .iter()
            .map(|(k, n)| (k.to_owned(), Value::from(n)))
            .collect();
        let actors: Vec<Value> = self
            .actors
            .iter()
            .map(|a| serde_json::json!({ "id": a.id.as_str(), "attested": a.attested }))
            .collect();
        let audience: Vec<Value> = self
            .audience
            .ids()
            .iter()
            .map(|i| Value::from(i.as_str()))
            .collect();
        let mut m = serde_json::Map::new();
        m.insert(
            "authority".into(),
            Value::from(self.authority.id().as_str()),
        );
        m.insert("mode".into(), Value::from(self.mode.as_str()));
        m.insert(
            "principal".into(),
            self.principal.clone().unwrap_or(Value::Null),
        );
        m.insert("holder".into(), Value::from(self.holder.as_str()));
        m.insert("task".into(), Value::from(self.task.as_str()));
        m.insert("scope".into(), Value::from(self.scope.to_string()));
        m.insert("audience".into(), Value::Array(audience));
        m.insert("limits".into(), Value::Object(limits));
        m.insert("not_before".into(), Value::from(self.not_before));
        m.insert("expires".into(), Value::from(self.expires));
        m.insert("depth".into(), Value::from(self.depth));
        m.insert("grant_jti".into(), Value::from(self.grant_jti.as_str()));
        m.insert("actors".into(), Value::Array(actors));
        m
    }
}

/// Verifies chains against one configuration.
#[derive(Clone, Debug)]
pub struct Verifier {
    config: VerifierConfig,
    cache: Option<Arc<TokenCache>>,
}

/// A chain after phase 3: every token's signature verified and claims decoded.
struct Checked {
    /// The authority (rule 3.a.1), equal to the grant's `iss` (rule 3.c.6).
    authority: TrustDomain,
    /// The authority's trust-domain ID (the grant's `iss` as an ID).
    authority_id: SpiffeId,
    grant: Arc<GrantClaims>,
    /// The thumbprint of the key that verified the grant (rule 6.2.6): the `kid` it was found by
    /// (a bundle key's `kid` is its RFC 7638 thumbprint, which the bundle checks when it is
    /// read).
    grant_jkt: String,
    links: Vec<Arc<LinkClaims>>,
}

impl Checked {
    /// Tokens `0..=n` as their common claims.
    fn tokens(&self) -> impl Iterator<Item = &dyn TokenClaims> {
        core::iter::once(&*self.grant as &dyn TokenClaims)
            .chain(self.links.iter().map(|l| &**l as &dyn TokenClaims))
    }

    /// Token `n`.
    fn last(&self) -> &dyn TokenClaims {
        match self.links.last() {
            Some(l) => &**l,
            None => &*self.grant,
        }
    }

    /// `n`, the number of links.
    fn depth(&self) -> usize {
        self.links.len()
    }
}

fn revoked(detail: &str) -> Error {
    Error::new(ErrorCode::Revoked, detail.to_owned())
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
            crate::limits::check_limit_name(name).map_err(|e| {
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

    /// The cache of verified tokens, if any.
    pub(crate) fn cache(&self) -> Option<&TokenCache> {
        self.cache.as_deref()
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Mutable access to the configuration (to apply revocation lists or rotate bundles).
    pub fn config_mut(&mut self) -> &mut VerifierConfig {
        &mut self.config
    }

    /// Verifies `chain` presented by the TLS peer `peer_id` holding `peer_key`, at `now`
    /// (spec/PROTOCOL.md section 10).
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
        self.verify_chain_with(chain, peer_id, peer_key, now, None)
    }

    /// [`Verifier::verify_chain`], with the SHA-256 of the chain's first token (its grant) and
    /// of the grant's signing input when they were taken already (rule P9 hashes the whole
    /// chain, which starts with the grant).
    pub(crate) fn verify_chain_with(
        &self,
        chain: &str,
        peer_id: &SpiffeId,
        peer_key: &PublicKey,
        now: u64,
        grant_hashes: Option<([u8; 32], SigningDigest)>,
    ) -> Result<VerifiedChain> {
        valid_now(now)?;
        let framed = frame(chain)?;
        if let Some((h, signing)) = grant_hashes {
            framed.grant.set_hash(h);
            framed.grant.set_signing_digest(signing);
        }
        let known = self.known(&framed);
        let headers = phase2(&framed, &known)?;
        let checked = self.phase3(&framed, headers, known)?;
        let effective = self.phase4(&framed, &checked)?;
        self.phase5(&checked, now)?;
        self.phase6(&checked, peer_id, peer_key, now)?;
        phase7(&checked, peer_id, peer_key)?;
        self.phase8(&effective)?;
        Ok(result(checked, effective))
    }

    /// Phase 3: keys, signatures and claims, token by token (rules 3.a to 3.c); token `i + 1` is
    /// not touched before token `i` passed 3.c.
    fn phase3(&self, framed: &Framed<'_>, headers: Headers, known: Known) -> Result<Checked> {
        let (authority, grant_key, grant_jkt) = self.grant_key(&headers.grant)?;
        let mut known = known.into_iter();
        let grant = match hit(&framed.grant, known.next().flatten(), &grant_key) {
            Some(CachedToken::Grant(g)) => g,
            _ => {
                let hash = !framed.links.is_empty() || self.cache.is_some();
                signature(&framed.grant, &headers.grant, &grant_key, hash).map_err(|e| e.at(0))?;
                let g = Arc::new(
                    decode_grant(&framed.grant.payload().map_err(|e| e.at(0))?)
                        .map_err(|e| e.at(0))?,
                );
                self.remember(
                    &framed.grant,
                    &grant_key,
                    &headers.grant,
                    CachedToken::Grant(Arc::clone(&g)),
                );
                g
            }
        };
        issuer_is_authority(&grant, &authority)?;
        let mut links: Vec<Arc<LinkClaims>> = Vec::with_capacity(framed.links.len());
        for (j, (t, h)) in framed.links.iter().zip(&headers.links).enumerate() {
            let i = j + 1;
            // Rule 3.a.3: the key is the previous token's `cnf`.
            let key = links.last().map_or(&grant.cnf, |l| &l.cnf).clone();
            let link = match hit(t, known.next().flatten(), &key) {
                Some(CachedToken::Link(l)) => l,
                _ => {
                    let hash = i < framed.links.len() || self.cache.is_some();
                    signature(t, h, &key, hash).map_err(|e| e.at(i))?;
                    let l = Arc::new(
                        decode_link(&t.payload().map_err(|e| e.at(i))?).map_err(|e| e.at(i))?,
                    );
                    self.remember(t, &key, h, CachedToken::Link(Arc::clone(&l)));
                    l
                }
            };
            links.push(link);
        }
        Ok(Checked {
            authority_id: authority.id(),
            authority,
            grant,
            grant_jkt,
            links,
        })
    }

    /// Rules 3.a.1 and 3.a.2: the grant key by `kid` among the `agentid-grant` keys of all
    /// bundles (found in exactly one), and its trust domain an accepted authority.
    fn grant_key(&self, header: &Header) -> Result<(TrustDomain, PublicKey, String)> {
        let at0 = |e: Error| e.at(0);
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| at0(Error::new(ErrorCode::BadHeader, "a grant needs `kid`")))?;
        // Rule 3.a.1.
        let (td, key) = self.config.bundles.find_grant_key(kid).ok_or_else(|| {
            at0(Error::new(
                ErrorCode::UntrustedAuthority,
                "no single trusted bundle holds the grant key",
            ))
        })?;
        // Rule 3.a.2.
        if !self.config.authority.accepts(td) {
            return Err(at0(Error::new(
                ErrorCode::AuthorityNotAccepted,
                format!("{td} is not an accepted authority here"),
            )));
        }
        Ok((td.clone(), key.clone(), kid.to_owned()))
    }

    /// The cache's entry for each token's exact bytes (grant first; empty without a cache),
    /// looked up once per verification: phase 2 takes a cached token's header from it and
    /// phase 3 its claims, if the key matches ([`hit`]).
    fn known(&self, framed: &Framed<'_>) -> Known {
        let Some(cache) = self.cache.as_ref() else {
            return Vec::new();
        };
        std::iter::once(&framed.grant)
            .chain(&framed.links)
            .map(|t| cache.get(t.raw.text))
            .collect()
    }

    fn remember(&self, t: &FramedToken<'_>, key: &PublicKey, header: &Header, value: CachedToken) {
        if let Some(cache) = &self.cache {
            cache.insert(
                t.raw.text,
                *key.thumbprint_ascii(),
                t.hash(),
                header.clone(),
                value,
            );
        }
    }

    /// Phase 4: linkage and attenuation. The grant's rules (4.0.1 to 4.0.3) set the effective
    /// values, then [`attenuate`] (rules 4.1 to 4.11) narrows them link by link.
    fn phase4(&self, framed: &Framed<'_>, checked: &Checked) -> Result<Effective> {
        let enforced = EnforcedLimits::Names(&self.config.enforced_limits);
        let mut eff = Effective::from_grant(&checked.grant, enforced).map_err(|e| e.at(0))?;
        let mut prev = &framed.grant;
        for (j, (link, t)) in checked.links.iter().zip(&framed.links).enumerate() {
            eff = attenuate(eff, link, &prev.hash(), enforced).map_err(|e| e.at(j + 1))?;
            prev = t;
        }
        Ok(eff)
    }

    /// Phase 5: time, rules 5.1 to 5.5 for each token in order.
    fn phase5(&self, checked: &Checked, now: u64) -> Result<()> {
        let skew = self.config.skew;
        for (i, t) in checked.tokens().enumerate() {
            let (iat, nbf, exp) = t.times();
            let check = || -> Result<()> {
                nbf_not_after_exp(nbf, exp)?;
                if i == 0 {
                    grant_lifetime(iat, exp)?;
                }
                not_issued_in_future(iat, now, skew)?;
                already_valid(nbf, now, skew)?;
                not_expired(exp, now, skew)
            };
            check().map_err(|e| e.at(i))?;
        }
        Ok(())
    }

    /// Rule 6.1 for one trust domain `td`: a list is held (6.1.1, `revocation_missing`) and is
    /// not stale (6.1.2, `revocation_stale`). `Ok(None)` only where missing or stale lists are
    /// tolerated (a `danger_` setting), where a stale list is still used.
    fn list(&self, td: &str, now: u64) -> Result<Option<&RevocationList>> {
        let list = self.config.revocations.get(td).map(|l| &**l);
        match list {
            // Rule 6.1.2.
            Some(l)
                if l.is_stale(now, self.config.skew) && !self.config.danger_revocation_optional =>
            {
                Err(Error::new(
                    ErrorCode::RevocationStale,
                    format!("the revocation list of {td} is stale"),
                ))
            }
            Some(l) => Ok(Some(l)),
            // Rule 6.1.1.
            None if self.config.danger_revocation_optional => Ok(None),
            None => Err(Error::new(
                ErrorCode::RevocationMissing,
                format!("no revocation list for {td}"),
            )),
        }
    }

    /// Phase 6: revocation. Rule 6.1 (the lists), 6.2 (every token), 6.3 (the peer).
    fn phase6(
        &self,
        checked: &Checked,
        peer_id: &SpiffeId,
        peer_key: &PublicKey,
        now: u64,
    ) -> Result<()> {
        // Rule 6.1: every distinct trust domain in order of first appearance
        // (iss_0, sub_0, iss_1, sub_1, ..., then the peer's); failures carry no index.
        let mut domains: Vec<&str> = Vec::with_capacity(4);
        let all = checked
            .tokens()
            .flat_map(|t| [t.iss_td(), t.sub().as_spiffe_id().trust_domain_str()])
            .chain(core::iter::once(peer_id.trust_domain_str()));
        for d in all {
            if !domains.contains(&d) {
                self.list(d, now)?;
                domains.push(d);
            }
        }
        // Rule 6.2: every token, at its index. For a link (i >= 1), `iss_i` is `sub_{i-1}` (rule
        // 4.2, phase 4) and the key that verified it is `cnf_{i-1}` (rule 3.a.3): rules 6.2.3 and
        // 6.2.6 would ask `L(td(sub_{i-1}))` what rules 6.2.4 and 6.2.5 asked it at token i - 1,
        // at the same `now`, where the answer was no (else verification ended there). They are
        // asked for the grant only: the outcome and the order of checks are the same.
        let authority_list = self.list(checked.authority.as_str(), now)?;
        let task_revoked = task_revoked(authority_list, &checked.grant.task, now);
        let signing_jkt = &checked.grant_jkt;
        let mut cnf_jkt = "";
        for (i, t) in checked.tokens().enumerate() {
            let iss_list = self.list(t.iss_td(), now)?;
            let sub_list = self.list(t.sub().as_spiffe_id().trust_domain_str(), now)?;
            let (iss_id, iss_holder) = match i.checked_sub(1).and_then(|j| checked.links.get(j)) {
                None => (&checked.authority_id, None),
                Some(l) => (l.iss.as_spiffe_id(), Some(&l.iss)),
            };
            cnf_jkt = t.cnf().thumbprint_str();
            let answered_at_previous = i > 0;
            let fired = if jti_revoked(iss_list, iss_id, t.jti(), now) {
                Some("token revoked by `jti`")
            } else if task_revoked {
                Some("task revoked")
            } else if !answered_at_previous && issuing_agent_revoked(iss_list, iss_holder, now) {
                Some("issuing agent revoked")
            } else if holder_agent_revoked(sub_list, t.sub(), now) {
                Some("holder agent revoked")
            } else if key_revoked(sub_list, cnf_jkt, now) {
                Some("holder key revoked")
            } else if !answered_at_previous && key_revoked(iss_list, signing_jkt, now) {
                Some("signing key revoked")
            } else {
                None
            };
            if let Some(what) = fired {
                return Err(revoked(what).at(i));
            }
        }
        // Rule 6.3: the peer (the last `cnf` thumbprint is reused when it is the peer's key).
        // When the peer is the last holder (its ID the last `sub`, its key the last `cnf`: what
        // phase 7 then requires) in the authority's trust domain, its three questions (key,
        // agent, task) went to the same list in rules 6.2.5, 6.2.4 and 6.2.2 (the last holder's
        // task is the grant's: rules 4.0.2 and 4.3) and were answered no: not asked again.
        let last = checked.last();
        let same_key = last.cnf() == peer_key;
        if same_key
            && last.sub().as_spiffe_id() == peer_id
            && peer_id.trust_domain_str() == checked.authority.as_str()
        {
            return Ok(());
        }
        let peer_jkt = if same_key {
            cnf_jkt
        } else {
            peer_key.thumbprint_str()
        };
        let peer_list = self.list(peer_id.trust_domain_str(), now)?;
        if peer_revoked(peer_list, peer_id, peer_jkt, now) {
            return Err(revoked("peer revoked (certificate key, agent or task)"));
        }
        Ok(())
    }

    /// Section 10, "Verifying a peer without a chain": rule 6.1 over the peer's trust domain
    /// only, then rule 6.3 (its certificate key, its agent, its task).
    pub fn check_peer_revocation(
        &self,
        peer_id: &SpiffeId,
        peer_key: &PublicKey,
        now: u64,
    ) -> Result<()> {
        valid_now(now)?;
        let list = self.list(peer_id.trust_domain_str(), now)?;
        if peer_revoked(list, peer_id, peer_key.thumbprint_str(), now) {
            return Err(revoked(&format!("peer {peer_id} is revoked")));
        }
        Ok(())
    }

    /// Phase 8, rule 8.1: the final effective audience covers the verifier's own ID.
    fn phase8(&self, effective: &Effective) -> Result<()> {
        if !effective.aud.covers_id(&self.config.own_id) {
            return Err(Error::new(
                ErrorCode::AudienceMismatch,
                "this verifier is not in the chain's audience",
            ));
        }
        Ok(())
    }

    /// Authorizes one request for `requested` (concrete scope tokens, no `*`) under a verified
    /// chain: covered by the effective scope, and the chain's authority may grant it here.
    pub fn authorize(&self, verified: &VerifiedChain, requested: &Scope) -> Result<()> {
        self.authorize_with_limits(verified, requested, &BTreeMap::new())
    }

    /// Authorizes one request of a peer (spec/PROTOCOL.md section 13) whose presentation
    /// carried `chain` (`None`: a peer without a chain, which holds no authority: the amounts
    /// (section 3.3, `bad_config`) and rule A1, then `scope_not_granted`).
    pub fn authorize_peer(
        &self,
        chain: Option<&VerifiedChain>,
        requested: &Scope,
        amounts: &BTreeMap<String, u64>,
    ) -> Result<()> {
        match chain {
            Some(c) => self.authorize_with_limits(c, requested, amounts),
            None => {
                valid_amounts(amounts)?;
                requested_scope_is_concrete(requested)?;
                Err(Error::new(
                    ErrorCode::ScopeNotGranted,
                    "a peer without a chain holds no authority",
                ))
            }
        }
    }

    /// As [`Verifier::authorize`], also checking requested amounts against the effective limit
    /// ceilings (`limit_exceeded`); a requested name the verifier does not enforce is refused.
    /// An amount above 2^53 - 1 is not a valid request (section 3.3): `bad_config`, before any
    /// rule runs.
    pub fn authorize_with_limits(
        &self,
        verified: &VerifiedChain,
        requested: &Scope,
        amounts: &BTreeMap<String, u64>,
    ) -> Result<()> {
        valid_amounts(amounts)?;
        requested_scope_is_concrete(requested)?;
        // Rule A2: the chain's effective scope covers the request.
        if !verified.scope.covers(requested) {
            let missing: Vec<&str> = requested
                .tokens()
                .iter()
                .filter(|t| !verified.scope.covers_token(t))
                .map(|t| t.as_str())
                .collect();
            return Err(Error::new(
                ErrorCode::ScopeNotGranted,
                format!(
                    "scope `{}` not granted by the chain (it grants `{}`)",
                    missing.join(" "),
                    verified.scope
                ),
            ));
        }
        // Rule A3: the authority policy lets the chain's authority grant it here.
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
        // Rule A4: each requested amount, in name order.
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

/// The protected headers after phase 2.
struct Headers {
    grant: Header,
    links: Vec<Header>,
}

/// The token cache's entries for a chain's tokens, grant first ([`Verifier::known`]).
type Known = Vec<Option<Entry>>;

/// Phase 2: headers, rules 2.1 to 2.5 (in `jws::parse_header`); the expected kind is grant for
/// token 0 and link after it. A token whose exact bytes are cached as the same kind passed
/// these rules when it was cached (they read nothing but its bytes and its kind): its header
/// is the cached one. Every other header is parsed, in order, so the first failure is the same.
fn phase2(framed: &Framed<'_>, known: &Known) -> Result<Headers> {
    let cached = |i: usize, grant: bool| {
        known
            .get(i)
            .and_then(Option::as_ref)
            .filter(|e| matches!(e.token, CachedToken::Grant(_)) == grant)
            .map(|e| e.header.clone())
    };
    let grant = match cached(0, true) {
        Some(h) => h,
        None => parse_header(&framed.grant.raw, TokenType::Grant).map_err(|e| e.at(0))?,
    };
    // Rules 2.1 to 2.5 read nothing but a header's bytes and the expected kind: a link whose
    // header is byte for byte the previous link's (links usually share one) has its header.
    let mut links: Vec<Header> = Vec::with_capacity(framed.links.len());
    let mut previous: Option<&str> = None;
    for (j, t) in framed.links.iter().enumerate() {
        let header = match (cached(j + 1, false), links.last()) {
            (Some(h), _) => h,
            (None, Some(h)) if previous == Some(t.raw.header_b64) => h.clone(),
            (None, _) => parse_header(&t.raw, TokenType::Link).map_err(|e| e.at(j + 1))?,
        };
        previous = Some(t.raw.header_b64);
        links.push(header);
    }
    Ok(Headers { grant, links })
}

/// Section 10, "Caching": a hit stands for 3.b and 3.c (the same bytes verified under the
/// same key); everything else runs on every use.
fn hit(t: &FramedToken<'_>, known: Option<Entry>, key: &PublicKey) -> Option<CachedToken> {
    let e = known.filter(|e| e.jkt == *key.thumbprint_ascii())?;
    t.set_hash(e.hash);
    Some(e.token)
}

/// Rules 3.b.1 and 3.b.2: `alg` matches the key, and the signature verifies over the exact
/// transmitted signing input.
///
/// With `hash`, a token whose hash will be read (a link follows it, or the cache keeps it) and
/// is not known yet: the signing input's SHA-256 that ES256 verifies is also the start of the
/// token's hash, which is taken in the same pass ([`verify_and_hash`]).
fn signature(t: &FramedToken<'_>, h: &Header, key: &PublicKey, hash: bool) -> Result<()> {
    let input = t.raw.signing_input();
    // Both algorithms' signatures are 64 bytes: decoded onto the stack; any other length goes
    // the general way, for its verdict or error.
    let (stack, heap);
    let sig: &[u8] = match b64_decode_array::<64>(t.raw.signature_b64) {
        Some(bytes) => {
            stack = bytes;
            &stack
        }
        None => {
            heap = t.signature()?;
            &heap
        }
    };
    if let Some(digest) = t.signing_digest() {
        return verify_digest(key, h.alg, input, digest, sig);
    }
    if !hash || t.has_hash() {
        return verify(key, h.alg, input, sig);
    }
    if let Some(whole) = verify_and_hash(key, h.alg, t.raw.text.as_bytes(), input.len(), sig)? {
        t.set_hash(whole);
    }
    Ok(())
}

/// Rule 3.c.6: the grant's `iss` is the trust domain whose bundle held its key.
fn issuer_is_authority(grant: &GrantClaims, authority: &TrustDomain) -> Result<()> {
    if grant.iss != *authority {
        return Err(Error::new(
            ErrorCode::IssuerMismatch,
            "grant `iss` is not the trust domain whose bundle holds its key",
        )
        .at(0));
    }
    Ok(())
}

/// Rule 5.1: `nbf <= exp`, else `bad_validity`.
pub(crate) fn nbf_not_after_exp(nbf: u64, exp: u64) -> Result<()> {
    if nbf > exp {
        return Err(Error::new(ErrorCode::BadValidity, "`nbf` after `exp`"));
    }
    Ok(())
}

/// Rule 5.2 (grant only): `exp - iat <= 86400`, else `lifetime_exceeded`. Links have no cap of
/// their own: their `exp` never exceeds the grant's.
pub(crate) fn grant_lifetime(iat: u64, exp: u64) -> Result<()> {
    if exp.saturating_sub(iat) > MAX_TOKEN_LIFETIME {
        return Err(Error::new(
            ErrorCode::LifetimeExceeded,
            "grant lifetime above 24 hours",
        ));
    }
    Ok(())
}

/// Section 3.3: `now` is an integer input in [0, 2^53 - 1], else `bad_config` (index `null`):
/// never a value to compute with.
pub(crate) fn valid_now(now: u64) -> Result<()> {
    match crate::encoding::safe_int(now) {
        Some(_) => Ok(()),
        None => Err(Error::new(
            ErrorCode::BadConfig,
            "`now` must be an integer in [0, 2^53-1]",
        )),
    }
}

/// Section 3.3: requested amounts are integer inputs in [0, 2^53 - 1], else `bad_config`
/// (index `null`), as the vectors' runner refuses them when it reads its input.
fn valid_amounts(amounts: &BTreeMap<String, u64>) -> Result<()> {
    match amounts
        .iter()
        .find(|(_, a)| crate::encoding::safe_int(**a).is_none())
    {
        None => Ok(()),
        Some((name, _)) => Err(Error::new(
            ErrorCode::BadConfig,
            format!("requested amount of `{name}` must be an integer in [0, 2^53-1]"),
        )),
    }
}

/// Rule 5.3: `iat <= now + skew`, else `issued_in_future`.
pub(crate) fn not_issued_in_future(iat: u64, now: u64, skew: u64) -> Result<()> {
    if iat > now.saturating_add(skew) {
        return Err(Error::new(ErrorCode::IssuedInFuture, "`iat` in the future"));
    }
    Ok(())
}

/// Rule 5.4: `now + skew >= nbf`, else `not_yet_valid`.
fn already_valid(nbf: u64, now: u64, skew: u64) -> Result<()> {
    if now.saturating_add(skew) < nbf {
        return Err(Error::new(ErrorCode::NotYetValid, "token not yet valid"));
    }
    Ok(())
}

/// Rule 5.5: `now < exp + skew`, else `expired`.
pub(crate) fn not_expired(exp: u64, now: u64, skew: u64) -> Result<()> {
    if now >= exp.saturating_add(skew) {
        return Err(Error::new(ErrorCode::Expired, "token expired"));
    }
    Ok(())
}

/// Rule 6.2.1: `L(td(iss_i))` has the token entry `{jti, iss}`.
fn jti_revoked(iss_list: Option<&RevocationList>, iss: &SpiffeId, jti: &str, now: u64) -> bool {
    iss_list.is_some_and(|l| l.has_jti(iss, jti, now))
}

/// Rule 6.2.2: `L(A)` has the task entry for the grant's task (only the authority's list can
/// revoke a task of its chains).
fn task_revoked(authority_list: Option<&RevocationList>, task: &TaskId, now: u64) -> bool {
    authority_list.is_some_and(|l| l.has_task(task, now))
}

/// Rule 6.2.3: `iss_i` is a task identity (every link's; never the grant's, a trust-domain ID)
/// and `L(td(iss_i))` has the agent entry for its agent.
fn issuing_agent_revoked(
    iss_list: Option<&RevocationList>,
    iss: Option<&TaskIdentity>,
    now: u64,
) -> bool {
    match (iss_list, iss) {
        (Some(l), Some(iss)) => l.has_agent_str(iss.agent_str(), now),
        _ => false,
    }
}

/// Rule 6.2.4: `L(td(sub_i))` has the agent entry for the agent of `sub_i`.
fn holder_agent_revoked(sub_list: Option<&RevocationList>, sub: &TaskIdentity, now: u64) -> bool {
    sub_list.is_some_and(|l| l.has_agent_str(sub.agent_str(), now))
}

/// Rules 6.2.5 and 6.2.6, and 6.3.1: the list has the key entry `{jkt}` (6.2.5: the thumbprint
/// of token i's `cnf` in `L(td(sub_i))`; 6.2.6: of the key that verified token i in
/// `L(td(iss_i))`; 6.3.1: of the peer key in `L(td(peer))`).
fn key_revoked(list: Option<&RevocationList>, jkt: &str, now: u64) -> bool {
    list.is_some_and(|l| l.has_key(jkt, now))
}

/// Rule 6.3, in `L(td(peer))`: the key entry of the peer key (6.3.1), then, for a task
/// identity, the agent entry of its agent (6.3.2) and the task entry of its task (6.3.3).
pub(crate) fn peer_revoked(
    list: Option<&RevocationList>,
    peer: &SpiffeId,
    peer_jkt: &str,
    now: u64,
) -> bool {
    let Some(l) = list else { return false };
    if key_revoked(Some(l), peer_jkt, now) {
        return true;
    }
    match peer.as_task_identity() {
        Some(t) => l.has_agent_str(t.agent_str(), now) || l.has_task_str(t.task_id_str(), now),
        None => false,
    }
}

/// Phase 7: possession. Rule 7.1: the last `cnf` is the peer key (`possession_mismatch`);
/// rule 7.2: the last `sub` is the peer ID (`holder_mismatch`); both at index `n`.
fn phase7(checked: &Checked, peer_id: &SpiffeId, peer_key: &PublicKey) -> Result<()> {
    let n = checked.depth();
    let last = checked.last();
    if last.cnf() != peer_key {
        return Err(Error::new(
            ErrorCode::PossessionMismatch,
            "the last `cnf` key is not the peer's certificate key",
        )
        .at(n));
    }
    if last.sub().as_spiffe_id() != peer_id {
        return Err(Error::new(
            ErrorCode::HolderMismatch,
            "the last `sub` is not the peer's URI SAN",
        )
        .at(n));
    }
    Ok(())
}

/// The verification result (section 11).
fn result(checked: Checked, effective: Effective) -> VerifiedChain {
    let n = checked.depth();
    let actors = checked
        .tokens()
        .enumerate()
        .map(|(i, t)| Actor {
            id: t.sub().clone(),
            attested: i == 0 || i == n,
        })
        .collect();
    let not_before = checked
        .tokens()
        .map(|t| t.times().1)
        .max()
        .unwrap_or_default();
    let jtis = checked.tokens().map(|t| t.jti().to_owned()).collect();
    // What `checked` owns alone is moved out; the claims are shared with the token cache.
    let Checked {
        authority,
        authority_id,
        grant,
        grant_jkt,
        links,
    } = checked;
    // The thumbprints were computed once per key by phase 6 (kept with the key).
    let mut revocation_targets = Vec::with_capacity(5 + 4 * n);
    revocation_targets.extend(
        [
            RevocationTarget::Key(grant_jkt),
            RevocationTarget::Jti {
                iss: authority_id,
                jti: grant.jti.clone(),
            },
            RevocationTarget::Task(grant.task.clone()),
            RevocationTarget::Agent(grant.sub.agent()),
            RevocationTarget::Key(grant.cnf.thumbprint_str().to_owned()),
        ]
        .map(Arc::new),
    );
    for link in &links {
        // The issuer's agent is the previous holder's (rule 4.2): that target is shared.
        let issuer_agent = match revocation_targets.iter().rev().find(
            |t| matches!(&***t, RevocationTarget::Agent(a) if a.as_str() == link.iss.agent_str()),
        ) {
            Some(t) => Arc::clone(t),
            None => Arc::new(RevocationTarget::Agent(link.iss.agent())),
        };
        revocation_targets.extend([
            Arc::new(RevocationTarget::Jti {
                iss: link.iss.as_spiffe_id().clone(),
                jti: link.jti.clone(),
            }),
            issuer_agent,
            Arc::new(RevocationTarget::Agent(link.sub.agent())),
            Arc::new(RevocationTarget::Key(link.cnf.thumbprint_str().to_owned())),
        ]);
    }
    VerifiedChain {
        authority,
        mode: grant.mode,
        principal: grant.principal.clone(),
        holder: effective.holder,
        // The grant's task: the effective task is never changed along a chain (rule 4.3).
        task: effective.task,
        scope: effective.scope,
        audience: effective.aud,
        limits: effective.limits,
        not_before,
        // `exp` never grows along a verified chain (rule 4.11): the last is the earliest.
        expires: effective.exp,
        actors,
        depth: n,
        grant_jti: grant.jti.clone(),
        jtis,
        revocation_targets,
    }
}

/// Rule A1 (spec/PROTOCOL.md section 13): a requested scope contains no `*` (its syntax was
/// checked when it was parsed), else `bad_scope`.
fn requested_scope_is_concrete(requested: &Scope) -> Result<()> {
    if !requested.is_concrete() {
        return Err(Error::new(
            ErrorCode::BadScope,
            format!(
                "a requested scope may not contain `*` (got {requested}): ask for concrete tokens"
            ),
        ));
    }
    Ok(())
}
