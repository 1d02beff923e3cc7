//! Per-request authorization: the [`Authorizer`] every request served by an agentid HTTP
//! server carries, the decision sink, and the [`Require`] tower layer ([`RequireScope`],
//! [`RequirePeer`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentid_protocol::{PeerId, Scope, VerifiedChain};
use bytes::Bytes;
use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response};

use super::refusal::{Refusal, PEER_DENIED};
use super::server::{ConnShared, Verified};
use crate::session::now_unix;
use crate::svid::SvidInfo;
use crate::PeerPolicy;

/// The request header whose value becomes a decision's correlation ID.
pub const CORRELATION_HEADER: &str = "x-request-id";
/// The longest [`CORRELATION_HEADER`] value taken as a decision's correlation ID; a longer one
/// is not used (a peer's 32 KiB header would otherwise be copied into every decision it causes).
pub const MAX_CORRELATION_ID_BYTES: usize = 128;
/// The most bytes of a request's path [`TracingSink`] writes (the rest is cut, `...` marking
/// it): the sink writes every decision, a path may be 32 KiB.
const MAX_LOGGED_PATH_BYTES: usize = 256;
/// [`CORRELATION_HEADER`] as a header name (looked up without parsing the name each time).
pub(crate) const CORRELATION: HeaderName = HeaderName::from_static(CORRELATION_HEADER);

/// One authorization decision.
#[derive(Debug)]
pub struct Decision<'a> {
    /// The peer (its certificate's URI SAN).
    pub peer: &'a PeerId,
    /// The chain's principal (RFC 9493 subject identifier), for `on_behalf_of` chains.
    pub principal: Option<&'a serde_json::Value>,
    /// What was asked for: a scope, or the peer-policy check.
    pub resource: Resource<'a>,
    /// The request's method (with `path`, the action).
    pub method: &'a Method,
    /// The request's path.
    pub path: &'a str,
    /// Granted or denied.
    pub granted: bool,
    /// The refusal code when denied.
    pub code: Option<&'static str>,
    /// Unix seconds.
    pub time: u64,
    /// The request's `x-request-id`, when it carried one of at most
    /// [`MAX_CORRELATION_ID_BYTES`] visible ASCII characters.
    pub correlation_id: Option<&'a str>,
}

/// What a decision was about. Displays as the scope, or `peer`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Resource<'a> {
    /// A scope asked for under the peer's chain.
    Scope(&'a Scope),
    /// The peer's identity against a peer policy.
    Peer,
    /// Something the service declares no requirement for (a gRPC method without a scope):
    /// refused whatever the peer holds.
    Undeclared(&'a str),
    /// An MCP session the peer asked to use (the `mcp` adapter's session binding); the session
    /// id itself is never reported.
    McpSession,
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Scope(s) => s.fmt(f),
            Resource::Peer => f.write_str("peer"),
            Resource::Undeclared(name) => write!(f, "undeclared {name}"),
            Resource::McpSession => f.write_str("mcp session"),
        }
    }
}

/// Receives every authorization decision (nothing is formatted before a sink asks for it).
pub trait DecisionSink: Send + Sync + 'static {
    /// Records one decision (called on the request path: keep it cheap).
    fn record(&self, decision: &Decision<'_>);
}

/// The default sink: `tracing` events with target `agentid::decision`, denials at INFO, grants
/// at DEBUG. The path is written up to its first 256 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

impl DecisionSink for TracingSink {
    fn record(&self, d: &Decision<'_>) {
        if d.granted {
            tracing::debug!(target: "agentid::decision", { peer.id = %d.peer, resource = %d.resource, action = %format_args!("{} {}", d.method, LoggedPath(d.path)), decision = "granted", time = d.time, correlation_id = d.correlation_id }, "authorization");
        } else {
            tracing::info!(target: "agentid::decision", { peer.id = %d.peer, resource = %d.resource, action = %format_args!("{} {}", d.method, LoggedPath(d.path)), decision = "denied", reason = d.code.unwrap_or(""), time = d.time, correlation_id = d.correlation_id }, "authorization");
        }
    }
}

/// A path as [`TracingSink`] writes it: at most [`MAX_LOGGED_PATH_BYTES`] of it.
struct LoggedPath<'a>(&'a str);

impl std::fmt::Display for LoggedPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= MAX_LOGGED_PATH_BYTES {
            return f.write_str(self.0);
        }
        let mut end = MAX_LOGGED_PATH_BYTES;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        f.write_str(self.0.get(..end).unwrap_or_default())?;
        f.write_str("...")
    }
}

/// The per-request handle: who the peer is, its verified chain, and authorization checks that
/// first re-check the connection (deadline, revocation epoch) and then the scope and limits.
/// Found in every request's extensions (and as an axum extractor with the `axum` feature).
#[derive(Clone)]
pub struct Authorizer {
    conn: Arc<ConnShared>,
    verified: Option<Arc<Verified>>,
    method: Method,
    // The request's path and query (the rest of its URI is not read: nothing else cloned).
    path: Option<PathAndQuery>,
    correlation: Option<HeaderValue>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("peer", &self.peer_id().to_string())
            .field("chain", &self.verified.as_ref().map(|v| v.chain.is_some()))
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    pub(crate) fn new<B>(
        conn: Arc<ConnShared>,
        verified: Option<Arc<Verified>>,
        req: &Request<B>,
        correlation: Option<HeaderValue>,
    ) -> Self {
        Self {
            conn,
            verified,
            method: req.method().clone(),
            // `Uri::path` is empty exactly when the URI has no path (authority-form).
            path: if req.uri().path().is_empty() {
                None
            } else {
                req.uri().path_and_query().cloned()
            },
            correlation,
        }
    }

    /// The peer's certificate: identity, key, serial, validity.
    ///
    /// [`peer`](Self::peer), [`peer_id`](Self::peer_id) and [`chain`](Self::chain) are what
    /// was verified when the request arrived, for logging and for choosing what to do; reading
    /// them decides nothing. Decide with [`authorize`](Self::authorize),
    /// [`authorize_with_limits`](Self::authorize_with_limits) or
    /// [`check_peer`](Self::check_peer) (or the [`RequireScope`](super::RequireScope) and
    /// [`RequirePeer`](super::RequirePeer) layers): they check the connection again (deadline,
    /// revocation), apply the verifier's current authority policy and reach the decision sink;
    /// a handler comparing the chain's scope itself skips all three.
    pub fn peer(&self) -> &SvidInfo {
        &self.conn.peer.info
    }

    /// The peer's identity.
    pub fn peer_id(&self) -> &PeerId {
        &self.conn.peer.info.id
    }

    /// The peer's verified delegation chain, when it presented one.
    pub fn chain(&self) -> Option<&VerifiedChain> {
        self.verified.as_ref().and_then(|v| v.chain.as_ref())
    }

    /// Whether the request came under a verified presentation (with or without a chain).
    pub fn presented(&self) -> bool {
        self.verified.is_some()
    }

    /// The receipts of the verified presentation: the client's and the server's hop proofs.
    pub fn receipts(&self) -> Option<(&str, &str)> {
        self.verified.as_ref().map(|v| {
            (
                v.client_proof.as_str(),
                v.server_proof.to_str().unwrap_or_default(),
            )
        })
    }

    /// The connection's deadline (Unix seconds).
    pub fn deadline(&self) -> u64 {
        self.conn.deadline()
    }

    /// Authorizes `requested` under the peer's verified chain (a peer without a chain holds no
    /// authority: 403 `scope_not_granted`).
    pub fn authorize(&self, requested: &Scope) -> Result<(), Refusal> {
        /// No amounts (a constant: nothing built or dropped per call).
        const NO_AMOUNTS: &BTreeMap<String, u64> = &BTreeMap::new();
        self.authorize_with_limits(requested, NO_AMOUNTS)
    }

    /// As [`Authorizer::authorize`], also checking requested amounts against the chain's
    /// effective limit ceilings (`limit_exceeded`).
    pub fn authorize_with_limits(
        &self,
        requested: &Scope,
        amounts: &BTreeMap<String, u64>,
    ) -> Result<(), Refusal> {
        let now = now_unix();
        let result = self.conn.live_at(now).and_then(|()| {
            // Section 13 as the protocol has it, with or without a chain (a peer without one
            // holds no authority: the request's own checks, then `scope_not_granted`).
            self.conn
                .server
                .verification
                .verifier()
                .authorize_peer(self.chain(), requested, amounts)
                .map_err(|e| Refusal::forbidden(e.code().as_str(), e.to_string()))
        });
        self.record(Resource::Scope(requested), &result, now);
        result
    }

    /// Checks the peer's identity against `policy` (403 `peer_denied`), after the connection
    /// checks. No chain is needed.
    pub fn check_peer(&self, policy: &PeerPolicy) -> Result<(), Refusal> {
        let now = now_unix();
        let result = self.conn.live_at(now).and_then(|()| {
            if policy.allows(self.peer_id()) {
                Ok(())
            } else {
                Err(Refusal::forbidden(
                    PEER_DENIED,
                    format!("{} is not admitted by {policy:?}", self.peer_id()),
                ))
            }
        });
        self.record(Resource::Peer, &result, now);
        result
    }

    /// Refuses a request for `name`, which the service declares no requirement for (a gRPC
    /// method without a scope): 403 `scope_not_granted` after the connection checks (whose own
    /// refusal comes first), reported to the decision sink as every decision is
    /// (spec/PROTOCOL.md 22.8).
    pub fn refuse_undeclared(&self, name: &str) -> Refusal {
        let now = now_unix();
        let refusal = match self.conn.live_at(now) {
            Err(r) => r,
            Ok(()) => Refusal::forbidden(
                agentid_protocol::ErrorCode::ScopeNotGranted.as_str(),
                format!("{name} declares no requirement"),
            ),
        };
        self.record(Resource::Undeclared(name), &Err(refusal.clone()), now);
        refusal
    }

    /// An adapter's own decision on `resource` (the `mcp` session binding): the connection
    /// checks first (their refusal comes first, as for every decision), then `decided`; either
    /// way reported to the decision sink (spec/PROTOCOL.md 22.8) and returned.
    #[cfg_attr(not(feature = "mcp"), allow(dead_code))]
    pub(crate) fn decide(
        &self,
        resource: Resource<'_>,
        decided: Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let now = now_unix();
        let result = self.conn.live_at(now).and(decided);
        self.record(resource, &result, now);
        result
    }

    fn record(&self, resource: Resource<'_>, result: &Result<(), Refusal>, now: u64) {
        let sink = &self.conn.server.sink;
        sink.record(&Decision {
            peer: self.peer_id(),
            principal: self.chain().and_then(|c| c.principal.as_ref()),
            resource,
            method: &self.method,
            path: self.path.as_ref().map_or("", PathAndQuery::path),
            granted: result.is_ok(),
            code: result.as_ref().err().map(Refusal::code),
            time: now,
            correlation_id: self.correlation.as_ref().and_then(|v| v.to_str().ok()),
        });
    }
}

#[cfg(feature = "axum")]
impl<St: Send + Sync> axum::extract::FromRequestParts<St> for Authorizer {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &St,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authorizer>()
            .cloned()
            .ok_or_else(|| Refusal::internal("not served by an agentid HTTP server"))
    }
}

/// What a [`Require`] layer checks on each request, through the request's [`Authorizer`]
/// (so the connection checks of the deadline and revocation epoch run first, and the decision
/// goes to the sink).
pub trait Requirement: Send + Sync + 'static {
    /// Admits the request, or refuses it with the refusal its response carries.
    fn check(&self, authorizer: &Authorizer) -> Result<(), Refusal>;
}

/// A scope: the peer's verified chain must grant it ([`Authorizer::authorize`]; a peer without
/// a chain gets 403 `scope_not_granted`).
impl Requirement for Scope {
    fn check(&self, authorizer: &Authorizer) -> Result<(), Refusal> {
        authorizer.authorize(self)
    }
}

/// A peer policy: the peer's identity must satisfy it ([`Authorizer::check_peer`], 403
/// `peer_denied`); no chain is needed.
impl Requirement for PeerPolicy {
    fn check(&self, authorizer: &Authorizer) -> Result<(), Refusal> {
        authorizer.check_peer(self)
    }
}

/// A tower layer that admits a request only when its [`Requirement`] holds; otherwise the
/// response is the requirement's refusal and the inner service is not called. Requests not
/// served by an agentid HTTP server (no [`Authorizer`]) get 500 `internal`. With axum, put it
/// on the handler: `get(handler.layer(RequireScope::new(scope)))` (see [`crate::http`]).
pub struct Require<R> {
    requirement: Arc<R>,
}

/// Requires a scope under the peer's verified chain: `RequireScope::new(scope)` (concrete
/// tokens, no `*`).
pub type RequireScope = Require<Scope>;

/// Requires the peer's identity to satisfy a [`PeerPolicy`]: `RequirePeer::new(policy)`.
pub type RequirePeer = Require<PeerPolicy>;

/// The service of [`RequireScope`].
pub type RequireScopeService<S> = RequireService<S, Scope>;

/// The service of [`RequirePeer`].
pub type RequirePeerService<S> = RequireService<S, PeerPolicy>;

impl<R: Requirement> Require<R> {
    /// Requires `requirement` on every request.
    pub fn new(requirement: R) -> Self {
        Self {
            requirement: Arc::new(requirement),
        }
    }
}

impl<R> Clone for Require<R> {
    fn clone(&self) -> Self {
        Self {
            requirement: self.requirement.clone(),
        }
    }
}

impl<R: std::fmt::Debug> std::fmt::Debug for Require<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Require").field(&self.requirement).finish()
    }
}

impl<S, R> tower_layer::Layer<S> for Require<R> {
    type Service = RequireService<S, R>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireService {
            inner,
            requirement: self.requirement.clone(),
        }
    }
}

/// The service of [`Require`].
pub struct RequireService<S, R> {
    inner: S,
    requirement: Arc<R>,
}

impl<S: Clone, R> Clone for RequireService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            requirement: self.requirement.clone(),
        }
    }
}

impl<S: std::fmt::Debug, R: std::fmt::Debug> std::fmt::Debug for RequireService<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireService")
            .field("inner", &self.inner)
            .field("requirement", &self.requirement)
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RequireService`]: the inner service's, or the refusal (no allocation).
    pub struct RequireFuture<F, RB> {
        #[pin]
        state: RequireState<F, RB>,
    }
}

pin_project_lite::pin_project! {
    #[project = RequireStateProj]
    enum RequireState<F, RB> {
        Inner {
            #[pin]
            future: F,
        },
        Refused {
            response: Option<Response<RB>>,
        },
    }
}

impl<F, RB> std::fmt::Debug for RequireFuture<F, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for RequireFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            RequireStateProj::Inner { future } => future.poll(cx),
            RequireStateProj::Refused { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S, R, B, RB> tower_service::Service<Request<B>> for RequireService<S, R>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    R: Requirement,
    RB: From<Bytes>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RequireFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verdict = match req.extensions().get::<Authorizer>() {
            Some(a) => self.requirement.check(a),
            None => Err(Refusal::internal("not served by an agentid HTTP server")),
        };
        match verdict {
            Ok(()) => RequireFuture {
                state: RequireState::Inner {
                    future: self.inner.call(req),
                },
            },
            Err(r) => RequireFuture {
                state: RequireState::Refused {
                    response: Some(r.to_response()),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracing_sink_writes_at_most_the_first_256_bytes_of_a_path() {
        assert_eq!(LoggedPath("/files/a").to_string(), "/files/a");
        let exact = format!("/{}", "a".repeat(MAX_LOGGED_PATH_BYTES - 1));
        assert_eq!(LoggedPath(&exact).to_string(), exact);
        let long = format!("/{}", "a".repeat(32 * 1024));
        let shown = LoggedPath(&long).to_string();
        assert_eq!(shown.len(), MAX_LOGGED_PATH_BYTES + 3);
        assert!(shown.ends_with("..."));
        // Not ASCII (a path decoded by a service): cut at a character boundary.
        let wide = "é".repeat(200);
        let shown = LoggedPath(&wide).to_string();
        assert!(shown.trim_end_matches("...").chars().all(|c| c == 'é'));
    }
}
