//! `agentid cert renew --ca DIR --dir OUT`: a new `OUT/cert.pem` for the same identity and key,
//! so that chains bound to the key keep working.

use std::path::PathBuf;
use std::time::SystemTime;

use agentid_ca::{KeySource, RenewRequest, RenewRequester};
use agentid_protocol::TaskKey;
use agentid_transport::{check_leaf, CertUsage};

use super::{cert_json, cert_text, make_csr, CaDirArg, TtlArg};
use crate::common::{print_json, print_text, Format, FormatArg};
use crate::error::{CliError, CliResult, Context};
use crate::files;

/// Arguments of `cert renew`.
#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub ca: CaDirArg,
    /// The directory holding `cert.pem` and `key.pem`; `cert.pem` is replaced atomically.
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub ttl: TtlArg,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs `cert renew`.
pub fn run(args: &RenewArgs) -> CliResult {
    let cert_path = args.dir.join("cert.pem");
    let key_path = args.dir.join("key.pem");
    let certs = files::read_certs(&cert_path)?;
    let leaf = certs
        .first()
        .ok_or_else(|| CliError::failed("no certificate"))?;
    // The identity comes from the current certificate (expired or not: renewal is for that).
    let info = check_leaf(leaf.as_ref(), CertUsage::ClientAuth).map_err(|e| {
        CliError::failed(format!(
            "{}: not an agentid certificate: {e}",
            cert_path.display()
        ))
    })?;
    let key = TaskKey::from_pkcs8_der(&files::read_private_key(&key_path)?)
        .context(format!("{}: unusable key", key_path.display()))?;
    if key.public_key() != &info.public_key {
        return Err(CliError::failed(format!(
            "{}: the key does not match {}",
            key_path.display(),
            cert_path.display()
        )));
    }
    let ca = args.ca.open()?;
    let csr = make_csr(&key, info.id.as_str())?;
    let req = RenewRequest {
        identity: info.id.clone(),
        key: KeySource::Csr(csr),
        requester: RenewRequester::Operator,
        ttl: args.ttl.ttl,
    };
    let cert = ca.renew(&req, SystemTime::now())?;
    files::write_public(&cert_path, cert.chain_pem().as_bytes())?;
    match args.format.format {
        Format::Json => print_json(&cert_json(&cert)),
        Format::Text => print_text(&cert_text(&cert)),
    }
}
