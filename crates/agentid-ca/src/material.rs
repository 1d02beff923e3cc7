//! Files of the CA directory: PEM certificates and private keys with strict permissions.

use std::path::{Path, PathBuf};

use agentid_fs::{FsError, MAX_FILE_BYTES};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

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
    /// The key that signs checkpoints of the store's audit chain (PKCS#8 PEM).
    pub const AUDIT_KEY: &str = "audit.key";
    /// Its public key (SPKI PEM), what `agentid audit verify` checks checkpoints with.
    pub const AUDIT_PUB: &str = "audit.pub";
    /// The bundle-signing key (PKCS#8 PEM): signs the agentid bundle. Keep it offline with the
    /// root key; the CA service never needs it.
    pub const BUNDLE_SIGNING_KEY: &str = "bundle-signing.key";
    /// Its public key (SPKI PEM), which watchers pin to accept grant and revocation keys.
    pub const BUNDLE_SIGNING_PUB: &str = "bundle-signing.pub";
    /// The signed agentid bundle the service serves (`GET /v1/bundle/agentid`).
    pub const AGENTID_BUNDLE: &str = "agentid-bundle.jws";
}

/// Writes a new private key file with mode 0600 from creation on (never chmod after the fact);
/// refuses to overwrite an existing file (or a link planted at its name).
pub(crate) fn write_private_key(path: &Path, pkcs8_der: &[u8]) -> Result<()> {
    agentid_fs::write_private_key(path, pkcs8_der).map_err(fs_error)
}

/// Writes a new file of the CA directory (certificate, config, public key) with mode 0600: the
/// directory is the operator's alone, even its public files; refuses to overwrite.
pub(crate) fn write_public_file(path: &Path, contents: &[u8]) -> Result<()> {
    agentid_fs::create_secret(path, contents).map_err(fs_error)
}

/// Makes the CA directory `dir` private (mode 0700): creates it (and missing parents) so, or
/// takes group and others' access away from an existing one; a directory (or link) on the way
/// that others control is refused before anything is changed (see
/// [`agentid_fs::make_private_dir`]).
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    agentid_fs::make_private_dir(dir).map_err(fs_error)
}

/// Reads a PKCS#8 private key file of the CA directory, refusing it when group or others have
/// any access to it, or when the reader does not hold it and every directory and link on the
/// way to it (`agentid_fs::read_held_private_key`): whoever could put a key there would have the
/// CA sign with it.
///
/// The mode and owner are taken from the opened file handle, so the file checked is the file
/// read.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>> {
    agentid_fs::read_held_private_key(path).map_err(fs_error)
}

/// Reads a whole file of the CA directory, only if the reader holds it (`agentid_fs::read_held`).
pub(crate) fn read_held(path: &Path, limit: u64) -> Result<Vec<u8>> {
    agentid_fs::read_held(path, limit).map_err(fs_error)
}

/// Checks that the reader holds `path`, a file of the CA directory it opens itself (the SQLite
/// store), as [`read_held`] checks the files it reads (`agentid_fs::check_held`).
pub(crate) fn check_held(path: &Path) -> Result<()> {
    agentid_fs::check_held(path).map_err(fs_error)
}

fn fs_error(e: FsError) -> CaError {
    match e {
        FsError::Io { path, source } => CaError::io(path, source),
        FsError::AlreadyExists { path } => CaError::AlreadyInitialized { path },
        e @ FsError::NotHeld { .. } => CaError::NotHeld(e),
        FsError::InsecureMode { path, mode } => CaError::InsecureKeyFile { path, mode },
        FsError::BadKey { path, reason } => {
            CaError::material(path, format!("not a PKCS#8 PEM private key: {reason}"))
        }
        e => CaError::material(e.path(), e.to_string()),
    }
}

/// The largest `config.toml` or `policy.toml` a CA reads.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a CA directory's configuration file (`config.toml`, `policy.toml`) as UTF-8: a regular
/// file of at most [`MAX_CONFIG_BYTES`] (a FIFO or a huge file there is refused, not waited for
/// or read into memory), held by the reader (`agentid_fs::read_held`: whoever could write the
/// policy would choose what is issued, and to whom).
pub(crate) fn read_config_text(path: &Path) -> Result<String> {
    let bytes = read_held(path, MAX_CONFIG_BYTES)?;
    String::from_utf8(bytes).map_err(|_| CaError::material(path, "not UTF-8 text"))
}

/// Reads every certificate of a PEM file of the CA directory (at least one), only if the reader
/// holds it (`agentid_fs::read_held`): the CA's root and intermediate are what it issues under.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let buf = read_held(path, MAX_FILE_BYTES)?;
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
    agentid_fs::pem_encode(label, der)
}

/// PEM of one certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// PEM of a SubjectPublicKeyInfo (`PUBLIC KEY`).
pub fn public_key_pem(spki_der: &[u8]) -> String {
    pem_encode("PUBLIC KEY", spki_der)
}

/// Reads one `PUBLIC KEY` (SubjectPublicKeyInfo) PEM file of the CA directory and returns its
/// DER, only if the reader holds it (`agentid_fs::read_held`): `audit.pub` and
/// `bundle-signing.pub` are what the CA's audit chain and signed bundle are checked with.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>> {
    public_key_of(path, &read_held(path, MAX_FILE_BYTES)?)
}

/// The DER of the one `PUBLIC KEY` PEM `buf` (read from `path`) holds.
pub(crate) fn public_key_of(path: &Path, buf: &[u8]) -> Result<Vec<u8>> {
    use rustls_pki_types::SubjectPublicKeyInfoDer;
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(buf)
        .map_err(|e| CaError::material(path, format!("not a PUBLIC KEY PEM: {e}")))?;
    Ok(spki.as_ref().to_vec())
}
