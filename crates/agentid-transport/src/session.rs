//! An authenticated session: the peer, its deadline, and the framed byte stream.
//!
//! A [`Session`] implements `AsyncRead + AsyncWrite` (data frames carry the bytes, so HTTP,
//! gRPC or JSON-RPC can run on top) and offers [`Session::send`] / [`Session::recv`] for whole
//! messages. While it is read or written it enforces continuous verification: at the deadline
//! (peer certificate `notAfter`, chain `exp`) it ends with `credential_expired` unless a
//! `reauth` frame moved it; a revocation list applied to the shared [`PeerVerification`] that
//! covers the peer or any token of its chain ends it at once with `revoked`; and when a
//! revocation list the session's authority depends on goes stale (`next_update + skew`) without
//! a fresh one, it ends with `revocation_stale` (fail closed), unless the verifier's `danger_`
//! setting tolerates stale lists.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentid_protocol::{
    verify_proof, ErrorCode, PeerId, ProofBuilder, ProofContext, PublicKey, Role, Scope, TaskId,
    TrustDomain, VerifiedChain,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsStream;

use crate::credentials::Credential;
use crate::error::{CertError, Error, FrameError, Result};
use crate::frame::{
    self, body_bytes, parse_body, FrameType, Reason, Reauth, HEADER_LEN, MAX_FRAME_BODY,
};
use crate::svid::{CertUsage, MAX_INTERMEDIATES};
use crate::verification::PeerVerification;

/// The most `reauth` frames one session accepts (each leaves a receipt).
pub const MAX_REAUTHS: usize = 1024;

/// The close code of an orderly end.
pub const CLOSE_NORMAL: &str = "normal";

/// Lifetime of the hop proofs this crate signs (the protocol caps it at 60 s).
pub(crate) const PROOF_LIFETIME: u64 = 60;

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn unix_time(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

fn instant_for(deadline: u64) -> Instant {
    let left = deadline.saturating_sub(now_unix());
    // Cap far deadlines (a chain-less service certificate may live long): a year is plenty.
    Instant::now() + Duration::from_secs(left.min(365 * 24 * 3600))
}

/// The signed two-party receipts of a session: both hop proofs (and those of later reauths).
#[derive(Clone, PartialEq, Eq)]
pub struct Receipts {
    /// The client's hop proof (compact JWS).
    pub client_proof: String,
    /// The server's hop proof (compact JWS, with `rth` over the client proof).
    pub server_proof: String,
    /// Proofs of accepted `reauth` frames, oldest first.
    pub reauth_proofs: Vec<String>,
}

impl fmt::Debug for Receipts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Proofs are signed tokens: never logged.
        f.debug_struct("Receipts")
            .field("reauths", &self.reauth_proofs.len())
            .finish_non_exhaustive()
    }
}

/// The authenticated peer of a session.
#[derive(Clone, Debug)]
pub struct AuthenticatedPeer {
    /// The peer's identity (its certificate's URI SAN).
    pub id: PeerId,
    /// The peer certificate's public key.
    pub public_key: PublicKey,
    /// The peer certificate's serial: lowercase hex without leading zero bytes, as the CA
    /// reports it ([`crate::svid::serial_hex`]).
    pub cert_serial: String,
    /// The peer certificate's `notAfter` (Unix seconds).
    pub cert_not_after: u64,
    /// The peer's verified delegation chain, if it presented one.
    pub chain: Option<VerifiedChain>,
    /// The session deadline: min(certificate `notAfter`, chain `exp`), Unix seconds.
    pub deadline: u64,
    /// Both hop proofs.
    pub receipts: Receipts,
}

impl AuthenticatedPeer {
    /// The peer's task id, when it is an agent task.
    pub fn task(&self) -> Option<TaskId> {
        match &self.id {
            PeerId::Task(t) => Some(t.task_id()),
            PeerId::Service(_) => None,
        }
    }
}

/// Why a session ended (kept to answer every later call the same way).
#[derive(Clone, Debug)]
enum Ended {
    Expired,
    Revoked(String),
    /// The session's authority can no longer be re-checked: a needed revocation list went stale
    /// (or disappeared).
    Unverifiable(agentid_protocol::Error),
    PeerClosed(String, String),
    Failed(String, String),
    LocalClosed,
}

impl Ended {
    fn error(&self) -> Error {
        match self {
            Ended::Expired => Error::CredentialExpired,
            Ended::Revoked(r) => Error::Revoked(r.clone()),
            Ended::Unverifiable(e) => Error::Protocol(e.clone()),
            Ended::PeerClosed(code, message) => Error::Closed {
                code: code.clone(),
                message: message.clone(),
            },
            Ended::Failed(code, message) => Error::Closed {
                code: code.clone(),
                message: message.clone(),
            },
            Ended::LocalClosed => Error::Closed {
                code: CLOSE_NORMAL.into(),
                message: "closed locally".into(),
            },
        }
    }
}

type ChangeFuture = Pin<Box<dyn Future<Output = watch::Receiver<u64>> + Send>>;

fn watch_changes(mut rx: watch::Receiver<u64>) -> ChangeFuture {
    Box::pin(async move {
        if rx.changed().await.is_err() {
            // The verification state is gone: nothing can be revoked any more.
            std::future::pending::<()>().await;
        }
        rx
    })
}

/// What the handshake hands to a new session.
pub(crate) struct SessionParts<IO> {
    pub io: TlsStream<IO>,
    pub role: Role,
    pub peer: AuthenticatedPeer,
    pub peer_chain: Option<String>,
    pub local: Arc<Credential>,
    pub verification: Arc<PeerVerification>,
    pub exporter_client: [u8; 32],
    pub exporter_server: [u8; 32],
    pub changes: watch::Receiver<u64>,
    pub permit: Option<OwnedSemaphorePermit>,
    pub jtis: Vec<String>,
}

/// An authenticated agentid session over TLS.
pub struct Session<IO> {
    io: TlsStream<IO>,
    role: Role,
    peer: AuthenticatedPeer,
    peer_chain: Option<String>,
    local: Arc<Credential>,
    verification: Arc<PeerVerification>,
    exporter_client: [u8; 32],
    exporter_server: [u8; 32],
    rbuf: BytesMut,
    wbuf: BytesMut,
    pending: Bytes,
    deadline: Pin<Box<Sleep>>,
    changes: ChangeFuture,
    /// The verification state's version, to notice an update the session has not re-checked yet.
    applied: watch::Receiver<u64>,
    checked: u64,
    /// When a revocation list the session depends on goes stale (None: tolerated or none held).
    stale_at: Option<u64>,
    stale_timer: Pin<Box<Sleep>>,
    jtis: Vec<String>,
    ended: Option<Ended>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<IO> fmt::Debug for Session<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("peer", &self.peer.id.to_string())
            .field("deadline", &self.peer.deadline)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<IO> Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(crate) fn new(parts: SessionParts<IO>) -> Self {
        let deadline = Box::pin(tokio::time::sleep_until(instant_for(parts.peer.deadline)));
        let applied = parts.changes.clone();
        let checked = *applied.borrow();
        let stale_at = stale_at(&parts.verification, &parts.peer);
        let stale_timer = Box::pin(tokio::time::sleep_until(stale_instant(stale_at)));
        Self {
            io: parts.io,
            role: parts.role,
            peer: parts.peer,
            peer_chain: parts.peer_chain,
            local: parts.local,
            verification: parts.verification,
            exporter_client: parts.exporter_client,
            exporter_server: parts.exporter_server,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            pending: Bytes::new(),
            deadline,
            changes: watch_changes(parts.changes),
            applied,
            checked,
            stale_at,
            stale_timer,
            jtis: parts.jtis,
            ended: None,
            _permit: parts.permit,
        }
    }

    /// The authenticated peer.
    pub fn peer(&self) -> &AuthenticatedPeer {
        &self.peer
    }

    /// This side's role (TLS client or server).
    pub fn role(&self) -> Role {
        self.role
    }

    /// Authorizes one request for `requested` under the peer's verified chain: call it per
    /// request, not once per connection. A peer without a chain holds no authority.
    pub fn authorize(&self, requested: &Scope) -> Result<()> {
        if let Some(e) = &self.ended {
            return Err(e.error());
        }
        let now = now_unix();
        if now >= self.peer.deadline {
            return Err(Error::CredentialExpired);
        }
        // A revocation list applied (or a held list gone stale) since the session last re-checked
        // is honoured here too, even if the session has not been polled since.
        if *self.applied.borrow() != self.checked || self.stale_at.is_some_and(|t| now >= t) {
            self.recheck_revocation().map_err(|ended| ended.error())?;
        }
        let chain = self.peer.chain.as_ref().ok_or_else(|| {
            Error::Protocol(agentid_protocol::Error::new(
                ErrorCode::ScopeNotGranted,
                "the peer presented no chain",
            ))
        })?;
        let result = self.verification.verifier().authorize(chain, requested);
        tracing::debug!(
            peer.id = %self.peer.id,
            scope = %requested,
            outcome = if result.is_ok() { "granted" } else { "denied" },
            reason = result.as_ref().err().map(|e| e.code().as_str()).unwrap_or(""),
            "authorize"
        );
        Ok(result?)
    }

    /// Sends `data` as one or more data frames and flushes.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.write_all(data).await.map_err(from_io)?;
        self.flush().await.map_err(from_io)
    }

    /// Receives the next data frame's body; `Ok(None)` when the peer closed normally.
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        std::future::poll_fn(|cx| self.poll_next_data(cx)).await
    }

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

    /// Ends the session with a close frame carrying `code` and `message`, then shuts TLS down.
    pub async fn close(mut self, code: &str, message: &str) -> Result<()> {
        if self.ended.is_none() {
            let body = body_bytes(&Reason {
                code: code.into(),
                message: message.into(),
            })?;
            self.write_frame(FrameType::Close, &body).await?;
            self.ended = Some(Ended::LocalClosed);
        }
        self.io.shutdown().await.map_err(Error::Io)
    }

    async fn write_frame(&mut self, ty: FrameType, body: &[u8]) -> Result<()> {
        if let Some(e) = &self.ended {
            return Err(e.error());
        }
        frame::encode(ty, body, &mut self.wbuf)?;
        std::future::poll_fn(|cx| self.poll_drain(cx))
            .await
            .map_err(Error::Io)?;
        self.io.flush().await.map_err(Error::Io)
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the session with `ended`: a best-effort close frame, then every later call fails.
    fn end(&mut self, cx: &mut Context<'_>, ended: Ended) -> Error {
        let (code, message) = match &ended {
            Ended::Expired => (
                "credential_expired".to_owned(),
                "the peer credential expired".to_owned(),
            ),
            Ended::Revoked(r) => ("revoked".to_owned(), r.clone()),
            Ended::Unverifiable(e) => (e.code().as_str().to_owned(), e.to_string()),
            Ended::Failed(c, m) => (c.clone(), m.clone()),
            Ended::PeerClosed(..) | Ended::LocalClosed => (String::new(), String::new()),
        };
        if !code.is_empty() {
            if let Ok(body) = body_bytes(&Reason {
                code: code.clone(),
                message,
            }) {
                let _ = frame::encode(FrameType::Close, &body, &mut self.wbuf);
                let _ = self.poll_drain(cx);
                let _ = Pin::new(&mut self.io).poll_flush(cx);
            }
            tracing::info!(peer.id = %self.peer.id, outcome = "ended", reason = %code, "session ended");
        }
        let e = ended.error();
        self.ended = Some(ended);
        e
    }

    /// Ends the session because of `e` (a close frame with `e`'s reason goes to the peer) and
    /// returns `e` itself; later calls get the recorded reason.
    fn fail(&mut self, cx: &mut Context<'_>, e: Error) -> Error {
        let ended = match &e {
            Error::CredentialExpired => Ended::Expired,
            Error::Revoked(r) => Ended::Revoked(r.clone()),
            other => Ended::Failed(other.reason().to_owned(), other.to_string()),
        };
        let _ = self.end(cx, ended);
        e
    }

    /// Deadline and revocation: `Some(error)` when the session must end now.
    fn poll_kill(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        if let Some(e) = &self.ended {
            return Some(e.error());
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Some(self.end(cx, Ended::Expired));
        }
        let mut recheck = false;
        while let Poll::Ready(rx) = self.changes.as_mut().poll(cx) {
            self.changes = watch_changes(rx);
            recheck = true;
        }
        if self.stale_timer.as_mut().poll(cx).is_ready() {
            recheck = true;
        }
        if recheck {
            // Read the version first: an update landing during the re-check is seen next time.
            let version = *self.applied.borrow_and_update();
            if let Err(ended) = self.recheck_revocation() {
                return Some(self.end(cx, ended));
            }
            self.checked = version;
            self.reset_stale_timer();
            // Register the fresh timer with this task's waker.
            let _ = self.stale_timer.as_mut().poll(cx);
        }
        None
    }

    /// Re-checks the peer and its chain against the current revocation lists (on every update of
    /// the verification state, and when a held list goes stale). A revocation ends the session
    /// with `revoked`; a needed list that is stale or missing ends it with `revocation_stale` or
    /// `revocation_missing` (fail closed: the session's authority can no longer be re-checked),
    /// unless the verifier tolerates those. Other failures (expiry) are the deadline's concern.
    fn recheck_revocation(&self) -> Result<(), Ended> {
        let v = self.verification.verifier();
        let now = now_unix();
        let id = self.peer.id.as_spiffe_id();
        let result = match &self.peer_chain {
            Some(chain) => v
                .verify_chain(chain, id, &self.peer.public_key, now)
                .map(|_| ()),
            None => v.check_peer_revocation(id, &self.peer.public_key, now),
        };
        match result {
            Err(e) if e.code() == ErrorCode::Revoked => Err(Ended::Revoked(e.to_string())),
            Err(e)
                if matches!(
                    e.code(),
                    ErrorCode::RevocationStale | ErrorCode::RevocationMissing
                ) =>
            {
                Err(Ended::Unverifiable(e))
            }
            _ => Ok(()),
        }
    }

    fn reset_stale_timer(&mut self) {
        self.stale_at = stale_at(&self.verification, &self.peer);
        // Never in the past: a list that is stale now was just re-checked (and tolerated).
        let at = self.stale_at.map(|t| t.max(now_unix().saturating_add(1)));
        self.stale_timer.as_mut().reset(stale_instant(at));
    }

    fn poll_next_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        loop {
            if let Some(e) = self.poll_kill(cx) {
                return Poll::Ready(Err(e));
            }
            match frame::decode(&mut self.rbuf) {
                Err(e) => return Poll::Ready(Err(self.fail(cx, e.into()))),
                Ok(Some(f)) => match f.ty {
                    // An empty data frame carries nothing (and must not read as end of stream).
                    FrameType::Data if f.body.is_empty() => {}
                    FrameType::Data => return Poll::Ready(Ok(Some(f.body))),
                    FrameType::Reauth => {
                        if let Err(e) = self.handle_reauth(&f.body) {
                            tracing::warn!(peer.id = %self.peer.id, outcome = "rejected", reason = e.reason(), "reauth refused");
                            return Poll::Ready(Err(self.fail(cx, e)));
                        }
                    }
                    FrameType::Close => {
                        let reason: Reason = parse_body(&f.body).unwrap_or(Reason {
                            code: "bad_frame".into(),
                            message: "unreadable close frame".into(),
                        });
                        let normal = reason.code == CLOSE_NORMAL;
                        let ended = Ended::PeerClosed(reason.code, reason.message);
                        let e = ended.error();
                        self.ended = Some(ended);
                        return Poll::Ready(if normal { Ok(None) } else { Err(e) });
                    }
                    other => {
                        let e = Error::Frame(FrameError::Unexpected(other.name()));
                        return Poll::Ready(Err(self.fail(cx, e)));
                    }
                },
                Ok(None) => {
                    // Read at most what the current frame still needs (bounded memory).
                    let need = match self.rbuf.get(..4) {
                        Some(&[a, b, c, d]) => {
                            HEADER_LEN + u32::from_be_bytes([a, b, c, d]) as usize
                        }
                        _ => HEADER_LEN,
                    };
                    let want = need.saturating_sub(self.rbuf.len()).clamp(1, 16 * 1024);
                    let mut tmp = [0u8; 16 * 1024];
                    let Some(slot) = tmp.get_mut(..want) else {
                        return Poll::Ready(Err(
                            self.fail(cx, FrameError::TooLarge(need as u64).into())
                        ));
                    };
                    let mut rb = ReadBuf::new(slot);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            let e = Error::Io(e);
                            self.ended = Some(Ended::Failed("io".into(), e.to_string()));
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(())) => {
                            if rb.filled().is_empty() {
                                if self.rbuf.is_empty() {
                                    // End of stream at a frame boundary, without a close frame.
                                    self.ended = Some(Ended::PeerClosed(
                                        "eof".into(),
                                        "connection closed".into(),
                                    ));
                                    return Poll::Ready(Ok(None));
                                }
                                let e = Error::Frame(FrameError::Truncated);
                                self.ended = Some(Ended::Failed("bad_frame".into(), e.to_string()));
                                return Poll::Ready(Err(e));
                            }
                            self.rbuf.extend_from_slice(rb.filled());
                        }
                    }
                }
            }
        }
    }

    fn handle_reauth(&mut self, body: &[u8]) -> Result<()> {
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
        let info = self
            .verification
            .trust_store()
            .verify(leaf, rest, unix_time(now), usage)?;
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
        let chain_str = r.chain.or_else(|| self.peer_chain.clone());
        let chain = match &chain_str {
            Some(c) => {
                Some(v.verify_chain(c, self.peer.id.as_spiffe_id(), &self.peer.public_key, now)?)
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
        self.peer.cert_not_after = info.not_after;
        self.peer.chain = chain;
        self.peer_chain = chain_str;
        self.peer.deadline = deadline;
        self.deadline.as_mut().reset(instant_for(deadline));
        // The chain may have changed, and with it the trust domains whose lists it needs.
        self.reset_stale_timer();
        Ok(())
    }
}

/// The earliest time (`next_update + skew`) at which a revocation list the peer's authority
/// depends on goes stale: the lists of the peer's trust domain and, with a chain, of its
/// authority and of every holder along it (the domains phase 6 consults). `None` when stale lists
/// are tolerated (`danger_` setting) or no such list is held.
fn stale_at(verification: &PeerVerification, peer: &AuthenticatedPeer) -> Option<u64> {
    let v = verification.verifier();
    let config = v.config();
    if config.revocation_optional() {
        return None;
    }
    let mut domains: Vec<TrustDomain> = vec![peer.id.trust_domain()];
    if let Some(chain) = &peer.chain {
        domains.push(chain.authority.clone());
        domains.extend(chain.actors.iter().map(|a| a.id.trust_domain()));
    }
    domains
        .iter()
        .filter_map(|td| config.revocation_list(td))
        .map(|l| l.next_update().saturating_add(config.skew_seconds()))
        .min()
}

fn stale_instant(at: Option<u64>) -> Instant {
    // No list to watch: a far deadline (instant_for caps it at a year).
    instant_for(at.unwrap_or(u64::MAX))
}

/// Recovers the crate error carried inside an `io::Error` from the stream adapter.
fn from_io(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(err) = inner.downcast::<Error>() {
                return *err;
            }
        }
        return Error::Config("unreachable".into());
    }
    Error::Io(e)
}

impl<IO> AsyncRead for Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            match ready!(this.poll_next_data(cx)) {
                Ok(Some(body)) => this.pending = body,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(this.pending.get(..n).unwrap_or_default());
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO> AsyncWrite for Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_kill(cx) {
            return Poll::Ready(Err(io::Error::other(e)));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(MAX_FRAME_BODY);
        let chunk = buf.get(..n).unwrap_or_default();
        frame::encode(FrameType::Data, chunk, &mut this.wbuf)
            .map_err(|e| io::Error::other(Error::Frame(e)))?;
        // Best effort now; poll_flush finishes the job.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended.is_none() {
            let body = body_bytes(&Reason {
                code: CLOSE_NORMAL.into(),
                message: String::new(),
            })
            .map_err(|e| io::Error::other(Error::Frame(e)))?;
            frame::encode(FrameType::Close, &body, &mut this.wbuf)
                .map_err(|e| io::Error::other(Error::Frame(e)))?;
            this.ended = Some(Ended::LocalClosed);
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
