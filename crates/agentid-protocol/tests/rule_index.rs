//! The rule index of the verifier's module docs (`src/verifier.rs`) stays in step with the spec
//! and the code: every numbered rule that spec/PROTOCOL.md gives in sections 10, 12, 13 and 14.1
//! has a row, and every function a row names exists.
#![cfg(test)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the spec from the heading that starts with `from` to the next one that starts
/// with `to`.
fn section<'a>(spec: &'a str, from: &str, to: &str) -> &'a str {
    let start = spec
        .find(&format!("\n{from}"))
        .unwrap_or_else(|| panic!("no heading {from:?}"));
    let end = spec[start + 1..]
        .find(&format!("\n{to}"))
        .map_or(spec.len(), |e| start + 1 + e);
    &spec[start..end]
}

fn is_rule_id(s: &str) -> bool {
    let numbered = s.split('.').count() >= 2
        && s.split('.')
            .all(|p| !p.is_empty() && (p.bytes().all(|b| b.is_ascii_digit()) || p.len() == 1))
        && s.starts_with(|c: char| c.is_ascii_digit());
    let lettered = s.len() >= 2
        && s.starts_with(['P', 'A', 'R'])
        && s[1..].bytes().all(|b| b.is_ascii_digit());
    numbered || lettered
}

/// The rule ids the spec writes in bold (`**4.6**`, `**3.a The verifying key.**`, `**P0 Input.**`).
fn spec_rules(text: &str) -> Vec<String> {
    text.split("**")
        .skip(1)
        .step_by(2)
        .filter_map(|bold| bold.split([' ', '*']).next())
        .filter(|id| is_rule_id(id))
        .map(str::to_owned)
        .collect()
}

/// Expands `4.1 to 4.11` and `P0 to P10` into every id of the range.
fn expand(from: &str, to: &str) -> Vec<String> {
    let split = |s: &str| -> (String, u32) {
        match s.rfind('.') {
            Some(i) => (s[..=i].to_owned(), s[i + 1..].parse().unwrap()),
            None => (s[..1].to_owned(), s[1..].parse().unwrap()),
        }
    };
    let ((prefix, a), (prefix_to, b)) = (split(from), split(to));
    assert_eq!(prefix, prefix_to, "range {from} to {to}");
    (a..=b).map(|n| format!("{prefix}{n}")).collect()
}

/// The rows of the index: (the ids of the rule column, the code names of the home column).
fn index_rows(docs: &str) -> Vec<(BTreeSet<String>, Vec<String>)> {
    docs.lines()
        .filter_map(|l| l.strip_prefix("//! |"))
        .filter(|l| !l.starts_with("---") && !l.starts_with(" spec/PROTOCOL.md"))
        .map(|row| {
            let cols: Vec<&str> = row.split(" | ").collect();
            assert!(cols.len() >= 3, "row {row:?}");
            let words: Vec<&str> = cols[1]
                .split(|c: char| c.is_whitespace() || "(),".contains(c))
                .filter(|w| !w.is_empty())
                .collect();
            let mut ids = BTreeSet::new();
            for (i, w) in words.iter().enumerate() {
                if is_rule_id(w) {
                    ids.insert((*w).to_owned());
                }
                if *w == "to" && i > 0 && i + 1 < words.len() {
                    let (from, to) = (words[i - 1], words[i + 1]);
                    if is_rule_id(from) && is_rule_id(to) {
                        ids.extend(expand(from, to));
                    }
                }
            }
            let names = cols[2]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (ids, names)
        })
        .collect()
}

#[test]
fn every_rule_of_the_spec_has_a_row_and_every_row_names_real_functions() {
    let spec = read(&crate_dir().join("../../spec/PROTOCOL.md"));
    let mut rules = Vec::new();
    for (from, to) in [
        ("## 10.", "## 11."),
        ("## 12.", "## 13."),
        ("## 13.", "## 14."),
        ("### 14.1", "### 14.2"),
    ] {
        rules.extend(spec_rules(section(&spec, from, to)));
    }
    assert!(
        rules.len() >= 80 && rules.iter().any(|r| r == "1.1") && rules.iter().any(|r| r == "R8"),
        "the spec's rules were not found: {rules:?}"
    );

    let docs = read(&crate_dir().join("src/verifier.rs"));
    let rows = index_rows(&docs);
    let indexed: BTreeSet<String> = rows.iter().flat_map(|(ids, _)| ids.clone()).collect();
    // A rule is indexed itself, or (a heading such as 3.a or 6.2) through its numbered parts.
    let missing: Vec<&String> = rules
        .iter()
        .filter(|r| {
            !indexed.contains(*r) && !indexed.iter().any(|i| i.starts_with(&format!("{r}.")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "rules with no row in the index: {missing:?}"
    );

    let mut sources = String::new();
    let mut dirs = vec![crate_dir().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&read(&path));
            }
        }
    }
    for (ids, names) in &rows {
        assert!(!names.is_empty(), "the row of {ids:?} names no function");
        for name in names {
            let last = name.rsplit("::").next().unwrap();
            let is_fn = last.starts_with(|c: char| c.is_ascii_lowercase())
                && last.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if is_fn {
                assert!(
                    sources.contains(&format!("fn {last}("))
                        || sources.contains(&format!("fn {last}<")),
                    "the index names `{name}` (row {ids:?}), but no such function exists"
                );
            }
        }
    }
}
