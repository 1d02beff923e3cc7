//! Figures 9 to 11: the HTTP binding (spec/PROTOCOL.md section 22) against plain rustls mTLS
//! with hyper, in memory (a `tokio::io::duplex` pair, no sockets, both ends on one thread: a
//! figure is the CPU cost of both sides), HTTP/1.1 on both sides.
//!
//! * Figure 9: requests per second over one keep-alive connection. agentid: `HttpServer` serving
//!   an axum router whose handler sits behind `RequireScope` (`get(handler.layer(..))`, the
//!   form the crate documents; the authorizer runs on every request), called by `HttpClient` after its presentation (a depth-2 chain) was verified.
//!   Baseline: the same axum router without the layer, served by hyper over tokio-rustls with
//!   the same certificates, called by a hyper client over tokio-rustls.
//! * Figure 10: new connections per second: TLS, the first request with the depth-2 chain and
//!   its proof, the server's proof verified by the client. Baseline: a raw tokio-rustls mTLS
//!   handshake plus one request and response over hyper, plus the signature operations the
//!   protocol requires (2 P-256 signs, 2 + 3 P-256 verifications), measured raw.
//! * Figure 11: one `Authorizer::authorize` call on an established connection against one raw
//!   tokio-rustls mTLS handshake.
//!
//! No `tracing` subscriber is installed in this process: the decision sink's events cost only
//! the disabled-callsite check. Both sides serve the router after `Router::with_state(())`, as
//! `axum::serve` does (handlers are made into services once, not on every request).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use agentid_protocol::Scope;
use agentid_transport::http::{
    Authorizer, HttpClient, HttpClientConnection, HttpOptions, HttpServer, RequireScope,
};
use agentid_transport::{MemoryCredentials, PeerPolicy};
use axum::handler::Handler as _;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::runtime::Runtime;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower_service::Service as _;

use crate::fixtures::{server_name, Pki, Res};
use crate::harness::{compare, Budget, Check};
use crate::report::{Report, Target};
use crate::session::raw_once;
use crate::session::RequiredSigs;
use crate::sigops::SigOps;

const DUPLEX_BUF: usize = 64 * 1024;
/// The depth of the chain the HTTP clients present.
const DEPTH: usize = 2;
const BODY: &str = "ok";
const AUTHORITY: &str = "server.bench.example";

async fn handler() -> &'static str {
    BODY
}

/// The service both stacks serve; agentid's route requires `repo:read` under the chain, with
/// the layer on the handler as the `http` module of agentid-transport recommends.
fn router(with_scope: bool) -> Res<Router> {
    let route = if with_scope {
        get(handler.layer(RequireScope::new(Scope::parse("repo:read")?)))
    } else {
        get(handler)
    };
    Ok(Router::new().route("/r", route))
}

fn runtime() -> Res<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn with_alpn(
    server: &rustls::ServerConfig,
    client: &rustls::ClientConfig,
) -> (TlsAcceptor, TlsConnector) {
    let mut s = server.clone();
    s.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut c = client.clone();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    (
        TlsAcceptor::from(Arc::new(s)),
        TlsConnector::from(Arc::new(c)),
    )
}

/// The agentid side: server, client, router.
struct Agentid {
    server: HttpServer,
    client: HttpClient,
    app: Router,
}

impl Agentid {
    fn new(pki: &Pki, app: Router) -> Res<Self> {
        let holder = pki.holders.get(DEPTH).ok_or("no holder")?;
        let chain = pki.chains.get(DEPTH).ok_or("no chain")?;
        let server = HttpServer::builder(
            Arc::new(MemoryCredentials::new(pki.credential(&pki.server, None)?)),
            pki.verification(pki.server.id.as_spiffe_id(), None)?,
            PeerPolicy::agents_in(pki.td.clone()),
        )
        // Connections of figure 10 end asynchronously; room for those not yet reaped.
        .options(HttpOptions {
            max_connections: 100_000,
            ..HttpOptions::default()
        })
        .build()?;
        let client = HttpClient::builder(
            Arc::new(MemoryCredentials::new(pki.credential(holder, Some(chain))?)),
            pki.verification(holder.id.as_spiffe_id(), None)?,
            PeerPolicy::agent(pki.server.id.agent()),
        )
        .http1_only()
        .build()?;
        Ok(Self {
            server,
            client,
            // As `axum::serve` runs a router: its handlers made into services once, not on
            // every request (the same for the baseline).
            app: app.with_state(()),
        })
    }

    /// A new connection (server side on its own task), not yet used.
    async fn connect(&self) -> Res<HttpClientConnection> {
        let (a, b) = tokio::io::duplex(DUPLEX_BUF);
        let server = self.server.clone();
        let app = self.app.clone();
        tokio::spawn(async move {
            if let Ok(conn) = server.accept(a).await {
                conn.serve(app).await;
            }
        });
        Ok(self.client.connect_with(b, AUTHORITY).await?)
    }
}

/// One request on an agentid connection; true when it was served with the expected body.
async fn agentid_request(conn: &mut HttpClientConnection) -> bool {
    let Ok(req) = Request::get("/r").body(Bytes::new()) else {
        return false;
    };
    let Ok(resp) = conn.send(req).await else {
        return false;
    };
    if resp.status() != StatusCode::OK {
        return false;
    }
    match resp.into_body().collect().await {
        Ok(b) => b.to_bytes() == BODY,
        Err(_) => false,
    }
}

/// The baseline side: tokio-rustls and hyper, the same router without the layer.
struct Raw {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    app: Router,
}

type RawSender = http1::SendRequest<Full<Bytes>>;

impl Raw {
    fn new(pki: &Pki) -> Res<Self> {
        let (acceptor, connector) =
            with_alpn(&*pki.raw_server_config()?, &*pki.raw_client_config(DEPTH)?);
        Ok(Self {
            acceptor,
            connector,
            app: router(false)?.with_state(()),
        })
    }

    async fn connect(&self) -> Res<RawSender> {
        let (a, b) = tokio::io::duplex(DUPLEX_BUF);
        let acceptor = self.acceptor.clone();
        let app = self.app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(a).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let mut app = app.clone();
                async move { app.call(req).await }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
        let tls = self.connector.connect(server_name(), b).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

async fn raw_request(sender: &mut RawSender) -> bool {
    let Ok(req) = Request::get("/r")
        .header(HOST, AUTHORITY)
        .body(Full::new(Bytes::new()))
    else {
        return false;
    };
    if sender.ready().await.is_err() {
        return false;
    }
    let Ok(resp) = sender.send_request(req).await else {
        return false;
    };
    if resp.status() != StatusCode::OK {
        return false;
    }
    match resp.into_body().collect().await {
        Ok(b) => b.to_bytes() == BODY,
        Err(_) => false,
    }
}

/// Figures 9, 10 and 11 (those in `only`).
pub fn run(
    pki: &Pki,
    ops: &SigOps,
    budget: Budget,
    only: &BTreeSet<u32>,
    report: &mut Report,
) -> Res<()> {
    let rt = runtime()?;
    // The authorizer of an established connection, taken from a request (figure 11).
    let grabbed: Arc<Mutex<Option<Authorizer>>> = Arc::new(Mutex::new(None));
    let slot = grabbed.clone();
    let app = router(true)?.route(
        "/grab",
        get(move |a: Authorizer| {
            let slot = slot.clone();
            async move {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(a);
                }
                BODY
            }
        }),
    );
    let agentid = Agentid::new(pki, app)?;
    let raw = Raw::new(pki)?;
    let ok = Check::new();

    if only.contains(&9) || only.contains(&11) {
        let mut conn = rt.block_on(agentid.connect())?;
        let mut sender = rt.block_on(raw.connect())?;
        // The first request presents the chain; the server's proof is verified.
        if !rt.block_on(agentid_request(&mut conn)) || conn.server_proof().is_none() {
            return Err("figure 9: the presentation was not served".into());
        }
        if !rt.block_on(raw_request(&mut sender)) {
            return Err("figure 9: the baseline request failed".into());
        }
        if only.contains(&9) {
            let r = compare(
                budget,
                &mut [
                    &mut || ok.and(rt.block_on(raw_request(&mut sender))),
                    &mut || ok.and(rt.block_on(agentid_request(&mut conn))),
                ],
            );
            if !ok.get() {
                return Err("a request failed during figure 9".into());
            }
            let (base, ours) = (
                r.first().copied().unwrap_or(0.0),
                r.get(1).copied().unwrap_or(0.0),
            );
            report.section(
                "9. requests per second, one keep-alive HTTP/1.1 connection (duplex pair, both ends on one thread; no tracing subscriber)",
            );
            report.line(
                "fig9.raw_rustls_hyper_axum.rps",
                1e9 / base,
                "requests/s",
                1.0,
                "baseline",
                Target::None,
            );
            report.line(
                "fig9.agentid_http_require_scope.rps",
                1e9 / ours,
                "requests/s",
                base / ours,
                &format!(
                    "raw rustls + hyper, same axum service ({:.1} us vs {:.1} us per request)",
                    ours / 1000.0,
                    base / 1000.0
                ),
                Target::AtLeast(0.95),
            );
        }
        if only.contains(&11) {
            let req = Request::get("/grab").body(Bytes::new())?;
            let resp = rt.block_on(conn.send(req))?;
            if resp.status() != StatusCode::OK {
                return Err("figure 11: /grab was refused".into());
            }
            let authorizer = grabbed
                .lock()
                .map_err(|_| "poisoned")?
                .take()
                .ok_or("figure 11: no authorizer captured")?;
            if authorizer.chain().is_none() {
                return Err("figure 11: the captured authorizer has no chain".into());
            }
            let scope = Scope::parse("repo:read")?;
            let (acceptor, connector) = (
                TlsAcceptor::from(pki.raw_server_config()?),
                TlsConnector::from(pki.raw_client_config(0)?),
            );
            let r = compare(
                budget,
                &mut [
                    &mut || raw_once(&rt, &acceptor, &connector, &ok),
                    &mut || ok.and(std::hint::black_box(authorizer.authorize(&scope)).is_ok()),
                ],
            );
            if !ok.get() {
                return Err("an operation failed during figure 11".into());
            }
            let (hs, authz) = (
                r.first().copied().unwrap_or(0.0),
                r.get(1).copied().unwrap_or(0.0),
            );
            report.section("11. per-request authorization on an established connection");
            report.baseline("fig11.raw_rustls_mtls_handshake", hs, "handshake");
            report.time(
                "fig11.authorizer_authorize",
                authz,
                "call",
                authz / hs,
                &format!(
                    "one raw mTLS handshake = {:.3}% (epoch compare, deadline, scope, decision sink)",
                    100.0 * authz / hs
                ),
                Target::AtMost(0.01),
            );
        }
        drop(conn);
        drop(sender);
    }

    if only.contains(&10) {
        let sig = RequiredSigs::new(pki, DEPTH, false)?;
        let r = compare(
            budget,
            &mut [
                &mut || {
                    ok.and(rt.block_on(async {
                        match raw.connect().await {
                            Ok(mut s) => raw_request(&mut s).await,
                            Err(_) => false,
                        }
                    }))
                },
                &mut || {
                    ok.and(rt.block_on(async {
                        match raw.connect().await {
                            Ok(mut s) => raw_request(&mut s).await,
                            Err(_) => false,
                        }
                    }));
                    sig.run(&ok);
                },
                &mut || {
                    ok.and(rt.block_on(async {
                        match agentid.connect().await {
                            Ok(mut c) => {
                                agentid_request(&mut c).await && c.server_proof().is_some()
                            }
                            Err(_) => false,
                        }
                    }))
                },
            ],
        );
        if !ok.get() {
            return Err("a connection failed during figure 10".into());
        }
        let get = |i: usize| r.get(i).copied().unwrap_or(0.0);
        let (raw_ns, base, ours) = (get(0), get(1), get(2));
        report.section(
            "10. new HTTP/1.1 connections with a depth-2 chain (duplex pair, both ends on one thread)",
        );
        report.baseline(
            "fig10.raw_rustls_mtls_hyper_connection",
            raw_ns,
            "connection + 1 request",
        );
        report.time(
            "fig10.agentid_http_connection.depth2",
            ours,
            "connection + 1 request",
            ours / base,
            &format!(
                "raw connection + 1 request + 2 sign + {} verify, measured as one operation = {:.0} us; the signature operations alone (startup figures) {:.0} us",
                DEPTH + 3,
                base / 1000.0,
                (2.0 * ops.p256_sign + (DEPTH as f64 + 3.0) * ops.p256_verify) / 1000.0
            ),
            Target::AtMost(1.10),
        );
        report.line(
            "fig10.agentid_http_connections_per_second",
            1e9 / ours,
            "connections/s",
            base / ours,
            "of (raw + signature operations) connections/s",
            Target::None,
        );
    }
    Ok(())
}

/// `--profile-http agentid|raw|connect|raw_connect|raw_connect_sigs N`: N requests over one established
/// keep-alive connection (the loop of figure 9 alone), or N new connections with one request
/// each (figure 10; `raw_connect_sigs` adds the signature operations of its baseline), for
/// `perf` or `valgrind --tool=callgrind`.
pub fn profile(args: &[String]) -> Res<()> {
    let mode = args.get(1).map(String::as_str).unwrap_or("agentid");
    let n: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let pki = Pki::new()?;
    let rt = runtime()?;
    let mut served = 0usize;
    if mode == "connect" {
        let agentid = Agentid::new(&pki, router(true)?)?;
        for _ in 0..n {
            served += usize::from(rt.block_on(async {
                match agentid.connect().await {
                    Ok(mut c) => agentid_request(&mut c).await && c.server_proof().is_some(),
                    Err(_) => false,
                }
            }));
        }
    } else if mode == "raw_connect" || mode == "raw_connect_sigs" {
        // `raw_connect_sigs`: figure 10's baseline operation (with the signature operations).
        let raw = Raw::new(&pki)?;
        let sig = RequiredSigs::new(&pki, DEPTH, false)?;
        for _ in 0..n {
            let ok = rt.block_on(async {
                match raw.connect().await {
                    Ok(mut s) => raw_request(&mut s).await,
                    Err(_) => false,
                }
            });
            let sigs_ok = Check::new();
            if mode == "raw_connect_sigs" {
                sig.run(&sigs_ok);
            }
            served += usize::from(ok && sigs_ok.get());
        }
    } else if mode == "raw" {
        let raw = Raw::new(&pki)?;
        let mut sender = rt.block_on(raw.connect())?;
        for _ in 0..n {
            served += usize::from(rt.block_on(raw_request(&mut sender)));
        }
    } else {
        let agentid = Agentid::new(&pki, router(true)?)?;
        let mut conn = rt.block_on(agentid.connect())?;
        for _ in 0..n {
            served += usize::from(rt.block_on(agentid_request(&mut conn)));
        }
    }
    if served != n {
        return Err(format!("{served} of {n} requests served").into());
    }
    println!("{n} {mode} requests");
    Ok(())
}
