//! Agents over HTTP (spec/PROTOCOL.md section 22): an axum service with one route that requires
//! a delegated scope and one that admits peers by identity alone, and the agentid HTTP client
//! that presents a delegated chain. Ordinary HTTP clients (curl) reach the identity route with
//! the same CLI-written files. Uses the facade feature `http` (on for the examples).
//!
//! ```sh
//! cargo build -p agentid-cli && export PATH="$PWD/target/debug:$PATH"   # the `agentid` binary
//! agentid ca init --trust-domain example.org --dir demo/ca
//! cat > demo/ca/policy.toml <<'EOF'
//! [agents.planner]
//! scopes = ["files:read", "files:write"]
//! max_depth = 2
//! requesters = ["operator"]
//!
//! [agents.coder]
//! requesters = ["parent:planner"]
//!
//! [services.files]
//! requesters = ["operator"]
//! dns = ["files.example.org"]
//! EOF
//! agentid cert issue --ca demo/ca --service files --out-dir demo/files
//! agentid cert issue --ca demo/ca --agent planner --scope files:read --scope files:write --max-depth 1 --out-dir demo/planner
//! agentid cert issue --ca demo/ca --agent coder --parent demo/planner --out-dir demo/coder
//! agentid delegate --chain demo/planner/grant.jwt --key demo/planner/key.pem --to-cert demo/coder/cert.pem \
//!     --bundle demo/coder/bundle.json --scope files:read --ttl 10m --out demo/coder/chain.jwt > /dev/null
//! agentid revocations export --ca demo/ca --out demo/revocations.jwt
//!
//! # terminal 1: the service (GET /files needs files:read; GET /status admits the agent `coder`)
//! cargo run --example http_agents -- serve --dir demo/files --listen 127.0.0.1:8443 \
//!     --revocations demo/revocations.jwt
//! # terminal 2: the coder presents its chain
//! cargo run --example http_agents -- call --dir demo/coder --connect 127.0.0.1:8443 \
//!     --revocations demo/revocations.jwt --path /files --path /status
//! # or curl, identity only: /status answers, /files is refused (403 scope_not_granted)
//! curl --cacert demo/coder/bundle.pem --cert demo/coder/cert.pem --key demo/coder/key.pem \
//!     --resolve files.example.org:8443:127.0.0.1 https://files.example.org:8443/status
//! ```
//!
//! Stdout carries the transcript, stderr the logs (`RUST_LOG` filter, default `info`).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agentid::files::{read_token_file, CredentialDir};
use agentid::protocol::{AgentId, Scope, ServiceId, VerifierConfig};
use agentid::transport::http::{Authorizer, HttpClient, HttpServer, RequirePeer, RequireScope};
use agentid::transport::{MemoryCredentials, PeerPolicy, PeerVerification};
use anyhow::{Context, Result};
use axum::handler::Handler as _;
use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use http_body_util::BodyExt as _;

#[derive(Debug, Parser)]
#[command(name = "http_agents")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve GET /files (requires the scope) and GET /status (admits one agent by identity).
    Serve {
        /// Credential directory of the service (`agentid cert issue --service NAME`).
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (port 0: any free port; the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// The scope GET /files requires.
        #[arg(long, default_value = "files:read")]
        scope: String,
        /// The agent name GET /status admits (any of its tasks, chain or not).
        #[arg(long, default_value = "coder")]
        status_agent: String,
        /// The CA's revocation list; without it revocation checking is DISABLED.
        #[arg(long, value_name = "FILE")]
        revocations: Option<PathBuf>,
    },
    /// Call the service with the directory's certificate and delegation chain.
    Call {
        /// Credential directory of the calling agent (with `chain.jwt` or `grant.jwt`).
        #[arg(long)]
        dir: PathBuf,
        /// The service's address.
        #[arg(long)]
        connect: SocketAddr,
        /// The service name the server must be (`spiffe://TD/svc/NAME`).
        #[arg(long, default_value = "files")]
        service: String,
        /// Host of the requests.
        #[arg(long, default_value = "files.example.org")]
        host: String,
        /// Paths to GET, in order, on one connection.
        #[arg(long = "path", default_value = "/files")]
        paths: Vec<String>,
        /// The CA's revocation list; without it revocation checking is DISABLED.
        #[arg(long, value_name = "FILE")]
        revocations: Option<PathBuf>,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    common::init_logging(false);
    let result = match Args::parse().command {
        Command::Serve {
            dir,
            listen,
            scope,
            status_agent,
            revocations,
        } => serve(dir, listen, &scope, &status_agent, revocations).await,
        Command::Call {
            dir,
            connect,
            service,
            host,
            paths,
            revocations,
        } => call(dir, connect, &service, &host, &paths, revocations).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http_agents: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn verification(
    mut config: VerifierConfig,
    revocations: Option<PathBuf>,
) -> Result<Arc<PeerVerification>> {
    match revocations {
        Some(path) => {
            let list = read_token_file(&path)?;
            config
                .apply_revocation_list(&list)
                .with_context(|| format!("{}: revocation list refused", path.display()))?;
        }
        None => {
            tracing::warn!(
                "revocation checking is DISABLED: no --revocations FILE given \
                 (VerifierConfig::danger_accept_missing_or_stale_revocations)"
            );
            config = config.danger_accept_missing_or_stale_revocations();
        }
    }
    Ok(PeerVerification::new(config)?)
}

async fn files(a: Authorizer) -> String {
    let chain = a.chain().map(|c| c.scope.to_string()).unwrap_or_default();
    format!("files for {} under [{chain}]\n", a.peer_id())
}

async fn status(a: Authorizer) -> String {
    format!("status for {}\n", a.peer_id())
}

async fn serve(
    dir: PathBuf,
    listen: SocketAddr,
    scope: &str,
    status_agent: &str,
    revocations: Option<PathBuf>,
) -> Result<()> {
    let dir = CredentialDir::load(&dir)?;
    let td = dir.identity.trust_domain();
    let verification = verification(dir.verifier_config()?, revocations)?;
    let credentials = Arc::new(MemoryCredentials::new(dir.credential()?));
    let agent = AgentId::new(&td, status_agent).context("--status-agent")?;
    let app = Router::new()
        .route(
            "/files",
            get(files.layer(RequireScope::new(Scope::parse(scope).context("--scope")?))),
        )
        .route(
            "/status",
            get(status.layer(RequirePeer::new(PeerPolicy::agent(agent.clone())))),
        );
    // TLS admits every agent of the trust domain; each route then decides.
    let server =
        HttpServer::builder(credentials, verification, PeerPolicy::agents_in(td)).build()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "files | {} (cert {}) listening on {}",
        dir.identity,
        dir.serial,
        listener.local_addr()?
    );
    println!("files | GET /files requires {scope}; GET /status admits {agent}");
    server.serve(listener, app).await?;
    Ok(())
}

async fn call(
    dir: PathBuf,
    connect: SocketAddr,
    service: &str,
    host: &str,
    paths: &[String],
    revocations: Option<PathBuf>,
) -> Result<()> {
    let dir = CredentialDir::load(&dir)?;
    let td = dir.identity.trust_domain();
    let verification = verification(dir.verifier_config()?, revocations)?;
    let credentials = Arc::new(MemoryCredentials::new(dir.credential_with_chain()?));
    let server = ServiceId::new(&td, service).context("--service")?;
    let client =
        HttpClient::builder(credentials, verification, PeerPolicy::service(server)).build()?;
    let mut conn = client.connect(connect, host).await?;
    println!(
        "caller | connected to {} over {:?}",
        conn.peer().info.id,
        conn.peer().version
    );
    for path in paths {
        let req = http::Request::get(path.as_str()).body(bytes::Bytes::new())?;
        let resp = conn.send(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        println!(
            "caller | GET {path} -> {} {}",
            status.as_u16(),
            String::from_utf8_lossy(&body).trim()
        );
    }
    if conn.server_proof().is_some() {
        println!("caller | server proof verified");
    }
    Ok(())
}
