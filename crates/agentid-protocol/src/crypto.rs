//! Keys and signatures: the only module of this crate that touches the signature backend
//! (aws-lc-rs), so a port to another backend stays local (the Ed25519 point checks are plain
//! field arithmetic in `ed25519_check`, tested against curve25519-dalek).
//!
//! * **ES256**: ECDSA P-256 with SHA-256, signatures as the 64-byte fixed `r || s` (JWS, P1363).
//!   Public keys are 65-byte uncompressed points, validated on the curve; compressed points are
//!   refused.
//! * **Ed25519**: RFC 8032 (cofactorless, `S < L` enforced by aws-lc). Because aws-lc-rs accepts
//!   any 32 bytes as an Ed25519 public key, this module checks canonical encoding, decompression
//!   and small order itself (spec/PROTOCOL.md section 5.1; "Signature edge cases" in
//!   section 19).
//!
//! Private task keys have no public signing method: only the typed token builders of this crate
//! sign with them. Authority keys sign through [`JwsSigner`], which an HSM or KMS can implement.

#[cfg(not(feature = "aws-lc-rs"))]
compile_error!(
    "agentid-protocol needs a signature backend: enable the `aws-lc-rs` feature (the only one)"
);

use core::fmt;
use std::sync::{Arc, OnceLock};

use crate::ed25519_check;
use crate::error::{Error, ErrorCode, Result};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, UnparsedPublicKey,
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519,
};

/// A JWS signature algorithm supported by agentid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256 (`ES256`), 64-byte `r || s` signatures.
    Es256,
    /// Ed25519 (`Ed25519`, RFC 9864; `EdDSA` is accepted on input).
    Ed25519,
}

impl Algorithm {
    /// Parses a JOSE `alg` value: `ES256`, `Ed25519` or `EdDSA` (exact case). Anything else,
    /// including `none`, `HS256` and `es256`, is `None`.
    pub fn from_header(alg: &str) -> Option<Self> {
        match alg {
            "ES256" => Some(Self::Es256),
            "Ed25519" | "EdDSA" => Some(Self::Ed25519),
            _ => None,
        }
    }

    /// The name issuers write: `ES256` or `Ed25519`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Ed25519 => "Ed25519",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Length of an uncompressed P-256 point (`0x04 || x || y`).
const P256_POINT_LEN: usize = 65;
/// Length of an Ed25519 public key.
const ED25519_KEY_LEN: usize = 32;
/// Length of an ES256 or Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// DER prefix of a SubjectPublicKeyInfo for id-ecPublicKey / prime256v1 with a 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of a SubjectPublicKeyInfo for id-Ed25519 (1.3.101.112).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A validated public key. It can only be built by the parsing constructors, so holding one
/// means the key passed every check (point on the curve; Ed25519 canonical and not small order).
///
/// Equality is equality of the raw bytes (the 65-byte uncompressed point or the 32-byte key),
/// which is how chains compare a `cnf` key with a certificate's key.
#[derive(Clone)]
pub struct PublicKey {
    bytes: KeyBytes,
    /// The P-256 key as the backend parsed it when the point was validated, kept so that every
    /// signature check with this key reuses it instead of parsing the point again (cheap to
    /// clone). Not part of the key's identity: equality, order and hash are those of `bytes`.
    parsed: Option<Arc<ParsedPublicKey>>,
    /// The RFC 7638 thumbprint, computed on first use ([`PublicKey::thumbprint`]) and kept: a
    /// chain's keys are named by it several times per verification (revocation lookups, the
    /// token cache), and a cached token's `cnf` key on every use. Not part of the key's identity.
    jkt: OnceLock<[u8; JKT_LEN]>,
}

/// Length of a thumbprint: base64url of 32 bytes.
pub(crate) const JKT_LEN: usize = 43;

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PublicKey {}

impl core::hash::Hash for PublicKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum KeyBytes {
    P256([u8; P256_POINT_LEN]),
    Ed25519([u8; ED25519_KEY_LEN]),
}

fn bad_key(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadKey, detail)
}

/// A failure of the backend itself (RNG, key generation, signing): not caused by input.
fn backend_error(what: &str) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("crypto backend failure: {what}"),
    )
}

/// p = 2^255 - 19, little-endian.
const ED25519_P_LE: [u8; 32] = [
    0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
];

/// Whether the y coordinate (sign bit cleared) of an Ed25519 encoding is below p.
fn ed25519_y_is_canonical(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    y[31] &= 0x7f;
    // Little-endian comparison: the most significant differing byte decides.
    for (a, p) in y.iter().rev().zip(ED25519_P_LE.iter().rev()) {
        if a != p {
            return a < p;
        }
    }
    false // y == p
}

/// Whether the Ed25519 encoding `bytes` (y reduced, sign bit ignored) has x = 0, that is
/// y = 1 or y = p - 1 (the solutions of y^2 = 1 on the curve).
fn ed25519_x_is_zero(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    y[31] &= 0x7f;
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut p_minus_one = ED25519_P_LE;
    p_minus_one[0] -= 1;
    y == one || y == p_minus_one
}

impl PublicKey {
    /// A P-256 key from its 65-byte uncompressed SEC1 encoding (`0x04 || x || y`).
    ///
    /// Compressed points, the point at infinity and points not on the curve are `BadKey`.
    pub fn from_p256_uncompressed(bytes: &[u8]) -> Result<Self> {
        let point: [u8; P256_POINT_LEN] = bytes.try_into().map_err(|_| {
            bad_key(format!(
                "P-256 key must be a {P256_POINT_LEN}-byte uncompressed point, got {} bytes",
                bytes.len()
            ))
        })?;
        if point[0] != 0x04 {
            return Err(bad_key("P-256 key is not an uncompressed point"));
        }
        // aws-lc decodes the point and checks that it lies on the curve with coordinates < p.
        let parsed = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .map_err(|e| bad_key(format!("P-256 point rejected: {e}")))?;
        Ok(Self {
            bytes: KeyBytes::P256(point),
            parsed: Some(Arc::new(parsed)),
            jkt: OnceLock::new(),
        })
    }

    /// An Ed25519 key from its 32-byte encoding.
    ///
    /// Refused (`BadKey`): another length; y >= 2^255-19; the sign bit set when x = 0; a point
    /// that does not decompress; a point of small order (the 8 torsion points), which would let
    /// one signature verify for many messages.
    pub fn from_ed25519(bytes: &[u8]) -> Result<Self> {
        let key: [u8; ED25519_KEY_LEN] = bytes.try_into().map_err(|_| {
            bad_key(format!(
                "Ed25519 key must be {ED25519_KEY_LEN} bytes, got {}",
                bytes.len()
            ))
        })?;
        if !ed25519_y_is_canonical(&key) {
            return Err(bad_key("Ed25519 key: y is not reduced modulo p"));
        }
        // Whether the point decompresses, from its quadratic character alone (the point itself
        // is never needed here: aws-lc decodes it again for each signature check).
        if !ed25519_check::decompresses(&key) {
            return Err(bad_key("Ed25519 key: not a curve point"));
        }
        // -0 (x = 0 with the sign bit set) decompresses too. With y already reduced, that is the
        // only encoding whose re-encoding differs, and x = 0 only for y = 1 or y = p - 1: test
        // those directly instead of re-encoding (which costs a field inversion).
        if key[31] & 0x80 != 0 && ed25519_x_is_zero(&key) {
            return Err(bad_key("Ed25519 key: non-canonical encoding"));
        }
        if ed25519_check::is_small_order(&key) {
            return Err(bad_key("Ed25519 key: small-order point"));
        }
        Ok(Self {
            bytes: KeyBytes::Ed25519(key),
            parsed: None,
            jkt: OnceLock::new(),
        })
    }

    /// Parses a DER SubjectPublicKeyInfo: id-ecPublicKey with prime256v1 and an uncompressed
    /// point, or id-Ed25519. Anything else (other curves or algorithms, parameters, compressed
    /// points, trailing bytes) is `BadKey`.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        if let Some(point) = der.strip_prefix(P256_SPKI_PREFIX.as_slice()) {
            return Self::from_p256_uncompressed(point);
        }
        if let Some(key) = der.strip_prefix(ED25519_SPKI_PREFIX.as_slice()) {
            return Self::from_ed25519(key);
        }
        Err(bad_key(
            "SubjectPublicKeyInfo is neither P-256 (uncompressed) nor Ed25519",
        ))
    }

    /// The DER SubjectPublicKeyInfo of this key.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let prefix: &[u8] = match self.bytes {
            KeyBytes::P256(_) => &P256_SPKI_PREFIX,
            KeyBytes::Ed25519(_) => &ED25519_SPKI_PREFIX,
        };
        let mut out = Vec::with_capacity(prefix.len() + self.raw_bytes().len());
        out.extend_from_slice(prefix);
        out.extend_from_slice(self.raw_bytes());
        out
    }

    /// The RFC 7638 thumbprint ([`PublicKey::thumbprint`]) as ASCII, computed once per key.
    pub(crate) fn thumbprint_ascii(&self) -> &[u8; JKT_LEN] {
        self.jkt.get_or_init(|| self.compute_thumbprint())
    }

    /// The RFC 7638 thumbprint ([`PublicKey::thumbprint`]), computed once per key.
    pub(crate) fn thumbprint_str(&self) -> &str {
        // base64url is ASCII.
        core::str::from_utf8(self.thumbprint_ascii()).unwrap_or_default()
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.bytes {
            KeyBytes::P256(_) => Algorithm::Es256,
            KeyBytes::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// The raw key: the 65-byte uncompressed point or the 32-byte Ed25519 key.
    pub fn raw_bytes(&self) -> &[u8] {
        match &self.bytes {
            KeyBytes::P256(b) => b,
            KeyBytes::Ed25519(b) => b,
        }
    }

    /// Verifies `sig` over `msg` with this key.
    ///
    /// `alg` is the token's `alg`; it must be this key's algorithm (`AlgMismatch` otherwise), so
    /// a header can never choose how a key is used. Any other failure, including a signature of
    /// the wrong length, is `BadSignature`.
    pub fn verify_signature(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> Result<()> {
        verify(self, alg, msg, sig)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKey({}, {})",
            self.algorithm(),
            crate::encoding::b64_encode(self.raw_bytes())
        )
    }
}

/// Verifies `sig` over `msg`: `alg` must equal the key's algorithm (`AlgMismatch`); ES256 takes
/// a 64-byte `r || s`, Ed25519 a 64-byte RFC 8032 signature with `S < L`; else `BadSignature`.
pub(crate) fn verify(key: &PublicKey, alg: Algorithm, msg: &[u8], sig: &[u8]) -> Result<()> {
    check_alg_and_length(key, alg, sig)?;
    let result = match (&key.bytes, &key.parsed) {
        (KeyBytes::P256(_), Some(parsed)) => parsed.verify_sig(msg, sig),
        (KeyBytes::P256(point), None) => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(msg, sig)
        }
        (KeyBytes::Ed25519(k), _) => UnparsedPublicKey::new(&ED25519, k).verify(msg, sig),
    };
    result.map_err(|_| does_not_verify(alg))
}

/// [`verify`] of the signing input `compact[..signed]` of a compact JWS, which also gives the
/// SHA-256 of the whole `compact` where that costs no second pass: ES256 hashes the signing
/// input with SHA-256 before the curve arithmetic, and those are the first blocks of the
/// token's hash (the next link's `prev`), so they are compressed once and the digest is
/// verified. Ed25519 hashes with SHA-512 inside the signature scheme: `None` (hash it apart).
///
/// Same checks, order and verdict as [`verify`] on `compact[..signed]`: ECDSA verifies the
/// SHA-256 of the message, given here instead of the message.
pub(crate) fn verify_and_hash(
    key: &PublicKey,
    alg: Algorithm,
    compact: &[u8],
    signed: usize,
    sig: &[u8],
) -> Result<Option<[u8; 32]>> {
    let (msg, rest) = compact.split_at(signed.min(compact.len()));
    if !digest_verifies(key, alg) {
        return verify(key, alg, msg, sig).map(|()| None);
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(msg);
    verify_digest(
        key,
        alg,
        msg,
        &SigningDigest(ctx.clone().finish(), msg.len()),
        sig,
    )?;
    ctx.update(rest);
    let mut whole = [0u8; 32];
    whole.copy_from_slice(ctx.finish().as_ref());
    Ok(Some(whole))
}

/// The SHA-256 of a JWS signing input, as ES256 verification takes it: taken where the same
/// bytes were hashed for another reason (a chain's `cth` starts with its grant).
///
/// It keeps the length of what it hashed: a digest given with a message of another length is
/// not used ([`verify_digest`] verifies the message then).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SigningDigest(digest::Digest, usize);

/// Whether `key` verifies `alg` signatures from the message's SHA-256 ([`verify_digest`]).
fn digest_verifies(key: &PublicKey, alg: Algorithm) -> bool {
    alg == Algorithm::Es256 && key.parsed.is_some()
}

/// [`verify`] of `msg`, whose SHA-256 `digest` was taken already: an ES256 key verifies the
/// digest (ECDSA verifies exactly the message's SHA-256: same checks, order and verdict), any
/// other key or algorithm the message. `digest` must be the SHA-256 of `msg`.
pub(crate) fn verify_digest(
    key: &PublicKey,
    alg: Algorithm,
    msg: &[u8],
    digest: &SigningDigest,
    sig: &[u8],
) -> Result<()> {
    match key.parsed.as_ref().filter(|_| alg == Algorithm::Es256) {
        Some(parsed) if digest.1 == msg.len() => {
            check_alg_and_length(key, alg, sig)?;
            parsed
                .verify_digest_sig(&digest.0, sig)
                .map_err(|_| does_not_verify(alg))
        }
        _ => verify(key, alg, msg, sig),
    }
}

fn does_not_verify(alg: Algorithm) -> Error {
    Error::new(
        ErrorCode::BadSignature,
        format!("{alg} signature does not verify"),
    )
}

/// The checks [`verify`] makes before the signature: `alg` is the key's, the signature's length.
fn check_alg_and_length(key: &PublicKey, alg: Algorithm, sig: &[u8]) -> Result<()> {
    if alg != key.algorithm() {
        return Err(Error::new(
            ErrorCode::AlgMismatch,
            format!("alg {alg} used with a {} key", key.algorithm()),
        ));
    }
    if sig.len() != SIGNATURE_LEN {
        return Err(Error::new(
            ErrorCode::BadSignature,
            format!(
                "{alg} signature must be {SIGNATURE_LEN} bytes, got {}",
                sig.len()
            ),
        ));
    }
    Ok(())
}

/// The hash of a token or chain as `prev`, `cth` and `rth` carry it (spec/PROTOCOL.md section
/// 3.5): base64url (no padding) of SHA-256 of the exact transmitted string.
pub fn token_hash(compact: &str) -> String {
    crate::encoding::b64_encode(&sha256(compact.as_bytes()))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 of `data`, of its first `prefix` bytes (all of it if `prefix` is past the end),
/// and, as ES256 verifies it, of its first `signed` bytes (at most `prefix`), in one pass: the
/// blocks they share are compressed once (a chain's `cth`, its grant's hash, the `prev` of the
/// first link, and the grant's signing input).
pub(crate) fn sha256_with_prefix(
    data: &[u8],
    prefix: usize,
    signed: usize,
) -> ([u8; 32], [u8; 32], SigningDigest) {
    let prefix = prefix.min(data.len());
    let (head, tail) = data.split_at(prefix);
    let (signing, head_rest) = head.split_at(signed.min(prefix));
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(signing);
    let signing = SigningDigest(ctx.clone().finish(), signing.len());
    ctx.update(head_rest);
    let head_ctx = ctx.clone();
    ctx.update(tail);
    let mut whole = [0u8; 32];
    whole.copy_from_slice(ctx.finish().as_ref());
    let mut first = [0u8; 32];
    first.copy_from_slice(head_ctx.finish().as_ref());
    (whole, first, signing)
}

/// `N` bytes from the operating system's CSPRNG.
///
/// The backend reports failure through a `Result`; it is not caused by input and in practice
/// aws-lc aborts rather than return it.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| backend_error("system random number generator"))?;
    Ok(out)
}

/// Whether `der` is exactly one DER SEQUENCE (tag, definite length, nothing after it).
pub(crate) fn is_one_der_sequence(der: &[u8]) -> bool {
    let Some((&0x30, rest)) = der.split_first() else {
        return false;
    };
    let (len, body) = match rest {
        [n @ 0..=0x7f, body @ ..] => (usize::from(*n), body),
        [0x81, n @ 0x80..=0xff, body @ ..] => (usize::from(*n), body),
        [0x82, hi @ 0x01..=0xff, lo, body @ ..] => (usize::from(*hi) << 8 | usize::from(*lo), body),
        _ => return false,
    };
    body.len() == len
}

/// A software private key with its PKCS#8 document; shared by [`TaskKey`] and [`AuthorityKey`].
struct SoftwareKey {
    pair: KeyPair,
    public: PublicKey,
    pkcs8: Vec<u8>,
}

enum KeyPair {
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl SoftwareKey {
    fn generate(alg: Algorithm) -> Result<Self> {
        let rng = SystemRandom::new();
        let doc = match alg {
            Algorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            // PKCS#8 v1 (no embedded public key) is what OpenSSL writes and every reader takes.
            Algorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8v1(&rng),
        }
        .map_err(|_| backend_error("key generation"))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        // Some backend parsers ignore bytes after the document; we do not.
        if !is_one_der_sequence(der) {
            return Err(bad_key("PKCS#8 is not exactly one DER SEQUENCE"));
        }
        // The algorithm is detected by trying: a P-256 document never parses as Ed25519 and
        // vice versa. Other curves and RSA fail both.
        let (pair, public) =
            if let Ok(p) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                let public = PublicKey::from_p256_uncompressed(p.public_key().as_ref())?;
                (KeyPair::P256(p), public)
            } else if let Ok(p) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                let public = PublicKey::from_ed25519(p.public_key().as_ref())?;
                (KeyPair::Ed25519(p), public)
            } else {
                return Err(bad_key("PKCS#8 is not a P-256 or Ed25519 private key"));
            };
        Ok(Self {
            pair,
            public,
            pkcs8: der.to_vec(),
        })
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let sig = match &self.pair {
            KeyPair::P256(p) => p
                .sign(&SystemRandom::new(), msg)
                .map_err(|_| backend_error("ECDSA signing"))?,
            KeyPair::Ed25519(p) => p
                .try_sign(msg)
                .map_err(|_| backend_error("Ed25519 signing"))?,
        };
        Ok(sig.as_ref().to_vec())
    }

    fn fmt_debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only public information: the algorithm and the public key's thumbprint.
        f.debug_struct(name)
            .field("algorithm", &self.public.algorithm())
            .field("thumbprint", &self.public.thumbprint())
            .finish_non_exhaustive()
    }
}

impl Drop for SoftwareKey {
    fn drop(&mut self) {
        // Best effort without `unsafe`: clear our copy of the private key before it is freed.
        self.pkcs8.fill(0);
        core::hint::black_box(&self.pkcs8);
    }
}

/// An agent's private task key (the key of its per-task certificate and of its `cnf`).
///
/// It has **no public signing method**: only this crate's typed builders (links, hop proofs)
/// sign with it, so a prompt-injected caller cannot make it sign arbitrary bytes.
pub struct TaskKey(SoftwareKey);

impl TaskKey {
    /// Generates a new key.
    pub fn generate(alg: Algorithm) -> Result<Self> {
        SoftwareKey::generate(alg).map(Self)
    }

    /// Loads a PKCS#8 DER private key (P-256 or Ed25519, v1 or v2, as rcgen and OpenSSL write
    /// it). Anything else is `BadKey`.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        SoftwareKey::from_pkcs8_der(der).map(Self)
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.0.public.algorithm()
    }

    /// DANGER: the PKCS#8 DER of the private key, the one way the task key leaves this crate:
    /// for the TLS stack (the certificate's key) and for writing `key.pem` with mode 0600.
    /// Whoever holds these bytes can sign anything as this task; never log them, never hand
    /// them to application code or a model tool. To ask a CA for a certificate, use
    /// [`TaskKey::csr`], which does not expose the key.
    pub fn danger_pkcs8_der(&self) -> &[u8] {
        &self.0.pkcs8
    }

    /// Signs a JWS signing input. Crate-private on purpose (see the type's documentation).
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.0.sign(msg)
    }
}

// A task key is shared as `Arc<TaskKey>` (the TLS certificate resolver, the session that signs
// reauth proofs, the link builder): it must stay `Send + Sync`.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<TaskKey>();
    shareable::<std::sync::Arc<TaskKey>>();
};

impl fmt::Debug for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_debug("TaskKey", f)
    }
}

/// A signer for authority tokens (grants, revocation lists).
///
/// Implement it to keep an authority key in an HSM or KMS. `sign` must return the JWS signature
/// bytes for [`JwsSigner::algorithm`]: 64-byte `r || s` for ES256 (not DER), 64 bytes for Ed25519.
pub trait JwsSigner: Send + Sync {
    /// The signature algorithm.
    fn algorithm(&self) -> Algorithm;
    /// The public key, published in the trust bundle.
    fn public_key(&self) -> PublicKey;
    /// Signs the JWS signing input (`base64url(header) "." base64url(payload)`).
    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>>;
}

/// A software authority key (grant or revocation-list key) implementing [`JwsSigner`].
pub struct AuthorityKey(SoftwareKey);

impl AuthorityKey {
    /// Generates a new key.
    pub fn generate(alg: Algorithm) -> Result<Self> {
        SoftwareKey::generate(alg).map(Self)
    }

    /// Loads a PKCS#8 DER private key (P-256 or Ed25519). Anything else is `BadKey`.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        SoftwareKey::from_pkcs8_der(der).map(Self)
    }

    /// The PKCS#8 DER of the private key, for storage. Treat it as secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.0.pkcs8
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public
    }
}

impl JwsSigner for AuthorityKey {
    fn algorithm(&self) -> Algorithm {
        self.0.public.algorithm()
    }

    fn public_key(&self) -> PublicKey {
        self.0.public.clone()
    }

    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>> {
        self.0.sign(signing_input)
    }
}

impl fmt::Debug for AuthorityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_debug("AuthorityKey", f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::edwards::CompressedEdwardsY;

    #[test]
    fn a_digest_verifies_as_the_message_does() {
        // Every verdict of `verify` on a token's signing input is the verdict of
        // `verify_digest` with the input's SHA-256 and of `verify_and_hash` on the whole token,
        // which also gives the token's SHA-256 (ES256), or nothing to add (Ed25519).
        let code = |r: Result<()>| r.map_err(|e| e.code());
        for alg in [Algorithm::Es256, Algorithm::Ed25519] {
            let key = TaskKey::generate(alg).unwrap();
            let other = TaskKey::generate(alg).unwrap();
            let input = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0".to_vec();
            let good = key.sign(&input).unwrap();
            let mut flipped = good.clone();
            flipped[5] ^= 1;
            let short = good[..63].to_vec();
            let mut changed = input.clone();
            changed[3] ^= 1;
            for (msg, sig) in [
                (&input, &good),
                (&input, &flipped),
                (&input, &short),
                (&changed, &good),
            ] {
                for (pk, a) in [
                    (key.public_key(), alg),
                    (other.public_key(), alg),
                    (key.public_key(), Algorithm::Es256),
                    (key.public_key(), Algorithm::Ed25519),
                ] {
                    let expected = code(verify(pk, a, msg, sig));
                    let (_, _, digest) = sha256_with_prefix(msg, msg.len(), msg.len());
                    assert_eq!(code(verify_digest(pk, a, msg, &digest, sig)), expected);
                    // A digest of another length is not used: the message decides.
                    let (_, _, partial) = sha256_with_prefix(msg, msg.len(), 3);
                    assert_eq!(code(verify_digest(pk, a, msg, &partial, sig)), expected);
                    let compact = [&msg[..], b".c2ln"].concat();
                    let hashed = verify_and_hash(pk, a, &compact, msg.len(), sig);
                    assert_eq!(
                        code(hashed.as_ref().map(|_| ()).map_err(Clone::clone)),
                        expected
                    );
                    if let Ok(h) = hashed {
                        let es256 = a == Algorithm::Es256 && pk.algorithm() == Algorithm::Es256;
                        assert_eq!(h, es256.then(|| sha256(&compact)));
                    }
                }
            }
        }
    }

    #[test]
    fn a_hash_with_its_prefix_is_both_hashes_taken_apart() {
        // Lengths around the 64-byte block and its 55-byte padding limit, every split point
        // (and past the end: the whole input).
        for len in [0usize, 1, 54, 55, 56, 63, 64, 65, 119, 120, 128, 200, 1100] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            for prefix in 0..=len + 2 {
                for signed in [0, prefix / 2, prefix.saturating_sub(87), prefix, prefix + 1] {
                    let (whole, first, signing) = sha256_with_prefix(&data, prefix, signed);
                    assert_eq!(whole, sha256(&data), "{len} / {prefix}");
                    assert_eq!(first, sha256(&data[..prefix.min(len)]), "{len} / {prefix}");
                    assert_eq!(
                        signing.0.as_ref(),
                        sha256(&data[..signed.min(prefix).min(len)]),
                        "{len} / {prefix} / {signed}"
                    );
                }
            }
        }
    }

    /// The previous rule (re-encode and compare) and the direct test of x = 0 agree on every
    /// candidate: all keys near the special y values, with and without the sign bit, and a
    /// stream of pseudo-random encodings.
    #[test]
    fn ed25519_canonical_check_matches_reencoding() {
        let old_rule = |key: &[u8; 32]| -> core::result::Result<(), &'static str> {
            if !ed25519_y_is_canonical(key) {
                return Err("y");
            }
            let point = CompressedEdwardsY(*key).decompress().ok_or("decompress")?;
            if point.compress().to_bytes() != *key {
                return Err("non-canonical");
            }
            if point.is_small_order() {
                return Err("small-order");
            }
            Ok(())
        };
        let new_rule = |key: &[u8; 32]| match PublicKey::from_ed25519(key) {
            Ok(_) => Ok(()),
            Err(e) if e.detail().contains("reduced") => Err("y"),
            Err(e) if e.detail().contains("not a curve point") => Err("decompress"),
            Err(e) if e.detail().contains("non-canonical") => Err("non-canonical"),
            Err(e) if e.detail().contains("small-order") => Err("small-order"),
            Err(e) => panic!("unexpected {e}"),
        };
        let mut candidates: Vec<[u8; 32]> = Vec::new();
        for base in [[0u8; 32], ED25519_P_LE] {
            for delta in 0u8..4 {
                for sign in [0u8, 0x80] {
                    let mut k = base;
                    k[0] = k[0]
                        .wrapping_add(delta)
                        .wrapping_sub(if base[0] == 0 { 0 } else { 2 });
                    k[31] = (k[31] & 0x7f) | sign;
                    candidates.push(k);
                }
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut k = [0u8; 32];
            for b in k.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            candidates.push(k);
        }
        for k in &candidates {
            assert_eq!(old_rule(k), new_rule(k), "{k:02x?}");
        }
    }
    use crate::encoding::{b64_decode, b64_encode};

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Written by OpenSSL 3.0: `openssl genpkey` + `openssl pkcs8 -topk8 -nocrypt -outform DER`,
    // and the matching `openssl pkey -pubout -outform DER`.
    const OPENSSL_P256_PKCS8: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b02010104209f1caab472c8d764f35fc4e871603749863d2be62fa965763da7661c82c39d3ba1440342000415d0287ce6fd641d802f6812845f23615888b78b4d536af8f83a279fdeebf23ab86acd6562c8a500aee7654d1c375c7344ac0fc13cbf60dfd18ada208f2d50aa";
    const OPENSSL_P256_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d0301070342000415d0287ce6fd641d802f6812845f23615888b78b4d536af8f83a279fdeebf23ab86acd6562c8a500aee7654d1c375c7344ac0fc13cbf60dfd18ada208f2d50aa";
    const OPENSSL_P256_SPKI_COMPRESSED: &str = "3039301306072a8648ce3d020106082a8648ce3d0301070322000215d0287ce6fd641d802f6812845f23615888b78b4d536af8f83a279fdeebf23a";
    const OPENSSL_P256_SEC1: &str = "307702010104209f1caab472c8d764f35fc4e871603749863d2be62fa965763da7661c82c39d3ba00a06082a8648ce3d030107a1440342000415d0287ce6fd641d802f6812845f23615888b78b4d536af8f83a279fdeebf23ab86acd6562c8a500aee7654d1c375c7344ac0fc13cbf60dfd18ada208f2d50aa";
    const OPENSSL_ED25519_PKCS8: &str = "302e020100300506032b6570042204206d0d024699245ee5e468bcef8152a2dc15f6643b019acc14f9bdef973be0b996";
    const OPENSSL_ED25519_SPKI: &str =
        "302a300506032b65700321007471cd038899a1ee5b6608aa1555f34d4ce1b4d03ca896d876f512df196b0e12";
    const OPENSSL_P384_PKCS8: &str = "3081b6020100301006072a8648ce3d020106052b8104002204819e30819b02010104306d6c93ec007f49ee4302b46bce2aba7675f5f3aadcb618f4c14bf0f1b9ca8823458925f052850dd5e439489ffdd648b8a16403620004ccdb6787ce9ee98b4a3aeea35dfe4cc2d8e8da47eb2bb827d9ac9f5f947f067ceeddf1448439c6063cf1a09c30bc9c404ac1ffdaee568607434426ff088ee8dd455c6596a7545e376b95c95daf0f7d58827cf92e6905f7262b588e7fb4b4b422";
    const OPENSSL_P384_SPKI: &str = "3076301006072a8648ce3d020106052b8104002203620004ccdb6787ce9ee98b4a3aeea35dfe4cc2d8e8da47eb2bb827d9ac9f5f947f067ceeddf1448439c6063cf1a09c30bc9c404ac1ffdaee568607434426ff088ee8dd455c6596a7545e376b95c95daf0f7d58827cf92e6905f7262b588e7fb4b4b422";
    const OPENSSL_X25519_PKCS8: &str = "302e020100300506032b656e0422042010a9897c666dced20511f287cee3d5f8d733f17e32b06ab2930abb15876fa15f";
    const OPENSSL_ED448_SPKI: &str = "3043300506032b6571033a00d7ba54151a16dbfc10e5b284d4984c2860ec46ac4d1a9625536887b173d422d42756f8640075752c2b297b27c454d7414a2f6b065ba4679080";

    /// The eight small-order Ed25519 points in canonical encoding, plus the non-canonical ones
    /// that also decode to them (y = 1 and y = -1 with the sign bit, y = 0 with the sign bit).
    const ED25519_SMALL_ORDER: [&str; 8] = [
        "0100000000000000000000000000000000000000000000000000000000000000", // identity, order 1
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2
        "0000000000000000000000000000000000000000000000000000000000000000", // order 4
        "0000000000000000000000000000000000000000000000000000000000000080", // order 4
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", // order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", // order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", // order 8
    ];

    // RFC 7515 appendix A.3: an ES256 JWS and its key.
    const RFC7515_A3_JWS: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    const RFC7515_A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const RFC7515_A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    // RFC 8037 appendix A.4: an Ed25519 JWS and its key (A.2).
    const RFC8037_A4_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    const RFC8037_A2_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn rfc7515_key() -> PublicKey {
        let mut point = vec![4u8];
        point.extend(b64_decode(RFC7515_A3_X).unwrap());
        point.extend(b64_decode(RFC7515_A3_Y).unwrap());
        PublicKey::from_p256_uncompressed(&point).unwrap()
    }

    fn rfc8037_key() -> PublicKey {
        PublicKey::from_ed25519(&b64_decode(RFC8037_A2_X).unwrap()).unwrap()
    }

    /// (signing input, signature) of a compact JWS.
    fn jws_parts(jws: &str) -> (&[u8], Vec<u8>) {
        let (input, sig) = jws.rsplit_once('.').unwrap();
        (input.as_bytes(), b64_decode(sig).unwrap())
    }

    #[test]
    fn algorithm_from_header_table() {
        let cases = [
            ("ES256", Some(Algorithm::Es256)),
            ("Ed25519", Some(Algorithm::Ed25519)),
            ("EdDSA", Some(Algorithm::Ed25519)),
            ("es256", None),
            ("ed25519", None),
            ("EDDSA", None),
            ("none", None),
            ("None", None),
            ("HS256", None),
            ("RS256", None),
            ("PS256", None),
            ("ES384", None),
            ("ES256K", None),
            ("Ed448", None),
            ("", None),
            ("ES256 ", None),
        ];
        for (alg, want) in cases {
            assert_eq!(Algorithm::from_header(alg), want, "{alg:?}");
        }
        assert_eq!(Algorithm::Es256.as_str(), "ES256");
        assert_eq!(Algorithm::Ed25519.as_str(), "Ed25519");
    }

    #[test]
    fn p256_key_table() {
        let good = hex(OPENSSL_P256_SPKI)[26..].to_vec();
        let mut off_curve = good.clone();
        off_curve[64] ^= 1;
        let mut compressed_prefix = good.clone();
        compressed_prefix[0] = 0x02;
        let mut hybrid = good.clone();
        hybrid[0] = 0x06;
        let compressed = hex(OPENSSL_P256_SPKI_COMPRESSED)[26..].to_vec();
        let mut x_only_zero = vec![4u8];
        x_only_zero.extend([0u8; 64]);
        let mut max = vec![4u8];
        max.extend([0xffu8; 64]);
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("OpenSSL key", good.clone(), true),
            ("RFC 7515 key", rfc7515_key().raw_bytes().to_vec(), true),
            ("off curve", off_curve, false),
            ("compressed 33 bytes", compressed, false),
            ("0x02 prefix, 65 bytes", compressed_prefix, false),
            ("hybrid 0x06 prefix", hybrid, false),
            ("all-zero coordinates", x_only_zero, false),
            ("coordinates 2^256-1", max, false),
            ("64 bytes without prefix", good[1..].to_vec(), false),
            ("66 bytes", [good.as_slice(), &[0]].concat(), false),
            ("infinity", vec![0], false),
            ("empty", vec![], false),
        ];
        for (name, bytes, ok) in cases {
            let got = PublicKey::from_p256_uncompressed(&bytes);
            if ok {
                let key = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(key.algorithm(), Algorithm::Es256);
                assert_eq!(key.raw_bytes(), bytes.as_slice());
            } else {
                assert_eq!(got.unwrap_err().code(), ErrorCode::BadKey, "{name}");
            }
        }
    }

    #[test]
    fn ed25519_key_table() {
        let rfc = b64_decode(RFC8037_A2_X).unwrap();
        let mut flipped_sign = rfc.clone();
        flipped_sign[31] ^= 0x80; // the other x for the same y: still a valid key
        let le = |y: u64| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&y.to_le_bytes());
            b.to_vec()
        };
        let p_plus = |k: u8| {
            // p + k for small k, little-endian (p = 2^255 - 19).
            let mut b = hex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
            b[0] += k;
            b
        };
        let mut cases: Vec<(String, Vec<u8>, bool)> = vec![
            ("RFC 8037 key".into(), rfc.clone(), true),
            ("RFC 8037 key, other sign".into(), flipped_sign, true),
            ("y = p".into(), p_plus(0), false),
            (
                "y = p + 1 (identity, non-canonical)".into(),
                p_plus(1),
                false,
            ),
            ("y = p + 2".into(), p_plus(2), false),
            (
                "y = 2^255 - 1".into(),
                hex("ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
                false,
            ),
            ("y = 2^255 - 1, sign set".into(), vec![0xff; 32], false),
            (
                "y = 1, sign set (x = 0)".into(),
                hex("0100000000000000000000000000000000000000000000000000000000000080"),
                false,
            ),
            (
                "y = -1, sign set (x = 0)".into(),
                hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
                false,
            ),
            ("31 bytes".into(), rfc[..31].to_vec(), false),
            ("33 bytes".into(), [rfc.as_slice(), &[0]].concat(), false),
            ("empty".into(), vec![], false),
        ];
        for (i, so) in ED25519_SMALL_ORDER.iter().enumerate() {
            cases.push((format!("small order #{i}"), hex(so), false));
        }
        // Some small y values have no x on the curve: they must fail to decompress.
        let mut not_on_curve = 0;
        for y in 2..64u64 {
            let bytes = le(y);
            let arr: [u8; 32] = bytes.clone().try_into().unwrap();
            if CompressedEdwardsY(arr).decompress().is_none() {
                not_on_curve += 1;
                cases.push((format!("y = {y} not on the curve"), bytes, false));
            }
        }
        assert!(not_on_curve > 0);
        // y = p + k for small k: the same point as y = k, in a second (non-canonical)
        // encoding. Picks the k whose canonical form is a valid key, so only the y < p check
        // can reject it.
        let mut aliases = 0;
        for k in 2..19u8 {
            if PublicKey::from_ed25519(&le(u64::from(k))).is_ok() {
                aliases += 1;
                cases.push((
                    format!("y = p + {k}, alias of a valid key"),
                    p_plus(k),
                    false,
                ));
            }
        }
        assert!(aliases > 0);
        for (name, bytes, ok) in cases {
            let got = PublicKey::from_ed25519(&bytes);
            if ok {
                let key = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(key.algorithm(), Algorithm::Ed25519);
                assert_eq!(key.raw_bytes(), bytes.as_slice());
            } else {
                assert_eq!(got.unwrap_err().code(), ErrorCode::BadKey, "{name}");
            }
        }
    }

    #[test]
    fn y_canonical_check_alone() {
        // The explicit y < p check, independent of dalek's decoder.
        let p = hex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        let p: [u8; 32] = p.try_into().unwrap();
        let mut p_minus_1 = p;
        p_minus_1[0] -= 1;
        let mut p_sign = p;
        p_sign[31] |= 0x80;
        assert!(!ed25519_y_is_canonical(&p));
        assert!(!ed25519_y_is_canonical(&p_sign));
        assert!(!ed25519_y_is_canonical(&[0xff; 32]));
        assert!(ed25519_y_is_canonical(&p_minus_1));
        assert!(ed25519_y_is_canonical(&[0; 32]));
        let mut below_top = [0xff; 32];
        below_top[31] = 0x7e;
        assert!(ed25519_y_is_canonical(&below_top));
    }

    #[test]
    fn spki_table() {
        let p256 = hex(OPENSSL_P256_SPKI);
        let ed = hex(OPENSSL_ED25519_SPKI);
        let ok: Vec<(&str, Vec<u8>, Algorithm)> = vec![
            ("P-256", p256.clone(), Algorithm::Es256),
            ("Ed25519", ed.clone(), Algorithm::Ed25519),
        ];
        for (name, der, alg) in ok {
            let key = PublicKey::from_spki_der(&der).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(key.algorithm(), alg);
            assert_eq!(key.to_spki_der(), der, "{name} round trip");
        }
        let mut wrong_curve_oid = p256.clone();
        wrong_curve_oid[22] = 0x08; // prime256v1 -> another 1.2.840.10045.3.1.x
        let mut ed_small_order = ed[..12].to_vec();
        ed_small_order.extend(hex(ED25519_SMALL_ORDER[0]));
        let mut x25519 = ed.clone();
        x25519[8] = 0x6e; // 1.3.101.110
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("compressed P-256", hex(OPENSSL_P256_SPKI_COMPRESSED)),
            ("P-384", hex(OPENSSL_P384_SPKI)),
            ("Ed448", hex(OPENSSL_ED448_SPKI)),
            ("X25519", x25519),
            ("other prime curve OID", wrong_curve_oid),
            ("P-256 trailing byte", [p256.as_slice(), &[0]].concat()),
            ("Ed25519 trailing byte", [ed.as_slice(), &[0]].concat()),
            ("P-256 truncated", p256[..90].to_vec()),
            ("Ed25519 truncated", ed[..43].to_vec()),
            ("Ed25519 small order", ed_small_order),
            ("prefix only", p256[..26].to_vec()),
            ("raw point", p256[26..].to_vec()),
            ("empty", vec![]),
        ];
        for (name, der) in bad {
            assert_eq!(
                PublicKey::from_spki_der(&der).unwrap_err().code(),
                ErrorCode::BadKey,
                "{name}"
            );
        }
    }

    #[test]
    fn rfc_jws_examples_verify() {
        let (input, sig) = jws_parts(RFC7515_A3_JWS);
        rfc7515_key()
            .verify_signature(Algorithm::Es256, input, &sig)
            .unwrap();
        let (input, sig) = jws_parts(RFC8037_A4_JWS);
        rfc8037_key()
            .verify_signature(Algorithm::Ed25519, input, &sig)
            .unwrap();
    }

    #[test]
    fn verify_table() {
        let (es_input, es_sig) = jws_parts(RFC7515_A3_JWS);
        let (ed_input, ed_sig) = jws_parts(RFC8037_A4_JWS);
        let es = rfc7515_key();
        let ed = rfc8037_key();
        let flip = |s: &[u8], i: usize| {
            let mut s = s.to_vec();
            s[i] ^= 1;
            s
        };
        // P-256 group order n, big-endian.
        let n = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        // Ed25519 group order L, little-endian; S = s + L is the classic malleation.
        let l = hex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
        let s_plus_l = {
            let s = &ed_sig[32..];
            let mut out = Vec::with_capacity(32);
            let mut carry = 0u16;
            for (a, b) in s.iter().zip(&l) {
                let v = u16::from(*a) + u16::from(*b) + carry;
                out.push(v as u8);
                carry = v >> 8;
            }
            [&ed_sig[..32], out.as_slice()].concat()
        };
        let es_r_plus_0 = [&es_sig[..32], &[0u8; 32][..]].concat();
        let es_zero_r = [&[0u8; 32][..], &es_sig[32..]].concat();
        let es_r_n = [n.as_slice(), &es_sig[32..]].concat();
        let es_s_n = [&es_sig[..32], n.as_slice()].concat();
        // The DER form of the same ES256 signature, which JWS does not allow.
        let es_der = {
            let int = |b: &[u8]| {
                let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
                let b = if b[0] & 0x80 != 0 {
                    [&[0u8][..], &b].concat()
                } else {
                    b
                };
                [&[0x02, b.len() as u8][..], &b].concat()
            };
            let body = [int(&es_sig[..32]), int(&es_sig[32..])].concat();
            [&[0x30, body.len() as u8][..], &body].concat()
        };
        type Case<'a> = (
            &'a str,
            &'a PublicKey,
            Algorithm,
            Vec<u8>,
            Vec<u8>,
            Option<ErrorCode>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case<'_>> = vec![
            ("ES256 good", &es, Algorithm::Es256, es_input.to_vec(), es_sig.clone(), None),
            ("Ed25519 good", &ed, Algorithm::Ed25519, ed_input.to_vec(), ed_sig.clone(), None),
            ("ES256 alg on Ed25519 key", &ed, Algorithm::Es256, ed_input.to_vec(), ed_sig.clone(), Some(ErrorCode::AlgMismatch)),
            ("Ed25519 alg on P-256 key", &es, Algorithm::Ed25519, es_input.to_vec(), es_sig.clone(), Some(ErrorCode::AlgMismatch)),
            ("alg mismatch checked before length", &es, Algorithm::Ed25519, es_input.to_vec(), vec![], Some(ErrorCode::AlgMismatch)),
            ("ES256 other message", &es, Algorithm::Es256, flip(es_input, 5), es_sig.clone(), Some(ErrorCode::BadSignature)),
            ("Ed25519 other message", &ed, Algorithm::Ed25519, flip(ed_input, 5), ed_sig.clone(), Some(ErrorCode::BadSignature)),
            ("ES256 r tampered", &es, Algorithm::Es256, es_input.to_vec(), flip(&es_sig, 0), Some(ErrorCode::BadSignature)),
            ("ES256 s tampered", &es, Algorithm::Es256, es_input.to_vec(), flip(&es_sig, 63), Some(ErrorCode::BadSignature)),
            ("Ed25519 R tampered", &ed, Algorithm::Ed25519, ed_input.to_vec(), flip(&ed_sig, 0), Some(ErrorCode::BadSignature)),
            ("Ed25519 S tampered", &ed, Algorithm::Ed25519, ed_input.to_vec(), flip(&ed_sig, 40), Some(ErrorCode::BadSignature)),
            ("Ed25519 S + L", &ed, Algorithm::Ed25519, ed_input.to_vec(), s_plus_l, Some(ErrorCode::BadSignature)),
            ("ES256 all zero (psychic)", &es, Algorithm::Es256, es_input.to_vec(), vec![0; 64], Some(ErrorCode::BadSignature)),
            ("ES256 r = 0", &es, Algorithm::Es256, es_input.to_vec(), es_zero_r, Some(ErrorCode::BadSignature)),
            ("ES256 s = 0", &es, Algorithm::Es256, es_input.to_vec(), es_r_plus_0, Some(ErrorCode::BadSignature)),
            ("ES256 r = n", &es, Algorithm::Es256, es_input.to_vec(), es_r_n, Some(ErrorCode::BadSignature)),
            ("ES256 s = n", &es, Algorithm::Es256, es_input.to_vec(), es_s_n, Some(ErrorCode::BadSignature)),
            ("ES256 DER signature", &es, Algorithm::Es256, es_input.to_vec(), es_der, Some(ErrorCode::BadSignature)),
            ("ES256 63 bytes", &es, Algorithm::Es256, es_input.to_vec(), es_sig[..63].to_vec(), Some(ErrorCode::BadSignature)),
            ("ES256 65 bytes", &es, Algorithm::Es256, es_input.to_vec(), [es_sig.as_slice(), &[0]].concat(), Some(ErrorCode::BadSignature)),
            ("Ed25519 empty", &ed, Algorithm::Ed25519, ed_input.to_vec(), vec![], Some(ErrorCode::BadSignature)),
            ("Ed25519 65 bytes", &ed, Algorithm::Ed25519, ed_input.to_vec(), [ed_sig.as_slice(), &[0]].concat(), Some(ErrorCode::BadSignature)),
            ("Ed25519 all zero", &ed, Algorithm::Ed25519, ed_input.to_vec(), vec![0; 64], Some(ErrorCode::BadSignature)),
        ];
        for (name, key, alg, msg, sig, want) in cases {
            let got = verify(key, alg, &msg, &sig);
            match want {
                None => got.unwrap_or_else(|e| panic!("{name}: {e}")),
                Some(code) => assert_eq!(got.unwrap_err().code(), code, "{name}"),
            }
        }
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        for alg in [Algorithm::Es256, Algorithm::Ed25519] {
            let task = TaskKey::generate(alg).unwrap();
            assert_eq!(task.algorithm(), alg);
            assert_eq!(task.public_key().algorithm(), alg);
            let sig = task.sign(b"hello").unwrap();
            assert_eq!(sig.len(), 64);
            verify(task.public_key(), alg, b"hello", &sig).unwrap();
            assert_eq!(
                verify(task.public_key(), alg, b"hellO", &sig)
                    .unwrap_err()
                    .code(),
                ErrorCode::BadSignature
            );
            // Reloading the PKCS#8 gives the same key.
            let again = TaskKey::from_pkcs8_der(task.danger_pkcs8_der()).unwrap();
            assert_eq!(again.public_key(), task.public_key());
            verify(task.public_key(), alg, b"m", &again.sign(b"m").unwrap()).unwrap();

            let authority = AuthorityKey::generate(alg).unwrap();
            let signer: &dyn JwsSigner = &authority;
            assert_eq!(signer.algorithm(), alg);
            assert_eq!(&signer.public_key(), authority.public_key());
            let sig = signer.sign(b"grant").unwrap();
            verify(&signer.public_key(), alg, b"grant", &sig).unwrap();
            let reloaded = AuthorityKey::from_pkcs8_der(authority.pkcs8_der()).unwrap();
            assert_eq!(reloaded.public_key(), authority.public_key());
            // Two generated keys differ.
            assert_ne!(
                TaskKey::generate(alg).unwrap().public_key(),
                task.public_key()
            );
        }
    }

    #[test]
    fn es256_signatures_are_randomized() {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let a = key.sign(b"m").unwrap();
        let b = key.sign(b"m").unwrap();
        assert_ne!(a, b);
        verify(key.public_key(), Algorithm::Es256, b"m", &a).unwrap();
        verify(key.public_key(), Algorithm::Es256, b"m", &b).unwrap();
    }

    #[test]
    fn pkcs8_table() {
        let ed25519_v2 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        // (name, DER, expected algorithm and SPKI (empty: not checked), or None for BadKey)
        type Case = (&'static str, Vec<u8>, Option<(Algorithm, Vec<u8>)>);
        let cases: Vec<Case> = vec![
            (
                "OpenSSL P-256",
                hex(OPENSSL_P256_PKCS8),
                Some((Algorithm::Es256, hex(OPENSSL_P256_SPKI))),
            ),
            (
                "OpenSSL Ed25519 (v1)",
                hex(OPENSSL_ED25519_PKCS8),
                Some((Algorithm::Ed25519, hex(OPENSSL_ED25519_SPKI))),
            ),
            (
                "aws-lc Ed25519 v2",
                ed25519_v2.as_ref().to_vec(),
                Some((Algorithm::Ed25519, vec![])),
            ),
            ("P-384", hex(OPENSSL_P384_PKCS8), None),
            ("X25519", hex(OPENSSL_X25519_PKCS8), None),
            ("SEC1, not PKCS#8", hex(OPENSSL_P256_SEC1), None),
            ("SPKI, not a private key", hex(OPENSSL_P256_SPKI), None),
            ("truncated", hex(OPENSSL_P256_PKCS8)[..100].to_vec(), None),
            (
                "trailing byte",
                [hex(OPENSSL_ED25519_PKCS8), vec![0]].concat(),
                None,
            ),
            ("empty", vec![], None),
        ];
        for (name, der, want) in cases {
            let task = TaskKey::from_pkcs8_der(&der);
            let authority = AuthorityKey::from_pkcs8_der(&der);
            match want {
                Some((alg, spki)) => {
                    let task = task.unwrap_or_else(|e| panic!("{name}: {e}"));
                    let authority = authority.unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(task.algorithm(), alg, "{name}");
                    assert_eq!(
                        task.danger_pkcs8_der(),
                        der.as_slice(),
                        "{name} keeps the DER"
                    );
                    assert_eq!(authority.public_key(), task.public_key());
                    if !spki.is_empty() {
                        assert_eq!(task.public_key().to_spki_der(), spki, "{name}");
                    }
                    verify(task.public_key(), alg, b"x", &task.sign(b"x").unwrap()).unwrap();
                }
                None => {
                    assert_eq!(
                        task.err().map(|e| e.code()),
                        Some(ErrorCode::BadKey),
                        "{name}"
                    );
                    assert_eq!(
                        authority.err().map(|e| e.code()),
                        Some(ErrorCode::BadKey),
                        "{name}"
                    );
                }
            }
        }
    }

    #[test]
    fn debug_never_prints_key_material() {
        for der in [hex(OPENSSL_P256_PKCS8), hex(OPENSSL_ED25519_PKCS8)] {
            let task = TaskKey::from_pkcs8_der(&der).unwrap();
            let authority = AuthorityKey::from_pkcs8_der(&der).unwrap();
            // The private scalar / seed is the last 32 bytes of the Ed25519 document and bytes
            // 36..68 of the P-256 one; check neither it nor the whole DER appears in any form.
            let secret = if der.len() == 48 {
                der[16..48].to_vec()
            } else {
                der[36..68].to_vec()
            };
            for text in [
                format!("{task:?}"),
                format!("{authority:?}"),
                format!("{task:#?}"),
            ] {
                for needle in [
                    b64_encode(&secret),
                    b64_encode(&der),
                    secret
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                    format!("{:?}", &secret[..4])
                        .trim_end_matches(']')
                        .to_string(),
                ] {
                    assert!(!text.contains(&needle), "{text} leaks {needle}");
                }
                assert!(text.contains(&task.public_key().thumbprint()), "{text}");
            }
        }
    }

    #[test]
    fn der_sequence_framing_table() {
        let long = |n: usize| [vec![0x30, 0x82, (n >> 8) as u8, n as u8], vec![0; n]].concat();
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("short form", vec![0x30, 0x02, 0, 0], true),
            ("empty sequence", vec![0x30, 0x00], true),
            (
                "0x81 form",
                [vec![0x30, 0x81, 0x80], vec![0; 0x80]].concat(),
                true,
            ),
            ("0x82 form", long(300), true),
            (
                "0x81 for a short length (non-minimal)",
                vec![0x30, 0x81, 0x02, 0, 0],
                false,
            ),
            (
                "0x82 with leading zero (non-minimal)",
                [vec![0x30, 0x82, 0x00, 0x80], vec![0; 0x80]].concat(),
                false,
            ),
            ("indefinite length", vec![0x30, 0x80, 0, 0], false),
            ("trailing byte", vec![0x30, 0x01, 0, 0], false),
            ("truncated", vec![0x30, 0x03, 0, 0], false),
            ("not a sequence", vec![0x31, 0x00], false),
            ("empty", vec![], false),
        ];
        for (name, der, want) in cases {
            assert_eq!(is_one_der_sequence(&der), want, "{name}");
        }
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha256(b"abc").to_vec(),
            hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            sha256(b"").to_vec(),
            hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    #[test]
    fn random_bytes_differ() {
        let a = random_bytes::<32>().unwrap();
        let b = random_bytes::<32>().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
        assert_eq!(random_bytes::<0>().unwrap(), [0u8; 0]);
    }

    #[test]
    fn public_key_debug_is_readable() {
        let text = format!("{:?}", rfc8037_key());
        assert_eq!(text, format!("PublicKey(Ed25519, {RFC8037_A2_X})"));
    }
}
