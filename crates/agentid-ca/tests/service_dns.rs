//! Service certificates carry the DNS names policy lists for them (`[services.NAME] dns`), and
//! nothing else: no wildcards, no IP addresses, a name belongs to one service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use agentid_ca::{
    CaError, CertificateAuthority, KeyType, Policy, RenewRequest, RenewRequester, ServiceRequest,
};
use agentid_protocol::{Algorithm, PeerId};
use common::*;
use x509_parser::prelude::*;

const DNS_POLICY: &str = r#"
[services.files]
max_ttl = "1h"
requesters = ["operator"]
dns = ["files.example.org", "files.internal"]
"#;

fn sans(der: &[u8]) -> (Vec<String>, bool) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let ext = cert.subject_alternative_name().unwrap().unwrap();
    let names = ext
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::DNSName(d) => format!("dns:{d}"),
            other => format!("other:{other:?}"),
        })
        .collect();
    (names, ext.critical)
}

#[test]
fn service_certificates_carry_the_policy_dns_names() {
    let dir = make_ca_dir(KeyType::P256);
    std::fs::write(
        dir.path().join("policy.toml"),
        format!("{POLICY}{DNS_POLICY}"),
    )
    .unwrap();
    let ca = CertificateAuthority::open(dir.path()).unwrap();
    let key = spki_key(Algorithm::Es256);
    let issued = ca
        .issue_service(
            &ServiceRequest {
                service: "files".into(),
                key: key.1.clone(),
                ttl: None,
            },
            now(),
        )
        .unwrap();
    let expected = vec![
        "uri:spiffe://example.org/svc/files".to_owned(),
        "dns:files.example.org".to_owned(),
        "dns:files.internal".to_owned(),
    ];
    assert_eq!(sans(&issued.leaf.der), (expected.clone(), true));

    // Renewal keeps them.
    let renewed = ca
        .renew(
            &RenewRequest {
                identity: PeerId::parse("spiffe://example.org/svc/files").unwrap(),
                key: key.1,
                requester: RenewRequester::Operator,
                ttl: None,
            },
            now(),
        )
        .unwrap();
    assert_eq!(sans(&renewed.leaf.der), (expected, true));

    // A service without `dns` and every task certificate: the URI SAN alone.
    let other = ca
        .issue_service(
            &ServiceRequest {
                service: "search".into(),
                key: spki_key(Algorithm::Es256).1,
                ttl: None,
            },
            now(),
        )
        .unwrap();
    assert_eq!(
        sans(&other.leaf.der).0,
        vec!["uri:spiffe://example.org/svc/search".to_owned()]
    );
}

#[test]
fn policy_refuses_bad_or_shared_dns_names() {
    let bad = [
        ("*.example.org", "wildcard"),
        ("Files.example.org", "uppercase"),
        ("files.example.org.", "trailing dot"),
        ("files..example.org", "empty label"),
        ("-files.example.org", "leading hyphen"),
        ("127.0.0.1", "IP address"),
        ("files_1.example.org", "underscore"),
        ("", "empty"),
    ];
    for (name, why) in bad {
        let text = format!("[services.files]\nrequesters = [\"operator\"]\ndns = [{name:?}]\n");
        let e = Policy::from_toml(&text).unwrap_err();
        assert!(
            matches!(&e, CaError::Policy { rule, .. } if rule == "services.files.dns"),
            "{why}: {e}"
        );
    }
    let shared =
        "[services.a]\ndns = [\"x.example.org\"]\n[services.b]\ndns = [\"x.example.org\"]\n";
    let e = Policy::from_toml(shared).unwrap_err();
    assert!(
        matches!(&e, CaError::Policy { rule, .. } if rule == "services.b.dns"),
        "{e}"
    );
    let long_label = format!("{}.example.org", "a".repeat(64));
    assert!(Policy::from_toml(&format!("[services.f]\ndns = [{long_label:?}]\n")).is_err());
    assert!(
        Policy::from_toml("[services.f]\ndns = [\"f.example.org\", \"f1.internal\"]\n").is_ok()
    );
}
