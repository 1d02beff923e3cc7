//! The agentid HTTP client: one hyper connection (h1 or h2 by ALPN) per TLS connection. It
//! sends `agentid-chain` and `agentid-proof` on every request until it has verified the server's
//! proof from a response, then omits them; it refuses a server its chain's audience does not
//! cover before sending the chain; it never follows redirects (a chain is bound to one
//! connection and never leaves it); and it keeps no connection past its own or the server's
//! certificate `notAfter`, or either side's chain `exp`, minus a margin.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentid_protocol::{
    token_hash, Chain, ErrorCode, IdSet, Presentation, PresentationContext, ProofBuilder, Role,
    VerifiedChain,
};
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::TlsConnector;

/// How long before its own certificate's `notAfter` the client stops sending on a connection
/// (the default of [`HttpClientBuilder::close_margin`]).
pub(crate) const DEFAULT_CLOSE_MARGIN: Duration = Duration::from_secs(5);

use super::presentation::{CHAIN_HEADER, PROOF_HEADER, SERVER_HEADER_LIST_LIMIT};
use super::tls::{client_config, client_peer, pinned_client_config, HttpVersion, TlsPeer};
use crate::credentials::{Credential, CredentialSource};
use crate::error::{CertError, Error, Result, TimeoutKind};
use crate::session::{now_unix, stale_instant, PROOF_LIFETIME};
use crate::session_index::Registration;
use crate::svid::SvidInfo;
use crate::PeerPolicy;
use crate::PeerVerification;
use crate::{CertUsage, TrustStore};
use rustls::pki_types::CertificateDer;

/// The response type of [`HttpClientConnection::send`].
pub type HttpResponse = Response<Incoming>;

/// An agentid HTTP client. Build it with [`HttpClient::builder`]; a peer policy is required.
#[derive(Clone)]
pub struct HttpClient {
    config: Arc<rustls::ClientConfig>,
    credentials: Arc<dyn CredentialSource>,
    verification: Arc<PeerVerification>,
    connect_timeout: Duration,
    close_margin: Duration,
    check_audience: bool,
    proof_lifetime: Duration,
    chain_info: Arc<Mutex<Option<Arc<ChainInfo>>>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("close_margin", &self.close_margin)
            .finish_non_exhaustive()
    }
}

/// Builds an [`HttpClient`].
#[must_use]
pub struct HttpClientBuilder {
    credentials: Arc<dyn CredentialSource>,
    verification: Arc<PeerVerification>,
    policy: PeerPolicy,
    connect_timeout: Duration,
    close_margin: Duration,
    check_audience: bool,
    http1_only: bool,
    proof_lifetime: Duration,
}

impl std::fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClientBuilder")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl HttpClientBuilder {
    /// TCP connect plus TLS handshake must finish within this time (default 10 s). Once an
    /// [`HttpClientConnection`] is dropped, its connection (still closing, or carrying response
    /// bodies read on) also ends when a write waits this long for a server that takes no more
    /// bytes: its close (HTTP/1.1 TLS `close_notify`, HTTP/2 GOAWAY) never holds the socket
    /// until the close point.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// A connection is dropped this long before the earlier of both certificates' `notAfter`
    /// and the own chain's `exp` (default 5 s).
    pub fn close_margin(mut self, t: Duration) -> Self {
        self.close_margin = t;
        self
    }

    /// Sends the chain even to a server its effective audience does not cover (the server
    /// will refuse it with `audience_mismatch`). Dangerous: the chain leaves for a server it was
    /// not meant for.
    pub fn danger_skip_audience_check(mut self) -> Self {
        self.check_audience = false;
        self
    }

    /// The lifetime of the client's hop proofs (default 60 s; from 1 to 60 s, the protocol's
    /// cap, else [`HttpClientBuilder::build`] fails with [`crate::Error::Config`]). A connection whose
    /// first request comes when its proof has less than half of this left signs a fresh one.
    pub fn proof_lifetime(mut self, t: Duration) -> Self {
        self.proof_lifetime = t;
        self
    }

    /// Offers only ALPN `http/1.1` (default: `h2`, then `http/1.1`).
    pub fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }

    /// Builds the client (see [`client_config`] for the TLS settings).
    pub fn build(self) -> Result<HttpClient> {
        crate::session::check_proof_lifetime(
            self.proof_lifetime,
            "HttpClientBuilder::proof_lifetime",
        )?;
        let mut config = client_config(self.credentials.clone(), &self.verification, self.policy)?;
        if self.http1_only {
            config.alpn_protocols = vec![super::tls::ALPN_HTTP11.to_vec()];
        }
        Ok(HttpClient {
            config: Arc::new(config),
            credentials: self.credentials,
            verification: self.verification,
            connect_timeout: self.connect_timeout,
            close_margin: self.close_margin,
            check_audience: self.check_audience,
            proof_lifetime: self.proof_lifetime,
            chain_info: Arc::new(Mutex::new(None)),
        })
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One connection to an agentid HTTP server.
pub struct HttpClientConnection {
    sender: Sender,
    peer: TlsPeer,
    authority: Authority,
    /// `authority` as the HTTP/1.1 `Host` value.
    host: HeaderValue,
    local: Arc<Credential>,
    verification: Arc<PeerVerification>,
    client_proof: String,
    chain_header: Option<HeaderValue>,
    proof_header: HeaderValue,
    /// The `exp` of `client_proof`.
    proof_exp: u64,
    proof_lifetime: u64,
    /// Whether a request carrying the presentation was sent (from then on its bytes are
    /// fixed: a different one would fail the connection).
    presented: bool,
    server: Option<ServerPresentation>,
    close_at: Instant,
    /// Moves the connection task's close point (to `close_at`).
    closer: watch::Sender<Instant>,
    /// The close margin, in seconds.
    close_margin: u64,
    /// The server's verified chain for the connection's watcher (`Some(None)`: verified
    /// without a chain).
    server_chain: watch::Sender<Option<Option<String>>>,
    /// Set when a re-check of the verified server failed: the connection carries no more
    /// requests, each of which gets this error.
    ended: Option<ServerEnded>,
    /// The server's certificate chain (leaf first), validated again after a bundle change.
    server_certs: Vec<CertificateDer<'static>>,
    /// The trust store the server's certificate was last validated against.
    trust_seen: Arc<TrustStore>,
    /// [`PeerVerification::epoch`] as read before the server was last checked: before the
    /// handshake at first, so that a change landing during it is a change since.
    checked_epoch: u64,
    /// When a revocation list the server's verification depends on goes stale, on the clock
    /// `send` already reads for the close margin (a year away: never).
    stale_at: Instant,
}

/// Why a connection's verified server no longer is.
#[derive(Clone, Debug)]
enum ServerEnded {
    /// Its chain or revocation status no longer verifies.
    Protocol(agentid_protocol::Error),
    /// Its certificate no longer chains to its domain's anchors.
    Certificate(CertError),
    /// It served an answer to the presentation without a proof, or with one that is not
    /// ASCII (spec/PROTOCOL.md 22.4: a failure of the connection).
    Refused(&'static str),
}

impl ServerEnded {
    fn error(&self) -> Error {
        match self {
            ServerEnded::Protocol(e) => Error::Protocol(e.clone()),
            ServerEnded::Certificate(e) => Error::Certificate(e.clone()),
            ServerEnded::Refused(why) => Error::HandshakeRefused(why),
        }
    }
}

/// The server's verified presentation.
#[derive(Clone, Debug)]
struct ServerPresentation {
    proof: String,
    chain: Option<VerifiedChain>,
    /// The server's chain as sent (what a re-check verifies again).
    chain_compact: Option<String>,
}

impl std::fmt::Debug for HttpClientConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClientConnection")
            .field("peer", &self.peer)
            .field("server_verified", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client presenting `credentials` (and their chain), verifying servers with
    /// `verification`, admitting those `policy` allows.
    pub fn builder(
        credentials: Arc<dyn CredentialSource>,
        verification: Arc<PeerVerification>,
        policy: PeerPolicy,
    ) -> HttpClientBuilder {
        HttpClientBuilder {
            credentials,
            verification,
            policy,
            connect_timeout: Duration::from_secs(10),
            close_margin: DEFAULT_CLOSE_MARGIN,
            check_audience: true,
            http1_only: false,
            proof_lifetime: Duration::from_secs(PROOF_LIFETIME),
        }
    }

    /// Connects to `addr`; `authority` is the `Host` (h1) or `:authority` (h2) of requests.
    pub async fn connect(&self, addr: SocketAddr, authority: &str) -> Result<HttpClientConnection> {
        timeout(self.connect_timeout, self.connect_inner(addr, authority))
            .await
            .map_err(|_| Error::Timeout(TimeoutKind::Handshake))?
    }

    async fn connect_inner(
        &self,
        addr: SocketAddr,
        authority: &str,
    ) -> Result<HttpClientConnection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        self.handshake(tcp, authority).await
    }

    /// As [`HttpClient::connect`], over an established byte stream (a TCP stream set up by the
    /// caller, a Unix socket, an in-memory pipe): the TLS handshake, the peer and audience
    /// checks, then HTTP, all within the connect timeout.
    pub async fn connect_with<IO>(&self, io: IO, authority: &str) -> Result<HttpClientConnection>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        timeout(self.connect_timeout, self.handshake(io, authority))
            .await
            .map_err(|_| Error::Timeout(TimeoutKind::Handshake))?
    }

    async fn handshake<IO>(&self, io: IO, authority: &str) -> Result<HttpClientConnection>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tcp = io;
        let host = HeaderValue::from_str(authority).map_err(|e| Error::Config(e.to_string()))?;
        let authority = Authority::try_from(authority).map_err(|e| Error::Config(e.to_string()))?;
        let local = self.credentials.current().ok_or(Error::NoCredential)?;
        let name = rustls::pki_types::ServerName::try_from("agentid.invalid")
            .map_err(|e| Error::Config(e.to_string()))?;
        // The handshake presents exactly the credential the proof is signed with.
        let connector = TlsConnector::from(pinned_client_config(&self.config, &local));
        // The anchors the handshake validates against (read before it: a change during it is a
        // change since, and the first re-check validates the certificate again), and the count
        // of lists applied (a list applied during it signals the connection at once).
        let checked_epoch = self.verification.epoch();
        let lists_seen = self.verification.lists_applied();
        let trust_seen = self.verification.trust_store();
        let tls = connector.connect(name, tcp).await?;
        let peer = client_peer(tls.get_ref().1, &self.verification)?;
        let server_certs: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();

        // The own chain's audience and `exp`, read once per chain (not per connection).
        let chain_info = local.chain().map(|c| self.chain_info(c)).transpose()?;
        if let (true, Some(info)) = (self.check_audience, chain_info.as_deref()) {
            if !info.audience.covers_id(peer.info.id.as_spiffe_id()) {
                return Err(Error::Protocol(agentid_protocol::Error::new(
                    ErrorCode::AudienceMismatch,
                    format!("server {} is not in the chain's audience", peer.info.id),
                )));
            }
        }
        let now = now_unix();
        // The server's own revocation status (its key, agent and task) before anything is
        // sent to it (spec/PROTOCOL.md 22.4): a revoked server, or one whose domain's list is
        // missing or stale, gets neither the presentation nor the first request's body.
        self.verification.verifier().check_peer_revocation(
            peer.info.id.as_spiffe_id(),
            &peer.info.public_key,
            now,
        )?;
        let stale_at = stale_instant(
            self.verification
                .stale_at(peer.info.id.as_spiffe_id(), None),
        );
        let proof_lifetime = self.proof_lifetime.as_secs().max(1);
        let (client_proof, proof_header, proof_exp) =
            sign_client_proof(&local, chain_info.as_deref(), &peer, now, proof_lifetime)?;
        let chain_header = local
            .chain()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| Error::Config("chain is not a header value".into()))?;

        // Nothing past the earlier certificate `notAfter` (or own chain `exp`) minus the margin.
        let mut until = peer.info.not_after.min(local.info().not_after);
        if let Some(info) = chain_info.as_deref() {
            until = until.min(info.exp);
        }
        let left = until
            .saturating_sub(now)
            .saturating_sub(self.close_margin.as_secs());
        let close_at = Instant::now() + Duration::from_secs(left.min(365 * 24 * 3600));
        // A verified server chain that ends sooner moves the close point earlier (`check_server`).
        let (closer, close_rx) = watch::channel(close_at);
        // The watcher re-checks the server when the verification state changes or a list it
        // depends on goes stale, and drops the connection at once on a failure (spec 14.3), so
        // that a response still streaming from a revoked server is cut, not read on.
        let (server_chain, chain_rx) = watch::channel(None);
        // Indexed under the server's key, agent and task (and, once verified, its chain's
        // targets): a list that newly revokes one of them signals the watcher (spec 14.3).
        let index = self.verification.register(
            Some(agentid_protocol::verified_peer_revocation_targets(
                None,
                peer.info.id.as_spiffe_id(),
                &peer.info.public_key,
            )),
            lists_seen,
        );
        let server = ServerWatch {
            verification: self.verification.clone(),
            peer: peer.info.clone(),
            certs: server_certs.clone(),
            trust_seen: trust_seen.clone(),
            chain: chain_rx,
            index,
            indexed_chain: None,
        };

        // Dropping a connection cuts its socket: on HTTP/2 hyper drives the streams on a task
        // of its own, which aborting the connection's task leaves running.
        let cut = Arc::new(CutSwitch::default());
        let io = TokioIo::new(Cuttable {
            io: tls,
            cut: cut.clone(),
            stall: super::stall::WriteStall::new(self.connect_timeout),
        });
        // The connection runs on its own task; another one drops it at `close_at` (so that
        // serving a request does not poll the timer).
        let sender = match peer.version {
            HttpVersion::H2 => {
                // The server's chain and proof (up to 16384 and 8192 bytes, spec 22.2) fit in
                // the header list announced, as on HTTP/1.1 (hyper's default is 16 KiB).
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .max_header_list_size(SERVER_HEADER_LIST_LIMIT as u32)
                    .handshake(io)
                    .await
                    .map_err(hyper_err)?;
                close_at_margin(tokio::spawn(conn), close_rx, server, cut.clone());
                Sender::H2(sender)
            }
            HttpVersion::Http11 => {
                let (sender, conn) = http1::handshake(io).await.map_err(hyper_err)?;
                close_at_margin(tokio::spawn(conn), close_rx, server, cut.clone());
                Sender::H1(sender)
            }
        };
        Ok(HttpClientConnection {
            sender,
            peer,
            authority,
            host,
            local,
            verification: self.verification.clone(),
            client_proof,
            chain_header,
            proof_header,
            proof_exp,
            proof_lifetime,
            presented: false,
            server: None,
            close_at,
            closer,
            close_margin: self.close_margin.as_secs(),
            server_chain,
            ended: None,
            server_certs,
            trust_seen,
            checked_epoch,
            stale_at,
        })
    }
}

/// Drops the connection (its task `conn` and, through `cut`, its socket) at the instant
/// `close_at` holds (it may move earlier), or as soon as a re-check of `server` fails (the
/// verification state changed, or a list the server depends on went stale), unless the task
/// ended before.
fn close_at_margin<T: Send + 'static>(
    mut conn: tokio::task::JoinHandle<T>,
    mut close_at: watch::Receiver<Instant>,
    mut server: ServerWatch,
    cut: Arc<CutSwitch>,
) {
    // Subscribed here, not on the task's first poll: a change that lands before the task first
    // runs is then still seen.
    let mut changes = server.verification.subscribe();
    let mut listed = server.index.subscribe();
    let mut stale = stale_instant(
        server
            .verification
            .stale_at(server.peer.id.as_spiffe_id(), None),
    );
    tokio::spawn(async move {
        // Once the connection object is gone its close point no longer moves, and the server's
        // chain no longer changes.
        let mut moves = true;
        let mut chain_moves = true;
        let mut watching = true;
        let mut listing = true;
        loop {
            let at = *close_at.borrow_and_update();
            let recheck = tokio::select! {
                biased;
                _ = &mut conn => return,
                () = sleep_until(at) => return drop_connection(&conn, &cut),
                changed = close_at.changed(), if moves => {
                    moves = changed.is_ok();
                    if !moves {
                        // The connection object is gone: its close must not wait for ever.
                        cut.release();
                    }
                    false
                }
                changed = server.chain.changed(), if chain_moves => {
                    chain_moves = changed.is_ok();
                    chain_moves
                }
                changed = changes.changed(), if watching => {
                    watching = changed.is_ok();
                    watching
                }
                changed = listed.changed(), if listing => {
                    listing = changed.is_ok();
                    listing
                }
                () = sleep_until(stale) => true,
            };
            if recheck {
                match server.check() {
                    // Never in the past: a list found stale ended the connection.
                    Ok(next) => stale = next.max(Instant::now() + Duration::from_secs(1)),
                    Err(reason) => {
                        tracing::info!(peer.id = %server.peer.id, reason, "agentid http client: server no longer verifies, connection dropped");
                        return drop_connection(&conn, &cut);
                    }
                }
            }
        }
    });
}

/// Drops a client connection: its task, and its socket (HTTP/2 streams, driven elsewhere, end
/// with an error).
fn drop_connection<T>(conn: &tokio::task::JoinHandle<T>, cut: &CutSwitch) {
    cut.cut();
    conn.abort();
}

/// Cuts a [`Cuttable`] socket: every later read or write fails.
#[derive(Default)]
struct CutSwitch {
    cut: std::sync::atomic::AtomicBool,
    // The waker of the last pending read (the connection always has one pending): registered
    // on every read without a lock, and without a clone when the reading task is the same.
    reader: atomic_waker::AtomicWaker,
    // Set when the connection object is dropped: from then on a write the server does not take
    // within the stall limit ends the connection.
    released: std::sync::atomic::AtomicBool,
    // The waker of the last write that had to wait (registered only then).
    writer: atomic_waker::AtomicWaker,
}

impl CutSwitch {
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        self.reader.wake();
    }

    /// The connection object was dropped: a waiting write starts its stall limit now.
    fn release(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::Release);
        self.writer.wake();
    }

    fn check(&self) -> std::io::Result<()> {
        if self.cut.load(std::sync::atomic::Ordering::Acquire) {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "agentid http client: connection dropped",
            ))
        } else {
            Ok(())
        }
    }
}

/// A client socket that a [`CutSwitch`] can cut.
struct Cuttable<IO> {
    io: IO,
    cut: Arc<CutSwitch>,
    /// Once released, bounds how long a write may wait for the server to take bytes.
    stall: super::stall::WriteStall,
}

impl<IO> Cuttable<IO> {
    /// A write's (or flush's, or shutdown's) outcome `r`: once the connection object was
    /// dropped, a write that has waited the stall limit for the server fails instead.
    fn bound_write<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stall.progressed();
            return r;
        }
        // Registered before the flag is read: a release in between wakes this write.
        self.cut.writer.register(cx.waker());
        if self.cut.released.load(std::sync::atomic::Ordering::Acquire) {
            return self.stall.waiting(
                cx,
                "agentid http client: the server takes no more bytes of a dropped connection",
            );
        }
        std::task::Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Cuttable<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.cut.check()?;
        self.cut.reader.register(cx.waker());
        // Again after registering: a cut in between found no waker.
        self.cut.check()?;
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Cuttable<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.cut.check()?;
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.bound_write(cx, r)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.cut.check()?;
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.bound_write(cx, r)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.io).poll_shutdown(cx);
        self.bound_write(cx, r)
    }
}

/// What a connection's watcher re-checks the server with (as [`HttpClientConnection`] does
/// before each request): its certificate path after a bundle change, then its verified chain,
/// or without one its revocation status.
struct ServerWatch {
    verification: Arc<PeerVerification>,
    peer: SvidInfo,
    certs: Vec<CertificateDer<'static>>,
    trust_seen: Arc<TrustStore>,
    chain: watch::Receiver<Option<Option<String>>>,
    /// The connection's place in the verification's revocation index.
    index: Registration,
    /// The chain whose targets the index holds (`None`: the server's own only).
    indexed_chain: Option<String>,
}

impl ServerWatch {
    /// Whether the server still verifies (a failure other than expiry, which the close point
    /// handles, is its reason code); when it does, when a list it depends on goes stale.
    fn check(&mut self) -> std::result::Result<Instant, &'static str> {
        self.index.count_recheck();
        // Read before the verifier: a list applied after it signals the connection again.
        let lists_seen = self.verification.lists_applied();
        let now = now_unix();
        let trust = self.verification.trust_store();
        if !Arc::ptr_eq(&trust, &self.trust_seen) {
            trust
                .revalidate(&self.certs, now, CertUsage::ServerAuth, self.peer.not_after)
                .map_err(|_| "bad_certificate")?;
            self.trust_seen = trust;
        }
        let chain = self.chain.borrow().clone().flatten();
        let result = self.verification.verifier().verify_peer(
            chain.as_deref(),
            self.peer.id.as_spiffe_id(),
            &self.peer.public_key,
            now,
        );
        match result {
            Err(e) if e.code() != ErrorCode::Expired => Err(e.code().as_str()),
            result => {
                let verified = result.ok().flatten();
                // A newly verified server chain: its holders and grant join the index.
                if chain != self.indexed_chain {
                    self.index.update(
                        Some(agentid_protocol::verified_peer_revocation_targets(
                            verified.as_ref(),
                            self.peer.id.as_spiffe_id(),
                            &self.peer.public_key,
                        )),
                        lists_seen,
                    );
                    self.indexed_chain = chain;
                }
                Ok(stale_instant(
                    self.verification
                        .stale_at(self.peer.id.as_spiffe_id(), verified.as_ref()),
                ))
            }
        }
    }
}

/// Signs this side's hop proof for the connection to `peer` (spec/PROTOCOL.md 22.4 step 1).
/// `chain` is the cached reading of `local`'s chain (its `cth` is hashed once per chain).
fn sign_client_proof(
    local: &Credential,
    chain: Option<&ChainInfo>,
    peer: &TlsPeer,
    now: u64,
    lifetime: u64,
) -> Result<(String, HeaderValue, u64)> {
    let exp = now + lifetime;
    let mut builder = ProofBuilder::new(
        local.identity().as_spiffe_id(),
        peer.info.id.as_spiffe_id(),
        Role::Client,
        peer.exporter_client,
        now,
        exp,
    );
    match (local.chain(), chain) {
        // The cached hash is of this very chain (`chain_info` keys its cache by the chain).
        (Some(c), Some(info)) if info.chain == c => builder = builder.chain_hash(&info.hash),
        (Some(c), _) => builder = builder.chain(c),
        (None, _) => {}
    }
    let proof = builder.sign(local.task_key())?;
    let header = HeaderValue::from_str(&proof)
        .map_err(|_| Error::Config("proof is not a header value".into()))?;
    Ok((proof, header, exp))
}

/// The own chain, its effective audience, its `exp` and its hash as a proof's `cth`, read once
/// per chain (not per connection).
struct ChainInfo {
    chain: String,
    audience: IdSet,
    exp: u64,
    hash: String,
}

impl HttpClient {
    /// The audience and `exp` of `chain`, from the cache when it is the chain read last time.
    fn chain_info(&self, chain: &str) -> Result<Arc<ChainInfo>> {
        let mut cached = self.chain_info.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = cached.as_ref().filter(|i| i.chain == chain) {
            return Ok(info.clone());
        }
        let read = Chain::parse_unverified(chain)?.read_unverified()?;
        let info = Arc::new(ChainInfo {
            chain: chain.to_owned(),
            audience: read.audience()?,
            exp: read.expires(),
            hash: token_hash(chain),
        });
        *cached = Some(info.clone());
        Ok(info)
    }
}

fn hyper_err(e: hyper::Error) -> Error {
    Error::Io(std::io::Error::other(e))
}

impl HttpClientConnection {
    /// The verified server.
    pub fn peer(&self) -> &TlsPeer {
        &self.peer
    }

    /// The server's verified hop proof (the receipt), once a response carried it.
    pub fn server_proof(&self) -> Option<&str> {
        self.server.as_ref().map(|s| s.proof.as_str())
    }

    /// The server's verified chain, if it presented one.
    pub fn server_chain(&self) -> Option<&VerifiedChain> {
        self.server.as_ref().and_then(|s| s.chain.as_ref())
    }

    /// The hop proof this connection presents (the client's receipt).
    pub fn client_proof(&self) -> &str {
        &self.client_proof
    }

    /// The credential this connection presents (the one current when it was made): a caller
    /// that keeps connections compares it with its source's current one, so that a rotated
    /// credential is never followed by requests under the old certificate.
    pub fn credential(&self) -> &Arc<Credential> {
        &self.local
    }

    /// How long the connection can still carry requests: until the earliest of both
    /// certificates' `notAfter`, the own chain's `exp` and the verified server chain's `exp`,
    /// minus the close margin, when it is dropped (zero after).
    pub fn time_left(&self) -> Duration {
        self.close_at.saturating_duration_since(Instant::now())
    }

    /// Whether the connection can still carry a request (not past its margin, not closed).
    pub fn is_usable(&self) -> bool {
        Instant::now() < self.close_at
            && self.ended.is_none()
            && match &self.sender {
                Sender::H1(s) => !s.is_closed(),
                Sender::H2(s) => !s.is_closed(),
            }
    }

    /// Sends one request. `req`'s URI gives the path and query (its scheme and authority are
    /// replaced by this connection's). Until the server's proof is verified the request carries
    /// the presentation; a success response to it without a valid server proof is an error.
    /// Redirects are returned, never followed.
    ///
    /// There is no per-request timeout (as in hyper): a server that takes the request and never
    /// answers holds it until the connection is dropped at its close point
    /// ([`time_left`](Self::time_left): at the latest the end of the shorter-lived credential,
    /// minus the margin). For a shorter bound, wrap the call in `tokio::time::timeout` and drop
    /// the connection when it fires. The MCP, A2A and gRPC clients have such a bound built in.
    pub async fn send(&mut self, req: Request<Bytes>) -> Result<HttpResponse> {
        let now = Instant::now();
        if now >= self.close_at {
            return Err(Error::CredentialExpired);
        }
        self.recheck_server(now)?;
        let (mut parts, body) = req.into_parts();
        let path = |uri: &Uri| {
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        };
        let presenting = self.server.is_none();
        if presenting && !self.presented {
            // Not sent yet: a proof signed at connect time may have grown stale while the
            // connection waited for its first request. Sign a fresh one when less than half
            // its lifetime is left.
            let now = now_unix();
            if now.saturating_add(self.proof_lifetime.div_ceil(2)) >= self.proof_exp {
                let (proof, header, exp) =
                    sign_client_proof(&self.local, None, &self.peer, now, self.proof_lifetime)?;
                self.client_proof = proof;
                self.proof_header = header;
                self.proof_exp = exp;
            }
            self.presented = true;
        }
        // A presentation is this connection's alone: the caller's agentid headers never pass.
        if parts
            .headers
            .keys()
            .any(|name| *name == CHAIN_HEADER || *name == PROOF_HEADER)
        {
            parts.headers.remove(CHAIN_HEADER);
            parts.headers.remove(PROOF_HEADER);
        }
        if presenting {
            parts
                .headers
                .insert(PROOF_HEADER, self.proof_header.clone());
            if let Some(c) = &self.chain_header {
                parts.headers.insert(CHAIN_HEADER, c.clone());
            }
        }
        let req = match &self.sender {
            Sender::H2(_) => {
                parts.uri = Uri::builder()
                    .scheme(Scheme::HTTPS)
                    .authority(self.authority.clone())
                    .path_and_query(path(&parts.uri))
                    .build()
                    .map_err(|e| Error::Config(e.to_string()))?;
                parts.version = http::Version::HTTP_2;
                Request::from_parts(parts, Full::new(body))
            }
            Sender::H1(_) => {
                // Origin form: the path and query only (kept when the caller gave just that).
                if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                    parts.uri = Uri::from(path(&parts.uri));
                }
                parts.version = http::Version::HTTP_11;
                parts.headers.insert(HOST, self.host.clone());
                Request::from_parts(parts, Full::new(body))
            }
        };
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(hyper_err)?;
                s.send_request(req).await.map_err(hyper_err)?
            }
            Sender::H2(s) => {
                s.ready().await.map_err(hyper_err)?;
                s.send_request(req).await.map_err(hyper_err)?
            }
        };
        if presenting {
            self.check_server(&resp)?;
        }
        Ok(resp)
    }

    /// Re-checks the server when the verification state changed since it was last checked (a
    /// revocation list or bundle applied; at first, since before the handshake) or a list it
    /// depends on went stale, as a framed session re-checks its peer (spec/PROTOCOL.md 14.3,
    /// 16.4): its certificate path after a bundle change, then its verified chain, or without
    /// one (or before its proof was verified) its revocation status. Any failure but expiry
    /// (which the close margin handles) ends the connection: no request is sent on it any more.
    fn recheck_server(&mut self, at: Instant) -> Result<()> {
        if let Some(e) = &self.ended {
            return Err(e.error());
        }
        let epoch = self.verification.epoch();
        if epoch == self.checked_epoch && at < self.stale_at {
            return Ok(());
        }
        let now = now_unix();
        // After a bundle change: the server's certificate path against the new anchors.
        let trust = self.verification.trust_store();
        if !Arc::ptr_eq(&trust, &self.trust_seen) {
            if let Err(e) = trust.revalidate(
                &self.server_certs,
                now,
                CertUsage::ServerAuth,
                self.peer.info.not_after,
            ) {
                tracing::info!(peer.id = %self.peer.info.id, error = %e, "agentid http client: server certificate no longer trusted, connection ended");
                let ended = ServerEnded::Certificate(e);
                let err = ended.error();
                self.ended = Some(ended);
                return Err(err);
            }
        }
        let peer = &self.peer.info;
        // Before the server's proof was verified: its revocation status, as at connect.
        let chain = self
            .server
            .as_ref()
            .and_then(|s| s.chain_compact.as_deref());
        let result = self.verification.verifier().verify_peer(
            chain,
            peer.id.as_spiffe_id(),
            &peer.public_key,
            now,
        );
        match result {
            Err(e) if e.code() != ErrorCode::Expired => {
                tracing::info!(peer.id = %peer.id, reason = e.code().as_str(), "agentid http client: server no longer verifies, connection ended");
                self.ended = Some(ServerEnded::Protocol(e.clone()));
                Err(Error::Protocol(e))
            }
            result => {
                self.trust_seen = trust;
                self.checked_epoch = epoch;
                self.stale_at = stale_instant(
                    self.verification
                        .stale_at(peer.id.as_spiffe_id(), result.ok().flatten().as_ref()),
                );
                Ok(())
            }
        }
    }

    /// Verifies the server's proof on a response to a presenting request. A failure is a
    /// failure of the connection (spec/PROTOCOL.md 22.4): it carries no more requests, each of
    /// which gets this error.
    fn check_server(&mut self, resp: &HttpResponse) -> Result<()> {
        let checked = self.verify_server(resp);
        match &checked {
            Err(Error::Protocol(e)) => self.ended = Some(ServerEnded::Protocol(e.clone())),
            Err(Error::HandshakeRefused(why)) => self.ended = Some(ServerEnded::Refused(why)),
            _ => {}
        }
        checked
    }

    fn verify_server(&mut self, resp: &HttpResponse) -> Result<()> {
        let proof = match resp.headers().get(PROOF_HEADER) {
            Some(p) => p
                .to_str()
                .map_err(|_| Error::HandshakeRefused("server proof is not ASCII"))?,
            // A refusal carries no proof (spec/PROTOCOL.md 22.4, 22.6): the caller sees the
            // status and code. Any other answer is served, and a served answer without the
            // server's proof fails the connection.
            None if is_refusal_status(resp.status()) => return Ok(()),
            None => {
                return Err(Error::HandshakeRefused(
                    "the server answered a presentation without its proof",
                ))
            }
        };
        let chain = resp
            .headers()
            .get(CHAIN_HEADER)
            .map(|c| {
                c.to_str()
                    .map_err(|_| Error::HandshakeRefused("server chain is not ASCII"))
            })
            .transpose()?;
        let peer = &self.peer.info;
        let verified = self.verification.verifier().verify_presentation(
            &Presentation { proof, chain },
            &PresentationContext {
                presenter: peer.id.as_spiffe_id(),
                presenter_key: &peer.public_key,
                presenter_not_after: peer.not_after,
                verifier_id: self.local.identity().as_spiffe_id(),
                role: Role::Server,
                exporter: self.peer.exporter_server,
                client_proof: Some(&self.client_proof),
                accepted_jtis: &[],
                held_chain: None,
                now: now_unix(),
            },
        )?;
        let stale_at = stale_instant(
            self.verification
                .stale_at(peer.id.as_spiffe_id(), verified.chain.as_ref()),
        );
        // Nothing past the server chain's `exp` minus the margin either: the server's
        // authority, as this connection verified it, ends there (spec/PROTOCOL.md 22.5).
        if let Some(chain) = &verified.chain {
            let left = chain
                .expires
                .saturating_sub(now_unix())
                .saturating_sub(self.close_margin);
            let at = Instant::now() + Duration::from_secs(left.min(365 * 24 * 3600));
            if at < self.close_at {
                self.close_at = at;
                self.closer.send_replace(at);
            }
        }
        self.server_chain
            .send_replace(Some(chain.map(str::to_owned)));
        self.server = Some(ServerPresentation {
            proof: proof.to_owned(),
            chain: verified.chain,
            chain_compact: chain.map(str::to_owned),
        });
        // The server's certificate path and revocation status stay as last checked
        // (`checked_epoch`): a change since is re-checked before the next request.
        self.stale_at = stale_at;
        Ok(())
    }
}

/// Whether `status` is one an agentid refusal has (spec/PROTOCOL.md 22.6: 400, 401, 403, 431,
/// 503; and 500 for the server's own failure, which carries no proof either).
fn is_refusal_status(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 401 | 403 | 431 | 500 | 503)
}
