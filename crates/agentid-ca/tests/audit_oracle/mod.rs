//! The audit verifier and prune planner as they were before they streamed (commit 332ba51:
//! `verify_anchored` and `plan_prune` over a whole `AuditSnapshot`), kept as the oracle of the
//! differential test `audit_differential.rs`: the streaming `TrailVerifier` and `PrunePlanner`
//! must give the same verdict, the same break and the same plans.
#![allow(dead_code, clippy::all)]

use std::collections::{BTreeMap, HashSet};

use agentid_ca::audit::{
    base_revocations_digest, record_hash, verify_base, verify_checkpoint, Anchor, AuditBreak,
    AuditRecord, AuditSnapshot, ChainSummary, CheckpointClaims, CheckpointRecord, PruneStep,
    RecordBody, VerifyReport, CHECKPOINT_EVERY, GENESIS,
};
use agentid_ca::error::{CaError, Result};
use agentid_protocol::PublicKey;

pub fn verify_anchored(
    snap: &AuditSnapshot,
    key: &PublicKey,
    iss: &str,
    anchors: &[Anchor],
) -> core::result::Result<VerifyReport, AuditBreak> {
    // writer -> (seq of the base, its head): the records up to it were pruned, signed so by the
    // audit key (CA-API.md 4.5); the chain goes on from there.
    let mut bases: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for b in &snap.bases {
        let bad = |reason: String| AuditBreak::Base {
            writer: b.writer.clone(),
            seq: b.seq,
            reason,
        };
        let claims = verify_base(&b.jws, key)
            .and_then(|claims| signs_its_columns(b, &claims, iss).map(|()| claims))
            .map_err(&bad)?;
        // The revocations its pruned records made, kept beside it, are the ones it signed.
        let kept: Vec<(String, u64)> = snap
            .base_revocations
            .iter()
            .filter(|(w, _, _)| *w == b.writer)
            .map(|(_, subject, exp)| (subject.clone(), *exp))
            .collect();
        if claims.revoked.as_deref() != Some(base_revocations_digest(&kept).as_str()) {
            return Err(bad(
                "the revocations its pruned records made are not the ones it signs (a row of \
                 them was deleted, added or changed)"
                    .into(),
            ));
        }
        if b.seq == 0 || b.seq == u64::MAX {
            return Err(bad("names no record".into()));
        }
        if bases
            .insert(b.writer.as_str(), (b.seq, b.head.as_str()))
            .is_some()
        {
            return Err(bad("the chain has a second base".into()));
        }
    }
    let base_of = |writer: &str| bases.get(writer).map_or(0, |b| b.0);
    // writer -> (records seen, head hash, hashes of the records after the base, by seq)
    let mut chains: BTreeMap<&str, (u64, String, Vec<String>)> = bases
        .iter()
        .map(|(w, (seq, head))| (*w, (*seq, (*head).to_owned(), Vec::new())))
        .collect();
    // Serial of each `ok` issuance record -> the record (writer, seq), first one kept.
    let mut issued: BTreeMap<String, (String, u64)> = BTreeMap::new();
    // Each `ok` revocation record: its subject (`kind:value`), its `exp`, writer and number.
    let mut revoked: Vec<(String, Option<u64>, String, u64)> = Vec::new();
    // In chain order whatever order the store gave (a stored seq no store can convert is read
    // as u64::MAX, so it sorts last and shows as the gap it left).
    let mut records: Vec<&AuditRecord> = snap.records.iter().collect();
    records.sort_by(|a, b| (a.writer.as_str(), a.seq).cmp(&(b.writer.as_str(), b.seq)));
    for r in records {
        let entry = chains
            .entry(r.writer.as_str())
            .or_insert_with(|| (0, GENESIS.to_owned(), Vec::new()));
        let expected = entry.0 + 1;
        let bad = |reason: String| AuditBreak::Record {
            writer: r.writer.clone(),
            seq: expected,
            reason,
        };
        if r.seq != expected {
            let base = base_of(&r.writer);
            return Err(bad(if r.seq > expected {
                format!("missing (the next record stored is {})", r.seq)
            } else if r.seq <= base {
                format!(
                    "record {} is stored, but the chain's signed base says the records up to \
                     {base} were pruned (it was put back or made up)",
                    r.seq
                )
            } else {
                format!("stored twice or out of order (found record {})", r.seq)
            }));
        }
        let body: RecordBody =
            serde_json::from_str(&r.body).map_err(|e| bad(format!("not an audit record: {e}")))?;
        if body.writer != r.writer || body.seq != r.seq {
            return Err(bad(format!(
                "moved: its content is record {} of chain {:?}",
                body.seq, body.writer
            )));
        }
        if body.event.ts != r.ts {
            return Err(bad("its ts column differs from its content".into()));
        }
        if record_hash(&r.body) != r.hash {
            return Err(bad(
                "edited: its content does not hash to its stored hash".into()
            ));
        }
        if body.prev != entry.1 {
            return Err(bad("does not link to the previous record's hash".into()));
        }
        if body.event.kind.starts_with("issue.") && body.event.outcome == "ok" {
            if let Some(s) = &body.event.serial {
                issued
                    .entry(s.clone())
                    .or_insert_with(|| (r.writer.clone(), r.seq));
            }
        }
        if body.event.kind == "revoke" && body.event.outcome == "ok" {
            revoked.push((
                body.event.subject.clone().unwrap_or_default(),
                body.event.exp,
                r.writer.clone(),
                r.seq,
            ));
        }
        entry.0 = expected;
        entry.1 = r.hash.clone();
        entry.2.push(r.hash.clone());
    }
    let mut checkpointed: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &snap.checkpoints {
        let bad = |reason: String| AuditBreak::Checkpoint {
            writer: c.writer.clone(),
            seq: c.seq,
            reason,
        };
        let claims = verify_checkpoint(&c.jws, key)
            .and_then(|claims| signs_its_columns(c, &claims, iss).map(|()| claims))
            .map_err(&bad)?;
        let first = base_of(&c.writer);
        if let Some((seq, head)) = bases.get(c.writer.as_str()).copied() {
            if c.seq <= seq {
                // Of a pruned record: only the base's own can still be compared.
                if c.seq == seq && head != claims.head {
                    return Err(bad(
                        "it signs another record than the chain's base names".into()
                    ));
                }
                let e = checkpointed.entry(c.writer.as_str()).or_insert(0);
                *e = (*e).max(c.seq);
                continue;
            }
        }
        let hashes = chains.get(c.writer.as_str()).map(|e| &e.2);
        let at = c
            .seq
            .checked_sub(first.saturating_add(1))
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|i| hashes.and_then(|h| h.get(i)));
        match at {
            None => {
                return Err(bad(format!(
                    "the chain has {} records: records were removed after it",
                    first.saturating_add(hashes.map_or(0, Vec::len) as u64)
                )))
            }
            Some(h) if *h != claims.head => {
                return Err(bad(
                    "the chain's record there is not the one it signed".into()
                ))
            }
            Some(_) => {}
        }
        let e = checkpointed.entry(c.writer.as_str()).or_insert(0);
        *e = (*e).max(c.seq);
    }
    // The CA writes a checkpoint in the same transaction as each writer's record 1 and every
    // CHECKPOINT_EVERY-th record (CA-API.md 4.2): one missing at record 1 means the chain was
    // made up in the database (nobody with the audit key started it); one missing further on
    // was deleted, and with it the protection of the records it covered.
    let signed: HashSet<(&str, u64)> = snap
        .checkpoints
        .iter()
        .map(|c| (c.writer.as_str(), c.seq))
        .collect();
    for (writer, (n, _, _)) in &chains {
        // After a base, from the first required one past it (the base is signed itself).
        let mut seq = match base_of(writer) {
            0 => 1,
            b => (b / CHECKPOINT_EVERY)
                .saturating_add(1)
                .saturating_mul(CHECKPOINT_EVERY),
        };
        while seq <= *n {
            if !signed.contains(&(*writer, seq)) {
                return Err(AuditBreak::Checkpoint {
                    writer: (*writer).to_owned(),
                    seq,
                    reason: if seq == 1 {
                        "missing: the CA signs one with every writer's first record, so this \
                         chain was not started by a CA holding the audit key (it was written \
                         into the store directly)"
                            .to_owned()
                    } else {
                        format!(
                            "missing: the CA signs one with every {CHECKPOINT_EVERY}th record, \
                             so it was removed (the records up to it are no longer protected)"
                        )
                    },
                });
            }
            seq = if seq == 1 {
                CHECKPOINT_EVERY
            } else {
                seq.saturating_add(CHECKPOINT_EVERY)
            };
        }
    }
    for s in &snap.audited_serials {
        if !issued.contains_key(s) {
            return Err(AuditBreak::MissingIssuance { serial: s.clone() });
        }
    }
    // The other direction: an `ok` issuance record is written in the transaction that stores
    // its certificate, so one whose serial the store does not hold was made up (or its
    // certificate row deleted).
    let stored: HashSet<&str> = snap.audited_serials.iter().map(String::as_str).collect();
    if let Some((serial, (writer, seq))) = issued.iter().find(|(s, _)| !stored.contains(s.as_str()))
    {
        return Err(AuditBreak::Record {
            writer: writer.clone(),
            seq: *seq,
            reason: format!(
                "an ok issuance of serial {serial:?}, which the store has no certificate for \
                 (the record was made up, or the certificate's row deleted)"
            ),
        });
    }
    // Likewise an `ok` revocation record is written in the transaction that stores its
    // revocation, with the entry's `exp` then; the CA never deletes an entry nor lowers its
    // `exp`. One whose entry the store no longer holds, or holds ending earlier, had it
    // deleted or cut short, which undoes the revocation (the lists leave it out, and without
    // the row the CA issues to the target again).
    let held: BTreeMap<&str, u64> = snap
        .revocations
        .iter()
        .map(|(s, exp)| (s.as_str(), *exp))
        .collect();
    // The same for the revocations of pruned records, which their chain's base signs (a
    // break of the base, the records being gone).
    let pruned_revocations = snap
        .base_revocations
        .iter()
        .filter_map(|(w, subject, exp)| {
            let (seq, _) = bases.get(w.as_str())?;
            Some((subject.clone(), Some(*exp), w.clone(), *seq, true))
        });
    let recorded = revoked
        .iter()
        .map(|(subject, exp, w, seq)| (subject.clone(), *exp, w.clone(), *seq, false));
    for (subject, exp, writer, seq, pruned) in recorded.chain(pruned_revocations) {
        let bad = |what: &str| {
            let reason = format!(
                "an ok revocation of {subject:?}{}, which the store {what}, which undoes the \
                 revocation",
                if pruned { " (its record pruned)" } else { "" }
            );
            let writer = writer.clone();
            if pruned {
                AuditBreak::Base {
                    writer,
                    seq,
                    reason,
                }
            } else {
                AuditBreak::Record {
                    writer,
                    seq,
                    reason,
                }
            }
        };
        match (held.get(subject.as_str()), exp) {
            (None, _) => return Err(bad("no longer holds (its row was deleted)")),
            (Some(now), Some(then)) if *now < then => {
                return Err(bad(&format!(
                    "holds ending at {now}, before the {then} it ended at when recorded (its \
                     exp was lowered)"
                )))
            }
            _ => {}
        }
    }
    let mut anchors_pruned = 0u64;
    for a in anchors {
        let bad = |reason: String| AuditBreak::Anchor {
            writer: a.writer.clone(),
            seq: a.seq,
            reason,
        };
        if let Some((seq, head)) = bases.get(a.writer.as_str()).copied() {
            if a.seq == seq && a.hash != head {
                return Err(bad(
                    "the chain's signed base names another record there: the record known is \
                     another CA's (give a file kept from this CA), or whoever pruned the chain \
                     held this CA's audit.key"
                        .to_owned(),
                ));
            }
            if a.seq <= seq {
                // Exported and pruned, as the base signed by the audit key says.
                anchors_pruned += 1;
                continue;
            }
        }
        let Some((n, _, hashes)) = chains.get(a.writer.as_str()) else {
            return Err(bad(
                "the store holds no record of this chain: the chain was deleted from the store, \
                 with its checkpoints"
                    .to_owned(),
            ));
        };
        let first = base_of(&a.writer);
        let at = a
            .seq
            .checked_sub(first.saturating_add(1))
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|i| hashes.get(i));
        match at {
            None => {
                return Err(bad(format!(
                    "the store holds {n} records of this chain: records were deleted after \
                     record {n}"
                )))
            }
            // Covered by a checkpoint this CA's audit key signed (verified above): the store's
            // record is this CA's unless that key was used to rewrite it, so the record known
            // may as well come from another CA (a file kept from another CA's store).
            Some(h)
                if *h != a.hash
                    && checkpointed.get(a.writer.as_str()).copied().unwrap_or(0) >= a.seq =>
            {
                return Err(bad(
                    "the store's record there is not the one known, and a checkpoint this CA's \
                     audit key signed covers the store's: the record known is another CA's (the \
                     file was kept from another CA's store: give one kept from this CA), or \
                     whoever rewrote the chain held this CA's audit.key"
                        .to_owned(),
                ))
            }
            Some(h) if *h != a.hash => {
                return Err(bad(
                    "the store's record there is not the one known: it was rewritten (with the \
                     chain's records after it, and their checkpoints)"
                        .to_owned(),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(VerifyReport {
        chains: chains
            .into_iter()
            .map(|(w, (n, head, _))| ChainSummary {
                writer: w.to_owned(),
                records: n,
                head,
                checkpointed: checkpointed.get(w).copied().unwrap_or(0),
                pruned: base_of(w),
            })
            .collect(),
        checkpoints: snap.checkpoints.len() as u64,
        issuances: snap.audited_serials.len() as u64,
        anchors: anchors.len() as u64,
        anchors_pruned,
    })
}

/// `audit::PrunePlan` as it was (the library's no longer holds the serials: each batch of a
/// prune reads them from the records it deletes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunePlan {
    pub writer: String,
    pub seq: u64,
    pub head: String,
    pub from: u64,
    pub serials: Vec<String>,
    pub revocations: Vec<(String, u64)>,
    pub steps: Vec<PruneStep>,
}

pub fn plan_prune(
    snap: &AuditSnapshot,
    cutoff: u64,
    retained_until: &mut dyn FnMut(&str) -> Result<Option<u64>>,
) -> Result<Vec<PrunePlan>> {
    let signed: HashSet<(&str, u64)> = snap
        .checkpoints
        .iter()
        .map(|c| (c.writer.as_str(), c.seq))
        .collect();
    let bases: BTreeMap<&str, u64> = snap
        .bases
        .iter()
        .map(|b| (b.writer.as_str(), b.seq))
        .collect();
    // Each revocation's `exp` as the store holds it, by subject (`kind:value`).
    let revocations: BTreeMap<&str, u64> = snap
        .revocations
        .iter()
        .map(|(s, exp)| (s.as_str(), *exp))
        .collect();
    let mut by_writer: BTreeMap<&str, Vec<&AuditRecord>> = BTreeMap::new();
    for r in &snap.records {
        by_writer.entry(r.writer.as_str()).or_default().push(r);
    }
    let mut plans = Vec::new();
    for (writer, mut records) in by_writer {
        records.sort_by_key(|r| r.seq);
        let Some(last) = records.last().map(|r| r.seq) else {
            continue;
        };
        let mut serials = Vec::new();
        let mut revoked: Vec<(String, u64)> = Vec::new();
        let mut cut: Option<(u64, &str, usize, usize)> = None;
        for r in records {
            if r.seq >= last || r.ts >= cutoff {
                break;
            }
            let body: RecordBody = serde_json::from_str(&r.body).map_err(|e| {
                CaError::Store(format!(
                    "audit record {} of {:?} is not a record: {e}",
                    r.seq, r.writer
                ))
            })?;
            let ev = &body.event;
            if ev.kind.starts_with("issue.") && ev.outcome == "ok" {
                if let Some(serial) = &ev.serial {
                    match retained_until(serial)? {
                        Some(until) if until < cutoff => serials.push(serial.clone()),
                        _ => break,
                    }
                }
            }
            // An `ok` revocation record is what makes its entry's row deleted or its `exp`
            // lowered a break (verify): it stays while the entry is in force.
            if ev.kind == "revoke" && ev.outcome == "ok" {
                let held = ev
                    .subject
                    .as_deref()
                    .and_then(|s| revocations.get(s).copied());
                match held.max(ev.exp) {
                    Some(exp) if exp < cutoff => {}
                    _ => break,
                }
                if let Some(subject) = &ev.subject {
                    revoked.push((subject.clone(), ev.exp.unwrap_or(0)));
                }
            }
            if signed.contains(&(writer, r.seq)) {
                cut = Some((r.seq, r.hash.as_str(), serials.len(), revoked.len()));
            }
        }
        if let Some((seq, head, n, m)) = cut {
            serials.truncate(n);
            revoked.truncate(m);
            plans.push(PrunePlan {
                writer: writer.to_owned(),
                seq,
                head: head.to_owned(),
                from: bases.get(writer).copied().unwrap_or(0),
                serials,
                revocations: revoked,
                // Not the old planner's (prunes in batches came later): compared without.
                steps: Vec::new(),
            });
        }
    }
    Ok(plans)
}

/// That a checkpoint or base whose signature verified (`claims`) names trust domain `iss` and
/// signs its stored columns: `iat` too, since the CA reads the column to decide when the next
/// timed checkpoint is due.
fn signs_its_columns(
    stored: &CheckpointRecord,
    claims: &CheckpointClaims,
    iss: &str,
) -> core::result::Result<(), String> {
    if claims.iss != iss {
        return Err(format!("signed for {:?}, not {iss:?}", claims.iss));
    }
    if claims.writer != stored.writer
        || claims.seq != stored.seq
        || claims.head != stored.head
        || claims.iat != stored.iat
    {
        return Err("its columns differ from what it signs".into());
    }
    Ok(())
}
