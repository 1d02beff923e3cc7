//! Failures under `--format json`: stdout holds one document `{"error": {"code", "message",
//! "hint"}}` whose message is the stderr line and whose hint is the next step that line names;
//! the exit status is the same as in text. Verifications keep printing their own report.
#![cfg(test)]

mod support;

use serde_json::Value;
use support::Env;

/// Runs a failing command line; checks the status, the one stderr line, and that stdout is
/// one `{"error": ...}` document carrying the same message. Returns that `error` object.
fn json_error(env: &Env, line: &str, code: i32) -> Value {
    let (stdout, stderr_line) = env.fails(line, code, "");
    let doc: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    let err = doc["error"].clone();
    assert_eq!(doc.as_object().map(|o| o.len()), Some(1), "{doc}");
    assert_eq!(
        err["message"].as_str(),
        stderr_line.strip_prefix("agentid: "),
        "{doc}"
    );
    if let Some(hint) = err["hint"].as_str() {
        assert!(err["message"].as_str().unwrap().ends_with(hint), "{doc}");
    }
    err
}

#[test]
fn a_policy_refusal_of_cert_issue_is_a_json_error_naming_the_rule() {
    let env = Env::new();
    let err = json_error(
        &env,
        "cert issue --ca ca --agent ghost --scope x --out-dir g --format json",
        1,
    );
    assert_eq!(err["code"], "policy_refused");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("\"ghost\"") && message.contains("(rule agents.ghost)"));
    assert_eq!(
        err["hint"],
        "check the request against agents.ghost in the CA's policy.toml, or change that rule"
    );
    assert!(!env.path("g").exists(), "a refused issuance leaves nothing");
}

#[test]
fn a_wrong_ca_directory_is_a_json_error_saying_to_run_ca_init() {
    let env = Env::new();
    let err = json_error(
        &env,
        "cert issue --ca nope --agent planner --scope tickets:read --out-dir g --format json",
        1,
    );
    assert_eq!(err["code"], "not_a_ca_directory");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .starts_with("nope: no such CA directory"));
    assert_eq!(
        err["hint"],
        "run `agentid ca init --dir nope` first, or pass the directory it made"
    );

    std::fs::create_dir(env.path("agent")).unwrap();
    let err = json_error(&env, "revocations export --ca agent --format json", 1);
    assert_eq!(err["code"], "not_a_ca_directory");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("not a CA directory"));
    assert_eq!(
        err["hint"],
        "run `agentid ca init`, or pass the directory it made as --ca"
    );
}

#[test]
fn a_refused_revoke_is_a_json_error_with_its_next_step() {
    let env = Env::new();
    let err = json_error(&env, "revoke --ca ca --agent plannr --format json", 1);
    assert_eq!(err["code"], "unknown_agent");
    assert!(err["message"].as_str().unwrap().contains("\"plannr\""));
    assert_eq!(
        err["hint"],
        "check the name against the agent rules of ca/policy.toml (`agentid audit export --ca ca` lists every certificate this CA issued), or pass --force to block the name anyway"
    );
    // Not `agentid ca list`: it has no --ca DIR form (the CA service and a `list` permission).
    assert!(!err["hint"].as_str().unwrap().contains("ca list"));
}

#[test]
fn a_malformed_value_found_after_parsing_is_a_usage_json_error_with_status_2() {
    let env = Env::new();
    let err = json_error(
        &env,
        "cert issue --ca ca --agent planner --scope tickets:read --aud coder --out-dir o --format json",
        2,
    );
    assert_eq!(err["code"], "usage");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .starts_with("bad --aud \"coder\""));
    assert_eq!(err["hint"], Value::Null);
}

#[test]
fn clap_usage_errors_come_before_the_format_is_known_and_print_no_json() {
    let env = Env::new();
    let (stdout, _) = env.fails(
        "cert issue --ca ca --agent planner --scope tickets:read --ttl 5 --out-dir o --format json",
        2,
        "needs a unit",
    );
    assert_eq!(stdout, "");
}

#[test]
fn text_output_prints_nothing_on_stdout_when_a_command_fails() {
    let env = Env::new();
    let (stdout, _) = env.fails(
        "cert issue --ca ca --agent ghost --scope x --out-dir g",
        1,
        "policy",
    );
    assert_eq!(stdout, "");
}

#[test]
fn an_invalid_chain_verdict_is_the_report_unchanged_not_an_error_document() {
    let env = Env::new();
    env.planner("p");
    let report = env.verdict(
        "p/grant.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem --format json",
        3,
    );
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(report["verdict"]["valid"], false);
    assert_eq!(report["verdict"]["error"], "revocation_missing");
    assert!(report["message"]
        .as_str()
        .unwrap()
        .starts_with("chain invalid: "));

    // A chain file that cannot be read is no verdict: an error document, status 1 (JSON is
    // this command's default format).
    let err = json_error(
        &env,
        "chain verify absent.jwt --bundle example.org=p/bundle.json --peer-cert p/cert.pem",
        1,
    );
    assert_eq!(err["code"], "failed");
    assert!(err["message"].as_str().unwrap().contains("absent.jwt"));
}

#[test]
fn an_invalid_certificate_verdict_is_the_report_unchanged() {
    let env = Env::new();
    env.planner("p");
    let (stdout, line) = env.fails(
        "cert verify p/cert.pem --bundle example.org=p/bundle.json --at 2100-01-01T00:00:00Z --format json",
        3,
        "certificate invalid",
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        report.get("error").is_some_and(Value::is_string),
        "{report}"
    );
    assert_eq!(report["valid"], false);
    assert_eq!(report["message"].as_str(), line.strip_prefix("agentid: "));
}
