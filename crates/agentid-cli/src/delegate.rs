//! `agentid delegate`: the holder of a chain appends a link to the holder of a certificate.
//!
//! The delegatee's identity and key come from its certificate, after the certificate has been
//! verified against the trust bundle: they are never typed by hand.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agentid_protocol::{Chain, IdSet, Limits, LinkBuilder, PeerId, Scope, SpiffeId, TaskKey};
use serde_json::json;

use crate::common::{now_unix, parse_duration, print_json, print_text, rfc3339, Format, FormatArg};
use crate::error::{ArgContext, CliError, CliResult, Context};
use crate::files;
use crate::trust::{parse_bundle_arg, Bare, BundleArg};

/// Arguments of `delegate`.
#[derive(Debug, clap::Args)]
pub struct DelegateArgs {
    /// The chain this holder holds (`grant.jwt` or `chain.jwt`).
    #[arg(long)]
    pub chain: PathBuf,
    /// This holder's task key (PKCS#8 PEM, mode 0600): the key the chain is bound to. Read only
    /// if it and every directory on the way are yours or root's, none writable by others.
    #[arg(long)]
    pub key: PathBuf,
    /// The delegatee's certificate (PEM); its URI SAN and public key are what the link binds.
    /// It may be another user's file, but not one that others could have replaced (a directory
    /// on the way writable by group or others without the sticky bit, or the file writable by
    /// them).
    #[arg(long)]
    pub to_cert: PathBuf,
    /// The trust bundle the delegatee's certificate must verify against (SPIFFE JSON or PEM),
    /// as `FILE` or `TD=FILE`.
    #[arg(long = "bundle", required = true, value_parser = parse_bundle_arg)]
    pub bundles: Vec<BundleArg>,
    /// Scope tokens handed over (repeatable; each covered by the chain's scope). Required: a
    /// delegation never hands over everything implicitly.
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// Lifetime of the link; capped at the chain's expiry.
    #[arg(long, default_value = "2m", value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Duration,
    /// How many more links may follow (default: one less than the chain's).
    #[arg(long)]
    pub max_depth: Option<u8>,
    /// Narrow the audience to these IDs (repeatable; covered by the chain's audience).
    #[arg(long = "aud")]
    pub audience: Vec<String>,
    /// Lower a limit ceiling, or add one: `NAME=N` (repeatable; at most the chain's ceiling).
    #[arg(long = "limit", value_name = "NAME=N")]
    pub limits: Vec<String>,
    /// Narrow whom later links may delegate to (repeatable IDs; covered by the chain's list).
    #[arg(long = "may-delegate-to", value_name = "ID")]
    pub may_delegate_to: Vec<String>,
    /// Write the new chain to this file instead of stdout (then stdout says what was written);
    /// an existing file is replaced only with `--force`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With `--out`: replace an existing file.
    #[arg(long, requires = "out")]
    pub force: bool,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Parses repeated `--scope` values (each may itself hold space-separated tokens).
pub fn parse_scope(values: &[String]) -> CliResult<Scope> {
    let joined = values
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Scope::parse(&joined).bad_arg("--scope", &joined)
}

/// Parses repeated `--aud` values into an ID set (`None` when there are none).
pub fn parse_audience(values: &[String]) -> CliResult<Option<IdSet>> {
    parse_id_set(values, "--aud")
}

/// Parses repeated ID values of option `flag` into an ID set (`None` when there are none).
pub fn parse_id_set(values: &[String], flag: &str) -> CliResult<Option<IdSet>> {
    if values.is_empty() {
        return Ok(None);
    }
    let ids = values
        .iter()
        .map(|s| SpiffeId::parse(s).bad_arg(flag, s))
        .collect::<CliResult<Vec<_>>>()?;
    Ok(Some(IdSet::new(ids).bad_arg(flag, &values.join(" "))?))
}

/// Parses repeated `--limit NAME=N` values (`None` when there are none).
pub fn parse_limits(values: &[String]) -> CliResult<Option<Limits>> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut m = BTreeMap::new();
    for l in values {
        let (name, n) = l
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("bad --limit {l:?}: expected NAME=N")))?;
        let n: u64 = n.parse().map_err(|_| {
            CliError::usage(format!(
                "bad --limit {l:?}: N must be a non-negative integer"
            ))
        })?;
        if m.insert(name.to_owned(), n).is_some() {
            return Err(CliError::usage(format!("--limit {name} given twice")));
        }
    }
    Ok(Some(Limits::new(m).bad_arg("--limit", &values.join(" "))?))
}

/// Runs `delegate`.
pub fn run(args: &DelegateArgs) -> CliResult {
    let now = now_unix()?;
    if let Some(out) = &args.out {
        if !args.force && std::fs::symlink_metadata(out).is_ok() {
            return Err(CliError::failed(format!(
                "{} already exists: pass --force to replace it, or choose another --out",
                out.display()
            )));
        }
    }
    let text = files::read_text(&args.chain)?;
    let chain =
        Chain::parse_unverified(&text).context(format!("{}: not a chain", args.chain.display()))?;
    let key = TaskKey::from_pkcs8_der(&files::read_private_key(&args.key)?)
        .context(format!("{}: unusable task key", args.key.display()))?;

    // Whom the authority goes to: the delegatee may have handed its certificate over, but a
    // file others could have replaced is refused.
    let verified = crate::cert::verify::verify_certs(
        &args.to_cert,
        &files::read_handed_certs(&args.to_cert)?,
        &args.bundles,
        Bare::CertificateDomain,
        now,
    )?
    .map_err(|reason| {
        CliError::failed(format!(
            "{}: delegatee certificate invalid: {reason}",
            args.to_cert.display()
        ))
    })?;
    let to = match &verified.info.id {
        PeerId::Task(t) => t.clone(),
        PeerId::Service(s) => {
            return Err(CliError::failed(format!(
                "{}: {} is a service, and services never hold chains",
                args.to_cert.display(),
                s.as_str()
            )))
        }
    };
    let scope = parse_scope(&args.scopes)?;
    let chain_exp = chain
        .read_unverified()
        .context(format!("{}: unreadable chain", args.chain.display()))?
        .expires();
    if chain_exp <= now {
        return Err(CliError::failed(format!(
            "{}: the chain expired at {}",
            args.chain.display(),
            rfc3339(chain_exp)
        )));
    }
    let exp = now.saturating_add(args.ttl.as_secs()).min(chain_exp);
    if exp < now.saturating_add(args.ttl.as_secs()) {
        tracing::info!(exp, "link lifetime capped at the chain's expiry");
    }
    let mut b =
        LinkBuilder::new(&chain, &to, &verified.info.public_key, scope).validity(now, now, exp);
    if let Some(d) = args.max_depth {
        b = b.max_depth(d);
    }
    if let Some(aud) = parse_audience(&args.audience)? {
        b = b.audience(aud);
    }
    if let Some(limits) = parse_limits(&args.limits)? {
        b = b.limits(limits);
    }
    if let Some(ids) = parse_id_set(&args.may_delegate_to, "--may-delegate-to")? {
        b = b.may_delegate_to(ids);
    }
    let new_chain = b.sign(&key).context("cannot delegate")?;
    if let Some(out) = &args.out {
        files::write_public(out, format!("{new_chain}\n").as_bytes())?;
    }
    tracing::info!(to = to.as_str(), depth = new_chain.depth(), "link signed");
    match (args.format.format, &args.out) {
        (Format::Text, None) => print_text(new_chain.as_str()),
        (Format::Text, Some(out)) => print_text(&format!(
            "wrote {}: {} link(s), scope {:?} for {} until {}",
            out.display(),
            new_chain.depth(),
            args.scopes.join(" "),
            to.as_str(),
            rfc3339(exp)
        )),
        (Format::Json, out) => print_json(&json!({
            "chain": new_chain.as_str(),
            "depth": new_chain.depth(),
            "to": to.as_str(),
            "to_jkt": verified.info.public_key.thumbprint(),
            "exp": exp,
            "out": out.as_ref().map(|p| p.display().to_string()),
        })),
    }
}
