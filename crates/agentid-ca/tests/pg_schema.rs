//! The PostgreSQL store's schema version against other agentid versions: a database a newer
//! agentid migrated is refused at open, and by a replica that was already running.
//! Skipped (passes) when PostgreSQL is not installed.
#![cfg(test)]
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

mod common;

use agentid_ca::migrate::PG_SCHEMA_VERSION;
use agentid_ca::{CertificateAuthority, KeyType, OpenTaskRequest, TaskRequester};
use agentid_protocol::{Algorithm, Scope};
use agentid_test_support::pg::PgCluster;
use common::*;

/// Runs `sql` on database `db` of `pg`.
fn sql(pg: &PgCluster, db: &str, sql: &str) {
    let url = pg.url(db);
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let conn = tokio::spawn(conn);
            client.batch_execute(&sql).await.unwrap();
            drop(client);
            let _ = conn.await;
        });
    })
    .join()
    .unwrap();
}

fn open_task(ca: &CertificateAuthority) -> agentid_ca::Result<()> {
    let (_k, src) = spki_key(Algorithm::Es256);
    let req = OpenTaskRequest::new(
        "planner",
        src,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    ca.open_task(&req, now()).map(|_| ())
}

fn newer(pg: &PgCluster) {
    sql(
        pg,
        "agentid",
        &format!(
            "UPDATE agentid_schema SET version = {}",
            PG_SCHEMA_VERSION + 1
        ),
    );
}

#[test]
fn a_database_a_newer_agentid_migrated_is_refused_at_open() {
    let Some(pg) = PgCluster::start() else {
        eprintln!("PostgreSQL not installed: skipped");
        return;
    };
    let dir = make_pg_ca_dir(KeyType::P256, &pg, "agentid");
    drop(CertificateAuthority::open(dir.path()).unwrap());
    newer(&pg);
    let err = CertificateAuthority::open(dir.path())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer"), "{err}");
}

/// A replica still running the older agentid while the next release migrated the shared
/// database (a rolling upgrade) must stop writing: it does not know the newer schema's
/// invariants (the columns it leaves NULL may mean "unlimited" to the newer replicas).
#[test]
fn a_running_replica_stops_writing_once_a_newer_agentid_migrated_the_database() {
    let Some(pg) = PgCluster::start() else {
        eprintln!("PostgreSQL not installed: skipped");
        return;
    };
    let dir = make_pg_ca_dir(KeyType::P256, &pg, "agentid");
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    open_task(&ca).unwrap();
    let before = ca.issuances().unwrap().len();
    newer(&pg);
    let res = open_task(&ca);
    assert_eq!(
        ca.issuances().unwrap().len(),
        before,
        "issued on a schema it does not know: {res:?}"
    );
    let err = res.unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
}

/// The same for the writes that are not one statement batch: a revocation list publication and
/// a principal revocation (transactions in steps, with signing in between) and a signed audit
/// checkpoint. An older replica must not store a list, revocations or a checkpoint in a schema
/// it does not know either: each is `store_unavailable` and writes nothing.
#[test]
fn a_running_replica_neither_publishes_nor_revokes_nor_checkpoints_once_a_newer_agentid_migrated_the_database(
) {
    let Some(pg) = PgCluster::start() else {
        eprintln!("PostgreSQL not installed: skipped");
        return;
    };
    let dir = make_pg_ca_dir(KeyType::P256, &pg, "agentid");
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    open_task(&ca).unwrap();
    let published = ca.publish_revocations(now()).unwrap().seq;
    let revocations = ca.revocations().unwrap().len();
    let checkpoints = ca.audit_snapshot(None).unwrap().checkpoints.len();
    newer(&pg);

    let res = ca.publish_revocations(now()).map(|p| p.seq);
    assert_eq!(
        ca.latest_published().unwrap().map(|p| p.seq),
        Some(published),
        "published on a schema it does not know: {res:?}"
    );
    let err = res.unwrap_err();
    assert_eq!(
        agentid_ca::server::error_code(&err).as_str(),
        "store_unavailable"
    );
    assert!(err.to_string().contains("newer"), "{err}");

    let principal = serde_json::json!({"sub": "alice"});
    let res = ca.revoke(
        &agentid_ca::RevokeTarget::Principal(principal),
        None,
        "operator",
        now(),
    );
    assert_eq!(
        ca.revocations().unwrap().len(),
        revocations,
        "revoked on a schema it does not know: {res:?}"
    );
    let err = res.unwrap_err();
    assert_eq!(
        agentid_ca::server::error_code(&err).as_str(),
        "store_unavailable"
    );
    assert!(err.to_string().contains("newer"), "{err}");

    let res = ca.checkpoint_audit(now(), true);
    assert_eq!(
        ca.audit_snapshot(None).unwrap().checkpoints.len(),
        checkpoints,
        "checkpointed on a schema it does not know: {res:?}"
    );
    let err = res.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// A CA directory whose `config.toml` names a database that holds no agentid store (a typo in
/// the database name, a failover to a blank standby, a `store` line added to a SQLite CA's
/// config) must not start over with an empty store: its revocations would be gone and its
/// revocation list would restart at seq 1, below what subscribers hold. `agentid ca init`
/// makes the schema; opening an existing CA refuses a database without it.
#[test]
fn a_ca_pointed_at_an_empty_database_is_refused() {
    let Some(pg) = PgCluster::start() else {
        eprintln!("PostgreSQL not installed: skipped");
        return;
    };
    let dir = make_pg_ca_dir(KeyType::P256, &pg, "agentid");
    {
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        ca.revoke(
            &agentid_ca::RevokeTarget::Agent("planner".into()),
            None,
            "operator",
            now(),
        )
        .unwrap();
    }
    pg.create_database("agentid_blank");
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let edited = text.replace(&pg.url("agentid"), &pg.url("agentid_blank"));
    assert_ne!(text, edited);
    std::fs::write(&config, edited).unwrap();
    let err = match CertificateAuthority::open(dir.path()) {
        Ok(ca) => panic!(
            "opened with a new empty store ({} revocations)",
            ca.revocations().unwrap().len()
        ),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("ca init"), "{err}");
}
