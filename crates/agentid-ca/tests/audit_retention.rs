//! Audit retention (CA-API.md 4.5): `CertificateAuthority::prune_audit` deletes the records
//! older than the retention whose certificates (and tasks) ended as long ago, once an export
//! kept outside the store holds them, with their checkpoints and the certificates' rows; each
//! pruned chain then starts at a base signed with the audit key, which `audit verify` checks.
//! Nothing is pruned from a trail that does not verify, nor what the export lacks; a prefix
//! deleted without the audit key, or a pruned record put back, is a break.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use agentid_ca::audit::{self, Anchor, AuditBreak, ExportLine};
use agentid_ca::{CaError, CertificateAuthority, KeyType, OpenTaskRequest, TaskRequester};
use agentid_protocol::{Algorithm, Scope};
use common::*;

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
const WEEK: Duration = Duration::from_secs(7 * DAY);

fn at(base: SystemTime, secs: u64) -> SystemTime {
    base + Duration::from_secs(secs)
}

fn planner(task_ttl: Option<Duration>) -> OpenTaskRequest {
    let mut r = OpenTaskRequest::new(
        "planner",
        spki_key(Algorithm::Es256).1,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    r.task_ttl = task_ttl;
    r
}

/// The export of the whole trail, and the records it names.
fn export(dir: &Path, since: Option<u64>) -> (String, Vec<Anchor>) {
    let mut out = Vec::new();
    audit::export_dir(dir, since, &mut out).unwrap();
    let anchors = audit::read_anchors(&out[..]).unwrap();
    (String::from_utf8(out).unwrap(), anchors)
}

/// A trail of 130 tasks opened at `t0` (their certificates and tasks end within the hour,
/// checkpointed at record 130), then one task opened six hours later that lasts eight hours
/// (record 131), then three more short tasks (records 132-134). Returns the serials of the
/// first 130 certificates and of the long task's.
fn trail(t: &TestCa, t0: SystemTime) -> (Vec<String>, String) {
    let mut early = Vec::new();
    for _ in 0..130 {
        early.push(
            t.ca.open_task(&planner(None), t0)
                .unwrap()
                .certificate
                .serial()
                .to_owned(),
        );
    }
    assert_eq!(t.ca.checkpoint_audit(t0, true).unwrap(), Some(130));
    let long =
        t.ca.open_task(
            &planner(Some(Duration::from_secs(8 * HOUR))),
            at(t0, 6 * HOUR),
        )
        .unwrap()
        .certificate
        .serial()
        .to_owned();
    for _ in 0..3 {
        t.ca.open_task(&planner(None), at(t0, 6 * HOUR)).unwrap();
    }
    (early, long)
}

fn chain(dir: &Path) -> audit::ChainSummary {
    let report = audit::verify_dir(dir).unwrap().unwrap();
    assert_eq!(report.chains.len(), 1);
    report.chains[0].clone()
}

#[test]
fn records_past_their_retention_go_and_the_rest_still_verifies() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    let (early, long) = trail(&t, t0);
    let (_, exported) = export(t.path(), None);
    // A week after the long task's start plus twelve hours: the cutoff (t0 + 12 h) is past
    // every early record and certificate, but the long task (until t0 + 14 h) is not over.
    let counts =
        t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &exported)
            .unwrap();
    assert_eq!(counts.chains, 1);
    assert_eq!(counts.records, 130);
    assert_eq!(counts.issuances, 130);
    assert!(counts.checkpoints >= 2, "{counts:?}");
    for serial in &early {
        assert!(t.ca.issuance(serial).unwrap().is_none(), "{serial} kept");
    }
    // The long task's record and certificate stay, and so does everything after them.
    assert!(t.ca.issuance(&long).unwrap().is_some());
    let c = chain(t.path());
    assert_eq!((c.records, c.pruned), (134, 130));
    let seqs: Vec<u64> =
        t.ca.audit_snapshot(None)
            .unwrap()
            .records
            .iter()
            .map(|r| r.seq)
            .collect();
    assert_eq!(seqs, (131..=134).collect::<Vec<_>>());
    // The same prune again has nothing to do: the long task still stands first.
    let again =
        t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &exported)
            .unwrap();
    assert_eq!(again.chains, 0);
    // The CA goes on writing the chain after the prune.
    t.ca.open_task(&planner(None), at(t0, 7 * DAY + 12 * HOUR))
        .unwrap();
    assert_eq!(chain(t.path()).records, 135);
}

#[test]
fn nothing_goes_that_the_export_does_not_hold() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    trail(&t, t0);
    // An export of the newer records only.
    let (_, later) = export(t.path(), Some(unix(t0) + 6 * HOUR));
    let err =
        t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &later)
            .unwrap_err();
    match &err {
        CaError::InvalidRequest(m) => {
            assert!(m.contains("does not hold record 1 "), "{m}");
            assert!(m.contains("agentid audit export"), "{m}");
        }
        other => panic!("expected a refusal naming the record, got {other:?}"),
    }
    let c = chain(t.path());
    assert_eq!((c.records, c.pruned), (134, 0));
    // And without any export.
    assert!(t
        .ca
        .prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &[])
        .is_err());
    assert_eq!(chain(t.path()).pruned, 0);
}

#[test]
fn a_retention_under_a_day_is_refused() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    trail(&t, t0);
    let (_, exported) = export(t.path(), None);
    let err =
        t.ca.prune_audit(Duration::from_secs(DAY - 1), at(t0, 7 * DAY), &exported)
            .unwrap_err();
    assert!(
        matches!(&err, CaError::InvalidRequest(m) if m.contains("shorter than a day")),
        "{err:?}"
    );
    assert_eq!(chain(t.path()).pruned, 0);
}

#[test]
fn an_export_kept_from_before_the_prune_still_vouches_for_the_store() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    trail(&t, t0);
    let (_, exported) = export(t.path(), None);
    t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &exported)
        .unwrap();
    let report = audit::verify_dir_anchored(t.path(), &exported)
        .unwrap()
        .unwrap();
    assert_eq!(report.anchors, 134);
    assert_eq!(report.anchors_pruned, 130);
    // A record of the kept part rewritten in the export is still found.
    let mut changed = exported.clone();
    changed[131].hash = "00".repeat(32);
    assert!(matches!(
        audit::verify_dir_anchored(t.path(), &changed).unwrap(),
        Err(AuditBreak::Anchor { seq: 132, .. })
    ));
    // So is another record at the base itself.
    let mut at_base = exported.clone();
    at_base[129].hash = "00".repeat(32);
    assert!(matches!(
        audit::verify_dir_anchored(t.path(), &at_base).unwrap(),
        Err(AuditBreak::Anchor { seq: 130, .. })
    ));
}

#[test]
fn the_export_after_a_prune_starts_at_its_signed_base() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    trail(&t, t0);
    let (_, exported) = export(t.path(), None);
    t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &exported)
        .unwrap();
    let (text, _) = export(t.path(), None);
    let lines: Vec<ExportLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ExportLine::Base { writer, seq, jws } = &lines[0] else {
        panic!(
            "the export does not start with the chain's base: {:?}",
            lines[0]
        );
    };
    assert_eq!((writer.as_str(), *seq), (audit::DEFAULT_WRITER, 130));
    // Offline: the base verifies with audit.pub, and the first record links to its head.
    let key = audit::audit_public_key(t.path()).unwrap();
    let claims = audit::verify_base(jws, &key).unwrap();
    assert_eq!(claims.seq, 130);
    assert!(
        audit::verify_checkpoint(jws, &key).is_err(),
        "a base is no checkpoint"
    );
    let ExportLine::Record { body, .. } = &lines[1] else {
        panic!("expected record 131 after the base: {:?}", lines[1]);
    };
    assert_eq!(body.seq, 131);
    assert_eq!(body.prev, claims.head);
}

#[test]
fn a_service_key_bound_again_after_its_records_were_pruned_keeps_its_age() {
    let t = test_ca(KeyType::P256);
    let mut policy = POLICY.to_owned();
    policy.push_str(
        "\n[services.keyed]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\nmax_key_age = \"8d\"\n",
    );
    std::fs::write(t.path().join("policy.toml"), policy).unwrap();
    let ca = CertificateAuthority::open(t.path()).unwrap();
    let issue = |key: &agentid_ca::KeySource, when: SystemTime| {
        ca.issue_service(
            &agentid_ca::ServiceRequest {
                service: "keyed".into(),
                key: key.clone(),
                ttl: None,
            },
            when,
        )
    };
    let t0 = now();
    let (_k1, old) = spki_key(Algorithm::Es256);
    let (_k2, new) = spki_key(Algorithm::Es256);
    issue(&old, t0).unwrap();
    issue(&new, at(t0, HOUR)).unwrap();
    // Record 2 checkpointed (by time or now), so that the prune may end there.
    ca.checkpoint_audit(at(t0, HOUR), true).unwrap();
    issue(&new, at(t0, 7 * DAY)).unwrap();
    let (_, exported) = export(t.path(), None);
    let counts = ca.prune_audit(WEEK, at(t0, 9 * DAY), &exported).unwrap();
    assert_eq!((counts.records, counts.issuances), (2, 2));
    // The old key's certificates are gone from the store, but not when it got its first: bound
    // again nine days on, it is past its eight days.
    let err = issue(&old, at(t0, 9 * DAY)).unwrap_err();
    assert!(
        matches!(&err, CaError::Policy { rule, .. } if rule == "services.keyed.max_key_age"),
        "{err:?}"
    );
}

// ---- What the store alone shows (SQLite: edits made directly in the database) ----

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("ca.db")).unwrap()
}

fn pruned_ca() -> (TestCa, SystemTime) {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    trail(&t, t0);
    let (_, exported) = export(t.path(), None);
    t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &exported)
        .unwrap();
    (t, t0)
}

#[test]
fn a_trail_that_does_not_verify_is_not_pruned() {
    if postgres_under_test() {
        return;
    }
    let t = test_ca(KeyType::P256);
    let t0 = now();
    trail(&t, t0);
    let (_, exported) = export(t.path(), None);
    db(t.path())
        .execute(
            "UPDATE audit_records SET body = replace(body, '\"ok\"', '\"denied\"') WHERE seq = 5",
            [],
        )
        .unwrap();
    let err =
        t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &exported)
            .unwrap_err();
    assert!(
        matches!(&err, CaError::AuditBroken(b) if matches!(**b, AuditBreak::Record { seq: 5, .. })),
        "{err:?}"
    );
    let n: i64 = db(t.path())
        .query_row("SELECT COUNT(*) FROM audit_records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 134, "records were deleted from a broken trail");
}

#[test]
fn a_prefix_deleted_without_the_audit_key_does_not_verify() {
    if postgres_under_test() {
        return;
    }
    let t = test_ca(KeyType::P256);
    trail(&t, now());
    let c = db(t.path());
    c.execute("DELETE FROM audit_records WHERE seq <= 64", [])
        .unwrap();
    c.execute("DELETE FROM audit_checkpoints WHERE seq < 64", [])
        .unwrap();
    assert!(matches!(
        audit::verify_dir(t.path()).unwrap(),
        Err(AuditBreak::Record { seq: 1, .. })
    ));
}

#[test]
fn a_pruned_record_put_back_is_named() {
    if postgres_under_test() {
        return;
    }
    let (t, _) = pruned_ca();
    db(t.path())
        .execute(
            "INSERT INTO audit_records (writer, seq, ts, body, hash)
             SELECT writer, 130, ts, body, hash FROM audit_records WHERE seq = 131",
            [],
        )
        .unwrap();
    match audit::verify_dir(t.path()).unwrap() {
        Err(AuditBreak::Record { reason, .. }) => {
            assert!(reason.contains("pruned"), "{reason}")
        }
        other => panic!("expected the record put back to be named, got {other:?}"),
    }
}

#[test]
fn a_base_deleted_or_moved_in_the_store_is_found() {
    if postgres_under_test() {
        return;
    }
    // Deleted: the chain then starts at record 131.
    let (t, _) = pruned_ca();
    db(t.path()).execute("DELETE FROM audit_bases", []).unwrap();
    assert!(matches!(
        audit::verify_dir(t.path()).unwrap(),
        Err(AuditBreak::Record { seq: 1, .. })
    ));
    // Moved past more records deleted with it.
    let (t, _) = pruned_ca();
    let c = db(t.path());
    c.execute("DELETE FROM audit_records WHERE seq <= 132", [])
        .unwrap();
    c.execute(
        "UPDATE audit_bases SET seq = 132, head = (SELECT json_extract(body, '$.prev') FROM audit_records WHERE seq = 133)",
        [],
    )
    .unwrap();
    assert!(matches!(
        audit::verify_dir(t.path()).unwrap(),
        Err(AuditBreak::Base { seq: 132, .. })
    ));
}

#[test]
fn a_base_signed_with_another_key_is_found() {
    if postgres_under_test() {
        return;
    }
    let (t, _) = pruned_ca();
    // Another CA's audit key signs a base for this chain.
    let other = test_ca(KeyType::P256);
    trail(&other, now());
    let (_, exported) = export(other.path(), None);
    other
        .ca
        .prune_audit(WEEK, at(now(), 7 * DAY + 12 * HOUR), &exported)
        .unwrap();
    let forged: String = db(other.path())
        .query_row("SELECT jws FROM audit_bases", [], |r| r.get(0))
        .unwrap();
    db(t.path())
        .execute("UPDATE audit_bases SET jws = ?1", [forged])
        .unwrap();
    match audit::verify_dir(t.path()).unwrap() {
        Err(AuditBreak::Base { reason, .. }) => assert!(
            reason.contains("does not verify with the audit key")
                || reason.contains("columns differ"),
            "{reason}"
        ),
        other => panic!("expected the forged base to be named, got {other:?}"),
    }
}

/// Each writer's chain is pruned on its own and gets its own base: one writer whose old records
/// all stand behind a certificate still in force keeps them while another's go.
#[test]
fn each_writer_is_pruned_to_its_own_base() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    trail(&t, t0);
    // A second CA process on the same store: a long task first (until t0 + 14 h), then 70
    // short ones, all at t0 + 6 h.
    let b = CertificateAuthority::open_as(t.path(), "replica-b").unwrap();
    b.open_task(
        &planner(Some(Duration::from_secs(8 * HOUR))),
        at(t0, 6 * HOUR),
    )
    .unwrap();
    for _ in 0..70 {
        b.open_task(&planner(None), at(t0, 6 * HOUR)).unwrap();
    }
    let (_, exported) = export(t.path(), None);
    let counts =
        t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 12 * HOUR), &exported)
            .unwrap();
    assert_eq!((counts.chains, counts.records), (1, 130));
    let report = audit::verify_dir(t.path()).unwrap().unwrap();
    let chains: Vec<(&str, u64, u64)> = report
        .chains
        .iter()
        .map(|c| (c.writer.as_str(), c.records, c.pruned))
        .collect();
    assert_eq!(
        chains,
        vec![(audit::DEFAULT_WRITER, 134, 130), ("replica-b", 71, 0)]
    );
    // A day later both long tasks ended a week ago: replica-b's chain goes up to its record 64
    // (its last checkpoint before its head), main's further, up to a checkpoint before its own
    // head (record 134 stays).
    let (_, exported) = export(t.path(), None);
    let counts =
        t.ca.prune_audit(WEEK, at(t0, 8 * DAY + 12 * HOUR), &exported)
            .unwrap();
    assert_eq!(counts.chains, 2, "{counts:?}");
    let report = audit::verify_dir_anchored(t.path(), &exported)
        .unwrap()
        .unwrap();
    let b_chain = report
        .chains
        .iter()
        .find(|c| c.writer == "replica-b")
        .unwrap();
    assert_eq!((b_chain.records, b_chain.pruned), (71, 64));
    let main = report
        .chains
        .iter()
        .find(|c| c.writer == audit::DEFAULT_WRITER)
        .unwrap();
    assert!(main.pruned > 130 && main.pruned < 134, "{main:?}");
}

/// Two prunes of a PostgreSQL store's chain that has no base yet, at once: one (here done by
/// hand in a transaction of its own, as far as record 130) commits while the other, planned
/// to record 64, waits on the base's row. The second must find the chain pruned further and
/// prune nothing, not move the base back to 64 (a chain whose first record is 131 but whose
/// base says 64 no longer verifies, and every later prune is refused).
#[cfg(feature = "postgres")]
#[test]
fn a_prune_racing_a_further_one_on_postgres_does_not_move_the_base_back() {
    if !postgres_under_test() {
        return;
    }
    let t = test_ca(KeyType::P256);
    let url = t.pg.as_ref().unwrap().url("agentid");
    let t0 = now();
    // Records 1-64 at t0 (their tasks end within the hour), 65-130 two hours later.
    for _ in 0..64 {
        t.ca.open_task(&planner(None), t0).unwrap();
    }
    for _ in 0..66 {
        t.ca.open_task(&planner(None), at(t0, 2 * HOUR)).unwrap();
    }
    assert_eq!(
        t.ca.checkpoint_audit(at(t0, 2 * HOUR), true).unwrap(),
        Some(130)
    );
    for _ in 0..3 {
        t.ca.open_task(&planner(None), at(t0, 2 * HOUR)).unwrap();
    }
    let writer = t.ca.audit_snapshot(None).unwrap().records[0].writer.clone();
    let (_, exported) = export(t.path(), None);

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let further = {
        let (url, writer) = (url.clone(), writer.clone());
        std::thread::spawn(move || {
            agentid_test_support::pg::with_client(&url, move |mut c| async move {
                let tx = c.transaction().await.unwrap();
                tx.execute(
                    "INSERT INTO audit_bases (writer, seq, head, iat, jws) \
                     SELECT writer, seq, hash, 0, 'x' FROM audit_records \
                     WHERE writer = $1 AND seq = 130",
                    &[&writer],
                )
                .await
                .unwrap();
                tx.execute(
                    "DELETE FROM audit_records WHERE writer = $1 AND seq <= 130",
                    &[&writer],
                )
                .await
                .unwrap();
                ready_tx.send(()).unwrap();
                go_rx.recv_timeout(Duration::from_secs(60)).unwrap();
                tx.commit().await.unwrap();
            })
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let result = std::thread::scope(|s| {
        // Cutoff t0 + 1.5 h: records 1-64 may go, record 65 stops the walk.
        let prune = s.spawn(|| {
            t.ca.prune_audit(WEEK, at(t0, 7 * DAY + 3 * HOUR / 2), &exported)
        });
        // Until that prune waits on the base's row the other transaction holds.
        let waiting = || {
            agentid_test_support::pg::with_client(&url, |c| async move {
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                n
            })
        };
        let mut polls = 0;
        while waiting() == 0 && !prune.is_finished() {
            polls += 1;
            assert!(polls < 600, "the prune never waited on the base's row");
            std::thread::sleep(Duration::from_millis(100));
        }
        go_tx.send(()).unwrap();
        prune.join().unwrap()
    });
    further.join().unwrap();
    let base: i64 = agentid_test_support::pg::with_client(&url, move |c| async move {
        c.query_one("SELECT seq FROM audit_bases WHERE writer = $1", &[&writer])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(base, 130, "the base was moved back: {result:?}");
    match result {
        Err(CaError::Store(m)) => assert!(m.contains("pruned further meanwhile"), "{m}"),
        other => panic!("expected the prune to find the chain pruned further, got {other:?}"),
    }
}

/// An `ok` revocation record is what makes a revocation row deleted (or its `exp` lowered) in
/// the store a break: pruned while its entry is still in force (its `exp` ahead), whoever can
/// write the store could undo the revocation unseen (the lists leave it out, the CA issues to
/// the target again). It stays until its entry's `exp` is past the retention.
#[test]
fn a_revocation_record_stays_while_its_entry_is_in_force() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    let rec =
        t.ca.revoke(
            &agentid_ca::RevokeTarget::Agent("planner".into()),
            Some("key stolen"),
            "operator",
            t0,
        )
        .unwrap();
    // Record 1 is the revocation; 70 refused requests of the revoked agent follow.
    for _ in 0..70 {
        t.ca.open_task(&planner(None), t0).unwrap_err();
    }
    t.ca.checkpoint_audit(t0, true).unwrap();
    let (_, exported) = export(t.path(), None);
    // A day past the record, but the entry (a day's links, plus the skew) is in force within
    // the day's retention.
    let when = at(t0, 2 * DAY);
    assert!(unix(when) - DAY < rec.exp, "{} {}", rec.exp, unix(t0));
    let counts =
        t.ca.prune_audit(Duration::from_secs(DAY), when, &exported)
            .unwrap();
    assert_eq!(counts.records, 0, "{counts:?}");
    assert_eq!(chain(t.path()).pruned, 0);
    // Once its entry ended a retention ago, it goes.
    let later = at(t0, 3 * DAY);
    assert!(unix(later) - DAY > rec.exp);
    let counts =
        t.ca.prune_audit(Duration::from_secs(DAY), later, &exported)
            .unwrap();
    assert_eq!(counts.records, 64, "{counts:?}");
}

/// The revocations of pruned records stay held: the base signs them, and a revocation row
/// deleted or cut short in the store after its record was pruned is a break of the base (the
/// CA refuses the target as long as the row exists, so deleting it would undo the revocation).
#[test]
fn a_revocation_whose_record_was_pruned_stays_held_by_the_base() {
    if postgres_under_test() {
        return;
    }
    let revoked_and_pruned = || {
        let t = test_ca(KeyType::P256);
        let t0 = now();
        t.ca.revoke(
            &agentid_ca::RevokeTarget::Agent("planner".into()),
            Some("key stolen"),
            "operator",
            t0,
        )
        .unwrap();
        for _ in 0..70 {
            t.ca.open_task(&planner(None), t0).unwrap_err();
        }
        t.ca.checkpoint_audit(t0, true).unwrap();
        let (_, exported) = export(t.path(), None);
        let counts =
            t.ca.prune_audit(Duration::from_secs(DAY), at(t0, 3 * DAY), &exported)
                .unwrap();
        assert_eq!(counts.records, 64, "{counts:?}");
        // Still refused after the prune, and the trail verifies.
        assert!(t.ca.open_task(&planner(None), at(t0, 3 * DAY)).is_err());
        assert_eq!(chain(t.path()).pruned, 64);
        t
    };
    let base_break = |t: &TestCa, needle: &str| match audit::verify_dir(t.path()).unwrap() {
        Err(AuditBreak::Base {
            seq: 64, reason, ..
        }) => {
            assert!(reason.contains(needle), "{reason}")
        }
        other => panic!("expected a break of the base, got {other:?}"),
    };
    // The revocation's row deleted.
    let t = revoked_and_pruned();
    db(t.path())
        .execute("DELETE FROM revocations WHERE kind = 'agent'", [])
        .unwrap();
    base_break(&t, "no longer holds");
    // Its exp lowered.
    let t = revoked_and_pruned();
    db(t.path())
        .execute("UPDATE revocations SET exp = 1 WHERE kind = 'agent'", [])
        .unwrap();
    base_break(&t, "was lowered");
    // The kept revocation deleted with it.
    let t = revoked_and_pruned();
    let c = db(t.path());
    c.execute("DELETE FROM revocations WHERE kind = 'agent'", [])
        .unwrap();
    c.execute("DELETE FROM audit_base_revocations", []).unwrap();
    base_break(&t, "not the ones it signs");
}

/// A chain with more records to prune than a batch goes in several transactions, each ending at
/// a checkpointed record under a base of its own; the bases carry every revocation pruned
/// before them, so the last still holds a revocation whose record went in the first batches.
#[test]
fn a_long_chain_is_pruned_in_batches_whose_bases_carry_every_pruned_revocation() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    let worker = |task_ttl: Option<Duration>| {
        let mut r = planner(task_ttl);
        r.agent = "worker".into();
        r
    };
    for _ in 0..70 {
        t.ca.open_task(&planner(None), t0).unwrap();
    }
    // Record 71.
    t.ca.revoke(
        &agentid_ca::RevokeTarget::Agent("planner".into()),
        Some("key stolen"),
        "operator",
        t0,
    )
    .unwrap();
    for _ in 0..70 {
        t.ca.open_task(&worker(None), t0).unwrap();
    }
    assert_eq!(t.ca.checkpoint_audit(t0, true).unwrap(), Some(141));
    t.ca.open_task(
        &worker(Some(Duration::from_secs(8 * HOUR))),
        at(t0, 6 * HOUR),
    )
    .unwrap();
    for _ in 0..3 {
        t.ca.open_task(&worker(None), at(t0, 6 * HOUR)).unwrap();
    }
    let (_, exported) = export(t.path(), None);
    // Nine days on, past the revocation's end too (a day: the agent's longest certificate).
    // Checkpoints at records 1, 64, 128, 141 and 142 (the long task's, timed: six hours after
    // the last), the last before the head (145): batches of 64 end at 64, 128 and 142.
    let counts =
        t.ca.prune_audit_in_batches(WEEK, at(t0, 9 * DAY), exported.as_slice().into(), 64)
            .unwrap();
    assert_eq!(
        (
            counts.chains,
            counts.transactions,
            counts.records,
            counts.issuances
        ),
        (1, 3, 142, 141),
        "{counts:?}"
    );
    let c = chain(t.path());
    assert_eq!((c.records, c.pruned), (145, 142));
    // Still refused after the prune: the revocation stands.
    assert!(t.ca.open_task(&planner(None), at(t0, 9 * DAY)).is_err());
    if postgres_under_test() {
        return;
    }
    // The last base holds the revocation whose record went in the second batch.
    db(t.path())
        .execute("DELETE FROM revocations WHERE kind = 'agent'", [])
        .unwrap();
    match audit::verify_dir(t.path()).unwrap() {
        Err(AuditBreak::Base {
            seq: 142, reason, ..
        }) => assert!(reason.contains("no longer holds"), "{reason}"),
        other => panic!("expected the last base to hold the revocation, got {other:?}"),
    }
}

/// A prune in batches finds each batch's serials among the records that batch deletes (the plan
/// holds none, whatever the number of records): each batch deletes the issuance rows of its own
/// records and of no other, a walk stopped at a certificate still retained keeps its row and
/// every later one, and a later prune takes the rest, batch by batch again.
#[test]
fn each_batch_deletes_the_issuance_rows_of_its_own_records_and_no_other() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    let open = |r: &OpenTaskRequest, when: SystemTime| -> String {
        t.ca.open_task(r, when)
            .unwrap()
            .certificate
            .serial()
            .to_owned()
    };
    // Records 1-150: short tasks (certificates and tasks ended within the hour).
    let early: Vec<String> = (0..150).map(|_| open(&planner(None), t0)).collect();
    // Record 151, an hour later: a task of eight hours; then records 152-211, short ones,
    // checkpointed at 211; then records 212-214.
    let long = open(&planner(Some(Duration::from_secs(8 * HOUR))), at(t0, HOUR));
    let late: Vec<String> = (0..60)
        .map(|_| open(&planner(None), at(t0, HOUR)))
        .collect();
    assert_eq!(
        t.ca.checkpoint_audit(at(t0, HOUR), true).unwrap(),
        Some(211)
    );
    let last: Vec<String> = (0..3).map(|_| open(&planner(None), at(t0, HOUR))).collect();
    let (_, exported) = export(t.path(), None);
    let held = |serials: &[String]| -> Vec<bool> {
        serials
            .iter()
            .map(|s| t.ca.issuance(s).unwrap().is_some())
            .collect()
    };

    // The plan of a prune of every record but the last three names where it may stop, not the
    // certificates its records issued.
    let snap = t.ca.audit_snapshot(None).unwrap();
    let mut ended = |_: &str| -> agentid_ca::error::Result<Option<u64>> { Ok(Some(0)) };
    let plans = audit::plan_prune(&snap, unix(t0) + 2 * HOUR, &mut ended).unwrap();
    assert_eq!(
        plans.iter().map(|p| (p.from, p.seq)).collect::<Vec<_>>(),
        vec![(0, 211)]
    );
    let shown = format!("{plans:?}");
    for s in early.iter().chain([&long]).chain(&late) {
        assert!(!shown.contains(s.as_str()), "the plan holds serial {s}");
    }

    // Two hours after t0 (a week's retention): the walk stops at the long task (record 151),
    // so the prune ends at the checkpoint before it, 128, in two batches of 64 records.
    // A prune in batches of 64 records, `hours` after t0: (chains, transactions, records,
    // issuance rows).
    let prune_at = |hours: u64| {
        let c =
            t.ca.prune_audit_in_batches(
                WEEK,
                at(t0, 7 * DAY + hours * HOUR),
                exported.as_slice().into(),
                64,
            )
            .unwrap();
        (c.chains, c.transactions, c.records, c.issuances)
    };
    assert_eq!(prune_at(2), (1, 2, 128, 128));
    let (gone, kept) = early.split_at(128);
    assert_eq!(held(gone), vec![false; 128], "records 1-128's rows");
    // Records 129-150 were walked but are after the last batch's end: their rows stay, as do
    // the long task's and every later one.
    assert_eq!(held(kept), vec![true; 22], "records 129-150's rows");
    assert_eq!(held(std::slice::from_ref(&long)), vec![true]);
    assert_eq!(held(&late), vec![true; 60], "records 152-211's rows");
    assert_eq!(held(&last), vec![true; 3]);
    let c = chain(t.path());
    assert_eq!((c.records, c.pruned), (214, 128));

    // Ten hours after t0: the long task ended too; the prune goes on from 128 to 211 (the last
    // checkpoint before the head), in two batches again.
    assert_eq!(prune_at(10), (1, 2, 83, 83));
    assert_eq!(held(kept), vec![false; 22], "records 129-150's rows");
    assert_eq!(held(std::slice::from_ref(&long)), vec![false]);
    assert_eq!(held(&late), vec![false; 60], "records 152-211's rows");
    assert_eq!(held(&last), vec![true; 3], "records 212-214's rows");
    let c = chain(t.path());
    assert_eq!((c.records, c.pruned), (214, 211));
}

/// What a batch of a prune reads of the records it deletes (`audit::PrunedBatch`, as each store
/// reads them in the batch's transaction): the serials those records issued, exactly; and a
/// record edited, deleted or moved since the prune was planned (whatever its stored hash) is
/// refused rather than read for the certificates whose rows go.
#[test]
fn a_batch_finds_the_serials_of_the_records_planned_and_refuses_them_edited() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    let issued: Vec<String> = (0..70)
        .map(|_| {
            t.ca.open_task(&planner(None), t0)
                .unwrap()
                .certificate
                .serial()
                .to_owned()
        })
        .collect();
    let snap = t.ca.audit_snapshot(None).unwrap();
    let mut ended = |_: &str| -> agentid_ca::error::Result<Option<u64>> { Ok(Some(0)) };
    let plans = audit::plan_prune(&snap, unix(t0) + HOUR, &mut ended).unwrap();
    let [plan] = &plans[..] else {
        panic!("one plan expected: {plans:?}")
    };
    assert_eq!((plan.from, plan.seq), (0, 64));
    let records: Vec<&audit::AuditRecord> = snap.records.iter().filter(|r| r.seq <= 64).collect();
    let read = |records: &[(u64, String, String)]| {
        let mut batch = audit::PrunedBatch::new(plan, 0);
        for (seq, body, hash) in records {
            batch.record(*seq, body, hash)?;
        }
        batch.finish()
    };
    let intact: Vec<(u64, String, String)> = records
        .iter()
        .map(|r| (r.seq, r.body.clone(), r.hash.clone()))
        .collect();
    assert_eq!(read(&intact).unwrap(), issued[..64].to_vec());
    // From a base on: only the records after it.
    let mut batch = audit::PrunedBatch::new(plan, 10);
    for (seq, body, hash) in &intact[10..] {
        batch.record(*seq, body, hash).unwrap();
    }
    assert_eq!(batch.finish().unwrap(), issued[10..64].to_vec());
    let refused = |records: Vec<(u64, String, String)>, what: &str| match read(&records) {
        Err(CaError::Store(m)) => assert!(m.contains("nothing was pruned"), "{what}: {m}"),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    };
    // Record 5 names another certificate (a retained one, say), its stored hash kept.
    let mut edited = intact.clone();
    edited[4].1 = edited[4].1.replace(&issued[4], &issued[69]);
    assert_ne!(edited[4].1, intact[4].1);
    refused(edited.clone(), "edited, hash kept");
    // ... and its hash made again: record 6 no longer links to it.
    edited[4].2 = audit::record_hash(&edited[4].1);
    refused(edited, "edited, hash made again");
    // The last, record 64, edited and its hash made again: not the head planned.
    let mut last = intact.clone();
    last[63].1 = last[63].1.replace(&issued[63], &issued[69]);
    last[63].2 = audit::record_hash(&last[63].1);
    refused(last, "the last edited");
    // Record 5 deleted.
    let mut gone = intact.clone();
    gone.remove(4);
    refused(gone, "deleted");
    // The chain stops before the planned record 64.
    refused(intact[..63].to_vec(), "cut short");
    // Record 64 moved (another chain's, or another number).
    let mut moved = intact.clone();
    moved[63].0 = 65;
    refused(moved, "moved");
}

/// Where the batches of a prune end: at the furthest checkpointed record within the batch, at
/// the next one when none is (a batch is at least a checkpoint interval), and at the plan's end.
#[test]
fn batches_end_at_checkpointed_records() {
    let steps: Vec<audit::PruneStep> = [1u64, 64, 128, 192, 256, 300]
        .iter()
        .map(|seq| audit::PruneStep {
            seq: *seq,
            head: format!("h{seq}"),
            revocations: 0,
        })
        .collect();
    let ends = |from: u64, batch: u64| -> Vec<u64> {
        audit::prune_batches(&steps, from, batch)
            .iter()
            .map(|s| s.seq)
            .collect()
    };
    assert_eq!(ends(0, 8192), vec![300]);
    assert_eq!(ends(0, 128), vec![128, 256, 300]);
    assert_eq!(ends(0, 64), vec![64, 128, 192, 256, 300]);
    // A batch smaller than the checkpoint interval still moves on, a step at a time.
    assert_eq!(ends(0, 10), vec![1, 64, 128, 192, 256, 300]);
    assert!(audit::prune_batches(&[], 0, 64).is_empty());
}

/// An output that stops taking lines for a while, as a pipe to a slow reader does (`agentid
/// audit export | ssh backup 'cat > FILE'` over a slow link), once the first line is written.
#[cfg(feature = "postgres")]
struct StallingOutput {
    out: Vec<u8>,
    stall: Option<Duration>,
}

#[cfg(feature = "postgres")]
impl std::io::Write for StallingOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(d) = self.stall.take() {
            std::thread::sleep(d);
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The export streams a PostgreSQL store's records through a cursor inside one read-only
/// transaction, writing each page before it fetches the next: an output that stalls longer
/// than the store's idle-in-transaction bound (5 s, for the write transactions that hold
/// locks) must not end that transaction and fail the export half written.
#[cfg(feature = "postgres")]
#[test]
fn an_export_on_postgres_survives_an_output_that_stalls() {
    if !postgres_under_test() {
        return;
    }
    let t = test_ca(KeyType::P256);
    for _ in 0..3 {
        t.ca.open_task(&planner(None), now()).unwrap();
    }
    let (whole, _) = export(t.path(), None);
    let mut out = StallingOutput {
        out: Vec::new(),
        stall: Some(Duration::from_secs(7)),
    };
    let lines = audit::export_dir(t.path(), None, &mut out).unwrap();
    assert_eq!(String::from_utf8(out.out).unwrap(), whole);
    assert_eq!(lines, whole.lines().count() as u64);
}

/// A principal's revocation record stays while any task entry it expanded to is in force, and
/// once pruned, its chain's base keeps every one of those entries: a task entry deleted after
/// the prune is a break of the base.
#[test]
fn a_pruned_principal_revocation_keeps_its_task_entries_held() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    let alice = serde_json::json!({"format": "email", "email": "alice@example.com"});
    let mut req = planner(None);
    req.principal = Some(alice.clone());
    t.ca.open_task(&req, t0).unwrap();
    t.ca.revoke(
        &agentid_ca::RevokeTarget::Principal(alice),
        None,
        "operator",
        t0,
    )
    .unwrap();
    for _ in 0..70 {
        t.ca.open_task(&planner(None), t0).unwrap();
    }
    t.ca.checkpoint_audit(t0, true).unwrap();
    // Past every entry's end (the principal's lasts its longest grant) by more than a day.
    let (_, exported) = export(t.path(), None);
    let counts =
        t.ca.prune_audit(Duration::from_secs(DAY), at(t0, 9 * DAY), &exported)
            .unwrap();
    assert!(counts.records >= 64, "{counts:?}");
    assert_eq!(chain(t.path()).pruned, counts.records);
    if postgres_under_test() {
        return;
    }
    let kept: i64 = db(t.path())
        .query_row(
            "SELECT COUNT(*) FROM audit_base_revocations WHERE subject LIKE 'task:%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 1);
    db(t.path())
        .execute("DELETE FROM revocations WHERE kind = 'task'", [])
        .unwrap();
    match audit::verify_dir(t.path()).unwrap() {
        Err(AuditBreak::Base { reason, .. }) => {
            assert!(reason.contains("task:"), "{reason}")
        }
        other => panic!("expected the base to hold the task entry, got {other:?}"),
    }
}

/// `text` written to `dir/name` and opened as `agentid audit prune --exported` opens it.
fn export_file(dir: &Path, name: &str, text: &str) -> audit::Against<'static> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    audit::ExportFile::open(std::fs::File::open(&path).unwrap(), false).unwrap()
}

/// A real store pruned against an export file read beside it (`audit::ExportFile`): records
/// the file lacks (from the first that goes to the last) are refused, a file cut short or
/// rewritten between its two readings prunes nothing, a file split by checkpoint and blank
/// lines with CRLF endings prunes what it holds, and after the prune the same file still
/// vouches for the store while another record at the base is named.
#[test]
fn an_export_file_read_beside_a_real_store_holds_what_a_prune_deletes() {
    let t = test_ca(KeyType::P256);
    let t0 = now();
    trail(&t, t0);
    let (text, _) = export(t.path(), None);
    let tmp = tempfile::tempdir().unwrap();
    let when = at(t0, 7 * DAY + 12 * HOUR);
    let is_record = |l: &&str| l.contains("\"type\":\"record\"");
    let records: Vec<&str> = text.lines().filter(is_record).collect();
    let others: Vec<&str> = text.lines().filter(|l| !is_record(l)).collect();
    assert_eq!(records.len(), 134);
    let lines = |parts: &[&[&str]]| parts.concat().join("\n") + "\n";
    // Records 61-130 missing, or only record 130 (the last that would go).
    for (cut, first) in [(60..130, 61), (129..130, 130)] {
        let f = export_file(
            tmp.path(),
            "part.jsonl",
            &lines(&[&records[..cut.start], &records[cut.end..]]),
        );
        let err = t.ca.prune_audit_in_batches(WEEK, when, f, 64).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("does not hold record {first} ")),
            "{err}"
        );
        assert_eq!(chain(t.path()).pruned, 0);
    }
    // Opened whole, then cut to records 1-60 or its records 61-130 made checkpoint lines
    // before the store is compared with it.
    let filler = vec![others[0]; 70];
    for changed in [
        lines(&[&records[..60]]),
        lines(&[&records[..60], &filler, &records[130..], &others]),
    ] {
        let path = tmp.path().join("changing.jsonl");
        std::fs::write(&path, &text).unwrap();
        let f = audit::ExportFile::open(std::fs::File::open(&path).unwrap(), false).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut w| std::io::Write::write_all(&mut w, changed.as_bytes()))
            .unwrap();
        let r = t.ca.prune_audit_in_batches(WEEK, when, f, 64);
        assert!(r.is_err(), "{r:?}");
        assert_eq!(chain(t.path()).pruned, 0);
    }
    // Split in two by the checkpoint lines and blank lines, with CRLF endings.
    let mut mixed = String::new();
    for (i, r) in records.iter().enumerate() {
        if i == 60 {
            for o in &others {
                mixed.push_str(o);
                mixed.push_str("\r\n");
            }
            mixed.push_str("\n  \n");
        }
        mixed.push_str(r);
        mixed.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
    }
    let f = export_file(tmp.path(), "mixed.jsonl", &mixed);
    let counts = t.ca.prune_audit_in_batches(WEEK, when, f, 64).unwrap();
    assert_eq!(counts.records, 130);
    let f = audit::ExportFile::open(
        std::fs::File::open(tmp.path().join("mixed.jsonl")).unwrap(),
        true,
    )
    .unwrap();
    assert!(matches!(f, audit::Against::Export(_)), "{f:?}");
    let report = audit::verify_dir_against(t.path(), f).unwrap().unwrap();
    assert_eq!((report.anchors, report.anchors_pruned), (134, 130));
    // Another record 130 than the base names (hashing to its own hash).
    let other = audit::record_body(
        audit::DEFAULT_WRITER,
        130,
        audit::GENESIS,
        &audit::AuditEvent {
            ts: 1,
            kind: "list.publish".into(),
            outcome: "ok".into(),
            ..audit::AuditEvent::default()
        },
    )
    .unwrap();
    let line = serde_json::to_string(&ExportLine::Record {
        body: Box::new(serde_json::from_str(&other).unwrap()),
        hash: audit::record_hash(&other),
        text: other,
    })
    .unwrap();
    let path = tmp.path().join("at-base.jsonl");
    std::fs::write(
        &path,
        lines(&[&records[..129], &[line.as_str()], &records[130..]]),
    )
    .unwrap();
    let f = audit::ExportFile::open(std::fs::File::open(&path).unwrap(), true).unwrap();
    match audit::verify_dir_against(t.path(), f).unwrap() {
        Err(AuditBreak::Anchor {
            seq: 130, reason, ..
        }) => {
            assert!(
                reason.contains("signed base names another record"),
                "{reason}"
            )
        }
        other => panic!("expected record 130 named, got {other:?}"),
    }
}
