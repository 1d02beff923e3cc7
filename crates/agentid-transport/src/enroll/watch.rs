//! The revocation feed watcher: long-polls the CA's `GET /v1/revocations?after=SEQ&wait=N`
//! (`spec/CA-API.md` 3.4) and applies each newer list to a live [`PeerVerification`].
//!
//! Every list goes through [`PeerVerification::apply_revocation_list`], which verifies its
//! signature with the `agentid-revocation` keys of the bundle the verification holds and refuses
//! an older `seq`: the watcher never applies a list it could not verify, and the `seq` it asks
//! after is the one of the list the verification holds, never a number from the response.
//! Applying a list signals only the live sessions of that verification under a target the list
//! newly revokes (their peer's key, agent or task, or a `jti`, agent, task or key of their
//! chain, against the list held before): those re-check their peer and end with `revoked`; no
//! other session re-checks.

use std::sync::Arc;
use std::time::Duration;

use agentid_protocol::{PublicKey, TrustDomain};
use http::{Method, StatusCode};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    decode, invalid, parse_answer, Answer, CaClient, EnrollError, Repeat, MAX_LIST_RESPONSE_BYTES,
    MAX_SIGNED_BUNDLE_RESPONSE_BYTES, REUSE_MARGIN,
};
use crate::http::HttpClientConnection;
use crate::PeerVerification;

/// How a [`RevocationWatcher`] polls.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WatchOptions {
    /// The `wait` of each long-poll (whole seconds, at most 30; the CA refuses more).
    pub wait: Duration,
    /// Added to `wait` to bound each request (connection, TLS and response included).
    pub request_margin: Duration,
    /// The first delay after a failure; it doubles per consecutive failure, with full jitter.
    pub min_backoff: Duration,
    /// The largest delay after a failure (also the cap on a `Retry-After` the watcher honours).
    pub max_backoff: Duration,
    /// The least time between two requests that changed nothing (a CA answering `304` at
    /// once, or a list that is not newer): the watcher never busy-loops.
    pub min_interval: Duration,
    /// How often a [`BundleWatcher`] asks for the signed agentid bundle (the CA has no
    /// long-poll for it: bundles change rarely).
    pub bundle_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            wait: Duration::from_secs(25),
            request_margin: Duration::from_secs(10),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            min_interval: Duration::from_secs(1),
            bundle_interval: Duration::from_secs(60),
        }
    }
}

impl WatchOptions {
    /// These options with each long-poll's `wait` set to `wait` (whole seconds, capped at the
    /// CA's 30).
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// These options with failures retried after `min` to `max` (doubling, full jitter).
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// These options with the signed bundle asked for every `interval` (at least one second).
    #[must_use]
    pub fn with_bundle_interval(mut self, interval: Duration) -> Self {
        self.bundle_interval = interval.max(Duration::from_secs(1));
        self
    }

    fn wait_secs(&self) -> u64 {
        self.wait.as_secs().min(agentid_api::MAX_WAIT_SECS)
    }
}

/// What a watcher has done so far ([`WatcherHandle::status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchStatus {
    /// The `seq` of the list of the CA's trust domain that the verification holds, none while
    /// that list is orphaned by a bundle change (for a [`BundleWatcher`], of the signed bundle
    /// it last applied).
    pub seq: Option<u64>,
    /// Lists (or signed bundles) this watcher applied.
    pub applied: u64,
    /// Failed polls (network, refusals, lists that did not verify or were not newer).
    pub failures: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Watches the CA's revocation feed and applies each newer, verified list to a
/// [`PeerVerification`]. Start it with [`RevocationWatcher::spawn`].
#[derive(Debug)]
pub struct RevocationWatcher {
    poller: Poller,
}

/// Watches the CA's signed agentid bundle (`GET /v1/bundle/agentid`, CA-API 3.3) and applies
/// each newer one to a [`PeerVerification`] through a [`BundleApplier`]: new X509 authorities,
/// grant and revocation keys reach live verification only from a document the pinned
/// bundle-signing key signed. Start it with [`BundleWatcher::spawn`].
#[derive(Debug)]
pub struct BundleWatcher {
    poller: Poller,
}

/// Applies signed agentid bundles of one trust domain to a [`PeerVerification`] (CA-API 3.3):
/// the signature must verify with the pinned bundle-signing key, `iss` must be the trust
/// domain, and a document older than the one held (a lower `seq` or `iat`) is refused.
/// Nothing changes on a refusal: the verification keeps the bundle it held.
///
/// The bundle of a document carries its `seq` as `spiffe_sequence`, so the verification
/// itself refuses an older document than the one it holds, whichever applier offers it
/// (`sequence_rollback`). A process that starts again holds only the bundle it starts with:
/// to refuse an older document across restarts, keep [`BundleApplier::held`] and start from
/// it with [`BundleApplier::resume`]. An agent that enrolled with a token file naming
/// `bundle_seq` starts from that floor: its pinned bundle carries it (CA-API 3.6.1).
#[derive(Debug)]
pub struct BundleApplier {
    verification: Arc<PeerVerification>,
    key: PublicKey,
    td: TrustDomain,
    /// The `(seq, iat)` of the document last applied.
    held: std::sync::Mutex<Option<(u64, u64)>>,
}

/// What [`BundleApplier::apply`] did with a verified document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleApplied {
    /// A newer bundle now verifies peers.
    Applied,
    /// The document held already (same `seq` and `iat`): nothing to do.
    Unchanged,
}

impl BundleApplier {
    /// An applier for the bundles of `td` signed by `bundle_signing_key` (the CA directory's
    /// `bundle-signing.pub`, distributed like the root), applied to `verification`.
    pub fn new(
        verification: Arc<PeerVerification>,
        bundle_signing_key: PublicKey,
        td: TrustDomain,
    ) -> Self {
        BundleApplier {
            verification,
            key: bundle_signing_key,
            td,
            held: std::sync::Mutex::new(None),
        }
    }

    /// Holds `(seq, iat)` as the document last applied (kept from an earlier run), so that
    /// nothing older is applied.
    #[must_use]
    pub fn resume(self, seq: u64, iat: u64) -> Self {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some((seq, iat));
        self
    }

    /// The `(seq, iat)` of the signed bundle last applied.
    pub fn held(&self) -> Option<(u64, u64)> {
        *self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Verifies `jws` at `now` (Unix seconds) and, if it is newer than the document held,
    /// applies its bundle. A refusal ([`EnrollError::Invalid`] or the verification's own
    /// refusal of a lower `spiffe_sequence`) changes nothing.
    pub fn apply(&self, jws: &str, now: u64) -> Result<BundleApplied, EnrollError> {
        let skew = self.verification.verifier().config().skew_seconds();
        let signed = agentid_protocol::verify_signed_bundle(jws, &self.key, &self.td, now, skew)
            .map_err(|e| invalid(e.to_string()))?;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seq, iat)) = *held {
            if signed.seq == seq && signed.iat == iat {
                return Ok(BundleApplied::Unchanged);
            }
            if signed.seq <= seq || signed.iat < iat {
                return Err(invalid(format!(
                    "signed agentid bundle (seq {}, iat {}) is not newer than the one held (seq {seq}, iat {iat})",
                    signed.seq, signed.iat
                )));
            }
        }
        self.verification
            .update_bundle(signed.bundle)
            .map_err(EnrollError::Transport)?;
        tracing::info!(trust_domain = %self.td, seq = signed.seq, "signed agentid bundle applied");
        *held = Some((signed.seq, signed.iat));
        Ok(BundleApplied::Applied)
    }
}

/// The polling loop both watchers share.
#[derive(Debug)]
struct Poller {
    client: CaClient,
    verification: Arc<PeerVerification>,
    options: WatchOptions,
    feed: Feed,
}

#[derive(Debug)]
enum Feed {
    Revocations,
    Bundle(Arc<BundleApplier>),
}

impl BundleWatcher {
    /// A watcher of the signed bundle of the CA `client` talks to, applying newer documents
    /// through `applier` (whose trust domain should be the client's). The caller needs no
    /// permission: any certificate holder the CA accepts may read the bundle.
    pub fn new(client: CaClient, applier: Arc<BundleApplier>, options: WatchOptions) -> Self {
        BundleWatcher {
            poller: Poller {
                client,
                verification: applier.verification.clone(),
                options,
                feed: Feed::Bundle(applier),
            },
        }
    }

    /// Starts the watcher on the current tokio runtime.
    pub fn spawn(self) -> WatcherHandle {
        self.poller.spawn()
    }
}

/// Stops a running watcher: [`WatcherHandle::stop`], or dropping the handle.
#[derive(Debug)]
pub struct WatcherHandle {
    stop: watch::Sender<bool>,
    status: watch::Receiver<WatchStatus>,
    task: Option<JoinHandle<()>>,
}

impl WatcherHandle {
    /// What the watcher has done so far.
    pub fn status(&self) -> WatchStatus {
        self.status.borrow().clone()
    }

    /// Waits until `f` holds for the watcher's status, or `timeout` passes (then `false`).
    pub async fn wait_for(&self, timeout: Duration, f: impl Fn(&WatchStatus) -> bool) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| f(s)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the watcher (an outstanding long-poll is dropped) and waits for its task to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl RevocationWatcher {
    /// A watcher of the feed of the CA `client` talks to (the lists of the client's trust
    /// domain), applying lists to `verification`. The caller needs no permission: any
    /// certificate holder the CA accepts may read the feed.
    ///
    /// The client's own verification (how it checks the CA) may be `verification` itself: a
    /// [`CaClient`] refuses a CA certificate the held list revokes, but not the CA because that
    /// list is stale or missing (spec/CA-API.md 1.1), so a watcher that could not reach the CA
    /// past the list's `next_update` gets a fresh list once it can again.
    pub fn new(
        client: CaClient,
        verification: Arc<PeerVerification>,
        options: WatchOptions,
    ) -> Self {
        RevocationWatcher {
            poller: Poller {
                client,
                verification,
                options,
                feed: Feed::Revocations,
            },
        }
    }

    /// Starts the watcher on the current tokio runtime.
    pub fn spawn(self) -> WatcherHandle {
        self.poller.spawn()
    }
}

impl Poller {
    /// The `seq` the status reports: of the held list, or of the held signed bundle.
    fn seq(&self) -> Option<u64> {
        match &self.feed {
            Feed::Revocations => held_seq(&self.verification, &self.client.td),
            Feed::Bundle(a) => a.held().map(|(seq, _)| seq),
        }
    }

    fn spawn(self) -> WatcherHandle {
        let (stop, stop_rx) = watch::channel(false);
        let initial = WatchStatus {
            seq: self.seq(),
            ..WatchStatus::default()
        };
        let (status_tx, status) = watch::channel(initial);
        let task = tokio::spawn(self.run(stop_rx, status_tx));
        WatcherHandle {
            stop,
            status,
            task: Some(task),
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>, status: watch::Sender<WatchStatus>) {
        let mut failures_in_row: u32 = 0;
        // A bundle change may have orphaned the held list (its signing key left the bundle,
        // spec/PROTOCOL.md 14.1: the list goes stale at the skew after the change) or made the
        // served one verifiable: the revocation feed is asked again at once, after the held
        // list's `seq` (or for the latest list), instead of at the end of a long-poll after a
        // `seq` no longer held, or of a back-off.
        let mut changes = self.verification.subscribe();
        let watch_changes = matches!(self.feed, Feed::Revocations);
        loop {
            if *stop.borrow() {
                return;
            }
            let started = Instant::now();
            let step = tokio::select! {
                r = self.poll_once() => r,
                _ = stop.changed() => return,
                Ok(()) = changes.changed(), if watch_changes => continue,
            };
            let pause = match step {
                Ok(Polled::Applied) => {
                    failures_in_row = 0;
                    status.send_modify(|s| {
                        s.applied += 1;
                        s.seq = self.seq();
                    });
                    match self.feed {
                        // A newer list may be waiting already: ask again at once.
                        Feed::Revocations => Duration::ZERO,
                        Feed::Bundle(_) => self.idle_interval().saturating_sub(started.elapsed()),
                    }
                }
                Ok(Polled::Unchanged) => {
                    failures_in_row = 0;
                    self.idle_interval().saturating_sub(started.elapsed())
                }
                Err(failure) => {
                    failures_in_row = failures_in_row.saturating_add(1);
                    tracing::warn!(error = %failure.error, "agentid revocation watcher: poll failed");
                    status.send_modify(|s| {
                        s.failures += 1;
                        s.last_error = Some(failure.error.to_string());
                    });
                    let backoff = jittered(backoff_ceiling(&self.options, failures_in_row));
                    // A `Retry-After` is honoured up to the largest backoff.
                    let retry_after = failure
                        .retry_after
                        .map_or(Duration::ZERO, |r| r.min(self.options.max_backoff));
                    backoff
                        .max(retry_after)
                        .max(self.options.min_interval.saturating_sub(started.elapsed()))
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                    Ok(()) = changes.changed(), if watch_changes => {}
                }
            }
        }
    }

    /// The pause after a poll that succeeded: none for the revocation long-poll (the CA holds
    /// the request), the bundle interval for the signed bundle.
    fn idle_interval(&self) -> Duration {
        match &self.feed {
            Feed::Revocations => self.options.min_interval,
            Feed::Bundle(_) => self.options.bundle_interval.max(self.options.min_interval),
        }
    }

    async fn poll_once(&self) -> Result<Polled, Failure> {
        match &self.feed {
            Feed::Revocations => self.poll_revocations().await,
            Feed::Bundle(applier) => self.poll_bundle(applier).await,
        }
    }

    /// One request for the signed agentid bundle: applied a newer verified one, or nothing
    /// changed (the same document, or none published: `404`).
    async fn poll_bundle(&self, applier: &BundleApplier) -> Result<Polled, Failure> {
        let bound = self.client.timeout;
        let get = self.client.request(
            Method::GET,
            |_| agentid_api::routes::BUNDLE_AGENTID.to_owned(),
            None,
            MAX_SIGNED_BUNDLE_RESPONSE_BYTES,
            Repeat::Safe,
            REUSE_MARGIN,
        );
        let answer = answer_within(bound, get).await?;
        match answer.status {
            StatusCode::NOT_FOUND => return Ok(Polled::Unchanged),
            s if !s.is_success() => return Err(refusal("GET /v1/bundle/agentid", answer)),
            _ => {}
        }
        let body = answer.body;
        let jws = std::str::from_utf8(&body)
            .map_err(|_| Failure::from(invalid("the signed agentid bundle is not UTF-8")))?;
        match applier.apply(jws, crate::session::now_unix())? {
            BundleApplied::Applied => Ok(Polled::Applied),
            BundleApplied::Unchanged => Ok(Polled::Unchanged),
        }
    }

    /// One long-poll: applied a newer verified list, or nothing changed.
    async fn poll_revocations(&self) -> Result<Polled, Failure> {
        let wait = self.options.wait_secs();
        let bound = Duration::from_secs(wait).saturating_add(self.options.request_margin);
        let held = held_seq(&self.verification, &self.client.td);
        // The CA holds the request for `wait`: never past the time the connection may still
        // send (its certificate's deadline margin), where it would be dropped under the
        // request. A renewed certificate is presented on the next connection.
        let path = |conn: &HttpClientConnection| match held {
            Some(seq) => format!(
                "{}?after={seq}&wait={}",
                agentid_api::routes::REVOCATIONS,
                long_poll_wait(wait, conn.time_left())
            ),
            None => agentid_api::routes::REVOCATIONS.to_owned(),
        };
        let get = self.client.request(
            Method::GET,
            path,
            None,
            MAX_LIST_RESPONSE_BYTES,
            Repeat::Safe,
            LONG_POLL_SLACK.saturating_add(Duration::from_secs(1)),
        );
        let answer = answer_within(bound, get).await?;
        match answer.status {
            StatusCode::NOT_MODIFIED if held.is_some() => return Ok(Polled::Unchanged),
            // A request for the latest list is answered at once with it, or `404` when none was
            // published (CA-API 3.4): a `304` gave nothing, and is no healthy long-poll.
            StatusCode::NOT_MODIFIED => {
                return Err(invalid(
                    "GET /v1/revocations answered 304 Not Modified to a request for the latest list (naming no list held): no list was received",
                )
                .into())
            }
            s if !s.is_success() => return Err(refusal("GET /v1/revocations", answer)),
            _ => {}
        }
        // The list is borrowed from the body: a body of up to 256 MiB (what a list may be) is
        // held once, not twice, before the signature check decides (whoever holds only the
        // CA's TLS key can send such a body on every poll).
        let resp: FeedAnswer<'_> = parse_answer(&answer.body).map_err(Failure::from)?;
        if held.is_some_and(|h| resp.seq <= h) {
            return Err(invalid(format!(
                "the CA answered a list with seq {} after {}",
                resp.seq,
                held.unwrap_or_default()
            ))
            .into());
        }
        // Verifies the signature and refuses an older seq; nothing is applied otherwise.
        // Only a list of the client's own trust domain: the CA of one domain decides nothing
        // about the lists of another its verification also trusts.
        self.verification
            .apply_revocation_list_of(&resp.list, &self.client.td)
            .map_err(|e| Failure::from(EnrollError::Transport(e)))?;
        match held_seq(&self.verification, &self.client.td) {
            Some(now) if held.is_none_or(|h| now > h) => Ok(Polled::Applied),
            _ => Err(invalid(format!(
                "the CA's list (seq {}) is not a newer list of {}",
                resp.seq,
                self.client.td.as_str()
            ))
            .into()),
        }
    }
}

/// `GET /v1/revocations`'s answer ([`agentid_api::RevocationsResponse`]), its list borrowed from the body
/// when it holds no escape (a compact JWS never does).
#[derive(serde::Deserialize)]
pub(super) struct FeedAnswer<'a> {
    pub(super) seq: u64,
    #[serde(borrow)]
    pub(super) list: std::borrow::Cow<'a, str>,
}

enum Polled {
    Applied,
    Unchanged,
}

struct Failure {
    error: EnrollError,
    retry_after: Option<Duration>,
}

/// The answer to a feed request, or a timeout once `bound` has passed without one.
async fn answer_within(
    bound: Duration,
    request: impl std::future::Future<Output = Result<Answer, EnrollError>>,
) -> Result<Answer, Failure> {
    tokio::time::timeout(bound, request)
        .await
        .map_err(|_| Failure::from(EnrollError::Timeout(bound)))?
        .map_err(Failure::from)
}

/// A feed request's unsuccessful answer: the CA's refusal (`{code, message, hint}`) with its
/// `Retry-After`, or, without a refusal body, what `route` answered.
fn refusal(route: &str, answer: Answer) -> Failure {
    let Answer {
        status,
        retry_after,
        body,
        ..
    } = answer;
    let error = decode::<serde::de::IgnoredAny>(status, &body)
        .err()
        .unwrap_or_else(|| invalid(format!("{route} answered {status}")));
    Failure { error, retry_after }
}

impl From<EnrollError> for Failure {
    fn from(error: EnrollError) -> Self {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// How long before its connection must stop sending a long-poll is answered at the latest.
const LONG_POLL_SLACK: Duration = Duration::from_secs(2);

/// The `wait` of a long-poll on a connection that may send for `left` more: `wait`, or less so
/// that the answer comes [`LONG_POLL_SLACK`] before the connection is dropped.
fn long_poll_wait(wait: u64, left: Duration) -> u64 {
    wait.min(left.saturating_sub(LONG_POLL_SLACK).as_secs())
}

/// The `seq` of the list of `td` that `verification` holds; none for a list orphaned by a
/// bundle change (its signing key left the bundle: the CA's lists replace it whatever their
/// `seq`, so the feed is asked for its latest).
fn held_seq(verification: &PeerVerification, td: &TrustDomain) -> Option<u64> {
    verification
        .verifier()
        .config()
        .revocation_list(td)
        .filter(|l| !l.is_orphaned())
        .map(|l| l.seq())
}

/// The largest delay after `failures` failures in a row: `min_backoff` doubled per failure
/// after the first, capped at `max_backoff`.
fn backoff_ceiling(options: &WatchOptions, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    options
        .min_backoff
        .saturating_mul(1u32 << doublings)
        .min(options.max_backoff)
        .max(options.min_backoff)
}

/// A uniformly random delay in `[ceiling/2, ceiling]` (jitter that keeps a floor, so that a
/// failing CA is never polled in a tight loop).
pub(super) fn jittered(ceiling: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(_) => u32::MAX,
    };
    let half = ceiling / 2;
    let extra =
        Duration::try_from_secs_f64(half.as_secs_f64() * f64::from(r) / f64::from(u32::MAX))
            .unwrap_or(half)
            .min(half);
    half.saturating_add(extra)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The feed's list is read in place from the answer's body, not copied (a body may be up to
    /// 256 MiB: whoever holds only the CA's TLS key could make every watcher hold it twice on
    /// every poll, red team, CA clients); one with an escape is still read, as JSON says.
    #[test]
    fn the_feed_list_is_borrowed_from_the_body() {
        let body = br#"{"seq": 7, "list": "eyJh.eyJi.c2ln", "other": 1}"#;
        let a: FeedAnswer<'_> = parse_answer(body).unwrap();
        assert_eq!(a.seq, 7);
        assert!(
            matches!(a.list, std::borrow::Cow::Borrowed("eyJh.eyJi.c2ln")),
            "{:?}",
            a.list
        );
        let escaped = br#"{"seq": 8, "list": "eyJh.eyJi.c2ln"}"#;
        let a: FeedAnswer<'_> = parse_answer(escaped).unwrap();
        assert_eq!(a.list, "eyJh.eyJi.c2ln");
        // The same shape as the API's type, whose JSON the CA writes.
        let written = serde_json::to_vec(&agentid_api::RevocationsResponse {
            seq: 9,
            list: "a.b.c".into(),
        })
        .unwrap();
        let a: FeedAnswer<'_> = parse_answer(&written).unwrap();
        assert_eq!((a.seq, a.list.as_ref()), (9, "a.b.c"));
        assert!(parse_answer::<FeedAnswer<'_>>(br#"{"seq": 1}"#).is_err());
    }

    #[test]
    fn the_backoff_doubles_per_failure_up_to_its_cap() {
        let o = WatchOptions::default()
            .with_backoff(Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(backoff_ceiling(&o, 1), Duration::from_millis(500));
        assert_eq!(backoff_ceiling(&o, 2), Duration::from_secs(1));
        assert_eq!(backoff_ceiling(&o, 3), Duration::from_secs(2));
        assert_eq!(backoff_ceiling(&o, 8), Duration::from_secs(30));
        assert_eq!(backoff_ceiling(&o, u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_ceiling() {
        let c = Duration::from_secs(4);
        for _ in 0..200 {
            let d = jittered(c);
            assert!(d >= Duration::from_secs(2) && d <= c, "{d:?}");
        }
        // Any ceiling a caller configures, however large, gives a delay within it.
        assert!(jittered(Duration::MAX) <= Duration::MAX);
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_long_poll_is_answered_before_its_connection_must_close() {
        let secs = Duration::from_secs;
        assert_eq!(long_poll_wait(25, secs(3600)), 25);
        // A certificate 7 s from its close margin: answered 2 s before it.
        assert_eq!(long_poll_wait(25, secs(7)), 5);
        assert_eq!(long_poll_wait(25, Duration::from_millis(2500)), 0);
        assert_eq!(long_poll_wait(25, Duration::ZERO), 0);
    }

    #[test]
    fn the_wait_never_exceeds_what_the_ca_accepts() {
        let o = WatchOptions::default().with_wait(Duration::from_secs(300));
        assert_eq!(o.wait_secs(), agentid_api::MAX_WAIT_SECS);
        let o = WatchOptions::default().with_wait(Duration::from_millis(1500));
        assert_eq!(o.wait_secs(), 1);
    }
}
