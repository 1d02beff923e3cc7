//! MCP (Model Context Protocol) on the HTTP binding (feature `mcp`), with the official Rust SDK
//! [`rmcp`]'s streamable HTTP server (re-exported, so that the versions match).
//!
//! * **Sessions bound to a peer**: an `Mcp-Session-Id` outlives the connection that created it,
//!   and whoever presents it reaches the session's results and streams. [`McpSessions`], a tower
//!   layer around rmcp's `StreamableHttpService`, records the verified peer (SPIFFE ID, which
//!   for an agent names its task) that received each session id from `initialize`, and refuses
//!   (403 `peer_denied`, reported to the server's decision sink as `Resource::McpSession`)
//!   every request that carries a session id bound to another peer, or one it never handed out.
//!   It also records the event ids of the server-sent events each peer receives, and refuses the
//!   same way a request resuming a stream (`Last-Event-ID`) from an event it did not deliver to
//!   that peer: with an event store, rmcp finds a stream by the event id alone, whatever session
//!   the request names (or none).
//! * **A scope per tool**: rmcp hands the request's `http::request::Parts` to handlers; the
//!   agentid [`Authorizer`] travels in them. [`require_scope`] checks a tool's scope against the
//!   caller's delegated chain (deadline and revocation first) and turns a refusal into a
//!   JSON-RPC error whose message is the agentid code ([`FORBIDDEN`]).
//! * **A client** ([`McpClient`]) on an agentid [`HttpClientConnection`]: it presents the
//!   caller's chain, speaks streamable HTTP (JSON or server-sent events), and keeps its session
//!   id. Sessions use MCP protocol [`MCP_PROTOCOL_VERSION`] (the last with sessions).
//!
//! ```ignore
//! let manager = Arc::new(LocalSessionManager::default());
//! let mcp = StreamableHttpService::new(|| Ok(Tools), manager.clone(), config);
//! let sessions = McpSessions::new(manager);
//! server.serve(listener, sessions.layer(mcp)).await?;
//!
//! // in `ServerHandler::call_tool`:
//! require_scope(&context, &Scope::parse("repo:read")?)?;
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agentid_protocol::{PeerId, Scope};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};

pub use rmcp;

use crate::error::{Error, TimeoutKind};
use crate::http::{
    Authorizer, BoxError, HttpClientConnection, Refusal, Resource, ResponseBody, PEER_DENIED,
};

/// The session header of MCP streamable HTTP.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// The protocol version header of MCP streamable HTTP.
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";

/// The header naming the event after which a server-sent event stream resumes.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";

/// The most event ids [`McpSessions`] keeps per peer (the newest): a stream resumes from one of
/// them.
pub const MAX_EVENT_IDS_PER_PEER: usize = 128;

/// The longest event id [`McpSessions`] records (a longer one is never resumable).
const MAX_EVENT_ID_BYTES: usize = 256;

/// The MCP protocol version [`McpClient`] asks for: 2025-06-18, a version with sessions.
pub const MCP_PROTOCOL_VERSION: &str = "2025-06-18";

/// The JSON-RPC error code of a tool call refused by agentid (a server-defined code); the
/// message is the agentid code (`scope_not_granted`, `revoked`, ...).
pub const FORBIDDEN: i32 = -32003;

/// The largest response [`McpClient`] reads.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Checks that the caller of an rmcp request handler holds `scope` in its verified chain:
/// the agentid [`Authorizer`] is read from the `http::request::Parts` rmcp's streamable HTTP
/// service puts in the request context. A refusal (or a request that did not come through an
/// agentid server) is a JSON-RPC error with code [`FORBIDDEN`] and the agentid code as message.
pub fn require_scope(
    context: &rmcp::service::RequestContext<rmcp::RoleServer>,
    scope: &Scope,
) -> Result<(), rmcp::ErrorData> {
    let authorizer = authorizer_of(context)
        .ok_or_else(|| forbidden(&Refusal::internal("not served by an agentid HTTP server")))?;
    authorizer.authorize(scope).map_err(|r| forbidden(&r))
}

/// The agentid [`Authorizer`] of an rmcp request, when it came through an agentid server.
pub fn authorizer_of(
    context: &rmcp::service::RequestContext<rmcp::RoleServer>,
) -> Option<&Authorizer> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Authorizer>())
}

fn forbidden(r: &Refusal) -> rmcp::ErrorData {
    rmcp::ErrorData::new(
        rmcp::model::ErrorCode(FORBIDDEN),
        r.code(),
        Some(json!({ "agentid": r.code() })),
    )
}

/// Sessions, the peers that own them and when each was last used.
#[derive(Default)]
struct Bindings {
    owner: HashMap<String, (PeerId, Instant)>,
    by_peer: HashMap<PeerId, VecDeque<String>>,
    /// Bindings per agent name (a task identity's agent, or the service): every task of one
    /// agent together.
    per_agent: HashMap<String, usize>,
    /// The newest event ids delivered to each peer, and the peers in the order they were first
    /// recorded (the oldest is forgotten first when the table holds too many ids).
    events: HashMap<PeerId, VecDeque<String>>,
    event_peers: VecDeque<PeerId>,
    event_count: usize,
}

impl Bindings {
    fn remove(&mut self, session: &str) {
        if let Some((peer, _)) = self.owner.remove(session) {
            if let Some(q) = self.by_peer.get_mut(&peer) {
                q.retain(|s| s != session);
                if q.is_empty() {
                    self.by_peer.remove(&peer);
                }
            }
            self.uncount(&peer);
        }
    }

    fn uncount(&mut self, peer: &PeerId) {
        crate::admission::decrement(&mut self.per_agent, &peer.agent_or_service());
    }

    /// Whether a new session of `peer` would take one more place of its agent: not when the
    /// peer already holds `max_per_peer` (its oldest then makes room).
    fn agent_full(&self, peer: &PeerId, max_per_peer: usize, max_per_agent: usize) -> bool {
        let held_by_peer = self.by_peer.get(peer).map_or(0, VecDeque::len);
        held_by_peer < max_per_peer
            && self
                .per_agent
                .get(&peer.agent_or_service())
                .copied()
                .unwrap_or(0)
                >= max_per_agent
    }

    /// Records that `id` was delivered to `peer`, keeping the newest
    /// [`MAX_EVENT_IDS_PER_PEER`] of each peer and, besides those of `peer`, at most
    /// `max_total` in all.
    fn record_event(&mut self, peer: &PeerId, id: &str, max_total: usize) {
        let held = match self.events.get_mut(peer) {
            Some(held) => held,
            None => {
                self.event_peers.push_back(peer.clone());
                self.events.entry(peer.clone()).or_default()
            }
        };
        if held.iter().any(|e| e == id) {
            return;
        }
        held.push_back(id.to_owned());
        self.event_count += 1;
        if held.len() > MAX_EVENT_IDS_PER_PEER {
            held.pop_front();
            self.event_count -= 1;
        }
        // Past the total, the peers recorded first are forgotten (never the one recording now,
        // whose own ids the per-peer bound keeps).
        while self.event_count > max_total {
            let Some(oldest) = self
                .event_peers
                .iter()
                .position(|p| p != peer)
                .and_then(|i| self.event_peers.remove(i))
            else {
                break;
            };
            if let Some(gone) = self.events.remove(&oldest) {
                self.event_count -= gone.len();
            }
        }
    }

    /// Whether the event `id` was delivered to `peer` (and is still remembered).
    fn delivered(&self, peer: &PeerId, id: &str) -> bool {
        self.events
            .get(peer)
            .is_some_and(|held| held.iter().any(|e| e == id))
    }

    /// Forgets the sessions idle for `idle` or longer; returns them.
    fn purge(&mut self, now: Instant, idle: Duration) -> Vec<String> {
        let stale: Vec<String> = self
            .owner
            .iter()
            .filter(|(_, (_, used))| now.saturating_duration_since(*used) >= idle)
            .map(|(s, _)| s.clone())
            .collect();
        for s in &stale {
            self.remove(s);
        }
        stale
    }
}

/// A tower layer that binds each MCP session to the peer that initialized it (see the module
/// documentation). Put it directly around rmcp's `StreamableHttpService`, behind an agentid
/// [`HttpServer`](crate::http::HttpServer).
///
/// Bindings live in memory: a binding unused for [`McpSessions::idle_timeout`] (default 6
/// minutes, above the 5-minute keep-alive of rmcp's `LocalSessionManager`: keep it at least
/// that session keep-alive) is forgotten, and its session refused from then on; a peer holds
/// at most [`McpSessions::max_sessions_per_peer`] of them (its oldest is forgotten when it opens
/// one more), the tasks of one agent together at most [`McpSessions::max_sessions_per_agent`]
/// (then that agent's new sessions get 503 `busy`), the server at most
/// [`McpSessions::max_sessions`] (then `initialize` gets 503 `busy`). A `DELETE` by the owner
/// ends the binding.
///
/// A request carrying `Last-Event-ID` resumes a server-sent event stream: it is admitted only
/// when that event was delivered to the same peer through this layer (403 `peer_denied`
/// otherwise), since rmcp with an event store replays the stream an event id names whatever
/// session the request names. The layer remembers the newest [`MAX_EVENT_IDS_PER_PEER`] event
/// ids of each peer (and 16 per session of [`McpSessions::max_sessions`] in all: past that the
/// peers recorded first are forgotten first); a stream resumed from an id no longer remembered is
/// refused.
#[derive(Clone)]
pub struct McpSessions {
    bindings: Arc<Mutex<Bindings>>,
    max_sessions: usize,
    max_per_peer: usize,
    /// `None`: a quarter of `max_sessions`, at least `max_per_peer`.
    max_per_agent: Option<usize>,
    idle: Duration,
    /// Closes a session in the rmcp session manager (the one given to [`McpSessions::new`]).
    closer: Closer,
}

/// Closes one session id in an rmcp session manager (on a task of its own).
type Closer = Arc<dyn Fn(String) + Send + Sync>;

impl std::fmt::Debug for McpSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpSessions")
            .field("max_sessions", &self.max_sessions)
            .field("max_per_peer", &self.max_per_peer)
            .field("max_per_agent", &self.max_per_agent())
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl McpSessions {
    /// Bindings for the sessions of `manager` (the session manager of the rmcp service behind
    /// this layer): at most 10,000 sessions, 16 per peer, 2,500 per agent (its tasks together),
    /// each forgotten after 6 idle minutes.
    /// Every session whose binding this layer forgets (a peer's oldest when it opens one more
    /// than [`McpSessions::max_sessions_per_peer`], an idle one) is closed in `manager` too, so
    /// that the caps bound the sessions a peer holds in rmcp (a task, its handler and channels
    /// each), not only their bindings here.
    pub fn new<M>(manager: Arc<M>) -> Self
    where
        M: rmcp::transport::streamable_http_server::session::SessionManager + 'static,
    {
        Self {
            bindings: Arc::default(),
            max_sessions: 10_000,
            max_per_peer: 16,
            max_per_agent: None,
            idle: Duration::from_secs(360),
            closer: Arc::new(move |id: String| {
                let manager = manager.clone();
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                rt.spawn(async move {
                    let id: rmcp::transport::streamable_http_server::session::SessionId = id.into();
                    // Already gone (rmcp's keep-alive, a DELETE): nothing to do.
                    let _ = manager.close_session(&id).await;
                });
            }),
        }
    }

    /// Closes `forgotten` in the rmcp session manager.
    fn close(&self, forgotten: Vec<String>) {
        for id in forgotten {
            (self.closer)(id);
        }
    }

    /// Sets how long an unused binding is kept (at least the session keep-alive of the rmcp
    /// session manager behind this layer).
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Sets the most sessions the server binds at once.
    #[must_use]
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n.max(1);
        self
    }

    /// Sets the most sessions one peer holds at once.
    #[must_use]
    pub fn max_sessions_per_peer(mut self, n: usize) -> Self {
        self.max_per_peer = n.max(1);
        self
    }

    /// Sets the most sessions the tasks of one agent (a service: the service) hold at once,
    /// so that one agent opening many tasks cannot take the whole table
    /// ([`McpSessions::max_sessions`]) from the others. Default: a quarter of
    /// [`McpSessions::max_sessions`], and at least [`McpSessions::max_sessions_per_peer`].
    #[must_use]
    pub fn max_sessions_per_agent(mut self, n: usize) -> Self {
        self.max_per_agent = Some(n.max(1));
        self
    }

    fn max_per_agent(&self) -> usize {
        self.max_per_agent
            .unwrap_or_else(|| (self.max_sessions / 4).max(self.max_per_peer))
            .max(1)
    }

    /// The peer a session is bound to.
    pub fn owner(&self, session: &str) -> Option<PeerId> {
        let idle = self.idle;
        self.lock()
            .owner
            .get(session)
            .filter(|(_, used)| used.elapsed() < idle)
            .map(|(p, _)| p.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bindings> {
        self.bindings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event id delivered to `peer` (an `id` field of a server-sent event).
    fn record_event(&self, peer: &PeerId, id: &str) {
        if id.is_empty() || id.len() > MAX_EVENT_ID_BYTES {
            return;
        }
        let max_total = self.max_sessions.saturating_mul(16);
        self.lock().record_event(peer, id, max_total);
    }

    /// Before a request resuming a stream: the event it resumes after was delivered to `peer`.
    fn admit_resume(&self, peer: &PeerId, last_event: &HeaderValue) -> Result<(), Refusal> {
        let id = last_event
            .to_str()
            .map_err(|_| Refusal::bad_header("last-event-id is not ASCII"))?;
        if self.lock().delivered(peer, id) {
            Ok(())
        } else {
            tracing::info!(peer.id = %peer, "agentid mcp: resuming a stream not delivered to this peer refused");
            Err(Refusal::forbidden(
                PEER_DENIED,
                "MCP stream resumed from an event not delivered to this peer",
            ))
        }
    }

    /// Before the request: a session id must be bound to this very peer.
    fn admit(&self, peer: &PeerId, session: Option<&HeaderValue>) -> Result<(), Refusal> {
        let now = Instant::now();
        let Some(session) = session else {
            let max_per_agent = self.max_per_agent();
            let mut b = self.lock();
            let forgotten = if b.owner.len() >= self.max_sessions
                || b.agent_full(peer, self.max_per_peer, max_per_agent)
            {
                b.purge(now, self.idle)
            } else {
                Vec::new()
            };
            let full = b.owner.len() >= self.max_sessions;
            let agent_full = b.agent_full(peer, self.max_per_peer, max_per_agent);
            drop(b);
            self.close(forgotten);
            if full {
                return Err(Refusal::busy("MCP session table full"));
            }
            if agent_full {
                return Err(Refusal::busy("the agent holds its most MCP sessions"));
            }
            return Ok(());
        };
        let session = session
            .to_str()
            .map_err(|_| Refusal::bad_header("mcp-session-id is not ASCII"))?;
        let mut b = self.lock();
        if b.owner
            .get(session)
            .is_some_and(|(_, used)| now.saturating_duration_since(*used) >= self.idle)
        {
            b.remove(session);
            drop(b);
            self.close(vec![session.to_owned()]);
            b = self.lock();
        }
        match b.owner.get_mut(session) {
            Some((owner, used)) if owner == peer => {
                *used = now;
                Ok(())
            }
            Some((owner, _)) => {
                tracing::info!(peer.id = %peer, session.owner = %owner, "agentid mcp: session id of another peer refused");
                Err(Refusal::forbidden(
                    PEER_DENIED,
                    "MCP session bound to another peer",
                ))
            }
            None => Err(Refusal::forbidden(
                PEER_DENIED,
                "MCP session not bound to this peer",
            )),
        }
    }

    /// After the response: bind a new session id to the peer, or forget a deleted one.
    fn record(
        &self,
        peer: &PeerId,
        method: &Method,
        sent: Option<&HeaderValue>,
        resp: &mut Response<impl Sized>,
    ) {
        if method == Method::DELETE && resp.status().is_success() {
            if let Some(s) = sent.and_then(|s| s.to_str().ok()) {
                self.lock().remove(s);
            }
            return;
        }
        if sent.is_some() {
            return;
        }
        let Some(session) = resp
            .headers()
            .get(SESSION_HEADER)
            .and_then(|s| s.to_str().ok())
            .map(str::to_owned)
        else {
            return;
        };
        let mut b = self.lock();
        match b.owner.get(&session) {
            Some((owner, _)) if owner != peer => {
                // A session id handed out twice: never to a second peer.
                drop(b);
                tracing::warn!(peer.id = %peer, "agentid mcp: session id already bound to another peer");
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                resp.headers_mut().remove(SESSION_HEADER);
                return;
            }
            Some(_) => return,
            None => {}
        }
        let q = b.by_peer.entry(peer.clone()).or_default();
        q.push_back(session.clone());
        let evicted = if q.len() > self.max_per_peer {
            q.pop_front()
        } else {
            None
        };
        b.owner.insert(session, (peer.clone(), Instant::now()));
        *b.per_agent.entry(peer.agent_or_service()).or_insert(0) += 1;
        if let Some(old) = evicted {
            if b.owner.remove(&old).is_some() {
                b.uncount(peer);
            }
            drop(b);
            self.close(vec![old]);
        }
    }
}

impl<S> tower_layer::Layer<S> for McpSessions {
    type Service = McpSessionsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        McpSessionsService {
            inner,
            sessions: self.clone(),
        }
    }
}

/// The service of [`McpSessions`].
#[derive(Clone, Debug)]
pub struct McpSessionsService<S> {
    inner: S,
    sessions: McpSessions,
}

impl<S, B, RB> tower_service::Service<Request<B>> for McpSessionsService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResponseBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(authorizer) = req.extensions().get::<Authorizer>() else {
            let r = Refusal::internal("not served by an agentid HTTP server");
            return Box::pin(std::future::ready(Ok(r.to_response())));
        };
        for (name, what) in [
            (SESSION_HEADER, "more than one mcp-session-id"),
            (LAST_EVENT_ID_HEADER, "more than one last-event-id"),
        ] {
            if req.headers().get_all(name).iter().nth(1).is_some() {
                let r = Refusal::bad_header(what);
                return Box::pin(std::future::ready(Ok(r.to_response())));
            }
        }
        let peer = authorizer.peer_id().clone();
        let sent = req.headers().get(SESSION_HEADER).cloned();
        // A request naming a session is an authorization decision (the session is the
        // peer's, or another peer's or never handed out: `peer_denied`) and reaches the
        // decision sink either way; a full table or a bad header is not one. So is a request
        // resuming a stream (the event it names was delivered to this peer, or not).
        let decided = |r: Result<(), Refusal>| match r {
            Err(r) if r.code() != PEER_DENIED => Err(r),
            Err(r) => authorizer.decide(Resource::McpSession, Err(r)),
            Ok(()) => authorizer.decide(Resource::McpSession, Ok(())),
        };
        let admitted = match self.sessions.admit(&peer, sent.as_ref()) {
            Ok(()) if sent.is_none() => Ok(()),
            r => decided(r),
        }
        .and_then(|()| match req.headers().get(LAST_EVENT_ID_HEADER) {
            Some(last) => decided(self.sessions.admit_resume(&peer, last)),
            None => Ok(()),
        });
        if let Err(r) = admitted {
            return Box::pin(std::future::ready(Ok(r.to_response())));
        }
        let method = req.method().clone();
        let sessions = self.sessions.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            sessions.record(&peer, &method, sent.as_ref(), &mut resp);
            let events = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if events {
                return Ok(resp.map(|body| {
                    ResponseBody::boxed(EventIds {
                        inner: body,
                        sessions,
                        peer,
                        line: Vec::new(),
                        skipping: false,
                    })
                }));
            }
            Ok(resp.map(ResponseBody::boxed))
        })
    }
}

pin_project_lite::pin_project! {
    /// A server-sent event stream on its way to `peer`: the `id` field of each event is
    /// recorded as delivered to that peer ([`McpSessions::admit_resume`]).
    struct EventIds<B> {
        #[pin]
        inner: B,
        sessions: McpSessions,
        peer: PeerId,
        // The start of the current line while it may still be an `id` field.
        line: Vec<u8>,
        // The current line is not an `id` field (or too long): skipped to its end.
        skipping: bool,
    }
}

impl<B> EventIds<B> {
    /// Reads the lines of `data` (continuing the current one), recording `id` fields.
    fn scan(
        line: &mut Vec<u8>,
        skipping: &mut bool,
        sessions: &McpSessions,
        peer: &PeerId,
        data: &[u8],
    ) {
        for (i, piece) in data.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                // A line ended: an `id` field (`id:`, an optional space, the value).
                if !*skipping {
                    if let Some(value) = line.strip_prefix(b"id:") {
                        let value = value.strip_prefix(b" ").unwrap_or(value);
                        let value = value.strip_suffix(b"\r").unwrap_or(value);
                        if let Ok(id) = std::str::from_utf8(value) {
                            sessions.record_event(peer, id);
                        }
                    }
                }
                line.clear();
                *skipping = false;
            }
            if *skipping {
                continue;
            }
            line.extend_from_slice(piece);
            let prefix = line.len().min(3);
            if line.get(..prefix) != b"id:".get(..prefix) || line.len() > 3 + MAX_EVENT_ID_BYTES + 2
            {
                line.clear();
                *skipping = true;
            }
        }
    }
}

impl<B> http_body::Body for EventIds<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                Self::scan(this.line, this.skipping, this.sessions, this.peer, data);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why an MCP call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The server answered with an HTTP error (an agentid refusal carries its code).
    #[error("HTTP {status}: {code}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The agentid refusal code, or empty.
        code: String,
    },
    /// A JSON-RPC error response (a tool refused by agentid: code [`FORBIDDEN`]).
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// Its message (for [`FORBIDDEN`], the agentid code).
        message: String,
    },
    /// The response is not MCP (or too large, or ended without the answer).
    #[error("malformed MCP response: {0}")]
    Malformed(String),
    /// The agentid transport failed.
    #[error(transparent)]
    Transport(#[from] Error),
}

/// A minimal MCP client (streamable HTTP, protocol [`MCP_PROTOCOL_VERSION`]) on one agentid
/// connection: `initialize`, then `tools/list` and `tools/call` in the session it was given.
#[derive(Debug)]
pub struct McpClient {
    conn: HttpClientConnection,
    path: String,
    session: Option<HeaderValue>,
    next_id: u64,
    server: Value,
    timeout: Duration,
}

/// How long an MCP client waits for each answer (the response and its body, or the event that
/// carries it) by default ([`McpClient::initialize_within`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

impl McpClient {
    /// Initializes an MCP session at `path` on `conn` (which presents the caller's chain),
    /// waiting at most [`DEFAULT_TIMEOUT`] for each answer.
    pub async fn initialize(conn: HttpClientConnection, path: &str) -> Result<Self, McpError> {
        Self::initialize_within(conn, path, DEFAULT_TIMEOUT).await
    }

    /// As [`McpClient::initialize`], waiting at most `timeout` for each answer (this one's and
    /// every later call's); past it the call fails with the transport's `response_timeout`.
    /// The connection's timeouts cover TCP and TLS only: a server may take a request and never
    /// answer it, or stream events that never carry the answer.
    pub async fn initialize_within(
        conn: HttpClientConnection,
        path: &str,
        timeout: Duration,
    ) -> Result<Self, McpError> {
        let mut client = Self {
            conn,
            path: path.to_owned(),
            session: None,
            next_id: 1,
            server: Value::Null,
            timeout,
        };
        let result = client
            .request(
                "initialize",
                json!({
                    "protocolVersion": MCP_PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": { "name": "agentid", "version": env!("CARGO_PKG_VERSION") },
                }),
            )
            .await?;
        client.server = result;
        client.notify("notifications/initialized").await?;
        Ok(client)
    }

    /// The server's `initialize` result.
    pub fn server_info(&self) -> &Value {
        &self.server
    }

    /// The session id the server gave.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_ref().and_then(|s| s.to_str().ok())
    }

    /// Uses `session` as this client's session id from now on (to show that a session id is
    /// worth nothing to another peer).
    pub fn set_session_id(&mut self, session: &str) -> Result<(), McpError> {
        self.session = Some(
            HeaderValue::from_str(session)
                .map_err(|_| McpError::Malformed("session id is not a header value".into()))?,
        );
        Ok(())
    }

    /// The agentid connection.
    pub fn http(&self) -> &HttpClientConnection {
        &self.conn
    }

    /// `tools/list`: the tools' names.
    pub async fn list_tools(&mut self) -> Result<Vec<String>, McpError> {
        let r = self.request("tools/list", json!({})).await?;
        Ok(r.get("tools")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `tools/call`: the tool's result (`content`, `isError`).
    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> Result<Value, McpError> {
        self.request(
            "tools/call",
            json!({ "name": name, "arguments": arguments }),
        )
        .await
    }

    fn post(&self, body: &Value) -> Result<Request<Bytes>, McpError> {
        let mut req = Request::post(self.path.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header(PROTOCOL_VERSION_HEADER, MCP_PROTOCOL_VERSION);
        if let Some(s) = &self.session {
            req = req.header(SESSION_HEADER, s.clone());
        }
        req.body(Bytes::from(body.to_string()))
            .map_err(|e| McpError::Malformed(e.to_string()))
    }

    /// `exchange` within the client's timeout, else the transport's `response_timeout`.
    async fn within<T>(
        timeout: Duration,
        exchange: impl std::future::Future<Output = Result<T, McpError>>,
    ) -> Result<T, McpError> {
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| McpError::Transport(Error::Timeout(TimeoutKind::Response)))?
    }

    async fn notify(&mut self, method: &str) -> Result<(), McpError> {
        let req = self.post(&json!({ "jsonrpc": "2.0", "method": method }))?;
        let conn = &mut self.conn;
        Self::within(self.timeout, async {
            let resp = conn.send(req).await?;
            if !resp.status().is_success() {
                return Err(http_error(resp).await);
            }
            Ok(())
        })
        .await
    }

    async fn request(&mut self, method: &str, params: Value) -> Result<Value, McpError> {
        let id = self.next_id;
        self.next_id += 1;
        let req =
            self.post(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))?;
        let (conn, session) = (&mut self.conn, &mut self.session);
        let message = Self::within(self.timeout, async {
            let resp = conn.send(req).await?;
            if !resp.status().is_success() {
                return Err(http_error(resp).await);
            }
            if session.is_none() {
                *session = resp.headers().get(SESSION_HEADER).cloned();
            }
            let sse = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if sse {
                read_sse_answer(resp.into_body(), id).await
            } else {
                let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                    .map_err(|e| McpError::Malformed(format!("body: {e}")))?
                    .to_bytes();
                serde_json::from_slice(&body).map_err(|e| McpError::Malformed(e.to_string()))
            }
        })
        .await?;
        answer(message, id)
    }
}

/// The result of the JSON-RPC response `message` to the request `id`. JSON-RPC 2.0: a response
/// carries its request's id (an error `null` when the server could not read it); an answer
/// under any other id (or a batch) is not the answer to this request.
fn answer(message: Value, id: u64) -> Result<Value, McpError> {
    let answered = message.get("id");
    let ours = answered.and_then(Value::as_u64) == Some(id);
    let error = message.get("error");
    let unread = error.is_some() && answered.is_some_and(Value::is_null);
    if !ours && !unread {
        return Err(McpError::Malformed(
            "JSON-RPC response under another id".into(),
        ));
    }
    if let Some(e) = error {
        return Err(McpError::Rpc {
            code: e.get("code").and_then(Value::as_i64).unwrap_or_default(),
            message: crate::http::peer_text(
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
        });
    }
    message
        .get("result")
        .cloned()
        .ok_or_else(|| McpError::Malformed("JSON-RPC response without result".into()))
}

/// Reads server-sent events until the JSON-RPC response with `id` (other messages, such as
/// notifications, the server's own requests or priming events, are skipped), at most
/// [`MAX_RESPONSE_BYTES`].
async fn read_sse_answer(mut body: hyper::body::Incoming, id: u64) -> Result<Value, McpError> {
    let mut buf = BytesMut::new();
    let mut read = 0usize;
    // The bytes at the front of `buf` already searched for an event end: each search goes over
    // the new bytes only (and the 3 before them, where a separator may have begun), so a stream
    // sent in many small pieces costs its length, not its length times the number of pieces.
    let mut searched = 0usize;
    loop {
        while let Some(end) = event_end(&buf, searched) {
            searched = 0;
            let event = buf.split_to(end.0);
            let _ = buf.split_to(end.1);
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            let Ok(message) = serde_json::from_str::<Value>(&data.join("\n")) else {
                continue;
            };
            // A server's own request (it may number it with the client's id) or notification
            // carries a `method`; a response never does.
            if message.get("method").is_none()
                && message.get("id").and_then(Value::as_u64) == Some(id)
            {
                return Ok(message);
            }
        }
        searched = buf.len().saturating_sub(3);
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    read = read.saturating_add(d.len());
                    if read > MAX_RESPONSE_BYTES {
                        return Err(McpError::Malformed("event stream too large".into()));
                    }
                    buf.extend_from_slice(d);
                }
            }
            Some(Err(e)) => return Err(McpError::Malformed(format!("event stream: {e}"))),
            None => {
                return Err(McpError::Malformed(
                    "event stream ended without the response".into(),
                ))
            }
        }
    }
}

/// The end of the first event in `buf`, none of whose separators begins before `from`:
/// (length of the event, length of the separator).
fn event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let rest = buf.get(from..)?;
    let lf = rest.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    let (lf, crlf) = (
        lf.map(|(p, n)| (p.saturating_add(from), n)),
        crlf.map(|(p, n)| (p.saturating_add(from), n)),
    );
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

async fn http_error(resp: crate::http::HttpResponse) -> McpError {
    let status = resp.status().as_u16();
    let code = http_body_util::Limited::new(resp.into_body(), 4096)
        .collect()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<BTreeMap<String, Value>>(&b.to_bytes()).ok())
        .and_then(|m| m.get("code").and_then(Value::as_str).map(str::to_owned))
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or_default();
    McpError::Http { status, code }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

    fn peer(s: &str) -> PeerId {
        PeerId::parse(s).unwrap()
    }

    /// The `id` fields of an event stream are found whatever the frames cut (inside `id:`,
    /// between a value and its line end, `\r\n` endings), and only they: a data line holding
    /// `id:` is not one, nor an over-long id.
    #[test]
    fn event_ids_are_read_from_the_stream_whatever_its_frames() {
        let sessions = McpSessions::new(Arc::new(LocalSessionManager::default()));
        let a = peer("spiffe://example.org/agent/a/task/t1");
        let b = peer("spiffe://example.org/agent/b/task/t1");
        let long = "x".repeat(MAX_EVENT_ID_BYTES + 1);
        let stream = format!(
            "data: {{\"id:\":\"7\"}}\nid: 1\n\nid:2\r\ndata: x\r\n\r\nretry: 5\nid: {long}\n\ndata: id: 3\nid: 4\n\n"
        );
        for cut in [1, 2, 3, 5, 7, stream.len()] {
            let (mut line, mut skipping) = (Vec::new(), false);
            for chunk in stream.as_bytes().chunks(cut) {
                EventIds::<()>::scan(&mut line, &mut skipping, &sessions, &a, chunk);
            }
            for id in ["1", "2", "4"] {
                assert!(
                    sessions
                        .admit_resume(&a, &HeaderValue::from_static(id))
                        .is_ok(),
                    "cut {cut}: {id}"
                );
                let refused = sessions.admit_resume(&b, &HeaderValue::from_static(id));
                assert_eq!(refused.unwrap_err().code(), PEER_DENIED);
            }
            for id in ["3", "7", long.as_str()] {
                let refused = sessions.admit_resume(&a, &HeaderValue::from_str(id).unwrap());
                assert_eq!(refused.unwrap_err().code(), PEER_DENIED, "cut {cut}: {id}");
            }
        }
    }

    /// A peer keeps its newest ids only, and the table a bounded number in all.
    #[test]
    fn event_ids_are_bounded_per_peer_and_in_all() {
        let sessions = McpSessions::new(Arc::new(LocalSessionManager::default())).max_sessions(1);
        let a = peer("spiffe://example.org/agent/a/task/t1");
        for i in 0..=MAX_EVENT_IDS_PER_PEER {
            sessions.record_event(&a, &i.to_string());
        }
        let held = |p: &PeerId, id: &str| sessions.lock().delivered(p, id);
        assert!(!held(&a, "0"));
        assert!(held(&a, &MAX_EVENT_IDS_PER_PEER.to_string()));
        // A peer keeps its own newest ids past the total; 16 ids in all (one session) then
        // make the peer recorded first go first.
        let b = peer("spiffe://example.org/agent/b/task/t1");
        sessions.record_event(&b, "b0");
        assert!(!held(&a, &MAX_EVENT_IDS_PER_PEER.to_string()));
        assert!(held(&b, "b0"));
        assert!(sessions.lock().event_count <= 16);
    }
}
