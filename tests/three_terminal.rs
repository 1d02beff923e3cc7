//! The three-terminal demo run unattended, as `examples/demo_agent.rs` describes it: the real
//! `agentid ca serve`, a `demo_agent serve` and a `demo_agent call` on 127.0.0.1, with
//! certificate lifetimes of seconds, for more than three lifetimes. Every round must be granted
//! while both agents renew their certificates on their own and follow the CA's feeds.
//!
//! Needs the `agentid` binary with the CA service (`cargo build -p agentid-cli`, or
//! `cargo test --workspace`) and the examples (`cargo test -p agentid` builds them).
#![cfg(test)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Certificate lifetime of both agents.
const TTL_SECS: u64 = 12;
/// Rounds one second apart: more than three lifetimes.
const ROUNDS: u64 = 40;

fn target_dir() -> PathBuf {
    // This test runs from target/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn binary(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build the CLI (`cargo build -p agentid-cli`) and the examples (`cargo test -p agentid`)",
        path.display()
    );
    path
}

/// A child process killed when dropped; its stdout lines arrive on a channel, its stderr goes
/// to a log file in the test directory.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, dir: &Path, program: &Path, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(program)
            .current_dir(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .env("AGENTID_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            name,
            log,
        }
    }

    /// The next stdout line, within `within`.
    fn line(&self, within: Duration) -> String {
        self.lines.recv_timeout(within).unwrap_or_else(|e| {
            panic!(
                "{}: no output ({e}); its log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    /// The first stdout line starting with `prefix`, with the prefix removed.
    fn line_after(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left);
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(dir: &Path, cli: &Path, args: &[&str]) -> String {
    let out = Command::new(cli)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agentid {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const POLICY: &str = r#"
[defaults]
ttl = "5m"
task_ttl = "1h"
max_task_ttl = "8h"

[agents.librarian]
scopes = ["repo:serve"]
requesters = ["operator", "bootstrap"]

[agents.planner]
scopes = ["repo:read"]
requesters = ["operator", "bootstrap"]

[services.agentid-ca]
requesters = ["operator"]
"#;

#[test]
fn the_three_processes_keep_working_over_several_certificate_lifetimes() {
    let root = target_dir();
    let cli = binary(root.join("agentid"));
    let demo = binary(root.join("examples").join("demo_agent"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    run(
        dir,
        &cli,
        &["ca", "init", "--trust-domain", "example.org", "--dir", "ca"],
    );
    std::fs::write(dir.join("ca/policy.toml"), POLICY).unwrap();
    let ca = Proc::spawn(
        "ca",
        dir,
        &cli,
        &[
            "ca",
            "serve",
            "--ca",
            "ca",
            "--listen",
            "127.0.0.1:0",
            "--enroll-listen",
            "127.0.0.1:0",
        ],
    );
    let mtls = ca.line_after("listening on ", Duration::from_secs(30));
    let enroll = ca.line_after("enrollment listening on ", Duration::from_secs(30));
    let ttl = format!("{TTL_SECS}s");
    for (agent, scope) in [("librarian", "repo:serve"), ("planner", "repo:read")] {
        run(
            dir,
            &cli,
            &[
                "token",
                "create",
                "--ca",
                "ca",
                "--enroll-url",
                &format!("https://{enroll}"),
                "--renew-url",
                &format!("https://{mtls}"),
                "--agent",
                agent,
                "--scope",
                scope,
                "--ttl",
                &ttl,
                "--out",
                &format!("{agent}.token"),
            ],
        );
    }
    let feeds = [
        "--bundle-signing-key",
        "ca/bundle-signing.pub",
        "--bundle-interval",
        "2s",
    ];
    let mut args = vec![
        "serve",
        "--token-file",
        "librarian.token",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend(feeds);
    let server = Proc::spawn("server", dir, &demo, &args);
    let addr = server.line_after("listening on ", Duration::from_secs(60));

    let rounds = ROUNDS.to_string();
    let mut args = vec![
        "call",
        "--token-file",
        "planner.token",
        "--connect",
        &addr,
        "--scope",
        "repo:read",
        "--every",
        "1s",
        "--rounds",
        &rounds,
    ];
    args.extend(feeds);
    let client = Proc::spawn("client", dir, &demo, &args);
    let mut serials = std::collections::BTreeSet::new();
    for round in 1..=ROUNDS {
        let line = client.line_after(&format!("round {round}: "), Duration::from_secs(60));
        assert!(
            line.starts_with("repo:read -> granted "),
            "round {round}: {line}\nclient log:\n{}\nserver log:\n{}",
            std::fs::read_to_string(&client.log).unwrap_or_default(),
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        if let Some(serial) = line
            .split("(cert ")
            .nth(1)
            .and_then(|s| s.split(',').next())
        {
            serials.insert(serial.to_owned());
        }
    }
    // More than three lifetimes: the client's certificate was renewed at least three times.
    assert!(serials.len() >= 4, "certificates used: {serials:?}");
    let mut client = client;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = client.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the client did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "every round was granted: {status}");
    // The feed watchers follow each renewal on a new connection: no long-poll is cut under
    // them at the old certificate's deadline (hyper's "dispatch task is gone").
    for p in [&client, &server] {
        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
        let cut: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("dispatch task is gone"))
            .collect();
        assert!(cut.is_empty(), "{}: {cut:#?}", p.name);
    }
    drop(server);
    drop(ca);
}

/// The bundle-signing key the demo pins (it decides which grant and revocation keys the agent
/// takes from the CA's signed bundles) is read as a credential directory's files are: only if
/// the user running it holds it and every directory on the way. Whoever could write it could
/// have the agent take their grant keys. Refused before anything is sent to the CA.
#[test]
fn a_bundle_signing_key_others_can_write_is_refused_before_enrolling() {
    let root = target_dir();
    let cli = binary(root.join("agentid"));
    let demo = binary(root.join("examples").join("demo_agent"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run(
        dir,
        &cli,
        &["ca", "init", "--trust-domain", "example.org", "--dir", "ca"],
    );
    std::fs::write(dir.join("ca/policy.toml"), POLICY).unwrap();
    // A dead enrollment URL: nothing is listening, and nothing must be asked of it.
    run(
        dir,
        &cli,
        &[
            "token",
            "create",
            "--ca",
            "ca",
            "--enroll-url",
            "https://127.0.0.1:1",
            "--agent",
            "planner",
            "--scope",
            "repo:read",
            "--out",
            "planner.token",
        ],
    );
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::copy(
        dir.join("ca/bundle-signing.pub"),
        shared.join("bundle-signing.pub"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(&demo)
        .current_dir(dir)
        .args([
            "call",
            "--token-file",
            "planner.token",
            "--bundle-signing-key",
            "shared/bundle-signing.pub",
            "--scope",
            "repo:read",
            "--rounds",
            "1",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod go-w {}", shared.display())),
        "{stderr}"
    );
}
