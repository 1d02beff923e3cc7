//! `agentid audit verify`, `agentid audit export` and `agentid audit prune`: the CA store's
//! audit chain.

use std::path::Path;

use serde_json::json;

use crate::common::{print_json, print_text, Format, FormatArg};
use crate::error::{CliError, CliResult};

/// `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Recompute every audit chain and checkpoint signature of a CA's store, and check that
    /// every issued certificate has its record. Exit status 3 names the first break.
    Verify(VerifyArgs),
    /// Print the audit records as JSON lines: each pruned chain's signed base first, then the
    /// records, then the signed checkpoints.
    Export(ExportArgs),
    /// Delete the records (and the certificates' rows) older than the retention, once they are
    /// in an export kept outside the store; the chain then starts at a base signed with the
    /// audit key.
    Prune(PruneArgs),
}

/// Arguments of `audit prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// The CA directory (its audit key signs where each pruned chain starts).
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: std::path::PathBuf,
    /// How long to keep a record after what it records ended (a certificate's notAfter, its
    /// task's end; a revocation's entry's end; the record's own time for the others): at least
    /// `1d`, e.g. `7d`, `30d`.
    #[arg(long, value_name = "DURATION", value_parser = crate::common::parse_duration)]
    pub retain: std::time::Duration,
    /// An `agentid audit export --ca DIR` made before, kept outside the store: every record
    /// pruned must be in it, unchanged (the prune compares it with the store first), so that
    /// nothing leaves the store that is not kept elsewhere. Held to `audit verify --against`'s
    /// rules for the file; a `--format json` report, which holds no record, is refused.
    #[arg(long, value_name = "FILE")]
    pub exported: std::path::PathBuf,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Arguments of `audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The CA directory (only `config.toml`, `audit.pub` and `ca.db` are read).
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: std::path::PathBuf,
    /// Also require every record known from FILE, kept outside the store, to be in the store
    /// unchanged: an earlier `agentid audit export` (every record it holds) or `agentid audit
    /// verify --format json` report (each chain's head); `-` reads standard input. Finds what
    /// the store alone cannot: a chain deleted whole, or its newest records removed or
    /// rewritten. The file may be another user's, but not one that others could have replaced
    /// (a directory on the way writable by group or others without the sticky bit, or the
    /// file writable by them): it vouches for the store.
    #[arg(long, value_name = "FILE")]
    pub against: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Arguments of `audit export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The CA directory.
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: std::path::PathBuf,
    /// Each chain from its first record at or after this time on (later records stamped
    /// earlier stay in, so the chain has no gaps): Unix seconds or an RFC 3339 time
    /// (`2026-12-02T12:00:00Z`). Checkpoints are always exported.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<u64>,
}

fn parse_since(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        // The stores keep times as signed 64-bit integers.
        if i64::try_from(n).is_err() {
            return Err(format!("at most {} (Unix seconds)", i64::MAX));
        }
        return Ok(n);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|_| "expected Unix seconds or an RFC 3339 time".to_owned())?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| "the time is before 1970".to_owned())
}

fn ca_dir(dir: &Path) -> CliResult<()> {
    // SQLite's `ca.db`, or a shared database named by `config.toml` (`store`).
    // A configuration others could have written is said as such (with its `chmod`), not
    // taken for a directory without a store (whose next step would be a new CA).
    let shared = match agentid_ca::CaConfig::load(&dir.join(agentid_ca::material::files::CONFIG)) {
        Err(e @ agentid_ca::CaError::NotHeld(_)) => return Err(e.into()),
        config => config.is_ok_and(|c| c.store.as_deref().is_some_and(|s| s != "sqlite")),
    };
    if shared || dir.join(agentid_ca::material::files::DB).is_file() {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "{}: no CA store here (run `agentid ca init`)",
            dir.display()
        )))
    }
}

/// Runs an `audit` subcommand.
pub fn run(cmd: &AuditCommand) -> CliResult {
    match cmd {
        AuditCommand::Verify(a) => verify(a),
        AuditCommand::Export(a) => {
            ca_dir(&a.ca)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            agentid_ca::audit::export_dir(&a.ca, a.since, &mut out)?;
            Ok(())
        }
        AuditCommand::Prune(a) => prune(a),
    }
}

fn prune(a: &PruneArgs) -> CliResult {
    if a.retain.as_secs() < agentid_ca::audit::MIN_RETENTION_SECS {
        return Err(CliError::usage(format!(
            "--retain {}: at least 1d (a record is kept at least a day after what it records \
             ended); e.g. --retain 7d",
            crate::common::human_duration(a.retain.as_secs())
        )));
    }
    ca_dir(&a.ca)?;
    // An export: the records pruned must be kept in it (a report holds none).
    let exported = anchors(&a.exported, "--exported")?;
    let ca = crate::cert::open_ca(&a.ca)?;
    let counts = match ca.prune_audit_in_batches(
        a.retain,
        std::time::SystemTime::now(),
        exported,
        agentid_ca::audit::PRUNE_BATCH,
    ) {
        Ok(c) => c,
        Err(agentid_ca::CaError::AuditBroken(broken)) => {
            return Err(CliError::invalid(format!(
                "nothing was pruned: the audit trail is broken: {broken}; {}",
                next_step(&broken)
            )))
        }
        Err(e) => return Err(e.into()),
    };
    match a.format.format {
        Format::Json => print_json(&json!({ "pruned": counts })),
        Format::Text => print_text(&if counts.chains == 0 {
            "nothing to prune: no record is older than the retention yet, or one that must stay \
             (a certificate, task or revocation in force less than the retention ago) stands \
             before it in its chain\n"
                .to_owned()
        } else {
            format!(
                "pruned {} records, {} checkpoints and {} certificates' rows from {} chains \
                 in {} transaction{}; `agentid audit verify --ca {}` checks the rest\n",
                counts.records,
                counts.checkpoints,
                counts.issuances,
                counts.chains,
                counts.transactions,
                if counts.transactions == 1 { "" } else { "s" },
                a.ca.display()
            )
        }),
    }
}

/// What to do once the trail is broken: the store was changed outside the CA (or damaged).
const NEXT_STEP: &str = "the store was changed outside the CA or damaged: keep a copy of it as \
     evidence, and compare it with an earlier `agentid audit export` or a backup of the store \
     to see what changed";

/// The records `--against` (or `--exported`: `flag`) names: a file's export is read beside
/// the store's records ([`agentid_ca::audit::ExportFile`]); standard input (`-`) and a report
/// are read into memory.
fn anchors(path: &Path, flag: &str) -> CliResult<agentid_ca::audit::Against<'static>> {
    // `--exported` keeps the records pruned: an export, which holds them (a report does not).
    let reports = flag != "--exported";
    let (wrote, output) = if !reports {
        (
            "`agentid audit export` wrote",
            "the output of `agentid audit export --ca DIR`",
        )
    } else {
        (
            "`agentid audit export` or `agentid audit verify --format json` wrote",
            "the output of `agentid audit export --ca DIR` or `agentid audit verify --ca DIR \
             --format json`",
        )
    };
    let read = if path == Path::new("-") {
        let stdin = std::io::stdin().lock();
        let read = if reports {
            agentid_ca::audit::read_anchors(stdin)
        } else {
            agentid_ca::audit::read_export(stdin)
        };
        read.map(|anchors| agentid_ca::audit::Against::Listed(anchors.into()))
    } else {
        // It vouches for the store: another user's copy is taken, one that others could
        // have replaced (to match a store they rewrote) is refused.
        let f = agentid_fs::open_handed(path).map_err(|e| match e {
            agentid_fs::FsError::Io { path, source } => CliError::failed(format!(
                "{}: {source} ({flag} takes a file {wrote})",
                path.display()
            )),
            e => e.into(),
        })?;
        agentid_ca::audit::ExportFile::open(f, reports)
    };
    read.map_err(|e| {
        CliError::usage(format!(
            "{flag} {}: {e}; give {output} kept from an earlier run",
            path.display()
        ))
    })
}

/// What to do once a record known from `--against` is not the store's: the break's own text
/// says whether the file may be another CA's.
const ANCHOR_NEXT_STEP: &str = "keep a copy of the store as evidence, check that the file given \
     to --against was kept from this CA, and compare the store with it or with a backup to see \
     what changed";

/// The next step for `broken`.
fn next_step(broken: &agentid_ca::audit::AuditBreak) -> &'static str {
    match broken {
        agentid_ca::audit::AuditBreak::Anchor { .. } => ANCHOR_NEXT_STEP,
        _ => NEXT_STEP,
    }
}

fn verify(a: &VerifyArgs) -> CliResult {
    ca_dir(&a.ca)?;
    let known = match &a.against {
        Some(path) => anchors(path, "--against")?,
        None => agentid_ca::audit::Against::Listed(Vec::new().into()),
    };
    match agentid_ca::audit::verify_dir_against(&a.ca, known)? {
        Ok(report) => match a.format.format {
            Format::Json => print_json(&json!({"valid": true, "report": report})),
            Format::Text => {
                let mut text = String::new();
                for c in &report.chains {
                    text.push_str(&format!(
                        "chain {}: {} records, checkpointed to {}, head {}{}\n",
                        c.writer,
                        c.records,
                        c.checkpointed,
                        c.head,
                        match c.pruned {
                            0 => String::new(),
                            n => format!(" (records 1 to {n} pruned, as its signed base says)"),
                        }
                    ));
                }
                if let (Some(path), true) = (&a.against, report.anchors_pruned > 0) {
                    text.push_str(&format!(
                        "of the {} records known from {}, {} are in the store unchanged and {} \
                         were pruned, as the chains' signed bases say\n",
                        report.anchors,
                        path.display(),
                        report.anchors - report.anchors_pruned,
                        report.anchors_pruned
                    ));
                } else if let Some(path) = &a.against {
                    text.push_str(&format!(
                        "{} known from {} {} in the store unchanged\n",
                        match report.anchors {
                            1 => "the one record".to_owned(),
                            n => format!("all {n} records"),
                        },
                        path.display(),
                        if report.anchors == 1 { "is" } else { "are" }
                    ));
                }
                text.push_str(&format!(
                    "valid: {} checkpoints, {} issuances with their records\n",
                    report.checkpoints, report.issuances
                ));
                print_text(&text)
            }
        },
        Err(broken) => {
            if a.format.format == Format::Json {
                print_json(&json!({
                    "valid": false,
                    "error": broken.to_string(),
                    "next": next_step(&broken),
                }))?;
            }
            Err(CliError::invalid(format!(
                "audit trail broken: {broken}; {}",
                next_step(&broken)
            ))
            .reported())
        }
    }
}
