//! The signed agentid bundle (`agentid-bundle+jwt`): a trust domain's full bundle (X509
//! authorities, grant and revocation keys) as a JWS signed by the domain's **bundle-signing
//! key**, a key with that one use, kept offline beside the root key.
//!
//! A watcher that applies bundles to a live verifier accepts grant and revocation key changes
//! only from a document this key signed, so whoever holds a CA service's online TLS key cannot
//! mint authority. Verification here is sans-IO: the caller passes `now`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::bundle::TrustBundle;
use crate::crypto::{JwsSigner, PublicKey};
use crate::error::{Error, ErrorCode, Result};
use crate::id::TrustDomain;

/// The JWS `typ` of a signed agentid bundle.
pub const BUNDLE_TYP: &str = "agentid-bundle+jwt";

/// Largest signed bundle accepted (the bundle's own cap plus the JWS overhead).
pub const MAX_SIGNED_BUNDLE_BYTES: usize = 2 * crate::bundle::MAX_BUNDLE_BYTES;

/// What the bundle-signing key signs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedBundleClaims {
    /// The trust domain's SPIFFE ID (`spiffe://<td>`).
    pub iss: String,
    /// Increases with every signed bundle of the domain; a watcher refuses one that is not
    /// higher than the one it holds.
    pub seq: u64,
    /// When it was signed, Unix seconds.
    pub iat: u64,
    /// The trust bundle (JWK Set).
    pub bundle: serde_json::Value,
}

/// A signed agentid bundle whose signature, header, issuer and `iat` verified.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SignedBundle {
    /// The document's `seq`.
    pub seq: u64,
    /// The document's `iat`.
    pub iat: u64,
    /// The bundle it carries, parsed for its trust domain.
    pub bundle: TrustBundle,
}

fn bad(detail: impl Into<String>) -> Error {
    Error::new(
        ErrorCode::BadBundle,
        format!("signed agentid bundle: {}", detail.into()),
    )
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Signs `bundle` for its trust domain with the bundle-signing key `signer`, as document
/// `seq` issued at `iat` (Unix seconds). The bundle inside carries `seq` as its
/// `spiffe_sequence`, so that a verification holding it refuses an older document (a lower
/// sequence) whichever watcher or process part applies it.
pub fn sign_bundle(
    signer: &dyn JwsSigner,
    bundle: &TrustBundle,
    seq: u64,
    iat: u64,
) -> Result<String> {
    let mut set: serde_json::Value =
        serde_json::from_str(&bundle.to_json()).map_err(|e| bad(e.to_string()))?;
    let obj = set
        .as_object_mut()
        .ok_or_else(|| bad("a bundle is a JSON object"))?;
    obj.insert("spiffe_sequence".to_owned(), seq.into());
    let claims = SignedBundleClaims {
        iss: bundle.trust_domain().id().as_str().to_owned(),
        seq,
        iat,
        bundle: set,
    };
    let header = serde_json::json!({"alg": signer.algorithm().as_str(), "typ": BUNDLE_TYP});
    let payload = serde_json::to_vec(&claims).map_err(|e| bad(e.to_string()))?;
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(&payload));
    let sig = signer.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

/// Verifies a signed agentid bundle with the bundle-signing public key `key`: the header is
/// exactly `{alg, typ}` with the key's algorithm, the signature verifies, `iss` is `td`'s ID,
/// `iat` is not after `now + skew`, and the bundle parses for `td`. Every failure is
/// `bad_bundle`; nothing is read from the claims before the signature verified.
pub fn verify_signed_bundle(
    jws: &str,
    key: &PublicKey,
    td: &TrustDomain,
    now: u64,
    skew: u64,
) -> Result<SignedBundle> {
    let jws = jws.trim();
    if jws.len() > MAX_SIGNED_BUNDLE_BYTES {
        return Err(bad("too large"));
    }
    let dec = |v: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|_| bad("not base64url"))
    };
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a compact JWS"));
    };
    let header = crate::ijson::parse_object(&dec(h)?).map_err(|_| bad("header is not I-JSON"))?;
    // `alg` as every JWS of the protocol reads it (section 4: `EdDSA` is accepted for an
    // Ed25519 key, though issuers write `Ed25519`).
    let alg = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .and_then(crate::Algorithm::from_header);
    if header.len() != 2
        || header.get("typ").and_then(serde_json::Value::as_str) != Some(BUNDLE_TYP)
        || alg != Some(key.algorithm())
    {
        return Err(bad(
            "the header is not {alg, typ} for the bundle-signing key",
        ));
    }
    let input = format!("{h}.{p}");
    key.verify_signature(key.algorithm(), input.as_bytes(), &dec(s)?)
        .map_err(|_| bad("the signature does not verify with the bundle-signing key"))?;
    let claims: SignedBundleClaims = serde_json::from_value(serde_json::Value::Object(
        crate::ijson::parse_object(&dec(p)?).map_err(|_| bad("claims are not I-JSON"))?,
    ))
    .map_err(|e| bad(format!("claims: {e}")))?;
    if claims.iss != td.id().as_str() {
        return Err(bad("signed for another trust domain"));
    }
    if claims.iat > now.saturating_add(skew) {
        return Err(bad("`iat` in the future"));
    }
    let bundle = TrustBundle::parse(td, claims.bundle.to_string().as_bytes())?;
    Ok(SignedBundle {
        seq: claims.seq,
        iat: claims.iat,
        bundle,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::crypto::AuthorityKey;
    use crate::Algorithm;

    const NOW: u64 = 1_767_225_600;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn bundle() -> TrustBundle {
        let grant = AuthorityKey::generate(Algorithm::Es256).unwrap();
        TrustBundle::new(td(), 1).add_grant_key(grant.public_key().clone())
    }

    #[test]
    fn a_signed_bundle_verifies_with_its_key_only() {
        let signer = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let b = bundle();
        let jws = sign_bundle(&signer, &b, 7, NOW).unwrap();
        let got = verify_signed_bundle(&jws, signer.public_key(), &td(), NOW, 60).unwrap();
        assert_eq!((got.seq, got.iat), (7, NOW));
        assert_eq!(got.bundle.grant_keys(), b.grant_keys());

        let other = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let e = verify_signed_bundle(&jws, other.public_key(), &td(), NOW, 60).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadBundle);
        let elsewhere = TrustDomain::parse("other.org").unwrap();
        assert!(verify_signed_bundle(&jws, signer.public_key(), &elsewhere, NOW, 60).is_err());
    }

    #[test]
    fn a_bundle_signed_in_the_future_is_refused() {
        let signer = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let jws = sign_bundle(&signer, &bundle(), 1, NOW + 61).unwrap();
        assert!(verify_signed_bundle(&jws, signer.public_key(), &td(), NOW, 60).is_err());
        assert!(verify_signed_bundle(&jws, signer.public_key(), &td(), NOW + 1, 60).is_ok());
    }

    #[test]
    fn a_tampered_payload_or_header_is_refused() {
        let signer = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let jws = sign_bundle(&signer, &bundle(), 1, NOW).unwrap();
        let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
        let claims = SignedBundleClaims {
            iss: td().id().as_str().to_owned(),
            seq: 99,
            iat: NOW,
            bundle: serde_json::from_str(&bundle().to_json()).unwrap(),
        };
        parts[1] = b64(&serde_json::to_vec(&claims).unwrap());
        let key = signer.public_key();
        assert!(verify_signed_bundle(&parts.join("."), key, &td(), NOW, 60).is_err());
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
        let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
        parts[0] = b64(header.to_string().as_bytes());
        assert!(verify_signed_bundle(&parts.join("."), key, &td(), NOW, 60).is_err());
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(verify_signed_bundle(junk, key, &td(), NOW, 60).is_err());
        }
    }

    /// `jws` with its header replaced by `{alg, typ}` and signed again by `signer`.
    fn resigned(jws: &str, signer: &AuthorityKey, alg: &str) -> String {
        let header = serde_json::json!({"alg": alg, "typ": BUNDLE_TYP});
        let payload = jws.split('.').nth(1).unwrap();
        let input = format!("{}.{payload}", b64(header.to_string().as_bytes()));
        let sig = JwsSigner::sign(signer, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&sig))
    }

    /// Section 4: `alg` must match the key, and verifiers accept `EdDSA` for an Ed25519 key
    /// (issuers write `Ed25519`), for the signed bundle as for every other JWS.
    #[test]
    fn a_bundle_signed_with_ed25519_under_alg_eddsa_verifies_and_a_mismatched_alg_does_not() {
        let ed = AuthorityKey::generate(Algorithm::Ed25519).unwrap();
        let jws = sign_bundle(&ed, &bundle(), 3, NOW).unwrap();
        for (alg, ok) in [
            ("Ed25519", true),
            ("EdDSA", true),
            ("ES256", false),
            ("eddsa", false),
        ] {
            let r =
                verify_signed_bundle(&resigned(&jws, &ed, alg), ed.public_key(), &td(), NOW, 60);
            assert_eq!(r.is_ok(), ok, "alg {alg}");
        }
        let p256 = AuthorityKey::generate(Algorithm::Es256).unwrap();
        let jws = sign_bundle(&p256, &bundle(), 3, NOW).unwrap();
        for (alg, ok) in [("ES256", true), ("EdDSA", false), ("Ed25519", false)] {
            let r = verify_signed_bundle(
                &resigned(&jws, &p256, alg),
                p256.public_key(),
                &td(),
                NOW,
                60,
            );
            assert_eq!(r.is_ok(), ok, "alg {alg}");
        }
    }
}
