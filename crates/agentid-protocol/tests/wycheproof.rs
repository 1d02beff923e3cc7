//! Project Wycheproof vectors against agentid's signature verification ("Signature edge
//! cases" in spec/PROTOCOL.md section 19).
//!
//! ECDSA P-256/SHA-256 in P1363 form (the JWS ES256 encoding) and Ed25519. Every `valid` case
//! must verify; every `invalid` case must be rejected, either at key parsing or at
//! verification; `acceptable` cases are counted, either outcome is allowed.
//!
//! The files (Wycheproof's `ecdsa_secp256r1_sha256_p1363_test.json` and `ed25519_test.json`,
//! not copied into this repository) are read from the directory `$AGENTID_WYCHEPROOF_DIR`
//! names. When the variable is set, missing files fail the test (CI sets it); when it is unset,
//! the test prints a SKIP notice.
#![cfg(test)]

use std::path::PathBuf;

use agentid_protocol::{Algorithm, ErrorCode, PublicKey};
use serde_json::Value;

const ENV: &str = "AGENTID_WYCHEPROOF_DIR";

/// The contents of a vector file, or `None` when the test should be skipped.
fn load(name: &str) -> Option<Value> {
    let Some(dir) = std::env::var_os(ENV) else {
        eprintln!(
            "SKIP: {ENV} is not set; set it to a directory of Wycheproof's files to run them"
        );
        return None;
    };
    let path = PathBuf::from(dir).join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        ),
        Err(e) => panic!("{ENV} is set but {} cannot be read: {e}", path.display()),
    }
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[derive(Debug, Default)]
struct Counts {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    invalid_rejected_at_key: usize,
    acceptable_accepted: usize,
}

/// Runs every test of every group; `key_of` parses a group's public key. Each entry of
/// `must_see` is a comment fragment of `invalid` cases that must be present in the file (so
/// that the property they prove, e.g. `S < L`, is really exercised).
fn run(
    file: &Value,
    alg: Algorithm,
    must_see: &[&str],
    key_of: impl Fn(&Value) -> agentid_protocol::Result<PublicKey>,
) -> Counts {
    let mut counts = Counts::default();
    let mut seen = vec![0usize; must_see.len()];
    let mut failures = Vec::new();
    for group in file["testGroups"].as_array().expect("testGroups") {
        let key = key_of(group);
        // The SPKI form of the same key must parse to the same result.
        if let (Ok(k), Some(der)) = (&key, group["publicKeyDer"].as_str()) {
            assert_eq!(
                &PublicKey::from_spki_der(&hex(der)).unwrap(),
                k,
                "SPKI of {group:?}"
            );
            assert_eq!(k.to_spki_der(), hex(der));
        }
        for test in group["tests"].as_array().expect("tests") {
            let id = test["tcId"].as_u64().unwrap();
            let msg = hex(test["msg"].as_str().unwrap());
            let sig = hex(test["sig"].as_str().unwrap());
            let outcome = match &key {
                Ok(k) => k.verify_signature(alg, &msg, &sig).map_err(|e| {
                    assert_eq!(e.code(), ErrorCode::BadSignature, "tcId {id}: {e}");
                    e
                }),
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::BadKey, "tcId {id}: {e}");
                    Err(e.clone())
                }
            };
            let comment = test["comment"].as_str().unwrap_or("");
            match test["result"].as_str().unwrap() {
                "valid" => {
                    counts.valid += 1;
                    if let Err(e) = outcome {
                        failures.push(format!("tcId {id} ({comment}): valid but rejected: {e}"));
                    }
                }
                "invalid" => {
                    counts.invalid += 1;
                    for (n, fragment) in seen.iter_mut().zip(must_see) {
                        if comment.contains(fragment) {
                            *n += 1;
                        }
                    }
                    if key.is_err() {
                        counts.invalid_rejected_at_key += 1;
                    }
                    if outcome.is_ok() {
                        failures.push(format!("tcId {id} ({comment}): invalid but accepted"));
                    }
                }
                "acceptable" => {
                    counts.acceptable += 1;
                    if outcome.is_ok() {
                        counts.acceptable_accepted += 1;
                    }
                }
                other => panic!("tcId {id}: unknown result {other:?}"),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for (n, fragment) in seen.iter().zip(must_see) {
        assert!(*n > 0, "no invalid case {fragment:?} in the file");
    }
    assert_eq!(
        counts.valid + counts.invalid + counts.acceptable,
        usize::try_from(file["numberOfTests"].as_u64().unwrap()).unwrap(),
        "every test of the file was seen"
    );
    counts
}

#[test]
fn ecdsa_p256_sha256_p1363() {
    let Some(file) = load("ecdsa_secp256r1_sha256_p1363_test.json") else {
        return;
    };
    assert_eq!(file["algorithm"], "ECDSA");
    let must_see = [
        "r=0 and s=0",
        "r=n and s=1",
        "s == 0",
        "replaced s by s + n",
        "incorrect size of signature",
    ];
    let counts = run(&file, Algorithm::Es256, &must_see, |group| {
        assert_eq!(group["type"], "EcdsaP1363Verify");
        assert_eq!(group["sha"], "SHA-256");
        assert_eq!(group["publicKey"]["curve"], "secp256r1");
        PublicKey::from_p256_uncompressed(&hex(group["publicKey"]["uncompressed"]
            .as_str()
            .unwrap()))
    });
    eprintln!("Wycheproof ECDSA P-256 P1363: {counts:?}");
    assert!(counts.valid > 0 && counts.invalid > 0, "{counts:?}");
    // The pinned file (0.9rc5) has 262 tests: 173 valid, 89 invalid.
    assert!(counts.valid + counts.invalid >= 262, "{counts:?}");
}

#[test]
fn ed25519() {
    let Some(file) = load("ed25519_test.json") else {
        return;
    };
    assert_eq!(file["algorithm"], "EDDSA");
    let must_see = [
        "fail to enforce s < L",
        "S just above the bound",
        "R==0",
        "empty signature",
    ];
    let counts = run(&file, Algorithm::Ed25519, &must_see, |group| {
        assert_eq!(group["type"], "EddsaVerify");
        assert_eq!(group["publicKey"]["curve"], "edwards25519");
        PublicKey::from_ed25519(&hex(group["publicKey"]["pk"].as_str().unwrap()))
    });
    eprintln!("Wycheproof Ed25519: {counts:?}");
    assert!(counts.valid > 0 && counts.invalid > 0, "{counts:?}");
    // The pinned file (0.9rc5) has 151 tests: 88 valid, 63 invalid.
    assert!(counts.valid + counts.invalid >= 151, "{counts:?}");
}

#[test]
fn wrong_algorithm_never_verifies_a_valid_case() {
    // The first valid case of each file, verified under the other algorithm: AlgMismatch.
    let (Some(ec), Some(ed)) = (
        load("ecdsa_secp256r1_sha256_p1363_test.json"),
        load("ed25519_test.json"),
    ) else {
        return;
    };
    type Parse = fn(&[u8]) -> agentid_protocol::Result<PublicKey>;
    let cases: [(&Value, &str, Parse, Algorithm); 2] = [
        (
            &ec,
            "uncompressed",
            PublicKey::from_p256_uncompressed,
            Algorithm::Ed25519,
        ),
        (&ed, "pk", PublicKey::from_ed25519, Algorithm::Es256),
    ];
    for (file, field, parse, wrong) in cases {
        let group = &file["testGroups"][0];
        let key = parse(&hex(group["publicKey"][field].as_str().unwrap())).unwrap();
        let test = group["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["result"] == "valid")
            .unwrap();
        let msg = hex(test["msg"].as_str().unwrap());
        let sig = hex(test["sig"].as_str().unwrap());
        assert!(key.verify_signature(key.algorithm(), &msg, &sig).is_ok());
        assert_eq!(
            key.verify_signature(wrong, &msg, &sig).unwrap_err().code(),
            ErrorCode::AlgMismatch
        );
    }
}
