//! The client agent of `agent_pair` (the coder) as its own process, for two terminals. It takes
//! the files that `agentid cert issue` writes (and the chain `agentid delegate --out` writes),
//! connects over mutual TLS 1.3, presents its delegation chain, and makes one request per
//! `--scope`, printing each as granted or refused with the server's code.
//!
//! ```sh
//! cargo build -p agentid-cli && export PATH="$PWD/target/debug:$PATH"   # the `agentid` binary
//! agentid ca init --trust-domain example.org --dir demo/ca
//! cat > demo/ca/policy.toml <<'EOF'
//! [agents.planner]
//! scopes = ["repo:read", "repo:write", "issues:*"]
//! max_depth = 2
//! requesters = ["operator"]
//!
//! [agents.coder]
//! requesters = ["parent:planner"]
//!
//! [agents.librarian]
//! scopes = ["repo:serve"]
//! requesters = ["operator"]
//! EOF
//! agentid cert issue --ca demo/ca --agent librarian --scope repo:serve --out-dir demo/librarian
//! agentid cert issue --ca demo/ca --agent planner --scope repo:read --scope repo:write --max-depth 1 --out-dir demo/planner
//! agentid cert issue --ca demo/ca --agent coder --parent demo/planner --out-dir demo/coder
//! agentid delegate --chain demo/planner/grant.jwt --key demo/planner/key.pem --to-cert demo/coder/cert.pem \
//!     --bundle demo/coder/bundle.json --scope repo:read --ttl 10m --out demo/coder/chain.jwt > /dev/null
//! agentid revocations export --ca demo/ca --out demo/revocations.jwt
//!
//! # terminal 1: the librarian (admits the agents of example.org; --allow NAME narrows that)
//! cargo run --example agent_server -- --dir demo/librarian --revocations demo/revocations.jwt
//! # terminal 2: the coder presents its chain and makes two requests
//! cargo run --example agent_client -- --dir demo/coder --revocations demo/revocations.jwt \
//!     --scope repo:read --scope repo:write
//! #     coder | request "repo:read" -> granted
//! #     coder | request "repo:write" -> refused (scope_not_granted)
//! ```
//!
//! Options:
//! * `--dir DIR`: the credential directory (`cert.pem`, `key.pem`, `bundle.json`, and
//!   `chain.jwt` or else `grant.jwt`: the chain presented as this agent's authority).
//! * `--connect ADDR` (default `127.0.0.1:8443`).
//! * `--scope S` (repeatable): one request per value, in order.
//! * `--server NAME`: admit only a server agent of that name (default: any agent or service of
//!   our trust domain).
//! * `--revocations FILE`: the CA's revocation list, to check the server against. Without it,
//!   revocation checking is DISABLED and the client says so on stderr.
//!
//! Exit status 0 when the session ran and every request got an answer (granted or refused);
//! 1 when the server refused the connection (the reason is printed) or anything else failed.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentid::protocol::AgentId;
use agentid::transport::{AgentClient, MemoryCredentials, PeerPolicy, PeerVerification};
use anyhow::{bail, Context, Result};
use clap::Parser;

/// The coder: an agentid client agent that presents its delegation chain and makes requests.
#[derive(Debug, Parser)]
#[command(name = "agent_client")]
struct Args {
    /// Credential directory (cert.pem, key.pem, bundle.json, chain.jwt or grant.jwt).
    #[arg(long)]
    dir: PathBuf,
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    connect: SocketAddr,
    /// A request for this scope (repeatable, made in order).
    #[arg(long = "scope", value_name = "S")]
    scopes: Vec<String>,
    /// Admit only a server agent with this name (default: any agent or service of our trust
    /// domain).
    #[arg(long, value_name = "NAME")]
    server: Option<String>,
    /// The CA's revocation list (`agentid revocations export`).
    #[arg(long, value_name = "FILE")]
    revocations: Option<PathBuf>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn say(what: impl AsRef<str>) {
    println!("    coder | {}", what.as_ref());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    common::init_logging(true);
    common::exit_status("agent_client", run(Args::parse()).await)
}

async fn run(args: Args) -> Result<()> {
    let dir = common::load_credential_dir(&args.dir)?;
    let td = dir.identity.trust_domain();

    let (config, _) = common::revocations(
        dir.verifier_config()?,
        args.revocations.as_deref(),
        "a revoked server is",
    )?;
    let policy = match &args.server {
        Some(name) => PeerPolicy::agent(
            AgentId::new(&td, name).with_context(|| format!("--server {name:?}"))?,
        ),
        None => PeerPolicy::agents_in(td.clone()).or(PeerPolicy::services_in(td.clone())),
    };
    let credential = dir.credential_with_chain()?;
    match (&dir.chain, &dir.chain_file) {
        (Some(chain), Some(file)) => say(format!(
            "{} (cert {}) presenting {} (chain depth {})",
            dir.identity,
            dir.serial,
            file.display(),
            chain.depth()
        )),
        _ => say(format!(
            "{} (cert {}) has no chain: it holds no authority",
            dir.identity, dir.serial
        )),
    }
    let client = AgentClient::builder(
        Arc::new(MemoryCredentials::new(credential)),
        PeerVerification::new(config)?,
        policy,
    )
    .build()?;

    let mut session = match tokio::time::timeout(TIMEOUT, client.connect(args.connect)).await {
        Err(_) => bail!("connecting to {} timed out", args.connect),
        Ok(Err(e)) => {
            // No TCP connection is a failure to connect, not a refusal by the server.
            let what = match e.reason() {
                "io" => format!("failed: {}", e.explained()),
                reason => format!("refused: {reason}"),
            };
            say(format!("connection to {} {what}", args.connect));
            bail!("connection to {} refused: {e}", args.connect);
        }
        Ok(Ok(s)) => s,
    };
    say(format!(
        "connected to {} (accepted, server proof checked)",
        session.peer().id
    ));

    for wanted in &args.scopes {
        session.send(wanted.as_bytes()).await?;
        let reply = match tokio::time::timeout(TIMEOUT, session.recv()).await {
            Err(_) => bail!("no reply to {wanted:?} within {TIMEOUT:?}"),
            Ok(Err(e)) => {
                say(format!("session ended: {}", e.reason()));
                bail!("session ended: {e}");
            }
            Ok(Ok(None)) => bail!("the server closed the session"),
            Ok(Ok(Some(r))) => String::from_utf8_lossy(&r).to_string(),
        };
        match reply.strip_prefix("refused ") {
            Some(code) => say(format!("request \"{wanted}\" -> refused ({code})")),
            None if reply == "granted" => say(format!("request \"{wanted}\" -> granted")),
            None => bail!("unexpected reply to {wanted:?}: {reply:?}"),
        }
    }
    session.close("normal", "done").await?;
    Ok(())
}
