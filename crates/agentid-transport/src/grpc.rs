//! gRPC on the HTTP binding (feature `tonic`).
//!
//! tonic builds its own rustls configurations and takes no custom certificate verifier, and a
//! tonic `Channel` reconnects underneath its interceptors, so that an interceptor cannot know
//! which connection a hop proof must be bound to. agentid therefore keeps TLS and HTTP/2 for
//! itself and lets tonic do what it is good at, encoding and decoding:
//!
//! * **Server**: a tonic service (generated or hand-written: any `tower` service of
//!   `http::Request`) is served by [`HttpServer`](crate::http::HttpServer) behind
//!   [`MethodScopes`], which refuses each call whose method's scope the caller's verified chain
//!   does not grant. The agentid server runs the presentation, the per-request revocation
//!   check, the GOAWAY at the connection's deadline and on revocation, and cuts streaming
//!   responses, exactly as for any other HTTP service. (tonic's own `serve_with_incoming` over
//!   agentid's TLS streams would work too, but then tonic drives hyper and none of these
//!   per-connection duties would run.)
//!   A client stream whose messages may be more than
//!   [`HttpOptions::body_idle_timeout`](crate::http::HttpOptions::body_idle_timeout) apart
//!   (30 s by default) needs a longer one, or `None`: the stalled stream otherwise fails.
//! * **Client**: [`GrpcChannel`] is a `tower` service for `tonic::client::Grpc::new`: each call
//!   goes over an agentid [`HttpClientConnection`], which presents the caller's chain and checks
//!   the server's proof and audience; the channel reconnects when a connection nears its
//!   deadline or fails.
//!
//! A refusal reaches the caller as a gRPC status whose message is the agentid code
//! (`scope_not_granted`, `revoked`, ...): `PERMISSION_DENIED` for authorization,
//! `UNAUTHENTICATED` for proof, chain, deadline and revocation failures, `UNAVAILABLE` when busy.
//!
//! ```ignore
//! // Server: the scope each method needs; a method not listed is refused.
//! let scopes = MethodScopes::new()
//!     .method("/demo.Files/Read", Scope::parse("files:read")?)
//!     .method("/demo.Files/Write", Scope::parse("files:write")?);
//! server.serve(listener, scopes.layer(FilesServer::new(files))).await?;
//!
//! // Client: a tonic client on the agentid HTTP client (chain presented, server checked).
//! let channel = GrpcChannel::new(http_client, addr, "files.example.org");
//! let mut grpc = tonic::client::Grpc::new(channel);
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentid_protocol::{ErrorCode, Scope};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use tonic::{Code, Status};

use crate::error::{Error, TimeoutKind};

// The versions the channel and the layer are built with: messages derived with this `prost`
// and encoded with this `tonic_prost` codec fit them.
use crate::http::{Authorizer, BoxError, HttpClient, HttpClientConnection, Refusal};
pub use prost;
pub use tonic;
pub use tonic_prost;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The gRPC code of an agentid refusal's HTTP status: 401 `UNAUTHENTICATED`, 403
/// `PERMISSION_DENIED`, 503 `UNAVAILABLE`, 400 and 431 `INVALID_ARGUMENT`, otherwise
/// `INTERNAL`.
pub fn grpc_code(status: StatusCode) -> Code {
    match status {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            Code::InvalidArgument
        }
        _ => Code::Internal,
    }
}

/// The gRPC status a refusal becomes: [`grpc_code`] of its HTTP status, and the agentid code
/// as the message. Details stay in the local log.
pub fn status_of(r: &Refusal) -> Status {
    Status::new(grpc_code(r.status()), r.code())
}

/// The gRPC status of a failure of the agentid client itself (connect, handshake, server
/// proof, audience): `PERMISSION_DENIED` when the server or the chain's audience is refused,
/// `UNAUTHENTICATED` for an expired or revoked credential, `UNAVAILABLE` for the rest (the
/// call may be retried on a new connection). The message is the agentid reason code; the
/// error itself is the status's source.
pub fn client_status(e: Error) -> Status {
    let code = match &e {
        Error::PolicyDenied(_) | Error::Certificate(_) => Code::PermissionDenied,
        Error::Protocol(p) if p.code() == ErrorCode::AudienceMismatch => Code::PermissionDenied,
        Error::Protocol(_) | Error::CredentialExpired | Error::Revoked(_) | Error::NoCredential => {
            Code::Unauthenticated
        }
        Error::Config(_) => Code::InvalidArgument,
        Error::Timeout(TimeoutKind::Response) => Code::DeadlineExceeded,
        _ => Code::Unavailable,
    };
    let mut status = Status::new(code, e.reason().to_owned());
    status.set_source(Arc::new(e));
    status
}

/// A tower layer that requires a delegated scope per gRPC method (the request path
/// `/package.Service/Method`). A method without a declared scope is refused
/// (`PERMISSION_DENIED`, `scope_not_granted`): nothing is reachable by omission. The scope is
/// checked by the request's [`Authorizer`] (connection deadline and revocation first, then the
/// chain's scope and limits), so every decision also reaches the server's decision sink.
#[derive(Clone, Debug, Default)]
pub struct MethodScopes {
    methods: Arc<BTreeMap<String, Scope>>,
}

impl MethodScopes {
    /// No method admitted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `scope` for `path` (`/package.Service/Method`).
    #[must_use]
    pub fn method(mut self, path: &str, scope: Scope) -> Self {
        Arc::make_mut(&mut self.methods).insert(path.to_owned(), scope);
        self
    }

    /// The scope `path` requires, if it is declared.
    pub fn scope_of(&self, path: &str) -> Option<&Scope> {
        self.methods.get(path)
    }

    fn check(&self, req_path: &str, authorizer: Option<&Authorizer>) -> Result<(), Status> {
        let Some(authorizer) = authorizer else {
            return Err(status_of(&Refusal::internal(
                "not served by an agentid HTTP server",
            )));
        };
        match self.methods.get(req_path) {
            Some(scope) => authorizer.authorize(scope).map_err(|r| status_of(&r)),
            // Refused, and reported to the decision sink like every decision.
            None => Err(status_of(&authorizer.refuse_undeclared(req_path))),
        }
    }
}

impl<S> tower_layer::Layer<S> for MethodScopes {
    type Service = MethodScopesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MethodScopesService {
            inner,
            scopes: self.clone(),
        }
    }
}

/// The service of [`MethodScopes`].
#[derive(Clone, Debug)]
pub struct MethodScopesService<S> {
    inner: S,
    scopes: MethodScopes,
}

impl<S, B, RB> tower_service::Service<Request<B>> for MethodScopesService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self
            .scopes
            .check(req.uri().path(), req.extensions().get::<Authorizer>())
        {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// The response body of a [`GrpcChannel`].
pub type GrpcBody = UnsyncBoxBody<Bytes, BoxError>;

/// The largest refusal body read to find its agentid code.
const MAX_REFUSAL_BODY: usize = 4096;

/// A response as gRPC sees it. A refusal of the agentid server answered before any gRPC
/// service ran (HTTP 401, 403, 503 with a JSON `{code, message}` body) becomes a
/// trailers-only gRPC response: [`grpc_code`] of the HTTP status and the agentid code as
/// `grpc-message`. gRPC responses (HTTP 200 or with `grpc-status`) pass through.
async fn grpc_response(resp: Response<Incoming>) -> Response<GrpcBody> {
    if resp.status() == StatusCode::OK || resp.headers().contains_key("grpc-status") {
        return resp.map(|b| b.map_err(Into::into).boxed_unsync());
    }
    let http_status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_REFUSAL_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct RefusalBody {
        code: String,
    }
    let code = serde_json::from_slice::<RefusalBody>(&body)
        .ok()
        .map(|b| b.code)
        .filter(|c| {
            !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .unwrap_or_else(|| format!("http_{}", http_status.as_u16()));
    Status::new(grpc_code(http_status), code).into_http::<GrpcBody>()
}

/// A call's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit, `H`, `M`, `S`, `m`,
/// `u` or `n`); `None` when absent or not of that form.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The largest request body (all messages of one call) a [`GrpcChannel`] sends by default.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How long a [`GrpcChannel`] waits by default for a call's response head (its status, or the
/// start of a server stream): see [`GrpcChannel::response_timeout`].
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

struct ChannelInner {
    client: HttpClient,
    addr: SocketAddr,
    authority: String,
    max_request_bytes: usize,
    response_timeout: Duration,
    conn: tokio::sync::Mutex<Option<HttpClientConnection>>,
}

/// A tonic client transport on the agentid HTTP client: give it to
/// `tonic::client::Grpc::new` (or a generated client's `new`).
///
/// Every call goes over one [`HttpClientConnection`] (the caller's chain presented on the
/// first request, the server's proof and the chain's audience checked); the channel opens a new
/// connection when the current one is past its margin before the earlier certificate deadline,
/// was closed by the server (GOAWAY on revocation or deadline), or failed. The request body is
/// collected before it is sent (at most [`DEFAULT_MAX_REQUEST_BYTES`], see
/// [`GrpcChannel::max_request_bytes`]): unary and server-streaming calls, not client streaming.
#[derive(Clone)]
pub struct GrpcChannel {
    inner: Arc<ChannelInner>,
}

impl std::fmt::Debug for GrpcChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcChannel")
            .field("addr", &self.inner.addr)
            .field("authority", &self.inner.authority)
            .finish_non_exhaustive()
    }
}

impl GrpcChannel {
    /// Calls the agentid server at `addr`; `authority` is the `:authority` of requests.
    pub fn new(client: HttpClient, addr: SocketAddr, authority: &str) -> Self {
        Self {
            inner: Arc::new(ChannelInner {
                client,
                addr,
                authority: authority.to_owned(),
                max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
                conn: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Sets the largest request body this channel sends (a larger one fails locally).
    #[must_use]
    pub fn max_request_bytes(self, max: usize) -> Self {
        self.with_settings(max, self.inner.response_timeout)
    }

    /// Sets how long a call waits for its response head (default [`DEFAULT_RESPONSE_TIMEOUT`]):
    /// past it the call fails `DEADLINE_EXCEEDED` (`response_timeout`) and its connection is
    /// dropped, so that a server that takes calls and never answers holds neither the call nor
    /// the channel's later calls (which share its one connection) for longer. A server stream
    /// is bounded only until its first response head, not while it streams. A call whose own
    /// deadline (`grpc-timeout`, tonic's `Request::set_timeout`) is shorter waits only that long.
    #[must_use]
    pub fn response_timeout(self, t: Duration) -> Self {
        self.with_settings(self.inner.max_request_bytes, t)
    }

    /// This channel's server and client with these settings, and no connection yet.
    fn with_settings(&self, max_request_bytes: usize, response_timeout: Duration) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(ChannelInner {
                client: inner.client.clone(),
                addr: inner.addr,
                authority: inner.authority.clone(),
                max_request_bytes,
                response_timeout,
                conn: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The server's verified identity on the current connection, if one is open.
    pub async fn peer_id(&self) -> Option<String> {
        let guard = self.inner.conn.lock().await;
        guard.as_ref().map(|c| c.peer().info.id.to_string())
    }

    async fn send<B>(
        inner: Arc<ChannelInner>,
        req: Request<B>,
    ) -> Result<Response<GrpcBody>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        // The call's own deadline when it is the shorter (as tonic's channel has it).
        let wait = grpc_timeout(&parts.headers)
            .map_or(inner.response_timeout, |t| t.min(inner.response_timeout));
        let body = Limited::new(body, inner.max_request_bytes)
            .collect()
            .await
            .map_err(|e| client_status(Error::Config(format!("gRPC request body: {e}"))))?
            .to_bytes();
        let req = Request::from_parts(parts, body);
        let mut guard = inner.conn.lock().await;
        if !guard.as_ref().is_some_and(HttpClientConnection::is_usable) {
            *guard = None;
            let conn = inner
                .client
                .connect(inner.addr, &inner.authority)
                .await
                .map_err(client_status)?;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(Status::internal("no connection"));
        };
        let answered = tokio::time::timeout(wait, async {
            match conn.send(req).await {
                Ok(resp) => Ok(grpc_response(resp).await),
                Err(e) => Err(e),
            }
        })
        .await
        .unwrap_or(Err(Error::Timeout(TimeoutKind::Response)));
        answered.map_err(|e| {
            // A failed connection (or one whose server does not answer) is never reused.
            *guard = None;
            client_status(e)
        })
    }
}

impl<B> tower_service::Service<Request<B>> for GrpcChannel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<GrpcBody>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<GrpcBody>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(Self::send(self.inner.clone(), req))
    }
}
