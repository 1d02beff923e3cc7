//! A service's key holds its name for at most `max_key_age` (`[services.NAME]`, default 30
//! days): services renew with the same key, so without this bound one key, once stolen, would
//! hold the name for as long as it is renewed. The age counts from the key's first certificate
//! for the name; no certificate for the key ends after it; past it the key gets none, renewed
//! or issued again, and a new key starts again.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::time::{Duration, SystemTime};

use agentid_ca::migrate::{schema_version, SCHEMA_VERSION};
use agentid_ca::{
    CaError, CertificateAuthority, IssuedCertificate, KeySource, KeyType, RenewRequest,
    RenewRequester, ServiceRequest, SqliteStore, Store,
};
use agentid_protocol::{Algorithm, PeerId};

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// The test policy with a `keyed` service whose keys live two hours.
fn policy_with_key_age(age: Option<&str>) -> String {
    let mut p = common::POLICY.to_owned();
    p.push_str("\n[services.keyed]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n");
    if let Some(age) = age {
        p.push_str(&format!("max_key_age = \"{age}\"\n"));
    }
    p
}

fn ca_with(age: Option<&str>) -> (common::TestCa, CertificateAuthority) {
    let t = common::test_ca(KeyType::P256);
    std::fs::write(t.path().join("policy.toml"), policy_with_key_age(age)).unwrap();
    let ca = CertificateAuthority::open(t.path()).unwrap();
    (t, ca)
}

fn at(base: SystemTime, secs: u64) -> SystemTime {
    base + Duration::from_secs(secs)
}

fn issue(
    ca: &CertificateAuthority,
    key: &KeySource,
    now: SystemTime,
) -> Result<IssuedCertificate, CaError> {
    ca.issue_service(
        &ServiceRequest {
            service: "keyed".into(),
            key: key.clone(),
            ttl: None,
        },
        now,
    )
}

fn renew(
    ca: &CertificateAuthority,
    identity: &PeerId,
    key: &KeySource,
    ttl: Option<Duration>,
    now: SystemTime,
) -> Result<IssuedCertificate, CaError> {
    ca.renew(
        &RenewRequest {
            identity: identity.clone(),
            key: key.clone(),
            requester: RenewRequester::Holder,
            ttl,
        },
        now,
    )
}

/// The refusal names the rule and tells the service what to do next.
fn assert_key_too_old(res: Result<IssuedCertificate, CaError>) {
    let err = res.expect_err("a key past max_key_age got a certificate");
    match &err {
        CaError::Policy { rule, .. } => assert_eq!(rule, "services.keyed.max_key_age"),
        other => panic!("expected the max_key_age refusal, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("max_key_age"), "{msg}");
    assert!(msg.contains("new key"), "{msg}");
    assert!(
        msg.contains("agentid token create --service keyed"),
        "{msg}"
    );
}

#[test]
fn a_service_key_gets_no_certificate_past_its_max_key_age_and_none_ending_after_it() {
    let (_t, ca) = ca_with(Some("2h"));
    let t0 = common::now();
    let base = common::unix(t0);
    let (_k, key) = common::spki_key(Algorithm::Es256);
    let first = issue(&ca, &key, t0).unwrap();
    let id = first.identity.clone();

    // Well inside the key's life: a renewal gets the default lifetime.
    let early = renew(&ca, &id, &key, None, at(t0, HOUR / 2)).unwrap();
    assert_eq!(early.leaf.not_after, base + HOUR / 2 + 300);

    // Near its end, the certificate ends with the key's life, not after it, also when a
    // longer lifetime is asked for.
    let late = renew(
        &ca,
        &id,
        &key,
        Some(Duration::from_secs(HOUR)),
        at(t0, 2 * HOUR - 60),
    )
    .unwrap();
    assert_eq!(late.leaf.not_after, base + 2 * HOUR);

    // At its end: neither a renewal nor the operator's issuance for the same key.
    assert_key_too_old(renew(&ca, &id, &key, None, at(t0, 2 * HOUR)));
    assert_key_too_old(issue(&ca, &key, at(t0, 2 * HOUR + 1)));

    // A new key starts again, and the old one stays refused.
    let (_k2, key2) = common::spki_key(Algorithm::Es256);
    let fresh = issue(&ca, &key2, at(t0, 3 * HOUR)).unwrap();
    assert_eq!(fresh.identity, id);
    let renewed = renew(&ca, &id, &key2, None, at(t0, 4 * HOUR)).unwrap();
    assert_eq!(renewed.leaf.not_after, base + 4 * HOUR + 300);
    assert_key_too_old(renew(&ca, &id, &key2, None, at(t0, 5 * HOUR)));
}

#[test]
fn issuing_again_for_the_same_key_does_not_make_it_younger() {
    let (_t, ca) = ca_with(Some("2h"));
    let t0 = common::now();
    let (_k, key) = common::spki_key(Algorithm::Es256);
    issue(&ca, &key, t0).unwrap();
    // The operator issues again for the same key near the end of its life: the age still
    // counts from the first certificate.
    let again = issue(&ca, &key, at(t0, 2 * HOUR - 60)).unwrap();
    assert_eq!(again.leaf.not_after, common::unix(t0) + 2 * HOUR);
    assert_key_too_old(issue(&ca, &key, at(t0, 2 * HOUR)));
}

#[test]
fn an_old_key_bound_again_does_not_start_again() {
    let (_t, ca) = ca_with(Some("2h"));
    let t0 = common::now();
    let (_k, old) = common::spki_key(Algorithm::Es256);
    let (_k2, other) = common::spki_key(Algorithm::Es256);
    issue(&ca, &old, t0).unwrap();
    issue(&ca, &other, at(t0, HOUR)).unwrap();
    // The operator binds the name to the first key again: its age still counts from its first
    // certificate, not from this binding.
    let back = issue(&ca, &old, at(t0, HOUR + 30 * 60)).unwrap();
    assert_eq!(back.leaf.not_after, common::unix(t0) + HOUR + 30 * 60 + 300);
    let near = issue(&ca, &old, at(t0, 2 * HOUR - 60)).unwrap();
    assert_eq!(near.leaf.not_after, common::unix(t0) + 2 * HOUR);
    assert_key_too_old(issue(&ca, &old, at(t0, 2 * HOUR + 60)));
}

#[test]
fn without_a_rule_a_service_key_lives_30_days() {
    let (_t, ca) = ca_with(None);
    let t0 = common::now();
    let (_k, key) = common::spki_key(Algorithm::Es256);
    let id = issue(&ca, &key, t0).unwrap().identity;
    renew(&ca, &id, &key, None, at(t0, 30 * DAY - HOUR)).unwrap();
    assert_key_too_old(renew(&ca, &id, &key, None, at(t0, 30 * DAY)));
}

#[test]
fn a_bad_max_key_age_is_a_policy_error_naming_the_rule() {
    let err = agentid_ca::Policy::from_toml(
        "[services.keyed]\nmax_ttl = \"1h\"\nmax_key_age = \"forever\"\nrequesters = [\"operator\"]\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("services.keyed.max_key_age"),
        "{err}"
    );
}

/// A store made before schema version 6 gets each service binding's key time from its
/// issuances: the first certificate of the bound key, not the upgrade's time.
#[test]
fn the_upgrade_dates_each_service_key_from_its_first_certificate() {
    let dir = common::make_ca_dir(KeyType::P256);
    std::fs::write(
        dir.path().join("policy.toml"),
        policy_with_key_age(Some("2h")),
    )
    .unwrap();
    let t0 = common::now();
    let (_k, key) = common::spki_key(Algorithm::Es256);
    let (_k2, key2) = common::spki_key(Algorithm::Es256);
    let uri = {
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        // The first key, then a new key an hour later, issued again another hour later.
        issue(&ca, &key, t0).unwrap();
        issue(&ca, &key2, at(t0, HOUR)).unwrap();
        issue(&ca, &key2, at(t0, 2 * HOUR)).unwrap().identity
    };
    // The store as version 5 left it (without version 6's column, version 7's indexes and
    // version 8's table and column).
    let db = dir.path().join("ca.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "ALTER TABLE identities DROP COLUMN key_bound_at;
             DROP INDEX bootstrap_tokens_creator; DROP INDEX bootstrap_tokens_expires;
             DROP TABLE audit_bases; DROP TABLE audit_base_revocations;
             ALTER TABLE keys DROP COLUMN first_issued_at;
             PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&db).unwrap();
    let bound = store.identity(uri.as_str()).unwrap().unwrap();
    assert_eq!(bound.key_bound_at, Some(common::unix(t0) + HOUR));
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
    // Version 8 keeps each key's first certificate with its binding, from the issuances.
    let mut firsts: Vec<i64> = conn
        .prepare("SELECT first_issued_at FROM keys ORDER BY first_issued_at")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    firsts.retain(|t| *t >= common::unix(t0) as i64);
    assert_eq!(
        firsts,
        [common::unix(t0) as i64, (common::unix(t0) + HOUR) as i64]
    );
    drop(conn);
    // And the CA counts the key's age from there.
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    assert_key_too_old(issue(&ca, &key2, at(t0, 3 * HOUR)));
}
