//! X509-SVID checks, callable outside rustls (the `reauth` frame and credential rotation use
//! them too).
//!
//! Two steps, both required:
//! 1. [`check_leaf`]: the leaf rules of the X509-SVID profile that webpki does not enforce
//!    (exactly one `spiffe://` URI SAN naming a task identity or a service ID, `cA = false`,
//!    `digitalSignature` without `keyCertSign`/`cRLSign`, the EKU of the role, no duplicated
//!    extension), giving back the peer identity, its public key and validity.
//! 2. [`TrustStore::verify`]: the leaf rules, then chain validation through webpki against the
//!    anchors of the peer's **own** trust domain only, at a time given as a parameter, then the
//!    key usage of every intermediate of the validated path (`keyCertSign` when keyUsage is
//!    present, RFC 5280 section 6.1.4 (n), which webpki does not check).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use agentid_protocol::{PeerId, PublicKey, TrustDomain};
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::error::CertError;
use crate::provider;

/// At most this many intermediates are accepted from a peer (issuing CA, maybe one more): bounds
/// path building (threats row 17).
pub const MAX_INTERMEDIATES: usize = 4;

/// A DER certificate is at most this large (per certificate, before parsing).
pub const MAX_CERT_BYTES: usize = 16 * 1024;

const EKU_SERVER_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 1];
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 2];

/// The role a certificate is presented in: it selects the required extended key usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertUsage {
    /// Presented by a TLS client: requires `clientAuth`.
    ClientAuth,
    /// Presented by a TLS server: requires `serverAuth`.
    ServerAuth,
}

impl CertUsage {
    fn webpki(self) -> webpki::KeyUsage {
        // webpki applies this to every certificate of the path, and CA certificates usually
        // carry no EKU: `required_if_present` here, while `check_leaf` requires the leaf's own
        // EKU extension to list the usage.
        match self {
            CertUsage::ClientAuth => webpki::KeyUsage::required_if_present(EKU_CLIENT_AUTH),
            CertUsage::ServerAuth => webpki::KeyUsage::required_if_present(EKU_SERVER_AUTH),
        }
    }
}

/// What a valid X509-SVID leaf says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidInfo {
    /// The identity of the URI SAN: a task identity or a service ID.
    pub id: PeerId,
    /// The subject public key.
    pub public_key: PublicKey,
    /// `notBefore`, Unix seconds.
    pub not_before: u64,
    /// `notAfter`, Unix seconds.
    pub not_after: u64,
    /// The serial number: lowercase hex without leading zero bytes, the CA's form
    /// ([`agentid_protocol::Serial`]).
    pub serial: String,
}

/// Checks the X509-SVID leaf rules on `der` for the given role. Does not validate the chain: use
/// [`TrustStore::verify`] for a peer certificate.
pub fn check_leaf(der: &[u8], usage: CertUsage) -> Result<SvidInfo, CertError> {
    if der.len() > MAX_CERT_BYTES {
        return Err(CertError::Malformed("certificate too large".into()));
    }
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Malformed("trailing bytes".into()));
    }
    // Any duplicated extension (not only the ones read below) rejects the certificate.
    cert.tbs_certificate
        .extensions_map()
        .map_err(|_| CertError::DuplicateExtension)?;

    let ext_err = |e: x509_parser::error::X509Error| match e {
        x509_parser::error::X509Error::DuplicateExtensions => CertError::DuplicateExtension,
        other => CertError::Malformed(other.to_string()),
    };

    // Identity: exactly one URI SAN, spiffe scheme, a task identity or a service ID.
    let san = cert.subject_alternative_name().map_err(ext_err)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [one] => *one,
        other => return Err(CertError::UriSanCount(other.len())),
    };
    let scheme_ok = uri
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"));
    if !scheme_ok {
        return Err(CertError::NotSpiffe);
    }
    let id = PeerId::parse(uri).map_err(CertError::BadId)?;

    // Not a CA.
    if let Some(bc) = cert.basic_constraints().map_err(ext_err)? {
        if bc.value.ca {
            return Err(CertError::CaAsLeaf);
        }
    }
    // keyUsage: digitalSignature, never keyCertSign or cRLSign (webpki accepts those on a leaf).
    match cert.key_usage().map_err(ext_err)? {
        None => return Err(CertError::DigitalSignatureMissing),
        Some(ku) => {
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                return Err(CertError::ForbiddenKeyUsage);
            }
            if !ku.value.digital_signature() {
                return Err(CertError::DigitalSignatureMissing);
            }
        }
    }
    // EKU of the role, required (not only "if present").
    let eku = cert.extended_key_usage().map_err(ext_err)?;
    let (ok, name) = match usage {
        CertUsage::ClientAuth => (
            eku.as_ref().is_some_and(|e| e.value.client_auth),
            "clientAuth",
        ),
        CertUsage::ServerAuth => (
            eku.as_ref().is_some_and(|e| e.value.server_auth),
            "serverAuth",
        ),
    };
    if !ok {
        return Err(CertError::EkuMissing(name));
    }

    let public_key =
        PublicKey::from_spki_der(cert.public_key().raw).map_err(CertError::UnsupportedKey)?;
    let validity = cert.validity();
    Ok(SvidInfo {
        id,
        public_key,
        not_before: u64::try_from(validity.not_before.timestamp()).unwrap_or(0),
        not_after: u64::try_from(validity.not_after.timestamp()).unwrap_or(0),
        serial: serial_hex(cert.raw_serial()),
    })
}

/// RFC 5280 section 6.1.4 (n): an intermediate CA certificate of a validated path that carries a
/// keyUsage extension must assert `keyCertSign` (no keyUsage at all is allowed). rustls-webpki
/// 0.103 checks basicConstraints and path length but not an issuer's key usage, so a CA
/// certificate restricted to, say, `digitalSignature` would otherwise still issue leaves that we
/// accept. Trust anchors are configuration and are not checked.
fn check_issuer_key_usage(der: &[u8]) -> Result<(), CertError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    match cert.key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(ku)) if ku.value.key_cert_sign() => Ok(()),
        Ok(Some(_)) => Err(CertError::IssuerKeyUsage),
        Err(x509_parser::error::X509Error::DuplicateExtensions) => {
            Err(CertError::DuplicateExtension)
        }
        Err(e) => Err(CertError::Malformed(e.to_string())),
    }
}

/// A certificate serial in its canonical form ([`agentid_protocol::Serial`]): lowercase hex of
/// the DER INTEGER's content bytes without leading zero bytes (the `00` sign byte DER adds
/// before a high bit is dropped), so that
/// transport logs, [`SvidInfo::serial`] and the CA's issuance and audit records join on it. A
/// serial of zero (never issued) is `00`.
pub(crate) fn serial_hex(der_integer: &[u8]) -> String {
    agentid_protocol::Serial::from_der_integer(der_integer).to_string()
}

/// At most this many validated leaves are remembered per usage (then the memory is cleared).
const LEAF_CACHE_ENTRIES: usize = 256;

/// Leaves' answers by their DER bytes ([`LeafCache`]).
type Leaves = HashMap<Box<[u8]>, Arc<SvidInfo>>;

/// What [`check_leaf`] said about leaves whose chain [`TrustStore::verify`] then validated, keyed
/// by the exact DER bytes and the usage. `check_leaf` is a pure function of those two, so a hit
/// gives the same answer as parsing again; it saves the x509 parse that the rustls verifier and
/// the post-handshake step would each repeat for every connection of the same certificate. Only
/// leaves that passed chain validation are inserted (an unauthenticated peer cannot fill it);
/// the time-dependent checks (validity, chain) are never cached.
///
/// It also remembers intermediates that passed [`check_issuer_key_usage`] on a validated path
/// (a pure function of the DER bytes too), so that each intermediate is parsed once, not on
/// every handshake.
#[derive(Default)]
struct LeafCache {
    /// Shared with the rustls verifier, which reads a hit without copying it.
    by_usage: Mutex<[Leaves; 2]>,
    issuers: Mutex<HashSet<Box<[u8]>>>,
}

impl LeafCache {
    fn slot(usage: CertUsage) -> usize {
        match usage {
            CertUsage::ClientAuth => 0,
            CertUsage::ServerAuth => 1,
        }
    }

    fn get(&self, der: &[u8], usage: CertUsage) -> Option<Arc<SvidInfo>> {
        let maps = self.by_usage.lock().ok()?;
        maps.get(Self::slot(usage))?.get(der).cloned()
    }

    fn insert(&self, der: &[u8], usage: CertUsage, info: &Arc<SvidInfo>) {
        let Ok(mut maps) = self.by_usage.lock() else {
            return;
        };
        let Some(map) = maps.get_mut(Self::slot(usage)) else {
            return;
        };
        if map.len() >= LEAF_CACHE_ENTRIES {
            map.clear();
        }
        map.insert(der.into(), info.clone());
    }

    fn issuer_checked(&self, der: &[u8]) -> bool {
        self.issuers.lock().is_ok_and(|set| set.contains(der))
    }

    fn insert_issuer(&self, der: &[u8]) {
        let Ok(mut set) = self.issuers.lock() else {
            return;
        };
        if set.len() >= LEAF_CACHE_ENTRIES {
            set.clear();
        }
        set.insert(der.into());
    }

    fn len(&self) -> usize {
        self.by_usage
            .lock()
            .map(|m| m.iter().map(HashMap::len).sum())
            .unwrap_or(0)
    }
}

/// X.509 trust anchors, kept per trust domain and never merged: a peer is validated only against
/// the anchors of the trust domain its URI SAN names.
#[derive(Clone, Default)]
pub struct TrustStore {
    anchors: BTreeMap<String, Vec<TrustAnchor<'static>>>,
    leaves: Arc<LeafCache>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("anchors", &self.anchors)
            .field("validated_leaves", &self.leaves.len())
            .finish()
    }
}

impl TrustStore {
    /// An empty store (rejects every peer).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a CA certificate (DER) as an X.509 authority of `trust_domain`.
    pub fn add_authority(
        &mut self,
        trust_domain: &TrustDomain,
        ca_der: &[u8],
    ) -> Result<(), CertError> {
        let der = CertificateDer::from(ca_der);
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| CertError::Malformed(format!("{e:?}")))?
            .to_owned();
        self.anchors
            .entry(trust_domain.as_str().to_owned())
            .or_default()
            .push(anchor);
        Ok(())
    }

    /// Builder form of [`TrustStore::add_authority`].
    pub fn with_authority(
        mut self,
        trust_domain: &TrustDomain,
        ca_der: &[u8],
    ) -> Result<Self, CertError> {
        self.add_authority(trust_domain, ca_der)?;
        Ok(self)
    }

    /// The trust domains that have at least one anchor.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.anchors.keys().map(String::as_str)
    }

    /// Checks `end_entity` as an X509-SVID for `usage` and validates its chain against the
    /// anchors of its own trust domain at `now`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: CertUsage,
    ) -> Result<SvidInfo, CertError> {
        self.verify_shared(end_entity, intermediates, now, usage)
            .map(Arc::unwrap_or_clone)
    }

    /// [`TrustStore::verify`], the answer shared with the leaf cache (not copied out of it).
    pub(crate) fn verify_shared(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: CertUsage,
    ) -> Result<Arc<SvidInfo>, CertError> {
        let cached = self.leaves.get(end_entity.as_ref(), usage);
        let hit = cached.is_some();
        let info = match cached {
            Some(info) => info,
            None => Arc::new(check_leaf(end_entity.as_ref(), usage)?),
        };
        if intermediates.len() > MAX_INTERMEDIATES {
            return Err(CertError::TooManyIntermediates(intermediates.len()));
        }
        // The size cap holds for every certificate sent, not only the leaf: path building never
        // reads an intermediate it does not need, which would otherwise pass unchecked.
        if intermediates
            .iter()
            .any(|c| c.as_ref().len() > MAX_CERT_BYTES)
        {
            return Err(CertError::Malformed("certificate too large".into()));
        }
        let td = info.id.trust_domain();
        let anchors = self
            .anchors
            .get(td.as_str())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| CertError::UnknownTrustDomain(td.as_str().to_owned()))?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| CertError::Malformed(format!("{e:?}")))?;
        let algs = provider::verification_algorithms();
        let path = ee
            .verify_for_usage(
                algs.all,
                anchors,
                intermediates,
                now,
                usage.webpki(),
                None,
                None,
            )
            .map_err(|e| match e {
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                    CertError::Expired
                }
                other => CertError::Chain(format!("{other:?}")),
            })?;
        for issuer in path.intermediate_certificates() {
            let der = issuer.der();
            if !self.leaves.issuer_checked(der.as_ref()) {
                check_issuer_key_usage(der.as_ref())?;
                // On a validated path only: an unauthenticated peer cannot fill it.
                self.leaves.insert_issuer(der.as_ref());
            }
        }
        if !hit {
            self.leaves.insert(end_entity.as_ref(), usage, &info);
        }
        Ok(info)
    }

    /// Re-validates a live peer's certificate path (leaf first) at `now` after a bundle change
    /// (spec/PROTOCOL.md 16.4): [`TrustStore::verify`], except that a validity failure is
    /// tolerated once the leaf itself is past `leaf_not_after`, since the session's deadline
    /// (never later) ends it for that reason. Any other validity failure fails, an intermediate
    /// that expired before the leaf in particular: webpki reports it ahead of a path that no
    /// longer reaches an anchor, and a new connection would be refused.
    pub(crate) fn revalidate(
        &self,
        certs: &[CertificateDer<'_>],
        now: u64,
        usage: CertUsage,
        leaf_not_after: u64,
    ) -> Result<(), CertError> {
        let Some((leaf, rest)) = certs.split_first() else {
            return Ok(());
        };
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
        match self.verify(leaf, rest, at, usage) {
            Ok(_) => Ok(()),
            Err(CertError::Expired) if now >= leaf_not_after => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// [`check_leaf`] for a leaf that [`TrustStore::verify`] validated earlier (the rustls
    /// verifier of this handshake): its remembered answer, else a fresh parse.
    pub(crate) fn verified_leaf(
        &self,
        der: &[u8],
        usage: CertUsage,
    ) -> Result<SvidInfo, CertError> {
        match self.leaves.get(der, usage) {
            Some(info) => Ok(Arc::unwrap_or_clone(info)),
            None => check_leaf(der, usage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::serial_hex;

    #[test]
    fn serials_are_written_in_the_ca_form() {
        for (der, hex) in [
            (&[0x00, 0xdc, 0x60, 0x07][..], "dc6007"),
            (&[0x00, 0x00, 0x80][..], "80"),
            (&[0x7f, 0x00][..], "7f00"),
            (&[0x0a, 0x01][..], "0a01"),
            (&[0x01][..], "01"),
            (&[0x00][..], "00"),
            (&[][..], "00"),
        ] {
            assert_eq!(serial_hex(der), hex, "{der:02x?}");
        }
    }
}
