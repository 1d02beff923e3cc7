//! The agentid CLI.
#![forbid(unsafe_code)]
fn main() {}
