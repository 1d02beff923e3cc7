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
