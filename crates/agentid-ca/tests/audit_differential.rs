//! Differential test of the streaming audit verifier: generated trails (up to three writers,
//! across the checkpoint boundaries, with bases, base revocations, audited serials,
//! revocations and anchors), then generated edits of what the store holds, and
//! `audit::verify_anchored` (the `TrailVerifier` fed record by record) must give exactly what
//! the verifier it replaced gives (`audit_oracle`): the same report, or the same first break.
//! On every trail that verifies, `audit::plan_prune` must plan what the old planner planned.
#![cfg(test)]
#![allow(missing_docs)]

mod audit_oracle;

use std::sync::OnceLock;

use agentid_ca::audit::{
    self, record_body, record_hash, Anchor, AuditEvent, AuditRecord, AuditSnapshot,
    CheckpointRecord, CheckpointSigner, CHECKPOINT_EVERY,
};
use agentid_protocol::{Algorithm, AuthorityKey, JwsSigner, PublicKey};
use proptest::prelude::*;

const ISS: &str = "spiffe://example.org";
const WRITERS: [&str; 3] = ["a", "b", "main"];
/// The writers an edit may move a record, checkpoint or anchor to (one the trail lacks, the
/// empty one, and one that sorts between the others).
const OTHER_WRITERS: [&str; 6] = ["a", "b", "main", "zz", "", "aa"];

fn key() -> &'static std::sync::Arc<AuthorityKey> {
    static KEY: OnceLock<std::sync::Arc<AuthorityKey>> = OnceLock::new();
    KEY.get_or_init(|| std::sync::Arc::new(AuthorityKey::generate(Algorithm::Es256).unwrap()))
}

fn signer() -> CheckpointSigner {
    let k: std::sync::Arc<dyn JwsSigner> = key().clone();
    CheckpointSigner::new(ISS.to_owned(), k)
}

fn public() -> &'static PublicKey {
    key().public_key()
}

/// One writer's chain as generated: its length, where a prune left its base (0: none), and
/// whether its head has a timed checkpoint.
#[derive(Clone, Debug)]
struct ChainSpec {
    len: u64,
    base: u64,
    head_checkpoint: bool,
    /// Kept the checkpoint at the base (a prune deletes the checkpoints of the records it
    /// prunes; one at the base itself may stay).
    keep_base_checkpoint: bool,
}

/// What happened at record `i` of `writer`.
fn event(writer: &str, i: u64, seed: u64) -> AuditEvent {
    let pick = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed) % 6;
    let mut ev = AuditEvent {
        ts: 1_000 + i,
        actor: "operator".into(),
        ..AuditEvent::default()
    };
    match pick {
        0 | 1 => {
            ev.kind = "issue.task".into();
            ev.outcome = "ok".into();
            ev.serial = Some(format!("{writer}{i:x}ab"));
        }
        2 => {
            ev.kind = "revoke".into();
            ev.outcome = "ok".into();
            // Two writers may revoke the same subject.
            ev.subject = Some(format!("agent:s{}", i % 7));
            ev.exp = (!i.is_multiple_of(3)).then_some(2_000 + i);
        }
        3 => {
            ev.kind = "request.refused".into();
            ev.outcome = "denied".into();
        }
        4 => {
            ev.kind = "issue.child".into();
            ev.outcome = "denied".into();
            ev.serial = Some(format!("{writer}{i:x}dd"));
        }
        _ => {
            ev.kind = "revocations.publish".into();
            ev.outcome = "ok".into();
        }
    }
    ev
}

/// A trail as a CA writes it (and prunes it), with an export of it kept outside the store.
fn trail(
    specs: &[ChainSpec],
    seed: u64,
    anchor_ranges: &[(u64, u64)],
) -> (AuditSnapshot, Vec<Anchor>) {
    let (snap, anchors, _) = trail_with_bodies(specs, seed, anchor_ranges);
    (snap, anchors)
}

/// Every record a trail's writers wrote (the pruned ones too): (writer, seq) -> (body, hash).
type Bodies = std::collections::HashMap<(String, u64), (String, String)>;

/// [`trail`], with the records' bodies.
fn trail_with_bodies(
    specs: &[ChainSpec],
    seed: u64,
    anchor_ranges: &[(u64, u64)],
) -> (AuditSnapshot, Vec<Anchor>, Bodies) {
    let mut bodies = Bodies::new();
    let s = signer();
    let mut snap = AuditSnapshot::default();
    let mut anchors = Vec::new();
    let mut held: std::collections::BTreeMap<String, u64> = Default::default();
    for (w, spec) in WRITERS.iter().zip(specs) {
        let mut prev = audit::GENESIS.to_owned();
        let mut pruned_revocations: std::collections::BTreeMap<String, u64> = Default::default();
        let mut base_head = None;
        for i in 1..=spec.len {
            let ev = event(w, i, seed);
            let body = record_body(w, i, &prev, &ev).unwrap();
            let hash = record_hash(&body);
            bodies.insert(((*w).to_owned(), i), (body.clone(), hash.clone()));
            let record = AuditRecord {
                writer: (*w).to_owned(),
                seq: i,
                ts: ev.ts,
                body,
                hash: hash.clone(),
            };
            if ev.kind == "revoke" && ev.outcome == "ok" {
                let subject = ev.subject.clone().unwrap();
                let e = held.entry(subject.clone()).or_insert(0);
                *e = (*e).max(ev.exp.unwrap_or(0));
                if i <= spec.base {
                    let p = pruned_revocations.entry(subject).or_insert(0);
                    *p = (*p).max(ev.exp.unwrap_or(0));
                }
            }
            let checkpointed = audit::checkpoint_required(i)
                || (spec.head_checkpoint && i == spec.len)
                || i == spec.base;
            if checkpointed && (i > spec.base || (i == spec.base && spec.keep_base_checkpoint)) {
                snap.checkpoints
                    .push(s.checkpoint(w, i, &hash, 5_000 + i).unwrap());
            }
            if i == spec.base {
                base_head = Some(hash.clone());
            }
            if i > spec.base {
                if ev.kind.starts_with("issue.") && ev.outcome == "ok" {
                    snap.audited_serials.push(ev.serial.clone().unwrap());
                }
                snap.records.push(record);
            }
            if let Some((lo, hi)) = anchor_ranges.first().copied() {
                let which = WRITERS.iter().position(|x| x == w).unwrap_or(0);
                let (lo, hi) = anchor_ranges.get(which).copied().unwrap_or((lo, hi));
                if i >= lo && i <= hi {
                    anchors.push(Anchor {
                        writer: (*w).to_owned(),
                        seq: i,
                        hash: hash.clone(),
                    });
                }
            }
            prev = hash;
        }
        if let Some(head) = base_head {
            let kept: Vec<(String, u64)> = pruned_revocations.into_iter().collect();
            let digest = audit::base_revocations_digest(&kept);
            snap.bases
                .push(s.base(w, (spec.base, &head), 9_000, &digest).unwrap());
            for (subject, exp) in kept {
                snap.base_revocations.push(((*w).to_owned(), subject, exp));
            }
        }
    }
    snap.revocations = held.into_iter().collect();
    (snap, anchors, bodies)
}

/// An edit of what the store holds (or of the export kept outside it).
#[derive(Clone, Debug)]
enum Tamper {
    DeleteRecord(usize),
    DuplicateRecord(usize),
    SwapRecords(usize, usize),
    EditBody(usize),
    EditBodyAndHash(usize),
    EditHash(usize),
    EditTs(usize, u64),
    MoveRecord(usize, usize),
    Renumber(usize, u64),
    DeleteCheckpoint(usize),
    DuplicateCheckpoint(usize),
    ForgeCheckpoint(usize),
    MoveCheckpoint(usize, usize),
    RenumberCheckpoint(usize, u64),
    /// A checkpoint signed with the audit key over another record's number and hash.
    SignCheckpointAt(usize, usize),
    DeleteBase(usize),
    DuplicateBase(usize),
    MoveBase(usize, usize),
    /// A base signed with the audit key at another record (with the base revocations it names).
    SignBaseAt(usize),
    AddBaseRevocation(usize, u64),
    DeleteBaseRevocation(usize),
    EditBaseRevocation(usize, u64),
    DeleteRevocation(usize),
    LowerRevocation(usize),
    DuplicateRevocation(usize),
    DeleteSerial(usize),
    DuplicateSerial(usize),
    SerialCase(usize),
    SerialPrefix(usize),
    AddSerial(u64),
    DeleteAnchor(usize),
    DuplicateAnchor(usize),
    RenumberAnchor(usize, u64),
    EditAnchorHash(usize),
    MoveAnchor(usize, usize),
    AddAnchor(usize, u64),
    ReverseAnchors,
    ReverseCheckpoints,
    ReverseRecords,
}

fn edit_strategy() -> impl Strategy<Value = Tamper> {
    let i = any::<usize>;
    let n = || prop_oneof![0u64..4, 60u64..70, 120u64..200, Just(u64::MAX)];
    prop_oneof![
        i().prop_map(Tamper::DeleteRecord),
        i().prop_map(Tamper::DuplicateRecord),
        (i(), i()).prop_map(|(a, b)| Tamper::SwapRecords(a, b)),
        i().prop_map(Tamper::EditBody),
        i().prop_map(Tamper::EditBodyAndHash),
        i().prop_map(Tamper::EditHash),
        (i(), n()).prop_map(|(a, b)| Tamper::EditTs(a, b)),
        (i(), i()).prop_map(|(a, b)| Tamper::MoveRecord(a, b)),
        (i(), n()).prop_map(|(a, b)| Tamper::Renumber(a, b)),
        i().prop_map(Tamper::DeleteCheckpoint),
        i().prop_map(Tamper::DuplicateCheckpoint),
        i().prop_map(Tamper::ForgeCheckpoint),
        (i(), i()).prop_map(|(a, b)| Tamper::MoveCheckpoint(a, b)),
        (i(), n()).prop_map(|(a, b)| Tamper::RenumberCheckpoint(a, b)),
        (i(), i()).prop_map(|(a, b)| Tamper::SignCheckpointAt(a, b)),
        i().prop_map(Tamper::DeleteBase),
        i().prop_map(Tamper::DuplicateBase),
        (i(), i()).prop_map(|(a, b)| Tamper::MoveBase(a, b)),
        i().prop_map(Tamper::SignBaseAt),
        (i(), n()).prop_map(|(a, b)| Tamper::AddBaseRevocation(a, b)),
        i().prop_map(Tamper::DeleteBaseRevocation),
        (i(), n()).prop_map(|(a, b)| Tamper::EditBaseRevocation(a, b)),
        i().prop_map(Tamper::DeleteRevocation),
        i().prop_map(Tamper::LowerRevocation),
        i().prop_map(Tamper::DuplicateRevocation),
        i().prop_map(Tamper::DeleteSerial),
        i().prop_map(Tamper::DuplicateSerial),
        i().prop_map(Tamper::SerialCase),
        i().prop_map(Tamper::SerialPrefix),
        n().prop_map(Tamper::AddSerial),
        i().prop_map(Tamper::DeleteAnchor),
        i().prop_map(Tamper::DuplicateAnchor),
        (i(), n()).prop_map(|(a, b)| Tamper::RenumberAnchor(a, b)),
        i().prop_map(Tamper::EditAnchorHash),
        (i(), i()).prop_map(|(a, b)| Tamper::MoveAnchor(a, b)),
        (i(), n()).prop_map(|(a, b)| Tamper::AddAnchor(a, b)),
        Just(Tamper::ReverseAnchors),
        Just(Tamper::ReverseCheckpoints),
        Just(Tamper::ReverseRecords),
    ]
}

fn pick<T>(v: &mut [T], i: usize) -> Option<&mut T> {
    let len = v.len();
    if len == 0 {
        None
    } else {
        v.get_mut(i % len)
    }
}

fn other_writer(i: usize) -> String {
    OTHER_WRITERS[i % OTHER_WRITERS.len()].to_owned()
}

fn apply(snap: &mut AuditSnapshot, anchors: &mut Vec<Anchor>, edit: &Tamper) {
    let s = signer();
    match *edit {
        Tamper::DeleteRecord(i) if !snap.records.is_empty() => {
            let n = snap.records.len();
            snap.records.remove(i % n);
        }
        Tamper::DuplicateRecord(i) => {
            if let Some(r) = pick(&mut snap.records, i).cloned() {
                let n = snap.records.len();
                snap.records.insert(i % n, r);
            }
        }
        Tamper::SwapRecords(a, b) if !snap.records.is_empty() => {
            let n = snap.records.len();
            snap.records.swap(a % n, b % n);
        }
        Tamper::EditBody(i) => {
            if let Some(r) = pick(&mut snap.records, i) {
                r.body = r.body.replace("operator", "mallory");
            }
        }
        Tamper::EditBodyAndHash(i) => {
            if let Some(r) = pick(&mut snap.records, i) {
                r.body = r.body.replace("operator", "mallory");
                r.hash = record_hash(&r.body);
            }
        }
        Tamper::EditHash(i) => {
            if let Some(r) = pick(&mut snap.records, i) {
                r.hash = record_hash("forged");
            }
        }
        Tamper::EditTs(i, ts) => {
            if let Some(r) = pick(&mut snap.records, i) {
                r.ts = ts;
            }
        }
        Tamper::MoveRecord(i, w) => {
            if let Some(r) = pick(&mut snap.records, i) {
                r.writer = other_writer(w);
            }
        }
        Tamper::Renumber(i, seq) => {
            if let Some(r) = pick(&mut snap.records, i) {
                r.seq = seq;
            }
        }
        Tamper::DeleteCheckpoint(i) if !snap.checkpoints.is_empty() => {
            let n = snap.checkpoints.len();
            snap.checkpoints.remove(i % n);
        }
        Tamper::DuplicateCheckpoint(i) => {
            if let Some(c) = pick(&mut snap.checkpoints, i).cloned() {
                snap.checkpoints.push(c);
            }
        }
        Tamper::ForgeCheckpoint(i) => {
            if let Some(c) = pick(&mut snap.checkpoints, i) {
                c.head = record_hash("forged");
            }
        }
        Tamper::MoveCheckpoint(i, w) => {
            if let Some(c) = pick(&mut snap.checkpoints, i) {
                c.writer = other_writer(w);
            }
        }
        Tamper::RenumberCheckpoint(i, seq) => {
            if let Some(c) = pick(&mut snap.checkpoints, i) {
                c.seq = seq;
            }
        }
        Tamper::SignCheckpointAt(i, j) => {
            let at = pick(&mut snap.records, i).map(|r| (r.writer.clone(), r.hash.clone()));
            if let Some((w, head)) = at {
                // Another record's number: the head of one record, the number of another.
                let seq = pick(&mut snap.records, j).map_or(1, |r| r.seq);
                if let Ok(c) = s.checkpoint(&w, seq, &head, 7_000) {
                    snap.checkpoints.push(c);
                }
            }
        }
        Tamper::DeleteBase(i) if !snap.bases.is_empty() => {
            let n = snap.bases.len();
            snap.bases.remove(i % n);
        }
        Tamper::DuplicateBase(i) => {
            if let Some(b) = pick(&mut snap.bases, i).cloned() {
                snap.bases.push(b);
            }
        }
        Tamper::MoveBase(i, w) => {
            if let Some(b) = pick(&mut snap.bases, i) {
                b.writer = other_writer(w);
            }
        }
        Tamper::SignBaseAt(i) => {
            // A base at a stored record (as a prune with the audit key would sign), the
            // records up to it left in place, with the base revocations already held.
            let at = pick(&mut snap.records, i).map(|r| (r.writer.clone(), r.seq, r.hash.clone()));
            if let Some((w, seq, head)) = at {
                let kept: Vec<(String, u64)> = snap
                    .base_revocations
                    .iter()
                    .filter(|(x, _, _)| *x == w)
                    .map(|(_, subject, exp)| (subject.clone(), *exp))
                    .collect();
                let digest = audit::base_revocations_digest(&kept);
                if let Ok(b) = s.base(&w, (seq, &head), 9_500, &digest) {
                    snap.bases.retain(|x| x.writer != w);
                    snap.bases.push(b);
                }
            }
        }
        Tamper::AddBaseRevocation(w, exp) => {
            snap.base_revocations
                .push((other_writer(w), "agent:s1".to_owned(), exp));
        }
        Tamper::DeleteBaseRevocation(i) if !snap.base_revocations.is_empty() => {
            let n = snap.base_revocations.len();
            snap.base_revocations.remove(i % n);
        }
        Tamper::EditBaseRevocation(i, exp) => {
            if let Some(r) = pick(&mut snap.base_revocations, i) {
                r.2 = exp;
            }
        }
        Tamper::DeleteRevocation(i) if !snap.revocations.is_empty() => {
            let n = snap.revocations.len();
            snap.revocations.remove(i % n);
        }
        Tamper::LowerRevocation(i) => {
            if let Some(r) = pick(&mut snap.revocations, i) {
                r.1 = r.1.saturating_sub(1);
            }
        }
        Tamper::DuplicateRevocation(i) => {
            if let Some(r) = pick(&mut snap.revocations, i).cloned() {
                snap.revocations.push((r.0, 0));
            }
        }
        Tamper::DeleteSerial(i) if !snap.audited_serials.is_empty() => {
            let n = snap.audited_serials.len();
            snap.audited_serials.remove(i % n);
        }
        Tamper::DuplicateSerial(i) => {
            if let Some(x) = pick(&mut snap.audited_serials, i).cloned() {
                snap.audited_serials.push(x);
            }
        }
        Tamper::SerialCase(i) => {
            if let Some(x) = pick(&mut snap.audited_serials, i) {
                *x = x.to_uppercase();
            }
        }
        Tamper::SerialPrefix(i) => {
            if let Some(x) = pick(&mut snap.audited_serials, i) {
                x.pop();
            }
        }
        Tamper::AddSerial(n) => snap.audited_serials.push(format!("a{n:x}ab")),
        Tamper::DeleteAnchor(i) if !anchors.is_empty() => {
            let n = anchors.len();
            anchors.remove(i % n);
        }
        Tamper::DuplicateAnchor(i) => {
            if let Some(a) = pick(anchors, i).cloned() {
                anchors.push(a);
            }
        }
        Tamper::RenumberAnchor(i, seq) => {
            if let Some(a) = pick(anchors, i) {
                a.seq = seq;
            }
        }
        Tamper::EditAnchorHash(i) => {
            if let Some(a) = pick(anchors, i) {
                a.hash = record_hash("another");
            }
        }
        Tamper::MoveAnchor(i, w) => {
            if let Some(a) = pick(anchors, i) {
                a.writer = other_writer(w);
            }
        }
        Tamper::AddAnchor(w, seq) => anchors.push(Anchor {
            writer: other_writer(w),
            seq,
            hash: record_hash("unknown"),
        }),
        Tamper::ReverseAnchors => anchors.reverse(),
        Tamper::ReverseCheckpoints => snap.checkpoints.reverse(),
        Tamper::ReverseRecords => snap.records.reverse(),
        _ => {}
    }
}

fn spec_strategy() -> impl Strategy<Value = ChainSpec> {
    (
        prop_oneof![0u64..4, 60u64..70, 125u64..135],
        prop_oneof![Just(0u64), Just(1u64), Just(CHECKPOINT_EVERY), 2u64..70],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(len, base, head_checkpoint, keep)| ChainSpec {
            len,
            // A base is at a record before the head.
            base: if base < len { base } else { 0 },
            head_checkpoint,
            keep_base_checkpoint: keep,
        })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_streaming_verifier_agrees_with_the_old_one(
        specs in proptest::collection::vec(spec_strategy(), 1..=3),
        seed in any::<u64>(),
        ranges in proptest::collection::vec((0u64..140, 0u64..140), 0..=3),
        edits in proptest::collection::vec(edit_strategy(), 0..=3),
        cutoff in prop_oneof![Just(0u64), 1_000u64..1_140, Just(u64::MAX)],
    ) {
        let (mut snap, mut anchors) = trail(&specs, seed, &ranges);
        for e in &edits {
            apply(&mut snap, &mut anchors, e);
        }
        let new = audit::verify_anchored(&snap, public(), ISS, &anchors);
        let old = audit_oracle::verify_anchored(&snap, public(), ISS, &anchors);
        prop_assert_eq!(&new, &old);
        if old.is_ok() {
            let retained = |s: &str| -> agentid_ca::error::Result<Option<u64>> {
                // Certificates of serials ending in "ab" ended long ago; others never did.
                Ok(s.ends_with("ab").then_some(1_050))
            };
            let mut r1 = retained;
            let mut r2 = retained;
            let new = audit::plan_prune(&snap, cutoff, &mut r1).unwrap();
            let old = audit_oracle::plan_prune(&snap, cutoff, &mut r2).unwrap();
            // The places a prune may stop in batches (new): checkpointed records after the
            // base, rising, ending at the plan's end, with the revocations counted up to each;
            // then the plans are the old planner's, and the serials it held are the ones a
            // batch of the whole plan finds in the records it deletes (the new plan holds none).
            prop_assert_eq!(new.len(), old.len());
            for (p, o) in new.iter().zip(&old) {
                let last = p.steps.last().map(|s| (s.seq, s.head.clone()));
                prop_assert_eq!(last, Some((p.seq, p.head.clone())));
                let mut at = (p.from, 0);
                for s in &p.steps {
                    prop_assert!(s.seq > at.0 && s.revocations >= at.1);
                    at = (s.seq, s.revocations);
                }
                prop_assert_eq!(at.1, p.revocations.len());
                prop_assert_eq!(
                    (&p.writer, p.seq, &p.head, p.from, &p.revocations),
                    (&o.writer, o.seq, &o.head, o.from, &o.revocations)
                );
                prop_assert_eq!(&batch_serials(&snap, p), &o.serials);
            }
        }
    }
}

/// What a batch from the plan's base to its end finds to delete ([`audit::PrunedBatch`], as
/// the stores read it), given the chain's records in `snap` after the base up to the end.
fn batch_serials(snap: &AuditSnapshot, plan: &audit::PrunePlan) -> Vec<String> {
    let mut records: Vec<&AuditRecord> = snap
        .records
        .iter()
        .filter(|r| r.writer == plan.writer && r.seq > plan.from && r.seq <= plan.seq)
        .collect();
    records.sort_by_key(|r| r.seq);
    let mut batch = audit::PrunedBatch::new(plan, plan.from);
    for r in records {
        batch.record(r.seq, &r.body, &r.hash).unwrap();
    }
    batch.finish().unwrap()
}

/// The generator makes trails that verify (else the test would only compare breaks).
#[test]
fn generated_trails_verify_unedited() {
    let specs = vec![
        ChainSpec {
            len: 130,
            base: 64,
            head_checkpoint: true,
            keep_base_checkpoint: true,
        },
        ChainSpec {
            len: 3,
            base: 0,
            head_checkpoint: false,
            keep_base_checkpoint: false,
        },
    ];
    let (snap, anchors) = trail(&specs, 7, &[(60, 130), (1, 3)]);
    let report = audit::verify_anchored(&snap, public(), ISS, &anchors).unwrap();
    assert_eq!(report.chains.len(), 2);
    assert_eq!(report.chains[0].records, 130);
    assert_eq!(report.chains[0].pruned, 64);
    assert!(report.anchors_pruned > 0);
    assert_eq!(
        Ok(report),
        audit_oracle::verify_anchored(&snap, public(), ISS, &anchors)
    );
}

#[allow(dead_code)]
fn _unused(_: CheckpointRecord) {}

mod common;

/// Copies the CA directory `from` (its files; the store is closed between copies) to `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The real streaming path (`verify_dir`: SQLite read by each writer's primary key, the rows
/// only an edit makes merged in) against the old verifier over the same store's snapshot, on
/// edits made in SQLite that a snapshot in memory cannot show the store's order of: negative,
/// text and real seqs, writers stored as blobs or not UTF-8, rows of two writers
/// interleaved, timestamps no reader converts.
#[test]
fn the_streamed_store_agrees_with_the_old_verifier() {
    use common::*;
    // The edits are SQLite's (`ca.db`); PostgreSQL's have a test of their own below.
    if postgres_under_test() {
        return;
    }
    let t = test_ca(agentid_ca::KeyType::P256);
    let task = || {
        agentid_ca::OpenTaskRequest::new(
            "planner",
            spki_key(Algorithm::Es256).1,
            agentid_ca::TaskRequester::Operator,
            agentid_protocol::Scope::parse("tickets:read").unwrap(),
        )
    };
    for _ in 0..3 {
        t.ca.open_task(&task(), now()).unwrap();
    }
    let b = agentid_ca::CertificateAuthority::open_as(t.path(), "b").unwrap();
    for _ in 0..3 {
        b.open_task(&task(), now()).unwrap();
    }
    b.revoke(
        &agentid_ca::RevokeTarget::Agent("worker".into()),
        None,
        "operator",
        now(),
    )
    .unwrap();
    t.ca.open_task(&task(), now()).unwrap();
    drop(b);
    let key = audit::audit_public_key(t.path()).unwrap();
    let config =
        agentid_ca::CaConfig::load(&t.path().join(agentid_ca::material::files::CONFIG)).unwrap();
    let iss = config.trust_domain.id().as_str().to_owned();
    let edits: &[&str] = &[
        "",
        "UPDATE audit_records SET seq = -seq WHERE writer = 'main' AND seq = 3",
        "UPDATE audit_records SET seq = -seq WHERE writer = 'main' AND seq = 4",
        "UPDATE audit_records SET seq = -1 WHERE writer = 'b' AND seq = 1",
        "UPDATE audit_records SET seq = 'x' WHERE writer = 'main' AND seq = 2",
        "UPDATE audit_records SET seq = 2.5 WHERE writer = 'main' AND seq = 2",
        "UPDATE audit_records SET writer = CAST(writer AS BLOB) WHERE writer = 'main' AND seq = 2",
        "UPDATE audit_records SET writer = CAST(writer AS BLOB) WHERE writer = 'main' AND seq = 4",
        "UPDATE audit_records SET writer = CAST(writer AS BLOB) WHERE writer = 'b'",
        "INSERT INTO audit_records (writer, seq, ts, body, hash) SELECT CAST(writer AS BLOB), \
         seq, ts, body, hash FROM audit_records WHERE writer = 'main' AND seq = 2",
        "INSERT INTO audit_records (writer, seq, ts, body, hash) SELECT CAST(writer AS BLOB), \
         seq, ts, body, hash FROM audit_records WHERE writer = 'main' AND seq = 4",
        "UPDATE audit_records SET writer = CAST(x'62ff' AS TEXT) WHERE writer = 'b'",
        "UPDATE audit_records SET writer = CAST(x'62ff' AS TEXT) WHERE writer = 'b' AND seq = 2",
        "UPDATE audit_records SET writer = 7 WHERE writer = 'b' AND seq = 2",
        "UPDATE audit_records SET writer = 'a' WHERE writer = 'b' AND seq = 2",
        "UPDATE audit_records SET writer = 'main' WHERE writer = 'b' AND seq = 4",
        "UPDATE audit_records SET seq = seq + 1000 WHERE writer = 'b' AND seq = 3",
        "UPDATE audit_records SET ts = -5 WHERE writer = 'b' AND seq = 1",
        "UPDATE audit_records SET ts = 'x' WHERE writer = 'b' AND seq = 2",
        "UPDATE audit_records SET ts = -5 WHERE writer = 'b'",
        "UPDATE audit_records SET ts = -5 WHERE writer = 'b'; \
         DELETE FROM audit_checkpoints WHERE writer = 'b'",
        "UPDATE audit_records SET hash = 5 WHERE writer = 'main' AND seq = 2",
        "UPDATE audit_records SET body = CAST(body AS BLOB) WHERE writer = 'main' AND seq = 2",
        "UPDATE audit_checkpoints SET seq = -1 WHERE writer = 'main' AND seq = 1",
        "UPDATE audit_checkpoints SET writer = CAST(writer AS BLOB) WHERE writer = 'b'",
        "UPDATE issuances SET serial = lower(serial)",
        "UPDATE issuances SET serial = upper(serial)",
        "DELETE FROM revocations",
        "UPDATE revocations SET exp = -1",
    ];
    let mut refused = Vec::new();
    for sql in edits {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(t.path(), copy.path());
        if !sql.is_empty() {
            let c = rusqlite::Connection::open(copy.path().join("ca.db")).unwrap();
            if let Err(e) = c.execute_batch(sql) {
                // The schema refuses it: no store can hold it.
                refused.push(format!("{sql}: {e}"));
                continue;
            }
        }
        let streamed = audit::verify_dir(copy.path()).unwrap();
        let snap =
            agentid_ca::store::read_audit_snapshot(&copy.path().join("ca.db"), None).unwrap();
        let old = audit_oracle::verify_anchored(&snap, &key, &iss, &[]);
        assert_eq!(streamed, old, "{sql}");
        if sql.is_empty() {
            assert!(old.is_ok(), "{old:?}");
        }
    }
    assert!(refused.len() <= 2, "{refused:#?}");
}

/// The PostgreSQL streaming path (each writer's records through cursors, in the order Rust
/// sorts writers whatever the database's collation, negative seqs after the others) against
/// the old verifier over the same store, on edits a PostgreSQL store can hold: negative seqs,
/// records moved between writers whose collation order is not their byte order, gaps, and
/// timestamps no reader converts. Each edit is made on a copy of the database.
#[cfg(feature = "postgres")]
#[test]
fn the_streamed_postgres_store_agrees_with_the_old_verifier() {
    use common::*;
    if !postgres_under_test() {
        return;
    }
    let common::TestCa { dir, ca, pg } = test_ca(agentid_ca::KeyType::P256);
    let pg = pg.unwrap();
    let task = || {
        agentid_ca::OpenTaskRequest::new(
            "planner",
            spki_key(Algorithm::Es256).1,
            agentid_ca::TaskRequester::Operator,
            agentid_protocol::Scope::parse("tickets:read").unwrap(),
        )
    };
    for _ in 0..3 {
        ca.open_task(&task(), now()).unwrap();
    }
    // "B" sorts before "a" byte-wise, after it in most collations.
    for w in ["B", "a"] {
        let other = agentid_ca::CertificateAuthority::open_as(dir.path(), w).unwrap();
        for _ in 0..2 {
            other.open_task(&task(), now()).unwrap();
        }
    }
    ca.open_task(&task(), now()).unwrap();
    drop(ca);
    let key = audit::audit_public_key(dir.path()).unwrap();
    let config_path = dir.path().join(agentid_ca::material::files::CONFIG);
    let config = agentid_ca::CaConfig::load(&config_path).unwrap();
    let iss = config.trust_domain.id().as_str().to_owned();
    let config_text = std::fs::read_to_string(&config_path).unwrap();
    let edits: &[&str] = &[
        "",
        "UPDATE audit_records SET seq = -seq WHERE writer = 'main' AND seq = 3",
        "UPDATE audit_records SET seq = -seq WHERE writer = 'B' AND seq = 1",
        "UPDATE audit_records SET seq = -seq WHERE writer = 'a'",
        "UPDATE audit_records SET writer = 'a', seq = seq + 1 WHERE writer = 'B' AND seq = 2",
        "UPDATE audit_records SET writer = 'B', seq = seq + 2 WHERE writer = 'a'",
        "UPDATE audit_records SET writer = 'A' WHERE writer = 'a'",
        "UPDATE audit_records SET seq = seq + 1000 WHERE writer = 'B' AND seq = 2",
        "UPDATE audit_records SET ts = -5 WHERE writer = 'B' AND seq = 1",
        "UPDATE audit_records SET ts = -5 WHERE writer = 'a'",
        "UPDATE audit_checkpoints SET seq = -1 WHERE writer = 'a'",
        "DELETE FROM audit_records WHERE writer = 'main' AND seq = 1",
    ];
    let mut refused = Vec::new();
    for (i, sql) in edits.iter().enumerate() {
        let db = format!("e{i}");
        let create = format!("CREATE DATABASE {db} TEMPLATE agentid");
        // The CA's connections close as it drops: the template may still be in use a moment.
        let mut made = false;
        for _ in 0..50 {
            let create = create.clone();
            made = agentid_test_support::pg::with_client(&pg.url("postgres"), |c| async move {
                c.batch_execute(&create).await.is_ok()
            });
            if made {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(made, "{create}");
        if !sql.is_empty() {
            let edit = sql.to_string();
            if let Err(e) = agentid_test_support::pg::with_client(&pg.url(&db), |c| async move {
                c.batch_execute(&edit).await.map_err(|e| e.to_string())
            }) {
                refused.push(format!("{sql}: {e}"));
                continue;
            }
        }
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        std::fs::write(
            copy.path().join(agentid_ca::material::files::CONFIG),
            config_text.replace(&pg.url("agentid"), &pg.url(&db)),
        )
        .unwrap();
        let streamed = audit::verify_dir(copy.path()).unwrap();
        let snap =
            agentid_ca::CaConfig::load(&copy.path().join(agentid_ca::material::files::CONFIG))
                .unwrap()
                .read_audit_snapshot(copy.path(), None)
                .unwrap();
        let old = audit_oracle::verify_anchored(&snap, &key, &iss, &[]);
        assert_eq!(streamed, old, "{sql}");
        if sql.is_empty() {
            assert_eq!(old.as_ref().map(|r| r.chains.len()), Ok(3), "{old:?}");
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
}

/// PostgreSQL reads the store's revocations as the CA does: a revocation whose `exp` was made
/// negative, or a principal's moved to a row whose `kind` holds the start of its value, is
/// undone (the CA no longer finds it in force), and `audit verify` names its record.
#[cfg(feature = "postgres")]
#[test]
fn a_revocation_undone_in_a_postgres_store_is_named() {
    use common::*;
    if !postgres_under_test() {
        return;
    }
    let t = test_ca(agentid_ca::KeyType::P256);
    let url = t.pg.as_ref().unwrap().url("agentid");
    let principal = serde_json::json!({"format": "email", "email": "a@example.org"});
    t.ca.revoke(
        &agentid_ca::RevokeTarget::Agent("worker".into()),
        None,
        "operator",
        now(),
    )
    .unwrap();
    t.ca.revoke(
        &agentid_ca::RevokeTarget::Principal(principal),
        None,
        "operator",
        now(),
    )
    .unwrap();
    t.ca.checkpoint_audit(now(), true).unwrap();
    audit::verify_dir(t.path()).unwrap().unwrap();
    let edit = |sql: &'static str| {
        agentid_test_support::pg::with_client(&url, move |c| async move {
            c.batch_execute(sql).await.unwrap();
        })
    };
    let named = |what: &str| match audit::verify_dir(t.path()).unwrap() {
        Err(audit::AuditBreak::Record { reason, .. }) => {
            assert!(reason.contains(what), "{reason}")
        }
        other => panic!("expected the revoke record of {what} named, got {other:?}"),
    };
    edit(
        "UPDATE revocations SET exp = -exp WHERE kind = 'agent' AND value = 'worker'; \
         UPDATE revocations SET exp = -exp WHERE kind = 'principal'",
    );
    named("agent:worker");
    edit(
        "UPDATE revocations SET exp = -exp WHERE kind = 'agent' AND value = 'worker'; \
         UPDATE revocations SET exp = -exp WHERE kind = 'principal'",
    );
    audit::verify_dir(t.path()).unwrap().unwrap();
    edit(
        "UPDATE revocations SET kind = 'principal:' || substr(value, 1, strpos(value, ':') - 1), \
                value = substr(value, strpos(value, ':') + 1) WHERE kind = 'principal'",
    );
    named("principal:");
}

/// `anchors` as the lines of an `agentid audit export`, in their order: a record's own body
/// where one of the trail's hashes to the anchor's hash, else a body made for the anchor's
/// writer and number that hashes to something else (an edited export).
fn export_text(anchors: &[Anchor], bodies: &Bodies, seed: u64) -> String {
    let mut out = String::new();
    for a in anchors {
        let text = match bodies.get(&(a.writer.clone(), a.seq)) {
            Some((body, hash)) if *hash == a.hash => body.clone(),
            _ => record_body(
                &a.writer,
                a.seq,
                &a.hash,
                &event(&a.writer, a.seq % 4096, seed ^ 0x5eed),
            )
            .unwrap(),
        };
        let line = audit::ExportLine::Record {
            body: Box::new(serde_json::from_str(&text).unwrap()),
            hash: record_hash(&text),
            text,
        };
        out.push_str(&serde_json::to_string(&line).unwrap());
        out.push('\n');
    }
    out
}

/// Verifies `snap` against `known`; with the verifier, to ask it what the prune asks.
fn verify_against<'a>(
    snap: &AuditSnapshot,
    known: audit::Against<'a>,
) -> (
    Result<audit::VerifyReport, audit::AuditBreak>,
    audit::TrailVerifier<'a>,
) {
    let mut v = audit::TrailVerifier::against(public(), ISS, known);
    snap.visit(&mut v).unwrap();
    v.read_export_rest().unwrap();
    (v.finish(), v)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// An export file read beside the store's records (`audit::ExportFile`) gives exactly what
    /// the same file read into memory gives: the same report or first break, and the same
    /// first record a prune would find missing from it, for the edited export in its order
    /// and for the same records sorted as `agentid audit export` writes them.
    #[test]
    fn an_export_file_read_beside_the_store_agrees_with_one_held_in_memory(
        specs in proptest::collection::vec(spec_strategy(), 1..=3),
        seed in any::<u64>(),
        ranges in proptest::collection::vec((0u64..140, 0u64..140), 1..=3),
        edits in proptest::collection::vec(edit_strategy(), 0..=3),
    ) {
        let (mut snap, mut anchors, bodies) = trail_with_bodies(&specs, seed, &ranges);
        for e in &edits {
            apply(&mut snap, &mut anchors, e);
        }
        let mut sorted = anchors.clone();
        sorted.sort_by(|a, b| (&a.writer, a.seq).cmp(&(&b.writer, b.seq)));
        sorted.dedup_by(|a, b| a.writer == b.writer && a.seq == b.seq);
        for (order, list) in [("edited", &anchors), ("sorted", &sorted)] {
            if list.is_empty() {
                continue;
            }
            let text = export_text(list, &bodies, seed);
            let listed = audit::read_anchors(text.as_bytes()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("export.jsonl");
            std::fs::write(&path, &text).unwrap();
            let file = audit::ExportFile::open(std::fs::File::open(&path).unwrap(), true).unwrap();
            if order == "sorted" {
                prop_assert!(matches!(file, audit::Against::Export(_)), "{:?}", file);
            }
            let (in_memory, v_memory) = verify_against(&snap, audit::Against::Listed(listed.into()));
            let (beside, v_file) = verify_against(&snap, file);
            prop_assert_eq!(&beside, &in_memory, "{}", order);
            if let Ok(report) = &in_memory {
                for c in &report.chains {
                    prop_assert_eq!(
                        v_file.first_unanchored(&c.writer, c.records),
                        v_memory.first_unanchored(&c.writer, c.records),
                        "{} {}", order, c.writer
                    );
                }
            }
        }
    }
}

/// `text`'s record lines interleaved by writer as `picks` says (each writer's lines keep
/// their order), with checkpoint lines, blank lines and CRLF endings between them as `noise`
/// says: an export of several writers' periods concatenated, as a file may hold it.
fn interleaved(text: &str, picks: &[u8], noise: &[u8]) -> String {
    let mut by_writer: std::collections::BTreeMap<String, std::collections::VecDeque<&str>> =
        Default::default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["body"].as_str().unwrap();
        let body: serde_json::Value = serde_json::from_str(text).unwrap();
        by_writer
            .entry(body["writer"].as_str().unwrap().to_owned())
            .or_default()
            .push_back(line);
    }
    let mut out = String::new();
    let mut i = 0usize;
    while by_writer.values().any(|q| !q.is_empty()) {
        let live: Vec<String> = by_writer
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(w, _)| w.clone())
            .collect();
        let pick = picks.get(i % picks.len().max(1)).copied().unwrap_or(0) as usize;
        let w = &live[pick % live.len()];
        let line = by_writer.get_mut(w).unwrap().pop_front().unwrap();
        // The first line is a record's (one that is not is read as a report).
        let n = if i == 0 {
            0
        } else {
            noise.get(i % noise.len().max(1)).copied().unwrap_or(0)
        };
        match n % 5 {
            1 => out.push('\n'),
            2 => out.push_str("  \r\n"),
            3 => out.push_str(&format!(
                "{{\"type\":\"checkpoint\",\"writer\":{w:?},\"seq\":{i},\"jws\":\"x\"}}\n"
            )),
            _ => {}
        }
        out.push_str(line);
        out.push_str(if pick.is_multiple_of(2) { "\n" } else { "\r\n" });
        i += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// The same, with each writer's records interleaved with the others' (several runs a
    /// writer), checkpoint and blank lines between them and CRLF endings; the first record a
    /// prune would find missing is compared for every bound.
    #[test]
    fn an_interleaved_export_file_agrees_with_one_held_in_memory(
        specs in proptest::collection::vec(spec_strategy(), 1..=3),
        seed in any::<u64>(),
        ranges in proptest::collection::vec((0u64..140, 0u64..140), 1..=3),
        edits in proptest::collection::vec(edit_strategy(), 0..=3),
        picks in proptest::collection::vec(any::<u8>(), 1..=8),
        noise in proptest::collection::vec(any::<u8>(), 1..=8),
    ) {
        let (mut snap, mut anchors, bodies) = trail_with_bodies(&specs, seed, &ranges);
        for e in &edits {
            apply(&mut snap, &mut anchors, e);
        }
        let mut sorted = anchors.clone();
        sorted.sort_by(|a, b| (&a.writer, a.seq).cmp(&(&b.writer, b.seq)));
        sorted.dedup_by(|a, b| a.writer == b.writer && a.seq == b.seq);
        if sorted.is_empty() {
            return Ok(());
        }
        let text = interleaved(&export_text(&sorted, &bodies, seed), &picks, &noise);
        let listed = audit::read_anchors(text.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.jsonl");
        std::fs::write(&path, &text).unwrap();
        let file = audit::ExportFile::open(std::fs::File::open(&path).unwrap(), true).unwrap();
        prop_assert!(matches!(file, audit::Against::Export(_)), "{:?}", file);
        let (in_memory, v_memory) = verify_against(&snap, audit::Against::Listed(listed.into()));
        let (beside, v_file) = verify_against(&snap, file);
        prop_assert_eq!(&beside, &in_memory);
        if let Ok(report) = &in_memory {
            for c in &report.chains {
                for to in 0..=c.records {
                    prop_assert_eq!(
                        v_file.first_unanchored(&c.writer, to),
                        v_memory.first_unanchored(&c.writer, to),
                        "{} {}", c.writer, to
                    );
                }
            }
        }
    }
}
