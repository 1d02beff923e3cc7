//! PEM encoding, and private keys on disk (PKCS#8 PEM, 0600).

use std::path::Path;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::error::FsError;
use crate::read::{read_secret, MAX_FILE_BYTES};
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
    let pem = read_secret(path, MAX_FILE_BYTES)?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| FsError::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(key.secret_pkcs8_der().to_vec())
}
