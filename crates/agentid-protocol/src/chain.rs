//! The chain string: a grant and its links joined with `~`, and its framing (phase 1).

use core::fmt;

use crate::encoding::b64_decode_checked;
use crate::error::{Error, ErrorCode, Result};
use crate::jws::{self, RawToken};
use crate::token::claims::{decode_chain_claims_map, ChainClaims, MAX_DEPTH};

/// Maximum size of a chain string in bytes.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

/// Maximum number of tokens in a chain: the grant plus [`MAX_DEPTH`] links.
pub const MAX_TOKENS: usize = MAX_DEPTH as usize + 1;

/// A token after phase 1: its exact transmitted parts, decoded.
#[derive(Debug)]
pub(crate) struct FramedToken<'a> {
    pub raw: RawToken<'a>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Phase 1: framing. Splits on `~`, enforces the caps and decodes every part.
pub(crate) fn frame(chain: &str) -> Result<Vec<FramedToken<'_>>> {
    if chain.len() > MAX_CHAIN_BYTES {
        return Err(Error::new(
            ErrorCode::ChainTooLarge,
            format!("chain of {} bytes exceeds 64 KiB", chain.len()),
        ));
    }
    // 1.2 No empty part (the index of the first one), 1.3 then at most 9 tokens (chain-level).
    let parts: Vec<&str> = chain.split('~').collect();
    if let Some(i) = parts.iter().position(|p| p.is_empty()) {
        return Err(Error::new(ErrorCode::Malformed, "empty chain part").at(i));
    }
    if parts.len() > MAX_TOKENS {
        return Err(Error::new(
            ErrorCode::DepthExceeded,
            "a chain holds at most 8 links",
        ));
    }
    // 1.4 Each token: size cap, three parts, strict base64url.
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        let raw = jws::split(part).map_err(|e| e.at(i))?;
        // `split` validated all three parts; the two read here are decoded once.
        let payload = b64_decode_checked(raw.payload_b64).map_err(|e| e.at(i))?;
        let signature = b64_decode_checked(raw.signature_b64).map_err(|e| e.at(i))?;
        out.push(FramedToken {
            raw,
            payload,
            signature,
        });
    }
    Ok(out)
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

    /// The last token's compact bytes.
    pub(crate) fn last_token(&self) -> &str {
        self.text.rsplit('~').next().unwrap_or_default()
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

    /// Reads the last token's claims WITHOUT verifying any signature: for builders and display.
    pub(crate) fn last_claims_unverified(&self) -> Result<ChainClaims> {
        let framed = frame(&self.text)?;
        let last = framed
            .last()
            .ok_or_else(|| Error::new(ErrorCode::Malformed, "empty chain"))?;
        let map = crate::encoding::parse_ijson_object(&last.payload)?;
        decode_chain_claims_map(&map, framed.len() == 1)
    }

    /// The holder named by the last token (unverified).
    pub fn holder_unverified(&self) -> Result<crate::TaskIdentity> {
        Ok(self.last_claims_unverified()?.sub)
    }

    /// The effective audience of the chain (unverified): the last `aud` along it, or the grant
    /// issuer's trust domain. For a presenter deciding whether to send its chain to a peer.
    pub fn audience_unverified(&self) -> Result<crate::IdSet> {
        let framed = frame(&self.text)?;
        let mut aud = None;
        let mut authority = None;
        for (i, t) in framed.iter().enumerate() {
            let map = crate::encoding::parse_ijson_object(&t.payload).map_err(|e| e.at(i))?;
            let claims = decode_chain_claims_map(&map, i == 0).map_err(|e| e.at(i))?;
            if i == 0 {
                authority = Some(claims.iss.clone());
            }
            if let Some(a) = claims.aud {
                aud = Some(a);
            }
        }
        match (aud, authority) {
            (Some(a), _) => Ok(a),
            (None, Some(td)) => crate::IdSet::new(vec![td]),
            (None, None) => Err(Error::new(ErrorCode::Malformed, "empty chain")),
        }
    }

    /// The `exp` of the last token (unverified): no link may outlive it.
    pub fn expires_unverified(&self) -> Result<u64> {
        Ok(self.last_claims_unverified()?.exp)
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
