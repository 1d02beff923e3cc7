//! Services enroll the same way as agents: a bootstrap token file made for `svc/NAME`, redeemed
//! on the CA service's enrollment listener with only a CSR (the key stays with the service),
//! pinned to the CA's root; a service certificate with the service's DNS names comes back, and
//! the token is consumed with the issuance. Refused, with nothing issued: a second use, and a
//! service whose rule does not list `bootstrap`.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use agentid_api::TokenFile;
use agentid_ca::server::{CaService, ServiceOptions};
use agentid_ca::{CertificateAuthority, KeyType};
use agentid_protocol::{Algorithm, TaskKey};
use agentid_transport::enroll::{enroll_with_token, Enroller};

const T: Duration = Duration::from_secs(20);

const EXTRA: &str = r#"
[services.agentid-ca]
requesters = ["operator"]

[services.indexer]
requesters = ["operator", "bootstrap"]
dns = ["indexer.example.org"]

[services.closed]
requesters = ["operator"]
"#;

async fn start() -> (tempfile::TempDir, SocketAddr, SocketAddr) {
    let dir = common::make_ca_dir(KeyType::P256);
    let mut policy = common::POLICY.to_owned();
    policy.push_str(EXTRA);
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let service = CaService::new(
        CertificateAuthority::open(dir.path()).unwrap(),
        ServiceOptions::default(),
    )
    .unwrap();
    let mtls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let enroll = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (m, e) = (mtls.local_addr().unwrap(), enroll.local_addr().unwrap());
    tokio::spawn(async move { service.serve_both(mtls, Some(enroll)).await });
    (dir, m, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_enrolls_from_a_token_file_and_the_token_is_used_once() {
    let (dir, mtls, enroll) = start().await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let (token, identity, expires) = ca
        .create_service_token(
            "indexer",
            Some(Duration::from_secs(600)),
            Duration::from_secs(60),
            common::now(),
        )
        .unwrap();
    assert_eq!(identity, "spiffe://example.org/svc/indexer");
    let file = TokenFile {
        token,
        ca_url: format!("https://{enroll}"),
        root_sha256: agentid_ca::server::root_sha256(&ca),
        identity: identity.clone(),
        agent: "svc:indexer".into(),
        task: String::new(),
        expires,
        renew_url: Some(format!("https://{mtls}")),
        bundle_seq: None,
    };
    let before = ca.issuances().unwrap().len();
    let key = TaskKey::generate(Algorithm::Es256).unwrap();
    let spki = key.public_key().to_spki_der();
    let (enroller, resp, _) = Enroller::from_token_file(&file, key, T).await.unwrap();
    assert_eq!(resp.identity, identity);
    assert!(resp.grant.is_none(), "a service holds no grant");
    let cred = agentid_transport::CredentialSource::current(&*enroller.credentials()).unwrap();
    assert_eq!(cred.identity().as_str(), identity);
    assert_eq!(
        cred.info().public_key.to_spki_der(),
        spki,
        "the service's own key"
    );
    assert!(resp.not_after - resp.not_before <= 600 + 120);
    // The certificate carries the service's DNS names.
    let leaf = x509_parser::parse_x509_certificate(cred.cert_chain()[0].as_ref())
        .unwrap()
        .1;
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert!(san.general_names.iter().any(|n| matches!(
        n,
        x509_parser::extensions::GeneralName::DNSName("indexer.example.org")
    )));
    let rec = ca.issuance(&resp.serial).unwrap().unwrap();
    assert_eq!(rec.requester, "bootstrap token");
    assert_eq!(ca.issuances().unwrap().len(), before + 1);

    // A second use: token_used, and nothing issued.
    let err = enroll_with_token(&file, TaskKey::generate(Algorithm::Es256).unwrap(), T)
        .await
        .unwrap_err();
    assert_eq!(
        err.api_error().map(|e| e.code),
        Some(agentid_api::ErrorCode::TokenUsed),
        "{err}"
    );
    assert_eq!(ca.issuances().unwrap().len(), before + 1);
    // The refused redemption is in the audit trail (CA-API.md 4.1), without the token.
    let records = common::audit_records(&ca);
    let last = records.last().unwrap();
    assert_eq!(
        (
            last["kind"].as_str(),
            last["actor"].as_str(),
            last["subject"].as_str(),
            last["outcome"].as_str(),
            last["reason"].as_str(),
        ),
        (
            Some("issue.service"),
            Some("bootstrap token"),
            Some(identity.as_str()),
            Some("denied"),
            Some("bootstrap token already redeemed"),
        )
    );
    assert!(!serde_json::to_string(&records)
        .unwrap()
        .contains(&file.token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_rule_does_not_allow_bootstrap_gets_no_token() {
    let (dir, _, _) = start().await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let r = ca.create_service_token("closed", None, Duration::from_secs(60), common::now());
    assert!(r.is_err(), "{r:?}");
    let r = ca.create_service_token("agentid-ca", None, Duration::from_secs(60), common::now());
    assert!(r.is_err(), "its rule names only the operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_token_asking_for_more_than_max_ttl_is_refused_when_made() {
    let (dir, _, _) = start().await;
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let records = ca.audit_snapshot(None).unwrap().records.len();
    // `services.indexer` sets no max_ttl: `defaults.max_ttl` (15m) decides, now rather than
    // at enrollment, when the token could only be refused.
    let r = ca.create_service_token(
        "indexer",
        Some(Duration::from_secs(3600)),
        Duration::from_secs(60),
        common::now(),
    );
    let e = r.expect_err("a token no enrollment could redeem");
    assert!(e.to_string().contains("defaults.max_ttl"), "{e}");
    assert_eq!(
        ca.audit_snapshot(None).unwrap().records.len(),
        records,
        "no token was made"
    );
    ca.create_service_token(
        "indexer",
        Some(Duration::from_secs(900)),
        Duration::from_secs(60),
        common::now(),
    )
    .unwrap();
}
