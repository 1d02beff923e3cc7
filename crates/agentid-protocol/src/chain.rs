//! The chain string: a grant and its links joined with `~`, and its framing (phase 1).

use core::cell::OnceCell;
use core::fmt;

use crate::attenuation::{attenuate, grant_audience, link_audience, Effective, EnforcedLimits};
use crate::crypto::{sha256, SigningDigest};
use crate::encoding::b64_decode_checked;
use crate::error::{Error, ErrorCode, Result};
use crate::jws::{self, RawToken};
use crate::token::claims::{decode_grant, decode_link, GrantClaims, LinkClaims, MAX_DEPTH};

/// Maximum size of a chain string in bytes.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

/// Maximum number of tokens in a chain: the grant plus [`MAX_DEPTH`] links.
pub const MAX_TOKENS: usize = MAX_DEPTH as usize + 1;

/// A token after phase 1: its exact transmitted parts, each checked to be strict base64url.
/// The payload and the signature are decoded, and the token hashed, when (and only if) a later
/// phase reads them: a token found in the verified-token cache needs neither.
#[derive(Debug)]
pub(crate) struct FramedToken<'a> {
    pub raw: RawToken<'a>,
    hash: OnceCell<[u8; 32]>,
    /// The SHA-256 of the signing input, when it was taken with other hashes of the same
    /// bytes (the grant's, with the chain's `cth`).
    signing: OnceCell<SigningDigest>,
}

impl FramedToken<'_> {
    /// The decoded payload.
    pub fn payload(&self) -> Result<Vec<u8>> {
        b64_decode_checked(self.raw.payload_b64)
    }

    /// The decoded signature.
    pub fn signature(&self) -> Result<Vec<u8>> {
        b64_decode_checked(self.raw.signature_b64)
    }

    /// SHA-256 of the token's compact bytes (the next link's `prev`), computed once.
    pub fn hash(&self) -> [u8; 32] {
        *self.hash.get_or_init(|| sha256(self.raw.text.as_bytes()))
    }

    /// The SHA-256 of the signing input, if it was given ([`FramedToken::set_signing_digest`]).
    pub fn signing_digest(&self) -> Option<&SigningDigest> {
        self.signing.get()
    }

    /// Sets [`FramedToken::signing_digest`] to `digest`, the SHA-256 of this token's exact
    /// signing input taken earlier.
    pub fn set_signing_digest(&self, digest: SigningDigest) {
        let _ = self.signing.set(digest);
    }

    /// Whether [`FramedToken::hash`] is known already (set, or computed).
    pub fn has_hash(&self) -> bool {
        self.hash.get().is_some()
    }

    /// Sets [`FramedToken::hash`] to `hash`, the SHA-256 of these exact bytes taken earlier
    /// (the verified-token cache keeps it).
    pub fn set_hash(&self, hash: [u8; 32]) {
        // Already set means already computed from the same bytes.
        let _ = self.hash.set(hash);
    }
}

/// A chain after phase 1: a grant and zero to eight links. There is no empty chain.
#[derive(Debug)]
pub(crate) struct Framed<'a> {
    pub grant: FramedToken<'a>,
    pub links: Vec<FramedToken<'a>>,
}

impl Framed<'_> {
    /// Number of tokens (grant included).
    pub fn len(&self) -> usize {
        1 + self.links.len()
    }
}

/// Rule 1.4 (spec/PROTOCOL.md section 10, phase 1): one token's cap, three parts and strict
/// base64url (rules 1.4.1 to 1.4.3, in `jws::split`); the index is the caller's.
fn frame_token(part: &str) -> Result<FramedToken<'_>> {
    // `split` validates all three parts; the payload and the signature are decoded when read.
    Ok(FramedToken {
        raw: jws::split(part)?,
        hash: OnceCell::new(),
        signing: OnceCell::new(),
    })
}

/// Phase 1 (spec/PROTOCOL.md section 10): framing, rules 1.1 to 1.4 in order.
pub(crate) fn frame(chain: &str) -> Result<Framed<'_>> {
    // Rule 1.1: the chain cap.
    if chain.len() > MAX_CHAIN_BYTES {
        return Err(Error::new(
            ErrorCode::ChainTooLarge,
            format!("chain of {} bytes exceeds 64 KiB", chain.len()),
        ));
    }
    // Rule 1.2: no empty part (the index of the first one).
    let parts: Vec<&str> = chain.split('~').collect();
    if let Some(i) = parts.iter().position(|p| p.is_empty()) {
        return Err(Error::new(ErrorCode::Malformed, "empty chain part").at(i));
    }
    // Rule 1.3: at most 9 tokens (chain-level).
    if parts.len() > MAX_TOKENS {
        return Err(Error::new(
            ErrorCode::DepthExceeded,
            "a chain holds at most 8 links",
        ));
    }
    // Rule 1.4: each token. `split` always yields a first part, so the grant exists.
    let mut parts = parts.into_iter();
    let grant = frame_token(parts.next().unwrap_or_default()).map_err(|e| e.at(0))?;
    let links = parts
        .enumerate()
        .map(|(i, part)| frame_token(part).map_err(|e| e.at(i + 1)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Framed { grant, links })
}

/// A delegation chain as transmitted: the grant, then zero to eight links, joined with `~`.
///
/// Holding a `Chain` means only that it is well framed; verification is [`crate::Verifier`]'s job.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    text: String,
    tokens: usize,
}

impl Chain {
    /// Checks the framing (phase 1) of `s` without verifying anything else.
    pub fn parse_unverified(s: &str) -> Result<Self> {
        let tokens = frame(s)?.len();
        Ok(Self {
            text: s.to_owned(),
            tokens,
        })
    }

    /// The chain string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Number of links (0 for a bare grant).
    pub fn depth(&self) -> usize {
        self.tokens.saturating_sub(1)
    }

    /// The compact tokens, grant first.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.text.split('~')
    }

    pub(crate) fn appended(&self, token: &str) -> Self {
        Self {
            text: format!("{}~{}", self.text, token),
            tokens: self.tokens + 1,
        }
    }

    pub(crate) fn from_grant(token: String) -> Self {
        Self {
            text: token,
            tokens: 1,
        }
    }

    /// Decodes every token's claims WITHOUT verifying any signature: for a presenter reading
    /// its own chain (builders, display, choosing a peer). Never a basis for trusting the chain.
    pub fn read_unverified(&self) -> Result<UnverifiedChain> {
        let framed = frame(&self.text)?;
        let grant = decode_grant(&framed.grant.payload()?).map_err(|e| e.at(0))?;
        let links = framed
            .links
            .iter()
            .enumerate()
            .map(|(i, t)| decode_link(&t.payload()?).map_err(|e| e.at(i + 1)))
            .collect::<Result<Vec<_>>>()?;
        Ok(UnverifiedChain {
            tokens: self.text.split('~').map(str::to_owned).collect(),
            grant,
            links,
        })
    }
}

/// A chain's claims read WITHOUT verifying any signature, attenuation or time.
///
/// For the presenter of its own chain: what it holds, until when, for which audience. A verifier
/// never reads a chain this way: it uses [`crate::Verifier::verify_chain`].
#[derive(Clone, Debug)]
pub struct UnverifiedChain {
    /// Every token's compact bytes, grant first.
    tokens: Vec<String>,
    pub(crate) grant: GrantClaims,
    pub(crate) links: Vec<LinkClaims>,
}

impl UnverifiedChain {
    /// The holder named by the last token.
    pub fn holder(&self) -> &crate::TaskIdentity {
        self.links.last().map_or(&self.grant.sub, |l| &l.sub)
    }

    /// The key the last token binds (the holder's `cnf`).
    pub fn holder_key(&self) -> &crate::PublicKey {
        self.links.last().map_or(&self.grant.cnf, |l| &l.cnf)
    }

    /// The effective audience (section 7.2): the last `aud` along the chain, or the grant
    /// issuer's trust domain.
    pub fn audience(&self) -> Result<crate::IdSet> {
        Ok(self
            .links
            .iter()
            .fold(grant_audience(&self.grant)?, link_audience))
    }

    /// The effective limit ceilings (section 7.3): the name-wise minimum along the chain, as the
    /// verifier's rules compute them, without checking signatures or time. A holder checking
    /// its own chain with a [`crate::Verifier`] declares these names as enforced (rules 4.0.3
    /// and 4.8 are the verifier application's, not the holder's).
    pub fn limits(&self) -> Result<crate::Limits> {
        self.effective().map(|e| e.limits)
    }

    /// The effective scope (section 7.1): the last token's.
    pub fn scope(&self) -> Result<crate::Scope> {
        self.effective().map(|e| e.scope)
    }

    /// The principal the chain acts for (the grant's, with `mode` `on_behalf_of`), if any.
    pub fn principal(&self) -> Option<&serde_json::Value> {
        self.grant.principal.as_ref()
    }

    /// The effective `max_depth` (section 6): the last token's, how many links may still follow.
    pub fn max_depth(&self) -> Result<u8> {
        self.effective().map(|e| e.max_depth)
    }

    /// The effective delegation targets (section 7.4): the last `may_delegate_to` along the
    /// chain, or the grant issuer's trust domain.
    pub fn may_delegate_to(&self) -> Result<crate::IdSet> {
        self.effective().map(|e| e.may_delegate_to)
    }

    /// The `exp` of the last token: no link may outlive it.
    pub fn expires(&self) -> u64 {
        self.links.last().map_or(self.grant.exp, |l| l.exp)
    }

    /// Number of links.
    pub fn depth(&self) -> usize {
        self.links.len()
    }

    /// The compact bytes of the last token.
    pub(crate) fn last_token(&self) -> &str {
        self.tokens.last().map(String::as_str).unwrap_or_default()
    }

    /// The effective values after the last token, replayed through the verifier's own rules
    /// (4.0.1 to 4.0.3, then [`crate::attenuation::attenuate`] for each link) without checking
    /// signatures, time or any verifier's enforced limit names.
    pub(crate) fn effective(&self) -> Result<Effective> {
        let mut eff =
            Effective::from_grant(&self.grant, EnforcedLimits::Unknown).map_err(|e| e.at(0))?;
        // Link j + 1 follows token j.
        for (j, (link, prev)) in self.links.iter().zip(&self.tokens).enumerate() {
            let prev_hash = sha256(prev.as_bytes());
            eff = attenuate(eff, link, &prev_hash, EnforcedLimits::Unknown)
                .map_err(|e| e.at(j + 1))?;
        }
        Ok(eff)
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Chains are bearer-free (possession is proven by mTLS), but we still never log them whole.
        f.debug_struct("Chain")
            .field("depth", &self.depth())
            .field("bytes", &self.text.len())
            .finish()
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
