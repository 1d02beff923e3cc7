//! The signed agentid bundle (`GET /v1/bundle/agentid`, `spec/CA-API.md` 3.3): the trust
//! domain's full bundle (X509 authorities, grant and revocation keys) as a JWS signed by the
//! **bundle-signing key**, a key with that one use, kept offline beside the root key.
//!
//! The CA service only serves the signed document (`agentid-bundle.jws` in the CA directory);
//! it never holds the bundle-signing key. So whoever steals the service's online TLS key cannot
//! hand watchers a grant or revocation key of its own: watchers accept grant and revocation key
//! changes only from a document this key signed.

use std::path::Path;

use agentid_protocol::{JwsSigner, PublicKey, TrustBundle, TrustDomain};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{CaError, Result};
use crate::material::{self, files, join};
use crate::CertificateAuthority;

/// The JWS `typ` of a signed agentid bundle.
pub const BUNDLE_TYP: &str = "agentid-bundle+jwt";

/// What the bundle-signing key signs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleClaims {
    /// The trust domain's SPIFFE ID (`spiffe://<td>`).
    pub iss: String,
    /// Increases with every signed bundle of the domain (Unix seconds at signing); a watcher
    /// refuses a lower one.
    pub seq: u64,
    /// When it was signed, Unix seconds.
    pub iat: u64,
    /// The trust bundle (JWK Set, PROTOCOL.md 8).
    pub bundle: serde_json::Value,
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Signs `bundle` for its trust domain with the bundle-signing key.
pub fn sign(signer: &dyn JwsSigner, bundle: &TrustBundle, now: u64) -> Result<String> {
    let claims = BundleClaims {
        iss: bundle.trust_domain().id().as_str().to_owned(),
        seq: now,
        iat: now,
        bundle: serde_json::from_str(&bundle.to_json())
            .map_err(|e| CaError::InvalidRequest(format!("bundle: {e}")))?,
    };
    let header = serde_json::json!({"alg": signer.algorithm().as_str(), "typ": BUNDLE_TYP});
    let payload =
        serde_json::to_vec(&claims).map_err(|e| CaError::InvalidRequest(e.to_string()))?;
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(&payload));
    let sig = signer.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

/// Verifies a signed agentid bundle with the bundle-signing public key and returns the bundle
/// of `td` it carries, with its `seq`.
pub fn verify(jws: &str, key: &PublicKey, td: &TrustDomain) -> Result<(u64, TrustBundle)> {
    let bad = |m: &str| CaError::InvalidRequest(format!("signed agentid bundle: {m}"));
    let dec = |v: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|_| bad("not base64url"))
    };
    let mut parts = jws.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a compact JWS"));
    };
    let header: serde_json::Value =
        serde_json::from_slice(&dec(h)?).map_err(|_| bad("header is not JSON"))?;
    if header.as_object().map(serde_json::Map::len) != Some(2)
        || header.get("typ").and_then(serde_json::Value::as_str) != Some(BUNDLE_TYP)
        || header.get("alg").and_then(serde_json::Value::as_str) != Some(key.algorithm().as_str())
    {
        return Err(bad(
            "the header is not {alg, typ} for the bundle-signing key",
        ));
    }
    let input = format!("{h}.{p}");
    key.verify_signature(key.algorithm(), input.as_bytes(), &dec(s)?)
        .map_err(|_| bad("the signature does not verify with the bundle-signing key"))?;
    let claims: BundleClaims =
        serde_json::from_slice(&dec(p)?).map_err(|e| bad(&format!("claims: {e}")))?;
    if claims.iss != td.id().as_str() {
        return Err(bad("signed for another trust domain"));
    }
    let bundle = TrustBundle::parse(td, claims.bundle.to_string().as_bytes())?;
    Ok((claims.seq, bundle))
}

/// The bundle-signing public key of a CA directory (`bundle-signing.pub`).
pub fn public_key(dir: &Path) -> Result<PublicKey> {
    let path = join(dir, files::BUNDLE_SIGNING_PUB);
    let spki = material::read_public_key(&path)?;
    PublicKey::from_spki_der(&spki).map_err(|e| CaError::material(&path, e.to_string()))
}

/// Signs the CA's current bundle with the offline bundle-signing key of `dir` and writes it to
/// `agentid-bundle.jws` (replacing the previous one). Run by the operator where the key is.
pub fn sign_dir(ca: &CertificateAuthority, dir: &Path, now: u64) -> Result<String> {
    let key_path = join(dir, files::BUNDLE_SIGNING_KEY);
    let der = material::read_private_key(&key_path)?;
    let key = agentid_protocol::AuthorityKey::from_pkcs8_der(&der)
        .map_err(|e| CaError::material(&key_path, e.to_string()))?;
    let jws = sign(&key, &ca.trust_bundle()?, now)?;
    let out = join(dir, files::AGENTID_BUNDLE);
    agentid_fs::write_private(&out, jws.as_bytes())
        .map_err(|e| CaError::material(&out, e.to_string()))?;
    Ok(jws)
}

impl CertificateAuthority {
    /// The signed agentid bundle of this CA's directory, checked against its bundle-signing
    /// public key and its current keys; `None` when the directory has none.
    pub fn signed_agentid_bundle(&self) -> Result<Option<String>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = join(dir, files::AGENTID_BUNDLE);
        if !path.exists() {
            return Ok(None);
        }
        let jws = String::from_utf8(
            agentid_fs::read_bounded(&path, agentid_fs::MAX_FILE_BYTES)
                .map_err(|e| CaError::material(&path, e.to_string()))?,
        )
        .map_err(|_| CaError::material(&path, "not UTF-8"))?;
        let jws = jws.trim().to_owned();
        let (_, signed) = verify(&jws, &public_key(dir)?, self.trust_domain())?;
        let current = self.trust_bundle()?;
        if signed.grant_keys() != current.grant_keys()
            || signed.revocation_keys() != current.revocation_keys()
        {
            return Err(CaError::material(
                &path,
                "signs other grant or revocation keys than this CA's: sign the bundle again",
            ));
        }
        Ok(Some(jws))
    }
}
