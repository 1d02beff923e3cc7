//! Admission control for servers: the pool of unauthenticated handshakes (deadline for the
//! ClientHello, oldest dropped first, per-source caps) and the session caps (total, per agent
//! name, per task) that an authenticated peer enters. [`ConnectionLimits`] explains the design.
//!
//! [`Admission`] is usable by any server built on agentid's TLS configuration (the framed
//! [`crate::AgentServer`], an HTTP server): [`Admission::tls_accept`] runs the TLS handshake
//! under the handshake rules and [`Admission::admit`] takes the session slot.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentid_protocol::{PeerId, TaskIdentity};
use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::connection_limits::ConnectionLimits;
use crate::error::{BusyKind, Error, Result, TimeoutKind};
use crate::establish::map_tls_io;

/// Shared admission state of one server (one listener kind). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: ConnectionLimits,
    pending: Mutex<Pending>,
    sessions: Mutex<Sessions>,
}

/// The unauthenticated handshakes, oldest first (ids only grow).
#[derive(Debug, Default)]
struct Pending {
    next_id: u64,
    entries: BTreeMap<u64, PendingEntry>,
    per_source: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct PendingEntry {
    source: Option<IpAddr>,
    evict: Arc<Notify>,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<PendingEntry> {
        let entry = self.entries.remove(&id)?;
        if let Some(ip) = entry.source {
            if let Some(n) = self.per_source.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_source.remove(&ip);
                }
            }
        }
        Some(entry)
    }

    fn evict(&mut self, id: u64) {
        if let Some(entry) = self.remove(id) {
            // `notify_one` keeps the wake-up if the handshake is not waiting yet.
            entry.evict.notify_one();
        }
    }
}

#[derive(Debug, Default)]
struct Sessions {
    total: usize,
    per_agent: HashMap<String, usize>,
    per_task: HashMap<TaskIdentity, usize>,
}

/// A slot in the pool of unauthenticated handshakes, released on drop.
struct PendingSlot {
    inner: Arc<Inner>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(self.id);
    }
}

/// A session slot: held for the life of a session, released on drop.
#[derive(Debug)]
pub struct SessionPermit {
    inner: Arc<Inner>,
    agent: String,
    task: Option<TaskIdentity>,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut s = lock(&self.inner.sessions);
        s.total = s.total.saturating_sub(1);
        decrement(&mut s.per_agent, &self.agent);
        if let Some(t) = &self.task {
            decrement(&mut s.per_task, t);
        }
    }
}

pub(crate) fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// A poisoned lock only means another thread panicked while counting; the counts stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Admission {
    /// Admission state for `limits` (every cap at least 1).
    pub fn new(limits: ConnectionLimits) -> Result<Self> {
        if limits.max_connections == 0
            || limits.max_handshakes == 0
            || limits.max_pending_per_source == 0
            || limits.max_sessions_per_agent == 0
            || limits.max_sessions_per_task == 0
        {
            return Err(Error::Config("connection caps must be at least 1".into()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                limits: limits.bounded(),
                pending: Mutex::new(Pending::default()),
                sessions: Mutex::new(Sessions::default()),
            }),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.inner.limits
    }

    /// Unauthenticated handshakes in progress.
    pub fn pending_handshakes(&self) -> usize {
        lock(&self.inner.pending).entries.len()
    }

    /// Sessions holding a slot.
    pub fn sessions(&self) -> usize {
        lock(&self.inner.sessions).total
    }

    fn enter(&self, source: Option<IpAddr>) -> PendingSlot {
        let source = source.map(source_of);
        let limits = &self.inner.limits;
        let mut p = lock(&self.inner.pending);
        if let Some(ip) = source {
            if p.per_source.get(&ip).copied().unwrap_or(0) >= limits.max_pending_per_source {
                let oldest = p
                    .entries
                    .iter()
                    .find(|(_, e)| e.source == Some(ip))
                    .map(|(id, _)| *id);
                if let Some(id) = oldest {
                    p.evict(id);
                }
            }
        }
        while p.entries.len() >= limits.max_handshakes {
            let Some(oldest) = p.entries.keys().next().copied() else {
                break;
            };
            p.evict(oldest);
        }
        let id = p.next_id;
        p.next_id = p.next_id.wrapping_add(1);
        let evicted = Arc::new(Notify::new());
        p.entries.insert(
            id,
            PendingEntry {
                source,
                evict: evicted.clone(),
            },
        );
        if let Some(ip) = source {
            *p.per_source.entry(ip).or_insert(0) += 1;
        }
        PendingSlot {
            inner: self.inner.clone(),
            id,
            evicted,
        }
    }

    /// Runs the server side of a TLS handshake with `config` under the handshake rules: a slot
    /// in the pool of unauthenticated handshakes (which a newer handshake may take over, see
    /// [`ConnectionLimits`]), the whole ClientHello within `client_hello_timeout`, the handshake
    /// within `handshake_timeout`. The slot is released when this returns: an authenticated
    /// peer then needs [`Admission::admit`]. `source` is the peer's address, when known.
    pub async fn tls_accept<IO>(
        &self,
        io: IO,
        source: Option<IpAddr>,
        config: Arc<ServerConfig>,
    ) -> Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let limits = &self.inner.limits;
        let slot = self.enter(source);
        let started = Instant::now();
        let end = started + limits.handshake_timeout;
        let hello_end = (started + limits.client_hello_timeout).min(end);
        let handshake = async {
            let start = timeout_at(hello_end, LazyConfigAcceptor::new(Acceptor::default(), io))
                .await
                .map_err(|_| Error::Timeout(TimeoutKind::ClientHello))?
                .map_err(map_tls_io)?;
            timeout_at(end, start.into_stream(config))
                .await
                .map_err(|_| Error::Timeout(TimeoutKind::Handshake))?
                .map_err(map_tls_io)
        };
        let evicted = slot.evicted.clone();
        tokio::select! {
            r = handshake => r,
            () = evicted.notified() => Err(Error::Busy(BusyKind::Handshakes)),
        }
    }

    /// Takes a session slot for `peer` (authenticated by TLS): the total cap, its agent's cap
    /// and its task's cap. Refused at once with [`Error::Busy`] when one is reached.
    pub fn admit(&self, peer: &PeerId) -> Result<SessionPermit> {
        let limits = &self.inner.limits;
        let agent = peer.agent_or_service();
        let task = match peer {
            PeerId::Task(t) => Some(t.clone()),
            PeerId::Service(_) => None,
        };
        let mut s = lock(&self.inner.sessions);
        if s.total >= limits.max_connections {
            return Err(Error::Busy(BusyKind::Connections));
        }
        if s.per_agent.get(&agent).copied().unwrap_or(0) >= limits.max_sessions_per_agent {
            return Err(Error::Busy(BusyKind::AgentSessions));
        }
        if let Some(t) = &task {
            if s.per_task.get(t).copied().unwrap_or(0) >= limits.max_sessions_per_task {
                return Err(Error::Busy(BusyKind::TaskSessions));
            }
        }
        s.total += 1;
        *s.per_agent.entry(agent.clone()).or_insert(0) += 1;
        if let Some(t) = &task {
            *s.per_task.entry(t.clone()).or_insert(0) += 1;
        }
        Ok(SessionPermit {
            inner: self.inner.clone(),
            agent,
            task,
        })
    }
}

/// The source a peer's address counts under for per-source caps: an IPv4 address (an
/// IPv4-mapped IPv6 address too), or the /64 an IPv6 address is in (what one host or subscriber
/// is usually given: counting its addresses one by one would let it multiply its allowance).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

/// Accepts the next TCP connection. Accept errors (`EMFILE` when the process is out of file
/// descriptors, `ECONNABORTED`, ...) are logged and backed off (5 ms doubling to 1 s), never
/// returned: a server's accept loop must outlive them. Sets `TCP_NODELAY`.
pub async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((tcp, from)) => {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
                return (tcp, from);
            }
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
