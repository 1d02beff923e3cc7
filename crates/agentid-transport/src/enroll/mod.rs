//! Clients of the agentid CA service (`spec/CA-API.md`), behind the `enroll` feature.
//!
//! * [`enroll_with_token`]: an agent redeems a bootstrap token file for its task's first
//!   certificate. The key never leaves the agent (only a CSR is sent); the CA is authenticated
//!   by the root the token file pins, never on first use (CA-API 3.6.1).
//! * [`Enroller`]: holds the enrolled credential in a [`MemoryCredentials`] (a
//!   [`CredentialSource`] for servers and clients) and renews it at 40-50% of its lifetime, retrying
//!   until 90% of it.
//! * [`CaClient`]: platforms and parents call the CA over mutual TLS with their own
//!   credential: open a task from an agent's CSR, issue a child, create a token, revoke, list.
//!   The agent sends them a CSR and never its key.
//! * [`RevocationWatcher`]: long-polls the CA's revocation feed and applies each newer list,
//!   verified, to a live [`PeerVerification`], so that live sessions it covers end with
//!   `revoked`. [`BundleWatcher`] applies each newer signed agentid bundle (verified with the
//!   pinned bundle-signing key, [`BundleApplier`]) to it. [`WatcherHandle`] stops either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_api::{
    ApiError, CertificateResponse, ChildRequest, EnrollRequest, OpenTaskRequest, RenewRequest,
    RevokeRequest, RevokeResponse, TasksResponse, TokenFile, TokenRequest, TokenResponse,
};
use agentid_protocol::{
    BundleSet, PeerId, SpiffeId, TaskKey, TrustBundle, TrustDomain, VerifierConfig,
};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::http::{enrollment_client_config, HttpClient, HttpClientConnection};
use crate::{Credential, CredentialSource, MemoryCredentials, PeerPolicy, PeerVerification};

mod watch;
pub use watch::{
    BundleApplied, BundleApplier, BundleWatcher, RevocationWatcher, WatchOptions, WatchStatus,
    WatcherHandle,
};

/// Largest response body a client reads.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Largest revocation feed response the watcher reads: the protocol's cap on a list, plus the
/// JSON around it (a list of 100,000 entries is about 13 MB; 1 MiB held fewer than 10,000).
const MAX_LIST_RESPONSE_BYTES: usize = agentid_protocol::caps::MAX_LIST_BYTES + 4096;

/// Largest signed agentid bundle response the bundle watcher reads: the protocol's cap.
const MAX_SIGNED_BUNDLE_RESPONSE_BYTES: usize = agentid_protocol::MAX_SIGNED_BUNDLE_BYTES;

/// Largest body of an unsuccessful answer any client reads: a refusal is a `{code, message,
/// hint}` of a few hundred bytes, whatever the route would have answered on success.
const MAX_REFUSAL_BYTES: usize = 64 * 1024;

/// The most bytes of each text of the CA (a refusal's message or hint) an error keeps.
const MAX_CA_TEXT: usize = 512;

/// A token file is at most this large.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Why a call to the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The CA refused, with its `{code, message, hint}`.
    #[error("the CA refused ({status}): {error}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The refusal.
        error: ApiError,
        /// Its `Retry-After`, if it had one.
        retry_after: Option<Duration>,
    },
    /// The HTTP binding in front of the CA's routes refused (spec/CA-API.md 1.4, PROTOCOL.md
    /// 22.6): a `{code, message}` whose code is the binding's (`credential_expired`,
    /// `bad_header`, `revoked`, `busy`, ...), not one of the CA's.
    #[error("the CA's HTTP binding refused ({status} {code}): {message}")]
    BindingRefused {
        /// The HTTP status.
        status: u16,
        /// The binding's code (PROTOCOL.md 17, 22.6).
        code: String,
        /// Its message.
        message: String,
    },
    /// A `5xx` answer without a refusal body (a proxy in front of the CA, a restart): asking
    /// again may succeed.
    #[error("the CA's address answered {status} without a refusal body")]
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, if it had one.
        retry_after: Option<Duration>,
    },
    /// The CA's bundle holds no root with the token file's `root_sha256`: the server is not the
    /// pinned CA. The token was not sent.
    #[error("the server at {0} is not the CA the token file pins (no root with its root_sha256); the token was not sent")]
    RootMismatch(String),
    /// A file, URL or response that is not what it should be.
    #[error("{0}")]
    Invalid(String),
    /// TLS, connection or verification failure.
    #[error("{0}")]
    Transport(#[from] crate::Error),
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The call did not finish in time.
    #[error("the CA did not answer within {0:?}")]
    Timeout(Duration),
    /// A renewal answered with something other than the certificate asked for (CA-API 3.7,
    /// 3.9): a body that is not a certificate answer, or a certificate for another key,
    /// identity or root, not newer than the one held, living longer than asked, or with
    /// numbers not its own. It is what the CA answered (a faulty replica, or another party
    /// answering as the CA), not a local fault; nothing of it is used, and the certificate held
    /// stays in use. Another request may reach a replica that answers right: transient. Also a
    /// revocation answered with another entry than the target makes, or an `exp` no entry in
    /// force can have (CA-API 3.10): nobody is told a revocation happened that did not.
    #[error("{0}")]
    BadAnswer(String),
    /// A certificate answer whose grant is not the one asked for (CA-API 3.5, 3.7 to 3.9): none
    /// where a task's answer carries its grant, one where a child's, a renewal's or a service's
    /// carries none, or a grant that does not verify under the trust bundle this client holds,
    /// names another holder or key, is not a grant, or grants a wider scope or audience, or a
    /// later `exp`, than asked for. It is what the CA answered (a faulty replica, or another
    /// party answering as the CA), not a local fault; nothing of the answer is used.
    #[error(
        "the CA answered {route} with {problem}: nothing of the answer is used; {}",
        bad_grant_next_step(route)
    )]
    BadGrant {
        /// The route that answered.
        route: &'static str,
        /// What is wrong with the grant.
        problem: String,
    },
    /// [`Enroller::run`] stopped retrying: every renewal failed, transiently, from the renewal
    /// point until 90% of the certificate's lifetime. The certificate held stays usable until
    /// `not_after`; past it, the holder needs a new token (or the operator's re-issue).
    #[error("renewal gave up after {attempts} attempts, at 90% of the certificate's lifetime; the certificate held expires at {not_after} (Unix time); the last attempt: {last}")]
    GaveUp {
        /// The renewal requests tried for this certificate.
        attempts: u32,
        /// The held certificate's `notAfter` (Unix seconds).
        not_after: u64,
        /// Why the last one failed.
        last: Box<EnrollError>,
    },
}

/// What to do after [`EnrollError::BadGrant`] from `route`: an enrollment spent its token.
fn bad_grant_next_step(route: &str) -> &'static str {
    if route == agentid_api::routes::ENROLL {
        "the token is spent: ask its creator for another, and tell the CA's operator (a replica may be misconfigured, or another party answers as the CA)"
    } else {
        "ask again, and if it persists tell the CA's operator (a replica may be misconfigured, or another party answers as the CA)"
    }
}

impl EnrollError {
    /// The CA's refusal, if it was one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            EnrollError::Refused { error, .. } => Some(error),
            EnrollError::GaveUp { last, .. } => last.api_error(),
            _ => None,
        }
    }

    /// Whether the same request can succeed later without anyone changing anything: a
    /// connection or time-out failure, a refusal whose code
    /// [is transient](agentid_api::ErrorCode::is_transient) (`rate_limited`, `unavailable`,
    /// `store_unavailable`, `internal`), or an answer that is not what was asked for
    /// ([`EnrollError::BadAnswer`], [`EnrollError::BadGrant`] but an enrollment's, whose token
    /// is spent): a faulty replica's, and another may answer right. Every other refusal
    /// (`revoked`, `cap_reached` at the end of a task, `not_permitted`, ...) is the CA's
    /// answer, and asking again gets it again.
    pub fn is_transient(&self) -> bool {
        match self {
            EnrollError::Refused { error, .. } => error.code.is_transient(),
            // `busy` (503) and `internal` (500): the CA's server, not this request.
            EnrollError::BindingRefused { status, .. } => *status >= 500,
            EnrollError::Unavailable { .. }
            | EnrollError::Transport(_)
            | EnrollError::Io(_)
            | EnrollError::Timeout(_)
            | EnrollError::BadAnswer(_) => true,
            EnrollError::BadGrant { route, .. } => *route != agentid_api::routes::ENROLL,
            // The renewal window is over: asking again cannot renew in time.
            EnrollError::RootMismatch(_) | EnrollError::Invalid(_) | EnrollError::GaveUp { .. } => {
                false
            }
        }
    }

    /// How long the CA asked to be left alone (`Retry-After` of a `429` or `503`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EnrollError::Refused { retry_after, .. }
            | EnrollError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

type Result<T, E = EnrollError> = std::result::Result<T, E>;

fn invalid(m: impl Into<String>) -> EnrollError {
    EnrollError::Invalid(m.into())
}

/// A CA URL `https://HOST:PORT`, resolved.
#[derive(Clone, Debug)]
struct CaUrl {
    authority: String,
    host: String,
    port: u16,
}

/// Checks a CA URL as the clients here take it (`https://HOST:PORT`), so that a command line
/// can refuse a malformed one before connecting; the error says what is wrong.
pub fn check_ca_url(url: &str) -> Result<()> {
    CaUrl::parse(url).map(drop)
}

impl CaUrl {
    fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| invalid(format!("CA URL {url:?} must start with https://")))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(invalid(format!("CA URL {url:?} must be https://HOST:PORT")));
        }
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| invalid(format!("CA URL {url:?} needs a port")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(format!("CA URL {url:?}: bad port")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(CaUrl {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    async fn addr(&self) -> Result<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| invalid(format!("{} does not resolve", self.host)))
    }
}

fn b64(d: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, d)
}

fn sha256_hex(d: &[u8]) -> String {
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, d);
    h.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA service's identity in `td`.
fn ca_peer(td: &TrustDomain) -> Result<PeerId> {
    PeerId::parse(&format!(
        "spiffe://{}/svc/{}",
        td.as_str(),
        agentid_api::CA_SERVICE_NAME
    ))
    .map_err(|e| invalid(e.to_string()))
}

/// The response body as `T` on success, or the CA's refusal.
fn decode<T: serde::de::DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T> {
    decode_with(status, None, body)
}

/// [`decode`] of an [`Answer`], keeping its `Retry-After` with a refusal.
fn decode_answer<T: serde::de::DeserializeOwned>(answer: &Answer) -> Result<T> {
    decode_with(answer.status, answer.retry_after, &answer.body)
}

/// A successful answer's JSON body as `T`, which may borrow from `body` (the revocation feed's
/// list, up to 256 MiB, is not copied); the parser's error, which may quote the body, cut and
/// cleaned.
fn parse_answer<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        invalid(agentid_protocol::clean_text(
            format!("the CA's response is not the expected JSON: {e}"),
            MAX_CA_TEXT,
        ))
    })
}

fn decode_with<T: serde::de::DeserializeOwned>(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<T> {
    // The CA's text (a refusal's message and hint, a parser's error quoting the body) is cut
    // and cleaned before it reaches an error, which is printed and logged: a faulty replica or
    // a proxy may send 64 KiB of forged log lines and terminal escapes.
    let clean = |text: String| agentid_protocol::clean_text(text, MAX_CA_TEXT);
    if status.is_success() {
        return parse_answer(body);
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(error) => Err(EnrollError::Refused {
            status: status.as_u16(),
            error: ApiError {
                code: error.code,
                message: clean(error.message),
                hint: clean(error.hint),
            },
            retry_after,
        }),
        Err(_) => match binding_refusal(body) {
            Some((code, message)) => Err(EnrollError::BindingRefused {
                status: status.as_u16(),
                code: clean(code),
                message: clean(message),
            }),
            None if status.is_server_error() => Err(EnrollError::Unavailable {
                status: status.as_u16(),
                retry_after,
            }),
            None => Err(invalid(format!(
                "the CA answered {status} without a refusal body"
            ))),
        },
    }
}

/// A refusal of the HTTP binding (PROTOCOL.md 22.6): exactly `{code, message}`, strings.
fn binding_refusal(body: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Binding {
        code: String,
        message: String,
    }
    serde_json::from_slice::<Binding>(body)
        .ok()
        .filter(|b| !b.code.is_empty() && b.code.len() <= 64)
        .map(|b| (b.code, b.message))
}

/// One HTTP/1.1 request over a TLS connection made with `config` (no client certificate).
async fn request_plain(
    config: Arc<ClientConfig>,
    url: &CaUrl,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes)> {
    let fut = async {
        let addr = url.addr().await?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("agentid.invalid").map_err(|e| invalid(e.to_string()))?;
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| invalid(format!("HTTP: {e}")))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, url.authority.as_str());
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| invalid(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| invalid(format!("HTTP: {e}")))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| invalid(format!("HTTP body: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| EnrollError::Timeout(timeout))?
}

/// Accepts any server certificate (the TLS 1.3 handshake signature is still verified). Used
/// only to fetch the public bundle, whose root is then checked against the pinned hash; no
/// secret is sent on such a connection.
#[derive(Debug)]
struct PinnedFetchOnly;

impl ServerCertVerifier for PinnedFetchOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::provider::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::provider::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn bundle_fetch_config() -> Result<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(crate::provider::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EnrollError::Transport(crate::Error::Tls(e)))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedFetchOnly))
        .with_no_client_auth();
    c.alpn_protocols = vec![crate::http::ALPN_HTTP11.to_vec()];
    c.enable_sni = false;
    Ok(c)
}

/// Keeps from a bundle (JWKS) only the X509 authority whose certificate hashes to `root_sha256`.
/// Returns the pinned bundle's JSON (`{"keys": [that entry]}`), or `None` when no authority
/// matches. Nothing else of the answer is kept: it came over a connection that any server
/// certificate may answer (CA-API 3.6.1), so a `spiffe_sequence` or `spiffe_refresh_hint` in it
/// is whatever a network attacker chose (a raised sequence would refuse every genuine bundle
/// after it as a rollback). Its `spiffe_sequence` is the token file's `bundle_seq` (the
/// operator's side), when it has one.
fn pin_bundle(
    bundle: &[u8],
    root_sha256: &str,
    bundle_seq: Option<u64>,
) -> Result<Option<Vec<u8>>> {
    let v: serde_json::Value = serde_json::from_slice(bundle)
        .map_err(|e| invalid(format!("the CA's bundle is not JSON: {e}")))?;
    let Some(keys) = v.get("keys").and_then(serde_json::Value::as_array) else {
        return Err(invalid("the CA's bundle has no keys"));
    };
    let want = root_sha256.to_ascii_lowercase();
    let pinned: Vec<serde_json::Value> = keys
        .iter()
        .filter(|k| {
            let x509 = k.get("use").and_then(serde_json::Value::as_str) == Some("x509-svid");
            let der = k
                .get("x5c")
                .and_then(|x| x.get(0))
                .and_then(serde_json::Value::as_str)
                .and_then(|c| {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, c).ok()
                });
            x509 && der.is_some_and(|d| sha256_hex(&d) == want)
        })
        .cloned()
        .collect();
    if pinned.is_empty() {
        return Ok(None);
    }
    let mut set = serde_json::Map::new();
    set.insert("keys".to_owned(), pinned.into());
    // The token file's floor (the operator's side, never the answer's): no signed bundle
    // older than the one the token was made under is applied after it (CA-API 3.6.1).
    if let Some(seq) = bundle_seq {
        set.insert("spiffe_sequence".to_owned(), seq.into());
    }
    serde_json::to_vec(&set)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// Whether a certificate valid until `not_after`, received now, lives no longer than the
/// `ttl` seconds asked for (if any): the CA issues `notAfter = min(now + ttl, ...)` (PROTOCOL.md
/// 15.1), so with both clocks within `skew` seconds it ends by now + ttl + skew. `Err` says how
/// much longer it lives.
fn within_ttl(not_after: u64, ttl: Option<u64>, skew: u64) -> std::result::Result<(), String> {
    let Some(ttl) = ttl else {
        return Ok(());
    };
    let latest = crate::session::now_unix()
        .saturating_add(ttl)
        .saturating_add(skew);
    if not_after > latest {
        return Err(format!(
            "a certificate living longer than the {ttl} s asked for (notAfter {not_after}, {} s past the latest {latest} a {ttl} s lifetime allows with the {skew} s clock skew)",
            not_after - latest
        ));
    }
    Ok(())
}

/// Whether the numbers of a certificate answer (`serial`, `not_before`, `not_after`) are those
/// of its leaf `info` (CA-API 3.5): they are reported to whoever asked, so they must be the
/// certificate's. `Err` names the first that is not.
fn describes(
    resp: &CertificateResponse,
    info: &crate::svid::SvidInfo,
) -> std::result::Result<(), String> {
    let mismatch = if !resp.serial.eq_ignore_ascii_case(&info.serial) {
        Some(("serial", resp.serial.clone(), info.serial.clone()))
    } else if resp.not_before != info.not_before {
        Some((
            "not_before",
            resp.not_before.to_string(),
            info.not_before.to_string(),
        ))
    } else if resp.not_after != info.not_after {
        Some((
            "not_after",
            resp.not_after.to_string(),
            info.not_after.to_string(),
        ))
    } else {
        None
    };
    match mismatch {
        Some((field, said, is)) => Err(format!(
            "{field} {said} for a certificate whose {field} is {is}"
        )),
        None => Ok(()),
    }
}

/// The certificates of a CA response (base64url DER each).
fn decode_certs(certs: &[String]) -> Result<Vec<CertificateDer<'static>>> {
    certs
        .iter()
        .map(|c| {
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, c)
                .map(CertificateDer::from)
                .map_err(|_| invalid("a certificate in the CA's response is not base64url"))
        })
        .collect()
}

/// The public key of a request's CSR (base64url DER), to compare with what the CA certified.
fn csr_public_key(csr: &str) -> Result<agentid_protocol::PublicKey> {
    use x509_parser::prelude::FromDer;
    let der = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, csr)
        .map_err(|_| invalid("the request's CSR is not base64url"))?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| invalid(format!("the request's CSR is not a PKCS#10 request: {e}")))?;
    agentid_protocol::PublicKey::from_spki_der(req.certification_request_info.subject_pki.raw)
        .map_err(|e| invalid(format!("the request's CSR holds no usable key: {e}")))
}

/// What a request asked of a task's grant (CA-API 3.6, 3.7), to hold the grant answered
/// against: the CA may narrow and shorten what was asked for, never widen or lengthen it.
/// `None` is "not asked" (the rule's default, or, for an enrollment, bound by the token).
#[derive(Clone, Copy, Debug, Default)]
struct GrantAsked<'a> {
    scope: Option<&'a [String]>,
    audience: Option<&'a [String]>,
    task_ttl: Option<u64>,
    limits: Option<&'a std::collections::BTreeMap<String, u64>>,
    max_depth: Option<u8>,
    may_delegate_to: Option<&'a [String]>,
    principal: Option<Option<&'a serde_json::Value>>,
}

impl<'a> GrantAsked<'a> {
    /// What `POST /v1/tasks` asked for.
    fn of(req: &'a agentid_api::TokenRequest) -> Self {
        GrantAsked {
            scope: Some(&req.scope),
            audience: req.audience.as_deref(),
            task_ttl: req.task_ttl_secs,
            limits: req.limits.as_ref(),
            // The CA's default is 0, a sealed task (CA-API 3.6).
            max_depth: Some(req.max_depth.unwrap_or(0)),
            may_delegate_to: req.may_delegate_to.as_deref(),
            principal: Some(req.principal.as_ref()),
        }
    }
}

/// Checks the `grant` a certificate answer of `route` carries, for the leaf `leaf` (already
/// checked: the key and identity asked for), before anything of the answer is used (CA-API 3.7).
///
/// A task identity's answer carries its task's grant; any other carries none (`required` says
/// which). The grant must be a grant (no links), and verify, with the protocol's verifier, as
/// the chain the holder of `leaf` presents, under the trust bundles `verification` holds, now:
/// the trust domain's grant key, its claims and time, its `sub` the leaf's identity and its
/// `cnf` the leaf's key, and none of the revocation lists `verification` holds revoking it (by
/// `jti`, task, agent or key; a missing or stale list refuses nothing here). Without a grant key of the trust domain in those bundles (an enrolled
/// agent's pinned bundle holds the root only, CA-API 3.6.1) the signature cannot be checked
/// here, and only what the grant names is: its holder, key and `exp`. Either way it must grant
/// no more than `asked`: its scope, audience and delegation targets within those asked, its
/// `max_depth` at most the one asked (0 when none was), each limit asked for at most its
/// ceiling, its `exp` no later than now plus the `task_ttl` asked plus the clock skew, and a
/// principal only as asked.
fn check_grant(
    route: &'static str,
    grant: Option<&str>,
    required: bool,
    leaf: &crate::svid::SvidInfo,
    verification: &PeerVerification,
    asked: &GrantAsked<'_>,
) -> Result<()> {
    let bad = |problem: String| EnrollError::BadGrant {
        route,
        problem: agentid_protocol::clean_text(problem, MAX_CA_TEXT),
    };
    let grant = match (grant, required) {
        (Some(g), true) => g,
        (None, false) => return Ok(()),
        (None, true) => {
            return Err(bad(format!(
                "no grant for {}, where the answer for a task carries the task's grant",
                leaf.id
            )))
        }
        (Some(_), false) => {
            return Err(bad(format!(
                "a grant for {}, where this answer carries none (a child's and a renewal's hold their parent's or their own chain, a service holds none)",
                leaf.id
            )))
        }
    };
    let PeerId::Task(holder) = &leaf.id else {
        return Err(bad(format!("a grant for the service {}", leaf.id)));
    };
    let read = agentid_protocol::Chain::parse_unverified(grant)
        .and_then(|c| c.read_unverified())
        .map_err(|e| bad(format!("a grant that cannot be read ({e})")))?;
    if read.depth() != 0 {
        return Err(bad(format!(
            "a chain of {} links where the task's grant (none) is answered",
            read.depth()
        )));
    }
    let verifier = verification.verifier();
    let config = verifier.config();
    let td = holder.trust_domain();
    let skew = config.skew_seconds();
    let now = crate::session::now_unix();
    let holds_grant_keys = config
        .bundles()
        .get(&td)
        .is_some_and(|b| !b.grant_keys().is_empty());
    if holds_grant_keys {
        // The holder checks its grant as a verifier of its audience would (phase 8 asks whether
        // the verifier is in the audience; the holder is no verifier), enforcing the limit
        // names it carries (rules 4.0.3, 4.8: the verifier application's), with the revocation
        // lists this client holds (a grant one of them revokes is refused by every peer
        // holding it); a missing or stale list is left to the peers.
        let own = audience_member(&read, holder).map_err(&bad)?;
        let limits = read
            .limits()
            .map_err(|e| bad(format!("a grant whose terms cannot be read ({e})")))?;
        let checking = agentid_protocol::VerifierConfig::new(own, config.bundles().clone())
            .revocation_lists_of(config)
            .authority_policy(agentid_protocol::AuthorityPolicy::own_domain(&td))
            .skew(skew)
            .map(|c| {
                c.enforce_limits(limits.names().map(str::to_owned))
                    .danger_accept_missing_or_stale_revocations()
            })
            .and_then(agentid_protocol::Verifier::new)
            .map_err(|e| invalid(format!("cannot check the CA's grant: {e}")))?;
        checking
            .verify_chain(grant, leaf.id.as_spiffe_id(), &leaf.public_key, now)
            .map_err(|e| {
                bad(if e.code() == agentid_protocol::ErrorCode::Revoked {
                    format!(
                        "a grant for {} that a revocation list this client holds revokes ({e})",
                        leaf.id
                    )
                } else {
                    format!(
                        "a grant for {} that does not verify under the trust bundle this client holds ({e}); if the CA's grant key was rotated, update the bundle",
                        leaf.id
                    )
                })
            })?;
    } else {
        // Nothing to check its signature with: what it names, as the first verifier will.
        if read.holder() != holder {
            return Err(bad(format!(
                "a grant for {} instead of {}",
                read.holder(),
                leaf.id
            )));
        }
        if read.holder_key() != &leaf.public_key {
            return Err(bad(format!(
                "a grant for {} binding another key than its certificate's",
                leaf.id
            )));
        }
        if read.expires().saturating_add(skew) <= now {
            return Err(bad(format!("a grant that expired at {}", read.expires())));
        }
    }
    // Its terms against the request, read from the grant (the bytes that verified, when the
    // client could verify them: otherwise what the CA says it granted).
    check_grant_terms(&read, asked, now, skew).map_err(bad)
}

/// Whether the terms of the grant `read` are within `asked` (see [`check_grant`]); `Err` says
/// what is beyond.
fn check_grant_terms(
    read: &agentid_protocol::UnverifiedChain,
    asked: &GrantAsked<'_>,
    now: u64,
    skew: u64,
) -> std::result::Result<(), String> {
    let terms = |e: agentid_protocol::Error| format!("a grant whose terms cannot be read ({e})");
    let id_set = |ids: &[String], what: &str| {
        ids.iter()
            .map(|a| SpiffeId::parse(a))
            .collect::<agentid_protocol::Result<Vec<_>>>()
            .and_then(agentid_protocol::IdSet::new)
            .map_err(|e| format!("a grant for {what} that is not one ({e})"))
    };
    if let Some(ttl) = asked.task_ttl {
        let expires = read.expires();
        let latest = now.saturating_add(ttl).saturating_add(skew);
        if expires > latest {
            return Err(format!(
                "a grant living longer than the {ttl} s asked for (exp {expires}, {} s past the latest {latest} a {ttl} s task allows with the {skew} s clock skew)",
                expires - latest
            ));
        }
    }
    if let Some(scope) = asked.scope {
        let want = agentid_protocol::Scope::parse(&scope.join(" "))
            .map_err(|e| format!("a grant for a scope that is not one ({e})"))?;
        let granted = read.scope().map_err(terms)?;
        if !want.covers(&granted) {
            return Err(format!(
                "a grant of scope \"{granted}\", beyond the \"{want}\" asked for"
            ));
        }
    }
    if let Some(audience) = asked.audience {
        let want = id_set(audience, "an audience")?;
        let granted = read.audience().map_err(terms)?;
        if !want.covers(&granted) {
            let names: Vec<&str> = granted.ids().iter().map(|i| i.as_str()).collect();
            return Err(format!(
                "a grant for the audience {names:?}, beyond the one asked for"
            ));
        }
    }
    if let Some(limits) = asked.limits {
        let granted = read.limits().map_err(terms)?;
        // A name the grant lacks has no ceiling: wider than asked.
        let wider = limits
            .iter()
            .find(|(name, ceiling)| granted.get(name).is_none_or(|g| g > **ceiling));
        if let Some((name, ceiling)) = wider {
            return Err(format!(
                "a grant whose limit {name:?} is {}, beyond the {ceiling} asked for",
                granted
                    .get(name)
                    .map_or_else(|| "absent (no ceiling)".to_owned(), |g| g.to_string())
            ));
        }
    }
    if let Some(asked_depth) = asked.max_depth {
        let depth = read.max_depth().map_err(terms)?;
        if depth > asked_depth {
            return Err(format!(
                "a grant of max_depth {depth}, beyond the {asked_depth} asked for (a task that may delegate further than asked)"
            ));
        }
    }
    if let Some(targets) = asked.may_delegate_to {
        let want = id_set(targets, "delegation targets")?;
        let granted = read.may_delegate_to().map_err(terms)?;
        if !want.covers(&granted) {
            let names: Vec<&str> = granted.ids().iter().map(|i| i.as_str()).collect();
            return Err(format!(
                "a grant that may delegate to {names:?}, beyond the targets asked for"
            ));
        }
    }
    if let Some(principal) = asked.principal {
        let granted = read.principal();
        if principal != granted {
            return Err(format!(
                "a grant acting {}, where the request asked for {}",
                match granted {
                    Some(_) => "on behalf of a principal",
                    None => "autonomously",
                },
                match principal {
                    Some(_) => "its principal",
                    None => "none",
                }
            ));
        }
    }
    Ok(())
}

/// A verifier ID the effective audience of `read` (a grant of `holder`) covers, in the
/// holder's trust domain when the audience names one there: an entry that is a service or task
/// identity itself; for a trust domain, its CA service; for an agent, its task of the holder's
/// task id.
fn audience_member(
    read: &agentid_protocol::UnverifiedChain,
    holder: &agentid_protocol::TaskIdentity,
) -> std::result::Result<SpiffeId, String> {
    use agentid_protocol::IdKind;
    let aud = read
        .audience()
        .map_err(|e| format!("a grant whose audience cannot be read ({e})"))?;
    let td = holder.trust_domain();
    let member = |id: &SpiffeId| match id.kind() {
        IdKind::Service | IdKind::Task => Some(id.clone()),
        IdKind::TrustDomain => SpiffeId::parse(&format!(
            "{}/svc/{}",
            id.as_str(),
            agentid_api::CA_SERVICE_NAME
        ))
        .ok(),
        IdKind::Agent => SpiffeId::parse(&format!(
            "{}/task/{}",
            id.as_str(),
            holder.task_id().as_str()
        ))
        .ok(),
        IdKind::Other => None,
    };
    let ids = aud.ids();
    ids.iter()
        .filter(|i| i.trust_domain() == td)
        .chain(ids.iter().filter(|i| i.trust_domain() != td))
        .find_map(member)
        .ok_or_else(|| "a grant whose audience names no verifier".to_owned())
}

/// A credential obtained from the CA.
#[derive(Debug)]
pub struct Enrolled {
    /// The certificate chain and key, with the grant attached when the CA returned one.
    pub credential: Credential,
    /// The CA's response.
    pub response: CertificateResponse,
    /// The pinned trust bundle (only the pinned root; its `spiffe_sequence` the token file's
    /// `bundle_seq`, if any), as JSON.
    pub bundle_json: Vec<u8>,
    /// Verification against the pinned root (revocation lists not required), for talking to
    /// the CA again (renewal).
    pub verification: Arc<PeerVerification>,
}

/// Reads a token file (JSON, CA-API 3.6.1): a regular file, readable by its owner only (mode
/// `0600`: it carries a secret), of at most 64 KiB (no more is read), and held by the reader
/// as a credential directory's files are (`agentid_fs::read_held_secret`): whoever could
/// replace it would choose the CA, and the root, the agent enrolls with.
pub fn read_token_file(path: &std::path::Path) -> Result<TokenFile> {
    let text = agentid_fs::read_held_secret(path, MAX_TOKEN_FILE_BYTES)
        .map_err(|e| invalid(format!("token file: {e}")))?;
    TokenFile::from_json(&text).map_err(|e| invalid(e.to_string()))
}

/// The credential in a CA response, checked: it verifies against `verification`'s anchors now
/// and names `identity`.
fn credential_from(
    resp: &CertificateResponse,
    key: TaskKey,
    verification: &PeerVerification,
    identity: &str,
) -> Result<Credential> {
    if resp.identity != identity {
        return Err(invalid(format!(
            "the CA issued {} instead of {identity}",
            resp.identity
        )));
    }
    let chain = decode_certs(&resp.certs)?;
    let mut cred = Credential::new(chain, key)?;
    cred.verify_with(&verification.trust_store(), UnixTime::now())?;
    if cred.identity().as_str() != identity {
        return Err(invalid("the CA's certificate names another identity"));
    }
    describes(resp, cred.info()).map_err(|why| {
        invalid(format!(
            "the CA answered the enrollment with {why}: nothing of it is used (the token is spent; ask its creator for another), and tell the CA's operator"
        ))
    })?;
    // An agent's task comes with its grant (the terms the token binds are not known here); a
    // service's certificate with none (CA-API 3.5).
    check_grant(
        agentid_api::routes::ENROLL,
        resp.grant.as_deref(),
        matches!(cred.identity(), PeerId::Task(_)),
        cred.info(),
        verification,
        &GrantAsked::default(),
    )?;
    if let Some(g) = &resp.grant {
        cred = cred.with_chain(g.clone());
    }
    Ok(cred)
}

/// Redeems `token` for its task's first certificate, for `key` (only a CSR leaves this process).
///
/// Follows CA-API 3.6.1: the bundle is fetched and pinned to `token.root_sha256` before the
/// token is sent ([`EnrollError::RootMismatch`] otherwise); the enrollment connection requires the
/// server to be `spiffe://<td>/svc/agentid-ca` under that root; the returned chain must verify
/// against the same root and name the token's identity, and an agent's answer must carry a
/// grant (a service's none) for that identity and the key, unexpired (its signature is not
/// checked: the pinned bundle holds no grant key; [`EnrollError::BadGrant`] otherwise).
pub async fn enroll_with_token(
    token: &TokenFile,
    key: TaskKey,
    timeout: Duration,
) -> Result<Enrolled> {
    let url = CaUrl::parse(&token.ca_url)?;
    let identity =
        SpiffeId::parse(&token.identity).map_err(|e| invalid(format!("identity: {e}")))?;
    let td = identity.trust_domain();
    // 1. The public bundle, pinned by hash. Nothing secret goes over this connection.
    let (status, body) = request_plain(
        Arc::new(bundle_fetch_config()?),
        &url,
        Method::GET,
        agentid_api::routes::BUNDLE,
        None,
        timeout,
    )
    .await?;
    if !status.is_success() {
        return Err(invalid(format!("GET /v1/bundle answered {status}")));
    }
    let pinned = pin_bundle(&body, &token.root_sha256, token.bundle_seq)?
        .ok_or_else(|| EnrollError::RootMismatch(token.ca_url.clone()))?;
    let bundle =
        TrustBundle::parse(&td, &pinned).map_err(|e| invalid(format!("the CA's bundle: {e}")))?;
    let mut set = BundleSet::new();
    set.insert(bundle).map_err(|e| invalid(e.to_string()))?;
    let verification = PeerVerification::new(
        VerifierConfig::new(identity.clone(), set).danger_accept_missing_or_stale_revocations(),
    )?;
    // 2. The token, only to the pinned CA's service identity.
    let config = enrollment_client_config(&verification, PeerPolicy::exact(ca_peer(&td)?))?;
    let csr = key.csr(&identity).map_err(|e| invalid(e.to_string()))?;
    let req = serde_json::to_vec(&EnrollRequest {
        token: token.token.clone(),
        csr: b64(&csr),
    })
    .map_err(|e| invalid(e.to_string()))?;
    let (status, body) = request_plain(
        Arc::new(config),
        &url,
        Method::POST,
        agentid_api::routes::ENROLL,
        Some(req),
        timeout,
    )
    .await?;
    let response: CertificateResponse = decode(status, &body)?;
    // 3. The chain verifies against the same root and names the token's identity.
    let credential = credential_from(&response, key, &verification, &token.identity)?;
    Ok(Enrolled {
        credential,
        response,
        bundle_json: pinned,
        verification,
    })
}

/// The certificate and key of another source, never its delegation chain: the CA's routes take
/// none, and a chain is not handed to a server it was not meant for.
#[derive(Debug)]
struct WithoutChain {
    inner: Arc<dyn CredentialSource>,
    cache: std::sync::Mutex<Option<(Arc<Credential>, Arc<Credential>)>>,
}

impl CredentialSource for WithoutChain {
    fn current(&self) -> Option<Arc<Credential>> {
        let cur = self.inner.current()?;
        if cur.chain().is_none() {
            return Some(cur);
        }
        let mut cache = self.cache.lock().ok()?;
        if let Some((orig, stripped)) = cache.as_ref() {
            if Arc::ptr_eq(orig, &cur) {
                return Some(stripped.clone());
            }
        }
        let stripped = Arc::new(
            Credential::with_shared_key(cur.cert_chain().to_vec(), cur.shared_key()).ok()?,
        );
        *cache = Some((cur, stripped.clone()));
        Some(stripped)
    }

    fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.subscribe()
    }
}

/// A kept connection is reused only while it can still send for this long (before the earlier
/// of both certificates' `notAfter` minus the client's close margin): a request never starts on
/// a connection about to be dropped under it.
pub(crate) const REUSE_MARGIN: Duration = Duration::from_secs(2);

/// A kept connection idle for longer than this is closed rather than reused: the CA closes an
/// idle HTTP/1.1 connection after its header read timeout (10 s by default), and a request
/// written just as the server closes could not be told apart from one it processed.
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(5);

/// The connection a [`CaClient`] keeps between calls, shared by its clones: at most one, idle,
/// with the [`PeerVerification::epoch`] of the state it was checked with. A call takes it out
/// while it runs, so concurrent calls never wait for one another (those that find none open
/// their own; one of them is kept afterwards).
#[derive(Default)]
struct Kept(std::sync::Mutex<Option<(HttpClientConnection, u64, tokio::time::Instant)>>);

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").finish_non_exhaustive()
    }
}

impl Kept {
    fn take(&self) -> Option<(HttpClientConnection, u64, tokio::time::Instant)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Keeps `conn` (checked at `epoch`, idle from now) when it is still usable and no other
    /// one is kept.
    fn put(&self, conn: HttpClientConnection, epoch: u64) {
        if !conn.is_usable() {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_none() {
            *kept = Some((conn, epoch, tokio::time::Instant::now()));
        }
    }
}

/// Whether `a` and `b` are the same certificate (the same leaf).
fn same_certificate(a: &Credential, b: &Credential) -> bool {
    std::ptr::eq(a, b) || a.cert_chain().first() == b.cert_chain().first()
}

/// Whether a failed request certainly never left this process: the connection had closed (or
/// was not ready) before the request was written. Such a request is sent again on a new
/// connection whatever it is.
fn unsent(e: &crate::Error) -> bool {
    match e {
        crate::Error::Io(io) => io
            .get_ref()
            .and_then(|i| i.downcast_ref::<hyper::Error>())
            .is_some_and(|h| h.is_canceled() || h.is_closed()),
        _ => false,
    }
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// The `Retry-After` seconds, if given.
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Bytes,
    /// The credential the connection presented (what a renewal renews).
    pub(crate) presented: Arc<Credential>,
}

/// Whether a request may be sent again when the kept connection it went out on failed before
/// an answer: reads, and renewals (a second renewal of the same key issues another
/// certificate, nothing else). Anything else is sent again only if it never left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    Safe,
    OnlyUnsent,
}

/// One request on `conn`, the response body read whole (at most `limit` bytes).
async fn exchange(
    conn: &mut HttpClientConnection,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    limit: usize,
) -> Result<Answer> {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.unwrap_or_default())
        .map_err(|e| invalid(e.to_string()))?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(agentid_api::headers::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // A refusal is small whatever the route answers on success.
    let limit = if status.is_success() {
        limit
    } else {
        limit.min(MAX_REFUSAL_BYTES)
    };
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| body_error(&*e, limit))?
        .to_bytes();
    Ok(Answer {
        status,
        retry_after,
        body,
        presented: conn.credential().clone(),
    })
}

/// Why a response body could not be read: larger than `limit` (the CA's answer, not
/// transient), or the connection failed under it (cut off mid-body: transient, like any other
/// connection failure).
fn body_error(e: &(dyn std::error::Error + Send + Sync + 'static), limit: usize) -> EnrollError {
    if e.is::<http_body_util::LengthLimitError>() {
        return invalid(format!("the CA's answer is larger than {limit} bytes"));
    }
    EnrollError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("the CA's answer was cut off: {e}"),
    ))
}

/// A client of the CA's mutual-TLS listener, presenting the caller's own certificate (a
/// service's, or a parent task's), never its delegation chain.
///
/// The CA is checked with the state of the verification it is given (anchors, and the held
/// list of the CA's trust domain: a CA certificate that list revokes is refused), but a stale
/// or missing list of that domain does not refuse the CA (spec/CA-API.md 1.1): that list comes
/// from the CA itself (3.4), so refusing the CA for it would keep it stale for good, and with
/// it every verification that needs it. Each connection is checked with the state as it is
/// when the connection is made; a kept connection is not reused once that state changed.
///
/// It keeps one HTTP/1.1 connection between calls (shared by its clones) and opens a new one
/// when that one was closed, has been idle for a few seconds, is near the earlier of both
/// certificates' `notAfter`, or presents another certificate than the credential source's
/// current one (a rotation is never followed by a request under the old certificate). A read
/// or a renewal whose kept connection fails before an answer is sent once more on a new
/// connection; any other request only if it was never written.
#[derive(Clone, Debug)]
pub struct CaClient {
    url: CaUrl,
    /// The verification the caller gave: its anchors and lists check the CA.
    verification: Arc<PeerVerification>,
    /// The HTTP client of the verification's state at an epoch (see [`checking_client`]),
    /// shared by the clones.
    client: Arc<std::sync::Mutex<(u64, HttpClient)>>,
    /// What `client` presents (the caller's credential without its chain).
    credentials: Arc<dyn CredentialSource>,
    kept: Arc<Kept>,
    timeout: Duration,
    /// The CA's (and the caller's) trust domain.
    td: TrustDomain,
}

impl CaClient {
    /// A client of the CA at `ca_url` (`https://HOST:PORT`, its mutual-TLS listener),
    /// presenting `credentials` and verifying the CA with `verification` as
    /// `spiffe://<td>/svc/agentid-ca`, `td` being the credential's trust domain.
    pub fn new(
        ca_url: &str,
        credentials: Arc<dyn CredentialSource>,
        verification: Arc<PeerVerification>,
        timeout: Duration,
    ) -> Result<Self> {
        let url = CaUrl::parse(ca_url)?;
        let current = credentials.current().ok_or(crate::Error::NoCredential)?;
        let td = SpiffeId::parse(current.identity().as_str())
            .map_err(|e| invalid(e.to_string()))?
            .trust_domain();
        // The CA routes take no chain: identity-only calls.
        let credentials: Arc<dyn CredentialSource> = Arc::new(WithoutChain {
            inner: credentials,
            cache: std::sync::Mutex::new(None),
        });
        let client = checking_client(&verification, credentials.clone(), &td, timeout)?;
        Ok(CaClient {
            url,
            verification,
            client: Arc::new(std::sync::Mutex::new(client)),
            credentials,
            kept: Arc::new(Kept::default()),
            timeout,
            td,
        })
    }

    /// The HTTP client of the verification's current state, and that state's epoch.
    fn current_client(&self) -> Result<(u64, HttpClient)> {
        let epoch = self.verification.epoch();
        let mut held = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if held.0 != epoch {
            *held = checking_client(
                &self.verification,
                self.credentials.clone(),
                &self.td,
                self.timeout,
            )?;
        }
        Ok(held.clone())
    }

    /// A new connection to the CA, presenting the current credential, with the epoch of the
    /// verification state it was checked with.
    async fn connect(&self) -> Result<(HttpClientConnection, u64)> {
        let (epoch, client) = self.current_client()?;
        let addr = self.url.addr().await?;
        Ok((client.connect(addr, &self.url.authority).await?, epoch))
    }

    /// A connection presenting the current credential that can send for at least `min_left`
    /// (see [`CaClient`]): the kept one when it qualifies, else a new one. `true` when it was
    /// the kept one.
    async fn checkout(&self, min_left: Duration) -> Result<(HttpClientConnection, u64, bool)> {
        let current = self
            .credentials
            .current()
            .ok_or(crate::Error::NoCredential)?;
        if let Some((conn, epoch, idle_since)) = self.kept.take() {
            if conn.is_usable()
                && epoch == self.verification.epoch()
                && idle_since.elapsed() <= MAX_IDLE
                && conn.time_left() >= min_left.max(REUSE_MARGIN)
                && same_certificate(conn.credential(), &current)
            {
                return Ok((conn, epoch, true));
            }
            // Not reused: dropped (closed) here.
        }
        let (conn, epoch) = self.connect().await?;
        Ok((conn, epoch, false))
    }

    /// One request on a connection from [`CaClient::checkout`], sent once more on a new
    /// connection when the kept one failed and `repeat` allows it; the connection is kept
    /// afterwards when the answer was read whole. `path` is made for the connection it goes
    /// out on (its time left).
    pub(crate) async fn request(
        &self,
        method: Method,
        path: impl Fn(&HttpClientConnection) -> String,
        body: Option<Bytes>,
        limit: usize,
        repeat: Repeat,
        min_left: Duration,
    ) -> Result<Answer> {
        let (mut conn, mut epoch, reused) = self.checkout(min_left).await?;
        let first_path = path(&conn);
        let first = exchange(&mut conn, method.clone(), &first_path, body.clone(), limit).await;
        let answer = match first {
            Ok(a) => a,
            Err(EnrollError::Transport(e)) if reused && (repeat == Repeat::Safe || unsent(&e)) => {
                // The kept connection was closed under the request (the server's idle timeout,
                // a restart): a new connection, once.
                tracing::debug!(error = %e, "agentid CA client: the kept connection failed; sending again on a new one");
                drop(conn);
                (conn, epoch) = self.connect().await?;
                let again = path(&conn);
                exchange(&mut conn, method, &again, body, limit).await?
            }
            Err(e) => return Err(e),
        };
        self.kept.put(conn, epoch);
        Ok(answer)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        repeat: Repeat,
    ) -> Result<T> {
        self.call_limited(method, path, body, MAX_RESPONSE_BYTES, repeat)
            .await
    }

    /// [`CaClient::call`] reading a response body of at most `limit` bytes.
    async fn call_limited<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: usize,
        repeat: Repeat,
    ) -> Result<T> {
        decode_answer(&self.answer(method, path, body, limit, repeat).await?)
    }

    /// The answer to one request, read whole (at most `limit` bytes) within the client's
    /// timeout.
    async fn answer(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: usize,
        repeat: Repeat,
    ) -> Result<Answer> {
        let fut = self.request(
            method,
            |_| path.to_owned(),
            body.map(Bytes::from),
            limit,
            repeat,
            REUSE_MARGIN,
        );
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| EnrollError::Timeout(self.timeout))?
    }

    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let b = serde_json::to_vec(body).map_err(|e| invalid(e.to_string()))?;
        // Renewals, safe to send again, go through `CaClient::renew`.
        self.call(Method::POST, path, Some(b), Repeat::OnlyUnsent)
            .await
    }

    /// Opens a task for an agent from the agent's CSR (`POST /v1/tasks`, needs `open_task`).
    ///
    /// The answer is checked before it is returned (CA-API 3.7): its chain validates against the
    /// verification's anchors now, for the CSR's key, and names a task identity of the agent
    /// asked for (and of the task, when one was named) in the caller's trust domain; its grant
    /// verifies as that holder's chain under the verification's bundles and grants no more than
    /// asked ([`EnrollError::BadGrant`] otherwise).
    pub async fn open_task(&self, req: &OpenTaskRequest) -> Result<CertificateResponse> {
        let resp: CertificateResponse = self.post(agentid_api::routes::TASKS, req).await?;
        self.check_issued(
            agentid_api::routes::TASKS,
            &resp,
            &req.csr,
            &req.task.agent,
            req.task.task.as_deref(),
            req.task.ttl_secs,
            Some(GrantAsked::of(&req.task)),
        )?;
        Ok(resp)
    }

    /// Issues a child in the caller's own task from the child's CSR (`POST /v1/children`).
    ///
    /// The answer is checked before it is returned (CA-API 3.8): its chain validates against the
    /// verification's anchors now, for the CSR's key, and names a task identity of the child
    /// agent asked for in the caller's own task; it carries no grant. A service holds no task:
    /// a child answered to one is refused.
    pub async fn issue_child(&self, req: &ChildRequest) -> Result<CertificateResponse> {
        let current = self
            .credentials
            .current()
            .ok_or(crate::Error::NoCredential)?;
        let task = match current.identity() {
            PeerId::Task(t) => Some(t.task_id().as_str().to_owned()),
            PeerId::Service(_) => None,
        };
        let resp: CertificateResponse = self.post(agentid_api::routes::CHILDREN, req).await?;
        // A service holds no task to issue a child in (the CA refuses it, CA-API 3.8): a child
        // answered to one is of a task nobody asked for.
        let Some(task) = task else {
            return Err(invalid(format!(
                "the CA answered {} with a child ({}) for {}, a service, which holds no task to issue one in: nothing of it is used; tell the CA's operator (a replica may be misconfigured)",
                agentid_api::routes::CHILDREN,
                agentid_protocol::clean_text(resp.identity, 256),
                current.identity()
            )));
        };
        self.check_issued(
            agentid_api::routes::CHILDREN,
            &resp,
            &req.csr,
            &req.agent,
            Some(&task),
            req.ttl_secs,
            None,
        )?;
        Ok(resp)
    }

    /// Checks that `resp`, the answer of `route` to a request with the CSR `csr` (base64url
    /// DER) for `agent` (and `task`, if given), is the certificate asked for: a chain that
    /// validates against the verification's anchors now (both roles), for the CSR's key,
    /// naming `resp.identity`, a task identity of `agent` (and `task`) in the caller's trust
    /// domain, and living no longer than the `ttl` asked for, if any; with the task's grant,
    /// as `grant` asked for it ([`check_grant`]), when `grant` is given (a task's answer), and
    /// without one otherwise (a child's). What does not is refused, never handed on to be
    /// written as an agent's certificate.
    #[allow(clippy::too_many_arguments)]
    fn check_issued(
        &self,
        route: &'static str,
        resp: &CertificateResponse,
        csr: &str,
        agent: &str,
        task: Option<&str>,
        ttl: Option<u64>,
        grant: Option<GrantAsked<'_>>,
    ) -> Result<()> {
        let refused = |what: String| {
            invalid(format!(
                "the CA answered {route} with {what}: nothing of it is used; ask again, and if it persists tell the CA's operator (a replica may be misconfigured)"
            ))
        };
        let info = self.verified_leaf(resp, &refused)?;
        let asked = csr_public_key(csr)?;
        if info.public_key != asked {
            return Err(refused(format!(
                "a certificate for another key than the request's CSR ({})",
                info.id
            )));
        }
        let matches = match &info.id {
            PeerId::Task(t) => {
                info.id.as_str() == resp.identity
                    && t.as_spiffe_id().trust_domain() == self.td
                    && t.agent().name() == agent
                    && task.is_none_or(|want| t.task_id().as_str() == want)
            }
            PeerId::Service(_) => false,
        };
        if !matches {
            return Err(refused(format!(
                "a certificate for {} (said to be {}) instead of a task of agent {agent}{}",
                info.id,
                resp.identity,
                task.map(|t| format!(" in task {t}")).unwrap_or_default()
            )));
        }
        let skew = self.verification.verifier().config().skew_seconds();
        if let Err(why) = within_ttl(info.not_after, ttl, skew) {
            return Err(refused(why));
        }
        describes(resp, &info).map_err(refused)?;
        check_grant(
            route,
            resp.grant.as_deref(),
            grant.is_some(),
            &info,
            &self.verification,
            &grant.unwrap_or_default(),
        )
    }

    /// The leaf of a certificate answer, once its chain validates against the verification's
    /// anchors now, for both roles; otherwise `refused` says why.
    fn verified_leaf(
        &self,
        resp: &CertificateResponse,
        refused: &dyn Fn(String) -> EnrollError,
    ) -> Result<crate::svid::SvidInfo> {
        let chain = decode_certs(&resp.certs)?;
        let (leaf, rest) = chain
            .split_first()
            .ok_or_else(|| refused("no certificate".into()))?;
        let trust = self.verification.trust_store();
        let now = UnixTime::now();
        trust
            .verify(leaf, rest, now, crate::svid::CertUsage::ClientAuth)
            .and_then(|_| trust.verify(leaf, rest, now, crate::svid::CertUsage::ServerAuth))
            .map_err(|e| refused(format!("a certificate that does not verify ({e})")))
    }

    /// Creates a bootstrap token (`POST /v1/tokens`, needs `create_token`).
    ///
    /// The answer is checked before it is returned (CA-API 3.6): it is for the agent (and the
    /// task, when one was named) asked for, redeemable no longer than asked (`expires`), and its
    /// `root_sha256`, the root an enrolling agent will pin, is the hash of a root of the trust
    /// domain's bundle that this client verifies the CA with, never one the answer alone
    /// vouches for.
    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenResponse> {
        let resp: TokenResponse = self.post(agentid_api::routes::TOKENS, req).await?;
        let refused = |what: String| {
            invalid(format!(
                "the CA answered {} with {what}: the token is not used (unredeemed, it expires); ask again, and if it persists tell the CA's operator (a replica may be misconfigured)",
                agentid_api::routes::TOKENS
            ))
        };
        if resp.agent != req.agent || req.task.as_deref().is_some_and(|t| t != resp.task) {
            return Err(refused(format!(
                "a token for agent {} task {} instead of agent {}{}",
                resp.agent,
                resp.task,
                req.agent,
                req.task
                    .as_deref()
                    .map(|t| format!(" task {t}"))
                    .unwrap_or_default()
            )));
        }
        // The token file says until when the token is redeemable, and whoever hands it on
        // counts on it: no later than asked (600 s when not named), with both clocks within
        // the skew.
        let verifier = self.verification.verifier();
        let asked = req
            .expires_in_secs
            .unwrap_or(agentid_api::DEFAULT_TOKEN_EXPIRY_SECS);
        let latest = crate::session::now_unix()
            .saturating_add(asked)
            .saturating_add(verifier.config().skew_seconds());
        if resp.expires > latest {
            return Err(refused(format!(
                "a token that expires at {}, {} s past the latest {latest} the {asked} s asked for allow",
                resp.expires,
                resp.expires - latest
            )));
        }
        let want = resp.root_sha256.to_ascii_lowercase();
        let known = verifier
            .config()
            .bundles()
            .iter()
            .filter(|b| b.trust_domain() == &self.td)
            .flat_map(|b| b.x509_authorities())
            .any(|a| sha256_hex(&a.der) == want);
        if !known {
            return Err(refused(format!(
                "root_sha256 {want}, the hash of no root of {} that this client trusts",
                self.td.as_str()
            )));
        }
        Ok(resp)
    }

    /// Revokes a target (`POST /v1/revoke`). The answer must name the entry the target makes
    /// (CA-API 3.10: a task, agent, key or grant `jti` as asked; a certificate serial's key as a
    /// `jkt`), with an `exp` that keeps it in force (the CA sends the answer once a served list
    /// holds the entry, whose `exp` is at least the revocation's time plus the skew, an integer
    /// of at most 2^53 - 1): any other answer is [`EnrollError::BadAnswer`], so that nobody is
    /// told a revocation happened that did not.
    pub async fn revoke(&self, req: &RevokeRequest) -> Result<RevokeResponse> {
        let asked_at = crate::session::now_unix();
        let resp: RevokeResponse = self.post(agentid_api::routes::REVOKE, req).await?;
        let skew = self.verification.verifier().config().skew_seconds();
        check_revoke_answer(req, &resp)
            .and_then(|()| check_revoke_exp(resp.exp, asked_at, skew))
            .map_err(|what| {
            EnrollError::BadAnswer(format!(
                "the CA answered {} with {what}: do not count on this revocation; look it up with `agentid revocations list`, ask again, and tell the CA's operator (a replica may be misconfigured)",
                agentid_api::routes::REVOKE
            ))
        })?;
        Ok(resp)
    }

    /// Renews the caller's own certificate (`POST /v1/renew`).
    ///
    /// The answer is checked before it is returned (CA-API 3.7, 3.9): its chain validates
    /// against the verification's anchors now (both roles), for the key and identity of the
    /// certificate the request presented, living no longer than the `ttl_secs` asked for, with
    /// its leaf's numbers; and it is a new certificate, not the one presented nor one issued
    /// before it (a `notBefore` earlier than the presented one's by more than the clock skew):
    /// whoever answers as the CA could otherwise replay an earlier certificate of the same key,
    /// ending sooner, in its place. A renewal keeps the chain held: an answer carrying a grant
    /// is refused.
    pub async fn renew(&self, req: &RenewRequest) -> Result<CertificateResponse> {
        let route = agentid_api::routes::RENEW;
        let b = serde_json::to_vec(req).map_err(|e| invalid(e.to_string()))?;
        let answer = self
            .answer(
                Method::POST,
                route,
                Some(b),
                MAX_RESPONSE_BYTES,
                Repeat::Safe,
            )
            .await?;
        // Whatever the answer's checks find wrong is the CA's answer, not a local fault.
        self.check_renewal(req, &answer).map_err(|e| match e {
            EnrollError::Invalid(m) => EnrollError::BadAnswer(m),
            e => e,
        })
    }

    /// The checks of [`CaClient::renew`] on the `answer` to `req`.
    fn check_renewal(&self, req: &RenewRequest, answer: &Answer) -> Result<CertificateResponse> {
        let route = agentid_api::routes::RENEW;
        let resp: CertificateResponse = decode_answer(answer)?;
        let refused = |what: String| {
            invalid(format!(
                "the CA answered {route} with {what}: nothing of it is used (the certificate held stays in use until its notAfter); ask again, and if it persists tell the CA's operator (a replica may be misconfigured)"
            ))
        };
        let held = answer.presented.info();
        let info = self.verified_leaf(&resp, &refused)?;
        if info.public_key != held.public_key
            || info.id != held.id
            || info.id.as_str() != resp.identity
        {
            return Err(refused(format!(
                "a certificate for {} (said to be {}) instead of {} with its key",
                info.id, resp.identity, held.id
            )));
        }
        let skew = self.verification.verifier().config().skew_seconds();
        if info.serial.eq_ignore_ascii_case(&held.serial)
            || info.not_before.saturating_add(skew) < held.not_before
        {
            return Err(refused(format!(
                "a certificate that is not newer than the one held (serial {}, notBefore {}; held: serial {}, notBefore {})",
                info.serial, info.not_before, held.serial, held.not_before
            )));
        }
        within_ttl(info.not_after, req.ttl_secs, skew).map_err(&refused)?;
        describes(&resp, &info).map_err(refused)?;
        // A renewal keeps the chain held: its answer carries no grant (CA-API 3.9).
        check_grant(
            route,
            resp.grant.as_deref(),
            false,
            &info,
            &self.verification,
            &GrantAsked::default(),
        )?;
        Ok(resp)
    }

    /// The first page of the live tasks of the agents the caller may list (`GET /v1/tasks`,
    /// needs `list`): its `next`, when present, is the `after` of the following page
    /// ([`CaClient::list_after`], CA-API 3.11).
    pub async fn list(&self) -> Result<TasksResponse> {
        self.list_after(None).await
    }

    /// The page of live tasks after the task id `after` (the `next` of the page before it; the
    /// first page when `None`).
    pub async fn list_after(&self, after: Option<&str>) -> Result<TasksResponse> {
        let path = match after {
            None => agentid_api::routes::TASKS.to_owned(),
            Some(a) => {
                // A task id needs no escaping in a query; anything else is no `next`.
                let id = agentid_protocol::TaskId::parse(a).map_err(|e| invalid(e.to_string()))?;
                format!("{}?after={}", agentid_api::routes::TASKS, id.as_str())
            }
        };
        let page: TasksResponse = self.call(Method::GET, &path, None, Repeat::Safe).await?;
        // `next` is the `after` of the following page, shown to whoever lists: a task id.
        if let Some(next) = &page.next {
            if agentid_protocol::TaskId::parse(next).is_err() {
                return Err(invalid(format!(
                    "the CA answered {} with a next of {:?}, which is not a task id: ask again, and if it persists tell the CA's operator",
                    agentid_api::routes::TASKS,
                    agentid_protocol::clean_text(next.clone(), 128)
                )));
            }
        }
        Ok(page)
    }

    /// The current revocation list (`GET /v1/revocations`), as served: verify it with
    /// [`agentid_protocol::RevocationList::verify`] before reading it.
    ///
    /// The list is held in the answer's body, not copied out of it: a body may be as large as a
    /// list may be (256 MiB), and whoever holds only the CA's TLS key can send one.
    pub async fn revocations(&self) -> Result<ServedRevocations> {
        // As large as the protocol lets a list be, like the watcher's feed.
        let answer = self
            .answer(
                Method::GET,
                agentid_api::routes::REVOCATIONS,
                None,
                MAX_LIST_RESPONSE_BYTES,
                Repeat::Safe,
            )
            .await?;
        if !answer.status.is_success() {
            // The refusal (its body is at most 64 KiB).
            return Err(decode_answer::<serde::de::IgnoredAny>(&answer)
                .err()
                .unwrap_or_else(|| invalid("the CA's refusal could not be read")));
        }
        ServedRevocations::from_body(answer.body)
    }
}

/// `GET /v1/revocations`'s answer ([`agentid_api::RevocationsResponse`]) as
/// [`CaClient::revocations`] returns it: its list held in the answer's body, not a copy of it.
#[derive(Clone, Debug)]
pub struct ServedRevocations {
    /// The `seq` the CA says the list has (the list's own is what counts, once verified).
    pub seq: u64,
    /// The list's text, UTF-8 (it was read as a JSON string).
    list: Bytes,
}

impl ServedRevocations {
    /// The served list, a compact JWS as served, not verified.
    pub fn list(&self) -> &str {
        // Read from a JSON string: always UTF-8.
        std::str::from_utf8(&self.list).unwrap_or_default()
    }

    /// The answer in `body`: its list the part of `body` that holds it when the JSON string has
    /// no escape (a compact JWS needs none), otherwise (the body no longer held) its unescaped
    /// text.
    fn from_body(body: Bytes) -> Result<Self> {
        let answer: watch::FeedAnswer<'_> = parse_answer(&body)?;
        let list = match answer.list {
            std::borrow::Cow::Borrowed(l) if body.as_ptr_range().contains(&l.as_ptr()) => {
                body.slice_ref(l.as_bytes())
            }
            l => Bytes::from(l.into_owned().into_bytes()),
        };
        Ok(Self {
            seq: answer.seq,
            list,
        })
    }
}

/// Whether a revocation answer's `exp` can be the `exp` of an entry made at or after
/// `asked_at` (CA-API 3.10, PROTOCOL.md 6.5): an integer of the protocol, at most 2^53 - 1,
/// and still in force then (an entry applies while `now < exp`; the CA sets it to at least its
/// time plus the skew, and the two clocks may differ by the skew); or what it is instead.
fn check_revoke_exp(exp: u64, asked_at: u64, skew: u64) -> std::result::Result<(), String> {
    const MAX_INTEGER: u64 = (1 << 53) - 1;
    if exp > MAX_INTEGER {
        return Err(format!(
            "an entry exp of {exp}, which is no integer of the protocol (at most 2^53 - 1)"
        ));
    }
    if exp.saturating_add(skew) <= asked_at {
        return Err(format!(
            "an entry exp of {exp}, past when the revocation was asked for ({asked_at}): such an entry revokes nothing, and no list the CA serves holds it"
        ));
    }
    Ok(())
}

/// Whether `resp` names the revocation entry that `req`'s target makes (CA-API 3.10), or what
/// it names instead.
fn check_revoke_answer(
    req: &RevokeRequest,
    resp: &RevokeResponse,
) -> std::result::Result<(), String> {
    let want: Option<(&str, &str)> = match (&req.task, &req.agent, &req.jkt, &req.jti) {
        (Some(t), ..) => Some(("task", t)),
        (None, Some(a), ..) => Some(("agent", a)),
        (None, None, Some(k), _) => Some(("jkt", k)),
        (None, None, None, Some(j)) => Some(("jti", j)),
        // A serial is revoked as its certificate's key, a thumbprint this side cannot know.
        (None, None, None, None) => None,
    };
    let matches = match want {
        Some((kind, value)) => resp.kind == kind && resp.value == value,
        None => resp.kind == "jkt" && agentid_protocol::Jkt::parse(&resp.value).is_ok(),
    };
    if matches {
        return Ok(());
    }
    let asked = match want {
        Some((kind, value)) => format!("{kind} {value}"),
        None => "the key of the certificate with the serial asked for".to_owned(),
    };
    Err(format!(
        "a revocation of {} {} instead of {asked}",
        resp.kind, resp.value
    ))
}

/// The HTTP client a [`CaClient`] checks the CA with: `verification`'s state now (its anchors,
/// and its lists, whose entries still refuse a revoked CA certificate) where a stale or missing
/// list does not refuse the CA (spec/CA-API.md 1.1), with the epoch read before that state.
fn checking_client(
    verification: &PeerVerification,
    credentials: Arc<dyn CredentialSource>,
    td: &TrustDomain,
    timeout: Duration,
) -> Result<(u64, HttpClient)> {
    let epoch = verification.epoch();
    let config = verification
        .verifier()
        .config()
        .clone()
        .danger_accept_missing_or_stale_revocations();
    let checking = PeerVerification::new(config)?;
    let client = HttpClient::builder(credentials, checking, PeerPolicy::exact(ca_peer(td)?))
        .connect_timeout(timeout)
        .http1_only()
        .build()?;
    Ok((epoch, client))
}

/// Keeps an enrolled credential renewed: a [`CredentialSource`] ([`Enroller::credentials`]) for
/// servers and clients, renewed over mutual TLS with the current certificate (same key) at
/// 40-50% of its lifetime (at random: agents enrolled together do not renew together), retried
/// after jittered pauses growing from 2.5-5 s to 30-60 s (never sooner than a `Retry-After`)
/// until 90% of it.
#[derive(Debug)]
pub struct Enroller {
    ca_url: String,
    credentials: Arc<MemoryCredentials>,
    verification: Arc<PeerVerification>,
    timeout: Duration,
    ttl: Option<Duration>,
    /// The client renewals go through (made at the first one), keeping its connection.
    client: std::sync::Mutex<Option<CaClient>>,
}

impl Enroller {
    /// Enrolls with `token` (see [`enroll_with_token`]) and holds the credential; returns the
    /// CA's response and the pinned bundle's JSON beside it. Renewals go to the token file's
    /// `renew_url` (the CA's mutual-TLS listener), else to its `ca_url`.
    pub async fn from_token_file(
        token: &TokenFile,
        key: TaskKey,
        timeout: Duration,
    ) -> Result<(Self, CertificateResponse, Vec<u8>)> {
        // Checked before the single-use token is spent: a credential that could never be
        // renewed is not worth it.
        let renew_url = token.renew_url.as_deref().unwrap_or(&token.ca_url);
        CaUrl::parse(renew_url)?;
        let Enrolled {
            credential,
            response,
            bundle_json,
            verification,
        } = enroll_with_token(token, key, timeout).await?;
        let e = Enroller::from_credential(renew_url, credential, verification, timeout);
        Ok((e, response, bundle_json))
    }

    /// Holds an already issued credential, for renewal only, at `ca_url` (the CA's mutual-TLS
    /// listener), verified with `verification`.
    pub fn from_credential(
        ca_url: &str,
        credential: Credential,
        verification: Arc<PeerVerification>,
        timeout: Duration,
    ) -> Self {
        Enroller {
            ca_url: ca_url.to_owned(),
            credentials: Arc::new(MemoryCredentials::new(credential)),
            verification,
            timeout,
            ttl: None,
            client: std::sync::Mutex::new(None),
        }
    }

    /// Asks for this certificate lifetime at each renewal (default: the policy's).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// The credential source, updated on every renewal.
    pub fn credentials(&self) -> Arc<MemoryCredentials> {
        self.credentials.clone()
    }

    /// The client of the CA's mutual-TLS listener, presenting the held credential.
    fn client(&self) -> Result<CaClient> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let c = CaClient::new(
            &self.ca_url,
            self.credentials.clone(),
            self.verification.clone(),
            self.timeout,
        )?;
        *client = Some(c.clone());
        Ok(c)
    }

    /// Renews once now: same key, same identity; the grant stays attached. A credential
    /// rotated into [`Enroller::credentials`] while the CA answers is kept (the renewal of the
    /// one before is dropped) and returned.
    pub async fn renew(&self) -> Result<Arc<Credential>> {
        let current = self
            .credentials
            .current()
            .ok_or(crate::Error::NoCredential)?;
        let client = self.client()?;
        let resp = client
            .renew(&RenewRequest {
                identity: None,
                ttl_secs: self.ttl.map(|d| d.as_secs()),
            })
            .await?;
        if resp.identity != current.identity().as_str() {
            return Err(EnrollError::BadAnswer(
                "the CA renewed another identity".into(),
            ));
        }
        let chain = decode_certs(&resp.certs).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
        let renewed = current.renewed(chain)?;
        let skew = self.verification.verifier().config().skew_seconds();
        within_ttl(
            renewed.info().not_after,
            self.ttl.map(|d| d.as_secs()),
            skew,
        )
        .map_err(|why| {
            EnrollError::BadAnswer(format!(
                "the CA renewed {} with {why}: not used (the certificate held stays in use until its notAfter); tell the CA's operator (a replica may be misconfigured)",
                resp.identity
            ))
        })?;
        describes(&resp, renewed.info()).map_err(|why| {
            EnrollError::BadAnswer(format!(
                "the CA renewed {} with {why}: not used (the certificate held stays in use until its notAfter); tell the CA's operator (a replica may be misconfigured)",
                resp.identity
            ))
        })?;
        // Published only over the credential it renews: one rotated into the source while the
        // CA answered (another key or identity) stays, and the next renewal is of that one.
        if !self
            .credentials
            .rotate_from(&current, renewed, &self.verification.trust_store())?
        {
            tracing::warn!(
                identity = %resp.identity,
                "agentid enroll: the credential was replaced while it was renewed; the renewal is not used"
            );
        }
        self.credentials
            .current()
            .ok_or_else(|| EnrollError::Transport(crate::Error::NoCredential))
    }

    /// Renews forever at half of each certificate's lifetime (spread at random back to 40%, so that
    /// agents enrolled together do not renew together), retrying after jittered pauses growing
    /// from a few seconds to a minute until 90% of it; returns [`EnrollError::GaveUp`] (with the last failure) once a certificate
    /// reaches 90% of its lifetime without a renewal (the caller decides: a new token, or stop).
    /// A refusal that asking again cannot
    /// change (see [`EnrollError::is_transient`]: `revoked`, or `cap_reached` once the task's
    /// end is nearer than the lifetime asked for) is returned at once; the credential held stays
    /// usable until its `notAfter`.
    ///
    /// A certificate's lifetime is counted from when this enroller received it, or from its
    /// `notBefore` for the credential it started with: the CA back-dates `notBefore` by its
    /// clock-skew allowance, so for lifetimes shorter than that allowance, timing from
    /// `notBefore` alone would renew again at once, in a loop.
    pub async fn run(&self) -> Result<()> {
        let mut received: Option<u64> = None;
        loop {
            let current = self
                .credentials
                .current()
                .ok_or(crate::Error::NoCredential)?;
            let (nb, na) = (current.info().not_before, current.info().not_after);
            let start = renewal_clock_start(nb, received);
            let (renew_at, give_up) = renewal_times(start, na);
            crate::sleep_until_unix(spread(start, renew_at, random_u32())).await;
            let mut attempts: u32 = 0;
            loop {
                attempts = attempts.saturating_add(1);
                match self.renew().await {
                    Ok(_) => {
                        received = Some(crate::session::now_unix());
                        break;
                    }
                    Err(e) if !e.is_transient() => return Err(e),
                    Err(e) if crate::session::now_unix() >= give_up => {
                        return Err(EnrollError::GaveUp {
                            attempts,
                            not_after: na,
                            last: Box::new(e),
                        })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "agentid enroll: renewal failed, retrying");
                        tokio::time::sleep(retry_pause(&e, give_up, attempts)).await;
                    }
                }
            }
            // At most one renewal a second, whatever the certificates say.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// How long to wait after the transient failure `e` of attempt `attempt` (from 1) of a
/// renewal that gives up at `give_up` (Unix seconds): jittered (agents that failed together do
/// not retry together) below a ceiling that doubles with each failed attempt from
/// [`RENEW_RETRY`] to [`RENEW_RETRY_MAX`] (a fleet whose CA is down or behind a proxy answering
/// `502` without `Retry-After` slows down instead of retrying every few seconds for the whole
/// window), never sooner than the CA's `Retry-After`, never past the give-up time (at least a
/// second).
fn retry_pause(e: &EnrollError, give_up: u64, attempt: u32) -> Duration {
    let left = Duration::from_secs(give_up.saturating_sub(crate::session::now_unix()).max(1));
    let doublings = attempt.saturating_sub(1).min(16);
    let ceiling = RENEW_RETRY
        .saturating_mul(1u32 << doublings)
        .min(RENEW_RETRY_MAX);
    watch::jittered(ceiling)
        .max(e.retry_after().unwrap_or_default())
        .min(left)
}

/// The ceiling of the jittered pause after a renewal's first failed attempt.
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// The most the ceiling of the pause between renewal attempts grows to (a pause is 30-60 s
/// there): a 5-minute certificate's retry window (40-50% to 90% of its life) still holds six
/// attempts or more, a day's certificate's about a thousand.
const RENEW_RETRY_MAX: Duration = Duration::from_secs(60);

/// Where a certificate's renewal clock starts: when it was received, if known and later than
/// its (back-dated) `notBefore`.
fn renewal_clock_start(not_before: u64, received: Option<u64>) -> u64 {
    received.map_or(not_before, |r| r.max(not_before))
}

/// When to renew (half the lifetime from `start`) and when to give up (90% of it), both moved
/// earlier where needed so that they fall before the client's close margin: within the HTTP
/// client's default close margin (5 s) of `notAfter` the
/// connection to the CA sends nothing, so a renewal there could only fail. A renewal is due at
/// least 2 s before that point, to leave room for one request.
fn renewal_times(start: u64, not_after: u64) -> (u64, u64) {
    let life = not_after.saturating_sub(start);
    let last_send = not_after.saturating_sub(crate::http::DEFAULT_CLOSE_MARGIN.as_secs());
    let renew_at = (start + life / 2)
        .min(last_send.saturating_sub(2))
        .max(start);
    let give_up = (start + life - life / 10).min(last_send).max(start);
    (renew_at, give_up)
}

/// A renewal point spread at random over the fifth of the time before it (from 40% to 50% of a
/// long lifetime), so that agents enrolled together (a platform starting a thousand at once) do
/// not all renew in the same second; never later than `renew_at`, never before `start`. `r` is
/// a uniform random number.
fn spread(start: u64, renew_at: u64, r: u32) -> u64 {
    let room = u128::from(renew_at.saturating_sub(start) / 5);
    let back = room * u128::from(r) / (u128::from(u32::MAX) + 1);
    renew_at.saturating_sub(u64::try_from(back).unwrap_or(0))
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b),
        // No randomness: no spread (renew at the latest point, as without it).
        Err(_) => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A refusal's `message` and `hint` (and a binding refusal's `message`), and a success body
    /// that is not the expected JSON, are the CA's text (a faulty replica, a proxy in front of
    /// it): 64 KiB of forged log lines and terminal escapes reached the error, which `agentid`
    /// prints and the watchers log, as they were.
    #[test]
    fn the_cas_text_reaches_the_error_bounded_and_without_control_characters() {
        let text = format!(
            "x\n2026-12-06T07:00:00Z INFO forged: enrolled\u{1b}[2J{}",
            "y".repeat(60_000)
        );
        let bodies = [
            (
                StatusCode::FORBIDDEN,
                serde_json::json!({"code": "policy_denied", "message": text, "hint": text}),
            ),
            (
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"code": "credential_expired", "message": text}),
            ),
            (StatusCode::OK, serde_json::json!({"keys": text})),
        ];
        for (status, body) in bodies {
            let body = serde_json::to_vec(&body).unwrap();
            let e = decode::<agentid_api::RevocationsResponse>(status, &body).unwrap_err();
            if status == StatusCode::FORBIDDEN {
                assert!(matches!(e, EnrollError::Refused { .. }), "{e}");
            }
            let shown = e.to_string();
            assert!(shown.len() <= 1200, "{status}: {} bytes shown", shown.len());
            assert!(!shown.chars().any(char::is_control), "{status}: {shown:?}");
        }
    }

    #[test]
    fn renewal_is_timed_from_receipt_not_from_the_back_dated_not_before() {
        // A 12 s certificate back-dated by a 60 s skew allowance, received at t = 1000.
        let (nb, na) = (1000 - 60, 1000 + 12);
        // Timed from notBefore the renewal would be due long before receipt: a loop.
        assert!(renewal_times(renewal_clock_start(nb, None), na).0 < 1000);
        // Timed from receipt, and before the client's 5 s close margin: the connection to the
        // CA sends nothing after 1007, so renew by 1005 and give up at 1007.
        assert_eq!(
            renewal_times(renewal_clock_start(nb, Some(1000)), na),
            (1005, 1007)
        );
        // Long lifetimes: half and 90%, untouched by the margin.
        assert_eq!(renewal_times(0, 3600), (1800, 3240));
        // Lifetimes shorter than the margin: due at once, never before the start.
        assert_eq!(renewal_times(1000, 1004), (1000, 1000));
        // A receipt before notBefore (clock steps) never moves the start earlier.
        assert_eq!(renewal_clock_start(2000, Some(1000)), 2000);
    }

    #[test]
    fn renewals_are_spread_over_the_fifth_before_the_renewal_point() {
        // A one-hour certificate: renewed between 40% and 50% of its life.
        assert_eq!(spread(0, 1800, 0), 1800);
        assert_eq!(spread(0, 1800, u32::MAX), 1441);
        assert_eq!(spread(0, 1800, u32::MAX / 2), 1621);
        // Nothing to spread: due at once stays at once.
        assert_eq!(spread(1000, 1000, u32::MAX), 1000);
        assert_eq!(spread(1000, 1004, u32::MAX), 1004);
        // Drawn at random: a thousand agents enrolled in one second do not renew in one.
        let draws: std::collections::BTreeSet<u64> =
            (0..100).map(|_| spread(0, 1800, random_u32())).collect();
        assert!(draws.len() > 50, "{} distinct renewal points", draws.len());
        assert!(draws.iter().all(|t| (1440..=1800).contains(t)));
    }

    #[test]
    fn a_revoke_answer_must_name_the_entry_asked_for() {
        let ask = |f: &dyn Fn(&mut RevokeRequest)| {
            let mut r = RevokeRequest {
                task: None,
                agent: None,
                serial: None,
                jkt: None,
                jti: None,
                iss: None,
                reason: None,
            };
            f(&mut r);
            r
        };
        let answer = |kind: &str, value: &str| RevokeResponse {
            kind: kind.into(),
            value: value.into(),
            exp: 2_000_000_000,
        };
        let jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let task = ask(&|r| r.task = Some("t1".into()));
        assert!(check_revoke_answer(&task, &answer("task", "t1")).is_ok());
        // Another task, or the same value as another kind, is not what was asked for.
        let e = check_revoke_answer(&task, &answer("task", "t2")).unwrap_err();
        assert!(e.contains("task t2 instead of task t1"), "{e}");
        assert!(check_revoke_answer(&task, &answer("agent", "t1")).is_err());
        let agent = ask(&|r| r.agent = Some("planner".into()));
        assert!(check_revoke_answer(&agent, &answer("agent", "planner")).is_ok());
        assert!(check_revoke_answer(&agent, &answer("agent", "coder")).is_err());
        let key = ask(&|r| r.jkt = Some(jkt.into()));
        assert!(check_revoke_answer(&key, &answer("jkt", jkt)).is_ok());
        assert!(check_revoke_answer(&key, &answer("jti", jkt)).is_err());
        let grant = ask(&|r| r.jti = Some("g1".into()));
        assert!(check_revoke_answer(&grant, &answer("jti", "g1")).is_ok());
        assert!(check_revoke_answer(&grant, &answer("jti", "g2")).is_err());
        // A serial comes back as its certificate's key: any well-formed thumbprint, nothing else.
        let serial = ask(&|r| r.serial = Some("0a1b".into()));
        assert!(check_revoke_answer(&serial, &answer("jkt", jkt)).is_ok());
        assert!(check_revoke_answer(&serial, &answer("task", "t1")).is_err());
        assert!(check_revoke_answer(&serial, &answer("jkt", "0a1b")).is_err());
    }

    /// `agentid revocations list --ca-url` holds the served list in the answer's body, not in a
    /// copy of it next to the body (a body may be 256 MiB: whoever holds only the CA's TLS key
    /// could make the command hold 512 MiB before the signature check refused the list), as
    /// the watcher does (`FeedAnswer`); a list with an escape is still read, as JSON says.
    #[test]
    fn the_served_list_is_held_in_the_body() {
        let body = Bytes::from_static(br#"{"seq": 7, "list": "eyJh.eyJi.c2ln", "other": 1}"#);
        let inside = body.as_ptr_range();
        let served = ServedRevocations::from_body(body.clone()).unwrap();
        assert_eq!((served.seq, served.list()), (7, "eyJh.eyJi.c2ln"));
        assert!(
            inside.contains(&served.list().as_ptr()),
            "the list was copied out of the body"
        );
        let escaped = Bytes::from_static(br#"{"seq": 8, "list": "eyJh.eyJi.c2ln"}"#);
        let served = ServedRevocations::from_body(escaped).unwrap();
        assert_eq!((served.seq, served.list()), (8, "eyJh.eyJi.c2ln"));
        assert!(ServedRevocations::from_body(Bytes::from_static(br#"{"seq": 1}"#)).is_err());
        assert!(
            ServedRevocations::from_body(Bytes::from_static(br#"{"seq": 1, "list": 5}"#)).is_err()
        );
    }

    #[test]
    fn a_revoke_answer_exp_is_an_entry_in_force() {
        let (now, skew) = (1_800_000_000, 60);
        // At least the CA's time plus its skew, whose clock may be behind by the skew.
        assert!(check_revoke_exp(now, now, skew).is_ok());
        assert!(check_revoke_exp(now - skew + 1, now, skew).is_ok());
        assert!(check_revoke_exp((1 << 53) - 1, now, skew).is_ok());
        assert!(check_revoke_exp(now - skew, now, skew).is_err());
        assert!(check_revoke_exp(0, now, skew).is_err());
        let e = check_revoke_exp(1 << 53, now, skew).unwrap_err();
        assert!(e.contains("2^53"), "{e}");
        assert!(check_revoke_exp(u64::MAX, now, skew).is_err());
    }

    #[test]
    fn only_connection_failures_and_transient_codes_are_retried() {
        use agentid_api::ErrorCode;
        let refused = |code: ErrorCode| EnrollError::Refused {
            status: code.status(),
            error: ApiError::new(code, "m", ""),
            retry_after: None,
        };
        let transient: Vec<ErrorCode> = ErrorCode::ALL
            .into_iter()
            .filter(|c| refused(*c).is_transient())
            .collect();
        assert_eq!(
            transient,
            [
                ErrorCode::RateLimited,
                ErrorCode::StoreUnavailable,
                ErrorCode::Unavailable,
                ErrorCode::Internal
            ]
        );
        assert!(EnrollError::Timeout(Duration::from_secs(1)).is_transient());
        // A 5xx without a refusal body (a proxy, a restart) is retried; a 4xx without one is not.
        let bare = |status: StatusCode| decode_with::<()>(status, None, b"<html>").unwrap_err();
        assert!(bare(StatusCode::BAD_GATEWAY).is_transient());
        assert!(!bare(StatusCode::NOT_FOUND).is_transient());
        // The binding's refusals (CA-API 1.4): named, transient only for the server's 5xx.
        let binding = |status: StatusCode, body: &str| {
            decode_with::<()>(status, None, body.as_bytes()).unwrap_err()
        };
        let expired = binding(
            StatusCode::UNAUTHORIZED,
            r#"{"code":"credential_expired","message":"the peer's credential expired"}"#,
        );
        assert!(
            matches!(&expired, EnrollError::BindingRefused { status: 401, code, .. } if code == "credential_expired"),
            "{expired:?}"
        );
        assert!(!expired.is_transient());
        let busy = binding(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"code":"busy","message":"the server is busy"}"#,
        );
        assert!(matches!(&busy, EnrollError::BindingRefused { code, .. } if code == "busy"));
        assert!(busy.is_transient());
        assert!(!EnrollError::RootMismatch("https://127.0.0.1:1".into()).is_transient());
        assert!(!invalid("x").is_transient());
    }

    /// The pause after a failed renewal: jittered within the retry ceiling, never sooner than
    /// the CA's `Retry-After`, never past the give-up time.
    #[test]
    fn a_failed_renewal_waits_for_retry_after_with_jitter_until_give_up() {
        let now = crate::session::now_unix();
        let busy = |secs| EnrollError::Unavailable {
            status: 503,
            retry_after: Some(Duration::from_secs(secs)),
        };
        for _ in 0..50 {
            let p = retry_pause(&EnrollError::Timeout(Duration::from_secs(1)), now + 60, 1);
            assert!(p >= RENEW_RETRY / 2 && p <= RENEW_RETRY, "{p:?}");
        }
        assert_eq!(retry_pause(&busy(20), now + 60, 1), Duration::from_secs(20));
        assert!(retry_pause(&busy(20), now + 8, 1) <= Duration::from_secs(8));
        assert_eq!(retry_pause(&busy(20), now, 1), Duration::from_secs(1));
    }

    /// Failed attempts without `Retry-After` (a CA down, a proxy answering `502`) wait longer
    /// and longer, up to a minute, jittered, never past the give-up time (red team, CA
    /// clients: a constant 2.5-5 s pause made a fleet of a million agents on 5-minute
    /// certificates retry about 270,000 times a second against a CA recovering).
    #[test]
    fn failed_renewals_back_off_up_to_a_minute() {
        let now = crate::session::now_unix();
        let down = EnrollError::Timeout(Duration::from_secs(1));
        let far = now + 3600;
        for attempt in 1..=40u32 {
            let ceiling = (RENEW_RETRY * 2u32.pow(attempt.min(10) - 1)).min(RENEW_RETRY_MAX);
            for _ in 0..20 {
                let p = retry_pause(&down, far, attempt);
                assert!(
                    p >= ceiling / 2 && p <= ceiling,
                    "attempt {attempt}: {p:?} outside {:?}..={ceiling:?}",
                    ceiling / 2
                );
            }
        }
        assert!(retry_pause(&down, far, u32::MAX) <= RENEW_RETRY_MAX);
        // Never past the give-up time.
        assert!(retry_pause(&down, now + 7, 10) <= Duration::from_secs(7));
        // A 5-minute certificate's window, from 40% to 90% of its life, holds six attempts or
        // more even at the longest pauses.
        let (mut t, window, mut attempts) = (Duration::ZERO, Duration::from_secs(150), 0u32);
        while t < window {
            attempts += 1;
            t += (RENEW_RETRY * 2u32.pow(attempts.min(10) - 1)).min(RENEW_RETRY_MAX);
        }
        assert!(attempts >= 6, "{attempts}");
    }

    #[test]
    fn ca_urls_are_https_host_port_only() {
        let u = CaUrl::parse("https://ca.example.org:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("ca.example.org", 8443));
        assert_eq!(u.authority, "ca.example.org:8443");
        let u = CaUrl::parse("https://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        for bad in [
            "http://ca:1",
            "https://ca",
            "https://ca:x",
            "https://u@ca:1",
            "https://ca:1/v1",
            "https://",
        ] {
            assert!(CaUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bundle_without_the_pinned_root_pins_nothing() {
        let cert = b"not really a certificate";
        let x5c = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert);
        let bundle = serde_json::json!({"keys": [
            {"use": "x509-svid", "kty": "EC", "x5c": [x5c]},
            {"use": "jwt-svid", "kty": "EC"},
        ], "spiffe_sequence": 9_007_199_254_740_991_u64, "spiffe_refresh_hint": 1});
        let bytes = serde_json::to_vec(&bundle).unwrap();
        let pinned = pin_bundle(&bytes, &sha256_hex(cert), None)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&pinned).unwrap();
        assert_eq!(v["keys"].as_array().unwrap().len(), 1);
        // Nothing but the pinned entry: the unauthenticated answer chose the rest.
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        // The token file's floor, never the answer's sequence.
        let floored = pin_bundle(&bytes, &sha256_hex(cert), Some(7))
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&floored).unwrap();
        assert_eq!(v["spiffe_sequence"], 7, "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        assert!(pin_bundle(&bytes, &sha256_hex(b"other"), None)
            .unwrap()
            .is_none());
        assert!(pin_bundle(b"[]", "00", None).is_err());
    }
}
