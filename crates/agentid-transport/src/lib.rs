//! # agentid-transport
//!
//! Mutual TLS 1.3 between agents (and services) holding per-task X509-SVID certificates, with
//! delegation chains and hop proofs carried in one framed exchange after the handshake.
//!
//! ## Security model
//!
//! * **TLS 1.3 only, aws-lc-rs only** ([`provider`]), ALPN `agentid/1`. No session resumption,
//!   no tickets, no 0-RTT: every connection is a full handshake that runs our verifiers, and a
//!   non-full handshake is refused after the fact as well.
//! * **Certificates**: our own rustls verifiers validate the peer's chain against the anchors of
//!   the trust domain its URI SAN names (never another domain's), then the X509-SVID leaf rules
//!   ([`check_leaf`]), then a [`PeerPolicy`]. A client or server cannot be built without a
//!   policy; the only permissive one is [`PeerPolicy::danger_any`].
//! * **Rotation**: a [`CredentialSource`] is read on every handshake; live sessions stay up.
//! * **Availability** ([`ConnectionLimits`], [`Admission`]): a deadline for the ClientHello and
//!   the handshake, a pool of unauthenticated handshakes in which the oldest gives way to the
//!   newest and one source address holds only a few, session caps per server, per agent name
//!   and per task, a first-frame timeout, an idle timeout, and a frame size cap checked before
//!   allocating. Accept loops back off on accept errors (`EMFILE`) and never exit on them.
//! * Keys and tokens are never logged.
//!
//! ## Layout
//!
//! [`AgentClient`] (client side) and [`AgentServer`] (server side) run the TLS handshake and the
//! hello / accept exchange and hand over a [`Session`]: the authenticated peer, its deadline and
//! continuous verification, and the framed byte stream. [`PeerVerification`] is the live trust
//! state (bundles, revocation lists) that both sides and every live session share.
//!
//! With features: `http` (features `http`, `axum`) binds the same credentials to HTTP/1.1 and HTTP/2;
//! on it, `grpc` (`tonic`: tonic services with a scope per method, a tonic client on the agentid
//! client), `a2a` (`a2a`: A2A agent cards with the agentid identity extension, checked against
//! the client's configuration), `mcp` (`mcp`: rmcp streamable HTTP with sessions bound to
//! their peer and a scope per tool) and `enroll` (clients of the agentid CA service: token
//! enrollment, renewal, `CaClient`, and a revocation feed watcher that applies each newer,
//! verified list from the CA to a live [`PeerVerification`], ending the sessions it covers).
//!
//! ## Example: a revocation list applied to live trust state
//!
//! Clients, servers and their live sessions share one [`PeerVerification`]. A newer signed
//! revocation list applied to it takes effect at once: new handshakes are refused for what it
//! covers, and every live session re-checks its peer and chain and ends if covered. An older
//! list (a replay) is refused. Where the list comes from is the caller's choice: a file the
//! operator exports (`agentid revocations export`), or, with feature `enroll`, the CA service's
//! feed, long-polled by `enroll::RevocationWatcher`, which calls the same method.
//!
//! ```
//! use std::time::{SystemTime, UNIX_EPOCH};
//!
//! use agentid_protocol::{
//!     AgentId, Algorithm, AuthorityKey, BundleSet, RevocationListBuilder, RevocationTarget,
//!     ServiceId, TrustBundle, TrustDomain, VerifierConfig,
//! };
//! use agentid_transport::PeerVerification;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
//! let td = TrustDomain::parse("example.org")?;
//! let coder = AgentId::new(&td, "coder")?;
//!
//! // The CA's side: the key that signs its revocation lists, published in its bundle.
//! let list_key = AuthorityKey::generate(Algorithm::Es256)?;
//! let bundle = TrustBundle::new(td.clone(), 1).add_revocation_key(list_key.public_key().clone());
//! let first = RevocationListBuilder::new(&td, 1, now, now + 600).sign(&list_key)?;
//! let second = RevocationListBuilder::new(&td, 2, now, now + 600)
//!     .revoke_agent(&coder, now + 3600)
//!     .sign(&list_key)?;
//!
//! // A server's trust state, built once and shared by its listener and sessions.
//! let mut bundles = BundleSet::new();
//! bundles.insert(bundle)?;
//! let own = ServiceId::new(&td, "repo")?;
//! let mut config = VerifierConfig::new(own.as_spiffe_id().clone(), bundles);
//! config.apply_revocation_list(&first)?;
//! let verification = PeerVerification::new(config)?;
//!
//! // The newer list arrives: verified against the bundle, then applied to the live state.
//! let epoch = verification.epoch();
//! verification.apply_revocation_list(&second)?;
//! assert_eq!(verification.epoch(), epoch + 1);
//! let held = verification.verifier().config().revocation_list(&td).cloned();
//! assert!(held.is_some_and(|list| list.contains(&RevocationTarget::Agent(coder))));
//!
//! // Replaying the older list cannot undo the revocation.
//! assert!(verification.apply_revocation_list(&first).is_err());
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "a2a")]
pub mod a2a;
mod admission;
mod client;
mod connection_limits;
mod credentials;
#[cfg(feature = "enroll")]
pub mod enroll;
mod error;
mod establish;
mod frame;
#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
mod listener;
#[cfg(feature = "mcp")]
pub mod mcp;
mod peer_policy;
pub mod provider;
mod rustls_verifier;
mod server;
mod session;
mod session_index;
mod svid;
mod trust_state;
mod wall;

#[doc(hidden)]
pub mod internal;

pub use admission::{accept_tcp, source_of, Admission, SessionPermit};
pub use client::{AgentClient, AgentClientBuilder};
pub use connection_limits::ConnectionLimits;
pub use credentials::{Credential, CredentialSource, MemoryCredentials};
pub use error::{BusyKind, CertError, Error, FrameError, Result, TimeoutKind};
pub use frame::MAX_FRAME_BODY;
pub use listener::AgentListener;
pub use peer_policy::PeerPolicy;
pub use rustls_verifier::{SpiffeClientCertVerifier, SpiffeServerCertVerifier};
pub use server::{AgentServer, AgentServerBuilder};
pub use session::{
    AuthenticatedPeer, PeerChain, Receipts, Session, CLOSE_NORMAL, MAX_REAUTHS,
    MAX_REAUTH_RECEIPT_BYTES,
};
pub use svid::{check_leaf, CertUsage, SvidInfo, TrustStore, MAX_CERT_BYTES, MAX_INTERMEDIATES};
pub use trust_state::PeerVerification;
pub use wall::{sleep_until_unix, WALL_CLOCK_RECHECK};
