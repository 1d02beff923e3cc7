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
pub use error::{Error, ErrorCode, Result};
pub use id::{AgentId, IdKind, PeerId, ServiceId, SpiffeId, TaskId, TaskIdentity, TrustDomain};
pub use jws::TokenType;
pub use limits::Limits;
pub use presentation::{Presentation, PresentationContext, VerifiedPresentation};
pub use proof::{
    verify_proof, ProofBuilder, ProofContext, Role, VerifiedProof, EXPORTER_LABEL, EXPORTER_LEN,
};
pub use refs::{Jkt, Jti, Serial};
pub use revocation::{RevocationEntry, RevocationList, RevocationListBuilder, RevocationTarget};
pub use revocation_targets::{newly_revokes, peer_revocation_targets};
pub use scope::{Scope, ScopeToken};
pub use signed_bundle::{
    sign_bundle, verify_signed_bundle, SignedBundle, SignedBundleClaims, BUNDLE_TYP,
    MAX_SIGNED_BUNDLE_BYTES,
};
pub use token::{GrantBuilder, LinkBuilder, Mode};
pub use verifier::{Actor, VerifiedChain, Verifier};
