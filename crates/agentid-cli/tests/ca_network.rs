//! The CA service through the real `agentid` binary on 127.0.0.1: `ca serve` with an
//! enrollment listener, `token create` (operator and service; for agents and for services),
//! `enroll`, `ca list` and
//! `revoke --ca-url`; and the refusals, each with its code and nothing recorded as issued.
#![cfg(test)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{mode, CaService, Env};

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
requesters = ["operator", "bootstrap"]

[agents.planner.permissions]
"svc:platform" = ["open_task", "create_token", "revoke", "list"]

[agents.auditor]
scopes = ["tickets:read"]
requesters = ["operator", "bootstrap"]

[agents.summarizer]
scopes = ["tickets:read"]
requesters = ["parent:planner"]

[services.agentid-ca]
requesters = ["operator"]

[services.platform]
requesters = ["operator"]

[services.weak]
requesters = ["operator"]

[services.web]
requesters = ["operator", "bootstrap"]
dns = ["web.example.org", "web.internal"]
"#;

type Server = CaService;

/// A CA in `env` with [`POLICY`], service credentials for `platform` and `weak`, and
/// `ca serve` running with both listeners.
fn serve(env: &Env) -> Server {
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    env.ok("cert issue --ca ca --service platform --out-dir platform");
    env.ok("cert issue --ca ca --service weak --out-dir weak");
    CaService::start(env, &[])
}

/// Issuances the CA's store holds (read beside the running service).
fn issued(env: &Env) -> usize {
    agentid_ca::CertificateAuthority::open(&env.path("ca"))
        .unwrap()
        .issuances()
        .unwrap()
        .len()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn an_operator_token_enrolls_once_and_a_second_use_is_refused() {
    let env = Env::new();
    let s = serve(&env);
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t1.json",
        s.enroll_url()
    ));
    assert_eq!(mode(&env.path("t1.json")), 0o600);
    let file: serde_json::Value = serde_json::from_str(&env.read("t1.json")).unwrap();
    let before = issued(&env);

    let v = env.json("enroll --token-file t1.json --out-dir a1");
    assert_eq!(v["identity"], file["identity"]);
    assert_eq!(mode(&env.path("a1/key.pem")), 0o600);
    assert!(env.read("a1/grant.jwt").starts_with("ey"));
    // The written directory is a working credential directory.
    env.ok("cert verify a1/cert.pem --bundle example.org=a1/bundle.json");
    assert_eq!(issued(&env), before + 1);

    env.fails("enroll --token-file t1.json --out-dir a2", 1, "token_used");
    assert_eq!(issued(&env), before + 1, "nothing issued the second time");
    assert!(!env.path("a2/cert.pem").exists());
}

#[test]
fn an_expired_token_is_refused_and_issues_nothing() {
    let env = Env::new();
    let s = serve(&env);
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --expires-in 1s --out t.json",
        s.enroll_url()
    ));
    let file: serde_json::Value = serde_json::from_str(&env.read("t.json")).unwrap();
    let expires = file["expires"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while now() <= expires && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = issued(&env);
    env.fails("enroll --token-file t.json --out-dir a", 1, "token_expired");
    assert_eq!(issued(&env), before);
}

#[test]
fn a_token_presented_to_another_ca_is_not_sent_and_stays_redeemable() {
    let env = Env::new();
    let s = serve(&env);
    let other = Env::new();
    let impostor = serve(&other);
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t.json",
        s.enroll_url()
    ));
    // The same token file, pointed at a CA whose root is not the pinned one.
    let mut file: serde_json::Value = serde_json::from_str(&env.read("t.json")).unwrap();
    file["ca_url"] = impostor.enroll_url().into();
    let wrong = env.path("wrong.json");
    std::fs::write(&wrong, serde_json::to_vec(&file).unwrap()).unwrap();
    env.chmod("wrong.json", 0o600);
    let (before, before_other) = (issued(&env), issued(&other));
    env.fails(
        "enroll --token-file wrong.json --out-dir a",
        1,
        "is not the CA the token file pins",
    );
    assert_eq!((issued(&env), issued(&other)), (before, before_other));
    // The token never left: the pinned CA still redeems it.
    env.json("enroll --token-file t.json --out-dir b");
    assert_eq!(issued(&env), before + 1);
}

#[test]
fn enroll_and_token_create_refuse_a_directory_others_control_before_anything_is_spent() {
    let env = Env::new();
    let s = serve(&env);
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t.json",
        s.enroll_url()
    ));
    let before = issued(&env);
    // A directory anyone can write (a name made in a shared place, or planted there): its
    // other writers could replace the key, or the bundle it is checked against, at will.
    std::fs::create_dir(env.path("shared")).unwrap();
    env.chmod("shared", 0o777);
    env.fails(
        "enroll --token-file t.json --out-dir shared",
        1,
        "could be replaced by others",
    );
    // A directory another user made where ours was expected (only root can give one away).
    std::fs::create_dir(env.path("planted")).unwrap();
    let planted = std::os::unix::fs::chown(env.path("planted"), Some(65534), Some(65534)).is_ok();
    if planted {
        env.fails(
            "enroll --token-file t.json --out-dir planted",
            1,
            "owned by another user",
        );
    }
    // A new private directory of ours inside one anyone can write: they could rename it away
    // and put theirs (with their `bundle.json`) in its place.
    env.fails(
        "enroll --token-file t.json --out-dir shared/creds",
        1,
        "could be replaced by others",
    );
    assert_eq!(issued(&env), before, "nothing issued");
    for dir in ["shared", "planted"] {
        assert_eq!(
            std::fs::read_dir(env.path(dir)).unwrap().count(),
            0,
            "{dir} left empty"
        );
    }
    // The token was not spent.
    env.json("enroll --token-file t.json --out-dir a");
    assert_eq!(issued(&env), before + 1);
    // Nor is a token created for a file that would sit there.
    env.fails(
        &format!(
            "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out shared/t2.json",
            s.enroll_url()
        ),
        1,
        "could be replaced by others",
    );
    assert!(!env.path("shared/t2.json").exists());
}

#[test]
fn a_service_creates_tokens_lists_and_revokes_within_its_permissions() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    let eurl = s.enroll_url();
    env.ok(&format!(
        "token create --ca-url {url} --cred platform --enroll-url {eurl} --agent planner --scope tickets:read --out t.json"
    ));
    assert_eq!(mode(&env.path("t.json")), 0o600);
    // The token file reaches the agent through the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .current_dir(env.path(""))
        .env("AGENTID_TOKEN_FILE", env.path("t.json"))
        .args(["enroll", "--out-dir", "a", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enrolled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holder = enrolled["identity"].as_str().unwrap().to_owned();
    let task = holder.rsplit('/').next().unwrap().to_owned();

    let list = env.json(&format!("ca list --ca-url {url} --cred platform"));
    let holders: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["holder"].as_str().unwrap())
        .collect();
    assert_eq!(holders, [holder.as_str()]);

    env.json(&format!(
        "revoke --ca-url {url} --cred platform --task {task}"
    ));
    let list = env.json(&format!("ca list --ca-url {url} --cred platform"));
    assert!(list["tasks"].as_array().unwrap().is_empty(), "{list}");
    // The revoked holder can no longer renew: the CA re-checks it on every request.
    let (_, line) = env.fails(
        &format!("revoke --ca-url {url} --cred a --task {task}"),
        1,
        "revoked",
    );
    // The code is said once, and the message names what is revoked and what to do.
    assert!(!line.contains("revoked: revoked"), "{line}");
    assert!(line.contains(&format!("task {task} is revoked")), "{line}");
    assert!(line.contains("open a new task"), "{line}");
}

#[test]
fn a_service_without_the_permission_it_uses_is_refused_and_nothing_is_recorded() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    let eurl = s.enroll_url();
    let before = issued(&env);
    env.fails(
        &format!("ca list --ca-url {url} --cred weak"),
        1,
        "policy_denied",
    );
    // Under --format json the same refusal is one document with the CA's own code and hint.
    let (stdout, line) = env.fails(
        &format!("ca list --ca-url {url} --cred weak --format json"),
        1,
        "policy_denied",
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["error"]["code"], "policy_denied", "{doc}");
    assert_eq!(
        doc["error"]["message"].as_str(),
        line.strip_prefix("agentid: ")
    );
    // The CA's own hint, naming the rule that refused (never one of the CLI's own).
    let hint = doc["error"]["hint"].as_str().unwrap_or_default();
    assert_eq!(
        hint,
        "check the request against agents.*.permissions in the CA's policy.toml, or ask the CA's operator to change that rule",
        "{doc}"
    );
    assert!(line.ends_with(&format!("({hint})")), "{doc}");
    env.fails(
        &format!(
            "token create --ca-url {url} --cred weak --enroll-url {eurl} --agent planner --scope tickets:read --out t.json"
        ),
        1,
        "policy_denied",
    );
    assert!(!env.path("t.json").exists());
    // `platform` may create tokens for planner, not for auditor: the rule is named.
    let (stdout, _) = env.fails(
        &format!(
            "token create --ca-url {url} --cred platform --enroll-url {eurl} --agent auditor --scope tickets:read --out t.json --format json"
        ),
        1,
        "policy_denied",
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        doc["error"]["hint"],
        "check the request against agents.auditor.permissions in the CA's policy.toml, or ask the CA's operator to change that rule",
        "{doc}"
    );
    env.fails(
        &format!("revoke --ca-url {url} --cred weak --agent planner"),
        1,
        "policy_denied",
    );
    assert_eq!(issued(&env), before);
    assert!(agentid_ca::CertificateAuthority::open(&env.path("ca"))
        .unwrap()
        .revocations()
        .unwrap()
        .is_empty());
}

/// An agent `planner` enrolled into `a/` with a token of 12 s certificates whose renewals go to
/// the service: the enrollment's JSON output.
fn enrolled_holder(env: &Env, s: &Server) -> serde_json::Value {
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --renew-url {} --agent planner --scope tickets:read --ttl 12s --out t.json",
        s.enroll_url(),
        s.url()
    ));
    env.json("enroll --token-file t.json --out-dir a")
}

/// `cert renew --daemon` on `a/` against `url` (12 s certificates), logging at INFO to
/// `daemon.log`.
fn renewal_daemon(env: &Env, url: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_agentid"))
        .current_dir(env.path(""))
        .args([
            "cert", "renew", "--ca-url", url, "--dir", "a", "--daemon", "--ttl", "12s",
        ])
        .env("AGENTID_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("daemon.log")).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn an_enrolled_holder_renews_over_mtls_once_and_as_a_daemon() {
    let env = Env::new();
    let s = serve(&env);
    let first = enrolled_holder(&env, &s);
    let url = s.url();
    let once = env.json(&format!("cert renew --ca-url {url} --dir a --ttl 12s"));
    assert_eq!(once["identity"], first["identity"]);
    assert_ne!(once["serial"], first["serial"]);
    // The written certificate is the renewed one, for the same key.
    env.ok("cert verify a/cert.pem --bundle example.org=a/bundle.json");
    let serial_of =
        |env: &Env| -> serde_json::Value { env.json("cert inspect a/cert.pem")["serial"].clone() };
    assert_eq!(
        serial_of(&env)
            .as_str()
            .map(|s| s.replace(':', "").to_lowercase()),
        once["serial"]
            .as_str()
            .map(|s| s.replace(':', "").to_lowercase())
    );

    // As a daemon: cert.pem is replaced on its own (12 s certificates, renewed at half-life).
    let before = serial_of(&env);
    let mut daemon = renewal_daemon(&env, &url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut renewed = false;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if serial_of(&env) != before {
            renewed = true;
            break;
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        renewed,
        "the daemon replaced cert.pem: {}",
        env.read("daemon.log")
    );
    env.ok("cert verify a/cert.pem --bundle example.org=a/bundle.json");
}

/// The renewal daemon keeps a renewed certificate it cannot write (here `cert.pem` is a
/// directory for a while) and tries again, logging why, instead of exiting with the renewed
/// credential in hand; once the path is writable again the certificate lands and the daemon is
/// still running.
#[test]
fn the_daemon_keeps_a_certificate_it_cannot_write_and_writes_it_later() {
    let env = Env::new();
    let s = serve(&env);
    let first = enrolled_holder(&env, &s);
    let mut daemon = renewal_daemon(&env, &s.url());
    // The daemon has read the credential; cert.pem becomes something it must not write.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::remove_file(env.path("a/cert.pem")).unwrap();
    std::fs::create_dir(env.path("a/cert.pem")).unwrap();
    let wait_for = |what: &dyn Fn() -> bool, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    let refused = wait_for(
        &|| env.read("daemon.log").contains("could not be written"),
        30,
    );
    let alive = daemon.try_wait().unwrap().is_none();
    std::fs::remove_dir(env.path("a/cert.pem")).unwrap();
    let written = refused && alive && wait_for(&|| env.path("a/cert.pem").is_file(), 15);
    let still_alive = daemon.try_wait().unwrap().is_none();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = env.read("daemon.log");
    assert!(refused, "no failed write logged: {log}");
    assert!(alive, "the daemon exited on a failed write: {log}");
    assert!(
        written,
        "the certificate was not written once it could be: {log}"
    );
    assert!(still_alive, "{log}");
    let now = env.json("cert inspect a/cert.pem");
    assert_ne!(now["serial"], first["serial"], "a renewed certificate");
    env.ok("cert verify a/cert.pem --bundle example.org=a/bundle.json");
}

/// A credential directory whose key is replaced while the renewal daemon runs (the operator
/// rotating it with `cert issue --force`) never gets the daemon's renewed certificate of the
/// old key over the new one (a key with another key's certificate, which no TLS stack loads):
/// `cert.pem` stays the new key's, and the daemon stops, saying why.
#[test]
fn the_daemon_never_writes_a_certificate_for_a_key_the_directory_no_longer_holds() {
    let env = Env::new();
    let s = serve(&env);
    enrolled_holder(&env, &s);
    let mut daemon = renewal_daemon(&env, &s.url());
    // The daemon has read the credential; the directory's key is rotated under it.
    std::thread::sleep(Duration::from_secs(1));
    let rotated = env.json(
        "cert issue --ca ca --agent planner --scope tickets:read --ttl 10m --out-dir a --force",
    );
    // The daemon renews its 12 s certificate at about half of its life.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut mismatch = None;
    let mut exited = false;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if let Err(e) = agentid::files::Holder::load(&env.path("a")) {
            mismatch = Some(e.to_string());
            break;
        }
        if daemon.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = env.read("daemon.log");
    assert_eq!(
        mismatch, None,
        "the daemon wrote a certificate for the replaced key: {log}"
    );
    assert!(
        exited,
        "the daemon went on renewing a key the directory no longer holds: {log}"
    );
    assert!(
        log.contains("key.pem"),
        "the daemon says why it stopped: {log}"
    );
    assert_eq!(
        env.json("cert inspect a/cert.pem")["identity"],
        rotated["identity"]
    );
}

/// The renewal daemon reads its credential directory as held once, at start; a directory that
/// others can write since (a `chmod o+w` on it, or above it) is not written into: every write of
/// a renewed certificate first reads the directory's key as held, so the refusal names the
/// directory and its `chmod`, and `cert.pem` stays as it was.
#[test]
fn the_daemon_writes_nothing_into_a_directory_others_can_write_since_it_started() {
    let env = Env::new();
    let s = serve(&env);
    let first = enrolled_holder(&env, &s);
    let serial = |env: &Env| env.json("cert inspect a/cert.pem")["serial"].clone();
    let wait_for = |what: &dyn Fn() -> bool, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    let mut daemon = renewal_daemon(&env, &s.url());
    // The daemon renews once at start and writes it: it has read the directory then.
    let started = wait_for(&|| serial(&env) != first["serial"], 30);
    let on_disk = serial(&env);
    env.chmod("a", 0o777);
    let fix = format!("chmod go-w {}", env.path("a").display());
    let refused = started && wait_for(&|| env.read("daemon.log").contains(&fix), 30);
    let unchanged = serial(&env) == on_disk;
    env.chmod("a", 0o700);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = env.read("daemon.log");
    assert!(started, "the daemon renewed at start: {log}");
    assert!(refused, "no refusal naming {fix}: {log}");
    assert!(
        unchanged,
        "cert.pem was written into a directory others can write: {log}"
    );
}

/// An agent's key (`DIR/key.pem`, 0600) and a CSR for it naming `sans` (`DIR/req.csr`).
fn agent_csr(env: &Env, dir: &str, sans: &[&str]) {
    std::fs::create_dir_all(env.path(dir)).unwrap();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = sans
        .iter()
        .map(|s| rcgen::SanType::URI((*s).try_into().unwrap()))
        .collect();
    let csr = p.serialize_request(&kp).unwrap();
    std::fs::write(env.path(&format!("{dir}/req.csr")), csr.pem().unwrap()).unwrap();
    std::fs::write(env.path(&format!("{dir}/key.pem")), kp.serialize_pem()).unwrap();
    env.chmod(&format!("{dir}/key.pem"), 0o600);
}

/// A private key given as `--csr` by mistake (PEM, or DER as `openssl pkey -outform DER`
/// writes it) is refused before anything is sent: the key never leaves the agent's host, not
/// even to the CA.
#[test]
fn a_private_key_given_as_the_csr_is_never_sent() {
    let env = Env::new();
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    env.ok("cert issue --ca ca --service platform --out-dir platform");
    env.ok("cert issue --ca ca --agent planner --scope tickets:read --max-depth 1 --out-dir p");
    agent_csr(&env, "k", &[]);
    let pem = env.read("k/key.pem");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    std::fs::write(env.path("k/key.der"), der).unwrap();
    // Where the CA would be: whoever listens there must get nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    for key in ["k/key.pem", "k/key.der"] {
        env.fails(
            &format!(
                "task open --ca-url {url} --cred platform --csr {key} --agent planner --scope tickets:read --out-dir o"
            ),
            1,
            "a private key, not a CSR",
        );
        env.fails(
            &format!(
                "task child --ca-url {url} --cred p --csr {key} --agent summarizer --out-dir c"
            ),
            1,
            "a private key, not a CSR",
        );
    }
    assert!(
        listener.accept().is_err(),
        "a connection reached the CA's address"
    );
}

/// A child of a sealed task (`max_depth` 0) is refused by the service with the next step: a
/// task opened with a deeper `--max-depth`.
#[test]
fn a_child_of_a_sealed_task_is_refused_with_the_next_step() {
    let env = Env::new();
    let s = serve(&env);
    env.ok("cert issue --ca ca --agent planner --scope tickets:read --out-dir sealed");
    agent_csr(&env, "c", &[]);
    let before = issued(&env);
    let (_, line) = env.fails(
        &format!(
            "task child --ca-url {} --cred sealed --csr c/req.csr --agent summarizer --out-dir c",
            s.url()
        ),
        1,
        "cap_reached",
    );
    assert!(
        line.contains("open the parent's task with --max-depth 1 or more"),
        "{line}"
    );
    assert_eq!(issued(&env), before);
}

#[test]
fn a_platform_opens_a_task_from_a_csr_and_the_parent_gets_only_a_capped_child() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    let id = "spiffe://example.org/agent/planner/task/t-csr-1";
    agent_csr(&env, "p", &[id]);
    let v = env.json(&format!(
        "task open --ca-url {url} --cred platform --csr p/req.csr --agent planner --task t-csr-1 --scope tickets:read --task-ttl 2m --max-depth 1 --out-dir p"
    ));
    assert_eq!(v["identity"], id);
    std::fs::copy(env.path("platform/bundle.json"), env.path("p/bundle.json")).unwrap();
    env.ok("cert verify p/cert.pem --bundle example.org=p/bundle.json");

    // A CSR naming a second identity: 400 bad_csr, nothing issued.
    let before = issued(&env);
    agent_csr(
        &env,
        "x",
        &[
            "spiffe://example.org/agent/planner/task/t-csr-2",
            "spiffe://example.org/agent/admin/task/t-csr-2",
        ],
    );
    env.fails(
        &format!(
            "task open --ca-url {url} --cred platform --csr x/req.csr --agent planner --task t-csr-2 --scope tickets:read --out-dir x"
        ),
        1,
        "bad_csr",
    );
    assert_eq!(issued(&env), before);

    // The parent (the task just opened) asks for a child longer than its 2-minute task:
    // 409 cap_reached, nothing issued; within it, the child is issued.
    agent_csr(&env, "c", &[]);
    env.fails(
        &format!(
            "task child --ca-url {url} --cred p --csr c/req.csr --agent summarizer --ttl 10m --out-dir c"
        ),
        1,
        "cap_reached",
    );
    assert_eq!(issued(&env), before);
    let child = env.json(&format!(
        "task child --ca-url {url} --cred p --csr c/req.csr --agent summarizer --ttl 1m --out-dir c"
    ));
    assert_eq!(
        child["identity"],
        "spiffe://example.org/agent/summarizer/task/t-csr-1"
    );
    assert_eq!(issued(&env), before + 1);
}

/// A CSR is input another user (the agent that made it) may own, but nobody else may have
/// changed: `cert sign`, `task open` and `task child` refuse one in a directory others can
/// write (without the sticky bit) or that others can write itself, naming the entry and the
/// `chmod` to run, before anything is issued; whoever could replace it would have the CA
/// certify their key as the agent's. A CSR another user owns, in a directory only its owners
/// can change, is taken as handed over.
#[test]
fn a_csr_others_could_have_replaced_is_refused_before_anything_is_issued() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    env.ok("cert issue --ca ca --agent planner --scope tickets:read --max-depth 1 --out-dir p");
    let lines = [
        ("a1", "cert sign --ca ca --csr a1/req.csr --agent planner --scope tickets:read --out-dir o1".to_owned()),
        ("a2", format!("task open --ca-url {url} --cred platform --csr a2/req.csr --agent planner --scope tickets:read --out-dir o2")),
        ("a3", format!("task child --ca-url {url} --cred p --csr a3/req.csr --agent summarizer --ttl 1m --out-dir o3")),
    ];
    for (dir, line) in &lines {
        agent_csr(&env, dir, &[]);
        env.chmod(dir, 0o755);
        let csr = format!("{dir}/req.csr");
        env.chmod(&csr, 0o644);
        let before = issued(&env);
        for (rel, mode) in [
            (*dir, 0o777),
            (*dir, 0o770),
            (csr.as_str(), 0o666),
            (csr.as_str(), 0o646),
        ] {
            env.chmod(rel, mode);
            let (_, msg) = env.fails(line, 1, &format!("chmod go-w {}", env.path(rel).display()));
            assert!(msg.contains(&format!("{mode:03o}")), "{line}: {msg}");
            assert!(
                msg.contains(&format!("on the way to {csr}")),
                "{line}: {msg}"
            );
            assert_eq!(
                issued(&env),
                before,
                "{line}: issued from {rel} at {mode:03o}"
            );
            env.chmod(rel, if rel == *dir { 0o755 } else { 0o644 });
        }
        // Handed over by another user (only root can give files away): issued.
        if std::os::unix::fs::chown(env.path(dir), Some(65534), Some(65534)).is_ok() {
            std::os::unix::fs::chown(env.path(&csr), Some(65533), Some(65533)).unwrap();
        }
        env.ok(line);
        assert_eq!(issued(&env), before + 1, "{line}");
    }
}

/// `--csr` takes a file (there is no `--csr -`): a CSR piped in as `/dev/stdin` is refused as
/// the FIFO it is, naming it, at once, never as a missing `/proc/PID/fd/pipe:[N]`; one
/// redirected from a file is read as that file.
#[test]
fn a_csr_piped_as_dev_stdin_is_refused_as_a_fifo() {
    use std::io::Write;
    let env = Env::new();
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    agent_csr(&env, "a", &[]);
    let args = [
        "cert",
        "sign",
        "--ca",
        "ca",
        "--csr",
        "/dev/stdin",
        "--agent",
        "planner",
        "--scope",
        "tickets:read",
        "--out-dir",
        "o",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(args)
        .current_dir(env.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let csr = env.read("a/req.csr");
    let mut stdin = child.stdin.take().unwrap();
    // The command may refuse before it reads: a closed pipe is no failure here.
    let _ = stdin.write_all(csr.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/dev/stdin is a FIFO"), "{err}");
    assert!(!err.contains("pipe:["), "{err}");
    assert!(!env.path("o").exists());
    // Redirected from a file: that file, checked as any CSR.
    let out = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(args)
        .current_dir(env.dir.path())
        .stdin(std::fs::File::open(env.path("a/req.csr")).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// `task open` and `task child` write `cert.pem` into `--out-dir` only beside its own key: an
/// out-dir holding another key (a working credential directory named by mistake) is refused
/// before the CA is asked, nothing is issued, and its certificate stays the one its key
/// matches.
#[test]
fn task_open_and_child_refuse_an_out_dir_holding_another_key_before_asking_the_ca() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    // p/: a working credential directory (the agent's key and its certificate).
    let id = "spiffe://example.org/agent/planner/task/t-key-1";
    agent_csr(&env, "p", &[id]);
    env.ok(&format!(
        "task open --ca-url {url} --cred platform --csr p/req.csr --agent planner --task t-key-1 --scope tickets:read --max-depth 1 --out-dir p"
    ));
    std::fs::copy(env.path("platform/bundle.json"), env.path("p/bundle.json")).unwrap();
    let cert = env.read("p/cert.pem");
    // Another agent's CSR (its key in x/), with p/ named as the output by mistake.
    agent_csr(&env, "x", &[]);
    let before = issued(&env);
    env.fails(
        &format!(
            "task open --ca-url {url} --cred platform --csr x/req.csr --agent planner --scope tickets:read --out-dir p"
        ),
        1,
        "holds another key than the CSR's",
    );
    env.fails(
        &format!(
            "task child --ca-url {url} --cred p --csr x/req.csr --agent summarizer --ttl 1m --out-dir p"
        ),
        1,
        "holds another key than the CSR's",
    );
    assert_eq!(issued(&env), before, "nothing is issued");
    assert_eq!(env.read("p/cert.pem"), cert);
    agentid::files::Holder::load(&env.path("p")).expect("p/ still holds a matching pair");
    // Into the directory of the CSR's own key, it is written.
    env.ok(&format!(
        "task child --ca-url {url} --cred p --csr x/req.csr --agent summarizer --ttl 1m --out-dir x"
    ));
    agentid::files::Holder::load(&env.path("x")).expect("x/ holds the child's pair");
}

/// `task open` writes `cert.pem` and `grant.jwt` into a credential directory too: while another
/// command holds that directory (`cert issue --force` replacing its key, say), it is refused
/// before the CA is asked, as `cert issue` and `cert sign` are, instead of writing a
/// certificate for the key it read beside the key the other command puts there.
#[test]
fn task_open_into_a_directory_being_written_by_another_command_is_refused() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    agent_csr(&env, "x", &[]);
    let before = issued(&env);
    let held = std::fs::File::open(env.path("x")).unwrap();
    held.lock().unwrap();
    env.fails(
        &format!(
            "task open --ca-url {url} --cred platform --csr x/req.csr --agent planner --scope tickets:read --out-dir x"
        ),
        1,
        "another agentid command is writing this directory",
    );
    assert_eq!(issued(&env), before, "nothing is issued");
    assert!(!env.path("x/cert.pem").exists());
    drop(held);
    env.ok(&format!(
        "task open --ca-url {url} --cred platform --csr x/req.csr --agent planner --scope tickets:read --out-dir x"
    ));
    assert!(env.path("x/cert.pem").exists());
}

/// `enroll` writes a new `key.pem` with its `cert.pem`, `bundle.json` and `grant.jwt`: while
/// another command holds the directory (`task open` between its key check and its write, say),
/// it is refused before the token is spent, as the commands that hold the lock are, instead of
/// putting a key there beside which the other command then writes its certificate.
#[test]
fn enroll_into_a_directory_being_written_by_another_command_is_refused_before_the_token_is_spent() {
    use std::os::unix::fs::DirBuilderExt as _;
    let env = Env::new();
    let s = serve(&env);
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t.json",
        s.enroll_url()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(env.path("a"))
        .unwrap();
    let before = issued(&env);
    let held = std::fs::File::open(env.path("a")).unwrap();
    held.lock().unwrap();
    let (_, msg) = env.fails(
        "enroll --token-file t.json --out-dir a",
        1,
        "another agentid command is writing this directory",
    );
    assert!(msg.contains("wait for it to finish"), "{msg}");
    assert_eq!(issued(&env), before, "nothing is issued");
    assert!(!env.path("a/key.pem").exists());
    drop(held);
    // The token was not spent.
    env.json("enroll --token-file t.json --out-dir a");
    assert_eq!(issued(&env), before + 1);
    agentid::files::Holder::load(&env.path("a")).expect("key and certificate match");
}

/// The caller verifies the CA too: a service of another CA (same trust domain name, another
/// root) refuses this CA's certificate before it sends anything. (A foreign client certificate
/// presented to the CA gets a TLS alert: agentid-ca's `service_tasks` test, since this CLI
/// refuses to load a credential its own bundle does not validate.)
#[test]
fn a_ca_outside_the_callers_bundle_is_refused_before_anything_is_sent() {
    let env = Env::new();
    let s = serve(&env);
    let other = Env::new();
    std::fs::write(other.path("ca/policy.toml"), POLICY).unwrap();
    other.ok("cert issue --ca ca --service platform --out-dir platform");
    let foreign = other.path("platform");
    let before = issued(&env);
    let (_, line) = env.fails_args(
        &[
            "ca",
            "list",
            "--ca-url",
            &s.url(),
            "--cred",
            foreign.to_str().unwrap(),
        ],
        1,
        "invalid peer certificate",
    );
    // It answered: the reason is its certificate, not reachability.
    assert!(line.contains(&s.url()), "{line}");
    assert!(!line.contains("cannot reach"), "{line}");
    assert_eq!(issued(&env), before);
}

/// A caller whose own certificate has expired is told so, with the date and the next step (the
/// CA service renews only a valid certificate), before anything is sent.
#[test]
fn an_expired_cred_names_its_expiry_and_the_operators_renewal() {
    let env = Env::new();
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    env.ok("cert issue --ca ca --service platform --ttl 1s --out-dir platform");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for cmd in [
        "ca list --ca-url https://127.0.0.1:9 --cred platform",
        "revocations list --ca-url https://127.0.0.1:9 --cred platform",
        "cert renew --ca-url https://127.0.0.1:9 --dir platform",
    ] {
        let (_, line) = env.fails(cmd, 1, "it expired at 20");
        assert!(
            line.contains("run `agentid cert renew --ca CA_DIR --dir platform`"),
            "{line}"
        );
        assert!(!line.contains("cannot reach"), "nothing is sent: {line}");
    }
}

/// A token for a revoked agent could never be redeemed (its enrollment is refused `revoked`):
/// it is refused when made, and no token file is written.
#[test]
fn a_token_for_a_revoked_agent_is_refused_when_made() {
    let env = Env::new();
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    let make = "token create --ca ca --enroll-url https://127.0.0.1:8444 --agent auditor --scope tickets:read --out a.token";
    env.ok(make);
    std::fs::remove_file(env.path("a.token")).unwrap();
    env.ok("revoke --ca ca --agent auditor");
    let (_, line) = env.fails(make, 1, "agent auditor is revoked");
    assert!(
        line.contains("the CA forgets no revocation: to use the name again"),
        "the next step: {line}"
    );
    assert!(!env.path("a.token").exists());
}

/// A service token whose `--ttl` its rule's `max_ttl` refuses could never be redeemed: it is
/// refused when made, naming the rule, and no token file is written.
#[test]
fn a_service_token_asking_for_more_than_max_ttl_is_refused_when_made() {
    let env = Env::new();
    std::fs::write(env.path("ca/policy.toml"), POLICY).unwrap();
    let (_, line) = env.fails(
        "token create --ca ca --enroll-url https://127.0.0.1:8444 --service web --ttl 1h --out web.token",
        1,
        "certificate TTL 1h exceeds the maximum of 15m",
    );
    assert!(line.contains("defaults.max_ttl"), "{line}");
    assert!(!env.path("web.token").exists());
    env.ok("token create --ca ca --enroll-url https://127.0.0.1:8444 --service web --ttl 15m --out web.token");
}

#[test]
fn a_service_token_enrolls_a_service_certificate_with_the_dns_names_of_its_rule() {
    let env = Env::new();
    let s = serve(&env);
    let (url, eurl) = (s.url(), s.enroll_url());
    let made = env.json(&format!(
        "token create --ca ca --enroll-url {eurl} --renew-url {url} --service web --ttl 10m --out web.token"
    ));
    assert_eq!(made["identity"], "spiffe://example.org/svc/web");
    assert_eq!(mode(&env.path("web.token")), 0o600);
    let file: serde_json::Value = serde_json::from_str(&env.read("web.token")).unwrap();
    assert_eq!(file["identity"], "spiffe://example.org/svc/web");
    assert_eq!(file["renew_url"], url.as_str());
    let before = issued(&env);

    let v = env.json("enroll --token-file web.token --out-dir web");
    assert_eq!(v["identity"], "spiffe://example.org/svc/web");
    assert_eq!(mode(&env.path("web/key.pem")), 0o600);
    assert!(
        !env.path("web/grant.jwt").exists(),
        "a service holds no grant"
    );
    env.ok("cert verify web/cert.pem --bundle example.org=web/bundle.json");
    let info = env.json("cert inspect web/cert.pem");
    assert_eq!(info["kind"], "service");
    assert_eq!(
        info["san"],
        serde_json::json!([
            "URI:spiffe://example.org/svc/web",
            "DNS:web.example.org",
            "DNS:web.internal"
        ])
    );
    let life = info["not_after"].as_u64().unwrap() - info["not_before"].as_u64().unwrap();
    assert!(life <= 600 + 120, "the token's --ttl, at most: {life}");
    let ca = agentid_ca::CertificateAuthority::open(&env.path("ca")).unwrap();
    assert_eq!(ca.issuances().unwrap().len(), before + 1);
    let rec = ca
        .issuance(v["serial"].as_str().unwrap())
        .unwrap()
        .expect("the enrollment is recorded");
    assert_eq!(rec.requester, "bootstrap token");

    // Used once: a second enrollment is refused and issues nothing.
    env.fails(
        "enroll --token-file web.token --out-dir web2",
        1,
        "token_used",
    );
    assert_eq!(issued(&env), before + 1);
    assert!(!env.path("web2/cert.pem").exists());
    // The enrolled service renews over mutual TLS, as an agent does.
    let renewed = env.json(&format!("cert renew --ca-url {url} --dir web"));
    assert_eq!(renewed["identity"], "spiffe://example.org/svc/web");
    env.ok("cert verify web/cert.pem --bundle example.org=web/bundle.json");
}

#[test]
fn token_create_for_a_service_refuses_what_does_not_apply_and_services_without_bootstrap() {
    let env = Env::new();
    let s = serve(&env);
    let (url, eurl) = (s.url(), s.enroll_url());
    let base = format!("token create --ca ca --enroll-url {eurl} --out t.json");
    // Exactly one of --agent and --service (clap's refusal: status 2, one line).
    env.fails(
        &format!("{base} --agent planner --service web --scope tickets:read"),
        2,
        "cannot be used with",
    );
    env.fails(&format!("{base} --scope tickets:read"), 2, "--agent");
    // An agent's token still needs its scope.
    env.fails(&format!("{base} --agent planner"), 2, "--scope");
    // Grant options bind a task: a command-line mistake, as a JSON refusal under --format json.
    for extra in [
        "--scope tickets:read",
        "--task t-1",
        "--task-ttl 1h",
        "--max-depth 1",
        "--aud spiffe://example.org/svc/x",
    ] {
        let (stdout, _) = env.fails(
            &format!("{base} --service web {extra} --format json"),
            2,
            "a service's token binds none",
        );
        let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(doc["error"]["code"], "usage", "{doc}");
    }
    // The CA service makes tokens for agents only: a service's token is the operator's.
    let (stdout, _) = env.fails(
        &format!(
            "token create --ca-url {url} --cred platform --enroll-url {eurl} --service web --out t.json --format json"
        ),
        2,
        "made by the operator (--ca DIR)",
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["error"]["code"], "usage", "{doc}");
    // A malformed service name is the command line's.
    env.fails(&format!("{base} --service Bad/Name"), 2, "bad --service");
    // A service whose rule does not list `bootstrap` gets no token (status 1, the rule named).
    env.fails(
        &format!("{base} --service weak"),
        1,
        "services.weak.requesters",
    );
    // And the reserved name of the CA service itself, never.
    env.fails(
        &format!("{base} --service agentid-ca"),
        1,
        "services.agentid-ca",
    );
    assert!(
        !env.path("t.json").exists(),
        "no refusal writes a token file"
    );
}

#[test]
fn an_out_dir_that_cannot_hold_the_credential_is_refused_before_the_token_is_spent() {
    let env = Env::new();
    let s = serve(&env);
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t.json",
        s.enroll_url()
    ));
    // A typo'd --out-dir under a regular file: no directory can be made there.
    std::fs::write(env.path("notes.txt"), b"not a directory\n").unwrap();
    let before = issued(&env);
    env.fails(
        "enroll --token-file t.json --out-dir notes.txt/a",
        1,
        "notes.txt",
    );
    assert_eq!(
        issued(&env),
        before,
        "nothing issued for a credential that could not be written"
    );
    // The single-use token was never spent: the corrected command enrolls.
    env.json("enroll --token-file t.json --out-dir a");
    assert_eq!(issued(&env), before + 1);
    env.ok("cert verify a/cert.pem --bundle example.org=a/bundle.json");
}

#[test]
fn task_open_and_child_refuse_an_out_dir_they_cannot_write_before_asking_the_ca() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    std::fs::write(env.path("notes.txt"), b"not a directory\n").unwrap();
    agent_csr(
        &env,
        "p",
        &["spiffe://example.org/agent/planner/task/t-out-1"],
    );
    let before = issued(&env);
    env.fails(
        &format!(
            "task open --ca-url {url} --cred platform --csr p/req.csr --agent planner --task t-out-1 --scope tickets:read --max-depth 1 --out-dir notes.txt/p"
        ),
        1,
        "notes.txt",
    );
    assert_eq!(
        issued(&env),
        before,
        "a task opened whose certificate went nowhere"
    );
    // The same request, to a directory that can hold it, opens the task.
    env.json(&format!(
        "task open --ca-url {url} --cred platform --csr p/req.csr --agent planner --task t-out-1 --scope tickets:read --max-depth 1 --out-dir p"
    ));
    std::fs::copy(env.path("platform/bundle.json"), env.path("p/bundle.json")).unwrap();
    agent_csr(&env, "c", &[]);
    let before = issued(&env);
    env.fails(
        &format!(
            "task child --ca-url {url} --cred p --csr c/req.csr --agent summarizer --ttl 1m --out-dir notes.txt/c"
        ),
        1,
        "notes.txt",
    );
    assert_eq!(
        issued(&env),
        before,
        "a child issued whose certificate went nowhere"
    );
}

/// Replaces `ca/grant.key` with a new key (a rotation after a suspected theft).
fn replace_grant_key(env: &Env) {
    let path = env.path("ca/grant.key");
    std::fs::remove_file(&path).unwrap();
    let key = agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&path, key.pkcs8_der()).unwrap();
}

/// CA-API 3.3 and 3.6.1: whoever answers as the CA (its online TLS key) can replay any genuine
/// older signed bundle, and an applier holding none took it, putting a rotated-out grant key
/// back for an agent that had just enrolled. The operator's token file carries the `seq` of the
/// CA's signed bundle (`bundle_seq`), and the enrolled agent's pinned bundle (`bundle.json`,
/// and its verification) starts there: an older document is refused `sequence_rollback`, the
/// current one is applied.
#[test]
fn an_agent_enrolled_after_a_rotation_refuses_the_signed_bundle_from_before_it() {
    use agentid_transport::enroll::{BundleApplied, BundleApplier, EnrollError};

    let env = Env::new();
    let before = env.read("ca/agentid-bundle.jws");
    replace_grant_key(&env);
    let signed = env.json("bundle sign --ca ca");
    let current = env.read("ca/agentid-bundle.jws");
    let s = serve(&env);
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t1.json",
        s.enroll_url()
    ));
    let file: serde_json::Value = serde_json::from_str(&env.read("t1.json")).unwrap();
    assert_eq!(file["bundle_seq"], signed["seq"]);
    env.ok("enroll --token-file t1.json --out-dir a1");

    // A fresh applier over the enrolled agent's pinned bundle, as a watcher starts.
    let td = agentid_protocol::TrustDomain::parse("example.org").unwrap();
    let pinned =
        agentid_protocol::TrustBundle::parse(&td, env.read("a1/bundle.json").as_bytes()).unwrap();
    let mut set = agentid_protocol::BundleSet::new();
    set.insert(pinned).unwrap();
    let own = agentid_protocol::SpiffeId::parse(file["identity"].as_str().unwrap()).unwrap();
    let v = agentid_transport::PeerVerification::new(
        agentid_protocol::VerifierConfig::new(own, set)
            .danger_accept_missing_or_stale_revocations(),
    )
    .unwrap();
    let signing = agentid_ca::agentid_bundle::public_key(&env.path("ca")).unwrap();
    let applier = BundleApplier::new(v.clone(), signing, td);
    let e = applier.apply(&before, now()).unwrap_err();
    assert!(
        matches!(&e, EnrollError::Transport(agentid_transport::Error::Protocol(p))
            if p.code() == agentid_protocol::ErrorCode::SequenceRollback),
        "{e}"
    );
    assert_eq!(
        applier.apply(&current, now()).unwrap(),
        BundleApplied::Applied
    );
}

/// Whoever can write the CA's store (a PostgreSQL account, `ca.db`) reaching the operator's
/// terminal through `ca list`: a task's holder was printed as stored, terminal escapes and
/// line breaks included (able to clear the screen and print a forged list).
#[test]
fn ca_list_never_prints_control_characters_from_the_store() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    env.ok(&format!(
        "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out t.json",
        s.enroll_url()
    ));
    let holder = env.json("enroll --token-file t.json --out-dir a")["identity"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = format!("{holder}\u{1b}[2J\nspiffe://example.org/agent/forged/task/x until never");
    let db = rusqlite::Connection::open(env.path("ca/ca.db")).unwrap();
    db.execute(
        "UPDATE identities SET identity = ?1 WHERE identity = ?2",
        rusqlite::params![forged, holder],
    )
    .unwrap();
    db.execute(
        "UPDATE tasks SET holder = ?1 WHERE holder = ?2",
        rusqlite::params![forged, holder],
    )
    .unwrap();
    drop(db);
    let text = env.ok(&format!("ca list --ca-url {url} --cred platform"));
    assert!(text.contains(&holder), "the entry is still shown: {text}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("spiffe://example.org/agent/forged")),
        "{text}"
    );
    // JSON escapes it as JSON does.
    let v = env.json(&format!("ca list --ca-url {url} --cred platform"));
    assert_eq!(v["tasks"][0]["holder"], forged.as_str());
}

/// `enroll` into a directory that already holds a key (a second token into an agent's
/// directory) is refused before the token is sent, and says what to do: another `--out-dir`,
/// the token being unspent. It then redeems there.
#[test]
fn enroll_over_a_key_names_the_next_step_and_keeps_the_token() {
    let env = Env::new();
    let s = serve(&env);
    for t in ["t1.json", "t2.json"] {
        env.ok(&format!(
            "token create --ca ca --enroll-url {} --agent planner --scope tickets:read --out {t}",
            s.enroll_url()
        ));
    }
    env.json("enroll --token-file t1.json --out-dir a1");
    let key = env.read("a1/key.pem");
    let before = issued(&env);
    let (_, line) = env.fails(
        "enroll --token-file t2.json --out-dir a1",
        1,
        "refusing to overwrite a key",
    );
    assert!(line.contains("another --out-dir"), "{line}");
    assert!(line.contains("not spent"), "{line}");
    assert_eq!(issued(&env), before);
    assert_eq!(env.read("a1/key.pem"), key);
    env.json("enroll --token-file t2.json --out-dir a2");
    assert_eq!(issued(&env), before + 1);
}

/// `GET /v1/tasks` answers one page of at most 1000 tasks, with `next` when more may follow
/// (CA-API 3.11). `ca list` printed the first page alone, in text without a word of the rest,
/// and had no way to ask for the next one: an operator listing an agent's tasks to revoke them
/// (an incident) saw 1000 and took them for all. The text says that more follow and how to ask
/// for them, and `--after` pages on.
#[test]
fn ca_list_says_when_more_tasks_follow_and_pages_on_with_after() {
    let env = Env::new();
    let s = serve(&env);
    let url = s.url();
    let ca = agentid_ca::CertificateAuthority::open(&env.path("ca")).unwrap();
    for _ in 0..1001 {
        let key = agentid_protocol::TaskKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
        let req = agentid_ca::OpenTaskRequest::new(
            "planner",
            agentid_ca::KeySource::Spki(key.public_key().to_spki_der()),
            agentid_ca::TaskRequester::Operator,
            agentid_protocol::Scope::parse("tickets:read").unwrap(),
        );
        ca.open_task(&req, SystemTime::now()).unwrap();
    }
    drop(ca);
    let first = env.json(&format!("ca list --ca-url {url} --cred platform"));
    let tasks = first["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1000, "one page");
    let next = first["next"].as_str().unwrap().to_owned();
    let text = env.ok(&format!("ca list --ca-url {url} --cred platform"));
    assert!(
        text.contains(&format!("--after {next}")),
        "the text says nothing of the tasks after the first page: {}",
        text.lines().last().unwrap_or_default()
    );
    let second = env.json(&format!(
        "ca list --ca-url {url} --cred platform --after {next}"
    ));
    let rest = second["tasks"].as_array().unwrap();
    assert_eq!(rest.len(), 1, "{second}");
    assert!(
        !tasks.iter().any(|t| t["task"] == rest[0]["task"]),
        "the second page repeats the first"
    );
    // A value that is not a task id is the command line's mistake (status 2).
    env.fails(
        &format!("ca list --ca-url {url} --cred platform --after a/b"),
        2,
        "--after",
    );
}
