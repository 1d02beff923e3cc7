//! agentid: per-task mTLS identities and delegation chains for AI agents.
//!
//! This facade re-exports the workspace crates, and [`files`] loads the credential directory
//! that `agentid cert issue` writes (for agents that run as their own processes).
#![forbid(unsafe_code)]

pub mod files;

pub use agentid_ca as ca;
pub use agentid_protocol as protocol;
pub use agentid_transport as transport;
