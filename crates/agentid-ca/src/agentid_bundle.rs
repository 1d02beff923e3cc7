//! The signed agentid bundle (`GET /v1/bundle/agentid`, `spec/CA-API.md` 3.3): the trust
//! domain's full bundle (X509 authorities, grant and revocation keys) as a JWS signed by the
//! **bundle-signing key**, a key with that one use, kept offline beside the root key.
//!
//! The CA service only serves the signed document (`agentid-bundle.jws` in the CA directory);
//! it never holds the bundle-signing key. So whoever steals the service's online TLS key cannot
//! hand watchers a grant or revocation key of its own: watchers accept grant and revocation key
//! changes only from a document this key signed.

use std::path::Path;

use agentid_protocol::{JwsSigner, PublicKey, TrustBundle};

use crate::error::{CaError, Result};
use crate::material::{self, files, join};
use crate::CertificateAuthority;

pub use agentid_protocol::{SignedBundleClaims as BundleClaims, BUNDLE_TYP};

/// Signs `bundle` for its trust domain with the bundle-signing key, as the document of `seq` and
/// `iat` both `now` (Unix seconds). Two documents signed within one second would carry the same
/// `seq`, which a watcher holding the first takes for the one it holds: to sign again where an
/// earlier document exists, use [`sign_dir`], which signs after it. Verification has one home:
/// [`agentid_protocol::verify_signed_bundle`].
pub fn sign(signer: &dyn JwsSigner, bundle: &TrustBundle, now: u64) -> Result<String> {
    Ok(agentid_protocol::sign_bundle(signer, bundle, now, now)?)
}

/// What tells one `agentid-bundle.jws` from the next without reading it: its modification
/// time, length and inode ([`CertificateAuthority::signed_bundle_stamp`]).
pub type BundleStamp = (std::time::SystemTime, u64, u64);

/// The `(seq, iat)` a document signed at `now` takes after `previous`, the `(seq, iat)` of the
/// document it replaces: a higher `seq` (`now`, or one more than the previous one when that is
/// not below `now`: a second signing within one second, or a clock behind the one that signed
/// before) and an `iat` not before the previous one, since watchers refuse a document that is
/// not newer in both (CA-API 3.3).
fn next_document(previous: Option<(u64, u64)>, now: u64) -> (u64, u64) {
    match previous {
        None => (now, now),
        Some((seq, iat)) => (now.max(seq.saturating_add(1)), now.max(iat)),
    }
}

/// The bundle-signing public key of a CA directory (`bundle-signing.pub`).
pub fn public_key(dir: &Path) -> Result<PublicKey> {
    let path = join(dir, files::BUNDLE_SIGNING_PUB);
    let spki = material::read_public_key(&path)?;
    PublicKey::from_spki_der(&spki).map_err(|e| CaError::material(&path, e.to_string()))
}

/// Signs the CA's current bundle with the offline bundle-signing key of `dir` and writes it to
/// `agentid-bundle.jws` (replacing the previous one). Run by the operator where the key is. The
/// document is always newer than the one it replaces (a higher `seq`, an `iat` not before its
/// own), even when signed within the same second: a watcher holding the previous one applies it.
pub fn sign_dir(ca: &CertificateAuthority, dir: &Path, now: u64) -> Result<String> {
    sign_bundle_into(dir, &ca.trust_bundle()?, now, &RetiringKeys::default())
}

/// [`sign_dir`] from the CA directory's files alone (`config.toml`, `root.pem`, `grant.key`,
/// `revocation.key` and `bundle-signing.key`), without opening its store: where the offline
/// key is kept, a copy of the directory without `ca.db` (or away from the shared database)
/// signs the bundle a CA opened on the full directory serves.
pub fn sign_offline(dir: &Path, now: u64) -> Result<String> {
    sign_offline_with(dir, now, &RetiringKeys::default())
}

/// Keys a planned rotation is taking out, listed in the signed bundle beside the CA's current
/// keys of the same use (CA-API 3.3): verifiers that apply the document keep verifying the
/// grants (and revocation lists) the outgoing key signed, until a later document, signed
/// without it once those have ended, drops it.
#[derive(Clone, Debug, Default)]
pub struct RetiringKeys {
    /// Outgoing grant keys (`agentid-grant`).
    pub grant: Vec<PublicKey>,
    /// Outgoing revocation keys (`agentid-revocation`).
    pub revocation: Vec<PublicKey>,
}

/// Reads a retiring key of `key_use` (`agentid-grant` or `agentid-revocation`) from `path`: a
/// PEM `PUBLIC KEY` (what `openssl pkey -in grant.key -pubout` writes), or a JWK, such as the
/// key's entry in `agentid bundle export`'s output (a `use`, if present, must be `key_use`; a
/// `kid`, if present, must be the key's thumbprint). Never a private key. The file is read
/// only if the reader holds it (`agentid_fs::read_held`), as the CA directory's files are.
pub fn read_retiring_key(path: &Path, key_use: &str) -> Result<PublicKey> {
    // Trust input: read only if held, as the CA directory's files are (whoever could replace
    // it would choose which outgoing key stays listed; a FIFO there would block).
    let bytes = material::read_held(path, agentid_fs::MAX_FILE_BYTES)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| CaError::material(path, "not UTF-8"))?;
    if !text.trim_start().starts_with('{') {
        // The bytes read once, not the file read again (it may have changed since).
        let spki = material::public_key_of(path, &bytes)?;
        return PublicKey::from_spki_der(&spki).map_err(|e| CaError::material(path, e.to_string()));
    }
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| CaError::material(path, "neither a PEM PUBLIC KEY nor a JWK (JSON object)"))?;
    let map = v
        .as_object()
        .ok_or_else(|| CaError::material(path, "a JWK is a JSON object"))?;
    let key = PublicKey::from_jwk_members(map, &["use", "kid"])
        .map_err(|e| CaError::material(path, e.to_string()))?;
    if let Some(u) = map.get("use") {
        if u.as_str() != Some(key_use) {
            return Err(CaError::material(
                path,
                format!("the JWK's `use` is {u}, not {key_use:?}"),
            ));
        }
    }
    if let Some(kid) = map.get("kid") {
        if kid.as_str() != Some(key.thumbprint().as_str()) {
            return Err(CaError::material(
                path,
                "the JWK's `kid` is not its thumbprint",
            ));
        }
    }
    Ok(key)
}

/// [`sign_offline`], the document also listing `retiring` keys beside the current ones. A
/// retiring key that is one of the CA's current keys (of either use), or is listed twice, is
/// refused and nothing is written: a bundle names no key twice (spec/PROTOCOL.md 8). So is one
/// that the document it replaces (`agentid-bundle.jws`) does not list under the same use: a
/// retiring key is an outgoing key, one verifiers already take, never a key first trusted
/// through this flag (another trust domain's, or a file someone else handed over).
pub fn sign_offline_with(dir: &Path, now: u64, retiring: &RetiringKeys) -> Result<String> {
    let config = crate::CaConfig::load(&join(dir, files::CONFIG))?;
    let root = material::read_one_certificate(&join(dir, files::ROOT_CERT))?;
    let grant = crate::ca::load_authority_key(&join(dir, files::GRANT_KEY))?;
    let revocation = crate::ca::load_authority_key(&join(dir, files::REVOCATION_KEY))?;
    let grant = JwsSigner::public_key(&grant);
    let revocation = JwsSigner::public_key(&revocation);
    let mut seen = vec![grant.clone(), revocation.clone()];
    for key in retiring.grant.iter().chain(&retiring.revocation) {
        if seen.contains(key) {
            return Err(CaError::InvalidRequest(format!(
                "retiring key {} is one of the CA's current keys or is listed twice: a retiring key is the outgoing key a rotation replaced",
                key.thumbprint()
            )));
        }
        seen.push(key.clone());
    }
    let mut bundle = crate::ca::domain_bundle(&config.trust_domain, &root, grant, revocation)?;
    for key in &retiring.grant {
        bundle = bundle.add_grant_key(key.clone());
    }
    for key in &retiring.revocation {
        bundle = bundle.add_revocation_key(key.clone());
    }
    sign_bundle_into(dir, &bundle, now, retiring)
}

/// Signs `bundle` with `dir`'s bundle-signing key as the document after the one
/// `agentid-bundle.jws` holds, and writes it there. Each of `retiring` (listed in `bundle`)
/// must be a key of the same use in that previous document (CA-API 3.3).
fn sign_bundle_into(
    dir: &Path,
    bundle: &TrustBundle,
    now: u64,
    retiring: &RetiringKeys,
) -> Result<String> {
    let key_path = join(dir, files::BUNDLE_SIGNING_KEY);
    let der = material::read_private_key(&key_path)?;
    let key = agentid_protocol::AuthorityKey::from_pkcs8_der(&der)
        .map_err(|e| CaError::material(&key_path, e.to_string()))?;
    let out = join(dir, files::AGENTID_BUNDLE);
    // The document it replaces, if this key signed it (anything else is not a document
    // watchers hold): the new one must be newer.
    // One that others could have put there is refused, not taken as absent (the next
    // document would start again at seq 1, below what watchers hold).
    let previous = match material::read_held(&out, agentid_fs::MAX_FILE_BYTES) {
        Err(e @ CaError::NotHeld(_)) => return Err(e),
        r => r.ok(),
    }
    .and_then(|bytes| String::from_utf8(bytes).ok())
    .and_then(|jws| {
        agentid_protocol::verify_signed_bundle(
            &jws,
            key.public_key(),
            bundle.trust_domain(),
            u64::MAX,
            0,
        )
        .ok()
    });
    let outgoing = |held: fn(&TrustBundle) -> &[agentid_protocol::BundleKey],
                    keys: &[PublicKey],
                    key_use: &str| {
        for key in keys {
            if !previous
                .as_ref()
                .is_some_and(|d| held(&d.bundle).iter().any(|k| k.key == *key))
            {
                return Err(CaError::InvalidRequest(format!(
                    "retiring key {} is not an {key_use} key of the signed bundle it replaces \
                     ({}): a retiring key is the outgoing key a rotation replaced",
                    key.thumbprint(),
                    files::AGENTID_BUNDLE
                )));
            }
        }
        Ok(())
    };
    outgoing(TrustBundle::grant_keys, &retiring.grant, "agentid-grant")?;
    outgoing(
        TrustBundle::revocation_keys,
        &retiring.revocation,
        "agentid-revocation",
    )?;
    let previous = previous.map(|d| (d.seq, d.iat));
    let (seq, iat) = next_document(previous, now);
    let jws = agentid_protocol::sign_bundle(&key, bundle, seq, iat)?;
    agentid_fs::write_private(&out, jws.as_bytes())
        .map_err(|e| CaError::material(&out, e.to_string()))?;
    Ok(jws)
}

impl CertificateAuthority {
    /// The sequence of the signed agentid bundle this CA's directory holds (the `seq` of
    /// `agentid-bundle.jws`, as its bundle's `spiffe_sequence`, verified with the directory's
    /// bundle-signing public key), `None` without one: the floor a token file made here carries
    /// (CA-API 3.6.1), below which the enrolled agent applies no signed bundle.
    pub fn signed_bundle_seq(&self) -> Result<Option<u64>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = join(dir, files::AGENTID_BUNDLE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = material::read_held(&path, agentid_fs::MAX_FILE_BYTES)?;
        let jws = std::str::from_utf8(&bytes).map_err(|_| CaError::material(&path, "not UTF-8"))?;
        let signed = agentid_protocol::verify_signed_bundle(
            jws,
            &public_key(dir)?,
            self.trust_domain(),
            u64::MAX,
            0,
        )
        .map_err(|e| CaError::material(&path, e.to_string()))?;
        Ok(Some(signed.bundle.sequence()))
    }

    /// The CA's trust bundle ([`CertificateAuthority::trust_bundle`]) as files made from the
    /// CA directory carry it (`bundle.json`, `agentid bundle export`): its `spiffe_sequence` is
    /// the signed bundle's ([`CertificateAuthority::signed_bundle_seq`]) when that is higher,
    /// so a verification started from the file refuses an older signed bundle (CA-API 3.3).
    pub fn exported_bundle(&self) -> Result<TrustBundle> {
        let bundle = self.trust_bundle()?;
        let Some(seq) = self.signed_bundle_seq()? else {
            return Ok(bundle);
        };
        self.with_sequence(bundle, seq)
    }

    /// The CA's trust bundle as the standard SPIFFE bundle carries it (`GET /v1/bundle`,
    /// `agentid bundle export --format spiffe`, which keep its X509 authorities alone), with a
    /// `spiffe_sequence` that rises whenever that document may have changed, as SPIFFE
    /// federation consumers expect (CA-API 3.2): the signed agentid bundle's `seq` (a document
    /// is signed again at every key change, CA-API 3.3), or the root certificate's `notBefore`
    /// (Unix seconds) when that is higher (no signed bundle, or a root replaced without signing
    /// again). A signed bundle that cannot be read or does not verify is left out (logged):
    /// `GET /v1/bundle/agentid` refuses it, and enrollment, which needs this bundle, goes on.
    pub fn spiffe_bundle(&self) -> Result<TrustBundle> {
        use x509_parser::prelude::FromDer;
        let (_, root) = x509_parser::certificate::X509Certificate::from_der(&self.root_der)
            .map_err(|e| CaError::CertificateGeneration(format!("root: {e}")))?;
        let not_before = u64::try_from(root.validity().not_before.timestamp()).unwrap_or(0);
        let signed = self.signed_bundle_seq().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the signed agentid bundle is left out of the SPIFFE bundle's sequence");
            None
        });
        self.with_sequence(self.trust_bundle()?, signed.unwrap_or(0).max(not_before))
    }

    /// `bundle` with `spiffe_sequence` `seq` when that is higher than its own.
    fn with_sequence(&self, bundle: TrustBundle, seq: u64) -> Result<TrustBundle> {
        if seq <= bundle.sequence() {
            return Ok(bundle);
        }
        let mut set: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&bundle.to_json())
                .map_err(|e| CaError::CertificateGeneration(format!("bundle: {e}")))?;
        set.insert("spiffe_sequence".to_owned(), seq.into());
        let json = serde_json::Value::Object(set).to_string();
        Ok(TrustBundle::parse(self.trust_domain(), json.as_bytes())?)
    }

    /// When `agentid-bundle.jws` was last written, its length and (on Unix) its inode, `None`
    /// without one: a document signed again changes it (`bundle sign` writes a new file and
    /// renames it over the old one), so a server can keep what it read from the file
    /// ([`CertificateAuthority::spiffe_bundle`]) until then.
    pub fn signed_bundle_stamp(&self) -> Option<BundleStamp> {
        let dir = self.dir.as_ref()?;
        let m = std::fs::metadata(join(dir, files::AGENTID_BUNDLE)).ok()?;
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        Some((m.modified().ok()?, m.len(), ino))
    }

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
        let jws = String::from_utf8(material::read_held(&path, agentid_fs::MAX_FILE_BYTES)?)
            .map_err(|_| CaError::material(&path, "not UTF-8"))?;
        let jws = jws.trim().to_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signed = agentid_protocol::verify_signed_bundle(
            &jws,
            &public_key(dir)?,
            self.trust_domain(),
            now,
            agentid_protocol::caps::DEFAULT_SKEW,
        )
        // The CA's own document is at fault, not a request: not served, `500 internal`
        // (CA-API.md 3.3), never a protocol error a caller would read as its own.
        .map_err(|e| CaError::material(&path, e.to_string()))?
        .bundle;
        // The CA's current keys, each under its own use; other keys of the same use beside
        // them are the retiring keys of a rotation (CA-API 3.3). A bundle names no key twice,
        // so a current key can be under no other use.
        let current = self.trust_bundle()?;
        let names = |signed: &[agentid_protocol::BundleKey],
                     current: &[agentid_protocol::BundleKey]| {
            current
                .iter()
                .all(|c| signed.iter().any(|k| k.key == c.key))
        };
        if !names(signed.grant_keys(), current.grant_keys())
            || !names(signed.revocation_keys(), current.revocation_keys())
        {
            return Err(CaError::material(
                &path,
                "does not sign this CA's current grant and revocation keys: sign the bundle again",
            ));
        }
        Ok(Some(jws))
    }
}
