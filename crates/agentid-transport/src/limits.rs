//! Timeouts and caps of clients and servers.

use std::time::Duration;

/// Timeouts and caps. The defaults are conservative for agents talking at machine speed.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// The TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// The first frame (hello at the server, accept or reject at the client) must arrive within
    /// this time after the TLS handshake.
    pub first_frame_timeout: Duration,
    /// Concurrent sessions (including those in handshake) a server holds.
    pub max_connections: usize,
    /// Concurrent handshakes (TLS plus hello) a server runs.
    pub max_handshakes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            first_frame_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_handshakes: 64,
        }
    }
}
