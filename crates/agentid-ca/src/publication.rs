//! Revocation list publication for the CA service (`spec/CA-API.md` 3.4).
//!
//! * **One `seq` per publication.** [`CertificateAuthority::publish_revocations`] takes the next
//!   `seq`, reads the entries, signs and stores the list in one store transaction, so a list with
//!   a higher `seq` never lacks an entry a lower one had, and the same `seq` always carries the
//!   same bytes. The next `seq` is at least the time in milliseconds
//!   ([`crate::store::list_seq_floor`]): a store restored from a backup publishes above the
//!   lists agents hold.
//! * **Served from the store.** Every replica serves the latest row of `published_lists`; a
//!   [`Publisher`] polls the store every [`POLL`] (reading a list only when one newer than its
//!   own was stored) and hands newer lists (its own or another replica's) to its subscribers
//!   through one `watch` channel (O(1) per long-poll waiter). Each publication deletes the
//!   lists older than the latest [`crate::store::PUBLISHED_LISTS_KEPT`]: only the latest is
//!   ever served, and a long-poll's `after` is compared with its `seq` alone.
//! * **When.** After each committed revocation ([`Publisher::revoked`], or a revocation committed
//!   by another process, seen through the store's revocation epoch within one poll), coalesced
//!   to at most one publication per [`COALESCE`]; and, when nothing changed, once half the time
//!   from the held list's `iat` to its `next_update` has passed.
//! * **No `304` unread.** A held long-poll is answered `304` only if the publisher read the
//!   store within [`FRESH`]; a replica cut off from the database answers `503` instead.
//! * **One publisher at a time** in a process (the SQLite write lock serializes processes).
//! * **One response body per `seq`.** The feed's body for the newest list is written once and
//!   shared by every response for it ([`FeedBody`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Mutex, Notify};

use crate::error::{CaError, Result};
use crate::store::PublishedList;
use crate::CertificateAuthority;

/// How often the store is polled for lists and revocations made elsewhere.
pub const POLL: Duration = Duration::from_millis(200);

/// How often the publisher's loop forgets the bootstrap tokens past their retention
/// ([`CertificateAuthority::prune_bootstrap_tokens`]).
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// At most one publication per this interval; revocations in between share the next list.
pub const COALESCE: Duration = Duration::from_millis(200);

/// How recently the publisher must have read the store for this replica to say that no newer
/// list was published (a held long-poll's `304`): a replica cut off from the database while
/// the others publish does not know it (`spec/CA-API.md` 3.4). Ten polls: a publication of a
/// large list under load takes about a second.
pub const FRESH: Duration = Duration::from_secs(2);

/// Publishes revocation lists and hands the latest one to subscribers.
pub struct Publisher {
    ca: Arc<CertificateAuthority>,
    latest: watch::Sender<Option<Arc<PublishedList>>>,
    wake: Notify,
    one: Mutex<Option<tokio::time::Instant>>,
    /// When the last successful read of the store began.
    read_at: std::sync::Mutex<tokio::time::Instant>,
}

impl core::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Publisher")
            .field("seq", &self.latest.borrow().as_ref().map(|p| p.seq))
            .finish_non_exhaustive()
    }
}

/// Whether the held list must be replaced now: none is held, a revocation committed since it
/// was made, or half its interval to `next_update` has passed.
fn due(held: Option<&PublishedList>, epoch: u64, now: u64) -> bool {
    match held {
        None => true,
        Some(p) => {
            let half = p.published_at + p.next_update.saturating_sub(p.published_at) / 2;
            epoch > p.revocation_epoch || now >= half
        }
    }
}

impl Publisher {
    /// Starts from the latest stored list, publishing one first if it is due or was signed
    /// with another revocation key than this CA's (one the operator replaced: verifiers holding
    /// the bundle of the new key verify only the new key's lists, and hold the old key's list
    /// only until the skew after they took that bundle, spec/PROTOCOL.md 14.1). Blocking: call it outside the async runtime or from a blocking
    /// task.
    pub fn new(ca: Arc<CertificateAuthority>) -> Result<Arc<Self>> {
        let p = Publisher {
            ca,
            latest: watch::channel(None).0,
            wake: Notify::new(),
            one: Mutex::new(None),
            read_at: std::sync::Mutex::new(tokio::time::Instant::now()),
        };
        let mut stored = p.step_blocking(SystemTime::now())?;
        if !p.ca.signed_with_own_revocation_key(&stored.compact) {
            stored = Arc::new(p.ca.publish_revocations(SystemTime::now())?);
        }
        p.latest.send_replace(Some(stored));
        Ok(Arc::new(p))
    }

    /// The latest list.
    pub fn latest(&self) -> Option<Arc<PublishedList>> {
        self.latest.borrow().clone()
    }

    /// A receiver that sees every newer list.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<PublishedList>>> {
        self.latest.subscribe()
    }

    /// Whether the store was read successfully within `within` (the list served is the latest
    /// stored one as of then, give or take one [`POLL`]).
    pub fn read_within(&self, within: Duration) -> bool {
        self.read_at
            .lock()
            .map(|at| at.elapsed() <= within)
            .unwrap_or(false)
    }

    /// Says that a revocation committed: the next list is published within [`COALESCE`].
    pub fn revoked(&self) {
        self.wake.notify_one();
    }

    /// Waits (at most `timeout`) until the served list was made at revocation epoch `epoch` or
    /// later, i.e. holds every revocation committed before `epoch` was read.
    pub async fn published_at_epoch(&self, epoch: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.subscribe();
        let res = tokio::time::timeout(
            timeout,
            rx.wait_for(|p| p.as_ref().is_some_and(|p| p.revocation_epoch >= epoch)),
        )
        .await;
        match res {
            Ok(Ok(_)) => Ok(()),
            _ => Err(CaError::Store(
                "the revocation is recorded but no list holding it was published in time".into(),
            )),
        }
    }

    /// Reads the store; publishes when due. Returns the list to serve. A stored list is read
    /// only when it is newer than the one served (a poll reads no list when nothing changed).
    fn step_blocking(&self, now: SystemTime) -> Result<Arc<PublishedList>> {
        let served = self.latest();
        let stored = self
            .ca
            .latest_published_after(served.as_ref().map(|p| p.seq))?
            .map(Arc::new);
        let held = stored.or(served);
        let epoch = self.ca.revocation_epoch()?;
        let now_s = crate::util::unix(now)?;
        match held {
            Some(h) if !due(Some(&h), epoch, now_s) => Ok(h),
            _ => Ok(Arc::new(self.ca.publish_revocations(now)?)),
        }
    }

    /// Publishes if due (at most once per [`COALESCE`]) and hands a newer list to subscribers.
    async fn step(self: &Arc<Self>) -> Result<()> {
        let mut last = self.one.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + COALESCE).await;
        }
        let me = self.clone();
        let started = tokio::time::Instant::now();
        let list = tokio::task::spawn_blocking(move || me.step_blocking(SystemTime::now()))
            .await
            .map_err(|e| CaError::Store(format!("publisher task: {e}")))??;
        if let Ok(mut at) = self.read_at.lock() {
            *at = (*at).max(started);
        }
        let newer = self
            .latest
            .borrow()
            .as_ref()
            .is_none_or(|held| list.seq > held.seq);
        if newer {
            *last = Some(tokio::time::Instant::now());
            tracing::debug!(seq = list.seq, "revocation list served");
            self.latest.send_replace(Some(list));
        }
        Ok(())
    }

    /// Runs forever: on every revocation signal and every [`POLL`], serves the latest stored
    /// list and publishes one when due. Failures are logged and retried at the next poll.
    pub async fn run(self: Arc<Self>) {
        // The first pass forgets old tokens soon after the start, then every PRUNE_EVERY.
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "revocation list publication failed");
            }
            // Bootstrap tokens past their retention are forgotten on the same loop
            // (CA-API.md 3.6), so that the store does not grow with every token ever made.
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                let ca = self.ca.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    match ca.prune_bootstrap_tokens(SystemTime::now()) {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(tokens = n, "expired bootstrap tokens forgotten"),
                        Err(e) => {
                            tracing::warn!(error = %e, "forgetting expired bootstrap tokens failed")
                        }
                    }
                })
                .await;
            }
            // The audit chain's time-based checkpoint rides on the same loop.
            let ca = self.ca.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = ca.checkpoint_audit(SystemTime::now(), false) {
                    tracing::warn!(error = %e, "audit checkpoint failed");
                }
            })
            .await;
        }
    }
}

/// The feed's response body (`GET /v1/revocations`: `{"seq":..,"list":".."}`) for the newest
/// list served, written once per `seq` and shared by every response for that `seq` (a list of
/// 100,000 entries is about 12.5 MB: writing it once per waiter cost a copy and a JSON pass
/// each). One body is kept: the newest `seq` asked for. A body for any other `seq` (an older
/// list still held by a slow request) is written for that request alone, so a response always
/// carries the list it was asked for, and the cache never holds more than one list.
#[derive(Debug, Default)]
pub struct FeedBody {
    newest: Mutex<Option<(u64, axum::body::Bytes)>>,
}

impl FeedBody {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The response body for `p`: the kept one when it is `p`'s, else written (off the async
    /// workers) and kept if `p` is newer than the kept one. Concurrent requests for the same
    /// new `seq` wait for one writing.
    pub async fn body(&self, p: &Arc<PublishedList>) -> Result<axum::body::Bytes> {
        let mut newest = self.newest.lock().await;
        if let Some((seq, body)) = newest.as_ref() {
            if *seq == p.seq {
                return Ok(body.clone());
            }
        }
        let list = p.clone();
        let body = tokio::task::spawn_blocking(move || feed_body(&list))
            .await
            .map_err(|e| CaError::Store(format!("feed body task: {e}")))??;
        let body = axum::body::Bytes::from(body);
        if newest.as_ref().is_none_or(|(seq, _)| p.seq > *seq) {
            *newest = Some((p.seq, body.clone()));
        }
        Ok(body)
    }

    /// The `seq` whose body is kept, if any.
    pub async fn kept_seq(&self) -> Option<u64> {
        self.newest.lock().await.as_ref().map(|(seq, _)| *seq)
    }
}

/// `{"seq":..,"list":".."}` for `p`, as `serde_json` writes [`agentid_api::RevocationsResponse`].
/// A compact JWS holds only base64url characters and dots, which JSON strings carry unescaped:
/// such a list is copied in as it is (no escaping pass, no copy of the list first); anything
/// else goes through `serde_json`.
fn feed_body(p: &PublishedList) -> Result<Vec<u8>> {
    let plain = p
        .compact
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !plain {
        return serde_json::to_vec(&agentid_api::RevocationsResponse {
            seq: p.seq,
            list: p.compact.clone(),
        })
        .map_err(|e| CaError::Store(format!("feed body: {e}")));
    }
    let seq = p.seq.to_string();
    let mut body = Vec::with_capacity(p.compact.len() + seq.len() + 20);
    body.extend_from_slice(b"{\"seq\":");
    body.extend_from_slice(seq.as_bytes());
    body.extend_from_slice(b",\"list\":\"");
    body.extend_from_slice(p.compact.as_bytes());
    body.extend_from_slice(b"\"}");
    Ok(body)
}

/// Slots held per caller and per agent, for the service's shares: long-poll requests held
/// (`spec/CA-API.md` 3.4) and operations running (CA-API 5); each total is bounded apart. The
/// tasks of one agent are distinct callers: the per-agent bound keeps an agent with many tasks
/// from holding every slot of the total.
#[derive(Debug)]
pub struct CallerShares {
    max: usize,
    max_per_agent: usize,
    held: std::sync::Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    per_caller: std::collections::HashMap<String, usize>,
    per_agent: std::collections::HashMap<String, usize>,
}

/// One slot of a caller (a held long-poll request, a running operation); released on drop.
#[derive(Debug)]
pub struct CallerSlot {
    waiters: Arc<CallerShares>,
    caller: String,
    agent: String,
}

fn release(map: &mut std::collections::HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl CallerShares {
    /// At most `max` (at least 1) held requests per caller, and `max_per_agent` (at least
    /// `max`) for the callers of one agent together.
    pub fn new(max: usize, max_per_agent: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(CallerShares {
            max,
            max_per_agent: max_per_agent.max(max),
            held: std::sync::Mutex::new(Held::default()),
        })
    }

    /// A slot for `caller`, or `None` when it, or its agent, already holds the maximum.
    pub fn try_acquire(self: &Arc<Self>, caller: &agentid_protocol::PeerId) -> Option<CallerSlot> {
        let agent = caller.agent_or_service();
        let caller = caller.to_string();
        let mut held = self.held.lock().ok()?;
        if held.per_caller.get(&caller).copied().unwrap_or(0) >= self.max
            || held.per_agent.get(&agent).copied().unwrap_or(0) >= self.max_per_agent
        {
            return None;
        }
        *held.per_caller.entry(caller.clone()).or_insert(0) += 1;
        *held.per_agent.entry(agent.clone()).or_insert(0) += 1;
        Some(CallerSlot {
            waiters: self.clone(),
            caller,
            agent,
        })
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.waiters.held.lock() {
            release(&mut held.per_caller, &self.caller);
            release(&mut held.per_agent, &self.agent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(published_at: u64, next_update: u64, epoch: u64) -> PublishedList {
        PublishedList {
            seq: 1,
            compact: String::new(),
            published_at,
            next_update,
            revocation_epoch: epoch,
        }
    }

    fn served(seq: u64, compact: &str) -> Arc<PublishedList> {
        Arc::new(PublishedList {
            seq,
            compact: compact.to_owned(),
            published_at: 1000,
            next_update: 1600,
            revocation_epoch: seq,
        })
    }

    fn expected(p: &PublishedList) -> Vec<u8> {
        serde_json::to_vec(&agentid_api::RevocationsResponse {
            seq: p.seq,
            list: p.compact.clone(),
        })
        .unwrap()
    }

    #[test]
    fn the_feed_body_is_what_serde_json_writes() {
        for (seq, compact) in [
            (0, ""),
            (1, "eyJhbGciOiJFUzI1NiJ9.eyJzZXEiOjF9.c2ln-_AZaz09"),
            (u64::MAX, "a.b.c"),
            // Not a compact JWS: written by serde_json (escapes).
            (7, "a\"b\\c\u{1}d\u{e9}"),
        ] {
            let p = served(seq, compact);
            assert_eq!(feed_body(&p).unwrap(), expected(&p), "{compact:?}");
        }
    }

    #[tokio::test]
    async fn the_feed_body_is_written_once_per_seq_and_never_stale() {
        let cache = FeedBody::new();
        assert_eq!(cache.kept_seq().await, None);
        let one = served(1, "aa.bb.cc");
        let a = cache.body(&one).await.unwrap();
        assert_eq!(&a[..], &expected(&one)[..]);
        // The same seq: the same bytes, shared (not written again).
        let again = cache.body(&one).await.unwrap();
        assert_eq!(again.as_ptr(), a.as_ptr());
        assert_eq!(cache.kept_seq().await, Some(1));
        // A newer publication: its own body, never the kept one.
        let two = served(2, "dd.ee.ff");
        let b = cache.body(&two).await.unwrap();
        assert_eq!(&b[..], &expected(&two)[..]);
        assert_ne!(b.as_ptr(), a.as_ptr());
        assert_eq!(cache.kept_seq().await, Some(2));
        // An older list still held by a slow request gets its own body and does not replace
        // the newest one: one body kept, whatever the order of requests.
        let old = cache.body(&one).await.unwrap();
        assert_eq!(&old[..], &expected(&one)[..]);
        assert_eq!(cache.kept_seq().await, Some(2));
        let newest = cache.body(&two).await.unwrap();
        assert_eq!(newest.as_ptr(), b.as_ptr());
        for seq in 3..20 {
            let p = served(seq, &format!("h.p{seq}.s"));
            assert_eq!(&cache.body(&p).await.unwrap()[..], &expected(&p)[..]);
            assert_eq!(cache.kept_seq().await, Some(seq));
        }
    }

    #[test]
    fn a_list_is_due_when_missing_changed_or_half_way_to_next_update() {
        assert!(due(None, 0, 0));
        let l = list(1000, 1600, 3);
        assert!(!due(Some(&l), 3, 1299));
        assert!(due(Some(&l), 3, 1300));
        assert!(due(Some(&l), 4, 1001));
    }

    #[test]
    fn caller_slots_are_bounded_per_caller_and_agent_and_released_on_drop() {
        let task = |s: &str| {
            agentid_protocol::PeerId::parse(&format!("spiffe://example.org/agent/{s}")).unwrap()
        };
        let (a, b, c) = (task("a/task/1"), task("b/task/1"), task("a/task/2"));
        let w = CallerShares::new(2, 3);
        let a1 = w.try_acquire(&a).unwrap();
        let _a2 = w.try_acquire(&a).unwrap();
        assert!(w.try_acquire(&a).is_none());
        let _b = w.try_acquire(&b).unwrap();
        // Agent a's other task: one more, then the agent's share is held.
        let c1 = w.try_acquire(&c).unwrap();
        assert!(w.try_acquire(&c).is_none());
        drop(a1);
        let _a3 = w.try_acquire(&a).unwrap();
        drop(c1);
        let held = w.held.lock().unwrap();
        assert_eq!(held.per_agent.get("spiffe://example.org/agent/a"), Some(&2));
    }
}
