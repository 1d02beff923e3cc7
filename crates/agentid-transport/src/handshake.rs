//! Client and server: TLS 1.3 handshake with our verifiers, then the hello / accept exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{
    verify_proof, Chain, ErrorCode, ProofBuilder, ProofContext, Role, VerifiedChain, EXPORTER_LABEL,
};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::NoServerSessionStorage;
use rustls::{ConnectionCommon, HandshakeKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tracing::field::Empty;
use tracing::Instrument as _;

use crate::credentials::{Credential, CredentialResolver, CredentialSource};
use crate::error::{Error, FrameError, Result, TimeoutKind};
use crate::frame::{self, body_bytes, parse_body, Accept, FrameType, Hello, Reason};
use crate::policy::PeerPolicy;
use crate::provider::{self, ALPN};
use crate::session::{
    now_unix, AuthenticatedPeer, Receipts, Session, SessionParts, PROOF_LIFETIME,
};
use crate::svid::{CertUsage, SvidInfo};
use crate::verification::PeerVerification;
use crate::verifier::{from_tls_error, SpiffeClientCertVerifier, SpiffeServerCertVerifier};

/// Timeouts and caps. The defaults are conservative for agents talking at machine speed.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// The TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// The first frame (hello at the server, accept or reject at the client) must arrive within
    /// this time after the TLS handshake.
    pub first_frame_timeout: Duration,
    /// Concurrent sessions (including those in handshake) a server holds.
    pub max_connections: usize,
    /// Concurrent handshakes (TLS plus hello) a server runs.
    pub max_handshakes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            first_frame_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_handshakes: 64,
        }
    }
}

/// Everything rustls tells us after the handshake that the exchange needs.
struct AfterTls {
    peer: SvidInfo,
    exporter_client: [u8; 32],
    exporter_server: [u8; 32],
}

fn after_tls<D>(
    conn: &ConnectionCommon<D>,
    usage: CertUsage,
    verification: &PeerVerification,
) -> Result<AfterTls> {
    // Only full handshakes: a resumed session would skip our certificate verifier.
    match conn.handshake_kind() {
        Some(HandshakeKind::Full) | Some(HandshakeKind::FullWithHelloRetryRequest) => {}
        _ => return Err(Error::HandshakeRefused("not a full TLS 1.3 handshake")),
    }
    if conn.alpn_protocol() != Some(ALPN) {
        return Err(Error::HandshakeRefused("ALPN agentid/1 not negotiated"));
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(Error::HandshakeRefused("no peer certificate"))?;
    // The verifier already validated chain, leaf rules and policy; take the values it read (a
    // fresh parse if they are no longer remembered).
    let peer = verification
        .trust_store()
        .verified_leaf(leaf.as_ref(), usage)?;
    let exporter = |ctx: &[u8]| {
        conn.export_keying_material([0u8; 32], EXPORTER_LABEL, Some(ctx))
            .map_err(Error::Tls)
    };
    Ok(AfterTls {
        peer,
        exporter_client: exporter(Role::Client.exporter_context())?,
        exporter_server: exporter(Role::Server.exporter_context())?,
    })
}

fn map_tls_io(e: std::io::Error) -> Error {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return from_tls_error(tls).unwrap_or_else(|| Error::Tls(tls.clone()));
    }
    Error::Io(e)
}

fn verify_peer_authority(
    verification: &PeerVerification,
    peer: &SvidInfo,
    chain: Option<&str>,
    now: u64,
) -> Result<Option<VerifiedChain>> {
    let v = verification.verifier();
    match chain {
        Some(c) => Ok(Some(v.verify_chain(
            c,
            peer.id.as_spiffe_id(),
            &peer.public_key,
            now,
        )?)),
        None => {
            v.check_peer_revocation(peer.id.as_spiffe_id(), &peer.public_key, now)?;
            Ok(None)
        }
    }
}

fn record_outcome<T>(span: &tracing::Span, result: &Result<T>) {
    match result {
        Ok(_) => {
            span.record("outcome", "accepted");
        }
        Err(e) => {
            span.record("outcome", "rejected");
            span.record("reason", e.reason());
            tracing::warn!(parent: span, reason = e.reason(), error = %e, "handshake failed");
        }
    }
}

fn record_peer(span: &tracing::Span, peer: &SvidInfo) {
    span.record("peer.id", tracing::field::display(&peer.id));
    if let agentid_protocol::PeerId::Task(t) = &peer.id {
        span.record("task.id", tracing::field::display(t.task_id()));
    }
    span.record("cert.serial", peer.serial.as_str());
}

/// An agentid server. Build it with [`AgentServer::builder`]; a peer policy is required.
#[derive(Clone)]
pub struct AgentServer {
    acceptor: TlsAcceptor,
    credentials: Arc<dyn CredentialSource>,
    verification: Arc<PeerVerification>,
    limits: ConnectionLimits,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AgentServer`].
#[derive(Debug)]
#[must_use]
pub struct AgentServerBuilder {
    credentials: Arc<dyn CredentialSource>,
    verification: Arc<PeerVerification>,
    policy: PeerPolicy,
    limits: ConnectionLimits,
}

impl AgentServer {
    /// A server presenting `credentials`, verifying clients with `verification`, admitting those
    /// `policy` allows.
    pub fn builder(
        credentials: Arc<dyn CredentialSource>,
        verification: Arc<PeerVerification>,
        policy: PeerPolicy,
    ) -> AgentServerBuilder {
        AgentServerBuilder {
            credentials,
            verification,
            policy,
            limits: ConnectionLimits::default(),
        }
    }

    /// Accepts one connection: TLS handshake (timeout), then the hello (timeout), verification
    /// and accept or reject. Fails fast with [`Error::Busy`] at the connection or handshake cap.
    pub async fn accept<IO>(&self, io: IO) -> Result<Session<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let conn_permit = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Busy)?;
        let hs_permit = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Busy)?;
        let span = tracing::info_span!(
            "agentid.handshake",
            role = "server",
            peer.id = Empty,
            task.id = Empty,
            cert.serial = Empty,
            outcome = Empty,
            reason = Empty
        );
        let result = self.accept_inner(io, &span).instrument(span.clone()).await;
        record_outcome(&span, &result);
        drop(hs_permit);
        let mut parts = result?;
        parts.permit = Some(conn_permit);
        Ok(Session::new(parts))
    }

    async fn accept_inner<IO>(&self, io: IO, span: &tracing::Span) -> Result<SessionParts<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut tls = timeout(self.limits.handshake_timeout, self.acceptor.accept(io))
            .await
            .map_err(|_| Error::Timeout(TimeoutKind::Handshake))?
            .map_err(map_tls_io)?;
        let after = after_tls(tls.get_ref().1, CertUsage::ClientAuth, &self.verification)?;
        record_peer(span, &after.peer);
        let local = self.credentials.current().ok_or(Error::NoCredential)?;

        let verified = async {
            let first = timeout(self.limits.first_frame_timeout, frame::read_frame(&mut tls))
                .await
                .map_err(|_| Error::Timeout(TimeoutKind::FirstFrame))??
                .ok_or(FrameError::Truncated)?;
            if first.ty != FrameType::Hello {
                return Err(FrameError::Unexpected(first.ty.name()).into());
            }
            self.verify_hello(&first.body, &after, &local)
        }
        .await;
        let (hello, client_jti, chain) = match verified {
            Ok(v) => v,
            Err(e) => {
                tell_peer(&mut tls, FrameType::Reject, &e).await;
                return Err(e);
            }
        };

        let now = now_unix();
        let mut builder = ProofBuilder::new(
            local.identity().as_spiffe_id(),
            after.peer.id.as_spiffe_id(),
            Role::Server,
            after.exporter_server,
            now,
            now + PROOF_LIFETIME,
        )
        .responding_to(&hello.proof);
        if let Some(c) = local.chain() {
            builder = builder.chain(c);
        }
        let server_proof = builder.sign(local.task_key())?;
        let accept = Accept {
            proof: server_proof.clone(),
            chain: local.chain().map(str::to_owned),
        };
        frame::write_frame(&mut tls, FrameType::Accept, &body_bytes(&accept)?).await?;

        let deadline = chain.as_ref().map_or(after.peer.not_after, |c| {
            c.expires.min(after.peer.not_after)
        });
        Ok(SessionParts {
            changes: self.verification.subscribe(),
            io: TlsStream::Server(tls),
            role: Role::Server,
            peer: AuthenticatedPeer {
                id: after.peer.id.clone(),
                public_key: after.peer.public_key.clone(),
                cert_serial: after.peer.serial.clone(),
                cert_not_after: after.peer.not_after,
                chain,
                deadline,
                receipts: Receipts {
                    client_proof: hello.proof,
                    server_proof,
                    reauth_proofs: Vec::new(),
                },
            },
            peer_chain: hello.chain,
            local,
            verification: self.verification.clone(),
            exporter_client: after.exporter_client,
            exporter_server: after.exporter_server,
            permit: None,
            jtis: vec![client_jti],
        })
    }

    fn verify_hello(
        &self,
        body: &[u8],
        after: &AfterTls,
        local: &Credential,
    ) -> Result<(Hello, String, Option<VerifiedChain>)> {
        let hello: Hello = parse_body(body)?;
        let now = now_unix();
        let v = self.verification.verifier();
        let proof = verify_proof(
            &hello.proof,
            &ProofContext {
                presenter_id: after.peer.id.as_spiffe_id(),
                presenter_key: &after.peer.public_key,
                verifier_id: local.identity().as_spiffe_id(),
                role: Role::Client,
                exporter: after.exporter_client,
                now,
                skew: v.config().skew_seconds(),
                chain: hello.chain.as_deref(),
                client_proof: None,
            },
        )?;
        let chain =
            verify_peer_authority(&self.verification, &after.peer, hello.chain.as_deref(), now)?;
        // The verified proof's `jti` (never re-decoded): a later reauth may not reuse it.
        Ok((hello, proof.jti, chain))
    }
}

impl AgentServerBuilder {
    /// Overrides the timeouts and caps.
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Builds the server: TLS 1.3 only, ALPN `agentid/1`, our client-certificate verifier
    /// (mandatory client certificates), no session cache, no tickets, no 0-RTT.
    pub fn build(self) -> Result<AgentServer> {
        if self.limits.max_connections == 0 || self.limits.max_handshakes == 0 {
            return Err(Error::Config("connection caps must be at least 1".into()));
        }
        let verifier = SpiffeClientCertVerifier::new(self.verification.trust_handle(), self.policy);
        let mut config = provider::server_config_builder()?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(CredentialResolver(self.credentials.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(AgentServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            credentials: self.credentials,
            verification: self.verification,
            connections: Arc::new(Semaphore::new(self.limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(self.limits.max_handshakes)),
            limits: self.limits,
        })
    }
}

/// An agentid client. Build it with [`AgentClient::builder`]; a peer policy is required.
#[derive(Clone)]
pub struct AgentClient {
    connector: TlsConnector,
    credentials: Arc<dyn CredentialSource>,
    verification: Arc<PeerVerification>,
    limits: ConnectionLimits,
    require_audience: bool,
}

/// Builds an [`AgentClient`].
#[derive(Debug)]
#[must_use]
pub struct AgentClientBuilder {
    credentials: Arc<dyn CredentialSource>,
    verification: Arc<PeerVerification>,
    policy: PeerPolicy,
    limits: ConnectionLimits,
    require_audience: bool,
}

impl AgentClientBuilder {
    /// Overrides the timeouts (the caps are server-side).
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Refuses (before sending the chain) a server that the client's own chain's effective
    /// audience does not cover.
    pub fn require_server_in_audience(mut self) -> Self {
        self.require_audience = true;
        self
    }

    /// Builds the client: TLS 1.3 only, ALPN `agentid/1`, our server-certificate verifier, no
    /// resumption, no 0-RTT, no SNI.
    pub fn build(self) -> Result<AgentClient> {
        let verifier = SpiffeServerCertVerifier::new(self.verification.trust_handle(), self.policy);
        let mut config = provider::client_config_builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(CredentialResolver(self.credentials.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = Resumption::disabled();
        config.enable_early_data = false;
        config.enable_sni = false;
        Ok(AgentClient {
            connector: TlsConnector::from(Arc::new(config)),
            credentials: self.credentials,
            verification: self.verification,
            limits: self.limits,
            require_audience: self.require_audience,
        })
    }
}

impl AgentClient {
    /// A client presenting `credentials`, verifying servers with `verification`, admitting
    /// those `policy` allows.
    pub fn builder(
        credentials: Arc<dyn CredentialSource>,
        verification: Arc<PeerVerification>,
        policy: PeerPolicy,
    ) -> AgentClientBuilder {
        AgentClientBuilder {
            credentials,
            verification,
            policy,
            limits: ConnectionLimits::default(),
            require_audience: false,
        }
    }

    /// Connects over TCP to `addr` and runs the handshake.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Session<TcpStream>> {
        let tcp = timeout(self.limits.handshake_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(TimeoutKind::Handshake))??;
        tcp.set_nodelay(true)?;
        self.connect_with(tcp).await
    }

    /// Runs the handshake over an established byte stream.
    pub async fn connect_with<IO>(&self, io: IO) -> Result<Session<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let span = tracing::info_span!(
            "agentid.handshake",
            role = "client",
            peer.id = Empty,
            task.id = Empty,
            cert.serial = Empty,
            outcome = Empty,
            reason = Empty
        );
        let result = self.connect_inner(io, &span).instrument(span.clone()).await;
        record_outcome(&span, &result);
        Ok(Session::new(result?))
    }

    async fn connect_inner<IO>(&self, io: IO, span: &tracing::Span) -> Result<SessionParts<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // The server is authorized by its URI SAN; this name is never checked (and SNI is off).
        let name =
            ServerName::try_from("agentid.invalid").map_err(|e| Error::Config(e.to_string()))?;
        let mut tls = timeout(
            self.limits.handshake_timeout,
            self.connector.connect(name, io),
        )
        .await
        .map_err(|_| Error::Timeout(TimeoutKind::Handshake))?
        .map_err(map_tls_io)?;
        let after = after_tls(tls.get_ref().1, CertUsage::ServerAuth, &self.verification)?;
        record_peer(span, &after.peer);
        let local = self.credentials.current().ok_or(Error::NoCredential)?;

        if let (true, Some(chain)) = (self.require_audience, local.chain()) {
            // Our own chain, read without verification (we are its presenter): a chain that does
            // not even frame, or whose effective audience misses the server, is never sent.
            let audience = Chain::parse_unverified(chain)?.audience_unverified()?;
            if !audience.covers_id(after.peer.id.as_spiffe_id()) {
                return Err(Error::Protocol(agentid_protocol::Error::new(
                    ErrorCode::AudienceMismatch,
                    format!("server {} is not in the chain's audience", after.peer.id),
                )));
            }
        }

        let now = now_unix();
        let mut builder = ProofBuilder::new(
            local.identity().as_spiffe_id(),
            after.peer.id.as_spiffe_id(),
            Role::Client,
            after.exporter_client,
            now,
            now + PROOF_LIFETIME,
        );
        if let Some(c) = local.chain() {
            builder = builder.chain(c);
        }
        let client_proof = builder.sign(local.task_key())?;
        let hello = Hello {
            chain: local.chain().map(str::to_owned),
            proof: client_proof.clone(),
        };
        frame::write_frame(&mut tls, FrameType::Hello, &body_bytes(&hello)?)
            .await
            .map_err(map_frame_tls)?;

        let verified = async {
            let first = timeout(self.limits.first_frame_timeout, frame::read_frame(&mut tls))
                .await
                .map_err(|_| Error::Timeout(TimeoutKind::FirstFrame))?
                .map_err(map_frame_tls)?
                .ok_or(FrameError::Truncated)?;
            let accept: Accept = match first.ty {
                FrameType::Accept => parse_body(&first.body)?,
                FrameType::Reject => {
                    let r: Reason = parse_body(&first.body)?;
                    return Err(Error::Rejected {
                        code: r.code,
                        message: r.message,
                    });
                }
                other => return Err(FrameError::Unexpected(other.name()).into()),
            };
            let now = now_unix();
            let v = self.verification.verifier();
            let server_proof = verify_proof(
                &accept.proof,
                &ProofContext {
                    presenter_id: after.peer.id.as_spiffe_id(),
                    presenter_key: &after.peer.public_key,
                    verifier_id: local.identity().as_spiffe_id(),
                    role: Role::Server,
                    exporter: after.exporter_server,
                    now,
                    skew: v.config().skew_seconds(),
                    chain: accept.chain.as_deref(),
                    client_proof: Some(&client_proof),
                },
            )?;
            let chain = verify_peer_authority(
                &self.verification,
                &after.peer,
                accept.chain.as_deref(),
                now,
            )?;
            Ok((accept, server_proof, chain))
        }
        .await;
        let (accept, server_proof, chain) = match verified {
            Ok(v) => v,
            Err(e) => {
                // The server already holds a session: tell it why the client walks away.
                tell_peer(&mut tls, FrameType::Close, &e).await;
                return Err(e);
            }
        };
        let deadline = chain.as_ref().map_or(after.peer.not_after, |c| {
            c.expires.min(after.peer.not_after)
        });
        Ok(SessionParts {
            changes: self.verification.subscribe(),
            io: TlsStream::Client(tls),
            role: Role::Client,
            peer: AuthenticatedPeer {
                id: after.peer.id.clone(),
                public_key: after.peer.public_key.clone(),
                cert_serial: after.peer.serial.clone(),
                cert_not_after: after.peer.not_after,
                chain,
                deadline,
                receipts: Receipts {
                    client_proof,
                    server_proof: accept.proof,
                    reauth_proofs: Vec::new(),
                },
            },
            peer_chain: accept.chain,
            local,
            verification: self.verification.clone(),
            exporter_client: after.exporter_client,
            exporter_server: after.exporter_server,
            permit: None,
            jtis: vec![server_proof.jti],
        })
    }
}

/// Best effort: a reject (server) or close (client) frame with the reason of `e`, when the
/// failure is the peer's input (a frame or a verification), not a dead or silent connection.
async fn tell_peer<S: AsyncWrite + Unpin>(io: &mut S, ty: FrameType, e: &Error) {
    if matches!(
        e,
        Error::Io(_)
            | Error::Tls(_)
            | Error::Timeout(_)
            | Error::Rejected { .. }
            | Error::Frame(FrameError::Truncated)
    ) {
        return;
    }
    let reason = Reason {
        code: e.reason().to_owned(),
        message: e.to_string(),
    };
    if let Ok(body) = body_bytes(&reason) {
        let _ = frame::write_frame(io, ty, &body).await;
    }
}

/// In TLS 1.3 the client's handshake ends before the server has checked the client certificate:
/// a refusal arrives as an alert on the first read or write.
fn map_frame_tls(e: Error) -> Error {
    match e {
        Error::Io(io) => map_tls_io(io),
        other => other,
    }
}
