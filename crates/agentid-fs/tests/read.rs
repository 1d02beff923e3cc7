//! A credential directory is read only if the reader holds it: every entry from `/` to the file
//! owned by the reader or root (for root, also by the directory's owner), no directory on the
//! way writable by group or others unless sticky, the file not writable by them, and a regular
//! file (a FIFO is refused without blocking).
#![cfg(test)]

use std::fs;
use std::os::unix::fs::{chown, lchown, symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use agentid_fs::{
    check_held, read_handed, read_held, read_held_private_key, read_held_secret, write_private_key,
    FileKind, FsError, Unheld,
};

fn set_mode(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

/// A credential directory `base/name` (0700) holding `bundle.json` (0644) and `key.pem` (0600).
fn cred_dir(base: &Path, name: &str) -> std::path::PathBuf {
    let dir = base.join(name);
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o700);
    fs::write(dir.join("bundle.json"), b"{\"keys\":[]}").unwrap();
    set_mode(&dir.join("bundle.json"), 0o644);
    fs::write(dir.join("key.pem"), b"secret").unwrap();
    set_mode(&dir.join("key.pem"), 0o600);
    dir
}

/// The entry a refusal names, and why.
fn refused(e: &FsError) -> (&Path, Unheld) {
    match e {
        FsError::NotHeld { path, why, .. } => (path, *why),
        e => panic!("not a NotHeld refusal: {e}"),
    }
}

#[test]
fn a_directory_or_file_others_can_write_is_refused_on_read() {
    let base = tempfile::tempdir().unwrap();
    let dir = cred_dir(base.path(), "cred");
    let bundle = dir.join("bundle.json");
    assert_eq!(read_held(&bundle, 1024).unwrap(), b"{\"keys\":[]}");
    assert_eq!(
        read_held_secret(&dir.join("key.pem"), 1024).unwrap(),
        b"secret"
    );

    // The directory itself, group- or world-writable.
    for m in [0o770, 0o702, 0o777] {
        set_mode(&dir, m);
        let e = read_held(&bundle, 1024).unwrap_err();
        assert_eq!(
            refused(&e),
            (dir.as_path(), Unheld::OpenDir { mode: m }),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("chmod go-w {}", dir.display()))
                && text.contains(&bundle.display().to_string()),
            "{text}"
        );
        assert!(matches!(
            read_held_secret(&dir.join("key.pem"), 1024).unwrap_err(),
            FsError::NotHeld { .. }
        ));
    }
    set_mode(&dir, 0o700);

    // A directory above it that others can write: they could rename ours away.
    let shared = base.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let inner = cred_dir(&shared, "cred");
    set_mode(&shared, 0o777);
    let e = read_held(&inner.join("bundle.json"), 1024).unwrap_err();
    assert_eq!(refused(&e).0, shared.as_path(), "{e}");
    // Reached through `..`: the same directory.
    let dotted = inner.join("..").join("cred").join("bundle.json");
    assert_eq!(refused(&read_held(&dotted, 1024).unwrap_err()).0, shared);
    // With the sticky bit, as /tmp has: only we can rename our directory there.
    set_mode(&shared, 0o1777);
    read_held(&inner.join("bundle.json"), 1024).unwrap();

    // The file itself, writable by group or others.
    set_mode(&bundle, 0o664);
    let e = read_held(&bundle, 1024).unwrap_err();
    assert_eq!(
        refused(&e),
        (bundle.as_path(), Unheld::WritableFile { mode: 0o664 }),
        "{e}"
    );
    set_mode(&bundle, 0o644);

    // A link of ours, followed; one reached through a directory others can write, refused.
    let open = base.path().join("open");
    fs::create_dir(&open).unwrap();
    set_mode(&open, 0o777);
    symlink(&dir, open.join("link")).unwrap();
    let via = base.path().join("via");
    symlink(open.join("link"), &via).unwrap();
    let e = read_held(&via.join("bundle.json"), 1024).unwrap_err();
    assert_eq!(refused(&e).0, open.as_path(), "{e}");
    set_mode(&open, 0o755);
    read_held(&via.join("bundle.json"), 1024).unwrap();
    check_held(&via.join("bundle.json")).unwrap();

    // A secret that others can read is still refused as before.
    set_mode(&dir.join("key.pem"), 0o640);
    assert!(matches!(
        read_held_secret(&dir.join("key.pem"), 1024).unwrap_err(),
        FsError::InsecureMode { mode: 0o640, .. }
    ));
    // And a key read from a directory others can write, refused before it is parsed.
    fs::remove_file(dir.join("key.pem")).unwrap();
    write_private_key(&dir.join("key.pem"), &[0x30, 0x00]).unwrap();
    set_mode(&dir, 0o777);
    assert!(matches!(
        read_held_private_key(&dir.join("key.pem")).unwrap_err(),
        FsError::NotHeld { .. }
    ));
}

#[test]
fn a_fifo_in_a_credential_directory_is_refused_without_blocking() {
    let base = tempfile::tempdir().unwrap();
    let dir = cred_dir(base.path(), "cred");
    let bundle = dir.join("bundle.json");
    fs::remove_file(&bundle).unwrap();
    let status = Command::new("mkfifo").arg(&bundle).status().unwrap();
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let bundle = bundle.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_held(&bundle, 1024));
        });
    }
    let Ok(outcome) = rx.recv_timeout(std::time::Duration::from_secs(10)) else {
        // Let the blocked read go, then fail.
        let _ = fs::OpenOptions::new().write(true).open(&bundle);
        panic!("the read blocked on a FIFO");
    };
    assert!(
        matches!(
            outcome,
            Err(FsError::NotRegular {
                kind: FileKind::Fifo,
                ..
            })
        ),
        "{outcome:?}"
    );
}

/// Only root can give entries away: as root, a service user's directory (and its files and
/// links) is held, a third user's entry is not; the decision itself for other readers is in
/// the crate's unit tests.
#[test]
fn root_reads_a_service_users_directory_but_not_through_a_third_user() {
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("home");
    fs::create_dir(&home).unwrap();
    set_mode(&home, 0o755);
    let dir = cred_dir(&home, "svc");
    if chown(&home, Some(65534), Some(65534)).is_err() {
        return;
    }
    for p in [dir.clone(), dir.join("bundle.json"), dir.join("key.pem")] {
        chown(&p, Some(65534), Some(65534)).unwrap();
    }
    read_held(&dir.join("bundle.json"), 1024).unwrap();
    read_held_secret(&dir.join("key.pem"), 1024).unwrap();

    // A third user's file in it.
    chown(dir.join("bundle.json"), Some(65533), Some(65533)).unwrap();
    let e = read_held(&dir.join("bundle.json"), 1024).unwrap_err();
    assert_eq!(
        refused(&e),
        (
            dir.join("bundle.json").as_path(),
            Unheld::Owner { uid: 65533 }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("chown 65534"), "{e}");
    chown(dir.join("bundle.json"), Some(65534), Some(65534)).unwrap();

    // A third user's link in it.
    fs::rename(dir.join("bundle.json"), dir.join("real.json")).unwrap();
    symlink("real.json", dir.join("bundle.json")).unwrap();
    lchown(dir.join("bundle.json"), Some(65533), Some(65533)).unwrap();
    let e = read_held(&dir.join("bundle.json"), 1024).unwrap_err();
    assert_eq!(refused(&e).1, Unheld::Owner { uid: 65533 }, "{e}");
    lchown(dir.join("bundle.json"), Some(65534), Some(65534)).unwrap();
    read_held(&dir.join("bundle.json"), 1024).unwrap();

    // The service user's directory made in a directory others can write (as /tmp): anyone
    // could have made it there, or a link at its name (red team, credential reads: root read
    // `--cred /tmp/x` that another user created as that user's).
    let shared = base.path().join("shared");
    fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o1777);
    let planted = shared.join("x");
    fs::rename(&dir, &planted).unwrap();
    let e = read_held(&planted.join("real.json"), 1024).unwrap_err();
    assert_eq!(
        refused(&e),
        (planted.as_path(), Unheld::OwnerInSharedDir { uid: 65534 }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("outside directories others can write"),
        "{e}"
    );
    // A link there, owned by the service user, to its own directory elsewhere: the same.
    fs::rename(&planted, &dir).unwrap();
    symlink(&dir, &planted).unwrap();
    lchown(&planted, Some(65534), Some(65534)).unwrap();
    let e = read_held(&planted.join("real.json"), 1024).unwrap_err();
    assert_eq!(
        refused(&e),
        (planted.as_path(), Unheld::OwnerInSharedDir { uid: 65534 }),
        "{e}"
    );
    // Root's own entries there are still its own.
    lchown(&planted, Some(0), Some(0)).unwrap();
    read_held(&planted.join("real.json"), 1024).unwrap();

    // A third user's directory above it.
    chown(&home, Some(65533), Some(65533)).unwrap();
    let e = read_held(&dir.join("bundle.json"), 1024).unwrap_err();
    assert_eq!(
        refused(&e),
        (home.as_path(), Unheld::Owner { uid: 65533 }),
        "{e}"
    );
}

/// A file another user wrote and handed over (an agent's CSR) is read whoever owns it, but not
/// when others than its owners could have changed it: a directory on the way that group or
/// others can write without the sticky bit, or the file writable by them. The refusal names
/// the entry and the `chmod` to run.
#[test]
fn a_handed_over_file_is_refused_when_others_could_have_replaced_it() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("agent");
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o755);
    let csr = dir.join("req.csr");
    fs::write(&csr, b"request").unwrap();
    set_mode(&csr, 0o644);
    assert_eq!(read_handed(&csr, 1024).unwrap(), b"request");
    // Other users' directory and file (the agent that made the request, and whoever owns the
    // directory): read as written, where a held read refuses them. Only root can give a file
    // away.
    if chown(&dir, Some(65534), Some(65534)).is_ok() {
        chown(&csr, Some(65533), Some(65533)).unwrap();
        assert!(matches!(
            read_held(&csr, 1024).unwrap_err(),
            FsError::NotHeld { .. }
        ));
        assert_eq!(read_handed(&csr, 1024).unwrap(), b"request");
    }
    // Its directory (or one above) open to others: anyone could have put their own there.
    for (entry, m) in [
        (&dir, 0o777),
        (&dir, 0o775),
        (&base.path().to_path_buf(), 0o757),
    ] {
        let before = fs::metadata(entry).unwrap().permissions().mode() & 0o7777;
        set_mode(entry, m);
        let e = read_handed(&csr, 1024).unwrap_err();
        match &e {
            FsError::Changeable {
                path, file, why, ..
            } => {
                assert_eq!(
                    (path.as_path(), file.as_path(), *why),
                    (entry.as_path(), csr.as_path(), Unheld::OpenDir { mode: m }),
                    "{e}"
                );
            }
            e => panic!("not a Changeable refusal: {e}"),
        }
        let step = format!("run `chmod go-w {}`", entry.display());
        assert!(e.to_string().contains(&step), "{e}");
        assert_eq!(e.next_step().as_deref(), Some(step.as_str()));
        set_mode(entry, before);
    }
    // With the sticky bit (as /tmp): only an entry's owner can replace it there.
    set_mode(&dir, 0o1777);
    assert_eq!(read_handed(&csr, 1024).unwrap(), b"request");
    set_mode(&dir, 0o755);
    // The file itself, writable by group or others.
    for m in [0o664, 0o646] {
        set_mode(&csr, m);
        let e = read_handed(&csr, 1024).unwrap_err();
        assert!(
            matches!(
                &e,
                FsError::Changeable { path, why: Unheld::WritableFile { mode }, .. }
                    if path == &csr && *mode == m
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("chmod go-w {}", csr.display())),
            "{e}"
        );
    }
    set_mode(&csr, 0o644);
    // Through a link in a directory others can write: refused at that directory.
    let open = base.path().join("open");
    fs::create_dir(&open).unwrap();
    set_mode(&open, 0o777);
    symlink(&csr, open.join("req.csr")).unwrap();
    assert!(matches!(
        read_handed(&open.join("req.csr"), 1024).unwrap_err(),
        FsError::Changeable { path, .. } if path == open
    ));
    // A FIFO is refused without blocking, and the size is bounded.
    let fifo = dir.join("fifo.csr");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    assert!(matches!(
        read_handed(&fifo, 1024).unwrap_err(),
        FsError::NotRegular {
            kind: FileKind::Fifo,
            ..
        }
    ));
    assert!(matches!(
        read_handed(&csr, 3).unwrap_err(),
        FsError::TooLarge { limit: 3, .. }
    ));
}

/// A pipe named through `/proc/self/fd` (what `/dev/stdin` is when input is piped) ends at a
/// link to `pipe:[N]`, which names no entry: it is refused as the FIFO it is, by the held and
/// the handed reads alike, not as a missing `pipe:[N]`.
#[test]
fn a_pipe_named_through_proc_is_refused_as_a_fifo() {
    use std::os::fd::AsRawFd;
    let (reader, _writer) = std::io::pipe().unwrap();
    let path = Path::new("/proc/self/fd").join(reader.as_raw_fd().to_string());
    if !path.exists() {
        return;
    }
    for e in [
        read_held(&path, 1024).unwrap_err(),
        read_handed(&path, 1024).unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                FsError::NotRegular {
                    kind: FileKind::Fifo,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.to_string().contains("pipe:["), "{e}");
    }
}
