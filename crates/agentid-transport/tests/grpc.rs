//! gRPC on the HTTP binding (feature `tonic`): the `grpc_agents` example as a process, then
//! the refusals one by one against a small tonic service behind `MethodScopes`.
#![cfg(test)]
#![cfg(feature = "tonic")]

use example::demo;
use example::demo::grpc::{BoxFuture, Routes, Unary};

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentid_protocol::{Scope, ServiceId, TrustDomain};
use agentid_transport::grpc::{GrpcChannel, MethodScopes};
use agentid_transport::http::{HttpClient, HttpServer};
use agentid_transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

const SERVICE: &str = "spiffe://example.org/svc/echo";
const CALLER: &str = "spiffe://example.org/agent/caller/task/t1";
const ECHO: &str = "/test.Echo/Say";
const SHOUT: &str = "/test.Echo/Shout";
const UNDECLARED: &str = "/test.Echo/Whisper";
const COUNT: &str = "/test.Echo/Count";
/// Taken and never answered.
const HANG: &str = "/test.Echo/Hang";
const T: Duration = Duration::from_secs(10);

#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    text: String,
}

/// `Say`: the caller's identity and the text.
fn say(peer: String, req: Text) -> Result<Text, Status> {
    Ok(Text {
        text: format!("{peer}: {}", req.text),
    })
}

/// A server-streaming method: a message every 20 ms, at most 500.
#[derive(Clone)]
struct Count;

impl tower_service::Service<tonic::Request<Text>> for Count {
    type Response = tonic::Response<tokio_stream::wrappers::ReceiverStream<Result<Text, Status>>>;
    type Error = Status;
    type Future = BoxFuture<Result<Self::Response, Status>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: tonic::Request<Text>) -> Self::Future {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..500u32 {
                let msg = Text {
                    text: i.to_string(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Box::pin(async move {
            Ok(tonic::Response::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
        })
    }
}

/// `Count` streams; every other path answers with `Say` (the scope layer decides which are
/// reachable).
fn echo_server(
    req: http::Request<tonic::body::Body>,
) -> BoxFuture<http::Response<tonic::body::Body>> {
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Text, Text>::default());
        if req.uri().path() == COUNT {
            grpc.server_streaming(Count, req).await
        } else if req.uri().path() == HANG {
            std::future::pending().await
        } else {
            grpc.unary(Unary(say), req).await
        }
    })
}

struct World {
    domain: demo::Domain,
    td: TrustDomain,
    server_verification: Arc<PeerVerification>,
    addr: SocketAddr,
}

impl World {
    /// The echo service on 127.0.0.1: `Say` needs `echo:say`, `Shout` needs `echo:shout`.
    async fn start() -> Self {
        let domain = demo::Domain::new("example.org").unwrap();
        let td = TrustDomain::parse("example.org").unwrap();
        let server_verification = domain.verification(SERVICE).unwrap();
        let server = HttpServer::builder(
            domain.service(SERVICE).unwrap(),
            server_verification.clone(),
            PeerPolicy::agents_in(td.clone()),
        )
        .build()
        .unwrap();
        let scopes = MethodScopes::new()
            .method(ECHO, Scope::parse("echo:say").unwrap())
            .method(SHOUT, Scope::parse("echo:shout").unwrap())
            .method(COUNT, Scope::parse("echo:say").unwrap())
            .method(HANG, Scope::parse("echo:say").unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower_layer::Layer::layer(&scopes, Routes(echo_server));
        tokio::spawn(async move { server.serve(listener, service).await });
        Self {
            domain,
            td,
            server_verification,
            addr,
        }
    }

    fn grpc(
        &self,
        creds: Arc<MemoryCredentials>,
        server: &str,
    ) -> tonic::client::Grpc<GrpcChannel> {
        let client = HttpClient::builder(
            creds,
            self.domain.verification(CALLER).unwrap(),
            PeerPolicy::service(ServiceId::new(&self.td, server).unwrap()),
        )
        .connect_timeout(T)
        .build()
        .unwrap();
        tonic::client::Grpc::new(GrpcChannel::new(client, self.addr, "echo.example.org"))
    }
}

async fn call(
    grpc: &mut tonic::client::Grpc<GrpcChannel>,
    path: &'static str,
) -> Result<String, Status> {
    tokio::time::timeout(T, async {
        grpc.ready().await?;
        let reply = grpc
            .unary(
                tonic::Request::new(Text { text: "hi".into() }),
                PathAndQuery::from_static(path),
                ProstCodec::<Text, Text>::default(),
            )
            .await?;
        Ok(reply.into_inner().text)
    })
    .await
    .expect("the call finishes")
}

fn assert_refused(r: Result<String, Status>, code: Code, message: &str) {
    match r {
        Ok(t) => panic!("allowed: {t}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert_eq!(s.message(), message, "{s:?}");
        }
    }
}

#[tokio::test]
async fn a_delegated_method_answers_and_names_the_caller() {
    let w = World::start().await;
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:say").unwrap(), "echo");
    assert_eq!(
        call(&mut grpc, ECHO).await.unwrap(),
        format!("{CALLER}: hi")
    );
    // The same connection serves the next call (the presentation is cached).
    assert_eq!(
        call(&mut grpc, ECHO).await.unwrap(),
        format!("{CALLER}: hi")
    );
}

/// A server that takes a call and never answers holds it at most the channel's response
/// timeout (`DEADLINE_EXCEEDED`, `response_timeout`), and not the channel: its later calls share
/// one connection, which is dropped, and the next call is served on a new one.
#[tokio::test]
async fn a_call_the_server_never_answers_ends_at_the_response_timeout_and_frees_the_channel() {
    let w = World::start().await;
    let client = HttpClient::builder(
        w.domain.task(CALLER, "echo:say").unwrap(),
        w.domain.verification(CALLER).unwrap(),
        PeerPolicy::service(ServiceId::new(&w.td, "echo").unwrap()),
    )
    .connect_timeout(T)
    .build()
    .unwrap();
    let channel = GrpcChannel::new(client, w.addr, "echo.example.org")
        .response_timeout(Duration::from_secs(1));
    let mut grpc = tonic::client::Grpc::new(channel);
    assert_refused(
        call(&mut grpc, HANG).await,
        Code::DeadlineExceeded,
        "response_timeout",
    );
    assert_eq!(
        call(&mut grpc, ECHO).await.unwrap(),
        format!("{CALLER}: hi")
    );
}

/// A call's own deadline (`grpc-timeout`, tonic's `Request::set_timeout`) shorter than the
/// channel's response timeout is the one it waits for, as tonic's own channel does: a call
/// given half a second to a server that never answers waited the channel's 120 s, holding the
/// channel's one connection and every later call with it.
#[tokio::test]
async fn a_call_whose_deadline_is_shorter_than_the_response_timeout_ends_at_its_deadline() {
    let w = World::start().await;
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:say").unwrap(), "echo");
    let r = tokio::time::timeout(T, async {
        grpc.ready().await?;
        let mut req = tonic::Request::new(Text { text: "hi".into() });
        req.set_timeout(Duration::from_millis(500));
        grpc.unary(
            req,
            PathAndQuery::from_static(HANG),
            ProstCodec::<Text, Text>::default(),
        )
        .await
        .map(|r| r.into_inner().text)
    })
    .await
    .expect("the call ends at its own deadline");
    assert_refused(r, Code::DeadlineExceeded, "response_timeout");
    assert_eq!(
        call(&mut grpc, ECHO).await.unwrap(),
        format!("{CALLER}: hi")
    );
}

#[tokio::test]
async fn a_method_outside_the_delegated_scope_is_permission_denied() {
    let w = World::start().await;
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:say").unwrap(), "echo");
    assert_refused(
        call(&mut grpc, SHOUT).await,
        Code::PermissionDenied,
        "scope_not_granted",
    );
    // The refusal does not end the connection's other authority.
    assert!(call(&mut grpc, ECHO).await.is_ok());
}

#[tokio::test]
async fn a_method_without_a_declared_scope_is_refused_even_with_a_wide_chain() {
    let w = World::start().await;
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:*").unwrap(), "echo");
    assert!(call(&mut grpc, SHOUT).await.is_ok());
    assert_refused(
        call(&mut grpc, UNDECLARED).await,
        Code::PermissionDenied,
        "scope_not_granted",
    );
}

#[tokio::test]
async fn a_caller_without_a_chain_holds_no_method() {
    let w = World::start().await;
    let (cred, _) = w.domain.credential(CALLER).unwrap();
    let mut grpc = w.grpc(Arc::new(MemoryCredentials::new(cred)), "echo");
    assert_refused(
        call(&mut grpc, ECHO).await,
        Code::PermissionDenied,
        "scope_not_granted",
    );
}

#[tokio::test]
async fn a_call_after_revocation_is_refused_on_the_live_and_on_a_new_connection() {
    let w = World::start().await;
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:say").unwrap(), "echo");
    assert!(call(&mut grpc, ECHO).await.is_ok());
    w.server_verification
        .apply_revocation_list(&w.domain.revocation_list(&[CALLER]).unwrap())
        .unwrap();
    // The live connection: the stored refusal (or, once the server closed it, unavailable).
    match call(&mut grpc, ECHO).await {
        Ok(t) => panic!("allowed after revocation: {t}"),
        Err(s) => assert!(
            (s.code() == Code::Unauthenticated && s.message() == "revoked")
                || s.code() == Code::Unavailable,
            "{s:?}"
        ),
    }
    // A new connection of the revoked task never gets an answer from the service.
    for _ in 0..2 {
        match call(&mut grpc, ECHO).await {
            Ok(t) => panic!("allowed after revocation: {t}"),
            Err(s) => assert!(
                matches!(s.code(), Code::Unauthenticated | Code::Unavailable),
                "{s:?}"
            ),
        }
    }
}

#[tokio::test]
async fn revocation_cuts_a_server_stream_in_flight() {
    let w = World::start().await;
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:say").unwrap(), "echo");
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(Text { text: "go".into() }),
            PathAndQuery::from_static(COUNT),
            ProstCodec::<Text, Text>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(T, stream.message()).await.unwrap();
    assert_eq!(first.unwrap().unwrap().text, "0");
    w.server_verification
        .apply_revocation_list(&w.domain.revocation_list(&[CALLER]).unwrap())
        .unwrap();
    // The stream ends in an error, not in a normal end (at most what was in flight arrives).
    let end = tokio::time::timeout(T, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream is cut");
    assert!(end.is_err(), "the stream ended normally: {end:?}");
}

#[tokio::test]
async fn the_client_refuses_a_server_of_another_identity() {
    let w = World::start().await;
    // The caller expects svc/files; the server is svc/echo: the TLS handshake fails, nothing
    // is sent.
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:say").unwrap(), "files");
    match call(&mut grpc, ECHO).await {
        Ok(t) => panic!("talked to the wrong server: {t}"),
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
    }
}

#[tokio::test]
async fn a_malformed_grpc_body_is_an_error_status_and_the_server_keeps_serving() {
    let w = World::start().await;
    let client = HttpClient::builder(
        w.domain.task(CALLER, "echo:say").unwrap(),
        w.domain.verification(CALLER).unwrap(),
        PeerPolicy::service(ServiceId::new(&w.td, "echo").unwrap()),
    )
    .build()
    .unwrap();
    let mut conn = client.connect(w.addr, "echo.example.org").await.unwrap();
    // A gRPC frame header announcing 4 GiB, then garbage.
    let req = http::Request::post(ECHO)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Bytes::from_static(b"\x00\xff\xff\xff\xffgarbage"))
        .unwrap();
    let resp = tokio::time::timeout(T, conn.send(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    let (parts, body) = resp.into_parts();
    let trailers = tokio::time::timeout(T, http_body_util::BodyExt::collect(body))
        .await
        .unwrap()
        .unwrap()
        .trailers()
        .cloned();
    let status = Status::from_header_map(&parts.headers)
        .or_else(|| trailers.as_ref().and_then(Status::from_header_map))
        .expect("a grpc-status");
    assert_ne!(status.code(), Code::Ok);
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:say").unwrap(), "echo");
    assert!(call(&mut grpc, ECHO).await.is_ok());
}

#[path = "support/decisions.rs"]
mod decisions;

#[path = "../examples/grpc_agents.rs"]
#[allow(dead_code, reason = "the example's main is not called here")]
mod example;

#[tokio::test]
async fn the_grpc_agents_example_runs() {
    tokio::time::timeout(Duration::from_secs(60), example::run())
        .await
        .expect("the example finishes")
        .expect("every step of the example goes as described");
}

// ---- Every decision reaches the sink ----

/// spec/PROTOCOL.md 22.8: "Every authorization decision ... is reported to a local sink", and
/// the `grpc` module promises that `MethodScopes`' checks go through the request's `Authorizer`
/// "so every decision also reaches the server's decision sink". A call to a method without a
/// declared scope is denied (`PERMISSION_DENIED`, `scope_not_granted`) and the denial reaches
/// the sink too (`Resource::Undeclared`): an audit sink sees the probing of undeclared methods.
#[tokio::test]
async fn a_call_to_an_undeclared_method_reaches_the_decision_sink() {
    let domain = demo::Domain::new("example.org").unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let sink = Arc::new(decisions::Recorder::default());
    let server = HttpServer::builder(
        domain.service(SERVICE).unwrap(),
        domain.verification(SERVICE).unwrap(),
        PeerPolicy::agents_in(td.clone()),
    )
    .decision_sink(sink.clone())
    .build()
    .unwrap();
    let scopes = MethodScopes::new().method(ECHO, Scope::parse("echo:say").unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tower_layer::Layer::layer(&scopes, Routes(echo_server));
    tokio::spawn(async move { server.serve(listener, service).await });
    let client = HttpClient::builder(
        domain.task(CALLER, "echo:*").unwrap(),
        domain.verification(CALLER).unwrap(),
        PeerPolicy::service(ServiceId::new(&td, "echo").unwrap()),
    )
    .connect_timeout(T)
    .build()
    .unwrap();
    let mut grpc = tonic::client::Grpc::new(GrpcChannel::new(client, addr, "echo.example.org"));

    // A declared method: its grant is recorded.
    assert!(call(&mut grpc, ECHO).await.is_ok());
    assert_eq!(
        sink.0.lock().unwrap().len(),
        1,
        "{:?}",
        sink.0.lock().unwrap()
    );

    assert_refused(
        call(&mut grpc, UNDECLARED).await,
        Code::PermissionDenied,
        "scope_not_granted",
    );
    let recorded = sink.0.lock().unwrap().clone();
    assert!(
        recorded.iter().any(|(_, granted, _)| !granted),
        "the denial of {UNDECLARED} never reached the decision sink: {recorded:?}"
    );
}

/// Spellings of a method path that a router might take for another method's (a trailing
/// slash, a doubled slash, percent-encoding, case, a query, an extra segment) never borrow a
/// declared method's scope: the service behind the layer answers every path, and each spelling
/// of `Shout` is refused to a caller holding only `echo:say`, as undeclared or under `Shout`'s
/// own scope (holds).
#[tokio::test]
async fn spellings_of_a_method_path_do_not_borrow_another_methods_scope() {
    let w = World::start().await;
    let mut grpc = w.grpc(w.domain.task(CALLER, "echo:say").unwrap(), "echo");
    for path in [
        "/test.Echo/Shout/",
        "//test.Echo/Shout",
        "/test.Echo/%53hout",
        "/test.echo/shout",
        "/test.Echo/Shout?via=/test.Echo/Say",
        "/test.Echo/Say/../Shout",
        "/test.Echo/Say/",
        "/test.Echo/Say%2F",
    ] {
        assert_refused(
            call(&mut grpc, path).await,
            Code::PermissionDenied,
            "scope_not_granted",
        );
    }
    // The declared spelling still answers on the same connection.
    assert!(call(&mut grpc, ECHO).await.is_ok());
}
