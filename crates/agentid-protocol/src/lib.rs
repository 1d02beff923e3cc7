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
#![forbid(unsafe_code)]

pub mod error;
pub mod id;
pub mod scope;

pub mod crypto;
mod csr;
mod ed25519_check;
mod encoding;
mod jwk;
pub mod jws;

pub use crypto::{Algorithm, AuthorityKey, JwsSigner, PublicKey, TaskKey};
pub use error::{Error, ErrorCode, Result};
pub use id::{AgentId, IdKind, PeerId, ServiceId, SpiffeId, TaskId, TaskIdentity, TrustDomain};
pub use jws::TokenType;
pub use scope::{IdSet, Limits, Scope, ScopeToken};

mod attenuation;
pub mod bundle;
pub mod cache;
pub mod chain;
#[cfg(feature = "danger-raw-signing")]
pub mod danger;
pub mod policy;
mod presentation;
pub mod proof;
mod refs;
pub mod revocation;
pub mod token;
pub mod vectors;
pub mod verify;

/// Strict I-JSON (RFC 7493) parsing, as every token uses it; for protocols carried beside the
/// tokens (such as the transport's control frames).
pub mod ijson {
    /// Parses an I-JSON object: UTF-8, no duplicate member names at any depth, nesting at most 8,
    /// nothing after the object. Any deviation is `bad_json`.
    pub fn parse_object(bytes: &[u8]) -> crate::Result<serde_json::Map<String, serde_json::Value>> {
        crate::encoding::parse_ijson_object(bytes)
    }
}

pub use bundle::{BundleSet, TrustBundle};
pub use cache::TokenCache;
pub use chain::{Chain, UnverifiedChain};
pub use policy::{AuthorityPolicy, VerifierConfig};
pub use presentation::{Presentation, PresentationContext, VerifiedPresentation};
pub use proof::{verify_proof, ProofBuilder, ProofContext, Role, VerifiedProof, EXPORTER_LABEL};
pub use refs::{Jkt, Jti, Serial};
pub use revocation::{RevocationList, RevocationListBuilder};
pub use token::{GrantBuilder, LinkBuilder, Mode};
pub use verify::{Actor, VerifiedChain, Verifier};
