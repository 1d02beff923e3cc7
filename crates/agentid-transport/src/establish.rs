//! What the client's connect and the server's accept share: the checks on what rustls
//! negotiated, the peer's authority (chain or chain-less), the session they hand over, and the
//! best-effort refusal frame.

use std::sync::Arc;

use agentid_protocol::{Role, VerifiedChain, EXPORTER_LABEL};
use rustls::pki_types::CertificateDer;
use rustls::{ConnectionCommon, HandshakeKind};
use tokio::io::AsyncWrite;
use tokio_rustls::TlsStream;

use crate::credentials::Credential;
use crate::error::{Error, FrameError, Result};
use crate::frame::{self, body_bytes, FrameType, Reason};
use crate::provider::ALPN;
use crate::rustls_verifier::from_tls_error;
use crate::session::{AuthenticatedPeer, PeerChain, Receipts, SessionParts};
use crate::svid::{CertUsage, SvidInfo};
use crate::trust_state::PeerVerification;

/// Everything rustls tells us after the handshake that the exchange needs.
pub(crate) struct AfterTls {
    /// The peer's certificate chain, leaf first (re-validated when the trust bundles change).
    pub(crate) certs: Vec<CertificateDer<'static>>,
    pub(crate) peer: SvidInfo,
    pub(crate) exporter_client: [u8; 32],
    pub(crate) exporter_server: [u8; 32],
}

pub(crate) fn after_tls<D>(
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
    let certs = conn
        .peer_certificates()
        .ok_or(Error::HandshakeRefused("no peer certificate"))?;
    let leaf = certs
        .first()
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
        certs: certs.iter().map(|c| c.clone().into_owned()).collect(),
        peer,
        exporter_client: exporter(Role::Client.exporter_context())?,
        exporter_server: exporter(Role::Server.exporter_context())?,
    })
}

pub(crate) fn map_tls_io(e: std::io::Error) -> Error {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return from_tls_error(tls).unwrap_or_else(|| Error::Tls(tls.clone()));
    }
    Error::Io(e)
}

/// The peer's authority: its chain verified against the TLS peer (phases 1-8), or, without a
/// chain, the revocation check of the peer itself (a chain-less peer holds no authority).
pub(crate) fn verify_peer_authority(
    verification: &PeerVerification,
    peer: &SvidInfo,
    chain: Option<String>,
    now: u64,
) -> Result<Option<PeerChain>> {
    let v = verification.verifier();
    match chain {
        Some(c) => {
            let verified = v.verify_chain(&c, peer.id.as_spiffe_id(), &peer.public_key, now)?;
            Ok(Some(PeerChain::new(verified, c)))
        }
        None => {
            v.check_peer_revocation(peer.id.as_spiffe_id(), &peer.public_key, now)?;
            Ok(None)
        }
    }
}

/// The session deadline: the peer certificate's `notAfter`, or the chain's `exp` if earlier.
pub(crate) fn deadline(not_after: u64, chain: Option<&VerifiedChain>) -> u64 {
    chain.map_or(not_after, |c| c.expires.min(not_after))
}

/// What both sides hand to [`crate::session::Session::new`] once the exchange succeeded.
pub(crate) struct Established<IO> {
    pub(crate) io: TlsStream<IO>,
    pub(crate) role: Role,
    pub(crate) after: AfterTls,
    pub(crate) chain: Option<PeerChain>,
    pub(crate) receipts: Receipts,
    pub(crate) local: Arc<Credential>,
    pub(crate) verification: Arc<PeerVerification>,
    /// The `jti` of the peer's verified proof: a later reauth may not reuse it.
    pub(crate) peer_proof_jti: String,
}

impl<IO> Established<IO> {
    pub(crate) fn into_parts(self) -> SessionParts<IO> {
        let peer = self.after.peer;
        let deadline = deadline(peer.not_after, self.chain.as_deref());
        SessionParts {
            changes: self.verification.subscribe(),
            peer_certs: self.after.certs,
            io: self.io,
            role: self.role,
            peer: AuthenticatedPeer {
                id: peer.id,
                public_key: peer.public_key,
                cert_serial: peer.serial,
                cert_not_after: peer.not_after,
                chain: self.chain,
                deadline,
                receipts: self.receipts,
            },
            local: self.local,
            verification: self.verification,
            exporter_client: self.after.exporter_client,
            exporter_server: self.after.exporter_server,
            permit: None,
            jtis: vec![self.peer_proof_jti],
        }
    }
}

pub(crate) fn record_outcome<T>(span: &tracing::Span, result: &Result<T>) {
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

pub(crate) fn record_peer(span: &tracing::Span, peer: &SvidInfo) {
    span.record("peer.id", tracing::field::display(&peer.id));
    if let agentid_protocol::PeerId::Task(t) = &peer.id {
        span.record("task.id", tracing::field::display(t.task_id()));
    }
    span.record("cert.serial", peer.serial.as_str());
}

/// Best effort: a reject (server) or close (client) frame with the reason of `e`, when the
/// failure is the peer's input (a frame or a verification), not a dead or silent connection.
pub(crate) async fn tell_peer<S: AsyncWrite + Unpin>(io: &mut S, ty: FrameType, e: &Error) {
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
pub(crate) fn map_frame_tls(e: Error) -> Error {
    match e {
        Error::Io(io) => map_tls_io(io),
        other => other,
    }
}
