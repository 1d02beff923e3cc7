//! A2A (Agent2Agent protocol, version [`A2A_PROTOCOL_VERSION`]) on the HTTP binding (feature
//! `a2a`).
//!
//! An A2A agent card is self-asserted: a card fetched from the server it describes says
//! whatever that server wants, so checking the TLS peer against the card proves nothing. With
//! agentid the card stays standard and the trust comes from elsewhere:
//!
//! * **The card**: its security scheme is A2A's own `{"type": "mutualTLS", "description": ...}`
//!   ([`mutual_tls_scheme`]); the agentid data (SPIFFE ID, trust domain) goes in an
//!   `AgentExtension` whose `uri` is [`AGENTID_EXTENSION_URI`] ([`identity_extension`]).
//! * **The client** ([`A2aClient`]) takes the identity it expects from its own configuration,
//!   never from the card. It checks the mTLS peer (verified by agentid against the trust
//!   bundles the client already holds) and the card's extension against that identity, and
//!   refuses on any difference. A bundle endpoint named in a card is informational: it is never
//!   fetched and never trusted (a card author could otherwise add its own CA to the client's
//!   trust, or make the client fetch arbitrary URLs).
//! * **Requests** go over the same agentid connection, which presents the client's delegation
//!   chain: the server checks a delegated scope per JSON-RPC method or skill with the request's
//!   [`Authorizer`](crate::http::Authorizer), as for any HTTP route.
//!
//! ```ignore
//! // Server: a standard card with the agentid extension.
//! let card = AgentCard::new("planner", "Plans work", "https://planner.example.org/a2a", "1.0.0")
//!     .security_scheme("agentid", mutual_tls_scheme("agentid X509-SVID, see the agentid extension"))
//!     .extension(identity_extension(&my_id, None));
//!
//! // Client: the expected identity comes from configuration.
//! let a2a = A2aClient::new(http_client, expected_id);
//! let mut conn = a2a.connect(addr, "planner.example.org").await?;   // peer and card checked
//! let reply = conn.send_text("/a2a", "plan the release").await?;
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use agentid_protocol::SpiffeId;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use serde::{Deserialize, Serialize};

use crate::error::{Error, TimeoutKind};
use crate::http::peer_text;
use crate::http::{HttpClient, HttpClientConnection};

/// The A2A protocol version these types follow (the card's `protocolVersion`): 0.3.0, the
/// first with the `mutualTLS` security scheme and the `/.well-known/agent-card.json` path.
pub const A2A_PROTOCOL_VERSION: &str = "0.3.0";

/// Where an A2A server publishes its card (A2A 0.3.0).
pub const AGENT_CARD_PATH: &str = "/.well-known/agent-card.json";

/// The `uri` of agentid's `AgentExtension`. Its `params`: `spiffeId` (the agent's identity,
/// the URI SAN of its certificate) and `trustDomain`; a `bundleEndpoint` may be named for
/// operators, and clients never fetch it.
pub const AGENTID_EXTENSION_URI: &str = "urn:agentid:a2a:identity:v1";

/// The largest card a client reads.
pub const MAX_CARD_BYTES: usize = 64 * 1024;

/// The largest JSON-RPC response a client reads.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// An A2A agent card (the fields agentid reads or writes; others are ignored when read).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentCard {
    /// The A2A protocol version ([`A2A_PROTOCOL_VERSION`]).
    pub protocol_version: String,
    /// The agent's name.
    pub name: String,
    /// What the agent does.
    pub description: String,
    /// The agent's preferred endpoint.
    pub url: String,
    /// The transport at `url` (`JSONRPC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_transport: Option<String>,
    /// The agent's own version.
    pub version: String,
    /// Optional capabilities, including extensions.
    pub capabilities: AgentCapabilities,
    /// Security schemes by name (A2A / OpenAPI objects).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security_schemes: BTreeMap<String, serde_json::Value>,
    /// Security requirements: alternatives, each a map of scheme name to scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security: Vec<BTreeMap<String, Vec<String>>>,
    /// Media types the agent accepts.
    pub default_input_modes: Vec<String>,
    /// Media types the agent produces.
    pub default_output_modes: Vec<String>,
    /// What the agent can do.
    pub skills: Vec<AgentSkill>,
}

/// A card's `capabilities`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentCapabilities {
    /// Server-sent event streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// Push notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_notifications: Option<bool>,
    /// Protocol extensions the agent supports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<AgentExtension>,
}

/// An A2A `AgentExtension`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentExtension {
    /// The extension's identifier.
    pub uri: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether a client must understand it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Extension-specific parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

/// An A2A `AgentSkill`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentSkill {
    /// Unique within the card.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Keywords.
    pub tags: Vec<String>,
}

impl AgentCard {
    /// A card for A2A [`A2A_PROTOCOL_VERSION`] over JSON-RPC at `url`, text in and out, with no
    /// scheme, extension or skill yet.
    pub fn new(name: &str, description: &str, url: &str, version: &str) -> Self {
        Self {
            protocol_version: A2A_PROTOCOL_VERSION.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            url: url.to_owned(),
            preferred_transport: Some("JSONRPC".to_owned()),
            version: version.to_owned(),
            capabilities: AgentCapabilities::default(),
            security_schemes: BTreeMap::new(),
            security: Vec::new(),
            default_input_modes: vec!["text/plain".to_owned()],
            default_output_modes: vec!["text/plain".to_owned()],
            skills: Vec::new(),
        }
    }

    /// Adds the security scheme `name` and requires it.
    #[must_use]
    pub fn security_scheme(mut self, name: &str, scheme: serde_json::Value) -> Self {
        self.security_schemes.insert(name.to_owned(), scheme);
        self.security
            .push(BTreeMap::from([(name.to_owned(), Vec::new())]));
        self
    }

    /// Adds an extension.
    #[must_use]
    pub fn extension(mut self, ext: AgentExtension) -> Self {
        self.capabilities.extensions.push(ext);
        self
    }

    /// Adds a skill.
    #[must_use]
    pub fn skill(mut self, id: &str, name: &str, description: &str) -> Self {
        self.skills.push(AgentSkill {
            id: id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            tags: Vec::new(),
        });
        self
    }
}

/// A2A's standard mutual-TLS security scheme: `{"type": "mutualTLS", "description": ...}`.
pub fn mutual_tls_scheme(description: &str) -> serde_json::Value {
    serde_json::json!({ "type": "mutualTLS", "description": description })
}

/// The agentid `AgentExtension` for `id`: `params` `spiffeId` and `trustDomain`, and
/// `bundleEndpoint` when given (informational: clients never fetch it).
pub fn identity_extension(id: &SpiffeId, bundle_endpoint: Option<&str>) -> AgentExtension {
    let mut params = serde_json::json!({
        "spiffeId": id.as_str(),
        "trustDomain": id.trust_domain_str(),
    });
    if let (Some(url), Some(obj)) = (bundle_endpoint, params.as_object_mut()) {
        obj.insert("bundleEndpoint".to_owned(), url.into());
    }
    AgentExtension {
        uri: AGENTID_EXTENSION_URI.to_owned(),
        description: Some(
            "agentid: the agent's SPIFFE identity; verify it against your own configuration"
                .to_owned(),
        ),
        required: Some(true),
        params: Some(params),
    }
}

/// The agentid parameters a client reads from the extension (a `bundleEndpoint` is not read).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityParams {
    spiffe_id: String,
    trust_domain: String,
}

/// Why an A2A client refused an agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum A2aError {
    /// The mTLS peer is not the identity the client was configured to expect.
    #[error("the TLS peer is {peer}, not the expected {expected}")]
    PeerMismatch {
        /// The verified peer.
        peer: String,
        /// The configured identity.
        expected: String,
    },
    /// The card names another identity (or trust domain) than the configured one.
    #[error("the agent card names {card}, not the expected {expected}")]
    CardMismatch {
        /// What the card says.
        card: String,
        /// The configured identity.
        expected: String,
    },
    /// The card has no agentid extension, or more than one.
    #[error("the agent card has {0} agentid extensions (exactly one is required)")]
    Extension(usize),
    /// The card does not declare the `mutualTLS` security scheme.
    #[error("the agent card declares no mutualTLS security scheme")]
    NoMutualTls,
    /// The card's `protocolVersion` is not [`A2A_PROTOCOL_VERSION`].
    #[error("unsupported A2A protocol version {0:?}")]
    Version(String),
    /// The card or a response is not what A2A specifies (or is too large).
    #[error("malformed A2A document: {0}")]
    Malformed(String),
    /// The server answered with an HTTP error (an agentid refusal carries its code).
    #[error("HTTP {status}: {code}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The agentid refusal code, or empty.
        code: String,
    },
    /// A JSON-RPC error response.
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The agentid transport failed (handshake, server proof, audience, I/O).
    #[error(transparent)]
    Transport(#[from] Error),
}

impl A2aError {
    /// A stable code for logs and tests.
    pub fn code(&self) -> &str {
        match self {
            Self::PeerMismatch { .. } => "peer_mismatch",
            Self::CardMismatch { .. } => "card_identity_mismatch",
            Self::Extension(_) => "card_extension_missing",
            Self::NoMutualTls => "card_no_mutual_tls",
            Self::Version(_) => "card_version",
            Self::Malformed(_) => "malformed",
            Self::Http { code, .. } if !code.is_empty() => code,
            Self::Http { .. } => "http_error",
            Self::Rpc { .. } => "rpc_error",
            Self::Transport(e) => e.reason(),
        }
    }
}

/// Checks a card against the identity the client expects: A2A [`A2A_PROTOCOL_VERSION`], a
/// `mutualTLS` security scheme, exactly one agentid extension whose `spiffeId` and
/// `trustDomain` are exactly `expected`'s. Nothing else in the card is trusted.
pub fn check_card(card: &AgentCard, expected: &SpiffeId) -> Result<(), A2aError> {
    if card.protocol_version != A2A_PROTOCOL_VERSION {
        return Err(A2aError::Version(peer_text(card.protocol_version.clone())));
    }
    let mtls = card
        .security_schemes
        .values()
        .any(|s| s.get("type").and_then(serde_json::Value::as_str) == Some("mutualTLS"));
    if !mtls {
        return Err(A2aError::NoMutualTls);
    }
    let ours: Vec<&AgentExtension> = card
        .capabilities
        .extensions
        .iter()
        .filter(|e| e.uri == AGENTID_EXTENSION_URI)
        .collect();
    let [ext] = ours.as_slice() else {
        return Err(A2aError::Extension(ours.len()));
    };
    let params: IdentityParams = ext
        .params
        .clone()
        .ok_or_else(|| A2aError::Malformed("agentid extension without params".into()))
        .and_then(|p| {
            serde_json::from_value(p)
                .map_err(|e| A2aError::Malformed(peer_text(format!("params: {e}"))))
        })?;
    if params.spiffe_id != expected.as_str() || params.trust_domain != expected.trust_domain_str() {
        return Err(A2aError::CardMismatch {
            card: peer_text(format!(
                "{} (trust domain {})",
                params.spiffe_id, params.trust_domain
            )),
            expected: expected.to_string(),
        });
    }
    Ok(())
}

/// An A2A client on the agentid HTTP client, expecting one agent identity.
///
/// Build the [`HttpClient`] with a peer policy admitting the expected identity (ideally
/// `PeerPolicy::exact`); the client checks the peer again itself, so a broader policy cannot
/// make it talk to another agent.
#[derive(Clone, Debug)]
pub struct A2aClient {
    http: HttpClient,
    expected: SpiffeId,
    timeout: Duration,
}

/// How long an A2A client waits for an answer (the card, a `message/send` result: the
/// response and its body) by default ([`A2aClient::timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to a checked A2A agent.
#[derive(Debug)]
pub struct A2aConnection {
    conn: HttpClientConnection,
    card: AgentCard,
    next_id: u64,
    timeout: Duration,
}

/// `answer` within `timeout`, else the transport's `response_timeout`: the connection's
/// timeouts cover TCP and TLS only, and a server may take a request and never answer it, or
/// answer a byte at a time.
async fn within<T>(
    timeout: Duration,
    answer: impl std::future::Future<Output = Result<T, A2aError>>,
) -> Result<T, A2aError> {
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| A2aError::Transport(Error::Timeout(TimeoutKind::Response)))?
}

async fn read_limited(resp: crate::http::HttpResponse, max: usize) -> Result<Bytes, A2aError> {
    Limited::new(resp.into_body(), max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| A2aError::Malformed(format!("body: {e}")))
}

async fn http_error(resp: crate::http::HttpResponse) -> A2aError {
    let status = resp.status().as_u16();
    #[derive(Deserialize)]
    struct RefusalBody {
        code: String,
    }
    let code = read_limited(resp, 4096)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<RefusalBody>(&b).ok())
        .map(|b| b.code)
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or_default();
    A2aError::Http { status, code }
}

impl A2aClient {
    /// A client that talks only to `expected` (from the client's own configuration).
    pub fn new(http: HttpClient, expected: SpiffeId) -> Self {
        Self {
            http,
            expected,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long to wait for each answer, the card's included (default [`DEFAULT_TIMEOUT`]);
    /// past it the call fails with the transport's `response_timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects to `addr` (`authority` as the requests' `:authority`), checks the mTLS peer
    /// against the expected identity, then fetches the card from [`AGENT_CARD_PATH`] on the
    /// same connection and checks it ([`check_card`]). No other URL is ever fetched.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        authority: &str,
    ) -> Result<A2aConnection, A2aError> {
        let mut conn = self.http.connect(addr, authority).await?;
        let peer = conn.peer().info.id.as_spiffe_id();
        if peer != &self.expected {
            return Err(A2aError::PeerMismatch {
                peer: peer.to_string(),
                expected: self.expected.to_string(),
            });
        }
        let req = Request::get(AGENT_CARD_PATH)
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| A2aError::Malformed(e.to_string()))?;
        let body = within(self.timeout, async {
            let resp = conn.send(req).await?;
            if resp.status() != StatusCode::OK {
                return Err(http_error(resp).await);
            }
            read_limited(resp, MAX_CARD_BYTES).await
        })
        .await?;
        let card: AgentCard = serde_json::from_slice(&body)
            .map_err(|e| A2aError::Malformed(peer_text(format!("agent card: {e}"))))?;
        check_card(&card, &self.expected)?;
        Ok(A2aConnection {
            conn,
            card,
            next_id: 1,
            timeout: self.timeout,
        })
    }
}

impl A2aConnection {
    /// The checked card.
    pub fn card(&self) -> &AgentCard {
        &self.card
    }

    /// The agentid connection (peer, receipts).
    pub fn http(&self) -> &HttpClientConnection {
        &self.conn
    }

    /// Sends A2A `message/send` (JSON-RPC 2.0) with one text part to `path` on this
    /// connection, and returns the `result` (a `Message` or a `Task`).
    pub async fn send_text(
        &mut self,
        path: &str,
        text: &str,
    ) -> Result<serde_json::Value, A2aError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "message/send",
            "params": { "message": {
                "kind": "message",
                "role": "user",
                "messageId": format!("m{id}"),
                "parts": [{ "kind": "text", "text": text }],
            }},
        });
        let req = Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(body.to_string()))
            .map_err(|e| A2aError::Malformed(e.to_string()))?;
        let conn = &mut self.conn;
        let body = within(self.timeout, async {
            let resp = conn.send(req).await?;
            if resp.status() != StatusCode::OK {
                return Err(http_error(resp).await);
            }
            read_limited(resp, MAX_RESPONSE_BYTES).await
        })
        .await?;
        #[derive(Deserialize)]
        struct RpcError {
            code: i64,
            message: String,
        }
        #[derive(Deserialize)]
        struct RpcResponse {
            #[serde(default)]
            id: serde_json::Value,
            #[serde(default)]
            result: Option<serde_json::Value>,
            #[serde(default)]
            error: Option<RpcError>,
        }
        let resp: RpcResponse = serde_json::from_slice(&body)
            .map_err(|e| A2aError::Malformed(peer_text(format!("JSON-RPC response: {e}"))))?;
        // JSON-RPC 2.0: a response carries the request's id (an error, `null` when the server
        // could not read it); an answer under any other id is not the answer to this request.
        let ours = resp.id.as_u64() == Some(id);
        match (resp.result, resp.error) {
            (_, Some(e)) if ours || resp.id.is_null() => Err(A2aError::Rpc {
                code: e.code,
                message: peer_text(e.message),
            }),
            _ if !ours => Err(A2aError::Malformed(
                "JSON-RPC response under another id".into(),
            )),
            (Some(r), _) => Ok(r),
            (None, _) => Err(A2aError::Malformed(
                "JSON-RPC response without result".into(),
            )),
        }
    }
}
