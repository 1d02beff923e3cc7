//! What the agent examples (`agent_server`, `agent_client`, `demo_agent`, `http_agents`) do
//! alike: logging to stderr, the CA's revocation list, and the error line at exit.
#![allow(dead_code, reason = "each example uses a subset")]

use std::path::Path;
use std::process::ExitCode;

use agentid::files::read_token_file;
use agentid::protocol::VerifierConfig;
use anyhow::{Context, Result};

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). With `colours`, in colour when
/// stderr is a terminal (a log file or a pipe gets plain text); without, always plain.
pub fn init_logging(colours: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colours && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}

/// `config` with the CA's revocation list from `file` applied, and that list; without a file,
/// `config` with revocation checking DISABLED, said on stderr: `accepted` (what then gets
/// through) "ACCEPTED".
pub fn revocations(
    mut config: VerifierConfig,
    file: Option<&Path>,
    accepted: &str,
) -> Result<(VerifierConfig, Option<String>)> {
    match file {
        Some(path) => {
            let list = read_token_file(path)?;
            config
                .apply_revocation_list(&list)
                .with_context(|| format!("{}: revocation list refused", path.display()))?;
            Ok((config, Some(list)))
        }
        None => {
            tracing::warn!(
                "revocation checking is DISABLED: no --revocations FILE given, so {accepted} \
                 ACCEPTED (VerifierConfig::danger_accept_missing_or_stale_revocations)"
            );
            Ok((config.danger_accept_missing_or_stale_revocations(), None))
        }
    }
}

/// The exit status of a run: 0, or 1 with the error on one line after `name` on stderr.
pub fn exit_status(name: &str, result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: an error whose message already holds
/// its cause's text (`FILE: No such file or directory`) does not repeat it.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Loads a credential directory; when it is refused because its certificate expired, says
/// what to run: the CA's operator renews it (`agentid cert renew --ca CA_DIR --dir DIR`; the
/// CA service renews only a certificate still valid), or the agent enrolls again.
pub fn load_credential_dir(dir: &Path) -> Result<agentid::files::CredentialDir> {
    agentid::files::CredentialDir::load(dir).map_err(|e| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match agentid::files::Holder::load(dir) {
            Ok(h) if h.leaf.not_after <= now => anyhow::anyhow!(
                "{e}: it expired at Unix time {}: renew it (`agentid cert renew --ca CA_DIR \
                 --dir {}` as the CA's operator; the CA service renews only a certificate still \
                 valid) or enroll again",
                h.leaf.not_after,
                dir.display()
            ),
            _ => e.into(),
        }
    })
}
