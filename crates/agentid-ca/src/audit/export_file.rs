//! An `agentid audit export` kept in a file, compared with the store's records as they pass
//! rather than held in memory (CA-API.md 4.3): a day's export at a million identities is
//! tens of millions of records, and what verification holds must not grow with them.
//!
//! The file is read twice. The first pass ([`ExportFile::open`]) checks every line as
//! [`super::read_anchors`] does (each record's body hashes to its hash; the fields are read
//! from the hashed body) and keeps, per writer, where its records stand in the file: the
//! stretches of consecutive record lines ("runs", two less than [`MERGE_GAP`] bytes apart
//! kept as one, so that a file whose writers' records alternate keeps one a writer) and
//! nothing of the records themselves. Then,
//! while the store streams a writer's records, that writer's lines are read again from the
//! file, one beside each record ([`ExportFile::next`]), checked again, compared and dropped.
//!
//! This needs each writer's records in the file by increasing number, as `agentid audit
//! export` writes them (several runs per writer are fine: exports of consecutive periods
//! concatenated). A file in any other order is read into memory instead, as before
//! ([`super::read_anchors`]).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use std::borrow::Cow;

use super::{anchor_of_export_line, read_line, Against, MAX_ANCHOR_LINE};

/// What [`ExportFile::next`] reads of a line the first pass checked.
#[derive(serde::Deserialize)]
struct Reread<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    body: Cow<'a, str>,
    #[serde(default, borrow)]
    hash: Cow<'a, str>,
}

/// Where a record's hashed body places it.
#[derive(serde::Deserialize)]
struct Place<'a> {
    #[serde(borrow)]
    writer: Cow<'a, str>,
    seq: u64,
}

/// A writer's stretch of record lines in the file (lines of other kinds may lie between
/// them, and other writers' records when two stretches less than [`MERGE_GAP`] bytes apart
/// were made one: read again, those are skipped).
#[derive(Clone, Copy, Debug)]
struct Run {
    /// The byte offset of its first record line.
    offset: u64,
    /// That line's number (from 1).
    line: u64,
    /// Its record lines (the writer's).
    records: u64,
    /// The byte offset past its last record line.
    end: u64,
}

/// A writer's stretch of records that starts at most this many bytes after its previous one
/// ends is kept as part of it ([`Run`]): what the first pass keeps does not grow with the
/// records of a file whose writers' records alternate (exports of several CA processes merged
/// by time), at the cost of reading the other writers' lines between them once more per
/// writer. A writer's stretches are then at most one per this many bytes of the file.
const MERGE_GAP: u64 = 1024 * 1024;

/// Adds `run` to `writer`'s runs, as part of its last one when it starts at most
/// [`MERGE_GAP`] bytes after that one ends.
fn push_run(runs: &mut HashMap<String, Vec<Run>>, writer: String, run: Run) {
    let list = runs.entry(writer).or_default();
    match list.last_mut() {
        Some(last) if run.offset.saturating_sub(last.end) <= MERGE_GAP => {
            last.records = last.records.saturating_add(run.records);
            last.end = run.end;
        }
        _ => list.push(run),
    }
}

/// Where a writer's reading of the file stands ([`ExportFile::next`]).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Cursor {
    /// The next run to start.
    run: usize,
    /// The next line's byte offset and number, in the current run.
    offset: u64,
    line: u64,
    /// Record lines left in the current run.
    left: u64,
    /// The last record number read.
    last: Option<u64>,
}

/// A record read again from the file ([`ExportFile::next`]).
#[derive(Debug)]
pub(super) struct Known {
    /// The record's number.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// Its line in the file: the order in which breaks are reported.
    pub line: u64,
}

/// What an [`ExportFile`] reads: a file, or any other source it can seek in.
trait ReadSeek: Read + Seek + Send {}

impl<T: Read + Seek + Send> ReadSeek for T {}

/// An `agentid audit export` in a file, indexed by writer ([`ExportFile::open`]).
pub struct ExportFile {
    reader: std::io::BufReader<Box<dyn ReadSeek>>,
    /// The reader's position in the file.
    pos: u64,
    /// writer -> its runs, in file order.
    runs: HashMap<String, Vec<Run>>,
    /// The record lines in the file.
    records: u64,
    /// [`Self::next`]'s line buffer.
    line: Vec<u8>,
}

impl core::fmt::Debug for ExportFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ExportFile")
            .field("writers", &self.runs.len())
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl ExportFile {
    /// Reads `file` once, checking every line as [`super::read_anchors`] does (with
    /// `reports`; as [`super::read_export`] does without), and keeps where each writer's
    /// records stand: [`Against::Export`]. A report, or an export in another order than
    /// `agentid audit export` writes, is read into memory instead ([`Against::Listed`]). The
    /// error says what is wrong with the file (the line number for an export).
    ///
    /// `file` is the export's file, or any other source read from its start that can be
    /// sought in (the fuzz target reads bytes in memory).
    pub fn open(
        file: impl Read + Seek + Send + 'static,
        reports: bool,
    ) -> core::result::Result<Against<'static>, String> {
        let source: Box<dyn ReadSeek> = Box::new(file);
        let mut reader = std::io::BufReader::new(source);
        let mut runs: HashMap<String, Vec<Run>> = HashMap::new();
        // writer -> the last record number read; the run being read.
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut current: Option<(String, Run)> = None;
        let (mut records, mut number, mut offset) = (0u64, 0u64, 0u64);
        let mut in_order = true;
        let mut line = Vec::new();
        loop {
            let n = read_line(&mut reader, &mut line).map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                break;
            }
            number += 1;
            let at = offset;
            offset = offset.saturating_add(n as u64);
            if number == 1 && !super::is_export_line(&line) {
                // A report (or not an export at all): read whole, as before, for its
                // errors.
                return Self::listed(reader, reports);
            }
            if line.len() as u64 > MAX_ANCHOR_LINE {
                return Err(format!(
                    "line {number}: longer than {MAX_ANCHOR_LINE} bytes"
                ));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some(a) =
                anchor_of_export_line(&line).map_err(|e| format!("line {number}: {e}"))?
            else {
                continue;
            };
            records += 1;
            if let Some((writer, run)) = current.as_mut() {
                if *writer == a.writer && last.get(&a.writer).is_some_and(|l| *l < a.seq) {
                    run.records += 1;
                    run.end = offset;
                    last.insert(a.writer, a.seq);
                    continue;
                }
            }
            if let Some((writer, run)) = current.take() {
                push_run(&mut runs, writer, run);
            }
            // A writer's records by increasing number across the file, or it is not read
            // beside the store.
            if last.get(&a.writer).is_some_and(|l| *l >= a.seq) {
                in_order = false;
            }
            last.insert(a.writer.clone(), a.seq);
            current = Some((
                a.writer,
                Run {
                    offset: at,
                    line: number,
                    records: 1,
                    end: offset,
                },
            ));
        }
        if let Some((writer, run)) = current.take() {
            push_run(&mut runs, writer, run);
        }
        if number == 0 {
            // Empty: read_anchors says what that means.
            return Self::listed(reader, reports);
        }
        if records == 0 {
            return Err("an export without records: nothing to compare the store with".to_owned());
        }
        if !in_order {
            return Self::listed(reader, reports);
        }
        Ok(Against::Export(ExportFile {
            reader,
            pos: offset,
            runs,
            records,
            line: Vec::new(),
        }))
    }

    /// The whole file read into memory by [`super::read_anchors`] (or [`super::read_export`]).
    fn listed(
        mut reader: std::io::BufReader<Box<dyn ReadSeek>>,
        reports: bool,
    ) -> core::result::Result<Against<'static>, String> {
        reader
            .seek(SeekFrom::Start(0))
            .map_err(|e| format!("reading: {e}"))?;
        let read = if reports {
            super::read_anchors(reader)
        } else {
            super::read_export(reader)
        };
        read.map(|anchors| Against::Listed(Cow::Owned(anchors)))
    }

    /// The record lines in the file.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The writers the file holds records of.
    pub(super) fn writers(&self) -> impl Iterator<Item = &String> {
        self.runs.keys()
    }

    /// Test hook of the `audit_export` fuzz target (not an API: it may change or go):
    /// `writer`'s records as the second pass reads them ([`Self::next`] from the first),
    /// each as (number, hash, line).
    #[doc(hidden)]
    pub fn read_writer(&mut self, writer: &str) -> crate::Result<Vec<(u64, String, u64)>> {
        let mut cursor = Cursor::default();
        let mut read = Vec::new();
        while let Some(k) = self.next(writer, &mut cursor)? {
            read.push((k.seq, k.hash, k.line));
        }
        Ok(read)
    }

    /// `writer`'s next record in the file after `cursor` (by increasing number), read and
    /// checked again; `None` past its last. A line that is no longer what the first pass
    /// read is an error: the file changed while it was read.
    pub(super) fn next(
        &mut self,
        writer: &str,
        cursor: &mut Cursor,
    ) -> crate::Result<Option<Known>> {
        let mut line = std::mem::take(&mut self.line);
        let read = self.read_next(writer, cursor, &mut line);
        self.line = line;
        read
    }

    /// [`Self::next`] with `line` as its buffer.
    fn read_next(
        &mut self,
        writer: &str,
        cursor: &mut Cursor,
        line: &mut Vec<u8>,
    ) -> crate::Result<Option<Known>> {
        let changed = |what: &str| {
            crate::CaError::Store(format!(
                "the export changed while it was read ({what}): keep it unchanged while the \
                 store is compared with it"
            ))
        };
        let Some(runs) = self.runs.get(writer) else {
            return Ok(None);
        };
        loop {
            if cursor.left == 0 {
                let Some(run) = runs.get(cursor.run) else {
                    return Ok(None);
                };
                cursor.run += 1;
                cursor.offset = run.offset;
                cursor.line = run.line;
                cursor.left = run.records;
            }
            if self.pos != cursor.offset {
                self.reader
                    .seek(SeekFrom::Start(cursor.offset))
                    .map_err(|e| crate::CaError::Store(format!("reading the export: {e}")))?;
                self.pos = cursor.offset;
            }
            let n = read_line(&mut self.reader, line)
                .map_err(|e| crate::CaError::Store(format!("reading the export: {e}")))?;
            if n == 0 {
                return Err(changed("it is shorter"));
            }
            if line.len() as u64 > MAX_ANCHOR_LINE {
                return Err(changed("a line grew"));
            }
            let number = cursor.line;
            self.pos = self.pos.saturating_add(n as u64);
            cursor.offset = self.pos;
            cursor.line += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // The first pass checked the line whole; this one reads what the comparison
            // needs, from the hashed body, and that the line still hashes (a third of the
            // work).
            let again: Reread<'_> = match serde_json::from_slice(line) {
                Ok(again) => again,
                // A checkpoint or base line whose unknown members (ignored by the first pass)
                // include a `body` or `hash` that is not a string, or twice: read whole.
                Err(e) => match anchor_of_export_line(line) {
                    Ok(None) => continue,
                    _ => return Err(changed(&format!("line {number}: {e}"))),
                },
            };
            if again.kind != "record" {
                continue;
            }
            let place: Place<'_> = serde_json::from_str(&again.body)
                .map_err(|e| changed(&format!("line {number}: {e}")))?;
            if place.writer != writer {
                // Another writer's, between two stretches of this one's made one (read for
                // that writer, not here).
                continue;
            }
            if super::record_hash(&again.body) != again.hash
                || cursor.last.is_some_and(|l| place.seq <= l)
            {
                return Err(changed(&format!("line {number}")));
            }
            cursor.left -= 1;
            cursor.last = Some(place.seq);
            return Ok(Some(Known {
                seq: place.seq,
                hash: again.hash.into_owned(),
                line: number,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{record_body, record_hash, AuditEvent, ExportLine, GENESIS};

    /// An export of `writers`, their records alternating line by line (as a file merged by
    /// time from several CA processes' exports holds them), `per` records each.
    fn alternating(writers: &[&str], per: u64) -> tempfile::NamedTempFile {
        let mut prev: HashMap<&str, String> = HashMap::new();
        let mut text = String::new();
        for seq in 1..=per {
            for w in writers {
                let ev = AuditEvent {
                    ts: 1_000 + seq,
                    kind: "list.publish".into(),
                    outcome: "ok".into(),
                    ..AuditEvent::default()
                };
                let p = prev.get(w).cloned().unwrap_or_else(|| GENESIS.to_owned());
                let body = record_body(w, seq, &p, &ev).unwrap();
                let hash = record_hash(&body);
                let line = ExportLine::Record {
                    body: Box::new(serde_json::from_str(&body).unwrap()),
                    text: body,
                    hash: hash.clone(),
                };
                text.push_str(&serde_json::to_string(&line).unwrap());
                text.push('\n');
                prev.insert(w, hash);
            }
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    /// A checkpoint or base line may carry members named `body` or `hash` that are not
    /// strings, or twice: the first pass ignores a checkpoint's unknown members, so the
    /// second must too, rather than take the file for changed (found by the `audit_export`
    /// fuzz target).
    #[test]
    fn other_lines_with_body_or_hash_members_are_read_again() {
        let f = alternating(&["a"], 2);
        let text = std::fs::read_to_string(f.path()).unwrap();
        let (one, two) = text.split_once('\n').unwrap();
        for extra in [
            r#""body":1,"#,
            r#""hash":[],"#,
            r#""body":"x","body":"y","#,
            r#""hash":null,"hash":{"a":1},"#,
        ] {
            for kind in ["checkpoint", "base"] {
                let other = format!(r#"{{{extra}"type":"{kind}","writer":"a","seq":1,"jws":"x"}}"#);
                let file = format!("{one}\n{other}\n{two}");
                let listed = super::super::read_anchors(file.as_bytes()).unwrap();
                assert_eq!(listed.len(), 2, "{other}");
                let Against::Export(mut read) =
                    ExportFile::open(std::io::Cursor::new(file.into_bytes()), true).unwrap()
                else {
                    panic!("read into memory");
                };
                let again = read
                    .read_writer("a")
                    .unwrap_or_else(|e| panic!("{other}: {e}"));
                let seqs: Vec<(u64, u64)> = again.iter().map(|r| (r.0, r.2)).collect();
                assert_eq!(seqs, [(1, 1), (2, 3)], "{other}");
                assert_eq!(again[0].1, listed[0].hash);
                assert_eq!(again[1].1, listed[1].hash);
            }
        }
    }

    /// What the first pass keeps does not grow with the records of a file whose writers'
    /// records alternate (one run a record would hold 24 bytes a record, and seek once a
    /// record), and each writer's records are still read back in order.
    #[test]
    fn alternating_writers_keep_one_run_each() {
        let writers = ["a", "b", "c"];
        let f = alternating(&writers, 200);
        let Against::Export(mut file) = ExportFile::open(f.reopen().unwrap(), false).unwrap()
        else {
            panic!("read into memory");
        };
        assert_eq!(file.records(), 600);
        for w in writers {
            let runs = file.runs.get(w).map_or(0, Vec::len);
            assert_eq!(runs, 1, "{w}: {runs} runs");
        }
        for w in writers {
            let mut cursor = Cursor::default();
            let mut seqs = Vec::new();
            while let Some(k) = file.next(w, &mut cursor).unwrap() {
                seqs.push(k.seq);
            }
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "{w}");
        }
    }
}
