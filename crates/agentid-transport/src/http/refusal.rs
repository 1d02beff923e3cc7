//! Refusals: one stable code, one HTTP status, a generic message (spec/PROTOCOL.md section 22.6).
//! Details stay in the local log, never in the response.

use std::fmt;
use std::sync::Arc;

use agentid_protocol::ErrorCode;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

/// `proof_missing`: `agentid-chain` without `agentid-proof`.
pub const PROOF_MISSING: &str = ErrorCode::ProofMissing.as_str();
/// `presentation_changed`: a presentation that differs from the first one on the connection.
pub const PRESENTATION_CHANGED: &str = ErrorCode::PresentationChanged.as_str();
/// `peer_denied`: the peer identity is not admitted on this route.
pub const PEER_DENIED: &str = ErrorCode::PeerDenied.as_str();
/// `credential_expired`: the connection's deadline passed.
pub const CREDENTIAL_EXPIRED: &str = "credential_expired";
/// `bad_certificate`: the peer's certificate no longer validates (a bundle changed).
pub const BAD_CERTIFICATE: &str = "bad_certificate";
/// `busy`: the presentation could not be settled in time; retry.
pub const BUSY: &str = "busy";
/// `internal`: a local failure (never caused by the request).
pub const INTERNAL: &str = "internal";

/// Why a request is refused. Cheap to clone: a connection in `Failed` answers every later
/// request with the same refusal.
#[derive(Clone, PartialEq, Eq)]
pub struct Refusal {
    code: &'static str,
    status: StatusCode,
    detail: Arc<str>,
}

impl Refusal {
    fn new(code: &'static str, status: StatusCode, detail: impl Into<Arc<str>>) -> Self {
        Self {
            code,
            status,
            detail: detail.into(),
        }
    }

    /// 400 `bad_header`: the syntax of an agentid header.
    pub fn bad_header(detail: impl Into<Arc<str>>) -> Self {
        Self::new(
            ErrorCode::BadHeader.as_str(),
            StatusCode::BAD_REQUEST,
            detail,
        )
    }

    /// 431 `chain_too_large`: `agentid-chain` above 16384 bytes.
    pub fn chain_too_large(len: usize) -> Self {
        Self::new(
            ErrorCode::ChainTooLarge.as_str(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("agentid-chain of {len} bytes"),
        )
    }

    /// 401 with a challenge: proof, chain, deadline or revocation.
    pub fn unauthenticated(code: &'static str, detail: impl Into<Arc<str>>) -> Self {
        Self::new(code, StatusCode::UNAUTHORIZED, detail)
    }

    /// 401 from a protocol error (a proof, chain or revocation check).
    pub fn from_protocol(e: &agentid_protocol::Error) -> Self {
        Self::unauthenticated(e.code().as_str(), e.to_string())
    }

    /// 403: authorization (scope, authority, limits) or `peer_denied`.
    pub fn forbidden(code: &'static str, detail: impl Into<Arc<str>>) -> Self {
        Self::new(code, StatusCode::FORBIDDEN, detail)
    }

    /// 500 `internal`: a local misconfiguration or failure.
    pub fn internal(detail: impl Into<Arc<str>>) -> Self {
        Self::new(INTERNAL, StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    /// 503 `busy`.
    pub fn busy(detail: impl Into<Arc<str>>) -> Self {
        Self::new(BUSY, StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The local detail (for logs; never sent).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The generic message sent in the body.
    pub fn message(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "malformed agentid header",
            401 => "agentid authentication failed",
            403 => "not authorized",
            431 => "agentid-chain too large; use the framed transport",
            503 => "try again later",
            _ => "internal error",
        }
    }

    /// The `WWW-Authenticate` value of a 401: `Agentid error="<code>"`.
    pub fn challenge(&self) -> Option<HeaderValue> {
        (self.status == StatusCode::UNAUTHORIZED)
            .then(|| HeaderValue::from_str(&format!("Agentid error=\"{}\"", self.code)).ok())
            .flatten()
    }

    /// The JSON body `{"code": ..., "message": ...}`.
    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({ "code": self.code, "message": self.message() });
        Bytes::from(v.to_string())
    }

    /// The full response, in any body type that can be made from bytes. It is marked as a
    /// refusal, so that the server sends no hop proof with it (spec/PROTOCOL.md 22.4 step 3:
    /// refusals carry no proof), also when a layer or a handler returns it.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut r = Response::new(B::from(self.body()));
        r.extensions_mut().insert(IsRefusal);
        *r.status_mut() = self.status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(c) = self.challenge() {
            r.headers_mut().insert(WWW_AUTHENTICATE, c);
        }
        r
    }
}

/// The response extension that marks an agentid refusal (made by [`Refusal::to_response`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IsRefusal;

/// Whether `resp` is an agentid refusal rather than a response the application served.
pub(crate) fn is_refusal<B>(resp: &Response<B>) -> bool {
    resp.extensions().get::<IsRefusal>().is_some()
}

impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code, self.detail)
    }
}

impl std::error::Error for Refusal {}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Refusal {
    fn into_response(self) -> axum::response::Response {
        self.to_response()
    }
}
