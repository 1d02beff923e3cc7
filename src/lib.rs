//! agentid: per-task mTLS identities and delegation chains for AI agents.
//!
//! This facade re-exports the workspace crates, and [`files`] is the credential directory that
//! `agentid cert issue` writes and agents that run as their own processes load: its file names,
//! its key-file rule and its loading. [`fs`] does every file read and write of agentid.
#![forbid(unsafe_code)]

#[cfg(feature = "transport")]
pub mod files;

#[cfg(feature = "ca")]
pub use agentid_ca as ca;
pub use agentid_fs as fs;
pub use agentid_protocol as protocol;
#[cfg(feature = "transport")]
pub use agentid_transport as transport;
