//! The Ed25519 key checks of `PublicKey::from_ed25519` (canonical y, decompression by the
//! quadratic character, small order from y alone: hand-written field arithmetic) against
//! curve25519-dalek's decompression and `is_small_order`, on random encodings, on every torsion
//! point, on mixed-order points, and on non-canonical encodings.
//!
//! The reference accepts exactly the encodings that decompress, re-encode to the same bytes
//! (canonical: y < p, and no sign bit on x = 0) and are not of small order (spec/PROTOCOL.md
//! section 5.1).
#![cfg(test)]

use agentid_protocol::PublicKey;
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::Scalar;
use proptest::prelude::*;

/// What dalek says a verifier must accept.
fn reference(bytes: &[u8; 32]) -> bool {
    match CompressedEdwardsY(*bytes).decompress() {
        Some(p) => p.compress().to_bytes() == *bytes && !p.is_small_order(),
        None => false,
    }
}

fn ours(bytes: &[u8; 32]) -> bool {
    PublicKey::from_ed25519(bytes).is_ok()
}

fn agree(bytes: &[u8; 32]) {
    assert_eq!(
        ours(bytes),
        reference(bytes),
        "disagreement on {bytes:02x?}"
    );
}

/// `y` (little-endian, < 2^255) plus p = 2^255 - 19: an encoding of `y` with y >= p when it
/// still fits in 255 bits (only for y < 19).
fn plus_p(y: u8) -> [u8; 32] {
    let mut b = [0xffu8; 32];
    b[31] = 0x7f;
    b[0] = 0xed;
    // p + y, for y < 19, does not carry out of the first byte.
    b[0] += y;
    b
}

#[test]
fn every_torsion_point_and_its_sign_flip() {
    for t in EIGHT_TORSION {
        let enc = t.compress().to_bytes();
        assert!(!ours(&enc), "small order accepted: {enc:02x?}");
        agree(&enc);
        let mut flipped = enc;
        flipped[31] ^= 0x80;
        agree(&flipped);
    }
}

#[test]
fn non_canonical_encodings() {
    for y in 0..19u8 {
        for sign in [0u8, 0x80] {
            let mut b = plus_p(y);
            b[31] |= sign;
            assert!(!ours(&b), "y + p accepted for y = {y}");
            agree(&b);
        }
    }
    // y = p exactly, and all-ones.
    agree(&plus_p(0));
    agree(&[0xff; 32]);
    // -0: y = 1 and y = p - 1 with the sign bit set (x = 0).
    let mut one = [0u8; 32];
    one[0] = 1;
    one[31] = 0x80;
    agree(&one);
    let mut minus_one = plus_p(0);
    minus_one[0] -= 1;
    minus_one[31] |= 0x80;
    agree(&minus_one);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Random bytes: about half decompress.
    #[test]
    fn random_encodings(bytes in any::<[u8; 32]>()) {
        prop_assert_eq!(ours(&bytes), reference(&bytes), "{:02x?}", bytes);
    }

    /// Random y just above p (non-canonical) or just below it (canonical), both signs.
    #[test]
    fn near_p(delta in 0u8..64, sign in any::<bool>()) {
        let mut b = plus_p(0);
        b[0] = b[0].wrapping_sub(delta);
        if sign {
            b[31] |= 0x80;
        }
        prop_assert_eq!(ours(&b), reference(&b), "{:02x?}", b);
    }
}

proptest! {
    // A scalar multiplication per case: slow without optimizations.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Points of the prime-order subgroup, with a torsion component added (mixed order, valid),
    /// and with their sign bit flipped.
    #[test]
    fn points_and_mixed_order_points(seed in any::<[u8; 32]>(), t in 0usize..8, flip in any::<bool>()) {
        let p = ED25519_BASEPOINT_POINT * Scalar::from_bytes_mod_order(seed);
        let mixed = p + EIGHT_TORSION[t];
        for point in [p, mixed] {
            let mut enc = point.compress().to_bytes();
            if flip {
                enc[31] ^= 0x80;
            }
            prop_assert_eq!(ours(&enc), reference(&enc), "{:02x?}", enc);
        }
    }
}
