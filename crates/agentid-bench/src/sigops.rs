//! Raw signature operations with aws-lc-rs: the physical limit the protocol's own costs are
//! compared against.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519,
};
use std::hint::black_box;

use crate::fixtures::Res;
use crate::harness::{compare, Budget, Check};

/// Median nanoseconds of each raw operation.
#[derive(Clone, Copy, Debug)]
pub struct SigOps {
    /// ECDSA P-256 / SHA-256 sign (JWS `ES256`, fixed-size signature).
    pub p256_sign: f64,
    /// ECDSA P-256 / SHA-256 verify from the raw 65-byte point (one signature, verified over
    /// and over).
    pub p256_verify: f64,
    /// The same, each call on the next of [`DISTINCT`] signatures over distinct messages, as a
    /// session verifies proofs it has never seen: aws-lc's variable-time verification is
    /// cheaper when the branch predictor has learned one signature.
    pub p256_verify_distinct: f64,
    /// Ed25519 sign.
    pub ed_sign: f64,
    /// Ed25519 verify from the raw 32-byte key.
    pub ed_verify: f64,
    /// ECDSA P-256 sign with a DER signature (X.509 certificates).
    pub p256_sign_asn1: f64,
}

/// A message the size of a typical token's signing input.
const MSG: [u8; 512] = [0x61; 512];

/// How many distinct signed messages `p256_verify_distinct` cycles through.
const DISTINCT: usize = 1024;

/// Measures the raw operations.
pub fn measure(budget: Budget) -> Res<SigOps> {
    let rng = SystemRandom::new();
    let p256 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?;
    let p256_der = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)?;
    let p256_pub = p256.public_key().as_ref().to_vec();
    let p256_sig = p256.sign(&rng, &MSG)?.as_ref().to_vec();
    let ed_doc = Ed25519KeyPair::generate_pkcs8(&rng)?;
    let ed = Ed25519KeyPair::from_pkcs8(ed_doc.as_ref())?;
    let ed_pub = ed.public_key().as_ref().to_vec();
    let ed_sig = ed.sign(&MSG).as_ref().to_vec();
    let distinct = (0..DISTINCT)
        .map(|i| {
            let mut m = MSG;
            m[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let sig = p256.sign(&rng, &m)?.as_ref().to_vec();
            Ok((m, sig))
        })
        .collect::<Res<Vec<_>>>()?;
    let next = std::cell::Cell::new(0usize);

    let ok = Check::new();
    let r = compare(
        budget,
        &mut [
            &mut || {
                ok.and(p256.sign(&rng, black_box(&MSG)).is_ok());
            },
            &mut || {
                ok.and(
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, black_box(&p256_pub))
                        .verify(black_box(&MSG), &p256_sig)
                        .is_ok(),
                );
            },
            &mut || {
                black_box(ed.sign(black_box(&MSG)));
            },
            &mut || {
                ok.and(
                    UnparsedPublicKey::new(&ED25519, black_box(&ed_pub))
                        .verify(black_box(&MSG), &ed_sig)
                        .is_ok(),
                );
            },
            &mut || {
                ok.and(p256_der.sign(&rng, black_box(&MSG)).is_ok());
            },
            &mut || {
                let i = next.get();
                next.set((i + 1) % DISTINCT);
                ok.and(distinct.get(i).is_some_and(|(m, sig)| {
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, black_box(&p256_pub))
                        .verify(black_box(m), sig)
                        .is_ok()
                }));
            },
        ],
    );
    if !ok.get() {
        return Err("a raw signature operation failed".into());
    }
    let get = |i: usize| r.get(i).copied().unwrap_or(0.0);
    Ok(SigOps {
        p256_sign: get(0),
        p256_verify: get(1),
        ed_sign: get(2),
        ed_verify: get(3),
        p256_sign_asn1: get(4),
        p256_verify_distinct: get(5),
    })
}
