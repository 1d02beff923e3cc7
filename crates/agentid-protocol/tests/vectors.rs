//! Checks every committed vector of `spec/vectors/` against the reference runner
//! (`agentid_protocol::vectors::run_case`): every disagreement is collected and reported.
//!
//! The directory is `AGENTID_VECTORS_DIR` if set, else `<crate>/../../spec/vectors`.
#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use agentid_protocol::vectors::{run_case, run_case_cached};
use agentid_protocol::ErrorCode;
use agentid_protocol::TokenCache;
use serde_json::Value;

/// Codes that no vector is expected to produce, each with the reason.
const NOT_IN_VECTORS: &[(&str, &str)] = &[
    (
        "proof_replayed",
        "a transport-level check (a proof `jti` already seen on the connection) that needs state across \
         messages; every vector is one stateless verification, and replay onto another connection is \
         covered by the channel_binding_mismatch vectors",
    ),
    (
        "proof_missing",
        "an HTTP-binding code (spec/PROTOCOL.md section 17): a request with an `agentid-chain` header \
         and no `agentid-proof` header; a vector is not an HTTP request",
    ),
    (
        "presentation_changed",
        "an HTTP-binding code: a request whose presentation differs from the one already verified on \
         its connection; needs state across requests, and every vector is one stateless verification",
    ),
    (
        "peer_denied",
        "identity-only authorization by a local peer policy (an HTTP route or tower layer); peer \
         policies are local configuration that the vector format does not carry",
    ),
    (
        "internal",
        "a failure of the crypto backend itself (RNG, key generation), never caused by input",
    ),
];

fn vectors_dir() -> PathBuf {
    std::env::var_os("AGENTID_VECTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec/vectors"))
}

struct Case {
    file: String,
    id: String,
    input: Value,
    expected: Value,
}

fn load() -> Vec<Case> {
    let dir = vectors_dir();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            // `http.json` has the HTTP binding's own format (section 22.9) and its own runner
            // in the transport crate (`tests/http_vectors.rs`).
            p.extension().is_some_and(|x| x == "json")
                && p.file_name()
                    .is_some_and(|n| n != "keys.json" && n != "http.json")
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(doc["description"].is_string(), "{file}: no description");
        let cases = doc["cases"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no `cases` array"));
        for c in cases {
            assert!(
                c["description"].is_string(),
                "{file}: a case without description"
            );
            out.push(Case {
                file: file.clone(),
                id: c["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: a case without id"))
                    .to_owned(),
                input: c["input"].clone(),
                expected: c["expected"].clone(),
            });
        }
    }
    out
}

#[test]
fn every_vector_agrees_with_the_reference_runner() {
    let cases = load();
    let mut failures = Vec::new();
    for c in &cases {
        let got = run_case(&c.input);
        if got != c.expected {
            failures.push(format!(
                "{} / {}:\n    expected {}\n    got      {}",
                c.file, c.id, c.expected, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors disagree:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Section 10, "Caching": a cache MUST NOT change any verdict, code or index. Every vector runs
/// twice through one cache shared by all of them (so the second run of each finds its own tokens,
/// and every run finds the tokens of the vectors before it, verified under other bundles,
/// policies, lists and times), and must give the expected result each time.
#[test]
fn a_token_cache_shared_by_every_vector_changes_no_result() {
    let cases = load();
    let cache = std::sync::Arc::new(TokenCache::new(1 << 16));
    let mut failures = Vec::new();
    for round in ["cold", "warm"] {
        for c in &cases {
            let got = run_case_cached(&c.input, &cache);
            if got != c.expected {
                failures.push(format!(
                    "{round} {} / {}:\n    expected {}\n    got      {}",
                    c.file, c.id, c.expected, got
                ));
            }
        }
    }
    assert!(!cache.is_empty(), "the cache was used");
    assert!(
        failures.is_empty(),
        "{} runs disagree with a shared cache:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn there_are_enough_vectors_with_unique_ids() {
    let cases = load();
    assert!(cases.len() >= 60, "only {} vectors", cases.len());
    let mut ids = BTreeSet::new();
    for c in &cases {
        assert!(ids.insert(c.id.as_str()), "duplicate case id {}", c.id);
    }
    let valid = cases
        .iter()
        .filter(|c| c.expected["valid"] == Value::Bool(true))
        .count();
    assert!(
        valid >= 10 && cases.len() - valid >= 50,
        "{valid} valid of {}",
        cases.len()
    );
}

#[test]
fn expectations_are_well_formed() {
    for c in load() {
        match &c.expected["valid"] {
            Value::Bool(false) => {
                let code = c.expected["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: no error code", c.id));
                assert!(
                    ErrorCode::from_code(code).is_some(),
                    "{}: unknown code {code}",
                    c.id
                );
                let index = &c.expected["index"];
                assert!(
                    index.is_null() || index.is_u64(),
                    "{}: bad index {index}",
                    c.id
                );
                assert_eq!(
                    c.expected.as_object().unwrap().len(),
                    3,
                    "{}: extra members",
                    c.id
                );
            }
            Value::Bool(true) => assert!(c.expected.get("error").is_none(), "{}", c.id),
            other => panic!("{}: `valid` is {other}", c.id),
        }
    }
}

#[test]
fn every_error_code_appears_in_a_vector() {
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    for c in load() {
        if let Some(code) = c.expected["error"].as_str() {
            *used.entry(code.to_owned()).or_default() += 1;
        }
    }
    let excluded: BTreeSet<&str> = NOT_IN_VECTORS.iter().map(|(c, _)| *c).collect();
    let missing: Vec<&str> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !used.contains_key(*c) && !excluded.contains(c))
        .collect();
    assert!(missing.is_empty(), "codes with no vector: {missing:?}");
    for (code, _) in NOT_IN_VECTORS {
        assert!(
            ErrorCode::from_code(code).is_some(),
            "excluded code {code} does not exist"
        );
    }
}
