//! A new user's mistakes against `agentid ca serve`, through the real binary on 127.0.0.1:
//! each one answered at once, with what went wrong and what to do next.
#![cfg(test)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{CaService, Env};

const POLICY: &str = r#"
[defaults]
ttl = "5m"
max_ttl = "15m"
task_ttl = "1h"

[agents.planner]
scopes = ["tickets:*"]
requesters = ["operator", "bootstrap"]

[services.agentid-ca]
requesters = ["operator"]
"#;

/// A CA in `env` with [`POLICY`] served, and `planner` enrolled into `a/` from a token file.
fn enrolled(env: &Env) -> CaService {
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    let s = CaService::start(env, &[]);
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t.json",
        s.enroll_url()
    ));
    env.ok("enroll --token-file t.json --out-dir a");
    s
}

/// `enroll` writes the pinned X.509 bundle only (no revocation key): `revocations list` with
/// that directory as `--cred` must say so and name the bundle that holds the key, not blame
/// the CA for serving a list "that does not verify".
#[test]
fn revocations_list_with_an_enrolled_directory_names_the_missing_revocation_key() {
    let env = Env::new();
    let s = enrolled(&env);
    let (_, line) = env.fails(
        &format!("revocations list --ca-url {} --cred a", s.url()),
        1,
        "a/bundle.json",
    );
    assert!(line.contains("bundle export"), "{line}");
}

/// `cert renew --ca-url` given the enrollment listener's URL (the one the token file holds)
/// instead of the mutual-TLS listener's says which listener renewals go to.
#[test]
fn renewal_at_the_enrollment_listener_names_the_mtls_listener() {
    let env = Env::new();
    let s = enrolled(&env);
    let (_, line) = env.fails(
        &format!("cert renew --ca-url {} --dir a", s.enroll_url()),
        1,
        "enrollment listener",
    );
    assert!(line.contains("--listen"), "{line}");
}

/// A renewal daemon started with a wrong `--ca-url` (nothing listens there) must not sit
/// silent until its renewal point: it says so at once on stderr. It keeps running (a CA it
/// cannot reach may be restarting, which looks the same) and retries at the renewal point.
#[test]
fn the_renewal_daemon_reports_a_wrong_ca_url_at_once() {
    let env = Env::new();
    let _s = enrolled(&env);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = renewal_daemon(&env, &format!("https://127.0.0.1:{port}"), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    while Instant::now() < deadline && !log.contains("cannot reach the CA") {
        std::thread::sleep(Duration::from_millis(100));
        log = env.read("daemon.log");
    }
    let running = daemon.try_wait().unwrap().is_none();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        log.contains("cannot reach the CA") && log.contains("keeps running"),
        "nothing said within 20 s: {log:?}"
    );
    assert!(
        running,
        "the daemon exited on a CA it could not reach: {log}"
    );
}

/// `--cred DIR` naming a directory without the files a credential directory holds (as `task
/// open` leaves one: `cert.pem` and `grant.jwt`, the key elsewhere) says which file is missing
/// and what a credential directory is, not only "No such file or directory".
#[test]
fn a_cred_directory_without_its_key_says_what_it_lacks() {
    let env = Env::new();
    env.planner("p");
    std::fs::create_dir(env.path("half")).unwrap();
    std::fs::copy(env.path("p/cert.pem"), env.path("half/cert.pem")).unwrap();
    std::fs::copy(env.path("p/grant.jwt"), env.path("half/grant.jwt")).unwrap();
    for cmd in [
        "ca list --ca-url https://127.0.0.1:9 --cred half",
        "task child --ca-url https://127.0.0.1:9 --cred half --csr x.csr --agent summarizer --out-dir c",
        "cert renew --ca-url https://127.0.0.1:9 --dir half",
    ] {
        let (_, line) = env.fails(cmd, 1, "half/key.pem");
        assert!(line.contains("credential directory"), "{line}");
        assert!(line.contains("bundle.json"), "{line}");
        assert!(!line.contains("cannot reach"), "nothing is sent: {line}");
    }
}

/// A token file others can read is refused as a token file (the secret it holds may have been
/// read), not as "a private key".
#[test]
fn a_token_file_others_can_read_is_refused_as_a_token_file() {
    let env = Env::new();
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    env.ok("token create --ca ca --enroll-url https://127.0.0.1:9 --agent planner --scope tickets:read --out t.json");
    env.chmod("t.json", 0o644);
    let (_, line) = env.fails("enroll --token-file t.json --out-dir a", 1, "token file");
    assert!(line.contains("chmod 600"), "{line}");
    assert!(!line.contains("private key"), "{line}");
    assert!(!env.path("a").exists());
}

/// `ca serve` with a listener address in use prints no "listening on" line for a service that
/// is not going to run (a supervisor reading stdout would take it as started), and says which
/// flag names the busy address and what to do.
#[test]
fn ca_serve_with_a_busy_address_claims_no_listener_and_names_the_flag() {
    let env = Env::new();
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (stdout, line) = env.fails_args(
        &[
            "ca",
            "serve",
            "--ca",
            "ca",
            "--listen",
            "127.0.0.1:0",
            "--enroll-listen",
            &addr,
        ],
        1,
        &addr,
    );
    assert_eq!(stdout, "", "nothing claims to listen");
    assert!(line.contains("--enroll-listen"), "{line}");
    assert!(line.contains("another address"), "{line}");
}

/// A renewal daemon whose first renewal is refused (a `--ttl` over the policy's `max_ttl`)
/// ends at once with status 1 and the refusal: asking again cannot change it.
#[test]
fn the_renewal_daemon_ends_at_once_on_a_refusal() {
    let env = Env::new();
    let s = enrolled(&env);
    let mut daemon = renewal_daemon(&env, &s.url(), &["--ttl", "10h"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = daemon.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            let _ = daemon.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = env.read("daemon.log");
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains("max_ttl") || log.contains("policy"), "{log}");
}

/// `cert renew --daemon` on `a/` against `url` with `extra` arguments, at the default log
/// filter, its stderr in `daemon.log`.
fn renewal_daemon(env: &Env, url: &str, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_agentid"))
        .current_dir(env.path(""))
        .env_remove("AGENTID_LOG")
        .env_remove("RUST_LOG")
        .args(["cert", "renew", "--ca-url", url, "--dir", "a", "--daemon"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("daemon.log")).unwrap())
        .spawn()
        .unwrap()
}
