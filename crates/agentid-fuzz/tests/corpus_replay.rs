//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and the crash regressions
//! (`fuzz/regressions/<target>/`, if any) through the same harness functions the cargo-fuzz
//! targets call, on the stable toolchain.
#![cfg(test)]

use std::path::{Path, PathBuf};

use agentid_fuzz::{Outcome, CROSS_CHECKED, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_seed_corpus_and_replays_it() {
    for (name, harness) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(
            seeds.len() >= 3,
            "target {name}: at least 3 committed seeds, found {}",
            seeds.len()
        );
        let mut accepted = 0usize;
        for (path, data) in &seeds {
            // A panic here names the input: rerun it with `cargo fuzz run NAME PATH`.
            eprintln!("{name}: {}", path.display());
            if harness(data) == Outcome::Accepted {
                accepted += 1;
            }
        }
        // Seeds must reach past the decoders (else the fuzzer starts from nothing useful).
        assert!(accepted > 0, "target {name}: no seed is accepted");
    }
}

#[test]
fn crash_regressions_replay_without_panicking() {
    for (name, harness) in TARGETS {
        for (path, data) in inputs(&fuzz_dir().join("regressions").join(name)) {
            eprintln!("{name}: {}", path.display());
            let _ = harness(&data);
        }
    }
}

/// The chain targets verify with a configuration built once per process; on every committed
/// input (corpus and regressions) that verifier gives the reference vector runner's verdict.
#[test]
fn the_prebuilt_verifier_agrees_with_the_reference_runner() {
    for (name, checked) in CROSS_CHECKED {
        let mut n = 0usize;
        for dir in ["corpus", "regressions"] {
            for (path, data) in inputs(&fuzz_dir().join(dir).join(name)) {
                eprintln!("{name}: {}", path.display());
                let fast = TARGETS.iter().find(|(t, _)| t == name).expect("target").1;
                assert_eq!(checked(&data), fast(&data), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 3, "target {name}: {n} inputs cross-checked");
    }
}

/// The re-signing target really gets past the signatures: every seed made from a valid spec
/// vector verifies through phases 1-8.
#[test]
fn resigned_valid_vectors_verify() {
    let dir = fuzz_dir().join("corpus").join("chain_signed");
    let valid: Vec<_> = inputs(&dir)
        .into_iter()
        .filter(|(p, _)| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("valid-"))
        })
        .collect();
    assert!(valid.len() >= 5, "valid seeds: {}", valid.len());
    for (path, data) in valid {
        assert_eq!(
            agentid_fuzz::chain_signed(&data),
            Outcome::Accepted,
            "{}",
            path.display()
        );
    }
}

/// The harnesses detect what they are meant to: a broken invariant panics.
#[test]
fn a_frame_stream_and_edge_keys_are_handled() {
    // Truncated header, truncated body, an unknown type: refused without panicking.
    for data in [
        &[0u8, 0, 0][..],
        &[0, 0, 0, 9, 1, b'{'],
        &[0, 0, 0, 0, 0x7f],
    ] {
        assert_eq!(agentid_fuzz::frame(data), Outcome::Refused);
    }
    // All-zero y (not a point? y = 0 is a point of order 4): both checks refuse it.
    assert_eq!(agentid_fuzz::ed25519_diff(&[0u8; 32]), Outcome::Refused);
}
