//! Audit events as JSON lines (`audit.jsonl`), mirrored as `tracing` events.
//!
//! Fields: `ts, kind, actor, subject, task, serial, jti, outcome, reason`. Never keys, tokens,
//! CSRs or certificates.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{CaError, Result};

/// One audit event.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unix seconds.
    pub ts: u64,
    /// `issue.task`, `issue.child`, `issue.service`, `issue.renewal`, `revoke`, `revocations`, `bootstrap`.
    pub kind: String,
    /// Who asked.
    pub actor: String,
    /// The identity concerned.
    pub subject: Option<String>,
    /// The task id.
    pub task: Option<String>,
    /// Certificate serial.
    pub serial: Option<String>,
    /// Grant `jti`.
    pub jti: Option<String>,
    /// `ok` or `denied` or `error`.
    pub outcome: String,
    /// Why it was denied, or what was revoked.
    pub reason: Option<String>,
}

/// Appends events to a JSON-lines file.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: Option<PathBuf>,
}

impl AuditLog {
    /// An audit log appending to `path` (created 0600 if missing).
    pub fn file(path: &Path) -> Self {
        AuditLog {
            path: Some(path.to_path_buf()),
        }
    }

    /// A log that only emits `tracing` events.
    pub fn tracing_only() -> Self {
        AuditLog { path: None }
    }

    /// Records an event. The line is written with one `write` call in append mode, so
    /// concurrent writers do not interleave lines.
    ///
    /// A failed write is an error, and the CA fails the operation it records
    /// ([`CaError::AuditWrite`]) instead of handing out its result. The record is written after
    /// the store's commit, so when it fails the store already holds: the issuance (a
    /// certificate that was never returned; its identity's key binding and task stay recorded),
    /// the revocation (kept: dropping a revocation because its log line failed would fail
    /// open), the revocation list's consumed sequence number (the list is not returned), or the
    /// bootstrap token's hash (the token itself is not returned). Lines are not fsynced: after
    /// a crash the store is the record of issuance, and the last lines may be missing.
    pub fn record(&self, ev: &AuditEvent) -> Result<()> {
        tracing::info!(
            target: "agentid::audit",
            kind = %ev.kind,
            actor = %ev.actor,
            subject = ev.subject.as_deref().unwrap_or(""),
            task.id = ev.task.as_deref().unwrap_or(""),
            cert.serial = ev.serial.as_deref().unwrap_or(""),
            jti = ev.jti.as_deref().unwrap_or(""),
            outcome = %ev.outcome,
            reason = ev.reason.as_deref().unwrap_or(""),
            "audit"
        );
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(ev).map_err(|e| CaError::Store(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| CaError::io(path, e))?;
        f.write_all(&line).map_err(|e| CaError::io(path, e))?;
        Ok(())
    }
}
