//! `agentid cert ...`: issue, renew, sign, inspect and verify certificates.

pub mod grant_opts;
pub mod inspect;
pub mod issue;
pub mod renew;
pub mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentid::files::{BUNDLE_FILE, BUNDLE_PEM_FILE, CERT_FILE};
use agentid_ca::{CertificateAuthority, IssuedCertificate};
use agentid_protocol::TaskKey;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use serde_json::{json, Value};

use crate::common::{parse_duration, rfc3339};
use crate::error::{CliError, CliResult, Context};
use crate::files;

/// `cert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Issue a certificate with a key made here: a task's root holder (with its grant), a child
    /// agent in its parent's task (`--parent`), or a service (`--service`).
    Issue(issue::IssueArgs),
    /// Re-issue `DIR/cert.pem` for the same key and identity.
    Renew(renew::RenewArgs),
    /// Open a task for a key held elsewhere, from its CSR (OpenSSL, Python, ...).
    Sign(issue::SignArgs),
    /// Describe a certificate: identity, task, serial, issuer, validity, key, SAN, usages.
    Inspect(inspect::InspectArgs),
    /// Check a certificate against the X509-SVID profile and a trust bundle.
    Verify(verify::VerifyArgs),
}

/// Runs a `cert` subcommand.
pub fn run(cmd: &CertCommand) -> CliResult {
    match cmd {
        CertCommand::Issue(a) => issue::run_issue(a),
        CertCommand::Renew(a) => renew::run(a),
        CertCommand::Sign(a) => issue::run_sign(a),
        CertCommand::Inspect(a) => inspect::run(a),
        CertCommand::Verify(a) => verify::run(a),
    }
}

/// The `--ca DIR` argument: the CA directory. Offline issuance authenticates the operator as
/// whoever can read this directory (its private keys are 0600).
#[derive(Clone, Debug, clap::Args)]
pub struct CaDirArg {
    /// The CA directory made by `agentid ca init` (whoever can read it is the operator).
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: PathBuf,
}

impl CaDirArg {
    /// Opens the CA.
    pub fn open(&self) -> CliResult<CertificateAuthority> {
        open_ca(&self.ca)
    }
}

/// Opens the CA in `dir`, telling a missing directory or one that holds no CA (an agent's
/// directory, a temp directory) from a broken CA.
pub fn open_ca(dir: &Path) -> CliResult<CertificateAuthority> {
    if !dir.is_dir() {
        let hint = format!(
            "run `agentid ca init --dir {}` first, or pass the directory it made",
            dir.display()
        );
        return Err(
            CliError::failed(format!("{}: no such CA directory: {hint}", dir.display()))
                .with_code("not_a_ca_directory")
                .with_hint(hint),
        );
    }
    if !dir.join(agentid_ca::material::files::CONFIG).is_file() {
        let hint = "run `agentid ca init`, or pass the directory it made as --ca";
        return Err(CliError::failed(format!(
            "{}: not a CA directory (no {}): {hint}",
            dir.display(),
            agentid_ca::material::files::CONFIG
        ))
        .with_code("not_a_ca_directory")
        .with_hint(hint));
    }
    CertificateAuthority::open(dir).map_err(|e| match e {
        // Nothing has been requested yet: a policy error here is the file's, not a refusal.
        agentid_ca::CaError::Policy { .. } => {
            let policy = dir.join(agentid_ca::material::files::POLICY);
            let hint = format!("fix {} and run the command again", policy.display());
            CliError::failed(format!("{}: invalid: {e}: {hint}", policy.display())).with_hint(hint)
        }
        e => e.into(),
    })
}

/// The `--ttl` of a certificate.
#[derive(Clone, Debug, clap::Args)]
pub struct TtlArg {
    /// Certificate lifetime, e.g. `5m` (default: the policy's `defaults.ttl`).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<Duration>,
}

/// A PKCS#10 CSR (DER) for `key`, requesting `uri` as its only SAN: the CA takes only the key
/// and checks that the request asks for nothing else.
pub fn make_csr(key: &TaskKey, uri: &str) -> CliResult<Vec<u8>> {
    let kp = KeyPair::try_from(key.danger_pkcs8_der())
        .context("cannot load the task key for the CSR")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().context("bad URI SAN")?)];
    let csr = params
        .serialize_request(&kp)
        .context("cannot build the CSR")?;
    Ok(csr.der().to_vec())
}

/// Files written into an output directory.
#[derive(Default)]
pub struct Written(pub Vec<PathBuf>);

impl Written {
    /// Writes a public file and remembers it.
    pub fn public(&mut self, path: PathBuf, contents: &[u8]) -> CliResult<()> {
        files::write_public(&path, contents)?;
        self.0.push(path);
        Ok(())
    }

    /// The paths as JSON strings.
    pub fn json(&self) -> Value {
        Value::from(
            self.0
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
        )
    }
}

/// Writes `cert.pem` (leaf, then intermediate), `bundle.pem` and `bundle.json` into `out`.
pub fn write_cert_and_bundles(
    ca: &CertificateAuthority,
    cert: &IssuedCertificate,
    out: &Path,
    written: &mut Written,
) -> CliResult<()> {
    written.public(out.join(CERT_FILE), cert.chain_pem().as_bytes())?;
    written.public(out.join(BUNDLE_PEM_FILE), ca.bundle_pem().as_bytes())?;
    // At the signed bundle's sequence: a watcher started over it applies no older one.
    let bundle = ca.exported_bundle()?.to_json();
    written.public(out.join(BUNDLE_FILE), format!("{bundle}\n").as_bytes())?;
    Ok(())
}

/// JSON description of an issued certificate.
pub fn cert_json(cert: &IssuedCertificate) -> Value {
    json!({
        "identity": cert.identity.as_str(),
        "serial": cert.serial(),
        "jkt": cert.jkt,
        "not_before": cert.leaf.not_before,
        "not_after": cert.leaf.not_after,
    })
}

/// Text lines describing an issued certificate.
pub fn cert_text(cert: &IssuedCertificate) -> String {
    format!(
        "identity:  {}\nserial:    {}\nvalid:     {} .. {}\n",
        cert.identity.as_str(),
        cert.serial(),
        rfc3339(cert.leaf.not_before),
        rfc3339(cert.leaf.not_after)
    )
}
