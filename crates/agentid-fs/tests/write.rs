//! Writes never follow a planted link and never replace what is not a regular file; secrets are
//! 0600 and never overwritten; reads are bounded and refuse shared secrets.
//!
//! Everything happens inside a temporary directory: the "devices" here are FIFOs made with
//! `mkfifo`, the "victims" are files of the same directory.
#![cfg(test)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::thread;

use agentid_fs::{
    create_public, create_secret, read_bounded, read_private_key, read_secret, write_private_key,
    write_public, FileKind, FsError, Outcome,
};

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

/// The directory's entries other than `keep`: a write leaves no temporary file behind.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn creates_then_replaces_a_regular_file_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chain.jwt");
    assert_eq!(write_public(&out, b"one").unwrap(), Outcome::Created);
    assert_eq!(fs::read(&out).unwrap(), b"one");
    assert_eq!(mode(&out) & 0o600, 0o600);
    assert_eq!(mode(&out) & 0o022, 0, "never group or world writable");
    assert_eq!(write_public(&out, b"two").unwrap(), Outcome::Replaced);
    assert_eq!(fs::read(&out).unwrap(), b"two");
    assert_eq!(leftovers(dir.path(), &["chain.jwt"]), Vec::<String>::new());
}

#[test]
fn a_link_planted_at_the_destination_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("chain.jwt");
    symlink(&victim, &out).unwrap();

    let e = write_public(&out, b"public chain").unwrap_err();
    assert!(
        matches!(&e, FsError::NotWritable { kind: FileKind::Symlink, path } if *path == out),
        "{e}"
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(&out).unwrap().file_type().is_symlink());
    assert_eq!(
        leftovers(dir.path(), &["chain.jwt", "victim.txt"]),
        Vec::<String>::new()
    );
}

#[test]
fn links_planted_at_predictable_temporary_names_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("chain.jwt");
    // The names an attacker can predict: the pid-based name agentid once used, and plain ones.
    let planted = [
        format!(".chain.jwt.tmp-{}", std::process::id()),
        ".chain.jwt.tmp".to_owned(),
        "chain.jwt.tmp".to_owned(),
        "chain.jwt~".to_owned(),
    ];
    for name in &planted {
        symlink(&victim, dir.path().join(name)).unwrap();
    }

    assert_eq!(
        write_public(&out, b"public chain").unwrap(),
        Outcome::Created
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    let meta = fs::symlink_metadata(&out).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the output is a new regular file"
    );
    assert_eq!(fs::read(&out).unwrap(), b"public chain");
    for name in &planted {
        let p = dir.path().join(name);
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }

    // The same for a secret.
    let key = dir.path().join("key.pem");
    symlink(
        &victim,
        dir.path()
            .join(format!(".key.pem.tmp-{}", std::process::id())),
    )
    .unwrap();
    create_secret(&key, b"secret").unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(fs::read(&key).unwrap(), b"secret");
}

#[test]
fn a_fifo_is_written_in_place_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        thread::spawn(move || {
            let mut got = Vec::new();
            fs::File::open(&fifo)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            got
        })
    };
    let outcome = write_public(&fifo, b"revocation list\n");
    // Checked before joining: had the FIFO been replaced, the reader would wait for ever.
    assert!(
        fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO was replaced"
    );
    assert_eq!(outcome.unwrap(), Outcome::WrittenInPlace);
    assert_eq!(reader.join().unwrap(), b"revocation list\n");
    assert_eq!(leftovers(dir.path(), &["out"]), Vec::<String>::new());
}

#[test]
fn a_link_to_a_fifo_like_dev_stdout_is_refused_and_neither_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    mkfifo(&fifo);
    let stdout = dir.path().join("stdout");
    symlink(&fifo, &stdout).unwrap();

    let e = write_public(&stdout, b"data").unwrap_err();
    assert!(
        matches!(
            e,
            FsError::NotWritable {
                kind: FileKind::Symlink,
                ..
            }
        ),
        "{e}"
    );
    assert!(fs::symlink_metadata(&stdout)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let e = write_public(&sub, b"data").unwrap_err();
    assert!(
        matches!(
            e,
            FsError::NotWritable {
                kind: FileKind::Directory,
                ..
            }
        ),
        "{e}"
    );
    assert!(sub.is_dir());
}

#[test]
fn secrets_are_0600_and_nothing_at_their_name_is_ever_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    create_secret(&key, b"k1").unwrap();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(read_secret(&key, 1024).unwrap(), b"k1");

    let e = create_secret(&key, b"k2").unwrap_err();
    assert!(matches!(e, FsError::AlreadyExists { .. }), "{e}");
    assert_eq!(fs::read(&key).unwrap(), b"k1");

    // A link planted at the key's name: refused, its target untouched (even a dangling one is
    // not created).
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, b"precious").unwrap();
    let planted = dir.path().join("planted.pem");
    symlink(&victim, &planted).unwrap();
    assert!(matches!(
        create_secret(&planted, b"k3").unwrap_err(),
        FsError::AlreadyExists { .. }
    ));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    let dangling_target = dir.path().join("created-through-link");
    let dangling = dir.path().join("dangling.pem");
    symlink(&dangling_target, &dangling).unwrap();
    assert!(matches!(
        create_secret(&dangling, b"k4").unwrap_err(),
        FsError::AlreadyExists { .. }
    ));
    assert!(!dangling_target.exists());

    // The same for a new public file.
    let cfg = dir.path().join("config.toml");
    create_public(&cfg, b"a").unwrap();
    assert!(matches!(
        create_public(&cfg, b"b").unwrap_err(),
        FsError::AlreadyExists { .. }
    ));
    assert_eq!(fs::read(&cfg).unwrap(), b"a");
    assert_eq!(
        leftovers(
            dir.path(),
            &[
                "key.pem",
                "victim.txt",
                "planted.pem",
                "dangling.pem",
                "config.toml"
            ]
        ),
        Vec::<String>::new()
    );
}

#[test]
fn a_secret_that_group_or_others_can_access_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    create_secret(&key, b"k").unwrap();
    for m in [0o640, 0o604, 0o644, 0o660, 0o601, 0o610] {
        fs::set_permissions(&key, fs::Permissions::from_mode(m)).unwrap();
        let e = read_secret(&key, 1024).unwrap_err();
        assert!(
            matches!(e, FsError::InsecureMode { mode, .. } if mode == m),
            "{m:o}: {e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(read_secret(&key, 1024).unwrap(), b"k");
}

#[test]
fn a_fifo_where_a_key_should_be_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    mkfifo(&key);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let e = read_secret(&key, 1024).unwrap_err();
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
}

#[test]
fn reads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big");
    fs::write(&f, vec![b'a'; 1025]).unwrap();
    assert!(matches!(
        read_bounded(&f, 1024).unwrap_err(),
        FsError::TooLarge { limit: 1024, .. }
    ));
    assert_eq!(read_bounded(&f, 1025).unwrap().len(), 1025);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        read_secret(&f, 1024).unwrap_err(),
        FsError::TooLarge { .. }
    ));
}

#[test]
fn private_keys_round_trip_as_pkcs8_pem() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    // Any bytes: PEM framing does not parse the PKCS#8 structure.
    let der = [0x30u8, 0x03, 0x02, 0x01, 0x00];
    write_private_key(&key, &der).unwrap();
    assert_eq!(mode(&key), 0o600);
    assert!(fs::read_to_string(&key)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(read_private_key(&key).unwrap(), der);

    let not_pem = dir.path().join("not.pem");
    create_secret(&not_pem, b"hello").unwrap();
    assert!(matches!(
        read_private_key(&not_pem).unwrap_err(),
        FsError::BadKey { .. }
    ));
}

#[test]
fn the_destination_check_refuses_exactly_what_write_public_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    fs::write(p("regular"), b"old").unwrap();
    fs::create_dir(p("dir")).unwrap();
    symlink(p("regular"), p("link")).unwrap();
    symlink(p("absent"), p("dangling")).unwrap();
    mkfifo(&p("fifo"));
    for (name, kind) in [
        ("absent", None),
        ("regular", None),
        ("fifo", None),
        ("dir", Some(FileKind::Directory)),
        ("link", Some(FileKind::Symlink)),
        ("dangling", Some(FileKind::Symlink)),
    ] {
        match (agentid_fs::check_public_destination(&p(name)), kind) {
            (Ok(()), None) => {}
            (Err(FsError::NotWritable { kind: got, .. }), Some(want)) => {
                assert_eq!(got, want, "{name}");
                // write_public refuses it the same way, and writes nothing.
                assert!(
                    matches!(write_public(&p(name), b"new"), Err(FsError::NotWritable { kind: k, .. }) if k == want),
                    "{name}"
                );
            }
            (r, want) => panic!("{name}: {r:?}, expected {want:?}"),
        }
    }
    assert_eq!(
        fs::read(p("regular")).unwrap(),
        b"old",
        "a check writes nothing"
    );
    assert!(!p("absent").exists());
}

#[test]
fn a_secret_is_never_created_in_a_directory_others_control() {
    let base = tempfile::tempdir().unwrap();
    let set_mode =
        |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();

    // Anyone may create, rename and remove its entries: refused, nothing written.
    let shared = base.path().join("shared");
    fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o777);
    let key = shared.join("key.pem");
    let e = create_secret(&key, b"secret").unwrap_err();
    assert!(
        matches!(&e, FsError::InsecureDir { path, .. } if *path == shared),
        "{e}"
    );
    assert!(e.to_string().contains("777"), "{e}");
    assert_eq!(leftovers(&shared, &[]), Vec::<String>::new());
    set_mode(&shared, 0o770);
    assert!(matches!(
        create_secret(&key, b"secret").unwrap_err(),
        FsError::InsecureDir { .. }
    ));

    // The sticky bit (as /tmp has): others cannot replace what is ours.
    set_mode(&shared, 0o1777);
    create_secret(&key, b"secret").unwrap();
    assert_eq!(fs::read(&key).unwrap(), b"secret");

    // Our own private directory.
    let own = base.path().join("own");
    fs::create_dir(&own).unwrap();
    set_mode(&own, 0o700);
    create_secret(&own.join("key.pem"), b"secret").unwrap();

    // A directory another user made (and a link to it where ours should be): its owner could
    // replace the key or the files beside it. Only root can give a directory away here.
    let other = base.path().join("planted");
    fs::create_dir(&other).unwrap();
    set_mode(&other, 0o755);
    if std::os::unix::fs::chown(&other, Some(65534), Some(65534)).is_ok() {
        let e = create_secret(&other.join("key.pem"), b"secret").unwrap_err();
        assert!(
            matches!(&e, FsError::InsecureDir { why, .. } if why.contains("65534")),
            "{e}"
        );
        let link = base.path().join("creds");
        symlink(&other, &link).unwrap();
        assert!(matches!(
            create_secret(&link.join("key.pem"), b"secret").unwrap_err(),
            FsError::InsecureDir { .. }
        ));
        assert_eq!(leftovers(&other, &[]), Vec::<String>::new());
    }
}

/// A private directory is not enough when another user controls a directory above it, or a
/// link on the way to it: they can rename the directory away (or point the link elsewhere) and
/// put their own in its place, so that the files written beside the key (`bundle.json`, the
/// anchors) or read next time are theirs. Every directory and link on the way is checked.
#[test]
fn a_secret_is_never_created_below_a_directory_or_link_others_control() {
    let base = tempfile::tempdir().unwrap();
    let set_mode =
        |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();

    // A parent that anyone may write: our own 0700 directory in it can be renamed away.
    let shared = base.path().join("shared");
    fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o777);
    let creds = shared.join("creds");
    fs::create_dir(&creds).unwrap();
    set_mode(&creds, 0o700);
    let e = create_secret(&creds.join("key.pem"), b"secret").unwrap_err();
    assert!(
        matches!(&e, FsError::InsecureDir { path, .. } if *path == shared),
        "{e}"
    );
    assert_eq!(leftovers(&creds, &[]), Vec::<String>::new());
    // Reached through `..` and `.`: the same parent.
    let dotted = creds.join("..").join(".").join("creds").join("key.pem");
    assert!(matches!(
        create_secret(&dotted, b"secret").unwrap_err(),
        FsError::InsecureDir { .. }
    ));
    // With the sticky bit, as /tmp has: nobody else can rename our directory.
    set_mode(&shared, 0o1777);
    create_secret(&creds.join("key.pem"), b"secret").unwrap();

    // A link to our private directory, reached through a directory anyone may write.
    let own = base.path().join("own");
    fs::create_dir(&own).unwrap();
    set_mode(&own, 0o700);
    let open = base.path().join("open");
    fs::create_dir(&open).unwrap();
    set_mode(&open, 0o777);
    symlink(&own, open.join("link")).unwrap();
    // A link of ours, pointing through theirs: followed and checked.
    let via = base.path().join("via");
    symlink(open.join("link"), &via).unwrap();
    for p in [open.join("link"), via.clone()] {
        let e = create_secret(&p.join("key.pem"), b"secret").unwrap_err();
        assert!(
            matches!(&e, FsError::InsecureDir { path, .. } if *path == open),
            "{}: {e}",
            p.display()
        );
    }
    assert_eq!(leftovers(&own, &[]), Vec::<String>::new());
    set_mode(&open, 0o755);
    create_secret(&via.join("key.pem"), b"secret").unwrap();

    // Only root can give a directory or a link away here.
    let theirs = base.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    set_mode(&theirs, 0o755);
    if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_ok() {
        // Our private directory inside another user's: they can rename it away.
        let inner = theirs.join("creds");
        fs::create_dir(&inner).unwrap();
        set_mode(&inner, 0o700);
        let e = create_secret(&inner.join("key.pem"), b"secret").unwrap_err();
        assert!(
            matches!(&e, FsError::InsecureDir { path, why } if *path == theirs && why.contains("65534")),
            "{e}"
        );
        // A link another user planted (in a sticky directory, where only they can replace
        // it), pointing at our private directory for now.
        let planted = base.path().join("planted-link");
        symlink(&own, &planted).unwrap();
        std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();
        let e = create_secret(&planted.join("key2.pem"), b"secret").unwrap_err();
        assert!(
            matches!(&e, FsError::InsecureDir { path, why } if *path == planted && why.contains("65534")),
            "{e}"
        );
        assert!(!own.join("key2.pem").exists());
    }
}

/// A key in another format (what `openssl` writes by default for EC or RSA keys, or an
/// encrypted PKCS#8 key) is refused with what it is and the command that converts it, not
/// "no items found".
#[test]
fn a_key_in_another_format_is_refused_with_the_conversion_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let pem = |label: &str| {
        format!("-----BEGIN {label}-----\nMAMCAQA=\n-----END {label}-----\n").into_bytes()
    };
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "sec1.pem",
            pem("EC PRIVATE KEY"),
            "openssl pkcs8 -topk8 -nocrypt",
        ),
        (
            "rsa.pem",
            pem("RSA PRIVATE KEY"),
            "openssl pkcs8 -topk8 -nocrypt",
        ),
        ("enc.pem", pem("ENCRYPTED PRIVATE KEY"), "encrypted"),
        ("cert.pem", pem("CERTIFICATE"), "a certificate"),
        (
            "der.key",
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
            "-----BEGIN PRIVATE KEY-----",
        ),
    ];
    for (name, contents, said) in cases {
        let path = dir.path().join(name);
        create_secret(&path, &contents).unwrap();
        let e = read_private_key(&path).unwrap_err();
        assert!(matches!(e, FsError::BadKey { .. }), "{name}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(said), "{name}: {shown}");
        assert!(!shown.contains("no items found"), "{name}: {shown}");
    }
}

/// A FIFO another user planted at the name of an output (`--out /tmp/bundle.json`): writing
/// "in place" waited for ever for a reader, or handed the data to the planter and said it was
/// written, while the planter answers every later read of that name (`--bundle
/// /tmp/bundle.json`) with their own content. Refused at once, and by the destination check.
#[test]
fn a_fifo_another_user_owns_is_refused_without_blocking() {
    use agentid_fs::check_public_destination;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("bundle.json");
    mkfifo(&fifo);
    // Only root can give a FIFO away here.
    if std::os::unix::fs::lchown(&fifo, Some(65534), Some(65534)).is_err() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        thread::spawn(move || {
            let _ = tx.send(write_public(&fifo, b"bundle"));
        });
    }
    let outcome = match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(r) => r,
        Err(_) => {
            // Let the blocked write go, then fail.
            let mut got = Vec::new();
            let _ = fs::File::open(&fifo).and_then(|mut f| f.read_to_end(&mut got));
            panic!("the write blocked on a FIFO another user owns");
        }
    };
    let e = outcome.unwrap_err();
    assert!(
        matches!(
            &e,
            FsError::NotOwned {
                kind: FileKind::Fifo,
                uid: 65534,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("65534"), "{e}");
    assert!(matches!(
        check_public_destination(&fifo).unwrap_err(),
        FsError::NotOwned { .. }
    ));
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

/// A public output named over a private key by mistake (`bundle export --out ca/root.key`,
/// `delegate --out key.pem`): the key was replaced, and a CA's root key is not to be had
/// again. A file holding a PEM private key is never replaced by a public file.
#[test]
fn a_private_key_is_never_replaced_by_a_public_file() {
    use agentid_fs::check_public_destination;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    write_private_key(&key, &[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap();
    let before = fs::read(&key).unwrap();
    let e = write_public(&key, b"{\"keys\": []}\n").unwrap_err();
    assert!(matches!(&e, FsError::HoldsKey { .. }), "{e}");
    assert!(e.to_string().contains("private key"), "{e}");
    assert!(matches!(
        check_public_destination(&key).unwrap_err(),
        FsError::HoldsKey { .. }
    ));
    assert_eq!(fs::read(&key).unwrap(), before);
    assert_eq!(leftovers(dir.path(), &["root.key"]), Vec::<String>::new());
    // Another file is replaced as before.
    let cert = dir.path().join("cert.pem");
    fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    assert_eq!(write_public(&cert, b"new").unwrap(), Outcome::Replaced);
}
