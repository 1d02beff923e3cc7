//! `reauth`: sending a renewed credential on a live session, and checking the peer's.

use std::sync::Arc;

use agentid_protocol::{verify_proof, ErrorCode, ProofBuilder, ProofContext, Role};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{instant_for, now_unix, unix_time, PeerChain, Session, MAX_REAUTHS, PROOF_LIFETIME};
use crate::credentials::Credential;
use crate::error::{CertError, Error, FrameError, Result};
use crate::frame::{body_bytes, parse_body, FrameType, Reauth};
use crate::svid::{CertUsage, MAX_INTERMEDIATES};

impl<IO> Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Sends a `reauth` frame with `renewed` (same identity and key as the credential this
    /// session started with), its chain if any, and a proof bound to this connection. Also use
    /// the renewed credential for later reauths.
    pub async fn reauth(&mut self, renewed: Arc<Credential>) -> Result<()> {
        if renewed.identity() != self.local.identity()
            || renewed.info().public_key != self.local.info().public_key
        {
            return Err(CertError::IdentityChanged.into());
        }
        let now = now_unix();
        let (exporter, role) = match self.role {
            Role::Client => (self.exporter_client, Role::Client),
            Role::Server => (self.exporter_server, Role::Server),
        };
        let mut builder = ProofBuilder::new(
            renewed.identity().as_spiffe_id(),
            self.peer.id.as_spiffe_id(),
            role,
            exporter,
            now,
            now + PROOF_LIFETIME,
        );
        if let Some(chain) = renewed.chain() {
            builder = builder.chain(chain);
        }
        if role == Role::Server {
            builder = builder.responding_to(&self.peer.receipts.client_proof);
        }
        let proof = builder.sign(renewed.task_key())?;
        let body = Reauth {
            certs: renewed
                .cert_chain()
                .iter()
                .map(|c| URL_SAFE_NO_PAD.encode(c.as_ref()))
                .collect(),
            chain: renewed.chain().map(str::to_owned),
            proof,
        };
        let bytes = body_bytes(&body)?;
        self.write_frame(FrameType::Reauth, &bytes).await?;
        tracing::info!(cert.serial = %renewed.info().serial, "reauth sent");
        self.local = renewed;
        Ok(())
    }
    pub(super) fn handle_reauth(&mut self, body: &[u8]) -> Result<()> {
        let r: Reauth = parse_body(body)?;
        if self.jtis.len() > MAX_REAUTHS {
            return Err(Error::Frame(FrameError::Unexpected("reauth (too many)")));
        }
        if r.certs.is_empty() {
            return Err(CertError::Missing.into());
        }
        if r.certs.len() > 1 + MAX_INTERMEDIATES {
            return Err(CertError::TooManyIntermediates(r.certs.len() - 1).into());
        }
        let ders = r
            .certs
            .iter()
            .map(|c| URL_SAFE_NO_PAD.decode(c).map(CertificateDer::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| FrameError::BadBody("certs: bad base64url".into()))?;
        let (leaf, rest) = ders.split_first().ok_or(CertError::Missing)?;
        let now = now_unix();
        let (peer_role, usage, exporter) = match self.role {
            Role::Server => (Role::Client, CertUsage::ClientAuth, self.exporter_client),
            Role::Client => (Role::Server, CertUsage::ServerAuth, self.exporter_server),
        };
        let trust = self.verification.trust_store();
        let info = trust.verify(leaf, rest, unix_time(now), usage)?;
        if info.id != self.peer.id || info.public_key != self.peer.public_key {
            return Err(CertError::IdentityChanged.into());
        }
        let v = self.verification.verifier();
        let client_proof = match peer_role {
            Role::Server => Some(self.peer.receipts.client_proof.as_str()),
            Role::Client => None,
        };
        let proof = verify_proof(
            &r.proof,
            &ProofContext {
                presenter_id: self.peer.id.as_spiffe_id(),
                presenter_key: &self.peer.public_key,
                verifier_id: self.local.identity().as_spiffe_id(),
                role: peer_role,
                exporter,
                now,
                skew: v.config().skew_seconds(),
                chain: r.chain.as_deref(),
                client_proof,
            },
        )?;
        if self.jtis.contains(&proof.jti) {
            return Err(Error::Protocol(agentid_protocol::Error::new(
                ErrorCode::ProofReplayed,
                "a proof already presented on this connection",
            )));
        }
        // A reauth without a chain keeps the one the session holds (verified again, now).
        let compact = r
            .chain
            .or_else(|| self.peer.chain.as_ref().map(|c| c.compact().to_owned()));
        let chain = match compact {
            Some(c) => {
                let verified =
                    v.verify_chain(&c, self.peer.id.as_spiffe_id(), &self.peer.public_key, now)?;
                Some(PeerChain::new(verified, c))
            }
            None => {
                v.check_peer_revocation(self.peer.id.as_spiffe_id(), &self.peer.public_key, now)?;
                None
            }
        };
        let deadline = chain
            .as_ref()
            .map_or(info.not_after, |c| c.expires.min(info.not_after));
        if deadline <= now {
            return Err(Error::CredentialExpired);
        }
        tracing::info!(
            peer.id = %self.peer.id,
            cert.serial = %info.serial,
            deadline,
            outcome = "accepted",
            "reauth accepted"
        );
        self.jtis.push(proof.jti);
        self.peer.receipts.reauth_proofs.push(proof.compact);
        self.peer.cert_serial = info.serial;
        self.peer_certs = ders.iter().map(|c| c.clone().into_owned()).collect();
        self.trust_checked = trust;
        self.peer.cert_not_after = info.not_after;
        self.peer.chain = chain;
        self.peer.deadline = deadline;
        self.deadline.as_mut().reset(instant_for(deadline));
        // The chain may have changed, and with it the trust domains whose lists it needs.
        self.reset_stale_timer();
        Ok(())
    }
}
