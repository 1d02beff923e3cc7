//! gRPC between agents with agentid (transport feature `tonic`): a tonic service served by the
//! agentid HTTP server with a delegated scope per method, and a tonic client on the agentid
//! HTTP client that presents its delegation chain. The messages are written by hand with
//! `prost` derives (no `protoc`), and so is the service glue `tonic-build` would generate (its
//! generic part in `examples/demo/grpc.rs`).
//!
//! ```sh
//! cargo run -p agentid-transport --features tonic --example grpc_agents
//! ```
//!
//! The example makes a throw-away PKI in memory (`examples/demo/mod.rs`), serves
//! `demo.Files/Read` (scope `files:read`) and `demo.Files/Write` (scope `files:write`) on
//! 127.0.0.1, and calls them as the task `coder/t1`, which was delegated `files:read` only:
//! `Read` answers, `Write` is refused (`PERMISSION_DENIED`, `scope_not_granted`). Then the CA
//! revokes the task; the server applies the list, which ends the connection at once, and the
//! next call is refused. Stdout carries the transcript; the exit status says whether every
//! step went as described.

pub mod demo;

use std::process::ExitCode;
use std::time::Duration;

use agentid_protocol::{ServiceId, TrustDomain};
use agentid_transport::grpc::{GrpcChannel, MethodScopes};
use agentid_transport::http::{HttpClient, HttpServer};
use agentid_transport::PeerPolicy;
use anyhow::{bail, Context as _, Result};
use demo::grpc::{BoxFuture, Routes, Unary};
use http::uri::PathAndQuery;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

const SERVICE: &str = "spiffe://example.org/svc/files";
const CODER: &str = "spiffe://example.org/agent/coder/task/t1";
const READ: &str = "/demo.Files/Read";
const WRITE: &str = "/demo.Files/Write";

// The messages, as `protoc` would have written them from:
//   message ReadRequest  { string path = 1; }
//   message ReadReply    { string content = 1; string caller = 2; }
//   message WriteRequest { string path = 1; string content = 2; }
//   message WriteReply   { uint64 written = 1; }

/// `demo.ReadRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadRequest {
    /// The file to read.
    #[prost(string, tag = "1")]
    pub path: String,
}

/// `demo.ReadReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadReply {
    /// The file's content.
    #[prost(string, tag = "1")]
    pub content: String,
    /// Who asked, as the server saw it (the caller's certificate identity).
    #[prost(string, tag = "2")]
    pub caller: String,
}

/// `demo.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The file to write.
    #[prost(string, tag = "1")]
    pub path: String,
    /// The new content.
    #[prost(string, tag = "2")]
    pub content: String,
}

/// `demo.WriteReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteReply {
    /// Bytes written.
    #[prost(uint64, tag = "1")]
    pub written: u64,
}

/// The `Read` method: `caller` is the peer the agentid server verified; the scope was already
/// checked by [`MethodScopes`].
fn read(caller: String, req: ReadRequest) -> Result<ReadReply, Status> {
    Ok(ReadReply {
        content: format!("contents of {}", req.path),
        caller,
    })
}

/// The `Write` method.
fn write(_caller: String, req: WriteRequest) -> Result<WriteReply, Status> {
    Ok(WriteReply {
        written: req.content.len() as u64,
    })
}

/// The service glue `tonic-build` would generate: route by path, decode, call, encode.
fn files_server(
    req: http::Request<tonic::body::Body>,
) -> BoxFuture<http::Response<tonic::body::Body>> {
    match req.uri().path() {
        READ => Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<ReadReply, ReadRequest>::default());
            grpc.unary(Unary(read), req).await
        }),
        WRITE => Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<WriteReply, WriteRequest>::default());
            grpc.unary(Unary(write), req).await
        }),
        _ => Box::pin(std::future::ready(
            Status::unimplemented("no such method").into_http(),
        )),
    }
}

/// The client glue `tonic-build` would generate, on the agentid channel.
struct FilesClient {
    grpc: tonic::client::Grpc<GrpcChannel>,
}

impl FilesClient {
    fn new(channel: GrpcChannel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn read(&mut self, path: &str) -> Result<ReadReply, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let req = tonic::Request::new(ReadRequest { path: path.into() });
        let codec = ProstCodec::<ReadRequest, ReadReply>::default();
        let reply = self
            .grpc
            .unary(req, PathAndQuery::from_static(READ), codec)
            .await?;
        Ok(reply.into_inner())
    }

    async fn write(&mut self, path: &str, content: &str) -> Result<WriteReply, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let req = tonic::Request::new(WriteRequest {
            path: path.into(),
            content: content.into(),
        });
        let codec = ProstCodec::<WriteRequest, WriteReply>::default();
        let reply = self
            .grpc
            .unary(req, PathAndQuery::from_static(WRITE), codec)
            .await?;
        Ok(reply.into_inner())
    }
}

fn show(status: &Status) -> String {
    format!("{:?} {}", status.code(), status.message())
}

/// The whole demo; an error says which step did not go as described.
pub async fn run() -> Result<()> {
    let domain = demo::Domain::new("example.org")?;
    let td = TrustDomain::parse("example.org")?;

    // The server: TLS admits the agents of the trust domain; each method then needs its scope.
    let server_verification = domain.verification(SERVICE)?;
    let server = HttpServer::builder(
        domain.service(SERVICE)?,
        server_verification.clone(),
        PeerPolicy::agents_in(td.clone()),
    )
    .build()?;
    let scopes = MethodScopes::new()
        .method(READ, agentid_protocol::Scope::parse("files:read")?)
        .method(WRITE, agentid_protocol::Scope::parse("files:write")?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = tower_layer::Layer::layer(&scopes, Routes(files_server));
    tokio::spawn(async move { server.serve(listener, service).await });
    println!("files  | {SERVICE} serving gRPC on {addr}: {READ} needs files:read, {WRITE} needs files:write");

    // The client: the task coder/t1, delegated files:read; it talks only to svc/files.
    let client = HttpClient::builder(
        domain.task(CODER, "files:read")?,
        domain.verification(CODER)?,
        PeerPolicy::service(ServiceId::new(&td, "files")?),
    )
    .connect_timeout(Duration::from_secs(5))
    .build()?;
    let mut files = FilesClient::new(GrpcChannel::new(client, addr, "files.example.org"));

    let reply = files.read("/notes.txt").await.context("Read")?;
    println!(
        "coder  | Read -> OK {:?} (the server saw {})",
        reply.content, reply.caller
    );
    if reply.caller != CODER {
        bail!("the server saw {}", reply.caller);
    }

    match files.write("/notes.txt", "hello").await {
        Ok(r) => bail!(
            "Write was allowed without files:write ({} bytes)",
            r.written
        ),
        Err(s) if s.code() == Code::PermissionDenied && s.message() == "scope_not_granted" => {
            println!("coder  | Write -> {}", show(&s));
        }
        Err(s) => bail!("Write: unexpected status {}", show(&s)),
    }

    // The CA revokes the task; the server applies the new list: the connection ends at once.
    server_verification.apply_revocation_list(&domain.revocation_list(&[CODER])?)?;
    println!("files  | revocation list applied: {CODER} revoked");
    match files.read("/notes.txt").await {
        Ok(_) => bail!("Read after revocation was allowed"),
        Err(s) => println!("coder  | Read after revocation -> refused: {}", show(&s)),
    }
    // And on a new connection, too.
    match files.read("/notes.txt").await {
        Ok(_) => bail!("Read on a new connection after revocation was allowed"),
        Err(s) if matches!(s.code(), Code::Unauthenticated | Code::Unavailable) => {
            println!("coder  | Read again -> refused: {}", show(&s));
        }
        Err(s) => bail!("Read again: unexpected status {}", show(&s)),
    }
    println!("done");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    demo::exit_status("grpc_agents", run()).await
}
