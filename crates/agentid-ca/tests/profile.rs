//! Issued certificates checked against the X509-SVID profile by our parser, by webpki (through
//! rustls) and by OpenSSL.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use agentid_ca::{KeySource, KeyType, OpenTaskRequest, ServiceRequest, TaskRequester};
use agentid_protocol::{Algorithm, Scope};
use common::*;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

fn open_task(t: &TestCa, alg: Algorithm) -> agentid_ca::TaskCredentials {
    let (_k, src) = spki_key(alg);
    let req = OpenTaskRequest::new(
        "planner",
        src,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    t.ca.open_task(&req, now()).unwrap()
}

/// Every rule of the leaf profile, read back with x509-parser.
fn check_profile(der: &[u8], expected_uri: &str, intermediate_der: &[u8]) {
    let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
    // Empty subject.
    assert_eq!(cert.subject().iter().count(), 0, "subject must be empty");
    // Serial: positive, 128 bits.
    let serial = cert.raw_serial();
    let trimmed: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
    assert_eq!(trimmed.len(), 16, "128-bit serial");
    assert!(trimmed[0] & 0x80 != 0);
    let mut seen = std::collections::HashSet::new();
    let mut san_critical = None;
    for ext in cert.extensions() {
        assert!(seen.insert(ext.oid.to_id_string()), "duplicate extension");
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                san_critical = Some(ext.critical);
                assert_eq!(san.general_names.len(), 1, "exactly one SAN");
                assert!(matches!(san.general_names[0], GeneralName::URI(u) if u == expected_uri));
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(ext.critical, "basicConstraints critical");
                assert!(!bc.ca, "cA=false");
                assert!(bc.path_len_constraint.is_none());
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical, "keyUsage critical");
                assert!(ku.digital_signature());
                assert_eq!(ku.flags, 1, "digitalSignature only: {ku}");
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
                assert!(!eku.any && !eku.code_signing && eku.other.is_empty());
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                let (_, int) =
                    x509_parser::certificate::X509Certificate::from_der(intermediate_der).unwrap();
                let ski = int
                    .extensions()
                    .iter()
                    .find_map(|e| match e.parsed_extension() {
                        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                        _ => None,
                    })
                    .unwrap();
                assert_eq!(aki.key_identifier.as_ref().unwrap().0, ski.as_slice());
            }
            ParsedExtension::SubjectKeyIdentifier(_) => {}
            other => panic!("unexpected extension {other:?}"),
        }
    }
    assert_eq!(
        san_critical,
        Some(true),
        "SAN present and critical (empty subject)"
    );
    assert!(cert.key_usage().unwrap().is_some());
    assert!(cert.extended_key_usage().unwrap().is_some());
    assert!(cert.basic_constraints().unwrap().is_some());
    assert!(seen.contains("2.5.29.35"), "AKI present");
}

#[test]
fn leaf_profile_p256_and_ed25519() {
    for (ca_type, leaf_alg) in [
        (KeyType::P256, Algorithm::Es256),
        (KeyType::P256, Algorithm::Ed25519),
        (KeyType::Ed25519, Algorithm::Ed25519),
        (KeyType::Ed25519, Algorithm::Es256),
    ] {
        let t = test_ca(ca_type);
        let creds = open_task(&t, leaf_alg);
        check_profile(
            &creds.certificate.leaf.der,
            creds.identity.as_str(),
            t.ca.intermediate_der(),
        );
        let svc =
            t.ca.issue_service(
                &ServiceRequest {
                    service: "search".into(),
                    key: spki_key(leaf_alg).1,
                    ttl: None,
                },
                now(),
            )
            .unwrap();
        check_profile(
            &svc.leaf.der,
            &format!("spiffe://{TD}/svc/search"),
            t.ca.intermediate_der(),
        );
    }
}

#[test]
fn validity_is_backdated_and_capped() {
    let t = test_ca(KeyType::P256);
    let n = now();
    let (_k, src) = spki_key(Algorithm::Es256);
    let mut req = OpenTaskRequest::new(
        "planner",
        src,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    req.task_ttl = Some(minutes(3)); // shorter than the default 5-minute certificate
    let creds = t.ca.open_task(&req, n).unwrap();
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&creds.certificate.leaf.der).unwrap();
    let nb = cert.validity().not_before.timestamp() as u64;
    let na = cert.validity().not_after.timestamp() as u64;
    assert_eq!(nb, unix(n) - 60, "notBefore back-dated by the skew");
    assert_eq!(
        na, creds.grant_exp,
        "a defaulted TTL is capped by the task's grant"
    );
    assert_eq!(na, unix(n) + 180);

    // Default TTL 5 minutes.
    let (_k, src) = spki_key(Algorithm::Es256);
    let req = OpenTaskRequest::new(
        "planner",
        src,
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    let creds = t.ca.open_task(&req, n).unwrap();
    assert_eq!(creds.certificate.leaf.not_after, unix(n) + 300);
}

#[test]
fn ca_hierarchy_profile() {
    let t = test_ca(KeyType::P256);
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(t.ca.root_der()).unwrap();
    let (_, int) =
        x509_parser::certificate::X509Certificate::from_der(t.ca.intermediate_der()).unwrap();
    let rbc = root.basic_constraints().unwrap().unwrap();
    assert!(rbc.critical && rbc.value.ca);
    let ibc = int.basic_constraints().unwrap().unwrap();
    assert!(ibc.critical && ibc.value.ca);
    assert_eq!(ibc.value.path_len_constraint, Some(0));
    let iku = int.key_usage().unwrap().unwrap();
    assert!(
        iku.critical
            && iku.value.key_cert_sign()
            && iku.value.crl_sign()
            && !iku.value.digital_signature()
    );
    assert!(
        int.name_constraints().unwrap().is_none() && root.name_constraints().unwrap().is_none()
    );
    assert_eq!(int.issuer(), root.subject());
    assert_ne!(root.raw_serial(), int.raw_serial());
    let days = |c: &x509_parser::certificate::X509Certificate<'_>| {
        (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86_400
    };
    assert!(days(&root) >= 3649 && days(&root) <= 3651, "root ~10 years");
    assert!(
        days(&int) >= 364 && days(&int) <= 366,
        "intermediate ~1 year"
    );
    assert!(root.verify_signature(None).is_ok());
    assert!(int.verify_signature(Some(root.public_key())).is_ok());
}

#[test]
fn webpki_accepts_leaves_through_rustls() {
    for ca_type in [KeyType::P256, KeyType::Ed25519] {
        let t = test_ca(ca_type);
        let creds = open_task(&t, Algorithm::Es256);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(t.ca.root_der().to_vec()))
            .unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from(creds.certificate.leaf.der.clone());
        let int = CertificateDer::from(t.ca.intermediate_der().to_vec());
        verifier
            .verify_client_cert(&leaf, std::slice::from_ref(&int), UnixTime::now())
            .expect("webpki accepts the chain");
        // Without the intermediate the chain does not build.
        assert!(verifier
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .is_err());
        // After notAfter it is refused.
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            creds.certificate.leaf.not_after + 1,
        ));
        assert!(verifier
            .verify_client_cert(&leaf, std::slice::from_ref(&int), later)
            .is_err());
    }
}

#[test]
fn openssl_verifies_chain_and_profile() {
    if !agentid_test_support::openssl::available() {
        return;
    }
    for ca_type in [KeyType::P256, KeyType::Ed25519] {
        let t = test_ca(ca_type);
        let creds = open_task(&t, Algorithm::Es256);
        let work = tempfile::tempdir().unwrap();
        let leaf = write_pem(
            work.path(),
            "leaf.pem",
            "CERTIFICATE",
            &creds.certificate.leaf.der,
        );
        let root = t.path().join("root.pem");
        let int = t.path().join("intermediate.pem");
        for purpose in ["sslclient", "sslserver"] {
            let (ok, out) = openssl(&[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                root.to_str().unwrap(),
                "-untrusted",
                int.to_str().unwrap(),
                leaf.to_str().unwrap(),
            ]);
            assert!(ok, "openssl verify ({purpose}) failed: {out}");
            assert!(out.contains(": OK"), "{out}");
        }
        // Without the intermediate, OpenSSL cannot build the chain.
        let (ok, _) = openssl(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        assert!(!ok);

        let (ok, text) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]);
        assert!(ok, "{text}");
        let compact: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            compact.contains("X509v3 Subject Alternative Name: critical"),
            "{text}"
        );
        assert!(
            compact.contains(&format!("URI:{}", creds.identity.as_str())),
            "{text}"
        );
        assert!(
            compact.contains("X509v3 Basic Constraints: critical CA:FALSE"),
            "{text}"
        );
        assert!(
            compact.contains("X509v3 Key Usage: critical Digital Signature X509v3"),
            "{text}"
        );
        assert!(
            compact.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
        assert!(
            compact.contains("X509v3 Authority Key Identifier"),
            "{text}"
        );
        assert!(
            compact.contains("Subject: Subject Public Key Info"),
            "subject not empty: {text}"
        );
        assert!(!compact.contains("DNS:"));

        let (ok, text) = openssl(&["x509", "-in", int.to_str().unwrap(), "-noout", "-text"]);
        assert!(ok);
        let compact: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(compact.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(compact.contains("Certificate Sign, CRL Sign"), "{text}");
    }
}

#[test]
fn openssl_csr_is_accepted_and_only_its_key_taken() {
    if !agentid_test_support::openssl::available() {
        return;
    }
    let t = test_ca(KeyType::P256);
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("k.pem");
    let csr = work.path().join("req.pem");
    let (ok, out) = openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    // A typical OpenSSL CSR: a subject, which the CA ignores (the leaf subject stays empty).
    let (ok, out) = openssl(&[
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/CN=evil/O=ca",
        "-out",
        csr.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let pem = std::fs::read(&csr).unwrap();
    let req = OpenTaskRequest::new(
        "planner",
        KeySource::Csr(pem),
        TaskRequester::Operator,
        Scope::parse("tickets:read").unwrap(),
    );
    let creds = t.ca.open_task(&req, now()).unwrap();
    check_profile(
        &creds.certificate.leaf.der,
        creds.identity.as_str(),
        t.ca.intermediate_der(),
    );
    // The leaf certifies the CSR's key.
    let (ok, pubkey_csr) = openssl(&["req", "-in", csr.to_str().unwrap(), "-noout", "-pubkey"]);
    assert!(ok);
    let leaf = write_pem(
        work.path(),
        "leaf.pem",
        "CERTIFICATE",
        &creds.certificate.leaf.der,
    );
    let (ok, pubkey_leaf) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-pubkey"]);
    assert!(ok);
    assert_eq!(pubkey_csr, pubkey_leaf);
}

#[test]
fn rcgen_marks_the_san_critical_when_the_subject_is_empty() {
    // Pins the rcgen behaviour the profile relies on.
    let t = test_ca(KeyType::P256);
    let creds = open_task(&t, Algorithm::Ed25519);
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&creds.certificate.leaf.der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
}
