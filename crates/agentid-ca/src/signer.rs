//! The X.509 issuing key behind a trait, so that a KMS or HSM can hold it.
//!
//! The grant and revocation keys use the protocol crate's [`agentid_protocol::JwsSigner`] instead.

use core::fmt;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

use crate::error::{CaError, Result};

/// The key types of agentid, as configuration and the command line name them (`p256`,
/// `ed25519`): the keys of the CA hierarchy and task keys. Each is the key of one protocol
/// [`Algorithm`](agentid_protocol::Algorithm) ([`KeyType::algorithm`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256 (the default: widest interoperability).
    #[default]
    P256,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// Every key type, the default first.
    pub const ALL: [KeyType; 2] = [KeyType::P256, KeyType::Ed25519];

    pub(crate) fn rcgen_alg(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The matching token algorithm of the protocol crate.
    pub fn algorithm(self) -> agentid_protocol::Algorithm {
        match self {
            KeyType::P256 => agentid_protocol::Algorithm::Es256,
            KeyType::Ed25519 => agentid_protocol::Algorithm::Ed25519,
        }
    }

    /// `p256` or `ed25519`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::P256 => "p256",
            KeyType::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::str::FromStr for KeyType {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "p256" | "P-256" | "ecdsa-p256" => Ok(KeyType::P256),
            "ed25519" | "Ed25519" => Ok(KeyType::Ed25519),
            other => Err(CaError::InvalidRequest(format!(
                "unknown key type {other:?} (p256 or ed25519)"
            ))),
        }
    }
}

/// A key that signs X.509 certificates for the CA: the issuing (intermediate) key.
///
/// Implement it to keep the key in a KMS or HSM. The signature must be in the X.509 format of
/// the key type: a DER `ECDSA-Sig-Value` over SHA-256 for P-256, the 64-byte RFC 8032 signature
/// for Ed25519.
pub trait X509Signer: Send + Sync {
    /// The key's algorithm.
    fn key_type(&self) -> KeyType;
    /// The raw public key: the 65-byte uncompressed P-256 point or the 32-byte Ed25519 key.
    fn public_key_raw(&self) -> Vec<u8>;
    /// Signs the DER `TBSCertificate` bytes.
    fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>>;
}

/// The default file-backed issuing key (PKCS#8 in `intermediate.key`).
pub struct FileX509Signer {
    key: KeyPair,
    key_type: KeyType,
}

impl fmt::Debug for FileX509Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileX509Signer")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl FileX509Signer {
    /// Generates a fresh key.
    pub fn generate(key_type: KeyType) -> Result<Self> {
        let key = KeyPair::generate_for(key_type.rcgen_alg())
            .map_err(|e| CaError::CertificateGeneration(e.to_string()))?;
        Ok(FileX509Signer { key, key_type })
    }

    /// Loads a PKCS#8 DER key of the given type.
    pub fn from_pkcs8_der(der: &[u8], key_type: KeyType) -> Result<Self> {
        let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, key_type.rcgen_alg())
            .map_err(|e| CaError::Signer(format!("not a {key_type} PKCS#8 key: {e}")))?;
        Ok(FileX509Signer { key, key_type })
    }

    /// The PKCS#8 DER encoding, for writing the key file.
    pub fn pkcs8_der(&self) -> &[u8] {
        self.key.serialized_der()
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.key
    }
}

impl X509Signer for FileX509Signer {
    fn key_type(&self) -> KeyType {
        self.key_type
    }
    fn public_key_raw(&self) -> Vec<u8> {
        self.key.public_key_raw().to_vec()
    }
    fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>> {
        SigningKey::sign(&self.key, tbs).map_err(|e| CaError::Signer(e.to_string()))
    }
}

/// Adapts an [`X509Signer`] to rcgen's `SigningKey`.
pub(crate) struct RcgenSigner<'a> {
    signer: &'a dyn X509Signer,
    public: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl<'a> RcgenSigner<'a> {
    pub(crate) fn new(signer: &'a dyn X509Signer) -> Self {
        RcgenSigner {
            public: signer.public_key_raw(),
            alg: signer.key_type().rcgen_alg(),
            signer,
        }
    }
}

impl PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> core::result::Result<Vec<u8>, rcgen::Error> {
        // rcgen's error type has no variant for a remote failure; `RemoteKeyError` is the one
        // meant for it.
        self.signer
            .sign(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}
