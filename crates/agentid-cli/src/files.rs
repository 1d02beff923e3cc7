//! Reading and writing the files the commands exchange: PEM certificates, PKCS#8 keys (0600),
//! chains and JSON. Every read and write goes through `agentid_fs`: bounded reads, writes that
//! never follow a planted link and never replace what is not a regular file, keys 0600.

use std::io::Write;
use std::path::Path;

use agentid_fs::{FileKind, FsError, MAX_FILE_BYTES};
use rustls_pki_types::CertificateDer;

use crate::error::{CliError, CliResult, Context};

/// Reads a whole input file, refusing anything above 1 MiB.
pub fn read(path: &Path) -> CliResult<Vec<u8>> {
    agentid_fs::read_bounded(path, MAX_FILE_BYTES).map_err(read_error)
}

/// Reads a whole trust input named on the command line (a `--bundle` file), refusing anything
/// above 1 MiB, and refusing it unless the reader holds it as a credential directory's files
/// are held (`agentid_fs::read_held`): whoever could write it, or a directory or link on the way
/// to it, could make the command trust their CA.
pub fn read_held(path: &Path) -> CliResult<Vec<u8>> {
    agentid_fs::read_held(path, MAX_FILE_BYTES).map_err(read_error)
}

/// Reads a whole input another user may have written and handed over (a CSR), refusing
/// anything above 1 MiB, and refusing it when others than its owners could have changed it
/// (`agentid_fs::read_handed`): group or others can write it, or a directory on the way to it
/// lets them replace its entries. Whoever could replace a CSR would have the CA certify their
/// key as the agent's.
pub fn read_handed(path: &Path) -> CliResult<Vec<u8>> {
    agentid_fs::read_handed(path, MAX_FILE_BYTES).map_err(read_error)
}

/// A failed read, as `cannot read FILE: why` when the system refused.
fn read_error(e: FsError) -> CliError {
    match e {
        FsError::Io { path, source } => {
            CliError::failed(format!("cannot read {}: {source}", path.display()))
        }
        e => e.into(),
    }
}

/// Reads a UTF-8 text file with surrounding whitespace removed (a chain to check or extend).
pub fn read_text(path: &Path) -> CliResult<String> {
    text_of(path, read(path)?)
}

/// Reads a revocation list named on the command line (`--revocations FILE`), with surrounding
/// whitespace removed, only if the reader holds it as a `--bundle` is held ([`read_held`]):
/// whoever could write it, or a directory or link on the way to it, could put back an older
/// list, genuinely signed, and hide the revocations made since until its `next_update`.
pub fn read_revocation_list(path: &Path) -> CliResult<String> {
    text_of(path, read_held(path)?)
}

fn text_of(path: &Path, bytes: Vec<u8>) -> CliResult<String> {
    let s = String::from_utf8(bytes)
        .map_err(|_| CliError::failed(format!("{} is not UTF-8 text", path.display())))?;
    Ok(s.trim().to_owned())
}

/// Reads every certificate of a PEM file (at least one), leaf first as written.
pub fn read_certs(path: &Path) -> CliResult<Vec<CertificateDer<'static>>> {
    Ok(agentid::files::read_certs(path)?)
}

/// Reads every certificate of a PEM file (at least one) that another user may have handed over
/// (`delegate --to-cert`), refusing it when others than its owners could have changed it
/// ([`read_handed`]): whoever could replace it would choose whom the authority goes to.
pub fn read_handed_certs(path: &Path) -> CliResult<Vec<CertificateDer<'static>>> {
    Ok(agentid::files::certs_of(path, &read_handed(path)?)?)
}

/// Reads a PKCS#8 PEM private key, refusing a file that group or others can access (a task key
/// must stay with its holder), or that the reader does not hold (`agentid_fs::read_held`): whoever
/// could replace it, or a directory or link on the way to it, would have the command sign with a
/// key of theirs.
pub fn read_private_key(path: &Path) -> CliResult<Vec<u8>> {
    agentid_fs::read_held_private_key(path).map_err(read_error)
}

/// Creates a new private key file, mode 0600 from creation on; never overwrites.
pub fn write_new_private_key(path: &Path, pkcs8_der: &[u8]) -> CliResult<()> {
    agentid_fs::write_private_key(path, pkcs8_der).map_err(|e| match e {
        FsError::AlreadyExists { .. } => CliError::failed(format!(
            "{} already exists: refusing to overwrite a key",
            path.display()
        )),
        e => e.into(),
    })
}

/// Writes a public file (certificate, bundle, chain, list) with mode 0644, replacing a regular
/// file atomically (readers see the old or the new content, never a mix), writing a FIFO or a
/// character device in place, and refusing a symbolic link, a directory or another special file.
pub fn write_public(path: &Path, contents: &[u8]) -> CliResult<()> {
    agentid_fs::write_public(path, contents)?;
    Ok(())
}

/// Refuses, before anything is issued or spent, a destination that [`write_public`] would
/// refuse (a symbolic link, a directory, a block device, a socket).
pub fn check_public_destinations(paths: &[std::path::PathBuf]) -> CliResult<()> {
    for p in paths {
        agentid_fs::check_public_destination(p)?;
    }
    Ok(())
}

/// Refuses an `--out` that [`write_output`] could not write (a missing directory, or what
/// [`write_public`] refuses), before a command does what cannot be taken back (a new signed
/// list, published with the next `seq`).
pub fn check_output_destination(out: &Path) -> CliResult<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CliError::failed(format!(
            "{}: no such directory for --out {} (create it first)",
            parent.display(),
            out.display()
        )));
    }
    agentid_fs::check_public_destination(out)?;
    Ok(())
}

/// An exclusive lock on a credential directory, held while a command replaces the files in it
/// (its key, certificate and grant must end up a matching set): a second command writing the
/// same directory at the same time is refused instead of mixing its files with the first's.
/// The lock is the directory's own (`flock` on it, no lock file left behind) and ends when this
/// is dropped or the process exits, a crash included.
#[must_use = "the directory is locked only while this is held"]
pub struct DirLock {
    _dir: std::fs::File,
}

/// Locks `dir` (which exists) for [`DirLock`]'s purpose, or fails at once, naming the directory
/// and what to do, when another command holds it.
pub fn lock_dir(dir: &Path) -> CliResult<DirLock> {
    let f = std::fs::File::open(dir).context(format!("cannot open {}", dir.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(DirLock { _dir: f }),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::failed(format!(
            "{}: another agentid command is writing this directory; wait for it to finish and run this again, or choose another --out-dir",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(CliError::failed(format!(
            "cannot lock {}: {e}",
            dir.display()
        ))),
    }
}

/// Creates the output directory if needed (mode 0700 when created).
pub fn ensure_dir(dir: &Path) -> CliResult<()> {
    Ok(agentid_fs::ensure_dir(dir)?)
}

/// Writes the command's data output to `out`, or to stdout when `None`.
pub fn write_output(out: Option<&Path>, contents: &str) -> CliResult<()> {
    match out {
        Some(p) => agentid_fs::write_public(p, contents.as_bytes())
            .map(drop)
            .map_err(|e| match e {
                FsError::NotWritable {
                    kind: FileKind::Symlink,
                    ..
                } => CliError::failed(format!(
                    "{e} (name the file itself; without --out the output goes to stdout)"
                )),
                e => e.into(),
            }),
        None => {
            let mut stdout = std::io::stdout().lock();
            let res = stdout
                .write_all(contents.as_bytes())
                .and_then(|()| {
                    if contents.ends_with('\n') {
                        Ok(())
                    } else {
                        stdout.write_all(b"\n")
                    }
                })
                .and_then(|()| stdout.flush());
            match res {
                // The reader went away (`| head`): nothing left to tell it.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("cannot write to stdout"),
            }
        }
    }
}
