//! DANGER: raw token signing, for test-vector generators and negative tests only.
//!
//! Compiled only with the non-default feature `danger-raw-signing`. It signs arbitrary header
//! and payload bytes, which is exactly what the typed builders exist to prevent: never enable
//! this feature in an agent.

pub use crate::crypto::sha256;
use crate::crypto::{JwsSigner, TaskKey};
use crate::encoding::b64_encode;
use crate::error::Result;

fn compact(
    header: &[u8],
    payload: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<String> {
    let mut token = b64_encode(header);
    token.push('.');
    token.push_str(&b64_encode(payload));
    let sig = sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&b64_encode(&sig));
    Ok(token)
}

/// Signs `header` and `payload` (raw JSON bytes, not checked) with a task key.
pub fn sign_with_task_key(key: &TaskKey, header: &[u8], payload: &[u8]) -> Result<String> {
    compact(header, payload, |input| key.sign(input))
}

/// Signs `header` and `payload` (raw JSON bytes, not checked) with an authority key.
pub fn sign_with_authority_key(
    key: &dyn JwsSigner,
    header: &[u8],
    payload: &[u8],
) -> Result<String> {
    compact(header, payload, |input| key.sign(input))
}

/// Base64url without padding, as the tokens use it.
pub fn base64url(bytes: &[u8]) -> String {
    b64_encode(bytes)
}
