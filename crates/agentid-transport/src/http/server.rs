//! The agentid HTTP server: TLS accept with agentid's verifiers, then hyper (h1 or h2 by ALPN)
//! behind an outermost per-connection service that runs the presentation state machine, the
//! per-request deadline and revocation checks, and hands the handler an [`Authorizer`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentid_protocol::{ErrorCode, PresentationContext, ProofBuilder, Role, VerifiedChain};
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, timeout, Instant};

use super::authz::{Authorizer, DecisionSink, TracingSink, CORRELATION, MAX_CORRELATION_ID_BYTES};
use super::body::{BoxError, RequestBody, ResponseBody};
use super::presentation::{
    parse_presentation, Dispatch, Presentation, PresentationMachine, CHAIN_HEADER, PROOF_HEADER,
    SERVER_HEADER_LIST_LIMIT,
};
use super::refusal::{is_refusal, Refusal, BAD_CERTIFICATE, CREDENTIAL_EXPIRED};
use super::stall::StallBounded;
use super::tls::{pinned_server_config, server_config, server_peer, HttpVersion, TlsPeer};
use crate::admission::{accept_tcp, Admission, SessionPermit};
use crate::credentials::{Credential, CredentialSource};
use crate::error::{Error, Result};
use crate::session::{now_unix, PROOF_LIFETIME};
use crate::session_index::Registration;
use crate::ConnectionLimits;
use crate::PeerPolicy;
use crate::PeerVerification;
use crate::{CertUsage, TrustStore};
use rustls::pki_types::CertificateDer;

/// The longest timeout a server keeps (instants further out do not fit every clock).
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Timeouts, caps and the close margin of an HTTP server.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// The TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// An HTTP/1 request head must arrive within this time, counted from when the connection
    /// is ready for it: on a keep-alive connection this is also the longest wait for the next
    /// request (10 s by default).
    pub header_read_timeout: Duration,
    /// A request waiting for a pending presentation gets 503 `busy` after this time.
    pub pending_timeout: Duration,
    /// The graceful close starts this long before the connection's deadline (min of the peer
    /// certificate's `notAfter` and its chain's `exp`); at the deadline itself streaming bodies
    /// are cut.
    pub close_margin: Duration,
    /// After a cut, in-flight streams get this long before the connection is dropped. After a
    /// graceful close, a connection with nothing in flight and nothing run for this long is
    /// dropped (its peer is not finishing the close: an HTTP/2 peer that never sends its
    /// preface or answers GOAWAY, an HTTP/1.1 head that never completes).
    pub cut_grace: Duration,
    /// Concurrent authenticated connections, as [`crate::ConnectionLimits::max_connections`]
    /// (the same default, below the process's file limit).
    pub max_connections: usize,
    /// Concurrent unauthenticated TLS handshakes, as [`crate::ConnectionLimits::max_handshakes`]:
    /// when full, the oldest gives way to the newest; the ClientHello deadline, the per-source
    /// cap and the per-agent and per-task caps are those of [`crate::ConnectionLimits`].
    pub max_handshakes: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// A connection with no request in flight (and no response body still streaming) for this
    /// long is closed gracefully, on HTTP/1.1 and HTTP/2 alike. On HTTP/1.1,
    /// `header_read_timeout` also runs while a keep-alive connection waits for its next request
    /// head, so an idle HTTP/1.1 connection closes after the shorter of the two.
    ///
    /// It also bounds a peer that stops taking responses (which would otherwise hold the
    /// connection, and its slot under `max_connections`, until its deadline): a connection is
    /// dropped at once, requests in flight included, as a revocation cuts it, when a write to
    /// its socket (a response, a streaming body, a close) has waited this long for the peer to
    /// take bytes, or when every request in flight has had a response frame the peer did not
    /// take for this long (an HTTP/2 peer that grants no flow-control window; this one is
    /// looked at every idle timeout, so it is found within two). A peer that reads a long
    /// response slower than its socket buffers (or its HTTP/2 window) drain in this time is
    /// taken for one that stopped: raise it for such peers.
    pub idle_timeout: Duration,
    /// A request body that has nothing new for this long fails with
    /// [`BodyStalled`](super::BodyStalled) in the service reading it (30 s by default; the timer
    /// restarts with every frame that arrives). Without it a peer that stops sending a body keeps
    /// its request in flight, so neither the idle timeout nor the header read timeout closes
    /// the connection, until the connection's deadline. `None` waits as long as the connection
    /// lives: for client-streaming calls (gRPC, say) whose messages may be further apart.
    pub body_idle_timeout: Option<Duration>,
    /// The lifetime of the server's hop proofs (default 60 s; from 1 to 60 s, the protocol's
    /// cap, else the builder fails with [`Error::Config`]). A response carries the proof signed at
    /// verification while it has at least half of this left; after that (a slow first
    /// response, a client that keeps presenting) a fresh proof is signed for the response.
    pub proof_lifetime: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            pending_timeout: Duration::from_secs(10),
            close_margin: Duration::from_secs(5),
            cut_grace: Duration::from_secs(1),
            max_connections: ConnectionLimits::default().max_connections,
            max_handshakes: ConnectionLimits::default().max_handshakes,
            max_concurrent_streams: 100,
            idle_timeout: Duration::from_secs(30),
            body_idle_timeout: Some(Duration::from_secs(30)),
            proof_lifetime: Duration::from_secs(PROOF_LIFETIME),
        }
    }
}

pub(crate) struct ServerShared {
    pub(crate) credentials: Arc<dyn CredentialSource>,
    pub(crate) verification: Arc<PeerVerification>,
    pub(crate) options: HttpOptions,
    pub(crate) sink: Arc<dyn DecisionSink>,
}

/// What a verified presentation leaves on the connection.
pub(crate) struct Verified {
    pub(crate) chain: Option<VerifiedChain>,
    /// The presentation's deadline (the peer certificate's `notAfter`, or with a chain the
    /// earlier of it and the chain's `exp`).
    pub(crate) deadline: u64,
    pub(crate) chain_header: Option<String>,
    pub(crate) client_proof: String,
    /// The server proof signed at verification (the receipt).
    pub(crate) server_proof: HeaderValue,
    /// The proof responses carry now, and its `exp`: the receipt until it is half-way to
    /// expiry, then a fresh one.
    current_proof: Mutex<(HeaderValue, u64)>,
    pub(crate) server_chain: Option<HeaderValue>,
}

/// The state of one accepted connection.
pub(crate) struct ConnShared {
    pub(crate) server: Arc<ServerShared>,
    pub(crate) peer: TlsPeer,
    machine: Mutex<PresentationMachine<Verified>>,
    settled: Notify,
    /// Set once the connection's authority ended (revocation, deadline, a failed re-check):
    /// the machine's failure code at that moment, so that the connection has one code.
    ended: OnceLock<Refusal>,
    checked_epoch: AtomicU64,
    /// The connection's place in the verification's index of revocation targets (its peer, and
    /// its chain once presented): a list that newly revokes one of them signals it.
    index: Registration,
    index_checked: AtomicU64,
    /// When a revocation list the peer's verification depends on goes stale (`next_update +
    /// skew`; `u64::MAX`: never, lists optional or none held): the connection is re-checked
    /// then, as a framed session is (spec/PROTOCOL.md 22.5 step 2, 16.4).
    stale_at: AtomicU64,
    /// The trust store the peer's certificate was last validated against.
    trust_seen: Mutex<Arc<TrustStore>>,
    peer_certs: Vec<CertificateDer<'static>>,
    deadline: AtomicU64,
    closing: AtomicBool,
    /// Wakes the connection's driver: a graceful close started, or the connection is dropped.
    wake: DriverWake,
    /// Wakes the connection's watchdog: the deadline moved, or the connection ended.
    rearm: Notify,
    /// Set by the watchdog when the connection must be dropped now (after the cut grace, or an
    /// HTTP/1.1 request head that did not arrive in time).
    drop_now: AtomicBool,
    /// The credential this server presented in the connection's TLS handshake: its hop proofs
    /// are signed with it (the client checks them against the certificate it saw), whatever
    /// rotation happens later.
    local: Option<Arc<Credential>>,
    cut: watch::Sender<bool>,
    /// Requests in flight (a response body still streaming counts).
    in_flight: AtomicUsize,
    /// Low 32 bits: of those, on HTTP/2, responses whose body gave a frame that was not taken
    /// yet (a peer that grants no window leaves them there); high 32 bits: the frames taken
    /// after such a wait (wrapping). One atomic, so that a frame taken is one operation.
    waiting_on_peer: AtomicU64,
    /// When the last request started or ended, in milliseconds since `born`.
    last_active_ms: AtomicU64,
    born: Instant,
}

/// Wakes a connection's driver (a graceful close started, or the connection must be dropped):
/// a flag and the driver's waker. The driver polls it each time its task runs, at least once
/// per request, which costs less than a `Notify` (whose waiter list is locked and walked on
/// every poll). A wake before the driver polls is kept, as a `Notify` permit is.
#[derive(Default)]
struct DriverWake {
    woken: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl DriverWake {
    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready (once) after a wake.
    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        {
            let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            match &*slot {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        // Again after registering: a wake between the first look and the registration found
        // no waker (or the previous one) and is seen here.
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Added to [`ConnShared::waiting_on_peer`] when a frame that waited is taken.
const TAKEN_AFTER_WAITING: u64 = (1 << 32) - 1;

/// Counts one request as in flight until dropped (with its response body, when it has one);
/// on HTTP/2, also whether its body gave a frame the peer has not taken yet (`Some(true)`). On
/// HTTP/1.1 that is not tracked (`None`): a frame there waits only for a write to the socket,
/// which [`StallBounded`] bounds.
pub(crate) struct Active(Arc<ConnShared>, Option<bool>);

impl Active {
    fn new(conn: &Arc<ConnShared>) -> Self {
        // While it is in flight the idle timer is suspended; the end of the request re-arms it.
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        let h2 = conn.peer.version == HttpVersion::H2;
        Self(conn.clone(), h2.then_some(false))
    }
}

impl Active {
    pub(crate) fn is_cut(&self) -> bool {
        self.0.is_cut()
    }

    /// The response body gave a frame: until it is polled again, it waits for the peer.
    pub(crate) fn gave(&mut self) {
        if self.1 == Some(false) {
            self.1 = Some(true);
            self.0.waiting_on_peer.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The response body is polled again: the peer took its last frame.
    pub(crate) fn taken(&mut self) {
        if self.1 == Some(true) {
            self.1 = Some(false);
            // One fewer waiting (low half, at least 1), one more taken (high half).
            self.0
                .waiting_on_peer
                .fetch_add(TAKEN_AFTER_WAITING, Ordering::AcqRel);
        }
    }

    pub(crate) fn cut_signal(&self) -> watch::Receiver<bool> {
        self.0.cut_signal()
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.1 == Some(true) {
            self.0.waiting_on_peer.fetch_sub(1, Ordering::AcqRel);
        }
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The verification state a connection starts from, read before its handshake (see
/// [`ConnShared::new`]).
struct SeenBeforeHandshake {
    epoch: u64,
    lists_seen: u64,
    trust: Arc<TrustStore>,
}

impl ConnShared {
    /// `seen` is the verification state read before the handshake began: a change during the
    /// handshake (the client certificate is checked before the handshake ends) is then a change
    /// since, and the connection's first check re-checks the peer against it.
    fn new(
        server: Arc<ServerShared>,
        seen: SeenBeforeHandshake,
        peer: TlsPeer,
        peer_certs: Vec<CertificateDer<'static>>,
        local: Option<Arc<Credential>>,
    ) -> Arc<Self> {
        let SeenBeforeHandshake {
            epoch,
            lists_seen,
            trust,
        } = seen;
        let index = server.verification.register(
            Some(agentid_protocol::verified_peer_revocation_targets(
                None,
                peer.info.id.as_spiffe_id(),
                &peer.info.public_key,
            )),
            lists_seen,
        );
        let stale_at = server
            .verification
            .stale_at(peer.info.id.as_spiffe_id(), None)
            .unwrap_or(u64::MAX);
        let conn = Arc::new(Self {
            trust_seen: Mutex::new(trust),
            peer_certs,
            deadline: AtomicU64::new(peer.info.not_after),
            server,
            peer,
            machine: Mutex::new(PresentationMachine::new()),
            settled: Notify::new(),
            ended: OnceLock::new(),
            checked_epoch: AtomicU64::new(epoch),
            index,
            index_checked: AtomicU64::new(0),
            stale_at: AtomicU64::new(stale_at),
            closing: AtomicBool::new(false),
            wake: DriverWake::default(),
            rearm: Notify::new(),
            drop_now: AtomicBool::new(false),
            local,
            cut: watch::channel(false).0,
            in_flight: AtomicUsize::new(0),
            waiting_on_peer: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            born: Instant::now(),
        });
        // The peer itself (key, agent, task) against the lists held now.
        let v = conn.server.verification.verifier();
        if let Err(e) = v.check_peer_revocation(
            conn.peer.info.id.as_spiffe_id(),
            &conn.peer.info.public_key,
            now_unix(),
        ) {
            conn.end(Refusal::from_protocol(&e));
        }
        conn
    }

    fn machine(&self) -> MutexGuard<'_, PresentationMachine<Verified>> {
        // The machine holds no invariant a panicking holder could break half-way.
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Acquire)
    }

    /// When a revocation list the peer's verification depends on goes stale (`u64::MAX`:
    /// never).
    fn stale_at(&self) -> u64 {
        self.stale_at.load(Ordering::Acquire)
    }

    /// Sets [`ConnShared::stale_at`] from the lists held now, for the peer and its verified
    /// `chain`, and wakes the watchdog to wait for it.
    fn watch_staleness(&self, chain: Option<&VerifiedChain>) {
        let at = self
            .server
            .verification
            .stale_at(self.peer.info.id.as_spiffe_id(), chain)
            .unwrap_or(u64::MAX);
        if self.stale_at.swap(at, Ordering::AcqRel) != at {
            self.rearm.notify_one();
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// When the connection becomes idle for `idle`: `None` while a request is in flight.
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Acquire));
        Some(self.born + last + idle)
    }

    /// While every request in flight is a response whose last frame the peer has not taken:
    /// marks that any progress changes (frames taken, requests ended).
    fn waiting_on_peer(&self) -> Option<(u64, u64)> {
        let n = u64::try_from(self.in_flight.load(Ordering::Acquire)).unwrap_or(u64::MAX);
        let waiting = self.waiting_on_peer.load(Ordering::Acquire);
        if n == 0 || waiting & u64::from(u32::MAX) < n {
            return None;
        }
        Some((waiting, self.last_active_ms.load(Ordering::Acquire)))
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether the connection's authority ended (streaming bodies are cut).
    pub(crate) fn is_cut(&self) -> bool {
        self.ended.get().is_some()
    }

    /// Waits until the connection's authority ends.
    pub(crate) fn cut_signal(&self) -> watch::Receiver<bool> {
        self.cut.subscribe()
    }

    /// The credential of the handshake, for signing this connection's server proofs.
    fn local(&self) -> Result<&Arc<Credential>, Refusal> {
        self.local
            .as_ref()
            .ok_or_else(|| Refusal::busy("no local credential"))
    }

    /// Asks the driver to drop the connection now.
    fn drop_connection(&self) {
        self.drop_now.store(true, Ordering::Release);
        self.wake.wake();
    }

    /// Starts the graceful close (h1 `Connection: close`, h2 GOAWAY); the watchdog drops a
    /// connection whose peer does not finish it.
    fn start_close(&self) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.wake.wake();
            self.rearm.notify_one();
        }
    }

    /// Ends the connection's authority because of `cause`: streaming bodies are cut and the
    /// connection closes. Every later request, and every request in flight that meets a
    /// connection check, gets the connection's one code (spec/PROTOCOL.md 22.3): the first
    /// failure's, kept by the presentation machine, which may be an earlier presentation
    /// failure rather than `cause`. The returned refusal carries that code.
    fn end(&self, cause: Refusal) -> Refusal {
        let first = self.machine().fail(cause.clone());
        let r = self.ended.get_or_init(|| first).clone();
        self.settled.notify_waiters();
        self.cut.send_replace(true);
        self.start_close();
        self.rearm.notify_one();
        tracing::info!(peer.id = %self.peer.info.id, reason = r.code(), cause = cause.code(), detail = cause.detail(), "agentid http connection ended");
        r
    }

    /// Verifies a presentation (spec/PROTOCOL.md 22.4): the proof (role client, this
    /// connection's exporter, `cth` over the header's chain), then the chain or the peer's own
    /// revocation status; then signs the server's proof.
    fn verify(&self, p: &Presentation) -> Result<Verified, Refusal> {
        let now = now_unix();
        let lists_seen = self.server.verification.lists_applied();
        let local = self.local()?;
        let v = self.server.verification.verifier();
        let peer = &self.peer.info;
        let verified = v
            .verify_presentation(
                &agentid_protocol::Presentation {
                    proof: &p.proof,
                    chain: p.chain.as_deref(),
                },
                &PresentationContext {
                    presenter: peer.id.as_spiffe_id(),
                    presenter_key: &peer.public_key,
                    presenter_not_after: peer.not_after,
                    verifier_id: local.identity().as_spiffe_id(),
                    role: Role::Client,
                    exporter: self.peer.exporter_client,
                    client_proof: None,
                    // One presentation per connection: nothing accepted before it.
                    accepted_jtis: &[],
                    held_chain: None,
                    now,
                },
            )
            .map_err(|e| Refusal::from_protocol(&e))?;
        if let Some(chain) = &verified.chain {
            // The chain's tokens, keys and holders join the peer's targets, from what its
            // verification read (the chain is not decoded again).
            self.index.update(
                Some(agentid_protocol::verified_peer_revocation_targets(
                    Some(chain),
                    peer.id.as_spiffe_id(),
                    &peer.public_key,
                )),
                lists_seen,
            );
        }
        let (server_proof, exp) = self.sign_server_proof(local, &p.proof, now)?;
        let server_chain = local
            .chain()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| Refusal::internal("chain is not a header value"))?;
        Ok(Verified {
            chain: verified.chain,
            deadline: verified.deadline,
            chain_header: p.chain.clone(),
            client_proof: p.proof.clone(),
            current_proof: Mutex::new((server_proof.clone(), exp)),
            server_proof,
            server_chain,
        })
    }

    /// Signs the server's proof answering `client_proof` (spec/PROTOCOL.md 22.4 step 3).
    fn sign_server_proof(
        &self,
        local: &Credential,
        client_proof: &str,
        now: u64,
    ) -> Result<(HeaderValue, u64), Refusal> {
        let exp = now + self.server.options.proof_lifetime.as_secs().max(1);
        let mut builder = ProofBuilder::new(
            local.identity().as_spiffe_id(),
            self.peer.info.id.as_spiffe_id(),
            Role::Server,
            self.peer.exporter_server,
            now,
            exp,
        )
        .responding_to(client_proof);
        if let Some(c) = local.chain() {
            builder = builder.chain(c);
        }
        let proof = builder
            .sign(local.task_key())
            .map_err(|e| Refusal::internal(e.to_string()))?;
        let proof = HeaderValue::from_str(&proof)
            .map_err(|_| Refusal::internal("proof is not a header value"))?;
        Ok((proof, exp))
    }

    /// The server proof a response carries: the current one while it has at least half its
    /// lifetime left, else a fresh one (spec/PROTOCOL.md 22.4 step 3), so that a slow response
    /// never carries a stale proof.
    fn fresh_proof(&self, v: &Verified) -> Result<HeaderValue, Refusal> {
        let now = now_unix();
        let half = self.server.options.proof_lifetime.as_secs().div_ceil(2);
        let mut current = v.current_proof.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_add(half) < current.1 {
            return Ok(current.0.clone());
        }
        *current = self.sign_server_proof(self.local()?, &v.client_proof, now)?;
        Ok(current.0.clone())
    }

    /// Verifies the presentation this request moved to `Pending`, and settles it.
    fn settle(&self, p: &Presentation) -> Result<Arc<Verified>, Refusal> {
        let result = self.verify(p);
        let settled = self.machine().complete(result);
        self.settled.notify_waiters();
        match &settled {
            Ok(v) => {
                if v.deadline < self.deadline.fetch_min(v.deadline, Ordering::AcqRel) {
                    self.rearm.notify_one();
                }
                // The chain's authority and holders join the domains whose lists must stay fresh.
                self.watch_staleness(v.chain.as_ref());
                tracing::debug!(peer.id = %self.peer.info.id, chain = v.chain.is_some(), "agentid presentation verified");
            }
            Err(r) => {
                tracing::info!(peer.id = %self.peer.info.id, reason = r.code(), detail = r.detail(), "agentid presentation refused");
                self.start_close();
            }
        }
        settled
    }

    /// A request without a settled presentation waits here for the pending one.
    async fn wait(&self, p: Option<&Presentation>) -> Result<Option<Arc<Verified>>, Refusal> {
        let until = Instant::now() + self.server.options.pending_timeout;
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.machine().dispatch(p) {
                Dispatch::Wait => {}
                Dispatch::Hit(v) => return Ok(Some(v)),
                Dispatch::IdentityOnly => return Ok(None),
                Dispatch::Refuse(r) => return Err(r),
                Dispatch::Verify => {
                    return Err(Refusal::internal("presentation restarted while waiting"))
                }
            }
            if timeout(until.saturating_duration_since(Instant::now()), notified)
                .await
                .is_err()
            {
                return Err(Refusal::busy("presentation still pending"));
            }
        }
    }

    /// Per request, after the presentation: the deadline (past the close point, the graceful
    /// close starts), then the revocation epoch (one atomic load; the full re-check only when
    /// the verification state changed).
    ///
    /// The clock is read once and compared as a `SystemTime` with the deadline and the close
    /// point (whole Unix seconds, so the outcome is that of comparing `now_unix()`), without
    /// converting it to Unix seconds.
    pub(crate) fn live(&self) -> Result<(), Refusal> {
        let now = SystemTime::now();
        self.live_when(|secs| {
            UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .is_some_and(|at| now >= at)
        })
    }

    /// As [`ConnShared::live`], at `now` (Unix seconds, read by the caller).
    pub(crate) fn live_at(&self, now: u64) -> Result<(), Refusal> {
        self.live_when(|secs| now >= secs)
    }

    /// The connection checks, with `reached(t)`: whether the time of the check is at or past
    /// the Unix second `t`.
    fn live_when(&self, reached: impl Fn(u64) -> bool) -> Result<(), Refusal> {
        if let Some(r) = self.ended.get() {
            return Err(r.clone());
        }
        let deadline = self.deadline();
        if reached(deadline) {
            return Err(self.end(Refusal::unauthenticated(
                CREDENTIAL_EXPIRED,
                "the connection's deadline passed",
            )));
        }
        // Past the close point (the deadline minus the margin) the graceful close starts here
        // too, not only when the watchdog task next runs: a response leaving now already says
        // `Connection: close`.
        if !self.closing()
            && reached(deadline.saturating_sub(self.server.options.close_margin.as_secs()))
        {
            self.start_close();
        }
        let epoch = self.server.verification.recheck_epoch();
        if epoch != self.checked_epoch.load(Ordering::Acquire)
            || self.index.version() != self.index_checked.load(Ordering::Acquire)
            || reached(self.stale_at())
        {
            self.recheck(epoch)?;
        }
        Ok(())
    }

    /// Re-checks the connection against the current verification state and fails closed, as a
    /// framed session does (spec/PROTOCOL.md 16.4, 22.5): after a bundle change the peer's
    /// certificate chain is validated again (`bad_certificate`); the verified chain is verified
    /// again in full, or a chain-less peer's revocation is checked; any failure but expiry (which
    /// the deadline handles) ends the connection with its code.
    fn recheck(&self, epoch: u64) -> Result<(), Refusal> {
        self.index.count_recheck();
        let index_version = self.index.version();
        let now = now_unix();
        let trust = self.server.verification.trust_store();
        let trust_changed = {
            let seen = self.trust_seen.lock().unwrap_or_else(|e| e.into_inner());
            !Arc::ptr_eq(&trust, &seen)
        };
        if trust_changed {
            if let Err(e) = trust.revalidate(
                &self.peer_certs,
                now,
                CertUsage::ClientAuth,
                self.peer.info.not_after,
            ) {
                return Err(self.end(Refusal::unauthenticated(
                    BAD_CERTIFICATE,
                    format!("peer certificate no longer trusted: {e}"),
                )));
            }
        }
        // Read with the state: while a presentation is being verified (`Pending`), its chain is
        // checked by the verifier of that moment, not by this one, so this re-check records
        // nothing and the first check after it settles runs again with the chain.
        let (chain, pending) = {
            let m = self.machine();
            (
                m.verified().and_then(|v| v.chain_header.clone()),
                m.state() == super::presentation::PresentationState::Pending,
            )
        };
        let v = self.server.verification.verifier();
        let peer = &self.peer.info;
        let result = v.verify_peer(
            chain.as_deref(),
            peer.id.as_spiffe_id(),
            &peer.public_key,
            now,
        );
        match result {
            Err(e) if e.code() != ErrorCode::Expired => Err(self.end(Refusal::from_protocol(&e))),
            _ if pending => Ok(()),
            result => {
                *self.trust_seen.lock().unwrap_or_else(|e| e.into_inner()) = trust;
                self.checked_epoch.store(epoch, Ordering::Release);
                self.index_checked.store(index_version, Ordering::Release);
                self.watch_staleness(result.ok().flatten().as_ref());
                Ok(())
            }
        }
    }

    fn refuse<B>(
        &self,
        r: &Refusal,
        h1: bool,
        connection_level: bool,
    ) -> Response<ResponseBody<B>> {
        let mut resp: Response<ResponseBody<B>> = r.to_response();
        if connection_level {
            self.start_close();
        }
        if h1 && self.closing() {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        tracing::debug!(peer.id = %self.peer.info.id, reason = r.code(), status = r.status().as_u16(), detail = r.detail(), "agentid http request refused");
        resp
    }
}

/// What the synchronous part of dispatch decided.
enum Step {
    Ready(Option<Arc<Verified>>),
    Wait(Option<Presentation>),
    Refuse(Refusal, bool),
}

/// The outermost per-connection service.
struct ConnService<S> {
    inner: S,
    conn: Arc<ConnShared>,
}

impl<S> ConnService<S> {
    /// Runs synchronously when hyper dispatches the request, so that on h2 the stream that
    /// carries the first presentation moves the state to `Pending` before any later stream is
    /// looked at.
    fn first_pass(&self, req: &Request<RequestBody>) -> (bool, Step, Option<HeaderValue>) {
        // One pass over the header names: the agentid headers (rare after the first request)
        // and the correlation header for the request's authorizer.
        let mut agentid = false;
        let mut correlation = None;
        for (name, value) in req.headers() {
            if *name == CHAIN_HEADER || *name == PROOF_HEADER {
                agentid = true;
            } else if *name == CORRELATION && correlation.is_none() {
                correlation = Some(value.clone());
            }
        }
        // An over-long correlation ID is not used (it would be copied into every decision).
        let correlation = correlation.filter(|v| v.len() <= MAX_CORRELATION_ID_BYTES);
        let parsed = if agentid {
            parse_presentation(req.headers())
        } else {
            Ok(None)
        };
        let presentation = match parsed {
            Ok(p) => p,
            // A failed connection answers every request with its stored code, even a malformed one.
            Err(r) => {
                return match self.conn.machine().failure() {
                    Some(stored) => (false, Step::Refuse(stored.clone(), true), correlation),
                    None => (false, Step::Refuse(r, false), correlation),
                }
            }
        };
        let had_proof = presentation.is_some();
        let dispatch = self.conn.machine().dispatch(presentation.as_ref());
        let step = match dispatch {
            Dispatch::IdentityOnly => Step::Ready(None),
            Dispatch::Hit(v) => Step::Ready(Some(v)),
            Dispatch::Wait => Step::Wait(presentation),
            Dispatch::Refuse(r) => Step::Refuse(r, true),
            Dispatch::Verify => match presentation.as_ref().map(|p| self.conn.settle(p)) {
                Some(Ok(v)) => Step::Ready(Some(v)),
                Some(Err(r)) => Step::Refuse(r, true),
                None => Step::Refuse(Refusal::internal("verify without presentation"), true),
            },
        };
        (had_proof, step, correlation)
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = std::convert::Infallible;
    type Future = ConnFuture<S, S::Future, B>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let idle = self.conn.server.options.body_idle_timeout;
        let req = req.map(|body| RequestBody::new(body, idle, self.conn.clone()));
        let h1 = req.version() < Version::HTTP_2;
        let (had_proof, step, correlation) = self.first_pass(&req);
        // A request refused for the connection's sake (its presentation failed, or the
        // connection is already `Failed`) is answered at once and is no activity: the graceful
        // close the refusal starts is not held open by a peer that keeps opening streams (an
        // HTTP/2 peer that never answers GOAWAY's PING), while requests served before still
        // finish.
        let active = match &step {
            Step::Refuse(_, true) => None,
            _ => Some(Active::new(&self.conn)),
        };
        let (verified, stage) = match step {
            Step::Ready(v) => (
                v,
                Stage::Ready {
                    req: Some(req),
                    checked: false,
                },
            ),
            Step::Refuse(r, connection_level) => (
                None,
                Stage::Refused {
                    response: Some(self.conn.refuse(&r, h1, connection_level)),
                },
            ),
            Step::Wait(p) => {
                let conn = self.conn.clone();
                (
                    None,
                    Stage::Wait {
                        wait: Box::pin(async move { conn.wait(p.as_ref()).await }),
                        req: Some(req),
                    },
                )
            }
        };
        ConnFuture {
            conn: self.conn.clone(),
            h1,
            had_proof,
            active,
            verified,
            correlation,
            inner: self.inner.clone(),
            stage,
        }
    }
}

/// A request waiting for the connection's pending presentation (rare: boxed).
type WaitFuture = Pin<Box<dyn Future<Output = Result<Option<Arc<Verified>>, Refusal>> + Send>>;

pin_project_lite::pin_project! {
    /// One request on a connection: the presentation (settled or awaited), the connection
    /// checks, the inner service with the request's [`Authorizer`], and the checks again when
    /// the response leaves. No allocation on the common path.
    struct ConnFuture<S, F, B> {
        conn: Arc<ConnShared>,
        h1: bool,
        had_proof: bool,
        active: Option<Active>,
        verified: Option<Arc<Verified>>,
        // The request's `x-request-id`, found by the first pass.
        correlation: Option<HeaderValue>,
        inner: S,
        // One stage at a time (an enum, not a field each: the future hyper moves is smaller).
        #[pin]
        stage: Stage<F, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F, B> {
        // Waiting for the connection's pending presentation.
        Wait {
            wait: WaitFuture,
            req: Option<Request<RequestBody>>,
        },
        // The connection checks (`checked`: passed since the inner service was last asked for
        // readiness and answered pending), then the inner service's readiness and call.
        Ready {
            req: Option<Request<RequestBody>>,
            checked: bool,
        },
        // The inner service's future.
        Call {
            #[pin]
            future: F,
        },
        // Refused before the inner service was called.
        Refused {
            response: Option<Response<ResponseBody<B>>>,
        },
        // The response was returned.
        Done,
    }
}

impl<S, B> Future for ConnFuture<S, S::Future, B>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let h1 = *this.h1;
        loop {
            let result = match this.stage.as_mut().project() {
                StageProj::Refused { response } => {
                    let response = response.take();
                    this.stage.set(Stage::Done);
                    return Poll::Ready(Ok(response.unwrap_or_else(polled_after_completion)));
                }
                StageProj::Done => return Poll::Ready(Ok(polled_after_completion())),
                StageProj::Wait { wait, req } => match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(v)) => {
                        *this.verified = v;
                        let req = req.take();
                        this.stage.set(Stage::Ready {
                            req,
                            checked: false,
                        });
                        continue;
                    }
                    Poll::Ready(Err(r)) => {
                        this.stage.set(Stage::Done);
                        return Poll::Ready(Ok(this.conn.refuse(&r, h1, true)));
                    }
                },
                StageProj::Ready { req, checked } => {
                    if !*checked {
                        if let Err(r) = this.conn.live() {
                            this.stage.set(Stage::Done);
                            return Poll::Ready(Ok(this.conn.refuse(&r, h1, true)));
                        }
                        *checked = true;
                    }
                    match this.inner.poll_ready(cx) {
                        Poll::Pending => {
                            // The service holds the request back (a concurrency limit, a
                            // buffer): the connection checks run again when it is ready, so
                            // that a deadline or revocation meanwhile is not handed to it.
                            *checked = false;
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => Err(e),
                        Poll::Ready(Ok(())) => {
                            let Some(mut req) = req.take() else {
                                this.stage.set(Stage::Done);
                                return Poll::Ready(Ok(polled_after_completion()));
                            };
                            let authorizer = Authorizer::new(
                                this.conn.clone(),
                                this.verified.clone(),
                                &req,
                                this.correlation.take(),
                            );
                            req.extensions_mut().insert(authorizer);
                            let future = this.inner.call(req);
                            this.stage.set(Stage::Call { future });
                            continue;
                        }
                    }
                }
                StageProj::Call { future } => match future.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                },
            };
            this.stage.set(Stage::Done);
            return Poll::Ready(Ok(respond(
                this.conn,
                h1,
                *this.had_proof,
                this.active.take(),
                this.verified.as_ref(),
                result,
            )));
        }
    }
}

fn polled_after_completion<B>() -> Response<ResponseBody<B>> {
    Refusal::internal("request polled after it completed").to_response()
}

/// The response of a request the inner service answered (or failed): the connection checks
/// again, then the server's proof when the request carried one, and `Connection: close` once
/// the connection is closing (HTTP/1.1).
fn respond<B, E>(
    conn: &ConnShared,
    h1: bool,
    had_proof: bool,
    active: Option<Active>,
    verified: Option<&Arc<Verified>>,
    result: Result<Response<B>, E>,
) -> Response<ResponseBody<B>>
where
    E: Into<BoxError>,
{
    // The handler may have been slow: the deadline and revocation rules hold for the
    // moment the response leaves, not only for the moment the request arrived.
    if let Err(r) = conn.live() {
        return conn.refuse(&r, h1, true);
    }
    let mut resp = match result {
        Ok(r) => match active {
            Some(active) => r.map(|b| ResponseBody::new(b).holding(active)),
            None => r.map(ResponseBody::new),
        },
        Err(e) => {
            let e: BoxError = e.into();
            tracing::warn!(error = %e, "agentid http: inner service failed");
            Refusal::internal("inner service failed").to_response()
        }
    };
    // Served responses carry the server's proof; refusals (a layer's 403, the inner service's
    // failure) carry none (spec/PROTOCOL.md 22.4 step 3).
    if had_proof && !is_refusal(&resp) {
        if let Some(v) = verified {
            let proof = match conn.fresh_proof(v) {
                Ok(p) => p,
                Err(r) => return conn.refuse(&r, h1, false),
            };
            resp.headers_mut().insert(PROOF_HEADER, proof);
            if let Some(c) = &v.server_chain {
                resp.headers_mut().insert(CHAIN_HEADER, c.clone());
            }
        }
    }
    if h1 && conn.closing() {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn instant_at(unix: u64) -> Instant {
    // The sessions' conversion: to the wall clock's fraction of a second (a timer counted from
    // whole seconds fires up to a second late), capped at a year.
    crate::session::instant_for(unix)
}

/// An agentid HTTP server. Build it with [`HttpServer::builder`]; a peer policy is required.
#[derive(Clone)]
pub struct HttpServer {
    config: Arc<rustls::ServerConfig>,
    shared: Arc<ServerShared>,
    admission: Admission,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// Builds an [`HttpServer`].
#[must_use]
pub struct HttpServerBuilder {
    credentials: Arc<dyn CredentialSource>,
    verification: Arc<PeerVerification>,
    policy: PeerPolicy,
    options: HttpOptions,
    sink: Arc<dyn DecisionSink>,
}

impl std::fmt::Debug for HttpServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServerBuilder")
            .field("policy", &self.policy)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl HttpServerBuilder {
    /// Overrides timeouts, caps and the close margin.
    pub fn options(mut self, options: HttpOptions) -> Self {
        self.options = options;
        self
    }

    /// Where authorization decisions go (default: [`TracingSink`]).
    pub fn decision_sink(mut self, sink: Arc<dyn DecisionSink>) -> Self {
        self.sink = sink;
        self
    }

    /// Builds the server (see [`server_config`] for the TLS settings). A timeout longer than a
    /// year (`Duration::MAX` for "never", say) is taken as a year.
    pub fn build(mut self) -> Result<HttpServer> {
        for d in [
            &mut self.options.handshake_timeout,
            &mut self.options.header_read_timeout,
            &mut self.options.pending_timeout,
            &mut self.options.close_margin,
            &mut self.options.cut_grace,
            &mut self.options.idle_timeout,
        ] {
            *d = (*d).min(LONGEST_TIMEOUT);
        }
        if let Some(d) = self.options.body_idle_timeout.as_mut() {
            *d = (*d).min(LONGEST_TIMEOUT);
        }
        let o = &self.options;
        if o.max_connections == 0 || o.max_handshakes == 0 || o.max_concurrent_streams == 0 {
            return Err(Error::Config("HTTP caps must be at least 1".into()));
        }
        if o.idle_timeout.is_zero() {
            return Err(Error::Config("HTTP idle timeout must be positive".into()));
        }
        crate::session::check_proof_lifetime(o.proof_lifetime, "HttpOptions::proof_lifetime")?;
        if o.body_idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config(
                "HTTP body idle timeout must be positive (None for no limit)".into(),
            ));
        }
        let config = Arc::new(server_config(
            self.credentials.clone(),
            &self.verification,
            self.policy,
        )?);
        let defaults = ConnectionLimits::default();
        let admission = Admission::new(ConnectionLimits {
            handshake_timeout: o.handshake_timeout,
            max_connections: o.max_connections,
            max_handshakes: o.max_handshakes,
            max_sessions_per_agent: (o.max_connections / 4).max(1),
            max_sessions_per_task: (o.max_connections / 16).max(1),
            // HTTP has its own read timeouts (header_read_timeout) and hyper's keep-alive.
            idle_timeout: None,
            ..defaults
        })?;
        Ok(HttpServer {
            config,
            admission,
            shared: Arc::new(ServerShared {
                credentials: self.credentials,
                verification: self.verification,
                options: self.options,
                sink: self.sink,
            }),
        })
    }
}

/// One accepted TLS connection, before HTTP runs on it.
pub struct HttpConnection<IO> {
    tls: tokio_rustls::server::TlsStream<StallBounded<IO>>,
    conn: Arc<ConnShared>,
    _permit: Option<SessionPermit>,
}

impl<IO> std::fmt::Debug for HttpConnection<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConnection")
            .field("peer", &self.conn.peer)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// A server presenting `credentials`, verifying clients with `verification`, admitting those
    /// `policy` allows.
    pub fn builder(
        credentials: Arc<dyn CredentialSource>,
        verification: Arc<PeerVerification>,
        policy: PeerPolicy,
    ) -> HttpServerBuilder {
        HttpServerBuilder {
            credentials,
            verification,
            policy,
            options: HttpOptions::default(),
            sink: Arc::new(TracingSink),
        }
    }

    /// The rustls configuration this server accepts with (for other stacks).
    pub fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The TLS handshake (timeout, caps); the peer is verified and readable on the result.
    pub async fn accept<IO>(&self, io: IO) -> Result<HttpConnection<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.accept_from(io, None).await
    }

    /// As [`HttpServer::accept`], for a peer at `source`: the TLS handshake under the
    /// handshake rules of [`crate::ConnectionLimits`] ([`Admission::tls_accept`]), then a
    /// connection slot for the authenticated peer (total, per agent, per task).
    pub async fn accept_from<IO>(
        &self,
        io: IO,
        source: Option<SocketAddr>,
    ) -> Result<HttpConnection<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The handshake presents the credential current now, and the connection's proofs are
        // signed with that same credential (a rotation meanwhile cannot split them).
        let local = self.shared.credentials.current();
        let config = match &local {
            Some(c) => pinned_server_config(&self.config, c),
            // No certificate: the handshake fails.
            None => self.config.clone(),
        };
        let seen = SeenBeforeHandshake {
            epoch: self.shared.verification.recheck_epoch(),
            lists_seen: self.shared.verification.lists_applied(),
            trust: self.shared.verification.trust_store(),
        };
        let tls = self
            .admission
            .tls_accept(StallBounded::new(io), source.map(|s| s.ip()), config)
            .await?;
        let peer = server_peer(tls.get_ref().1, &self.shared.verification)?;
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        let permit = self.admission.admit(&peer.info.id)?;
        let conn = ConnShared::new(self.shared.clone(), seen, peer, certs, local);
        Ok(HttpConnection {
            tls,
            conn,
            _permit: Some(permit),
        })
    }

    /// The admission state (caps and counts) of this server.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Accepts connections from `listener` forever, serving each with a clone of
    /// `service` on its own task. Handshake failures are logged and dropped; accept errors (such as running
    /// out of file descriptors) are logged and backed off.
    ///
    /// The connections belong to this future: dropping it (or aborting the task that runs it),
    /// on shutdown or to cut the peers admitted under an old configuration, stops accepting
    /// and drops every connection it accepted, handshakes under way included. Their sockets
    /// close, requests in flight get no response and streaming bodies stop. To keep a
    /// connection beyond it, accept with [`HttpServer::accept_from`] and run
    /// [`HttpConnection::serve`] on a task of your own.
    pub async fn serve<S, B>(&self, listener: TcpListener, service: S) -> Result<()>
    where
        S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Every connection's task, aborted when this future is dropped; finished ones are
        // reaped as they end, so the set holds the live connections only.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                // Accept errors (EMFILE) are logged and backed off, never fatal.
                (tcp, addr) = accept_tcp(&listener) => {
                    let server = self.clone();
                    let service = service.clone();
                    connections.spawn(async move {
                        match server.accept_from(tcp, Some(addr)).await {
                            Ok(conn) => conn.serve(service).await,
                            Err(e) => log_handshake_failure(addr, &e),
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

fn log_handshake_failure(addr: SocketAddr, e: &Error) {
    tracing::debug!(%addr, reason = e.reason(), error = %e, "agentid http: handshake failed");
}

impl<IO> HttpConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The verified TLS peer.
    pub fn peer(&self) -> &TlsPeer {
        &self.conn.peer
    }

    /// Serves HTTP on this connection until it ends: graceful close at the deadline minus the
    /// margin, at once on revocation (streaming bodies cut), and after a failed presentation.
    pub async fn serve<S, B>(self, service: S)
    where
        S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let conn = self.conn;
        let opts = conn.server.options.clone();
        let service = ConnService {
            inner: service,
            conn: conn.clone(),
        };
        // A peer that stops reading loses the connection once a write waited the idle timeout:
        // a response in flight keeps the idle timer off, and hyper polls its body only when
        // the socket takes bytes.
        let mut tls = self.tls;
        tls.get_mut().0.bound(opts.idle_timeout);
        let io = TokioIo::new(tls);
        // One protocol per connection, chosen by ALPN: each builder's own limits apply exactly
        // (HTTP/1.1's header size limit is not reachable through hyper-util's auto builder).
        match conn.peer.version {
            HttpVersion::H2 => {
                let connection = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_header_list_size(SERVER_HEADER_LIST_LIMIT as u32)
                    .max_concurrent_streams(opts.max_concurrent_streams)
                    .serve_connection(io, service);
                drive(conn, opts, connection, |c| c.graceful_shutdown()).await;
            }
            HttpVersion::Http11 => {
                // The header read timeout is the watchdog's (an HTTP/1.1 connection with no
                // request in flight for `header_read_timeout` closes), not hyper's timer, which
                // would arm and drop a timer for every request head.
                let connection = http1::Builder::new()
                    .header_read_timeout(None)
                    .max_buf_size(SERVER_HEADER_LIST_LIMIT)
                    .max_header_size(SERVER_HEADER_LIST_LIMIT)
                    .serve_connection(io, service);
                drive(conn, opts, connection, |c| c.graceful_shutdown()).await;
            }
        }
    }
}

/// Runs one connection until it ends: graceful close at the deadline minus the margin, when
/// idle, at once on revocation (streaming bodies cut), and after a failed presentation. The
/// timers and the verification-state watch live in a watchdog task, so that serving a request
/// polls only the connection and one notification.
async fn drive<C>(
    conn: Arc<ConnShared>,
    opts: HttpOptions,
    connection: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
) where
    C: Future<Output = hyper::Result<()>>,
{
    let h1 = conn.peer.version == HttpVersion::Http11;
    let _watchdog = AbortOnDrop(tokio::spawn(watchdog(conn.clone(), opts, h1)));
    tokio::pin!(connection);
    let mut shutdown_sent = false;
    loop {
        if conn.drop_now.load(Ordering::Acquire) {
            break;
        }
        if conn.closing() && !shutdown_sent {
            graceful_shutdown(connection.as_mut());
            shutdown_sent = true;
        }
        tokio::select! {
            biased;
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "agentid http: connection ended with an error");
                }
                break;
            }
            () = std::future::poll_fn(|cx| conn.wake.poll(cx)) => {}
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The timers of one connection: the graceful close at the deadline minus the margin, the
/// deadline itself, idleness (on HTTP/1.1 also the header read timeout), and the verification
/// state's changes (revocation, bundles). It asks the driver to close or drop the connection.
async fn watchdog(conn: Arc<ConnShared>, opts: HttpOptions, h1: bool) {
    let mut changes = conn.server.verification.subscribe();
    let mut touched = conn.index.subscribe();
    // A change that landed before these subscriptions (during the handshake, or between accept
    // and serve) signals neither: the connection checks run now when the state moved since the
    // connection was last checked (a failure ends it, and the first pass drops it).
    let _ = conn.live();
    let mut watching = true;
    let mut watching_index = true;
    let margin = opts.close_margin.as_secs();
    // HTTP/1.1: a request head must arrive within `header_read_timeout` of the connection being
    // ready for it, that is of the last request's end (or of the handshake).
    let idle = if h1 {
        opts.idle_timeout.min(opts.header_read_timeout)
    } else {
        opts.idle_timeout
    };
    // Idleness closes the connection once. Once a graceful close started (idleness, the
    // deadline's margin, a failed presentation), a peer that does not finish it (an HTTP/1.1
    // head trickling in; an HTTP/2 peer that never sends its preface, leaves a header block
    // unfinished or never answers GOAWAY's PING) keeps hyper from closing: the connection is
    // dropped once nothing was in flight and nothing ran for a whole cut grace (`quiet`: when
    // to look, and since when it must have been quiet).
    let mut idle_done = false;
    let mut quiet: Option<(Instant, Instant)> = None;
    let mut close_seen = false;
    // HTTP/2: since when every request in flight has waited for the peer to take a response
    // frame, and the progress marks then (a peer that grants no window sends nothing, and the
    // socket, taking no bytes, has no write waiting: the idle timeout bounds that wait too).
    let mut stalled: Option<(Instant, (u64, u64))> = None;
    loop {
        if conn.ended.get().is_some() {
            tokio::time::sleep(opts.cut_grace).await;
            conn.drop_connection();
            return;
        }
        let closing = conn.closing();
        if closing && !close_seen {
            close_seen = true;
            let now = Instant::now();
            quiet = Some((now + opts.cut_grace, now));
        }
        let deadline = conn.deadline();
        let close_at = instant_at(deadline.saturating_sub(margin));
        let hard_at = instant_at(deadline);
        // A request since the last pass moves it; one in flight suspends it (checked again
        // when it fires).
        let idle_at = conn.idle_at(idle).unwrap_or_else(|| Instant::now() + idle);
        let quiet_at = quiet.map_or_else(Instant::now, |(at, _)| at);
        // A held list the peer depends on going stale re-checks the connection (never in the
        // past: a re-check that found it stale ended the connection, and one that ran while a
        // presentation was pending is retried a second later).
        let stale_at = conn.stale_at();
        let stale = instant_at(stale_at.max(now_unix().saturating_add(1)));
        tokio::select! {
            biased;
            () = conn.rearm.notified() => {}
            () = sleep_until(hard_at) => {
                conn.end(Refusal::unauthenticated(CREDENTIAL_EXPIRED, "the connection's deadline passed"));
            }
            r = changes.changed(), if watching => {
                if r.is_err() {
                    watching = false;
                } else {
                    let epoch = conn.server.verification.recheck_epoch();
                    // A failure ends the connection (the next pass drops it after the grace).
                    let _ = conn.recheck(epoch);
                }
            }
            // A new revocation list with entries under this connection's targets.
            r = touched.changed(), if watching_index => {
                if r.is_err() {
                    watching_index = false;
                } else {
                    let epoch = conn.server.verification.recheck_epoch();
                    let _ = conn.recheck(epoch);
                }
            }
            () = sleep_until(stale), if stale_at != u64::MAX => {
                let epoch = conn.server.verification.recheck_epoch();
                let _ = conn.recheck(epoch);
            }
            () = sleep_until(close_at), if !closing => conn.start_close(),
            // Also after an idle close, while requests are in flight (for the wait below).
            () = sleep_until(idle_at), if !idle_done || conn.in_flight.load(Ordering::Acquire) > 0 => {
                let now = Instant::now();
                if !idle_done && conn.idle_at(idle).is_some_and(|at| at <= now) {
                    tracing::debug!(peer.id = %conn.peer.info.id, "agentid http: idle connection closed");
                    conn.start_close();
                    idle_done = true;
                }
                stalled = match (conn.waiting_on_peer(), stalled) {
                    (Some(marks), Some((since, seen))) if marks == seen => {
                        if now.duration_since(since) >= opts.idle_timeout {
                            tracing::debug!(peer.id = %conn.peer.info.id, "agentid http: the peer takes no more of its responses, connection dropped");
                            conn.drop_connection();
                            return;
                        }
                        Some((since, seen))
                    }
                    (Some(marks), _) => Some((now, marks)),
                    (None, _) => None,
                };
            }
            () = sleep_until(quiet_at), if quiet.is_some() => {
                let since = quiet.map_or_else(Instant::now, |(_, since)| since);
                // Nothing in flight and nothing ran since: the peer is not finishing the close.
                if conn.idle_at(Duration::ZERO).is_some_and(|last| last <= since) {
                    tracing::debug!(peer.id = %conn.peer.info.id, "agentid http: the peer did not finish the close, connection dropped");
                    conn.drop_connection();
                    return;
                }
                // Requests ran or are running (in-flight streams may finish): look again.
                let now = Instant::now();
                quiet = Some((now + opts.cut_grace, now));
            }
        }
    }
}
