//! Reading and writing the files the commands exchange: PEM certificates, PKCS#8 keys (0600),
//! chains and JSON.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::error::{CliError, CliResult, Context};

/// Largest file any command reads (certificates, chains, bundles, lists): 1 MiB.
const MAX_INPUT_BYTES: u64 = 1024 * 1024;

/// Reads a whole input file, refusing anything above 1 MiB.
pub fn read(path: &Path) -> CliResult<Vec<u8>> {
    let f = File::open(path).context(format!("cannot read {}", path.display()))?;
    read_bounded(f, path)
}

fn read_bounded(f: File, path: &Path) -> CliResult<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut buf)
        .context(format!("cannot read {}", path.display()))?;
    if buf.len() as u64 > MAX_INPUT_BYTES {
        return Err(CliError::failed(format!(
            "{} is larger than 1 MiB",
            path.display()
        )));
    }
    Ok(buf)
}

/// Reads a UTF-8 text file with surrounding whitespace removed (chains, revocation lists).
pub fn read_text(path: &Path) -> CliResult<String> {
    let bytes = read(path)?;
    let s = String::from_utf8(bytes)
        .map_err(|_| CliError::failed(format!("{} is not UTF-8 text", path.display())))?;
    Ok(s.trim().to_owned())
}

/// Reads every certificate of a PEM file (at least one), leaf first as written.
pub fn read_certs(path: &Path) -> CliResult<Vec<CertificateDer<'static>>> {
    let buf = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&buf)
        .collect::<Result<Vec<_>, _>>()
        .context(format!("{}: bad PEM", path.display()))?;
    if certs.is_empty() {
        return Err(CliError::failed(format!(
            "{}: no CERTIFICATE in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads a PKCS#8 PEM private key, refusing a file that group or others can access: a task key
/// must stay with its holder.
pub fn read_private_key(path: &Path) -> CliResult<Vec<u8>> {
    let f = File::open(path).context(format!("cannot read {}", path.display()))?;
    // The mode is read from the open handle, so the file checked is the file read.
    let meta = f
        .metadata()
        .context(format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Err(CliError::failed(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CliError::failed(format!(
            "{} has mode {mode:03o}: a private key must not be accessible to group or others (chmod 600)",
            path.display()
        )));
    }
    let buf = read_bounded(f, path)?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(&buf)
        .context(format!("{}: not a PKCS#8 PEM private key", path.display()))?;
    Ok(key.secret_pkcs8_der().to_vec())
}

/// PEM-encodes DER with 64-column lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Creates a new private key file, mode 0600 from creation on; never overwrites.
pub fn write_new_private_key(path: &Path, pkcs8_der: &[u8]) -> CliResult<()> {
    let pem = pem("PRIVATE KEY", pkcs8_der);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::failed(format!(
                    "{} already exists: refusing to overwrite a key",
                    path.display()
                ))
            } else {
                CliError::failed(format!("cannot create {}: {e}", path.display()))
            }
        })?;
    f.write_all(pem.as_bytes())
        .context(format!("cannot write {}", path.display()))?;
    f.sync_all()
        .context(format!("cannot write {}", path.display()))
}

/// Writes a public file (certificate, bundle, chain) with mode 0644, replacing it atomically:
/// readers see the old or the new content, never a mix.
pub fn write_public(path: &Path, contents: &[u8]) -> CliResult<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::failed(format!(
            "cannot write {}: {e}",
            path.display()
        )));
    }
    Ok(())
}

/// Creates the output directory if needed (mode 0700 when created).
pub fn ensure_dir(dir: &Path) -> CliResult<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .context(format!("cannot create directory {}", dir.display()))
}

/// Writes the command's data output to `out`, or to stdout when `None`.
pub fn write_output(out: Option<&Path>, contents: &str) -> CliResult<()> {
    match out {
        Some(p) => write_public(p, contents.as_bytes()),
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
