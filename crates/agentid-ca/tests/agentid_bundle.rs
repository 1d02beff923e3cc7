//! The signed agentid bundle: made at `init` with the offline bundle-signing key, verified only
//! with that key's public half, for its own trust domain, byte for byte.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use agentid_ca::agentid_bundle::{self, BUNDLE_TYP};
use agentid_ca::KeyType;
use agentid_protocol::{Algorithm, AuthorityKey, TrustDomain};
use base64::Engine as _;
use common::*;
use std::os::unix::fs::PermissionsExt;

/// The one verification home, at the current time.
fn verify(
    jws: &str,
    key: &agentid_protocol::PublicKey,
    td: &TrustDomain,
) -> agentid_protocol::Result<(u64, agentid_protocol::TrustBundle)> {
    agentid_protocol::verify_signed_bundle(jws, key, td, unix(now()), 60).map(|s| (s.seq, s.bundle))
}

fn td() -> TrustDomain {
    TrustDomain::parse(TD).unwrap()
}

#[test]
fn init_signs_a_bundle_that_verifies_with_the_bundle_signing_key() {
    let t = test_ca(KeyType::P256);
    let key_mode = std::fs::metadata(t.path().join("bundle-signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let jws = t.ca.signed_agentid_bundle().unwrap().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jws.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], BUNDLE_TYP);
    let key = agentid_bundle::public_key(t.path()).unwrap();
    let (seq, bundle) = verify(&jws, &key, &td()).unwrap();
    assert!(seq > 0);
    let current = t.ca.trust_bundle().unwrap();
    assert_eq!(bundle.grant_keys(), current.grant_keys());
    assert_eq!(bundle.revocation_keys(), current.revocation_keys());
    assert_eq!(bundle.x509_authorities(), current.x509_authorities());
    // One key, one use: the bundle-signing key is none of the bundle's keys.
    assert!(!current
        .grant_keys()
        .iter()
        .chain(current.revocation_keys())
        .any(|k| k.key == key));
}

#[test]
fn a_bundle_signed_by_another_key_or_for_another_domain_or_edited_is_refused() {
    let t = test_ca(KeyType::P256);
    let key = agentid_bundle::public_key(t.path()).unwrap();
    let bundle = t.ca.trust_bundle().unwrap();
    let mallory = AuthorityKey::generate(Algorithm::Es256).unwrap();
    let forged = agentid_bundle::sign(&mallory, &bundle, 1).unwrap();
    assert!(verify(&forged, &key, &td()).is_err());

    let jws = t.ca.signed_agentid_bundle().unwrap().unwrap();
    let other = TrustDomain::parse("other.example").unwrap();
    assert!(verify(&jws, &key, &other).is_err());

    // One payload byte changed.
    let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
    let mut payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&parts[1])
        .unwrap();
    let i = payload.len() / 2;
    payload[i] ^= 1;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
    assert!(verify(&parts.join("."), &key, &td()).is_err());
}
