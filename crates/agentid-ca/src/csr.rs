//! CSR intake: verify the self-signature and take the public key, nothing else.
//!
//! Whatever else a CSR asks for (a CA flag, names, key usages) is never copied: the leaf is
//! built from the CA's own profile. Requests that ask for more than the profile gives are
//! refused with their own error, so that a requester learns its CSR is wrong instead of
//! receiving a certificate that differs from what it asked for ("CSR
//! smuggling" in spec/PROTOCOL.md section 19).

use std::collections::HashSet;

use agentid_protocol::PublicKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;

use crate::error::{CaError, Result};

/// The most bytes of the request's own text (a name, an OID) that a refusal quotes, and the most
/// requested names it lists: a refusal reaches the requester, the CA's log and the audit record,
/// and records never hold CSRs (spec/CA-API.md 4.1).
const MAX_QUOTED_BYTES: usize = 256;
const MAX_QUOTED_NAMES: usize = 4;

/// Text taken from the request, as a refusal may quote it.
fn quoted(text: String) -> String {
    agentid_protocol::clean_text(text, MAX_QUOTED_BYTES)
}

/// The public key accepted from a CSR.
#[derive(Clone, Debug)]
pub struct RequestedKey {
    /// The validated public key.
    pub public_key: PublicKey,
    /// Its SubjectPublicKeyInfo DER, as it appeared in the CSR.
    pub spki_der: Vec<u8>,
}

impl RequestedKey {
    /// Accepts a bare SubjectPublicKeyInfo (for callers that hold the key itself, e.g. the CLI
    /// generating a key locally, or a renewal that re-uses the recorded key).
    pub fn from_spki_der(spki_der: &[u8]) -> Result<Self> {
        let public_key = PublicKey::from_spki_der(spki_der)
            .map_err(|e| CaError::CsrUnsupportedKey(e.to_string()))?;
        Ok(RequestedKey {
            public_key,
            spki_der: spki_der.to_vec(),
        })
    }

    /// The key's RFC 7638 thumbprint.
    pub fn thumbprint(&self) -> String {
        self.public_key.thumbprint()
    }
}

/// Parses a CSR (DER, or PEM `CERTIFICATE REQUEST`), verifies its signature and checks that it
/// asks for nothing beyond `expected_uri` as its only (optional) SAN.
///
/// Accepted extension requests: subjectAltName with exactly one URI equal to `expected_uri`;
/// keyUsage with digitalSignature only; extendedKeyUsage with serverAuth and/or clientAuth;
/// basicConstraints with cA FALSE; subjectKeyIdentifier. Anything else is refused. The subject
/// DN is ignored (the leaf's subject is always empty).
pub fn parse_csr(csr: &[u8], expected_uri: &str) -> Result<RequestedKey> {
    let owned;
    let der: &[u8] = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
        owned = CertificateSigningRequestDer::from_pem_slice(csr)
            .map_err(|e| CaError::CsrMalformed(format!("bad PEM: {e}")))?;
        owned.as_ref()
    } else {
        csr
    };
    let (rest, req) = X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::CsrMalformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::CsrMalformed(
            "trailing bytes after the request".into(),
        ));
    }
    let info = &req.certification_request_info;
    let spki = &info.subject_pki;

    // 1. The key type, before anything else about the request.
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            return Err(CaError::CsrUnsupportedKey(quoted(format!(
                "EC key on curve {}",
                curve
                    .map(|c| c.to_id_string())
                    .unwrap_or_else(|| "(none)".into())
            ))));
        }
    } else if *alg != OID_SIG_ED25519 {
        let name = match alg.to_id_string().as_str() {
            "1.2.840.113549.1.1.1" => "RSA".to_string(),
            "1.2.840.113549.1.1.10" => "RSA-PSS".to_string(),
            "1.3.101.113" => "Ed448".to_string(),
            other => format!("algorithm {other}"),
        };
        return Err(CaError::CsrUnsupportedKey(quoted(name)));
    }
    let key = RequestedKey::from_spki_der(spki.raw)?;

    // 2. Proof of possession.
    req.verify_signature()
        .map_err(|_| CaError::CsrBadSignature)?;

    // 3. What it asks for.
    for attr in info.iter_attributes() {
        match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(ext_req) => {
                single_valued(attr.value)?;
                let mut seen = HashSet::new();
                for ext in &ext_req.extensions {
                    if !seen.insert(ext.oid.to_id_string()) {
                        return Err(CaError::CsrUnsupportedExtension(quoted(format!(
                            "{} (duplicate)",
                            ext.oid.to_id_string()
                        ))));
                    }
                    check_requested_extension(ext.parsed_extension(), &ext.oid, expected_uri)?;
                }
            }
            // A challenge password carries nothing we would copy.
            ParsedCriAttribute::ChallengePassword(_) => {}
            ParsedCriAttribute::UnsupportedAttribute => {
                return Err(CaError::CsrUnsupportedExtension(quoted(format!(
                    "attribute {}",
                    attr.oid.to_id_string()
                ))))
            }
        }
    }
    Ok(key)
}

/// extensionRequest is single-valued (PKCS#9, RFC 2985 section 5.4.2). x509-parser reads the
/// first value of the attribute's SET and skips the rest unseen (`value` is the SET's header and
/// that first value), so a second value could ask for anything: the SET must hold exactly the
/// value read.
fn single_valued(value: &[u8]) -> Result<()> {
    use x509_parser::asn1_rs::{FromDer as _, Header, Length};
    let malformed = || CaError::CsrMalformed("extensionRequest holds more than one value".into());
    let (first, header) = Header::from_der(value).map_err(|_| malformed())?;
    match header.length() {
        Length::Definite(n) if n == first.len() => Ok(()),
        _ => Err(malformed()),
    }
}

fn check_requested_extension(
    ext: &ParsedExtension<'_>,
    oid: &x509_parser::der_parser::oid::Oid<'_>,
    expected_uri: &str,
) -> Result<()> {
    match ext {
        ParsedExtension::BasicConstraints(bc) => {
            if bc.ca {
                return Err(CaError::CsrRequestsCa);
            }
        }
        ParsedExtension::SubjectAlternativeName(san) => {
            let ok =
                matches!(san.general_names.as_slice(), [GeneralName::URI(u)] if *u == expected_uri);
            if !ok {
                let names = &san.general_names;
                let mut requested: Vec<String> = names
                    .iter()
                    .take(MAX_QUOTED_NAMES)
                    .map(|n| quoted(general_name_str(n)))
                    .collect();
                if names.len() > MAX_QUOTED_NAMES {
                    requested.push(format!("... ({} names in all)", names.len()));
                }
                return Err(CaError::CsrSanMismatch {
                    requested,
                    expected: expected_uri.to_string(),
                });
            }
        }
        ParsedExtension::KeyUsage(ku) => {
            // x509-parser: bit 0 = digitalSignature.
            if ku.flags & !1u16 != 0 {
                return Err(CaError::CsrKeyUsage(ku.to_string()));
            }
        }
        ParsedExtension::ExtendedKeyUsage(eku) => {
            let extra = eku.any
                || eku.code_signing
                || eku.email_protection
                || eku.time_stamping
                || eku.ocsp_signing
                || !eku.other.is_empty();
            if extra {
                return Err(CaError::CsrExtendedKeyUsage(quoted(format!("{eku:?}"))));
            }
        }
        ParsedExtension::SubjectKeyIdentifier(_) => {}
        _ => return Err(CaError::CsrUnsupportedExtension(quoted(oid.to_id_string()))),
    }
    Ok(())
}

fn general_name_str(g: &GeneralName<'_>) -> String {
    match g {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
        other => format!("{other:?}"),
    }
}
