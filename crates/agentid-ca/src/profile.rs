//! The X509-SVID leaf profile of spec/PROTOCOL.md section 15.

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose,
    SanType, SerialNumber,
};

use crate::error::{CaError, Result};
use crate::signer::{RcgenSigner, X509Signer};
use crate::util;

/// A signed leaf certificate and its facts.
#[derive(Clone, Debug)]
pub struct LeafCertificate {
    /// The certificate DER.
    pub der: Vec<u8>,
    /// Serial number, lowercase hex of the 16 serial bytes (no leading `00`).
    pub serial: String,
    /// notBefore, Unix seconds.
    pub not_before: u64,
    /// notAfter, Unix seconds.
    pub not_after: u64,
}

/// Everything the profile needs; `not_after` has already been capped by the caller.
pub(crate) struct LeafSpec<'a> {
    pub uri: &'a str,
    /// DNS SANs (service certificates only, as policy lists them).
    pub dns: &'a [String],
    pub spki_der: &'a [u8],
    pub not_before: u64,
    pub not_after: u64,
}

/// Builds and signs a leaf: exactly one URI SAN (critical, since the subject is empty; service
/// certificates add the DNS names policy lists for them),
/// `cA=false` (basicConstraints present and critical), keyUsage digitalSignature (critical),
/// EKU serverAuth+clientAuth, random 128-bit serial, AKI. Only the SPKI is taken from the request.
pub(crate) fn sign_leaf(
    spec: &LeafSpec<'_>,
    intermediate_der: &[u8],
    signer: &dyn X509Signer,
) -> Result<LeafCertificate> {
    if spec.not_after <= spec.not_before {
        return Err(CaError::InvalidRequest(
            "certificate would have an empty validity".into(),
        ));
    }
    let serial = util::random_serial()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names =
        vec![SanType::URI(spec.uri.try_into().map_err(
            |e: rcgen::Error| CaError::CertificateGeneration(e.to_string()),
        )?)];
    for name in spec.dns {
        p.subject_alt_names.push(SanType::DnsName(
            name.as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::CertificateGeneration(e.to_string()))?,
        ));
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.not_before = util::datetime(spec.not_before)?;
    p.not_after = util::datetime(spec.not_after)?;
    p.use_authority_key_identifier_extension = true;
    p.name_constraints = None;

    let spki = rcgen::SubjectPublicKeyInfo::from_der(spec.spki_der)
        .map_err(|e| CaError::CsrUnsupportedKey(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_der(&intermediate_der.into(), RcgenSigner::new(signer))
        .map_err(|e| CaError::CertificateGeneration(format!("intermediate: {e}")))?;
    let cert = p.signed_by(&spki, &issuer).map_err(|e| match e {
        rcgen::Error::RemoteKeyError => CaError::Signer("issuing key failed to sign".into()),
        other => CaError::CertificateGeneration(other.to_string()),
    })?;
    Ok(LeafCertificate {
        der: cert.der().to_vec(),
        serial: util::hex(&serial),
        not_before: spec.not_before,
        not_after: spec.not_after,
    })
}

/// notAfter of a CA certificate, Unix seconds.
/// The subject common name of a certificate, if it has one (UTF-8).
pub(crate) fn cert_common_name(der: &[u8]) -> Result<Option<String>> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| CaError::CertificateGeneration(format!("certificate: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    Ok(cn)
}

pub(crate) fn cert_not_after(der: &[u8]) -> Result<u64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| CaError::CertificateGeneration(format!("certificate: {e}")))?;
    u64::try_from(cert.validity().not_after.timestamp())
        .map_err(|_| CaError::CertificateGeneration("notAfter before the epoch".into()))
}
