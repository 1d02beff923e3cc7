//! Ed25519 public-key checks without decompressing the point.
//!
//! A canonical encoding `y` (y < p, sign bit aside) decompresses exactly when
//! `x^2 = (y^2 - 1) / (d y^2 + 1)` has a solution, that is when `u v` is zero or a square modulo
//! p, with `u = y^2 - 1` and `v = d y^2 + 1` (`v` is never zero: `-1/d` is not a square). A full
//! decompression (curve25519-dalek) computes a square root (a 255-bit exponentiation, about 40 k
//! instructions); the quadratic character alone, by the binary Jacobi-symbol algorithm, costs a
//! fraction of that. Keys are public, so a variable-time algorithm is fine here.
//!
//! The small-order points (the 8-torsion) are exactly the points whose y is 0, 1, -1 or one of
//! the two y of the order-8 points: they are recognised from y alone.
//!
//! Both rules are checked against curve25519-dalek in the tests.

/// A 256-bit unsigned integer: (high 128 bits, low 128 bits).
type U256 = (u128, u128);

/// p = 2^255 - 19, as four little-endian 64-bit limbs.
const P: [u64; 4] = [
    0xffff_ffff_ffff_ffed,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_ffff_ffff,
    0x7fff_ffff_ffff_ffff,
];

/// d = -121665 / 121666 mod p, little-endian limbs.
const D: [u64; 4] = [
    0x75eb_4dca_1359_78a3,
    0x0070_0a4d_4141_d8ab,
    0x8cc7_4079_7779_e898,
    0x5203_6cee_2b6f_fe73,
];

/// y of the order-8 points (the other one is its negation, `-Y8`).
const Y8: [u64; 4] = [
    0xb027_b2c2_8f95_e826,
    0xf098_eff2_89f4_c345,
    0x3933_c6d3_05ac_dfd5,
    0x05fc_536d_8802_38b1,
];

fn limbs(bytes: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (limb, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *limb = u64::from_le_bytes(b);
    }
    out
}

/// `a + b` over 4 limbs, with the carry out.
fn add(a: [u64; 4], b: [u64; 4]) -> ([u64; 4], bool) {
    let mut out = [0u64; 4];
    let mut carry = false;
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        let (s1, c1) = x.overflowing_add(y);
        let (s2, c2) = s1.overflowing_add(u64::from(carry));
        *o = s2;
        carry = c1 || c2;
    }
    (out, carry)
}

/// `a - b` over 4 limbs, with the borrow out.
fn sub(a: [u64; 4], b: [u64; 4]) -> ([u64; 4], bool) {
    let mut out = [0u64; 4];
    let mut borrow = false;
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        let (s1, b1) = x.overflowing_sub(y);
        let (s2, b2) = s1.overflowing_sub(u64::from(borrow));
        *o = s2;
        borrow = b1 || b2;
    }
    (out, borrow)
}

/// Reduces `a < 2^256` to `[0, p)`.
fn reduce_once(mut a: [u64; 4]) -> [u64; 4] {
    // 2^256 < 3p: at most two subtractions.
    for _ in 0..2 {
        let (d, borrow) = sub(a, P);
        if !borrow {
            a = d;
        }
    }
    a
}

/// `a * b mod p`, fully reduced.
fn mul(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    let mut wide = [0u64; 8];
    for (i, &x) in a.iter().enumerate() {
        let mut carry: u128 = 0;
        for (j, &y) in b.iter().enumerate() {
            if let Some(w) = wide.get_mut(i + j) {
                let t = u128::from(x) * u128::from(y) + u128::from(*w) + carry;
                *w = t as u64;
                carry = t >> 64;
            }
        }
        if let Some(w) = wide.get_mut(i + 4) {
            *w = carry as u64;
        }
    }
    // 2^256 = 38 mod p.
    let (lo, hi) = wide.split_at(4);
    let mut out = [0u64; 4];
    let mut carry: u128 = 0;
    for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
        let t = u128::from(l) + 38 * u128::from(h) + carry;
        *o = t as u64;
        carry = t >> 64;
    }
    // carry < 39: fold it once more; a second overflow leaves a tiny value, folded again.
    let (mut out, over) = add(out, [38 * carry as u64, 0, 0, 0]);
    if over {
        out = add(out, [38, 0, 0, 0]).0;
    }
    reduce_once(out)
}

fn to_u256(a: [u64; 4]) -> U256 {
    let [l0, l1, h0, h1] = a;
    (
        u128::from(h0) | (u128::from(h1) << 64),
        u128::from(l0) | (u128::from(l1) << 64),
    )
}

fn is_zero(a: U256) -> bool {
    a == (0, 0)
}

fn shr(a: U256, n: u32) -> U256 {
    match n {
        0 => a,
        1..=127 => (a.0 >> n, (a.1 >> n) | (a.0 << (128 - n))),
        _ => (0, a.0 >> (n - 128)),
    }
}

fn trailing_zeros(a: U256) -> u32 {
    if a.1 != 0 {
        a.1.trailing_zeros()
    } else {
        128 + a.0.trailing_zeros()
    }
}

fn sub256(a: U256, b: U256) -> U256 {
    let (lo, borrow) = a.1.overflowing_sub(b.1);
    (a.0.wrapping_sub(b.0).wrapping_sub(u128::from(borrow)), lo)
}

/// The Jacobi symbol (a / n) for odd n > 0: 1, -1, or 0 when they share a factor.
fn jacobi(mut a: U256, mut n: U256) -> i8 {
    let mut t: i8 = 1;
    loop {
        if is_zero(a) {
            return if n == (0, 1) { t } else { 0 };
        }
        let z = trailing_zeros(a);
        a = shr(a, z);
        // (2 / n) = -1 exactly when n = 3 or 5 mod 8.
        if z % 2 == 1 && matches!(n.1 & 7, 3 | 5) {
            t = -t;
        }
        // Both odd now. Keep a >= n, by reciprocity when swapping.
        if a < n {
            core::mem::swap(&mut a, &mut n);
            if a.1 & 3 == 3 && n.1 & 3 == 3 {
                t = -t;
            }
        }
        a = sub256(a, n);
    }
}

/// Whether the canonical encoding `key` (y < p already checked; the sign bit is ignored) is the
/// y-coordinate of a curve point.
pub(crate) fn decompresses(key: &[u8; 32]) -> bool {
    let mut y = *key;
    if let Some(last) = y.last_mut() {
        *last &= 0x7f;
    }
    let y = limbs(&y);
    let y2 = mul(y, y);
    let one = [1, 0, 0, 0];
    // u = y^2 - 1 mod p (y^2 < p, so adding p back on a borrow gives the residue).
    let (u, borrow) = sub(y2, one);
    let u = if borrow { add(u, P).0 } else { u };
    // v = d y^2 + 1 mod p.
    let v = reduce_once(add(mul(D, y2), one).0);
    let w = mul(u, v);
    let w = to_u256(w);
    is_zero(w) || jacobi(w, to_u256(P)) == 1
}

/// Whether the canonical encoding `key` (y < p) names one of the 8 small-order points, given
/// that it decompresses: y is 0, 1, -1 or +-y of the order-8 points.
pub(crate) fn is_small_order(key: &[u8; 32]) -> bool {
    let mut y = *key;
    if let Some(last) = y.last_mut() {
        *last &= 0x7f;
    }
    let y = limbs(&y);
    let minus = |a: [u64; 4]| sub(P, a).0;
    y == [0; 4] || y == [1, 0, 0, 0] || y == minus([1, 0, 0, 0]) || y == Y8 || y == minus(Y8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::CompressedEdwardsY;

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    fn canonical(k: &[u8; 32]) -> bool {
        let mut y = *k;
        y[31] &= 0x7f;
        sub(limbs(&y), P).1
    }

    #[test]
    fn constants() {
        // d * 121666 + 121665 = 0 mod p.
        let t = mul(D, [121_666, 0, 0, 0]);
        assert_eq!(reduce_once(add(t, [121_665, 0, 0, 0]).0), [0; 4]);
        // The y of every small-order point is in the list, and the list has no other value.
        for p in EIGHT_TORSION {
            let k = p.compress().to_bytes();
            assert!(is_small_order(&k), "{k:02x?}");
            assert!(decompresses(&k));
        }
    }

    #[test]
    fn field_mul_matches_schoolbook_identities() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..2000 {
            let a = reduce_once([
                xorshift(&mut x),
                xorshift(&mut x),
                xorshift(&mut x),
                xorshift(&mut x) >> 1,
            ]);
            let b = reduce_once([
                xorshift(&mut x),
                xorshift(&mut x),
                xorshift(&mut x),
                xorshift(&mut x) >> 1,
            ]);
            // (a + b)^2 = a^2 + 2ab + b^2
            let s = reduce_once(add(a, b).0);
            let lhs = mul(s, s);
            let ab = mul(a, b);
            let rhs = reduce_once(add(mul(a, a), mul(b, b)).0);
            let rhs = reduce_once(add(rhs, reduce_once(add(ab, ab).0)).0);
            assert_eq!(lhs, rhs);
            assert!(sub(lhs, P).1, "fully reduced");
        }
        // p - 1 squared is 1.
        let pm1 = sub(P, [1, 0, 0, 0]).0;
        assert_eq!(mul(pm1, pm1), [1, 0, 0, 0]);
    }

    /// The fast rules agree with dalek on canonical encodings: edge values and pseudo-random
    /// keys (about half of them decompress), with either sign bit.
    #[test]
    fn matches_dalek() {
        let mut keys: Vec<[u8; 32]> = Vec::new();
        let p_bytes = {
            let mut b = [0u8; 32];
            for (c, l) in b.chunks_exact_mut(8).zip(P) {
                c.copy_from_slice(&l.to_le_bytes());
            }
            b
        };
        for small in 0u64..300 {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&small.to_le_bytes());
            keys.push(k);
            // p - small
            let v = sub(P, limbs(&k)).0;
            let mut m = [0u8; 32];
            for (c, l) in m.chunks_exact_mut(8).zip(v) {
                c.copy_from_slice(&l.to_le_bytes());
            }
            keys.push(m);
        }
        keys.push(p_bytes);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut k = [0u8; 32];
            for c in k.chunks_exact_mut(8) {
                c.copy_from_slice(&xorshift(&mut x).to_le_bytes());
            }
            keys.push(k);
        }
        let mut on = 0;
        for k in keys {
            for sign in [0u8, 0x80] {
                let mut k = k;
                k[31] = (k[31] & 0x7f) | sign;
                if !canonical(&k) {
                    continue;
                }
                let point = CompressedEdwardsY(k).decompress();
                assert_eq!(decompresses(&k), point.is_some(), "{k:02x?}");
                if let Some(p) = point {
                    on += 1;
                    assert_eq!(is_small_order(&k), p.is_small_order(), "{k:02x?}");
                }
            }
        }
        assert!(on > 10_000, "{on}");
    }
}
