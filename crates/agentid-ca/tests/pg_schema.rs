//! The PostgreSQL store's schema version against other agentid versions: a database a newer
//! agentid migrated is refused at open, and by a replica that was already running.
//! Skipped (passes) when PostgreSQL is not installed.
#![cfg(test)]
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

mod common;

use agentid_ca::migrate::PG_SCHEMA_VERSION;
use agentid_ca::Store;
use agentid_ca::{CertificateAuthority, KeyType, OpenTaskRequest, TaskRequester};
use agentid_protocol::{Algorithm, Scope};
use agentid_test_support::inventory::Inventory;
use agentid_test_support::pg::{with_client, PgCluster};
use common::*;

/// Runs `sql` on database `db` of `pg`.
fn sql(pg: &PgCluster, db: &str, sql: &str) {
    let sql = sql.to_owned();
    with_client(&pg.url(db), |client| async move {
        client.batch_execute(&sql).await.unwrap();
    });
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

/// Writes `inv`'s rows into database `db` as the CA writes them: each task with its root
/// holder's identity (agent and task), child identities holding no task, revocations.
fn load(pg: &PgCluster, db: &str, inv: &Inventory) {
    let url = pg.url(db);
    let inv = inv.clone();
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
            let exp = |e: u64| i64::try_from(e).unwrap();
            let mut ids: Vec<&str> = Vec::new();
            let mut jkts: Vec<&str> = Vec::new();
            let mut agents: Vec<&str> = Vec::new();
            let mut tasks: Vec<&str> = Vec::new();
            let mut caps: Vec<i64> = Vec::new();
            for t in &inv.tasks {
                ids.push(&t.holder);
                jkts.push(&t.jkt);
                agents.push(&t.agent);
                tasks.push(&t.task);
                caps.push(exp(t.exp));
            }
            for c in &inv.children {
                ids.push(&c.identity);
                jkts.push(&c.jkt);
                agents.push(&c.agent);
                tasks.push(&c.task);
                caps.push(1);
            }
            client
                .execute(
                    "INSERT INTO identities (identity, jkt, spki, agent, task, cap)
                     SELECT i, j, '\\x00'::bytea, a, t, c
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                       AS u(i, j, a, t, c)",
                    &[&ids, &jkts, &agents, &tasks, &caps],
                )
                .await
                .unwrap();
            let task: Vec<&str> = inv.tasks.iter().map(|t| t.task.as_str()).collect();
            let holder: Vec<&str> = inv.tasks.iter().map(|t| t.holder.as_str()).collect();
            let jti: Vec<&str> = inv.tasks.iter().map(|t| t.grant_jti.as_str()).collect();
            let texp: Vec<i64> = inv.tasks.iter().map(|t| exp(t.exp)).collect();
            client
                .execute(
                    "INSERT INTO tasks (task, holder, grant_jti, exp, created)
                     SELECT t, h, j, e, 1
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(t, h, j, e)",
                    &[&task, &holder, &jti, &texp],
                )
                .await
                .unwrap();
            let kind: Vec<&str> = inv.revocations.iter().map(|r| r.0).collect();
            let value: Vec<&str> = inv.revocations.iter().map(|r| r.1.as_str()).collect();
            let rexp: Vec<i64> = inv.revocations.iter().map(|r| exp(r.2)).collect();
            client
                .execute(
                    "INSERT INTO revocations (kind, value, exp, revoked_at, requester)
                     SELECT k, v, e, 1, 'operator'
                     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(k, v, e)",
                    &[&kind, &value, &rexp],
                )
                .await
                .unwrap();
            client.batch_execute("ANALYZE").await.unwrap();
            drop(client);
            let _ = conn.await;
        });
    })
    .join()
    .unwrap();
}

/// The rows the plans in `log` (auto_explain, JSON, with ANALYZE) read from `tables`: per
/// scan node, the rows it returned and those its filters removed, times its loops.
fn rows_read(log: &str, tables: &[&str]) -> f64 {
    fn walk(node: &serde_json::Value, tables: &[&str], sum: &mut f64) {
        let n = |k: &str| {
            node.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        if node
            .get("Relation Name")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|r| tables.contains(&r))
        {
            *sum += (n("Actual Rows")
                + n("Rows Removed by Filter")
                + n("Rows Removed by Index Recheck"))
                * n("Actual Loops").max(1.0);
        }
        for child in node
            .get("Plans")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(child, tables, sum);
        }
    }
    let mut sum = 0.0;
    let mut plans = 0;
    for (at, _) in log.match_indices("plan:") {
        let rest = &log[at + "plan:".len()..];
        let Some(Ok(plan)) = serde_json::Deserializer::from_str(rest)
            .into_iter::<serde_json::Value>()
            .next()
        else {
            continue;
        };
        plans += 1;
        if let Some(p) = plan.get("Plan") {
            walk(p, tables, &mut sum);
        }
    }
    assert!(plans > 0, "no plan in the log: {log}");
    sum
}

/// CA-API.md 3.11 on PostgreSQL, on a domain of many agents of which the caller may list a
/// few: every page is the next live tasks of those agents by task id, and a page reads the
/// listed agents' own rows (their identities, the tasks they hold), never the table: counted
/// from the executed plans (auto_explain with ANALYZE), not timed.
#[test]
fn a_tasks_page_on_postgresql_reads_only_the_listed_agents_rows() {
    let Some(pg) = PgCluster::start() else {
        eprintln!("PostgreSQL not installed: skipped");
        return;
    };
    pg.create_database("agentid");
    // Every statement's executed plan, with the rows each node read, in the server's log.
    sql(
        &pg,
        "agentid",
        "ALTER DATABASE agentid SET session_preload_libraries = 'auto_explain';
         ALTER DATABASE agentid SET auto_explain.log_min_duration = 0;
         ALTER DATABASE agentid SET auto_explain.log_analyze = on;
         ALTER DATABASE agentid SET auto_explain.log_timing = off;
         ALTER DATABASE agentid SET auto_explain.log_format = json;",
    );
    let store = agentid_ca::store::PgStore::open_url(&pg.url("agentid"), "main").unwrap();
    let now = 1_000_000;
    let inv = Inventory::generate("a", 200, 100, now, 0);
    load(&pg, "agentid", &inv);
    let few: Vec<String> = [1, 2, 3, 7, 199, 7]
        .iter()
        .map(|i| Inventory::agent("a", *i))
        .chain(["nobody".to_owned()])
        .collect();
    // And every agent (a platform service): its pages are found among the next tasks.
    let every: Vec<String> = (0..200).map(|i| Inventory::agent("a", i)).collect();
    for (listed, limits) in [(&few, [7, 1000]), (&every, [97, 1000])] {
        pages_are_the_spec_answer(&store, &inv, listed, &limits, now);
    }
    // The work of one full page for the few agents, then with as many tasks again of agents
    // the caller may not list: it does not grow.
    let own: usize = inv.tasks.iter().filter(|t| few.contains(&t.agent)).count()
        + inv
            .children
            .iter()
            .filter(|c| few.contains(&c.agent))
            .count();
    let table = inv.tasks.len() + inv.children.len();
    let page_read = |store: &agentid_ca::store::PgStore| {
        let from = pg.log("server.log").len();
        let page = store.live_tasks_page(&few, None, 1001, now).unwrap();
        let log = pg.log("server.log");
        (
            page.len(),
            rows_read(&log[from..], &["tasks", "identities"]),
        )
    };
    let (n, read) = page_read(&store);
    assert_eq!(n, inv.expected(&few, None, now).len());
    load(&pg, "agentid", &Inventory::generate("b", 200, 100, now, 1));
    let (again, read_again) = page_read(&store);
    assert_eq!(again, n);
    println!(
        "rows read: {read} -> {read_again} (the listed agents' identities: {own}; \
         the table's tasks and identities: {table}, then twice as many)"
    );
    assert!(
        read_again <= read * 1.1 + 100.0 && read < table as f64 / 2.0,
        "a page read {read} rows of tasks and identities, {read_again} once other agents had \
         as many tasks again; the listed agents have {own} identities of the table's {table}"
    );
}

/// Every page of `listed`'s live tasks is the next ones by task id (the test cluster's
/// collation is C: ids by bytes, as `expected`).
fn pages_are_the_spec_answer(
    store: &agentid_ca::store::PgStore,
    inv: &Inventory,
    listed: &[String],
    limits: &[usize],
    now: u64,
) {
    let all = inv.expected(listed, None, now);
    assert!(all.len() > 100, "{}", all.len());
    for &limit in limits {
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let page: Vec<_> = store
                .live_tasks_page(listed, after.as_deref(), limit, now)
                .unwrap()
                .into_iter()
                .map(|l| (l.task.task, l.task.holder, l.agent, l.jkt, l.task.exp))
                .collect();
            let want = inv.expected(listed, after.as_deref(), now);
            assert_eq!(page, want[..want.len().min(limit)], "after {after:?}");
            seen.extend(page.iter().cloned());
            match page.last() {
                Some(last) if page.len() == limit => after = Some(last.0.clone()),
                _ => break,
            }
        }
        assert_eq!(seen, all, "limit {limit}");
    }
}

/// A database of schema version 2 (before the inventory's index) with tasks in it: opening
/// migrates it to the current version, keeps its rows, and the inventory lists them; the token
/// indexes of version 5 are there.
#[test]
fn a_version_2_database_migrates_to_the_inventory_index_and_keeps_its_tasks() {
    let Some(pg) = PgCluster::start() else {
        eprintln!("PostgreSQL not installed: skipped");
        return;
    };
    pg.create_database("agentid");
    let mut v2 = String::from(
        "CREATE TABLE agentid_schema (
           one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version INTEGER NOT NULL);
         INSERT INTO agentid_schema (one, version) VALUES (TRUE, 2);",
    );
    for m in agentid_ca::migrate::PG_MIGRATIONS
        .iter()
        .filter(|m| m.version <= 2)
    {
        v2.push_str(m.sql);
    }
    sql(&pg, "agentid", &v2);
    let now = 1_000_000;
    let inv = Inventory::generate("a", 8, 10, now, 0);
    load(&pg, "agentid", &inv);
    let store = agentid_ca::store::PgStore::open_url(&pg.url("agentid"), "main").unwrap();
    assert_eq!(store.schema_version().unwrap(), PG_SCHEMA_VERSION);
    let listed = vec![Inventory::agent("a", 1), Inventory::agent("a", 4)];
    let page: Vec<String> = store
        .live_tasks_page(&listed, None, 1000, now)
        .unwrap()
        .into_iter()
        .map(|l| l.task.task)
        .collect();
    let want: Vec<String> = inv
        .expected(&listed, None, now)
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(page, want);
    drop(store);
    // The index is there (what a page seeks by).
    sql(
        &pg,
        "agentid",
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = 'identities_agent_task') THEN
             RAISE EXCEPTION 'identities_agent_task is missing';
           END IF;
         END $$;",
    );
    // And the token indexes of version 5 (a service's outstanding tokens, pruning by expiry).
    for index in ["bootstrap_tokens_creator", "bootstrap_tokens_expires"] {
        sql(
            &pg,
            "agentid",
            &format!(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = '{index}') THEN
                     RAISE EXCEPTION '{index} is missing';
                   END IF;
                 END $$;"
            ),
        );
    }
}

/// A database of schema version 3 (before each binding's key time): the upgrade dates each
/// service's key from its first certificate for the name, as SQLite's version 6 does.
#[test]
fn a_version_3_database_dates_each_service_key_from_its_first_certificate() {
    let Some(pg) = PgCluster::start() else {
        eprintln!("PostgreSQL not installed: skipped");
        return;
    };
    let dir = make_pg_ca_dir(KeyType::P256, &pg, "agentid");
    let mut policy = POLICY.to_owned();
    policy.push_str(
        "\n[services.keyed]\nmax_ttl = \"1h\"\nmax_key_age = \"2h\"\nrequesters = [\"operator\"]\n",
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let t0 = now();
    let at = |s: u64| t0 + std::time::Duration::from_secs(s);
    let issue = |ca: &CertificateAuthority, key: &agentid_ca::KeySource, when| {
        ca.issue_service(
            &agentid_ca::ServiceRequest {
                service: "keyed".into(),
                key: key.clone(),
                ttl: None,
            },
            when,
        )
    };
    let (_k, key) = spki_key(Algorithm::Es256);
    let (_k2, key2) = spki_key(Algorithm::Es256);
    let uri = {
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        issue(&ca, &key, at(0)).unwrap();
        issue(&ca, &key2, at(3600)).unwrap();
        issue(&ca, &key2, at(7200)).unwrap().identity
    };
    sql(
        &pg,
        "agentid",
        "ALTER TABLE identities DROP COLUMN key_bound_at;
         DROP INDEX bootstrap_tokens_creator; DROP INDEX bootstrap_tokens_expires;
         DROP TABLE audit_bases; DROP TABLE audit_base_revocations;
         ALTER TABLE keys DROP COLUMN first_issued_at;
         UPDATE agentid_schema SET version = 3;",
    );
    let store = agentid_ca::store::PgStore::open_url(&pg.url("agentid"), "main").unwrap();
    assert_eq!(store.schema_version().unwrap(), PG_SCHEMA_VERSION);
    let bound = store.identity(uri.as_str()).unwrap().unwrap();
    assert_eq!(bound.key_bound_at, Some(unix(t0) + 3600));
    drop(store);
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let err = issue(&ca, &key2, at(3 * 3600)).unwrap_err();
    assert!(
        err.to_string().contains("services.keyed.max_key_age"),
        "{err}"
    );
}
