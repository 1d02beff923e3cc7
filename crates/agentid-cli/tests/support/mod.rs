//! Shared by the CLI test binaries: a temp directory with an initialized CA, and runners that
//! check the output conventions (JSON on stdout; on failure the exit status and ONE
//! `agentid: ...` line on stderr, never a panic or a backtrace).
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// The policy every test CA runs with.
pub const POLICY: &str = r#"
[defaults]
ttl = "5m"
max_ttl = "15m"
task_ttl = "1h"
max_task_ttl = "8h"

[agents.planner]
scopes = ["tickets:*"]
max_ttl = "15m"
max_depth = 3
requesters = ["operator"]

[agents.summarizer]
scopes = ["tickets:*"]
max_ttl = "15m"
requesters = ["parent:planner"]

[agents.auditor]
scopes = ["tickets:read"]
requesters = ["operator"]

[services.search]
requesters = ["operator"]
"#;

/// Splits a command line on whitespace (no argument in these tests holds a space).
fn argv(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A temp directory (the working directory of every command) holding a CA in `ca/`.
pub struct Env {
    pub dir: TempDir,
}

impl Env {
    /// A P-256 CA for `example.org` with [`POLICY`].
    pub fn new() -> Self {
        Self::with_key_type("p256")
    }

    /// A CA of the given key type for `example.org` with [`POLICY`].
    pub fn with_key_type(key_type: &str) -> Self {
        let env = Self::empty();
        env.ok(&format!(
            "ca init --trust-domain example.org --dir ca --key-type {key_type}"
        ));
        std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
        env
    }

    /// No CA yet.
    pub fn empty() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::cargo_bin("agentid")
            .unwrap()
            .current_dir(self.dir.path())
            .env_remove("AGENTID_LOG")
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command line that must succeed; returns stdout.
    pub fn ok(&self, line: &str) -> String {
        let out = self.run(&argv(line));
        assert!(
            out.status.success(),
            "agentid {line} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command line that must succeed, with `--format json`; returns the parsed output.
    pub fn json(&self, line: &str) -> Value {
        serde_json::from_str(&self.ok(&format!("{line} --format json")))
            .expect("stdout is one JSON document")
    }

    /// Runs a command that must fail with `code`; checks that stderr is one `agentid: ` line
    /// holding `needle` (after the warnings of the `--danger-*` flags given, if any). Returns
    /// (stdout, the stderr line).
    pub fn fails_args(&self, args: &[&str], code: i32, needle: &str) -> (String, String) {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "agentid {args:?}: stderr {stderr}"
        );
        let lines: Vec<&str> = without_danger_warnings(args, &stderr);
        assert_eq!(
            lines.len(),
            1,
            "agentid {args:?}: stderr is not one line: {stderr:?}"
        );
        assert!(lines[0].starts_with("agentid: "), "{stderr}");
        assert!(
            lines[0].contains(needle),
            "agentid {args:?}: {stderr:?} lacks {needle:?}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{stderr}"
        );
        (String::from_utf8(out.stdout).unwrap(), lines[0].to_owned())
    }

    /// [`Env::fails_args`] for a command line.
    pub fn fails(&self, line: &str, code: i32, needle: &str) -> (String, String) {
        self.fails_args(&argv(line), code, needle)
    }

    /// Opens a task for `planner` in `out`: scope `tickets:read tickets:comment`, max depth 2.
    pub fn planner(&self, out: &str) -> Value {
        self.json(&format!(
            "cert issue --ca ca --agent planner --scope tickets:read --scope tickets:comment --max-depth 2 --out-dir {out}"
        ))
    }

    /// A `summarizer` child of the task held in `parent`, written to `out`.
    pub fn child(&self, parent: &str, out: &str) -> Value {
        self.json(&format!(
            "cert issue --ca ca --agent summarizer --parent {parent} --out-dir {out}"
        ))
    }

    /// Runs `chain verify ARGS` expecting exit `code`; returns the JSON report.
    pub fn verdict(&self, args: &str, code: i32) -> Value {
        let out = self.run(&argv(&format!("chain verify {args}")));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "chain verify {args}: {stderr}"
        );
        if code != 0 {
            let lines = without_danger_warnings(&argv(args), &stderr);
            assert_eq!(lines.len(), 1, "{stderr}");
            assert!(lines[0].starts_with("agentid: chain invalid: "), "{stderr}");
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn chmod(&self, rel: &str, mode: u32) {
        std::fs::set_permissions(self.path(rel), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// The lines of `stderr` after the warnings that the `--danger-*` flags among `args` print
/// first (at most one ` WARN ` line naming each flag given, nothing else).
fn without_danger_warnings<'a>(args: &[&str], stderr: &'a str) -> Vec<&'a str> {
    let danger: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| a.starts_with("--danger-"))
        .collect();
    let mut lines: Vec<&str> = stderr.lines().collect();
    let warnings = lines
        .iter()
        .take_while(|l| l.starts_with(" WARN ") || l.starts_with("WARN "))
        .count();
    // A command refused before it runs (a usage error) warns about nothing.
    assert!(warnings <= danger.len(), "{stderr:?}");
    for w in lines.iter().take(warnings) {
        assert!(danger.iter().any(|f| w.contains(f)), "{w}: {stderr:?}");
    }
    lines.drain(..warnings);
    lines
}

/// The permission bits of a file.
pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Decodes a base64url (unpadded) JSON part of a compact JWS.
pub fn b64url_json(part: &str) -> Value {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in part.bytes() {
        bits = (bits << 6) | alphabet.iter().position(|a| *a == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    serde_json::from_slice(&out).unwrap()
}

/// The claims of token `index` of a chain string.
pub fn claims(chain: &str, index: usize) -> Value {
    let token = chain.trim().split('~').nth(index).unwrap();
    b64url_json(token.split('.').nth(1).unwrap())
}

#[allow(unused_imports, reason = "each test binary uses a subset")]
pub use agentid_test_support::openssl::available as have_openssl;
#[allow(unused_imports, reason = "each test binary uses a subset")]
pub use agentid_test_support::openssl::run_ok as openssl;

/// `NAME.key` and `NAME.csr` in `dir`: a P-256 key and its CSR made by OpenSSL, with `extra`
/// request options.
pub fn openssl_csr(dir: &Path, name: &str, extra: &[&str]) {
    let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    args.extend(["-subj", "/CN=ignored", "-keyout", &key, "-out", &csr]);
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

/// `agentid ca serve --ca ca ARGS` running in an [`Env`] on 127.0.0.1, its stdout read (and
/// drained) by a thread line by line; killed (SIGKILL) and reaped when dropped, whatever happens.
pub struct CaServe {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for CaServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CaServe {
    /// How long the service may take to print each address.
    const WAIT: Duration = Duration::from_secs(30);

    /// Starts `agentid ca serve --ca ca` with `args` in `env`'s directory, its stderr to `stderr`.
    pub fn start(env: &Env, args: &[&str], stderr: Stdio) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentid"))
            .current_dir(env.path(""))
            .env_remove("AGENTID_LOG")
            .env_remove("RUST_LOG")
            .args(["ca", "serve", "--ca", "ca"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Guarded from here: a failed wait kills the process.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = tx.send(std::mem::take(&mut line));
            }
        });
        CaServe { child, lines }
    }

    /// The address on the next line the service prints, which must read `PREFIX ADDRESS`.
    pub fn next_addr(&self, prefix: &str) -> SocketAddr {
        let line = self.lines.recv_timeout(Self::WAIT).unwrap();
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap()
    }

    /// The address on the first line from now on that reads `PREFIX ADDRESS`, other lines
    /// passed over.
    pub fn find_addr(&self, prefix: &str) -> SocketAddr {
        let deadline = Instant::now() + Self::WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("ca serve printed its addresses");
            if let Some(a) = line.trim().strip_prefix(prefix) {
                return a.parse().unwrap();
            }
        }
    }
}

/// `agentid ca serve` with its mTLS and enrollment listeners (and `extra` arguments), both
/// addresses read as the service prints them.
pub struct CaService {
    /// The process (with the listeners `extra` asks for still to be read).
    pub process: CaServe,
    pub mtls: SocketAddr,
    pub enroll: SocketAddr,
}

impl CaService {
    /// Starts it in `env` (whose CA and policy are ready), its stderr inherited.
    pub fn start(env: &Env, extra: &[&str]) -> Self {
        let mut args = vec!["--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let process = CaServe::start(env, &args, Stdio::inherit());
        let mtls = process.next_addr("listening on ");
        let enroll = process.next_addr("enrollment listening on ");
        CaService {
            process,
            mtls,
            enroll,
        }
    }

    /// The CA API's URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.mtls)
    }

    /// The enrollment URL.
    pub fn enroll_url(&self) -> String {
        format!("https://{}", self.enroll)
    }
}
