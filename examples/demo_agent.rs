//! One agent of the three-terminal demo: a CA service (`agentid ca serve`), a server agent and a
//! client agent that keep running with nobody touching them. Each agent enrolls from a bootstrap
//! token file (its key never leaves it), then keeps itself current on its own:
//!
//! * its certificate is renewed by an `Enroller` at 40-50% of its lifetime;
//! * the signed agentid bundle (grant and revocation keys) comes from the CA, verified with the
//!   bundle-signing public key (`bundle-signing.pub`, distributed like the root), and newer ones
//!   are applied as the operator signs them (`BundleWatcher`);
//! * revocation lists are long-polled and applied to its live verification
//!   (`RevocationWatcher`): a revocation at the CA ends the live sessions it covers.
//!
//! Revocation lists are REQUIRED here: a peer is refused while no list is held.
//!
//! ```sh
//! cargo build -p agentid-cli && export PATH="$PWD/target/debug:$PATH"
//! agentid ca init --trust-domain example.org --dir demo/ca
//! cat > demo/ca/policy.toml <<'EOF'
//! [defaults]
//! ttl = "5m"
//! task_ttl = "2h"
//! max_task_ttl = "8h"
//!
//! [agents.librarian]
//! scopes = ["repo:serve"]
//! requesters = ["operator", "bootstrap"]
//!
//! [agents.planner]
//! scopes = ["repo:read"]
//! requesters = ["operator", "bootstrap"]
//!
//! [services.agentid-ca]
//! requesters = ["operator"]
//! EOF
//! # terminal 1: the CA (mTLS listener for renewals and feeds, enrollment listener for tokens)
//! agentid ca serve --ca demo/ca --listen 127.0.0.1:8443 --enroll-listen 127.0.0.1:8444
//! # the operator makes one token per agent (files, never argv, carry the secret)
//! agentid token create --ca demo/ca --enroll-url https://127.0.0.1:8444 --renew-url https://127.0.0.1:8443 \
//!     --agent librarian --scope repo:serve --task-ttl 2h --out demo/librarian.token
//! agentid token create --ca demo/ca --enroll-url https://127.0.0.1:8444 --renew-url https://127.0.0.1:8443 \
//!     --agent planner --scope repo:read --task-ttl 2h --out demo/planner.token
//! # terminal 2: the server agent
//! cargo run --example demo_agent -- serve --token-file demo/librarian.token \
//!     --bundle-signing-key demo/ca/bundle-signing.pub --listen 127.0.0.1:9443
//! # terminal 3: the client agent, one request every 10 s until stopped
//! cargo run --example demo_agent -- call --token-file demo/planner.token \
//!     --bundle-signing-key demo/ca/bundle-signing.pub --connect 127.0.0.1:9443 --scope repo:read --every 10s
//! ```
//!
//! The client prints one line per round: the result, its certificate's serial (it changes at
//! every renewal) and the revocation list's `seq`. `--rounds N` stops after N rounds and exits
//! 0 only if every round was granted. Stdout carries the transcript, stderr the logs
//! (`RUST_LOG`, default `info`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentid::protocol::{
    BundleSet, PublicKey, Scope, SpiffeId, TaskKey, TrustBundle, VerifierConfig,
};
use agentid::transport::{
    AgentClient, AgentServer, CredentialSource, PeerPolicy, PeerVerification,
};
use agentid_transport::enroll::{
    read_token_file, BundleApplier, BundleWatcher, CaClient, Enroller, RevocationWatcher,
    WatchOptions, WatcherHandle,
};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "demo_agent")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The bootstrap token file (`agentid token create --out`).
    #[arg(long)]
    token_file: PathBuf,
    /// The CA's bundle-signing public key (`bundle-signing.pub` of the CA directory).
    #[arg(long)]
    bundle_signing_key: PathBuf,
    /// How often to ask the CA for a newer signed bundle.
    #[arg(long, default_value = "60s", value_parser = humantime_secs)]
    bundle_interval: Duration,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Serve: answer each request (a scope) with "granted" or "refused CODE".
    Serve {
        #[command(flatten)]
        common: Common,
        /// Where to listen; with port 0 the bound address is printed.
        #[arg(long, default_value = "127.0.0.1:9443")]
        listen: SocketAddr,
    },
    /// Call: connect and request `--scope` every `--every`, a new session each round.
    Call {
        #[command(flatten)]
        common: Common,
        /// The server agent's address.
        #[arg(long, default_value = "127.0.0.1:9443")]
        connect: SocketAddr,
        /// The scope requested each round.
        #[arg(long)]
        scope: String,
        /// The time between rounds.
        #[arg(long, default_value = "10s", value_parser = humantime_secs)]
        every: Duration,
        /// Stop after this many rounds (default: never).
        #[arg(long)]
        rounds: Option<u64>,
    },
}

/// `10s`, `5m`, `1h` or a bare number of seconds.
fn humantime_secs(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(secs.max(1)))
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    common::init_logging(true);
    let r = match Args::parse().mode {
        Mode::Serve { common, listen } => serve(common, listen).await,
        Mode::Call {
            common,
            connect,
            scope,
            every,
            rounds,
        } => call(common, connect, &scope, every, rounds).await,
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo_agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An enrolled agent that keeps itself current.
struct Agent {
    identity: SpiffeId,
    credentials: Arc<agentid::transport::MemoryCredentials>,
    /// Verification for peers: lists required, grant and revocation keys from the signed bundle.
    verification: Arc<PeerVerification>,
    _bundles: WatcherHandle,
    _revocations: WatcherHandle,
}

/// Reads the pinned bundle-signing key: only if this user holds it (`agentid_fs::read_held`, as
/// a credential directory's files are read), since whoever could replace it would choose the
/// grant and revocation keys this agent takes from signed bundles.
fn read_spki_pem(path: &Path) -> Result<PublicKey> {
    use base64::Engine as _;
    let bytes = agentid_fs::read_held(path, agentid_fs::MAX_FILE_BYTES)?;
    let text =
        String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", path.display()))?;
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .with_context(|| format!("{}: not a PEM public key", path.display()))?;
    PublicKey::from_spki_der(&der).with_context(|| format!("{}: not a public key", path.display()))
}

async fn enroll(common: &Common) -> Result<Agent> {
    let token = read_token_file(&common.token_file)
        .with_context(|| common.token_file.display().to_string())?;
    let signing = read_spki_pem(&common.bundle_signing_key)?;
    let key = TaskKey::generate(agentid::protocol::Algorithm::Es256)?;
    let (enroller, response, bundle_json) = Enroller::from_token_file(&token, key, TIMEOUT).await?;
    // Renewals ask for the lifetime the token gave the first certificate (without it the CA
    // would apply its policy's default).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let life = enroller
        .credentials()
        .current()
        .map_or(0, |c| c.info().not_after.saturating_sub(now));
    let enroller = enroller.with_ttl(Some(Duration::from_secs(life.max(1))));
    let identity = SpiffeId::parse(&response.identity)?;
    let td = identity.trust_domain();
    println!("enrolled {identity} (cert {})", response.serial);
    let pinned = || -> Result<BundleSet> {
        let mut set = BundleSet::new();
        set.insert(TrustBundle::parse(&td, &bundle_json)?)?;
        Ok(set)
    };
    // How this agent checks the CA (the pinned root; feeds are not needed for that).
    let ca_verification = PeerVerification::new(
        VerifierConfig::new(identity.clone(), pinned()?)
            .danger_accept_missing_or_stale_revocations(),
    )?;
    let verification = PeerVerification::new(VerifierConfig::new(identity.clone(), pinned()?))?;
    let credentials = enroller.credentials();
    let renew_url = token.renew_url.as_deref().unwrap_or(&token.ca_url);
    let client = || {
        CaClient::new(
            renew_url,
            credentials.clone(),
            ca_verification.clone(),
            TIMEOUT,
        )
    };
    let options = WatchOptions::default().with_bundle_interval(common.bundle_interval);
    let applier = Arc::new(BundleApplier::new(verification.clone(), signing, td));
    let bundles = BundleWatcher::new(client()?, applier, options.clone()).spawn();
    if !bundles.wait_for(TIMEOUT * 3, |s| s.applied > 0).await {
        bail!(
            "no signed agentid bundle from the CA: {:?}",
            bundles.status()
        );
    }
    // Lists are signed by a revocation key that only the signed bundle carries: follow the
    // feed once it is applied (a first poll before it would fail and back off).
    let revocations = RevocationWatcher::new(client()?, verification.clone(), options).spawn();
    if !revocations.wait_for(TIMEOUT * 3, |s| s.seq.is_some()).await {
        bail!("no revocation list from the CA: {:?}", revocations.status());
    }
    tokio::spawn(async move {
        if let Err(e) = enroller.run().await {
            tracing::error!(error = %e, "renewal failed for good: the certificate will expire");
        }
    });
    Ok(Agent {
        identity,
        credentials,
        verification,
        _bundles: bundles,
        _revocations: revocations,
    })
}

async fn serve(common: Common, listen: SocketAddr) -> Result<()> {
    let agent = enroll(&common).await?;
    let td = agent.identity.trust_domain();
    let server = Arc::new(
        AgentServer::builder(
            agent.credentials.clone(),
            agent.verification.clone(),
            PeerPolicy::agents_in(td),
        )
        .build()?,
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            let mut session = match server.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    println!("refused a connection: {}", e.reason());
                    return;
                }
            };
            while let Ok(Ok(Some(req))) = tokio::time::timeout(TIMEOUT, session.recv()).await {
                let wanted = String::from_utf8_lossy(&req).to_string();
                let reply = match Scope::parse(&wanted).map(|s| session.authorize(&s)) {
                    Ok(Ok(())) => "granted".to_owned(),
                    Ok(Err(e)) => format!("refused {}", e.reason()),
                    Err(_) => "refused bad_request".to_owned(),
                };
                println!("{} asked for {wanted:?}: {reply}", session.peer().id);
                if session.send(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn call(
    common: Common,
    connect: SocketAddr,
    scope: &str,
    every: Duration,
    rounds: Option<u64>,
) -> Result<()> {
    let agent = enroll(&common).await?;
    let td = agent.identity.trust_domain();
    let client = AgentClient::builder(
        agent.credentials.clone(),
        agent.verification.clone(),
        PeerPolicy::agents_in(td),
    )
    .build()?;
    let mut failed = 0u64;
    let mut round = 0u64;
    while rounds.is_none_or(|n| round < n) {
        round += 1;
        let serial = agent
            .credentials
            .current()
            .map(|c| c.info().serial.clone())
            .unwrap_or_default();
        let seq = agent
            .verification
            .verifier()
            .config()
            .revocation_list(&agent.identity.trust_domain())
            .map(|l| l.seq());
        let outcome = async {
            let mut s = tokio::time::timeout(TIMEOUT, client.connect(connect)).await??;
            s.send(scope.as_bytes()).await?;
            let reply = tokio::time::timeout(TIMEOUT, s.recv())
                .await??
                .context("the server closed the session")?;
            let _ = s.close("normal", "done").await;
            anyhow::Ok(String::from_utf8_lossy(&reply).to_string())
        }
        .await;
        let line = match outcome {
            Ok(r) if r == "granted" => "granted".to_owned(),
            Ok(r) => {
                failed += 1;
                r
            }
            Err(e) => {
                failed += 1;
                format!("failed: {e:#}")
            }
        };
        println!("round {round}: {scope} -> {line} (cert {serial}, revocation list seq {seq:?})");
        if rounds.is_none_or(|n| round < n) {
            tokio::time::sleep(every).await;
        }
    }
    if failed > 0 {
        bail!("{failed} of {round} rounds failed");
    }
    Ok(())
}
