//! The server side: TLS 1.3 with mandatory client certificates, then the hello, its
//! verification, and accept or reject.

use std::sync::Arc;

use agentid_protocol::{verify_proof, ProofBuilder, ProofContext, Role};
use rustls::server::NoServerSessionStorage;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsStream};
use tracing::field::Empty;
use tracing::Instrument as _;

use crate::credentials::{Credential, CredentialResolver, CredentialSource};
use crate::error::{Error, FrameError, Result};
use crate::establish::{
    after_tls, map_tls_io, record_outcome, record_peer, tell_peer, verify_peer_authority, AfterTls,
    Established,
};
use crate::frame::{self, body_bytes, parse_body, Accept, FrameType, Hello};
use crate::limits::ConnectionLimits;
use crate::peer_policy::PeerPolicy;
use crate::provider::{self, ALPN};
use crate::rustls_verifier::SpiffeClientCertVerifier;
use crate::session::{now_unix, PeerChain, Receipts, Session, PROOF_LIFETIME};
use crate::svid::CertUsage;
use crate::trust_state::PeerVerification;
use crate::TimeoutKind;

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
        let mut parts = result?.into_parts();
        parts.permit = Some(conn_permit);
        Ok(Session::new(parts))
    }

    async fn accept_inner<IO>(&self, io: IO, span: &tracing::Span) -> Result<Established<IO>>
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
        let (client_proof, client_jti, chain) = match verified {
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
        .responding_to(&client_proof);
        if let Some(c) = local.chain() {
            builder = builder.chain(c);
        }
        let server_proof = builder.sign(local.task_key())?;
        let accept = Accept {
            proof: server_proof.clone(),
            chain: local.chain().map(str::to_owned),
        };
        frame::write_frame(&mut tls, FrameType::Accept, &body_bytes(&accept)?).await?;

        Ok(Established {
            io: TlsStream::Server(tls),
            role: Role::Server,
            after,
            chain,
            receipts: Receipts {
                client_proof,
                server_proof,
                reauth_proofs: Vec::new(),
            },
            local,
            verification: self.verification.clone(),
            peer_proof_jti: client_jti,
        })
    }

    fn verify_hello(
        &self,
        body: &[u8],
        after: &AfterTls,
        local: &Credential,
    ) -> Result<(String, String, Option<PeerChain>)> {
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
        let chain = verify_peer_authority(&self.verification, &after.peer, hello.chain, now)?;
        // The verified proof's `jti` (never re-decoded): a later reauth may not reuse it.
        Ok((hello.proof, proof.jti, chain))
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
