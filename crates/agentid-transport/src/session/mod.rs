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

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentid_protocol::{PeerId, PublicKey, Role, Scope, TaskId, VerifiedChain};
use bytes::{Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsStream;

use crate::admission::SessionPermit;
use crate::credentials::{Credential, CredentialSource};
use crate::error::{CertError, Error, Result};
use crate::frame::{body_bytes, FrameType, Reason};
use crate::session_index::Registration;
use crate::svid::TrustStore;
use crate::trust_state::PeerVerification;

mod io;
mod reauth;
mod recheck;

use io::from_io;
pub(crate) use recheck::stale_instant;
use recheck::{revocation_targets, stale_at, watch_changes, ChangeFuture};

/// The most `reauth` frames one session accepts (each leaves a receipt).
pub const MAX_REAUTHS: usize = 1024;

/// The most bytes of reauth proofs one session keeps as receipts (local policy, spec 16.6): a
/// kilobyte a reauth on average for [`MAX_REAUTHS`] of them. A hop proof may take 8 KiB (JSON
/// whitespace pads one at no cost), so the count alone let one peer make a session hold 8 MiB
/// of receipts; a session whose peer goes past this ends (`bad_frame`) as at the count.
pub const MAX_REAUTH_RECEIPT_BYTES: usize = MAX_REAUTHS * 1024;

/// The close code of an orderly end.
pub const CLOSE_NORMAL: &str = "normal";

/// Lifetime of the hop proofs this crate signs (the protocol caps it at 60 s).
pub(crate) const PROOF_LIFETIME: u64 = 60;

/// A configured hop-proof lifetime, checked when a builder builds: whole seconds from 1 to
/// [`agentid_protocol::caps::MAX_PROOF_LIFETIME`]. A longer one would be signed and then refused by
/// every verifier (spec: a proof lives at most 60 s), so it is a configuration error here, not
/// a failure at the first request.
pub(crate) fn check_proof_lifetime(t: std::time::Duration, option: &str) -> crate::Result<()> {
    let max = agentid_protocol::caps::MAX_PROOF_LIFETIME;
    if t.as_secs() == 0 || t.as_secs() > max || (t.as_secs() == max && t.subsec_nanos() > 0) {
        return Err(crate::Error::Config(format!(
            "{option} is {t:?}: a hop proof lives from 1 to {max} s (spec: a proof lives at most {max} seconds); leave it at the default of {PROOF_LIFETIME} s or choose a value in that range"
        )));
    }
    Ok(())
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn unix_time(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

pub(crate) fn instant_for(deadline: u64) -> Instant {
    // From the wall clock with its fraction of a second: a timer counted from whole seconds
    // would fire up to a second after the deadline.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(deadline).saturating_sub(now);
    // Cap far deadlines (a chain-less service certificate may live long): a year is plenty.
    Instant::now() + left.min(Duration::from_secs(365 * 24 * 3600))
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
    /// reports it ([`agentid_protocol::Serial`]).
    pub cert_serial: String,
    /// The peer certificate's `notAfter` (Unix seconds).
    pub cert_not_after: u64,
    /// The peer's verified delegation chain, if it presented one.
    pub chain: Option<PeerChain>,
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

/// A peer's delegation chain as verified, together with the exact string it presented: kept
/// once, so that the verified result and the bytes it was verified from cannot drift apart (a
/// re-check verifies the same bytes again). Dereferences to the [`VerifiedChain`].
#[derive(Clone)]
pub struct PeerChain {
    verified: VerifiedChain,
    compact: String,
}

impl PeerChain {
    pub(crate) fn new(verified: VerifiedChain, compact: String) -> Self {
        Self { verified, compact }
    }

    /// The verified chain.
    pub fn verified(&self) -> &VerifiedChain {
        &self.verified
    }

    /// The chain exactly as the peer presented it (compact tokens joined with `~`).
    pub fn compact(&self) -> &str {
        &self.compact
    }
}

impl Deref for PeerChain {
    type Target = VerifiedChain;

    fn deref(&self) -> &VerifiedChain {
        &self.verified
    }
}

impl fmt::Debug for PeerChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The verified claims only: tokens are never logged.
        fmt::Debug::fmt(&self.verified, f)
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
    /// After a bundle change, the peer's certificate no longer validates.
    Untrusted(CertError),
    /// Nothing was sent either way for the idle timeout while this side waited for the peer.
    Idle,
    PeerClosed(String, String),
    Failed(String, String),
    LocalClosed,
}

impl Ended {
    fn error(&self) -> Error {
        match self {
            Ended::Expired => Error::CredentialExpired,
            Ended::Idle => Error::Idle,
            Ended::Revoked(r) => Error::Revoked(r.clone()),
            Ended::Unverifiable(e) => Error::Protocol(e.clone()),
            Ended::Untrusted(e) => Error::Certificate(e.clone()),
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

/// What the handshake hands to a new session.
pub(crate) struct SessionParts<IO> {
    pub credentials: Arc<dyn CredentialSource>,
    /// [`CredentialSource::subscribe`], taken before the handshake read `local`.
    pub renewals: Option<watch::Receiver<u64>>,
    pub idle_timeout: Option<Duration>,
    /// How long a close waits for the peer to take the close frame and `close_notify`
    /// ([`crate::ConnectionLimits::first_frame_timeout`]).
    pub close_timeout: Duration,
    pub peer_certs: Vec<CertificateDer<'static>>,
    pub io: TlsStream<IO>,
    pub role: Role,
    pub peer: AuthenticatedPeer,
    pub local: Arc<Credential>,
    pub verification: Arc<PeerVerification>,
    pub exporter_client: [u8; 32],
    pub exporter_server: [u8; 32],
    pub changes: watch::Receiver<u64>,
    /// The trust store the peer's certificate was last checked against (before the handshake).
    pub trust_seen: Arc<crate::TrustStore>,
    pub permit: Option<SessionPermit>,
    pub jtis: Vec<String>,
    /// [`PeerVerification::lists_applied`] as read before the peer was verified.
    pub lists_seen: u64,
    /// A client that requires the server in its chain's audience (for the hello) requires it for
    /// the chains of its reauths too.
    pub require_audience: bool,
}

/// An authenticated agentid session over TLS.
pub struct Session<IO> {
    io: TlsStream<IO>,
    role: Role,
    peer: AuthenticatedPeer,
    local: Arc<Credential>,
    /// Where renewals of `local` come from (sent to the peer as `reauth`).
    credentials: Arc<dyn CredentialSource>,
    renewals: Option<ChangeFuture>,
    verification: Arc<PeerVerification>,
    exporter_client: [u8; 32],
    exporter_server: [u8; 32],
    rbuf: BytesMut,
    wbuf: BytesMut,
    pending: Bytes,
    deadline: Pin<Box<Sleep>>,
    /// Ends the session when neither side has sent anything for this long while this side
    /// waits for the peer (see [`crate::ConnectionLimits::idle_timeout`]).
    idle_timeout: Option<Duration>,
    /// The last frame received or data written; the timer is moved lazily when it fires.
    last_activity: Instant,
    idle_timer: Pin<Box<Sleep>>,
    /// How long a close (`close`, or the shutdown of the byte stream) waits for the peer to
    /// take the close frame and `close_notify`.
    close_timeout: Duration,
    /// Armed when the close starts (made only then).
    close_timer: Option<Pin<Box<Sleep>>>,
    /// Bundle changes (every session re-checks).
    changes: ChangeFuture,
    /// The verification state's version, to notice an update the session has not re-checked yet.
    applied: watch::Receiver<u64>,
    checked: u64,
    /// The session's place in the verification's index of revocation targets: a list that
    /// newly revokes one of them signals this session (and no list signals the others).
    index: Registration,
    touched: ChangeFuture,
    index_checked: u64,
    /// When a revocation list the session depends on goes stale (None: tolerated or none held).
    stale_at: Option<u64>,
    stale_timer: Pin<Box<Sleep>>,
    jtis: Vec<String>,
    /// The peer's current certificate chain (the handshake's, or the last reauth's), and the
    /// trust store it was last validated against: a bundle change re-validates it.
    peer_certs: Vec<CertificateDer<'static>>,
    trust_checked: Arc<TrustStore>,
    ended: Option<Ended>,
    /// The session slot at the server; released as soon as the session ends.
    permit: Option<SessionPermit>,
    /// A reauth's chain must have the peer (the server) in its audience, or it is not sent.
    require_audience: bool,
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
        let last_activity = Instant::now();
        let idle_timer = Box::pin(tokio::time::sleep_until(
            parts
                .idle_timeout
                .map_or_else(|| instant_for(u64::MAX), |d| last_activity + d),
        ));
        let applied = parts.changes.clone();
        // `changes` was subscribed before the handshake: a bundle change it has not seen yet
        // landed while the peer was being verified, and is not re-checked until the first poll.
        // Count it as unchecked, so that an `authorize` before any read or write re-checks too.
        let current = *applied.borrow();
        let checked = if applied.has_changed().unwrap_or(false) {
            current.wrapping_sub(1)
        } else {
            current
        };
        let stale_at = stale_at(&parts.verification, &parts.peer);
        let trust_checked = parts.trust_seen;
        let index = parts
            .verification
            .register(revocation_targets(&parts.peer), parts.lists_seen);
        // Signals that landed before this point are seen by `index_checked` (a re-check follows).
        let index_checked = 0;
        let touched = watch_changes(index.subscribe());
        let stale_timer = Box::pin(tokio::time::sleep_until(stale_instant(stale_at)));
        Self {
            io: parts.io,
            role: parts.role,
            peer: parts.peer,
            local: parts.local,
            renewals: parts.renewals.map(watch_changes),
            credentials: parts.credentials,
            verification: parts.verification,
            exporter_client: parts.exporter_client,
            exporter_server: parts.exporter_server,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            pending: Bytes::new(),
            deadline,
            idle_timeout: parts.idle_timeout,
            close_timeout: parts.close_timeout,
            close_timer: None,
            last_activity,
            idle_timer,
            changes: watch_changes(parts.changes),
            applied,
            checked,
            index,
            touched,
            index_checked,
            stale_at,
            stale_timer,
            jtis: parts.jtis,
            peer_certs: parts.peer_certs,
            trust_checked,
            ended: None,
            permit: parts.permit,
            require_audience: parts.require_audience,
        }
    }

    /// Records why the session ended (every later call answers with it) and gives its slot
    /// back to the server's caps.
    fn set_ended(&mut self, ended: Ended) {
        self.ended = Some(ended);
        self.permit = None;
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
        if *self.applied.borrow() != self.checked
            || self.index.version() != self.index_checked
            || self.stale_at.is_some_and(|t| now >= t)
        {
            let _ = self.recheck().map_err(|ended| ended.error())?;
        }
        // Section 13 as the protocol has it: a peer without a chain holds no authority (A1, then
        // `scope_not_granted`).
        let result = self.verification.verifier().authorize_peer(
            self.peer.chain.as_deref(),
            requested,
            &BTreeMap::new(),
        );
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

    /// Ends the session with a close frame carrying `code` and `message`, then shuts TLS down.
    ///
    /// The peer must take the close frame and TLS `close_notify` within the first-frame timeout
    /// ([`crate::ConnectionLimits::first_frame_timeout`], as it must take the handshake's
    /// frames), else the close fails with [`Error::Timeout`] ([`crate::TimeoutKind::Close`]);
    /// the session's deadline or a revocation meanwhile ends it sooner, with that reason. The
    /// shutdown of the byte stream (`AsyncWriteExt::shutdown`) waits the same way.
    pub async fn close(mut self, code: &str, message: &str) -> Result<()> {
        self.arm_close_timer();
        if self.ended.is_none() {
            // A deadline or revocation not acted on yet ends the session with its own code (the
            // close frame `end` sends), not with the caller's.
            if let Some(e) = std::future::poll_fn(|cx| Poll::Ready(self.poll_kill(cx))).await {
                return Err(e);
            }
            let body = body_bytes(&Reason {
                code: code.into(),
                message: message.into(),
            })?;
            self.write_frame(FrameType::Close, &body).await?;
            self.set_ended(Ended::LocalClosed);
        }
        // The session's own shutdown: the wait for a peer that reads nothing ends at the close
        // timer (armed above: one wait for the frame and `close_notify` together).
        self.shutdown().await.map_err(from_io)
    }
}
