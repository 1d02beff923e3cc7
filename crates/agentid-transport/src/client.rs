//! The client side: TLS 1.3 with our server-certificate verifier, then the hello and the
//! server's accept (or reject), verified.

use std::net::SocketAddr;
use std::sync::Arc;

use agentid_protocol::{ErrorCode, PeerId, Presentation, PresentationContext, ProofBuilder, Role};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::{TlsConnector, TlsStream};
use tracing::Instrument as _;

use crate::connection_limits::ConnectionLimits;
use crate::credentials::{pinned_client_config, Credential, CredentialResolver, CredentialSource};
use crate::error::{Error, FrameError, Result, TimeoutKind};
use crate::establish::{
    after_tls, handshake_span, map_frame_tls, map_tls_io, record_outcome, record_peer, tell_peer,
    verify_presented, write_handshake_frame, Established, SeenBefore,
};
use crate::frame::{self, parse_body, Accept, FrameType, Reason};
use crate::peer_policy::PeerPolicy;
use crate::provider;
use crate::provider::ALPN;
use crate::rustls_verifier::SpiffeServerCertVerifier;
use crate::session::{now_unix, Receipts, Session, PROOF_LIFETIME};
use crate::svid::CertUsage;
use crate::trust_state::PeerVerification;

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// An agentid client. Build it with [`AgentClient::builder`]; a peer policy is required.
#[derive(Clone)]
pub struct AgentClient {
    /// Each connection presents one credential: this config with it pinned.
    config: Arc<rustls::ClientConfig>,
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
    /// audience does not cover; on a live session, a renewed credential whose chain does not
    /// cover the server is not sent in a reauth either ([`Session::reauth`] fails with
    /// `audience_mismatch`). This is the default; the method undoes
    /// [`AgentClientBuilder::danger_skip_audience_check`].
    pub fn require_server_in_audience(mut self) -> Self {
        self.require_audience = true;
        self
    }

    /// Sends the chain (in the hello and in reauths) even to a server its effective audience
    /// does not cover (the server will refuse it with `audience_mismatch`). Dangerous: the
    /// chain (its scope, principal and task) leaves for a server it was not meant for.
    pub fn danger_skip_audience_check(mut self) -> Self {
        self.require_audience = false;
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
            config: Arc::new(config),
            credentials: self.credentials,
            verification: self.verification,
            limits: self.limits.bounded(),
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
            require_audience: true,
        }
    }

    /// Connects over TCP to `addr` and runs the handshake.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Session<TcpStream>> {
        self.credentials.current().ok_or(Error::NoCredential)?;
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
        let span = handshake_span(Role::Client);
        let result = self.connect_inner(io, &span).instrument(span.clone()).await;
        record_outcome(&span, &result);
        let mut parts =
            result?.into_parts(self.limits.idle_timeout, self.limits.first_frame_timeout);
        // Also for the chains of later reauths.
        parts.require_audience = self.require_audience;
        Ok(Session::new(parts))
    }

    async fn connect_inner<IO>(&self, io: IO, span: &tracing::Span) -> Result<Established<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // The server is authorized by its URI SAN; this name is never checked (and SNI is off).
        // No credential to present (none, or past its notAfter): a local `no_credential`, not
        // a handshake the server refuses.
        let seen = SeenBefore::of(&self.verification, &*self.credentials);
        // The handshake presents the credential current now, and the hello's proof is signed
        // with that same one (a rotation meanwhile cannot split them; a renewal meanwhile is
        // sent as a `reauth`).
        let local = self.credentials.current().ok_or(Error::NoCredential)?;
        let name =
            ServerName::try_from("agentid.invalid").map_err(|e| Error::Config(e.to_string()))?;
        let connector = TlsConnector::from(pinned_client_config(&self.config, &local));
        let mut tls = timeout(self.limits.handshake_timeout, connector.connect(name, io))
            .await
            .map_err(|_| Error::Timeout(TimeoutKind::Handshake))?
            .map_err(map_tls_io)?;
        let after = after_tls(tls.get_ref().1, CertUsage::ServerAuth, &self.verification)?;
        record_peer(span, &after.peer);

        if self.require_audience {
            server_in_audience(&local, &after.peer.id)?;
        }

        let now = now_unix();
        // The server's own revocation status (its key, agent and task) before the hello: a
        // revoked server, or one whose domain's list is missing or stale, is never sent the
        // chain (spec/PROTOCOL.md 16.3, client step 3).
        self.verification.verifier().check_peer_revocation(
            after.peer.id.as_spiffe_id(),
            &after.peer.public_key,
            now,
        )?;
        let mut builder = ProofBuilder::new(
            local.identity().as_spiffe_id(),
            after.peer.id.as_spiffe_id(),
            Role::Client,
            after.exporter_client,
            now,
            now + PROOF_LIFETIME,
        );
        if let Some(h) = local.chain_hash() {
            builder = builder.chain_hash(h);
        }
        let client_proof = builder.sign(local.task_key())?;
        let hello = frame::presentation_body(FrameType::Hello, &client_proof, local.chain_json());
        write_handshake_frame(
            &mut tls,
            FrameType::Hello,
            &hello,
            self.limits.first_frame_timeout,
        )
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
                    let (code, message) = parse_body::<Reason>(&first.body)?.into_sanitized();
                    return Err(Error::Rejected { code, message });
                }
                other => return Err(FrameError::Unexpected(other.name()).into()),
            };
            verify_presented(
                &self.verification,
                &Presentation {
                    proof: &accept.proof,
                    chain: accept.chain.as_deref(),
                },
                &PresentationContext {
                    presenter: after.peer.id.as_spiffe_id(),
                    presenter_key: &after.peer.public_key,
                    presenter_not_after: after.peer.not_after,
                    verifier_id: local.identity().as_spiffe_id(),
                    role: Role::Server,
                    exporter: after.exporter_server,
                    client_proof: Some(&client_proof),
                    accepted_jtis: &[],
                    held_chain: None,
                    now: now_unix(),
                },
            )
        }
        .await;
        let server = match verified {
            Ok(v) => v,
            Err(e) => {
                // The server already holds a session: tell it why the client walks away.
                tell_peer(
                    &mut tls,
                    FrameType::Close,
                    &e,
                    self.limits.first_frame_timeout,
                )
                .await;
                return Err(e);
            }
        };
        Ok(Established {
            io: TlsStream::Client(tls),
            role: Role::Client,
            after,
            chain: server.chain,
            deadline: server.deadline,
            receipts: Receipts {
                client_proof,
                server_proof: server.proof.compact,
                reauth_proofs: Vec::new(),
            },
            local,
            credentials: self.credentials.clone(),
            verification: self.verification.clone(),
            peer_proof_jti: server.proof.jti,
            lists_seen: server.lists_seen,
            seen,
        })
    }
}

/// Our own chain, read without verification (we are its presenter): a chain that does not even
/// frame, or whose effective audience misses `server`, is never sent (spec/PROTOCOL.md 16.3,
/// client step 3; also for the chain of a reauth).
pub(crate) fn server_in_audience(local: &Credential, server: &PeerId) -> Result<()> {
    // Read once per credential (a depth-8 chain is nine tokens to decode).
    let Some(audience) = local.chain_audience() else {
        return Ok(());
    };
    let audience = audience.as_ref().map_err(|e| Error::Protocol(e.clone()))?;
    if !audience.covers_id(server.as_spiffe_id()) {
        return Err(Error::Protocol(agentid_protocol::Error::new(
            ErrorCode::AudienceMismatch,
            format!("server {server} is not in the chain's audience"),
        )));
    }
    Ok(())
}
