//! PEM encoding, and private keys on disk (PKCS#8 PEM, 0600).

use std::path::Path;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::error::FsError;
use crate::read::{read_held_secret, read_secret, MAX_FILE_BYTES};
use crate::write::create_secret;

/// PEM-encodes DER bytes under `label`, with 64-column base64 lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Creates a new private key file holding `pkcs8_der` as PKCS#8 PEM: mode 0600 from creation
/// on, never overwriting anything already at `path` (see [`create_secret`]).
pub fn write_private_key(path: &Path, pkcs8_der: &[u8]) -> Result<(), FsError> {
    create_secret(path, pem_encode("PRIVATE KEY", pkcs8_der).as_bytes())
}

/// Reads a PKCS#8 PEM private key, refusing a file that group or others can access (see
/// [`read_secret`]). Returns the PKCS#8 DER.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, FsError> {
    pkcs8_of(path, &read_secret(path, MAX_FILE_BYTES)?)
}

/// [`read_private_key`] for a credential directory's key: also refused unless the reader holds
/// it and every directory and link on the way to it (see [`read_held_secret`]).
pub fn read_held_private_key(path: &Path) -> Result<Vec<u8>, FsError> {
    pkcs8_of(path, &read_held_secret(path, MAX_FILE_BYTES)?)
}

/// The PKCS#8 DER of the PEM key read from `path`.
fn pkcs8_of(path: &Path, pem: &[u8]) -> Result<Vec<u8>, FsError> {
    let key = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| FsError::BadKey {
        path: path.to_path_buf(),
        reason: not_pkcs8(pem, path, &e),
    })?;
    Ok(key.secret_pkcs8_der().to_vec())
}

/// What a file that holds no PKCS#8 PEM key holds instead, and what to do about it.
fn not_pkcs8(pem: &[u8], path: &Path, e: &rustls_pki_types::pem::Error) -> String {
    let text = String::from_utf8_lossy(pem);
    let has = |label: &str| text.contains(&format!("-----BEGIN {label}-----"));
    let file = path.display();
    if has("EC PRIVATE KEY") || has("RSA PRIVATE KEY") {
        format!(
            "an EC (SEC1) or RSA (PKCS#1) key: convert it with `openssl pkcs8 -topk8 -nocrypt -in {file} -out NEW.pem` and use NEW.pem (mode 0600)"
        )
    } else if has("ENCRYPTED PRIVATE KEY") {
        format!(
            "an encrypted key: agentid reads unencrypted keys, kept private by their mode (0600); decrypt it with `openssl pkcs8 -in {file} -out NEW.pem` and use NEW.pem (mode 0600)"
        )
    } else if has("CERTIFICATE") {
        "a certificate, not a key: name the key file (key.pem)".to_owned()
    } else if !text.contains("-----BEGIN ") {
        "no PEM block: a key file holds `-----BEGIN PRIVATE KEY-----` (PKCS#8 PEM); a DER key converts with `openssl pkcs8 -topk8 -nocrypt -inform DER -in FILE -out NEW.pem`".to_owned()
    } else {
        format!("no `-----BEGIN PRIVATE KEY-----` block that parses ({e})")
    }
}
