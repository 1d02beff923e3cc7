//! `agentid ca init`: a new CA directory. `agentid ca serve`: the CA as a network service.

use std::path::PathBuf;
use std::time::SystemTime;

use agentid_ca::{init_ca, InitOptions};
use agentid_protocol::TrustDomain;
use serde_json::json;

use crate::common::{key_type_parser, print_json, print_text, Format, FormatArg, KeyType};
use crate::error::{bad_arg, CliError, CliResult, Context};

/// `ca` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a CA: root and issuing certificates, grant and revocation keys, a deny-all
    /// `policy.toml`, the audit checkpoint key and the store (which holds the audit chain).
    Init(InitArgs),
    /// Serve the CA API (spec/CA-API.md) over mutual TLS: its certificate is
    /// `spiffe://TD/svc/agentid-ca`, so `policy.toml` needs a `[services.agentid-ca]` rule with
    /// `requesters = ["operator"]`. `policy.toml` is read once, when the service starts:
    /// restart it after editing the policy. Runs until interrupted.
    Serve(ServeArgs),
    /// List the live tasks of the agents the caller may list (a service with `list`), through
    /// the CA service.
    List(crate::net::ListArgs),
}

/// Arguments of `ca serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The CA directory made by `agentid ca init` (whoever can read it is the operator).
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: PathBuf,
    /// The mutual-TLS listener (every route), e.g. `127.0.0.1:8443` (port 0: any free port;
    /// the bound address is printed on stdout).
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// The enrollment listener (`POST /v1/enroll`, `GET /v1/bundle`, `GET /healthz` only; TLS
    /// without client certificates), e.g. `127.0.0.1:8444`.
    #[arg(long, value_name = "ADDR")]
    pub enroll_listen: Option<std::net::SocketAddr>,
    /// The metrics listener: plain HTTP (no TLS), exactly `GET /metrics` in the OpenMetrics text
    /// format that Prometheus scrapes, e.g. `127.0.0.1:9464`. Bind it to loopback or a private
    /// network.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Enrollment requests one source address may make per 10 s before `429 rate_limited`
    /// (default 30). Raise it when many agents enroll from behind one address (a NAT gateway).
    #[arg(long, value_name = "N")]
    pub enroll_rate: Option<u32>,
    /// TLS handshakes one source address may have in progress on the enrollment listener
    /// (default 8; past it the oldest is dropped), and connections it may hold there once
    /// their handshake is done (past it a new one is closed at once). Raise it with
    /// `--enroll-rate`.
    #[arg(long, value_name = "N")]
    pub enroll_pending_per_source: Option<usize>,
    /// Bootstrap tokens one service may hold outstanding (made through `POST /v1/tokens`, not
    /// redeemed, not expired; default 10,000): past it the service is refused
    /// `409 cap_reached` until one is redeemed or expires.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens_per_service: Option<u64>,
}

/// Arguments of `ca init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The trust domain, e.g. `example.org`.
    #[arg(long)]
    pub trust_domain: String,
    /// The CA directory (created; refused if it already holds a CA). Whoever can read it is
    /// the operator: keep it private.
    #[arg(long)]
    pub dir: PathBuf,
    /// Key type of the CA hierarchy and the authority keys.
    #[arg(long, value_parser = key_type_parser(), default_value_t = KeyType::P256)]
    pub key_type: KeyType,
    /// The store: `sqlite` (default, `ca.db` in DIR) or `postgres://USER@HOST[:PORT]/DB`, a
    /// database that several `ca serve` replicas share (needs agentid built with the
    /// `postgres` feature). Never a password in the URL: use --store-password-file or
    /// PGPASSFILE.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// A file holding the PostgreSQL password alone, mode 0600.
    #[arg(long, value_name = "FILE", requires = "store")]
    pub store_password_file: Option<PathBuf>,
    /// The PEM file of the CA of the PostgreSQL server's certificate (TLS is required unless
    /// the database is on loopback or a Unix socket).
    #[arg(long, value_name = "FILE", requires = "store")]
    pub store_ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs a `ca` subcommand.
pub fn run(cmd: &CaCommand) -> CliResult {
    match cmd {
        CaCommand::Init(a) => init(a),
        CaCommand::Serve(a) => serve(a),
        CaCommand::List(a) => crate::net::run_list(a),
    }
}

fn init(args: &InitArgs) -> CliResult {
    let td = parse_trust_domain(&args.trust_domain)?;
    let mut opts = InitOptions::new(td);
    opts.key_type = args.key_type;
    if let Some(store) = &args.store {
        agentid_ca::config::check_store(store).context("bad --store")?;
        opts.store = (store != "sqlite").then(|| store.clone());
    }
    let absolute =
        |p: &PathBuf| std::path::absolute(p).context(format!("bad path {}", p.display()));
    opts.store_password_file = args
        .store_password_file
        .as_ref()
        .map(absolute)
        .transpose()?;
    opts.store_ca_file = args.store_ca_file.as_ref().map(absolute).transpose()?;
    let cfg = init_ca(&args.dir, &opts, SystemTime::now())?;
    let policy = args.dir.join("policy.toml");
    match args.format.format {
        Format::Json => print_json(&json!({
            "trust_domain": cfg.trust_domain.as_str(),
            "key_type": cfg.key_type.as_str(),
            "dir": args.dir.display().to_string(),
            "policy": policy.display().to_string(),
        })),
        Format::Text => print_text(&format!(
            "CA for trust domain {} ({}) in {}\nNothing may be issued until {} allows it: edit it first.\n",
            cfg.trust_domain.as_str(),
            cfg.key_type.as_str(),
            args.dir.display(),
            policy.display()
        )),
    }
}

/// Parses `--trust-domain` (status 2 when malformed), with a hint for the usual mistakes.
pub fn parse_trust_domain(s: &str) -> CliResult<TrustDomain> {
    TrustDomain::parse(s).map_err(|e| {
        let hint = if let Some(rest) = s.strip_prefix("spiffe://") {
            format!(
                ": drop the scheme, e.g. --trust-domain {}",
                rest.trim_end_matches('/')
            )
        } else if s.contains("://") {
            ": a trust domain is a bare name such as example.org, without a scheme".to_owned()
        } else if s.bytes().any(|b| b.is_ascii_uppercase()) {
            format!(
                ": use lowercase, e.g. --trust-domain {}",
                s.to_ascii_lowercase()
            )
        } else {
            String::new()
        };
        bad_arg("--trust-domain", s, format!("{}{hint}", e.detail()))
    })
}

fn serve(args: &ServeArgs) -> CliResult {
    let ca = crate::cert::open_ca(&args.ca)?;
    let mut options = agentid_ca::server::ServiceOptions::default();
    if let Some(n) = args.enroll_rate {
        options.enroll_rate_per_source = n;
    }
    if let Some(n) = args.enroll_pending_per_source {
        options.enroll_limits.max_pending_per_source = n;
    }
    if let Some(n) = args.max_tokens_per_service {
        options.max_tokens_per_service = n;
    }
    let service = agentid_ca::server::CaService::new(ca, options)
        .context("cannot start the CA service (does policy.toml have [services.agentid-ca] with requesters = [\"operator\"]?)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        // Every listener is bound before any is announced: a service that will not run claims
        // no address.
        let listener = bind("--listen", args.listen).await?;
        let enroll = match args.enroll_listen {
            None => None,
            Some(e) => Some(bind("--enroll-listen", e).await?),
        };
        let metrics = match args.metrics_listen {
            None => None,
            Some(m) => {
                if !m.ip().is_loopback() {
                    tracing::warn!(addr = %m, "the metrics listener is plain HTTP and not on loopback");
                }
                Some(bind("--metrics-listen", m).await?)
            }
        };
        print_text(&format!("listening on {}\n", local_addr(&listener)?))?;
        if let Some(l) = &enroll {
            print_text(&format!("enrollment listening on {}\n", local_addr(l)?))?;
        }
        if let Some(l) = &metrics {
            print_text(&format!("metrics listening on {}\n", local_addr(l)?))?;
        }
        service
            .serve_all(listener, enroll, metrics)
            .await
            .context("the CA service stopped")
    })
}

/// Binds the listener `flag` names, saying what to do when the address is taken.
async fn bind(flag: &str, addr: std::net::SocketAddr) -> CliResult<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let next = if e.kind() == std::io::ErrorKind::AddrInUse {
            ": another process listens there (another `agentid ca serve`?): stop it, or give another address"
        } else {
            ""
        };
        CliError::failed(format!("cannot listen on {addr} ({flag}): {e}{next}"))
    })
}

fn local_addr(l: &tokio::net::TcpListener) -> CliResult<std::net::SocketAddr> {
    l.local_addr().context("cannot read the listener's address")
}
