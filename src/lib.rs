//! agentid: per-task mTLS identities and delegation chains for AI agents.
//!
//! This facade re-exports the workspace crates.
#![forbid(unsafe_code)]

pub use agentid_ca as ca;
pub use agentid_protocol as protocol;
pub use agentid_transport as transport;
