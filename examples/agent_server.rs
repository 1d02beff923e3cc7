//! The server agent of `agent_pair` (the librarian) as its own process, for two terminals. It
//! takes the files that `agentid cert issue` writes and answers each request of an authenticated
//! agent with "granted" or "refused <code>", authorizing every request against the client's
//! verified delegation chain.
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
//! * `--dir DIR`: the credential directory (`cert.pem`, `key.pem`, `bundle.json`).
//! * `--listen ADDR` (default `127.0.0.1:8443`); with port 0 the bound address is printed.
//! * `--allow NAME` (repeatable): admit only these agent names. By default every agent of the
//!   server's own trust domain is admitted (its requests are still authorized one by one).
//! * The certificate is re-read when `agentid cert renew --ca demo/ca --dir demo/librarian`
//!   replaces it: new handshakes use the renewed one, live sessions carry on.
//! * `--revocations FILE`: the CA's revocation list (`agentid revocations export`), re-read when
//!   the file changes: a list that covers a live session's peer or chain ends that session at
//!   once. A file it can no longer read (gone, or writable by others) is said once on stderr:
//!   the list held stays in force until it goes stale. Without it, revocation checking is
//!   DISABLED and the server says so on stderr.
//! * `--once`: serve one connection and exit: status 0 if the agent was authenticated and the
//!   session ended normally, 1 otherwise (for tests).
//!
//! Stdout carries the transcript, stderr the logs (`RUST_LOG` filter, default `info`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentid::files::read_token_file;
use agentid::protocol::{AgentId, Scope};
use agentid::transport::{
    accept_tcp, AgentServer, MemoryCredentials, PeerPolicy, PeerVerification, Session,
};
use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

/// The librarian: an agentid server agent that authorizes each request against the client's
/// delegation chain.
#[derive(Debug, Parser)]
#[command(name = "agent_server")]
struct Args {
    /// Credential directory written by `agentid cert issue` (cert.pem, key.pem, bundle.json).
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Admit only agents with this name (repeatable); default: every agent of our trust domain.
    #[arg(long = "allow", value_name = "NAME")]
    allow: Vec<String>,
    /// The CA's revocation list (`agentid revocations export`); re-read when it changes.
    #[arg(long, value_name = "FILE")]
    revocations: Option<PathBuf>,
    /// Serve one connection, then exit (status 0 only if it was accepted and ended normally).
    #[arg(long)]
    once: bool,
}

fn say(what: impl AsRef<str>) {
    println!("librarian | {}", what.as_ref());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    common::init_logging(true);
    common::exit_status("agent_server", run(Args::parse()).await)
}

async fn run(args: Args) -> Result<()> {
    let dir = common::load_credential_dir(&args.dir)?;
    let td = dir.identity.trust_domain();

    let (config, list) = common::revocations(
        dir.verifier_config()?,
        args.revocations.as_deref(),
        "revoked certificates, keys, agents, tasks and grants are",
    )?;
    let revocations = args.revocations.clone().zip(list);
    if let Some((path, _)) = &revocations {
        tracing::info!(file = %path.display(), "revocation checking enabled (fail closed when the list goes stale)");
    }
    let verification = PeerVerification::new(config)?;
    if let Some((path, list)) = revocations {
        tokio::spawn(watch_revocations(path, list, verification.clone()));
    }
    let credentials = Arc::new(MemoryCredentials::new(dir.credential()?));
    tokio::spawn(watch_certificate(
        args.dir.clone(),
        dir.serial.clone(),
        dir.not_after,
        credentials.clone(),
        verification.clone(),
    ));

    let (policy, admitted) = if args.allow.is_empty() {
        (PeerPolicy::agents_in(td.clone()), format!("agents of {td}"))
    } else {
        let agents = args
            .allow
            .iter()
            .map(|name| AgentId::new(&td, name).with_context(|| format!("--allow {name:?}")))
            .collect::<Result<Vec<_>>>()?;
        let names = agents
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        (PeerPolicy::agents(agents), names)
    };
    // The librarian serves; it presents no chain of its own.
    let server = AgentServer::builder(credentials, verification, policy).build()?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    say(format!(
        "{} (cert {}) listening on {addr}",
        dir.identity, dir.serial
    ));
    say(format!("mTLS 1.3, ALPN agentid/1, admitting {admitted}"));

    // accept_tcp logs and backs off on accept errors (EMFILE when out of file descriptors):
    // a busy server slows down instead of exiting.
    if args.once {
        let (tcp, from) = accept_tcp(&listener).await;
        return serve(&server, tcp, from).await;
    }
    loop {
        let (tcp, from) = accept_tcp(&listener).await;
        let server = server.clone();
        tokio::spawn(async move {
            // Outcomes are already on stdout and in the log.
            let _ = serve(&server, tcp, from).await;
        });
    }
}

/// One connection: the handshake, then one reply per request until the client closes.
async fn serve(server: &AgentServer, tcp: TcpStream, from: SocketAddr) -> Result<()> {
    let mut session = match server.accept_from(tcp, Some(from)).await {
        Ok(s) => s,
        Err(e) => {
            say(format!("refused {from}: {}", e.explained()));
            bail!("handshake with {from} failed: {e}");
        }
    };
    let peer = session.peer().clone();
    match &peer.chain {
        Some(chain) => say(format!(
            "authenticated {} (cert {}), chain depth {}, effective scope \"{}\"",
            peer.id, peer.cert_serial, chain.depth, chain.scope
        )),
        None => say(format!(
            "authenticated {} (cert {}), no chain: no authority",
            peer.id, peer.cert_serial
        )),
    }
    let result = answer(&mut session).await;
    match &result {
        Ok(n) => say(format!(
            "{} closed the session after {n} request(s)",
            peer.id
        )),
        Err(e) => say(format!("session with {} ended: {}", peer.id, e.explained())),
    }
    result.map(|_| ()).map_err(Into::into)
}

async fn answer(session: &mut Session<TcpStream>) -> agentid::transport::Result<usize> {
    let mut answered = 0;
    while let Some(request) = session.recv().await? {
        let wanted = String::from_utf8_lossy(&request).trim().to_owned();
        // Authorization is per request, against the verified chain.
        let outcome = Scope::parse(&wanted)
            .map_err(agentid::transport::Error::from)
            .and_then(|scope| session.authorize(&scope));
        let reply = match outcome {
            Ok(()) => "granted".to_owned(),
            Err(e) => format!("refused {}", e.reason()),
        };
        say(format!("request \"{wanted}\" -> {reply}"));
        session.send(reply.as_bytes()).await?;
        answered += 1;
    }
    Ok(answered)
}

/// Re-reads the revocation list every second and applies a changed one: the CA's newer list
/// ends the live sessions it covers. A bad or older list is logged and ignored (the current one
/// stays in force). A file that cannot be read (gone, or refused: one anybody else could have
/// changed is not read) is logged once per distinct reason, and again when it is read again:
/// the list held stays in force only until it goes stale.
async fn watch_revocations(
    path: PathBuf,
    mut current: String,
    verification: Arc<PeerVerification>,
) {
    let mut unread: Option<String> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let list = match read_token_file(Path::new(&path)) {
            Ok(list) => list,
            Err(e) => {
                let why = e.to_string();
                if unread.as_deref() != Some(why.as_str()) {
                    tracing::warn!(
                        file = %path.display(),
                        error = %why,
                        "revocation list not re-read: the list held stays in force until it goes \
                         stale, then every peer is refused"
                    );
                    unread = Some(why);
                }
                continue;
            }
        };
        if unread.take().is_some() {
            tracing::info!(file = %path.display(), "revocation list read again");
        }
        if list == current {
            continue;
        }
        match verification.apply_revocation_list(&list) {
            Ok(()) => tracing::info!(file = %path.display(), "new revocation list applied"),
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "revocation list refused"),
        }
        current = list;
    }
}

/// Re-reads the credential directory every second and rotates to a renewed certificate
/// (`agentid cert renew --dir DIR`): new handshakes use it, live sessions carry on. A
/// certificate that does not validate against our trust bundle is never published. Once the
/// certificate held has expired (every handshake is then refused `no_credential`) and the
/// directory holds no renewed one, says so once on stdout, with the renewal to run. A directory
/// refused on two polls in a row (not a renewal mid-write: a file others could write, say) is
/// logged once at warn, with why.
async fn watch_certificate(
    dir: PathBuf,
    mut serial: String,
    mut not_after: u64,
    credentials: Arc<MemoryCredentials>,
    verification: Arc<PeerVerification>,
) {
    let mut expiry_said = false;
    // A directory refused on two polls in a row is not mid-write: said once, at warn.
    let (mut refused, mut refusal_said) = (None::<String>, None::<String>);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let loaded = match common::load_credential_dir(&dir) {
            Ok(d) if d.serial == serial => {
                (refused, refusal_said) = (None, None);
                continue;
            }
            Ok(d) => {
                (refused, refusal_said) = (None, None);
                d
            }
            // Mid-write, or expired: keep the current credential and say why.
            Err(e) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if now > not_after && !expiry_said {
                    expiry_said = true;
                    say(format!(
                        "certificate {serial} expired: every handshake is refused \
                         (no_credential) until {} holds a renewed one: {e}",
                        dir.display()
                    ));
                } else {
                    let text = e.to_string();
                    if refused.as_ref() == Some(&text) && refusal_said.as_ref() != Some(&text) {
                        tracing::warn!(error = %e, "credential directory not reloaded");
                        refusal_said = Some(text.clone());
                    } else {
                        tracing::debug!(error = %e, "credential directory not reloaded");
                    }
                    refused = Some(text);
                }
                continue;
            }
        };
        let rotated = loaded
            .credential()
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                let trust = verification.trust_store();
                Ok(credentials.rotate(c, &trust)?)
            });
        match rotated {
            Ok(()) => {
                say(format!(
                    "rotated to the renewed certificate {}",
                    loaded.serial
                ));
                not_after = loaded.not_after;
                expiry_said = false;
            }
            Err(e) => tracing::warn!(error = %e, "renewed certificate refused"),
        }
        serial = loaded.serial;
    }
}
