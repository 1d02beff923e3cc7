//! Operating the CA service through the real `agentid` binary on 127.0.0.1: the metrics
//! listener of `ca serve --metrics-listen`, `revocations list --ca-url`, and
//! `cert renew --daemon --exec`.
#![cfg(test)]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{CaService, Env};

const POLICY: &str = r#"
[defaults]
ttl = "5m"
max_ttl = "15m"
task_ttl = "1h"
max_task_ttl = "8h"

[agents.planner]
scopes = ["tickets:*"]
max_ttl = "15m"
requesters = ["operator", "bootstrap"]

[agents.planner.permissions]
"svc:platform" = ["open_task", "create_token", "revoke", "list"]

[services.agentid-ca]
requesters = ["operator"]

[services.platform]
requesters = ["operator"]
"#;

/// The service with its metrics listener too.
struct Server {
    service: CaService,
    metrics: SocketAddr,
}

impl std::ops::Deref for Server {
    type Target = CaService;
    fn deref(&self) -> &CaService {
        &self.service
    }
}

/// A CA in `env` with [`POLICY`], credentials for the service `platform`, and `ca serve`
/// running with its three listeners.
fn serve(env: &Env) -> Server {
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    env.ok("cert issue --ca ca --service platform --out-dir platform");
    let service = CaService::start(env, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = service.process.next_addr("metrics listening on ");
    Server { service, metrics }
}

/// One plain HTTP/1.1 request; the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// The value of the sample `series` (name and labels, exactly as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn the_metrics_listener_counts_issuances_refusals_and_revocations() {
    let env = Env::new();
    let s = serve(&env);
    let (status, before) = http(s.metrics, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&before, "agentid_ca_issuances_total{kind=\"enroll\"}"),
        0
    );
    let seq_before = sample(&before, "agentid_ca_revocation_list_seq");
    assert!(
        seq_before >= 1,
        "a first list is published at start: {before}"
    );

    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t.json",
        s.enroll_url()
    ));
    let enrolled = env.json("enroll --token-file t.json --out-dir a");
    env.fails("enroll --token-file t.json --out-dir b", 1, "token_used");
    let task = enrolled["identity"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    env.json(&format!(
        "revoke --ca-url {} --cred platform --task {task}",
        s.url()
    ));

    let (status, after) = http(s.metrics, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&after, "agentid_ca_issuances_total{kind=\"enroll\"}"),
        1,
        "{after}"
    );
    assert_eq!(
        sample(&after, "agentid_ca_refusals_total{code=\"token_used\"}"),
        1,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "agentid_ca_requests_total{route=\"/v1/enroll\",status=\"200\"}"
        ),
        1,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "agentid_ca_requests_total{route=\"/v1/enroll\",status=\"409\"}"
        ),
        1,
        "{after}"
    );
    assert_eq!(sample(&after, "agentid_ca_revocations_total"), 1, "{after}");
    // The revocation is published before the revoke call answers.
    assert!(
        sample(&after, "agentid_ca_revocation_list_seq") > seq_before,
        "{after}"
    );
    assert!(
        sample(&after, "agentid_ca_revocation_list_bytes") > 0,
        "{after}"
    );
    assert!(after.contains("agentid_ca_revocation_waiters "), "{after}");

    // Nothing else on that listener.
    assert_eq!(http(s.metrics, "GET", "/healthz").0, 404);
    assert_eq!(http(s.metrics, "GET", "/v1/bundle").0, 404);
    assert_eq!(http(s.metrics, "POST", "/metrics").0, 404);
}

#[test]
fn revocations_list_prints_the_served_list_after_verifying_it() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    let empty = env.json(&format!("revocations list --ca-url {url} --cred platform"));
    assert_eq!(empty["issuer"], "example.org");
    assert!(empty["entries"].as_array().unwrap().is_empty(), "{empty}");
    let seq0 = empty["seq"].as_u64().unwrap();
    assert!(empty["next_update"].as_u64().unwrap() > empty["iat"].as_u64().unwrap());
    // A list the CA keeps publishing is current (a stale one is flagged, `"stale": true`).
    assert_eq!(empty["stale"], false, "{empty}");

    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t.json",
        s.enroll_url()
    ));
    let enrolled = env.json("enroll --token-file t.json --out-dir a");
    let task = enrolled["identity"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    env.json(&format!(
        "revoke --ca-url {url} --cred platform --task {task}"
    ));

    let v = env.json(&format!("revocations list --ca-url {url} --cred platform"));
    assert!(v["seq"].as_u64().unwrap() > seq0, "{v}");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    assert_eq!(entries[0]["kind"], "task");
    assert_eq!(entries[0]["value"], task.as_str());
    assert!(entries[0]["exp"].as_u64().unwrap() > v["iat"].as_u64().unwrap());

    let text = env.ok(&format!("revocations list --ca-url {url} --cred platform"));
    assert!(
        text.contains(&format!("seq {}", v["seq"]))
            && text.contains("next update")
            && !text.contains("STALE"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("task ") && l.ends_with(&task)),
        "{text}"
    );

    // The CA's URL without a credential to verify it with is a usage error.
    env.fails(&format!("revocations list --ca-url {url}"), 2, "--cred");
}

/// Enrolls `planner` into `a/` with `ttl` certificates renewable at the service.
fn enrolled(env: &Env, s: &Server, ttl: &str) {
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --renew-url {} --agent planner --scope tickets:read --ttl {ttl} --out t.json",
        s.enroll_url(),
        s.url()
    ));
    env.json("enroll --token-file t.json --out-dir a");
}

/// Starts `cert renew --ca-url --dir a --ttl 12s --daemon` followed by `extra`, its stdout to
/// `stdout` and its log (level info) to `daemon.log`.
fn spawn_renew_daemon(env: &Env, s: &Server, extra: &[&str], stdout: Stdio) -> std::process::Child {
    let url = s.url();
    let mut args = vec![
        "cert", "renew", "--ca-url", &url, "--dir", "a", "--ttl", "12s", "--daemon",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_agentid"))
        .current_dir(env.path(""))
        .args(&args)
        .env("AGENTID_LOG", "info")
        .stdout(stdout)
        .stderr(std::fs::File::create(env.path("daemon.log")).unwrap())
        .spawn()
        .unwrap()
}

/// Runs `cert renew --daemon` on `a/` with `exec` after `--exec`, until `done` holds or 40 s
/// pass; kills it and returns its log.
fn renew_daemon(env: &Env, s: &Server, exec: &[&str], done: impl Fn() -> bool) -> String {
    let mut args = vec!["--exec"];
    args.extend_from_slice(exec);
    let mut daemon = spawn_renew_daemon(env, s, &args, Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && !done() {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon stopped: {}",
            env.read("daemon.log")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    env.read("daemon.log")
}

#[test]
fn renew_daemon_runs_the_exec_command_as_given_after_each_renewal() {
    let env = Env::new();
    let s = serve(&env);
    enrolled(&env, &s, "12s");
    let first = env.read("a/cert.pem");
    // No shell: the metacharacters are part of the file name, taken literally.
    let target = "copy $HOME;*.pem";
    let log = renew_daemon(&env, &s, &["cp", "a/cert.pem", target], || {
        env.path(target).exists()
    });
    assert!(env.path(target).exists(), "the command ran: {log}");
    // It ran after cert.pem was replaced: it copied a renewed certificate.
    let copied = env.read(target);
    assert_ne!(copied, first, "{log}");
    let out = env.run(&[
        "cert",
        "verify",
        target,
        "--bundle",
        "example.org=a/bundle.json",
    ]);
    assert!(out.status.success(), "{out:?}");
}

/// The line a daemon prints for each renewal is a report: a stdout that cannot take it (a log
/// file on a full disk) must not stop the renewals or the command that follows them.
#[test]
fn renew_daemon_keeps_renewing_when_its_stdout_cannot_be_written() {
    let env = Env::new();
    let s = serve(&env);
    enrolled(&env, &s, "12s");
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return;
    };
    let runs = || {
        std::fs::read_to_string(env.path("runs.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut daemon = spawn_renew_daemon(
        &env,
        &s,
        &["--exec", "sh", "-c", "echo ran >> runs.log"],
        Stdio::from(full),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut stopped = None;
    while Instant::now() < deadline && runs() < 2 {
        stopped = daemon.try_wait().unwrap();
        if stopped.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = env.read("daemon.log");
    assert!(stopped.is_none(), "the daemon stopped ({stopped:?}): {log}");
    assert!(
        runs() >= 2,
        "renewed twice, the command ran each time: {log}"
    );
    assert!(log.contains("cannot write to stdout"), "{log}");
}

/// A daemon whose renewed certificates can never reach `cert.pem` (a link there, which writes
/// refuse) renewed in memory for ever, logging every 5 s, while every reader of the directory
/// used a certificate that had expired; it now stops once the one on disk has expired.
#[test]
fn renew_daemon_stops_once_the_certificate_it_cannot_replace_has_expired() {
    let env = Env::new();
    let s = serve(&env);
    enrolled(&env, &s, "12s");
    std::fs::rename(env.path("a/cert.pem"), env.path("a/held.pem")).unwrap();
    std::os::unix::fs::symlink("held.pem", env.path("a/cert.pem")).unwrap();
    let mut daemon = spawn_renew_daemon(&env, &s, &[], Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut stopped = None;
    while Instant::now() < deadline && stopped.is_none() {
        stopped = daemon.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = env.read("daemon.log");
    let status = stopped.unwrap_or_else(|| panic!("the daemon kept running: {log}"));
    assert!(!status.success(), "{log}");
    assert!(log.contains("expired at"), "{log}");
    assert!(log.contains("could not be written"), "{log}");
}

#[test]
fn renew_daemon_logs_a_failing_exec_command_and_keeps_renewing() {
    let env = Env::new();
    let s = serve(&env);
    enrolled(&env, &s, "12s");
    // A shell only because the user names one; it records each run and fails.
    let script = "echo ran >> runs.log; exit 3";
    let runs = || {
        std::fs::read_to_string(env.path("runs.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let log = renew_daemon(&env, &s, &["sh", "-c", script], || runs() >= 2);
    assert!(runs() >= 2, "renewed and ran again after a failure: {log}");
    assert!(log.contains("--exec command failed"), "{log}");
    assert!(log.contains("exit status: 3"), "{log}");
}

#[test]
fn renew_daemon_keeps_renewing_while_a_slow_exec_command_runs() {
    let env = Env::new();
    let s = serve(&env);
    enrolled(&env, &s, "12s");
    // The command records its start and then outlives two certificate lifetimes' worth of
    // renewal points (the daemon renews 12 s certificates every 5-6 s).
    let script = "echo started >> runs.log; sleep 30";
    let starts = || {
        std::fs::read_to_string(env.path("runs.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let log = renew_daemon(&env, &s, &["sh", "-c", script], || {
        let cert = env.read("a/cert.pem");
        let mut seen = seen.borrow_mut();
        if starts() >= 1 && !seen.contains(&cert) {
            seen.push(cert);
        }
        seen.len() >= 3
    });
    let seen = seen.into_inner();
    assert!(
        seen.len() >= 3,
        "cert.pem was replaced at least twice while the first --exec command ran: {} certificates seen; {log}",
        seen.len()
    );
    // One command at a time: the renewals made meanwhile wait for it to end.
    assert_eq!(starts(), 1, "{log}");
}
