//! `agentid audit verify` and `agentid audit export` on a CA directory the CLI used.
#![cfg(test)]
#![allow(missing_docs)]

mod support;

use serde_json::Value;
use support::Env;

/// A CA with two tasks, a child, a revocation and a published list.
fn used_ca() -> Env {
    let env = Env::new();
    env.planner("p1");
    env.planner("p2");
    env.child("p1", "c1");
    env.ok("revoke --ca ca --agent auditor --reason test");
    env.ok("revocations export --ca ca --out revocations.jwt");
    env
}

fn db(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.path("ca/ca.db")).unwrap()
}

#[test]
fn a_clean_store_verifies() {
    let env = used_ca();
    let out = env.ok("audit verify --ca ca");
    assert!(out.contains("valid: "), "{out}");
    let v = env.json("audit verify --ca ca");
    assert_eq!(v["valid"], true);
    assert_eq!(v["report"]["issuances"], 3);
    assert_eq!(v["report"]["chains"][0]["records"], 5);
}

#[test]
fn an_edited_record_fails_with_its_number() {
    let env = used_ca();
    db(&env)
        .execute(
            "UPDATE audit_records SET body = replace(body, 'test', 'nothing to see') WHERE seq = 4",
            [],
        )
        .unwrap();
    env.fails("audit verify --ca ca", 3, "record 4: edited");
}

#[test]
fn a_deleted_record_fails_with_its_number() {
    let env = used_ca();
    db(&env)
        .execute("DELETE FROM audit_records WHERE seq = 2", [])
        .unwrap();
    env.fails("audit verify --ca ca", 3, "record 2: missing");
}

#[test]
fn reordered_records_fail_with_the_first_number() {
    let env = used_ca();
    db(&env)
        .execute_batch(
            "UPDATE audit_records SET seq = -1 WHERE seq = 2;
             UPDATE audit_records SET seq = 2 WHERE seq = 3;
             UPDATE audit_records SET seq = 3 WHERE seq = -1;",
        )
        .unwrap();
    env.fails("audit verify --ca ca", 3, "record 2: moved");
}

#[test]
fn a_forged_checkpoint_fails() {
    let env = used_ca();
    // A checkpoint whose signature is not the audit key's (its signature part replaced).
    let c = db(&env);
    let (seq, jws): (i64, String) = c
        .query_row(
            "SELECT seq, jws FROM audit_checkpoints ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let (input, _) = jws.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", "A".repeat(86));
    c.execute(
        "UPDATE audit_checkpoints SET jws = ?1 WHERE seq = ?2",
        rusqlite::params![forged, seq],
    )
    .unwrap();
    env.fails(
        "audit verify --ca ca",
        3,
        &format!("checkpoint at record {seq}"),
    );
}

#[test]
fn export_prints_json_lines_and_since_filters() {
    let env = used_ca();
    let out = env.ok("audit export --ca ca");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let records: Vec<&Value> = lines.iter().filter(|l| l["type"] == "record").collect();
    assert_eq!(records.len(), 5);
    assert_eq!(records[0]["seq"], 1);
    assert_eq!(records[0]["kind"], "issue.task");
    assert!(records
        .iter()
        .all(|r| r["hash"].as_str().unwrap().len() == 64));
    assert!(lines.iter().any(|l| l["type"] == "checkpoint"));

    let later = env.ok("audit export --ca ca --since 2999-01-01T00:00:00Z");
    assert!(!later.contains("\"record\""), "{later}");
    env.fails("audit export --ca ca --since yesterday", 2, "since");
}

#[test]
fn a_missing_store_is_an_error() {
    let env = Env::empty();
    env.fails("audit verify --ca nowhere", 1, "no CA store");
}

/// A broken trail's message names the first bad record and says what to do next (keep the
/// store as evidence, compare with an earlier export or backup), in text and in JSON (red
/// team, audit: it named the record only).
#[test]
fn a_broken_trail_says_what_to_do_next() {
    let env = used_ca();
    db(&env)
        .execute(
            "UPDATE audit_records SET body = replace(body, 'test', 'nothing to see') WHERE seq = 4",
            [],
        )
        .unwrap();
    let (_, line) = env.fails("audit verify --ca ca", 3, "record 4: edited");
    assert!(line.contains("agentid audit export"), "{line}");
    assert!(line.contains("backup"), "{line}");
    let (out, _) = env.fails("audit verify --ca ca --format json", 3, "record 4");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["valid"], false);
    assert!(
        v["next"].as_str().is_some_and(|s| s.contains("backup")),
        "{v}"
    );
}

/// A break names what the store holds (a certificate's serial, a record's), which whoever can
/// write the store chose: `audit verify` shows it escaped, so that control characters in it
/// cannot move the operator's cursor, erase the "broken" line or print a "valid" one. Before,
/// a serial's terminal escapes reached stderr as they were (only line breaks were folded).
#[test]
fn a_break_shows_the_stores_text_without_control_characters() {
    let env = used_ca();
    // A certificate row no issuance record names, its serial chosen to rewrite the terminal.
    db(&env)
        .execute(
            "INSERT INTO issuances (serial, identity, kind, agent, task, not_before, not_after,
               requester, jkt, issued_at, grant_jti)
             SELECT char(27) || '[1A' || char(27) || '[2K' || char(8) || 'valid', identity, kind,
               agent, task, not_before, not_after, requester, 'made-up', issued_at, NULL
             FROM issuances LIMIT 1",
            [],
        )
        .unwrap();
    let (_, stderr) = env.fails("audit verify --ca ca", 3, "has no audit record");
    assert!(
        !stderr.trim_end().chars().any(char::is_control),
        "{stderr:?}"
    );
}
