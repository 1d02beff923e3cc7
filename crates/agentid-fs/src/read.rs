//! Bounded reads, and the one check that a secret is private to its owner.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{FileKind, FsError, Unheld};
use crate::write::{not_held, parent_dir, walk, Owners};

/// The largest file agentid reads (certificates, keys, bundles, chains, revocation lists): 1 MiB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a whole file, refusing one larger than `limit` bytes.
///
/// Any readable file is accepted (a FIFO or `/dev/stdin` too): what is read is public input
/// that the caller parses.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    let f = File::open(path).map_err(|e| FsError::io(path, e))?;
    read_to_limit(f, path, limit)
}

/// Reads a secret (a private key), refusing it unless it is a regular file that neither group
/// nor others can access (mode `0600` or stricter), and refusing one larger than `limit` bytes.
///
/// The mode is taken from the opened handle, so the file checked is the file read. The file is
/// opened non-blocking, so a FIFO planted where a key should be is refused instead of hanging.
pub fn read_secret(path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    let (f, meta) = open_regular(path)?;
    check_private_mode(path, &meta)?;
    read_to_limit(f, path, limit)
}

/// Refuses a secret `meta` describes that group or others can access at all (mode `0600` or
/// stricter is required).
fn check_private_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), FsError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FsError::InsecureMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads a whole configuration file (a CA's `config.toml` or `policy.toml`), refusing anything
/// but a regular file (a FIFO there would block the reader for ever) and one larger than
/// `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    let (f, _) = open_regular(path)?;
    read_to_limit(f, path, limit)
}

/// Reads a file of a credential directory (its trust bundle, certificate or chain), refusing
/// it unless it is held by the reader (see [`check_held`]) and a regular file (opened
/// non-blocking: a FIFO planted there is refused instead of hanging), and refusing one larger
/// than `limit` bytes. The owner and mode are checked again on the opened handle, so the file
/// checked is the file read.
pub fn read_held(path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    let (f, _) = open_held(path)?;
    read_to_limit(f, path, limit)
}

/// [`read_held`] for a secret (a credential directory's key, a token file): also refused when
/// group or others can access it at all, as [`read_secret`] refuses it.
pub fn read_held_secret(path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    let (f, meta) = open_held(path)?;
    check_private_mode(path, &meta)?;
    read_to_limit(f, path, limit)
}

/// Reads a file that another user may have written and handed over (a CSR an agent made),
/// refusing it when others than the users owning it could have changed it: the file must be
/// regular (opened non-blocking: a FIFO is refused instead of hanging) and not writable by
/// group or others, and no directory on the way to it from `/` may let group or others replace
/// its entries (write permission without the sticky bit, as `/tmp` has). Its owner, and the
/// owners of the directories and links on the way, may be anyone: what was handed over is taken
/// as its owner wrote it. Refused with [`FsError::Changeable`], naming the entry and the
/// `chmod` to run; the mode is checked again on the opened handle, and more than `limit` bytes
/// are refused.
///
/// The walk is [`check_held`]'s, with every owner taken.
pub fn read_handed(path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    read_to_limit(open_handed(path)?, path, limit)
}

/// Opens a file as [`read_handed`] reads it (refused the same way), for a caller that reads it
/// as a stream under bounds of its own (an audit export of any size).
pub fn open_handed(path: &Path) -> Result<File, FsError> {
    let owners = Owners::anyone(rustix::process::geteuid().as_raw());
    let refuse = |entry: PathBuf, why: Unheld| FsError::Changeable {
        path: entry,
        file: path.to_path_buf(),
        why,
        reader: owners.me(),
    };
    walk(path, owners, true, &refuse).map_err(|e| kind_over_io(path, e))?;
    let (f, meta) = open_regular(path)?;
    if let Some(why) = not_held(&meta, owners) {
        return Err(refuse(path.to_path_buf(), why));
    }
    Ok(f)
}

/// Checks, without opening it, that `path` is held by the user reading it, so that nobody else
/// could have put it there: resolved from `/` one entry at a time as the system resolves it,
/// every directory entered, every link followed and the entry reached must be owned by the
/// reader (the effective user) or root, and neither a directory without the sticky bit nor the
/// entry reached may be writable by group or others (sticky directories such as `/tmp` are
/// held: only an entry's owner can rename it there). When the reader is root, entries owned by
/// the owner of `path`'s directory (the credential directory) are held too, except in a
/// directory others can write (a sticky one such as `/tmp`, where anyone could have made them):
/// root may act for a service user over that user's directory, but not through a third
/// user's.
///
/// The rule is [`check_secret_dir`](crate::check_secret_dir)'s, the one walk for both. An
/// entry others control is refused with [`FsError::NotHeld`], naming it, its owner or mode, and
/// the `chmod` or `chown` to run.
pub fn check_held(path: &Path) -> Result<(), FsError> {
    held_by(path).map(drop)
}

/// [`check_held`], returning the owners `path` was checked against.
fn held_by(path: &Path) -> Result<Owners, FsError> {
    use std::os::unix::fs::MetadataExt;
    let dir = parent_dir(path);
    let dir_owner = std::fs::metadata(&dir)
        .map_err(|e| FsError::io(&dir, e))?
        .uid();
    let owners = Owners::reader(rustix::process::geteuid().as_raw(), dir_owner);
    walk(path, owners, true, &|entry, why| {
        not_held_error(entry, path, why, owners)
    })?;
    Ok(owners)
}

fn not_held_error(path: PathBuf, file: &Path, why: Unheld, owners: Owners) -> FsError {
    FsError::NotHeld {
        path,
        file: file.to_path_buf(),
        why,
        reader: owners.me(),
        dir_owner: owners.also(),
    }
}

/// Checks that `path` is held ([`check_held`]), opens it as [`open_regular`] does, and checks
/// the opened handle's owner and mode again (it may have changed since the walk).
fn open_held(path: &Path) -> Result<(File, std::fs::Metadata), FsError> {
    let owners = held_by(path).map_err(|e| kind_over_io(path, e))?;
    let (f, meta) = open_regular(path)?;
    if let Some(why) = not_held(&meta, owners) {
        return Err(not_held_error(path.to_path_buf(), path, why, owners));
    }
    Ok((f, meta))
}

/// A walk's I/O error `e`, or, when it could not follow a link (a pipe given as `/dev/stdin`
/// ends at `/proc/PID/fd/pipe:[N]`, which names no entry) and `path` opens as something other
/// than a regular file, that refusal instead: the file is refused as what it is, not as a
/// missing `pipe:[N]` (opened non-blocking, read only, never read).
fn kind_over_io(path: &Path, e: FsError) -> FsError {
    match (&e, open_regular(path)) {
        (FsError::Io { .. }, Err(not_regular @ FsError::NotRegular { .. })) => not_regular,
        _ => e,
    }
}

/// Opens `path` non-blocking and refuses it unless the opened handle is a regular file.
fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), FsError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| FsError::io(path, e))?;
    let meta = f.metadata().map_err(|e| FsError::io(path, e))?;
    let kind = FileKind::of(meta.file_type());
    if kind != FileKind::Regular {
        return Err(FsError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok((f, meta))
}

fn read_to_limit(f: File, path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| FsError::io(path, e))?;
    if buf.len() as u64 > limit {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(buf)
}
