//! Timeouts and caps of clients and servers. spec/PROTOCOL.md 16.3 and 16.6 leave them to local
//! policy; these are agentid's defaults and the reasons for them.

use std::time::Duration;

/// Timeouts and caps. Each server (each listener kind: a service's mTLS listener and, say, its
/// enrollment listener) has its own set, and its own counts.
///
/// How a server stays available, in the order a connection meets them:
///
/// 1. **Unauthenticated handshakes** are cheap to start and cost the peer nothing, so they get
///    their own small pool ([`max_handshakes`](Self::max_handshakes)), separate from sessions.
///    The whole ClientHello must arrive within
///    [`client_hello_timeout`](Self::client_hello_timeout) (2 s) and the TLS handshake end within
///    [`handshake_timeout`](Self::handshake_timeout). One source (an IPv4 address, or an
///    IPv6 /64) holds at most [`max_pending_per_source`](Self::max_pending_per_source) of them
///    (its oldest is dropped for a new one), and when the pool is full the oldest pending handshake is dropped for the
///    newest, never the other way round: silent or slow peers cannot keep a new client out, they
///    only shorten each other's time.
/// 2. When TLS completes the peer is authenticated: its handshake slot is released and it takes
///    a session slot ([`max_connections`](Self::max_connections)) within its agent's and task's
///    caps ([`max_sessions_per_agent`](Self::max_sessions_per_agent),
///    [`max_sessions_per_task`](Self::max_sessions_per_task)); it is refused at once
///    ([`crate::Error::Busy`]) when a cap is reached. Caps are per agent name and per task, not
///    per identity, because an agent can mint child identities; an agent holding its maximum
///    leaves the rest of the slots to the others.
/// 3. The hello must arrive within [`first_frame_timeout`](Self::first_frame_timeout), and the
///    peer must take each frame of the handshake this side writes (hello, accept, a refusal)
///    within it too; so must it take a close (its frame and `close_notify`).
/// 4. A session in which the peer sends nothing for [`idle_timeout`](Self::idle_timeout) while
///    this side is waiting for it ends with `idle` (see the field for what counts).
///
/// A timeout longer than a year (`Duration::MAX` for "never", say) is taken as a year.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// The TLS handshake must finish within this time after the connection is handed over
    /// (default 10 s).
    pub handshake_timeout: Duration,
    /// The complete ClientHello must arrive within this time (server side; default 2 s). Part of
    /// `handshake_timeout`, not added to it.
    pub client_hello_timeout: Duration,
    /// The first frame (hello at the server, accept or reject at the client) must arrive within
    /// this time after the TLS handshake (default 10 s); each handshake frame this side writes
    /// (hello, accept, a refusal) must be taken by the peer within it too, and so must the close
    /// frame and TLS `close_notify` when this side closes a session
    /// ([`crate::Session::close`], or the shutdown of its byte stream).
    pub first_frame_timeout: Duration,
    /// Concurrent authenticated sessions a server holds (from the end of the TLS handshake to
    /// the end of the session). The default stays below the process's file limit
    /// (`RLIMIT_NOFILE`) together with `max_handshakes`: at most 4096, and at most three
    /// quarters of the file limit less 64 descriptors kept for the rest of the process.
    pub max_connections: usize,
    /// Concurrent unauthenticated TLS handshakes a server runs (default 1024, or a quarter of
    /// the file limit less 64 if that is smaller). When full, the oldest is dropped for a new one.
    pub max_handshakes: usize,
    /// Concurrent unauthenticated TLS handshakes from one source (default 8): an IPv4 address,
    /// or an IPv6 /64 ([`crate::source_of`]); for a new one, that source's oldest is dropped.
    /// Applies where the source is known
    /// ([`crate::AgentServer::accept_from`], [`crate::AgentListener`]).
    pub max_pending_per_source: usize,
    /// Concurrent sessions of all the tasks (and child identities) of one agent name, or of one
    /// service (default: a quarter of `max_connections`, at least 1).
    pub max_sessions_per_agent: usize,
    /// Concurrent sessions of one task identity (default: a sixteenth of `max_connections`, at
    /// least 1).
    pub max_sessions_per_task: usize,
    /// A session ends with `idle` when this side waits this long in `recv` (or a read) for the
    /// peer's next frame without receiving any (default 5 minutes, above the 30 s longest
    /// long-poll of the CA's revocation feed). It is measured only while this side waits for the
    /// peer: a session that is writing (for example producing a stream) is never ended by it,
    /// and any frame from the peer (data, reauth) resets it. `None` disables it.
    pub idle_timeout: Option<Duration>,
}

/// The longest timeout taken: a year (a timer on `Instant` cannot reach `Duration::MAX`).
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

impl ConnectionLimits {
    /// These limits with every timeout at most [`LONGEST_TIMEOUT`]: what servers and clients
    /// hold, so that no timer they set overflows an `Instant`.
    pub(crate) fn bounded(mut self) -> Self {
        for d in [
            &mut self.handshake_timeout,
            &mut self.client_hello_timeout,
            &mut self.first_frame_timeout,
        ] {
            *d = (*d).min(LONGEST_TIMEOUT);
        }
        self.idle_timeout = self.idle_timeout.map(|d| d.min(LONGEST_TIMEOUT));
        self
    }
}

/// File descriptors kept for the rest of the process (logs, databases, outgoing connections).
const RESERVED_FILES: u64 = 64;

impl ConnectionLimits {
    /// The default caps of a server whose process holds at most `files` descriptors (`None`:
    /// no limit) of which other listeners may take `others` (their own connections and
    /// handshakes together): the caps are computed on `files - others`, so that all of them
    /// together stay below the limit. [`Default`] is this with the process's own soft limit
    /// (`RLIMIT_NOFILE`) and no other listener.
    pub fn for_file_limit(files: Option<u64>, others: u64) -> Self {
        let (max_handshakes, max_connections) = caps_for(files.map(|f| f.saturating_sub(others)));
        Self {
            handshake_timeout: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(2),
            first_frame_timeout: Duration::from_secs(10),
            max_connections,
            max_handshakes,
            max_pending_per_source: 8,
            max_sessions_per_agent: (max_connections / 4).max(1),
            max_sessions_per_task: (max_connections / 16).max(1),
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }

    /// The process's soft limit on open files (`RLIMIT_NOFILE`), where the platform has one.
    pub fn process_file_limit() -> Option<u64> {
        file_limit()
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::for_file_limit(file_limit(), 0)
    }
}

/// The handshake and session caps for a process that may hold `files` descriptors.
fn caps_for(files: Option<u64>) -> (usize, usize) {
    let budget = files.map_or(u64::MAX, |f| f.saturating_sub(RESERVED_FILES).max(8));
    let handshakes = (budget / 4).clamp(1, 1024);
    let connections = (budget.saturating_mul(3) / 4).clamp(1, 4096);
    (
        usize::try_from(handshakes).unwrap_or(1024),
        usize::try_from(connections).unwrap_or(4096),
    )
}

/// The process's soft limit on open files, where the platform has one.
#[cfg(unix)]
fn file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
fn file_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::caps_for;

    #[test]
    fn default_caps_stay_below_the_file_limit() {
        for files in [16, 256, 1024, 4096, 20_000, 1 << 20] {
            let (h, c) = caps_for(Some(files));
            assert!(
                (h + c) as u64 + super::RESERVED_FILES <= files.max(super::RESERVED_FILES + 8),
                "{files}: {h} + {c}"
            );
            assert!(h >= 1 && c >= 1);
        }
        // The usual `ulimit -n 1024`: far from the 1024 sessions that crashed the example.
        assert_eq!(caps_for(Some(1024)), (240, 720));
        assert_eq!(caps_for(None), (1024, 4096));
    }
}
