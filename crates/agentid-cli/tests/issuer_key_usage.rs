//! `cert verify` refuses a leaf issued by an intermediate CA whose keyUsage lacks `keyCertSign`
//! (RFC 5280 section 6.1.4 (n)), and accepts the same hierarchy with a conforming intermediate.
#![cfg(test)]

mod support;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use support::Env;

const LEAF: &str = "spiffe://example.org/agent/planner/task/t1";

fn ca_params(name: &str, ku: Vec<KeyUsagePurpose>, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(path_len.map_or(BasicConstraints::Unconstrained, |n| {
        BasicConstraints::Constrained(n)
    }));
    p.key_usages = ku;
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    p.serial_number = Some(SerialNumber::from(vec![0x42, name.len() as u8]));
    p
}

/// Writes `bundle.pem` (the root) and `cert.pem` (leaf, intermediate) into the env's directory,
/// the intermediate having `inter_ku`.
fn hierarchy(env: &Env, inter_ku: Vec<KeyUsagePurpose>) {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params(
        "test root",
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        None,
    );
    let root = root_params.clone().self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let inter_params = ca_params("issuing CA", inter_ku, Some(0));
    let inter = inter_params
        .clone()
        .signed_by(&inter_key, &root_issuer)
        .unwrap();
    let inter_issuer = Issuer::new(inter_params, inter_key);

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(LEAF.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::minutes(30);
    p.serial_number = Some(SerialNumber::from(vec![0x33, 0x44]));
    p.use_authority_key_identifier_extension = true;
    let leaf = p.signed_by(&leaf_key, &inter_issuer).unwrap();

    std::fs::write(env.path("bundle.pem"), root.pem()).unwrap();
    std::fs::write(env.path("cert.pem"), leaf.pem() + &inter.pem()).unwrap();
}

#[test]
fn cert_verify_checks_the_issuing_cas_key_usage() {
    let env = Env::empty();
    hierarchy(
        &env,
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
    );
    let v = env.json("cert verify cert.pem --bundle example.org=bundle.pem");
    assert_eq!(v["valid"], true);
    assert_eq!(v["identity"], LEAF);

    for ku in [
        vec![KeyUsagePurpose::DigitalSignature],
        vec![KeyUsagePurpose::CrlSign],
    ] {
        hierarchy(&env, ku.clone());
        env.fails(
            "cert verify cert.pem --bundle example.org=bundle.pem",
            3,
            "issuing CA certificate lacks keyUsage keyCertSign",
        );
        let (out, _) = env.fails(
            "cert verify cert.pem --bundle example.org=bundle.pem --format json",
            3,
            "keyCertSign",
        );
        let out: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out["valid"], false, "{ku:?}");
    }
}
