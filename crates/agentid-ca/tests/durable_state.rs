//! The CA directory's durable state against operator mistakes: a store or key file that went
//! missing is refused with the next step named, never silently replaced by a new empty one.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use agentid_ca::{CertificateAuthority, KeyType, RevokeTarget};
use common::*;

fn remove_db(dir: &std::path::Path) {
    for f in ["ca.db", "ca.db-wal", "ca.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// A CA whose `ca.db` is gone (deleted, not restored with the keys from a backup, or a
/// `config.toml` whose `store` line was removed) must not start over with an empty store: its
/// revocations, bindings, tokens and audit chain would be lost without a word, and the
/// revocation list would restart at seq 1.
#[test]
fn a_missing_ca_db_is_refused_not_recreated() {
    let dir = make_ca_dir(KeyType::P256);
    {
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        ca.revoke(
            &RevokeTarget::Agent("planner".into()),
            Some("compromised"),
            "operator",
            now(),
        )
        .unwrap();
        assert_eq!(ca.revocations().unwrap().len(), 1);
    }
    remove_db(dir.path());
    let err = match CertificateAuthority::open(dir.path()) {
        Ok(ca) => panic!(
            "opened with a new empty store ({} revocations)",
            ca.revocations().unwrap().len()
        ),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("ca.db"), "{err}");
    assert!(
        !dir.path().join("ca.db").exists(),
        "a refused open must not leave a new ca.db behind"
    );
}

/// A CA whose `audit.key` is gone while `audit.pub` (what `audit verify` checks checkpoints
/// with) is still there must refuse without writing a new key: a new `audit.key` that does not
/// match `audit.pub` leaves the operator an error about `audit.pub`, whose natural "fix"
/// (deleting it) silently rotates the key the existing checkpoints were signed with.
#[test]
fn a_missing_audit_key_is_refused_without_writing_a_new_one() {
    let dir = make_ca_dir(KeyType::P256);
    drop(CertificateAuthority::open(dir.path()).unwrap());
    std::fs::remove_file(dir.path().join("audit.key")).unwrap();
    let err = CertificateAuthority::open(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("audit.key"), "{err}");
    assert!(
        !dir.path().join("audit.key").exists(),
        "a refused open must not write a new audit key"
    );
}

/// A CA whose `audit.key` and `audit.pub` are both gone (a replica given a copy of the CA
/// directory without them, or the "fix" of deleting `audit.pub` after the refusal above) while
/// its store holds checkpoints must refuse, as when `audit.key` alone is gone: a new key would
/// sign the next checkpoints, and `audit verify` (with the new `audit.pub`) would call every
/// checkpoint before them forged, so the trail as written could no longer be checked.
#[test]
fn a_store_with_checkpoints_refuses_a_new_audit_key() {
    let dir = make_ca_dir(KeyType::P256);
    {
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        ca.revoke(
            &RevokeTarget::Agent("planner".into()),
            Some("compromised"),
            "operator",
            now(),
        )
        .unwrap();
    }
    let report = agentid_ca::audit::verify_dir(dir.path()).unwrap().unwrap();
    assert!(report.checkpoints >= 1, "{report:?}");
    let old_pub = std::fs::read(dir.path().join("audit.pub")).unwrap();
    std::fs::remove_file(dir.path().join("audit.key")).unwrap();
    std::fs::remove_file(dir.path().join("audit.pub")).unwrap();
    let err = match CertificateAuthority::open(dir.path()) {
        Ok(_) => panic!("opened with a new audit key over a store of checkpoints"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("audit.key"), "{err}");
    for f in ["audit.key", "audit.pub"] {
        assert!(
            !dir.path().join(f).exists(),
            "a refused open must not write a new {f}"
        );
    }
    // The public key from a backup still verifies the trail as it was written.
    std::fs::write(dir.path().join("audit.pub"), old_pub).unwrap();
    assert!(agentid_ca::audit::verify_dir(dir.path()).unwrap().is_ok());
}

/// The same when the store holds no checkpoint but a chain's signed base (a pruned chain whose
/// checkpoints were deleted in the database): the base is signed with the audit key too, and
/// a new key would leave it unverifiable, the pruned records' revocations with it.
#[test]
fn a_store_with_a_signed_base_refuses_a_new_audit_key() {
    let dir = make_ca_dir(KeyType::P256);
    drop(CertificateAuthority::open(dir.path()).unwrap());
    {
        let der = agentid_ca::material::read_private_key(&dir.path().join("audit.key")).unwrap();
        let key = agentid_protocol::AuthorityKey::from_pkcs8_der(&der).unwrap();
        let signer = agentid_ca::audit::CheckpointSigner::new(
            format!("spiffe://{TD}"),
            std::sync::Arc::new(key),
        );
        let digest = agentid_ca::audit::base_revocations_digest(&[]);
        let base = signer
            .base("main", (64, &"ab".repeat(32)), 1_000, &digest)
            .unwrap();
        let c = rusqlite::Connection::open(dir.path().join("ca.db")).unwrap();
        c.execute("DELETE FROM audit_checkpoints", []).unwrap();
        c.execute(
            "INSERT INTO audit_bases (writer, seq, head, iat, jws) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                base.writer,
                base.seq as i64,
                base.head,
                base.iat as i64,
                base.jws
            ],
        )
        .unwrap();
    }
    std::fs::remove_file(dir.path().join("audit.key")).unwrap();
    std::fs::remove_file(dir.path().join("audit.pub")).unwrap();
    let err = match CertificateAuthority::open(dir.path()) {
        Ok(_) => panic!("opened with a new audit key over a store with a signed base"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("audit.key"), "{err}");
    assert!(!dir.path().join("audit.key").exists());
}

/// A `ca.db` truncated to nothing (a failed copy, a restore that did not finish) is as gone as
/// a missing one: it must not become a new empty store either.
#[test]
fn a_ca_db_truncated_to_nothing_is_refused() {
    let dir = make_ca_dir(KeyType::P256);
    drop(CertificateAuthority::open(dir.path()).unwrap());
    remove_db(dir.path());
    std::fs::write(dir.path().join("ca.db"), b"").unwrap();
    let err = CertificateAuthority::open(dir.path())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca.db"), "{err}");
    assert_eq!(
        std::fs::metadata(dir.path().join("ca.db")).unwrap().len(),
        0
    );
}

/// A `ca.db` that is not a database (overwritten, or damaged past its header) is refused with
/// what to do (check it, restore it from a backup), not only SQLite's own words.
#[test]
fn a_ca_db_that_is_not_a_database_names_the_next_step() {
    let dir = make_ca_dir(KeyType::P256);
    drop(CertificateAuthority::open(dir.path()).unwrap());
    remove_db(dir.path());
    std::fs::write(dir.path().join("ca.db"), vec![0x5a; 8192]).unwrap();
    let err = CertificateAuthority::open(dir.path())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca.db is damaged"), "{err}");
    assert!(err.contains("restore it"), "{err}");
}

/// `audit verify` only reads the store (its help says so): run by a newer agentid on the
/// directory of a running older CA (or on an evidence copy), it must not migrate the schema,
/// which would leave the older `ca serve` writing a schema it does not know and refusing to
/// start again.
#[test]
fn audit_verify_does_not_migrate_the_store() {
    use agentid_ca::migrate::{schema_version, SCHEMA_VERSION};
    let dir = make_ca_dir(KeyType::P256);
    {
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        ca.revoke(
            &RevokeTarget::Agent("planner".into()),
            None,
            "operator",
            now(),
        )
        .unwrap();
    }
    // The store as the release before the current schema left it.
    let db = dir.path().join("ca.db");
    let old = SCHEMA_VERSION - 1;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "DROP INDEX bootstrap_tokens_creator; DROP INDEX bootstrap_tokens_expires;
             PRAGMA user_version = {old};"
        ))
        .unwrap();
    }
    let report = agentid_ca::audit::verify_dir(dir.path()).unwrap().unwrap();
    assert_eq!(report.chains.len(), 1);
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(
        schema_version(&conn).unwrap(),
        old,
        "audit verify migrated the store"
    );
}

/// Two processes on one CA directory (`ca serve` and a CLI command that writes) share the SQLite
/// write lock: issuances, revocations and token redemptions from both keep one record per
/// certificate, one redemption per token, and one unforked audit chain.
#[test]
fn two_cas_on_one_directory_keep_one_chain_and_one_record_per_certificate() {
    use agentid_ca::{OpenTaskRequest, TaskRequester};
    use agentid_protocol::{Algorithm, Scope};
    let dir = make_ca_dir(KeyType::P256);
    let a = CertificateAuthority::open(dir.path()).unwrap();
    let b = CertificateAuthority::open(dir.path()).unwrap();
    let issued = std::sync::atomic::AtomicUsize::new(0);
    let redeemed = std::sync::atomic::AtomicUsize::new(0);
    let binding = agentid_ca::TokenBinding {
        scope: "tickets:read".into(),
        ..Default::default()
    };
    let tokens: Vec<_> = (0..8)
        .map(|_| {
            a.create_bound_token(
                "planner",
                None,
                &binding,
                std::time::Duration::from_secs(600),
                now(),
            )
            .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for (i, ca) in [&a, &b, &a, &b].into_iter().enumerate() {
            let (issued, redeemed, tokens) = (&issued, &redeemed, &tokens);
            s.spawn(move || {
                for n in 0..40 {
                    let (_k, src) = spki_key(Algorithm::Es256);
                    let req = OpenTaskRequest::new(
                        "planner",
                        src,
                        TaskRequester::Operator,
                        Scope::parse("tickets:read").unwrap(),
                    );
                    ca.open_task(&req, now()).unwrap();
                    issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n % 10 == i {
                        ca.revoke(
                            &RevokeTarget::Agent(format!("gone-{i}-{n}")),
                            None,
                            "operator",
                            now(),
                        )
                        .unwrap();
                    }
                    if n < tokens.len() {
                        let tok = &tokens[n];
                        let csr = csr_with(
                            &p256_keypair(),
                            &[uri(tok.identity.as_spiffe_id().as_str())],
                            |_| {},
                        );
                        if ca.enroll(&tok.token, csr, now()).is_ok() {
                            issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            redeemed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        redeemed.load(std::sync::atomic::Ordering::Relaxed),
        tokens.len()
    );
    let n = issued.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(a.issuances().unwrap().len(), n);
    assert_eq!(b.issuances().unwrap().len(), n);
    drop((a, b));
    let report = agentid_ca::audit::verify_dir(dir.path()).unwrap().unwrap();
    assert_eq!(report.chains.len(), 1);
    assert_eq!(report.issuances as usize, n);
}

/// A running CA whose store a newer agentid migrated meanwhile (a newer CLI run on the same
/// directory, the next release started next to it) stops writing: it does not know the new
/// schema's invariants (a column it leaves NULL may mean "unlimited" to the newer code). Its
/// issuances and revocations are refused with the next step named, not committed.
#[test]
fn a_running_ca_stops_writing_once_a_newer_agentid_migrated_its_store() {
    use agentid_ca::migrate::SCHEMA_VERSION;
    use agentid_ca::{OpenTaskRequest, TaskRequester};
    use agentid_protocol::{Algorithm, Scope};
    let dir = make_ca_dir(KeyType::P256);
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let open = |ca: &CertificateAuthority| {
        let (_k, src) = spki_key(Algorithm::Es256);
        let req = OpenTaskRequest::new(
            "planner",
            src,
            TaskRequester::Operator,
            Scope::parse("tickets:read").unwrap(),
        );
        ca.open_task(&req, now())
    };
    open(&ca).unwrap();
    let before = ca.issuances().unwrap().len();
    {
        let conn = rusqlite::Connection::open(dir.path().join("ca.db")).unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
            .unwrap();
    }
    let err = open(&ca).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
    let err = ca
        .revoke(
            &RevokeTarget::Agent("planner".into()),
            None,
            "operator",
            now(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer"), "{err}");
    assert_eq!(ca.issuances().unwrap().len(), before);
    assert!(ca.revocations().unwrap().is_empty());
}

/// `config.toml`'s `trust_domain` edited after `ca init` (a copy-paste from another CA's
/// config): the CA must refuse to open rather than issue identities of another trust domain
/// under this root and sign checkpoints for it, after which `audit verify` reports the
/// untouched chain as broken ("signed for spiffe://example.org, not spiffe://other.example").
#[test]
fn a_trust_domain_edited_in_config_toml_is_refused() {
    let dir = make_ca_dir(KeyType::P256);
    {
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        ca.revoke(
            &RevokeTarget::Agent("planner".into()),
            None,
            "operator",
            now(),
        )
        .unwrap();
        ca.checkpoint_audit(now(), true).unwrap();
    }
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("example.org", "other.example")).unwrap();
    let err = match CertificateAuthority::open(dir.path()) {
        Ok(_) => panic!("opened with a trust domain its certificates and audit chain are not of"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("trust_domain"), "{err}");
}
