//! The audit record is part of the operation's transaction (a failed write fails it and nothing
//! is stored), and a revocation list's sequence number and entries are one snapshot.
#![cfg(test)]
#![allow(missing_docs)]

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

/// Makes every audit append fail inside the store (as a full disk or a broken table would).
fn break_audit(dir: &Path) {
    rusqlite::Connection::open(dir.join("ca.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER break_audit BEFORE INSERT ON audit_records \
             BEGIN SELECT RAISE(ABORT, 'audit broken'); END;",
        )
        .unwrap();
}

fn repair_audit(dir: &Path) {
    rusqlite::Connection::open(dir.join("ca.db"))
        .unwrap()
        .execute_batch("DROP TRIGGER break_audit")
        .unwrap();
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

/// No record, no certificate: the audit record is written in the issuance's own transaction,
/// so when it cannot be written nothing is issued, stored or handed out.
#[test]
fn an_unwritable_audit_record_fails_issuance_and_stores_nothing() {
    let t = test_ca(KeyType::P256);
    let before = t.ca.issuances().unwrap().len();
    break_audit(t.path());

    let e = t.ca.open_task(&planner_request(), now()).unwrap_err();
    assert!(matches!(e, CaError::Store(_)), "{e:?}");
    assert_eq!(t.ca.issuances().unwrap().len(), before);

    // A refusal stays the refusal (the audit failure does not hide why).
    let mut denied = planner_request();
    denied.scope = Scope::parse("admin:all").unwrap();
    let e = t.ca.open_task(&denied, now()).unwrap_err();
    assert!(matches!(e, CaError::Policy { .. }), "{e:?}");

    // Bootstrap tokens: neither stored nor handed out without their record.
    let task = agentid_protocol::TaskId::parse("t-audit").unwrap();
    t.ca.create_bootstrap_token("planner", Some(task), Duration::from_secs(300), now())
        .unwrap_err();
    let tokens: i64 = rusqlite::Connection::open(t.path().join("ca.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM bootstrap_tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tokens, 0);

    // With the chain writable again, issuance works and is recorded with its serial.
    repair_audit(t.path());
    let creds = t.ca.open_task(&planner_request(), now()).unwrap();
    assert!(audit_records(&t.ca)
        .iter()
        .any(|l| l["serial"] == creds.certificate.leaf.serial.as_str()
            && l["outcome"] == "ok"
            && l["kind"] == "issue.task"));
    // The refusal made while the chain was broken is not there; the one after is.
    let mut denied = planner_request();
    denied.scope = Scope::parse("admin:all").unwrap();
    t.ca.open_task(&denied, now()).unwrap_err();
    assert!(audit_records(&t.ca)
        .iter()
        .any(|l| l["kind"] == "issue.task" && l["outcome"] == "denied"));
}

/// A revocation and a list publication are committed with their records or not at all: the
/// caller gets an error and can retry (nothing is silently half-done).
#[test]
fn an_unwritable_audit_record_fails_revocation_and_publication_atomically() {
    let t = test_ca(KeyType::P256);
    t.ca.open_task(&planner_request(), now()).unwrap();
    // Every publication at one time: a `seq` is at least the time's milliseconds, so that
    // one used up would show as a gap.
    let at = now();
    let first = t.ca.revocation_list(at).unwrap();
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
    assert!(matches!(e, CaError::Store(_)), "{e:?}");
    assert!(!t
        .ca
        .revocations()
        .unwrap()
        .iter()
        .any(|r| r.value == "planner"));
    // The publication fails too, and consumes no seq.
    t.ca.revocation_list(at).unwrap_err();
    assert_eq!(t.ca.latest_published().unwrap().unwrap().seq, first_seq);

    repair_audit(t.path());
    t.ca.revoke(
        &RevokeTarget::Agent("planner".into()),
        Some("compromised"),
        "operator",
        now(),
    )
    .unwrap();
    let list = t.ca.revocation_list(at).unwrap();
    assert_eq!(list_claims(&list)["seq"].as_u64().unwrap(), first_seq + 1);
    assert!(revokes_agent(&list, "planner"));
    assert!(!revokes_agent(&first, "planner"));
    let records = audit_records(&t.ca);
    assert!(records
        .iter()
        .any(|l| l["kind"] == "revoke" && l["subject"] == "agent:planner"));
    assert!(records.iter().any(|l| l["kind"] == "revocations.publish"
        && l["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("seq {}", first_seq + 1))));
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
