//! The acceptance rule, one function per check. Both the single path and the batch path call
//! these and nothing else, so they cannot drift apart.
//!
//! The rule (ZIP-215 semantics with strict encodings, docs/VERIFICATION.md):
//! - the payer key A is a canonical encoding of a curve point that is neither of small order nor
//!   carries a torsion component (checked once per key, then cached);
//! - S is canonical (S < L);
//! - R is a canonical encoding of a curve point (any order: a torsion component in R is the
//!   signer's own business and the cofactored equation ignores it);
//! - `[8][S]B = [8]R + [8][k]A` with `k = SHA-512(R ‖ A ‖ M) mod L`.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha512};

use crate::verdict::Reason;

/// Something signed: a key, a signature, and a message that can be fed to a hasher in pieces
/// (a receipt's message is the domain separator followed by the record body, hashed in place).
pub(crate) trait Signed {
    /// The signer's public key, compressed.
    fn public_key(&self) -> [u8; 32];
    /// `R ‖ S`.
    fn signature(&self) -> [u8; 64];
    /// Feeds the signed message to `hasher`, in order.
    fn absorb_message(&self, separator: &[u8], hasher: &mut Sha512);
}

/// A payer key that passed the key checks, decompressed once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CheckedKey {
    pub(crate) point: EdwardsPoint,
}

/// A signature that passed every check except the equation, with everything the equation needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prepared {
    pub(crate) s: Scalar,
    pub(crate) r: EdwardsPoint,
    pub(crate) k: Scalar,
}

/// p = 2^255 - 19, little-endian: the first value a 255-bit y coordinate may not take.
const FIELD_MODULUS_LE: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// True when `bytes` is the one encoding of the point it decodes to: y < p, and the sign bit is
/// clear when x = 0 (x = 0 exactly when y = ±1). curve25519-dalek's `decompress` accepts both
/// kinds of non-canonical encoding, so the rule checks the bytes itself, which costs a
/// comparison instead of a re-compression (a field inversion).
pub(crate) fn is_canonical_point_encoding(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    let sign = y[31] >> 7;
    y[31] &= 0x7f;
    // Compare y with p as little-endian integers, most significant byte first.
    let y_below_p = y.iter().rev().cmp(FIELD_MODULUS_LE.iter().rev()) == std::cmp::Ordering::Less;
    if !y_below_p {
        return false;
    }
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut minus_one = FIELD_MODULUS_LE;
    minus_one[0] -= 1;
    let x_is_zero = y == one || y == minus_one;
    !(x_is_zero && sign == 1)
}

/// The one-time key check: canonical encoding, on the curve, not of small order, torsion-free.
pub(crate) fn check_key(bytes: &[u8; 32]) -> Result<CheckedKey, Reason> {
    if !is_canonical_point_encoding(bytes) {
        return Err(Reason::BadPayerKey);
    }
    let point = CompressedEdwardsY(*bytes)
        .decompress()
        .ok_or(Reason::BadPayerKey)?;
    if point.is_small_order() || !point.is_torsion_free() {
        return Err(Reason::BadPayerKey);
    }
    Ok(CheckedKey { point })
}

/// The per-signature checks before the equation: S canonical, R canonical and on the curve; and
/// the challenge k, hashed straight from the caller's buffers.
pub(crate) fn prepare<T: Signed>(item: &T, separator: &[u8]) -> Result<Prepared, Reason> {
    let signature = item.signature();
    let mut r_bytes = [0u8; 32];
    let mut s_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&signature[..32]);
    s_bytes.copy_from_slice(&signature[32..]);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))
        .ok_or(Reason::BadSignature)?;
    if !is_canonical_point_encoding(&r_bytes) {
        return Err(Reason::BadSignature);
    }
    let r = CompressedEdwardsY(r_bytes)
        .decompress()
        .ok_or(Reason::BadSignature)?;
    let mut hasher = Sha512::new();
    hasher.update(r_bytes);
    hasher.update(item.public_key());
    item.absorb_message(separator, &mut hasher);
    let k = Scalar::from_hash(hasher);
    Ok(Prepared { s, r, k })
}

/// The cofactored equation for one signature: `[8]([S]B - [k]A - R) = 0`.
pub(crate) fn equation_holds(prepared: &Prepared, key: &CheckedKey) -> bool {
    let sb_minus_ka =
        EdwardsPoint::vartime_double_scalar_mul_basepoint(&prepared.k, &(-key.point), &prepared.s);
    (sb_minus_ka - prepared.r).mul_by_cofactor().is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_encoding_rejects_y_at_or_above_p_and_negative_zero_x() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(is_canonical_point_encoding(&identity));
        let mut negative_zero = identity;
        negative_zero[31] |= 0x80;
        assert!(!is_canonical_point_encoding(&negative_zero));
        // y = p + 1 encodes the identity a second way.
        let mut p_plus_one = FIELD_MODULUS_LE;
        p_plus_one[0] += 1;
        assert!(!is_canonical_point_encoding(&p_plus_one));
        assert!(!is_canonical_point_encoding(&FIELD_MODULUS_LE));
        let mut p_minus_one = FIELD_MODULUS_LE;
        p_minus_one[0] -= 1;
        assert!(is_canonical_point_encoding(&p_minus_one));
        p_minus_one[31] |= 0x80;
        assert!(!is_canonical_point_encoding(&p_minus_one));
        let basepoint = curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED.to_bytes();
        assert!(is_canonical_point_encoding(&basepoint));
    }

    #[test]
    fn canonical_encoding_agrees_with_recompression() {
        // Every encoding that decompresses is canonical exactly when it survives a round trip.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut checked = 0;
        for round in 0..4096u32 {
            let mut bytes = [0u8; 32];
            for chunk in bytes.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes());
            }
            // Also probe the top of the field, where the non-canonical encodings live.
            if round % 2 == 0 {
                bytes[1..31].fill(0xff);
                bytes[31] |= 0x7f;
                bytes[0] = 0xe0 | (bytes[0] & 0x1f);
            }
            if let Some(point) = CompressedEdwardsY(bytes).decompress() {
                checked += 1;
                assert_eq!(
                    is_canonical_point_encoding(&bytes),
                    point.compress().to_bytes() == bytes,
                    "{}",
                    hex::encode(bytes)
                );
            }
        }
        assert!(checked > 1000);
    }
}
