//! `agentid cert renew --daemon --exec CMD`: the command run after each renewal.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the command may run before it is killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a running command is checked for its exit.
const POLL: Duration = Duration::from_millis(50);

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error("cannot start it: {0}")]
    Spawn(std::io::Error),
    #[error("cannot wait for it: {0}")]
    Wait(std::io::Error),
    #[error("it ran longer than {0:?} and was killed")]
    Timeout(Duration),
    #[error("it exited with {0}")]
    Failed(ExitStatus),
    #[error("the task running it failed: {0}")]
    Join(String),
}

/// The `--exec` command of a renewal daemon, run beside the renewals: at most one at a time,
/// and a renewal that lands while it runs has it run once more after it ends (renewals that
/// land meanwhile are coalesced into that one run: the command sees the newest certificate).
pub struct Hook {
    cmd: Vec<OsString>,
    running: Option<tokio::task::JoinHandle<()>>,
    again: bool,
}

impl Hook {
    /// A hook for `cmd` (program then arguments; empty: nothing is ever run).
    pub fn new(cmd: &[OsString]) -> Self {
        Self {
            cmd: cmd.to_vec(),
            running: None,
            again: false,
        }
    }

    /// A renewed certificate was written: runs the command now, or once more after the
    /// running one ends.
    pub fn renewed(&mut self) {
        if self.cmd.is_empty() {
            return;
        }
        if self.running.is_some() {
            self.again = true;
        } else {
            self.start();
        }
    }

    fn start(&mut self) {
        let cmd = self.cmd.clone();
        self.running = Some(tokio::spawn(async move { after_renewal(&cmd).await }));
    }

    /// Completes when the running command ends (pending for ever when none runs), and starts
    /// the next run if a renewal asked for one meanwhile. Cancel-safe: for `select!` loops.
    pub async fn finished(&mut self) {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        // `after_renewal` logs its own outcome; a task that panicked or was cancelled is said
        // here.
        if let Err(e) = running.await {
            tracing::error!(error = %e, "the task running the --exec command failed");
        }
        self.running = None;
        if std::mem::take(&mut self.again) {
            self.start();
        }
    }
}

/// Runs `cmd` (program then arguments, no shell) when it is not empty, bounded by
/// [`EXEC_TIMEOUT`]; a failure is logged, never returned.
async fn after_renewal(cmd: &[OsString]) {
    let Some((program, args)) = cmd.split_first() else {
        return;
    };
    let (program, args) = (program.clone(), args.to_vec());
    let shown = program.to_string_lossy().into_owned();
    let res = tokio::task::spawn_blocking(move || run(&program, &args, EXEC_TIMEOUT))
        .await
        .map_err(|e| ExecError::Join(e.to_string()))
        .and_then(|r| r);
    match res {
        Ok(()) => tracing::info!(command = %shown, "--exec command succeeded"),
        Err(e) => tracing::error!(command = %shown, error = %e, "--exec command failed"),
    }
}

fn run(program: &OsString, args: &[OsString], timeout: Duration) -> Result<(), ExecError> {
    let mut command = Command::new(program);
    // Its own process group, so that a timeout ends what it started too (`sh -c 'curl ...'`
    // leaves `curl` running when only `sh` is killed).
    command.args(args).stdin(Stdio::null()).process_group(0);
    // Its output goes to stderr: stdout carries the daemon's own data.
    if let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() {
        command.stdout(Stdio::from(fd));
    }
    let mut child = command.spawn().map_err(ExecError::Spawn)?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().map_err(ExecError::Wait)? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(ExecError::Failed(status)),
            None if Instant::now() >= deadline => {
                kill_group(&child);
                let _ = child.kill();
                let _ = child.wait();
                return Err(ExecError::Timeout(timeout));
            }
            None => std::thread::sleep(POLL),
        }
    }
}

/// Kills the process group `child` leads (made by `process_group(0)`), as it has not exited:
/// its group is still its own.
fn kill_group(child: &std::process::Child) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    // Never group 1 (`kill(-1)` signals every process).
    if let Some(pid) = pid.filter(|p| p.as_raw_nonzero().get() > 1) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_time_is_killed() {
        let r = run(&"sleep".into(), &["10".into()], Duration::from_millis(200));
        assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
    }

    /// Whether process `pid` has ended (gone, or a zombie waiting for its new parent).
    fn ended(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // `PID (COMM) STATE ...`: the state follows the last `)`.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    /// `--exec sh -c 'curl ...'` whose `curl` hangs: killing only `sh` left `curl` running for
    /// ever (holding the daemon's stderr), one more at each renewal.
    #[test]
    fn a_command_past_its_time_is_killed_with_what_it_started() {
        // Processes are looked at through /proc (Linux).
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 1000 & echo $! > '{}'; wait", pidfile.display());
        let r = run(
            &"sh".into(),
            &["-c".into(), script.into()],
            Duration::from_secs(3),
        );
        assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
        assert!(!pid.is_empty());
        // Killed at once: a bounded wait for the system to show it, not a timing.
        let gone = (0..200).any(|_| {
            let e = ended(&pid);
            if !e {
                std::thread::sleep(Duration::from_millis(50));
            }
            e
        });
        if !gone {
            let _ = Command::new("kill").arg("-9").arg(&pid).status();
        }
        assert!(gone, "the command's own child {pid} still runs");
    }

    #[test]
    fn failures_are_told_apart() {
        assert!(matches!(
            run(&"false".into(), &[], EXEC_TIMEOUT),
            Err(ExecError::Failed(_))
        ));
        assert!(matches!(
            run(&"/nonexistent/agentid-test".into(), &[], EXEC_TIMEOUT),
            Err(ExecError::Spawn(_))
        ));
        assert!(run(&"true".into(), &[], EXEC_TIMEOUT).is_ok());
    }
}
