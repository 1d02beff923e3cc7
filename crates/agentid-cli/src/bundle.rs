//! `agentid bundle export`: the trust bundle of the CA's trust domain; `agentid bundle sign`:
//! the signed agentid bundle the CA service serves.

use std::path::PathBuf;

use crate::cert::CaDirArg;
use crate::common::{now_unix, print_json, print_text, Format, FormatArg};
use crate::error::CliResult;
use crate::files;

/// `bundle` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Print (or write) the trust bundle.
    Export(ExportArgs),
    /// Sign the CA's current bundle (X.509 authority, grant and revocation keys) with the
    /// offline `bundle-signing.key` into `agentid-bundle.jws`, the document the CA service
    /// serves at `GET /v1/bundle/agentid` and bundle watchers apply. Run it where that key is
    /// (it reads the directory's key files, not its store) after replacing `grant.key` or
    /// `revocation.key` (the response to a stolen key: rotate it out of the bundles), then copy
    /// `agentid-bundle.jws` into the service's CA directory: the
    /// service refuses to serve a document that lacks its current keys, and watchers keep the
    /// keys of the last document they applied. A planned rotation lists the outgoing key with
    /// `--retiring-grant-key` or `--retiring-revocation-key`, so that what it signed keeps
    /// verifying until a document signed without it.
    Sign(SignArgs),
}

/// Arguments of `bundle sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub ca: CaDirArg,
    /// An outgoing grant key to list beside the current one (repeatable): verifiers that
    /// apply the document keep verifying the grants it signed, until a document signed
    /// without it. A PEM public key (`openssl pkey -in OLD-grant.key -pubout`) or a JWK (its
    /// entry in `agentid bundle export`).
    #[arg(long = "retiring-grant-key", value_name = "PUB_OR_JWK_FILE")]
    pub retiring_grant_keys: Vec<PathBuf>,
    /// An outgoing revocation key to list beside the current one (repeatable), as
    /// `--retiring-grant-key`: the lists it signed keep verifying.
    #[arg(long = "retiring-revocation-key", value_name = "PUB_OR_JWK_FILE")]
    pub retiring_revocation_keys: Vec<PathBuf>,
    #[command(flatten)]
    pub format: FormatArg,
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
        BundleCommand::Sign(a) => sign(a),
        BundleCommand::Export(a) => {
            let ca = a.ca.open()?;
            let mut text = match a.format {
                BundleFormat::Agentid => ca.exported_bundle()?.to_json(),
                BundleFormat::Spiffe => ca.spiffe_bundle()?.to_spiffe_json(),
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

/// `bundle sign`: a document newer than the one it replaces (CA-API 3.3), with the CA's keys.
/// Reads the directory's files only, not its store: it runs where the offline key is.
fn sign(a: &SignArgs) -> CliResult {
    let dir = &a.ca.ca;
    if !dir.is_dir() {
        return Err(crate::error::CliError::failed(format!(
            "{} is not a directory: pass the CA directory made by `agentid ca init` (a copy \
             holding bundle-signing.key)",
            dir.display()
        )));
    }
    let read = |paths: &[PathBuf], key_use: &str| {
        paths
            .iter()
            .map(|p| agentid_ca::agentid_bundle::read_retiring_key(p, key_use))
            .collect::<Result<Vec<_>, _>>()
    };
    let retiring = agentid_ca::agentid_bundle::RetiringKeys {
        grant: read(&a.retiring_grant_keys, "agentid-grant")?,
        revocation: read(&a.retiring_revocation_keys, "agentid-revocation")?,
    };
    let now = now_unix()?;
    let jws = agentid_ca::agentid_bundle::sign_offline_with(dir, now, &retiring)?;
    let config = agentid_ca::CaConfig::load(&dir.join("config.toml"))?;
    let td = config.trust_domain.clone();
    let signed = agentid_protocol::verify_signed_bundle(
        &jws,
        &agentid_ca::agentid_bundle::public_key(dir)?,
        &td,
        u64::MAX,
        0,
    )?;
    let kids = |keys: &[agentid_protocol::BundleKey]| -> Vec<String> {
        keys.iter().map(|k| k.kid.clone()).collect()
    };
    let grant = kids(signed.bundle.grant_keys());
    let revocation = kids(signed.bundle.revocation_keys());
    let path = dir.join("agentid-bundle.jws");
    match a.format.format {
        Format::Json => print_json(&serde_json::json!({
            "file": path.display().to_string(),
            "trust_domain": td.as_str(),
            "seq": signed.seq,
            "iat": signed.iat,
            "grant_keys": grant,
            "revocation_keys": revocation,
        })),
        Format::Text => print_text(&format!(
            "signed the agentid bundle of {} (seq {}) into {}\ngrant keys:      {}\nrevocation keys: {}\n",
            td.as_str(),
            signed.seq,
            path.display(),
            grant.join(", "),
            revocation.join(", ")
        )),
    }
}
