//! `agentid ca init`: a new CA directory.

use std::path::PathBuf;
use std::time::SystemTime;

use agentid_ca::{init_ca, InitOptions};
use agentid_protocol::TrustDomain;
use serde_json::json;

use crate::common::{print_json, print_text, Format, FormatArg, KeyType};
use crate::error::{CliResult, Context};

/// `ca` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a CA: root and issuing certificates, grant and revocation keys, a deny-all
    /// `policy.toml`, the store and the audit log.
    Init(InitArgs),
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
    #[arg(long, value_enum, default_value_t = KeyType::P256)]
    pub key_type: KeyType,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs a `ca` subcommand.
pub fn run(cmd: &CaCommand) -> CliResult {
    match cmd {
        CaCommand::Init(a) => init(a),
    }
}

fn init(args: &InitArgs) -> CliResult {
    let td = TrustDomain::parse(&args.trust_domain)
        .context(format!("bad --trust-domain {:?}", args.trust_domain))?;
    let mut opts = InitOptions::new(td);
    opts.key_type = match args.key_type {
        KeyType::P256 => agentid_ca::KeyType::P256,
        KeyType::Ed25519 => agentid_ca::KeyType::Ed25519,
    };
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
