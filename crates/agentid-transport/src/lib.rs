//! agentid-transport.
#![forbid(unsafe_code)]
