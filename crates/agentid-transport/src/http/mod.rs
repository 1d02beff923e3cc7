//! The HTTP binding (spec/PROTOCOL.md section 22), behind the `http` feature.
//!
//! * **TLS for any stack**: [`server_config`] / [`client_config`] return rustls configurations
//!   with agentid's verifiers, a required [`PeerPolicy`](crate::PeerPolicy), rotation through a
//!   [`CredentialSource`](crate::CredentialSource), no resumption, ALPN `h2` and `http/1.1`;
//!   [`server_peer`] / [`client_peer`] read the verified peer from a connection.
//! * **Chains over HTTP**: [`HttpServer`] runs hyper (h1 or h2 by ALPN) behind an outermost
//!   per-connection service holding the presentation state ([`PresentationMachine`]):
//!   `agentid-chain` and `agentid-proof` are verified once per connection, bound to its TLS
//!   exporter, and every response to a request with a proof carries the server's proof.
//! * **Per request**: each request carries an [`Authorizer`] (an axum extractor with the `axum`
//!   feature) whose checks compare the verification epoch (one atomic load) before the scope and
//!   limits; the tower layer [`Require`] ([`RequireScope`], [`RequirePeer`], or any
//!   [`Requirement`]) runs over it; decisions go to a
//!   [`DecisionSink`] ([`TracingSink`] by default: denials at INFO, grants at DEBUG).
//! * **Deadlines**: graceful close (h1 `Connection: close`, h2 GOAWAY) at the deadline minus a
//!   margin and at once on revocation; streaming bodies are cut at the deadline or on revocation;
//!   a response whose handler finished past the deadline is refused; server and client proofs
//!   are signed again when half their lifetime is gone before they are sent. Idle connections
//!   close after [`HttpOptions::idle_timeout`] (30 s by default; an HTTP/1.1 keep-alive
//!   connection also after [`HttpOptions::header_read_timeout`], 10 s by default); a request
//!   body with nothing new for [`HttpOptions::body_idle_timeout`] (30 s) fails with
//!   [`BodyStalled`] in the service reading it ([`RequestBody`]).
//! * **Client**: [`HttpClient`] presents the chain and checks the server's proof and audience.
//!
//! ## A requirement per route
//!
//! Put [`RequireScope`] or [`RequirePeer`] on the handler (axum's `Handler::layer`): every
//! request to it is authorized through its [`Authorizer`] (the connection's deadline and
//! revocation epoch first, then the scope, or the peer policy) before the handler runs.
//! `get(files).layer(..)` and `Router::route_layer` authorize the same requests, but axum then
//! wraps the route in a second boxed route, which costs about a tenth of an HTTP/1.1 request
//! (figure 9 of BENCHMARKS.md); `get(files).layer(..)` also refuses a request for a method the
//! route lacks before axum answers 405. A handler can also take the [`Authorizer`] as an
//! extractor and call [`Authorizer::authorize`] itself.
#![cfg_attr(
    feature = "axum",
    doc = r##"
```
# fn main() -> Result<(), Box<dyn std::error::Error>> {
use agentid_protocol::{AgentId, Scope};
use agentid_transport::http::{RequirePeer, RequireScope};
use agentid_transport::PeerPolicy;
use axum::handler::Handler as _;
use axum::routing::get;

async fn files() -> &'static str {
    "contents"
}
async fn status() -> &'static str {
    "up"
}

let ops = AgentId::parse("spiffe://example.org/agent/ops")?;
let app: axum::Router = axum::Router::new()
    .route("/files", get(files.layer(RequireScope::new(Scope::parse("files:read")?))))
    .route("/status", get(status.layer(RequirePeer::new(PeerPolicy::agent(ops)))));
# let _ = app;
# Ok(())
# }
```
"##
)]
//!
//! ## reqwest for identity-only calls
//!
//! reqwest can call an agentid HTTP service with the peer's certificate only (no chain, so no
//! delegated authority: routes behind [`RequirePeer`] only). Give it our configuration, and
//! build reqwest without a rustls provider of its own, so that aws-lc-rs stays the only one:
//!
//! ```toml
//! reqwest = { version = "0.12", default-features = false, features = ["rustls-tls-manual-roots-no-provider"] }
//! ```
//!
//! ```no_run
//! # use std::net::SocketAddr;
//! # use std::sync::Arc;
//! # use agentid_transport::{CredentialSource, PeerPolicy, PeerVerification};
//! # async fn call(
//! #     credentials: Arc<dyn CredentialSource>,
//! #     verification: Arc<PeerVerification>,
//! #     policy: PeerPolicy,
//! #     addr: SocketAddr,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = agentid_transport::http::client_config(credentials, &verification, policy)?;
//! let client = reqwest::Client::builder()
//!     .use_preconfigured_tls(tls)
//!     // Service certificates carry DNS names listed by policy; no IP SANs.
//!     .resolve("files.example.org", addr)
//!     .build()?;
//! let body = client.get("https://files.example.org/peer").send().await?.text().await?;
//! # Ok(())
//! # }
//! ```
//!
//! reqwest pools connections beyond the certificate's lifetime; with per-task certificates
//! set `pool_idle_timeout` below the certificate lifetime. It never sends agentid headers: for
//! chains use [`HttpClient`].

mod authz;
mod body;
mod client;
#[cfg(feature = "enroll")]
pub(crate) use client::DEFAULT_CLOSE_MARGIN;
mod enroll_tls;
mod presentation;
mod refusal;
mod server;
mod stall;
mod tls;

pub use authz::{
    Authorizer, Decision, DecisionSink, Require, RequireFuture, RequirePeer, RequirePeerService,
    RequireScope, RequireScopeService, RequireService, Requirement, Resource, TracingSink,
    CORRELATION_HEADER, MAX_CORRELATION_ID_BYTES,
};
pub use body::{BodyCut, BodyStalled, BoxError, RequestBody, ResponseBody};
pub use client::{HttpClient, HttpClientBuilder, HttpClientConnection, HttpResponse};
pub use enroll_tls::{danger_no_client_auth_for_enrollment, enrollment_client_config};
pub use presentation::{
    parse_presentation, Dispatch, Presentation, PresentationMachine, PresentationState,
    CHAIN_HEADER, MAX_HTTP_CHAIN_BYTES, MAX_HTTP_PROOF_BYTES, PROOF_HEADER,
    SERVER_HEADER_LIST_LIMIT,
};
pub use refusal::{
    Refusal, BAD_CERTIFICATE, BUSY, CREDENTIAL_EXPIRED, INTERNAL, PEER_DENIED,
    PRESENTATION_CHANGED, PROOF_MISSING,
};
pub use server::{HttpConnection, HttpOptions, HttpServer, HttpServerBuilder};

/// Text a server sent (a JSON-RPC error's message, an agent card's fields, a parser's error
/// quoting them), fit for an error and a log line: cut to 512 bytes and without control
/// characters, as the reason of a reject or close frame ([`crate::frame`]). A response may carry
/// a MiB of it, forged log lines and terminal escapes included.
#[cfg(any(feature = "a2a", feature = "mcp"))]
pub(crate) fn peer_text(text: String) -> String {
    agentid_protocol::clean_text(text, crate::frame::MAX_PEER_MESSAGE)
}
pub use tls::{
    client_config, client_peer, server_config, server_peer, HttpVersion, TlsPeer, ALPN_H2,
    ALPN_HTTP11,
};
