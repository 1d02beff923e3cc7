//! Files of the CA directory: PEM certificates and private keys with strict permissions.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::error::{CaError, Result};

/// File names inside a CA directory.
pub mod files {
    /// The self-signed root certificate (PEM).
    pub const ROOT_CERT: &str = "root.pem";
    /// The root private key (PKCS#8 PEM). Keep it offline once the intermediate is made.
    pub const ROOT_KEY: &str = "root.key";
    /// The issuing intermediate certificate (PEM).
    pub const INTERMEDIATE_CERT: &str = "intermediate.pem";
    /// The issuing intermediate private key (PKCS#8 PEM).
    pub const INTERMEDIATE_KEY: &str = "intermediate.key";
    /// The grant-signing authority key (PKCS#8 PEM).
    pub const GRANT_KEY: &str = "grant.key";
    /// The revocation-list signing key (PKCS#8 PEM).
    pub const REVOCATION_KEY: &str = "revocation.key";
    /// CA configuration (trust domain, key type).
    pub const CONFIG: &str = "config.toml";
    /// Issuance policy.
    pub const POLICY: &str = "policy.toml";
    /// The SQLite store.
    pub const DB: &str = "ca.db";
    /// The audit log (JSON lines).
    pub const AUDIT: &str = "audit.jsonl";
}

/// Writes a new private key file with mode 0600 from creation on (never chmod after the fact);
/// refuses to overwrite an existing file.
pub(crate) fn write_private_key(path: &Path, pkcs8_der: &[u8]) -> Result<()> {
    let pem = pem_encode("PRIVATE KEY", pkcs8_der);
    write_new_file(path, pem.as_bytes(), 0o600)
}

/// Writes a new public file (certificate, config) with mode 0644; refuses to overwrite.
pub(crate) fn write_public_file(path: &Path, contents: &[u8]) -> Result<()> {
    write_new_file(path, contents, 0o644)
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::AlreadyInitialized {
                    path: path.to_path_buf(),
                }
            } else {
                CaError::io(path, e)
            }
        })?;
    f.write_all(contents).map_err(|e| CaError::io(path, e))?;
    f.sync_all().map_err(|e| CaError::io(path, e))?;
    Ok(())
}

/// Reads a PKCS#8 private key file, refusing it when group or others have any access to it.
///
/// The mode is taken from the opened file handle, so the file checked is the file read.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>> {
    let mut f = File::open(path).map_err(|e| CaError::io(path, e))?;
    let meta = f.metadata().map_err(|e| CaError::io(path, e))?;
    if !meta.is_file() {
        return Err(CaError::material(path, "not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::InsecureKeyFile {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| CaError::io(path, e))?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(&buf)
        .map_err(|e| CaError::material(path, format!("not a PKCS#8 PEM private key: {e}")))?;
    Ok(key.secret_pkcs8_der().to_vec())
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let buf = std::fs::read(path).map_err(|e| CaError::io(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&buf)
        .collect::<core::result::Result<Vec<_>, _>>()
        .map_err(|e| CaError::material(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(CaError::material(path, "no CERTIFICATE in file"));
    }
    Ok(certs)
}

/// Reads exactly one certificate from a PEM file.
pub(crate) fn read_one_certificate(path: &Path) -> Result<CertificateDer<'static>> {
    let mut certs = read_certificates(path)?;
    if certs.len() != 1 {
        return Err(CaError::material(path, "expected exactly one certificate"));
    }
    certs
        .pop()
        .ok_or_else(|| CaError::material(path, "no certificate"))
}

/// PEM-encodes DER bytes with 64-column base64 lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let bytes = b64.as_bytes();
    for chunk in bytes.chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// PEM of one certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
