//! The audit chain: one hash chain per writer with checkpoints signed by the audit key.
//! `audit::verify_dir` recomputes it; any edit, deletion or reordering of a record made
//! directly in SQLite, any forged or deleted checkpoint, and any stored number no reader can
//! convert, is found and named.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use agentid_ca::audit::{
    self, sign_checkpoint, AuditBreak, CheckpointClaims, ExportLine, RecordBody, GENESIS,
};
use agentid_ca::{CertificateAuthority, KeyType, OpenTaskRequest, RevokeTarget, TaskRequester};
use agentid_protocol::{Algorithm, AuthorityKey, Scope};
use common::*;

fn planner() -> OpenTaskRequest {
    OpenTaskRequest::new(
        "planner",
        spki_key(Algorithm::Es256).1,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    )
}

/// A CA with a few records of every kind: issuances, a refusal, a token, a revocation, a
/// publication, and a checkpoint in the middle of the chain.
fn busy_ca() -> TestCa {
    let t = test_ca(KeyType::P256);
    for _ in 0..3 {
        t.ca.open_task(&planner(), now()).unwrap();
    }
    let mut denied = planner();
    denied.scope = Scope::parse("admin:all").unwrap();
    t.ca.open_task(&denied, now()).unwrap_err();
    assert!(t.ca.checkpoint_audit(now(), true).unwrap().is_some());
    t.ca.create_bootstrap_token("planner", None, std::time::Duration::from_secs(60), now())
        .unwrap();
    t.ca.revoke(
        &RevokeTarget::Agent("worker".into()),
        None,
        "operator",
        now(),
    )
    .unwrap();
    t.ca.revocation_list(now()).unwrap();
    t.ca.open_task(&planner(), now()).unwrap();
    t
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("ca.db")).unwrap()
}

fn broken(dir: &Path) -> AuditBreak {
    audit::verify_dir(dir).unwrap().unwrap_err()
}

fn record_break(dir: &Path) -> (String, u64, String) {
    match broken(dir) {
        AuditBreak::Record {
            writer,
            seq,
            reason,
        } => (writer, seq, reason),
        other => panic!("expected a record break, got {other:?}"),
    }
}

#[test]
fn a_clean_store_verifies_with_every_issuance_recorded() {
    let t = busy_ca();
    let report = audit::verify_dir(t.path()).unwrap().unwrap();
    assert_eq!(report.chains.len(), 1);
    let chain = &report.chains[0];
    assert_eq!(chain.writer, audit::DEFAULT_WRITER);
    // 4 issuances, 1 refusal, 1 token, 1 revocation, 1 publication.
    assert_eq!(chain.records, 8);
    assert!(chain.checkpointed >= 4);
    assert_eq!(report.issuances, 4);
    assert_eq!(report.issuances, t.ca.issuances().unwrap().len() as u64);

    // Records link to each other from the genesis hash.
    let snap = t.ca.audit_snapshot(None).unwrap();
    let first: serde_json::Value = serde_json::from_str(&snap.records[0].body).unwrap();
    assert_eq!(first["prev"], GENESIS);
    for pair in snap.records.windows(2) {
        let next: serde_json::Value = serde_json::from_str(&pair[1].body).unwrap();
        assert_eq!(next["prev"], pair[0].hash.as_str());
    }
}

#[test]
fn an_edited_record_is_named() {
    let t = busy_ca();
    db(t.path())
        .execute(
            "UPDATE audit_records SET body = replace(body, '\"outcome\":\"denied\"', '\"outcome\":\"ok\"') WHERE seq = 4",
            [],
        )
        .unwrap();
    let (writer, seq, reason) = record_break(t.path());
    assert_eq!((writer.as_str(), seq), (audit::DEFAULT_WRITER, 4));
    assert!(reason.contains("edited"), "{reason}");
}

#[test]
fn an_edited_record_with_its_hash_recomputed_breaks_the_link_after_it() {
    let t = busy_ca();
    let c = db(t.path());
    let body: String = c
        .query_row("SELECT body FROM audit_records WHERE seq = 7", [], |r| {
            r.get(0)
        })
        .unwrap();
    let forged = body.replace("\"actor\":\"ca\"", "\"actor\":\"mallory\"");
    assert_ne!(forged, body);
    c.execute(
        "UPDATE audit_records SET body = ?1, hash = ?2 WHERE seq = 7",
        rusqlite::params![forged, audit::record_hash(&forged)],
    )
    .unwrap();
    let (_, seq, reason) = record_break(t.path());
    assert_eq!(seq, 8);
    assert!(reason.contains("link"), "{reason}");
}

#[test]
fn a_deleted_record_is_named() {
    let t = busy_ca();
    db(t.path())
        .execute("DELETE FROM audit_records WHERE seq = 3", [])
        .unwrap();
    let (_, seq, reason) = record_break(t.path());
    assert_eq!(seq, 3);
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn reordered_records_are_named() {
    let t = busy_ca();
    // Swap records 5 and 6 (their numbers), as someone hiding an order of events would.
    db(t.path())
        .execute_batch(
            "UPDATE audit_records SET seq = -1 WHERE seq = 5;
             UPDATE audit_records SET seq = 5 WHERE seq = 6;
             UPDATE audit_records SET seq = 6 WHERE seq = -1;",
        )
        .unwrap();
    let (_, seq, reason) = record_break(t.path());
    assert_eq!(seq, 5);
    assert!(reason.contains("moved"), "{reason}");
}

#[test]
fn a_deleted_tail_record_of_an_issuance_is_found() {
    let t = busy_ca();
    // The last record (an issuance, after the last checkpoint) removed: the chain itself still
    // links, but the store holds a certificate without its record.
    db(t.path())
        .execute("DELETE FROM audit_records WHERE seq = 8", [])
        .unwrap();
    assert!(
        matches!(broken(t.path()), AuditBreak::MissingIssuance { .. }),
        "{:?}",
        broken(t.path())
    );
}

#[test]
fn records_removed_after_a_checkpoint_are_found() {
    let t = busy_ca();
    t.ca.checkpoint_audit(now(), true).unwrap().unwrap();
    // Remove the last two records (a publication and an issuance) and their issuance row too.
    let c = db(t.path());
    c.execute("DELETE FROM audit_records WHERE seq >= 7", [])
        .unwrap();
    let last_serial: String = c
        .query_row(
            "SELECT serial FROM issuances ORDER BY rowid DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    c.execute(
        "DELETE FROM issuances WHERE serial = ?1",
        rusqlite::params![last_serial],
    )
    .unwrap();
    match broken(t.path()) {
        AuditBreak::Checkpoint { seq, reason, .. } => {
            assert_eq!(seq, 8);
            assert!(reason.contains("removed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// Whoever can write the database but does not hold the audit key can recompute every hash,
/// but not sign a checkpoint over the new head.
#[test]
fn a_forged_checkpoint_is_found() {
    let t = busy_ca();
    let c = db(t.path());
    let (seq, head): (i64, String) = c
        .query_row(
            "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mallory = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let claims = CheckpointClaims {
        iss: format!("spiffe://{TD}"),
        writer: audit::DEFAULT_WRITER.into(),
        seq: seq as u64,
        head: head.clone(),
        iat: unix(now()),
        revoked: None,
    };
    let jws = sign_checkpoint(&mallory, &claims).unwrap();
    c.execute(
        "INSERT INTO audit_checkpoints (writer, seq, head, iat, jws) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![audit::DEFAULT_WRITER, seq, head, claims.iat as i64, jws],
    )
    .unwrap();
    match broken(t.path()) {
        AuditBreak::Checkpoint {
            seq: at, reason, ..
        } => {
            assert_eq!(at, seq as u64);
            assert!(reason.contains("signature"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// CA-API 4.2: a checkpoint's protected header is exactly `{alg, typ}`; one with another member
/// (a `kid`, a `crit`, say), or with a member named twice (which a JSON parser reads as one,
/// though the header holds three), is not a checkpoint, even when the audit key signed it.
#[test]
fn a_checkpoint_whose_header_has_more_than_alg_and_typ_is_refused() {
    use base64::Engine as _;
    let key = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let claims = CheckpointClaims {
        iss: format!("spiffe://{TD}"),
        writer: audit::DEFAULT_WRITER.into(),
        seq: 1,
        head: "00".repeat(32),
        iat: 0,
        revoked: None,
    };
    let jws = sign_checkpoint(&key, &claims).unwrap();
    assert_eq!(
        audit::verify_checkpoint(&jws, key.public_key())
            .unwrap()
            .seq,
        1
    );
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let payload = jws.split('.').nth(1).unwrap();
    for header in [
        r#"{"alg":"ES256","typ":"agentid-audit-checkpoint+jwt","kid":"x"}"#,
        r#"{"alg":"ES256","typ":"agentid-audit-checkpoint+jwt","crit":["b64"],"b64":false}"#,
        r#"["ES256","agentid-audit-checkpoint+jwt"]"#,
        r#"{"alg":"ES256","typ":"agentid-audit-checkpoint+jwt","typ":"agentid-audit-checkpoint+jwt"}"#,
        r#"{"alg":"ES256","alg":"ES256","typ":"agentid-audit-checkpoint+jwt"}"#,
    ] {
        let input = format!("{}.{payload}", enc(header.as_bytes()));
        let sig = agentid_protocol::JwsSigner::sign(&key, input.as_bytes()).unwrap();
        let forged = format!("{input}.{}", enc(&sig));
        let e = audit::verify_checkpoint(&forged, key.public_key()).unwrap_err();
        assert!(e.contains("exactly {alg, typ}"), "{header}: {e}");
    }
}

#[test]
fn a_checkpoint_over_a_rewritten_head_is_found() {
    let t = busy_ca();
    // The genuine checkpoint's head no longer matches once its record is replaced by a
    // self-consistent forgery.
    let c = db(t.path());
    let cp_seq: i64 = c
        .query_row("SELECT max(seq) FROM audit_checkpoints", [], |r| r.get(0))
        .unwrap();
    c.execute("DELETE FROM audit_records WHERE seq >= ?1", [cp_seq])
        .unwrap();
    let prev: String = c
        .query_row(
            "SELECT hash FROM audit_records WHERE seq = ?1",
            [cp_seq - 1],
            |r| r.get(0),
        )
        .unwrap();
    let ev = agentid_ca::AuditEvent {
        ts: unix(now()),
        kind: "issue.task".into(),
        actor: "operator".into(),
        outcome: "denied".into(),
        ..Default::default()
    };
    let body = audit::record_body(audit::DEFAULT_WRITER, cp_seq as u64, &prev, &ev).unwrap();
    c.execute(
        "INSERT INTO audit_records (writer, seq, ts, body, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            audit::DEFAULT_WRITER,
            cp_seq,
            ev.ts as i64,
            body,
            audit::record_hash(&body)
        ],
    )
    .unwrap();
    // Issuance rows whose records went are removed too, so only the checkpoint can tell.
    c.execute(
        "DELETE FROM issuances WHERE rowid > (SELECT value FROM meta WHERE key = 'audit_issuances_from') + 3",
        [],
    )
    .unwrap();
    match broken(t.path()) {
        AuditBreak::Checkpoint { seq, reason, .. } => {
            assert_eq!(seq, cp_seq as u64);
            assert!(reason.contains("not the one it signed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn checkpoints_follow_the_chain_by_count() {
    let t = test_ca(KeyType::P256);
    let n = audit::CHECKPOINT_EVERY as usize + 2;
    for _ in 0..n {
        t.ca.open_task(&planner(), now()).unwrap();
    }
    let snap = t.ca.audit_snapshot(None).unwrap();
    assert!(snap
        .checkpoints
        .iter()
        .any(|c| c.seq >= audit::CHECKPOINT_EVERY));
    audit::verify_dir(t.path()).unwrap().unwrap();
}

#[test]
fn export_writes_records_and_checkpoints_as_json_lines() {
    let t = busy_ca();
    let mut out = Vec::new();
    let n = audit::export_dir(t.path(), None, &mut out).unwrap();
    let lines: Vec<ExportLine> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, n);
    let records: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            ExportLine::Record { body, text, hash } => {
                assert_eq!(&audit::record_hash(text), hash);
                Some((body, hash))
            }
            ExportLine::Checkpoint { .. } | ExportLine::Base { .. } => None,
        })
        .collect();
    assert_eq!(records.len(), 8);
    // An exported record re-serializes to the bytes its hash covers.
    for (body, hash) in &records {
        assert_eq!(
            &audit::record_hash(&serde_json::to_string(body).unwrap()),
            *hash
        );
    }
    assert!(lines
        .iter()
        .any(|l| matches!(l, ExportLine::Checkpoint { .. })));

    // --since: only records at or after the time.
    let mut out = Vec::new();
    audit::export_dir(t.path(), Some(unix(now()) + 3600), &mut out).unwrap();
    assert!(!String::from_utf8(out)
        .unwrap()
        .contains("\"type\":\"record\""));
}

fn fixture_dir(dir: &tempfile::TempDir) -> PathBuf {
    // A CA directory whose store was made by the code before the audit chain (schema 0).
    let ca = make_ca_dir(KeyType::P256);
    let d = dir.path().join("ca");
    std::fs::create_dir(&d).unwrap();
    for f in std::fs::read_dir(ca.path()).unwrap() {
        let f = f.unwrap();
        if f.file_name() != "ca.db" && !f.file_name().to_string_lossy().starts_with("ca.db-") {
            std::fs::copy(f.path(), d.join(f.file_name())).unwrap();
        }
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema-v0/ca.db");
    std::fs::copy(src, d.join("ca.db")).unwrap();
    d
}

/// Issuances made before the chain existed are not asked for records; the chain starts there.
#[test]
fn an_upgraded_store_verifies_and_chains_from_the_upgrade() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_dir(&tmp);
    let report = audit::verify_dir(&dir).unwrap().unwrap();
    assert_eq!(report.issuances, 0);
    let ca = CertificateAuthority::open(&dir).unwrap();
    assert_eq!(ca.issuances().unwrap().len(), 2);
    ca.open_task(&planner(), now()).unwrap();
    let report = audit::verify_dir(&dir).unwrap().unwrap();
    assert_eq!(report.issuances, 1);
}

/// Replicas each keep their own chain on a shared store; both verify, and a break in one is
/// named with its writer.
#[test]
fn each_writer_has_its_own_chain() {
    let t = busy_ca();
    // A second CA process on the same store, writing its own chain (with its checkpoint at
    // record 1, signed with the same audit key).
    let b = CertificateAuthority::open_as(t.path(), "replica-b").unwrap();
    for i in 0..3 {
        b.revoke(
            &RevokeTarget::Agent(format!("attempt{i}")),
            None,
            "operator",
            now(),
        )
        .unwrap();
        t.ca.open_task(&planner(), now()).unwrap();
    }
    let report = audit::verify_dir(t.path()).unwrap().unwrap();
    let chains: Vec<(&str, u64)> = report
        .chains
        .iter()
        .map(|c| (c.writer.as_str(), c.records))
        .collect();
    assert_eq!(chains, vec![(audit::DEFAULT_WRITER, 11), ("replica-b", 3)]);

    db(t.path())
        .execute(
            "UPDATE audit_records SET body = replace(body, 'attempt1', 'attempt9') WHERE writer = 'replica-b' AND seq = 2",
            [],
        )
        .unwrap();
    let (writer, seq, _) = record_break(t.path());
    assert_eq!((writer.as_str(), seq), ("replica-b", 2));
}

// ---- Whoever can write the database but holds no audit key (CA-API.md 4.2, 4.3): deleting
// checkpoints to rewrite what they covered is a break, and so is a stored number no reader
// can convert. The CA signs a checkpoint in the same transaction as every 64th record of a
// writer, so a chain of 64 or more records without one at each multiple of 64 is not a trail
// the CA wrote.

/// Rewrites record `at` of the `main` chain (its actor becomes `mallory`) and re-links every
/// record after it, recomputing each hash: what someone with write access to the database
/// but without the audit key can do.
fn rewrite_from(dir: &Path, at: i64) {
    let c = db(dir);
    let rows: Vec<(i64, String)> = c
        .prepare("SELECT seq, body FROM audit_records WHERE writer = 'main' ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = GENESIS.to_owned();
    for (seq, body) in rows {
        let mut rb: RecordBody = serde_json::from_str(&body).unwrap();
        if seq < at {
            prev = audit::record_hash(&body);
            continue;
        }
        if seq == at {
            rb.event.actor = "mallory".into();
        }
        let new_body = audit::record_body(&rb.writer, rb.seq, &prev, &rb.event).unwrap();
        let h = audit::record_hash(&new_body);
        c.execute(
            "UPDATE audit_records SET body = ?1, hash = ?2 WHERE writer = 'main' AND seq = ?3",
            rusqlite::params![new_body, h, seq],
        )
        .unwrap();
        prev = h;
    }
}

/// A chain of 70 records, checkpointed by the CA (with record 64, CA-API 4.2), rewritten from
/// record 3 on (every hash recomputed) and with its checkpoints deleted, does not verify: the
/// checkpoint of record 64 is missing.
#[test]
fn a_rewritten_chain_whose_checkpoints_were_deleted_does_not_verify() {
    let t = test_ca(KeyType::P256);
    for _ in 0..70 {
        t.ca.open_task(&planner(), now()).unwrap();
    }
    let snap = t.ca.audit_snapshot(None).unwrap();
    assert!(snap.records.len() >= 70);
    assert!(
        snap.checkpoints
            .iter()
            .any(|c| c.seq >= audit::CHECKPOINT_EVERY),
        "the CA checkpointed the chain by count"
    );
    audit::verify_dir(t.path()).unwrap().unwrap();

    // Control: with the checkpoints in place, the rewrite is found.
    rewrite_from(t.path(), 3);
    assert!(
        audit::verify_dir(t.path()).unwrap().is_err(),
        "the checkpoint catches the rewrite"
    );

    // The same rewrite with the checkpoints it would break deleted (a plain DELETE, no key
    // needed; the one of record 1 still matches).
    db(t.path())
        .execute("DELETE FROM audit_checkpoints WHERE seq > 1", [])
        .unwrap();
    let verdict = audit::verify_dir(t.path()).unwrap();
    assert!(
        matches!(&verdict, Err(audit::AuditBreak::Checkpoint { writer, seq: 64, .. }) if writer == "main"),
        "a {}-record chain with its record 3 rewritten and no checkpoint at all: {verdict:?}",
        snap.records.len()
    );
}

/// The tail variant: with every checkpoint above record 64 deleted, the chain runs more than 64
/// records past its last one, which a CA following 4.2 never leaves: a break at record 128.
#[test]
fn a_chain_without_its_checkpoint_at_each_multiple_of_64_does_not_verify() {
    let t = test_ca(KeyType::P256);
    for _ in 0..140 {
        t.ca.open_task(&planner(), now()).unwrap();
    }
    let c = db(t.path());
    let (n, last_cp): (i64, i64) = c
        .query_row(
            "SELECT (SELECT max(seq) FROM audit_records WHERE writer = 'main'), \
                    (SELECT max(seq) FROM audit_checkpoints WHERE writer = 'main')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        n >= 140 && last_cp >= 128,
        "n {n}, last checkpoint {last_cp}"
    );
    // Keep only checkpoints up to 64: the chain now runs > 64 records past its last one.
    c.execute("DELETE FROM audit_checkpoints WHERE seq > 64", [])
        .unwrap();
    let verdict = audit::verify_dir(t.path()).unwrap();
    assert!(
        matches!(&verdict, Err(audit::AuditBreak::Checkpoint { writer, seq: 128, .. }) if writer == "main"),
        "a chain of {n} records whose checkpoints above record 64 were deleted: {verdict:?}"
    );
}

/// CA-API 4.3: "The verifier reports the first break with its writer and record number and
/// exits with status 3." A record row edited to a value the store's reader cannot convert (a
/// negative `seq`, as a plain `UPDATE` makes) is such a break, naming the record it left
/// missing, not a failure to read the store (another exit status, no record named).
#[test]
fn a_record_with_a_negative_column_is_a_named_break_not_a_read_failure() {
    let t = test_ca(KeyType::P256);
    for _ in 0..3 {
        t.ca.open_task(&planner(), now()).unwrap();
    }
    db(t.path())
        .execute(
            "UPDATE audit_records SET seq = -2 WHERE writer = 'main' AND seq = 2",
            [],
        )
        .unwrap();
    match audit::verify_dir(t.path()) {
        Ok(Err(audit::AuditBreak::Record { writer, seq, .. })) => {
            assert_eq!((writer.as_str(), seq), ("main", 2));
        }
        Ok(other) => panic!("expected a break at record 2, got {other:?}"),
        Err(e) => panic!(
            "the tampered record made verify_dir fail as a read error (not exit status 3, no \
             record named): {e}"
        ),
    }
}

/// SQLite keeps any type in any column, so a plain `UPDATE` can store a record's body as a blob,
/// its `seq` as text or its `ts` as a real. Each is a named break at that record (exit status 3),
/// not a failure to read the store; a column whose bytes are unchanged (a blob of the same
/// text) is not an edit of the record.
#[test]
fn a_record_column_of_another_type_is_a_named_break_not_a_read_failure() {
    for (edit, at) in [
        (
            "UPDATE audit_records SET body = X'7b7d' WHERE writer = 'main' AND seq = 2",
            2,
        ),
        (
            "UPDATE audit_records SET seq = 'two' WHERE writer = 'main' AND seq = 2",
            2,
        ),
        (
            "UPDATE audit_records SET hash = X'00ff' WHERE writer = 'main' AND seq = 3",
            3,
        ),
        (
            "UPDATE audit_records SET ts = 1.5 WHERE writer = 'main' AND seq = 2",
            2,
        ),
    ] {
        let t = test_ca(KeyType::P256);
        for _ in 0..3 {
            t.ca.open_task(&planner(), now()).unwrap();
        }
        db(t.path()).execute(edit, []).unwrap();
        match audit::verify_dir(t.path()) {
            Ok(Err(audit::AuditBreak::Record { writer, seq, .. })) => {
                assert_eq!((writer.as_str(), seq), ("main", at), "{edit}");
            }
            Ok(other) => panic!("{edit}: expected a break at record {at}, got {other:?}"),
            Err(e) => panic!("{edit}: verify_dir failed as a read error: {e}"),
        }
    }
    let t = test_ca(KeyType::P256);
    t.ca.open_task(&planner(), now()).unwrap();
    db(t.path())
        .execute(
            "UPDATE audit_records SET body = CAST(body AS BLOB) WHERE writer = 'main' AND seq = 1",
            [],
        )
        .unwrap();
    audit::verify_dir(t.path()).unwrap().unwrap();
}

/// The store streams the records in chain order (CA-API 4.3): a row only an edit makes (its
/// writer a blob, its seq negative) is visited where chain order puts it, as when the trail
/// was read whole and sorted. A writer stored as a blob of the same text is the same chain,
/// unchanged; a negative seq in the middle of a chain is the gap it leaves, there.
#[test]
fn rows_only_an_edit_makes_are_checked_where_chain_order_puts_them() {
    if postgres_under_test() {
        // SQLite keeps any type in any column; PostgreSQL's columns are typed.
        return;
    }
    let t = test_ca(KeyType::P256);
    for _ in 0..5 {
        t.ca.open_task(&planner(), now()).unwrap();
    }
    db(t.path())
        .execute(
            "UPDATE audit_records SET writer = CAST(writer AS BLOB) WHERE writer = 'main' AND seq = 2",
            [],
        )
        .unwrap();
    audit::verify_dir(t.path()).unwrap().unwrap();
    let mut out = Vec::new();
    audit::export_dir(t.path(), None, &mut out).unwrap();
    let seqs: Vec<u64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "record")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "exported in chain order");
    db(t.path())
        .execute(
            "UPDATE audit_records SET seq = -3 WHERE writer = 'main' AND seq = 3",
            [],
        )
        .unwrap();
    match broken(t.path()) {
        AuditBreak::Record {
            writer,
            seq,
            reason,
        } => {
            assert_eq!((writer.as_str(), seq), ("main", 3), "{reason}");
            assert!(
                reason.contains("missing (the next record stored is 4)"),
                "{reason}"
            );
        }
        other => panic!("expected the gap at record 3, got {other:?}"),
    }
}

// ---- Red team (audit): what a database writer without the audit key can add.

/// Writes a chain for `writer` straight into the database, each hash recomputed: what someone
/// with write access to the store but without the audit key can do.
fn forge_chain(dir: &Path, writer: &str, n: u64) {
    let c = db(dir);
    let mut prev = GENESIS.to_owned();
    for seq in 1..=n {
        let ev = agentid_ca::AuditEvent {
            ts: unix(now()),
            kind: "revoke".into(),
            actor: "operator".into(),
            subject: Some("spiffe://example.org/agent/innocent".into()),
            outcome: "ok".into(),
            reason: Some("made up".into()),
            ..Default::default()
        };
        let body = audit::record_body(writer, seq, &prev, &ev).unwrap();
        let h = audit::record_hash(&body);
        c.execute(
            "INSERT INTO audit_records (writer, seq, ts, body, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![writer, seq as i64, ev.ts as i64, body, h],
        )
        .unwrap();
        prev = h;
    }
}

/// A second writer's chain made up in the database is not a trail the CA wrote: the CA signs
/// a checkpoint with every writer's record 1, which nobody without the audit key can make.
/// (Before, any number of made-up writers of up to 63 records each verified.)
#[test]
fn a_made_up_writer_chain_does_not_verify() {
    for n in [1, 3, audit::CHECKPOINT_EVERY - 1] {
        let t = busy_ca();
        forge_chain(t.path(), "replica-x", n);
        match broken(t.path()) {
            AuditBreak::Checkpoint { writer, seq, .. } => {
                assert_eq!((writer.as_str(), seq), ("replica-x", 1), "{n} records");
            }
            other => {
                panic!("{n} records: expected the missing checkpoint of record 1, got {other:?}")
            }
        }
    }
}

/// An export carries each record's stored text, the exact bytes its hash covers, so an
/// offline checker hashes what it reads (CA-API 4.4). Before, the export held only the parsed
/// fields: a record whose stored text is not this version's compact serialization (another
/// field, spacing: another version's writer, or an edit of the unprotected head) verified in
/// the store, but its export dropped what the hash covered and could not be checked.
#[test]
fn an_exported_record_carries_the_text_its_hash_covers() {
    let t = busy_ca();
    let snap = t.ca.audit_snapshot(None).unwrap();
    let last = snap.records.last().unwrap();
    let ts = unix(now());
    let body = format!(
        "{{\"writer\": \"main\", \"seq\": {}, \"prev\": \"{}\", \"ts\": {ts}, \"kind\": \"revoke\", \
         \"actor\": \"operator\", \"subject\": \"agent:worker\", \"task\": null, \"serial\": null, \
         \"jti\": null, \"outcome\": \"ok\", \"reason\": null, \"note\": \"kept\"}}",
        last.seq + 1,
        last.hash
    );
    db(t.path())
        .execute(
            "INSERT INTO audit_records (writer, seq, ts, body, hash) VALUES ('main', ?1, ?2, ?3, ?4)",
            rusqlite::params![(last.seq + 1) as i64, ts as i64, body, audit::record_hash(&body)],
        )
        .unwrap();
    audit::verify_dir(t.path()).unwrap().unwrap();
    let mut out = Vec::new();
    audit::export_dir(t.path(), None, &mut out).unwrap();
    let mut records = 0;
    for line in String::from_utf8(out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] != "record" {
            continue;
        }
        records += 1;
        let text = v["body"]
            .as_str()
            .unwrap_or_else(|| panic!("an exported record without its stored text: {line}"));
        assert_eq!(
            audit::record_hash(text),
            v["hash"].as_str().unwrap(),
            "{line}"
        );
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        for (k, x) in parsed.as_object().unwrap() {
            if v.get(k).is_some() {
                assert_eq!(&v[k], x, "{line}");
            }
        }
    }
    assert_eq!(records, snap.records.len() + 1);
}

/// CA-API 4.3 cross-checks the certificates table both ways: an `ok` issuance record whose
/// serial the store never issued (made up after the last checkpoint, where the chain's links
/// can be recomputed) is a break naming that record. Before, only the other direction (a
/// certificate without its record) was checked.
#[test]
fn an_issuance_record_for_a_certificate_never_issued_is_named() {
    let t = busy_ca();
    let snap = t.ca.audit_snapshot(None).unwrap();
    let last = snap.records.last().unwrap();
    let ev = agentid_ca::AuditEvent {
        ts: unix(now()),
        kind: "issue.task".into(),
        actor: "operator".into(),
        subject: Some("spiffe://example.org/agent/planner/task/made-up".into()),
        task: Some("made-up".into()),
        serial: Some("0badc0ffee0badc0ffee0badc0ffee00".into()),
        outcome: "ok".into(),
        ..Default::default()
    };
    let seq = last.seq + 1;
    let body = audit::record_body("main", seq, &last.hash, &ev).unwrap();
    db(t.path())
        .execute(
            "INSERT INTO audit_records (writer, seq, ts, body, hash) VALUES ('main', ?1, ?2, ?3, ?4)",
            rusqlite::params![seq as i64, ev.ts as i64, body, audit::record_hash(&body)],
        )
        .unwrap();
    let (writer, at, reason) = record_break(t.path());
    assert_eq!((writer.as_str(), at), ("main", seq), "{reason}");
    assert!(reason.contains("0badc0ffee"), "{reason}");
}

/// `export --since` writes each writer's chain from its first record at or after the time on,
/// without gaps: a record stamped earlier than its predecessor (the CA's clock stepped back, or
/// a replica's clock behind) is not left out of the middle, so the export still links and an
/// offline checker can follow it (CA-API 4.4). Before, such a record was skipped and the
/// export had a hole no checker could tell from a deletion.
#[test]
fn export_since_keeps_each_chain_contiguous_when_the_clock_stepped_back() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    let back = t0 - std::time::Duration::from_secs(100);
    t.ca.open_task(&planner(), back).unwrap();
    t.ca.open_task(&planner(), t0).unwrap();
    t.ca.open_task(&planner(), back).unwrap(); // the clock stepped back
    t.ca.open_task(&planner(), t0).unwrap();
    audit::verify_dir(t.path()).unwrap().unwrap();
    let mut out = Vec::new();
    audit::export_dir(t.path(), Some(unix(t0) - 50), &mut out).unwrap();
    let seqs: Vec<u64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "record")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3, 4]);
}

/// A checkpoint's `iat` column (what the CA reads to decide when the next timed checkpoint is
/// due) set into the future, so that no timed checkpoint is written again and the head stays
/// unsigned longer, is a break: the columns must be what the checkpoint signs.
#[test]
fn a_checkpoint_whose_iat_column_was_moved_is_named() {
    let t = busy_ca();
    db(t.path())
        .execute(
            "UPDATE audit_checkpoints SET iat = iat + 1000000000 WHERE writer = 'main' AND seq = 4",
            [],
        )
        .unwrap();
    match broken(t.path()) {
        AuditBreak::Checkpoint {
            writer,
            seq,
            reason,
        } => {
            assert_eq!((writer.as_str(), seq), ("main", 4), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// A revocation's row deleted from the store (by whoever can write the database, without the
/// audit key) undoes the revocation: the CA issues to the revoked agent again and the next
/// list leaves it out. Its `ok` record, under a checkpoint, still says it was revoked, and
/// `audit verify` names that record (CA-API 4.3), as it names an `ok` issuance whose
/// certificate's row is gone. Before, the trail verified.
#[test]
fn a_revocation_whose_row_was_deleted_is_named_by_its_record() {
    revocation_changed_in_the_store_is_named_by_its_record(
        "DELETE FROM revocations WHERE kind = 'agent' AND value = 'worker'",
    );
}

/// `busy_ca` with every record under a signed checkpoint, then `sql` run on its store (it must
/// change the revocation of agent `worker`): `audit verify` names the `ok` revoke record.
fn revocation_changed_in_the_store_is_named_by_its_record(sql: &str) {
    let t = busy_ca();
    t.ca.checkpoint_audit(now(), true).unwrap();
    audit::verify_dir(t.path()).unwrap().unwrap();
    let revoked = audit_records(&t.ca)
        .into_iter()
        .find(|r| r["kind"] == "revoke" && r["outcome"] == "ok")
        .unwrap();
    assert_eq!(revoked["subject"], "agent:worker");
    let n = db(t.path()).execute(sql, []).unwrap();
    assert_eq!(n, 1);
    let (writer, at, reason) = record_break(t.path());
    assert_eq!(
        (writer.as_str(), at),
        ("main", revoked["seq"].as_u64().unwrap()),
        "{reason}"
    );
    assert!(reason.contains("agent:worker"), "{reason}");
}

/// A revocation's `exp` lowered in the store (by whoever can write the database, without the
/// audit key) takes the entry off every list published after it: verifiers accept what it
/// revoked again. Its `ok` record carries the `exp` the entry had when it committed (an
/// entry's `exp` only rises), and `audit verify` names the record whose entry now ends
/// earlier (CA-API 4.3). Before, the trail verified.
#[test]
fn a_revocation_whose_exp_was_lowered_is_named_by_its_record() {
    revocation_changed_in_the_store_is_named_by_its_record(
        "UPDATE revocations SET exp = 1 WHERE kind = 'agent' AND value = 'worker'",
    );
}

/// A revocation's `exp` set to a negative number in the store: the CA and the lists read the
/// entry as ended long ago (the target is accepted again), so `audit verify` must name the
/// record, not read the number as "never ends" (a stored number no `u64` holds read as
/// `u64::MAX`, as it is for a record's `seq`, held the entry in force for ever). Before, the
/// trail verified.
#[test]
fn a_revocation_whose_exp_was_made_negative_is_named_by_its_record() {
    revocation_changed_in_the_store_is_named_by_its_record(
        "UPDATE revocations SET exp = -1 WHERE kind = 'agent' AND value = 'worker'",
    );
}

/// A principal's revocation moved in the store to a row whose `kind` holds the start of its
/// value (`kind` `principal:{"email"`, `value` the rest): the CA looks the principal up by
/// `kind = 'principal'` and no longer finds it revoked, yet `kind:value` reads the same.
/// `audit verify` must not take that row for the revocation its record made. Before, the
/// trail verified.
#[test]
fn a_revocation_moved_to_a_kind_holding_part_of_its_value_is_named_by_its_record() {
    let t = busy_ca();
    let principal = serde_json::json!({"format": "email", "email": "a@example.org"});
    t.ca.revoke(&RevokeTarget::Principal(principal), None, "operator", now())
        .unwrap();
    t.ca.checkpoint_audit(now(), true).unwrap();
    audit::verify_dir(t.path()).unwrap().unwrap();
    let revoked = principal_revoke_records(&t.ca).remove(0);
    let n = db(t.path())
        .execute(
            "UPDATE revocations SET kind = 'principal:' || substr(value, 1, instr(value, ':') - 1),
                    value = substr(value, instr(value, ':') + 1)
              WHERE kind = 'principal'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    let (writer, at, reason) = record_break(t.path());
    assert_eq!(
        (writer.as_str(), at),
        ("main", revoked["seq"].as_u64().unwrap()),
        "{reason}"
    );
    assert!(reason.contains("principal:"), "{reason}");
}

/// A principal's revocation cut short in the store (its `exp` lowered): the CA and the task
/// openings read the principal's row until its `exp`, so a lowered one lets the principal's
/// new tasks through sooner. Its record carries the `exp` it was stored with, as every `ok`
/// revoke record does, and verification names it. Before, the record carried none and the
/// trail verified.
#[test]
fn a_principal_revocation_cut_short_is_named_by_its_record() {
    let t = busy_ca();
    let principal = serde_json::json!({"format": "email", "email": "a@example.org"});
    t.ca.revoke(&RevokeTarget::Principal(principal), None, "operator", now())
        .unwrap();
    t.ca.checkpoint_audit(now(), true).unwrap();
    audit::verify_dir(t.path()).unwrap().unwrap();
    let revoked = principal_revoke_records(&t.ca).remove(0);
    assert!(revoked["exp"].as_u64().is_some(), "{revoked}");
    let n = db(t.path())
        .execute(
            "UPDATE revocations SET exp = 1 WHERE kind = 'principal'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    let (writer, at, reason) = record_break(t.path());
    assert_eq!(
        (writer.as_str(), at),
        ("main", revoked["seq"].as_u64().unwrap()),
        "{reason}"
    );
    assert!(reason.contains("was lowered"), "{reason}");
}

/// A task entry a principal's revocation expanded to, deleted from the store: the lists then
/// leave the task out and its live sessions go on. The principal's record names each task entry
/// with its `exp`, and verification holds each as a revocation of its own. Before, the tasks
/// were named in the record's reason only, and the trail verified.
#[test]
fn a_task_entry_of_a_principal_revocation_deleted_is_named_by_its_record() {
    let revoked = || {
        let t = busy_ca();
        let principal = serde_json::json!({"format": "email", "email": "a@example.org"});
        let mut req = planner();
        req.principal = Some(principal.clone());
        t.ca.open_task(&req, now()).unwrap();
        t.ca.revoke(&RevokeTarget::Principal(principal), None, "operator", now())
            .unwrap();
        t.ca.checkpoint_audit(now(), true).unwrap();
        audit::verify_dir(t.path()).unwrap().unwrap();
        let seq = principal_revoke_records(&t.ca)
            .first()
            .and_then(|r| r["seq"].as_u64())
            .unwrap();
        (t, seq)
    };
    for edit in [
        "DELETE FROM revocations WHERE kind = 'task'",
        "UPDATE revocations SET exp = 1 WHERE kind = 'task'",
    ] {
        let (t, seq) = revoked();
        let n = db(t.path()).execute(edit, []).unwrap();
        assert_eq!(n, 1, "{edit}");
        let (writer, at, reason) = record_break(t.path());
        assert_eq!((writer.as_str(), at), ("main", seq), "{edit}: {reason}");
        assert!(reason.contains("task:"), "{edit}: {reason}");
    }
}
