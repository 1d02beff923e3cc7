//! The example binaries, run as processes: `agent_pair`, and `agent_server --once` with
//! `agent_client` on credential directories written exactly as `agentid cert issue` and
//! `agentid delegate --out` write them (made here with the CA library).
//!
//! `cargo test` builds the examples before it runs the tests; they are found next to this test
//! binary (`target/<profile>/examples/`), so `CARGO_TARGET_DIR` and profiles work.
#![cfg(test)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use agentid::ca::RevokeTarget;
use support::*;

/// How long any example process may run.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

fn example(name: &str) -> PathBuf {
    // This test runs from target/<profile>/deps/; examples live in target/<profile>/examples/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the whole package's tests (`cargo test -p agentid`), which build the examples",
        path.display()
    );
    // `cargo test --test examples` alone does not rebuild the examples: refuse a binary older
    // than its own source or the facade's (it would test yesterday's code).
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
    let mut sources = vec![manifest.join("examples").join(format!("{name}.rs"))];
    // The facade, and the module the agent examples share.
    for dir in ["src", "examples/common"] {
        sources.extend(
            std::fs::read_dir(manifest.join(dir))
                .unwrap()
                .map(|e| e.unwrap().path()),
        );
    }
    for source in sources {
        let changed = std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .unwrap();
        assert!(
            changed <= built,
            "{} is older than {}: run `cargo test -p agentid` (or `cargo build --examples`) first",
            path.display(),
            source.display()
        );
    }
    path
}

/// A child process whose output is collected by reader threads; killed when dropped.
struct Proc {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    lines: mpsc::Receiver<String>,
}

fn collect(
    r: impl Read + Send + 'static,
    lines: Option<mpsc::Sender<String>>,
) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &lines {
                let _ = tx.send(line.clone());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    })
}

impl Proc {
    fn spawn(program: &Path, args: &[&str]) -> Self {
        Self::spawn_with(program, args, false)
    }

    /// As [`Proc::spawn`], with stderr's lines (the log) waited for by [`Proc::line_with`] too.
    fn spawn_logging(program: &Path, args: &[&str]) -> Self {
        Self::spawn_with(program, args, true)
    }

    fn spawn_with(program: &Path, args: &[&str], stderr_lines: bool) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = collect(
            child.stderr.take().unwrap(),
            stderr_lines.then(|| tx.clone()),
        );
        let stdout = collect(child.stdout.take().unwrap(), Some(tx));
        Proc {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            lines,
        }
    }

    /// Waits for a stdout line (or, from [`Proc::spawn_logging`], stderr line) containing
    /// `needle` (bounded) and returns it.
    fn line_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no stdout line with {needle:?}: {e}"),
            }
        }
    }

    /// Waits for the exit (bounded: killed after `timeout`, giving `None`), then the output.
    fn finish(mut self, timeout: Duration) -> (Option<ExitStatus>, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Output is complete once the process is gone.
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap()).unwrap_or_default();
        (status, join(self.stdout.take()), join(self.stderr.take()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn agent_pair_runs_the_main_job() {
    let (status, out, err) = Proc::spawn(&example("agent_pair"), &[]).finish(PROCESS_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "agent_pair failed: {status:?}\n{out}\n{err}"
    );
    for expected in [
        "initialised for trust domain example.org",
        "without a grant",
        "delegated \"repo:read\" to spiffe://example.org/agent/coder/task/",
        "effective scope \"repo:read\"",
        "\"repo:read\" -> ok: repo:read granted",
        "\"repo:write\" -> denied: scope_not_granted",
        "all expected outcomes happened",
    ] {
        assert!(
            out.contains(expected),
            "agent_pair printed no {expected:?}:\n{out}"
        );
    }
}

/// What one server/client run must show. The client always runs with `--revocations` and asks
/// for `repo:read` and `repo:write`; the server must warn that revocation checking is disabled
/// exactly when it runs without `--revocations`.
struct Case<'a> {
    name: &'a str,
    /// The client's credential directory.
    client_dir: &'a Path,
    /// The server's options besides `--dir`, `--listen` and `--once`.
    server_args: Vec<&'a str>,
    /// The client's exit status (success or not), and lines it prints on stdout.
    client: (bool, Vec<&'a str>),
    /// The server's exit status (`--once`: success or not), and lines it prints on stdout;
    /// `None`: it never got a connection (it is killed).
    server: Option<(bool, Vec<&'a str>)>,
}

#[test]
fn agent_server_and_agent_client_as_two_processes() {
    let server_bin = example("agent_server");
    let client_bin = example("agent_client");
    let a = TestCa::new("example.org");
    let librarian = a.open_task("librarian", "repo:serve", 0, None);
    let planner = a.open_task("planner", "repo:read repo:write", 1, None);
    let mut coder = a.child(&planner, "coder");
    planner.delegate(&mut coder, "repo:read");

    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let bundle = a.bundle();
    librarian.write_dir(&dir("librarian"), &bundle);
    planner.write_dir(&dir("planner"), &bundle);
    coder.write_dir(&dir("coder"), &bundle);
    // A copy of the coder whose key file others can read: refused before any connection.
    coder.write_dir(&dir("coder-open-key"), &bundle);
    let open_key = dir("coder-open-key/key.pem");
    let mut perms = std::fs::metadata(&open_key).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&open_key, perms).unwrap();

    // The CA's list now, and after revoking the coder's agent name.
    let rev = dir("revocations.jwt");
    std::fs::write(&rev, a.revocations()).unwrap();
    a.ca.revoke(
        &RevokeTarget::Agent("coder".into()),
        None,
        "operator",
        SystemTime::now(),
    )
    .unwrap();
    let rev_coder = dir("revocations-coder-revoked.jwt");
    std::fs::write(&rev_coder, a.revocations()).unwrap();
    let rev = rev.to_str().unwrap();
    let rev_coder = rev_coder.to_str().unwrap();

    let librarian_dir = dir("librarian");
    let librarian_dir = librarian_dir.to_str().unwrap();
    let coder_dir = dir("coder");
    let planner_dir = dir("planner");
    let open_key_dir = dir("coder-open-key");
    let read_write = [
        "--revocations",
        rev,
        "--scope",
        "repo:read",
        "--scope",
        "repo:write",
    ];
    let cases = vec![
        Case {
            name: "child with a link (chain.jwt), revocation lists on both sides",
            client_dir: &coder_dir,
            server_args: vec!["--revocations", rev],
            client: (
                true,
                vec![
                    "presenting",
                    "chain depth 1",
                    "request \"repo:read\" -> granted",
                    "request \"repo:write\" -> refused (scope_not_granted)",
                ],
            ),
            server: Some((
                true,
                vec![
                    "effective scope \"repo:read\"",
                    "request \"repo:write\" -> refused scope_not_granted",
                ],
            )),
        },
        Case {
            name: "grant holder (grant.jwt, no chain.jwt)",
            client_dir: &planner_dir,
            server_args: vec!["--revocations", rev],
            client: (
                true,
                vec![
                    "request \"repo:read\" -> granted",
                    "request \"repo:write\" -> granted",
                ],
            ),
            server: Some((true, vec!["chain depth 0"])),
        },
        Case {
            name: "no --revocations: the server warns and runs",
            client_dir: &coder_dir,
            server_args: vec![],
            client: (true, vec!["request \"repo:read\" -> granted"]),
            server: Some((true, vec!["request \"repo:read\" -> granted"])),
        },
        Case {
            name: "--allow names the client",
            client_dir: &coder_dir,
            server_args: vec![
                "--revocations",
                rev,
                "--allow",
                "planner",
                "--allow",
                "coder",
            ],
            client: (true, vec!["request \"repo:read\" -> granted"]),
            server: Some((
                true,
                vec![
                "admitting spiffe://example.org/agent/planner, spiffe://example.org/agent/coder",
            ],
            )),
        },
        Case {
            name: "--allow does not name the client",
            client_dir: &coder_dir,
            server_args: vec!["--revocations", rev, "--allow", "planner"],
            client: (false, vec!["refused"]),
            server: Some((false, vec!["policy_denied"])),
        },
        Case {
            name: "the CA's newer list revokes the client's agent",
            client_dir: &coder_dir,
            server_args: vec!["--revocations", rev_coder],
            client: (false, vec!["refused: revoked"]),
            server: Some((false, vec!["revoked"])),
        },
        Case {
            name: "a key file others can read is refused before connecting",
            client_dir: &open_key_dir,
            server_args: vec!["--revocations", rev],
            client: (false, vec![]),
            server: None,
        },
    ];

    let mut failures = Vec::new();
    for case in cases {
        let name = case.name;
        let mut server_args = vec!["--dir", librarian_dir, "--listen", "127.0.0.1:0", "--once"];
        server_args.extend(case.server_args.iter().copied());
        let server = Proc::spawn(&server_bin, &server_args);
        let listening = server.line_with("listening on ");
        let addr = listening.rsplit(' ').next().unwrap().to_owned();

        let mut client_args = vec![
            "--dir",
            case.client_dir.to_str().unwrap(),
            "--connect",
            &addr,
        ];
        client_args.extend(read_write.iter().copied());
        let (client_status, client_out, client_err) =
            Proc::spawn(&client_bin, &client_args).finish(PROCESS_TIMEOUT);
        let wait = if case.server.is_some() {
            PROCESS_TIMEOUT
        } else {
            Duration::ZERO
        };
        let (server_status, server_out, server_err) = server.finish(wait);
        let transcript = format!(
            "--- client {client_status:?}\n{client_out}{client_err}--- server {server_status:?}\n{server_out}{server_err}"
        );

        // Every case runs; the failures are reported together.
        let mut wrong = Vec::new();
        let (client_ok, client_says) = &case.client;
        if client_status.map(|s| s.success()) != Some(*client_ok) {
            wrong.push(format!(
                "client status {client_status:?}, expected success = {client_ok}"
            ));
        }
        for line in client_says {
            if !client_out.contains(line) {
                wrong.push(format!("the client printed no {line:?}"));
            }
        }
        match &case.server {
            Some((ok, _)) if server_status.map(|s| s.success()) != Some(*ok) => {
                wrong.push(format!(
                    "server status {server_status:?}, expected success = {ok}"
                ));
            }
            None if server_status.is_some() => wrong.push("the server exited".into()),
            _ => {}
        }
        for line in case.server.iter().flat_map(|(_, says)| says) {
            if !server_out.contains(line) {
                wrong.push(format!("the server printed no {line:?}"));
            }
        }
        let server_warns = !case.server_args.contains(&"--revocations");
        if server_err.contains("revocation checking is DISABLED") != server_warns {
            wrong.push(format!("revocation warning expected: {server_warns}"));
        }
        if !client_ok && case.server.is_none() && !client_err.contains("chmod 600") {
            wrong.push("the client did not name the key file's mode".into());
        }
        if !wrong.is_empty() {
            failures.push(format!("{name}: {}\n{transcript}", wrong.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The `agentid` CLI binary, built by `cargo test --workspace` (the README's test command).
fn cli() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join("agentid");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace`, which builds the agentid binary",
        path.display()
    );
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/agentid-cli/src");
    let mut dirs = vec![src];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let changed = std::fs::metadata(&p).and_then(|m| m.modified()).unwrap();
                assert!(
                    changed <= built,
                    "{} is older than {}: rebuild it",
                    path.display(),
                    p.display()
                );
            }
        }
    }
    path
}

/// Runs `agentid ARGS` in `dir`, bounded, and returns stdout; panics with stderr on failure.
fn agentid(dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(cli())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap(), None);
    let err = collect(child.stderr.take().unwrap(), None);
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("agentid {args:?} timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "agentid {args:?} failed: {err}");
    out
}

/// The README's "Two terminals" flow, command for command, with the real `agentid` binary: the
/// files the CLI writes are what the example agents read.
#[test]
fn the_readme_two_terminal_flow_with_the_agentid_cli() {
    let server_bin = example("agent_server");
    let client_bin = example("agent_client");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    agentid(
        d,
        &[
            "ca",
            "init",
            "--trust-domain",
            "example.org",
            "--dir",
            "demo/ca",
        ],
    );
    std::fs::write(
        d.join("demo/ca/policy.toml"),
        "[agents.planner]\nscopes = [\"repo:read\", \"repo:write\", \"issues:*\"]\nmax_depth = 2\n\
         requesters = [\"operator\"]\n\n[agents.coder]\nrequesters = [\"parent:planner\"]\n\n\
         [agents.librarian]\nscopes = [\"repo:serve\"]\nrequesters = [\"operator\"]\n",
    )
    .unwrap();
    for args in [
        "cert issue --ca demo/ca --agent librarian --scope repo:serve --out-dir demo/librarian",
        "cert issue --ca demo/ca --agent planner --scope repo:read --scope repo:write --max-depth 1 --out-dir demo/planner",
        "cert issue --ca demo/ca --agent coder --parent demo/planner --out-dir demo/coder",
        "delegate --chain demo/planner/grant.jwt --key demo/planner/key.pem --to-cert demo/coder/cert.pem \
         --bundle demo/coder/bundle.json --scope repo:read --ttl 10m --out demo/coder/chain.jwt",
        "revocations export --ca demo/ca --out demo/revocations.jwt",
    ] {
        agentid(d, &args.split_whitespace().collect::<Vec<_>>());
    }
    let path = |p: &str| d.join(p).to_str().unwrap().to_owned();
    let (lib, coder, rev) = (
        path("demo/librarian"),
        path("demo/coder"),
        path("demo/revocations.jwt"),
    );

    let run = |rev: &str| {
        let server = Proc::spawn(
            &server_bin,
            &[
                "--dir",
                &lib,
                "--listen",
                "127.0.0.1:0",
                "--once",
                "--revocations",
                rev,
            ],
        );
        let addr = server
            .line_with("listening on ")
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned();
        let client = Proc::spawn(
            &client_bin,
            &[
                "--dir",
                &coder,
                "--connect",
                &addr,
                "--revocations",
                rev,
                "--scope",
                "repo:read",
                "--scope",
                "repo:write",
            ],
        );
        let (status, out, err) = client.finish(PROCESS_TIMEOUT);
        drop(server.finish(PROCESS_TIMEOUT));
        (status.map(|s| s.success()), format!("{out}{err}"))
    };
    let (ok, out) = run(&rev);
    assert_eq!(ok, Some(true), "{out}");
    assert!(out.contains("request \"repo:read\" -> granted"), "{out}");
    assert!(
        out.contains("request \"repo:write\" -> refused (scope_not_granted)"),
        "{out}"
    );

    // Revoke the coder's agent with the CLI: its next connection is refused.
    agentid(d, &["revoke", "--ca", "demo/ca", "--agent", "coder"]);
    agentid(
        d,
        &[
            "revocations",
            "export",
            "--ca",
            "demo/ca",
            "--out",
            "demo/revocations.jwt",
        ],
    );
    let (ok, out) = run(&rev);
    assert_eq!(ok, Some(false), "{out}");
    assert!(out.contains("revoked"), "{out}");
}

/// The README's first deadline: the server's certificate expires while it runs, and every
/// handshake is refused `no_credential`. The server says so once on stdout, with the renewal
/// to run, rather than leaving the operator with refusals that give no reason.
#[test]
fn the_server_says_when_its_certificate_expired_and_what_to_run() {
    let server_bin = example("agent_server");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    agentid(
        d,
        &["ca", "init", "--trust-domain", "example.org", "--dir", "ca"],
    );
    std::fs::write(
        d.join("ca/policy.toml"),
        "[agents.librarian]\nscopes = [\"repo:serve\"]\nrequesters = [\"operator\"]\n",
    )
    .unwrap();
    // A short lifetime (the server must start before it ends; it has no other bound).
    agentid(
        d,
        &"cert issue --ca ca --agent librarian --scope repo:serve --ttl 8s --out-dir lib"
            .split_whitespace()
            .collect::<Vec<_>>(),
    );
    let lib = d.join("lib").to_str().unwrap().to_owned();
    let server = Proc::spawn(&server_bin, &["--dir", &lib, "--listen", "127.0.0.1:0"]);
    server.line_with("listening on ");
    let line = server.line_with("expired");
    assert!(line.contains("no_credential"), "{line}");
    assert!(
        line.contains(&format!("agentid cert renew --ca CA_DIR --dir {lib}")),
        "{line}"
    );
    drop(server);
    // A client started from an expired directory refuses to start, and says the same.
    let client = Proc::spawn(
        &example("agent_client"),
        &["--dir", &lib, "--connect", "127.0.0.1:9"],
    );
    let (status, _, err) = client.finish(PROCESS_TIMEOUT);
    assert_eq!(status.map(|s| s.success()), Some(false), "{err}");
    assert!(err.contains("expired"), "{err}");
    assert!(
        err.contains(&format!("agentid cert renew --ca CA_DIR --dir {lib}")),
        "{err}"
    );
}

/// The server re-reads its `--revocations` list every second. One it can no longer read (here
/// refused: writable by others, so anybody could have put an older list there) used to be
/// skipped in silence until the list held went stale and every peer was refused; now the
/// server says so on stderr, naming the file and why, once per reason (not every second), and
/// says when it reads the file again.
#[test]
fn the_server_says_once_when_its_revocation_list_cannot_be_read() {
    use std::os::unix::fs::PermissionsExt;
    let server_bin = example("agent_server");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    agentid(
        d,
        &["ca", "init", "--trust-domain", "example.org", "--dir", "ca"],
    );
    std::fs::write(
        d.join("ca/policy.toml"),
        "[agents.librarian]\nscopes = [\"repo:serve\"]\nrequesters = [\"operator\"]\n",
    )
    .unwrap();
    for args in [
        "cert issue --ca ca --agent librarian --scope repo:serve --ttl 10m --out-dir lib",
        "revocations export --ca ca --out rev.jwt",
    ] {
        agentid(d, &args.split_whitespace().collect::<Vec<_>>());
    }
    let lib = d.join("lib").to_str().unwrap().to_owned();
    let rev = d.join("rev.jwt");
    let rev_s = rev.to_str().unwrap().to_owned();
    let server = Proc::spawn_logging(
        &server_bin,
        &[
            "--dir",
            &lib,
            "--listen",
            "127.0.0.1:0",
            "--revocations",
            &rev_s,
        ],
    );
    server.line_with("listening on ");
    let mode = std::fs::metadata(&rev).unwrap().permissions().mode();
    std::fs::set_permissions(&rev, std::fs::Permissions::from_mode(mode | 0o002)).unwrap();
    let line = server.line_with("revocation list not re-read");
    assert!(line.contains(&rev_s), "names the file: {line}");
    assert!(line.contains("stale"), "says what it leads to: {line}");
    // Some more polls of the same refused file, then readable again.
    std::thread::sleep(Duration::from_millis(3500));
    std::fs::set_permissions(&rev, std::fs::Permissions::from_mode(mode)).unwrap();
    server.line_with("revocation list read again");
    let (_, _, err) = server.finish(Duration::ZERO);
    assert_eq!(
        err.matches("revocation list not re-read").count(),
        1,
        "once per reason, not every second: {err}"
    );
}
