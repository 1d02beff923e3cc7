//! Writes: through an exclusively created temporary file with a random name in the
//! destination's directory, or in place for a FIFO or a character device; never through a
//! symbolic link, never replacing what is not a regular file.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{FileKind, FsError, Unheld};

/// Mode of public files (certificates, bundles, chains, configuration), before the umask.
const PUBLIC_MODE: u32 = 0o644;
/// Mode of secret files (private keys).
const SECRET_MODE: u32 = 0o600;

/// What [`write_public`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Nothing was at the path; a new file was created.
    Created,
    /// A regular file was at the path; it was replaced atomically.
    Replaced,
    /// A FIFO or a character device was at the path; the contents were written to it.
    WrittenInPlace,
}

/// Writes a public file (certificate, bundle, chain, list) with mode 0644.
///
/// - A regular file that holds a PEM private key: refused with [`FsError::HoldsKey`] (an output
///   named over a key by mistake must not cost the key).
/// - Nothing at `path`, or a regular file: the contents go to a temporary file created
///   exclusively under a random name in the same directory, reach the disk, and the temporary
///   file is renamed over `path` (then the directory is synced). Readers see the old or the new
///   file, never a mix; a link planted at any temporary name is never followed.
/// - A FIFO or a character device (`/dev/null`, a terminal): written in place, never replaced;
///   a FIFO another user (not root) owns is refused with [`FsError::NotOwned`].
/// - A symbolic link (`/dev/stdout` is one), a directory, a block device, a socket: refused
///   with [`FsError::NotWritable`]; nothing is written.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<Outcome, FsError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            replace_atomically(path, contents, PUBLIC_MODE, true)?;
            Ok(Outcome::Created)
        }
        Err(e) => Err(FsError::io(path, e)),
        Ok(meta) => match FileKind::of(meta.file_type()) {
            FileKind::Regular => {
                check_not_a_key(path)?;
                replace_atomically(path, contents, PUBLIC_MODE, true)?;
                Ok(Outcome::Replaced)
            }
            FileKind::Fifo | FileKind::CharDevice => {
                check_owner(path, &meta)?;
                write_in_place(path, contents)?;
                Ok(Outcome::WrittenInPlace)
            }
            kind => Err(FsError::NotWritable {
                path: path.to_path_buf(),
                kind,
            }),
        },
    }
}

/// Checks, without writing, that [`write_public`] would write `path` as things stand: nothing
/// there, a regular file, a FIFO or a character device. Anything it refuses (a symbolic link, a
/// directory, a block device, a socket; a FIFO another user owns) is refused here with the same
/// error,
/// so that a command can refuse before it spends something it cannot get back (a single-use
/// token, the key a credential directory holds).
pub fn check_public_destination(path: &Path) -> Result<(), FsError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::io(path, e)),
        Ok(meta) => match FileKind::of(meta.file_type()) {
            FileKind::Regular => check_not_a_key(path),
            FileKind::Fifo | FileKind::CharDevice => check_owner(path, &meta),
            kind => Err(FsError::NotWritable {
                path: path.to_path_buf(),
                kind,
            }),
        },
    }
}

/// Writes a private file (one only its owner reads: a CA directory's signed bundle) with mode
/// 0600 from its creation, replacing a regular file atomically as [`write_public`] does; never
/// through a link, never in place.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            replace_atomically(path, contents, SECRET_MODE, true)
        }
        Err(e) => Err(FsError::io(path, e)),
        Ok(meta) => match FileKind::of(meta.file_type()) {
            FileKind::Regular => replace_atomically(path, contents, SECRET_MODE, true),
            kind => Err(FsError::NotWritable {
                path: path.to_path_buf(),
                kind,
            }),
        },
    }
}

/// Creates a new public file with mode 0644, atomically, refusing with
/// [`FsError::AlreadyExists`] when anything (a file, a link, a directory) is at `path`.
pub fn create_public(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    replace_atomically(path, contents, PUBLIC_MODE, false)
}

/// Creates a new secret file (a private key): the temporary file is mode 0600 from its
/// creation, and it takes its name only if nothing (a file, a link, a directory) is at `path`
/// ([`FsError::AlreadyExists`] otherwise). A key is never overwritten, and never seen half
/// written.
///
/// The directory must keep it private (see [`check_secret_dir`]).
pub fn create_secret(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    check_secret_dir(&parent_dir(path))?;
    replace_atomically(path, contents, SECRET_MODE, false)
}

/// Checks that a secret may be created in `dir`, an existing directory (a link to one is
/// followed): it is owned by the user writing now (or by root), and group and others cannot
/// create, rename or remove its entries (no write permission for them, or the sticky bit, as
/// `/tmp` has). The same holds for every directory on the way to it from `/`, and every link
/// on the way (followed as the system follows it) must be the writer's or root's: whoever
/// controls a directory above could rename `dir` away and put their own in its place, and
/// whoever owns a link could point it elsewhere, between this check and a write, or before the
/// next command reads the files beside the secret. A directory or link planted by another user
/// (at a name in `/tmp`, say) is refused with [`FsError::InsecureDir`], naming it. Call it
/// before spending what cannot be had again (a single-use token).
pub fn check_secret_dir(dir: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| FsError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(FsError::NotWritable {
            path: dir.to_path_buf(),
            kind: FileKind::of(meta.file_type()),
        });
    }
    // Who writes now: the owner of a file made here (unnamed where the system can, removed
    // at once otherwise). Needs no `unsafe` call, and shows that the directory is writable.
    let me = tempfile::tempfile_in(dir)
        .and_then(|f| f.metadata())
        .map_err(|e| FsError::io(dir, e))?
        .uid();
    if let Some(why) = not_held(&meta, Owners::writer(me)) {
        return Err(FsError::InsecureDir {
            path: dir.to_path_buf(),
            why: why.to_string(),
        });
    }
    check_way_to(dir, me)
}

/// Whose entries are taken as held on the way to a file: the user reading or writing now
/// (`me`), root, and, for root reading a credential directory, that directory's owner (root
/// acting for a service user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owners {
    me: u32,
    also: Option<u32>,
    /// Any owner is taken (a file handed over by another user): only modes are checked.
    any: bool,
}

impl Owners {
    /// A writer: only `me` and root.
    pub(crate) fn writer(me: u32) -> Self {
        Self {
            me,
            also: None,
            any: false,
        }
    }

    /// A reader `me` of a file another user may have written and handed over (a CSR): every
    /// owner is taken, so only what others than the owners can change is refused (a directory
    /// group or others can write without the sticky bit, a file they can write).
    pub(crate) fn anyone(me: u32) -> Self {
        Self {
            me,
            also: None,
            any: true,
        }
    }

    /// A reader `me` of a credential directory owned by `dir_owner`: only `me` and root, and
    /// when `me` is root, also `dir_owner` (root reads a service user's directory as that user
    /// holds it). A user other than root never takes another's directory as held.
    pub(crate) fn reader(me: u32, dir_owner: u32) -> Self {
        Self {
            me,
            also: (me == 0 && dir_owner != 0).then_some(dir_owner),
            any: false,
        }
    }

    pub(crate) fn me(self) -> u32 {
        self.me
    }

    pub(crate) fn also(self) -> Option<u32> {
        self.also
    }

    fn trust(self, uid: u32) -> bool {
        self.any || uid == self.me || uid == 0 || self.also == Some(uid)
    }
}

/// Why others could change the entry `meta` describes (a directory's entries, where a link
/// points, a file's contents), or `None` when only `owners` can.
pub(crate) fn not_held(meta: &std::fs::Metadata, owners: Owners) -> Option<Unheld> {
    not_owned(meta, owners).or_else(|| {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() && mode & 0o022 != 0 && mode & 0o1000 == 0 {
            Some(Unheld::OpenDir { mode })
        } else if meta.is_file() && mode & 0o022 != 0 {
            Some(Unheld::WritableFile { mode })
        } else {
            None
        }
    })
}

/// Why an entry `meta` describes, in directory `dir`, is not held though its owner is trusted:
/// an entry held only because root takes the credential directory's owner as its holder
/// ([`Owners::reader`]) must not sit in a directory others can write (a sticky one such as
/// `/tmp`, where anyone may create a name, or a link, that root would then read as the service
/// user's). `None` otherwise.
fn owner_in_shared_dir(dir: &Path, meta: &std::fs::Metadata, owners: Owners) -> Option<Unheld> {
    use std::os::unix::fs::MetadataExt;
    let uid = meta.uid();
    if owners.also != Some(uid) || uid == owners.me || uid == 0 {
        return None;
    }
    // A directory that cannot be read is not taken as held either.
    let mode = std::fs::symlink_metadata(dir).map_or(0o777, |m| m.mode() & 0o777);
    (mode & 0o022 != 0).then_some(Unheld::OwnerInSharedDir { uid })
}

/// Why the entry `meta` describes is not one of `owners`', or `None`.
fn not_owned(meta: &std::fs::Metadata, owners: Owners) -> Option<Unheld> {
    use std::os::unix::fs::MetadataExt;
    (!owners.trust(meta.uid())).then(|| Unheld::Owner { uid: meta.uid() })
}

/// One step of a path being resolved.
enum Step {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

fn steps(path: &Path) -> Vec<Step> {
    use std::path::Component;
    let mut v: Vec<Step> = path
        .components()
        .filter_map(|c| match c {
            Component::RootDir => Some(Step::Root),
            Component::ParentDir => Some(Step::Parent),
            Component::Normal(n) => Some(Step::Name(n.to_owned())),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    // Popped from the end: the first step last.
    v.reverse();
    v
}

/// The most links followed on the way to a directory (the system's own limit).
const MAX_LINKS: usize = 40;

/// Resolves `dir` from `/` one entry at a time, as the system does, and checks every directory
/// entered and every link followed with [`not_held`]: the first one others control is refused.
fn check_way_to(dir: &Path, me: u32) -> Result<(), FsError> {
    walk_to(dir, me, true)
}

/// [`check_way_to`], with the mode of `dir` itself checked only when `last_mode` (its owner
/// always is).
fn walk_to(dir: &Path, me: u32, last_mode: bool) -> Result<(), FsError> {
    walk(dir, Owners::writer(me), last_mode, &|path, why| {
        FsError::InsecureDir {
            path,
            why: format!("{why} (on the way to {})", dir.display()),
        }
    })
}

/// Resolves `path` from `/` one entry at a time, as the system does, and checks every directory
/// entered, every link followed and the entry reached with [`not_held`] (the mode of the entry
/// reached only when `last_mode`): the first one that others than `owners` control is refused
/// with `refuse`. The one walk of every check that a path is held, for writes and reads.
pub(crate) fn walk(
    path: &Path,
    owners: Owners,
    last_mode: bool,
    refuse: &dyn Fn(PathBuf, Unheld) -> FsError,
) -> Result<(), FsError> {
    let abs = std::path::absolute(path).map_err(|e| FsError::io(path, e))?;
    let mut at = PathBuf::from("/");
    let root = std::fs::symlink_metadata(&at).map_err(|e| FsError::io(&at, e))?;
    if let Some(why) = not_held(&root, owners) {
        return Err(refuse(at, why));
    }
    let mut todo = steps(&abs);
    let mut links = 0;
    while let Some(step) = todo.pop() {
        match step {
            Step::Root => at = PathBuf::from("/"),
            Step::Parent => {
                at.pop();
            }
            Step::Name(name) => {
                let next = at.join(&name);
                let meta = std::fs::symlink_metadata(&next).map_err(|e| FsError::io(&next, e))?;
                let last = todo.is_empty() && !meta.file_type().is_symlink();
                let why = if last && !last_mode {
                    not_owned(&meta, owners)
                } else {
                    not_held(&meta, owners)
                }
                .or_else(|| owner_in_shared_dir(&at, &meta, owners));
                if let Some(why) = why {
                    return Err(refuse(next, why));
                }
                if meta.file_type().is_symlink() {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(FsError::io(
                            path,
                            std::io::Error::other("too many levels of symbolic links"),
                        ));
                    }
                    let target = std::fs::read_link(&next).map_err(|e| FsError::io(&next, e))?;
                    // A relative target is resolved from the directory holding the link.
                    todo.extend(steps(&target));
                } else {
                    at = next;
                }
            }
        }
    }
    Ok(())
}

/// Makes `dir` a directory for secrets: creates it (and missing parents) with mode 0700, or
/// takes group and others' access away from an existing one, then checks it as
/// [`check_secret_dir`] does. Every directory and link on the way to it is checked before its
/// mode is changed: a link another user planted at its name (pointing at `/etc`, say) changes
/// nothing.
pub fn make_private_dir(dir: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::MetadataExt;
    ensure_dir(dir)?;
    let me = rustix::process::geteuid().as_raw();
    walk_to(dir, me, false)?;
    let meta = std::fs::metadata(dir).map_err(|e| FsError::io(dir, e))?;
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, Permissions::from_mode(0o700))
            .map_err(|e| FsError::io(dir, e))?;
    }
    check_secret_dir(dir)
}

/// Creates `dir` and its missing parents with mode 0700; an existing directory is left as is.
pub fn ensure_dir(dir: &Path) -> Result<(), FsError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| FsError::io(dir, e))
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `contents` to a new temporary file in `path`'s directory and renames it to `path`
/// (`overwrite`) or links it there only if the name is free (`!overwrite`).
fn replace_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), FsError> {
    let dir = parent_dir(path);
    let name = path.file_name().ok_or_else(|| FsError::NotWritable {
        path: path.to_path_buf(),
        kind: FileKind::Directory,
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    // `tempfile` opens with O_CREAT | O_EXCL under a random name and retries on collision: a
    // link planted at a guessed name makes that attempt fail, it is never followed.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(&dir)
        .map_err(|e| FsError::io(path, e))?;
    tmp.write_all(contents).map_err(|e| FsError::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| FsError::io(path, e))?;
    // On error the temporary file is dropped, which removes it.
    let persisted = if overwrite {
        tmp.persist(path).map(drop)
    } else {
        tmp.persist_noclobber(path).map(drop)
    };
    if let Err(e) = persisted {
        return Err(if e.error.kind() == ErrorKind::AlreadyExists {
            FsError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            FsError::io(path, e.error)
        });
    }
    // The rename is durable once the directory is.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::io(&dir, e))
}

/// How much of an existing file [`check_not_a_key`] reads: a PEM private key begins there.
const KEY_SNIFF_BYTES: u64 = 64 * 1024;

/// Refuses to replace a regular file that holds a PEM private key (`-----BEGIN ... PRIVATE
/// KEY-----`) with a public file. A file that cannot be read is left to the write to judge.
fn check_not_a_key(path: &Path) -> Result<(), FsError> {
    use std::io::Read;
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return Ok(());
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let mut head = Vec::new();
    if f.take(KEY_SNIFF_BYTES).read_to_end(&mut head).is_err() {
        return Ok(());
    }
    let holds_key = head
        .windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
        && head
            .windows(b"-----BEGIN ".len())
            .any(|w| w == b"-----BEGIN ");
    if holds_key {
        return Err(FsError::HoldsKey {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuses a FIFO that another user (not root) owns: one planted at an output's name in a
/// shared directory. (Character devices are made by root only.) Checked before it is opened,
/// as opening a FIFO waits for a reader.
fn check_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), FsError> {
    use std::os::unix::fs::MetadataExt;
    let kind = FileKind::of(meta.file_type());
    let me = rustix::process::geteuid().as_raw();
    if kind == FileKind::Fifo && meta.uid() != me && meta.uid() != 0 {
        return Err(FsError::NotOwned {
            path: path.to_path_buf(),
            kind,
            uid: meta.uid(),
        });
    }
    Ok(())
}

/// Writes to a FIFO or a character device without creating, truncating or replacing it, and
/// without following a link swapped in since it was looked at.
fn write_in_place(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                FsError::NotWritable {
                    path: path.to_path_buf(),
                    kind: FileKind::Symlink,
                }
            } else {
                FsError::io(path, e)
            }
        })?;
    let meta = f.metadata().map_err(|e| FsError::io(path, e))?;
    let kind = FileKind::of(meta.file_type());
    if !matches!(kind, FileKind::Fifo | FileKind::CharDevice) {
        // Swapped since it was looked at: write nothing.
        return Err(FsError::NotWritable {
            path: path.to_path_buf(),
            kind,
        });
    }
    // The file opened is the file checked.
    check_owner(path, &meta)?;
    f.write_all(contents)
        .and_then(|()| f.flush())
        .map_err(|e| FsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::Owners;

    /// Whose entries a reader takes as held, decided from the user ids alone (the case a test
    /// not run as root cannot make with files).
    #[test]
    fn a_reader_takes_only_itself_and_root_and_root_also_the_directorys_owner() {
        // A user reading its own directory, or a directory root made for it.
        let me = Owners::reader(1000, 1000);
        assert!(me.trust(1000) && me.trust(0));
        assert!(!me.trust(1001));
        // A user never takes another user's directory as held, nor that user's entries.
        let other = Owners::reader(1000, 1001);
        assert!(!other.trust(1001) && !other.trust(65534));
        assert!(other.trust(1000) && other.trust(0));
        assert_eq!(other.also(), None);
        // Root reads a service user's directory as that user holds it, not a third user's.
        let root = Owners::reader(0, 1001);
        assert!(root.trust(0) && root.trust(1001));
        assert!(!root.trust(1000) && !root.trust(65534));
        assert_eq!(root.also(), Some(1001));
        // Root reading its own directory: root only.
        let own = Owners::reader(0, 0);
        assert!(own.trust(0) && !own.trust(1000));
        assert_eq!(own.also(), None);
        // A writer takes only itself and root.
        let w = Owners::writer(1000);
        assert!(w.trust(1000) && w.trust(0) && !w.trust(1001));
    }
}
