//! Small helpers: time conversion, randomness, digests, encodings.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;

use crate::error::{CaError, Result};

/// Unix seconds of `now`; refuses times before the epoch.
pub(crate) fn unix(now: SystemTime) -> Result<u64> {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| CaError::InvalidRequest("time before the Unix epoch".into()))
}

/// An `OffsetDateTime` for rcgen.
pub(crate) fn datetime(secs: u64) -> Result<::time::OffsetDateTime> {
    let s = i64::try_from(secs).map_err(|_| CaError::InvalidRequest("time out of range".into()))?;
    ::time::OffsetDateTime::from_unix_timestamp(s)
        .map_err(|_| CaError::InvalidRequest("time out of range".into()))
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| CaError::Random)?;
    Ok(buf)
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh random certificate serial: 16 random bytes with the top bit set, so the number has
/// exactly 128 bits (and 127 random ones); rcgen encodes it as a positive INTEGER.
pub(crate) fn random_serial() -> Result<[u8; 16]> {
    let mut s = random::<16>()?;
    if let Some(first) = s.first_mut() {
        *first |= 0x80;
    }
    Ok(s)
}

/// A fresh token identifier (`jti`): base64url of 16 random bytes.
pub(crate) fn random_jti() -> Result<String> {
    Ok(b64url(&random::<16>()?))
}
