//! agentid-ca.
#![forbid(unsafe_code)]
