//! The per-connection presentation state of spec/PROTOCOL.md section 22.3, sans-IO: header
//! syntax ([`parse_presentation`]) and the state machine ([`PresentationMachine`]). The server
//! drives it from its outermost per-connection service; the vectors in spec/vectors/http.json
//! drive it directly.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};

use super::refusal::{Refusal, PRESENTATION_CHANGED, PROOF_MISSING};

/// The header carrying the presenter's delegation chain.
pub const CHAIN_HEADER: HeaderName = HeaderName::from_static("agentid-chain");
/// The header carrying the presenter's hop proof.
pub const PROOF_HEADER: HeaderName = HeaderName::from_static("agentid-proof");
/// The largest `agentid-chain` value accepted over HTTP (larger chains need the framed
/// transport).
pub const MAX_HTTP_CHAIN_BYTES: usize = 16384;
/// The largest `agentid-proof` value (the token cap).
pub const MAX_HTTP_PROOF_BYTES: usize = 8192;
/// The header-list limit an agentid HTTP server sets in hyper, above our own caps so that
/// oversized chains get our `chain_too_large` rather than hyper's bare refusal. The agentid
/// client announces the same on HTTP/2, so that a server's chain and proof up to the caps reach it.
pub const SERVER_HEADER_LIST_LIMIT: usize = 32 * 1024;

/// One presentation: the raw header values, compared byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presentation {
    /// `agentid-chain`, when sent.
    pub chain: Option<String>,
    /// `agentid-proof`.
    pub proof: String,
}

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a [u8]>, Refusal> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Refusal::bad_header(format!("{name} sent more than once")));
    }
    Ok(first.map(|v| v.as_bytes()))
}

/// The alphabets of a header value byte: bit 0 for `agentid-proof` (base64url and `.`), bit 1
/// for `agentid-chain` (the same and `~`).
const fn alphabets(c: u8) -> u8 {
    match c {
        b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'-' | b'_' | b'.' => 0b11,
        b'~' => 0b10,
        _ => 0,
    }
}

fn token_chars(value: &[u8], name: &HeaderName, tilde: bool) -> Result<String, Refusal> {
    if value.is_empty() {
        return Err(Refusal::bad_header(format!("{name} is empty")));
    }
    let bit = if tilde { 0b10 } else { 0b01 };
    // One class lookup per byte, no early exit on the valid path.
    let all = value.iter().fold(bit, |acc, &b| acc & alphabets(b));
    if all == 0 {
        return Err(Refusal::bad_header(format!(
            "{name} holds a byte outside its alphabet"
        )));
    }
    // All ASCII by the check above.
    std::str::from_utf8(value)
        .map(str::to_owned)
        .map_err(|_| Refusal::bad_header("not ASCII"))
}

/// Reads the presentation headers of one request, in the order of spec/PROTOCOL.md 22.2:
/// one instance of each (`bad_header`), the chain's size (`chain_too_large`), the alphabet
/// (`bad_header`), then a chain without a proof (`proof_missing`). `Ok(None)`: no presentation.
pub fn parse_presentation(headers: &HeaderMap) -> Result<Option<Presentation>, Refusal> {
    // Most requests carry neither header: one pass over the names instead of two lookups.
    if !headers
        .keys()
        .any(|name| *name == CHAIN_HEADER || *name == PROOF_HEADER)
    {
        return Ok(None);
    }
    let chain = single(headers, &CHAIN_HEADER)?;
    let proof = single(headers, &PROOF_HEADER)?;
    if let Some(c) = chain {
        if c.len() > MAX_HTTP_CHAIN_BYTES {
            return Err(Refusal::chain_too_large(c.len()));
        }
    }
    if let Some(p) = proof {
        if p.len() > MAX_HTTP_PROOF_BYTES {
            return Err(Refusal::bad_header(format!(
                "agentid-proof of {} bytes",
                p.len()
            )));
        }
    }
    let chain = chain
        .map(|c| token_chars(c, &CHAIN_HEADER, true))
        .transpose()?;
    let proof = proof
        .map(|p| token_chars(p, &PROOF_HEADER, false))
        .transpose()?;
    match (chain, proof) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(Refusal::unauthenticated(
            PROOF_MISSING,
            "agentid-chain without agentid-proof",
        )),
        (chain, Some(proof)) => Ok(Some(Presentation { chain, proof })),
    }
}

/// The observable state of a connection's presentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresentationState {
    /// Nothing presented yet: requests without headers are identity-only.
    None,
    /// A presentation is being verified: requests without headers (or with the same one) wait.
    Pending,
    /// Verified: identical presentations and requests without headers use it.
    Verified,
    /// Failed: every later request gets the stored refusal, then the connection closes.
    Failed,
}

/// What to do with one request.
#[derive(Debug)]
pub enum Dispatch<V> {
    /// Serve it as identity-only (no chain, no authority).
    IdentityOnly,
    /// This request moved the connection to `Pending`: verify its presentation, then call
    /// [`PresentationMachine::complete`].
    Verify,
    /// Serve it under the verified presentation (no re-verification).
    Hit(Arc<V>),
    /// Wait for the pending verification, then dispatch again.
    Wait,
    /// Refuse it; the connection is (now) `Failed` when the machine says so.
    Refuse(Refusal),
}

#[derive(Debug)]
enum State<V> {
    None,
    Pending(Presentation),
    Verified(Presentation, Arc<V>),
    Failed(Refusal),
}

/// The state machine `None -> Pending -> Verified | Failed(code)` of one connection; `V` is what a
/// successful verification yields.
#[derive(Debug)]
pub struct PresentationMachine<V> {
    state: State<V>,
}

impl<V> Default for PresentationMachine<V> {
    fn default() -> Self {
        Self { state: State::None }
    }
}

impl<V> PresentationMachine<V> {
    /// A connection on which nothing was presented yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> PresentationState {
        match self.state {
            State::None => PresentationState::None,
            State::Pending(_) => PresentationState::Pending,
            State::Verified(..) => PresentationState::Verified,
            State::Failed(_) => PresentationState::Failed,
        }
    }

    /// The verified presentation's value, once `Verified`.
    pub fn verified(&self) -> Option<&Arc<V>> {
        match &self.state {
            State::Verified(_, v) => Some(v),
            _ => None,
        }
    }

    /// The stored refusal, once `Failed`.
    pub fn failure(&self) -> Option<&Refusal> {
        match &self.state {
            State::Failed(r) => Some(r),
            _ => None,
        }
    }

    /// Dispatches one request carrying `presentation` (`None`: no agentid headers). Must be
    /// called in the order requests are dispatched on the connection.
    pub fn dispatch(&mut self, presentation: Option<&Presentation>) -> Dispatch<V> {
        match (&self.state, presentation) {
            (State::Failed(r), _) => Dispatch::Refuse(r.clone()),
            (State::None, None) => Dispatch::IdentityOnly,
            (State::None, Some(p)) => {
                self.state = State::Pending(p.clone());
                Dispatch::Verify
            }
            (State::Pending(_), None) => Dispatch::Wait,
            (State::Pending(q), Some(p)) if q == p => Dispatch::Wait,
            (State::Verified(_, v), None) => Dispatch::Hit(v.clone()),
            (State::Verified(q, v), Some(p)) if q == p => Dispatch::Hit(v.clone()),
            (State::Pending(_) | State::Verified(..), Some(_)) => {
                Dispatch::Refuse(self.fail(Refusal::unauthenticated(
                    PRESENTATION_CHANGED,
                    "a different presentation on this connection",
                )))
            }
        }
    }

    /// Settles the pending verification. Returns what the request that started it gets: the
    /// verified value, or the refusal (also when the connection failed meanwhile).
    pub fn complete(&mut self, result: Result<V, Refusal>) -> Result<Arc<V>, Refusal> {
        let pending = match std::mem::replace(&mut self.state, State::None) {
            State::Pending(p) => p,
            other => {
                // Not pending any more (a changed presentation failed the connection): keep it.
                let refusal = match &other {
                    State::Failed(r) => r.clone(),
                    _ => Refusal::internal("no presentation pending"),
                };
                self.state = other;
                return Err(refusal);
            }
        };
        match result {
            Ok(v) => {
                let v = Arc::new(v);
                self.state = State::Verified(pending, v.clone());
                Ok(v)
            }
            Err(r) => Err(self.fail(r)),
        }
    }

    /// Moves the connection to `Failed` (a revocation or the deadline); later requests get `r`.
    pub fn fail(&mut self, r: Refusal) -> Refusal {
        if let State::Failed(existing) = &self.state {
            return existing.clone();
        }
        self.state = State::Failed(r.clone());
        r
    }
}
