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
