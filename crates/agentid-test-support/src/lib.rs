//! Helpers shared by agentid's integration tests: the bound on every await, the clock, PEM,
//! loopback servers and clients, the rule for tests that need the `openssl` binary, and a
//! PostgreSQL server of the test's own ([`pg::PgCluster`]), and a synthetic task inventory
//! ([`inventory::Inventory`]).
//!
//! A dev-dependency only (`publish = false`). What is specific to one crate's tests (the
//! transport's hand-made PKI, the facade's CA-backed agents, the CLI's command runner) stays in
//! that crate's `tests/support/mod.rs`, which re-exports this crate.
//!
//! Test code: it panics (unwraps) on anything unexpected, which is a test failure.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a panic is a test failure"
)]

pub mod inventory;
pub mod net;
pub mod openssl;
pub mod pg;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentid_protocol::{Scope, TrustDomain};

/// The bound on every single await of the tests.
pub const T: Duration = Duration::from_secs(10);

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// PEM with 64-column lines (the encoder agentid writes its files with).
pub fn pem(label: &str, der: &[u8]) -> String {
    agentid_fs::pem_encode(label, der)
}

/// A trust domain.
pub fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

/// A scope.
pub fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}
