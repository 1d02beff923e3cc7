//! `agentid bundle export`: the trust bundle of the CA's trust domain.

use std::path::PathBuf;

use crate::cert::CaDirArg;
use crate::common::print_text;
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
    /// The agentid bundle (SPIFFE bundle JSON with the grant and revocation keys, uses
    /// `agentid-grant` and `agentid-revocation`): what `chain verify` and agentid verifiers need.
    #[default]
    Agentid,
    /// The standard SPIFFE bundle (JWK Set): the X.509 authorities only (`use` `x509-svid`), as
    /// SPIRE federation (`spire-server bundle set -format spiffe`) and SPIFFE libraries accept.
    Spiffe,
    /// PEM root certificates only (for TLS stacks).
    Pem,
}

impl BundleFormat {
    fn describe(self) -> &'static str {
        match self {
            BundleFormat::Agentid => {
                "agentid bundle (X.509 authorities, grant and revocation keys)"
            }
            BundleFormat::Spiffe => "SPIFFE bundle (X.509 authorities only)",
            BundleFormat::Pem => "PEM root certificates",
        }
    }
}

/// Arguments of `bundle export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub ca: CaDirArg,
    /// What to export: `agentid` (for agentid verifiers), `spiffe` (standard uses only, for
    /// SPIRE and other SPIFFE software) or `pem` (root certificates). The output is the bundle
    /// itself, so there is no text|json choice here.
    #[arg(long, value_enum, default_value_t = BundleFormat::Agentid)]
    pub format: BundleFormat,
    /// Write to this file instead of stdout (then a line on stdout says what was written).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs a `bundle` subcommand.
pub fn run(cmd: &BundleCommand) -> CliResult {
    match cmd {
        BundleCommand::Export(a) => {
            let ca = a.ca.open()?;
            let mut text = match a.format {
                BundleFormat::Agentid => ca.trust_bundle()?.to_json(),
                BundleFormat::Spiffe => ca.trust_bundle()?.to_spiffe_json(),
                BundleFormat::Pem => ca.bundle_pem(),
            };
            if !text.ends_with('\n') {
                text.push('\n');
            }
            files::write_output(a.out.as_deref(), &text)?;
            if let Some(out) = &a.out {
                print_text(&format!(
                    "wrote the {} of {} to {}",
                    a.format.describe(),
                    ca.trust_domain().as_str(),
                    out.display()
                ))?;
            }
            Ok(())
        }
    }
}
