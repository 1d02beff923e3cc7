//! What a user meets: a private CA directory, output directories that hold nothing of a
//! refused request, `--force` where replacing makes sense, commands that say what they wrote,
//! refusals that say why and what next (the same message in JSON), usage for a bare command.
#![cfg(test)]

mod support;

use serde_json::Value;
use support::{mode, Env};

#[test]
fn the_ca_directory_and_everything_in_it_are_private() {
    let env = Env::new();
    assert_eq!(mode(&env.path("ca")), 0o700);
    // Issuing, revoking and publishing add files (the database's journal among them).
    let p = env.planner("p");
    env.ok(&format!(
        "revoke --ca ca --task {}",
        p["task"].as_str().unwrap()
    ));
    env.ok("revocations export --ca ca --out rev.jwt");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(env.path("ca")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(mode(&entry.path()), 0o600, "ca/{name}");
        names.push(name);
    }
    assert!(names.iter().any(|n| n == "ca.db"), "{names:?}");

    // An existing directory, open to others, is made private before anything goes in it.
    std::fs::create_dir(env.path("shared")).unwrap();
    env.chmod("shared", 0o755);
    env.ok("ca init --trust-domain example.org --dir shared");
    assert_eq!(mode(&env.path("shared")), 0o700);
    assert_eq!(mode(&env.path("shared/ca.db")), 0o600);
    assert_eq!(mode(&env.path("shared/root.pem")), 0o600);
}

#[test]
fn out_dir_inside_the_ca_is_refused_and_refusals_leave_nothing_behind() {
    let env = Env::new();
    for out in ["ca", "ca/planner", "./ca/../ca/x/y"] {
        env.fails(
            &format!("cert issue --ca ca --agent planner --scope tickets:read --out-dir {out}"),
            2,
            "inside the CA directory",
        );
    }
    assert!(!env.path("ca/planner").exists() && !env.path("ca/key.pem").exists());
    // Refused by the policy: no key, no directory.
    env.fails(
        "cert issue --ca ca --agent ghost --scope x --out-dir g1",
        1,
        "ghost",
    );
    assert!(
        !env.path("g1").exists(),
        "an empty directory was left behind"
    );
    // An existing directory stays, without a key.
    std::fs::create_dir(env.path("g2")).unwrap();
    env.fails(
        "cert issue --ca ca --agent ghost --scope x --out-dir g2",
        1,
        "ghost",
    );
    assert_eq!(std::fs::read_dir(env.path("g2")).unwrap().count(), 0);
    // A CSR that is a key says so, and writes nothing.
    env.planner("p");
    let (_, line) = env.fails(
        "cert sign --ca ca --csr p/key.pem --agent planner --scope tickets:read --out-dir s",
        1,
        "a private key, not a CSR",
    );
    assert!(line.contains("openssl req"), "{line}");
    assert!(!env.path("s").exists());
}

#[test]
fn force_replaces_credentials_only_when_asked() {
    let env = Env::new();
    env.planner("p");
    env.child("p", "c");
    let key_before = env.read("c/key.pem");
    let (_, line) = env.fails(
        "cert issue --ca ca --agent summarizer --parent p --out-dir c",
        1,
        "refusing to overwrite a key",
    );
    assert!(line.contains("--force"), "{line}");
    assert_eq!(env.read("c/key.pem"), key_before);

    // delegate --out: writes, says so, and never replaces silently.
    let delegate = "delegate --chain p/grant.jwt --key p/key.pem --to-cert c/cert.pem \
                    --bundle p/bundle.json --scope tickets:read --out c/chain.jwt";
    let out = env.ok(delegate);
    assert!(out.starts_with("wrote c/chain.jwt: 1 link(s)"), "{out}");
    assert!(
        !out.contains('~'),
        "the chain is in the file, not on stdout: {out}"
    );
    env.fails(delegate, 1, "already exists: pass --force");
    env.ok(&format!("{delegate} --force"));

    // --force where the CA refuses (a child identity keeps its key): nothing is replaced.
    let (_, line) = env.fails(
        "cert issue --ca ca --agent summarizer --parent p --out-dir c --force",
        1,
        "is bound to key",
    );
    assert!(
        line.contains("a task identity keeps one key for its life: renew"),
        "the next step: {line}"
    );
    assert_eq!(env.read("c/key.pem"), key_before);
    assert!(env.path("c/chain.jwt").exists());
    assert!(!env.path("c/.key.pem.new").exists());

    // --force for a new task: a new key, certificate and grant; a chain of the old key goes.
    std::fs::copy(env.path("c/chain.jwt"), env.path("p/chain.jwt")).unwrap();
    let p_key = env.read("p/key.pem");
    let v = env.json("cert issue --ca ca --agent planner --scope tickets:read --out-dir p --force");
    assert_ne!(env.read("p/key.pem"), p_key);
    assert_eq!(mode(&env.path("p/key.pem")), 0o600);
    assert!(!env.path("p/chain.jwt").exists());
    assert!(!env.path("p/.key.pem.new").exists());
    assert_eq!(
        env.json("cert inspect p/cert.pem")["jkt"],
        v["jkt"],
        "the certificate is for the new key"
    );
    assert_eq!(
        support::claims(&env.read("p/grant.jwt"), 0)["sub"],
        v["identity"]
    );
}

/// Two commands writing the credentials of one directory at once (`cert issue --force`, `cert
/// renew`, `cert sign`) would leave a key of one run beside the certificate of the other: while one holds the directory, the other is refused
/// before it makes a key or asks the CA, and the directory is as it was.
#[test]
fn a_directory_being_written_by_another_command_is_refused_and_left_as_it_was() {
    let env = Env::new();
    env.planner("p");
    let (key, cert) = (env.read("p/key.pem"), env.read("p/cert.pem"));
    let issued = || {
        agentid_ca::CertificateAuthority::open(&env.path("ca"))
            .unwrap()
            .issuances()
            .unwrap()
            .len()
    };
    let before = issued();
    let held = std::fs::File::open(env.path("p")).unwrap();
    held.lock().unwrap();
    let mut lines = vec![
        "cert issue --ca ca --agent planner --scope tickets:read --out-dir p --force",
        "cert issue --ca ca --agent summarizer --parent p --out-dir p --force",
        // A renewal writes the old key's certificate: never beside a key being replaced.
        "cert renew --ca ca --dir p",
    ];
    if support::have_openssl() {
        support::openssl_csr(env.dir.path(), "req", &[]);
        lines.push(
            "cert sign --ca ca --csr req.csr --agent planner --scope tickets:read --out-dir p",
        );
    }
    for line in lines {
        let (_, msg) = env.fails(line, 1, "another agentid command is writing this directory");
        assert!(msg.contains("wait for it to finish"), "{msg}");
    }
    assert_eq!(env.read("p/key.pem"), key);
    assert_eq!(env.read("p/cert.pem"), cert);
    assert!(!env.path("p/.key.pem.new").exists());
    assert_eq!(
        issued(),
        before,
        "the CA issued for a directory it could not write"
    );
    drop(held);
    // Released (the other command ended): the same command replaces the set.
    env.ok("cert issue --ca ca --agent planner --scope tickets:read --out-dir p --force");
    assert_ne!(env.read("p/key.pem"), key);
    let replaced = env.read("p/cert.pem");
    env.ok("cert renew --ca ca --dir p");
    assert_ne!(env.read("p/cert.pem"), replaced);
    agentid::files::Holder::load(&env.path("p")).expect("key and certificate match");
}

/// `cert sign` writes `cert.pem` into `--out-dir` only beside the CSR's own key, as `task open`
/// does: an out-dir holding another key (a working credential directory named by mistake) is
/// refused before the CA issues anything, and its certificate stays the one its key matches.
#[test]
fn cert_sign_refuses_an_out_dir_holding_another_key_before_issuing() {
    if !support::have_openssl() {
        return;
    }
    let env = Env::new();
    env.planner("p");
    let cert = env.read("p/cert.pem");
    let issued = || {
        agentid_ca::CertificateAuthority::open(&env.path("ca"))
            .unwrap()
            .issuances()
            .unwrap()
            .len()
    };
    let before = issued();
    support::openssl_csr(env.dir.path(), "req", &[]);
    env.fails(
        "cert sign --ca ca --csr req.csr --agent planner --scope tickets:read --out-dir p",
        1,
        "holds another key than the CSR's",
    );
    assert_eq!(issued(), before, "nothing is issued");
    assert_eq!(env.read("p/cert.pem"), cert);
    agentid::files::Holder::load(&env.path("p")).expect("p/ still holds a matching pair");
}

#[test]
fn commands_that_write_files_say_what_they_wrote() {
    let env = Env::new();
    env.planner("p");
    let out = env.ok("revocations export --ca ca --out rev.jwt");
    assert!(
        out.starts_with("wrote revocation list seq ") && out.contains("to rev.jwt"),
        "{out}"
    );
    let v = env.json("revocations export --ca ca --out rev2.jwt");
    assert_eq!(v["out"], "rev2.jwt");
    assert!(v["seq"].as_u64().unwrap() > 0 && v["next_update"].as_u64().is_some());
    assert_eq!(v["list"].as_str().unwrap(), env.read("rev2.jwt").trim());
    // Without --out, text is the list itself (for pipes).
    assert_eq!(
        env.ok("revocations export --ca ca")
            .trim()
            .split('.')
            .count(),
        3
    );
    let out = env.ok("bundle export --ca ca --format pem --out root.pem");
    assert!(out.contains("to root.pem"), "{out}");
    let out = env.ok("cert renew --ca ca --dir p");
    assert!(out.contains("wrote:     p/cert.pem"), "{out}");
}

#[test]
fn inspect_shows_time_left_and_the_signature_algorithm_by_name() {
    for (key_type, alg) in [("p256", "ecdsa-with-SHA256"), ("ed25519", "Ed25519")] {
        let env = Env::with_key_type(key_type);
        env.planner("p");
        let v = env.json("cert inspect p/cert.pem");
        assert_eq!(v["signature_algorithm"], alg);
        assert_eq!(v["validity_status"], "valid");
        assert!(v["seconds_left"].as_i64().unwrap() > 0);
        let text = env.ok("cert inspect p/cert.pem");
        assert!(text.contains("(expires in "), "{text}");
        assert!(text.contains(&format!("Signature:      {alg}")), "{text}");
    }
}

#[test]
fn a_bare_command_prints_usage_with_the_command_list() {
    let env = Env::empty();
    for (args, listed) in [
        (vec![], "cert"),
        (vec!["cert"], "issue"),
        (vec!["revocations"], "export"),
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("Usage: agentid"), "{stderr}");
        assert!(
            stderr.contains("Commands:") && stderr.contains(listed),
            "{stderr}"
        );
    }
    // One hint, not two.
    let (_, line) = env.fails("cert issue --ca", 2, "--ca");
    assert_eq!(line.matches("--help").count(), 1, "{line}");
}

#[test]
fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let env = Env::empty();
    let out = env.run(&[
        "-vv",
        "ca",
        "init",
        "--trust-domain",
        "example.org",
        "--dir",
        "ca",
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.is_empty(), "-vv logs something");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn chain_refusals_say_why_and_what_next_in_text_and_json() {
    let env = Env::new();
    env.planner("p");
    let base = "chain verify p/grant.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem";
    let (_, line) = env.fails(&format!("{base} --format text"), 3, "revocation_missing");
    assert!(
        line.contains("pass --revocations FILE (see `agentid revocations export`)"),
        "{line}"
    );
    // The JSON report carries the same message as stderr.
    let out = env.run(&support_argv(base));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        format!("agentid: {}", report["message"].as_str().unwrap()),
        stderr.trim()
    );
    // Two scopes asked, one not granted: the message names the one.
    env.ok("revocations export --ca ca --out rev.jwt");
    let (_, line) = env.fails(
        &format!("{base} --revocations rev.jwt --scope tickets:read --scope tickets:close"),
        3,
        "scope_not_granted",
    );
    assert!(
        line.contains("scope `tickets:close` not granted by the chain (it grants `tickets:read tickets:comment`)"),
        "{line}"
    );
    // Expiry: the date and what to do.
    let (_, line) = env.fails(
        &format!(
            "{base} --revocations rev.jwt --at +30d --danger-unverified-peer-cert --danger-no-revocation"
        ),
        3,
        "expired at token 0",
    );
    assert!(
        line.contains("it expired at 20") && line.contains("ago"),
        "{line}"
    );
    // A wildcard request reads the right way round.
    let (_, line) = env.fails(
        &format!("{base} --revocations rev.jwt --scope tickets:*"),
        3,
        "bad_scope",
    );
    assert!(line.contains("may not contain `*`"), "{line}");
}

fn support_argv(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn policy_refusals_cite_the_rule_used_with_durations_as_written() {
    let env = Env::new();
    // auditor sets no max_ttl: [defaults] decided.
    let (_, line) = env.fails(
        "cert issue --ca ca --agent auditor --scope tickets:read --ttl 1h --out-dir a",
        1,
        "certificate TTL 1h exceeds the maximum of 15m",
    );
    assert!(line.contains("(rule defaults.max_ttl)"), "{line}");
    assert!(line.contains("agents.auditor sets no max_ttl"), "{line}");
    // planner sets its own; renewal says it the same way.
    env.planner("p");
    let (_, issue) = env.fails(
        "cert issue --ca ca --agent planner --scope tickets:read --ttl 1h --out-dir q",
        1,
        "(rule agents.planner.max_ttl)",
    );
    let (_, renew) = env.fails(
        "cert renew --ca ca --dir p --ttl 1h",
        1,
        "(rule agents.planner.max_ttl)",
    );
    assert_eq!(issue, renew);
}

#[test]
fn revoking_an_unknown_agent_name_needs_force() {
    let env = Env::new();
    let (_, line) = env.fails(
        "revoke --ca ca --agent codr",
        1,
        "no policy rule names agent \"codr\"",
    );
    assert!(line.contains("--force"), "{line}");
    env.ok("revoke --ca ca --agent codr --force");
    // A name the policy knows needs nothing more.
    let out = env.ok("revoke --ca ca --agent auditor");
    // How the entry reaches verifiers: a CA service on this directory publishes it by itself
    // (its publisher polls the store); without one, the operator exports a list.
    assert!(
        out.contains("a running `agentid ca serve` on this CA publishes it"),
        "{out}"
    );
    assert!(out.contains("run `agentid revocations export`"), "{out}");
    // The entry leaves the lists at its exp; the CA refuses the name for good (CA-API.md 3.4).
    assert!(out.contains("; this CA refuses it for good)"), "{out}");
}

#[test]
fn wrong_ca_directories_and_input_hints() {
    let env = Env::new();
    env.planner("p");
    std::fs::create_dir(env.path("empty")).unwrap();
    for dir in ["p", "empty"] {
        env.fails(
            &format!("cert issue --ca {dir} --agent planner --scope tickets:read --out-dir z"),
            1,
            "not a CA directory (no config.toml): run `agentid ca init`",
        );
    }
    env.fails(
        "bundle export --ca nowhere",
        1,
        "no such CA directory: run `agentid ca init",
    );
    env.fails(
        "cert issue --ca ca --agent planner --scope x --ttl -5m",
        2,
        "did you mean 5m?",
    );
    // --at takes a date and a duration from now.
    env.ok("cert verify p/cert.pem --bundle example.org=p/bundle.pem --at +1m");
    env.fails(
        "cert verify p/cert.pem --bundle example.org=p/bundle.pem --at 2030-01-01",
        3,
        "expired at",
    );
}

#[test]
fn force_keeps_the_old_key_when_the_new_certificate_cannot_be_written() {
    let env = Env::new();
    env.planner("p");
    // `p/cert.pem` is a link (to where a web server reads it, say): the CLI never writes
    // through a link, so a new certificate cannot land there.
    std::fs::rename(env.path("p/cert.pem"), env.path("served-cert.pem")).unwrap();
    std::os::unix::fs::symlink(env.path("served-cert.pem"), env.path("p/cert.pem")).unwrap();
    let key_before = env.read("p/key.pem");
    env.fails(
        "cert issue --ca ca --agent planner --scope tickets:read --out-dir p --force",
        1,
        "cert.pem",
    );
    // The working credential is untouched: the old key still matches the certificate.
    assert!(
        env.read("p/key.pem") == key_before,
        "the old key was replaced"
    );
    assert!(
        env.path("p/grant.jwt").exists(),
        "the old grant was removed"
    );
    agentid::files::Holder::load(&env.path("p")).expect("key and certificate still match");
}

#[test]
fn an_unreachable_ca_is_named_with_its_url_and_a_next_step() {
    let env = Env::new();
    env.planner("p");
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    for line in [
        format!("ca list --ca-url {url} --cred p"),
        format!("revocations list --ca-url {url} --cred p"),
        format!("revoke --ca-url {url} --cred p --agent planner"),
        format!("cert renew --ca-url {url} --dir p"),
    ] {
        let (_, msg) = env.fails(&line, 1, &url);
        assert!(
            msg.contains("agentid ca serve"),
            "{line}: no next step in {msg:?}"
        );
        // The same next step as the JSON hint.
        let out = env.run(
            &format!("{line} --format json")
                .split(' ')
                .collect::<Vec<_>>(),
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            doc["error"]["hint"]
                .as_str()
                .is_some_and(|h| h.contains("agentid ca serve")),
            "{line}: {doc}"
        );
    }
}

#[test]
fn a_malformed_policy_file_is_reported_as_such_not_as_a_refused_request() {
    let env = Env::new();
    // A missing comma: TOML fails at line 3.
    std::fs::write(
        env.path("ca/policy.toml"),
        "[agents.planner]\nscopes = [\"tickets:read\"\nrequesters = [\"operator\"]\n",
    )
    .unwrap();
    for args in [
        vec![
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "planner",
            "--scope",
            "tickets:read",
            "--format",
            "json",
        ],
        vec!["ca", "serve", "--ca", "ca", "--listen", "127.0.0.1:0"],
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("line 3"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("ca/policy.toml"),
            "{args:?}: names the file: {stderr}"
        );
        assert!(
            !stderr.contains("check the request"),
            "{args:?}: nothing was requested of the policy yet: {stderr}"
        );
        if let Ok(doc) = serde_json::from_slice::<Value>(&out.stdout) {
            assert_ne!(doc["error"]["code"], "policy_refused", "{args:?}: {doc}");
        }
    }
}

#[test]
fn token_create_refuses_an_out_it_cannot_write_before_making_a_token() {
    let env = Env::new();
    std::fs::write(
        env.path("ca/policy.toml"),
        "[agents.planner]\nscopes = [\"tickets:*\"]\nrequesters = [\"operator\", \"bootstrap\"]\n",
    )
    .unwrap();
    let tokens = || -> i64 {
        rusqlite::Connection::open(env.path("ca/ca.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM bootstrap_tokens", [], |r| r.get(0))
            .unwrap()
    };
    let base = "token create --ca ca --enroll-url https://127.0.0.1:8444 --agent planner --scope tickets:read";
    std::fs::write(env.path("taken.json"), b"{}\n").unwrap();
    let before = tokens();
    env.fails(&format!("{base} --out taken.json"), 1, "already exists");
    env.fails(&format!("{base} --out missing/t.json"), 1, "missing");
    assert_eq!(
        tokens(),
        before,
        "a token whose file was never written stays in the store, redeemable until it expires"
    );
}

/// `revocations export --out` into a directory that does not exist fails before the list is
/// made: every export stores and serves a list with a new `seq`, so a failed one must not use
/// one up; the error names the directory, not a temporary file.
#[test]
fn revocations_export_checks_out_before_making_a_list() {
    let env = Env::new();
    let first = env.json("revocations export --ca ca");
    let (_, err) = env.fails("revocations export --ca ca --out nodir/r.jwt", 1, "nodir");
    assert!(err.contains("no such directory"), "{err}");
    assert!(!err.contains(".tmp"), "names a temporary file: {err}");
    // The failed export stored no list (a `seq` also follows the clock: counted, not
    // compared).
    let lists = || -> i64 {
        rusqlite::Connection::open(env.path("ca/ca.db"))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM published_lists", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(lists(), 1, "the failed export made a list");
    let next = env.json("revocations export --ca ca");
    assert!(next["seq"].as_u64().unwrap() > first["seq"].as_u64().unwrap());
    assert_eq!(lists(), 2);
}

/// A `--ca-url` that reaches a plain-HTTP server (it answers the TLS ClientHello with text)
/// is named with a next step: it is not the HTTPS address of the CA service.
#[test]
fn a_ca_url_that_answers_in_plain_http_is_named_as_not_tls() {
    use std::io::{Read, Write};
    let env = Env::new();
    env.planner("p");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        // One connection: read what comes, answer as an HTTP server would, close.
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let (_, msg) = env.fails(&format!("ca list --ca-url {url} --cred p"), 1, &url);
    assert!(msg.contains("does not speak TLS"), "{msg}");
    server.join().unwrap();
}

#[test]
fn a_malformed_token_file_is_refused_without_showing_the_token() {
    let env = Env::new();
    let secret = "Zm9yZ2V0LW1lLW5vdC1hLXJlYWwtdG9rZW4";
    // The bare token as a JSON string (what `jq .token t.json > tok` writes), and a token
    // file whose other member holds a string where a number belongs.
    let files = [
        ("bare.json", format!("\"{secret}\"\n")),
        (
            "typed.json",
            format!(
                r#"{{"token":"x","ca_url":"https://127.0.0.1:1","root_sha256":"ab","identity":"spiffe://example.org/agent/a/task/t","agent":"a","task":"t","expires":"{secret}"}}"#
            ),
        ),
    ];
    for (name, text) in files {
        std::fs::write(env.path(name), text).unwrap();
        env.chmod(name, 0o600);
        let (_, stderr) = env.fails(
            &format!("enroll --token-file {name} --out-dir out"),
            1,
            "not a token file",
        );
        assert!(!stderr.contains(secret), "{name}: {stderr}");
        assert!(stderr.contains("line 1"), "{name}: {stderr}");
    }
}

/// Runs `agentid ARGS` in `env`, killed after 30 s: a read that blocks fails the test instead of
/// hanging it. `None` when it had to be killed.
fn run_bounded(env: &Env, line: &str) -> Option<std::process::Output> {
    assert_cmd::Command::cargo_bin("agentid")
        .unwrap()
        .current_dir(env.dir.path())
        .env_remove("AGENTID_LOG")
        .env_remove("RUST_LOG")
        .args(line.split_whitespace())
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .ok()
        .filter(|o| o.status.code().is_some())
}

/// A credential directory (or a directory above it, or one of its files) that group or others
/// can write is refused when a command reads it, naming what to `chmod`: whoever can write
/// there can put their own CA in `bundle.json` and be trusted.
#[test]
fn a_credential_directory_others_can_write_is_refused_on_read() {
    let env = Env::new();
    std::fs::create_dir(env.path("shared")).unwrap();
    env.chmod("shared", 0o755);
    env.planner("shared/p");
    // A dead URL: the directory is read before any connection.
    let dead = "https://127.0.0.1:1";
    let readers = [
        "cert renew --ca ca --dir shared/p".to_owned(),
        format!("revocations list --ca-url {dead} --cred shared/p"),
        "cert issue --ca ca --agent summarizer --parent shared/p --out-dir c".to_owned(),
    ];
    for (rel, mode) in [
        ("shared/p", 0o770),
        ("shared/p", 0o707),
        ("shared", 0o777),
        ("shared/p/bundle.json", 0o664),
        ("shared/p/cert.pem", 0o646),
        ("shared/p/grant.jwt", 0o666),
    ] {
        let before = mode_of(&env, rel);
        env.chmod(rel, mode);
        for line in &readers {
            // The operator's renewal reads the certificate and the key only, a child's issue
            // the parent's chain too, and a `--cred` every file.
            let reads = if rel.ends_with("bundle.json") {
                line.starts_with("revocations")
            } else if rel.ends_with("grant.jwt") {
                !line.starts_with("cert renew")
            } else {
                true
            };
            if !reads {
                continue;
            }
            let (_, msg) = env.fails(line, 1, &format!("chmod go-w {}", env.path(rel).display()));
            assert!(msg.contains(&format!("{mode:03o}")), "{line}: {msg}");
        }
        assert!(!env.path("c").exists(), "a child was issued from {rel}");
        env.chmod(rel, before);
    }
    // A token file below a directory others can write: they could swap in a token naming
    // their CA and root. Refused before it is parsed or anything is sent.
    std::fs::write(env.path("shared/t.json"), "{}").unwrap();
    env.chmod("shared/t.json", 0o600);
    env.chmod("shared", 0o777);
    env.fails(
        "enroll --token-file shared/t.json --out-dir e",
        1,
        &format!("chmod go-w {}", env.path("shared").display()),
    );
    assert!(!env.path("e").exists());
    env.chmod("shared", 0o755);
    // The same next step as the JSON hint.
    env.chmod("shared/p", 0o775);
    let out = env.run(&[
        "cert", "renew", "--ca", "ca", "--dir", "shared/p", "--format", "json",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["error"]["hint"].as_str(),
        Some(format!("run `chmod go-w {}`", env.path("shared/p").display()).as_str()),
        "{doc}"
    );
    env.chmod("shared/p", 0o700);
    // Held again: read as before.
    env.ok("cert renew --ca ca --dir shared/p");
    env.fails(
        &format!("revocations list --ca-url {dead} --cred shared/p"),
        1,
        dead,
    );
}

fn mode_of(env: &Env, rel: &str) -> u32 {
    mode(&env.path(rel))
}

/// A FIFO planted where a credential directory's `bundle.json` or `grant.jwt` should be is
/// refused at once: reading it would block the command for ever.
#[test]
fn a_fifo_in_a_credential_directory_is_refused_without_blocking() {
    let env = Env::new();
    env.planner("p");
    let dead = "https://127.0.0.1:1";
    for (file, line) in [
        (
            "bundle.json",
            format!("revocations list --ca-url {dead} --cred p"),
        ),
        (
            "grant.jwt",
            "cert issue --ca ca --agent summarizer --parent p --out-dir c".to_owned(),
        ),
    ] {
        let path = env.path(&format!("p/{file}"));
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let Some(out) = run_bounded(&env, &line) else {
            panic!("{line} blocked on a FIFO at {file} (killed after 30 s)");
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line}: {stderr}");
        assert!(
            stderr.contains(file) && stderr.contains("FIFO"),
            "{line}: {stderr}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, saved).unwrap();
    }
    assert!(!env.path("c").exists());
}

/// Root may read a service user's credential directory (its owner is trusted beside root), but
/// not one reached through a directory, or holding a file, that a third user owns. Only root
/// can give files away, so this runs only as root.
#[test]
fn root_reads_a_service_users_credential_directory_but_not_a_third_users_files() {
    use std::os::unix::fs::{chown, lchown};
    let env = Env::new();
    std::fs::create_dir(env.path("home")).unwrap();
    env.chmod("home", 0o755);
    env.planner("home/svc");
    if chown(env.path("home"), Some(65534), Some(65534)).is_err() {
        return;
    }
    for f in ["", "/cert.pem", "/key.pem", "/bundle.json", "/grant.jwt"] {
        chown(env.path(&format!("home/svc{f}")), Some(65534), Some(65534)).unwrap();
    }
    // The service user's own directory and files: root reads them.
    env.ok("cert renew --ca ca --dir home/svc");
    env.ok("cert issue --ca ca --agent summarizer --parent home/svc --out-dir c1");
    // A file a third user owns, or a link they own, in the service user's directory.
    chown(env.path("home/svc/grant.jwt"), Some(65533), Some(65533)).unwrap();
    let (_, msg) = env.fails(
        "cert issue --ca ca --agent summarizer --parent home/svc --out-dir c2",
        1,
        "uid 65533",
    );
    assert!(msg.contains("grant.jwt"), "{msg}");
    chown(env.path("home/svc/grant.jwt"), Some(65534), Some(65534)).unwrap();
    std::fs::rename(
        env.path("home/svc/cert.pem"),
        env.path("cert-elsewhere.pem"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        env.path("cert-elsewhere.pem"),
        env.path("home/svc/cert.pem"),
    )
    .unwrap();
    lchown(env.path("home/svc/cert.pem"), Some(65533), Some(65533)).unwrap();
    let (_, msg) = env.fails("cert renew --ca ca --dir home/svc", 1, "uid 65533");
    assert!(msg.contains("cert.pem"), "{msg}");
    lchown(env.path("home/svc/cert.pem"), Some(65534), Some(65534)).unwrap();
    // Read through: the dead URL is what fails.
    let dead = "https://127.0.0.1:1";
    env.fails(
        &format!("revocations list --ca-url {dead} --cred home/svc"),
        1,
        dead,
    );
    // A directory above it that a third user owns: they could swap the service's directory.
    chown(env.path("home"), Some(65533), Some(65533)).unwrap();
    let (_, msg) = env.fails("cert renew --ca ca --dir home/svc", 1, "uid 65533");
    assert!(
        msg.contains(&env.path("home").display().to_string()),
        "{msg}"
    );
    assert!(!env.path("c2").exists());
}

/// A token naming a task id that another agent's token (or task) holds is refused with the
/// next step: another `--task`, or none (a new id is made). The same in JSON as `hint`.
#[test]
fn a_task_id_another_agent_holds_names_the_next_step() {
    let env = Env::new();
    std::fs::write(
        env.path("ca/policy.toml"),
        "[agents.planner]\nscopes = [\"tickets:*\"]\nrequesters = [\"operator\", \"bootstrap\"]\n\n\
         [agents.auditor]\nscopes = [\"tickets:read\"]\nrequesters = [\"operator\", \"bootstrap\"]\n",
    )
    .unwrap();
    let base = "token create --ca ca --enroll-url https://127.0.0.1:8444 --scope tickets:read --task t-shared";
    env.ok(&format!("{base} --agent planner --out a.token"));
    let (_, line) = env.fails(
        &format!("{base} --agent auditor --out b.token"),
        1,
        "belongs to another agent",
    );
    assert!(line.contains("choose another task id"), "{line}");
    let out = env.run(&argv_of(&format!(
        "{base} --agent auditor --out c.token --format json"
    )));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("choose another task id")),
        "{doc}"
    );
    assert!(!env.path("b.token").exists() && !env.path("c.token").exists());
}

fn argv_of(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A token file the enrolling user cannot read (root made it, mode 0600, and handed it to a
/// service user without `chown`) is named with the next step, not only "Permission denied".
/// As root the command runs as uid 65534 (setpriv); otherwise the file is made mode 000.
#[test]
fn a_token_file_the_user_cannot_read_says_whom_to_give_it_to() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::empty();
    let token = env.path("t.token");
    std::fs::write(&token, b"{}\n").unwrap();
    let out = if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(env.dir.path(), Some(65534), Some(65534)).unwrap();
        let bin = assert_cmd::cargo::cargo_bin("agentid");
        match std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin)
            .args(["enroll", "--token-file", "t.token", "--out-dir", "a"])
            .current_dir(env.dir.path())
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("SKIP: setpriv not available: {e}");
                return;
            }
        }
    } else {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o000)).unwrap();
        env.run(&["enroll", "--token-file", "t.token", "--out-dir", "a"])
    };
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("t.token"), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    assert!(err.contains("chown"), "{err}");
    assert!(!env.path("a").exists());
}

/// A trust or key file named on the command line, outside a credential directory, is read only
/// if the reader holds it, as a credential directory's files are: a `--bundle` (the trust
/// anchors a verdict or a delegation rests on), `delegate --key`, and the CA directory itself
/// (its policy, configuration, certificates and keys). Whoever can write such a file, or a
/// directory above it, could make the command trust their CA, sign with their key, or issue
/// under their policy. The refusal names the entry and the `chmod` to run.
#[test]
fn trust_and_key_files_others_can_write_are_refused_on_read() {
    let env = Env::new();
    env.planner("p");
    env.child("p", "c");
    std::fs::create_dir(env.path("shared")).unwrap();
    env.chmod("shared", 0o755);
    for f in ["bundle.json", "bundle.pem", "key.pem"] {
        std::fs::copy(
            env.path(&format!("p/{f}")),
            env.path(&format!("shared/{f}")),
        )
        .unwrap();
    }
    env.chmod("shared/key.pem", 0o600);
    env.ok("revocations export --ca ca --out rev.jwt");
    let delegate = "delegate --chain p/grant.jwt --to-cert c/cert.pem --scope tickets:read";
    let readers = [
        (
            "shared/bundle.pem",
            "cert verify c/cert.pem --bundle example.org=shared/bundle.pem".to_owned(),
        ),
        (
            "shared/bundle.json",
            "chain verify p/grant.jwt --bundle example.org=shared/bundle.json --peer-cert p/cert.pem --revocations rev.jwt".to_owned(),
        ),
        (
            "shared/bundle.json",
            format!("{delegate} --key p/key.pem --bundle shared/bundle.json"),
        ),
        (
            "shared/key.pem",
            format!("{delegate} --key shared/key.pem --bundle p/bundle.json"),
        ),
    ];
    for (file, line) in &readers {
        // Held: read as before.
        env.ok(line);
        for (rel, mode) in [("shared", 0o777), (*file, 0o666), (*file, 0o620)] {
            // A key that others can read is refused anyway; one they can write is not held.
            let before = mode_of(&env, rel);
            env.chmod(rel, mode);
            let (_, msg) = env.fails(line, 1, &format!("chmod go-w {}", env.path(rel).display()));
            assert!(msg.contains(&format!("{mode:03o}")), "{line}: {msg}");
            assert!(
                msg.contains(&format!("on the way to {file}")),
                "{line}: {msg}"
            );
            env.chmod(rel, before);
        }
        env.ok(line);
    }
    // The CA directory: its files decide what is issued, to whom, under which key.
    let issue = "cert issue --ca ca --agent auditor --scope tickets:read --out-dir x";
    for (rel, mode) in [
        ("ca", 0o777),
        ("ca/policy.toml", 0o666),
        ("ca/config.toml", 0o646),
        ("ca/root.pem", 0o664),
        ("ca/intermediate.pem", 0o666),
        ("ca/intermediate.key", 0o620),
        ("ca/grant.key", 0o602),
    ] {
        let before = mode_of(&env, rel);
        env.chmod(rel, mode);
        let (_, msg) = env.fails(issue, 1, &format!("chmod go-w {}", env.path(rel).display()));
        assert!(msg.contains(&format!("{mode:03o}")), "{rel}: {msg}");
        assert!(!env.path("x").exists(), "issued with {rel} at {mode:03o}");
        // The same next step as the JSON hint.
        let out = env.run(&[
            "cert",
            "issue",
            "--ca",
            "ca",
            "--agent",
            "auditor",
            "--scope",
            "tickets:read",
            "--out-dir",
            "x",
            "--format",
            "json",
        ]);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let hint = doc["error"]["hint"].as_str().unwrap_or_default();
        assert!(
            hint.starts_with(&format!("run `chmod go-w {}`", env.path(rel).display())),
            "{rel}: {doc}"
        );
        env.chmod(rel, before);
    }
    env.ok(issue);
}

/// A revocation list (`--revocations FILE` of `cert verify` and `chain verify`) is trust input,
/// read only if held as a `--bundle` is: whoever could write it, or a directory on the way to
/// it, could put back an older list, genuinely signed, and hide every revocation made since
/// until that list's `next_update`. The refusal names the entry and the `chmod` or `chown` to
/// run; the verdict is never given.
#[test]
fn a_revocation_list_others_can_write_is_refused_on_read() {
    let env = Env::new();
    env.planner("p");
    std::fs::create_dir(env.path("shared")).unwrap();
    env.chmod("shared", 0o755);
    env.ok("revocations export --ca ca --out shared/rev.jwt");
    env.chmod("shared/rev.jwt", 0o644);
    let file = "shared/rev.jwt";
    let lines = [
        format!("cert verify p/cert.pem --bundle example.org=p/bundle.json --revocations {file}"),
        format!("chain verify p/grant.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem --revocations {file}"),
    ];
    for line in &lines {
        env.ok(line);
        for (rel, mode) in [("shared", 0o777), (file, 0o666), (file, 0o620)] {
            let before = mode_of(&env, rel);
            env.chmod(rel, mode);
            let (out, msg) = env.fails(line, 1, &format!("chmod go-w {}", env.path(rel).display()));
            assert!(msg.contains(&format!("{mode:03o}")), "{line}: {msg}");
            assert!(
                msg.contains(&format!("on the way to {file}")),
                "{line}: {msg}"
            );
            assert!(!out.contains("valid"), "{line}: a verdict was given: {out}");
            env.chmod(rel, before);
        }
        // Another user's list (only root can give a file away): not the reader's to trust.
        if std::os::unix::fs::chown(env.path(file), Some(65534), Some(65534)).is_ok() {
            env.fails(line, 1, "chown");
            std::os::unix::fs::chown(env.path(file), Some(0), Some(0)).unwrap();
        }
        env.ok(line);
    }
}

/// `delegate --to-cert FILE` names whom the holder hands its authority to: the certificate may
/// be another user's (the delegatee that was issued it hands it over), but one that others
/// could have replaced is refused before anything is signed. Whoever could put their own
/// certificate there (any valid one of the trust domain) would receive the delegation.
#[test]
fn a_delegatee_certificate_others_could_replace_is_refused() {
    let env = Env::new();
    env.planner("p");
    env.child("p", "c");
    std::fs::create_dir(env.path("shared")).unwrap();
    env.chmod("shared", 0o755);
    std::fs::copy(env.path("c/cert.pem"), env.path("shared/cert.pem")).unwrap();
    env.chmod("shared/cert.pem", 0o644);
    let line = "delegate --chain p/grant.jwt --key p/key.pem --to-cert shared/cert.pem --bundle p/bundle.json --scope tickets:read";
    env.ok(line);
    for (rel, mode) in [
        ("shared", 0o777),
        ("shared", 0o775),
        ("shared/cert.pem", 0o646),
    ] {
        let before = mode_of(&env, rel);
        env.chmod(rel, mode);
        let (out, msg) = env.fails(line, 1, &format!("chmod go-w {}", env.path(rel).display()));
        assert!(msg.contains(&format!("{mode:03o}")), "{msg}");
        assert!(msg.contains("on the way to shared/cert.pem"), "{msg}");
        assert!(out.is_empty(), "a chain was written: {out}");
        env.chmod(rel, before);
    }
    // Handed over by the delegatee's user (only root can give a file away): taken.
    if std::os::unix::fs::chown(env.path("shared/cert.pem"), Some(65534), Some(65534)).is_ok() {
        std::os::unix::fs::chown(env.path("shared"), Some(65533), Some(65533)).unwrap();
    }
    env.ok(line);
}
