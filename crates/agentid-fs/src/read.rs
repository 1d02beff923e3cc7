//! Bounded reads, and the one check that a secret is private to its owner.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{FileKind, FsError};

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
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FsError::InsecureMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_to_limit(f, path, limit)
}

/// Reads a whole configuration file (a CA's `config.toml` or `policy.toml`), refusing anything
/// but a regular file (a FIFO there would block the reader for ever) and one larger than
/// `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, FsError> {
    let (f, _) = open_regular(path)?;
    read_to_limit(f, path, limit)
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
