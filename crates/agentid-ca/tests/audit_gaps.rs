//! `agentid audit verify` against whoever can write the database but does not hold the audit
//! key (spec/CA-API.md 4.2, 4.3): deleting checkpoints to rewrite what they covered is a break,
//! and so is a stored number no reader can convert.
//!
//! The CA signs a checkpoint in the same transaction as every 64th record of a writer, so a
//! chain of 64 or more records without one at each multiple of 64 is not a trail the CA wrote.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::path::Path;

use agentid_ca::audit::{self, RecordBody, GENESIS};
use agentid_ca::{KeyType, OpenTaskRequest, TaskRequester};
use agentid_protocol::{Algorithm, Scope};
use common::*;

fn planner() -> OpenTaskRequest {
    OpenTaskRequest::new(
        "planner",
        spki_key(Algorithm::Es256).1,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    )
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("ca.db")).unwrap()
}

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

    // The same rewrite with the checkpoints deleted (a plain DELETE, no key needed).
    db(t.path())
        .execute("DELETE FROM audit_checkpoints", [])
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
