//! The audit record is part of the operation (a failed write fails it, the result is withheld),
//! and a revocation list's sequence number and entries are one snapshot.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::path::Path;
use std::time::Duration;

use agentid_ca::{
    CaError, CertificateAuthority, KeyType, OpenTaskRequest, RevokeTarget, TaskRequester,
};
use agentid_protocol::{Algorithm, Scope};
use base64::Engine as _;
use common::*;

fn planner_request() -> OpenTaskRequest {
    OpenTaskRequest::new(
        "planner",
        spki_key(Algorithm::Es256).1,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    )
}

/// Makes every audit write fail: `audit.jsonl` becomes a directory (append-open fails).
fn break_audit(dir: &Path) {
    let p = dir.join("audit.jsonl");
    if p.is_file() {
        std::fs::remove_file(&p).unwrap();
    }
    std::fs::create_dir(&p).unwrap();
}

fn repair_audit(dir: &Path) {
    std::fs::remove_dir(dir.join("audit.jsonl")).unwrap();
}

fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The claims of a compact revocation list (not verified: the CA just signed it).
fn list_claims(list: &str) -> serde_json::Value {
    let payload = list.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn revokes_agent(list: &str, name: &str) -> bool {
    let want = format!("spiffe://{TD}/agent/{name}");
    list_claims(list)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["agent"] == want.as_str())
}

#[test]
fn an_unwritable_audit_log_fails_issuance_and_withholds_the_certificate() {
    let t = test_ca(KeyType::P256);
    let before = t.ca.issuances().unwrap().len();
    break_audit(t.path());

    let e = t.ca.open_task(&planner_request(), now()).unwrap_err();
    assert!(matches!(e, CaError::AuditWrite(_)), "{e:?}");
    // Documented: the store row was committed before the audit write failed; the certificate
    // was never handed out (no record, no certificate for the caller).
    assert_eq!(t.ca.issuances().unwrap().len(), before + 1);

    // A refusal stays the refusal (the audit failure does not hide why).
    let mut denied = planner_request();
    denied.scope = Scope::parse("admin:all").unwrap();
    let e = t.ca.open_task(&denied, now()).unwrap_err();
    assert!(!matches!(e, CaError::AuditWrite(_)), "{e:?}");

    // Bootstrap tokens: the secret is not handed out without its record.
    let task = agentid_protocol::TaskId::parse("t-audit").unwrap();
    let e =
        t.ca.create_bootstrap_token("planner", Some(task), Duration::from_secs(300), now())
            .unwrap_err();
    assert!(matches!(e, CaError::AuditWrite(_)), "{e:?}");

    // With the log writable again, issuance works and is recorded.
    repair_audit(t.path());
    let creds = t.ca.open_task(&planner_request(), now()).unwrap();
    let lines = audit_lines(t.path());
    assert!(lines
        .iter()
        .any(|l| l["serial"] == creds.certificate.leaf.serial.as_str() && l["outcome"] == "ok"));
}

#[test]
fn an_unwritable_audit_log_fails_revocation_and_export_but_keeps_the_revocation() {
    let t = test_ca(KeyType::P256);
    t.ca.open_task(&planner_request(), now()).unwrap();
    let first = t.ca.revocation_list(now()).unwrap();
    let first_seq = list_claims(&first)["seq"].as_u64().unwrap();
    break_audit(t.path());

    let e =
        t.ca.revoke(
            &RevokeTarget::Agent("planner".into()),
            Some("compromised"),
            "operator",
            now(),
        )
        .unwrap_err();
    assert!(matches!(e, CaError::AuditWrite(_)), "{e:?}");
    // Kept: undoing a revocation because its log line failed would fail open.
    assert!(t
        .ca
        .revocations()
        .unwrap()
        .iter()
        .any(|r| r.value == "planner"));

    // The export fails too: no list is handed out without its record (its seq is consumed).
    let e = t.ca.revocation_list(now()).unwrap_err();
    assert!(matches!(e, CaError::AuditWrite(_)), "{e:?}");

    repair_audit(t.path());
    let list = t.ca.revocation_list(now()).unwrap();
    assert!(list_claims(&list)["seq"].as_u64().unwrap() > first_seq + 1);
    assert!(revokes_agent(&list, "planner"));
    assert!(!revokes_agent(&first, "planner"));
}

/// Finding: entries and `seq` were read in two statements, so another process's revocation
/// could commit between them and a higher `seq` could lack it. Another connection (as another
/// CA process would) holds the write lock with an uncommitted revocation while this CA exports:
/// the export must wait for it and then include it.
#[test]
fn revocation_list_entries_and_seq_are_one_snapshot() {
    let dir = make_ca_dir(KeyType::P256);
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let first = ca.revocation_list(now()).unwrap();
    let first_seq = list_claims(&first)["seq"].as_u64().unwrap();

    let other = rusqlite::Connection::open(dir.path().join("ca.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let exp = unix(now()) + 3600;
    other
        .execute(
            "INSERT INTO revocations (kind, value, exp, revoked_at, reason, requester) \
             VALUES ('agent', 'mallory', ?1, ?2, 'test', 'operator')",
            rusqlite::params![exp as i64, unix(now()) as i64],
        )
        .unwrap();

    let exporter = std::thread::spawn(move || {
        let list = ca.revocation_list(now()).unwrap();
        (ca, list)
    });
    // Let the exporter reach the store (it blocks on the write lock, busy timeout 10 s); the
    // outcome does not depend on how long this takes, only the old code's failure does.
    std::thread::sleep(Duration::from_millis(300));
    other.execute_batch("COMMIT").unwrap();
    let (_ca, list) = exporter.join().unwrap();

    assert!(list_claims(&list)["seq"].as_u64().unwrap() > first_seq);
    assert!(
        revokes_agent(&list, "mallory"),
        "a list with a higher seq must hold every entry committed before it"
    );
}
