//! Verifying and exporting the audit trail take memory that does not grow with the records'
//! bodies (CA-API.md 4.3, 4.4): the store streams the records, each parsed, checked and
//! dropped. Measured as the growth of the process's peak resident set (Linux: `VmHWM` of
//! `/proc/self/status`, reset through `/proc/self/clear_refs`), since the workspace forbids the
//! `unsafe` a counting global allocator needs; one test in this binary, so nothing else runs
//! meanwhile. SQLite only (the PostgreSQL store pages the same way, through cursors). The
//! same for an export file the store is held to (`--against`): read beside the records, it
//! takes memory that does not grow with its records.
#![cfg(test)]
#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;

use agentid_ca::audit::{self, CheckpointSigner, GENESIS};
use agentid_ca::KeyType;
use agentid_protocol::AuthorityKey;
use common::*;

/// Bytes of each made record's `reason`: large, so that holding every body shows.
const BODY: usize = 64 * 1024;

/// Records of the small trail; the large one has four times as many.
const N: u64 = 128;

/// Records of the small trail held to an export; the large one has four times as many.
const KNOWN: u64 = 5_000;

/// What the peak may grow by from the small export to the large one (held in memory, the
/// 15,000 more records known took 2.6 MB).
const SLACK_KNOWN: u64 = 1024 * 1024;

/// What the peak may grow by from the small trail to the large one: a few records' bodies
/// (SQLite's page cache and a page of rows are the same for both).
const SLACK: u64 = 8 * 1024 * 1024;

/// Appends a writer's chain of `n` records with `BODY`-byte reasons to the store of `dir`, with
/// the checkpoints the CA signs with record 1 and every `CHECKPOINT_EVERY`-th one, signed with
/// the CA's own audit key: a trail the CA could have written (a replica's refusals).
fn write_trail(dir: &Path, writer: &str, n: u64) {
    write_trail_of(dir, writer, n, BODY);
}

/// [`write_trail`] with `body`-byte reasons.
fn write_trail_of(dir: &Path, writer: &str, n: u64, body: usize) {
    let der = agentid_ca::material::read_private_key(&dir.join("audit.key")).unwrap();
    let key = AuthorityKey::from_pkcs8_der(&der).unwrap();
    let signer = CheckpointSigner::new(format!("spiffe://{TD}"), Arc::new(key));
    let mut c = rusqlite::Connection::open(dir.join("ca.db")).unwrap();
    let tx = c.transaction().unwrap();
    let ts = unix(now());
    let mut prev = GENESIS.to_owned();
    for seq in 1..=n {
        let ev = agentid_ca::AuditEvent {
            ts,
            kind: "request.refused".into(),
            actor: "operator".into(),
            outcome: "denied".into(),
            reason: Some(format!("{seq} {}", "x".repeat(body))),
            ..Default::default()
        };
        let body = audit::record_body(writer, seq, &prev, &ev).unwrap();
        let h = audit::record_hash(&body);
        tx.execute(
            "INSERT INTO audit_records (writer, seq, ts, body, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![writer, seq as i64, ts as i64, body, h],
        )
        .unwrap();
        if audit::checkpoint_required(seq) {
            let cp = signer.checkpoint(writer, seq, &h, ts).unwrap();
            tx.execute(
                "INSERT INTO audit_checkpoints (writer, seq, head, iat, jws)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![cp.writer, cp.seq as i64, cp.head, cp.iat as i64, cp.jws],
            )
            .unwrap();
        }
        prev = h;
    }
    tx.commit().unwrap();
}

/// A field of `/proc/self/status`, bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: u64 = line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Whether the peak resident set can be reset here (`/proc/self/clear_refs`: "5" resets it to
/// the current one, Linux 4.0 on; a sandbox may refuse the write).
fn can_reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// How far the peak resident set rises above where it was while `f` runs.
fn peak_growth(f: impl FnOnce()) -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_bytes("VmRSS:");
    f();
    status_bytes("VmHWM:").saturating_sub(before)
}

#[test]
fn verify_and_export_hold_a_bounded_number_of_record_bodies() {
    if postgres_under_test() || !can_reset_peak() {
        eprintln!("skipped: SQLite on Linux only, where the peak resident set can be reset");
        return;
    }
    let small = test_ca(KeyType::P256);
    let large = test_ca(KeyType::P256);
    write_trail(small.path(), "bulk", N);
    write_trail(large.path(), "bulk", 4 * N);
    let verify = |dir: &Path, n: u64| {
        let report = audit::verify_dir(dir).unwrap().unwrap();
        let bulk = report.chains.iter().find(|c| c.writer == "bulk").unwrap();
        assert_eq!(bulk.records, n);
    };
    // Once each first: what a first run maps (code, SQLite's caches) is not the trail's.
    verify(small.path(), N);
    verify(large.path(), 4 * N);
    let v_small = peak_growth(|| verify(small.path(), N));
    let v_large = peak_growth(|| verify(large.path(), 4 * N));
    let export = |dir: &Path| {
        let lines = audit::export_dir(dir, None, &mut std::io::sink()).unwrap();
        assert!(lines > N);
    };
    let e_small = peak_growth(|| export(small.path()));
    let e_large = peak_growth(|| export(large.path()));
    eprintln!(
        "peak growth: verify {v_small} B at {N} records, {v_large} B at {}; export {e_small} B, \
         {e_large} B ({BODY}-byte reasons)",
        4 * N
    );
    assert!(
        v_large < v_small + SLACK,
        "verify: the peak grew by {v_large} B for {} records, {v_small} B for {N}: it holds \
         the records' bodies",
        4 * N
    );
    assert!(
        e_large < e_small + SLACK,
        "export: the peak grew by {e_large} B for {} records, {e_small} B for {N}: it holds \
         the records' bodies",
        4 * N
    );

    // An export file the store is held to: many small records, where holding each record
    // known (about 200 B in memory) shows.
    let small = test_ca(KeyType::P256);
    let large = test_ca(KeyType::P256);
    write_trail_of(small.path(), "bulk", KNOWN, 16);
    write_trail_of(large.path(), "bulk", 4 * KNOWN, 16);
    let exported = |dir: &Path| {
        let path = dir.join("export.jsonl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        audit::export_dir(dir, None, &mut f).unwrap();
        drop(f);
        path
    };
    let (small_file, large_file) = (exported(small.path()), exported(large.path()));
    let beside = |dir: &Path, file: &Path, n: u64| {
        let known = audit::ExportFile::open(std::fs::File::open(file).unwrap(), true).unwrap();
        assert!(matches!(known, audit::Against::Export(_)));
        let report = audit::verify_dir_against(dir, known).unwrap().unwrap();
        assert!(report.anchors >= n);
    };
    let in_memory = |dir: &Path, file: &Path, n: u64| {
        let f = std::io::BufReader::new(std::fs::File::open(file).unwrap());
        let listed = audit::read_anchors(f).unwrap();
        let report = audit::verify_dir_against(dir, audit::Against::Listed(listed.into()))
            .unwrap()
            .unwrap();
        assert!(report.anchors >= n);
    };
    beside(small.path(), &small_file, KNOWN);
    beside(large.path(), &large_file, 4 * KNOWN);
    let b_small = peak_growth(|| beside(small.path(), &small_file, KNOWN));
    let b_large = peak_growth(|| beside(large.path(), &large_file, 4 * KNOWN));
    let m_small = peak_growth(|| in_memory(small.path(), &small_file, KNOWN));
    let m_large = peak_growth(|| in_memory(large.path(), &large_file, 4 * KNOWN));
    eprintln!(
        "peak growth against an export: read beside the store {b_small} B at {KNOWN} records, \
         {b_large} B at {}; read into memory {m_small} B, {m_large} B",
        4 * KNOWN
    );
    // The measure sees what holding the records known takes (else the bound below could not
    // fail).
    assert!(
        m_large > m_small + SLACK_KNOWN,
        "read into memory, the export's records should show: {m_small} B, {m_large} B"
    );
    assert!(
        b_large < b_small + SLACK_KNOWN,
        "read beside the store, the peak grew by {b_large} B for {} records known, {b_small} B \
         for {KNOWN}: it holds the records known",
        4 * KNOWN
    );
}
