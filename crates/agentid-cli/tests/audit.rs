//! `agentid audit verify`, `agentid audit export` and `agentid audit prune` on a CA directory
//! the CLI used.
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

/// Every row of every table deleted but the schema's (`meta`): what a new CA's store holds.
fn wipe(env: &Env) {
    let c = db(env);
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'meta'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.iter().any(|t| t == "audit_records"), "{tables:?}");
    for t in tables {
        c.execute(&format!("DELETE FROM \"{t}\""), []).unwrap();
    }
}

/// A store wiped whole verifies alone (it looks like a new CA's, CA-API.md 4.3 says so), but
/// not against an export kept outside it: the chain the export holds is gone (red team, audit:
/// `audit verify` said valid for a store whose every row was deleted).
#[test]
fn a_wiped_store_fails_against_an_earlier_export() {
    let env = used_ca();
    let export = env.ok("audit export --ca ca");
    std::fs::write(env.path("kept.jsonl"), &export).unwrap();
    // The store grows past what was kept: still valid.
    env.planner("p3");
    let out = env.ok("audit verify --ca ca --against kept.jsonl");
    assert!(
        out.contains("all 5 records known from kept.jsonl are in the store unchanged"),
        "{out}"
    );
    assert_eq!(
        env.json("audit verify --ca ca --against kept.jsonl")["report"]["anchors"],
        5
    );

    wipe(&env);
    // Alone, the store cannot tell.
    assert_eq!(env.json("audit verify --ca ca")["valid"], true);
    let (out, err) = env.fails(
        "audit verify --ca ca --against kept.jsonl",
        3,
        "known from outside the store",
    );
    assert!(
        format!("{out}{err}").contains("the store holds no record of this chain"),
        "{out}{err}"
    );
    // The next step is the one for a record known from outside.
    assert!(
        format!("{out}{err}").contains("was kept from this CA"),
        "{out}{err}"
    );
}

/// The records after the last required checkpoint (record 1 here) removed with the timed
/// checkpoints over them: the store alone verifies, a report kept from before does not.
#[test]
fn a_removed_tail_fails_against_an_earlier_report() {
    let env = used_ca();
    let report = env.ok("audit verify --ca ca --format json");
    std::fs::write(env.path("report.json"), &report).unwrap();
    let out = env.ok("audit verify --ca ca --against report.json");
    assert!(
        out.contains("the one record known from report.json is in the store unchanged"),
        "{out}"
    );

    let c = db(&env);
    c.execute_batch(
        "DELETE FROM audit_records WHERE seq > 3; DELETE FROM audit_checkpoints WHERE seq > 3;",
    )
    .unwrap();
    let alone = env.json("audit verify --ca ca");
    assert_eq!(alone["valid"], true, "{alone}");
    assert_eq!(alone["report"]["chains"][0]["records"], 3);
    env.fails(
        "audit verify --ca ca --against report.json",
        3,
        "record 5 (known from outside the store): the store holds 3 records",
    );
}

/// The newest record rewritten and its hash recomputed (anyone who can write the store can do
/// so past the last required checkpoint): found against an export, at that record.
#[test]
fn a_rewritten_tail_fails_against_an_earlier_export() {
    let env = used_ca();
    std::fs::write(env.path("kept.jsonl"), env.ok("audit export --ca ca")).unwrap();
    let c = db(&env);
    let body: String = c
        .query_row("SELECT body FROM audit_records WHERE seq = 5", [], |r| {
            r.get(0)
        })
        .unwrap();
    let forged = body.replace("\"ok\"", "\"denied\"");
    assert_ne!(forged, body);
    c.execute(
        "UPDATE audit_records SET body = ?1, hash = ?2 WHERE seq = 5",
        rusqlite::params![forged, agentid_ca::audit::record_hash(&forged)],
    )
    .unwrap();
    c.execute("DELETE FROM audit_checkpoints WHERE seq > 1", [])
        .unwrap();
    assert_eq!(env.json("audit verify --ca ca")["valid"], true);
    env.fails(
        "audit verify --ca ca --against kept.jsonl",
        3,
        "record 5 (known from outside the store): the store's record there is not the one known",
    );
}

/// What `--against` refuses to vouch with: a damaged export, a report of a broken trail, a
/// file that is neither, a file that is not there. Each says what to give instead.
#[test]
fn against_refuses_what_vouches_for_nothing() {
    let env = used_ca();
    let export = env.ok("audit export --ca ca");
    let damaged = export.replacen(r#"\"issue.task\""#, r#"\"issue.child\""#, 1);
    assert_ne!(damaged, export);
    std::fs::write(env.path("damaged.jsonl"), damaged).unwrap();
    env.fails(
        "audit verify --ca ca --against damaged.jsonl",
        2,
        "line 1: its body does not hash to its hash",
    );
    std::fs::write(
        env.path("broken.json"),
        r#"{"valid": false, "error": "x", "next": "y"}"#,
    )
    .unwrap();
    env.fails(
        "audit verify --ca ca --against broken.json",
        2,
        "a report of a broken trail",
    );
    std::fs::write(env.path("other.txt"), "hello\n").unwrap();
    env.fails(
        "audit verify --ca ca --against other.txt",
        2,
        "agentid audit export --ca DIR",
    );
    env.fails(
        "audit verify --ca ca --against absent.jsonl",
        1,
        "absent.jsonl",
    );
}

/// An `--against` file vouches for the store: whoever could replace it (a directory on the way
/// that others can write without the sticky bit, the file writable by them) could hand in an
/// export matching a store they rewrote, and the check would pass. It may be another user's
/// (an auditor's copy), but one others could have changed is refused, naming the entry and
/// the `chmod` to run; a FIFO there is refused at once. Standard input (`-`) is still read.
#[test]
fn an_against_file_others_could_replace_is_refused() {
    let env = used_ca();
    std::fs::create_dir(env.path("kept")).unwrap();
    env.chmod("kept", 0o755);
    let export = env.ok("audit export --ca ca");
    std::fs::write(env.path("kept/kept.jsonl"), &export).unwrap();
    env.chmod("kept/kept.jsonl", 0o644);
    let line = "audit verify --ca ca --against kept/kept.jsonl";
    env.ok(line);
    for (rel, mode, back) in [
        ("kept", 0o777, 0o755),
        ("kept", 0o770, 0o755),
        ("kept/kept.jsonl", 0o666, 0o644),
    ] {
        env.chmod(rel, mode);
        let (_, msg) = env.fails(line, 1, &format!("chmod go-w {}", env.path(rel).display()));
        assert!(msg.contains(&format!("{mode:03o}")), "{msg}");
        assert!(msg.contains("on the way to kept/kept.jsonl"), "{msg}");
        env.chmod(rel, back);
    }
    // A FIFO: refused without waiting for a writer.
    assert!(std::process::Command::new("mkfifo")
        .arg(env.path("kept/fifo"))
        .status()
        .unwrap()
        .success());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(["audit", "verify", "--ca", "ca", "--against", "kept/fifo"])
        .current_dir(env.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("audit verify blocked on a FIFO given as --against");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a FIFO"), "{err}");
    // Standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(["audit", "verify", "--ca", "ca", "--against", "-"])
        .current_dir(env.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(export.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// The export of a CA that has no records yet is empty: `--against` says so (nothing to
/// compare with, and what to keep instead), not that it could not parse a JSON value.
#[test]
fn against_an_empty_export_says_it_is_empty() {
    let env = Env::new();
    let export = env.ok("audit export --ca ca");
    assert!(export.is_empty(), "{export}");
    std::fs::write(env.path("kept.jsonl"), export).unwrap();
    let (_, line) = env.fails("audit verify --ca ca --against kept.jsonl", 2, "is empty");
    assert!(!line.contains("EOF"), "{line}");
    assert!(line.contains("after the CA's first record"), "{line}");
}

/// An export kept from another CA (a mix-up of files, not a tampered store): its record 1
/// differs from this store's, whose checkpoint this CA's audit key signed. The refusal says
/// that FILE may be another CA's, rather than only that the store was rewritten.
#[test]
fn against_another_cas_export_says_the_file_may_be_another_cas() {
    let env = used_ca();
    let other = used_ca();
    std::fs::write(env.path("other.jsonl"), other.ok("audit export --ca ca")).unwrap();
    let (_, line) = env.fails(
        "audit verify --ca ca --against other.jsonl",
        3,
        "record 1 (known from outside the store): the store's record there is not the one known",
    );
    assert!(line.contains("another CA"), "{line}");
    // A rewritten tail past the last checkpoint is still named as rewritten only.
    std::fs::write(env.path("kept.jsonl"), env.ok("audit export --ca ca")).unwrap();
    let c = rusqlite::Connection::open(env.path("ca/ca.db")).unwrap();
    let body: String = c
        .query_row("SELECT body FROM audit_records WHERE seq = 5", [], |r| {
            r.get(0)
        })
        .unwrap();
    let forged = body.replace("\"ok\"", "\"denied\"");
    c.execute(
        "UPDATE audit_records SET body = ?1, hash = ?2 WHERE seq = 5",
        rusqlite::params![forged, agentid_ca::audit::record_hash(&forged)],
    )
    .unwrap();
    c.execute("DELETE FROM audit_checkpoints WHERE seq > 1", [])
        .unwrap();
    let (_, line) = env.fails("audit verify --ca ca --against kept.jsonl", 3, "record 5");
    assert!(!line.contains("another CA"), "{line}");
}

/// `audit export` and `audit verify` on a CA directory whose `config.toml` others can write (a
/// shared database's, with no `ca.db`) say so, with the `chmod` to run, not "no CA store here
/// (run `agentid ca init`)", which would send the operator to make a new CA.
#[test]
fn a_config_others_can_write_is_named_not_taken_for_a_missing_store() {
    let env = Env::new();
    let config = env.path("ca/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\nstore = \"postgres://agentid_ca@127.0.0.1:1/agentid\"\n"),
    )
    .unwrap();
    std::fs::remove_file(env.path("ca/ca.db")).unwrap();
    env.chmod("ca/config.toml", 0o666);
    for line in ["audit export --ca ca", "audit verify --ca ca"] {
        let (_, msg) = env.fails(line, 1, &format!("chmod go-w {}", config.display()));
        assert!(!msg.contains("no CA store here"), "{line}: {msg}");
    }
}

/// The CA's whole trail exported to `audit.jsonl`.
fn exported(env: &Env) {
    let out = env.ok("audit export --ca ca");
    std::fs::write(env.path("audit.jsonl"), out).unwrap();
}

/// Records made now are younger than any retention: the prune keeps them and says so, and the
/// trail verifies as before. (What goes once records are old enough is tested on the library,
/// `crates/agentid-ca/tests/audit_retention.rs`, which can set the clock.)
#[test]
fn prune_keeps_records_younger_than_the_retention() {
    let env = used_ca();
    exported(&env);
    let out = env.ok("audit prune --ca ca --retain 7d --exported audit.jsonl");
    assert!(out.contains("nothing to prune"), "{out}");
    let v = env.json("audit prune --ca ca --retain 1d --exported audit.jsonl");
    assert_eq!(v["pruned"]["records"], 0, "{v}");
    let v = env.json("audit verify --ca ca");
    assert_eq!(v["report"]["chains"][0]["records"], 5);
    assert_eq!(v["report"]["chains"][0]["pruned"], 0);
}

#[test]
fn prune_refuses_a_retention_under_a_day() {
    let env = used_ca();
    exported(&env);
    env.fails(
        "audit prune --ca ca --retain 12h --exported audit.jsonl",
        2,
        "at least 1d",
    );
}

/// A broken trail is evidence: nothing is pruned from it, and the break is named.
#[test]
fn prune_refuses_a_trail_that_does_not_verify() {
    let env = used_ca();
    exported(&env);
    db(&env)
        .execute(
            "UPDATE audit_records SET body = replace(body, 'test', 'nothing to see') WHERE seq = 4",
            [],
        )
        .unwrap();
    let (_, err) = env.fails(
        "audit prune --ca ca --retain 7d --exported audit.jsonl",
        3,
        "nothing was pruned",
    );
    assert!(err.contains("record 4"), "{err}");
}

/// A missing export is named with the flag that takes it.
#[test]
fn prune_needs_an_export_of_the_records() {
    let env = used_ca();
    env.fails(
        "audit prune --ca ca --retain 7d --exported missing.jsonl",
        1,
        "--exported takes a file",
    );
}

/// A `--format json` report names each chain's head by its hash only: it holds no record, so
/// it cannot be what the records a prune deletes are kept in (a report taken when a chain had
/// one record would otherwise let that record go, kept nowhere).
#[test]
fn prune_refuses_a_report_for_an_export() {
    let env = used_ca();
    let report = env.ok("audit verify --ca ca --format json");
    std::fs::write(env.path("report.json"), &report).unwrap();
    let (_, err) = env.fails(
        "audit prune --ca ca --retain 7d --exported report.json",
        2,
        "--exported report.json",
    );
    assert!(err.contains("agentid audit export"), "{err}");
    // Also when it does not start on its first line.
    std::fs::write(env.path("report2.json"), format!("\n{report}")).unwrap();
    env.fails(
        "audit prune --ca ca --retain 7d --exported report2.json",
        2,
        "not an export",
    );
    // It still vouches for the store where a report may (`--against`).
    env.ok("audit verify --ca ca --against report.json");
}
