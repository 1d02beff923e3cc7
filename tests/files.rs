//! `agentid::files::CredentialDir`: what it loads from a credential directory written as
//! `agentid cert issue` writes it, and each thing it refuses before any connection is made.
#![cfg(test)]

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use agentid::files::{CredentialDir, FilesError};
use support::*;

/// Expected outcome of loading a directory.
#[derive(Debug)]
enum Expect {
    /// Loaded; the chain came from this file (or there is none) with this depth.
    Loaded(Option<(&'static str, usize)>),
    /// Refused, naming this file, with this text in the reason.
    Invalid(&'static str, &'static str),
    /// A file is missing.
    Missing(&'static str),
    /// Refused: this entry (a file, or the directory itself when empty) is not held by the
    /// reader, with this reason.
    NotHeld(&'static str, &'static str),
}

#[test]
fn credential_directory_table() {
    let a = TestCa::new("example.org");
    let impostor = TestCa::new("example.org");
    let planner = a.open_task("planner", "repo:read repo:write", 1, None);
    let mut coder = a.child(&planner, "coder");
    planner.delegate(&mut coder, "repo:read");
    let search = a.service("search");
    let auditor = a.open_task("auditor", "repo:read", 0, None);
    let bundle = a.bundle();
    let tmp = tempfile::tempdir().unwrap();

    type Setup<'a> = Box<dyn Fn(&Path) + 'a>;
    // (name, how the directory is made, expectation)
    let cases: Vec<(&str, Setup, Expect)> = vec![
        (
            "grant holder: grant.jwt",
            Box::new(|d| planner.write_dir(d, &bundle)),
            Expect::Loaded(Some(("grant.jwt", 0))),
        ),
        (
            "delegatee: chain.jwt",
            Box::new(|d| coder.write_dir(d, &bundle)),
            Expect::Loaded(Some(("chain.jwt", 1))),
        ),
        (
            "chain.jwt preferred over grant.jwt",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                std::fs::write(
                    d.join("grant.jwt"),
                    planner.chain.as_ref().unwrap().as_str(),
                )
                .unwrap();
            }),
            Expect::Loaded(Some(("chain.jwt", 1))),
        ),
        (
            "service: no chain",
            Box::new(|d| search.write_dir(d, &bundle)),
            Expect::Loaded(None),
        ),
        (
            "key of another agent",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                std::fs::remove_file(d.join("key.pem")).unwrap();
                auditor
                    .presenting(None)
                    .write_dir(&d.join("other"), &bundle);
                std::fs::rename(d.join("other/key.pem"), d.join("key.pem")).unwrap();
            }),
            Expect::Invalid("key.pem", "does not hold the key certified"),
        ),
        (
            "key readable by others",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(d.join("key.pem"), std::fs::Permissions::from_mode(0o640))
                    .unwrap();
            }),
            Expect::Invalid("key.pem", "chmod 600"),
        ),
        (
            "bundle of another CA for the same trust domain",
            Box::new(|d| coder.write_dir(d, &impostor.bundle())),
            Expect::Invalid("cert.pem", "does not validate"),
        ),
        (
            "chain held by another identity",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                std::fs::write(
                    d.join("chain.jwt"),
                    planner.chain.as_ref().unwrap().as_str(),
                )
                .unwrap();
            }),
            Expect::Invalid("chain.jwt", "is held by"),
        ),
        (
            "chain that is not a chain",
            Box::new(|d| {
                planner.write_dir(d, &bundle);
                std::fs::write(d.join("grant.jwt"), "not.a~~chain").unwrap();
            }),
            Expect::Invalid("grant.jwt", "not a chain"),
        ),
        (
            "bundle that is not a bundle",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                std::fs::write(d.join("bundle.json"), "{\"keys\": 1}").unwrap();
            }),
            Expect::Invalid("bundle.json", "not a SPIFFE bundle"),
        ),
        (
            "certificate file without a certificate",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                std::fs::write(d.join("cert.pem"), "nothing here\n").unwrap();
            }),
            Expect::Invalid("cert.pem", "no CERTIFICATE"),
        ),
        (
            "bundle others can write",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    d.join("bundle.json"),
                    std::fs::Permissions::from_mode(0o666),
                )
                .unwrap();
            }),
            Expect::NotHeld("bundle.json", "has mode 666"),
        ),
        (
            "directory others can write",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o775)).unwrap();
            }),
            Expect::NotHeld("", "chmod go-w"),
        ),
        (
            "no key",
            Box::new(|d| {
                coder.write_dir(d, &bundle);
                std::fs::remove_file(d.join("key.pem")).unwrap();
            }),
            Expect::Missing("key.pem"),
        ),
    ];
    for (i, (name, setup, expect)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(i.to_string());
        setup(&dir);
        let loaded = CredentialDir::load(&dir);
        match (&expect, &loaded) {
            (Expect::Loaded(chain), Ok(d)) => {
                let got = d
                    .chain_file
                    .as_ref()
                    .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned());
                assert_eq!(got.as_deref(), chain.map(|c| c.0), "{name}");
                assert_eq!(
                    d.chain.as_ref().map(|c| c.depth()),
                    chain.map(|c| c.1),
                    "{name}"
                );
                // The transport accepts what was loaded, with and without the chain.
                let c = d.credential_with_chain().unwrap();
                assert_eq!(c.identity(), &d.identity, "{name}");
                assert_eq!(c.chain().is_some(), chain.is_some(), "{name}");
                assert!(d.credential().unwrap().chain().is_none(), "{name}");
            }
            (Expect::Invalid(file, reason), Err(FilesError::Invalid { path, reason: got })) => {
                assert!(path.ends_with(file), "{name}: blamed {}", path.display());
                assert!(got.contains(reason), "{name}: reason {got:?}");
            }
            (Expect::Missing(file), Err(FilesError::Io { path, .. })) => {
                assert!(path.ends_with(file), "{name}")
            }
            (Expect::NotHeld(file, reason), Err(FilesError::NotHeld(e))) => {
                assert_eq!(e.path(), dir.join(file), "{name}: {e}");
                assert!(e.to_string().contains(reason), "{name}: {e}");
            }
            (_, other) => panic!("{name}: expected {expect:?}, got {other:?}"),
        }
    }
}

#[test]
fn an_expired_certificate_is_refused_at_load_time() {
    let a = TestCa::new("example.org");
    let planner = a.open_task("planner", "repo:read", 0, Some(Duration::from_secs(2)));
    let tmp = tempfile::tempdir().unwrap();
    planner.write_dir(tmp.path(), &a.bundle());
    assert!(CredentialDir::load(tmp.path()).is_ok());
    // The same files, an hour later (time is a parameter: no waiting).
    let later = SystemTime::now() + Duration::from_secs(3600);
    match CredentialDir::load_at(tmp.path(), later) {
        Err(FilesError::Invalid { path, reason }) => {
            assert!(path.ends_with("cert.pem"), "{}", path.display());
            assert!(reason.contains("expired"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// `Holder::load` (what `agentid cert renew` and `cert issue --parent` start from) checks that
/// the key is the certified one and the key file is private; it reads no bundle and takes no
/// time (renewing an expired certificate starts here). `read_chain` prefers `chain.jwt` to
/// `grant.jwt`.
#[test]
fn holder_and_chain_without_time_or_bundle() {
    use agentid::files::{read_chain, Holder, BUNDLE_FILE, CHAIN_FILE, GRANT_FILE, KEY_FILE};
    use std::os::unix::fs::PermissionsExt;

    let a = TestCa::new("example.org");
    let planner = a.open_task("planner", "repo:read", 1, None);
    let mut coder = a.child(&planner, "coder");
    planner.delegate(&mut coder, "repo:read");
    let tmp = tempfile::tempdir().unwrap();

    let p = tmp.path().join("planner");
    planner.write_dir(&p, &a.bundle());
    std::fs::remove_file(p.join(BUNDLE_FILE)).unwrap();
    let holder = Holder::load(&p).unwrap();
    assert_eq!(holder.leaf.id, planner.id);
    assert_eq!(holder.key().public_key(), &holder.leaf.public_key);
    let (file, chain) = read_chain(&p).unwrap().unwrap();
    assert!(file.ends_with(GRANT_FILE));
    assert_eq!(chain.depth(), 0);

    let c = tmp.path().join("coder");
    coder.write_dir(&c, &a.bundle());
    std::fs::write(c.join(GRANT_FILE), planner.chain.as_ref().unwrap().as_str()).unwrap();
    let (file, chain) = read_chain(&c).unwrap().unwrap();
    assert!(file.ends_with(CHAIN_FILE));
    assert_eq!(chain.depth(), 1);

    // The same key file made readable by the group: refused, naming the file and the fix.
    std::fs::set_permissions(p.join(KEY_FILE), std::fs::Permissions::from_mode(0o640)).unwrap();
    match Holder::load(&p) {
        Err(FilesError::Invalid { path, reason }) => {
            assert!(path.ends_with(KEY_FILE), "{}", path.display());
            assert!(reason.contains("chmod 600"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Another holder's key: refused.
    std::fs::remove_file(p.join(KEY_FILE)).unwrap();
    std::fs::copy(c.join(KEY_FILE), p.join(KEY_FILE)).unwrap();
    std::fs::set_permissions(p.join(KEY_FILE), std::fs::Permissions::from_mode(0o600)).unwrap();
    match Holder::load(&p) {
        Err(FilesError::Invalid { path, reason }) => {
            assert!(path.ends_with(KEY_FILE), "{}", path.display());
            assert!(
                reason.contains("does not hold the key certified"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // No directory at all: an I/O error naming the certificate.
    assert!(matches!(
        Holder::load(&tmp.path().join("absent")),
        Err(FilesError::Io { .. })
    ));
}

/// A chain is bound to a key (`cnf`), not only to a name: a `chain.jwt` that names this
/// certificate's identity but binds another key fails possession (rule 7.1,
/// `possession_mismatch`) at every peer, so loading refuses it, naming the file, before any
/// connection is made (as it refuses a `key.pem` the certificate does not certify).
#[test]
fn a_chain_bound_to_another_key_is_refused_at_load_time() {
    use agentid::protocol::{Algorithm, LinkBuilder, TaskKey};

    let a = TestCa::new("example.org");
    let planner = a.open_task("planner", "repo:read", 1, None);
    let coder = a.child(&planner, "coder");
    // The planner hands `repo:read` to the coder's identity, bound to a key the coder's
    // certificate does not certify (a stale or mistyped key: the delegator names any key).
    let other = TaskKey::generate(Algorithm::Ed25519).unwrap();
    let t = now();
    let chain = LinkBuilder::new(
        planner.chain.as_ref().unwrap(),
        &coder.task_identity(),
        other.public_key(),
        scope("repo:read"),
    )
    .validity(t, t, t + 300)
    .sign(&planner.key())
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    coder
        .presenting(Some(chain))
        .write_dir(tmp.path(), &a.bundle());
    match CredentialDir::load(tmp.path()) {
        Err(FilesError::Invalid { path, reason }) => {
            assert!(path.ends_with("chain.jwt"), "{}", path.display());
            assert!(reason.contains("key"), "{reason}");
        }
        other => panic!("a chain bound to another key was loaded: {other:?}"),
    }
}

/// `read_token_file` loads a revocation list (what the examples' `--revocations FILE` reads),
/// `chain.jwt` or `grant.jwt`: trust input, read only if held as a credential directory's
/// files are. Whoever could write the file, or a directory on the way to it, could put back an
/// older list, genuinely signed, and hide the revocations made since.
#[test]
fn a_token_file_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("lists");
    std::fs::create_dir(&dir).unwrap();
    set(&dir, 0o755);
    let file = dir.join("rev.jwt");
    std::fs::write(&file, "aaa.bbb.ccc\n").unwrap();
    set(&file, 0o644);
    assert_eq!(
        agentid::files::read_token_file(&file).unwrap(),
        "aaa.bbb.ccc"
    );
    for (entry, mode) in [(&dir, 0o777), (&file, 0o666), (&file, 0o646)] {
        let before = std::fs::metadata(entry).unwrap().permissions().mode() & 0o7777;
        set(entry, mode);
        match agentid::files::read_token_file(&file) {
            Err(FilesError::NotHeld(e)) => {
                assert_eq!(e.path(), entry.as_path(), "{e}");
                assert!(
                    e.to_string()
                        .contains(&format!("chmod go-w {}", entry.display())),
                    "{e}"
                );
            }
            other => panic!("{} at {mode:03o}: read {other:?}", entry.display()),
        }
        set(entry, before);
    }
    assert_eq!(
        agentid::files::read_token_file(&file).unwrap(),
        "aaa.bbb.ccc"
    );
}
