//! `ca init`, the command-line conventions, `revoke`, `revocations export`, `bundle export`.
#![cfg(test)]

mod support;

use serde_json::Value;
use support::{b64url_json, mode, Env};

#[test]
fn usage_errors_exit_2_with_one_line() {
    let env = Env::new();
    env.fails("cert issue --ca ca", 2, "--agent");
    env.fails("nonsense", 2, "nonsense");
    env.fails("ca init --dir x", 2, "--trust-domain");
    env.fails(
        "cert issue --ca ca --agent planner --scope tickets:read --ttl soon",
        2,
        "--ttl",
    );
    env.fails(
        "cert verify x.pem --bundle example.org=b.pem --at yesterday",
        2,
        "--at",
    );
    env.fails("revoke --ca ca", 2, "required");
    env.fails(
        "revoke --ca ca --task a --agent b",
        2,
        "cannot be used with",
    );
    // Help is not an error.
    env.ok("--help");
    env.ok("cert issue --help");
}

#[test]
fn ca_init_json_and_refusals() {
    let env = Env::empty();
    let v = env.json("ca init --trust-domain example.org --dir ca");
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
    env.fails(
        "ca init --trust-domain example.org --dir ca",
        1,
        "already exists",
    );
    env.fails(
        "ca init --trust-domain Example.org --dir ca2",
        2,
        "--trust-domain",
    );
    // The policy written by `ca init` allows nothing.
    env.fails(
        "cert issue --ca ca --agent planner --scope tickets:read",
        1,
        "policy",
    );
    assert!(
        !env.path("planner/key.pem").exists(),
        "no key left behind after a refusal"
    );
    let text = env.ok("ca init --trust-domain example.org --dir ca3 --key-type ed25519");
    assert!(
        text.contains("ed25519") && text.contains("policy.toml"),
        "{text}"
    );
}

/// `ca init --dir /tmp/ca` run as root where another user planted `/tmp/ca` as a link to a
/// system directory: that directory was made 0700 (every other user locked out of `/etc`, say)
/// before anything looked at the link.
#[test]
fn ca_init_through_a_link_another_user_planted_changes_nothing() {
    let env = Env::empty();
    let system = env.path("system");
    std::fs::create_dir(&system).unwrap();
    env.chmod("system", 0o755);
    let link = env.path("ca");
    std::os::unix::fs::symlink(&system, &link).unwrap();
    // Only root can give a link away here.
    if std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).is_err() {
        return;
    }
    env.fails(
        "ca init --trust-domain example.org --dir ca",
        1,
        "owned by another user",
    );
    assert_eq!(mode(&system), 0o755, "the link's target is left as it was");
    assert_eq!(std::fs::read_dir(&system).unwrap().count(), 0);
}

#[test]
fn a_readable_ca_key_or_missing_ca_is_refused() {
    let env = Env::new();
    env.chmod("ca/intermediate.key", 0o644);
    env.fails(
        "cert issue --ca ca --agent planner --scope tickets:read",
        1,
        "chmod 600",
    );
    env.fails("bundle export --ca nowhere", 1, "no such CA directory");
}

#[test]
fn revoke_each_target_kind() {
    let env = Env::new();
    let p = env.planner("p");
    let (serial, task, jkt) = (
        p["serial"].as_str().unwrap(),
        p["task"].as_str().unwrap(),
        p["jkt"].as_str().unwrap(),
    );
    let grant_jti = p["grant"]["jti"].as_str().unwrap();

    let v = env.json(&format!("revoke --ca ca --serial {serial} --reason leaked"));
    assert_eq!(v["kind"], "jkt");
    assert_eq!(v["value"], p["jkt"], "a serial revokes its key");
    assert_eq!(v["reason"], "leaked");
    assert_eq!(v["trust_domain"], "example.org");
    assert!(v["exp"].as_u64().unwrap() > v["revoked_at"].as_u64().unwrap());
    assert_eq!(
        env.json(&format!("revoke --ca ca --task {task}"))["kind"],
        "task"
    );
    assert_eq!(
        env.json("revoke --ca ca --agent summarizer")["kind"],
        "agent"
    );
    assert_eq!(
        env.json(&format!("revoke --ca ca --jkt {jkt}"))["kind"],
        "jkt"
    );
    let v = env.json(&format!(
        "revoke --ca ca --jti {grant_jti} --iss spiffe://example.org"
    ));
    assert_eq!(v["kind"], "jti");
    assert!(env
        .ok("revoke --ca ca --agent planner")
        .starts_with("revoked agent planner"));

    env.fails("revoke --ca ca --serial abcdef", 1, "abcdef");
    env.fails("revoke --ca ca --jti nope", 1, "nope");
    // base64url values may start with `-`: taken as the value, never as an unknown flag.
    env.fails(
        "revoke --ca ca --jti -AAAAAAAAAAAAAAAAAAAAA --iss spiffe://example.org",
        1,
        "unknown jti -AAAAAAAAAAAAAAAAAAAAA",
    );
    env.fails("revoke --ca ca --jkt short", 2, "thumbprint");
    // A link's jti is scoped by the task identity that signed it.
    let v = env.json("revoke --ca ca --jti link-1 --iss spiffe://example.org/agent/x/task/y");
    assert_eq!(v["kind"], "link_jti");
    env.fails(
        "revoke --ca ca --jti link-1 --iss spiffe://other.example/agent/x/task/y",
        1,
        "other.example",
    );
    env.fails(
        "revoke --ca ca --jti link-1 --iss spiffe://example.org/svc/x",
        2,
        "--iss",
    );
    // A revoked agent gets nothing more.
    env.fails(
        "cert issue --ca ca --agent planner --scope tickets:read --out-dir again",
        1,
        "revoked",
    );

    // The list: a compact JWS of the CA's trust domain, listing the entries, sequenced.
    let list = env.ok("revocations export --ca ca");
    let parts: Vec<&str> = list.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(b64url_json(parts[0])["typ"], "agentid-revocations+jwt");
    let first = b64url_json(parts[1]);
    assert_eq!(first["iss"], "spiffe://example.org");
    assert!(first["entries"].as_array().unwrap().len() >= 4, "{first}");
    assert!(
        first["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["jti"] == "link-1" && e["iss"] == "spiffe://example.org/agent/x/task/y"),
        "the link jti is listed with its issuer: {first}"
    );
    env.ok("revocations export --ca ca --out rev.jwt");
    let second = b64url_json(env.read("rev.jwt").trim().split('.').nth(1).unwrap());
    assert!(
        second["seq"].as_u64().unwrap() > first["seq"].as_u64().unwrap(),
        "sequenced"
    );
}

#[test]
fn bundle_export_formats() {
    let env = Env::new();
    let spiffe: Value = serde_json::from_str(&env.ok("bundle export --ca ca")).unwrap();
    let keys = spiffe["keys"].as_array().unwrap();
    let uses: Vec<&str> = keys.iter().map(|k| k["use"].as_str().unwrap()).collect();
    assert_eq!(uses, ["x509-svid", "agentid-grant", "agentid-revocation"]);
    for k in &keys[1..] {
        assert!(k["kid"].is_string() && k["alg"] == "ES256", "{k}");
    }
    assert_ne!(
        keys[1]["kid"], keys[2]["kid"],
        "distinct grant and revocation keys"
    );
    assert!(spiffe["spiffe_sequence"].is_u64());
    let pem = env.ok("bundle export --ca ca --format pem");
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 1);
    env.ok("bundle export --ca ca --out b.json");
    assert_eq!(
        serde_json::from_str::<Value>(&env.read("b.json")).unwrap(),
        spiffe
    );
    env.fails("bundle export --ca ca --format der", 2, "der");

    let ed = Env::with_key_type("ed25519");
    let spiffe: Value = serde_json::from_str(&ed.ok("bundle export --ca ca")).unwrap();
    assert_eq!(spiffe["keys"][1]["alg"], "Ed25519");
}

/// `--out` naming something that is not a regular file is written in place (a FIFO, as
/// `/dev/null` would be) or refused (a symbolic link, as `/dev/stdout` is), never replaced; a
/// link planted at the name the CLI once used for its temporary file is not followed.
#[test]
fn out_never_replaces_what_is_not_a_regular_file() {
    use std::io::Read;
    use std::os::unix::fs::{symlink, FileTypeExt};

    let env = Env::new();
    // A FIFO (made inside the test directory): written in place.
    let fifo = env.path("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut got = String::new();
            std::fs::File::open(&fifo)
                .unwrap()
                .read_to_string(&mut got)
                .unwrap();
            got
        })
    };
    env.ok("revocations export --ca ca --out pipe");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the FIFO was replaced"
    );
    let list = reader.join().unwrap();
    assert_eq!(list.trim().split('.').count(), 3, "{list:?}");

    // A symbolic link (to a file of the test directory): refused, its target untouched.
    std::fs::write(env.path("victim.txt"), "precious").unwrap();
    symlink(env.path("victim.txt"), env.path("linked.json")).unwrap();
    env.fails(
        "bundle export --ca ca --out linked.json",
        1,
        "is a symbolic link",
    );
    assert_eq!(env.read("victim.txt"), "precious");
    assert!(std::fs::symlink_metadata(env.path("linked.json"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Links at predictable temporary names: not followed (the pid-based name the CLI once used
    // is covered by agentid-fs's own tests, which know their pid).
    std::fs::create_dir(env.path("outdir")).unwrap();
    symlink(env.path("victim.txt"), env.path("outdir/.rev.jwt.tmp")).unwrap();
    symlink(env.path("victim.txt"), env.path("outdir/rev.jwt.tmp")).unwrap();
    env.ok("revocations export --ca ca --out outdir/rev.jwt");
    assert_eq!(env.read("victim.txt"), "precious");
    assert!(std::fs::symlink_metadata(env.path("outdir/rev.jwt"))
        .unwrap()
        .file_type()
        .is_file());
}

/// The response to a stolen grant key (SECURITY.md: rotate it out of the bundles): the operator
/// replaces `grant.key` and signs the bundle the CA service serves again, with the offline
/// bundle-signing key. Before `bundle sign` no command could: only `ca init` signed
/// `agentid-bundle.jws`, the service refuses a document naming other keys than its own
/// (CA-API 3.3, `500`), and bundle watchers kept trusting the stolen key. It reads the
/// directory's files, not its store, so it runs where the offline key is.
#[test]
fn bundle_sign_brings_a_replaced_grant_key_to_the_bundle_the_ca_serves() {
    use agentid_ca::{agentid_bundle, CertificateAuthority};

    let env = Env::new();
    let dir = env.path("ca");
    let before = CertificateAuthority::open(&dir)
        .unwrap()
        .signed_agentid_bundle()
        .unwrap()
        .unwrap();
    let signing = agentid_bundle::public_key(&dir).unwrap();
    let td = agentid_protocol::TrustDomain::parse("example.org").unwrap();
    let now = u64::MAX;
    let old = agentid_protocol::verify_signed_bundle(&before, &signing, &td, now, 0).unwrap();

    let grant = dir.join("grant.key");
    std::fs::remove_file(&grant).unwrap();
    let key = agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&grant, key.pkcs8_der()).unwrap();
    let ca = CertificateAuthority::open(&dir).unwrap();
    assert!(
        ca.signed_agentid_bundle().is_err(),
        "the document of `ca init` names the replaced key: not served"
    );

    // Signed where the offline key is kept: a copy of the directory without the store.
    let offline = env.path("offline");
    std::fs::create_dir(&offline).unwrap();
    for f in [
        "config.toml",
        "root.pem",
        "grant.key",
        "revocation.key",
        "bundle-signing.key",
        "bundle-signing.pub",
        "agentid-bundle.jws",
    ] {
        std::fs::copy(dir.join(f), offline.join(f)).unwrap();
    }
    let out = env.json("bundle sign --ca offline");
    std::fs::copy(
        offline.join("agentid-bundle.jws"),
        dir.join("agentid-bundle.jws"),
    )
    .unwrap();
    let served = ca.signed_agentid_bundle().unwrap().unwrap();
    let new = agentid_protocol::verify_signed_bundle(&served, &signing, &td, now, 0).unwrap();
    let kid = key.public_key().thumbprint();
    let grant_kids: Vec<String> = new
        .bundle
        .grant_keys()
        .iter()
        .map(|k| k.kid.clone())
        .collect();
    assert_eq!(grant_kids, vec![kid.clone()]);
    assert!(new.seq > old.seq, "{} after {}", new.seq, old.seq);
    assert_eq!(out["seq"], new.seq);
    assert_eq!(out["grant_keys"], serde_json::json!([kid]));

    // Where the offline key is not (the service's host), nothing is signed and the key is named.
    std::fs::remove_file(dir.join("bundle-signing.key")).unwrap();
    env.fails("bundle sign --ca ca", 1, "bundle-signing.key");
    assert_eq!(ca.signed_agentid_bundle().unwrap().unwrap(), served);
}

/// A planned rotation (CA-API 3.3): `bundle sign --retiring-grant-key` lists the outgoing
/// grant key (a PEM public key, or its JWK entry of `bundle export`) beside the current one,
/// and the CA serves that document. A JWK of another use, or the current key itself, is
/// refused and nothing is signed.
#[test]
fn bundle_sign_lists_a_retiring_grant_key_beside_the_current_one() {
    use agentid_ca::CertificateAuthority;

    let env = Env::new();
    let dir = env.path("ca");
    let bundle = CertificateAuthority::open(&dir)
        .unwrap()
        .trust_bundle()
        .unwrap();
    let old = bundle.grant_keys()[0].key.clone();
    let pem = agentid_fs::pem_encode("PUBLIC KEY", &old.to_spki_der());
    std::fs::write(env.path("old-grant.pub"), pem).unwrap();
    let exported: serde_json::Value =
        serde_json::from_str(&env.ok("bundle export --ca ca")).unwrap();
    let jwk = |u: &str| {
        exported["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["use"] == u)
            .unwrap()
            .to_string()
    };
    std::fs::write(env.path("old-grant.jwk"), jwk("agentid-grant")).unwrap();
    std::fs::write(env.path("revocation.jwk"), jwk("agentid-revocation")).unwrap();

    let grant = dir.join("grant.key");
    std::fs::remove_file(&grant).unwrap();
    let key = agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&grant, key.pkcs8_der()).unwrap();
    let signed_before = env.read("ca/agentid-bundle.jws");
    env.fails(
        "bundle sign --ca ca --retiring-grant-key revocation.jwk",
        1,
        "agentid-revocation",
    );
    let current = agentid_fs::pem_encode("PUBLIC KEY", &key.public_key().to_spki_der());
    std::fs::write(env.path("new-grant.pub"), current).unwrap();
    env.fails(
        "bundle sign --ca ca --retiring-grant-key new-grant.pub",
        1,
        "current keys",
    );
    assert_eq!(env.read("ca/agentid-bundle.jws"), signed_before);

    let want = serde_json::json!([key.public_key().thumbprint(), old.thumbprint()]);
    for file in ["old-grant.pub", "old-grant.jwk"] {
        let out = env.json(&format!("bundle sign --ca ca --retiring-grant-key {file}"));
        assert_eq!(out["grant_keys"], want, "{file}");
        let served = CertificateAuthority::open(&dir)
            .unwrap()
            .signed_agentid_bundle()
            .unwrap();
        assert_eq!(
            served.as_deref(),
            Some(env.read("ca/agentid-bundle.jws").trim())
        );
    }
}

/// A retiring key file (`bundle sign --retiring-grant-key/--retiring-revocation-key FILE`)
/// decides which outgoing key every verifier of the domain keeps trusting: it is read only if
/// held, as the CA directory's files are. Whoever could replace it (a directory others can
/// write, the file writable by them) could keep listed an older key the operator meant to
/// drop, in place of the one being retired; a FIFO there would block the command.
#[test]
fn a_retiring_key_file_others_could_replace_is_refused_and_nothing_is_signed() {
    let env = Env::new();
    let bundle = agentid_ca::CertificateAuthority::open(&env.path("ca"))
        .unwrap()
        .trust_bundle()
        .unwrap();
    let old = bundle.grant_keys()[0].key.clone();
    std::fs::create_dir(env.path("shared")).unwrap();
    env.chmod("shared", 0o755);
    let pem = agentid_fs::pem_encode("PUBLIC KEY", &old.to_spki_der());
    std::fs::write(env.path("shared/old-grant.pub"), pem).unwrap();
    env.chmod("shared/old-grant.pub", 0o644);
    let grant = env.path("ca/grant.key");
    std::fs::remove_file(&grant).unwrap();
    let key = agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&grant, key.pkcs8_der()).unwrap();

    let line = "bundle sign --ca ca --retiring-grant-key shared/old-grant.pub";
    let signed_before = env.read("ca/agentid-bundle.jws");
    for (rel, mode, back) in [
        ("shared", 0o777, 0o755),
        ("shared/old-grant.pub", 0o666, 0o644),
    ] {
        env.chmod(rel, mode);
        let (_, msg) = env.fails(line, 1, &format!("chmod go-w {}", env.path(rel).display()));
        assert!(msg.contains(&format!("{mode:03o}")), "{msg}");
        assert_eq!(env.read("ca/agentid-bundle.jws"), signed_before, "{rel}");
        env.chmod(rel, back);
    }
    let out = env.json(line);
    assert_eq!(
        out["grant_keys"],
        serde_json::json!([key.public_key().thumbprint(), old.thumbprint()])
    );
}

/// CA-API 3.3: a retiring key is the outgoing key of the same use, one the document being
/// replaced lists: a key no document of this CA listed (another trust domain's grant key, a
/// file someone handed the operator) was signed into the bundle as a grant key of this trust
/// domain, so whoever held its private key issued grants every verifier of the domain took.
/// It is refused, as is an outgoing revocation key listed as a grant key, and nothing is signed.
#[test]
fn a_key_the_replaced_bundle_does_not_list_under_that_use_is_refused_as_retiring() {
    let env = Env::new();
    let outsider = agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256)
        .unwrap()
        .public_key()
        .clone();
    let pem = agentid_fs::pem_encode("PUBLIC KEY", &outsider.to_spki_der());
    std::fs::write(env.path("partner-grant.pub"), pem).unwrap();
    let bundle = agentid_ca::CertificateAuthority::open(&env.path("ca"))
        .unwrap()
        .trust_bundle()
        .unwrap();
    let old_revocation = bundle.revocation_keys()[0].key.clone();
    let pem = agentid_fs::pem_encode("PUBLIC KEY", &old_revocation.to_spki_der());
    std::fs::write(env.path("old-revocation.pub"), pem).unwrap();
    let revocation = env.path("ca/revocation.key");
    std::fs::remove_file(&revocation).unwrap();
    let key = agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&revocation, key.pkcs8_der()).unwrap();

    let signed_before = env.read("ca/agentid-bundle.jws");
    for file in ["partner-grant.pub", "old-revocation.pub"] {
        env.fails(
            &format!("bundle sign --ca ca --retiring-grant-key {file}"),
            1,
            "not an agentid-grant key of the signed bundle it replaces",
        );
        assert_eq!(env.read("ca/agentid-bundle.jws"), signed_before, "{file}");
    }
    // Under its own use, the outgoing revocation key is listed.
    let out = env.json("bundle sign --ca ca --retiring-revocation-key old-revocation.pub");
    assert_eq!(
        out["revocation_keys"],
        serde_json::json!([key.public_key().thumbprint(), old_revocation.thumbprint()])
    );
}

/// CA-API 3.3: the agentid bundle the CLI writes (`bundle.json` of `cert issue`, `bundle
/// export`) starts at the sequence of the CA's signed bundle, so a bundle watcher started over
/// it refuses an older signed bundle that whoever answers as the CA replays (`sequence_rollback`)
/// instead of putting a rotated-out grant key back; it written at sequence 1, and any genuine
/// older document was applied.
#[test]
fn the_bundle_the_cli_writes_refuses_a_signed_bundle_from_before_a_rotation() {
    use agentid_transport::enroll::{BundleApplied, BundleApplier, EnrollError};

    let env = Env::new();
    let before = env.read("ca/agentid-bundle.jws");
    let grant = env.path("ca/grant.key");
    std::fs::remove_file(&grant).unwrap();
    let key = agentid_protocol::AuthorityKey::generate(agentid_protocol::Algorithm::Es256).unwrap();
    agentid_fs::write_private_key(&grant, key.pkcs8_der()).unwrap();
    env.ok("bundle sign --ca ca");
    let current = env.read("ca/agentid-bundle.jws");
    env.planner("planner");
    env.ok("bundle export --ca ca --out exported.json");

    let td = agentid_protocol::TrustDomain::parse("example.org").unwrap();
    let signing = agentid_ca::agentid_bundle::public_key(&env.path("ca")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for file in ["planner/bundle.json", "exported.json"] {
        let bundle = agentid_protocol::TrustBundle::parse(&td, env.read(file).as_bytes()).unwrap();
        let mut set = agentid_protocol::BundleSet::new();
        set.insert(bundle).unwrap();
        let own = agentid_protocol::SpiffeId::parse("spiffe://example.org/svc/watcher").unwrap();
        let v = agentid_transport::PeerVerification::new(
            agentid_protocol::VerifierConfig::new(own, set)
                .danger_accept_missing_or_stale_revocations(),
        )
        .unwrap();
        let applier = BundleApplier::new(v, signing.clone(), td.clone());
        let e = applier.apply(&before, now).unwrap_err();
        assert!(
            matches!(&e, EnrollError::Transport(agentid_transport::Error::Protocol(p))
                if p.code() == agentid_protocol::ErrorCode::SequenceRollback),
            "{file}: {e}"
        );
        assert_eq!(
            applier.apply(&current, now).unwrap(),
            BundleApplied::Applied,
            "{file}"
        );
    }
}

/// An `--out` that names a private key by mistake (a tab completion away in the CA directory)
/// replaced it: the CA's keys are not to be had again. Refused, before a list is signed.
#[test]
fn an_out_file_never_replaces_a_private_key() {
    let env = Env::new();
    for key in ["root.key", "revocation.key"] {
        let path = format!("ca/{key}");
        let before = env.read(&path);
        env.fails(
            &format!("bundle export --ca ca --out {path}"),
            1,
            "holds a private key",
        );
        env.fails(
            &format!("revocations export --ca ca --out {path}"),
            1,
            "holds a private key",
        );
        assert_eq!(env.read(&path), before, "{key} left as it was");
    }
    // Nothing was signed: no list is stored, and the next one is the first.
    let lists = |env: &Env| -> i64 {
        rusqlite::Connection::open(env.path("ca/ca.db"))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM published_lists", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(lists(&env), 0);
    let v = env.json("revocations export --ca ca");
    assert!(v["seq"].as_u64().is_some_and(|s| s > 0), "{v}");
    assert_eq!(lists(&env), 1);
}
