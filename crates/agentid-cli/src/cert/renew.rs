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
    /// The CA directory made by `agentid ca init` (whoever can read it is the operator).
    #[arg(
        long = "ca",
        value_name = "DIR",
        conflicts_with = "ca_url",
        required_unless_present = "ca_url"
    )]
    pub ca: Option<PathBuf>,
    /// Renew through the CA service's mutual-TLS listener (`https://HOST:PORT`) with the
    /// directory's own certificate and key (same key; no renewal after `notAfter`).
    #[arg(long, value_name = "URL", value_parser = crate::common::parse_ca_url)]
    pub ca_url: Option<String>,
    /// Keep running: renew once at start (a refusal ends it there, status 1; a CA it cannot
    /// reach is reported at once and tried again at the renewal point), then at 40-50% of each
    /// certificate's lifetime (at random, so that agents started
    /// together do not renew together; retrying until 90% of it)
    /// and replace `cert.pem` each time (a renewed certificate it cannot write is kept and
    /// written again every 5 seconds, with an error logged, until the one in `cert.pem` has
    /// expired: then it stops, status 1). Needs `--ca-url`.
    // clap lets a required argument be missing when it conflicts with one that is present
    // (`--ca-url` with `--ca`): the conflict is stated here, or `--ca DIR --daemon` would renew
    // once and exit 0.
    #[arg(long, requires = "ca_url", conflicts_with = "ca")]
    pub daemon: bool,
    /// With `--daemon`: after each successful renewal (once `cert.pem` is replaced), run this
    /// program with these arguments, e.g. `--exec nginx -s reload`. Everything after `--exec`
    /// is the command, taken as given: no shell unless you name one (`--exec sh -c '...'`).
    /// It runs in the current directory with no stdin and its output on stderr, for at most
    /// 60 s (then it is killed, with every process it started: it runs in its own process
    /// group), beside the renewals: they go on while it runs. One runs at a
    /// time: renewals written while it runs have it run once more after it ends. A command
    /// that fails is logged, and the daemon goes on.
    #[arg(
        long,
        requires = "daemon",
        conflicts_with = "ca",
        num_args = 1..,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub exec: Vec<std::ffi::OsString>,
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
    let Some(dir) = &args.ca else {
        return crate::net::run_renew_remote(args);
    };
    // Locked before the key is read, until the certificate is written (as `cert issue` does):
    // another command replacing the key meanwhile would get this key's certificate beside it.
    // (A directory that is not there is left to the read below to name.)
    let _lock = if args.dir.is_dir() {
        Some(files::lock_dir(&args.dir)?)
    } else {
        None
    };
    // The identity comes from the current certificate (expired or not: renewal is for that),
    // and the key must be the one it certifies.
    let holder = Holder::load(&args.dir)?;
    let ca = CaDirArg { ca: dir.clone() }.open()?;
    let csr = make_csr(holder.key(), holder.leaf.id.as_str())?;
    let req = RenewRequest {
        identity: holder.leaf.id.clone(),
        key: KeySource::Csr(csr),
        requester: RenewRequester::Operator,
        ttl: args.ttl.ttl,
    };
    let cert = ca.renew(&req, SystemTime::now())?;
    let path = args.dir.join(CERT_FILE);
    files::write_public(&path, cert.chain_pem().as_bytes())?;
    match args.format.format {
        Format::Json => {
            let mut v = cert_json(&cert);
            if let serde_json::Value::Object(m) = &mut v {
                m.insert(
                    "files".into(),
                    serde_json::json!([path.display().to_string()]),
                );
            }
            print_json(&v)
        }
        Format::Text => print_text(&format!(
            "{}wrote:     {}\n",
            cert_text(&cert),
            path.display()
        )),
    }
}
