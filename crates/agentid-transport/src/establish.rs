//! What the client's connect and the server's accept share: the checks on what rustls
//! negotiated, the peer's authority (chain or chain-less), the session they hand over, and the
//! best-effort refusal frame.

use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{Presentation, PresentationContext, Role, VerifiedProof, EXPORTER_LABEL};
use rustls::pki_types::CertificateDer;
use rustls::{ConnectionCommon, HandshakeKind};
use tokio::io::AsyncWrite;
use tokio_rustls::TlsStream;

use crate::credentials::{Credential, CredentialSource};
use crate::error::{Error, FrameError, Result, TimeoutKind};
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

/// A presentation the peer made (hello, accept or reauth), verified.
pub(crate) struct PeerPresented {
    /// The peer's verified hop proof.
    pub(crate) proof: VerifiedProof,
    /// The peer's chain (the one sent, or the held one for a reauth without a chain) with the
    /// exact string it was verified from; `None` for a chain-less peer.
    pub(crate) chain: Option<PeerChain>,
    /// The session deadline.
    pub(crate) deadline: u64,
    /// [`PeerVerification::lists_applied`] as read before the verification.
    pub(crate) lists_seen: u64,
}

/// Verifies what the peer presented with the protocol's one presentation verifier
/// ([`agentid_protocol::Verifier::verify_presentation`]: hop proof, replay, then chain or
/// chain-less peer checks, then the deadline), and refuses a presentation whose session would
/// already be over.
///
/// Verification accepts a chain until `exp + skew` (clocks differ), but a session ends at the
/// chain's `exp` itself (the deadline has no skew: a live session must not outlast its
/// authority). A chain inside that window would give a session that fails its first request;
/// it is refused with `credential_expired` instead (spec/PROTOCOL.md section 16.4, reauth step
/// 8; the same holds at the handshake).
pub(crate) fn verify_presented(
    verification: &PeerVerification,
    presentation: &Presentation<'_>,
    ctx: &PresentationContext<'_>,
) -> Result<PeerPresented> {
    let lists_seen = verification.lists_applied();
    let verified = verification
        .verifier()
        .verify_presentation(presentation, ctx)?;
    if verified.deadline <= ctx.now {
        return Err(Error::CredentialExpired);
    }
    // The verified chain is the one sent, else the held one: keep it with that string.
    let compact = presentation.chain.or(ctx.held_chain);
    Ok(PeerPresented {
        chain: verified
            .chain
            .zip(compact)
            .map(|(v, c)| PeerChain::new(v, c.to_owned())),
        proof: verified.proof,
        deadline: verified.deadline,
        lists_seen,
    })
}

/// The verification state read before the TLS handshake began. The peer's certificate is
/// checked during the handshake and its presentation after it; a bundle or list change landing
/// meanwhile is a change since this state, so the session's first poll re-checks the peer
/// against it instead of counting it as seen.
pub(crate) struct SeenBefore {
    /// Subscribed before the handshake: a change sent since makes it ready.
    pub(crate) changes: tokio::sync::watch::Receiver<u64>,
    /// The trust store before the handshake: a different one now re-validates the peer's
    /// certificate chain.
    pub(crate) trust: Arc<crate::TrustStore>,
    /// Renewals of the local credential, subscribed before the handshake reads the one it
    /// presents: a renewal landing during it is sent as a `reauth` like any later one.
    pub(crate) renewals: Option<tokio::sync::watch::Receiver<u64>>,
}

impl SeenBefore {
    pub(crate) fn of(verification: &PeerVerification, credentials: &dyn CredentialSource) -> Self {
        SeenBefore {
            changes: verification.subscribe(),
            trust: verification.trust_store(),
            renewals: credentials.subscribe(),
        }
    }
}

/// What both sides hand to [`crate::session::Session::new`] once the exchange succeeded.
pub(crate) struct Established<IO> {
    pub(crate) io: TlsStream<IO>,
    pub(crate) role: Role,
    pub(crate) after: AfterTls,
    pub(crate) chain: Option<PeerChain>,
    /// The session deadline, from the verified presentation.
    pub(crate) deadline: u64,
    pub(crate) receipts: Receipts,
    pub(crate) local: Arc<Credential>,
    pub(crate) credentials: Arc<dyn CredentialSource>,
    pub(crate) verification: Arc<PeerVerification>,
    /// The `jti` of the peer's verified proof: a later reauth may not reuse it.
    pub(crate) peer_proof_jti: String,
    /// [`PeerVerification::lists_applied`] as read before the peer was verified.
    pub(crate) lists_seen: u64,
    /// The verification state before the handshake.
    pub(crate) seen: SeenBefore,
}

impl<IO> Established<IO> {
    pub(crate) fn into_parts(
        self,
        idle_timeout: Option<Duration>,
        close_timeout: Duration,
    ) -> SessionParts<IO> {
        let peer = self.after.peer;
        SessionParts {
            changes: self.seen.changes,
            renewals: self.seen.renewals,
            trust_seen: self.seen.trust,
            peer_certs: self.after.certs,
            idle_timeout,
            close_timeout,
            io: self.io,
            role: self.role,
            peer: AuthenticatedPeer {
                id: peer.id,
                public_key: peer.public_key,
                cert_serial: peer.serial,
                cert_not_after: peer.not_after,
                chain: self.chain,
                deadline: self.deadline,
                receipts: self.receipts,
            },
            local: self.local,
            credentials: self.credentials,
            verification: self.verification,
            exporter_client: self.after.exporter_client,
            exporter_server: self.after.exporter_server,
            permit: None,
            jtis: vec![self.peer_proof_jti],
            lists_seen: self.lists_seen,
            require_audience: false,
        }
    }
}

/// The span of one handshake; [`record_peer`] and [`record_outcome`] fill in its fields.
pub(crate) fn handshake_span(role: Role) -> tracing::Span {
    let role = match role {
        Role::Client => "client",
        Role::Server => "server",
    };
    tracing::info_span!(
        "agentid.handshake",
        role,
        peer.id = tracing::field::Empty,
        task.id = tracing::field::Empty,
        cert.serial = tracing::field::Empty,
        outcome = tracing::field::Empty,
        reason = tracing::field::Empty
    )
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
pub(crate) async fn tell_peer<S: AsyncWrite + Unpin>(
    io: &mut S,
    ty: FrameType,
    e: &Error,
    within: Duration,
) {
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
    // The code and a fixed message; the detail stays in the local log (the caller logs `e`).
    let (code, message) = e.for_peer();
    let reason = Reason { code, message };
    if let Ok(body) = body_bytes(&reason) {
        let _ = write_handshake_frame(io, ty, &body, within).await;
    }
}

/// Writes one frame of the handshake (hello, accept, or a refusal): the peer must take it
/// within `within` (the first-frame timeout), else `first_frame_timeout`. A peer that reads
/// nothing (a zero TCP window) cannot hold the handshake, its task and its session slot for as
/// long as it keeps the connection open.
pub(crate) async fn write_handshake_frame<S: AsyncWrite + Unpin>(
    io: &mut S,
    ty: FrameType,
    body: &[u8],
    within: Duration,
) -> Result<()> {
    tokio::time::timeout(within, frame::write_frame(io, ty, body))
        .await
        .map_err(|_| Error::Timeout(TimeoutKind::FirstFrame))?
}

/// In TLS 1.3 the client's handshake ends before the server has checked the client certificate:
/// a refusal arrives as an alert on the first read or write.
pub(crate) fn map_frame_tls(e: Error) -> Error {
    match e {
        Error::Io(io) => map_tls_io(io),
        other => other,
    }
}
