//! `cert issue` (agent, child, service), `cert renew` and `cert sign` (OpenSSL CSR).
#![cfg(test)]

mod support;

use serde_json::{json, Value};
use support::{claims, have_openssl, mode, openssl, openssl_csr, Env};

#[test]
fn issue_agent_writes_the_task_files() {
    let env = Env::new();
    let v = env.json(
        "cert issue --ca ca --agent planner --task t1 --ttl 2m --scope tickets:read \
         --aud spiffe://example.org/svc/search --principal email:alice@example.com --max-depth 1 --out-dir out",
    );
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
    assert_eq!(bundle["keys"].as_array().unwrap().len(), 3);

    // The grant carries what was asked, bound to the certificate's key.
    let grant = env.read("out/grant.jwt");
    assert_eq!(grant.trim().split('.').count(), 3);
    let c = claims(&grant, 0);
    assert_eq!(c["sub"], v["identity"]);
    assert_eq!(c["task"], "t1");
    assert_eq!(c["scope"], "tickets:read");
    assert_eq!(c["aud"], json!(["spiffe://example.org/svc/search"]));
    assert_eq!(c["mode"], "on_behalf_of");
    assert_eq!(
        c["principal"],
        json!({"format": "email", "email": "alice@example.com"})
    );
    assert_eq!(c["max_depth"], 1);
    assert_eq!(env.json("cert inspect out/cert.pem")["jkt"], v["jkt"]);

    let text = env.ok("cert issue --ca ca --agent planner --scope tickets:read --out-dir out2");
    assert!(
        text.contains("identity:  spiffe://example.org/agent/planner/task/"),
        "{text}"
    );
    assert!(
        text.contains("grant:") && text.contains("out2/key.pem"),
        "{text}"
    );
    assert_eq!(claims(&env.read("out2/grant.jwt"), 0)["mode"], "autonomous");
}

#[test]
fn issue_generates_distinct_tasks_and_ed25519_keys() {
    let env = Env::new();
    let a = env.json("cert issue --ca ca --agent planner --scope tickets:read --out-dir a");
    let b = env.json(
        "cert issue --ca ca --agent planner --scope tickets:read --key-type ed25519 --out-dir b",
    );
    assert_ne!(a["task"], b["task"]);
    assert!(
        a["task"].as_str().unwrap().len() >= 26,
        "128 random bits in base32: {a}"
    );
    assert_eq!(env.json("cert inspect b/cert.pem")["key_type"], "Ed25519");
    assert_eq!(env.json("cert inspect a/cert.pem")["key_type"], "P-256");
    assert_eq!(
        claims(&env.read("b/grant.jwt"), 0)["cnf"]["jwk"]["crv"],
        "Ed25519"
    );
}

#[test]
fn issue_refusals_name_the_reason_and_leave_no_key() {
    let env = Env::new();
    let base = "cert issue --ca ca --agent planner --out-dir x";
    env.fails(
        &format!("{base} --scope payments:write"),
        1,
        "payments:write",
    );
    env.fails(
        &format!("{base} --scope tickets:read --ttl 1h"),
        1,
        "agents.planner.max_ttl",
    );
    env.fails(
        &format!("{base} --scope tickets:read --max-depth 7"),
        1,
        "max_depth",
    );
    env.fails(
        &format!("{base} --scope tickets:read --aud spiffe://other.org/svc/x"),
        1,
        "audience",
    );
    env.fails(
        &format!("{base} --scope tickets:read --principal carrier-pigeon:bob"),
        2,
        "--principal",
    );
    env.fails(
        &format!("{base} --scope tickets:read --task UPPER/case"),
        2,
        "--task",
    );
    env.fails(base, 2, "--scope");
    env.fails(
        "cert issue --ca ca --agent stranger --scope tickets:read --out-dir x",
        1,
        "stranger",
    );
    assert!(
        !env.path("x/key.pem").exists(),
        "a refused issuance leaves no key behind"
    );

    // A task identity keeps one key: the same task is not opened twice.
    env.ok("cert issue --ca ca --agent planner --task t1 --scope tickets:read --out-dir t1");
    env.fails(
        "cert issue --ca ca --agent planner --task t1 --scope tickets:read --out-dir t1b",
        1,
        "t1",
    );
    // A key is never overwritten.
    env.fails(
        "cert issue --ca ca --agent planner --scope tickets:read --out-dir t1",
        1,
        "refusing to overwrite a key",
    );
}

#[test]
fn issue_service_has_no_grant() {
    let env = Env::new();
    let v = env.json("cert issue --ca ca --service search --ttl 10m --out-dir svc");
    assert_eq!(v["identity"], "spiffe://example.org/svc/search");
    assert_eq!(v["grant"], Value::Null);
    assert_eq!(v["task"], Value::Null);
    assert!(!env.path("svc/grant.jwt").exists());
    assert_eq!(env.json("cert inspect svc/cert.pem")["kind"], "service");
    env.fails(
        "cert issue --ca ca --service search --scope tickets:read",
        2,
        "grant options",
    );
    env.fails(
        "cert issue --ca ca --service search --agent planner",
        2,
        "cannot be used with",
    );
    env.fails(
        "cert issue --ca ca --service unknown-svc --out-dir u",
        1,
        "unknown-svc",
    );
}

#[test]
fn issue_child_in_the_parents_task_never_outliving_its_chain() {
    let env = Env::new();
    let parent =
        env.json("cert issue --ca ca --agent planner --scope tickets:read --max-depth 1 --task-ttl 3m --out-dir p");
    let child = env.child("p", "c");
    let task = parent["task"].as_str().unwrap();
    assert_eq!(
        child["identity"].as_str().unwrap(),
        format!("spiffe://example.org/agent/summarizer/task/{task}")
    );
    assert_eq!(child["task"], parent["task"]);
    assert_eq!(child["grant"], Value::Null, "a child gets no grant");
    assert!(!env.path("c/grant.jwt").exists());
    assert!(child["not_after"].as_u64().unwrap() <= parent["grant"]["exp"].as_u64().unwrap());
    assert_eq!(mode(&env.path("c/key.pem")), 0o600);

    // More than the parent's chain is refused, not silently shortened.
    env.fails(
        "cert issue --ca ca --agent summarizer --parent p --ttl 10m --out-dir c2",
        1,
        "parent's chain",
    );
    env.fails(
        "cert issue --ca ca --agent summarizer --parent p --scope tickets:read",
        2,
        "grant options",
    );
    env.fails(
        "cert issue --ca ca --agent summarizer --parent p --task t9",
        2,
        "cannot be used with",
    );
    // The caller must hold the parent's key.
    env.planner("q");
    std::fs::remove_file(env.path("q/key.pem")).unwrap();
    std::fs::copy(env.path("p/key.pem"), env.path("q/key.pem")).unwrap();
    env.fails(
        "cert issue --ca ca --agent summarizer --parent q --out-dir c3",
        1,
        "does not match",
    );
    // Policy: an auditor is opened by the operator only; nobody is their own child.
    env.fails(
        "cert issue --ca ca --agent auditor --parent p --out-dir c4",
        1,
        "unauthorized",
    );
    env.fails(
        "cert issue --ca ca --agent planner --parent p --out-dir c5",
        1,
        "its own identity",
    );
}

#[test]
fn renew_keeps_key_and_identity() {
    let env = Env::new();
    let first = env.planner("p");
    let renewed = env.json("cert renew --ca ca --dir p --ttl 3m");
    assert_eq!(renewed["identity"], first["identity"]);
    assert_eq!(renewed["jkt"], first["jkt"]);
    assert_ne!(renewed["serial"], first["serial"]);
    assert_eq!(
        env.json("cert inspect p/cert.pem")["serial"],
        renewed["serial"],
        "cert.pem replaced"
    );
    assert!(env
        .ok("cert renew --ca ca --dir p")
        .starts_with("identity:"));
    env.fails(
        "cert renew --ca ca --dir p --ttl 2h",
        1,
        "exceeds the maximum",
    );
    // Another key for the same identity is refused.
    env.planner("other");
    std::fs::remove_file(env.path("p/key.pem")).unwrap();
    std::fs::copy(env.path("other/key.pem"), env.path("p/key.pem")).unwrap();
    env.fails("cert renew --ca ca --dir p", 1, "does not match");
    env.fails("cert renew --ca ca --dir missing", 1, "cannot read");
}

#[test]
fn sign_an_openssl_csr() {
    if !have_openssl() {
        return;
    }
    let env = Env::new();
    let dir = env.dir.path();
    openssl_csr(dir, "ext", &[]);
    let v = env.json(
        "cert sign --ca ca --csr ext.csr --agent planner --task ext1 --ttl 5m --scope tickets:read --out-dir ext",
    );
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
    // The certificate certifies the CSR's key, and OpenSSL validates its chain.
    assert_eq!(
        openssl(dir, &["pkey", "-in", "ext.key", "-pubout"]),
        openssl(dir, &["x509", "-in", "ext/cert.pem", "-pubkey", "-noout"])
    );
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "ext/bundle.pem",
            "-untrusted",
            "ext/cert.pem",
            "ext/cert.pem",
        ],
    );
    assert_eq!(
        env.json("cert verify ext/cert.pem --bundle example.org=ext/bundle.pem")["valid"],
        true
    );

    // A CSR asking to be a CA, or for a DNS name, is refused with its own reason.
    let sign = |csr: &str, task: &str| {
        format!("cert sign --ca ca --csr {csr} --agent planner --task {task} --scope tickets:read")
    };
    openssl_csr(dir, "ca", &["-addext", "basicConstraints=critical,CA:TRUE"]);
    env.fails(&sign("ca.csr", "ext2"), 1, "CA:TRUE");
    openssl_csr(dir, "dns", &["-addext", "subjectAltName=DNS:evil.example"]);
    env.fails(&sign("dns.csr", "ext3"), 1, "DNS:evil.example");
    std::fs::write(env.path("junk.csr"), "hello").unwrap();
    env.fails(&sign("junk.csr", "ext4"), 1, "csr");
    // The same key cannot serve a second identity.
    env.fails(&sign("ext.csr", "ext5"), 1, "already bound");
    env.fails(
        "cert sign --ca ca --csr ext.csr --agent planner --scope tickets:read",
        1,
        "already bound",
    );
}
