//! `agentid bundle export`: the trust bundle of the CA's trust domain.

use std::path::PathBuf;

use crate::cert::CaDirArg;
use crate::error::CliResult;
use crate::files;

/// `bundle` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Print (or write) the trust bundle.
    Export(ExportArgs),
}

/// Bundle formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BundleFormat {
    /// SPIFFE bundle (JWK Set): X.509 authorities, grant and revocation keys.
    #[default]
    Spiffe,
    /// PEM root certificates only (for TLS stacks; no grant or revocation keys).
    Pem,
}

/// Arguments of `bundle export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub ca: CaDirArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = BundleFormat::Spiffe)]
    pub format: BundleFormat,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs a `bundle` subcommand.
pub fn run(cmd: &BundleCommand) -> CliResult {
    match cmd {
        BundleCommand::Export(a) => {
            let ca = a.ca.open()?;
            let text = match a.format {
                BundleFormat::Spiffe => ca.trust_bundle()?.to_json(),
                BundleFormat::Pem => ca.bundle_pem(),
            };
            files::write_output(a.out.as_deref(), &text)
        }
    }
}
