//! Schema versions of the stores and the migrations between them: SQLite's below, and
//! PostgreSQL's in [`PG_MIGRATIONS`] (its own version table, `agentid_schema`).
//!
//! The version lives in SQLite's `PRAGMA user_version` (a field of the database header, written
//! in the same transaction as the schema change it records).
//!
//! * **Version 0** is the schema of the first releases, which had no version: every table created
//!   with `CREATE TABLE IF NOT EXISTS` and `user_version` left at 0. A database with version 0 (a
//!   new file, or one made by those releases) is brought to the version 0 schema idempotently, so
//!   both cases take the same path.
//! * **Version N > 0** is reached by applying [`MIGRATIONS`] in order, each in its own
//!   `BEGIN IMMEDIATE` transaction that re-reads the version first (two processes opening the same
//!   database migrate it once) and sets the new version last.
//! * A database whose version is newer than [`SCHEMA_VERSION`] is refused: this code does not know
//!   what the newer tables mean, and writing to them could break the invariants they keep.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{CaError, Result};

/// The schema version this code reads and writes.
pub const SCHEMA_VERSION: u32 = 8;

/// One migration: the SQL that takes a database from `version - 1` to `version`.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// The version the database has after this migration.
    pub version: u32,
    /// What it changes, for logs and errors.
    pub description: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
}

/// Every migration after version 0, in order; `MIGRATIONS[i].version == i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "CA service: published revocation lists, token bindings",
        sql: "
-- One row per publication of the revocation list (CA-API.md, GET /v1/revocations): `seq` is the
-- list's sequence number, `compact` the signed list exactly as served.
CREATE TABLE published_lists (
  seq INTEGER PRIMARY KEY, compact TEXT NOT NULL, published_at INTEGER NOT NULL,
  next_update INTEGER NOT NULL);
-- What a bootstrap token binds beyond agent and task (scope, audience, depth, TTLs, principal),
-- as JSON; NULL for tokens made before version 1, which bind only agent and task.
ALTER TABLE bootstrap_tokens ADD COLUMN binding TEXT;
-- Who created the token (`operator` or `svc:NAME`).
ALTER TABLE bootstrap_tokens ADD COLUMN creator TEXT;
",
    },
    Migration {
        version: 2,
        description: "audit chain per writer with signed checkpoints",
        sql: "
-- One hash chain per writer (crate::audit): `body` is the record's exact JSON, `hash` its
-- SHA-256; written in the transaction of the change it records.
CREATE TABLE audit_records (
  writer TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, body TEXT NOT NULL,
  hash TEXT NOT NULL, PRIMARY KEY (writer, seq));
CREATE INDEX audit_records_ts ON audit_records(ts);
-- Chain heads signed with the audit key.
CREATE TABLE audit_checkpoints (
  writer TEXT NOT NULL, seq INTEGER NOT NULL, head TEXT NOT NULL, iat INTEGER NOT NULL,
  jws TEXT NOT NULL, PRIMARY KEY (writer, seq));
-- Issuances up to this rowid predate the chain and have no record.
INSERT OR REPLACE INTO meta (key, value)
  SELECT 'audit_issuances_from', COALESCE(MAX(rowid), 0) FROM issuances;
-- Bumped in every transaction that adds or widens a revocation: the publisher compares it
-- with the value its last list saw.
INSERT OR IGNORE INTO meta (key, value) VALUES ('revocation_epoch', 0);
ALTER TABLE published_lists ADD COLUMN revocation_epoch INTEGER NOT NULL DEFAULT 0;
-- The principal a task acts for (canonical JSON), so that revoking a principal can find its
-- tasks; NULL for tasks opened before version 2 or without a principal.
ALTER TABLE tasks ADD COLUMN principal TEXT;
CREATE INDEX tasks_principal ON tasks(principal);
",
    },
    Migration {
        version: 3,
        description: "CA service: the inventory of live tasks reads tasks by expiry",
        sql: "
-- GET /v1/tasks reads only tasks whose grant has not expired.
CREATE INDEX tasks_exp ON tasks(exp);
",
    },
    Migration {
        version: 4,
        description: "a task's max_depth, which caps its children (CA-API.md 3.8)",
        sql: "
-- The grant's max_depth; NULL for tasks opened before version 4 (their children are not
-- capped by depth).
ALTER TABLE tasks ADD COLUMN max_depth INTEGER;
",
    },
    Migration {
        version: 5,
        description: "CA service: the inventory of live tasks seeks each listed agent's tasks; unredeemed tokens by task id",
        sql: "
-- GET /v1/tasks reads the tasks of the agents a service may list, agent by agent in task id
-- order, without visiting other agents' tasks.
CREATE INDEX identities_agent_task ON identities(agent, task);
-- Revoking a task not opened yet, and opening a task under a chosen id, look up the
-- unredeemed bootstrap tokens naming that task id, without reading every token ever made.
CREATE INDEX bootstrap_tokens_task ON bootstrap_tokens(task) WHERE used_at IS NULL;
",
    },
    Migration {
        version: 6,
        description: "when each identity's key got its first certificate (a service's max_key_age)",
        sql: "
-- When the bound key got its first certificate for the identity; kept while the same key is
-- issued again. Services' bindings get it from their issuances (a service's issuances have no
-- agent); a task's stays NULL (its task bounds its key).
ALTER TABLE identities ADD COLUMN key_bound_at INTEGER;
UPDATE identities SET key_bound_at = (
    SELECT MIN(i.issued_at) FROM issuances i
    WHERE i.agent IS NULL AND i.identity = identities.identity AND i.jkt = identities.jkt)
  WHERE agent IS NULL;
-- A service binding without a recorded issuance counts from the upgrade.
UPDATE identities SET key_bound_at = CAST(strftime('%s', 'now') AS INTEGER)
  WHERE agent IS NULL AND key_bound_at IS NULL;
",
    },
    Migration {
        version: 7,
        description: "CA service: a service's outstanding bootstrap tokens are bounded; tokens past their retention are forgotten",
        sql: TOKENS_BOUNDED_SQL,
    },
    Migration {
        version: 8,
        description: "audit retention: pruned chains start at a signed base; a key's first certificate is kept with its binding",
        sql: PRUNE_SQL,
    },
];

/// SQLite's version 8 and PostgreSQL's version 6 (the same statements).
const PRUNE_SQL: &str = "
-- Where each pruned writer's chain starts (CA-API.md 4.5): its records up to `seq` were
-- exported and deleted; `jws` is signed with the audit key (typ agentid-audit-base+jwt).
CREATE TABLE audit_bases (
  writer TEXT PRIMARY KEY, seq BIGINT NOT NULL, head TEXT NOT NULL, iat BIGINT NOT NULL,
  jws TEXT NOT NULL);
-- The revocations (`kind:value`, highest `exp` recorded) of a writer's pruned records, whose
-- digest its base signs: verification holds each to the store's revocations.
CREATE TABLE audit_base_revocations (
  writer TEXT NOT NULL, subject TEXT NOT NULL, exp BIGINT NOT NULL,
  PRIMARY KEY (writer, subject));
-- When the key got its first certificate (what a service's max_key_age counts from when the
-- key is bound again), kept with the binding so that it outlives pruned issuances.
ALTER TABLE keys ADD COLUMN first_issued_at BIGINT;
UPDATE keys SET first_issued_at = (SELECT MIN(i.issued_at) FROM issuances i WHERE i.jkt = keys.jkt);
";

/// SQLite's version 7 and PostgreSQL's version 5 (the same statements).
const TOKENS_BOUNDED_SQL: &str = "
-- POST /v1/tokens counts the creating service's unredeemed tokens that have not expired
-- (CA-API.md 3.6), reading no other service's and no used token.
CREATE INDEX bootstrap_tokens_creator ON bootstrap_tokens(creator, expires) WHERE used_at IS NULL;
-- Tokens past their retention are deleted oldest first, without reading the others.
CREATE INDEX bootstrap_tokens_expires ON bootstrap_tokens(expires);
";

/// The schema version of the PostgreSQL store (feature `postgres`) this code reads and writes.
pub const PG_SCHEMA_VERSION: u32 = 6;

/// The PostgreSQL store's migrations, in order; `PG_MIGRATIONS[i].version == i + 1`. They are
/// applied in one transaction under an advisory lock, and the version is kept in the one-row
/// table `agentid_schema`. Version 1 is the whole schema of SQLite's version 3 (plus `id`
/// columns for insertion order and the audit chain heads).
pub const PG_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description:
            "CA store: issuances, bindings, tasks, tokens, revocations, lists, audit chains",
        sql: "
CREATE TABLE identities (
  identity TEXT PRIMARY KEY, jkt TEXT NOT NULL, spki BYTEA NOT NULL,
  agent TEXT, task TEXT, cap BIGINT NOT NULL);
CREATE INDEX identities_agent ON identities(agent);
CREATE INDEX identities_task ON identities(task);
-- One key, one identity, forever.
CREATE TABLE keys (jkt TEXT PRIMARY KEY, identity TEXT NOT NULL);
CREATE TABLE issuances (
  id BIGSERIAL NOT NULL UNIQUE,
  serial TEXT PRIMARY KEY, identity TEXT NOT NULL, kind TEXT NOT NULL, agent TEXT, task TEXT,
  not_before BIGINT NOT NULL, not_after BIGINT NOT NULL, requester TEXT NOT NULL,
  jkt TEXT NOT NULL, issued_at BIGINT NOT NULL, grant_jti TEXT UNIQUE);
CREATE INDEX issuances_agent ON issuances(agent);
CREATE INDEX issuances_task ON issuances(task);
CREATE INDEX issuances_jkt ON issuances(jkt);
CREATE TABLE tasks (
  id BIGSERIAL NOT NULL UNIQUE,
  task TEXT PRIMARY KEY, holder TEXT NOT NULL, grant_jti TEXT NOT NULL UNIQUE,
  exp BIGINT NOT NULL, created BIGINT NOT NULL, principal TEXT);
CREATE INDEX tasks_principal ON tasks(principal);
CREATE INDEX tasks_exp ON tasks(exp);
CREATE TABLE revocations (
  id BIGSERIAL NOT NULL UNIQUE,
  kind TEXT NOT NULL, value TEXT NOT NULL, exp BIGINT NOT NULL, revoked_at BIGINT NOT NULL,
  reason TEXT, requester TEXT NOT NULL, PRIMARY KEY (kind, value));
-- Single-use: consumed by UPDATE ... WHERE used_at IS NULL inside the issuance transaction.
CREATE TABLE bootstrap_tokens (
  hash TEXT PRIMARY KEY, agent TEXT NOT NULL, task TEXT NOT NULL, expires BIGINT NOT NULL,
  used_at BIGINT, binding TEXT, creator TEXT);
-- revocation_seq: the counter whose row lock serializes publications.
-- revocation_epoch: bumped by every transaction that adds or widens a revocation.
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('revocation_seq', 0), ('revocation_epoch', 0);
CREATE TABLE published_lists (
  seq BIGINT PRIMARY KEY, compact TEXT NOT NULL, published_at BIGINT NOT NULL,
  next_update BIGINT NOT NULL, revocation_epoch BIGINT NOT NULL);
CREATE TABLE audit_records (
  writer TEXT NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, body TEXT NOT NULL,
  hash TEXT NOT NULL, PRIMARY KEY (writer, seq));
CREATE INDEX audit_records_ts ON audit_records(ts);
-- Each writer's chain head, locked (FOR UPDATE) by every append until its commit.
CREATE TABLE audit_heads (writer TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE audit_checkpoints (
  writer TEXT NOT NULL, seq BIGINT NOT NULL, head TEXT NOT NULL, iat BIGINT NOT NULL,
  jws TEXT NOT NULL, PRIMARY KEY (writer, seq));
",
    },
    Migration {
        version: 2,
        description: "a task's max_depth, which caps its children (CA-API.md 3.8)",
        sql: "
-- The grant's max_depth; NULL for tasks opened before version 2.
ALTER TABLE tasks ADD COLUMN max_depth BIGINT;
",
    },
    Migration {
        version: 3,
        description: "CA service: the inventory of live tasks seeks each listed agent's tasks; unredeemed tokens by task id",
        sql: "
-- GET /v1/tasks reads the tasks of the agents a service may list, agent by agent in task id
-- order, without visiting other agents' tasks (SQLite's version 5).
CREATE INDEX identities_agent_task ON identities(agent, task);
-- The unredeemed bootstrap tokens naming a task id, without reading every token.
CREATE INDEX bootstrap_tokens_task ON bootstrap_tokens(task) WHERE used_at IS NULL;
",
    },
    Migration {
        version: 4,
        description: "when each identity's key got its first certificate (a service's max_key_age)",
        sql: "
-- When the bound key got its first certificate for the identity (SQLite's version 6); a
-- service's from its issuances, else from the upgrade; a task's stays NULL.
ALTER TABLE identities ADD COLUMN key_bound_at BIGINT;
UPDATE identities SET key_bound_at = first.at
  FROM (SELECT identity, jkt, MIN(issued_at) AS at FROM issuances
        WHERE agent IS NULL GROUP BY identity, jkt) AS first
  WHERE identities.agent IS NULL AND first.identity = identities.identity
    AND first.jkt = identities.jkt;
UPDATE identities SET key_bound_at = EXTRACT(EPOCH FROM now())::BIGINT
  WHERE agent IS NULL AND key_bound_at IS NULL;
",
    },
    Migration {
        version: 5,
        description: "CA service: a service's outstanding bootstrap tokens are bounded; tokens past their retention are forgotten",
        sql: TOKENS_BOUNDED_SQL,
    },
    Migration {
        version: 6,
        description: "audit retention: pruned chains start at a signed base; a key's first certificate is kept with its binding",
        sql: PRUNE_SQL,
    },
];

/// Reads the schema version.
pub fn schema_version(conn: &Connection) -> Result<u32> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    u32::try_from(v).map_err(|_| CaError::Store(format!("schema version {v} is not valid")))
}

fn set_version(conn: &Connection, v: u32) -> Result<()> {
    // PRAGMA takes no bound parameters; `v` is an integer we produced.
    conn.execute_batch(&format!("PRAGMA user_version = {v}"))?;
    Ok(())
}

/// Brings the database to [`SCHEMA_VERSION`]: the version 0 schema `v0` first if the database is
/// at version 0, then every later migration. Returns the version the database had before.
///
/// Refuses (without writing) a database whose version is newer than this code's.
pub fn migrate(conn: &mut Connection, v0: &str) -> Result<u32> {
    migrate_with(conn, v0, MIGRATIONS, SCHEMA_VERSION)
}

fn migrate_with(
    conn: &mut Connection,
    v0: &str,
    migrations: &[Migration],
    target: u32,
) -> Result<u32> {
    let before = schema_version(conn)?;
    if before > target {
        return Err(newer(before, target));
    }
    if before == 0 {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if schema_version(&tx)? == 0 {
            tx.execute_batch(v0)?;
        }
        tx.commit()?;
    }
    for m in migrations {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = schema_version(&tx)?;
        if current > target {
            return Err(newer(current, target));
        }
        if current + 1 == m.version {
            tx.execute_batch(m.sql).map_err(|e| {
                CaError::Store(format!(
                    "schema migration to version {} ({}) failed: {e}",
                    m.version, m.description
                ))
            })?;
            set_version(&tx, m.version)?;
            tx.commit()?;
            tracing::info!(
                version = m.version,
                what = m.description,
                "store schema migrated"
            );
        }
    }
    let after = schema_version(conn)?;
    if after != target {
        return Err(CaError::Store(format!(
            "schema version {after} after migration, expected {target}"
        )));
    }
    Ok(before)
}

/// Refuses a database whose version `found` is newer than [`SCHEMA_VERSION`].
pub(crate) fn check_not_newer(found: u32) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(newer(found, SCHEMA_VERSION));
    }
    Ok(())
}

fn newer(found: u32, known: u32) -> CaError {
    CaError::Store(format!(
        "the database has schema version {found}, newer than this agentid knows ({known}): \
         use a newer agentid with this CA directory"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const V0: &str = "CREATE TABLE IF NOT EXISTS t (a INTEGER);";

    fn mem() -> Connection {
        Connection::open_in_memory().unwrap()
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.description);
        }
        assert_eq!(
            MIGRATIONS.last().map(|m| m.version).unwrap_or(0),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn postgres_migrations_are_numbered_in_order() {
        for (i, m) in PG_MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.description);
        }
        assert_eq!(
            PG_MIGRATIONS.last().map(|m| m.version).unwrap_or(0),
            PG_SCHEMA_VERSION
        );
    }

    #[test]
    fn a_new_database_gets_every_migration() {
        let mut c = mem();
        let ms = [
            Migration {
                version: 1,
                description: "u",
                sql: "CREATE TABLE u (b INTEGER);",
            },
            Migration {
                version: 2,
                description: "w",
                sql: "ALTER TABLE u ADD COLUMN c TEXT;",
            },
        ];
        assert_eq!(migrate_with(&mut c, V0, &ms, 2).unwrap(), 0);
        assert_eq!(schema_version(&c).unwrap(), 2);
        c.execute("INSERT INTO t (a) VALUES (1)", []).unwrap();
        c.execute("INSERT INTO u (b, c) VALUES (1, 'x')", [])
            .unwrap();
        // Running again changes nothing.
        assert_eq!(migrate_with(&mut c, V0, &ms, 2).unwrap(), 2);
    }

    #[test]
    fn a_newer_database_is_refused_untouched() {
        let mut c = mem();
        set_version(&c, 7).unwrap();
        let err = migrate_with(&mut c, V0, MIGRATIONS, 1).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(schema_version(&c).unwrap(), 7);
        let tables: i64 = c
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let mut c = mem();
        let ms = [
            Migration {
                version: 1,
                description: "ok",
                sql: "CREATE TABLE u (b INTEGER);",
            },
            Migration {
                version: 2,
                description: "bad",
                sql: "CREATE TABLE v (x INTEGER); ALTER TABLE nope ADD COLUMN c TEXT;",
            },
        ];
        assert!(migrate_with(&mut c, V0, &ms, 2).is_err());
        assert_eq!(schema_version(&c).unwrap(), 1);
        // The failed migration's first statement was rolled back with it.
        let v: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'v'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, 0);
    }
}
