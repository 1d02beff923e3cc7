//! Red team, privilege escalation through the CA's authorization model (`spec/CA-API.md` 2, 3):
//! each test names what a caller tried to get beyond the policy and the spec, and asserts that
//! it was refused with the spec's code and that nothing was issued.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use agentid_ca::{CertificateAuthority, KeyType, Policy};

/// The CA service's own name, `svc/agentid-ca`, is "a reserved service name the CA issues to
/// nobody else" (CA-API.md 1.1): the name every client requires of the CA, to which enrolling
/// agents send their bootstrap tokens. A policy whose `[services.agentid-ca]` rule lists
/// `bootstrap` would let a bootstrap token's bearer enroll as the CA (a service token is
/// redeemed like any other, and rebinds the service's identity to the bearer's key, so the CA
/// can no longer renew its own certificate either). Such a policy is refused when it is read,
/// naming the rule; no token for the name is made and nothing is issued.
#[test]
fn the_ca_service_name_takes_no_bootstrap_token() {
    let extra = "\n[services.agentid-ca]\nrequesters = [\"operator\", \"bootstrap\"]\n";
    let policy = format!("{}{extra}", common::POLICY);
    let err = Policy::from_toml(&policy)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let dir = common::make_ca_dir(KeyType::P256);
    std::fs::write(dir.path().join("policy.toml"), &policy).unwrap();
    match CertificateAuthority::open(dir.path()) {
        Err(e) => {
            assert!(
                e.to_string().contains("services.agentid-ca.requesters"),
                "the refusal names the rule: {e}"
            );
            assert!(err.contains("services.agentid-ca.requesters"), "{err}");
        }
        Ok(ca) => {
            // What such a policy gives: a token for the CA's own name, redeemed by its bearer.
            let before = ca.issuances().unwrap().len();
            let made =
                ca.create_service_token("agentid-ca", None, Duration::from_secs(60), common::now());
            let issued = made.ok().and_then(|(token, _, _)| {
                let kp = common::p256_keypair();
                let csr = common::csr_with(&kp, &[], |_| {});
                ca.redeem(&token, csr, common::now()).ok()
            });
            let after = ca.issuances().unwrap().len();
            panic!(
                "a policy letting a bootstrap token enroll as svc/agentid-ca was accepted; \
                 the bearer was issued {:?} ({} certificate(s) issued)",
                issued.map(|r| match r {
                    agentid_ca::Redeemed::Service(c) => c.identity.as_str().to_owned(),
                    agentid_ca::Redeemed::Task(c) => c.identity.as_str().to_owned(),
                }),
                after - before
            );
        }
    }
}

/// Two CA processes on one store (replicas, or a restart while the old process drains) each
/// issue `svc/agentid-ca` to their own key; a service identity is bound to its newest key. The
/// first process must still renew its own certificate (its key stays bound to the name, CA-API
/// 3.4 counts on several processes on one store): otherwise it serves an expired certificate,
/// and every client's handshake with it fails, once its first certificate ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ca_process_does_not_stop_the_first_renewing_its_own_certificate() {
    use agentid_ca::server::{CaService, ServiceOptions};
    let dir = common::make_ca_dir(KeyType::P256);
    let policy = format!(
        "{}\n[services.agentid-ca]\nmax_ttl = \"1h\"\nrequesters = [\"operator\"]\n",
        common::POLICY
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let first = CaService::new(
        CertificateAuthority::open(dir.path()).unwrap(),
        ServiceOptions {
            service_ttl: Some(Duration::from_secs(4)),
            ..ServiceOptions::default()
        },
    )
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { first.serve(l).await });
    // The second process on the same store: its own certificate, for its own key.
    let _second = CaService::new(
        CertificateAuthority::open(dir.path()).unwrap(),
        ServiceOptions::default(),
    )
    .unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (client, _) = common::task_client(&ca, "planner", Duration::from_secs(10));
    let c = client.connect(addr, "ca.example.org").await.unwrap();
    let first_serial = c.peer().info.serial.clone();
    // Past the first certificate's notAfter (renewed at half its life, retried every 5 s).
    tokio::time::sleep(Duration::from_secs(9)).await;
    let c = tokio::time::timeout(
        Duration::from_secs(20),
        client.connect(addr, "ca.example.org"),
    )
    .await
    .unwrap()
    .expect("the first process still serves a valid certificate");
    assert_ne!(c.peer().info.serial, first_serial);
    let refused = common::audit_records(&ca)
        .into_iter()
        .filter(|r| r["kind"] == "issue.renewal" && r["outcome"] == "denied")
        .count();
    assert_eq!(
        refused, 0,
        "no renewal of the CA's own certificate was refused"
    );
}

/// A token a service made dies with the service's key (CA-API.md 3.6: "once that key is
/// revoked ..., redeeming the token is refused `403 revoked`"), and the store orders each
/// revocation with each issuance (3.4). A redemption racing the revocation of its creator's key
/// must therefore either commit before the revocation or be refused: none may be recorded as
/// issued after the revocation was. (The creator's key is checked in the issuance's own
/// transaction, as the task's, agent's and holder key's revocations are.)
#[test]
fn a_token_redeemed_while_its_creators_key_is_revoked_is_issued_before_the_revocation_or_not_at_all(
) {
    use agentid_ca::{RevokeTarget, TokenBinding};
    let dir = common::make_ca_dir(KeyType::P256);
    let policy = format!(
        "{}\n[agents.planner.permissions]\n\"svc:platform\" = [\"create_token\"]\n\n\
         [services.platform]\nrequesters = [\"operator\"]\n",
        common::POLICY
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let ca = std::sync::Arc::new(CertificateAuthority::open(dir.path()).unwrap());
    let mut late = Vec::new();
    for round in 0..160u64 {
        // The service, with a new key each round, makes a token.
        let (_, key) = common::spki_key(agentid_protocol::Algorithm::Es256);
        let svc = ca
            .issue_service(
                &agentid_ca::ServiceRequest {
                    service: "platform".into(),
                    key,
                    ttl: None,
                },
                common::now(),
            )
            .unwrap();
        let binding = TokenBinding {
            scope: "tickets:read".into(),
            creator: Some("svc:platform".into()),
            creator_jkt: Some(svc.jkt.clone()),
            ..TokenBinding::default()
        };
        let token = ca
            .create_bound_token(
                "planner",
                None,
                &binding,
                Duration::from_secs(60),
                common::now(),
            )
            .unwrap();
        let csr = common::csr_with(&common::p256_keypair(), &[], |_| {});
        let (ca1, ca2) = (ca.clone(), ca.clone());
        let secret = token.token.clone();
        let redeem = std::thread::spawn(move || ca1.redeem(&secret, csr, common::now()));
        let jkt = svc.jkt.clone();
        let revoke = std::thread::spawn(move || {
            // Somewhere inside the redemption (0 to 3.2 ms into it).
            std::thread::sleep(Duration::from_micros(round * 20));
            ca2.revoke(
                &RevokeTarget::Key(jkt.parse().unwrap()),
                Some("compromised"),
                "operator",
                common::now(),
            )
            .unwrap();
        });
        let redeemed = redeem.join().unwrap();
        revoke.join().unwrap();
        let c = match redeemed {
            Ok(agentid_ca::Redeemed::Task(c)) => c,
            // Refused: `403 revoked` (the creator's key), nothing issued for it.
            Err(agentid_ca::EnrollError::Ca(e)) => {
                assert_eq!(
                    agentid_ca::server::error_code(&e),
                    agentid_api::ErrorCode::Revoked,
                    "{e}"
                );
                continue;
            }
            other => panic!("round {round}: {other:?}"),
        };
        // The audit chain is the order of commits (one writer).
        let records = common::audit_records(&ca);
        let seq_of = |pred: &dyn Fn(&serde_json::Value) -> bool| {
            records
                .iter()
                .find(|r| pred(r))
                .and_then(|r| r["seq"].as_u64())
                .unwrap()
        };
        let revoked_at = seq_of(&|r| {
            r["kind"] == "revoke" && r["subject"] == format!("jkt:{}", svc.jkt).as_str()
        });
        let issued_at = seq_of(&|r| {
            r["kind"] == "issue.task"
                && r["outcome"] == "ok"
                && r["serial"] == c.certificate.serial()
        });
        if issued_at > revoked_at {
            late.push(c.identity.as_str().to_owned());
        }
    }
    assert!(
        late.is_empty(),
        "redeemed after their creator's key was revoked: {late:?}"
    );
}
