//! The CA as a network service (`spec/CA-API.md`): axum routes over agentid's mTLS HTTP server.
//!
//! Served here: `GET /healthz`, `GET /v1/bundle`, `GET /v1/bundle/agentid`, `GET /v1/revocations`
//! (with `ETag` and the `after`/`wait` long-poll, lists published by [`Publisher`]),
//! `POST /v1/enroll` (bootstrap tokens), `POST /v1/children`, `POST /v1/renew` and
//! `POST /v1/revoke`. CA operations are
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
    ApiError, ErrorCode, Health, RenewRequest as ApiRenew, RevocationsResponse,
    RevokeRequest as ApiRevoke, RevokeResponse,
};
use agentid_protocol::{
    BundleSet, PeerId, ServiceId, SpiffeId, TaskId, TaskIdentity, TaskKey, VerifierConfig,
};
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
use crate::publication::Publisher;
use crate::store::PublishedList;
use crate::{CertificateAuthority, RenewRequest, RevokeTarget};

/// Bounds of the service.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Concurrent CA operations (the blocking pool's share).
    pub max_operations: usize,
    /// Requests held by the revocation long-poll, in total.
    pub max_waiters: usize,
    /// Requests held by the revocation long-poll, per caller identity.
    pub max_waiters_per_caller: usize,
    /// Lifetime of the service's own certificate (default: the policy's default TTL).
    pub service_ttl: Option<Duration>,
    /// Options of the mTLS listener.
    pub http: HttpOptions,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            max_operations: 16,
            max_waiters: 1024,
            max_waiters_per_caller: 4,
            service_ttl: None,
            http: HttpOptions::default(),
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
    caller_waiters: Arc<crate::publication::CallerWaiters>,
}

/// A CA service: the mTLS server and its routes.
pub struct CaService {
    shared: Arc<Shared>,
    server: HttpServer,
    own: OwnCertificate,
}

/// The service's own certificate, re-issued (same key) at half its lifetime.
struct OwnCertificate {
    identity: PeerId,
    key_pkcs8: Vec<u8>,
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
    pub fn new(ca: CertificateAuthority, options: ServiceOptions) -> Result<Self, ServeError> {
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
        // The service key never leaves this process: kept to re-issue its certificate for the same key.
        let key_pkcs8 = key.danger_pkcs8_der().to_vec();
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
        let server = HttpServer::builder(
            credentials.clone(),
            verification.clone(),
            PeerPolicy::trust_domain(td),
        )
        .options(options.http.clone())
        .build()?;
        let own = OwnCertificate {
            identity: PeerId::parse(issued.identity.as_str()).map_err(CaError::from)?,
            key_pkcs8,
            ttl: options.service_ttl,
            not_after: issued.leaf.not_after,
            issued_at: crate::util::unix(now)?,
            credentials,
            verification,
        };
        let ca = Arc::new(ca);
        let publisher = Publisher::new(ca.clone())?;
        Ok(CaService {
            shared: Arc::new(Shared {
                ca,
                ops: Arc::new(Semaphore::new(options.max_operations.max(1))),
                waiters: Arc::new(Semaphore::new(options.max_waiters.max(1))),
                publisher,
                caller_waiters: crate::publication::CallerWaiters::new(
                    options.max_waiters_per_caller,
                ),
            }),
            server,
            own,
        })
    }

    /// The revocation list publisher. [`CaService::serve`] runs it; whoever serves
    /// [`CaService::router`] by other means must run [`Publisher::run`] too, or revocations are
    /// not published (and `POST /v1/revoke` answers `503` after waiting for its list).
    pub fn publisher(&self) -> Arc<Publisher> {
        self.shared.publisher.clone()
    }

    /// The routes of the mTLS listener.
    pub fn router(&self) -> Router {
        Router::new()
            .route(agentid_api::routes::HEALTHZ, get(healthz))
            .route(agentid_api::routes::BUNDLE, get(bundle))
            .route(agentid_api::routes::BUNDLE_AGENTID, get(bundle_agentid))
            .route(agentid_api::routes::REVOCATIONS, get(revocations))
            .route(agentid_api::routes::ENROLL, post(enroll))
            .route(agentid_api::routes::CHILDREN, post(children))
            .route(agentid_api::routes::RENEW, post(renew))
            .route(agentid_api::routes::REVOKE, post(revoke))
            .fallback(not_found)
            .with_state(self.shared.clone())
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
            let wait = renew_at.saturating_sub(unix_now());
            tokio::time::sleep(Duration::from_secs(wait.max(1))).await;
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
        let key = TaskKey::from_pkcs8_der(&own.key_pkcs8).map_err(CaError::from)?;
        let req = RenewRequest {
            identity: own.identity.clone(),
            key: KeySource::Spki(key.public_key().to_spki_der()),
            requester: RenewRequester::Operator,
            ttl: own.ttl,
        };
        let ca = self.shared.ca.clone();
        let issued = tokio::task::spawn_blocking(move || ca.renew(&req, SystemTime::now()))
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
        CaError::KeyInUse { .. } | CaError::KeyMismatch { .. } | CaError::IdentityExists(_) => {
            ErrorCode::KeyMismatch
        }
        CaError::UnknownIdentity(_) | CaError::NotFound { .. } => ErrorCode::NotFound,
        CaError::Revoked { .. } => ErrorCode::Revoked,
        CaError::Policy { .. } | CaError::Unauthorized { .. } => ErrorCode::PolicyDenied,
        CaError::BootstrapToken(_) => ErrorCode::TokenInvalid,
        CaError::OutlivesParent { .. } => ErrorCode::CapReached,
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
        Refused::new(code, e.to_string(), "")
    }
}

/// Runs a CA operation on the blocking pool, within the concurrency bound.
async fn run<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&CertificateAuthority) -> Result<T, CaError> + Send + 'static,
) -> Result<T, Refused> {
    let Ok(_permit) = s.ops.clone().try_acquire_owned() else {
        return Err(Refused::new(
            ErrorCode::Unavailable,
            "the CA is at its concurrency bound",
            "retry after Retry-After",
        ));
    };
    let ca = s.ca.clone();
    match tokio::task::spawn_blocking(move || f(&ca)).await {
        Ok(r) => r.map_err(Refused::from),
        Err(_) => Err(Refused::new(
            ErrorCode::Internal,
            "the CA operation did not complete",
            "retry later",
        )),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, Refused> {
    let bytes = axum::body::to_bytes(req.into_body(), agentid_api::MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            Refused::new(
                ErrorCode::BodyTooLarge,
                format!(
                    "the request body is larger than {} bytes",
                    agentid_api::MAX_BODY_BYTES
                ),
                "",
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Refused::new(
            ErrorCode::BadRequest,
            format!("the body is not this route's JSON: {e}"),
            "see spec/CA-API.md",
        )
    })
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

async fn not_found() -> Refused {
    Refused::new(ErrorCode::NotFound, "no such route", "see spec/CA-API.md")
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match run(&s, |ca| ca.revocations().map(|_| ())).await {
        Ok(()) => json(
            StatusCode::OK,
            &Health {
                status: "ok".into(),
            },
        ),
        Err(r) => r.into_response(),
    }
}

async fn bundle(State(s): State<Arc<Shared>>) -> Response {
    let full = match s.ca.trust_bundle() {
        Ok(b) => b,
        Err(e) => return Refused::from(e).into_response(),
    };
    // The standard SPIFFE bundle: only the X509-SVID authorities.
    let mut v: serde_json::Value = match serde_json::from_str(&full.to_json()) {
        Ok(v) => v,
        Err(_) => return Refused::from(CaError::Store("bundle".into())).into_response(),
    };
    if let Some(keys) = v.get_mut("keys").and_then(serde_json::Value::as_array_mut) {
        keys.retain(|k| k.get("use").and_then(serde_json::Value::as_str) == Some("x509-svid"));
    }
    json(StatusCode::OK, &v)
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

fn list_response(p: &PublishedList) -> Response {
    let mut r = json(
        StatusCode::OK,
        &RevocationsResponse {
            seq: p.seq,
            list: p.compact.clone(),
        },
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
    let mut wait = 0;
    for pair in req.uri().query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v.parse().map_err(|_| bad("after and wait are integers"))?;
        match k {
            "after" => after = Some(n),
            "wait" if n <= agentid_api::MAX_WAIT_SECS => wait = n,
            "wait" => return Err(bad("wait is at most 30 seconds")),
            _ => return Err(bad("unknown query parameter")),
        }
    }
    if after.is_none() {
        if let Some(v) = req.headers().get(header::IF_NONE_MATCH) {
            let t = v.to_str().unwrap_or("").trim().trim_matches('"');
            after = Some(
                t.parse()
                    .map_err(|_| bad("If-None-Match is a quoted seq"))?,
            );
        }
    }
    Ok((after, wait))
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
        return list_response(&current);
    };
    if current.seq > after {
        return list_response(&current);
    }
    if wait == 0 {
        return not_modified(current.seq);
    }
    let Some(_mine) = s.caller_waiters.try_acquire(a.peer_id().as_str()) else {
        return Refused::new(
            ErrorCode::RateLimited,
            "this caller already holds its share of waiting requests",
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
                        return list_response(&p);
                    }
                }
            }
            // The sender lives as long as the service; a closed channel or the deadline ends
            // the wait with what is current.
            Ok(Err(_)) | Err(_) => {
                let seq = rx.borrow().as_ref().map(|p| p.seq).unwrap_or(current.seq);
                return not_modified(seq);
            }
        }
    }
}

async fn enroll(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let body: agentid_api::EnrollRequest = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
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
    let Ok(_permit) = s.ops.clone().try_acquire_owned() else {
        return Refused::new(
            ErrorCode::Unavailable,
            "the CA is at its concurrency bound",
            "retry after Retry-After",
        )
        .into_response();
    };
    let ca = s.ca.clone();
    let token = body.token;
    let res = tokio::task::spawn_blocking(move || ca.enroll(&token, csr, SystemTime::now())).await;
    use crate::token::EnrollError;
    match res {
        Ok(Ok(c)) => json(
            StatusCode::OK,
            &certificate(&c.certificate, Some(c.grant.as_str().to_owned())),
        ),
        Ok(Err(EnrollError::TokenInvalid)) => Refused::new(
            ErrorCode::TokenInvalid,
            "the bootstrap token is not recognised",
            "check the token file, or ask for a new token",
        )
        .into_response(),
        Ok(Err(EnrollError::TokenUsed)) => Refused::new(
            ErrorCode::TokenUsed,
            "the bootstrap token was already redeemed; nothing was issued",
            "ask for a new token",
        )
        .into_response(),
        Ok(Err(EnrollError::TokenExpired)) => Refused::new(
            ErrorCode::TokenExpired,
            "the bootstrap token has expired",
            "ask for a new token",
        )
        .into_response(),
        Ok(Err(EnrollError::Ca(e))) => Refused::from(e).into_response(),
        Err(_) => Refused::new(
            ErrorCode::Internal,
            "the CA operation did not complete",
            "retry later",
        )
        .into_response(),
    }
}

async fn children(State(s): State<Arc<Shared>>, a: Authorizer, req: Request) -> Response {
    let body: agentid_api::ChildRequest = match read_json(req).await {
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
    // The parent's own key must still be the one bound to it and not revoked: the CA checks
    // its store's binding; here the connection's key must be that binding's.
    let spki = a.peer().public_key.to_spki_der();
    let req = crate::ChildRequest {
        parent,
        parent_chain,
        agent: body.agent,
        key: KeySource::Csr(csr),
        ttl: body.ttl_secs.map(Duration::from_secs),
    };
    let res = run(&s, move |ca| {
        check_holder_key(ca, &req.parent, &spki)?;
        ca.issue_child(&req, SystemTime::now())
    })
    .await;
    match res {
        Ok(c) => json(StatusCode::OK, &certificate(&c, None)),
        Err(r) => r.into_response(),
    }
}

/// The connection's key must be the key the store binds to `identity`, and neither it nor the
/// identity's agent or task may be revoked.
fn check_holder_key(
    ca: &CertificateAuthority,
    identity: &TaskIdentity,
    spki: &[u8],
) -> Result<(), CaError> {
    let key = crate::csr::RequestedKey::from_spki_der(spki)?;
    let jkt = key.thumbprint();
    let store = ca.store()?;
    let bound = store
        .identity(identity.as_str())?
        .ok_or_else(|| CaError::UnknownIdentity(identity.as_str().to_owned()))?;
    if bound.jkt != jkt {
        return Err(CaError::KeyMismatch {
            identity: identity.as_str().to_owned(),
            bound: bound.jkt,
            requested: jkt,
        });
    }
    let now = unix_now();
    let agent = identity.agent();
    let task = identity.task_id();
    let grant_jti = store.task(task.as_str())?.map(|t| t.grant_jti);
    for r in store.revocations()? {
        if r.exp <= now {
            continue;
        }
        let hit = match r.kind {
            crate::RevocationKind::Jkt => r.value == jkt,
            crate::RevocationKind::Task => r.value == task.as_str(),
            crate::RevocationKind::Agent => r.value == agent.name(),
            crate::RevocationKind::Jti => grant_jti.as_deref() == Some(r.value.as_str()),
            // The CA does not see links; a revoked link ends the chain at verifiers.
            crate::RevocationKind::LinkJti => false,
            // Expanded into `task` entries when revoked.
            crate::RevocationKind::Principal => false,
        };
        if hit {
            return Err(CaError::Revoked {
                kind: r.kind.as_str(),
                value: r.value,
            });
        }
    }
    Ok(())
}

async fn renew(State(s): State<Arc<Shared>>, a: Authorizer, req: Request) -> Response {
    let body: ApiRenew = match read_json(req).await {
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
    let res = run(&s, move |ca| {
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
        Err(r) => r.into_response(),
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
    let body: ApiRevoke = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_caller_valid(&a) {
        return r.into_response();
    }
    // Version 1 of this route serves holders: a task holder may close its own task. Service
    // permissions (`revoke` per agent rule) come with the service rules of policy.
    let own_task: Option<TaskId> = match a.peer_id() {
        PeerId::Task(t) => Some(TaskIdentity::task_id(t)),
        PeerId::Service(_) => None,
    };
    let only_task = body.agent.is_none()
        && body.serial.is_none()
        && body.jkt.is_none()
        && body.jti.is_none()
        && body.iss.is_none();
    let target = match (&body.task, only_task, own_task) {
        (Some(t), true, Some(own)) if t == own.as_str() => RevokeTarget::Task(own),
        (None, _, _) | (_, false, _) => {
            return Refused::new(
                ErrorCode::BadRequest,
                "name exactly one target",
                "a holder may revoke its own task: {\"task\": \"...\"}",
            )
            .into_response()
        }
        _ => {
            return Refused::new(
                ErrorCode::NotPermitted,
                "a holder may revoke only its own task",
                "",
            )
            .into_response()
        }
    };
    let actor = a.peer_id().as_str().to_owned();
    let reason = body.reason.clone();
    let res = run(&s, move |ca| {
        let rec = ca.revoke(&target, reason.as_deref(), &actor, SystemTime::now())?;
        Ok((rec, ca.revocation_epoch()?))
    })
    .await;
    let (rec, epoch) = match res {
        Ok(r) => r,
        Err(r) => return r.into_response(),
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
