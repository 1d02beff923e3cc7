//! `delegate` and `chain verify`, and the end-to-end flow: ca init -> issue -> child ->
//! delegate -> verify (valid) -> revoke the child's key -> export -> verify (`revoked`).
#![cfg(test)]

mod support;

use serde_json::json;
use support::{claims, Env};

const DELEGATE: &str =
    "delegate --chain p/grant.jwt --key p/key.pem --to-cert c/cert.pem --bundle p/bundle.json";

#[test]
fn delegate_binds_the_certificate_holder() {
    let env = Env::new();
    env.planner("p");
    let child = env.child("p", "c");
    let v = env.json(&format!(
        "{DELEGATE} --scope tickets:read --ttl 1m --out c/chain.jwt"
    ));
    assert_eq!(v["depth"], 1);
    assert_eq!(v["to"], child["identity"]);
    assert_eq!(v["to_jkt"], child["jkt"]);
    let chain = v["chain"].as_str().unwrap();
    assert_eq!(env.read("c/chain.jwt").trim(), chain);
    let link = claims(chain, 1);
    assert_eq!(link["sub"], child["identity"]);
    assert_eq!(link["scope"], "tickets:read");
    assert_eq!(link["max_depth"], 1);
    assert_eq!(v["exp"], link["exp"]);
    assert!(link["exp"].as_u64().unwrap() - link["iat"].as_u64().unwrap() <= 60);
    assert_eq!(link["cnf"]["jwk"]["kty"], "EC");
    // Text: the chain alone on stdout; a PEM bundle works too.
    let text = env.ok("delegate --chain p/grant.jwt --key p/key.pem --to-cert c/cert.pem --bundle p/bundle.pem --scope tickets:comment");
    assert_eq!(text.trim().split('~').count(), 2);
}

#[test]
fn delegate_refusals() {
    let env = Env::new();
    env.planner("p");
    env.child("p", "c");
    env.fails(&format!("{DELEGATE} --scope tickets:*"), 1, "scope");
    env.fails(
        &format!("{DELEGATE} --scope tickets:write"),
        1,
        "scope_escalation",
    );
    env.fails(
        &format!("{DELEGATE} --scope tickets:read --max-depth 5"),
        1,
        "depth",
    );
    env.fails(DELEGATE, 2, "--scope");
    env.fails(&format!("{DELEGATE} --scope not-valid!"), 2, "--scope");
    let other_key =
        "delegate --chain p/grant.jwt --key c/key.pem --to-cert c/cert.pem --bundle p/bundle.json";
    env.fails(
        &format!("{other_key} --scope tickets:read"),
        1,
        "possession_mismatch",
    );
    let to_self =
        "delegate --chain p/grant.jwt --key p/key.pem --to-cert p/cert.pem --bundle p/bundle.json";
    env.fails(
        &format!("{to_self} --scope tickets:read"),
        1,
        "self_delegation",
    );
    // A certificate from another CA does not verify against our bundle.
    let other = Env::new();
    other.planner("x");
    let foreign = other.path("x/cert.pem");
    env.fails(
        &format!("delegate --chain p/grant.jwt --key p/key.pem --to-cert {} --bundle p/bundle.json --scope tickets:read", foreign.display()),
        1,
        "delegatee certificate invalid",
    );
    // Services never hold chains.
    env.ok("cert issue --ca ca --service search --out-dir svc");
    let to_svc = "delegate --chain p/grant.jwt --key p/key.pem --to-cert svc/cert.pem --bundle p/bundle.json";
    env.fails(
        &format!("{to_svc} --scope tickets:read"),
        1,
        "services never hold chains",
    );
    // A sealed task (max_depth 0) has no children: the CA refuses one (CA-API.md 3.8), so no
    // holder of its own task exists for a link from its chain to name.
    env.json("cert issue --ca ca --agent planner --scope tickets:read --out-dir sealed");
    let (_, line) = env.fails(
        "cert issue --ca ca --agent summarizer --parent sealed --out-dir sc",
        1,
        "exceeds the task's max_depth 0",
    );
    // ... and says what to do instead.
    assert!(
        line.contains("open the parent's task with --max-depth 1 or more"),
        "{line}"
    );
    // A child asking to outlive its parent's certificate: refused with both dates as dates
    // (not Unix seconds) and the next step.
    env.ok("cert issue --ca ca --agent planner --scope tickets:read --max-depth 1 --ttl 1m --out-dir short");
    let (_, line) = env.fails(
        "cert issue --ca ca --agent summarizer --parent short --ttl 10m --out-dir sc",
        1,
        "but the parent's chain ends at 20",
    );
    assert!(line.contains("child certificate would end at 20"), "{line}");
    assert!(line.contains("ask for a shorter --ttl"), "{line}");
    // A delegatee of another task fails first on the task, in the verifier's order (rule 4.3
    // before 4.5).
    let other_task = "delegate --chain sealed/grant.jwt --key sealed/key.pem --to-cert c/cert.pem --bundle p/bundle.json";
    env.fails(
        &format!("{other_task} --scope tickets:read"),
        1,
        "task_mismatch",
    );
    // A key that others can read is refused.
    env.chmod("p/key.pem", 0o644);
    env.fails(&format!("{DELEGATE} --scope tickets:read"), 1, "chmod 600");
}

#[test]
fn end_to_end_issue_delegate_verify_revoke() {
    let env = Env::new();
    let parent = env.planner("p");
    let child = env.child("p", "c");
    env.ok(&format!(
        "{DELEGATE} --scope tickets:read --out c/chain.jwt"
    ));
    env.ok("revocations export --ca ca --out rev1.jwt");
    let base = "c/chain.jwt --bundle example.org=c/bundle.json --peer-cert c/cert.pem";

    // Valid with the list.
    let r = env.verdict(&format!("{base} --revocations rev1.jwt"), 0);
    let v = &r["verdict"];
    assert_eq!(v["valid"], true);
    assert_eq!(v["holder"], child["identity"]);
    assert_eq!(v["task"], parent["task"]);
    assert_eq!(v["scope"], "tickets:read");
    assert_eq!(v["depth"], 1);
    assert_eq!(v["mode"], "autonomous");
    assert_eq!(v["authority"], "spiffe://example.org");
    assert_eq!(v["grant_jti"], parent["grant"]["jti"]);
    assert_eq!(
        v["actors"][0],
        json!({"id": parent["identity"], "attested": true})
    );
    assert_eq!(v["actors"][1]["id"], child["identity"]);
    // The report around the verdict.
    assert_eq!(r["peer"]["id"], child["identity"]);
    assert_eq!(r["peer"]["jkt"], child["jkt"]);
    assert_eq!(r["peer"]["serial"], child["serial"]);
    assert_eq!(r["verifier"], "spiffe://example.org/svc/agentid-cli");
    assert_eq!(r["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(r["tokens"][0]["header"]["typ"], "agentid-grant+jwt");
    assert_eq!(r["tokens"][1]["header"]["typ"], "agentid-link+jwt");
    assert_eq!(r["tokens"][1]["claims"]["sub"], child["identity"]);

    // Authorization of a requested scope.
    assert_eq!(
        env.verdict(
            &format!("{base} --revocations rev1.jwt --scope tickets:read"),
            0
        )["verdict"]["valid"],
        true
    );
    let r = env.verdict(
        &format!("{base} --revocations rev1.jwt --scope tickets:comment"),
        3,
    );
    assert_eq!(
        r["verdict"],
        json!({"valid": false, "error": "scope_not_granted", "index": null})
    );

    // Fails closed without revocation lists, unless told otherwise.
    assert_eq!(
        env.verdict(base, 3)["verdict"]["error"],
        "revocation_missing"
    );
    let r = env.verdict(&format!("{base} --danger-no-revocation"), 0);
    assert_eq!(r["verdict"]["valid"], true);
    // The report itself says which check was off (a pipeline drops the stderr warning).
    assert_eq!(r["danger_skipped"], json!(["revocation"]), "{r}");
    assert!(env.verdict(base, 3).get("danger_skipped").is_none());

    // The parent presenting the child's chain.
    let r = env.verdict(
        "c/chain.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem --revocations rev1.jwt",
        3,
    );
    assert_eq!(
        r["verdict"],
        json!({"valid": false, "error": "possession_mismatch", "index": 1})
    );

    // Revoke the child's key: the new list makes the chain `revoked` at the child's link.
    env.ok(&format!(
        "revoke --ca ca --serial {}",
        child["serial"].as_str().unwrap()
    ));
    env.ok("revocations export --ca ca --out rev2.jwt");
    let r = env.verdict(&format!("{base} --revocations rev2.jwt"), 3);
    assert_eq!(
        r["verdict"],
        json!({"valid": false, "error": "revoked", "index": 1})
    );
    let (out, _) = env.fails(
        &format!("chain verify {base} --revocations rev2.jwt --format text"),
        3,
        "revoked at token 1",
    );
    assert!(
        out.trim()
            .starts_with("invalid: revoked at token 1: holder key revoked; "),
        "{out}"
    );
    // An older list after a newer one is refused.
    let r = env.verdict(
        &format!("{base} --revocations rev2.jwt --revocations rev1.jwt"),
        3,
    );
    assert_eq!(r["verdict"]["valid"], false);
}

#[test]
fn chain_verify_time_audience_and_malformed_input() {
    let env = Env::new();
    let parent = env.json(
        "cert issue --ca ca --agent planner --scope tickets:read --aud spiffe://example.org/svc/search --out-dir p",
    );
    env.ok("revocations export --ca ca --out rev.jwt");
    let base = "p/grant.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem --revocations rev.jwt";
    let search = "--verifier spiffe://example.org/svc/search";

    // The audience names the search service: valid there, not at the default verifier.
    assert_eq!(
        env.verdict(&format!("{base} {search}"), 0)["verdict"]["valid"],
        true
    );
    assert_eq!(
        env.verdict(base, 3)["verdict"]["error"],
        "audience_mismatch"
    );
    // After the grant's expiry (peer certificate chain not checked, it has expired too).
    let late = parent["grant"]["exp"].as_u64().unwrap() + 3600;
    let danger = "--danger-unverified-peer-cert --danger-no-revocation";
    let r = env.verdict(&format!("{base} {search} --at {late} {danger}"), 3);
    assert_eq!(
        r["verdict"],
        json!({"valid": false, "error": "expired", "index": 0})
    );
    assert_eq!(
        r["danger_skipped"],
        json!(["revocation", "peer_certificate"]),
        "{r}"
    );
    env.fails(
        &format!("chain verify {base} --at {late}"),
        3,
        "peer certificate invalid",
    );
    // A broken chain is a verdict, not a crash.
    std::fs::write(env.path("bad.jwt"), "not-a-chain").unwrap();
    let r = env.verdict(
        "bad.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem --revocations rev.jwt",
        3,
    );
    assert_eq!(r["verdict"]["valid"], false);
    assert!(r["verdict"]["error"].is_string());
    // Bundles: PEM is not enough here, a bare one does not say whose it is, skew is capped.
    env.fails(
        "chain verify p/grant.jwt --bundle example.org=p/bundle.pem --peer-cert p/cert.pem",
        1,
        "needs a SPIFFE bundle",
    );
    env.fails(
        "chain verify p/grant.jwt --bundle p/bundle.json --peer-cert p/cert.pem",
        2,
        "write --bundle example.org=p/bundle.json if it is the bundle of example.org",
    );
    // A skew above the protocol's cap is a command-line mistake, not a verdict.
    env.fails(
        &format!("chain verify {base} {search} --skew 500"),
        2,
        "--skew",
    );
    env.fails(
        "chain verify p/grant.jwt --bundle other.org=p/bundle.json --peer-cert p/cert.pem",
        3,
        "no X.509 authority",
    );
}

/// Each widening case of spec/vectors/attenuation.json that `agentid delegate` can be asked for:
/// the command refuses it, with the code the verifier gives that vector, and writes nothing.
/// (`expiry_extended` cannot be asked for: `--ttl` is capped at the chain's expiry.)
#[test]
fn delegate_refuses_every_widening_with_the_verifiers_code() {
    let env = Env::new();
    let policy = format!(
        "{}\n[agents.reviewer]\nscopes = [\"tickets:*\"]\nrequesters = [\"parent:planner\"]\n",
        support::POLICY
    );
    std::fs::write(env.path("ca/policy.toml"), policy).unwrap();
    env.json(
        "cert issue --ca ca --agent planner --scope tickets:read --max-depth 2 \
         --aud spiffe://example.org/svc/search --limit requests=10 \
         --may-delegate-to spiffe://example.org/agent/summarizer --out-dir p",
    );
    env.child("p", "c");
    env.json("cert issue --ca ca --agent reviewer --parent p --out-dir r");
    let cases = [
        (
            "--scope tickets:write",
            "scope_escalation",
        ),
        ("--scope *", "scope_escalation"),
        (
            "--scope tickets:read --aud spiffe://example.org",
            "audience_escalation",
        ),
        (
            "--scope tickets:read --aud spiffe://example.org/svc/search --aud spiffe://partner.example",
            "audience_escalation",
        ),
        (
            "--scope tickets:read --limit requests=11",
            "limit_escalation",
        ),
        (
            "--scope tickets:read --may-delegate-to spiffe://example.org",
            "delegation_escalation",
        ),
        ("--scope tickets:read --max-depth 2", "depth_exceeded"),
    ];
    for (args, code) in cases {
        env.fails(&format!("{DELEGATE} {args} --out c/chain.jwt"), 1, code);
        assert!(!env.path("c/chain.jwt").exists(), "{args}: nothing written");
    }
    // A delegatee outside the grant's may_delegate_to.
    env.fails(
        "delegate --chain p/grant.jwt --key p/key.pem --to-cert r/cert.pem --bundle p/bundle.json --scope tickets:read",
        1,
        "delegatee_denied",
    );
    // To oneself.
    env.fails(
        "delegate --chain p/grant.jwt --key p/key.pem --to-cert p/cert.pem --bundle p/bundle.json --scope tickets:read",
        1,
        "self_delegation",
    );
    // Narrowing is accepted, and what is signed verifies.
    let v = env.json(&format!(
        "{DELEGATE} --scope tickets:read --limit requests=5 --aud spiffe://example.org/svc/search --max-depth 1 --out c/chain.jwt"
    ));
    let link = claims(v["chain"].as_str().unwrap(), 1);
    assert_eq!(link["limits"], json!({"requests": 5}));
    env.ok("revocations export --ca ca --out rev.jwt");
    let r = env.verdict(
        "c/chain.jwt --bundle example.org=c/bundle.json --peer-cert c/cert.pem --revocations rev.jwt \
         --verifier spiffe://example.org/svc/search --enforce-limit requests",
        0,
    );
    assert_eq!(r["verdict"]["limits"], json!({"requests": 5}));
    // The holder of that link cannot widen the list it inherited either.
    env.fails(
        "delegate --chain c/chain.jwt --key c/key.pem --to-cert r/cert.pem --bundle p/bundle.json --scope tickets:read",
        1,
        "delegatee_denied",
    );
}

/// Section 3.3: `now` is at most 2^53 - 1 (vector `input-now-above-max-safe-integer`:
/// `bad_config`). For the command, `--at` beyond it is a command-line mistake (status 2, as
/// `--skew 500`), never a verdict computed with it.
#[test]
fn chain_verify_at_outside_the_integer_range_is_a_usage_error() {
    let env = Env::new();
    env.json("cert issue --ca ca --agent planner --scope tickets:read --out-dir p");
    let base = "p/grant.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem \
                --danger-unverified-peer-cert --danger-no-revocation";
    // 2^53 - 1 is a time (long after the grant's expiry): a verdict.
    let r = env.verdict(&format!("{base} --at 9007199254740991"), 3);
    assert_eq!(
        r["verdict"],
        json!({"valid": false, "error": "expired", "index": 0})
    );
    for at in ["9007199254740992", "18446744073709551615"] {
        env.fails(&format!("chain verify {base} --at {at}"), 2, "--at");
    }
}

/// A `--danger-*` flag of `chain verify` turns off a check the verdict otherwise includes
/// (section 9: "its name MUST say it is dangerous"); a "valid" reached that way says so on
/// stderr at the default verbosity, with no `-v` and no `AGENTID_LOG`.
#[test]
fn chain_verify_danger_flags_warn_at_default_verbosity() {
    let env = Env::new();
    env.json("cert issue --ca ca --agent planner --scope tickets:read --out-dir p");
    let out = env.run(&[
        "chain",
        "verify",
        "p/grant.jwt",
        "--bundle",
        "example.org=p/bundle.json",
        "--peer-cert",
        "p/cert.pem",
        "--danger-no-revocation",
        "--danger-unverified-peer-cert",
        "--format",
        "text",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("valid: "));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for flag in ["--danger-no-revocation", "--danger-unverified-peer-cert"] {
        assert!(
            stderr.contains(flag),
            "no warning naming {flag}: {stderr:?}"
        );
    }
}
