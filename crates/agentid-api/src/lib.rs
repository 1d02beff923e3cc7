//! # agentid-api
//!
//! The types of the agentid CA API (`spec/CA-API.md`): request and response bodies, the fixed
//! list of error codes with their HTTP statuses, and the header and route names. Both the CA
//! service (`agentid-ca`, feature `server`) and its clients depend on this crate; it has no I/O.
//!
//! Requests refuse unknown fields (`spec/CA-API.md` 1.2); responses accept them, so that a newer
//! service can add fields.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Route paths (`spec/CA-API.md` 3).
pub mod routes {
    /// `GET`: health.
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: the standard SPIFFE trust bundle.
    pub const BUNDLE: &str = "/v1/bundle";
    /// `GET`: the signed agentid bundle.
    pub const BUNDLE_AGENTID: &str = "/v1/bundle/agentid";
    /// `GET`: the latest revocation list (long-poll with `after` and `wait`).
    pub const REVOCATIONS: &str = "/v1/revocations";
    /// `POST`: redeem a bootstrap token.
    pub const ENROLL: &str = "/v1/enroll";
    /// `POST`: create a bootstrap token.
    pub const TOKENS: &str = "/v1/tokens";
    /// `POST` opens a task; `GET` lists live tasks.
    pub const TASKS: &str = "/v1/tasks";
    /// `POST`: a child in the caller's task.
    pub const CHILDREN: &str = "/v1/children";
    /// `POST`: renew the caller's certificate.
    pub const RENEW: &str = "/v1/renew";
    /// `POST`: revoke.
    pub const REVOKE: &str = "/v1/revoke";
}

/// Header names and limits.
pub mod headers {
    /// Seconds to wait before retrying (`429`, `503`).
    pub const RETRY_AFTER: &str = "retry-after";
    /// The revocation list's `seq`, quoted.
    pub const ETAG: &str = "etag";
    /// Conditional request on a list's `seq`.
    pub const IF_NONE_MATCH: &str = "if-none-match";
}

/// Largest request body, bytes (`spec/CA-API.md` 1.2).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most tasks one answer of `GET /v1/tasks` lists (`spec/CA-API.md` 3.11).
pub const MAX_TASKS_PER_PAGE: usize = 1000;
/// An answer of `GET /v1/tasks` stops adding tasks before its body would reach this many bytes
/// (`spec/CA-API.md` 3.11), well below what a client reads of an answer (1 MiB).
pub const MAX_TASKS_PAGE_BYTES: usize = 512 * 1024;
/// Longest `wait` of a revocation long-poll, seconds (`spec/CA-API.md` 3.4).
pub const MAX_WAIT_SECS: u64 = 30;
/// The reserved service name of the CA service's own certificate.
pub const CA_SERVICE_NAME: &str = "agentid-ca";

/// The fixed error codes (`spec/CA-API.md` 1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body or a field is malformed.
    BadRequest,
    /// 400: the CSR is malformed or asks for more than a key.
    BadCsr,
    /// 401: the route needs a caller identity.
    Unauthenticated,
    /// 401: unknown or malformed bootstrap token.
    TokenInvalid,
    /// 401: bootstrap token past its expiry.
    TokenExpired,
    /// 401: the connection's certificate is past `notAfter`.
    CertificateExpired,
    /// 403: the policy refuses.
    PolicyDenied,
    /// 403: revoked.
    Revoked,
    /// 403: authenticated, but not allowed this route on this target.
    NotPermitted,
    /// 404: no such route or object.
    NotFound,
    /// 409: the token was already redeemed.
    TokenUsed,
    /// 409: key bound to another identity or identity to another key.
    KeyMismatch,
    /// 409: the parent's task is not active.
    ParentNotActive,
    /// 409: the request exceeds what bounds it.
    CapReached,
    /// 413: body larger than [`MAX_BODY_BYTES`].
    BodyTooLarge,
    /// 429: too many requests or waiters.
    RateLimited,
    /// 503: the store is unavailable.
    StoreUnavailable,
    /// 503: at the concurrency bound or shutting down.
    Unavailable,
    /// 500: an unanticipated fault.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of the spec's table.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::BadRequest,
        ErrorCode::BadCsr,
        ErrorCode::Unauthenticated,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::CertificateExpired,
        ErrorCode::PolicyDenied,
        ErrorCode::Revoked,
        ErrorCode::NotPermitted,
        ErrorCode::NotFound,
        ErrorCode::TokenUsed,
        ErrorCode::KeyMismatch,
        ErrorCode::ParentNotActive,
        ErrorCode::CapReached,
        ErrorCode::BodyTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::StoreUnavailable,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status this code is sent with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadCsr => 400,
            ErrorCode::Unauthenticated
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::CertificateExpired => 401,
            ErrorCode::PolicyDenied | ErrorCode::Revoked | ErrorCode::NotPermitted => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TokenUsed
            | ErrorCode::KeyMismatch
            | ErrorCode::ParentNotActive
            | ErrorCode::CapReached => 409,
            ErrorCode::BodyTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::StoreUnavailable | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether responses with this code carry `Retry-After`.
    pub fn retry_after(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::StoreUnavailable | ErrorCode::Unavailable
        )
    }

    /// Whether the same request may succeed later with nothing changed: the codes sent with
    /// `Retry-After`, and `internal`. Every other code is the CA's answer to this request, and
    /// asking again gets it again (a client retrying them only adds load).
    pub fn is_transient(self) -> bool {
        self.retry_after() || self == ErrorCode::Internal
    }

    /// The wire form, e.g. `token_used`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadCsr => "bad_csr",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::CertificateExpired => "certificate_expired",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::Revoked => "revoked",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TokenUsed => "token_used",
            ErrorCode::KeyMismatch => "key_mismatch",
            ErrorCode::ParentNotActive => "parent_not_active",
            ErrorCode::CapReached => "cap_reached",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every refusal's body: `{code, message, hint}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The fixed code.
    pub code: ErrorCode,
    /// What happened to this request.
    pub message: String,
    /// What to do (may be empty).
    #[serde(default)]
    pub hint: String,
}

impl ApiError {
    /// A refusal.
    pub fn new(code: ErrorCode, message: impl Into<String>, hint: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl core::fmt::Display for ApiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if !self.hint.is_empty() {
            write!(f, " ({})", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// `GET /v1/revocations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationsResponse {
    /// The list's sequence number (also its `ETag`).
    pub seq: u64,
    /// The signed list, compact JWS.
    pub list: String,
}

/// `POST /v1/enroll`. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The bootstrap token.
    pub token: String,
    /// The CSR, base64url DER.
    pub csr: String,
}

impl core::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("csr", &self.csr)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/tokens`, and (with `csr`) the fields of `POST /v1/tasks`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The agent rule.
    pub agent: String,
    /// The task id (default: generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Scope tokens.
    pub scope: Vec<String>,
    /// Audience identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// Maximum delegation depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u8>,
    /// Certificate lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Grant lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ttl_secs: Option<u64>,
    /// The principal the task acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<serde_json::Value>,
    /// The grant's `may_delegate_to` (SPIFFE IDs); the agent rule's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_delegate_to: Option<Vec<String>>,
    /// The grant's limits (name to ceiling); the agent rule's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<std::collections::BTreeMap<String, u64>>,
    /// How long the token stays redeemable (tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// Response of `POST /v1/tokens`. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The secret token.
    pub token: String,
    /// The agent.
    pub agent: String,
    /// The task.
    pub task: String,
    /// Expiry, Unix seconds.
    pub expires: u64,
    /// Hex SHA-256 of the trust domain's root certificate DER, to pin.
    pub root_sha256: String,
}

impl core::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("agent", &self.agent)
            .field("task", &self.task)
            .field("expires", &self.expires)
            .field("root_sha256", &self.root_sha256)
            .finish_non_exhaustive()
    }
}

/// Most seconds a bootstrap token stays redeemable.
pub const MAX_TOKEN_EXPIRY_SECS: u64 = 7 * 24 * 3600;
/// Seconds a bootstrap token stays redeemable when the request names none.
pub const DEFAULT_TOKEN_EXPIRY_SECS: u64 = 600;

/// A bootstrap token file (`spec/CA-API.md` 3.6.1), handed to the agent through a file or the
/// environment, never a command line. The enrolling agent pins `root_sha256` and requires the
/// server to be `spiffe://<td>/svc/agentid-ca`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The secret token.
    pub token: String,
    /// The CA's URL, `https://HOST:PORT` (its enrollment listener).
    pub ca_url: String,
    /// Hex SHA-256 of the trust domain's root certificate DER.
    pub root_sha256: String,
    /// The task identity the token enrolls, `spiffe://<td>/agent/<agent>/task/<task>`.
    pub identity: String,
    /// The agent.
    pub agent: String,
    /// The task.
    pub task: String,
    /// Expiry, Unix seconds.
    pub expires: u64,
    /// The CA's mutual-TLS listener, `https://HOST:PORT`, for renewals (absent: `ca_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_url: Option<String>,
    /// The `seq` of the CA's signed agentid bundle when the token was made (CA-API 3.3), from
    /// the operator's side: the enrolled agent's pinned bundle starts at this sequence, so no
    /// older signed bundle is applied after it (absent: no floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_seq: Option<u64>,
}

impl core::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TokenFile")
            .field("ca_url", &self.ca_url)
            .field("root_sha256", &self.root_sha256)
            .field("identity", &self.identity)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Parses a token file's JSON. The error never quotes the file: `serde_json`'s own message
    /// quotes a string found where another type belongs, and the bare token written as a JSON
    /// string (what `jq .token` prints) would be shown in full.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TokenFileError> {
        serde_json::from_slice(bytes).map_err(|e| TokenFileError {
            json: !matches!(
                e.classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            ),
            line: e.line(),
            column: e.column(),
        })
    }
}

/// Why a token file could not be parsed: where, and whether it was JSON at all; never what the
/// file holds (see [`TokenFile::from_json`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFileError {
    json: bool,
    line: usize,
    column: usize,
}

impl core::fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (line, column) = (self.line, self.column);
        if self.json {
            write!(
                f,
                "not a token file: the JSON object must hold exactly token, ca_url, root_sha256, identity, agent, task (strings), expires (a number) and optionally renew_url (a string) and bundle_seq (a number) (line {line}, column {column})"
            )
        } else {
            write!(
                f,
                "not a token file: not JSON (line {line}, column {column})"
            )
        }
    }
}

impl std::error::Error for TokenFileError {}

/// `POST /v1/tasks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenTaskRequest {
    /// The agent's CSR, base64url DER.
    pub csr: String,
    /// What the task holds.
    #[serde(flatten)]
    pub task: TokenRequest,
}

/// `POST /v1/children`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildRequest {
    /// The child's agent rule.
    pub agent: String,
    /// The child's CSR, base64url DER.
    pub csr: String,
    /// Certificate lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// The parent's chain (compact), read unverified: it can only shorten the child's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_chain: Option<String>,
}

/// `POST /v1/renew`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The caller's own identity (refused if it names another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Certificate lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/revoke`: exactly one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// A task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// An agent name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// A certificate serial (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A key thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// A grant's `jti` (the task's grant; a link's is revoked by its issuer, not here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// A link's issuer: always refused by the service (`400 bad_request`, `spec/CA-API.md`
    /// 3.10), since links are revoked by their issuer with the local CLI. Kept so that such a
    /// request is refused for what it asks, not as an unknown field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Response of `POST /v1/revoke`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResponse {
    /// Entry kind (`task`, `agent`, `jkt`, `jti`).
    pub kind: String,
    /// Entry value.
    pub value: String,
    /// Until when the entry is kept, Unix seconds.
    pub exp: u64,
}

/// A certificate as issued (`/v1/enroll`, `/v1/tasks`, `/v1/children`, `/v1/renew`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The URI SAN.
    pub identity: String,
    /// Serial, hex.
    pub serial: String,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
    /// `[leaf, intermediate]`, base64url DER.
    pub certs: Vec<String>,
    /// The task's grant (compact JWS), for a task's root holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// One live task (`GET /v1/tasks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEntry {
    /// Task id.
    pub task: String,
    /// The root holder's identity.
    pub holder: String,
    /// Grant expiry, Unix seconds.
    pub exp: u64,
}

/// `GET /v1/tasks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TasksResponse {
    /// Live tasks, by task id.
    pub tasks: Vec<TaskEntry>,
    /// Present when more tasks may follow: ask again with `?after=` this task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_with_its_wire_name_and_a_listed_status() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert!(
                [400, 401, 403, 404, 409, 413, 429, 500, 503].contains(&code.status()),
                "{code}"
            );
            assert_eq!(
                code.retry_after(),
                matches!(code.status(), 429 | 503),
                "{code}"
            );
        }
    }

    #[test]
    fn error_body_is_code_message_hint() {
        let e = ApiError::new(
            ErrorCode::TokenUsed,
            "already redeemed",
            "ask for a new token",
        );
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": "token_used", "message": "already redeemed",
                               "hint": "ask for a new token"})
        );
    }

    #[test]
    fn debug_never_shows_a_bootstrap_token() {
        let secret = "s3cret-bootstrap-token";
        let shown = [
            format!(
                "{:?}",
                EnrollRequest {
                    token: secret.into(),
                    csr: "c".into(),
                }
            ),
            format!(
                "{:?}",
                TokenResponse {
                    token: secret.into(),
                    agent: "planner".into(),
                    task: "t1".into(),
                    expires: 1,
                    root_sha256: "ab".into(),
                }
            ),
            format!(
                "{:?}",
                TokenFile {
                    token: secret.into(),
                    ca_url: "https://ca:8443".into(),
                    root_sha256: "ab".into(),
                    identity: "spiffe://td/agent/planner/task/t1".into(),
                    agent: "planner".into(),
                    task: "t1".into(),
                    expires: 1,
                    renew_url: None,
                    bundle_seq: None,
                }
            ),
        ];
        for s in &shown {
            assert!(!s.contains(secret), "{s}");
        }
        assert!(shown[1].contains("planner"), "{}", shown[1]);
    }

    #[test]
    fn a_token_file_error_never_quotes_the_file() {
        let secret = "s3cret-bootstrap-token";
        let cases = [
            format!("\"{secret}\""),
            format!(
                r#"{{"token":"x","ca_url":"u","root_sha256":"r","identity":"i","agent":"a","task":"t","expires":"{secret}"}}"#
            ),
            format!(r#"{{"token":"{secret}","{secret}":1}}"#),
            format!(r#"{{"token":"{secret}"#),
        ];
        for text in &cases {
            let e = TokenFile::from_json(text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(!e.contains(secret), "{e}");
            assert!(e.contains("line 1"), "{e}");
        }
        let ok = r#"{"token":"x","ca_url":"u","root_sha256":"r","identity":"i","agent":"a","task":"t","expires":1}"#;
        assert_eq!(TokenFile::from_json(ok.as_bytes()).unwrap().expires, 1);
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        assert!(serde_json::from_str::<EnrollRequest>(r#"{"token":"t","csr":"c"}"#).is_ok());
        assert!(
            serde_json::from_str::<EnrollRequest>(r#"{"token":"t","csr":"c","agent":"x"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<RenewRequest>(r#"{"key":"k"}"#).is_err());
    }

    #[test]
    fn open_task_request_flattens_the_task_fields() {
        let r: OpenTaskRequest = serde_json::from_str(
            r#"{"csr":"c","agent":"planner","scope":["tickets:read"],"ttl_secs":60}"#,
        )
        .unwrap();
        assert_eq!(r.task.agent, "planner");
        assert_eq!(r.task.ttl_secs, Some(60));
        assert!(serde_json::from_str::<OpenTaskRequest>(
            r#"{"csr":"c","agent":"planner","scope":[],"key":"k"}"#
        )
        .is_err());
    }
}
