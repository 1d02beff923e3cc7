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
//!   ([`svid`]), then a [`PeerPolicy`]. A client or server cannot be built without a policy; the
//!   only permissive one is [`PeerPolicy::danger_any`].
//! * **Rotation**: a [`CredentialSource`] is read on every handshake; live sessions stay up.
//! * **Limits**: handshake and first-frame timeouts, a frame size cap checked before
//!   allocating, caps on concurrent connections and handshakes.
//! * Keys and tokens are never logged.
#![forbid(unsafe_code)]

pub mod credentials;
pub mod error;
pub mod frame;
mod handshake;
#[cfg(feature = "http")]
pub mod http;
pub mod policy;
pub mod provider;
pub mod session;
pub mod svid;
pub mod verification;
pub mod verifier;

pub use credentials::{Credential, CredentialSource, MemoryCredentials};
pub use error::{CertError, Error, FrameError, Result, TimeoutKind};
pub use handshake::{
    AgentClient, AgentClientBuilder, AgentServer, AgentServerBuilder, ConnectionLimits,
};
pub use policy::PeerPolicy;
pub use session::{AuthenticatedPeer, Receipts, Session};
pub use svid::{check_leaf, serial_hex, CertUsage, SvidInfo, TrustStore};
pub use verification::PeerVerification;
