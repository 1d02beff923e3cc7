//! `--bundle` arguments: which trust domain a bundle file belongs to, and loading it.
//!
//! A bundle file is either a SPIFFE bundle (JSON, as written by `agentid bundle export`) or PEM
//! root certificates. A SPIFFE bundle does not name its trust domain, so the command line does:
//! `--bundle example.org=FILE` names it explicitly. A bare `--bundle FILE` (at most one per
//! command) is the bundle of the trust domain of the certificate being checked only where that
//! decides nothing ([`Bare::CertificateDomain`], `delegate`); where the command's verdict is the
//! trust decision (`cert verify`, `chain verify`) it is refused: the certificate would choose
//! which trust domain the file vouches for, so a partner's root would vouch for identities of
//! ours. No trust domain is ever guessed from keys, tokens or the certificate being checked.

use std::path::{Path, PathBuf};

use agentid_protocol::{BundleSet, TrustBundle, TrustDomain};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::{CliError, CliResult, Context};
use crate::files;

/// The bundles a verifier of trust domain `own` holds, its own domain's loaded first (spec rule
/// C2): a partner's bundle that repeats one of its grant or revocation keys is the one refused
/// (`bad_bundle`), whichever order the command line gave them in.
pub fn bundle_set(
    own: TrustDomain,
    bundles: Vec<TrustBundle>,
) -> agentid_protocol::Result<BundleSet> {
    let (mine, others): (Vec<_>, Vec<_>) =
        bundles.into_iter().partition(|b| *b.trust_domain() == own);
    let mut set = BundleSet::for_trust_domain(own);
    for b in mine.into_iter().chain(others) {
        set.insert(b)?;
    }
    Ok(set)
}

/// A `--bundle [TD=]FILE` argument.
#[derive(Clone, Debug)]
pub struct BundleArg {
    /// The trust domain named on the command line, if any.
    pub trust_domain: Option<TrustDomain>,
    /// The file.
    pub path: PathBuf,
}

/// Parses `TD=FILE` or `FILE`. The `TD=` prefix is recognised only when it is a valid trust
/// domain name (write `./a=b` for a file whose name contains `=`).
pub fn parse_bundle_arg(s: &str) -> Result<BundleArg, String> {
    if s.is_empty() {
        return Err("empty bundle argument".into());
    }
    if let Some((td, file)) = s.split_once('=') {
        if let Ok(td) = TrustDomain::parse(td) {
            if file.is_empty() {
                return Err(format!("no file after `{}=`", td.as_str()));
            }
            return Ok(BundleArg {
                trust_domain: Some(td),
                path: PathBuf::from(file),
            });
        }
    }
    Ok(BundleArg {
        trust_domain: None,
        path: PathBuf::from(s),
    })
}

/// The contents of one bundle file.
pub enum BundleFile {
    /// A SPIFFE bundle (JSON), not yet tied to a trust domain.
    Spiffe(Vec<u8>),
    /// PEM root certificates.
    Pem(Vec<CertificateDer<'static>>),
}

/// Reads a bundle file, telling SPIFFE JSON from PEM by its first bytes. The file holds trust
/// anchors: it is read only if the reader holds it ([`files::read_held`]).
pub fn read_bundle_file(path: &Path) -> CliResult<BundleFile> {
    let bytes = files::read_held(path)?;
    let start = bytes.trim_ascii_start();
    if start.starts_with(b"{") {
        Ok(BundleFile::Spiffe(bytes))
    } else if start.starts_with(b"-----BEGIN") {
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .context(format!("{}: bad PEM", path.display()))?;
        if certs.is_empty() {
            return Err(CliError::failed(format!(
                "{}: no CERTIFICATE in the bundle",
                path.display()
            )));
        }
        Ok(BundleFile::Pem(certs))
    } else {
        Err(CliError::failed(format!(
            "{}: neither a SPIFFE bundle (JSON) nor PEM certificates",
            path.display()
        )))
    }
}

/// Parses a SPIFFE bundle for `td`.
pub fn parse_spiffe(td: &TrustDomain, json: &[u8], path: &Path) -> CliResult<TrustBundle> {
    TrustBundle::parse(td, json).context(format!("{}: invalid SPIFFE bundle", path.display()))
}

/// What a bare `--bundle FILE` stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bare {
    /// The bundle of the checked certificate's own trust domain: for `delegate`, whose link binds
    /// that certificate's own ID and key, which every verifier checks against its own anchors.
    CertificateDomain,
    /// Refused (status 2): the command's verdict is the trust decision, and the certificate being
    /// checked cannot name the trust domain of the bundle that vouches for it.
    Refused,
}

/// Assigns each `--bundle` argument its trust domain: explicit ones as written, the single bare
/// one to `cert_td` (the checked certificate's trust domain) when `bare` allows it. Two bundles
/// for one trust domain, or two bare ones, are refused.
pub fn assign<'a>(
    args: &'a [BundleArg],
    cert_td: &TrustDomain,
    bare: Bare,
) -> CliResult<Vec<(TrustDomain, &'a Path)>> {
    let mut out: Vec<(TrustDomain, &Path)> = Vec::new();
    let mut bare_count = 0usize;
    for a in args {
        let td = match &a.trust_domain {
            Some(td) => td.clone(),
            None => {
                bare_count += 1;
                if bare_count > 1 {
                    return Err(CliError::usage(
                        "only one --bundle may omit its trust domain; name the others as --bundle TD=FILE",
                    ));
                }
                if bare == Bare::Refused {
                    return Err(CliError::usage(format!(
                        "--bundle {file} does not say which trust domain it belongs to, and the certificate checked cannot say it for the file: write --bundle {td}={file} if it is the bundle of {td}",
                        file = a.path.display(),
                        td = cert_td.as_str()
                    )));
                }
                cert_td.clone()
            }
        };
        if out.iter().any(|(t, _)| *t == td) {
            return Err(CliError::usage(format!(
                "two bundles for trust domain {}: give one bundle per trust domain",
                td.as_str()
            )));
        }
        out.push((td, a.path.as_path()));
    }
    Ok(out)
}

/// The X.509 authorities (CA certificates, DER) of a bundle file read as `td`'s bundle.
pub fn x509_authorities(td: &TrustDomain, path: &Path) -> CliResult<Vec<Vec<u8>>> {
    Ok(match read_bundle_file(path)? {
        BundleFile::Pem(certs) => certs.iter().map(|c| c.as_ref().to_vec()).collect(),
        BundleFile::Spiffe(json) => parse_spiffe(td, &json, path)?
            .x509_authorities()
            .iter()
            .map(|a| a.der.clone())
            .collect(),
    })
}
