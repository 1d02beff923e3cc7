//! `agentid revoke` and `agentid revocations export` (`revocations list`: `crate::revocations`).

use std::path::PathBuf;
use std::time::SystemTime;

use agentid_ca::{RevocationRecord, RevokeTarget};
use agentid_protocol::TrustDomain;
use serde_json::json;

use crate::cert::grant_opts::parse_task;
use crate::cert::CaDirArg;
use crate::common::{print_json, print_text, rfc3339, Format, FormatArg};
use crate::error::{bad_arg, ArgContext, CliError, CliResult};
use crate::files;

/// Arguments of `revoke`: exactly one target.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "task", "agent", "jkt", "jti"])))]
pub struct RevokeArgs {
    /// The CA directory made by `agentid ca init` (whoever can read it is the operator).
    #[arg(
        long = "ca",
        value_name = "DIR",
        conflicts_with = "ca_url",
        required_unless_present = "ca_url"
    )]
    pub ca: Option<PathBuf>,
    /// Revoke through the CA service instead (as a service with `revoke`, or a holder closing
    /// its own task).
    #[command(flatten)]
    pub remote: crate::net::RemoteArgs,
    /// A certificate serial (hex; colons allowed): revokes its key, so the key can neither
    /// connect nor sign links any more.
    #[arg(long)]
    pub serial: Option<String>,
    /// A task id: every holder of the task.
    #[arg(long)]
    pub task: Option<String>,
    /// An agent name: every task identity of that agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// A key's RFC 7638 thumbprint (`agentid cert inspect` shows it as `jkt`). base64url may
    /// start with `-`, so such a value is taken as the value, not as a flag.
    #[arg(long, allow_hyphen_values = true)]
    pub jkt: Option<String>,
    /// A token `jti`: a grant of this CA, or with `--iss TASK_IDENTITY` a link it signed.
    #[arg(long, allow_hyphen_values = true)]
    pub jti: Option<String>,
    /// The issuer of the `jti`: this CA's trust domain (a grant, the default) or the task identity
    /// that signed a link.
    #[arg(long, requires = "jti")]
    pub iss: Option<String>,
    /// Why (recorded in the store and the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Revoke an agent name that no policy rule names and this CA never issued (the CA forgets
    /// no revocation, so a typo blocks that name at this CA for good: it needs this flag).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub format: FormatArg,
}

/// `revocations` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RevocationsCommand {
    /// Sign and print (or write) the next revocation list of the CA.
    Export(ExportArgs),
    /// Fetch the list the CA service serves now (`--ca-url`, `--cred`), verify it against the
    /// trust bundle of `--cred`, and print its seq, next update and entries.
    List(crate::revocations::ListArgs),
}

/// Arguments of `revocations export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub ca: CaDirArg,
    /// Write the list to this file instead of stdout (then stdout says what was written).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `text`: the list itself (compact JWS), or with `--out` one line saying what was written;
    /// `json`: the list with its `seq`, issue time, `next_update` and entry count.
    #[command(flatten)]
    pub format: FormatArg,
}

/// Runs `revoke`.
pub fn run_revoke(args: &RevokeArgs) -> CliResult {
    // Flags clap would drop without a word (their `requires` is not checked once another
    // argument is chosen): refused, not ignored.
    if args.iss.is_some() && args.jti.is_none() {
        return Err(CliError::usage(
            "--iss names the issuer of a --jti; with another target it does not apply",
        ));
    }
    if args.ca.is_some() && args.remote.cred.is_some() {
        return Err(CliError::usage(
            "--cred goes with --ca-url; with --ca DIR the operator revokes (drop --cred)",
        ));
    }
    let Some(dir) = &args.ca else {
        return crate::net::run_revoke_remote(args);
    };
    let ca = CaDirArg { ca: dir.clone() }.open()?;
    let target = if let Some(s) = &args.serial {
        RevokeTarget::Serial(s.parse().bad_arg("--serial", s)?)
    } else if let Some(t) = &args.task {
        RevokeTarget::Task(parse_task(t)?)
    } else if let Some(a) = &args.agent {
        agentid_protocol::AgentId::new(ca.trust_domain(), a).bad_arg("--agent", a)?;
        if !args.force && ca.policy().agent(a).is_err() && !ca_issued_to(&ca, a)? {
            let hint = format!(
                "check the name against the agent rules of {} (`agentid audit export --ca {}` lists every certificate this CA issued), or pass --force to block the name anyway",
                dir.join("policy.toml").display(),
                dir.display()
            );
            return Err(CliError::failed(format!(
                "no policy rule names agent {a:?} and this CA never issued it a certificate: {hint}"
            ))
            .with_code("unknown_agent")
            .with_hint(hint));
        }
        RevokeTarget::Agent(a.clone())
    } else if let Some(k) = &args.jkt {
        RevokeTarget::Key(k.parse().bad_arg("--jkt", k)?)
    } else if let Some(j) = &args.jti {
        let own = ca.trust_domain().id();
        let j: agentid_protocol::Jti = j.parse().bad_arg("--jti", j)?;
        match &args.iss {
            // A grant of this CA (its issuer is the trust domain).
            None => RevokeTarget::GrantJti(j.clone()),
            Some(iss) if agentid_protocol::SpiffeId::parse(iss).ok().as_ref() == Some(&own) => {
                RevokeTarget::GrantJti(j.clone())
            }
            // A link, scoped by the task identity that signed it.
            Some(iss) => RevokeTarget::LinkJti {
                iss: agentid_protocol::TaskIdentity::parse(iss).map_err(|e| {
                    bad_arg(
                        "--iss",
                        iss,
                        format!("{e}; a grant's issuer is {own}, a link's is a task identity"),
                    )
                })?,
                jti: j.clone(),
            },
        }
    } else {
        return Err(CliError::usage(
            "name what to revoke: --serial, --task, --agent, --jkt or --jti",
        ));
    };
    let rec = ca.revoke(
        &target,
        args.reason.as_deref(),
        "operator",
        SystemTime::now(),
    )?;
    print_record(&rec, ca.trust_domain(), args.format.format)
}

/// Whether this CA ever issued a certificate to agent `name`.
fn ca_issued_to(ca: &agentid_ca::CertificateAuthority, name: &str) -> CliResult<bool> {
    Ok(ca
        .issuances()?
        .iter()
        .any(|r| r.agent.as_deref() == Some(name)))
}

fn print_record(rec: &RevocationRecord, td: &TrustDomain, format: Format) -> CliResult {
    match format {
        Format::Json => print_json(&json!({
            "trust_domain": td.as_str(),
            "kind": rec.kind.as_str(),
            "value": rec.value,
            "exp": rec.exp,
            "revoked_at": rec.revoked_at,
            "reason": rec.reason,
        })),
        Format::Text => print_text(&format!(
            "revoked {} {} (listed until {}; this CA refuses it for good); a running `agentid ca serve` on this CA publishes it within a second, else run `agentid revocations export` to publish it",
            rec.kind.as_str(),
            rec.value,
            rfc3339(rec.exp)
        )),
    }
}

/// Runs a `revocations` subcommand.
pub fn run_revocations(cmd: &RevocationsCommand) -> CliResult {
    match cmd {
        RevocationsCommand::Export(a) => {
            let ca = a.ca.open()?;
            // Before the list is made: each one is stored and served with a new `seq`.
            if let Some(out) = &a.out {
                files::check_output_destination(out)?;
            }
            let list = ca.revocation_list(SystemTime::now())?;
            if let Some(out) = &a.out {
                files::write_output(Some(out), &format!("{list}\n"))?;
            }
            let about = crate::revocations::summary(&list)?;
            match (a.format.format, &a.out) {
                (Format::Text, None) => files::write_output(None, &format!("{list}\n")),
                (Format::Text, Some(out)) => print_text(&format!(
                    "wrote revocation list seq {} ({} entries, next update {}) to {}; verifiers need a fresh one before then",
                    about.seq,
                    about.entries,
                    rfc3339(about.next_update),
                    out.display()
                )),
                (Format::Json, out) => print_json(&json!({
                    "list": list,
                    "seq": about.seq,
                    "iat": about.iat,
                    "next_update": about.next_update,
                    "entries": about.entries,
                    "out": out.as_ref().map(|p| p.display().to_string()),
                })),
            }
        }
        RevocationsCommand::List(a) => crate::revocations::run_list(a),
    }
}
