//! The server side: TLS 1.3 with mandatory client certificates, then the hello, its
//! verification, and accept or reject.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use agentid_protocol::{Presentation, PresentationContext, ProofBuilder, Role};
use rustls::server::NoServerSessionStorage;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_rustls::TlsStream;
use tracing::Instrument as _;

use crate::admission::{Admission, SessionPermit};
use crate::connection_limits::ConnectionLimits;
use crate::credentials::{pinned_server_config, Credential, CredentialResolver, CredentialSource};
use crate::error::{Error, FrameError, Result};
use crate::establish::{
    after_tls, handshake_span, record_outcome, record_peer, tell_peer, verify_presented,
    write_handshake_frame, AfterTls, Established, PeerPresented, SeenBefore,
};
use crate::frame::{self, parse_body, FrameType, Hello};
use crate::listener::AgentListener;
use crate::peer_policy::PeerPolicy;
use crate::provider::{self, ALPN};
use crate::rustls_verifier::SpiffeClientCertVerifier;
use crate::session::{now_unix, Receipts, Session, PROOF_LIFETIME};
use crate::svid::CertUsage;
use crate::trust_state::PeerVerification;
use crate::TimeoutKind;

/// An agentid server. Build it with [`AgentServer::builder`]; a peer policy is required.
#[derive(Clone)]
pub struct AgentServer {
    config: Arc<ServerConfig>,
    credentials: Arc<dyn CredentialSource>,
    verification: Arc<PeerVerification>,
    admission: Admission,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("limits", self.admission.limits())
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

    /// Accepts one connection from an unknown source: as [`AgentServer::accept_from`] without
    /// the per-source cap.
    pub async fn accept<IO>(&self, io: IO) -> Result<Session<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.accept_from(io, None).await
    }

    /// Accepts one connection from `source`: the TLS handshake under the handshake rules of
    /// [`ConnectionLimits`] (ClientHello deadline, a slot in the pool of unauthenticated
    /// handshakes that a newer one may take over, the per-source cap), then a session slot for
    /// the authenticated peer (total, per agent, per task: [`Error::Busy`] at once, told to the
    /// peer in a reject frame), then the hello (first-frame timeout), its verification, and
    /// accept or reject.
    pub async fn accept_from<IO>(&self, io: IO, source: Option<SocketAddr>) -> Result<Session<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let span = handshake_span(Role::Server);
        let ip = source.map(|s| s.ip());
        let result = self
            .accept_inner(io, ip, &span)
            .instrument(span.clone())
            .await;
        record_outcome(&span, &result);
        let (established, permit) = result?;
        let limits = self.admission.limits();
        let mut parts = established.into_parts(limits.idle_timeout, limits.first_frame_timeout);
        parts.permit = Some(permit);
        Ok(Session::new(parts))
    }

    /// Serves `listener`: accepts connections (accept errors are logged and backed off, never
    /// fatal), runs each handshake in its own task with the source address, and yields the
    /// established sessions. Failed handshakes are logged and dropped.
    pub fn listen(&self, listener: TcpListener) -> AgentListener {
        AgentListener::new(self.clone(), listener)
    }

    /// The admission state (caps and counts) of this server.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    async fn accept_inner<IO>(
        &self,
        io: IO,
        source: Option<IpAddr>,
        span: &tracing::Span,
    ) -> Result<(Established<IO>, SessionPermit)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let seen = SeenBefore::of(&self.verification, &*self.credentials);
        // No credential to present (none, or past its notAfter): refuse locally before TLS,
        // rather than fail the peer's handshake. The handshake presents the credential current
        // now, and the accept's proof is signed with that same one (a rotation meanwhile cannot
        // split them; a renewal meanwhile is sent as a `reauth`).
        let local = self.credentials.current().ok_or(Error::NoCredential)?;
        let mut tls = self
            .admission
            .tls_accept(io, source, pinned_server_config(&self.config, &local))
            .await?;
        let after = after_tls(tls.get_ref().1, CertUsage::ClientAuth, &self.verification)?;
        record_peer(span, &after.peer);
        let limits = self.admission.limits();
        let permit = match self.admission.admit(&after.peer.id) {
            Ok(p) => p,
            Err(e) => {
                tell_peer(&mut tls, FrameType::Reject, &e, limits.first_frame_timeout).await;
                return Err(e);
            }
        };

        let verified = async {
            let first = timeout(limits.first_frame_timeout, frame::read_frame(&mut tls))
                .await
                .map_err(|_| Error::Timeout(TimeoutKind::FirstFrame))??
                .ok_or(FrameError::Truncated)?;
            if first.ty != FrameType::Hello {
                return Err(FrameError::Unexpected(first.ty.name()).into());
            }
            self.verify_hello(&first.body, &after, &local)
        }
        .await;
        let hello = match verified {
            Ok(v) => v,
            Err(e) => {
                tell_peer(&mut tls, FrameType::Reject, &e, limits.first_frame_timeout).await;
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
        .answering(&hello.proof);
        if let Some(h) = local.chain_hash() {
            builder = builder.chain_hash(h);
        }
        let server_proof = builder.sign(local.task_key())?;
        let accept = frame::presentation_body(FrameType::Accept, &server_proof, local.chain_json());
        write_handshake_frame(
            &mut tls,
            FrameType::Accept,
            &accept,
            limits.first_frame_timeout,
        )
        .await?;

        let established = Established {
            io: TlsStream::Server(tls),
            role: Role::Server,
            after,
            chain: hello.chain,
            deadline: hello.deadline,
            receipts: Receipts {
                client_proof: hello.proof.compact,
                server_proof,
                reauth_proofs: Vec::new(),
            },
            local,
            credentials: self.credentials.clone(),
            verification: self.verification.clone(),
            // The verified proof's `jti` (never re-decoded): a later reauth may not reuse it.
            peer_proof_jti: hello.proof.jti,
            lists_seen: hello.lists_seen,
            seen,
        };
        Ok((established, permit))
    }

    fn verify_hello(
        &self,
        body: &[u8],
        after: &AfterTls,
        local: &Credential,
    ) -> Result<PeerPresented> {
        let hello: Hello = parse_body(body)?;
        verify_presented(
            &self.verification,
            &Presentation {
                proof: &hello.proof,
                chain: hello.chain.as_deref(),
            },
            &PresentationContext {
                presenter: after.peer.id.as_spiffe_id(),
                presenter_key: &after.peer.public_key,
                presenter_not_after: after.peer.not_after,
                verifier_id: local.identity().as_spiffe_id(),
                role: Role::Client,
                exporter: after.exporter_client,
                client_proof: None,
                accepted_jtis: &[],
                held_chain: None,
                now: now_unix(),
            },
        )
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
        let admission = Admission::new(self.limits)?;
        let verifier = SpiffeClientCertVerifier::new(self.verification.trust_handle(), self.policy);
        let mut config = provider::server_config_builder()?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(CredentialResolver(self.credentials.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(AgentServer {
            config: Arc::new(config),
            credentials: self.credentials,
            verification: self.verification,
            admission,
        })
    }
}
