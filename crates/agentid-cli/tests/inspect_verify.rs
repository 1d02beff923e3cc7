//! `cert inspect` and `cert verify`.
#![cfg(test)]

mod support;

use serde_json::json;
use support::Env;

#[test]
fn inspect_shows_the_profile() {
    let env = Env::new();
    let issued = env.planner("p");
    let v = env.json("cert inspect p/cert.pem");
    assert_eq!(v["identity"], issued["identity"]);
    assert_eq!(v["kind"], "task");
    assert_eq!(v["agent"], "planner");
    assert_eq!(v["task"], issued["task"]);
    assert_eq!(v["serial"], issued["serial"], "the CA's serial form");
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
        json!([format!("URI:{}", issued["identity"].as_str().unwrap())])
    );
    assert_eq!(v["is_ca"], false);
    assert_eq!(v["key_usage"], json!(["digitalSignature"]));
    assert_eq!(v["extended_key_usage"], json!(["serverAuth", "clientAuth"]));
    assert_eq!(v["certificates_in_file"], 2);
    // The root: a CA certificate without SAN.
    let root = env.json("cert inspect p/bundle.pem");
    assert_eq!(root["is_ca"], true);
    assert_eq!(root["kind"], "none");
    assert_eq!(root["identity"], serde_json::Value::Null);

    let text = env.ok("cert inspect p/cert.pem");
    assert!(
        text.contains("Kind:           task") && text.contains("Key usage:      digitalSignature"),
        "{text}"
    );
    std::fs::write(env.path("junk.pem"), "not pem").unwrap();
    env.fails("cert inspect junk.pem", 1, "no CERTIFICATE");
    env.fails("cert inspect absent.pem", 1, "cannot read absent.pem");
}

#[test]
fn verify_checks_profile_chain_time_and_trust_domain() {
    let env = Env::new();
    let issued = env.planner("p");
    for bundle in ["example.org=p/bundle.pem", "example.org=p/bundle.json"] {
        let v = env.json(&format!("cert verify p/cert.pem --bundle {bundle}"));
        assert_eq!(v["valid"], true, "{bundle}");
        assert_eq!(v["identity"], issued["identity"]);
        assert_eq!(v["trust_domain"], "example.org");
        assert_eq!(v["serial"], issued["serial"]);
        assert_eq!(v["jkt"], issued["jkt"]);
        assert_eq!(v["usages"], json!(["clientAuth", "serverAuth"]));
    }
    assert!(env
        .ok("cert verify p/cert.pem --bundle example.org=p/bundle.pem")
        .starts_with("valid: spiffe://"));

    // Time: one second past notAfter (Unix seconds), far later (RFC 3339), and before notBefore.
    let late = issued["not_after"].as_u64().unwrap() + 1;
    let (out, _) = env.fails(
        &format!(
            "cert verify p/cert.pem --bundle example.org=p/bundle.pem --at {late} --format json"
        ),
        3,
        "expired",
    );
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["valid"], false);
    assert!(out["error"].as_str().unwrap().contains("expired"));
    let at_end = issued["not_after"].as_u64().unwrap() - 1;
    assert_eq!(
        env.json(&format!(
            "cert verify p/cert.pem --bundle example.org=p/bundle.pem --at {at_end}"
        ))["valid"],
        true
    );
    env.fails(
        "cert verify p/cert.pem --bundle example.org=p/bundle.pem --at 2099-01-01T00:00:00Z",
        3,
        "expired",
    );
    env.fails(
        "cert verify p/cert.pem --bundle example.org=p/bundle.pem --at 1000000000",
        3,
        "not yet valid",
    );

    // Another CA's roots; a bundle named for another trust domain; a CA certificate as a leaf.
    let other = Env::new();
    other.planner("p");
    let foreign = other.path("p/bundle.pem");
    env.fails(
        &format!(
            "cert verify p/cert.pem --bundle example.org={}",
            foreign.display()
        ),
        3,
        "chain validation failed",
    );
    env.fails(
        "cert verify p/cert.pem --bundle other.org=p/bundle.json",
        3,
        "no X.509 authority for trust domain example.org",
    );
    env.fails(
        "cert verify p/bundle.pem --bundle example.org=p/bundle.pem",
        3,
        "X509-SVID profile",
    );
    env.fails(
        "cert verify p/cert.pem --bundle example.org=p/grant.jwt",
        1,
        "neither a SPIFFE bundle",
    );
    env.fails("cert verify p/cert.pem --bundle example.org=", 2, "no file");
}

#[test]
fn verify_ed25519_hierarchy() {
    let env = Env::with_key_type("ed25519");
    env.json(
        "cert issue --ca ca --agent planner --scope tickets:read --key-type ed25519 --out-dir p",
    );
    assert_eq!(
        env.json("cert verify p/cert.pem --bundle example.org=p/bundle.json")["valid"],
        true
    );
    assert_eq!(env.json("cert inspect p/cert.pem")["key_type"], "Ed25519");
}

/// A bundle file does not say whose it is, and the certificate being checked cannot say it for
/// the file: a partner's CA that mints identities (and grants) of our trust domain is not
/// vouched for by its own bundle given bare, as if it were our trust domain's.
#[test]
fn a_bare_bundle_is_never_taken_as_the_bundle_of_the_trust_domain_the_certificate_names() {
    // The partner's CA calls itself example.org: its certificates and grants claim our domain.
    let partner = Env::new();
    partner.planner("p");
    partner.ok("revocations export --ca ca --out rev.jwt");
    // Named as what the operator holds it for, the partner's bundle vouches for nothing here.
    partner.fails(
        "cert verify p/cert.pem --bundle partner.org=p/bundle.pem",
        3,
        "no X.509 authority for trust domain example.org",
    );
    // Bare, it would be taken as the bundle of whatever trust domain the certificate names.
    for line in [
        "cert verify p/cert.pem --bundle p/bundle.pem",
        "cert verify p/cert.pem --bundle p/bundle.json --format json",
        "chain verify p/grant.jwt --bundle p/bundle.json --peer-cert p/cert.pem --revocations rev.jwt",
        "chain verify p/grant.jwt --bundle p/bundle.json --peer-cert p/cert.pem --revocations rev.jwt --danger-unverified-peer-cert",
    ] {
        partner.fails(line, 2, "--bundle example.org=p/bundle");
    }
    // Named for the trust domain the certificate claims, the operator vouches for the file.
    assert_eq!(
        partner.json("cert verify p/cert.pem --bundle example.org=p/bundle.pem")["valid"],
        true
    );
    assert_eq!(
        partner.verdict(
            "p/grant.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem --revocations rev.jwt",
            0
        )["verdict"]["valid"],
        true
    );
}

/// The TLS peer check refuses a certificate whose key, agent or task its trust domain's list
/// revokes (spec/PROTOCOL.md section 10, "Verifying a peer without a chain"): `cert verify`
/// checks the lists it is given the same way, and without one says that it did not.
#[test]
fn cert_verify_refuses_a_certificate_its_revocation_list_revokes() {
    let env = Env::new();
    let issued = env.planner("p");
    env.ok("revocations export --ca ca --out before.jwt");
    let serial = issued["serial"].as_str().unwrap();
    env.ok(&format!("revoke --ca ca --serial {serial}"));
    env.ok("revocations export --ca ca --out after.jwt");
    let base = "cert verify p/cert.pem --bundle example.org=p/bundle.json";

    let v = env.json(base);
    assert_eq!(v["valid"], true);
    assert_eq!(v["revocation"], "not checked");
    assert!(
        env.ok(base).contains("revocation not checked"),
        "the text verdict says so too"
    );
    let v = env.json(&format!("{base} --revocations before.jwt"));
    assert_eq!(v["valid"], true);
    assert_eq!(v["revocation"], "checked");

    let (out, _) = env.fails(
        &format!("{base} --revocations after.jwt --format json"),
        3,
        "revoked",
    );
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["valid"], false);
    assert!(
        out["error"].as_str().unwrap().starts_with("revoked: "),
        "{out}"
    );
    // PEM roots hold no revocation key: no list can be checked with them.
    env.fails(
        "cert verify p/cert.pem --bundle example.org=p/bundle.pem --revocations after.jwt",
        1,
        "revocation key",
    );
}

/// `cert inspect` is how one looks at a certificate nobody vouches for yet (a peer's, a file
/// handed over): its subject and SAN strings reached the terminal as they were, so a line break
/// and terminal escapes in them could erase the real fields and print forged ones ("Identity:"
/// of an admin agent).
#[test]
fn inspect_never_prints_control_characters_from_the_certificate() {
    let env = Env::new();
    let forged = "Identity:       spiffe://example.org/agent/admin/task/t";
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        rcgen::DnValue::Utf8String(format!("evil\u{1b}[2J\n{forged}")),
    );
    p.subject_alt_names = vec![
        rcgen::SanType::URI(
            format!("spiffe://example.org/x\u{1b}[1A\r{forged}")
                .try_into()
                .unwrap(),
        ),
        rcgen::SanType::DnsName(format!("a\n{forged}").try_into().unwrap()),
    ];
    let cert = p.self_signed(&kp).unwrap();
    std::fs::write(env.path("evil.pem"), cert.pem()).unwrap();
    let text = env.ok("cert inspect evil.pem");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("Identity:")).count(),
        1,
        "{text}"
    );
    assert!(!text.lines().any(|l| l == forged), "{text}");
    // JSON carries the certificate's strings as they are, escaped as JSON escapes them.
    let v = env.json("cert inspect evil.pem");
    assert!(v["subject"].as_str().unwrap().contains('\u{1b}'));
}
