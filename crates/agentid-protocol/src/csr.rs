//! A PKCS#10 certification request (RFC 2986) signed by a task key, so that an agent can ask a
//! CA for its certificate without the private key ever leaving this crate.
//!
//! The request is the smallest one a CA needs: version 0, an empty subject, the key's
//! SubjectPublicKeyInfo, and one extension request, a subjectAltName holding the identity's URI.
//! It is written here in DER by hand (a few fixed structures), so the crate stays free of an
//! X.509 library.

use crate::crypto::{Algorithm, TaskKey};
use crate::error::{Error, ErrorCode, Result};
use crate::id::SpiffeId;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
/// `[0]` constructed (the request's attributes).
const ATTRIBUTES: u8 = 0xa0;
/// `[6]` primitive: a uniformResourceIdentifier GeneralName.
const URI_NAME: u8 = 0x86;

/// pkcs-9-at-extensionRequest, 1.2.840.113549.1.9.14.
const OID_EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// ecdsa-with-SHA256, 1.2.840.10045.4.3.2.
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// id-Ed25519, 1.3.101.112.
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// One DER TLV (definite length, short or long form).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 4);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, &parts.concat())
}

/// A non-negative DER INTEGER from big-endian magnitude bytes.
fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let digits = magnitude.get(skip..).unwrap_or_default();
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    tlv(INTEGER, &content)
}

impl TaskKey {
    /// A DER PKCS#10 request for a certificate of `identity` (the task identity or service ID
    /// the CA is asked to certify) with this key, signed by it. The key never leaves the crate.
    pub fn csr(&self, identity: &SpiffeId) -> Result<Vec<u8>> {
        let san = seq(&[&tlv(URI_NAME, identity.as_str().as_bytes())]);
        let extension = seq(&[&tlv(OID, OID_SUBJECT_ALT_NAME), &tlv(OCTET_STRING, &san)]);
        let extensions = seq(&[&extension]);
        let attribute = seq(&[&tlv(OID, OID_EXTENSION_REQUEST), &tlv(SET, &extensions)]);
        let info = seq(&[
            &tlv(INTEGER, &[0]),
            &seq(&[]),
            &self.public_key().to_spki_der(),
            &tlv(ATTRIBUTES, &attribute),
        ]);
        let raw = self.sign(&info)?;
        let (alg, signature) = match self.algorithm() {
            Algorithm::Es256 => {
                // JWS signatures are `r || s`; X.509 wants the DER SEQUENCE of two INTEGERs.
                let (r, s) = raw.split_at_checked(32).ok_or_else(|| {
                    Error::new(ErrorCode::Internal, "ES256 signature of unexpected length")
                })?;
                (
                    OID_ECDSA_SHA256,
                    seq(&[&unsigned_integer(r), &unsigned_integer(s)]),
                )
            }
            Algorithm::Ed25519 => (OID_ED25519, raw),
        };
        let mut bits = Vec::with_capacity(signature.len() + 1);
        bits.push(0); // no unused bits
        bits.extend_from_slice(&signature);
        Ok(seq(&[
            &info,
            &seq(&[&tlv(OID, alg)]),
            &tlv(BIT_STRING, &bits),
        ]))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn der_lengths_and_integers() {
        assert_eq!(tlv(OCTET_STRING, &[]), vec![0x04, 0x00]);
        assert_eq!(tlv(OCTET_STRING, &[1; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(
            tlv(OCTET_STRING, &[1; 0x100])[..4],
            [0x04, 0x82, 0x01, 0x00]
        );
        assert_eq!(unsigned_integer(&[0, 0, 5]), vec![0x02, 0x01, 0x05]);
        assert_eq!(unsigned_integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0]), vec![0x02, 0x01, 0x00]);
    }
}
