//! Exit statuses, command by command, as the CLI README states them: 2 when the command line is
//! wrong (including a malformed value), 3 when a verification ran and said "invalid" (whatever
//! was invalid), 1 for anything else. Every failure is one `agentid: ` line on stderr.
#![cfg(test)]

mod support;

use support::Env;

/// Unix seconds long after any certificate of these tests expired.
const LATE: &str = "2100-01-01T00:00:00Z";

#[test]
fn ca_init_exit_codes() {
    let env = Env::empty();
    env.fails(
        "ca init --trust-domain Example.ORG --dir x",
        2,
        "--trust-domain",
    );
    env.fails(
        "ca init --trust-domain spiffe://example.org --dir x",
        2,
        "drop the scheme",
    );
    env.fails("ca init --trust-domain example.org", 2, "--dir");
    env.ok("ca init --trust-domain example.org --dir ca");
    env.fails(
        "ca init --trust-domain example.org --dir ca",
        1,
        "already exists",
    );
}

#[test]
fn cert_issue_exit_codes() {
    let env = Env::new();
    // Malformed values: status 2.
    for (args, needle) in [
        ("--scope tickets:read --aud coder", "bad --aud \"coder\""),
        (
            "--scope tickets:read --may-delegate-to coder",
            "bad --may-delegate-to",
        ),
        ("--scope tickets:read --task bad/task", "bad --task"),
        ("--scope tickets:read --principal alice", "bad --principal"),
        ("--scope tickets:read --limit calls", "bad --limit"),
        ("--scope tickets:read --ttl 5", "needs a unit"),
        ("--scope bad^scope", "bad --scope"),
    ] {
        env.fails(
            &format!("cert issue --ca ca --agent planner {args} --out-dir o"),
            2,
            needle,
        );
    }
    env.fails(
        "cert issue --ca ca --agent Bad/Name --scope x --out-dir o",
        2,
        "bad --agent",
    );
    // Refused by the policy, or no CA: status 1.
    env.fails(
        "cert issue --ca ca --agent ghost --scope x --out-dir g",
        1,
        "ghost",
    );
    env.fails(
        "cert issue --ca nope --agent planner --scope x --out-dir g",
        1,
        "ca init",
    );
}

#[test]
fn cert_renew_sign_and_inspect_exit_codes() {
    let env = Env::new();
    env.planner("p");
    env.fails("cert renew --ca ca --dir p --ttl 5", 2, "needs a unit");
    env.fails("cert renew --ca ca --dir p --ttl 1h", 1, "policy");
    env.fails("cert renew --ca ca --dir absent", 1, "absent");
    env.fails(
        "cert sign --ca ca --csr x.csr --agent planner --task a/b --scope tickets:read",
        2,
        "bad --task",
    );
    env.fails(
        "cert sign --ca ca --csr x.csr --agent planner --scope tickets:read",
        1,
        "x.csr",
    );
    env.fails("cert inspect", 2, "FILE");
    env.fails("cert inspect ca/config.toml", 1, "config.toml");
}

#[test]
fn cert_verify_exit_codes() {
    let env = Env::new();
    env.planner("p");
    env.ok("cert verify p/cert.pem --bundle example.org=p/bundle.pem");
    env.fails(
        "cert verify p/cert.pem --bundle example.org=p/bundle.pem --at yesterday",
        2,
        "--at",
    );
    // Expired is "invalid" (3), with the date and the command that fixes it.
    let (_, line) = env.fails(
        &format!("cert verify p/cert.pem --bundle example.org=p/bundle.pem --at {LATE}"),
        3,
        "expired at ",
    );
    assert!(line.contains("agentid cert renew"), "{line}");
    env.fails(
        "cert verify p/cert.pem --bundle example.org=absent.pem",
        1,
        "absent.pem",
    );
}

#[test]
fn delegate_exit_codes() {
    let env = Env::new();
    env.planner("p");
    env.child("p", "c");
    let base =
        "delegate --chain p/grant.jwt --key p/key.pem --to-cert c/cert.pem --bundle p/bundle.json";
    env.fails(&format!("{base} --scope bad^scope"), 2, "bad --scope");
    env.fails(
        &format!("{base} --scope tickets:read --aud nope"),
        2,
        "bad --aud",
    );
    env.fails(&format!("{base} --scope tickets:read --ttl 0s"), 2, "--ttl");
    env.fails(
        "delegate --chain p/grant.jwt --key absent.pem --to-cert c/cert.pem --bundle p/bundle.json --scope tickets:read",
        1,
        "absent.pem",
    );
}

#[test]
fn chain_verify_exit_codes() {
    let env = Env::new();
    env.planner("p");
    env.ok("revocations export --ca ca --out rev.jwt");
    let base = "chain verify p/grant.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem";
    env.ok(&format!("{base} --revocations rev.jwt"));
    // The command line: status 2, never a verdict.
    env.fails(&format!("{base} --skew 500"), 2, "--skew");
    env.fails(&format!("{base} --verifier nope"), 2, "bad --verifier");
    env.fails(&format!("{base} --authority Bad.ORG"), 2, "bad --authority");
    env.fails(&format!("{base} --scope a^b"), 2, "bad --scope");
    let line = format!("{base} --revocations rev.jwt --enforce-limit");
    let mut args: Vec<&str> = line.split_whitespace().collect();
    args.push("BAD NAME");
    env.fails_args(&args, 2, "bad --enforce-limit");
    // Invalid, whatever was invalid: the chain (3) or the peer certificate (3).
    env.fails(base, 3, "revocation_missing");
    env.fails(
        &format!("{base} --revocations rev.jwt --at {LATE}"),
        3,
        "peer certificate invalid: expired at",
    );
    // Anything else: 1.
    env.fails(
        "chain verify absent.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem",
        1,
        "absent.jwt",
    );
}

/// Rule C2: the verifier's own trust domain's bundle loads first, so a partner's bundle that
/// repeats one of its grant or revocation keys is the one refused, whichever order the command
/// line names them in (the verdict was the same both ways; the message blamed the own bundle
/// when the partner came first).
#[test]
fn a_partner_bundle_repeating_an_own_key_is_the_one_refused_in_either_order() {
    let env = Env::new();
    env.planner("p");
    env.ok("revocations export --ca ca --out rev.jwt");
    let base = "chain verify p/grant.jwt --peer-cert p/cert.pem --revocations rev.jwt";
    for bundles in [
        "--bundle partner.example=p/bundle.json --bundle example.org=p/bundle.json",
        "--bundle example.org=p/bundle.json --bundle partner.example=p/bundle.json",
    ] {
        let (_, msg) = env.fails(&format!("{base} {bundles}"), 3, "bad_bundle");
        assert!(
            msg.contains("the bundle of partner.example lists key"),
            "{bundles}: {msg}"
        );
    }
}

/// Rule C2 for `cert verify --revocations` too (the one loading of bundles `chain verify` has):
/// a partner's bundle repeating one of the certificate's own domain's keys is the one refused,
/// whichever order the command line names them in; the message blamed the own bundle when the
/// partner came first.
#[test]
fn cert_verify_refuses_the_partner_bundle_repeating_an_own_key_in_either_order() {
    let env = Env::new();
    env.planner("p");
    env.ok("revocations export --ca ca --out rev.jwt");
    let base = "cert verify p/cert.pem --revocations rev.jwt";
    for bundles in [
        "--bundle partner.example=p/bundle.json --bundle example.org=p/bundle.json",
        "--bundle example.org=p/bundle.json --bundle partner.example=p/bundle.json",
    ] {
        let (out, msg) = env.fails(&format!("{base} {bundles}"), 3, "");
        let shown = format!("{out}{msg}");
        assert!(
            shown.contains("the bundle of partner.example lists key"),
            "{bundles}: {shown}"
        );
    }
}

#[test]
fn revoke_revocations_and_bundle_exit_codes() {
    let env = Env::new();
    let p = env.planner("p");
    env.fails("revoke --ca ca --serial zz", 2, "bad --serial");
    env.fails("revoke --ca ca --jkt !", 2, "bad --jkt");
    env.fails("revoke --ca ca --task a/b", 2, "bad --task");
    env.fails("revoke --ca ca", 2, "--serial");
    env.fails("revoke --ca ca --serial 0102", 1, "unknown serial");
    env.ok(&format!(
        "revoke --ca ca --task {}",
        p["task"].as_str().unwrap()
    ));
    env.fails("revocations export --ca ca --format yaml", 2, "yaml");
    env.fails("revocations export --ca p", 1, "not a CA directory");
    env.fails("bundle export --ca ca --format yaml", 2, "yaml");
    env.fails("bundle export --ca p", 1, "not a CA directory");
    env.fails("audit verify --ca p", 1, "agentid ca init");
}

#[test]
fn network_commands_exit_codes() {
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
        "ca list --ca-url http://127.0.0.1:1 --cred p".to_owned(),
        "revocations list --ca-url 127.0.0.1:1 --cred p".to_owned(),
        "cert renew --ca-url https://127.0.0.1 --dir p".to_owned(),
        format!("task open --ca-url {url} --cred p --csr x.csr --agent planner --scope tickets:read --task a/b --out-dir t"),
        format!("token create --ca ca --enroll-url {url} --agent planner --scope tickets:read --expires-in 5 --out t.json"),
        "ca serve --ca ca --listen nowhere".to_owned(),
    ] {
        env.fails(&line, 2, "");
    }
    env.fails(&format!("ca list --ca-url {url} --cred p"), 1, "");
    env.fails(&format!("revocations list --ca-url {url} --cred p"), 1, "");
    env.fails(
        "enroll --token-file absent.json --out-dir e",
        1,
        "absent.json",
    );
    env.fails(
        "ca serve --ca p --listen 127.0.0.1:0",
        1,
        "not a CA directory",
    );
    env.fails(
        &format!("token create --ca p --enroll-url {url} --agent planner --scope tickets:read --out t.json"),
        1,
        "not a CA directory",
    );
}

#[test]
fn renew_with_a_ca_directory_refuses_daemon_and_exec_instead_of_renewing_once() {
    let env = Env::new();
    env.planner("p");
    let cert = env.read("p/cert.pem");
    // --daemon and --exec need --ca-url: with --ca DIR they must not be dropped silently
    // (a service manager would see one renewal and a clean exit, then the certificate expire).
    for line in [
        "cert renew --ca ca --dir p --daemon",
        "cert renew --ca ca --dir p --daemon --exec true",
        "cert renew --ca ca --dir p --exec true",
    ] {
        env.fails(line, 2, "--ca");
        assert_eq!(env.read("p/cert.pem"), cert, "{line} renewed");
    }
}

/// A flag that does not apply to the command as given is refused (status 2, naming it), never
/// dropped without a word: clap does not check a flag's `requires` once a conflicting argument
/// is chosen, so each of these was ignored and the command ran without it.
#[test]
fn flags_that_do_not_apply_are_refused_not_ignored() {
    let env = Env::new();
    env.planner("p");
    let url = "https://127.0.0.1:1";
    for (line, names) in [
        ("revoke --ca ca --agent planner --cred p".to_owned(), "--cred"),
        ("revoke --ca ca --task t1 --iss spiffe://example.org/agent/planner/task/t1".to_owned(), "--iss"),
        (
            format!("token create --ca ca --cred p --enroll-url {url} --agent planner --scope tickets:read --out t.json"),
            "--cred",
        ),
        ("cert issue --ca ca --service search --parent p --out-dir s".to_owned(), "--parent"),
        // A value the store cannot hold is the command line's error, not the store's.
        ("audit export --ca ca --since 18446744073709551615".to_owned(), "--since"),
    ] {
        env.fails(&line, 2, names);
    }
    // Nothing was revoked, made or issued on the way: planner still gets a task.
    assert!(!env.path("t.json").exists());
    assert!(!env.path("s").exists());
    env.ok("cert issue --ca ca --agent planner --scope tickets:read --out-dir q");
}
