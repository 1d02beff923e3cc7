//! The `agentid` binary, command by command: output shapes (text and JSON), the files written,
//! failures (exit status and a single `agentid: ...` line on stderr), and the end-to-end flow
//! ca init -> issue -> child -> delegate -> chain verify -> revoke -> export -> `revoked`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

const POLICY: &str = r#"
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

/// A temp directory with an initialized CA whose policy allows the agents above.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        Self::with_key_type("p256")
    }

    fn with_key_type(key_type: &str) -> Self {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        env.ok(&[
            "ca",
            "init",
            "--trust-domain",
            "example.org",
            "--dir",
            "ca",
            "--key-type",
            key_type,
        ]);
        std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        Command::cargo_bin("agentid")
            .unwrap()
            .current_dir(self.dir.path())
            .env_remove("AGENTID_LOG")
            .env_remove("RUST_LOG")
            .args(args)
            .assert()
    }

    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).get_output().clone();
        assert!(
            out.status.success(),
            "agentid {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must succeed with `--format json`; returns the parsed output.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("stdout is one JSON document")
    }

    /// Runs a command that must fail with `code`; checks stderr is one `agentid: ` line holding
    /// `needle`; returns (stdout, stderr line).
    fn fails(&self, args: &[&str], code: i32, needle: &str) -> (String, String) {
        let out = self.cmd(args).get_output().clone();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "agentid {args:?}: stderr {stderr}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
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
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        (String::from_utf8(out.stdout).unwrap(), lines[0].to_owned())
    }

    /// Opens a task for `planner` in `out` (max depth 2).
    fn planner(&self, out: &str) -> Value {
        self.json(&[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--scope",
            "tickets:read",
            "--scope",
            "tickets:comment",
            "--max-depth",
            "2",
            "--out-dir",
            out,
        ])
    }

    /// A `summarizer` child of the task in `parent`, written to `out`.
    fn child(&self, parent: &str, out: &str) -> Value {
        self.json(&[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "summarizer",
            "--parent",
            parent,
            "--out-dir",
            out,
        ])
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn b64url_json(part: &str) -> Value {
    // Tiny decoder for the tests: base64url without padding.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in part.bytes() {
        let v = alphabet.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    serde_json::from_slice(&out).unwrap()
}

// ------------------------------------------------------------------------------------------
// Command line and `ca init`
// ------------------------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2_with_one_line() {
    let env = Env::new();
    env.fails(&["cert", "issue", "--ca", "ca"], 2, "--agent");
    env.fails(&["nonsense"], 2, "nonsense");
    env.fails(&["ca", "init", "--dir", "x"], 2, "--trust-domain");
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--scope",
            "tickets:read",
            "--ttl",
            "soon",
        ],
        2,
        "--ttl",
    );
    env.fails(
        &[
            "cert",
            "verify",
            "x.pem",
            "--bundle",
            "b.pem",
            "--at",
            "yesterday",
        ],
        2,
        "--at",
    );
    // No target, and two targets.
    env.fails(&["revoke", "--ca", "ca"], 2, "required");
    env.fails(
        &["revoke", "--ca", "ca", "--task", "a", "--agent", "b"],
        2,
        "cannot be used with",
    );
    // Help is not an error.
    env.ok(&["--help"]);
    env.ok(&["cert", "issue", "--help"]);
}

#[test]
fn ca_init_json_and_refusals() {
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
    };
    let v = env.json(&["ca", "init", "--trust-domain", "example.org", "--dir", "ca"]);
    assert_eq!(v["trust_domain"], "example.org");
    assert_eq!(v["key_type"], "p256");
    assert_eq!(v["dir"], "ca");
    assert!(v["policy"].as_str().unwrap().ends_with("policy.toml"));
    for key in [
        "root.key",
        "intermediate.key",
        "grant.key",
        "revocation.key",
    ] {
        assert_eq!(mode(&env.path("ca").join(key)), 0o600, "{key}");
    }
    // Never over an existing CA.
    env.fails(
        &["ca", "init", "--trust-domain", "example.org", "--dir", "ca"],
        1,
        "already exists",
    );
    // Trust domain rules (uppercase is not canonical).
    env.fails(
        &[
            "ca",
            "init",
            "--trust-domain",
            "Example.org",
            "--dir",
            "ca2",
        ],
        1,
        "--trust-domain",
    );
    // The default policy allows nothing.
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--scope",
            "tickets:read",
        ],
        1,
        "policy",
    );
    assert!(
        !env.path("planner/key.pem").exists(),
        "no key left behind after a refusal"
    );
    // Text output tells the operator to edit the policy.
    let text = env.ok(&[
        "ca",
        "init",
        "--trust-domain",
        "example.org",
        "--dir",
        "ca3",
        "--key-type",
        "ed25519",
    ]);
    assert!(
        text.contains("ed25519") && text.contains("policy.toml"),
        "{text}"
    );
}

#[test]
fn a_readable_ca_key_is_refused() {
    let env = Env::new();
    std::fs::set_permissions(
        env.path("ca/intermediate.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--scope",
            "tickets:read",
        ],
        1,
        "chmod 600",
    );
    env.fails(
        &["bundle", "export", "--ca", "nowhere"],
        1,
        "no such CA directory",
    );
}

// ------------------------------------------------------------------------------------------
// cert issue
// ------------------------------------------------------------------------------------------

#[test]
fn issue_agent_writes_the_task_files() {
    let env = Env::new();
    let v = env.json(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--agent",
        "planner",
        "--task",
        "t1",
        "--ttl",
        "2m",
        "--scope",
        "tickets:read",
        "--aud",
        "spiffe://example.org/svc/search",
        "--principal",
        "email:alice@example.com",
        "--max-depth",
        "1",
        "--out-dir",
        "out",
    ]);
    assert_eq!(v["identity"], "spiffe://example.org/agent/planner/task/t1");
    assert_eq!(v["task"], "t1");
    assert_eq!(
        v["serial"].as_str().unwrap().len(),
        32,
        "128-bit serial: {v}"
    );
    assert_eq!(v["jkt"].as_str().unwrap().len(), 43);
    let (nb, na) = (
        v["not_before"].as_u64().unwrap(),
        v["not_after"].as_u64().unwrap(),
    );
    assert!(
        na > nb && na - nb <= 120 + 60,
        "2m TTL plus back-dating: {v}"
    );
    assert!(v["grant"]["jti"].is_string() && v["grant"]["exp"].as_u64().unwrap() > na);
    assert_eq!(v["out_dir"], "out");
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in [
        "key.pem",
        "cert.pem",
        "bundle.pem",
        "bundle.json",
        "grant.jwt",
    ] {
        assert!(files.iter().any(|p| p.ends_with(f)), "{f} in {files:?}");
    }
    assert_eq!(mode(&env.path("out/key.pem")), 0o600);
    assert!(env
        .read("out/key.pem")
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        env.read("out/cert.pem")
            .matches("BEGIN CERTIFICATE")
            .count(),
        2,
        "leaf then intermediate"
    );
    assert_eq!(
        env.read("out/bundle.pem")
            .matches("BEGIN CERTIFICATE")
            .count(),
        1,
        "the root"
    );
    let bundle: Value = serde_json::from_str(&env.read("out/bundle.json")).unwrap();
    let uses: Vec<&str> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["use"].as_str().unwrap())
        .collect();
    assert_eq!(uses, ["x509-svid", "agentid-grant", "agentid-revocation"]);

    // The grant carries what was asked, bound to the key in the certificate.
    let grant = env.read("out/grant.jwt");
    let parts: Vec<&str> = grant.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims = b64url_json(parts[1]);
    assert_eq!(claims["sub"], v["identity"]);
    assert_eq!(claims["task"], "t1");
    assert_eq!(claims["scope"], "tickets:read");
    assert_eq!(
        claims["aud"],
        serde_json::json!(["spiffe://example.org/svc/search"])
    );
    assert_eq!(claims["mode"], "on_behalf_of");
    assert_eq!(
        claims["principal"],
        serde_json::json!({"format": "email", "email": "alice@example.com"})
    );
    assert_eq!(claims["max_depth"], 1);
    let inspect = env.json(&["cert", "inspect", "out/cert.pem"]);
    assert_eq!(inspect["jkt"], v["jkt"]);

    // Text output.
    let text = env.ok(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--agent",
        "planner",
        "--scope",
        "tickets:read",
        "--out-dir",
        "out2",
    ]);
    assert!(
        text.contains("identity:  spiffe://example.org/agent/planner/task/"),
        "{text}"
    );
    assert!(text.contains("grant:"), "{text}");
}

#[test]
fn issue_generates_distinct_tasks_and_ed25519_keys() {
    let env = Env::new();
    let a = env.json(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--agent",
        "planner",
        "--scope",
        "tickets:read",
        "--out-dir",
        "a",
    ]);
    let b = env.json(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--agent",
        "planner",
        "--scope",
        "tickets:read",
        "--key-type",
        "ed25519",
        "--out-dir",
        "b",
    ]);
    assert_ne!(a["task"], b["task"]);
    assert!(
        a["task"].as_str().unwrap().len() >= 26,
        "128 random bits in base32: {a}"
    );
    assert_eq!(
        env.json(&["cert", "inspect", "b/cert.pem"])["key_type"],
        "Ed25519"
    );
    assert_eq!(
        env.json(&["cert", "inspect", "a/cert.pem"])["key_type"],
        "P-256"
    );
}

#[test]
fn issue_refusals_name_the_reason_and_leave_no_key() {
    let env = Env::new();
    let base = [
        "cert",
        "issue",
        "--ca",
        "ca",
        "--agent",
        "planner",
        "--out-dir",
        "x",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    env.fails(&with(&["--scope", "payments:write"]), 1, "payments:write");
    env.fails(
        &with(&["--scope", "tickets:read", "--ttl", "1h"]),
        1,
        "agents.planner.max_ttl",
    );
    env.fails(
        &with(&["--scope", "tickets:read", "--max-depth", "7"]),
        1,
        "max_depth",
    );
    env.fails(
        &with(&[
            "--scope",
            "tickets:read",
            "--aud",
            "spiffe://other.org/svc/x",
        ]),
        1,
        "audience",
    );
    env.fails(
        &with(&[
            "--scope",
            "tickets:read",
            "--principal",
            "carrier-pigeon:bob",
        ]),
        2,
        "--principal",
    );
    env.fails(
        &with(&["--scope", "tickets:read", "--task", "UPPER/case"]),
        1,
        "--task",
    );
    env.fails(&with(&[]), 2, "--scope");
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "stranger",
            "--scope",
            "tickets:read",
            "--out-dir",
            "x",
        ],
        1,
        "stranger",
    );
    assert!(
        !env.path("x/key.pem").exists(),
        "a refused issuance leaves no key behind"
    );

    // A task identity keeps one key: the same task cannot be opened twice.
    env.ok(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--agent",
        "planner",
        "--task",
        "t1",
        "--scope",
        "tickets:read",
        "--out-dir",
        "t1",
    ]);
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--task",
            "t1",
            "--scope",
            "tickets:read",
            "--out-dir",
            "t1b",
        ],
        1,
        "t1",
    );
    // Never overwrite a key.
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--scope",
            "tickets:read",
            "--out-dir",
            "t1",
        ],
        1,
        "refusing to overwrite a key",
    );
}

#[test]
fn issue_service_has_no_grant() {
    let env = Env::new();
    let v = env.json(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--service",
        "search",
        "--ttl",
        "10m",
        "--out-dir",
        "svc",
    ]);
    assert_eq!(v["identity"], "spiffe://example.org/svc/search");
    assert_eq!(v["grant"], Value::Null);
    assert_eq!(v["task"], Value::Null);
    assert!(!env.path("svc/grant.jwt").exists());
    assert_eq!(
        env.json(&["cert", "inspect", "svc/cert.pem"])["kind"],
        "service"
    );
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--service",
            "search",
            "--scope",
            "tickets:read",
        ],
        2,
        "grant options",
    );
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--service",
            "search",
            "--agent",
            "planner",
        ],
        2,
        "cannot be used with",
    );
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--service",
            "unknown-svc",
            "--out-dir",
            "u",
        ],
        1,
        "unknown-svc",
    );
}

#[test]
fn issue_child_in_the_parents_task_never_outliving_its_chain() {
    let env = Env::new();
    let parent = env.json(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--agent",
        "planner",
        "--scope",
        "tickets:read",
        "--max-depth",
        "1",
        "--task-ttl",
        "3m",
        "--out-dir",
        "p",
    ]);
    let child = env.child("p", "c");
    assert_eq!(
        child["identity"].as_str().unwrap(),
        format!(
            "spiffe://example.org/agent/summarizer/task/{}",
            parent["task"].as_str().unwrap()
        )
    );
    assert_eq!(child["task"], parent["task"]);
    assert_eq!(child["grant"], Value::Null, "a child gets no grant");
    assert!(!env.path("c/grant.jwt").exists());
    assert!(child["not_after"].as_u64().unwrap() <= parent["grant"]["exp"].as_u64().unwrap());
    assert_eq!(mode(&env.path("c/key.pem")), 0o600);

    // Asking for more than the parent's chain is refused, not silently shortened.
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "summarizer",
            "--parent",
            "p",
            "--ttl",
            "10m",
            "--out-dir",
            "c2",
        ],
        1,
        "parent's chain",
    );
    // Grant options make no sense for a child.
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "summarizer",
            "--parent",
            "p",
            "--scope",
            "tickets:read",
        ],
        2,
        "grant options",
    );
    // The caller must hold the parent's key.
    env.planner("q");
    std::fs::copy(env.path("p/key.pem"), env.path("q/other.pem")).unwrap();
    std::fs::rename(env.path("q/other.pem"), env.path("q/key.pem")).unwrap();
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "summarizer",
            "--parent",
            "q",
            "--out-dir",
            "c3",
        ],
        1,
        "does not match",
    );
    // Policy: an auditor is opened by the operator only, never requested by a parent; and a
    // parent cannot request its own identity.
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "auditor",
            "--parent",
            "p",
            "--out-dir",
            "c4",
        ],
        1,
        "unauthorized",
    );
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--parent",
            "p",
            "--out-dir",
            "c5",
        ],
        1,
        "its own identity",
    );
}

// ------------------------------------------------------------------------------------------
// cert renew / sign
// ------------------------------------------------------------------------------------------

#[test]
fn renew_keeps_key_and_identity() {
    let env = Env::new();
    let first = env.planner("p");
    let renewed = env.json(&["cert", "renew", "--ca", "ca", "--dir", "p", "--ttl", "3m"]);
    assert_eq!(renewed["identity"], first["identity"]);
    assert_eq!(renewed["jkt"], first["jkt"]);
    assert_ne!(renewed["serial"], first["serial"]);
    let inspect = env.json(&["cert", "inspect", "p/cert.pem"]);
    assert_eq!(inspect["serial"], renewed["serial"], "cert.pem replaced");
    // TTL over policy.
    env.fails(
        &["cert", "renew", "--ca", "ca", "--dir", "p", "--ttl", "2h"],
        1,
        "exceeds the maximum",
    );
    // Another key for the same identity is refused.
    env.planner("other");
    std::fs::remove_file(env.path("p/key.pem")).unwrap();
    std::fs::copy(env.path("other/key.pem"), env.path("p/key.pem")).unwrap();
    env.fails(
        &["cert", "renew", "--ca", "ca", "--dir", "p"],
        1,
        "does not match",
    );
    env.fails(
        &["cert", "renew", "--ca", "ca", "--dir", "missing"],
        1,
        "cannot read",
    );
}

/// `openssl`, or `None` (a failure under CI, a skip elsewhere).
fn openssl() -> Option<&'static str> {
    let ok = StdCommand::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("openssl");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "openssl is required under CI"
    );
    eprintln!("SKIP: openssl not found");
    None
}

fn openssl_csr(dir: &Path, name: &str, extra: &[&str]) {
    let out = StdCommand::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=ignored",
        ])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sign_an_openssl_csr() {
    let Some(_) = openssl() else { return };
    let env = Env::new();
    openssl_csr(env.dir.path(), "ext", &[]);
    let v = env.json(&[
        "cert",
        "sign",
        "--ca",
        "ca",
        "--csr",
        "ext.csr",
        "--agent",
        "planner",
        "--task",
        "ext1",
        "--ttl",
        "5m",
        "--scope",
        "tickets:read",
        "--out-dir",
        "ext",
    ]);
    assert_eq!(
        v["identity"],
        "spiffe://example.org/agent/planner/task/ext1"
    );
    assert!(v["grant"]["jti"].is_string());
    assert!(env.path("ext/cert.pem").exists() && env.path("ext/grant.jwt").exists());
    assert!(
        !env.path("ext/key.pem").exists(),
        "the key stays with whoever made the CSR"
    );
    // The certificate is for the CSR's key: openssl agrees, and verifies the chain.
    let pubkey = |args: &[&str]| {
        let o = StdCommand::new("openssl")
            .current_dir(env.dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success());
        o.stdout
    };
    assert_eq!(
        pubkey(&["pkey", "-in", "ext.key", "-pubout"]),
        pubkey(&["x509", "-in", "ext/cert.pem", "-pubkey", "-noout"])
    );
    let verify = StdCommand::new("openssl")
        .current_dir(env.dir.path())
        .args([
            "verify",
            "-CAfile",
            "ext/bundle.pem",
            "-untrusted",
            "ext/cert.pem",
            "ext/cert.pem",
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // And so does `cert verify`.
    assert_eq!(
        env.json(&[
            "cert",
            "verify",
            "ext/cert.pem",
            "--bundle",
            "ext/bundle.pem"
        ])["valid"],
        true
    );

    // A CSR asking to be a CA, or for a DNS name, is refused with its own reason.
    openssl_csr(
        env.dir.path(),
        "ca",
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    env.fails(
        &[
            "cert",
            "sign",
            "--ca",
            "ca",
            "--csr",
            "ca.csr",
            "--agent",
            "planner",
            "--task",
            "ext2",
            "--scope",
            "tickets:read",
        ],
        1,
        "CA",
    );
    openssl_csr(
        env.dir.path(),
        "dns",
        &["-addext", "subjectAltName=DNS:evil.example"],
    );
    env.fails(
        &[
            "cert",
            "sign",
            "--ca",
            "ca",
            "--csr",
            "dns.csr",
            "--agent",
            "planner",
            "--task",
            "ext3",
            "--scope",
            "tickets:read",
        ],
        1,
        "DNS:evil.example",
    );
    // Not a CSR at all.
    std::fs::write(env.path("junk.csr"), "hello").unwrap();
    env.fails(
        &[
            "cert",
            "sign",
            "--ca",
            "ca",
            "--csr",
            "junk.csr",
            "--agent",
            "planner",
            "--task",
            "ext4",
            "--scope",
            "tickets:read",
        ],
        1,
        "csr",
    );
    env.fails(
        &[
            "cert",
            "sign",
            "--ca",
            "ca",
            "--csr",
            "ext.csr",
            "--agent",
            "planner",
            "--scope",
            "tickets:read",
        ],
        2,
        "--task",
    );
}

// ------------------------------------------------------------------------------------------
// cert inspect / verify
// ------------------------------------------------------------------------------------------

#[test]
fn inspect_shows_the_profile() {
    let env = Env::new();
    let issued = env.planner("p");
    let v = env.json(&["cert", "inspect", "p/cert.pem"]);
    assert_eq!(v["identity"], issued["identity"]);
    assert_eq!(v["kind"], "task");
    assert_eq!(v["agent"], "planner");
    assert_eq!(v["task"], issued["task"]);
    assert_eq!(v["serial"], issued["serial"], "same serial form as the CA");
    assert_eq!(v["subject"], "");
    assert!(v["issuer"]
        .as_str()
        .unwrap()
        .contains("issuing CA example.org"));
    assert_eq!(v["not_before"], issued["not_before"]);
    assert_eq!(v["not_after"], issued["not_after"]);
    assert!(v["not_after_rfc3339"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["key_type"], "P-256");
    assert_eq!(v["jkt"], issued["jkt"]);
    assert_eq!(
        v["san"],
        serde_json::json!([format!("URI:{}", issued["identity"].as_str().unwrap())])
    );
    assert_eq!(v["is_ca"], false);
    assert_eq!(v["key_usage"], serde_json::json!(["digitalSignature"]));
    assert_eq!(
        v["extended_key_usage"],
        serde_json::json!(["serverAuth", "clientAuth"])
    );
    assert_eq!(v["certificates_in_file"], 2);
    // The root: a CA certificate without SAN.
    let root = env.json(&["cert", "inspect", "p/bundle.pem"]);
    assert_eq!(root["is_ca"], true);
    assert_eq!(root["kind"], "none");
    let text = env.ok(&["cert", "inspect", "p/cert.pem"]);
    assert!(
        text.contains("Kind:           task") && text.contains("Key usage:      digitalSignature"),
        "{text}"
    );
    std::fs::write(env.path("junk.pem"), "not pem").unwrap();
    env.fails(&["cert", "inspect", "junk.pem"], 1, "no CERTIFICATE");
    env.fails(
        &["cert", "inspect", "absent.pem"],
        1,
        "cannot read absent.pem",
    );
}

#[test]
fn verify_checks_chain_time_and_trust_domain() {
    let env = Env::new();
    let issued = env.planner("p");
    for bundle in ["p/bundle.pem", "p/bundle.json", "example.org=p/bundle.json"] {
        let v = env.json(&["cert", "verify", "p/cert.pem", "--bundle", bundle]);
        assert_eq!(v["valid"], true, "{bundle}");
        assert_eq!(v["identity"], issued["identity"]);
        assert_eq!(v["trust_domain"], "example.org");
        assert_eq!(v["serial"], issued["serial"]);
        assert_eq!(v["usages"], serde_json::json!(["clientAuth", "serverAuth"]));
    }
    assert!(env
        .ok(&["cert", "verify", "p/cert.pem", "--bundle", "p/bundle.pem"])
        .starts_with("valid: spiffe://"));
    // After notAfter (RFC 3339 and Unix seconds), and before notBefore.
    let late = (issued["not_after"].as_u64().unwrap() + 1).to_string();
    let (out, _) = env.fails(
        &[
            "cert",
            "verify",
            "p/cert.pem",
            "--bundle",
            "p/bundle.pem",
            "--at",
            &late,
            "--format",
            "json",
        ],
        3,
        "expired",
    );
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["valid"], false);
    assert!(out["error"].as_str().unwrap().contains("expired"));
    env.fails(
        &[
            "cert",
            "verify",
            "p/cert.pem",
            "--bundle",
            "p/bundle.pem",
            "--at",
            "2099-01-01T00:00:00Z",
        ],
        3,
        "expired",
    );
    env.fails(
        &[
            "cert",
            "verify",
            "p/cert.pem",
            "--bundle",
            "p/bundle.pem",
            "--at",
            "1000000000",
        ],
        3,
        "not yet valid",
    );
    // Another CA's bundle, and a bundle named for another trust domain.
    let other = Env::new();
    other.planner("p");
    let foreign = other.path("p/bundle.pem");
    env.fails(
        &[
            "cert",
            "verify",
            "p/cert.pem",
            "--bundle",
            foreign.to_str().unwrap(),
        ],
        3,
        "chain validation failed",
    );
    env.fails(
        &[
            "cert",
            "verify",
            "p/cert.pem",
            "--bundle",
            "other.org=p/bundle.json",
        ],
        3,
        "no X.509 authority for trust domain example.org",
    );
    // A CA certificate is not a leaf.
    env.fails(
        &["cert", "verify", "p/bundle.pem", "--bundle", "p/bundle.pem"],
        3,
        "X509-SVID profile",
    );
    env.fails(
        &["cert", "verify", "p/cert.pem", "--bundle", "p/grant.jwt"],
        1,
        "neither a SPIFFE bundle",
    );
}

// ------------------------------------------------------------------------------------------
// delegate
// ------------------------------------------------------------------------------------------

#[test]
fn delegate_binds_the_certificate_holder() {
    let env = Env::new();
    env.planner("p");
    let child = env.child("p", "c");
    let v = env.json(&[
        "delegate",
        "--chain",
        "p/grant.jwt",
        "--key",
        "p/key.pem",
        "--to-cert",
        "c/cert.pem",
        "--bundle",
        "p/bundle.json",
        "--scope",
        "tickets:read",
        "--ttl",
        "1m",
        "--out",
        "c/chain.jwt",
    ]);
    assert_eq!(v["depth"], 1);
    assert_eq!(v["to"], child["identity"]);
    assert_eq!(v["to_jkt"], child["jkt"]);
    let chain = v["chain"].as_str().unwrap();
    assert_eq!(env.read("c/chain.jwt").trim(), chain);
    let link = chain.split('~').nth(1).unwrap();
    let claims = b64url_json(link.split('.').nth(1).unwrap());
    assert_eq!(claims["sub"], child["identity"]);
    assert_eq!(claims["scope"], "tickets:read");
    assert_eq!(claims["max_depth"], 1);
    assert_eq!(v["exp"], claims["exp"]);
    assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 60);
    // Text: the chain alone on stdout.
    let text = env.ok(&[
        "delegate",
        "--chain",
        "p/grant.jwt",
        "--key",
        "p/key.pem",
        "--to-cert",
        "c/cert.pem",
        "--bundle",
        "p/bundle.pem",
        "--scope",
        "tickets:comment",
    ]);
    assert_eq!(text.trim().split('~').count(), 2);
}

#[test]
fn delegate_refusals() {
    let env = Env::new();
    env.planner("p");
    env.child("p", "c");
    let args = |extra: &[&'static str]| -> Vec<&str> {
        let mut a = vec![
            "delegate",
            "--chain",
            "p/grant.jwt",
            "--key",
            "p/key.pem",
            "--to-cert",
            "c/cert.pem",
            "--bundle",
            "p/bundle.json",
        ];
        a.extend_from_slice(extra);
        a
    };
    env.fails(&args(&["--scope", "tickets:*"]), 1, "scope_escalation");
    env.fails(
        &args(&["--scope", "tickets:read", "--max-depth", "5"]),
        1,
        "depth",
    );
    env.fails(&args(&[]), 2, "--scope");
    env.fails(&args(&["--scope", "not a:valid:scope!"]), 1, "--scope");
    // The key must be the one the chain is bound to.
    env.fails(
        &[
            "delegate",
            "--chain",
            "p/grant.jwt",
            "--key",
            "c/key.pem",
            "--to-cert",
            "c/cert.pem",
            "--bundle",
            "p/bundle.json",
            "--scope",
            "tickets:read",
        ],
        1,
        "possession_mismatch",
    );
    // Not to oneself.
    env.fails(
        &[
            "delegate",
            "--chain",
            "p/grant.jwt",
            "--key",
            "p/key.pem",
            "--to-cert",
            "p/cert.pem",
            "--bundle",
            "p/bundle.json",
            "--scope",
            "tickets:read",
        ],
        1,
        "self_delegation",
    );
    // A certificate from another CA does not verify against our bundle.
    let other = Env::new();
    other.planner("x");
    let foreign = other.path("x/cert.pem");
    env.fails(
        &[
            "delegate",
            "--chain",
            "p/grant.jwt",
            "--key",
            "p/key.pem",
            "--to-cert",
            foreign.to_str().unwrap(),
            "--bundle",
            "p/bundle.json",
            "--scope",
            "tickets:read",
        ],
        1,
        "delegatee certificate invalid",
    );
    // Services never hold chains.
    env.ok(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--service",
        "search",
        "--out-dir",
        "svc",
    ]);
    env.fails(
        &[
            "delegate",
            "--chain",
            "p/grant.jwt",
            "--key",
            "p/key.pem",
            "--to-cert",
            "svc/cert.pem",
            "--bundle",
            "p/bundle.json",
            "--scope",
            "tickets:read",
        ],
        1,
        "services never hold chains",
    );
    // A key readable by others is refused.
    std::fs::set_permissions(
        env.path("p/key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    env.fails(&args(&["--scope", "tickets:read"]), 1, "chmod 600");
}

// ------------------------------------------------------------------------------------------
// revoke / revocations / bundle
// ------------------------------------------------------------------------------------------

#[test]
fn revoke_each_target_kind() {
    let env = Env::new();
    let p = env.planner("p");
    let serial = p["serial"].as_str().unwrap();
    let task = p["task"].as_str().unwrap();
    let v = env.json(&[
        "revoke",
        "--ca",
        "ca",
        "--serial",
        serial,
        "--reason",
        "key leaked",
    ]);
    assert_eq!(v["kind"], "jkt");
    assert_eq!(v["value"], p["jkt"], "a serial revokes its key");
    assert_eq!(v["reason"], "key leaked");
    assert_eq!(v["trust_domain"], "example.org");
    assert!(v["exp"].as_u64().unwrap() > v["revoked_at"].as_u64().unwrap());
    assert_eq!(
        env.json(&["revoke", "--ca", "ca", "--task", task])["kind"],
        "task"
    );
    assert_eq!(
        env.json(&["revoke", "--ca", "ca", "--agent", "summarizer"])["kind"],
        "agent"
    );
    assert_eq!(
        env.json(&["revoke", "--ca", "ca", "--jkt", p["jkt"].as_str().unwrap()])["kind"],
        "jkt"
    );
    let grant_jti = p["grant"]["jti"].as_str().unwrap();
    assert_eq!(
        env.json(&[
            "revoke",
            "--ca",
            "ca",
            "--jti",
            grant_jti,
            "--iss",
            "spiffe://example.org"
        ])["kind"],
        "jti"
    );
    assert!(env
        .ok(&["revoke", "--ca", "ca", "--agent", "planner"])
        .starts_with("revoked agent planner"));
    env.fails(&["revoke", "--ca", "ca", "--serial", "abcdef"], 1, "abcdef");
    env.fails(&["revoke", "--ca", "ca", "--jti", "nope"], 1, "nope");
    env.fails(&["revoke", "--ca", "ca", "--jkt", "short"], 1, "thumbprint");
    env.fails(
        &[
            "revoke",
            "--ca",
            "ca",
            "--jti",
            grant_jti,
            "--iss",
            "spiffe://example.org/agent/x/task/y",
        ],
        1,
        "--iss",
    );
    // A revoked agent gets nothing more.
    env.fails(
        &[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--scope",
            "tickets:read",
            "--out-dir",
            "again",
        ],
        1,
        "revoked",
    );

    // The list: compact JWS, signed with the bundle's revocation key, listing the entries.
    let list = env.ok(&["revocations", "export", "--ca", "ca"]);
    let parts: Vec<&str> = list.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = b64url_json(parts[0]);
    assert_eq!(header["typ"], "agentid-revocations+jwt");
    let claims = b64url_json(parts[1]);
    assert_eq!(claims["iss"], "spiffe://example.org");
    assert!(claims["entries"].as_array().unwrap().len() >= 4, "{claims}");
    env.ok(&["revocations", "export", "--ca", "ca", "--out", "rev.jwt"]);
    let second = b64url_json(env.read("rev.jwt").trim().split('.').nth(1).unwrap());
    assert!(
        second["seq"].as_u64().unwrap() > claims["seq"].as_u64().unwrap(),
        "sequenced"
    );
}

#[test]
fn bundle_export_formats() {
    let env = Env::new();
    let spiffe: Value = serde_json::from_str(&env.ok(&["bundle", "export", "--ca", "ca"])).unwrap();
    let keys = spiffe["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for k in &keys[1..] {
        assert!(k["kid"].is_string() && k["alg"] == "ES256", "{k}");
    }
    assert!(spiffe["spiffe_sequence"].is_u64());
    let pem = env.ok(&["bundle", "export", "--ca", "ca", "--format", "pem"]);
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 1);
    env.ok(&["bundle", "export", "--ca", "ca", "--out", "b.json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&env.read("b.json")).unwrap(),
        spiffe
    );
    let ed = Env::with_key_type("ed25519");
    let spiffe: Value = serde_json::from_str(&ed.ok(&["bundle", "export", "--ca", "ca"])).unwrap();
    assert_eq!(spiffe["keys"][1]["alg"], "Ed25519");
}

// ------------------------------------------------------------------------------------------
// chain verify, and the end-to-end flow
// ------------------------------------------------------------------------------------------

fn verdict(env: &Env, args: &[&str], code: i32) -> Value {
    let mut a = vec!["chain", "verify"];
    a.extend_from_slice(args);
    let out = env.cmd(&a).get_output().clone();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    if code != 0 {
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("agentid: chain invalid: "), "{stderr}");
    }
    report
}

#[test]
fn end_to_end_issue_delegate_verify_revoke() {
    let env = Env::new();
    let parent = env.planner("p");
    let child = env.child("p", "c");
    env.ok(&[
        "delegate",
        "--chain",
        "p/grant.jwt",
        "--key",
        "p/key.pem",
        "--to-cert",
        "c/cert.pem",
        "--bundle",
        "p/bundle.json",
        "--scope",
        "tickets:read",
        "--out",
        "c/chain.jwt",
    ]);
    env.ok(&["revocations", "export", "--ca", "ca", "--out", "rev1.jwt"]);
    let base = [
        "c/chain.jwt",
        "--bundle",
        "c/bundle.json",
        "--peer-cert",
        "c/cert.pem",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };

    // Valid, with the list.
    let r = verdict(&env, &with(&["--revocations", "rev1.jwt"]), 0);
    let v = &r["verdict"];
    assert_eq!(v["valid"], true);
    assert_eq!(v["holder"], child["identity"]);
    assert_eq!(v["task"], parent["task"]);
    assert_eq!(v["scope"], "tickets:read");
    assert_eq!(v["depth"], 1);
    assert_eq!(v["mode"], "autonomous");
    assert_eq!(v["authority"], "spiffe://example.org");
    assert_eq!(v["grant_jti"], parent["grant"]["jti"]);
    assert_eq!(v["actors"][0]["id"], parent["identity"]);
    assert_eq!(v["actors"][1]["id"], child["identity"]);
    // The report around it.
    assert_eq!(r["peer"]["id"], child["identity"]);
    assert_eq!(r["peer"]["jkt"], child["jkt"]);
    assert_eq!(r["peer"]["serial"], child["serial"]);
    assert_eq!(r["verifier"], "spiffe://example.org/svc/agentid-cli");
    assert_eq!(r["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(r["tokens"][0]["header"]["typ"], "agentid-grant+jwt");
    assert_eq!(r["tokens"][1]["header"]["typ"], "agentid-link+jwt");
    assert_eq!(r["tokens"][1]["claims"]["sub"], child["identity"]);
    // The case input reproduces the verdict with the reference runner.
    assert_eq!(agentid_protocol::vectors::run_case(&r["case_input"]), *v);

    // Authorization of a requested scope.
    let r = verdict(
        &env,
        &with(&["--revocations", "rev1.jwt", "--scope", "tickets:read"]),
        0,
    );
    assert_eq!(r["verdict"]["valid"], true);
    let r = verdict(
        &env,
        &with(&["--revocations", "rev1.jwt", "--scope", "tickets:comment"]),
        3,
    );
    assert_eq!(
        r["verdict"],
        serde_json::json!({"valid": false, "error": "scope_not_granted", "index": null})
    );

    // Fails closed without revocation lists, unless told otherwise (danger).
    let r = verdict(&env, &with(&[]), 3);
    assert_eq!(r["verdict"]["valid"], false);
    assert_eq!(r["verdict"]["error"], "revocation_missing");
    assert_eq!(
        verdict(&env, &with(&["--danger-no-revocation"]), 0)["verdict"]["valid"],
        true
    );

    // The wrong peer: the parent presenting the child's chain.
    let r = verdict(
        &env,
        &[
            "c/chain.jwt",
            "--bundle",
            "p/bundle.json",
            "--peer-cert",
            "p/cert.pem",
            "--revocations",
            "rev1.jwt",
        ],
        3,
    );
    assert_eq!(
        r["verdict"],
        serde_json::json!({"valid": false, "error": "possession_mismatch", "index": 1})
    );

    // Revoke the child's key; the new list makes the chain `revoked` at the child's link.
    env.ok(&[
        "revoke",
        "--ca",
        "ca",
        "--serial",
        child["serial"].as_str().unwrap(),
    ]);
    env.ok(&["revocations", "export", "--ca", "ca", "--out", "rev2.jwt"]);
    let r = verdict(&env, &with(&["--revocations", "rev2.jwt"]), 3);
    assert_eq!(
        r["verdict"],
        serde_json::json!({"valid": false, "error": "revoked", "index": 1})
    );
    // Text form.
    let (out, line) = env.fails(
        &[
            "chain",
            "verify",
            "c/chain.jwt",
            "--bundle",
            "c/bundle.json",
            "--peer-cert",
            "c/cert.pem",
            "--revocations",
            "rev2.jwt",
            "--format",
            "text",
        ],
        3,
        "revoked at token 1",
    );
    assert_eq!(out.trim(), "invalid: revoked at token 1");
    assert!(line.starts_with("agentid: chain invalid:"));
    // An older list after a newer one is refused (sequence rollback), as the runner says.
    let r = verdict(
        &env,
        &with(&["--revocations", "rev2.jwt", "--revocations", "rev1.jwt"]),
        3,
    );
    assert_eq!(r["verdict"]["valid"], false);
}

#[test]
fn chain_verify_time_audience_and_malformed_input() {
    let env = Env::new();
    let parent = env.json(&[
        "cert",
        "issue",
        "--ca",
        "ca",
        "--agent",
        "planner",
        "--scope",
        "tickets:read",
        "--aud",
        "spiffe://example.org/svc/search",
        "--out-dir",
        "p",
    ]);
    env.ok(&["revocations", "export", "--ca", "ca", "--out", "rev.jwt"]);
    let args = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec![
            "p/grant.jwt",
            "--bundle",
            "p/bundle.json",
            "--peer-cert",
            "p/cert.pem",
            "--revocations",
            "rev.jwt",
        ];
        a.extend_from_slice(extra);
        a
    };
    // The audience names the search service: it verifies there, not at the default verifier.
    assert_eq!(
        verdict(
            &env,
            &args(&["--verifier", "spiffe://example.org/svc/search"]),
            0
        )["verdict"]["valid"],
        true
    );
    assert_eq!(
        verdict(&env, &args(&[]), 3)["verdict"]["error"],
        "audience_mismatch"
    );
    // Past the grant's expiry (the peer certificate is taken as valid then: skip its chain check).
    let late = (parent["grant"]["exp"].as_u64().unwrap() + 3600).to_string();
    let late: &'static str = Box::leak(late.into_boxed_str());
    let r = verdict(
        &env,
        &args(&[
            "--verifier",
            "spiffe://example.org/svc/search",
            "--at",
            late,
            "--danger-unverified-peer-cert",
            "--danger-no-revocation",
        ]),
        3,
    );
    assert_eq!(r["verdict"]["error"], "expired");
    // Without the danger flag the expired peer certificate is an error of its own.
    env.fails(
        &[
            "chain",
            "verify",
            "p/grant.jwt",
            "--bundle",
            "p/bundle.json",
            "--peer-cert",
            "p/cert.pem",
            "--at",
            late,
        ],
        1,
        "peer certificate invalid",
    );
    // A broken chain is a verdict, not a crash.
    std::fs::write(env.path("bad.jwt"), "not-a-chain").unwrap();
    let r = verdict(
        &env,
        &[
            "bad.jwt",
            "--bundle",
            "p/bundle.json",
            "--peer-cert",
            "p/cert.pem",
            "--revocations",
            "rev.jwt",
        ],
        3,
    );
    assert_eq!(r["verdict"]["valid"], false);
    assert!(r["verdict"]["error"].is_string());
    // Bundles: PEM is not enough, two bare bundles are ambiguous, skew is capped.
    env.fails(
        &[
            "chain",
            "verify",
            "p/grant.jwt",
            "--bundle",
            "p/bundle.pem",
            "--peer-cert",
            "p/cert.pem",
        ],
        1,
        "needs a SPIFFE bundle",
    );
    env.fails(
        &[
            "chain",
            "verify",
            "p/grant.jwt",
            "--bundle",
            "p/bundle.json",
            "--bundle",
            "p/bundle.json",
            "--peer-cert",
            "p/cert.pem",
        ],
        2,
        "only one --bundle may omit its trust domain",
    );
    let r = verdict(
        &env,
        &args(&[
            "--verifier",
            "spiffe://example.org/svc/search",
            "--skew",
            "500",
        ]),
        3,
    );
    assert_eq!(r["verdict"]["error"], "bad_config");
    // A trust domain named for the bundle that is not the peer's: no anchors for the peer.
    env.fails(
        &[
            "chain",
            "verify",
            "p/grant.jwt",
            "--bundle",
            "other.org=p/bundle.json",
            "--peer-cert",
            "p/cert.pem",
        ],
        1,
        "no X.509 authority",
    );
}
