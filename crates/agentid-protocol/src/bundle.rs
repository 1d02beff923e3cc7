//! SPIFFE trust bundles (one JWK Set per trust domain, never merged) with agentid's key uses.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::encoding::parse_ijson_object;
use crate::error::{Error, ErrorCode, Result};
use crate::id::TrustDomain;
use crate::PublicKey;

/// `use` of an X.509 authority entry.
pub const USE_X509_SVID: &str = "x509-svid";
/// `use` of a grant-signing key.
pub const USE_GRANT: &str = "agentid-grant";
/// `use` of a revocation-list signing key.
pub const USE_REVOCATION: &str = "agentid-revocation";

/// Maximum size of a bundle document.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// A key with its `kid` (the RFC 7638 thumbprint of the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleKey {
    /// The `kid`: the key's RFC 7638 thumbprint.
    pub kid: String,
    /// The public key.
    pub key: PublicKey,
}

/// An X.509 authority of a trust domain: one CA certificate (DER) with its public-key JWK members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Authority {
    /// The CA certificate, DER.
    pub der: Vec<u8>,
    /// The certificate's public key, as JWK members (`kty`, `crv`, `x`, `y`, ...), kept as given.
    pub jwk: Map<String, Value>,
}

/// The trust bundle of one trust domain (SPIFFE bundle format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    sequence: u64,
    refresh_hint: Option<u64>,
    x509_authorities: Vec<X509Authority>,
    grant_keys: Vec<BundleKey>,
    revocation_keys: Vec<BundleKey>,
}

fn bad(detail: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadBundle, detail)
}

impl TrustBundle {
    /// An empty bundle for `trust_domain` at `sequence` (an empty bundle trusts nothing).
    pub fn new(trust_domain: TrustDomain, sequence: u64) -> Self {
        Self {
            trust_domain,
            sequence,
            refresh_hint: None,
            x509_authorities: Vec::new(),
            grant_keys: Vec::new(),
            revocation_keys: Vec::new(),
        }
    }

    /// Sets `spiffe_refresh_hint` (seconds).
    #[must_use]
    pub fn with_refresh_hint(mut self, seconds: u64) -> Self {
        self.refresh_hint = Some(seconds);
        self
    }

    /// Adds a CA certificate (DER) whose public key is `key`.
    #[must_use]
    pub fn add_x509_authority(mut self, der: Vec<u8>, key: &PublicKey) -> Self {
        let jwk = match key.to_jwk() {
            Value::Object(mut m) => {
                m.remove("alg");
                m
            }
            _ => Map::new(),
        };
        self.x509_authorities.push(X509Authority { der, jwk });
        self
    }

    /// Adds a grant-signing key.
    #[must_use]
    pub fn add_grant_key(mut self, key: PublicKey) -> Self {
        self.grant_keys.push(BundleKey {
            kid: key.thumbprint(),
            key,
        });
        self
    }

    /// Adds a revocation-list signing key.
    #[must_use]
    pub fn add_revocation_key(mut self, key: PublicKey) -> Self {
        self.revocation_keys.push(BundleKey {
            kid: key.thumbprint(),
            key,
        });
        self
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// `spiffe_sequence`.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// `spiffe_refresh_hint`.
    pub fn refresh_hint(&self) -> Option<u64> {
        self.refresh_hint
    }

    /// The X.509 authorities (CA certificates) of this trust domain.
    pub fn x509_authorities(&self) -> &[X509Authority] {
        &self.x509_authorities
    }

    /// The grant-signing keys.
    pub fn grant_keys(&self) -> &[BundleKey] {
        &self.grant_keys
    }

    /// The revocation-list signing keys.
    pub fn revocation_keys(&self) -> &[BundleKey] {
        &self.revocation_keys
    }

    /// Parses the SPIFFE bundle JSON of `trust_domain`.
    ///
    /// Entries: `x509-svid` (exactly one certificate in `x5c`), `agentid-grant` and
    /// `agentid-revocation` (required `alg` matching the key, `kid` equal to the key's RFC 7638
    /// thumbprint, no `kid` used twice). Entries of other uses (such as `jwt-svid`) are ignored:
    /// they never verify anything here.
    pub fn parse(trust_domain: &TrustDomain, json: &[u8]) -> Result<Self> {
        if json.len() > MAX_BUNDLE_BYTES {
            return Err(bad("bundle larger than 1 MiB"));
        }
        let map = parse_ijson_object(json)
            .map_err(|e| bad(format!("bundle is not I-JSON: {}", e.detail())))?;
        let Some(Value::Array(keys)) = map.get("keys") else {
            return Err(bad("bundle must have a `keys` array"));
        };
        let sequence = match map.get("spiffe_sequence") {
            None => 0,
            Some(v) => crate::encoding::json_time(v)
                .ok_or_else(|| bad("`spiffe_sequence` must be an integer"))?,
        };
        let refresh_hint = match map.get("spiffe_refresh_hint") {
            None => None,
            Some(v) => Some(
                crate::encoding::json_time(v)
                    .ok_or_else(|| bad("`spiffe_refresh_hint` must be an integer"))?,
            ),
        };
        let mut b = TrustBundle::new(trust_domain.clone(), sequence);
        b.refresh_hint = refresh_hint;
        let mut kids = std::collections::HashSet::new();
        for entry in keys {
            let Value::Object(e) = entry else {
                return Err(bad("bundle entries must be objects"));
            };
            match e.get("use").and_then(Value::as_str) {
                Some(USE_X509_SVID) => b.x509_authorities.push(parse_x509_entry(e)?),
                Some(u @ (USE_GRANT | USE_REVOCATION)) => {
                    let key = PublicKey::from_jwk_members(e, &["use", "kid"])
                        .map_err(|err| bad(format!("{u} key: {}", err.detail())))?;
                    let kid = e
                        .get("kid")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(format!("{u} key without `kid`")))?;
                    if kid != key.thumbprint() {
                        return Err(bad(format!("{u} key `kid` is not its RFC 7638 thumbprint")));
                    }
                    if !kids.insert(kid.to_owned()) {
                        return Err(bad(format!("`kid` {kid} appears twice")));
                    }
                    let bk = BundleKey {
                        kid: kid.to_owned(),
                        key,
                    };
                    if u == USE_GRANT {
                        b.grant_keys.push(bk);
                    } else {
                        b.revocation_keys.push(bk);
                    }
                }
                Some(_) => {}
                None => return Err(bad("bundle entry without `use`")),
            }
        }
        Ok(b)
    }

    /// The SPIFFE bundle JSON.
    pub fn to_json(&self) -> String {
        let mut keys = Vec::new();
        for a in &self.x509_authorities {
            let mut e = a.jwk.clone();
            e.insert("use".into(), Value::from(USE_X509_SVID));
            e.insert(
                "x5c".into(),
                Value::Array(vec![Value::from(
                    base64::engine::general_purpose::STANDARD.encode(&a.der),
                )]),
            );
            keys.push(Value::Object(e));
        }
        for (u, list) in [
            (USE_GRANT, &self.grant_keys),
            (USE_REVOCATION, &self.revocation_keys),
        ] {
            for k in list {
                let mut e = match k.key.to_jwk() {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                e.insert("use".into(), Value::from(u));
                e.insert("kid".into(), Value::from(k.kid.as_str()));
                keys.push(Value::Object(e));
            }
        }
        let mut m = Map::new();
        m.insert("keys".into(), Value::Array(keys));
        m.insert("spiffe_sequence".into(), Value::from(self.sequence));
        if let Some(h) = self.refresh_hint {
            m.insert("spiffe_refresh_hint".into(), Value::from(h));
        }
        serde_json::to_string_pretty(&Value::Object(m)).unwrap_or_default()
    }

    /// Whether the bundle trusts nothing at all.
    pub fn is_empty(&self) -> bool {
        self.x509_authorities.is_empty()
            && self.grant_keys.is_empty()
            && self.revocation_keys.is_empty()
    }
}

fn parse_x509_entry(e: &Map<String, Value>) -> Result<X509Authority> {
    let Some(Value::Array(x5c)) = e.get("x5c") else {
        return Err(bad("x509-svid entry without `x5c`"));
    };
    let [Value::String(cert)] = x5c.as_slice() else {
        return Err(bad(
            "x509-svid entry must hold exactly one certificate in `x5c`",
        ));
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .map_err(|_| bad("`x5c` is not standard base64"))?;
    // The certificate itself is parsed by the X.509 layer (the transport's trust store); here it
    // must at least be one DER SEQUENCE opening with the tbsCertificate SEQUENCE, so that junk
    // never sits in a bundle that "loaded".
    if !looks_like_certificate(&der) {
        return Err(bad("`x5c` does not hold one DER certificate"));
    }
    if !matches!(e.get("kty"), Some(Value::String(_))) {
        return Err(bad("x509-svid entry without `kty`"));
    }
    let mut jwk = e.clone();
    jwk.remove("use");
    jwk.remove("x5c");
    Ok(X509Authority { der, jwk })
}

/// One DER SEQUENCE whose content opens with another SEQUENCE (the tbsCertificate).
fn looks_like_certificate(der: &[u8]) -> bool {
    if !crate::crypto::is_one_der_sequence(der) {
        return false;
    }
    // Skip the outer tag and its length octets (short form, or long form 0x81/0x82).
    let header = match der.get(1) {
        Some(0x81) => 3,
        Some(0x82) => 4,
        Some(_) => 2,
        None => return false,
    };
    der.get(header) == Some(&0x30)
}

/// The bundles a verifier holds, one per trust domain, never merged.
#[derive(Clone, Debug, Default)]
pub struct BundleSet {
    bundles: HashMap<TrustDomain, TrustBundle>,
}

impl BundleSet {
    /// No bundles: trusts nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a trust domain's bundle. A lower `spiffe_sequence` than the one held is
    /// refused (`sequence_rollback`).
    pub fn insert(&mut self, bundle: TrustBundle) -> Result<()> {
        if let Some(old) = self.bundles.get(bundle.trust_domain()) {
            if bundle.sequence < old.sequence {
                return Err(Error::new(
                    ErrorCode::SequenceRollback,
                    format!(
                        "bundle sequence {} is lower than the held {}",
                        bundle.sequence, old.sequence
                    ),
                ));
            }
        }
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
        Ok(())
    }

    /// The bundle of `td`, if held.
    pub fn get(&self, td: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(td)
    }

    /// All bundles.
    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values()
    }

    /// Finds the grant key with `kid` across all bundles: exactly one match or `None`.
    pub(crate) fn find_grant_key(&self, kid: &str) -> Option<(&TrustDomain, &PublicKey)> {
        let mut found = None;
        for b in self.bundles.values() {
            for k in &b.grant_keys {
                if k.kid == kid {
                    if found.is_some() {
                        return None;
                    }
                    found = Some((&b.trust_domain, &k.key));
                }
            }
        }
        found
    }
}
