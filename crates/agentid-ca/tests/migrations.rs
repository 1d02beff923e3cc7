//! Schema migrations: a database made by the code before schema versions existed (version 0,
//! `tests/fixtures/schema-v0`) opens, migrates to the current version and keeps its records.
#![cfg(test)]
#![allow(missing_docs)]

use std::path::PathBuf;

use agentid_ca::migrate::{schema_version, SCHEMA_VERSION};
use agentid_ca::{IssuanceKind, RevocationKind, SqliteStore, Store};

fn fixture_copy(dir: &tempfile::TempDir) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema-v0/ca.db");
    let dst = dir.path().join("ca.db");
    std::fs::copy(&src, &dst).unwrap();
    dst
}

#[test]
fn the_fixture_is_version_0() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture_copy(&dir);
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(schema_version(&conn).unwrap(), 0);
}

#[test]
fn a_version_0_database_migrates_and_keeps_its_issuances() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture_copy(&dir);
    let store = SqliteStore::open(&db).unwrap();

    let task = store
        .issuance("d32e3afc11cbae69da80bcc6bd766317")
        .unwrap()
        .unwrap();
    assert_eq!(
        task.identity,
        "spiffe://example.org/agent/planner/task/fixture-task"
    );
    assert_eq!(task.kind, IssuanceKind::Task);
    assert_eq!(task.grant_jti.as_deref(), Some("SUbvLtTzK-IsVG24NWcbyw"));
    let child = store
        .issuance("c039405bfe5f2c313007815c06cc756a")
        .unwrap()
        .unwrap();
    assert_eq!(child.kind, IssuanceKind::Child);
    assert_eq!(store.issuances().unwrap().len(), 2);
    assert!(store.task("fixture-task").unwrap().is_some());
    assert!(store
        .task_by_jti("SUbvLtTzK-IsVG24NWcbyw")
        .unwrap()
        .is_some());
    let revs = store.revocations().unwrap();
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0].kind, RevocationKind::Jkt);
    assert_eq!(revs[0].value, "-VI2DBJnc-4seUg9yaMk6_C4S__r8-54zSHs3AnCHyM");
    drop(store);

    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
    // The list counter is kept where the old code left it (the next list is above it).
    let counter: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'revocation_seq'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counter, 1);
    // Version 1's tables and columns are there.
    conn.execute(
        "INSERT INTO published_lists (seq, compact, published_at, next_update) VALUES (2, 'x', 1, 2)",
        [],
    )
    .unwrap();
    let binding: Option<String> = conn
        .query_row("SELECT binding FROM bootstrap_tokens LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap_or(None);
    assert_eq!(binding, None);
    // Version 2's: the audit chain starts empty after the fixture's issuances, which predate it;
    // the fixture's task has no recorded principal.
    let records: i64 = conn
        .query_row("SELECT count(*) FROM audit_records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(records, 0);
    let from: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'audit_issuances_from'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(from, 2);
    let principal: Option<String> = conn
        .query_row(
            "SELECT principal FROM tasks WHERE task = 'fixture-task'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(principal, None);
    // Version 5's: the index the task inventory seeks each agent's tasks by.
    let index: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'identities_agent_task'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1);
    drop(conn);

    // Opening again is a no-op and keeps everything.
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.issuances().unwrap().len(), 2);
    // The inventory (CA-API.md 3.11) of the old rows, while the grant was live: the planner's
    // task; the summarizer, a child in that task, holds none.
    let created = store.task("fixture-task").unwrap().unwrap().created;
    let listed = store
        .live_tasks_page(&["summarizer".into(), "planner".into()], None, 10, created)
        .unwrap();
    let listed: Vec<(&str, &str)> = listed
        .iter()
        .map(|l| (l.task.task.as_str(), l.agent.as_str()))
        .collect();
    assert_eq!(listed, [("fixture-task", "planner")]);
    assert!(store
        .live_tasks_page(&["summarizer".into()], None, 10, created)
        .unwrap()
        .is_empty());
}

#[test]
fn a_database_newer_than_the_code_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture_copy(&dir);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(&db).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION + 1);
}

#[test]
fn a_new_database_starts_at_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    let store = SqliteStore::open(&db).unwrap();
    assert!(store.issuances().unwrap().is_empty());
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
}
