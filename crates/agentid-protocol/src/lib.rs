//! # agentid-protocol
//!
//! The sans-IO core of agentid: SPIFFE identities for agents, tasks and services; JWS grants,
//! delegation links and hop proofs; the delegation-chain verifier; SPIFFE trust bundles and
//! signed revocation lists.
//!
//! ## Security model
//!
//! * Authority starts at a **grant** signed by a trust domain's authority key (found in that
//!   domain's bundle, never in the token). Each **link** hands a narrower slice of the previous
//!   holder's rights to the next holder and is signed by the previous holder's confirmed key
//!   (`cnf`). The last holder proves possession through the mTLS handshake.
//! * Verification runs in fixed phases (framing, headers, keys/signatures/claims, linkage and
//!   attenuation, time, revocation, possession, audience). No claim is read before its token's
//!   signature has verified. The first failure ends verification with one stable code.
//! * Time is always a parameter: this crate never reads a clock inside verification.
//! * Keys never come from the token itself. Private task keys are reachable only through the
//!   typed builders of this crate; there is no generic `sign(bytes)` for a task key.
//!
//! ## Example: a delegated chain, verified, authorized and revoked
//!
//! A trust domain's authority grants a planner two scopes; the planner hands a coder one of
//! them; a service verifies the chain the coder presents and authorizes each request against
//! it; a newer revocation list then revokes the coder. No I/O: the caller passes the time (in
//! the transport, the peer's identity and key come from the mTLS handshake).
//!
//! ```
//! use agentid_protocol::{
//!     AgentId, Algorithm, AuthorityKey, BundleSet, ErrorCode, GrantBuilder, LinkBuilder,
//!     RevocationListBuilder, Scope, ServiceId, TaskId, TaskIdentity, TaskKey, TrustBundle,
//!     TrustDomain, Verifier, VerifierConfig,
//! };
//!
//! # fn main() -> agentid_protocol::Result<()> {
//! let now = 1_767_225_600; // seconds since the epoch, read from the clock by the caller
//!
//! // The trust domain's authority keys, published in its SPIFFE bundle.
//! let td = TrustDomain::parse("example.org")?;
//! let grant_key = AuthorityKey::generate(Algorithm::Es256)?;
//! let list_key = AuthorityKey::generate(Algorithm::Es256)?;
//! let bundle = TrustBundle::new(td.clone(), 1)
//!     .add_grant_key(grant_key.public_key().clone())
//!     .add_revocation_key(list_key.public_key().clone());
//!
//! // Two agents of one task, each holding its own key.
//! let task = TaskId::generate()?;
//! let planner = TaskIdentity::new(&AgentId::new(&td, "planner")?, &task)?;
//! let planner_key = TaskKey::generate(Algorithm::Es256)?;
//! let coder = TaskIdentity::new(&AgentId::new(&td, "coder")?, &task)?;
//! let coder_key = TaskKey::generate(Algorithm::Ed25519)?;
//!
//! // The grant (signed by the authority), then a narrower link (signed by the planner).
//! let scopes = Scope::parse("repo:read repo:write")?;
//! let grant = GrantBuilder::new(&td, &planner, planner_key.public_key(), scopes)
//!     .max_depth(1)
//!     .validity(now, now, now + 3600)
//!     .sign(&grant_key)?;
//! let narrower = Scope::parse("repo:read")?;
//! let chain = LinkBuilder::new(&grant, &coder, coder_key.public_key(), narrower)
//!     .validity(now, now, now + 600)
//!     .sign(&planner_key)?;
//!
//! // The service's verifier: the bundles it trusts and a current revocation list (required:
//! // without one, verification fails closed).
//! let service = ServiceId::new(&td, "repo")?;
//! let mut bundles = BundleSet::new();
//! bundles.insert(bundle)?;
//! let mut config = VerifierConfig::new(service.as_spiffe_id().clone(), bundles);
//! let first_list = RevocationListBuilder::new(&td, 1, now, now + 600).sign(&list_key)?;
//! config.apply_revocation_list(&first_list)?;
//! let mut verifier = Verifier::new(config)?;
//!
//! // The coder is the TLS peer: its identity and key come from its certificate.
//! let (peer, peer_key) = (coder.as_spiffe_id(), coder_key.public_key());
//! let verified = verifier.verify_chain(chain.as_str(), peer, peer_key, now)?;
//! assert_eq!(verified.scope, Scope::parse("repo:read")?);
//! verifier.authorize(&verified, &Scope::parse("repo:read")?)?;
//! let refused = verifier.authorize(&verified, &Scope::parse("repo:write")?);
//! assert_eq!(refused.map_err(|e| e.code()), Err(ErrorCode::ScopeNotGranted));
//!
//! // A newer list revokes the coder's agent: the same chain is refused from now on.
//! let list = RevocationListBuilder::new(&td, 2, now, now + 600)
//!     .revoke_agent(&coder.agent(), now + 3600)
//!     .sign(&list_key)?;
//! verifier.config_mut().apply_revocation_list(&list)?;
//! let refused = verifier.verify_chain(chain.as_str(), peer, peer_key, now);
//! assert_eq!(refused.map(|_| ()).map_err(|e| e.code()), Err(ErrorCode::Revoked));
//! # Ok(())
//! # }
//! ```
//!
//! ## The API
//!
//! Everything a user needs is re-exported here: the [`Verifier`] (chains, presentations,
//! authorization) and its [`VerifierConfig`]; the builders ([`GrantBuilder`], [`LinkBuilder`],
//! [`ProofBuilder`], [`RevocationListBuilder`]); trust bundles ([`TrustBundle`],
//! [`BundleSet`]) and revocation lists ([`RevocationList`]); identifiers ([`SpiffeId`],
//! [`TaskIdentity`], ...), scopes, audiences and limits; keys ([`TaskKey`], [`AuthorityKey`],
//! [`PublicKey`]); one [`Error`] with a stable [`ErrorCode`]. Size caps and numeric bounds
//! are in [`caps`]. Three modules are namespaces of their own: [`ijson`] (the strict JSON
//! parser, for protocols carried beside the tokens), [`vectors`] (the test-vector runner, for
//! interoperability testing) and, behind the non-default feature `danger-raw-signing`,
//! `danger` (raw token signing for vector generators).
#![forbid(unsafe_code)]

/// `FromStr`, `TryFrom<String>` and `TryFrom<&str>` of each type, all by its `parse(&str)`: the
/// one home of these conversions for the string-like types (IDs, scopes, token references).
macro_rules! parse_conversions {
    ($($ty:ident),*) => {$(
        impl core::str::FromStr for $ty {
            type Err = crate::error::Error;
            fn from_str(s: &str) -> crate::error::Result<Self> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = crate::error::Error;
            fn try_from(s: String) -> crate::error::Result<Self> {
                Self::parse(&s)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = crate::error::Error;
            fn try_from(s: &str) -> crate::error::Result<Self> {
                Self::parse(s)
            }
        }
    )*};
}

mod attenuation;
mod audience;
mod bundle;
mod cache;
mod chain;
mod config;
mod crypto;
mod csr;
#[cfg(feature = "danger-raw-signing")]
pub mod danger;
mod ed25519_check;
mod encoding;
mod error;
mod id;
mod jwk;
mod jws;
mod limits;
mod presentation;
mod proof;
mod refs;
mod revocation;
mod revocation_targets;
mod scope;
mod signed_bundle;
mod token;
pub mod vectors;
mod verifier;

/// Strict I-JSON (RFC 7493) parsing, as every token uses it; for protocols carried beside the
/// tokens (such as the transport's control frames).
pub mod ijson {
    /// Parses an I-JSON object: UTF-8, no duplicate member names at any depth, nesting at most 8,
    /// nothing after the object. Any deviation is `bad_json`.
    pub fn parse_object(bytes: &[u8]) -> crate::Result<serde_json::Map<String, serde_json::Value>> {
        crate::encoding::parse_ijson_object(bytes)
    }
}

/// Size caps and numeric bounds of the protocol (spec/PROTOCOL.md section 3.4 and the sections
/// that define each value).
pub mod caps {
    pub use crate::audience::MAX_ID_SET_ENTRIES;
    pub use crate::bundle::MAX_BUNDLE_BYTES;
    pub use crate::chain::{MAX_CHAIN_BYTES, MAX_TOKENS};
    pub use crate::config::{DEFAULT_SKEW, MAX_SKEW};
    pub use crate::id::{MAX_ID_BYTES, MAX_TRUST_DOMAIN_BYTES};
    pub use crate::limits::{MAX_LIMITS, MAX_LIMIT_NAME_BYTES, MAX_LIMIT_VALUE};
    pub use crate::proof::MAX_PROOF_LIFETIME;
    pub use crate::revocation::{DEFAULT_NEXT_UPDATE, MAX_LIST_BYTES};
    pub use crate::scope::{MAX_SCOPE_SEGMENT_BYTES, MAX_SCOPE_TOKENS, MAX_SCOPE_TOKEN_BYTES};
    pub use crate::token::{MAX_DEPTH, MAX_TOKEN_LIFETIME};
}

pub use audience::IdSet;
pub use bundle::{BundleKey, BundleSet, TrustBundle, X509Authority};
pub use cache::TokenCache;
pub use chain::{Chain, UnverifiedChain};
pub use config::{AuthorityPolicy, VerifierConfig};
pub use crypto::{token_hash, Algorithm, AuthorityKey, JwsSigner, PublicKey, TaskKey};
pub use error::{clean_text, Error, ErrorCode, Result, MAX_DETAIL_BYTES};
pub use id::{AgentId, IdKind, PeerId, ServiceId, SpiffeId, TaskId, TaskIdentity, TrustDomain};
pub use jws::TokenType;
pub use limits::Limits;
pub use presentation::{Presentation, PresentationContext, VerifiedPresentation};
pub use proof::{
    verify_proof, ProofBuilder, ProofContext, Role, VerifiedProof, EXPORTER_LABEL, EXPORTER_LEN,
};
pub use refs::{Jkt, Jti, Serial};
pub use revocation::{
    EncodedEntry, RevocationEntry, RevocationList, RevocationListBuilder, RevocationTarget,
};
pub use revocation_targets::{
    newly_revokes, peer_revocation_targets, verified_peer_revocation_targets,
};
pub use scope::{Scope, ScopeToken};
pub use signed_bundle::{
    sign_bundle, verify_signed_bundle, SignedBundle, SignedBundleClaims, BUNDLE_TYP,
    MAX_SIGNED_BUNDLE_BYTES,
};
pub use token::{check_principal, GrantBuilder, LinkBuilder, Mode};
pub use verifier::{Actor, VerifiedChain, Verifier};
