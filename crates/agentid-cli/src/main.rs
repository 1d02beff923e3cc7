//! `agentid`: per-task mTLS identities and delegation chains for AI agents, from the command line.
//!
//! Data goes to stdout (`--format json` where it is data), logs to stderr (`-v`, or the
//! `AGENTID_LOG` filter; by default only this binary's warnings, such as a `--danger-*` flag
//! in use). On failure the exit status is non-zero and stderr holds one line (after those
//! warnings): `agentid: <reason>`; with `--format json`, stdout also holds one document
//! `{"error": {"code", "message", "hint"}}` (verifications print their report instead). Status 1: the command failed; 2: the command line is wrong; 3: a
//! verification ran and said "invalid".
//!
//! Secrets never travel on the command line: keys are read from files (mode 0600).
#![forbid(unsafe_code)]

mod audit;
mod bundle;
mod ca;
mod cert;
mod chain;
mod common;
mod delegate;
mod error;
mod exec;
mod files;
mod net;
mod revocations;
mod revoke;
mod trust;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::common::Format;
use crate::error::{one_line, CliError, CliResult, Exit};

/// Per-task mTLS identities and delegation chains for AI agents.
#[derive(Debug, Parser)]
#[command(name = "agentid", version, propagate_version = true)]
struct Cli {
    /// More logs on stderr (-v info, -vv debug). `AGENTID_LOG` takes a full filter.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Certificate authority setup.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Certificates: issue, renew, sign a CSR, inspect, verify.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Append a link to a chain, handing a narrower scope to the holder of a certificate.
    Delegate(delegate::DelegateArgs),
    /// Delegation chains.
    #[command(subcommand)]
    Chain(chain::ChainCommand),
    /// Revoke a certificate's key, a task, an agent, a key or a grant.
    Revoke(revoke::RevokeArgs),
    /// Revocation lists.
    #[command(subcommand)]
    Revocations(revoke::RevocationsCommand),
    /// Trust bundles.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// The CA store's audit chain: verify, export.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Bootstrap tokens for enrollment with the CA service.
    #[command(subcommand)]
    Token(net::TokenCommand),
    /// Enroll with a bootstrap token file: a key made here, a certificate from the CA service.
    Enroll(net::EnrollArgs),
    /// Certificates from the CA service for an agent's CSR: open a task, issue a child.
    #[command(subcommand)]
    Task(net::TaskCommand),
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        // This binary's warnings (a `--danger-*` flag in use, a plain-HTTP listener off
        // loopback), not other crates' (e.g. an issuance refusal, which repeats the error this
        // binary prints). The binary is named `agentid`, so its events' targets are
        // `agentid::...`; a directive matches by target prefix and the longest match wins, so
        // `agentid_` keeps the library crates (`agentid_ca`, `agentid_transport`, ...) at error.
        0 => "agentid=warn,agentid_=error,error",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("AGENTID_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(filter)
        .without_time()
        .with_target(false)
        .try_init();
}

fn run(cli: &Cli) -> CliResult {
    match &cli.command {
        Command::Ca(c) => ca::run(c),
        Command::Cert(c) => cert::run(c),
        Command::Delegate(a) => delegate::run(a),
        Command::Chain(c) => chain::run(c),
        Command::Revoke(a) => revoke::run_revoke(a),
        Command::Revocations(c) => revoke::run_revocations(c),
        Command::Bundle(c) => bundle::run(c),
        Command::Audit(c) => audit::run(c),
        Command::Token(c) => net::run_token(c),
        Command::Enroll(a) => net::run_enroll(a),
        Command::Task(c) => net::run_task(c),
    }
}

/// What to do with a clap error: print clap's own rendering (help, version, and the usage with
/// the command list when no command was given), or one `agentid: ...` line (status 2).
enum ClapOutcome {
    /// Print clap's rendering as is, then exit with this status.
    Print(u8),
    /// One line on stderr.
    Line(CliError),
}

/// Sorts a clap error: help and version are printed as clap prints them (status 0); a missing
/// command prints clap's usage with the command list (status 2); anything else is one line
/// with one hint (status 2).
fn usage_error(e: &clap::Error) -> ClapOutcome {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => return ClapOutcome::Print(0),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            return ClapOutcome::Print(Exit::Usage.code())
        }
        _ => {}
    }
    let rendered = e.render().to_string();
    let main = rendered.split("\n\nUsage:").next().unwrap_or_default();
    let main = main.trim().strip_prefix("error:").unwrap_or(main).trim();
    // clap ends some messages with its own pointer to --help: one hint is enough.
    let main = main
        .replace("For more information, try '--help'.", "")
        .trim()
        .to_owned();
    let mut msg = one_line(&main);
    if msg.is_empty() {
        msg = "bad command line".into();
    }
    ClapOutcome::Line(CliError::usage(format!("{msg} (see --help)")))
}

/// The `--format` of the innermost subcommand that has one (`text` when none has; the
/// bundle formats of `bundle export` are not this flag's type and count as none).
fn output_format(matches: &clap::ArgMatches) -> Format {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    m.try_get_one::<Format>("format")
        .ok()
        .flatten()
        .copied()
        .unwrap_or_default()
}

/// Parses the command line, with the output format of the chosen command.
fn parse() -> Result<(Cli, Format), clap::Error> {
    let matches = Cli::command().try_get_matches()?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, output_format(&matches)))
}

fn main() -> ExitCode {
    // A bug must still end in one line on stderr, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("agentid: internal error: {}", one_line(&info.to_string()));
    }));
    // Clap's own errors come before the format is known: they stay on stderr only.
    let (cli, format) = match parse() {
        Ok(c) => c,
        Err(e) => match usage_error(&e) {
            ClapOutcome::Print(code) => {
                let _ = e.print();
                return ExitCode::from(code);
            }
            ClapOutcome::Line(err) => {
                eprintln!("agentid: {err}");
                return ExitCode::from(err.exit.code());
            }
        },
    };
    init_logging(cli.verbose);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if format == Format::Json {
                if let Some(doc) = err.to_json() {
                    // Best effort: stdout may be closed; the stderr line still follows.
                    let _ = common::print_json(&doc);
                }
            }
            eprintln!("agentid: {err}");
            ExitCode::from(err.exit.code())
        }
    }
}
