//! agentid-protocol.
#![forbid(unsafe_code)]
