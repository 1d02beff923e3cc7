//! The CA as a network service (`spec/CA-API.md`): axum routes over agentid's mTLS HTTP server.
//!
//! Served here: `GET /healthz`, `GET /v1/bundle`, `GET /v1/bundle/agentid`, `GET /v1/revocations`
//! (with `ETag` and the `after`/`wait` long-poll, lists published by [`Publisher`]),
//! `POST /v1/enroll` (bootstrap tokens), `POST /v1/tokens`, `POST /v1/tasks`, `GET /v1/tasks`,
//! `POST /v1/children`, `POST /v1/renew` and `POST /v1/revoke` on the mTLS listener
//! ([`CaService::serve`]); `POST /v1/enroll`, `GET /v1/bundle` and `GET /healthz` only on the
//! optional enrollment listener ([`CaService::serve_enrollment`]), whose TLS requests no client
//! certificate.
//!
//! Every request on the mTLS listener first re-checks its caller against the store (the
//! certificate within its validity now; its key still bound to its identity; key, agent and task
//! not revoked), whatever the route. Services (`svc:NAME`) act only as `policy.toml`'s
//! `[agents.NAME.permissions]` allow. CA operations are
//! synchronous; they run on tokio's blocking pool behind a semaphore ([`ServiceOptions`]), and a
//! request that finds the pool full is refused `503 unavailable` with `Retry-After`.
//!
//! Every refusal is the `{code, message, hint}` body of `spec/CA-API.md` 1.3; bodies are bounded
//! by [`agentid_api::MAX_BODY_BYTES`]; malformed input is a 4xx.
//!
//! The service's TLS verifier accepts missing or stale revocation lists: the CA is where
//! revocations are made, and every route that acts for a caller re-checks the caller against the
//! store per request (validity now, and key, agent and task not revoked), which is stronger than
//! any published list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentid_api::{
    ApiError, ErrorCode, Health, RenewRequest as ApiRenew, RevokeRequest as ApiRevoke,
    RevokeResponse, TaskEntry, TasksResponse, TokenRequest, TokenResponse,
};
use agentid_protocol::{BundleSet, PeerId, ServiceId, SpiffeId, TaskId, TaskKey, VerifierConfig};
use agentid_transport::http::{Authorizer, HttpOptions, HttpServer};
use agentid_transport::{Credential, MemoryCredentials, PeerPolicy, PeerVerification};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use rustls_pki_types::CertificateDer;
use tokio::sync::Semaphore;

use crate::error::CaError;
use crate::issue::{KeySource, RenewRequester, ServiceRequest};
use crate::policy::Permission;
use crate::publication::{FeedBody, Publisher};
use crate::store::PublishedList;
use crate::{CertificateAuthority, RenewRequest, RevokeTarget, TaskRequester, TokenBinding};

/// Bounds of the service.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Concurrent CA operations (the blocking pool's share) of the mTLS listener's callers.
    /// The enrollment listener's unauthenticated requests have a share of their own, half as
    /// many (at least one), so that they never take these. Of the mTLS listener's, one task
    /// identity holds at most a quarter (at least one; services, configured by the operator,
    /// and the many tasks of one agent together are bounded by the pool alone), and the audit
    /// records of refused requests together at most a quarter: one task flooding the CA leaves
    /// the other callers their slots (CA-API 5).
    pub max_operations: usize,
    /// Requests held by the revocation long-poll, in total.
    pub max_waiters: usize,
    /// Requests held by the revocation long-poll, per caller identity. The callers of one agent
    /// (its tasks) together hold at most a quarter of `max_waiters`, and at least this many.
    pub max_waiters_per_caller: usize,
    /// Lifetime of the service's own certificate (default: the policy's default TTL).
    pub service_ttl: Option<Duration>,
    /// Options of the mTLS listener.
    pub http: HttpOptions,
    /// Connection caps of the enrollment listener (its own, smaller than the mTLS listener's).
    /// Its connections never authenticate: past the TLS handshake each one counts against
    /// `max_connections` in total, `max_pending_per_source` per source (an IPv4 address, or
    /// an IPv6 /64) and a quarter of `max_connections` (at least `max_pending_per_source`) per
    /// prefix (an IPv4 /24, an IPv6 /48)
    /// for its whole life, and one that finds a cap reached is closed at once.
    /// Its `idle_timeout` closes a connection on which no request was in flight for that long
    /// (a request head still arriving is none); every connection lives at most 60 s.
    pub enroll_limits: agentid_transport::ConnectionLimits,
    /// Requests one source (an IPv4 address, or an IPv6 /64) may make on the enrollment
    /// listener per [`ENROLL_RATE_WINDOW`]; past it, `429 rate_limited`.
    pub enroll_rate_per_source: u32,
    /// A request body must arrive whole within this time after its route starts reading it
    /// (default 10 s); past it, `400 bad_request`. The HTTP server's idle timeout is suspended
    /// while a request is in flight, so without it a body that never ends would hold its
    /// request and its connection until the caller's certificate expires.
    pub body_timeout: Duration,
    /// Most tasks one answer of `GET /v1/tasks` lists (default
    /// [`agentid_api::MAX_TASKS_PER_PAGE`], at least 1; an answer is also cut before
    /// [`agentid_api::MAX_TASKS_PAGE_BYTES`]); a longer inventory is read page by page
    /// (`next`, then `?after=`), so no request reads or holds the whole inventory.
    pub tasks_page: usize,
    /// Most unredeemed bootstrap tokens that have not expired one service may hold (default
    /// [`crate::DEFAULT_MAX_TOKENS_PER_SERVICE`], at least 1); past it, `POST /v1/tokens` is
    /// refused `409 cap_reached` until one is redeemed or expires (CA-API.md 3.6).
    pub max_tokens_per_service: u64,
}

/// Health checks (`GET /healthz`) each listener runs at a time, apart from its operations:
/// past them, `503 unavailable`.
pub const HEALTH_CHECKS: usize = 2;

/// Connections the metrics listener serves at a time.
pub const MAX_METRICS_CONNECTIONS: usize = 8;

/// The window of [`ServiceOptions::enroll_rate_per_source`].
pub const ENROLL_RATE_WINDOW: Duration = Duration::from_secs(10);

/// Most sources the enrollment rate limiter tracks in a window; sources past it are counted by
/// their prefix ([`rate_prefix`]) for the rest of the window (a flood of sources neither grows
/// memory nor resets the counts of the sources already tracked).
const MAX_TRACKED_SOURCES: usize = 16_384;

/// Most prefixes the enrollment rate limiter tracks once its table of sources is full; the
/// sources of prefixes past it share one count for the rest of the window. One attacker's
/// prefix (an IPv6 /48 holds 65,536 /64s) then exhausts its own prefix's count, not that of
/// every new source.
const MAX_TRACKED_PREFIXES: usize = 4_096;

/// Fixed-window request counts per source: an IPv4 address, or an IPv6 /64 (what one host or
/// subscriber is usually given: counting its addresses one by one would let it multiply its
/// allowance).
#[derive(Debug)]
struct RateLimiter {
    per_window: u32,
    state: std::sync::Mutex<RateWindow>,
}

#[derive(Debug)]
struct RateWindow {
    start: tokio::time::Instant,
    counts: std::collections::HashMap<std::net::IpAddr, u32>,
    /// The counts per prefix of the sources that found the table full.
    prefixes: std::collections::HashMap<std::net::IpAddr, u32>,
    /// The shared count of the sources that found both tables full.
    overflow: u32,
}

/// The prefix a source is counted under once the table of sources is full: its IPv4 /24, or
/// its IPv6 /48 (a site's usual allocation).
fn rate_prefix(source: std::net::IpAddr) -> std::net::IpAddr {
    match source {
        std::net::IpAddr::V4(v4) => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4) & 0xffff_ff00))
        }
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 80) - 1),
        )),
    }
}

/// The source an enrollment request is counted under: an IPv4 address (IPv4-mapped IPv6 too),
/// or the /64 an IPv6 address is in, as for the handshake caps.
fn rate_source(ip: std::net::IpAddr) -> std::net::IpAddr {
    agentid_transport::source_of(ip)
}

impl RateLimiter {
    fn new(per_window: u32) -> Self {
        RateLimiter {
            per_window: per_window.max(1),
            state: std::sync::Mutex::new(RateWindow {
                start: tokio::time::Instant::now(),
                counts: std::collections::HashMap::new(),
                prefixes: std::collections::HashMap::new(),
                overflow: 0,
            }),
        }
    }

    /// Counts one request from `ip`; false when its source is over the limit.
    #[cfg(test)]
    fn allow(&self, ip: std::net::IpAddr) -> bool {
        self.admit(ip).is_ok()
    }

    /// Counts one request from `ip`; when its source is over the limit, the time until the
    /// window ends and the counts start again (the refusal's `Retry-After`).
    fn admit(&self, ip: std::net::IpAddr) -> Result<(), Duration> {
        let Ok(mut g) = self.state.lock() else {
            return Err(ENROLL_RATE_WINDOW);
        };
        let w = &mut *g;
        if w.start.elapsed() >= ENROLL_RATE_WINDOW {
            w.start = tokio::time::Instant::now();
            w.counts.clear();
            w.prefixes.clear();
            w.overflow = 0;
        }
        let source = rate_source(ip);
        let full = w.counts.len() >= MAX_TRACKED_SOURCES;
        let prefixes_full = w.prefixes.len() >= MAX_TRACKED_PREFIXES;
        let prefix = rate_prefix(source);
        let n = match w.counts.get_mut(&source) {
            Some(n) => n,
            None if full => match w.prefixes.get_mut(&prefix) {
                Some(n) => n,
                None if prefixes_full => &mut w.overflow,
                None => w.prefixes.entry(prefix).or_insert(0),
            },
            None => w.counts.entry(source).or_insert(0),
        };
        *n = n.saturating_add(1);
        if *n <= self.per_window {
            Ok(())
        } else {
            Err(ENROLL_RATE_WINDOW.saturating_sub(w.start.elapsed()))
        }
    }
}

/// The connections the enrollment listener serves. None of them ever authenticates, so past
/// its TLS handshake each one holds a slot for its whole life: at most
/// `enroll_limits.max_connections` in total, and at most `enroll_limits.max_pending_per_source`
/// per source (an IPv4 address, or an IPv6 /64, as the request rate counts them), and at most
/// a quarter of the total (or the per-source cap, if larger) per prefix (an IPv4 /24, an IPv6
/// /48: a site's addresses). A
/// connection that finds no slot is closed at once, so idle connections neither exhaust the
/// process's descriptors (which the mTLS listener needs too) nor let one source or one site
/// keep everyone else out.
#[derive(Debug)]
struct EnrollSlots {
    max_total: usize,
    max_per_source: usize,
    max_per_prefix: usize,
    held: std::sync::Mutex<EnrollHeld>,
}

#[derive(Debug, Default)]
struct EnrollHeld {
    total: usize,
    per_source: std::collections::HashMap<std::net::IpAddr, usize>,
    per_prefix: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// The requests of one enrollment connection: how many are in flight, and when the last one
/// started or ended (for `enroll_limits.idle_timeout`).
#[derive(Debug)]
struct EnrollActivity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<tokio::time::Instant>,
}

/// One request in flight on an enrollment connection, until dropped.
struct EnrollRequest(Arc<EnrollActivity>);

impl EnrollActivity {
    fn new() -> Arc<Self> {
        Arc::new(EnrollActivity {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    fn touch(&self) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
    }

    fn enter(self: &Arc<Self>) -> EnrollRequest {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.touch();
        EnrollRequest(self.clone())
    }

    /// When the connection will have been idle for `idle`: `None` while a request is in
    /// flight.
    fn idle_at(&self, idle: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(last + idle)
    }
}

impl Drop for EnrollRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The longest an enrollment connection lives.
const ENROLL_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// After an idle enrollment connection's graceful close began, how long it may stay quiet
/// (nothing in flight) before it is dropped: a peer that never finishes its request head does
/// not finish the close either.
const ENROLL_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves one enrollment connection: at most [`ENROLL_CONNECTION_LIFETIME`]; with `idle`, a
/// graceful close once no request was in flight for `idle` (a head that never completes is no
/// request: a peer dribbling one is idle), and a drop if the connection is still quiet
/// [`ENROLL_CLOSE_GRACE`] later.
async fn serve_enrollment_connection<IO>(io: IO, router: Router, idle: Option<Duration>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = EnrollActivity::new();
    let counted = activity.clone();
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| {
            let busy = counted.enter();
            async move {
                let r = next.run(req).await;
                drop(busy);
                r
            }
        },
    ));
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // At most the mTLS listener's header limit: a caller without an identity gets no more room
    // than an authenticated one (hyper's HTTP/1.1 default buffers 400 KiB of request head; its
    // HTTP/2 default, 16 KiB, is below the limit already).
    builder
        .http1()
        .max_buf_size(agentid_transport::http::SERVER_HEADER_LIST_LIMIT);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let end = tokio::time::Instant::now() + ENROLL_CONNECTION_LIFETIME;
    let mut closing = false;
    loop {
        let check_at = match idle {
            None => end,
            Some(idle) => {
                let wait = if closing { ENROLL_CLOSE_GRACE } else { idle };
                activity
                    .idle_at(wait)
                    .unwrap_or_else(|| tokio::time::Instant::now() + wait)
                    .min(end)
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep_until(check_at) => {
                let now = tokio::time::Instant::now();
                if now >= end {
                    return;
                }
                let wait = if closing { ENROLL_CLOSE_GRACE } else { idle.unwrap_or(ENROLL_CONNECTION_LIFETIME) };
                if activity.idle_at(wait).is_some_and(|at| at <= now) {
                    if closing {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    activity.touch();
                }
            }
        }
    }
}

/// One served enrollment connection's slot, released on drop.
#[derive(Debug)]
struct EnrollSlot {
    slots: Arc<EnrollSlots>,
    source: std::net::IpAddr,
}

impl EnrollSlots {
    fn new(limits: &agentid_transport::ConnectionLimits) -> Arc<Self> {
        Arc::new(EnrollSlots {
            max_total: limits.max_connections.max(1),
            max_per_source: limits.max_pending_per_source.max(1),
            // Never below the per-source cap: an operator who raised it for agents behind one
            // NAT address raised the cap of that address's prefix with it.
            max_per_prefix: (limits.max_connections / 4)
                .max(limits.max_pending_per_source)
                .max(1),
            held: std::sync::Mutex::new(EnrollHeld::default()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, EnrollHeld> {
        // Counts only: a panicking holder leaves them usable.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, or `None` when a cap is reached.
    fn try_acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<EnrollSlot> {
        let source = rate_source(ip);
        let prefix = rate_prefix(source);
        let mut h = self.held();
        let n = h.per_source.get(&source).copied().unwrap_or(0);
        let p = h.per_prefix.get(&prefix).copied().unwrap_or(0);
        if h.total >= self.max_total || n >= self.max_per_source || p >= self.max_per_prefix {
            return None;
        }
        h.total += 1;
        h.per_source.insert(source, n + 1);
        h.per_prefix.insert(prefix, p + 1);
        Some(EnrollSlot {
            slots: self.clone(),
            source,
        })
    }
}

impl Drop for EnrollSlot {
    fn drop(&mut self) {
        let mut h = self.slots.held();
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.per_source.remove(&self.source);
            }
        }
        let prefix = rate_prefix(self.source);
        if let Some(n) = h.per_prefix.get_mut(&prefix) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.per_prefix.remove(&prefix);
            }
        }
    }
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self::for_file_limit(agentid_transport::ConnectionLimits::process_file_limit())
    }
}

impl ServiceOptions {
    /// The defaults for a process that may hold `files` descriptors (`None`: no limit): the
    /// enrollment listener's caps (256 connections, 64 handshakes) and the metrics listener's
    /// ([`MAX_METRICS_CONNECTIONS`]) are taken from the file limit first, and the mTLS
    /// listener's caps from the rest, so that the three listeners together stay below it (an
    /// unauthenticated flood of the enrollment listener cannot use up the descriptors of the
    /// authenticated callers' connections). [`Default`] uses the process's own soft limit.
    pub fn for_file_limit(files: Option<u64>) -> Self {
        use agentid_transport::ConnectionLimits;
        let enroll_limits = ConnectionLimits {
            max_connections: 256,
            max_handshakes: 64,
            max_pending_per_source: 8,
            idle_timeout: Some(Duration::from_secs(30)),
            ..ConnectionLimits::for_file_limit(files, 0)
        };
        let others =
            enroll_limits.max_connections + enroll_limits.max_handshakes + MAX_METRICS_CONNECTIONS;
        let mtls =
            ConnectionLimits::for_file_limit(files, u64::try_from(others).unwrap_or(u64::MAX));
        ServiceOptions {
            max_operations: 16,
            max_waiters: 1024,
            max_waiters_per_caller: 4,
            service_ttl: None,
            http: HttpOptions {
                max_connections: mtls.max_connections,
                max_handshakes: mtls.max_handshakes,
                ..HttpOptions::default()
            },
            enroll_limits,
            enroll_rate_per_source: 30,
            body_timeout: Duration::from_secs(10),
            tasks_page: agentid_api::MAX_TASKS_PER_PAGE,
            max_tokens_per_service: crate::DEFAULT_MAX_TOKENS_PER_SERVICE,
        }
    }
}

struct Shared {
    ca: Arc<CertificateAuthority>,
    ops: Arc<Semaphore>,
    waiters: Arc<Semaphore>,
    /// Publishes revocation lists and serves the latest stored one.
    publisher: Arc<Publisher>,
    /// Long-poll requests held per caller.
    caller_waiters: Arc<crate::publication::CallerShares>,
    /// The feed's body for the newest list, written once per `seq`.
    feed_body: FeedBody,
    /// The size of `waiters`.
    max_waiters: usize,
    /// Counters of both API listeners, served by the metrics listener.
    metrics: Arc<crate::metrics::Metrics>,
    /// [`ServiceOptions::body_timeout`].
    body_timeout: Duration,
    /// [`ServiceOptions::tasks_page`].
    tasks_page: usize,
    /// The slots of `GET /healthz` ([`HEALTH_CHECKS`]), apart from the operations'.
    health: Arc<Semaphore>,
    /// The operations each task caller holds.
    caller_ops: Arc<crate::publication::CallerShares>,
    /// The audit records of refused requests being written or waiting for an operation slot.
    refusal_records: Arc<Semaphore>,
    /// The `seq` served when a client's `after` above it was last logged ([`ahead`]).
    warned_ahead: Arc<std::sync::atomic::AtomicU64>,
    /// `GET /v1/bundle`'s document ([`bundle`]).
    spiffe_bundle: Arc<std::sync::Mutex<SpiffeBundle>>,
}

tokio::task_local! {
    /// The caller of the mTLS request being served (set around each route by
    /// [`recheck_caller`]): [`run_in`] counts its operations against its share.
    static CALLER: PeerId;
}

/// A CA service: the mTLS server and its routes.
pub struct CaService {
    shared: Arc<Shared>,
    /// The enrollment listener's state: the same CA, publisher and metrics, its own share of
    /// operation slots (half of `max_operations`), so that unauthenticated requests never take
    /// the slots of the mTLS listener's callers.
    enroll_shared: Arc<Shared>,
    server: HttpServer,
    own: OwnCertificate,
    enroll_tls: Arc<rustls::ServerConfig>,
    enroll_admission: agentid_transport::Admission,
    enroll_slots: Arc<EnrollSlots>,
    enroll_rate: Arc<RateLimiter>,
}

/// The service's own certificate, issued again (a new key each time) at half its lifetime.
struct OwnCertificate {
    ttl: Option<Duration>,
    not_after: u64,
    issued_at: u64,
    credentials: Arc<MemoryCredentials>,
    verification: Arc<PeerVerification>,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService").finish_non_exhaustive()
    }
}

/// The reserved service name of the CA service.
pub const SERVICE_NAME: &str = agentid_api::CA_SERVICE_NAME;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The CA refused something (policy, store, keys).
    #[error("{0}")]
    Ca(#[from] CaError),
    /// The transport refused its configuration.
    #[error("{0}")]
    Transport(#[from] agentid_transport::Error),
    /// The listener failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CaService {
    /// Issues the service's own certificate (`spiffe://<td>/svc/agentid-ca`, a fresh key held in
    /// memory; the policy needs a `[services.agentid-ca]` rule with `requesters = ["operator"]`),
    /// publishes a first revocation list and builds the server.
    pub fn new(mut ca: CertificateAuthority, options: ServiceOptions) -> Result<Self, ServeError> {
        ca.set_max_tokens_per_service(options.max_tokens_per_service);
        let now = SystemTime::now();
        let td = ca.trust_domain().clone();
        let key = TaskKey::generate(agentid_protocol::Algorithm::Es256)
            .map_err(|e| CaError::Signer(e.to_string()))?;
        let issued = ca.issue_service(
            &ServiceRequest {
                service: SERVICE_NAME.into(),
                key: KeySource::Spki(key.public_key().to_spki_der()),
                ttl: options.service_ttl,
            },
            now,
        )?;
        let chain = vec![
            CertificateDer::from(issued.leaf.der.clone()),
            CertificateDer::from(issued.intermediate_der.clone()),
        ];
        let credential = Credential::new(chain, key)?;
        let credentials = Arc::new(MemoryCredentials::new(credential));
        let mut bundles = BundleSet::new();
        bundles
            .insert(ca.trust_bundle()?)
            .map_err(|e| CaError::InvalidRequest(e.to_string()))?;
        let own = ServiceId::new(&td, SERVICE_NAME)
            .and_then(|id| SpiffeId::parse(id.as_str()))
            .map_err(CaError::from)?;
        // See the module documentation: the CA re-checks callers against its store.
        let config = VerifierConfig::new(own, bundles).danger_accept_missing_or_stale_revocations();
        let verification = PeerVerification::new(config)?;
        let enroll_tls = Arc::new(
            agentid_transport::http::danger_no_client_auth_for_enrollment(credentials.clone())?,
        );
        let enroll_admission = agentid_transport::Admission::new(options.enroll_limits.clone())?;
        let server = HttpServer::builder(
            credentials.clone(),
            verification.clone(),
            PeerPolicy::trust_domain(td),
        )
        .options(options.http.clone())
        .build()?;
        let own = OwnCertificate {
            ttl: options.service_ttl,
            not_after: issued.leaf.not_after,
            issued_at: crate::util::unix(now)?,
            credentials,
            verification,
        };
        let ca = Arc::new(ca);
        let publisher = Publisher::new(ca.clone())?;
        // The size of the waiters' semaphore, which the held count is read against.
        let max_waiters = permits(options.max_waiters);
        // One caller's share of the mTLS listener's operations, and the refusal records'. The
        // tasks of one agent share only the pool: a fleet of one agent's tasks renewing at once
        // is the usual load, not a flood.
        let quarter = permits(options.max_operations / 4);
        let caller_ops =
            crate::publication::CallerShares::new(quarter, permits(options.max_operations));
        let shared = Arc::new(Shared {
            ca,
            ops: Arc::new(Semaphore::new(permits(options.max_operations))),
            waiters: Arc::new(Semaphore::new(max_waiters)),
            max_waiters,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            publisher,
            caller_waiters: crate::publication::CallerShares::new(
                options.max_waiters_per_caller,
                options.max_waiters / 4,
            ),
            feed_body: FeedBody::new(),
            body_timeout: options.body_timeout,
            tasks_page: options.tasks_page,
            health: Arc::new(Semaphore::new(HEALTH_CHECKS)),
            caller_ops: caller_ops.clone(),
            refusal_records: Arc::new(Semaphore::new(quarter)),
            warned_ahead: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            spiffe_bundle: Arc::default(),
        });
        let enroll_shared = Arc::new(Shared {
            ca: shared.ca.clone(),
            ops: Arc::new(Semaphore::new(permits(options.max_operations / 2))),
            waiters: shared.waiters.clone(),
            max_waiters: shared.max_waiters,
            metrics: shared.metrics.clone(),
            publisher: shared.publisher.clone(),
            caller_waiters: shared.caller_waiters.clone(),
            feed_body: FeedBody::new(),
            body_timeout: options.body_timeout,
            tasks_page: options.tasks_page,
            health: Arc::new(Semaphore::new(HEALTH_CHECKS)),
            caller_ops,
            refusal_records: Arc::new(Semaphore::new(quarter)),
            warned_ahead: shared.warned_ahead.clone(),
            spiffe_bundle: shared.spiffe_bundle.clone(),
        });
        Ok(CaService {
            shared,
            enroll_shared,
            server,
            own,
            enroll_tls,
            enroll_slots: EnrollSlots::new(&options.enroll_limits),
            enroll_admission,
            enroll_rate: Arc::new(RateLimiter::new(options.enroll_rate_per_source)),
        })
    }

    /// The revocation list publisher. [`CaService::serve`] runs it; whoever serves
    /// [`CaService::router`] by other means must run [`Publisher::run`] too, or revocations are
    /// not published (and `POST /v1/revoke` answers `503` after waiting for its list).
    pub fn publisher(&self) -> Arc<Publisher> {
        self.shared.publisher.clone()
    }

    /// The routes of the mTLS listener; every request first re-checks its caller against the
    /// store.
    pub fn router(&self) -> Router {
        Router::new()
            .route(agentid_api::routes::HEALTHZ, get(healthz))
            .route(agentid_api::routes::BUNDLE, get(bundle))
            .route(agentid_api::routes::BUNDLE_AGENTID, get(bundle_agentid))
            .route(agentid_api::routes::REVOCATIONS, get(revocations))
            .route(agentid_api::routes::ENROLL, post(enroll))
            .route(agentid_api::routes::TOKENS, post(tokens))
            .route(agentid_api::routes::TASKS, post(open_task).get(list_tasks))
            .route(agentid_api::routes::CHILDREN, post(children))
            .route(agentid_api::routes::RENEW, post(renew))
            .route(agentid_api::routes::REVOKE, post(revoke))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                recheck_caller,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.shared.metrics.clone(),
                crate::metrics::track,
            ))
            .with_state(self.shared.clone())
    }

    /// The routes of the enrollment listener: exactly `POST /v1/enroll`, `GET /v1/bundle` and
    /// `GET /healthz`; anything else is `404 not_found`.
    pub fn enrollment_router(&self) -> Router {
        self.enrollment_routes()
            .layer(axum::middleware::from_fn_with_state(
                self.shared.metrics.clone(),
                crate::metrics::track,
            ))
    }

    fn enrollment_routes(&self) -> Router {
        Router::new()
            .route(agentid_api::routes::HEALTHZ, get(healthz))
            .route(agentid_api::routes::BUNDLE, get(bundle))
            .route(agentid_api::routes::ENROLL, post(enroll))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .with_state(self.enroll_shared.clone())
    }

    /// The counters and gauges of the service (see [`crate::metrics`]).
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.shared.metrics.clone()
    }

    /// The routes of the metrics listener: exactly `GET /metrics`; anything else is `404`.
    pub fn metrics_router(&self) -> Router {
        Router::new()
            .route(crate::metrics::METRICS_PATH, get(metrics_scrape))
            .fallback(metrics_not_found)
            .method_not_allowed_fallback(metrics_not_found)
            .with_state(self.shared.clone())
    }

    /// Serves the metrics listener until it fails: plain HTTP/1.1 (no TLS: bind it to loopback
    /// or a private network), the routes of [`CaService::metrics_router`], at most
    /// [`MAX_METRICS_CONNECTIONS`] connections at a time, each for at most 30 seconds.
    pub async fn serve_metrics(&self, listener: tokio::net::TcpListener) -> Result<(), ServeError> {
        let router = self.metrics_router();
        let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
        // Every connection's task, aborted when this future is dropped (finished ones reaped).
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (tcp, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "agentid ca serve: metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Past the cap, the connection is closed at once.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            connections.spawn(async move {
                let _slot = slot;
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http1_only();
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    }

    /// Serves the enrollment listener until it fails: TLS 1.3 without client authentication
    /// (see [`agentid_transport::http::danger_no_client_auth_for_enrollment`]), its own
    /// connection, handshake and per-source caps ([`ServiceOptions::enroll_limits`]; served
    /// connections are counted for their whole life, see its documentation), a request
    /// rate per source address ([`ServiceOptions::enroll_rate_per_source`], then
    /// `429 rate_limited`), HTTP/1.1 and HTTP/2, the routes of [`CaService::enrollment_router`].
    pub async fn serve_enrollment(
        &self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), ServeError> {
        let router = self.enrollment_routes();
        let metrics = self.shared.metrics.clone();
        // Every connection's task, aborted when this future is dropped (finished ones reaped).
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (tcp, source) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "agentid ca serve: enrollment accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let admission = self.enroll_admission.clone();
            let slots = self.enroll_slots.clone();
            let idle = self.enroll_admission.limits().idle_timeout;
            let config = self.enroll_tls.clone();
            let limiter = self.enroll_rate.clone();
            let ip = source.ip();
            // Every request on this connection counts against its source address.
            let router = router
                .clone()
                .layer(axum::middleware::from_fn(
                    move |req: Request, next: axum::middleware::Next| {
                        let admitted = limiter.admit(ip);
                        async move {
                            match admitted {
                                Ok(()) => next.run(req).await,
                                Err(left) => {
                                    let mut r = Refused::new(
                                        ErrorCode::RateLimited,
                                        "too many requests from this address",
                                        "retry after Retry-After",
                                    )
                                    .into_response();
                                    // Until the window ends (whole seconds, at least 1): asking
                                    // sooner is refused again, and counted.
                                    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                                    r.headers_mut().insert(
                                        header::RETRY_AFTER,
                                        HeaderValue::from(secs.max(1)),
                                    );
                                    r
                                }
                            }
                        }
                    },
                ))
                // Counted outside the rate limit, so its refusals are counted too.
                .layer(axum::middleware::from_fn_with_state(
                    metrics.clone(),
                    crate::metrics::track,
                ));
            connections.spawn(async move {
                let _ = tcp.set_nodelay(true);
                let tls = match admission.tls_accept(tcp, Some(source.ip()), config).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(error = %e, %source, "enrollment handshake refused");
                        return;
                    }
                };
                // Past the caps the connection is closed at once (see `EnrollSlots`).
                let Some(_slot) = slots.try_acquire(source.ip()) else {
                    tracing::debug!(%source, "enrollment connection refused: connection caps reached");
                    return;
                };
                // Bounded: an enrollment connection lives at most 60 s, and closes when idle.
                serve_enrollment_connection(tls, router, idle).await;
            });
        }
    }

    /// Serves the mTLS listener and, when given, the enrollment and metrics listeners, until one
    /// fails. Dropping the future (a shutdown) stops every listener and drops every connection
    /// they accepted (as [`agentid_transport::http::HttpServer::serve`] does); so does dropping
    /// the future of each `serve` method below.
    pub async fn serve_all(
        &self,
        listener: tokio::net::TcpListener,
        enroll: Option<tokio::net::TcpListener>,
        metrics: Option<tokio::net::TcpListener>,
    ) -> Result<(), ServeError> {
        match metrics {
            None => self.serve_both(listener, enroll).await,
            Some(m) => {
                tokio::select! {
                    r = self.serve_both(listener, enroll) => r,
                    r = self.serve_metrics(m) => r,
                }
            }
        }
    }

    /// Serves the mTLS listener and, when given, the enrollment listener, until one fails.
    pub async fn serve_both(
        &self,
        listener: tokio::net::TcpListener,
        enroll: Option<tokio::net::TcpListener>,
    ) -> Result<(), ServeError> {
        match enroll {
            None => self.serve(listener).await,
            Some(e) => {
                tokio::select! {
                    r = self.serve(listener) => r,
                    r = self.serve_enrollment(e) => r,
                }
            }
        }
    }

    /// Serves the mTLS listener until it fails, re-issuing the service's own certificate (same
    /// key) at half its lifetime.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> Result<(), ServeError> {
        tokio::select! {
            r = self.server.serve(listener, self.router()) => r?,
            () = self.keep_own_certificate() => {}
            () = self.shared.publisher.clone().run() => {}
        }
        Ok(())
    }

    /// Never returns: renews the service's certificate at half its lifetime, retrying every
    /// few seconds on failure (the old certificate serves until then).
    async fn keep_own_certificate(&self) {
        let own = &self.own;
        let (mut not_after, mut issued_at) = (own.not_after, own.issued_at);
        loop {
            let renew_at = issued_at + not_after.saturating_sub(issued_at) / 2;
            // In wall-clock pieces: a host suspended past the renewal point renews as it
            // resumes, not a whole suspension late (perhaps after `notAfter`).
            agentid_transport::sleep_until_unix(renew_at.max(unix_now() + 1)).await;
            match self.renew_own().await {
                Ok((na, at)) => (not_after, issued_at) = (na, at),
                Err(e) => {
                    tracing::warn!(error = %e, "agentid ca serve: cannot renew the service certificate");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    async fn renew_own(&self) -> Result<(u64, u64), ServeError> {
        let own = &self.own;
        // A new key each time, issued as at start (the operator's issuance binds the name to
        // it), not renewed: another CA process on the same store bound the name to its own key
        // when it started, and a renewal (same key as the binding's) would then be refused,
        // leaving this process to serve an expired certificate. A new key also keeps the
        // service's key within `max_key_age` however long the process runs.
        let key = TaskKey::generate(agentid_protocol::Algorithm::Es256)
            .map_err(|e| CaError::Signer(e.to_string()))?;
        let req = ServiceRequest {
            service: SERVICE_NAME.into(),
            key: KeySource::Spki(key.public_key().to_spki_der()),
            ttl: own.ttl,
        };
        let ca = self.shared.ca.clone();
        let issued = tokio::task::spawn_blocking(move || ca.issue_service(&req, SystemTime::now()))
            .await
            .map_err(|e| CaError::Store(e.to_string()))??;
        let chain = vec![
            CertificateDer::from(issued.leaf.der.clone()),
            CertificateDer::from(issued.intermediate_der.clone()),
        ];
        let credential = Credential::new(chain, key)?;
        own.credentials
            .rotate(credential, &own.verification.trust_store())?;
        Ok((issued.leaf.not_after, unix_now()))
    }

    /// Binds `addr` and serves it.
    pub async fn serve_addr(&self, addr: SocketAddr) -> Result<(), ServeError> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve(listener).await
    }
}

// ---- Responses ----

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(b) => {
            let mut r = Response::new(Body::from(b));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A refusal as `spec/CA-API.md` 1.3 describes it.
#[derive(Debug)]
struct Refused(ApiError);

impl Refused {
    fn new(code: ErrorCode, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Refused(ApiError::new(code, message, hint))
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = json(status, &self.0);
        if self.0.code.retry_after() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // A 401 names its authentication scheme (RFC 9110 15.5.2), as the binding's do.
        if status == StatusCode::UNAUTHORIZED {
            if let Ok(c) =
                HeaderValue::from_str(&format!("Agentid error=\"{}\"", self.0.code.as_str()))
            {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, c);
            }
        }
        r.extensions_mut()
            .insert(crate::metrics::RefusalCode(self.0.code));
        r
    }
}

/// The CA API code of a CA error.
pub fn error_code(e: &CaError) -> ErrorCode {
    match e {
        CaError::CsrMalformed(_)
        | CaError::CsrBadSignature
        | CaError::CsrUnsupportedKey(_)
        | CaError::CsrRequestsCa
        | CaError::CsrSanMismatch { .. }
        | CaError::CsrKeyUsage(_)
        | CaError::CsrExtendedKeyUsage(_)
        | CaError::CsrUnsupportedExtension(_) => ErrorCode::BadCsr,
        CaError::Protocol(_) | CaError::InvalidRequest(_) => ErrorCode::BadRequest,
        CaError::WrongTrustDomain { .. } => ErrorCode::NotPermitted,
        CaError::KeyInUse { .. }
        | CaError::KeyMismatch { .. }
        | CaError::IdentityExists(_)
        | CaError::TaskIdTaken(_) => ErrorCode::KeyMismatch,
        CaError::UnknownIdentity(_) | CaError::NotFound { .. } => ErrorCode::NotFound,
        CaError::Revoked { .. } => ErrorCode::Revoked,
        CaError::Policy { .. } | CaError::Unauthorized { .. } => ErrorCode::PolicyDenied,
        CaError::BootstrapToken(_) => ErrorCode::TokenInvalid,
        CaError::OutlivesParent { .. }
        | CaError::ChildTooDeep { .. }
        | CaError::TooManyTokens { .. } => ErrorCode::CapReached,
        CaError::ParentNotActive(_) => ErrorCode::ParentNotActive,
        CaError::Store(_) => ErrorCode::StoreUnavailable,
        _ => ErrorCode::Internal,
    }
}

impl From<CaError> for Refused {
    fn from(e: CaError) -> Self {
        let code = error_code(&e);
        if code == ErrorCode::Internal || code == ErrorCode::StoreUnavailable {
            tracing::warn!(error = %e, "agentid ca serve: operation failed");
            // Never a path or a key detail on the wire.
            return Refused::new(
                code,
                "the CA could not complete the operation",
                "retry later",
            );
        }
        // A policy refusal names the rule that refused; the caller can ask for less, and only
        // the CA's operator can change the rule.
        let hint = match e.policy_rule() {
            // Asking for less cannot help a key past its life: only a new key can.
            Some(rule) if rule.ends_with(".max_key_age") => {
                "enroll the service again with a new key: a new bootstrap token from the CA's operator (agentid token create --service NAME), then agentid enroll --token-file FILE".to_owned()
            }
            Some(rule) => format!(
                "check the request against {rule} in the CA's policy.toml, or ask the CA's operator to change that rule"
            ),
            None => e.next_step().unwrap_or_default(),
        };
        Refused::new(code, e.to_string(), hint)
    }
}

/// The permits of a bound given as a count: at least 1, and `usize::MAX` (no bound) taken as
/// the most a semaphore holds (`Semaphore::new` panics above that).
fn permits(n: usize) -> usize {
    n.clamp(1, Semaphore::MAX_PERMITS)
}

/// Runs a CA operation on the blocking pool, within the concurrency bound. The slot is held by
/// the blocking closure, not by this future: a request dropped while its operation runs (its
/// caller went away) keeps the slot until the operation, which cannot be cancelled, ends.
async fn run<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&CertificateAuthority) -> Result<T, CaError> + Send + 'static,
) -> Result<T, Refused> {
    run_in(s, &s.ops, f).await
}

/// [`run`] within the slots of `slots`.
async fn run_in<T: Send + 'static>(
    s: &Shared,
    slots: &Arc<Semaphore>,
    f: impl FnOnce(&CertificateAuthority) -> Result<T, CaError> + Send + 'static,
) -> Result<T, Refused> {
    // A task caller's operations count against its share first (one at its share takes no
    // slot of the others). Services (the platform opening tasks for many agents: one identity,
    // configured by the operator) are bounded by the pool alone.
    let share = match CALLER.try_with(|caller| {
        matches!(caller, PeerId::Task(_)).then(|| s.caller_ops.try_acquire(caller))
    }) {
        Err(_) | Ok(None) => None,
        Ok(Some(Some(share))) => Some(share),
        Ok(Some(None)) => {
            return Err(Refused::new(
                ErrorCode::Unavailable,
                "this caller is at its share of the CA's concurrency bound",
                "retry after Retry-After, with fewer requests at once",
            ))
        }
    };
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        return Err(Refused::new(
            ErrorCode::Unavailable,
            "the CA is at its concurrency bound",
            "retry after Retry-After",
        ));
    };
    let ca = s.ca.clone();
    let op = move || {
        let _permit = permit;
        let _share = share;
        f(&ca)
    };
    match tokio::task::spawn_blocking(op).await {
        Ok(r) => r.map_err(Refused::from),
        Err(_) => Err(Refused::new(
            ErrorCode::Internal,
            "the CA operation did not complete",
            "retry later",
        )),
    }
}

/// The request's JSON body, read whole within [`ServiceOptions::body_timeout`] and
/// [`agentid_api::MAX_BODY_BYTES`].
async fn read_json<T: serde::de::DeserializeOwned>(s: &Shared, req: Request) -> Result<T, Refused> {
    // A body whose announced length (`content-length`) is over the limit is a larger body:
    // refused before it is read (CA-API.md 1.2), not waited for.
    let max = u64::try_from(agentid_api::MAX_BODY_BYTES).unwrap_or(u64::MAX);
    if axum::body::HttpBody::size_hint(req.body()).lower() > max {
        return Err(body_too_large());
    }
    let read = axum::body::to_bytes(req.into_body(), agentid_api::MAX_BODY_BYTES);
    let bytes = tokio::time::timeout(s.body_timeout, read)
        .await
        .map_err(|_| {
            Refused::new(
                ErrorCode::BadRequest,
                format!(
                    "the request body did not arrive within {} s",
                    s.body_timeout.as_secs_f32()
                ),
                "send the whole request again",
            )
        })?
        .map_err(|e| body_refusal(&*e.into_inner()))?;
    crate::request_body::parse_request_body(&bytes).map_err(|e| {
        let hint = match e {
            crate::request_body::BodyError::NotIJson(_) => "see spec/CA-API.md 1.2",
            crate::request_body::BodyError::NotTheRoutes(_) => "see spec/CA-API.md",
        };
        Refused::new(ErrorCode::BadRequest, e.to_string(), hint)
    })
}

/// Why a request body could not be read: larger than the limit (`413 body_too_large`), or cut
/// off, reset or too slow (`400 bad_request`: the body is not too large, it is missing).
fn body_refusal(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Refused {
    if e.is::<http_body_util::LengthLimitError>() {
        body_too_large()
    } else {
        Refused::new(
            ErrorCode::BadRequest,
            format!("the request body could not be read: {e}"),
            "send the whole request again",
        )
    }
}

/// `413 body_too_large`: a body over [`agentid_api::MAX_BODY_BYTES`], announced or read.
fn body_too_large() -> Refused {
    Refused::new(
        ErrorCode::BodyTooLarge,
        format!(
            "the request body is larger than {} bytes",
            agentid_api::MAX_BODY_BYTES
        ),
        "",
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The caller's certificate must still be valid now (not only at the handshake).
fn check_caller_valid(a: &Authorizer) -> Result<(), Refused> {
    let now = unix_now();
    let p = a.peer();
    if now > p.not_after {
        return Err(Refused::new(
            ErrorCode::CertificateExpired,
            "the connection's certificate has expired",
            "no renewal after notAfter: open a new task, or ask the parent to re-issue",
        ));
    }
    if now < p.not_before {
        return Err(Refused::new(
            ErrorCode::CertificateExpired,
            "the connection's certificate is not yet valid",
            "check the clock",
        ));
    }
    Ok(())
}

// ---- Routes ----

async fn metrics_scrape(State(s): State<Arc<Shared>>) -> Response {
    let (seq, bytes) = s
        .publisher
        .latest()
        .map(|p| (p.seq, p.compact.len() as u64))
        .unwrap_or((0, 0));
    let held = s.max_waiters.saturating_sub(s.waiters.available_permits());
    s.metrics.set_state(seq, bytes, held as u64);
    crate::metrics::scrape(&s.metrics)
}

async fn metrics_not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

async fn not_found() -> Refused {
    Refused::new(ErrorCode::NotFound, "no such route", "see spec/CA-API.md")
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    // One single-row read proves the store answers (CA-API 3.1); a public route never reads a
    // table that grows with the CA (its revocations). In slots of its own: operations holding
    // every slot of the listener (a burst of enrollments) are no store that cannot be read, and
    // a prober taking that `503` for a dead CA would restart it or take it out of rotation.
    match run_in(&s, &s.health, |ca| ca.revocation_epoch().map(|_| ())).await {
        Ok(()) => json(
            StatusCode::OK,
            &Health {
                status: "ok".into(),
            },
        ),
        Err(r) => r.into_response(),
    }
}

/// The standard SPIFFE bundle (only the X509-SVID authorities) of
/// [`CertificateAuthority::spiffe_bundle`]: read (a file read and a signature verification, off
/// the async workers) once per signed bundle the directory holds ([`SpiffeBundle`]), and never
/// with a lower `spiffe_sequence` than it served before.
async fn bundle(State(s): State<Arc<Shared>>) -> Response {
    let stamp = s.ca.signed_bundle_stamp();
    if let Ok(kept) = s.spiffe_bundle.lock() {
        if let Some((at, v)) = kept.body.as_ref() {
            if *at == stamp {
                return json(StatusCode::OK, v);
            }
        }
    }
    let ca = s.ca.clone();
    let read = tokio::task::spawn_blocking(move || ca.spiffe_bundle()).await;
    let bundle = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Refused::from(e).into_response(),
        Err(_) => return Refused::from(CaError::Store("bundle".into())).into_response(),
    };
    let mut v: serde_json::Value = match serde_json::from_str(&bundle.to_spiffe_json()) {
        Ok(v) => v,
        Err(_) => return Refused::from(CaError::Store("bundle".into())).into_response(),
    };
    let Ok(mut kept) = s.spiffe_bundle.lock() else {
        return Refused::from(CaError::Store("bundle".into())).into_response();
    };
    // A document removed or replaced by an older one does not take the sequence back.
    let seq = bundle.sequence().max(kept.served_seq);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("spiffe_sequence".to_owned(), seq.into());
    }
    kept.served_seq = seq;
    kept.body = Some((stamp, v.clone()));
    drop(kept);
    json(StatusCode::OK, &v)
}

/// The SPIFFE bundle served last, with the stamp of the signed bundle it was read with
/// ([`CertificateAuthority::signed_bundle_stamp`]), and the highest sequence served.
#[derive(Debug, Default)]
struct SpiffeBundle {
    body: Option<(
        Option<crate::agentid_bundle::BundleStamp>,
        serde_json::Value,
    )>,
    served_seq: u64,
}

/// The signed agentid bundle, as the operator signed it offline (read per request, so a
/// re-signed bundle is served without a restart).
async fn bundle_agentid(State(s): State<Arc<Shared>>) -> Response {
    match run(&s, |ca| ca.signed_agentid_bundle()).await {
        Ok(Some(jws)) => {
            let mut r = Response::new(Body::from(jws));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jose"),
            );
            r
        }
        Ok(None) => Refused::new(
            ErrorCode::NotFound,
            "this CA has no signed agentid bundle",
            "the operator signs one with the offline bundle-signing key",
        )
        .into_response(),
        Err(r) => r.into_response(),
    }
}

/// A client asked for lists after `after`, above the `seq` served: it holds a list this CA's
/// store does not know, which a store restored from a backup (or a forged list) explains. Still
/// answered as any request for a newer list (the list published next is above every earlier
/// one, `spec/CA-API.md` 3.4); counted, and logged once per `seq` served (a client cannot
/// flood the log), for the operator.
fn ahead(s: &Shared, after: u64, served: u64) {
    s.metrics.poll_ahead();
    if s.warned_ahead
        .swap(served, std::sync::atomic::Ordering::Relaxed)
        != served
    {
        tracing::warn!(
            after,
            served,
            "a client holds a revocation list above the one served: if this CA's store was \
             restored from a backup, revoke again what was revoked after the restore point \
             (docs/replicas.md); otherwise the client holds a list this CA did not publish"
        );
    }
}

/// The feed's answer for `p`: its body written once per `seq` ([`FeedBody`]).
async fn list_response(s: &Shared, p: &Arc<PublishedList>) -> Response {
    let body = match s.feed_body.body(p).await {
        Ok(b) => b,
        Err(e) => return Refused::from(e).into_response(),
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", p.seq)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn not_modified(seq: u64) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{seq}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// `after` and `wait` from the query; `If-None-Match` as `after`.
fn poll_params(req: &Request) -> Result<(Option<u64>, u64), Refused> {
    let bad = |m: &str| {
        Refused::new(
            ErrorCode::BadRequest,
            m.to_owned(),
            "see spec/CA-API.md 3.4",
        )
    };
    let mut after = None;
    let mut wait = None;
    for pair in req.uri().query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // Decimal digits only: `u64::from_str` also takes a leading `+`, which a form decoder
        // reads as a space.
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("after and wait are integers"));
        }
        let n: u64 = v.parse().map_err(|_| bad("after and wait are integers"))?;
        match k {
            "after" if after.is_some() => return Err(bad("after is named more than once")),
            "after" => after = Some(n),
            "wait" if wait.is_some() => return Err(bad("wait is named more than once")),
            "wait" if n <= agentid_api::MAX_WAIT_SECS => wait = Some(n),
            "wait" => return Err(bad("wait is at most 30 seconds")),
            _ => return Err(bad("unknown query parameter")),
        }
    }
    let wait = wait.unwrap_or(0);
    if after.is_none() {
        // A list-based field: several field lines mean one line joining their values with
        // commas (RFC 9110 5.3), so every line counts.
        let mut lines = req.headers().get_all(header::IF_NONE_MATCH).iter();
        if let Some(first) = lines.next() {
            let bad_tag = || bad("If-None-Match is a list of quoted seqs, or *");
            let mut joined = first.to_str().map_err(|_| bad_tag())?.to_owned();
            for v in lines {
                joined.push_str(", ");
                joined.push_str(v.to_str().map_err(|_| bad_tag())?);
            }
            after = Some(if_none_match_seq(&joined).ok_or_else(bad_tag)?);
        }
    }
    Ok((after, wait))
}

/// The `after` an `If-None-Match` asks for (RFC 9110 13.1.2, the entity tags being list
/// `seq`s): the highest of its tags, weak (`W/"12"`) or strong, as a cache may send several;
/// `*` (any list) is the highest `seq` there can be, so only "not modified" answers it. `None`
/// when a tag is not a quoted decimal `seq`.
fn if_none_match_seq(v: &str) -> Option<u64> {
    let v = v.trim();
    if v == "*" {
        return Some(u64::MAX);
    }
    let mut highest = None;
    for tag in v.split(',') {
        let tag = tag.trim();
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        let seq = tag.strip_prefix('"')?.strip_suffix('"')?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq: u64 = seq.parse().ok()?;
        highest = Some(highest.map_or(seq, |h: u64| h.max(seq)));
    }
    highest
}

async fn revocations(State(s): State<Arc<Shared>>, a: Authorizer, req: Request) -> Response {
    let (after, wait) = match poll_params(&req) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let mut rx = s.publisher.subscribe();
    let current = rx.borrow_and_update().clone();
    let Some(current) = current else {
        return Refused::new(ErrorCode::NotFound, "no list published yet", "retry later")
            .into_response();
    };
    let Some(after) = after else {
        return list_response(&s, &current).await;
    };
    if current.seq > after {
        return list_response(&s, &current).await;
    }
    // A list a client can hold has a `seq` of at most 2^53 - 1 (PROTOCOL.md 3.3); `*` and
    // larger values are no list held.
    if after > current.seq && after < 1 << 53 {
        ahead(&s, after, current.seq);
    }
    if wait == 0 {
        return not_modified(current.seq);
    }
    let Some(_mine) = s.caller_waiters.try_acquire(a.peer_id()) else {
        return Refused::new(
            ErrorCode::RateLimited,
            "this caller (or its agent) already holds its share of waiting requests",
            "retry after Retry-After",
        )
        .into_response();
    };
    let Ok(_w) = s.waiters.clone().try_acquire_owned() else {
        return Refused::new(
            ErrorCode::RateLimited,
            "too many requests are waiting for a new list",
            "retry after Retry-After",
        )
        .into_response();
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {
                let p = rx.borrow_and_update().clone();
                if let Some(p) = p {
                    if p.seq > after {
                        return list_response(&s, &p).await;
                    }
                }
            }
            // The sender lives as long as the service; a closed channel or the deadline ends
            // the wait with what is current. `304` says none was published: only when the
            // publisher read the store lately (a replica cut off from the database while the
            // others publish cannot know; its subscribers should go elsewhere).
            Ok(Err(_)) | Err(_) => {
                if !s.publisher.read_within(crate::publication::FRESH) {
                    return Refused::from(CaError::Store(
                        "the revocation lists could not be read from the store lately".into(),
                    ))
                    .into_response();
                }
                let seq = rx.borrow().as_ref().map(|p| p.seq).unwrap_or(current.seq);
                return not_modified(seq);
            }
        }
    }
}

async fn enroll(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let body: agentid_api::EnrollRequest = match read_json(&s, req).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    // A CSR that is not base64url is a CSR that does not parse: a stored token's redemption
    // refuses it (`400 bad_csr`, or the token's own refusal first) and records the refusal
    // (CA-API.md 4), as for any other CSR; an unknown token's is `400 bad_csr`, unrecorded.
    let (csr, not_base64) = match b64_csr(&body.csr) {
        Ok(c) => (c, None),
        Err(r) => (Vec::new(), Some(r)),
    };
    let Ok(permit) = s.ops.clone().try_acquire_owned() else {
        return Refused::new(
            ErrorCode::Unavailable,
            "the CA is at its concurrency bound",
            "retry after Retry-After",
        )
        .into_response();
    };
    let ca = s.ca.clone();
    let token = body.token;
    // The slot is held by the operation itself (see `run`).
    let res = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        ca.redeem_recorded(&token, csr, SystemTime::now())
    })
    .await;
    use crate::token::{EnrollError, Redeemed};
    let (e, recorded) = match res {
        Ok(Ok(Redeemed::Task(c))) => {
            return json(
                StatusCode::OK,
                &certificate(&c.certificate, Some(c.grant.as_str().to_owned())),
            )
        }
        Ok(Ok(Redeemed::Service(c))) => return json(StatusCode::OK, &certificate(&c, None)),
        Ok(Err(e)) => e,
        Err(_) => {
            return Refused::new(
                ErrorCode::Internal,
                "the CA operation did not complete",
                "retry later",
            )
            .into_response()
        }
    };
    // A refusal of a token the store knows is in the audit chain already (CA-API.md 4.1): on
    // `--listen`, where the caller is authenticated, it is not recorded again.
    let refused = match (e, not_base64) {
        (EnrollError::TokenInvalid, Some(r)) if !recorded => r,
        (EnrollError::TokenInvalid, _) => Refused::new(
            ErrorCode::TokenInvalid,
            "the bootstrap token is not recognised",
            "check the token file, or ask for a new token",
        ),
        (EnrollError::TokenUsed, _) => Refused::new(
            ErrorCode::TokenUsed,
            "the bootstrap token was already redeemed; nothing was issued",
            "ask for a new token",
        ),
        (EnrollError::TokenExpired, _) => Refused::new(
            ErrorCode::TokenExpired,
            "the bootstrap token has expired",
            "ask for a new token",
        ),
        (EnrollError::Ca(e), _) => Refused::from(e),
    };
    if recorded {
        audited(refused)
    } else {
        refused.into_response()
    }
}

async fn children(
    State(s): State<Arc<Shared>>,
    a: Authorizer,
    check: CallerCheck,
    req: Request,
) -> Response {
    let body: agentid_api::ChildRequest = match read_json(&s, req).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_caller_valid(&a) {
        return r.into_response();
    }
    let PeerId::Task(parent) = a.peer_id().clone() else {
        return Refused::new(
            ErrorCode::NotPermitted,
            "only a task certificate may ask for children",
            "services open tasks with POST /v1/tasks",
        )
        .into_response();
    };
    let Ok(csr) =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &body.csr)
    else {
        return Refused::new(
            ErrorCode::BadCsr,
            "the CSR is not base64url",
            "unpadded base64url DER",
        )
        .into_response();
    };
    let parent_chain = match body
        .parent_chain
        .as_deref()
        .map(agentid_protocol::Chain::parse_unverified)
    {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            return Refused::new(ErrorCode::BadRequest, format!("parent_chain: {e}"), "")
                .into_response()
        }
    };
    // The parent's own key must still be the one bound to it and not revoked: the caller's
    // re-check (the connection's key is the store's binding for the parent) runs first in the
    // hop.
    let req = crate::ChildRequest {
        parent,
        parent_chain,
        agent: body.agent,
        key: KeySource::Csr(csr),
        ttl: body.ttl_secs.map(Duration::from_secs),
    };
    let res =
        run_checked_audited(&s, check, move |ca| ca.issue_child(&req, SystemTime::now())).await;
    match res {
        Ok(c) => json(StatusCode::OK, &certificate(&c, None)),
        Err(r) => r,
    }
}

/// The caller's key must be the key the store binds to its identity (task or service), and
/// neither the key nor, for a task identity, its agent, task or grant, nor the key or agent of
/// any of a child's ancestors up to the task's root holder, may be revoked.
fn check_caller(ca: &CertificateAuthority, caller: &PeerId, spki: &[u8]) -> Result<(), CaError> {
    let key = crate::csr::RequestedKey::from_spki_der(spki)?;
    let jkt = key.thumbprint();
    let store = ca.store()?;
    let bound = store
        .identity(caller.as_str())?
        .ok_or_else(|| CaError::UnknownIdentity(caller.as_str().to_owned()))?;
    if bound.jkt != jkt {
        return Err(CaError::KeyMismatch {
            identity: caller.as_str().to_owned(),
            bound: bound.jkt,
            requested: jkt,
        });
    }
    let now = unix_now();
    let (agent, task) = match caller {
        PeerId::Task(t) => (
            Some(t.agent().name().to_owned()),
            Some(t.task_id().as_str().to_owned()),
        ),
        PeerId::Service(_) => (None, None),
    };
    let task_rec = match &task {
        Some(t) => store.task(t)?,
        None => None,
    };
    // A child is refused while anything of an ancestor is revoked (its key, its agent), as its
    // renewal and a new child of its parent are.
    let ancestors = match &task_rec {
        Some(t) => crate::issue::ancestors_of(&**store, caller.as_str(), &jkt, t, || {
            CaError::ParentNotActive(caller.as_str().to_owned())
        })?,
        None => Vec::new(),
    };
    // Looked up by kind and value (not by reading every revocation). The CA does not see
    // links (a revoked link ends the chain at verifiers); principals are expanded into `task`
    // entries when revoked.
    let mut targets = vec![(crate::RevocationKind::Jkt, jkt.as_str())];
    targets.extend(task.as_deref().map(|t| (crate::RevocationKind::Task, t)));
    targets.extend(agent.as_deref().map(|a| (crate::RevocationKind::Agent, a)));
    targets.extend(
        task_rec
            .as_ref()
            .map(|t| (crate::RevocationKind::Jti, t.grant_jti.as_str())),
    );
    for a in &ancestors {
        targets.push((crate::RevocationKind::Jkt, a.jkt.as_str()));
        targets.extend(
            a.agent
                .as_deref()
                .map(|n| (crate::RevocationKind::Agent, n)),
        );
    }
    match store.revoked_among(&targets, now)? {
        Some((kind, value)) => Err(CaError::Revoked {
            kind: kind.as_str(),
            value,
        }),
        None => Ok(()),
    }
}

/// The routes whose handler runs the caller's re-check inside its one blocking hop
/// ([`run_checked`]), together with the operation, instead of in a hop of its own before the
/// route. Each of them changes nothing outside that hop, so a request they answer without
/// reaching it (a body that does not parse, say) has changed nothing, and the middleware runs
/// the check then and answers with its refusal instead.
const CHECKED_IN_HOP: [&str; 4] = [
    agentid_api::routes::TASKS,
    agentid_api::routes::CHILDREN,
    agentid_api::routes::RENEW,
    agentid_api::routes::TOKENS,
];

/// One request's re-check of its caller against the store (see [`recheck_caller`]).
#[derive(Clone)]
struct CallerCheck(Arc<CallerCheckInner>);

struct CallerCheckInner {
    caller: PeerId,
    spki: Vec<u8>,
    ran: std::sync::atomic::AtomicBool,
}

impl CallerCheck {
    /// Runs the check (on the blocking pool, with the store) and records that it ran.
    fn run(&self, ca: &CertificateAuthority) -> Result<(), CaError> {
        let res = check_caller(ca, &self.0.caller, &self.0.spki);
        self.0.ran.store(true, std::sync::atomic::Ordering::Release);
        res
    }

    fn ran(&self) -> bool {
        self.0.ran.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Runs around every route of the mTLS listener: the caller's certificate is within its
/// validity now, and the store still binds its key to its identity with nothing revoked, before
/// the request changes anything or is answered. The store check runs in its own blocking hop
/// before the route, except on [`CHECKED_IN_HOP`] routes (`POST`), whose handler runs it first
/// in the hop of its operation; if such a handler answered without running it, it runs here
/// after the handler, and a refusal replaces the answer. Either way it runs once per request.
async fn recheck_caller(
    State(s): State<Arc<Shared>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let caller = req
        .extensions()
        .get::<Authorizer>()
        .map(|a| a.peer_id().clone());
    let method = method_label(req.method());
    let route = crate::metrics::route_label(req.uri().path());
    let answer = match caller.clone() {
        Some(id) => CALLER.scope(id, recheck_and_answer(&s, req, next)).await,
        None => recheck_and_answer(&s, req, next).await,
    };
    if let (Some(caller), Some(code)) = (caller, refusal_to_audit(&answer)) {
        let caller = caller.as_str().to_owned();
        audit_refusal(&s, caller, method, route, code).await;
    }
    answer
}

/// The method an audit record names (CA-API.md 4.1): a method of RFC 9110 (and `PATCH`) by its
/// name, any other `other`, so that a record never holds a caller-chosen string.
fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    [
        M::GET,
        M::HEAD,
        M::POST,
        M::PUT,
        M::DELETE,
        M::CONNECT,
        M::OPTIONS,
        M::TRACE,
        M::PATCH,
    ]
    .iter()
    .find(|known| *known == m)
    .map_or("other", M::as_str)
}

/// A refusal its operation already wrote to the audit chain (`open_task`, `issue_child`,
/// `renew` and `revoke` record their own refusals): [`audit_refusal`] does not record it again.
#[derive(Clone, Copy, Debug)]
struct AuditedRefusal;

/// CA-API.md 4: every refusal (4xx) of an authenticated caller is an audit record, kind
/// `request.refused`, with the caller, the method and route (one of the API's routes or
/// `other`: never a caller-chosen string) and the refusal's code (never its message, which may
/// echo the request). Refusals the operation recorded itself ([`AuditedRefusal`]) are not
/// recorded twice; 5xx answers (the CA's own failures and bounds) are not refusals of the caller.
async fn audit_refusal(
    s: &Shared,
    caller: String,
    method: &'static str,
    route: &'static str,
    code: ErrorCode,
) {
    let ev = crate::audit::AuditEvent {
        ts: unix_now(),
        kind: "request.refused".into(),
        actor: caller,
        subject: Some(format!("{method} {route}")),
        outcome: "denied".into(),
        reason: Some(code.as_str().to_owned()),
        ..crate::audit::AuditEvent::default()
    };
    // Within the operations' concurrency bound (waiting for a slot rather than dropping the
    // record), so that refused callers cannot pile up blocking writes; and at most a quarter of
    // the slots at once, waiting apart: a caller flooding refused requests (even one revoked,
    // refused by its re-check) would otherwise queue writes ahead of every caller's operations,
    // which only try for a slot, and hold them all.
    let Ok(_record) = s.refusal_records.clone().acquire_owned().await else {
        return;
    };
    let Ok(permit) = s.ops.clone().acquire_owned().await else {
        return;
    };
    let ca = s.ca.clone();
    // `record_refusal` logs a failure itself; the refusal stands either way. The slot is held
    // by the write itself (see `run`).
    let _ = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        ca.record_refusal(ev)
    })
    .await;
}

/// The code of a refusal [`audit_refusal`] records: a 4xx answer with a refusal code, not
/// already recorded by its operation.
fn refusal_to_audit(answer: &Response) -> Option<ErrorCode> {
    if !answer.status().is_client_error() || answer.extensions().get::<AuditedRefusal>().is_some() {
        return None;
    }
    answer
        .extensions()
        .get::<crate::metrics::RefusalCode>()
        .map(|c| c.0)
}

/// The caller's re-check and the route (see [`recheck_caller`]).
async fn recheck_and_answer(
    s: &Arc<Shared>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    let s = s.clone();
    let Some(a) = req.extensions().get::<Authorizer>().cloned() else {
        return Refused::new(
            ErrorCode::Unauthenticated,
            "this route needs a client certificate",
            "use the mutual-TLS listener",
        )
        .into_response();
    };
    if let Err(r) = check_caller_valid(&a) {
        return r.into_response();
    }
    let check = CallerCheck(Arc::new(CallerCheckInner {
        caller: a.peer_id().clone(),
        spki: a.peer().public_key.to_spki_der(),
        ran: std::sync::atomic::AtomicBool::new(false),
    }));
    let in_hop = req.method() == http::Method::POST && CHECKED_IN_HOP.contains(&req.uri().path());
    if !in_hop {
        if let Err(r) = run(&s, move |ca| check.run(ca)).await {
            return r.into_response();
        }
        return next.run(req).await;
    }
    req.extensions_mut().insert(check.clone());
    let answer = next.run(req).await;
    if check.ran() {
        return answer;
    }
    match run(&s, move |ca| check.run(ca)).await {
        Ok(()) => answer,
        Err(r) => r.into_response(),
    }
}

/// The request's [`CallerCheck`], which [`recheck_caller`] puts on [`CHECKED_IN_HOP`] routes;
/// their handlers take it as an argument and pass it to [`run_checked`].
impl<St: Send + Sync> axum::extract::FromRequestParts<St> for CallerCheck {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &St,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CallerCheck>()
            .cloned()
            .ok_or_else(|| {
                // A route served without the middleware: refuse rather than skip the check.
                Refused::new(
                    ErrorCode::Internal,
                    "the caller could not be re-checked",
                    "serve CaService::router(), which re-checks every caller",
                )
            })
    }
}

/// [`run`] with the caller's re-check first, in the same blocking hop: the operation runs only
/// for a caller the store still binds and has not revoked.
async fn run_checked<T: Send + 'static>(
    s: &Shared,
    check: CallerCheck,
    f: impl FnOnce(&CertificateAuthority) -> Result<T, CaError> + Send + 'static,
) -> Result<T, Refused> {
    run(s, move |ca| {
        check.run(ca)?;
        f(ca)
    })
    .await
}

/// [`run_checked`] for an operation that records its own refusals in the audit chain: its
/// refusal is answered marked [`AuditedRefusal`]; a refusal of the caller's re-check is not.
async fn run_checked_audited<T: Send + 'static>(
    s: &Shared,
    check: CallerCheck,
    f: impl FnOnce(&CertificateAuthority) -> Result<T, CaError> + Send + 'static,
) -> Result<T, Response> {
    match run(s, move |ca| {
        check.run(ca)?;
        Ok(f(ca))
    })
    .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(audited(Refused::from(e))),
        Err(r) => Err(r.into_response()),
    }
}

/// The answer to a refusal its operation already recorded in the audit chain.
fn audited(r: Refused) -> Response {
    let mut resp = r.into_response();
    resp.extensions_mut().insert(AuditedRefusal);
    resp
}

/// The calling service's name, or `403 not_permitted` for any other caller.
fn caller_service(a: &Authorizer, route: &str) -> Result<String, Refused> {
    match a.peer_id() {
        PeerId::Service(svc) if svc.name() != SERVICE_NAME => Ok(svc.name().to_owned()),
        _ => Err(Refused::new(
            ErrorCode::NotPermitted,
            format!("only a service (svc:NAME) may use {route}"),
            "give the service the permission in policy.toml [agents.NAME.permissions]",
        )),
    }
}

fn b64_csr(csr: &str) -> Result<Vec<u8>, Refused> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, csr).map_err(|_| {
        Refused::new(
            ErrorCode::BadCsr,
            "the CSR is not base64url",
            "unpadded base64url DER",
        )
    })
}

fn bad_field(field: &str, e: impl std::fmt::Display) -> Refused {
    Refused::new(
        ErrorCode::BadRequest,
        format!("{field}: {e}"),
        "see spec/CA-API.md",
    )
}

/// What a token or task request binds, checked for syntax (policy decides the rest).
fn binding_of(t: &TokenRequest, creator: &str) -> Result<TokenBinding, Refused> {
    Ok(TokenBinding {
        scope: scope_of(&t.scope)?,
        audience: t.audience.clone(),
        max_depth: t.max_depth,
        ttl_secs: t.ttl_secs,
        task_ttl_secs: t.task_ttl_secs,
        may_delegate_to: t.may_delegate_to.clone(),
        limits: t.limits.clone(),
        principal: t.principal.clone(),
        creator: Some(creator.to_owned()),
        service: None,
        creator_jkt: None,
    })
}

/// A request's `scope` entries (CA-API.md 3.6, also 3.7), one scope token each, as the
/// space-separated scope.
fn scope_of(entries: &[String]) -> Result<String, Refused> {
    if entries
        .iter()
        .any(|s| s.is_empty() || s.chars().any(char::is_whitespace))
    {
        return Err(bad_field("scope", "one scope token per entry"));
    }
    Ok(entries.join(" "))
}

fn task_id(t: Option<&str>) -> Result<Option<TaskId>, Refused> {
    t.map(TaskId::parse)
        .transpose()
        .map_err(|e| bad_field("task", e))
}

/// The hex SHA-256 of the root certificate a token file pins.
pub fn root_sha256(ca: &CertificateAuthority) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ca.root_der());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// The wire bound of `expires_in_secs` is the policy's: a rule's `max_token_ttl` lowers it.
const _: () = assert!(agentid_api::MAX_TOKEN_EXPIRY_SECS == crate::policy::MAX_TOKEN_TTL);

async fn tokens(
    State(s): State<Arc<Shared>>,
    a: Authorizer,
    check: CallerCheck,
    req: Request,
) -> Response {
    let body: TokenRequest = match read_json(&s, req).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let svc = match caller_service(&a, "POST /v1/tokens") {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let creator = format!("svc:{svc}");
    let (mut binding, task) = match (binding_of(&body, &creator), task_id(body.task.as_deref())) {
        (Ok(b), Ok(t)) => (b, t),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    // The token dies with the key that made it (CA-API.md 3.6).
    match crate::csr::RequestedKey::from_spki_der(&a.peer().public_key.to_spki_der()) {
        Ok(k) => binding.creator_jkt = Some(k.thumbprint()),
        Err(e) => return Refused::from(e).into_response(),
    }
    let expires_in = body
        .expires_in_secs
        .unwrap_or(agentid_api::DEFAULT_TOKEN_EXPIRY_SECS);
    if expires_in == 0 || expires_in > agentid_api::MAX_TOKEN_EXPIRY_SECS {
        return bad_field("expires_in_secs", "between 1 and 604800").into_response();
    }
    let agent = body.agent.clone();
    let res = run_checked(&s, check, move |ca| {
        let t = ca.create_bound_token(
            &agent,
            task,
            &binding,
            Duration::from_secs(expires_in),
            SystemTime::now(),
        )?;
        Ok((t, root_sha256(ca)))
    })
    .await;
    match res {
        Ok((t, root)) => json(
            StatusCode::OK,
            &TokenResponse {
                token: t.token.clone(),
                agent: t.identity.agent().name().to_owned(),
                task: t.identity.task_id().as_str().to_owned(),
                expires: t.expires,
                root_sha256: root,
            },
        ),
        Err(r) => r.into_response(),
    }
}

async fn open_task(
    State(s): State<Arc<Shared>>,
    a: Authorizer,
    check: CallerCheck,
    req: Request,
) -> Response {
    let body: agentid_api::OpenTaskRequest = match read_json(&s, req).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let svc = match caller_service(&a, "POST /v1/tasks") {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if body.task.expires_in_secs.is_some() {
        return bad_field("expires_in_secs", "tokens only").into_response();
    }
    let t = &body.task;
    let parsed = (|| {
        let csr = b64_csr(&body.csr)?;
        let scope = agentid_protocol::Scope::parse(&scope_of(&t.scope)?)
            .map_err(|e| bad_field("scope", e))?;
        let ids = |v: &Option<Vec<String>>, f: &str| {
            v.as_deref()
                .map(|ids| {
                    ids.iter()
                        .map(|i| SpiffeId::parse(i))
                        .collect::<Result<Vec<_>, _>>()
                        .and_then(agentid_protocol::IdSet::new)
                        .map_err(|e| bad_field(f, e))
                })
                .transpose()
        };
        let mut r = crate::OpenTaskRequest::new(
            t.agent.clone(),
            KeySource::Csr(csr),
            TaskRequester::Service(svc.clone()),
            scope,
        );
        r.task = task_id(t.task.as_deref())?;
        r.ttl = t.ttl_secs.map(Duration::from_secs);
        r.task_ttl = t.task_ttl_secs.map(Duration::from_secs);
        r.audience = ids(&t.audience, "audience")?;
        r.may_delegate_to = ids(&t.may_delegate_to, "may_delegate_to")?;
        r.max_depth = t.max_depth;
        r.principal = t.principal.clone();
        // The calling service's key: refused in the issuance's transaction once revoked.
        r.requester_jkt = Some(
            crate::csr::RequestedKey::from_spki_der(&a.peer().public_key.to_spki_der())
                .map_err(Refused::from)?
                .thumbprint(),
        );
        r.limits = t
            .limits
            .clone()
            .map(agentid_protocol::Limits::new)
            .transpose()
            .map_err(|e| bad_field("limits", e))?;
        Ok::<_, Refused>(r)
    })();
    let r = match parsed {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // Permission first: a service without `open_task` learns nothing about the agent's rule.
    // The policy is in memory (fixed for the service's life): no store, no blocking hop.
    if let Err(e) =
        s.ca.policy()
            .check_permission(&r.agent, &svc, Permission::OpenTask)
    {
        return Refused::from(e).into_response();
    }
    match run_checked_audited(&s, check, move |ca| ca.open_task(&r, SystemTime::now())).await {
        Ok(c) => json(
            StatusCode::OK,
            &certificate(&c.certificate, Some(c.grant.as_str().to_owned())),
        ),
        Err(r) => r,
    }
}

async fn list_tasks(State(s): State<Arc<Shared>>, a: Authorizer, req: Request) -> Response {
    let svc = match caller_service(&a, "GET /v1/tasks") {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let after = match tasks_after(&req) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let page = s.tasks_page;
    let res = run(&s, move |ca| {
        let agents: Vec<String> = ca
            .policy()
            .agents_permitting(&svc, Permission::List)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if agents.is_empty() {
            return Err(CaError::Policy {
                rule: "agents.*.permissions".into(),
                message: format!("service {svc:?} holds \"list\" for no agent"),
            });
        }
        live_tasks(ca, &agents, after.as_deref(), page, unix_now())
    })
    .await;
    match res {
        Ok(r) => json(StatusCode::OK, &r),
        Err(r) => r.into_response(),
    }
}

/// The `after` of `GET /v1/tasks` (CA-API.md 3.11): a task id, named at most once; any other
/// query parameter is `400 bad_request`.
fn tasks_after(req: &Request) -> Result<Option<String>, Refused> {
    let bad = |m: &str| {
        Refused::new(
            ErrorCode::BadRequest,
            m.to_owned(),
            "see spec/CA-API.md 3.11",
        )
    };
    let mut after = None;
    for pair in req.uri().query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "after" {
            return Err(bad("unknown query parameter"));
        }
        if after.is_some() {
            return Err(bad("after is named more than once"));
        }
        // A task id is a path segment of letters, digits, `.`, `-` and `_`: no escapes.
        let id = agentid_protocol::TaskId::parse(v)
            .map_err(|_| bad("after is the task id an earlier answer named as next"))?;
        after = Some(id.as_str().to_owned());
    }
    Ok(after)
}

/// One page of the live tasks of `agents` (grant not expired; task, agent, holder key and
/// grant not revoked) after the task id `after`: at most `page` tasks and fewer than
/// [`agentid_api::MAX_TASKS_PAGE_BYTES`] of body, with `next` (the last task listed) when more
/// may follow. The store reads one page, never the whole inventory.
fn live_tasks(
    ca: &CertificateAuthority,
    agents: &[String],
    after: Option<&str>,
    page: usize,
    now: u64,
) -> Result<TasksResponse, CaError> {
    let page = page.clamp(1, agentid_api::MAX_TASKS_PER_PAGE);
    // One more than the page: whether another page follows.
    let rows = ca.store()?.live_tasks_page(agents, after, page + 1, now)?;
    Ok(page_of(rows, page))
}

/// The answer listing `rows` (a page and, when more follow, one more row): at most `page` tasks
/// and fewer than [`agentid_api::MAX_TASKS_PAGE_BYTES`] of body, `next` naming the last task
/// listed when rows were left out.
fn page_of(rows: Vec<crate::store::LiveTask>, page: usize) -> TasksResponse {
    let more = rows.len() > page;
    let mut tasks = Vec::new();
    // `{"tasks":[],"next":"<id>"}` and, per entry, its fields' JSON (ids and holders are
    // identifiers that JSON carries unescaped).
    let mut bytes = 32 + agentid_protocol::caps::MAX_ID_BYTES;
    let mut cut = false;
    for live in rows.into_iter().take(page) {
        let t = live.task;
        let entry = 40 + t.task.len() + t.holder.len() + 20;
        if bytes + entry > agentid_api::MAX_TASKS_PAGE_BYTES && !tasks.is_empty() {
            cut = true;
            break;
        }
        bytes += entry;
        tasks.push(TaskEntry {
            task: t.task,
            holder: t.holder,
            exp: t.exp,
        });
    }
    let next = if more || cut {
        tasks.last().map(|t| t.task.clone())
    } else {
        None
    };
    TasksResponse { tasks, next }
}

async fn renew(
    State(s): State<Arc<Shared>>,
    a: Authorizer,
    check: CallerCheck,
    req: Request,
) -> Response {
    let body: ApiRenew = match read_json(&s, req).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_caller_valid(&a) {
        return r.into_response();
    }
    let caller = a.peer_id().clone();
    if let Some(named) = &body.identity {
        if named != caller.as_str() {
            return Refused::new(
                ErrorCode::NotPermitted,
                "a holder renews only its own certificate",
                "leave identity out, or name the connection's identity",
            )
            .into_response();
        }
    }
    let spki = a.peer().public_key.to_spki_der();
    let ttl = body.ttl_secs.map(Duration::from_secs);
    let res = run_checked_audited(&s, check, move |ca| {
        ca.renew(
            &RenewRequest {
                identity: caller,
                key: KeySource::Spki(spki),
                requester: RenewRequester::Holder,
                ttl,
            },
            SystemTime::now(),
        )
    })
    .await;
    match res {
        Ok(c) => json(StatusCode::OK, &crate::server::certificate(&c, None)),
        Err(r) => r,
    }
}

/// The response body of an issuance.
pub(crate) fn certificate(
    c: &crate::IssuedCertificate,
    grant: Option<String>,
) -> agentid_api::CertificateResponse {
    let b64 =
        |d: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d);
    agentid_api::CertificateResponse {
        identity: c.identity.as_str().to_owned(),
        serial: c.leaf.serial.clone(),
        not_before: c.leaf.not_before,
        not_after: c.leaf.not_after,
        certs: vec![b64(&c.leaf.der), b64(&c.intermediate_der)],
        grant,
    }
}

async fn revoke(State(s): State<Arc<Shared>>, a: Authorizer, req: Request) -> Response {
    let body: ApiRevoke = match read_json(&s, req).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_caller_valid(&a) {
        return r.into_response();
    }
    // A task holder may close its own task; a service with `revoke` for an agent may revoke
    // within that agent (its name, its tasks, its certificates and keys, its grants).
    let targets = [
        body.task.is_some(),
        body.agent.is_some(),
        body.serial.is_some(),
        body.jkt.is_some(),
        body.jti.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if targets != 1 || body.iss.is_some() {
        return Refused::new(
            ErrorCode::BadRequest,
            "name exactly one target",
            "task, agent, serial, jkt or jti (links are revoked locally by their issuer)",
        )
        .into_response();
    }
    let target = match a.peer_id() {
        PeerId::Task(t) => match &body.task {
            Some(named) if named == t.task_id().as_str() => {
                // Only the task's root holder (the agent it was opened for) closes it: a child
                // holds a narrower slice of the task's authority, and closing the task would
                // end its parent's and every other holder's chains (CA-API.md 2, 3.10).
                let task = t.task_id();
                let caller = a.peer_id().as_str().to_owned();
                let holder = run(&s, move |ca| {
                    Ok(ca.store()?.task(task.as_str())?.map(|r| r.holder))
                })
                .await;
                match holder {
                    Ok(Some(h)) if h == caller => RevokeTarget::Task(t.task_id()),
                    Ok(_) => return Refused::new(
                        ErrorCode::NotPermitted,
                        "only the task's root holder (the agent it was opened for) may close it",
                        "ask the task's root holder, or a service with `revoke` for its agent",
                    )
                    .into_response(),
                    Err(r) => return r.into_response(),
                }
            }
            _ => {
                return Refused::new(
                    ErrorCode::NotPermitted,
                    "a holder may revoke only its own task",
                    "",
                )
                .into_response()
            }
        },
        PeerId::Service(_) => {
            // The CA's own identity is no service here (CA-API.md 3.12), as on the other
            // service routes.
            let svc = match caller_service(&a, "POST /v1/revoke") {
                Ok(n) => n,
                Err(r) => return r.into_response(),
            };
            let target = match service_target(&body) {
                Ok(t) => t,
                Err(r) => return r.into_response(),
            };
            let t2 = target.clone();
            let check = run(&s, move |ca| {
                // Before the target is looked up: a service holding `revoke` for no agent would
                // otherwise learn from `404` against `403` which targets the store knows
                // (CA-API.md 3.10, as `list` in 3.11).
                if ca
                    .policy()
                    .agents_permitting(&svc, Permission::Revoke)
                    .is_empty()
                {
                    return Err(CaError::Policy {
                        rule: "agents.*.permissions".into(),
                        message: format!("service {svc:?} holds \"revoke\" for no agent"),
                    });
                }
                if let RevokeTarget::Agent(agent) = &t2 {
                    // Named by the caller: nothing of the store is looked up.
                    return ca
                        .policy()
                        .check_permission(agent, &svc, Permission::Revoke);
                }
                // A target the store does not know, one of an agent for which the service holds
                // no `revoke`, and one of no agent (a service's) are one refusal, naming no
                // agent: otherwise `404` against `403` (and the owner named) told the service
                // which targets exist, and whose they are (CA-API.md 3.10).
                let owner = match target_agent(ca, &t2) {
                    Ok(agent) => Some(agent),
                    Err(CaError::NotFound { .. } | CaError::Policy { .. }) => None,
                    Err(e) => return Err(e),
                };
                let permitted = ca.policy().agents_permitting(&svc, Permission::Revoke);
                match owner {
                    Some(agent) if permitted.contains(&agent.as_str()) => Ok(()),
                    _ => Err(not_revocable_by(&svc, &t2)),
                }
            })
            .await;
            if let Err(r) = check {
                return r.into_response();
            }
            target
        }
    };
    let actor = a.peer_id().as_str().to_owned();
    let reason = body.reason.clone();
    // `revoke` records its own refusals; a failure to read the epoch is the store's (5xx).
    let res = run(&s, move |ca| {
        let rec = ca.revoke(&target, reason.as_deref(), &actor, SystemTime::now())?;
        Ok((rec, ca.revocation_epoch()?))
    })
    .await;
    let (rec, epoch) = match res {
        Ok(r) => r,
        Err(r) => return audited(r),
    };
    // Answered once a list holding the revocation is served (published within ~200 ms).
    s.publisher.revoked();
    if let Err(e) = s
        .publisher
        .published_at_epoch(epoch, Duration::from_secs(10))
        .await
    {
        return Refused::from(e).into_response();
    }
    json(
        StatusCode::OK,
        &RevokeResponse {
            kind: rec.kind.as_str().to_owned(),
            value: rec.value,
            exp: rec.exp,
        },
    )
}

/// The revocation target a service names (one of task, agent, serial, jkt, jti).
fn service_target(b: &ApiRevoke) -> Result<RevokeTarget, Refused> {
    use agentid_protocol::{Jkt, Jti, Serial};
    Ok(if let Some(t) = &b.task {
        RevokeTarget::Task(TaskId::parse(t).map_err(|e| bad_field("task", e))?)
    } else if let Some(a) = &b.agent {
        RevokeTarget::Agent(a.clone())
    } else if let Some(x) = &b.serial {
        RevokeTarget::Serial(Serial::parse(x).map_err(|e| bad_field("serial", e))?)
    } else if let Some(x) = &b.jkt {
        RevokeTarget::Key(Jkt::parse(x).map_err(|e| bad_field("jkt", e))?)
    } else if let Some(x) = &b.jti {
        RevokeTarget::GrantJti(Jti::parse(x).map_err(|e| bad_field("jti", e))?)
    } else {
        return Err(bad_field("target", "name exactly one target"));
    })
}

/// The refusal of a revocation target that service `svc` may not revoke or that the store does
/// not know: the same for both, naming the target as the caller did and no agent.
fn not_revocable_by(svc: &str, t: &RevokeTarget) -> CaError {
    let (kind, value) = match t {
        RevokeTarget::Serial(x) => ("serial", x.to_string()),
        RevokeTarget::Task(x) => ("task", x.as_str().to_owned()),
        RevokeTarget::Key(x) => ("jkt", x.to_string()),
        RevokeTarget::GrantJti(x) => ("jti", x.to_string()),
        RevokeTarget::Agent(x) => ("agent", x.clone()),
        RevokeTarget::LinkJti { jti, .. } => ("jti", jti.to_string()),
        RevokeTarget::Principal(_) => ("principal", String::new()),
    };
    CaError::Policy {
        rule: "agents.*.permissions".into(),
        message: format!(
            "service {svc:?} may not revoke {kind} {value}: the CA knows no such {kind} of an \
             agent for which the service holds \"revoke\""
        ),
    }
}

/// The agent a revocation target belongs to, from the store (`404 not_found` if unknown).
fn target_agent(ca: &CertificateAuthority, t: &RevokeTarget) -> Result<String, CaError> {
    let store = ca.store()?;
    let not_found = |kind: &'static str, value: &str| CaError::NotFound {
        kind,
        value: value.to_owned(),
    };
    // What the store knows but no agent owns (a service's certificate or key): no agent rule
    // gives `revoke` over it, so it is a missing permission (CA-API.md 3.10), not an unknown
    // target.
    let of_no_agent = |kind: &str, value: &str| CaError::Policy {
        rule: "agents.*.permissions".into(),
        message: format!(
            "{kind} {value} belongs to a service, not an agent: only the CA's operator revokes it"
        ),
    };
    let agent_of_identity = |kind: &str, value: &str, id: &str| -> Result<String, CaError> {
        store
            .identity(id)?
            .ok_or_else(|| not_found("identity", id))?
            .agent
            .ok_or_else(|| of_no_agent(kind, value))
    };
    match t {
        RevokeTarget::Agent(a) => Ok(a.clone()),
        RevokeTarget::Task(task) => match store.task(task.as_str())? {
            Some(rec) => agent_of_identity("task", task.as_str(), &rec.holder),
            // A task a token names, not redeemed yet: the token's agent.
            None => store
                .unredeemed_token_agent(task.as_str())?
                .ok_or_else(|| not_found("task", task.as_str())),
        },
        RevokeTarget::Serial(serial) => store
            .issuance(serial.as_str())?
            .ok_or_else(|| not_found("serial", serial.as_str()))?
            .agent
            .ok_or_else(|| of_no_agent("serial", serial.as_str())),
        RevokeTarget::Key(jkt) => {
            let owner = store
                .key_owner(jkt.as_str())?
                .ok_or_else(|| not_found("jkt", jkt.as_str()))?;
            agent_of_identity("jkt", jkt.as_str(), &owner)
        }
        RevokeTarget::GrantJti(jti) => {
            let rec = store
                .task_by_jti(jti.as_str())?
                .ok_or_else(|| not_found("jti", jti.as_str()))?;
            agent_of_identity("jti", jti.as_str(), &rec.holder)
        }
        RevokeTarget::LinkJti { .. } => Err(CaError::InvalidRequest(
            "links are revoked by their issuer".into(),
        )),
        // Not reachable from the API (`service_target` never names one): revoking a principal
        // expands to tasks of many agents and stays an operator action at the CA.
        RevokeTarget::Principal(_) => Err(CaError::InvalidRequest(
            "principals are revoked by the operator at the CA".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(i: usize, holder_len: usize) -> crate::store::LiveTask {
        let task = format!("t{i:06}");
        crate::store::LiveTask {
            task: crate::store::TaskRecord {
                holder: format!(
                    "spiffe://example.org/agent/a/task/{task}{}",
                    "x".repeat(holder_len)
                ),
                task,
                grant_jti: format!("j{i}"),
                exp: u64::MAX,
                created: 0,
                principal: None,
                max_depth: None,
            },
            agent: "a".into(),
            jkt: format!("k{i}"),
        }
    }

    /// CA-API.md 3.11: a page stops at its count, and before its body reaches
    /// `MAX_TASKS_PAGE_BYTES` (so that a client reading at most 1 MiB reads every page, however
    /// long the holders' identities), naming the last task it lists as `next`; the last page
    /// names none.
    #[test]
    fn a_tasks_page_is_bounded_in_count_and_bytes_and_names_where_to_go_on() {
        let rows = |n: usize, holder_len: usize| (0..n).map(|i| live(i, holder_len)).collect();
        // More rows than the page: `next` is the last listed.
        let r = page_of(rows(4, 0), 3);
        assert_eq!(r.tasks.len(), 3);
        assert_eq!(r.next.as_deref(), Some("t000002"));
        // Exactly the page: the last page.
        let r = page_of(rows(3, 0), 3);
        assert_eq!((r.tasks.len(), r.next), (3, None));
        // Identities near the 2048-byte cap: the page is cut by bytes, well before its count.
        let page = agentid_api::MAX_TASKS_PER_PAGE;
        let r = page_of(rows(page, 1900), page);
        assert!(r.tasks.len() < page, "{}", r.tasks.len());
        assert!(!r.tasks.is_empty());
        assert_eq!(r.next.as_deref(), r.tasks.last().map(|t| t.task.as_str()));
        let body = serde_json::to_vec(&r).unwrap_or_default();
        assert!(
            body.len() < agentid_api::MAX_TASKS_PAGE_BYTES,
            "{}",
            body.len()
        );
        // Short identities: the whole count fits.
        let r = page_of(rows(page + 1, 0), page);
        assert_eq!(r.tasks.len(), page);
        assert!(
            serde_json::to_vec(&r).unwrap_or_default().len() < agentid_api::MAX_TASKS_PAGE_BYTES
        );
    }

    /// The three listeners' default caps together (connections and handshakes of the mTLS and
    /// enrollment listeners, the metrics listener's connections) and the 64 descriptors kept
    /// for the rest of the process stay below the file limit: with `ulimit -n 1024` the mTLS
    /// caps alone (240 + 720) used to take the whole budget, so callers without an identity
    /// holding the enrollment listener's 320 left the authenticated ones short of descriptors.
    #[test]
    fn the_listeners_default_caps_together_stay_below_the_file_limit() {
        for files in [512_u64, 1024, 4096, 20_000, 1 << 20] {
            let o = ServiceOptions::for_file_limit(Some(files));
            let held = o.http.max_connections
                + o.http.max_handshakes
                + o.enroll_limits.max_connections
                + o.enroll_limits.max_handshakes
                + MAX_METRICS_CONNECTIONS
                + 64;
            assert!(u64::try_from(held).unwrap() <= files, "{files}: {held}");
            assert!(o.http.max_connections >= 1 && o.http.max_handshakes >= 1);
        }
        // Without a limit, the transport's own ceilings.
        let o = ServiceOptions::for_file_limit(None);
        assert_eq!(
            (o.http.max_handshakes, o.http.max_connections),
            (1024, 4096)
        );
    }

    /// A flood of new sources does not reset the count of a source already over its limit
    /// (the table was cleared when full); the sources past the table share one count.
    #[test]
    fn a_flood_of_sources_resets_no_count_and_shares_one() {
        let limiter = RateLimiter::new(2);
        let noisy = std::net::IpAddr::from([192, 0, 2, 1]);
        assert!(limiter.allow(noisy) && limiter.allow(noisy));
        assert!(!limiter.allow(noisy), "over its limit");
        // The table full: the noisy source and as many others as it holds.
        for i in 0..u32::try_from(MAX_TRACKED_SOURCES - 1).unwrap() {
            limiter.allow(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        }
        assert!(
            !limiter.allow(noisy),
            "still over its limit after the flood"
        );
        let late = |last: u8| std::net::IpAddr::from([198, 51, 100, last]);
        assert!(limiter.allow(late(1)) && limiter.allow(late(2)));
        assert!(!limiter.allow(late(3)), "the late sources share one count");
    }

    /// One attacker holding an IPv6 /48 (65,536 /64s, an ordinary site allocation) fills the
    /// table of sources with its /64s within one window and keeps sending from new ones: that
    /// must not refuse the first request of every other new source for the rest of the window
    /// (which a single count shared by every source past the table does).
    #[test]
    fn a_flood_from_one_ipv6_48_does_not_lock_out_other_new_sources() {
        let limiter = RateLimiter::new(3);
        let attacker = |i: u32| {
            let hi = u16::try_from(i >> 16).unwrap();
            let lo = u16::try_from(i & 0xffff).unwrap();
            std::net::IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, lo, hi, 0, 0, 1))
        };
        // The table full of the attacker's /64s, then 100 more of them (each a new /64).
        for i in 0..u32::try_from(MAX_TRACKED_SOURCES).unwrap() {
            limiter.allow(attacker(i));
        }
        for i in 0..100 {
            limiter.allow(std::net::IpAddr::from(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0xffff, 1, 0, 0, i,
            )));
            limiter.allow(std::net::IpAddr::from(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0xfffe, i, 0, 0, 1,
            )));
        }
        let other_v6: std::net::IpAddr = "2001:db8:ffff::1".parse().unwrap();
        let other_v4: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        assert!(
            limiter.allow(other_v6),
            "a new IPv6 source of another /48 was refused its first request"
        );
        assert!(
            limiter.allow(other_v4),
            "a new IPv4 source was refused its first request"
        );
    }

    /// One IPv6 /48 (65,536 /64s, each its own source) must not take every connection slot of
    /// the enrollment listener: its /64s share a prefix's share of the slots, and a source of
    /// another prefix still gets one.
    #[test]
    fn one_ipv6_48_holds_at_most_a_share_of_the_enrollment_connections() {
        let limits = agentid_transport::ConnectionLimits {
            max_connections: 64,
            max_pending_per_source: 8,
            ..agentid_transport::ConnectionLimits::default()
        };
        let slots = EnrollSlots::new(&limits);
        let mut held = Vec::new();
        for i in 0..64u16 {
            let ip =
                std::net::IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, i, 0, 0, 0, 1));
            for _ in 0..8 {
                held.extend(slots.try_acquire(ip));
            }
        }
        let other: std::net::IpAddr = "2001:db8:ffff::1".parse().unwrap();
        assert!(
            slots.try_acquire(other).is_some(),
            "one /48 holds {} of 64 enrollment connection slots, none left for another prefix",
            held.len()
        );
    }

    /// The addresses of one IPv6 /64 are one source; another /64 is another; an IPv4-mapped
    /// address is its IPv4 address.
    #[test]
    fn an_ipv6_64_is_one_source() {
        let limiter = RateLimiter::new(2);
        let a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.allow(a) && limiter.allow(b));
        assert!(!limiter.allow(a), "one /64, one count");
        assert!(limiter.allow(other));
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(limiter.allow(v4) && limiter.allow(mapped));
        assert!(!limiter.allow(v4), "mapped and plain IPv4 are one source");
    }

    /// A body over the limit is `413 body_too_large`; one that could not be read (the client
    /// cut it off, reset or stalled) is `400 bad_request`, not "too large".
    #[test]
    fn only_an_oversized_body_is_called_too_large() {
        // As `read_json` reads: `to_bytes` with a limit the body is over.
        let too_large = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(
                axum::body::Body::from(vec![0u8; 16]),
                8,
            ))
            .unwrap_err();
        assert_eq!(
            body_refusal(&*too_large.into_inner()).0.code,
            ErrorCode::BodyTooLarge
        );
        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(body_refusal(&cut).0.code, ErrorCode::BadRequest);
    }
}
