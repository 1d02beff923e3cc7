//! Continuous verification of a live session: the deadline, re-checks when the verification
//! state changes, and the staleness timer of the revocation lists the session depends on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentid_protocol::{ErrorCode, RevocationTarget, Role};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{instant_for, now_unix, AuthenticatedPeer, Ended, PeerChain, Session};
use crate::error::Error;
use crate::svid::{CertUsage, TrustStore};
use crate::trust_state::PeerVerification;

pub(super) type ChangeFuture = Pin<Box<dyn Future<Output = watch::Receiver<u64>> + Send>>;

pub(super) fn watch_changes(mut rx: watch::Receiver<u64>) -> ChangeFuture {
    Box::pin(async move {
        if rx.changed().await.is_err() {
            // The verification state is gone: nothing can be revoked any more.
            std::future::pending::<()>().await;
        }
        rx
    })
}

impl<IO> Session<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Deadline and revocation: `Some(error)` when the session must end now.
    pub(super) fn poll_kill(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        if let Some(e) = &self.ended {
            return Some(e.error());
        }
        // The timer, and the wall clock itself (which may have been stepped forward past a
        // deadline that the monotonic timer still waits for).
        if self.deadline.as_mut().poll(cx).is_ready() || now_unix() >= self.peer.deadline {
            return Some(self.end(cx, Ended::Expired));
        }
        self.poll_renewal(cx);
        let mut recheck = false;
        while let Poll::Ready(rx) = self.changes.as_mut().poll(cx) {
            self.changes = watch_changes(rx);
            recheck = true;
        }
        while let Poll::Ready(rx) = self.touched.as_mut().poll(cx) {
            self.touched = watch_changes(rx);
            recheck = true;
        }
        if self.index.version() != self.index_checked {
            recheck = true;
        }
        if self.stale_timer.as_mut().poll(cx).is_ready() {
            recheck = true;
        }
        if recheck {
            // Read the version first: an update landing during the re-check is seen next time.
            let version = *self.applied.borrow_and_update();
            let index_version = self.index.version();
            match self.recheck() {
                Err(ended) => return Some(self.end(cx, ended)),
                // The store the certificates were validated against, not the current one: a
                // bundle change landing during the re-check must validate them again.
                Ok(trust) => self.trust_checked = trust,
            }
            self.checked = version;
            self.index_checked = index_version;
            self.reset_stale_timer();
            // Register the fresh timer with this task's waker.
            let _ = self.stale_timer.as_mut().poll(cx);
        }
        None
    }

    /// Re-checks the session against the current verification state (on every update of it,
    /// and when a held revocation list goes stale), and fails closed (spec/PROTOCOL.md 16.4):
    ///
    /// * after a bundle change, the peer's certificate chain is validated again against the new
    ///   anchors (an `x509-svid` authority removed from the bundle ends the sessions it
    ///   certified);
    /// * the peer's chain is verified again in full, or, for a chain-less peer, its revocation
    ///   is checked. A revocation ends the session with `revoked`; any other failure (a grant key
    ///   rotated out of the bundle, a stale or missing revocation list, ...) ends it with that
    ///   failure's code, since the session's authority can no longer be re-checked. The one
    ///   failure that does not end it here is expiry (`expired`, an expired certificate): the
    ///   session deadline, which is never later, already handles it.
    ///
    /// Returns the trust store the peer's certificates now stand validated against.
    pub(super) fn recheck(&self) -> Result<Arc<TrustStore>, Ended> {
        self.index.count_recheck();
        let now = now_unix();
        let trust = self.verification.trust_store();
        if !Arc::ptr_eq(&trust, &self.trust_checked) {
            trust
                .revalidate(
                    &self.peer_certs,
                    now,
                    self.peer_usage(),
                    self.peer.cert_not_after,
                )
                .map_err(Ended::Untrusted)?;
        }
        // What a new connection would run now, after its proof: the peer's authority through
        // the step of the protocol's presentation verifier that a re-check repeats (there is
        // no new proof to verify).
        let result = self.verification.verifier().verify_peer(
            self.peer.chain.as_ref().map(PeerChain::compact),
            self.peer.id.as_spiffe_id(),
            &self.peer.public_key,
            now,
        );
        match result {
            Ok(_) => Ok(trust),
            Err(e) if e.code() == ErrorCode::Expired => Ok(trust),
            Err(e) if e.code() == ErrorCode::Revoked => Err(Ended::Revoked(e.to_string())),
            Err(e) => Err(Ended::Unverifiable(e)),
        }
    }

    /// The usage the peer's certificate was validated for.
    pub(super) fn peer_usage(&self) -> CertUsage {
        match self.role {
            Role::Server => CertUsage::ClientAuth,
            Role::Client => CertUsage::ServerAuth,
        }
    }

    pub(super) fn reset_stale_timer(&mut self) {
        self.stale_at = stale_at(&self.verification, &self.peer);
        // Never in the past: a list that is stale now was just re-checked (and tolerated).
        let at = self.stale_at.map(|t| t.max(now_unix().saturating_add(1)));
        self.stale_timer.as_mut().reset(stale_instant(at));
    }
}

/// The revocation targets of the session's peer, for the verification's index (`None`, every
/// list re-checks the session, if they cannot be listed: never, since the chain verified), from
/// what its verification read (the chain is not decoded again).
pub(super) fn revocation_targets(
    peer: &AuthenticatedPeer,
) -> Option<Vec<std::sync::Arc<RevocationTarget>>> {
    Some(agentid_protocol::verified_peer_revocation_targets(
        peer.chain.as_ref().map(PeerChain::verified),
        peer.id.as_spiffe_id(),
        &peer.public_key,
    ))
}

/// The earliest time (`next_update + skew`) at which a revocation list the peer's authority
/// depends on goes stale: the lists of the peer's trust domain and, with a chain, of its
/// authority and of every holder along it (the domains phase 6 consults). `None` when stale lists
/// are tolerated (`danger_` setting) or no such list is held.
pub(super) fn stale_at(verification: &PeerVerification, peer: &AuthenticatedPeer) -> Option<u64> {
    verification.stale_at(
        peer.id.as_spiffe_id(),
        peer.chain.as_ref().map(PeerChain::verified),
    )
}

/// When a list that goes stale at `at` (Unix seconds; `None`: no list to watch) does, on the
/// monotonic clock (a year away at most). Also the HTTP client's.
pub(crate) fn stale_instant(at: Option<u64>) -> Instant {
    // No list to watch: a far deadline (instant_for caps it at a year).
    instant_for(at.unwrap_or(u64::MAX))
}
