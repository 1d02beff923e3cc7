//! `agentid cert verify FILE --bundle TD=FILE [--at TIME]`: the X509-SVID profile and the chain to
//! the anchors of the certificate's own trust domain.
//!
//! Both checks are the transport crate's own (`TrustStore::verify`: the X509-SVID leaf rules,
//! then the chain to the anchors of the certificate's own trust domain), the code that checks TLS
//! peers, run once for each TLS role since agents' leaves serve both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentid_protocol::{SpiffeId, Verifier, VerifierConfig};
use agentid_transport::{check_leaf, CertUsage, SvidInfo, TrustStore};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::json;

use crate::common::{
    now_unix, parse_time, print_json, print_text, relative, rfc3339, Format, FormatArg,
};
use crate::error::{CliError, CliResult, Context};
use crate::files;
use crate::trust::{self, parse_bundle_arg, Bare, BundleArg, BundleFile};

/// Arguments of `cert verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The certificate file (PEM: the leaf, then its intermediates).
    pub file: PathBuf,
    /// The trust bundle of a trust domain: SPIFFE JSON or PEM roots, as `TD=FILE` (a bundle file
    /// does not say whose it is). Repeatable, one per trust domain.
    #[arg(long = "bundle", required = true, value_parser = parse_bundle_arg)]
    pub bundles: Vec<BundleArg>,
    /// Verify at this time instead of now: RFC 3339 or Unix seconds.
    #[arg(long, value_parser = parse_time)]
    pub at: Option<u64>,
    /// Revocation lists (compact JWS, as `agentid revocations export` writes): the certificate's
    /// key, agent and task are checked against the fresh list of its trust domain, as the TLS
    /// peer check does (needs the agentid bundle of that domain). Without any, the verdict says
    /// that revocation was not checked.
    #[arg(long = "revocations")]
    pub revocations: Vec<PathBuf>,
    #[command(flatten)]
    pub format: FormatArg,
}

/// A certificate that passed both roles' checks.
pub struct Verified {
    /// What the leaf says.
    pub info: SvidInfo,
    /// Roles it is valid for.
    pub usages: Vec<&'static str>,
}

/// Verifies the PEM certificate file `cert` against `bundles` at `at`: the X509-SVID leaf
/// profile (the transport crate's `check_leaf`, for each TLS role: agents' leaves serve both),
/// then the chain to the anchors of the certificate's own trust domain. `bare` says what a bare
/// `--bundle FILE` stands for. `Err` is the one-line reason it is not valid.
pub fn verify_file(
    cert: &Path,
    bundles: &[BundleArg],
    bare: Bare,
    at: u64,
) -> CliResult<Result<Verified, String>> {
    verify_certs(cert, &files::read_certs(cert)?, bundles, bare, at)
}

/// [`verify_file`] for the certificates `certs` already read from the file `cert`.
pub fn verify_certs(
    cert: &Path,
    certs: &[CertificateDer<'static>],
    bundles: &[BundleArg],
    bare: Bare,
    at: u64,
) -> CliResult<Result<Verified, String>> {
    let Some((leaf, intermediates)) = certs.split_first() else {
        return Err(CliError::failed(format!(
            "{}: no certificate",
            cert.display()
        )));
    };
    let mut info = None;
    for usage in [CertUsage::ClientAuth, CertUsage::ServerAuth] {
        match check_leaf(leaf.as_ref(), usage) {
            Ok(i) => info = Some(i),
            Err(e) => return Ok(Err(format!("X509-SVID profile: {e}"))),
        }
    }
    let Some(info) = info else {
        return Err(CliError::failed("no leaf information"));
    };
    let td = info.id.trust_domain();
    let mut anchors_der = Vec::new();
    for (btd, path) in trust::assign(bundles, &td, bare)? {
        let ders = trust::x509_authorities(&btd, path)?;
        if btd == td {
            anchors_der.extend(ders);
        }
    }
    if anchors_der.is_empty() {
        return Ok(Err(format!(
            "no X.509 authority for trust domain {} in the bundles",
            td.as_str()
        )));
    }
    let mut store = TrustStore::new();
    for der in &anchors_der {
        store
            .add_authority(&td, der)
            .map_err(|e| CliError::failed(format!("unusable CA certificate in the bundle: {e}")))?;
    }
    let now = UnixTime::since_unix_epoch(Duration::from_secs(at));
    let mut usages = Vec::new();
    for (usage, name) in [
        (CertUsage::ClientAuth, "clientAuth"),
        (CertUsage::ServerAuth, "serverAuth"),
    ] {
        if let Err(e) = store.verify(leaf, intermediates, now, usage) {
            // Time first: it is the usual cause, and the one with a fix to name.
            if let Some(why) = outside_validity(&info, at, cert) {
                return Ok(Err(why));
            }
            return Ok(Err(format!("{name}: {e}")));
        }
        usages.push(name);
    }
    Ok(Ok(Verified { info, usages }))
}

/// Why a certificate is not valid at `at` when that is a matter of time: when it expired (and
/// the command that renews it) or from when it is valid.
fn outside_validity(info: &SvidInfo, at: u64, cert: &Path) -> Option<String> {
    if at > info.not_after {
        let dir = match cert.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
            _ => ".".to_owned(),
        };
        Some(format!(
            "expired at {} ({}): run `agentid cert renew --ca CA_DIR --dir {dir}`",
            rfc3339(info.not_after),
            relative(info.not_after, at)
        ))
    } else if at < info.not_before {
        Some(format!(
            "not yet valid: valid from {} ({}); check the clock, or --at",
            rfc3339(info.not_before),
            relative(info.not_before, at)
        ))
    } else {
        None
    }
}

/// Section 10, "Verifying a peer without a chain": the fresh list of the certificate's trust
/// domain (rule 6.1), then its key, agent and task (rule 6.3), with the protocol crate's own
/// check, as the TLS peer check runs it. `Err` is the one-line reason it is not valid.
fn check_revocation(args: &VerifyArgs, info: &SvidInfo, at: u64) -> CliResult<Result<(), String>> {
    let why = |e: agentid_protocol::Error| format!("{}: {}", e.code().as_str(), e.detail());
    let td = info.id.trust_domain();
    let mut bundles = Vec::new();
    for (btd, path) in trust::assign(&args.bundles, &td, Bare::Refused)? {
        match trust::read_bundle_file(path)? {
            BundleFile::Spiffe(json) => bundles.push(trust::parse_spiffe(&btd, &json, path)?),
            BundleFile::Pem(_) => {
                return Err(CliError::failed(format!(
                    "{}: PEM roots hold no revocation key, so no revocation list can be checked with them: pass the agentid bundle (`agentid bundle export --format agentid`)",
                    path.display()
                )))
            }
        }
    }
    let set = match trust::bundle_set(td.clone(), bundles) {
        Ok(set) => set,
        Err(e) => return Ok(Err(why(e))),
    };
    let own = SpiffeId::parse(&format!(
        "{}/svc/{}",
        td.id().as_str(),
        crate::chain::DEFAULT_VERIFIER_SERVICE
    ))
    .context("the checking service's ID")?;
    let mut config = VerifierConfig::new(own, set);
    for path in &args.revocations {
        if let Err(e) = config.apply_revocation_list(&files::read_revocation_list(path)?) {
            return Ok(Err(format!("{}: {}", path.display(), why(e))));
        }
    }
    let verifier = match Verifier::new(config) {
        Ok(v) => v,
        Err(e) => return Ok(Err(why(e))),
    };
    Ok(verifier
        .check_peer_revocation(info.id.as_spiffe_id(), &info.public_key, at)
        .map_err(why))
}

/// Runs `cert verify`.
pub fn run(args: &VerifyArgs) -> CliResult {
    let at = match args.at {
        Some(t) => t,
        None => now_unix()?,
    };
    let verdict = match verify_file(&args.file, &args.bundles, Bare::Refused, at)? {
        Ok(v) if !args.revocations.is_empty() => check_revocation(args, &v.info, at)?.map(|()| v),
        other => other,
    };
    let revocation = if args.revocations.is_empty() {
        "not checked"
    } else {
        "checked"
    };
    match verdict {
        Ok(v) => {
            let i = &v.info;
            match args.format.format {
                Format::Json => print_json(&json!({
                    "valid": true,
                    "identity": i.id.as_str(),
                    "trust_domain": i.id.trust_domain().as_str(),
                    "serial": i.serial.clone(),
                    "jkt": i.public_key.thumbprint(),
                    "not_before": i.not_before,
                    "not_after": i.not_after,
                    "usages": v.usages,
                    "revocation": revocation,
                    "at": at,
                })),
                Format::Text => print_text(&format!(
                    "valid: {} (serial {}, valid until {}, {}; revocation {revocation}{})",
                    i.id.as_str(),
                    i.serial.clone(),
                    rfc3339(i.not_after),
                    v.usages.join(" + "),
                    if args.revocations.is_empty() {
                        ": pass --revocations FILE"
                    } else {
                        ""
                    }
                )),
            }
        }
        Err(reason) => {
            let message = format!("{}: certificate invalid: {reason}", args.file.display());
            if args.format.format == Format::Json {
                print_json(
                    &json!({ "valid": false, "error": reason, "message": message, "at": at }),
                )?;
            }
            Err(CliError::invalid(message).reported())
        }
    }
}
