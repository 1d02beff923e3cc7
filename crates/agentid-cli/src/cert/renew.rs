//! `agentid cert renew --ca DIR --dir OUT`: a new `OUT/cert.pem` for the same identity and key,
//! so that chains bound to the key keep working.

use std::path::PathBuf;
use std::time::SystemTime;

use agentid::files::{Holder, CERT_FILE};
use agentid_ca::{KeySource, RenewRequest, RenewRequester};

use super::{cert_json, cert_text, make_csr, CaDirArg, TtlArg};
use crate::common::{print_json, print_text, Format, FormatArg};
use crate::error::CliResult;
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
    // The identity comes from the current certificate (expired or not: renewal is for that),
    // and the key must be the one it certifies.
    let holder = Holder::load(&args.dir)?;
    let ca = args.ca.open()?;
    let csr = make_csr(holder.key(), holder.leaf.id.as_str())?;
    let req = RenewRequest {
        identity: holder.leaf.id.clone(),
        key: KeySource::Csr(csr),
        requester: RenewRequester::Operator,
        ttl: args.ttl.ttl,
    };
    let cert = ca.renew(&req, SystemTime::now())?;
    files::write_public(&args.dir.join(CERT_FILE), cert.chain_pem().as_bytes())?;
    match args.format.format {
        Format::Json => print_json(&cert_json(&cert)),
        Format::Text => print_text(&cert_text(&cert)),
    }
}
