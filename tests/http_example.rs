//! The `http_agents` example as processes, on files written by the real `agentid` CLI: the
//! agentid HTTP client with a delegated chain; curl with the same certificate (`--resolve` to
//! the DNS name policy gave the service certificate) allowed on the identity route and refused
//! on the scope route; curl with a foreign certificate refused outright.
#![cfg(test)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A binary next to this test's directory (`target/<profile>/NAME` or `.../examples/NAME`).
fn built(rel: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut path = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for r in rel {
        path = path.join(r);
    }
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace`, which builds the CLI and the examples",
        path.display()
    );
    path
}

/// Runs a command to completion, bounded.
/// The stdout of a process that must have exited with success (else its stdout and stderr).
fn succeeded(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{cmd:?} timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn agentid(dir: &Path, args: &str) {
    let out = run(Command::new(built(&["agentid"]))
        .args(args.split_whitespace())
        .current_dir(dir));
    assert!(
        out.status.success(),
        "agentid {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server process; killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const POLICY: &str = r#"
[agents.planner]
scopes = ["files:read", "files:write"]
max_depth = 2
requesters = ["operator"]

[agents.coder]
requesters = ["parent:planner"]

[services.files]
requesters = ["operator"]
dns = ["files.example.org"]
"#;

#[test]
fn http_agents_with_the_agentid_client_and_curl() {
    let example = built(&["examples", "http_agents"]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    agentid(d, "ca init --trust-domain example.org --dir demo/ca");
    std::fs::write(d.join("demo/ca/policy.toml"), POLICY).unwrap();
    for args in [
        "cert issue --ca demo/ca --service files --out-dir demo/files",
        "cert issue --ca demo/ca --agent planner --scope files:read --scope files:write --max-depth 1 --out-dir demo/planner",
        "cert issue --ca demo/ca --agent coder --parent demo/planner --out-dir demo/coder",
        "delegate --chain demo/planner/grant.jwt --key demo/planner/key.pem --to-cert demo/coder/cert.pem \
         --bundle demo/coder/bundle.json --scope files:read --ttl 10m --out demo/coder/chain.jwt",
        "revocations export --ca demo/ca --out demo/revocations.jwt",
        // A foreign CA of the same trust domain name: its certificates chain to another root.
        "ca init --trust-domain example.org --dir demo/foreign-ca",
    ] {
        agentid(d, args);
    }
    std::fs::write(d.join("demo/foreign-ca/policy.toml"), POLICY).unwrap();
    agentid(
        d,
        "cert issue --ca demo/foreign-ca --agent planner --scope files:read --out-dir demo/foreign",
    );
    let p = |s: &str| d.join(s).to_str().unwrap().to_owned();

    let mut child = Command::new(&example)
        .args([
            "serve",
            "--dir",
            &p("demo/files"),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--revocations", &p("demo/revocations.jwt")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("the server prints its address");
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().to_owned();
        }
    };
    let port = addr.rsplit(':').next().unwrap().to_owned();

    // The agentid client with the coder's delegated chain: both routes.
    let out = run(Command::new(&example).args([
        "call",
        "--dir",
        &p("demo/coder"),
        "--connect",
        &addr,
        "--revocations",
        &p("demo/revocations.jwt"),
        "--path",
        "/files",
        "--path",
        "/status",
    ]));
    let text = succeeded(&out);
    assert!(
        text.contains("GET /files -> 200 files for spiffe://example.org/agent/coder/task/"),
        "{text}"
    );
    assert!(text.contains("under [files:read]"), "{text}");
    assert!(
        text.contains("GET /status -> 200 status for spiffe://example.org/agent/coder/task/"),
        "{text}"
    );
    assert!(text.contains("server proof verified"), "{text}");

    // The planner holds files:read directly but is not admitted on /status.
    let out = run(Command::new(&example).args([
        "call",
        "--dir",
        &p("demo/planner"),
        "--connect",
        &addr,
        "--revocations",
        &p("demo/revocations.jwt"),
        "--path",
        "/status",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("GET /status -> 403 {\"code\":\"peer_denied\""),
        "{text}"
    );

    if !curl_available() {
        println!("SKIPPED the curl half: no `curl` on PATH (.ci/run installs it)");
        return;
    }
    let curl = |dir: &str, path: &str| {
        run(Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(["--cacert", &p("demo/coder/bundle.pem")])
            .args(["--cert", &p(&format!("{dir}/cert.pem"))])
            .args(["--key", &p(&format!("{dir}/key.pem"))])
            .args(["--resolve", &format!("files.example.org:{port}:127.0.0.1")])
            .arg(format!("https://files.example.org:{port}{path}")))
    };
    // Identity only: the peer route answers, the scope route refuses.
    let out = curl("demo/coder", "/status");
    let text = succeeded(&out);
    assert!(
        text.starts_with("status for spiffe://example.org/agent/coder/task/"),
        "{text}"
    );
    assert!(text.ends_with("\n200"), "{text}");
    let out = curl("demo/coder", "/files");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "{\"code\":\"scope_not_granted\",\"message\":\"not authorized\"}\n403"
    );
    // A foreign certificate never gets a response.
    let out = curl("demo/foreign", "/status");
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("status for"));
    drop(server);
}
