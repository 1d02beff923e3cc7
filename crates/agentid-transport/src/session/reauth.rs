//! `reauth`: sending a renewed credential on a live session, and checking the peer's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentid_protocol::{Presentation, PresentationContext, ProofBuilder, Role};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    instant_for, now_unix, unix_time, watch_changes, PeerChain, Session, MAX_REAUTHS,
    MAX_REAUTH_RECEIPT_BYTES, PROOF_LIFETIME,
};
use crate::credentials::Credential;
use crate::error::{CertError, Error, FrameError, Result};
use crate::establish::verify_presented;
use crate::frame::{self, body_bytes, parse_body, FrameType, Reauth};
use crate::svid::{CertUsage, MAX_INTERMEDIATES};

impl<IO> Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Sends a `reauth` frame with `renewed` (same identity and key as the credential this
    /// session started with), its chain if any, and a proof bound to this connection. Also use
    /// the renewed credential for later reauths. A session whose credential source signals
    /// changes ([`crate::CredentialSource::subscribe`]) does this on its own when its credential
    /// is renewed. A client (unless built with
    /// [`crate::AgentClientBuilder::danger_skip_audience_check`]) does not send a chain whose
    /// effective audience misses the server (`audience_mismatch`, nothing sent).
    pub async fn reauth(&mut self, renewed: Arc<Credential>) -> Result<()> {
        if let Some(e) = &self.ended {
            return Err(e.error());
        }
        self.queue_reauth(renewed)?;
        std::future::poll_fn(|cx| self.poll_flush_live(cx))
            .await
            .map_err(super::io::from_io)
    }

    /// Encodes a `reauth` frame for `renewed` into the write buffer (sent with the next write,
    /// flush or drain) and makes `renewed` the session's credential.
    pub(super) fn queue_reauth(&mut self, renewed: Arc<Credential>) -> Result<()> {
        if renewed.identity() != self.local.identity()
            || renewed.info().public_key != self.local.info().public_key
        {
            return Err(CertError::IdentityChanged.into());
        }
        if let (true, Role::Client) = (self.require_audience, self.role) {
            crate::client::server_in_audience(&renewed, &self.peer.id)?;
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
        frame::encode(FrameType::Reauth, &bytes, &mut self.wbuf)?;
        tracing::info!(cert.serial = %renewed.info().serial, "reauth sent");
        self.local = renewed;
        Ok(())
    }

    /// When the credential source signalled a change: a renewal of this session's credential
    /// is queued as a `reauth` (and drained as far as the connection takes it now). Another
    /// credential (a new identity or key) is for new handshakes only.
    pub(super) fn poll_renewal(&mut self, cx: &mut Context<'_>) {
        let Some(changes) = self.renewals.as_mut() else {
            return;
        };
        let mut changed = false;
        while let Poll::Ready(rx) = changes.as_mut().poll(cx) {
            *changes = watch_changes(rx);
            changed = true;
        }
        if changed {
            if let Some(current) = self.credentials.current() {
                if self.local.is_renewal(&current) {
                    if let Err(e) = self.queue_reauth(current) {
                        tracing::warn!(reason = e.reason(), error = %e, "reauth not sent");
                    }
                }
            }
        }
        if !self.wbuf.is_empty() {
            if let Poll::Ready(Ok(())) = self.poll_drain(cx) {
                let _ = Pin::new(&mut self.io).poll_flush(cx);
            }
        }
    }

    pub(super) fn handle_reauth(&mut self, body: &[u8]) -> Result<()> {
        let r: Reauth = parse_body(body)?;
        if self.jtis.len() > MAX_REAUTHS {
            return Err(Error::Frame(FrameError::Unexpected("reauth (too many)")));
        }
        // Before any check that costs: the receipts this proof would join.
        let held: usize = self
            .peer
            .receipts
            .reauth_proofs
            .iter()
            .map(String::len)
            .sum();
        if held.saturating_add(r.proof.len()) > MAX_REAUTH_RECEIPT_BYTES {
            return Err(Error::Frame(FrameError::Unexpected(
                "reauth (its receipts would pass the session's byte bound)",
            )));
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
        let client_proof = match peer_role {
            Role::Server => Some(self.peer.receipts.client_proof.as_str()),
            Role::Client => None,
        };
        // A reauth without a chain keeps the one the session holds (verified again, now).
        let presented = verify_presented(
            &self.verification,
            &Presentation {
                proof: &r.proof,
                chain: r.chain.as_deref(),
            },
            &PresentationContext {
                presenter: self.peer.id.as_spiffe_id(),
                presenter_key: &self.peer.public_key,
                presenter_not_after: info.not_after,
                verifier_id: self.local.identity().as_spiffe_id(),
                role: peer_role,
                exporter,
                client_proof,
                accepted_jtis: &self.jtis,
                held_chain: self.peer.chain.as_ref().map(PeerChain::compact),
                now,
            },
        )?;
        let deadline = presented.deadline;
        tracing::info!(
            peer.id = %self.peer.id,
            cert.serial = %info.serial,
            deadline,
            outcome = "accepted",
            "reauth accepted"
        );
        self.jtis.push(presented.proof.jti);
        self.peer
            .receipts
            .reauth_proofs
            .push(presented.proof.compact);
        self.peer.cert_serial = info.serial;
        self.peer_certs = ders.iter().map(|c| c.clone().into_owned()).collect();
        self.trust_checked = trust;
        self.peer.cert_not_after = info.not_after;
        self.peer.chain = presented.chain;
        self.index.update(
            super::recheck::revocation_targets(&self.peer),
            presented.lists_seen,
        );
        self.peer.deadline = deadline;
        self.deadline.as_mut().reset(instant_for(deadline));
        // The chain may have changed, and with it the trust domains whose lists it needs.
        self.reset_stale_timer();
        Ok(())
    }
}
