//! The one error type of the transport crate.

use agentid_protocol::ErrorCode;

/// Why a certificate was refused: the X509-SVID profile rules and chain validation.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// No certificate was presented.
    #[error("no certificate presented")]
    Missing,
    /// Not a DER X.509 certificate (or trailing bytes after it).
    #[error("not a DER X.509 certificate: {0}")]
    Malformed(String),
    /// An extension appears more than once.
    #[error("duplicated extension")]
    DuplicateExtension,
    /// The certificate does not carry exactly one URI SAN (the count is given).
    #[error("{0} URI SANs (exactly one required)")]
    UriSanCount(usize),
    /// The URI SAN is not a `spiffe://` URI.
    #[error("URI SAN is not a spiffe ID")]
    NotSpiffe,
    /// The URI SAN breaks the SPIFFE ID rules, or is neither a task identity nor a service ID.
    #[error("bad SPIFFE ID in URI SAN: {0}")]
    BadId(agentid_protocol::Error),
    /// The certificate is a CA certificate (`cA = true`) presented as a leaf.
    #[error("CA certificate presented as a leaf")]
    CaAsLeaf,
    /// No keyUsage extension, or no `digitalSignature` in it.
    #[error("keyUsage digitalSignature missing")]
    DigitalSignatureMissing,
    /// `keyCertSign` or `cRLSign` on a leaf.
    #[error("keyCertSign or cRLSign on a leaf")]
    ForbiddenKeyUsage,
    /// The extended key usage does not allow this role (`clientAuth` / `serverAuth`).
    #[error("extended key usage {0} missing")]
    EkuMissing(&'static str),
    /// The subject public key is not P-256 (uncompressed) or Ed25519.
    #[error("unsupported public key: {0}")]
    UnsupportedKey(agentid_protocol::Error),
    /// No trust anchors are held for the peer's trust domain.
    #[error("no trust anchors for trust domain {0}")]
    UnknownTrustDomain(String),
    /// More intermediates than agentid accepts (bounded path building).
    #[error("too many intermediate certificates ({0})")]
    TooManyIntermediates(usize),
    /// Chain validation (signature, path to an anchor of the peer's trust domain, validity time,
    /// EKU) failed.
    #[error("chain validation failed: {0}")]
    Chain(String),
    /// An intermediate CA certificate of the path carries a keyUsage extension without
    /// `keyCertSign` (RFC 5280 section 6.1.4 (n)).
    #[error("issuing CA certificate lacks keyUsage keyCertSign")]
    IssuerKeyUsage,
    /// The certificate is outside its validity period.
    #[error("certificate expired or not yet valid")]
    Expired,
    /// A renewed certificate (reauth, rotation) changes the identity or the key.
    #[error("renewed certificate changes the identity or key")]
    IdentityChanged,
}

/// Which timeout fired.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The complete ClientHello did not arrive in time (server side).
    ClientHello,
    /// The TLS handshake did not finish in time.
    Handshake,
    /// The first (hello or accept) frame did not arrive in time, or the peer did not take this
    /// side's hello, accept or refusal in time (it reads nothing).
    FirstFrame,
    /// An HTTP client's answer (its response and the body it reads) did not arrive in time
    /// (the A2A and MCP clients).
    Response,
    /// The peer did not take this side's close frame and TLS `close_notify` within the
    /// first-frame timeout ([`crate::ConnectionLimits::first_frame_timeout`]) of
    /// [`crate::Session::close`] or its shutdown (it reads nothing).
    Close,
}

/// Which cap refused a connection ([`Error::Busy`]).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusyKind {
    /// The pool of unauthenticated handshakes was full, or this source address had its
    /// maximum pending: a newer handshake took this one's slot.
    #[error("handshake dropped for a newer one (handshake cap)")]
    Handshakes,
    /// The server holds its maximum of sessions.
    #[error("session cap reached")]
    Connections,
    /// The peer's agent (all its tasks and children) holds its maximum of sessions.
    #[error("per-agent session cap reached")]
    AgentSessions,
    /// The peer's task holds its maximum of sessions.
    #[error("per-task session cap reached")]
    TaskSessions,
}

/// Why a frame was refused.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is above the cap (rejected before allocating).
    #[error("frame body of {0} bytes exceeds the cap")]
    TooLarge(u64),
    /// The connection ended in the middle of a frame.
    #[error("truncated frame")]
    Truncated,
    /// An unknown frame type: the session is closed.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A control frame body that is not the expected I-JSON object.
    #[error("bad control frame body: {0}")]
    BadBody(String),
    /// A frame that is not allowed at this point of the exchange.
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
}

/// An error of the transport crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O on the connection failed (including a TCP connection refused).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS layer failed, including a certificate refused by agentid's verifiers.
    #[error("tls: {0}")]
    Tls(rustls::Error),
    /// A certificate broke the X509-SVID rules or did not chain to its trust domain's anchors.
    #[error("certificate refused: {0}")]
    Certificate(#[from] CertError),
    /// The peer policy does not admit this peer identity.
    #[error("peer {0} denied by policy")]
    PolicyDenied(String),
    /// A chain, hop proof, revocation list or authorization check failed; carries the protocol's
    /// stable code.
    #[error("{0}")]
    Protocol(#[from] agentid_protocol::Error),
    /// The peer refused us with a reject frame.
    #[error("rejected by peer: {}", code_and_message(code, message))]
    Rejected {
        /// The peer's code (a protocol error code or a transport reason).
        code: String,
        /// The peer's human-readable message.
        message: String,
    },
    /// The peer closed the session with a close frame.
    #[error("closed by peer: {}", code_and_message(code, message))]
    Closed {
        /// The peer's code.
        code: String,
        /// The peer's human-readable message.
        message: String,
    },
    /// A framing violation.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// A timeout fired.
    #[error("{0:?} timeout")]
    Timeout(TimeoutKind),
    /// TLS completed, but not the way agentid requires (a resumed handshake, no ALPN, ...).
    #[error("handshake refused: {0}")]
    HandshakeRefused(&'static str),
    /// The session passed its deadline (peer certificate `notAfter` or chain `exp`) without a
    /// reauth.
    #[error("credential expired")]
    CredentialExpired,
    /// Nothing was sent either way for the idle timeout while this side waited for the peer
    /// ([`crate::ConnectionLimits::idle_timeout`]).
    #[error("session idle")]
    Idle,
    /// A revocation list applied to a live session covers the peer or its chain.
    #[error("revoked: {0}")]
    Revoked(String),
    /// A cap refused the connection; the kind says which.
    #[error("busy: {0}")]
    Busy(BusyKind),
    /// No local credential is available.
    #[error("no local credential")]
    NoCredential,
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A peer's code and message, the message left out when it only repeats the code.
fn code_and_message(code: &str, message: &str) -> String {
    if message.is_empty() || message == code {
        code.to_owned()
    } else {
        format!("{code}: {message}")
    }
}

impl Error {
    /// The protocol's stable error code, when the failure has one.
    pub fn protocol_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Protocol(e) => Some(e.code()),
            Error::Rejected { code, .. } | Error::Closed { code, .. } => ErrorCode::from_code(code),
            _ => None,
        }
    }

    /// The reason code and what happened, for a log or a person: `revoked (token 1): holder
    /// agent revoked`, `tls: received fatal alert: CertificateExpired`, `bad_certificate:
    /// certificate refused: ...`; the code is never said twice.
    pub fn explained(&self) -> String {
        let detail = self.to_string();
        let reason = self.reason();
        if detail.starts_with(reason) {
            detail
        } else {
            format!("{reason}: {detail}")
        }
    }

    /// A stable reason string: the protocol code when there is one, else a transport reason.
    /// Used in reject and close frames and in tracing.
    pub fn reason(&self) -> &str {
        match self {
            Error::Protocol(e) => e.code().as_str(),
            Error::Rejected { code, .. } | Error::Closed { code, .. } => code,
            Error::Io(_) => "io",
            Error::Tls(_) => "tls",
            Error::Certificate(_) => "bad_certificate",
            Error::PolicyDenied(_) => "policy_denied",
            Error::Frame(FrameError::TooLarge(_)) => "frame_too_large",
            Error::Frame(FrameError::UnknownType(_)) => "unknown_frame_type",
            Error::Frame(_) => "bad_frame",
            Error::Timeout(TimeoutKind::ClientHello) => "client_hello_timeout",
            Error::Timeout(TimeoutKind::Handshake) => "handshake_timeout",
            Error::Timeout(TimeoutKind::FirstFrame) => "first_frame_timeout",
            Error::Timeout(TimeoutKind::Response) => "response_timeout",
            Error::Timeout(TimeoutKind::Close) => "close_timeout",
            Error::HandshakeRefused(_) => "handshake_refused",
            Error::CredentialExpired => "credential_expired",
            Error::Revoked(_) => "revoked",
            Error::Busy(_) => "busy",
            Error::Idle => "idle",
            Error::NoCredential => "no_credential",
            Error::Config(_) => "bad_config",
        }
    }
}

/// The message sent to a peer with a reason code in a reject or close frame: a fixed text for
/// the code, never the local detail of the failure (which trust domains are accepted, which
/// limits are enforced, which revocation list is missing, a token index). The detail goes to
/// the local log.
pub(crate) fn peer_message(code: &str) -> &'static str {
    match code {
        "busy" => "busy",
        "idle" => "the session was idle",
        "credential_expired" => "the credential expired",
        "revoked" => "revoked",
        "bad_certificate" => "certificate refused",
        "policy_denied" => "peer denied by policy",
        "frame_too_large" | "unknown_frame_type" | "bad_frame" => "frame refused",
        "no_credential" => "no credential",
        "normal" => "closed",
        _ if ErrorCode::from_code(code).is_some() => "presentation refused",
        _ => "refused",
    }
}

impl Error {
    /// What the peer is told of this error: its [`Error::reason`] and a fixed message (see
    /// [`peer_message`]); which cap refused a busy peer is not configuration detail and is said.
    pub(crate) fn for_peer(&self) -> (String, String) {
        let code = self.reason().to_owned();
        let message = match self {
            Error::Busy(kind) => format!("busy: {kind}"),
            _ => peer_message(&code).to_owned(),
        };
        (code, message)
    }
}

/// Shorthand for the crate's results.
pub type Result<T, E = Error> = core::result::Result<T, E>;
