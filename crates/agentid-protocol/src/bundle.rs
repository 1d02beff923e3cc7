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

    /// The agentid bundle JSON: the SPIFFE bundle format with the X.509 authorities and the
    /// grant and revocation keys (uses `agentid-grant`, `agentid-revocation`), what agentid
    /// verifiers need.
    pub fn to_json(&self) -> String {
        self.json(true)
    }

    /// The standard SPIFFE bundle JSON: only entries with the uses of the SPIFFE Trust Domain
    /// and Bundle specification (`x509-svid` here), which SPIRE and the other SPIFFE
    /// implementations accept (SPIRE refuses a bundle with any other `use`). It carries no grant
    /// or revocation key, so agentid verifiers need [`TrustBundle::to_json`]'s form.
    pub fn to_spiffe_json(&self) -> String {
        self.json(false)
    }

    fn json(&self, agentid_keys: bool) -> String {
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
        let agentid_lists = [
            (USE_GRANT, &self.grant_keys),
            (USE_REVOCATION, &self.revocation_keys),
        ];
        for (u, list) in agentid_lists.iter().filter(|_| agentid_keys) {
            for k in list.iter() {
                let mut e = match k.key.to_jwk() {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                e.insert("use".into(), Value::from(*u));
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
    // The certificate's contents are checked by the X.509 layer (the transport's trust store)
    // where it anchors a path; here it must be one DER certificate in the outline of RFC 5280
    // section 4.1 (spec/PROTOCOL.md section 8), so that junk never sits in a bundle that "loaded".
    if !is_der_certificate(&der) {
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

/// One DER TLV with a one-byte tag: `(tag, contents, rest)`. The length is definite and minimal
/// (DER): the short form below 128, else the long form with 1 to 3 length octets, the first
/// non-zero and no value below 128.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // A tag number of 31 or more takes more octets; no field of a certificate's outline has one.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if !(1..=3).contains(&n) || rest.len() < n || rest.first() == Some(&0) {
            return None;
        }
        let (octets, tail) = rest.split_at(n);
        rest = tail;
        let len = octets.iter().fold(0usize, |a, &b| a << 8 | usize::from(b));
        if len < 0x80 {
            return None;
        }
        len
    };
    (rest.len() >= len).then(|| {
        let (contents, tail) = rest.split_at(len);
        (tag, contents, tail)
    })
}

/// The contents of a sequence of TLVs whose tags are exactly `tags` (`(tag, optional)`), in order.
fn der_fields<'a>(mut contents: &'a [u8], tags: &[(u8, bool)]) -> Option<Vec<&'a [u8]>> {
    let mut out = Vec::new();
    for &(tag, optional) in tags {
        match der_tlv(contents) {
            Some((t, c, rest)) if t == tag => {
                out.push(c);
                contents = rest;
            }
            _ if optional => {}
            _ => return None,
        }
    }
    contents.is_empty().then_some(out)
}

/// Whether `der` is exactly one DER X.509 `Certificate` in the outline of RFC 5280 section 4.1
/// (spec/PROTOCOL.md section 8): a SEQUENCE of the `tbsCertificate` SEQUENCE, the
/// `signatureAlgorithm` SEQUENCE and the `signatureValue` BIT STRING, and nothing after it; the
/// `tbsCertificate` holds, in order, an optional `[0]` version, the serial INTEGER, the signature
/// AlgorithmIdentifier, the issuer Name, the Validity (two times: UTCTime or GeneralizedTime),
/// the subject Name, the SubjectPublicKeyInfo (an AlgorithmIdentifier and a BIT STRING), and
/// the optional `[1]`, `[2]` and `[3]` fields. The certificate's contents (names, times, key,
/// signature, extensions) are checked where it anchors a path (section 15.2).
fn is_der_certificate(der: &[u8]) -> bool {
    const SEQ: u8 = 0x30;
    let outline = || -> Option<()> {
        let (SEQ, cert, []) = der_tlv(der)? else {
            return None;
        };
        let top = der_fields(cert, &[(SEQ, false), (SEQ, false), (0x03, false)])?;
        let tbs = der_fields(
            top.first()?,
            &[
                (0xa0, true),
                (0x02, false),
                (SEQ, false),
                (SEQ, false),
                (SEQ, false),
                (SEQ, false),
                (SEQ, false),
                (0x81, true),
                (0x82, true),
                (0xa3, true),
            ],
        )?;
        // With the optional version, the fields after it move by one.
        let at = usize::from(der_tlv(top.first()?)?.0 == 0xa0);
        let validity = tbs.get(at + 3)?;
        let times = der_fields(
            validity,
            &[(0x17, true), (0x18, true), (0x17, true), (0x18, true)],
        )?;
        if times.len() != 2 {
            return None;
        }
        der_fields(tbs.get(at + 5)?, &[(SEQ, false), (0x03, false)])?;
        Some(())
    };
    outline().is_some()
}

/// The bundles a verifier holds, one per trust domain, never merged.
///
/// A key thumbprint (`kid`) of an `agentid-grant` or `agentid-revocation` entry belongs to one
/// trust domain only (spec/PROTOCOL.md section 8, "Keys across bundles"): a bundle of another
/// domain that repeats a `kid` already held for a different domain is refused (`bad_bundle`),
/// so that no partner can make our grants or lists ambiguous by publishing our public keys. The
/// verifier's own trust domain ([`BundleSet::for_trust_domain`]) always wins: its bundle is never
/// refused for that reason, and a `kid` it holds names its key whatever other bundles hold.
#[derive(Clone, Debug, Default)]
pub struct BundleSet {
    own: Option<TrustDomain>,
    bundles: HashMap<TrustDomain, TrustBundle>,
}

impl BundleSet {
    /// No bundles: trusts nothing. The verifier's own trust domain is not known yet: declare it
    /// with [`BundleSet::set_own_trust_domain`] before inserting bundles (or build the set with
    /// [`BundleSet::for_trust_domain`]); until then every bundle is treated as another domain's
    /// (the first to hold a `kid` keeps it).
    pub fn new() -> Self {
        Self::default()
    }

    /// No bundles, for a verifier whose own trust domain is `own`.
    pub fn for_trust_domain(own: TrustDomain) -> Self {
        Self {
            own: Some(own),
            bundles: HashMap::new(),
        }
    }

    /// Declares the verifier's own trust domain. Bundles already held stay; from now on the own
    /// domain's bundle wins every `kid` conflict.
    pub fn set_own_trust_domain(&mut self, own: TrustDomain) {
        self.own = Some(own);
    }

    /// The verifier's own trust domain, if declared.
    pub fn own_trust_domain(&self) -> Option<&TrustDomain> {
        self.own.as_ref()
    }

    /// Adds or replaces a trust domain's bundle. Refused, and the held bundle of that domain
    /// kept: a lower `spiffe_sequence` than the one held (`sequence_rollback`); for a domain other
    /// than the verifier's own, an `agentid-grant` or `agentid-revocation` `kid` that a bundle of
    /// another trust domain already holds (`bad_bundle`).
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
        if self.own.as_ref() != Some(bundle.trust_domain()) {
            if let Some((kid, holder)) = self.kid_held_elsewhere(&bundle) {
                return Err(bad(format!(
                    "the bundle of {} lists key `{kid}`, which the bundle of {holder} already holds",
                    bundle.trust_domain()
                )));
            }
        }
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
        Ok(())
    }

    /// The first `kid` of `bundle` (grant or revocation key) that a bundle of another trust
    /// domain holds, with that domain.
    fn kid_held_elsewhere(&self, bundle: &TrustBundle) -> Option<(String, TrustDomain)> {
        let kids = bundle.grant_keys.iter().chain(&bundle.revocation_keys);
        for k in kids {
            for other in self.bundles.values() {
                if other.trust_domain == bundle.trust_domain {
                    continue;
                }
                if other.agentid_keys().any(|o| o.kid == k.kid) {
                    return Some((k.kid.clone(), other.trust_domain.clone()));
                }
            }
        }
        None
    }

    /// The bundle of `td`, if held.
    pub fn get(&self, td: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(td)
    }

    /// All bundles.
    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values()
    }

    /// Finds the grant key with `kid` (spec/PROTOCOL.md section 10, step 3.a.1): in the own
    /// domain's bundle first; otherwise the one other bundle that holds it (`None` when none
    /// does, when the own bundle holds that `kid` as a revocation key, or when more than one
    /// other bundle does, which [`BundleSet::insert`] never lets happen).
    pub(crate) fn find_grant_key(&self, kid: &str) -> Option<(&TrustDomain, &PublicKey)> {
        self.find_key(kid, |b| &b.grant_keys)
    }

    /// Finds the revocation key with `kid` (spec/PROTOCOL.md section 14.1, R3), by the rule of
    /// [`BundleSet::find_grant_key`].
    pub(crate) fn find_revocation_key(&self, kid: &str) -> Option<(&TrustDomain, &PublicKey)> {
        self.find_key(kid, |b| &b.revocation_keys)
    }

    fn find_key<'a>(
        &'a self,
        kid: &str,
        keys: impl Fn(&'a TrustBundle) -> &'a [BundleKey],
    ) -> Option<(&'a TrustDomain, &'a PublicKey)> {
        if let Some(own) = self.own.as_ref().and_then(|td| self.bundles.get(td)) {
            if let Some(k) = keys(own).iter().find(|k| k.kid == kid) {
                return Some((&own.trust_domain, &k.key));
            }
            // A `kid` the own bundle holds under the other use names the own domain's key too
            // (section 8), so no other bundle's copy of it is looked at.
            if own.agentid_keys().any(|k| k.kid == kid) {
                return None;
            }
        }
        let mut found = None;
        for b in self.bundles.values() {
            if self.own.as_ref() == Some(&b.trust_domain) {
                continue;
            }
            for k in keys(b) {
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

impl TrustBundle {
    /// Every `agentid-grant` and `agentid-revocation` key.
    fn agentid_keys(&self) -> impl Iterator<Item = &BundleKey> {
        self.grant_keys.iter().chain(&self.revocation_keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::AuthorityKey;
    use crate::Algorithm;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    /// A self-signed P-256 CA certificate (openssl, 511 bytes; the x509-svid entry of
    /// spec/vectors `bundle-x509-entry-valid`).
    const CA_CERT: &str = "MIIB+zCCAaGgAwIBAgIBATAKBggqhkjOPQQDAjBCMR0wGwYDVQQKDBRhZ2VudGlkIHRlc3QgdmVjdG9yczEhMB8GA1UEAwwYZXhhbXBsZS5vcmcgeDUwOS1zdmlkIENBMCAXDTI2MTIwNTIxMzIwM1oYDzIxMjYxMTExMjEzMjAzWjBCMR0wGwYDVQQKDBRhZ2VudGlkIHRlc3QgdmVjdG9yczEhMB8GA1UEAwwYZXhhbXBsZS5vcmcgeDUwOS1zdmlkIENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAESe9+XHsYWDId71E9n2uk9ozNeFxadclXFLYdBO7XkdktDHL2WJziKB5Aunb5QcbXdPNz5Ca+nFHQnClBRbWAwqOBhTCBgjAdBgNVHQ4EFgQU/lzoaYAzdhZbLCDfEt90L0nneU8wHwYDVR0jBBgwFoAU/lzoaYAzdhZbLCDfEt90L0nneU8wDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwHwYDVR0RBBgwFoYUc3BpZmZlOi8vZXhhbXBsZS5vcmcwCgYIKoZIzj0EAwIDSAAwRQIgD1UTATsQpJsSaNy2ENYJpHt2iX8VW1oFufL4yG3lf60CIQCmt2ZvNVgVCYh+KHnvmTw1MXiyKbtea8jtDCDSA+evIg==";

    #[test]
    fn an_x5c_must_be_one_der_certificate_in_the_outline_of_rfc_5280() {
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(CA_CERT)
            .unwrap();
        assert!(is_der_certificate(&der));
        let wrap = |tag: u8, body: &[u8]| {
            let mut v = vec![tag];
            if body.len() < 0x80 {
                v.push(body.len() as u8);
            } else {
                v.extend([0x81, body.len() as u8]);
            }
            v.extend(body);
            v
        };
        let alg = wrap(
            0x30,
            &wrap(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
        );
        let name = wrap(0x30, &[]);
        let times = |a: u8, b: u8| {
            wrap(
                0x30,
                &[wrap(a, b"260101000000Z"), wrap(b, b"20260101000000Z")].concat(),
            )
        };
        let spki = wrap(0x30, &[alg.clone(), wrap(0x03, &[0, 4])].concat());
        let tbs = |validity: &[u8], extra: &[u8]| {
            wrap(
                0x30,
                &[
                    wrap(0xa0, &wrap(0x02, &[2])),
                    wrap(0x02, &[1]),
                    alg.clone(),
                    name.clone(),
                    validity.to_vec(),
                    name.clone(),
                    spki.clone(),
                    extra.to_vec(),
                ]
                .concat(),
            )
        };
        let cert = |tbs: Vec<u8>, tail: &[u8]| {
            wrap(
                0x30,
                &[tbs, alg.clone(), wrap(0x03, &[0, 1]), tail.to_vec()].concat(),
            )
        };
        let minimal = cert(tbs(&times(0x17, 0x18), &[]), &[]);
        assert!(is_der_certificate(&minimal));
        assert!(is_der_certificate(&cert(
            tbs(&times(0x18, 0x17), &wrap(0xa3, &wrap(0x30, &[]))),
            &[]
        )));
        let mut trailing = minimal.clone();
        trailing.push(0);
        let mut long_form = vec![0x30, 0x81, minimal[1]];
        long_form.extend(&minimal[2..]);
        for (what, der) in [
            (
                "an empty SEQUENCE in a SEQUENCE",
                vec![0x30, 0x02, 0x30, 0x00],
            ),
            ("the outer SEQUENCE only", vec![0x30, 0x00]),
            ("a byte after the certificate", trailing),
            ("a length in the long form below 128", long_form),
            (
                "no signature",
                wrap(0x30, &[tbs(&times(0x17, 0x17), &[]), alg.clone()].concat()),
            ),
            (
                "an extra element",
                cert(tbs(&times(0x17, 0x17), &[]), &wrap(0x05, &[])),
            ),
            (
                "one time in the validity",
                cert(tbs(&wrap(0x30, &wrap(0x17, b"260101000000Z")), &[]), &[]),
            ),
            (
                "an INTEGER for a time",
                cert(tbs(&times(0x17, 0x02), &[]), &[]),
            ),
            (
                "a field after the extensions",
                cert(
                    tbs(
                        &times(0x17, 0x17),
                        &[wrap(0xa3, &[]), wrap(0x30, &[])].concat(),
                    ),
                    &[],
                ),
            ),
        ] {
            assert!(!is_der_certificate(&der), "{what}");
        }
    }

    fn key() -> PublicKey {
        AuthorityKey::generate(Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn a_foreign_bundle_repeating_our_grant_key_is_refused_and_ours_still_resolves() {
        let ours = key();
        let mut set = BundleSet::for_trust_domain(td("example.org"));
        set.insert(TrustBundle::new(td("example.org"), 1).add_grant_key(ours.clone()))
            .unwrap();
        let e = set
            .insert(TrustBundle::new(td("partner.example"), 1).add_grant_key(ours.clone()))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadBundle);
        assert!(set.get(&td("partner.example")).is_none());
        let (d, k) = set.find_grant_key(&ours.thumbprint()).unwrap();
        assert_eq!((d, k), (&td("example.org"), &ours));
    }

    #[test]
    fn a_foreign_bundle_repeating_our_revocation_key_under_another_use_is_refused() {
        let ours = key();
        let mut set = BundleSet::for_trust_domain(td("example.org"));
        set.insert(TrustBundle::new(td("example.org"), 1).add_revocation_key(ours.clone()))
            .unwrap();
        let e = set
            .insert(TrustBundle::new(td("partner.example"), 1).add_grant_key(ours.clone()))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadBundle);
        assert!(set.find_grant_key(&ours.thumbprint()).is_none());
        assert_eq!(
            set.find_revocation_key(&ours.thumbprint()).unwrap().0,
            &td("example.org")
        );
    }

    #[test]
    fn a_refused_update_keeps_the_held_bundle_of_that_domain() {
        let ours = key();
        let theirs = key();
        let mut set = BundleSet::for_trust_domain(td("example.org"));
        set.insert(TrustBundle::new(td("example.org"), 1).add_grant_key(ours.clone()))
            .unwrap();
        set.insert(TrustBundle::new(td("partner.example"), 1).add_grant_key(theirs.clone()))
            .unwrap();
        let bad_update = TrustBundle::new(td("partner.example"), 2)
            .add_grant_key(theirs.clone())
            .add_grant_key(ours.clone());
        assert_eq!(
            set.insert(bad_update).unwrap_err().code(),
            ErrorCode::BadBundle
        );
        assert_eq!(set.get(&td("partner.example")).unwrap().sequence(), 1);
        assert_eq!(
            set.find_grant_key(&theirs.thumbprint()).unwrap().0,
            &td("partner.example")
        );
    }

    #[test]
    fn the_own_domain_always_wins_even_when_loaded_after_a_copy() {
        // A partner's bundle that already lists a key we only publish later: our bundle is
        // accepted, and the kid names our key.
        let ours = key();
        let mut set = BundleSet::for_trust_domain(td("example.org"));
        set.insert(TrustBundle::new(td("partner.example"), 1).add_grant_key(ours.clone()))
            .unwrap();
        set.insert(TrustBundle::new(td("example.org"), 1).add_grant_key(ours.clone()))
            .unwrap();
        assert_eq!(
            set.find_grant_key(&ours.thumbprint()).unwrap().0,
            &td("example.org")
        );
    }

    #[test]
    fn between_other_domains_the_first_binding_wins() {
        let shared = key();
        let mut set = BundleSet::for_trust_domain(td("example.org"));
        set.insert(TrustBundle::new(td("a.example"), 1).add_grant_key(shared.clone()))
            .unwrap();
        let e = set
            .insert(TrustBundle::new(td("b.example"), 1).add_revocation_key(shared.clone()))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadBundle);
        assert_eq!(
            set.find_grant_key(&shared.thumbprint()).unwrap().0,
            &td("a.example")
        );
        // A domain may of course re-publish its own keys.
        set.insert(TrustBundle::new(td("a.example"), 2).add_grant_key(shared.clone()))
            .unwrap();
    }

    #[test]
    fn without_a_declared_own_domain_the_first_binding_wins_for_everyone() {
        let k = key();
        let mut set = BundleSet::new();
        set.insert(TrustBundle::new(td("partner.example"), 1).add_grant_key(k.clone()))
            .unwrap();
        assert_eq!(
            set.insert(TrustBundle::new(td("example.org"), 1).add_grant_key(k.clone()))
                .unwrap_err()
                .code(),
            ErrorCode::BadBundle
        );
    }
}
